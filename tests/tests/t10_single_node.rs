//! One real `coffer server --dev` process over real TLS: durability across SIGKILL, reopening
//! the same data directory, and secret values absent from disk and logs.

use std::time::Duration;

use coffer_raft::{Engine, EngineConfig, NoPeers, NodeAddr, RaftTuning};
use coffer_tests::{files_containing, random_string, Server};
use serde_json::json;

const TOKEN: &str = "hvs.t10-root-token";

#[tokio::test(flavor = "multi_thread")]
async fn acknowledged_writes_survive_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("node");
    let server = Server::dev(&data, TOKEN);
    let client = server.client(TOKEN);
    for i in 0..50 {
        let body = json!({"data": {"n": i}});
        client
            .request("POST", &format!("secret/data/durable/{i}"), Some(&body))
            .await
            .unwrap();
    }
    // Killed right after the last acknowledgement: nothing may be lost.
    server.kill9();

    let server = Server::dev(&data, TOKEN);
    assert!(
        server.stdout.iter().any(|l| l.contains(TOKEN)),
        "the reopened dev server prints the same root token: {:?}",
        server.stdout
    );
    let client = server.client(TOKEN);
    for i in 0..50 {
        let resp = client
            .request("GET", &format!("secret/data/durable/{i}"), None)
            .await
            .unwrap();
        assert_eq!(
            resp.body["data"]["data"]["n"], i,
            "secret {i} after SIGKILL"
        );
    }
    let list = client
        .request("LIST", "secret/metadata/durable", None)
        .await
        .unwrap();
    assert_eq!(list.body["data"]["keys"].as_array().unwrap().len(), 50);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_secret_value_never_reaches_the_disk_or_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("node");
    let secret = format!("s3cr3t-{}", random_string(40));
    let server = Server::dev(&data, TOKEN);
    let client = server.client(TOKEN);
    let body = json!({"data": {"password": secret}});
    client
        .request("POST", "secret/data/grep/me", Some(&body))
        .await
        .unwrap();
    let read = client
        .request("GET", "secret/data/grep/me", None)
        .await
        .unwrap();
    assert_eq!(read.body["data"]["data"]["password"], secret.as_str());
    let log = server.log();
    server.kill9();
    assert!(!log.contains(&secret), "secret in the server log");
    assert_eq!(
        files_containing(&data, secret.as_bytes()),
        Vec::<std::path::PathBuf>::new()
    );

    // Force a snapshot and a full compaction on the same data, then look again.
    {
        let engine = Engine::open_single(
            EngineConfig {
                node_id: 1,
                data_dir: data.clone(),
                tuning: RaftTuning::default(),
                storage: Default::default(),
            },
            NoPeers,
            NodeAddr {
                api_addr: "https://127.0.0.1:1".into(),
                peer_addr: "127.0.0.1:2".into(),
                cert_sha256: String::new(),
            },
            Duration::from_secs(10),
        )
        .await
        .unwrap();
        engine.snapshot_now().await.unwrap();
        engine.compact();
        engine.shutdown().await.unwrap();
    }
    assert!(
        data.join("snapshots/current.snap").exists(),
        "a snapshot was written"
    );
    assert_eq!(
        files_containing(&data, secret.as_bytes()),
        Vec::<std::path::PathBuf>::new()
    );

    // And the data is still there, readable only through the unsealed vault.
    let server = Server::dev(&data, TOKEN);
    let read = server
        .client(TOKEN)
        .request("GET", "secret/data/grep/me", None)
        .await
        .unwrap();
    assert_eq!(read.body["data"]["data"]["password"], secret.as_str());
    assert!(!server.log().contains(&secret));
    let ca_key = data.join("tls/ca-key.pem");
    assert!(!ca_key.exists(), "the CA key leaves the disk at init");
}
