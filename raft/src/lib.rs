//! Coffer's replicated engine: openraft (0.9, `storage-v2`) over RocksDB.
//!
//! The state machine is an ordered, transactional key-value store of opaque bytes: etcd-style
//! transactions (comparisons, then puts/deletes/prefix deletes, atomically), a global revision
//! and per-key revisions, prefix scans, and snapshots streamed in bounded chunks. This crate
//! never holds or uses a key: it stores what it is given.

// openraft's storage traits fix `StorageError` (over 200 bytes) as the error type; helpers that
// feed those traits return it too rather than boxing and unboxing at every call.
#![allow(clippy::result_large_err)]

pub mod archive;
mod db;
mod engine;
mod errors;
#[doc(hidden)]
pub mod fuzz;
mod log_store;
mod network;
mod replace;
mod snapshot;
mod state_machine;
pub mod transport;
mod tuning;
mod txn;
mod types;

pub use archive::ArchiveDir;
pub use db::{Db, StorageTuning};
pub use engine::membership::{
    ContactBook, Contacts, MemberStatus, MembershipChange, PROMOTE_MAX_LAG,
};
pub use engine::mode::{ModeChange, NodeMode, DEFAULT_STANDBY_AFTER};
pub use engine::{Engine, EngineConfig, MAX_KEY_BYTES, MAX_VALUE_BYTES};
pub use errors::EngineError;
pub use log_store::LogStore;
pub use network::NoPeers;
pub use replace::StateGate;
pub use snapshot::{
    inspect as inspect_snapshot, scan as scan_snapshot, SnapshotFiles, SnapshotHeader,
};
pub use state_machine::StateMachine;
pub use transport::{
    serve_peers, AppFuture, AppHandler, ForwardError, Forwarder, PeerCaller, PeerIdentity,
    PeerNetwork, Refusal, Refusals, Roster,
};
pub use tuning::RaftTuning;
pub use txn::{
    plan, range_digest, value_hash, Check, Compare, KvEntry, Op, StateView, Txn, TxnResult, Write,
    STAGING_PREFIX,
};
pub use types::{
    Command, LogId, NodeAddr, NodeId, Raft, RaftMetrics, StorageError, StoredMembership, TypeConfig,
};

/// Opens the RocksDB instance the stores share (for the storage test suite and tools).
pub fn open_db(path: &std::path::Path) -> Result<std::sync::Arc<Db>, String> {
    db::open(path).map_err(|e| e.to_string())
}

/// Installs a snapshot file (from a bootstrap pack or a backup), read from `source`, into a
/// fresh node's data directory, so the node starts with that state instead of fetching it
/// all from a leader. The file is written, fsynced and verified whole before anything is
/// loaded. Refuses a directory that already holds state. `progress(done, total)` reports
/// records.
pub fn install_seed_snapshot(
    data_dir: &std::path::Path,
    source: &mut dyn std::io::Read,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<SnapshotHeader, String> {
    let db = db::open(&data_dir.join("raft")).map_err(|e| e.to_string())?;
    let files = SnapshotFiles::new(data_dir.join("snapshots"), db.clone())?;
    files.install_seed(&db, source, progress)
}

/// Makes the state in `data_dir` (installed from a snapshot, with an empty log) the state of
/// a new one-voter cluster whose only member is `node_id` at `addr`, after applying `edits`
/// to it: the membership is replaced as of the last applied log id, and the edits are
/// written at the next revision. For restores and forced recovery, on a stopped node.
pub fn reset_to_single_voter(
    data_dir: &std::path::Path,
    node_id: NodeId,
    addr: NodeAddr,
    edits: &[Op],
) -> Result<SnapshotHeader, String> {
    let db = db::open(&data_dir.join("raft")).map_err(|e| e.to_string())?;
    db::reset_to_single_voter(&db, node_id, addr, edits)?;
    // The snapshot a leader sends to new members must carry the new membership too.
    SnapshotFiles::new(data_dir.join("snapshots"), db)?.build()
}

/// Copies the archive segments under `from` into `data_dir`'s `archive/`, each checked
/// against its digest first, and records them as this node's own (a node recovered from a
/// survivor's directory carries the survivor's segments; a later loss of one is then
/// reported as a deletion). Segments that fail their digest are left behind and named in
/// the log. Returns how many were carried. On a stopped node.
pub fn adopt_archive(data_dir: &std::path::Path, from: &std::path::Path) -> Result<usize, String> {
    let source = ArchiveDir::new(from.to_path_buf());
    let target = ArchiveDir::new(data_dir.join("archive"));
    let mut carried = Vec::new();
    for digest in source.list() {
        match source.read(&digest) {
            Ok(Some(records)) => {
                target.write(&digest, &records)?;
                carried.push(digest);
            }
            Ok(None) => {}
            Err(e) => tracing::warn!("not carried: {e}"),
        }
    }
    if carried.is_empty() {
        return Ok(0);
    }
    let db = db::open(&data_dir.join("raft")).map_err(|e| e.to_string())?;
    let mut batch = rocksdb::WriteBatch::default();
    for digest in &carried {
        batch.put_cf(
            db::cf(&db, db::CF_SM),
            db::archived_key(digest),
            0u64.to_be_bytes(),
        );
    }
    let mut opts = rocksdb::WriteOptions::default();
    opts.set_sync(true);
    db.write_opt(batch, &opts).map_err(|e| e.to_string())?;
    Ok(carried.len())
}

/// Whether a running process holds the RocksDB under `data_dir` (its lock file is locked).
/// A stopped node's directory, or a copy of it, is free.
pub fn in_use(data_dir: &std::path::Path) -> bool {
    db::locked(&data_dir.join("raft"))
}
