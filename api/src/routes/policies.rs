//! ACL policies: `sys/policies/acl[/:name]` and the legacy `sys/policy[/:name]`.

use axum::response::Response;
use serde::Deserialize;
use serde_json::json;

use super::respond::{envelope, no_content};
use super::{ApiRequest, AppState, Op};
use crate::error::{ApiError, ApiResult};

#[derive(Deserialize)]
struct PolicyBody {
    policy: Option<String>,
    rules: Option<String>,
}

/// The policy name in `rest` (after `sys/`), if `rest` is a policy path.
pub(super) fn name(rest: &str) -> Option<&str> {
    rest.strip_prefix("policies/acl")
        .or_else(|| rest.strip_prefix("policy"))
        .filter(|name| name.is_empty() || name.starts_with('/'))
        .map(|name| name.trim_matches('/'))
}

/// `sys/policies/acl[/:name]` and `sys/policy[/:name]`.
pub(super) async fn route(state: &AppState, req: &ApiRequest, name: &str) -> ApiResult<Response> {
    let v = &state.vault;
    let auth = req.authenticate(v)?;
    // The legacy spelling is also checked on the path it was asked by, so a policy written
    // for either spelling holds.
    if !req.path.starts_with("sys/policies") {
        v.check_policy_alias(&auth, &req.path, req.op)?;
    }
    if name.is_empty() {
        return match req.op {
            Op::List | Op::Read => {
                let names = v.list_policies(&auth)?;
                Ok(envelope(req, json!({ "keys": names, "policies": names })))
            }
            _ => Err(ApiError::Method(req.path.clone())),
        };
    }
    match req.op {
        Op::Write => {
            let body: PolicyBody = req.json()?;
            let text = body.policy.or(body.rules).ok_or_else(|| {
                ApiError::BadRequest("missing policy: send {\"policy\": \"…\"}".into())
            })?;
            v.write_policy(&auth, name, &text).await?;
            Ok(no_content())
        }
        Op::Read => match v.read_policy(&auth, name)? {
            Some(p) => Ok(envelope(
                req,
                json!({ "name": p.name, "policy": p.text, "rules": p.text }),
            )),
            None => Err(ApiError::NotFoundEmpty),
        },
        Op::Delete => {
            v.delete_policy(&auth, name).await?;
            Ok(no_content())
        }
        _ => Err(ApiError::Method(req.path.clone())),
    }
}

/// Body of `sys/capabilities`, `sys/capabilities-self` and `sys/capabilities-accessor`:
/// `paths` (or the older `path`), each a list or a comma-separated string, as Vault takes them.
#[derive(Deserialize)]
struct CapabilitiesBody {
    #[serde(default)]
    paths: Option<serde_json::Value>,
    #[serde(default)]
    path: Option<serde_json::Value>,
    #[serde(default)]
    token: Option<String>,
    #[serde(default)]
    accessor: Option<String>,
}

/// Most paths one capabilities request may ask about.
const MAX_CAPABILITY_PATHS: usize = 256;

impl CapabilitiesBody {
    fn paths(&self) -> ApiResult<Vec<String>> {
        let mut out = Vec::new();
        for value in [&self.paths, &self.path].into_iter().flatten() {
            match value {
                serde_json::Value::String(s) => {
                    out.extend(
                        s.split(',')
                            .map(str::trim)
                            .filter(|p| !p.is_empty())
                            .map(String::from),
                    );
                }
                serde_json::Value::Array(items) => {
                    for item in items {
                        let serde_json::Value::String(p) = item else {
                            return Err(ApiError::BadRequest("paths must be strings".into()));
                        };
                        out.push(p.clone());
                    }
                }
                _ => {
                    return Err(ApiError::BadRequest(
                        "paths must be a list or a string".into(),
                    ))
                }
            }
        }
        if out.is_empty() {
            return Err(ApiError::BadRequest("missing paths".into()));
        }
        if out.len() > MAX_CAPABILITY_PATHS {
            return Err(ApiError::BadRequest(format!(
                "at most {MAX_CAPABILITY_PATHS} paths per request"
            )));
        }
        Ok(out)
    }
}

/// `POST sys/capabilities-self`, `sys/capabilities` (another token) and
/// `sys/capabilities-accessor`: the capabilities on each path, at the top level and under
/// `data` as Vault answers, plus `capabilities` when one path was asked.
pub(super) fn capabilities(state: &AppState, req: &ApiRequest, which: &str) -> ApiResult<Response> {
    if req.op != Op::Write {
        return Err(ApiError::Method(req.path.clone()));
    }
    let v = &state.vault;
    let auth = req.authenticate(v)?;
    let body: CapabilitiesBody = req.json()?;
    let paths = body.paths()?;
    let table = match which {
        "capabilities-self" => v.capabilities_self(&auth, &paths)?,
        "capabilities" => {
            let token = body.token.as_deref().unwrap_or_default();
            v.capabilities_of_token(&auth, token, &paths)?
        }
        _ => {
            let accessor = body.accessor.as_deref().unwrap_or_default();
            v.capabilities_of_accessor(&auth, accessor, &paths)?
        }
    };
    let mut data = serde_json::Map::new();
    if let [only] = paths.as_slice() {
        let only = only.trim_start_matches('/');
        data.insert("capabilities".into(), json!(table.get(only)));
    }
    for (path, caps) in table {
        data.insert(path, json!(caps));
    }
    Ok(super::respond::table_response(req, data))
}
