//! Audit retention on three voters of real `coffer` processes: with `[audit] archive_after`
//! set, merged records past the age leave the replicated state for archive segments that
//! every member writes alike, through SIGKILLs of the leader while it archives under load;
//! `audit verify` and `audit export` still read and prove the whole chain; a backup no
//! longer carries the archived records; a member that joins later names the segments it
//! does not hold instead of failing.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use coffer_tests::bench::{phase, prewrite};
use coffer_tests::procs::{block_on, free_port, node_ip, run_cli, ProcCluster};
use coffer_tests::{random_string, Server};
use serde_json::Value;

/// Every segment file of a node, by name, with its bytes.
fn segments(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    std::fs::read_dir(dir.join("archive"))
        .map(|d| {
            d.filter_map(Result::ok)
                .filter(|e| e.file_name().to_string_lossy().ends_with(".seg"))
                .map(|e| {
                    (
                        e.file_name().to_string_lossy().into_owned(),
                        std::fs::read(e.path()).expect("segment"),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

fn verify(c: &ProcCluster, via: u64) -> (i32, Value) {
    let (code, out, err) = c.cli(via, &["audit", "verify", "-format=json"]);
    let report = serde_json::from_str(&out).unwrap_or_else(|_| panic!("verify: {out}{err}"));
    (code, report)
}

/// Sum over the merged epochs of one verify report's field.
fn total(report: &Value, field: &str) -> u64 {
    report["merged"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|e| e[field].as_u64().unwrap_or(0))
        .sum()
}

fn backup_audit_records(c: &ProcCluster, name: &str) -> u64 {
    let file = c.dir.path().join(name);
    let file = file.to_str().expect("utf-8");
    let (code, _, err) = c.cli(1, &["operator", "snapshot", "save", file]);
    assert_eq!(code, 0, "snapshot save: {err}");
    let (code, out, err) = c.cli(
        1,
        &["operator", "snapshot", "inspect", file, "-format=json"],
    );
    assert_eq!(code, 0, "snapshot inspect: {err}");
    let summary: Value = serde_json::from_str(&out).expect("inspect json");
    summary["manifest"]["counts"]["audit_records"]
        .as_u64()
        .unwrap_or_else(|| panic!("no audit record count in {summary}"))
}

#[test]
fn archived_audit_stays_provable_through_leader_kills_and_leaves_the_state() {
    let mut c = ProcCluster::three_voters();
    let before = backup_audit_records(&c, "before.snap");

    // Archive after two seconds from now on: each node restarts (SIGKILL) with the setting.
    c.reconfigure(&[1, 2, 3], "[audit]\narchive_after = \"2s\"\n");

    // Reads on every node while the leader archives; the leader is SIGKILLed three times.
    let value = random_string(64);
    let leader = c.leader().expect("a leader");
    let to_leader = c.client(leader);
    block_on(async move { prewrite(&to_leader, 50, &value).await });
    for _ in 0..3 {
        let leader = c.leader().expect("a leader");
        let clients: Vec<_> = [1, 2, 3]
            .into_iter()
            .filter(|id| *id != leader)
            .map(|id| c.client(id))
            .collect();
        block_on(async move {
            for client in clients {
                let s = phase(&client, 8, 3, false, 50, "").await;
                assert_eq!(s.errors, 0, "reads failed: {:?}", s.first_error);
            }
        });
        c.kill(leader);
        c.wait(Duration::from_secs(30), "a new leader", |c| {
            c.leader().is_some_and(|l| l != leader)
        });
        c.start(leader);
        c.wait(Duration::from_secs(30), "the killed node back", |c| {
            c.health_code(leader) != 0
        });
    }

    // Everything merged and then archived (nothing newer is written meanwhile but the
    // queries' own records, which are younger than the age).
    for id in [1, 2, 3] {
        c.wait_merged(id, Duration::from_secs(60));
    }
    c.wait(Duration::from_secs(60), "most of the log archived", |c| {
        let (_, report) = verify(c, 1);
        total(&report, "archived_through") * 10 > total(&report, "cursor") * 8
    });

    // Every member wrote the same segments, byte for byte, whatever was killed when.
    c.wait(
        Duration::from_secs(30),
        "the members' archives alike",
        |c| {
            let one = segments(&c.data_dir(1));
            [2, 3].iter().all(|id| segments(&c.data_dir(*id)) == one)
        },
    );
    let held = segments(&c.data_dir(1));
    assert!(!held.is_empty());
    let bytes: usize = held.values().map(Vec::len).sum();
    let metric = |name| c.metric(1, name).unwrap_or(0.0) as usize;
    assert!(metric("coffer_audit_archive_segments") >= held.len());
    assert!(metric("coffer_audit_archive_bytes") >= bytes);

    // Each node proves every chain, archive included, and exports every merged record.
    for id in [1, 2, 3] {
        let (code, report) = verify(&c, id);
        assert_eq!(code, 0, "node {id}: {report}");
        assert_eq!(report["ok"], true);
        assert_nothing_missing(&report);
        let out = c.dir.path().join(format!("export{id}.jsonl"));
        let (code, _, err) = c.cli(id, &["audit", "export", "-o", out.to_str().expect("utf-8")]);
        assert_eq!(code, 0, "export: {err}");
        assert!(!err.contains("Warning"), "{err}");
        let lines = std::fs::read_to_string(&out)
            .expect("export")
            .lines()
            .count() as u64;
        assert!(
            lines >= total(&report, "archived_through"),
            "node {id} exported {lines} records"
        );
    }

    // The state no longer carries what was archived: a backup holds fewer audit records
    // than before any archiving, though three rounds of load were audited since.
    let after = backup_audit_records(&c, "after.snap");
    assert!(
        after < before,
        "audit records in a backup: {before} before archiving, {after} after"
    );

    // A member joining now catches up from a snapshot: it holds none of the segments
    // archived before it, says so, and still proves everything it holds.
    c.add_node(1, 4, false);
    c.wait(Duration::from_secs(60), "node 4 caught up", |c| {
        c.health_code(4) != 0 && verify(c, 4).0 == 0
    });
    let (code, report) = verify(&c, 4);
    assert_eq!(code, 0, "{report}");
    let missing: usize = report["merged"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|e| e["archive_missing"].as_array().map_or(0, Vec::len))
        .sum();
    // Every segment node 1 held before node 4 joined, at least (more were made since).
    assert!(
        missing >= held.len(),
        "{missing} < {}: {report}",
        held.len()
    );
    let out = c.dir.path().join("export4.jsonl");
    let (code, _, err) = c.cli(4, &["audit", "export", "-o", out.to_str().expect("utf-8")]);
    assert_eq!(code, 0, "export: {err}");
    assert!(err.contains("which this node cannot read"), "{err}");

    // Node 2's directory, stopped, restored as a new one-voter cluster: the node carries
    // node 2's segments as its own and proves every chain after its first unseal.
    c.kill(2);
    let source = segments(&c.data_dir(2));
    let target = c.dir.path().join("restored2");
    let ip = node_ip(2);
    let api = format!("https://{ip}:{}", free_port(&ip));
    let peer = format!("{ip}:{}", free_port(&ip));
    let (code, out, err) = run_cli(
        &[],
        &[
            "operator",
            "restore",
            "--from-data-dir",
            c.data_dir(2).to_str().expect("utf-8"),
            "--data-dir",
            target.to_str().expect("utf-8"),
            "--api-addr",
            &api,
            "--peer-addr",
            &peer,
            "--operator",
            "drill",
            "--reason",
            "archive carried",
        ],
    );
    assert_eq!(code, 0, "restore: {out}\n{err}");
    let carried = segments(&target);
    assert!(
        source
            .iter()
            .all(|(name, bytes)| carried.get(name) == Some(bytes)),
        "every segment of node 2 carried, byte for byte"
    );
    let config = target.join("coffer.toml");
    let _server = Server::spawn(
        &["server", "--config", config.to_str().expect("utf-8")],
        &target,
    );
    let ca = target.join("tls/ca.pem").display().to_string();
    let env = [
        ("COFFER_ADDR", api.as_str()),
        ("COFFER_CACERT", ca.as_str()),
        ("COFFER_TOKEN", c.token.as_str()),
    ];
    let (code, out, err) = run_cli(&env, &["operator", "unseal", &c.share]);
    assert_eq!(code, 0, "unseal: {out}{err}");
    let verified = |env: &[(&str, &str)]| {
        let (code, out, _) = run_cli(env, &["audit", "verify", "-format=json"]);
        (
            code,
            serde_json::from_str::<Value>(&out).unwrap_or_default(),
        )
    };
    c.wait(
        Duration::from_secs(60),
        "the restored node answering",
        |_| verified(&env).1["merged"].is_array(),
    );
    let (code, report) = verified(&env);
    assert_eq!(code, 0, "{report}");
    assert_nothing_missing(&report);
}

/// No epoch of a verify report lists an archived range this node lacks.
fn assert_nothing_missing(report: &Value) {
    for epoch in report["merged"].as_array().expect("epochs") {
        assert!(
            epoch["archive_missing"]
                .as_array()
                .is_some_and(Vec::is_empty),
            "{epoch}"
        );
    }
}
