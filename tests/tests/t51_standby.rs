//! Read-only standby in process, over the real mTLS transport: a learner cut off from its
//! primary, a leader isolated from its quorum, and a voter whose peers are gone each turn
//! read-only within `standby_after` plus one heartbeat, refuse writes at once, and leave the
//! mode by themselves once a leader is back and they have caught up.

use std::time::{Duration, Instant};

use std::sync::Arc;

use coffer_raft::{EngineError, NodeMode, RaftTuning, Txn};
use coffer_tests::harness::Cluster;
use coffer_vault::audit::{AuditEvent, Spool};
use coffer_vault::{AuditFilter, InitRequest, NodeInfo, Vault};

/// Default `standby_after`.
const STANDBY_AFTER: Duration = Duration::from_millis(1000);
/// One heartbeat (the default), plus the mode tick and scheduling on a loaded 2-core machine.
const SLACK: Duration = Duration::from_millis(100 + 150);

/// Node `id` turns read-only within `standby_after` plus slack of `since`.
async fn read_only_within_bound(c: &Cluster, id: u64, since: Instant) {
    read_only_within(c, id, since, STANDBY_AFTER + SLACK).await;
}

async fn read_only_within(c: &Cluster, id: u64, since: Instant, bound: Duration) {
    c.engine(id)
        .wait_mode(Duration::from_secs(10), |m| *m == NodeMode::ReadOnly)
        .await
        .unwrap();
    let took = since.elapsed();
    assert!(took <= bound, "node {id} turned read-only after {took:?}");
}

async fn write_is_refused_at_once(c: &Cluster, id: u64) {
    let started = Instant::now();
    let err = c
        .engine(id)
        .write(Txn::new().put("refused", "x"))
        .await
        .unwrap_err();
    assert!(
        matches!(err, EngineError::ReadOnly { last_contact_ms } if last_contact_ms >= 1000),
        "{err}"
    );
    assert!(err
        .to_string()
        .starts_with("read-only: no quorum — last contact with leader"));
    assert!(
        started.elapsed() < Duration::from_millis(100),
        "never hangs"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_learner_cut_from_its_primary_turns_read_only_and_comes_back() {
    let c = Cluster::start_with_learners(1, 1, RaftTuning::default()).await;
    let (primary, secondary) = (1, 2);
    assert_eq!(c.engine(secondary).mode(), NodeMode::Follower);
    c.cut(primary, secondary);
    let cut = Instant::now();
    read_only_within_bound(&c, secondary, cut).await;
    write_is_refused_at_once(&c, secondary).await;
    assert_eq!(
        c.engine(primary).mode(),
        NodeMode::Leader,
        "losing the secondary costs the primary nothing"
    );
    c.engine(primary)
        .write(Txn::new().put("during-cut", "v"))
        .await
        .unwrap();
    let index = c.engine(primary).applied_index();

    c.heal();
    c.engine(secondary)
        .wait_mode(Duration::from_secs(10), |m| *m == NodeMode::Follower)
        .await
        .unwrap();
    assert!(
        c.engine(secondary).applied_index() >= index,
        "caught up before leaving"
    );
    assert!(c.engine(secondary).get(b"during-cut").unwrap().is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_isolated_leader_stops_writing_and_rejoins_as_follower() {
    let c = Cluster::start(3, RaftTuning::default()).await;
    let all = c.running();
    let old = c.wait_leader(&all, None).await;
    let mut changes = c.engine(old).mode_changes();
    c.isolate(old);
    let isolated = Instant::now();
    read_only_within_bound(&c, old, isolated).await;
    write_is_refused_at_once(&c, old).await;
    // (A Follower -> Leader change may come first: the mode task saw the election late.)
    let change = loop {
        let change = changes.recv().await.unwrap();
        if change.new == NodeMode::ReadOnly {
            break change;
        }
    };
    assert_eq!(
        (change.old, change.new),
        (NodeMode::Leader, NodeMode::ReadOnly)
    );
    assert!(
        change.reason.contains("no quorum acknowledgement"),
        "{}",
        change.reason
    );

    let majority: Vec<u64> = all.iter().copied().filter(|id| *id != old).collect();
    let new = c.wait_leader(&majority, Some(old)).await;
    c.engine(new)
        .write(Txn::new().put("majority", "v"))
        .await
        .unwrap();
    // The majority may pass through standby while it elects (no leader heard from for
    // longer than `standby_after`); with a leader again it leaves by itself.
    for id in &majority {
        c.engine(*id)
            .wait_mode(Duration::from_secs(2), |m| *m != NodeMode::ReadOnly)
            .await
            .unwrap_or_else(|e| panic!("node {id}: {e}"));
    }

    c.heal();
    c.engine(old)
        .wait_mode(Duration::from_secs(10), |m| *m == NodeMode::Follower)
        .await
        .unwrap();
    assert!(c.engine(old).get(b"majority").unwrap().is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_voter_whose_peers_are_gone_turns_read_only() {
    let mut c = Cluster::start(3, RaftTuning::default()).await;
    let all = c.running();
    let leader = c.wait_leader(&all, None).await;
    let survivor = *all.iter().find(|id| **id != leader).unwrap();
    for id in all.iter().filter(|id| **id != survivor) {
        c.stop(*id).await;
    }
    let stopped = Instant::now();
    read_only_within_bound(&c, survivor, stopped).await;
    write_is_refused_at_once(&c, survivor).await;
}

/// A primary (voter) and a secondary (learner), each with its vault, initialized and both
/// unsealed.
struct Pair {
    c: Cluster,
    _dir: tempfile::TempDir,
    primary: Arc<Vault>,
    secondary: Arc<Vault>,
    root_token: String,
}

async fn unsealed_pair() -> Pair {
    let c = Cluster::start_with_learners(1, 1, RaftTuning::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let (primary, secondary) = (vault_on(&c, 1, dir.path()), vault_on(&c, 2, dir.path()));
    let init = InitRequest {
        secret_shares: 1,
        secret_threshold: 1,
        root_token_id: None,
    };
    let (resp, root) = primary.init(init, None).await.unwrap();
    let key = coffer_vault::crypto::Key::from_slice(root.expose()).unwrap();
    primary.unseal_with_root(root).unwrap();
    c.wait_applied(&[2], c.engine(1).applied_index()).await;
    secondary.unseal_with_root(key).unwrap();
    Pair {
        c,
        _dir: dir,
        primary,
        secondary,
        root_token: resp.root_token,
    }
}

fn vault_on(c: &Cluster, id: u64, dir: &std::path::Path) -> Arc<Vault> {
    let spool = Spool::open(&dir.join(format!("audit{id}")), id).unwrap();
    Arc::new(Vault::new(
        c.engine(id).clone(),
        NodeInfo {
            node_id: id,
            api_addr: format!("https://node{id}"),
            cluster_name: "t51".into(),
        },
        Arc::new(spool),
    ))
}

/// The audit side of standby with vaults over the harness's engines: what the cut-off
/// secondary audits is marked read-only in its spool, and merges into the cluster's log
/// exactly once after heal.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn standby_audit_is_marked_read_only_and_merges_once() {
    let Pair {
        c,
        _dir,
        primary,
        secondary,
        root_token,
    } = unsealed_pair().await;
    tokio::spawn(secondary.clone().run_shipper());

    c.cut(1, 2);
    c.engine(2)
        .wait_mode(Duration::from_secs(10), |m| *m == NodeMode::ReadOnly)
        .await
        .unwrap();
    for i in 0..10 {
        let event = AuditEvent {
            actor: "reader".into(),
            operation: "read".into(),
            path: format!("secret/data/{i}"),
            request_id: format!("standby-{i}"),
            ..Default::default()
        };
        let record = secondary.audit(event).await.unwrap();
        assert_eq!(record.event.mode, "read-only");
    }
    c.heal();
    c.engine(2)
        .wait_mode(Duration::from_secs(10), |m| *m == NodeMode::Follower)
        .await
        .unwrap();
    let auth = primary.authenticate(Some(&root_token)).unwrap();
    let filter = AuditFilter {
        node: Some(2),
        mode: Some("read-only".into()),
        operation: Some("read".into()),
        limit: Some(1000),
        ..Default::default()
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    let merged = loop {
        let (records, _) = primary.audit_query(&auth, &filter).unwrap();
        if records.len() >= 10 || Instant::now() > deadline {
            break records;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let ids: std::collections::BTreeSet<&str> = merged
        .iter()
        .map(|r| r.record.event.request_id.as_str())
        .collect();
    assert_eq!(
        (merged.len(), ids.len()),
        (10, 10),
        "each record merged exactly once"
    );
    assert!(primary.audit_verify(&auth).unwrap().ok);
}

/// Someone with disk access to a cut-off standby (which is unsealed) forges a record in its
/// spool — a body sealed to the cluster's public spool key, a hash that fits the chain. The
/// forged record fails its MAC: it is never merged, and `audit verify` names it. (A spool cut
/// short is `vault/tests/audit.rs`.)
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_forged_record_in_a_standby_spool_is_never_merged() {
    let Pair {
        c,
        _dir,
        primary,
        secondary,
        root_token,
    } = unsealed_pair().await;
    let auth = primary.authenticate(Some(&root_token)).unwrap();

    c.cut(1, 2);
    c.engine(2)
        .wait_mode(Duration::from_secs(10), |m| *m == NodeMode::ReadOnly)
        .await
        .unwrap();
    for i in 0..5 {
        let event = AuditEvent {
            actor: "reader".into(),
            operation: "read".into(),
            path: format!("secret/data/{i}"),
            ..Default::default()
        };
        secondary.audit(event).await.unwrap();
    }
    // The forgery: record 3 rewritten to show an innocent path.
    let spool_dir = _dir.path().join("audit2");
    let segment = spool_dir.join("spool-00000000000000000001.jsonl");
    let epoch = std::fs::read_to_string(spool_dir.join("epoch")).unwrap();
    let public: [u8; 32] = c
        .engine(2)
        .get(b"core/audit-spool-pub")
        .unwrap()
        .unwrap()
        .value
        .try_into()
        .unwrap();
    let text = std::fs::read_to_string(&segment).unwrap();
    let forged: Vec<String> = text
        .lines()
        .map(|l| {
            let mut line: serde_json::Value = serde_json::from_str(l).unwrap();
            if line["seq"] == 3 {
                let event = AuditEvent {
                    actor: "reader".into(),
                    operation: "read".into(),
                    path: "secret/data/innocent".into(),
                    ..Default::default()
                };
                let prev = line["prev_hash"].as_str().unwrap().to_string();
                let rec = coffer_vault::audit::chain(2, epoch.trim(), 3, &prev, event.clone());
                let sealer = coffer_vault::audit::sealing::BatchSealer::new(&public);
                line["hash"] = rec.hash.clone().into();
                line["sealed"] = sealer
                    .seal(2, 3, &serde_json::to_vec(&rec.event).unwrap())
                    .into();
                line["mac"] = "00".repeat(32).into();
            }
            line.to_string()
        })
        .collect();
    std::fs::write(&segment, forged.join("\n") + "\n").unwrap();

    c.heal();
    c.engine(2)
        .wait_mode(Duration::from_secs(10), |m| *m == NodeMode::Follower)
        .await
        .unwrap();
    let err = format!("{:?}", secondary.ship_once().await.unwrap_err());
    assert!(err.contains("record 3 fails its MAC"), "{err}");
    let verify = secondary.audit_verify(&auth).unwrap();
    assert!(!verify.ok);
    assert!(
        verify
            .spool
            .problems
            .iter()
            .any(|p| p.seq == 3 && p.detail.contains("fails its MAC")),
        "{:?}",
        verify.spool.problems
    );
    let filter = AuditFilter {
        path_prefix: Some("secret/data/innocent".into()),
        ..Default::default()
    };
    assert!(
        primary.audit_query(&auth, &filter).unwrap().0.is_empty(),
        "the forgery was merged"
    );
}

/// A login on a read-only standby issues a node-local session: an operator lists it on that
/// node and revokes it by accessor, after which it opens nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_operator_lists_and_revokes_a_standbys_sessions() {
    let Pair {
        c,
        _dir,
        primary,
        secondary,
        root_token,
    } = unsealed_pair().await;
    let auth = primary.authenticate(Some(&root_token)).unwrap();
    primary
        .write_user(
            &auth,
            "alice",
            coffer_vault::UserUpdate {
                password: Some(zeroize::Zeroizing::new("pw".into())),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    c.wait_applied(&[2], c.engine(1).applied_index()).await;
    c.cut(1, 2);
    c.engine(2)
        .wait_mode(Duration::from_secs(10), |m| *m == NodeMode::ReadOnly)
        .await
        .unwrap();
    let session = secondary
        .login_userpass("alice", zeroize::Zeroizing::new("pw".into()), "10.0.0.9")
        .await
        .unwrap();
    let operator = secondary.authenticate(Some(&root_token)).unwrap();
    let listed = secondary.list_local_sessions(&operator).unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(
        (listed[0].accessor.as_str(), listed[0].actor()),
        (session.entry.accessor.as_str(), "alice")
    );
    assert!(secondary.authenticate(Some(&session.token)).is_ok());
    assert_eq!(
        secondary
            .revoke_accessor(&operator, &session.entry.accessor)
            .await
            .unwrap(),
        1
    );
    assert!(secondary.authenticate(Some(&session.token)).is_err());
    assert!(secondary.list_local_sessions(&operator).unwrap().is_empty());
    c.heal();
}

/// The quorum is lost but its leader lives on: the leader turns read-only and stops its
/// heartbeats, so its learner, which can get no read confirmed through it, turns read-only
/// standby too and serves reads from its replica. The voters' return brings a leader with a
/// quorum back, and the learner follows it again.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_learner_whose_leader_lost_its_quorum_turns_read_only() {
    let mut c = Cluster::start_with_learners(3, 1, RaftTuning::default()).await;
    let voters = [1, 2, 3];
    let learner = 4;
    let leader = c.wait_leader(&voters, None).await;
    c.engine(leader)
        .write(Txn::new().put("before", "v"))
        .await
        .unwrap();
    let index = c.engine(leader).applied_index();
    c.wait_applied(&[learner], index).await;
    assert_eq!(c.engine(learner).mode(), NodeMode::Follower);
    let others: Vec<u64> = voters.iter().copied().filter(|v| *v != leader).collect();
    for id in &others {
        c.stop(*id).await;
    }
    let lost = Instant::now();
    read_only_within_bound(&c, leader, lost).await;
    // The leader notices after `standby_after`, the learner `standby_after` after its last
    // heartbeat.
    read_only_within(&c, learner, lost, 2 * (STANDBY_AFTER + SLACK)).await;
    write_is_refused_at_once(&c, learner).await;
    let read = c
        .engine(learner)
        .get(b"before")
        .unwrap()
        .expect("served from the replica");
    assert_eq!(read.value, b"v");

    for id in &others {
        c.restart(*id).await;
    }
    // The silent leader may still call itself leader until a vote deposes it: wait for one
    // that leads with a quorum.
    let started = Instant::now();
    let back = loop {
        if let Some(id) = voters
            .iter()
            .copied()
            .find(|id| c.engine(*id).mode() == NodeMode::Leader)
        {
            break id;
        }
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "no leader with a quorum after the voters came back"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    c.engine(back)
        .write(Txn::new().put("after", "v"))
        .await
        .unwrap();
    c.engine(learner)
        .wait_mode(Duration::from_secs(10), |m| *m == NodeMode::Follower)
        .await
        .unwrap();
    let index = c.engine(back).applied_index();
    c.wait_applied(&[learner], index).await;
    assert!(c.engine(learner).get(b"after").unwrap().is_some());
}
