//! `coffer audit tail|export|verify`.

use std::io::Write;

use clap::{Args, Subcommand};
use serde_json::Value;

use super::{client, exit, print_json, Common};
use crate::client::{Client, ClientError};

#[derive(Args, Debug, Clone, Default)]
pub struct Filter {
    /// Origin node id.
    #[arg(long)]
    node: Option<u64>,
    /// Actor (`root`, `userpass-alice`, a username for logins).
    #[arg(long)]
    actor: Option<String>,
    /// Operation (`read`, `write`, `login`, …).
    #[arg(long)]
    operation: Option<String>,
    /// Path prefix.
    #[arg(long)]
    path: Option<String>,
    /// Node mode at the time (`leader`, `follower`, `read-only`, `sealed`).
    #[arg(long)]
    mode: Option<String>,
    /// Outcome (`ok`, `denied`, `refused`, `not_found`, `error`).
    #[arg(long)]
    outcome: Option<String>,
    /// From this RFC 3339 time.
    #[arg(long)]
    since: Option<String>,
    /// Until this RFC 3339 time.
    #[arg(long)]
    until: Option<String>,
}

impl Filter {
    fn query(&self, after: Option<&str>, limit: usize) -> String {
        let mut q = vec![format!("limit={limit}")];
        let mut add = |k: &str, v: &Option<String>| {
            if let Some(v) = v {
                q.push(format!("{k}={}", encode(v)));
            }
        };
        add("node", &self.node.map(|n| n.to_string()));
        add("actor", &self.actor);
        add("operation", &self.operation);
        add("path_prefix", &self.path);
        add("mode", &self.mode);
        add("outcome", &self.outcome);
        add("since", &self.since);
        add("until", &self.until);
        add("after", &after.map(String::from));
        q.join("&")
    }
}

fn encode(v: &str) -> String {
    v.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' | b'/' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[derive(Subcommand, Debug)]
pub enum AuditCmd {
    /// Show the latest merged records matching the filters (one per line).
    Tail {
        #[command(flatten)]
        common: Common,
        #[command(flatten)]
        filter: Filter,
        /// How many records.
        #[arg(short = 'n', long = "lines", default_value_t = 20)]
        n: usize,
    },
    /// Write every matching record as JSON lines to a file (or stdout with `-o -`).
    Export {
        #[command(flatten)]
        common: Common,
        #[command(flatten)]
        filter: Filter,
        /// Output file.
        #[arg(short = 'o', long, default_value = "-")]
        output: String,
    },
    /// Check every node's chain in the merged log and this node's spool.
    Verify(Common),
}

async fn pages(
    c: &Client,
    filter: &Filter,
    mut each: impl FnMut(&Value) -> Result<(), ClientError>,
) -> Result<u64, ClientError> {
    let mut after: Option<String> = None;
    let mut count = 0;
    loop {
        let q = filter.query(after.as_deref(), 1000);
        let resp = c
            .request("GET", &format!("sys/coffer/audit?{q}"), None)
            .await?;
        for r in resp.body["data"]["records"]
            .as_array()
            .into_iter()
            .flatten()
        {
            each(r)?;
            count += 1;
        }
        for gap in resp.body["data"]["unavailable"]
            .as_array()
            .into_iter()
            .flatten()
        {
            eprintln!(
                "Warning: records {}..={} of node {} (epoch {}) are archived in segment {}, which this node cannot read; ask a member that holds it (`coffer audit verify` there)",
                gap["from"], gap["to"], gap["node"], gap["epoch"], gap["digest"].as_str().unwrap_or("")
            );
        }
        match resp.body["data"]["next"].as_str() {
            Some(n) => after = Some(n.to_string()),
            None => return Ok(count),
        }
    }
}

fn line(r: &Value) -> String {
    let s = |k: &str| r[k].as_str().unwrap_or("").to_string();
    format!(
        "{} node={} seq={} mode={} actor={} op={} path={} outcome={} status={} client={}",
        s("time"),
        r["node"],
        r["seq"],
        s("mode"),
        s("actor"),
        s("operation"),
        s("path"),
        s("outcome"),
        r["status"],
        s("client_addr")
    )
}

pub async fn audit(cmd: AuditCmd) -> Result<i32, ClientError> {
    match cmd {
        AuditCmd::Tail { common, filter, n } => {
            let c = client(&common)?;
            let mut all: std::collections::VecDeque<Value> = Default::default();
            pages(&c, &filter, |r| {
                all.push_back(r.clone());
                if all.len() > n {
                    all.pop_front();
                }
                Ok(())
            })
            .await?;
            for r in all {
                if common.format == "json" {
                    println!("{r}");
                } else {
                    println!("{}", line(&r));
                }
            }
            Ok(exit::OK)
        }
        AuditCmd::Export {
            common,
            filter,
            output,
        } => {
            let c = client(&common)?;
            let mut out: Box<dyn Write> = if output == "-" {
                Box::new(std::io::stdout())
            } else {
                Box::new(
                    std::fs::File::create(&output)
                        .map_err(|e| ClientError::Local(format!("creating {output}: {e}")))?,
                )
            };
            let count = pages(&c, &filter, |r| {
                writeln!(out, "{r}").map_err(|e| ClientError::Local(e.to_string()))
            })
            .await?;
            out.flush().map_err(|e| ClientError::Local(e.to_string()))?;
            eprintln!("Exported {count} audit records");
            Ok(exit::OK)
        }
        AuditCmd::Verify(common) => {
            let resp = client(&common)?
                .request("GET", "sys/coffer/audit/verify", None)
                .await?;
            let data = &resp.body["data"];
            if common.format == "json" {
                print_json(data);
            } else {
                for n in data["merged"].as_array().into_iter().flatten() {
                    println!(
                        "merged log, node {}: {} records, cursor {}",
                        n["node"], n["records"], n["cursor"]
                    );
                    if n["archived_through"].as_u64().unwrap_or(0) > 0 {
                        println!(
                            "  records 1..={} archived in {} segments",
                            n["archived_through"],
                            n["archive_segments"].as_array().map_or(0, Vec::len)
                        );
                    }
                    for gap in n["archive_missing"].as_array().into_iter().flatten() {
                        println!(
                            "  records {}..={} archived in segment {}, never held by this node (it caught up past them from a snapshot, or was restored from a backup): verify them on a member that holds it",
                            gap["from"], gap["to"], gap["digest"].as_str().unwrap_or("")
                        );
                    }
                    let lost = &n["declared_lost"];
                    if lost.is_object() {
                        println!(
                            "  records {}..={} declared lost by the restore ({}, {}): anchored, never merged, their spool not restored",
                            lost["from"],
                            lost["to"],
                            lost["restore"].as_str().unwrap_or(""),
                            lost["at"].as_str().unwrap_or("")
                        );
                    }
                }
                let s = &data["spool"];
                println!("local spool, node {}: {} records", s["node"], s["records"]);
                let problems = data["merged"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .flat_map(|n| n["problems"].as_array().cloned().unwrap_or_default())
                    .map(|p| ("merged log", p))
                    .chain(
                        s["problems"]
                            .as_array()
                            .cloned()
                            .unwrap_or_default()
                            .into_iter()
                            .map(|p| ("spool", p)),
                    );
                for (where_, p) in problems {
                    println!(
                        "PROBLEM in {where_}: node {} seq {} {}: {}",
                        p["node"],
                        p["seq"],
                        p["kind"].as_str().unwrap_or(""),
                        p["detail"].as_str().unwrap_or("")
                    );
                }
            }
            if data["ok"].as_bool() == Some(true) {
                eprintln!("Audit chains verified: no gaps, forks or tampered records");
                Ok(exit::OK)
            } else {
                eprintln!("Audit verification FAILED");
                Ok(exit::SERVER)
            }
        }
    }
}
