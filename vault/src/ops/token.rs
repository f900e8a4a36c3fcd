//! Token lifecycle: create (with parent and child index), lookup, renew, and revoke.
//!
//! Revocation always wins. Revoking a token first deletes it (with its accessor) in one
//! transaction, which makes it and — through the ancestor check every request makes — its
//! whole tree unusable at once; the tree is then removed in bounded batches through a
//! durable queue (`auth/token/revoking/<id>`), which any node that leads finishes after a
//! crash. A child being created guards on its parent's record, so it cannot be added to a
//! parent that is already gone, and one added just before is found by the batches.

use std::collections::BTreeMap;

use coffer_raft::Txn;

use super::{Auth, Vault};
use crate::clock;
use crate::error::{Result, VaultError};
use crate::rules::policy::Capability;
use crate::rules::token::{
    accessor_key, child_policies, children_prefix, generate_accessor, generate_token, plan_ttl,
    renewed_expiry, token_id_of_key, token_key, token_key_from_id, LifetimeRequest, TokenEntry,
    MAX_TOKEN_DEPTH,
};

/// TTL of a token created without one (Vault's system default, 32 days).
pub const DEFAULT_TTL_SECS: u64 = 768 * 3600;
/// Longest a non-periodic token may live from its creation (Vault's system max).
pub const MAX_TTL_SECS: u64 = 768 * 3600;
/// Tokens one revocation transaction removes.
const REVOKE_BATCH: usize = 256;

/// How often the leader looks for revocations a crash interrupted.
const REVOCATION_SWEEP_INTERVAL: std::time::Duration = std::time::Duration::from_secs(5);
/// A restore's staging left this long (its node crashed mid-upload) is removed by the
/// leader's sweep; no restore runs this long (the HTTPS request bound is 2 minutes).
const ABANDONED_RESTORE_AFTER: std::time::Duration = std::time::Duration::from_secs(3600);

use crate::keys::{token_revoking as revoking_key, TOKEN_REVOKING as REVOKING_PREFIX};

/// What a new token should be.
#[derive(Clone, Debug, Default)]
pub struct TokenRequest {
    /// Policies; empty inherits the parent's.
    pub policies: Vec<String>,
    /// TTL in seconds; `None` for the default.
    pub ttl_secs: Option<u64>,
    /// Hard maximum life in seconds; 0 none.
    pub explicit_max_ttl_secs: u64,
    /// Periodic renewal in seconds; 0 not periodic.
    pub period_secs: u64,
    /// Create an orphan (requires sudo).
    pub no_parent: bool,
    /// Leave out the `default` policy.
    pub no_default_policy: bool,
    /// Label.
    pub display_name: String,
    /// Metadata.
    pub meta: BTreeMap<String, String>,
    /// Whether it may be renewed.
    pub renewable: bool,
}

/// A newly issued token. The token string exists only here and in the client's hands.
pub struct IssuedToken {
    /// The token.
    pub token: String,
    /// Its record.
    pub entry: TokenEntry,
}

impl std::fmt::Debug for IssuedToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IssuedToken")
            .field("accessor", &self.entry.accessor)
            .finish()
    }
}

impl TokenEntry {
    /// Seconds left before expiry at `now`; 0 for tokens that never expire.
    pub fn ttl_left(&self, now: i64) -> u64 {
        self.expire_time.map_or(0, |t| (t - now).max(0) as u64)
    }
}

impl Vault {
    /// `auth/token/create`: a child of `auth` (or an orphan).
    pub async fn create_token(&self, auth: &Auth, req: TokenRequest) -> Result<IssuedToken> {
        auth.require("auth/token/create", Capability::Update)?;
        let sudo = auth
            .require_sudo("auth/token/create", Capability::Update)
            .is_ok();
        if req.no_parent && !sudo {
            return Err(VaultError::PermissionDenied);
        }
        if auth.is_local_session() && !req.no_parent {
            return Err(VaultError::InvalidRequest(
                "a node-local session (issued while this node was read-only) cannot have child tokens".into(),
            ));
        }
        if !req.no_parent && auth.entry.depth >= MAX_TOKEN_DEPTH {
            return Err(VaultError::InvalidRequest(format!(
                "token chains are limited to {MAX_TOKEN_DEPTH} generations"
            )));
        }
        let policies = child_policies(&auth.policies, &req.policies, req.no_default_policy)
            .map_err(VaultError::InvalidRequest)?;
        let is_root_token = policies.iter().any(|p| p == "root");
        let now = clock::now().unix_timestamp();
        let parent_left = if req.no_parent {
            None
        } else {
            auth.entry.expire_time.map(|_| auth.entry.ttl_left(now))
        };
        let ttl = plan_ttl(
            LifetimeRequest {
                ttl_secs: req.ttl_secs,
                explicit_max_ttl_secs: req.explicit_max_ttl_secs,
                period_secs: req.period_secs,
            },
            self.token_limits,
            sudo,
            is_root_token,
            parent_left,
        )
        .map_err(|e| VaultError::InvalidRequest(e.to_string()))?;
        let limits = self.token_limits;
        let entry = TokenEntry {
            accessor: generate_accessor(),
            policies,
            display_name: if req.display_name.is_empty() {
                "token".into()
            } else {
                format!("token-{}", req.display_name)
            },
            path: "auth/token/create".into(),
            creation_time: now,
            creation_ttl: ttl,
            expire_time: (ttl > 0).then(|| now + ttl as i64),
            meta: req.meta.clone(),
            renewable: req.renewable,
            parent: (!req.no_parent).then(|| token_id_of_key(&auth.token_key)),
            explicit_max_ttl: req.explicit_max_ttl_secs.min(limits.max_ttl_secs),
            period: req.period_secs.min(limits.max_ttl_secs),
            owner: auth.entry.actor().to_string(),
            owner_method: auth.method().to_string(),
            depth: if req.no_parent {
                0
            } else {
                auth.entry.depth + 1
            },
        };
        self.store_token(entry, (!req.no_parent).then_some(auth))
            .await
    }

    /// Writes a new token record, its accessor and (with a parent) the child index entry, in
    /// one transaction guarded on the parent still existing unchanged.
    pub(crate) async fn store_token(
        &self,
        entry: TokenEntry,
        parent: Option<&Auth>,
    ) -> Result<IssuedToken> {
        let token = generate_token();
        let key = token_key(&token);
        let id = token_id_of_key(&key);
        let acc_key = accessor_key(&entry.accessor);
        self.transact(|| {
            let mut txn = Txn::new()
                .when(key.clone(), coffer_raft::Check::Absent)
                .put(key.clone(), self.seal_record(&key, &entry)?)
                .put(acc_key.clone(), self.seal_record(&acc_key, &id)?);
            if let (Some(parent), Some(parent_id)) = (parent, &entry.parent) {
                let current = self
                    .engine
                    .get(&parent.token_key)?
                    .ok_or(VaultError::PermissionDenied)?;
                let mut child = children_prefix(parent_id);
                child.extend_from_slice(id.as_bytes());
                txn = txn
                    .unchanged(parent.token_key.clone(), Some(&current))
                    .put(child, b"1".to_vec());
            }
            Ok((txn, ()))
        })
        .await?;
        Ok(IssuedToken { token, entry })
    }

    /// The token record behind an accessor.
    pub fn token_by_accessor(&self, accessor: &str) -> Result<Option<(Vec<u8>, TokenEntry)>> {
        let Some(id) = self.read_record::<String>(&accessor_key(accessor))? else {
            return Ok(None);
        };
        let key = token_key_from_id(&id.value);
        Ok(self
            .read_record::<TokenEntry>(&key)?
            .map(|r| (key, r.value)))
    }

    /// `auth/token/lookup-accessor`: a node-local session of this node, or a replicated
    /// token (valid ones only).
    pub fn lookup_accessor(&self, auth: &Auth, accessor: &str) -> Result<Option<TokenEntry>> {
        auth.require("auth/token/lookup-accessor", Capability::Update)?;
        if let Some(session) = self.local_session_by_accessor(accessor) {
            return Ok(Some(session));
        }
        match self.token_by_accessor(accessor)? {
            Some((key, _)) => Ok(self.valid_token(&key).ok()),
            None => Ok(None),
        }
    }

    /// `LIST auth/token/accessors` (sudo, as in Vault): every replicated token's accessor,
    /// and this node's node-local sessions.
    pub fn list_accessors(&self, auth: &Auth) -> Result<Vec<String>> {
        auth.require_list_sudo("auth/token/accessors")?;
        self.keyring()?;
        let prefix = accessor_key("");
        let mut out: Vec<String> = self
            .engine
            .scan(&prefix, None, 1_000_000)?
            .into_iter()
            .map(|(k, _)| String::from_utf8_lossy(&k[prefix.len()..]).into_owned())
            .collect();
        out.extend(self.local_session_accessors());
        Ok(out)
    }

    /// `auth/token/lookup-self`.
    pub fn lookup_self(&self, auth: &Auth) -> Result<TokenEntry> {
        auth.require("auth/token/lookup-self", Capability::Read)?;
        Ok(auth.entry.clone())
    }

    /// `auth/token/lookup` (by token) for callers with `update` on it.
    pub fn lookup_token(&self, auth: &Auth, token: &str) -> Result<TokenEntry> {
        auth.require("auth/token/lookup", Capability::Update)?;
        self.valid_token(&token_key(token))
            .map_err(|_| VaultError::InvalidRequest("bad token".into()))
    }

    /// The token stored under `key` (a node-local session or a replicated token), if it
    /// is valid now: not expired, and every ancestor still there and not expired.
    pub(crate) fn valid_token(&self, key: &[u8]) -> Result<TokenEntry> {
        if let Some(session) = self.local_session(key) {
            return Ok(session);
        }
        let entry = self
            .read_record::<TokenEntry>(key)?
            .ok_or(VaultError::PermissionDenied)?
            .value;
        let now = clock::now().unix_timestamp();
        if entry.expired(now) {
            tracing::debug!(accessor = %entry.accessor, "expired token refused");
            return Err(VaultError::PermissionDenied);
        }
        self.check_ancestors(&entry, now)?;
        Ok(entry)
    }

    /// A token is valid only while every ancestor is: revoking or outliving a parent ends
    /// the whole tree at once, whatever the batches removing it have reached.
    fn check_ancestors(&self, entry: &TokenEntry, now: i64) -> Result<()> {
        let mut parent = entry.parent.clone();
        for _ in 0..=MAX_TOKEN_DEPTH {
            let Some(id) = parent else {
                return Ok(());
            };
            let ancestor = self
                .read_record::<TokenEntry>(&token_key_from_id(&id))?
                .ok_or(VaultError::PermissionDenied)?
                .value;
            if ancestor.expired(now) {
                tracing::debug!(accessor = %entry.accessor, "token refused: an ancestor expired");
                return Err(VaultError::PermissionDenied);
            }
            parent = ancestor.parent;
        }
        Err(VaultError::PermissionDenied)
    }

    /// `auth/token/renew-self`.
    pub async fn renew_self(&self, auth: &Auth, increment_secs: Option<u64>) -> Result<TokenEntry> {
        auth.require("auth/token/renew-self", Capability::Update)?;
        let key = auth.token_key.clone();
        self.transact(|| {
            let current = self
                .read_record::<TokenEntry>(&key)?
                .ok_or(VaultError::PermissionDenied)?;
            let mut entry = current.value.clone();
            if !entry.renewable {
                return Err(VaultError::InvalidRequest("token is not renewable".into()));
            }
            let now = clock::now().unix_timestamp();
            entry.expire_time = Some(renewed_expiry(
                &entry,
                now,
                increment_secs,
                self.token_limits,
            ));
            let txn = Txn::new()
                .unchanged(key.clone(), Some(&current.entry))
                .put(key.clone(), self.seal_record(&key, &entry)?);
            Ok((txn, entry))
        })
        .await
    }

    /// `auth/token/revoke-self`.
    pub async fn revoke_self(&self, auth: &Auth) -> Result<usize> {
        auth.require("auth/token/revoke-self", Capability::Update)?;
        if self.revoke_local_session(&auth.token_key) {
            return Ok(1);
        }
        self.revoke_tree(&auth.token_key).await
    }

    /// `auth/token/revoke` (by token).
    pub async fn revoke_token(&self, auth: &Auth, token: &str) -> Result<usize> {
        auth.require("auth/token/revoke", Capability::Update)?;
        let key = token_key(token);
        if self.revoke_local_session(&key) {
            return Ok(1);
        }
        self.revoke_tree(&key).await
    }

    /// `auth/token/revoke-accessor`: a replicated token and its tree, or a node-local
    /// session of this node.
    pub async fn revoke_accessor(&self, auth: &Auth, accessor: &str) -> Result<usize> {
        auth.require("auth/token/revoke-accessor", Capability::Update)?;
        if self.revoke_local_session_by_accessor(accessor) {
            tracing::info!(%accessor, "node-local session revoked");
            return Ok(1);
        }
        match self.token_by_accessor(accessor)? {
            Some((key, _)) => self.revoke_tree(&key).await,
            None => Ok(0),
        }
    }

    /// Revokes a token and all its descendants; returns how many were removed. The token
    /// itself is deleted first, in one transaction that also queues its descendants for
    /// removal, so the tree is unusable from that moment; the queue is then drained.
    pub(crate) async fn revoke_tree(&self, root_key: &[u8]) -> Result<usize> {
        let id = token_id_of_key(root_key);
        let first = self
            .transact(|| {
                let Some(record) = self.read_record::<TokenEntry>(root_key)? else {
                    return Ok((Txn::new(), 0));
                };
                let txn = self
                    .delete_token_ops(Txn::new(), &id, &record.value)
                    .unchanged(root_key.to_vec(), Some(&record.entry));
                Ok((txn, 1))
            })
            .await?;
        Ok(first + self.drain_revocations().await?)
    }

    /// Deletes a token's record, accessor and its link under its parent, and queues it so
    /// its own children are removed next.
    fn delete_token_ops(&self, txn: Txn, id: &str, entry: &TokenEntry) -> Txn {
        let mut txn = txn
            .delete(token_key_from_id(id))
            .delete(accessor_key(&entry.accessor))
            .put(revoking_key(id), b"1".to_vec());
        if let Some(parent) = &entry.parent {
            let mut link = children_prefix(parent);
            link.extend_from_slice(id.as_bytes());
            txn = txn.delete(link);
        }
        txn
    }

    /// Finishes revocations a crash interrupted: on the leader, drains the queue now and
    /// then (a request that revokes drains it itself).
    pub async fn run_revocation_sweeper(self: std::sync::Arc<Self>) {
        loop {
            tokio::time::sleep(REVOCATION_SWEEP_INTERVAL).await;
            if !self.engine.is_leader() || self.is_sealed() {
                continue;
            }
            match self.drain_revocations().await {
                Ok(0) => {}
                Ok(n) => tracing::info!(tokens = n, "finished an interrupted token revocation"),
                Err(e) => tracing::debug!("token revocation sweep paused: {e}"),
            }
            if let Err(e) = self.sweep_abandoned_restores(ABANDONED_RESTORE_AFTER).await {
                tracing::debug!("restore staging sweep paused: {e}");
            }
        }
    }

    /// Removes queued tokens' descendants, a bounded batch per transaction, until the
    /// queue is empty; returns how many tokens were removed.
    pub async fn drain_revocations(&self) -> Result<usize> {
        let mut removed = 0;
        loop {
            let queued = self.engine.scan(REVOKING_PREFIX.as_bytes(), None, 1)?;
            let Some((qkey, _)) = queued.into_iter().next() else {
                return Ok(removed);
            };
            let parent = String::from_utf8_lossy(&qkey[REVOKING_PREFIX.len()..]).into_owned();
            let prefix = children_prefix(&parent);
            let children = self.engine.scan(&prefix, None, REVOKE_BATCH)?;
            let mut txn = Txn::new();
            if children.is_empty() {
                txn = txn.delete(qkey);
            }
            for (link, _) in &children {
                let child = String::from_utf8_lossy(&link[prefix.len()..]).into_owned();
                txn = txn.delete(link.clone());
                if let Some(record) = self.read_record::<TokenEntry>(&token_key_from_id(&child))? {
                    txn = self.delete_token_ops(txn, &child, &record.value);
                    removed += 1;
                }
            }
            self.engine.write(txn).await?;
        }
    }
}
