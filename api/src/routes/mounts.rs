//! Mounts and auth methods: `sys/mounts[/:path]`, `sys/internal/ui/mounts/:path` (the Vault
//! CLI's pre-flight) and `sys/auth[/:path]`.

use std::collections::BTreeMap;

use axum::response::Response;
use coffer_vault::rules::mount::{MountEntry, MountTune};
use serde::Deserialize;
use serde_json::{json, Value};

use super::respond::{envelope, no_content, table_response};
use super::{ApiRequest, AppState, Op};
use crate::error::{ApiError, ApiResult};

/// Zero TTLs: Coffer's KV has no leases.
fn no_lease_config() -> Value {
    json!({"default_lease_ttl": 0, "max_lease_ttl": 0, "force_no_cache": false})
}

fn mount_json(path: &str, entry: &MountEntry) -> Value {
    json!({
        "accessor": entry.accessor,
        "config": {
            "default_lease_ttl": entry.default_lease_ttl,
            "max_lease_ttl": entry.max_lease_ttl,
            "force_no_cache": false,
        },
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

/// One object answered at the top level and under `data`, as Vault answers a mount's or an
/// auth method's configuration.
fn both_levels(req: &ApiRequest, value: Value) -> Response {
    table_response(req, value.as_object().cloned().unwrap_or_default())
}

/// A tune's TTLs as Vault reads them back: the mount's own, else the system's.
fn effective_ttl(secs: u64) -> u64 {
    if secs == 0 {
        coffer_vault::MAX_TTL_SECS
    } else {
        secs
    }
}

/// Fields of a tune that Vault has and Coffer does not act on: accepted when they ask for
/// nothing (empty, false), refused by name otherwise, so no setting is silently dropped.
const TUNE_UNSUPPORTED: [&str; 10] = [
    "audit_non_hmac_request_keys",
    "audit_non_hmac_response_keys",
    "listing_visibility",
    "passthrough_request_headers",
    "allowed_response_headers",
    "allowed_managed_keys",
    "plugin_version",
    "force_no_cache",
    "identity_token_key",
    "delegated_auth_accessors",
];

/// The body of `POST sys/mounts/:path/tune`.
fn tune_body(req: &ApiRequest) -> ApiResult<MountTune> {
    let body: serde_json::Map<String, Value> = req.json()?;
    let mut tune = MountTune::default();
    for (key, value) in &body {
        if value.is_null() {
            continue; // the CLI sends every field it knows, unset ones as null
        }
        match key.as_str() {
            "description" => match value {
                Value::String(s) => tune.description = Some(s.clone()),
                _ => return Err(ApiError::BadRequest("description must be a string".into())),
            },
            "default_lease_ttl" | "max_lease_ttl" => {
                let secs = ttl_secs(key, value)?;
                if key == "default_lease_ttl" {
                    tune.default_lease_ttl = Some(secs);
                } else {
                    tune.max_lease_ttl = Some(secs);
                }
            }
            "options" => {
                let Value::Object(map) = value else {
                    return Err(ApiError::BadRequest("options must be an object".into()));
                };
                let mut options = BTreeMap::new();
                for (k, v) in map {
                    let v = match v {
                        Value::String(s) => s.clone(),
                        Value::Number(n) => n.to_string(),
                        _ => {
                            return Err(ApiError::BadRequest(format!(
                                "option {k:?} must be a string"
                            )))
                        }
                    };
                    options.insert(k.clone(), v);
                }
                tune.options = Some(options);
            }
            k if TUNE_UNSUPPORTED.contains(&k) => {
                let empty = match value {
                    Value::Null => true,
                    Value::Bool(b) => !b,
                    Value::String(s) => s.is_empty(),
                    Value::Array(a) => a.is_empty(),
                    Value::Object(o) => o.is_empty(),
                    Value::Number(_) => false,
                };
                if !empty {
                    return Err(ApiError::BadRequest(format!(
                        "tune parameter {k:?} is not supported by Coffer"
                    )));
                }
            }
            other => {
                return Err(ApiError::BadRequest(format!(
                    "unknown tune parameter {other:?}"
                )))
            }
        }
    }
    Ok(tune)
}

/// A TTL as Vault takes it: seconds as a number or a string, or a duration (`"1h"`);
/// `"system"` or empty for the system's.
fn ttl_secs(field: &str, value: &Value) -> ApiResult<u64> {
    let bad = || ApiError::BadRequest(format!("{field} must be a duration"));
    match value {
        Value::Number(n) => n.as_u64().ok_or_else(bad),
        Value::String(s) if s.is_empty() || s == "system" => Ok(0),
        Value::String(s) => coffer_vault::clock::parse_duration_secs(s).ok_or_else(bad),
        _ => Err(bad()),
    }
}

/// `GET` and `POST sys/mounts/:path/tune`.
async fn tune(state: &AppState, req: &ApiRequest, path: &str) -> ApiResult<Response> {
    let auth = req.authenticate(&state.vault)?;
    match req.op {
        Op::Read => {
            let (_, entry) = state.vault.mount(&auth, path)?;
            let config = json!({
                "default_lease_ttl": effective_ttl(entry.default_lease_ttl),
                "max_lease_ttl": effective_ttl(entry.max_lease_ttl),
                "force_no_cache": false,
                "description": entry.description,
                "options": entry.options,
            });
            Ok(both_levels(req, config))
        }
        Op::Write => {
            let tune = tune_body(req)?;
            state.vault.tune_mount(&auth, path, tune).await?;
            Ok(no_content())
        }
        _ => Err(ApiError::Method(req.path.clone())),
    }
}

/// `GET`, `POST` and `DELETE sys/mounts/:path` (KV version 2 only), and its `tune`.
pub(super) async fn change(state: &AppState, req: &ApiRequest, path: &str) -> ApiResult<Response> {
    if let Some(mount) = path.strip_suffix("/tune") {
        return tune(state, req, mount).await;
    }
    let auth = req.authenticate(&state.vault)?;
    match req.op {
        Op::Read => {
            let (mount, entry) = state.vault.mount(&auth, path)?;
            Ok(both_levels(req, mount_json(&mount, &entry)))
        }
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
fn auth_method_json(name: &str, description: &str) -> Value {
    json!({"type": name, "description": description, "accessor": format!("auth_{name}"),
           "local": false, "seal_wrap": false, "external_entropy_access": false, "options": null,
           "plugin_version": "", "running_plugin_version": "",
           "config": {"default_lease_ttl": 0, "max_lease_ttl": 0, "force_no_cache": false,
                      "token_type": "default-service"}})
}

pub(super) fn auth_methods(state: &AppState, req: &ApiRequest, path: &str) -> ApiResult<Response> {
    let auth = req.authenticate(&state.vault)?;
    match (path.trim_matches('/'), req.op) {
        ("", Op::Read) => {
            let mut table = serde_json::Map::new();
            for (name, description) in state.vault.auth_methods(&auth)? {
                table.insert(format!("{name}/"), auth_method_json(name, description));
            }
            Ok(table_response(req, table))
        }
        (name, Op::Read) => {
            let (name, tune) = match name.strip_suffix("/tune") {
                Some(name) => (name, true),
                None => (name, false),
            };
            let description = state.vault.auth_method(&auth, name)?;
            let answer = if tune {
                json!({
                    "default_lease_ttl": coffer_vault::DEFAULT_TTL_SECS,
                    "max_lease_ttl": coffer_vault::MAX_TTL_SECS,
                    "force_no_cache": false,
                    "description": description,
                    "token_type": "default-service",
                })
            } else {
                auth_method_json(name, description)
            };
            Ok(both_levels(req, answer))
        }
        (name, Op::Write) if !name.is_empty() => {
            state.vault.enable_auth_method(&auth, name)?;
            Ok(no_content())
        }
        _ => Err(ApiError::Method(req.path.clone())),
    }
}
