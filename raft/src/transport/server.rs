//! Accepting peers: mutual TLS with the cluster CA, the node id taken from the verified
//! certificate, and every RPC checked against it. Each refusal is logged with its reason.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use super::codec::{read_frame, write_frame, CodecError};
use super::{ForwardError, PeerRequest, PeerResponse};
use crate::types::{NodeId, Raft};
use crate::{Engine, EngineError};

/// How long a peer may take to finish the TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

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
        let _ = tcp.set_nodelay(true);
        let acceptor = acceptor.clone();
        let engine = engine.clone();
        let mut closed = closed.clone();
        tokio::spawn(async move {
            let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                Ok(Ok(tls)) => tls,
                Ok(Err(e)) => {
                    tracing::warn!(%addr, "peer refused: TLS handshake failed: {e}");
                    return;
                }
                Err(_) => {
                    tracing::warn!(%addr, "peer refused: TLS handshake timed out");
                    return;
                }
            };
            let peer = tls
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|c| c.first())
                .and_then(|c| coffer_tls::node_id_from_cert(c));
            let Some(peer) = peer else {
                tracing::warn!(%addr, "peer refused: its certificate binds no node id");
                return;
            };
            tokio::select! {
                result = serve_connection(tls, peer, &engine) => {
                    if let Err(e) = result {
                        let eof = matches!(&e, CodecError::Io(io) if io.kind() == std::io::ErrorKind::UnexpectedEof);
                        if !eof {
                            tracing::debug!(%addr, peer, "peer connection ended: {e}");
                        }
                    }
                }
                // Shutting down closes the connection, so the peer redials.
                _ = closed.wait_for(|c| *c) => {}
            }
        });
    }
}

async fn serve_connection<S>(mut stream: S, peer: NodeId, engine: &Engine) -> Result<(), CodecError>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    loop {
        let request: PeerRequest = read_frame(&mut stream).await?;
        let response = match request.claimed_sender() {
            Some(claimed) if claimed != peer => {
                let why = format!(
                    "peer certificate is for node {peer} but the request claims node {claimed}"
                );
                tracing::warn!("peer refused: {why}");
                PeerResponse::Refused(why)
            }
            _ => dispatch(engine, peer, request).await,
        };
        write_frame(&mut stream, &response).await?;
    }
}

async fn dispatch(engine: &Engine, peer: NodeId, request: PeerRequest) -> PeerResponse {
    let raft = engine.raft();
    match request {
        PeerRequest::AppendEntries(r) => {
            let answer = raft.append_entries(r).await;
            // Any answer but "your term is stale" means a current leader reached us.
            if matches!(&answer, Ok(r) if !matches!(r, openraft::raft::AppendEntriesResponse::HigherVote(_)))
            {
                engine.note_leader_contact();
            }
            PeerResponse::AppendEntries(answer)
        }
        PeerRequest::Vote(r) => PeerResponse::Vote(raft.vote(r).await),
        PeerRequest::InstallSnapshot(r) => {
            let answer = raft.install_snapshot(r).await;
            if answer.is_ok() {
                engine.note_leader_contact();
            }
            PeerResponse::InstallSnapshot(answer)
        }
        PeerRequest::Forward(txn) => PeerResponse::Forwarded(match engine.ensure_writable() {
            Ok(()) => forwarded_write(raft, txn).await,
            Err(e) => Err(engine_to_forward(e)),
        }),
        PeerRequest::ReadIndex => PeerResponse::ReadIndex(read_index(raft).await),
        PeerRequest::App(body) => PeerResponse::App(engine.app_request(peer, body).await),
        PeerRequest::AppRelayed { origin, body } => {
            if !engine.member_addrs().contains_key(&peer) {
                let why = format!("node {peer} relayed a message but is not a member");
                tracing::warn!("peer refused: {why}");
                return PeerResponse::Refused(why);
            }
            PeerResponse::App(engine.app_request_local(origin, body).await)
        }
        PeerRequest::Membership(change) => {
            if !engine.member_addrs().contains_key(&peer) {
                let why = format!("node {peer} asked for a membership change but is not a member");
                tracing::warn!("peer refused: {why}");
                return PeerResponse::Refused(why);
            }
            PeerResponse::Membership(
                engine
                    .change_membership_local(change)
                    .await
                    .map_err(engine_to_forward),
            )
        }
        PeerRequest::Members => PeerResponse::Members(if engine.is_leader() {
            Ok(engine.members_local())
        } else {
            Err(ForwardError::NotLeader(engine.leader().map(|(id, _)| id)))
        }),
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
