//! Running a node: its files, the replicated engine and the peer transport, the vault over
//! them, and the tasks that keep it going (audit shipping, revocation sweeps, registration
//! after a pack). The API layer starts a [`Node`] and serves HTTPS in front of its vault; it
//! never touches the engine.

mod files;
pub mod join;
pub mod restore;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use coffer_raft::{Engine, EngineConfig, Forwarder, NodeAddr, PeerNetwork};

pub use coffer_raft::{MemberStatus, ModeChange, NodeMode, RaftTuning, StorageTuning};
pub use coffer_tls::NodeKeyRequest as NodeKey;
pub use files::{write_atomic, TlsFiles};

use crate::audit::{Spool, SpoolError};
use crate::rules::token::TokenLimits;
use crate::{NodeInfo, Vault, VaultError};
use join::JoinState;

/// How long a founding node waits to be elected leader of its own one-voter cluster.
const FOUNDER_ELECTION_WAIT: Duration = Duration::from_secs(30);

/// Why a node could not start.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// Reading or writing the node's files.
    #[error("{0}")]
    Files(String),
    /// A certificate or key.
    #[error(transparent)]
    Tls(#[from] coffer_tls::TlsError),
    /// The replicated engine.
    #[error(transparent)]
    Engine(#[from] coffer_raft::EngineError),
    /// The audit spool.
    #[error(transparent)]
    Spool(#[from] SpoolError),
    /// The vault.
    #[error(transparent)]
    Vault(#[from] VaultError),
    /// A listener.
    #[error("{0}")]
    Listen(String),
}

/// What a node needs to start.
#[derive(Clone, Debug)]
pub struct NodeOptions {
    /// Raft node id.
    pub node_id: u64,
    /// Where its state lives.
    pub data_dir: PathBuf,
    /// The HTTPS URL clients reach it at.
    pub api_addr: String,
    /// The peer listener's `host:port` (port 0 picks one); `None` opens no peer port (dev
    /// mode: one node).
    pub peer_addr: Option<String>,
    /// Cluster name (a fresh CA's subject, `sys/health`).
    pub cluster_name: String,
    /// Raft timings.
    pub raft: RaftTuning,
    /// RocksDB's footprint.
    pub storage: coffer_raft::StorageTuning,
    /// No contact (or quorum) for this long turns the node read-only.
    pub standby_after: Duration,
    /// Token lifetimes.
    pub token_limits: TokenLimits,
    /// The operator's own API certificate and key files, instead of ones the CA issues.
    pub api_tls_files: Option<(PathBuf, PathBuf)>,
    /// Scheduled backups.
    pub backup: Option<crate::BackupSchedule>,
    /// Merged audit records older than this move to archive segments (`None`: never).
    pub audit_archive_after: Option<Duration>,
}

/// A running node.
pub struct Node {
    /// Its vault (the only thing the API layer talks to).
    pub vault: Arc<Vault>,
    /// The peer listener's address, once bound (`None` in dev mode).
    pub peer_addr: Option<String>,
    /// The node's TLS files.
    pub files: TlsFiles,
    /// The engine, kept for shutdown.
    engine: Engine,
    /// Stops the peer server.
    peer_stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Node {
    /// Starts the node: binds the peer port, registers with the cluster first if it joined
    /// from a pack, opens the engine (a founder initializes its one-voter cluster, pinning
    /// its own certificate), serves peers, and starts the vault and its tasks.
    pub async fn start(
        opts: NodeOptions,
        api_host: &str,
    ) -> Result<(Node, String, zeroize::Zeroizing<String>), NodeError> {
        let peer_listener = match &opts.peer_addr {
            Some(addr) => Some(tokio::net::TcpListener::bind(addr).await.map_err(|e| {
                NodeError::Listen(format!("binding the peer listener on {addr}: {e}"))
            })?),
            None => None,
        };
        let peer_addr = match &peer_listener {
            Some(l) => l
                .local_addr()
                .map_err(|e| NodeError::Listen(e.to_string()))?
                .to_string(),
            None => "127.0.0.1:0".to_string(),
        };
        let files = TlsFiles::new(&opts.data_dir);
        let mut pending_join = JoinState::load(&opts.data_dir)?;
        if let Some(join) = pending_join.as_mut().filter(|j| !j.registered) {
            join::register(opts.node_id, &opts.data_dir, &peer_addr, join).await?;
        }
        let pending_join = pending_join.filter(|_| JoinState::path(&opts.data_dir).exists());
        let (api_cert, api_key) = files.ensure(
            &opts.cluster_name,
            opts.node_id,
            &peer_addr,
            api_host,
            opts.api_tls_files.clone(),
        )?;

        let identity = Arc::new(files.identity(opts.node_id, files.node(), &peer_addr)?);
        let own_pin = coffer_tls::fingerprint_pem(&identity.cert_pem)?;
        let network = PeerNetwork::new(identity.clone());
        let contacts = network.contacts();
        let engine = Engine::open(
            EngineConfig {
                node_id: opts.node_id,
                data_dir: opts.data_dir.clone(),
                tuning: opts.raft.clone(),
                storage: opts.storage.clone(),
            },
            network,
        )
        .await?
        .with_forwarder(Arc::new(Forwarder::new(identity.clone())))
        .with_contacts(contacts);
        engine.set_standby_after(opts.standby_after);
        if pending_join.is_none() {
            // A node that did not join from a pack starts (or restarts) the cluster it
            // founded, pinning its own certificate.
            engine
                .initialize_single(NodeAddr {
                    api_addr: opts.api_addr.clone(),
                    peer_addr: peer_addr.clone(),
                    cert_sha256: own_pin.clone(),
                })
                .await?;
        }
        if let Some(pinned) = engine.member_addrs().get(&opts.node_id) {
            if pinned.cert_sha256 != own_pin {
                tracing::error!(
                    "this node's certificate is not the one the cluster pins for node {}: peers will refuse it; restore tls/node.pem or join again from a new pack",
                    opts.node_id
                );
            }
        }
        let members = engine.member_addrs();
        if members.len() == 1 && members.contains_key(&opts.node_id) {
            engine.wait_leader(FOUNDER_ELECTION_WAIT).await?;
        }
        let (peer_stop, peer_stopped) = tokio::sync::oneshot::channel::<()>();
        if let Some(listener) = peer_listener {
            let tls = coffer_tls::peer_server_config(
                &identity.ca_pem,
                &identity.cert_pem,
                &identity.key_pem,
            )?;
            tokio::spawn(coffer_raft::serve_peers(
                listener,
                tls,
                engine.clone(),
                async move {
                    let _ = peer_stopped.await;
                },
            ));
        }
        let spool = Spool::open(&opts.data_dir.join("audit"), opts.node_id)?;
        let vault = Arc::new(
            Vault::new(
                engine.clone(),
                NodeInfo {
                    node_id: opts.node_id,
                    api_addr: opts.api_addr.clone(),
                    cluster_name: opts.cluster_name.clone(),
                },
                Arc::new(spool),
            )
            .with_token_limits(opts.token_limits),
        );
        tokio::spawn(vault.clone().run_shipper());
        tokio::spawn(vault.clone().run_revocation_sweeper());
        if let Some(schedule) = opts.backup.clone() {
            tokio::spawn(vault.clone().run_backup_schedule(schedule));
        }
        if let Some(after) = opts.audit_archive_after {
            tokio::spawn(vault.clone().run_archiver(after));
        }
        engine.set_app_handler(vault.peer_app_handler());
        if let Some(join) = pending_join {
            tokio::spawn(join::await_promotion(
                join,
                Forwarder::new(identity.clone()),
                opts.data_dir.clone(),
            ));
        }
        let node = Node {
            vault,
            peer_addr: opts.peer_addr.as_ref().map(|_| peer_addr),
            files,
            engine,
            peer_stop: Some(peer_stop),
        };
        Ok((node, api_cert, api_key))
    }

    /// Stops the peer server and Raft.
    pub async fn shutdown(mut self) -> Result<(), NodeError> {
        if let Some(stop) = self.peer_stop.take() {
            let _ = stop.send(());
        }
        self.engine.shutdown().await?;
        Ok(())
    }
}
