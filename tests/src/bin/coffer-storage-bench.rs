//! `coffer-storage-bench`: what the replicated store costs on disk and in memory, measured on
//! the engine alone (one voter, no HTTP, no audit): `--writes` transactions of one 256-byte
//! random (incompressible, as ciphertext is) value each, over `--keys` keys, from 64
//! concurrent writers, then one more snapshot. It
//! prints the data directory by kind (RocksDB write-ahead log, SST files, the rest of RocksDB,
//! snapshots) at the end of the writes, after the snapshot, and after a reopen, with the
//! process's peak RSS. The values themselves are `--keys` × 256 bytes.
//!
//! ```text
//! cargo build --workspace --release --bins
//! target/release/coffer-storage-bench --writes 100000 --keys 100000
//! ```

use std::path::Path;
use std::time::{Duration, Instant};

use coffer_raft::{Engine, EngineConfig, NoPeers, NodeAddr, RaftTuning, Txn};
use coffer_tests::bench::arg;

const WRITERS: u64 = 64;

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1 << 20) as f64)
}

/// (WAL, SST, other RocksDB files, snapshots) under `dir`, in bytes.
fn sizes(dir: &Path) -> (u64, u64, u64, u64) {
    let (mut wal, mut sst, mut other) = (0, 0, 0);
    for entry in std::fs::read_dir(dir.join("raft")).unwrap().flatten() {
        let len = entry.metadata().map(|m| m.len()).unwrap_or(0);
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.ends_with(".log") {
            wal += len;
        } else if name.ends_with(".sst") {
            sst += len;
        } else {
            other += len;
        }
    }
    let snaps = std::fs::read_dir(dir.join("snapshots"))
        .map(|d| {
            d.flatten()
                .map(|e| e.metadata().map(|m| m.len()).unwrap_or(0))
                .sum()
        })
        .unwrap_or(0);
    (wal, sst, other, snaps)
}

fn report(what: &str, dir: &Path) {
    let (wal, sst, other, snaps) = sizes(dir);
    println!(
        "| {what} | {} | {} | {} | {} | {} | {} |",
        mib(wal),
        mib(sst),
        mib(other),
        mib(snaps),
        mib(wal + sst + other + snaps),
        peak_rss()
    );
}

fn peak_rss() -> String {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<u64>().ok())
        })
        .map_or_else(|| "?".into(), |kb| mib(kb * 1024))
}

/// The one-voter engine over `dir` (initialized on first open), leading.
async fn open(dir: &Path) -> Engine {
    Engine::open_single(
        EngineConfig {
            node_id: 1,
            data_dir: dir.to_path_buf(),
            tuning: RaftTuning::default(),
            storage: Default::default(),
        },
        NoPeers,
        NodeAddr {
            api_addr: "https://127.0.0.1:1".into(),
            peer_addr: "127.0.0.1:2".into(),
            cert_sha256: String::new(),
        },
        Duration::from_secs(30),
    )
    .await
    .expect("open the engine")
}

#[tokio::main]
async fn main() {
    let writes = arg("--writes", 100_000);
    let keys = arg("--keys", 100_000).max(1);
    let dir = tempfile::tempdir().expect("temp dir");
    let engine = open(dir.path()).await;
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for w in 0..WRITERS {
        let engine = engine.clone();
        tasks.spawn(async move {
            let mut i = w;
            while i < writes {
                let key = format!("kv/secret/data/bench/{:08}", i % keys);
                // Ciphertext in Coffer: incompressible, as fresh random bytes are.
                let value: Vec<u8> = (0..256).map(|_| rand::random::<u8>()).collect();
                engine
                    .write(Txn::new().put(key, value))
                    .await
                    .expect("write");
                i += WRITERS;
            }
        });
    }
    while let Some(done) = tasks.join_next().await {
        done.expect("writer");
    }
    let took = started.elapsed();
    println!(
        "{writes} writes over {keys} keys ({} of values) in {:.1} s = {:.0} writes/s",
        mib(keys.min(writes) * 256),
        took.as_secs_f64(),
        writes as f64 / took.as_secs_f64()
    );
    println!();
    println!("| when | WAL | SST | other RocksDB | snapshots | total | peak RSS |");
    println!("|---|---|---|---|---|---|---|");
    report("after the writes", dir.path());
    engine.snapshot_now().await.expect("snapshot");
    report("after a snapshot", dir.path());
    engine.shutdown().await.expect("shutdown");
    drop(engine);
    let engine = open(dir.path()).await;
    report("after a reopen", dir.path());
    engine.shutdown().await.expect("shutdown");
}
