//! The cluster certificate authority: creation, reloading from PEM, and issuing node and API
//! server certificates.

use std::net::IpAddr;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose, SanType,
};
use time::{Duration, OffsetDateTime};
use zeroize::Zeroizing;

use crate::identity::node_uri;
use crate::TlsError;

/// How long issued leaf certificates are valid. Long, because rotating them is an operator
/// action (re-issue through a pack) and an expired peer certificate would split the cluster.
const LEAF_VALIDITY_DAYS: i64 = 825;
/// How long the cluster CA is valid.
const CA_VALIDITY_DAYS: i64 = 3650;

/// A certificate and its private key, both PEM. The key is zeroized on drop.
pub struct IssuedCert {
    /// The certificate, PEM.
    pub cert_pem: String,
    /// The private key, PKCS#8 PEM. Never logged.
    pub key_pem: Zeroizing<String>,
}

impl std::fmt::Debug for IssuedCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IssuedCert")
            .field("key_pem", &"<redacted>")
            .finish_non_exhaustive()
    }
}

/// The cluster CA. Holds its signing key in memory; the caller decides where the key is kept
/// (in Coffer: encrypted in the replicated state, plus the dev server's data directory).
pub struct CertificateAuthority {
    /// Parameters used to sign as this CA (subject and key identifier must match the CA cert).
    params: CertificateParams,
    /// The CA signing key.
    key: KeyPair,
    /// The CA certificate, PEM, exactly as distributed to clients and peers.
    cert_pem: String,
}

impl std::fmt::Debug for CertificateAuthority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertificateAuthority")
            .finish_non_exhaustive()
    }
}

impl CertificateAuthority {
    /// Creates a new self-signed CA whose subject names the cluster.
    pub fn generate(cluster_name: &str) -> Result<Self, TlsError> {
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, "Coffer");
        dn.push(
            DnType::CommonName,
            format!("Coffer cluster CA {cluster_name}"),
        );
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let now = OffsetDateTime::now_utc();
        params.not_before = now - Duration::minutes(5);
        params.not_after = now + Duration::days(CA_VALIDITY_DAYS);
        let key = KeyPair::generate()?;
        let cert = params.self_signed(&key)?;
        Ok(Self {
            cert_pem: cert.pem(),
            params: cert.params().clone(),
            key,
        })
    }

    /// Reloads a CA from its certificate and key.
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Self, TlsError> {
        let key = KeyPair::from_pem(key_pem).map_err(|e| TlsError::Pem(format!("CA key: {e}")))?;
        let params = CertificateParams::from_ca_cert_pem(cert_pem)
            .map_err(|e| TlsError::Pem(format!("CA certificate: {e}")))?;
        Ok(Self {
            params,
            key,
            cert_pem: cert_pem.to_string(),
        })
    }

    /// The CA certificate, PEM.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The CA private key, PEM. Handle as a secret.
    pub fn key_pem(&self) -> Zeroizing<String> {
        Zeroizing::new(self.key.serialize_pem())
    }

    /// Issues a node certificate binding `node_id`, usable as both TLS server and client on the
    /// peer channel. `hosts` are the DNS names or IPs the node's peer address uses.
    pub fn issue_node(&self, node_id: u64, hosts: &[String]) -> Result<IssuedCert, TlsError> {
        let mut sans = host_sans(hosts)?;
        sans.push(SanType::URI(node_uri(node_id).try_into()?));
        self.issue(
            &format!("coffer-node-{node_id}"),
            sans,
            vec![
                ExtendedKeyUsagePurpose::ServerAuth,
                ExtendedKeyUsagePurpose::ClientAuth,
            ],
        )
    }

    /// Issues a node certificate binding `node_id` for the public key in `csr_pem`, a signing
    /// request the node made for a key that never left it (registration after a pack). Only
    /// the key is taken from the request: names, usages and validity are this CA's choice.
    /// The request's signature must verify, proving its maker holds the key.
    pub fn issue_node_for_request(
        &self,
        node_id: u64,
        csr_pem: &str,
        hosts: &[String],
    ) -> Result<String, TlsError> {
        let csr = rcgen::CertificateSigningRequestParams::from_pem(csr_pem)
            .map_err(|e| TlsError::Pem(format!("certificate signing request: {e}")))?;
        let mut sans = host_sans(hosts)?;
        sans.push(SanType::URI(node_uri(node_id).try_into()?));
        let params = leaf_params(
            &format!("coffer-node-{node_id}"),
            sans,
            vec![
                ExtendedKeyUsagePurpose::ServerAuth,
                ExtendedKeyUsagePurpose::ClientAuth,
            ],
        );
        let issuer = self.params.clone().self_signed(&self.key)?;
        Ok(params.signed_by(&csr.public_key, &issuer, &self.key)?.pem())
    }

    /// Issues an HTTPS server certificate for the API listener, valid for `hosts`.
    pub fn issue_server(&self, hosts: &[String]) -> Result<IssuedCert, TlsError> {
        let sans = host_sans(hosts)?;
        let cn = hosts.first().map(String::as_str).unwrap_or("coffer");
        self.issue(cn, sans, vec![ExtendedKeyUsagePurpose::ServerAuth])
    }

    fn issue(
        &self,
        common_name: &str,
        sans: Vec<SanType>,
        ekus: Vec<ExtendedKeyUsagePurpose>,
    ) -> Result<IssuedCert, TlsError> {
        let params = leaf_params(common_name, sans, ekus);
        let key = KeyPair::generate()?;
        let issuer = self.params.clone().self_signed(&self.key)?;
        let cert = params.signed_by(&key, &issuer, &self.key)?;
        Ok(IssuedCert {
            cert_pem: cert.pem(),
            key_pem: Zeroizing::new(key.serialize_pem()),
        })
    }
}

fn leaf_params(
    common_name: &str,
    sans: Vec<SanType>,
    ekus: Vec<ExtendedKeyUsagePurpose>,
) -> CertificateParams {
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "Coffer");
    dn.push(DnType::CommonName, common_name);
    params.distinguished_name = dn;
    params.subject_alt_names = sans;
    params.extended_key_usages = ekus;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.use_authority_key_identifier_extension = true;
    let now = OffsetDateTime::now_utc();
    params.not_before = now - Duration::minutes(5);
    params.not_after = now + Duration::days(LEAF_VALIDITY_DAYS);
    params
}

/// A key pair made on the node that will use it, and a signing request for it: a joining
/// node sends the request at registration, so its member certificate's key never travels.
pub struct NodeKeyRequest {
    /// The private key, PKCS#8 PEM. Never logged.
    pub key_pem: Zeroizing<String>,
    /// The certificate signing request, PEM (public).
    pub csr_pem: String,
}

impl std::fmt::Debug for NodeKeyRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeKeyRequest")
            .field("key_pem", &"<redacted>")
            .finish_non_exhaustive()
    }
}

/// Generates a node key pair and a signing request for node `node_id`.
pub fn node_key_request(node_id: u64) -> Result<NodeKeyRequest, TlsError> {
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, format!("coffer-node-{node_id}"));
    params.distinguished_name = dn;
    let csr = params.serialize_request(&key)?;
    Ok(NodeKeyRequest {
        key_pem: Zeroizing::new(key.serialize_pem()),
        csr_pem: csr.pem()?,
    })
}

/// Subject alternative names for host strings: an IP literal becomes an IP SAN, anything else a
/// DNS SAN. `localhost` always comes with 127.0.0.1 so the dev server works by either name.
fn host_sans(hosts: &[String]) -> Result<Vec<SanType>, TlsError> {
    let mut sans = Vec::new();
    for host in hosts {
        match host.parse::<IpAddr>() {
            Ok(ip) => sans.push(SanType::IpAddress(ip)),
            Err(_) => sans.push(SanType::DnsName(host.as_str().try_into()?)),
        }
    }
    Ok(sans)
}
