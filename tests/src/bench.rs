//! Load phases shared by the benchmark binaries: N clients issuing writes (new versions of
//! one of `keys` secrets) or reads for a fixed time, with latency percentiles.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use coffer_api::client::Client;
use serde_json::json;

/// What a phase measured.
pub struct PhaseResult {
    /// Successful operations.
    pub ops: u64,
    /// Failed operations.
    pub errors: u64,
    /// Wall time of the phase.
    pub elapsed: Duration,
    /// Latency of each successful operation, sorted, in microseconds.
    pub latencies_us: Vec<u64>,
    /// The first failure's message, if any failed.
    pub first_error: Option<String>,
}

impl PhaseResult {
    /// The `p` quantile of latency, in milliseconds.
    pub fn percentile(&self, p: f64) -> f64 {
        if self.latencies_us.is_empty() {
            return 0.0;
        }
        let idx = ((self.latencies_us.len() as f64 - 1.0) * p).round() as usize;
        self.latencies_us[idx] as f64 / 1000.0
    }
}

/// Runs `clients` concurrent clients for `seconds`: writes of `value`, or reads.
pub async fn phase(
    client: &Client,
    clients: usize,
    seconds: u64,
    write: bool,
    keys: usize,
    value: &str,
) -> PhaseResult {
    let stop = Arc::new(AtomicBool::new(false));
    let errors = Arc::new(AtomicU64::new(0));
    let first_error: Arc<std::sync::Mutex<Option<String>>> = Arc::default();
    let started = Instant::now();
    let mut tasks = Vec::new();
    for task in 0..clients {
        let client = client.clone();
        let stop = stop.clone();
        let errors = errors.clone();
        let first_error = first_error.clone();
        let value = value.to_string();
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut n = 0usize;
            while !stop.load(Ordering::Relaxed) {
                let key = (task * 7919 + n * 31) % keys;
                n += 1;
                let t = Instant::now();
                let result = if write {
                    let body = json!({"data": {"value": value}});
                    client
                        .request("POST", &format!("secret/data/bench/{key}"), Some(&body))
                        .await
                } else {
                    client
                        .request("GET", &format!("secret/data/bench/{key}"), None)
                        .await
                };
                match result {
                    Ok(_) => latencies.push(t.elapsed().as_micros() as u64),
                    Err(e) => {
                        errors.fetch_add(1, Ordering::Relaxed);
                        if let Ok(mut first) = first_error.lock() {
                            first.get_or_insert_with(|| e.to_string());
                        }
                    }
                }
            }
            latencies
        }));
    }
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    stop.store(true, Ordering::Relaxed);
    let mut latencies_us = Vec::new();
    for t in tasks {
        latencies_us.extend(t.await.unwrap_or_default());
    }
    let elapsed = started.elapsed();
    latencies_us.sort_unstable();
    PhaseResult {
        ops: latencies_us.len() as u64,
        errors: errors.load(Ordering::Relaxed),
        elapsed,
        latencies_us,
        first_error: first_error.lock().ok().and_then(|f| f.clone()),
    }
}

impl PhaseResult {
    /// Operations per second.
    pub fn rate(&self) -> f64 {
        self.ops as f64 / self.elapsed.as_secs_f64()
    }
}

/// The number after `--name` on the command line, or `default`.
pub fn arg(name: &str, default: u64) -> u64 {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Writes `value` to `keys` secrets, so reads find them.
pub async fn prewrite(client: &Client, keys: usize, value: &str) {
    for key in 0..keys {
        let body = json!({"data": {"value": value}});
        client
            .request("POST", &format!("secret/data/bench/{key}"), Some(&body))
            .await
            .expect("pre-write");
    }
}

/// Resident set size of `pid` in KiB.
pub fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}
