//! Parsing a request once: normalized operation, decoded path, query, token and JSON body.

use std::collections::HashMap;

use axum::body::Bytes;
use axum::extract::Request;
use axum::http::HeaderMap;
use serde::de::DeserializeOwned;

use crate::error::ApiError;
use crate::https::ClientAddr;

/// The operation, Vault-style: `LIST` is its own verb (method `LIST`, or GET `?list=true`).
pub use coffer_vault::audit::RequestOp as Op;

/// The id a request is known by in its audit records, its log line and its response
/// (`request_id`). The dispatcher sets it before parsing, so a request refused while parsing
/// has the same id in its log line and its audit record.
#[derive(Clone, Debug)]
pub struct RequestId(pub String);

impl RequestId {
    /// A new random id.
    pub fn new() -> Self {
        Self(uuid::Uuid::new_v4().to_string())
    }
}

impl Default for RequestId {
    fn default() -> Self {
        Self::new()
    }
}

/// A parsed API request.
pub struct ApiRequest {
    /// The operation.
    pub op: Op,
    /// Path after `/v1/`, percent-decoded.
    pub path: String,
    /// Query parameters.
    pub query: HashMap<String, String>,
    /// The client token, from `X-Vault-Token` or `Authorization: Bearer`.
    pub token: Option<String>,
    /// The request body (bounded).
    pub body: Bytes,
    /// The body of an upload route (`sys/storage/raft/snapshot[-force]`), left unread: its handler checks
    /// the caller first, then streams it to disk (it may be far larger than `body`'s bound).
    pub upload: std::sync::Mutex<Option<axum::body::Body>>,
    /// The client's address, when served over the network.
    pub client: Option<ClientAddr>,
    /// Request id, echoed in responses.
    pub request_id: String,
    /// Who the request turned out to be from, set when it authenticates (or logs in).
    pub actor: std::sync::Mutex<Option<Actor>>,
    /// The resolved token, once authenticated (resolved once per request).
    pub auth: std::sync::OnceLock<coffer_vault::Auth>,
    /// The client accepts the OpenMetrics text format (a Prometheus scrape of `sys/metrics`).
    pub accepts_openmetrics: bool,
    /// The client accepts a read from this node's local state without the leader round
    /// trip (`?stale=true` or `X-Coffer-Consistency: stale`).
    pub stale: bool,
}

/// The caller as the audit record names it: one person has one name (`alice`), whichever
/// way she authenticated; how is recorded apart, as Vault does.
#[derive(Clone, Debug, Default)]
pub struct Actor {
    /// The person (`alice`, `root`): the token's owner, or the login name.
    pub name: String,
    /// The token's display name (`userpass-alice`, `token-ci`), if a token was presented.
    pub display_name: String,
    /// Token accessor, if a token was presented and valid.
    pub accessor: Option<String>,
    /// How the person authenticated: `userpass` or `token`.
    pub method: String,
}

impl std::fmt::Debug for ApiRequest {
    // Never the token, the body or query values (a secret may travel in any of them).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiRequest")
            .field("op", &self.op)
            .field("path", &self.path)
            .field("query_keys", &self.query.keys().collect::<Vec<_>>())
            .field("has_token", &self.token.is_some())
            .field("body_bytes", &self.body.len())
            .field("request_id", &self.request_id)
            .finish()
    }
}

/// Writes whose body is a file to stream to disk, not a JSON document to hold in memory.
pub const UPLOAD_PATHS: [&str; 2] = [
    "sys/storage/raft/snapshot",
    "sys/storage/raft/snapshot-force",
];

impl ApiRequest {
    /// Parses method, path, query, token and body; refuses what cannot be a valid request.
    pub async fn parse(
        request: Request,
        limit: usize,
        body_timeout: std::time::Duration,
    ) -> Result<Self, ApiError> {
        let (parts, body) = request.into_parts();
        let raw = parts.uri.path();
        let Some(rest) = raw.strip_prefix("/v1/") else {
            return Err(ApiError::NoRoute(raw.to_string()));
        };
        let decoded = percent_decode(rest)?;
        if parts.headers.contains_key("x-vault-wrap-ttl") {
            // Answering with the plain response would hand the secret to whoever holds the
            // answer, which the client asked to avoid: refuse until wrapping exists.
            return Err(ApiError::BadRequest(
                "response wrapping (X-Vault-Wrap-TTL) is not supported by this server".into(),
            ));
        }
        let query = parse_query(parts.uri.query().unwrap_or(""))?;
        let list_flag = query.get("list").is_some_and(|v| v == "true" || v == "1");
        let op = match parts.method.as_str() {
            "GET" if list_flag => Op::List,
            "GET" => Op::Read,
            "HEAD" => Op::Head,
            "POST" | "PUT" => Op::Write,
            "PATCH" => Op::Patch,
            "DELETE" => Op::Delete,
            "LIST" => Op::List,
            _ => return Err(ApiError::Method(decoded)),
        };
        let path = normalize_path(&decoded, op == Op::List)?;
        let stale = query.get("stale").is_some_and(|v| v == "true" || v == "1")
            || parts
                .headers
                .get("x-coffer-consistency")
                .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"stale"));
        let (body, upload) = if op == Op::Write && UPLOAD_PATHS.contains(&path.as_str()) {
            (Bytes::new(), Some(body))
        } else {
            let body = tokio::time::timeout(body_timeout, axum::body::to_bytes(body, limit))
                .await
                .map_err(|_| ApiError::BodyTimeout)?
                .map_err(|_| ApiError::TooLarge(limit))?;
            (body, None)
        };
        let accepts_openmetrics = parts
            .headers
            .get(axum::http::header::ACCEPT)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.contains("application/openmetrics-text"));
        Ok(Self {
            accepts_openmetrics,
            upload: std::sync::Mutex::new(upload),
            stale,
            op,
            token: token(&parts.headers),
            client: parts.extensions.get::<ClientAddr>().copied(),
            request_id: parts
                .extensions
                .get::<RequestId>()
                .cloned()
                .unwrap_or_default()
                .0,
            actor: std::sync::Mutex::new(None),
            auth: std::sync::OnceLock::new(),
            path,
            query,
            body,
        })
    }

    /// The read consistency the client asked for.
    pub fn consistency(&self) -> coffer_vault::Consistency {
        if self.stale {
            coffer_vault::Consistency::Stale
        } else {
            coffer_vault::Consistency::Linearizable
        }
    }

    /// Parses the body as JSON into `T`; an empty body is `{}`.
    pub fn json<T: DeserializeOwned>(&self) -> Result<T, ApiError> {
        let bytes: &[u8] = if self.body.iter().all(u8::is_ascii_whitespace) {
            b"{}"
        } else {
            &self.body
        };
        serde_json::from_slice(bytes).map_err(|e| ApiError::BadRequest(describe_json_error(&e)))
    }

    /// A query parameter parsed as an unsigned integer.
    pub fn query_u64(&self, name: &str) -> Result<Option<u64>, ApiError> {
        self.query
            .get(name)
            .map(|v| {
                v.parse().map_err(|_| {
                    ApiError::BadRequest(format!(
                        "query parameter {name:?} must be a non-negative integer"
                    ))
                })
            })
            .transpose()
    }

    /// The request's token, resolved once per request (and the caller recorded for audit).
    pub fn authenticate(
        &self,
        vault: &coffer_vault::Vault,
    ) -> Result<coffer_vault::Auth, ApiError> {
        if let Some(auth) = self.auth.get() {
            return Ok(auth.clone());
        }
        let auth = vault.authenticate(self.token.as_deref())?;
        self.set_actor(Actor {
            name: auth.actor().to_string(),
            display_name: auth.display_name.clone(),
            accessor: Some(auth.accessor.clone()),
            method: auth.method().to_string(),
        });
        let _ = self.auth.set(auth.clone());
        Ok(auth)
    }

    /// Records who the caller is, for the audit record.
    pub fn set_actor(&self, actor: Actor) {
        if let Ok(mut slot) = self.actor.lock() {
            *slot = Some(actor);
        }
    }

    /// A boolean query parameter (`true`/`1` are true).
    pub fn query_bool(&self, name: &str) -> bool {
        self.query
            .get(name)
            .is_some_and(|v| v == "true" || v == "1")
    }
}

/// A JSON error message that never repeats the client's values: serde's type errors quote the
/// offending value (`invalid type: string "hunter2", expected …`), and that value may be a
/// secret. Field names and positions are kept; values are not.
fn describe_json_error(e: &serde_json::Error) -> String {
    let msg = e.to_string();
    let at = format!("line {} column {}", e.line(), e.column());
    if !e.is_data() {
        // Syntax and EOF messages describe the grammar, not the input.
        return format!("failed to parse JSON input: {msg}");
    }
    if msg.starts_with("unknown field") || msg.starts_with("missing field") {
        return format!("invalid request: {msg}");
    }
    let expected = msg
        .split_once(", expected ")
        .map(|(_, rest)| rest.split(" at line ").next().unwrap_or(rest).to_string());
    match expected {
        Some(expected) => {
            format!("invalid request: wrong type or value at {at}, expected {expected}")
        }
        None => format!("invalid request: wrong type or value at {at}"),
    }
}

fn token(headers: &HeaderMap) -> Option<String> {
    if let Some(v) = headers.get("x-vault-token").and_then(|v| v.to_str().ok()) {
        return Some(v.trim().to_string());
    }
    let auth = headers
        .get(axum::http::header::AUTHORIZATION)?
        .to_str()
        .ok()?;
    let (scheme, value) = auth.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| value.trim().to_string())
}

fn percent_decode(s: &str) -> Result<String, ApiError> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| ApiError::BadRequest("invalid percent-encoding in path".into()))?;
            out.push(hex);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out)
        .map_err(|_| ApiError::BadRequest("request path is not valid UTF-8".into()))
}

/// The one spelling of a request path that policies are checked against and handlers use:
/// no leading or repeated slashes, no `.` or `..` segments, no control characters, and a
/// trailing slash only on a LIST (a folder). `secret//data/x/` and `secret/data/x` are the
/// same path, so a `deny` cannot be stepped around by spelling.
pub fn normalize_path(path: &str, list: bool) -> Result<String, ApiError> {
    if path.chars().any(char::is_control) {
        return Err(ApiError::BadRequest(
            "request path contains control characters".into(),
        ));
    }
    let mut segments = Vec::new();
    for segment in path.split('/') {
        match segment {
            "" => {}
            "." | ".." => {
                return Err(ApiError::BadRequest(
                    "invalid request path: '.' and '..' segments are not allowed".into(),
                ))
            }
            s => segments.push(s),
        }
    }
    let mut out = segments.join("/");
    if list && path.ends_with('/') && !out.is_empty() {
        out.push('/');
    }
    Ok(out)
}

fn parse_query(q: &str) -> Result<HashMap<String, String>, ApiError> {
    let mut out = HashMap::new();
    for pair in q.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        out.insert(percent_decode(k)?, percent_decode(&v.replace('+', " "))?);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_have_one_spelling() {
        for (raw, list, want) in [
            ("secret/data/x", false, "secret/data/x"),
            ("secret//data///x/", false, "secret/data/x"),
            ("/secret/data/x", false, "secret/data/x"),
            ("secret/metadata/team/", true, "secret/metadata/team/"),
            ("secret/metadata//team", true, "secret/metadata/team"),
            ("sys/policies/acl/", false, "sys/policies/acl"),
        ] {
            assert_eq!(normalize_path(raw, list).unwrap(), want, "{raw}");
        }
        for bad in ["secret/data/../x", "secret/./data/x", "secret/data/a\u{0}b"] {
            assert!(normalize_path(bad, false).is_err(), "{bad}");
        }
    }

    #[test]
    fn json_errors_never_echo_values() {
        #[derive(Debug, serde::Deserialize)]
        #[allow(dead_code)]
        struct Body {
            data: std::collections::BTreeMap<String, String>,
        }
        for input in [
            r#"{"data": "hunter2"}"#,
            r#"{"data": {"k": 42}}"#,
            r#"{"data": ["hunter2"]}"#,
        ] {
            let err = serde_json::from_str::<Body>(input).unwrap_err();
            let msg = describe_json_error(&err);
            assert!(!msg.contains("hunter2") && !msg.contains("42"), "{msg}");
            assert!(
                msg.starts_with("invalid request: wrong type or value at line 1"),
                "{msg}"
            );
        }
        let err = serde_json::from_str::<Body>("{oops").unwrap_err();
        assert!(describe_json_error(&err).starts_with("failed to parse JSON input"));
    }
}
