//! The HTTP surface: one dispatcher for `/v1/*` that parses the request once (method, decoded
//! path, query, token, bounded body) and routes it to the `sys` or KV v2 handlers, the way
//! Vault's own router does, so that the non-standard `LIST` method, `?list=true` and mount
//! resolution are handled in one place.

mod audit;
mod auth;
mod kv;
mod lenient;
mod request;
mod sys;

use std::sync::Arc;

use axum::extract::{DefaultBodyLimit, Request, State};
use axum::response::{IntoResponse, Response};
use axum::Router;
use coffer_vault::Vault;
use futures::FutureExt;

pub use request::{Actor, ApiRequest, Op};

use crate::error::ApiError;

/// Everything handlers share.
#[derive(Clone)]
pub struct AppState {
    /// The node's vault.
    pub vault: Arc<Vault>,
    /// Body size limit in bytes.
    pub max_request_bytes: usize,
    /// Set once at start: the CA this node generated before init, moved into the encrypted
    /// state by `sys/init`. An async lock, held across `init`: concurrent inits queue, and
    /// a refused one leaves the CA in place.
    pub pending_ca: Arc<tokio::sync::Mutex<Option<coffer_vault::StoredCa>>>,
    /// Where `sys/init` writes the root key when the seal is a key file (or dev mode).
    pub seal_key_file: Option<std::path::PathBuf>,
    /// `<data_dir>/tls`, whose CA key file `sys/init` removes once the CA is in the state.
    pub tls_dir: std::path::PathBuf,
    /// How long a client may take to send a request body.
    pub body_read_timeout: std::time::Duration,
    /// Open client connections (for metrics).
    pub connections: crate::https::ConnectionStats,
}

/// The application: every route, the body limit, and request logging.
pub fn app(state: AppState) -> Router {
    let limit = state.max_request_bytes;
    Router::new()
        .fallback(dispatch)
        .layer(DefaultBodyLimit::max(limit))
        .with_state(state)
}

async fn dispatch(State(state): State<AppState>, request: Request) -> Response {
    let started = std::time::Instant::now();
    let method = request.method().clone();
    let raw_path = request.uri().path().to_string();
    let client = request
        .extensions()
        .get::<crate::https::ClientAddr>()
        .copied();
    let response =
        match ApiRequest::parse(request, state.max_request_bytes, state.body_read_timeout).await {
            Ok(req) => handle(&state, &req).await,
            Err(e) => audit::record_unparsed(&state, &raw_path, client, e.into_response()).await,
        };
    tracing::info!(
        %method,
        path = %raw_path,
        status = response.status().as_u16(),
        elapsed_ms = started.elapsed().as_millis() as u64,
        "request"
    );
    response
}

/// One parsed request, audited around its effect:
/// 1. a spool that cannot take records refuses the request before anything runs;
/// 2. a request that may change state gets a durable *request* record first, naming its
///    caller, so no effect ever exists without a record (a crash after the commit and
///    before the answer still leaves it);
/// 3. the handler runs; a panic in it becomes a 500, and the node keeps serving;
/// 4. the *response* record is made durable before the answer leaves (fail closed).
async fn handle(state: &AppState, req: &ApiRequest) -> Response {
    handle_with(state, req, |state, req| Box::pin(route(state, req))).await
}

/// A handler future, as [`handle_with`] takes it.
pub type RouteFuture<'a> =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<Response, ApiError>> + Send + 'a>>;

/// The request handling around any routing function: what every request goes through
/// (fail closed on a broken spool, a request record before a state change, a panic turned
/// into a 500, the response record before the answer). Public so the guarantees can be tested with a route
/// of the test's own (one that panics, say).
pub async fn handle_with<'a, F>(state: &'a AppState, req: &'a ApiRequest, route: F) -> Response
where
    F: FnOnce(&'a AppState, &'a ApiRequest) -> RouteFuture<'a>,
{
    if audit::audited(req) {
        if let Some(why) = state.vault.spool().failure() {
            let e = coffer_vault::VaultError::Unavailable(why);
            return ApiError::Vault(e).into_response();
        }
        if audit::changes_state(req) {
            // Who is asking, for the record (a token is resolved once; handlers reuse it).
            if req.path.starts_with("auth/userpass/login/") {
                auth::set_login_attempt(req);
            } else if req.token.is_some() {
                let _ = sys::authenticate(state, req);
            }
            if let Err(e) = audit::record_request(state, req).await {
                return ApiError::Vault(e).into_response();
            }
        }
    }
    let outcome = std::panic::AssertUnwindSafe(route(state, req))
        .catch_unwind()
        .await;
    let mut response = match outcome {
        Ok(result) => result.unwrap_or_else(IntoResponse::into_response),
        Err(_) => {
            // The panic hook has logged where; the payload may quote data, so it stays out.
            tracing::error!(request_id = %req.request_id, path = %req.path, "handler panicked");
            ApiError::Vault(coffer_vault::VaultError::internal("handler panicked")).into_response()
        }
    };
    let read_only = state.vault.engine().mode() == coffer_raft::NodeMode::ReadOnly;
    if read_only {
        response.headers_mut().insert(
            "x-coffer-read-only",
            axum::http::HeaderValue::from_static("true"),
        );
    }
    if req.stale || read_only {
        staleness_headers(state, &mut response);
    }
    audit::record(state, req, response).await
}

/// A stale read (asked for, or because the node is a read-only standby) says how stale it
/// may be: the applied index it was served at, and how long since this node last heard from
/// a leader (on a leader: since a quorum acknowledged it).
fn staleness_headers(state: &AppState, response: &mut Response) {
    let engine = state.vault.engine();
    let headers = response.headers_mut();
    headers.insert("x-coffer-applied-index", engine.applied_index().into());
    headers.insert("x-coffer-last-contact-ms", engine.contact_age_ms().into());
}

async fn route(state: &AppState, req: &ApiRequest) -> Result<Response, ApiError> {
    if let Some(rest) = req.path.strip_prefix("sys/") {
        return sys::route(state, rest, req).await;
    }
    if req.path.starts_with("auth/") {
        return auth::route(state, req).await;
    }
    kv::route(state, req).await
}
