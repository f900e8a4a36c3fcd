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

/// The private half; zeroized on drop.
pub struct SpoolKey(StaticSecret);

impl std::fmt::Debug for SpoolKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SpoolKey(<redacted>)")
    }
}

impl SpoolKey {
    /// A fresh key pair.
    pub fn generate() -> Self {
        Self(StaticSecret::random_from_rng(rand::rngs::OsRng))
    }

    /// From the 32 secret bytes.
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(StaticSecret::from(bytes))
    }

    /// The secret bytes, for storing under the keyring.
    pub fn to_bytes(&self) -> Zeroizing<[u8; 32]> {
        Zeroizing::new(self.0.to_bytes())
    }

    /// The public half.
    pub fn public(&self) -> [u8; 32] {
        PublicKey::from(&self.0).to_bytes()
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
        let key = derive(
            &self.0.diffie_hellman(&PublicKey::from(epk)).to_bytes(),
            &epk,
            &self.public(),
        );
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
}
