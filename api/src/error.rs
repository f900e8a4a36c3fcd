//! The one mapping from errors to HTTP responses. Clients get Vault's JSON error shape with a
//! useful message; internal details go to the log only; secrets go nowhere.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use coffer_vault::VaultError;

/// An error on its way to becoming an HTTP response.
#[derive(Debug)]
pub enum ApiError {
    /// A vault error.
    Vault(VaultError),
    /// Malformed request: bad JSON, wrong types, bad query, bad path encoding.
    BadRequest(String),
    /// Body over the configured limit.
    TooLarge(usize),
    /// No such route.
    NoRoute(String),
    /// Route exists but not with this method.
    Method(String),
    /// Not found, Vault-style empty error list (KV reads and lists).
    NotFoundEmpty,
    /// The client did not send its request body in time.
    BodyTimeout,
}

impl From<VaultError> for ApiError {
    fn from(e: VaultError) -> Self {
        ApiError::Vault(e)
    }
}

/// Result type of handlers.
pub type ApiResult<T> = Result<T, ApiError>;

fn body(status: StatusCode, errors: Vec<String>) -> Response {
    (status, Json(serde_json::json!({ "errors": errors }))).into_response()
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        match self {
            ApiError::Vault(e) => vault_error(e),
            ApiError::BadRequest(msg) => body(StatusCode::BAD_REQUEST, vec![msg]),
            ApiError::TooLarge(limit) => body(
                StatusCode::PAYLOAD_TOO_LARGE,
                vec![format!(
                    "request body too large: the limit is {limit} bytes"
                )],
            ),
            ApiError::NoRoute(path) => body(
                StatusCode::NOT_FOUND,
                vec![format!(
                    "no handler for route {path:?}: route entry not found"
                )],
            ),
            ApiError::Method(path) => body(
                StatusCode::METHOD_NOT_ALLOWED,
                vec![format!("unsupported operation on {path:?}")],
            ),
            ApiError::NotFoundEmpty => body(StatusCode::NOT_FOUND, vec![]),
            ApiError::BodyTimeout => body(
                StatusCode::REQUEST_TIMEOUT,
                vec!["the request body did not arrive in time".into()],
            ),
        }
    }
}

fn vault_error(e: VaultError) -> Response {
    let status = match &e {
        // A CAS mismatch is 400 with Vault's exact message, as Vault answers it: hvac and the
        // Vault CLI map 400 to "invalid request" and have no mapping for 412.
        VaultError::InvalidRequest(_)
        | VaultError::AlreadyInitialized
        | VaultError::BadUnsealKey(_)
        | VaultError::CasMismatch => StatusCode::BAD_REQUEST,
        VaultError::PermissionDenied | VaultError::Forbidden(_) => StatusCode::FORBIDDEN,
        VaultError::RateLimited(_) => StatusCode::TOO_MANY_REQUESTS,
        VaultError::NotFound(_) => StatusCode::NOT_FOUND,
        VaultError::Sealed
        | VaultError::NotInitialized
        | VaultError::Unavailable(_)
        | VaultError::OutcomeUnknown(_) => StatusCode::SERVICE_UNAVAILABLE,
        VaultError::Internal(detail) => {
            let id = uuid::Uuid::new_v4();
            tracing::error!(error_id = %id, "internal error: {detail}");
            return body(
                StatusCode::INTERNAL_SERVER_ERROR,
                vec![format!("internal error (id {id}); see the server log")],
            );
        }
    };
    body(status, vec![e.to_string()])
}
