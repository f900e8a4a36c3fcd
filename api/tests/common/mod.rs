//! A one-voter node driven in-process with `oneshot` (no socket), shared by the API tests.

#![allow(dead_code)] // each test binary uses part of this module

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use axum::Router;
use coffer_api::routes::{app, AppState};
use coffer_raft::{Engine, EngineConfig, NoPeers, NodeAddr, RaftTuning};
use coffer_vault::{InitRequest, NodeInfo, Vault};
use serde_json::Value;
use tower::ServiceExt;

pub const LIMIT: usize = 64 * 1024;

/// A node: its router, root token and directory.
pub struct Node {
    /// The whole HTTP surface.
    pub app: Router,
    /// The root token (empty if not initialized).
    pub token: String,
    /// The vault behind the router.
    pub vault: Arc<Vault>,
    /// The engine under the vault (for a test that plays a peer or a disk).
    pub engine: Engine,
    /// The router's state.
    pub state: AppState,
    /// The data directory.
    pub _dir: tempfile::TempDir,
}

/// A fresh node, initialized and unsealed if `init`.
pub async fn node(init: bool) -> Node {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::open_single(
        EngineConfig {
            node_id: 1,
            data_dir: dir.path().to_path_buf(),
            tuning: RaftTuning::default(),
            storage: Default::default(),
        },
        NoPeers,
        NodeAddr {
            api_addr: "https://127.0.0.1:1".into(),
            peer_addr: "127.0.0.1:2".into(),
            cert_sha256: String::new(),
        },
        Duration::from_secs(10),
    )
    .await
    .unwrap();
    let vault = Arc::new(Vault::new(
        engine.clone(),
        NodeInfo {
            node_id: 1,
            api_addr: "https://127.0.0.1:1".into(),
            cluster_name: "t".into(),
        },
        std::sync::Arc::new(
            coffer_vault::audit::Spool::open(&dir.path().join("audit"), 1).unwrap(),
        ),
    ));
    let mut token = String::new();
    if init {
        let ca = coffer_tls::CertificateAuthority::generate("t").unwrap();
        let stored = coffer_vault::StoredCa {
            cert_pem: ca.cert_pem().to_string(),
            key_pem: ca.key_pem().to_string(),
        };
        let (resp, root) = vault
            .init(
                InitRequest {
                    secret_shares: 1,
                    secret_threshold: 1,
                    root_token_id: None,
                },
                Some(&stored),
            )
            .await
            .unwrap();
        vault.unseal_with_root(root).unwrap();
        token = resp.root_token.clone();
    }
    let state = AppState {
        vault: vault.clone(),
        max_request_bytes: LIMIT,
        pending_ca: Arc::new(tokio::sync::Mutex::new(None)),
        seal_key_file: None,
        tls: coffer_vault::node::TlsFiles::new(dir.path()),
        body_read_timeout: Duration::from_secs(30),
        connections: Default::default(),
        http: Default::default(),
        metrics_open_to: Default::default(),
    };
    Node {
        app: app(state.clone()),
        state,
        token,
        vault,
        engine,
        _dir: dir,
    }
}

impl Node {
    /// One request; the answer's status and JSON body.
    pub async fn call(
        &self,
        method: &str,
        path: &str,
        body: impl Into<Body>,
        token: Option<&str>,
    ) -> (StatusCode, Value) {
        let mut req = Request::builder().method(method).uri(path);
        if let Some(t) = token {
            req = req.header("X-Vault-Token", t);
        }
        let resp = self
            .app
            .clone()
            .oneshot(req.body(body.into()).unwrap())
            .await
            .unwrap();
        let status = resp.status();
        let bytes = axum::body::to_bytes(resp.into_body(), usize::MAX)
            .await
            .unwrap();
        (
            status,
            serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        )
    }

    /// One request with the root token.
    pub async fn root(&self, method: &str, path: &str, body: Value) -> (StatusCode, Value) {
        let body = if body.is_null() {
            Body::empty()
        } else {
            Body::from(body.to_string())
        };
        let token = self.token.clone();
        self.call(method, path, body, Some(&token)).await
    }
}
