//! KV v2 rules as pure functions over a secret's metadata: versions, `max_versions`,
//! check-and-set, soft delete, undelete, destroy. The vault turns their results into one
//! guarded transaction; nothing here touches storage or a clock (times are passed in).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::clock;
use crate::error::{Result, VaultError};

/// Fields of `POST/PATCH metadata/:path` and of a mount's `config`; absent fields are left
/// unchanged.
#[derive(Clone, Debug, Default)]
pub struct KvMetaUpdate {
    /// New `max_versions`.
    pub max_versions: Option<u32>,
    /// New `cas_required`.
    pub cas_required: Option<bool>,
    /// New `delete_version_after` (Go duration string).
    pub delete_version_after: Option<String>,
    /// New custom metadata (replaces on POST, merges on PATCH).
    pub custom_metadata: Option<BTreeMap<String, String>>,
    /// New `metadata_cas_required` (OpenBao's check-and-set on metadata writes).
    pub metadata_cas_required: Option<bool>,
    /// The `current_metadata_version` this write expects (OpenBao's `metadata_cas`).
    pub metadata_cas: Option<u64>,
}

/// Most custom metadata keys per secret (Vault's limit).
pub const CUSTOM_METADATA_MAX_KEYS: usize = 64;
/// Longest custom metadata key, bytes (Vault's limit).
pub const CUSTOM_METADATA_MAX_KEY_BYTES: usize = 128;
/// Longest custom metadata value, bytes (Vault's limit).
pub const CUSTOM_METADATA_MAX_VALUE_BYTES: usize = 512;

/// A checked [`KvMetaUpdate`]: durations parsed, custom metadata within bounds. One change
/// applies to a secret's metadata and to a mount's configuration alike.
#[derive(Clone, Debug)]
pub struct MetaChange {
    update: KvMetaUpdate,
    delete_after_secs: Option<u64>,
}

impl MetaChange {
    /// Checks an update; the error names the field.
    pub fn parse(update: KvMetaUpdate) -> Result<Self> {
        let delete_after_secs = update
            .delete_version_after
            .as_deref()
            .map(|s| {
                clock::parse_duration_secs(s).ok_or_else(|| {
                    VaultError::InvalidRequest(format!(
                        "invalid delete_version_after duration {s:?}"
                    ))
                })
            })
            .transpose()?;
        if let Some(custom) = &update.custom_metadata {
            validate_custom_metadata(custom)?;
        }
        Ok(Self {
            update,
            delete_after_secs,
        })
    }

    /// Checks OpenBao's metadata check-and-set against the stored metadata (`None` when the
    /// secret has none yet, which is version 0): `metadata_cas` must match when given, and is
    /// required when the secret or its mount requires it.
    pub fn check_metadata_cas(
        &self,
        meta: Option<&SecretMeta>,
        config: &MountConfig,
    ) -> Result<()> {
        let required =
            config.metadata_cas_required || meta.is_some_and(|m| m.metadata_cas_required);
        let current = meta.map_or(0, |m| m.current_metadata_version);
        match self.update.metadata_cas {
            None if required => Err(VaultError::InvalidRequest(
                "metadata check-and-set parameter required for this call".into(),
            )),
            Some(cas) if cas != current => Err(VaultError::InvalidRequest(
                "metadata check-and-set parameter does not match the current version".into(),
            )),
            _ => Ok(()),
        }
    }

    /// Applies the change to a secret's metadata at `now`: custom metadata replaced, or with
    /// `merge` (PATCH) merged; the metadata version counts one more write.
    pub fn apply_to_meta(&self, meta: &mut SecretMeta, merge: bool, now: &str) {
        if let Some(v) = self.update.metadata_cas_required {
            meta.metadata_cas_required = v;
        }
        meta.current_metadata_version += 1;
        if let Some(v) = self.update.max_versions {
            meta.max_versions = v;
        }
        if let Some(v) = self.update.cas_required {
            meta.cas_required = v;
        }
        if let Some(v) = self.delete_after_secs {
            meta.delete_version_after_secs = v;
        }
        if let Some(custom) = &self.update.custom_metadata {
            if merge {
                meta.custom_metadata.extend(custom.clone());
            } else {
                meta.custom_metadata = custom.clone();
            }
        }
        meta.updated_time = now.to_string();
    }

    /// Applies the change to a mount's configuration (custom metadata is not a mount
    /// setting and is ignored here; the API refuses it).
    pub fn apply_to_config(&self, cfg: &mut MountConfig) {
        if let Some(v) = self.update.max_versions {
            cfg.max_versions = v;
        }
        if let Some(v) = self.update.cas_required {
            cfg.cas_required = v;
        }
        if let Some(v) = self.delete_after_secs {
            cfg.delete_version_after_secs = v;
        }
        if let Some(v) = self.update.metadata_cas_required {
            cfg.metadata_cas_required = v;
        }
    }
}

fn validate_custom_metadata(custom: &BTreeMap<String, String>) -> Result<()> {
    if custom.len() > CUSTOM_METADATA_MAX_KEYS {
        return Err(VaultError::InvalidRequest(format!(
            "custom_metadata holds more than {CUSTOM_METADATA_MAX_KEYS} keys"
        )));
    }
    for (k, v) in custom {
        if k.len() > CUSTOM_METADATA_MAX_KEY_BYTES || v.len() > CUSTOM_METADATA_MAX_VALUE_BYTES {
            return Err(VaultError::InvalidRequest(format!(
                "custom_metadata key {k:?}: keys are limited to {CUSTOM_METADATA_MAX_KEY_BYTES} bytes and values to {CUSTOM_METADATA_MAX_VALUE_BYTES}"
            )));
        }
    }
    Ok(())
}

/// RFC 7396 JSON merge patch (`PATCH data/:path`).
pub fn merge_patch(target: &mut serde_json::Value, patch: &serde_json::Value) {
    use serde_json::{Map, Value};
    let Value::Object(patch_map) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    let Value::Object(target_map) = target else {
        return;
    };
    for (k, v) in patch_map {
        if v.is_null() {
            target_map.remove(k);
        } else {
            merge_patch(target_map.entry(k.clone()).or_insert(Value::Null), v);
        }
    }
}

/// `max_versions` when neither the secret nor the mount sets one (Vault's default).
pub const DEFAULT_MAX_VERSIONS: u32 = 10;

/// A mount's KV v2 configuration (`<mount>/config`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MountConfig {
    /// Versions kept per secret; 0 means the default of 10.
    pub max_versions: u32,
    /// Whether every write must carry `options.cas`.
    pub cas_required: bool,
    /// Versions are soft-deleted this many seconds after being written; 0 never.
    pub delete_version_after_secs: u64,
    /// Whether every metadata write must carry `metadata_cas` (OpenBao).
    #[serde(default)]
    pub metadata_cas_required: bool,
}

/// One version's metadata.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VersionMeta {
    /// When the version was written, RFC 3339.
    pub created_time: String,
    /// When it was (or will be) soft-deleted, RFC 3339; empty if never.
    pub deletion_time: String,
    /// Whether its data was destroyed.
    pub destroyed: bool,
}

impl VersionMeta {
    /// Soft-deleted as of `now` (RFC 3339 strings compare correctly only as parsed times).
    pub fn is_deleted(&self, now: time::OffsetDateTime) -> bool {
        clock::parse(&self.deletion_time).is_some_and(|t| t <= now)
    }
}

/// A secret's metadata (`<mount>/metadata/<path>`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SecretMeta {
    /// When the secret was first written.
    pub created_time: String,
    /// When the metadata last changed.
    pub updated_time: String,
    /// Highest version ever written (0 if only metadata exists).
    pub current_version: u64,
    /// Lowest version still tracked.
    pub oldest_version: u64,
    /// Per-secret `max_versions`; 0 defers to the mount.
    pub max_versions: u32,
    /// Per-secret `cas_required`.
    pub cas_required: bool,
    /// Per-secret soft-delete delay in seconds; 0 defers to the mount.
    pub delete_version_after_secs: u64,
    /// User-supplied metadata (not secret; still encrypted at rest).
    pub custom_metadata: BTreeMap<String, String>,
    /// Tracked versions.
    pub versions: BTreeMap<u64, VersionMeta>,
    /// How many times the metadata itself was written (OpenBao's `current_metadata_version`;
    /// a data write does not count).
    #[serde(default)]
    pub current_metadata_version: u64,
    /// Per-secret `metadata_cas_required` (OpenBao).
    #[serde(default)]
    pub metadata_cas_required: bool,
}

impl SecretMeta {
    /// Empty metadata created at `now`.
    pub fn new(now: &str) -> Self {
        Self {
            created_time: now.to_string(),
            updated_time: now.to_string(),
            current_version: 0,
            oldest_version: 0,
            max_versions: 0,
            cas_required: false,
            delete_version_after_secs: 0,
            custom_metadata: BTreeMap::new(),
            versions: BTreeMap::new(),
            current_metadata_version: 0,
            metadata_cas_required: false,
        }
    }
}

/// The effective `max_versions`: secret, else mount, else 10.
pub fn max_versions(meta: &SecretMeta, config: &MountConfig) -> u32 {
    [meta.max_versions, config.max_versions, DEFAULT_MAX_VERSIONS]
        .into_iter()
        .find(|v| *v > 0)
        .unwrap_or(DEFAULT_MAX_VERSIONS)
}

/// The result of planning a write.
#[derive(Debug, PartialEq, Eq)]
pub struct WritePlan {
    /// Metadata after the write.
    pub meta: SecretMeta,
    /// The new version number.
    pub version: u64,
    /// Versions whose data must be removed because they fell out of `max_versions`.
    pub pruned: Vec<u64>,
}

/// Plans writing a new version. `cas` is the client's `options.cas`.
pub fn plan_write(
    existing: Option<SecretMeta>,
    config: &MountConfig,
    cas: Option<u64>,
    now: time::OffsetDateTime,
) -> Result<WritePlan> {
    let now_s = clock::rfc3339(now);
    let mut meta = existing.unwrap_or_else(|| SecretMeta::new(&now_s));
    let cas_required = meta.cas_required || config.cas_required;
    match cas {
        None if cas_required => {
            return Err(VaultError::InvalidRequest(
                "check-and-set parameter required for this call".into(),
            ))
        }
        Some(expected) if expected != meta.current_version => return Err(VaultError::CasMismatch),
        _ => {}
    }
    let version = meta.current_version + 1;
    let delay = [
        meta.delete_version_after_secs,
        config.delete_version_after_secs,
    ]
    .into_iter()
    .find(|d| *d > 0)
    .unwrap_or(0);
    let deletion_time = if delay > 0 {
        let at = i64::try_from(delay)
            .ok()
            .and_then(|d| now.checked_add(time::Duration::seconds(d)))
            .ok_or_else(|| {
                VaultError::InvalidRequest(
                    "delete_version_after is too long: the deletion time is past any calendar"
                        .into(),
                )
            })?;
        clock::rfc3339(at)
    } else {
        String::new()
    };
    meta.versions.insert(
        version,
        VersionMeta {
            created_time: now_s.clone(),
            deletion_time,
            destroyed: false,
        },
    );
    meta.current_version = version;
    meta.updated_time = now_s;
    let pruned = prune(&mut meta, config);
    Ok(WritePlan {
        meta,
        version,
        pruned,
    })
}

/// Drops the versions older than the last `max_versions`; returns the dropped version numbers.
/// `oldest_version` moves as Vault moves it: it stays 0 until the current version reaches
/// `max_versions`, then it is the oldest version kept (a destroy or a delete does not move
/// it).
pub fn prune(meta: &mut SecretMeta, config: &MountConfig) -> Vec<u64> {
    let keep = u64::from(max_versions(meta, config));
    if meta.current_version.saturating_sub(meta.oldest_version) < keep {
        return Vec::new();
    }
    // current - oldest >= keep >= 1, so this cannot underflow (nor overflow at u64::MAX).
    let oldest = meta.current_version - (keep - 1);
    let kept = meta.versions.split_off(&oldest);
    let pruned = std::mem::replace(&mut meta.versions, kept)
        .into_keys()
        .collect();
    meta.oldest_version = oldest;
    pruned
}

/// Soft-deletes `versions` (those not already deleted or destroyed). Unknown versions are
/// ignored, as in Vault.
pub fn soft_delete(meta: &mut SecretMeta, versions: &[u64], now: time::OffsetDateTime) {
    let now_s = clock::rfc3339(now);
    for v in versions {
        if let Some(vm) = meta.versions.get_mut(v) {
            if !vm.destroyed && !vm.is_deleted(now) {
                vm.deletion_time = now_s.clone();
            }
        }
    }
    meta.updated_time = now_s;
}

/// Clears the soft delete of `versions` (not of destroyed ones).
pub fn undelete(meta: &mut SecretMeta, versions: &[u64], now: time::OffsetDateTime) {
    for v in versions {
        if let Some(vm) = meta.versions.get_mut(v) {
            if !vm.destroyed {
                vm.deletion_time = String::new();
            }
        }
    }
    meta.updated_time = clock::rfc3339(now);
}

/// Marks `versions` destroyed; returns those whose data must be removed.
pub fn destroy(meta: &mut SecretMeta, versions: &[u64], now: time::OffsetDateTime) -> Vec<u64> {
    let mut removed = Vec::new();
    for v in versions {
        if let Some(vm) = meta.versions.get_mut(v) {
            if !vm.destroyed {
                vm.destroyed = true;
                removed.push(*v);
            }
        }
    }
    meta.updated_time = clock::rfc3339(now);
    removed
}

/// Which version a read means: `0` or absent is the current one.
pub fn resolve_version(meta: &SecretMeta, requested: Option<u64>) -> u64 {
    match requested {
        Some(v) if v > 0 => v,
        _ => meta.current_version,
    }
}

/// Validates a secret path: non-empty, no empty or dot segments, no control characters.
pub fn validate_path(path: &str) -> Result<()> {
    let bad = |why: &str| {
        Err(VaultError::InvalidRequest(format!(
            "invalid secret path {path:?}: {why}"
        )))
    };
    if path.is_empty() || path.ends_with('/') {
        return bad("a secret path must name a secret, not a folder");
    }
    if path.len() > 1024 {
        return bad("longer than 1024 bytes");
    }
    if path.chars().any(|c| c.is_control()) {
        return bad("control characters are not allowed");
    }
    if path
        .split('/')
        .any(|seg| seg.is_empty() || seg == "." || seg == "..")
    {
        return bad("empty, '.' and '..' segments are not allowed");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merge_patch_follows_rfc7396() {
        let mut doc = serde_json::json!({"a": "b", "c": {"d": "e", "f": "g"}});
        merge_patch(
            &mut doc,
            &serde_json::json!({"a": "z", "c": {"f": null}, "n": 1}),
        );
        assert_eq!(doc, serde_json::json!({"a": "z", "c": {"d": "e"}, "n": 1}));
    }

    #[test]
    fn one_change_applies_to_a_secret_and_to_a_mount() {
        let change = MetaChange::parse(KvMetaUpdate {
            max_versions: Some(3),
            delete_version_after: Some("1h".into()),
            custom_metadata: Some(BTreeMap::from([("a".into(), "1".into())])),
            ..Default::default()
        })
        .unwrap();
        let mut meta = SecretMeta::new("t0");
        meta.custom_metadata.insert("b".into(), "2".into());
        change.apply_to_meta(&mut meta, true, "t1");
        assert_eq!(
            (
                meta.max_versions,
                meta.delete_version_after_secs,
                meta.custom_metadata.len()
            ),
            (3, 3600, 2)
        );
        change.apply_to_meta(&mut meta, false, "t2");
        assert_eq!(meta.custom_metadata.len(), 1, "POST replaces");
        let mut cfg = MountConfig::default();
        change.apply_to_config(&mut cfg);
        assert_eq!((cfg.max_versions, cfg.delete_version_after_secs), (3, 3600));
        let too_many = (0..65).map(|i| (i.to_string(), String::new())).collect();
        assert!(MetaChange::parse(KvMetaUpdate {
            custom_metadata: Some(too_many),
            ..Default::default()
        })
        .is_err());
    }

    fn at(secs: i64) -> time::OffsetDateTime {
        time::OffsetDateTime::from_unix_timestamp(1_700_000_000 + secs).unwrap()
    }

    #[test]
    fn oldest_version_moves_only_when_max_versions_prunes() {
        let cfg = MountConfig {
            max_versions: 3,
            ..Default::default()
        };
        let mut m = plan_write(None, &cfg, None, at(0)).unwrap().meta;
        m = plan_write(Some(m), &cfg, None, at(1)).unwrap().meta;
        destroy(&mut m, &[1], at(1));
        assert_eq!(m.oldest_version, 0, "a destroy does not move it (Vault)");
        let plan = plan_write(Some(m), &cfg, None, at(2)).unwrap();
        assert_eq!((plan.meta.oldest_version, plan.pruned.len()), (1, 0));
        let plan = plan_write(Some(plan.meta), &cfg, None, at(3)).unwrap();
        assert_eq!((plan.meta.oldest_version, plan.pruned), (2, vec![1]));
    }

    #[test]
    fn metadata_check_and_set() {
        let change = |cas: Option<u64>| {
            MetaChange::parse(KvMetaUpdate {
                max_versions: Some(4),
                metadata_cas: cas,
                ..Default::default()
            })
            .unwrap()
        };
        let cfg = MountConfig::default();
        let mut m = SecretMeta::new("now");
        assert!(change(None).check_metadata_cas(None, &cfg).is_ok());
        assert!(change(Some(0)).check_metadata_cas(None, &cfg).is_ok());
        change(None).apply_to_meta(&mut m, false, "now");
        assert_eq!(m.current_metadata_version, 1);
        let mismatch = change(Some(0)).check_metadata_cas(Some(&m), &cfg);
        assert!(
            matches!(mismatch, Err(VaultError::InvalidRequest(e)) if e.contains("does not match"))
        );
        let strict = MountConfig {
            metadata_cas_required: true,
            ..Default::default()
        };
        let missing = change(None).check_metadata_cas(Some(&m), &strict);
        assert!(matches!(missing, Err(VaultError::InvalidRequest(e)) if e.contains("required")));
        assert!(change(Some(1))
            .check_metadata_cas(Some(&m), &strict)
            .is_ok());
        m.metadata_cas_required = true;
        assert!(change(None).check_metadata_cas(Some(&m), &cfg).is_err());
    }

    #[test]
    fn versions_increase_and_prune_beyond_max() {
        let cfg = MountConfig {
            max_versions: 3,
            ..Default::default()
        };
        let mut meta = None;
        let mut pruned_all = Vec::new();
        for i in 1..=5 {
            let plan = plan_write(meta.take(), &cfg, None, at(i)).unwrap();
            assert_eq!(plan.version, i as u64);
            pruned_all.extend(plan.pruned);
            meta = Some(plan.meta);
        }
        let meta = meta.unwrap();
        assert_eq!(pruned_all, vec![1, 2]);
        assert_eq!(meta.oldest_version, 3);
        assert_eq!(
            meta.versions.keys().copied().collect::<Vec<_>>(),
            vec![3, 4, 5]
        );
    }

    #[test]
    fn cas_rules() {
        let cfg = MountConfig::default();
        assert!(
            plan_write(None, &cfg, Some(0), at(0)).is_ok(),
            "cas=0 creates"
        );
        let m = plan_write(None, &cfg, None, at(0)).unwrap().meta;
        assert!(matches!(
            plan_write(Some(m.clone()), &cfg, Some(0), at(1)),
            Err(VaultError::CasMismatch)
        ));
        assert!(plan_write(Some(m.clone()), &cfg, Some(1), at(1)).is_ok());
        let strict = MountConfig {
            cas_required: true,
            ..Default::default()
        };
        assert!(matches!(
            plan_write(Some(m), &strict, None, at(1)),
            Err(VaultError::InvalidRequest(_))
        ));
    }

    #[test]
    fn delete_undelete_destroy() {
        let cfg = MountConfig::default();
        let mut m = plan_write(None, &cfg, None, at(0)).unwrap().meta;
        soft_delete(&mut m, &[1, 99], at(1));
        assert!(m.versions[&1].is_deleted(at(2)));
        undelete(&mut m, &[1], at(3));
        assert!(!m.versions[&1].is_deleted(at(4)));
        assert_eq!(destroy(&mut m, &[1], at(5)), vec![1]);
        assert_eq!(
            destroy(&mut m, &[1], at(6)),
            Vec::<u64>::new(),
            "destroy is idempotent"
        );
        undelete(&mut m, &[1], at(7));
        assert!(
            m.versions[&1].destroyed,
            "undelete cannot revive destroyed data"
        );
    }

    #[test]
    fn delete_version_after_schedules_deletion() {
        let cfg = MountConfig {
            delete_version_after_secs: 60,
            ..Default::default()
        };
        let m = plan_write(None, &cfg, None, at(0)).unwrap().meta;
        assert!(!m.versions[&1].is_deleted(at(59)));
        assert!(m.versions[&1].is_deleted(at(60)));
    }

    #[test]
    fn paths() {
        for ok in ["a", "team/db", "x.y/z-1"] {
            assert!(validate_path(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "a/",
            "../etc/passwd",
            "a//b",
            "a/./b",
            "a\u{0}b",
            "a\nb",
        ] {
            assert!(validate_path(bad).is_err(), "{bad:?}");
        }
    }
}
