//! Authentication and authorization: resolving a token to its policies, checking
//! capabilities, and the stored ACL policies (`sys/policies/acl/:name`).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use coffer_raft::Txn;
use serde::{Deserialize, Serialize};

use super::Vault;
use crate::error::{Result, VaultError};
use crate::keys::token as token_key;
use crate::rules::policy::{self, Capability, Policy};
use crate::rules::token::TokenEntry;

/// A stored policy: its name and source text, exactly as written (Vault returns the text).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct StoredPolicy {
    /// Policy name.
    pub name: String,
    /// HCL or JSON source.
    pub text: String,
}

use crate::keys::policy as policy_key;

/// Parsed policies by name with the revision they were parsed at, so a request does not
/// re-parse unchanged policies.
#[derive(Default)]
pub(crate) struct PolicyCache(Mutex<HashMap<String, (u64, Arc<Policy>)>>);

/// An authenticated caller.
#[derive(Clone)]
pub struct Auth {
    /// Storage key of the token record (never the token itself).
    pub token_key: Vec<u8>,
    /// The token's accessor.
    pub accessor: String,
    /// The token's policy names.
    pub policies: Vec<String>,
    /// The token's display name.
    pub display_name: String,
    /// The full record.
    pub entry: TokenEntry,
    /// Whether the token is a node-local session of a read-only standby.
    local_session: bool,
    /// The token's policies, parsed.
    acl: Arc<Vec<(String, Arc<Policy>)>>,
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Auth")
            .field("accessor", &self.accessor)
            .field("display_name", &self.display_name)
            .field("policies", &self.policies)
            .finish()
    }
}

/// Capability names per path, as `sys/capabilities*` answer them.
pub type CapabilityTable = std::collections::BTreeMap<String, Vec<String>>;

impl Auth {
    /// The person acting (see [`TokenEntry::owner`]).
    pub fn actor(&self) -> &str {
        self.entry.actor()
    }

    /// How that person authenticated (`userpass`, `token`).
    pub fn method(&self) -> &str {
        if self.entry.owner_method.is_empty() {
            "token"
        } else {
            &self.entry.owner_method
        }
    }

    /// Whether the token is a node-local session (a login on a read-only standby).
    pub fn is_local_session(&self) -> bool {
        self.local_session
    }

    /// Whether the caller holds the `root` policy.
    pub fn is_root(&self) -> bool {
        self.policies.iter().any(|p| p == "root")
    }

    /// Capabilities on `path`.
    pub fn capabilities(&self, path: &str) -> std::collections::BTreeSet<Capability> {
        let refs: Vec<(&str, &Policy)> = self
            .acl
            .iter()
            .map(|(n, p)| (n.as_str(), p.as_ref()))
            .collect();
        policy::capabilities(&refs, path)
    }

    /// Refuses unless the caller has `cap` on `path`.
    pub fn require(&self, path: &str, cap: Capability) -> Result<()> {
        if self.capabilities(path).contains(&cap) {
            Ok(())
        } else {
            Err(VaultError::PermissionDenied)
        }
    }

    /// Refuses a LIST unless the caller has `list` on the folder `path`. As in Vault, a LIST
    /// is checked with a trailing slash (so `list` on `secret/metadata/team/*` lists
    /// `secret/metadata/team`); only if no rule matches that form at all is the form
    /// without the slash asked (so `list` on `sys/policies/acl` keeps working).
    pub fn require_list(&self, path: &str) -> Result<()> {
        self.require_list_with(path, false)
    }

    /// [`Auth::require_list`] with `sudo` too (root-protected lists).
    pub fn require_list_sudo(&self, path: &str) -> Result<()> {
        self.require_list_with(path, true)
    }

    fn require_list_with(&self, path: &str, sudo: bool) -> Result<()> {
        let bare = path.trim_end_matches('/');
        let refs: Vec<(&str, &Policy)> = self
            .acl
            .iter()
            .map(|(n, p)| (n.as_str(), p.as_ref()))
            .collect();
        let caps = match policy::matching_capabilities(&refs, &format!("{bare}/")) {
            Some(caps) => caps,
            None => policy::capabilities(&refs, bare),
        };
        if caps.contains(&Capability::List) && (!sudo || caps.contains(&Capability::Sudo)) {
            Ok(())
        } else {
            Err(VaultError::PermissionDenied)
        }
    }

    /// Refuses unless the caller has `cap` and `sudo` on `path` (root-protected routes).
    pub fn require_sudo(&self, path: &str, cap: Capability) -> Result<()> {
        let caps = self.capabilities(path);
        if caps.contains(&cap) && caps.contains(&Capability::Sudo) {
            Ok(())
        } else {
            Err(VaultError::PermissionDenied)
        }
    }
}

impl Vault {
    /// Resolves a client token. Missing, unknown and expired tokens are all `PermissionDenied`.
    pub fn authenticate(&self, token: Option<&str>) -> Result<Auth> {
        self.keyring()?;
        let token = token
            .filter(|t| !t.is_empty())
            .ok_or(VaultError::PermissionDenied)?;
        let key = token_key(token);
        let local_session = self.local_session(&key).is_some();
        let entry = self.valid_token(&key)?;
        let acl = Arc::new(self.load_policies(&entry.policies)?);
        Ok(Auth {
            token_key: key,
            accessor: entry.accessor.clone(),
            policies: entry.policies.clone(),
            display_name: entry.display_name.clone(),
            entry,
            local_session,
            acl,
        })
    }

    /// `sys/capabilities-self`: the caller's own capabilities on each of `paths`.
    pub fn capabilities_self(&self, auth: &Auth, paths: &[String]) -> Result<CapabilityTable> {
        auth.require("sys/capabilities-self", Capability::Update)?;
        self.capability_table(&auth.policies, paths)
    }

    /// `sys/capabilities`: another token's capabilities on each of `paths` (`update` on
    /// `sys/capabilities`, as in Vault). An unknown or expired token is a bad request.
    pub fn capabilities_of_token(
        &self,
        auth: &Auth,
        token: &str,
        paths: &[String],
    ) -> Result<CapabilityTable> {
        auth.require("sys/capabilities", Capability::Update)?;
        let entry = Some(token)
            .filter(|t| !t.is_empty())
            .and_then(|t| self.valid_token(&token_key(t)).ok())
            .ok_or_else(|| VaultError::InvalidRequest("invalid token".into()))?;
        self.capability_table(&entry.policies, paths)
    }

    /// `sys/capabilities-accessor`: the capabilities of the token behind an accessor
    /// (`update` on `sys/capabilities-accessor`), a node-local session's included.
    pub fn capabilities_of_accessor(
        &self,
        auth: &Auth,
        accessor: &str,
        paths: &[String],
    ) -> Result<CapabilityTable> {
        auth.require("sys/capabilities-accessor", Capability::Update)?;
        let entry = match self.local_session_by_accessor(accessor) {
            Some(session) => Some(session),
            None => match self.token_by_accessor(accessor)? {
                Some((key, _)) => self.valid_token(&key).ok(),
                None => None,
            },
        }
        .ok_or_else(|| VaultError::InvalidRequest("invalid accessor".into()))?;
        self.capability_table(&entry.policies, paths)
    }

    /// Capabilities as Vault names them in `sys/capabilities*`: `["root"]` for a root token,
    /// `["deny"]` where nothing is granted, else the granted capabilities in a fixed order.
    fn capability_table(&self, policies: &[String], paths: &[String]) -> Result<CapabilityTable> {
        let acl = self.load_policies(policies)?;
        let refs: Vec<(&str, &Policy)> =
            acl.iter().map(|(n, p)| (n.as_str(), p.as_ref())).collect();
        let root = policies.iter().any(|p| p == "root");
        Ok(paths
            .iter()
            .map(|path| {
                let path = path.trim_start_matches('/');
                let caps = policy::capabilities(&refs, path);
                let names: Vec<String> = if root {
                    vec!["root".into()]
                } else if caps.is_empty() || caps.contains(&Capability::Deny) {
                    vec!["deny".into()]
                } else {
                    caps.iter().map(|c| c.name().to_string()).collect()
                };
                (path.to_string(), names)
            })
            .collect())
    }

    fn load_policies(&self, names: &[String]) -> Result<Vec<(String, Arc<Policy>)>> {
        let mut out = Vec::with_capacity(names.len());
        for name in names {
            match name.as_str() {
                "root" => out.push((name.clone(), Arc::new(Policy::default()))),
                "default" => out.push((name.clone(), default_policy())),
                _ => {
                    if let Some(p) = self.cached_policy(name)? {
                        out.push((name.clone(), p));
                    }
                }
            }
        }
        Ok(out)
    }

    fn cached_policy(&self, name: &str) -> Result<Option<Arc<Policy>>> {
        let Some(entry) = self.engine.get(&policy_key(name))? else {
            return Ok(None);
        };
        let mut cache = self.policy_cache.0.lock().map_err(VaultError::internal)?;
        if let Some((rev, p)) = cache.get(name) {
            if *rev == entry.mod_revision {
                return Ok(Some(p.clone()));
            }
        }
        let plaintext = self.open_bytes(&policy_key(name), &entry.value)?;
        let stored: StoredPolicy =
            serde_json::from_slice(&plaintext).map_err(VaultError::internal)?;
        let parsed = Arc::new(policy::parse(&stored.text).map_err(VaultError::internal)?);
        cache.insert(name.to_string(), (entry.mod_revision, parsed.clone()));
        Ok(Some(parsed))
    }

    /// `PUT sys/policies/acl/:name`.
    pub async fn write_policy(&self, auth: &Auth, name: &str, text: &str) -> Result<()> {
        auth.require(&format!("sys/policies/acl/{name}"), Capability::Update)
            .or_else(|_| auth.require(&format!("sys/policies/acl/{name}"), Capability::Create))?;
        validate_policy_name(name)?;
        if policy::BUILTIN.contains(&name) {
            return Err(VaultError::InvalidRequest(format!(
                "cannot update the built-in {name:?} policy"
            )));
        }
        policy::parse(text)
            .map_err(|e| VaultError::InvalidRequest(format!("failed to parse policy: {e}")))?;
        let key = policy_key(name);
        let stored = StoredPolicy {
            name: name.to_string(),
            text: text.to_string(),
        };
        let txn = Txn::new().put(key.clone(), self.seal_record(&key, &stored)?);
        self.engine.write(txn).await?;
        Ok(())
    }

    /// `GET sys/policies/acl/:name`.
    pub fn read_policy(&self, auth: &Auth, name: &str) -> Result<Option<StoredPolicy>> {
        auth.require(&format!("sys/policies/acl/{name}"), Capability::Read)?;
        match name {
            "root" => Ok(Some(StoredPolicy {
                name: "root".into(),
                text: String::new(),
            })),
            "default" => Ok(Some(StoredPolicy {
                name: "default".into(),
                text: policy::DEFAULT_POLICY.trim_start().to_string(),
            })),
            _ => Ok(self
                .read_record::<StoredPolicy>(&policy_key(name))?
                .map(|r| r.value)),
        }
    }

    /// `DELETE sys/policies/acl/:name`.
    pub async fn delete_policy(&self, auth: &Auth, name: &str) -> Result<()> {
        auth.require(&format!("sys/policies/acl/{name}"), Capability::Delete)?;
        if policy::BUILTIN.contains(&name) {
            return Err(VaultError::InvalidRequest(format!(
                "cannot delete the built-in {name:?} policy"
            )));
        }
        self.engine
            .write(Txn::new().delete(policy_key(name)))
            .await?;
        Ok(())
    }

    /// `LIST sys/policies/acl`.
    pub fn list_policies(&self, auth: &Auth) -> Result<Vec<String>> {
        auth.require_list("sys/policies/acl")?;
        self.keyring()?;
        let mut names = vec!["default".to_string(), "root".to_string()];
        let prefix = crate::keys::POLICIES;
        for (key, _) in self
            .engine
            .scan(prefix.as_bytes(), None, super::LIST_LIMIT)?
        {
            names.push(String::from_utf8_lossy(&key[prefix.len()..]).into_owned());
        }
        names.sort();
        Ok(names)
    }
}

/// The auth methods Coffer has, as `sys/auth` lists them.
pub const AUTH_METHODS: [(&str, &str); 2] = [
    ("token", "token based credentials"),
    ("userpass", "username and password"),
];

impl Vault {
    /// The legacy `sys/policy/:name` is also checked on the path it was asked by, so a
    /// policy written for either spelling holds (`op`: what the request does).
    pub fn check_policy_alias(
        &self,
        auth: &Auth,
        request_path: &str,
        op: crate::audit::RequestOp,
    ) -> Result<()> {
        use crate::audit::RequestOp;
        match op {
            RequestOp::List => auth.require_list(request_path),
            RequestOp::Write => auth.require(request_path, Capability::Update),
            RequestOp::Delete => auth.require(request_path, Capability::Delete),
            _ => auth.require(request_path, Capability::Read),
        }
    }

    /// `GET sys/auth`: the auth methods (always both; `read` on `sys/auth`).
    pub fn auth_methods(&self, auth: &Auth) -> Result<&'static [(&'static str, &'static str)]> {
        auth.require("sys/auth", Capability::Read)?;
        Ok(&AUTH_METHODS)
    }

    /// `GET sys/auth/:path` (`read` on `sys/auth/<path>`): the method's description, or a
    /// 400 naming the path when no method is there, as Vault answers.
    pub fn auth_method(&self, auth: &Auth, path: &str) -> Result<&'static str> {
        let path = path.trim_matches('/');
        auth.require(&format!("sys/auth/{path}"), Capability::Read)?;
        AUTH_METHODS
            .iter()
            .find(|(name, _)| *name == path)
            .map(|(_, description)| *description)
            .ok_or_else(|| VaultError::InvalidRequest(format!("no auth engine at {path}/")))
    }

    /// `POST sys/auth/:path`: enabling a method Coffer always has succeeds (so `vault auth
    /// enable userpass` works), with `update` and `sudo` on the path; others are refused.
    pub fn enable_auth_method(&self, auth: &Auth, path: &str) -> Result<()> {
        let path = path.trim_matches('/');
        if !AUTH_METHODS.iter().any(|(name, _)| *name == path) {
            return Err(VaultError::InvalidRequest(format!(
                "auth method at {path:?} is not available: Coffer provides token and userpass"
            )));
        }
        auth.require_sudo(&format!("sys/auth/{path}"), Capability::Update)
    }
}

/// The built-in `default` policy, parsed once: nearly every token carries it, so parsing it
/// per request would sit on the hot path.
fn default_policy() -> Arc<Policy> {
    static DEFAULT: std::sync::OnceLock<Arc<Policy>> = std::sync::OnceLock::new();
    DEFAULT
        .get_or_init(|| {
            Arc::new(
                policy::parse(policy::DEFAULT_POLICY).expect("the built-in default policy parses"),
            )
        })
        .clone()
}

fn validate_policy_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 128
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
    if ok {
        Ok(())
    } else {
        Err(VaultError::InvalidRequest(format!(
            "invalid policy name {name:?}: use letters, digits, '-', '_' and '.'"
        )))
    }
}
