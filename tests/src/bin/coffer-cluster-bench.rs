//! `coffer-cluster-bench`: a 3-voter cluster of real processes on 127.0.0.11-13 over mutual
//! TLS, formed from bootstrap packs, with 256-byte values: write throughput at 1 and 64
//! clients, linearizable read throughput at 64 clients on the leader and on a follower, and
//! the time from SIGKILL of the leader to the first write a new leader acknowledges (median
//! of N rounds; the killed node is restarted and caught up between rounds).
//!
//! ```text
//! cargo build --workspace --release --bins
//! target/release/coffer-cluster-bench --seconds 10 --rounds 10
//! ```

use std::time::{Duration, Instant};

use coffer_tests::bench::{phase, prewrite};
use coffer_tests::procs::{block_on, ProcCluster};
use coffer_tests::random_string;
use serde_json::json;

fn arg(name: &str, default: u64) -> u64 {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn is_voter(c: &ProcCluster, via: u64, id: u64, caught_up: bool) -> bool {
    c.members(via).is_some_and(|m| {
        m.iter().any(|x| {
            x["node_id"].as_u64() == Some(id)
                && x["voter"].as_bool() == Some(true)
                && (!caught_up || x["lag"].as_u64() == Some(0))
        })
    })
}

fn form() -> ProcCluster {
    let mut c = ProcCluster::found();
    for id in [2, 3] {
        let (pack, pass) = c.pack(1, id, true, &[]);
        let (code, _, err) = c.join(id, &pack, &pass);
        assert_eq!(code, 0, "join {id}: {err}");
        c.start(id);
        c.wait(Duration::from_secs(60), "a voter", |c| {
            is_voter(c, 1, id, true)
        });
    }
    c
}

fn main() {
    let seconds = arg("--seconds", 10);
    let rounds = arg("--rounds", 10);
    let keys = 1000usize;
    let c = form();
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
            is_voter(c, via, old, true)
        });
    }
    failovers.sort();
    if !failovers.is_empty() {
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        println!();
        println!(
            "leader SIGKILL -> first acknowledged write, {} rounds: median {:.0} ms, min {:.0} ms, max {:.0} ms",
            failovers.len(),
            ms(failovers[failovers.len() / 2]),
            ms(failovers[0]),
            ms(failovers[failovers.len() - 1])
        );
    }
}
