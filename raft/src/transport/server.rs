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
use super::trust::{PeerCaller, Refusal};
use super::{ForwardError, PeerRequest, PeerResponse};
use crate::types::Raft;
use crate::{Engine, EngineError};

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

/// Serves Raft RPCs on `listener` until `shutdown` resolves; then closes every open peer
/// connection too, so peers notice at once and redial whoever serves the address next.
pub async fn serve_peers(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    engine: Engine,
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
                    tokio::time::sleep(Duration::from_millis(50)).await;
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
            let member = engine.peer_standing(&caller).is_ok();
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

async fn serve_connection<S>(
    mut stream: S,
    caller: PeerCaller,
    member: bool,
    addr: std::net::SocketAddr,
    engine: &Engine,
) -> Result<(), CodecError>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
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
                    dispatch(engine, &caller, request).await
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
                let response = dispatch(engine, &caller, request).await;
                write_frame(&mut stream, &response).await?;
            }
            Err((reason, why)) => {
                let peer = format!("node {} at {addr}", caller.node_id);
                engine.refusals().record(reason, &peer, &why);
                if matches!(
                    (&request, reason),
                    (
                        PeerRequest::AppendEntries(_)
                            | PeerRequest::Vote(_)
                            | PeerRequest::InstallSnapshot(_),
                        Refusal::NotMember | Refusal::RevokedCertificate
                    )
                ) {
                    // Perhaps our own view is behind (we were down while members changed).
                    engine.refresh_roster_soon();
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
    engine: &Engine,
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
    engine.peer_standing(caller).map_err(|reason| {
        let why = match reason {
            Refusal::RevokedCertificate => format!(
                "node {node} is a member, but not with this certificate (revoked or replaced)"
            ),
            _ => format!("node {node} is not a member of this cluster"),
        };
        (reason, why)
    })
}

async fn dispatch(engine: &Engine, caller: &PeerCaller, request: PeerRequest) -> PeerResponse {
    let raft = engine.raft();
    match request {
        PeerRequest::AppendEntries(r) => {
            let leader_commit = r.leader_commit.map(|l| l.index);
            let answer = raft.append_entries(r).await;
            // Any answer but "your term is stale" means a current leader reached us.
            if matches!(&answer, Ok(r) if !matches!(r, openraft::raft::AppendEntriesResponse::HigherVote(_)))
            {
                engine.note_leader_contact(leader_commit);
            }
            PeerResponse::AppendEntries(answer)
        }
        PeerRequest::Vote(r) => PeerResponse::Vote(raft.vote(r).await),
        PeerRequest::InstallSnapshot(r) => {
            let answer = raft.install_snapshot(r).await;
            if answer.is_ok() {
                engine.note_leader_contact(None);
            }
            PeerResponse::InstallSnapshot(answer)
        }
        PeerRequest::Forward(txn) => PeerResponse::Forwarded(match engine.ensure_writable() {
            Ok(()) => forwarded_write(raft, txn).await,
            Err(e) => Err(engine_to_forward(e)),
        }),
        PeerRequest::ReadIndex => PeerResponse::ReadIndex(read_index(raft).await),
        PeerRequest::App(body) => PeerResponse::App(engine.app_request(caller.clone(), body).await),
        // Admitted only from a member, which vouches for the certificate that sent it.
        PeerRequest::AppRelayed { origin, body } => {
            PeerResponse::App(engine.app_request_local(origin, body).await)
        }
        PeerRequest::Membership(change) => PeerResponse::Membership(
            engine
                .change_membership_local(change)
                .await
                .map_err(engine_to_forward),
        ),
        PeerRequest::Members => PeerResponse::Members(if engine.is_leader() {
            Ok(engine.members_local())
        } else {
            Err(ForwardError::NotLeader(engine.leader().map(|(id, _)| id)))
        }),
        PeerRequest::Roster => PeerResponse::Roster(engine.roster_local()),
    }
}

/// How an engine failure travels back to the node that forwarded the request.
pub(crate) fn engine_to_forward(e: EngineError) -> ForwardError {
    match e {
        EngineError::NotLeader { leader_id, .. } => ForwardError::NotLeader(leader_id),
        EngineError::ReadOnly { last_contact_ms } => ForwardError::ReadOnly(last_contact_ms),
        EngineError::Membership(m) | EngineError::InvalidTxn(m) => ForwardError::Refused(m),
        other => ForwardError::Failed(other.to_string()),
    }
}

async fn forwarded_write(
    raft: &Raft,
    txn: crate::txn::Txn,
) -> Result<(crate::txn::TxnResult, u64), ForwardError> {
    use openraft::error::ClientWriteError;
    crate::engine::validate(&txn).map_err(|e| ForwardError::Failed(e.to_string()))?;
    match raft.client_write(crate::types::Command::Txn(txn)).await {
        Ok(resp) => Ok((resp.data, resp.log_id.index)),
        Err(openraft::error::RaftError::APIError(ClientWriteError::ForwardToLeader(f))) => {
            Err(ForwardError::NotLeader(f.leader_id))
        }
        Err(e) => Err(ForwardError::Failed(e.to_string())),
    }
}

/// The leader confirms its leadership with a quorum and returns the index a read must see.
async fn read_index(raft: &Raft) -> Result<u64, ForwardError> {
    use openraft::error::CheckIsLeaderError;
    match raft.get_read_log_id().await {
        Ok((read, applied)) => Ok(read.max(applied).map_or(0, |l| l.index)),
        Err(openraft::error::RaftError::APIError(CheckIsLeaderError::ForwardToLeader(f))) => {
            Err(ForwardError::NotLeader(f.leader_id))
        }
        // A late quorum answer under load: the follower asks again (a read is repeatable).
        Err(openraft::error::RaftError::APIError(e @ CheckIsLeaderError::QuorumNotEnough(_))) => {
            Err(ForwardError::Unreachable(e.to_string()))
        }
        Err(e) => Err(ForwardError::Failed(e.to_string())),
    }
}
