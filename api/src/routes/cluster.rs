//! The cluster: `sys/leader`, `sys/step-down`, `sys/storage/raft/*`, and Coffer's own
//! `sys/coffer/packs`, `sys/coffer/members[/:id[/promote]]` and `sys/coffer/sessions`.

use axum::response::{IntoResponse, Response};
use axum::Json;
use base64::Engine as _;
use coffer_vault::node::MemberStatus;
use coffer_vault::MemberChange;
use serde::Deserialize;
use serde_json::{json, Value};

use super::respond::{envelope, no_content};
use super::{ApiRequest, AppState, Op};
use crate::error::{ApiError, ApiResult};

/// `GET sys/leader` (unauthenticated, as in Vault).
pub(super) async fn leader(state: &AppState) -> ApiResult<Response> {
    let leader = state.vault.leader_status().await?;
    Ok(Json(json!({
        "ha_enabled": true,
        "is_self": leader.is_self,
        "active_time": "0001-01-01T00:00:00Z",
        "leader_address": leader.api_addr,
        "leader_cluster_address": leader.peer_addr,
        "performance_standby": false,
        "performance_standby_last_remote_wal": 0,
        "raft_committed_index": leader.committed_index,
        "raft_applied_index": leader.applied_index,
    }))
    .into_response())
}

/// A membership change the request asks for, checked on the request's own path.
async fn change(state: &AppState, req: &ApiRequest, change: MemberChange) -> ApiResult<Response> {
    let auth = req.authenticate(&state.vault)?;
    state.vault.change_members(&auth, &req.path, change).await?;
    Ok(no_content())
}

/// `POST sys/step-down`.
pub(super) async fn step_down(state: &AppState, req: &ApiRequest) -> ApiResult<Response> {
    change(state, req, MemberChange::StepDown).await
}

/// `POST sys/storage/raft/remove-peer` (`{"server_id": "3"}`).
pub(super) async fn remove_peer(state: &AppState, req: &ApiRequest) -> ApiResult<Response> {
    #[derive(Deserialize)]
    struct Body {
        server_id: String,
    }
    let body: Body = req.json()?;
    let id = parse_node_id(&body.server_id)?;
    change(state, req, MemberChange::Remove(id)).await
}

/// `DELETE sys/coffer/members/:id` removes; `POST sys/coffer/members/:id/promote` promotes.
pub(super) async fn member_change(
    state: &AppState,
    req: &ApiRequest,
    rest: &str,
) -> ApiResult<Response> {
    let wanted = match (rest.split_once('/'), req.op) {
        (None, Op::Delete) => MemberChange::Remove(parse_node_id(rest)?),
        (Some((id, "promote")), Op::Write) => MemberChange::Promote(parse_node_id(id)?),
        (None, _) | (Some((_, "promote")), _) => {
            return Err(ApiError::Method(format!("sys/coffer/members/{rest}")))
        }
        _ => return Err(ApiError::NoRoute(format!("sys/coffer/members/{rest}"))),
    };
    change(state, req, wanted).await
}

fn parse_node_id(text: &str) -> ApiResult<u64> {
    text.parse::<u64>()
        .ok()
        .filter(|id| *id > 0)
        .ok_or_else(|| ApiError::BadRequest(format!("{text:?} is not a node id")))
}

/// `GET sys/storage/raft/configuration`: the servers with their roles, as Vault shows them.
pub(super) fn raft_configuration(state: &AppState, req: &ApiRequest) -> ApiResult<Response> {
    let auth = req.authenticate(&state.vault)?;
    let config = state.vault.raft_configuration(&auth)?;
    let servers: Vec<Value> = config
        .servers
        .iter()
        .map(|s| {
            json!({
                "node_id": s.node_id.to_string(),
                "address": s.address,
                "leader": s.leader,
                "protocol_version": "3",
                "voter": s.voter,
            })
        })
        .collect();
    Ok(envelope(
        req,
        json!({"config": {"index": config.index, "servers": servers}}),
    ))
}

/// `GET sys/storage/raft/autopilot/state`: health and failure tolerance in Vault's shape,
/// from the leader's view of the members.
pub(super) async fn autopilot_state(state: &AppState, req: &ApiRequest) -> ApiResult<Response> {
    let auth = req.authenticate(&state.vault)?;
    let autopilot = state.vault.autopilot_state(&auth).await?;
    let data = serde_json::to_value(&autopilot)
        .map_err(|e| ApiError::Vault(coffer_vault::VaultError::internal(e)))?;
    Ok(envelope(req, data))
}

/// Largest pack answered inline as base64 JSON; a larger one needs `?raw=true`.
const INLINE_PACK_MAX_BYTES: u64 = 64 << 20;

/// `POST sys/coffer/packs`: a replication bootstrap pack. With `?raw=true` the pack file
/// itself is streamed (bounded memory whatever its size; the summary in the
/// `X-Coffer-Pack` header); otherwise base64 in `data.pack` (packs up to 64 MiB).
pub(super) async fn create_pack(state: &AppState, req: &ApiRequest) -> ApiResult<Response> {
    let auth = req.authenticate(&state.vault)?;
    let body: coffer_vault::PackRequest = req.json()?;
    let mut file = super::backup::scratch_file(state)?;
    let summary = state.vault.create_pack(&auth, body, &mut file).await?;
    if req.query_bool("raw") {
        let summary = serde_json::to_string(&summary).unwrap_or_default();
        return super::backup::stream_file(file, &[("x-coffer-pack", summary)]).await;
    }
    let len = file
        .metadata()
        .map_err(|e| ApiError::Vault(coffer_vault::VaultError::internal(e)))?
        .len();
    if len > INLINE_PACK_MAX_BYTES {
        return Err(ApiError::BadRequest(format!(
            "the pack is {len} bytes, too large to answer as JSON: ask with ?raw=true (coffer operator pack create does)"
        )));
    }
    let bytes = tokio::task::spawn_blocking(move || {
        use std::io::{Read, Seek};
        let mut bytes = Vec::new();
        file.seek(std::io::SeekFrom::Start(0))
            .and_then(|_| file.read_to_end(&mut bytes))
            .map(|_| bytes)
    })
    .await
    .map_err(|e| ApiError::Vault(coffer_vault::VaultError::internal(e)))?
    .map_err(|e| ApiError::Vault(coffer_vault::VaultError::internal(e)))?;
    let mut data = serde_json::to_value(&summary).unwrap_or_default();
    data["pack"] = Value::String(base64::engine::general_purpose::STANDARD.encode(&bytes));
    Ok(envelope(req, data))
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

/// `GET sys/coffer/members`: the members and their replication progress.
pub(super) async fn members(state: &AppState, req: &ApiRequest) -> ApiResult<Response> {
    let auth = req.authenticate(&state.vault)?;
    let members = state.vault.members(&auth).await?;
    let list: Vec<Value> = members.iter().map(member_json).collect();
    Ok(envelope(req, json!({ "members": list })))
}

/// `sys/coffer/sessions`: the node-local sessions this node issued while read-only (revoke
/// one with `auth/token/revoke-accessor` on this node).
pub(super) fn sessions(state: &AppState, req: &ApiRequest) -> ApiResult<Response> {
    let auth = req.authenticate(&state.vault)?;
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
