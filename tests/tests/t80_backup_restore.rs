//! Backup and disaster recovery with real processes: a backup saved from a running cluster, a
//! whole cluster killed, and the cluster rebuilt three ways — from the backup, from the
//! surviving learner's data directory, and by promoting the learner in place — each checked
//! the way its users would: unsealed with the original share, every secret, version, user
//! and policy there, logins working, the audit log verifying, a new node joining from a new
//! pack, and the old members refused.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use coffer_api::client::Client;
// The processes of these tests run one at a time (`serial`): two cores.
use coffer_tests::procs::{
    audit_records, block_on, free_port, metric_value, node_ip, run_cli, serial, ProcCluster,
};
use coffer_tests::Server;
use serde_json::{json, Value};
use sha2::Digest as _;

/// Secrets written before the backup, two versions each: 10,000 with `COFFER_LONG_TESTS=1`,
/// fewer in the suite (a debug build writes about 150 a second to four nodes).
fn secrets() -> usize {
    if std::env::var_os("COFFER_LONG_TESTS").is_some() {
        10_000
    } else {
        2_000
    }
}
/// Concurrent writers filling the vault.
const WRITERS: usize = 32;
/// Reads alice makes on the learner while it is cut off.
const STANDBY_READS: usize = 25;

/// Policies, users, tokens and `secrets()` secrets with two versions each.
fn fill(c: &ProcCluster) {
    let root = c.client(1);
    block_on(async move {
        let reader = json!({"policy": "path \"secret/*\" { capabilities = [\"read\", \"list\"] }"});
        root.request("PUT", "sys/policies/acl/reader", Some(&reader))
            .await
            .unwrap();
        let writer = json!({"policy": "path \"secret/data/team/*\" { capabilities = [\"create\", \"update\", \"read\"] }"});
        root.request("PUT", "sys/policies/acl/writer", Some(&writer))
            .await
            .unwrap();
        for (name, policy) in [("alice", "reader"), ("bob", "writer"), ("carol", "reader")] {
            let user = json!({"password": format!("{name}-password"), "token_policies": [policy]});
            root.request("POST", &format!("auth/userpass/users/{name}"), Some(&user))
                .await
                .unwrap();
        }
        for _ in 0..3 {
            root.request(
                "POST",
                "auth/token/create",
                Some(&json!({"policies": ["reader"]})),
            )
            .await
            .unwrap();
        }
        let mut writers = tokio::task::JoinSet::new();
        for w in 0..WRITERS {
            let root = root.clone();
            writers.spawn(async move {
                for i in (w..secrets()).step_by(WRITERS) {
                    for version in 1..=2 {
                        let body = json!({"data": {"v": format!("s{i}-v{version}")}});
                        root.request("POST", &format!("secret/data/dr/{i}"), Some(&body))
                            .await
                            .unwrap();
                    }
                }
            });
        }
        while let Some(done) = writers.join_next().await {
            done.unwrap();
        }
    });
}

/// A client for a node that is not in the `ProcCluster` (a restored one).
fn client_at(addr: &str, ca: &Path, token: Option<&str>) -> Client {
    let ca = std::fs::read_to_string(ca).expect("CA file");
    Client::new(addr, Some(&ca), token.map(str::to_string)).expect("client")
}

/// Runs the CLI against `addr` with `ca` and `token`.
fn cli_at(addr: &str, ca: &Path, token: &str, args: &[&str]) -> (i32, String, String) {
    let ca = ca.display().to_string();
    run_cli(
        &[
            ("COFFER_ADDR", addr),
            ("COFFER_CACERT", &ca),
            ("COFFER_TOKEN", token),
        ],
        args,
    )
}

fn wait_until(timeout: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn health(addr: &str, ca: &Path) -> u16 {
    let client = client_at(addr, ca, None);
    block_on(async move {
        match client.request("GET", "sys/health", None).await {
            Ok(r) => r.status.as_u16(),
            Err(coffer_api::client::ClientError::Server { status, .. }) => status,
            Err(_) => 0,
        }
    })
}

fn metric(addr: &str, ca: &Path, token: &str, name: &str) -> f64 {
    let client = client_at(addr, ca, Some(token));
    let text = block_on(async move {
        client
            .get_text("sys/metrics?format=prometheus")
            .await
            .expect("metrics")
    });
    metric_value(&text, name).unwrap_or(0.0)
}

/// Fresh API and peer addresses on node `id`'s loopback address.
fn fresh_addrs(id: u64) -> (String, String) {
    let ip = node_ip(id);
    (
        format!("https://{ip}:{}", free_port(&ip)),
        format!("{ip}:{}", free_port(&ip)),
    )
}

/// Restores with `args` into `target`; returns the CLI's stderr (asserting success).
fn restore(args: &[&str], target: &Path, api: &str, peer: &str) -> String {
    let mut argv: Vec<&str> = vec!["operator", "restore"];
    argv.extend_from_slice(args);
    let target = target.display().to_string();
    argv.extend_from_slice(&[
        "--data-dir",
        &target,
        "--api-addr",
        api,
        "--peer-addr",
        peer,
        "--operator",
        "drill",
        "--reason",
        "the primary site burned down",
    ]);
    let (code, out, err) = run_cli(&[], &argv);
    assert_eq!(code, 0, "restore: {out}\n{err}");
    assert!(out.contains("coffer server --config"), "{out}");
    err
}

/// Starts a restored node from the configuration the restore wrote.
fn start_restored(dir: &Path) -> Server {
    let config = dir.join("coffer.toml");
    Server::spawn(&["server", "--config", config.to_str().unwrap()], dir)
}

/// Unseals a restored node with the cluster's share and waits until it leads.
fn unseal(addr: &str, ca: &Path, share: &str) {
    assert_eq!(health(addr, ca), 503, "a restored node starts sealed");
    let (code, out, err) = cli_at(addr, ca, "", &["operator", "unseal", share]);
    assert_eq!(code, 0, "unseal: {out}\n{err}");
    wait_until(Duration::from_secs(30), "the restored node leading", || {
        health(addr, ca) == 200
    });
}

/// Every secret with both versions, the users and policies, a login: what the drill expects
/// of any rebuilt cluster.
fn assert_everything_there(addr: &str, ca: &Path, token: &str) {
    let root = client_at(addr, ca, Some(token));
    let anon = client_at(addr, ca, None);
    block_on(async move {
        let list = root
            .request("LIST", "secret/metadata/dr", None)
            .await
            .expect("list");
        let keys = list.body["data"]["keys"].as_array().expect("keys").len();
        assert_eq!(keys, secrets(), "every secret restored");
        for i in [0, 1, secrets() / 2, secrets() - 1] {
            for version in 1..=2 {
                let r = root
                    .request(
                        "GET",
                        &format!("secret/data/dr/{i}?version={version}"),
                        None,
                    )
                    .await
                    .expect("read a version");
                assert_eq!(r.body["data"]["data"]["v"], format!("s{i}-v{version}"));
            }
        }
        let users = root
            .request("LIST", "auth/userpass/users", None)
            .await
            .expect("users");
        assert_eq!(users.body["data"]["keys"], json!(["alice", "bob", "carol"]));
        let policies = root
            .request("LIST", "sys/policies/acl", None)
            .await
            .expect("policies");
        let names = policies.body["data"]["keys"].to_string();
        assert!(
            names.contains("reader") && names.contains("writer"),
            "{names}"
        );
        let login = anon
            .request(
                "POST",
                "auth/userpass/login/alice",
                Some(&json!({"password": "alice-password"})),
            )
            .await
            .expect("alice logs in on the restored cluster");
        assert!(login.body["auth"]["client_token"].is_string());
    });
}

fn assert_audit_verifies(addr: &str, ca: &Path, token: &str) {
    let (code, out, err) = cli_at(addr, ca, token, &["audit", "verify"]);
    assert_eq!(code, 0, "audit verify: {out}\n{err}");
}

/// The restore is in the audit log, with who and why.
fn assert_restore_audited(addr: &str, ca: &Path, token: &str) {
    let client = client_at(addr, ca, Some(token));
    wait_until(Duration::from_secs(30), "the restore audited", || {
        let client = client.clone();
        let records =
            block_on(async move { audit_records(&client, "operation=restore.finish").await });
        records.iter().any(|r| {
            let text = r.to_string();
            text.contains("drill") && text.contains("the primary site burned down")
        })
    });
}

/// The reads alice made on node 4 while it was cut off are in the restored log, once each.
fn assert_standby_reads_merged(addr: &str, ca: &Path, token: &str) {
    let client = client_at(addr, ca, Some(token));
    let mut last = 0;
    wait_until(
        Duration::from_secs(60),
        "the standby's reads merged",
        || {
            let client = client.clone();
            let records = block_on(async move {
                audit_records(
                    &client,
                    "node=4&mode=read-only&actor=userpass-alice&operation=read",
                )
                .await
            });
            let ids: std::collections::BTreeSet<String> = records
                .iter()
                .filter(|r| r["path"] == "secret/data/dr/7")
                .filter_map(|r| r["request_id"].as_str().map(str::to_string))
                .collect();
            let reads = records
                .iter()
                .filter(|r| r["path"] == "secret/data/dr/7")
                .count();
            assert_eq!(ids.len(), reads, "no read merged twice");
            assert!(reads <= STANDBY_READS, "{reads} reads merged");
            last = reads;
            reads == STANDBY_READS
        },
    );
    assert_eq!(last, STANDBY_READS);
}

/// alice logs in on the cut-off learner and reads `secret/dr/7` `STANDBY_READS` times.
fn read_on_standby(c: &ProcCluster) {
    let ca = c.ca_path.clone();
    let addr = c.addrs[&4].api.clone();
    wait_until(Duration::from_secs(30), "the learner read-only", || {
        c.health_code(4) == 473
    });
    let anon = client_at(&addr, &ca, None);
    block_on(async move {
        let login = anon
            .request(
                "POST",
                "auth/userpass/login/alice",
                Some(&json!({"password": "alice-password"})),
            )
            .await
            .expect("login on the standby");
        let token = login.body["auth"]["client_token"].as_str().unwrap();
        let alice = client_at(&addr, &ca, Some(token));
        for _ in 0..STANDBY_READS {
            let r = alice
                .request("GET", "secret/data/dr/7", None)
                .await
                .unwrap();
            assert_eq!(r.body["data"]["data"]["v"], "s7-v2");
        }
    });
}

fn inspect(file: &Path) -> Value {
    let (code, out, err) = run_cli(
        &[],
        &[
            "operator",
            "snapshot",
            "inspect",
            "-format=json",
            file.to_str().unwrap(),
        ],
    );
    assert_eq!(code, 0, "inspect: {err}");
    serde_json::from_str(&out).expect("inspect json")
}

fn dirs_beside(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .collect()
}

#[test]
fn dr_drill_from_a_backup_from_a_survivors_data_dir_and_by_promoting_it() {
    let _serial = serial();
    let mut c = ProcCluster::found();
    c.add_node(1, 2, true);
    c.add_node(1, 3, true);
    c.add_node(1, 4, false);
    fill(&c);

    // A backup from the leader, and what inspect says about it (no key needed).
    let backup = c.dir.path().join("vault.snap");
    let (code, out, err) = c.cli(
        1,
        &[
            "operator",
            "snapshot",
            "save",
            "-o",
            backup.to_str().unwrap(),
        ],
    );
    assert_eq!(code, 0, "snapshot save: {out}\n{err}\n{}", c.logs());
    let n = secrets();
    assert!(
        err.contains(&format!("{n} secrets, {} versions, 3 users", 2 * n)),
        "{err}"
    );
    let manifest = inspect(&backup);
    assert_eq!(manifest["verified"], true);
    let m = &manifest["manifest"];
    assert_eq!(m["counts"]["secrets"], secrets());
    assert_eq!(m["counts"]["versions"], 2 * secrets());
    assert_eq!(m["counts"]["users"], 3);
    assert_eq!(m["counts"]["policies"], 2);
    assert!(m["counts"]["tokens"].as_u64().unwrap() >= 4, "{m}");
    assert!(m["counts"]["audit_records"].as_u64().unwrap() > 0, "{m}");
    assert_eq!(m["seal"]["secret_shares"], 1);
    assert_eq!(m["node_mode"], "leader");
    let root = c.client(1);
    let audited = block_on(async move { audit_records(&root, "operation=read").await });
    assert!(
        audited
            .iter()
            .any(|r| r["path"] == "sys/storage/raft/snapshot"),
        "the backup is audited"
    );
    assert!(!std::fs::read(&backup)
        .unwrap()
        .windows(8)
        .any(|w| w == b"s7-v2\"}"));

    // The site burns: the voters die first, the learner serves reads alone, then it dies.
    for id in [1, 2, 3] {
        c.kill(id);
    }
    read_on_standby(&c);
    // The standby backs itself up during the outage, from its local state, and says so.
    let standby_backup = c.dir.path().join("standby.snap");
    let (code, out, err) = c.cli(
        4,
        &[
            "operator",
            "snapshot",
            "save",
            "-o",
            standby_backup.to_str().unwrap(),
        ],
    );
    assert_eq!(code, 0, "a backup on the standby: {out}\n{err}");
    assert!(
        err.contains("node 4 is a read-only standby; this backup is its local state"),
        "{err}"
    );
    let m = inspect(&standby_backup);
    assert_eq!(m["manifest"]["node_mode"], "read-only");
    assert_eq!(m["manifest"]["counts"]["secrets"], secrets());
    assert!(
        m["manifest"]["last_contact_ms"].as_u64().unwrap() >= 1000,
        "{m}"
    );
    c.kill(4);

    // 1. From the backup, at node 1's old addresses (the old members will knock there).
    let r1 = c.dir.path().join("restored-from-backup");
    let (api1, peer1) = (c.addrs[&1].api.clone(), c.addrs[&1].peer.clone());
    let said = restore(&["--from", backup.to_str().unwrap()], &r1, &api1, &peer1);
    assert!(said.contains("New cluster epoch"), "{said}");
    assert!(
        said.contains(&format!(
            "{n} secrets, {} versions, 3 users, 2 policies",
            2 * n
        )),
        "{said}"
    );
    assert!(
        said.contains("Unseal it with 1 of the original 1 shares"),
        "{said}"
    );
    assert!(said.contains("New CA"), "{said}");
    let ca1 = r1.join("tls/ca.pem");
    let server1 = start_restored(&r1);
    // A share of another vault is refused; the cluster's own share unseals it.
    let (code, _, err) = cli_at(
        &api1,
        &ca1,
        "",
        &[
            "operator",
            "unseal",
            "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
        ],
    );
    assert_ne!(code, 0, "a wrong share: {err}");
    unseal(&api1, &ca1, &c.share);
    assert_everything_there(&api1, &ca1, &c.token);
    assert_restore_audited(&api1, &ca1, &c.token);
    assert_audit_verifies(&api1, &ca1, &c.token);
    wait_until(
        Duration::from_secs(10),
        "the restore's own chain check",
        || {
            server1
                .log()
                .contains("restored audit chains verified: no gaps, forks or tampered records")
        },
    );
    // The old members come back: their certificates are refused, the new cluster is as it was.
    let refused_before = metric(
        &api1,
        &ca1,
        &c.token,
        "coffer_peer_refusals_total{reason=\"tls_handshake\"}",
    );
    c.start(2);
    c.start(3);
    wait_until(Duration::from_secs(30), "the old members refused", || {
        metric(
            &api1,
            &ca1,
            &c.token,
            "coffer_peer_refusals_total{reason=\"tls_handshake\"}",
        ) > refused_before
    });
    let members = {
        let client = client_at(&api1, &ca1, Some(&c.token));
        block_on(async move {
            client
                .request("GET", "sys/coffer/members", None)
                .await
                .unwrap()
                .body
        })
    };
    let ids: Vec<u64> = members["data"]["members"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|m| m["node_id"].as_u64())
        .collect();
    assert_eq!(ids, vec![1], "only the restored node is a member");
    assert_everything_there(&api1, &ca1, &c.token);
    c.kill(2);
    c.kill(3);
    // A new node joins the restored cluster from a new pack.
    let (api5, peer5) = fresh_addrs(5);
    let pack = c.dir.path().join("node5.pack");
    let (code, pass, err) = cli_at(
        &api1,
        &ca1,
        &c.token,
        &[
            "operator",
            "pack",
            "create",
            "--node-id",
            "5",
            "--api-addr",
            &api5,
            "--peer-addr",
            &peer5,
            "--include-unseal-key",
            "-o",
            pack.to_str().unwrap(),
        ],
    );
    assert_eq!(code, 0, "pack on the restored cluster: {err}");
    let pass_file = c.dir.path().join("node5.pass");
    std::fs::write(&pass_file, pass.trim()).unwrap();
    let d5 = c.dir.path().join("node5");
    let argv = coffer_tests::procs::join_argv(&pack, &d5, &pass_file, true);
    let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
    let server5 = Server::spawn(&argv, &d5);
    wait_until(
        Duration::from_secs(60),
        "node 5 serving the restored data",
        || {
            let client = client_at(&api5, &ca1, Some(&c.token));
            block_on(async move {
                client
                    .request("GET", "secret/data/dr/1999", None)
                    .await
                    .is_ok_and(|r| r.body["data"]["data"]["v"] == "s1999-v2")
            })
        },
    );
    server5.kill9();
    server1.kill9();

    // 2. From the learner's surviving data directory (only read), at fresh addresses: the
    // reads it served while cut off reach the restored log, once each.
    let d4 = c.data_dir(4);
    let r4 = c.dir.path().join("restored-from-learner");
    let (api4, peer4) = fresh_addrs(4);
    let said = restore(
        &["--from-data-dir", d4.to_str().unwrap()],
        &r4,
        &api4,
        &peer4,
    );
    assert!(said.contains("Restored node 4"), "{said}");
    assert!(said.contains("CA kept"), "{said}");
    let ca4 = r4.join("tls/ca.pem");
    let server4 = start_restored(&r4);
    unseal(&api4, &ca4, &c.share);
    assert_everything_there(&api4, &ca4, &c.token);
    assert_standby_reads_merged(&api4, &ca4, &c.token);
    assert_restore_audited(&api4, &ca4, &c.token);
    assert_audit_verifies(&api4, &ca4, &c.token);
    wait_until(
        Duration::from_secs(10),
        "the restore's own chain check",
        || {
            server4
                .log()
                .contains("restored audit chains verified: no gaps, forks or tampered records")
        },
    );
    server4.kill9();

    // 3. The learner promoted in place: the only voter of a new epoch, writable, its own
    // configuration and key-file seal unchanged.
    let (code, out, err) = run_cli(
        &[],
        &[
            "operator",
            "recover",
            "--data-dir",
            d4.to_str().unwrap(),
            "--reason",
            "the primary site burned down",
            "--operator",
            "drill",
            "--yes",
        ],
    );
    assert_ne!(code, 0, "recover without --force-new-cluster: {out}");
    assert!(err.contains("give --force-new-cluster"), "{err}");
    let (code, out, err) = run_cli(
        &[],
        &[
            "operator",
            "recover",
            "--force-new-cluster",
            "--data-dir",
            d4.to_str().unwrap(),
            "--reason",
            "the primary site burned down",
            "--operator",
            "drill",
            "--yes",
        ],
    );
    assert_eq!(code, 0, "recover: {out}\n{err}");
    assert!(err.contains("New cluster epoch"), "{err}");
    c.start(4);
    let (api, ca) = (c.addrs[&4].api.clone(), c.ca_path.clone());
    wait_until(
        Duration::from_secs(30),
        "the recovered node leading",
        || health(&api, &ca) == 200,
    );
    let (code, _, err) = c.cli(4, &["kv", "put", "secret/after-recover", "v=written"]);
    assert_eq!(code, 0, "a write on the recovered node: {err}");
    assert_everything_there(&api, &ca, &c.token);
    assert_standby_reads_merged(&api, &ca, &c.token);
    assert_restore_audited(&api, &ca, &c.token);
    assert_audit_verifies(&api, &ca, &c.token);
    let kept = dirs_beside(c.dir.path())
        .into_iter()
        .any(|p| p.to_string_lossy().contains("node4.before-recover-"));
    assert!(kept, "the old directory is kept beside");
}

/// A one-node cluster with a secret, and a backup of it.
fn one_node_backup() -> (ProcCluster, PathBuf) {
    let c = ProcCluster::found();
    let (code, _, err) = c.cli(1, &["kv", "put", "secret/app", "v=1"]);
    assert_eq!(code, 0, "{err}");
    let file = c.dir.path().join("one.snap");
    let (code, _, err) = c.cli(1, &["operator", "snapshot", "save", file.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    (c, file)
}

/// Restores from `source` (`--from FILE` or `--from-data-dir DIR`) into `target`; returns
/// (code, stderr).
fn try_restore(flag: &str, source: &Path, target: &Path) -> (i32, String) {
    let (code, _, err) = run_cli(
        &[],
        &[
            "operator",
            "restore",
            flag,
            source.to_str().unwrap(),
            "--data-dir",
            target.to_str().unwrap(),
        ],
    );
    (code, err)
}

#[test]
fn bad_backups_and_targets_are_refused_and_nothing_is_written() {
    let _serial = serial();
    let (mut c, good) = one_node_backup();
    let dir = &c.dir;
    let bytes = std::fs::read(&good).unwrap();
    let work = dir.path().join("cases");
    std::fs::create_dir(&work).unwrap();
    let target = work.join("target");

    let mut flipped = bytes.clone();
    let middle = bytes.len() / 2;
    flipped[middle] ^= 0x01;
    let newer = String::from_utf8_lossy(&bytes)
        .find("\"format\": 1")
        .map(|at| {
            let mut b = bytes.clone();
            b[at + 10] = b'9';
            b
        })
        .expect("the manifest's format field");
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "truncated",
            bytes[..bytes.len() - 100].to_vec(),
            "the backup file is truncated",
        ),
        (
            "flipped",
            flipped,
            "the backup's checksum does not match: the file was changed or damaged",
        ),
        (
            "not-a-backup",
            b"{\"this is\": \"not a backup\"}".repeat(10),
            "not a Coffer backup file",
        ),
        (
            "newer",
            newer,
            "the backup was made by a newer Coffer (format 9); this version reads format 1",
        ),
        ("empty", Vec::new(), "not a Coffer backup file"),
    ];
    for (name, content, message) in cases {
        let file = work.join(format!("{name}.snap"));
        std::fs::write(&file, &content).unwrap();
        let (code, err) = try_restore("--from", &file, &target);
        assert_eq!(code, 1, "{name}: {err}");
        assert!(err.contains(message), "{name}: {err}");
        assert!(!target.exists(), "{name}: nothing written");
        let (code, _, err) = run_cli(
            &[],
            &["operator", "snapshot", "inspect", file.to_str().unwrap()],
        );
        assert_eq!(code, 1, "inspect {name}: {err}");
        assert!(err.contains(message), "inspect {name}: {err}");
        let leftovers: Vec<_> = dirs_beside(&work)
            .into_iter()
            .filter(|p| p.is_dir())
            .collect();
        assert!(leftovers.is_empty(), "{name}: left {leftovers:?}");
    }

    // A target that holds anything is refused and left as it was.
    std::fs::create_dir(&target).unwrap();
    std::fs::write(target.join("keep.txt"), "mine").unwrap();
    let (code, err) = try_restore("--from", &good, &target);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("is not empty: restore into a new or empty directory (nothing was written)"),
        "{err}"
    );
    assert_eq!(
        std::fs::read_dir(&target).unwrap().count(),
        1,
        "the target is untouched"
    );
    assert_eq!(
        std::fs::read_to_string(target.join("keep.txt")).unwrap(),
        "mine"
    );

    // Too little disk space: a small tmpfs (root only; skipped where mounting is not allowed).
    let small = work.join("small");
    std::fs::create_dir(&small).unwrap();
    let need = inspect(&good)["manifest"]["snapshot"]["bytes"]
        .as_u64()
        .unwrap();
    let size = (need / 4096 + 2) * 4096;
    let mounted = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
        .arg(&small)
        .status()
        .is_ok_and(|s| s.success());
    if mounted {
        let (code, err) = try_restore("--from", &good, &small.join("target"));
        let _ = std::process::Command::new("umount").arg(&small).status();
        assert_eq!(code, 1, "{err}");
        assert!(err.contains("too little disk space on"), "{err}");
        assert!(err.contains("(nothing was written)"), "{err}");
    } else {
        eprintln!("skipped the disk-space case: cannot mount a tmpfs here");
    }
    std::fs::remove_dir(&small).unwrap();

    // Both sources at once, or neither, is a usage error.
    let (code, _, err) = run_cli(
        &[],
        &["operator", "restore", "--data-dir", "/nonexistent/x"],
    );
    assert_eq!(code, 1, "{err}");

    // A survivor's directory that is in use is refused.
    let running = c.data_dir(1);
    let (code, err) = try_restore("--from-data-dir", &running, &work.join("from-running"));
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("is in use by a running node: stop it first"),
        "{err}"
    );
    assert!(!work.join("from-running").exists());

    // Recover asks first; any answer but `recover` changes nothing.
    let config = c.dir.path().join("node1.toml");
    let mut child = std::process::Command::new(coffer_tests::coffer_bin())
        .args([
            "operator",
            "recover",
            "--force-new-cluster",
            "--data-dir",
            running.to_str().unwrap(),
            "--config",
            config.to_str().unwrap(),
            "--reason",
            "drill",
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::Write;
        child.stdin.take().unwrap().write_all(b"no\n").unwrap();
    }
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("Type 'recover' to go on"), "{err}");
    assert!(err.contains("Nothing was changed."), "{err}");
    // Confirmed, it still refuses a running node's directory.
    let (code, _, err) = run_cli(
        &[],
        &[
            "operator",
            "recover",
            "--force-new-cluster",
            "--data-dir",
            running.to_str().unwrap(),
            "--config",
            config.to_str().unwrap(),
            "--reason",
            "drill",
            "--yes",
        ],
    );
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("is in use by a running node: stop it first"),
        "{err}"
    );
    assert!(
        !dirs_beside(c.dir.path())
            .iter()
            .any(|p| p.to_string_lossy().contains("before-recover")),
        "nothing set aside"
    );
    let (code, _, err) = c.cli(1, &["kv", "get", "secret/app"]);
    assert_eq!(code, 0, "the node serves on: {err}");
    c.kill(1);
    // A target inside the source would copy the source into itself: refused.
    let inside = running.join("restored-here");
    let (code, err) = try_restore("--from-data-dir", &running, &inside);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("is inside the source"), "{err}");
    assert!(!inside.exists());

    // The checksum recomputed over a changed manifest: the file verifies without keys, the
    // restore goes through, and the first unseal refuses it (the MAC needs the keys).
    let text_at = String::from_utf8_lossy(&bytes)
        .find("\"created_at\": \"")
        .expect("created_at");
    let mut forged = bytes.clone();
    let year = text_at + "\"created_at\": \"".len();
    forged[year] = if forged[year] == b'1' { b'2' } else { b'1' };
    let body_end = forged.len() - 64;
    let digest: [u8; 32] = sha2::Sha256::digest(&forged[..body_end]).into();
    forged[body_end..body_end + 32].copy_from_slice(&digest);
    let file = work.join("forged.snap");
    std::fs::write(&file, &forged).unwrap();
    assert_eq!(inspect(&file)["verified"], true, "a consistent forgery");
    let restored = work.join("forged-restore");
    let (api, peer) = fresh_addrs(1);
    restore(&["--from", file.to_str().unwrap()], &restored, &api, &peer);
    let node = start_restored(&restored);
    let ca = restored.join("tls/ca.pem");
    let (code, _, err) = cli_at(&api, &ca, "", &["operator", "unseal", &c.share]);
    assert_ne!(code, 0, "{err}");
    assert!(
        err.contains("the restored data does not match its backup's authentication"),
        "{err}"
    );
    assert_eq!(health(&api, &ca), 503, "it stays sealed");
    drop(node);
    // Nor can it be laundered through a second restore from its directory.
    let (code, err) = try_restore("--from-data-dir", &restored, &work.join("laundered"));
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("is itself a restore that was never finished"),
        "{err}"
    );
    assert!(!work.join("laundered").exists());

    // `--keep-cluster-id` puts the same cluster back: same id, and the original share.
    let original = inspect(&good)["manifest"]["cluster_id"]
        .as_str()
        .unwrap()
        .to_string();
    let kept = work.join("kept");
    let (api, peer) = fresh_addrs(1);
    let said = restore(
        &["--from", good.to_str().unwrap(), "--keep-cluster-id"],
        &kept,
        &api,
        &peer,
    );
    assert!(
        said.contains(&format!("Cluster id kept: {original}")),
        "{said}"
    );
    let node = start_restored(&kept);
    let ca = kept.join("tls/ca.pem");
    unseal(&api, &ca, &c.share);
    let h = {
        let client = client_at(&api, &ca, None);
        block_on(async move {
            client
                .request("GET", "sys/health", None)
                .await
                .unwrap()
                .body
        })
    };
    assert_eq!(h["cluster_id"], original.as_str());
    let (code, out, err) = cli_at(
        &api,
        &ca,
        &c.token,
        &["kv", "get", "-field=v", "secret/app"],
    );
    assert_eq!((code, out.trim()), (0, "1"), "{err}");
    drop(node);
}

/// Counts this node's scheduled backups in `dir`.
fn scheduled_in(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .map(|e| e.path())
                .filter(|p| {
                    let name = p.file_name().unwrap().to_string_lossy().into_owned();
                    name.starts_with("coffer-node1-") && name.ends_with(".snap")
                })
                .collect()
        })
        .unwrap_or_default();
    files.sort();
    files
}

#[test]
fn scheduled_backups_rotate_report_and_say_when_they_fail() {
    let _serial = serial();
    let mut c = ProcCluster::found();
    let backups = c.dir.path().join("backups");
    let config = c.dir.path().join("node1.toml");
    let mut text = std::fs::read_to_string(&config).unwrap();
    text.push_str(&format!(
        "[backup]\ndir = {:?}\ninterval = \"1s\"\nkeep = 2\n",
        backups.display().to_string()
    ));
    std::fs::write(&config, text).unwrap();
    c.kill(1);
    c.start(1);
    let (api, ca) = (c.addrs[&1].api.clone(), c.ca_path.clone());
    wait_until(Duration::from_secs(30), "node 1 unsealed", || {
        health(&api, &ca) == 200
    });
    // Files appear every second; only the newest two stay; each one is a whole backup.
    wait_until(Duration::from_secs(30), "three scheduled backups", || {
        metric(&api, &ca, &c.token, "coffer_last_backup_timestamp_seconds") > 0.0
            && scheduled_in(&backups).len() == 2
            && c.log_contains(1, "scheduled backup written")
    });
    let first = scheduled_in(&backups);
    wait_until(Duration::from_secs(30), "the oldest rotated away", || {
        let now = scheduled_in(&backups);
        now.len() == 2 && !now.contains(&first[0])
    });
    for file in scheduled_in(&backups) {
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(&file).unwrap().permissions(),
        );
        assert_eq!(mode & 0o777, 0o600, "{}", file.display());
        // A file may be rotated away between the listing and the read.
        if file.exists() {
            let m = inspect(&file);
            assert_eq!(m["verified"], true);
        }
    }
    assert!(
        std::fs::read_dir(&backups).unwrap().flatten().all(|e| !e
            .file_name()
            .to_string_lossy()
            .ends_with(".part")
            || e.metadata().is_ok_and(|m| m.len() > 0)),
        "no abandoned partial files"
    );
    let h = {
        let client = client_at(&api, &ca, None);
        block_on(async move {
            client
                .request("GET", "sys/health", None)
                .await
                .unwrap()
                .body
        })
    };
    assert!(
        h["last_backup"]["last_success_unix"].as_i64().unwrap() > 0,
        "{h}"
    );
    assert!(h["last_backup"]["last_error"].is_null(), "{h}");

    // The directory becomes unusable: the failure shows in health, metrics and the log, and
    // the node serves on.
    std::fs::remove_dir_all(&backups).unwrap();
    std::fs::write(&backups, "not a directory").unwrap();
    wait_until(Duration::from_secs(30), "the failure reported", || {
        metric(&api, &ca, &c.token, "coffer_backup_failures_total") > 0.0
    });
    let h = {
        let client = client_at(&api, &ca, None);
        block_on(async move {
            client
                .request("GET", "sys/health", None)
                .await
                .unwrap()
                .body
        })
    };
    assert!(
        h["last_backup"]["last_error"]
            .as_str()
            .is_some_and(|e| !e.is_empty()),
        "{h}"
    );
    assert!(c.log_contains(1, "scheduled backup failed"));
    let (code, _, err) = c.cli(1, &["kv", "put", "secret/still", "v=1"]);
    assert_eq!(code, 0, "{err}");
}

/// Reads `secret/<path>`'s `v` through node `id` (None when there is no such secret).
fn kv_v(c: &ProcCluster, id: u64, path: &str) -> Option<String> {
    let client = c.client(id);
    let path = format!("secret/data/{path}");
    block_on(async move {
        match client.request("GET", &path, None).await {
            Ok(r) => r.body["data"]["data"]["v"].as_str().map(str::to_string),
            Err(coffer_api::client::ClientError::Server { status: 404, .. }) => None,
            Err(e) => panic!("reading {path}: {e}"),
        }
    })
}

/// POSTs `file` to `route` on node `id` with `token`; returns the status and error text.
fn upload(c: &ProcCluster, id: u64, token: &str, route: &str, file: &Path) -> (u16, String) {
    let client = client_at(&c.addrs[&id].api, &c.ca_path, Some(token));
    let (route, file) = (route.to_string(), file.to_path_buf());
    block_on(async move {
        match client
            .upload(&route, &file, std::sync::Arc::new(|_| {}))
            .await
        {
            Ok(r) => (r.status.as_u16(), String::new()),
            Err(coffer_api::client::ClientError::Server {
                status, messages, ..
            }) => (status, messages.join("; ")),
            Err(e) => (0, e.to_string()),
        }
    })
}

/// `operator snapshot restore` (Vault's `POST sys/storage/raft/snapshot`) on a running
/// three-voter cluster, sent to a follower: every member ends with the backup's secrets,
/// users and policies; the audit log keeps every record, those made after the backup
/// included, and records the restore; the cluster keeps its seal and members. A backup of
/// another cluster, a damaged one, and a caller without sudo are refused, with or without
/// force, and change nothing.
#[test]
fn a_backup_restored_into_the_running_cluster_reaches_every_member_and_keeps_the_audit() {
    let _serial = serial();
    let mut c = ProcCluster::found();
    c.add_node(1, 2, true);
    c.add_node(1, 3, true);
    for (path, v) in [("keep", "1"), ("changed", "before")] {
        let (code, _, err) = c.cli(
            1,
            &["kv", "put", &format!("secret/{path}"), &format!("v={v}")],
        );
        assert_eq!(code, 0, "{err}");
    }
    let root = c.client(1);
    block_on(async move {
        let reader = json!({"policy": "path \"secret/*\" { capabilities = [\"read\"] }"});
        root.request("PUT", "sys/policies/acl/reader", Some(&reader))
            .await
            .unwrap();
        let alice = json!({"password": "alice-password", "token_policies": ["reader"]});
        root.request("POST", "auth/userpass/users/alice", Some(&alice))
            .await
            .unwrap();
    });
    let backup = c.dir.path().join("live.snap");
    let (code, _, err) = c.cli(
        1,
        &["operator", "snapshot", "save", backup.to_str().unwrap()],
    );
    assert_eq!(code, 0, "{err}");

    // After the backup: changes the restore rolls back, and an access it must not forget.
    for (path, v) in [("changed", "after"), ("new", "1")] {
        let (code, _, err) = c.cli(
            1,
            &["kv", "put", &format!("secret/{path}"), &format!("v={v}")],
        );
        assert_eq!(code, 0, "{err}");
    }
    let (code, _, err) = c.cli(
        1,
        &[
            "user",
            "create",
            "mallory",
            "--password",
            "mallory-password",
        ],
    );
    assert_eq!(code, 0, "{err}");
    assert_eq!(kv_v(&c, 1, "keep").as_deref(), Some("1"));

    // Refusals first; each leaves everything as it was.
    let other = ProcCluster::found();
    let foreign = other.dir.path().join("foreign.snap");
    let (code, _, err) = other.cli(
        1,
        &["operator", "snapshot", "save", foreign.to_str().unwrap()],
    );
    assert_eq!(code, 0, "{err}");
    let token = c.token.clone();
    let (status, why) = upload(&c, 2, &token, "sys/storage/raft/snapshot", &foreign);
    assert_eq!(status, 400, "{why}");
    assert!(why.contains("the snapshot is of cluster"), "{why}");
    let (status, why) = upload(&c, 2, &token, "sys/storage/raft/snapshot-force", &foreign);
    assert_eq!(status, 400, "{why}");
    assert!(why.contains("not made under this cluster's keys"), "{why}");
    let (code, _, err) = c.cli(
        2,
        &["operator", "snapshot", "restore", foreign.to_str().unwrap()],
    );
    assert_ne!(code, 0);
    assert!(err.contains("the snapshot is of cluster"), "{err}");
    drop(other);
    let mut damaged = std::fs::read(&backup).unwrap();
    let middle = damaged.len() / 2;
    damaged[middle] ^= 0x01;
    let damaged_file = c.dir.path().join("damaged.snap");
    std::fs::write(&damaged_file, &damaged).unwrap();
    let (status, why) = upload(&c, 1, &token, "sys/storage/raft/snapshot", &damaged_file);
    assert_eq!(status, 400, "{why}");
    assert!(why.contains("the snapshot is refused"), "{why}");
    // A checksum that holds with a MAC that does not (a file assembled from this cluster's
    // records, its checksum recomputed): refused, forced or not.
    let mut forged = std::fs::read(&backup).unwrap();
    let last = forged.len() - 1;
    forged[last] ^= 0x01;
    let forged_file = c.dir.path().join("forged.snap");
    std::fs::write(&forged_file, &forged).unwrap();
    for route in [
        "sys/storage/raft/snapshot",
        "sys/storage/raft/snapshot-force",
    ] {
        let (status, why) = upload(&c, 1, &token, route, &forged_file);
        assert_eq!(status, 400, "{route}: {why}");
        assert!(
            why.contains("not made under this cluster's keys"),
            "{route}: {why}"
        );
    }
    let truncated_file = c.dir.path().join("truncated.snap");
    std::fs::write(&truncated_file, &damaged[..middle]).unwrap();
    let (status, why) = upload(&c, 1, &token, "sys/storage/raft/snapshot", &truncated_file);
    assert_eq!(status, 400, "{why}");
    assert!(why.contains("truncated"), "{why}");
    let (status, why) = upload(&c, 1, "not-a-token", "sys/storage/raft/snapshot", &backup);
    assert_eq!(status, 403, "{why}");
    let alice_token = block_on({
        let client = c.client(1);
        async move {
            let r = client
                .request(
                    "POST",
                    "auth/userpass/login/alice",
                    Some(&json!({"password": "alice-password"})),
                )
                .await
                .unwrap();
            r.body["auth"]["client_token"].as_str().unwrap().to_string()
        }
    });
    let (status, _) = upload(&c, 1, &alice_token, "sys/storage/raft/snapshot", &backup);
    assert_eq!(status, 403, "a caller without sudo is refused");
    assert_eq!(kv_v(&c, 3, "changed").as_deref(), Some("after"));
    assert_eq!(kv_v(&c, 3, "new").as_deref(), Some("1"));

    // The restore, sent to a follower.
    let (code, _, err) = c.cli(
        2,
        &["operator", "snapshot", "restore", backup.to_str().unwrap()],
    );
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("Every member now holds it"), "{err}");
    for id in 1..=3 {
        assert_eq!(kv_v(&c, id, "keep").as_deref(), Some("1"), "node {id}");
        assert_eq!(
            kv_v(&c, id, "changed").as_deref(),
            Some("before"),
            "node {id}"
        );
        assert_eq!(kv_v(&c, id, "new"), None, "node {id}");
    }
    let (code, out, err) = c.cli(3, &["user", "list"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("alice") && !out.contains("mallory"),
        "the users are the backup's: {out}"
    );
    let (code, _, err) = c.cli(3, &["login", "username=alice", "password=alice-password"]);
    assert_eq!(code, 0, "alice (in the backup) still logs in: {err}");
    // The cluster is as it was: three voters, unsealed, writable.
    assert_eq!(c.members(1).map(|m| m.len()), Some(3));
    let (code, _, err) = c.cli(3, &["kv", "put", "secret/after-restore", "v=ok"]);
    assert_eq!(code, 0, "{err}");

    // The audit log kept what happened after the backup, and says who restored what.
    let client = c.client(1);
    let (writes_after_backup, restores) = block_on(async move {
        (
            audit_records(&client, "path_prefix=secret/data/new").await,
            audit_records(&client, "operation=restore.live").await,
        )
    });
    assert!(
        !writes_after_backup.is_empty(),
        "the write made after the backup is still on record"
    );
    assert_eq!(restores.len(), 1, "{restores:?}");
    assert!(restores[0].to_string().contains("root"), "{}", restores[0]);
    let (code, out, err) = c.cli(2, &["audit", "verify"]);
    assert_eq!(code, 0, "audit verify after the restore: {out}\n{err}");
}
