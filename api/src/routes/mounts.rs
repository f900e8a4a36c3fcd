//! Mounts and auth methods: `sys/mounts[/:path]`, `sys/internal/ui/mounts/:path` (the Vault
//! CLI's pre-flight) and `sys/auth[/:path]`.

use std::collections::BTreeMap;

use axum::response::{IntoResponse, Response};
use axum::Json;
use coffer_vault::rules::mount::MountEntry;
use serde::Deserialize;
use serde_json::{json, Value};

use super::respond::{envelope, no_content};
use super::{ApiRequest, AppState, Op};
use crate::error::{ApiError, ApiResult};

/// Zero TTLs: Coffer's KV has no leases.
fn no_lease_config() -> Value {
    json!({"default_lease_ttl": 0, "max_lease_ttl": 0, "force_no_cache": false})
}

fn mount_json(path: &str, entry: &MountEntry) -> Value {
    json!({
        "accessor": entry.accessor,
        "config": no_lease_config(),
        "description": entry.description,
        "external_entropy_access": false,
        "local": false,
        "options": entry.options,
        "path": path,
        "plugin_version": "",
        "running_plugin_version": "",
        "seal_wrap": false,
        "type": entry.kind,
        "uuid": entry.uuid,
    })
}

/// Vault answers `sys/mounts` and `sys/auth` with the table both at the top level (old
/// clients) and under `data`.
fn table_response(req: &ApiRequest, table: serde_json::Map<String, Value>) -> Response {
    let mut body = table.clone();
    body.insert("data".into(), Value::Object(table));
    body.insert("request_id".into(), json!(req.request_id));
    Json(Value::Object(body)).into_response()
}

/// `GET sys/mounts`.
pub(super) fn list(state: &AppState, req: &ApiRequest) -> ApiResult<Response> {
    let auth = req.authenticate(&state.vault)?;
    let mut data = serde_json::Map::new();
    for (path, entry) in state.vault.mounts(&auth)? {
        data.insert(path.clone(), mount_json(&path, &entry));
    }
    data.insert(
        "sys/".into(),
        json!({"type": "system", "description": "system endpoints used for control, policy and debugging",
               "accessor": "system", "options": null, "local": false, "seal_wrap": true,
               "config": no_lease_config()}),
    );
    Ok(table_response(req, data))
}

#[derive(Deserialize)]
struct MountBody {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    description: String,
    #[serde(default)]
    options: Option<BTreeMap<String, Value>>,
}

/// `POST sys/mounts/:path` (KV version 2 only) and `DELETE sys/mounts/:path`.
pub(super) async fn change(state: &AppState, req: &ApiRequest, path: &str) -> ApiResult<Response> {
    let auth = req.authenticate(&state.vault)?;
    match req.op {
        Op::Write => {
            let body: MountBody = req.json()?;
            let version = body.options.as_ref().and_then(|o| o.get("version"));
            let version_ok = version.is_none_or(|v| v == "2" || v == 2);
            if !matches!(body.kind.as_str(), "kv" | "kv-v2") || (body.kind == "kv" && !version_ok) {
                return Err(ApiError::BadRequest(format!(
                    "unsupported secrets engine {:?}: Coffer serves KV version 2 only",
                    body.kind
                )));
            }
            state.vault.mount_kv(&auth, path, &body.description).await?;
            Ok(no_content())
        }
        Op::Delete => {
            state.vault.unmount(&auth, path).await?;
            Ok(no_content())
        }
        _ => Err(ApiError::Method(format!("sys/mounts/{path}"))),
    }
}

/// `GET sys/internal/ui/mounts/:path`: which mount serves `path`.
pub(super) fn ui_mount(state: &AppState, req: &ApiRequest, path: &str) -> ApiResult<Response> {
    let auth = req.authenticate(&state.vault)?;
    if req.op != Op::Read {
        return Err(ApiError::Method(format!("sys/internal/ui/mounts/{path}")));
    }
    let (mount, entry) = state.vault.mount_of(&auth, path)?;
    Ok(envelope(req, mount_json(&mount, &entry)))
}

/// `GET sys/auth` lists the auth methods (token and userpass are always on); `POST
/// sys/auth/:path` enables one, which succeeds for those two so `vault auth enable userpass`
/// works.
pub(super) fn auth_methods(state: &AppState, req: &ApiRequest, path: &str) -> ApiResult<Response> {
    let auth = req.authenticate(&state.vault)?;
    match (path.trim_matches('/'), req.op) {
        ("", Op::Read) => {
            let mut table = serde_json::Map::new();
            for (name, description) in state.vault.auth_methods(&auth)? {
                table.insert(
                    format!("{name}/"),
                    json!({"type": name, "description": description, "accessor": format!("auth_{name}"),
                           "local": false, "seal_wrap": false, "options": null,
                           "config": {"default_lease_ttl": 0, "max_lease_ttl": 0}}),
                );
            }
            Ok(table_response(req, table))
        }
        (name, Op::Write) if !name.is_empty() => {
            state.vault.enable_auth_method(&auth, name)?;
            Ok(no_content())
        }
        _ => Err(ApiError::Method(req.path.clone())),
    }
}
