//! The HTTP server loop: HTTP/1.1 (with WebSocket upgrades) over hyper,
//! with the defences a public server needs against slow and abusive
//! clients, which `axum::serve` does not offer:
//!
//! - a connection cap (`--max-connections`): a connection over it is closed
//!   at once (and counted), so a flood of idle sockets cannot exhaust file
//!   descriptors and starve real requests;
//! - a header-read timeout (`--header-timeout`): a client must send a whole
//!   request head within it, so one that trickles bytes is closed; the same
//!   limit closes a kept-alive connection idle between requests;
//! - a bounded graceful shutdown (`--shutdown-grace`): on SIGTERM no new
//!   connection is accepted, in-flight requests finish, and whatever is
//!   still open after the grace period is dropped.
//!
//! Each request carries `ConnectInfo<SocketAddr>` (the peer), for per-IP
//! limits.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};
use tower::ServiceExt;

use crate::SOCKET_SEND_BUFFER;

#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_connections: usize,
    pub header_timeout: Duration,
    pub shutdown_grace: Duration,
}

/// Serves `app` on `listener` until `stop` turns true, then drains.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: Limits,
    mut stop: watch::Receiver<bool>,
) -> std::io::Result<()> {
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    // Tells every connection to finish its request in flight and close.
    let (drain_tx, drain_rx) = watch::channel(false);
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        // A client that half-closes after sending still gets its request
        // handled (as `axum::serve` does).
        .half_close(true)
        .keep_alive(true);
    loop {
        let (tcp, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                // Out of file descriptors and the like: wait a moment
                // rather than spin.
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = crate::stopped(&mut stop) => break,
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            metrics::counter!("trailcast_http_connections_refused_total").increment(1);
            drop(tcp);
            continue;
        };
        let _ = tcp.set_nodelay(true);
        let _ = socket2::SockRef::from(&tcp).set_send_buffer_size(SOCKET_SEND_BUFFER);
        let app = app.clone();
        let service = hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
            req.extensions_mut().insert(ConnectInfo(peer));
            app.clone().oneshot(req)
        });
        let conn = http
            .serve_connection(TokioIo::new(tcp), service)
            .with_upgrades();
        let mut drain = drain_rx.clone();
        tokio::spawn(async move {
            let mut conn = std::pin::pin!(conn);
            let result = tokio::select! {
                result = conn.as_mut() => result,
                _ = crate::stopped(&mut drain) => {
                    conn.as_mut().graceful_shutdown();
                    conn.await
                }
            };
            if let Err(e) = result {
                tracing::debug!(error = %e, peer = %peer, "connection ended with an error");
            }
            drop(permit);
        });
    }
    drop(listener);
    let _ = drain_tx.send(true);
    // Every connection hands its permit back when it ends.
    let all = u32::try_from(limits.max_connections).unwrap_or(u32::MAX);
    if tokio::time::timeout(limits.shutdown_grace, permits.acquire_many(all))
        .await
        .is_err()
    {
        tracing::warn!(
            grace_s = limits.shutdown_grace.as_secs_f64(),
            "connections still open after the shutdown grace period: dropped"
        );
    }
    Ok(())
}

/// The peer's address, for limits per client.
pub fn peer(req_extensions: &axum::http::Extensions) -> Option<SocketAddr> {
    req_extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map(|ConnectInfo(addr)| *addr)
}
