//! Growing the cluster: bootstrap packs (made on any unsealed node, recorded as pending in
//! the replicated state) and the registration a new node sends its leader on first start
//! (which consumes the pack, adds the node as a learner, and promotes it when asked).

use std::sync::Arc;

use coffer_raft::{
    AppHandler, ForwardError, Forwarder, MembershipChange, NodeAddr, PeerCaller, Refusal, Txn,
};
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use super::auth::Auth;
use super::{Sealing, Vault};
use crate::audit::{AuditEvent, Outcome, Stage, Who};
use crate::error::{Result, VaultError};
use crate::rules::pack::{seal_pack, PackContents, PackMember};
use crate::rules::policy::Capability;

/// Shortest pack validity (one second: a pack can be made to expire at once, to rehearse).
pub const PACK_TTL_MIN_SECS: u64 = 1;
/// Longest pack validity: 30 days.
pub const PACK_TTL_MAX_SECS: u64 = 30 * 24 * 3600;
/// Default pack validity: 24 h.
pub const PACK_TTL_DEFAULT_SECS: u64 = 24 * 3600;

/// What `operator pack create` asks for.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PackRequest {
    /// The new node's id.
    pub node_id: u64,
    /// Its HTTPS API address (`https://host:port`).
    pub api_addr: String,
    /// Its peer address (`host:port`).
    pub peer_addr: String,
    /// Promote it to voter once caught up.
    #[serde(default)]
    pub voter: bool,
    /// Put the root key in the pack so the node unseals itself (a key-file seal).
    #[serde(default)]
    pub include_unseal_key: bool,
    /// Validity in seconds (default 24 h).
    #[serde(default)]
    pub ttl_secs: Option<u64>,
    /// The passphrase to encrypt the pack under. Never logged or audited.
    pub passphrase: String,
}

impl std::fmt::Debug for PackRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PackRequest")
            .field("node_id", &self.node_id)
            .field("voter", &self.voter)
            .finish_non_exhaustive()
    }
}

/// What was made (the pack bytes go to the caller separately).
#[derive(Clone, Debug, Serialize)]
pub struct PackSummary {
    /// The pack's id.
    pub pack_id: String,
    /// The node it admits.
    pub node_id: u64,
    /// Whether it will be promoted to voter.
    pub voter: bool,
    /// RFC 3339 expiry.
    pub expires_at: String,
    /// Applied index of the snapshot inside.
    pub snapshot_bytes: usize,
}

/// A pack as the cluster remembers it.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct PackRecord {
    node_id: u64,
    voter: bool,
    api_addr: String,
    peer_addr: String,
    created_at: u64,
    expires_at: u64,
    /// SHA-256 of the pack's registration certificate: the only one that may register.
    pack_cert_sha256: String,
    /// Set when a node registered with it.
    used: Option<PackUse>,
}

/// Who consumed a pack.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct PackUse {
    /// Unix seconds.
    at: u64,
    /// The join attempt (random per `operator join`), so the same joining node may repeat
    /// its registration while a second copy of the pack is refused.
    instance: String,
    /// The member certificate issued for the node's own key, PEM (public; a repeated
    /// registration gets the same one back).
    member_cert_pem: String,
    /// SHA-256 of `member_cert_pem`.
    member_cert_sha256: String,
    /// Whether the node was added to the membership. After that the pack never adds it
    /// again: a node removed later joins again only from a new pack.
    added: bool,
}

/// A new node's first message to the cluster.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct JoinRequest {
    /// The pack's id.
    pub pack_id: String,
    /// The cluster the pack is for.
    pub cluster_id: String,
    /// Random id of this `operator join` (repeated registrations carry the same one).
    pub instance: String,
    /// Where the node is reached.
    pub api_addr: String,
    /// See `api_addr`.
    pub peer_addr: String,
    /// A certificate signing request for the key the node made for itself (PEM; empty in
    /// a `Check`): its member certificate is issued for that key.
    #[serde(default)]
    pub csr_pem: String,
}

/// The leader's answer to a [`JoinRequest`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JoinAnswer {
    /// The node's role now: `learner` or `voter`.
    pub role: String,
    /// Whether the pack asked for a voter (then the node repeats the request until it is one).
    pub wants_voter: bool,
    /// What happened, for the node's log.
    pub message: String,
    /// The node's member certificate (PEM), pinned in the membership.
    pub cert_pem: String,
}

/// Messages on the peer channel's application lane.
#[derive(Debug, Serialize, Deserialize)]
enum AppMessage {
    /// Register with a pack (consumes it).
    Join(JoinRequest),
    /// Would this pack be accepted? (`operator join` asks before installing anything.)
    Check(JoinRequest),
}

use crate::keys::pack as pack_key;

fn unix_now() -> u64 {
    u64::try_from(crate::clock::now().unix_timestamp()).unwrap_or(0)
}

fn host_of(addr: &str) -> &str {
    let hostport = addr.strip_prefix("https://").unwrap_or(addr);
    let hostport = hostport.trim_end_matches('/');
    let host = hostport.rsplit_once(':').map_or(hostport, |(h, _)| h);
    host.trim_start_matches('[').trim_end_matches(']')
}

fn check_addr(field: &str, value: &str, https: bool) -> Result<()> {
    let rest = if https {
        value.strip_prefix("https://").ok_or_else(|| {
            VaultError::InvalidRequest(format!("{field}: {value:?} must start with https://"))
        })?
    } else {
        value
    };
    let ok = rest
        .trim_end_matches('/')
        .rsplit_once(':')
        .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok_and(|p| p != 0));
    if ok {
        Ok(())
    } else {
        Err(VaultError::InvalidRequest(format!(
            "{field}: {value:?} needs a host and a non-zero port"
        )))
    }
}

impl Vault {
    /// Makes a bootstrap pack for a new node: issues its certificates from the cluster CA,
    /// records the pack as pending, and returns the encrypted file with a summary.
    pub async fn create_pack(
        &self,
        auth: &Auth,
        req: PackRequest,
    ) -> Result<(Vec<u8>, PackSummary)> {
        auth.require_sudo("sys/coffer/packs", Capability::Update)?;
        if req.include_unseal_key && !auth.is_root() {
            return Err(VaultError::Forbidden(
                "a pack with the unseal key hands out the root key: only a root token may make one"
                    .into(),
            ));
        }
        if req.node_id == 0 {
            return Err(VaultError::InvalidRequest(
                "node_id: must be at least 1".into(),
            ));
        }
        check_addr("api_addr", &req.api_addr, true)?;
        check_addr("peer_addr", &req.peer_addr, false)?;
        if req.passphrase.chars().count() < 12 {
            return Err(VaultError::InvalidRequest(
                "passphrase: at least 12 characters".into(),
            ));
        }
        let ttl = req.ttl_secs.unwrap_or(PACK_TTL_DEFAULT_SECS);
        if !(PACK_TTL_MIN_SECS..=PACK_TTL_MAX_SECS).contains(&ttl) {
            return Err(VaultError::InvalidRequest(format!(
                "ttl: must be between {PACK_TTL_MIN_SECS} s and {PACK_TTL_MAX_SECS} s"
            )));
        }
        let members = self.engine.member_addrs();
        if let Some(addr) = members.get(&req.node_id) {
            return Err(VaultError::InvalidRequest(format!(
                "node_id: node {} is already a member ({addr}); remove it first",
                req.node_id
            )));
        }
        let config = self
            .seal_config()?
            .ok_or_else(|| VaultError::InvalidRequest("the vault is not initialized".into()))?;
        let stored = self.cluster_ca()?.ok_or_else(|| {
            VaultError::Internal("the cluster CA key is not in the replicated state".into())
        })?;
        let ca = coffer_tls::CertificateAuthority::from_pem(&stored.cert_pem, &stored.key_pem)
            .map_err(VaultError::internal)?;
        let peer_host = host_of(&req.peer_addr).to_string();
        let api_host = host_of(&req.api_addr).to_string();
        // The pack's certificate only registers: the member certificate is issued then, for
        // a key the node makes itself (see `register_join_inner`).
        let node_cert = ca
            .issue_node(req.node_id, &[peer_host])
            .map_err(VaultError::internal)?;
        let pack_cert_sha256 =
            coffer_tls::fingerprint_pem(&node_cert.cert_pem).map_err(VaultError::internal)?;
        let mut api_hosts = vec![api_host, "localhost".to_string()];
        api_hosts.dedup();
        let api_cert = ca.issue_server(&api_hosts).map_err(VaultError::internal)?;

        let pack_id = {
            let mut id = [0u8; 16];
            rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut id);
            hex::encode(id)
        };
        let created_at = unix_now();
        let record = PackRecord {
            node_id: req.node_id,
            voter: req.voter,
            api_addr: req.api_addr.clone(),
            peer_addr: req.peer_addr.clone(),
            created_at,
            expires_at: created_at + ttl,
            pack_cert_sha256,
            used: None,
        };
        let key = pack_key(&pack_id);
        let sealed = self.seal_record(&key, &record)?;
        let txn = Txn::new().unchanged(key.clone(), None).put(key, sealed);
        if !self.engine.write(txn).await?.succeeded {
            return Err(VaultError::internal("pack id collision"));
        }
        let unseal_key_hex = if req.include_unseal_key {
            match &*self.sealing.read().map_err(VaultError::internal)? {
                Sealing::Unsealed { root, .. } => Some(hex::encode(root.expose())),
                Sealing::Sealed(_) => return Err(VaultError::Sealed),
            }
        } else {
            None
        };
        let snapshot = self.engine.snapshot_bytes().await?;
        let contents = PackContents {
            pack_id: pack_id.clone(),
            cluster_id: config.cluster_id.clone(),
            cluster_name: config.cluster_name.clone(),
            created_at,
            expires_at: record.expires_at,
            node_id: req.node_id,
            voter: req.voter,
            api_addr: req.api_addr.clone(),
            peer_addr: req.peer_addr.clone(),
            ca_cert_pem: stored.cert_pem.clone(),
            node_cert_pem: node_cert.cert_pem.clone(),
            node_key_pem: node_cert.key_pem.to_string(),
            api_cert_pem: api_cert.cert_pem.clone(),
            api_key_pem: api_cert.key_pem.to_string(),
            members: members
                .iter()
                .map(|(id, a)| PackMember {
                    id: *id,
                    api_addr: a.api_addr.clone(),
                    peer_addr: a.peer_addr.clone(),
                    cert_sha256: a.cert_sha256.clone(),
                })
                .collect(),
            unseal_key_hex,
            snapshot,
        };
        let snapshot_bytes = contents.snapshot.len();
        let passphrase = Zeroizing::new(req.passphrase.clone());
        let file = tokio::task::spawn_blocking(move || seal_pack(&contents, &passphrase))
            .await
            .map_err(VaultError::internal)?
            .map_err(VaultError::internal)?;
        tracing::info!(
            node = req.node_id,
            voter = req.voter,
            "bootstrap pack created"
        );
        Ok((
            file,
            PackSummary {
                pack_id,
                node_id: req.node_id,
                voter: req.voter,
                expires_at: crate::clock::rfc3339(
                    time::OffsetDateTime::from_unix_timestamp(record.expires_at as i64)
                        .unwrap_or_else(|_| crate::clock::now()),
                ),
                snapshot_bytes,
            },
        ))
    }

    /// The handler the peer transport calls on the leader for application messages.
    pub fn peer_app_handler(self: &Arc<Self>) -> AppHandler {
        let vault = Arc::downgrade(self);
        Arc::new(move |origin, body| {
            let vault = vault.clone();
            Box::pin(async move {
                let vault = vault.upgrade().ok_or("the node is shutting down")?;
                let message: AppMessage = serde_json::from_slice(&body)
                    .map_err(|e| format!("unreadable message: {e}"))?;
                let outcome = match message {
                    AppMessage::Join(req) => match vault.register_join(&origin, req).await {
                        Ok(answer) => serde_json::to_vec(&answer).map_err(|e| e.to_string()),
                        Err(e) => Err(e),
                    },
                    AppMessage::Check(req) => vault.check_pack(&origin, &req).map(|_| Vec::new()),
                };
                if let Err(why) = &outcome {
                    let peer = format!("node {}", origin.node_id);
                    vault
                        .engine
                        .refusals()
                        .record(Refusal::Registration, &peer, why);
                }
                outcome
            })
        })
    }

    /// Consumes a pack for the node `origin` (whose certificate presented it) and makes the
    /// node a learner, then a voter if the pack says so and it has caught up. Repeating it
    /// with the same pack from the same node is harmless: that is how a joining node waits
    /// for its promotion, and survives a leader change.
    async fn register_join(
        &self,
        caller: &PeerCaller,
        req: JoinRequest,
    ) -> std::result::Result<JoinAnswer, String> {
        let origin = caller.node_id;
        let who = Who {
            name: format!("node {origin}"),
            method: "bootstrap-pack".into(),
            client_addr: req.peer_addr.clone(),
            ..Default::default()
        };
        let request = AuditEvent::new(
            Stage::Request,
            who,
            "join",
            "sys/coffer/join",
            Outcome::Pending,
        );
        // Durable before the pack is consumed or the membership changes.
        if let Err(e) = self.audit(request.clone()).await {
            return Err(format!("the leader cannot audit the join: {e}"));
        }
        let outcome = self.register_join_inner(caller, &req).await;
        let event = AuditEvent {
            kind: "response".into(),
            outcome: match &outcome {
                Ok(_) => Outcome::Ok,
                Err(_) => Outcome::Denied,
            }
            .as_str()
            .into(),
            ..request
        };
        if let Err(e) = self.audit(event).await {
            return Err(format!("the leader cannot audit the join: {e}"));
        }
        outcome
    }

    /// Checks that `caller` may join with this pack, without consuming it.
    fn check_pack(
        &self,
        caller: &PeerCaller,
        req: &JoinRequest,
    ) -> std::result::Result<(), String> {
        self.pack_for(caller, req).map(|_| ())
    }

    /// The pack record, if `caller` may use it now: the pack's own certificate while the
    /// pack is unused and unexpired; the same join attempt again (with the pack's
    /// certificate, or the member certificate it was given) once it is used.
    fn pack_for(
        &self,
        caller: &PeerCaller,
        req: &JoinRequest,
    ) -> std::result::Result<super::records::Record<PackRecord>, String> {
        let origin = caller.node_id;
        let config = self
            .seal_config()
            .map_err(|e| e.to_string())?
            .ok_or("the cluster is not initialized")?;
        if req.cluster_id != config.cluster_id {
            return Err(format!(
                "pack from another cluster: it is for cluster {}, this is cluster {}",
                req.cluster_id, config.cluster_id
            ));
        }
        if self.is_sealed() {
            return Err(
                "the leader is sealed; unseal it, then the node registers by itself".into(),
            );
        }
        let key = pack_key(&req.pack_id);
        let record = self
            .read_record::<PackRecord>(&key)
            .map_err(|e| e.to_string())?
            .ok_or("unknown pack: this cluster never issued it (or it was revoked)")?;
        let pack = &record.value;
        if pack.node_id != origin {
            return Err(format!(
                "the pack is for node {} but the certificate presenting it is node {origin}'s",
                pack.node_id
            ));
        }
        let presented = caller.cert_sha256.as_str();
        let expired = unix_now() >= pack.expires_at;
        match &pack.used {
            // A registration cut short (the node was never added) cannot finish after expiry.
            Some(used) if used.instance == req.instance && !used.added && expired => Err(format!(
                "pack expired at {} (unix seconds) before the node was added; make a new one",
                pack.expires_at
            )),
            Some(used)
                if used.instance == req.instance
                    && (presented == pack.pack_cert_sha256
                        || presented == used.member_cert_sha256) =>
            {
                Ok(record)
            }
            Some(used) => Err(format!(
                "pack already used (by a node that joined at {} unix seconds); make a new one",
                used.at
            )),
            None if expired => Err(format!(
                "pack expired at {} (unix seconds); make a new one",
                pack.expires_at
            )),
            None if presented != pack.pack_cert_sha256 => Err(format!(
                "the certificate presenting the pack is not the pack's own certificate for node {origin}"
            )),
            None => Ok(record),
        }
    }

    async fn register_join_inner(
        &self,
        caller: &PeerCaller,
        req: &JoinRequest,
    ) -> std::result::Result<JoinAnswer, String> {
        let origin = caller.node_id;
        let record = self.pack_for(caller, req)?;
        let key = pack_key(&req.pack_id);
        let pack = record.value.clone();
        let used = match &pack.used {
            Some(used) => used.clone(),
            None => {
                // Never consume a pack for a node id that is taken: the pack stays usable
                // once the id is free, and cannot add a second node under it later.
                if let Some(addr) = self.engine.member_addrs().get(&origin) {
                    return Err(format!(
                        "node {origin} is already a member ({addr}); remove it first"
                    ));
                }
                let member_cert_pem = self.issue_member_cert(&pack, origin, &req.csr_pem)?;
                let used = PackUse {
                    at: unix_now(),
                    instance: req.instance.clone(),
                    member_cert_sha256: coffer_tls::fingerprint_pem(&member_cert_pem)
                        .map_err(|e| e.to_string())?,
                    member_cert_pem,
                    added: false,
                };
                self.update_pack(&key, &record, &used).await?;
                used
            }
        };
        let addr = NodeAddr {
            api_addr: pack.api_addr.clone(),
            peer_addr: pack.peer_addr.clone(),
            cert_sha256: used.member_cert_sha256.clone(),
        };
        if used.added {
            if self.engine.member_addrs().get(&origin) != Some(&addr) {
                return Err(format!(
                    "node {origin} was removed after it joined with this pack; make a new pack to join again"
                ));
            }
        } else {
            self.engine
                .change_membership_local(MembershipChange::AddLearner { id: origin, addr })
                .await
                .map_err(|e| e.to_string())?;
            let current = self
                .read_record::<PackRecord>(&key)
                .map_err(|e| e.to_string())?
                .ok_or("the pack record vanished during registration")?;
            let added = PackUse {
                added: true,
                ..used.clone()
            };
            self.update_pack(&key, &current, &added).await?;
        }
        let answer = |role: &str, message: String| JoinAnswer {
            role: role.into(),
            wants_voter: pack.voter,
            message,
            cert_pem: used.member_cert_pem.clone(),
        };
        if !pack.voter {
            return Ok(answer("learner", format!("node {origin} is a learner")));
        }
        match self
            .engine
            .change_membership_local(MembershipChange::Promote { id: origin })
            .await
        {
            Ok(_) => Ok(answer("voter", format!("node {origin} is a voter"))),
            Err(coffer_raft::EngineError::Membership(why)) => Ok(answer("learner", why)),
            Err(e) => Err(e.to_string()),
        }
    }

    /// The member certificate for node `origin`, issued by the cluster CA for the key in the
    /// node's signing request (the request's signature proves the node holds that key).
    fn issue_member_cert(
        &self,
        pack: &PackRecord,
        origin: u64,
        csr_pem: &str,
    ) -> std::result::Result<String, String> {
        if csr_pem.is_empty() {
            return Err("the registration carries no certificate signing request".into());
        }
        let stored = self
            .cluster_ca()
            .map_err(|e| e.to_string())?
            .ok_or("the cluster CA key is not in the replicated state")?;
        let ca = coffer_tls::CertificateAuthority::from_pem(&stored.cert_pem, &stored.key_pem)
            .map_err(|e| e.to_string())?;
        ca.issue_node_for_request(origin, csr_pem, &[host_of(&pack.peer_addr).to_string()])
            .map_err(|e| format!("the registration's signing request is refused: {e}"))
    }

    /// Writes the pack record with `used`, guarded on `current` being what is stored.
    async fn update_pack(
        &self,
        key: &[u8],
        current: &super::records::Record<PackRecord>,
        used: &PackUse,
    ) -> std::result::Result<(), String> {
        let mut next = current.value.clone();
        next.used = Some(used.clone());
        let sealed = self.seal_record(key, &next).map_err(|e| e.to_string())?;
        let txn = Txn::new()
            .unchanged(key.to_vec(), Some(&current.entry))
            .put(key.to_vec(), sealed);
        let done = self.engine.write(txn).await.map_err(|e| e.to_string())?;
        if done.succeeded {
            Ok(())
        } else {
            Err("pack already used (by a concurrent registration)".into())
        }
    }
}

/// A joining node registers with the cluster: asks each member in turn (a follower relays to
/// its leader) and returns the leader's answer. Errors say which refusal happened.
pub async fn send_join(
    forwarder: &Forwarder,
    members: &[PackMember],
    req: &JoinRequest,
) -> std::result::Result<JoinAnswer, String> {
    let answer = send_app(forwarder, members, &AppMessage::Join(req.clone())).await?;
    serde_json::from_slice(&answer).map_err(|e| e.to_string())
}

/// Asks the cluster whether it would accept this registration, without consuming the pack.
/// `Ok(Some(why))` when no member could be reached (the caller may go on offline).
pub async fn check_join(
    forwarder: &Forwarder,
    members: &[PackMember],
    req: &JoinRequest,
) -> std::result::Result<Option<String>, String> {
    match send_app(forwarder, members, &AppMessage::Check(req.clone())).await {
        Ok(_) => Ok(None),
        Err(SendError::Refused(why)) => Err(why),
        Err(SendError::Unreachable(why)) => Ok(Some(why)),
    }
}

/// Why a message to the cluster got no answer.
#[derive(Debug)]
enum SendError {
    /// The cluster answered no.
    Refused(String),
    /// No member answered.
    Unreachable(String),
}

impl From<SendError> for String {
    fn from(e: SendError) -> String {
        match e {
            SendError::Refused(w) | SendError::Unreachable(w) => w,
        }
    }
}

async fn send_app(
    forwarder: &Forwarder,
    members: &[PackMember],
    message: &AppMessage,
) -> std::result::Result<Vec<u8>, SendError> {
    let body = serde_json::to_vec(message).map_err(|e| SendError::Refused(e.to_string()))?;
    let mut last = String::from("the pack lists no members");
    for m in members {
        let addr = NodeAddr {
            api_addr: m.api_addr.clone(),
            peer_addr: m.peer_addr.clone(),
            cert_sha256: m.cert_sha256.clone(),
        };
        match forwarder.app(m.id, &addr, body.clone()).await {
            Ok(answer) => return Ok(answer),
            Err(ForwardError::Refused(why)) => return Err(SendError::Refused(why)),
            // Our certificate comes from the pack's CA: a node that does not share it is
            // another cluster.
            Err(ForwardError::Untrusted(why)) => {
                return Err(SendError::Refused(format!(
                    "node {} at {} is not part of this pack's cluster (its certificate and ours do not share a CA): {why}",
                    m.id, m.peer_addr
                )))
            }
            Err(e) => last = format!("node {} at {}: {e}", m.id, m.peer_addr),
        }
    }
    Err(SendError::Unreachable(last))
}
