//! Revocation always wins, and no auth method mints root: token trees of any size revoked
//! (the root of the tree unusable first), children racing their parent's revocation, tokens
//! outliving an ancestor, periods and TTLs beyond the parent's, the system maximum, and the
//! `root` policy refused to userpass users.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use coffer_vault::rules::token::TokenLimits;
use coffer_vault::{Auth, TokenRequest, UserUpdate, Vault, VaultError};
use zeroize::Zeroizing;

async fn unsealed(dir: &std::path::Path, limits: TokenLimits) -> (Arc<Vault>, Auth) {
    let (v, auth) = common::unsealed(dir).await;
    (Arc::new(v.with_token_limits(limits)), auth)
}

const CREATOR: &str = r#"path "auth/token/create" { capabilities = ["update"] }"#;

fn req(policies: &[&str]) -> TokenRequest {
    TokenRequest {
        policies: policies.iter().map(|s| s.to_string()).collect(),
        renewable: true,
        ..Default::default()
    }
}

fn denied(v: &Vault, token: &str) -> bool {
    matches!(
        v.authenticate(Some(token)),
        Err(VaultError::PermissionDenied)
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_tree_of_any_size_is_revoked_whole_and_its_root_dies_first() {
    let dir = tempfile::tempdir().unwrap();
    let (v, root) = unsealed(dir.path(), TokenLimits::default()).await;
    v.write_policy(&root, "creator", CREATOR).await.unwrap();
    let parent = v.create_token(&root, req(&["creator"])).await.unwrap();
    let parent_auth = v.authenticate(Some(&parent.token)).unwrap();
    // Several revocation batches' worth of children, made concurrently; with
    // COFFER_LONG_TESTS=1, more than the old cap of 10 000 (slow in a debug build).
    let children = if std::env::var_os("COFFER_LONG_TESTS").is_some() {
        25_600
    } else {
        1_280
    };
    let mut tasks = Vec::new();
    for _ in 0..32 {
        let (v, auth) = (v.clone(), parent_auth.clone());
        tasks.push(tokio::spawn(async move {
            let mut tokens = Vec::new();
            for _ in 0..children / 32 {
                tokens.push(v.create_token(&auth, req(&[])).await.unwrap().token);
            }
            tokens
        }));
    }
    let mut tokens = Vec::new();
    for t in tasks {
        tokens.extend(t.await.unwrap());
    }
    // Children inherit `creator`: one makes a grandchild.
    let child_auth = v.authenticate(Some(&tokens[0])).unwrap();
    let grandchild = v.create_token(&child_auth, req(&[])).await.unwrap().token;

    let started = Instant::now();
    let revoked = v
        .revoke_accessor(&root, &parent.entry.accessor)
        .await
        .unwrap();
    assert_eq!(
        revoked,
        children + 2,
        "the parent, every child and the grandchild"
    );
    assert!(denied(&v, &parent.token));
    assert!(denied(&v, &grandchild));
    for t in tokens.iter().step_by(97) {
        assert!(denied(&v, t), "a child survived");
    }
    // Nothing is left in storage either.
    let left = v.list_accessors(&root).unwrap();
    assert_eq!(left.len(), 1, "only the root token remains: {}", left.len());
    eprintln!("revoked {revoked} tokens in {:?}", started.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_child_created_while_its_parent_is_revoked_never_survives() {
    let dir = tempfile::tempdir().unwrap();
    let (v, root) = unsealed(dir.path(), TokenLimits::default()).await;
    v.write_policy(&root, "creator", CREATOR).await.unwrap();
    for round in 0..5 {
        let parent = v.create_token(&root, req(&["creator"])).await.unwrap();
        let parent_auth = v.authenticate(Some(&parent.token)).unwrap();
        let creators: Vec<_> = (0..4)
            .map(|_| {
                let (v, auth) = (v.clone(), parent_auth.clone());
                tokio::spawn(async move {
                    let mut made = Vec::new();
                    for _ in 0..50 {
                        match v.create_token(&auth, req(&[])).await {
                            Ok(t) => made.push(t.token),
                            Err(_) => break,
                        }
                    }
                    made
                })
            })
            .collect();
        tokio::task::yield_now().await;
        v.revoke_accessor(&root, &parent.entry.accessor)
            .await
            .unwrap();
        for c in creators {
            for token in c.await.unwrap() {
                assert!(
                    denied(&v, &token),
                    "round {round}: a child outlived its parent"
                );
            }
        }
    }
}

#[tokio::test]
async fn a_token_dies_with_an_expired_ancestor_and_lifetimes_need_sudo() {
    let dir = tempfile::tempdir().unwrap();
    let limits = TokenLimits {
        default_ttl_secs: 3600,
        max_ttl_secs: 7200,
    };
    let (v, root) = unsealed(dir.path(), limits).await;
    v.write_policy(&root, "creator", CREATOR).await.unwrap();
    v.write_policy(
        &root,
        "sudo-creator",
        r#"path "auth/token/create" { capabilities = ["update", "sudo"] }"#,
    )
    .await
    .unwrap();
    // Periodic tokens need sudo, as in Vault.
    let plain = v.create_token(&root, req(&["creator"])).await.unwrap();
    let plain_auth = v.authenticate(Some(&plain.token)).unwrap();
    let err = v
        .create_token(
            &plain_auth,
            TokenRequest {
                period_secs: 600,
                ..req(&[])
            },
        )
        .await
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "root or sudo privileges required to create periodic token"
    );
    // A TTL beyond the parent's needs sudo too.
    let short = v
        .create_token(
            &root,
            TokenRequest {
                ttl_secs: Some(2),
                ..req(&["creator", "sudo-creator"])
            },
        )
        .await
        .unwrap();
    let short_auth = v.authenticate(Some(&short.token)).unwrap();
    let no_sudo = v
        .create_token(
            &plain_auth,
            TokenRequest {
                ttl_secs: Some(7000),
                ..req(&[])
            },
        )
        .await
        .unwrap_err();
    assert!(
        no_sudo
            .to_string()
            .contains("cannot outlive its parent without sudo"),
        "{no_sudo}"
    );
    // With sudo a child may ask for more — and still dies with its parent.
    let child = v
        .create_token(
            &short_auth,
            TokenRequest {
                ttl_secs: Some(3000),
                ..req(&[])
            },
        )
        .await
        .unwrap();
    assert!(v.authenticate(Some(&child.token)).is_ok());
    let deadline = Instant::now() + Duration::from_secs(10);
    while !denied(&v, &short.token) {
        assert!(Instant::now() < deadline, "the parent never expired");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        denied(&v, &child.token),
        "a child outlived its expired parent"
    );
    // The system maximum caps every token, periodic ones included.
    let long = v
        .create_token(
            &root,
            TokenRequest {
                ttl_secs: Some(10 * 365 * 86400),
                ..req(&[])
            },
        )
        .await
        .unwrap();
    assert_eq!(long.entry.creation_ttl, 7200);
    let periodic = v
        .create_token(
            &root,
            TokenRequest {
                period_secs: 99_999,
                ..req(&[])
            },
        )
        .await
        .unwrap();
    assert_eq!(
        (periodic.entry.creation_ttl, periodic.entry.period),
        (7200, 7200)
    );
}

#[tokio::test]
async fn no_auth_method_mints_root() {
    let dir = tempfile::tempdir().unwrap();
    let (v, root) = unsealed(dir.path(), TokenLimits::default()).await;
    for policies in [vec!["root".to_string()], vec!["dev".into(), "root".into()]] {
        let err = v
            .write_user(
                &root,
                "mallory",
                UserUpdate {
                    password: Some(Zeroizing::new("pw".into())),
                    token_policies: Some(policies),
                    ..Default::default()
                },
            )
            .await
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "auth methods cannot create root tokens: the \"root\" policy cannot be given to a user"
        );
    }
    // Nothing was written: the user does not exist, so logging in fails as for any stranger.
    let err = v
        .login_userpass("mallory", Zeroizing::new("pw".into()), "127.0.0.1")
        .await
        .unwrap_err();
    assert_eq!(err.to_string(), "invalid username or password");
    // A user's lifetimes cannot exceed the system maximum.
    let err = v
        .write_user(
            &root,
            "bob",
            UserUpdate {
                password: Some(Zeroizing::new("pw".into())),
                token_ttl: Some(100 * 86400 * 365),
                ..Default::default()
            },
        )
        .await
        .unwrap_err();
    assert!(err.to_string().starts_with("token_ttl is longer"), "{err}");
}
