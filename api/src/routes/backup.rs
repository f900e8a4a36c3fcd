//! Backups over HTTP, on Vault's paths and in its shapes (so `hvac`'s `take_raft_snapshot`,
//! `restore_raft_snapshot` and `force_restore_raft_snapshot` work unchanged):
//! `GET sys/storage/raft/snapshot` streams a backup file of this node's state; `POST` to it
//! (or to `snapshot-force`) restores one into the running cluster.

use axum::body::Body;
use axum::http::header::{CONTENT_DISPOSITION, CONTENT_LENGTH, CONTENT_TYPE};
use axum::http::{HeaderName, HeaderValue};
use axum::response::{IntoResponse, Response};
use tokio::io::AsyncReadExt;

use super::{ApiRequest, AppState};
use crate::error::{ApiError, ApiResult};

/// Bytes per chunk of the streamed body.
const STREAM_CHUNK_BYTES: usize = 256 << 10;
/// The largest backup a restore takes over HTTP (the disk bounds it first, in practice).
const MAX_UPLOAD_BYTES: u64 = 64 << 30;

/// `POST sys/storage/raft/snapshot[-force]`: the caller is checked before a byte of the
/// body is read; the body goes to an unnamed file in the data directory (bounded memory),
/// and the vault restores it into the cluster.
/// How much of a refused upload is read (and dropped) before the refusal is sent.
const REFUSED_DRAIN_BYTES: usize = 8 << 20;

/// Reads and drops up to [`REFUSED_DRAIN_BYTES`] of a refused upload. A client still
/// sending its body when the refusal comes (hvac, curl) would otherwise see the connection
/// reset instead of the 403; a larger body is cut off, as before.
async fn drain_refused(state: &AppState, req: &ApiRequest) {
    use futures::StreamExt;
    let Some(body) = req.upload.lock().ok().and_then(|mut u| u.take()) else {
        return;
    };
    let mut stream = body.into_data_stream();
    let mut total = 0usize;
    while total < REFUSED_DRAIN_BYTES {
        match tokio::time::timeout(state.body_read_timeout, stream.next()).await {
            Ok(Some(Ok(chunk))) => total += chunk.len(),
            _ => break,
        }
    }
}

pub(super) async fn restore(
    state: &AppState,
    req: &ApiRequest,
    force: bool,
) -> ApiResult<Response> {
    use futures::StreamExt;
    use tokio::io::AsyncWriteExt;
    let route = if force {
        "sys/storage/raft/snapshot-force"
    } else {
        "sys/storage/raft/snapshot"
    };
    let allowed = (|| {
        let auth = req.authenticate(&state.vault)?;
        auth.require_sudo(route, coffer_vault::rules::policy::Capability::Update)?;
        ApiResult::Ok(auth)
    })();
    let auth = match allowed {
        Ok(auth) => auth,
        Err(refused) => {
            drain_refused(state, req).await;
            return Err(refused);
        }
    };
    let body = req
        .upload
        .lock()
        .ok()
        .and_then(|mut u| u.take())
        .ok_or_else(|| ApiError::BadRequest("the request carries no snapshot".into()))?;
    let internal = |e: std::io::Error| ApiError::Vault(coffer_vault::VaultError::internal(e));
    let mut file = tokio::fs::File::from_std(scratch_file(state)?);
    let mut stream = body.into_data_stream();
    let mut total = 0u64;
    loop {
        let chunk = match tokio::time::timeout(state.body_read_timeout, stream.next()).await {
            Err(_) => return Err(ApiError::BodyTimeout),
            Ok(None) => break,
            Ok(Some(Err(_))) => {
                return Err(ApiError::BadRequest(
                    "the snapshot upload was cut off".into(),
                ))
            }
            Ok(Some(Ok(chunk))) => chunk,
        };
        total += chunk.len() as u64;
        if total > MAX_UPLOAD_BYTES {
            return Err(ApiError::TooLarge(MAX_UPLOAD_BYTES as usize));
        }
        file.write_all(&chunk).await.map_err(internal)?;
    }
    if total == 0 {
        return Err(ApiError::BadRequest(
            "the request carries no snapshot".into(),
        ));
    }
    file.flush().await.map_err(internal)?;
    // In its own task: a client that goes away mid-restore does not leave a half-staged
    // restore behind (the restore finishes or cleans up either way).
    let (vault, file) = (state.vault.clone(), file.into_std().await);
    let summary = tokio::spawn(async move { vault.restore_live(&auth, file, force).await })
        .await
        .map_err(|e| ApiError::Vault(coffer_vault::VaultError::internal(e)))??;
    Ok(axum::Json(serde_json::json!({ "data": summary })).into_response())
}

/// `GET sys/storage/raft/snapshot`: the backup is written to an unnamed temporary file in
/// the data directory (bounded memory whatever the state's size; the space is freed when
/// the answer is done), then streamed.
pub(super) async fn save(state: &AppState, req: &ApiRequest) -> ApiResult<Response> {
    let auth = req.authenticate(&state.vault)?;
    let mut file = scratch_file(state)?;
    let manifest = state.vault.backup(&auth, &mut file).await?;
    let name = format!(
        "attachment; filename=\"coffer-{}-{}.snap\"",
        manifest.node_id, manifest.applied_index
    );
    stream_file(file, &[(CONTENT_DISPOSITION.as_str(), name)]).await
}

/// An unnamed temporary file in the node's data directory (the space is freed when the
/// answer is done, or at once if the process dies).
pub(super) fn scratch_file(state: &AppState) -> ApiResult<std::fs::File> {
    let dir = state
        .tls
        .dir
        .parent()
        .map(std::path::Path::to_path_buf)
        .unwrap_or_else(std::env::temp_dir);
    tempfile::tempfile_in(&dir).map_err(|e| ApiError::Vault(coffer_vault::VaultError::internal(e)))
}

/// Streams `file` from its start as `application/octet-stream`, with its length and `headers`.
pub(super) async fn stream_file(
    file: std::fs::File,
    headers: &[(&str, String)],
) -> ApiResult<Response> {
    let len = file
        .metadata()
        .map_err(|e| ApiError::Vault(coffer_vault::VaultError::internal(e)))?
        .len();
    let mut file = tokio::fs::File::from_std(file);
    use tokio::io::AsyncSeekExt;
    file.seek(std::io::SeekFrom::Start(0))
        .await
        .map_err(|e| ApiError::Vault(coffer_vault::VaultError::internal(e)))?;
    let stream = futures::stream::unfold(file, |mut file| async move {
        let mut buf = vec![0u8; STREAM_CHUNK_BYTES];
        match file.read(&mut buf).await {
            Ok(0) => None,
            Ok(n) => {
                buf.truncate(n);
                Some((Ok::<_, std::io::Error>(buf), file))
            }
            Err(e) => Some((Err(e), file)),
        }
    });
    let mut response = Body::from_stream(stream).into_response();
    let out = response.headers_mut();
    out.insert(
        CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    out.insert(CONTENT_LENGTH, HeaderValue::from(len));
    for (name, value) in headers {
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_str(value),
        ) {
            out.insert(name, value);
        }
    }
    Ok(response)
}
