//! The vault over a real one-voter engine: init, unseal with shares, seal, rotate, KV v2.

mod common;

use coffer_vault::Consistency;
use coffer_vault::{Auth, InitRequest, Vault, VaultError};
use serde_json::{json, Map, Value};

use common::vault;

fn data(v: Value) -> Map<String, Value> {
    v.as_object().unwrap().clone()
}

async fn unsealed(dir: &std::path::Path) -> (Vault, Auth) {
    let v = vault(dir).await;
    let req = InitRequest {
        secret_shares: 1,
        secret_threshold: 1,
        root_token_id: None,
    };
    let (resp, _) = v.init(req, None).await.unwrap();
    v.unseal(Some(&resp.keys[0]), false).unwrap();
    let auth = v.authenticate(Some(&resp.root_token)).unwrap();
    (v, auth)
}

#[tokio::test]
async fn three_of_five_shares_unseal_two_do_not_and_wrong_shares_are_counted() {
    let dir = tempfile::tempdir().unwrap();
    let v = vault(dir.path()).await;
    assert!(!v.is_initialized().unwrap());
    let req = InitRequest {
        secret_shares: 5,
        secret_threshold: 3,
        root_token_id: None,
    };
    let (resp, _) = v.init(req.clone(), None).await.unwrap();
    assert_eq!(resp.keys.len(), 5);
    assert!(matches!(
        v.init(req, None).await,
        Err(VaultError::AlreadyInitialized)
    ));
    assert!(v.is_sealed());
    assert!(matches!(
        v.authenticate(Some(&resp.root_token)),
        Err(VaultError::Sealed)
    ));

    let s = v.unseal(Some(&resp.keys[0]), false).unwrap();
    assert_eq!((s.sealed, s.progress), (true, 1));
    let s = v.unseal(Some(&resp.keys_base64[2]), false).unwrap();
    assert_eq!(
        (s.sealed, s.progress),
        (true, 2),
        "two shares do not unseal"
    );

    // A share from another vault is refused on entry, counted, and does not reset progress.
    let other_dir = tempfile::tempdir().unwrap();
    let other = vault(other_dir.path()).await;
    let (other_resp, _) = other
        .init(
            InitRequest {
                secret_shares: 5,
                secret_threshold: 3,
                root_token_id: None,
            },
            None,
        )
        .await
        .unwrap();
    let err = v.unseal(Some(&other_resp.keys[0]), false).unwrap_err();
    assert!(
        matches!(&err, VaultError::BadUnsealKey(m) if m.contains("not one of this vault's key shares")),
        "{err}"
    );
    let err = v.unseal(Some("zz-not-a-key"), false).unwrap_err();
    assert!(matches!(err, VaultError::BadUnsealKey(_)));
    let s = v.seal_status().unwrap();
    assert_eq!((s.progress, s.unseal_failures), (2, 2));

    let s = v.unseal(Some(&resp.keys[4]), false).unwrap();
    assert!(!s.sealed, "the third share unseals");
    let auth = v.authenticate(Some(&resp.root_token)).unwrap();
    assert!(auth.is_root());

    v.seal(&auth).unwrap();
    assert!(v.is_sealed());
    assert!(matches!(
        v.kv_read(&auth, "secret/", "x", None, Consistency::Linearizable)
            .await,
        Err(VaultError::Sealed)
    ));
}

#[tokio::test]
async fn tokens_are_checked() {
    let dir = tempfile::tempdir().unwrap();
    let (v, _) = unsealed(dir.path()).await;
    for bad in [None, Some(""), Some("hvs.not-a-real-token")] {
        assert!(
            matches!(v.authenticate(bad), Err(VaultError::PermissionDenied)),
            "{bad:?}"
        );
    }
}

#[tokio::test]
async fn kv_versions_cas_delete_undelete_destroy_and_list() {
    let dir = tempfile::tempdir().unwrap();
    let (v, root) = unsealed(dir.path()).await;
    let m = "secret/";
    let w1 = v
        .kv_write(&root, m, "team/db", data(json!({"password": "one"})), None)
        .await
        .unwrap();
    assert_eq!(w1.version, 1);
    let w2 = v
        .kv_write(
            &root,
            m,
            "team/db",
            data(json!({"password": "two"})),
            Some(1),
        )
        .await
        .unwrap();
    assert_eq!(w2.version, 2);
    assert!(matches!(
        v.kv_write(&root, m, "team/db", data(json!({"password": "x"})), Some(1))
            .await,
        Err(VaultError::CasMismatch)
    ));
    let read = v
        .kv_read(&root, m, "team/db", None, Consistency::Linearizable)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(read.data.unwrap()["password"], "two");
    let old = v
        .kv_read(&root, m, "team/db", Some(1), Consistency::Linearizable)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(old.data.unwrap()["password"], "one");

    v.kv_patch(&root, m, "team/db", data(json!({"user": "admin"})), None)
        .await
        .unwrap();
    let patched = v
        .kv_read(&root, m, "team/db", None, Consistency::Linearizable)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(patched.version.version, 3);
    assert_eq!(
        patched.data.unwrap(),
        data(json!({"password": "two", "user": "admin"}))
    );

    v.kv_delete_latest(&root, m, "team/db").await.unwrap();
    let deleted = v
        .kv_read(&root, m, "team/db", None, Consistency::Linearizable)
        .await
        .unwrap()
        .unwrap();
    assert!(deleted.data.is_none() && !deleted.version.deletion_time.is_empty());
    v.kv_undelete(&root, m, "team/db", &[3]).await.unwrap();
    assert!(v
        .kv_read(&root, m, "team/db", None, Consistency::Linearizable)
        .await
        .unwrap()
        .unwrap()
        .data
        .is_some());
    v.kv_destroy(&root, m, "team/db", &[1]).await.unwrap();
    let destroyed = v
        .kv_read(&root, m, "team/db", Some(1), Consistency::Linearizable)
        .await
        .unwrap()
        .unwrap();
    assert!(destroyed.data.is_none() && destroyed.version.destroyed);

    v.kv_write(&root, m, "team/api", data(json!({"k": "v"})), None)
        .await
        .unwrap();
    v.kv_write(&root, m, "top", data(json!({"k": "v"})), None)
        .await
        .unwrap();
    assert_eq!(
        v.kv_list(&root, m, "", Consistency::Linearizable)
            .await
            .unwrap(),
        ["team/", "top"]
    );
    assert_eq!(
        v.kv_list(&root, m, "team/", Consistency::Linearizable)
            .await
            .unwrap(),
        ["api", "db"]
    );
    assert!(v
        .kv_list(&root, m, "nothing/", Consistency::Linearizable)
        .await
        .unwrap()
        .is_empty());

    v.kv_delete_meta(&root, m, "team/db").await.unwrap();
    assert!(v
        .kv_read(&root, m, "team/db", None, Consistency::Linearizable)
        .await
        .unwrap()
        .is_none());
    assert_eq!(
        v.kv_list(&root, m, "team/", Consistency::Linearizable)
            .await
            .unwrap(),
        ["api"]
    );
}

#[tokio::test]
async fn max_versions_prunes_data() {
    let dir = tempfile::tempdir().unwrap();
    let (v, root) = unsealed(dir.path()).await;
    let update = coffer_vault::KvMetaUpdate {
        max_versions: Some(2),
        ..Default::default()
    };
    v.kv_write_meta(&root, "secret/", "p", update, false)
        .await
        .unwrap();
    for i in 1..=4 {
        v.kv_write(&root, "secret/", "p", data(json!({"i": i})), None)
            .await
            .unwrap();
    }
    let meta = v
        .kv_read_meta(&root, "secret/", "p", Consistency::Linearizable)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        meta.versions.keys().copied().collect::<Vec<_>>(),
        vec![3, 4]
    );
    assert!(v
        .kv_read(&root, "secret/", "p", Some(1), Consistency::Linearizable)
        .await
        .unwrap()
        .is_none());
}

#[tokio::test]
async fn rotation_keeps_old_data_readable_and_survives_restart() {
    let dir = tempfile::tempdir().unwrap();
    let (keys, token) = {
        let v = vault(dir.path()).await;
        let (resp, _) = v
            .init(
                InitRequest {
                    secret_shares: 3,
                    secret_threshold: 2,
                    root_token_id: Some("hvs.fixed".into()),
                },
                None,
            )
            .await
            .unwrap();
        v.unseal(Some(&resp.keys[0]), false).unwrap();
        v.unseal(Some(&resp.keys[1]), false).unwrap();
        let root = v.authenticate(Some("hvs.fixed")).unwrap();
        v.kv_write(&root, "secret/", "before", data(json!({"k": "old"})), None)
            .await
            .unwrap();
        let status = v.rotate(&root).await.unwrap();
        assert_eq!(status.term, 2);
        v.kv_write(&root, "secret/", "after", data(json!({"k": "new"})), None)
            .await
            .unwrap();
        v.shutdown().await.unwrap();
        (resp.keys.clone(), "hvs.fixed".to_string())
    };
    let v = vault(dir.path()).await;
    assert!(v.is_sealed(), "a restarted node starts sealed");
    v.unseal(Some(&keys[2]), false).unwrap();
    v.unseal(Some(&keys[0]), false).unwrap();
    let root = v.authenticate(Some(&token)).unwrap();
    assert_eq!(v.key_status(&root).unwrap().term, 2);
    let before = v
        .kv_read(&root, "secret/", "before", None, Consistency::Linearizable)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(before.data.unwrap()["k"], "old");
    let after = v
        .kv_read(&root, "secret/", "after", None, Consistency::Linearizable)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(after.data.unwrap()["k"], "new");
}
