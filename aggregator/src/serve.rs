//! The HTTP/1.1 server loop: the router on hyper, with the read timeouts that
//! keep slow or stalled clients (slow-loris) from holding connections and
//! tasks forever. `axum::serve` sets neither.
//!
//! - Request headers must arrive within `server.read_timeout` of the first
//!   byte of a request (hyper's `header_read_timeout`; the connection is
//!   closed otherwise).
//! - A request body must arrive within `server.read_timeout` of the headers
//!   ([`body_timeout`], a middleware; HTTP 408 otherwise).
//!
//! Idle keep-alive connections are left open (Grafana keeps them) and are
//! closed on shutdown, which waits for requests in flight.

use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::Request;
use axum::http::{Method, StatusCode};
use axum::middleware::Next;
use axum::response::Response;
use axum::serve::Listener;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::sync::watch;

/// Serves `app` on `listener` until `stop` turns true, then lets requests in
/// flight finish. `read_timeout` bounds how long request headers may take.
pub async fn serve<L: Listener>(mut listener: L, app: Router, read_timeout: Duration, mut stop: watch::Receiver<bool>) {
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new()).header_read_timeout(read_timeout);
    // Every connection task holds a receiver; shutdown waits for them all.
    let (close_tx, close_rx) = watch::channel(());
    loop {
        let (io, _) = tokio::select! {
            c = listener.accept() => c,
            _ = async { stop.wait_for(|s| *s).await.map(|_| ()) } => break,
        };
        let service = TowerToHyperService::new(app.clone());
        let conn = http.serve_connection(TokioIo::new(io), service).with_upgrades();
        let mut stop = stop.clone();
        let close_rx = close_rx.clone();
        tokio::spawn(async move {
            let mut conn = std::pin::pin!(conn);
            tokio::select! {
                _ = conn.as_mut() => {}
                _ = async { stop.wait_for(|s| *s).await.map(|_| ()) } => {
                    conn.as_mut().graceful_shutdown();
                    let _ = conn.await;
                }
            }
            drop(close_rx);
        });
    }
    drop(close_rx);
    close_tx.closed().await;
}

/// Middleware: reads the whole body of a POST or PUT within `timeout` (HTTP
/// 408 when the client is too slow) and at most `max` bytes (HTTP 413), so
/// no handler waits on a stalled client.
pub async fn body_timeout(timeout: Duration, max: usize, req: Request, next: Next) -> Response {
    if !matches!(*req.method(), Method::POST | Method::PUT) {
        return next.run(req).await;
    }
    let (parts, body) = req.into_parts();
    let bytes = match tokio::time::timeout(timeout, axum::body::to_bytes(body, max)).await {
        Ok(Ok(b)) => b,
        Ok(Err(e)) => {
            let too_large = std::error::Error::source(&e).is_some_and(|s| s.is::<http_body_util::LengthLimitError>());
            return if too_large {
                crate::http::text_error(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    format!("request body exceeds limits.max_request_size = {max} bytes"),
                )
            } else {
                crate::http::text_error(StatusCode::BAD_REQUEST, format!("cannot read the request body: {e}"))
            };
        }
        Err(_) => {
            return crate::http::text_error(
                StatusCode::REQUEST_TIMEOUT,
                format!(
                    "request body not received within server.read_timeout = {}",
                    cairn_wire::config::ConfigDuration(timeout)
                ),
            );
        }
    };
    next.run(Request::from_parts(parts, Body::from(bytes))).await
}
