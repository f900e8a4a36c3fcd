//! `coffer-bench`: single-node write and read throughput over HTTPS.
//!
//! Starts a dev server from the same build (or uses `--addr`/`--ca`/`--token`), then for each
//! client count runs a timed write phase (new versions of 256-byte secrets) and a timed read
//! phase (random reads of pre-written secrets), and prints a Markdown table: operations per
//! second and latency percentiles, and — every request being audited — how many audit records
//! shared one spool fsync, the share of the phase the spool spent in fsync, and the share of
//! request latency spent waiting for the audit record to be durable. Build with `--release`
//! for meaningful figures:
//!
//! ```text
//! cargo build --workspace --release --bins
//! target/release/coffer-bench --clients 1,64 --seconds 10
//! ```

use coffer_api::client::Client;
use coffer_tests::bench::{phase, prewrite};
use coffer_tests::{random_string, Server};

struct Options {
    clients: Vec<usize>,
    seconds: u64,
    value_bytes: usize,
    keys: usize,
    remote: Option<(String, String, String)>,
}

fn parse_args() -> Options {
    let mut opts = Options {
        clients: vec![1, 64],
        seconds: 10,
        value_bytes: 256,
        keys: 1000,
        remote: None,
    };
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (mut addr, mut ca, mut token) = (None, None, None);
    let mut i = 0;
    while i < args.len() {
        let value = args.get(i + 1).cloned().unwrap_or_default();
        match args[i].as_str() {
            "--clients" => opts.clients = value.split(',').filter_map(|c| c.parse().ok()).collect(),
            "--seconds" => opts.seconds = value.parse().unwrap_or(10),
            "--value-bytes" => opts.value_bytes = value.parse().unwrap_or(256),
            "--keys" => opts.keys = value.parse().unwrap_or(1000),
            "--addr" => addr = Some(value),
            "--ca" => ca = Some(value),
            "--token" => token = Some(value),
            other => {
                eprintln!("unknown argument {other}");
                std::process::exit(1);
            }
        }
        i += 2;
    }
    if let (Some(a), Some(c), Some(t)) = (addr, ca, token) {
        opts.remote = Some((a, c, t));
    }
    opts
}

/// The spool's counters from `sys/metrics`.
#[derive(Default)]
struct AuditCounters {
    appends: f64,
    fsyncs: f64,
    fsync_secs: f64,
    wait_secs: f64,
}

impl AuditCounters {
    async fn scrape(client: &Client) -> Self {
        let text = client
            .get_text("sys/metrics?format=prometheus")
            .await
            .unwrap_or_default();
        let get = |name: &str| {
            text.lines()
                .find(|l| l.starts_with(name) && l.as_bytes().get(name.len()) == Some(&b' '))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
                .unwrap_or(0.0)
        };
        Self {
            appends: get("coffer_audit_appends_total"),
            fsyncs: get("coffer_audit_fsyncs_total"),
            fsync_secs: get("coffer_audit_fsync_seconds_total"),
            wait_secs: get("coffer_audit_wait_seconds_total"),
        }
    }

    fn minus(&self, o: &Self) -> Self {
        Self {
            appends: self.appends - o.appends,
            fsyncs: self.fsyncs - o.fsyncs,
            fsync_secs: self.fsync_secs - o.fsync_secs,
            wait_secs: self.wait_secs - o.wait_secs,
        }
    }
}

#[tokio::main]
async fn main() {
    let opts = parse_args();
    let dir = tempfile::tempdir().expect("tempdir");
    let token = "hvs.bench-root-token";
    let (server, client) = match &opts.remote {
        Some((addr, ca, token)) => {
            let pem = std::fs::read_to_string(ca).expect("reading CA");
            (
                None,
                Client::new(addr, Some(&pem), Some(token.clone())).expect("client"),
            )
        }
        None => {
            let server = Server::dev(&dir.path().join("node"), token);
            let client = server.client(token);
            (Some(server), client)
        }
    };
    let value = random_string(opts.value_bytes);
    eprintln!(
        "pre-writing {} secrets of {} bytes",
        opts.keys, opts.value_bytes
    );
    prewrite(&client, opts.keys, &value).await;
    println!("| operation | clients | ops/s | p50 ms | p99 ms | errors | records/fsync | spool fsync busy | audit wait / latency |");
    println!("|---|---|---|---|---|---|---|---|---|");
    for &clients in &opts.clients {
        for write in [true, false] {
            let before = AuditCounters::scrape(&client).await;
            let r = phase(&client, clients, opts.seconds, write, opts.keys, &value).await;
            let after = AuditCounters::scrape(&client).await;
            let latency_secs: f64 = r.latencies_us.iter().map(|l| *l as f64 / 1e6).sum();
            let d = after.minus(&before);
            println!(
                "| {} | {} | {:.0} | {:.2} | {:.2} | {} | {:.1} | {:.0}% | {:.0}% |",
                if write { "write" } else { "read" },
                clients,
                r.ops as f64 / r.elapsed.as_secs_f64(),
                r.percentile(0.50),
                r.percentile(0.99),
                r.errors,
                d.appends / d.fsyncs.max(1.0),
                100.0 * d.fsync_secs / r.elapsed.as_secs_f64(),
                100.0 * d.wait_secs / latency_secs.max(1e-9),
            );
        }
    }
    drop(server);
}
