//! Transactions: etcd-style "if these comparisons hold, apply these operations", atomically.
//!
//! This module is pure: [`plan`] turns a transaction and a view of current state into the
//! writes to make, with no clock, no randomness and no I/O, so every replica applying the same
//! log computes the same state.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// A stored value with the revisions the state machine tracks for it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KvEntry {
    /// Global revision of the transaction that last wrote this key.
    pub mod_revision: u64,
    /// Global revision of the transaction that created this key (since its last deletion).
    pub create_revision: u64,
    /// The value: opaque bytes (ciphertext in Coffer).
    pub value: Vec<u8>,
}

/// What a comparison checks about one key.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Check {
    /// The key does not exist.
    Absent,
    /// The key exists and its `mod_revision` equals this.
    Revision(u64),
    /// The key exists and the SHA-256 of its value equals this.
    ValueHash([u8; 32]),
    /// The keys from the compare's key to `to` (both inclusive) are not none, fit one
    /// archive segment ([`crate::archive::MAX_SEGMENT_BYTES`]), and their records hash to
    /// `digest` ([`crate::archive::digest`] over key and value, in key order): the range
    /// holds exactly what the proposer read. Guards [`Op::Archive`].
    RangeDigest {
        /// Last key of the range (inclusive).
        #[serde(with = "serde_bytes")]
        to: Vec<u8>,
        /// The expected digest.
        digest: [u8; 32],
    },
}

/// One guard of a transaction.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Compare {
    /// The key to check.
    #[serde(with = "serde_bytes")]
    pub key: Vec<u8>,
    /// What must hold.
    pub check: Check,
}

/// One write of a transaction.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Op {
    /// Set a key to a value.
    Put {
        /// The key.
        #[serde(with = "serde_bytes")]
        key: Vec<u8>,
        /// The value (opaque).
        #[serde(with = "serde_bytes")]
        value: Vec<u8>,
    },
    /// Remove a key (no-op if absent).
    Delete {
        /// The key.
        #[serde(with = "serde_bytes")]
        key: Vec<u8>,
    },
    /// Remove every key starting with `prefix`.
    DeletePrefix {
        /// The prefix; must not be empty (that would wipe the store).
        #[serde(with = "serde_bytes")]
        prefix: Vec<u8>,
    },
    /// Replace the whole store with the records staged under `staged` (a prefix under
    /// [`STAGING_PREFIX`], stripped as they move), keeping every key under a prefix in `keep`
    /// as it is: a restore into a running cluster. Only as a transaction's first op; the
    /// state machine applies it in bounded batches (crash-safe, see `crate::replace`), and
    /// the ops after it run on the replaced state. Restored records get the transaction's
    /// revision as their create and mod revision.
    Replace {
        /// Where the new state was staged.
        #[serde(with = "serde_bytes")]
        staged: Vec<u8>,
        /// Prefixes of keys that stay as they are (and are not taken from the staging).
        keep: Vec<Vec<u8>>,
    },
    /// Move every key from `from` to `to` (both inclusive) out of the store into an archive
    /// segment file named by the range's digest (see [`crate::archive`]). Only as a
    /// transaction's first op, and only with a [`Check::RangeDigest`] guard on the same
    /// range: the proposer knows exactly what moves, and it fits a segment.
    Archive {
        /// First key (inclusive).
        #[serde(with = "serde_bytes")]
        from: Vec<u8>,
        /// Last key (inclusive).
        #[serde(with = "serde_bytes")]
        to: Vec<u8>,
    },
}

/// Keys under this prefix are staging areas for [`Op::Replace`] (no application key starts
/// with `0xff`, so staged records never mix with live ones or show in their scans).
pub const STAGING_PREFIX: &[u8] = b"\xffstaged/";

impl std::fmt::Debug for Op {
    // Values are ciphertext, but a Debug that prints them invites copying that habit.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Op::Put { key, value } => write!(
                f,
                "Put({:?}, {} bytes)",
                String::from_utf8_lossy(key),
                value.len()
            ),
            Op::Delete { key } => write!(f, "Delete({:?})", String::from_utf8_lossy(key)),
            Op::DeletePrefix { prefix } => {
                write!(f, "DeletePrefix({:?})", String::from_utf8_lossy(prefix))
            }
            Op::Replace { staged, keep } => write!(
                f,
                "Replace(from {:?}, keeping {} prefixes)",
                String::from_utf8_lossy(staged),
                keep.len()
            ),
            Op::Archive { from, to } => write!(
                f,
                "Archive({:?}..={:?})",
                String::from_utf8_lossy(from),
                String::from_utf8_lossy(to)
            ),
        }
    }
}

/// A transaction: all comparisons must hold for the operations to be applied.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Txn {
    /// Guards, all of which must hold.
    pub compares: Vec<Compare>,
    /// Writes, applied in order, atomically, only if every guard holds.
    pub ops: Vec<Op>,
}

impl Txn {
    /// A transaction with no guards.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a guard.
    pub fn when(mut self, key: impl Into<Vec<u8>>, check: Check) -> Self {
        self.compares.push(Compare {
            key: key.into(),
            check,
        });
        self
    }

    /// Adds a put.
    pub fn put(mut self, key: impl Into<Vec<u8>>, value: impl Into<Vec<u8>>) -> Self {
        self.ops.push(Op::Put {
            key: key.into(),
            value: value.into(),
        });
        self
    }

    /// Adds a delete.
    pub fn delete(mut self, key: impl Into<Vec<u8>>) -> Self {
        self.ops.push(Op::Delete { key: key.into() });
        self
    }

    /// A transaction that moves the keys from `from` to `to` (both inclusive) into an
    /// archive segment, guarded on the range still hashing to `digest` ([`range_digest`] of
    /// what the caller read): the only shape an archive is accepted in. Further guards and
    /// ops may be added after it.
    pub fn archive(from: impl Into<Vec<u8>>, to: impl Into<Vec<u8>>, digest: [u8; 32]) -> Self {
        let (from, to) = (from.into(), to.into());
        Self {
            compares: vec![Compare {
                key: from.clone(),
                check: Check::RangeDigest {
                    to: to.clone(),
                    digest,
                },
            }],
            ops: vec![Op::Archive { from, to }],
        }
    }

    /// Adds a prefix delete.
    pub fn delete_prefix(mut self, prefix: impl Into<Vec<u8>>) -> Self {
        self.ops.push(Op::DeletePrefix {
            prefix: prefix.into(),
        });
        self
    }

    /// Guards from `observed`: the key must still be exactly as it was read.
    pub fn unchanged(self, key: impl Into<Vec<u8>>, observed: Option<&KvEntry>) -> Self {
        match observed {
            None => self.when(key, Check::Absent),
            Some(entry) => self.when(key, Check::Revision(entry.mod_revision)),
        }
    }
}

/// The outcome of applying a transaction.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TxnResult {
    /// Whether all guards held and the operations were applied.
    pub succeeded: bool,
    /// The index of the first guard that failed, if any.
    pub failed_compare: Option<usize>,
    /// The store's global revision after this transaction (unchanged if it failed or wrote
    /// nothing).
    pub revision: u64,
}

/// SHA-256 of a value, as [`Check::ValueHash`] expects.
pub fn value_hash(value: &[u8]) -> [u8; 32] {
    Sha256::digest(value).into()
}

/// Read access the planner needs.
pub trait StateView {
    /// The current entry for `key`.
    fn get(&self, key: &[u8]) -> Result<Option<KvEntry>, String>;
    /// All keys starting with `prefix`, in order.
    fn keys_with_prefix(&self, prefix: &[u8]) -> Result<Vec<Vec<u8>>, String>;
    /// The entries from `from` to `to` (both inclusive), in key order.
    fn range(&self, from: &[u8], to: &[u8]) -> Result<Vec<(Vec<u8>, KvEntry)>, String>;
}

/// A write the state machine must make.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Write {
    /// Store this entry under this key.
    Put(Vec<u8>, KvEntry),
    /// Remove this key.
    Delete(Vec<u8>),
    /// Write these `(key, value)` records to the archive segment with this digest, durably,
    /// before the other writes (which delete the keys).
    Archive([u8; 32], Vec<(Vec<u8>, Vec<u8>)>),
}

/// Evaluates `txn` against `state` at global revision `revision`, returning the result and the
/// writes to apply (empty if a guard failed). Deterministic.
pub fn plan(
    txn: &Txn,
    state: &dyn StateView,
    revision: u64,
) -> Result<(TxnResult, Vec<Write>), String> {
    for (i, cmp) in txn.compares.iter().enumerate() {
        let held = match &cmp.check {
            Check::RangeDigest { to, digest } => {
                let range = state.range(&cmp.key, to)?;
                let bytes: usize = range.iter().map(|(k, e)| 8 + k.len() + e.value.len()).sum();
                !range.is_empty()
                    && bytes as u64 <= crate::archive::MAX_SEGMENT_BYTES
                    && range_digest(&range) == *digest
            }
            _ => holds(cmp, state.get(&cmp.key)?.as_ref()),
        };
        if !held {
            let failed = TxnResult {
                succeeded: false,
                failed_compare: Some(i),
                revision,
            };
            return Ok((failed, Vec::new()));
        }
    }
    let writes = if txn.ops.is_empty() {
        Vec::new()
    } else {
        writes_for(&txn.ops, state, revision + 1)?
    };
    let revision = if writes.is_empty() {
        revision
    } else {
        revision + 1
    };
    let result = TxnResult {
        succeeded: true,
        failed_compare: None,
        revision,
    };
    Ok((result, writes))
}

fn holds(cmp: &Compare, current: Option<&KvEntry>) -> bool {
    match (&cmp.check, current) {
        (Check::Absent, None) => true,
        (Check::Revision(rev), Some(e)) => e.mod_revision == *rev,
        (Check::ValueHash(hash), Some(e)) => value_hash(&e.value) == *hash,
        _ => false,
    }
}

/// The digest [`Check::RangeDigest`] compares: of the stored values, not their revisions.
pub fn range_digest(range: &[(Vec<u8>, KvEntry)]) -> [u8; 32] {
    crate::archive::digest(
        range
            .iter()
            .map(|(k, e)| (k.as_slice(), e.value.as_slice())),
    )
}

/// Later ops in the same transaction see earlier ones (a put then a delete of the same key
/// deletes it), so the plan is folded over an overlay of pending writes.
fn writes_for(ops: &[Op], state: &dyn StateView, new_rev: u64) -> Result<Vec<Write>, String> {
    let mut overlay: std::collections::BTreeMap<Vec<u8>, Option<KvEntry>> = Default::default();
    let mut archives = Vec::new();
    for op in ops {
        match op {
            Op::Put { key, value } => {
                let existing = match overlay.get(key) {
                    Some(pending) => pending.clone(),
                    None => state.get(key)?,
                };
                let create_revision = existing.map_or(new_rev, |e| e.create_revision);
                let entry = KvEntry {
                    mod_revision: new_rev,
                    create_revision,
                    value: value.clone(),
                };
                overlay.insert(key.clone(), Some(entry));
            }
            Op::Delete { key } => {
                overlay.insert(key.clone(), None);
            }
            Op::DeletePrefix { prefix } => {
                if prefix.is_empty() {
                    return Err("delete-prefix with an empty prefix is refused".into());
                }
                for key in state.keys_with_prefix(prefix)? {
                    overlay.insert(key, None);
                }
                for (key, pending) in overlay.iter_mut() {
                    if key.starts_with(prefix) {
                        *pending = None;
                    }
                }
            }
            Op::Replace { .. } => {
                return Err("a replace is applied by the state machine, not planned".into())
            }
            Op::Archive { from, to } => {
                // An archive is a transaction's first op (validated before the log); a plan
                // made without that check still moves each key once.
                let range: Vec<(Vec<u8>, KvEntry)> = state
                    .range(from, to)?
                    .into_iter()
                    .filter(|(k, _)| !overlay.contains_key(k))
                    .collect();
                if range.is_empty() {
                    continue;
                }
                let digest = range_digest(&range);
                let mut moved = Vec::with_capacity(range.len());
                for (key, entry) in range {
                    overlay.insert(key.clone(), None);
                    moved.push((key, entry.value));
                }
                archives.push(Write::Archive(digest, moved));
            }
        }
    }
    archives.extend(overlay.into_iter().map(|(k, v)| match v {
        Some(entry) => Write::Put(k, entry),
        None => Write::Delete(k),
    }));
    Ok(archives)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    struct Mem(BTreeMap<Vec<u8>, KvEntry>);

    impl StateView for Mem {
        fn get(&self, key: &[u8]) -> Result<Option<KvEntry>, String> {
            Ok(self.0.get(key).cloned())
        }
        fn keys_with_prefix(&self, prefix: &[u8]) -> Result<Vec<Vec<u8>>, String> {
            Ok(self
                .0
                .keys()
                .filter(|k| k.starts_with(prefix))
                .cloned()
                .collect())
        }
        fn range(&self, from: &[u8], to: &[u8]) -> Result<Vec<(Vec<u8>, KvEntry)>, String> {
            Ok(self
                .0
                .range(from.to_vec()..=to.to_vec())
                .map(|(k, e)| (k.clone(), e.clone()))
                .collect())
        }
    }

    fn entry(rev: u64, v: &str) -> KvEntry {
        KvEntry {
            mod_revision: rev,
            create_revision: rev,
            value: v.into(),
        }
    }

    #[test]
    fn guards_table() {
        let state = Mem([(b"a".to_vec(), entry(3, "x"))].into());
        let cases = [
            (Check::Absent, b"a".as_slice(), false),
            (Check::Absent, b"b", true),
            (Check::Revision(3), b"a", true),
            (Check::Revision(2), b"a", false),
            (Check::Revision(3), b"b", false),
            (Check::ValueHash(value_hash(b"x")), b"a", true),
            (Check::ValueHash(value_hash(b"y")), b"a", false),
        ];
        for (check, key, expect) in cases {
            let txn = Txn::new().when(key, check.clone()).put("z", "1");
            let (res, writes) = plan(&txn, &state, 5).unwrap();
            assert_eq!(res.succeeded, expect, "{check:?} on {key:?}");
            assert_eq!(writes.is_empty(), !expect);
            assert_eq!(res.revision, if expect { 6 } else { 5 });
        }
    }

    #[test]
    fn put_keeps_create_revision_and_later_ops_see_earlier_ones() {
        let state = Mem([
            (b"a".to_vec(), entry(3, "x")),
            (b"p/1".to_vec(), entry(4, "y")),
        ]
        .into());
        let txn = Txn::new()
            .put("a", "new")
            .put("p/2", "z")
            .delete_prefix("p/")
            .put("p/3", "w");
        let (res, writes) = plan(&txn, &state, 7).unwrap();
        assert!(res.succeeded);
        assert_eq!(
            writes,
            vec![
                Write::Put(
                    b"a".to_vec(),
                    KvEntry {
                        mod_revision: 8,
                        create_revision: 3,
                        value: b"new".to_vec()
                    }
                ),
                Write::Delete(b"p/1".to_vec()),
                Write::Delete(b"p/2".to_vec()),
                Write::Put(b"p/3".to_vec(), entry(8, "w")),
            ]
        );
    }

    #[test]
    fn an_archive_moves_its_range_only_when_the_digest_holds() {
        let state = Mem([
            (b"a/1".to_vec(), entry(2, "one")),
            (b"a/2".to_vec(), entry(3, "two")),
            (b"a/3".to_vec(), entry(4, "three")),
            (b"b".to_vec(), entry(5, "other")),
        ]
        .into());
        let moved = state.range(b"a/1", b"a/2").unwrap();
        let digest = range_digest(&moved);
        let archive = |digest| Txn::archive("a/1", "a/2", digest).put("anchor", "2");
        let (res, writes) = plan(&archive(digest), &state, 9).unwrap();
        assert!(res.succeeded);
        assert_eq!(
            writes,
            vec![
                Write::Archive(
                    digest,
                    vec![
                        (b"a/1".to_vec(), b"one".to_vec()),
                        (b"a/2".to_vec(), b"two".to_vec())
                    ]
                ),
                Write::Delete(b"a/1".to_vec()),
                Write::Delete(b"a/2".to_vec()),
                Write::Put(b"anchor".to_vec(), entry(10, "2")),
            ]
        );
        // Another digest (the range changed since it was read): nothing moves.
        let (res, writes) = plan(&archive([7; 32]), &state, 9).unwrap();
        assert_eq!((res.succeeded, res.failed_compare), (false, Some(0)));
        assert!(writes.is_empty());
        // An empty range never holds, whatever digest is claimed.
        let empty = Txn::new().when(
            "c/1",
            Check::RangeDigest {
                to: b"c/9".to_vec(),
                digest: range_digest(&[]),
            },
        );
        assert!(!plan(&empty, &state, 9).unwrap().0.succeeded);
    }

    #[test]
    fn empty_prefix_delete_is_refused() {
        let state = Mem(BTreeMap::new());
        assert!(plan(&Txn::new().delete_prefix(""), &state, 0).is_err());
    }

    #[test]
    fn read_only_txn_does_not_bump_revision() {
        let state = Mem(BTreeMap::new());
        let (res, writes) = plan(&Txn::new().when("a", Check::Absent), &state, 9).unwrap();
        assert!(res.succeeded && writes.is_empty());
        assert_eq!(res.revision, 9);
    }
}
