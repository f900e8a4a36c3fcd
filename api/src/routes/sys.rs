//! `sys/*` and `auth/token/*-self` handlers.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use base64::Engine as _;
use coffer_raft::{MemberStatus, MembershipChange};
use coffer_vault::rules::policy::Capability;
use coffer_vault::{Auth, InitRequest};
use serde::Deserialize;
use serde_json::{json, Value};

use super::{ApiRequest, AppState, Op};
use crate::error::{ApiError, ApiResult};

/// Vault's response envelope around `data`.
pub fn envelope(req: &ApiRequest, data: Value) -> Response {
    Json(json!({
        "request_id": req.request_id,
        "lease_id": "",
        "renewable": false,
        "lease_duration": 0,
        "data": data,
        "wrap_info": null,
        "warnings": null,
        "auth": null,
    }))
    .into_response()
}

/// 204 No Content.
pub fn no_content() -> Response {
    StatusCode::NO_CONTENT.into_response()
}

/// The request's token, resolved once per request (and the caller recorded for audit).
pub(super) fn authenticate(state: &AppState, req: &ApiRequest) -> ApiResult<Auth> {
    if let Some(auth) = req.auth.get() {
        return Ok(auth.clone());
    }
    let auth = state.vault.authenticate(req.token.as_deref())?;
    req.set_actor(super::request::Actor {
        name: auth.actor().to_string(),
        display_name: auth.display_name.clone(),
        accessor: Some(auth.accessor.clone()),
        method: auth.method().to_string(),
    });
    let _ = req.auth.set(auth.clone());
    Ok(auth)
}

pub(super) async fn route(state: &AppState, rest: &str, req: &ApiRequest) -> ApiResult<Response> {
    match (rest, req.op) {
        ("init", Op::Read) => {
            Ok(Json(json!({"initialized": state.vault.is_initialized()?})).into_response())
        }
        ("init", Op::Write) => init(state, req).await,
        ("seal-status", Op::Read) => Ok(Json(state.vault.seal_status()?).into_response()),
        ("unseal", Op::Write) => unseal(state, req),
        ("seal", Op::Write) => {
            state.vault.seal(&authenticate(state, req)?)?;
            Ok(no_content())
        }
        ("health", Op::Read | Op::Head) => health(state, req),
        ("step-down", Op::Write) => {
            let auth = authenticate(state, req)?;
            state
                .vault
                .change_members(&auth, &req.path, MembershipChange::StepDown)
                .await?;
            Ok(no_content())
        }
        ("storage/raft/configuration", Op::Read) => raft_configuration(state, req).await,
        ("storage/raft/remove-peer", Op::Write) => {
            #[derive(Deserialize)]
            struct Body {
                server_id: String,
            }
            let body: Body = req.json()?;
            let id = parse_node_id(&body.server_id)?;
            let auth = authenticate(state, req)?;
            state
                .vault
                .change_members(&auth, &req.path, MembershipChange::Remove { id })
                .await?;
            Ok(no_content())
        }
        ("coffer/packs", Op::Write) => create_pack(state, req).await,
        ("coffer/members", Op::Read | Op::List) => members(state, req).await,
        ("coffer/sessions", Op::Read | Op::List) => sessions(state, req),
        ("leader", Op::Read) => leader(state).await,
        ("mounts", Op::Read) => mounts(state, req),
        ("rotate", Op::Write) => {
            state.vault.rotate(&authenticate(state, req)?).await?;
            Ok(no_content())
        }
        ("key-status", Op::Read) => {
            let status = state.vault.key_status(&authenticate(state, req)?)?;
            Ok(envelope(
                req,
                serde_json::to_value(status).unwrap_or_default(),
            ))
        }
        _ => {
            if let Some(path) = rest.strip_prefix("internal/ui/mounts/") {
                return ui_mount(state, req, path);
            }
            if let Some(path) = rest.strip_prefix("mounts/") {
                return mount_change(state, req, path).await;
            }
            if let Some(name) = rest
                .strip_prefix("policies/acl")
                .or_else(|| rest.strip_prefix("policy"))
            {
                if name.is_empty() || name.starts_with('/') {
                    return super::auth::policies(state, req, name).await;
                }
            }
            if let Some(rest) = rest.strip_prefix("coffer/members/") {
                return member_change(state, req, rest).await;
            }
            if let Some(rest) = rest.strip_prefix("coffer/audit") {
                return audit(state, req, rest);
            }
            if rest == "metrics" {
                return metrics(state, req);
            }
            if let Some(path) = rest
                .strip_prefix("auth")
                .filter(|p| p.is_empty() || p.starts_with('/'))
            {
                return super::auth::auth_methods(state, req, path);
            }
            let known = [
                "init",
                "seal-status",
                "unseal",
                "seal",
                "health",
                "leader",
                "mounts",
                "rotate",
                "key-status",
                "step-down",
                "storage/raft/configuration",
                "storage/raft/remove-peer",
                "coffer/packs",
                "coffer/members",
                "coffer/sessions",
            ];
            if known.contains(&rest) {
                Err(ApiError::Method(format!("sys/{rest}")))
            } else {
                Err(ApiError::NoRoute(format!("sys/{rest}")))
            }
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct InitBody {
    secret_shares: u8,
    secret_threshold: u8,
    #[serde(default)]
    pgp_keys: Option<Vec<String>>,
    #[serde(default)]
    root_token_pgp_key: Option<String>,
    #[serde(default)]
    stored_shares: Option<u8>,
    #[serde(default)]
    recovery_shares: Option<u8>,
    #[serde(default)]
    recovery_threshold: Option<u8>,
}

async fn init(state: &AppState, req: &ApiRequest) -> ApiResult<Response> {
    let body: InitBody = req.json()?;
    if body.pgp_keys.is_some() || body.root_token_pgp_key.is_some() {
        return Err(ApiError::BadRequest(
            "PGP-encrypted shares are not supported".into(),
        ));
    }
    let _ = (
        body.stored_shares,
        body.recovery_shares,
        body.recovery_threshold,
    );
    let request = InitRequest {
        secret_shares: body.secret_shares,
        secret_threshold: body.secret_threshold,
        root_token_id: None,
    };
    // Held across init: a second init waits, and a refused one leaves the CA in place.
    let mut pending = state.pending_ca.lock().await;
    let (response, root) = state.vault.init(request, pending.as_ref()).await?;
    *pending = None;
    drop(pending);
    crate::server::after_init(state, root)?;
    Ok(Json(response).into_response())
}

#[derive(Deserialize)]
struct UnsealBody {
    #[serde(default)]
    key: Option<String>,
    #[serde(default)]
    reset: bool,
    #[serde(default)]
    migrate: bool,
}

fn unseal(state: &AppState, req: &ApiRequest) -> ApiResult<Response> {
    let body: UnsealBody = req.json()?;
    let _ = body.migrate;
    if body.key.is_none() && !body.reset {
        return Err(ApiError::BadRequest(
            "missing required 'key' parameter".into(),
        ));
    }
    Ok(Json(state.vault.unseal(body.key.as_deref(), body.reset)?).into_response())
}

/// `sys/health` with Vault's status codes and query overrides.
fn health(state: &AppState, req: &ApiRequest) -> ApiResult<Response> {
    let info = state.vault.health()?;
    let code = |name: &str, default: u16| -> ApiResult<u16> {
        match req.query.get(name) {
            Some(v) => v
                .parse::<u16>()
                .ok()
                .filter(|c| (100..=599).contains(c))
                .ok_or_else(|| ApiError::BadRequest(format!("{name} must be an HTTP status code"))),
            None => Ok(default),
        }
    };
    let status = if info.audit_spool_error.is_some() {
        // Every audited request is refused: not a node to send traffic to.
        503
    } else if !info.initialized {
        code("uninitcode", 501)?
    } else if info.sealed {
        code("sealedcode", 503)?
    } else if info.read_only {
        // Coffer's read-only standby (DESIGN §6): not Vault's, so its own override name.
        code("readonlycode", 473)?
    } else if info.standby {
        if req.query_bool("standbyok") {
            code("activecode", 200)?
        } else {
            code("standbycode", 429)?
        }
    } else {
        code("activecode", 200)?
    };
    let status =
        StatusCode::from_u16(status).map_err(|_| ApiError::BadRequest("bad status code".into()))?;
    if req.op == Op::Head {
        return Ok(status.into_response());
    }
    Ok((status, Json(info)).into_response())
}

fn parse_node_id(text: &str) -> ApiResult<u64> {
    text.parse::<u64>()
        .ok()
        .filter(|id| *id > 0)
        .ok_or_else(|| ApiError::BadRequest(format!("{text:?} is not a node id")))
}

async fn create_pack(state: &AppState, req: &ApiRequest) -> ApiResult<Response> {
    let auth = authenticate(state, req)?;
    let body: coffer_vault::PackRequest = req.json()?;
    let (file, summary) = state.vault.create_pack(&auth, body).await?;
    let mut data = serde_json::to_value(&summary).unwrap_or_default();
    data["pack"] = Value::String(base64::engine::general_purpose::STANDARD.encode(&file));
    Ok(envelope(req, data))
}

/// `sys/coffer/sessions`: the node-local sessions this node issued while read-only (revoke
/// one with `auth/token/revoke-accessor` on this node).
fn sessions(state: &AppState, req: &ApiRequest) -> ApiResult<Response> {
    let auth = authenticate(state, req)?;
    let list: Vec<Value> = state
        .vault
        .list_local_sessions(&auth)?
        .iter()
        .map(|e| {
            json!({
                "accessor": e.accessor,
                "actor": e.actor(),
                "display_name": e.display_name,
                "policies": e.policies,
                "creation_time": e.creation_time,
                "expire_time": e.expire_time,
            })
        })
        .collect();
    Ok(envelope(
        req,
        json!({ "node_id": state.vault.node().node_id, "sessions": list }),
    ))
}

fn member_json(m: &MemberStatus) -> Value {
    json!({
        "node_id": m.id,
        "api_addr": m.addr.api_addr,
        "peer_addr": m.addr.peer_addr,
        "voter": m.voter,
        "leader": m.leader,
        "matched_index": m.matched_index,
        "lag": m.lag,
        "last_contact_ms": m.last_contact_ms,
    })
}

async fn members(state: &AppState, req: &ApiRequest) -> ApiResult<Response> {
    let auth = authenticate(state, req)?;
    let members = state.vault.members(&auth).await?;
    let list: Vec<Value> = members.iter().map(member_json).collect();
    Ok(envelope(req, json!({ "members": list })))
}

/// `DELETE sys/coffer/members/:id` removes; `POST sys/coffer/members/:id/promote` promotes.
async fn member_change(state: &AppState, req: &ApiRequest, rest: &str) -> ApiResult<Response> {
    let change = match (rest.split_once('/'), req.op) {
        (None, Op::Delete) => MembershipChange::Remove {
            id: parse_node_id(rest)?,
        },
        (Some((id, "promote")), Op::Write) => MembershipChange::Promote {
            id: parse_node_id(id)?,
        },
        (None, _) | (Some((_, "promote")), _) => {
            return Err(ApiError::Method(format!("sys/coffer/members/{rest}")))
        }
        _ => return Err(ApiError::NoRoute(format!("sys/coffer/members/{rest}"))),
    };
    let auth = authenticate(state, req)?;
    state.vault.change_members(&auth, &req.path, change).await?;
    Ok(no_content())
}

/// Vault's `sys/storage/raft/configuration`: the servers with their roles.
async fn raft_configuration(state: &AppState, req: &ApiRequest) -> ApiResult<Response> {
    let auth = authenticate(state, req)?;
    auth.require_sudo("sys/storage/raft/configuration", Capability::Read)?;
    let engine = state.vault.engine();
    let members = engine.members_local();
    let servers: Vec<Value> = members
        .iter()
        .map(|m| {
            json!({
                "node_id": m.id.to_string(),
                "address": m.addr.peer_addr,
                "leader": m.leader,
                "protocol_version": "3",
                "voter": m.voter,
            })
        })
        .collect();
    let index = engine
        .metrics()
        .borrow()
        .membership_config
        .log_id()
        .map_or(0, |l| l.index);
    Ok(envelope(
        req,
        json!({"config": {"index": index, "servers": servers}}),
    ))
}

async fn leader(state: &AppState) -> ApiResult<Response> {
    let engine = state.vault.engine();
    let is_self = engine.is_leader();
    let leader = engine.leader().map(|(_, addr)| addr).unwrap_or_default();
    let leader_address = if is_self {
        state.vault.node().api_addr.clone()
    } else {
        leader.api_addr
    };
    let committed = engine
        .committed_index()
        .await
        .map_err(coffer_vault::VaultError::from)?;
    Ok(Json(json!({
        "ha_enabled": true,
        "is_self": is_self,
        "active_time": "0001-01-01T00:00:00Z",
        "leader_address": leader_address,
        "leader_cluster_address": leader.peer_addr,
        "performance_standby": false,
        "performance_standby_last_remote_wal": 0,
        "raft_committed_index": committed,
        "raft_applied_index": engine.applied_index(),
    }))
    .into_response())
}

fn mount_json(path: &str, entry: &coffer_vault::rules::mount::MountEntry) -> Value {
    json!({
        "accessor": entry.accessor,
        "config": {"default_lease_ttl": 0, "max_lease_ttl": 0, "force_no_cache": false},
        "description": entry.description,
        "external_entropy_access": false,
        "local": false,
        "options": entry.options,
        "path": path,
        "plugin_version": "",
        "running_plugin_version": "",
        "seal_wrap": false,
        "type": entry.kind,
        "uuid": entry.uuid,
    })
}

fn mounts(state: &AppState, req: &ApiRequest) -> ApiResult<Response> {
    authenticate(state, req)?.require("sys/mounts", Capability::Read)?;
    let mut data = serde_json::Map::new();
    for (path, entry) in state.vault.mount_table()? {
        data.insert(path.clone(), mount_json(&path, &entry));
    }
    data.insert(
        "sys/".into(),
        json!({"type": "system", "description": "system endpoints used for control, policy and debugging",
               "accessor": "system", "options": null, "local": false, "seal_wrap": true,
               "config": {"default_lease_ttl": 0, "max_lease_ttl": 0, "force_no_cache": false}}),
    );
    let mut body = data.clone();
    body.insert("data".into(), Value::Object(data));
    body.insert("request_id".into(), json!(req.request_id));
    Ok(Json(Value::Object(body)).into_response())
}

#[derive(Deserialize)]
struct MountBody {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    description: String,
    #[serde(default)]
    options: Option<std::collections::BTreeMap<String, Value>>,
}

async fn mount_change(state: &AppState, req: &ApiRequest, path: &str) -> ApiResult<Response> {
    let auth = authenticate(state, req)?;
    match req.op {
        Op::Write => {
            let body: MountBody = req.json()?;
            let version = body.options.as_ref().and_then(|o| o.get("version"));
            let version_ok = version.is_none_or(|v| v == "2" || v == 2);
            if !matches!(body.kind.as_str(), "kv" | "kv-v2") || (body.kind == "kv" && !version_ok) {
                return Err(ApiError::BadRequest(format!(
                    "unsupported secrets engine {:?}: Coffer serves KV version 2 only",
                    body.kind
                )));
            }
            state.vault.mount_kv(&auth, path, &body.description).await?;
            Ok(no_content())
        }
        Op::Delete => {
            state.vault.unmount(&auth, path).await?;
            Ok(no_content())
        }
        _ => Err(ApiError::Method(format!("sys/mounts/{path}"))),
    }
}

fn ui_mount(state: &AppState, req: &ApiRequest, path: &str) -> ApiResult<Response> {
    let auth = authenticate(state, req)?;
    if req.op != Op::Read {
        return Err(ApiError::Method(format!("sys/internal/ui/mounts/{path}")));
    }
    let table = state.vault.mount_table()?;
    match coffer_vault::rules::mount::resolve(&table, path) {
        // Vault's pre-flight answers any valid token; the request that follows is checked.
        Some((mount, entry, _)) => {
            let _ = &auth;
            Ok(envelope(req, mount_json(mount, entry)))
        }
        None => Err(ApiError::Vault(coffer_vault::VaultError::PermissionDenied)),
    }
}

/// `sys/coffer/audit` (query) and `sys/coffer/audit/verify`.
pub(super) fn audit(state: &AppState, req: &ApiRequest, rest: &str) -> ApiResult<Response> {
    let auth = authenticate(state, req)?;
    if req.op != Op::Read {
        return Err(ApiError::Method(req.path.clone()));
    }
    match rest {
        "" => {
            let filter = audit_filter(req)?;
            let (records, next) = state.vault.audit_query(&auth, &filter)?;
            let next = next.map(|(n, e, s)| format!("{n}:{e}:{s}"));
            Ok(envelope(req, json!({ "records": records, "next": next })))
        }
        "/verify" => {
            let report = state.vault.audit_verify(&auth)?;
            Ok(envelope(
                req,
                serde_json::to_value(report).unwrap_or_default(),
            ))
        }
        _ => Err(ApiError::NoRoute(req.path.clone())),
    }
}

fn audit_filter(req: &ApiRequest) -> ApiResult<coffer_vault::AuditFilter> {
    let text = |k: &str| req.query.get(k).filter(|v| !v.is_empty()).cloned();
    let time = |k: &str| -> ApiResult<Option<time::OffsetDateTime>> {
        text(k)
            .map(|v| {
                coffer_vault::clock::parse(&v)
                    .ok_or_else(|| ApiError::BadRequest(format!("{k} must be an RFC 3339 time")))
            })
            .transpose()
    };
    let after = text("after")
        .map(|v| {
            let parts: Vec<&str> = v.split(':').collect();
            let parsed = match parts.as_slice() {
                [n, e, s] => (|| Some((n.parse().ok()?, e.parse().ok()?, s.parse().ok()?)))(),
                [n, s] => (|| Some((n.parse().ok()?, 1, s.parse().ok()?)))(),
                _ => None,
            };
            parsed.ok_or_else(|| {
                ApiError::BadRequest(
                    "after must be <node>:<epoch>:<seq> (as `next` gives it)".into(),
                )
            })
        })
        .transpose()?;
    Ok(coffer_vault::AuditFilter {
        node: req.query_u64("node")?,
        actor: text("actor"),
        operation: text("operation"),
        path_prefix: text("path_prefix"),
        mode: text("mode"),
        outcome: text("outcome"),
        since: time("since")?,
        until: time("until")?,
        after,
        limit: req.query_u64("limit")?.map(|l| l as usize),
    })
}

/// `sys/metrics`: Prometheus text format (token with `read` on `sys/metrics` required).
pub(super) fn metrics(state: &AppState, req: &ApiRequest) -> ApiResult<Response> {
    authenticate(state, req)?.require("sys/metrics", Capability::Read)?;
    use std::sync::atomic::Ordering::Relaxed;
    let v = &state.vault;
    let stats = v.spool().stats();
    let m = v.engine().metrics().borrow().clone();
    let secs = |n: u64| n as f64 / 1e9;
    let mut out = String::new();
    let mut metric = |name: &str, kind: &str, help: &str, value: String| {
        out.push_str(&format!(
            "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}\n"
        ));
    };
    metric(
        "coffer_audit_appends_total",
        "counter",
        "Audit records made durable in the local spool.",
        stats.appends.load(Relaxed).to_string(),
    );
    metric(
        "coffer_audit_fsyncs_total",
        "counter",
        "Spool group commits (one fsync each).",
        stats.fsyncs.load(Relaxed).to_string(),
    );
    metric(
        "coffer_audit_fsync_seconds_total",
        "counter",
        "Time spent in spool fsync.",
        secs(stats.fsync_nanos.load(Relaxed)).to_string(),
    );
    metric(
        "coffer_audit_wait_seconds_total",
        "counter",
        "Time requests waited for their audit record to be durable, summed.",
        secs(stats.wait_nanos.load(Relaxed)).to_string(),
    );
    metric(
        "coffer_audit_spool_last_seq",
        "gauge",
        "Highest durable spool sequence number.",
        v.spool().last_seq().to_string(),
    );
    metric(
        "coffer_audit_merged_seq",
        "gauge",
        "Highest sequence number of this node merged into the cluster log.",
        v.own_audit_cursor().unwrap_or(0).to_string(),
    );
    metric(
        "coffer_raft_applied_index",
        "gauge",
        "Last Raft log index applied locally.",
        v.engine().applied_index().to_string(),
    );
    metric(
        "coffer_raft_last_log_index",
        "gauge",
        "Last Raft log index.",
        m.last_log_index.unwrap_or(0).to_string(),
    );
    metric(
        "coffer_raft_term",
        "gauge",
        "Current Raft term.",
        m.current_term.to_string(),
    );
    metric(
        "coffer_is_leader",
        "gauge",
        "1 if this node is the leader.",
        u8::from(v.engine().is_leader()).to_string(),
    );
    metric(
        "coffer_read_only",
        "gauge",
        "1 if this node is a read-only standby (no leader or no quorum).",
        u8::from(v.engine().mode() == coffer_raft::NodeMode::ReadOnly).to_string(),
    );
    metric(
        "coffer_last_contact_ms",
        "gauge",
        "Milliseconds since the last contact with a leader (on a leader: a quorum ack).",
        v.engine().contact_age_ms().to_string(),
    );
    metric(
        "coffer_mode_changes_total",
        "counter",
        "Node mode changes (leader, follower, read-only) since start.",
        v.mode_changes_seen().to_string(),
    );
    metric(
        "coffer_sealed",
        "gauge",
        "1 if this node is sealed.",
        u8::from(v.is_sealed()).to_string(),
    );
    metric(
        "coffer_unseal_failures_total",
        "counter",
        "Unseal shares refused since start.",
        v.seal_status()
            .map(|s| s.unseal_failures)
            .unwrap_or(0)
            .to_string(),
    );
    metric(
        "coffer_http_connections",
        "gauge",
        "Client connections open now.",
        state.connections.open().to_string(),
    );
    metric(
        "coffer_http_connections_evicted_total",
        "counter",
        "Idle client connections closed to make room at the connection cap.",
        state.connections.evicted.load(Relaxed).to_string(),
    );
    metric(
        "coffer_http_connections_refused_total",
        "counter",
        "Client connections turned away because every open one was busy.",
        state.connections.refused.load(Relaxed).to_string(),
    );
    out.push_str(
        "# HELP coffer_peer_refusals_total Peers and peer requests refused on the peer port, by reason.\n\
         # TYPE coffer_peer_refusals_total counter\n",
    );
    for (reason, n) in v.engine().refusals().snapshot() {
        out.push_str(&format!(
            "coffer_peer_refusals_total{{reason=\"{reason}\"}} {n}\n"
        ));
    }
    Ok((
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4",
        )],
        out,
    )
        .into_response())
}
