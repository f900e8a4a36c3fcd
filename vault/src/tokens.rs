//! Token records. Tokens are stored only as SHA-256 hashes (the storage key); the record,
//! encrypted, holds the accessor, policies and lifetime. A token is 24 random base62
//! characters after Vault's `hvs.` prefix, so clients that sniff the prefix treat it right.

use std::collections::BTreeMap;

use rand::Rng;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// A stored token.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenEntry {
    /// Public handle that can look up or revoke the token without knowing it.
    pub accessor: String,
    /// Attached policies (`root` grants everything).
    pub policies: Vec<String>,
    /// Human label (`root`, `userpass-alice`, `token`).
    pub display_name: String,
    /// Auth path that created it (`auth/token/root`, `auth/userpass/login/alice`).
    pub path: String,
    /// Creation time, Unix seconds.
    pub creation_time: i64,
    /// TTL in seconds at creation; 0 never expires.
    pub creation_ttl: u64,
    /// Expiry, Unix seconds; `None` never.
    pub expire_time: Option<i64>,
    /// Free-form metadata.
    pub meta: BTreeMap<String, String>,
    /// Whether the token may be renewed.
    pub renewable: bool,
    /// Storage key (hex of the hash) of the parent token; `None` for orphans. Revoking the
    /// parent revokes this token.
    #[serde(default)]
    pub parent: Option<String>,
    /// Hard limit on the token's life in seconds from creation; 0 none.
    #[serde(default)]
    pub explicit_max_ttl: u64,
    /// Periodic tokens renew to this many seconds and have no maximum; 0 not periodic.
    #[serde(default)]
    pub period: u64,
}

impl TokenEntry {
    /// Whether the token is expired at Unix time `now`.
    pub fn expired(&self, now: i64) -> bool {
        self.expire_time.is_some_and(|t| t <= now)
    }
}

/// A new random token string.
pub fn generate_token() -> String {
    format!("hvs.{}", random_base62(24))
}

/// A new random accessor.
pub fn generate_accessor() -> String {
    random_base62(24)
}

fn random_base62(len: usize) -> String {
    const ALPHABET: &[u8] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
    let mut rng = rand::rngs::OsRng;
    (0..len)
        .map(|_| ALPHABET[rng.gen_range(0..ALPHABET.len())] as char)
        .collect()
}

/// Storage key of a token record: the token's SHA-256, never the token.
pub fn token_key(token: &str) -> Vec<u8> {
    format!(
        "auth/token/id/{}",
        hex::encode(Sha256::digest(token.as_bytes()))
    )
    .into_bytes()
}

/// The hex id inside a token storage key (what `parent` and the child index hold).
pub fn token_id_of_key(key: &[u8]) -> String {
    String::from_utf8_lossy(key)
        .trim_start_matches("auth/token/id/")
        .to_string()
}

/// Storage key of a token record from its hex id.
pub fn token_key_from_id(id: &str) -> Vec<u8> {
    format!("auth/token/id/{id}").into_bytes()
}

/// Prefix of the child index of a parent token.
pub fn children_prefix(parent_id: &str) -> Vec<u8> {
    format!("auth/token/children/{parent_id}/").into_bytes()
}

/// Storage key mapping an accessor to its token record key.
pub fn accessor_key(accessor: &str) -> Vec<u8> {
    format!("auth/token/accessor/{accessor}").into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_random_and_stored_hashed() {
        let a = generate_token();
        let b = generate_token();
        assert_ne!(a, b);
        assert!(a.starts_with("hvs.") && a.len() == 28);
        let key = String::from_utf8(token_key(&a)).unwrap();
        assert!(
            !key.contains(&a[4..]),
            "storage key must not contain the token"
        );
    }
}
