//! Audit: every security-relevant event becomes one hash-chained record, durable in the
//! node's local spool before the request is answered, then shipped exactly once into the
//! replicated audit log under the node's cursor.
//!
//! - [`record`]: the record, its hash chain, and chain verification (pure).
//! - [`spool`]: the local, fsynced, group-committed spool.
//! - shipping and querying live on the vault (`vault/audit_log.rs`), because they need the
//!   keyring and the engine.

pub mod record;
pub mod request;
pub mod sealing;
pub mod spool;

pub use record::{chain, verify_chain, AuditEvent, AuditRecord, ChainProblem};
pub use request::{classify, Outcome, RequestAudit, RequestOp, Stage, Who};
pub use sealing::SpoolKey;
pub use spool::{Spool, SpoolError, SpoolStats};
