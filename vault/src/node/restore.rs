//! Disaster recovery, offline: `operator restore` (from a backup file, or from a surviving
//! node's data directory) and `operator recover --force-new-cluster` (a stopped survivor
//! becomes the single voter of a new epoch, in place).
//!
//! Each builds the new node in a staging directory beside the target and renames it into
//! place only when everything is written and synced: a failure leaves nothing half-made,
//! and the source is never written to. The result is a one-voter cluster that starts like
//! any founded node; its first unseal (with the original shares) finishes the restore
//! (`Vault::finish_restore`).
//!
//! A new epoch (the default) means a new cluster id and no pending packs: the old cluster's
//! members, packs and certificates are refused by the new one. A restore from a backup also
//! makes a new CA, since the old CA's key is sealed inside the state; a restore from a data
//! directory, and a recovery, keep the survivor's certificates and CA, so clients need no
//! new CA file.

use std::path::{Path, PathBuf};
use std::time::Duration;

use coffer_raft::{Engine, EngineConfig, NoPeers, NodeAddr, Op, RaftTuning};
use zeroize::Zeroizing;

use super::{write_atomic, NodeError, TlsFiles};
use crate::audit::{AuditEvent, Outcome, Spool, Stage, Who};
use crate::keys;
use crate::ops::RestoreMarker;
use crate::rules::backup::{self, BackupError, Counts, SealSummary, SectionReader};
use crate::rules::seal::SealConfig;

/// How long a survivor's copy may take to apply the entries it had committed but not yet
/// applied when it stopped.
const SETTLE_WAIT: Duration = Duration::from_secs(60);
/// How often the settling copy is looked at.
const SETTLE_POLL: Duration = Duration::from_millis(50);
/// Free space needed on the target's file system, as a multiple of the state's size: the
/// snapshot file, the database loaded from it, and the fresh snapshot of the new cluster.
const SPACE_FACTOR: u64 = 3;

/// Where the state comes from.
#[derive(Clone, Debug)]
pub enum RestoreSource {
    /// A backup file (`operator snapshot save`, or a scheduled backup).
    Backup(PathBuf),
    /// A surviving node's data directory (a copy, or the directory itself, node stopped).
    DataDir(PathBuf),
}

/// How to restore.
#[derive(Clone, Debug)]
pub struct RestoreOptions {
    /// The new node's data directory: absent, or empty.
    pub data_dir: PathBuf,
    /// The new node's id (default: 1 from a backup; the survivor's own from a data dir).
    pub node_id: Option<u64>,
    /// Its API address (`https://host:port`).
    pub api_addr: String,
    /// Its peer address (`host:port`).
    pub peer_addr: String,
    /// Keep the cluster id (and pending packs): putting the same cluster back. Default: a
    /// new epoch.
    pub keep_cluster_id: bool,
    /// An old node's `tls/` directory to keep the cluster's CA and that node's certificates
    /// (a restore from a backup otherwise makes a new CA).
    pub tls_from: Option<PathBuf>,
    /// Who runs it (recorded in the audit log).
    pub by: String,
    /// Why (recorded in the audit log).
    pub reason: String,
    /// Seal with this key file instead of shares (`seal = { type = "file" }`).
    pub seal_key_file: Option<PathBuf>,
}

/// What a restore made.
#[derive(Clone, Debug)]
pub struct RestoreSummary {
    /// The new node's id.
    pub node_id: u64,
    /// Its data directory.
    pub data_dir: PathBuf,
    /// Its configuration file.
    pub config: PathBuf,
    /// The CA certificate clients should trust.
    pub ca_cert: PathBuf,
    /// Whether the CA is new (clients need the new `ca_cert`).
    pub new_ca: bool,
    /// The cluster id before and now.
    pub old_cluster_id: String,
    /// See `old_cluster_id`.
    pub cluster_id: String,
    /// What the state holds.
    pub counts: Counts,
    /// The last log index in it.
    pub last_index: u64,
    /// The shares that unseal it.
    pub seal: SealSummary,
    /// Audit records made on the survivor and not yet merged (shipped after the first
    /// unseal).
    pub unmerged_audit: u64,
}

/// Why a restore was refused or failed. The target is untouched in every case.
#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    /// The backup file is not usable.
    #[error("{0}")]
    Backup(#[from] BackupError),
    /// The target directory holds something.
    #[error("{0} is not empty: restore into a new or empty directory (nothing was written)")]
    TargetNotEmpty(PathBuf),
    /// Not enough free space.
    #[error("too little disk space on {path}: the restore needs {need} bytes, {have} are free (nothing was written)")]
    NoSpace {
        /// The file system's directory.
        path: PathBuf,
        /// Bytes needed.
        need: u64,
        /// Bytes free.
        have: u64,
    },
    /// The source data directory is in use.
    #[error("{0} is in use by a running node: stop it first (nothing was written)")]
    SourceInUse(PathBuf),
    /// The source is not a node's data directory.
    #[error("{0}")]
    BadSource(String),
    /// Anything else, with what was being done.
    #[error("{0}")]
    Failed(String),
}

impl From<NodeError> for RestoreError {
    fn from(e: NodeError) -> Self {
        RestoreError::Failed(e.to_string())
    }
}

fn failed(what: &str) -> impl Fn(String) -> RestoreError + '_ {
    move |e| RestoreError::Failed(format!("{what}: {e}"))
}

fn io(what: &str) -> impl Fn(std::io::Error) -> RestoreError + '_ {
    move |e| RestoreError::Failed(format!("{what}: {e}"))
}

/// Progress: a phase's name, and how far it is (done, total).
pub type Progress<'a> = &'a mut dyn FnMut(&str, u64, u64);

/// Restores `source` into `opts.data_dir` (see the module's documentation).
pub async fn restore(
    source: &RestoreSource,
    opts: &RestoreOptions,
    progress: Progress<'_>,
) -> Result<RestoreSummary, RestoreError> {
    let kind = match source {
        RestoreSource::Backup(_) => "backup",
        RestoreSource::DataDir(_) => "data-dir",
    };
    restore_as(kind, source, opts, progress).await
}

async fn restore_as(
    kind: &str,
    source: &RestoreSource,
    opts: &RestoreOptions,
    progress: Progress<'_>,
) -> Result<RestoreSummary, RestoreError> {
    check_target(&opts.data_dir)?;
    let staging = staging_dir(&opts.data_dir)?;
    let result = build(kind, source, opts, &staging, progress).await;
    let summary = match result {
        Ok(summary) => summary,
        Err(e) => {
            let _ = std::fs::remove_dir_all(&staging);
            return Err(e);
        }
    };
    if opts.data_dir.exists() {
        // Empty (checked): rename cannot replace a directory with contents, and this one
        // has none.
        std::fs::remove_dir(&opts.data_dir).map_err(io("replacing the empty target"))?;
    }
    std::fs::rename(&staging, &opts.data_dir).map_err(io("moving the restored node into place"))?;
    sync_dir(opts.data_dir.parent().unwrap_or(Path::new(".")))?;
    Ok(summary)
}

/// `operator recover --force-new-cluster`: turns the stopped node at `data_dir` into the
/// single voter of a new epoch, keeping its data, certificates and unmerged audit. The old
/// directory is kept beside it as `<dir>.before-recover-<time>` until the operator removes it.
pub async fn recover(
    data_dir: &Path,
    opts: &RestoreOptions,
    progress: Progress<'_>,
) -> Result<(RestoreSummary, PathBuf), RestoreError> {
    let data_dir = std::fs::canonicalize(data_dir)
        .map_err(|e| RestoreError::BadSource(format!("{}: {e}", data_dir.display())))?;
    let kept = sibling(&data_dir, &format!("before-recover-{}", unix_secs()));
    let staging_target = sibling(&data_dir, "recovering");
    let inner = RestoreOptions {
        data_dir: staging_target.clone(),
        ..opts.clone()
    };
    let source = RestoreSource::DataDir(data_dir.clone());
    let mut summary = restore_as("recover", &source, &inner, progress).await?;
    if let Err(e) = carry_files(&data_dir, &staging_target) {
        let _ = std::fs::remove_dir_all(&staging_target);
        return Err(e);
    }
    // The configuration written names the staging path; the node will live at `data_dir`.
    rewrite_config_dir(&staging_target, &staging_target, &data_dir)?;
    // One atomic exchange where the file system has it: at every instant `data_dir` is a
    // whole node, the old one or the recovered one.
    if exchange(&data_dir, &staging_target) {
        std::fs::rename(&staging_target, &kept).map_err(io("setting the old directory aside"))?;
    } else {
        std::fs::rename(&data_dir, &kept).map_err(io("setting the old directory aside"))?;
        std::fs::rename(&staging_target, &data_dir)
            .map_err(io("moving the recovered node into place"))?;
    }
    sync_dir(data_dir.parent().unwrap_or(Path::new(".")))?;
    summary.data_dir = data_dir.clone();
    summary.config = data_dir.join("coffer.toml");
    summary.ca_cert = TlsFiles::new(&data_dir).ca();
    Ok((summary, kept))
}

/// The files a node keeps beside its state (its configuration, a key-file seal's key, the
/// operator's own): a recovered node keeps them, the operator's configuration over the one
/// the restore wrote. A pending join's marker stays behind: the node is a founder now.
fn carry_files(old: &Path, new: &Path) -> Result<(), RestoreError> {
    for entry in std::fs::read_dir(old).map_err(io("reading the node's directory"))? {
        let entry = entry.map_err(io("reading the node's directory"))?;
        let name = entry.file_name();
        let is_file = entry.file_type().is_ok_and(|t| t.is_file());
        if !is_file || name == "join-pending.json" || name == "LOCK" {
            continue;
        }
        let to = new.join(&name);
        std::fs::copy(entry.path(), &to).map_err(io("keeping the node's files"))?;
        std::fs::File::open(&to)
            .and_then(|f| f.sync_all())
            .map_err(io("keeping the node's files"))?;
    }
    sync_dir(new)
}

/// Refuses a target that holds anything.
fn check_target(target: &Path) -> Result<(), RestoreError> {
    match std::fs::read_dir(target) {
        Ok(mut entries) => {
            if entries.next().is_some() {
                return Err(RestoreError::TargetNotEmpty(target.to_path_buf()));
            }
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotADirectory => {
            Err(RestoreError::TargetNotEmpty(target.to_path_buf()))
        }
        Err(e) => Err(RestoreError::Failed(format!("{}: {e}", target.display()))),
    }
}

/// A fresh staging directory beside `target` (same file system, so the final rename is
/// atomic).
fn staging_dir(target: &Path) -> Result<PathBuf, RestoreError> {
    let parent = parent_of(target)?;
    std::fs::create_dir_all(&parent).map_err(io("creating the target's parent"))?;
    let staging = sibling(
        target,
        &format!("restoring-{}-{}", std::process::id(), unix_nanos()),
    );
    {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&staging)
            .map_err(io("creating the staging directory"))?;
    }
    Ok(staging)
}

fn parent_of(path: &Path) -> Result<PathBuf, RestoreError> {
    let abs = if path.is_absolute() {
        path.to_path_buf()
    } else {
        std::env::current_dir()
            .map_err(io("resolving the target"))?
            .join(path)
    };
    Ok(abs
        .parent()
        .map_or_else(|| PathBuf::from("/"), Path::to_path_buf))
}

fn sibling(path: &Path, suffix: &str) -> PathBuf {
    let name = path
        .file_name()
        .map_or_else(|| "coffer".into(), |n| n.to_string_lossy().into_owned());
    let parent = path.parent().unwrap_or(Path::new("."));
    parent.join(format!(".{name}.{suffix}"))
}

fn unix_nanos() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos())
}

fn unix_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn sync_dir(dir: &Path) -> Result<(), RestoreError> {
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io("syncing the directory"))
}

/// Free bytes on the file system holding `dir`.
fn free_space(dir: &Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(dir.as_os_str().as_bytes()).ok()?;
    // SAFETY: `statvfs` is a plain C struct for which all-zero is a valid value.
    let mut stat: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: a valid NUL-terminated path and a valid out-pointer for the call's duration.
    let rc = unsafe { libc::statvfs(path.as_ptr(), &mut stat) };
    // Both fields are `u64` on 64-bit Linux (the only target Coffer builds for).
    (rc == 0).then(|| stat.f_bavail.saturating_mul(stat.f_frsize))
}

fn check_space(target: &Path, state_bytes: u64) -> Result<(), RestoreError> {
    let parent = parent_of(target)?;
    let need = state_bytes.saturating_mul(SPACE_FACTOR);
    match free_space(&parent) {
        Some(have) if have < need => Err(RestoreError::NoSpace {
            path: parent,
            need,
            have,
        }),
        _ => Ok(()),
    }
}

/// What the source state says that the new node needs.
#[derive(Default)]
struct Found {
    seal: Option<Vec<u8>>,
    spool_public: Option<[u8; 32]>,
    /// The state is itself a restore never finished (never unsealed).
    unfinished_restore: bool,
}

impl Found {
    fn visit(&mut self, key: &[u8], value: &[u8]) {
        if key == keys::SEAL_CONFIG {
            self.seal = Some(value.to_vec());
        } else if key == keys::SPOOL_PUBLIC_KEY {
            self.spool_public = value.try_into().ok();
        } else if key == keys::RESTORED {
            self.unfinished_restore = true;
        }
    }
}

async fn build(
    kind: &str,
    source: &RestoreSource,
    opts: &RestoreOptions,
    staging: &Path,
    progress: Progress<'_>,
) -> Result<RestoreSummary, RestoreError> {
    let mut found = Found::default();
    let (node_id, counts, last_index, backup_check, source_name, tls_source, unmerged) =
        match source {
            RestoreSource::Backup(path) => {
                let mut file = std::fs::File::open(path)
                    .map_err(|e| RestoreError::BadSource(format!("{}: {e}", path.display())))?;
                let verified = backup::open(&mut file, &mut |k, v| found.visit(k, v))?;
                check_space(&opts.data_dir, verified.manifest.snapshot.bytes)?;
                let section = SectionReader::new(
                    &mut file,
                    verified.snapshot_offset,
                    verified.manifest.snapshot.bytes,
                )?;
                // Hashed again as it is installed: a file changed after it was verified
                // (shared storage) is refused, not installed.
                let mut hashing = backup::HashingReader::new(section);
                coffer_raft::install_seed_snapshot(staging, &mut hashing, &mut |d, t| {
                    progress("loading", d, t)
                })
                .map_err(failed("installing the backup's state"))?;
                if hashing.finish() != verified.manifest.snapshot.sha256 {
                    return Err(RestoreError::Backup(BackupError::Checksum));
                }
                let m = &verified.manifest;
                (
                    opts.node_id.unwrap_or(1),
                    m.counts,
                    m.applied_index,
                    Some((hex::encode(verified.digest), hex::encode(verified.mac))),
                    path.display().to_string(),
                    opts.tls_from.clone(),
                    0,
                )
            }
            RestoreSource::DataDir(old) => {
                let (node_id, counts, last_index) =
                    settle_and_install(old, opts, staging, &mut found, progress).await?;
                let unmerged = copy_spool(old, staging)?;
                let tls = opts
                    .tls_from
                    .clone()
                    .or_else(|| Some(old.join("tls")).filter(|t| t.join("node.pem").exists()));
                (
                    node_id,
                    counts,
                    last_index,
                    None,
                    old.display().to_string(),
                    tls,
                    unmerged,
                )
            }
        };
    if found.unfinished_restore {
        // Its backup's MAC has not been checked yet (that happens at its first unseal), and a
        // second restore must not launder it: finish the first one, or restore the backup.
        return Err(RestoreError::BadSource(
            "the source is itself a restore that was never finished (never unsealed): start and \
             unseal it first, or restore from the original backup"
                .into(),
        ));
    }
    let seal_raw = found.seal.ok_or_else(|| {
        RestoreError::BadSource(
            "the state holds no seal configuration: it was never initialized".into(),
        )
    })?;
    let mut seal: SealConfig = serde_json::from_slice(&seal_raw).map_err(|e| {
        RestoreError::BadSource(format!("the seal configuration is unreadable: {e}"))
    })?;
    let old_cluster_id = seal.cluster_id.clone();
    if !opts.keep_cluster_id {
        seal.cluster_id = uuid::Uuid::new_v4().to_string();
    }

    // Certificates: the old cluster's (kept CA) or a new CA made here.
    let files = TlsFiles::new(staging);
    std::fs::create_dir_all(&files.dir).map_err(io("creating tls/"))?;
    let new_ca = match &tls_source {
        Some(dir) => {
            copy_tls(dir, &files, node_id)?;
            false
        }
        None => {
            let api_host = host_of(&opts.api_addr);
            files.ensure(
                &seal.cluster_name,
                node_id,
                &opts.peer_addr,
                &api_host,
                None,
            )?;
            true
        }
    };
    let node_cert = std::fs::read_to_string(files.node().0).map_err(io("reading node.pem"))?;
    let pin = coffer_tls::fingerprint_pem(&node_cert)
        .map_err(|e| RestoreError::Failed(format!("node.pem: {e}")))?;

    let marker = RestoreMarker {
        kind: kind.into(),
        at: crate::clock::rfc3339(crate::clock::now()),
        by: opts.by.clone(),
        reason: opts.reason.clone(),
        source: source_name.clone(),
        old_cluster_id: old_cluster_id.clone(),
        cluster_id: seal.cluster_id.clone(),
        backup_sha256: backup_check.as_ref().map(|(d, _)| d.clone()),
        backup_mac: backup_check.map(|(_, m)| m),
        new_ca,
    };
    let mut edits = vec![
        Op::Put {
            key: keys::SEAL_CONFIG.to_vec(),
            value: serde_json::to_vec(&seal).map_err(|e| RestoreError::Failed(e.to_string()))?,
        },
        Op::Put {
            key: keys::RESTORED.to_vec(),
            value: serde_json::to_vec(&marker).map_err(|e| RestoreError::Failed(e.to_string()))?,
        },
    ];
    if !opts.keep_cluster_id {
        // The old epoch's pending packs: their cluster id is gone, and so are they.
        edits.push(Op::DeletePrefix {
            prefix: keys::PACKS.as_bytes().to_vec(),
        });
    }
    let addr = NodeAddr {
        api_addr: opts.api_addr.clone(),
        peer_addr: opts.peer_addr.clone(),
        cert_sha256: pin,
    };
    coffer_raft::reset_to_single_voter(staging, node_id, addr, &edits)
        .map_err(failed("making the one-voter cluster"))?;

    audit_locally(staging, node_id, found.spool_public, &marker).await?;
    let config = write_config(staging, &opts.data_dir, node_id, opts, &seal.cluster_name)?;
    Ok(RestoreSummary {
        node_id,
        data_dir: opts.data_dir.clone(),
        config,
        ca_cert: TlsFiles::new(&opts.data_dir).ca(),
        new_ca,
        old_cluster_id,
        cluster_id: seal.cluster_id.clone(),
        counts,
        last_index,
        seal: SealSummary::from(&seal),
        unmerged_audit: unmerged,
    })
}

/// The survivor's state, caught up with what it had committed, installed into `staging`.
/// The survivor's directory is copied first and only the copy is opened: the source is
/// never written to.
async fn settle_and_install(
    old: &Path,
    opts: &RestoreOptions,
    staging: &Path,
    found: &mut Found,
    progress: Progress<'_>,
) -> Result<(u64, Counts, u64), RestoreError> {
    if !old.join("raft").is_dir() {
        return Err(RestoreError::BadSource(format!(
            "{} is not a Coffer data directory (no raft/)",
            old.display()
        )));
    }
    if coffer_raft::in_use(old) {
        return Err(RestoreError::SourceInUse(old.to_path_buf()));
    }
    let source = std::fs::canonicalize(old)
        .map_err(|e| RestoreError::BadSource(format!("{}: {e}", old.display())))?;
    if parent_of(&opts.data_dir)?.starts_with(&source) {
        return Err(RestoreError::BadSource(format!(
            "the target {} is inside the source {}: restore next to it",
            opts.data_dir.display(),
            old.display()
        )));
    }
    let node_id = match opts.node_id {
        Some(id) => id,
        None => {
            let pem = std::fs::read_to_string(old.join("tls").join("node.pem")).map_err(|e| {
                RestoreError::BadSource(format!(
                    "{}: {e}; give --node-id",
                    old.join("tls/node.pem").display()
                ))
            })?;
            coffer_tls::node_id_from_pem(&pem)
                .map_err(|e| RestoreError::BadSource(format!("node.pem: {e}")))?
        }
    };
    let state_bytes = dir_size(&old.join("raft")) + dir_size(&old.join("snapshots"));
    check_space(&opts.data_dir, state_bytes)?;
    let settle = staging.join(".settle");
    copy_dir(&old.join("raft"), &settle.join("raft"))?;
    if old.join("snapshots").is_dir() {
        copy_dir(&old.join("snapshots"), &settle.join("snapshots"))?;
    }
    progress("settling", 0, 1);
    let engine = Engine::open(
        EngineConfig {
            node_id,
            data_dir: settle.clone(),
            tuning: RaftTuning::default(),
            storage: Default::default(),
        },
        NoPeers,
    )
    .await
    .map_err(|e| RestoreError::Failed(format!("opening the survivor's state: {e}")))?;
    let settled = async {
        let deadline = tokio::time::Instant::now() + SETTLE_WAIT;
        loop {
            let committed = engine.committed_index().await?;
            if engine.applied_index() >= committed {
                return Ok::<_, coffer_raft::EngineError>(());
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(coffer_raft::EngineError::Storage(format!(
                    "applied {} of {committed} committed entries within {SETTLE_WAIT:?}",
                    engine.applied_index()
                )));
            }
            tokio::time::sleep(SETTLE_POLL).await;
        }
    }
    .await;
    let snapshot = match settled {
        Ok(()) => engine.snapshot_file().await,
        Err(e) => Err(e),
    };
    let _ = engine.shutdown().await;
    drop(engine);
    let mut snapshot =
        snapshot.map_err(|e| RestoreError::Failed(format!("reading the survivor's state: {e}")))?;
    progress("settling", 1, 1);
    let backup::StateSummary { header, counts, .. } =
        backup::summarize(&mut snapshot, &mut |key, value| found.visit(key, value))
            .map_err(failed("checking the survivor's state"))?;
    use std::io::{Seek, SeekFrom};
    snapshot
        .seek(SeekFrom::Start(0))
        .map_err(io("reading the survivor's state"))?;
    // The engine's last handle may still be closing: the staging copy's lock is released
    // when it has.
    let seed = staging.to_path_buf();
    let installed = tokio::task::spawn_blocking(move || {
        coffer_raft::install_seed_snapshot(&seed, &mut snapshot, &mut |_, _| {})
    })
    .await
    .map_err(|e| RestoreError::Failed(e.to_string()))?;
    installed.map_err(failed("installing the survivor's state"))?;
    // The survivor's audit archive comes along: its segments and those the settling wrote.
    for from in [old.join("archive"), settle.join("archive")] {
        coffer_raft::adopt_archive(staging, &from).map_err(failed("carrying the audit archive"))?;
    }
    let _ = std::fs::remove_dir_all(&settle);
    Ok((node_id, counts, header.last_applied.map_or(0, |l| l.index)))
}

/// Copies the survivor's audit spool (same node id, same epoch: the new node ships what the
/// cluster had not merged, exactly once, after its first unseal). Returns how many records
/// it holds past what is pruned (an upper bound on those unmerged).
fn copy_spool(old: &Path, staging: &Path) -> Result<u64, RestoreError> {
    let from = old.join("audit");
    if !from.is_dir() {
        return Ok(0);
    }
    copy_dir(&from, &staging.join("audit"))?;
    let mut lines = 0u64;
    for entry in std::fs::read_dir(staging.join("audit"))
        .map_err(io("reading the spool"))?
        .flatten()
    {
        if entry.file_name().to_string_lossy().starts_with("spool-") {
            use std::io::BufRead;
            let file = std::fs::File::open(entry.path()).map_err(io("reading the spool"))?;
            for line in std::io::BufReader::new(file).lines() {
                if !line.map_err(io("reading the spool"))?.trim().is_empty() {
                    lines += 1;
                }
            }
        }
    }
    Ok(lines)
}

/// Records the restore in the new node's own spool, at once: it is durable before the node
/// ever starts, and merged with the rest after the first unseal.
async fn audit_locally(
    staging: &Path,
    node_id: u64,
    spool_public: Option<[u8; 32]>,
    marker: &RestoreMarker,
) -> Result<(), RestoreError> {
    let spool = Spool::open(&staging.join("audit"), node_id)
        .map_err(|e| RestoreError::Failed(format!("opening the audit spool: {e}")))?;
    if let Some(public) = spool_public {
        spool.set_recipient(public);
    }
    let event = AuditEvent {
        detail: format!(
            "{} from {} (reason: {}); cluster {} -> {}",
            marker.kind, marker.source, marker.reason, marker.old_cluster_id, marker.cluster_id
        ),
        ..AuditEvent::new(
            Stage::Event,
            Who {
                name: marker.by.clone(),
                method: "local".into(),
                client_addr: "local".into(),
                ..Default::default()
            },
            if marker.kind == "recover" {
                "recover"
            } else {
                "restore"
            },
            "sys/storage/raft/snapshot",
            Outcome::Ok,
        )
    };
    spool
        .append(event)
        .await
        .map_err(|e| RestoreError::Failed(format!("auditing the restore: {e}")))?;
    Ok(())
}

/// Copies an old node's certificates: its CA, its member certificate and key (which must be
/// node `node_id`'s), its API certificate and key.
fn copy_tls(from: &Path, to: &TlsFiles, node_id: u64) -> Result<(), RestoreError> {
    let node_pem = std::fs::read_to_string(from.join("node.pem")).map_err(|e| {
        RestoreError::BadSource(format!("{}: {e}", from.join("node.pem").display()))
    })?;
    let bound = coffer_tls::node_id_from_pem(&node_pem)
        .map_err(|e| RestoreError::BadSource(format!("node.pem: {e}")))?;
    if bound != node_id {
        return Err(RestoreError::BadSource(format!(
            "{} is node {bound}'s certificate, the restored node is {node_id}: give --node-id {bound}",
            from.join("node.pem").display()
        )));
    }
    for name in ["ca.pem", "node.pem", "api.pem"] {
        let text = std::fs::read(from.join(name))
            .map_err(|e| RestoreError::BadSource(format!("{}: {e}", from.join(name).display())))?;
        write_atomic(&to.dir.join(name), &text, false)?;
    }
    for name in ["node-key.pem", "api-key.pem"] {
        let text =
            Zeroizing::new(std::fs::read(from.join(name)).map_err(|e| {
                RestoreError::BadSource(format!("{}: {e}", from.join(name).display()))
            })?);
        write_atomic(&to.dir.join(name), &text, true)?;
    }
    Ok(())
}

/// `coffer.toml` for the new node, naming its final directory.
fn write_config(
    staging: &Path,
    final_dir: &Path,
    node_id: u64,
    opts: &RestoreOptions,
    cluster_name: &str,
) -> Result<PathBuf, RestoreError> {
    let abs = if final_dir.is_absolute() {
        final_dir.to_path_buf()
    } else {
        parent_of(final_dir)?.join(final_dir.file_name().unwrap_or_default())
    };
    let mut config = format!(
        "# Written by `coffer operator restore` for node {node_id}.\n\
         node_id = {node_id}\n\
         data_dir = {data:?}\n\
         api_addr = {api:?}\n\
         peer_addr = {peer:?}\n\
         cluster_name = {cluster_name:?}\n",
        data = abs.display().to_string(),
        api = opts.api_addr,
        peer = opts.peer_addr,
    );
    if let Some(path) = &opts.seal_key_file {
        config.push_str(&format!(
            "seal = {{ type = \"file\", path = {:?} }}\n",
            path.display().to_string()
        ));
    }
    write_atomic(&staging.join("coffer.toml"), config.as_bytes(), false)?;
    Ok(abs.join("coffer.toml"))
}

/// Swaps two directories atomically (`renameat2(RENAME_EXCHANGE)`); false where the file
/// system cannot, and nothing was changed.
fn exchange(a: &Path, b: &Path) -> bool {
    use std::os::unix::ffi::OsStrExt;
    let (Ok(a), Ok(b)) = (
        std::ffi::CString::new(a.as_os_str().as_bytes()),
        std::ffi::CString::new(b.as_os_str().as_bytes()),
    ) else {
        return false;
    };
    // SAFETY: two valid NUL-terminated paths, relative to the working directory.
    let rc = unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            a.as_ptr(),
            libc::AT_FDCWD,
            b.as_ptr(),
            libc::RENAME_EXCHANGE,
        )
    };
    rc == 0
}

/// A recovery's configuration in `dir` names the staging path `from`: point it at `to`.
fn rewrite_config_dir(dir: &Path, from: &Path, to: &Path) -> Result<(), RestoreError> {
    let path = dir.join("coffer.toml");
    let text = std::fs::read_to_string(&path).map_err(io("reading coffer.toml"))?;
    let from = format!("{:?}", from.display().to_string());
    let to = format!("{:?}", to.display().to_string());
    write_atomic(&path, text.replace(&from, &to).as_bytes(), false)?;
    Ok(())
}

/// The host of an API address, for its certificate.
fn host_of(addr: &str) -> String {
    let rest = addr.strip_prefix("https://").unwrap_or(addr);
    let rest = rest.trim_end_matches('/');
    let host = rest.rsplit_once(':').map_or(rest, |(h, _)| h);
    host.trim_start_matches('[')
        .trim_end_matches(']')
        .to_string()
}

fn copy_dir(from: &Path, to: &Path) -> Result<(), RestoreError> {
    std::fs::create_dir_all(to).map_err(io("copying the survivor's files"))?;
    for entry in std::fs::read_dir(from).map_err(io("copying the survivor's files"))? {
        let entry = entry.map_err(io("copying the survivor's files"))?;
        let target = to.join(entry.file_name());
        let kind = entry
            .file_type()
            .map_err(io("copying the survivor's files"))?;
        if kind.is_dir() {
            copy_dir(&entry.path(), &target)?;
        } else if kind.is_file() {
            // RocksDB's lock file is not state.
            if entry.file_name() == "LOCK" {
                continue;
            }
            std::fs::copy(entry.path(), &target).map_err(io("copying the survivor's files"))?;
        }
    }
    Ok(())
}

fn dir_size(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .map(|e| match e.file_type() {
                    Ok(t) if t.is_dir() => dir_size(&e.path()),
                    Ok(_) => e.metadata().map_or(0, |m| m.len()),
                    Err(_) => 0,
                })
                .sum()
        })
        .unwrap_or(0)
}
