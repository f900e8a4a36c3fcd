//! Trust boundaries at the HTTP surface, each attempted as an attacker would and refused with
//! the exact answer, data and audit intact afterwards: a `deny` spelled around, mounts and
//! packs without the rights Vault asks for, numbers out of range, an effect without its
//! audit record, a panicking handler, and one name per person in the audit log.

mod common;

use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use coffer_api::routes::{handle_with, ApiRequest, AppState};
use common::{node, Node};
use serde_json::{json, Value};

/// A token with `policy` (written as policy `name`).
async fn token_with(n: &Node, name: &str, policy: &str) -> String {
    let (s, b) = n
        .root(
            "PUT",
            &format!("/v1/sys/policies/acl/{name}"),
            json!({ "policy": policy }),
        )
        .await;
    assert_eq!(s, StatusCode::NO_CONTENT, "{b}");
    let (s, b) = n
        .root("POST", "/v1/auth/token/create", json!({"policies": [name]}))
        .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    b["auth"]["client_token"].as_str().unwrap().to_string()
}

async fn as_token(
    n: &Node,
    token: &str,
    method: &str,
    path: &str,
    body: Value,
) -> (StatusCode, Value) {
    let body = if body.is_null() {
        Body::empty()
    } else {
        Body::from(body.to_string())
    };
    n.call(method, path, body, Some(token)).await
}

#[tokio::test]
async fn a_deny_cannot_be_spelled_around() {
    let n = node(true).await;
    n.root(
        "POST",
        "/v1/secret/data/team/admin",
        json!({"data": {"k": "crown"}}),
    )
    .await;
    let token = token_with(
        &n,
        "team",
        r#"
path "secret/data/*" { capabilities = ["create", "read", "update"] }
path "secret/data/team/admin" { capabilities = ["deny"] }
path "secret/metadata/team/*" { capabilities = ["list"] }
"#,
    )
    .await;
    for path in [
        "/v1/secret/data/team/admin",
        "/v1/secret//data/team/admin",
        "/v1/secret/data/team//admin",
        "/v1/secret/data/team/admin/",
        "/v1/secret/data/team%2Fadmin",
        "/v1/secret/data/team%2F%2Fadmin",
        "//v1/secret/data/team/admin",
    ] {
        for (method, body) in [
            ("GET", Value::Null),
            ("POST", json!({"data": {"k": "stolen"}})),
            ("DELETE", Value::Null),
        ] {
            let (s, b) = as_token(&n, &token, method, path, body).await;
            assert!(
                s == StatusCode::FORBIDDEN || s == StatusCode::NOT_FOUND,
                "{method} {path}: {s} {b}"
            );
            assert_ne!(s, StatusCode::OK);
        }
    }
    for path in [
        "/v1/secret/data/team/./admin",
        "/v1/secret/data/x/../team/admin",
    ] {
        let (s, b) = as_token(&n, &token, "GET", path, Value::Null).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{path}: {b}");
    }
    let (s, b) = n
        .root("GET", "/v1/secret/data/team/admin", Value::Null)
        .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(b["data"]["data"]["k"], "crown", "untouched");
    assert_eq!(b["data"]["metadata"]["version"], 1);

    // LIST is checked with a trailing slash, as Vault does: `list` on `team/*` lists `team`.
    let (s, b) = as_token(&n, &token, "LIST", "/v1/secret/metadata/team", Value::Null).await;
    assert_eq!(s, StatusCode::OK, "{b}");
    assert_eq!(b["data"]["keys"], json!(["admin"]));
    let (s, _) = as_token(&n, &token, "LIST", "/v1/secret/metadata/", Value::Null).await;
    assert_eq!(s, StatusCode::FORBIDDEN, "no list on the mount's root");
}

#[tokio::test]
async fn mounts_and_unseal_packs_need_what_vault_asks() {
    let n = node(true).await;
    let deleter = token_with(
        &n,
        "deleter",
        r#"path "sys/mounts/*" { capabilities = ["delete", "sudo"] }"#,
    )
    .await;
    let mounter = token_with(
        &n,
        "mounter",
        r#"path "sys/mounts/*" { capabilities = ["create", "update", "sudo"] }"#,
    )
    .await;
    let no_sudo = token_with(
        &n,
        "no-sudo",
        r#"path "sys/mounts/*" { capabilities = ["create", "update", "delete"] }"#,
    )
    .await;
    let mount = json!({"type": "kv", "options": {"version": "2"}});
    for token in [&deleter, &no_sudo] {
        let (s, _) = as_token(&n, token, "POST", "/v1/sys/mounts/team-kv", mount.clone()).await;
        assert_eq!(s, StatusCode::FORBIDDEN);
    }
    let (s, b) = as_token(&n, &mounter, "POST", "/v1/sys/mounts/team-kv/", mount).await;
    assert_eq!(s, StatusCode::NO_CONTENT, "{b}");
    let (s, _) = as_token(
        &n,
        &mounter,
        "DELETE",
        "/v1/sys/mounts/team-kv",
        Value::Null,
    )
    .await;
    assert_eq!(s, StatusCode::FORBIDDEN, "unmounting needs delete");
    let (s, _) = as_token(
        &n,
        &deleter,
        "DELETE",
        "/v1/sys/mounts/team-kv",
        Value::Null,
    )
    .await;
    assert_eq!(s, StatusCode::NO_CONTENT);

    // A pack with the unseal key hands out the root key: sudo is not enough.
    let operator = token_with(
        &n,
        "operator",
        r#"path "sys/coffer/packs" { capabilities = ["update", "sudo"] }"#,
    )
    .await;
    let pack = json!({
        "node_id": 4,
        "api_addr": "https://127.0.0.14:8200",
        "peer_addr": "127.0.0.14:8201",
        "include_unseal_key": true,
        "passphrase": "correct horse battery staple",
    });
    let (s, b) = as_token(&n, &operator, "POST", "/v1/sys/coffer/packs", pack.clone()).await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    assert_eq!(
        b["errors"][0],
        "permission denied: a pack with the unseal key hands out the root key: only a root token may make one"
    );
    let (s, _) = n.root("POST", "/v1/sys/coffer/packs", pack).await;
    assert_eq!(s, StatusCode::OK);
}

#[tokio::test]
async fn numbers_out_of_range_are_refused_and_the_path_keeps_working() {
    let n = node(true).await;
    for (path, body) in [
        (
            "/v1/secret/metadata/huge",
            json!({"delete_version_after": "1000000000000000s"}),
        ),
        (
            "/v1/secret/config",
            json!({"delete_version_after": "18446744073709551615"}),
        ),
        (
            "/v1/secret/metadata/huge",
            json!({"max_versions": 5000000000u64}),
        ),
    ] {
        let (s, b) = n.root("POST", path, body).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{path}: {b}");
    }
    let (s, b) = n
        .root(
            "POST",
            "/v1/auth/token/create",
            json!({"ttl": "9999999999999999h"}),
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{b}");
    // The longest accepted delay still works, and later writes on the path too.
    let (s, b) = n
        .root(
            "POST",
            "/v1/secret/metadata/huge",
            json!({"delete_version_after": "2562047h"}),
        )
        .await;
    assert_eq!(s, StatusCode::NO_CONTENT, "{b}");
    for i in 0..2 {
        let (s, b) = n
            .root("POST", "/v1/secret/data/huge", json!({"data": {"i": i}}))
            .await;
        assert_eq!(s, StatusCode::OK, "{b}");
    }
}

/// Every merged audit record (after shipping the spool).
async fn merged(n: &Node) -> Vec<Value> {
    while n.vault.ship_once().await.unwrap() > 0 {}
    let auth = n.vault.authenticate(Some(&n.token)).unwrap();
    let filter = coffer_vault::AuditFilter {
        limit: Some(10_000),
        ..Default::default()
    };
    let (records, _) = n.vault.audit_query(&auth, &filter).unwrap();
    records
        .into_iter()
        .map(|r| serde_json::to_value(r).unwrap())
        .collect()
}

#[tokio::test]
async fn a_write_is_audited_before_it_runs_and_one_person_has_one_name() {
    let n = node(true).await;
    token_with(
        &n,
        "reader",
        r#"path "secret/data/team/*" { capabilities = ["read"] }"#,
    )
    .await;
    n.root(
        "POST",
        "/v1/auth/userpass/users/alice",
        json!({"password": "pw", "token_policies": ["reader"]}),
    )
    .await;
    n.root(
        "POST",
        "/v1/secret/data/team/db",
        json!({"data": {"v": "1"}}),
    )
    .await;
    let (s, b) = n
        .call(
            "POST",
            "/v1/auth/userpass/login/alice",
            Body::from(r#"{"password": "pw"}"#),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    let alice = b["auth"]["client_token"].as_str().unwrap().to_string();
    let (s, _) = as_token(&n, &alice, "GET", "/v1/secret/data/team/db", Value::Null).await;
    assert_eq!(s, StatusCode::OK);
    let (s, _) = as_token(&n, &alice, "GET", "/v1/secret/data/other", Value::Null).await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    let (s, write) = n
        .root(
            "POST",
            "/v1/secret/data/team/db",
            json!({"data": {"v": "2"}}),
        )
        .await;
    assert_eq!(s, StatusCode::OK);

    let records = merged(&n).await;
    // Alice: her login, her read and her refusal, under one name, with how she logged in.
    let hers: Vec<&Value> = records
        .iter()
        .filter(|r| r["actor"] == "alice" && r["type"] == "response")
        .collect();
    let ops: Vec<(&str, &str)> = hers
        .iter()
        .map(|r| {
            (
                r["operation"].as_str().unwrap(),
                r["outcome"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        ops,
        [("login", "ok"), ("read", "ok"), ("read", "denied")],
        "{hers:#?}"
    );
    assert!(hers.iter().all(|r| r["auth_method"] == "userpass"));
    assert_eq!(hers[1]["display_name"], "userpass-alice");
    // The write: a request record, durable before it ran, then the response, one id.
    let id = write["request_id"].as_str().unwrap();
    let kinds: Vec<(&str, &str)> = records
        .iter()
        .filter(|r| r["request_id"] == id)
        .map(|r| (r["type"].as_str().unwrap(), r["outcome"].as_str().unwrap()))
        .collect();
    assert_eq!(kinds, [("request", "pending"), ("response", "ok")]);
    let by_query = {
        let auth = n.vault.authenticate(Some(&n.token)).unwrap();
        let filter = coffer_vault::AuditFilter {
            actor: Some("alice".into()),
            limit: Some(100),
            ..Default::default()
        };
        n.vault.audit_query(&auth, &filter).unwrap().0.len()
    };
    assert_eq!(by_query, 3, "her login, her read and her refusal");
    // A failed login is never recorded under the name it tried.
    let (s, _) = n
        .call(
            "POST",
            "/v1/auth/userpass/login/alice",
            Body::from(r#"{"password": "wrong"}"#),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    let records = merged(&n).await;
    let failed = records
        .iter()
        .filter(|r| r["outcome"] == "refused" && r["operation"] == "login")
        .collect::<Vec<_>>();
    assert_eq!(failed.len(), 1);
    assert_eq!(failed[0]["actor"], "anonymous");
    assert_eq!(failed[0]["path"], "auth/userpass/login/alice");
}

#[cfg(target_os = "linux")]
#[tokio::test]
async fn a_write_refused_by_a_broken_spool_never_takes_effect() {
    let n = node(true).await;
    // No record was written yet (init ran without a request): the spool's first segment
    // is about to be created — as a full disk.
    std::os::unix::fs::symlink(
        "/dev/full",
        n._dir.path().join("audit/spool-00000000000000000001.jsonl"),
    )
    .unwrap();
    for (method, path, body) in [
        ("POST", "/v1/secret/data/x", json!({"data": {"v": "1"}})),
        ("POST", "/v1/sys/rotate", Value::Null),
        (
            "PUT",
            "/v1/sys/policies/acl/p",
            json!({"policy": "path \"a\" {capabilities=[\"read\"]}"}),
        ),
        ("POST", "/v1/auth/token/create", json!({})),
    ] {
        let (s, b) = n.root(method, path, body).await;
        assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE, "{path}: {b}");
        assert!(
            b["errors"][0]
                .as_str()
                .unwrap()
                .starts_with("audit spool unavailable"),
            "{b}"
        );
    }
    let auth = n.vault.authenticate(Some(&n.token)).unwrap();
    let read = n
        .vault
        .kv_read(
            &auth,
            "secret/",
            "x",
            None,
            coffer_vault::Consistency::Stale,
        )
        .await
        .unwrap();
    assert!(read.is_none(), "the refused write never ran");
    assert_eq!(
        n.vault.key_status(&auth).unwrap().term,
        1,
        "no rotation ran"
    );
    assert!(
        n.vault.read_policy(&auth, "p").unwrap().is_none(),
        "no policy written"
    );
}

#[tokio::test]
async fn a_panicking_handler_is_a_500_with_its_audit_record_and_the_node_serves_on() {
    let n = node(true).await;
    let state: AppState = n.state.clone();
    let request = Request::builder()
        .method("POST")
        .uri("/v1/secret/data/boom")
        .header("X-Vault-Token", &n.token)
        .body(axum::body::Body::from(r#"{"data": {}}"#))
        .unwrap();
    let req = ApiRequest::parse(request, 1 << 20, Duration::from_secs(5))
        .await
        .unwrap();
    let response = handle_with(&state, &req, |_, _| {
        Box::pin(async { panic!("a bug in a handler") })
    })
    .await;
    assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
    let records = merged(&n).await;
    let kinds: Vec<(&str, u64)> = records
        .iter()
        .filter(|r| r["request_id"] == req.request_id.as_str())
        .map(|r| (r["type"].as_str().unwrap(), r["status"].as_u64().unwrap()))
        .collect();
    assert_eq!(kinds, [("request", 0), ("response", 500)]);
    let (s, _) = n
        .root("POST", "/v1/secret/data/after", json!({"data": {"a": "b"}}))
        .await;
    assert_eq!(s, StatusCode::OK, "the node keeps serving");
}

#[tokio::test]
async fn operators_list_token_accessors_and_node_local_sessions() {
    let n = node(true).await;
    let (s, b) = n
        .root("LIST", "/v1/auth/token/accessors", Value::Null)
        .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(b["data"]["keys"].as_array().unwrap().len(), 1);
    let (s, b) = n.root("GET", "/v1/sys/coffer/sessions", Value::Null).await;
    assert_eq!(s, StatusCode::OK, "{b}");
    assert_eq!(b["data"]["sessions"], json!([]));
    let plain = token_with(&n, "nothing", r#"path "x" { capabilities = ["read"] }"#).await;
    for (method, path) in [
        ("LIST", "/v1/auth/token/accessors"),
        ("GET", "/v1/sys/coffer/sessions"),
    ] {
        let (s, _) = as_token(&n, &plain, method, path, Value::Null).await;
        assert_eq!(s, StatusCode::FORBIDDEN, "{path} needs sudo");
    }
}

#[tokio::test]
async fn each_route_is_checked_on_the_path_it_names() {
    let n = node(true).await;
    n.root(
        "POST",
        "/v1/auth/userpass/users/bob",
        json!({"password": "old-pw"}),
    )
    .await;
    // May manage users, but not set passwords, nor step down, nor remove node 1.
    let token = token_with(
        &n,
        "admin",
        r#"
path "auth/userpass/users/*" { capabilities = ["create", "read", "update", "delete"] }
path "auth/userpass/users/+/password" { capabilities = ["deny"] }
path "sys/*" { capabilities = ["create", "read", "update", "delete", "sudo"] }
path "sys/step-down" { capabilities = ["deny"] }
path "sys/coffer/members/1" { capabilities = ["deny"] }
"#,
    )
    .await;
    let (s, _) = as_token(
        &n,
        &token,
        "POST",
        "/v1/auth/userpass/users/bob/password",
        json!({"password": "new-pw"}),
    )
    .await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    // A password change is a write: asked with GET it changes nothing.
    let (s, _) = n
        .root(
            "GET",
            "/v1/auth/userpass/users/bob/password",
            json!({"password": "new-pw"}),
        )
        .await;
    assert_eq!(s, StatusCode::METHOD_NOT_ALLOWED);
    let (s, _) = n
        .call(
            "POST",
            "/v1/auth/userpass/login/bob",
            Body::from(r#"{"password": "old-pw"}"#),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::OK, "the password is unchanged");
    for (method, path) in [
        ("PUT", "/v1/sys/step-down"),
        ("DELETE", "/v1/sys/coffer/members/1"),
    ] {
        let (s, _) = as_token(&n, &token, method, path, Value::Null).await;
        assert_eq!(s, StatusCode::FORBIDDEN, "{method} {path}");
    }
    // With the right to it, the password changes (checked on its own path).
    let (s, _) = n
        .root(
            "POST",
            "/v1/auth/userpass/users/bob/password",
            json!({"password": "new-pw"}),
        )
        .await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    // Names the audit log uses for its own actors cannot be users.
    for name in ["root", "system", "anonymous"] {
        let (s, b) = n
            .root(
                "POST",
                &format!("/v1/auth/userpass/users/{name}"),
                json!({"password": "pw"}),
            )
            .await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{name}: {b}");
    }
}

/// Two packs for one node id: the second, refused while the id is taken, is not consumed
/// by the refusal (no half-used pack is left to be finished later, after its expiry); once
/// the id is free it is an ordinary unused pack.
#[tokio::test]
async fn a_pack_refused_for_a_taken_id_is_not_consumed() {
    use base64::Engine as _;
    let n = node(true).await;
    let pack = |ttl: u64| {
        json!({
            "node_id": 4,
            "api_addr": "https://127.0.0.14:8200",
            "peer_addr": "127.0.0.14:8201",
            "ttl_secs": ttl,
            "passphrase": "correct horse battery staple",
        })
    };
    let open = |b: &Value| {
        let file = base64::engine::general_purpose::STANDARD
            .decode(b["data"]["pack"].as_str().unwrap())
            .unwrap();
        coffer_vault::rules::pack::open_pack(&file, "correct horse battery staple", 0).unwrap()
    };
    let (_, a) = n.root("POST", "/v1/sys/coffer/packs", pack(3600)).await;
    let (_, b) = n.root("POST", "/v1/sys/coffer/packs", pack(3600)).await;
    let (a, b) = (open(&a), open(&b));
    let handler = n.vault.peer_app_handler();
    let join = |p: &coffer_vault::rules::pack::PackContents, instance: &str| {
        let caller = coffer_raft::PeerCaller {
            node_id: 4,
            cert_sha256: coffer_tls::fingerprint_pem(&p.node_cert_pem).unwrap(),
        };
        let body = json!({"Join": {
            "pack_id": p.pack_id, "cluster_id": p.cluster_id, "instance": instance,
            "api_addr": p.api_addr, "peer_addr": p.peer_addr,
            "csr_pem": coffer_tls::node_key_request(4).unwrap().csr_pem,
        }});
        (caller, serde_json::to_vec(&body).unwrap())
    };
    let (caller, body) = join(&a, "join-a");
    assert!(handler(caller, body).await.is_ok(), "pack A joins node 4");
    let (caller, body) = join(&b, "join-b");
    let err = handler(caller, body).await.unwrap_err();
    assert!(err.contains("node 4 is already a member"), "{err}");
    let root = n.vault.authenticate(Some(&n.token)).unwrap();
    n.vault
        .change_members(
            &root,
            "sys/coffer/members/4",
            coffer_vault::MemberChange::Remove(4),
        )
        .await
        .unwrap();
    // The refused attempt left pack B unused: the same join attempt now completes.
    let (caller, body) = join(&b, "join-b");
    assert!(handler(caller, body).await.is_ok());
    let pinned = n.engine.member_addrs()[&4].cert_sha256.clone();
    assert_ne!(
        pinned,
        coffer_tls::fingerprint_pem(&b.node_cert_pem).unwrap(),
        "the member certificate is issued at registration, never the pack's"
    );
    // And it is used now: a second attempt (another machine with a copy) is refused.
    let (caller, body) = join(&b, "join-b-copy");
    let err = handler(caller, body).await.unwrap_err();
    assert!(err.contains("pack already used"), "{err}");
}
