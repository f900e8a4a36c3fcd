//! The at-rest envelope: `term (4, BE) | format version (1) | nonce (12) | ciphertext+tag`.
//!
//! AES-256-GCM with a random 96-bit nonce per seal and the storage key as associated data, so
//! a ciphertext copied under another storage key fails to open. The format is checked before
//! a write and after a read.

use aes_gcm::aead::{Aead, Payload};
use aes_gcm::{Aes256Gcm, KeyInit, Nonce};
use rand::RngCore;
use zeroize::Zeroizing;

use super::Key;

/// The only envelope format version so far.
pub const FORMAT_V1: u8 = 1;
const HEADER: usize = 4 + 1 + 12;
const TAG: usize = 16;

/// Why an envelope did not open. Deliberately coarse: which check failed is logged by the
/// caller with the storage key, never with any part of the plaintext.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum EnvelopeError {
    /// Shorter than header plus tag, or an unknown format version.
    #[error("malformed envelope")]
    Malformed,
    /// Encrypted under a keyring term this node does not have.
    #[error("unknown key term {0}")]
    UnknownTerm(u32),
    /// Authentication failed: wrong key, moved ciphertext, or tampering.
    #[error("envelope failed authentication")]
    Unauthentic,
}

/// Seals `plaintext` under `key` (keyring term `term`), bound to `storage_key`.
pub fn seal(term: u32, key: &Key, storage_key: &[u8], plaintext: &[u8]) -> Vec<u8> {
    let cipher = Aes256Gcm::new(key.expose().into());
    let mut nonce = [0u8; 12];
    rand::rngs::OsRng.fill_bytes(&mut nonce);
    let payload = Payload {
        msg: plaintext,
        aad: storage_key,
    };
    // AES-GCM encryption only fails for plaintexts beyond 64 GiB, far above any value bound.
    let ct = cipher
        .encrypt(Nonce::from_slice(&nonce), payload)
        .expect("AES-GCM encryption of a bounded plaintext");
    let mut out = Vec::with_capacity(HEADER + ct.len());
    out.extend_from_slice(&term.to_be_bytes());
    out.push(FORMAT_V1);
    out.extend_from_slice(&nonce);
    out.extend_from_slice(&ct);
    debug_assert!(term_of(&out).is_ok(), "sealed envelope must parse");
    out
}

/// The keyring term an envelope was sealed under, after checking its format.
pub fn term_of(envelope: &[u8]) -> Result<u32, EnvelopeError> {
    if envelope.len() < HEADER + TAG || envelope[4] != FORMAT_V1 {
        return Err(EnvelopeError::Malformed);
    }
    let term: [u8; 4] = envelope[..4]
        .try_into()
        .map_err(|_| EnvelopeError::Malformed)?;
    Ok(u32::from_be_bytes(term))
}

/// Opens an envelope with `key`, which must be the key of the envelope's term.
pub fn open(
    key: &Key,
    storage_key: &[u8],
    envelope: &[u8],
) -> Result<Zeroizing<Vec<u8>>, EnvelopeError> {
    term_of(envelope)?;
    let cipher = Aes256Gcm::new(key.expose().into());
    let nonce = Nonce::from_slice(&envelope[5..HEADER]);
    let payload = Payload {
        msg: &envelope[HEADER..],
        aad: storage_key,
    };
    cipher
        .decrypt(nonce, payload)
        .map(Zeroizing::new)
        .map_err(|_| EnvelopeError::Unauthentic)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let key = Key::generate();
        let env = seal(7, &key, b"kv/secret/a", b"hunter2");
        assert_eq!(term_of(&env), Ok(7));
        assert_eq!(
            open(&key, b"kv/secret/a", &env).unwrap().as_slice(),
            b"hunter2"
        );
        assert!(
            !env.windows(7).any(|w| w == b"hunter2"),
            "plaintext must not show"
        );
    }

    #[test]
    fn wrong_key_fails() {
        let env = seal(1, &Key::generate(), b"k", b"v");
        assert_eq!(
            open(&Key::generate(), b"k", &env),
            Err(EnvelopeError::Unauthentic)
        );
    }

    #[test]
    fn ciphertext_moved_to_another_storage_key_fails() {
        let key = Key::generate();
        let env = seal(1, &key, b"kv/secret/a", b"v");
        assert_eq!(
            open(&key, b"kv/secret/b", &env),
            Err(EnvelopeError::Unauthentic)
        );
    }

    #[test]
    fn every_tampered_byte_is_detected() {
        let key = Key::generate();
        let env = seal(1, &key, b"k", b"some secret value");
        for i in 5..env.len() {
            let mut bad = env.clone();
            bad[i] ^= 0x01;
            assert!(
                open(&key, b"k", &bad).is_err(),
                "flip at byte {i} went unnoticed"
            );
        }
    }

    #[test]
    fn malformed_envelopes_are_refused() {
        let key = Key::generate();
        assert_eq!(open(&key, b"k", b"short"), Err(EnvelopeError::Malformed));
        let mut env = seal(1, &key, b"k", b"v");
        env[4] = 9;
        assert_eq!(open(&key, b"k", &env), Err(EnvelopeError::Malformed));
    }
}
