//! Real TLS handshakes over loopback between configs built by this crate.

use std::sync::Arc;

use coffer_tls::{
    api_client_config, api_server_config, node_id_from_cert, peer_client_config,
    peer_server_config, CertificateAuthority,
};
use rustls::pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::{TlsAcceptor, TlsConnector};

/// Accepts one connection; returns the client's node id if it presented a certificate. The
/// server answers one byte so that a client whose certificate the server refused sees the
/// failure on read (TLS 1.3 client auth is checked after the client's handshake completes).
async fn serve_once(
    config: Arc<rustls::ServerConfig>,
) -> (u16, tokio::task::JoinHandle<Result<Option<u64>, String>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let task = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.map_err(|e| e.to_string())?;
        let mut tls = TlsAcceptor::from(config)
            .accept(tcp)
            .await
            .map_err(|e| e.to_string())?;
        let id = tls
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|c| c.first())
            .and_then(|c| node_id_from_cert(c));
        tls.write_all(b"k").await.map_err(|e| e.to_string())?;
        tls.flush().await.map_err(|e| e.to_string())?;
        Ok(id)
    });
    (port, task)
}

async fn dial(port: u16, config: Arc<rustls::ClientConfig>) -> Result<(), String> {
    let tcp = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let name = ServerName::try_from("127.0.0.1").unwrap();
    let mut tls = TlsConnector::from(config)
        .connect(name, tcp)
        .await
        .map_err(|e| e.to_string())?;
    let mut byte = [0u8; 1];
    tls.read_exact(&mut byte).await.map_err(|e| e.to_string())?;
    Ok(())
}

fn hosts() -> Vec<String> {
    vec!["127.0.0.1".into(), "localhost".into()]
}

#[tokio::test]
async fn api_client_trusting_the_ca_connects() {
    let ca = CertificateAuthority::generate("t").unwrap();
    let server = ca.issue_server(&hosts()).unwrap();
    let (port, task) =
        serve_once(api_server_config(&server.cert_pem, &server.key_pem).unwrap()).await;
    dial(port, api_client_config(ca.cert_pem()).unwrap())
        .await
        .unwrap();
    assert_eq!(task.await.unwrap().unwrap(), None);
}

#[tokio::test]
async fn api_client_trusting_another_ca_is_refused() {
    let ca = CertificateAuthority::generate("t").unwrap();
    let other = CertificateAuthority::generate("other").unwrap();
    let server = ca.issue_server(&hosts()).unwrap();
    let (port, _task) =
        serve_once(api_server_config(&server.cert_pem, &server.key_pem).unwrap()).await;
    let err = dial(port, api_client_config(other.cert_pem()).unwrap())
        .await
        .unwrap_err();
    assert!(err.contains("UnknownIssuer"), "{err}");
}

#[tokio::test]
async fn peers_authenticate_each_other_and_the_node_id_is_bound() {
    let ca = CertificateAuthority::generate("t").unwrap();
    let n1 = ca.issue_node(1, &hosts()).unwrap();
    let n2 = ca.issue_node(2, &hosts()).unwrap();
    let server = peer_server_config(ca.cert_pem(), &n2.cert_pem, &n2.key_pem).unwrap();
    let (port, task) = serve_once(server).await;
    let client = peer_client_config(ca.cert_pem(), &n1.cert_pem, &n1.key_pem, 2, None).unwrap();
    dial(port, client).await.unwrap();
    assert_eq!(
        task.await.unwrap().unwrap(),
        Some(1),
        "server learns the client's node id"
    );
}

#[tokio::test]
async fn node_2_cannot_pass_as_node_3() {
    let ca = CertificateAuthority::generate("t").unwrap();
    let n1 = ca.issue_node(1, &hosts()).unwrap();
    let n2 = ca.issue_node(2, &hosts()).unwrap();
    let server = peer_server_config(ca.cert_pem(), &n2.cert_pem, &n2.key_pem).unwrap();
    let (port, _task) = serve_once(server).await;
    let client = peer_client_config(ca.cert_pem(), &n1.cert_pem, &n1.key_pem, 3, None).unwrap();
    let err = dial(port, client).await.unwrap_err();
    assert!(
        err.contains("peer certificate is for node 2, expected node 3"),
        "{err}"
    );
}

#[tokio::test]
async fn peer_with_a_certificate_from_another_ca_is_refused() {
    let ca = CertificateAuthority::generate("t").unwrap();
    let other = CertificateAuthority::generate("other").unwrap();
    let n2 = ca.issue_node(2, &hosts()).unwrap();
    let stranger = other.issue_node(1, &hosts()).unwrap();
    let server = peer_server_config(ca.cert_pem(), &n2.cert_pem, &n2.key_pem).unwrap();
    let (port, task) = serve_once(server).await;
    let client = peer_client_config(
        ca.cert_pem(),
        &stranger.cert_pem,
        &stranger.key_pem,
        2,
        None,
    )
    .unwrap();
    assert!(dial(port, client).await.is_err());
    let err = task.await.unwrap().unwrap_err();
    assert!(err.contains("UnknownIssuer"), "{err}");
}

#[tokio::test]
async fn ca_reloads_from_pem_and_keeps_issuing_verifiable_certs() {
    let ca = CertificateAuthority::generate("t").unwrap();
    let reloaded = CertificateAuthority::from_pem(ca.cert_pem(), &ca.key_pem()).unwrap();
    let n5 = reloaded.issue_node(5, &hosts()).unwrap();
    let der = rustls_pemfile::certs(&mut n5.cert_pem.as_bytes())
        .next()
        .unwrap()
        .unwrap();
    assert_eq!(node_id_from_cert(&der), Some(5));
    // A certificate from the reloaded CA must verify against the original CA certificate,
    // in a real handshake with a peer whose certificate the original CA issued.
    let n1 = ca.issue_node(1, &hosts()).unwrap();
    let server = peer_server_config(ca.cert_pem(), &n5.cert_pem, &n5.key_pem).unwrap();
    let (port, task) = serve_once(server).await;
    let client = peer_client_config(ca.cert_pem(), &n1.cert_pem, &n1.key_pem, 5, None).unwrap();
    dial(port, client).await.unwrap();
    assert_eq!(task.await.unwrap().unwrap(), Some(1));
}

#[tokio::test]
async fn a_pinned_peer_with_another_certificate_for_the_same_node_is_refused() {
    let ca = CertificateAuthority::generate("t").unwrap();
    let n1 = ca.issue_node(1, &hosts()).unwrap();
    let old = ca.issue_node(2, &hosts()).unwrap();
    let new = ca.issue_node(2, &hosts()).unwrap();
    let pinned = coffer_tls::fingerprint_pem(&new.cert_pem).unwrap();
    // The old certificate of node 2 (removed, its id reused) answers at the address.
    let server = peer_server_config(ca.cert_pem(), &old.cert_pem, &old.key_pem).unwrap();
    let (port, _task) = serve_once(server).await;
    let client =
        peer_client_config(ca.cert_pem(), &n1.cert_pem, &n1.key_pem, 2, Some(&pinned)).unwrap();
    let err = dial(port, client).await.unwrap_err();
    assert!(
        err.contains("is not the one the cluster pins for it"),
        "{err}"
    );
    // The pinned certificate itself is accepted.
    let server = peer_server_config(ca.cert_pem(), &new.cert_pem, &new.key_pem).unwrap();
    let (port, task) = serve_once(server).await;
    let client =
        peer_client_config(ca.cert_pem(), &n1.cert_pem, &n1.key_pem, 2, Some(&pinned)).unwrap();
    dial(port, client).await.unwrap();
    assert_eq!(task.await.unwrap().unwrap(), Some(1));
}

#[test]
fn a_node_certificate_is_issued_for_a_key_that_never_left_the_node() {
    let ca = CertificateAuthority::generate("t").unwrap();
    let request = coffer_tls::node_key_request(7).unwrap();
    assert!(
        !format!("{request:?}").contains("PRIVATE"),
        "Debug redacts the key"
    );
    let cert = ca
        .issue_node_for_request(7, &request.csr_pem, &hosts())
        .unwrap();
    assert_eq!(coffer_tls::node_id_from_pem(&cert).unwrap(), 7);
    // The certificate and the node's own key make a working TLS identity.
    peer_server_config(ca.cert_pem(), &cert, &request.key_pem).unwrap();
    // A tampered request (signature no longer verifies) is refused.
    let mut bad = request.csr_pem.clone().into_bytes();
    let mid = bad.len() / 2;
    bad[mid] = if bad[mid] == b'A' { b'B' } else { b'A' };
    let err = ca
        .issue_node_for_request(7, &String::from_utf8(bad).unwrap(), &hosts())
        .unwrap_err();
    assert!(
        err.to_string().contains("certificate signing request"),
        "{err}"
    );
}
