//! The Raft log store on RocksDB (`storage-v2` [`RaftLogStorage`]).
//!
//! Durability (see also [`crate::db`]): `append` writes the batch without sync, so the entries
//! are readable at once, and hands the flush callback to a dedicated syncer thread. The thread
//! syncs the WAL once for every callback waiting at that moment (group commit) and only then
//! reports the entries durable. The fsync therefore never runs on the Raft core task and
//! concurrent appends share one fsync. The vote, truncation and purge are synced before their
//! calls return, on the blocking pool.

use std::fmt::Debug;
use std::ops::RangeBounds;
use std::sync::mpsc;
use std::sync::Arc;

use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{ErrorSubject, ErrorVerb, OptionalSend, RaftLogReader, StorageIOError, Vote};
use rocksdb::{Direction, IteratorMode, WriteBatch, WriteOptions};

use crate::db::{
    cf, index_from_key, index_key, Db, CF_LOG, CF_RAFT, KEY_COMMITTED, KEY_PURGED, KEY_VOTE,
};
use crate::types::{LogId, NodeId, StorageError, TypeConfig};

type Entry = openraft::Entry<TypeConfig>;

/// The RocksDB log store. Cheap to clone: clones share the database and the syncer.
#[derive(Clone)]
pub struct LogStore {
    /// The node's database (shared with the state machine).
    db: Arc<Db>,
    /// Callbacks waiting for the next WAL sync.
    syncer: mpsc::Sender<LogFlushed<TypeConfig>>,
}

fn io_err(e: impl std::error::Error + 'static) -> std::io::Error {
    std::io::Error::other(e.to_string())
}

fn read_err(e: impl std::error::Error + 'static) -> StorageError {
    StorageIOError::read_logs(&e).into()
}

fn write_err(e: impl std::error::Error + 'static) -> StorageError {
    StorageIOError::write_logs(&e).into()
}

impl LogStore {
    /// Wraps the database and starts the syncer thread, which exits when the last clone drops.
    pub fn new(db: Arc<Db>) -> Self {
        let (tx, rx) = mpsc::channel::<LogFlushed<TypeConfig>>();
        // The thread holds the database weakly: the last strong handle belongs to the engine,
        // so the database closes when the engine goes, not whenever this thread next wakes
        // (RocksDB must not be torn down after the process has begun to exit).
        let sync_db = Arc::downgrade(&db);
        std::thread::Builder::new()
            .name("coffer-log-sync".into())
            .spawn(move || sync_loop(sync_db, rx))
            .expect("spawning the log sync thread");
        Self { db, syncer: tx }
    }

    fn get_meta<T: serde::de::DeserializeOwned>(
        &self,
        key: &[u8],
    ) -> Result<Option<T>, StorageError> {
        meta(&self.db, key)
    }

    /// Writes `batch` with `sync = true` on the blocking pool, so the caller's task (the Raft
    /// core) only awaits and never performs the fsync itself.
    async fn write_synced(
        &self,
        batch: WriteBatch,
        subject: ErrorSubject<NodeId>,
    ) -> Result<(), StorageError> {
        let db = self.db.clone();
        let res = tokio::task::spawn_blocking(move || {
            let mut opts = WriteOptions::default();
            opts.set_sync(true);
            db.write_opt(batch, &opts)
        })
        .await
        .map_err(|e| StorageIOError::new(subject.clone(), ErrorVerb::Write, &e))?;
        res.map_err(|e| StorageIOError::new(subject, ErrorVerb::Write, &e).into())
    }

    fn last_log_id(&self) -> Result<Option<LogId>, StorageError> {
        last_entry_id(&self.db)
    }
}

/// The last log index stored in `db` (or purged into a snapshot), read from disk: entries
/// only grow past it, and purging stops at a snapshot, so it never falls below the commit
/// index read before it.
pub(crate) fn last_index(db: &std::sync::Weak<Db>) -> Option<u64> {
    let db = db.upgrade()?;
    let purged: Option<LogId> = meta(&db, KEY_PURGED).ok()?;
    Some(last_entry_id(&db).ok()?.or(purged).map_or(0, |l| l.index))
}

/// A value of the `raft` column family.
fn meta<T: serde::de::DeserializeOwned>(
    db: &rocksdb::DB,
    key: &[u8],
) -> Result<Option<T>, StorageError> {
    let raw = db.get_cf(cf(db, CF_RAFT), key).map_err(read_err)?;
    raw.map(|bytes| postcard::from_bytes(&bytes).map_err(read_err))
        .transpose()
}

/// The id of the last entry in the log column family, if any.
fn last_entry_id(db: &rocksdb::DB) -> Result<Option<LogId>, StorageError> {
    let mut iter = db.iterator_cf(cf(db, CF_LOG), IteratorMode::End);
    match iter.next() {
        None => Ok(None),
        Some(item) => {
            let (_, value) = item.map_err(read_err)?;
            let entry: Entry = postcard::from_bytes(&value).map_err(read_err)?;
            Ok(Some(entry.log_id))
        }
    }
}

fn sync_loop(db: std::sync::Weak<Db>, rx: mpsc::Receiver<LogFlushed<TypeConfig>>) {
    while let Ok(first) = rx.recv() {
        // Everything queued now was written before this sync starts, so one sync covers all.
        let mut waiting = vec![first];
        waiting.extend(rx.try_iter());
        let result = match db.upgrade() {
            Some(db) => db.flush_wal(true).map_err(|e| e.to_string()),
            None => Err("database closed before the log was synced".to_string()),
        };
        for callback in waiting {
            let outcome = result.clone().map_err(std::io::Error::other);
            callback.log_io_completed(outcome);
        }
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError> {
        use std::ops::Bound;
        let start = match range.start_bound() {
            Bound::Included(i) => *i,
            Bound::Excluded(i) => i + 1,
            Bound::Unbounded => 0,
        };
        let mode = IteratorMode::From(&index_key(start), Direction::Forward);
        let mut entries = Vec::new();
        for item in self.db.iterator_cf(cf(&self.db, CF_LOG), mode) {
            let (key, value) = item.map_err(read_err)?;
            let index = index_from_key(&key).ok_or_else(|| read_err(io_err(std::fmt::Error)))?;
            if !range.contains(&index) {
                break;
            }
            entries.push(postcard::from_bytes(&value).map_err(read_err)?);
        }
        Ok(entries)
    }
}

/// How many of `ids` (consecutive) the log holds, from the first on: the entries are not
/// decoded, only the log id at the front of each (an `Entry` is encoded log id first).
pub(crate) fn held_ids(db: &Db, ids: &[LogId]) -> Result<usize, StorageError> {
    let Some(first) = ids.first() else {
        return Ok(0);
    };
    let mode = IteratorMode::From(&index_key(first.index), Direction::Forward);
    let mut held = 0;
    for (item, id) in db.iterator_cf(cf(db, CF_LOG), mode).zip(ids) {
        let (_, value) = item.map_err(read_err)?;
        let (stored, _) = postcard::take_from_bytes::<LogId>(&value).map_err(read_err)?;
        if stored != *id {
            break;
        }
        held += 1;
    }
    Ok(held)
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError> {
        let last_purged_log_id: Option<LogId> = self.get_meta(KEY_PURGED)?;
        let last_log_id = self.last_log_id()?.or(last_purged_log_id);
        Ok(LogState {
            last_purged_log_id,
            last_log_id,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> Result<(), StorageError> {
        let mut batch = WriteBatch::default();
        let bytes = postcard::to_allocvec(vote).map_err(|e| StorageIOError::write_vote(&e))?;
        batch.put_cf(cf(&self.db, CF_RAFT), KEY_VOTE, bytes);
        self.write_synced(batch, ErrorSubject::Vote).await
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<NodeId>>, StorageError> {
        self.get_meta(KEY_VOTE)
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), StorageError> {
        // Not synced: losing it only means re-applying from the state machine's last applied
        // id once a leader commits again.
        let bytes = postcard::to_allocvec(&committed).map_err(write_err)?;
        self.db
            .put_cf(cf(&self.db, CF_RAFT), KEY_COMMITTED, bytes)
            .map_err(write_err)
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, StorageError> {
        Ok(self.get_meta::<Option<LogId>>(KEY_COMMITTED)?.flatten())
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut batch = WriteBatch::default();
        let log = cf(&self.db, CF_LOG);
        for entry in entries {
            let bytes = postcard::to_allocvec(&entry).map_err(write_err)?;
            batch.put_cf(log, index_key(entry.log_id.index), bytes);
        }
        // Readable now (memtable); durable when the syncer calls back.
        self.db.write(batch).map_err(write_err)?;
        self.syncer
            .send(callback)
            .map_err(|_| write_err(io_err(std::fmt::Error)))?;
        Ok(())
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        let mut batch = WriteBatch::default();
        batch.delete_range_cf(
            cf(&self.db, CF_LOG),
            index_key(log_id.index),
            index_key(u64::MAX),
        );
        batch.delete_cf(cf(&self.db, CF_LOG), index_key(u64::MAX));
        self.write_synced(batch, ErrorSubject::Logs).await
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        // One atomic batch: the new last-purged id and the deletion land together, so a reader
        // after a crash never sees a hole below a stale last-purged id.
        let mut batch = WriteBatch::default();
        let bytes = postcard::to_allocvec(&log_id).map_err(write_err)?;
        batch.put_cf(cf(&self.db, CF_RAFT), KEY_PURGED, bytes);
        batch.delete_range_cf(
            cf(&self.db, CF_LOG),
            index_key(0),
            index_key(log_id.index + 1),
        );
        self.write_synced(batch, ErrorSubject::Logs).await
    }
}
