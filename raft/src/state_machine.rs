//! The replicated state machine: an ordered, transactional key-value store on RocksDB.
//!
//! A thin adapter: [`crate::txn::plan`] decides what a transaction writes; this module reads
//! current values for it, writes the result together with the last applied log id in one
//! atomic batch per entry, and keeps the global revision. Durability: see [`crate::db`].

use std::sync::Arc;

use openraft::storage::RaftStateMachine;
use openraft::{
    EntryPayload, OptionalSend, RaftSnapshotBuilder, Snapshot, SnapshotMeta, StorageIOError,
};
use rocksdb::{Direction, IteratorMode, ReadOptions, WriteBatch, DB};

use crate::archive::ArchiveDir;
use crate::db::{
    archived_key, cf, decode_entry, encode_entry, Db, CF_KV, CF_SM, KEY_APPLIED, KEY_MEMBERSHIP,
    KEY_REVISION,
};
use crate::snapshot::{SnapshotFiles, SnapshotHeader};
use crate::txn::{plan, KvEntry, StateView, TxnResult, Write};
use crate::types::{Command, LogId, NodeAddr, NodeId, StorageError, StoredMembership, TypeConfig};

/// Reads one key of the state machine.
pub fn read_entry(db: &DB, key: &[u8]) -> Result<Option<KvEntry>, String> {
    let raw = db.get_cf(cf(db, CF_KV), key).map_err(|e| e.to_string())?;
    raw.map(|r| decode_entry(&r).ok_or_else(|| corrupt(key)))
        .transpose()
}

fn corrupt(key: &[u8]) -> String {
    format!(
        "corrupt state-machine record at {:?}",
        String::from_utf8_lossy(key)
    )
}

/// Reads up to `limit` entries whose key starts with `prefix`, strictly after `after` when
/// given, in key order, from one consistent RocksDB snapshot.
pub fn scan_prefix(
    db: &DB,
    prefix: &[u8],
    after: Option<&[u8]>,
    limit: usize,
) -> Result<Vec<(Vec<u8>, KvEntry)>, String> {
    let snapshot = db.snapshot();
    let mut opts = ReadOptions::default();
    opts.set_snapshot(&snapshot);
    let start = after.unwrap_or(prefix);
    let iter = db.iterator_cf_opt(
        cf(db, CF_KV),
        opts,
        IteratorMode::From(start, Direction::Forward),
    );
    let mut out = Vec::new();
    for item in iter {
        let (key, raw) = item.map_err(|e| e.to_string())?;
        if !key.starts_with(prefix) || out.len() >= limit {
            break;
        }
        if after.is_some_and(|a| *key == *a) {
            continue;
        }
        let entry = decode_entry(&raw).ok_or_else(|| corrupt(&key))?;
        out.push((key.to_vec(), entry));
    }
    Ok(out)
}

pub(crate) fn get_sm_meta<T: serde::de::DeserializeOwned>(
    db: &DB,
    key: &[u8],
) -> Result<Option<T>, String> {
    let raw = db.get_cf(cf(db, CF_SM), key).map_err(|e| e.to_string())?;
    raw.map(|b| postcard::from_bytes(&b).map_err(|e| e.to_string()))
        .transpose()
}

/// Current state read straight from the database, for the planner.
pub(crate) struct DbView<'a>(pub(crate) &'a DB);

impl StateView for DbView<'_> {
    fn get(&self, key: &[u8]) -> Result<Option<KvEntry>, String> {
        read_entry(self.0, key)
    }

    fn keys_with_prefix(&self, prefix: &[u8]) -> Result<Vec<Vec<u8>>, String> {
        let iter = self.0.iterator_cf(
            cf(self.0, CF_KV),
            IteratorMode::From(prefix, Direction::Forward),
        );
        let mut keys = Vec::new();
        for item in iter {
            let (key, _) = item.map_err(|e| e.to_string())?;
            if !key.starts_with(prefix) {
                break;
            }
            keys.push(key.to_vec());
        }
        Ok(keys)
    }

    fn range(&self, from: &[u8], to: &[u8]) -> Result<Vec<(Vec<u8>, KvEntry)>, String> {
        let iter = self.0.iterator_cf(
            cf(self.0, CF_KV),
            IteratorMode::From(from, Direction::Forward),
        );
        let mut out = Vec::new();
        for item in iter {
            let (key, raw) = item.map_err(|e| e.to_string())?;
            if *key > *to {
                break;
            }
            let entry = decode_entry(&raw).ok_or_else(|| corrupt(&key))?;
            out.push((key.to_vec(), entry));
        }
        Ok(out)
    }
}

fn sm_read_err(e: impl ToString) -> StorageError {
    StorageIOError::read_state_machine(&std::io::Error::other(e.to_string())).into()
}

fn sm_write_err(e: impl ToString) -> StorageError {
    StorageIOError::write_state_machine(&std::io::Error::other(e.to_string())).into()
}

/// The RocksDB state machine.
pub struct StateMachine {
    /// The node's database (shared with the log store and with readers).
    db: Arc<Db>,
    /// Where snapshots live; also the recovery source for an interrupted install.
    snapshots: SnapshotFiles,
    /// Where archived ranges go ([`crate::Op::Archive`]).
    archive: ArchiveDir,
    /// Whether an archived range is being compacted.
    compacting: Arc<std::sync::atomic::AtomicBool>,
    /// Global revision after the last applied transaction (cached; persisted with each apply).
    revision: u64,
    /// The last applied log index (`None` before the first entry).
    last_applied: Option<u64>,
    /// Publishes the last applied index so readers can wait for their read index.
    applied_tx: tokio::sync::watch::Sender<u64>,
}

impl StateMachine {
    /// Opens the state machine, finishing a snapshot install a crash interrupted.
    pub fn open(
        db: Arc<Db>,
        snapshots: SnapshotFiles,
        archive: ArchiveDir,
        applied_tx: tokio::sync::watch::Sender<u64>,
    ) -> Result<Self, StorageError> {
        if snapshots.install_pending(&db).map_err(sm_read_err)? {
            tracing::warn!("finishing a snapshot install interrupted by a crash");
            snapshots.load_current_into(&db).map_err(sm_write_err)?;
        }
        crate::replace::resume(&db).map_err(sm_write_err)?;
        let revision = get_sm_meta(&db, KEY_REVISION)
            .map_err(sm_read_err)?
            .unwrap_or(0);
        // Stored as `Option<LogId>` (see `apply_one`): decoding it as a bare `LogId` read the
        // option's tag as the log id and reported index 1 after every restart.
        let applied: Option<LogId> = get_sm_meta::<Option<LogId>>(&db, KEY_APPLIED)
            .map_err(sm_read_err)?
            .flatten();
        applied_tx.send_replace(applied.map_or(0, |l| l.index));
        Ok(Self {
            db,
            snapshots,
            archive,
            compacting: Arc::default(),
            revision,
            last_applied: applied.map(|l| l.index),
            applied_tx,
        })
    }

    /// Applies one entry; a transaction's plan is made here unless the caller made it
    /// (`planned`, from the state as it is now).
    fn apply_one(
        &mut self,
        entry: openraft::Entry<TypeConfig>,
        planned: Option<(TxnResult, Vec<Write>)>,
    ) -> Result<TxnResult, StorageError> {
        // Each entry is applied once, in log order: a repeat or a gap would mean the log and
        // the state disagree, and going on would make replicas differ.
        assert!(
            self.last_applied
                .is_none_or(|last| entry.log_id.index > last),
            "applying log index {} after {:?}: the applied index must strictly rise",
            entry.log_id.index,
            self.last_applied
        );
        let mut batch = WriteBatch::default();
        let sm = cf(&self.db, CF_SM);
        let result = match entry.payload {
            EntryPayload::Blank => TxnResult {
                succeeded: true,
                failed_compare: None,
                revision: self.revision,
            },
            EntryPayload::Normal(Command::Txn(txn)) => {
                let (result, writes) = match planned {
                    Some(planned) => planned,
                    None => plan(&txn, &DbView(&self.db), self.revision).map_err(sm_read_err)?,
                };
                let kv = cf(&self.db, CF_KV);
                for write in writes {
                    match write {
                        Write::Put(key, e) => batch.put_cf(kv, key, encode_entry(&e)),
                        Write::Delete(key) => batch.delete_cf(kv, key),
                        // On disk before the batch that deletes the keys is written: `apply`
                        // sends every archive through `write_segments` first.
                        Write::Archive(digest, _) => {
                            if !self.archive.segment_path(&digest).exists() {
                                return Err(sm_write_err(
                                    "an archive segment was not written before its keys are deleted",
                                ));
                            }
                            batch.put_cf(
                                sm,
                                archived_key(&digest),
                                entry.log_id.index.to_be_bytes(),
                            );
                        }
                    }
                }
                result
            }
            EntryPayload::Membership(m) => {
                let stored = StoredMembership::new(Some(entry.log_id), m);
                batch.put_cf(
                    sm,
                    KEY_MEMBERSHIP,
                    postcard::to_allocvec(&stored).map_err(sm_write_err)?,
                );
                TxnResult {
                    succeeded: true,
                    failed_compare: None,
                    revision: self.revision,
                }
            }
        };
        let applied = postcard::to_allocvec(&Some(entry.log_id)).map_err(sm_write_err)?;
        batch.put_cf(sm, KEY_APPLIED, applied);
        batch.put_cf(
            sm,
            KEY_REVISION,
            postcard::to_allocvec(&result.revision).map_err(sm_write_err)?,
        );
        // Revisions order every change for watchers and compare-and-set: never backwards.
        assert!(
            result.revision >= self.revision,
            "revision {} after {}: the revision must never fall",
            result.revision,
            self.revision
        );
        self.db.write(batch).map_err(sm_write_err)?;
        self.revision = result.revision;
        self.last_applied = Some(entry.log_id.index);
        self.applied_tx.send_replace(entry.log_id.index);
        Ok(result)
    }
}

impl StateMachine {
    /// Compacts an archived range in the background, so its SST space leaves with it rather
    /// than whenever compaction happens to reach it. One at a time (a range archived while
    /// one runs is left to RocksDB's own compaction), and never keeping a closed engine's
    /// database open: the task holds it only while it compacts.
    fn compact_archived(&self, from: Vec<u8>, to: Vec<u8>) {
        use std::sync::atomic::Ordering;
        if self.compacting.swap(true, Ordering::AcqRel) {
            return;
        }
        let (db, busy) = (Arc::downgrade(&self.db), self.compacting.clone());
        tokio::task::spawn_blocking(move || {
            if let Some(db) = db.upgrade() {
                db.compact_range_cf(cf(&db, CF_KV), Some(&from), Some(&to));
            }
            busy.store(false, Ordering::Release);
        });
    }

    /// Writes the archive segments among `writes`, durably and off the async threads, before
    /// the entry is applied (which then deletes the archived keys); their records move into
    /// the files, the writes keep the digests.
    async fn write_segments(&self, writes: &mut [Write]) -> Result<(), StorageError> {
        for write in writes {
            if let Write::Archive(digest, records) = write {
                let (archive, digest, records) =
                    (self.archive.clone(), *digest, std::mem::take(records));
                tokio::task::spawn_blocking(move || archive.write(&digest, &records))
                    .await
                    .map_err(sm_write_err)?
                    .map_err(sm_write_err)?;
            }
        }
        Ok(())
    }

    /// Applies a transaction that replaces the whole state (see [`crate::replace`]): its
    /// guards are checked here; if they hold, the swap runs off the async threads, with no
    /// snapshot build looking meanwhile.
    async fn apply_replace(
        &mut self,
        entry: openraft::Entry<TypeConfig>,
    ) -> Result<TxnResult, StorageError> {
        let EntryPayload::Normal(Command::Txn(txn)) = entry.payload else {
            return Err(sm_write_err("not a replace"));
        };
        let guards = crate::txn::Txn {
            compares: txn.compares.clone(),
            ops: Vec::new(),
        };
        let (checked, _) = plan(&guards, &DbView(&self.db), self.revision).map_err(sm_read_err)?;
        if !checked.succeeded {
            // Nothing replaced: the entry is applied as a failed transaction.
            let failed = openraft::Entry {
                log_id: entry.log_id,
                payload: EntryPayload::Normal(Command::Txn(guards)),
            };
            return self.apply_one(failed, None);
        }
        let db = self.db.clone();
        let gate = self.snapshots.gate();
        let (log_id, revision) = (entry.log_id, self.revision);
        let result = tokio::task::spawn_blocking(move || {
            gate.changing(|| crate::replace::apply(&db, log_id, txn, revision))
        })
        .await
        .map_err(sm_write_err)?
        .map_err(sm_write_err)?;
        self.revision = result.revision;
        self.last_applied = Some(log_id.index);
        self.applied_tx.send_replace(log_id.index);
        Ok(result)
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = SnapshotFiles;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), StorageError> {
        let applied = get_sm_meta::<Option<LogId>>(&self.db, KEY_APPLIED)
            .map_err(sm_read_err)?
            .flatten();
        let membership = get_sm_meta(&self.db, KEY_MEMBERSHIP)
            .map_err(sm_read_err)?
            .unwrap_or_default();
        Ok((applied, membership))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<TxnResult>, StorageError>
    where
        I: IntoIterator<Item = openraft::Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut results = Vec::new();
        for entry in entries {
            let result = match &entry.payload {
                EntryPayload::Normal(Command::Txn(txn)) if crate::replace::is_replace(txn) => {
                    self.apply_replace(entry).await?
                }
                EntryPayload::Normal(Command::Txn(txn)) if crate::archive::in_txn(txn) => {
                    let mut planned =
                        plan(txn, &DbView(&self.db), self.revision).map_err(sm_read_err)?;
                    self.write_segments(&mut planned.1).await?;
                    let range = match txn.ops.first() {
                        Some(crate::Op::Archive { from, to }) => Some((from.clone(), to.clone())),
                        _ => None,
                    };
                    let result = self.apply_one(entry, Some(planned))?;
                    if let Some((from, to)) = range.filter(|_| result.succeeded) {
                        self.compact_archived(from, to);
                    }
                    result
                }
                _ => self.apply_one(entry, None)?,
            };
            results.push(result);
        }
        Ok(results)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.snapshots.clone()
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<tokio::fs::File>, StorageError> {
        let file = self.snapshots.incoming().await.map_err(sm_write_err)?;
        Ok(Box::new(file))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<NodeId, NodeAddr>,
        snapshot: Box<tokio::fs::File>,
    ) -> Result<(), StorageError> {
        let snapshots = self.snapshots.clone();
        let db = self.db.clone();
        let meta = meta.clone();
        let file = snapshot.into_std().await;
        let header = tokio::task::spawn_blocking(move || snapshots.install(&db, &meta, file))
            .await
            .map_err(sm_write_err)?
            .map_err(sm_write_err)?;
        self.revision = header.revision;
        self.last_applied = header.last_applied.map(|l| l.index);
        self.applied_tx
            .send_replace(header.last_applied.map_or(0, |l| l.index));
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, StorageError> {
        self.snapshots.current().await.map_err(sm_read_err)
    }
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotFiles {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError> {
        let files = self.clone();
        let header: SnapshotHeader = tokio::task::spawn_blocking(move || files.build())
            .await
            .map_err(sm_write_err)?
            .map_err(sm_write_err)?;
        tracing::info!(id = %header.snapshot_id, entries = header.entries, "snapshot built");
        self.current()
            .await
            .map_err(sm_read_err)?
            .ok_or_else(|| sm_read_err("snapshot vanished after build"))
    }
}
