//! `coffer-cluster-bench`: a 3-voter cluster of real processes on 127.0.0.11-13 over mutual
//! TLS, formed from bootstrap packs, with 256-byte values: write throughput at 1 and 64
//! clients, linearizable read throughput at 64 clients on the leader and on a follower, and
//! the time from SIGKILL of the leader to the first write a new leader acknowledges (median
//! of N rounds; the killed node is restarted and caught up between rounds).
//!
//!
//! Then the read-only standby, on a primary + secondary pair (one voter, one learner): the
//! time from SIGKILL of the primary to the secondary's first read-only answer (median of N
//! rounds), audited read throughput and p99 on the standby at 64 clients, and the merge-back
//! rate once the primary returns, for at least `--merge-records` spooled records.
//!
//! Between the two, `--steady S` (default 60) runs 64 writers on the leader and 32
//! linearizable readers on a follower for S seconds and reports whether any node's term
//! moved (a leader change under load).
//!
//! ```text
//! cargo build --workspace --release --bins
//! target/release/coffer-cluster-bench --seconds 10 --steady 60 --rounds 20 --merge-records 100000
//! ```
//!
//! `--retention-reads N` instead runs audit retention alone: three voters with `[audit]
//! archive_after` of `--archive-after S` seconds (default 60), N audited reads on the leader
//! at 64 clients in five rounds, and after each round a backup's size and audit record
//! count, the leader's data directory, archive and RSS: with retention the state stays
//! bounded while the reads go on.
//!
//! ```text
//! target/release/coffer-cluster-bench --retention-reads 1000000 --archive-after 60
//! ```
//!
//! `--serve FILE` only forms the 3-voter cluster, writes what a load generator needs to
//! reach it to FILE as JSON (API addresses, leader, root token, CA file, process ids and
//! data directories), and keeps it up until its standard input closes: the side-by-side
//! suite (`scripts/bench-peers.sh`) drives it with the same tool as etcd and OpenBao.

use std::time::{Duration, Instant};

use coffer_tests::bench::{arg, phase, prewrite, rss_kib};
use coffer_tests::procs::{block_on, ProcCluster};
use coffer_tests::random_string;
use serde_json::json;

/// Forms the cluster, describes it in `file`, and serves until standard input closes.
fn serve(file: &str) {
    let c = ProcCluster::three_voters();
    let leader = c.leader_seen_by(1).expect("leader");
    let nodes: Vec<serde_json::Value> = [1u64, 2, 3]
        .into_iter()
        .map(|id| {
            json!({
                "id": id,
                "api": c.addrs[&id].api,
                "pid": c.pid(id),
                "data_dir": c.data_dir(id),
            })
        })
        .collect();
    let about = json!({
        "leader": leader,
        "token": c.token,
        "ca": c.ca_path,
        "bin": coffer_tests::coffer_bin(),
        "nodes": nodes,
    });
    std::fs::write(file, serde_json::to_vec_pretty(&about).expect("json")).expect("serve file");
    eprintln!("3 voters up, leader {leader}; described in {file}; close stdin to stop");
    let mut sink = String::new();
    while std::io::stdin().read_line(&mut sink).is_ok_and(|n| n > 0) {}
}

fn main() {
    if let Some(file) = std::env::args().skip_while(|a| a != "--serve").nth(1) {
        serve(&file);
        return;
    }
    let retention_reads = arg("--retention-reads", 0);
    if retention_reads > 0 {
        retention(retention_reads, arg("--archive-after", 60));
        return;
    }
    let seconds = arg("--seconds", 10);
    let rounds = arg("--rounds", 10);
    if arg("--skip-cluster", 0) == 0 {
        cluster(seconds, rounds);
    }
    standby(seconds, rounds, arg("--merge-records", 100_000));
}

/// Bytes under `dir`, recursively.
fn dir_bytes(dir: &std::path::Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|d| {
            d.filter_map(Result::ok)
                .map(|e| match e.file_type() {
                    Ok(t) if t.is_dir() => dir_bytes(&e.path()),
                    _ => e.metadata().map_or(0, |m| m.len()),
                })
                .sum()
        })
        .unwrap_or(0)
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1 << 20) as f64
}

fn retention(reads: u64, archive_after: u64) {
    let mut c = ProcCluster::three_voters();
    c.reconfigure(
        &[1, 2, 3],
        &format!("[audit]\narchive_after = \"{archive_after}s\"\n"),
    );
    c.wait(Duration::from_secs(60), "a leader", |c| {
        c.leader().is_some()
    });
    let leader = c.leader().expect("leader");
    let keys = 1000usize;
    let client = c.client(leader);
    let value = random_string(256);
    block_on(async move { prewrite(&client, keys, &value).await });
    println!(
        "audit retention, archive_after = {archive_after} s, {reads} audited reads on the leader (node {leader}) at 64 clients"
    );
    println!("| reads so far | elapsed s | reads/s | backup MiB | audit records in the backup | leader data dir MiB | leader archive MiB | leader RSS MiB |");
    println!("|---|---|---|---|---|---|---|---|");
    let started = Instant::now();
    let (mut done, round) = (0u64, reads.div_ceil(5));
    for n in 1..=5u64 {
        let target = (round * n).min(reads);
        while done < target {
            let client = c.client(leader);
            let s = block_on(async move { phase(&client, 64, 5, false, keys, "").await });
            if let Some(e) = &s.first_error {
                eprintln!("reads: {} errors, first: {e}", s.errors);
            }
            done += s.ops;
        }
        let file = c.dir.path().join(format!("retention-{n}.snap"));
        let path = file.to_str().expect("utf-8");
        let (code, _, err) = c.cli(leader, &["operator", "snapshot", "save", path]);
        assert_eq!(code, 0, "snapshot save: {err}");
        let (_, out, _) = c.cli(
            leader,
            &["operator", "snapshot", "inspect", path, "-format=json"],
        );
        let inspect: serde_json::Value = serde_json::from_str(&out).unwrap_or_default();
        let backup = std::fs::metadata(&file).map_or(0, |m| m.len());
        let _ = std::fs::remove_file(&file);
        let elapsed = started.elapsed().as_secs_f64();
        println!(
            "| {done} | {elapsed:.0} | {:.0} | {:.1} | {} | {:.1} | {:.1} | {:.0} |",
            done as f64 / elapsed,
            mib(backup),
            inspect["manifest"]["counts"]["audit_records"],
            mib(dir_bytes(&c.data_dir(leader))),
            mib(dir_bytes(&c.data_dir(leader).join("archive"))),
            rss_kib(c.pid(leader)) as f64 / 1024.0,
        );
    }
}

fn median_ms(mut v: Vec<Duration>) -> String {
    if v.is_empty() {
        return "no rounds".into();
    }
    v.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    format!(
        "median {:.0} ms, min {:.0} ms, max {:.0} ms ({} rounds)",
        ms(v[v.len() / 2]),
        ms(v[0]),
        ms(v[v.len() - 1]),
        v.len()
    )
}

fn metric(c: &ProcCluster, id: u64, name: &str) -> f64 {
    c.metric(id, name).unwrap_or(0.0)
}

fn standby(seconds: u64, rounds: u64, merge_records: u64) {
    let mut c = ProcCluster::found();
    c.add_node(1, 2, false);
    let keys = 1000usize;
    let value = random_string(256);
    let primary = c.client(1);
    {
        let value = value.clone();
        block_on(async move { prewrite(&primary, keys, &value).await });
    }
    let secondary = c.client(2);
    c.wait(Duration::from_secs(60), "the secondary caught up", |c| {
        c.members(1)
            .is_some_and(|m| m.iter().all(|x| x["lag"].as_u64() == Some(0)))
    });
    let mut firsts = Vec::new();
    for round in 0..rounds {
        let probe = secondary.clone();
        let killed = Instant::now();
        c.kill(1);
        let took = block_on(async move {
            loop {
                if let Ok(r) = probe.request("GET", "secret/data/bench/0", None).await {
                    if r.headers.contains_key("x-coffer-read-only") {
                        return killed.elapsed();
                    }
                }
            }
        });
        eprintln!("standby round {round}: first read-only answer after {took:?}");
        firsts.push(took);
        c.start(1);
        c.wait(
            Duration::from_secs(60),
            "the secondary following again",
            |c| c.health_code(2) == 429,
        );
    }
    println!();
    println!(
        "primary SIGKILL -> secondary's first read-only answer: {}",
        median_ms(firsts)
    );

    // Standby reads at 64 clients, every one audited to the local spool; repeated until at
    // least `merge_records` records wait to merge.
    c.kill(1);
    c.wait(Duration::from_secs(10), "the secondary read-only", |c| {
        c.health_code(2) == 473
    });
    let spool_before = metric(&c, 2, "coffer_audit_spool_last_seq");
    let reader = secondary.clone();
    let r = block_on(async move { phase(&reader, 64, seconds, false, keys, "").await });
    println!(
        "| standby read (audited) | 64 | {:.0} | {:.2} | {:.2} | {} |",
        r.rate(),
        r.percentile(0.5),
        r.percentile(0.99),
        r.errors
    );
    while metric(&c, 2, "coffer_audit_spool_last_seq") - spool_before < merge_records as f64 {
        let reader = secondary.clone();
        block_on(async move { phase(&reader, 64, 5, false, keys, "").await });
    }
    let last = metric(&c, 2, "coffer_audit_spool_last_seq");
    let merged_before = metric(&c, 2, "coffer_audit_merged_seq");
    c.start(1);
    let started = loop {
        if metric(&c, 2, "coffer_audit_merged_seq") > merged_before {
            break Instant::now();
        }
    };
    c.wait_merged(2, Duration::from_secs(600));
    let took = started.elapsed();
    let merged = metric(&c, 2, "coffer_audit_merged_seq") - merged_before;
    println!(
        "merge-back: {merged:.0} records in {:.1} s = {:.0} records/s (spool last seq {last:.0})",
        took.as_secs_f64(),
        merged / took.as_secs_f64()
    );
}

fn cluster(seconds: u64, rounds: u64) {
    let keys = 1000usize;
    let c = ProcCluster::three_voters();
    let leader = c.leader_seen_by(1).expect("leader");
    let follower = [1, 2, 3].into_iter().find(|id| *id != leader).unwrap();
    let value = random_string(256);
    eprintln!("3 voters up; leader {leader}; pre-writing {keys} secrets");
    let (to_leader, to_follower) = (c.client(leader), c.client(follower));
    let table = block_on(async move {
        prewrite(&to_leader, keys, &value).await;
        let mut rows = Vec::new();
        for (what, client, clients, write) in [
            ("write (leader)", &to_leader, 1, true),
            ("write (leader)", &to_leader, 64, true),
            ("write (follower, forwarded)", &to_follower, 64, true),
            ("linearizable read (leader)", &to_leader, 64, false),
            ("linearizable read (follower)", &to_follower, 64, false),
        ] {
            let r = phase(client, clients, seconds, write, keys, &value).await;
            if let Some(e) = &r.first_error {
                eprintln!("{what} at {clients}: first error: {e}");
            }
            rows.push(format!(
                "| {what} | {clients} | {:.0} | {:.2} | {:.2} | {} |",
                r.rate(),
                r.percentile(0.5),
                r.percentile(0.99),
                r.errors
            ));
        }
        rows
    });
    println!("| operation | clients | ops/s | p50 ms | p99 ms | errors |");
    println!("|---|---|---|---|---|---|");
    for row in table {
        println!("{row}");
    }

    let steady = arg("--steady", 60);
    if steady > 0 {
        let terms = c.terms();
        let (to_leader, to_follower) = (c.client(leader), c.client(follower));
        let value = random_string(256);
        let (w, r) = block_on(async move {
            tokio::join!(
                phase(&to_leader, 64, steady, true, keys, &value),
                phase(&to_follower, 32, steady, false, keys, ""),
            )
        });
        let after = c.terms();
        println!();
        println!(
            "{steady} s of 64 writers on the leader ({:.0}/s, {} errors) and 32 linearizable readers on a follower ({:.0}/s, {} errors): terms {terms:?} -> {after:?}, {}",
            w.rate(),
            w.errors,
            r.rate(),
            r.errors,
            if after == terms { "no leader change" } else { "THE LEADER CHANGED" }
        );
    }

    let mut c = c;
    let mut failovers = Vec::new();
    for round in 0..rounds {
        let old = c
            .leader_seen_by(1)
            .or_else(|| c.leader_seen_by(2))
            .expect("leader");
        let survivors: Vec<u64> = [1, 2, 3].into_iter().filter(|id| *id != old).collect();
        let client = c.client_all(&survivors);
        let killed = Instant::now();
        c.kill(old);
        let elapsed = block_on(async move {
            loop {
                let body = json!({"data": {"round": round}});
                if client
                    .request("POST", "secret/data/failover", Some(&body))
                    .await
                    .is_ok()
                {
                    return killed.elapsed();
                }
            }
        });
        eprintln!("round {round}: node {old} killed; a write was acknowledged after {elapsed:?}");
        failovers.push(elapsed);
        c.start(old);
        let via = survivors[0];
        c.wait(Duration::from_secs(60), "the old leader caught up", |c| {
            c.is_voter(via, old, true)
        });
    }
    if !failovers.is_empty() {
        println!();
        println!(
            "leader SIGKILL -> first acknowledged write: {}",
            median_ms(failovers)
        );
    }
}
