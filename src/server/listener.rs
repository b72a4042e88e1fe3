//! Serving a router: one accept loop for plain HTTP and TLS that admits each connection under the connection cap
//! (see [`connections`](super::connections)), completes the TLS handshake where configured (bounded in time), and
//! serves it with hyper's HTTP/1 connection, which closes a connection whose request head does not arrive within
//! the header read timeout. An idle limit guards every connection mid-request, and shutdown is graceful: the
//! listener closes at once, open requests are answered, and idle connections close. Basic auth and the configured
//! headers are layered around the caller's routes here, from the web config in force at each request (and the TLS
//! certificate from the one in force at each handshake; see [`LiveWebConfig`]).

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderName, HeaderValue, Request};
use axum::middleware::{self, Next};
use axum::response::Response;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::{Service as _, service_fn};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;
use tracing::{debug, error, info, warn};

use super::auth;
use super::connections::{Connections, Slot};
use super::idle::Idle;
use super::live::LiveWebConfig;
use super::web_config::WebConfig;

/// How long a client may take to complete the TLS handshake before it is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a connection may carry no bytes either way while a request is being read or answered (a body that
/// stops arriving, a client that stops reading its answer). Waiting for a request head is bounded by the header
/// read timeout instead.
const IDLE_TIMEOUT: Duration = Duration::from_secs(300);

/// How long shutdown waits for requests in progress before closing their connections anyway: well inside
/// systemd's stop timeout of the shipped unit (20 s).
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// Bounds on connections: how many may be open, and how long one may take to send a request head.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Connections open at once (`--web.max-connections`); at the cap the longest-idle one is closed for a new one.
    pub max_connections: usize,
    /// Time for a complete request head (`--web.header-read-timeout`), counted from the connection's start (after
    /// the TLS handshake) or from the end of the previous answer on a kept-alive connection.
    pub header_read_timeout: Duration,
}

impl Limits {
    /// The default cap: Prometheus's own `--web.max-connections` default, far below the usual 1,024-descriptor
    /// soft limit, so connections cannot take the descriptors the devices and the runtime need.
    pub const DEFAULT_MAX_CONNECTIONS: usize = 512;
    /// The default header read timeout: a scraper sends its whole request head at once, so a few seconds is
    /// generous, and a client trickling bytes or holding connections silent loses them soon.
    pub const DEFAULT_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(5);
}

impl Default for Limits {
    fn default() -> Self {
        Self { max_connections: Self::DEFAULT_MAX_CONNECTIONS, header_read_timeout: Self::DEFAULT_HEADER_READ_TIMEOUT }
    }
}

/// Serve `app` on `listener` with the default [`Limits`] until `shutdown` completes; see [`serve_with`].
pub async fn serve(
    listener: TcpListener,
    app: Router,
    web: Option<WebConfig>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    serve_with(listener, app, web, Limits::default(), shutdown).await
}

/// Serve `app` on `listener` under `limits` until `shutdown` completes, then stop accepting, let open requests
/// finish (for at most 10 s) and close every connection.
///
/// Without `web` (or with a web config that sets no TLS) this is plain HTTP; with TLS configured only TLS is
/// spoken: a plain-HTTP request fails the handshake and its connection is closed without an HTTP answer. Basic
/// auth, when configured, guards every path (unknown paths included); the configured headers go on every
/// response.
pub async fn serve_with(
    listener: TcpListener,
    app: Router,
    web: Option<WebConfig>,
    limits: Limits,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let local = listener.local_addr().context("the listening socket has no local address")?;
    // Whether TLS is spoken is decided here, once; the certificate and users may change while serving.
    let (tls, basic_auth) = web.as_ref().map_or((false, false), |w| (w.tls_enabled(), w.basic_auth_enabled()));
    let live = web.map(|web| Arc::new(LiveWebConfig::new(web)));
    let app = match &live {
        Some(live) => wrap(app, live),
        None => app,
    };
    let header_read_timeout = format!("{:?}", limits.header_read_timeout);
    let max_connections = limits.max_connections;
    if tls {
        info!(address = %local, basic_auth, max_connections, header_read_timeout, "serving HTTPS");
    } else {
        info!(address = %local, basic_auth, max_connections, header_read_timeout, "serving HTTP (TLS off)");
    }
    let mut http = http1::Builder::new();
    http.timer(TokioTimer::new()).header_read_timeout(limits.header_read_timeout);
    let shared = Arc::new(Shared { app, http, live: live.filter(|_| tls) });
    let connections = Connections::new(limits.max_connections);

    let mut shutdown = std::pin::pin!(shutdown);
    let mut tasks = JoinSet::new();
    loop {
        let (tcp, peer) = tokio::select! {
            () = &mut shutdown => break,
            Some(_) = tasks.join_next(), if !tasks.is_empty() => continue,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) if is_per_connection(&e) => {
                    debug!(error = %e, "a connection failed before it was accepted");
                    continue;
                }
                Err(e) => {
                    // Out of descriptors and the like: back off instead of spinning.
                    error!(error = %e, "accepting a connection failed; retrying in 1 s");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            },
        };
        let slot = tokio::select! {
            () = &mut shutdown => break,
            slot = connections.admit() => slot,
        };
        tasks.spawn(connection(Arc::clone(&shared), tcp, peer, slot));
    }

    // Release the port first, so a restarted exporter can bind it while this one finishes its answers.
    drop(listener);
    connections.close_all();
    let drained = tokio::time::timeout(SHUTDOWN_GRACE, async { while tasks.join_next().await.is_some() {} }).await;
    if drained.is_err() {
        warn!(
            open = connections.open(),
            "requests still unanswered {} s after shutdown; closing them",
            SHUTDOWN_GRACE.as_secs()
        );
        tasks.shutdown().await;
    }
    Ok(())
}

/// What every connection task needs.
struct Shared {
    app: Router,
    http: http1::Builder,
    /// With TLS on: the web config whose certificate each handshake uses.
    live: Option<Arc<LiveWebConfig>>,
}

/// One connection from accept to close: the TLS handshake where configured, then HTTP/1.
async fn connection(shared: Arc<Shared>, tcp: TcpStream, peer: SocketAddr, slot: Slot) {
    set_nodelay(&tcp);
    let io = Idle::new(tcp, IDLE_TIMEOUT);
    // The certificate in force now: a renewed one is served from the next connection on.
    let Some(config) = shared.live.as_ref().and_then(|live| live.current().tls()) else {
        return http(&shared, io, peer, slot).await;
    };
    let acceptor = TlsAcceptor::from(config);
    let handshake = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(io));
    let tls = tokio::select! {
        done = handshake => match done {
            Ok(Ok(tls)) => tls,
            Ok(Err(e)) => return debug!(%peer, error = %e, "TLS handshake failed (plain HTTP to the HTTPS port?)"),
            Err(_) => return debug!(%peer, "TLS handshake timed out after {} s", HANDSHAKE_TIMEOUT.as_secs()),
        },
        () = slot.close_requested() => return debug!(%peer, "closed during the TLS handshake"),
    };
    http(&shared, tls, peer, slot).await;
}

/// Serve HTTP/1 on an established connection until the client goes, the header read timeout or idle limit
/// strikes, or the connection is asked to close.
async fn http<I>(shared: &Shared, io: I, peer: SocketAddr, slot: Slot)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let slot = Arc::new(slot);
    let router = TowerToHyperService::new(shared.app.clone());
    let tracked = Arc::clone(&slot);
    let service = service_fn(move |request: Request<Incoming>| {
        // Marked here, when hyper hands the request over, so a connection with a request is never taken for idle.
        let busy = tracked.begin_request();
        let response = router.call(request);
        async move {
            let response = response.await;
            drop(busy);
            response
        }
    });
    let conn = shared.http.serve_connection(TokioIo::new(io), service);
    let mut conn = std::pin::pin!(conn);
    let mut closing = false;
    loop {
        tokio::select! {
            done = conn.as_mut() => {
                if let Err(e) = done {
                    debug!(%peer, error = %e, "connection closed");
                }
                return;
            }
            () = slot.close_requested(), if !closing => {
                closing = true;
                if !slot.served_any() {
                    // Nothing was asked of it (at most part of a request head arrived): closing loses nothing.
                    return debug!(%peer, "closed a connection that had sent no request");
                }
                // hyper closes it at once if it is between requests, or after the answer in progress.
                conn.as_mut().graceful_shutdown();
            }
        }
    }
}

/// Layer basic auth (inside) and the configured headers (outside, so a 401 carries them too) around `app`, each
/// as the web config in force when the request arrives says.
fn wrap(app: Router, live: &Arc<LiveWebConfig>) -> Router {
    app.layer(middleware::from_fn_with_state(Arc::clone(live), require_auth))
        .layer(middleware::from_fn_with_state(Arc::clone(live), add_headers))
}

/// Basic auth by the users in force (none configured: every request passes).
async fn require_auth(State(live): State<Arc<LiveWebConfig>>, request: Request<Body>, next: Next) -> Response {
    match live.current().auth() {
        Some(users) => auth::require(State(users), request, next).await,
        None => next.run(request).await,
    }
}

/// The headers in force, on every response.
async fn add_headers(State(live): State<Arc<LiveWebConfig>>, request: Request<Body>, next: Next) -> Response {
    let headers: Arc<[(HeaderName, HeaderValue)]> = live.current().headers();
    let mut response = next.run(request).await;
    for (name, value) in headers.iter() {
        response.headers_mut().insert(name.clone(), value.clone());
    }
    response
}

/// Scrapes are small request/response exchanges; Nagle's delay would only add latency.
fn set_nodelay(tcp: &TcpStream) {
    if let Err(e) = tcp.set_nodelay(true) {
        debug!(error = %e, "cannot set TCP_NODELAY");
    }
}

/// Errors that concern one connection only, so the accept loop goes straight on.
fn is_per_connection(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused | io::ErrorKind::ConnectionAborted | io::ErrorKind::ConnectionReset
    )
}
