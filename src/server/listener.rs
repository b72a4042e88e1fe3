//! Serving a router: plain HTTP straight through `axum::serve`, or TLS through [`TlsListener`], which completes
//! rustls handshakes in their own tasks (bounded in number and in time) and hands finished streams to
//! `axum::serve`. Both paths so share hyper's connection handling and graceful shutdown, and both put an idle
//! limit on every connection. Basic auth and the configured headers are layered around the caller's routes here.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use axum::Router;
use axum::extract::State;
use axum::http::{HeaderName, HeaderValue};
use axum::middleware;
use axum::response::Response;
use axum::serve::Listener;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::{JoinHandle, JoinSet};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::ServerConfig;
use tokio_rustls::server::TlsStream;
use tracing::{debug, error, info};

use super::auth;
use super::idle::Idle;
use super::web_config::WebConfig;

/// How long a client may take to complete the TLS handshake before it is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a connection may carry no bytes either way before it is closed. Far above any scrape's duration
/// and above common scrape intervals, so keep-alive connections of a scraper are reused, not cut.
const IDLE_TIMEOUT: Duration = Duration::from_secs(300);

/// Handshakes in progress at once; further connections wait in the kernel's backlog.
const MAX_HANDSHAKES: usize = 256;

/// Serve `app` on `listener` until `shutdown` completes, then stop accepting and let open requests finish.
///
/// Without `web` (or with a web config that sets no TLS) this is plain HTTP; with TLS configured only TLS is
/// spoken: a plain-HTTP request fails the handshake and its connection is closed without an HTTP answer. Basic
/// auth, when configured, guards every path (unknown paths included); the configured headers go on every
/// response.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    web: Option<WebConfig>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let local = listener.local_addr().context("the listening socket has no local address")?;
    let (app, tls, basic_auth) = match &web {
        Some(web) => (wrap(app, web), web.tls(), web.basic_auth_enabled()),
        None => (app, None, false),
    };
    match tls {
        None => {
            info!(address = %local, basic_auth, "serving HTTP (TLS off)");
            axum::serve(PlainListener(listener), app)
                .with_graceful_shutdown(shutdown)
                .await
                .context("the HTTP server failed")
        }
        Some(config) => {
            info!(address = %local, basic_auth, "serving HTTPS");
            let listener = TlsListener::new(listener, config, local);
            axum::serve(listener, app).with_graceful_shutdown(shutdown).await.context("the HTTPS server failed")
        }
    }
}

/// Layer basic auth (inside) and the configured headers (outside, so a 401 carries them too) around `app`.
fn wrap(mut app: Router, web: &WebConfig) -> Router {
    if let Some(users) = web.auth() {
        app = app.layer(middleware::from_fn_with_state(users, auth::require));
    }
    let headers = web.headers();
    if !headers.is_empty() {
        app = app.layer(middleware::map_response_with_state(headers, add_headers));
    }
    app
}

async fn add_headers(State(headers): State<Arc<[(HeaderName, HeaderValue)]>>, mut response: Response) -> Response {
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

/// Plain TCP with the idle limit on each connection.
struct PlainListener(TcpListener);

impl Listener for PlainListener {
    type Io = Idle<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        // axum's own TcpListener impl retries accept errors (with a back-off for resource exhaustion).
        let (tcp, peer) = Listener::accept(&mut self.0).await;
        set_nodelay(&tcp);
        (Idle::new(tcp, IDLE_TIMEOUT), peer)
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        self.0.local_addr()
    }
}

/// A listener yielding only connections whose TLS handshake has completed. The accept loop runs in its own
/// task, stopped (with every handshake still in progress) when this is dropped, which is what `axum::serve`
/// does on graceful shutdown.
struct TlsListener {
    ready: mpsc::Receiver<(TlsStream<Idle<TcpStream>>, SocketAddr)>,
    local: SocketAddr,
    accepting: JoinHandle<()>,
}

impl TlsListener {
    fn new(tcp: TcpListener, config: Arc<ServerConfig>, local: SocketAddr) -> Self {
        let (tx, ready) = mpsc::channel(64);
        let accepting = tokio::spawn(accept_loop(tcp, TlsAcceptor::from(config), tx));
        Self { ready, local, accepting }
    }
}

impl Drop for TlsListener {
    fn drop(&mut self) {
        self.accepting.abort();
    }
}

impl Listener for TlsListener {
    type Io = TlsStream<Idle<TcpStream>>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        if let Some(conn) = self.ready.recv().await {
            return conn;
        }
        // The accept loop only ends when this listener is dropped; if it died anyway, accept nothing more but
        // let graceful shutdown still complete.
        error!("the TLS accept loop stopped; no new connections will be accepted");
        std::future::pending().await
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        Ok(self.local)
    }
}

/// Accept TCP connections and start a bounded handshake task for each; finished streams go to `ready`.
async fn accept_loop(
    tcp: TcpListener,
    acceptor: TlsAcceptor,
    ready: mpsc::Sender<(TlsStream<Idle<TcpStream>>, SocketAddr)>,
) {
    let mut handshakes = JoinSet::new();
    loop {
        tokio::select! {
            () = ready.closed() => break,
            Some(_) = handshakes.join_next(), if !handshakes.is_empty() => {}
            accepted = tcp.accept(), if handshakes.len() < MAX_HANDSHAKES => match accepted {
                Ok((stream, peer)) => {
                    handshakes.spawn(handshake(acceptor.clone(), stream, peer, ready.clone()));
                }
                Err(e) if is_per_connection(&e) => debug!(error = %e, "a connection failed before it was accepted"),
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    error!(error = %e, "accepting a connection failed; retrying in 1 s");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            },
        }
    }
}

async fn handshake(
    acceptor: TlsAcceptor,
    stream: TcpStream,
    peer: SocketAddr,
    ready: mpsc::Sender<(TlsStream<Idle<TcpStream>>, SocketAddr)>,
) {
    set_nodelay(&stream);
    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(Idle::new(stream, IDLE_TIMEOUT))).await {
        Ok(Ok(tls)) => {
            // Fails only when the server is shutting down; the connection is then simply closed.
            let _ = ready.send((tls, peer)).await;
        }
        Ok(Err(e)) => debug!(%peer, error = %e, "TLS handshake failed (plain HTTP to the HTTPS port?)"),
        Err(_) => debug!(%peer, "TLS handshake timed out after {} s", HANDSHAKE_TIMEOUT.as_secs()),
    }
}

/// Errors that concern one connection only, so the accept loop goes straight on.
fn is_per_connection(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused | io::ErrorKind::ConnectionAborted | io::ErrorKind::ConnectionReset
    )
}
