//! The token auth method: `auth/token/create[-orphan]`, `lookup[-self|-accessor]`,
//! `accessors`, `renew-self`, `revoke[-self|-accessor]`.

use std::collections::BTreeMap;

use axum::response::Response;
use coffer_vault::rules::token::TokenEntry;
use coffer_vault::{clock, IssuedToken, TokenRequest};
use serde::Deserialize;
use serde_json::{json, Value};

use super::lenient::{self, duration_secs, policy_list};
use super::respond::{auth_block, envelope, keys, no_content};
use super::{ApiRequest, AppState, Op};
use crate::error::{ApiError, ApiResult};

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

impl TokenBody {
    fn token(self) -> ApiResult<String> {
        self.token
            .ok_or_else(|| ApiError::BadRequest("missing token".into()))
    }

    fn accessor(self) -> ApiResult<String> {
        self.accessor
            .ok_or_else(|| ApiError::BadRequest("missing accessor".into()))
    }
}

#[derive(Deserialize)]
struct RenewBody {
    #[serde(default, deserialize_with = "lenient::opt_duration")]
    increment: Option<String>,
}

/// `data` of a token lookup, as Vault shapes it (`id` only when the caller named the token).
fn lookup_data(e: &TokenEntry, id: Option<&str>) -> Value {
    let now = clock::now().unix_timestamp();
    let time = |t: i64| {
        time::OffsetDateTime::from_unix_timestamp(t)
            .ok()
            .map(clock::rfc3339)
    };
    json!({
        "accessor": e.accessor,
        "creation_time": e.creation_time,
        "creation_ttl": e.creation_ttl,
        "display_name": e.display_name,
        "entity_id": "",
        "expire_time": e.expire_time.and_then(time),
        "explicit_max_ttl": e.explicit_max_ttl,
        "id": id,
        "issue_time": time(e.creation_time),
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

/// `auth/token/<rest>`.
pub(super) async fn route(state: &AppState, req: &ApiRequest, rest: &str) -> ApiResult<Response> {
    let v = &state.vault;
    match (rest, req.op) {
        ("create" | "create-orphan", Op::Write) => {
            let auth = req.authenticate(v)?;
            let body: CreateBody = req.json()?;
            let request = TokenRequest {
                policies: policy_list(body.policies)?.unwrap_or_default(),
                ttl_secs: duration_secs("ttl", body.ttl)?,
                explicit_max_ttl_secs: duration_secs("explicit_max_ttl", body.explicit_max_ttl)?
                    .unwrap_or(0),
                period_secs: duration_secs("period", body.period)?.unwrap_or(0),
                no_parent: body.no_parent.unwrap_or(false) || rest == "create-orphan",
                no_default_policy: body.no_default_policy.unwrap_or(false),
                display_name: body.display_name,
                meta: body.meta,
                renewable: body.renewable.unwrap_or(true),
            };
            let issued = v.create_token(&auth, request).await?;
            Ok(auth_block(req, &issued))
        }
        ("lookup-self", Op::Read) => {
            let entry = v.lookup_self(&req.authenticate(v)?)?;
            Ok(envelope(req, lookup_data(&entry, req.token.as_deref())))
        }
        ("lookup", Op::Write | Op::Read) => {
            let auth = req.authenticate(v)?;
            let token = req.json::<TokenBody>()?.token()?;
            let entry = v.lookup_token(&auth, &token)?;
            Ok(envelope(req, lookup_data(&entry, Some(&token))))
        }
        ("lookup-accessor", Op::Write) => {
            let auth = req.authenticate(v)?;
            let accessor = req.json::<TokenBody>()?.accessor()?;
            match v.lookup_accessor(&auth, &accessor)? {
                Some(entry) => Ok(envelope(req, lookup_data(&entry, None))),
                None => Err(ApiError::BadRequest("invalid accessor".into())),
            }
        }
        ("accessors" | "accessors/", Op::List) => {
            let auth = req.authenticate(v)?;
            keys(req, v.list_accessors(&auth)?)
        }
        ("renew-self", Op::Write) => {
            let auth = req.authenticate(v)?;
            let body: RenewBody = req.json()?;
            let entry = v
                .renew_self(&auth, duration_secs("increment", body.increment)?)
                .await?;
            let issued = IssuedToken {
                token: req.token.clone().unwrap_or_default(),
                entry,
            };
            Ok(auth_block(req, &issued))
        }
        ("revoke-self", Op::Write) => {
            v.revoke_self(&req.authenticate(v)?).await?;
            Ok(no_content())
        }
        ("revoke", Op::Write) => {
            let auth = req.authenticate(v)?;
            let token = req.json::<TokenBody>()?.token()?;
            v.revoke_token(&auth, &token).await?;
            Ok(no_content())
        }
        ("revoke-accessor", Op::Write) => {
            let auth = req.authenticate(v)?;
            let accessor = req.json::<TokenBody>()?.accessor()?;
            v.revoke_accessor(&auth, &accessor).await?;
            Ok(no_content())
        }
        _ => Err(ApiError::NoRoute(req.path.clone())),
    }
}
