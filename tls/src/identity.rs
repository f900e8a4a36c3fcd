//! The node id bound into a node certificate, and how to read it back.
//!
//! A node certificate carries exactly one SAN URI of the form `coffer://node/<id>`. The peer
//! transport trusts the id in a verified certificate, never the id a peer claims in a message.

use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

const NODE_URI_PREFIX: &str = "coffer://node/";

/// The SAN URI that binds `node_id` into a certificate.
pub fn node_uri(node_id: u64) -> String {
    format!("{NODE_URI_PREFIX}{node_id}")
}

/// The node id bound into a DER certificate, if it carries exactly one well-formed node URI.
/// Returns `None` for API certificates, foreign certificates and ambiguous ones.
pub fn node_id_from_cert(der: &[u8]) -> Option<u64> {
    let (_, cert) = X509Certificate::from_der(der).ok()?;
    let san = cert.subject_alternative_name().ok()??;
    let mut ids = san
        .value
        .general_names
        .iter()
        .filter_map(|name| match name {
            GeneralName::URI(uri) => uri.strip_prefix(NODE_URI_PREFIX)?.parse::<u64>().ok(),
            _ => None,
        });
    let id = ids.next()?;
    // Two node URIs in one certificate would let one key speak for two nodes.
    ids.next().is_none().then_some(id)
}

/// The node id bound in the first certificate of a PEM document.
pub fn node_id_from_pem(pem: &str) -> Result<u64, crate::TlsError> {
    let certs = crate::config::certs(pem)?;
    certs
        .first()
        .and_then(|c| node_id_from_cert(c))
        .ok_or_else(|| crate::TlsError::Pem("the certificate binds no node id".into()))
}

/// SHA-256 of a DER certificate, lowercase hex: what the cluster pins for each member, so a
/// peer is trusted for *this* certificate, not for any the CA ever issued.
pub fn cert_fingerprint(der: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(der))
}

/// [`cert_fingerprint`] of the first certificate of a PEM document.
pub fn fingerprint_pem(pem: &str) -> Result<String, crate::TlsError> {
    let certs = crate::config::certs(pem)?;
    certs
        .first()
        .map(|c| cert_fingerprint(c))
        .ok_or_else(|| crate::TlsError::Pem("no certificate found".into()))
}
