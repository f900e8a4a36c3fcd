//! Reading the merged audit log: queries filtered by node, actor, operation, path, mode,
//! outcome and time, paged by position; and verification of every node's chain (each epoch
//! on its own), of the anchors the shipments recorded, and of this node's spool.

use serde::Serialize;

use super::audit::{decode_cursor, EpochCursor};
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
const SCAN_CHUNK: usize = 1024;

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

/// A page of audit records and, when more may follow, the (node, epoch, seq) to resume
/// after.
pub type AuditPage = (Vec<MergedRecord>, Option<(u64, u32, u64)>);

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

    /// `GET sys/coffer/audit`: merged records matching `filter`, in (node, seq) order, and
    /// the position to resume after when more may follow.
    pub fn audit_query(&self, auth: &super::Auth, filter: &AuditFilter) -> Result<AuditPage> {
        auth.require("sys/coffer/audit", Capability::Read)?;
        self.keyring()?;
        let limit = filter.limit.unwrap_or(100).clamp(1, MAX_QUERY);
        let prefix = log_prefix(filter.node, None);
        let mut after = filter.after.map(|(n, e, s)| log_key(n, e, s));
        let mut out = Vec::new();
        loop {
            let chunk = self.engine.scan(&prefix, after.as_deref(), SCAN_CHUNK)?;
            let Some((last_key, _)) = chunk.last() else {
                break;
            };
            let next_after = last_key.clone();
            for (key, entry) in chunk {
                let record = self.decode_log(&key, &entry.value)?;
                if filter.accepts(&record) {
                    out.push(MergedRecord {
                        epoch_number: crate::keys::audit_log_epoch(&key),
                        record,
                    });
                    if out.len() == limit {
                        let pos = out
                            .last()
                            .map(|r| (r.record.node, r.epoch_number, r.record.seq));
                        return Ok((out, pos));
                    }
                }
            }
            after = Some(next_after);
        }
        Ok((out, None))
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
        let mut problems = Vec::new();
        let mut records: Vec<AuditRecord> = Vec::new();
        let mut after: Option<Vec<u8>> = None;
        let mut count = 0u64;
        let mut unauthenticated = 0u64;
        let problem = |seq, kind: &str, detail: String| ChainProblem {
            node,
            epoch: c.epoch,
            seq,
            kind: kind.into(),
            detail,
        };
        loop {
            let chunk = match self.engine.scan(&prefix, after.as_deref(), SCAN_CHUNK) {
                Ok(chunk) => chunk,
                Err(e) => {
                    let seq = records.last().map_or(1, |r| r.seq + 1);
                    problems.push(problem(
                        seq,
                        "unreadable",
                        format!("storage refused to read on: {e}"),
                    ));
                    break;
                }
            };
            let Some((last_key, _)) = chunk.last() else {
                break;
            };
            after = Some(last_key.clone());
            for (key, entry) in chunk {
                let seq: u64 = String::from_utf8_lossy(&key[prefix.len()..])
                    .parse()
                    .unwrap_or(0);
                // The cursor was read first; records merged since then are checked next time.
                if seq > cursor {
                    continue;
                }
                count += 1;
                match self.decode_log(&key, &entry.value) {
                    Ok(r) if r.node == node && r.seq == seq && r.epoch == c.epoch_id => {
                        match &r.mac {
                            Some(mac)
                                if *mac != line_mac(mac_key, node, &r.epoch, seq, &r.hash) =>
                            {
                                problems.push(problem(
                                    seq,
                                    "tampered",
                                    format!("record {seq} fails its MAC"),
                                ))
                            }
                            Some(_) => {}
                            None => unauthenticated += 1,
                        }
                        records.push(r)
                    }
                    Ok(r) => problems.push(problem(
                        seq,
                        "tampered",
                        format!(
                            "record stored at {seq} claims node {} epoch {} seq {}",
                            r.node, r.epoch, r.seq
                        ),
                    )),
                    Err(_) => problems.push(problem(
                        seq,
                        "tampered",
                        format!("record {seq} failed authentication: its ciphertext was altered"),
                    )),
                }
            }
        }
        let mut chain = verify_chain(node, (0, crate::audit::record::GENESIS), &records);
        for p in &mut chain {
            p.epoch = c.epoch;
        }
        problems.extend(chain);
        if records.last().map_or(0, |r| r.seq) != cursor && problems.is_empty() {
            problems.push(problem(
                cursor,
                "gap",
                format!("cursor says {cursor} records were merged, the log ends earlier"),
            ));
        }
        let anchor = self.anchor(node, &c.epoch_id)?;
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
            if a.seq <= cursor {
                let at = records.iter().find(|r| r.seq == a.seq);
                if at.is_some_and(|r| r.hash != a.hash) {
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
        })
    }
}
