//! The vault's side of audit: appending events to the local spool, shipping spool records
//! into the replicated audit log exactly once, and querying and verifying that log.
//!
//! Exactly once: each node's records go into the log in one transaction per batch, guarded
//! by that node's cursor (`audit/cursor/<node>`, the highest merged sequence number). A batch
//! is read from the spool starting at cursor + 1, so whatever crashes between spool append,
//! commit and spool pruning, the next attempt resumes at the right record: a batch built from
//! a stale cursor fails its guard and is rebuilt. The shipper writes through the engine like
//! any other write, so on a follower it reaches the leader and on a read-only standby it waits.

use std::sync::Arc;
use std::time::Duration;

use coffer_raft::Txn;
use hmac::{Hmac, Mac};
use serde::Serialize;
use sha2::Sha256;

use super::Vault;
use crate::audit::{verify_chain, AuditEvent, AuditRecord, ChainProblem, SpoolKey};
use crate::error::{Result, VaultError};
use crate::policy::Capability;

/// Records per shipping transaction.
pub const SHIP_BATCH: usize = 256;
/// Most records one query returns.
pub const MAX_QUERY: usize = 10_000;

/// The audit spool's public key, in clear: a sealed node seals spool bodies to it.
pub(crate) const SPOOL_PUB_KEY: &[u8] = b"core/audit-spool-pub";
/// The audit spool's private key, under the keyring: only an unsealed node opens spool bodies.
pub(crate) const SPOOL_SECRET_KEY: &[u8] = b"core/audit-spool-key";

fn cursor_key(node: u64) -> Vec<u8> {
    format!("audit/cursor/{node:020}").into_bytes()
}

fn log_prefix(node: Option<u64>) -> Vec<u8> {
    match node {
        Some(n) => format!("audit/log/{n:020}/").into_bytes(),
        None => b"audit/log/".to_vec(),
    }
}

fn log_key(node: u64, seq: u64) -> Vec<u8> {
    format!("audit/log/{node:020}/{seq:020}").into_bytes()
}

fn decode_cursor(raw: &[u8]) -> u64 {
    raw.try_into().map(u64::from_be_bytes).unwrap_or(0)
}

/// Filters of an audit query; all optional, combined with AND.
#[derive(Clone, Debug, Default)]
pub struct AuditFilter {
    /// Origin node.
    pub node: Option<u64>,
    /// Exact actor.
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
    /// Resume after this (node, seq).
    pub after: Option<(u64, u64)>,
    /// Most records to return (default 100, at most 10 000).
    pub limit: Option<usize>,
}

impl AuditFilter {
    fn accepts(&self, r: &AuditRecord) -> bool {
        let e = &r.event;
        let time = crate::clock::parse(&e.time);
        self.actor.as_ref().is_none_or(|a| *a == e.actor)
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

/// A page of audit records and, when more may follow, the (node, seq) to resume after.
pub type AuditPage = (Vec<AuditRecord>, Option<(u64, u64)>);

/// One node's chain in the merged log.
#[derive(Clone, Debug, Serialize)]
pub struct NodeChainReport {
    /// Origin node.
    pub node: u64,
    /// Records present.
    pub records: u64,
    /// The node's cursor (highest merged sequence number).
    pub cursor: u64,
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
            .map_err(VaultError::Unavailable)
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

    /// The cluster's cursor for `node`.
    pub fn audit_cursor(&self, node: u64) -> Result<u64> {
        Ok(self
            .engine
            .get(&cursor_key(node))?
            .map_or(0, |e| decode_cursor(&e.value)))
    }

    /// Ships one batch of spool records into the replicated log; returns how many merged.
    pub async fn ship_once(&self) -> Result<usize> {
        self.keyring()?;
        let node = self.spool.node();
        let ckey = cursor_key(node);
        let current = self.engine.get(&ckey)?;
        let cursor = current.as_ref().map_or(0, |e| decode_cursor(&e.value));
        let last = self.spool.last_seq();
        if last < cursor {
            return Err(VaultError::internal(format!(
                "local audit spool ends at {last} but the cluster has merged up to {cursor}"
            )));
        }
        if last == cursor {
            let _ = self.spool.prune_through(cursor);
            return Ok(0);
        }
        let key = self.spool_key()?;
        let records = self
            .spool
            .read_from(cursor + 1, SHIP_BATCH, key.as_ref())
            .map_err(VaultError::internal)?;
        let Some(last) = records.last() else {
            return Ok(0);
        };
        if records[0].seq != cursor + 1 {
            return Err(VaultError::internal(format!(
                "audit spool resumes at {} but the cluster expects {}",
                records[0].seq,
                cursor + 1
            )));
        }
        let mut txn = Txn::new().unchanged(ckey.clone(), current.as_ref());
        for r in &records {
            let key = log_key(node, r.seq);
            txn = txn.put(key.clone(), self.seal_record(&key, r)?);
        }
        let last_seq = last.seq;
        txn = txn.put(ckey, last_seq.to_be_bytes().to_vec());
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
        let prefix = log_prefix(filter.node);
        let mut after = filter.after.map(|(n, s)| log_key(n, s));
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
                    out.push(record);
                    if out.len() == limit {
                        let pos = out.last().map(|r| (r.node, r.seq));
                        return Ok((out, pos));
                    }
                }
            }
            after = Some(next_after);
        }
        Ok((out, None))
    }

    /// `GET sys/coffer/audit/verify`: every node's chain in the merged log, and the spool.
    pub fn audit_verify(&self, auth: &super::Auth) -> Result<VerifyReport> {
        auth.require("sys/coffer/audit", Capability::Read)?;
        self.keyring()?;
        let mut merged = Vec::new();
        for (key, entry) in self.engine.scan(b"audit/cursor/", None, 100_000)? {
            let node: u64 = String::from_utf8_lossy(&key[b"audit/cursor/".len()..])
                .parse()
                .unwrap_or(0);
            merged.push(self.verify_node(node, decode_cursor(&entry.value))?);
        }
        let key = self.spool_key()?;
        let (count, problems) = self
            .spool
            .verify(key.as_ref())
            .map_err(VaultError::internal)?;
        let spool = NodeChainReport {
            node: self.spool.node(),
            records: count,
            cursor: self.spool.last_seq(),
            problems,
        };
        let ok = spool.problems.is_empty() && merged.iter().all(|m| m.problems.is_empty());
        Ok(VerifyReport { ok, merged, spool })
    }

    fn verify_node(&self, node: u64, cursor: u64) -> Result<NodeChainReport> {
        let prefix = log_prefix(Some(node));
        let mut problems = Vec::new();
        let mut records: Vec<AuditRecord> = Vec::new();
        let mut after: Option<Vec<u8>> = None;
        let mut count = 0u64;
        loop {
            let chunk = match self.engine.scan(&prefix, after.as_deref(), 1024) {
                Ok(c) => c,
                Err(e) => {
                    problems.push(ChainProblem {
                        node,
                        seq: records.last().map_or(1, |r| r.seq + 1),
                        kind: "unreadable".into(),
                        detail: format!("storage refused to read on: {e}"),
                    });
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
                    Ok(r) if r.node == node && r.seq == seq => records.push(r),
                    Ok(r) => problems.push(ChainProblem {
                        node,
                        seq,
                        kind: "tampered".into(),
                        detail: format!(
                            "record stored at {seq} claims node {} seq {}",
                            r.node, r.seq
                        ),
                    }),
                    Err(_) => problems.push(ChainProblem {
                        node,
                        seq,
                        kind: "tampered".into(),
                        detail: format!(
                            "record {seq} failed authentication: its ciphertext was altered"
                        ),
                    }),
                }
            }
        }
        problems.extend(verify_chain(
            node,
            (0, crate::audit::record::GENESIS),
            &records,
        ));
        if records.last().map_or(0, |r| r.seq) != cursor && problems.is_empty() {
            problems.push(ChainProblem {
                node,
                seq: cursor,
                kind: "gap".into(),
                detail: format!("cursor says {cursor} records were merged, the log ends earlier"),
            });
        }
        problems.sort_by_key(|p| p.seq);
        Ok(NodeChainReport {
            node,
            records: count,
            cursor,
            problems,
        })
    }
}
