//! `sys/metrics`: the node's figures. As Vault answers: the Prometheus text format (0.0.4)
//! with `?format=prometheus`; OpenMetrics (encoded by `prometheus-client`) when the client
//! accepts `application/openmetrics-text` (a Prometheus scrape); Vault's JSON shape
//! otherwise. A token with `read` on `sys/metrics` is required, except from the addresses
//! `[telemetry] unauthenticated_metrics_from` lists (Vault's
//! `unauthenticated_metrics_access`, bounded to a network).
//!
//! Names follow Prometheus' conventions: `coffer_` first, base units as suffixes
//! (`_seconds`, `_bytes`), counters ending in `_total`, one family per quantity with labels
//! for its parts.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::Duration;

use axum::http::header::CONTENT_TYPE;
use axum::response::{IntoResponse, Response};
use axum::Json;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::{Registry, Unit};
use serde_json::json;

use super::{ApiRequest, AppState};
use crate::error::{ApiError, ApiResult};

/// The OpenMetrics text format's content type.
const OPENMETRICS_TEXT: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The Prometheus text format's content type.
const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Upper bounds of the request latency histogram's buckets, in seconds.
const LATENCY_BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Requests served, by route class and method, with their latency: what
/// `coffer_http_requests_total` and `coffer_http_request_duration_seconds` report.
#[derive(Debug, Default)]
pub struct HttpStats {
    routes: Mutex<HashMap<(&'static str, &'static str), RouteStats>>,
}

#[derive(Debug, Default)]
struct RouteStats {
    codes: BTreeMap<u16, u64>,
    /// Per bucket of [`LATENCY_BUCKETS`], then one for slower requests.
    buckets: [u64; LATENCY_BUCKETS.len() + 1],
    sum: f64,
    count: u64,
}

impl HttpStats {
    /// Counts one request to `raw_path` (as received) with `method`, answered with `code`
    /// after `elapsed`.
    pub fn observe(&self, raw_path: &str, method: &str, code: u16, elapsed: Duration) {
        let key = (route_class(raw_path), method_label(method));
        let secs = elapsed.as_secs_f64();
        if let Ok(mut routes) = self.routes.lock() {
            let r = routes.entry(key).or_default();
            *r.codes.entry(code).or_default() += 1;
            let slot = LATENCY_BUCKETS
                .iter()
                .position(|b| secs <= *b)
                .unwrap_or(LATENCY_BUCKETS.len());
            r.buckets[slot] += 1;
            r.sum += secs;
            r.count += 1;
        }
    }
}

/// The class of route a path belongs to: a few values, whatever paths clients send, so the
/// label stays small. Secrets paths are `kv` (never the path itself: it may name a secret).
pub fn route_class(raw_path: &str) -> &'static str {
    let Some(path) = raw_path.strip_prefix("/v1/") else {
        return "other";
    };
    if path.starts_with("auth/userpass/login/") {
        "login"
    } else if path.starts_with("auth/token/") {
        "token"
    } else if path.starts_with("auth/") {
        "auth"
    } else if path.starts_with("sys/health") || path.starts_with("sys/seal-status") {
        "health"
    } else if path.starts_with("sys/storage/raft/snapshot") {
        "snapshot"
    } else if path.starts_with("sys/") {
        "sys"
    } else {
        "kv"
    }
}

fn method_label(method: &str) -> &'static str {
    match method {
        "GET" => "GET",
        "HEAD" => "HEAD",
        "POST" => "POST",
        "PUT" => "PUT",
        "PATCH" => "PATCH",
        "DELETE" => "DELETE",
        "LIST" => "LIST",
        _ => "other",
    }
}

/// Counter or gauge.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Counter,
    Gauge,
}

/// One metric family, as both encodings read it.
#[derive(Debug)]
struct Figure {
    /// Name without the `coffer_` prefix, the unit and `_total`.
    name: &'static str,
    help: &'static str,
    kind: Kind,
    unit: Option<Unit>,
    samples: Vec<(Vec<(&'static str, String)>, f64)>,
}

impl Figure {
    fn one(name: &'static str, kind: Kind, help: &'static str, value: f64) -> Self {
        Self {
            name,
            help,
            kind,
            unit: None,
            samples: vec![(Vec::new(), value)],
        }
    }

    fn counter(name: &'static str, help: &'static str, value: u64) -> Self {
        Self::one(name, Kind::Counter, help, value as f64)
    }

    fn gauge(name: &'static str, help: &'static str, value: f64) -> Self {
        Self::one(name, Kind::Gauge, help, value)
    }

    fn in_unit(mut self, unit: Unit) -> Self {
        self.unit = Some(unit);
        self
    }

    fn labelled(
        name: &'static str,
        kind: Kind,
        help: &'static str,
        samples: Vec<(Vec<(&'static str, String)>, f64)>,
    ) -> Self {
        Self {
            name,
            help,
            kind,
            unit: None,
            samples,
        }
    }

    /// The name a sample of this family carries in the text format.
    fn sample_name(&self) -> String {
        let mut name = format!("coffer_{}", self.name);
        match &self.unit {
            Some(Unit::Seconds) => name.push_str("_seconds"),
            Some(Unit::Bytes) => name.push_str("_bytes"),
            _ => {}
        }
        if self.kind == Kind::Counter {
            name.push_str("_total");
        }
        name
    }
}

/// One route class's latency histogram at a scrape.
#[derive(Debug)]
struct Latency {
    class: &'static str,
    method: &'static str,
    /// (upper bound, requests in that bucket alone).
    buckets: Vec<(f64, u64)>,
    sum: f64,
    count: u64,
}

/// Everything one scrape reports: the node's figures and the request statistics.
#[derive(Debug)]
struct Scrape {
    figures: Vec<Figure>,
    latency: Vec<Latency>,
}

impl Collector for Scrape {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        for f in &self.figures {
            let kind = match f.kind {
                Kind::Counter => MetricType::Counter,
                Kind::Gauge => MetricType::Gauge,
            };
            let mut family = encoder.encode_descriptor(f.name, f.help, f.unit.as_ref(), kind)?;
            match f.samples.as_slice() {
                // One sample without labels is written bare (`name value`, not `name{} value`).
                [(labels, value)] if labels.is_empty() => encode_value(f.kind, *value, family)?,
                samples => {
                    for (labels, value) in samples {
                        encode_value(f.kind, *value, family.encode_family(labels)?)?;
                    }
                }
            }
        }
        let mut family = encoder.encode_descriptor(
            "http_request_duration",
            "Time from a request's arrival to its answer (its audit records included), by route class and method.",
            Some(&Unit::Seconds),
            MetricType::Histogram,
        )?;
        for l in &self.latency {
            let labels = [("class", l.class), ("method", l.method)];
            family
                .encode_family(&labels)?
                .encode_histogram::<NoLabelSet>(l.sum, l.count, &l.buckets, None)?;
        }
        Ok(())
    }
}

fn encode_value(kind: Kind, value: f64, sample: MetricEncoder<'_>) -> Result<(), std::fmt::Error> {
    match kind {
        Kind::Counter => ConstCounter::new(value).encode(sample),
        Kind::Gauge => ConstGauge::new(value).encode(sample),
    }
}

/// The Prometheus text format (0.0.4) of an OpenMetrics exposition: a counter's `HELP` and
/// `TYPE` name the family as its samples are named (with `_total`), `HELP` keeps only the
/// escapes 0.0.4 knows, and `# UNIT` and `# EOF` go. Samples are the same in both formats.
fn prometheus_text(openmetrics: &str) -> String {
    let counters: std::collections::HashSet<&str> = openmetrics
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE ")?.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(openmetrics.len());
    for line in openmetrics.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let comment = ["# HELP ", "# TYPE "].into_iter().find_map(|prefix| {
            let (name, rest) = line.strip_prefix(prefix)?.split_once(' ')?;
            let total = if counters.contains(name) {
                "_total"
            } else {
                ""
            };
            let rest = if prefix == "# HELP " {
                rest.replace("\\\"", "\"")
            } else {
                rest.to_string()
            };
            Some(format!("{prefix}{name}{total} {rest}"))
        });
        out.push_str(comment.as_deref().unwrap_or(line));
        out.push('\n');
    }
    out
}

/// Whether the request asks for the Prometheus text format.
fn wants_prometheus(req: &ApiRequest) -> bool {
    req.query.get("format").is_some_and(|f| f == "prometheus") || req.accepts_openmetrics
}

/// `GET sys/metrics`.
pub(super) fn export(state: &AppState, req: &ApiRequest) -> ApiResult<Response> {
    let open = req.token.is_none()
        && req.client.is_some_and(|c| {
            state
                .metrics_open_to
                .iter()
                .any(|net| net.contains(c.0.ip()))
        });
    if !open {
        let auth = req.authenticate(&state.vault)?;
        state.vault.require_metrics(&auth)?;
    }
    let scrape = scrape(state);
    if wants_prometheus(req) {
        let mut registry = Registry::with_prefix("coffer");
        registry.register_collector(Box::new(scrape));
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &registry)
            .map_err(|e| ApiError::Vault(coffer_vault::VaultError::internal(e)))?;
        if req.accepts_openmetrics {
            return Ok(([(CONTENT_TYPE, OPENMETRICS_TEXT)], out).into_response());
        }
        return Ok(([(CONTENT_TYPE, PROMETHEUS_TEXT)], prometheus_text(&out)).into_response());
    }
    Ok(Json(vault_json(&scrape)).into_response())
}

/// Vault's JSON shape of `sys/metrics`: gauges, counters and samples (the latency), each
/// with its labels.
fn vault_json(scrape: &Scrape) -> serde_json::Value {
    let mut gauges = Vec::new();
    let mut counters = Vec::new();
    for f in &scrape.figures {
        for (labels, value) in &f.samples {
            let labels: BTreeMap<&str, &str> =
                labels.iter().map(|(k, v)| (*k, v.as_str())).collect();
            match f.kind {
                Kind::Gauge => {
                    gauges.push(json!({"Name": f.sample_name(), "Value": value, "Labels": labels}))
                }
                Kind::Counter => counters.push(json!({
                    "Name": f.sample_name(), "Count": value, "Sum": value, "Labels": labels,
                })),
            }
        }
    }
    let samples: Vec<serde_json::Value> = scrape
        .latency
        .iter()
        .map(|l| {
            let mean = if l.count > 0 {
                l.sum / l.count as f64
            } else {
                0.0
            };
            json!({
                "Name": "coffer_http_request_duration_seconds",
                "Count": l.count, "Sum": l.sum, "Mean": mean,
                "Labels": {"class": l.class, "method": l.method},
            })
        })
        .collect();
    json!({
        "Timestamp": coffer_vault::clock::rfc3339(coffer_vault::clock::now()),
        "Gauges": gauges,
        "Counters": counters,
        "Samples": samples,
        "Points": [],
    })
}

/// The node's figures now.
fn scrape(state: &AppState) -> Scrape {
    use Kind::{Counter, Gauge};
    let m = state.vault.node_metrics();
    let connections = &state.connections;
    let flag = |b: bool| f64::from(u8::from(b));
    let mut figures = vec![
        Figure::labelled(
            "build_info",
            Gauge,
            "Always 1: the version of this build, its commit, and the Vault API version it answers as.",
            vec![(
                vec![
                    ("version", coffer_vault::COFFER_VERSION.to_string()),
                    ("commit", env!("COFFER_COMMIT").to_string()),
                    ("vault_api_version", coffer_vault::VAULT_API_VERSION.to_string()),
                ],
                1.0,
            )],
        ),
        Figure::counter("audit_appends", "Audit records made durable in the local spool.", m.audit_appends),
        Figure::counter("audit_fsyncs", "Spool group commits (one fsync each).", m.audit_fsyncs),
        Figure::one("audit_fsync", Counter, "Time spent in spool fsync.", m.audit_fsync_seconds)
            .in_unit(Unit::Seconds),
        Figure::one(
            "audit_wait",
            Counter,
            "Time requests waited for their audit record to be durable, summed.",
            m.audit_wait_seconds,
        )
        .in_unit(Unit::Seconds),
        Figure::gauge("audit_spool_last_seq", "Highest durable spool sequence number.", m.audit_spool_last_seq as f64),
        Figure::gauge(
            "audit_merged_seq",
            "Highest sequence number of this node merged into the cluster log.",
            m.audit_merged_seq as f64,
        ),
        Figure::gauge(
            "audit_spool_backlog_records",
            "Audit records in this node's spool not yet merged into the cluster log (the merge lag).",
            m.audit_spool_backlog as f64,
        ),
        Figure::gauge(
            "audit_archive_segments",
            "Audit archive segment files this node holds (records moved out of the state by [audit] archive_after).",
            m.audit_archive_segments as f64,
        ),
        Figure::gauge(
            "audit_archive",
            "Size of the audit archive segment files this node holds.",
            m.audit_archive_bytes as f64,
        )
        .in_unit(Unit::Bytes),
        Figure::gauge(
            "audit_spool_failed",
            "1 if the audit spool refuses records (audited requests are refused until restart).",
            flag(m.audit_spool_failed),
        ),
        Figure::gauge("raft_applied_index", "Last Raft log index applied locally.", m.applied_index as f64),
        Figure::gauge("raft_last_log_index", "Last Raft log index.", m.last_log_index as f64),
        Figure::gauge("raft_term", "Current Raft term.", m.term as f64),
        Figure::gauge("is_leader", "1 if this node is the leader.", flag(m.is_leader)),
        Figure::gauge("read_only", "1 if this node is a read-only standby (no leader or no quorum).", flag(m.read_only)),
        Figure::gauge(
            "last_contact",
            "Since the last contact with a leader (on a leader: since a quorum acknowledged it).",
            m.last_contact_ms as f64 / 1000.0,
        )
        .in_unit(Unit::Seconds),
        Figure::counter(
            "mode_changes",
            "Node mode changes (leader, follower, read-only) since start.",
            m.mode_changes,
        ),
        Figure::gauge("sealed", "1 if this node is sealed.", flag(m.sealed)),
        Figure::counter("unseal_failures", "Unseal shares refused since start.", m.unseal_failures),
        Figure::gauge("http_connections", "Client connections open now.", connections.open() as f64),
        Figure::counter(
            "http_connections_evicted",
            "Idle client connections closed to make room at the connection cap.",
            connections.evicted.load(std::sync::atomic::Ordering::Relaxed),
        ),
        Figure::counter(
            "http_connections_refused",
            "Client connections turned away because every open one was busy.",
            connections.refused.load(std::sync::atomic::Ordering::Relaxed),
        ),
        Figure::labelled(
            "peer_refusals",
            Counter,
            "Peers and peer requests refused on the peer port, by reason.",
            m.peer_refusals.iter().map(|(r, n)| (vec![("reason", r.to_string())], *n as f64)).collect(),
        ),
        Figure::labelled(
            "read_index_reads",
            Counter,
            "Linearizable reads confirmed, by where (leader: a quorum round; follower: a read index asked of the leader).",
            m.read_index.iter().map(|(side, reads, _)| (vec![("side", side.to_string())], *reads as f64)).collect(),
        ),
        Figure::labelled(
            "read_index_rounds",
            Counter,
            "Leadership confirmations run for them (concurrent reads share one).",
            m.read_index.iter().map(|(side, _, rounds)| (vec![("side", side.to_string())], *rounds as f64)).collect(),
        ),
        Figure::labelled(
            "raft_entries_sent",
            Counter,
            "Log entries sent to followers while leading: whole, or as ids to a follower that held them (after a leader change).",
            vec![
                (vec![("how", "whole".to_string())], m.entries_sent.0 as f64),
                (vec![("how", "as_ids".to_string())], m.entries_sent.1 as f64),
            ],
        ),
    ];
    if m.is_leader {
        figures.push(Figure::labelled(
            "raft_peer_lag_entries",
            Gauge,
            "Log entries each member is behind the leader (on the leader; absent for a member never heard from).",
            m.peers.iter().filter_map(|p| Some((vec![("peer", p.id.to_string())], p.lag? as f64))).collect(),
        ));
        figures.push(
            Figure::labelled(
                "raft_peer_last_contact",
                Gauge,
                "Since the leader last had an answer from each member (on the leader).",
                m.peers
                    .iter()
                    .filter_map(|p| {
                        Some((
                            vec![("peer", p.id.to_string())],
                            p.last_contact_ms? as f64 / 1000.0,
                        ))
                    })
                    .collect(),
            )
            .in_unit(Unit::Seconds),
        );
        figures.push(Figure::gauge(
            "raft_failure_tolerance",
            "Voters that may fail with a quorum of healthy voters left (on the leader, as autopilot counts).",
            m.failure_tolerance as f64,
        ));
    }
    if let Some(b) = &m.backups {
        figures.push(
            Figure::gauge(
                "last_backup_timestamp",
                "When the last scheduled backup succeeded (Unix time; 0: none yet).",
                b.last_success_unix.unwrap_or(0) as f64,
            )
            .in_unit(Unit::Seconds),
        );
        figures.push(Figure::counter(
            "backup_failures",
            "Scheduled backups that failed since start.",
            b.failures,
        ));
    }
    let mut requests = Vec::new();
    let mut latency = Vec::new();
    if let Ok(routes) = state.http.routes.lock() {
        let mut keys: Vec<_> = routes.keys().copied().collect();
        keys.sort_unstable();
        for (class, method) in keys {
            let r = &routes[&(class, method)];
            for (code, n) in &r.codes {
                let labels = vec![
                    ("class", class.to_string()),
                    ("method", method.to_string()),
                    ("code", code.to_string()),
                ];
                requests.push((labels, *n as f64));
            }
            let mut buckets: Vec<(f64, u64)> =
                LATENCY_BUCKETS.iter().copied().zip(r.buckets).collect();
            // The encoder writes f64::MAX as `+Inf`, the last bucket of every histogram.
            buckets.push((f64::MAX, r.buckets[LATENCY_BUCKETS.len()]));
            latency.push(Latency {
                class,
                method,
                buckets,
                sum: r.sum,
                count: r.count,
            });
        }
    }
    figures.push(Figure::labelled(
        "http_requests",
        Counter,
        "Requests answered, by route class, method and status code.",
        requests,
    ));
    Scrape { figures, latency }
}

#[cfg(test)]
mod tests {
    use super::prometheus_text;

    #[test]
    fn prometheus_text_names_counter_families_as_their_samples() {
        let open = "# HELP coffer_x Things \\\"done\\\".\n# TYPE coffer_x counter\ncoffer_x_total 3\n\
                    # HELP coffer_t Time.\n# TYPE coffer_t gauge\n# UNIT coffer_t seconds\ncoffer_t 1.5\n# EOF\n";
        assert_eq!(
            prometheus_text(open),
            "# HELP coffer_x_total Things \"done\".\n# TYPE coffer_x_total counter\ncoffer_x_total 3\n\
             # HELP coffer_t Time.\n# TYPE coffer_t gauge\ncoffer_t 1.5\n"
        );
    }
}
