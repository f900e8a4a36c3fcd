//! Request and response shapes of the system operations, and token authentication.

use serde::{Deserialize, Serialize};

/// `sys/init` request (Vault's shape).
#[derive(Clone, Debug, Default, Deserialize)]
pub struct InitRequest {
    /// Number of key shares.
    pub secret_shares: u8,
    /// Shares needed to unseal.
    pub secret_threshold: u8,
    /// Use this root token instead of a random one (dev mode's `--dev-root-token-id`).
    #[serde(skip)]
    pub root_token_id: Option<String>,
}

/// `sys/init` response. Holds the only copies of the shares and root token: never logged.
#[derive(Serialize)]
pub struct InitResponse {
    /// Shares, hex.
    pub keys: Vec<String>,
    /// Shares, base64.
    pub keys_base64: Vec<String>,
    /// The initial root token.
    pub root_token: String,
}

impl std::fmt::Debug for InitResponse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("InitResponse(<redacted>)")
    }
}

/// `sys/seal-status` response.
#[derive(Clone, Debug, Serialize)]
pub struct SealStatus {
    #[serde(rename = "type")]
    /// Seal type (`shamir`).
    pub kind: String,
    /// Whether the vault is initialized.
    pub initialized: bool,
    /// Whether this node is sealed.
    pub sealed: bool,
    /// Threshold.
    pub t: u8,
    /// Shares.
    pub n: u8,
    /// Shares entered so far.
    pub progress: usize,
    /// Unseal attempt nonce (Vault clients expect the field).
    pub nonce: String,
    /// The Vault version whose API this server answers as ([`crate::VAULT_API_VERSION`]).
    pub version: String,
    /// Coffer's own version.
    pub coffer_version: String,
    /// Build date (Vault clients expect the field).
    pub build_date: String,
    /// Whether a seal migration is running (never).
    pub migration: bool,
    /// Cluster name, once initialized and unsealed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cluster_name: Option<String>,
    /// Cluster id, once initialized and unsealed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cluster_id: Option<String>,
    /// Whether this is a recovery seal (never).
    pub recovery_seal: bool,
    /// Storage backend.
    pub storage_type: String,
    /// Coffer: unseal shares refused on this node since it started.
    pub unseal_failures: u64,
}

/// What `sys/health` needs to know.
#[derive(Clone, Debug, Serialize)]
pub struct HealthInfo {
    /// Initialized.
    pub initialized: bool,
    /// Sealed.
    pub sealed: bool,
    /// Whether this node is a standby (not the leader).
    pub standby: bool,
    /// Vault field, always false.
    pub performance_standby: bool,
    /// Vault field.
    pub replication_performance_mode: String,
    /// Vault field.
    pub replication_dr_mode: String,
    /// Unix seconds.
    pub server_time_utc: i64,
    /// The Vault version whose API this server answers as ([`crate::VAULT_API_VERSION`]).
    pub version: String,
    /// Coffer's own version.
    pub coffer_version: String,
    /// Cluster name (once known).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cluster_name: Option<String>,
    /// Cluster id (once known).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cluster_id: Option<String>,
    /// Coffer: last applied Raft index on this node.
    pub applied_index: u64,
    /// Coffer: this node is a read-only standby (no leader or no quorum): reads from local
    /// state, writes refused.
    pub read_only: bool,
    /// Coffer: milliseconds since the last contact with a leader (on a leader, since a
    /// quorum acknowledged it).
    pub last_contact_ms: u64,
    /// Coffer: why the audit spool refuses records, if it does (the node then refuses
    /// every audited request).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub audit_spool_error: Option<String>,
    /// Coffer: audit records in this node's spool not yet merged into the cluster's log (a
    /// read-only standby's grow until it reconnects; a node serving more audited requests
    /// than it can merge grows them too).
    pub audit_spool_backlog: u64,
    /// Coffer: how scheduled backups went (present when `[backup]` is configured).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_backup: Option<super::BackupRecord>,
}

/// `sys/key-status` response.
#[derive(Clone, Debug, Serialize)]
pub struct KeyStatus {
    /// Active term.
    pub term: u32,
    /// When the active term was installed.
    pub install_time: String,
}
