//! `sys/metrics`: the node's figures in the Prometheus text format (a token with `read` on
//! `sys/metrics` required).

use std::fmt::Write as _;
use std::sync::atomic::Ordering::Relaxed;

use axum::http::header::CONTENT_TYPE;
use axum::response::{IntoResponse, Response};

use super::{ApiRequest, AppState};
use crate::error::ApiResult;

/// The Prometheus text exposition format's content type.
const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4";

/// `GET sys/metrics`.
pub(super) fn export(state: &AppState, req: &ApiRequest) -> ApiResult<Response> {
    let auth = req.authenticate(&state.vault)?;
    let m = state.vault.metrics(&auth)?;
    let connections = &state.connections;
    let flag = |b: bool| u8::from(b).to_string();
    let mut out = String::new();
    let mut metric = |name: &str, kind: &str, help: &str, value: String| {
        let _ = write!(
            out,
            "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}\n"
        );
    };
    metric(
        "coffer_audit_appends_total",
        "counter",
        "Audit records made durable in the local spool.",
        m.audit_appends.to_string(),
    );
    metric(
        "coffer_audit_fsyncs_total",
        "counter",
        "Spool group commits (one fsync each).",
        m.audit_fsyncs.to_string(),
    );
    metric(
        "coffer_audit_fsync_seconds_total",
        "counter",
        "Time spent in spool fsync.",
        m.audit_fsync_seconds.to_string(),
    );
    metric(
        "coffer_audit_wait_seconds_total",
        "counter",
        "Time requests waited for their audit record to be durable, summed.",
        m.audit_wait_seconds.to_string(),
    );
    metric(
        "coffer_audit_spool_last_seq",
        "gauge",
        "Highest durable spool sequence number.",
        m.audit_spool_last_seq.to_string(),
    );
    metric(
        "coffer_audit_merged_seq",
        "gauge",
        "Highest sequence number of this node merged into the cluster log.",
        m.audit_merged_seq.to_string(),
    );
    metric(
        "coffer_audit_spool_backlog_records",
        "gauge",
        "Audit records in this node's spool not yet merged into the cluster log.",
        m.audit_spool_backlog.to_string(),
    );
    metric(
        "coffer_audit_archive_segments",
        "gauge",
        "Audit archive segment files this node holds (records moved out of the state by [audit] archive_after).",
        m.audit_archive_segments.to_string(),
    );
    metric(
        "coffer_audit_archive_bytes",
        "gauge",
        "Bytes of the audit archive segment files this node holds.",
        m.audit_archive_bytes.to_string(),
    );
    if let Some(b) = &m.backups {
        metric(
            "coffer_last_backup_timestamp_seconds",
            "gauge",
            "When the last scheduled backup succeeded (Unix time; 0: none yet).",
            b.last_success_unix.unwrap_or(0).to_string(),
        );
        metric(
            "coffer_backup_failures_total",
            "counter",
            "Scheduled backups that failed since start.",
            b.failures.to_string(),
        );
    }
    metric(
        "coffer_raft_applied_index",
        "gauge",
        "Last Raft log index applied locally.",
        m.applied_index.to_string(),
    );
    metric(
        "coffer_raft_last_log_index",
        "gauge",
        "Last Raft log index.",
        m.last_log_index.to_string(),
    );
    metric(
        "coffer_raft_term",
        "gauge",
        "Current Raft term.",
        m.term.to_string(),
    );
    metric(
        "coffer_is_leader",
        "gauge",
        "1 if this node is the leader.",
        flag(m.is_leader),
    );
    metric(
        "coffer_read_only",
        "gauge",
        "1 if this node is a read-only standby (no leader or no quorum).",
        flag(m.read_only),
    );
    metric(
        "coffer_last_contact_ms",
        "gauge",
        "Milliseconds since the last contact with a leader (on a leader: a quorum ack).",
        m.last_contact_ms.to_string(),
    );
    metric(
        "coffer_mode_changes_total",
        "counter",
        "Node mode changes (leader, follower, read-only) since start.",
        m.mode_changes.to_string(),
    );
    metric(
        "coffer_sealed",
        "gauge",
        "1 if this node is sealed.",
        flag(m.sealed),
    );
    metric(
        "coffer_unseal_failures_total",
        "counter",
        "Unseal shares refused since start.",
        m.unseal_failures.to_string(),
    );
    metric(
        "coffer_http_connections",
        "gauge",
        "Client connections open now.",
        connections.open().to_string(),
    );
    metric(
        "coffer_http_connections_evicted_total",
        "counter",
        "Idle client connections closed to make room at the connection cap.",
        connections.evicted.load(Relaxed).to_string(),
    );
    metric(
        "coffer_http_connections_refused_total",
        "counter",
        "Client connections turned away because every open one was busy.",
        connections.refused.load(Relaxed).to_string(),
    );
    out.push_str(
        "# HELP coffer_peer_refusals_total Peers and peer requests refused on the peer port, by reason.\n\
         # TYPE coffer_peer_refusals_total counter\n",
    );
    for (reason, n) in &m.peer_refusals {
        let _ = writeln!(out, "coffer_peer_refusals_total{{reason=\"{reason}\"}} {n}");
    }
    out.push_str(
        "# HELP coffer_read_index_reads_total Linearizable reads confirmed, by where (leader: a quorum round; follower: a read index asked of the leader).\n\
         # TYPE coffer_read_index_reads_total counter\n",
    );
    for (side, reads, _) in &m.read_index {
        let _ = writeln!(
            out,
            "coffer_read_index_reads_total{{side=\"{side}\"}} {reads}"
        );
    }
    out.push_str(
        "# HELP coffer_read_index_rounds_total Leadership confirmations run for them (concurrent reads share one).\n\
         # TYPE coffer_read_index_rounds_total counter\n",
    );
    for (side, _, rounds) in &m.read_index {
        let _ = writeln!(
            out,
            "coffer_read_index_rounds_total{{side=\"{side}\"}} {rounds}"
        );
    }
    out.push_str(
        "# HELP coffer_raft_entries_sent_total Log entries sent to followers while leading: whole, or as ids to a follower that held them (after a leader change).\n\
         # TYPE coffer_raft_entries_sent_total counter\n",
    );
    let (whole, held) = m.entries_sent;
    let _ = writeln!(
        out,
        "coffer_raft_entries_sent_total{{how=\"whole\"}} {whole}"
    );
    let _ = writeln!(
        out,
        "coffer_raft_entries_sent_total{{how=\"as_ids\"}} {held}"
    );
    Ok(([(CONTENT_TYPE, PROMETHEUS_TEXT)], out).into_response())
}
