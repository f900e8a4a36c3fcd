//! A cluster of real `coffer` processes, formed only with the documented commands: the first
//! node from a config file plus `operator init`, every other node from a bootstrap pack with
//! `operator pack create` and `operator join`. Node N listens on 127.0.0.(10+N), on ports the
//! kernel picked free just before.

use std::collections::BTreeMap;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use coffer_api::client::Client;
use serde_json::Value;

use crate::{coffer_bin, Server};

/// Held by tests of one binary that must not run at once (clusters of processes on two
/// cores, timing bounds); a test that failed while holding it does not block the others.
pub fn serial() -> std::sync::MutexGuard<'static, ()> {
    static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());
    SERIAL
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The value of the sample `name` (with its labels, if any) in a Prometheus text page.
pub fn metric_value(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(name) && l.as_bytes().get(name.len()) == Some(&b' '))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
}

/// The loopback address of node `id`.
pub fn node_ip(id: u64) -> String {
    format!("127.0.0.{}", 10 + id)
}

/// A port free on `ip` right now.
pub fn free_port(ip: &str) -> u16 {
    TcpListener::bind((ip, 0))
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// Where a node is reached.
#[derive(Clone, Debug)]
pub struct NodeAddrs {
    /// `https://ip:port`.
    pub api: String,
    /// `ip:port`.
    pub peer: String,
}

impl NodeAddrs {
    fn pick(id: u64) -> Self {
        let ip = node_ip(id);
        Self {
            api: format!("https://{ip}:{}", free_port(&ip)),
            peer: format!("{ip}:{}", free_port(&ip)),
        }
    }
}

/// The running cluster.
pub struct ProcCluster {
    /// Holds every node's directory.
    pub dir: tempfile::TempDir,
    /// Running processes (None while stopped).
    nodes: BTreeMap<u64, Option<Server>>,
    /// Each node's addresses.
    pub addrs: BTreeMap<u64, NodeAddrs>,
    /// Root token.
    pub token: String,
    /// The one unseal share (base64).
    pub share: String,
    /// The cluster CA file.
    pub ca_path: PathBuf,
}

/// The arguments of `coffer operator join` (with `--start` if `start`).
pub fn join_argv(pack: &Path, data_dir: &Path, pass: &Path, start: bool) -> Vec<String> {
    let mut argv: Vec<String> = ["operator", "join", "--pack"]
        .into_iter()
        .map(String::from)
        .collect();
    argv.push(pack.display().to_string());
    argv.push("--data-dir".into());
    argv.push(data_dir.display().to_string());
    argv.push("--passphrase-file".into());
    argv.push(pass.display().to_string());
    if start {
        argv.push("--start".into());
    }
    argv
}

/// Runs the `coffer` CLI with the given environment; returns (code, stdout, stderr).
pub fn run_cli(env: &[(&str, &str)], args: &[&str]) -> (i32, String, String) {
    let mut cmd = std::process::Command::new(coffer_bin());
    cmd.args(args)
        .env_remove("VAULT_ADDR")
        .env_remove("VAULT_TOKEN");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("running coffer");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

impl ProcCluster {
    /// Node 1 from a config file (key-file seal), initialized with one share.
    pub fn found() -> Self {
        Self::found_at(NodeAddrs::pick(1))
    }

    /// As [`found`](Self::found), with node 1 at `addrs`.
    pub fn found_at(addrs: NodeAddrs) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let data = dir.path().join("node1");
        std::fs::create_dir_all(&data).expect("data dir");
        let config = dir.path().join("node1.toml");
        std::fs::write(
            &config,
            format!(
                "node_id = 1\ndata_dir = {:?}\napi_addr = {:?}\npeer_addr = {:?}\nseal = {{ type = \"file\", path = {:?} }}\n",
                data.display().to_string(),
                addrs.api,
                addrs.peer,
                dir.path().join("node1.key").display().to_string(),
            ),
        )
        .expect("config");
        let server = Server::spawn(
            &["server", "--config", config.to_str().expect("utf-8")],
            &data,
        );
        let ca_path = server.ca_path();
        let (token, share) = server.init_one_share_keeping();
        let cluster = Self {
            dir,
            nodes: BTreeMap::from([(1, Some(server))]),
            addrs: BTreeMap::from([(1, addrs)]),
            token,
            share,
            ca_path,
        };
        cluster.wait(
            Duration::from_secs(30),
            "node 1 unsealed and leading",
            |c| c.health(1).is_some_and(|(code, _)| code == 200),
        );
        cluster
    }

    /// The CLI against node `via`.
    pub fn cli(&self, via: u64, args: &[&str]) -> (i32, String, String) {
        let ca = self.ca_path.display().to_string();
        run_cli(
            &[
                ("COFFER_ADDR", &self.addrs[&via].api),
                ("COFFER_CACERT", &ca),
                ("COFFER_TOKEN", &self.token),
            ],
            args,
        )
    }

    /// `operator pack create` on node `via` for node `id`; returns the pack and the file
    /// holding its passphrase.
    pub fn pack(&mut self, via: u64, id: u64, voter: bool, extra: &[&str]) -> (PathBuf, PathBuf) {
        let addrs = NodeAddrs::pick(id);
        let pack = self
            .dir
            .path()
            .join(format!("node{id}-{}.pack", crate::random_string(6)));
        let pass = pack.with_extension("pass");
        let mut args = vec![
            "operator".to_string(),
            "pack".into(),
            "create".into(),
            "--node-id".into(),
            id.to_string(),
            "--api-addr".into(),
            addrs.api.clone(),
            "--peer-addr".into(),
            addrs.peer.clone(),
            "--include-unseal-key".into(),
            "-o".into(),
            pack.display().to_string(),
        ];
        if voter {
            args.push("--voter".into());
        }
        args.extend(extra.iter().map(|s| s.to_string()));
        let argv: Vec<&str> = args.iter().map(String::as_str).collect();
        let (code, out, err) = self.cli(via, &argv);
        assert_eq!(code, 0, "pack create: {err}");
        std::fs::write(&pass, out.trim()).expect("passphrase file");
        self.addrs.insert(id, addrs);
        (pack, pass)
    }

    /// `operator join` into node `id`'s directory; returns (code, stdout, stderr).
    pub fn join(&self, id: u64, pack: &Path, pass: &Path) -> (i32, String, String) {
        let argv = join_argv(pack, &self.data_dir(id), pass, false);
        let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
        run_cli(&[], &argv)
    }

    /// `operator join` into `<cluster dir>/<dir_name>` (a second machine holding a copy of
    /// a pack); returns (code, stdout, stderr).
    pub fn join_into(
        &self,
        _id: u64,
        dir_name: &str,
        pack: &Path,
        pass: &Path,
    ) -> (i32, String, String) {
        let argv = join_argv(pack, &self.dir.path().join(dir_name), pass, false);
        let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
        run_cli(&[], &argv)
    }

    /// `operator join … --start`: joins and becomes the server in the same process.
    pub fn join_and_run(&mut self, id: u64, pack: &Path, pass: &Path) {
        let data = self.data_dir(id);
        let argv = join_argv(pack, &data, pass, true);
        let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
        let server = Server::spawn(&argv, &data);
        self.nodes.insert(id, Some(server));
    }

    /// Node `id`'s data directory.
    pub fn data_dir(&self, id: u64) -> PathBuf {
        self.dir.path().join(format!("node{id}"))
    }

    /// Node `id`'s configuration file: the one `operator join` wrote (node 1: its own).
    pub fn config_path(&self, id: u64) -> PathBuf {
        if id == 1 {
            self.dir.path().join("node1.toml")
        } else {
            self.data_dir(id).join("coffer.toml")
        }
    }

    /// Appends `toml` to each node's configuration and restarts it (SIGKILL), one after the
    /// other, each back and unsealed before the next.
    pub fn reconfigure(&mut self, ids: &[u64], toml: &str) {
        for &id in ids {
            let config = self.config_path(id);
            let mut text = std::fs::read_to_string(&config).expect("config");
            text.push('\n');
            text.push_str(toml);
            std::fs::write(&config, text).expect("config");
            self.kill(id);
            self.start(id);
            self.wait(Duration::from_secs(60), "the node back and unsealed", |c| {
                matches!(c.health_code(id), 200 | 429)
            });
        }
    }

    /// Starts (or restarts) node `id` from the config `operator join` wrote (node 1: its own).
    pub fn start(&mut self, id: u64) {
        let config = self.config_path(id);
        let server = Server::spawn(
            &["server", "--config", config.to_str().expect("utf-8")],
            &self.data_dir(id),
        );
        self.nodes.insert(id, Some(server));
    }

    /// SIGKILLs node `id`.
    pub fn kill(&mut self, id: u64) {
        if let Some(server) = self.nodes.get_mut(&id).and_then(Option::take) {
            server.kill9();
        }
    }

    /// Sends `signal` (`STOP`, `CONT`, …) to node `id`'s process.
    pub fn signal(&self, id: u64, signal: &str) {
        let pid = self.nodes[&id].as_ref().expect("running").pid();
        let ok = std::process::Command::new("kill")
            .args([&format!("-{signal}"), &pid.to_string()])
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "kill -{signal} {pid}");
    }

    /// Whether node `id`'s log holds `text`.
    pub fn log_contains(&self, id: u64, text: &str) -> bool {
        self.nodes[&id]
            .as_ref()
            .is_some_and(|s| s.log().contains(text))
    }

    /// Node `id`'s process id.
    pub fn pid(&self, id: u64) -> u32 {
        self.nodes[&id].as_ref().expect("running").pid()
    }

    /// Running node ids.
    pub fn running(&self) -> Vec<u64> {
        self.nodes
            .iter()
            .filter(|(_, s)| s.is_some())
            .map(|(id, _)| *id)
            .collect()
    }

    /// A client for node `id` only.
    pub fn client(&self, id: u64) -> Client {
        let ca = std::fs::read_to_string(&self.ca_path).expect("ca");
        Client::new(&self.addrs[&id].api, Some(&ca), Some(self.token.clone())).expect("client")
    }

    /// A client given every listed node's address (moves on when one is down).
    pub fn client_all(&self, ids: &[u64]) -> Client {
        let ca = std::fs::read_to_string(&self.ca_path).expect("ca");
        let addrs: Vec<&str> = ids.iter().map(|id| self.addrs[id].api.as_str()).collect();
        Client::new(&addrs.join(","), Some(&ca), Some(self.token.clone())).expect("client")
    }

    /// `sys/health` of node `id`: (status, body), None if unreachable.
    pub fn health(&self, id: u64) -> Option<(u16, Value)> {
        let client = self.client(id);
        block_on(async move {
            match client.request("GET", "sys/health", None).await {
                Ok(r) => Some((200, r.body)),
                Err(coffer_api::client::ClientError::Server { status, .. }) => {
                    Some((status, Value::Null))
                }
                Err(_) => None,
            }
        })
    }

    /// The leader's id as node `via` reports it (`sys/leader`).
    pub fn leader_seen_by(&self, via: u64) -> Option<u64> {
        let client = self.client(via);
        let body =
            block_on(async move { client.request("GET", "sys/leader", None).await.ok() })?.body;
        let addr = body["leader_address"].as_str()?.to_string();
        self.addrs
            .iter()
            .find(|(_, a)| a.api == addr)
            .map(|(id, _)| *id)
    }

    /// `sys/coffer/members` as node `via` answers it.
    pub fn members(&self, via: u64) -> Option<Vec<Value>> {
        let client = self.client(via);
        block_on(async move { client.request("GET", "sys/coffer/members", None).await.ok() })
            .and_then(|r| r.body["data"]["members"].as_array().cloned())
    }

    /// Waits up to `timeout` for `cond`, polling; panics with `what` and the logs if it
    /// never holds.
    pub fn wait(&self, timeout: Duration, what: &str, cond: impl Fn(&Self) -> bool) {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if cond(self) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("timed out waiting for {what}\n{}", self.logs());
    }

    /// Every running node's log (for failure messages).
    pub fn logs(&self) -> String {
        let mut out = String::new();
        for (id, server) in &self.nodes {
            if let Some(s) = server {
                let log = s.log();
                let tail: Vec<&str> = log.lines().rev().take(40).collect();
                out.push_str(&format!("--- node {id} (last 40 lines) ---\n"));
                for line in tail.into_iter().rev() {
                    out.push_str(line);
                    out.push('\n');
                }
            }
        }
        out
    }
}

/// Runs a future to completion on a private runtime (the helpers are called from sync code
/// and from inside async tests alike).
pub fn block_on<F: std::future::Future + Send + 'static>(f: F) -> F::Output
where
    F::Output: Send + 'static,
{
    std::thread::spawn(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime")
            .block_on(f)
    })
    .join()
    .expect("helper thread")
}

/// A network partition between node addresses on loopback: iptables DROP rules in a chain of
/// their own, removed when the value drops (also when the test fails). Needs root; installs
/// iptables when it is missing.
pub struct Partition {
    chain: String,
}

fn iptables(args: &[&str]) -> std::process::Output {
    std::process::Command::new("iptables")
        .args(args)
        .output()
        .expect("running iptables")
}

fn ensure_iptables() {
    let present = std::process::Command::new("iptables")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !present {
        let ok = std::process::Command::new("sh")
            .args([
                "-c",
                "DEBIAN_FRONTEND=noninteractive apt-get install -y -qq iptables >/dev/null",
            ])
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "iptables is missing and could not be installed");
    }
}

impl Partition {
    /// Drops every packet between the addresses of each pair, both ways.
    pub fn cut(pairs: &[(String, String)]) -> Partition {
        ensure_iptables();
        let chain = format!("COFFER-{}-{}", std::process::id(), crate::random_string(6));
        let out = iptables(&["-N", &chain]);
        assert!(out.status.success(), "iptables -N: {out:?}");
        let partition = Partition { chain };
        for (a, b) in pairs {
            for (src, dst) in [(a, b), (b, a)] {
                let out = iptables(&["-A", &partition.chain, "-s", src, "-d", dst, "-j", "DROP"]);
                assert!(out.status.success(), "iptables -A: {out:?}");
            }
        }
        let out = iptables(&["-I", "INPUT", "-j", &partition.chain]);
        assert!(out.status.success(), "iptables -I: {out:?}");
        partition
    }

    /// Removes the rules.
    pub fn heal(self) {}
}

impl Drop for Partition {
    fn drop(&mut self) {
        let _ = iptables(&["-D", "INPUT", "-j", &self.chain]);
        let _ = iptables(&["-F", &self.chain]);
        let _ = iptables(&["-X", &self.chain]);
    }
}

/// Every merged audit record matching `query` (e.g. `node=2&mode=read-only`), all pages.
pub async fn audit_records(client: &Client, query: &str) -> Vec<Value> {
    let mut out = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let mut q = String::from("sys/coffer/audit?limit=5000");
        if !query.is_empty() {
            q.push('&');
            q.push_str(query);
        }
        if let Some(a) = &after {
            q.push_str(&format!("&after={a}"));
        }
        let resp = client.request("GET", &q, None).await.expect("audit query");
        out.extend(
            resp.body["data"]["records"]
                .as_array()
                .cloned()
                .unwrap_or_default(),
        );
        match resp.body["data"]["next"].as_str() {
            Some(n) => after = Some(n.to_string()),
            None => return out,
        }
    }
}

impl ProcCluster {
    /// Three voters formed with the documented commands: node 1 founded, nodes 2 and 3
    /// joined from voter packs, each started once the previous one is a caught-up voter.
    pub fn three_voters() -> Self {
        let mut c = Self::found();
        for id in [2, 3] {
            let (pack, pass) = c.pack(1, id, true, &[]);
            let (code, _, err) = c.join(id, &pack, &pass);
            assert_eq!(code, 0, "join {id}: {err}");
            c.start(id);
            c.wait(Duration::from_secs(60), "a caught-up voter", |c| {
                c.is_voter(1, id, true)
            });
        }
        c
    }

    /// Whether node `via` lists `id` as a voter (and, with `caught_up`, with no lag).
    pub fn is_voter(&self, via: u64, id: u64, caught_up: bool) -> bool {
        self.members(via).is_some_and(|m| {
            m.iter().any(|x| {
                x["node_id"].as_u64() == Some(id)
                    && x["voter"].as_bool() == Some(true)
                    && (!caught_up || x["lag"].as_u64() == Some(0))
            })
        })
    }

    /// The leader as the running nodes see it (the first that names one).
    pub fn leader(&self) -> Option<u64> {
        self.running()
            .into_iter()
            .find_map(|id| self.leader_seen_by(id))
    }

    /// Each running node's Raft term (`coffer_raft_term`); a leader change raises it.
    pub fn terms(&self) -> BTreeMap<u64, u64> {
        self.running()
            .into_iter()
            .filter_map(|id| Some((id, self.metric(id, "coffer_raft_term")? as u64)))
            .collect()
    }

    /// A pack for `id`, joined and started.
    pub fn add_node(&mut self, via: u64, id: u64, voter: bool) {
        self.add_node_with(via, id, voter, "");
        self.wait(Duration::from_secs(60), "the node in its role", |c| {
            c.members(via).is_some_and(|m| {
                m.iter().any(|x| {
                    x["node_id"].as_u64() == Some(id) && x["voter"].as_bool() == Some(voter)
                })
            })
        });
    }

    /// `sys/health` status code of node `id` (0 when unreachable).
    pub fn health_code(&self, id: u64) -> u16 {
        self.health(id).map_or(0, |(code, _)| code)
    }

    /// A counter or gauge from node `id`'s `sys/metrics`.
    pub fn metric(&self, id: u64, name: &str) -> Option<f64> {
        let client = self.client(id);
        let text =
            block_on(async move { client.get_text("sys/metrics?format=prometheus").await.ok() })?;
        metric_value(&text, name)
    }

    /// Waits until node `id` has merged its whole spool into the cluster log.
    pub fn wait_merged(&self, id: u64, timeout: Duration) {
        self.wait(timeout, "the spool merged back", |c| {
            match (
                c.metric(id, "coffer_audit_spool_last_seq"),
                c.metric(id, "coffer_audit_merged_seq"),
            ) {
                (Some(last), Some(merged)) => last > 0.0 && merged >= last,
                _ => false,
            }
        });
    }
}

/// A webhook receiver on 127.0.0.1: answers every POST with 200 and hands over its body.
pub struct WebhookSink {
    /// `http://127.0.0.1:PORT/hook`.
    pub url: String,
    bodies: std::sync::mpsc::Receiver<Value>,
}

impl WebhookSink {
    /// Listens on a free port, in a thread that lives as long as the test process.
    pub fn start() -> Self {
        use std::io::{BufRead, BufReader, Read, Write};
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let url = format!("http://{}/hook", listener.local_addr().expect("addr"));
        let (tx, bodies) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let mut reader = BufReader::new(stream);
                let mut length = 0usize;
                loop {
                    let mut line = String::new();
                    if reader.read_line(&mut line).unwrap_or(0) == 0 {
                        break;
                    }
                    let lower = line.to_ascii_lowercase();
                    if let Some(v) = lower.strip_prefix("content-length:") {
                        length = v.trim().parse().unwrap_or(0);
                    }
                    if line == "\r\n" {
                        break;
                    }
                }
                let mut body = vec![0u8; length];
                if reader.read_exact(&mut body).is_ok() {
                    let _ = tx.send(serde_json::from_slice(&body).unwrap_or(Value::Null));
                }
                let _ = reader.get_mut().write_all(
                    b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
                );
            }
        });
        Self { url, bodies }
    }

    /// The next notification whose `new_mode` is `mode`, within `timeout`.
    pub fn wait_for_mode(&self, mode: &str, timeout: Duration) -> Value {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let body = self
                .bodies
                .recv_timeout(left)
                .unwrap_or_else(|_| panic!("no webhook for mode {mode}"));
            if body["new_mode"] == mode {
                return body;
            }
        }
    }
}

impl ProcCluster {
    /// Like [`add_node`](Self::add_node), with `extra` appended to the node's config first.
    pub fn add_node_with(&mut self, via: u64, id: u64, voter: bool, extra: &str) {
        let (pack, pass) = self.pack(via, id, voter, &[]);
        let (code, _, err) = self.join(id, &pack, &pass);
        assert_eq!(code, 0, "join node {id}: {err}");
        let config = self.data_dir(id).join("coffer.toml");
        let mut text = std::fs::read_to_string(&config).expect("config");
        text.push_str(extra);
        std::fs::write(&config, text).expect("config");
        self.start(id);
        self.wait(Duration::from_secs(60), "the new node caught up", |c| {
            c.members(via).is_some_and(|m| {
                m.iter().any(|x| {
                    x["node_id"].as_u64() == Some(id) && x["lag"].as_u64().is_some_and(|l| l < 5)
                })
            })
        });
    }
}
