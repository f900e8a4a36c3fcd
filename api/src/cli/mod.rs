//! The `coffer` command line: `server`, `operator …`, `kv …`. Vault's conventions: single-dash
//! long flags (`-format=json`), `COFFER_ADDR`/`COFFER_TOKEN`/`COFFER_CACERT` with `VAULT_*`
//! fallbacks, secrets on stdout and everything else on stderr, and exit codes 0 ok, 1 local or
//! usage error, 2 server error, 3 refused because the cluster is read-only, 4 not found.

use std::collections::BTreeMap;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use serde_json::{json, Map, Value};

mod audit;
mod cluster;
mod identity;

use crate::client::{Client, ClientError};
use crate::config::ServerConfig;
use crate::server::DevOptions;

/// Process exit codes.
pub mod exit {
    /// Success.
    pub const OK: i32 = 0;
    /// Local or usage error.
    pub const LOCAL: i32 = 1;
    /// Server error.
    pub const SERVER: i32 = 2;
    /// Refused: the cluster is read-only.
    pub const READ_ONLY: i32 = 3;
    /// Not found.
    pub const NOT_FOUND: i32 = 4;
}

#[derive(Parser, Debug)]
#[command(name = "coffer", version, about = "Coffer: a replicated secret vault")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
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
    /// Seal status of the node (same as `operator status`).
    Status(Common),
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
}

#[derive(Args, Debug)]
struct ServerArgs {
    /// TOML configuration file.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Development mode: single node, initialized and unsealed, root token printed.
    #[arg(long)]
    dev: bool,
    /// Dev mode: the root token to create.
    #[arg(long)]
    dev_root_token_id: Option<String>,
    /// Dev mode: the address to listen on (default 127.0.0.1:8200).
    #[arg(long)]
    dev_listen_address: Option<String>,
    /// Data directory (dev default: a fresh temporary directory).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Override `node_id`.
    #[arg(long)]
    node_id: Option<u64>,
    /// Override `api_addr`.
    #[arg(long)]
    api_addr: Option<String>,
    /// Override `peer_addr`.
    #[arg(long)]
    peer_addr: Option<String>,
    /// Override `log_level`.
    #[arg(long)]
    log_level: Option<String>,
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
enum OperatorCmd {
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
}

#[derive(Subcommand, Debug)]
enum KvCmd {
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
enum MetadataCmd {
    /// Read a secret's metadata.
    Get {
        #[command(flatten)]
        common: Common,
        #[command(flatten)]
        target: Target,
    },
}

#[derive(Args, Debug)]
struct Target {
    /// Mount path; if omitted, the mount is found from PATH as the Vault CLI does.
    #[arg(long)]
    mount: Option<String>,
    /// Secret path, e.g. `secret/team/db`.
    path: String,
}

/// Rewrites Vault-style single-dash long flags (`-format=json`) into clap's `--format=json`.
fn normalize_args(args: impl Iterator<Item = String>) -> Vec<String> {
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

/// Entry point of the binary; returns the process exit code.
pub fn main() -> i32 {
    let cli = match Cli::try_parse_from(normalize_args(std::env::args())) {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() {
                exit::LOCAL
            } else {
                exit::OK
            };
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: starting the runtime: {e}");
            return exit::LOCAL;
        }
    };
    runtime.block_on(run(cli))
}

async fn run(cli: Cli) -> i32 {
    let result = match cli.command {
        Command::Server(args) => return server(args).await,
        Command::Operator { command } => operator(command).await,
        Command::Status(common) => status(&common).await,
        Command::Kv { command } => kv(command).await,
        Command::Login {
            common,
            method,
            args,
        } => identity::login(&common, &method, &args).await,
        Command::Token { command } => identity::token(command).await,
        Command::Policy { command } => identity::policy(command).await,
        Command::User { command } => identity::user(command).await,
        Command::Audit { command } => audit::audit(command).await,
    };
    match result {
        Ok(code) => code,
        Err(e) => report(&e),
    }
}

fn report(e: &ClientError) -> i32 {
    eprintln!("Error: {e}");
    match e {
        ClientError::Local(_) => exit::LOCAL,
        ClientError::Server { status: 404, .. } => exit::NOT_FOUND,
        ClientError::Server {
            status: 503,
            messages,
        } if messages.iter().any(|m| m.contains("read-only")) => exit::READ_ONLY,
        _ => exit::SERVER,
    }
}

fn env_any(names: &[&str]) -> Option<String> {
    names
        .iter()
        .find_map(|n| std::env::var(n).ok().filter(|v| !v.is_empty()))
}

pub(crate) fn client(common: &Common) -> Result<Client, ClientError> {
    let addr = common
        .address
        .clone()
        .or_else(|| env_any(&["COFFER_ADDR", "VAULT_ADDR"]))
        .unwrap_or_else(|| "https://127.0.0.1:8200".into());
    let ca_path = common
        .ca_cert
        .clone()
        .or_else(|| env_any(&["COFFER_CACERT", "VAULT_CACERT"]).map(PathBuf::from));
    let ca = ca_path
        .map(|p| {
            std::fs::read_to_string(&p)
                .map_err(|e| ClientError::Local(format!("reading CA {}: {e}", p.display())))
        })
        .transpose()?;
    let token = env_any(&["COFFER_TOKEN", "VAULT_TOKEN"]).or_else(|| {
        std::fs::read_to_string(identity::token_file()?)
            .ok()
            .map(|t| t.trim().to_string())
    });
    Client::new(&addr, ca.as_deref(), token)
}

async fn server(args: ServerArgs) -> i32 {
    match server_config(&args) {
        Ok((cfg, dev)) => {
            crate::server_logging::init(&cfg);
            match crate::server::run(cfg, dev).await {
                Ok(()) => exit::OK,
                Err(e) => {
                    eprintln!("Error: {e:#}");
                    exit::LOCAL
                }
            }
        }
        Err(e) => {
            eprintln!("Error: {e}");
            exit::LOCAL
        }
    }
}

fn server_config(args: &ServerArgs) -> Result<(ServerConfig, Option<DevOptions>), String> {
    let mut cfg = match &args.config {
        Some(path) => ServerConfig::from_file(path)?,
        None if args.dev => ServerConfig::default(),
        None => return Err("either --config FILE or --dev is required".into()),
    };
    cfg.apply_env(|k| std::env::var(k).ok())?;
    if let Some(v) = args.node_id {
        cfg.node_id = v;
    }
    if let Some(v) = &args.api_addr {
        cfg.api_addr = v.clone();
    }
    if let Some(v) = &args.peer_addr {
        cfg.peer_addr = v.clone();
    }
    if let Some(v) = &args.log_level {
        cfg.log_level = v.clone();
    }
    if let Some(v) = &args.data_dir {
        cfg.data_dir = v.clone();
    }
    let dev = args.dev.then(|| DevOptions {
        root_token_id: args.dev_root_token_id.clone(),
    });
    if dev.is_some() {
        let listen = args
            .dev_listen_address
            .clone()
            .unwrap_or_else(|| "127.0.0.1:8200".into());
        cfg.listen_addr = Some(listen.clone());
        cfg.api_addr = format!("https://{listen}");
        if cfg.data_dir.as_os_str().is_empty() {
            let dir = tempfile::Builder::new()
                .prefix("coffer-dev-")
                .tempdir()
                .map_err(|e| format!("creating a dev data dir: {e}"))?;
            cfg.data_dir = dir.keep();
        }
    }
    cfg.validate()?;
    Ok((cfg, dev))
}

pub(crate) fn print_json(value: &Value) {
    println!(
        "{}",
        serde_json::to_string_pretty(value).unwrap_or_default()
    );
}

pub(crate) fn print_table(rows: &[(String, String)]) {
    let width = rows.iter().map(|(k, _)| k.len()).max().unwrap_or(3).max(3);
    println!("{:width$}    Value", "Key");
    println!("{:width$}    -----", "---");
    for (k, v) in rows {
        println!("{k:width$}    {v}");
    }
}

pub(crate) fn scalar(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "n/a".into(),
        other => other.to_string(),
    }
}

pub(crate) fn rows(obj: &Value) -> Vec<(String, String)> {
    obj.as_object()
        .map(|m| m.iter().map(|(k, v)| (k.clone(), scalar(v))).collect())
        .unwrap_or_default()
}

/// Prints `data` in the chosen format, or one field of it.
pub(crate) fn output(common: &Common, whole: &Value, data: &Value) -> i32 {
    if let Some(field) = &common.field {
        return match data.get(field) {
            Some(v) => {
                println!("{}", scalar(v));
                exit::OK
            }
            None => {
                eprintln!("Error: field {field:?} not present in secret");
                exit::LOCAL
            }
        };
    }
    if common.format == "json" {
        print_json(whole);
    } else {
        print_table(&rows(data));
    }
    exit::OK
}

async fn status(common: &Common) -> Result<i32, ClientError> {
    let resp = client(common)?
        .request("GET", "sys/seal-status", None)
        .await?;
    output(common, &resp.body, &resp.body);
    // As `vault status`: 2 when sealed.
    Ok(if resp.body["sealed"].as_bool() == Some(true) {
        exit::SERVER
    } else {
        exit::OK
    })
}

async fn operator(cmd: OperatorCmd) -> Result<i32, ClientError> {
    match cmd {
        OperatorCmd::Init {
            common,
            key_shares,
            key_threshold,
        } => {
            let body = json!({"secret_shares": key_shares, "secret_threshold": key_threshold});
            let resp = client(&common)?
                .request("POST", "sys/init", Some(&body))
                .await?;
            if common.format == "json" {
                print_json(&resp.body);
                return Ok(exit::OK);
            }
            for (i, key) in resp.body["keys_base64"]
                .as_array()
                .into_iter()
                .flatten()
                .enumerate()
            {
                println!("Unseal Key {}: {}", i + 1, scalar(key));
            }
            println!("\nInitial Root Token: {}", scalar(&resp.body["root_token"]));
            eprintln!(
                "\nVault initialized with {key_shares} key shares and a key threshold of {key_threshold}.\n\
                 Store the shares apart from each other: {key_threshold} of them unseal the vault."
            );
            Ok(exit::OK)
        }
        OperatorCmd::Unseal { common, key, reset } => {
            let body = if reset {
                json!({"reset": true})
            } else {
                let key = match key {
                    Some(k) => k,
                    None => {
                        eprint!("Unseal Key (will be hidden): ");
                        let mut line = String::new();
                        std::io::stdin()
                            .read_line(&mut line)
                            .map_err(|e| ClientError::Local(e.to_string()))?;
                        line.trim().to_string()
                    }
                };
                json!({ "key": key })
            };
            let resp = client(&common)?
                .request("POST", "sys/unseal", Some(&body))
                .await?;
            output(&common, &resp.body, &resp.body);
            Ok(exit::OK)
        }
        OperatorCmd::Seal(common) => {
            client(&common)?.request("POST", "sys/seal", None).await?;
            eprintln!("Success! Vault is sealed.");
            Ok(exit::OK)
        }
        OperatorCmd::Status(common) => status(&common).await,
        OperatorCmd::Rotate(common) => {
            let c = client(&common)?;
            c.request("POST", "sys/rotate", None).await?;
            let resp = c.request("GET", "sys/key-status", None).await?;
            eprintln!("Success! Rotated key");
            output(&common, &resp.body, &resp.body["data"]);
            Ok(exit::OK)
        }
        OperatorCmd::Pack { command } => cluster::pack(command).await,
        OperatorCmd::Join(args) => cluster::join(args).await,
        OperatorCmd::Members(common) => cluster::members(&common).await,
        OperatorCmd::RemoveNode { common, node_id } => {
            let path = format!("sys/coffer/members/{node_id}");
            let done = format!("Removed node {node_id}.");
            cluster::change(&common, "DELETE", &path, &done).await
        }
        OperatorCmd::Promote { common, node_id } => {
            let path = format!("sys/coffer/members/{node_id}/promote");
            let done = format!("Node {node_id} is a voter.");
            cluster::change(&common, "POST", &path, &done).await
        }
        OperatorCmd::StepDown(common) => {
            let done = "The leader stepped down; another voter leads now.";
            cluster::change(&common, "PUT", "sys/step-down", done).await
        }
    }
}

/// Resolves `secret/team/db` into (`secret/`, `team/db`) with the server's mount table, as the
/// Vault CLI's pre-flight request does.
async fn split_mount(c: &Client, target: &Target) -> Result<(String, String), ClientError> {
    if let Some(mount) = &target.mount {
        let mount = format!("{}/", mount.trim_matches('/'));
        return Ok((mount, target.path.trim_start_matches('/').to_string()));
    }
    let path = target.path.trim_start_matches('/');
    let resp = c
        .request("GET", &format!("sys/internal/ui/mounts/{path}"), None)
        .await?;
    let mount = resp.body["data"]["path"]
        .as_str()
        .ok_or_else(|| ClientError::Local(format!("no KV mount serves {path:?}")))?
        .to_string();
    let rest = path.strip_prefix(mount.as_str()).unwrap_or("").to_string();
    Ok((mount, rest))
}

fn parse_pairs(pairs: &[String]) -> Result<Map<String, Value>, ClientError> {
    let mut data = Map::new();
    for pair in pairs {
        let (k, v) = pair
            .split_once('=')
            .ok_or_else(|| ClientError::Local(format!("{pair:?} is not key=value")))?;
        let value = if v == "-" {
            let mut s = String::new();
            std::io::Read::read_to_string(&mut std::io::stdin(), &mut s)
                .map_err(|e| ClientError::Local(e.to_string()))?;
            s.trim_end_matches('\n').to_string()
        } else if let Some(file) = v.strip_prefix('@') {
            std::fs::read_to_string(file)
                .map_err(|e| ClientError::Local(format!("reading {file}: {e}")))?
        } else {
            v.to_string()
        };
        data.insert(k.to_string(), Value::String(value));
    }
    if data.is_empty() {
        return Err(ClientError::Local(
            "nothing to write: give key=value pairs".into(),
        ));
    }
    Ok(data)
}

/// One line on stderr when the answer came from a read-only standby, with its staleness.
fn warn_if_read_only(resp: &crate::client::Response) {
    let header = |name: &str| {
        resp.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("?")
            .to_string()
    };
    if resp.headers.contains_key("x-coffer-read-only") {
        eprintln!(
            "Warning: read-only standby answered (no quorum): data as of index {}, last contact with the leader {} ms ago",
            header("x-coffer-applied-index"),
            header("x-coffer-last-contact-ms")
        );
    }
}

async fn kv(cmd: KvCmd) -> Result<i32, ClientError> {
    match cmd {
        KvCmd::Get {
            common,
            target,
            version,
        } => {
            let c = client(&common)?;
            let (mount, path) = split_mount(&c, &target).await?;
            let query = version.map(|v| format!("?version={v}")).unwrap_or_default();
            let resp = c
                .request("GET", &format!("{mount}data/{path}{query}"), None)
                .await?;
            warn_if_read_only(&resp);
            if resp.status == reqwest::StatusCode::NOT_FOUND {
                eprintln!(
                    "No value found at {mount}data/{path}: the version is deleted or destroyed"
                );
                return Ok(exit::NOT_FOUND);
            }
            let data = &resp.body["data"]["data"];
            if common.field.is_none() && common.format == "table" {
                println!("====== Metadata ======");
                print_table(&rows(&resp.body["data"]["metadata"]));
                println!("\n====== Data ======");
            }
            Ok(output(&common, &resp.body, data))
        }
        KvCmd::Put {
            common,
            target,
            cas,
            pairs,
        } => write(&common, &target, cas, &pairs, "POST").await,
        KvCmd::Patch {
            common,
            target,
            cas,
            pairs,
        } => write(&common, &target, cas, &pairs, "PATCH").await,
        KvCmd::List { common, target } => {
            let c = client(&common)?;
            let (mount, path) = split_mount(&c, &target).await?;
            let resp = c
                .request("LIST", &format!("{mount}metadata/{path}"), None)
                .await?;
            if common.format == "json" {
                print_json(&resp.body["data"]["keys"]);
            } else {
                println!("Keys\n----");
                for key in resp.body["data"]["keys"].as_array().into_iter().flatten() {
                    println!("{}", scalar(key));
                }
            }
            Ok(exit::OK)
        }
        KvCmd::Delete {
            common,
            target,
            versions,
        } => {
            let c = client(&common)?;
            let (mount, path) = split_mount(&c, &target).await?;
            if versions.is_empty() {
                c.request("DELETE", &format!("{mount}data/{path}"), None)
                    .await?;
            } else {
                let body = json!({ "versions": versions });
                c.request("POST", &format!("{mount}delete/{path}"), Some(&body))
                    .await?;
            }
            eprintln!("Success! Data deleted (if it existed) at: {mount}data/{path}");
            Ok(exit::OK)
        }
        KvCmd::Undelete {
            common,
            target,
            versions,
        } => versions_op(&common, &target, "undelete", &versions).await,
        KvCmd::Destroy {
            common,
            target,
            versions,
        } => versions_op(&common, &target, "destroy", &versions).await,
        KvCmd::Metadata {
            command: MetadataCmd::Get { common, target },
        } => {
            let c = client(&common)?;
            let (mount, path) = split_mount(&c, &target).await?;
            let resp = c
                .request("GET", &format!("{mount}metadata/{path}"), None)
                .await?;
            let data = &resp.body["data"];
            if common.format == "json" || common.field.is_some() {
                return Ok(output(&common, &resp.body, data));
            }
            let mut summary = data.clone();
            if let Some(obj) = summary.as_object_mut() {
                obj.remove("versions");
            }
            print_table(&rows(&summary));
            let versions: BTreeMap<u64, Value> = data["versions"]
                .as_object()
                .into_iter()
                .flatten()
                .filter_map(|(k, v)| Some((k.parse().ok()?, v.clone())))
                .collect();
            for (v, meta) in versions {
                println!("\n====== Version {v} ======");
                print_table(&rows(&meta));
            }
            Ok(exit::OK)
        }
    }
}

async fn write(
    common: &Common,
    target: &Target,
    cas: Option<u64>,
    pairs: &[String],
    method: &str,
) -> Result<i32, ClientError> {
    let c = client(common)?;
    let data = parse_pairs(pairs)?;
    let (mount, path) = split_mount(&c, target).await?;
    let mut body = json!({ "data": data });
    if let Some(cas) = cas {
        body["options"] = json!({ "cas": cas });
    }
    let resp = c
        .request(method, &format!("{mount}data/{path}"), Some(&body))
        .await?;
    eprintln!("Success! Data written to: {mount}data/{path}");
    Ok(output(common, &resp.body, &resp.body["data"]))
}

async fn versions_op(
    common: &Common,
    target: &Target,
    op: &str,
    versions: &[u64],
) -> Result<i32, ClientError> {
    let c = client(common)?;
    let (mount, path) = split_mount(&c, target).await?;
    let body = json!({ "versions": versions });
    c.request("POST", &format!("{mount}{op}/{path}"), Some(&body))
        .await?;
    eprintln!("Success! {op} done on versions {versions:?} of {mount}data/{path}");
    Ok(exit::OK)
}
