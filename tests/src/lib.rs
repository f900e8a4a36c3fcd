//! Test harness for multi-process tests: real `coffer` processes on loopback over real TLS,
//! started on port 0 (the server prints the address it bound), stopped with SIGKILL or SIGTERM,
//! restarted on the same data directory. Everything waits on conditions, never on sleeps.

pub mod bench;
pub mod fuzz;
pub mod fuzz_seeds;
pub mod harness;
pub mod procs;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use coffer_api::client::Client;

/// How long a server may take to start listening.
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// Path of the `coffer` binary built by this workspace (`COFFER_BIN` overrides).
pub fn coffer_bin() -> PathBuf {
    if let Ok(bin) = std::env::var("COFFER_BIN") {
        return bin.into();
    }
    // Binaries live in <target>/<profile>, test executables one level below in deps/.
    let exe = std::env::current_exe().expect("current executable");
    let dir = exe.parent().expect("executable directory");
    let bin = [dir.join("coffer"), dir.join("../coffer")]
        .into_iter()
        .find(|p| p.exists())
        .unwrap_or_else(|| dir.join("../coffer"));
    assert!(
        bin.exists(),
        "{} not found: build it first with `cargo build -p coffer-api --bin coffer`",
        bin.display()
    );
    bin
}

/// A running `coffer server` process.
pub struct Server {
    child: Child,
    /// `https://127.0.0.1:PORT`.
    pub addr: String,
    /// The node's data directory.
    pub data_dir: PathBuf,
    /// The cluster CA certificate, PEM.
    pub ca_pem: String,
    /// Where the server's stderr (its log) goes.
    pub log_path: PathBuf,
    /// Lines the server printed on stdout.
    pub stdout: Vec<String>,
}

impl Server {
    /// Starts a dev server on `data_dir` with root token `token`.
    pub fn dev(data_dir: &Path, token: &str) -> Server {
        let args = [
            "server",
            "--dev",
            "--dev-listen-address",
            "127.0.0.1:0",
            "--dev-root-token-id",
            token,
            "--data-dir",
            data_dir.to_str().expect("utf-8 path"),
        ];
        Server::spawn(&args, data_dir)
    }

    /// Starts `coffer` with `args`, waits for the "listening on" line.
    pub fn spawn(args: &[&str], data_dir: &Path) -> Server {
        Server::spawn_env(args, data_dir, &[])
    }

    /// [`Server::spawn`] with extra environment variables.
    pub fn spawn_env(args: &[&str], data_dir: &Path, env: &[(&str, &str)]) -> Server {
        std::fs::create_dir_all(data_dir).expect("data dir");
        let log_path = data_dir.with_extension("log");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .expect("log file");
        let mut child = Command::new(coffer_bin())
            .args(args)
            .env(
                "COFFER_LOG_LEVEL",
                // `COFFER_TEST_LOG_LEVEL=info,openraft=info` to see elections in a test's logs.
                std::env::var("COFFER_TEST_LOG_LEVEL").unwrap_or_else(|_| "info".into()),
            )
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .expect("spawning coffer");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let deadline = Instant::now() + START_TIMEOUT;
        let mut lines = Vec::new();
        let addr = loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) => {
                    let found = line
                        .strip_prefix("Coffer server listening on ")
                        .map(str::to_string);
                    lines.push(line);
                    if let Some(addr) = found {
                        break addr;
                    }
                }
                Err(_) => {
                    let _ = child.kill();
                    let log = std::fs::read_to_string(&log_path).unwrap_or_default();
                    panic!("coffer did not start; stdout: {lines:?}\nlog:\n{log}");
                }
            }
        };
        // Keep draining stdout so the server never blocks on a full pipe.
        std::thread::spawn(move || while rx.recv().is_ok() {});
        let ca_pem = std::fs::read_to_string(data_dir.join("tls/ca.pem")).expect("ca.pem");
        Server {
            child,
            addr,
            data_dir: data_dir.to_path_buf(),
            ca_pem,
            log_path,
            stdout: lines,
        }
    }

    /// A client for this server.
    pub fn client(&self, token: &str) -> Client {
        Client::new(&self.addr, Some(&self.ca_pem), Some(token.to_string())).expect("client")
    }

    /// SIGKILL, and wait for the process to be gone.
    pub fn kill9(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The server's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// Runs the `coffer` CLI against this server with `token`; returns exit code, stdout and
    /// stderr. `VAULT_*` variables of the test's environment are kept out.
    pub fn cli(&self, token: &str, args: &[&str]) -> (i32, String, String) {
        let out = std::process::Command::new(coffer_bin())
            .args(args)
            .env("COFFER_ADDR", &self.addr)
            .env("COFFER_CACERT", self.ca_path())
            .env("COFFER_TOKEN", token)
            .env_remove("VAULT_ADDR")
            .env_remove("VAULT_TOKEN")
            .output()
            .expect("running coffer");
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// `operator init` with one share (for key-file seals); returns the root token.
    pub fn init_one_share(&self) -> String {
        self.init_one_share_keeping().0
    }

    /// `operator init` with one share; returns the root token and the share (base64).
    pub fn init_one_share_keeping(&self) -> (String, String) {
        let args = [
            "operator",
            "init",
            "-key-shares=1",
            "-key-threshold=1",
            "-format=json",
        ];
        let (code, out, err) = self.cli("", &args);
        assert_eq!(code, 0, "operator init: {err}");
        let init: serde_json::Value = serde_json::from_str(&out).expect("init json");
        (
            init["root_token"].as_str().expect("root token").to_string(),
            init["keys_base64"][0]
                .as_str()
                .expect("a share")
                .to_string(),
        )
    }

    /// Path of the CA file clients use.
    pub fn ca_path(&self) -> PathBuf {
        self.data_dir.join("tls/ca.pem")
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A random alphanumeric string (secret values the tests later search for).
pub fn random_string(len: usize) -> String {
    use rand::Rng;
    let mut rng = rand::thread_rng();
    (0..len)
        .map(|_| {
            let i = rng.gen_range(0..62);
            (b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"[i]) as char
        })
        .collect()
}

/// Every file under `dir` whose bytes contain `needle`.
pub fn files_containing(dir: &Path, needle: &[u8]) -> Vec<PathBuf> {
    let mut hits = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else if std::fs::read(&path)
                .is_ok_and(|b| b.windows(needle.len()).any(|w| w == needle))
            {
                hits.push(path);
            }
        }
    }
    hits
}
