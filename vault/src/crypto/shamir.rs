//! Shamir's secret sharing over GF(2^8), byte-wise, as Vault does it.
//!
//! A share is the secret's length of polynomial evaluations followed by one byte: the
//! evaluation point x (1..=255). Any `threshold` distinct shares recover the secret; fewer
//! reveal nothing about it.

use rand::RngCore;
use zeroize::Zeroizing;

/// Why splitting or combining failed.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum ShamirError {
    /// Threshold and share count must satisfy 1 <= threshold <= shares <= 255, and a threshold
    /// of 1 only with a single share (otherwise every share *is* the secret).
    #[error("invalid split: {0}")]
    InvalidParameters(String),
    /// Shares of different lengths, duplicate points, or too few shares.
    #[error("invalid shares: {0}")]
    InvalidShares(String),
}

/// Multiplication in GF(2^8) with the AES polynomial x^8 + x^4 + x^3 + x + 1, in constant time
/// with respect to the operands (no table lookups indexed by secret bytes).
fn mul(mut a: u8, mut b: u8) -> u8 {
    let mut product = 0u8;
    for _ in 0..8 {
        product ^= a & 0u8.wrapping_sub(b & 1);
        let carry = 0u8.wrapping_sub(a >> 7);
        a = (a << 1) ^ (0x1b & carry);
        b >>= 1;
    }
    product
}

/// Multiplicative inverse (a^254), 0 for 0.
fn inv(a: u8) -> u8 {
    let mut result = 1u8;
    let mut base = a;
    let mut exp = 254u8;
    while exp > 0 {
        if exp & 1 == 1 {
            result = mul(result, base);
        }
        base = mul(base, base);
        exp >>= 1;
    }
    result
}

/// Splits `secret` into `shares` shares, any `threshold` of which recover it.
pub fn split(
    secret: &[u8],
    shares: u8,
    threshold: u8,
) -> Result<Vec<Zeroizing<Vec<u8>>>, ShamirError> {
    if threshold == 0 || shares == 0 || threshold > shares {
        return Err(ShamirError::InvalidParameters(format!(
            "threshold {threshold} and shares {shares} must satisfy 1 <= threshold <= shares"
        )));
    }
    if threshold == 1 && shares > 1 {
        return Err(ShamirError::InvalidParameters(
            "a threshold of 1 is only allowed with a single share".into(),
        ));
    }
    if shares == 1 {
        let mut share = Zeroizing::new(secret.to_vec());
        share.push(1);
        return Ok(vec![share]);
    }
    let mut out: Vec<Zeroizing<Vec<u8>>> = (1..=shares)
        .map(|_| Zeroizing::new(Vec::with_capacity(secret.len() + 1)))
        .collect();
    let mut coeffs = Zeroizing::new(vec![0u8; threshold as usize]);
    for &byte in secret {
        coeffs[0] = byte;
        rand::rngs::OsRng.fill_bytes(&mut coeffs[1..]);
        for (i, share) in out.iter_mut().enumerate() {
            let x = i as u8 + 1;
            // Horner's rule from the highest coefficient down.
            let y = coeffs.iter().rev().fold(0u8, |acc, &c| mul(acc, x) ^ c);
            share.push(y);
        }
    }
    for (i, share) in out.iter_mut().enumerate() {
        share.push(i as u8 + 1);
    }
    Ok(out)
}

/// Recovers the secret from shares by Lagrange interpolation at x = 0. With fewer shares than
/// the threshold this returns garbage, not an error: callers verify the result (Coffer opens
/// the keyring with it).
pub fn combine(shares: &[&[u8]]) -> Result<Zeroizing<Vec<u8>>, ShamirError> {
    let first = shares
        .first()
        .ok_or_else(|| ShamirError::InvalidShares("no shares".into()))?;
    let len = first.len();
    if len < 2 || shares.iter().any(|s| s.len() != len) {
        return Err(ShamirError::InvalidShares("shares differ in length".into()));
    }
    let xs: Vec<u8> = shares.iter().map(|s| s[len - 1]).collect();
    for (i, x) in xs.iter().enumerate() {
        if *x == 0 || xs[..i].contains(x) {
            return Err(ShamirError::InvalidShares(
                "duplicate or zero share point".into(),
            ));
        }
    }
    let mut secret = Zeroizing::new(vec![0u8; len - 1]);
    for (i, share) in shares.iter().enumerate() {
        // Lagrange basis at 0: prod_{j != i} x_j / (x_j - x_i); subtraction is xor in GF(2^8).
        let mut basis = 1u8;
        for (j, &xj) in xs.iter().enumerate() {
            if i != j {
                basis = mul(basis, mul(xj, inv(xj ^ xs[i])));
            }
        }
        for (byte, &y) in secret.iter_mut().zip(share[..len - 1].iter()) {
            *byte ^= mul(y, basis);
        }
    }
    Ok(secret)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn field_inverse_is_correct() {
        for a in 1..=255u8 {
            assert_eq!(mul(a, inv(a)), 1, "inverse of {a}");
        }
    }

    #[test]
    fn any_threshold_subset_recovers_and_fewer_do_not() {
        let secret: Vec<u8> = (0..32).map(|i| i * 7 + 3).collect();
        let shares = split(&secret, 5, 3).unwrap();
        for a in 0..5 {
            for b in a + 1..5 {
                for c in b + 1..5 {
                    let picked = [&shares[a][..], &shares[b][..], &shares[c][..]];
                    assert_eq!(combine(&picked).unwrap().as_slice(), &secret[..]);
                }
                let two = [&shares[a][..], &shares[b][..]];
                assert_ne!(combine(&two).unwrap().as_slice(), &secret[..]);
            }
        }
    }

    #[test]
    fn single_share_and_parameter_checks() {
        let shares = split(b"0123456789abcdef0123456789abcdef", 1, 1).unwrap();
        assert_eq!(
            combine(&[&shares[0][..]]).unwrap().as_slice(),
            b"0123456789abcdef0123456789abcdef"
        );
        assert!(split(b"x", 3, 4).is_err());
        assert!(split(b"x", 3, 1).is_err());
        assert!(split(b"x", 0, 0).is_err());
    }

    #[test]
    fn duplicate_shares_are_refused() {
        let shares = split(b"secret-bytes", 3, 2).unwrap();
        assert!(combine(&[&shares[0][..], &shares[0][..]]).is_err());
    }
}
