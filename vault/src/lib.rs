//! Coffer's product rules: the barrier (root key, keyring, AES-256-GCM envelope), KV v2
//! semantics, tokens, the mount table, and the vault facade that applies them to the
//! replicated engine. No HTTP here.

pub mod audit;
pub mod clock;
pub mod crypto;
pub mod error;
#[doc(hidden)]
pub mod fuzz;
pub mod kv2;
pub mod mounts;
pub mod pack;
pub mod policy;
pub mod ratelimit;
pub mod seal;
pub mod tokens;
mod vault;

pub use error::{Result, VaultError};
pub use vault::{
    check_join, send_join, JoinAnswer, JoinRequest, PackRequest, PackSummary, StoredCa, CA_KEY,
    PACK_TTL_DEFAULT_SECS, PACK_TTL_MAX_SECS, PACK_TTL_MIN_SECS,
};
pub use vault::{
    AuditFilter, Auth, Consistency, HealthInfo, InitRequest, InitResponse, IssuedToken, KeyStatus,
    KvMetaUpdate, KvRead, KvVersion, MergedRecord, NodeChainReport, NodeInfo, SealStatus,
    StoredPolicy, TokenRequest, UserRecord, UserUpdate, Vault, VerifyReport, DEFAULT_TTL_SECS,
    LOCAL_SESSION_MAX_TTL_SECS, MAX_TTL_SECS, SHIP_BATCH,
};
