//! rustls server and client configurations, TLS 1.3 only, ring provider.
//!
//! - API: server authenticates with an API certificate; clients trust the cluster CA.
//! - Peer: mutual TLS. Both sides present node certificates from the cluster CA; the client
//!   additionally checks that the server's certificate binds the node id it meant to reach.

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, ServerConfig, SignatureScheme};

use crate::identity::node_id_from_cert;
use crate::TlsError;

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

pub(crate) fn certs(pem: &str) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs: Vec<_> = rustls_pemfile::certs(&mut pem.as_bytes())
        .collect::<Result<_, _>>()
        .map_err(|e| TlsError::Pem(format!("certificate: {e}")))?;
    if certs.is_empty() {
        return Err(TlsError::Pem("no certificate found".into()));
    }
    Ok(certs)
}

fn private_key(pem: &str) -> Result<PrivateKeyDer<'static>, TlsError> {
    rustls_pemfile::private_key(&mut pem.as_bytes())
        .map_err(|e| TlsError::Pem(format!("private key: {e}")))?
        .ok_or_else(|| TlsError::Pem("no private key found".into()))
}

fn roots(ca_pem: &str) -> Result<Arc<RootCertStore>, TlsError> {
    let mut store = RootCertStore::empty();
    for cert in certs(ca_pem)? {
        store
            .add(cert)
            .map_err(|e| TlsError::Pem(format!("CA certificate: {e}")))?;
    }
    Ok(Arc::new(store))
}

/// Server config for the HTTPS API: no client certificates, ALPN h2 and http/1.1.
pub fn api_server_config(cert_pem: &str, key_pem: &str) -> Result<Arc<ServerConfig>, TlsError> {
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_no_client_auth()
        .with_single_cert(certs(cert_pem)?, private_key(key_pem)?)?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// Client config for the HTTPS API that trusts only the given CA (the cluster CA, or whatever
/// CA signed a user-supplied API certificate).
pub fn api_client_config(ca_pem: &str) -> Result<Arc<ClientConfig>, TlsError> {
    let config = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(roots(ca_pem)?)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// Server config for the peer port: a client certificate from the cluster CA is required.
/// Which node the client is comes from [`node_id_from_cert`] on the verified certificate.
pub fn peer_server_config(
    ca_pem: &str,
    cert_pem: &str,
    key_pem: &str,
) -> Result<Arc<ServerConfig>, TlsError> {
    let verifier = WebPkiClientVerifier::builder_with_provider(roots(ca_pem)?, provider())
        .build()
        .map_err(|e| TlsError::Verifier(e.to_string()))?;
    let config = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(verifier)
        .with_single_cert(certs(cert_pem)?, private_key(key_pem)?)?;
    Ok(Arc::new(config))
}

/// Client config for dialing node `expected_node` on the peer port: presents our node
/// certificate and accepts the server only if its certificate is from the cluster CA, binds
/// `expected_node`, and — when the cluster pins one for that node — is the pinned
/// certificate (`pinned`: its [`crate::cert_fingerprint`]). A removed node's certificate,
/// or the pack certificate of a node not registered yet, then fails the handshake.
pub fn peer_client_config(
    ca_pem: &str,
    cert_pem: &str,
    key_pem: &str,
    expected_node: u64,
    pinned: Option<&str>,
) -> Result<Arc<ClientConfig>, TlsError> {
    let inner = WebPkiServerVerifier::builder_with_provider(roots(ca_pem)?, provider())
        .build()
        .map_err(|e| TlsError::Verifier(e.to_string()))?;
    let verifier = Arc::new(NodeServerVerifier {
        inner,
        expected_node,
        pinned: pinned.map(str::to_string),
    });
    let config = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_client_auth_cert(certs(cert_pem)?, private_key(key_pem)?)?;
    Ok(Arc::new(config))
}

/// Full WebPKI verification against the cluster CA, then the node-id binding check.
#[derive(Debug)]
struct NodeServerVerifier {
    /// Chain, validity, name and signature checks.
    inner: Arc<WebPkiServerVerifier>,
    /// The node this connection was opened to reach.
    expected_node: u64,
    /// The fingerprint the cluster pins for that node, if it pins one.
    pinned: Option<String>,
}

impl ServerCertVerifier for NodeServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.inner.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        )?;
        match node_id_from_cert(end_entity) {
            Some(id) if id == self.expected_node => match &self.pinned {
                Some(pin) if *pin != crate::cert_fingerprint(end_entity) => {
                    Err(rustls::Error::General(format!(
                        "peer certificate for node {id} is not the one the cluster pins for it (revoked or replaced)"
                    )))
                }
                _ => Ok(ServerCertVerified::assertion()),
            },
            Some(id) => Err(rustls::Error::General(format!(
                "peer certificate is for node {id}, expected node {}",
                self.expected_node
            ))),
            None => Err(rustls::Error::General(
                "peer certificate binds no node id".into(),
            )),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}
