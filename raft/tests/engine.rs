//! A one-voter engine on a real data directory: transactions, prefix scans, restart, snapshots.

use std::time::Duration;

use coffer_raft::{Check, Engine, EngineConfig, NoPeers, NodeAddr, RaftTuning, Txn};

async fn open(dir: &std::path::Path) -> Engine {
    let engine = Engine::open(
        EngineConfig {
            node_id: 1,
            data_dir: dir.to_path_buf(),
            tuning: RaftTuning::default(),
            storage: Default::default(),
        },
        NoPeers,
    )
    .await
    .expect("open engine");
    engine
        .initialize_single(NodeAddr {
            api_addr: "https://127.0.0.1:1".into(),
            peer_addr: "127.0.0.1:2".into(),
            cert_sha256: String::new(),
        })
        .await
        .expect("initialize");
    engine
        .wait_leader(Duration::from_secs(10))
        .await
        .expect("leader");
    engine
}

#[tokio::test]
async fn transactions_guard_and_apply_atomically() {
    let dir = tempfile::tempdir().unwrap();
    let engine = open(dir.path()).await;
    let r1 = engine
        .write(
            Txn::new()
                .when("a", Check::Absent)
                .put("a", "1")
                .put("b", "2"),
        )
        .await
        .unwrap();
    assert!(r1.succeeded);
    let a = engine.get(b"a").unwrap().unwrap();
    assert_eq!(
        (a.value.as_slice(), a.mod_revision, a.create_revision),
        (b"1".as_slice(), r1.revision, r1.revision)
    );

    // A stale guard fails and writes nothing, not even the unguarded op.
    let r2 = engine
        .write(Txn::new().when("a", Check::Absent).put("c", "3"))
        .await
        .unwrap();
    assert!(!r2.succeeded);
    assert_eq!(r2.failed_compare, Some(0));
    assert!(engine.get(b"c").unwrap().is_none());

    let r3 = engine
        .write(
            Txn::new()
                .when("a", Check::Revision(a.mod_revision))
                .put("a", "x"),
        )
        .await
        .unwrap();
    assert!(r3.succeeded);
    let a2 = engine.get(b"a").unwrap().unwrap();
    assert_eq!(
        a2.create_revision, a.create_revision,
        "create revision survives updates"
    );
    assert!(a2.mod_revision > a.mod_revision);
}

#[tokio::test]
async fn prefix_scan_and_prefix_delete() {
    let dir = tempfile::tempdir().unwrap();
    let engine = open(dir.path()).await;
    let txn = ["p/1", "p/2", "p/3", "q/1"]
        .iter()
        .fold(Txn::new(), |t, k| t.put(*k, "v"));
    engine.write(txn).await.unwrap();
    let keys = |rows: Vec<(Vec<u8>, coffer_raft::KvEntry)>| {
        rows.into_iter()
            .map(|(k, _)| String::from_utf8(k).unwrap())
            .collect::<Vec<_>>()
    };
    assert_eq!(
        keys(engine.scan(b"p/", None, 10).unwrap()),
        ["p/1", "p/2", "p/3"]
    );
    assert_eq!(keys(engine.scan(b"p/", Some(b"p/1"), 1).unwrap()), ["p/2"]);
    engine.write(Txn::new().delete_prefix("p/")).await.unwrap();
    assert_eq!(keys(engine.scan(b"", None, 10).unwrap()), ["q/1"]);
    assert!(
        engine.write(Txn::new().delete_prefix("")).await.is_err(),
        "empty prefix is refused"
    );
}

#[tokio::test]
async fn restart_keeps_everything_and_snapshots_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let applied_before;
    {
        let engine = open(dir.path()).await;
        for i in 0..50 {
            engine
                .write(Txn::new().put(format!("k/{i:03}"), format!("v{i}")))
                .await
                .unwrap();
        }
        engine.snapshot_now().await.unwrap();
        engine
            .write(Txn::new().put("after-snapshot", "yes"))
            .await
            .unwrap();
        applied_before = engine.applied_index();
        engine.shutdown().await.unwrap();
    }
    {
        // Before any election: the applied index is the one on disk (a restarted standby
        // reports it, and a restore waits on it).
        let engine = Engine::open(
            EngineConfig {
                node_id: 1,
                data_dir: dir.path().to_path_buf(),
                tuning: RaftTuning::default(),
                storage: Default::default(),
            },
            NoPeers,
        )
        .await
        .unwrap();
        assert_eq!(engine.applied_index(), applied_before);
        engine.shutdown().await.unwrap();
    }
    let engine = open(dir.path()).await;
    assert_eq!(engine.scan(b"k/", None, 100).unwrap().len(), 50);
    assert_eq!(
        engine.get(b"after-snapshot").unwrap().unwrap().value,
        b"yes"
    );
    let before = engine.get(b"k/000").unwrap().unwrap().mod_revision;
    let r = engine.write(Txn::new().put("k/000", "new")).await.unwrap();
    assert!(
        r.revision > before,
        "revisions keep increasing after restart"
    );
}

/// A replace swaps in what was staged, keeps what it is told to keep, and applies the ops
/// after it on the result; a failed guard replaces nothing; the result survives a restart
/// and a snapshot, and no staging is left behind.
#[tokio::test]
async fn a_replace_swaps_the_whole_state_and_keeps_what_it_is_told() {
    use coffer_raft::{Op, STAGING_PREFIX};
    let dir = tempfile::tempdir().unwrap();
    let engine = open(dir.path()).await;
    for i in 0..300 {
        engine
            .write(Txn::new().put(format!("data/{i:04}"), format!("old{i}")))
            .await
            .unwrap();
    }
    engine
        .write(
            Txn::new()
                .put("audit/1", "kept")
                .put("core/keyring", "ring"),
        )
        .await
        .unwrap();
    let mut area = STAGING_PREFIX.to_vec();
    area.extend_from_slice(b"r1/");
    let staged = |key: &str| [area.as_slice(), key.as_bytes()].concat();
    // The new state: fewer records, one changed, one new, and one under a kept prefix
    // (which must not override the live one).
    let mut txn = Txn::new();
    for i in 0..100 {
        txn = txn.put(staged(&format!("data/{i:04}")), format!("new{i}"));
    }
    txn = txn
        .put(staged("other/x"), "fresh")
        .put(staged("audit/1"), "from the backup");
    engine.write(txn).await.unwrap();
    // Leftovers of another, abandoned staging are swept too.
    let mut stale = STAGING_PREFIX.to_vec();
    stale.extend_from_slice(b"abandoned/data/1");
    engine.write(Txn::new().put(stale, "junk")).await.unwrap();
    let before = engine.get(b"data/0000").unwrap().unwrap().mod_revision;

    let replace = |guard: Check| {
        Txn {
            compares: Vec::new(),
            ops: vec![Op::Replace {
                staged: area.clone(),
                keep: vec![b"audit/".to_vec(), b"core/keyring".to_vec()],
            }],
        }
        .when("core/keyring", guard)
        .put("marker", "after")
    };

    // A guard that fails: nothing changes.
    let r = engine.write(replace(Check::Absent)).await.unwrap();
    assert!(!r.succeeded);
    assert_eq!(engine.get(b"data/0299").unwrap().unwrap().value, b"old299");

    let r = engine
        .write(replace(Check::ValueHash(coffer_raft::value_hash(b"ring"))))
        .await
        .unwrap();
    assert!(r.succeeded);
    assert!(r.revision > before);
    let check = |engine: &Engine| {
        let data = engine.scan(b"data/", None, 1000).unwrap();
        assert_eq!(data.len(), 100, "only the staged records remain");
        assert_eq!(data[7].1.value, b"new7");
        assert!(data
            .iter()
            .all(|(_, e)| e.mod_revision == r.revision && e.create_revision == r.revision));
        assert_eq!(engine.get(b"other/x").unwrap().unwrap().value, b"fresh");
        assert_eq!(engine.get(b"audit/1").unwrap().unwrap().value, b"kept");
        assert_eq!(engine.get(b"core/keyring").unwrap().unwrap().value, b"ring");
        assert_eq!(engine.get(b"marker").unwrap().unwrap().value, b"after");
        assert!(
            engine.scan(STAGING_PREFIX, None, 10).unwrap().is_empty(),
            "no staging is left behind"
        );
    };
    check(&engine);
    assert_eq!(engine.state_generation(), 1);
    engine.snapshot_now().await.unwrap();
    engine.shutdown().await.unwrap();
    drop(engine);
    let engine = open(dir.path()).await;
    check(&engine);
    let next = engine
        .write(Txn::new().put("data/0000", "x"))
        .await
        .unwrap();
    assert!(next.revision > r.revision, "revisions keep rising");
}

/// A replace must be a transaction's first op, over a staging area of its own, keeping
/// prefixes outside it: anything else is refused before it reaches the log.
#[tokio::test]
async fn malformed_replaces_are_refused() {
    use coffer_raft::{Op, STAGING_PREFIX};
    let dir = tempfile::tempdir().unwrap();
    let engine = open(dir.path()).await;
    let area = [STAGING_PREFIX, b"r/"].concat();
    let replace = |staged: Vec<u8>, keep: Vec<Vec<u8>>| Op::Replace { staged, keep };
    let cases = [
        vec![
            Op::Delete { key: b"a".to_vec() },
            replace(area.clone(), vec![]),
        ],
        vec![replace(b"data/".to_vec(), vec![])],
        vec![replace(STAGING_PREFIX.to_vec(), vec![])],
        vec![replace(area.clone(), vec![Vec::new()])],
        vec![replace(area.clone(), vec![STAGING_PREFIX.to_vec()])],
    ];
    for ops in cases {
        let txn = Txn {
            compares: Vec::new(),
            ops,
        };
        let err = engine.write(txn.clone()).await.unwrap_err();
        assert!(
            err.to_string().contains("replace"),
            "{txn:?} refused with {err}"
        );
    }
}

/// An archive moves exactly the range its digest names into a segment file and deletes the
/// keys; a stale digest moves nothing; the segment and the deletion survive a snapshot and
/// a restart; malformed archives are refused before the log.
#[tokio::test]
async fn an_archive_moves_a_range_to_a_segment_only_when_its_digest_holds() {
    use coffer_raft::{range_digest, Op};
    let dir = tempfile::tempdir().unwrap();
    let engine = open(dir.path()).await;
    let txn = (1..=10).fold(Txn::new().put("other", "o"), |t, i| {
        t.put(format!("k/{i:03}"), format!("value {i}"))
    });
    engine.write(txn).await.unwrap();
    let range = |engine: &Engine| {
        engine
            .scan(b"k/", Some(b"k/002"), 5)
            .unwrap()
            .into_iter()
            .collect::<Vec<_>>()
    };
    let moving = range(&engine);
    assert_eq!(moving.len(), 5, "k/003..=k/007");
    let digest = range_digest(&moving);
    let archive = |digest| Txn::archive("k/003", "k/007", digest).put("anchor", "through 7");

    // A digest of something else: nothing moves, no file, not even the anchor.
    let stale = engine.write(archive([9; 32])).await.unwrap();
    assert_eq!((stale.succeeded, stale.failed_compare), (false, Some(0)));
    assert_eq!(engine.scan(b"k/", None, 100).unwrap().len(), 10);
    assert!(engine.get(b"anchor").unwrap().is_none());
    assert!(engine.archive().list().is_empty());

    assert!(engine.write(archive(digest)).await.unwrap().succeeded);
    let left: Vec<String> = engine
        .scan(b"k/", None, 100)
        .unwrap()
        .into_iter()
        .map(|(k, _)| String::from_utf8(k).unwrap())
        .collect();
    assert_eq!(left, ["k/001", "k/002", "k/008", "k/009", "k/010"]);
    assert_eq!(engine.get(b"anchor").unwrap().unwrap().value, b"through 7");
    let expect: Vec<(Vec<u8>, Vec<u8>)> = moving
        .iter()
        .map(|(k, e)| (k.clone(), e.value.clone()))
        .collect();
    assert_eq!(engine.archive().list(), vec![digest]);
    assert_eq!(engine.archive().read(&digest).unwrap().unwrap(), expect);
    // Applied again (the same digest over a range now empty) it cannot hold.
    assert!(!engine.write(archive(digest)).await.unwrap().succeeded);

    engine.snapshot_now().await.unwrap();
    engine.shutdown().await.unwrap();
    drop(engine);
    let engine = open(dir.path()).await;
    assert_eq!(engine.scan(b"k/", None, 100).unwrap().len(), 5);
    assert_eq!(engine.archive().read(&digest).unwrap().unwrap(), expect);

    // Refused before the log, with the reason.
    let unguarded = Txn {
        compares: Vec::new(),
        ops: vec![Op::Archive {
            from: b"k/008".to_vec(),
            to: b"k/010".to_vec(),
        }],
    };
    let late = Txn {
        compares: Vec::new(),
        ops: vec![
            Op::Delete { key: b"x".to_vec() },
            Op::Archive {
                from: b"k/008".to_vec(),
                to: b"k/010".to_vec(),
            },
        ],
    }
    .when(
        "k/008",
        Check::RangeDigest {
            to: b"k/010".to_vec(),
            digest,
        },
    );
    for (txn, why) in [
        (
            unguarded,
            "an archive needs a range-digest guard on the same range",
        ),
        (late, "an archive must be the first op"),
    ] {
        let err = engine.write(txn).await.unwrap_err().to_string();
        assert!(err.contains(why), "{err}");
    }
    assert_eq!(engine.scan(b"k/", None, 100).unwrap().len(), 5);
}
