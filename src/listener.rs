//! The HTTP listener: one accept loop for plain and TLS connections that hands each one
//! to hyper's HTTP/1.1 server (PutMedia needs HTTP/1.1). It owns the connection-level
//! limits that keep clients who send nothing, or send slowly, from holding sockets and
//! memory: a cap on open connections, a TLS handshake deadline and a header-read timeout
//! (which is also the keep-alive idle timeout). Request-level limits (JSON body deadline
//! and size) are in `api::auth`. Shutdown stops accepting, asks every connection to
//! finish its request and waits up to a grace period.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::HttpSettings;

/// Open client connections.
pub const OPEN_CONNECTIONS: &str = "streamvault_http_connections";
/// Times the listener stopped accepting because `http.max_connections` were open.
pub const CONNECTION_CAP_REACHED: &str = "streamvault_http_connection_cap_reached_total";
/// Connections closed because a request header did not arrive in time.
pub const HEADER_TIMEOUTS: &str = "streamvault_http_header_timeouts_total";

/// Serves `app` on `listener` (over TLS when `tls` is set) until `stop`, then waits up to
/// `grace` for open connections to finish.
pub async fn serve(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    app: Router,
    limits: HttpSettings,
    stop: CancellationToken,
    grace: Duration,
) {
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    let tracker = TaskTracker::new();
    let mut last_warning: Option<Instant> = None;
    loop {
        let permit = match permits.clone().try_acquire_owned() {
            Ok(p) => p,
            Err(_) => {
                metrics::counter!(CONNECTION_CAP_REACHED).increment(1);
                if last_warning.is_none_or(|t| t.elapsed() >= Duration::from_secs(60)) {
                    tracing::warn!(
                        max_connections = limits.max_connections,
                        "connection limit reached: not accepting until a connection closes (http.max_connections)"
                    );
                    last_warning = Some(Instant::now());
                }
                tokio::select! {
                    _ = stop.cancelled() => break,
                    p = permits.clone().acquire_owned() => p.expect("the semaphore is never closed"),
                }
            }
        };
        let (tcp, peer) = tokio::select! {
            _ = stop.cancelled() => break,
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(e) => {
                    // EMFILE and the like: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        // No Nagle: ack lines and live-tail frames are small writes that must go out at
        // once, not wait for the peer's delayed ACK (tens of ms per write).
        let _ = tcp.set_nodelay(true);
        let (tls, app, stop, limits) = (tls.clone(), app.clone(), stop.clone(), limits.clone());
        tracker.spawn(async move {
            let _permit = permit;
            let _open = OpenGauge::new();
            match tls {
                None => connection(TokioIo::new(tcp), app, &limits, stop, peer).await,
                Some(acceptor) => {
                    let handshake =
                        tokio::time::timeout(limits.header_read_timeout, acceptor.accept(tcp));
                    match handshake.await {
                        Ok(Ok(t)) => connection(TokioIo::new(t), app, &limits, stop, peer).await,
                        Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                        Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                    }
                }
            }
        });
    }
    tracker.close();
    if tokio::time::timeout(grace, tracker.wait()).await.is_err() {
        tracing::warn!("open connections did not finish within {grace:?}; closing them");
    }
}

/// Counts one open connection while it lives.
struct OpenGauge;

impl OpenGauge {
    fn new() -> Self {
        metrics::gauge!(OPEN_CONNECTIONS).increment(1.0);
        Self
    }
}

impl Drop for OpenGauge {
    fn drop(&mut self) {
        metrics::gauge!(OPEN_CONNECTIONS).decrement(1.0);
    }
}

/// Most bytes hyper buffers from one connection's socket. Its default (about 400 KiB,
/// grown while reads fill the buffer) let 1,000 cameras sending a fragment a second each
/// keep ~400 MB of read buffers outside the ingest budget; 64 KiB still reads a 2 Mbit/s
/// camera's second in four reads.
const READ_BUFFER_BYTES: usize = 64 << 10;

/// Serves one connection until it ends, or asks it to finish when `stop` fires.
async fn connection<I>(
    io: I,
    app: Router,
    limits: &HttpSettings,
    stop: CancellationToken,
    peer: std::net::SocketAddr,
) where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let svc = TowerToHyperService::new(app);
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .max_buf_size(READ_BUFFER_BYTES)
        .header_read_timeout(limits.header_read_timeout)
        .serve_connection(io, svc)
        .with_upgrades();
    let mut conn = std::pin::pin!(conn);
    tokio::select! {
        r = conn.as_mut() => {
            if let Err(e) = r {
                if e.is_timeout() {
                    metrics::counter!(HEADER_TIMEOUTS).increment(1);
                }
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
        }
        _ = stop.cancelled() => {
            conn.as_mut().graceful_shutdown();
            let _ = conn.await;
        }
    }
}

/// Raises the soft limit on open files to the hard limit (1,000 cameras plus their
/// readers need more than the usual 1,024), and returns the limit now in force.
pub fn raise_fd_limit() -> Option<u64> {
    #[cfg(unix)]
    {
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit/setrlimit only read and write the struct we pass.
        unsafe {
            if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
                return None;
            }
            if lim.rlim_cur < lim.rlim_max {
                let want = libc::rlimit {
                    rlim_cur: lim.rlim_max,
                    rlim_max: lim.rlim_max,
                };
                if libc::setrlimit(libc::RLIMIT_NOFILE, &want) == 0 {
                    lim.rlim_cur = lim.rlim_max;
                }
            }
        }
        #[allow(clippy::unnecessary_cast)] // rlim_t is not u64 on every unix
        Some(lim.rlim_cur as u64)
    }
    #[cfg(not(unix))]
    {
        None
    }
}
