//! Token lifecycle: create (with parent and child index), lookup, renew, revoke (with every
//! descendant, in one transaction).

use std::collections::BTreeMap;

use coffer_raft::Txn;

use super::{Auth, Vault};
use crate::clock;
use crate::error::{Result, VaultError};
use crate::policy::Capability;
use crate::tokens::{
    accessor_key, children_prefix, generate_accessor, generate_token, token_id_of_key, token_key,
    token_key_from_id, TokenEntry,
};

/// TTL of a token created without one (Vault's system default, 32 days).
pub const DEFAULT_TTL_SECS: u64 = 768 * 3600;
/// Longest a non-periodic token may live from its creation (Vault's system max).
pub const MAX_TTL_SECS: u64 = 768 * 3600;
/// Most tokens one revocation removes (a token tree larger than this is refused).
const MAX_REVOKE: usize = 10_000;

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
        if req.no_parent {
            auth.require_sudo("auth/token/create", Capability::Update)?;
        }
        let mut policies: Vec<String> = if req.policies.is_empty() {
            auth.policies.clone()
        } else {
            req.policies.clone()
        };
        if !auth.is_root() {
            if let Some(p) = policies
                .iter()
                .find(|p| *p != "default" && !auth.policies.contains(p))
            {
                return Err(VaultError::InvalidRequest(format!(
                    "child policies must be a subset of the parent's: {p:?} is not"
                )));
            }
        }
        let is_root_token = policies.iter().any(|p| p == "root");
        if !is_root_token && !req.no_default_policy && !policies.iter().any(|p| p == "default") {
            policies.push("default".into());
        }
        policies.sort();
        policies.dedup();
        let now = clock::now().unix_timestamp();
        let ttl = if req.period_secs > 0 {
            req.period_secs
        } else {
            match req.ttl_secs {
                Some(t) if t > 0 => t.min(MAX_TTL_SECS),
                // A root token created without a TTL does not expire, as in Vault.
                _ if is_root_token => 0,
                _ => DEFAULT_TTL_SECS,
            }
        };
        let ttl = match req.explicit_max_ttl_secs {
            0 => ttl,
            max if ttl == 0 => max,
            max => ttl.min(max),
        };
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
            explicit_max_ttl: req.explicit_max_ttl_secs,
            period: req.period_secs,
        };
        self.store_token(entry, Some(auth)).await
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

    /// `auth/token/lookup` (by token) for callers with `update` on it.
    pub fn lookup_token(&self, auth: &Auth, token: &str) -> Result<TokenEntry> {
        auth.require("auth/token/lookup", Capability::Update)?;
        let entry = self
            .read_record::<TokenEntry>(&token_key(token))?
            .ok_or_else(|| VaultError::InvalidRequest("bad token".into()))?
            .value;
        if entry.expired(clock::now().unix_timestamp()) {
            return Err(VaultError::InvalidRequest("bad token".into()));
        }
        Ok(entry)
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
            let wanted = if entry.period > 0 {
                entry.period
            } else {
                increment_secs
                    .filter(|i| *i > 0)
                    .unwrap_or(entry.creation_ttl)
            };
            let mut expire = now + wanted as i64;
            if entry.period == 0 {
                expire = expire.min(entry.creation_time + MAX_TTL_SECS as i64);
            }
            if entry.explicit_max_ttl > 0 {
                expire = expire.min(entry.creation_time + entry.explicit_max_ttl as i64);
            }
            entry.expire_time = Some(expire);
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
        self.revoke_tree(&token_key(token)).await
    }

    /// `auth/token/revoke-accessor`.
    pub async fn revoke_accessor(&self, auth: &Auth, accessor: &str) -> Result<usize> {
        auth.require("auth/token/revoke-accessor", Capability::Update)?;
        match self.token_by_accessor(accessor)? {
            Some((key, _)) => self.revoke_tree(&key).await,
            None => Ok(0),
        }
    }

    /// Revokes a token and all its descendants atomically; returns how many were revoked.
    pub(crate) async fn revoke_tree(&self, root_key: &[u8]) -> Result<usize> {
        self.transact(|| {
            let mut txn = Txn::new();
            let mut queue = vec![token_id_of_key(root_key)];
            let mut revoked = 0;
            while let Some(id) = queue.pop() {
                let key = token_key_from_id(&id);
                if let Some(record) = self.read_record::<TokenEntry>(&key)? {
                    txn = txn
                        .unchanged(key.clone(), Some(&record.entry))
                        .delete(key)
                        .delete(accessor_key(&record.value.accessor));
                    if let Some(parent) = &record.value.parent {
                        let mut link = children_prefix(parent);
                        link.extend_from_slice(id.as_bytes());
                        txn = txn.delete(link);
                    }
                    revoked += 1;
                }
                let prefix = children_prefix(&id);
                for (child, _) in self.engine.scan(&prefix, None, MAX_REVOKE)? {
                    queue.push(String::from_utf8_lossy(&child[prefix.len()..]).into_owned());
                }
                if revoked > MAX_REVOKE {
                    return Err(VaultError::InvalidRequest(
                        "token tree too large to revoke at once".into(),
                    ));
                }
            }
            Ok((txn, revoked))
        })
        .await
    }
}
