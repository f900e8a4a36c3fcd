//! The engine as the peer server sees it: who is a member (the pinned certificates, and a
//! newer view learned from a majority of the voters while the local log lags), when a leader
//! last reached this node, application messages, and the answer to each admitted request.

use super::{Engine, ROSTER_ASK_TIMEOUT};
use crate::errors::proposal_error;
use crate::transport::server::PeerService;
use crate::transport::trust::{PeerCaller, Refusal, Refusals, RegistrationLimiter, Roster};
use crate::transport::{ForwardError, PeerRequest, PeerResponse};
use crate::txn::{Txn, TxnResult};
use crate::types::{Command, NodeId};

impl Engine {
    /// Records that the leader just reached this node, announcing `leader_commit` (called
    /// by the peer server).
    pub(crate) fn note_leader_contact(&self, leader_commit: Option<u64>) {
        if let Some(index) = leader_commit {
            self.tracker
                .leader_commit
                .fetch_max(index, std::sync::atomic::Ordering::Relaxed);
        }
        if let Ok(mut t) = self.tracker.leader_contact.lock() {
            *t = Some(std::time::Instant::now());
        }
    }

    /// Runs an AppendEntries from the leader.
    async fn append_entries(
        &self,
        request: openraft::raft::AppendEntriesRequest<crate::types::TypeConfig>,
    ) -> PeerResponse {
        let leader_commit = request.leader_commit.map(|l| l.index);
        let answer = self.raft.append_entries(request).await;
        // Any answer but "your term is stale" means a current leader reached us.
        if matches!(&answer, Ok(r) if !matches!(r, openraft::raft::AppendEntriesResponse::HigherVote(_)))
        {
            self.note_leader_contact(leader_commit);
        }
        PeerResponse::AppendEntries(answer)
    }

    /// How many of the leading `ids` (consecutive) the local log holds: fewer than asked
    /// where the log ends or differs, none if the ids are not consecutive or the log cannot
    /// be read.
    fn held_ids(&self, ids: &[crate::types::LogId]) -> usize {
        let consecutive = ids.windows(2).all(|w| w[1].index == w[0].index + 1);
        if !consecutive {
            return 0;
        }
        crate::log_store::held_ids(&self.db, ids).unwrap_or(0)
    }

    /// This node's membership view: members with their pinned certificates, and the log
    /// index of the membership entry it comes from.
    pub fn roster_local(&self) -> Roster {
        let m = self.metrics();
        let m = m.borrow();
        Roster {
            index: m.membership_config.log_id().map_or(0, |l| l.index),
            members: m
                .membership_config
                .membership()
                .nodes()
                .map(|(id, a)| (*id, a.clone()))
                .collect(),
        }
    }

    /// Whether `caller` presents the certificate pinned for a current member, judged by the
    /// newest membership view this node has (its own, or one learned from members while its
    /// log lags).
    ///
    /// A node with no membership at all has never been initialized: it holds nothing to
    /// protect and takes its first membership from whoever the CA vouches for. Only
    /// hand-built clusters (tests, `initialize_cluster`) have such nodes: a founder
    /// initializes itself before its peer port opens, a joiner starts from a pack's snapshot.
    pub fn peer_standing(&self, caller: &PeerCaller) -> Result<(), Refusal> {
        let local = self.roster_local();
        match self.learned_roster.newer_than(local.index) {
            Some(newer) => newer.judge(caller),
            None if local.members.is_empty() && self.blank_at_open => Ok(()),
            None => local.judge(caller),
        }
    }

    /// Asks the members this node trusts for their membership view, unless it asked less
    /// than [`crate::transport::trust::ROSTER_REFRESH_INTERVAL`] ago. Called when a Raft
    /// message comes from a certificate this node does not know: its own view may be behind.
    pub fn refresh_roster_soon(&self) {
        if self.forwarder.is_none() || !self.learned_roster.refresh_due() {
            return;
        }
        let engine = self.clone();
        tokio::spawn(async move { engine.refresh_roster().await });
    }

    /// Asks the other voters of this node's view for theirs, and learns a newer view only if
    /// a majority of those voters give exactly that view: one member — say one removed while
    /// this node was down, which this node still trusts — cannot make it trust strangers.
    async fn refresh_roster(&self) {
        let Some(fw) = &self.forwarder else { return };
        let local = self.roster_local();
        let voters: Vec<NodeId> = {
            let m = self.metrics();
            let m = m.borrow();
            m.membership_config
                .membership()
                .voter_ids()
                .filter(|id| *id != self.node_id)
                .collect()
        };
        if voters.is_empty() {
            return;
        }
        let mut answers: Vec<(Roster, usize)> = Vec::new();
        for id in &voters {
            let Some(addr) = local.members.get(id) else {
                continue;
            };
            match fw.roster(*id, addr, ROSTER_ASK_TIMEOUT).await {
                Ok(roster) => match answers.iter_mut().find(|(r, _)| *r == roster) {
                    Some((_, n)) => *n += 1,
                    None => answers.push((roster, 1)),
                },
                Err(e) => tracing::debug!(node = id, "membership view unavailable: {e}"),
            }
        }
        let majority = voters.len() / 2 + 1;
        let agreed = answers
            .into_iter()
            .filter(|(r, n)| *n >= majority && r.index > local.index)
            .max_by_key(|(r, _)| r.index);
        if let Some((roster, n)) = agreed {
            tracing::info!(
                index = roster.index,
                local = local.index,
                voters = n,
                "learned a newer membership view from a majority of the voters"
            );
            self.learned_roster.offer(roster);
        }
    }

    /// An application message `origin` sent to this node: handled here if this node leads,
    /// else relayed to the leader.
    pub async fn app_request(
        &self,
        origin: PeerCaller,
        body: Vec<u8>,
    ) -> Result<Vec<u8>, ForwardError> {
        if !self.is_leader() {
            let Some((leader, addr)) = self.leader() else {
                return Err(ForwardError::NotLeader(None));
            };
            let Some(fw) = &self.forwarder else {
                return Err(ForwardError::NotLeader(Some(leader)));
            };
            return fw.app_relayed(leader, &addr, origin, body).await;
        }
        self.app_request_local(origin, body).await
    }

    /// Handles an application message if this node leads.
    pub async fn app_request_local(
        &self,
        origin: PeerCaller,
        body: Vec<u8>,
    ) -> Result<Vec<u8>, ForwardError> {
        if !self.is_leader() {
            return Err(ForwardError::NotLeader(self.leader().map(|(id, _)| id)));
        }
        let Some(handler) = self.app.get() else {
            // Not handled yet: the sender may try again.
            return Err(ForwardError::Unreachable(
                "the leader is still starting".into(),
            ));
        };
        handler(origin, body).await.map_err(ForwardError::Refused)
    }
}

impl PeerService for Engine {
    fn standing(&self, caller: &PeerCaller) -> Result<(), Refusal> {
        self.peer_standing(caller)
    }

    fn refusals(&self) -> &Refusals {
        &self.refusals
    }

    fn registrations(&self) -> &RegistrationLimiter {
        &self.registrations
    }

    fn stranger_sent_raft(&self) {
        self.refresh_roster_soon();
    }

    async fn answer(&self, caller: &PeerCaller, request: PeerRequest) -> PeerResponse {
        let raft = &self.raft;
        match request {
            PeerRequest::AppendEntries(r) => self.append_entries(r).await,
            PeerRequest::AppendKnown(r) => {
                let held = self.held_ids(&r.log_ids);
                let Some(last) = r.log_ids.last().filter(|_| held == r.log_ids.len()) else {
                    return PeerResponse::Held(held as u64);
                };
                // This log holds every entry listed, so (log matching) it matches the
                // leader's up to the last of them: the append is the one with that entry as
                // its previous and nothing to add. Nothing is read or written but ids.
                let known = openraft::raft::AppendEntriesRequest {
                    vote: r.vote,
                    prev_log_id: Some(*last),
                    leader_commit: r.leader_commit,
                    entries: Vec::new(),
                };
                match self.append_entries(known).await {
                    // The log changed since it was read (a newer leader truncated it): the
                    // leader sends the entries whole, with the previous id it chose.
                    PeerResponse::AppendEntries(Ok(
                        openraft::raft::AppendEntriesResponse::Conflict,
                    )) => PeerResponse::Held(0),
                    answer => answer,
                }
            }
            PeerRequest::Vote(r) => PeerResponse::Vote(raft.vote(r).await),
            PeerRequest::InstallSnapshot(r) => {
                let answer = raft.install_snapshot(r).await;
                if answer.is_ok() {
                    self.note_leader_contact(None);
                }
                PeerResponse::InstallSnapshot(answer)
            }
            PeerRequest::Forward(txn) => PeerResponse::Forwarded(match self.ensure_writable() {
                Ok(()) => self.forwarded_write(txn).await,
                Err(e) => Err(e.into()),
            }),
            PeerRequest::ReadIndex => PeerResponse::ReadIndex(self.read_index_for_peer().await),
            PeerRequest::App(body) => {
                PeerResponse::App(self.app_request(caller.clone(), body).await)
            }
            // Admitted only from a member, which vouches for the certificate that sent it.
            PeerRequest::AppRelayed { origin, body } => {
                PeerResponse::App(self.app_request_local(origin, body).await)
            }
            PeerRequest::Membership(change) => PeerResponse::Membership(
                self.change_membership_local(change)
                    .await
                    .map_err(ForwardError::from),
            ),
            PeerRequest::Members => PeerResponse::Members(if self.is_leader() {
                Ok(self.members_local())
            } else {
                Err(ForwardError::NotLeader(self.leader().map(|(id, _)| id)))
            }),
            PeerRequest::Roster => PeerResponse::Roster(self.roster_local()),
        }
    }
}

impl Engine {
    /// A write another node forwarded: proposed here (this node leads), answered with the
    /// result and the log index it committed at.
    async fn forwarded_write(&self, txn: Txn) -> Result<(TxnResult, u64), ForwardError> {
        super::validate(&txn)?;
        match self.raft.client_write(Command::Txn(txn)).await {
            Ok(resp) => Ok((resp.data, resp.log_id.index)),
            Err(e) => Err(proposal_error(e).into()),
        }
    }

    /// The leader confirms its leadership with a quorum and returns the index a read must
    /// see.
    async fn read_index_for_peer(&self) -> Result<u64, ForwardError> {
        self.leader_read_index().await.map_err(ForwardError::from)
    }
}
