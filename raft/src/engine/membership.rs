//! Cluster membership as operators see it: who is a member, voter or learner, how far behind,
//! when last heard from; and the changes they make (add a learner, promote, remove, step
//! down). Changes run on the leader; a follower forwards them over the peer channel.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use openraft::error::{ClientWriteError, RaftError};
use openraft::{ChangeMembers, ServerState};
use serde::{Deserialize, Serialize};

use crate::types::{NodeAddr, NodeId};
use crate::{Engine, EngineError};

/// A learner is promoted only when it is at most this many entries behind the leader.
pub const PROMOTE_MAX_LAG: u64 = 100;

/// How long a promotion waits for a learner the leader has not heard from yet (just added,
/// or a leader just elected) to answer, before it is refused.
const PROMOTE_WAIT: Duration = Duration::from_secs(3);

/// How long a stepping-down leader waits (heartbeats off) for another voter to be elected:
/// a few election timeouts, after which it leads on and says so.
const STEP_DOWN_WAIT: Duration = Duration::from_secs(10);

/// A membership change an operator (or a joining node) asks of the leader.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum MembershipChange {
    /// Add a node as a learner (it receives the log, does not vote). Idempotent.
    AddLearner {
        /// The node's id.
        id: NodeId,
        /// Where it is reached.
        addr: NodeAddr,
    },
    /// Make a caught-up learner a voter. Idempotent.
    Promote {
        /// The learner's id.
        id: NodeId,
    },
    /// Remove a voter or learner from the cluster.
    Remove {
        /// The node's id.
        id: NodeId,
    },
    /// The leader stops sending heartbeats until another voter has taken over.
    StepDown,
}

/// One member as the leader sees it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct MemberStatus {
    /// Node id.
    pub id: NodeId,
    /// API and peer addresses.
    pub addr: NodeAddr,
    /// Voter (true) or learner.
    pub voter: bool,
    /// Whether it is the leader.
    pub leader: bool,
    /// Highest log index known to be replicated to it (the leader's own last log index for
    /// the leader).
    pub matched_index: Option<u64>,
    /// Entries it is behind the leader's last log index.
    pub lag: Option<u64>,
    /// Milliseconds since the leader last had an answer from it (0 for the leader).
    pub last_contact_ms: Option<u64>,
}

/// When the last successful exchange with each peer happened, and how replicated entries
/// went out (kept by the peer network).
#[derive(Debug, Default)]
pub struct ContactBook {
    /// Last answer per peer.
    last: Mutex<HashMap<NodeId, Instant>>,
    /// Log entries sent whole in AppendEntries.
    entries_whole: std::sync::atomic::AtomicU64,
    /// Log entries sent as their ids to a follower that held them (`AppendKnown`).
    entries_held: std::sync::atomic::AtomicU64,
}

impl ContactBook {
    /// Counts entries sent to a follower: `whole`, and `held` (as ids, the follower had them).
    pub fn count_entries(&self, whole: u64, held: u64) {
        use std::sync::atomic::Ordering::Relaxed;
        self.entries_whole.fetch_add(whole, Relaxed);
        self.entries_held.fetch_add(held, Relaxed);
    }

    /// `(whole, held)` entries sent since start.
    pub fn entries_sent(&self) -> (u64, u64) {
        use std::sync::atomic::Ordering::Relaxed;
        (
            self.entries_whole.load(Relaxed),
            self.entries_held.load(Relaxed),
        )
    }

    /// Records an answer from `peer` now.
    pub fn heard_from(&self, peer: NodeId) {
        if let Ok(mut m) = self.last.lock() {
            m.insert(peer, Instant::now());
        }
    }

    /// Milliseconds since `peer` last answered, if ever.
    pub fn since(&self, peer: NodeId) -> Option<u64> {
        let m = self.last.lock().ok()?;
        m.get(&peer)
            .map(|t| u64::try_from(t.elapsed().as_millis()).unwrap_or(u64::MAX))
    }
}

/// A failed membership proposal, with what was being done.
fn change_error<E: std::fmt::Display>(
    e: RaftError<NodeId, ClientWriteError<NodeId, NodeAddr>>,
    what: E,
) -> EngineError {
    match crate::errors::proposal_error(e) {
        EngineError::Refused(why) => EngineError::Refused(format!("{what}: {why}")),
        EngineError::OutcomeUnknown(why) => EngineError::OutcomeUnknown(format!("{what}: {why}")),
        other => other,
    }
}

impl Engine {
    /// The cluster's members with replication progress. On a follower, asks the leader (which
    /// alone knows each member's progress); with no leader, or none reachable, lists the local
    /// view without progress.
    pub async fn members(&self) -> Result<Vec<MemberStatus>, EngineError> {
        if !self.is_leader() {
            if let Some((leader, addr)) = self.leader() {
                if let Some(fw) = self.forwarder() {
                    match fw.members(leader, &addr).await {
                        Ok(members) => return Ok(members),
                        Err(e) => tracing::warn!(
                            "the leader's view of the members is unavailable, showing ours: {e}"
                        ),
                    }
                }
            }
        }
        Ok(self.members_local())
    }

    /// The members from this node's metrics (progress only if this node leads).
    pub fn members_local(&self) -> Vec<MemberStatus> {
        let m = self.metrics();
        let m = m.borrow();
        let membership = m.membership_config.membership();
        let voters: BTreeSet<NodeId> = membership.voter_ids().collect();
        let leading = m.state == ServerState::Leader;
        let last = m.last_log_index.unwrap_or(0);
        membership
            .nodes()
            .map(|(id, addr)| {
                let is_self = *id == self.node_id();
                // A member the leader replicates to but that never answered has matched
                // nothing: no progress (not index 0), so it is never promoted unheard.
                let matched = if is_self && leading {
                    m.last_log_index
                } else {
                    m.replication
                        .as_ref()
                        .and_then(|r| r.get(id))
                        .and_then(|l| l.map(|l| l.index))
                };
                MemberStatus {
                    id: *id,
                    addr: addr.clone(),
                    voter: voters.contains(id),
                    leader: m.current_leader == Some(*id),
                    matched_index: matched,
                    lag: matched.filter(|_| leading).map(|i| last.saturating_sub(i)),
                    last_contact_ms: if is_self {
                        Some(0)
                    } else if leading {
                        self.contacts().and_then(|c| c.since(*id))
                    } else {
                        None
                    },
                }
            })
            .collect()
    }

    /// Applies `change` on the leader (here, or forwarded to it). Returns the log index of
    /// the membership entry (0 when nothing had to change).
    pub async fn change_membership(&self, change: MembershipChange) -> Result<u64, EngineError> {
        if !self.is_leader() {
            if let (Some(fw), Some((leader, addr))) = (self.forwarder(), self.leader()) {
                return fw
                    .membership(leader, &addr, change)
                    .await
                    .map_err(EngineError::from);
            }
        }
        self.change_membership_local(change).await
    }

    /// Applies `change` if this node leads; `NotLeader` otherwise.
    pub async fn change_membership_local(
        &self,
        change: MembershipChange,
    ) -> Result<u64, EngineError> {
        let raft = self.raft();
        let membership = {
            let m = self.metrics();
            let m = m.borrow();
            m.membership_config.membership().clone()
        };
        let is_voter = |id: &NodeId| membership.voter_ids().any(|v| v == *id);
        match change {
            MembershipChange::AddLearner { id, addr } => {
                if let Some(known) = membership.get_node(&id) {
                    if *known == addr {
                        return Ok(0);
                    }
                    return Err(EngineError::Refused(format!(
                        "node {id} is already a member at {known}; remove it first"
                    )));
                }
                let resp = raft
                    .add_learner(id, addr, false)
                    .await
                    .map_err(|e| change_error(e, format!("adding node {id}")))?;
                tracing::info!(node = id, "added learner");
                Ok(resp.log_id.index)
            }
            MembershipChange::Promote { id } => {
                if is_voter(&id) {
                    return Ok(0);
                }
                if membership.get_node(&id).is_none() {
                    return Err(EngineError::Refused(format!("node {id} is not a member")));
                }
                // A voter never answered would leave the quorum short until it does.
                let _ = raft
                    .wait(Some(PROMOTE_WAIT))
                    .metrics(
                        |m| {
                            m.replication
                                .as_ref()
                                .and_then(|r| r.get(&id))
                                .is_some_and(Option::is_some)
                        },
                        "the learner answered",
                    )
                    .await;
                let lag = self
                    .members_local()
                    .into_iter()
                    .find(|s| s.id == id)
                    .and_then(|s| s.lag);
                match lag {
                    Some(lag) if lag <= PROMOTE_MAX_LAG => {}
                    Some(lag) => {
                        return Err(EngineError::Refused(format!(
                            "node {id} is {lag} entries behind (at most {PROMOTE_MAX_LAG} to promote); try again when it has caught up"
                        )))
                    }
                    None => {
                        return Err(EngineError::Refused(format!(
                            "node {id} has not answered the leader yet; try again when it has caught up"
                        )))
                    }
                }
                let resp = raft
                    .change_membership(ChangeMembers::AddVoterIds(BTreeSet::from([id])), true)
                    .await
                    .map_err(|e| change_error(e, format!("promoting node {id}")))?;
                tracing::info!(node = id, "promoted learner to voter");
                Ok(resp.log_id.index)
            }
            MembershipChange::Remove { id } => {
                if membership.get_node(&id).is_none() {
                    return Err(EngineError::Refused(format!("node {id} is not a member")));
                }
                let voters: BTreeSet<NodeId> = membership.voter_ids().collect();
                if voters.len() == 1 && voters.contains(&id) {
                    return Err(EngineError::Refused(format!(
                        "node {id} is the only voter; a cluster cannot remove its last voter"
                    )));
                }
                let changes = if voters.contains(&id) {
                    ChangeMembers::RemoveVoters(BTreeSet::from([id]))
                } else {
                    ChangeMembers::RemoveNodes(BTreeSet::from([id]))
                };
                let resp = raft
                    .change_membership(changes, false)
                    .await
                    .map_err(|e| change_error(e, format!("removing node {id}")))?;
                tracing::info!(node = id, "removed node");
                Ok(resp.log_id.index)
            }
            MembershipChange::StepDown => self.step_down_local().await.map(|_| 0),
        }
    }

    /// Hands leadership to another voter: heartbeats stop, so a follower's election timer
    /// fires and it is elected (the leader's own lease lapsed long ago, so it grants the
    /// vote). Heartbeats resume once another node leads, or after a bounded wait.
    async fn step_down_local(&self) -> Result<(), EngineError> {
        if !self.is_leader() {
            return Err(EngineError::NotLeader {
                leader_id: self.leader().map(|(id, _)| id),
                leader_api_addr: self.leader().map(|(_, a)| a.api_addr),
            });
        }
        let me = self.node_id();
        let voters = self
            .metrics()
            .borrow()
            .membership_config
            .membership()
            .voter_ids()
            .filter(|v| *v != me)
            .count();
        if voters == 0 {
            return Err(EngineError::Refused(
                "no other voter to hand leadership to".into(),
            ));
        }
        let raft = self.raft();
        raft.runtime_config().heartbeat(false);
        let waited = raft
            .wait(Some(STEP_DOWN_WAIT))
            .metrics(
                |m| m.current_leader.is_some_and(|l| l != me),
                "another node leads",
            )
            .await;
        raft.runtime_config().heartbeat(true);
        match waited {
            Ok(_) => Ok(()),
            Err(e) => Err(EngineError::Refused(format!(
                "no other voter took over within {STEP_DOWN_WAIT:?} (writes keep the followers' leases fresh): {e}"
            ))),
        }
    }

    /// The addresses of every member, for a pack's member list.
    pub fn member_addrs(&self) -> BTreeMap<NodeId, NodeAddr> {
        let m = self.metrics();
        let m = m.borrow();
        m.membership_config
            .membership()
            .nodes()
            .map(|(id, a)| (*id, a.clone()))
            .collect()
    }
}

/// Shared handle to the contacts book.
pub type Contacts = Arc<ContactBook>;
