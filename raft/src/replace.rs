//! Replacing the whole state in one log entry ([`Op::Replace`]): a restore into a running
//! cluster, applied by every replica alike.
//!
//! The new state arrives first as ordinary transactions that put records under a staging
//! prefix (so a snapshot taken meanwhile carries them to a lagging member); one transaction
//! then swaps it in. That swap touches every record, so it runs in bounded batches:
//!
//! 1. a marker with the entry is written (synced) to the `sm` column family;
//! 2. every key that is neither kept nor staged is deleted (then the marker says so);
//! 3. every staged record moves to its key (its staging copy deleted in the same batch);
//! 4. the transaction's other ops run on the result, and the last batch (synced) sets the
//!    applied log id and revision and clears the marker.
//!
//! A node that crashes in between finds the marker when it opens and carries on from the
//! step it names: step 2 again is harmless (it deletes what step 2 deletes), and step 3
//! only sees the records not moved yet. Snapshots are never built from the state in between
//! (see [`StateGate`]).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::RwLock;

use rocksdb::{Direction, IteratorMode, ReadOptions, WriteBatch, WriteOptions, DB};
use serde::{Deserialize, Serialize};

use crate::db::{cf, decode_entry, encode_entry, CF_KV, CF_SM, KEY_APPLIED, KEY_REVISION};
use crate::state_machine::DbView;
use crate::txn::{plan, KvEntry, Op, Txn, TxnResult, Write};
use crate::types::LogId;

/// `sm`: a replace in progress (postcard [`Replacing`]).
pub(crate) const KEY_REPLACING: &[u8] = b"replacing";
/// Upper bound of one write batch of a replace.
const BATCH_BYTES: usize = 4 << 20;

/// What a node needs to finish a replace after a crash.
#[derive(Serialize, Deserialize)]
struct Replacing {
    /// The entry being applied.
    log_id: LogId,
    /// Its transaction (the replace, then the ops that follow it).
    txn: Txn,
    /// The revision before the entry.
    revision: u64,
    /// Step 2 is done.
    cleared: bool,
}

/// Orders snapshot builds against wholesale changes of the state, and counts those changes.
///
/// A snapshot build takes a consistent RocksDB view; a replace or a snapshot install
/// changes the state over many batches, and a view taken between two of them would be a
/// state that never existed (half the old records, half the new, under the old applied
/// index). Builds take the read side for the moment they take their view; replaces and
/// installs hold the write side throughout.
#[derive(Default)]
pub struct StateGate {
    lock: RwLock<()>,
    generation: AtomicU64,
    /// A wholesale change is under way (readers refuse rather than see half of it).
    changing: std::sync::atomic::AtomicBool,
}

impl StateGate {
    /// Runs `f` with no replace or install in progress (a snapshot build's view).
    pub(crate) fn stable<T>(&self, f: impl FnOnce() -> T) -> T {
        let _guard = self.lock.read().unwrap_or_else(|p| p.into_inner());
        f()
    }

    /// Runs `f`, a wholesale change, with no build taking a view meanwhile; counts it.
    pub(crate) fn changing<T>(&self, f: impl FnOnce() -> T) -> T {
        let _guard = self.lock.write().unwrap_or_else(|p| p.into_inner());
        self.changing.store(true, Ordering::SeqCst);
        let out = f();
        self.generation.fetch_add(1, Ordering::SeqCst);
        self.changing.store(false, Ordering::SeqCst);
        out
    }

    /// Runs `read`, a local read of the state, and returns what it read only if no
    /// wholesale change overlapped it (checked before and after, without blocking: a read
    /// never waits on a restore, it is refused and retried).
    pub(crate) fn read<T>(
        &self,
        read: impl FnOnce() -> Result<T, String>,
    ) -> Result<T, crate::EngineError> {
        let before = self.generation.load(Ordering::SeqCst);
        if self.changing.load(Ordering::SeqCst) {
            return Err(crate::EngineError::Replacing);
        }
        let out = read().map_err(crate::EngineError::Storage)?;
        if self.changing.load(Ordering::SeqCst) || self.generation.load(Ordering::SeqCst) != before
        {
            return Err(crate::EngineError::Replacing);
        }
        Ok(out)
    }

    /// How many times the whole state was replaced (restores, installed snapshots) since
    /// the node started; a local read this moved under is refused.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::SeqCst)
    }
}

/// Whether `txn` replaces the state.
pub(crate) fn is_replace(txn: &Txn) -> bool {
    matches!(txn.ops.first(), Some(Op::Replace { .. }))
}

/// Applies the replace transaction `txn` at `log_id`, its guards having held at `revision`.
/// Blocking.
pub(crate) fn apply(db: &DB, log_id: LogId, txn: Txn, revision: u64) -> Result<TxnResult, String> {
    let marker = Replacing {
        log_id,
        txn,
        revision,
        cleared: false,
    };
    let mut opts = WriteOptions::default();
    opts.set_sync(true);
    db.put_cf_opt(cf(db, CF_SM), KEY_REPLACING, encode(&marker)?, &opts)
        .map_err(|e| format!("marking the replace: {e}"))?;
    finish(db, marker)
}

/// Finishes a replace a crash interrupted, if there is one; returns the entry it applied.
pub(crate) fn resume(db: &DB) -> Result<Option<LogId>, String> {
    let Some(raw) = db
        .get_cf(cf(db, CF_SM), KEY_REPLACING)
        .map_err(|e| format!("reading the replace marker: {e}"))?
    else {
        return Ok(None);
    };
    let marker: Replacing =
        postcard::from_bytes(&raw).map_err(|e| format!("reading the replace marker: {e}"))?;
    tracing::warn!(
        index = marker.log_id.index,
        "finishing a state replace (a restore) interrupted by a crash"
    );
    let log_id = marker.log_id;
    finish(db, marker).map(|_| Some(log_id))
}

fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, String> {
    postcard::to_allocvec(value).map_err(|e| e.to_string())
}

fn finish(db: &DB, mut marker: Replacing) -> Result<TxnResult, String> {
    let Some(Op::Replace { staged, keep }) = marker.txn.ops.first().cloned() else {
        return Err("the replace marker holds no replace".into());
    };
    let kept = |key: &[u8]| keep.iter().any(|k| key.starts_with(k));
    let new_revision = marker.revision + 1;
    let kv = cf(db, CF_KV);
    let sm = cf(db, CF_SM);
    let write = |batch: WriteBatch| db.write(batch).map_err(|e| format!("replacing state: {e}"));
    if !marker.cleared {
        let snapshot = db.snapshot();
        let mut opts = ReadOptions::default();
        opts.set_snapshot(&snapshot);
        let mut batch = WriteBatch::default();
        for item in db.iterator_cf_opt(kv, opts, IteratorMode::Start) {
            let (key, _) = item.map_err(|e| format!("reading state: {e}"))?;
            if !key.starts_with(&staged) && !kept(&key) {
                batch.delete_cf(kv, key);
            }
            if batch.size_in_bytes() >= BATCH_BYTES {
                write(std::mem::take(&mut batch))?;
            }
        }
        marker.cleared = true;
        batch.put_cf(sm, KEY_REPLACING, encode(&marker)?);
        write(batch)?;
    }
    let mut batch = WriteBatch::default();
    let iter = db.iterator_cf(kv, IteratorMode::From(&staged, Direction::Forward));
    for item in iter {
        let (key, raw) = item.map_err(|e| format!("reading state: {e}"))?;
        if !key.starts_with(&staged) {
            break;
        }
        batch.delete_cf(kv, &key);
        let real = &key[staged.len()..];
        if !real.is_empty() && !kept(real) {
            let staged_entry = decode_entry(&raw).ok_or("a corrupt staged record")?;
            let entry = KvEntry {
                mod_revision: new_revision,
                create_revision: new_revision,
                value: staged_entry.value,
            };
            batch.put_cf(kv, real, encode_entry(&entry));
        }
        if batch.size_in_bytes() >= BATCH_BYTES {
            write(std::mem::take(&mut batch))?;
        }
    }
    write(std::mem::take(&mut batch))?;
    let rest = Txn {
        compares: Vec::new(),
        ops: marker.txn.ops[1..].to_vec(),
    };
    let (_, writes) = plan(&rest, &DbView(db), marker.revision)?;
    for w in writes {
        match w {
            Write::Put(key, entry) => batch.put_cf(kv, key, encode_entry(&entry)),
            Write::Delete(key) => batch.delete_cf(kv, key),
            Write::Archive(..) => return Err("an archive cannot follow a replace".into()),
        }
    }
    batch.put_cf(sm, KEY_APPLIED, encode(&Some(marker.log_id))?);
    batch.put_cf(sm, KEY_REVISION, encode(&new_revision)?);
    batch.delete_cf(sm, KEY_REPLACING);
    let mut opts = WriteOptions::default();
    opts.set_sync(true);
    db.write_opt(batch, &opts)
        .map_err(|e| format!("replacing state: {e}"))?;
    tracing::info!(
        index = marker.log_id.index,
        revision = new_revision,
        "state replaced"
    );
    Ok(TxnResult {
        succeeded: true,
        failed_compare: None,
        revision: new_revision,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::txn::STAGING_PREFIX;

    const OLD: usize = 20;
    const NEW: usize = 10;

    fn put(db: &DB, key: &[u8], value: &[u8]) {
        let entry = KvEntry {
            mod_revision: 1,
            create_revision: 1,
            value: value.to_vec(),
        };
        db.put_cf(cf(db, CF_KV), key, encode_entry(&entry)).unwrap();
    }

    fn area() -> Vec<u8> {
        [STAGING_PREFIX, b"t/"].concat()
    }

    fn data(i: usize) -> Vec<u8> {
        format!("data/{i:02}").into_bytes()
    }

    /// The state before the replace, with the new one staged, and the replacing entry.
    fn setup(db: &DB) -> Replacing {
        for i in 0..OLD {
            put(db, &data(i), b"old");
        }
        put(db, b"audit/1", b"kept");
        for i in 0..NEW {
            put(db, &[area(), data(i)].concat(), b"new");
        }
        put(
            db,
            &[area(), b"audit/1".to_vec()].concat(),
            b"from the backup",
        );
        Replacing {
            log_id: LogId::new(openraft::CommittedLeaderId::new(3, 1), 42),
            txn: Txn {
                compares: Vec::new(),
                ops: vec![
                    Op::Replace {
                        staged: area(),
                        keep: vec![b"audit/".to_vec()],
                    },
                    Op::Put {
                        key: b"after".to_vec(),
                        value: b"yes".to_vec(),
                    },
                ],
            },
            revision: 5,
            cleared: false,
        }
    }

    fn state(db: &DB) -> Vec<(Vec<u8>, Vec<u8>, u64)> {
        db.iterator_cf(cf(db, CF_KV), IteratorMode::Start)
            .map(|item| {
                let (k, v) = item.unwrap();
                let e = decode_entry(&v).unwrap();
                (k.to_vec(), e.value, e.mod_revision)
            })
            .collect()
    }

    /// A node killed at any point of a replace (after the marker, halfway through the
    /// deletions, halfway through the moves) finishes it at reopen to the same state as an
    /// uninterrupted one.
    #[test]
    fn a_replace_cut_short_anywhere_finishes_the_same() {
        let mut expected: Vec<(Vec<u8>, Vec<u8>, u64)> =
            (0..NEW).map(|i| (data(i), b"new".to_vec(), 6)).collect();
        expected.push((b"after".to_vec(), b"yes".to_vec(), 6));
        expected.insert(0, (b"audit/1".to_vec(), b"kept".to_vec(), 1));
        expected.sort();
        for cut in 0..4 {
            let dir = tempfile::tempdir().unwrap();
            let db = crate::db::open(dir.path()).unwrap();
            let mut marker = setup(&db);
            if cut == 3 {
                // Not cut: the whole apply.
                let result = apply(&db, marker.log_id, marker.txn, marker.revision).unwrap();
                assert_eq!(result.revision, 6);
                assert_eq!(state(&db), expected);
                continue;
            }
            let kv = cf(&db, CF_KV);
            if cut >= 1 {
                for i in NEW..OLD {
                    db.delete_cf(kv, data(i)).unwrap();
                }
            }
            if cut == 2 {
                marker.cleared = true;
                for i in 0..NEW / 2 {
                    let entry = KvEntry {
                        mod_revision: 6,
                        create_revision: 6,
                        value: b"new".to_vec(),
                    };
                    db.put_cf(kv, data(i), encode_entry(&entry)).unwrap();
                    db.delete_cf(kv, [area(), data(i)].concat()).unwrap();
                }
            }
            db.put_cf(cf(&db, CF_SM), KEY_REPLACING, encode(&marker).unwrap())
                .unwrap();
            let log_id = marker.log_id;
            assert_eq!(resume(&db).unwrap(), Some(log_id), "cut {cut}");
            assert_eq!(state(&db), expected, "cut {cut}");
            let applied: Option<LogId> =
                postcard::from_bytes(&db.get_cf(cf(&db, CF_SM), KEY_APPLIED).unwrap().unwrap())
                    .unwrap();
            assert_eq!(applied, Some(log_id));
            assert!(db.get_cf(cf(&db, CF_SM), KEY_REPLACING).unwrap().is_none());
            assert_eq!(resume(&db).unwrap(), None, "nothing left to finish");
        }
    }
}

#[cfg(test)]
mod gate_tests {
    use super::*;

    /// A read that overlaps a wholesale change, at its start or its end, is refused; one
    /// before or after it is served.
    #[test]
    fn reads_that_overlap_a_replace_are_refused() {
        let gate = StateGate::default();
        assert_eq!(gate.read(|| Ok(1)).unwrap(), 1);
        gate.changing(|| {
            assert!(matches!(
                gate.read(|| Ok(2)),
                Err(crate::EngineError::Replacing)
            ));
        });
        // A change that starts and ends while a read runs.
        let overlapped = gate.read(|| {
            gate.changing(|| ());
            Ok(3)
        });
        assert!(matches!(overlapped, Err(crate::EngineError::Replacing)));
        assert_eq!(gate.read(|| Ok(4)).unwrap(), 4);
        assert_eq!(gate.generation(), 2);
    }
}
