//! Accepting peers: mutual TLS with the cluster CA, the node id and fingerprint taken from the
//! verified certificate, and every request admitted only if that certificate is the one the
//! membership pins for that node (an application message excepted: the vault judges it; see
//! [`super::trust`]). Each refusal is counted and logged with its reason; a connection whose
//! request was refused is closed, so every further attempt costs a new handshake.
//!
//! A certificate that is not a member's (a pack's, before registration) gets one small
//! request per connection, a short deadline, a few connections at a time and a few attempts
//! a minute: anyone the CA ever vouched for cannot tie up the peer port or the descriptors
//! RocksDB and the spool share with it. Members' connections close when idle.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use super::codec::{read_frame_max, write_frame, CodecError, MAX_FRAME};
use super::trust::{PeerCaller, Refusal, Refusals, RegistrationLimiter};
use super::{PeerRequest, PeerResponse};

/// How long a peer may take to finish the TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// A member's connection with no request for this long is closed (Raft heartbeats every
/// 100 ms keep live ones busy; the dialer redials when it needs one again).
const MEMBER_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// A non-member has this long to send its one request.
const STRANGER_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest request a non-member may send (a registration is about 2 KiB).
const STRANGER_MAX_FRAME: usize = 64 << 10;
/// Peer connections open at once (members and strangers).
const MAX_PEER_CONNECTIONS: usize = 512;
/// Connections open at once from certificates that are not a member's.
const MAX_STRANGER_CONNECTIONS: usize = 16;
/// Pause after a failed accept (out of descriptors, say) instead of spinning.
const ACCEPT_RETRY: Duration = Duration::from_millis(50);

/// What the peer server needs from the node behind it: who is a member, where refusals are
/// counted, and the answer to an admitted request. The server itself is transport only
/// (TLS, frames, admission, limits); the engine implements this.
pub trait PeerService: Clone + Send + Sync + 'static {
    /// `Ok` if `caller` presents the certificate pinned for a current member.
    fn standing(&self, caller: &PeerCaller) -> Result<(), Refusal>;
    /// Peers and requests refused on the peer port, by reason.
    fn refusals(&self) -> &Refusals;
    /// Registration attempts per certificate (a non-member's one kind of request).
    fn registrations(&self) -> &RegistrationLimiter;
    /// A Raft message came from a certificate this node does not know: its own membership
    /// view may be behind.
    fn stranger_sent_raft(&self);
    /// The answer to an admitted request from `caller`.
    fn answer(
        &self,
        caller: &PeerCaller,
        request: PeerRequest,
    ) -> impl Future<Output = PeerResponse> + Send;
}

/// Serves Raft RPCs on `listener` until `shutdown` resolves; then closes every open peer
/// connection too, so peers notice at once and redial whoever serves the address next.
pub async fn serve_peers<P: PeerService>(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    engine: P,
    shutdown: impl Future<Output = ()>,
) {
    let acceptor = TlsAcceptor::from(tls);
    let (closing, closed) = tokio::sync::watch::channel(false);
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_PEER_CONNECTIONS));
    let stranger_slots = Arc::new(tokio::sync::Semaphore::new(MAX_STRANGER_CONNECTIONS));
    tokio::pin!(shutdown);
    loop {
        let (tcp, addr) = tokio::select! {
            _ = &mut shutdown => {
                let _ = closing.send(true);
                return;
            }
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    tracing::warn!("peer accept failed: {e}");
                    tokio::time::sleep(ACCEPT_RETRY).await;
                    continue;
                }
            },
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            tracing::warn!(%addr, "peer connection refused: {MAX_PEER_CONNECTIONS} are open");
            continue;
        };
        let _ = tcp.set_nodelay(true);
        let acceptor = acceptor.clone();
        let engine = engine.clone();
        let stranger_slots = stranger_slots.clone();
        let mut closed = closed.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let refusals = engine.refusals();
            let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                Ok(Ok(tls)) => tls,
                Ok(Err(e)) => {
                    let why = format!("TLS handshake failed: {e}");
                    refusals.record(Refusal::Handshake, &addr.to_string(), &why);
                    return;
                }
                Err(_) => {
                    let why = "TLS handshake timed out";
                    refusals.record(Refusal::Handshake, &addr.to_string(), why);
                    return;
                }
            };
            let cert = tls.get_ref().1.peer_certificates().and_then(|c| c.first());
            let caller = cert.and_then(|c| {
                Some(PeerCaller {
                    node_id: coffer_tls::node_id_from_cert(c)?,
                    cert_sha256: coffer_tls::cert_fingerprint(c),
                })
            });
            let Some(caller) = caller else {
                let why = "its certificate binds no node id";
                refusals.record(Refusal::NoNodeId, &addr.to_string(), why);
                return;
            };
            let member = engine.standing(&caller).is_ok();
            let _stranger_slot = if member {
                None
            } else {
                match stranger_slots.try_acquire_owned() {
                    Ok(s) => Some(s),
                    Err(_) => {
                        let why = "too many connections from non-members";
                        refusals.record(Refusal::Registration, &addr.to_string(), why);
                        return;
                    }
                }
            };
            tokio::select! {
                result = serve_connection(tls, caller, member, addr, &engine) => {
                    if let Err(e) = result {
                        let eof = matches!(&e, CodecError::Io(io) if io.kind() == std::io::ErrorKind::UnexpectedEof);
                        if !eof {
                            tracing::debug!(%addr, "peer connection ended: {e}");
                        }
                    }
                }
                // Shutting down closes the connection, so the peer redials.
                _ = closed.wait_for(|c| *c) => {}
            }
        });
    }
}

async fn serve_connection<S, P>(
    mut stream: S,
    caller: PeerCaller,
    member: bool,
    addr: std::net::SocketAddr,
    engine: &P,
) -> Result<(), CodecError>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    P: PeerService,
{
    let (max_frame, deadline) = if member {
        (MAX_FRAME, MEMBER_IDLE_TIMEOUT)
    } else {
        (STRANGER_MAX_FRAME, STRANGER_TIMEOUT)
    };
    loop {
        let request: PeerRequest =
            match tokio::time::timeout(deadline, read_frame_max(&mut stream, max_frame)).await {
                Ok(read) => read?,
                Err(_) => return Ok(()),
            };
        match admit(engine, &caller, &request) {
            Ok(()) if !member => {
                // A stranger's one request: a registration, a few a minute per certificate.
                let response = if engine.registrations().allow(&caller.cert_sha256) {
                    engine.answer(&caller, request).await
                } else {
                    let why =
                        "too many registration attempts from this certificate; retry in a minute";
                    let peer = format!("node {} at {addr}", caller.node_id);
                    engine.refusals().record(Refusal::Registration, &peer, why);
                    PeerResponse::Refused(why.into())
                };
                write_frame(&mut stream, &response).await?;
                return Ok(());
            }
            Ok(()) => {
                let response = engine.answer(&caller, request).await;
                write_frame(&mut stream, &response).await?;
            }
            Err((reason, why)) => {
                let peer = format!("node {} at {addr}", caller.node_id);
                engine.refusals().record(reason, &peer, &why);
                if matches!(
                    (&request, reason),
                    (
                        PeerRequest::AppendEntries(_)
                            | PeerRequest::AppendKnown(_)
                            | PeerRequest::Vote(_)
                            | PeerRequest::InstallSnapshot(_),
                        Refusal::NotMember | Refusal::RevokedCertificate
                    )
                ) {
                    // Perhaps our own view is behind (we were down while members changed).
                    engine.stranger_sent_raft();
                }
                write_frame(&mut stream, &PeerResponse::Refused(why)).await?;
                return Ok(());
            }
        }
    }
}

/// Whether `caller` may send `request`: it must not claim another node, and anything but an
/// application message needs the certificate pinned for a current member.
fn admit(
    engine: &impl PeerService,
    caller: &PeerCaller,
    request: &PeerRequest,
) -> Result<(), (Refusal, String)> {
    let node = caller.node_id;
    if let Some(claimed) = request.claimed_sender() {
        if claimed != node {
            return Err((
                Refusal::ClaimsOtherNode,
                format!(
                    "peer certificate is for node {node} but the request claims node {claimed}"
                ),
            ));
        }
    }
    if matches!(request, PeerRequest::App(_)) {
        return Ok(());
    }
    engine.standing(caller).map_err(|reason| {
        let why = match reason {
            Refusal::RevokedCertificate => format!(
                "node {node} is a member, but not with this certificate (revoked or replaced)"
            ),
            _ => format!("node {node} is not a member of this cluster"),
        };
        (reason, why)
    })
}
