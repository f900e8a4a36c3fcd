//! Restoring a backup into the running cluster: `POST sys/storage/raft/snapshot` and
//! `sys/storage/raft/snapshot-force`, with Vault's semantics, replicated to every member.
//!
//! The backup is verified whole first (no key needed), then checked against this cluster:
//! the plain restore takes only a backup of this cluster (same cluster id) made under its
//! keys (the backup's MAC is this keyring's, and every keyring term the backup holds is
//! one of ours); the forced one takes any verified backup. Its records are then staged through the Raft log in bounded transactions and swapped in by
//! one replace entry that every member applies alike (see `coffer_raft`'s `Op::Replace`).
//!
//! What a restore does not roll back, because rolling it back would lose something the
//! cluster promised: the seal and keyring (under the same keys), the
//! cluster CA and the bootstrap packs it issued (members and joins keep working), the
//! audit spool's keys, and the whole audit log (every access, the ones after the backup
//! included, stays on record, and the restore itself is recorded). Memberships are Raft's
//! and are not in a backup. Everything else (secrets, mounts, policies, users, tokens) is
//! the backup's.
//!
//! A backup made under other keys is taken only by the forced restore, with Vault's
//! outcome: the cluster then holds the backup's keyring and seal, every member seals
//! itself, and the backup's unseal shares open it. What the restore kept (the audit log,
//! the CA, packs, the spool key) is still sealed under the cluster's previous keyring; that
//! keyring goes along wrapped by a one-time key, and the one-time key is sealed to the
//! backup's audit spool public key, whose private half only the backup's keyring opens. At
//! the first unseal with the backup's shares the kept records are sealed again under the
//! restored keyring, and the audit log's keys (its chain MAC and accessor HMAC keys) are
//! carried over as they were, so the log made before the restore still verifies.

use std::io::{Read, Seek};

use sha2::{Digest, Sha256};

use super::auth::Auth;
use super::{Sealing, Vault};
use crate::audit::{AuditEvent, Outcome, Stage, Who};
use crate::crypto::keyring::Keyring;
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
        crate::keys::AUDIT_KEYS.to_vec(),
        crate::keys::CARRY.as_bytes().to_vec(),
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
    /// Whether it was forced.
    pub forced: bool,
    /// It was made under other keys: every member seals itself, and the backup's unseal
    /// shares unseal them.
    pub sealed: bool,
}

/// A staging batch: (key, value) records.
type Batch = Vec<(Vec<u8>, Vec<u8>)>;

/// Records resealed per transaction when a forced restore finishes.
const RESEAL_PAGE: usize = 256;
/// The (node, seq) a carry key is sealed as (no spool record has this node id).
const CARRY_NODE: u64 = u64::MAX;
const CARRY_SEQ: u64 = 0;

/// What a backup holds about its keys, collected as it is verified.
#[derive(Default)]
struct BackupKeys {
    keyring: Option<Vec<u8>>,
    seal: Option<Vec<u8>>,
    spool_public: Option<Vec<u8>>,
    spool_secret: Option<Vec<u8>>,
}

impl BackupKeys {
    fn visit(&mut self, key: &[u8], value: &[u8]) {
        let slot = match key {
            k if k == crate::keys::KEYRING => &mut self.keyring,
            k if k == crate::keys::SEAL_CONFIG => &mut self.seal,
            k if k == crate::keys::SPOOL_PUBLIC_KEY => &mut self.spool_public,
            k if k == crate::keys::SPOOL_SECRET_KEY => &mut self.spool_secret,
            _ => return,
        };
        *slot = Some(value.to_vec());
    }
}

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
        let (verified, theirs, mut file) = tokio::task::spawn_blocking(move || {
            let mut file = file;
            let mut theirs = BackupKeys::default();
            let verified = backup::open(&mut file, &mut |key, value| theirs.visit(key, value))
                .map_err(|e| VaultError::InvalidRequest(format!("the snapshot is refused: {e}")))?;
            Ok::<_, VaultError>((verified, theirs, file))
        })
        .await
        .map_err(VaultError::internal)??;
        let manifest = verified.manifest.clone();
        let same_keys = self.check_restorable(&verified, &theirs, force)?;
        // Under other keys: what the swap writes besides the backup's records.
        let carry = if same_keys {
            None
        } else {
            Some(self.carry_ops(&verified, &theirs, auth)?)
        };

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
                let _ = self
                    .engine
                    .write(Txn::new().delete_prefix(area.clone()).delete(opened_key))
                    .await;
                return Err(e);
            }
        };

        // The swap: guarded on the staging area, and on the seal and keyring not having
        // changed since they were checked.
        let seal = self.engine.get(crate::keys::SEAL_CONFIG)?;
        let ring = self.engine.get(crate::keys::KEYRING)?;
        let mut ops = vec![coffer_raft::Op::Replace {
            staged: area.clone(),
            keep: kept_prefixes(),
        }];
        ops.extend(carry.clone().unwrap_or_default());
        let commit = Txn {
            compares: Vec::new(),
            ops,
        }
        .when(opened_key, Check::Revision(guard_revision))
        .unchanged(crate::keys::SEAL_CONFIG, seal.as_ref())
        .unchanged(crate::keys::KEYRING, ring.as_ref());
        let result = self.engine.write(commit).await?;
        if !result.succeeded {
            let _ = self
                .engine
                .write(Txn::new().delete_prefix(area.clone()))
                .await;
            return Err(VaultError::Unavailable(
                "the restore was overtaken (another restore, or a key rotation, committed \
                 first); nothing was replaced"
                    .into(),
            ));
        }
        if carry.is_some() {
            tracing::warn!(
                "the restored backup was made under other keys: every member seals itself; \
                 unseal each with the backup's shares"
            );
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
            sealed: carry.is_some(),
        })
    }

    /// Whether a verified backup may replace this cluster's state (see the module's notes):
    /// `Ok(true)` when it was made under this cluster's keys, `Ok(false)` when under other
    /// keys and forced.
    fn check_restorable(
        &self,
        verified: &backup::Verified,
        theirs: &BackupKeys,
        force: bool,
    ) -> Result<bool> {
        let live = self.seal_config()?.ok_or(VaultError::NotInitialized)?;
        let their_id = &verified.manifest.cluster_id;
        if !force && *their_id != live.cluster_id {
            return Err(VaultError::InvalidRequest(format!(
                "the snapshot is of cluster {their_id}, and this is cluster {}: refusing to \
                 replace this cluster's state with another's (sys/storage/raft/snapshot-force \
                 takes it)",
                live.cluster_id
            )));
        }
        let ring = self.keyring()?;
        let same_keys =
            backup::mac_matches(&ring.derive(MAC_PURPOSE), &verified.digest, &verified.mac)
                && theirs.keyring.as_deref().is_some_and(|wrapped| {
                    let guard = self.sealing.read();
                    let Ok(Sealing::Unsealed { root, keyring, .. }) = guard.as_deref() else {
                        return false;
                    };
                    Keyring::unwrap(root, wrapped).is_ok_and(|theirs| keyring.covers(&theirs))
                });
        if !same_keys && !force {
            return Err(VaultError::InvalidRequest(
                "the snapshot was not made under this cluster's keys (or it was altered); \
                 sys/storage/raft/snapshot-force restores it, after which every member is \
                 sealed until the snapshot's unseal keys are given"
                    .into(),
            ));
        }
        Ok(same_keys)
    }

    /// The writes that follow the swap of a backup made under other keys: its keyring and
    /// seal (under this cluster's id and name), the carried keyring, the key that opens it
    /// sealed to the backup's spool key, and the restore marker the first unseal finishes.
    fn carry_ops(
        &self,
        verified: &backup::Verified,
        theirs: &BackupKeys,
        auth: &Auth,
    ) -> Result<Vec<coffer_raft::Op>> {
        let incomplete = || {
            VaultError::InvalidRequest(
                "the snapshot lacks its keyring, seal configuration or audit spool keys".into(),
            )
        };
        let (Some(keyring), Some(seal), Some(spool_public), Some(spool_secret)) = (
            theirs.keyring.clone(),
            theirs.seal.as_deref(),
            theirs.spool_public.as_deref(),
            theirs.spool_secret.clone(),
        ) else {
            return Err(incomplete());
        };
        let spool_public: [u8; 32] = spool_public.try_into().map_err(|_| incomplete())?;
        let live = self.seal_config()?.ok_or(VaultError::NotInitialized)?;
        let mut seal: crate::rules::seal::SealConfig =
            serde_json::from_slice(seal).map_err(|_| incomplete())?;
        seal.cluster_id = live.cluster_id.clone();
        seal.cluster_name = live.cluster_name.clone();
        let one_time = crate::crypto::Key::generate();
        let carried = self.keyring()?.wrap(&one_time);
        let sealed_key = crate::audit::sealing::BatchSealer::new(&spool_public).seal(
            CARRY_NODE,
            CARRY_SEQ,
            one_time.expose(),
        );
        let marker = super::RestoreMarker {
            kind: "live restore (forced, other keys)".into(),
            at: crate::clock::rfc3339(crate::clock::now()),
            by: auth.actor().to_string(),
            reason: "sys/storage/raft/snapshot-force".into(),
            source: format!("backup sha256 {}", hex::encode(verified.digest)),
            old_cluster_id: verified.manifest.cluster_id.clone(),
            cluster_id: live.cluster_id,
            backup_sha256: Some(hex::encode(verified.digest)),
            backup_mac: Some(hex::encode(verified.mac)),
            new_ca: false,
            live: true,
            carry: true,
        };
        let put = |key: &[u8], value: Vec<u8>| coffer_raft::Op::Put {
            key: key.to_vec(),
            value,
        };
        Ok(vec![
            put(crate::keys::KEYRING, keyring),
            put(
                crate::keys::SEAL_CONFIG,
                serde_json::to_vec(&seal).map_err(VaultError::internal)?,
            ),
            put(crate::keys::CARRY_KEYRING, carried),
            put(crate::keys::CARRY_KEY, sealed_key.into_bytes()),
            put(crate::keys::CARRY_OPENER, spool_secret),
            put(
                crate::keys::RESTORED,
                serde_json::to_vec(&marker).map_err(VaultError::internal)?,
            ),
        ])
    }

    /// The cluster's keyring from before a forced restore under other keys, while the
    /// restore is not finished (`ring` is the restored keyring, unsealed).
    pub(crate) fn carried_keyring(&self, ring: &Keyring) -> Result<Option<Keyring>> {
        let Some(sealed_key) = self.engine.get(crate::keys::CARRY_KEY)? else {
            return Ok(None);
        };
        let broken = |what: &str| VaultError::internal(format!("the carried keyring: {what}"));
        let opener = self
            .engine
            .get(crate::keys::CARRY_OPENER)?
            .ok_or_else(|| broken("its opener is missing"))?;
        let json = ring
            .open(crate::keys::SPOOL_SECRET_KEY, &opener.value)
            .map_err(|_| broken("its opener does not open under the restored keyring"))?;
        let hex_key = zeroize::Zeroizing::new(
            serde_json::from_slice::<String>(&json).map_err(|_| broken("its opener"))?,
        );
        let bytes = zeroize::Zeroizing::new(
            hex::decode(hex_key.as_str()).map_err(|_| broken("its opener"))?,
        );
        let secret: [u8; 32] = bytes
            .as_slice()
            .try_into()
            .map_err(|_| broken("its opener"))?;
        let spool_key = crate::audit::sealing::SpoolKey::from_bytes(secret);
        let sealed = String::from_utf8(sealed_key.value).map_err(|_| broken("its key"))?;
        let one_time = spool_key
            .open(CARRY_NODE, CARRY_SEQ, &sealed)
            .map_err(|_| broken("its key does not open"))?;
        let one_time =
            crate::crypto::Key::from_slice(&one_time).ok_or_else(|| broken("its key"))?;
        let wrapped = self
            .engine
            .get(crate::keys::CARRY_KEYRING)?
            .ok_or_else(|| broken("it is missing"))?;
        Keyring::unwrap(&one_time, &wrapped.value)
            .map(Some)
            .map_err(|_| broken("it does not open"))
    }

    /// Seals every record a forced restore kept under the previous keyring again under the
    /// restored one, page by page, each write guarded on the record being unchanged (two
    /// nodes finishing at once do the same work, never different work).
    pub(crate) async fn reseal_carried(&self) -> Result<()> {
        let ring = self.keyring()?;
        let Some(old) = self.carried_keyring(&ring)? else {
            return Ok(());
        };
        let reseal = |entries: Vec<(Vec<u8>, coffer_raft::KvEntry)>| {
            let mut txn = Txn::new();
            for (key, entry) in entries {
                if let Ok(plain) = old.open(&key, &entry.value) {
                    let sealed = ring.seal(&key, &plain);
                    txn = txn.unchanged(key.clone(), Some(&entry)).put(key, sealed);
                }
            }
            txn
        };
        let mut resealed = 0usize;
        let mut pages = Vec::new();
        for key in [
            crate::keys::CA,
            crate::keys::SPOOL_SECRET_KEY,
            crate::keys::AUDIT_KEYS,
        ] {
            if let Some(entry) = self.engine.get(key)? {
                pages.push(vec![(key.to_vec(), entry)]);
            }
        }
        for page in pages {
            let txn = reseal(page);
            resealed += txn.ops.len();
            if !txn.ops.is_empty() {
                self.engine.write(txn).await?;
            }
        }
        for prefix in [b"audit/".as_slice(), crate::keys::PACKS.as_bytes()] {
            let mut after: Option<Vec<u8>> = None;
            loop {
                let page = self.engine.scan(prefix, after.as_deref(), RESEAL_PAGE)?;
                let Some((last, _)) = page.last() else {
                    break;
                };
                after = Some(last.clone());
                let txn = reseal(page);
                resealed += txn.ops.len();
                if !txn.ops.is_empty() && !self.engine.write(txn).await?.succeeded {
                    return Err(VaultError::Unavailable(
                        "records changed while they were sealed again; trying again".into(),
                    ));
                }
            }
        }
        tracing::info!(
            records = resealed,
            "records kept by the forced restore are sealed under the restored keyring"
        );
        Ok(())
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
            let mut hashing = Rehashing::new(section);
            let mut batch = Batch::new();
            let mut bytes = 0usize;
            let mut stopped = false;
            coffer_raft::scan_snapshot(&mut hashing, &mut |key, entry| {
                if stopped || keep.iter().any(|k| key.starts_with(k)) {
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
            if hex::encode(hashing.hasher.finalize()) != want_hash {
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

/// The backup's snapshot section, hashed as it is read from its start (a scan seeks to the
/// end for its length, then reads from the start once).
struct Rehashing<R> {
    inner: R,
    hasher: Sha256,
}

impl<R> Rehashing<R> {
    fn new(inner: R) -> Self {
        Self {
            inner,
            hasher: Sha256::new(),
        }
    }
}

impl<R: Read> Read for Rehashing<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
}

impl<R: Seek> Seek for Rehashing<R> {
    fn seek(&mut self, pos: std::io::SeekFrom) -> std::io::Result<u64> {
        let at = self.inner.seek(pos)?;
        if at == 0 {
            self.hasher = Sha256::new();
        }
        Ok(at)
    }
}
