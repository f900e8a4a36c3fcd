//! Serving a node: the HTTPS listener in front of a started [`Node`], dev-mode bootstrap,
//! key-file unseal, mode-change notifications, and the banner.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use coffer_tls::write_private;
use coffer_vault::audit::{AuditEvent, Outcome, Stage, Who};
use coffer_vault::crypto::Key;
use coffer_vault::node::{Node, NodeOptions, TlsFiles};
use coffer_vault::{InitRequest, Vault};
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

fn read(path: &Path) -> anyhow::Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))
}

/// How long a mode-change webhook may take to answer (it is posted in the background; the
/// audit record is what counts).
const WEBHOOK_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a restored node waits before trying again to finish its restore.
const FINISH_RESTORE_RETRY: Duration = Duration::from_millis(500);

/// The webhook client and URL, if mode changes are to be posted.
fn webhook(
    notify: &crate::config::NotifyConfig,
) -> anyhow::Result<Option<(reqwest::Client, String)>> {
    let Some(url) = &notify.webhook_url else {
        return Ok(None);
    };
    let mut builder = reqwest::Client::builder().timeout(WEBHOOK_TIMEOUT);
    if let Some(ca) = &notify.ca_file {
        let tls = coffer_tls::api_client_config(&read(ca)?)?;
        builder = builder.use_preconfigured_tls((*tls).clone());
    }
    Ok(Some((builder.build()?, url.clone())))
}

/// Audits every mode change of this node and posts it to the webhook, if one is set. A
/// webhook that fails is logged; the audit record is what counts.
async fn watch_modes(vault: Arc<Vault>, webhook: Option<(reqwest::Client, String)>) {
    let mut changes = vault.mode_changes();
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

/// After a successful `sys/init`: the CA key has moved into the encrypted state, so its file
/// goes; with a key-file seal the root key is written and the node unseals itself.
pub fn after_init(state: &AppState, root: Key) -> Result<(), ApiError> {
    state.tls.forget_ca_key();
    if let Some(path) = &state.seal_key_file {
        let hex = Zeroizing::new(hex::encode(root.expose()));
        write_private(path, hex.as_bytes())
            .map_err(|e| ApiError::Vault(coffer_vault::VaultError::internal(e)))?;
        state.vault.unseal_with_root(root)?;
    }
    Ok(())
}

/// After an unseal: a restored node finishes its restore (moves its new CA into the state,
/// audits the restore, clears the marker). In the background, since the one-voter cluster
/// may still be electing itself; retried until done or sealed again.
pub fn after_unseal(state: &AppState) {
    let (vault, pending, tls) = (
        state.vault.clone(),
        state.pending_ca.clone(),
        state.tls.clone(),
    );
    tokio::spawn(async move {
        loop {
            if vault.is_sealed() {
                return;
            }
            let mut ca = pending.lock().await;
            match vault.finish_restore(ca.as_ref()).await {
                Ok(_) => {
                    // An unsealed node's CA key lives only in the encrypted state; a file
                    // left by a crash between a restore's finish and this line goes too.
                    *ca = None;
                    tls.forget_ca_key();
                    return;
                }
                Err(e) => tracing::warn!("finishing the restore (will retry): {e}"),
            }
            drop(ca);
            tokio::time::sleep(FINISH_RESTORE_RETRY).await;
        }
    });
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
    // The configured `api_addr` is what clients and peers are told, and what the API
    // certificate names: a container listens on 0.0.0.0 and is reached at its own address.
    // Only a port the system picked (0) is filled in from the socket.
    let (api_host, api_port) =
        crate::config::api_host_port(&cfg.api_addr).map_err(anyhow::Error::msg)?;
    let api_host = if api_port == 0 {
        cfg.api_addr = format!("https://{bound}");
        bound.ip().to_string()
    } else {
        api_host
    };
    // Dev mode is one node: no peer port, so it never collides with anything on 8201.
    let options = NodeOptions {
        node_id: cfg.node_id,
        data_dir: cfg.data_dir.clone(),
        api_addr: cfg.api_addr.clone(),
        peer_addr: dev.is_none().then(|| cfg.peer_addr.clone()),
        cluster_name: cfg.cluster_name.clone(),
        raft: cfg.raft.clone(),
        storage: cfg.storage.clone(),
        standby_after: Duration::from_millis(cfg.standby_after_ms),
        token_limits: coffer_vault::rules::token::TokenLimits {
            default_ttl_secs: cfg.default_lease_ttl_secs,
            max_ttl_secs: cfg.max_lease_ttl_secs,
        },
        api_tls_files: cfg.tls.cert_file.clone().zip(cfg.tls.key_file.clone()),
        backup: cfg
            .backup
            .as_ref()
            .map(crate::config::BackupConfig::schedule)
            .transpose()
            .map_err(anyhow::Error::msg)?,
        audit_archive_after: cfg.audit.archive_after().map_err(anyhow::Error::msg)?,
    };
    let (node, api_cert, api_key) = Node::start(options, &api_host).await?;
    if let Some(peer_addr) = &node.peer_addr {
        cfg.peer_addr = peer_addr.clone();
    }
    let tls = coffer_tls::api_server_config(&api_cert, &api_key)?;
    let vault = node.vault.clone();
    tokio::spawn(watch_modes(vault.clone(), webhook(&cfg.notify)?));

    let dev_dir = cfg.data_dir.join("dev");
    let seal_key_file = match (&cfg.seal, &dev) {
        (_, Some(_)) => Some(dev_dir.join("unseal.key")),
        (SealConfig::File { path }, None) => Some(path.clone()),
        (SealConfig::Shamir, None) => None,
    };
    let state = AppState {
        vault: vault.clone(),
        max_request_bytes: cfg.max_request_bytes,
        pending_ca: Arc::new(tokio::sync::Mutex::new(node.files.pending_ca()?)),
        seal_key_file: seal_key_file.clone(),
        tls: node.files.clone(),
        body_read_timeout: Duration::from_millis(cfg.http.read_timeout_ms),
        connections: crate::https::ConnectionStats::default(),
        http: Default::default(),
        metrics_open_to: Arc::new(cfg.telemetry.open_networks().map_err(anyhow::Error::msg)?),
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
            after_unseal(&state);
        }
    }
    print_banner(&cfg, &node.files, dev.is_some(), &dev_dir);
    tracing::info!(api_addr = %cfg.api_addr, socket = %bound, "API listening");

    let shutdown = async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("installing the SIGTERM handler");
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {},
            _ = term.recv() => {},
        }
        tracing::info!("shutting down");
        crate::sd_notify::notify("STOPPING=1");
    };
    // The listener is bound and the node open (sealed or not): a service manager may call
    // it started. Connections made before `serve` runs wait in the listen backlog.
    crate::sd_notify::notify("READY=1");
    crate::https::serve(
        listener,
        tls,
        app(state),
        cfg.http.clone(),
        connections,
        shutdown,
    )
    .await;
    node.shutdown().await?;
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
    let (stage, outcome, status) = match outcome {
        None => (Stage::Request, Outcome::Pending, 0),
        Some(true) => (Stage::Response, Outcome::Ok, 200),
        Some(false) => (Stage::Response, Outcome::Error, 500),
    };
    let who = Who {
        name: "system".into(),
        method: "key-file".into(),
        client_addr: "local".into(),
        ..Default::default()
    };
    let event = AuditEvent {
        status,
        ..AuditEvent::new(stage, who, operation, path, outcome)
    };
    vault.audit(event).await?;
    Ok(())
}

fn print_banner(cfg: &ServerConfig, paths: &TlsFiles, dev: bool, dev_dir: &Path) {
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
