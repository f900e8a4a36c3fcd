//! `coffer operator pack create | join | members | remove-node | promote | step-down`.

use std::path::{Path, PathBuf};

use clap::Subcommand;
use coffer_vault::node::join;
use coffer_vault::rules::pack::{generate_passphrase, open_pack_stream};
use serde_json::{json, Value};
use zeroize::Zeroizing;

use super::{client, exit, print_json, Common};
use crate::client::ClientError;

/// `operator pack …`.
#[derive(Subcommand, Debug)]
pub enum PackCmd {
    /// Make a one-time bootstrap pack for a new node (on any unsealed node).
    Create {
        #[command(flatten)]
        common: Common,
        /// The new node's id (unique in the cluster).
        #[arg(long)]
        node_id: u64,
        /// Its HTTPS API address, e.g. `https://10.0.0.4:8200`.
        #[arg(long)]
        api_addr: String,
        /// Its peer address, e.g. `10.0.0.4:8201`.
        #[arg(long)]
        peer_addr: String,
        /// Promote it to voter once it has caught up (default: stays a learner).
        #[arg(long)]
        voter: bool,
        /// Put the root key in the pack so the node unseals itself at start.
        #[arg(long)]
        include_unseal_key: bool,
        /// Validity, e.g. `24h`, `30m`.
        #[arg(long, default_value = "24h")]
        ttl: String,
        /// Read the passphrase from this file instead of generating one.
        #[arg(long)]
        passphrase_file: Option<PathBuf>,
        /// Where to write the pack.
        #[arg(short = 'o', long = "output")]
        output: PathBuf,
    },
}

fn local(e: impl std::fmt::Display) -> ClientError {
    ClientError::Local(e.to_string())
}

fn read_passphrase(file: Option<&Path>) -> Result<Zeroizing<String>, ClientError> {
    match file {
        Some(path) => {
            let text = Zeroizing::new(
                std::fs::read_to_string(path)
                    .map_err(|e| local(format!("reading {}: {e}", path.display())))?,
            );
            Ok(Zeroizing::new(text.trim().to_string()))
        }
        None => Ok(Zeroizing::new(super::identity::prompt("Pack passphrase")?)),
    }
}

/// `operator pack create`.
pub async fn pack(cmd: PackCmd) -> Result<i32, ClientError> {
    let PackCmd::Create {
        common,
        node_id,
        api_addr,
        peer_addr,
        voter,
        include_unseal_key,
        ttl,
        passphrase_file,
        output,
    } = cmd;
    let ttl_secs = coffer_vault::clock::parse_duration_secs(&ttl)
        .ok_or_else(|| local(format!("--ttl: {ttl:?} is not a duration like 24h or 30m")))?;
    let (passphrase, generated) = match &passphrase_file {
        Some(path) => (read_passphrase(Some(path))?, false),
        None => (Zeroizing::new(generate_passphrase()), true),
    };
    let body = json!({
        "node_id": node_id,
        "api_addr": api_addr,
        "peer_addr": peer_addr,
        "voter": voter,
        "include_unseal_key": include_unseal_key,
        "ttl_secs": ttl_secs,
        "passphrase": passphrase.as_str(),
    });
    // Streamed to disk as it arrives: neither side holds the pack in memory.
    let ((), headers) = super::backup::download_to_file(
        &common,
        reqwest::Method::POST,
        "sys/coffer/packs?raw=true",
        Some(&body),
        &output,
        "Writing the pack [{bar:25}] {bytes}/{total_bytes}",
        |_| Ok(()),
    )
    .await?;
    let data: Value = headers
        .get("x-coffer-pack")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| serde_json::from_str(v).ok())
        .unwrap_or_default();
    eprintln!(
        "Wrote the bootstrap pack for node {node_id} ({}) to {}.",
        if voter { "voter" } else { "learner" },
        output.display()
    );
    eprintln!(
        "It is single-use and expires at {}.",
        data["expires_at"].as_str().unwrap_or("?")
    );
    if include_unseal_key {
        eprintln!(
            "It holds the root key: whoever has the pack and its passphrase can decrypt the vault."
        );
    }
    if generated {
        eprintln!("One-time passphrase (give it to the new node's operator separately):");
        println!("{}", passphrase.as_str());
    }
    eprintln!(
        "On the new machine: coffer operator join --pack {} --data-dir DIR",
        output.display()
    );
    Ok(exit::OK)
}

/// Arguments of `operator join`.
#[derive(clap::Args, Debug)]
pub struct JoinArgs {
    /// The pack file.
    #[arg(long)]
    pack: PathBuf,
    /// The new node's data directory (empty or absent).
    #[arg(long)]
    data_dir: PathBuf,
    /// Read the passphrase from this file instead of asking.
    #[arg(long)]
    passphrase_file: Option<PathBuf>,
    /// Start the node when done.
    #[arg(long)]
    start: bool,
    /// With `--start`: when the data directory already holds a node that joined (its
    /// `coffer.toml` and Raft data), start it as it is instead of refusing, so a container's
    /// command can stay the same across restarts. The pack is not read then, and may be
    /// deleted once the node has joined.
    #[arg(long, requires = "start")]
    resume: bool,
}

fn unix_now() -> u64 {
    u64::try_from(coffer_vault::clock::now().unix_timestamp()).unwrap_or(0)
}

/// `operator join`: opens the pack, asks the cluster whether it accepts it, installs the
/// snapshot and the node's files, and prints (or runs) the command that starts the node.
pub async fn join(args: JoinArgs) -> Result<i32, ClientError> {
    let config = args.data_dir.join("coffer.toml");
    if args.resume && args.data_dir.join("raft").exists() && config.exists() {
        eprintln!(
            "{} already holds a node that joined; starting it.",
            args.data_dir.display()
        );
        return start_server(&config);
    }
    let file = std::fs::File::open(&args.pack)
        .map_err(|e| local(format!("reading {}: {e}", args.pack.display())))?;
    let passphrase = read_passphrase(args.passphrase_file.as_deref())?;
    let (contents, mut snapshot) = {
        let passphrase = passphrase.clone();
        let reader = std::io::BufReader::with_capacity(1 << 20, file);
        tokio::task::spawn_blocking(move || open_pack_stream(reader, &passphrase, unix_now()))
            .await
            .map_err(local)?
            .map_err(|e| local(format!("pack refused: {e}")))?
    };
    let dir = &args.data_dir;
    if dir.join("raft").exists() {
        return Err(local(format!(
            "{} already holds a node's data; join needs an empty data directory",
            dir.display()
        )));
    }
    // The node's member key is made here and never leaves the machine: registration sends
    // only a signing request for it.
    let prepared = join::prepare(&contents).map_err(local)?;
    match join::check(&contents, &prepared.request).await {
        Ok(None) => eprintln!("The cluster accepts the pack."),
        Ok(Some(why)) => eprintln!(
            "Warning: no member answered ({why}); the node will register when it starts and can reach one."
        ),
        Err(why) => {
            eprintln!("Error: the cluster refused the pack: {why}");
            return Ok(exit::SERVER);
        }
    }
    let progress = super::backup::bar(
        0,
        "Installing snapshot [{bar:25}] {percent:>3}% ({pos}/{len} records)",
    );
    let installed = join::install(
        dir,
        &contents,
        &prepared,
        &mut snapshot,
        &mut |done, total| {
            progress.set_length(total);
            progress.set_position(done);
        },
    );
    progress.finish_and_clear();
    let index = installed.map_err(local)?;
    eprintln!("Installed the cluster's state as of log index {index}.");
    let command = format!("coffer server --config {}", config.display());
    if args.start {
        eprintln!("Starting: {command}");
        return start_server(&config);
    }
    eprintln!("Node {} is ready. Start it with:", contents.node_id);
    println!("{command}");
    Ok(exit::OK)
}

/// Replaces this process with `coffer server --config CONFIG`; returns only on failure.
fn start_server(config: &Path) -> Result<i32, ClientError> {
    use std::os::unix::process::CommandExt;
    let exe = std::env::current_exe().map_err(local)?;
    let err = std::process::Command::new(exe)
        .args(["server", "--config"])
        .arg(config)
        .exec();
    Err(local(format!("starting the server: {err}")))
}

/// `operator members`.
pub async fn members(common: &Common) -> Result<i32, ClientError> {
    let resp = client(common)?
        .request("GET", "sys/coffer/members", None)
        .await?;
    if common.format == "json" {
        print_json(&resp.body);
        return Ok(exit::OK);
    }
    let empty = Vec::new();
    let list = resp.body["data"]["members"].as_array().unwrap_or(&empty);
    let text = |v: &Value| match v {
        Value::Null => "-".to_string(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    println!(
        "{:<6} {:<28} {:<22} {:<8} {:<8} {:<8} {:<6} LAST CONTACT",
        "ID", "API", "PEER", "ROLE", "LEADER", "MATCHED", "LAG"
    );
    for m in list {
        let role = if m["voter"].as_bool() == Some(true) {
            "voter"
        } else {
            "learner"
        };
        let contact = match m["last_contact_ms"].as_u64() {
            Some(ms) => format!("{ms} ms"),
            None => "-".into(),
        };
        println!(
            "{:<6} {:<28} {:<22} {:<8} {:<8} {:<8} {:<6} {contact}",
            text(&m["node_id"]),
            text(&m["api_addr"]),
            text(&m["peer_addr"]),
            role,
            if m["leader"].as_bool() == Some(true) {
                "yes"
            } else {
                ""
            },
            text(&m["matched_index"]),
            text(&m["lag"]),
        );
    }
    Ok(exit::OK)
}

/// `operator remove-node N`, `promote N`, `step-down`.
pub async fn change(
    common: &Common,
    method: &str,
    path: &str,
    done: &str,
) -> Result<i32, ClientError> {
    client(common)?.request(method, path, None).await?;
    eprintln!("{done}");
    Ok(exit::OK)
}
