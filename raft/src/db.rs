//! The one RocksDB instance a node keeps: column families, the key names and encodings in
//! each (the whole on-disk layout, in one place), and the durability contract shared by the
//! log store, the state machine and snapshot installation.
//!
//! # Durability contract
//!
//! - Log appends are written without sync and reported durable only after the write-ahead log
//!   has been synced by the log syncer thread ([`crate::log_store`]); the vote, truncation and
//!   purge are written with `sync = true` before their call returns.
//! - State-machine writes are not synced. The log store and the state machine share this one
//!   RocksDB instance and therefore one WAL, which is written and synced in order: any later
//!   synced log write makes every earlier state-machine write durable too. After a crash the
//!   state machine may be behind the log, never ahead of it, and openraft re-applies the
//!   committed tail (the committed log id is saved for exactly that).
//! - Log entries are purged only up to a snapshot's last log id, and the snapshot file is
//!   fsynced before it is announced, so no applied state exists only in purged entries.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use rocksdb::{ColumnFamilyDescriptor, Options, WriteBatch, DB};

use crate::snapshot::SnapshotHeader;
use crate::txn::{KvEntry, Op};
use crate::types::{LogId, NodeAddr, NodeId, StoredMembership};

/// Raft log entries, keyed by big-endian index.
pub const CF_LOG: &str = "log";
/// Raft metadata: vote, committed log id, last purged log id.
pub const CF_RAFT: &str = "raft";
/// The state machine's key-value data.
pub const CF_KV: &str = "kv";
/// State machine metadata: last applied log id, membership, global revision.
pub const CF_SM: &str = "sm";

/// The databases this process has open, by canonical path: reopening one (an engine
/// restarted in the same process while openraft's tasks still drop their handles) is told
/// apart from a lock held by another process without reading RocksDB's error text.
static OPEN_PATHS: Mutex<BTreeSet<PathBuf>> = Mutex::new(BTreeSet::new());

/// A node's open RocksDB; its path stays registered in this process until it has closed.
pub struct Db {
    /// `Some` until dropped (taken in `drop` so the database closes before the path is
    /// released).
    inner: Option<DB>,
    /// The canonical path, as registered.
    path: PathBuf,
}

impl std::ops::Deref for Db {
    type Target = DB;

    fn deref(&self) -> &DB {
        self.inner
            .as_ref()
            .expect("a Db holds its database until it is dropped")
    }
}

impl Drop for Db {
    fn drop(&mut self) {
        drop(self.inner.take());
        if let Ok(mut open) = OPEN_PATHS.lock() {
            open.remove(&self.path);
        }
    }
}

/// Why a database did not open.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// This process still has it open (an engine being reopened right after `shutdown`).
    #[error("{0} is still open in this process")]
    HeldHere(PathBuf),
    /// The directory could not be created or resolved.
    #[error("{0}: {1}")]
    Io(PathBuf, std::io::Error),
    /// RocksDB refused (another process holds its lock, corruption, I/O).
    #[error(transparent)]
    Rocks(#[from] rocksdb::Error),
}

/// Opens (creating if needed) the node's RocksDB with all column families, with the
/// default footprint (offline tools).
pub fn open(path: &Path) -> Result<Arc<Db>, OpenError> {
    open_with(path, &StorageTuning::default())
}

/// [`open`] with the footprint `tuning` sets.
pub fn open_with(path: &Path, tuning: &StorageTuning) -> Result<Arc<Db>, OpenError> {
    std::fs::create_dir_all(path).map_err(|e| OpenError::Io(path.to_path_buf(), e))?;
    let canonical = path
        .canonicalize()
        .map_err(|e| OpenError::Io(path.to_path_buf(), e))?;
    {
        let mut open = OPEN_PATHS.lock().unwrap_or_else(|p| p.into_inner());
        if !open.insert(canonical.clone()) {
            return Err(OpenError::HeldHere(canonical));
        }
    }
    match open_rocks(&canonical, tuning) {
        Ok(db) => Ok(Arc::new(Db {
            inner: Some(db),
            path: canonical,
        })),
        Err(e) => {
            let mut open = OPEN_PATHS.lock().unwrap_or_else(|p| p.into_inner());
            open.remove(&canonical);
            Err(e.into())
        }
    }
}

/// RocksDB's footprint (config file section `[storage]`), chosen for a store of up to a
/// few hundred MB of small, incompressible values (ciphertext) on a machine it shares.
/// Memory: at most `write_buffer_total_bytes` of memtables plus `block_cache_bytes` of
/// cached blocks, whatever the store's size. Disk: the write-ahead log stays under about
/// `wal_total_bytes` (column families that hold the oldest log file are flushed when it is
/// exceeded), plus SST files and one snapshot. Units are in the names.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StorageTuning {
    /// One memtable of a column family. Default 8 MiB: a flush writes an 8 MiB SST; larger
    /// buffers mean fewer, larger flushes (a little less write amplification) for more
    /// memory.
    pub write_buffer_bytes: usize,
    /// Memtables per column family (one filling while one flushes). Default 2; at least 2,
    /// or writes stall while a memtable flushes.
    pub write_buffers_per_cf: i32,
    /// Memtables of all column families together; past it the largest is flushed. Default
    /// 32 MiB: the memory bound (four column families could otherwise hold 4 × 2 × 8 MiB).
    pub write_buffer_total_bytes: usize,
    /// Write-ahead log files together; past it, the column families holding the oldest file
    /// are flushed so it can be deleted. Default 64 MiB: without it, a column family written
    /// rarely (the vote, the applied index) keeps every log file since its last flush.
    /// Smaller means more small flushes.
    pub wal_total_bytes: u64,
    /// Block cache, shared by the column families. Default 16 MiB: reads of recent secrets
    /// hit the memtables or the OS page cache anyway; a larger cache trades memory for fewer
    /// block reads on a large store.
    pub block_cache_bytes: usize,
    /// Background flush and compaction threads. Default 2 (this machine's cores); more
    /// helps only with more cores and a write-heavy load.
    pub background_threads: i32,
}

impl Default for StorageTuning {
    fn default() -> Self {
        Self {
            write_buffer_bytes: 8 << 20,
            write_buffers_per_cf: 2,
            write_buffer_total_bytes: 32 << 20,
            wal_total_bytes: 64 << 20,
            block_cache_bytes: 16 << 20,
            background_threads: 2,
        }
    }
}

impl StorageTuning {
    /// Refuses settings RocksDB would reject or that would stall writes, naming the field.
    pub fn validate(&self) -> Result<(), String> {
        const MIB: usize = 1 << 20;
        if self.write_buffer_bytes < MIB {
            return Err("storage.write_buffer_bytes: at least 1 MiB (1048576)".into());
        }
        if !(2..=16).contains(&self.write_buffers_per_cf) {
            return Err("storage.write_buffers_per_cf: between 2 and 16".into());
        }
        if self.write_buffer_total_bytes < self.write_buffer_bytes {
            return Err(
                "storage.write_buffer_total_bytes: at least storage.write_buffer_bytes".into(),
            );
        }
        if self.wal_total_bytes < self.write_buffer_total_bytes as u64 {
            return Err(
                "storage.wal_total_bytes: at least storage.write_buffer_total_bytes (smaller flushes on every write)".into(),
            );
        }
        if self.block_cache_bytes < MIB {
            return Err("storage.block_cache_bytes: at least 1 MiB (1048576)".into());
        }
        if !(1..=64).contains(&self.background_threads) {
            return Err("storage.background_threads: between 1 and 64".into());
        }
        Ok(())
    }
}

fn open_rocks(path: &Path, tuning: &StorageTuning) -> Result<DB, rocksdb::Error> {
    let cache = rocksdb::Cache::new_lru_cache(tuning.block_cache_bytes);
    let cf_opts = || {
        let mut o = Options::default();
        o.set_write_buffer_size(tuning.write_buffer_bytes);
        o.set_max_write_buffer_number(tuning.write_buffers_per_cf);
        let mut table = rocksdb::BlockBasedOptions::default();
        table.set_block_cache(&cache);
        // Ten bits a key (about 1% false positives, 1.2 MiB per million keys): a put of a new
        // key (every merged audit record, every new secret) reads its previous revision,
        // and the filter answers "absent" without reading a block.
        table.set_bloom_filter(10.0, false);
        o.set_block_based_table_factory(&table);
        o
    };
    let mut opts = cf_opts();
    opts.create_if_missing(true);
    opts.create_missing_column_families(true);
    opts.set_db_write_buffer_size(tuning.write_buffer_total_bytes);
    opts.set_max_total_wal_size(tuning.wal_total_bytes);
    opts.set_keep_log_file_num(4);
    opts.increase_parallelism(tuning.background_threads);
    let cfs = [CF_LOG, CF_RAFT, CF_KV, CF_SM]
        .into_iter()
        .map(|name| ColumnFamilyDescriptor::new(name, cf_opts()));
    DB::open_cf_descriptors(&opts, path, cfs)
}

/// `raft`: the vote (written synced).
pub const KEY_VOTE: &[u8] = b"vote";
/// `raft`: the last committed log id (re-applied from after a crash).
pub const KEY_COMMITTED: &[u8] = b"committed";
/// `raft`: the last purged log id.
pub const KEY_PURGED: &[u8] = b"last_purged";
/// `sm`: the last applied log id.
pub const KEY_APPLIED: &[u8] = b"applied";
/// `sm`: the membership as of the last applied entry.
pub const KEY_MEMBERSHIP: &[u8] = b"membership";
/// `sm`: the global revision.
pub const KEY_REVISION: &[u8] = b"revision";
/// `sm`: set (synced) once a snapshot file is published and while its records load; a node
/// that finds it at start knows its state is half-replaced and loads the published file
/// again.
pub const KEY_INSTALLING: &[u8] = b"installing";

/// `sm`: prefix of the archive segments this node applied, `archived/<digest hex>` → the log
/// index (u64 BE) of the entry that made it: a segment listed here whose file is gone was
/// deleted, one not listed was never held (see [`crate::archive`]).
pub const ARCHIVED_PREFIX: &str = "archived/";

/// The `sm` key recording that this node wrote the segment `digest`.
pub fn archived_key(digest: &[u8; 32]) -> Vec<u8> {
    format!("{ARCHIVED_PREFIX}{}", hex::encode(digest)).into_bytes()
}

/// Encodes a `kv` record: `mod_revision (8, BE) | create_revision (8, BE) | value`.
pub fn encode_entry(entry: &KvEntry) -> Vec<u8> {
    let mut out = Vec::with_capacity(16 + entry.value.len());
    out.extend_from_slice(&entry.mod_revision.to_be_bytes());
    out.extend_from_slice(&entry.create_revision.to_be_bytes());
    out.extend_from_slice(&entry.value);
    out
}

/// Inverse of [`encode_entry`]; `None` if the record is too short to be one.
pub fn decode_entry(raw: &[u8]) -> Option<KvEntry> {
    if raw.len() < 16 {
        return None;
    }
    Some(KvEntry {
        mod_revision: u64::from_be_bytes(raw[0..8].try_into().ok()?),
        create_revision: u64::from_be_bytes(raw[8..16].try_into().ok()?),
        value: raw[16..].to_vec(),
    })
}

/// Big-endian encoding so that byte order is numeric order.
pub fn index_key(index: u64) -> [u8; 8] {
    index.to_be_bytes()
}

/// Inverse of [`index_key`].
pub fn index_from_key(key: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(key.try_into().ok()?))
}

/// Handle to a column family; the names above always exist after [`open`].
pub fn cf<'a>(db: &'a DB, name: &str) -> &'a rocksdb::ColumnFamily {
    db.cf_handle(name)
        .unwrap_or_else(|| panic!("column family {name} missing after open"))
}

/// Whether another process holds the RocksDB lock under `path` (RocksDB takes a POSIX write
/// lock on `LOCK`). Asked without taking the lock or writing anything, so a stopped node's
/// directory is left exactly as it was.
pub fn locked(path: &Path) -> bool {
    use std::os::fd::AsRawFd;
    let Ok(file) = std::fs::File::open(path.join("LOCK")) else {
        return false;
    };
    // SAFETY: `flock` is a plain C struct for which all-zero is a valid value.
    let mut lock: libc::flock = unsafe { std::mem::zeroed() };
    lock.l_type = libc::F_WRLCK as libc::c_short;
    lock.l_whence = libc::SEEK_SET as libc::c_short;
    // SAFETY: a valid open descriptor and a valid `flock` that outlives the call.
    let asked = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_GETLK, &mut lock) };
    asked == 0 && lock.l_type != libc::F_UNLCK as libc::c_short
}

/// See [`crate::reset_to_single_voter`]. The log must be empty (a state installed from a
/// snapshot): entries in it would carry the old membership. Writes the vote at the last
/// applied term, so the node's first election is in a later term than any entry it holds,
/// and a fresh snapshot carrying the new membership; all synced.
pub fn reset_to_single_voter(
    db: &Arc<Db>,
    node_id: NodeId,
    addr: NodeAddr,
    edits: &[Op],
) -> Result<SnapshotHeader, String> {
    let io = |what: &'static str| move |e: rocksdb::Error| format!("{what}: {e}");
    if db
        .iterator_cf(cf(db, CF_LOG), rocksdb::IteratorMode::Start)
        .next()
        .is_some()
    {
        return Err(
            "the log is not empty: only a state installed from a snapshot can be reset".into(),
        );
    }
    let meta = |key: &[u8]| -> Result<Option<Vec<u8>>, String> {
        db.get_cf(cf(db, CF_SM), key)
            .map_err(io("reading state-machine meta"))
    };
    let decode = |raw: Option<Vec<u8>>| -> Result<Option<Option<LogId>>, String> {
        raw.map(|b| postcard::from_bytes(&b).map_err(|e| e.to_string()))
            .transpose()
    };
    let applied: Option<LogId> = decode(meta(KEY_APPLIED)?)?.flatten();
    let Some(applied) = applied else {
        return Err("no state to reset: nothing was ever applied here".into());
    };
    let revision: u64 = match meta(KEY_REVISION)? {
        Some(b) => postcard::from_bytes(&b).map_err(|e| e.to_string())?,
        None => 0,
    };
    let next = revision + u64::from(!edits.is_empty());
    let kv = cf(db, CF_KV);
    let mut batch = WriteBatch::default();
    for op in edits {
        match op {
            Op::Put { key, value } => {
                let created = db
                    .get_cf(kv, key)
                    .map_err(io("reading state"))?
                    .and_then(|raw| decode_entry(&raw))
                    .map_or(next, |e| e.create_revision);
                let entry = KvEntry {
                    mod_revision: next,
                    create_revision: created,
                    value: value.clone(),
                };
                batch.put_cf(kv, key, encode_entry(&entry));
            }
            Op::Delete { key } => batch.delete_cf(kv, key),
            Op::Replace { .. } | Op::Archive { .. } => {
                return Err("a replace or an archive is not an offline edit".into())
            }
            Op::DeletePrefix { prefix } => {
                let iter = db.prefix_iterator_cf(kv, prefix);
                for item in iter {
                    let (key, _) = item.map_err(io("reading state"))?;
                    if !key.starts_with(prefix) {
                        break;
                    }
                    batch.delete_cf(kv, key);
                }
            }
        }
    }
    let membership = StoredMembership::new(
        Some(applied),
        openraft::Membership::new(
            vec![BTreeSet::from([node_id])],
            BTreeMap::from([(node_id, addr)]),
        ),
    );
    let sm = cf(db, CF_SM);
    batch.put_cf(
        sm,
        KEY_MEMBERSHIP,
        postcard::to_allocvec(&membership).map_err(|e| e.to_string())?,
    );
    batch.put_cf(
        sm,
        KEY_REVISION,
        postcard::to_allocvec(&next).map_err(|e| e.to_string())?,
    );
    let raft = cf(db, CF_RAFT);
    let vote = openraft::Vote::new(applied.leader_id.term, node_id);
    batch.put_cf(
        raft,
        KEY_VOTE,
        postcard::to_allocvec(&vote).map_err(|e| e.to_string())?,
    );
    batch.put_cf(
        raft,
        KEY_COMMITTED,
        postcard::to_allocvec(&Some(applied)).map_err(|e| e.to_string())?,
    );
    let mut opts = rocksdb::WriteOptions::default();
    opts.set_sync(true);
    db.write_opt(batch, &opts)
        .map_err(io("writing the reset state"))?;
    Ok(SnapshotHeader {
        snapshot_id: String::new(),
        last_applied: Some(applied),
        membership,
        revision: next,
        entries: 0,
    })
}
