//! Response shapes: Vault's envelope around `data`, its `auth` block, lists, and 204.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};

use super::ApiRequest;

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

/// Vault answers `sys/mounts`, `sys/auth` and `sys/capabilities*` with the table both at
/// the top level (old clients) and under `data`.
pub fn table_response(req: &ApiRequest, table: serde_json::Map<String, Value>) -> Response {
    let mut body = table.clone();
    body.insert("data".into(), Value::Object(table));
    body.insert("request_id".into(), json!(req.request_id));
    Json(Value::Object(body)).into_response()
}

/// 204 No Content.
pub fn no_content() -> Response {
    StatusCode::NO_CONTENT.into_response()
}

/// A list as Vault answers it: `{"keys": [...]}`, or 404 with no errors when empty.
pub fn keys(req: &ApiRequest, keys: Vec<String>) -> crate::error::ApiResult<Response> {
    if keys.is_empty() {
        return Err(crate::error::ApiError::NotFoundEmpty);
    }
    Ok(envelope(req, json!({ "keys": keys })))
}

/// Vault's `auth` block for a token just issued (login, create, renew).
pub fn auth_block(req: &ApiRequest, issued: &coffer_vault::IssuedToken) -> Response {
    let e = &issued.entry;
    Json(json!({
        "request_id": req.request_id,
        "lease_id": "",
        "renewable": false,
        "lease_duration": 0,
        "data": null,
        "wrap_info": null,
        "warnings": null,
        "auth": {
            "client_token": issued.token,
            "accessor": e.accessor,
            "policies": e.policies,
            "token_policies": e.policies,
            "metadata": e.meta,
            "lease_duration": e.creation_ttl,
            "renewable": e.renewable,
            "entity_id": "",
            "token_type": "service",
            "orphan": e.parent.is_none(),
            "mfa_requirement": null,
            "num_uses": 0,
        },
    }))
    .into_response()
}
