//! The engine: one node's openraft instance over its RocksDB stores, with the read and write
//! entry points the vault layer uses.
//!
//! - this file: opening, status (mode, leader, indexes), local reads, snapshots, shutdown;
//! - [`requests`]: writes and linearizable reads, forwarded to the leader when needed;
//! - [`peers`]: the engine as the peer server sees it (membership views, application
//!   messages, the answer to each peer request);
//! - [`membership`]: adding, promoting and removing members, stepping down;
//! - [`mode`]: leader, follower or read-only standby, and when a node changes between them.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use openraft::error::RaftError;
use openraft::network::RaftNetworkFactory;
use openraft::ServerState;

pub(crate) mod membership;
pub(crate) mod mode;
mod peers;
mod read_batch;
mod requests;
mod snapshot_policy;

use membership::Contacts;
use mode::{run_mode_task, ModeChange, ModeTracker, NodeMode};

use crate::archive::ArchiveDir;
use crate::db::{Db, OpenError, StorageTuning};
use crate::log_store::LogStore;
use crate::snapshot::SnapshotFiles;
use crate::state_machine::{read_entry, scan_prefix, StateMachine};
use crate::transport::trust::{LearnedRoster, Refusals, RegistrationLimiter};
use crate::transport::AppHandler;
use crate::tuning::RaftTuning;
use crate::txn::{KvEntry, Op, Txn};
use crate::types::{NodeAddr, NodeId, Raft, RaftMetrics, TypeConfig};
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
    /// Root of this node's storage: `raft/` (RocksDB), `snapshots/` and `archive/` live
    /// under it.
    pub data_dir: PathBuf,
    /// Raft timing and snapshot settings.
    pub tuning: RaftTuning,
    /// RocksDB's memory and disk footprint.
    pub storage: StorageTuning,
}

/// A running node's replicated store.
#[derive(Clone)]
pub struct Engine {
    /// The openraft handle.
    raft: Raft,
    /// The node's database, read directly for local reads.
    db: Arc<Db>,
    /// The archive segments this node has applied.
    archive: ArchiveDir,
    /// This node's id.
    node_id: NodeId,
    /// Wholesale changes of the state (restores, installed snapshots).
    gate: Arc<crate::replace::StateGate>,
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
    /// Linearizable reads on this node while it leads (and read indexes asked of it by
    /// followers): one quorum round per batch.
    leader_reads: Arc<read_batch::ReadBatcher<EngineError>>,
    /// Linearizable reads on this node while it follows: one request to the leader per batch.
    forwarded_reads: Arc<read_batch::ReadBatcher<crate::transport::ForwardError>>,
}

/// How long reopening a database this process still holds waits for its last handle to go
/// (openraft's tasks drop theirs within moments of `shutdown`).
const DB_RELEASE_WAIT: Duration = Duration::from_secs(5);
/// How often that wait looks again.
const DB_RELEASE_POLL: Duration = Duration::from_millis(20);

/// How long `snapshot_now` waits for the snapshot to be built (a large vault's snapshot is a
/// few hundred MB written sequentially: seconds, not minutes).
const SNAPSHOT_BUILD_WAIT: Duration = Duration::from_secs(60);
/// How long one snapshot trigger is waited for before it is given again.
const SNAPSHOT_RETRIGGER: Duration = Duration::from_secs(2);
/// Mode changes buffered for a subscriber that falls behind (it is told how many it missed).
const MODE_CHANGE_BUFFER: usize = 64;

/// How long opening waits for the core to publish the membership it loaded.
const MEMBERSHIP_LOAD_WAIT: Duration = Duration::from_secs(5);

/// How long a lagging node waits for each member's membership view.
const ROSTER_ASK_TIMEOUT: Duration = Duration::from_secs(2);

/// How long a write or read waits through a leader change (an election takes 1–2 election
/// timeouts) before answering that there is no leader.
const LEADER_CHANGE_WAIT: Duration = Duration::from_secs(5);

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("node_id", &self.node_id)
            .finish()
    }
}

impl Engine {
    /// Opens the node's storage and starts Raft with `network` as the peer transport.
    pub async fn open<N>(config: EngineConfig, network: N) -> Result<Self, EngineError>
    where
        N: RaftNetworkFactory<TypeConfig>,
    {
        let db = open_db_when_released(&config.data_dir.join("raft"), &config.storage).await?;
        let snapshots = SnapshotFiles::new(config.data_dir.join("snapshots"), db.clone())
            .map_err(EngineError::storage)?;
        let (applied_tx, applied) = tokio::sync::watch::channel(0);
        let gate = snapshots.gate();
        let archive = ArchiveDir::new(config.data_dir.join("archive"));
        let sm = StateMachine::open(db.clone(), snapshots, archive.clone(), applied_tx)
            .map_err(EngineError::storage)?;
        let log = LogStore::new(db.clone());
        let raft_config = config
            .tuning
            .to_openraft("coffer")
            .map_err(EngineError::Config)?;
        let raft = Raft::new(config.node_id, Arc::new(raft_config), network, log, sm)
            .await
            .map_err(EngineError::storage)?;
        let blank_at_open = !raft.is_initialized().await.map_err(EngineError::storage)?;
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
        let tracker = ModeTracker::new(
            raft.clone(),
            config.node_id,
            applied.clone(),
            Arc::downgrade(&db),
        );
        let (mode_tx, mode) = tokio::sync::watch::channel(NodeMode::Follower);
        let (mode_changes, _) = tokio::sync::broadcast::channel(MODE_CHANGE_BUFFER);
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        tokio::spawn(snapshot_policy::run(
            raft.clone(),
            Arc::downgrade(&db),
            config.tuning.clone(),
            stop_rx.clone(),
        ));
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
            archive,
            node_id: config.node_id,
            gate,
            applied,
            forwarder: None,
            contacts: None,
            app: Arc::new(OnceLock::new()),
            refusals: Arc::default(),
            learned_roster: Arc::default(),
            registrations: Arc::default(),
            blank_at_open,
            leader_reads: Arc::default(),
            forwarded_reads: Arc::default(),
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
        if self
            .raft
            .is_initialized()
            .await
            .map_err(EngineError::storage)?
        {
            return Ok(());
        }
        let members = BTreeMap::from([(self.node_id, addr)]);
        match self.raft.initialize(members).await {
            Ok(()) => Ok(()),
            Err(RaftError::APIError(openraft::error::InitializeError::NotAllowed(_))) => Ok(()),
            Err(e) => Err(EngineError::storage(e)),
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
            Err(e) => Err(EngineError::storage(e)),
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
        let _ = self.tracker.contacts.set(contacts.clone());
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

    /// Reads one key from local state.
    pub fn get(&self, key: &[u8]) -> Result<Option<KvEntry>, EngineError> {
        self.gate.read(|| read_entry(&self.db, key))
    }

    /// Reads up to `limit` keys under `prefix` after `after`, from one consistent view.
    pub fn scan(
        &self,
        prefix: &[u8],
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<(Vec<u8>, KvEntry)>, EngineError> {
        self.gate
            .read(|| scan_prefix(&self.db, prefix, after, limit))
    }

    /// The archive segments this node has applied ([`Op::Archive`]); a node that caught up
    /// from a snapshot holds only those archived after it.
    pub fn archive(&self) -> &ArchiveDir {
        &self.archive
    }

    /// Whether this node applied the entry that made the segment `digest` (then a missing
    /// file was deleted; otherwise the node caught up past it from a snapshot).
    pub fn archive_applied(&self, digest: &[u8; 32]) -> Result<bool, EngineError> {
        let key = crate::db::archived_key(digest);
        self.db
            .get_cf(crate::db::cf(&self.db, crate::db::CF_SM), key)
            .map(|v| v.is_some())
            .map_err(EngineError::storage)
    }

    /// Linearizable reads served since start and the leadership confirmations they took
    /// (on the leader: quorum rounds; on a follower: read-index requests to the leader):
    /// `(reads, confirmations)`, leader side then follower side.
    pub fn read_index_stats(&self) -> ((u64, u64), (u64, u64)) {
        (self.leader_reads.stats(), self.forwarded_reads.stats())
    }

    /// Log entries this node sent to followers while it led: `(whole, as ids)`. After a
    /// leader change the new leader resends part of its log to find where each follower's
    /// matches; entries a follower already holds go as their ids.
    pub fn entries_sent(&self) -> (u64, u64) {
        self.contacts.as_ref().map_or((0, 0), |c| c.entries_sent())
    }

    /// This node's id.
    pub fn node_id(&self) -> NodeId {
        self.node_id
    }

    /// How many times this node's whole state was replaced since it started (a restore
    /// into the running cluster, a snapshot installed from the leader).
    pub fn state_generation(&self) -> u64 {
        self.gate.generation()
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
            .map_err(EngineError::storage)
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
        let target = self.applied_index();
        let deadline = tokio::time::Instant::now() + SNAPSHOT_BUILD_WAIT;
        loop {
            // openraft drops a trigger while a build is running (one started by the log's
            // growth, say, at an older index): trigger again until a build covers `target`.
            self.raft
                .trigger()
                .snapshot()
                .await
                .map_err(EngineError::storage)?;
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let built = self
                .raft
                .wait(Some(left.min(SNAPSHOT_RETRIGGER)))
                .metrics(
                    |m| m.snapshot.is_some_and(|s| s.index >= target),
                    "snapshot built",
                )
                .await;
            match built {
                Ok(_) => return Ok(target),
                Err(e) if tokio::time::Instant::now() >= deadline => {
                    return Err(EngineError::storage(e))
                }
                Err(_) => continue,
            }
        }
    }

    /// Builds a snapshot of the local state now (on any node, a read-only standby included)
    /// and opens it, positioned at its start: a consistent point-in-time copy that stays
    /// readable through the handle even after a newer snapshot replaces it.
    pub async fn snapshot_file(&self) -> Result<std::fs::File, EngineError> {
        use std::io::{Seek, SeekFrom};
        self.snapshot_now().await?;
        let snap = self
            .raft
            .get_snapshot()
            .await
            .map_err(EngineError::storage)?
            .ok_or_else(|| EngineError::Storage("no snapshot after building one".into()))?;
        let mut file = snap.snapshot.into_std().await;
        file.seek(SeekFrom::Start(0))
            .map_err(EngineError::storage)?;
        Ok(file)
    }

    /// [`Engine::snapshot_file`], read whole into memory (a bootstrap pack holds it).
    pub async fn snapshot_bytes(&self) -> Result<Vec<u8>, EngineError> {
        use std::io::Read;
        let mut file = self.snapshot_file().await?;
        tokio::task::spawn_blocking(move || {
            let mut bytes = Vec::new();
            file.read_to_end(&mut bytes).map(|_| bytes)
        })
        .await
        .map_err(EngineError::storage)?
        .map_err(EngineError::storage)
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
        self.raft.shutdown().await.map_err(EngineError::storage)
    }
}

/// Opens the node's RocksDB. If this same process still holds it — an engine being reopened
/// right after `shutdown`, while openraft's state-machine task drops its last handle — waits
/// up to [`DB_RELEASE_WAIT`] for it to close. A lock held by another process fails at once:
/// two nodes on one data directory must never run.
async fn open_db_when_released(
    path: &std::path::Path,
    storage: &StorageTuning,
) -> Result<Arc<Db>, EngineError> {
    storage.validate().map_err(EngineError::Config)?;
    let deadline = tokio::time::Instant::now() + DB_RELEASE_WAIT;
    loop {
        match crate::db::open_with(path, storage) {
            Ok(db) => return Ok(db),
            Err(OpenError::HeldHere(_)) if tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(DB_RELEASE_POLL).await;
            }
            Err(e) => return Err(EngineError::storage(e)),
        }
    }
}

/// Refuses a transaction that can never be valid, before it is proposed.
pub(crate) fn validate(txn: &Txn) -> Result<(), EngineError> {
    let invalid = |why: &str| Err(EngineError::InvalidTxn(why.into()));
    for (i, op) in txn.ops.iter().enumerate() {
        let (key, value_len) = match op {
            Op::Put { key, value } => (key, value.len()),
            Op::Delete { key } => (key, 0),
            Op::DeletePrefix { prefix } if prefix.is_empty() => {
                return invalid("delete-prefix needs a non-empty prefix")
            }
            Op::DeletePrefix { prefix } => (prefix, 0),
            Op::Replace { .. } if i > 0 => return invalid("a replace must be the first op"),
            Op::Replace { staged, .. }
                if !staged.starts_with(crate::txn::STAGING_PREFIX)
                    || staged.len() == crate::txn::STAGING_PREFIX.len() =>
            {
                return invalid("a replace must name a staging area of its own")
            }
            Op::Archive { .. } if i > 0 => return invalid("an archive must be the first op"),
            Op::Archive { from, to }
                if from > to || !txn.compares.iter().any(|c| {
                    c.key == *from
                        && matches!(&c.check, crate::Check::RangeDigest { to: t, .. } if t == to)
                }) =>
            {
                return invalid("an archive needs a range-digest guard on the same range")
            }
            Op::Archive { from, to } => {
                if to.is_empty() || to.len() > MAX_KEY_BYTES {
                    return invalid("an archive's last key is outside the key length bounds");
                }
                (from, 0)
            }
            Op::Replace { staged, keep } => {
                if keep.iter().any(|k| {
                    k.is_empty()
                        || k.starts_with(crate::txn::STAGING_PREFIX)
                        || staged.starts_with(k)
                }) {
                    return invalid("a replace keeps non-empty prefixes outside the staging");
                }
                (staged, 0)
            }
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
