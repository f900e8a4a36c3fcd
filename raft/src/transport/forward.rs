//! Serving clients on any node: a follower sends writes to the leader, and asks it for a read
//! index before a linearizable local read, over the same mutual-TLS peer channel. Connections
//! are pooled per leader: one request at a time per connection, as many connections as
//! concurrent requests need.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use openraft::network::RaftNetworkFactory;

use super::client::{PeerClient, PeerNetwork};
use super::{ForwardError, PeerIdentity, PeerRequest, PeerResponse};
use crate::txn::{Txn, TxnResult};
use crate::types::{NodeAddr, NodeId};

/// How long a forwarded request may take end to end.
const FORWARD_TIMEOUT: Duration = Duration::from_secs(10);
/// Idle connections kept per leader.
const MAX_IDLE: usize = 64;

/// Forwards client requests to the leader.
pub struct Forwarder {
    /// Builds clients with our identity.
    network: PeerNetwork,
    /// Idle clients by (leader, peer address, pinned fingerprint).
    idle: Mutex<HashMap<(NodeId, String, String), Vec<PeerClient>>>,
}

impl Forwarder {
    /// A forwarder presenting `identity`.
    pub fn new(identity: Arc<PeerIdentity>) -> Self {
        Self {
            network: PeerNetwork::new(identity),
            idle: Mutex::new(HashMap::new()),
        }
    }

    async fn call(
        &self,
        leader: NodeId,
        addr: &NodeAddr,
        request: PeerRequest,
    ) -> Result<PeerResponse, ForwardError> {
        self.call_within(leader, addr, request, FORWARD_TIMEOUT)
            .await
    }

    async fn call_within(
        &self,
        leader: NodeId,
        addr: &NodeAddr,
        request: PeerRequest,
        ttl: Duration,
    ) -> Result<PeerResponse, ForwardError> {
        let key = (leader, addr.peer_addr.clone(), addr.cert_sha256.clone());
        // A pooled connection the leader closed (it crashed or restarted) is dropped before
        // use: a request sent on it would have an unknown outcome.
        let pooled = self.idle.lock().ok().and_then(|mut m| {
            let pool = m.get_mut(&key)?;
            while let Some(c) = pool.pop() {
                if !c.connection_is_stale() {
                    return Some(c);
                }
            }
            None
        });
        let mut client = match pooled {
            Some(c) => c,
            None => self.network.clone().new_client(leader, addr).await,
        };
        let response = client.exchange(request, ttl).await?;
        if let Ok(mut m) = self.idle.lock() {
            let pool = m.entry(key).or_default();
            if pool.len() < MAX_IDLE {
                pool.push(client);
            }
        }
        Ok(response)
    }

    /// Runs `txn` on the leader; returns its result and the log index it was committed at.
    pub async fn write(
        &self,
        leader: NodeId,
        addr: &NodeAddr,
        txn: Txn,
    ) -> Result<(TxnResult, u64), ForwardError> {
        match self.call(leader, addr, PeerRequest::Forward(txn)).await? {
            PeerResponse::Forwarded(r) => r,
            other => Err(unexpected("a forwarded write", other)),
        }
    }

    /// Sends an application message to `target` (any member: a follower relays it to its
    /// leader). Used by a node that is not a member yet.
    pub async fn app(
        &self,
        target: NodeId,
        addr: &NodeAddr,
        body: Vec<u8>,
    ) -> Result<Vec<u8>, ForwardError> {
        match self.call(target, addr, PeerRequest::App(body)).await? {
            PeerResponse::App(r) => r,
            other => Err(unexpected("an application message", other)),
        }
    }

    /// Relays `origin`'s application message to the leader.
    pub async fn app_relayed(
        &self,
        leader: NodeId,
        addr: &NodeAddr,
        origin: super::PeerCaller,
        body: Vec<u8>,
    ) -> Result<Vec<u8>, ForwardError> {
        match self
            .call(leader, addr, PeerRequest::AppRelayed { origin, body })
            .await?
        {
            PeerResponse::App(r) => r,
            other => Err(unexpected("a relayed message", other)),
        }
    }

    /// Asks the leader to change the membership.
    pub async fn membership(
        &self,
        leader: NodeId,
        addr: &NodeAddr,
        change: crate::engine::membership::MembershipChange,
    ) -> Result<u64, ForwardError> {
        match self
            .call(leader, addr, PeerRequest::Membership(change))
            .await?
        {
            PeerResponse::Membership(r) => r,
            other => Err(unexpected("a membership change", other)),
        }
    }

    /// The leader's view of the members.
    pub async fn members(
        &self,
        leader: NodeId,
        addr: &NodeAddr,
    ) -> Result<Vec<crate::engine::membership::MemberStatus>, ForwardError> {
        match self.call(leader, addr, PeerRequest::Members).await? {
            PeerResponse::Members(r) => r,
            other => Err(unexpected("a members request", other)),
        }
    }

    /// `target`'s membership view, within `ttl` (a lagging node asks its members).
    pub async fn roster(
        &self,
        target: NodeId,
        addr: &NodeAddr,
        ttl: Duration,
    ) -> Result<super::Roster, ForwardError> {
        match self
            .call_within(target, addr, PeerRequest::Roster, ttl)
            .await?
        {
            PeerResponse::Roster(r) => Ok(r),
            other => Err(unexpected("a roster request", other)),
        }
    }

    /// The leader's read index.
    pub async fn read_index(&self, leader: NodeId, addr: &NodeAddr) -> Result<u64, ForwardError> {
        match self.call(leader, addr, PeerRequest::ReadIndex).await? {
            PeerResponse::ReadIndex(r) => r,
            other => Err(unexpected("a read index request", other)),
        }
    }
}

fn unexpected(what: &str, answer: PeerResponse) -> ForwardError {
    match answer {
        PeerResponse::Refused(why) => ForwardError::Refused(why),
        other => ForwardError::OutcomeUnknown(format!("unexpected answer to {what}: {other:?}")),
    }
}
