//! `coffer kv get | put | patch | list | delete | undelete | destroy | metadata get`, with the
//! mount found from the path as the Vault CLI finds it.

use std::collections::BTreeMap;

use serde_json::{json, Map, Value};

use super::args::{KvCmd, MetadataCmd, Target};
use super::output::warn_if_read_only;
use super::{client, exit, output, print_json, print_table, rows, scalar, Common};
use crate::client::{Client, ClientError};

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

pub(super) async fn kv(cmd: KvCmd) -> Result<i32, ClientError> {
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
