//! Reading the cluster's audit log: `sys/coffer/audit` (a filtered page of records) and
//! `sys/coffer/audit/verify` (the chains checked end to end).

use axum::response::Response;
use serde_json::json;

use super::respond::envelope;
use super::{ApiRequest, AppState};
use crate::error::{ApiError, ApiResult};

/// `GET sys/coffer/audit?actor=&operation=&path_prefix=&mode=&outcome=&node=&since=&until=&after=&limit=`.
pub(super) fn query(state: &AppState, req: &ApiRequest) -> ApiResult<Response> {
    let auth = req.authenticate(&state.vault)?;
    let filter = filter(req)?;
    let page = state.vault.audit_page(&auth, &filter)?;
    let next = page.next.map(|(n, e, s)| format!("{n}:{e}:{s}"));
    Ok(envelope(
        req,
        json!({ "records": page.records, "next": next, "unavailable": page.unavailable }),
    ))
}

/// `GET sys/coffer/audit/verify`.
pub(super) fn verify(state: &AppState, req: &ApiRequest) -> ApiResult<Response> {
    let auth = req.authenticate(&state.vault)?;
    let report = state.vault.audit_verify(&auth)?;
    Ok(envelope(
        req,
        serde_json::to_value(report).unwrap_or_default(),
    ))
}

/// The `after` cursor: `<node>:<epoch>:<seq>` as `next` gives it (`<node>:<seq>`, from before
/// spool epochs, is epoch 1).
fn cursor(text: &str) -> Option<(u64, u32, u64)> {
    let parts: Vec<&str> = text.split(':').collect();
    match parts.as_slice() {
        [n, e, s] => Some((n.parse().ok()?, e.parse().ok()?, s.parse().ok()?)),
        [n, s] => Some((n.parse().ok()?, 1, s.parse().ok()?)),
        _ => None,
    }
}

fn filter(req: &ApiRequest) -> ApiResult<coffer_vault::AuditFilter> {
    let text = |k: &str| req.query.get(k).filter(|v| !v.is_empty()).cloned();
    let time = |k: &str| -> ApiResult<Option<time::OffsetDateTime>> {
        text(k)
            .map(|v| {
                coffer_vault::clock::parse(&v)
                    .ok_or_else(|| ApiError::BadRequest(format!("{k} must be an RFC 3339 time")))
            })
            .transpose()
    };
    let after = text("after")
        .map(|v| {
            cursor(&v).ok_or_else(|| {
                ApiError::BadRequest(
                    "after must be <node>:<epoch>:<seq> (as `next` gives it)".into(),
                )
            })
        })
        .transpose()?;
    Ok(coffer_vault::AuditFilter {
        node: req.query_u64("node")?,
        actor: text("actor"),
        operation: text("operation"),
        path_prefix: text("path_prefix"),
        mode: text("mode"),
        outcome: text("outcome"),
        since: time("since")?,
        until: time("until")?,
        after,
        limit: req.query_u64("limit")?.map(|l| l as usize),
    })
}
