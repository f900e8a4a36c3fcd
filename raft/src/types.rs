//! The openraft type configuration and the request/response types that travel in the log.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::txn::{Txn, TxnResult};

/// A node's id. Bound into its peer certificate by `coffer-tls`.
pub type NodeId = u64;

/// What the cluster knows about a member: where clients and peers reach it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeAddr {
    /// HTTPS API address, e.g. `https://10.0.0.1:8200`; returned by `sys/leader`.
    pub api_addr: String,
    /// `host:port` of the mutual-TLS peer listener.
    pub peer_addr: String,
    /// SHA-256 (hex) of the node's peer certificate: the one certificate the cluster accepts
    /// from this node (and expects when dialing it). Pinned when the node joins; removing
    /// the node from the membership revokes it.
    pub cert_sha256: String,
}

impl fmt::Display for NodeAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "api={} peer={}", self.api_addr, self.peer_addr)
    }
}

/// A command in the replicated log. One variant today; an enum so the log format can grow
/// without a migration.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    /// An atomic, guarded transaction on the key-value state machine.
    Txn(Txn),
}

impl fmt::Display for Command {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            // Keys are plaintext by design; values are ciphertext but still never printed.
            Command::Txn(t) => write!(f, "txn({} compares, {} ops)", t.compares.len(), t.ops.len()),
        }
    }
}

openraft::declare_raft_types!(
    /// Coffer's openraft type configuration.
    pub TypeConfig:
        D = Command,
        R = TxnResult,
        NodeId = NodeId,
        Node = NodeAddr,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = tokio::fs::File,
        AsyncRuntime = openraft::TokioRuntime,
);

/// The Raft handle type used throughout Coffer.
pub type Raft = openraft::Raft<TypeConfig>;
/// A log id of this configuration.
pub type LogId = openraft::LogId<NodeId>;
/// Storage errors as openraft wants them.
pub type StorageError = openraft::StorageError<NodeId>;
/// Membership as stored in the state machine.
pub type StoredMembership = openraft::StoredMembership<NodeId, NodeAddr>;
/// Raft metrics of this configuration.
pub type RaftMetrics = openraft::RaftMetrics<NodeId, NodeAddr>;
