//! KV v2 handlers: `<mount>/data|metadata|delete|undelete|destroy|config[/path]`.

use std::collections::BTreeMap;

use axum::http::StatusCode;
use axum::response::Response;
use coffer_vault::rules::kv::SecretMeta;
use coffer_vault::{clock, KvMetaUpdate, KvRead};
use serde::Deserialize;
use serde_json::{json, Map, Value};

use super::respond::{envelope, keys, no_content};
use super::{lenient, ApiRequest, AppState, Op};
use crate::error::{ApiError, ApiResult};

#[derive(Deserialize)]
struct WriteBody {
    data: Option<Map<String, Value>>,
    #[serde(default)]
    options: WriteOptions,
}

#[derive(Default, Deserialize)]
struct WriteOptions {
    #[serde(default, deserialize_with = "lenient::opt_u64")]
    cas: Option<u64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct VersionsBody {
    #[serde(deserialize_with = "lenient::u64_list")]
    versions: Vec<u64>,
}

/// Body of `metadata/:path` and `config` writes; absent fields stay unchanged.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MetaBody {
    #[serde(default, deserialize_with = "lenient::opt_u64")]
    max_versions: Option<u64>,
    #[serde(default, deserialize_with = "lenient::opt_bool")]
    cas_required: Option<bool>,
    #[serde(default, deserialize_with = "lenient::opt_duration")]
    delete_version_after: Option<String>,
    #[serde(default)]
    custom_metadata: Option<BTreeMap<String, String>>,
    #[serde(default, deserialize_with = "lenient::opt_bool")]
    metadata_cas_required: Option<bool>,
    #[serde(default, deserialize_with = "lenient::opt_u64")]
    metadata_cas: Option<u64>,
}

impl MetaBody {
    fn into_update(self) -> ApiResult<KvMetaUpdate> {
        let max_versions = self
            .max_versions
            .map(u32::try_from)
            .transpose()
            .map_err(|_| ApiError::BadRequest("max_versions is too large".into()))?;
        Ok(KvMetaUpdate {
            max_versions,
            cas_required: self.cas_required,
            delete_version_after: self.delete_version_after,
            custom_metadata: self.custom_metadata,
            metadata_cas_required: self.metadata_cas_required,
            metadata_cas: self.metadata_cas,
        })
    }
}

pub(super) async fn route(state: &AppState, req: &ApiRequest) -> ApiResult<Response> {
    let v = &state.vault;
    let target = v.kv_target(&req.path)?;
    // Authenticated before the mount is looked for: no mount's existence is told to a
    // caller without a valid token.
    let auth = req.authenticate(v)?;
    let target = target.ok_or_else(|| ApiError::NoRoute(req.path.clone()))?;
    let (mount, section, path) = (
        target.mount.as_str(),
        target.section.as_str(),
        target.path.as_str(),
    );
    match (section, req.op) {
        ("data", Op::Read) => read(
            req,
            v.kv_read(
                &auth,
                mount,
                path,
                req.query_u64("version")?,
                req.consistency(),
            )
            .await?,
        ),
        ("data", Op::Write) => {
            let body: WriteBody = req.json()?;
            let data = body.data.ok_or_else(|| {
                ApiError::BadRequest("no data provided: the body needs a \"data\" object".into())
            })?;
            let meta = v
                .kv_write(&auth, mount, path, data, body.options.cas)
                .await?;
            Ok(envelope(
                req,
                serde_json::to_value(meta).unwrap_or_default(),
            ))
        }
        ("data", Op::Patch) => {
            let body: WriteBody = req.json()?;
            let data = body.data.ok_or_else(|| {
                ApiError::BadRequest("no data provided: the body needs a \"data\" object".into())
            })?;
            let meta = v
                .kv_patch(&auth, mount, path, data, body.options.cas)
                .await?;
            Ok(envelope(
                req,
                serde_json::to_value(meta).unwrap_or_default(),
            ))
        }
        ("data", Op::Delete) => {
            v.kv_delete_latest(&auth, mount, path).await?;
            Ok(no_content())
        }
        ("delete", Op::Write) => {
            let body: VersionsBody = req.json()?;
            v.kv_delete_versions(&auth, mount, path, &body.versions)
                .await?;
            Ok(no_content())
        }
        ("undelete", Op::Write) => {
            let body: VersionsBody = req.json()?;
            v.kv_undelete(&auth, mount, path, &body.versions).await?;
            Ok(no_content())
        }
        ("destroy", Op::Write) => {
            let body: VersionsBody = req.json()?;
            v.kv_destroy(&auth, mount, path, &body.versions).await?;
            Ok(no_content())
        }
        ("metadata", Op::List) | ("data", Op::List) => {
            keys(req, v.kv_list(&auth, mount, path, req.consistency()).await?)
        }
        ("metadata", Op::Read) => match v
            .kv_read_meta(&auth, mount, path, req.consistency())
            .await?
        {
            Some(meta) => Ok(envelope(req, meta_json(&meta))),
            None => Err(ApiError::NotFoundEmpty),
        },
        ("metadata", Op::Write | Op::Patch) => {
            let update = req.json::<MetaBody>()?.into_update()?;
            v.kv_write_meta(&auth, mount, path, update, req.op == Op::Patch)
                .await?;
            Ok(no_content())
        }
        ("metadata", Op::Delete) => {
            v.kv_delete_meta(&auth, mount, path).await?;
            Ok(no_content())
        }
        ("config", Op::Read) if path.is_empty() => {
            let cfg = v.kv_config(&auth, mount)?;
            Ok(envelope(
                req,
                json!({
                    "max_versions": cfg.max_versions,
                    "cas_required": cfg.cas_required,
                    "delete_version_after": clock::format_duration(cfg.delete_version_after_secs),
                    "metadata_cas_required": cfg.metadata_cas_required,
                }),
            ))
        }
        ("config", Op::Write) if path.is_empty() => {
            let update = req.json::<MetaBody>()?.into_update()?;
            if update.custom_metadata.is_some() || update.metadata_cas.is_some() {
                return Err(ApiError::BadRequest(
                    "custom_metadata and metadata_cas are not mount settings".into(),
                ));
            }
            v.kv_set_config(&auth, mount, update).await?;
            Ok(no_content())
        }
        ("data" | "metadata" | "delete" | "undelete" | "destroy" | "config", _) => {
            Err(ApiError::Method(req.path.clone()))
        }
        _ => Err(ApiError::NoRoute(req.path.clone())),
    }
}

fn read(req: &ApiRequest, result: Option<KvRead>) -> ApiResult<Response> {
    let Some(read) = result else {
        return Err(ApiError::NotFoundEmpty);
    };
    let metadata = serde_json::to_value(&read.version).unwrap_or_default();
    match read.data {
        Some(data) => Ok(envelope(req, json!({ "data": data, "metadata": metadata }))),
        // Vault answers a deleted or destroyed version with 404 and its metadata.
        None => {
            let mut response = envelope(req, json!({ "data": null, "metadata": metadata }));
            *response.status_mut() = StatusCode::NOT_FOUND;
            Ok(response)
        }
    }
}

fn meta_json(meta: &SecretMeta) -> Value {
    let versions: BTreeMap<String, Value> = meta
        .versions
        .iter()
        .map(|(v, vm)| {
            (
                v.to_string(),
                json!({"created_time": vm.created_time, "deletion_time": vm.deletion_time, "destroyed": vm.destroyed}),
            )
        })
        .collect();
    json!({
        "cas_required": meta.cas_required,
        "created_time": meta.created_time,
        "current_version": meta.current_version,
        "custom_metadata": if meta.custom_metadata.is_empty() { Value::Null } else { json!(meta.custom_metadata) },
        "delete_version_after": clock::format_duration(meta.delete_version_after_secs),
        "max_versions": meta.max_versions,
        "oldest_version": meta.oldest_version,
        "current_metadata_version": meta.current_metadata_version,
        "metadata_cas_required": meta.metadata_cas_required,
        "updated_time": meta.updated_time,
        "versions": versions,
    })
}
