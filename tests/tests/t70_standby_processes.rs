//! The read-only standby with real processes on 127.0.0.x over real mutual TLS: a primary
//! killed, a link cut with iptables (removed again even when a test fails), a leader isolated
//! from its quorum. The standby answers reads, logs users in, refuses writes with exit code
//! 3, audits every access locally, and merges those records back exactly once.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use coffer_api::client::{Client, ClientError};
use coffer_tests::procs::{
    audit_records, block_on, node_ip, serial, Partition, ProcCluster, WebhookSink,
};
use serde_json::{json, Value};

// The scenarios assert timing bounds (read-only within 2 s); they run one at a time
// (`serial`) so that five clusters do not share two cores.

/// A user who may read `secret/`, and one secret.
fn seed(c: &ProcCluster) {
    let root = c.client(1);
    block_on(async move {
        let policy = json!({"policy": "path \"secret/*\" { capabilities = [\"read\", \"list\"] }"});
        root.request("PUT", "sys/policies/acl/reader", Some(&policy))
            .await
            .unwrap();
        let user = json!({"password": "alice-password", "token_policies": ["reader"]});
        root.request("POST", "auth/userpass/users/alice", Some(&user))
            .await
            .unwrap();
        root.request(
            "POST",
            "secret/data/app",
            Some(&json!({"data": {"v": "before"}})),
        )
        .await
        .unwrap();
    });
}

/// Polls node `id` with reads until one is answered read-only; returns when that was.
fn first_read_only_answer(c: &ProcCluster, id: u64, since: Instant) -> Duration {
    let client = c.client(id);
    block_on(async move {
        loop {
            if let Ok(r) = client.request("GET", "secret/data/app", None).await {
                if r.headers.contains_key("x-coffer-read-only") {
                    return since.elapsed();
                }
            }
            assert!(
                since.elapsed() < Duration::from_secs(20),
                "never turned read-only"
            );
        }
    })
}

/// Logs alice in on node `id` and reads `n` times with her token; returns the request ids.
fn login_and_read(c: &ProcCluster, id: u64, n: usize) -> (String, usize) {
    let anon = {
        let ca = std::fs::read_to_string(&c.ca_path).unwrap();
        Client::new(&c.addrs[&id].api, Some(&ca), None).unwrap()
    };
    let ca = std::fs::read_to_string(&c.ca_path).unwrap();
    let addr = c.addrs[&id].api.clone();
    block_on(async move {
        let login = anon
            .request(
                "POST",
                "auth/userpass/login/alice",
                Some(&json!({"password": "alice-password"})),
            )
            .await
            .expect("login on a standby");
        let token = login.body["auth"]["client_token"]
            .as_str()
            .unwrap()
            .to_string();
        let alice = Client::new(&addr, Some(&ca), Some(token.clone())).unwrap();
        let mut ok = 0;
        for _ in 0..n {
            let r = alice.request("GET", "secret/data/app", None).await.unwrap();
            assert_eq!(r.headers["x-coffer-read-only"], "true");
            ok += 1;
        }
        (token, ok)
    })
}

fn assert_write_refused(c: &ProcCluster, id: u64) {
    let started = Instant::now();
    let (code, _, err) = c.cli(id, &["kv", "put", "secret/app", "v=refused"]);
    assert_eq!(code, 3, "{err}");
    assert!(
        err.contains("read-only: no quorum — last contact with leader"),
        "{err}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "refused at once"
    );
    let (code, out, err) = c.cli(id, &["kv", "get", "-field=v", "secret/app"]);
    assert_eq!(code, 0, "{err}");
    assert!(!out.is_empty());
    assert!(err.contains("Warning: read-only standby answered"), "{err}");
    // `coffer status` names the mode and prints the banner; `coffer health` (a container's
    // health check) still calls the node serving.
    let (code, out, err) = c.cli(id, &["status"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("read-only standby"), "{out}");
    assert!(
        err.contains("READ-ONLY STANDBY: no leader with a quorum"),
        "{err}"
    );
    let (code, out, err) = c.cli(id, &["health"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.starts_with("read-only standby: applied index"), "{out}");
}

/// The reads alice made on `node` while it was read-only, merged into the cluster's log,
/// checked for exactly `n` records with distinct request ids.
fn assert_merged_exactly_once(c: &ProcCluster, via: u64, node: u64, n: usize) {
    let client = c.client(via);
    let records = block_on(async move {
        audit_records(
            &client,
            &format!("node={node}&mode=read-only&actor=userpass-alice&operation=read"),
        )
        .await
    });
    let reads: Vec<&Value> = records
        .iter()
        .filter(|r| r["path"] == "secret/data/app")
        .collect();
    let ids: BTreeSet<&str> = reads
        .iter()
        .filter_map(|r| r["request_id"].as_str())
        .collect();
    if reads.len() != n {
        let client = c.client(via);
        let all = block_on(async move { audit_records(&client, &format!("node={node}")).await });
        let tail: Vec<String> = all.iter().rev().take(5).map(|r| r.to_string()).collect();
        panic!(
            "{} of {n} reads merged; node {node} has {} merged records, the last: {tail:#?}",
            reads.len(),
            all.len()
        );
    }
    assert_eq!(ids.len(), n, "no read merged twice");
    let (code, out, err) = c.cli(via, &["audit", "verify"]);
    assert_eq!(code, 0, "audit verify: {out}\n{err}");
}

#[test]
fn primary_killed_secondary_serves_reads_and_merges_its_audit_exactly_once() {
    let _serial = serial();
    let mut c = ProcCluster::found();
    let hook = WebhookSink::start();
    c.add_node_with(
        1,
        2,
        false,
        &format!("[notify]\nwebhook_url = {:?}\n", hook.url),
    );
    seed(&c);
    let secondary = c.client(2);
    block_on(async move {
        let deadline = Instant::now() + Duration::from_secs(30);
        while secondary
            .request("GET", "secret/data/app?stale=true", None)
            .await
            .is_err()
        {
            assert!(
                Instant::now() < deadline,
                "the secondary never got the seed"
            );
        }
    });

    c.kill(1);
    let killed = Instant::now();
    let took = first_read_only_answer(&c, 2, killed);
    eprintln!("primary SIGKILL -> first read-only answer on the secondary: {took:?}");
    assert!(took <= Duration::from_secs(2), "{took:?}");
    assert_eq!(c.health_code(2), 473);
    let note = hook.wait_for_mode("read-only", Duration::from_secs(5));
    assert_eq!(
        (note["node_id"].as_u64(), note["old_mode"].as_str()),
        (Some(2), Some("follower"))
    );
    assert!(
        note["reason"]
            .as_str()
            .unwrap()
            .contains("no contact with a leader"),
        "{note}"
    );
    assert_eq!(c.metric(2, "coffer_read_only"), Some(1.0));
    assert_write_refused(&c, 2);
    let (token, reads) = login_and_read(&c, 2, 1000);
    assert_eq!(reads, 1000);

    c.start(1);
    c.wait(
        Duration::from_secs(30),
        "the secondary back in contact",
        |c| c.health_code(2) == 429,
    );
    hook.wait_for_mode("follower", Duration::from_secs(10));
    c.wait_merged(2, Duration::from_secs(60));
    assert_merged_exactly_once(&c, 1, 2, 1000);
    // The auditor's one query: everything done on node 2 while it was cut off, and the mode
    // changes themselves.
    let (code, out, err) = c.cli(
        1,
        &[
            "audit",
            "tail",
            "--node",
            "2",
            "--mode",
            "read-only",
            "--lines",
            "5000",
        ],
    );
    assert_eq!(code, 0, "{err}");
    assert!(out.lines().count() >= 1000, "{}", out.lines().count());
    assert!(
        out.contains("op=mode-change"),
        "the entry into standby is audited"
    );
    // The standby's session token was node-local: the primary never heard of it.
    let ca = std::fs::read_to_string(&c.ca_path).unwrap();
    let on_primary = Client::new(&c.addrs[&1].api, Some(&ca), Some(token)).unwrap();
    let refused = block_on(async move { on_primary.request("GET", "secret/data/app", None).await });
    assert!(
        matches!(refused, Err(ClientError::Server { status: 403, .. })),
        "{refused:?}"
    );
}

#[test]
fn link_cut_secondary_serves_reads_primary_keeps_writing_and_both_reconcile() {
    let _serial = serial();
    let mut c = ProcCluster::found();
    c.add_node(1, 2, false);
    seed(&c);
    let partition = Partition::cut(&[(node_ip(1), node_ip(2))]);
    let cut = Instant::now();
    let took = first_read_only_answer(&c, 2, cut);
    assert!(took <= Duration::from_secs(2), "{took:?}");
    assert_eq!(c.health_code(1), 200, "the primary keeps leading");
    let primary = c.client(1);
    block_on(async move {
        for i in 0..20 {
            primary
                .request(
                    "POST",
                    "secret/data/app",
                    Some(&json!({"data": {"v": format!("after-{i}")}})),
                )
                .await
                .expect("the primary's side keeps writing");
        }
    });
    assert_write_refused(&c, 2);
    let (_, reads) = login_and_read(&c, 2, 300);
    assert_eq!(reads, 300);

    partition.heal();
    c.wait(
        Duration::from_secs(30),
        "the secondary back in contact",
        |c| c.health_code(2) == 429,
    );
    let secondary = c.client(2);
    let v = block_on(async move {
        secondary
            .request("GET", "secret/data/app", None)
            .await
            .unwrap()
            .body["data"]["data"]["v"]
            .clone()
    });
    assert_eq!(
        v, "after-19",
        "the secondary caught up on the writes it missed"
    );
    c.wait_merged(2, Duration::from_secs(60));
    assert_merged_exactly_once(&c, 1, 2, 300);
}

#[test]
fn isolated_leader_turns_read_only_majority_writes_on_and_audit_merges_once() {
    let _serial = serial();
    let mut c = ProcCluster::found();
    c.add_node(1, 2, true);
    c.add_node(1, 3, true);
    seed(&c);
    let old = c.leader_seen_by(1).expect("leader");
    let others: Vec<u64> = [1, 2, 3].into_iter().filter(|id| *id != old).collect();
    let partition = Partition::cut(
        &others
            .iter()
            .map(|id| (node_ip(old), node_ip(*id)))
            .collect::<Vec<_>>(),
    );
    let isolated = Instant::now();
    c.wait(
        Duration::from_secs(10),
        "the isolated leader read-only",
        |c| c.health_code(old) == 473,
    );
    let took = isolated.elapsed();
    eprintln!("leader isolated -> 473 after {took:?}");
    assert!(took <= Duration::from_millis(2000), "{took:?}");
    assert_write_refused(&c, old);

    let majority = c.client_all(&others);
    // Writes through the majority's addresses, each retried like a client would until
    // acknowledged (the first ones may meet the election).
    let acked = block_on(async move {
        let mut acked = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(30);
        for i in 0..50 {
            let key = format!("secret/data/majority/{i}");
            while Instant::now() < deadline {
                let body = json!({"data": {"i": i}});
                if majority.request("POST", &key, Some(&body)).await.is_ok() {
                    acked.push(key);
                    break;
                }
            }
        }
        acked
    });
    assert_eq!(acked.len(), 50, "the majority keeps writing");
    let (_, reads) = login_and_read(&c, old, 200);
    assert_eq!(reads, 200);

    partition.heal();
    c.wait(Duration::from_secs(30), "the old leader following", |c| {
        c.health_code(old) == 429
    });
    let back = c.client(old);
    let missing = block_on(async move {
        let mut missing = Vec::new();
        for key in acked {
            if back.request("GET", &key, None).await.is_err() {
                missing.push(key);
            }
        }
        missing
    });
    assert!(missing.is_empty(), "lost: {missing:?}");
    c.wait_merged(old, Duration::from_secs(60));
    assert_merged_exactly_once(&c, others[0], old, 200);
}

/// `n` reads on node `id` with the root token, 16 at a time.
fn many_reads(c: &ProcCluster, id: u64, n: usize) {
    let client = c.client(id);
    block_on(async move {
        let mut tasks = Vec::new();
        for t in 0..16 {
            let client = client.clone();
            tasks.push(tokio::spawn(async move {
                for _ in (t..n).step_by(16) {
                    client
                        .request("GET", "secret/data/app", None)
                        .await
                        .unwrap();
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
    });
}

/// Crash during merge: 10,000 standby records, then the node doing the merging (the standby
/// itself, or the leader that commits the batches) SIGKILLed while the cursor is part-way.
fn crash_during_merge(kill_standby: bool) {
    const N: usize = 10_000;
    let mut c = ProcCluster::found();
    c.add_node(1, 2, false);
    seed(&c);
    let before = c.metric(2, "coffer_audit_spool_last_seq").unwrap_or(0.0);
    c.kill(1);
    first_read_only_answer(&c, 2, Instant::now());
    many_reads(&c, 2, N);
    let spooled = c.metric(2, "coffer_audit_spool_last_seq").unwrap();
    assert!(spooled - before >= N as f64, "{spooled} {before}");
    // The backlog is visible while the standby cannot merge: metric and health field.
    let backlog = c.metric(2, "coffer_audit_spool_backlog_records").unwrap();
    assert!(backlog >= N as f64, "backlog {backlog}");
    let client = c.client(2);
    let health = block_on(async move {
        let r = client.request("GET", "sys/health?readonlycode=200", None);
        r.await.unwrap().body
    });
    assert!(
        health["audit_spool_backlog"].as_u64().unwrap() >= N as u64,
        "{health}"
    );

    c.start(1);
    // Kill when the cluster's cursor for node 2 has moved but not reached the end.
    let deadline = Instant::now() + Duration::from_secs(60);
    let at = loop {
        let merged = c.metric(2, "coffer_audit_merged_seq").unwrap_or(0.0);
        if merged > before + 1.0 && merged < spooled {
            break merged;
        }
        assert!(
            merged < spooled,
            "the merge finished before it could be interrupted"
        );
        assert!(Instant::now() < deadline, "the merge never started");
    };
    let victim = if kill_standby { 2 } else { 1 };
    c.kill(victim);
    eprintln!("SIGKILL node {victim} with the cursor at {at} of {spooled}");
    c.start(victim);
    c.wait(Duration::from_secs(60), "node 2 back in contact", |c| {
        c.health_code(2) == 429
    });
    c.wait_merged(2, Duration::from_secs(120));
    let backlog = c.metric(2, "coffer_audit_spool_backlog_records").unwrap();
    assert!(backlog < 100.0, "the backlog drains: {backlog}");
    // Every root read of secret/data/app on node 2 while read-only, exactly once.
    let client = c.client(1);
    let records =
        block_on(
            async move { audit_records(&client, "node=2&mode=read-only&operation=read").await },
        );
    let reads: Vec<&Value> = records
        .iter()
        .filter(|r| r["path"] == "secret/data/app" && r["actor"] == "root")
        .collect();
    let ids: BTreeSet<&str> = reads
        .iter()
        .filter_map(|r| r["request_id"].as_str())
        .collect();
    assert!(reads.len() >= N, "{} of {N} reads merged", reads.len());
    assert_eq!(ids.len(), reads.len(), "no record merged twice");
    let (code, out, err) = c.cli(1, &["audit", "verify"]);
    assert_eq!(code, 0, "audit verify: {out}\n{err}");
}

#[test]
fn standby_killed_during_merge_merges_exactly_once() {
    let _serial = serial();
    crash_during_merge(true);
}

#[test]
fn leader_killed_during_merge_merges_exactly_once() {
    let _serial = serial();
    crash_during_merge(false);
}

/// A hung primary (SIGSTOP) is a dead one to its secondary; once it runs again (SIGCONT) the
/// secondary follows it and merges back.
#[test]
fn primary_stopped_with_sigstop_then_resumed() {
    let _serial = serial();
    let mut c = ProcCluster::found();
    c.add_node(1, 2, false);
    seed(&c);
    c.signal(1, "STOP");
    let stopped = Instant::now();
    let took = first_read_only_answer(&c, 2, stopped);
    assert!(took <= Duration::from_secs(2), "{took:?}");
    assert_write_refused(&c, 2);
    let (_, reads) = login_and_read(&c, 2, 100);
    assert_eq!(reads, 100);
    c.signal(1, "CONT");
    c.wait(
        Duration::from_secs(30),
        "the secondary following again",
        |c| c.health_code(2) == 429,
    );
    c.wait_merged(2, Duration::from_secs(60));
    assert_merged_exactly_once(&c, 1, 2, 100);
}
