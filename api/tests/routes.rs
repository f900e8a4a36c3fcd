//! The HTTP surface driven in-process with `oneshot` (no socket): Vault shapes, status codes,
//! and bad input refused with the exact message while the node keeps serving.

mod common;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use common::{node, LIMIT};
use serde_json::{json, Value};
use tower::ServiceExt;

#[tokio::test]
async fn kv_v2_round_trip_in_vault_shapes() {
    let n = node(true).await;
    let (s, b) = n
        .root(
            "POST",
            "/v1/secret/data/app/db",
            json!({"data": {"password": "p1"}}),
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(b["data"]["version"], 1);
    assert_eq!(b["data"]["destroyed"], false);
    let (s, b) = n.root("GET", "/v1/secret/data/app/db", Value::Null).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(b["data"]["data"], json!({"password": "p1"}));
    assert_eq!(b["data"]["metadata"]["version"], 1);
    let (s, b) = n.root("LIST", "/v1/secret/metadata/app", Value::Null).await;
    assert_eq!(
        (s, b["data"]["keys"].clone()),
        (StatusCode::OK, json!(["db"]))
    );
    let (s, b) = n
        .root("GET", "/v1/secret/metadata/?list=true", Value::Null)
        .await;
    assert_eq!(
        (s, b["data"]["keys"].clone()),
        (StatusCode::OK, json!(["app/"]))
    );
    let (s, b) = n
        .root(
            "POST",
            "/v1/secret/data/app/db",
            json!({"data": {"password": "p2"}, "options": {"cas": 0}}),
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert_eq!(
        b["errors"][0],
        "check-and-set parameter did not match the current version"
    );
    let (s, _) = n
        .root("DELETE", "/v1/secret/data/app/db", Value::Null)
        .await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let (s, b) = n.root("GET", "/v1/secret/data/app/db", Value::Null).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    assert!(b["data"]["data"].is_null() && b["data"]["metadata"]["deletion_time"] != "");
    let (s, _) = n
        .root(
            "POST",
            "/v1/secret/undelete/app/db",
            json!({"versions": [1]}),
        )
        .await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let (s, _) = n
        .root("PUT", "/v1/secret/destroy/app/db", json!({"versions": [1]}))
        .await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let (s, b) = n
        .root("GET", "/v1/secret/metadata/app/db", Value::Null)
        .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(b["data"]["versions"]["1"]["destroyed"], true);
    assert_eq!(b["data"]["max_versions"], 0);
    let (s, b) = n.root("GET", "/v1/secret/data/missing", Value::Null).await;
    assert_eq!((s, b), (StatusCode::NOT_FOUND, json!({"errors": []})));
}

#[tokio::test]
async fn bad_input_gets_the_right_status_and_message_and_the_node_keeps_serving() {
    let n = node(true).await;
    let t = Some(n.token.as_str());
    // (method, path, body, token, expected status, expected message fragment)
    type Case<'a> = (&'a str, &'a str, Body, Option<&'a str>, StatusCode, &'a str);
    let cases: Vec<Case> = vec![
        (
            "POST",
            "/v1/secret/data/x",
            Body::from("{not json"),
            t,
            StatusCode::BAD_REQUEST,
            "failed to parse JSON input",
        ),
        (
            "POST",
            "/v1/secret/data/x",
            Body::from(r#"{"data": "a string"}"#),
            t,
            StatusCode::BAD_REQUEST,
            "invalid request",
        ),
        (
            "POST",
            "/v1/secret/data/x",
            Body::from(r#"{"data": {"a": 1}, "options": {"cas": "one"}}"#),
            t,
            StatusCode::BAD_REQUEST,
            "invalid request",
        ),
        (
            "POST",
            "/v1/secret/data/x",
            Body::from("{}"),
            t,
            StatusCode::BAD_REQUEST,
            "no data provided",
        ),
        (
            "POST",
            "/v1/secret/data/x",
            Body::from(vec![b'a'; LIMIT + 1]),
            t,
            StatusCode::PAYLOAD_TOO_LARGE,
            "request body too large",
        ),
        (
            "GET",
            "/v1/nomount/data/x",
            Body::empty(),
            t,
            StatusCode::NOT_FOUND,
            "no handler for route",
        ),
        (
            "GET",
            "/v1/secret/data/a/../b",
            Body::empty(),
            t,
            StatusCode::BAD_REQUEST,
            "'..' segments are not allowed",
        ),
        (
            "GET",
            "/v1/secret/data/a/%2e%2e/b",
            Body::empty(),
            t,
            StatusCode::BAD_REQUEST,
            "'..' segments are not allowed",
        ),
        (
            "GET",
            "/v1/secret/data/%ff%fe",
            Body::empty(),
            t,
            StatusCode::BAD_REQUEST,
            "not valid UTF-8",
        ),
        (
            "GET",
            "/v1/secret/data/x",
            Body::empty(),
            None,
            StatusCode::FORBIDDEN,
            "permission denied",
        ),
        (
            "GET",
            "/v1/secret/data/x",
            Body::empty(),
            Some("hvs.wrong"),
            StatusCode::FORBIDDEN,
            "permission denied",
        ),
        (
            "GET",
            "/v1/secret/data/x?version=abc",
            Body::empty(),
            t,
            StatusCode::BAD_REQUEST,
            "non-negative integer",
        ),
        (
            "DELETE",
            "/v1/sys/health",
            Body::empty(),
            t,
            StatusCode::METHOD_NOT_ALLOWED,
            "unsupported operation",
        ),
        (
            "POST",
            "/v1/sys/unseal",
            Body::from(r#"{"key": 5}"#),
            None,
            StatusCode::BAD_REQUEST,
            "invalid request",
        ),
        (
            "POST",
            "/v1/sys/init",
            Body::from(r#"{"secret_shares": 1, "secret_threshold": 1}"#),
            None,
            StatusCode::BAD_REQUEST,
            "already initialized",
        ),
    ];
    for (method, path, body, token, status, message) in cases {
        let (s, b) = n.call(method, path, body, token).await;
        let errors = b["errors"].to_string();
        assert_eq!(s, status, "{method} {path}: {errors}");
        assert!(
            errors.contains(message),
            "{method} {path}: {errors} lacks {message:?}"
        );
    }
    let (s, _) = n
        .root(
            "POST",
            "/v1/secret/data/x",
            json!({"data": {"still": "serving"}}),
        )
        .await;
    assert_eq!(s, StatusCode::OK);

    // A secret sent with the wrong shape is not echoed back.
    let (s, b) = n
        .call(
            "POST",
            "/v1/secret/data/x",
            Body::from(r#"{"data": "hunter2-secret"}"#),
            t,
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert!(!b.to_string().contains("hunter2"), "{b}");
}

#[tokio::test]
async fn bearer_tokens_work_like_vault_tokens() {
    let n = node(true).await;
    for (header, status) in [
        (format!("Bearer {}", n.token), StatusCode::OK),
        ("Basic abc".to_string(), StatusCode::FORBIDDEN),
    ] {
        let req = Request::builder()
            .method("GET")
            .uri("/v1/auth/token/lookup-self")
            .header("Authorization", header)
            .body(Body::empty())
            .unwrap();
        let resp = n.app.clone().oneshot(req).await.unwrap();
        assert_eq!(resp.status(), status);
    }
}

#[tokio::test]
async fn sealed_node_answers_503_on_kv_and_health_codes_follow_vault() {
    let n = node(false).await;
    let (s, b) = n.call("GET", "/v1/sys/health", Body::empty(), None).await;
    assert_eq!(
        (s, b["initialized"].clone()),
        (StatusCode::NOT_IMPLEMENTED, json!(false))
    );
    let (s, b) = n
        .call(
            "POST",
            "/v1/sys/init",
            Body::from(r#"{"secret_shares": 3, "secret_threshold": 2}"#),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    let keys: Vec<String> = serde_json::from_value(b["keys"].clone()).unwrap();
    let token = b["root_token"].as_str().unwrap().to_string();

    let (s, b) = n
        .call("GET", "/v1/secret/data/x", Body::empty(), Some(&token))
        .await;
    assert_eq!(
        (s, b),
        (
            StatusCode::SERVICE_UNAVAILABLE,
            json!({"errors": ["Vault is sealed"]})
        )
    );
    let (s, _) = n.call("GET", "/v1/sys/health", Body::empty(), None).await;
    assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE);
    let (s, _) = n
        .call("HEAD", "/v1/sys/health?sealedcode=299", Body::empty(), None)
        .await;
    assert_eq!(s.as_u16(), 299);

    let unseal = |k: &str| Body::from(json!({"key": k}).to_string());
    let (s, b) = n.call("POST", "/v1/sys/unseal", unseal("00ff"), None).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert!(b["errors"][0]
        .as_str()
        .unwrap()
        .contains("not one of this vault's key shares"));
    let (_, b) = n
        .call("POST", "/v1/sys/unseal", unseal(&keys[0]), None)
        .await;
    assert_eq!(
        (
            b["sealed"].clone(),
            b["progress"].clone(),
            b["unseal_failures"].clone()
        ),
        (json!(true), json!(1), json!(1))
    );
    let (_, b) = n
        .call("POST", "/v1/sys/unseal", unseal(&keys[2]), None)
        .await;
    assert_eq!(b["sealed"], false);

    let (s, b) = n.call("GET", "/v1/sys/health", Body::empty(), None).await;
    assert_eq!(
        (s, b["sealed"].clone(), b["standby"].clone()),
        (StatusCode::OK, json!(false), json!(false))
    );
    let (s, _) = n
        .call("GET", "/v1/sys/health?activecode=204", Body::empty(), None)
        .await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let (s, _) = n
        .call("GET", "/v1/sys/health?activecode=abc", Body::empty(), None)
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn sys_routes_answer_in_vault_shapes() {
    let n = node(true).await;
    let (s, b) = n
        .root("GET", "/v1/sys/internal/ui/mounts/secret/foo", Value::Null)
        .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(
        (
            b["data"]["path"].clone(),
            b["data"]["options"]["version"].clone()
        ),
        (json!("secret/"), json!("2"))
    );
    let (s, b) = n.root("GET", "/v1/sys/mounts", Value::Null).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(b["data"]["secret/"]["type"], "kv");
    let (s, b) = n.root("GET", "/v1/sys/leader", Value::Null).await;
    assert_eq!(
        (s, b["is_self"].clone(), b["ha_enabled"].clone()),
        (StatusCode::OK, json!(true), json!(true))
    );
    let (s, _) = n.root("POST", "/v1/sys/rotate", Value::Null).await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let (_, b) = n.root("GET", "/v1/sys/key-status", Value::Null).await;
    assert_eq!(b["data"]["term"], 2);
    let (s, _) = n
        .root(
            "POST",
            "/v1/sys/mounts/team",
            json!({"type": "kv", "options": {"version": "2"}}),
        )
        .await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let (s, _) = n
        .root("POST", "/v1/team/data/x", json!({"data": {"a": "b"}}))
        .await;
    assert_eq!(s, StatusCode::OK);
    let (s, b) = n
        .root("POST", "/v1/sys/mounts/other", json!({"type": "pki"}))
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{b}");
    let (s, b) = n
        .root("GET", "/v1/auth/token/lookup-self", Value::Null)
        .await;
    assert_eq!(
        (s, b["data"]["policies"].clone()),
        (StatusCode::OK, json!(["root"]))
    );
    let (s, _) = n.root("POST", "/v1/sys/seal", Value::Null).await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let (s, _) = n.root("GET", "/v1/secret/data/x", Value::Null).await;
    assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE);
}

#[cfg(target_os = "linux")]
#[tokio::test]
async fn a_failed_audit_spool_refuses_requests_and_health_says_why() {
    let n = node(true).await;
    std::os::unix::fs::symlink(
        "/dev/full",
        n._dir.path().join("audit/spool-00000000000000000001.jsonl"),
    )
    .unwrap();
    let (s, b) = n
        .root("POST", "/v1/secret/data/x", json!({"data": {"a": "b"}}))
        .await;
    assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE);
    assert!(
        b["errors"][0]
            .as_str()
            .unwrap()
            .starts_with("audit spool unavailable"),
        "{b}"
    );
    let (s, b) = n.call("GET", "/v1/sys/health", Body::empty(), None).await;
    assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE);
    assert!(
        b["audit_spool_error"]
            .as_str()
            .unwrap()
            .contains("No space left on device"),
        "{b}"
    );
}

#[tokio::test]
async fn packs_and_membership_routes() {
    use base64::Engine as _;
    let n = node(true).await;
    let good = json!({
        "node_id": 4,
        "api_addr": "https://127.0.0.14:8200",
        "peer_addr": "127.0.0.14:8201",
        "voter": true,
        "ttl_secs": 3600,
        "passphrase": "correct horse battery staple",
    });
    for (change, message) in [
        (json!({"node_id": 0}), "node_id: must be at least 1"),
        (json!({"node_id": 1}), "node 1 is already a member"),
        (
            json!({"api_addr": "http://x:1"}),
            "must start with https://",
        ),
        (
            json!({"peer_addr": "nohost"}),
            "needs a host and a non-zero port",
        ),
        (
            json!({"passphrase": "short"}),
            "passphrase: at least 12 characters",
        ),
        (json!({"ttl_secs": 999999999}), "ttl: must be between"),
    ] {
        let mut body = good.clone();
        for (k, v) in change.as_object().unwrap() {
            body[k] = v.clone();
        }
        let (s, b) = n.root("POST", "/v1/sys/coffer/packs", body).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{message}: {b}");
        assert!(b["errors"][0].as_str().unwrap().contains(message), "{b}");
    }
    let (s, _) = n
        .call(
            "POST",
            "/v1/sys/coffer/packs",
            Body::from(good.to_string()),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN, "a pack needs a token with sudo");

    let (s, b) = n.root("POST", "/v1/sys/coffer/packs", good.clone()).await;
    assert_eq!(s, StatusCode::OK, "{b}");
    let file = base64::engine::general_purpose::STANDARD
        .decode(b["data"]["pack"].as_str().unwrap())
        .unwrap();
    let now = u64::try_from(time::OffsetDateTime::now_utc().unix_timestamp()).unwrap();
    let pack =
        coffer_vault::rules::pack::open_pack(&file, "correct horse battery staple", now).unwrap();
    assert_eq!((pack.node_id, pack.voter), (4, true));
    assert_eq!(pack.pack_id, b["data"]["pack_id"].as_str().unwrap());
    assert_eq!(
        coffer_tls::node_id_from_pem(&pack.node_cert_pem).unwrap(),
        4
    );
    assert_eq!(pack.members.len(), 1);
    assert!(pack.unseal_key_hex.is_none(), "no root key unless asked");
    assert!(!pack.snapshot.is_empty());
    let shown = format!("{pack:?}");
    assert!(!shown.contains("PRIVATE KEY"), "{shown}");
    let text = String::from_utf8_lossy(&file);
    assert!(!text.contains("PRIVATE KEY") && !text.contains("BEGIN CERTIFICATE"));

    let (s, b) = n.root("GET", "/v1/sys/coffer/members", Value::Null).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(b["data"]["members"][0]["node_id"], 1);
    assert_eq!(b["data"]["members"][0]["leader"], true);
    assert_eq!(b["data"]["members"][0]["voter"], true);
    let (s, b) = n
        .root("GET", "/v1/sys/storage/raft/configuration", Value::Null)
        .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(b["data"]["config"]["servers"][0]["node_id"], "1");
    assert_eq!(b["data"]["config"]["servers"][0]["address"], "127.0.0.1:2");
    let (s, b) = n.root("PUT", "/v1/sys/step-down", Value::Null).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert!(
        b["errors"][0].as_str().unwrap().contains("no other voter"),
        "{b}"
    );
    let (s, b) = n
        .root("DELETE", "/v1/sys/coffer/members/1", Value::Null)
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert!(
        b["errors"][0].as_str().unwrap().contains("only voter"),
        "{b}"
    );
    let (s, b) = n
        .root("DELETE", "/v1/sys/coffer/members/x", Value::Null)
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{b}");
    let (s, _) = n
        .root("GET", "/v1/secret/data/nothing?stale=true", Value::Null)
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
}
