//! The vault: the product's rules over the replicated engine. Holds the seal state (root key
//! and keyring in memory only while unsealed), reads and writes encrypted records, and turns
//! every API write into one guarded transaction retried on conflict.

mod audit;
mod audit_archive;
mod audit_log;
mod auth;
mod backup;
mod join;
mod kv;
mod live_restore;
mod mount;
mod pack;
mod records;
mod seal;
mod sessions;
mod shapes;
mod status;
mod token;
mod userpass;

use std::sync::atomic::AtomicU64;
use std::sync::{Arc, RwLock};

use coffer_raft::Engine;

use crate::rules::seal::UnsealProgress;

/// Most entries one list returns (KV keys, policies, users): a bound on the memory and time
/// one request takes, far above what a team's vault holds under one folder.
pub(crate) const LIST_LIMIT: usize = 100_000;

pub use crate::rules::kv::KvMetaUpdate;
pub use audit::SHIP_BATCH;
pub use audit_archive::{ArchiveAnchor, ArchiveRound, SegmentRef, SEGMENT_BYTES, SEGMENT_RECORDS};
pub use audit_log::{
    ArchivedRange, AuditFilter, AuditPage, LostAudit, MergedRecord, NodeChainReport, VerifyReport,
};
pub use auth::{Auth, CapabilityTable, StoredPolicy};
pub use backup::{BackupRecord, BackupSchedule, RestoreMarker};
pub use join::{check_join, send_join, JoinAnswer, JoinRequest};
pub use kv::{Consistency, KvRead, KvTarget, KvVersion};
pub use live_restore::LiveRestoreSummary;
pub use pack::{
    PackRequest, PackSummary, PACK_TTL_DEFAULT_SECS, PACK_TTL_MAX_SECS, PACK_TTL_MIN_SECS,
};
pub use seal::{StoredCa, CA_KEY, COFFER_VERSION, VAULT_API_VERSION};
pub use sessions::LOCAL_SESSION_MAX_TTL_SECS;
pub use shapes::{HealthInfo, InitRequest, InitResponse, KeyStatus, SealStatus};
pub use status::{
    AutopilotServer, AutopilotState, LeaderStatus, MemberChange, NodeMetrics, NodeStatus,
    RaftConfiguration, RaftServer,
};
pub use token::{IssuedToken, TokenRequest, DEFAULT_TTL_SECS, MAX_TTL_SECS};
pub use userpass::{UserRecord, UserUpdate};

/// Seal state of this node.
enum Sealing {
    /// Sealed; shares entered so far.
    Sealed(UnsealProgress),
    /// Unsealed: the root key (to re-wrap the keyring on rotation) and the keyring.
    Unsealed {
        root: crate::crypto::Key,
        keyring: Arc<crate::crypto::keyring::Keyring>,
    },
}

/// Static facts about this node the vault reports.
#[derive(Clone, Debug)]
pub struct NodeInfo {
    /// Raft node id.
    pub node_id: u64,
    /// This node's API address as clients should dial it.
    pub api_addr: String,
    /// Cluster name used at init.
    pub cluster_name: String,
}

/// A node's vault. Cheap to share behind an `Arc`.
pub struct Vault {
    /// The replicated store.
    engine: Engine,
    /// Facts about this node.
    node: NodeInfo,
    /// Seal state; a std lock, never held across an await.
    sealing: RwLock<Sealing>,
    /// Unseal shares refused since start (wrong or foreign shares, failed combinations).
    unseal_failures: AtomicU64,
    /// Parsed ACL policies, by name and revision.
    policy_cache: auth::PolicyCache,
    /// This node's audit spool.
    spool: Arc<crate::audit::Spool>,
    /// Failed-login counters (node-local by design: each node limits what it sees).
    limiter: std::sync::Mutex<crate::rules::ratelimit::LoginLimiter>,
    /// Tokens issued by logins while this node was a read-only standby.
    sessions: sessions::LocalSessions,
    /// Mode changes audited since start.
    mode_changes: AtomicU64,
    /// Token lifetime limits of this node (its config's `default_lease_ttl`/`max_lease_ttl`).
    token_limits: crate::rules::token::TokenLimits,
    /// Scheduled backups: how the last ones went (`None` without a schedule).
    backups: std::sync::Mutex<Option<BackupRecord>>,
    /// Held while this node restores a backup into the cluster (one at a time).
    restoring: tokio::sync::Mutex<()>,
}

impl std::fmt::Debug for Vault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vault")
            .field("node", &self.node)
            .finish_non_exhaustive()
    }
}

impl Vault {
    /// A sealed vault over `engine`.
    pub fn new(engine: Engine, node: NodeInfo, spool: Arc<crate::audit::Spool>) -> Self {
        let vault = Self {
            engine,
            node,
            sealing: RwLock::new(Sealing::Sealed(UnsealProgress::default())),
            unseal_failures: AtomicU64::new(0),
            policy_cache: Default::default(),
            limiter: Default::default(),
            sessions: Default::default(),
            mode_changes: AtomicU64::new(0),
            token_limits: Default::default(),
            backups: Default::default(),
            restoring: Default::default(),
            spool,
        };
        if let Err(e) = vault.load_spool_recipient() {
            tracing::error!("audit spool key unavailable, spool bodies stay in clear: {e}");
        }
        vault
    }

    /// Sets the token lifetime limits (before the vault is shared).
    pub fn with_token_limits(mut self, limits: crate::rules::token::TokenLimits) -> Self {
        self.token_limits = limits;
        self
    }

    /// Stops the replicated engine under the vault (the node's last step, or a test's
    /// simulated stop). Requests after this fail; the spool stays as it is.
    pub async fn shutdown(&self) -> crate::Result<()> {
        Ok(self.engine.shutdown().await?)
    }

    /// Facts about this node.
    pub fn node(&self) -> &NodeInfo {
        &self.node
    }

    /// Audits a change of this node's mode (entering or leaving read-only standby, becoming
    /// leader or follower). The record is in the local spool even while nothing can be
    /// written to the cluster, and merges back with the rest.
    pub async fn audit_mode_change(&self, change: &coffer_raft::ModeChange) -> crate::Result<()> {
        self.mode_changes
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        use crate::audit::{AuditEvent, Outcome, Stage, Who};
        let who = Who {
            name: "system".into(),
            ..Default::default()
        };
        let path = format!("sys/coffer/mode/{}", change.new.as_str());
        let event = AuditEvent {
            detail: format!(
                "{} -> {}: {}",
                change.old.as_str(),
                change.new.as_str(),
                change.reason
            ),
            mode: change.new.as_str().into(),
            ..AuditEvent::new(Stage::Event, who, "mode-change", &path, Outcome::Ok)
        };
        self.audit(event).await.map(|_| ())
    }

    /// Mode changes audited since start.
    pub fn mode_changes_seen(&self) -> u64 {
        self.mode_changes.load(std::sync::atomic::Ordering::Relaxed)
    }
}
