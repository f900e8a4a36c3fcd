//! Identities over a real engine: token trees, expiry, renewal limits, userpass and limits.

mod common;

use std::time::{Duration, Instant};

use coffer_vault::{TokenRequest, UserUpdate, VaultError};
use zeroize::Zeroizing;

use common::unsealed;

fn req(policies: &[&str]) -> TokenRequest {
    TokenRequest {
        policies: policies.iter().map(|s| s.to_string()).collect(),
        renewable: true,
        ..Default::default()
    }
}

#[tokio::test]
async fn revoking_a_parent_revokes_every_descendant_but_not_orphans() {
    let dir = tempfile::tempdir().unwrap();
    let (v, root) = unsealed(dir.path()).await;
    v.write_policy(
        &root,
        "p",
        r#"path "auth/token/create" { capabilities = ["update"] }"#,
    )
    .await
    .unwrap();
    let parent = v.create_token(&root, req(&["p"])).await.unwrap();
    let parent_auth = v.authenticate(Some(&parent.token)).unwrap();
    let child = v.create_token(&parent_auth, req(&["p"])).await.unwrap();
    let child_auth = v.authenticate(Some(&child.token)).unwrap();
    let grandchild = v.create_token(&child_auth, req(&[])).await.unwrap();
    let orphan = v
        .create_token(
            &root,
            TokenRequest {
                no_parent: true,
                ..req(&["p"])
            },
        )
        .await
        .unwrap();

    // A child cannot gain policies its parent lacks.
    let err = v
        .create_token(&parent_auth, req(&["root"]))
        .await
        .unwrap_err();
    assert!(
        matches!(err, VaultError::InvalidRequest(ref m) if m.contains("subset")),
        "{err}"
    );
    // Orphans need sudo.
    assert!(matches!(
        v.create_token(
            &parent_auth,
            TokenRequest {
                no_parent: true,
                ..req(&["p"])
            }
        )
        .await,
        Err(VaultError::PermissionDenied)
    ));

    assert_eq!(v.revoke_token(&root, &parent.token).await.unwrap(), 3);
    for t in [&parent.token, &child.token, &grandchild.token] {
        assert!(matches!(
            v.authenticate(Some(t)),
            Err(VaultError::PermissionDenied)
        ));
    }
    assert!(
        v.authenticate(Some(&orphan.token)).is_ok(),
        "orphans survive"
    );
    assert!(
        v.token_by_accessor(&child.entry.accessor)
            .unwrap()
            .is_none(),
        "accessors go too"
    );
}

#[tokio::test]
async fn tokens_expire_and_renewal_respects_the_maximum() {
    let dir = tempfile::tempdir().unwrap();
    let (v, root) = unsealed(dir.path()).await;
    let short = v
        .create_token(
            &root,
            TokenRequest {
                ttl_secs: Some(1),
                ..req(&["default"])
            },
        )
        .await
        .unwrap();
    assert!(v.authenticate(Some(&short.token)).is_ok());
    let deadline = Instant::now() + Duration::from_secs(10);
    while v.authenticate(Some(&short.token)).is_ok() {
        assert!(Instant::now() < deadline, "a 1 s token must expire");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let capped = v
        .create_token(
            &root,
            TokenRequest {
                ttl_secs: Some(60),
                explicit_max_ttl_secs: 120,
                ..req(&["default"])
            },
        )
        .await
        .unwrap();
    let auth = v.authenticate(Some(&capped.token)).unwrap();
    let renewed = v.renew_self(&auth, Some(3600)).await.unwrap();
    let limit = capped.entry.creation_time + 120;
    assert!(
        renewed.expire_time.unwrap() <= limit,
        "renewal cannot pass explicit_max_ttl"
    );

    let fixed = v
        .create_token(
            &root,
            TokenRequest {
                renewable: false,
                ..req(&["default"])
            },
        )
        .await
        .unwrap();
    let auth = v.authenticate(Some(&fixed.token)).unwrap();
    assert!(matches!(
        v.renew_self(&auth, None).await,
        Err(VaultError::InvalidRequest(_))
    ));
}

#[tokio::test]
async fn userpass_login_and_rate_limit() {
    let dir = tempfile::tempdir().unwrap();
    let (v, root) = unsealed(dir.path()).await;
    let update = UserUpdate {
        password: Some(Zeroizing::new("pw".into())),
        token_policies: Some(vec!["reader".into()]),
        ..Default::default()
    };
    v.write_user(&root, "alice", update).await.unwrap();
    let read = v.read_user(&root, "alice").unwrap().unwrap();
    assert!(
        !format!("{read:?}").contains("argon2"),
        "Debug never shows the hash"
    );

    let ok = v
        .login_userpass("alice", Zeroizing::new("pw".into()), "10.0.0.1")
        .await
        .unwrap();
    assert_eq!(ok.entry.policies, ["default", "reader"]);
    assert_eq!(ok.entry.display_name, "userpass-alice");

    for _ in 0..5 {
        let err = v
            .login_userpass("alice", Zeroizing::new("bad".into()), "10.0.0.1")
            .await
            .unwrap_err();
        assert!(
            matches!(err, VaultError::InvalidRequest(ref m) if m == "invalid username or password")
        );
    }
    let err = v
        .login_userpass("alice", Zeroizing::new("pw".into()), "10.0.0.2")
        .await
        .unwrap_err();
    assert!(
        matches!(err, VaultError::RateLimited(ref m) if m.contains("too many failed login attempts")),
        "{err}"
    );
    // Unknown users get the same answer as wrong passwords.
    let err = v
        .login_userpass("nobody", Zeroizing::new("x".into()), "10.0.0.3")
        .await
        .unwrap_err();
    assert!(
        matches!(err, VaultError::InvalidRequest(ref m) if m == "invalid username or password")
    );

    v.delete_user(&root, "alice").await.unwrap();
    assert!(v.read_user(&root, "alice").unwrap().is_none());
    assert!(v.list_users(&root).unwrap().is_empty());
}
