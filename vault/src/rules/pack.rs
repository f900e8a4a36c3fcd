//! The replication bootstrap pack: one file that lets a new node join.
//!
//! File: `COFFERPACK1\n` | Argon2id m_cost (4, BE) | t_cost (4) | p_cost (4) | salt (16) |
//! nonce (12) | key check (16) | AES-256-GCM ciphertext+tag of the postcard-encoded
//! [`PackContents`]. The key is Argon2id(passphrase, salt). The header is the associated
//! data, so changing a parameter or the salt fails authentication like any other tampering.
//! The key check (SHA-256 of the key and a label, truncated) tells a wrong passphrase from a
//! changed file; it helps a guesser no more than trying to decrypt would.

use aes_gcm::aead::{Aead, Payload};
use aes_gcm::{Aes256Gcm, KeyInit, Nonce};
use argon2::{Algorithm, Argon2, Params, Version};
use rand::RngCore;
use serde::{Deserialize, Serialize};
use zeroize::{Zeroize, Zeroizing};

/// The file's first bytes.
pub const MAGIC: &[u8] = b"COFFERPACK1\n";
const SALT: usize = 16;
const NONCE: usize = 12;
const CHECK: usize = 16;
const HEADER: usize = MAGIC.len() + 12 + SALT + NONCE + CHECK;
/// Argon2id cost: 64 MiB, 3 passes, 1 lane (about a third of a second on one core). The
/// passphrase is random, so this guards against a weak custom `--passphrase-file` more than
/// against brute force of the generated one.
const M_COST: u32 = 64 * 1024;
const T_COST: u32 = 3;
const P_COST: u32 = 1;
/// Parameters a pack may demand of the machine that opens it (bounds memory and time).
const MAX_M_COST: u32 = 1024 * 1024;
const MAX_T_COST: u32 = 16;

/// A member's addresses as the pack lists them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PackMember {
    /// Node id.
    pub id: u64,
    /// HTTPS API address.
    pub api_addr: String,
    /// Peer (mutual TLS) address.
    pub peer_addr: String,
    /// SHA-256 of the member's pinned peer certificate: the joining node accepts only it.
    pub cert_sha256: String,
}

/// Everything a new node needs, encrypted as a whole. Key material is zeroized on drop and
/// never printed by `Debug`.
#[derive(Clone, Serialize, Deserialize)]
pub struct PackContents {
    /// Random 128-bit id, hex; single use, pending on the cluster until consumed.
    pub pack_id: String,
    /// The cluster's id (from `sys/init`).
    pub cluster_id: String,
    /// The cluster's name.
    pub cluster_name: String,
    /// Unix seconds the pack was made and stops being accepted.
    pub created_at: u64,
    /// Unix seconds after which the pack is refused.
    pub expires_at: u64,
    /// The new node's id.
    pub node_id: u64,
    /// Whether it is promoted to voter once caught up.
    pub voter: bool,
    /// The new node's HTTPS API address.
    pub api_addr: String,
    /// The new node's peer address.
    pub peer_addr: String,
    /// The cluster CA certificate, PEM.
    pub ca_cert_pem: String,
    /// The pack's registration certificate (binds the new node's id) and key, PEM. It may
    /// register once, before expiry, and do nothing else: at registration the node gets its
    /// member certificate for a key it made itself.
    pub node_cert_pem: String,
    /// See `node_cert_pem`.
    pub node_key_pem: String,
    /// The new node's API certificate and key, PEM.
    pub api_cert_pem: String,
    /// See `api_cert_pem`.
    pub api_key_pem: String,
    /// Current members.
    pub members: Vec<PackMember>,
    /// The root key, hex, when the pack was made with `--include-unseal-key`.
    pub unseal_key_hex: Option<String>,
    /// A recent snapshot of the replicated state (its values are ciphertext).
    pub snapshot: Vec<u8>,
}

impl std::fmt::Debug for PackContents {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PackContents")
            .field("pack_id", &self.pack_id)
            .field("cluster_id", &self.cluster_id)
            .field("node_id", &self.node_id)
            .field("voter", &self.voter)
            .field("expires_at", &self.expires_at)
            .finish_non_exhaustive()
    }
}

impl Drop for PackContents {
    fn drop(&mut self) {
        self.node_key_pem.zeroize();
        self.api_key_pem.zeroize();
        if let Some(k) = &mut self.unseal_key_hex {
            k.zeroize();
        }
    }
}

/// Why a pack does not open. Each says which, so an operator knows what to fix.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum PackError {
    /// Not a pack file, or cut short.
    #[error("not a Coffer bootstrap pack (bad header or truncated file)")]
    Malformed,
    /// The passphrase does not derive the pack's key.
    #[error("wrong passphrase")]
    WrongPassphrase,
    /// The passphrase is right but the contents fail authentication: the file was changed.
    #[error("the pack file was tampered with or corrupted (authentication failed)")]
    Tampered,
    /// Decrypted but its contents do not decode: made by an incompatible version.
    #[error("pack contents are unreadable: {0}")]
    Contents(String),
    /// Its validity ended.
    #[error("pack expired at {expired_at} (unix seconds); make a new one")]
    Expired {
        /// When it expired.
        expired_at: u64,
    },
    /// The cost parameters are out of bounds.
    #[error("pack demands unreasonable key-derivation cost (m={m}, t={t})")]
    Cost {
        /// Memory cost in KiB.
        m: u32,
        /// Passes.
        t: u32,
    },
}

fn key_check(key: &[u8; 32]) -> [u8; CHECK] {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    h.update(key);
    h.update(b"coffer bootstrap pack key check");
    let digest = h.finalize();
    let mut out = [0u8; CHECK];
    out.copy_from_slice(&digest[..CHECK]);
    out
}

fn derive(
    passphrase: &str,
    salt: &[u8],
    m: u32,
    t: u32,
    p: u32,
) -> Result<Zeroizing<[u8; 32]>, PackError> {
    let params = Params::new(m, t, p, Some(32)).map_err(|_| PackError::Cost { m, t })?;
    let mut key = Zeroizing::new([0u8; 32]);
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
        .hash_password_into(passphrase.as_bytes(), salt, &mut *key)
        .map_err(|_| PackError::Cost { m, t })?;
    Ok(key)
}

/// Encrypts `contents` under `passphrase`.
pub fn seal_pack(contents: &PackContents, passphrase: &str) -> Result<Vec<u8>, PackError> {
    let plain = Zeroizing::new(
        postcard::to_allocvec(contents).map_err(|e| PackError::Contents(e.to_string()))?,
    );
    let mut salt = [0u8; SALT];
    let mut nonce = [0u8; NONCE];
    rand::rngs::OsRng.fill_bytes(&mut salt);
    rand::rngs::OsRng.fill_bytes(&mut nonce);
    let mut out = Vec::with_capacity(HEADER + plain.len() + 16);
    out.extend_from_slice(MAGIC);
    for v in [M_COST, T_COST, P_COST] {
        out.extend_from_slice(&v.to_be_bytes());
    }
    out.extend_from_slice(&salt);
    out.extend_from_slice(&nonce);
    let key = derive(passphrase, &salt, M_COST, T_COST, P_COST)?;
    out.extend_from_slice(&key_check(&key));
    let cipher = Aes256Gcm::new((&*key).into());
    let sealed = cipher
        .encrypt(
            Nonce::from_slice(&nonce),
            Payload {
                msg: &plain,
                aad: &out,
            },
        )
        .map_err(|_| PackError::Tampered)?;
    out.extend_from_slice(&sealed);
    Ok(out)
}

/// The cleartext header of a pack file: key-derivation cost, salt, nonce.
#[derive(Debug)]
pub struct PackHeader<'a> {
    /// Argon2id memory cost, KiB.
    pub m_cost: u32,
    /// Argon2id passes.
    pub t_cost: u32,
    /// Argon2id lanes.
    pub p_cost: u32,
    /// The salt.
    pub salt: &'a [u8],
    /// The AES-GCM nonce.
    pub nonce: &'a [u8],
}

/// Checks a pack file's framing and cost bounds before any key derivation runs.
pub fn parse_header(file: &[u8]) -> Result<PackHeader<'_>, PackError> {
    if file.len() < HEADER + 16 || !file.starts_with(MAGIC) {
        return Err(PackError::Malformed);
    }
    let word = |i: usize| {
        let at = MAGIC.len() + 4 * i;
        u32::from_be_bytes([file[at], file[at + 1], file[at + 2], file[at + 3]])
    };
    let (m, t, p) = (word(0), word(1), word(2));
    if m > MAX_M_COST || t > MAX_T_COST || p != 1 {
        return Err(PackError::Cost { m, t });
    }
    Ok(PackHeader {
        m_cost: m,
        t_cost: t,
        p_cost: p,
        salt: &file[MAGIC.len() + 12..MAGIC.len() + 12 + SALT],
        nonce: &file[HEADER - CHECK - NONCE..HEADER - CHECK],
    })
}

/// Decodes decrypted pack contents and checks they have not expired at `now`.
pub fn decode_contents(plain: &[u8], now: u64) -> Result<PackContents, PackError> {
    let contents: PackContents =
        postcard::from_bytes(plain).map_err(|e| PackError::Contents(e.to_string()))?;
    if now >= contents.expires_at {
        return Err(PackError::Expired {
            expired_at: contents.expires_at,
        });
    }
    Ok(contents)
}

/// Decrypts and authenticates a pack, then checks it has not expired at `now` (unix seconds).
pub fn open_pack(file: &[u8], passphrase: &str, now: u64) -> Result<PackContents, PackError> {
    let header = parse_header(file)?;
    let (m, t, p) = (header.m_cost, header.t_cost, header.p_cost);
    let (salt, nonce) = (header.salt, header.nonce);
    let key = derive(passphrase, salt, m, t, p)?;
    if key_check(&key)[..] != file[HEADER - CHECK..HEADER] {
        return Err(PackError::WrongPassphrase);
    }
    let cipher = Aes256Gcm::new((&*key).into());
    let plain = Zeroizing::new(
        cipher
            .decrypt(
                Nonce::from_slice(nonce),
                Payload {
                    msg: &file[HEADER..],
                    aad: &file[..HEADER],
                },
            )
            .map_err(|_| PackError::Tampered)?,
    );
    decode_contents(&plain, now)
}

/// A fresh one-time passphrase: 25 characters from a 31-character alphabet without
/// look-alikes (about 124 bits), in groups of five for reading aloud.
pub fn generate_passphrase() -> String {
    const ALPHABET: &[u8] = b"abcdefghjkmnpqrstuvwxyz23456789";
    // Rejection sampling keeps every character equally likely.
    let limit = 256 - 256 % ALPHABET.len();
    let mut chars = Vec::with_capacity(25);
    while chars.len() < 25 {
        let mut byte = [0u8; 1];
        rand::rngs::OsRng.fill_bytes(&mut byte);
        if usize::from(byte[0]) < limit {
            chars.push(ALPHABET[usize::from(byte[0]) % ALPHABET.len()] as char);
        }
    }
    chars
        .chunks(5)
        .map(|c| c.iter().collect::<String>())
        .collect::<Vec<_>>()
        .join("-")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(expires_at: u64) -> PackContents {
        PackContents {
            pack_id: "p1".into(),
            cluster_id: "c1".into(),
            cluster_name: "coffer".into(),
            created_at: 100,
            expires_at,
            node_id: 4,
            voter: true,
            api_addr: "https://127.0.0.4:8200".into(),
            peer_addr: "127.0.0.4:8201".into(),
            ca_cert_pem: "ca".into(),
            node_cert_pem: "cert".into(),
            node_key_pem: "key".into(),
            api_cert_pem: "acert".into(),
            api_key_pem: "akey".into(),
            members: vec![],
            unseal_key_hex: None,
            snapshot: vec![1, 2, 3],
        }
    }

    #[test]
    fn round_trip_and_each_refusal_says_which() {
        let file = seal_pack(&sample(1000), "right").unwrap();
        let opened = open_pack(&file, "right", 500).unwrap();
        assert_eq!(opened.node_id, 4);
        assert_eq!(opened.snapshot, vec![1, 2, 3]);

        assert_eq!(
            open_pack(&file, "wrong", 500).unwrap_err(),
            PackError::WrongPassphrase
        );
        let mut tampered = file.clone();
        let last = tampered.len() - 20;
        tampered[last] ^= 1;
        assert_eq!(
            open_pack(&tampered, "right", 500).unwrap_err(),
            PackError::Tampered
        );
        let mut nonce_changed = file.clone();
        nonce_changed[MAGIC.len() + 12 + SALT] ^= 1;
        assert_eq!(
            open_pack(&nonce_changed, "right", 500).unwrap_err(),
            PackError::Tampered
        );
        let mut salt_changed = file.clone();
        salt_changed[MAGIC.len() + 12] ^= 1;
        assert_eq!(
            open_pack(&salt_changed, "right", 500).unwrap_err(),
            PackError::WrongPassphrase,
            "another salt derives another key"
        );
        assert_eq!(
            open_pack(&file[..30], "right", 500).unwrap_err(),
            PackError::Malformed
        );
        assert_eq!(
            open_pack(&file, "right", 1000).unwrap_err(),
            PackError::Expired { expired_at: 1000 }
        );
        let mut costly = file.clone();
        costly[MAGIC.len()..MAGIC.len() + 4].copy_from_slice(&u32::MAX.to_be_bytes());
        assert!(matches!(
            open_pack(&costly, "right", 500),
            Err(PackError::Cost { .. })
        ));
    }

    #[test]
    fn debug_hides_keys_and_passphrases_differ() {
        let shown = format!("{:?}", sample(1));
        assert!(
            !shown.contains("akey") && !shown.contains("\"key\""),
            "{shown}"
        );
        let (a, b) = (generate_passphrase(), generate_passphrase());
        assert_ne!(a, b);
        assert_eq!(a.len(), 29);
    }
}
