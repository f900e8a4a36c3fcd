//! The HTTP surface: one dispatcher for `/v1/*` that parses the request once (method, decoded
//! path, query, token, bounded body), audits it around its effect, and routes it by the
//! table in `route` (the whole API on one screen) to a handler module per concern. Handlers
//! parse bodies and shape answers; every rule and check is the vault's.
//!
//! To add an endpoint: a line in `route` or `sys`, a handler in the module of its
//! concern that calls one `Vault` method, and its audit name in
//! [`coffer_vault::audit::classify`] if it is not a plain read or write.

mod audit_log;
mod backup;
mod cluster;
mod kv;
mod lenient;
mod metrics;
mod mounts;
mod policies;
mod record;
mod request;
mod respond;
mod seal;
mod tokens;
mod userpass;

use std::sync::Arc;

use axum::extract::{DefaultBodyLimit, Request, State};
use axum::response::{IntoResponse, Response};
use axum::Router;
use coffer_vault::Vault;
use futures::FutureExt;

pub use metrics::HttpStats;
pub use request::{Actor, ApiRequest, Op, RequestId};

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
    /// The node's TLS files (`sys/init` removes the CA key file once the CA is in the state).
    pub tls: coffer_vault::node::TlsFiles,
    /// How long a client may take to send a request body.
    pub body_read_timeout: std::time::Duration,
    /// Open client connections (for metrics).
    pub connections: crate::https::ConnectionStats,
    /// Requests served, by route class, and their latency (for metrics).
    pub http: Arc<metrics::HttpStats>,
    /// Networks whose clients may read `sys/metrics` without a token.
    pub metrics_open_to: Arc<Vec<crate::config::IpNetwork>>,
}

/// The application: every route, the body limit, and request logging.
pub fn app(state: AppState) -> Router {
    let limit = state.max_request_bytes;
    Router::new()
        .fallback(dispatch)
        .layer(DefaultBodyLimit::max(limit))
        .with_state(state)
}

async fn dispatch(State(state): State<AppState>, mut request: Request) -> Response {
    let started = std::time::Instant::now();
    let id = RequestId::new();
    request.extensions_mut().insert(id.clone());
    let method = request.method().clone();
    let raw_path = request.uri().path().to_string();
    let client = request
        .extensions()
        .get::<crate::https::ClientAddr>()
        .copied();
    let response =
        match ApiRequest::parse(request, state.max_request_bytes, state.body_read_timeout).await {
            Ok(req) => handle(&state, &req).await,
            Err(e) => {
                let response = e.into_response();
                record::record_unparsed(&state, &id.0, &raw_path, client, response).await
            }
        };
    let elapsed = started.elapsed();
    state.http.observe(
        &raw_path,
        method.as_str(),
        response.status().as_u16(),
        elapsed,
    );
    tracing::info!(
        request_id = %id.0,
        %method,
        path = %raw_path,
        status = response.status().as_u16(),
        elapsed_ms = elapsed.as_millis() as u64,
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
    let policy = record::policy(req);
    if policy.audited {
        if let Some(why) = state.vault.spool().failure() {
            let e = coffer_vault::VaultError::Unavailable(why);
            return ApiError::Vault(e).into_response();
        }
        if policy.changes_state {
            // Who is asking, for the record (a token is resolved once; handlers reuse it).
            if userpass::is_login(&req.path) {
                userpass::set_login_attempt(req);
            } else if req.token.is_some() {
                let _ = req.authenticate(&state.vault);
            }
            if let Err(e) = record::record_request(state, req).await {
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
    let node = state.vault.node_status();
    if node.read_only {
        response.headers_mut().insert(
            "x-coffer-read-only",
            axum::http::HeaderValue::from_static("true"),
        );
    }
    if req.stale || node.read_only {
        staleness_headers(&node, &mut response);
    }
    record::record(state, req, response).await
}

/// A stale read (asked for, or because the node is a read-only standby) says how stale it
/// may be: the applied index it was served at, and how long since this node last heard from
/// a leader (on a leader: since a quorum acknowledged it).
fn staleness_headers(node: &coffer_vault::NodeStatus, response: &mut Response) {
    let headers = response.headers_mut();
    headers.insert("x-coffer-applied-index", node.applied_index.into());
    headers.insert("x-coffer-last-contact-ms", node.last_contact_ms.into());
}

/// The route table: `sys/*` (below), the token and userpass auth methods, and KV v2 under
/// any other path (its mount decides).
async fn route(state: &AppState, req: &ApiRequest) -> Result<Response, ApiError> {
    let path = req.path.as_str();
    if let Some(rest) = path.strip_prefix("sys/") {
        return sys(state, req, rest).await;
    }
    if let Some(rest) = path.strip_prefix("auth/token/") {
        return tokens::route(state, req, rest).await;
    }
    if let Some(rest) = path.strip_prefix("auth/userpass/") {
        return userpass::route(state, req, rest).await;
    }
    if path.starts_with("auth/") {
        return Err(ApiError::NoRoute(req.path.clone()));
    }
    kv::route(state, req).await
}

/// `sys/*` paths with an exact route: a known path with another method is a 405.
const SYS_PATHS: [&str; 21] = [
    "init",
    "seal-status",
    "unseal",
    "seal",
    "rotate",
    "key-status",
    "health",
    "leader",
    "step-down",
    "storage/raft/configuration",
    "storage/raft/autopilot/state",
    "storage/raft/remove-peer",
    "storage/raft/snapshot",
    "storage/raft/snapshot-force",
    "coffer/packs",
    "coffer/members",
    "coffer/sessions",
    "coffer/audit",
    "coffer/audit/verify",
    "mounts",
    "metrics",
];

/// The `sys/*` table.
async fn sys(state: &AppState, req: &ApiRequest, rest: &str) -> Result<Response, ApiError> {
    use Op::{Head, List, Read, Write};
    match (rest, req.op) {
        // The seal and the node's health.
        ("init", Read) => seal::init_status(state),
        ("init", Write) => seal::init(state, req).await,
        ("seal-status", Read) => seal::status(state),
        ("unseal", Write) => seal::unseal(state, req).await,
        ("seal", Write) => seal::seal(state, req),
        ("rotate", Write) => seal::rotate(state, req).await,
        ("key-status", Read) => seal::key_status(state, req),
        ("health", Read | Head) => seal::health(state, req),
        // The cluster.
        ("leader", Read) => cluster::leader(state).await,
        ("step-down", Write) => cluster::step_down(state, req).await,
        ("storage/raft/configuration", Read) => cluster::raft_configuration(state, req),
        ("storage/raft/autopilot/state", Read) => cluster::autopilot_state(state, req).await,
        ("storage/raft/remove-peer", Write) => cluster::remove_peer(state, req).await,
        ("storage/raft/snapshot", Read) => backup::save(state, req).await,
        ("storage/raft/snapshot", Write) => backup::restore(state, req, false).await,
        ("storage/raft/snapshot-force", Write) => backup::restore(state, req, true).await,
        ("coffer/packs", Write) => cluster::create_pack(state, req).await,
        ("coffer/members", Read | List) => cluster::members(state, req).await,
        ("coffer/sessions", Read | List) => cluster::sessions(state, req),
        // The audit log and the figures.
        ("coffer/audit", Read) => audit_log::query(state, req),
        ("coffer/audit/verify", Read) => audit_log::verify(state, req),
        ("metrics", Read) => metrics::export(state, req),
        // Mounts and auth methods.
        ("mounts", Read) => mounts::list(state, req),
        ("auth", _) => mounts::auth_methods(state, req, ""),
        ("capabilities-self" | "capabilities" | "capabilities-accessor", _) => {
            policies::capabilities(state, req, rest)
        }
        _ => {
            if let Some(path) = rest.strip_prefix("mounts/") {
                return mounts::change(state, req, path).await;
            }
            if let Some(path) = rest.strip_prefix("internal/ui/mounts/") {
                return mounts::ui_mount(state, req, path);
            }
            if let Some(path) = rest.strip_prefix("auth/") {
                return mounts::auth_methods(state, req, path);
            }
            if let Some(name) = policies::name(rest) {
                return policies::route(state, req, name).await;
            }
            if let Some(rest) = rest.strip_prefix("coffer/members/") {
                return cluster::member_change(state, req, rest).await;
            }
            if SYS_PATHS.contains(&rest) {
                Err(ApiError::Method(format!("sys/{rest}")))
            } else {
                Err(ApiError::NoRoute(format!("sys/{rest}")))
            }
        }
    }
}
