//! `--web.config.file` end to end: `bms_exporter::server::serve` with a tiny router, over plain HTTP and TLS,
//! with and without basic auth, checked with the real `curl` and raw sockets; certificates are made at test time
//! with the `openssl` CLI, and bad web config files must fail with the specific error. Also the connection limits
//! on both paths: the cap that closes the longest-idle connection for a newcomer, and the header read timeout.

use crate::util::Scratch;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::routing::get;
use bms_exporter::server::{Limits, WebConfig, WebConfigError, serve, serve_with};
use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_rustls::TlsConnector;
use tokio_rustls::rustls::{self, ClientConfig, RootCertStore};

const OPENSSL: &str = "/usr/bin/openssl";
const CURL: &str = "/usr/bin/curl";
const BODY: &str = "hello from the test router\n";
const CHALLENGE: &str = "www-authenticate: Basic realm=\"bms_exporter\"";

fn openssl(dir: &Path, args: &[&str]) {
    assert!(Path::new(OPENSSL).exists(), "{OPENSSL} is missing: these tests need the openssl CLI (Debian: openssl)");
    let out = Command::new(OPENSSL).args(args).current_dir(dir).stdin(Stdio::null()).output().unwrap();
    assert!(out.status.success(), "openssl {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
}

/// A self-signed P-256 server certificate for localhost and 127.0.0.1: `server.crt` and `server.key`.
fn server_cert(dir: &Path) {
    self_signed(dir, &[]);
}

/// A self-signed server certificate as [`server_cert`], marked as no CA: rustls, unlike curl, accepts a
/// self-signed certificate as its own trust anchor only then.
fn leaf_server_cert(dir: &Path) {
    self_signed(dir, &["-addext", "basicConstraints=critical,CA:FALSE"]);
}

fn self_signed(dir: &Path, extra: &[&str]) {
    let args = [
        "req",
        "-x509",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
        "-keyout",
        "server.key",
        "-out",
        "server.crt",
        "-days",
        "2",
        "-subj",
        "/CN=localhost",
        "-addext",
        "subjectAltName=DNS:localhost,IP:127.0.0.1",
    ];
    openssl(dir, &[&args[..], extra].concat());
}

/// A client CA (`ca.crt`) and a client certificate it signed (`client.crt`, `client.key`).
fn client_pki(dir: &Scratch) {
    let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"];
    let mut ca = vec!["req", "-x509"];
    ca.extend(ec);
    ca.extend(["-keyout", "ca.key", "-out", "ca.crt", "-days", "2", "-subj", "/CN=bms test client CA"]);
    openssl(&dir.0, &ca);
    let mut csr = vec!["req"];
    csr.extend(ec);
    csr.extend(["-keyout", "client.key", "-out", "client.csr", "-subj", "/CN=scraper"]);
    openssl(&dir.0, &csr);
    dir.write("client.ext", "basicConstraints=CA:FALSE\nkeyUsage=digitalSignature\nextendedKeyUsage=clientAuth\n");
    openssl(
        &dir.0,
        &[
            "x509",
            "-req",
            "-in",
            "client.csr",
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "client.crt",
            "-days",
            "2",
            "-extfile",
            "client.ext",
        ],
    );
}

fn hash(password: &str) -> String {
    // Cost 4 keeps the tests fast; the server treats every cost alike.
    bcrypt::hash(password, 4).unwrap()
}

/// A running `serve` on a free loopback port, shut down on drop.
struct Server {
    port: u16,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<anyhow::Result<()>>>,
}

impl Server {
    async fn start(web: Option<WebConfig>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let app = Router::new().route("/", get(|| async { BODY }));
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(serve(listener, app, web, async {
            let _ = rx.await;
        }));
        Self { port, shutdown: Some(tx), task: Some(task) }
    }

    /// Like [`Server::start`] under `limits`, with a `/slow` route that answers after a second.
    async fn start_with(web: Option<WebConfig>, limits: Limits) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let app = Router::new().route("/", get(|| async { BODY })).route(
            "/slow",
            get(|| async {
                tokio::time::sleep(Duration::from_secs(1)).await;
                BODY
            }),
        );
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(serve_with(listener, app, web, limits, async {
            let _ = rx.await;
        }));
        Self { port, shutdown: Some(tx), task: Some(task) }
    }

    /// Signal shutdown and wait for `serve` to return.
    async fn stop(mut self) -> anyhow::Result<()> {
        let _ = self.shutdown.take().unwrap().send(());
        tokio::time::timeout(Duration::from_secs(10), self.task.take().unwrap())
            .await
            .expect("serve did not return within 10 s of the shutdown signal")
            .unwrap()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}

/// What curl saw: its exit code, the status code it printed (0 when no response), headers and body.
#[derive(Debug)]
struct Reply {
    exit: i32,
    status: u16,
    head: String,
    body: String,
    stderr: String,
}

/// Run curl with `args` and a URL, printing headers and the status code so both can be checked.
async fn curl(args: &[&str], url: &str) -> Reply {
    assert!(Path::new(CURL).exists(), "{CURL} is missing: these tests need curl");
    let out = tokio::process::Command::new(CURL)
        .args(["-sS", "--max-time", "10", "-D", "-", "-w", "\n%{http_code}"])
        .args(args)
        .arg(url)
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output()
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (rest, status) = text.rsplit_once('\n').unwrap_or(("", &text));
    let (head, body) = rest.split_once("\r\n\r\n").unwrap_or(("", rest));
    Reply {
        exit: out.status.code().unwrap_or(-1),
        status: status.trim().parse().unwrap_or(0),
        head: head.to_lowercase(),
        body: body.to_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// A web config with TLS from `server.crt`/`server.key` (relative names: they resolve from the file's
/// directory) and user alice with `password`.
fn tls_config(dir: &Scratch, password: &str, extra: &str) -> WebConfig {
    server_cert(&dir.0);
    let path = dir.write(
        "web.yml",
        &format!(
            "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n{extra}basic_auth_users:\n  \
             alice: {}\n",
            hash(password)
        ),
    );
    WebConfig::load(&path).unwrap()
}

#[tokio::test]
async fn tls_with_the_right_password_serves_the_body() {
    let dir = Scratch::new("web-tls-ok");
    let web = tls_config(&dir, "correct horse", "");
    assert!(web.tls_enabled() && web.basic_auth_enabled());
    let server = Server::start(Some(web)).await;
    let cacert = dir.path("server.crt");
    let url = format!("https://127.0.0.1:{}/", server.port);
    let reply = curl(&["--cacert", cacert.to_str().unwrap(), "-u", "alice:correct horse"], &url).await;
    assert_eq!((reply.exit, reply.status), (0, 200), "{reply:?}");
    assert_eq!(reply.body, BODY);
    // By host name too: the certificate carries both.
    let by_name = format!("https://localhost:{}/", server.port);
    let reply = curl(&["--cacert", cacert.to_str().unwrap(), "-u", "alice:correct horse"], &by_name).await;
    assert_eq!(reply.status, 200, "{reply:?}");
    server.stop().await.unwrap();
}

#[tokio::test]
async fn tls_with_a_wrong_password_no_credentials_or_an_unknown_user_is_401_with_the_challenge() {
    let dir = Scratch::new("web-tls-401");
    let server = Server::start(Some(tls_config(&dir, "right", ""))).await;
    let cacert = dir.path("server.crt");
    let cacert = cacert.to_str().unwrap();
    let url = format!("https://127.0.0.1:{}/", server.port);
    for (what, args) in [
        ("wrong password", vec!["--cacert", cacert, "-u", "alice:wrong"]),
        ("no credentials", vec!["--cacert", cacert]),
        ("unknown user", vec!["--cacert", cacert, "-u", "mallory:right"]),
        ("empty password", vec!["--cacert", cacert, "-u", "alice:"]),
    ] {
        let reply = curl(&args, &url).await;
        assert_eq!(reply.status, 401, "{what}: {reply:?}");
        assert!(reply.head.contains(&CHALLENGE.to_lowercase()), "{what}: {reply:?}");
        assert!(!reply.body.contains(BODY.trim()), "{what}: the body leaked: {reply:?}");
    }
    // Unknown paths are guarded too: 401 without credentials (no route discovery), 404 with them.
    let missing = format!("https://127.0.0.1:{}/nope", server.port);
    assert_eq!(curl(&["--cacert", cacert], &missing).await.status, 401);
    assert_eq!(curl(&["--cacert", cacert, "-u", "alice:right"], &missing).await.status, 404);
}

#[tokio::test]
async fn plain_http_to_the_tls_port_is_never_served() {
    let dir = Scratch::new("web-tls-plain");
    let server = Server::start(Some(tls_config(&dir, "pw", ""))).await;
    // Raw: a well-formed plain request gets no HTTP answer, and the server closes the connection.
    let mut tcp = TcpStream::connect(("127.0.0.1", server.port)).await.unwrap();
    let auth = "Authorization: Basic YWxpY2U6cHc=\r\n"; // alice:pw, the right credentials
    tcp.write_all(format!("GET / HTTP/1.1\r\nHost: localhost\r\n{auth}\r\n").as_bytes()).await.unwrap();
    let mut seen = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), tcp.read_to_end(&mut seen)).await;
    assert!(read.is_ok(), "the server kept a plain-HTTP connection open");
    let seen = String::from_utf8_lossy(&seen);
    assert!(!seen.contains("HTTP/") && !seen.contains(BODY.trim()), "plain HTTP got an answer: {seen:?}");
    // And curl speaking http:// fails outright.
    let reply = curl(&["-u", "alice:pw"], &format!("http://127.0.0.1:{}/", server.port)).await;
    assert_ne!(reply.exit, 0, "{reply:?}");
    assert_eq!(reply.status, 0, "{reply:?}");
    // The server is unharmed.
    let cacert = dir.path("server.crt");
    let url = format!("https://127.0.0.1:{}/", server.port);
    assert_eq!(curl(&["--cacert", cacert.to_str().unwrap(), "-u", "alice:pw"], &url).await.status, 200);
}

#[tokio::test]
async fn a_client_that_never_finishes_the_handshake_is_dropped_after_the_timeout() {
    let dir = Scratch::new("web-tls-stall");
    let server = Server::start(Some(tls_config(&dir, "pw", ""))).await;
    let mut tcp = TcpStream::connect(("127.0.0.1", server.port)).await.unwrap();
    let start = Instant::now();
    let mut buf = [0u8; 64];
    let n = tokio::time::timeout(Duration::from_secs(20), tcp.read(&mut buf))
        .await
        .expect("a silent client was still connected after 20 s")
        .unwrap_or(0);
    let waited = start.elapsed();
    assert_eq!(n, 0, "expected the server to close the connection");
    assert!(waited >= Duration::from_secs(9), "closed after {waited:?}, before the 10 s handshake timeout");
}

#[tokio::test]
async fn basic_auth_without_tls_works_over_plain_http() {
    let dir = Scratch::new("web-plain-auth");
    let path = dir.write("web.yml", &format!("basic_auth_users:\n  alice: {}\n", hash("pw")));
    let web = WebConfig::load(&path).unwrap();
    assert!(!web.tls_enabled() && web.basic_auth_enabled());
    let server = Server::start(Some(web)).await;
    let url = format!("http://127.0.0.1:{}/", server.port);
    let ok = curl(&["-u", "alice:pw"], &url).await;
    assert_eq!((ok.status, ok.body.as_str()), (200, BODY), "{ok:?}");
    let bad = curl(&["-u", "alice:nope"], &url).await;
    assert_eq!(bad.status, 401, "{bad:?}");
    assert!(bad.head.contains(&CHALLENGE.to_lowercase()), "{bad:?}");
    assert_eq!(curl(&[], &url).await.status, 401);
    server.stop().await.unwrap();
}

#[tokio::test]
async fn without_a_web_config_it_is_plain_http_and_shuts_down_gracefully() {
    let server = Server::start(None).await;
    let port = server.port;
    let reply = curl(&[], &format!("http://127.0.0.1:{port}/")).await;
    assert_eq!((reply.status, reply.body.as_str()), (200, BODY), "{reply:?}");
    server.stop().await.unwrap();
    assert!(TcpStream::connect(("127.0.0.1", port)).await.is_err(), "the port still accepts after shutdown");
}

#[tokio::test]
async fn tls_shuts_down_gracefully_and_releases_the_port() {
    let dir = Scratch::new("web-tls-stop");
    let server = Server::start(Some(tls_config(&dir, "pw", ""))).await;
    let port = server.port;
    // A connection in the middle of its handshake must not hold shutdown up.
    let _stalled = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let started = Instant::now();
    server.stop().await.unwrap();
    assert!(started.elapsed() < Duration::from_secs(5), "shutdown waited {:?}", started.elapsed());
    assert!(TcpStream::connect(("127.0.0.1", port)).await.is_err(), "the port still accepts after shutdown");
}

#[tokio::test]
async fn configured_headers_are_on_every_response_including_401() {
    let dir = Scratch::new("web-headers");
    let path = dir.write(
        "web.yml",
        &format!(
            "http_server_config:\n  headers:\n    X-Frame-Options: deny\n    X-Content-Type-Options: nosniff\n\
             basic_auth_users:\n  alice: {}\n",
            hash("pw")
        ),
    );
    let server = Server::start(Some(WebConfig::load(&path).unwrap())).await;
    let url = format!("http://127.0.0.1:{}/", server.port);
    for (what, args) in [("200", vec!["-u", "alice:pw"]), ("401", vec![])] {
        let reply = curl(&args, &url).await;
        assert_eq!(reply.status.to_string(), what, "{reply:?}");
        assert!(reply.head.contains("x-frame-options: deny"), "{what}: {reply:?}");
        assert!(reply.head.contains("x-content-type-options: nosniff"), "{what}: {reply:?}");
    }
}

#[tokio::test]
async fn require_and_verify_client_cert_refuses_clients_without_a_certificate_from_the_ca() {
    let dir = Scratch::new("web-mtls");
    client_pki(&dir);
    let web = tls_config(&dir, "pw", "  client_auth_type: RequireAndVerifyClientCert\n  client_ca_file: ca.crt\n");
    let server = Server::start(Some(web)).await;
    let url = format!("https://127.0.0.1:{}/", server.port);
    let cacert = dir.path("server.crt");
    let cacert = cacert.to_str().unwrap();
    let (cert, key) = (dir.path("client.crt"), dir.path("client.key"));
    let with_cert = ["--cacert", cacert, "--cert", cert.to_str().unwrap(), "--key", key.to_str().unwrap()];
    let mut args = with_cert.to_vec();
    args.extend(["-u", "alice:pw"]);
    let ok = curl(&args, &url).await;
    assert_eq!((ok.status, ok.body.as_str()), (200, BODY), "{ok:?}");
    let no_cert = curl(&["--cacert", cacert, "-u", "alice:pw"], &url).await;
    assert_eq!(no_cert.status, 0, "served without a client certificate: {no_cert:?}");
    assert!(no_cert.stderr.contains("certificate required"), "{no_cert:?}");
    assert_ne!(no_cert.exit, 0);
    // A certificate the CA did not sign (the server's own, self-signed) is refused as well.
    let server_key = dir.path("server.key");
    let foreign =
        curl(&["--cacert", cacert, "--cert", cacert, "--key", server_key.to_str().unwrap(), "-u", "alice:pw"], &url)
            .await;
    assert_eq!(foreign.status, 0, "served with a certificate from another issuer: {foreign:?}");
    assert!(foreign.stderr.contains("alert"), "expected a TLS alert from the server: {foreign:?}");
}

// ------------------------------------------------------------------------------------------------------------
// Connection limits, on the plain and the TLS path alike.

/// A TLS client connection to `port` that trusts `ca` (the test's self-signed server certificate).
async fn tls_connect(port: u16, ca: &Path) -> tokio_rustls::client::TlsStream<TcpStream> {
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca).unwrap() {
        roots.add(cert.unwrap()).unwrap();
    }
    let config = ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let tcp = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let name = ServerName::try_from("localhost").unwrap();
    TlsConnector::from(Arc::new(config)).connect(name, tcp).await.unwrap()
}

/// Send a request head one byte every `gap` until the server closes the connection: how long that took, how many
/// bytes went out, and whatever came back. Fails if the connection is still open after `limit`.
async fn trickle(
    mut stream: impl AsyncRead + AsyncWrite + Unpin,
    gap: Duration,
    limit: Duration,
) -> (Duration, usize, String) {
    let head = format!("GET / HTTP/1.1\r\nHost: localhost\r\nX-Slow: {}\r\n\r\n", "a".repeat(200));
    let start = Instant::now();
    let mut answer = Vec::new();
    for (sent, byte) in head.bytes().enumerate() {
        if stream.write_all(&[byte]).await.is_err() || stream.flush().await.is_err() {
            return (start.elapsed(), sent, String::from_utf8_lossy(&answer).into_owned());
        }
        let mut buf = [0u8; 512];
        match tokio::time::timeout(gap, stream.read(&mut buf)).await {
            Err(_) => {} // nothing back yet: the next byte
            Ok(Ok(0) | Err(_)) => return (start.elapsed(), sent + 1, String::from_utf8_lossy(&answer).into_owned()),
            Ok(Ok(n)) => answer.extend_from_slice(&buf[..n]),
        }
        assert!(start.elapsed() < limit, "a trickling client was still connected after {limit:?}");
    }
    panic!("the whole trickled head went through: {}", String::from_utf8_lossy(&answer))
}

#[tokio::test]
async fn a_request_head_trickled_a_byte_a_second_is_cut_off_at_the_header_read_timeout() {
    let dir = Scratch::new("web-trickle");
    let timeout = Duration::from_secs(2);
    let limits = Limits { header_read_timeout: timeout, ..Limits::default() };
    for tls in [false, true] {
        let web = tls.then(|| {
            leaf_server_cert(&dir.0);
            let path = dir.write("web.yml", "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n");
            WebConfig::load(&path).unwrap()
        });
        let server = Server::start_with(web, limits).await;
        let (took, sent, answer) = if tls {
            // The timeout counts from the end of the handshake, which is quick here.
            let stream = tls_connect(server.port, &dir.path("server.crt")).await;
            trickle(stream, Duration::from_secs(1), Duration::from_secs(10)).await
        } else {
            let stream = TcpStream::connect(("127.0.0.1", server.port)).await.unwrap();
            trickle(stream, Duration::from_secs(1), Duration::from_secs(10)).await
        };
        assert!(took >= timeout - Duration::from_millis(100), "tls={tls}: closed after {took:?}, before the timeout");
        assert!(took < timeout + Duration::from_millis(1500), "tls={tls}: closed only after {took:?}");
        assert!(sent <= 4, "tls={tls}: {sent} bytes went out before the close");
        assert!(!answer.contains(BODY.trim()), "tls={tls}: a trickled request was answered: {answer}");
        server.stop().await.unwrap();
    }
}

#[tokio::test]
async fn at_the_connection_cap_the_longest_idle_connection_makes_room_for_a_scrape() {
    let dir = Scratch::new("web-cap");
    // A long header timeout: only the cap may close the idle connections here.
    let limits = Limits { max_connections: 4, header_read_timeout: Duration::from_secs(60) };
    for tls in [false, true] {
        let web = tls.then(|| tls_config(&dir, "pw", ""));
        let server = Server::start_with(web, limits).await;
        // Four connections that say nothing (on the TLS port: not even a ClientHello) fill the cap.
        let mut idle = Vec::new();
        for _ in 0..4 {
            idle.push(TcpStream::connect(("127.0.0.1", server.port)).await.unwrap());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        let cacert = dir.path("server.crt");
        let (url, args) = if tls {
            (
                format!("https://127.0.0.1:{}/", server.port),
                vec!["--cacert", cacert.to_str().unwrap(), "-u", "alice:pw"],
            )
        } else {
            (format!("http://127.0.0.1:{}/", server.port), vec![])
        };
        let started = Instant::now();
        let reply = curl(&args, &url).await;
        assert_eq!((reply.status, reply.body.as_str()), (200, BODY), "tls={tls}: {reply:?}");
        assert!(started.elapsed() < Duration::from_secs(3), "tls={tls}: answered after {:?}", started.elapsed());
        // The oldest idle connection was closed to make room; the others are still open.
        let mut byte = [0u8; 1];
        let oldest = tokio::time::timeout(Duration::from_secs(2), idle[0].read(&mut byte)).await;
        assert!(matches!(oldest, Ok(Ok(0) | Err(_))), "tls={tls}: the longest-idle connection is still open");
        for (i, newer) in idle.iter_mut().enumerate().skip(1) {
            let open = tokio::time::timeout(Duration::from_millis(200), newer.read(&mut byte)).await.is_err();
            assert!(open, "tls={tls}: idle connection {i} was closed although the cap had room");
        }
        // Shutdown answers a request in progress and closes the idle connections without waiting for them.
        let stop = async {
            tokio::time::sleep(Duration::from_millis(300)).await;
            let stopping = Instant::now();
            server.stop().await.unwrap();
            stopping.elapsed()
        };
        let slow_url = format!("{url}slow");
        let (slow, stop_took) = tokio::join!(curl(&args, &slow_url), stop);
        assert!(stop_took < Duration::from_secs(3), "tls={tls}: shutdown took {stop_took:?}");
        assert_eq!((slow.status, slow.body.as_str()), (200, BODY), "tls={tls}: {slow:?}");
    }
}

// ------------------------------------------------------------------------------------------------------------
// Bad web config files: each fails at start-up with its own message.

fn load_err(path: &Path) -> String {
    match WebConfig::load(path) {
        Ok(web) => panic!("{} loaded: {web:?}", path.display()),
        Err(e) => e.to_string(),
    }
}

#[test]
fn a_missing_web_config_file_is_named() {
    let dir = Scratch::new("web-cfg-missing");
    let path = dir.path("nope.yml");
    let err = WebConfig::load(&path).unwrap_err();
    assert!(matches!(err, WebConfigError::Read { .. }), "{err:?}");
    assert!(err.to_string().contains(&format!("web config {}: cannot read it", path.display())), "{err}");
}

#[test]
fn an_unknown_key_names_the_file_line_and_key() {
    let dir = Scratch::new("web-cfg-unknown");
    let path = dir.write("web.yml", "tls_server_config:\n  cert_file: a.crt\n  keyfile: a.key\n");
    let err = load_err(&path);
    assert!(err.starts_with(&format!("web config {}: ", path.display())), "{err}");
    assert!(err.contains("line 3 column 3: unknown field `keyfile`"), "{err}");
}

#[test]
fn an_unsupported_exporter_toolkit_key_says_so() {
    let dir = Scratch::new("web-cfg-unsupported");
    let path = dir.write("web.yml", "rate_limit:\n  interval: 1s\n  burst: 20\n");
    let err = load_err(&path);
    assert!(err.contains("rate_limit is not supported by bms_exporter"), "{err}");
    assert!(err.contains("line 2"), "{err}");
}

#[test]
fn a_missing_key_file_names_the_key_line_and_resolved_path() {
    let dir = Scratch::new("web-cfg-nokey");
    server_cert(&dir.0);
    let path = dir.write("web.yml", "tls_server_config:\n  cert_file: server.crt\n  key_file: absent.key\n");
    let err = load_err(&path);
    let expected = format!(
        "web config {}:3:13: tls_server_config.key_file: cannot read {}",
        path.display(),
        dir.path("absent.key").display()
    );
    assert!(err.starts_with(&expected), "{err}\nexpected it to start with {expected}");
}

#[test]
fn a_certificate_file_that_is_not_pem_is_named() {
    let dir = Scratch::new("web-cfg-badpem");
    server_cert(&dir.0);
    dir.write("garbage.crt", "this is not a certificate\n");
    let path = dir.write("web.yml", "tls_server_config:\n  cert_file: garbage.crt\n  key_file: server.key\n");
    let err = load_err(&path);
    assert!(err.contains(":2:14: tls_server_config.cert_file: no \"BEGIN CERTIFICATE\" block found"), "{err}");

    // A PEM block whose base64 is broken.
    dir.write("broken.crt", "-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n");
    let path = dir.write("web.yml", "tls_server_config:\n  cert_file: broken.crt\n  key_file: server.key\n");
    let err = load_err(&path);
    assert!(err.contains("tls_server_config.cert_file: not a valid PEM certificate"), "{err}");

    // Well-formed PEM around bytes that are no certificate: rustls refuses the pair.
    dir.write("junk.crt", "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n");
    let path = dir.write("web.yml", "tls_server_config:\n  cert_file: junk.crt\n  key_file: server.key\n");
    let err = load_err(&path);
    assert!(err.contains("the certificate and key cannot be used together"), "{err}");
}

#[test]
fn a_certificate_given_as_the_key_or_a_key_of_another_certificate_is_refused() {
    let dir = Scratch::new("web-cfg-wrongkey");
    server_cert(&dir.0);
    let path = dir.write("web.yml", "tls_server_config:\n  cert_file: server.crt\n  key_file: server.crt\n");
    let err = load_err(&path);
    assert!(err.contains("tls_server_config.key_file: no private key block"), "{err}");

    openssl(&dir.0, &["ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", "other.key"]);
    let path = dir.write("web.yml", "tls_server_config:\n  cert_file: server.crt\n  key_file: other.key\n");
    let err = load_err(&path);
    assert!(
        err.contains("tls_server_config.cert_file and tls_server_config.key_file: the certificate and key cannot be used together"),
        "{err}"
    );
}

#[test]
fn relative_file_names_resolve_from_the_web_config_directory_not_the_working_directory() {
    let dir = Scratch::new("web-cfg-relative");
    let conf = dir.path("conf");
    std::fs::create_dir_all(&conf).unwrap();
    server_cert(&conf);
    assert_ne!(std::env::current_dir().unwrap(), conf);
    let path = conf.join("web.yml");
    std::fs::write(&path, "tls_server_config:\n  cert_file: server.crt\n  key_file: ./server.key\n").unwrap();
    assert!(WebConfig::load(&path).unwrap().tls_enabled());
    // An absolute name stays absolute.
    let abs = conf.join("server.key");
    std::fs::write(&path, format!("tls_server_config:\n  cert_file: server.crt\n  key_file: {}\n", abs.display()))
        .unwrap();
    assert!(WebConfig::load(&path).unwrap().tls_enabled());
}

#[test]
fn client_auth_needs_a_ca_and_a_ca_needs_client_auth() {
    let dir = Scratch::new("web-cfg-clientauth");
    server_cert(&dir.0);
    let base = "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n";
    let path = dir.write("web.yml", &format!("{base}  client_auth_type: RequireAndVerifyClientCert\n"));
    assert!(load_err(&path).contains("verifying client certificates needs client_ca_file"), "{}", load_err(&path));
    let path = dir.write("web.yml", &format!("{base}  client_ca_file: server.crt\n"));
    assert!(load_err(&path).contains("client_auth_type is NoClientCert"), "{}", load_err(&path));
    let path = dir.write("web.yml", &format!("{base}  min_version: TLS13\n  max_version: TLS12\n"));
    assert!(load_err(&path).contains("tls_server_config.min_version: is above max_version"), "{}", load_err(&path));
}
