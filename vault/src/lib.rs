//! Coffer's product: the barrier (root key, keyring, AES-256-GCM envelope), KV v2,
//! identities and policies, audit, packs, and the [`Vault`] facade that applies them to the
//! replicated engine. No HTTP here.
//!
//! - [`rules`]: the product's rules as pure functions, no I/O (one module per concern);
//! - `ops`: the facade's operations, one module per concern named as its rules;
//! - [`keys`]: the storage layout, and which values are stored without an envelope;
//! - [`audit`]: audit records, their chain, and the node's spool;
//! - [`crypto`]: the barrier's primitives;
//! - [`node`]: running a node (files, engine, peers, joining from a pack).

pub mod audit;
pub mod clock;
pub mod crypto;
pub mod error;
#[doc(hidden)]
pub mod fuzz;
pub mod keys;
pub mod node;
mod ops;
pub mod rules;

pub use error::{Result, VaultError};
pub use ops::SegmentRef;
pub use ops::{
    check_join, send_join, JoinAnswer, JoinRequest, PackRequest, PackSummary, StoredCa, CA_KEY,
    COFFER_VERSION, PACK_TTL_DEFAULT_SECS, PACK_TTL_MAX_SECS, PACK_TTL_MIN_SECS, VAULT_API_VERSION,
};
pub use ops::{
    ArchiveAnchor, ArchiveRound, ArchivedRange, AuditFilter, AuditPage, Auth, AutopilotServer,
    AutopilotState, BackupRecord, BackupSchedule, CapabilityTable, Consistency, HealthInfo,
    InitRequest, InitResponse, IssuedToken, KeyStatus, KvMetaUpdate, KvRead, KvTarget, KvVersion,
    LeaderStatus, LiveRestoreSummary, MemberChange, MergedRecord, NodeChainReport, NodeInfo,
    NodeMetrics, NodeStatus, RaftConfiguration, RaftServer, RestoreMarker, SealStatus,
    StoredPolicy, TokenRequest, UserRecord, UserUpdate, Vault, VerifyReport, DEFAULT_TTL_SECS,
    LOCAL_SESSION_MAX_TTL_SECS, MAX_TTL_SECS, SEGMENT_BYTES, SEGMENT_RECORDS, SHIP_BATCH,
};
