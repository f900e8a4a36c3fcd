//! The one RocksDB instance a node keeps: column families, encodings and the durability
//! contract shared by the log store and the state machine.
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

use std::path::Path;
use std::sync::Arc;

use rocksdb::{ColumnFamilyDescriptor, Options, DB};

/// Raft log entries, keyed by big-endian index.
pub const CF_LOG: &str = "log";
/// Raft metadata: vote, committed log id, last purged log id.
pub const CF_RAFT: &str = "raft";
/// The state machine's key-value data.
pub const CF_KV: &str = "kv";
/// State machine metadata: last applied log id, membership, global revision.
pub const CF_SM: &str = "sm";

/// Opens (creating if needed) the node's RocksDB with all column families.
pub fn open(path: &Path) -> Result<Arc<DB>, rocksdb::Error> {
    let mut opts = Options::default();
    opts.create_if_missing(true);
    opts.create_missing_column_families(true);
    // Bounded memory: a vault is small; 4 write buffers of 16 MiB per CF is plenty.
    opts.set_write_buffer_size(16 << 20);
    opts.set_max_write_buffer_number(4);
    opts.set_keep_log_file_num(4);
    opts.increase_parallelism(2);
    let cfs = [CF_LOG, CF_RAFT, CF_KV, CF_SM]
        .into_iter()
        .map(|name| ColumnFamilyDescriptor::new(name, Options::default()));
    Ok(Arc::new(DB::open_cf_descriptors(&opts, path, cfs)?))
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
