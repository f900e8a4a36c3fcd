//! Server configuration: one TOML file, overridden by `COFFER_*` environment variables, then
//! by flags (flags > env > file). [`ServerConfig::validate`] names the offending field.

use std::net::SocketAddr;
use std::path::PathBuf;

use coffer_vault::node::RaftTuning;
use serde::Deserialize;

/// How the node obtains its root key at start.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase", deny_unknown_fields)]
pub enum SealConfig {
    /// Operators enter key shares (`coffer operator unseal`). The default.
    #[default]
    Shamir,
    /// The root key lives in a file (mode 0600) written at init; the node unseals itself at
    /// start. For unattended restarts; whoever reads the file can decrypt the vault.
    File {
        /// Path of the key file.
        path: PathBuf,
    },
}

/// API TLS certificate supplied by the operator instead of one issued by the cluster CA.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsFiles {
    /// Certificate chain, PEM.
    pub cert_file: Option<PathBuf>,
    /// Private key, PEM.
    pub key_file: Option<PathBuf>,
}

/// Where mode changes are announced.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NotifyConfig {
    /// URL that receives a JSON POST on every mode change (node, old and new mode, reason,
    /// time). `http://` or `https://` (verified against `ca_file` if set).
    pub webhook_url: Option<String>,
    /// CA certificate (PEM) for an `https://` webhook.
    pub ca_file: Option<PathBuf>,
}

/// Scheduled backups (`[backup]`): every `interval`, an unsealed node (a read-only standby
/// too) writes a backup file into `dir` atomically and keeps the newest `keep`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackupConfig {
    /// Where the files go (created, mode 0700). Required.
    pub dir: PathBuf,
    /// How often, e.g. `1h`, `30m`. Default `1h`.
    #[serde(default = "BackupConfig::default_interval")]
    pub interval: String,
    /// How many files of this node to keep. Default 24.
    #[serde(default = "BackupConfig::default_keep")]
    pub keep: usize,
}

impl BackupConfig {
    fn default_interval() -> String {
        "1h".into()
    }

    fn default_keep() -> usize {
        24
    }

    /// The schedule a node runs.
    pub fn schedule(&self) -> Result<coffer_vault::BackupSchedule, String> {
        let secs = coffer_vault::clock::parse_duration_secs(&self.interval)
            .filter(|s| *s >= 1)
            .ok_or_else(|| {
                format!(
                    "backup.interval: {:?} is not a duration like 1h or 30m",
                    self.interval
                )
            })?;
        if self.keep == 0 {
            return Err("backup.keep: must be at least 1".into());
        }
        if self.dir.as_os_str().is_empty() {
            return Err("backup.dir: required".into());
        }
        Ok(coffer_vault::BackupSchedule {
            dir: self.dir.clone(),
            interval: std::time::Duration::from_secs(secs),
            keep: self.keep,
        })
    }
}

/// Audit retention (`[audit]`).
#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuditConfig {
    /// Merged audit records older than this (by the time their node wrote them) leave the
    /// replicated state for archive segment files in each member's `archive/` directory,
    /// still checked by `audit verify` and read by `audit export` (see ARCHITECTURE.md).
    /// A duration like `7d`, `12h`, `90m`; `0` keeps every record in the state. Default
    /// `7d`: a week of records stays in the state, its snapshots, backups and packs, and in
    /// every node's queries; older ones cost disk on the members that archived them and
    /// nothing in the state. Shorter bounds the state more tightly (a busy cluster adds
    /// about 1 KiB per audited request); a member that catches up from a snapshot holds
    /// only segments archived after it.
    pub archive_after: String,
}

impl Default for AuditConfig {
    fn default() -> Self {
        Self {
            archive_after: "7d".into(),
        }
    }
}

impl AuditConfig {
    /// The age past which records are archived; `None` keeps them all.
    pub fn archive_after(&self) -> Result<Option<std::time::Duration>, String> {
        let secs =
            coffer_vault::clock::parse_duration_secs(&self.archive_after).ok_or_else(|| {
                format!(
                    "audit.archive_after: {:?} is not a duration like 7d, 12h or 90m (0: never)",
                    self.archive_after
                )
            })?;
        Ok((secs > 0).then(|| std::time::Duration::from_secs(secs)))
    }
}

/// Metrics scraping (`[telemetry]`).
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TelemetryConfig {
    /// Networks (`10.0.0.0/8`, `127.0.0.1/32`, `fd00::/8`) whose clients may read
    /// `sys/metrics` without a token, as Vault's `unauthenticated_metrics_access` lets a
    /// Prometheus server scrape, but bounded to where the scraper is. Default: none (every
    /// scrape needs a token with `read` on `sys/metrics`). The figures are counts, states
    /// and sizes, never secrets, paths or names; a request that presents a token is checked
    /// as usual.
    pub unauthenticated_metrics_from: Vec<String>,
}

impl TelemetryConfig {
    /// The networks, parsed; the error names the entry.
    pub fn open_networks(&self) -> Result<Vec<IpNetwork>, String> {
        self.unauthenticated_metrics_from
            .iter()
            .map(|s| {
                IpNetwork::parse(s).ok_or_else(|| {
                    format!(
                        "telemetry.unauthenticated_metrics_from: {s:?} is not a network like 10.0.0.0/8 or fd00::/8"
                    )
                })
            })
            .collect()
    }
}

/// An IP network: an address and a prefix length (`10.0.0.0/8`; a bare address is the one
/// address).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IpNetwork {
    addr: std::net::IpAddr,
    prefix: u8,
}

impl IpNetwork {
    /// Parses `addr/prefix` or a bare address.
    pub fn parse(text: &str) -> Option<Self> {
        let (addr, prefix) = match text.trim().split_once('/') {
            Some((a, p)) => (a.parse().ok()?, Some(p.parse::<u8>().ok()?)),
            None => (text.trim().parse().ok()?, None),
        };
        let max = match addr {
            std::net::IpAddr::V4(_) => 32,
            std::net::IpAddr::V6(_) => 128,
        };
        let prefix = prefix.unwrap_or(max);
        (prefix <= max).then_some(Self { addr, prefix })
    }

    /// Whether `ip` is in the network (an IPv4 client seen as an IPv4-mapped IPv6 address
    /// counts as IPv4).
    pub fn contains(&self, ip: std::net::IpAddr) -> bool {
        use std::net::IpAddr::{V4, V6};
        let ip = match ip {
            V6(v6) => v6.to_ipv4_mapped().map_or(ip, V4),
            v4 => v4,
        };
        let bits = |len: u32, a: u128, b: u128| {
            let shift = len - u32::from(self.prefix);
            shift >= len || (a >> shift) == (b >> shift)
        };
        match (self.addr, ip) {
            (V4(net), V4(ip)) => bits(32, u32::from(net).into(), u32::from(ip).into()),
            (V6(net), V6(ip)) => bits(128, u128::from(net), u128::from(ip)),
            _ => false,
        }
    }
}

/// The whole server configuration.
#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    /// This node's Raft id, unique in the cluster. Default 1.
    pub node_id: u64,
    /// Where the node keeps RocksDB, snapshots, TLS material. Required.
    pub data_dir: PathBuf,
    /// The HTTPS URL clients reach this node at. Default `https://127.0.0.1:8200`.
    pub api_addr: String,
    /// Socket address the API binds; default: host and port of `api_addr`. Port 0 picks a
    /// free port (the chosen address is printed).
    pub listen_addr: Option<String>,
    /// `host:port` of the mutual-TLS peer listener. Default `127.0.0.1:8201`.
    pub peer_addr: String,
    /// Cluster name reported by `sys/health`. Default `coffer`.
    pub cluster_name: String,
    /// Largest request body in bytes. Default 1 MiB; larger bodies get 413.
    pub max_request_bytes: usize,
    /// `text` or `json` logs (stderr). Default `text`.
    pub log_format: String,
    /// Log filter (`info`, `debug`, `coffer=debug,warn`). Default `info`.
    pub log_level: String,
    /// Seal: `{ type = "shamir" }` (default) or `{ type = "file", path = "…" }`.
    pub seal: SealConfig,
    /// Optional operator-supplied API certificate.
    pub tls: TlsFiles,
    /// Raft timing and snapshot settings.
    pub raft: RaftTuning,
    /// RocksDB's memory and disk footprint.
    pub storage: coffer_vault::node::StorageTuning,
    /// A node that hears nothing from a leader (a leader: no quorum acknowledgement) for this
    /// long turns read-only standby. Default 1000.
    pub standby_after_ms: u64,
    /// Mode-change notifications.
    pub notify: NotifyConfig,
    /// TTL of a token created or logged in without one, seconds (Vault's
    /// `default_lease_ttl`). Default 2 764 800 (32 days).
    pub default_lease_ttl_secs: u64,
    /// Longest any token may live, seconds: TTLs, periods and explicit maxima are capped
    /// (Vault's `max_lease_ttl`). Default 2 764 800 (32 days).
    pub max_lease_ttl_secs: u64,
    /// Limits of the HTTPS front against idle, slow and greedy clients.
    pub http: crate::https::HttpLimits,
    /// Scheduled backups (none by default).
    pub backup: Option<BackupConfig>,
    /// Audit retention.
    pub audit: AuditConfig,
    /// Metrics scraping.
    pub telemetry: TelemetryConfig,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            node_id: 1,
            data_dir: PathBuf::new(),
            api_addr: "https://127.0.0.1:8200".into(),
            listen_addr: None,
            peer_addr: "127.0.0.1:8201".into(),
            cluster_name: "coffer".into(),
            max_request_bytes: 1 << 20,
            log_format: "text".into(),
            log_level: "info".into(),
            seal: SealConfig::Shamir,
            tls: TlsFiles::default(),
            raft: RaftTuning::default(),
            storage: coffer_vault::node::StorageTuning::default(),
            standby_after_ms: 1000,
            notify: NotifyConfig::default(),
            default_lease_ttl_secs: 768 * 3600,
            max_lease_ttl_secs: 768 * 3600,
            http: crate::https::HttpLimits::default(),
            backup: None,
            audit: AuditConfig::default(),
            telemetry: TelemetryConfig::default(),
        }
    }
}

impl ServerConfig {
    /// Reads a TOML file.
    pub fn from_file(path: &std::path::Path) -> Result<Self, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("reading {}: {e}", path.display()))?;
        toml::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))
    }

    /// Applies `COFFER_*` environment overrides.
    pub fn apply_env(&mut self, get: impl Fn(&str) -> Option<String>) -> Result<(), String> {
        if let Some(v) = get("COFFER_NODE_ID") {
            self.node_id = v
                .parse()
                .map_err(|_| format!("COFFER_NODE_ID: {v:?} is not a number"))?;
        }
        if let Some(v) = get("COFFER_DATA_DIR") {
            self.data_dir = v.into();
        }
        if let Some(v) = get("COFFER_API_ADDR") {
            self.api_addr = v;
        }
        if let Some(v) = get("COFFER_LISTEN_ADDR") {
            self.listen_addr = Some(v);
        }
        if let Some(v) = get("COFFER_PEER_ADDR") {
            self.peer_addr = v;
        }
        if let Some(v) = get("COFFER_LOG_LEVEL") {
            self.log_level = v;
        }
        if let Some(v) = get("COFFER_LOG_FORMAT") {
            self.log_format = v;
        }
        if let Some(v) = get("COFFER_AUDIT_ARCHIVE_AFTER") {
            self.audit.archive_after = v;
        }
        Ok(())
    }

    /// The socket address to bind for the API.
    pub fn listen(&self) -> Result<SocketAddr, String> {
        match &self.listen_addr {
            Some(text) => text
                .parse()
                .map_err(|_| format!("listen_addr: {text:?} is not an IP:port socket address")),
            None => {
                let (host, port) = api_host_port(&self.api_addr)?;
                let ip = host.parse::<std::net::IpAddr>().map_err(|_| {
                    format!(
                        "listen_addr: required when api_addr's host ({host}) is not an IP address"
                    )
                })?;
                Ok(SocketAddr::new(ip, port))
            }
        }
    }

    /// Checks every field; the message names the field.
    pub fn validate(&self) -> Result<(), String> {
        if self.node_id == 0 {
            return Err("node_id: must be at least 1".into());
        }
        if self.data_dir.as_os_str().is_empty() {
            return Err(
                "data_dir: required (in the config file, COFFER_DATA_DIR or --data-dir)".into(),
            );
        }
        api_host_port(&self.api_addr)?;
        self.listen()?;
        if self
            .peer_addr
            .rsplit_once(':')
            .and_then(|(_, p)| p.parse::<u16>().ok())
            .is_none()
        {
            return Err(format!("peer_addr: {:?} is not host:port", self.peer_addr));
        }
        if !(1024..=64 << 20).contains(&self.max_request_bytes) {
            return Err("max_request_bytes: must be between 1024 and 67108864".into());
        }
        if !matches!(self.log_format.as_str(), "text" | "json") {
            return Err(format!(
                "log_format: {:?} is not \"text\" or \"json\"",
                self.log_format
            ));
        }
        if self.cluster_name.is_empty() {
            return Err("cluster_name: must not be empty".into());
        }
        if self.tls.cert_file.is_some() != self.tls.key_file.is_some() {
            return Err("tls: cert_file and key_file go together".into());
        }
        self.raft
            .to_openraft(&self.cluster_name)
            .map_err(|e| format!("raft: {e}"))?;
        self.storage.validate()?;
        if self.standby_after_ms < self.raft.election_timeout_max_ms {
            return Err(format!(
                "standby_after_ms: {} is shorter than raft.election_timeout_max_ms ({}); a node would turn read-only during every normal election",
                self.standby_after_ms, self.raft.election_timeout_max_ms
            ));
        }
        const TEN_YEARS: u64 = 10 * 365 * 86400;
        if !(60..=TEN_YEARS).contains(&self.max_lease_ttl_secs) {
            return Err(format!(
                "max_lease_ttl_secs: must be between 60 and {TEN_YEARS} seconds"
            ));
        }
        if self.default_lease_ttl_secs == 0 || self.default_lease_ttl_secs > self.max_lease_ttl_secs
        {
            return Err(
                "default_lease_ttl_secs: must be at least 1 and at most max_lease_ttl_secs".into(),
            );
        }
        self.http.validate()?;
        if let Some(backup) = &self.backup {
            backup.schedule()?;
        }
        self.audit.archive_after()?;
        self.telemetry.open_networks()?;
        if let Some(url) = &self.notify.webhook_url {
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                return Err(format!(
                    "notify.webhook_url: {url:?} must start with http:// or https://"
                ));
            }
        }
        Ok(())
    }
}

/// `https://host:port` -> (`host`, port), an IPv6 host without its brackets.
pub(crate) fn api_host_port(api_addr: &str) -> Result<(String, u16), String> {
    let rest = api_addr
        .strip_prefix("https://")
        .ok_or_else(|| format!("api_addr: {api_addr:?} must start with https://"))?;
    let host_port = rest.trim_end_matches('/');
    let (host, port) = host_port
        .rsplit_once(':')
        .and_then(|(h, p)| Some((h, p.parse::<u16>().ok()?)))
        .filter(|(h, _)| !h.is_empty())
        .ok_or_else(|| format!("api_addr: {api_addr:?} needs a host and an explicit port"))?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    Ok((host.to_string(), port))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> ServerConfig {
        ServerConfig {
            data_dir: "/tmp/x".into(),
            ..Default::default()
        }
    }

    #[test]
    fn metrics_networks_parse_and_match() {
        let net = |s: &str| IpNetwork::parse(s).unwrap();
        let ip = |s: &str| s.parse::<std::net::IpAddr>().unwrap();
        assert!(net("10.0.0.0/8").contains(ip("10.200.3.4")));
        assert!(!net("10.0.0.0/8").contains(ip("11.0.0.1")));
        assert!(net("127.0.0.1").contains(ip("127.0.0.1")));
        assert!(!net("127.0.0.1").contains(ip("127.0.0.2")));
        assert!(net("0.0.0.0/0").contains(ip("203.0.113.9")));
        assert!(
            net("10.0.0.0/8").contains(ip("::ffff:10.1.2.3")),
            "IPv4-mapped"
        );
        assert!(net("fd00::/8").contains(ip("fd12::1")));
        assert!(!net("fd00::/8").contains(ip("10.0.0.1")));
        for bad in ["10.0.0.0/33", "fd00::/129", "nonsense", "10.0.0/8", ""] {
            assert!(IpNetwork::parse(bad).is_none(), "{bad}");
        }
        let cfg = TelemetryConfig {
            unauthenticated_metrics_from: vec!["10.0.0.0/8".into(), "x".into()],
        };
        assert!(cfg.open_networks().unwrap_err().contains("\"x\""));
    }

    #[test]
    fn file_env_precedence_and_validation() {
        let mut cfg: ServerConfig = toml::from_str(
            r#"
            node_id = 3
            data_dir = "/var/lib/coffer"
            api_addr = "https://10.0.0.3:8200"
            peer_addr = "10.0.0.3:8201"
            seal = { type = "file", path = "/etc/coffer/root.key" }
            [raft]
            heartbeat_interval_ms = 50
            [storage]
            block_cache_bytes = 67108864
            [audit]
            archive_after = "30d"
            "#,
        )
        .unwrap();
        assert_eq!(
            cfg.seal,
            SealConfig::File {
                path: "/etc/coffer/root.key".into()
            }
        );
        assert_eq!(cfg.raft.heartbeat_interval_ms, 50);
        assert_eq!(cfg.storage.block_cache_bytes, 64 << 20);
        assert_eq!(
            cfg.storage.write_buffer_bytes,
            8 << 20,
            "the rest keep their defaults"
        );
        assert_eq!(
            cfg.audit.archive_after().unwrap(),
            Some(std::time::Duration::from_secs(30 * 86400))
        );
        cfg.apply_env(|k| (k == "COFFER_NODE_ID").then(|| "4".to_string()))
            .unwrap();
        assert_eq!(cfg.node_id, 4);
        assert_eq!(cfg.listen().unwrap().to_string(), "10.0.0.3:8200");
        cfg.validate().unwrap();
    }

    #[test]
    fn bad_fields_are_named() {
        type Mutation = Box<dyn Fn(&mut ServerConfig)>;
        let cases: Vec<(Mutation, &str)> = vec![
            (Box::new(|c| c.node_id = 0), "node_id"),
            (Box::new(|c| c.data_dir = PathBuf::new()), "data_dir"),
            (Box::new(|c| c.api_addr = "http://x:1".into()), "api_addr"),
            (Box::new(|c| c.peer_addr = "nohost".into()), "peer_addr"),
            (Box::new(|c| c.max_request_bytes = 1), "max_request_bytes"),
            (Box::new(|c| c.log_format = "xml".into()), "log_format"),
            (Box::new(|c| c.raft.election_timeout_min_ms = 10), "raft"),
            (Box::new(|c| c.standby_after_ms = 100), "standby_after_ms"),
            (
                Box::new(|c| c.notify.webhook_url = Some("ftp://x".into())),
                "notify.webhook_url",
            ),
            (Box::new(|c| c.max_lease_ttl_secs = 1), "max_lease_ttl_secs"),
            (
                Box::new(|c| c.default_lease_ttl_secs = c.max_lease_ttl_secs + 1),
                "default_lease_ttl_secs",
            ),
            (
                Box::new(|c| c.http.max_connections = 1),
                "http.max_connections",
            ),
            (
                Box::new(|c| c.storage.write_buffers_per_cf = 1),
                "storage.write_buffers_per_cf",
            ),
            (
                Box::new(|c| c.storage.wal_total_bytes = 1 << 20),
                "storage.wal_total_bytes",
            ),
            (
                Box::new(|c| c.storage.block_cache_bytes = 0),
                "storage.block_cache_bytes",
            ),
            (
                Box::new(|c| c.audit.archive_after = "7 days".into()),
                "audit.archive_after",
            ),
        ];
        for (mutate, field) in cases {
            let mut cfg = base();
            mutate(&mut cfg);
            let err = cfg.validate().unwrap_err();
            assert!(err.starts_with(field), "{field}: {err}");
        }
        assert!(
            toml::from_str::<ServerConfig>("nodeid = 1").is_err(),
            "unknown keys are refused"
        );
        assert!(
            toml::from_str::<ServerConfig>("[storage]\nblock_cache = 1").is_err(),
            "unknown storage keys are refused"
        );
        let mut never = base();
        never.audit.archive_after = "0".into();
        assert_eq!(never.audit.archive_after().unwrap(), None);
    }
}
