//! One audit record per request, durable before the answer leaves (fail closed). Built from
//! what the request was and how it ended: path, operation, actor, client address, status.
//! Never from bodies, tokens or query values.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use coffer_vault::audit::AuditEvent;

use super::{ApiRequest, AppState, Op};
use crate::error::ApiError;
use crate::https::ClientAddr;

/// Unauthenticated status probes: polled constantly by load balancers and clients, they
/// reveal nothing and change nothing, so they are not audited (as in Vault).
fn exempt(path: &str, op: Op) -> bool {
    matches!(path, "sys/health" | "sys/seal-status" | "sys/leader")
        || (path == "sys/init" && op == Op::Read)
}

/// Whether the request is audited at all.
pub(super) fn audited(req: &ApiRequest) -> bool {
    !exempt(&req.path, req.op)
}

/// Whether the request may change state (then it is audited before it runs, too).
pub(super) fn changes_state(req: &ApiRequest) -> bool {
    matches!(req.op, Op::Write | Op::Patch | Op::Delete)
}

fn operation(req: &ApiRequest) -> String {
    let p = req.path.as_str();
    let named = match p {
        _ if p.starts_with("auth/userpass/login/") => Some("login"),
        "auth/token/revoke-self" => Some("logout"),
        "auth/token/create" | "auth/token/create-orphan" => Some("token.create"),
        "auth/token/revoke" | "auth/token/revoke-accessor" => Some("token.revoke"),
        "auth/token/renew-self" => Some("token.renew"),
        "sys/unseal" => Some("unseal"),
        "sys/seal" => Some("seal"),
        "sys/init" => Some("init"),
        "sys/rotate" => Some("rotate"),
        _ => None,
    };
    if let Some(n) = named {
        return n.to_string();
    }
    match req.op {
        Op::Read | Op::Head => "read",
        Op::Write => "write",
        Op::Patch => "patch",
        Op::Delete => "delete",
        Op::List => "list",
    }
    .to_string()
}

fn outcome(status: StatusCode) -> &'static str {
    match status.as_u16() {
        200..=299 => "ok",
        403 => "denied",
        404 => "not_found",
        400..=499 | 503 => "refused",
        _ => "error",
    }
}

fn client_ip(client: Option<ClientAddr>) -> String {
    client.map_or_else(|| "local".into(), |c| c.0.ip().to_string())
}

/// The event describing `req`, as far as it is known before it runs.
fn event_of(state: &AppState, req: &ApiRequest) -> AuditEvent {
    let actor = req
        .actor
        .lock()
        .ok()
        .and_then(|a| a.clone())
        .unwrap_or_default();
    AuditEvent {
        actor: if actor.name.is_empty() {
            "anonymous".into()
        } else {
            actor.name
        },
        display_name: actor.display_name,
        accessor_hmac: actor
            .accessor
            .map(|a| state.vault.accessor_hmac(&a))
            .unwrap_or_default(),
        auth_method: if actor.method.is_empty() {
            "none".into()
        } else {
            actor.method
        },
        client_addr: client_ip(req.client),
        operation: operation(req),
        path: req.path.clone(),
        request_id: req.request_id.clone(),
        ..Default::default()
    }
}

/// The durable record of a request about to run (`type: request`, outcome `pending`).
pub(super) async fn record_request(
    state: &AppState,
    req: &ApiRequest,
) -> Result<(), coffer_vault::VaultError> {
    let event = AuditEvent {
        kind: "request".into(),
        outcome: "pending".into(),
        ..event_of(state, req)
    };
    state.vault.audit(event).await.map(|_| ())
}

/// Audits a parsed request with its response; returns the response, or 503 if the record
/// could not be made durable.
pub(super) async fn record(state: &AppState, req: &ApiRequest, response: Response) -> Response {
    if exempt(&req.path, req.op) {
        return response;
    }
    let event = AuditEvent {
        kind: "response".into(),
        outcome: outcome(response.status()).into(),
        status: response.status().as_u16(),
        ..event_of(state, req)
    };
    finish(state, event, response).await
}

/// Audits a request that could not even be parsed (bad encoding, oversize body).
pub(super) async fn record_unparsed(
    state: &AppState,
    raw_path: &str,
    client: Option<ClientAddr>,
    response: Response,
) -> Response {
    let event = AuditEvent {
        kind: "response".into(),
        actor: "anonymous".into(),
        auth_method: "none".into(),
        client_addr: client_ip(client),
        operation: "invalid".into(),
        // The raw path may be undecodable; keep it as sent, bounded.
        path: raw_path.chars().take(512).collect(),
        outcome: outcome(response.status()).into(),
        status: response.status().as_u16(),
        request_id: uuid::Uuid::new_v4().to_string(),
        ..Default::default()
    };
    finish(state, event, response).await
}

async fn finish(state: &AppState, event: AuditEvent, response: Response) -> Response {
    match state.vault.audit(event).await {
        Ok(_) => response,
        Err(e) => ApiError::Vault(e).into_response(),
    }
}
