//! KV v2 operations: the rules of [`crate::rules::kv`] applied to encrypted records, one guarded
//! transaction per write.
//!
//! Storage layout under a mount `m/` (keys are plaintext by design, values are envelopes):
//! - `kv/m/meta/<path>`: the secret's metadata;
//! - `kv/m/data/<path>\0<version, 8 bytes BE>`: one version's data (NUL cannot occur in a path);
//! - `kv/m/config`: the mount's KV configuration.

use std::collections::BTreeMap;

use coffer_raft::{KvEntry, Txn};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::records::Record;
use super::{Auth, Vault};
use crate::clock;
use crate::error::{Result, VaultError};
use crate::rules::kv::{self as rules, KvMetaUpdate, MountConfig, SecretMeta, VersionMeta};

use crate::rules::policy::Capability;

use crate::keys::{kv_config as config_key, kv_data as data_key, kv_meta as meta_key};

/// One version's data as stored.
#[derive(Serialize, Deserialize)]
struct StoredData {
    /// The secret's key/value pairs.
    data: Map<String, Value>,
}

/// A version's data and metadata, as `GET data/:path` returns them.
pub struct KvRead {
    /// The data; `None` if the version is deleted or destroyed (Vault then answers 404 with
    /// the metadata).
    pub data: Option<Map<String, Value>>,
    /// The version's metadata.
    pub version: KvVersion,
}

impl std::fmt::Debug for KvRead {
    // The data is the secret: Debug shows only its keys.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let keys: Option<Vec<&String>> = self.data.as_ref().map(|d| d.keys().collect());
        f.debug_struct("KvRead")
            .field("data_keys", &keys)
            .field("version", &self.version)
            .finish()
    }
}

/// Metadata of one version, in Vault's response shape.
#[derive(Clone, Debug, Serialize)]
pub struct KvVersion {
    /// Creation time.
    pub created_time: String,
    /// The secret's custom metadata.
    pub custom_metadata: Option<BTreeMap<String, String>>,
    /// Deletion time or "".
    pub deletion_time: String,
    /// Destroyed.
    pub destroyed: bool,
    /// Version number.
    pub version: u64,
}

impl KvVersion {
    fn of(meta: &SecretMeta, version: u64, vm: &VersionMeta) -> Self {
        Self {
            created_time: vm.created_time.clone(),
            custom_metadata: (!meta.custom_metadata.is_empty())
                .then(|| meta.custom_metadata.clone()),
            deletion_time: vm.deletion_time.clone(),
            destroyed: vm.destroyed,
            version,
        }
    }
}

/// Where a KV v2 request goes: its mount, the section (`data`, `metadata`, `delete`,
/// `undelete`, `destroy`, `config`) and the secret path after it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KvTarget {
    /// The mount, with its trailing `/`.
    pub mount: String,
    /// The section after the mount.
    pub section: String,
    /// The secret path (or folder) after the section.
    pub path: String,
}

/// How fresh a read must be.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Consistency {
    /// Reflects every write acknowledged before the read started (the default): a follower
    /// first obtains the leader's read index and waits until it has applied it.
    Linearizable,
    /// This node's local state as it is, without asking the leader (`?stale=true`).
    Stale,
}

impl Vault {
    /// Resolves a request path to its KV v2 mount (longest prefix), refusing while the node
    /// is sealed or not initialized; `None` when no mount serves the path.
    pub fn kv_target(&self, request_path: &str) -> Result<Option<KvTarget>> {
        if self.is_sealed() {
            return Err(if self.is_initialized()? {
                VaultError::Sealed
            } else {
                VaultError::NotInitialized
            });
        }
        let table = self.mount_table()?;
        let Some((mount, _, rest)) = crate::rules::mount::resolve(&table, request_path) else {
            return Ok(None);
        };
        let (section, path) = rest.split_once('/').unwrap_or((rest, ""));
        Ok(Some(KvTarget {
            mount: mount.to_string(),
            section: section.to_string(),
            path: path.to_string(),
        }))
    }

    /// A read-only standby serves reads from local state (the API says so in headers).
    async fn await_consistency(&self, consistency: Consistency) -> Result<()> {
        let standby = self.engine.mode() == coffer_raft::NodeMode::ReadOnly;
        match consistency {
            Consistency::Linearizable if !standby => match self.engine.await_read_index().await {
                // Turned standby while waiting for a leader: serve the local state.
                Err(coffer_raft::EngineError::ReadOnly { .. }) => Ok(()),
                other => Ok(other?),
            },
            _ => Ok(()),
        }
    }

    fn meta_record(&self, mount: &str, path: &str) -> Result<Option<Record<SecretMeta>>> {
        rules::validate_path(path)?;
        self.read_record(&meta_key(mount, path))
    }

    /// The mount's KV configuration.
    pub fn kv_config(&self, auth: &Auth, mount: &str) -> Result<MountConfig> {
        auth.require(&format!("{mount}config"), Capability::Read)?;
        Ok(self
            .mount_config(mount)?
            .map(|r| r.value)
            .unwrap_or_default())
    }

    fn mount_config(&self, mount: &str) -> Result<Option<Record<MountConfig>>> {
        self.read_record(&config_key(mount))
    }

    /// Sets the mount's KV configuration (absent fields unchanged).
    pub async fn kv_set_config(
        &self,
        auth: &Auth,
        mount: &str,
        update: KvMetaUpdate,
    ) -> Result<()> {
        auth.require(&format!("{mount}config"), Capability::Update)?;
        let change = rules::MetaChange::parse(update)?;
        self.transact(|| {
            let current = self.mount_config(mount)?;
            let mut cfg = current
                .as_ref()
                .map(|r| r.value.clone())
                .unwrap_or_default();
            change.apply_to_config(&mut cfg);
            let key = config_key(mount);
            let txn = Txn::new()
                .unchanged(key.clone(), current.as_ref().map(|r| &r.entry))
                .put(key.clone(), self.seal_record(&key, &cfg)?);
            Ok((txn, ()))
        })
        .await
    }

    /// `GET data/:path[?version=N]`. `Ok(None)` when there is no such secret or version.
    pub async fn kv_read(
        &self,
        auth: &Auth,
        mount: &str,
        path: &str,
        version: Option<u64>,
        consistency: Consistency,
    ) -> Result<Option<KvRead>> {
        auth.require(&format!("{mount}data/{path}"), Capability::Read)?;
        self.await_consistency(consistency).await?;
        let Some(meta) = self.meta_record(mount, path)?.map(|r| r.value) else {
            return Ok(None);
        };
        let version = rules::resolve_version(&meta, version);
        let Some(vm) = meta.versions.get(&version) else {
            return Ok(None);
        };
        let shape = KvVersion::of(&meta, version, vm);
        if vm.destroyed || vm.is_deleted(clock::now()) {
            return Ok(Some(KvRead {
                data: None,
                version: shape,
            }));
        }
        let stored: Option<Record<StoredData>> =
            self.read_record(&data_key(mount, path, version))?;
        Ok(Some(KvRead {
            data: stored.map(|r| r.value.data),
            version: shape,
        }))
    }

    /// `POST data/:path`: writes a new version.
    pub async fn kv_write(
        &self,
        auth: &Auth,
        mount: &str,
        path: &str,
        data: Map<String, Value>,
        cas: Option<u64>,
    ) -> Result<KvVersion> {
        self.write_version(auth, mount, path, cas, None, |_| {
            Ok(StoredData { data: data.clone() })
        })
        .await
    }

    /// `PATCH data/:path`: JSON merge-patch of the current version into a new version.
    pub async fn kv_patch(
        &self,
        auth: &Auth,
        mount: &str,
        path: &str,
        patch: Map<String, Value>,
        cas: Option<u64>,
    ) -> Result<KvVersion> {
        self.write_version(auth, mount, path, cas, Some(Capability::Patch), |current| {
            let Some((meta, current)) = current else {
                return Err(VaultError::NotFound(
                    "no secret at this path to patch".into(),
                ));
            };
            let version = meta.current_version;
            let live = meta
                .versions
                .get(&version)
                .is_some_and(|v| !v.destroyed && !v.is_deleted(clock::now()));
            let data = match (live, current) {
                (true, Some(d)) => d,
                _ => {
                    return Err(VaultError::NotFound(
                        "the current version is deleted or destroyed".into(),
                    ))
                }
            };
            let mut doc = Value::Object(data);
            rules::merge_patch(&mut doc, &Value::Object(patch.clone()));
            let Value::Object(data) = doc else {
                return Err(VaultError::internal("merge patch produced a non-object"));
            };
            Ok(StoredData { data })
        })
        .await
    }

    /// Shared path of write and patch: plan the version from fresh metadata, then one
    /// transaction guarded on the metadata being unchanged.
    async fn write_version(
        &self,
        auth: &Auth,
        mount: &str,
        path: &str,
        cas: Option<u64>,
        needed: Option<Capability>,
        mut data: impl FnMut(Option<(&SecretMeta, Option<Map<String, Value>>)>) -> Result<StoredData>,
    ) -> Result<KvVersion> {
        let mkey = meta_key(mount, path);
        self.transact(|| {
            let config = self
                .mount_config(mount)?
                .map(|r| r.value)
                .unwrap_or_default();
            let current = self.meta_record(mount, path)?;
            // Vault's rule: writing a path that does not exist needs `create`, else `update`.
            let cap = needed.unwrap_or(if current.is_some() {
                Capability::Update
            } else {
                Capability::Create
            });
            auth.require(&format!("{mount}data/{path}"), cap)?;
            let current_data = match &current {
                Some(r) if r.value.current_version > 0 => self
                    .read_record::<StoredData>(&data_key(mount, path, r.value.current_version))?
                    .map(|d| d.value.data),
                _ => None,
            };
            let stored = data(current.as_ref().map(|r| (&r.value, current_data)))?;
            let observed: Option<KvEntry> = current.as_ref().map(|r| r.entry.clone());
            let plan = rules::plan_write(current.map(|r| r.value), &config, cas, clock::now())?;
            let dkey = data_key(mount, path, plan.version);
            let mut txn = Txn::new()
                .unchanged(mkey.clone(), observed.as_ref())
                .put(mkey.clone(), self.seal_record(&mkey, &plan.meta)?)
                .put(dkey.clone(), self.seal_record(&dkey, &stored)?);
            for v in &plan.pruned {
                txn = txn.delete(data_key(mount, path, *v));
            }
            let vm = &plan.meta.versions[&plan.version];
            Ok((txn, KvVersion::of(&plan.meta, plan.version, vm)))
        })
        .await
    }

    /// Applies a metadata-only change (delete, undelete, destroy) in one guarded transaction;
    /// `change` returns the versions whose data must be removed.
    async fn change_meta(
        &self,
        mount: &str,
        path: &str,
        change: impl Fn(&mut SecretMeta) -> Vec<u64>,
    ) -> Result<()> {
        let mkey = meta_key(mount, path);
        self.transact(|| {
            let Some(current) = self.meta_record(mount, path)? else {
                return Ok((Txn::new(), ()));
            };
            let mut meta = current.value.clone();
            let removed = change(&mut meta);
            let mut txn = Txn::new()
                .unchanged(mkey.clone(), Some(&current.entry))
                .put(mkey.clone(), self.seal_record(&mkey, &meta)?);
            for v in removed {
                txn = txn.delete(data_key(mount, path, v));
            }
            Ok((txn, ()))
        })
        .await
    }

    /// `DELETE data/:path`: soft-deletes the current version.
    pub async fn kv_delete_latest(&self, auth: &Auth, mount: &str, path: &str) -> Result<()> {
        auth.require(&format!("{mount}data/{path}"), Capability::Delete)?;
        self.change_meta(mount, path, |m| {
            let current = m.current_version;
            rules::soft_delete(m, &[current], clock::now());
            Vec::new()
        })
        .await
    }

    /// `POST delete/:path`: soft-deletes the given versions.
    pub async fn kv_delete_versions(
        &self,
        auth: &Auth,
        mount: &str,
        path: &str,
        versions: &[u64],
    ) -> Result<()> {
        auth.require(&format!("{mount}delete/{path}"), Capability::Update)?;
        self.change_meta(mount, path, |m| {
            rules::soft_delete(m, versions, clock::now());
            Vec::new()
        })
        .await
    }

    /// `POST undelete/:path`.
    pub async fn kv_undelete(
        &self,
        auth: &Auth,
        mount: &str,
        path: &str,
        versions: &[u64],
    ) -> Result<()> {
        auth.require(&format!("{mount}undelete/{path}"), Capability::Update)?;
        self.change_meta(mount, path, |m| {
            rules::undelete(m, versions, clock::now());
            Vec::new()
        })
        .await
    }

    /// `PUT destroy/:path`: removes the versions' data for good.
    pub async fn kv_destroy(
        &self,
        auth: &Auth,
        mount: &str,
        path: &str,
        versions: &[u64],
    ) -> Result<()> {
        auth.require(&format!("{mount}destroy/{path}"), Capability::Update)?;
        self.change_meta(mount, path, |m| rules::destroy(m, versions, clock::now()))
            .await
    }

    /// `GET metadata/:path`.
    pub async fn kv_read_meta(
        &self,
        auth: &Auth,
        mount: &str,
        path: &str,
        consistency: Consistency,
    ) -> Result<Option<SecretMeta>> {
        auth.require(&format!("{mount}metadata/{path}"), Capability::Read)?;
        self.await_consistency(consistency).await?;
        Ok(self.meta_record(mount, path)?.map(|r| r.value))
    }

    /// `POST metadata/:path` (`merge = false`) or `PATCH` (`merge = true`).
    pub async fn kv_write_meta(
        &self,
        auth: &Auth,
        mount: &str,
        path: &str,
        update: KvMetaUpdate,
        merge: bool,
    ) -> Result<()> {
        let change = rules::MetaChange::parse(update)?;
        let mkey = meta_key(mount, path);
        self.transact(|| {
            let config = self
                .mount_config(mount)?
                .map(|r| r.value)
                .unwrap_or_default();
            let current = self.meta_record(mount, path)?;
            let cap = match (merge, current.is_some()) {
                (true, _) => Capability::Patch,
                (false, true) => Capability::Update,
                (false, false) => Capability::Create,
            };
            auth.require(&format!("{mount}metadata/{path}"), cap)?;
            if merge && current.is_none() {
                return Err(VaultError::NotFound(
                    "no metadata at this path to patch".into(),
                ));
            }
            change.check_metadata_cas(current.as_ref().map(|r| &r.value), &config)?;
            let now = clock::rfc3339(clock::now());
            let mut meta = current
                .as_ref()
                .map(|r| r.value.clone())
                .unwrap_or_else(|| SecretMeta::new(&now));
            change.apply_to_meta(&mut meta, merge, &now);
            let pruned = rules::prune(&mut meta, &config);
            let mut txn = Txn::new()
                .unchanged(mkey.clone(), current.as_ref().map(|r| &r.entry))
                .put(mkey.clone(), self.seal_record(&mkey, &meta)?);
            for v in pruned {
                txn = txn.delete(data_key(mount, path, v));
            }
            Ok((txn, ()))
        })
        .await
    }

    /// `DELETE metadata/:path`: the metadata and every version.
    pub async fn kv_delete_meta(&self, auth: &Auth, mount: &str, path: &str) -> Result<()> {
        auth.require(&format!("{mount}metadata/{path}"), Capability::Delete)?;
        rules::validate_path(path)?;
        let mkey = meta_key(mount, path);
        let data_prefix = crate::keys::kv_data_prefix(mount, path);
        let txn = Txn::new().delete(mkey).delete_prefix(data_prefix);
        self.engine.write(txn).await?;
        Ok(())
    }

    /// `LIST metadata/:prefix`: immediate children, folders with a trailing `/`.
    pub async fn kv_list(
        &self,
        auth: &Auth,
        mount: &str,
        prefix: &str,
        consistency: Consistency,
    ) -> Result<Vec<String>> {
        if !prefix.is_empty() {
            rules::validate_path(prefix.trim_end_matches('/'))?;
        }
        let folder = if prefix.is_empty() || prefix.ends_with('/') {
            prefix.to_string()
        } else {
            format!("{prefix}/")
        };
        auth.require_list(&format!("{mount}metadata/{folder}"))?;
        self.keyring()?;
        self.await_consistency(consistency).await?;
        let base = meta_key(mount, &folder);
        let entries = self.engine.scan(&base, None, super::LIST_LIMIT)?;
        let mut keys: Vec<String> = Vec::new();
        for (key, _) in entries {
            let rest = String::from_utf8_lossy(&key[base.len()..]).into_owned();
            let child = match rest.find('/') {
                Some(i) => rest[..=i].to_string(),
                None => rest,
            };
            keys.push(child);
        }
        // Scan order is key order, so a folder's children are adjacent.
        keys.dedup();
        Ok(keys)
    }
}
