//! Node modes: leader, follower (or learner) in contact, or read-only standby.
//!
//! A follower or learner that has heard nothing from a leader for `standby_after`, or a leader
//! that has heard from no quorum for that long, is a **standby**: writes are refused
//! at once (never left hanging on a quorum that is not there) and reads are served from local
//! state. It leaves standby by itself once a leader is back (for a leader: a quorum answers
//! again) and it has applied everything it knows to be committed. A leader in standby stops
//! its heartbeats (check-quorum), so the nodes following it turn standby too rather than
//! wait on reads it cannot confirm. A one-voter cluster's
//! leader is its own quorum and never turns standby.
//!
//! Detection reads openraft's metrics, the time of the last message from a leader (kept by
//! the peer server) and, on a leader, when each peer last answered it (kept by the peer
//! network, answers that came after openraft stopped waiting included), on a timer, never
//! client traffic.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use openraft::ServerState;
use serde::Serialize;

use crate::types::{NodeId, Raft};

/// Default `standby_after`.
pub const DEFAULT_STANDBY_AFTER: Duration = Duration::from_millis(1000);
/// How often the mode is evaluated: the bound on how late standby is entered after the
/// threshold, and on how stale the mode a request sees can be.
const MODE_TICK: Duration = Duration::from_millis(20);

/// What a node is doing now.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum NodeMode {
    /// Leading with a quorum: reads and writes.
    Leader,
    /// Following a leader it hears from (voter or learner): reads locally after the read
    /// index, writes forwarded.
    Follower,
    /// No leader heard from, or no quorum: reads only, from local state.
    ReadOnly,
}

impl NodeMode {
    /// The name used in audit records, logs and metrics.
    pub fn as_str(&self) -> &'static str {
        match self {
            NodeMode::Leader => "leader",
            NodeMode::Follower => "follower",
            NodeMode::ReadOnly => "read-only",
        }
    }
}

/// A change of mode, with why.
#[derive(Clone, Debug, Serialize)]
pub struct ModeChange {
    /// Mode before.
    pub old: NodeMode,
    /// Mode now.
    pub new: NodeMode,
    /// Why, in words.
    pub reason: String,
}

/// What the mode is computed from. Holds the database only weakly, so the mode task never
/// keeps it open after the engine is dropped.
#[derive(Clone)]
pub(crate) struct ModeTracker {
    /// The openraft handle (metrics, commit index).
    pub raft: Raft,
    /// This node.
    pub node_id: NodeId,
    /// When a leader last reached this node (set by the peer server).
    pub leader_contact: Arc<Mutex<Option<Instant>>>,
    /// The highest commit index a leader announced to this node: leaving standby waits for
    /// this too, since the node's own commit index lags the leader's until entries arrive.
    pub leader_commit: Arc<AtomicU64>,
    /// Last applied index.
    pub applied: tokio::sync::watch::Receiver<u64>,
    /// The database, to check the log's last index against the commit index.
    pub db: std::sync::Weak<crate::db::Db>,
    /// When the engine started (a node that never heard from a leader counts from here).
    pub started: Instant,
    /// The threshold, in milliseconds.
    pub standby_after_ms: Arc<AtomicU64>,
    /// The term this node last led in and when it was first seen leading it: a leader just
    /// elected has no quorum acknowledgement of its own yet, and openraft's
    /// `millis_since_quorum_ack` still reports an older one.
    pub leading_since: Arc<Mutex<Option<(u64, Instant)>>>,
    /// When each peer last answered this node, once the peer network is attached.
    pub contacts: Arc<std::sync::OnceLock<crate::engine::membership::Contacts>>,
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

impl ModeTracker {
    pub fn new(
        raft: Raft,
        node_id: NodeId,
        applied: tokio::sync::watch::Receiver<u64>,
        db: std::sync::Weak<crate::db::Db>,
    ) -> Self {
        Self {
            raft,
            node_id,
            db,
            leader_contact: Arc::default(),
            leader_commit: Arc::default(),
            applied,
            started: Instant::now(),
            standby_after_ms: Arc::new(AtomicU64::new(millis(DEFAULT_STANDBY_AFTER))),
            leading_since: Arc::default(),
            contacts: Arc::default(),
        }
    }

    /// On a leader: milliseconds since a quorum of every configuration of `joint` last
    /// answered this node (itself counting as answering now), from the contacts book. Unlike
    /// openraft's quorum acknowledgement, this counts answers that came after openraft
    /// stopped waiting for them: followers that are slow (syncing a batch to a loaded disk)
    /// are not followers that are gone. `None` without a peer network.
    fn quorum_heard_ms(&self, joint: &[std::collections::BTreeSet<NodeId>]) -> Option<u64> {
        let contacts = self.contacts.get()?;
        let mut oldest = 0;
        for config in joint {
            let mut ages: Vec<u64> = config
                .iter()
                .map(|id| {
                    if *id == self.node_id {
                        0
                    } else {
                        contacts.since(*id).unwrap_or(u64::MAX)
                    }
                })
                .collect();
            ages.sort_unstable();
            // A majority answered within the age of its slowest member.
            if let Some(age) = ages.get(config.len() / 2) {
                oldest = oldest.max(*age);
            }
        }
        Some(oldest)
    }

    /// Whether this node leads now.
    fn leading(&self) -> bool {
        let m = self.raft.metrics();
        let m = m.borrow();
        m.state == ServerState::Leader && m.current_leader == Some(self.node_id)
    }

    /// Milliseconds since a leader last reached this node, if ever.
    pub fn leader_contact_age_ms(&self) -> Option<u64> {
        let t = (*self.leader_contact.lock().ok()?)?;
        Some(millis(t.elapsed()))
    }

    /// Milliseconds since this node last had evidence of a working cluster: on a leader,
    /// since a quorum last acknowledged it or answered it at all (0 when it is the only
    /// voter); elsewhere, since a leader last reached it (since start if never).
    pub fn contact_age_ms(&self) -> u64 {
        let since_start = || millis(self.started.elapsed());
        let (leading, sole_voter, quorum_ack, term, joint) = {
            let m = self.raft.metrics();
            let m = m.borrow();
            let membership = m.membership_config.membership();
            let mut voters = membership.voter_ids();
            let sole = voters.next() == Some(self.node_id) && voters.next().is_none();
            (
                m.state == ServerState::Leader && m.current_leader == Some(self.node_id),
                sole,
                m.millis_since_quorum_ack,
                m.current_term,
                membership.get_joint_config().clone(),
            )
        };
        match (leading, sole_voter) {
            (true, true) => 0,
            (true, false) => {
                let elected = self
                    .leading_since
                    .lock()
                    .map_or(0, |mut since| match *since {
                        Some((t, at)) if t == term => millis(at.elapsed()),
                        _ => {
                            *since = Some((term, Instant::now()));
                            0
                        }
                    });
                let heard = self.quorum_heard_ms(&joint).unwrap_or(u64::MAX);
                quorum_ack
                    .unwrap_or_else(since_start)
                    .min(heard)
                    .min(elected)
            }
            (false, _) => self.leader_contact_age_ms().unwrap_or_else(since_start),
        }
    }

    /// The mode now, given the mode before and whether this node leads. Standby is left only once caught up: when
    /// contact returns, the commit index known then becomes the target, and the node leaves
    /// standby when it has applied that far (a moving target would keep a node under steady
    /// writes in standby for ever).
    async fn evaluate(
        &self,
        current: &NodeMode,
        target: &mut Option<u64>,
        leading: bool,
    ) -> (NodeMode, String) {
        let after = self.standby_after_ms.load(Ordering::Relaxed);
        let age = self.contact_age_ms();
        if age > after {
            *target = None;
            let reason = if leading {
                format!("no quorum acknowledgement for {age} ms")
            } else {
                format!("no contact with a leader for {age} ms")
            };
            return (NodeMode::ReadOnly, reason);
        }
        let base = if leading {
            NodeMode::Leader
        } else {
            NodeMode::Follower
        };
        if *current != NodeMode::ReadOnly {
            return (base, "role change".into());
        }
        let goal = match *target {
            Some(goal) => goal,
            None => {
                let applied = *self.applied.borrow();
                let committed = match self
                    .raft
                    .with_raft_state(|st| st.committed.map_or(0, |l| l.index))
                    .await
                {
                    Ok(committed) => {
                        // Read in this order, each only grows: only committed entries are
                        // applied, and only logged ones committed.
                        let last_log = crate::log_store::last_index(&self.db).unwrap_or(u64::MAX);
                        debug_assert!(
                            applied <= committed && committed <= last_log,
                            "applied {applied} ≤ committed {committed} ≤ last log {last_log} broken"
                        );
                        committed
                    }
                    Err(_) => u64::MAX,
                }
                .max(self.leader_commit.load(Ordering::Relaxed));
                *target = Some(committed);
                committed
            }
        };
        let applied = *self.applied.borrow();
        if applied < goal {
            return (
                NodeMode::ReadOnly,
                format!("catching up: applied {applied} of {goal}"),
            );
        }
        *target = None;
        let reason = if leading {
            "a quorum acknowledges this leader again".to_string()
        } else {
            format!("a leader reached this node {age} ms ago and it has caught up")
        };
        (base, reason)
    }
}

/// Evaluates the mode every tick and publishes changes, until `stop` is set or Raft stops.
pub(crate) async fn run_mode_task(
    tracker: ModeTracker,
    tx: tokio::sync::watch::Sender<NodeMode>,
    changes: tokio::sync::broadcast::Sender<ModeChange>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let mut interval = tokio::time::interval(MODE_TICK);
    let mut target = None;
    // Raft's check-quorum: a leader without a quorum stops its heartbeats. Its followers and
    // learners then hear no leader, turn read-only standby themselves and serve reads from
    // their replicas, instead of following a leader that can confirm no read. A quorum that
    // returns elects a leader (a vote in a higher term deposes this one), and heartbeats
    // resume once this node leads with a quorum again or no longer leads.
    let mut silenced = false;
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = interval.tick() => {}
            _ = stop.changed() => return,
        }
        if *stop.borrow() || tracker.raft.metrics().borrow().running_state.is_err() {
            return;
        }
        let current = tx.borrow().clone();
        let leading = tracker.leading();
        let (new, reason) = tracker.evaluate(&current, &mut target, leading).await;
        let silence = new == NodeMode::ReadOnly && leading;
        if silence != silenced {
            tracker.raft.runtime_config().heartbeat(!silence);
            silenced = silence;
            tracing::warn!(
                heartbeats = !silence,
                "leader heartbeats {}",
                if silence {
                    "stopped: no quorum"
                } else {
                    "resumed"
                }
            );
        }
        if new != current {
            tracing::warn!(
                old = current.as_str(),
                new = new.as_str(),
                %reason,
                "node mode changed"
            );
            tx.send_replace(new.clone());
            let _ = changes.send(ModeChange {
                old: current,
                new,
                reason,
            });
        }
    }
}
