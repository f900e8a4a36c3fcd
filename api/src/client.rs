//! The Rust client: Vault-style requests to one of several node addresses, moving to the next
//! address when a connection cannot be made within a short timeout.

use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::Value;

/// How long to wait for a TCP+TLS connection before trying the next address.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// How long a whole request may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a backup download or upload may take (a large vault's backup is hundreds of
/// megabytes).
const TRANSFER_TIMEOUT: Duration = Duration::from_secs(3600);
/// Bytes per chunk of an upload.
const UPLOAD_CHUNK_BYTES: usize = 256 << 10;

/// Why a request failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Bad local input: address, CA file.
    #[error("{0}")]
    Local(String),
    /// No address could be reached.
    #[error("could not reach any Coffer node ({0})")]
    Unreachable(String),
    /// The server answered with an error status.
    #[error("Error from server (HTTP {status}): {}", messages.join("; "))]
    Server {
        /// HTTP status.
        status: u16,
        /// The server's `errors` list.
        messages: Vec<String>,
    },
}

/// A server response: status and JSON body (`Null` when empty).
#[derive(Debug)]
pub struct Response {
    /// HTTP status.
    pub status: StatusCode,
    /// Parsed body.
    pub body: Value,
    /// Response headers (`X-Coffer-Applied-Index` and the like).
    pub headers: reqwest::header::HeaderMap,
}

/// A client bound to a list of node addresses, a CA, and a token.
#[derive(Clone)]
pub struct Client {
    addrs: Vec<String>,
    token: Option<String>,
    http: reqwest::Client,
}

impl Client {
    /// `addrs` is a comma-separated list of `https://host:port` URLs; `ca_pem` the CA that
    /// signed the servers' certificates.
    pub fn new(
        addrs: &str,
        ca_pem: Option<&str>,
        token: Option<String>,
    ) -> Result<Self, ClientError> {
        let addrs: Vec<String> = addrs
            .split(',')
            .map(|a| a.trim().trim_end_matches('/').to_string())
            .filter(|a| !a.is_empty())
            .collect();
        if addrs.is_empty() {
            return Err(ClientError::Local("no server address given".into()));
        }
        let mut builder = reqwest::Client::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .timeout(REQUEST_TIMEOUT);
        if let Some(pem) = ca_pem {
            let tls = coffer_tls::api_client_config(pem)
                .map_err(|e| ClientError::Local(format!("CA certificate: {e}")))?;
            builder = builder.use_preconfigured_tls((*tls).clone());
        }
        let http = builder
            .build()
            .map_err(|e| ClientError::Local(e.to_string()))?;
        Ok(Self { addrs, token, http })
    }

    /// Sends `method path` (path after `/v1/`) with an optional JSON body. Connection errors
    /// move on to the next address; any HTTP answer is returned (errors as `Server`).
    pub async fn request(
        &self,
        method: &str,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Response, ClientError> {
        let method =
            Method::from_bytes(method.as_bytes()).map_err(|e| ClientError::Local(e.to_string()))?;
        let mut failures = Vec::new();
        for addr in &self.addrs {
            let mut req = self
                .http
                .request(method.clone(), format!("{addr}/v1/{path}"));
            if let Some(token) = &self.token {
                req = req.header("X-Vault-Token", token);
            }
            if let Some(body) = body {
                req = req.json(body);
            }
            match req.send().await {
                Ok(resp) => return finish(resp).await,
                Err(e) if e.is_connect() || e.is_timeout() => {
                    failures.push(format!("{addr}: {}", root_cause(&e)))
                }
                Err(e) => {
                    return Err(ClientError::Unreachable(format!(
                        "{addr}: {}",
                        root_cause(&e)
                    )))
                }
            }
        }
        Err(ClientError::Unreachable(failures.join("; ")))
    }
}

impl Client {
    /// Sends `method` with an optional JSON `body` and streams the binary answer (a backup, a
    /// pack with `?raw=true`) into `out`, from the first reachable address;
    /// `progress(done, total)` follows the bytes (`total` if the server said). Returns the
    /// bytes written and the answer's headers.
    pub async fn transfer(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&Value>,
        out: &mut (dyn std::io::Write + Send),
        progress: &mut (dyn FnMut(u64, Option<u64>) + Send),
    ) -> Result<(u64, reqwest::header::HeaderMap), ClientError> {
        let mut failures = Vec::new();
        for addr in &self.addrs {
            let mut req = self
                .http
                .request(method.clone(), format!("{addr}/v1/{path}"))
                .timeout(TRANSFER_TIMEOUT);
            if let Some(body) = body {
                req = req.json(body);
            }
            if let Some(token) = &self.token {
                req = req.header("X-Vault-Token", token);
            }
            let mut resp = match req.send().await {
                Ok(resp) if resp.status().is_success() => resp,
                Ok(resp) => return finish(resp).await.map(|_| (0, Default::default())),
                Err(e) if e.is_connect() || e.is_timeout() => {
                    failures.push(format!("{addr}: {}", root_cause(&e)));
                    continue;
                }
                Err(e) => {
                    return Err(ClientError::Unreachable(format!(
                        "{addr}: {}",
                        root_cause(&e)
                    )))
                }
            };
            let total = resp.content_length();
            let headers = resp.headers().clone();
            let mut done = 0u64;
            progress(0, total);
            while let Some(chunk) = resp
                .chunk()
                .await
                .map_err(|e| ClientError::Unreachable(format!("{addr}: {}", root_cause(&e))))?
            {
                out.write_all(&chunk)
                    .map_err(|e| ClientError::Local(format!("writing: {e}")))?;
                done += chunk.len() as u64;
                progress(done, total);
            }
            if total.is_some_and(|t| t != done) {
                return Err(ClientError::Unreachable(format!(
                    "{addr}: the transfer ended after {done} of {} bytes",
                    total.unwrap_or(0)
                )));
            }
            return Ok((done, headers));
        }
        Err(ClientError::Unreachable(failures.join("; ")))
    }

    /// POSTs the file at `file` as the body of `path` (a backup to restore), streamed from
    /// disk; `sent(bytes)` follows it. Tries the addresses in turn while none answers.
    pub async fn upload(
        &self,
        path: &str,
        file: &std::path::Path,
        sent: std::sync::Arc<dyn Fn(u64) + Send + Sync>,
    ) -> Result<Response, ClientError> {
        use tokio::io::AsyncReadExt;
        let mut failures = Vec::new();
        for addr in &self.addrs {
            let opened = tokio::fs::File::open(file)
                .await
                .map_err(|e| ClientError::Local(format!("{}: {e}", file.display())))?;
            let len = opened
                .metadata()
                .await
                .map_err(|e| ClientError::Local(e.to_string()))?
                .len();
            let sent = sent.clone();
            let stream = futures::stream::unfold(opened, move |mut f| {
                let sent = sent.clone();
                async move {
                    let mut buf = vec![0u8; UPLOAD_CHUNK_BYTES];
                    match f.read(&mut buf).await {
                        Ok(0) => None,
                        Ok(n) => {
                            buf.truncate(n);
                            sent(n as u64);
                            Some((Ok::<_, std::io::Error>(buf), f))
                        }
                        Err(e) => Some((Err(e), f)),
                    }
                }
            });
            let mut req = self
                .http
                .post(format!("{addr}/v1/{path}"))
                .timeout(TRANSFER_TIMEOUT)
                .header(reqwest::header::CONTENT_LENGTH, len)
                .body(reqwest::Body::wrap_stream(stream));
            if let Some(token) = &self.token {
                req = req.header("X-Vault-Token", token);
            }
            match req.send().await {
                Ok(resp) => return finish(resp).await,
                Err(e) if e.is_connect() => failures.push(format!("{addr}: {}", root_cause(&e))),
                Err(e) => {
                    return Err(ClientError::Unreachable(format!(
                        "{addr}: {}",
                        root_cause(&e)
                    )))
                }
            }
        }
        Err(ClientError::Unreachable(failures.join("; ")))
    }

    /// GETs a non-JSON resource (`sys/metrics`) and returns its text, from the first
    /// reachable address.
    pub async fn get_text(&self, path: &str) -> Result<String, ClientError> {
        let mut failures = Vec::new();
        for addr in &self.addrs {
            let mut req = self.http.get(format!("{addr}/v1/{path}"));
            if let Some(token) = &self.token {
                req = req.header("X-Vault-Token", token);
            }
            match req.send().await {
                Ok(resp) if resp.status().is_success() => {
                    return resp
                        .text()
                        .await
                        .map_err(|e| ClientError::Unreachable(e.to_string()))
                }
                Ok(resp) => return finish(resp).await.map(|r| r.body.to_string()),
                Err(e) => failures.push(format!("{addr}: {}", root_cause(&e))),
            }
        }
        Err(ClientError::Unreachable(failures.join("; ")))
    }
}

fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cur = e;
    while let Some(next) = cur.source() {
        cur = next;
    }
    cur.to_string()
}

async fn finish(resp: reqwest::Response) -> Result<Response, ClientError> {
    let status = resp.status();
    let headers = resp.headers().clone();
    let text = resp.text().await.unwrap_or_default();
    let body: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
    if status.is_success() {
        return Ok(Response {
            status,
            body,
            headers,
        });
    }
    let messages = body["errors"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|m| m.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default();
    if status == StatusCode::NOT_FOUND && body["data"].is_object() {
        // A deleted KV version: 404 with metadata. Callers decide.
        return Ok(Response {
            status,
            body,
            headers,
        });
    }
    Err(ClientError::Server {
        status: status.as_u16(),
        messages,
    })
}
