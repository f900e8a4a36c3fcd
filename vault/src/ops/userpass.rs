//! Userpass: users with Argon2id password hashes and token policies, and login, which issues a
//! token after a rate-limited, constant-work password check.

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};
use coffer_raft::Txn;
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use super::token::IssuedToken;
use super::{Auth, Vault};
use crate::clock;
use crate::error::{Result, VaultError};
use crate::rules::policy::Capability;
use crate::rules::token::{generate_accessor, TokenEntry};

/// A stored user. The hash is a PHC string; it never leaves the vault.
#[derive(Clone, Serialize, Deserialize)]
pub struct UserRecord {
    /// Argon2id PHC hash of the password.
    password_hash: String,
    /// Policies of tokens issued at login.
    pub token_policies: Vec<String>,
    /// TTL of issued tokens in seconds; 0 the default.
    pub token_ttl: u64,
    /// Maximum TTL of issued tokens in seconds; 0 the system maximum.
    pub token_max_ttl: u64,
}

impl std::fmt::Debug for UserRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UserRecord")
            .field("token_policies", &self.token_policies)
            .finish_non_exhaustive()
    }
}

/// Changes to a user; absent fields stay as they are.
#[derive(Default)]
pub struct UserUpdate {
    /// New password.
    pub password: Option<Zeroizing<String>>,
    /// New token policies.
    pub token_policies: Option<Vec<String>>,
    /// New token TTL, seconds.
    pub token_ttl: Option<u64>,
    /// New token max TTL, seconds.
    pub token_max_ttl: Option<u64>,
}

use crate::keys::user as user_key;

/// OWASP's Argon2id recommendation: 19 MiB, 2 passes, 1 lane.
fn hasher() -> Argon2<'static> {
    let params = Params::new(19 * 1024, 2, 1, None).expect("static Argon2 parameters are valid");
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
}

/// Password hashes computed at once. Each takes 19 MiB and ~50 ms of a core: unbounded, a
/// login storm would exhaust memory; bounded, it queues (and the rate limiter sheds it).
const CONCURRENT_HASHES: usize = 4;

fn hash_slots() -> &'static tokio::sync::Semaphore {
    static SLOTS: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(CONCURRENT_HASHES);
    &SLOTS
}

async fn hash_password(password: Zeroizing<String>) -> Result<String> {
    let _slot = hash_slots().acquire().await.map_err(VaultError::internal)?;
    tokio::task::spawn_blocking(move || {
        let salt = SaltString::generate(&mut rand::rngs::OsRng);
        hasher()
            .hash_password(password.as_bytes(), &salt)
            .map(|h| h.to_string())
            .map_err(VaultError::internal)
    })
    .await
    .map_err(VaultError::internal)?
}

/// A hash of a password no one knows, verified against for unknown users so that a login for
/// a missing user costs the same as one for an existing user (no user enumeration by timing).
fn decoy_hash() -> &'static str {
    static DECOY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    DECOY.get_or_init(|| {
        let salt = SaltString::generate(&mut rand::rngs::OsRng);
        hasher()
            .hash_password(crate::rules::token::generate_token().as_bytes(), &salt)
            .map(|h| h.to_string())
            .unwrap_or_default()
    })
}

async fn verify_password(hash: String, password: Zeroizing<String>) -> bool {
    let Ok(_slot) = hash_slots().acquire().await else {
        return false;
    };
    tokio::task::spawn_blocking(move || {
        PasswordHash::new(&hash).is_ok_and(|parsed| {
            hasher()
                .verify_password(password.as_bytes(), &parsed)
                .is_ok()
        })
    })
    .await
    .unwrap_or(false)
}

/// Vault's rule: no auth method may issue a token with the `root` policy.
fn refuse_root(policies: &[String]) -> Result<()> {
    if policies.iter().any(|p| p == "root") {
        return Err(VaultError::InvalidRequest(
            "auth methods cannot create root tokens: the \"root\" policy cannot be given to a user"
                .into(),
        ));
    }
    Ok(())
}

/// Names the audit log gives to actors that are not users.
const RESERVED_USERNAMES: [&str; 3] = ["root", "system", "anonymous"];

fn validate_username(name: &str) -> Result<()> {
    if RESERVED_USERNAMES.contains(&name) || name.starts_with("node ") {
        return Err(VaultError::InvalidRequest(format!(
            "invalid username {name:?}: reserved for the audit log's own actors"
        )));
    }
    let ok = !name.is_empty()
        && name.len() <= 128
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.@".contains(c));
    if ok {
        Ok(())
    } else {
        Err(VaultError::InvalidRequest(format!(
            "invalid username {name:?}: use letters, digits and - _ . @"
        )))
    }
}

impl Vault {
    /// Creates or updates a user.
    pub async fn write_user(&self, auth: &Auth, name: &str, update: UserUpdate) -> Result<()> {
        validate_username(name)?;
        let key = user_key(name);
        let existing = self.read_record::<UserRecord>(&key)?;
        let cap = if existing.is_some() {
            Capability::Update
        } else {
            Capability::Create
        };
        auth.require(&format!("auth/userpass/users/{name}"), cap)?;
        if let Some(policies) = &update.token_policies {
            refuse_root(policies)?;
        }
        let limits = self.token_limits;
        for (field, value) in [
            ("token_ttl", update.token_ttl),
            ("token_max_ttl", update.token_max_ttl),
        ] {
            if value.is_some_and(|v| v > limits.max_ttl_secs) {
                return Err(VaultError::InvalidRequest(format!(
                    "{field} is longer than this cluster's maximum token TTL ({} s)",
                    limits.max_ttl_secs
                )));
            }
        }
        let new_hash = match update.password {
            Some(p) if p.is_empty() => {
                return Err(VaultError::InvalidRequest(
                    "password must not be empty".into(),
                ))
            }
            Some(p) => Some(hash_password(p).await?),
            None => None,
        };
        self.transact(|| {
            let current = self.read_record::<UserRecord>(&key)?;
            let mut user = match (&current, &new_hash) {
                (Some(c), _) => c.value.clone(),
                (None, Some(_)) => UserRecord {
                    password_hash: String::new(),
                    token_policies: Vec::new(),
                    token_ttl: 0,
                    token_max_ttl: 0,
                },
                (None, None) => return Err(VaultError::InvalidRequest("missing password".into())),
            };
            if let Some(h) = &new_hash {
                user.password_hash = h.clone();
            }
            if let Some(p) = &update.token_policies {
                user.token_policies = p.clone();
            }
            if let Some(t) = update.token_ttl {
                user.token_ttl = t;
            }
            if let Some(t) = update.token_max_ttl {
                user.token_max_ttl = t;
            }
            let txn = Txn::new()
                .unchanged(key.clone(), current.as_ref().map(|r| &r.entry))
                .put(key.clone(), self.seal_record(&key, &user)?);
            Ok((txn, ()))
        })
        .await
    }

    /// `auth/userpass/users/:user/password`: a new password for an existing user, checked
    /// against that path (as Vault does), so a policy can allow or deny it on its own.
    pub async fn set_password(
        &self,
        auth: &Auth,
        name: &str,
        password: Zeroizing<String>,
    ) -> Result<()> {
        validate_username(name)?;
        auth.require(
            &format!("auth/userpass/users/{name}/password"),
            Capability::Update,
        )?;
        if self.read_record::<UserRecord>(&user_key(name))?.is_none() {
            return Err(VaultError::NotFound(format!("no user {name:?}")));
        }
        if password.is_empty() {
            return Err(VaultError::InvalidRequest(
                "password must not be empty".into(),
            ));
        }
        let hash = hash_password(password).await?;
        let key = user_key(name);
        self.transact(|| {
            let current = self
                .read_record::<UserRecord>(&key)?
                .ok_or_else(|| VaultError::NotFound(format!("no user {name:?}")))?;
            let mut user = current.value.clone();
            user.password_hash = hash.clone();
            let txn = Txn::new()
                .unchanged(key.clone(), Some(&current.entry))
                .put(key.clone(), self.seal_record(&key, &user)?);
            Ok((txn, ()))
        })
        .await
    }

    /// Reads a user (never the hash).
    pub fn read_user(&self, auth: &Auth, name: &str) -> Result<Option<UserRecord>> {
        auth.require(&format!("auth/userpass/users/{name}"), Capability::Read)?;
        validate_username(name)?;
        Ok(self
            .read_record::<UserRecord>(&user_key(name))?
            .map(|r| r.value))
    }

    /// Deletes a user. Tokens already issued stay valid until they expire or are revoked.
    pub async fn delete_user(&self, auth: &Auth, name: &str) -> Result<()> {
        auth.require(&format!("auth/userpass/users/{name}"), Capability::Delete)?;
        validate_username(name)?;
        self.engine.write(Txn::new().delete(user_key(name))).await?;
        Ok(())
    }

    /// Lists users.
    pub fn list_users(&self, auth: &Auth) -> Result<Vec<String>> {
        auth.require_list("auth/userpass/users")?;
        self.keyring()?;
        let prefix = crate::keys::USERS.as_bytes();
        Ok(self
            .engine
            .scan(prefix, None, super::LIST_LIMIT)?
            .into_iter()
            .map(|(k, _)| String::from_utf8_lossy(&k[prefix.len()..]).into_owned())
            .collect())
    }

    /// `auth/userpass/login/:user`. Rate limited per user and per client address; the
    /// refusal does not say whether the user exists.
    pub async fn login_userpass(
        &self,
        name: &str,
        password: Zeroizing<String>,
        client_addr: &str,
    ) -> Result<IssuedToken> {
        self.keyring()?;
        let now = clock::now().unix_timestamp();
        let blocked = self.limiter()?.check(name, client_addr, now);
        if let Some(secs) = blocked {
            return Err(VaultError::RateLimited(format!(
                "too many failed login attempts; retry in {secs} s"
            )));
        }
        let user = if validate_username(name).is_ok() {
            self.read_record::<UserRecord>(&user_key(name))?
                .map(|r| r.value)
        } else {
            None
        };
        let hash = user
            .as_ref()
            .map_or_else(|| decoy_hash().to_string(), |u| u.password_hash.clone());
        let ok = verify_password(hash, password).await && user.is_some();
        let Some(user) = user.filter(|_| ok) else {
            self.limiter()?.failed(name, client_addr, now);
            return Err(VaultError::InvalidRequest(
                "invalid username or password".into(),
            ));
        };
        self.limiter()?.succeeded(name);
        // A user written before root was refused, or by hand: never a root token.
        refuse_root(&user.token_policies)?;
        let mut policies = user.token_policies.clone();
        if !policies.iter().any(|p| p == "default") {
            policies.push("default".into());
        }
        policies.sort();
        let limits = self.token_limits;
        let max = if user.token_max_ttl > 0 {
            user.token_max_ttl.min(limits.max_ttl_secs)
        } else {
            limits.max_ttl_secs
        };
        let ttl = if user.token_ttl > 0 {
            user.token_ttl
        } else {
            limits.default_ttl_secs
        }
        .min(max);
        let entry = TokenEntry {
            accessor: generate_accessor(),
            policies,
            display_name: format!("userpass-{name}"),
            path: format!("auth/userpass/login/{name}"),
            creation_time: now,
            creation_ttl: ttl,
            expire_time: Some(now + ttl as i64),
            meta: [("username".to_string(), name.to_string())].into(),
            renewable: true,
            parent: None,
            explicit_max_ttl: max,
            period: 0,
            owner: name.to_string(),
            owner_method: "userpass".into(),
            depth: 0,
        };
        if self.engine.mode() == coffer_raft::NodeMode::ReadOnly {
            return self.store_local_session(entry);
        }
        self.store_token(entry, None).await
    }

    fn limiter(&self) -> Result<std::sync::MutexGuard<'_, crate::rules::ratelimit::LoginLimiter>> {
        self.limiter.lock().map_err(VaultError::internal)
    }
}
