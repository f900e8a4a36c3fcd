//! Seal configuration and unseal progress: pure logic, no storage.
//!
//! The seal configuration is the one record kept in plaintext in the replicated state (a
//! sealed node must read it): share count, threshold, and a salted SHA-256 of each share so
//! that a share that is not one of this vault's is refused on entry, not after the threshold
//! is reached. A share is 33 random-looking bytes; its hash reveals nothing useful.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use crate::crypto::shamir;
use crate::crypto::Key;

/// Storage key of the seal configuration (plaintext).
pub const SEAL_CONFIG_KEY: &[u8] = crate::keys::SEAL_CONFIG;

/// Persisted seal parameters (Vault's `sys/init` shape plus share fingerprints).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SealConfig {
    /// Number of shares the root key was split into.
    pub secret_shares: u8,
    /// Shares needed to unseal.
    pub secret_threshold: u8,
    /// Random salt of the share fingerprints, hex.
    pub share_salt: String,
    /// SHA-256(salt | share) of every share, hex.
    pub share_fingerprints: Vec<String>,
    /// Cluster identity, reported by `sys/health` and `sys/seal-status`.
    pub cluster_id: String,
    /// Cluster name.
    pub cluster_name: String,
}

fn fingerprint(salt: &[u8], share: &[u8]) -> String {
    let mut h = Sha256::new();
    h.update(salt);
    h.update(share);
    hex::encode(h.finalize())
}

/// A fresh root key and the shares it is split into.
pub struct InitMaterial {
    /// The root key.
    pub root: Key,
    /// The shares (zeroized on drop).
    pub shares: Vec<Zeroizing<Vec<u8>>>,
    /// The seal config describing them.
    pub config: SealConfig,
}

/// Creates a root key, splits it, and describes the split.
pub fn init_material(
    shares: u8,
    threshold: u8,
    cluster_name: &str,
) -> Result<InitMaterial, shamir::ShamirError> {
    let root = Key::generate();
    let parts = shamir::split(root.expose(), shares, threshold)?;
    let mut salt = [0u8; 16];
    rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut salt);
    let config = SealConfig {
        secret_shares: shares,
        secret_threshold: threshold,
        share_salt: hex::encode(salt),
        share_fingerprints: parts.iter().map(|s| fingerprint(&salt, s)).collect(),
        cluster_id: uuid::Uuid::new_v4().to_string(),
        cluster_name: cluster_name.to_string(),
    };
    Ok(InitMaterial {
        root,
        shares: parts,
        config,
    })
}

/// Decodes an unseal key as Vault accepts it: hex or standard base64.
pub fn decode_share(input: &str) -> Option<Zeroizing<Vec<u8>>> {
    use base64::Engine;
    let input = input.trim();
    if let Ok(bytes) = hex::decode(input) {
        return Some(Zeroizing::new(bytes));
    }
    base64::engine::general_purpose::STANDARD
        .decode(input)
        .ok()
        .map(Zeroizing::new)
}

/// What entering one share did.
#[derive(Debug, PartialEq, Eq)]
pub enum ShareOutcome {
    /// Accepted; this many distinct shares are now held.
    Progress(usize),
    /// Already entered; progress unchanged.
    Duplicate(usize),
    /// Threshold reached: the combined root key candidate is returned.
    Complete,
}

/// Shares entered so far on this node (memory only, zeroized).
#[derive(Default)]
pub struct UnsealProgress {
    /// Distinct accepted shares.
    shares: Vec<Zeroizing<Vec<u8>>>,
}

impl UnsealProgress {
    /// Number of shares held.
    pub fn len(&self) -> usize {
        self.shares.len()
    }

    /// Whether no share is held.
    pub fn is_empty(&self) -> bool {
        self.shares.is_empty()
    }

    /// Forgets every share.
    pub fn reset(&mut self) {
        self.shares.clear();
    }

    /// Checks `share` against the config and adds it. `Err` names why it was refused.
    pub fn add(
        &mut self,
        config: &SealConfig,
        share: Zeroizing<Vec<u8>>,
    ) -> Result<ShareOutcome, String> {
        let salt = hex::decode(&config.share_salt)
            .map_err(|_| "corrupt seal configuration".to_string())?;
        let fp = fingerprint(&salt, &share);
        if !config.share_fingerprints.contains(&fp) {
            return Err("invalid unseal key: it is not one of this vault's key shares".into());
        }
        if self.shares.iter().any(|s| s.as_slice() == share.as_slice()) {
            return Ok(ShareOutcome::Duplicate(self.shares.len()));
        }
        self.shares.push(share);
        if self.shares.len() >= config.secret_threshold as usize {
            Ok(ShareOutcome::Complete)
        } else {
            Ok(ShareOutcome::Progress(self.shares.len()))
        }
    }

    /// Combines the held shares into the root key and forgets them.
    pub fn take_root(&mut self) -> Result<Key, String> {
        let refs: Vec<&[u8]> = self.shares.iter().map(|s| s.as_slice()).collect();
        let secret = shamir::combine(&refs).map_err(|e| e.to_string());
        self.reset();
        Key::from_slice(&secret?).ok_or_else(|| "combined key has the wrong length".to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn three_of_five_unseal_two_do_not_and_strangers_are_refused() {
        let m = init_material(5, 3, "c").unwrap();
        let mut p = UnsealProgress::default();
        assert_eq!(
            p.add(&m.config, m.shares[0].clone()),
            Ok(ShareOutcome::Progress(1))
        );
        assert_eq!(
            p.add(&m.config, m.shares[0].clone()),
            Ok(ShareOutcome::Duplicate(1))
        );
        assert_eq!(
            p.add(&m.config, m.shares[3].clone()),
            Ok(ShareOutcome::Progress(2))
        );
        let stranger = init_material(5, 3, "c").unwrap();
        assert!(p.add(&m.config, stranger.shares[0].clone()).is_err());
        assert_eq!(p.len(), 2, "a refused share does not count toward progress");
        assert_eq!(
            p.add(&m.config, m.shares[4].clone()),
            Ok(ShareOutcome::Complete)
        );
        assert_eq!(p.take_root().unwrap().expose(), m.root.expose());
        assert!(p.is_empty());
    }

    #[test]
    fn shares_decode_from_hex_and_base64() {
        use base64::Engine;
        let raw = vec![1u8, 2, 3, 250];
        assert_eq!(
            decode_share(&hex::encode(&raw)).unwrap().as_slice(),
            &raw[..]
        );
        let b64 = base64::engine::general_purpose::STANDARD.encode(&raw);
        assert_eq!(decode_share(&b64).unwrap().as_slice(), &raw[..]);
        assert!(decode_share("not a key!").is_none());
    }
}
