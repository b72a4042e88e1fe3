//! `bms_exporter [serve]`: load the configuration (or start the demo devices), start one worker per bus and
//! serve `/metrics`, `/probe` and the landing page until SIGTERM or SIGINT.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, bail};
use clap::{Args, ValueEnum};
use tokio::net::TcpListener;

use crate::config;
use crate::scrape::{Freshness, Scraper};
use crate::server;
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

/// What `serve` runs: the devices and how fresh their data must be.
struct Plan {
    freshness: Freshness,
    source: Source,
}

enum Source {
    Config(config::Config),
    Demo(Settings),
}

/// Run the exporter until a shutdown signal.
pub(super) fn serve(args: &ServeArgs) -> anyhow::Result<()> {
    let plan = match (&args.config, args.demo) {
        (Some(path), false) => {
            let config = config::load(path)?;
            let freshness = Freshness { max_age: config.defaults.max_age, stale_after: config.defaults.stale_after };
            Plan { freshness, source: Source::Config(config) }
        }
        (None, true) => Plan {
            freshness: Freshness { max_age: Duration::from_secs(5), stale_after: Duration::from_secs(60) },
            source: Source::Demo(Settings::default()),
        },
        _ => bail!("give --config FILE (devices to read) or --demo (simulated devices); see --help"),
    };
    let telemetry_path = telemetry_path(&args.telemetry_path)?;
    let web = args.web_config.as_deref().map(server::WebConfig::load).transpose()?;
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().context("starting the runtime")?;
    runtime.block_on(async {
        // The web port first: a port in use fails the start before any device is opened, and the demo's
        // devices (on ports the kernel picks) can never take the port asked for.
        let listener = bind(&args.listen_address).await?;
        let buses = match plan.source {
            Source::Config(config) => config.buses(),
            Source::Demo(settings) => crate::demo::start(settings).await?,
        };
        let scraper = Arc::new(Scraper::spawn(buses, plan.freshness));
        scraper.warm_up();
        let local = listener.local_addr().context("the listening address")?;
        tracing::info!(
            address = %local,
            tls = web.as_ref().is_some_and(server::WebConfig::tls_enabled),
            devices = scraper.targets().len(),
            "listening"
        );
        let app = server::routes::router(Arc::clone(&scraper), &telemetry_path);
        server::serve(listener, app, web, shutdown_signal()).await?;
        tracing::info!("stopped");
        Ok(())
    })
}

/// Check `--web.telemetry-path`: an absolute path that does not hide another route.
fn telemetry_path(path: &str) -> anyhow::Result<String> {
    if !path.starts_with('/') || path.len() < 2 || path.contains(['?', '#', ' ']) {
        bail!("--web.telemetry-path {path:?}: expected an absolute path such as /metrics");
    }
    if ["/probe", "/-/healthy", "/-/ready"].contains(&path) {
        bail!("--web.telemetry-path {path:?} is taken by another endpoint");
    }
    Ok(path.to_owned())
}

/// Bind `--web.listen-address`: `:PORT` means every interface (IPv6 and IPv4 where the host has IPv6).
async fn bind(address: &str) -> anyhow::Result<TcpListener> {
    let candidates: Vec<String> = match address.strip_prefix(':') {
        Some(port) => vec![format!("[::]:{port}"), format!("0.0.0.0:{port}")],
        None => vec![address.to_owned()],
    };
    let mut last = None;
    for candidate in &candidates {
        let parsed: Result<SocketAddr, _> = candidate.parse();
        let result = match parsed {
            Ok(socket) => TcpListener::bind(socket).await,
            // A host name: let the resolver have it.
            Err(_) => TcpListener::bind(candidate.as_str()).await,
        };
        match result {
            Ok(listener) => return Ok(listener),
            Err(error) => last = Some(error),
        }
    }
    let error = last.map_or_else(|| "no address to bind".to_owned(), |e| e.to_string());
    bail!("--web.listen-address {address}: cannot listen: {error}")
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
    fn the_telemetry_path_must_be_absolute_and_free() {
        assert_eq!(telemetry_path("/metrics").ok().as_deref(), Some("/metrics"));
        assert_eq!(telemetry_path("/bms/metrics").ok().as_deref(), Some("/bms/metrics"));
        for bad in ["metrics", "/", "", "/probe", "/-/ready", "/m?x"] {
            assert!(telemetry_path(bad).is_err(), "{bad:?}");
        }
    }
}
