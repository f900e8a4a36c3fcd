//! Response shapes: Vault's envelope around `data`, and 204.

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
