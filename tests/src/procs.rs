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
    /// The cluster CA file.
    pub ca_path: PathBuf,
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
        let token = server.init_one_share();
        let cluster = Self {
            dir,
            nodes: BTreeMap::from([(1, Some(server))]),
            addrs: BTreeMap::from([(1, addrs)]),
            token,
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
        let data = self.data_dir(id);
        run_cli(
            &[],
            &[
                "operator",
                "join",
                "--pack",
                pack.to_str().expect("utf-8"),
                "--data-dir",
                data.to_str().expect("utf-8"),
                "--passphrase-file",
                pass.to_str().expect("utf-8"),
            ],
        )
    }

    /// `operator join … --start`: joins and becomes the server in the same process.
    pub fn join_and_run(&mut self, id: u64, pack: &Path, pass: &Path) {
        let data = self.data_dir(id);
        let server = Server::spawn(
            &[
                "operator",
                "join",
                "--pack",
                pack.to_str().expect("utf-8"),
                "--data-dir",
                data.to_str().expect("utf-8"),
                "--passphrase-file",
                pass.to_str().expect("utf-8"),
                "--start",
            ],
            &data,
        );
        self.nodes.insert(id, Some(server));
    }

    /// Node `id`'s data directory.
    pub fn data_dir(&self, id: u64) -> PathBuf {
        self.dir.path().join(format!("node{id}"))
    }

    /// Starts (or restarts) node `id` from the config `operator join` wrote (node 1: its own).
    pub fn start(&mut self, id: u64) {
        let config = if id == 1 {
            self.dir.path().join("node1.toml")
        } else {
            self.data_dir(id).join("coffer.toml")
        };
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
