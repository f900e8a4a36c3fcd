//! The `coffer` command line: `server`, `operator …`, `kv …`. Vault's conventions: single-dash
//! long flags (`-format=json`), `COFFER_ADDR`/`COFFER_TOKEN`/`COFFER_CACERT` with `VAULT_*`
//! fallbacks, secrets on stdout and everything else on stderr, and exit codes 0 ok, 1 local or
//! usage error, 2 server error, 3 refused because the cluster is read-only, 4 not found.

use std::path::PathBuf;

use clap::Parser;

mod args;
mod audit;
mod backup;
mod cluster;
mod identity;
mod kv;
mod operator;
mod output;

pub use args::Common;
use args::{normalize_args, Cli, Command, ServerArgs};
pub(crate) use output::{output, print_json, print_table, rows, scalar};

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
        Command::Operator { command } => operator::operator(command).await,
        Command::Status(common) => operator::status(&common).await,
        Command::Health(common) => operator::health(&common).await,
        Command::Kv { command } => kv::kv(command).await,
        Command::Login {
            common,
            method,
            args,
        } => identity::login(&common, &method, &args).await,
        Command::Token { command } => identity::token(command).await,
        Command::Policy { command } => identity::policy(command).await,
        Command::User { command } => identity::user(command).await,
        Command::Audit { command } => audit::audit(command).await,
        Command::Completions { shell } => {
            let mut cmd = <Cli as clap::CommandFactory>::command();
            clap_complete::generate(shell, &mut cmd, "coffer", &mut std::io::stdout());
            Ok(exit::OK)
        }
        Command::Man { dir } => man(dir.as_deref()),
    };
    match result {
        Ok(code) => code,
        Err(e) => report(&e),
    }
}

/// `coffer man`: coffer(1) on stdout, or a page per command in `dir`.
fn man(dir: Option<&std::path::Path>) -> Result<i32, ClientError> {
    let cmd = <Cli as clap::CommandFactory>::command();
    let written = match dir {
        Some(dir) => std::fs::create_dir_all(dir)
            .and_then(|()| clap_mangen::generate_to(cmd, dir))
            .map(|()| eprintln!("Wrote the man pages to {}.", dir.display())),
        None => clap_mangen::Man::new(cmd).render(&mut std::io::stdout()),
    };
    written.map_err(|e| ClientError::Local(format!("writing the man pages: {e}")))?;
    Ok(exit::OK)
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
        // Without a file: defaults, `COFFER_*` variables and flags (a container's way).
        None => ServerConfig::default(),
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
        // A container's dev server listens where its COFFER_LISTEN_ADDR says (0.0.0.0).
        let listen = args
            .dev_listen_address
            .clone()
            .or_else(|| cfg.listen_addr.clone())
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
