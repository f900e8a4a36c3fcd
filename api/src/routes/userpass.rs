//! The userpass auth method: `auth/userpass/login/:user` and `auth/userpass/users[/:user[/password]]`.

use axum::response::Response;
use coffer_vault::{IssuedToken, UserUpdate};
use serde::Deserialize;
use serde_json::{json, Value};
use zeroize::Zeroizing;

use super::lenient::{self, duration_secs, policy_list};
use super::request::Actor;
use super::respond::{auth_block, envelope, keys, no_content};
use super::{ApiRequest, AppState, Op};
use crate::error::{ApiError, ApiResult};

/// Vault accepts both the `token_*` names and the older ones.
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

/// Until a login succeeds its caller is anonymous (the name it claims is in the path): a
/// failed attempt is never recorded under the name of the person it tried to be.
pub(super) fn set_login_attempt(req: &ApiRequest) {
    req.set_actor(Actor {
        name: "anonymous".into(),
        display_name: String::new(),
        accessor: None,
        method: "userpass".into(),
    });
}

/// A successful login was done by the person who logged in (named as her tokens name her).
fn set_login_actor(req: &ApiRequest, user: &str, issued: &IssuedToken) {
    req.set_actor(Actor {
        name: user.to_string(),
        display_name: issued.entry.display_name.clone(),
        accessor: Some(issued.entry.accessor.clone()),
        method: "userpass".into(),
    });
}

/// Whether `path` is a login (whose caller is named only once it succeeds).
pub(super) fn is_login(path: &str) -> bool {
    path.starts_with("auth/userpass/login/")
}

/// `auth/userpass/<rest>`.
pub(super) async fn route(state: &AppState, req: &ApiRequest, rest: &str) -> ApiResult<Response> {
    if let Some(user) = rest.strip_prefix("login/") {
        return login(state, req, user).await;
    }
    let v = &state.vault;
    let auth = req.authenticate(v)?;
    if rest == "users" || rest == "users/" {
        return match req.op {
            Op::List => keys(req, v.list_users(&auth)?),
            _ => Err(ApiError::Method(req.path.clone())),
        };
    }
    let Some(user) = rest.strip_prefix("users/") else {
        return Err(ApiError::NoRoute(req.path.clone()));
    };
    if let Some(user) = user.strip_suffix("/password") {
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
                token_ttl: duration_secs("token_ttl", body.token_ttl.or(body.ttl))?,
                token_max_ttl: duration_secs("token_max_ttl", body.token_max_ttl.or(body.max_ttl))?,
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

/// `POST auth/userpass/login/:user`.
async fn login(state: &AppState, req: &ApiRequest, user: &str) -> ApiResult<Response> {
    if req.op != Op::Write {
        return Err(ApiError::Method(req.path.clone()));
    }
    set_login_attempt(req);
    let body: LoginBody = req.json()?;
    let addr = req
        .client
        .map(|c| c.0.ip().to_string())
        .unwrap_or_else(|| "local".into());
    let issued = state
        .vault
        .login_userpass(user, Zeroizing::new(body.password), &addr)
        .await?;
    set_login_actor(req, user, &issued);
    Ok(auth_block(req, &issued))
}
