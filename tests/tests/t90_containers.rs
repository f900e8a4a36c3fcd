//! The container image and the compose cluster, for real: `scripts/build-image.sh` builds
//! the image from this build's `coffer` binary, `ops/compose/cluster.sh up` brings up three
//! voters and a read-only standby learner from packs, and README's walk-through runs against
//! it: lose the leader, then the quorum, read on the standby, bring both back, find the
//! standby's reads in the merged audit log. Skipped, saying why, where no container engine
//! or no `docker-compose` runs.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use coffer_tests::coffer_bin;
use serde_json::Value;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// (exit code, stdout, stderr) of a command.
fn run(cmd: &mut Command) -> (i32, String, String) {
    let out = cmd.output().expect("running a command");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Why containers cannot be tested here, if they cannot.
fn no_engine() -> Option<String> {
    match Command::new("docker").arg("info").output() {
        Ok(out) if out.status.success() => {}
        Ok(out) => {
            return Some(format!(
                "'docker info' failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ))
        }
        Err(e) => return Some(format!("no docker command: {e}")),
    }
    let works = |cmd: &mut Command| cmd.output().is_ok_and(|out| out.status.success());
    if works(Command::new("docker-compose").arg("version"))
        || works(Command::new("docker").args(["compose", "version"]))
    {
        None
    } else {
        Some(
            "no docker-compose and no compose plugin (Debian: apt-get install docker-compose)"
                .into(),
        )
    }
}

/// One compose project of this test: its own image tag, network, packs and state; removed,
/// volumes and image too, when dropped.
struct Project {
    image: String,
    env: Vec<(String, String)>,
    _dir: tempfile::TempDir,
}

impl Project {
    fn new() -> Project {
        let pid = std::process::id();
        let dir = tempfile::tempdir().expect("tempdir");
        let image = format!("coffer-t90-{pid}:test");
        let env = vec![
            ("COMPOSE_PROJECT_NAME".into(), format!("coffert90{pid}")),
            ("COFFER_IMAGE".into(), image.clone()),
            ("COFFER_NET".into(), format!("10.231.{}", 100 + pid % 100)),
            (
                "COFFER_STATE".into(),
                dir.path().join("state").display().to_string(),
            ),
            (
                "COFFER_PACKS".into(),
                dir.path().join("packs").display().to_string(),
            ),
            // Empty: the engine picks the published loopback ports; no fixed port is taken.
            ("COFFER_PORT_1".into(), String::new()),
            ("COFFER_PORT_2".into(), String::new()),
            ("COFFER_PORT_3".into(), String::new()),
            ("COFFER_PORT_4".into(), String::new()),
        ];
        Project {
            image,
            env,
            _dir: dir,
        }
    }

    /// `ops/compose/cluster.sh ARGS…` with this project's settings.
    fn cluster(&self, args: &[&str]) -> (i32, String, String) {
        let mut cmd = Command::new(repo().join("ops/compose/cluster.sh"));
        cmd.args(args);
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        run(&mut cmd)
    }

    fn cluster_ok(&self, args: &[&str]) -> String {
        let (code, out, err) = self.cluster(args);
        assert_eq!(code, 0, "cluster.sh {args:?}: stdout {out}\nstderr {err}");
        out
    }

    /// `coffer ARGS…` inside NODE.
    fn coffer(&self, node: &str, args: &[&str]) -> (i32, String, String) {
        let mut all = vec!["coffer", node];
        all.extend_from_slice(args);
        self.cluster(&all)
    }

    fn members(&self, via: &str) -> Option<Vec<Value>> {
        let (code, out, _) = self.coffer(via, &["operator", "members", "-format=json"]);
        let body: Value = serde_json::from_str(&out).ok().filter(|_| code == 0)?;
        body["data"]["members"].as_array().cloned()
    }

    fn leader_seen_by(&self, via: &str) -> Option<u64> {
        self.members(via)?
            .iter()
            .find(|m| m["leader"].as_bool() == Some(true))
            .and_then(|m| m["node_id"].as_u64())
    }

    /// node4's `coffer status` calls it a follower, with no read-only banner.
    fn standby_follows(&self) -> bool {
        let (code, out, err) = self.coffer("node4", &["status"]);
        code == 0 && out.contains("follower") && !err.contains("READ-ONLY")
    }

    fn container(&self, node: &str) -> String {
        self.cluster_ok(&["ps", "-q", node]).trim().to_string()
    }
}

impl Drop for Project {
    fn drop(&mut self) {
        let (code, _, err) = self.cluster(&["down", "-v", "--timeout", "5"]);
        if code != 0 {
            eprintln!("t90: removing the compose project failed: {err}");
        }
        let _ = Command::new("docker")
            .args(["rmi", "--force", &self.image])
            .output();
    }
}

/// Docker's health status of a container: `starting`, `healthy` or `unhealthy`.
fn health(id: &str) -> String {
    let (_, out, _) =
        run(Command::new("docker").args(["inspect", "--format", "{{.State.Health.Status}}", id]));
    out.trim().to_string()
}

/// A container started by the test, by id, removed when dropped.
struct Container(String);

impl Drop for Container {
    fn drop(&mut self) {
        let _ = Command::new("docker")
            .args(["rm", "--force", "--volumes", &self.0])
            .output();
    }
}

fn wait(timeout: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < timeout, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(500));
    }
}

#[test]
fn image_and_compose_cluster_survive_losing_the_leader_and_the_quorum() {
    if let Some(why) = no_engine() {
        eprintln!("t90 skipped: no container engine to test the image and compose file: {why}");
        return;
    }
    let project = Project::new();

    // The image, from this build's binary.
    let bin = coffer_bin();
    let (code, _, err) = run(Command::new(repo().join("scripts/build-image.sh"))
        .args(["--binary", bin.to_str().expect("utf-8 path")])
        .args(["--tag", &project.image]));
    assert_eq!(code, 0, "build-image.sh: {err}");
    let (_, inspect, _) = run(Command::new("docker").args([
        "image",
        "inspect",
        "--format",
        "{{json .Config}}",
        &project.image,
    ]));
    let config: Value = serde_json::from_str(&inspect).expect("image config");
    assert_eq!(config["User"], "10001:10001", "runs as a non-root user");
    assert!(config["Volumes"]["/data"].is_object(), "{config}");
    for port in ["8200/tcp", "8201/tcp"] {
        assert!(config["ExposedPorts"][port].is_object(), "{port}: {config}");
    }
    assert_eq!(
        config["Healthcheck"]["Test"],
        serde_json::json!(["CMD", "/usr/local/bin/coffer", "health"])
    );
    let (code, version, _) = run(Command::new("docker").args([
        "run",
        "--rm",
        "--network",
        "none",
        &project.image,
        "--version",
    ]));
    assert_eq!(code, 0);
    assert!(version.starts_with("coffer "), "{version}");

    // `docker run IMAGE server --dev`: a dev server on the container's every interface, and
    // the image's own health check calls it healthy.
    let (code, id, err) = run(Command::new("docker").args([
        "run",
        "--detach",
        "--network",
        "none",
        &project.image,
        "server",
        "--dev",
    ]));
    assert_eq!(code, 0, "{err}");
    let dev = Container(id.trim().to_string());
    wait(Duration::from_secs(90), "the dev container healthy", || {
        health(&dev.0) == "healthy"
    });
    let (_, logs, log_err) = run(Command::new("docker").args(["logs", &dev.0]));
    assert!(
        logs.contains("Coffer server listening on https://0.0.0.0:8200"),
        "{logs}{log_err}"
    );
    drop(dev);

    // Three voters and a learner, from packs.
    project.cluster_ok(&["up"]);
    let members = project.members("node1").expect("members");
    let voters = members.iter().filter(|m| m["voter"] == true).count();
    assert_eq!((members.len(), voters), (4, 3), "{members:?}");
    // Docker's own health check (`coffer health`) calls each node healthy.
    for node in ["node1", "node2", "node3", "node4"] {
        let id = project.container(node);
        wait(Duration::from_secs(90), "a healthy container", || {
            health(&id) == "healthy"
        });
    }
    let (code, _, err) = project.coffer(
        "node1",
        &["kv", "put", "secret/app", "password=before-failover"],
    );
    assert_eq!(code, 0, "{err}");

    // Stop the leader: another voter takes over and writes go on.
    let first = project.leader_seen_by("node2").expect("a leader");
    let first_node = format!("node{first}");
    project.cluster_ok(&["stop", &first_node]);
    let survivors: Vec<String> = (1..=3)
        .filter(|n| *n != first)
        .map(|n| format!("node{n}"))
        .collect();
    let mut second = 0;
    wait(Duration::from_secs(60), "a new leader", || {
        second = project.leader_seen_by(&survivors[0]).unwrap_or(first);
        second != first
    });
    let (code, _, err) = project.coffer(
        &survivors[0],
        &["kv", "put", "secret/app", "password=after-failover"],
    );
    assert_eq!(code, 0, "a write after the leader stopped: {err}");
    wait(
        Duration::from_secs(30),
        "the standby following the new leader",
        || project.standby_follows(),
    );

    // Stop the other voter: no quorum, though its leader lives on. The leader stops its
    // heartbeats, the standby says it is read-only and keeps serving reads.
    let follower = (1..=3).find(|n| *n != first && *n != second).unwrap();
    project.cluster_ok(&["stop", &format!("node{follower}")]);
    let mut banner = String::new();
    wait(Duration::from_secs(60), "the standby banner", || {
        let (_, out, err) = project.coffer("node4", &["status"]);
        banner = format!("{out}{err}");
        err.contains("READ-ONLY STANDBY")
    });
    assert!(banner.contains("read-only standby"), "{banner}");
    let (code, out, err) = project.coffer("node4", &["kv", "get", "-field=password", "secret/app"]);
    assert_eq!((code, out.trim()), (0, "after-failover"), "{err}");
    assert!(err.contains("read-only standby answered"), "{err}");
    let (code, _, err) = project.coffer("node4", &["kv", "put", "secret/app", "password=x"]);
    assert_eq!(
        code, 3,
        "a write on the standby is refused as read-only: {err}"
    );
    let (code, out, _) = project.coffer("node4", &["health"]);
    assert_eq!(code, 0, "a read-only standby still serves: {out}");

    // Bring both back: a leader again, the standby leaves read-only by itself, the write
    // refused above never happened, and its reads are in the cluster's audit log.
    project.cluster_ok(&["start", &first_node, &format!("node{follower}")]);
    wait(
        Duration::from_secs(120),
        "the standby to leave read-only",
        || project.standby_follows(),
    );
    let (code, out, err) = project.coffer("node1", &["kv", "get", "-field=password", "secret/app"]);
    assert_eq!((code, out.trim()), (0, "after-failover"), "{err}");
    wait(
        Duration::from_secs(60),
        "node 4's read-only reads merged",
        || {
            let (code, out, _) = project.coffer(
                "node1",
                &[
                    "audit",
                    "tail",
                    "--node",
                    "4",
                    "--mode",
                    "read-only",
                    "-format=json",
                ],
            );
            code == 0 && out.contains("secret/data/app")
        },
    );
}
