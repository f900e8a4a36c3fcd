//! Backups: a consistent point-in-time copy of this node's state (any unsealed node, a
//! read-only standby included) written as a backup file ([`crate::rules::backup`]), and
//! what a restored node finishes at its first unseal (the backup's MAC, the new cluster's
//! CA, the record of the restore).
//!
//! Memory stays bounded whatever the state's size: the engine's snapshot is a file, read
//! in passes (count, hash, copy), never held whole.

use std::io::{Read, Seek, SeekFrom, Write};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::auth::Auth;
use super::{StoredCa, Vault};
use crate::audit::{AuditEvent, Outcome, Stage, Who};
use crate::error::{Result, VaultError};
use crate::rules::backup::{self, Manifest, SealSummary, Section, FORMAT, MAC_PURPOSE};
use crate::rules::policy::Capability;

/// Copy buffer for the snapshot passes.
const COPY_CHUNK_BYTES: usize = 1 << 20;
/// How long a backup waits for this node's audit records to be merged first.
const BACKUP_MERGE_WAIT: std::time::Duration = std::time::Duration::from_secs(5);
/// How often it looks.
const BACKUP_MERGE_POLL: std::time::Duration = std::time::Duration::from_millis(20);
/// Scheduled backup files are named `PREFIX<node>-<time>.snap`.
const SCHEDULED_PREFIX: &str = "coffer-node";
/// Their extension.
const SCHEDULED_SUFFIX: &str = ".snap";

/// Scheduled backups: every `interval`, into `dir`, keeping this node's newest `keep`.
#[derive(Clone, Debug)]
pub struct BackupSchedule {
    /// Where the files go.
    pub dir: std::path::PathBuf,
    /// How often.
    pub interval: std::time::Duration,
    /// How many of this node's files to keep.
    pub keep: usize,
}

/// How scheduled backups went (`sys/health`'s `last_backup`, `sys/metrics`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackupRecord {
    /// When the last one succeeded (Unix seconds).
    pub last_success_unix: Option<i64>,
    /// Its file.
    pub last_file: Option<String>,
    /// The last failure, until a backup succeeds again.
    pub last_error: Option<String>,
    /// Failures since start.
    pub failures: u64,
}

/// Left in the state by an offline restore or a forced recovery (plaintext: it is written
/// without the keys), until the first unseal finishes the restore.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RestoreMarker {
    /// `backup`, `data-dir` or `recover`.
    pub kind: String,
    /// When (RFC 3339).
    pub at: String,
    /// Who ran it (the operating-system user, or `--operator`).
    pub by: String,
    /// Why, as the operator said.
    pub reason: String,
    /// The backup file or data directory it came from.
    pub source: String,
    /// The cluster id before.
    pub old_cluster_id: String,
    /// The cluster id now (a new epoch unless `--keep-cluster-id`).
    pub cluster_id: String,
    /// The backup's checksum (hex), when restored from a backup.
    pub backup_sha256: Option<String>,
    /// The backup's MAC (hex), checked at the first unseal.
    pub backup_mac: Option<String>,
    /// The node made a new CA (on disk until the first unseal moves it into the state).
    pub new_ca: bool,
}

impl Vault {
    /// `GET sys/storage/raft/snapshot` and `operator snapshot save`: writes a backup of this
    /// node's state to `out` (sudo on `sys/storage/raft/snapshot`).
    pub async fn backup(&self, auth: &Auth, out: &mut std::fs::File) -> Result<Manifest> {
        auth.require_sudo("sys/storage/raft/snapshot", Capability::Read)?;
        self.write_backup(out).await
    }

    /// Writes a backup of this node's state to `out` (no ACL: scheduled backups are the
    /// node's own). Needs the keyring, for the MAC.
    pub async fn write_backup(&self, out: &mut std::fs::File) -> Result<Manifest> {
        let keyring = self.keyring()?;
        let mac_key = keyring.derive(MAC_PURPOSE);
        self.merge_own_audit_first().await;
        let snapshot = self.engine.snapshot_file().await?;
        let node = self.node_status();
        let base = ManifestBase {
            cluster_name: self.node.cluster_name.clone(),
            node_id: self.node.node_id,
            node_mode: self.mode().to_string(),
            last_contact_ms: node.last_contact_ms,
        };
        let mut out = out.try_clone().map_err(VaultError::internal)?;
        tokio::task::spawn_blocking(move || {
            let copy = snapshot.try_clone().map_err(VaultError::internal)?;
            let manifest = describe(copy, base)?;
            write_file(snapshot, &manifest, &mac_key, &mut out)?;
            Ok(manifest)
        })
        .await
        .map_err(VaultError::internal)?
    }

    /// How scheduled backups went, when there is a schedule.
    pub fn backup_record(&self) -> Option<BackupRecord> {
        self.backups.lock().ok().and_then(|b| b.clone())
    }

    /// The scheduled backups task: every `interval`, while unsealed (a sealed node has no
    /// key for the MAC and skips the turn), writes a backup atomically and rotates. A failure
    /// is logged and shown in `sys/health` and `sys/metrics`; the next turn tries again.
    pub async fn run_backup_schedule(self: std::sync::Arc<Self>, schedule: BackupSchedule) {
        let previous = newest_scheduled(&schedule.dir, self.node.node_id);
        if let Ok(mut b) = self.backups.lock() {
            *b = Some(BackupRecord {
                last_success_unix: previous.as_ref().map(|(_, at)| *at),
                last_file: previous.map(|(p, _)| p.display().to_string()),
                ..Default::default()
            });
        }
        let mut tick = tokio::time::interval(schedule.interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tick.tick().await;
            if self.is_sealed() {
                tracing::debug!("scheduled backup skipped: the vault is sealed");
                continue;
            }
            let outcome = self.scheduled_backup(&schedule).await;
            let Ok(mut b) = self.backups.lock() else {
                return;
            };
            let record = b.get_or_insert_with(Default::default);
            match outcome {
                Ok((path, manifest)) => {
                    tracing::info!(
                        file = %path.display(),
                        index = manifest.applied_index,
                        "scheduled backup written"
                    );
                    record.last_success_unix = Some(crate::clock::now().unix_timestamp());
                    record.last_file = Some(path.display().to_string());
                    record.last_error = None;
                }
                Err(e) => {
                    tracing::error!("scheduled backup failed: {e}");
                    record.last_error = Some(e.to_string());
                    record.failures += 1;
                }
            }
        }
    }

    /// One scheduled backup: written to a hidden `.part` file, synced, renamed, the directory
    /// synced; then this node's files beyond `keep` are removed, oldest first.
    async fn scheduled_backup(
        &self,
        schedule: &BackupSchedule,
    ) -> Result<(std::path::PathBuf, Manifest)> {
        let dir = &schedule.dir;
        create_private_dir(dir)?;
        let stamp = crate::clock::now()
            .format(&time::macros::format_description!(
                "[year][month][day]T[hour][minute][second]Z"
            ))
            .map_err(VaultError::internal)?;
        let name = format!(
            "{SCHEDULED_PREFIX}{}-{stamp}{SCHEDULED_SUFFIX}",
            self.node.node_id
        );
        let path = dir.join(&name);
        let part = dir.join(format!(".{name}.part"));
        let written = async {
            let mut file = private_file(&part)?;
            let manifest = self.write_backup(&mut file).await?;
            file.sync_all().map_err(VaultError::internal)?;
            std::fs::rename(&part, &path).map_err(VaultError::internal)?;
            std::fs::File::open(dir)
                .and_then(|d| d.sync_all())
                .map_err(VaultError::internal)?;
            Ok::<_, VaultError>(manifest)
        }
        .await;
        let manifest = match written {
            Ok(m) => m,
            Err(e) => {
                let _ = std::fs::remove_file(&part);
                return Err(e);
            }
        };
        rotate(dir, self.node.node_id, schedule.keep);
        Ok((path, manifest))
    }

    /// Whether this node was restored and has not finished it yet.
    pub fn restore_marker(&self) -> Result<Option<RestoreMarker>> {
        let Some(entry) = self.engine.get(crate::keys::RESTORED)? else {
            return Ok(None);
        };
        serde_json::from_slice(&entry.value)
            .map(Some)
            .map_err(VaultError::internal)
    }

    /// At unseal, before the keyring is taken: a restore from a backup is refused if the
    /// backup's MAC is not this keyring's (the file was altered and its checksum recomputed,
    /// or it is another cluster's state under another root key).
    pub(crate) fn check_restored_backup(
        &self,
        keyring: &crate::crypto::keyring::Keyring,
    ) -> Result<()> {
        let Some(marker) = self.restore_marker()? else {
            return Ok(());
        };
        let (Some(sha), Some(tag)) = (&marker.backup_sha256, &marker.backup_mac) else {
            return Ok(());
        };
        let digest: Option<[u8; 32]> = hex::decode(sha).ok().and_then(|d| d.try_into().ok());
        let tag: Option<[u8; 32]> = hex::decode(tag).ok().and_then(|d| d.try_into().ok());
        let key = keyring.derive(MAC_PURPOSE);
        match (digest, tag) {
            (Some(d), Some(t)) if backup::mac_matches(&key, &d, &t) => Ok(()),
            _ => Err(VaultError::Forbidden(
                "the restored data does not match its backup's authentication: the backup was \
                 altered, or its keys are not these; the node stays sealed"
                    .into(),
            )),
        }
    }

    /// After the first unseal of a restored node: moves the new cluster's CA (`pending_ca`,
    /// made by the restore) into the state, audits the restore, and clears the marker, in one
    /// transaction. Returns whether the pending CA was taken (its key file can go). Does
    /// nothing on a node that was not restored; a crash before it ends leaves the marker, and
    /// the next unseal finishes.
    pub async fn finish_restore(&self, pending_ca: Option<&StoredCa>) -> Result<bool> {
        let Some(marker) = self.restore_marker()? else {
            return Ok(false);
        };
        let ca = match (marker.new_ca, pending_ca) {
            (true, Some(ca)) => Some(ca),
            (true, None) => {
                return Err(VaultError::internal(
                    "a restore made a new CA but its files are gone from tls/",
                ))
            }
            (false, _) => None,
        };
        let event = AuditEvent {
            detail: format!(
                "{} from {} by {} (reason: {}); cluster {} -> {}",
                marker.kind,
                marker.source,
                marker.by,
                marker.reason,
                marker.old_cluster_id,
                marker.cluster_id
            ),
            ..AuditEvent::new(
                Stage::Event,
                Who {
                    name: marker.by.clone(),
                    method: "restore".into(),
                    client_addr: "local".into(),
                    ..Default::default()
                },
                "restore.finish",
                "sys/storage/raft/snapshot",
                Outcome::Ok,
            )
        };
        self.audit(event).await?;
        let ring = self.keyring()?;
        let mut txn = coffer_raft::Txn::new().delete(crate::keys::RESTORED);
        for (node, epoch_id, lost) in self.unrestorable_audit(&marker)? {
            tracing::error!(
                node,
                epoch = %epoch_id,
                "audit records {}..={} were anchored but are not in the restored state, and their spool was not restored: declared lost",
                lost.from,
                lost.to
            );
            let key = crate::keys::audit_lost(node, &epoch_id);
            txn = txn.put(key.clone(), super::records::seal_json(&ring, &key, &lost)?);
        }
        if let Some(ca) = ca {
            txn = txn.put(
                super::CA_KEY,
                super::records::seal_json(&ring, super::CA_KEY, ca)?,
            );
        }
        self.engine.write(txn).await?;
        tracing::info!(kind = %marker.kind, "restore finished");
        // The audit chains the restore brought back, checked once with the keys: the result
        // is in the log (and `audit verify` says the same at any time).
        match self.verify_audit_chains() {
            Ok(report) if report.ok => tracing::info!(
                chains = report.merged.len(),
                "restored audit chains verified: no gaps, forks or tampered records"
            ),
            Ok(report) => {
                for p in report
                    .merged
                    .iter()
                    .flat_map(|m| &m.problems)
                    .chain(&report.spool.problems)
                {
                    tracing::error!(
                        node = p.node,
                        seq = p.seq,
                        kind = %p.kind,
                        "restored audit chain: {}",
                        p.detail
                    );
                }
            }
            Err(e) => tracing::error!("verifying the restored audit chains: {e}"),
        }
        Ok(ca.is_some())
    }
}

fn create_private_dir(dir: &std::path::Path) -> Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    if dir.is_dir() {
        return Ok(());
    }
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| VaultError::internal(format!("creating {}: {e}", dir.display())))
}

fn private_file(path: &std::path::Path) -> Result<std::fs::File> {
    coffer_tls::create_private(path)
        .map_err(|e| VaultError::internal(format!("{}: {e}", path.display())))
}

/// This node's scheduled backups in `dir`, oldest first (their names sort by time).
fn scheduled_files(dir: &std::path::Path, node_id: u64) -> Vec<std::path::PathBuf> {
    let prefix = format!("{SCHEDULED_PREFIX}{node_id}-");
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            name.starts_with(&prefix) && name.ends_with(SCHEDULED_SUFFIX)
        })
        .map(|e| e.path())
        .collect();
    files.sort();
    files
}

/// The newest scheduled backup of this node and its time (after a restart, the schedule's
/// record starts from it).
fn newest_scheduled(dir: &std::path::Path, node_id: u64) -> Option<(std::path::PathBuf, i64)> {
    let path = scheduled_files(dir, node_id).pop()?;
    let modified = std::fs::metadata(&path).ok()?.modified().ok()?;
    let secs = modified
        .duration_since(std::time::UNIX_EPOCH)
        .ok()?
        .as_secs();
    Some((path, i64::try_from(secs).ok()?))
}

/// Removes this node's scheduled backups beyond the newest `keep`, and leftover `.part`
/// files of its interrupted ones.
fn rotate(dir: &std::path::Path, node_id: u64, keep: usize) {
    let files = scheduled_files(dir, node_id);
    let excess = files.len().saturating_sub(keep);
    for old in &files[..excess] {
        if let Err(e) = std::fs::remove_file(old) {
            tracing::warn!(file = %old.display(), "removing an old backup: {e}");
        }
    }
    let part_prefix = format!(".{SCHEDULED_PREFIX}{node_id}-");
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with(&part_prefix) && name.ends_with(".part") {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

impl Vault {
    /// The audit records a restored state cannot have: anchored (the cluster knew they were
    /// durable on their node), never merged, in a spool that did not come with the restore
    /// (every epoch but this node's current one, which a data-dir restore carries over).
    fn unrestorable_audit(
        &self,
        marker: &RestoreMarker,
    ) -> Result<Vec<(u64, String, super::LostAudit)>> {
        let mut out = Vec::new();
        for c in self.epoch_cursors(None)? {
            if c.node == self.spool.node() && c.epoch_id == self.spool.epoch() {
                continue;
            }
            let Some(anchor) = self.anchor(c.node, &c.epoch_id)? else {
                continue;
            };
            if anchor.seq > c.cursor {
                out.push((
                    c.node,
                    c.epoch_id.clone(),
                    super::LostAudit {
                        from: c.cursor + 1,
                        to: anchor.seq,
                        restore: format!("{} from {}", marker.kind, marker.source),
                        at: marker.at.clone(),
                    },
                ));
            }
        }
        Ok(out)
    }

    /// Before a backup on a node that can write: waits (briefly) until this node's own audit
    /// records so far, the backup's request record among them, are merged, so the backup
    /// holds them. A read-only standby cannot merge; its backup says how stale it is.
    async fn merge_own_audit_first(&self) {
        if self.engine.mode() == coffer_raft::NodeMode::ReadOnly {
            return;
        }
        let target = self.spool.last_seq();
        let deadline = tokio::time::Instant::now() + BACKUP_MERGE_WAIT;
        while self.own_audit_cursor().unwrap_or(0) < target {
            if tokio::time::Instant::now() >= deadline {
                tracing::warn!(
                    "backup: this node's audit records up to {target} are not all merged yet; the backup may lack the newest"
                );
                return;
            }
            tokio::time::sleep(BACKUP_MERGE_POLL).await;
        }
    }
}

/// What the manifest takes from the running node.
struct ManifestBase {
    cluster_name: String,
    node_id: u64,
    node_mode: String,
    last_contact_ms: u64,
}

/// The manifest of `snapshot`: counts and seal configuration from its records, its hash.
fn describe(mut snapshot: std::fs::File, base: ManifestBase) -> Result<Manifest> {
    let backup::StateSummary {
        header,
        counts,
        seal,
    } = backup::summarize(&mut snapshot, &mut |_, _| {}).map_err(VaultError::internal)?;
    let seal =
        seal.ok_or_else(|| VaultError::internal("the snapshot holds no seal configuration"))?;
    let (bytes, sha256) = hash_file(&mut snapshot)?;
    let applied = header.last_applied;
    Ok(Manifest {
        format: FORMAT,
        cluster_id: seal.cluster_id.clone(),
        cluster_name: base.cluster_name,
        node_id: base.node_id,
        node_mode: base.node_mode,
        last_contact_ms: base.last_contact_ms,
        applied_index: applied.map_or(0, |l| l.index),
        applied_term: applied.map_or(0, |l| l.leader_id.term),
        revision: header.revision,
        created_at: crate::clock::rfc3339(crate::clock::now()),
        counts,
        seal: SealSummary::from(&seal),
        snapshot: Section {
            bytes,
            sha256: hex::encode(sha256),
        },
    })
}

/// The length and SHA-256 of a whole file.
fn hash_file(file: &mut std::fs::File) -> Result<(u64, [u8; 32])> {
    file.seek(SeekFrom::Start(0))
        .map_err(VaultError::internal)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; COPY_CHUNK_BYTES];
    let mut total = 0u64;
    loop {
        let n = file.read(&mut buf).map_err(VaultError::internal)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        total += n as u64;
    }
    Ok((total, hasher.finalize().into()))
}

/// Writes the backup file: header, snapshot, checksum, MAC.
fn write_file(
    mut snapshot: std::fs::File,
    manifest: &Manifest,
    mac_key: &crate::crypto::Key,
    out: &mut std::fs::File,
) -> Result<()> {
    let io = VaultError::internal;
    let mut hasher = Sha256::new();
    let mut out = std::io::BufWriter::with_capacity(COPY_CHUNK_BYTES, out);
    let header = backup::header_bytes(manifest);
    hasher.update(&header);
    out.write_all(&header).map_err(io)?;
    snapshot.seek(SeekFrom::Start(0)).map_err(io)?;
    let mut buf = vec![0u8; COPY_CHUNK_BYTES];
    let mut copied = 0u64;
    loop {
        let n = snapshot.read(&mut buf).map_err(io)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        out.write_all(&buf[..n]).map_err(io)?;
        copied += n as u64;
    }
    if copied != manifest.snapshot.bytes {
        return Err(VaultError::internal(
            "the snapshot changed while it was copied",
        ));
    }
    let digest: [u8; 32] = hasher.finalize().into();
    out.write_all(&digest).map_err(io)?;
    out.write_all(&backup::mac(mac_key, &digest)).map_err(io)?;
    out.flush().map_err(io)?;
    Ok(())
}
