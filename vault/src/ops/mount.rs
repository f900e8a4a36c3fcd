//! The mount table: reading it, and enabling or disabling a KV v2 mount (the rules are
//! [`crate::rules::mount`]).

use coffer_raft::Txn;

use super::{Auth, Vault};
use crate::error::{Result, VaultError};
use crate::rules::mount::{self, MountTable, MOUNTS_KEY};
use crate::rules::policy::Capability;

impl Vault {
    /// `GET sys/mounts` (`read` on `sys/mounts`).
    pub fn mounts(&self, auth: &Auth) -> Result<MountTable> {
        auth.require("sys/mounts", Capability::Read)?;
        self.mount_table()
    }

    /// The mount serving `path`, for the Vault CLI's pre-flight
    /// (`sys/internal/ui/mounts/:path`): any valid token may ask, as in Vault; the request
    /// that follows is checked. `PermissionDenied` when no mount serves it, as Vault answers.
    pub fn mount_of(&self, _auth: &Auth, path: &str) -> Result<(String, mount::MountEntry)> {
        let table = self.mount_table()?;
        match mount::resolve(&table, path) {
            Some((m, entry, _)) => Ok((m.to_string(), entry.clone())),
            None => Err(VaultError::PermissionDenied),
        }
    }

    /// `GET sys/mounts/:path` and `GET sys/mounts/:path/tune` (`read` on
    /// `sys/mounts/<path>`): the mount at exactly `path`, as Vault answers a 400 when there
    /// is none.
    pub fn mount(&self, auth: &Auth, path: &str) -> Result<(String, mount::MountEntry)> {
        let path = format!("{}/", path.trim_matches('/'));
        auth.require(
            &format!("sys/mounts/{}", path.trim_end_matches('/')),
            Capability::Read,
        )?;
        self.mount_table()?
            .remove(&path)
            .map(|entry| (path.clone(), entry))
            .ok_or_else(|| VaultError::InvalidRequest(format!("no secret engine mount at {path}")))
    }

    /// `POST sys/mounts/:path/tune`: `update` with `sudo` on `sys/mounts/<path>/tune`, as
    /// mounting needs.
    pub async fn tune_mount(&self, auth: &Auth, path: &str, tune: mount::MountTune) -> Result<()> {
        let path = format!("{}/", path.trim_matches('/'));
        auth.require_sudo(&format!("sys/mounts/{}tune", path), Capability::Update)?;
        self.change_mounts(|table| {
            let entry = table.get_mut(&path).ok_or_else(|| {
                VaultError::InvalidRequest(format!("no secret engine mount at {path}"))
            })?;
            tune.apply(entry).map_err(VaultError::InvalidRequest)?;
            Ok(Some(Txn::new()))
        })
        .await
    }

    /// Reads the mount table, lets `change` edit it, and writes it back in one transaction
    /// guarded on the table being unchanged since the read (read again on a race).
    /// `change` returns the rest of the transaction, or `None` to write nothing.
    async fn change_mounts(
        &self,
        mut change: impl FnMut(&mut MountTable) -> Result<Option<Txn>>,
    ) -> Result<()> {
        self.transact(|| {
            let current = self.read_record::<MountTable>(MOUNTS_KEY)?;
            let mut table = current
                .as_ref()
                .map(|r| r.value.clone())
                .unwrap_or_default();
            let Some(txn) = change(&mut table)? else {
                return Ok((Txn::new(), ()));
            };
            let txn = txn
                .unchanged(MOUNTS_KEY, current.as_ref().map(|r| &r.entry))
                .put(MOUNTS_KEY, self.seal_record(MOUNTS_KEY, &table)?);
            Ok((txn, ()))
        })
        .await
    }

    /// The mount table.
    pub fn mount_table(&self) -> Result<MountTable> {
        Ok(self
            .read_record::<MountTable>(MOUNTS_KEY)?
            .map(|r| r.value)
            .unwrap_or_default())
    }

    /// Adds a KV v2 mount at `path`. As in Vault: `create` or `update`, with `sudo`, on
    /// `sys/mounts/<path>` (checked on the normalized path).
    pub async fn mount_kv(&self, auth: &Auth, path: &str, description: &str) -> Result<()> {
        let path = mount::validate_mount_path(path).map_err(VaultError::InvalidRequest)?;
        let acl_path = format!("sys/mounts/{}", path.trim_end_matches('/'));
        auth.require_sudo(&acl_path, Capability::Create)
            .or_else(|_| auth.require_sudo(&acl_path, Capability::Update))?;
        self.change_mounts(|table| {
            *table =
                mount::add_kv(table, &path, description).map_err(VaultError::InvalidRequest)?;
            Ok(Some(Txn::new()))
        })
        .await
    }

    /// Removes a mount and every secret under it.
    pub async fn unmount(&self, auth: &Auth, path: &str) -> Result<()> {
        let path = mount::validate_mount_path(path).map_err(VaultError::InvalidRequest)?;
        let acl_path = format!("sys/mounts/{}", path.trim_end_matches('/'));
        auth.require_sudo(&acl_path, Capability::Delete)?;
        self.change_mounts(|table| {
            Ok(table
                .remove(&path)
                .map(|_| Txn::new().delete_prefix(crate::keys::kv_mount(&path))))
        })
        .await
    }
}
