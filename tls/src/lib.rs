//! Coffer's cluster PKI and every rustls configuration the product uses.
//!
//! One cluster CA issues two kinds of certificates:
//! - **node certificates**, carrying the node id in a SAN URI `coffer://node/<id>`, used on
//!   both ends of the peer (Raft) channel, which is mutual TLS;
//! - **API server certificates** for the DNS names and IPs clients dial.
//!
//! Only this crate builds rustls configs, and every config it builds speaks TLS 1.3 only.
//! It knows nothing of Raft or secrets: it is handed PEM and gives back configs.

mod config;
mod files;
mod identity;
mod pki;

pub use config::{api_client_config, api_server_config, peer_client_config, peer_server_config};
pub use files::{create_private, write_private};
pub use identity::{
    cert_fingerprint, fingerprint_pem, node_id_from_cert, node_id_from_pem, node_uri,
};
pub use pki::{node_key_request, CertificateAuthority, IssuedCert, NodeKeyRequest};

/// Why a TLS or PKI operation failed. Messages name the offending input, never key bytes.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// Certificate generation or signing failed inside rcgen.
    #[error("certificate generation failed: {0}")]
    Generate(#[from] rcgen::Error),
    /// A PEM document held no certificate or no private key, or could not be parsed.
    #[error("invalid PEM: {0}")]
    Pem(String),
    /// rustls refused the configuration (e.g. key does not match certificate).
    #[error("TLS configuration rejected: {0}")]
    Config(#[from] rustls::Error),
    /// The verifier could not be built from the given roots.
    #[error("certificate verifier: {0}")]
    Verifier(String),
    /// Writing a certificate or key file failed.
    #[error("writing {path}: {source}")]
    Io {
        /// The file that could not be written.
        path: String,
        /// The underlying error.
        source: std::io::Error,
    },
}
