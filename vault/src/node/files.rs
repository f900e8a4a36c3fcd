//! The node's TLS files under `<data_dir>/tls`: the cluster CA certificate (and, until
//! `sys/init` moves it into the encrypted state, its key), the API certificate, the node's
//! peer certificate and key, and — between `operator join` and registration — the pack's
//! registration certificate. Keys are written 0600.

use std::path::{Path, PathBuf};

use coffer_raft::PeerIdentity;
use coffer_tls::{write_private, CertificateAuthority};
use zeroize::Zeroizing;

use super::NodeError;
use crate::StoredCa;

/// The files under `<data_dir>/tls`.
#[derive(Clone, Debug)]
pub struct TlsFiles {
    /// `<data_dir>/tls`.
    pub dir: PathBuf,
}

pub(crate) fn read(path: &Path) -> Result<String, NodeError> {
    std::fs::read_to_string(path)
        .map_err(|e| NodeError::Files(format!("reading {}: {e}", path.display())))
}

fn files<E: std::fmt::Display>(e: E) -> NodeError {
    NodeError::Files(e.to_string())
}

impl TlsFiles {
    /// The layout under `data_dir`.
    pub fn new(data_dir: &Path) -> Self {
        Self {
            dir: data_dir.join("tls"),
        }
    }

    /// The cluster CA certificate.
    pub fn ca(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }

    /// The CA key: on disk only until init moves it into the encrypted state.
    pub fn ca_key(&self) -> PathBuf {
        self.dir.join("ca-key.pem")
    }

    /// The API certificate and key issued by the cluster CA.
    pub fn api(&self) -> (PathBuf, PathBuf) {
        (self.dir.join("api.pem"), self.dir.join("api-key.pem"))
    }

    /// The node's member certificate and its key.
    pub fn node(&self) -> (PathBuf, PathBuf) {
        (self.dir.join("node.pem"), self.dir.join("node-key.pem"))
    }

    /// A pack's registration certificate and key, kept only until the node has registered.
    pub fn pack(&self) -> (PathBuf, PathBuf) {
        (self.dir.join("pack.pem"), self.dir.join("pack-key.pem"))
    }

    /// Ensures a CA certificate, an API certificate (unless `api_files` names the operator's
    /// own) and a node certificate exist. A fresh node creates the cluster CA; its key stays
    /// on disk (0600) only until `sys/init`. Returns the API certificate and key, PEM.
    pub fn ensure(
        &self,
        cluster_name: &str,
        node_id: u64,
        peer_addr: &str,
        api_host: &str,
        api_files: Option<(PathBuf, PathBuf)>,
    ) -> Result<(String, Zeroizing<String>), NodeError> {
        std::fs::create_dir_all(&self.dir).map_err(files)?;
        if !self.ca().exists() {
            let ca = CertificateAuthority::generate(cluster_name)?;
            write_private(&self.ca_key(), ca.key_pem().as_bytes())?;
            std::fs::write(self.ca(), ca.cert_pem()).map_err(files)?;
        }
        let (api_cert, api_key) = api_files.unwrap_or_else(|| self.api());
        let (node_cert, node_key) = self.node();
        if !api_cert.exists() || !node_cert.exists() {
            let ca_key = self.ca_key();
            if !ca_key.exists() {
                return Err(NodeError::Files(format!(
                    "{} is missing and the CA key is no longer on disk; restore the TLS files or set tls.cert_file",
                    api_cert.display()
                )));
            }
            let ca = CertificateAuthority::from_pem(
                &read(&self.ca())?,
                &Zeroizing::new(read(&ca_key)?),
            )?;
            let mut hosts = vec![api_host.to_string(), "localhost".into(), "127.0.0.1".into()];
            hosts.dedup();
            if !api_cert.exists() {
                let issued = ca.issue_server(&hosts)?;
                std::fs::write(&api_cert, &issued.cert_pem).map_err(files)?;
                write_private(&api_key, issued.key_pem.as_bytes())?;
            }
            if !node_cert.exists() {
                let peer_host = peer_addr.rsplit_once(':').map_or("127.0.0.1", |(h, _)| h);
                let issued = ca.issue_node(node_id, &[peer_host.to_string()])?;
                std::fs::write(&node_cert, &issued.cert_pem).map_err(files)?;
                write_private(&node_key, issued.key_pem.as_bytes())?;
            }
        }
        Ok((read(&api_cert)?, Zeroizing::new(read(&api_key)?)))
    }

    /// The CA this node generated before init, while its key is still on disk.
    pub fn pending_ca(&self) -> Result<Option<StoredCa>, NodeError> {
        if !self.ca_key().exists() {
            return Ok(None);
        }
        Ok(Some(StoredCa {
            cert_pem: read(&self.ca())?,
            key_pem: read(&self.ca_key())?,
        }))
    }

    /// After init moved the CA key into the encrypted state: its file goes.
    pub fn forget_ca_key(&self) {
        let _ = std::fs::remove_file(self.ca_key());
    }

    /// The identity in `(cert, key)` for node `node_id`, with the CA; outgoing peer
    /// connections leave from `peer_addr`'s IP (unless a wildcard), so a firewall between
    /// node addresses governs both directions.
    pub(crate) fn identity(
        &self,
        node_id: u64,
        (cert, key): (PathBuf, PathBuf),
        peer_addr: &str,
    ) -> Result<PeerIdentity, NodeError> {
        let cert_pem = read(&cert)?;
        let bound = coffer_tls::node_id_from_pem(&cert_pem)?;
        if bound != node_id {
            return Err(NodeError::Files(format!(
                "{} is node {bound}'s certificate but node_id is {node_id}",
                cert.display()
            )));
        }
        Ok(PeerIdentity {
            node_id,
            ca_pem: read(&self.ca())?,
            cert_pem,
            key_pem: Zeroizing::new(read(&key)?),
            source_ip: peer_addr
                .parse::<std::net::SocketAddr>()
                .ok()
                .map(|a| a.ip())
                .filter(|ip| !ip.is_unspecified()),
        })
    }
}

/// Writes `bytes` to `path` through a temporary file, fsync and rename, so a crash leaves the
/// old file or the new one, never half of one; `private` files are 0600.
pub fn write_atomic(path: &Path, bytes: &[u8], private: bool) -> Result<(), NodeError> {
    use std::io::Write;
    let tmp = path.with_extension("tmp");
    if private {
        write_private(&tmp, bytes)?;
    } else {
        let mut f = std::fs::File::create(&tmp)
            .map_err(|e| NodeError::Files(format!("writing {}: {e}", tmp.display())))?;
        f.write_all(bytes).map_err(files)?;
        f.sync_all().map_err(files)?;
    }
    std::fs::rename(&tmp, path)
        .map_err(|e| NodeError::Files(format!("renaming to {}: {e}", path.display())))?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(files)?;
    }
    Ok(())
}
