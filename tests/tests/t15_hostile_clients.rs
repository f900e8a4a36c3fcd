//! Hostile clients against a real server over real TLS: thousands of connections that never
//! speak, hundreds that finish TLS and then dribble their headers a byte at a time
//! (slowloris), and a legitimate client still answered promptly; the node evicts the idle
//! ones at its connection cap and says so in its metrics.

use std::time::{Duration, Instant};

use coffer_tests::procs::free_port;
use coffer_tests::Server;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A server with a small connection cap and short timeouts, initialized and unsealed.
fn server(dir: &std::path::Path) -> (Server, String) {
    let data = dir.join("node");
    std::fs::create_dir_all(&data).unwrap();
    let config = dir.join("node.toml");
    std::fs::write(
        &config,
        format!(
            "data_dir = {:?}\napi_addr = \"https://127.0.0.1:{}\"\npeer_addr = \"127.0.0.1:{}\"\n\
             seal = {{ type = \"file\", path = {:?} }}\n\
             [http]\nmax_connections = 256\ntls_handshake_timeout_ms = 3000\n\
             read_header_timeout_ms = 3000\nidle_timeout_ms = 5000\n",
            data.display().to_string(),
            free_port("127.0.0.1"),
            free_port("127.0.0.1"),
            dir.join("root.key").display().to_string(),
        ),
    )
    .unwrap();
    let server = Server::spawn(&["server", "--config", config.to_str().unwrap()], &data);
    let token = server.init_one_share();
    (server, token)
}

async fn metric(server: &Server, token: &str, name: &str) -> f64 {
    let out = server
        .client(token)
        .get_text("sys/metrics?format=prometheus")
        .await
        .unwrap();
    out.lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .and_then(|v| v.parse().ok())
        .unwrap_or(-1.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn idle_and_slow_connections_do_not_keep_a_client_out() {
    let dir = tempfile::tempdir().unwrap();
    let (server, token) = server(dir.path());
    let target = server.addr.trim_start_matches("https://").to_string();

    // 2000 connections that never say anything.
    let mut silent = Vec::new();
    for _ in 0..2000 {
        if let Ok(s) = TcpStream::connect(&target).await {
            silent.push(s);
        }
    }
    // 200 that complete TLS, then send a request head one byte per 500 ms.
    let tls = coffer_tls::api_client_config(&server.ca_pem).unwrap();
    let connector = tokio_rustls::TlsConnector::from(tls);
    let mut slow = Vec::new();
    for _ in 0..200 {
        let tcp = TcpStream::connect(&target).await.unwrap();
        let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
        if let Ok(stream) = connector.connect(name, tcp).await {
            slow.push(stream);
        }
    }
    let dribble = tokio::spawn(async move {
        let head = b"GET /v1/sys/health HTTP/1.1\r\nHost: coffer\r\nX-Slow: ";
        for i in 0.. {
            let byte = [head[i % head.len()]];
            let mut open = Vec::new();
            for mut s in slow.drain(..) {
                let _ = s.write_all(&byte).await;
                // A connection the server closed reads its end (or an error) at once.
                let mut buf = [0u8; 64];
                match tokio::time::timeout(Duration::from_millis(2), s.read(&mut buf)).await {
                    Ok(Ok(0)) | Ok(Err(_)) => {}
                    _ => open.push(s),
                }
            }
            slow = open;
            if slow.is_empty() {
                return i;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        0
    });

    // A legitimate client, meanwhile, is answered promptly, again and again.
    let client = server.client(&token);
    for _ in 0..5 {
        let started = Instant::now();
        let resp = client
            .request("GET", "secret/data/none?stale=true", None)
            .await;
        assert!(
            matches!(
                resp,
                Err(coffer_api::client::ClientError::Server { status: 404, .. })
            ),
            "{resp:?}"
        );
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "answered after {:?}",
            started.elapsed()
        );
    }
    assert!(
        metric(&server, &token, "coffer_http_connections_evicted_total").await > 1000.0,
        "idle connections were evicted to make room"
    );
    assert!(metric(&server, &token, "coffer_http_connections").await <= 256.0 + 4.0);
    // The slowloris connections are closed by the header timeout (or evicted): the dribbler
    // finds every one of them dead.
    let rounds = tokio::time::timeout(Duration::from_secs(30), dribble)
        .await
        .expect("slow connections are cut")
        .unwrap();
    assert!(rounds < 40, "cut after {rounds} bytes");
    drop(silent);
}
