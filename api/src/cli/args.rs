//! The command line's grammar: every command, its flags and arguments (clap), and Vault's
//! single-dash long flags.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use super::{audit, backup, cluster, identity};

#[derive(Parser, Debug)]
#[command(
    name = "coffer",
    version = concat!(env!("CARGO_PKG_VERSION"), " (", env!("COFFER_COMMIT"), ")"),
    about = "Coffer: a replicated secret vault"
)]
pub(super) struct Cli {
    #[command(subcommand)]
    pub(super) command: Command,
}

#[derive(Subcommand, Debug)]
pub(super) enum Command {
    /// Run a Coffer node.
    Server(ServerArgs),
    /// Operate the vault: init, unseal, seal, status, rotate.
    Operator {
        #[command(subcommand)]
        command: OperatorCmd,
    },
    /// Read and write KV v2 secrets.
    Kv {
        #[command(subcommand)]
        command: KvCmd,
    },
    /// Seal status and mode of the node; a read-only standby says so on stderr.
    Status(Common),
    /// Whether the node serves (for container and load-balancer health checks): exit 0 when
    /// it is initialized, unsealed and serving as leader, follower or read-only standby, 2
    /// when it is sealed, uninitialized or unreachable.
    Health(Common),
    /// Log in and keep the token in ~/.coffer-token (mode 0600).
    Login {
        #[command(flatten)]
        common: Common,
        /// Auth method.
        #[arg(long, default_value = "userpass")]
        method: String,
        /// `username=…` and optionally `password=…` (prompted for otherwise).
        args: Vec<String>,
    },
    /// Tokens: lookup, create, renew, revoke.
    Token {
        #[command(subcommand)]
        command: identity::TokenCmd,
    },
    /// ACL policies: write, read, list, delete.
    Policy {
        #[command(subcommand)]
        command: identity::PolicyCmd,
    },
    /// Userpass users: create, delete, list, passwd.
    User {
        #[command(subcommand)]
        command: identity::UserCmd,
    },
    /// The audit log: tail, export, verify.
    Audit {
        #[command(subcommand)]
        command: audit::AuditCmd,
    },
    /// Print a shell completion script, generated from this command line's definition
    /// (`coffer completions bash > /etc/bash_completion.d/coffer`).
    Completions {
        /// bash, zsh, fish, elvish or powershell.
        shell: clap_complete::Shell,
    },
    /// Write man pages, one per command, generated from this command line's definition
    /// (`coffer man --dir /usr/local/share/man/man1`); without `--dir`, print coffer(1).
    Man {
        /// Directory to write `coffer.1`, `coffer-kv.1`, `coffer-kv-get.1`, … into.
        #[arg(long)]
        dir: Option<PathBuf>,
    },
}

#[derive(Args, Debug)]
pub(super) struct ServerArgs {
    /// TOML configuration file; without it the configuration comes from `COFFER_*`
    /// variables and these flags alone (`COFFER_DATA_DIR` or `--data-dir` at least).
    #[arg(long)]
    pub(super) config: Option<PathBuf>,
    /// Development mode: single node, initialized and unsealed, root token printed.
    #[arg(long)]
    pub(super) dev: bool,
    /// Dev mode: the root token to create.
    #[arg(long)]
    pub(super) dev_root_token_id: Option<String>,
    /// Dev mode: the address to listen on (default: `listen_addr` if set, else 127.0.0.1:8200).
    #[arg(long)]
    pub(super) dev_listen_address: Option<String>,
    /// Data directory (dev default: a fresh temporary directory).
    #[arg(long)]
    pub(super) data_dir: Option<PathBuf>,
    /// Override `node_id`.
    #[arg(long)]
    pub(super) node_id: Option<u64>,
    /// Override `api_addr`.
    #[arg(long)]
    pub(super) api_addr: Option<String>,
    /// Override `peer_addr`.
    #[arg(long)]
    pub(super) peer_addr: Option<String>,
    /// Override `log_level`.
    #[arg(long)]
    pub(super) log_level: Option<String>,
}

/// Options every client command takes.
#[derive(Args, Debug, Clone)]
pub struct Common {
    /// Server address(es), comma-separated [env: COFFER_ADDR, VAULT_ADDR].
    #[arg(long, global = true)]
    pub address: Option<String>,
    /// CA certificate file [env: COFFER_CACERT, VAULT_CACERT].
    #[arg(long, global = true)]
    pub ca_cert: Option<PathBuf>,
    /// Output format.
    #[arg(long, global = true, default_value = "table", value_parser = ["table", "json"])]
    pub format: String,
    /// Print only this field of the data.
    #[arg(long, global = true)]
    pub field: Option<String>,
}

#[derive(Subcommand, Debug)]
pub(super) enum OperatorCmd {
    /// Initialize the vault: create the root key and its shares.
    Init {
        #[command(flatten)]
        common: Common,
        /// Number of key shares.
        #[arg(long, default_value_t = 5)]
        key_shares: u8,
        /// Shares needed to unseal.
        #[arg(long, default_value_t = 3)]
        key_threshold: u8,
    },
    /// Enter one unseal key share (prompted for when omitted).
    Unseal {
        #[command(flatten)]
        common: Common,
        /// The share, hex or base64.
        key: Option<String>,
        /// Discard shares entered so far.
        #[arg(long)]
        reset: bool,
    },
    /// Seal the node.
    Seal(Common),
    /// Show seal status.
    Status(Common),
    /// Add a new data-key term.
    Rotate(Common),
    /// Bootstrap packs for new nodes.
    Pack {
        #[command(subcommand)]
        command: cluster::PackCmd,
    },
    /// Join this machine to a cluster from a bootstrap pack (runs locally, no server).
    Join(cluster::JoinArgs),
    /// List the cluster's members: roles, replication progress, last contact.
    Members(Common),
    /// Remove a node from the cluster.
    RemoveNode {
        #[command(flatten)]
        common: Common,
        /// The node's id.
        node_id: u64,
    },
    /// Promote a caught-up learner to voter.
    Promote {
        #[command(flatten)]
        common: Common,
        /// The learner's id.
        node_id: u64,
    },
    /// Make the leader hand leadership to another voter.
    StepDown(Common),
    /// Backups: save one from a running node, inspect a file.
    Snapshot {
        #[command(subcommand)]
        command: backup::SnapshotCmd,
    },
    /// Rebuild a working one-voter cluster from a backup or a surviving node's data
    /// directory (runs locally, no server).
    Restore(backup::RestoreArgs),
    /// Make a stopped survivor the only voter of a new cluster epoch, when the quorum is
    /// lost for good (runs locally, no server).
    Recover(backup::RecoverArgs),
}

#[derive(Subcommand, Debug)]
pub(super) enum KvCmd {
    /// Read a secret.
    Get {
        #[command(flatten)]
        common: Common,
        #[command(flatten)]
        target: Target,
        /// Version to read (default: latest).
        #[arg(long)]
        version: Option<u64>,
    },
    /// Write a new version: `key=value`, `key=@file`, `key=-` (stdin).
    Put {
        #[command(flatten)]
        common: Common,
        #[command(flatten)]
        target: Target,
        /// Check-and-set version.
        #[arg(long)]
        cas: Option<u64>,
        /// key=value pairs.
        pairs: Vec<String>,
    },
    /// Merge key=value pairs into the latest version.
    Patch {
        #[command(flatten)]
        common: Common,
        #[command(flatten)]
        target: Target,
        /// Check-and-set version.
        #[arg(long)]
        cas: Option<u64>,
        /// key=value pairs.
        pairs: Vec<String>,
    },
    /// List keys under a path.
    List {
        #[command(flatten)]
        common: Common,
        #[command(flatten)]
        target: Target,
    },
    /// Soft-delete the latest version, or the given versions.
    Delete {
        #[command(flatten)]
        common: Common,
        #[command(flatten)]
        target: Target,
        /// Comma-separated versions.
        #[arg(long, value_delimiter = ',')]
        versions: Vec<u64>,
    },
    /// Undelete versions.
    Undelete {
        #[command(flatten)]
        common: Common,
        #[command(flatten)]
        target: Target,
        /// Comma-separated versions.
        #[arg(long, value_delimiter = ',', required = true)]
        versions: Vec<u64>,
    },
    /// Destroy versions permanently.
    Destroy {
        #[command(flatten)]
        common: Common,
        #[command(flatten)]
        target: Target,
        /// Comma-separated versions.
        #[arg(long, value_delimiter = ',', required = true)]
        versions: Vec<u64>,
    },
    /// Secret metadata.
    Metadata {
        #[command(subcommand)]
        command: MetadataCmd,
    },
}

#[derive(Subcommand, Debug)]
pub(super) enum MetadataCmd {
    /// Read a secret's metadata.
    Get {
        #[command(flatten)]
        common: Common,
        #[command(flatten)]
        target: Target,
    },
}

#[derive(Args, Debug)]
pub(super) struct Target {
    /// Mount path; if omitted, the mount is found from PATH as the Vault CLI does.
    #[arg(long)]
    pub(super) mount: Option<String>,
    /// Secret path, e.g. `secret/team/db`.
    pub(super) path: String,
}

/// Rewrites Vault-style single-dash long flags (`-format=json`) into clap's `--format=json`.
pub(super) fn normalize_args(args: impl Iterator<Item = String>) -> Vec<String> {
    args.enumerate()
        .map(|(i, a)| {
            let is_long_single = i > 0 && a.starts_with('-') && !a.starts_with("--") && a.len() > 2;
            if is_long_single
                && a[1..]
                    .chars()
                    .next()
                    .is_some_and(|c| c.is_ascii_alphabetic())
            {
                format!("-{a}")
            } else {
                a
            }
        })
        .collect()
}
