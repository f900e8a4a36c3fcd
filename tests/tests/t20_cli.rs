//! The `coffer` CLI against a real dev server: kv commands, output formats, exit codes.

use std::process::Command;

use coffer_tests::{coffer_bin, Server};

const TOKEN: &str = "hvs.t20-cli-token";

fn cli(server: &Server, token: &str, args: &[&str]) -> (i32, String, String) {
    server.cli(token, args)
}

#[test]
fn kv_commands_formats_and_exit_codes() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::dev(&dir.path().join("node"), TOKEN);

    let (code, _, err) = cli(
        &server,
        TOKEN,
        &["kv", "put", "secret/app/db", "user=admin", "password=pw1"],
    );
    assert_eq!(code, 0, "{err}");
    let (code, out, _) = cli(
        &server,
        TOKEN,
        &["kv", "get", "-field=password", "secret/app/db"],
    );
    assert_eq!(
        (code, out.as_str()),
        (0, "pw1\n"),
        "secret on stdout, alone"
    );
    let (code, out, _) = cli(
        &server,
        TOKEN,
        &["kv", "get", "-format=json", "secret/app/db"],
    );
    assert_eq!(code, 0);
    let json: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(json["data"]["data"]["user"], "admin");
    let (code, _, _) = cli(
        &server,
        TOKEN,
        &["kv", "patch", "secret/app/db", "password=pw2"],
    );
    assert_eq!(code, 0);
    let (_, out, _) = cli(
        &server,
        TOKEN,
        &["kv", "get", "-field=password", "secret/app/db"],
    );
    assert_eq!(out, "pw2\n");
    let (code, out, _) = cli(&server, TOKEN, &["kv", "list", "secret/app"]);
    assert_eq!(code, 0);
    assert!(out.lines().any(|l| l == "db"), "{out}");
    let (code, out, _) = cli(
        &server,
        TOKEN,
        &["kv", "metadata", "get", "-format=json", "secret/app/db"],
    );
    assert_eq!(code, 0);
    assert!(out.contains("\"current_version\": 2"), "{out}");

    let (code, _, _) = cli(&server, TOKEN, &["kv", "delete", "secret/app/db"]);
    assert_eq!(code, 0);
    let (code, _, err) = cli(&server, TOKEN, &["kv", "get", "secret/app/db"]);
    assert_eq!(code, 4, "deleted version: not found; {err}");
    let (code, _, _) = cli(
        &server,
        TOKEN,
        &["kv", "undelete", "-versions=2", "secret/app/db"],
    );
    assert_eq!(code, 0);
    let (code, _, _) = cli(
        &server,
        TOKEN,
        &["kv", "destroy", "-versions=1", "secret/app/db"],
    );
    assert_eq!(code, 0);
    let (code, _, _) = cli(
        &server,
        TOKEN,
        &["kv", "get", "-version=1", "secret/app/db"],
    );
    assert_eq!(code, 4);

    let (code, _, err) = cli(&server, TOKEN, &["kv", "get", "secret/nothing/here"]);
    assert_eq!(code, 4, "{err}");
    let (code, _, err) = cli(&server, "hvs.wrong", &["kv", "get", "secret/app/db"]);
    assert_eq!(code, 2, "server refusal; {err}");
    assert!(err.contains("permission denied"), "{err}");
    let (code, _, _) = cli(&server, TOKEN, &["kv", "frobnicate"]);
    assert_eq!(code, 1, "usage error");
    let (code, _, _) = cli(&server, TOKEN, &["kv", "put", "secret/x", "novalue"]);
    assert_eq!(code, 1, "bad key=value is a local error");

    let (code, out, _) = cli(&server, TOKEN, &["operator", "status", "-format=json"]);
    assert_eq!(code, 0);
    assert!(out.contains("\"sealed\": false"));
    let (code, _, _) = cli(&server, TOKEN, &["operator", "rotate"]);
    assert_eq!(code, 0);
    let (code, _, _) = cli(&server, TOKEN, &["operator", "seal"]);
    assert_eq!(code, 0);
    let (code, _, err) = cli(&server, TOKEN, &["kv", "get", "secret/app/db"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("sealed"), "{err}");
}

#[test]
fn several_addresses_fall_through_to_a_live_node() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::dev(&dir.path().join("node"), TOKEN);
    // A loopback port with nothing listening (bound then released), then the live server.
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let addrs = format!("https://{dead},{}", server.addr);
    let out = Command::new(coffer_bin())
        .args(["kv", "put", "secret/multi", "a=b"])
        .env("COFFER_ADDR", addrs)
        .env("COFFER_CACERT", server.ca_path())
        .env("COFFER_TOKEN", TOKEN)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `coffer completions <shell>` prints a script generated from the command line's
/// definition: bash accepts it (`bash -n`) and it offers the subcommands; zsh and fish get
/// theirs; `--version` names the commit.
#[test]
fn shell_completions_and_version() {
    let run = |args: &[&str]| {
        let out = Command::new(coffer_bin()).args(args).output().unwrap();
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    let bash = run(&["completions", "bash"]);
    for word in ["operator", "kv", "audit", "completions", "snapshot"] {
        assert!(bash.contains(word), "bash completion lacks {word}");
    }
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("coffer.bash");
    std::fs::write(&script, &bash).unwrap();
    let syntax = Command::new("bash")
        .arg("-n")
        .arg(&script)
        .output()
        .unwrap();
    assert!(
        syntax.status.success(),
        "{}",
        String::from_utf8_lossy(&syntax.stderr)
    );
    assert!(run(&["completions", "zsh"]).starts_with("#compdef coffer"));
    assert!(run(&["completions", "fish"]).contains("complete -c coffer"));
    let bad = Command::new(coffer_bin())
        .args(["completions", "tcsh"])
        .output()
        .unwrap();
    assert!(!bad.status.success());
    let version = run(&["--version"]);
    assert!(
        version.starts_with("coffer ") && version.contains('('),
        "{version}"
    );
}
