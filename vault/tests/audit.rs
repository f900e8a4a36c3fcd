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
    // More than three batches, so pipelined shippers keep a batch in flight while they
    // prepare the next one, guarded on the cursor the first leaves.
    for i in 0..3500 {
        node.vault.audit(event(i)).await.unwrap();
    }
    let shippers: Vec<_> = (0..4)
        .map(|n| {
            let v = node.vault.clone();
            tokio::spawn(async move {
                for _ in 0..50 {
                    if n % 2 == 0 {
                        v.ship_once().await.unwrap();
                    } else {
                        v.ship_pipelined().await.unwrap();
                    }
                }
            })
        })
        .collect();
    for s in shippers {
        s.await.unwrap();
    }
    ship_all(&node.vault).await;
    assert_eq!(merged(&node), (1..=3500).collect::<Vec<_>>());
    let auth = node.vault.authenticate(Some(&node.root)).unwrap();
    assert!(node.vault.audit_verify(&auth).unwrap().ok);
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

/// Records past the archive age leave the state for segment files, in order and in bounded
/// segments; queries and `audit verify` still read and prove them; shipping goes on after
/// the whole chain was archived; an altered segment is reported where it starts, and one
/// this node does not hold is named (not a break in the chain).
#[tokio::test(flavor = "multi_thread")]
async fn archived_records_leave_the_state_and_stay_provable() {
    let dir = tempfile::tempdir().unwrap();
    let node = open(dir.path(), None).await;
    let spool_many = |from: u64, n: u64| {
        let vault = node.vault.clone();
        async move {
            for chunk in (from..from + n).collect::<Vec<_>>().chunks(100) {
                let writes: Vec<_> = chunk
                    .iter()
                    .map(|i| {
                        let vault = vault.clone();
                        let i = *i;
                        tokio::spawn(async move { vault.audit(event(i)).await })
                    })
                    .collect();
                for w in writes {
                    w.await.unwrap().unwrap();
                }
            }
        }
    };
    spool_many(0, 1000).await;
    ship_all(&node.vault).await;
    // Ten records past a multiple of 300: the last segment of 300 is a small one.
    let extra = (310 - node.vault.audit_cursor(1).unwrap() % 300) % 300;
    spool_many(1000, extra).await;
    ship_all(&node.vault).await;
    let cursor = node.vault.audit_cursor(1).unwrap();
    assert_eq!(cursor % 300, 10);
    let auth = node.vault.authenticate(Some(&node.root)).unwrap();

    // Nothing is older than an hour ago: nothing moves.
    let hour = std::time::Duration::from_secs(3600);
    let round = coffer_vault::ArchiveRound::at(coffer_vault::clock::now(), hour);
    assert_eq!(node.vault.archive_audit(round).await.unwrap(), 0);

    // Everything due, in segments of 300: the last, partial one too only once it is old
    // enough.
    let soon = coffer_vault::clock::now() + std::time::Duration::from_secs(1);
    let round = coffer_vault::ArchiveRound {
        due_before: soon,
        partial_before: soon - hour,
        segment_records: 300,
    };
    let moved = node.vault.archive_audit(round).await.unwrap();
    assert_eq!(moved, cursor - 10, "whole segments only");
    let round = coffer_vault::ArchiveRound {
        partial_before: soon,
        ..round
    };
    let moved = moved + node.vault.archive_audit(round).await.unwrap();
    assert_eq!(moved, cursor, "every merged record was due");
    assert!(
        node.engine
            .scan(b"audit/log/", None, 10)
            .unwrap()
            .is_empty(),
        "the state holds no archived record"
    );
    let segments = cursor.div_ceil(300) as usize;
    assert_eq!(node.engine.archive().list().len(), segments);
    let report = node.vault.audit_verify(&auth).unwrap();
    assert!(report.ok, "{report:?}");
    let epoch = &report.merged[0];
    assert_eq!(
        (
            epoch.records,
            epoch.archived_through,
            epoch.archive_segments.len()
        ),
        (cursor, cursor, segments)
    );
    assert_eq!(merged(&node), (1..=cursor).collect::<Vec<_>>());

    // Shipping continues from the archived chain's end; a small page size walks archive and
    // state in order without repeating or skipping.
    spool_many(5000, 50).await;
    ship_all(&node.vault).await;
    let total = node.vault.audit_cursor(1).unwrap();
    assert!(total >= cursor + 50);
    let mut paged = Vec::new();
    let mut after = None;
    loop {
        let filter = AuditFilter {
            node: Some(1),
            limit: Some(7),
            after,
            ..Default::default()
        };
        let page = node.vault.audit_page(&auth, &filter).unwrap();
        paged.extend(page.records.iter().map(|r| r.record.seq));
        match page.next {
            Some(next) => after = Some(next),
            None => break,
        }
    }
    assert_eq!(paged, (1..=total).collect::<Vec<_>>());
    assert!(node.vault.audit_verify(&auth).unwrap().ok);

    // One bit of the second segment flipped, as a disk or an attacker would.
    let second = node.vault.audit_verify(&auth).unwrap().merged[0].archive_segments[1].clone();
    let path = dir
        .path()
        .join("archive")
        .join(format!("{}.seg", second.digest));
    let original = std::fs::read(&path).unwrap();
    let mut altered = original.clone();
    let mid = altered.len() / 2;
    altered[mid] ^= 0x01;
    std::fs::write(&path, &altered).unwrap();
    let report = node.vault.audit_verify(&auth).unwrap();
    assert!(!report.ok);
    let problems = &report.merged[0].problems;
    assert_eq!(
        (problems[0].seq, problems[0].kind.as_str()),
        (second.first, "tampered"),
        "{problems:?}"
    );
    assert!(
        problems[0].detail.contains("does not match its digest"),
        "{problems:?}"
    );
    let all = AuditFilter {
        node: Some(1),
        limit: Some(10_000),
        ..Default::default()
    };
    let page = node.vault.audit_page(&auth, &all).unwrap();
    assert_eq!(page.unavailable.len(), 1);
    assert_eq!(
        (page.unavailable[0].from, page.unavailable[0].to),
        (second.first, second.last)
    );
    assert_eq!(
        page.records.len() as u64,
        total - (second.last - second.first + 1)
    );

    // Deleted instead: this node wrote it, so its absence is a problem, at its first record;
    // the chain is checked on both sides of it.
    std::fs::remove_file(&path).unwrap();
    let report = node.vault.audit_verify(&auth).unwrap();
    assert!(!report.ok);
    let problems = &report.merged[0].problems;
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert_eq!(
        (problems[0].seq, problems[0].kind.as_str()),
        (second.first, "deleted")
    );
    std::fs::write(&path, &original).unwrap();
    let report = node.vault.audit_verify(&auth).unwrap();
    assert!(report.ok, "{report:?}");
    assert!(report.merged[0].archive_missing.is_empty());
}

/// Two nodes' records, one node's mostly in the state (more than a scan chunk), the other's
/// archived: a query returns them in (node, seq) order, whole, in one page or many.
#[tokio::test(flavor = "multi_thread")]
async fn archived_and_live_records_of_several_nodes_page_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let node = open(dir.path(), None).await;
    let key = hex::decode(std::fs::read_to_string(dir.path().join("root.key")).unwrap()).unwrap();
    let spool2 = coffer_vault::audit::Spool::open(&dir.path().join("audit2"), 2).unwrap();
    let second = Vault::new(
        node.engine.clone(),
        coffer_vault::NodeInfo {
            node_id: 2,
            api_addr: "https://127.0.0.1:3".into(),
            cluster_name: "test".into(),
        },
        Arc::new(spool2),
    );
    second
        .unseal_with_root(coffer_vault::crypto::Key::from_slice(&key).unwrap())
        .unwrap();
    let spool = |vault: Arc<Vault>, n: u64| async move {
        let writes: Vec<_> = (0..n)
            .map(|i| {
                let vault = vault.clone();
                tokio::spawn(async move { vault.audit(event(i)).await })
            })
            .collect();
        for w in writes {
            w.await.unwrap().unwrap();
        }
    };
    let second = Arc::new(second);
    spool(second.clone(), 300).await;
    ship_all(&second).await;
    let split = coffer_vault::clock::now();
    while coffer_vault::clock::now() <= split {
        tokio::task::yield_now().await;
    }
    spool(node.vault.clone(), 1500).await;
    ship_all(&node.vault).await;
    let round = coffer_vault::ArchiveRound {
        due_before: split,
        partial_before: split,
        segment_records: 100,
    };
    let moved = node.vault.archive_audit(round).await.unwrap();
    let (one, two) = (
        node.vault.audit_cursor(1).unwrap(),
        second.audit_cursor(2).unwrap(),
    );
    assert!(moved >= two && one >= 1500, "{moved} {one} {two}");
    let expected: Vec<(u64, u64)> = (1..=one)
        .map(|s| (1, s))
        .chain((1..=two).map(|s| (2, s)))
        .collect();
    let auth = node.vault.authenticate(Some(&node.root)).unwrap();
    for limit in [10_000, 333] {
        let mut got = Vec::new();
        let mut after = None;
        loop {
            let filter = AuditFilter {
                limit: Some(limit),
                after,
                ..Default::default()
            };
            let page = node.vault.audit_page(&auth, &filter).unwrap();
            assert!(page.unavailable.is_empty());
            got.extend(page.records.iter().map(|r| (r.record.node, r.record.seq)));
            match page.next {
                Some(next) => after = Some(next),
                None => break,
            }
        }
        assert_eq!(got.len(), expected.len(), "limit {limit}");
        assert!(got == expected, "limit {limit}: out of order or incomplete");
    }
}
