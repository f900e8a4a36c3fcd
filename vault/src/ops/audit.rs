//! The vault's side of audit: appending events to the local spool, shipping spool records
//! into the replicated audit log exactly once, and querying and verifying that log.
//!
//! Exactly once: each node's records go into the log in one transaction per batch, guarded
//! by that node's cursor (`audit/cursor/<node>`, the highest merged sequence number). A batch
//! is read from the spool starting at cursor + 1, so whatever crashes between spool append,
//! commit and spool pruning, the next attempt resumes at the right record: a batch built from
//! a stale cursor fails its guard and is rebuilt. The shipper writes through the engine like
//! any other write, so on a follower it reaches the leader and on a read-only standby it waits.
//!
//! Epochs: a node's spool has a random epoch id. A node id removed and joined again from a
//! new pack starts a fresh spool, hence a new epoch: it gets the next epoch number of that
//! node and its own cursor, and its chain is merged from its first record. `audit verify`
//! checks each epoch's chain on its own.
//!
//! Anchors: every shipping transaction also records the spool's durable head (sequence
//! number and hash) in the replicated log. Records anchored but not yet merged are then
//! known to the cluster: a spool cut short below its anchor, or rewritten at the anchored
//! position, is reported by `audit verify` and stops the shipper.
//!
//! Storage (keys in clear):
//! - `audit/cursor/<node>/<epoch id>`: epoch number (u32 BE) then the highest merged
//!   sequence number (u64 BE), in clear;
//! - `audit/epoch-count/<node>`: how many epochs the node has had (u32 BE, in clear);
//! - `audit/log/<node>/<epoch number>/<seq>`: a merged record (envelope);
//! - `audit/anchor/<node>/<epoch id>`: the spool head at the last shipment (envelope).

use std::sync::Arc;
use std::time::Duration;

use coffer_raft::Txn;
use hmac::{Hmac, Mac};
use serde::Serialize;
use sha2::Sha256;

use super::Vault;
use crate::audit::spool::line_mac;
use crate::audit::{verify_chain, AuditEvent, AuditRecord, ChainProblem, SpoolKey};
use crate::error::{Result, VaultError};
use crate::rules::policy::Capability;

/// Records per shipping transaction.
pub const SHIP_BATCH: usize = 256;
/// Most records one query returns.
pub const MAX_QUERY: usize = 10_000;

use crate::keys::{
    audit_anchor as anchor_key, audit_cursor as cursor_key, audit_cursors as cursor_prefix,
    audit_epoch_count as epoch_count_key, audit_log as log_key, audit_log_prefix as log_prefix,
    AUDIT_CURSORS as CURSOR_PREFIX, SPOOL_PUBLIC_KEY as SPOOL_PUB_KEY, SPOOL_SECRET_KEY,
};

/// A cursor value: (epoch number, highest merged seq).
fn decode_cursor(raw: &[u8]) -> (u32, u64) {
    match raw.len() {
        12 => (
            u32::from_be_bytes([raw[0], raw[1], raw[2], raw[3]]),
            u64::from_be_bytes(raw[4..].try_into().unwrap_or([0; 8])),
        ),
        _ => (0, 0),
    }
}

fn encode_cursor(epoch: u32, seq: u64) -> Vec<u8> {
    let mut out = epoch.to_be_bytes().to_vec();
    out.extend_from_slice(&seq.to_be_bytes());
    out
}

fn decode_count(raw: &[u8]) -> u32 {
    raw.try_into().map(u32::from_be_bytes).unwrap_or(0)
}

/// A spool head the cluster has seen.
#[derive(Clone, Debug, Serialize, serde::Deserialize)]
struct Anchor {
    /// The spool's last durable sequence number at the shipment.
    seq: u64,
    /// Its hash.
    hash: String,
}

/// One epoch of one node, as its cursor describes it.
#[derive(Clone, Debug)]
struct EpochCursor {
    node: u64,
    epoch_id: String,
    epoch: u32,
    cursor: u64,
}

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
    /// The node's mode as audit records and health report it.
    pub fn mode(&self) -> &'static str {
        if self.is_sealed() {
            "sealed"
        } else {
            self.engine.mode().as_str()
        }
    }

    /// HMAC-SHA256 of a token accessor under a key derived from the keyring's first term, so
    /// every node of the cluster computes the same value; empty while sealed.
    pub fn accessor_hmac(&self, accessor: &str) -> String {
        let Ok(ring) = self.keyring() else {
            return String::new();
        };
        let key = ring.derive(b"coffer audit accessor hmac");
        let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(key.expose()) else {
            return String::new();
        };
        mac.update(accessor.as_bytes());
        format!("hmac-sha256:{}", hex::encode(mac.finalize().into_bytes()))
    }

    /// Appends an event to the local spool (origin node and mode filled in); resolves once it
    /// is durable. A spool failure refuses the request (fail closed).
    pub async fn audit(&self, mut event: AuditEvent) -> Result<AuditRecord> {
        if event.mode.is_empty() {
            event.mode = self.mode().to_string();
        }
        if event.time.is_empty() {
            event.time = crate::clock::rfc3339(crate::clock::now());
        }
        self.spool
            .append(event)
            .await
            .map_err(|e| VaultError::Unavailable(e.to_string()))
    }

    /// The local spool.
    pub fn spool(&self) -> &crate::audit::Spool {
        &self.spool
    }

    /// Points the spool at the cluster's audit spool public key, if the vault has one.
    pub(crate) fn load_spool_recipient(&self) -> Result<()> {
        if let Some(entry) = self.engine.get(SPOOL_PUB_KEY)? {
            let public: [u8; 32] = entry
                .value
                .as_slice()
                .try_into()
                .map_err(|_| VaultError::internal("corrupt audit spool public key"))?;
            self.spool.set_recipient(public);
        }
        Ok(())
    }

    /// The audit spool's private key (unsealed nodes only).
    fn spool_key(&self) -> Result<Option<SpoolKey>> {
        let Some(record) = self.read_record::<String>(SPOOL_SECRET_KEY)? else {
            return Ok(None);
        };
        let bytes =
            zeroize::Zeroizing::new(hex::decode(&record.value).map_err(VaultError::internal)?);
        let arr: [u8; 32] = bytes
            .as_slice()
            .try_into()
            .map_err(|_| VaultError::internal("corrupt audit spool key"))?;
        Ok(Some(SpoolKey::from_bytes(arr)))
    }

    /// The spool's MAC key, derived from the keyring (the node is unsealed).
    pub(crate) fn spool_mac_key(
        ring: &crate::crypto::keyring::Keyring,
    ) -> zeroize::Zeroizing<[u8; 32]> {
        let key = ring.derive(b"coffer audit spool mac");
        let mut out = zeroize::Zeroizing::new([0u8; 32]);
        out.copy_from_slice(key.expose());
        out
    }

    /// The cluster's cursor for `node`'s latest epoch (0 if none merged).
    pub fn audit_cursor(&self, node: u64) -> Result<u64> {
        Ok(self
            .epoch_cursors(Some(node))?
            .into_iter()
            .max_by_key(|c| c.epoch)
            .map_or(0, |c| c.cursor))
    }

    /// The cluster's cursor for this node's own spool.
    pub fn own_audit_cursor(&self) -> Result<u64> {
        let key = cursor_key(self.spool.node(), self.spool.epoch());
        Ok(self
            .engine
            .get(&key)?
            .map_or(0, |e| decode_cursor(&e.value).1))
    }

    /// Every epoch cursor (of one node, or of all).
    fn epoch_cursors(&self, node: Option<u64>) -> Result<Vec<EpochCursor>> {
        let prefix = match node {
            Some(n) => cursor_prefix(n),
            None => CURSOR_PREFIX.as_bytes().to_vec(),
        };
        let mut out = Vec::new();
        for (key, entry) in self.engine.scan(&prefix, None, 1_000_000)? {
            let rest = String::from_utf8_lossy(&key[CURSOR_PREFIX.len()..]).into_owned();
            let Some((node, epoch_id)) = rest.split_once('/') else {
                continue;
            };
            let (epoch, cursor) = decode_cursor(&entry.value);
            out.push(EpochCursor {
                node: node.parse().unwrap_or(0),
                epoch_id: epoch_id.to_string(),
                epoch,
                cursor,
            });
        }
        out.sort_by_key(|c| (c.node, c.epoch));
        Ok(out)
    }

    /// The hash of the merged record `seq` of `node`'s epoch `epoch` (the genesis hash for 0).
    fn merged_hash(&self, node: u64, epoch: u32, seq: u64) -> Result<String> {
        if seq == 0 {
            return Ok(crate::audit::record::GENESIS.to_string());
        }
        let key = log_key(node, epoch, seq);
        let entry = self.engine.get(&key)?.ok_or_else(|| {
            VaultError::internal(format!(
                "merged audit record {seq} of node {node} is missing"
            ))
        })?;
        Ok(self.decode_log(&key, &entry.value)?.hash)
    }

    /// A node starting a new epoch while an earlier one has anchored records that were never
    /// merged: those records are lost (their spool is gone). Said loudly; `audit verify`
    /// reports it too.
    fn warn_lost_epochs(&self, node: u64) -> Result<()> {
        for c in self.epoch_cursors(Some(node))? {
            if let Some(a) = self.anchor(node, &c.epoch_id)? {
                if a.seq > c.cursor {
                    tracing::error!(
                        node,
                        epoch = c.epoch,
                        "audit records {}..={} of an earlier spool of this node were anchored but never merged: that spool is gone",
                        c.cursor + 1,
                        a.seq
                    );
                }
            }
        }
        Ok(())
    }

    fn anchor(&self, node: u64, epoch_id: &str) -> Result<Option<Anchor>> {
        Ok(self
            .read_record::<Anchor>(&anchor_key(node, epoch_id))?
            .map(|r| r.value))
    }

    /// Ships one batch of spool records into the replicated log; returns how many merged.
    pub async fn ship_once(&self) -> Result<usize> {
        self.keyring()?;
        let node = self.spool.node();
        let epoch_id = self.spool.epoch().to_string();
        let ckey = cursor_key(node, &epoch_id);
        let current = self.engine.get(&ckey)?;
        let (known_epoch, cursor) = current.as_ref().map_or((0, 0), |e| decode_cursor(&e.value));
        let (last, head_hash) = self.spool.head();
        let key = self.spool_key()?;
        if let Some(anchor) = self.anchor(node, &epoch_id)? {
            if last < anchor.seq {
                return Err(VaultError::internal(format!(
                    "the local audit spool ends at record {last}, but the cluster anchored record {} of it: the spool was cut short",
                    anchor.seq
                )));
            }
            // Whatever was anchored and not merged yet must still be there as it was: the
            // anchored record's hash commits to every record before it.
            if anchor.seq > cursor {
                let held = self
                    .spool
                    .read_from(anchor.seq, 1, key.as_ref())
                    .map_err(VaultError::internal)?;
                if held.first().map(|r| r.hash.as_str()) != Some(anchor.hash.as_str()) {
                    return Err(VaultError::internal(format!(
                        "the local audit spool's record {} is not the one the cluster anchored: the spool was rewritten",
                        anchor.seq
                    )));
                }
            }
        }
        if last < cursor {
            return Err(VaultError::internal(format!(
                "local audit spool ends at {last} but the cluster has merged up to {cursor}"
            )));
        }
        if last == cursor {
            let _ = self.spool.prune_through(cursor);
            return Ok(0);
        }
        let records = self
            .spool
            .read_from(cursor + 1, SHIP_BATCH, key.as_ref())
            .map_err(VaultError::internal)?;
        let Some(last_rec) = records.last() else {
            return Ok(0);
        };
        if records[0].seq != cursor + 1 {
            return Err(VaultError::internal(format!(
                "audit spool resumes at {} but the cluster expects {}",
                records[0].seq,
                cursor + 1
            )));
        }
        // Every record must be intact and continue the merged chain: with the anchor check
        // above, a record rewritten anywhere up to the anchor cannot be merged.
        let mut prev = match current {
            Some(_) => self.merged_hash(node, known_epoch, cursor)?,
            None => crate::audit::record::GENESIS.to_string(),
        };
        for r in &records {
            if !r.intact() || r.prev_hash != prev {
                return Err(VaultError::internal(format!(
                    "audit spool record {} does not continue the merged chain (rewritten or corrupt)",
                    r.seq
                )));
            }
            prev = r.hash.clone();
        }
        let mut txn = Txn::new().unchanged(ckey.clone(), current.as_ref());
        let epoch = if current.is_some() {
            known_epoch
        } else {
            self.warn_lost_epochs(node)?;
            // A new epoch of this node: the next number, guarded on the count.
            let count_key = epoch_count_key(node);
            let count = self.engine.get(&count_key)?;
            let next = count.as_ref().map_or(0, |e| decode_count(&e.value)) + 1;
            txn = txn
                .unchanged(count_key.clone(), count.as_ref())
                .put(count_key, next.to_be_bytes().to_vec());
            next
        };
        for r in &records {
            let key = log_key(node, epoch, r.seq);
            txn = txn.put(key.clone(), self.seal_record(&key, r)?);
        }
        let last_seq = last_rec.seq;
        let akey = anchor_key(node, &epoch_id);
        let anchor = Anchor {
            seq: last,
            hash: head_hash,
        };
        txn = txn
            .put(ckey, encode_cursor(epoch, last_seq))
            .put(akey.clone(), self.seal_record(&akey, &anchor)?);
        if !self.engine.write(txn).await?.succeeded {
            // Another shipper (an earlier incarnation) moved the cursor: rebuild from it.
            return Ok(0);
        }
        let _ = self.spool.prune_through(last_seq);
        Ok(records.len())
    }

    /// Ships forever: after new records, or every 250 ms while anything is pending.
    pub async fn run_shipper(self: Arc<Self>) {
        let mut modes = self.engine.mode_changes();
        loop {
            if self.engine.mode() == coffer_raft::NodeMode::ReadOnly {
                // Nothing can be written; resume when the mode changes.
                tokio::select! {
                    _ = modes.recv() => {}
                    _ = tokio::time::sleep(Duration::from_millis(250)) => {}
                }
                continue;
            }
            match self.ship_once().await {
                Ok(n) if n == SHIP_BATCH => continue,
                Ok(_) => {}
                Err(VaultError::Sealed) => {}
                Err(VaultError::Internal(e)) => tracing::error!("audit shipping stopped: {e}"),
                Err(e) => tracing::debug!("audit shipping paused: {e}"),
            }
            tokio::select! {
                _ = self.spool.changed() => {}
                _ = tokio::time::sleep(Duration::from_millis(250)) => {}
            }
        }
    }

    fn decode_log(&self, key: &[u8], value: &[u8]) -> Result<AuditRecord> {
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
            let chunk = self.engine.scan(&prefix, after.as_deref(), 1024)?;
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
            let chunk = match self.engine.scan(&prefix, after.as_deref(), 1024) {
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
        if let Some(a) = &anchor {
            if a.seq > cursor && superseded {
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
        })
    }
}
