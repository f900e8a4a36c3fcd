//! The `coffer` CLI against a real dev server: kv commands, output formats, exit codes.

use std::process::Command;

use coffer_tests::{coffer_bin, Server};

const TOKEN: &str = "hvs.t20-cli-token";

fn cli(server: &Server, token: &str, args: &[&str]) -> (i32, String, String) {
    server.cli(token, args)
}

/// Runs `cmd`, asserts it succeeded (its stderr in the message), and returns its stdout.
fn succeeds(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
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
    succeeds(
        Command::new(coffer_bin())
            .args(["kv", "put", "secret/multi", "a=b"])
            .env("COFFER_ADDR", addrs)
            .env("COFFER_CACERT", server.ca_path())
            .env("COFFER_TOKEN", TOKEN),
    );
}

/// `coffer completions <shell>` prints a script generated from the command line's
/// definition: bash accepts it (`bash -n`) and it offers the subcommands; zsh and fish get
/// theirs; `--version` names the commit.
#[test]
fn shell_completions_and_version() {
    let run = |args: &[&str]| succeeds(Command::new(coffer_bin()).args(args));
    let bash = run(&["completions", "bash"]);
    for word in ["operator", "kv", "audit", "completions", "snapshot"] {
        assert!(bash.contains(word), "bash completion lacks {word}");
    }
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("coffer.bash");
    std::fs::write(&script, &bash).unwrap();
    succeeds(Command::new("bash").arg("-n").arg(&script));
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

/// `coffer health` answers a container's or load balancer's question: 0 while the node
/// serves, 2 once it is sealed or cannot be reached; `coffer status` names the mode.
#[test]
fn health_and_status_name_the_mode() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::dev(&dir.path().join("node"), TOKEN);
    let (code, out, err) = cli(&server, TOKEN, &["health"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.starts_with("leader: applied index"), "{out}");
    let (code, out, err) = cli(&server, TOKEN, &["status"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("mode") && out.contains("leader"), "{out}");
    assert!(!err.contains("READ-ONLY"), "{err}");
    let (code, out, _) = cli(&server, TOKEN, &["health", "-format=json"]);
    assert_eq!(code, 0);
    let body: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(body["sealed"], false);

    let (code, _, err) = cli(&server, TOKEN, &["operator", "seal"]);
    assert_eq!(code, 0, "{err}");
    let (code, out, _) = cli(&server, TOKEN, &["health"]);
    assert_eq!(code, 2, "a sealed node is not healthy: {out}");
    assert!(out.starts_with("sealed"), "{out}");

    // Nothing listens on a port of a socket just closed.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let (code, _, err) = cli(
        &server,
        TOKEN,
        &["health", "--address", &format!("https://127.0.0.1:{port}")],
    );
    assert_eq!(code, 2, "an unreachable node is not healthy: {err}");
}

/// `coffer man` renders coffer(1) from the command line's definition, and `--dir` writes a
/// page per command; every command `coffer --help` lists is in the README's CLI section.
#[test]
fn man_pages_and_help_match_the_readme() {
    let page = succeeds(Command::new(coffer_bin()).arg("man"));
    assert!(page.contains(".TH coffer 1"), "{page}");
    let dir = tempfile::tempdir().unwrap();
    succeeds(
        Command::new(coffer_bin())
            .args(["man", "--dir"])
            .arg(dir.path()),
    );
    for name in ["coffer.1", "coffer-kv-get.1", "coffer-health.1"] {
        assert!(dir.path().join(name).exists(), "{name} not written");
    }
    let join = std::fs::read_to_string(dir.path().join("coffer-operator-join.1")).unwrap();
    assert!(join.contains("resume"), "{join}");

    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md")).unwrap();
    let cli_section = readme
        .split("\n## CLI\n")
        .nth(1)
        .and_then(|rest| rest.split("\n## ").next())
        .expect("README has a CLI section");
    let commands = |args: &[&str]| -> Vec<String> {
        let help = succeeds(Command::new(coffer_bin()).args(args));
        help.split("Commands:\n")
            .nth(1)
            .unwrap()
            .lines()
            .take_while(|l| l.starts_with("  "))
            .filter_map(|l| l.split_whitespace().next().map(str::to_string))
            .filter(|c| c != "help")
            .collect()
    };
    for command in commands(&["--help"]) {
        assert!(
            cli_section.contains(&format!("`coffer {command}")),
            "README's CLI section does not name `coffer {command}`"
        );
    }
    for command in commands(&["operator", "--help"]) {
        let named = [format!("|{command}"), format!("operator {command}")];
        assert!(
            named.iter().any(|n| cli_section.contains(n.as_str())),
            "README's CLI section does not name `coffer operator {command}`"
        );
    }
}
