//! The peer transport: Raft RPCs over mutual TLS on a dedicated port.
//!
//! - [`codec`]: length-prefixed postcard frames with a size bound.
//! - [`server`]: accepts peers whose certificate comes from the cluster CA, learns their node
//!   id from the certificate, and serves a request only if that certificate is the one the
//!   membership pins for that node ([`trust`]), and the request claims no other node.
//! - [`client`]: openraft's `RaftNetworkFactory`; `new_client` never connects, each client
//!   keeps one long-lived connection and reconnects after a failure.

pub mod client;
pub mod codec;
pub mod forward;
pub mod server;
pub mod trust;

use openraft::error::{InstallSnapshotError, RaftError};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::types::{NodeId, TypeConfig};

pub use client::PeerNetwork;
pub use forward::Forwarder;
pub use server::serve_peers;
pub use trust::{PeerCaller, Refusal, Refusals, Roster};

/// What a node presents and trusts on the peer port. The key is zeroized on drop.
pub struct PeerIdentity {
    /// This node's id (bound in its certificate).
    pub node_id: NodeId,
    /// The cluster CA certificate, PEM.
    pub ca_pem: String,
    /// This node's certificate, PEM.
    pub cert_pem: String,
    /// This node's private key, PEM.
    pub key_pem: Zeroizing<String>,
    /// The local address outgoing peer connections come from (this node's peer address),
    /// so that firewalls and partitions between node addresses apply to them; `None` lets
    /// the kernel choose.
    pub source_ip: Option<std::net::IpAddr>,
}

impl std::fmt::Debug for PeerIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PeerIdentity")
            .field("node_id", &self.node_id)
            .finish_non_exhaustive()
    }
}

/// An RPC on the peer channel.
#[derive(Debug, Serialize, Deserialize)]
pub enum PeerRequest {
    /// Log replication and heartbeats.
    AppendEntries(AppendEntriesRequest<TypeConfig>),
    /// Leader election.
    Vote(VoteRequest<NodeId>),
    /// One snapshot chunk.
    InstallSnapshot(InstallSnapshotRequest<TypeConfig>),
    /// A client write a follower forwards to the leader.
    Forward(crate::txn::Txn),
    /// A follower asks the leader for a linearizable read index.
    ReadIndex,
    /// An application message (the vault layer's, e.g. a joining node registering its pack),
    /// sent by the node that holds the certificate. Handled by the leader. The one request a
    /// certificate that is not a member's may send: the vault layer judges it.
    App(Vec<u8>),
    /// An application message a member relays to the leader for `origin`, the certificate
    /// that presented it to the member. Accepted only from current members.
    AppRelayed {
        /// Who sent the message to the relaying member.
        origin: trust::PeerCaller,
        /// The message.
        body: Vec<u8>,
    },
    /// A membership change for the leader to run.
    Membership(crate::engine::membership::MembershipChange),
    /// The leader's view of the members and their progress.
    Members,
    /// This node's membership view with pinned certificates (asked by a lagging member
    /// that does not know a peer yet).
    Roster,
    /// An AppendEntries whose entries the follower probably holds already, sent as their
    /// log ids (see [`AppendKnownRequest`]). Last, so the older variants keep their tags.
    AppendKnown(AppendKnownRequest),
}

/// An AppendEntries carrying the ids of its entries instead of the entries.
///
/// A new leader does not know how far each follower's log matches its own, and openraft
/// finds out by sending entries from the middle of the retained log, up to
/// `max_payload_entries` at a time, until one is accepted: after a leader change under load
/// that is thousands of entries (audit batches of up to 1 MiB among them) sent to followers
/// that hold them all, and the first write of the new term waits for it. Raft's log matching
/// property says that two logs with an entry of the same index and term hold the same
/// entries up to it, so a follower holding every id listed holds exactly the entries the
/// leader meant to send, and its log matches the leader's up to the last of them: it runs
/// the AppendEntries with that entry as the previous one and nothing to add (reading only
/// the ids at the front of its stored entries). If it lacks some, it answers
/// [`PeerResponse::Held`] with how many of the leading ids it holds, and only the rest are
/// sent.
#[derive(Debug, Serialize, Deserialize)]
pub struct AppendKnownRequest {
    /// The leader's vote.
    pub vote: openraft::Vote<NodeId>,
    /// The id of the entry before the first one listed.
    pub prev_log_id: Option<openraft::LogId<NodeId>>,
    /// The leader's commit index.
    pub leader_commit: Option<openraft::LogId<NodeId>>,
    /// The ids of consecutive entries.
    pub log_ids: Vec<openraft::LogId<NodeId>>,
}

impl PeerRequest {
    /// The node the request says it comes from (the leader or candidate in its vote).
    pub fn claimed_sender(&self) -> Option<NodeId> {
        let vote = match self {
            PeerRequest::AppendEntries(r) => &r.vote,
            PeerRequest::AppendKnown(r) => &r.vote,
            PeerRequest::Vote(r) => &r.vote,
            PeerRequest::InstallSnapshot(r) => &r.vote,
            // Forwarded requests speak for whoever holds the certificate.
            PeerRequest::Forward(_)
            | PeerRequest::ReadIndex
            | PeerRequest::App(_)
            | PeerRequest::AppRelayed { .. }
            | PeerRequest::Membership(_)
            | PeerRequest::Members
            | PeerRequest::Roster => return None,
        };
        vote.leader_id().voted_for()
    }
}

/// The answer to a [`PeerRequest`].
#[derive(Debug, Serialize, Deserialize)]
pub enum PeerResponse {
    /// Answer to `AppendEntries`.
    AppendEntries(Result<AppendEntriesResponse<NodeId>, RaftError<NodeId>>),
    /// Answer to `Vote`.
    Vote(Result<VoteResponse<NodeId>, RaftError<NodeId>>),
    /// Answer to `InstallSnapshot`.
    InstallSnapshot(
        Result<InstallSnapshotResponse<NodeId>, RaftError<NodeId, InstallSnapshotError>>,
    ),
    /// Answer to `Forward`: the transaction's result and the log index it was committed at
    /// (what the follower waits to apply), or why the leader could not run it.
    Forwarded(Result<(crate::txn::TxnResult, u64), ForwardError>),
    /// Answer to `ReadIndex`: the log index a linearizable read must wait for.
    ReadIndex(Result<u64, ForwardError>),
    /// Answer to `App` / `AppRelayed`.
    App(Result<Vec<u8>, ForwardError>),
    /// Answer to `Membership`: the log index of the change (0 when nothing changed).
    Membership(Result<u64, ForwardError>),
    /// Answer to `Members`.
    Members(Result<Vec<crate::engine::membership::MemberStatus>, ForwardError>),
    /// Answer to `Roster`.
    Roster(trust::Roster),
    /// The server refused the request; the reason is also in its log.
    Refused(String),
    /// Answer to `AppendKnown` when the follower lacks some of the entries: how many of the
    /// leading ids it holds (the leader sends the entries after them).
    Held(u64),
}

/// Why a forwarded request failed on the node that received it.
#[derive(Debug, Clone, Serialize, Deserialize, thiserror::Error)]
pub enum ForwardError {
    /// That node is not (or no longer) the leader.
    #[error("node is not the leader (leader: {0:?})")]
    NotLeader(Option<NodeId>),
    /// The node is a read-only standby (the leader has no quorum): refused at once.
    #[error("read-only: no quorum — last contact with leader {0} ms ago")]
    ReadOnly(u64),
    /// The node at that address does not share our cluster CA (its certificate is not from
    /// it, or it refused ours): the request never reached it, and no retry there will help.
    #[error("{0}")]
    Untrusted(String),
    /// The request never reached the node (connect or send failed): safe to retry.
    #[error("{0}")]
    Unreachable(String),
    /// The request reached the node but its answer did not come back (no quorum, another
    /// Raft failure, the answer lost): a write's outcome is unknown.
    #[error("{0}")]
    OutcomeUnknown(String),
    /// A transaction that can never be valid; it was not applied.
    #[error("invalid transaction: {0}")]
    Invalid(String),
    /// The request was refused for what it asks (a bad membership change, a rejected
    /// application message); retrying elsewhere would not help.
    #[error("{0}")]
    Refused(String),
}

/// The future an [`AppHandler`] returns.
pub type AppFuture =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<Vec<u8>, String>> + Send>>;

/// Handles application messages on the leader: `(sender, body) -> answer`. The sender is the
/// certificate that presented the message (its node id and fingerprint), which may or may
/// not be a member's: the handler decides what it may do.
pub type AppHandler = std::sync::Arc<dyn Fn(trust::PeerCaller, Vec<u8>) -> AppFuture + Send + Sync>;
