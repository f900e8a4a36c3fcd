//! Coffer's product rules: the barrier (root key, keyring, AES-256-GCM envelope), KV v2
//! semantics, tokens, the mount table, and the vault facade that applies them to the
//! replicated engine. No HTTP here.

pub mod audit;
pub mod clock;
pub mod crypto;
pub mod error;
pub mod kv2;
pub mod mounts;
pub mod policy;
pub mod ratelimit;
pub mod seal;
pub mod tokens;
mod vault;

pub use error::{Result, VaultError};
pub use vault::{
    Auth, HealthInfo, InitRequest, InitResponse, IssuedToken, KeyStatus, KvMetaUpdate, KvRead,
    KvVersion, NodeInfo, SealStatus, StoredPolicy, TokenRequest, UserRecord, UserUpdate, Vault,
    DEFAULT_TTL_SECS, MAX_TTL_SECS,
};
pub use vault::{StoredCa, CA_KEY};
