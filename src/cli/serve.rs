//! `bms_exporter [serve]`: load the configuration (or start the demo devices), start one worker per bus and
//! serve `/metrics`, `/probe` and the landing page until SIGTERM or SIGINT; SIGHUP and `POST /-/reload` re-read
//! the configuration file (see [`crate::reload`]). The flags are read once: a reload never changes them.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context as _, bail};
use clap::{Args, ValueEnum};
use tokio::net::{TcpListener, TcpSocket};
use tokio::signal::unix::{Signal, SignalKind, signal};
use tokio::sync::{mpsc, oneshot, watch};

use crate::config;
use crate::reload::Running;
use crate::scrape::Freshness;
use crate::server;
use crate::server::reload::Routes;
use crate::session::Settings;

/// Arguments of `serve` (also accepted without the word `serve`).
#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    /// Configuration file (YAML): devices and defaults. See examples/config.yaml.
    #[arg(long, value_name = "FILE", conflicts_with = "demo")]
    pub config: Option<PathBuf>,
    /// Serve simulated devices (a 16-cell Daly, a Sinowealth board, a 3-pack Pace rack) without a config or
    /// hardware.
    #[arg(long)]
    pub demo: bool,
    /// Address to listen on: `:PORT` for every interface, or `HOST:PORT`.
    #[arg(long = "web.listen-address", value_name = "ADDR", default_value = ":10485")]
    pub listen_address: String,
    /// Path under which to expose the metrics.
    #[arg(long = "web.telemetry-path", value_name = "PATH", default_value = "/metrics")]
    pub telemetry_path: String,
    /// Web configuration (exporter-toolkit format): TLS certificate and key, basic_auth_users with bcrypt hashes.
    #[arg(long = "web.config.file", value_name = "FILE")]
    pub web_config: Option<PathBuf>,
    /// Most HTTP connections open at once; at the limit the longest-idle connection is closed to admit a new one.
    /// Lowered to fit the open-file limit when that is too small.
    #[arg(
        long = "web.max-connections",
        value_name = "N",
        default_value_t = server::Limits::DEFAULT_MAX_CONNECTIONS,
        value_parser = max_connections,
    )]
    pub max_connections: usize,
    /// Close a connection that has not sent a complete request head within this time (e.g. 5s, 500ms, 1m).
    #[arg(
        long = "web.header-read-timeout",
        value_name = "DURATION",
        default_value = "5s",
        value_parser = header_read_timeout,
    )]
    pub header_read_timeout: Duration,
    /// Only log messages with this level or above.
    #[arg(long = "log.level", value_enum, value_name = "LEVEL", default_value_t = LogLevel::Info)]
    pub log_level: LogLevel,
    /// Output format of log messages.
    #[arg(long = "log.format", value_enum, value_name = "FORMAT", default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

/// `--log.level`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogLevel {
    /// Errors only.
    Error,
    /// Errors and warnings (a device that stops answering, a lost link).
    Warn,
    /// Start-up, connections and the above.
    Info,
    /// Every frame on the wire, in hex.
    Debug,
    /// Everything.
    Trace,
}

impl From<LogLevel> for tracing::Level {
    fn from(level: LogLevel) -> Self {
        match level {
            LogLevel::Error => Self::ERROR,
            LogLevel::Warn => Self::WARN,
            LogLevel::Info => Self::INFO,
            LogLevel::Debug => Self::DEBUG,
            LogLevel::Trace => Self::TRACE,
        }
    }
}

/// `--log.format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// One human-readable line per message.
    Text,
    /// One JSON object per line, for log collectors.
    Json,
}

/// Log to stderr as `--log.level` and `--log.format` say.
pub(super) fn init_logging(args: &ServeArgs) {
    let level = tracing::Level::from(args.log_level);
    let builder = tracing_subscriber::fmt().with_writer(std::io::stderr).with_max_level(level);
    // A second initialisation (tests calling run twice) is harmless: the first subscriber stays.
    let _ = match args.log_format {
        LogFormat::Json => builder.json().try_init(),
        LogFormat::Text => builder.with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr())).try_init(),
    };
}

/// Run the exporter until a shutdown signal.
pub(super) fn serve(args: &ServeArgs) -> anyhow::Result<()> {
    // First, before any descriptor is opened; it logs what it did.
    let open_files = server::raise_open_file_limit();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().context("starting the runtime")?;
    // Before anything slow (reading the config included): from here on SIGHUP reloads instead of ending the
    // process, its default action, so a `systemctl reload` sent while the exporter starts does not stop it.
    let hangup = {
        let _runtime = runtime.enter();
        match signal(SignalKind::hangup()) {
            Ok(hangup) => Some(hangup),
            Err(error) => {
                tracing::warn!(%error, "no SIGHUP handler; reload with POST /-/reload only");
                None
            }
        }
    };
    let config = match (&args.config, args.demo) {
        (Some(path), false) => Some((path.clone(), config::load(path)?)),
        (None, true) => None,
        _ => bail!("give --config FILE (devices to read) or --demo (simulated devices); see --help"),
    };
    let telemetry_path = telemetry_path(&args.telemetry_path)?;
    let web = args.web_config.as_deref().map(server::WebConfig::load).transpose()?;
    runtime.block_on(async {
        // The web port first: a port in use fails the start before any device is opened, and the demo's
        // devices (on ports the kernel picks) can never take the port asked for.
        let listener = bind(&args.listen_address).await?;
        let running = if let Some((path, config)) = config {
            Running::from_config(&path, config)?
        } else {
            let freshness = Freshness { max_age: Duration::from_secs(5), stale_after: Duration::from_secs(60) };
            Running::demo(crate::demo::start(Settings::default(), freshness.stale_after).await?, freshness)
        };
        let scraper = running.scraper();
        scraper.warm_up();
        let local = listener.local_addr().context("the listening address")?;
        tracing::info!(
            address = %local,
            tls = web.as_ref().is_some_and(server::WebConfig::tls_enabled),
            devices = scraper.targets().len(),
            "listening"
        );
        // Fitted to the devices at start; a reload that adds many would need a restart to widen it.
        let limits = server::Limits {
            max_connections: fit_connections(args.max_connections, open_files.map(|l| l.soft), scraper.targets().len()),
            header_read_timeout: args.header_read_timeout,
        };
        drop(scraper);
        let about = server::About::new(args.config.as_deref());
        let routes = Routes::new(server::routes::router(
            running.scraper(),
            &telemetry_path,
            running.mqtt_stats(),
            about.clone(),
        ));
        let (trigger, requests) = mpsc::channel(4);
        let app = server::reload::router(routes.clone(), trigger);
        // On the signal the publisher says goodbye to the broker while open requests finish, so Home Assistant
        // marks the entities unavailable at once instead of after the keep-alive.
        let (stop, stopped) = watch::channel(false);
        let reloads = tokio::spawn(reload_loop(running, requests, hangup, routes, telemetry_path, about, stopped));
        let signal = async move {
            shutdown_signal().await;
            let _ = stop.send(true);
        };
        let served = server::serve_with(listener, app, web, limits, signal).await;
        let running = reloads.await.context("the reload task failed")?;
        running.shutdown().await;
        // Bluetooth modules are released (BlueZ would keep them connected after the process exits).
        crate::transport::close_bluetooth(std::time::Duration::from_secs(5)).await;
        served?;
        tracing::info!("stopped");
        Ok(())
    })
}

/// Reload on SIGHUP and on each `POST /-/reload` (one at a time, in arrival order), swapping in the routes of the
/// new configuration, until `stopped`; then start the MQTT goodbye and hand back what runs, for the shutdown.
async fn reload_loop(
    mut running: Running,
    mut requests: mpsc::Receiver<oneshot::Sender<server::reload::Outcome>>,
    mut hangup: Option<Signal>,
    routes: Routes,
    telemetry_path: String,
    about: server::About,
    mut stopped: watch::Receiver<bool>,
) -> Running {
    loop {
        let reply = tokio::select! {
            _ = stopped.wait_for(|stop| *stop) => break,
            Some(reply) = requests.recv() => Some(reply),
            Some(()) = async { hangup.as_mut()?.recv().await } => {
                tracing::info!("SIGHUP: reloading the configuration");
                None
            }
        };
        let outcome = running.reload().await;
        match &outcome {
            Ok(summary) => {
                routes.set(server::routes::router(
                    running.scraper(),
                    &telemetry_path,
                    running.mqtt_stats(),
                    about.clone(),
                ));
                tracing::info!(changes = %summary, "configuration reloaded");
            }
            Err(error) => tracing::error!(%error, "configuration not reloaded; the previous one stays in force"),
        }
        if let Some(reply) = reply {
            // The caller may have given up waiting; the reload happened all the same.
            let _ = reply.send(outcome);
        }
    }
    running.stop_mqtt();
    running
}

/// Descriptors kept for everything but HTTP connections: standard streams, the runtime, the listener, the MQTT
/// link, files read at start-up, with room to spare.
const FD_RESERVE: u64 = 64;

/// Descriptors kept per configured device: its port or TCP link (shared buses need fewer; the demo's in-process
/// simulators need a listener and a link each).
const FD_PER_DEVICE: u64 = 2;

/// The connection cap in force: `wanted`, lowered (with a warning) so connections can never take the descriptors
/// the devices and the exporter itself need under the soft open-file limit `soft`.
fn fit_connections(wanted: usize, soft: Option<u64>, devices: usize) -> usize {
    let Some(soft) = soft else { return wanted };
    let reserve = FD_RESERVE.saturating_add(FD_PER_DEVICE.saturating_mul(devices as u64));
    // One more than the cap can be open for a moment: the connection waiting while an idle one closes for it.
    let room = usize::try_from(soft.saturating_sub(reserve).saturating_sub(1)).unwrap_or(usize::MAX).max(1);
    if wanted <= room {
        return wanted;
    }
    tracing::warn!(
        wanted,
        allowed = room,
        open_file_limit = soft,
        devices,
        "--web.max-connections {wanted} does not fit the open-file limit of {soft} descriptors; using {room} \
         (raise the limit, e.g. LimitNOFILE= in the systemd unit, to allow more)"
    );
    room
}

/// `--web.max-connections`: a whole number from 1 up.
fn max_connections(text: &str) -> Result<usize, String> {
    match text.trim().parse::<usize>() {
        Ok(n) if (1..=1_000_000).contains(&n) => Ok(n),
        _ => Err(format!("{text:?}: expected a number of connections from 1 to 1000000")),
    }
}

/// `--web.header-read-timeout`: a duration from 1 s to 10 min.
fn header_read_timeout(text: &str) -> Result<Duration, String> {
    match config::parse_duration(text) {
        Some(d) if (Duration::from_secs(1)..=Duration::from_secs(600)).contains(&d) => Ok(d),
        Some(_) => Err(format!("{text:?} is outside 1s–10m")),
        None => Err(format!("{text:?} is not a duration: write a number and a unit, like 5s, 1500ms or 1m")),
    }
}

/// Check `--web.telemetry-path`: an absolute path that does not hide another route.
fn telemetry_path(path: &str) -> anyhow::Result<String> {
    if !path.starts_with('/') || path.len() < 2 || path.contains(['?', '#', ' ']) {
        bail!("--web.telemetry-path {path:?}: expected an absolute path such as /metrics");
    }
    if ["/probe", "/-/healthy", "/-/ready", "/-/reload"].contains(&path) {
        bail!("--web.telemetry-path {path:?} is taken by another endpoint");
    }
    Ok(path.to_owned())
}

/// Connections the kernel may hold completed but not yet accepted. mio's default of 128 (the standard library's)
/// overflows when a burst of connections meets a full connection cap, and an overflowing queue drops SYNs, which
/// costs the dropped client (maybe Prometheus) a retransmission of a second or more. Go listens with the kernel's
/// somaxconn (4096 on current kernels); the kernel caps this value at somaxconn too.
const LISTEN_BACKLOG: u32 = 1024;

/// Bind `--web.listen-address`: `:PORT` means every interface (IPv6 and IPv4 where the host has IPv6).
async fn bind(address: &str) -> anyhow::Result<TcpListener> {
    // Without a colon there is no port to listen on; a bare number is a port written the way other tools take it.
    if !address.contains(':') {
        let hint = if !address.is_empty() && address.bytes().all(|b| b.is_ascii_digit()) {
            format!(":{address} (every interface) or 127.0.0.1:{address}")
        } else {
            format!("{address}:10485, or :10485 for every interface")
        };
        bail!("--web.listen-address {address}: expected HOST:PORT or :PORT; write {hint}");
    }
    let candidates: Vec<String> = match address.strip_prefix(':') {
        Some(port) => vec![format!("[::]:{port}"), format!("0.0.0.0:{port}")],
        None => vec![address.to_owned()],
    };
    let mut last = None;
    for candidate in &candidates {
        let sockets: Vec<SocketAddr> = match candidate.parse() {
            Ok(socket) => vec![socket],
            // A host name: let the resolver have it.
            Err(_) => match tokio::net::lookup_host(candidate.as_str()).await {
                Ok(found) => found.collect(),
                Err(error) => {
                    last = Some(error);
                    continue;
                }
            },
        };
        for socket in sockets {
            match listen(socket) {
                Ok(listener) => return Ok(listener),
                Err(error) => last = Some(error),
            }
        }
    }
    let error = last.map_or_else(|| "no address to bind".to_owned(), |e| e.to_string());
    bail!("--web.listen-address {address}: cannot listen: {error}")
}

/// Listen on `address` with [`LISTEN_BACKLOG`], reusing a port left in TIME_WAIT as `TcpListener::bind` does.
fn listen(address: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if address.is_ipv4() { TcpSocket::new_v4()? } else { TcpSocket::new_v6()? };
    socket.set_reuseaddr(true)?;
    socket.bind(address)?;
    socket.listen(LISTEN_BACKLOG)
}

/// Resolves on SIGTERM (systemd, Kubernetes) or SIGINT (Ctrl-C).
async fn shutdown_signal() {
    let term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate());
    match term {
        Ok(mut term) => {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        }
        Err(error) => {
            tracing::warn!(%error, "no SIGTERM handler; stopping on SIGINT only");
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_connection_cap_is_lowered_to_fit_the_open_file_limit() {
        assert_eq!(fit_connections(512, Some(1024), 3), 512);
        assert_eq!(fit_connections(512, None, 3), 512, "an unknown limit leaves the cap as asked");
        // 1,024 descriptors, 64 + 2 × 10 kept, 1 for the connection being admitted.
        assert_eq!(fit_connections(2000, Some(1024), 10), 1024 - 64 - 20 - 1);
        assert_eq!(fit_connections(512, Some(256), 3), 256 - 64 - 6 - 1);
        assert_eq!(fit_connections(512, Some(16), 3), 1, "never below one connection");
    }

    #[test]
    fn the_connection_flags_take_sensible_values_only() {
        assert_eq!(max_connections("100"), Ok(100));
        for bad in ["0", "-1", "many", ""] {
            assert!(max_connections(bad).is_err(), "{bad:?}");
        }
        assert_eq!(header_read_timeout("5s"), Ok(Duration::from_secs(5)));
        assert_eq!(header_read_timeout("1500ms"), Ok(Duration::from_millis(1500)));
        for bad in ["0s", "500ms", "11m", "5", "soon"] {
            assert!(header_read_timeout(bad).is_err(), "{bad:?}");
        }
    }

    #[tokio::test]
    async fn the_listen_address_takes_an_address_or_a_host_name_and_a_taken_port_is_named() {
        let listener = bind("127.0.0.1:0").await.unwrap();
        let taken = listener.local_addr().unwrap();
        assert!(taken.ip().is_loopback() && taken.port() != 0);
        assert!(bind("localhost:0").await.is_ok());
        let e = bind(&taken.to_string()).await.unwrap_err().to_string();
        assert!(e.starts_with(&format!("--web.listen-address {taken}: cannot listen: ")), "{e}");
    }

    #[test]
    fn the_telemetry_path_must_be_absolute_and_free() {
        assert_eq!(telemetry_path("/metrics").ok().as_deref(), Some("/metrics"));
        assert_eq!(telemetry_path("/bms/metrics").ok().as_deref(), Some("/bms/metrics"));
        for bad in ["metrics", "/", "", "/probe", "/-/ready", "/m?x"] {
            assert!(telemetry_path(bad).is_err(), "{bad:?}");
        }
    }
}
