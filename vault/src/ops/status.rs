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
    /// Whether the audit spool refuses records.
    pub audit_spool_failed: bool,
    /// On the leader: each member's replication progress (empty elsewhere).
    pub peers: Vec<MemberStatus>,
    /// On the leader: voters that may fail with a healthy quorum left (as
    /// `sys/storage/raft/autopilot/state` counts them); 0 elsewhere.
    pub failure_tolerance: u64,
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

    /// Refuses a caller without `read` on `sys/metrics`.
    pub fn require_metrics(&self, auth: &Auth) -> Result<()> {
        auth.require("sys/metrics", Capability::Read)
    }

    /// The figures `sys/metrics` exports, for a caller [`Vault::require_metrics`] let in
    /// (or one the API layer admits by address, `unauthenticated_metrics_from`). None is a
    /// secret: counts, indexes, sizes and states.
    pub fn node_metrics(&self) -> NodeMetrics {
        let is_leader = self.engine.is_leader();
        let peers = if is_leader {
            self.engine.members_local()
        } else {
            Vec::new()
        };
        let failure_tolerance = autopilot_state(&peers, 0).failure_tolerance;
        let stats = self.spool.stats();
        let archive = self.engine.archive().usage();
        let m = self.engine.metrics().borrow().clone();
        let secs = |n: u64| n as f64 / 1e9;
        NodeMetrics {
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
            is_leader,
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
            audit_spool_failed: self.spool.failure().is_some(),
            peers,
            failure_tolerance,
        }
    }
}

/// A server is healthy for autopilot when the leader heard from it within this long
/// (Vault's `last_contact_threshold` default).
pub const AUTOPILOT_LAST_CONTACT_THRESHOLD_MS: u64 = 10_000;
/// … and it trails the leader's log by at most this many entries (Vault's
/// `max_trailing_logs` default).
pub const AUTOPILOT_MAX_TRAILING_LOGS: u64 = 1_000;

/// One server in `sys/storage/raft/autopilot/state`, in Vault's shape.
#[derive(Clone, Debug, serde::Serialize)]
pub struct AutopilotServer {
    /// Node id.
    pub id: String,
    /// Node name (the id).
    pub name: String,
    /// Peer address.
    pub address: String,
    /// `alive` when the leader heard from it within the threshold, else `failed`.
    pub node_status: &'static str,
    /// Since the leader last heard from it, as a duration (`"0.35s"`); empty if never.
    pub last_contact: String,
    /// The leader's current term.
    pub last_term: u64,
    /// Highest log index known to be on it.
    pub last_index: u64,
    /// Heard from recently and not trailing.
    pub healthy: bool,
    /// `leader`, `voter` or `non-voter`.
    pub status: &'static str,
    /// `voter` or `non-voter` (a read-only standby learner).
    pub node_type: &'static str,
}

/// `sys/storage/raft/autopilot/state`, in Vault's shape.
#[derive(Clone, Debug, serde::Serialize)]
pub struct AutopilotState {
    /// Every voter is healthy.
    pub healthy: bool,
    /// How many voters may fail with the cluster still holding a quorum of healthy ones.
    pub failure_tolerance: u64,
    /// The same, counting every voter as healthy.
    pub optimistic_failure_tolerance: u64,
    /// The leader's id.
    pub leader: String,
    /// Voter ids.
    pub voters: Vec<String>,
    /// Learner ids.
    pub non_voters: Vec<String>,
    /// Each server, by id.
    pub servers: std::collections::BTreeMap<String, AutopilotServer>,
}

/// Autopilot's view of `members` (the leader's) at `term`: who is healthy, and how many voters
/// may fail (healthy voters beyond a quorum of all voters, as Vault counts).
pub fn autopilot_state(members: &[MemberStatus], term: u64) -> AutopilotState {
    let mut servers = std::collections::BTreeMap::new();
    let (mut voters, mut non_voters, mut leader) = (Vec::new(), Vec::new(), String::new());
    let mut healthy_voters = 0u64;
    for m in members {
        let id = m.id.to_string();
        let contact = m.last_contact_ms;
        let alive = m.leader || contact.is_some_and(|ms| ms <= AUTOPILOT_LAST_CONTACT_THRESHOLD_MS);
        let healthy = alive && m.lag.is_some_and(|lag| lag <= AUTOPILOT_MAX_TRAILING_LOGS);
        if m.voter {
            voters.push(id.clone());
            healthy_voters += u64::from(healthy);
        } else {
            non_voters.push(id.clone());
        }
        if m.leader {
            leader.clone_from(&id);
        }
        let status = match (m.leader, m.voter) {
            (true, _) => "leader",
            (false, true) => "voter",
            (false, false) => "non-voter",
        };
        servers.insert(
            id.clone(),
            AutopilotServer {
                name: id.clone(),
                id,
                address: m.addr.peer_addr.clone(),
                node_status: if alive { "alive" } else { "failed" },
                last_contact: contact
                    .map_or_else(String::new, |ms| format!("{}s", ms as f64 / 1000.0)),
                last_term: term,
                last_index: m.matched_index.unwrap_or(0),
                healthy,
                status,
                node_type: if m.voter { "voter" } else { "non-voter" },
            },
        );
    }
    let quorum = voters.len() as u64 / 2 + 1;
    AutopilotState {
        healthy: healthy_voters == voters.len() as u64 && !voters.is_empty(),
        failure_tolerance: healthy_voters.saturating_sub(quorum),
        optimistic_failure_tolerance: (voters.len() as u64).saturating_sub(quorum),
        leader,
        voters,
        non_voters,
        servers,
    }
}

impl Vault {
    /// `GET sys/storage/raft/autopilot/state` (`read` on that path): the leader's view.
    pub async fn autopilot_state(&self, auth: &Auth) -> Result<AutopilotState> {
        auth.require("sys/storage/raft/autopilot/state", Capability::Read)?;
        let members = self.engine.members().await?;
        let term = self.engine.metrics().borrow().current_term;
        Ok(autopilot_state(&members, term))
    }
}

#[cfg(test)]
mod autopilot_tests {
    use super::*;
    use coffer_raft::NodeAddr;

    fn member(
        id: u64,
        voter: bool,
        leader: bool,
        contact: Option<u64>,
        lag: Option<u64>,
    ) -> MemberStatus {
        MemberStatus {
            id,
            addr: NodeAddr::default(),
            voter,
            leader,
            matched_index: Some(10),
            lag,
            last_contact_ms: contact,
        }
    }

    #[test]
    fn failure_tolerance_counts_healthy_voters_beyond_a_quorum() {
        let all = [
            member(1, true, true, Some(0), Some(0)),
            member(2, true, false, Some(40), Some(0)),
            member(3, true, false, Some(60), Some(3)),
            member(4, false, false, Some(50), Some(0)),
        ];
        let s = autopilot_state(&all, 7);
        assert!(s.healthy);
        assert_eq!(
            (s.failure_tolerance, s.optimistic_failure_tolerance),
            (1, 1)
        );
        assert_eq!(
            (s.leader.as_str(), s.voters.len(), s.non_voters.len()),
            ("1", 3, 1)
        );
        assert_eq!(s.servers["4"].status, "non-voter");

        let one_down = [
            member(1, true, true, Some(0), Some(0)),
            member(2, true, false, Some(40), Some(0)),
            member(3, true, false, None, None),
        ];
        let s = autopilot_state(&one_down, 7);
        assert!(!s.healthy);
        assert_eq!(
            (s.failure_tolerance, s.optimistic_failure_tolerance),
            (0, 1)
        );
        assert_eq!(s.servers["3"].node_status, "failed");

        let trailing = [
            member(1, true, true, Some(0), Some(0)),
            member(
                2,
                true,
                false,
                Some(40),
                Some(AUTOPILOT_MAX_TRAILING_LOGS + 1),
            ),
        ];
        assert!(!autopilot_state(&trailing, 7).servers["2"].healthy);
    }
}
