//! The fuzz seed corpus, generated from real formats (`coffer-fuzz --write-seeds`) so that
//! mutations start from inputs the parsers accept: policies, KV metadata, a sealed pack and
//! its contents, a spool segment, a snapshot, peer frames, API requests.

use std::path::Path;

use coffer_raft::transport::PeerRequest;
use coffer_raft::{Command, Txn};

fn write(target: &str, name: &str, bytes: &[u8]) {
    let dir = crate::fuzz::corpus_dir(target);
    std::fs::create_dir_all(&dir).expect("corpus dir");
    std::fs::write(dir.join(name), bytes).expect("seed file");
}

fn text_seeds() {
    write(
        "policy",
        "team.hcl",
        br#"# team
path "secret/data/team/*" { capabilities = ["read", "list"] }
path "secret/data/+/config" { capabilities = ["create", "update"] }
path "secret/data/team/admin" { capabilities = ["deny"] }
/* legacy */ path "sys/*" { policy = "sudo" }
secret/data/team/admin"#,
    );
    write(
        "policy",
        "team.json",
        br#"{"path": {"secret/data/*": {"capabilities": ["read"]}, "auth/token/create": {"policy": "write"}}}
secret/data/x"#,
    );
    let meta = br#"{"created_time":"2026-01-01T00:00:00Z","updated_time":"2026-01-01T00:00:00Z","current_version":3,"oldest_version":1,"max_versions":2,"cas_required":false,"delete_version_after_secs":60,"custom_metadata":{"owner":"ops"},"versions":{"1":{"created_time":"2026-01-01T00:00:00Z","deletion_time":"","destroyed":false},"3":{"created_time":"2026-01-01T00:00:00Z","deletion_time":"2026-01-02T00:00:00Z","destroyed":true}}}"#;
    let mut kv = vec![0, 0, 0, 3, 0, 0, 0, 1, 0, 0, 0, 2, 0, 0, 0, 3];
    kv.extend_from_slice(meta);
    write("kv2", "meta.bin", &kv);
    write(
        "json_body",
        "write.json",
        br#"{"data": {"user": "app", "n": [1, 2.5, null]}, "options": {"cas": 3}}"#,
    );
    write("json_body", "meta.json", meta);
    write(
        "request",
        "kv-write.txt",
        b"POST\n/v1/secret/data/team/db?version=2\nX-Vault-Token: hvs.x\n\n{\"data\": {\"a\": \"b\"}}",
    );
    write(
        "request",
        "list.txt",
        b"GET\n/v1/secret/metadata/team%2Fa/?list=true&stale=1\nAuthorization: Bearer t\n\n",
    );
    write(
        "request",
        "login.txt",
        b"PUT\n/v1/auth/userpass/login/alice\n\n{\"password\": \"pw\"}",
    );
}

fn pack_seeds() {
    let contents = coffer_vault::rules::pack::PackContents {
        pack_id: "00112233445566778899aabbccddeeff".into(),
        cluster_id: "c1".into(),
        cluster_name: "coffer".into(),
        created_at: 1,
        expires_at: u64::MAX,
        node_id: 4,
        voter: true,
        api_addr: "https://127.0.0.14:8200".into(),
        peer_addr: "127.0.0.14:8201".into(),
        ca_cert_pem: "-----BEGIN CERTIFICATE-----\n-----END CERTIFICATE-----\n".into(),
        node_cert_pem: "cert".into(),
        node_key_pem: "key".into(),
        api_cert_pem: "acert".into(),
        api_key_pem: "akey".into(),
        members: vec![coffer_vault::rules::pack::PackMember {
            id: 1,
            api_addr: "https://127.0.0.11:8200".into(),
            peer_addr: "127.0.0.11:8201".into(),
            cert_sha256: "ab".repeat(32),
        }],
        unseal_key_hex: None,
        snapshot: vec![1, 2, 3],
    };
    let sealed = coffer_vault::rules::pack::seal_pack(&contents, "correct horse battery staple")
        .expect("seal a pack");
    write("pack", "sealed.pack", &sealed);
    write(
        "pack",
        "contents.postcard",
        &postcard::to_allocvec(&contents).expect("encode"),
    );
}

async fn engine_seeds(dir: &Path) {
    use coffer_raft::{Engine, EngineConfig, NoPeers, NodeAddr, RaftTuning};
    let engine = Engine::open_single(
        EngineConfig {
            node_id: 1,
            data_dir: dir.join("engine"),
            tuning: RaftTuning::default(),
            storage: Default::default(),
        },
        NoPeers,
        NodeAddr::default(),
        std::time::Duration::from_secs(10),
    )
    .await
    .expect("engine");
    for i in 0..3 {
        engine
            .write(Txn::new().put(format!("kv/secret/meta/k{i}"), vec![i; 8]))
            .await
            .expect("write");
    }
    let snapshot = engine.snapshot_bytes().await.expect("snapshot");
    // The target appends the checksum itself.
    write(
        "snapshot",
        "three-keys.body",
        &snapshot[..snapshot.len() - 32],
    );
    engine.shutdown().await.expect("shutdown");

    let spool = coffer_vault::audit::Spool::open(&dir.join("audit"), 1).expect("spool");
    spool.set_recipient(coffer_vault::audit::SpoolKey::from_bytes([7u8; 32]).public());
    spool.set_mac_key(Some(zeroize::Zeroizing::new([9u8; 32])));
    for i in 0..3 {
        let event = coffer_vault::audit::AuditEvent {
            actor: "alice".into(),
            operation: "read".into(),
            path: format!("secret/data/{i}"),
            ..Default::default()
        };
        spool.append(event).await.expect("append");
    }
    let segment =
        std::fs::read(dir.join("audit/spool-00000000000000000001.jsonl")).expect("segment");
    write("spool", "sealed-maced.jsonl", &segment);

    let frames = [
        PeerRequest::Forward(Txn::new().put("k", "v").delete_prefix("kv/")),
        PeerRequest::ReadIndex,
        PeerRequest::Roster,
        PeerRequest::App(b"{\"Join\":{}}".to_vec()),
    ];
    for (i, frame) in frames.iter().enumerate() {
        write(
            "peer_frame",
            &format!("frame-{i}.postcard"),
            &postcard::to_allocvec(frame).expect("encode"),
        );
    }
    let command = Command::Txn(Txn::new().put("a", "b"));
    write(
        "peer_frame",
        "command.postcard",
        &postcard::to_allocvec(&command).expect("encode"),
    );
}

/// Writes every seed file.
pub fn write_all() {
    text_seeds();
    pack_seeds();
    let dir = tempfile::tempdir().expect("tempdir");
    tokio::runtime::Runtime::new()
        .expect("runtime")
        .block_on(engine_seeds(dir.path()));
    println!(
        "wrote the seed corpus under {}",
        crate::fuzz::corpus_dir("").display()
    );
}
