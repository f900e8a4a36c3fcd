//! Fuzz target of the HTTP surface's request parsing: method, path (percent-decoding and
//! normalization), query, token headers and body, as every request is parsed once. Returns
//! for every input and never panics; see `vault/src/fuzz.rs` for how targets are run.

use std::time::Duration;

use axum::body::Body;
use axum::http::Request;

use crate::routes::ApiRequest;

thread_local! {
    static RUNTIME: tokio::runtime::Runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("a runtime for the fuzz target");
}

/// Input: `METHOD\nURI\nHEADER: VALUE\n…\n\nBODY`.
pub fn request(data: &[u8]) {
    let split = data
        .windows(2)
        .position(|w| w == b"\n\n")
        .unwrap_or(data.len());
    let head = String::from_utf8_lossy(&data[..split]);
    let body = data.get(split + 2..).unwrap_or(&[]).to_vec();
    let mut lines = head.lines();
    let method = lines.next().unwrap_or("GET");
    let uri = lines.next().unwrap_or("/v1/");
    let mut builder = Request::builder().method(method).uri(uri);
    for line in lines {
        if let Some((name, value)) = line.split_once(':') {
            builder = builder.header(name.trim(), value.trim());
        }
    }
    let Ok(request) = builder.body(Body::from(body)) else {
        return;
    };
    RUNTIME.with(|rt| {
        rt.block_on(async {
            if let Ok(req) = ApiRequest::parse(request, 1 << 20, Duration::from_secs(1)).await {
                let _ = req.json::<serde_json::Value>();
                let _ = req.query_u64("version");
                let _ = req.consistency();
            }
        })
    });
}
