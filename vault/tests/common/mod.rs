//! Shared set-up for the vault's integration tests: a real one-voter engine and audit spool
//! in a temporary directory.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use coffer_raft::{Engine, EngineConfig, NoPeers, NodeAddr, RaftTuning};
use coffer_vault::audit::Spool;
use coffer_vault::{NodeInfo, Vault};

/// A sealed, possibly uninitialized vault of node 1 over `dir`.
#[allow(dead_code)] // each test binary uses part of this module
pub async fn vault(dir: &Path) -> Vault {
    vault_and_engine(dir).await.0
}

/// [`vault`], and the engine under it (for a test that plays a disk or a peer).
#[allow(dead_code)] // each test binary uses part of this module
pub async fn vault_and_engine(dir: &Path) -> (Vault, Engine) {
    let engine = Engine::open_single(
        EngineConfig {
            node_id: 1,
            data_dir: dir.to_path_buf(),
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
    let spool = Arc::new(Spool::open(&dir.join("audit"), 1).unwrap());
    let vault = Vault::new(
        engine.clone(),
        NodeInfo {
            node_id: 1,
            api_addr: "https://127.0.0.1:1".into(),
            cluster_name: "test".into(),
        },
        spool,
    );
    (vault, engine)
}

/// An initialized, unsealed vault of node 1 over `dir`, and its root token's `Auth`.
#[allow(dead_code)] // each test binary uses part of this module
pub async fn unsealed(dir: &Path) -> (Vault, coffer_vault::Auth) {
    let v = vault(dir).await;
    let (resp, root) = v
        .init(
            coffer_vault::InitRequest {
                secret_shares: 1,
                secret_threshold: 1,
                root_token_id: None,
            },
            None,
        )
        .await
        .unwrap();
    v.unseal_with_root(root).unwrap();
    let auth = v.authenticate(Some(&resp.root_token)).unwrap();
    (v, auth)
}
