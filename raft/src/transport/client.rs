//! Dialing peers: openraft's network factory. `new_client` only records where the peer is;
//! the connection is made on first use, kept open, and dropped (then redialed) after any
//! failure, so a dead peer costs one connect timeout per RPC attempt, never a blocked task.

use std::sync::Arc;
use std::time::Duration;

use openraft::error::{
    InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Timeout, Unreachable,
};
use openraft::network::{Backoff, RPCOption, RPCTypes, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

use super::codec::{read_frame, write_frame};
use super::{ForwardError, PeerIdentity, PeerRequest, PeerResponse};
use crate::engine::membership::Contacts;
use crate::types::{NodeAddr, NodeId, TypeConfig};

/// How long to wait for a TCP connection to a peer.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// How long an exchange that openraft stopped waiting for still waits for its answer (see
/// [`PeerClient::call`]), at least: a later answer is dropped with its connection.
const LATE_ANSWER_WAIT: Duration = Duration::from_secs(10);

/// Above this many entries per AppendEntries, a peer's reduced limit is lifted (openraft's
/// `max_payload_entries` applies again).
const MAX_ENTRIES_LIMIT: u64 = 1 << 16;
/// While a peer's log end is unknown, an AppendEntries carrying more than this many bytes
/// of entries first asks whether the peer holds them (`AppendKnown`): a small one costs
/// less to send than the extra exchange.
const KNOWN_PROBE_BYTES: usize = 64 << 10;
/// See [`PeerClient::known_failures`].
const KNOWN_GIVE_UP: u8 = 3;

/// The first pause after a failed RPC to a peer, doubled after each further failure up to
/// [`MAX_BACKOFF`] and reset by a success (openraft waits 500 ms after every failure).
const FIRST_BACKOFF: Duration = Duration::from_millis(20);
/// The longest pause between attempts at a peer that keeps failing.
const MAX_BACKOFF: Duration = Duration::from_millis(500);

/// The factory openraft asks for clients.
#[derive(Clone)]
pub struct PeerNetwork {
    /// Our certificate, key and the CA.
    identity: Arc<PeerIdentity>,
    /// When each peer last answered.
    contacts: Contacts,
    /// Idle connections by peer, handed to the next client for that peer. openraft makes a
    /// fresh client for every leadership check (each linearizable read on the leader); this
    /// keeps those from costing a TLS handshake each.
    idle: IdlePool,
}

type Conn = TlsStream<TcpStream>;

/// What a request's exchange task hands back: its connection and the answer, or why there
/// is none.
type Exchanged = Result<(Conn, PeerResponse), String>;
/// Where that arrives.
type LateAnswer = tokio::sync::oneshot::Receiver<Exchanged>;

/// Idle connections by peer.
type IdlePool = Arc<std::sync::Mutex<std::collections::HashMap<PoolKey, Vec<Conn>>>>;

/// Pooled connections are to one node id at one address with one pinned certificate: when
/// the membership re-pins an id (removed and joined again), old connections are not reused.
type PoolKey = (NodeId, String, String);

/// Why a connection to a peer could not be made.
struct DialError {
    /// What happened, naming the peer.
    message: String,
    /// The peer's certificate is not from our CA, or the peer refused ours: whoever
    /// answers at that address belongs to another cluster.
    untrusted: bool,
}

impl From<String> for DialError {
    fn from(message: String) -> Self {
        Self {
            message,
            untrusted: false,
        }
    }
}

/// Whether a failed handshake means the two sides do not share a CA (as opposed to a
/// network failure or a peer of our cluster with another node id).
fn rejects_our_ca(e: &std::io::Error) -> bool {
    use rustls::AlertDescription as Alert;
    let Some(tls) = e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) else {
        return false;
    };
    matches!(
        tls,
        rustls::Error::InvalidCertificate(_)
            | rustls::Error::AlertReceived(Alert::UnknownCA | Alert::BadCertificate)
    )
}

/// Idle connections kept per peer.
const MAX_IDLE_PER_PEER: usize = 32;

/// Whether an idle connection is known dead: the peer closed it (it crashed or restarted) or
/// sent something unasked. Checked without waiting.
fn is_stale(conn: &Conn) -> bool {
    use futures::FutureExt;
    let mut byte = [0u8; 1];
    // Ready at once (EOF, an error or unasked bytes) means the connection is unusable.
    conn.get_ref().0.peek(&mut byte).now_or_never().is_some()
}

impl PeerNetwork {
    /// A network presenting `identity`.
    pub fn new(identity: Arc<PeerIdentity>) -> Self {
        Self {
            identity,
            contacts: Contacts::default(),
            idle: Arc::default(),
        }
    }

    /// When each peer last answered an RPC (shared with every client this network makes).
    pub fn contacts(&self) -> Contacts {
        self.contacts.clone()
    }
}

impl RaftNetworkFactory<TypeConfig> for PeerNetwork {
    type Network = PeerClient;

    async fn new_client(&mut self, target: NodeId, node: &NodeAddr) -> PeerClient {
        PeerClient {
            target,
            addr: node.peer_addr.clone(),
            pin: node.cert_sha256.clone(),
            identity: self.identity.clone(),
            conn: None,
            late: None,
            entries_limit: None,
            peer_log_end: None,
            known_failures: 0,
            contacts: self.contacts.clone(),
            idle: self.idle.clone(),
        }
    }
}

/// A client to one peer.
pub struct PeerClient {
    /// The peer's node id; its certificate must bind it.
    target: NodeId,
    /// `host:port` of its peer listener.
    addr: String,
    /// The fingerprint the membership pins for it (empty: none known, e.g. a pack's member
    /// list from before pinning; then the CA and the node id are all that is checked).
    pin: String,
    /// Our identity.
    identity: Arc<PeerIdentity>,
    /// The open connection, if any.
    conn: Option<TlsStream<TcpStream>>,
    /// The answer to a request openraft stopped waiting for, still on its way (see
    /// [`PeerClient::call`]).
    late: Option<LateAnswer>,
    /// At most this many entries per AppendEntries, after one took longer than openraft
    /// waits (see `append_entries`); `None`: openraft's own limit.
    entries_limit: Option<u64>,
    /// One past the last log index the peer is known to hold, from its answers to this
    /// client, and whether its log is known to end there (`false`: it may hold more, as
    /// when it held every id it was asked about); `None` while unknown (a new leader's
    /// first exchanges).
    peer_log_end: Option<(u64, bool)>,
    /// `AppendKnown` exchanges in a row that failed to reach the peer; at
    /// [`KNOWN_GIVE_UP`] this client sends whole entries only (a peer that predates it
    /// closes the connection on the request it cannot decode).
    known_failures: u8,
    /// Where answers are recorded.
    contacts: Contacts,
    /// The network's idle connections (this client takes one and gives it back on drop).
    idle: IdlePool,
}

impl Drop for PeerClient {
    fn drop(&mut self) {
        if let Some(conn) = self.conn.take() {
            park(&self.idle, self.pool_key(), conn);
        }
    }
}

/// Puts an idle connection into the pool, unless the pool for that peer is full.
fn park(idle: &IdlePool, key: PoolKey, conn: Conn) {
    if let Ok(mut idle) = idle.lock() {
        let pool = idle.entry(key).or_default();
        if pool.len() < MAX_IDLE_PER_PEER {
            pool.push(conn);
        }
    }
}

type RpcErr<E = RaftError<NodeId>> = RPCError<NodeId, NodeAddr, E>;

fn unreachable<E: std::error::Error>(msg: impl std::fmt::Display) -> RpcErr<E> {
    RPCError::Unreachable(Unreachable::new(&std::io::Error::other(msg.to_string())))
}

impl PeerClient {
    fn pool_key(&self) -> PoolKey {
        (self.target, self.addr.clone(), self.pin.clone())
    }

    /// A TCP connection to the peer, from this node's own address when it has one.
    async fn dial(&self) -> std::io::Result<TcpStream> {
        let target = tokio::net::lookup_host(&self.addr)
            .await?
            .next()
            .ok_or_else(|| std::io::Error::other("the address resolves to nothing"))?;
        let socket = match target {
            std::net::SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
            std::net::SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
        };
        if let Some(ip) = self.identity.source_ip {
            if ip.is_ipv4() == target.is_ipv4() {
                socket.bind(std::net::SocketAddr::new(ip, 0))?;
            }
        }
        socket.connect(target).await
    }

    /// An idle pooled connection to this peer, or a new one.
    async fn connect(&self) -> Result<Conn, DialError> {
        let pooled = self.idle.lock().ok().and_then(|mut idle| {
            let pool = idle.get_mut(&self.pool_key())?;
            while let Some(conn) = pool.pop() {
                if !is_stale(&conn) {
                    return Some(conn);
                }
            }
            None
        });
        match pooled {
            Some(conn) => Ok(conn),
            None => self.dial_tls().await,
        }
    }

    async fn dial_tls(&self) -> Result<Conn, DialError> {
        let id = &self.identity;
        let pin = (!self.pin.is_empty()).then_some(self.pin.as_str());
        let config =
            coffer_tls::peer_client_config(&id.ca_pem, &id.cert_pem, &id.key_pem, self.target, pin)
                .map_err(|e| e.to_string())?;
        let host = self
            .addr
            .rsplit_once(':')
            .map_or(self.addr.as_str(), |(h, _)| h);
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let name = ServerName::try_from(host.to_string())
            .map_err(|e| format!("peer address {}: {e}", self.addr))?;
        let tcp = tokio::time::timeout(CONNECT_TIMEOUT, self.dial())
            .await
            .map_err(|_| format!("connecting to {} timed out", self.addr))?
            .map_err(|e| format!("connecting to {}: {e}", self.addr))?;
        let _ = tcp.set_nodelay(true);
        TlsConnector::from(config)
            .connect(name, tcp)
            .await
            .map_err(|e| DialError {
                untrusted: rejects_our_ca(&e),
                message: format!("TLS with node {} at {}: {e}", self.target, self.addr),
            })
    }

    /// Sends one request and waits for its answer within `ttl`.
    ///
    /// Once the connection is made, the exchange runs in a task of its own that outlives
    /// this call when openraft stops waiting (it gives an AppendEntries one heartbeat
    /// interval, which a follower syncing a batch to a slow disk can exceed). The late
    /// answer still counts as contact from the peer — a leader whose followers are slow,
    /// not gone, keeps its quorum (see `engine::mode`) — and the next request waits for it
    /// (within its own `ttl`) and reuses its connection: a client never has two requests in
    /// flight, so a slow follower is never sent a pile of retries that each wait behind the
    /// last, which would keep every later one late too.
    async fn call<E: std::error::Error>(
        &mut self,
        request: PeerRequest,
        action: RPCTypes,
        ttl: Duration,
    ) -> Result<PeerResponse, RpcErr<E>> {
        let deadline = tokio::time::Instant::now() + ttl;
        let timeout = || {
            RPCError::Timeout(Timeout {
                action,
                id: self.identity.node_id,
                target: self.target,
                timeout: ttl,
            })
        };
        if let Some(late) = self.late.as_mut() {
            match tokio::time::timeout_at(deadline, late).await {
                Err(_) => return Err(timeout()),
                // Its answer was for a caller that is gone; the connection serves this one,
                // unless the peer refused (it then closes it) or closed it since.
                Ok(Ok(Ok((conn, answer))))
                    if !matches!(answer, PeerResponse::Refused(_)) && !is_stale(&conn) =>
                {
                    self.conn = Some(conn)
                }
                Ok(_) => {}
            }
            self.late = None;
        }
        let conn = match self.conn.take() {
            Some(conn) => conn,
            None => match tokio::time::timeout_at(deadline, self.connect()).await {
                Ok(Ok(conn)) => conn,
                Ok(Err(e)) => return Err(unreachable(e.message)),
                Err(_) => return Err(timeout()),
            },
        };
        let answer = self.late.insert(self.exchange_in_task(conn, request, ttl));
        let outcome = tokio::time::timeout_at(deadline, answer).await;
        if outcome.is_ok() {
            self.late = None;
        }
        match outcome {
            Ok(Ok(Ok((_, PeerResponse::Refused(why))))) => {
                Err(unreachable(format!("node {} refused: {why}", self.target)))
            }
            Ok(Ok(Ok((conn, response)))) => {
                self.conn = Some(conn);
                Ok(response)
            }
            Ok(Ok(Err(e))) => Err(unreachable(e)),
            Ok(Err(_)) => Err(unreachable("the exchange stopped")),
            Err(_) => Err(timeout()),
        }
    }

    /// Sends `request` on `conn` and reads the answer in a task of its own, for at least
    /// [`LATE_ANSWER_WAIT`]. An answer is recorded as contact from the peer; one nobody
    /// waits for any more leaves its connection in the pool.
    fn exchange_in_task(&self, mut conn: Conn, request: PeerRequest, ttl: Duration) -> LateAnswer {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let (target, contacts) = (self.target, self.contacts.clone());
        let (idle, key) = (self.idle.clone(), self.pool_key());
        tokio::spawn(async move {
            let answer = tokio::time::timeout(ttl.max(LATE_ANSWER_WAIT), async {
                write_frame(&mut conn, &request)
                    .await
                    .map_err(|e| e.to_string())?;
                read_frame::<_, PeerResponse>(&mut conn)
                    .await
                    .map_err(|e| e.to_string())
            })
            .await
            .unwrap_or_else(|_| Err(format!("node {target} did not answer")));
            let answered = matches!(&answer, Ok(r) if !matches!(r, PeerResponse::Refused(_)));
            if answered {
                contacts.heard_from(target);
            }
            if let Err(Ok((conn, _))) = tx.send(answer.map(|r| (conn, r))) {
                if answered {
                    park(&idle, key, conn);
                }
            }
        });
        rx
    }
}

impl PeerClient {
    /// Whether the pooled connection is known dead: the peer closed it (a node that crashed
    /// or restarted) or sent something unasked. Checked without waiting, so a request never
    /// goes out on a connection already closed, where its fate could not be known.
    pub(crate) fn connection_is_stale(&self) -> bool {
        self.conn.as_ref().is_some_and(is_stale)
    }

    /// Sends one request and returns the answer within `ttl`. Failing to connect or to send
    /// is [`ForwardError::Unreachable`]: the peer never saw the request, so it may be retried
    /// elsewhere. Losing the connection while waiting for the answer is `OutcomeUnknown`: the outcome
    /// is unknown.
    pub(crate) async fn exchange(
        &mut self,
        request: PeerRequest,
        ttl: Duration,
    ) -> Result<PeerResponse, ForwardError> {
        let target = self.target;
        // Out of `self.conn` while in use, as in `call`.
        let mut conn = match self.conn.take() {
            Some(conn) => conn,
            None => self.connect().await.map_err(|e| {
                if e.untrusted {
                    ForwardError::Untrusted(e.message)
                } else {
                    ForwardError::Unreachable(e.message)
                }
            })?,
        };
        match tokio::time::timeout(ttl, write_frame(&mut conn, &request)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                return Err(ForwardError::Unreachable(format!(
                    "sending to node {target}: {e}"
                )));
            }
            Err(_) => {
                return Err(ForwardError::Unreachable(format!(
                    "sending to node {target} timed out"
                )));
            }
        }
        match tokio::time::timeout(ttl, read_frame::<_, PeerResponse>(&mut conn)).await {
            Ok(Ok(PeerResponse::Refused(why))) => Err(ForwardError::Refused(format!(
                "node {target} refused: {why}"
            ))),
            Ok(Ok(response)) => {
                self.conn = Some(conn);
                self.contacts.heard_from(target);
                Ok(response)
            }
            Ok(Err(e)) => Err(ForwardError::OutcomeUnknown(format!(
                "node {target} closed the connection before answering: {e}"
            ))),
            Err(_) => Err(ForwardError::OutcomeUnknown(format!(
                "node {target} did not answer within {ttl:?}"
            ))),
        }
    }
}

fn protocol_error<E: std::error::Error>() -> RpcErr<E> {
    RPCError::Network(NetworkError::new(&std::io::Error::other(
        "peer answered a different RPC",
    )))
}

/// The pauses between attempts at a failing peer: 20 ms, doubling up to 500 ms.
pub fn backoff() -> Backoff {
    Backoff::new((0u32..).map(|failures| {
        FIRST_BACKOFF
            .saturating_mul(1 << failures.min(10))
            .min(MAX_BACKOFF)
    }))
}

impl RaftNetwork<TypeConfig> for PeerClient {
    /// A connection lost once (a restart, a dropped link) is retried within tens of
    /// milliseconds: with openraft's fixed 500 ms, two failures in a row to the one
    /// follower a leader can still reach cost it its quorum for a second.
    fn backoff(&self) -> Backoff {
        backoff()
    }

    async fn append_entries(
        &mut self,
        mut rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RpcErr> {
        let target = self.target;
        let ttl = option.hard_ttl();
        let started = tokio::time::Instant::now();
        // A heartbeat (no entries) says nothing new about how far the peer's log goes.
        let end = rpc.entries.last().map(|e| e.log_id.index + 1);
        // Entries the peer probably holds go as their ids; only those after the ones it
        // holds are sent whole.
        let held = if self.may_hold(&rpc.entries) {
            match self.append_known(&rpc, ttl).await? {
                Known::Appended(answer) => {
                    self.contacts.count_entries(0, rpc.entries.len() as u64);
                    self.note_answer(&answer, end, false);
                    return Ok(answer);
                }
                Known::Held(held) => held,
            }
        } else {
            0
        };
        let sent = (rpc.entries.len() - held) as u64;
        let fit = entries_that_fit(&rpc.entries[held..])
            .into_iter()
            .chain(self.entries_limit.filter(|limit| sent > *limit))
            .min();
        if let Some(fit) = fit {
            return Err(RPCError::PayloadTooLarge(
                openraft::error::PayloadTooLarge::new_entries_hint(held as u64 + fit),
            ));
        }
        if held > 0 {
            rpc.prev_log_id = Some(rpc.entries[held - 1].log_id);
            rpc.entries.drain(..held);
        }
        // openraft gives an AppendEntries one heartbeat interval and then sends the same
        // entries again. A follower that cannot take that many in time (a slow disk, a
        // loaded machine, a long catch-up after a leader change) would be sent the same
        // batch for ever and never answer in time: after a timeout it gets a quarter as
        // many, and twice as many again after each answer in time.
        self.contacts.count_entries(sent, held as u64);
        let waited_for_earlier = self.late.is_some();
        let answer = self
            .call(
                PeerRequest::AppendEntries(rpc),
                RPCTypes::AppendEntries,
                ttl.saturating_sub(started.elapsed()),
            )
            .await;
        match &answer {
            Err(RPCError::Timeout(_)) if sent > 1 && !waited_for_earlier => {
                self.entries_limit = Some((sent / 4).max(1));
            }
            Ok(_) => {
                if let Some(limit) = self.entries_limit.filter(|limit| sent >= *limit) {
                    self.entries_limit = Some(limit * 2).filter(|l| *l < MAX_ENTRIES_LIMIT);
                }
            }
            Err(_) => self.peer_log_end = None,
        }
        match answer? {
            PeerResponse::AppendEntries(Ok(AppendEntriesResponse::Conflict)) if held > 0 => {
                // The peer's log changed between the two exchanges (a conflict here is
                // about the entry before the suffix, not the one openraft sent): ask again.
                self.peer_log_end = None;
                Err(unreachable(format!(
                    "node {target}'s log changed during an append; retrying"
                )))
            }
            PeerResponse::AppendEntries(r) => {
                let answer = r.map_err(|e| RPCError::RemoteError(RemoteError::new(target, e)))?;
                self.note_answer(&answer, end, sent > 0);
                Ok(answer)
            }
            _ => Err(protocol_error()),
        }
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<InstallSnapshotResponse<NodeId>, RpcErr<RaftError<NodeId, InstallSnapshotError>>>
    {
        let target = self.target;
        match self
            .call(
                PeerRequest::InstallSnapshot(rpc),
                RPCTypes::InstallSnapshot,
                option.hard_ttl(),
            )
            .await?
        {
            PeerResponse::InstallSnapshot(r) => {
                r.map_err(|e| RPCError::RemoteError(RemoteError::new(target, e)))
            }
            _ => Err(protocol_error()),
        }
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RpcErr> {
        let target = self.target;
        match self
            .call(PeerRequest::Vote(rpc), RPCTypes::Vote, option.hard_ttl())
            .await?
        {
            PeerResponse::Vote(r) => {
                r.map_err(|e| RPCError::RemoteError(RemoteError::new(target, e)))
            }
            _ => Err(protocol_error()),
        }
    }
}

/// How an `AppendKnown` exchange ended.
enum Known {
    /// The peer held every entry and ran the append: its answer.
    Appended(AppendEntriesResponse<NodeId>),
    /// The peer holds this many of the leading entries.
    Held(usize),
}

impl PeerClient {
    /// Whether `entries` should first go as their ids: the peer is known to hold the first
    /// of them, or, while its log end is unknown, they are large enough to be worth asking.
    fn may_hold(&self, entries: &[openraft::Entry<TypeConfig>]) -> bool {
        let Some(first) = entries.first() else {
            return false;
        };
        if self.known_failures >= KNOWN_GIVE_UP {
            return false;
        }
        match self.peer_log_end {
            Some((end, exact)) => first.log_id.index < end || !exact,
            None => {
                let mut bytes = 0;
                entries.iter().any(|e| {
                    bytes += entry_bytes(e);
                    bytes > KNOWN_PROBE_BYTES
                })
            }
        }
    }

    /// Sends `rpc` as the ids of its entries (see [`super::AppendKnownRequest`]).
    async fn append_known(
        &mut self,
        rpc: &AppendEntriesRequest<TypeConfig>,
        ttl: Duration,
    ) -> Result<Known, RpcErr> {
        let request = PeerRequest::AppendKnown(super::AppendKnownRequest {
            vote: rpc.vote,
            prev_log_id: rpc.prev_log_id,
            leader_commit: rpc.leader_commit,
            log_ids: rpc.entries.iter().map(|e| e.log_id).collect(),
        });
        let answer = self.call(request, RPCTypes::AppendEntries, ttl).await;
        if matches!(answer, Err(RPCError::Unreachable(_))) {
            self.known_failures = self.known_failures.saturating_add(1);
        } else {
            self.known_failures = 0;
        }
        match answer? {
            PeerResponse::AppendEntries(r) => {
                Ok(Known::Appended(r.map_err(|e| {
                    RPCError::RemoteError(RemoteError::new(self.target, e))
                })?))
            }
            PeerResponse::Held(held) => {
                let held = (held as usize).min(rpc.entries.len());
                let first = rpc.entries.first().map_or(0, |e| e.log_id.index);
                // It lacks (or differs at) the entry after those it holds.
                self.peer_log_end = Some((first + held as u64, true));
                Ok(Known::Held(held))
            }
            _ => Err(protocol_error()),
        }
    }

    /// Learns how far the peer's log goes from its answer to an append whose entries ended
    /// before `end` (`None`: a heartbeat); `exact` when the append sent entries the peer lacked (its log now ends
    /// there), not when it only named entries the peer held (it may hold more).
    fn note_answer(
        &mut self,
        answer: &AppendEntriesResponse<NodeId>,
        end: Option<u64>,
        exact: bool,
    ) {
        self.peer_log_end = match answer {
            AppendEntriesResponse::Success => match end {
                Some(end) => Some((end, exact)),
                None => self.peer_log_end,
            },
            AppendEntriesResponse::PartialSuccess(matching) => {
                matching.map(|m| (m.index + 1, false))
            }
            AppendEntriesResponse::Conflict | AppendEntriesResponse::HigherVote(_) => None,
        };
    }
}

/// Entry payload bytes one AppendEntries may carry. Past it the request is refused here with
/// openraft's `PayloadTooLarge` and a hint of how many entries fit, and openraft sends fewer:
/// without it, 256 entries of a restore's 512 KiB staging transactions would exceed the
/// peer frame bound and replication to a lagging member would stall.
const APPEND_PAYLOAD_BYTES: usize = 16 << 20;

/// How many of `entries` fit in [`APPEND_PAYLOAD_BYTES`] (at least one: an entry larger
/// than the bound goes alone), if fewer than all of them.
fn entries_that_fit(entries: &[openraft::Entry<TypeConfig>]) -> Option<u64> {
    let mut total = 0usize;
    for (i, entry) in entries.iter().enumerate() {
        total += entry_bytes(entry);
        if total > APPEND_PAYLOAD_BYTES {
            let fit = i.max(1);
            return (fit < entries.len()).then_some(fit as u64);
        }
    }
    None
}

/// A generous estimate of an entry's encoded size.
fn entry_bytes(entry: &openraft::Entry<TypeConfig>) -> usize {
    use crate::txn::Op;
    const OVERHEAD: usize = 64;
    match &entry.payload {
        openraft::EntryPayload::Normal(crate::types::Command::Txn(txn)) => {
            let ops: usize = txn
                .ops
                .iter()
                .map(|op| {
                    OVERHEAD
                        + match op {
                            Op::Put { key, value } => key.len() + value.len(),
                            Op::Delete { key } => key.len(),
                            Op::DeletePrefix { prefix } => prefix.len(),
                            Op::Replace { staged, keep } => {
                                staged.len() + keep.iter().map(Vec::len).sum::<usize>()
                            }
                            Op::Archive { from, to } => from.len() + to.len(),
                        }
                })
                .sum();
            let compares: usize = txn.compares.iter().map(|c| OVERHEAD + c.key.len()).sum();
            OVERHEAD + ops + compares
        }
        // Memberships name every node with its addresses and certificate pin.
        openraft::EntryPayload::Membership(_) => 16 << 10,
        openraft::EntryPayload::Blank => OVERHEAD,
    }
}

#[cfg(test)]
mod payload_tests {
    use super::*;

    fn entry(index: u64, value_bytes: usize) -> openraft::Entry<TypeConfig> {
        openraft::Entry {
            log_id: openraft::LogId::new(openraft::CommittedLeaderId::new(1, 1), index),
            payload: openraft::EntryPayload::Normal(crate::types::Command::Txn(
                crate::txn::Txn::new().put("k", vec![0u8; value_bytes]),
            )),
        }
    }

    /// Small entries go as they are; 256 entries of 512 KiB (a restore's staging) are cut
    /// to what fits; one entry larger than the bound still goes alone.
    #[test]
    fn append_entries_are_cut_to_what_fits() {
        let small: Vec<_> = (1..=256).map(|i| entry(i, 1024)).collect();
        assert_eq!(entries_that_fit(&small), None);
        let staging: Vec<_> = (1..=256).map(|i| entry(i, 512 << 10)).collect();
        let fit = entries_that_fit(&staging).expect("cut");
        assert!((16..32).contains(&fit), "{fit}");
        let huge = vec![entry(1, 20 << 20), entry(2, 1)];
        assert_eq!(entries_that_fit(&huge), Some(1));
        assert_eq!(
            entries_that_fit(&huge[..1]),
            None,
            "sent alone, not refused forever"
        );
    }
}
