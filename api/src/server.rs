//! Starting a node: data directory, TLS material, engine, vault, dev-mode bootstrap, and the
//! HTTPS listener.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use coffer_raft::{Engine, EngineConfig, NoPeers, NodeAddr};
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
    let paths = TlsPaths {
        dir: cfg.data_dir.join("tls"),
    };
    let tls = ensure_tls(&cfg, &paths, &api_host)?;

    let engine = Engine::open_single(
        EngineConfig {
            node_id: cfg.node_id,
            data_dir: cfg.data_dir.clone(),
            tuning: cfg.raft.clone(),
        },
        NoPeers,
        NodeAddr {
            api_addr: cfg.api_addr.clone(),
            peer_addr: cfg.peer_addr.clone(),
        },
        Duration::from_secs(30),
    )
    .await?;
    let spool = coffer_vault::audit::Spool::open(&cfg.data_dir.join("audit"), cfg.node_id)
        .map_err(anyhow::Error::msg)?;
    let vault = Arc::new(Vault::new(
        engine.clone(),
        NodeInfo {
            node_id: cfg.node_id,
            api_addr: cfg.api_addr.clone(),
            cluster_name: cfg.cluster_name.clone(),
        },
        Arc::new(spool),
    ));
    tokio::spawn(vault.clone().run_shipper());

    let dev_dir = cfg.data_dir.join("dev");
    let seal_key_file = match (&cfg.seal, &dev) {
        (_, Some(_)) => Some(dev_dir.join("unseal.key")),
        (SealConfig::File { path }, None) => Some(path.clone()),
        (SealConfig::Shamir, None) => None,
    };
    let state = AppState {
        vault: vault.clone(),
        max_request_bytes: cfg.max_request_bytes,
        pending_ca: Arc::new(Mutex::new(pending_ca(&paths)?)),
        seal_key_file: seal_key_file.clone(),
        tls_dir: paths.dir.clone(),
    };
    if let Some(dev) = &dev {
        dev_bootstrap(&state, dev, &dev_dir).await?;
    }
    if let Some(path) = seal_key_file.filter(|p| p.exists()) {
        if vault.is_initialized()? && vault.is_sealed() {
            let outcome = vault.unseal_with_root(read_key_file(&path)?);
            audit_system(&vault, "unseal", "sys/unseal", outcome.is_ok()).await?;
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
    crate::https::serve(listener, tls, app(state), shutdown).await;
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
    let ca = state.pending_ca.lock().ok().and_then(|mut ca| ca.take());
    let (response, root) = state.vault.init(request, ca).await?;
    audit_system(&state.vault, "init", "sys/init", true).await?;
    write_private(&token_file, response.root_token.as_bytes())?;
    after_init(state, root).map_err(|e| anyhow::anyhow!("{e:?}"))?;
    Ok(())
}

/// Audits what the node does by itself at start (init in dev mode, key-file unseal): no
/// request carries these, and they are security-relevant all the same.
async fn audit_system(vault: &Vault, operation: &str, path: &str, ok: bool) -> anyhow::Result<()> {
    let event = coffer_vault::audit::AuditEvent {
        actor: "system".into(),
        auth_method: "key-file".into(),
        client_addr: "local".into(),
        operation: operation.into(),
        path: path.into(),
        outcome: if ok { "ok" } else { "error" }.into(),
        status: if ok { 200 } else { 500 },
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
