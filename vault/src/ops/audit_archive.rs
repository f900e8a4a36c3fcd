//! Audit retention: merged records older than a configured age leave the replicated state
//! for archive segments, so that the state, its snapshots, backups and packs stop growing
//! with every read while each chain stays provable.
//!
//! The leader's archiver (`[audit] archive_after`) takes, per epoch, the oldest merged
//! records whose time is past the age, up to [`SEGMENT_RECORDS`] or [`SEGMENT_BYTES`] at a
//! time, and proposes one transaction: move exactly that range (`Op::Archive`, guarded by
//! the range's digest) and advance the epoch's archive anchor. Every member applying the
//! entry writes the same segment file under its `archive/` directory (the records as the
//! state held them: sealed envelopes, readable only unsealed). A member that caught up from
//! a snapshot taken after the move does not hold that segment; `audit verify` says which
//! segments this node holds and `audit export` reads them.
//!
//! The anchor (`audit/archive/<node>/<epoch id>`, an envelope) records how far the epoch is
//! archived, the hash of its last archived record (the merged chain continues from it) and
//! each segment's digest and sequence range. `audit verify` checks what remains in the
//! state from the anchor's hash, and every segment this node holds against its digest, its
//! records' MACs and hashes, and the chain across segments into the state.

use coffer_raft::{Check, KvEntry, Txn};
use serde::{Deserialize, Serialize};

use super::audit_log::SCAN_CHUNK;
use super::Vault;
use crate::audit::record::GENESIS;
use crate::audit::AuditRecord;
use crate::error::{Result, VaultError};
use crate::keys::{
    audit_archive as archive_key, audit_archive_segment as segment_key,
    audit_archive_segments as segment_prefix, audit_log as log_key, audit_log_prefix as log_prefix,
};

/// Most records in one segment: 8,192 records of about 1 KiB sealed each, a file of about
/// 8 MiB and one Raft entry of a few hundred bytes (the range, not the records).
pub const SEGMENT_RECORDS: usize = 8192;
/// Most bytes of sealed records in one segment.
pub const SEGMENT_BYTES: usize = 8 << 20;

/// A segment smaller than an eighth of the segment size is made only once its first record
/// is twice the archive age old: a quiet node's records still leave the state, and a busy
/// one's leave in full segments rather than one small file per round.
const PARTIAL_SEGMENT_DIVISOR: usize = 8;

/// How far one epoch's merged chain is archived.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ArchiveAnchor {
    /// The last archived sequence number (0: none).
    pub through: u64,
    /// The hash of record `through` ([`GENESIS`] before any): the first record left in the
    /// state links to it.
    pub hash: String,
    /// How many segments hold records 1..=`through` (each under its own key, see
    /// `keys::audit_archive_segment`).
    pub segments: u64,
}

/// Which merged records one archiving round moves.
#[derive(Clone, Copy, Debug)]
pub struct ArchiveRound {
    /// Records whose time is before this are due.
    pub due_before: time::OffsetDateTime,
    /// A segment of fewer than an eighth of `segment_records` due records is made only if
    /// its first record's time is before this.
    pub partial_before: time::OffsetDateTime,
    /// Most records per segment (at most [`SEGMENT_RECORDS`]).
    pub segment_records: usize,
}

impl ArchiveRound {
    /// The round a node with `[audit] archive_after = after` runs at `now`.
    pub fn at(now: time::OffsetDateTime, after: std::time::Duration) -> Self {
        Self {
            due_before: now - after,
            partial_before: now - after * 2,
            segment_records: SEGMENT_RECORDS,
        }
    }
}

/// One archive segment of an epoch.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SegmentRef {
    /// SHA-256 of the segment's framed records (its file name), hex.
    pub digest: String,
    /// First sequence number in it.
    pub first: u64,
    /// Last sequence number in it.
    pub last: u64,
    /// When it was archived (RFC 3339).
    pub archived_at: String,
}

impl SegmentRef {
    pub(super) fn digest_bytes(&self) -> Option<[u8; 32]> {
        hex::decode(&self.digest).ok()?.try_into().ok()
    }
}

/// A segment's records, as this node can read them.
pub(super) enum Held {
    /// Decrypted, in sequence order.
    Records(Vec<(Vec<u8>, AuditRecord)>),
    /// This node never held the segment (it caught up past it from a snapshot, or was
    /// restored from a backup).
    Missing,
    /// This node wrote the segment and its file is gone.
    Deleted,
    /// The file is not what the anchor recorded, or a record fails to open.
    Altered(String),
}

impl Vault {
    /// The archive anchor of `node`'s epoch `epoch_id`, and the entry it was read from.
    pub(super) fn archive_anchor(
        &self,
        node: u64,
        epoch_id: &str,
    ) -> Result<(ArchiveAnchor, Option<KvEntry>)> {
        Ok(
            match self.read_record::<ArchiveAnchor>(&archive_key(node, epoch_id))? {
                Some(r) => (r.value, Some(r.entry)),
                None => (
                    ArchiveAnchor {
                        hash: GENESIS.to_string(),
                        ..Default::default()
                    },
                    None,
                ),
            },
        )
    }

    /// The archive segments of `node`'s epoch `epoch_id`, oldest first.
    pub(super) fn archive_segments(&self, node: u64, epoch_id: &str) -> Result<Vec<SegmentRef>> {
        let prefix = segment_prefix(node, epoch_id);
        let mut out = Vec::new();
        let mut after: Option<Vec<u8>> = None;
        loop {
            let chunk = self.engine.scan(&prefix, after.as_deref(), SCAN_CHUNK)?;
            let Some((last, _)) = chunk.last() else {
                return Ok(out);
            };
            after = Some(last.clone());
            for (key, entry) in chunk {
                let plaintext = self.open_bytes(&key, &entry.value)?;
                out.push(serde_json::from_slice(&plaintext).map_err(VaultError::internal)?);
            }
        }
    }

    /// Reads one segment this node may hold, checked whole against its digest, and opens its
    /// records after `after` (a query page resuming inside it decrypts only what it needs).
    pub(super) fn read_segment(&self, segment: &SegmentRef, after: Option<&[u8]>) -> Held {
        let Some(digest) = segment.digest_bytes() else {
            return Held::Altered(format!("segment digest {:?} is malformed", segment.digest));
        };
        let records = match self.engine.archive().read(&digest) {
            Ok(Some(records)) => records,
            Ok(None) => {
                return match self.engine.archive_applied(&digest) {
                    Ok(false) => Held::Missing,
                    Ok(true) => Held::Deleted,
                    Err(e) => Held::Altered(format!("reading which segments this node made: {e}")),
                }
            }
            Err(e) => return Held::Altered(e.to_string()),
        };
        let mut out = Vec::with_capacity(records.len());
        for (key, value) in records {
            if after.is_some_and(|a| key.as_slice() <= a) {
                continue;
            }
            match self.decode_log(&key, &value) {
                Ok(record) => out.push((key, record)),
                Err(_) => {
                    return Held::Altered(format!(
                        "a record of segment {} fails to open under the keyring",
                        segment.digest
                    ))
                }
            }
        }
        Held::Records(out)
    }

    /// Moves the merged records `round` says are due into archive segments, for every
    /// epoch; returns how many moved. The leader's archiver proposes; any member may (the
    /// guards make a stale proposal fail).
    pub async fn archive_audit(&self, round: ArchiveRound) -> Result<u64> {
        self.keyring()?;
        let round = ArchiveRound {
            segment_records: round.segment_records.clamp(1, SEGMENT_RECORDS),
            ..round
        };
        let mut moved = 0;
        for c in self.epoch_cursors(None)? {
            loop {
                let (n, full) = self.archive_epoch(&c, round).await?;
                moved += n;
                if !full {
                    break;
                }
            }
        }
        Ok(moved)
    }

    /// Archives one segment of one epoch: `(records moved, whether more may be due)`.
    async fn archive_epoch(
        &self,
        c: &super::audit::EpochCursor,
        round: ArchiveRound,
    ) -> Result<(u64, bool)> {
        let limit = round.segment_records;
        let (node, epoch_id, epoch, cursor) = (c.node, c.epoch_id.as_str(), c.epoch, c.cursor);
        let akey = archive_key(node, epoch_id);
        let (mut anchor, observed) = self.archive_anchor(node, epoch_id)?;
        let prefix = log_prefix(Some(node), Some(epoch));
        let mut after = (anchor.through > 0).then(|| log_key(node, epoch, anchor.through));
        let mut moving: Vec<(Vec<u8>, KvEntry)> = Vec::new();
        let (mut bytes, mut prev, mut full) = (0usize, anchor.hash.clone(), false);
        let mut first_time = None;
        'scan: loop {
            let chunk = self.engine.scan(&prefix, after.as_deref(), SCAN_CHUNK)?;
            let Some((last_key, _)) = chunk.last() else {
                break;
            };
            after = Some(last_key.clone());
            for (key, entry) in chunk {
                let Ok(record) = self.decode_log(&key, &entry.value) else {
                    // A record that does not open is `audit verify`'s to report; the other
                    // epochs are archived all the same.
                    tracing::warn!(
                        node,
                        epoch,
                        "audit archive stops at a record that does not open"
                    );
                    break 'scan;
                };
                let expected = anchor.through + moving.len() as u64 + 1;
                if record.seq > cursor {
                    break 'scan;
                }
                if record.seq != expected || record.prev_hash != prev || !record.intact() {
                    // Never archive past a break in the chain: `audit verify` reports it
                    // where it is.
                    tracing::warn!(
                        node,
                        epoch,
                        seq = record.seq,
                        "audit archive stops at a record that does not continue the chain"
                    );
                    break 'scan;
                }
                let time = crate::clock::parse(&record.event.time);
                if time.is_none_or(|t| t >= round.due_before) {
                    break 'scan;
                }
                first_time = first_time.or(time);
                if moving.len() == limit || bytes + entry.value.len() > SEGMENT_BYTES {
                    full = true;
                    break 'scan;
                }
                bytes += entry.value.len();
                prev = record.hash;
                moving.push((key, entry));
            }
        }
        let (Some((from, _)), Some((to, _))) = (moving.first(), moving.last()) else {
            return Ok((0, false));
        };
        let partial = moving.len() < limit.div_ceil(PARTIAL_SEGMENT_DIVISOR);
        if partial && !full && first_time.is_none_or(|t| t >= round.partial_before) {
            return Ok((0, false));
        }
        let (from, to) = (from.clone(), to.clone());
        let digest = coffer_raft::range_digest(&moving);
        let count = moving.len() as u64;
        let segment = SegmentRef {
            digest: hex::encode(digest),
            first: anchor.through + 1,
            last: anchor.through + count,
            archived_at: crate::clock::rfc3339(crate::clock::now()),
        };
        let skey = segment_key(node, epoch_id, segment.first);
        anchor.through += count;
        anchor.hash = prev;
        anchor.segments += 1;
        let txn = Txn::archive(from, to, digest)
            .unchanged(akey.clone(), observed.as_ref())
            .when(skey.clone(), Check::Absent)
            .put(akey.clone(), self.seal_record(&akey, &anchor)?)
            .put(skey.clone(), self.seal_record(&skey, &segment)?);
        if !self.engine.write(txn).await?.succeeded {
            // Another archiver (a former leader) or a restore got there first: next round.
            return Ok((0, false));
        }
        tracing::info!(
            node,
            epoch,
            records = count,
            through = anchor.through,
            "audit records archived"
        );
        Ok((count, full))
    }

    /// Archives on the leader every `every`, records older than `after`.
    pub async fn run_archiver(self: std::sync::Arc<Self>, after: std::time::Duration) {
        let every = (after / 8).clamp(
            std::time::Duration::from_secs(1),
            std::time::Duration::from_secs(3600),
        );
        loop {
            tokio::time::sleep(every).await;
            if !self.engine.is_leader() || self.is_sealed() {
                continue;
            }
            match self
                .archive_audit(ArchiveRound::at(crate::clock::now(), after))
                .await
            {
                Ok(_) => {}
                Err(VaultError::Sealed) => {}
                Err(e) => tracing::warn!("audit archiving paused: {e}"),
            }
        }
    }
}
