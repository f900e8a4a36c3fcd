//! Restoring a backup into the running cluster: `POST sys/storage/raft/snapshot` and
//! `sys/storage/raft/snapshot-force`, with Vault's semantics, replicated to every member.
//!
//! The backup is verified whole first (no key needed), then checked against this cluster:
//! the plain restore takes only a backup of this cluster (same cluster id) made under its
//! keys (the backup's MAC is this keyring's, and every keyring term the backup holds is
//! one of ours); the forced one also takes a backup of another cluster id made under these
//! keys (an earlier epoch of a restored cluster, a sibling that shares its keys). Its
//! records are then staged through the Raft log in bounded transactions and swapped in by
//! one replace entry that every member applies alike (see `coffer_raft`'s `Op::Replace`).
//!
//! What a restore does not roll back, because rolling it back would lose something the
//! cluster promised: the seal and keyring (this cluster's shares still unseal it), the
//! cluster CA and the bootstrap packs it issued (members and joins keep working), the
//! audit spool's keys, and the whole audit log (every access, the ones after the backup
//! included, stays on record, and the restore itself is recorded). Memberships are Raft's
//! and are not in a backup. Everything else (secrets, mounts, policies, users, tokens) is
//! the backup's.
//!
//! A backup made under other keys is refused even with force, unlike Vault. Whoever made
//! such a file chose its keys. Taking it in place would either hand them what this cluster
//! keeps under its own keyring (the audit log, the CA's private key, the spool key, and
//! with them the means to read older backups or forge old audit records), or leave all of
//! it unreadable. A forced restore still needs the backup's MAC to verify under this
//! keyring: a file assembled from this cluster's records with a recomputed checksum is
//! refused. A backup under other keys is restored with `coffer operator restore` into a
//! new cluster, which takes the backup's keys, and members join that cluster from packs.

use std::io::Seek;

use super::auth::Auth;
use super::{Sealing, Vault};
use crate::audit::{AuditEvent, Outcome, Stage, Who};
use crate::error::{Result, VaultError};
use crate::rules::backup::{self, Counts, SectionReader, MAC_PURPOSE};
use crate::rules::policy::Capability;
use coffer_raft::{Check, Txn};

/// Bytes of records per staging transaction (well under the peer link's frame bound).
const STAGE_BATCH_BYTES: usize = 512 << 10;
/// Staging batches read ahead of the writes (bounds memory to a few batches).
const STAGE_READ_AHEAD: usize = 2;

/// Keys a restore keeps as they are (see the module's notes).
fn kept_prefixes() -> Vec<Vec<u8>> {
    vec![
        crate::keys::SEAL_CONFIG.to_vec(),
        crate::keys::KEYRING.to_vec(),
        crate::keys::RESTORED.to_vec(),
        crate::keys::CA.to_vec(),
        crate::keys::PACKS.as_bytes().to_vec(),
        crate::keys::SPOOL_PUBLIC_KEY.to_vec(),
        crate::keys::SPOOL_SECRET_KEY.to_vec(),
        b"audit/".to_vec(),
    ]
}

/// What a restore into the running cluster did.
#[derive(Clone, Debug, serde::Serialize)]
pub struct LiveRestoreSummary {
    /// The backup's cluster id.
    pub cluster_id: String,
    /// The node the backup was made on.
    pub node_id: u64,
    /// When it was made.
    pub created_at: String,
    /// The log index it was made at.
    pub applied_index: u64,
    /// What it held.
    pub counts: Counts,
    /// Records restored.
    pub restored: u64,
    /// Whether it was forced (another cluster's id).
    pub forced: bool,
}

/// A staging batch: (key, value) records.
type Batch = Vec<(Vec<u8>, Vec<u8>)>;

/// Staged records removed per transaction when a restore is abandoned.
const DROP_PAGE: usize = 1024;

impl Vault {
    /// Restores the backup in `file` into the running cluster (sudo on the route's path).
    /// `force` also takes a backup of another cluster id made under these keys.
    pub async fn restore_live(
        &self,
        auth: &Auth,
        file: std::fs::File,
        force: bool,
    ) -> Result<LiveRestoreSummary> {
        let route = if force {
            "sys/storage/raft/snapshot-force"
        } else {
            "sys/storage/raft/snapshot"
        };
        auth.require_sudo(route, Capability::Update)?;
        if self.engine.mode() == coffer_raft::NodeMode::ReadOnly {
            return Err(VaultError::Unavailable(
                "this node is a read-only standby: a restore goes through the cluster's leader, \
                 which it cannot reach"
                    .into(),
            ));
        }
        let _one_at_a_time = self.restoring.lock().await;
        let (verified, backup_keyring, mut file) = tokio::task::spawn_blocking(move || {
            let mut file = file;
            let mut keyring = None;
            let verified = backup::open(&mut file, &mut |key, value| {
                if key == crate::keys::KEYRING {
                    keyring = Some(value.to_vec());
                }
            })
            .map_err(|e| VaultError::InvalidRequest(format!("the snapshot is refused: {e}")))?;
            Ok::<_, VaultError>((verified, keyring, file))
        })
        .await
        .map_err(VaultError::internal)??;
        let manifest = verified.manifest.clone();
        self.check_restorable(&verified, backup_keyring.as_deref(), force)?;

        // Stage the records through the log, each batch guarded on the staging area still
        // being there (a concurrent restore that committed first wipes it: this one stops).
        let id = hex::encode(rand::random::<[u8; 8]>());
        let mut area = coffer_raft::STAGING_PREFIX.to_vec();
        area.extend_from_slice(id.as_bytes());
        let opened_key = area.clone();
        area.push(b'/');
        let opened = self
            .engine
            .write(
                Txn::new().when(opened_key.clone(), Check::Absent).put(
                    opened_key.clone(),
                    serde_json::to_vec(&serde_json::json!({
                        "backup_sha256": hex::encode(verified.digest),
                        "started": crate::clock::rfc3339(crate::clock::now()),
                        "started_unix": crate::clock::now().unix_timestamp(),
                    }))
                    .map_err(VaultError::internal)?,
                ),
            )
            .await?;
        let guard_revision = opened.revision;
        let staged = self
            .stage(&mut file, &verified, &area, &opened_key, guard_revision)
            .await;
        let restored = match staged {
            Ok(n) => n,
            Err(e) => {
                self.drop_staging(&area, &opened_key).await;
                return Err(e);
            }
        };

        // The swap: guarded on the staging area, and on the seal and keyring not having
        // changed since they were checked.
        let seal = self.engine.get(crate::keys::SEAL_CONFIG)?;
        let ring = self.engine.get(crate::keys::KEYRING)?;
        let commit = Txn {
            compares: Vec::new(),
            ops: vec![coffer_raft::Op::Replace {
                staged: area.clone(),
                keep: kept_prefixes(),
            }],
        }
        .when(opened_key.clone(), Check::Revision(guard_revision))
        .unchanged(crate::keys::SEAL_CONFIG, seal.as_ref())
        .unchanged(crate::keys::KEYRING, ring.as_ref());
        let result = match self.engine.write(commit).await {
            Ok(result) => result,
            Err(e) => {
                // Applied or not, the staging goes (a swap already removed it).
                self.drop_staging(&area, &opened_key).await;
                return Err(e.into());
            }
        };
        if !result.succeeded {
            self.drop_staging(&area, &opened_key).await;
            return Err(VaultError::Unavailable(
                "the restore was overtaken (another restore, or a key rotation, committed \
                 first); nothing was replaced"
                    .into(),
            ));
        }
        tracing::warn!(
            backup_node = manifest.node_id,
            backup_index = manifest.applied_index,
            records = restored,
            forced = force,
            "the cluster's state was replaced by a snapshot restore"
        );
        let event = AuditEvent {
            detail: format!(
                "live restore{} of a backup of cluster {} made {} on node {} at index {} \
                 (sha256 {}); {} records",
                if force { " (forced)" } else { "" },
                manifest.cluster_id,
                manifest.created_at,
                manifest.node_id,
                manifest.applied_index,
                hex::encode(verified.digest),
                restored
            ),
            ..AuditEvent::new(
                Stage::Event,
                Who {
                    name: auth.actor().to_string(),
                    method: auth.method().to_string(),
                    ..Default::default()
                },
                "restore.live",
                route,
                Outcome::Ok,
            )
        };
        self.audit(event).await?;
        Ok(LiveRestoreSummary {
            cluster_id: manifest.cluster_id,
            node_id: manifest.node_id,
            created_at: manifest.created_at,
            applied_index: manifest.applied_index,
            counts: manifest.counts,
            restored,
            forced: force,
        })
    }

    /// Whether a verified backup may replace this cluster's state (see the module's notes).
    fn check_restorable(
        &self,
        verified: &backup::Verified,
        backup_keyring: Option<&[u8]>,
        force: bool,
    ) -> Result<()> {
        let live = self.seal_config()?.ok_or(VaultError::NotInitialized)?;
        let theirs = &verified.manifest.cluster_id;
        if !force && *theirs != live.cluster_id {
            return Err(VaultError::InvalidRequest(format!(
                "the snapshot is of cluster {theirs}, and this is cluster {}: refusing to \
                 replace this cluster's state with another's (sys/storage/raft/snapshot-force \
                 takes it if it was made under this cluster's keys)",
                live.cluster_id
            )));
        }
        let other_keys = || {
            VaultError::InvalidRequest(
                "the snapshot was not made under this cluster's keys (or it was altered): \
                 it is not restored in place, forced or not; restore it into a new cluster \
                 with `coffer operator restore --from FILE`"
                    .into(),
            )
        };
        // Read afresh: a rotation on another node is not in this node's cached keyring yet.
        let ring = self.refresh_keyring()?;
        if !backup::mac_matches(&ring.derive(MAC_PURPOSE), &verified.digest, &verified.mac) {
            return Err(other_keys());
        }
        let wrapped = backup_keyring.ok_or_else(other_keys)?;
        let guard = self.sealing.read().map_err(VaultError::internal)?;
        let Sealing::Unsealed { root, keyring } = &*guard else {
            return Err(VaultError::Sealed);
        };
        let theirs =
            crate::crypto::keyring::Keyring::unwrap(root, wrapped).map_err(|_| other_keys())?;
        if !keyring.covers(&theirs) {
            return Err(other_keys());
        }
        Ok(())
    }

    /// Removes staging areas opened more than `older_than` ago: their restore was abandoned
    /// (the node that ran it crashed mid-upload) or has outlived any request. Run by the
    /// leader now and then; returns how many areas went. A restore still staging under one
    /// stops at its next batch (its guard on the opening record fails) with nothing replaced.
    pub async fn sweep_abandoned_restores(&self, older_than: std::time::Duration) -> Result<usize> {
        let prefix = coffer_raft::STAGING_PREFIX;
        let now = crate::clock::now().unix_timestamp();
        let mut after: Option<Vec<u8>> = None;
        let mut swept = 0;
        loop {
            let Some((key, entry)) = self
                .engine
                .scan(prefix, after.as_deref(), 1)?
                .into_iter()
                .next()
            else {
                return Ok(swept);
            };
            // The area's id runs to the first '/' (its records) or the key's end (its
            // opening record, which sorts first).
            let rest = &key[prefix.len()..];
            let id_len = rest.iter().position(|b| *b == b'/').unwrap_or(rest.len());
            let opened = key[..prefix.len() + id_len].to_vec();
            let mut area = opened.clone();
            area.push(b'/');
            let started = (key == opened)
                .then(|| serde_json::from_slice::<serde_json::Value>(&entry.value).ok())
                .flatten()
                .and_then(|v| v["started_unix"].as_i64());
            let age = started.map_or(i64::MAX, |s| now.saturating_sub(s));
            if age >= i64::try_from(older_than.as_secs()).unwrap_or(i64::MAX) {
                tracing::warn!(
                    area = %String::from_utf8_lossy(&opened[prefix.len()..]),
                    "removing an abandoned restore's staging"
                );
                self.drop_staging(&area, &opened).await;
                swept += 1;
            }
            // Past this area: no application key holds 0xff.
            area.push(0xff);
            after = Some(area);
        }
    }

    /// Removes a staging area that will not be swapped in, a page at a time (bounded
    /// transactions, whatever was staged), then its opening record. Best effort: what a
    /// failure leaves, the next restore's swap removes (it keeps no staging but its own).
    async fn drop_staging(&self, area: &[u8], opened: &[u8]) {
        loop {
            let page = match self.engine.scan(area, None, DROP_PAGE) {
                Ok(page) if !page.is_empty() => page,
                _ => break,
            };
            let txn = page
                .into_iter()
                .fold(Txn::new(), |txn, (key, _)| txn.delete(key));
            if self.engine.write(txn).await.is_err() {
                tracing::warn!(
                    "a restore's staging could not be removed; the next restore removes it"
                );
                return;
            }
        }
        let _ = self.engine.write(Txn::new().delete(opened.to_vec())).await;
    }

    /// Puts the backup's records under `area` through the log, in bounded batches, each
    /// guarded on `opened` (the staging area's record) being unchanged. Returns how many.
    async fn stage(
        &self,
        file: &mut std::fs::File,
        verified: &backup::Verified,
        area: &[u8],
        opened: &[u8],
        guard_revision: u64,
    ) -> Result<u64> {
        let (tx, mut rx) = tokio::sync::mpsc::channel::<Batch>(STAGE_READ_AHEAD);
        let mut reader = file.try_clone().map_err(VaultError::internal)?;
        let (offset, len) = (verified.snapshot_offset, verified.manifest.snapshot.bytes);
        let want_hash = verified.manifest.snapshot.sha256.clone();
        let keep = kept_prefixes();
        let producer = tokio::task::spawn_blocking(move || {
            reader.rewind().map_err(VaultError::internal)?;
            let section = SectionReader::new(&mut reader, offset, len)
                .map_err(|e| VaultError::InvalidRequest(e.to_string()))?;
            // Hashed again as it is read: a file changed after it was verified is refused.
            let mut hashing = backup::HashingReader::new(section);
            let mut batch = Batch::new();
            let mut bytes = 0usize;
            let mut stopped = false;
            coffer_raft::scan_snapshot(&mut hashing, &mut |key, entry| {
                // Kept keys stay as they are; another restore's staging (a backup taken while
                // one ran) means nothing here.
                if stopped
                    || keep.iter().any(|k| key.starts_with(k))
                    || key.starts_with(coffer_raft::STAGING_PREFIX)
                {
                    return;
                }
                bytes += key.len() + entry.value.len();
                batch.push((key.to_vec(), entry.value.clone()));
                if bytes >= STAGE_BATCH_BYTES {
                    bytes = 0;
                    stopped = tx.blocking_send(std::mem::take(&mut batch)).is_err();
                }
            })
            .map_err(|e| VaultError::InvalidRequest(format!("the snapshot inside: {e}")))?;
            if hashing.finish() != want_hash {
                return Err(VaultError::InvalidRequest(
                    "the snapshot changed while it was restored; nothing was replaced".into(),
                ));
            }
            if !batch.is_empty() {
                let _ = tx.blocking_send(batch);
            }
            Ok(())
        });
        let mut staged = 0u64;
        while let Some(batch) = rx.recv().await {
            let mut txn = Txn::new().when(opened.to_vec(), Check::Revision(guard_revision));
            for (key, value) in batch {
                let mut staged_key = area.to_vec();
                staged_key.extend_from_slice(&key);
                txn = txn.put(staged_key, value);
                staged += 1;
            }
            if !self.engine.write(txn).await?.succeeded {
                return Err(VaultError::Unavailable(
                    "another restore committed while this one was staging; nothing was replaced"
                        .into(),
                ));
            }
        }
        producer.await.map_err(VaultError::internal)??;
        Ok(staged)
    }
}
