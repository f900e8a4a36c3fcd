//! `coffer-backup-bench`: backup and restore of a large vault with the real binary. One node
//! (key-file seal) is filled with `--secrets` secrets of `--value-bytes` bytes through the
//! HTTPS API by `--clients` concurrent writers; then it times and measures:
//!
//! - `operator snapshot save` (the server builds the backup, the CLI streams it to a file):
//!   wall time, the server's peak RSS while it runs, the CLI's peak RSS;
//! - `operator snapshot inspect` (every check that needs no key): wall time, peak RSS;
//! - `operator restore --from` into an empty directory: wall time, peak RSS;
//! - `operator pack create` (a bootstrap pack holds the same state): wall time, the
//!   server's peak RSS, the pack's size.
//!
//! Peak RSS of a CLI process is its `ru_maxrss` (GNU `time -f %M`); the server's is sampled
//! from `/proc/PID/status` every 50 ms while the command runs (its RSS before is printed too,
//! since the server holds caches from the fill).
//!
//! ```text
//! cargo build --workspace --release --bins
//! target/release/coffer-backup-bench --secrets 1000000 --clients 64 --value-bytes 64
//! ```

use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use coffer_tests::bench::{arg, rss_kib};
use coffer_tests::procs::{block_on, ProcCluster};
use coffer_tests::{coffer_bin, random_string};
use serde_json::json;

/// Samples `pid`'s RSS until dropped; `peak()` is the largest seen.
struct Sampler {
    peak: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
}

impl Sampler {
    fn start(pid: u32) -> Self {
        let peak = Arc::new(AtomicU64::new(rss_kib(pid)));
        let stop = Arc::new(AtomicBool::new(false));
        let (p, s) = (peak.clone(), stop.clone());
        std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                p.fetch_max(rss_kib(pid), Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(50));
            }
        });
        Self { peak, stop }
    }

    fn peak_mib(&self) -> f64 {
        self.peak.load(Ordering::Relaxed) as f64 / 1024.0
    }
}

impl Drop for Sampler {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Runs the CLI under GNU time; returns (seconds, peak RSS in MiB, stderr).
fn timed_cli(c: &ProcCluster, args: &[&str]) -> (f64, f64, String) {
    let rss_file = c.dir.path().join("rss.txt");
    let ca = c.ca_path.display().to_string();
    let started = Instant::now();
    let out = Command::new("/usr/bin/time")
        .arg("-f")
        .arg("%M")
        .arg("-o")
        .arg(&rss_file)
        .arg(coffer_bin())
        .args(args)
        .env("COFFER_ADDR", &c.addrs[&1].api)
        .env("COFFER_CACERT", &ca)
        .env("COFFER_TOKEN", &c.token)
        .output()
        .expect("running coffer under /usr/bin/time");
    let secs = started.elapsed().as_secs_f64();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{args:?} failed: {stderr}");
    let kib: f64 = std::fs::read_to_string(&rss_file)
        .ok()
        .and_then(|s| s.trim().lines().last().and_then(|l| l.parse().ok()))
        .unwrap_or(0.0);
    (secs, kib / 1024.0, stderr)
}

fn size_mib(path: &Path) -> f64 {
    std::fs::metadata(path).map_or(0.0, |m| m.len() as f64 / (1024.0 * 1024.0))
}

fn main() {
    let secrets = arg("--secrets", 1_000_000);
    let clients = arg("--clients", 64);
    let value_bytes = arg("--value-bytes", 64) as usize;
    let c = ProcCluster::found();
    let pid = c.pid(1);

    let client = c.client(1);
    let started = Instant::now();
    let done = Arc::new(AtomicU64::new(0));
    let progress = done.clone();
    let reporter = std::thread::spawn(move || loop {
        std::thread::sleep(Duration::from_secs(10));
        let n = progress.load(Ordering::Relaxed);
        eprintln!("filled {n} of {secrets}");
        if n >= secrets {
            return;
        }
    });
    block_on(async move {
        let mut tasks = tokio::task::JoinSet::new();
        for w in 0..clients {
            let (client, done) = (client.clone(), done.clone());
            tasks.spawn(async move {
                let value = random_string(value_bytes);
                let mut i = w;
                while i < secrets {
                    let body = json!({"data": {"v": value}});
                    client
                        .request("POST", &format!("secret/data/bench/{i}"), Some(&body))
                        .await
                        .expect("fill");
                    done.fetch_add(1, Ordering::Relaxed);
                    i += clients;
                }
            });
        }
        while let Some(r) = tasks.join_next().await {
            r.expect("writer");
        }
    });
    let fill = started.elapsed().as_secs_f64();
    reporter.join().ok();
    println!(
        "fill: {secrets} secrets of {value_bytes} bytes by {clients} clients in {fill:.1} s ({:.0}/s); server RSS {:.0} MiB, data dir {:.0} MiB",
        secrets as f64 / fill,
        rss_kib(pid) as f64 / 1024.0,
        dir_mib(&c.data_dir(1))
    );

    let file = c.dir.path().join("bench.snap");
    let before = rss_kib(pid) as f64 / 1024.0;
    let sampler = Sampler::start(pid);
    let (secs, cli_rss, said) = timed_cli(
        &c,
        &["operator", "snapshot", "save", "-o", file.to_str().unwrap()],
    );
    println!(
        "snapshot save: {secs:.1} s, file {:.0} MiB; server RSS {before:.0} MiB before, peak {:.0} MiB; CLI peak RSS {cli_rss:.0} MiB",
        size_mib(&file),
        sampler.peak_mib()
    );
    drop(sampler);
    eprintln!("{}", said.trim());

    let (secs, cli_rss, _) = timed_cli(
        &c,
        &["operator", "snapshot", "inspect", file.to_str().unwrap()],
    );
    println!("snapshot inspect: {secs:.1} s; peak RSS {cli_rss:.0} MiB");

    let target = c.dir.path().join("restored");
    let (secs, cli_rss, said) = timed_cli(
        &c,
        &[
            "operator",
            "restore",
            "--from",
            file.to_str().unwrap(),
            "--data-dir",
            target.to_str().unwrap(),
            "--api-addr",
            "https://127.0.0.1:1",
            "--peer-addr",
            "127.0.0.1:2",
        ],
    );
    println!(
        "restore: {secs:.1} s, data dir {:.0} MiB; peak RSS {cli_rss:.0} MiB",
        dir_mib(&target)
    );
    eprintln!("{}", said.lines().next().unwrap_or(""));

    let pack = c.dir.path().join("bench.pack");
    let pass = c.dir.path().join("bench.pass");
    std::fs::write(&pass, "correct horse battery staple bench").unwrap();
    let before = rss_kib(pid) as f64 / 1024.0;
    let sampler = Sampler::start(pid);
    let (secs, cli_rss, _) = timed_cli(
        &c,
        &[
            "operator",
            "pack",
            "create",
            "--node-id",
            "9",
            "--api-addr",
            "https://127.0.0.19:8200",
            "--peer-addr",
            "127.0.0.19:8201",
            "--passphrase-file",
            pass.to_str().unwrap(),
            "-o",
            pack.to_str().unwrap(),
        ],
    );
    println!(
        "pack create: {secs:.1} s, pack {:.0} MiB; server RSS {before:.0} MiB before, peak {:.0} MiB; CLI peak RSS {cli_rss:.0} MiB",
        size_mib(&pack),
        sampler.peak_mib()
    );
}

fn dir_mib(dir: &Path) -> f64 {
    fn walk(dir: &Path) -> u64 {
        std::fs::read_dir(dir)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| match e.file_type() {
                Ok(t) if t.is_dir() => walk(&e.path()),
                Ok(_) => e.metadata().map_or(0, |m| m.len()),
                Err(_) => 0,
            })
            .sum()
    }
    walk(dir) as f64 / (1024.0 * 1024.0)
}
