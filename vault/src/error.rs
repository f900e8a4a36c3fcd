//! The vault's one error type. Variants carry what a client may be told; internals travel in
//! `Internal` and are logged by the API layer, never shown.

use coffer_raft::EngineError;

/// Why a vault operation failed.
#[derive(Debug, thiserror::Error)]
pub enum VaultError {
    /// The request is malformed or breaks a rule (400).
    #[error("{0}")]
    InvalidRequest(String),
    /// Missing, unknown or expired token, or not allowed (403).
    #[error("permission denied")]
    PermissionDenied,
    /// Not allowed, for a reason the caller may know (403): e.g. only a root token may put
    /// the root key in a pack.
    #[error("permission denied: {0}")]
    Forbidden(String),
    /// Nothing at that path (404).
    #[error("{0}")]
    NotFound(String),
    /// Check-and-set mismatch (400, as Vault answers it).
    #[error("check-and-set parameter did not match the current version")]
    CasMismatch,
    /// The vault has not been initialized (503 on data routes, as Vault).
    #[error("Vault is not initialized")]
    NotInitialized,
    /// `sys/init` on an initialized vault (400).
    #[error("Vault is already initialized")]
    AlreadyInitialized,
    /// The node is sealed (503).
    #[error("Vault is sealed")]
    Sealed,
    /// An unseal share that is malformed or not one of this vault's shares (400).
    #[error("{0}")]
    BadUnsealKey(String),
    /// Too many failed logins (429).
    #[error("{0}")]
    RateLimited(String),
    /// Writes cannot be served now: no leader / no quorum (503).
    #[error("{0}")]
    Unavailable(String),
    /// A write reached the leader but its answer was lost (the leader changed or contact
    /// was lost in flight): it may or may not have been applied (503). Read before retrying.
    #[error("the outcome of the write is unknown ({0}); read the current state before retrying")]
    OutcomeUnknown(String),
    /// Storage, Raft or crypto failure; details are for the log only (500).
    #[error("internal error")]
    Internal(String),
}

impl VaultError {
    /// Wraps an internal failure, keeping its text for the log.
    pub fn internal(e: impl std::fmt::Display) -> Self {
        VaultError::Internal(e.to_string())
    }
}

impl From<EngineError> for VaultError {
    fn from(e: EngineError) -> Self {
        match e {
            EngineError::NotLeader { leader_id, .. } => VaultError::Unavailable(match leader_id {
                Some(id) => format!("this node is not the leader; the leader is node {id}"),
                None => "no leader: the cluster is electing one or has no quorum".into(),
            }),
            EngineError::NoLeader(msg) => VaultError::Unavailable(format!("no leader: {msg}")),
            e @ (EngineError::ReadOnly { .. } | EngineError::Replacing) => {
                VaultError::Unavailable(e.to_string())
            }
            EngineError::OutcomeUnknown(msg) => VaultError::OutcomeUnknown(msg),
            EngineError::InvalidTxn(msg) | EngineError::Refused(msg) => {
                VaultError::InvalidRequest(msg)
            }
            other => VaultError::Internal(other.to_string()),
        }
    }
}

/// Shorthand.
pub type Result<T, E = VaultError> = std::result::Result<T, E>;
