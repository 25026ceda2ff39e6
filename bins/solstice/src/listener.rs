//! The HTTP server's connections. Every connection is admitted under a cap
//! below the descriptor limit with a share per client address
//! ([`solstice_core::net::Admission`]: a newcomer takes the place of the
//! heaviest address's oldest connection); the request headers must arrive
//! within [`HttpLimits::header_read`], which also closes a keep-alive
//! connection idle that long; and a request is answered within
//! [`HttpLimits::request`] (503 with `Retry-After` otherwise). Webhook
//! bodies have their own deadline and memory budget (`http.rs`).

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use axum::http::{HeaderValue, Request, StatusCode, header};
use axum::response::{IntoResponse, Response};
use hyper_util::rt::{TokioIo, TokioTimer};
use solstice_core::net::{Admission, ConnectionLimits, GuardedListener};
use tower::ServiceExt;

/// What the HTTP server allows a client.
#[derive(Debug, Clone, Copy)]
pub struct HttpLimits {
    /// Connections in all and per client address.
    pub connections: ConnectionLimits,
    /// A request's headers must arrive within this (also: how long a
    /// keep-alive connection may idle).
    pub header_read: Duration,
    /// A request is answered within this.
    pub request: Duration,
}

/// Serves `router` on `listener` until `stop` completes, then lets the
/// requests in progress finish for up to five seconds.
pub async fn serve(
    listener: tokio::net::TcpListener,
    limits: HttpLimits,
    router: Router,
    stop: impl Future<Output = ()>,
) {
    let router = router.layer(axum::middleware::from_fn(
        move |req: Request<axum::body::Body>, next: axum::middleware::Next| async move {
            match tokio::time::timeout(limits.request, next.run(req)).await {
                Ok(response) => response,
                Err(_) => busy("the request took too long; try again later", limits.request),
            }
        },
    ));
    let admission = Admission::new(limits.connections);
    let mut incoming = GuardedListener::new(listener, admission);
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut http1 = hyper::server::conn::http1::Builder::new();
    http1
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read)
        .keep_alive(true);
    tokio::pin!(stop);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = incoming.accept() => accepted,
            () = &mut stop => break,
        };
        let router = router.clone();
        let service = hyper::service::service_fn(move |mut req: Request<hyper::body::Incoming>| {
            if let Some(peer) = peer {
                req.extensions_mut().insert(ConnectInfo::<SocketAddr>(peer));
            }
            router.clone().oneshot(req.map(axum::body::Body::new))
        });
        let connection = graceful.watch(http1.serve_connection(TokioIo::new(stream), service));
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(peer = ?peer, error = %e, "HTTP connection ended with an error");
            }
        });
    }
    // No new connections; those open finish what they are doing.
    drop(incoming);
    let _ = tokio::time::timeout(Duration::from_secs(5), graceful.shutdown()).await;
}

/// 503 with `Retry-After`: the daemon is busy, not broken.
pub fn busy(why: &str, retry: Duration) -> Response {
    let mut response = (
        StatusCode::SERVICE_UNAVAILABLE,
        axum::Json(serde_json::json!({ "error": why })),
    )
        .into_response();
    let seconds = retry.as_secs().max(1).to_string();
    if let Ok(v) = HeaderValue::from_str(&seconds) {
        response.headers_mut().insert(header::RETRY_AFTER, v);
    }
    response
}
