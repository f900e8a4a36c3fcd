//! Reading the merged audit log: queries filtered by node, actor, operation, path, mode,
//! outcome and time, paged by position; and verification of every node's chain (each epoch
//! on its own), of the anchors the shipments recorded, and of this node's spool.

use serde::Serialize;

use super::audit::{decode_cursor, EpochCursor};
use super::audit_archive::{Held, SegmentRef};
use super::Vault;
use crate::audit::spool::line_mac;
use crate::audit::{verify_chain, AuditRecord, ChainProblem};
use crate::error::{Result, VaultError};
use crate::keys::{
    audit_cursor as cursor_key, audit_log as log_key, audit_log_prefix as log_prefix,
};
use crate::rules::policy::Capability;

/// Most records one query returns.
pub const MAX_QUERY: usize = 10_000;
/// Records read from the merged log per scan while verifying or querying: bounded memory
/// whatever the log's length.
pub(super) const SCAN_CHUNK: usize = 1024;
/// Records one query page looks at, at most (matching or not, archived or in the state):
/// about a second of decryption; a page that stops there has `next` to go on from.
const PAGE_SCAN_BUDGET: u64 = 100_000;

/// Filters of an audit query; all optional, combined with AND.
#[derive(Clone, Debug, Default)]
pub struct AuditFilter {
    /// Origin node.
    pub node: Option<u64>,
    /// Exact actor (the person, e.g. `alice`), or a token display name (`userpass-alice`).
    pub actor: Option<String>,
    /// Exact operation.
    pub operation: Option<String>,
    /// Path prefix.
    pub path_prefix: Option<String>,
    /// Node mode at the time (`read-only`, `leader`, …).
    pub mode: Option<String>,
    /// Outcome (`ok`, `denied`, …).
    pub outcome: Option<String>,
    /// Earliest time, RFC 3339, inclusive.
    pub since: Option<time::OffsetDateTime>,
    /// Latest time, RFC 3339, exclusive.
    pub until: Option<time::OffsetDateTime>,
    /// Resume after this (node, epoch number, seq).
    pub after: Option<(u64, u32, u64)>,
    /// Most records to return (default 100, at most 10 000).
    pub limit: Option<usize>,
}

impl AuditFilter {
    fn accepts(&self, r: &AuditRecord) -> bool {
        let e = &r.event;
        let time = crate::clock::parse(&e.time);
        // One person, one name: a query by user finds her login and her token's requests.
        // The token's display name (`userpass-alice`) is accepted too.
        self.actor
            .as_ref()
            .is_none_or(|a| *a == e.actor || *a == e.display_name)
            && self.operation.as_ref().is_none_or(|o| *o == e.operation)
            && self
                .path_prefix
                .as_ref()
                .is_none_or(|p| e.path.starts_with(p.as_str()))
            && self.mode.as_ref().is_none_or(|m| *m == e.mode)
            && self.outcome.as_ref().is_none_or(|o| *o == e.outcome)
            && self.since.is_none_or(|s| time.is_some_and(|t| t >= s))
            && self.until.is_none_or(|u| time.is_some_and(|t| t < u))
    }
}

/// A merged record with its epoch number (its position in the log).
#[derive(Clone, Debug, Serialize)]
pub struct MergedRecord {
    /// The node's epoch number (1 for the node's first spool).
    pub epoch_number: u32,
    /// The record.
    #[serde(flatten)]
    pub record: AuditRecord,
}

/// A record's place in the merged log: (node, epoch number, seq).
pub type Position = (u64, u32, u64);

/// A page of audit records.
#[derive(Clone, Debug, Default, Serialize)]
pub struct AuditPage {
    /// The records, in (node, epoch, seq) order.
    pub records: Vec<MergedRecord>,
    /// When more may follow: the (node, epoch, seq) to resume after.
    pub next: Option<(u64, u32, u64)>,
    /// Archived ranges in the page's span that this node cannot read (it does not hold the
    /// segment, or the segment fails its digest: `audit verify` says which).
    pub unavailable: Vec<ArchivedRange>,
}

/// An archive segment with its place in the log.
#[derive(Clone, Debug)]
struct SegmentAt {
    first_key: Vec<u8>,
    node: u64,
    epoch: u32,
    segment: SegmentRef,
}

/// One node's chain (one epoch of it) in the merged log, or this node's spool.
#[derive(Clone, Debug, Serialize)]
pub struct NodeChainReport {
    /// Origin node.
    pub node: u64,
    /// The epoch's number among the node's epochs (1 for its first spool).
    pub epoch: u32,
    /// The epoch's id.
    pub epoch_id: String,
    /// Records present.
    pub records: u64,
    /// The cursor (highest merged sequence number); for the spool, its head.
    pub cursor: u64,
    /// The last spool head the cluster anchored for this epoch (0: none).
    pub anchored: u64,
    /// Records without a MAC after the first one with (written while the node was sealed).
    pub unauthenticated: u64,
    /// Problems found, with positions.
    pub problems: Vec<ChainProblem>,
    /// Records a restore declared lost (anchored, never merged, their spool not restored).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub declared_lost: Option<LostAudit>,
    /// The last sequence number moved to archive segments (0: none); the records counted
    /// above include the archived ones this node holds.
    pub archived_through: u64,
    /// Archive segments of this epoch, oldest first (their files: `archive/<digest>.seg`).
    pub archive_segments: Vec<SegmentRef>,
    /// Archived ranges this node does not hold (checked on a member that does).
    pub archive_missing: Vec<ArchivedRange>,
}

/// Audit records a restore declared lost: the cluster had anchored them, they were not
/// merged when the restored state was taken, and their node's spool was not restored with it
/// (it burned with the node). Said in the log, with the restore that found it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct LostAudit {
    /// First lost sequence number.
    pub from: u64,
    /// Last lost sequence number.
    pub to: u64,
    /// The restore that declared it (`backup from …`, `data-dir from …`, `recover from …`).
    pub restore: String,
    /// When (RFC 3339).
    pub at: String,
}

/// Result of verifying the merged log and this node's spool.
#[derive(Clone, Debug, Serialize)]
pub struct VerifyReport {
    /// Whether nothing is wrong anywhere.
    pub ok: bool,
    /// Each node's chain in the merged log.
    pub merged: Vec<NodeChainReport>,
    /// This node's spool.
    pub spool: NodeChainReport,
}

impl Vault {
    pub(super) fn decode_log(&self, key: &[u8], value: &[u8]) -> Result<AuditRecord> {
        let plaintext = self.open_bytes(key, value)?;
        serde_json::from_slice(&plaintext).map_err(VaultError::internal)
    }

    /// Merged records matching `filter`, in (node, epoch, seq) order, and the position to
    /// resume after when more may follow (see [`Vault::audit_page`]).
    pub fn audit_query(
        &self,
        auth: &super::Auth,
        filter: &AuditFilter,
    ) -> Result<(Vec<MergedRecord>, Option<Position>)> {
        let page = self.audit_page(auth, filter)?;
        Ok((page.records, page.next))
    }

    /// `GET sys/coffer/audit`: merged records matching `filter`, archived ones included
    /// where this node holds their segment, in (node, epoch, seq) order; the position to
    /// resume after when more may follow; and the archived ranges this node does not hold.
    pub fn audit_page(&self, auth: &super::Auth, filter: &AuditFilter) -> Result<AuditPage> {
        auth.require("sys/coffer/audit", Capability::Read)?;
        self.keyring()?;
        let limit = filter.limit.unwrap_or(100).clamp(1, MAX_QUERY);
        let prefix = log_prefix(filter.node, None);
        let start = filter.after.map(|(n, e, s)| log_key(n, e, s));
        let mut segments = self.archived_segments(filter.node, start.as_deref())?;
        let mut page = AuditPage::default();
        let mut after = start.clone();
        // Records (or archived records not held) looked at for this page: a narrow filter
        // over a long log answers in bounded time, with `next` to go on from.
        let mut examined = 0u64;
        // Takes one record; true once the page is full or the budget spent.
        let mut take =
            |page: &mut AuditPage, pos: Position, record: Option<AuditRecord>, n: u64| {
                examined += n;
                if let Some(record) = record.filter(|r| filter.accepts(r)) {
                    page.records.push(MergedRecord {
                        epoch_number: pos.1,
                        record,
                    });
                }
                if page.records.len() < limit && examined < PAGE_SCAN_BUDGET {
                    return false;
                }
                page.next = Some(pos);
                true
            };
        loop {
            let chunk = self.engine.scan(&prefix, after.as_deref(), SCAN_CHUNK)?;
            let exhausted = chunk.len() < SCAN_CHUNK;
            let next_after = chunk.last().map(|(k, _)| k.clone());
            // The state's records, then (once the scan is exhausted) a final `None` that lets
            // every remaining segment out.
            let items = chunk.into_iter().map(Some).chain(exhausted.then_some(None));
            for item in items {
                // Archived records come before the state's records of their epoch.
                while let Some(segment) = segments
                    .front()
                    .is_some_and(|s| item.as_ref().is_none_or(|(k, _)| s.first_key < *k))
                    .then(|| segments.pop_front())
                    .flatten()
                {
                    let (node, epoch) = (segment.node, segment.epoch);
                    match self.read_segment(&segment.segment, start.as_deref()) {
                        Held::Records(records) => {
                            for (_, record) in records {
                                if take(&mut page, (node, epoch, record.seq), Some(record), 1) {
                                    return Ok(page);
                                }
                            }
                        }
                        Held::Missing | Held::Deleted | Held::Altered(_) => {
                            let s = &segment.segment;
                            page.unavailable.push(ArchivedRange::of(node, epoch, s));
                            if take(&mut page, (node, epoch, s.last), None, s.last - s.first + 1) {
                                return Ok(page);
                            }
                        }
                    }
                }
                let Some((key, entry)) = item else {
                    return Ok(page);
                };
                let Some(pos) = crate::keys::audit_log_position(&key) else {
                    continue;
                };
                let record = self.decode_log(&key, &entry.value)?;
                if take(&mut page, pos, Some(record), 1) {
                    return Ok(page);
                }
            }
            match next_after {
                Some(k) => after = Some(k),
                None => return Ok(page),
            }
        }
    }

    /// The archive segments of `node` (or of all), in key order, ending after `after`.
    fn archived_segments(
        &self,
        node: Option<u64>,
        after: Option<&[u8]>,
    ) -> Result<std::collections::VecDeque<SegmentAt>> {
        let mut out = Vec::new();
        for c in self.epoch_cursors(node)? {
            let (n, epoch) = (c.node, c.epoch);
            for segment in self.archive_segments(n, &c.epoch_id)? {
                if after.is_some_and(|a| log_key(n, epoch, segment.last).as_slice() <= a) {
                    continue;
                }
                out.push(SegmentAt {
                    first_key: log_key(n, epoch, segment.first),
                    node: n,
                    epoch,
                    segment,
                });
            }
        }
        out.sort_by(|a, b| a.first_key.cmp(&b.first_key));
        Ok(out.into())
    }

    /// `GET sys/coffer/audit/verify`: every epoch's chain in the merged log (with its
    /// anchor), and this node's spool.
    pub fn audit_verify(&self, auth: &super::Auth) -> Result<VerifyReport> {
        auth.require("sys/coffer/audit", Capability::Read)?;
        self.verify_audit_chains()
    }

    /// [`Vault::audit_verify`] without the ACL check (the node's own use: a restore checks
    /// the chains it brought back).
    pub(super) fn verify_audit_chains(&self) -> Result<VerifyReport> {
        self.keyring()?;
        let mut merged = Vec::new();
        let cursors = self.epoch_cursors(None)?;
        let mac_key = Self::spool_mac_key(&*self.keyring()?);
        for (i, cursor) in cursors.iter().enumerate() {
            // A later epoch of the same node exists: this one's spool is gone for good.
            let superseded = cursors[i + 1..].iter().any(|c| c.node == cursor.node);
            merged.push(self.verify_epoch(cursor, superseded, &mac_key)?);
        }
        let spool = self.verify_spool()?;
        let ok = spool.problems.is_empty() && merged.iter().all(|m| m.problems.is_empty());
        Ok(VerifyReport { ok, merged, spool })
    }

    fn verify_spool(&self) -> Result<NodeChainReport> {
        let key = self.spool_key()?;
        let verdict = self
            .spool
            .verify(key.as_ref())
            .map_err(VaultError::internal)?;
        let node = self.spool.node();
        let epoch_id = self.spool.epoch().to_string();
        let anchored = self.anchor(node, &epoch_id)?.map_or(0, |a| a.seq);
        let mut problems = verdict.problems;
        let (head, _) = self.spool.head();
        if anchored > head.max(verdict.head) {
            problems.push(ChainProblem {
                node,
                epoch: 0,
                seq: anchored,
                kind: "truncated".into(),
                detail: format!(
                    "the spool ends at record {}, but the cluster anchored record {anchored}: records were cut",
                    head.max(verdict.head)
                ),
            });
        }
        let epoch = self
            .engine
            .get(&cursor_key(node, &epoch_id))?
            .map_or(0, |e| decode_cursor(&e.value).0);
        for p in &mut problems {
            p.epoch = epoch;
        }
        Ok(NodeChainReport {
            node,
            epoch,
            epoch_id,
            records: verdict.records,
            cursor: head,
            anchored,
            unauthenticated: verdict.unauthenticated,
            problems,
            declared_lost: None,
            archived_through: 0,
            archive_segments: Vec::new(),
            archive_missing: Vec::new(),
        })
    }

    fn verify_epoch(
        &self,
        c: &EpochCursor,
        superseded: bool,
        mac_key: &[u8; 32],
    ) -> Result<NodeChainReport> {
        let (node, cursor) = (c.node, c.cursor);
        let prefix = log_prefix(Some(node), Some(c.epoch));
        let anchor = self.anchor(node, &c.epoch_id)?;
        let mut check = EpochCheck {
            node,
            epoch: c.epoch,
            epoch_id: &c.epoch_id,
            mac_key,
            problems: Vec::new(),
            count: 0,
            unauthenticated: 0,
            last: Some((0, crate::audit::record::GENESIS.to_string())),
            watch: anchor.as_ref().map(|a| a.seq).filter(|s| *s <= cursor),
            watched: None,
        };
        // The archived part, segment by segment, as far as this node holds it.
        let (archive, _) = self.archive_anchor(node, &c.epoch_id)?;
        // Read after the anchor: a segment archived in between is left for the next check.
        let archive_segments: Vec<SegmentRef> = self
            .archive_segments(node, &c.epoch_id)?
            .into_iter()
            .filter(|s| s.first <= archive.through)
            .collect();
        // Likewise the cursor was read before the anchor: the archive may have moved past it.
        let cursor = cursor.max(archive.through);
        let mut missing = Vec::new();
        for segment in &archive_segments {
            match self.read_segment(segment, None) {
                Held::Records(records) => {
                    let (first, last) = (
                        records.first().map(|r| r.1.seq),
                        records.last().map(|r| r.1.seq),
                    );
                    if (first, last) != (Some(segment.first), Some(segment.last)) {
                        check.problem(segment.first, "tampered", format!(
                            "archive segment {} holds records {first:?}..={last:?}, its anchor says {}..={}",
                            segment.digest, segment.first, segment.last
                        ));
                    }
                    check.records(&prefix, records);
                }
                Held::Missing => {
                    missing.push(ArchivedRange::of(node, c.epoch, segment));
                    // The chain resumes at the next segment held, from its own first link.
                    check.last = None;
                }
                Held::Deleted => {
                    check.problem(segment.first, "deleted", format!(
                        "archive segment {} (records {}..={}) was written on this node and its file is gone",
                        segment.digest, segment.first, segment.last
                    ));
                    check.last = None;
                }
                Held::Altered(why) => {
                    check.problem(segment.first, "tampered", why);
                    check.last = None;
                }
            }
        }
        // The segments tile 1..=through, each recorded once.
        let mut next = 1;
        for segment in &archive_segments {
            if segment.first != next || segment.last < segment.first {
                check.problem(
                    segment.first,
                    "gap",
                    format!(
                        "archive segments jump from record {} to {}..={}",
                        next.saturating_sub(1),
                        segment.first,
                        segment.last
                    ),
                );
            }
            next = segment.last + 1;
        }
        if next - 1 != archive.through || archive_segments.len() as u64 != archive.segments {
            check.problem(next, "gap", format!(
                "the archive anchor says records 1..={} in {} segments, {} segments up to {} are recorded",
                archive.through, archive.segments, archive_segments.len(), next - 1
            ));
        }
        if archive.through > 0 {
            if check
                .last
                .as_ref()
                .is_some_and(|(seq, hash)| *seq == archive.through && *hash != archive.hash)
            {
                check.problem(
                    archive.through,
                    "fork",
                    format!(
                        "archived record {} is not the one the archive anchor recorded",
                        archive.through
                    ),
                );
            }
            // The state continues from the anchor, whatever this node holds of the archive.
            check.last = Some((archive.through, archive.hash.clone()));
        }
        // What remains in the state, in chunks.
        let mut after = (archive.through > 0).then(|| log_key(node, c.epoch, archive.through));
        loop {
            let chunk = match self.engine.scan(&prefix, after.as_deref(), SCAN_CHUNK) {
                Ok(chunk) => chunk,
                Err(e) => {
                    let seq = check.last.as_ref().map_or(1, |l| l.0 + 1);
                    check.problem(
                        seq,
                        "unreadable",
                        format!("storage refused to read on: {e}"),
                    );
                    break;
                }
            };
            let Some((last_key, _)) = chunk.last() else {
                break;
            };
            after = Some(last_key.clone());
            let mut records = Vec::with_capacity(chunk.len());
            for (key, entry) in chunk {
                let seq: u64 = String::from_utf8_lossy(&key[prefix.len()..])
                    .parse()
                    .unwrap_or(0);
                // The cursor was read first; records merged since then are checked next time.
                if seq > cursor {
                    continue;
                }
                match self.decode_log(&key, &entry.value) {
                    Ok(r) => records.push((key, r)),
                    Err(_) => {
                        check.count += 1;
                        check.problem(
                            seq,
                            "tampered",
                            format!(
                                "record {seq} failed authentication: its ciphertext was altered"
                            ),
                        );
                    }
                }
            }
            check.records(&prefix, records);
        }
        let EpochCheck {
            mut problems,
            count,
            unauthenticated,
            last,
            watched,
            ..
        } = check;
        let last_seq = last.as_ref().map_or(0, |l| l.0);
        if last_seq != cursor && problems.is_empty() {
            problems.push(ChainProblem {
                node,
                epoch: c.epoch,
                seq: cursor,
                kind: "gap".into(),
                detail: format!("cursor says {cursor} records were merged, the log ends earlier"),
            });
        }
        let problem = |seq, kind: &str, detail: String| ChainProblem {
            node,
            epoch: c.epoch,
            seq,
            kind: kind.into(),
            detail,
        };
        let declared_lost = self
            .read_record::<LostAudit>(&crate::keys::audit_lost(node, &c.epoch_id))?
            .map(|r| r.value);
        if let Some(a) = &anchor {
            let declared = declared_lost
                .as_ref()
                .is_some_and(|l| l.from <= cursor + 1 && l.to >= a.seq);
            if a.seq > cursor && superseded && !declared {
                problems.push(problem(
                    cursor + 1,
                    "truncated",
                    format!(
                        "records {}..={} were anchored but never merged, and the node has started a new spool since: they are lost",
                        cursor + 1,
                        a.seq
                    ),
                ));
            }
            if a.seq <= cursor && watched.is_some_and(|hash| hash != a.hash) {
                problems.push(problem(
                    a.seq,
                    "fork",
                    format!(
                        "merged record {} is not the one the node's spool held when it was anchored",
                        a.seq
                    ),
                ));
            }
        }
        problems.sort_by_key(|p| p.seq);
        Ok(NodeChainReport {
            node,
            epoch: c.epoch,
            epoch_id: c.epoch_id.clone(),
            records: count,
            cursor,
            anchored: anchor.map_or(0, |a| a.seq),
            unauthenticated,
            problems,
            declared_lost,
            archived_through: archive.through,
            archive_segments,
            archive_missing: missing,
        })
    }
}

/// The checks of one epoch's records, fed in sequence order from archive segments and the
/// state.
struct EpochCheck<'a> {
    node: u64,
    epoch: u32,
    epoch_id: &'a str,
    mac_key: &'a [u8; 32],
    problems: Vec<ChainProblem>,
    /// Records seen.
    count: u64,
    /// Records without a MAC.
    unauthenticated: u64,
    /// The last record checked, `(seq, hash)` (`(0, GENESIS)` before the first); `None`
    /// after a segment this node does not hold (the next record is taken on its own word).
    last: Option<(u64, String)>,
    /// A sequence number whose hash is wanted (the shipping anchor's), and its hash once seen.
    watch: Option<u64>,
    watched: Option<String>,
}

impl EpochCheck<'_> {
    fn problem(&mut self, seq: u64, kind: &str, detail: String) {
        self.problems.push(ChainProblem {
            node: self.node,
            epoch: self.epoch,
            seq,
            kind: kind.into(),
            detail,
        });
    }

    /// Checks records stored under `prefix` (their keys name their positions), in order.
    fn records(&mut self, prefix: &[u8], records: Vec<(Vec<u8>, AuditRecord)>) {
        let mut chain = Vec::with_capacity(records.len());
        for (key, r) in records {
            self.count += 1;
            let seq: u64 = key
                .strip_prefix(prefix)
                .and_then(|s| std::str::from_utf8(s).ok())
                .and_then(|s| s.parse().ok())
                .unwrap_or(0);
            if r.node != self.node || r.seq != seq || r.epoch != self.epoch_id {
                self.problem(
                    seq,
                    "tampered",
                    format!(
                        "record stored at {seq} claims node {} epoch {} seq {}",
                        r.node, r.epoch, r.seq
                    ),
                );
                continue;
            }
            match &r.mac {
                Some(mac) if *mac != line_mac(self.mac_key, self.node, &r.epoch, seq, &r.hash) => {
                    self.problem(seq, "tampered", format!("record {seq} fails its MAC"))
                }
                Some(_) => {}
                None => self.unauthenticated += 1,
            }
            if self.watch == Some(seq) {
                self.watched = Some(r.hash.clone());
            }
            chain.push(r);
        }
        let Some(first) = chain.first() else {
            return;
        };
        let start = match &self.last {
            Some((seq, hash)) => (*seq, hash.clone()),
            None => (first.seq.saturating_sub(1), first.prev_hash.clone()),
        };
        for mut p in verify_chain(self.node, (start.0, &start.1), &chain) {
            p.epoch = self.epoch;
            self.problems.push(p);
        }
        if let Some(last) = chain.last() {
            self.last = Some((last.seq, last.hash.clone()));
        }
    }
}

/// Archived records of one epoch this node does not hold (it caught up from a snapshot
/// taken after they were archived): another member's `archive/` has the segment.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ArchivedRange {
    /// Origin node.
    pub node: u64,
    /// The epoch's number.
    pub epoch: u32,
    /// First sequence number.
    pub from: u64,
    /// Last sequence number.
    pub to: u64,
    /// The segment's digest (its file name without `.seg`).
    pub digest: String,
}

impl ArchivedRange {
    fn of(node: u64, epoch: u32, segment: &SegmentRef) -> Self {
        Self {
            node,
            epoch,
            from: segment.first,
            to: segment.last,
            digest: segment.digest.clone(),
        }
    }
}
