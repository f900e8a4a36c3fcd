//! Audit over a real engine: spool → merged log exactly once across restarts and racing
//! shippers, and tampering detected with its position.

mod common;

use std::sync::Arc;

use coffer_raft::Txn;
use coffer_vault::audit::AuditEvent;
use coffer_vault::{AuditFilter, InitRequest, Vault};

struct Node {
    vault: Arc<Vault>,
    engine: coffer_raft::Engine,
    root: String,
}

async fn open(dir: &std::path::Path, init: Option<&str>) -> Node {
    let (vault, engine) = common::vault_and_engine(dir).await;
    let vault = Arc::new(vault);
    let root = match init {
        Some(token) => token.to_string(),
        None => {
            let req = InitRequest {
                secret_shares: 1,
                secret_threshold: 1,
                root_token_id: Some("hvs.audit-root".into()),
            };
            let (_, key) = vault.init(req, None).await.unwrap();
            std::fs::write(dir.join("root.key"), hex::encode(key.expose())).unwrap();
            "hvs.audit-root".into()
        }
    };
    let key = hex::decode(std::fs::read_to_string(dir.join("root.key")).unwrap()).unwrap();
    vault
        .unseal_with_root(coffer_vault::crypto::Key::from_slice(&key).unwrap())
        .unwrap();
    Node {
        vault,
        engine,
        root,
    }
}

fn event(i: u64) -> AuditEvent {
    AuditEvent {
        actor: "tester".into(),
        operation: "read".into(),
        path: format!("secret/data/{i}"),
        outcome: "ok".into(),
        status: 200,
        ..Default::default()
    }
}

async fn ship_all(v: &Vault) {
    while v.ship_once().await.unwrap() > 0 {}
}

fn merged(node: &Node) -> Vec<u64> {
    let auth = node.vault.authenticate(Some(&node.root)).unwrap();
    let filter = AuditFilter {
        node: Some(1),
        limit: Some(10_000),
        ..Default::default()
    };
    let (records, _) = node.vault.audit_query(&auth, &filter).unwrap();
    records.iter().map(|r| r.record.seq).collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn records_merge_exactly_once_across_restarts() {
    let dir = tempfile::tempdir().unwrap();
    {
        // Spooled but never shipped when the node "crashes".
        let node = open(dir.path(), None).await;
        for i in 0..300 {
            node.vault.audit(event(i)).await.unwrap();
        }
        node.vault.shutdown().await.unwrap();
    }
    {
        let node = open(dir.path(), Some("hvs.audit-root")).await;
        assert_eq!(node.vault.spool().last_seq(), 300);
        ship_all(&node.vault).await;
        assert_eq!(node.vault.audit_cursor(1).unwrap(), 300);
        // "Crash" after the commit: the spool still holds the records; shipping again must
        // resume from the cluster's cursor, not resend.
        node.vault.shutdown().await.unwrap();
    }
    let node = open(dir.path(), Some("hvs.audit-root")).await;
    ship_all(&node.vault).await;
    for i in 300..310 {
        node.vault.audit(event(i)).await.unwrap();
    }
    ship_all(&node.vault).await;
    assert_eq!(
        merged(&node),
        (1..=310).collect::<Vec<_>>(),
        "no gap, no duplicate"
    );
    let auth = node.vault.authenticate(Some(&node.root)).unwrap();
    let report = node.vault.audit_verify(&auth).unwrap();
    assert!(report.ok, "{report:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn racing_shippers_never_duplicate() {
    let dir = tempfile::tempdir().unwrap();
    let node = open(dir.path(), None).await;
    for i in 0..1000 {
        node.vault.audit(event(i)).await.unwrap();
    }
    let shippers: Vec<_> = (0..4)
        .map(|_| {
            let v = node.vault.clone();
            tokio::spawn(async move {
                for _ in 0..50 {
                    v.ship_once().await.unwrap();
                }
            })
        })
        .collect();
    for s in shippers {
        s.await.unwrap();
    }
    ship_all(&node.vault).await;
    assert_eq!(merged(&node), (1..=1000).collect::<Vec<_>>());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_tampered_merged_record_is_reported_with_its_position() {
    let dir = tempfile::tempdir().unwrap();
    let node = open(dir.path(), None).await;
    for i in 0..20 {
        node.vault.audit(event(i)).await.unwrap();
    }
    ship_all(&node.vault).await;
    // Flip one bit of record 7's stored ciphertext, as a disk or an attacker would.
    let key = format!("audit/log/{:020}/{:010}/{:020}", 1, 1, 7).into_bytes();
    let engine = &node.engine;
    let mut value = engine.get(&key).unwrap().unwrap().value;
    let last = value.len() - 1;
    value[last / 2] ^= 0x01;
    engine.write(Txn::new().put(key, value)).await.unwrap();

    let auth = node.vault.authenticate(Some(&node.root)).unwrap();
    let report = node.vault.audit_verify(&auth).unwrap();
    assert!(!report.ok);
    let problems = &report.merged[0].problems;
    assert_eq!(
        (problems[0].seq, problems[0].kind.as_str()),
        (7, "tampered"),
        "{problems:?}"
    );
}

/// A spool cut short below what the cluster anchored (someone deleted records from disk
/// while the node was down) stops the shipper and is reported by `audit verify`; a spool
/// started afresh for the same node id (a node removed and joined again) is a new epoch,
/// merged from its first record, not a fork.
#[tokio::test(flavor = "multi_thread")]
async fn a_cut_spool_is_reported_and_a_fresh_spool_is_a_new_epoch() {
    let dir = tempfile::tempdir().unwrap();
    {
        let node = open(dir.path(), None).await;
        for i in 0..40 {
            node.vault.audit(event(i)).await.unwrap();
        }
        ship_all(&node.vault).await;
        node.vault.shutdown().await.unwrap();
    }
    // Cut the last 10 records off the spool, as someone with disk access would.
    let segment = dir.path().join("audit/spool-00000000000000000001.jsonl");
    let text = std::fs::read_to_string(&segment).unwrap();
    let kept: Vec<&str> = text.lines().take(30).collect();
    std::fs::write(&segment, kept.join("\n") + "\n").unwrap();
    {
        let node = open(dir.path(), Some("hvs.audit-root")).await;
        let err = format!("{:?}", node.vault.ship_once().await.unwrap_err());
        assert!(err.contains("the spool was cut short"), "{err}");
        let auth = node.vault.authenticate(Some(&node.root)).unwrap();
        let report = node.vault.audit_verify(&auth).unwrap();
        assert!(!report.ok);
        assert!(
            report
                .spool
                .problems
                .iter()
                .any(|p| p.kind == "truncated" && p.seq == 40),
            "{:?}",
            report.spool.problems
        );
        node.vault.shutdown().await.unwrap();
    }
    // The node's spool is gone entirely (a new machine under the same node id): a new
    // epoch, merged from record 1.
    std::fs::remove_dir_all(dir.path().join("audit")).unwrap();
    let node = open(dir.path(), Some("hvs.audit-root")).await;
    for i in 0..5 {
        node.vault.audit(event(i)).await.unwrap();
    }
    ship_all(&node.vault).await;
    let auth = node.vault.authenticate(Some(&node.root)).unwrap();
    let report = node.vault.audit_verify(&auth).unwrap();
    assert!(report.ok, "{report:?}");
    let epochs: Vec<(u32, u64)> = report
        .merged
        .iter()
        .filter(|m| m.node == 1)
        .map(|m| (m.epoch, m.cursor))
        .collect();
    assert_eq!(epochs, [(1, 40), (2, 5)]);
    assert_eq!(merged(&node).len(), 45, "both epochs, nothing twice");
}

/// Records the cluster anchored but had not merged yet are held to their anchored hash: a
/// spool rewritten there (by someone who stopped the node) stops the shipper; and a spool
/// lost with anchored records still unmerged is reported when the node starts afresh.
#[tokio::test(flavor = "multi_thread")]
async fn anchored_records_cannot_be_rewritten_or_lost_quietly() {
    use coffer_vault::SHIP_BATCH;
    // One batch and 44 records more; one of those is rewritten.
    const HEAD: u64 = SHIP_BATCH as u64 + 44;
    const REWRITTEN: u64 = SHIP_BATCH as u64 + 24;
    let dir = tempfile::tempdir().unwrap();
    {
        let node = open(dir.path(), None).await;
        for i in 0..HEAD {
            node.vault.audit(event(i)).await.unwrap();
        }
        // One batch: records 1..=SHIP_BATCH merged, the head anchored.
        assert_eq!(node.vault.ship_once().await.unwrap(), SHIP_BATCH);
        node.vault.shutdown().await.unwrap();
    }
    // Record REWRITTEN (anchored, not merged) rewritten (its MAC dropped, as if written while sealed), the rest re-chained.
    let segment = dir.path().join("audit/spool-00000000000000000001.jsonl");
    let text = std::fs::read_to_string(&segment).unwrap();
    let lines: Vec<String> = text
        .lines()
        .map(|l| {
            let mut line: serde_json::Value = serde_json::from_str(l).unwrap();
            if line["seq"] == REWRITTEN {
                line["hash"] = "f".repeat(64).into();
                line.as_object_mut().unwrap().remove("mac");
            }
            line.to_string()
        })
        .collect();
    std::fs::write(&segment, lines.join("\n") + "\n").unwrap();
    {
        let node = open(dir.path(), Some("hvs.audit-root")).await;
        let err = format!("{:?}", node.vault.ship_once().await.unwrap_err());
        assert!(
            err.contains(&format!(
                "record {REWRITTEN} does not continue the merged chain"
            )),
            "{err}"
        );
        node.vault.shutdown().await.unwrap();
    }
    // The spool is gone: records SHIP_BATCH+1..=HEAD were anchored, never merged.
    std::fs::remove_dir_all(dir.path().join("audit")).unwrap();
    let node = open(dir.path(), Some("hvs.audit-root")).await;
    node.vault.audit(event(1)).await.unwrap();
    ship_all(&node.vault).await;
    let auth = node.vault.authenticate(Some(&node.root)).unwrap();
    let report = node.vault.audit_verify(&auth).unwrap();
    assert!(!report.ok);
    let lost = &report.merged[0];
    assert_eq!(
        (lost.epoch, lost.cursor, lost.anchored),
        (1, SHIP_BATCH as u64, HEAD)
    );
    assert!(
        lost.problems.iter().any(|p| p.kind == "truncated"
            && p.seq == SHIP_BATCH as u64 + 1
            && p.detail.contains("lost")),
        "{:?}",
        lost.problems
    );
}
