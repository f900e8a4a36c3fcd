//! Audit end to end against real processes: refusals audited without secrets, exactly-once
//! merge after SIGKILL under 32 concurrent clients, and tampering found by `coffer audit verify`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use coffer_api::client::Client;
use coffer_tests::Server;
use serde_json::{json, Value};

const ROOT: &str = "hvs.t40-audit-root";

async fn all_records(c: &Client) -> Vec<Value> {
    coffer_tests::procs::audit_records(c, "").await
}

#[tokio::test(flavor = "multi_thread")]
async fn refusals_are_audited_and_audit_records_hold_no_secrets() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::dev(&dir.path().join("node"), ROOT);
    let root = server.client(ROOT);
    let policy = json!({"policy": "path \"secret/data/team/*\" { capabilities = [\"read\"] }"});
    root.request("PUT", "sys/policies/acl/team-reader", Some(&policy))
        .await
        .unwrap();
    let auditor = json!({"policy": "path \"sys/coffer/audit\" { capabilities = [\"read\"] }"});
    root.request("PUT", "sys/policies/acl/auditor", Some(&auditor))
        .await
        .unwrap();
    let password = "pw-that-must-never-be-logged";
    let user = json!({"password": password, "token_policies": ["team-reader"]});
    root.request("POST", "auth/userpass/users/alice", Some(&user))
        .await
        .unwrap();
    let secret_value = "value-that-must-never-be-audited";
    root.request(
        "POST",
        "secret/data/team/db",
        Some(&json!({"data": {"v": secret_value}})),
    )
    .await
    .unwrap();

    let anon = Client::new(&server.addr, Some(&server.ca_pem), None).unwrap();
    let login = anon
        .request(
            "POST",
            "auth/userpass/login/alice",
            Some(&json!({"password": password})),
        )
        .await
        .unwrap();
    let alice_token = login.body["auth"]["client_token"]
        .as_str()
        .unwrap()
        .to_string();
    let alice = server.client(&alice_token);
    alice
        .request("GET", "secret/data/team/db", None)
        .await
        .unwrap();
    assert!(alice
        .request("GET", "secret/data/other", None)
        .await
        .is_err());
    assert!(alice
        .request(
            "POST",
            "secret/data/team/db",
            Some(&json!({"data": {"x": "y"}}))
        )
        .await
        .is_err());
    assert!(
        alice
            .request("GET", "sys/coffer/audit", None)
            .await
            .is_err(),
        "alice is no auditor"
    );

    let carol = json!({"password": "pw2", "token_policies": ["auditor"]});
    root.request("POST", "auth/userpass/users/carol", Some(&carol))
        .await
        .unwrap();
    let login = anon
        .request(
            "POST",
            "auth/userpass/login/carol",
            Some(&json!({"password": "pw2"})),
        )
        .await
        .unwrap();
    let auditor = server.client(login.body["auth"]["client_token"].as_str().unwrap());

    let deadline = Instant::now() + Duration::from_secs(30);
    let denied = loop {
        let resp = auditor
            .request(
                "GET",
                "sys/coffer/audit?actor=userpass-alice&outcome=denied",
                None,
            )
            .await
            .unwrap();
        let records = resp.body["data"]["records"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        if records.len() >= 3 {
            break records;
        }
        assert!(Instant::now() < deadline, "denials not merged: {records:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let paths: Vec<&str> = denied.iter().map(|r| r["path"].as_str().unwrap()).collect();
    assert_eq!(
        paths,
        [
            "secret/data/other",
            "secret/data/team/db",
            "sys/coffer/audit"
        ]
    );
    assert!(denied.iter().all(|r| r["status"] == 403
        && r["accessor_hmac"]
            .as_str()
            .unwrap()
            .starts_with("hmac-sha256:")));

    // Carol logged in after the denials: wait until her login is merged too (the shipper
    // lets a small backlog gather for a moment).
    let is_login = |r: &&Value| r["operation"] == "login" && r["type"] == "response";
    let everything = loop {
        let all = all_records(&auditor).await;
        if all.iter().filter(is_login).count() >= 2 {
            break all;
        }
        assert!(Instant::now() < deadline, "logins not merged: {all:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let dump = serde_json::to_string(&everything).unwrap();
    for secret in [password, secret_value, alice_token.as_str(), ROOT] {
        assert!(!dump.contains(secret), "{secret:?} reached the audit log");
    }
    let logins: Vec<&Value> = everything.iter().filter(is_login).collect();
    assert_eq!(logins.len(), 2);
    let attempts = everything
        .iter()
        .filter(|r| r["operation"] == "login" && r["type"] == "request")
        .count();
    assert_eq!(attempts, 2, "each login is audited before it runs too");
    assert!(logins
        .iter()
        .all(|r| r["auth_method"] == "userpass" && r["outcome"] == "ok"));
    let spool = std::fs::read_to_string(
        dir.path()
            .join("node/audit/spool-00000000000000000001.jsonl"),
    )
    .unwrap();
    for secret in [password, secret_value, alice_token.as_str(), ROOT] {
        assert!(!spool.contains(secret), "{secret:?} reached the spool");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn sigkill_under_32_clients_loses_no_audit_record_and_duplicates_none() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("node");
    let server = Server::dev(&data, ROOT);
    let acked: Arc<Mutex<HashMap<String, String>>> = Arc::default();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut tasks = Vec::new();
    for client_id in 0..32 {
        let c = server.client(ROOT);
        let acked = acked.clone();
        let stop = stop.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0.. {
                if stop.load(std::sync::atomic::Ordering::Relaxed) {
                    break;
                }
                let path = format!("secret/data/crash/{client_id}/{}", i % 5);
                let resp = if i % 2 == 0 {
                    c.request("POST", &path, Some(&json!({"data": {"i": i}})))
                        .await
                } else {
                    c.request("GET", &path, None).await
                };
                match resp {
                    Ok(r) => {
                        if let Some(id) = r.body["request_id"].as_str() {
                            acked.lock().unwrap().insert(id.to_string(), path);
                        }
                    }
                    Err(coffer_api::client::ClientError::Server { .. }) => {}
                    Err(_) => break, // the server is gone
                }
            }
        }));
    }
    // Let the load run until a good number of requests were acknowledged, then kill.
    let deadline = Instant::now() + Duration::from_secs(60);
    while acked.lock().unwrap().len() < 1000 {
        assert!(Instant::now() < deadline, "load too slow");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    server.kill9();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for t in tasks {
        let _ = t.await;
    }
    let acked = acked.lock().unwrap().clone();

    let server = Server::dev(&data, ROOT);
    let c = server.client(ROOT);
    let target = acked.len();
    let deadline = Instant::now() + Duration::from_secs(60);
    let records = loop {
        let records = all_records(&c).await;
        let found = records
            .iter()
            .filter(|r| {
                r["type"] == "response"
                    && r["request_id"]
                        .as_str()
                        .is_some_and(|id| acked.contains_key(id))
            })
            .count();
        if found >= target {
            break records;
        }
        assert!(
            Instant::now() < deadline,
            "only {found} of {target} acknowledged requests audited"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    // Each request has one response record; each write also one request record, made
    // durable before the write took effect.
    let mut seen: HashMap<(&str, &str), usize> = HashMap::new();
    for r in &records {
        let kind = r["type"].as_str().unwrap_or("");
        *seen
            .entry((r["request_id"].as_str().unwrap_or(""), kind))
            .or_default() += 1;
    }
    for id in acked.keys() {
        assert_eq!(
            seen.get(&(id.as_str(), "response")),
            Some(&1),
            "request {id} audited exactly once: {:?}",
            records
                .iter()
                .filter(|r| r["request_id"] == id.as_str())
                .collect::<Vec<_>>()
        );
        let write = records
            .iter()
            .any(|r| r["request_id"] == id.as_str() && r["operation"] == "write");
        if write {
            assert_eq!(
                seen.get(&(id.as_str(), "request")),
                Some(&1),
                "write {id} has its request record"
            );
        }
    }
    let seqs: Vec<u64> = records.iter().map(|r| r["seq"].as_u64().unwrap()).collect();
    assert_eq!(
        seqs,
        (1..=seqs.len() as u64).collect::<Vec<_>>(),
        "merged log has no gap and no duplicate"
    );
    let verify = c
        .request("GET", "sys/coffer/audit/verify", None)
        .await
        .unwrap();
    assert_eq!(verify.body["data"]["ok"], true, "{}", verify.body);
}

#[test]
fn a_flipped_byte_in_the_spool_is_reported_by_audit_verify() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("node");
    let server = Server::dev(&data, ROOT);
    let cli = |server: &Server, args: &[&str]| {
        let (code, out, _) = server.cli(ROOT, args);
        (code, out)
    };
    for i in 0..5 {
        cli(
            &server,
            &["kv", "put", &format!("secret/tamper/{i}"), "k=v"],
        );
    }
    let (code, _) = cli(&server, &["audit", "verify"]);
    assert_eq!(code, 0, "clean chains verify");
    server.kill9();

    let seg = data.join("audit/spool-00000000000000000001.jsonl");
    let mut bytes = std::fs::read(&seg).unwrap();
    let lines: Vec<usize> = bytes
        .iter()
        .enumerate()
        .filter(|(_, b)| **b == b'\n')
        .map(|(i, _)| i)
        .collect();
    let third_start = lines[1] + 1;
    let field = br#""sealed":""#;
    let at = bytes[third_start..]
        .windows(field.len())
        .position(|w| w == field);
    let pos = third_start + at.expect("sealed body on line 3") + field.len() + 60;
    // Another base64 letter: still valid JSON and base64, no longer the sealed body.
    bytes[pos] = if bytes[pos] == b'A' { b'B' } else { b'A' };
    std::fs::write(&seg, bytes).unwrap();

    let server = Server::dev(&data, ROOT);
    let (code, out) = cli(&server, &["audit", "verify"]);
    assert_eq!(code, 2, "{out}");
    assert!(
        out.contains("PROBLEM in spool: node 1 seq 3 tampered"),
        "{out}"
    );
}
