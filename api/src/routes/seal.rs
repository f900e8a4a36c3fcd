//! The seal and the node's health: `sys/init`, `sys/seal-status`, `sys/unseal`, `sys/seal`,
//! `sys/rotate`, `sys/key-status` and `sys/health`.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use coffer_vault::InitRequest;
use serde::Deserialize;
use serde_json::json;

use super::respond::{envelope, no_content};
use super::{ApiRequest, AppState, Op};
use crate::error::{ApiError, ApiResult};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct InitBody {
    secret_shares: u8,
    secret_threshold: u8,
    #[serde(default)]
    pgp_keys: Option<Vec<String>>,
    #[serde(default)]
    root_token_pgp_key: Option<String>,
    // Accepted for Vault's auto-unseal clients; Coffer has no recovery keys.
    #[serde(default, rename = "stored_shares")]
    _stored_shares: Option<u8>,
    #[serde(default, rename = "recovery_shares")]
    _recovery_shares: Option<u8>,
    #[serde(default, rename = "recovery_threshold")]
    _recovery_threshold: Option<u8>,
}

/// `GET sys/init`.
pub(super) fn init_status(state: &AppState) -> ApiResult<Response> {
    Ok(Json(json!({"initialized": state.vault.is_initialized()?})).into_response())
}

/// `POST sys/init`.
pub(super) async fn init(state: &AppState, req: &ApiRequest) -> ApiResult<Response> {
    let body: InitBody = req.json()?;
    if body.pgp_keys.is_some() || body.root_token_pgp_key.is_some() {
        return Err(ApiError::BadRequest(
            "PGP-encrypted shares are not supported".into(),
        ));
    }
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

/// `GET sys/seal-status` (unauthenticated, as in Vault).
pub(super) fn status(state: &AppState) -> ApiResult<Response> {
    Ok(Json(state.vault.seal_status()?).into_response())
}

#[derive(Deserialize)]
struct UnsealBody {
    #[serde(default)]
    key: Option<String>,
    #[serde(default)]
    reset: bool,
    // Vault's seal migration; Coffer has one seal kind per node.
    #[serde(default, rename = "migrate")]
    _migrate: bool,
}

/// `POST sys/unseal`: one share, or `reset` to forget the shares given so far.
pub(super) async fn unseal(state: &AppState, req: &ApiRequest) -> ApiResult<Response> {
    let body: UnsealBody = req.json()?;
    if body.key.is_none() && !body.reset {
        return Err(ApiError::BadRequest(
            "missing required 'key' parameter".into(),
        ));
    }
    let status = state.vault.unseal(body.key.as_deref(), body.reset)?;
    if !status.sealed {
        crate::server::after_unseal(state);
    }
    Ok(Json(status).into_response())
}

/// `POST sys/seal`.
pub(super) fn seal(state: &AppState, req: &ApiRequest) -> ApiResult<Response> {
    state.vault.seal(&req.authenticate(&state.vault)?)?;
    Ok(no_content())
}

/// `POST sys/rotate`: a new encryption key term.
pub(super) async fn rotate(state: &AppState, req: &ApiRequest) -> ApiResult<Response> {
    state.vault.rotate(&req.authenticate(&state.vault)?).await?;
    Ok(no_content())
}

/// `GET sys/key-status`.
pub(super) fn key_status(state: &AppState, req: &ApiRequest) -> ApiResult<Response> {
    let status = state.vault.key_status(&req.authenticate(&state.vault)?)?;
    Ok(envelope(
        req,
        serde_json::to_value(status).unwrap_or_default(),
    ))
}

/// `sys/health` with Vault's status codes and query overrides.
pub(super) fn health(state: &AppState, req: &ApiRequest) -> ApiResult<Response> {
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
        // Coffer's read-only standby is not Vault's, so it has its own override name.
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
