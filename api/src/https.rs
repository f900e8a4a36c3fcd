//! Serving an axum router over rustls, safely in front of hostile clients.
//!
//! Each accepted connection gets a bounded TLS handshake and is served with HTTP/1.1 or
//! HTTP/2 (ALPN); the client's address travels to handlers as a request extension. What
//! keeps a crowd of idle or slow clients (slowloris) from wedging the node:
//!
//! - a cap on open connections ([`HttpLimits::max_connections`], lowered at start so that
//!   [`HttpLimits::reserved_fds`] descriptors always remain for RocksDB, the audit spool and
//!   the peer port). At the cap, the connection idle for longest is closed to admit the new
//!   one; a connection is idle while it has no request in flight, which includes one still
//!   in its TLS handshake or dribbling its headers. Only when every connection is busy is a
//!   new one turned away.
//! - a TLS handshake timeout, a header read timeout (hyper's, HTTP/1), an idle timeout for
//!   kept-alive connections (both protocols), and a limit on how long one request may stay
//!   in flight (a client that never reads its answer);
//! - header size limits and a cap on concurrent HTTP/2 streams per connection.
//!
//! The request body's read deadline is applied where the body is read (`routes/request.rs`).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use serde::Deserialize;
use tokio::net::TcpListener;
use tokio::sync::Notify;
use tokio_rustls::TlsAcceptor;
use tower::ServiceExt;

/// How often a connection with a request in flight is looked at again by the watchdog.
const BUSY_RECHECK: Duration = Duration::from_millis(500);
/// Pause after a failed accept (out of descriptors, say) instead of spinning.
const ACCEPT_RETRY: Duration = Duration::from_millis(50);
/// How long a connection being closed may finish its exchange (HTTP/2 GOAWAY, HTTP/1 close).
const GRACEFUL_CLOSE_WAIT: Duration = Duration::from_secs(1);

/// The remote address of the connection a request came on.
#[derive(Clone, Copy, Debug)]
pub struct ClientAddr(pub SocketAddr);

/// Limits of the HTTPS front (`[http]` in the config). Defaults follow Vault's listener
/// where it has the knob (`tls_handshake`, `http_read_header_timeout` 10 s,
/// `http_read_timeout` 30 s), with a shorter idle timeout, since an idle connection is what
/// a slowloris holds.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct HttpLimits {
    /// Time a client has to finish the TLS handshake, ms. Default 10 000.
    pub tls_handshake_timeout_ms: u64,
    /// Time a client has to send a request's headers (HTTP/1), ms. Default 10 000.
    pub read_header_timeout_ms: u64,
    /// Time a client has to send a request's body, ms. Default 30 000.
    pub read_timeout_ms: u64,
    /// A connection with no request in flight for this long is closed, ms. Default 60 000.
    pub idle_timeout_ms: u64,
    /// Longest one request may stay in flight (handler plus writing the answer to a client
    /// that reads slowly), ms. Default 120 000: above every internal wait (a forwarded write,
    /// a leader change, a read-index wait).
    pub request_timeout_ms: u64,
    /// Open client connections at most. Default 4096 (lowered at start if the process's
    /// descriptor limit minus `reserved_fds` is smaller).
    pub max_connections: usize,
    /// File descriptors kept free of client connections (RocksDB, spool, peers). Default 1024.
    pub reserved_fds: u64,
    /// Largest request head (request line and headers) in bytes. Default 65 536.
    pub max_header_bytes: usize,
    /// Concurrent HTTP/2 streams per connection. Default 128.
    pub max_concurrent_streams: u32,
}

impl Default for HttpLimits {
    fn default() -> Self {
        Self {
            tls_handshake_timeout_ms: 10_000,
            read_header_timeout_ms: 10_000,
            read_timeout_ms: 30_000,
            idle_timeout_ms: 60_000,
            request_timeout_ms: 120_000,
            max_connections: 4096,
            reserved_fds: 1024,
            max_header_bytes: 64 << 10,
            max_concurrent_streams: 128,
        }
    }
}

impl HttpLimits {
    /// Checks every field; the message names it.
    pub fn validate(&self) -> Result<(), String> {
        for (name, ms) in [
            ("tls_handshake_timeout_ms", self.tls_handshake_timeout_ms),
            ("read_header_timeout_ms", self.read_header_timeout_ms),
            ("read_timeout_ms", self.read_timeout_ms),
            ("idle_timeout_ms", self.idle_timeout_ms),
            ("request_timeout_ms", self.request_timeout_ms),
        ] {
            if !(100..=3_600_000).contains(&ms) {
                return Err(format!(
                    "http.{name}: {ms} is outside 100..=3600000 milliseconds"
                ));
            }
        }
        if !(16..=1_000_000).contains(&self.max_connections) {
            return Err("http.max_connections: must be between 16 and 1000000".into());
        }
        if !(8192..=1 << 20).contains(&self.max_header_bytes) {
            return Err("http.max_header_bytes: must be between 8192 and 1048576".into());
        }
        if !(1..=10_000).contains(&self.max_concurrent_streams) {
            return Err("http.max_concurrent_streams: must be between 1 and 10000".into());
        }
        Ok(())
    }

    fn ms(v: u64) -> Duration {
        Duration::from_millis(v)
    }
}

/// Raises this process's open-file limit to its hard limit and returns how many client
/// connections fit under it with `reserved` descriptors to spare (never more than `wanted`).
pub fn connection_budget(wanted: usize, reserved: u64) -> usize {
    // SAFETY: getrlimit/setrlimit only read and write the struct passed to them.
    let limit = unsafe {
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return wanted;
        }
        if lim.rlim_cur < lim.rlim_max {
            let raised = libc::rlimit {
                rlim_cur: lim.rlim_max,
                rlim_max: lim.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                lim.rlim_cur = lim.rlim_max;
            }
        }
        lim.rlim_cur
    };
    let room = limit.saturating_sub(reserved);
    let budget = usize::try_from(room).unwrap_or(usize::MAX).min(wanted);
    if budget < wanted {
        tracing::warn!(
            wanted,
            budget,
            fd_limit = limit,
            reserved,
            "fewer client connections than http.max_connections fit the descriptor limit"
        );
    }
    budget.max(1)
}

/// One open connection, as the registry sees it.
struct Slot {
    /// Requests in flight on it.
    in_flight: u32,
    /// When it last became idle (accepted, or its last request finished).
    idle_since: Instant,
    /// When the oldest request in flight started (if any).
    busy_since: Option<Instant>,
    /// Told to close (evicted to make room).
    close: Arc<Notify>,
}

/// The open connections, for the cap and for eviction.
#[derive(Default)]
struct Registry {
    next: AtomicU64,
    slots: Mutex<HashMap<u64, Slot>>,
}

impl Registry {
    /// Registers a new connection; at `max`, first asks the connection idle longest to close.
    /// `None` when every open connection is busy: the new one is turned away.
    fn admit(&self, max: usize) -> Option<(u64, Arc<Notify>)> {
        let mut slots = self.slots.lock().ok()?;
        if slots.len() >= max {
            let oldest = slots
                .iter()
                .filter(|(_, s)| s.in_flight == 0)
                .min_by_key(|(_, s)| s.idle_since)
                .map(|(id, _)| *id)?;
            if let Some(slot) = slots.remove(&oldest) {
                slot.close.notify_one();
            }
        }
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let close = Arc::new(Notify::new());
        slots.insert(
            id,
            Slot {
                in_flight: 0,
                idle_since: Instant::now(),
                busy_since: None,
                close: close.clone(),
            },
        );
        Some((id, close))
    }

    fn release(&self, id: u64) {
        if let Ok(mut slots) = self.slots.lock() {
            slots.remove(&id);
        }
    }

    fn started(&self, id: u64) {
        if let Ok(mut slots) = self.slots.lock() {
            if let Some(s) = slots.get_mut(&id) {
                s.in_flight += 1;
                s.busy_since.get_or_insert_with(Instant::now);
            }
        }
    }

    fn finished(&self, id: u64) {
        if let Ok(mut slots) = self.slots.lock() {
            if let Some(s) = slots.get_mut(&id) {
                s.in_flight = s.in_flight.saturating_sub(1);
                if s.in_flight == 0 {
                    s.idle_since = Instant::now();
                    s.busy_since = None;
                }
            }
        }
    }

    /// What the watchdog of connection `id` should do now.
    fn verdict(&self, id: u64, limits: &HttpLimits) -> Verdict {
        let Ok(slots) = self.slots.lock() else {
            return Verdict::Close("registry unavailable");
        };
        let Some(s) = slots.get(&id) else {
            return Verdict::Close("evicted");
        };
        match s.busy_since {
            Some(t) if t.elapsed() >= HttpLimits::ms(limits.request_timeout_ms) => {
                Verdict::Close("request in flight too long")
            }
            Some(_) => Verdict::Wait(BUSY_RECHECK),
            None => {
                let idle = HttpLimits::ms(limits.idle_timeout_ms);
                match idle.checked_sub(s.idle_since.elapsed()) {
                    Some(left) if !left.is_zero() => Verdict::Wait(left),
                    _ => Verdict::Close("idle"),
                }
            }
        }
    }

    fn len(&self) -> usize {
        self.slots.lock().map(|s| s.len()).unwrap_or(0)
    }
}

enum Verdict {
    Wait(Duration),
    Close(&'static str),
}

/// Open client connections, for metrics.
#[derive(Clone, Default)]
pub struct ConnectionStats {
    registry: Arc<Registry>,
    /// Connections closed to make room for new ones.
    pub evicted: Arc<AtomicU64>,
    /// Connections turned away because every open one was busy.
    pub refused: Arc<AtomicU64>,
}

impl ConnectionStats {
    /// Connections open now.
    pub fn open(&self) -> usize {
        self.registry.len()
    }
}

/// Accepts connections on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    app: Router,
    limits: HttpLimits,
    stats: ConnectionStats,
    shutdown: impl std::future::Future<Output = ()>,
) {
    let acceptor = TlsAcceptor::from(tls);
    let max = connection_budget(limits.max_connections, limits.reserved_fds);
    let limits = Arc::new(limits);
    tokio::pin!(shutdown);
    loop {
        let (tcp, peer) = tokio::select! {
            _ = &mut shutdown => return,
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    // Out of descriptors (or similar): back off instead of spinning.
                    tracing::warn!("accept failed: {e}");
                    tokio::time::sleep(ACCEPT_RETRY).await;
                    continue;
                }
            },
        };
        let before = stats.registry.len();
        let Some((id, close)) = stats.registry.admit(max) else {
            stats.refused.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(%peer, "connection refused: every open connection is busy");
            drop(tcp);
            continue;
        };
        if before >= max {
            stats.evicted.fetch_add(1, Ordering::Relaxed);
        }
        let _ = tcp.set_nodelay(true);
        let acceptor = acceptor.clone();
        let app = app.clone();
        let limits = limits.clone();
        let registry = stats.registry.clone();
        tokio::spawn(async move {
            serve_one(tcp, peer, acceptor, app, &limits, &registry, id, close).await;
            registry.release(id);
        });
    }
}

#[allow(clippy::too_many_arguments)]
async fn serve_one(
    tcp: tokio::net::TcpStream,
    peer: SocketAddr,
    acceptor: TlsAcceptor,
    app: Router,
    limits: &HttpLimits,
    registry: &Arc<Registry>,
    id: u64,
    close: Arc<Notify>,
) {
    let handshake = tokio::time::timeout(
        HttpLimits::ms(limits.tls_handshake_timeout_ms),
        acceptor.accept(tcp),
    );
    let tls = tokio::select! {
        done = handshake => match done {
            Ok(Ok(tls)) => tls,
            Ok(Err(e)) => {
                tracing::debug!(%peer, "TLS handshake failed: {e}");
                return;
            }
            Err(_) => {
                tracing::debug!(%peer, "TLS handshake timed out");
                return;
            }
        },
        _ = close.notified() => return,
    };
    let tracker = registry.clone();
    let service =
        hyper::service::service_fn(move |mut req: hyper::Request<hyper::body::Incoming>| {
            req.extensions_mut().insert(ClientAddr(peer));
            let app = app.clone();
            let tracker = tracker.clone();
            async move {
                tracker.started(id);
                let answer = app.oneshot(req.map(axum::body::Body::new)).await;
                tracker.finished(id);
                answer
            }
        });
    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(HttpLimits::ms(limits.read_header_timeout_ms))
        .max_buf_size(limits.max_header_bytes.max(8192));
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(limits.max_concurrent_streams)
        .max_header_list_size(u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX));
    let conn = builder.serve_connection(TokioIo::new(tls), service);
    tokio::pin!(conn);
    loop {
        let wait = match registry.verdict(id, limits) {
            Verdict::Wait(d) => d,
            Verdict::Close(why) => {
                tracing::debug!(%peer, "closing connection: {why}");
                break;
            }
        };
        tokio::select! {
            done = conn.as_mut() => {
                if let Err(e) = done {
                    tracing::debug!(%peer, "connection ended: {e}");
                }
                return;
            }
            _ = close.notified() => {
                tracing::debug!(%peer, "closing connection: evicted for a new one");
                break;
            }
            _ = tokio::time::sleep(wait) => {}
        }
    }
    // Ask politely (HTTP/2 GOAWAY, HTTP/1 close after the current exchange), then drop.
    conn.as_mut().graceful_shutdown();
    let _ = tokio::time::timeout(GRACEFUL_CLOSE_WAIT, conn.as_mut()).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn at_the_cap_the_longest_idle_connection_makes_room() {
        let r = Registry::default();
        let (a, close_a) = r.admit(2).unwrap();
        let (b, _) = r.admit(2).unwrap();
        r.started(b);
        let (_c, _) = r.admit(2).expect("a was idle: evicted");
        assert!(r.slots.lock().unwrap().get(&a).is_none());
        // close_a was notified: a waiter sees it at once.
        let notified = close_a.notified();
        futures::pin_mut!(notified);
        assert!(futures::FutureExt::now_or_never(notified).is_some());
        r.started(_c);
        assert!(r.admit(2).is_none(), "every connection busy: refused");
        r.finished(b);
        assert!(r.admit(2).is_some());
    }

    #[test]
    fn limits_are_validated_by_name() {
        assert!(HttpLimits::default().validate().is_ok());
        let bad = HttpLimits {
            idle_timeout_ms: 1,
            ..Default::default()
        };
        assert!(bad
            .validate()
            .unwrap_err()
            .starts_with("http.idle_timeout_ms"));
    }
}
