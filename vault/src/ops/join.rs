//! Registering a new node: the message a node sends the leader on its first start (which
//! consumes its pack, adds it as a learner with its own member certificate pinned, and
//! promotes it when the pack asks for a voter), the check `operator join` makes before
//! installing anything, and the peer channel's application lane that carries both.

use std::sync::Arc;

use coffer_raft::{
    AppHandler, ForwardError, Forwarder, MembershipChange, NodeAddr, PeerCaller, Refusal, Txn,
};
use serde::{Deserialize, Serialize};

use super::pack::{host_of, unix_now, PackRecord, PackUse};
use super::Vault;
use crate::audit::{AuditEvent, Outcome, Stage, Who};
use crate::keys::pack as pack_key;
use crate::rules::pack::PackMember;

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

impl Vault {
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
        let mut just_added = false;
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
            just_added = true;
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
        if just_added {
            // The node starts its Raft only once this answer reaches it, and asks again
            // until it is promoted (a learner that never answered is never promoted).
            return Ok(answer(
                "learner",
                format!("node {origin} is a learner until it has caught up"),
            ));
        }
        match self
            .engine
            .change_membership_local(MembershipChange::Promote { id: origin })
            .await
        {
            Ok(_) => Ok(answer("voter", format!("node {origin} is a voter"))),
            Err(coffer_raft::EngineError::Refused(why)) => Ok(answer("learner", why)),
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
