//! A restore abandoned mid-upload (its node crashed) leaves a staging area that the
//! leader's sweep removes once it is old, and a recent one it leaves alone.

mod common;

use std::time::Duration;

use coffer_raft::{Txn, STAGING_PREFIX};

#[tokio::test]
async fn abandoned_restore_staging_is_swept_and_a_recent_one_kept() {
    let dir = tempfile::tempdir().unwrap();
    let (vault, engine) = common::vault_and_engine(dir.path()).await;
    let now = coffer_vault::clock::now().unix_timestamp();
    for (id, started) in [("old", now - 7200), ("new", now)] {
        let opened = [STAGING_PREFIX, id.as_bytes()].concat();
        let mut txn = Txn::new().put(
            opened.clone(),
            serde_json::to_vec(&serde_json::json!({ "started_unix": started })).unwrap(),
        );
        // More records than one cleanup page, some with bytes that sort high.
        for i in 0..1500u32 {
            let mut key = [opened.as_slice(), b"/kv/secret/data/x\0"].concat();
            key.extend_from_slice(&u64::from(i).to_be_bytes());
            txn = txn.put(key, vec![0xff; 16]);
        }
        engine.write(txn).await.unwrap();
    }
    // An area whose opening record is gone (a cleanup cut short) counts as abandoned.
    let orphan = [STAGING_PREFIX, b"orphan/kv/secret/meta/y"].concat();
    engine.write(Txn::new().put(orphan, "x")).await.unwrap();

    let swept = vault
        .sweep_abandoned_restores(Duration::from_secs(3600))
        .await
        .unwrap();
    assert_eq!(swept, 2, "the old area and the orphan");
    let left = |id: &str| {
        engine
            .scan(&[STAGING_PREFIX, id.as_bytes()].concat(), None, 2000)
            .unwrap()
            .len()
    };
    assert_eq!(left("old"), 0);
    assert_eq!(left("orphan"), 0);
    assert_eq!(left("new"), 1501, "a restore under way keeps its staging");
    assert_eq!(
        vault
            .sweep_abandoned_restores(Duration::from_secs(3600))
            .await
            .unwrap(),
        0
    );
}
