//! Audit records around each request: which requests are audited and what each is called is
//! the vault's rule ([`coffer_vault::audit::classify`]); here the caller and the answer's
//! HTTP status become the record's actor and [`Outcome`] (the one such mapping). Never from
//! bodies, tokens or query values.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use coffer_vault::audit::{classify, AuditEvent, Outcome, RequestAudit, Stage, Who};

use super::{ApiRequest, AppState};
use crate::error::ApiError;
use crate::https::ClientAddr;

/// How much of an unparseable request's path its record keeps (a path is normally far
/// shorter; this bounds what a hostile client can make the spool hold).
const UNPARSED_PATH_CHARS: usize = 512;

/// How the request is audited.
pub(super) fn policy(req: &ApiRequest) -> RequestAudit {
    classify(&req.path, req.op)
}

/// The outcome an HTTP status stands for.
fn outcome(status: StatusCode) -> Outcome {
    match status.as_u16() {
        200..=299 => Outcome::Ok,
        403 => Outcome::Denied,
        404 => Outcome::NotFound,
        400..=499 | 503 => Outcome::Refused,
        _ => Outcome::Error,
    }
}

fn client_ip(client: Option<ClientAddr>) -> String {
    client.map_or_else(|| "local".into(), |c| c.0.ip().to_string())
}

/// The record of `req` at `stage`, with the request's own id.
fn event(state: &AppState, req: &ApiRequest, stage: Stage, result: Outcome) -> AuditEvent {
    let actor = req
        .actor
        .lock()
        .ok()
        .and_then(|a| a.clone())
        .unwrap_or_default();
    let who = Who {
        name: actor.name,
        display_name: actor.display_name,
        method: actor.method,
        accessor_hmac: actor
            .accessor
            .map(|a| state.vault.accessor_hmac(&a))
            .unwrap_or_default(),
        client_addr: client_ip(req.client),
    };
    AuditEvent {
        request_id: req.request_id.clone(),
        ..AuditEvent::new(stage, who, policy(req).operation, &req.path, result)
    }
}

/// The durable record of a request about to run (`type: request`, outcome `pending`).
pub(super) async fn record_request(
    state: &AppState,
    req: &ApiRequest,
) -> Result<(), coffer_vault::VaultError> {
    let event = event(state, req, Stage::Request, Outcome::Pending);
    state.vault.audit(event).await.map(|_| ())
}

/// Audits a parsed request with its response; returns the response, or 503 if the record
/// could not be made durable.
pub(super) async fn record(state: &AppState, req: &ApiRequest, response: Response) -> Response {
    if !policy(req).audited {
        return response;
    }
    let event = AuditEvent {
        status: response.status().as_u16(),
        ..event(state, req, Stage::Response, outcome(response.status()))
    };
    finish(state, event, response).await
}

/// Audits a request that could not even be parsed (bad encoding, oversize body).
pub(super) async fn record_unparsed(
    state: &AppState,
    request_id: &str,
    raw_path: &str,
    client: Option<ClientAddr>,
    response: Response,
) -> Response {
    let who = Who {
        client_addr: client_ip(client),
        ..Default::default()
    };
    // The raw path may be undecodable; keep it as sent, bounded.
    let path: String = raw_path.chars().take(UNPARSED_PATH_CHARS).collect();
    let event = AuditEvent {
        status: response.status().as_u16(),
        request_id: request_id.to_string(),
        ..AuditEvent::new(
            Stage::Response,
            who,
            "invalid",
            &path,
            outcome(response.status()),
        )
    };
    finish(state, event, response).await
}

async fn finish(state: &AppState, event: AuditEvent, response: Response) -> Response {
    match state.vault.audit(event).await {
        Ok(_) => response,
        Err(e) => ApiError::Vault(e).into_response(),
    }
}
