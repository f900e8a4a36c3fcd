//! Audit bodies at rest in the spool are ciphertext (every value at rest is), yet a sealed
//! node must still write records. So bodies are sealed to the cluster's audit spool *public* key (X25519),
//! which every node can read in plaintext; the private key is kept in the replicated state
//! under the keyring, so only an unsealed node can open what the spool holds.
//!
//! Scheme: one ephemeral X25519 key per group commit; the AES-256-GCM key is
//! SHA-256(label | shared secret | ephemeral public | recipient public); each record gets a
//! random nonce and its (node, seq) as associated data, so a body moved to another position
//! fails to open. Line value: base64(ephemeral public (32) | nonce (12) | ciphertext+tag).

use aes_gcm::aead::{Aead, Payload};
use aes_gcm::{Aes256Gcm, KeyInit, Nonce};
use base64::Engine as _;
use rand::RngCore;
use sha2::{Digest, Sha256};
use x25519_dalek::{PublicKey, StaticSecret};
use zeroize::Zeroizing;

const LABEL: &[u8] = b"coffer audit spool v1";

/// An ephemeral public key and the AES key derived for it.
type DerivedKey = ([u8; 32], Zeroizing<[u8; 32]>);

/// The private half; zeroized on drop. Bodies sealed in one group commit share an ephemeral
/// key, so the key derived for the last one seen is kept: reading a batch costs one
/// Diffie-Hellman per group commit rather than one per record.
pub struct SpoolKey {
    secret: StaticSecret,
    public: [u8; 32],
    /// The last ephemeral public key opened for and the AES key derived from it.
    last: std::sync::Mutex<Option<DerivedKey>>,
}

impl std::fmt::Debug for SpoolKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SpoolKey(<redacted>)")
    }
}

impl SpoolKey {
    fn new(secret: StaticSecret) -> Self {
        let public = PublicKey::from(&secret).to_bytes();
        Self {
            secret,
            public,
            last: std::sync::Mutex::new(None),
        }
    }

    /// A fresh key pair.
    pub fn generate() -> Self {
        Self::new(StaticSecret::random_from_rng(rand::rngs::OsRng))
    }

    /// From the 32 secret bytes.
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Self::new(StaticSecret::from(bytes))
    }

    /// The secret bytes, for storing under the keyring.
    pub fn to_bytes(&self) -> Zeroizing<[u8; 32]> {
        Zeroizing::new(self.secret.to_bytes())
    }

    /// The public half.
    pub fn public(&self) -> [u8; 32] {
        self.public
    }

    /// The AES key for bodies sealed with the ephemeral public key `epk`.
    fn body_key(&self, epk: [u8; 32]) -> Zeroizing<[u8; 32]> {
        let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((seen, key)) = last.as_ref() {
            if *seen == epk {
                return key.clone();
            }
        }
        let shared = Zeroizing::new(self.secret.diffie_hellman(&PublicKey::from(epk)).to_bytes());
        let key = derive(&shared, &epk, &self.public);
        *last = Some((epk, key.clone()));
        key
    }

    /// Opens a sealed body of record (node, seq).
    pub fn open(&self, node: u64, seq: u64, sealed: &str) -> Result<Zeroizing<Vec<u8>>, String> {
        let raw = base64::engine::general_purpose::STANDARD
            .decode(sealed)
            .map_err(|_| "sealed audit body is not base64".to_string())?;
        if raw.len() < 32 + 12 + 16 {
            return Err("sealed audit body is truncated".into());
        }
        let epk: [u8; 32] = raw[..32]
            .try_into()
            .map_err(|_| "bad ephemeral key".to_string())?;
        let key = self.body_key(epk);
        let cipher = Aes256Gcm::new(key.as_slice().into());
        let aad = aad(node, seq);
        cipher
            .decrypt(
                Nonce::from_slice(&raw[32..44]),
                Payload {
                    msg: &raw[44..],
                    aad: &aad,
                },
            )
            .map(Zeroizing::new)
            .map_err(|_| "sealed audit body failed authentication".to_string())
    }
}

fn derive(shared: &[u8; 32], epk: &[u8; 32], rpk: &[u8; 32]) -> Zeroizing<[u8; 32]> {
    let mut h = Sha256::new();
    h.update(LABEL);
    h.update(shared);
    h.update(epk);
    h.update(rpk);
    Zeroizing::new(h.finalize().into())
}

fn aad(node: u64, seq: u64) -> [u8; 16] {
    let mut out = [0u8; 16];
    out[..8].copy_from_slice(&node.to_be_bytes());
    out[8..].copy_from_slice(&seq.to_be_bytes());
    out
}

/// Seals bodies for one recipient with one ephemeral key (one per group commit).
pub struct BatchSealer {
    epk: [u8; 32],
    cipher: Aes256Gcm,
}

impl BatchSealer {
    /// A sealer for `recipient` with a fresh ephemeral key.
    pub fn new(recipient: &[u8; 32]) -> Self {
        let esk = StaticSecret::random_from_rng(rand::rngs::OsRng);
        let epk = PublicKey::from(&esk).to_bytes();
        let shared = Zeroizing::new(esk.diffie_hellman(&PublicKey::from(*recipient)).to_bytes());
        let key = derive(&shared, &epk, recipient);
        Self {
            epk,
            cipher: Aes256Gcm::new(key.as_slice().into()),
        }
    }

    /// Seals the body of record (node, seq).
    pub fn seal(&self, node: u64, seq: u64, body: &[u8]) -> String {
        let mut nonce = [0u8; 12];
        rand::rngs::OsRng.fill_bytes(&mut nonce);
        let aad = aad(node, seq);
        // AES-GCM fails only beyond 64 GiB of plaintext.
        let ct = self
            .cipher
            .encrypt(
                Nonce::from_slice(&nonce),
                Payload {
                    msg: body,
                    aad: &aad,
                },
            )
            .expect("AES-GCM encryption of a bounded body");
        let mut raw = Vec::with_capacity(32 + 12 + ct.len());
        raw.extend_from_slice(&self.epk);
        raw.extend_from_slice(&nonce);
        raw.extend_from_slice(&ct);
        base64::engine::general_purpose::STANDARD.encode(raw)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_bodies_open_only_with_the_key_and_at_their_position() {
        let key = SpoolKey::generate();
        let sealer = BatchSealer::new(&key.public());
        let sealed = sealer.seal(1, 7, b"secret/data/team/db");
        assert!(!sealed.contains("team"));
        assert_eq!(
            key.open(1, 7, &sealed).unwrap().as_slice(),
            b"secret/data/team/db"
        );
        assert!(
            key.open(1, 8, &sealed).is_err(),
            "moved to another position"
        );
        assert!(
            SpoolKey::generate().open(1, 7, &sealed).is_err(),
            "another key"
        );
        let restored = SpoolKey::from_bytes(*key.to_bytes());
        assert_eq!(restored.public(), key.public());
    }

    #[test]
    fn bodies_of_several_group_commits_open_in_any_order() {
        // The key derived for one ephemeral key is reused only for that ephemeral key.
        let key = SpoolKey::generate();
        let (a, b) = (
            BatchSealer::new(&key.public()),
            BatchSealer::new(&key.public()),
        );
        let sealed = [
            (1, a.seal(1, 1, b"one")),
            (2, a.seal(1, 2, b"two")),
            (3, b.seal(1, 3, b"three")),
            (4, a.seal(1, 4, b"four")),
        ];
        for (seq, body) in sealed.iter().chain(sealed.iter().rev()) {
            let opened = key.open(1, *seq, body).unwrap();
            assert_eq!(
                opened.as_slice(),
                [&b"one"[..], b"two", b"three", b"four"][*seq as usize - 1]
            );
        }
        let other = SpoolKey::generate();
        assert!(other.open(1, 1, &sealed[0].1).is_err());
    }
}
