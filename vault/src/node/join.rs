//! Joining a cluster from a bootstrap pack, on the new node's side.
//!
//! `operator join` opens the pack, makes the node's own key pair, asks the cluster whether it
//! would accept the pack ([`check`]), installs the pack's snapshot and files ([`install`]),
//! and leaves a [`JoinState`] marker. On the first start the node registers (`register`):
//! it presents the pack's registration certificate with a signing request for its own key,
//! and receives its member certificate. If the pack asked for a voter, the node then repeats
//! its registration with its member certificate until it is promoted (`await_promotion`).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use coffer_raft::Forwarder;
use serde::{Deserialize, Serialize};

use super::files::{write_atomic, TlsFiles};
use super::NodeError;
use super::NodeKey;
use crate::rules::pack::{PackContents, PackMember};
use crate::JoinRequest;

/// Pause after the cluster refused a registration: some refusals pass by themselves (a
/// sealed or changing leader); the reason is logged each time.
const REGISTER_RETRY_REFUSED: Duration = Duration::from_secs(5);
/// Pause between registrations while waiting to be promoted (or for a member to answer).
const REGISTER_RETRY: Duration = Duration::from_secs(1);

/// A node that joined from a pack and has not finished registering with the cluster.
#[derive(Serialize, Deserialize)]
pub struct JoinState {
    /// The registration sent to the leader (with the signing request for the node's key).
    pub request: JoinRequest,
    /// Members listed in the pack.
    pub members: Vec<PackMember>,
    /// Whether the cluster has made the node a member and issued its member certificate
    /// (`tls/node.pem`); until then the node holds only the pack's registration certificate.
    #[serde(default)]
    pub registered: bool,
}

impl JoinState {
    /// The file `operator join` leaves for the first start.
    pub fn path(data_dir: &Path) -> PathBuf {
        data_dir.join("join-pending.json")
    }

    /// Writes the marker (atomically: a crash leaves the old one or the new one).
    pub fn save(&self, data_dir: &Path) -> Result<(), NodeError> {
        let bytes = serde_json::to_vec_pretty(self).map_err(|e| NodeError::Files(e.to_string()))?;
        write_atomic(&Self::path(data_dir), &bytes, false)
    }

    /// The marker, if the node is still joining.
    pub fn load(data_dir: &Path) -> Result<Option<Self>, NodeError> {
        let path = Self::path(data_dir);
        match std::fs::read(&path) {
            Ok(bytes) => Ok(Some(serde_json::from_slice(&bytes).map_err(|e| {
                NodeError::Files(format!("reading {}: {e}", path.display()))
            })?)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(NodeError::Files(format!("reading {}: {e}", path.display()))),
        }
    }
}

/// What `operator join` asks of a pack before installing anything.
pub struct Prepared {
    /// The registration the node will send (with a signing request for `key`).
    pub request: JoinRequest,
    /// The node's own key pair, made here; it never leaves the machine.
    pub key: NodeKey,
}

/// Makes the node's own key and the registration for `contents`.
pub fn prepare(contents: &PackContents) -> Result<Prepared, NodeError> {
    let key = coffer_tls::node_key_request(contents.node_id)?;
    let request = JoinRequest {
        pack_id: contents.pack_id.clone(),
        cluster_id: contents.cluster_id.clone(),
        instance: uuid::Uuid::new_v4().to_string(),
        api_addr: contents.api_addr.clone(),
        peer_addr: contents.peer_addr.clone(),
        csr_pem: key.csr_pem.clone(),
    };
    Ok(Prepared { request, key })
}

/// The pack's registration identity (what presents the pack to the cluster).
fn pack_forwarder(contents: &PackContents) -> Forwarder {
    Forwarder::new(Arc::new(coffer_raft::PeerIdentity {
        node_id: contents.node_id,
        ca_pem: contents.ca_cert_pem.clone(),
        cert_pem: contents.node_cert_pem.clone(),
        key_pem: zeroize::Zeroizing::new(contents.node_key_pem.clone()),
        source_ip: None,
    }))
}

/// Asks the cluster whether it would accept the pack, without consuming it: `Ok(None)` if it
/// would, `Ok(Some(why))` if no member answered, `Err(why)` if it refuses.
pub async fn check(
    contents: &PackContents,
    request: &JoinRequest,
) -> Result<Option<String>, String> {
    crate::check_join(&pack_forwarder(contents), &contents.members, request).await
}

/// Writes the node's state (the pack's snapshot), its files (CA, the pack's certificate and
/// key, its own key, the API certificate), `coffer.toml` and the join marker under `dir`.
/// `progress(done, total)` follows the snapshot's records.
pub fn install(
    dir: &Path,
    contents: &PackContents,
    prepared: &Prepared,
    snapshot: &mut dyn std::io::Read,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<u64, NodeError> {
    if dir.join("raft").exists() {
        return Err(NodeError::Files(format!(
            "{} already holds a node's data; join needs an empty data directory",
            dir.display()
        )));
    }
    let files = TlsFiles::new(dir);
    std::fs::create_dir_all(&files.dir).map_err(|e| NodeError::Files(e.to_string()))?;
    // The snapshot is authenticated segment by segment as it streams in: a pack that fails
    // part-way leaves no state behind (a second try starts clean).
    let header = match coffer_raft::install_seed_snapshot(dir, snapshot, progress) {
        Ok(header) => header,
        Err(e) => {
            let _ = std::fs::remove_dir_all(dir.join("raft"));
            let _ = std::fs::remove_dir_all(dir.join("snapshots"));
            return Err(NodeError::Files(format!("installing the snapshot: {e}")));
        }
    };
    let write_public = |name: &str, text: &str| {
        std::fs::write(files.dir.join(name), text)
            .map_err(|e| NodeError::Files(format!("writing {name}: {e}")))
    };
    write_public("ca.pem", &contents.ca_cert_pem)?;
    // The pack's certificate registers the node once; its member certificate (for the key
    // written below) arrives at registration and becomes node.pem.
    write_public("pack.pem", &contents.node_cert_pem)?;
    write_public("api.pem", &contents.api_cert_pem)?;
    let (_, pack_key) = files.pack();
    coffer_tls::write_private(&pack_key, contents.node_key_pem.as_bytes())?;
    let (_, node_key) = files.node();
    coffer_tls::write_private(&node_key, prepared.key.key_pem.as_bytes())?;
    let (_, api_key) = files.api();
    coffer_tls::write_private(&api_key, contents.api_key_pem.as_bytes())?;
    let abs = std::fs::canonicalize(dir).map_err(|e| NodeError::Files(e.to_string()))?;
    let mut config = format!(
        "# Written by `coffer operator join` for node {id} of cluster {cluster}.\n\
         node_id = {id}\n\
         data_dir = {data:?}\n\
         api_addr = {api:?}\n\
         peer_addr = {peer:?}\n\
         cluster_name = {name:?}\n",
        id = contents.node_id,
        cluster = contents.cluster_id,
        data = abs.display().to_string(),
        api = contents.api_addr,
        peer = contents.peer_addr,
        name = contents.cluster_name,
    );
    if let Some(key) = &contents.unseal_key_hex {
        let path = abs.join("unseal.key");
        coffer_tls::write_private(&path, key.as_bytes())?;
        config.push_str(&format!(
            "seal = {{ type = \"file\", path = {:?} }}\n",
            path.display().to_string()
        ));
    }
    std::fs::write(dir.join("coffer.toml"), config).map_err(|e| NodeError::Files(e.to_string()))?;
    let state = JoinState {
        request: prepared.request.clone(),
        members: contents.members.clone(),
        registered: false,
    };
    state.save(dir)?;
    Ok(header.last_applied.map_or(0, |l| l.index))
}

/// First start after `operator join`: presents the pack's registration certificate with a
/// signing request for the node's own key, until the leader has made the node a learner and
/// issued its member certificate. Writes the certificate as `tls/node.pem` and forgets the
/// pack's certificate. The node serves nothing until then: it is no member.
pub(crate) async fn register(
    node_id: u64,
    data_dir: &Path,
    peer_addr: &str,
    join: &mut JoinState,
) -> Result<(), NodeError> {
    let files = TlsFiles::new(data_dir);
    let identity = files.identity(node_id, files.pack(), peer_addr)?;
    let forwarder = Forwarder::new(Arc::new(identity));
    tracing::info!("registering with the cluster (first start after operator join)");
    let answer = loop {
        match crate::send_join(&forwarder, &join.members, &join.request).await {
            Ok(answer) => break answer,
            Err(why) => {
                tracing::error!("the cluster did not register this node yet: {why}");
                tokio::time::sleep(REGISTER_RETRY_REFUSED).await;
            }
        }
    };
    let bound = coffer_tls::node_id_from_pem(&answer.cert_pem)?;
    if bound != node_id {
        return Err(NodeError::Files(format!(
            "the cluster issued a certificate for node {bound}, this is node {node_id}"
        )));
    }
    let (cert, _) = files.node();
    write_atomic(&cert, answer.cert_pem.as_bytes(), false)?;
    join.registered = true;
    join.save(data_dir)?;
    let (pack_cert, pack_key) = files.pack();
    let _ = std::fs::remove_file(pack_cert);
    let _ = std::fs::remove_file(pack_key);
    tracing::info!(role = %answer.role, "registered with the cluster: {}", answer.message);
    if answer.role == "voter" || !answer.wants_voter {
        std::fs::remove_file(JoinState::path(data_dir))
            .map_err(|e| NodeError::Files(e.to_string()))?;
    }
    Ok(())
}

/// A registered node waits for its promotion to voter (the pack asked for one): repeats its
/// registration, now with its member certificate, until the leader has promoted it.
pub(crate) async fn await_promotion(join: JoinState, forwarder: Forwarder, data_dir: PathBuf) {
    loop {
        match crate::send_join(&forwarder, &join.members, &join.request).await {
            Ok(answer) if answer.role == "voter" || !answer.wants_voter => {
                tracing::info!(role = %answer.role, "{}", answer.message);
                if let Err(e) = std::fs::remove_file(JoinState::path(&data_dir)) {
                    tracing::warn!("could not remove the join marker: {e}");
                }
                return;
            }
            Ok(_) => tokio::time::sleep(REGISTER_RETRY).await,
            Err(why) => {
                tracing::error!("the cluster refused this node's promotion: {why}");
                tokio::time::sleep(REGISTER_RETRY_REFUSED).await;
            }
        }
    }
}
