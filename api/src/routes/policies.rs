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
