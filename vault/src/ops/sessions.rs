//! Node-local session tokens. A read-only standby cannot write a token to the replicated
//! state, yet users must be able to log in during an outage. So a login there issues a
//! token kept only in this node's memory: valid only on this node, expiring (at most
//! [`LOCAL_SESSION_MAX_TTL_SECS`]), not renewable, revoked by logout (`revoke-self`), and
//! gone when the node restarts. Existing replicated tokens keep working for reads.

use std::collections::HashMap;
use std::sync::Mutex;

use super::Vault;
use crate::clock;
use crate::error::{Result, VaultError};
use crate::rules::token::{generate_token, token_key, TokenEntry};
use crate::IssuedToken;

/// Longest a node-local session lasts.
pub const LOCAL_SESSION_MAX_TTL_SECS: u64 = 3600;
/// Most sessions one node keeps (a login storm cannot exhaust memory).
const MAX_SESSIONS: usize = 100_000;

/// Sessions by token storage key.
#[derive(Default)]
pub(crate) struct LocalSessions(Mutex<HashMap<Vec<u8>, TokenEntry>>);

impl Vault {
    /// Issues a node-local session for `entry` (a login on a standby).
    pub(crate) fn store_local_session(&self, mut entry: TokenEntry) -> Result<IssuedToken> {
        let now = clock::now().unix_timestamp();
        let ttl = entry.creation_ttl.min(LOCAL_SESSION_MAX_TTL_SECS);
        entry.creation_ttl = ttl;
        entry.expire_time = Some(now + ttl as i64);
        entry.explicit_max_ttl = ttl;
        entry.renewable = false;
        entry.meta.insert(
            "coffer_session".into(),
            format!("node-local:{}", self.node.node_id),
        );
        let token = generate_token();
        let mut sessions = self.sessions.0.lock().map_err(VaultError::internal)?;
        sessions.retain(|_, e| !e.expired(now));
        if sessions.len() >= MAX_SESSIONS {
            return Err(VaultError::Unavailable(
                "too many node-local sessions on this read-only node; retry later".into(),
            ));
        }
        sessions.insert(token_key(&token), entry.clone());
        Ok(IssuedToken { token, entry })
    }

    /// The live node-local session stored under `key`, if any.
    pub(crate) fn local_session(&self, key: &[u8]) -> Option<TokenEntry> {
        let sessions = self.sessions.0.lock().ok()?;
        let entry = sessions.get(key)?;
        (!entry.expired(clock::now().unix_timestamp())).then(|| entry.clone())
    }

    /// Ends the node-local session with this accessor; false if this node has none.
    pub(crate) fn revoke_local_session_by_accessor(&self, accessor: &str) -> bool {
        self.sessions
            .0
            .lock()
            .map(|mut s| {
                let before = s.len();
                s.retain(|_, e| e.accessor != accessor);
                s.len() < before
            })
            .unwrap_or(false)
    }

    /// The live node-local session with this accessor, if this node has one.
    pub fn local_session_by_accessor(&self, accessor: &str) -> Option<TokenEntry> {
        let now = clock::now().unix_timestamp();
        let sessions = self.sessions.0.lock().ok()?;
        sessions
            .values()
            .find(|e| e.accessor == accessor && !e.expired(now))
            .cloned()
    }

    /// `GET sys/coffer/sessions`: the node-local sessions this node issued while it was a
    /// read-only standby (live ones), for an operator to see and revoke by accessor.
    pub fn list_local_sessions(&self, auth: &super::Auth) -> Result<Vec<TokenEntry>> {
        auth.require_sudo(
            "sys/coffer/sessions",
            crate::rules::policy::Capability::Read,
        )?;
        let now = clock::now().unix_timestamp();
        let sessions = self.sessions.0.lock().map_err(VaultError::internal)?;
        let mut live: Vec<TokenEntry> = sessions
            .values()
            .filter(|e| !e.expired(now))
            .cloned()
            .collect();
        live.sort_by_key(|e| e.creation_time);
        Ok(live)
    }

    /// Accessors of this node's live node-local sessions.
    pub(crate) fn local_session_accessors(&self) -> Vec<String> {
        let now = clock::now().unix_timestamp();
        self.sessions
            .0
            .lock()
            .map(|s| {
                s.values()
                    .filter(|e| !e.expired(now))
                    .map(|e| e.accessor.clone())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Ends the node-local session under `key`; false if there is none.
    pub(crate) fn revoke_local_session(&self, key: &[u8]) -> bool {
        self.sessions
            .0
            .lock()
            .map(|mut s| s.remove(key).is_some())
            .unwrap_or(false)
    }
}
