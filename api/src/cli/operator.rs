//! `coffer status` and `coffer operator init | unseal | seal | status | rotate`, and the
//! dispatch to the cluster commands.

use serde_json::json;

use super::args::OperatorCmd;
use super::{backup, client, cluster, exit, output, print_json, scalar, Common};
use crate::client::ClientError;

/// `sys/health` with every state answered as 200, so its body comes back whatever the
/// node's mode (an audit spool that refuses records still answers 503).
const HEALTH_ANY: &str = "sys/health?standbyok=true&readonlycode=200&sealedcode=200&uninitcode=200";

/// The node's mode as `coffer status` and `coffer health` name it.
fn mode(health: &serde_json::Value) -> &'static str {
    let flag = |name: &str| health[name].as_bool() == Some(true);
    if !flag("initialized") {
        "uninitialized"
    } else if flag("sealed") {
        "sealed"
    } else if flag("read_only") {
        "read-only standby"
    } else if flag("standby") {
        "follower"
    } else {
        "leader"
    }
}

pub(super) async fn status(common: &Common) -> Result<i32, ClientError> {
    let c = client(common)?;
    let resp = c.request("GET", "sys/seal-status", None).await?;
    let sealed = resp.body["sealed"].as_bool() == Some(true);
    // The mode comes from `sys/health`; a node too old or too broken to answer it still
    // has its seal status printed.
    let health = c
        .request("GET", HEALTH_ANY, None)
        .await
        .ok()
        .map(|r| r.body);
    // The table gains the mode; `-format=json` and `-field` keep `sys/seal-status` as is.
    let mut shown = resp.body;
    if let (Some(health), Some(fields), "table", None) = (
        &health,
        shown.as_object_mut(),
        common.format.as_str(),
        &common.field,
    ) {
        fields.insert("mode".into(), json!(mode(health)));
        for name in ["applied_index", "last_contact_ms", "audit_spool_backlog"] {
            fields.insert(name.into(), health[name].clone());
        }
    }
    output(common, &shown, &shown);
    if let Some(health) = health.filter(|h| h["read_only"].as_bool() == Some(true)) {
        eprintln!(
            "\nREAD-ONLY STANDBY: no leader with a quorum for {} ms. Reads are served from this node's \
             replica as of index {}; writes are refused. {} audit records wait in this node's spool \
             to be merged back when a leader returns.",
            health["last_contact_ms"], health["applied_index"], health["audit_spool_backlog"]
        );
    }
    // As `vault status`: 2 when sealed.
    Ok(if sealed { exit::SERVER } else { exit::OK })
}

/// `coffer health`: one line, and 0 only when the node serves.
pub(super) async fn health(common: &Common) -> Result<i32, ClientError> {
    let resp = client(common)?.request("GET", HEALTH_ANY, None).await?;
    let mode = mode(&resp.body);
    if common.format == "json" {
        print_json(&resp.body);
    } else {
        println!(
            "{mode}: applied index {}, last contact {} ms, audit backlog {}",
            resp.body["applied_index"],
            resp.body["last_contact_ms"],
            resp.body["audit_spool_backlog"]
        );
    }
    Ok(match mode {
        "leader" | "follower" | "read-only standby" => exit::OK,
        _ => exit::SERVER,
    })
}

pub(super) async fn operator(cmd: OperatorCmd) -> Result<i32, ClientError> {
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
        OperatorCmd::Snapshot { command } => backup::snapshot(command).await,
        OperatorCmd::Restore(args) => backup::restore(args).await,
        OperatorCmd::Recover(args) => backup::recover(args).await,
    }
}
