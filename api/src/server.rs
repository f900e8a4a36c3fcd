//! Starting a node: data directory, TLS material, engine, vault, dev-mode bootstrap, and the
//! HTTPS listener.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use coffer_raft::{Engine, EngineConfig, Forwarder, NodeAddr, PeerIdentity, PeerNetwork};
use coffer_tls::{write_private, CertificateAuthority};
use coffer_vault::crypto::Key;
use coffer_vault::{InitRequest, NodeInfo, StoredCa, Vault};
use zeroize::Zeroizing;

use crate::config::{SealConfig, ServerConfig};
use crate::error::ApiError;
use crate::routes::{app, AppState};

/// Dev-mode options (`coffer server --dev`).
#[derive(Clone, Debug, Default)]
pub struct DevOptions {
    /// Root token to create instead of a random one.
    pub root_token_id: Option<String>,
}

/// Files under `<data_dir>/tls`.
struct TlsPaths {
    dir: PathBuf,
}

impl TlsPaths {
    fn ca(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }
    /// The CA key exists on disk only until init moves it into the encrypted state.
    fn ca_key(&self) -> PathBuf {
        self.dir.join("ca-key.pem")
    }
    fn api(&self) -> (PathBuf, PathBuf) {
        (self.dir.join("api.pem"), self.dir.join("api-key.pem"))
    }
    fn node(&self) -> (PathBuf, PathBuf) {
        (self.dir.join("node.pem"), self.dir.join("node-key.pem"))
    }
    /// A pack's registration certificate and key, kept only until the node has registered.
    pub(crate) fn pack(&self) -> (PathBuf, PathBuf) {
        (self.dir.join("pack.pem"), self.dir.join("pack-key.pem"))
    }
}

fn read(path: &Path) -> anyhow::Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))
}

/// Ensures the node has a CA certificate, an API certificate and a node certificate. A fresh
/// node creates a cluster CA; its key stays on disk (0600) only until `sys/init`.
fn ensure_tls(
    cfg: &ServerConfig,
    paths: &TlsPaths,
    api_host: &str,
) -> anyhow::Result<Arc<rustls::ServerConfig>> {
    std::fs::create_dir_all(&paths.dir)?;
    if !paths.ca().exists() {
        let ca = CertificateAuthority::generate(&cfg.cluster_name)?;
        write_private(&paths.ca_key(), ca.key_pem().as_bytes())?;
        std::fs::write(paths.ca(), ca.cert_pem())?;
    }
    let (api_cert, api_key) = match (&cfg.tls.cert_file, &cfg.tls.key_file) {
        (Some(c), Some(k)) => (c.clone(), k.clone()),
        _ => paths.api(),
    };
    let (node_cert, node_key) = paths.node();
    if !api_cert.exists() || !node_cert.exists() {
        let ca_key = paths.ca_key();
        anyhow::ensure!(
            ca_key.exists(),
            "{} is missing and the CA key is no longer on disk; restore the TLS files or set tls.cert_file",
            api_cert.display()
        );
        let ca =
            CertificateAuthority::from_pem(&read(&paths.ca())?, &Zeroizing::new(read(&ca_key)?))?;
        let mut hosts = vec![api_host.to_string(), "localhost".into(), "127.0.0.1".into()];
        hosts.dedup();
        if !api_cert.exists() {
            let issued = ca.issue_server(&hosts)?;
            std::fs::write(&api_cert, &issued.cert_pem)?;
            write_private(&api_key, issued.key_pem.as_bytes())?;
        }
        if !node_cert.exists() {
            let peer_host = cfg
                .peer_addr
                .rsplit_once(':')
                .map_or("127.0.0.1", |(h, _)| h);
            let issued = ca.issue_node(cfg.node_id, &[peer_host.to_string()])?;
            std::fs::write(&node_cert, &issued.cert_pem)?;
            write_private(&node_key, issued.key_pem.as_bytes())?;
        }
    }
    Ok(coffer_tls::api_server_config(
        &read(&api_cert)?,
        &Zeroizing::new(read(&api_key)?),
    )?)
}

/// This node's peer certificate and key, and the CA, from `<data_dir>/tls`.
fn peer_identity(node_id: u64, paths: &TlsPaths, peer_addr: &str) -> anyhow::Result<PeerIdentity> {
    identity_from(node_id, paths, paths.node(), peer_addr)
}

fn identity_from(
    node_id: u64,
    paths: &TlsPaths,
    (cert, key): (PathBuf, PathBuf),
    peer_addr: &str,
) -> anyhow::Result<PeerIdentity> {
    let cert_pem = read(&cert)?;
    let bound = coffer_tls::node_id_from_pem(&cert_pem)?;
    anyhow::ensure!(
        bound == node_id,
        "{} is node {bound}'s certificate but node_id is {node_id}",
        cert.display()
    );
    Ok(PeerIdentity {
        node_id,
        ca_pem: read(&paths.ca())?,
        cert_pem,
        key_pem: Zeroizing::new(read(&key)?),
        // Outgoing peer connections leave from our own peer address (unless it is a
        // wildcard), so a firewall between node addresses governs both directions.
        source_ip: peer_addr
            .parse::<std::net::SocketAddr>()
            .ok()
            .map(|a| a.ip())
            .filter(|ip| !ip.is_unspecified()),
    })
}

/// The webhook client and URL, if mode changes are to be posted.
fn webhook(
    notify: &crate::config::NotifyConfig,
) -> anyhow::Result<Option<(reqwest::Client, String)>> {
    let Some(url) = &notify.webhook_url else {
        return Ok(None);
    };
    let mut builder = reqwest::Client::builder().timeout(Duration::from_secs(5));
    if let Some(ca) = &notify.ca_file {
        let tls = coffer_tls::api_client_config(&read(ca)?)?;
        builder = builder.use_preconfigured_tls((*tls).clone());
    }
    Ok(Some((builder.build()?, url.clone())))
}

/// Audits every mode change of this node and posts it to the webhook, if one is set. A
/// webhook that fails is logged; the audit record is what counts.
async fn watch_modes(vault: Arc<Vault>, webhook: Option<(reqwest::Client, String)>) {
    let mut changes = vault.engine().mode_changes();
    loop {
        let change = match changes.recv().await {
            Ok(change) => change,
            Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                tracing::warn!("{n} mode changes were missed by the auditor");
                continue;
            }
            Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
        };
        if let Err(e) = vault.audit_mode_change(&change).await {
            tracing::error!("auditing a mode change failed: {e}");
        }
        if let Some((client, url)) = &webhook {
            let body = serde_json::json!({
                "node_id": vault.node().node_id,
                "api_addr": vault.node().api_addr,
                "old_mode": change.old.as_str(),
                "new_mode": change.new.as_str(),
                "reason": change.reason,
                "time": coffer_vault::clock::rfc3339(coffer_vault::clock::now()),
            });
            let (client, url) = (client.clone(), url.clone());
            tokio::spawn(async move {
                match client.post(&url).json(&body).send().await {
                    Ok(r) if r.status().is_success() => {}
                    Ok(r) => tracing::warn!(
                        status = r.status().as_u16(),
                        "mode webhook refused the notification"
                    ),
                    Err(e) => tracing::warn!("mode webhook unreachable: {e}"),
                }
            });
        }
    }
}

/// A node that joined from a pack and has not finished registering with the cluster.
#[derive(serde::Serialize, serde::Deserialize)]
pub struct JoinState {
    /// The registration sent to the leader (with the signing request for the node's key).
    pub request: coffer_vault::JoinRequest,
    /// Members listed in the pack.
    pub members: Vec<coffer_vault::rules::pack::PackMember>,
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
    pub fn save(&self, data_dir: &Path) -> anyhow::Result<()> {
        let bytes = serde_json::to_vec_pretty(self)?;
        write_atomic(&Self::path(data_dir), &bytes, false)
    }

    fn load(data_dir: &Path) -> anyhow::Result<Option<Self>> {
        let path = Self::path(data_dir);
        match std::fs::read(&path) {
            Ok(bytes) => Ok(Some(
                serde_json::from_slice(&bytes)
                    .with_context(|| format!("reading {}", path.display()))?,
            )),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
        }
    }
}

/// Writes `bytes` to `path` through a temporary file, fsync and rename, so a crash leaves the
/// old file or the new one, never half of one; `private` files are 0600.
fn write_atomic(path: &Path, bytes: &[u8], private: bool) -> anyhow::Result<()> {
    let tmp = path.with_extension("tmp");
    if private {
        write_private(&tmp, bytes)?;
    } else {
        use std::io::Write;
        let mut f =
            std::fs::File::create(&tmp).with_context(|| format!("writing {}", tmp.display()))?;
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path).with_context(|| format!("renaming to {}", path.display()))?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir).and_then(|d| d.sync_all())?;
    }
    Ok(())
}

/// Pause after the cluster refused a registration: some refusals pass by themselves (a
/// sealed or changing leader); the reason is logged each time.
const REGISTER_RETRY_REFUSED: Duration = Duration::from_secs(5);
/// Pause between registrations while waiting to be promoted (or for a member to answer).
const REGISTER_RETRY: Duration = Duration::from_secs(1);

/// First start after `operator join`: presents the pack's registration certificate to the
/// cluster with a signing request for the node's own key, until the leader has made the node
/// a learner and issued its member certificate. Writes the certificate as `tls/node.pem`
/// and forgets the pack's certificate. The node serves nothing until then: it is no member.
async fn register_with_pack(
    cfg: &ServerConfig,
    paths: &TlsPaths,
    join: &mut JoinState,
) -> anyhow::Result<()> {
    let identity = identity_from(cfg.node_id, paths, paths.pack(), &cfg.peer_addr)?;
    let forwarder = Forwarder::new(Arc::new(identity));
    tracing::info!("registering with the cluster (first start after operator join)");
    let answer = loop {
        match coffer_vault::send_join(&forwarder, &join.members, &join.request).await {
            Ok(answer) => break answer,
            Err(why) => {
                tracing::error!("the cluster did not register this node yet: {why}");
                tokio::time::sleep(REGISTER_RETRY_REFUSED).await;
            }
        }
    };
    let bound = coffer_tls::node_id_from_pem(&answer.cert_pem)?;
    anyhow::ensure!(
        bound == cfg.node_id,
        "the cluster issued a certificate for node {bound}, this is node {}",
        cfg.node_id
    );
    let (cert, _) = paths.node();
    write_atomic(&cert, answer.cert_pem.as_bytes(), false)?;
    join.registered = true;
    join.save(&cfg.data_dir)?;
    let (pack_cert, pack_key) = paths.pack();
    let _ = std::fs::remove_file(pack_cert);
    let _ = std::fs::remove_file(pack_key);
    tracing::info!(role = %answer.role, "registered with the cluster: {}", answer.message);
    if answer.role == "voter" || !answer.wants_voter {
        std::fs::remove_file(JoinState::path(&cfg.data_dir))?;
    }
    Ok(())
}

/// A registered node waits for its promotion to voter (the pack asked for one): repeats its
/// registration, now with its member certificate, until the leader has promoted it.
async fn await_promotion(join: JoinState, forwarder: Forwarder, data_dir: PathBuf) {
    loop {
        match coffer_vault::send_join(&forwarder, &join.members, &join.request).await {
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

fn pending_ca(paths: &TlsPaths) -> anyhow::Result<Option<StoredCa>> {
    if !paths.ca_key().exists() {
        return Ok(None);
    }
    Ok(Some(StoredCa {
        cert_pem: read(&paths.ca())?,
        key_pem: read(&paths.ca_key())?,
    }))
}

/// After a successful `sys/init`: the CA key has moved into the encrypted state, so its file
/// goes; with a key-file seal the root key is written and the node unseals itself.
pub fn after_init(state: &AppState, root: Key) -> Result<(), ApiError> {
    let _ = std::fs::remove_file(
        TlsPaths {
            dir: state.tls_dir.clone(),
        }
        .ca_key(),
    );
    if let Some(path) = &state.seal_key_file {
        let hex = Zeroizing::new(hex::encode(root.expose()));
        write_private(path, hex.as_bytes())
            .map_err(|e| ApiError::Vault(coffer_vault::VaultError::internal(e)))?;
        state.vault.unseal_with_root(root)?;
    }
    Ok(())
}

fn read_key_file(path: &Path) -> anyhow::Result<Key> {
    let text = Zeroizing::new(read(path)?);
    let bytes = Zeroizing::new(hex::decode(text.trim()).context("key file is not hex")?);
    Key::from_slice(&bytes).context("key file does not hold a 256-bit key")
}

/// Runs a node until SIGINT/SIGTERM.
pub async fn run(mut cfg: ServerConfig, dev: Option<DevOptions>) -> anyhow::Result<()> {
    std::fs::create_dir_all(&cfg.data_dir)
        .with_context(|| format!("creating data_dir {}", cfg.data_dir.display()))?;
    let listener = tokio::net::TcpListener::bind(cfg.listen().map_err(anyhow::Error::msg)?)
        .await
        .context("binding the API listener")?;
    let bound = listener.local_addr()?;
    let api_host = bound.ip().to_string();
    cfg.api_addr = format!("https://{bound}");
    // Dev mode is one node: no peer port, so it never collides with anything on 8201.
    let peer_listener = if dev.is_some() {
        None
    } else {
        let listener = tokio::net::TcpListener::bind(&cfg.peer_addr)
            .await
            .with_context(|| format!("binding the peer listener on {}", cfg.peer_addr))?;
        cfg.peer_addr = listener.local_addr()?.to_string();
        Some(listener)
    };
    let paths = TlsPaths {
        dir: cfg.data_dir.join("tls"),
    };
    let mut pending_join = JoinState::load(&cfg.data_dir)?;
    if let Some(join) = pending_join.as_mut().filter(|j| !j.registered) {
        register_with_pack(&cfg, &paths, join).await?;
    }
    let pending_join = pending_join.filter(|_| JoinState::path(&cfg.data_dir).exists());
    let tls = ensure_tls(&cfg, &paths, &api_host)?;

    let identity = Arc::new(peer_identity(cfg.node_id, &paths, &cfg.peer_addr)?);
    let own_pin = coffer_tls::fingerprint_pem(&identity.cert_pem)?;
    let network = PeerNetwork::new(identity.clone());
    let contacts = network.contacts();
    let engine = Engine::open(
        EngineConfig {
            node_id: cfg.node_id,
            data_dir: cfg.data_dir.clone(),
            tuning: cfg.raft.clone(),
        },
        network,
    )
    .await?
    .with_forwarder(Arc::new(Forwarder::new(identity.clone())))
    .with_contacts(contacts);
    engine.set_standby_after(Duration::from_millis(cfg.standby_after_ms));
    if pending_join.is_none() {
        // A node that did not join from a pack starts (or restarts) the cluster it founded,
        // pinning its own certificate.
        engine
            .initialize_single(NodeAddr {
                api_addr: cfg.api_addr.clone(),
                peer_addr: cfg.peer_addr.clone(),
                cert_sha256: own_pin.clone(),
            })
            .await?;
    }
    if let Some(pinned) = engine.member_addrs().get(&cfg.node_id) {
        if pinned.cert_sha256 != own_pin {
            tracing::error!(
                "this node's certificate is not the one the cluster pins for node {}: peers will refuse it; restore tls/node.pem or join again from a new pack",
                cfg.node_id
            );
        }
    }
    if engine.member_addrs().len() == 1 && engine.member_addrs().contains_key(&cfg.node_id) {
        engine.wait_leader(Duration::from_secs(30)).await?;
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
    let spool = coffer_vault::audit::Spool::open(&cfg.data_dir.join("audit"), cfg.node_id)
        .map_err(anyhow::Error::msg)?;
    let vault = Arc::new(
        Vault::new(
            engine.clone(),
            NodeInfo {
                node_id: cfg.node_id,
                api_addr: cfg.api_addr.clone(),
                cluster_name: cfg.cluster_name.clone(),
            },
            Arc::new(spool),
        )
        .with_token_limits(coffer_vault::rules::token::TokenLimits {
            default_ttl_secs: cfg.default_lease_ttl_secs,
            max_ttl_secs: cfg.max_lease_ttl_secs,
        }),
    );
    tokio::spawn(vault.clone().run_shipper());
    tokio::spawn(vault.clone().run_revocation_sweeper());
    engine.set_app_handler(vault.peer_app_handler());
    tokio::spawn(watch_modes(vault.clone(), webhook(&cfg.notify)?));
    if let Some(join) = pending_join {
        tokio::spawn(await_promotion(
            join,
            Forwarder::new(identity.clone()),
            cfg.data_dir.clone(),
        ));
    }

    let dev_dir = cfg.data_dir.join("dev");
    let seal_key_file = match (&cfg.seal, &dev) {
        (_, Some(_)) => Some(dev_dir.join("unseal.key")),
        (SealConfig::File { path }, None) => Some(path.clone()),
        (SealConfig::Shamir, None) => None,
    };
    let state = AppState {
        vault: vault.clone(),
        max_request_bytes: cfg.max_request_bytes,
        pending_ca: Arc::new(tokio::sync::Mutex::new(pending_ca(&paths)?)),
        seal_key_file: seal_key_file.clone(),
        tls_dir: paths.dir.clone(),
        body_read_timeout: Duration::from_millis(cfg.http.read_timeout_ms),
        connections: crate::https::ConnectionStats::default(),
    };
    let connections = state.connections.clone();
    if let Some(dev) = &dev {
        dev_bootstrap(&state, dev, &dev_dir).await?;
    }
    if let Some(path) = seal_key_file.filter(|p| p.exists()) {
        if vault.is_initialized()? && vault.is_sealed() {
            audit_system(&vault, "unseal", "sys/unseal", None).await?;
            let outcome = vault.unseal_with_root(read_key_file(&path)?);
            audit_system(&vault, "unseal", "sys/unseal", Some(outcome.is_ok())).await?;
            outcome?;
        }
    }
    print_banner(&cfg, &paths, dev.is_some(), &dev_dir);

    let shutdown = async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("installing the SIGTERM handler");
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {},
            _ = term.recv() => {},
        }
        tracing::info!("shutting down");
    };
    crate::https::serve(
        listener,
        tls,
        app(state),
        cfg.http.clone(),
        connections,
        shutdown,
    )
    .await;
    let _ = peer_stop.send(());
    engine.shutdown().await?;
    Ok(())
}

/// Dev mode: initialize with one share and unseal on first start; on later starts the key
/// file unseals and the saved root token is printed again.
async fn dev_bootstrap(state: &AppState, dev: &DevOptions, dev_dir: &Path) -> anyhow::Result<()> {
    let token_file = dev_dir.join("root-token");
    if state.vault.is_initialized()? {
        if let Some(wanted) = &dev.root_token_id {
            let saved = read(&token_file).unwrap_or_default();
            if saved.trim() != wanted {
                tracing::warn!(
                    "--dev-root-token-id ignored: this data dir already has a root token"
                );
            }
        }
        return Ok(());
    }
    let request = InitRequest {
        secret_shares: 1,
        secret_threshold: 1,
        root_token_id: dev.root_token_id.clone(),
    };
    audit_system(&state.vault, "init", "sys/init", None).await?;
    let mut pending = state.pending_ca.lock().await;
    let (response, root) = state.vault.init(request, pending.as_ref()).await?;
    *pending = None;
    drop(pending);
    audit_system(&state.vault, "init", "sys/init", Some(true)).await?;
    write_private(&token_file, response.root_token.as_bytes())?;
    after_init(state, root).map_err(|e| anyhow::anyhow!("{e:?}"))?;
    Ok(())
}

/// Audits what the node does by itself at start (init in dev mode, key-file unseal): no
/// request carries these, and they are security-relevant all the same. `None` is the record
/// made before the action (as for a request), `Some(ok)` its outcome.
async fn audit_system(
    vault: &Vault,
    operation: &str,
    path: &str,
    outcome: Option<bool>,
) -> anyhow::Result<()> {
    let (kind, outcome, status) = match outcome {
        None => ("request", "pending", 0),
        Some(true) => ("response", "ok", 200),
        Some(false) => ("response", "error", 500),
    };
    let event = coffer_vault::audit::AuditEvent {
        kind: kind.into(),
        actor: "system".into(),
        auth_method: "key-file".into(),
        client_addr: "local".into(),
        operation: operation.into(),
        path: path.into(),
        outcome: outcome.into(),
        status,
        request_id: uuid::Uuid::new_v4().to_string(),
        ..Default::default()
    };
    vault.audit(event).await?;
    Ok(())
}

fn print_banner(cfg: &ServerConfig, paths: &TlsPaths, dev: bool, dev_dir: &Path) {
    println!("Coffer server");
    println!("  node id:   {}", cfg.node_id);
    println!("  data dir:  {}", cfg.data_dir.display());
    println!("  CA cert:   {}", paths.ca().display());
    if dev {
        let token = read(&dev_dir.join("root-token")).unwrap_or_default();
        println!("  root token: {}", token.trim());
        println!();
        println!(
            "Development mode: initialized and unsealed with a single key kept in {}.",
            dev_dir.display()
        );
        println!("Do not run dev mode in production. To use the CLI:");
        println!("  export COFFER_ADDR={}", cfg.api_addr);
        println!("  export COFFER_CACERT={}", paths.ca().display());
        println!("  export COFFER_TOKEN={}", token.trim());
    }
    // Last, so that whoever waits for this line has the whole banner.
    println!("Coffer server listening on {}", cfg.api_addr);
    use std::io::Write;
    let _ = std::io::stdout().flush();
}
