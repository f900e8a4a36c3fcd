//! The vault's side of audit: appending events to the local spool, and shipping spool
//! records into the replicated audit log exactly once (reading that log: [`super::audit_log`]).
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
use crate::audit::{AuditEvent, AuditRecord, SpoolKey};
use crate::error::{Result, VaultError};

/// Records per shipping transaction. 1,024 records of about 1 KiB sealed each make a
/// transaction of about 1 MiB: a quarter as many Raft rounds and fsyncs per record as 256,
/// under the peer link's per-message bound (large appends are cut to what fits).
pub const SHIP_BATCH: usize = 1024;
/// How often the shipper looks again while records are pending but could not be merged
/// (sealed, no leader, read-only): short enough that merge-back follows reconnection within
/// a fraction of a second, long enough to cost nothing while it waits.
const SHIP_RETRY: Duration = Duration::from_millis(250);
/// How long the shipper lets a small backlog gather before shipping it. Without it, a node
/// under light load ships every record as it becomes durable: a write's request and
/// response records became two more Raft entries, each with a quorum's fsync, beside the
/// write's own (three entries per write at one client). Records are durable in the spool
/// meanwhile; only their arrival in the cluster log waits.
const SHIP_LINGER: Duration = Duration::from_millis(20);
/// A backlog of at least this many records ships at once (merge-back after a standby
/// period, heavy load).
const SHIP_EAGER: u64 = 256;

use crate::keys::{
    audit_anchor as anchor_key, audit_cursor as cursor_key, audit_cursors as cursor_prefix,
    audit_epoch_count as epoch_count_key, audit_log as log_key, AUDIT_CURSORS as CURSOR_PREFIX,
    SPOOL_PUBLIC_KEY as SPOOL_PUB_KEY, SPOOL_SECRET_KEY,
};

/// A batch of spool records ready to propose.
struct Shipment {
    /// Its records, the cursor move and the anchor, guarded on the cursor.
    txn: Txn,
    /// The epoch number it merges under.
    epoch: u32,
    /// Its last sequence number and that record's hash.
    last_seq: u64,
    last_hash: String,
    /// How many records.
    records: usize,
}

/// A cursor value: (epoch number, highest merged seq).
pub(super) fn decode_cursor(raw: &[u8]) -> (u32, u64) {
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
pub(super) struct Anchor {
    /// The spool's last durable sequence number at the shipment.
    pub(super) seq: u64,
    /// Its hash.
    pub(super) hash: String,
}

/// One epoch of one node, as its cursor describes it.
#[derive(Clone, Debug)]
pub(super) struct EpochCursor {
    pub(super) node: u64,
    pub(super) epoch_id: String,
    pub(super) epoch: u32,
    pub(super) cursor: u64,
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
    pub(super) fn spool_key(&self) -> Result<Option<SpoolKey>> {
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

    /// Records of this node's spool not merged yet (0 while the cursor cannot be read).
    pub fn audit_backlog(&self) -> u64 {
        self.spool
            .last_seq()
            .saturating_sub(self.own_audit_cursor().unwrap_or(self.spool.last_seq()))
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
    pub(super) fn epoch_cursors(&self, node: Option<u64>) -> Result<Vec<EpochCursor>> {
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

    /// The hash of the merged record `seq` of `node`'s epoch `epoch_id` (number `epoch`), the
    /// genesis hash for 0.
    pub(super) fn merged_hash(
        &self,
        node: u64,
        epoch_id: &str,
        epoch: u32,
        seq: u64,
    ) -> Result<String> {
        if seq == 0 {
            return Ok(crate::audit::record::GENESIS.to_string());
        }
        let key = log_key(node, epoch, seq);
        if let Some(entry) = self.engine.get(&key)? {
            return Ok(self.decode_log(&key, &entry.value)?.hash);
        }
        // Archived (a quiet node's whole chain may be): the anchor keeps its last hash.
        let (anchor, _) = self.archive_anchor(node, epoch_id)?;
        if anchor.through == seq {
            return Ok(anchor.hash);
        }
        Err(VaultError::internal(format!(
            "merged audit record {seq} of node {node} is missing"
        )))
    }

    /// A node starting a new epoch while an earlier one has anchored records that were never
    /// merged: those records are lost (their spool is gone). Said loudly; `audit verify`
    /// reports it too.
    pub(super) fn warn_lost_epochs(&self, node: u64) -> Result<()> {
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

    pub(super) fn anchor(&self, node: u64, epoch_id: &str) -> Result<Option<Anchor>> {
        Ok(self
            .read_record::<Anchor>(&anchor_key(node, epoch_id))?
            .map(|r| r.value))
    }

    /// Ships one batch of spool records into the replicated log; returns how many merged.
    pub async fn ship_once(&self) -> Result<usize> {
        let Some(batch) = self.prepare_shipment(None)? else {
            return Ok(0);
        };
        self.commit_shipment(batch).await
    }

    /// Ships until the spool is merged or a shipment fails its guard, preparing each batch
    /// while the one before commits (reading, decrypting and sealing 1,024 records overlaps
    /// the Raft round of the previous 1,024); returns how many merged. One shipment is in
    /// flight at a time, so they commit in order.
    pub async fn ship_pipelined(self: &Arc<Self>) -> Result<usize> {
        let mut merged = 0;
        let Some(mut next) = self.prepare_shipment(None)? else {
            return Ok(0);
        };
        loop {
            let full = next.records == SHIP_BATCH;
            let follows = Some((next.epoch, next.last_seq, next.last_hash.clone()));
            let vault = self.clone();
            let inflight = tokio::spawn(async move { vault.commit_shipment(next).await });
            // The following batch, guarded on the cursor this one leaves.
            let prepared = if full {
                self.prepare_shipment(follows)
            } else {
                Ok(None)
            };
            let done = inflight.await.map_err(VaultError::internal)??;
            merged += done;
            match prepared {
                Ok(Some(batch)) if done > 0 => next = batch,
                // What merged counts; the next call meets the error again if it persists.
                Err(e) if merged == 0 => return Err(e),
                _ => return Ok(merged),
            }
        }
    }

    /// Reads the next batch and builds its transaction: after the cluster's cursor (`None`),
    /// or after a batch being committed (`Some((epoch number, its last seq, its last hash))`,
    /// guarded on the cursor value that batch leaves). `None` when nothing is pending.
    fn prepare_shipment(&self, after: Option<(u32, u64, String)>) -> Result<Option<Shipment>> {
        self.keyring()?;
        let node = self.spool.node();
        let epoch_id = self.spool.epoch().to_string();
        let ckey = cursor_key(node, &epoch_id);
        let key = self.spool_key()?;
        let (last, head_hash) = self.spool.head();
        let (txn, known_epoch, cursor, mut prev) = match after {
            Some((epoch, seq, hash)) => {
                // Every batch is checked against the anchor, not only a run's first: a run
                // can drain a backlog for minutes.
                self.check_anchor(node, &epoch_id, seq, last, key.as_ref())?;
                let expected = coffer_raft::value_hash(&encode_cursor(epoch, seq));
                let txn = Txn::new().when(ckey.clone(), coffer_raft::Check::ValueHash(expected));
                (txn, Some(epoch), seq, hash)
            }
            None => {
                let current = self.engine.get(&ckey)?;
                let (known_epoch, cursor) =
                    current.as_ref().map_or((0, 0), |e| decode_cursor(&e.value));
                self.check_anchor(node, &epoch_id, cursor, last, key.as_ref())?;
                if last < cursor {
                    return Err(VaultError::internal(format!(
                        "local audit spool ends at {last} but the cluster has merged up to {cursor}"
                    )));
                }
                if last == cursor {
                    let _ = self.spool.prune_through(cursor);
                    return Ok(None);
                }
                let prev = match current {
                    Some(_) => self.merged_hash(node, &epoch_id, known_epoch, cursor)?,
                    None => crate::audit::record::GENESIS.to_string(),
                };
                let txn = Txn::new().unchanged(ckey.clone(), current.as_ref());
                (txn, current.is_some().then_some(known_epoch), cursor, prev)
            }
        };
        let records = self
            .spool
            .read_from(cursor + 1, SHIP_BATCH, key.as_ref())
            .map_err(VaultError::internal)?;
        let Some(last_rec) = records.last() else {
            return Ok(None);
        };
        if records[0].seq != cursor + 1 {
            return Err(VaultError::internal(format!(
                "audit spool resumes at {} but the cluster expects {}",
                records[0].seq,
                cursor + 1
            )));
        }
        // Every record must be intact and continue the merged chain: with the anchor check,
        // a record rewritten anywhere up to the anchor cannot be merged.
        for r in &records {
            if !r.intact() || r.prev_hash != prev {
                return Err(VaultError::internal(format!(
                    "audit spool record {} does not continue the merged chain (rewritten or corrupt)",
                    r.seq
                )));
            }
            prev = r.hash.clone();
        }
        let (mut txn, epoch) = match known_epoch {
            Some(epoch) => (txn, epoch),
            None => {
                self.warn_lost_epochs(node)?;
                // A new epoch of this node: the next number, guarded on the count.
                let count_key = epoch_count_key(node);
                let count = self.engine.get(&count_key)?;
                let next = count.as_ref().map_or(0, |e| decode_count(&e.value)) + 1;
                let txn = txn
                    .unchanged(count_key.clone(), count.as_ref())
                    .put(count_key, next.to_be_bytes().to_vec());
                (txn, next)
            }
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
        let txn = txn
            .put(ckey, encode_cursor(epoch, last_seq))
            .put(akey.clone(), self.seal_record(&akey, &anchor)?);
        Ok(Some(Shipment {
            txn,
            epoch,
            last_seq,
            last_hash: prev,
            records: records.len(),
        }))
    }

    /// Proposes a prepared shipment; on success prunes the spool through it. Returns how
    /// many records merged (0: its guard failed, another shipper moved the cursor).
    async fn commit_shipment(&self, shipment: Shipment) -> Result<usize> {
        if !self.engine.write(shipment.txn).await?.succeeded {
            return Ok(0);
        }
        let _ = self.spool.prune_through(shipment.last_seq);
        Ok(shipment.records)
    }

    /// The spool must still hold what the cluster anchored: not cut short below the anchor,
    /// and the anchored record unchanged while it is not merged.
    fn check_anchor(
        &self,
        node: u64,
        epoch_id: &str,
        cursor: u64,
        last: u64,
        key: Option<&SpoolKey>,
    ) -> Result<()> {
        let Some(anchor) = self.anchor(node, epoch_id)? else {
            return Ok(());
        };
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
                .read_from(anchor.seq, 1, key)
                .map_err(VaultError::internal)?;
            if held.first().map(|r| r.hash.as_str()) != Some(anchor.hash.as_str()) {
                return Err(VaultError::internal(format!(
                    "the local audit spool's record {} is not the one the cluster anchored: the spool was rewritten",
                    anchor.seq
                )));
            }
        }
        Ok(())
    }

    /// Ships forever: after new records, or every 250 ms (`SHIP_RETRY`) while anything is
    /// pending.
    pub async fn run_shipper(self: Arc<Self>) {
        let mut modes = self.engine.mode_changes();
        loop {
            if self.engine.mode() == coffer_raft::NodeMode::ReadOnly {
                // Nothing can be written; resume when the mode changes.
                tokio::select! {
                    _ = modes.recv() => {}
                    _ = tokio::time::sleep(SHIP_RETRY) => {}
                }
                continue;
            }
            // Registered before looking: an append while shipping wakes the wait below.
            let changed = self.spool.changed();
            tokio::pin!(changed);
            changed.as_mut().enable();
            match self.ship_pipelined().await {
                Ok(n) if n > 0 => {
                    self.linger().await;
                    continue;
                }
                Ok(_) => {}
                Err(VaultError::Sealed) => {}
                Err(VaultError::Internal(e)) => tracing::error!("audit shipping stopped: {e}"),
                Err(e) => tracing::debug!("audit shipping paused: {e}"),
            }
            tokio::select! {
                _ = changed => self.linger().await,
                _ = tokio::time::sleep(SHIP_RETRY) => {}
            }
        }
    }

    /// Waits [`SHIP_LINGER`] unless the backlog is already worth a transaction on its own.
    async fn linger(&self) {
        if self.audit_backlog() < SHIP_EAGER {
            tokio::time::sleep(SHIP_LINGER).await;
        }
    }
}
