//! A server started from a config file: starts sealed, `operator init` with 5 shares and a
//! threshold of 3, two shares leave it sealed, a foreign share is refused and counted, the
//! third share unseals; a restart seals it again. A key-file seal unseals itself on restart.

use std::path::Path;

use coffer_tests::Server;
use serde_json::Value;

fn write_config(dir: &Path, extra: &str) -> std::path::PathBuf {
    let data = dir.join("node");
    let path = dir.join("coffer.toml");
    let text = format!(
        "node_id = 1\ndata_dir = \"{}\"\napi_addr = \"https://127.0.0.1:0\"\npeer_addr = \"127.0.0.1:0\"\n{extra}\n",
        data.display()
    );
    std::fs::write(&path, text).unwrap();
    path
}

fn start(config: &Path, dir: &Path) -> Server {
    Server::spawn(
        &["server", "--config", config.to_str().unwrap()],
        &dir.join("node"),
    )
}

fn cli(server: &Server, token: &str, args: &[&str]) -> (i32, String, String) {
    server.cli(token, args)
}

fn status(server: &Server) -> Value {
    let (_, out, _) = cli(server, "", &["operator", "status", "-format=json"]);
    serde_json::from_str(&out).unwrap()
}

#[test]
fn shamir_three_of_five_from_the_cli() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), "");
    let server = start(&config, dir.path());
    assert_eq!(status(&server)["initialized"], false);

    let (code, out, err) = cli(&server, "", &["operator", "init", "-format=json"]);
    assert_eq!(code, 0, "{err}");
    let init: Value = serde_json::from_str(&out).unwrap();
    let keys: Vec<String> = serde_json::from_value(init["keys_base64"].clone()).unwrap();
    let token = init["root_token"].as_str().unwrap().to_string();
    assert_eq!(keys.len(), 5);
    assert!(
        !dir.path().join("node/tls/ca-key.pem").exists(),
        "the CA key moved into the encrypted state"
    );

    let (code, _, err) = cli(&server, &token, &["kv", "get", "secret/x"]);
    assert_eq!(code, 2, "sealed: server error; {err}");
    assert!(err.contains("Vault is sealed"), "{err}");

    for key in &keys[..2] {
        let (code, _, err) = cli(&server, "", &["operator", "unseal", key]);
        assert_eq!(code, 0, "{err}");
    }
    let s = status(&server);
    assert_eq!(
        (s["sealed"].clone(), s["progress"].clone()),
        (Value::Bool(true), Value::from(2))
    );

    let foreign = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8g";
    let (code, _, err) = cli(&server, "", &["operator", "unseal", foreign]);
    assert_eq!(code, 2);
    assert!(err.contains("not one of this vault's key shares"), "{err}");
    let s = status(&server);
    assert_eq!(
        (s["progress"].clone(), s["unseal_failures"].clone()),
        (Value::from(2), Value::from(1))
    );

    let (code, _, _) = cli(&server, "", &["operator", "unseal", &keys[4]]);
    assert_eq!(code, 0);
    assert_eq!(status(&server)["sealed"], false);
    let (code, _, err) = cli(&server, &token, &["kv", "put", "secret/x", "a=b"]);
    assert_eq!(code, 0, "{err}");

    server.kill9();
    let server = start(&config, dir.path());
    assert_eq!(
        status(&server)["sealed"],
        true,
        "a restarted shamir node starts sealed"
    );
    for key in [&keys[1], &keys[3], &keys[0]] {
        cli(&server, "", &["operator", "unseal", key]);
    }
    let (code, out, _) = cli(&server, &token, &["kv", "get", "-field=a", "secret/x"]);
    assert_eq!((code, out.as_str()), (0, "b\n"));
}

#[test]
fn key_file_seal_unseals_itself_on_restart() {
    let dir = tempfile::tempdir().unwrap();
    let key_file = dir.path().join("root.key");
    let config = write_config(
        dir.path(),
        &format!(
            "seal = {{ type = \"file\", path = \"{}\" }}",
            key_file.display()
        ),
    );
    let server = start(&config, dir.path());
    let token = server.init_one_share();
    assert_eq!(
        status(&server)["sealed"],
        false,
        "init with a key-file seal unseals at once"
    );
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&key_file).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }
    cli(&server, &token, &["kv", "put", "secret/auto", "k=v"]);
    server.kill9();
    let server = start(&config, dir.path());
    assert_eq!(status(&server)["sealed"], false);
    let (code, out, _) = cli(&server, &token, &["kv", "get", "-field=k", "secret/auto"]);
    assert_eq!((code, out.as_str()), (0, "v\n"));
    // The unattended unseal is audited like any other.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let (_, out, _) = cli(
            &server,
            &token,
            &[
                "audit",
                "tail",
                "--actor",
                "system",
                "--operation",
                "unseal",
            ],
        );
        if out.contains("op=unseal") {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no audit record of the key-file unseal"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

/// `sys/init` refused for bad input leaves the node exactly as it was: still uninitialized,
/// its CA still pending, so the init that follows works and the cluster can make packs.
#[test]
fn a_refused_init_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        dir.path(),
        &format!(
            "seal = {{ type = \"file\", path = {:?} }}",
            dir.path().join("root.key").display().to_string()
        ),
    );
    let server = start(&config, dir.path());
    for bad in [
        &["operator", "init", "-key-shares=1", "-key-threshold=3"][..],
        &["operator", "init", "-key-shares=0", "-key-threshold=0"][..],
    ] {
        let (code, _, err) = cli(&server, "", bad);
        assert_eq!(code, 2, "{err}");
        assert_eq!(status(&server)["initialized"], false);
        assert!(
            dir.path().join("node/tls/ca-key.pem").exists(),
            "the CA is still pending"
        );
    }
    let token = server.init_one_share();
    let pack = dir.path().join("n2.pack");
    let (code, _, err) = cli(
        &server,
        &token,
        &[
            "operator",
            "pack",
            "create",
            "--node-id",
            "2",
            "--api-addr",
            "https://127.0.0.12:8200",
            "--peer-addr",
            "127.0.0.12:8201",
            "-o",
            pack.to_str().unwrap(),
        ],
    );
    assert_eq!(code, 0, "packs still work: {err}");
}

/// `[telemetry] unauthenticated_metrics_from`: a client in a listed network reads
/// `sys/metrics` without a token; anywhere else, and with a wrong token, it is refused.
#[test]
fn metrics_without_a_token_only_from_the_configured_networks() {
    let scrape = |server: &Server, token: Option<&str>| {
        let client = coffer_api::client::Client::new(
            &server.addr,
            Some(&server.ca_pem),
            token.map(str::to_string),
        )
        .unwrap();
        coffer_tests::procs::block_on(async move {
            client.get_text("sys/metrics?format=prometheus").await
        })
    };
    for (networks, open) in [("[\"127.0.0.0/8\"]", true), ("[\"10.0.0.0/8\"]", false)] {
        let dir = tempfile::tempdir().unwrap();
        // A key-file seal: init unseals the node at once.
        let config = write_config(
            dir.path(),
            &format!(
                "seal = {{ type = \"file\", path = \"{}\" }}\n[telemetry]\nunauthenticated_metrics_from = {networks}",
                dir.path().join("root.key").display()
            ),
        );
        let server = start(&config, dir.path());
        let token = server.init_one_share();
        let anonymous = scrape(&server, None);
        assert_eq!(anonymous.is_ok(), open, "{networks}: {anonymous:?}");
        if open {
            assert!(anonymous.unwrap().contains("coffer_build_info"));
        }
        assert!(
            scrape(&server, Some("hvs.not-a-token")).is_err(),
            "a token given is checked"
        );
        assert!(scrape(&server, Some(&token))
            .unwrap()
            .contains("coffer_raft_term"));
    }
}

/// A node without a config file, as a container runs it: `COFFER_*` variables only, the API
/// on every interface and advertised at its own address (which the API certificate names),
/// and systemd's readiness protocol spoken when `NOTIFY_SOCKET` asks for it.
#[test]
fn configured_by_variables_advertised_at_api_addr_and_ready_for_systemd() {
    use std::os::unix::net::UnixDatagram;
    let dir = tempfile::tempdir().unwrap();
    let socket_path = dir.path().join("notify.sock");
    let systemd = UnixDatagram::bind(&socket_path).unwrap();
    systemd
        .set_read_timeout(Some(std::time::Duration::from_secs(60)))
        .unwrap();
    let port = coffer_tests::procs::free_port("127.0.0.2");
    let data = dir.path().join("node");
    let api_addr = format!("https://127.0.0.2:{port}");
    let server = Server::spawn_env(
        &["server"],
        &data,
        &[
            ("COFFER_DATA_DIR", data.to_str().unwrap()),
            ("COFFER_API_ADDR", &api_addr),
            ("COFFER_LISTEN_ADDR", &format!("0.0.0.0:{port}")),
            ("COFFER_PEER_ADDR", "127.0.0.2:0"),
            ("NOTIFY_SOCKET", socket_path.to_str().unwrap()),
        ],
    );
    let mut buf = [0u8; 64];
    let n = systemd.recv(&mut buf).expect("READY=1 from the node");
    assert_eq!(&buf[..n], b"READY=1");
    // Reached (and its certificate checked) at the advertised address, not at the socket's.
    assert_eq!(server.addr, api_addr);
    let (token, share) = server.init_one_share_keeping();
    let (code, _, err) = cli(&server, "", &["operator", "unseal", &share]);
    assert_eq!(code, 0, "{err}");
    let (code, out, err) = cli(&server, &token, &["operator", "members", "-format=json"]);
    assert_eq!(code, 0, "{err}");
    let members: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(members["data"]["members"][0]["api_addr"], api_addr.as_str());

    let kill = std::process::Command::new("kill")
        .args(["-TERM", &server.pid().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    let n = systemd.recv(&mut buf).expect("STOPPING=1 from the node");
    assert_eq!(&buf[..n], b"STOPPING=1");

    // Without a data directory from anywhere, the refusal names the ways to give one.
    let out = std::process::Command::new(coffer_tests::coffer_bin())
        .arg("server")
        .env_remove("COFFER_DATA_DIR")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("data_dir: required (in the config file, COFFER_DATA_DIR or --data-dir)"),
        "{err}"
    );
}
