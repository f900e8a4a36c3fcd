//! What the node is and how it is doing, as plain values: its mode and staleness, the leader,
//! the Raft configuration, the members, and the figures `sys/metrics` exports. The API layer
//! reads these, never the engine.

use std::sync::atomic::Ordering::Relaxed;

use coffer_raft::{MembershipChange, NodeMode};

use super::{Auth, Vault};
use crate::error::Result;
use crate::node::{MemberStatus, ModeChange};
use crate::rules::policy::Capability;

/// The node's mode and how stale its local reads may be.
#[derive(Clone, Debug)]
pub struct NodeStatus {
    /// A read-only standby: no leader heard from, or no quorum.
    pub read_only: bool,
    /// The last log index applied to local state.
    pub applied_index: u64,
    /// Milliseconds since a leader last reached this node (on a leader: since a quorum
    /// acknowledged it).
    pub last_contact_ms: u64,
}

/// Who leads, as `sys/leader` reports it.
#[derive(Clone, Debug)]
pub struct LeaderStatus {
    /// This node leads.
    pub is_self: bool,
    /// The leader's API address (empty if none is known).
    pub api_addr: String,
    /// The leader's peer address (empty if none is known).
    pub peer_addr: String,
    /// The highest log index this node knows to be committed.
    pub committed_index: u64,
    /// The last log index applied here.
    pub applied_index: u64,
}

/// One server of the Raft configuration.
#[derive(Clone, Debug)]
pub struct RaftServer {
    /// Node id.
    pub node_id: u64,
    /// Peer address.
    pub address: String,
    /// Whether it leads.
    pub leader: bool,
    /// Voter (or learner).
    pub voter: bool,
}

/// The Raft configuration (Vault's `sys/storage/raft/configuration`).
#[derive(Clone, Debug)]
pub struct RaftConfiguration {
    /// Log index of the membership entry.
    pub index: u64,
    /// The servers.
    pub servers: Vec<RaftServer>,
}

/// A change an operator makes to the membership.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MemberChange {
    /// Remove a node.
    Remove(u64),
    /// Promote a caught-up learner.
    Promote(u64),
    /// The leader hands leadership to another voter.
    StepDown,
}

/// The figures `sys/metrics` exports.
#[derive(Clone, Debug)]
pub struct NodeMetrics {
    /// Audit records made durable in the local spool.
    pub audit_appends: u64,
    /// Spool group commits (one fsync each).
    pub audit_fsyncs: u64,
    /// Seconds spent in spool fsync.
    pub audit_fsync_seconds: f64,
    /// Seconds requests waited for their audit record, summed.
    pub audit_wait_seconds: f64,
    /// Highest durable spool sequence number.
    pub audit_spool_last_seq: u64,
    /// Highest sequence number of this node's spool merged into the cluster log.
    pub audit_merged_seq: u64,
    /// Records of this node's spool not merged yet.
    pub audit_spool_backlog: u64,
    /// Audit archive segment files this node holds, and their bytes.
    pub audit_archive_segments: u64,
    /// See `audit_archive_segments`.
    pub audit_archive_bytes: u64,
    /// Last log index applied locally.
    pub applied_index: u64,
    /// Last log index.
    pub last_log_index: u64,
    /// Current Raft term.
    pub term: u64,
    /// This node leads.
    pub is_leader: bool,
    /// This node is a read-only standby.
    pub read_only: bool,
    /// Milliseconds since the last contact with a leader (a leader: a quorum ack).
    pub last_contact_ms: u64,
    /// Mode changes since start.
    pub mode_changes: u64,
    /// This node is sealed.
    pub sealed: bool,
    /// Unseal shares refused since start.
    pub unseal_failures: u64,
    /// Peer refusals by reason.
    pub peer_refusals: Vec<(&'static str, u64)>,
    /// Linearizable reads and the leadership confirmations they took, by where the node
    /// confirmed: `[("leader", reads, rounds), ("follower", reads, requests)]`.
    pub read_index: [(&'static str, u64, u64); 2],
    /// Log entries sent to followers while leading: `(whole, as ids a follower held)`.
    pub entries_sent: (u64, u64),
    /// Scheduled backups: how they went (`None` without a schedule).
    pub backups: Option<crate::BackupRecord>,
}

impl Vault {
    /// The node's mode and staleness.
    pub fn node_status(&self) -> NodeStatus {
        NodeStatus {
            read_only: self.engine.mode() == NodeMode::ReadOnly,
            applied_index: self.engine.applied_index(),
            last_contact_ms: self.engine.contact_age_ms(),
        }
    }

    /// Every mode change of this node from now on.
    pub fn mode_changes(&self) -> tokio::sync::broadcast::Receiver<ModeChange> {
        self.engine.mode_changes()
    }

    /// Who leads (`sys/leader`: unauthenticated, as in Vault).
    pub async fn leader_status(&self) -> Result<LeaderStatus> {
        let is_self = self.engine.is_leader();
        let leader = self.engine.leader().map(|(_, a)| a).unwrap_or_default();
        Ok(LeaderStatus {
            is_self,
            api_addr: if is_self {
                self.node.api_addr.clone()
            } else {
                leader.api_addr
            },
            peer_addr: leader.peer_addr,
            committed_index: self.engine.committed_index().await?,
            applied_index: self.engine.applied_index(),
        })
    }

    /// `sys/storage/raft/configuration` (sudo).
    pub fn raft_configuration(&self, auth: &Auth) -> Result<RaftConfiguration> {
        auth.require_sudo("sys/storage/raft/configuration", Capability::Read)?;
        let roster = self.engine.roster_local();
        let servers = self
            .engine
            .members_local()
            .into_iter()
            .map(|m| RaftServer {
                node_id: m.id,
                address: m.addr.peer_addr,
                leader: m.leader,
                voter: m.voter,
            })
            .collect();
        Ok(RaftConfiguration {
            index: roster.index,
            servers,
        })
    }

    /// The members and their replication progress (`operator members`).
    pub async fn members(&self, auth: &Auth) -> Result<Vec<MemberStatus>> {
        auth.require("sys/coffer/members", Capability::Read)?;
        Ok(self.engine.members().await?)
    }

    /// Removes, promotes, or steps down (`operator remove-node|promote|step-down`). The ACL
    /// is checked on `acl_path`, the path the request names (`sys/step-down`,
    /// `sys/coffer/members/3`, …), with `sudo`: `delete` to remove there, `update` otherwise.
    pub async fn change_members(
        &self,
        auth: &Auth,
        acl_path: &str,
        change: MemberChange,
    ) -> Result<u64> {
        let (cap, change) = match change {
            MemberChange::Remove(id) if acl_path.starts_with("sys/coffer/members/") => {
                (Capability::Delete, MembershipChange::Remove { id })
            }
            MemberChange::Remove(id) => (Capability::Update, MembershipChange::Remove { id }),
            MemberChange::Promote(id) => (Capability::Update, MembershipChange::Promote { id }),
            MemberChange::StepDown => (Capability::Update, MembershipChange::StepDown),
        };
        auth.require_sudo(acl_path, cap)?;
        Ok(self.engine.change_membership(change).await?)
    }

    /// The figures `sys/metrics` exports (the caller checks the metrics ACL).
    pub fn metrics(&self, auth: &Auth) -> Result<NodeMetrics> {
        auth.require("sys/metrics", Capability::Read)?;
        let stats = self.spool.stats();
        let archive = self.engine.archive().usage();
        let m = self.engine.metrics().borrow().clone();
        let secs = |n: u64| n as f64 / 1e9;
        Ok(NodeMetrics {
            audit_appends: stats.appends.load(Relaxed),
            audit_fsyncs: stats.fsyncs.load(Relaxed),
            audit_fsync_seconds: secs(stats.fsync_nanos.load(Relaxed)),
            audit_wait_seconds: secs(stats.wait_nanos.load(Relaxed)),
            audit_spool_last_seq: self.spool.last_seq(),
            audit_merged_seq: self.own_audit_cursor().unwrap_or(0),
            audit_spool_backlog: self.audit_backlog(),
            audit_archive_segments: archive.0,
            audit_archive_bytes: archive.1,
            applied_index: self.engine.applied_index(),
            last_log_index: m.last_log_index.unwrap_or(0),
            term: m.current_term,
            is_leader: self.engine.is_leader(),
            read_only: self.engine.mode() == NodeMode::ReadOnly,
            last_contact_ms: self.engine.contact_age_ms(),
            mode_changes: self.mode_changes_seen(),
            sealed: self.is_sealed(),
            unseal_failures: self.seal_status().map(|s| s.unseal_failures).unwrap_or(0),
            peer_refusals: self.engine.refusals().snapshot(),
            read_index: {
                let ((lr, lc), (fr, fc)) = self.engine.read_index_stats();
                [("leader", lr, lc), ("follower", fr, fc)]
            },
            entries_sent: self.engine.entries_sent(),
            backups: self.backup_record(),
        })
    }
}
