//! `coffer operator snapshot save | inspect`, `operator restore` and `operator recover`:
//! backups, and the disaster-recovery commands that rebuild a cluster from one or from a
//! surviving node's data directory.

use std::io::Write;
use std::path::{Path, PathBuf};

use clap::Subcommand;
use coffer_vault::node::restore::{
    self, RestoreError, RestoreOptions, RestoreSource, RestoreSummary,
};
use coffer_vault::rules::backup::{self as file_format, Manifest};
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::json;

use super::{client, exit, print_json, Common};
use crate::client::ClientError;

/// What `operator recover` asks the operator to type.
const RECOVER_CONFIRMATION: &str = "recover";
/// Default API address of a restored node.
const DEFAULT_API_ADDR: &str = "https://127.0.0.1:8200";
/// Default peer address of a restored node.
const DEFAULT_PEER_ADDR: &str = "127.0.0.1:8201";

/// `operator snapshot …`.
#[derive(Subcommand, Debug)]
pub enum SnapshotCmd {
    /// Save a backup of the vault (any unsealed node, a read-only standby included; needs
    /// sudo on sys/storage/raft/snapshot).
    Save {
        #[command(flatten)]
        common: Common,
        /// Where to write it.
        #[arg(short = 'o', long = "output", conflicts_with = "file")]
        output: Option<PathBuf>,
        /// Where to write it (as `vault operator raft snapshot save FILE`).
        file: Option<PathBuf>,
    },
    /// Print a backup's manifest and verify its checksums (no key needed).
    Inspect {
        #[command(flatten)]
        common: Common,
        /// The backup file.
        file: PathBuf,
    },
    /// Restore a backup into the running cluster, replicated to every member (needs sudo on
    /// sys/storage/raft/snapshot). Secrets, mounts, policies, users and tokens become the
    /// backup's; the seal, the CA, the packs and the whole audit log stay. To rebuild a lost
    /// cluster from a backup, use `operator restore` instead.
    Restore {
        #[command(flatten)]
        common: Common,
        /// Also take a backup of another cluster id made under this cluster's keys.
        #[arg(long = "force", short = 'f')]
        force: bool,
        /// The backup file.
        file: PathBuf,
    },
}

/// Arguments of `operator restore`.
#[derive(clap::Args, Debug)]
#[command(group(clap::ArgGroup::new("source").required(true).args(["from", "from_data_dir"])))]
pub struct RestoreArgs {
    /// A backup file (`operator snapshot save`, or a scheduled backup).
    #[arg(long)]
    from: Option<PathBuf>,
    /// A surviving node's data directory (a copy, or the directory itself with the node
    /// stopped); it is only read.
    #[arg(long)]
    from_data_dir: Option<PathBuf>,
    #[command(flatten)]
    node: NodeArgs,
    /// Keep the cluster id (putting the same cluster back); by default the restored cluster
    /// is a new epoch that the old members, packs and certificates cannot join.
    #[arg(long)]
    keep_cluster_id: bool,
    /// Keep the old cluster's CA and a node's certificates from this `tls/` directory (a
    /// restore from a backup otherwise makes a new CA).
    #[arg(long)]
    tls_from: Option<PathBuf>,
    /// Why (recorded in the audit log).
    #[arg(long, default_value = "disaster recovery")]
    reason: String,
    /// Start the node when done.
    #[arg(long)]
    start: bool,
}

/// Where and as whom the restored node runs.
#[derive(clap::Args, Debug)]
pub struct NodeArgs {
    /// The new node's data directory (absent or empty).
    #[arg(long)]
    data_dir: PathBuf,
    /// The node's id (default: 1 from a backup, the survivor's own from a data directory).
    #[arg(long)]
    node_id: Option<u64>,
    /// Its HTTPS API address.
    #[arg(long)]
    api_addr: Option<String>,
    /// Its peer address.
    #[arg(long)]
    peer_addr: Option<String>,
    /// Who runs this (recorded in the audit log; default: the operating-system user).
    #[arg(long)]
    operator: Option<String>,
    /// Seal with a key file (`seal = { type = "file" }`) instead of shares.
    #[arg(long)]
    seal_key_file: Option<PathBuf>,
}

/// Arguments of `operator recover`.
#[derive(clap::Args, Debug)]
pub struct RecoverArgs {
    /// Required: this makes the node the only voter of a new cluster epoch.
    #[arg(long)]
    force_new_cluster: bool,
    #[command(flatten)]
    node: NodeArgs,
    /// The node's configuration file, for its addresses (default: `DATA_DIR/coffer.toml`
    /// when it exists).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Why (recorded in the audit log).
    #[arg(long)]
    reason: String,
    /// Do not ask for confirmation.
    #[arg(long)]
    yes: bool,
}

fn local(e: impl std::fmt::Display) -> ClientError {
    ClientError::Local(e.to_string())
}

/// A progress bar on stderr (hidden when stderr is not a terminal).
pub(super) fn bar(len: u64, template: &str) -> ProgressBar {
    let bar = ProgressBar::new(len);
    if let Ok(style) = ProgressStyle::with_template(template) {
        bar.set_style(style.progress_chars("#>-"));
    }
    bar
}

/// `operator snapshot save` and `inspect`.
pub async fn snapshot(cmd: SnapshotCmd) -> Result<i32, ClientError> {
    match cmd {
        SnapshotCmd::Save {
            common,
            output,
            file,
        } => {
            let path = output
                .or(file)
                .ok_or_else(|| local("give the file to write: `operator snapshot save -o FILE`"))?;
            save(&common, &path).await
        }
        SnapshotCmd::Inspect { common, file } => inspect(&common, &file),
        SnapshotCmd::Restore {
            common,
            force,
            file,
        } => restore_live(&common, &file, force).await,
    }
}

/// `operator snapshot restore [-force] FILE`: verified here first (a damaged file is
/// refused before it is sent), then uploaded with a progress bar.
async fn restore_live(common: &Common, path: &Path, force: bool) -> Result<i32, ClientError> {
    let mut file =
        std::fs::File::open(path).map_err(|e| local(format!("{}: {e}", path.display())))?;
    let verified = file_format::open(&mut file, &mut |_, _| {})
        .map_err(|e| local(format!("{}: {e}", path.display())))?;
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
    let progress = bar(
        len,
        "Sending [{bar:25}] {bytes}/{total_bytes} {bytes_per_sec}",
    );
    let sent = progress.clone();
    let route = if force {
        "sys/storage/raft/snapshot-force"
    } else {
        "sys/storage/raft/snapshot"
    };
    let answer = client(common)?
        .upload(route, path, std::sync::Arc::new(move |n| sent.inc(n)))
        .await;
    progress.finish_and_clear();
    let answer = answer?;
    if common.format == "json" {
        print_json(&answer.body);
        return Ok(exit::OK);
    }
    let m = &verified.manifest;
    eprintln!(
        "Restored the backup of cluster {} made {} on node {} (log index {}): {} secrets, {} versions, {} users, {} policies, {} tokens. Every member now holds it; the audit log kept every record and records the restore.",
        m.cluster_id,
        m.created_at,
        m.node_id,
        m.applied_index,
        m.counts.secrets,
        m.counts.versions,
        m.counts.users,
        m.counts.policies,
        m.counts.tokens
    );
    Ok(exit::OK)
}

/// Sends `method` to `api_path` and streams the binary answer into `path.part` (0600) with
/// a progress bar; syncs it, runs `check` on it, and renames it into place: `path` is
/// either the whole checked file or untouched. Returns what `check` made and the headers.
pub(super) async fn download_to_file<T>(
    common: &Common,
    method: reqwest::Method,
    api_path: &str,
    body: Option<&serde_json::Value>,
    path: &Path,
    template: &str,
    check: impl FnOnce(&Path) -> Result<T, ClientError>,
) -> Result<(T, reqwest::header::HeaderMap), ClientError> {
    let part = part_path(path);
    let mut file = create_private(&part)?;
    let progress = bar(0, template);
    let result = {
        let mut writer = std::io::BufWriter::new(&mut file);
        let bar = progress.clone();
        let got = client(common)?
            .transfer(
                method,
                api_path,
                body,
                &mut writer,
                &mut move |done, total| {
                    if let Some(total) = total {
                        bar.set_length(total);
                    }
                    bar.set_position(done);
                },
            )
            .await;
        got.and_then(|(_, headers)| {
            writer
                .flush()
                .map_err(|e| local(format!("writing {}: {e}", part.display())))?;
            Ok(headers)
        })
    };
    progress.finish_and_clear();
    let checked = result.and_then(|headers| {
        file.sync_all()
            .map_err(|e| local(format!("syncing {}: {e}", part.display())))?;
        Ok((check(&part)?, headers))
    });
    let checked = match checked {
        Ok(c) => c,
        Err(e) => {
            let _ = std::fs::remove_file(&part);
            return Err(e);
        }
    };
    std::fs::rename(&part, path).map_err(|e| local(format!("{}: {e}", path.display())))?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        let _ = std::fs::File::open(dir).and_then(|d| d.sync_all());
    }
    Ok(checked)
}

/// Downloads a backup and verifies it before it takes the name `path`.
async fn save(common: &Common, path: &Path) -> Result<i32, ClientError> {
    let (verified, _) = download_to_file(
        common,
        reqwest::Method::GET,
        "sys/storage/raft/snapshot",
        None,
        path,
        "Saving [{bar:25}] {bytes}/{total_bytes} {bytes_per_sec}",
        |part| {
            let mut reread = std::fs::File::open(part).map_err(local)?;
            file_format::open(&mut reread, &mut |_, _| {})
                .map_err(|e| local(format!("the saved backup does not verify: {e}")))
        },
    )
    .await?;
    let m = &verified.manifest;
    eprintln!(
        "Saved a backup of cluster {} ({}) to {}: log index {}, {} secrets, {} versions, {} users, {} policies, {} tokens, {} audit records.",
        m.cluster_name,
        m.cluster_id,
        path.display(),
        m.applied_index,
        m.counts.secrets,
        m.counts.versions,
        m.counts.users,
        m.counts.policies,
        m.counts.tokens,
        m.counts.audit_records
    );
    if m.node_mode == "read-only" {
        eprintln!(
            "Note: node {} is a read-only standby; this backup is its local state, {} s since it last heard from a leader.",
            m.node_id,
            m.last_contact_ms / 1000
        );
    }
    Ok(exit::OK)
}

fn part_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".part");
    path.with_file_name(name)
}

fn create_private(path: &Path) -> Result<std::fs::File, ClientError> {
    coffer_tls::create_private(path).map_err(|e| local(format!("{}: {e}", path.display())))
}

/// `operator snapshot inspect FILE`.
fn inspect(common: &Common, path: &Path) -> Result<i32, ClientError> {
    let mut file =
        std::fs::File::open(path).map_err(|e| local(format!("{}: {e}", path.display())))?;
    let verified = file_format::open(&mut file, &mut |_, _| {})
        .map_err(|e| local(format!("{}: {e}", path.display())))?;
    let m = &verified.manifest;
    if common.format == "json" {
        print_json(&json!({
            "manifest": m,
            "checksum": hex::encode(verified.digest),
            "verified": true,
        }));
        return Ok(exit::OK);
    }
    print_manifest(m);
    println!(
        "{:<22} {}",
        "Checksum (SHA-256)",
        hex::encode(verified.digest)
    );
    println!(
        "{:<22} ok (the MAC is checked with the keys, at restore)",
        "Verified"
    );
    Ok(exit::OK)
}

fn print_manifest(m: &Manifest) {
    let rows: Vec<(&str, String)> = vec![
        ("Format", m.format.to_string()),
        ("Cluster", format!("{} ({})", m.cluster_name, m.cluster_id)),
        ("Node", format!("{} ({})", m.node_id, m.node_mode)),
        ("Last contact", format!("{} ms ago", m.last_contact_ms)),
        ("Index", m.applied_index.to_string()),
        ("Term", m.applied_term.to_string()),
        ("Revision", m.revision.to_string()),
        ("Created", m.created_at.clone()),
        ("Secrets", m.counts.secrets.to_string()),
        ("Versions", m.counts.versions.to_string()),
        ("Users", m.counts.users.to_string()),
        ("Policies", m.counts.policies.to_string()),
        ("Tokens", m.counts.tokens.to_string()),
        ("Audit records", m.counts.audit_records.to_string()),
        ("Records", m.counts.records.to_string()),
        (
            "Seal",
            format!(
                "{} of {} shares",
                m.seal.secret_threshold, m.seal.secret_shares
            ),
        ),
        ("Snapshot bytes", m.snapshot.bytes.to_string()),
        ("Snapshot SHA-256", m.snapshot.sha256.clone()),
    ];
    for (k, v) in rows {
        println!("{k:<22} {v}");
    }
    for (i, f) in m.seal.share_fingerprints.iter().enumerate() {
        println!("{:<22} {f}", format!("Share {} fingerprint", i + 1));
    }
}

/// The operating-system user running the command.
fn os_user() -> String {
    ["SUDO_USER", "USER", "LOGNAME"]
        .iter()
        .find_map(|v| std::env::var(v).ok().filter(|s| !s.is_empty()))
        .unwrap_or_else(|| "unknown".into())
}

fn options(node: &NodeArgs, reason: &str) -> RestoreOptions {
    RestoreOptions {
        data_dir: node.data_dir.clone(),
        node_id: node.node_id,
        api_addr: node
            .api_addr
            .clone()
            .unwrap_or_else(|| DEFAULT_API_ADDR.into()),
        peer_addr: node
            .peer_addr
            .clone()
            .unwrap_or_else(|| DEFAULT_PEER_ADDR.into()),
        keep_cluster_id: false,
        tls_from: None,
        by: node.operator.clone().unwrap_or_else(os_user),
        reason: reason.to_string(),
        seal_key_file: node.seal_key_file.clone(),
    }
}

/// Progress of a restore: one bar per phase.
struct Phases {
    bar: Option<(String, ProgressBar)>,
}

impl Phases {
    fn update(&mut self, phase: &str, done: u64, total: u64) {
        if self.bar.as_ref().is_none_or(|(p, _)| p != phase) {
            self.finish();
            let label = match phase {
                "loading" => "Loading the backup",
                "settling" => "Applying the survivor's committed log",
                other => other,
            };
            let b = bar(
                total,
                &format!("{label} [{{bar:25}}] {{percent:>3}}% ({{pos}}/{{len}})"),
            );
            self.bar = Some((phase.to_string(), b));
        }
        if let Some((_, b)) = &self.bar {
            b.set_length(total);
            b.set_position(done);
        }
    }

    fn finish(&mut self) {
        if let Some((_, b)) = self.bar.take() {
            b.finish_and_clear();
        }
    }
}

/// `operator restore`.
pub async fn restore(args: RestoreArgs) -> Result<i32, ClientError> {
    let (source, from_backup) = match (&args.from, &args.from_data_dir) {
        (Some(file), None) => (RestoreSource::Backup(file.clone()), true),
        (None, Some(dir)) => (RestoreSource::DataDir(dir.clone()), false),
        _ => {
            return Err(local(
                "give exactly one of --from FILE and --from-data-dir DIR",
            ))
        }
    };
    let mut opts = options(&args.node, &args.reason);
    opts.keep_cluster_id = args.keep_cluster_id;
    opts.tls_from = args.tls_from.clone();
    let mut phases = Phases { bar: None };
    let result = restore::restore(&source, &opts, &mut |p, d, t| phases.update(p, d, t)).await;
    phases.finish();
    let summary = result.map_err(refused)?;
    print_summary(&summary, from_backup);
    start_or_print(&summary.config, args.start)
}

/// `operator recover --force-new-cluster`.
pub async fn recover(args: RecoverArgs) -> Result<i32, ClientError> {
    if !args.force_new_cluster {
        return Err(local(
            "recover makes this node the only voter of a new cluster epoch: give --force-new-cluster to confirm that this is what you want",
        ));
    }
    let config_path = args
        .config
        .clone()
        .or_else(|| Some(args.node.data_dir.join("coffer.toml")).filter(|p| p.exists()));
    let mut node_args = args.node;
    if let Some(path) = &config_path {
        let cfg = crate::config::ServerConfig::from_file(path).map_err(local)?;
        node_args.api_addr = node_args.api_addr.or(Some(cfg.api_addr));
        node_args.peer_addr = node_args.peer_addr.or(Some(cfg.peer_addr));
        node_args.node_id = node_args.node_id.or(Some(cfg.node_id));
        if let crate::config::SealConfig::File { path } = cfg.seal {
            node_args.seal_key_file = node_args.seal_key_file.or(Some(path));
        }
    }
    if node_args.api_addr.is_none() || node_args.peer_addr.is_none() {
        return Err(local(
            "give the node's addresses: --config FILE, or --api-addr and --peer-addr",
        ));
    }
    let opts = options(&node_args, &args.reason);
    if !args.yes {
        eprintln!(
            "This makes the node in {} the only voter of a NEW cluster epoch.\n\
             The other members of its cluster will be refused by it from now on, and it keeps\n\
             its data and its unmerged audit records. The old directory is kept beside it.",
            opts.data_dir.display()
        );
        let answer = super::identity::prompt(&format!("Type '{RECOVER_CONFIRMATION}' to go on"))?;
        if answer.trim() != RECOVER_CONFIRMATION {
            eprintln!("Nothing was changed.");
            return Ok(exit::LOCAL);
        }
    }
    let mut phases = Phases { bar: None };
    let result = restore::recover(&opts.data_dir.clone(), &opts, &mut |p, d, t| {
        phases.update(p, d, t)
    })
    .await;
    phases.finish();
    let (summary, kept) = result.map_err(refused)?;
    print_summary(&summary, false);
    eprintln!(
        "The node's previous directory is kept at {}; remove it once the node runs.",
        kept.display()
    );
    match &config_path {
        Some(path) if *path != summary.config => {
            eprintln!("Start it as before:");
            println!("coffer server --config {}", path.display());
            Ok(exit::OK)
        }
        _ => start_or_print(&summary.config, false),
    }
}

fn refused(e: RestoreError) -> ClientError {
    local(format!("restore refused: {e}"))
}

fn print_summary(s: &RestoreSummary, from_backup: bool) {
    eprintln!(
        "Restored node {} into {}: log index {}; {} secrets, {} versions, {} users, {} policies, {} tokens, {} audit records.",
        s.node_id,
        s.data_dir.display(),
        s.last_index,
        s.counts.secrets,
        s.counts.versions,
        s.counts.users,
        s.counts.policies,
        s.counts.tokens,
        s.counts.audit_records
    );
    if s.cluster_id == s.old_cluster_id {
        eprintln!("Cluster id kept: {}.", s.cluster_id);
    } else {
        eprintln!(
            "New cluster epoch {} (was {}): the old cluster's members, packs and certificates are refused; new nodes join from new packs.",
            s.cluster_id, s.old_cluster_id
        );
    }
    if s.unmerged_audit > 0 {
        eprintln!(
            "The survivor's audit spool came along ({} records); what the cluster had not merged yet is merged after the first unseal, exactly once.",
            s.unmerged_audit
        );
    }
    if s.new_ca {
        eprintln!(
            "New CA: clients must trust {} (the old CA's certificates are not accepted).",
            s.ca_cert.display()
        );
    } else {
        eprintln!("CA kept: {}.", s.ca_cert.display());
    }
    eprintln!(
        "Unseal it with {} of the original {} shares; their fingerprints (salted SHA-256):",
        s.seal.secret_threshold, s.seal.secret_shares
    );
    for (i, f) in s.seal.share_fingerprints.iter().enumerate() {
        eprintln!("  share {}: {f}", i + 1);
    }
    if from_backup {
        eprintln!("The backup's MAC is checked at the first unseal: shares of another vault, or an altered file, are refused then.");
    }
}

fn start_or_print(config: &Path, start: bool) -> Result<i32, ClientError> {
    let command = format!("coffer server --config {}", config.display());
    if start {
        eprintln!("Starting: {command}");
        use std::os::unix::process::CommandExt;
        let exe = std::env::current_exe().map_err(local)?;
        let err = std::process::Command::new(exe)
            .args(["server", "--config"])
            .arg(config)
            .exec();
        return Err(local(format!("starting the server: {err}")));
    }
    eprintln!("Start it with:");
    println!("{command}");
    Ok(exit::OK)
}
