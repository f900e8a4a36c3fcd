//! `auth/token/*`, `auth/userpass/*`, `sys/policies/acl/*` and `sys/auth` handlers.

use std::collections::BTreeMap;

use axum::response::{IntoResponse, Response};
use axum::Json;
use coffer_vault::rules::token::TokenEntry;
use coffer_vault::{clock, IssuedToken, TokenRequest, UserUpdate};
use serde::Deserialize;
use serde_json::{json, Value};
use zeroize::Zeroizing;

use super::sys::{authenticate, envelope, no_content};
use super::{lenient, ApiRequest, AppState, Op};
use crate::error::{ApiError, ApiResult};

fn duration(field: &str, value: Option<String>) -> ApiResult<Option<u64>> {
    value
        .map(|v| {
            clock::parse_duration_secs(&v)
                .ok_or_else(|| ApiError::BadRequest(format!("{field}: {v:?} is not a duration")))
        })
        .transpose()
}

/// A comma-separated string or a list, as Vault accepts policy lists.
fn policy_list(v: Option<Value>) -> ApiResult<Option<Vec<String>>> {
    match v {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(
            s.split(',')
                .map(|p| p.trim().to_string())
                .filter(|p| !p.is_empty())
                .collect(),
        )),
        Some(Value::Array(items)) => items
            .into_iter()
            .map(|i| match i {
                Value::String(s) => Ok(s),
                _ => Err(ApiError::BadRequest("policies must be strings".into())),
            })
            .collect::<ApiResult<Vec<_>>>()
            .map(Some),
        Some(_) => Err(ApiError::BadRequest(
            "policies must be a list or a comma-separated string".into(),
        )),
    }
}

/// Vault's `auth` block for a freshly issued token.
fn auth_block(req: &ApiRequest, issued: &IssuedToken) -> Response {
    let e = &issued.entry;
    Json(json!({
        "request_id": req.request_id,
        "lease_id": "",
        "renewable": false,
        "lease_duration": 0,
        "data": null,
        "wrap_info": null,
        "warnings": null,
        "auth": {
            "client_token": issued.token,
            "accessor": e.accessor,
            "policies": e.policies,
            "token_policies": e.policies,
            "metadata": e.meta,
            "lease_duration": e.creation_ttl,
            "renewable": e.renewable,
            "entity_id": "",
            "token_type": "service",
            "orphan": e.parent.is_none(),
            "mfa_requirement": null,
            "num_uses": 0,
        },
    }))
    .into_response()
}

fn lookup_data(e: &TokenEntry, id: Option<&str>) -> Value {
    let now = clock::now().unix_timestamp();
    json!({
        "accessor": e.accessor,
        "creation_time": e.creation_time,
        "creation_ttl": e.creation_ttl,
        "display_name": e.display_name,
        "entity_id": "",
        "expire_time": e.expire_time.and_then(|t| time::OffsetDateTime::from_unix_timestamp(t).ok()).map(clock::rfc3339),
        "explicit_max_ttl": e.explicit_max_ttl,
        "id": id,
        "issue_time": time::OffsetDateTime::from_unix_timestamp(e.creation_time).ok().map(clock::rfc3339),
        "meta": e.meta,
        "num_uses": 0,
        "orphan": e.parent.is_none(),
        "path": e.path,
        "period": (e.period > 0).then_some(e.period),
        "policies": e.policies,
        "renewable": e.renewable,
        "ttl": e.ttl_left(now),
        "type": "service",
    })
}

#[derive(Deserialize)]
struct CreateBody {
    #[serde(default)]
    policies: Option<Value>,
    #[serde(default, deserialize_with = "lenient::opt_duration")]
    ttl: Option<String>,
    #[serde(default, deserialize_with = "lenient::opt_duration")]
    explicit_max_ttl: Option<String>,
    #[serde(default, deserialize_with = "lenient::opt_duration")]
    period: Option<String>,
    #[serde(default, deserialize_with = "lenient::opt_bool")]
    no_parent: Option<bool>,
    #[serde(default, deserialize_with = "lenient::opt_bool")]
    no_default_policy: Option<bool>,
    #[serde(default, deserialize_with = "lenient::opt_bool")]
    renewable: Option<bool>,
    #[serde(default)]
    display_name: String,
    #[serde(default)]
    meta: BTreeMap<String, String>,
}

#[derive(Deserialize)]
struct TokenBody {
    token: Option<String>,
    accessor: Option<String>,
}

#[derive(Deserialize)]
struct RenewBody {
    #[serde(default, deserialize_with = "lenient::opt_duration")]
    increment: Option<String>,
}

#[derive(Deserialize)]
struct UserBody {
    password: Option<String>,
    policies: Option<Value>,
    token_policies: Option<Value>,
    #[serde(default, deserialize_with = "lenient::opt_duration")]
    token_ttl: Option<String>,
    #[serde(default, deserialize_with = "lenient::opt_duration")]
    token_max_ttl: Option<String>,
    #[serde(default, deserialize_with = "lenient::opt_duration")]
    ttl: Option<String>,
    #[serde(default, deserialize_with = "lenient::opt_duration")]
    max_ttl: Option<String>,
}

#[derive(Deserialize)]
struct LoginBody {
    password: String,
}

pub(super) async fn route(state: &AppState, req: &ApiRequest) -> ApiResult<Response> {
    let v = &state.vault;
    let path = req.path.as_str();
    if let Some(rest) = path.strip_prefix("auth/userpass/") {
        return userpass(state, req, rest).await;
    }
    match (path, req.op) {
        ("auth/token/create" | "auth/token/create-orphan", Op::Write) => {
            let auth = authenticate(state, req)?;
            let body: CreateBody = req.json()?;
            let request = TokenRequest {
                policies: policy_list(body.policies)?.unwrap_or_default(),
                ttl_secs: duration("ttl", body.ttl)?,
                explicit_max_ttl_secs: duration("explicit_max_ttl", body.explicit_max_ttl)?
                    .unwrap_or(0),
                period_secs: duration("period", body.period)?.unwrap_or(0),
                no_parent: body.no_parent.unwrap_or(false) || path.ends_with("orphan"),
                no_default_policy: body.no_default_policy.unwrap_or(false),
                display_name: body.display_name,
                meta: body.meta,
                renewable: body.renewable.unwrap_or(true),
            };
            let issued = v.create_token(&auth, request).await?;
            Ok(auth_block(req, &issued))
        }
        ("auth/token/lookup-self", Op::Read) => {
            let auth = authenticate(state, req)?;
            auth.require(
                "auth/token/lookup-self",
                coffer_vault::rules::policy::Capability::Read,
            )?;
            Ok(envelope(
                req,
                lookup_data(&auth.entry, req.token.as_deref()),
            ))
        }
        ("auth/token/lookup", Op::Write | Op::Read) => {
            let auth = authenticate(state, req)?;
            let body: TokenBody = req.json()?;
            let token = body
                .token
                .ok_or_else(|| ApiError::BadRequest("missing token".into()))?;
            let entry = v.lookup_token(&auth, &token)?;
            Ok(envelope(req, lookup_data(&entry, Some(&token))))
        }
        ("auth/token/lookup-accessor", Op::Write) => {
            let auth = authenticate(state, req)?;
            auth.require(
                "auth/token/lookup-accessor",
                coffer_vault::rules::policy::Capability::Update,
            )?;
            let body: TokenBody = req.json()?;
            let accessor = body
                .accessor
                .ok_or_else(|| ApiError::BadRequest("missing accessor".into()))?;
            match v.lookup_accessor(&auth, &accessor)? {
                Some(entry) => Ok(envelope(req, lookup_data(&entry, None))),
                None => Err(ApiError::BadRequest("invalid accessor".into())),
            }
        }
        ("auth/token/accessors" | "auth/token/accessors/", Op::List) => {
            let auth = authenticate(state, req)?;
            let keys = v.list_accessors(&auth)?;
            if keys.is_empty() {
                return Err(ApiError::NotFoundEmpty);
            }
            Ok(envelope(req, json!({ "keys": keys })))
        }
        ("auth/token/renew-self", Op::Write) => {
            let auth = authenticate(state, req)?;
            let body: RenewBody = req.json()?;
            let entry = v
                .renew_self(&auth, duration("increment", body.increment)?)
                .await?;
            let issued = IssuedToken {
                token: req.token.clone().unwrap_or_default(),
                entry,
            };
            Ok(auth_block(req, &issued))
        }
        ("auth/token/revoke-self", Op::Write) => {
            v.revoke_self(&authenticate(state, req)?).await?;
            Ok(no_content())
        }
        ("auth/token/revoke", Op::Write) => {
            let auth = authenticate(state, req)?;
            let body: TokenBody = req.json()?;
            let token = body
                .token
                .ok_or_else(|| ApiError::BadRequest("missing token".into()))?;
            v.revoke_token(&auth, &token).await?;
            Ok(no_content())
        }
        ("auth/token/revoke-accessor", Op::Write) => {
            let auth = authenticate(state, req)?;
            let body: TokenBody = req.json()?;
            let accessor = body
                .accessor
                .ok_or_else(|| ApiError::BadRequest("missing accessor".into()))?;
            v.revoke_accessor(&auth, &accessor).await?;
            Ok(no_content())
        }
        _ if path.starts_with("auth/token/") => Err(ApiError::NoRoute(path.to_string())),
        _ => Err(ApiError::NoRoute(path.to_string())),
    }
}

/// Until a login succeeds its caller is anonymous (the name it claims is in the path): a
/// failed attempt is never recorded under the name of the person it tried to be.
pub(super) fn set_login_attempt(req: &ApiRequest) {
    req.set_actor(super::request::Actor {
        name: "anonymous".into(),
        display_name: String::new(),
        accessor: None,
        method: "userpass".into(),
    });
}

/// A successful login was done by the person who logged in (named as her tokens name her).
fn set_login_actor(req: &ApiRequest, user: &str, issued: &IssuedToken) {
    req.set_actor(super::request::Actor {
        name: user.to_string(),
        display_name: issued.entry.display_name.clone(),
        accessor: Some(issued.entry.accessor.clone()),
        method: "userpass".into(),
    });
}

async fn userpass(state: &AppState, req: &ApiRequest, rest: &str) -> ApiResult<Response> {
    let v = &state.vault;
    if let Some(user) = rest.strip_prefix("login/") {
        if req.op != Op::Write {
            return Err(ApiError::Method(req.path.clone()));
        }
        set_login_attempt(req);
        let body: LoginBody = req.json()?;
        let addr = req
            .client
            .map(|c| c.0.ip().to_string())
            .unwrap_or_else(|| "local".into());
        let issued = v
            .login_userpass(user, Zeroizing::new(body.password), &addr)
            .await?;
        set_login_actor(req, user, &issued);
        return Ok(auth_block(req, &issued));
    }
    let auth = authenticate(state, req)?;
    if rest == "users" || rest == "users/" {
        return match req.op {
            Op::List => {
                let users = v.list_users(&auth)?;
                if users.is_empty() {
                    return Err(ApiError::NotFoundEmpty);
                }
                Ok(envelope(req, json!({ "keys": users })))
            }
            _ => Err(ApiError::Method(req.path.clone())),
        };
    }
    let Some(user_path) = rest.strip_prefix("users/") else {
        return Err(ApiError::NoRoute(req.path.clone()));
    };
    if let Some(user) = user_path.strip_suffix("/password") {
        if req.op != Op::Write {
            return Err(ApiError::Method(req.path.clone()));
        }
        let body: UserBody = req.json()?;
        let password = body
            .password
            .ok_or_else(|| ApiError::BadRequest("missing password".into()))?;
        v.set_password(&auth, user, Zeroizing::new(password))
            .await?;
        return Ok(no_content());
    }
    let user = user_path;
    match req.op {
        Op::Write => {
            let body: UserBody = req.json()?;
            let policies = match policy_list(body.token_policies)? {
                Some(p) => Some(p),
                None => policy_list(body.policies)?,
            };
            let update = UserUpdate {
                password: body.password.map(Zeroizing::new),
                token_policies: policies,
                token_ttl: duration("token_ttl", body.token_ttl.or(body.ttl))?,
                token_max_ttl: duration("token_max_ttl", body.token_max_ttl.or(body.max_ttl))?,
            };
            v.write_user(&auth, user, update).await?;
            Ok(no_content())
        }
        Op::Read => match v.read_user(&auth, user)? {
            Some(u) => Ok(envelope(
                req,
                json!({
                    "policies": u.token_policies,
                    "token_policies": u.token_policies,
                    "token_ttl": u.token_ttl,
                    "token_max_ttl": u.token_max_ttl,
                    "ttl": u.token_ttl,
                    "max_ttl": u.token_max_ttl,
                }),
            )),
            None => Err(ApiError::NotFoundEmpty),
        },
        Op::Delete => {
            v.delete_user(&auth, user).await?;
            Ok(no_content())
        }
        _ => Err(ApiError::Method(req.path.clone())),
    }
}

#[derive(Deserialize)]
struct PolicyBody {
    policy: Option<String>,
    rules: Option<String>,
}

/// `sys/policies/acl[/:name]` and the legacy `sys/policy[/:name]`.
pub(super) async fn policies(
    state: &AppState,
    req: &ApiRequest,
    name: &str,
) -> ApiResult<Response> {
    let auth = authenticate(state, req)?;
    let v = &state.vault;
    let name = name.trim_matches('/');
    // The legacy `sys/policy/:name` is also checked on the path it was asked by, so a
    // policy written for either spelling holds.
    if req.path.starts_with("sys/policy") && !req.path.starts_with("sys/policies") {
        use coffer_vault::rules::policy::Capability;
        match req.op {
            Op::List => auth.require_list(&req.path)?,
            Op::Write => auth.require(&req.path, Capability::Update)?,
            Op::Delete => auth.require(&req.path, Capability::Delete)?,
            _ => auth.require(&req.path, Capability::Read)?,
        }
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

/// `sys/auth`: the enabled auth methods (token and userpass are always on).
pub(super) fn auth_methods(state: &AppState, req: &ApiRequest, path: &str) -> ApiResult<Response> {
    let auth = authenticate(state, req)?;
    let methods = json!({
        "token/": {"type": "token", "description": "token based credentials", "accessor": "auth_token", "local": false, "seal_wrap": false, "options": null, "config": {"default_lease_ttl": 0, "max_lease_ttl": 0}},
        "userpass/": {"type": "userpass", "description": "username and password", "accessor": "auth_userpass", "local": false, "seal_wrap": false, "options": null, "config": {"default_lease_ttl": 0, "max_lease_ttl": 0}},
    });
    match (path.trim_matches('/'), req.op) {
        ("", Op::Read) => {
            auth.require("sys/auth", coffer_vault::rules::policy::Capability::Read)?;
            let mut body = methods.as_object().cloned().unwrap_or_default();
            body.insert("data".into(), methods.clone());
            Ok(Json(Value::Object(body)).into_response())
        }
        // Enabling what is always enabled succeeds, so `vault auth enable userpass` works.
        ("userpass" | "token", Op::Write) => {
            auth.require_sudo(
                &format!("sys/auth/{}", path.trim_matches('/')),
                coffer_vault::rules::policy::Capability::Update,
            )?;
            Ok(no_content())
        }
        (other, Op::Write) => Err(ApiError::BadRequest(format!(
            "auth method at {other:?} is not available: Coffer provides token and userpass"
        ))),
        _ => Err(ApiError::Method(req.path.clone())),
    }
}
