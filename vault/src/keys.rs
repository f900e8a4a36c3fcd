//! The storage layout: every key the vault writes to the replicated store, in one place.
//!
//! Keys are plaintext by design (the engine orders and scans them); what a key names is not
//! secret, what it holds is. Every value is an AES-256-GCM envelope bound to its key
//! ([`crate::crypto::envelope`]), except these, stored as they are:
//!
//! | key | value | why not an envelope |
//! |---|---|---|
//! | [`SEAL_CONFIG`] | JSON: share count, threshold, share fingerprints, cluster id | a sealed node reads it to take unseal shares |
//! | [`KEYRING`] | the keyring wrapped by the root key | it *is* what opens envelopes |
//! | [`SPOOL_PUBLIC_KEY`] | the audit spool's X25519 public key | a sealed node seals spool bodies to it |
//! | [`audit_cursor`] | epoch number (u32 BE) and highest merged sequence (u64 BE) | numbers, guarded by the shipper's transactions |
//! | [`audit_epoch_count`] | epochs a node has had (u32 BE) | a number |
//! | [`token_child`], [`token_revoking`] | the marker `1` | the key (a token hash) is the information |
//! | [`RESTORED`] | JSON: how, when, by whom and from what a node was restored; the backup's checksum and MAC | written offline, without the keys; holds no secret |

use sha2::{Digest, Sha256};

/// The seal configuration (plaintext JSON).
pub const SEAL_CONFIG: &[u8] = b"core/seal-config";
/// The keyring, wrapped by the root key.
pub const KEYRING: &[u8] = b"core/keyring";
/// Left by an offline restore or a forced recovery until the first unseal finishes it
/// (plaintext JSON: written without the keys).
pub const RESTORED: &[u8] = b"core/restored";
/// The mount table.
pub const MOUNTS: &[u8] = b"core/mounts";
/// The cluster CA (certificate and key).
pub const CA: &[u8] = b"core/ca";
/// The audit spool's public key (plaintext: a sealed node writes to it).
pub const SPOOL_PUBLIC_KEY: &[u8] = b"core/audit-spool-pub";
/// The audit spool's private key.
pub const SPOOL_SECRET_KEY: &[u8] = b"core/audit-spool-key";

/// Prefix of bootstrap pack records.
pub const PACKS: &str = "core/packs/";

/// A pack's record: under the SHA-256 of its id, so the id itself (a capability) is not a key.
pub fn pack(pack_id: &str) -> Vec<u8> {
    format!("{PACKS}{}", hex::encode(Sha256::digest(pack_id.as_bytes()))).into_bytes()
}

/// An ACL policy.
pub fn policy(name: &str) -> Vec<u8> {
    format!("{POLICIES}{name}").into_bytes()
}

/// Prefix of ACL policies.
pub const POLICIES: &str = "sys/policy/";

/// Prefix of userpass users.
pub const USERS: &str = "auth/userpass/users/";

/// A userpass user.
pub fn user(name: &str) -> Vec<u8> {
    format!("{USERS}{name}").into_bytes()
}

/// Prefix of token records (by the token's SHA-256, never the token).
pub const TOKENS: &str = "auth/token/id/";

/// A token's record: the token's SHA-256, never the token.
pub fn token(token: &str) -> Vec<u8> {
    format!("{TOKENS}{}", hex::encode(Sha256::digest(token.as_bytes()))).into_bytes()
}

/// The hex id inside a token key (what `parent` and the child index hold).
pub fn token_id(key: &[u8]) -> String {
    String::from_utf8_lossy(key)
        .trim_start_matches(TOKENS)
        .to_string()
}

/// A token's record from its hex id.
pub fn token_by_id(id: &str) -> Vec<u8> {
    format!("{TOKENS}{id}").into_bytes()
}

/// Prefix of a parent token's child index.
pub fn token_children(parent_id: &str) -> Vec<u8> {
    format!("auth/token/children/{parent_id}/").into_bytes()
}

/// One entry of a parent's child index.
pub fn token_child(parent_id: &str, child_id: &str) -> Vec<u8> {
    let mut key = token_children(parent_id);
    key.extend_from_slice(child_id.as_bytes());
    key
}

/// Prefix of the accessor index.
pub const ACCESSORS: &str = "auth/token/accessor/";

/// An accessor's entry (holds the token id).
pub fn accessor(accessor: &str) -> Vec<u8> {
    format!("{ACCESSORS}{accessor}").into_bytes()
}

/// Prefix of the revocation queue: tokens deleted whose descendants are still to remove.
pub const TOKEN_REVOKING: &str = "auth/token/revoking/";

/// A queued revocation.
pub fn token_revoking(id: &str) -> Vec<u8> {
    format!("{TOKEN_REVOKING}{id}").into_bytes()
}

/// A KV v2 secret's metadata under mount `mount` (with its trailing `/`).
pub fn kv_meta(mount: &str, path: &str) -> Vec<u8> {
    format!("kv/{mount}meta/{path}").into_bytes()
}

/// Prefix of a KV v2 mount's metadata keys under `folder`.
pub fn kv_meta_prefix(mount: &str, folder: &str) -> Vec<u8> {
    kv_meta(mount, folder)
}

/// One version's data: `kv/<mount>data/<path>\0<version, 8 bytes BE>` (NUL cannot occur in
/// a path, so one path's versions never share a prefix with another path's).
pub fn kv_data(mount: &str, path: &str, version: u64) -> Vec<u8> {
    let mut key = kv_data_prefix(mount, path);
    key.extend_from_slice(&version.to_be_bytes());
    key
}

/// Prefix of every version of one secret.
pub fn kv_data_prefix(mount: &str, path: &str) -> Vec<u8> {
    format!("kv/{mount}data/{path}\0").into_bytes()
}

/// A KV v2 mount's configuration.
pub fn kv_config(mount: &str) -> Vec<u8> {
    format!("kv/{mount}config").into_bytes()
}

/// Everything stored for a mount.
pub fn kv_mount(mount: &str) -> Vec<u8> {
    format!("kv/{mount}").into_bytes()
}

/// Prefix of every audit cursor.
pub const AUDIT_CURSORS: &str = "audit/cursor/";

/// Prefix of one node's audit cursors (one per epoch).
pub fn audit_cursors(node: u64) -> Vec<u8> {
    format!("{AUDIT_CURSORS}{node:020}/").into_bytes()
}

/// The cursor of `node`'s spool epoch `epoch` (plaintext numbers).
pub fn audit_cursor(node: u64, epoch: &str) -> Vec<u8> {
    format!("{AUDIT_CURSORS}{node:020}/{epoch}").into_bytes()
}

/// How many epochs `node` has had (plaintext number).
pub fn audit_epoch_count(node: u64) -> Vec<u8> {
    format!("audit/epoch-count/{node:020}").into_bytes()
}

/// The spool head anchored for `node`'s epoch `epoch`.
pub fn audit_anchor(node: u64, epoch: &str) -> Vec<u8> {
    format!("audit/anchor/{node:020}/{epoch}").into_bytes()
}

/// Prefix of every audit archive anchor.
pub const AUDIT_ARCHIVES: &str = "audit/archive/";

/// How far `node`'s epoch `epoch` is archived, and its segments (envelope).
pub fn audit_archive(node: u64, epoch: &str) -> Vec<u8> {
    format!("{AUDIT_ARCHIVES}{node:020}/{epoch}").into_bytes()
}

/// Prefix of the archive segments of `node`'s epoch `epoch`.
pub fn audit_archive_segments(node: u64, epoch: &str) -> Vec<u8> {
    format!("audit/archive-segment/{node:020}/{epoch}/").into_bytes()
}

/// One archive segment of `node`'s epoch `epoch`, by its first sequence number (envelope).
pub fn audit_archive_segment(node: u64, epoch: &str, first: u64) -> Vec<u8> {
    let mut key = audit_archive_segments(node, epoch);
    key.extend_from_slice(format!("{first:020}").as_bytes());
    key
}

/// Records of `node`'s epoch `epoch` that a restore declared lost: anchored, never merged,
/// and their spool not part of what was restored.
pub fn audit_lost(node: u64, epoch: &str) -> Vec<u8> {
    format!("audit/lost/{node:020}/{epoch}").into_bytes()
}

/// Prefix of merged audit records: all, one node's, or one epoch's.
pub fn audit_log_prefix(node: Option<u64>, epoch: Option<u32>) -> Vec<u8> {
    match (node, epoch) {
        (Some(n), Some(e)) => format!("audit/log/{n:020}/{e:010}/").into_bytes(),
        (Some(n), None) => format!("audit/log/{n:020}/").into_bytes(),
        _ => b"audit/log/".to_vec(),
    }
}

/// One merged audit record.
pub fn audit_log(node: u64, epoch: u32, seq: u64) -> Vec<u8> {
    format!("audit/log/{node:020}/{epoch:010}/{seq:020}").into_bytes()
}

/// A merged record's position `(node, epoch number, seq)` from its key.
pub fn audit_log_position(key: &[u8]) -> Option<(u64, u32, u64)> {
    let text = std::str::from_utf8(key).ok()?.strip_prefix("audit/log/")?;
    let mut parts = text.split('/');
    let position = (
        parts.next()?.parse().ok()?,
        parts.next()?.parse().ok()?,
        parts.next()?.parse().ok()?,
    );
    parts.next().is_none().then_some(position)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_keys_of_different_paths_never_collide() {
        assert_ne!(kv_data("secret/", "a", 1), kv_data("secret/", "a\0", 1));
        // Deleting every version of "a" (prefix "…/a\0") must not touch "a/b".
        assert!(!kv_data("secret/", "a/b", 1).starts_with(&kv_data_prefix("secret/", "a")));
    }

    #[test]
    fn token_keys_hold_no_token() {
        let t = "hvs.AAAABBBBCCCCDDDDEEEEFFFF";
        let key = String::from_utf8(token(t)).unwrap();
        assert!(!key.contains(&t[4..]));
        assert_eq!(token_by_id(&token_id(key.as_bytes())), key.as_bytes());
    }

    #[test]
    fn an_audit_key_says_its_epoch() {
        assert_eq!(audit_log_position(&audit_log(3, 2, 99)), Some((3, 2, 99)));
        assert_eq!(audit_log_position(b"audit/log/3/2"), None);
        assert_eq!(audit_log_position(b"audit/cursor/3/2/1"), None);
    }
}

/// What a stored key holds, as a backup counts it (from the key alone: keys are plaintext).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StoredKind {
    /// A KV v2 secret's metadata.
    Secret,
    /// One version of a secret.
    Version,
    /// A userpass user.
    User,
    /// An ACL policy.
    Policy,
    /// A token.
    Token,
    /// A record of the merged audit log.
    AuditRecord,
}

/// The kind of record `key` names, if it is one a backup counts. A version's key holds a NUL
/// (which no path can); a secret's metadata is under `kv/<mount>meta/`.
pub fn classify(key: &[u8]) -> Option<StoredKind> {
    let text = std::str::from_utf8(key).ok();
    if key.starts_with(b"kv/") {
        if key.contains(&0) {
            return Some(StoredKind::Version);
        }
        return text
            .filter(|t| t.contains("/meta/"))
            .map(|_| StoredKind::Secret);
    }
    let text = text?;
    if text.starts_with(USERS) {
        Some(StoredKind::User)
    } else if text.starts_with(POLICIES) {
        Some(StoredKind::Policy)
    } else if text.starts_with(TOKENS) {
        Some(StoredKind::Token)
    } else if text.starts_with("audit/log/") {
        Some(StoredKind::AuditRecord)
    } else {
        None
    }
}
