//! Token records. Tokens are stored only as SHA-256 hashes (the storage key); the record,
//! encrypted, holds the accessor, policies and lifetime. A token is 24 random base62
//! characters after Vault's `hvs.` prefix, so clients that sniff the prefix treat it right.

use std::collections::BTreeMap;

use rand::Rng;
use serde::{Deserialize, Serialize};

/// A stored token.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenEntry {
    /// Public handle that can look up or revoke the token without knowing it.
    pub accessor: String,
    /// Attached policies (`root` grants everything).
    pub policies: Vec<String>,
    /// Human label (`root`, `userpass-alice`, `token`).
    pub display_name: String,
    /// Auth path that created it (`auth/token/root`, `auth/userpass/login/alice`).
    pub path: String,
    /// Creation time, Unix seconds.
    pub creation_time: i64,
    /// TTL in seconds at creation; 0 never expires.
    pub creation_ttl: u64,
    /// Expiry, Unix seconds; `None` never.
    pub expire_time: Option<i64>,
    /// Free-form metadata.
    pub meta: BTreeMap<String, String>,
    /// Whether the token may be renewed.
    pub renewable: bool,
    /// Storage key (hex of the hash) of the parent token; `None` for orphans. Revoking the
    /// parent revokes this token.
    #[serde(default)]
    pub parent: Option<String>,
    /// Hard limit on the token's life in seconds from creation; 0 none.
    #[serde(default)]
    pub explicit_max_ttl: u64,
    /// Periodic tokens renew to this many seconds and have no maximum; 0 not periodic.
    #[serde(default)]
    pub period: u64,
    /// The person the token acts for (`alice` for her userpass login and every token she
    /// makes from it, `root` for the initial root token): the audit log's actor.
    #[serde(default)]
    pub owner: String,
    /// How `owner` authenticated (`userpass`, `token`): the audit log's auth method.
    #[serde(default)]
    pub owner_method: String,
    /// Ancestors above this token (0 for orphans). Bounded by [`MAX_TOKEN_DEPTH`], so the
    /// ancestor check on every request is bounded too.
    #[serde(default)]
    pub depth: u32,
}

/// Deepest chain of child tokens (each request checks every ancestor).
pub const MAX_TOKEN_DEPTH: u32 = 32;

impl TokenEntry {
    /// Whether the token is expired at Unix time `now`.
    pub fn expired(&self, now: i64) -> bool {
        self.expire_time.is_some_and(|t| t <= now)
    }

    /// The actor name for audit records: the owner, or the display name of tokens made
    /// before owners were recorded.
    pub fn actor(&self) -> &str {
        if self.owner.is_empty() {
            &self.display_name
        } else {
            &self.owner
        }
    }
}

/// Lifetime limits of tokens on this node (Vault's `default_lease_ttl` / `max_lease_ttl`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TokenLimits {
    /// TTL of a token created or logged in without one, seconds.
    pub default_ttl_secs: u64,
    /// Longest any token may live (TTL, period and explicit max TTL are capped), seconds.
    pub max_ttl_secs: u64,
}

impl Default for TokenLimits {
    fn default() -> Self {
        Self {
            default_ttl_secs: 768 * 3600,
            max_ttl_secs: 768 * 3600,
        }
    }
}

/// The policies of a new token made by a parent holding `parent`: the requested ones (or the
/// parent's when none are asked), each of which the parent must hold unless it is root, plus
/// `default` unless asked not to or the token is root; sorted, without repeats.
pub fn child_policies(
    parent: &[String],
    requested: &[String],
    no_default: bool,
) -> Result<Vec<String>, String> {
    let mut policies: Vec<String> = if requested.is_empty() {
        parent.to_vec()
    } else {
        requested.to_vec()
    };
    if !parent.iter().any(|p| p == "root") {
        if let Some(p) = policies
            .iter()
            .find(|p| *p != "default" && !parent.contains(p))
        {
            return Err(format!(
                "child policies must be a subset of the parent's: {p:?} is not"
            ));
        }
    }
    let root = policies.iter().any(|p| p == "root");
    if !root && !no_default && !policies.iter().any(|p| p == "default") {
        policies.push("default".into());
    }
    policies.sort();
    policies.dedup();
    Ok(policies)
}

/// The expiry (Unix seconds) of `entry` renewed at `now`: its period, or the increment asked
/// (else its original TTL), capped by the system maximum from its creation (periodic tokens
/// excepted) and by its explicit maximum.
pub fn renewed_expiry(
    entry: &TokenEntry,
    now: i64,
    increment_secs: Option<u64>,
    limits: TokenLimits,
) -> i64 {
    let wanted = if entry.period > 0 {
        entry.period
    } else {
        increment_secs
            .filter(|i| *i > 0)
            .unwrap_or(entry.creation_ttl)
    };
    let max = limits.max_ttl_secs;
    let secs = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
    let mut expire = now.saturating_add(secs(wanted.min(max)));
    if entry.period == 0 {
        expire = expire.min(entry.creation_time.saturating_add(secs(max)));
    }
    if entry.explicit_max_ttl > 0 {
        expire = expire.min(
            entry
                .creation_time
                .saturating_add(secs(entry.explicit_max_ttl.min(max))),
        );
    }
    expire
}

/// What a caller asks of a new child token's lifetime.
#[derive(Clone, Copy, Debug, Default)]
pub struct LifetimeRequest {
    /// Requested TTL, seconds (`None` or 0: the default).
    pub ttl_secs: Option<u64>,
    /// Hard maximum life, seconds (0: none).
    pub explicit_max_ttl_secs: u64,
    /// Periodic renewal, seconds (0: not periodic).
    pub period_secs: u64,
}

/// Why a token lifetime is refused.
#[derive(Debug, PartialEq, Eq)]
pub enum LifetimeError {
    /// A periodic token needs `sudo` (as in Vault).
    PeriodNeedsSudo,
    /// The token would outlive its parent; `remaining` is what the parent has left.
    OutlivesParent {
        /// Seconds the parent has left.
        remaining: u64,
    },
}

impl std::fmt::Display for LifetimeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LifetimeError::PeriodNeedsSudo => {
                f.write_str("root or sudo privileges required to create periodic token")
            }
            LifetimeError::OutlivesParent { remaining } => write!(
                f,
                "a child token cannot outlive its parent without sudo: the parent expires in {remaining} s"
            ),
        }
    }
}

/// The TTL (seconds; 0 never expires) of a new token, or why it is refused. `parent_left`:
/// seconds the parent token has left (`None` if it never expires or there is no parent).
/// `root`: the new token carries the `root` policy (which, created without a TTL, never
/// expires, as in Vault). Every TTL, period and explicit maximum is capped by the limits.
pub fn plan_ttl(
    req: LifetimeRequest,
    limits: TokenLimits,
    sudo: bool,
    root: bool,
    parent_left: Option<u64>,
) -> Result<u64, LifetimeError> {
    if req.period_secs > 0 && !sudo {
        return Err(LifetimeError::PeriodNeedsSudo);
    }
    let cap = limits.max_ttl_secs;
    let ttl = if req.period_secs > 0 {
        req.period_secs.min(cap)
    } else {
        match req.ttl_secs {
            Some(t) if t > 0 => t.min(cap),
            _ if root => 0,
            _ => limits.default_ttl_secs.min(cap),
        }
    };
    let ttl = match req.explicit_max_ttl_secs.min(cap) {
        0 => ttl,
        max if ttl == 0 => max,
        max => ttl.min(max),
    };
    if let Some(left) = parent_left {
        let outlives = ttl == 0 || ttl > left;
        let asked = req.ttl_secs.is_some_and(|t| t > 0) || req.period_secs > 0 || root;
        if outlives && !sudo {
            if asked {
                return Err(LifetimeError::OutlivesParent { remaining: left });
            }
            // A default TTL quietly ends with the parent.
            return Ok(left.max(1));
        }
    }
    Ok(ttl)
}

/// A new random token string.
pub fn generate_token() -> String {
    format!("hvs.{}", random_base62(24))
}

/// A new random accessor.
pub fn generate_accessor() -> String {
    random_base62(24)
}

fn random_base62(len: usize) -> String {
    const ALPHABET: &[u8] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
    let mut rng = rand::rngs::OsRng;
    (0..len)
        .map(|_| ALPHABET[rng.gen_range(0..ALPHABET.len())] as char)
        .collect()
}

pub use crate::keys::{
    accessor as accessor_key, token as token_key, token_by_id as token_key_from_id,
    token_children as children_prefix, token_id as token_id_of_key,
};

#[cfg(test)]
mod tests {
    use super::*;

    fn req(ttl: Option<u64>, period: u64, max: u64) -> LifetimeRequest {
        LifetimeRequest {
            ttl_secs: ttl,
            explicit_max_ttl_secs: max,
            period_secs: period,
        }
    }

    #[test]
    fn lifetimes_follow_vault_and_never_outlive_the_parent_without_sudo() {
        let limits = TokenLimits {
            default_ttl_secs: 3600,
            max_ttl_secs: 7200,
        };
        assert_eq!(
            plan_ttl(req(None, 0, 0), limits, false, false, None),
            Ok(3600)
        );
        assert_eq!(
            plan_ttl(req(Some(1 << 40), 0, 0), limits, true, false, None),
            Ok(7200)
        );
        assert_eq!(
            plan_ttl(req(Some(600), 0, 60), limits, false, false, None),
            Ok(60)
        );
        assert_eq!(
            plan_ttl(req(None, 0, 0), limits, true, true, None),
            Ok(0),
            "root"
        );
        assert_eq!(
            plan_ttl(req(None, 60, 0), limits, false, false, None),
            Err(LifetimeError::PeriodNeedsSudo)
        );
        assert_eq!(
            plan_ttl(req(None, 1 << 40, 0), limits, true, false, None),
            Ok(7200)
        );
        assert_eq!(
            plan_ttl(req(Some(900), 0, 0), limits, false, false, Some(300)),
            Err(LifetimeError::OutlivesParent { remaining: 300 })
        );
        assert_eq!(
            plan_ttl(req(Some(900), 0, 0), limits, true, false, Some(300)),
            Ok(900),
            "sudo may"
        );
        assert_eq!(
            plan_ttl(req(None, 0, 0), limits, false, false, Some(300)),
            Ok(300),
            "a default TTL ends with the parent"
        );
        assert_eq!(
            plan_ttl(req(Some(200), 0, 0), limits, false, false, Some(300)),
            Ok(200)
        );
    }

    #[test]
    fn tokens_are_random_and_stored_hashed() {
        let a = generate_token();
        let b = generate_token();
        assert_ne!(a, b);
        assert!(a.starts_with("hvs.") && a.len() == 28);
        let key = String::from_utf8(token_key(&a)).unwrap();
        assert!(
            !key.contains(&a[4..]),
            "storage key must not contain the token"
        );
    }
}
