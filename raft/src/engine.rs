//! The engine: one node's openraft instance over its RocksDB stores, with the read and write
//! entry points the vault layer uses.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use openraft::error::{ClientWriteError, RaftError};
use openraft::network::RaftNetworkFactory;
use openraft::ServerState;
use rocksdb::DB;

use crate::log_store::LogStore;
use crate::membership::Contacts;
use crate::mode::{run_mode_task, ModeChange, ModeTracker, NodeMode};
use crate::snapshot::SnapshotFiles;
use crate::state_machine::{read_entry, scan_prefix, StateMachine};
use crate::transport::trust::{
    LearnedRoster, PeerCaller, Refusal, Refusals, RegistrationLimiter, Roster,
};
use crate::transport::{AppHandler, ForwardError};
use crate::tuning::RaftTuning;
use crate::txn::{KvEntry, Op, Txn, TxnResult};
use crate::types::{Command, NodeAddr, NodeId, Raft, RaftMetrics, TypeConfig};
use crate::EngineError;

/// Largest key a transaction may write.
pub const MAX_KEY_BYTES: usize = 4 << 10;
/// Largest value a transaction may write (a KV secret version plus its envelope).
pub const MAX_VALUE_BYTES: usize = 4 << 20;

/// What the engine needs to start.
#[derive(Clone, Debug)]
pub struct EngineConfig {
    /// This node's id.
    pub node_id: NodeId,
    /// Root of this node's storage: `raft/` (RocksDB) and `snapshots/` live under it.
    pub data_dir: PathBuf,
    /// Raft timing and snapshot settings.
    pub tuning: RaftTuning,
}

/// A running node's replicated store.
#[derive(Clone)]
pub struct Engine {
    /// The openraft handle.
    raft: Raft,
    /// The node's database, read directly for local reads.
    db: Arc<DB>,
    /// This node's id.
    node_id: NodeId,
    /// Last applied log index, published by the state machine after each apply.
    applied: tokio::sync::watch::Receiver<u64>,
    /// Sends writes and read-index requests to the leader when this node is not it.
    forwarder: Option<Arc<crate::transport::Forwarder>>,
    /// When each peer last answered (set when the node runs the peer transport).
    contacts: Option<Contacts>,
    /// The vault layer's handler for application messages (set once it exists).
    app: Arc<OnceLock<AppHandler>>,
    /// What the node mode is computed from (and when a leader last reached this node).
    tracker: ModeTracker,
    /// The current mode, published by the mode task.
    mode: tokio::sync::watch::Receiver<NodeMode>,
    /// Mode changes with their reasons.
    mode_changes: tokio::sync::broadcast::Sender<ModeChange>,
    /// Stops the mode task.
    mode_stop: Arc<tokio::sync::watch::Sender<bool>>,
    /// Peers and requests refused on the peer port, by reason.
    refusals: Arc<Refusals>,
    /// A newer membership view learned from members, while the local log lags.
    learned_roster: Arc<LearnedRoster>,
    /// Registration attempts per certificate (non-members' one kind of request).
    registrations: Arc<RegistrationLimiter>,
    /// The node held no Raft state when it opened (never initialized, never joined). Only
    /// such a node may trust the CA alone while it has no membership: a node with state
    /// whose metrics do not show its membership yet (the first moments after a restart)
    /// refuses instead.
    blank_at_open: bool,
}

/// How long opening waits for the core to publish the membership it loaded.
const MEMBERSHIP_LOAD_WAIT: Duration = Duration::from_secs(5);

/// How long a lagging node waits for each member's membership view.
const ROSTER_ASK_TIMEOUT: Duration = Duration::from_secs(2);

/// How long a write or read waits through a leader change (an election takes 1–2 election
/// timeouts) before answering that there is no leader.
const LEADER_CHANGE_WAIT: Duration = Duration::from_secs(5);

/// One attempt at a request that may have to wait for a new leader.
enum Attempt<T> {
    /// Finished (successfully or not).
    Done(Result<T, EngineError>),
    /// Not delivered to a leader (no leader known, it moved, or it was unreachable): try
    /// again once the leader changes.
    Retry(EngineError),
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("node_id", &self.node_id)
            .finish()
    }
}

fn storage(e: impl std::fmt::Display) -> EngineError {
    EngineError::Storage(e.to_string())
}

impl Engine {
    /// Opens the node's storage and starts Raft with `network` as the peer transport.
    pub async fn open<N>(config: EngineConfig, network: N) -> Result<Self, EngineError>
    where
        N: RaftNetworkFactory<TypeConfig>,
    {
        let db = open_db_when_released(&config.data_dir.join("raft")).await?;
        let snapshots =
            SnapshotFiles::new(config.data_dir.join("snapshots"), db.clone()).map_err(storage)?;
        let (applied_tx, applied) = tokio::sync::watch::channel(0);
        let sm = StateMachine::open(db.clone(), snapshots, applied_tx).map_err(storage)?;
        let log = LogStore::new(db.clone());
        let raft_config = config
            .tuning
            .to_openraft("coffer")
            .map_err(EngineError::Config)?;
        let raft = Raft::new(config.node_id, Arc::new(raft_config), network, log, sm)
            .await
            .map_err(storage)?;
        let blank_at_open = !raft.is_initialized().await.map_err(storage)?;
        if !blank_at_open {
            // Peers are judged against the membership in the metrics: wait for the core to
            // publish the one it loaded (a moment) so that no peer meets an empty view.
            let _ = raft
                .wait(Some(MEMBERSHIP_LOAD_WAIT))
                .metrics(
                    |m| m.membership_config.membership().nodes().next().is_some(),
                    "membership loaded",
                )
                .await;
        }
        let tracker = ModeTracker::new(raft.clone(), config.node_id, applied.clone());
        let (mode_tx, mode) = tokio::sync::watch::channel(NodeMode::Follower);
        let (mode_changes, _) = tokio::sync::broadcast::channel(64);
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        tokio::spawn(run_mode_task(
            tracker.clone(),
            mode_tx,
            mode_changes.clone(),
            stop_rx,
        ));
        Ok(Self {
            tracker,
            mode,
            mode_changes,
            mode_stop: Arc::new(stop_tx),
            raft,
            db,
            node_id: config.node_id,
            applied,
            forwarder: None,
            contacts: None,
            app: Arc::new(OnceLock::new()),
            refusals: Arc::default(),
            learned_roster: Arc::default(),
            registrations: Arc::default(),
            blank_at_open,
        })
    }

    /// Opens the engine and makes it the leader of a one-voter cluster (initializing one on a
    /// fresh data directory), waiting up to `timeout` for the leadership.
    pub async fn open_single<N>(
        config: EngineConfig,
        network: N,
        addr: NodeAddr,
        timeout: Duration,
    ) -> Result<Self, EngineError>
    where
        N: RaftNetworkFactory<TypeConfig>,
    {
        let engine = Self::open(config, network).await?;
        engine.initialize_single(addr).await?;
        engine.wait_leader(timeout).await?;
        Ok(engine)
    }

    /// Makes this node a one-voter cluster if it is not part of one yet. Idempotent.
    pub async fn initialize_single(&self, addr: NodeAddr) -> Result<(), EngineError> {
        if self.raft.is_initialized().await.map_err(storage)? {
            return Ok(());
        }
        let members = BTreeMap::from([(self.node_id, addr)]);
        match self.raft.initialize(members).await {
            Ok(()) => Ok(()),
            Err(RaftError::APIError(openraft::error::InitializeError::NotAllowed(_))) => Ok(()),
            Err(e) => Err(storage(e)),
        }
    }

    /// Initializes a cluster with these voters (run on one node of a fresh cluster).
    pub async fn initialize_cluster(
        &self,
        members: BTreeMap<NodeId, NodeAddr>,
    ) -> Result<(), EngineError> {
        match self.raft.initialize(members).await {
            Ok(()) => Ok(()),
            Err(RaftError::APIError(openraft::error::InitializeError::NotAllowed(_))) => Ok(()),
            Err(e) => Err(storage(e)),
        }
    }

    /// The openraft handle, for the peer transport's server side.
    pub fn raft(&self) -> &Raft {
        &self.raft
    }

    /// Waits until this node is leader, up to `timeout`.
    pub async fn wait_leader(&self, timeout: Duration) -> Result<(), EngineError> {
        let id = self.node_id;
        self.raft
            .wait(Some(timeout))
            .metrics(|m| m.current_leader == Some(id), "node is leader")
            .await
            .map(|_| ())
            .map_err(|e| EngineError::NoLeader(e.to_string()))
    }

    /// Lets this node serve writes and linearizable reads while it is not the leader, by
    /// forwarding to the leader over the peer channel.
    pub fn with_forwarder(mut self, forwarder: Arc<crate::transport::Forwarder>) -> Self {
        self.forwarder = Some(forwarder);
        self
    }

    /// Records when peers last answered (shown by `members`).
    pub fn with_contacts(mut self, contacts: Contacts) -> Self {
        self.contacts = Some(contacts);
        self
    }

    /// The forwarder, if this node serves clients while following.
    pub(crate) fn forwarder(&self) -> Option<&Arc<crate::transport::Forwarder>> {
        self.forwarder.as_ref()
    }

    /// When peers last answered, if this node runs the peer transport.
    pub(crate) fn contacts(&self) -> Option<&Contacts> {
        self.contacts.as_ref()
    }

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

    /// Milliseconds since this node last had evidence of a working cluster: on a leader,
    /// since a quorum acknowledged it (0 for a one-voter cluster); elsewhere, since a leader
    /// last reached it (since start if never).
    pub fn contact_age_ms(&self) -> u64 {
        self.tracker.contact_age_ms()
    }

    /// Sets how long without contact (or quorum) turns the node read-only.
    pub fn set_standby_after(&self, after: Duration) {
        let ms = u64::try_from(after.as_millis()).unwrap_or(u64::MAX);
        self.tracker
            .standby_after_ms
            .store(ms, std::sync::atomic::Ordering::Relaxed);
    }

    /// The node's mode now.
    pub fn mode(&self) -> NodeMode {
        self.mode.borrow().clone()
    }

    /// Every mode change from now on, with its reason.
    pub fn mode_changes(&self) -> tokio::sync::broadcast::Receiver<ModeChange> {
        self.mode_changes.subscribe()
    }

    /// Waits until the mode satisfies `cond`, up to `timeout` (tests and tools).
    pub async fn wait_mode(
        &self,
        timeout: Duration,
        cond: impl Fn(&NodeMode) -> bool,
    ) -> Result<NodeMode, EngineError> {
        let mut rx = self.mode.clone();
        let waited = tokio::time::timeout(timeout, rx.wait_for(|m| cond(m))).await;
        match waited {
            Ok(Ok(m)) => Ok(m.clone()),
            _ => Err(EngineError::NoLeader(format!(
                "mode is still {} after {timeout:?}",
                self.mode().as_str()
            ))),
        }
    }

    /// `Err(ReadOnly)` while the node is a read-only standby that is still out of contact.
    /// One that is back in contact and only catching up lets writes through: they go to a
    /// leader that is there (and are applied here before they are answered).
    pub(crate) fn ensure_writable(&self) -> Result<(), EngineError> {
        if *self.mode.borrow() == NodeMode::ReadOnly {
            let age = self.contact_age_ms();
            let after = self
                .tracker
                .standby_after_ms
                .load(std::sync::atomic::Ordering::Relaxed);
            if age > after {
                return Err(EngineError::ReadOnly {
                    last_contact_ms: age,
                });
            }
        }
        Ok(())
    }

    /// Installs the handler for application messages (once; later calls are ignored).
    pub fn set_app_handler(&self, handler: AppHandler) {
        let _ = self.app.set(handler);
    }

    /// Peers and requests refused on the peer port since start, by reason.
    pub fn refusals(&self) -> &Refusals {
        &self.refusals
    }

    /// Registration attempts per certificate, for the peer server's rate limit.
    pub fn registrations(&self) -> &RegistrationLimiter {
        &self.registrations
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
            return Err(ForwardError::Failed("the leader is still starting".into()));
        };
        handler(origin, body).await.map_err(ForwardError::Refused)
    }

    /// Runs `attempt` until it is delivered to a leader, waiting through a leader change for
    /// up to [`LEADER_CHANGE_WAIT`]. Only undelivered attempts are repeated (and `idempotent`
    /// ones abandoned because the leader changed), so a write is never run twice.
    async fn through_leader_changes<T, F, Fut>(
        &self,
        idempotent: bool,
        mut attempt: F,
    ) -> Result<T, EngineError>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Attempt<T>>,
    {
        let deadline = tokio::time::Instant::now() + LEADER_CHANGE_WAIT;
        loop {
            // A standby refuses at once; one waiting for a leader stops when it turns standby.
            self.ensure_writable()?;
            let seen = self.metrics().borrow().current_leader;
            // Stop waiting on a request in flight when the node turns standby (a partition
            // just began) or the leader it went to is replaced: either way the old leader
            // cannot answer in time.
            let mut mode = self.mode.clone();
            let mut metrics = self.metrics();
            // A node still catching up after standby was let through by `ensure_writable`;
            // only a new entry into standby interrupts.
            let catching_up = *mode.borrow() == NodeMode::ReadOnly;
            let turns_standby = async {
                if catching_up {
                    std::future::pending::<()>().await;
                }
                let _ = mode.wait_for(|m| *m == NodeMode::ReadOnly).await;
            };
            let outcome = tokio::select! {
                a = attempt() => a,
                _ = turns_standby => {
                    if !idempotent {
                        return Err(EngineError::NoLeader(
                            "contact with the leader was lost while the write was in flight; its outcome is unknown".into(),
                        ));
                    }
                    return Err(EngineError::ReadOnly {
                        last_contact_ms: self.contact_age_ms(),
                    });
                }
                _ = metrics.wait_for(|m| m.current_leader != seen) => {
                    if !idempotent {
                        return Err(EngineError::NoLeader(
                            "the leader changed while the write was in flight; its outcome is unknown".into(),
                        ));
                    }
                    Attempt::Retry(EngineError::NoLeader("the leader changed".into()))
                }
            };
            match outcome {
                Attempt::Done(result) => return result,
                Attempt::Retry(e) => {
                    let now = tokio::time::Instant::now();
                    if now >= deadline {
                        return Err(e);
                    }
                    // Wake when the leader changes; re-check at least every 100 ms, since
                    // a leader that is known but unreachable may stay "current" a while.
                    let _ = self
                        .raft
                        .wait(Some((deadline - now).min(Duration::from_millis(100))))
                        .metrics(
                            |m| m.current_leader.is_some() && m.current_leader != seen,
                            "leader changed",
                        )
                        .await;
                }
            }
        }
    }

    /// Proposes `txn` and waits until it is committed and applied — here if this node leads,
    /// else on the leader through the forwarder (and then until applied here too, so a read
    /// on this node right after sees the write). Waits through a leader change.
    pub async fn write(&self, txn: Txn) -> Result<TxnResult, EngineError> {
        validate(&txn)?;
        self.through_leader_changes(false, || self.write_once(txn.clone()))
            .await
    }

    /// Leadership moved away from this node: with a forwarder the request goes to the new
    /// leader on the next attempt; without one the caller learns where the leader is.
    fn moved<T>(&self, f: openraft::error::ForwardToLeader<NodeId, NodeAddr>) -> Attempt<T> {
        let e = EngineError::NotLeader {
            leader_id: f.leader_id,
            leader_api_addr: f.leader_node.map(|n| n.api_addr),
        };
        if self.forwarder.is_some() {
            Attempt::Retry(e)
        } else {
            Attempt::Done(Err(e))
        }
    }

    async fn write_once(&self, txn: Txn) -> Attempt<TxnResult> {
        if !self.is_leader() {
            if let Some(fw) = &self.forwarder {
                let Some((leader, addr)) = self.leader() else {
                    return Attempt::Retry(EngineError::NoLeader("no leader is known".into()));
                };
                return match fw.write(leader, &addr, txn).await {
                    Ok((result, index)) => {
                        Attempt::Done(self.wait_applied(index).await.map(|_| result))
                    }
                    Err(e) => forward_attempt(e),
                };
            }
        }
        match self.raft.client_write(Command::Txn(txn)).await {
            Ok(resp) => Attempt::Done(Ok(resp.data)),
            Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f))) => self.moved(f),
            Err(e) => Attempt::Done(Err(storage(e))),
        }
    }

    /// Blocks until a read on this node reflects every write acknowledged before the call.
    /// The leader confirms its leadership with a quorum; a follower obtains that read index
    /// from the leader and waits until it has applied it. Waits through a leader change.
    pub async fn await_read_index(&self) -> Result<(), EngineError> {
        self.through_leader_changes(true, || self.read_index_once())
            .await
    }

    async fn read_index_once(&self) -> Attempt<()> {
        if !self.is_leader() {
            if let Some(fw) = &self.forwarder {
                let Some((leader, addr)) = self.leader() else {
                    return Attempt::Retry(EngineError::NoLeader("no leader is known".into()));
                };
                return match fw.read_index(leader, &addr).await {
                    Ok(index) => Attempt::Done(self.wait_applied(index).await),
                    Err(e) => forward_attempt(e),
                };
            }
        }
        match self.raft.ensure_linearizable().await {
            Ok(_) => Attempt::Done(Ok(())),
            Err(RaftError::APIError(openraft::error::CheckIsLeaderError::ForwardToLeader(f))) => {
                self.moved(f)
            }
            // The quorum check timed out (a loaded peer answered late): still the leader as
            // far as anyone knows, and a read is safe to repeat.
            Err(RaftError::APIError(
                e @ openraft::error::CheckIsLeaderError::QuorumNotEnough(_),
            )) => Attempt::Retry(EngineError::NoLeader(e.to_string())),
            Err(e) => Attempt::Done(Err(storage(e))),
        }
    }

    /// Waits until this node has applied `index`.
    async fn wait_applied(&self, index: u64) -> Result<(), EngineError> {
        self.raft
            .wait(Some(Duration::from_secs(10)))
            .applied_index_at_least(Some(index), "read index")
            .await
            .map(|_| ())
            .map_err(|e| EngineError::NoLeader(format!("not caught up with the leader: {e}")))
    }

    /// Reads one key from local state.
    pub fn get(&self, key: &[u8]) -> Result<Option<KvEntry>, EngineError> {
        read_entry(&self.db, key).map_err(EngineError::Storage)
    }

    /// Reads up to `limit` keys under `prefix` after `after`, from one consistent view.
    pub fn scan(
        &self,
        prefix: &[u8],
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<(Vec<u8>, KvEntry)>, EngineError> {
        scan_prefix(&self.db, prefix, after, limit).map_err(EngineError::Storage)
    }

    /// This node's id.
    pub fn node_id(&self) -> NodeId {
        self.node_id
    }

    /// Live Raft metrics.
    pub fn metrics(&self) -> tokio::sync::watch::Receiver<RaftMetrics> {
        self.raft.metrics()
    }

    /// The highest log index this node knows to be committed (asked of the Raft core).
    pub async fn committed_index(&self) -> Result<u64, EngineError> {
        self.raft
            .with_raft_state(|st| st.committed.map_or(0, |l| l.index))
            .await
            .map_err(storage)
    }

    /// Last log index applied to the local state machine.
    pub fn applied_index(&self) -> u64 {
        *self.applied.borrow()
    }

    /// Whether this node currently believes it is the leader.
    pub fn is_leader(&self) -> bool {
        let m = self.raft.metrics();
        let m = m.borrow();
        m.state == ServerState::Leader && m.current_leader == Some(self.node_id)
    }

    /// The current leader's id and address as this node knows them.
    pub fn leader(&self) -> Option<(NodeId, NodeAddr)> {
        let m = self.raft.metrics();
        let m = m.borrow();
        let id = m.current_leader?;
        let addr = m.membership_config.membership().get_node(&id)?.clone();
        Some((id, addr))
    }

    /// Builds a snapshot now and waits for it (backups, tests).
    pub async fn snapshot_now(&self) -> Result<u64, EngineError> {
        let before = self.raft.metrics().borrow().snapshot.map_or(0, |l| l.index);
        let target = self.applied_index();
        self.raft.trigger().snapshot().await.map_err(storage)?;
        self.raft
            .wait(Some(Duration::from_secs(60)))
            .metrics(
                |m| m.snapshot.is_some_and(|s| s.index >= target.max(before)),
                "snapshot built",
            )
            .await
            .map_err(storage)?;
        Ok(target)
    }

    /// Builds a snapshot now and returns the snapshot file's bytes (for a bootstrap pack).
    pub async fn snapshot_bytes(&self) -> Result<Vec<u8>, EngineError> {
        use tokio::io::{AsyncReadExt, AsyncSeekExt};
        self.snapshot_now().await?;
        let mut snap = self
            .raft
            .get_snapshot()
            .await
            .map_err(storage)?
            .ok_or_else(|| EngineError::Storage("no snapshot after building one".into()))?;
        let mut bytes = Vec::new();
        snap.snapshot
            .seek(std::io::SeekFrom::Start(0))
            .await
            .map_err(storage)?;
        snap.snapshot
            .read_to_end(&mut bytes)
            .await
            .map_err(storage)?;
        Ok(bytes)
    }

    /// Compacts every column family (tests prove deleted data leaves the files).
    pub fn compact(&self) {
        for name in [
            crate::db::CF_LOG,
            crate::db::CF_RAFT,
            crate::db::CF_KV,
            crate::db::CF_SM,
        ] {
            self.db
                .compact_range_cf(crate::db::cf(&self.db, name), None::<&[u8]>, None::<&[u8]>);
        }
    }

    /// Stops Raft. Storage closes when the last handle drops.
    pub async fn shutdown(&self) -> Result<(), EngineError> {
        let _ = self.mode_stop.send(true);
        self.raft.shutdown().await.map_err(storage)
    }
}

pub(crate) fn forward_error(e: ForwardError) -> EngineError {
    match e {
        ForwardError::NotLeader(leader_id) => EngineError::NotLeader {
            leader_id,
            leader_api_addr: None,
        },
        ForwardError::Unreachable(msg) | ForwardError::Untrusted(msg) => {
            EngineError::NoLeader(format!("leader unreachable: {msg}"))
        }
        ForwardError::Failed(msg) => EngineError::NoLeader(msg),
        ForwardError::Refused(msg) => EngineError::Membership(msg),
        ForwardError::ReadOnly(last_contact_ms) => EngineError::ReadOnly { last_contact_ms },
    }
}

/// A forwarded request that never reached a leader is retried; anything else is final.
fn forward_attempt<T>(e: ForwardError) -> Attempt<T> {
    match e {
        ForwardError::NotLeader(_) | ForwardError::Unreachable(_) => {
            Attempt::Retry(forward_error(e))
        }
        other => Attempt::Done(Err(forward_error(other))),
    }
}

/// Opens the node's RocksDB. If this same process still holds it — an engine being reopened
/// right after `shutdown`, while openraft's state-machine task drops its last handle — waits
/// up to 5 s for the lock to go. A lock held by another process fails at once: two nodes on
/// one data directory must never run.
async fn open_db_when_released(path: &std::path::Path) -> Result<Arc<DB>, EngineError> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        match crate::db::open(path) {
            Ok(db) => return Ok(db),
            Err(e)
                if e.to_string().contains("lock hold by current process")
                    && tokio::time::Instant::now() < deadline =>
            {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => return Err(storage(e)),
        }
    }
}

pub(crate) fn validate(txn: &Txn) -> Result<(), EngineError> {
    for op in &txn.ops {
        let (key, value_len) = match op {
            Op::Put { key, value } => (key, value.len()),
            Op::Delete { key } => (key, 0),
            Op::DeletePrefix { prefix } if prefix.is_empty() => {
                return Err(EngineError::InvalidTxn(
                    "delete-prefix needs a non-empty prefix".into(),
                ))
            }
            Op::DeletePrefix { prefix } => (prefix, 0),
        };
        if key.is_empty() || key.len() > MAX_KEY_BYTES {
            return Err(EngineError::InvalidTxn(format!(
                "key length {} is outside 1..={MAX_KEY_BYTES}",
                key.len()
            )));
        }
        if value_len > MAX_VALUE_BYTES {
            return Err(EngineError::InvalidTxn(format!(
                "value of {value_len} bytes exceeds {MAX_VALUE_BYTES}"
            )));
        }
    }
    Ok(())
}
