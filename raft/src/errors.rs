//! The engine's errors and the one place they are translated: openraft's errors into
//! [`EngineError`], and [`EngineError`] to and from [`ForwardError`] (what travels between
//! a node and the leader it forwards to). Each translation keeps the distinction callers
//! act on: *not delivered* (safe to retry: [`EngineError::NotLeader`],
//! [`EngineError::NoLeader`], [`EngineError::ReadOnly`]), *refused for what it asks* (never
//! applied: [`EngineError::InvalidTxn`], [`EngineError::Refused`]), and *outcome unknown*
//! (a write reached a leader and may or may not have committed:
//! [`EngineError::OutcomeUnknown`]).

use openraft::error::{CheckIsLeaderError, ClientWriteError, RaftError};

use crate::transport::ForwardError;
use crate::types::{NodeAddr, NodeId};

/// Why an engine operation failed.
#[derive(Clone, Debug, thiserror::Error)]
pub enum EngineError {
    /// This node is not the leader; writes must go to `leader_id`. Nothing was written.
    #[error("not the leader (leader: {leader_id:?})")]
    NotLeader {
        /// The leader this node knows of, if any.
        leader_id: Option<NodeId>,
        /// Its API address, if known.
        leader_api_addr: Option<String>,
    },
    /// This node is a read-only standby: no leader heard from (or, on a leader, no quorum)
    /// for longer than `standby_after`. Writes are refused at once; nothing was written.
    #[error("read-only: no quorum — last contact with leader {last_contact_ms} ms ago")]
    ReadOnly {
        /// Milliseconds since the last contact with a leader (or quorum acknowledgement).
        last_contact_ms: u64,
    },
    /// No leader could be reached or confirmed (no quorum, an election in progress, the
    /// leader unreachable). The request was not delivered: nothing was written.
    #[error("no leader: {0}")]
    NoLeader(String),
    /// A write reached a leader but its answer did not come back (the leader changed or
    /// contact was lost while it was in flight, Raft stopped): it may or may not have
    /// committed. Read before retrying a write that is not idempotent.
    #[error("outcome unknown: {0}")]
    OutcomeUnknown(String),
    /// A transaction that can never be valid (empty prefix delete, oversize key or value).
    #[error("invalid transaction: {0}")]
    InvalidTxn(String),
    /// Refused for what it asks (a membership change that does not fit the cluster, an
    /// application message the leader rejected); retrying elsewhere would not help.
    #[error("{0}")]
    Refused(String),
    /// The Raft configuration was rejected.
    #[error("raft configuration: {0}")]
    Config(String),
    /// RocksDB, snapshot files or openraft failed.
    #[error("storage: {0}")]
    Storage(String),
    /// A local read met the whole state being replaced (a restore, or a snapshot installed
    /// from the leader): refused rather than answered from half of each. Retry shortly.
    #[error("the state is being replaced (a restore or a snapshot install); retry shortly")]
    Replacing,
}

impl EngineError {
    /// A storage failure, with its message.
    pub(crate) fn storage(e: impl std::fmt::Display) -> Self {
        EngineError::Storage(e.to_string())
    }
}

/// A forwarded request's failure, as the forwarding node sees it.
impl From<ForwardError> for EngineError {
    fn from(e: ForwardError) -> Self {
        match e {
            ForwardError::NotLeader(leader_id) => EngineError::NotLeader {
                leader_id,
                leader_api_addr: None,
            },
            ForwardError::ReadOnly(last_contact_ms) => EngineError::ReadOnly { last_contact_ms },
            ForwardError::Unreachable(msg) | ForwardError::Untrusted(msg) => {
                EngineError::NoLeader(format!("leader unreachable: {msg}"))
            }
            ForwardError::OutcomeUnknown(msg) => EngineError::OutcomeUnknown(msg),
            ForwardError::Invalid(msg) => EngineError::InvalidTxn(msg),
            ForwardError::Refused(msg) => EngineError::Refused(msg),
        }
    }
}

/// How an engine failure on the leader travels back to the node that forwarded the request.
impl From<EngineError> for ForwardError {
    fn from(e: EngineError) -> Self {
        match e {
            EngineError::NotLeader { leader_id, .. } => ForwardError::NotLeader(leader_id),
            EngineError::ReadOnly { last_contact_ms } => ForwardError::ReadOnly(last_contact_ms),
            EngineError::NoLeader(msg) => ForwardError::Unreachable(msg),
            // A read refused: nothing was done, and it is safe to repeat.
            e @ EngineError::Replacing => ForwardError::Unreachable(e.to_string()),
            EngineError::InvalidTxn(msg) => ForwardError::Invalid(msg),
            EngineError::Refused(msg) => ForwardError::Refused(msg),
            // The leader received the request; a failure now leaves its outcome unknown.
            e @ (EngineError::OutcomeUnknown(_)
            | EngineError::Config(_)
            | EngineError::Storage(_)) => ForwardError::OutcomeUnknown(e.to_string()),
        }
    }
}

/// A failed proposal (a write or a membership change) on this node's Raft.
pub(crate) fn proposal_error(
    e: RaftError<NodeId, ClientWriteError<NodeId, NodeAddr>>,
) -> EngineError {
    match e {
        RaftError::APIError(ClientWriteError::ForwardToLeader(f)) => EngineError::NotLeader {
            leader_id: f.leader_id,
            leader_api_addr: f.leader_node.map(|n| n.api_addr),
        },
        RaftError::APIError(ClientWriteError::ChangeMembershipError(c)) => {
            EngineError::Refused(c.to_string())
        }
        // Raft stopped with the proposal in its hands: it may have been appended and
        // replicated before it did.
        RaftError::Fatal(f) => EngineError::OutcomeUnknown(format!("raft stopped: {f}")),
    }
}

/// A failed leadership confirmation for a read.
pub(crate) fn read_index_error(
    e: RaftError<NodeId, CheckIsLeaderError<NodeId, NodeAddr>>,
) -> EngineError {
    match e {
        RaftError::APIError(CheckIsLeaderError::ForwardToLeader(f)) => EngineError::NotLeader {
            leader_id: f.leader_id,
            leader_api_addr: f.leader_node.map(|n| n.api_addr),
        },
        // The quorum check timed out (a loaded peer answered late): still the leader as far
        // as anyone knows, and a read is safe to repeat.
        RaftError::APIError(e @ CheckIsLeaderError::QuorumNotEnough(_)) => {
            EngineError::NoLeader(e.to_string())
        }
        RaftError::Fatal(f) => EngineError::Storage(format!("raft stopped: {f}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every kind survives the round trip through the wire as the same kind: retryable stays
    /// retryable, refused stays refused, unknown stays unknown.
    #[test]
    fn translations_keep_the_kind() {
        let cases = [
            (EngineError::NoLeader("x".into()), "no leader"),
            (EngineError::OutcomeUnknown("x".into()), "outcome unknown"),
            (EngineError::InvalidTxn("x".into()), "invalid"),
            (EngineError::Refused("x".into()), "refused"),
            (EngineError::Storage("x".into()), "outcome unknown"),
            (EngineError::ReadOnly { last_contact_ms: 7 }, "read-only"),
            (
                EngineError::NotLeader {
                    leader_id: Some(2),
                    leader_api_addr: None,
                },
                "not leader",
            ),
        ];
        for (e, want) in cases {
            let back = EngineError::from(ForwardError::from(e));
            let kind = match back {
                EngineError::NoLeader(_) => "no leader",
                EngineError::OutcomeUnknown(_) => "outcome unknown",
                EngineError::InvalidTxn(_) => "invalid",
                EngineError::Refused(_) => "refused",
                EngineError::ReadOnly { last_contact_ms: 7 } => "read-only",
                EngineError::NotLeader {
                    leader_id: Some(2), ..
                } => "not leader",
                other => panic!("unexpected {other:?}"),
            };
            assert_eq!(kind, want);
        }
    }
}
