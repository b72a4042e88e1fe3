//! `read` (one JSON document of the chosen sections) and `check` (the Nagios/Icinga plugin): both poll the
//! device once through a bus worker, exactly as the exporter will.

use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Args, ValueEnum};
use serde_json::{Value, json};

use super::connection::ConnectionArgs;
use crate::config::mqtt::{Broker, Discovery, Layout, MqttConfig, MqttTls};
use crate::model::{Section, Sections};
use crate::mqtt::{self, DeviceView};
use crate::output::json::PackFilter;
use crate::output::nagios::{self, Limit, Thresholds};
use crate::output::{daly_cli, json as json_out};
use crate::poller::{self, DeviceStatus};
use crate::session::{PollError, PollReport, RequestFailure};

/// Which packs to print (and, on Pace, to ask for).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PackArg {
    /// Every pack the device reports.
    All,
    /// One pack number.
    One(u8),
}

impl std::str::FromStr for PackArg {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "all" => Ok(Self::All),
            n => match n.parse::<u8>() {
                Ok(n) if n >= 1 => Ok(Self::One(n)),
                _ => Err(format!("{s:?} is not `all` or a pack number from 1")),
            },
        }
    }
}

/// The `--format` choices of `read`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// bms_exporter's own document: sections as objects, SI units.
    Json,
    /// The key layout of the Python `daly-bms-cli --all` (always every section).
    DalyBmsCli,
}

/// Arguments of `read`.
#[derive(Debug, Args)]
pub struct ReadArgs {
    /// How to reach the device.
    #[command(flatten)]
    pub connection: ConnectionArgs,
    /// Sections to read: soc, mosfet, status, cells, temperatures, balancing, alarms, info (default: all).
    #[arg(value_name = "SECTION")]
    pub sections: Vec<Section>,
    /// Read every section.
    #[arg(long, conflicts_with = "sections")]
    pub all: bool,
    /// Pack to print: a number or `all`.
    #[arg(long, default_value = "all", value_name = "N|all")]
    pub pack: PackArg,
    /// Output layout.
    #[arg(long, value_enum, default_value_t = Format::Json)]
    pub format: Format,
    /// Keep polling, one compact JSON document per line, this many seconds apart (0: back to back).
    /// Later polls reuse what does not change (counts, identity), as the exporter does.
    #[arg(long, value_name = "SECONDS")]
    pub watch: Option<f64>,
    /// With --watch: stop after this many polls (default: until interrupted).
    #[arg(long, value_name = "N", requires = "watch")]
    pub count: Option<u64>,
    /// Publish the read to this MQTT broker the way `daly-bms-cli --all --mqtt` does (its topics and payloads)
    /// instead of printing it, then exit once the broker has every message: mqtt://HOST or mqtt://HOST:PORT
    /// (mqtts:// for TLS). Reads every section.
    #[arg(long, value_name = "URL", value_parser = crate::config::mqtt::parse_broker, conflicts_with = "watch")]
    pub mqtt: Option<Broker>,
    /// With --mqtt: also publish daly-bms-cli's Home Assistant discovery configs (its `--mqtt-hass`).
    #[arg(long, requires = "mqtt")]
    pub mqtt_hass: bool,
    /// With --mqtt: the base topic (daly-bms-cli's `--mqtt-topic`; default daly_bms).
    #[arg(long, value_name = "TOPIC", requires = "mqtt")]
    pub mqtt_topic: Option<String>,
    /// With --mqtt: the user name the broker asks for.
    #[arg(long, value_name = "USER", requires = "mqtt")]
    pub mqtt_user: Option<String>,
    /// With --mqtt-user: a file whose first line is the password (never a password on the command line).
    #[arg(long, value_name = "FILE", requires = "mqtt_user")]
    pub mqtt_password_file: Option<PathBuf>,
    /// With an mqtts:// broker: the CA certificate(s) that sign it (PEM; default: the system's).
    #[arg(long, value_name = "FILE", requires = "mqtt")]
    pub mqtt_ca_file: Option<PathBuf>,
}

/// Arguments of `check`.
#[derive(Debug, Args)]
pub struct CheckArgs {
    /// How to reach the device.
    #[command(flatten)]
    pub connection: ConnectionArgs,
    /// Pack to check: a number or `all`.
    #[arg(long, default_value = "all", value_name = "N|all")]
    pub pack: PackArg,
    /// Lowest cell voltage: warning,critical in volts (LFP default 3.00,2.80).
    #[arg(long, value_name = "W,C", value_parser = parse_limit)]
    pub cell_low: Option<Limit>,
    /// Highest cell voltage: warning,critical in volts (LFP default 3.55,3.65).
    #[arg(long, value_name = "W,C", value_parser = parse_limit)]
    pub cell_high: Option<Limit>,
    /// Cell spread (highest − lowest): warning,critical in volts (default 0.05,0.10).
    #[arg(long, value_name = "W,C", value_parser = parse_limit)]
    pub spread: Option<Limit>,
    /// Highest probe temperature: warning,critical in °C (default 45,55).
    #[arg(long, value_name = "W,C", value_parser = parse_limit)]
    pub temp_high: Option<Limit>,
    /// Lowest probe temperature: warning,critical in °C (default 0,-10).
    #[arg(long, value_name = "W,C", value_parser = parse_limit, allow_hyphen_values = true)]
    pub temp_low: Option<Limit>,
    /// Lowest state of charge: warning,critical in percent (default 20,10).
    #[arg(long, value_name = "W,C", value_parser = parse_limit)]
    pub soc_low: Option<Limit>,
    /// Do not raise WARNING/CRITICAL for alarms the BMS reports.
    #[arg(long)]
    pub ignore_alarms: bool,
}

fn parse_limit(text: &str) -> Result<Limit, String> {
    let (w, c) = text.split_once(',').ok_or_else(|| format!("{text:?}: expected WARNING,CRITICAL"))?;
    let number = |s: &str| s.trim().parse::<f64>().map_err(|_| format!("{s:?} is not a number"));
    Ok(Limit::new(number(w)?, number(c)?))
}

/// A bus worker on its own single-threaded runtime, for commands that poll from synchronous code.
struct OneDevice {
    runtime: tokio::runtime::Runtime,
    bus: poller::BusHandle,
}

impl OneDevice {
    fn new(connection: &ConnectionArgs, sections: Sections, pack: PackArg) -> anyhow::Result<Self> {
        let packs = match pack {
            PackArg::One(n) => Some(n),
            PackArg::All => None,
        };
        let spec = connection.bus("cli", sections, packs)?;
        let runtime =
            tokio::runtime::Builder::new_current_thread().enable_all().build().context("starting the runtime")?;
        let bus = runtime.block_on(async move { poller::spawn(spec) });
        Ok(Self { runtime, bus })
    }

    /// Run one fresh poll.
    fn poll(&self) -> anyhow::Result<DeviceStatus> {
        self.runtime.block_on(async {
            let status = self.bus.snapshot(0, Duration::ZERO).await.context("polling")?;
            Ok(DeviceStatus::clone(&status))
        })
    }
}

impl Drop for OneDevice {
    fn drop(&mut self) {
        // A Bluetooth module is released while this runtime can still run the link's task; BlueZ would otherwise
        // keep it connected after the command exits.
        self.runtime.block_on(crate::transport::close_bluetooth(Duration::from_secs(5)));
    }
}

/// Poll once.
fn poll_once(connection: &ConnectionArgs, sections: Sections, pack: PackArg) -> anyhow::Result<DeviceStatus> {
    OneDevice::new(connection, sections, pack)?.poll()
}

/// Refuse a poll that answered but holds nothing for the pack asked: an empty document with exit code 0 would
/// read as success to a script. The poll's failures, when there were some, say why.
fn require_pack(report: &PollReport, pack: PackArg) -> anyhow::Result<()> {
    let device = &report.device;
    let found: Vec<String> = device.packs.iter().map(|p| p.pack.to_string()).collect();
    let mut reported =
        if found.is_empty() { "no pack at all".to_owned() } else { format!("pack(s) {}", found.join(", ")) };
    if !report.failures.is_empty() {
        reported = format!("{reported}; {}", failure_causes(&report.failures).join("; "));
    }
    match pack {
        PackArg::One(n) if !device.packs.iter().any(|p| p.pack == n) => {
            anyhow::bail!("nothing was read for pack {n}: the device reported {reported}")
        }
        PackArg::All if device.packs.is_empty() => anyhow::bail!("nothing was read: the device reported {reported}"),
        _ => Ok(()),
    }
}

/// Each distinct cause of a poll's failures once, with the requests it struck, in the order first seen: a link
/// that never opened fails every request the same way, and one line saying so beats ten.
pub(super) fn failure_causes(failures: &[RequestFailure]) -> Vec<String> {
    let mut causes: Vec<(String, Vec<&str>)> = Vec::new();
    for failure in failures {
        let cause = failure.error.to_string();
        match causes.iter_mut().find(|(seen, _)| *seen == cause) {
            Some((_, labels)) => labels.push(&failure.label),
            None => causes.push((cause, vec![&failure.label])),
        }
    }
    causes.into_iter().map(|(cause, labels)| format!("{cause} (for {})", labels.join(", "))).collect()
}

/// Why a poll got nothing at all, saying what really happened: the link never opened (nothing was sent), the
/// device refused what it was asked, sent nothing valid, or sent nothing.
fn nothing_read(transport: &str, report: &PollReport) -> String {
    let failures: Vec<&RequestFailure> =
        report.failures.iter().filter(|f| !matches!(f.error, PollError::Skipped(_))).collect();
    if let [first, ..] = failures.as_slice()
        && let PollError::Io(message) = &first.error
    {
        // Opening the link failed: its message names the port or address and the reason, and nothing was sent.
        return if report.bytes_sent == 0 {
            message.clone()
        } else {
            format!("lost the link to {transport}: {message}")
        };
    }
    let causes = failure_causes(&report.failures).join("; ");
    if failures.iter().all(|f| matches!(f.error, PollError::Timeout { .. })) {
        format!("no reply from {transport}: {causes}")
    } else if failures.iter().all(|f| matches!(f.error, PollError::Refused(_))) {
        // It answered: each cause says what it refused.
        format!("{transport}: {causes}")
    } else {
        // Each cause already says "no valid reply: …" with its rejection.
        format!("nothing read from {transport}: {causes}")
    }
}

/// The per-request failures of a poll, for the JSON `errors` key.
fn failures_json(report: &PollReport) -> Value {
    report
        .failures
        .iter()
        .map(|f| json!({"request": f.label, "attempts": f.attempts, "reason": f.error.reason(), "message": f.error.to_string()}))
        .collect()
}

/// Run `read`.
pub(super) fn read(args: &ReadArgs) -> anyhow::Result<ExitCode> {
    let protocol = args.connection.protocol()?;
    let full = args.all || args.sections.is_empty() || args.format == Format::DalyBmsCli || args.mqtt.is_some();
    let sections = if full { Sections::all() } else { args.sections.iter().copied().collect() };
    let device = OneDevice::new(&args.connection, sections, args.pack)?;
    if let Some(broker) = &args.mqtt {
        return publish_poll(args, broker, protocol, &device);
    }
    let Some(interval) = args.watch else { return print_poll(args, protocol, sections, &device.poll()?, false) };
    if !(interval.is_finite() && interval >= 0.0) {
        anyhow::bail!("--watch {interval}: expected a number of seconds, 0 or more");
    }
    let mut code = ExitCode::SUCCESS;
    let mut polls = 0u64;
    while args.count.is_none_or(|count| polls < count) {
        let started = std::time::Instant::now();
        polls += 1;
        // In watch mode a poll that gets no answer is a line on stderr, not the end: the device may come back.
        match print_poll(args, protocol, sections, &device.poll()?, true) {
            Ok(c) if c == ExitCode::SUCCESS => {}
            Ok(c) => code = c,
            Err(error) => {
                eprintln!("error: {error:#}");
                code = ExitCode::FAILURE;
            }
        }
        let wait = Duration::from_secs_f64(interval).saturating_sub(started.elapsed());
        if args.count.is_none_or(|count| polls < count) {
            std::thread::sleep(wait);
        }
    }
    Ok(code)
}

/// `read --mqtt`: what `daly-bms-cli --mqtt` is given for one-shot use from cron.
fn mqtt_config(args: &ReadArgs, broker: &Broker) -> MqttConfig {
    // Never the serving exporter's id: a broker drops the older of two clients with one id.
    let client_id = format!("bms_exporter-read-{}", std::process::id());
    MqttConfig {
        username: args.mqtt_user.clone(),
        password_file: args.mqtt_password_file.clone(),
        tls: MqttTls { ca_file: args.mqtt_ca_file.clone(), cert_file: None, key_file: None },
        topic_prefix: args.mqtt_topic.clone().unwrap_or_else(|| Layout::DalyBmsCli.default_topic_prefix().to_owned()),
        interval: Duration::ZERO,
        // QoS 1 (daly-bms-cli sends 0): the broker's acknowledgements tell the command that every message
        // arrived before it exits 0; what subscribers see does not change.
        qos: 1,
        discovery: Discovery { enabled: args.mqtt_hass, prefix: "homeassistant".to_owned() },
        ..MqttConfig::with_defaults(broker.clone(), &client_id, Layout::DalyBmsCli)
    }
}

/// Poll once and publish it in daly-bms-cli's layout; nothing on stdout (like daly-bms-cli --mqtt, so a cron
/// job mails nothing on success). Exit code 1 if any request failed (what was read is still published).
fn publish_poll(
    args: &ReadArgs,
    broker: &Broker,
    protocol: crate::protocol::Protocol,
    device: &OneDevice,
) -> anyhow::Result<ExitCode> {
    let status = device.poll()?;
    let report = &status.last;
    if report.answered == 0 {
        anyhow::bail!("{}; nothing published", nothing_read(&args.connection.transport()?.describe(), report));
    }
    require_pack(report, args.pack).context("nothing published")?;
    let mut values = report.device.clone();
    if let PackArg::One(n) = args.pack {
        values.packs.retain(|p| p.pack == n);
    }
    let config = mqtt_config(args, broker);
    let view = DeviceView { name: "cli", protocol, up: true, values: &values, energy: &[] };
    let messages = mqtt::daly_cli::interleaved(&config, &view, args.mqtt_hass);
    device.runtime.block_on(mqtt::once::publish(&config, &messages, mqtt::once::DEADLINE))?;
    if report.succeeded() {
        return Ok(ExitCode::SUCCESS);
    }
    for f in &report.failures {
        eprintln!("warning: {} failed after {} attempt(s): {}", f.label, f.attempts, f.error);
    }
    Ok(ExitCode::FAILURE)
}

/// Print one poll's document; exit code 1 if any request failed.
fn print_poll(
    args: &ReadArgs,
    protocol: crate::protocol::Protocol,
    sections: Sections,
    status: &DeviceStatus,
    compact: bool,
) -> anyhow::Result<ExitCode> {
    let report = &status.last;
    if report.answered == 0 {
        anyhow::bail!("{}", nothing_read(&args.connection.transport()?.describe(), report));
    }
    let device = &report.device;
    require_pack(report, args.pack)?;
    let document = match args.format {
        Format::Json => {
            let filter = match args.pack {
                PackArg::All => PackFilter::All,
                PackArg::One(n) => PackFilter::One(n),
            };
            let mut document = json_out::render(protocol, device, sections, filter);
            if let Some(object) = document.as_object_mut() {
                object.insert("errors".to_owned(), failures_json(report));
            }
            document
        }
        Format::DalyBmsCli => {
            let packs: Vec<u8> = device
                .packs
                .iter()
                .map(|p| p.pack)
                .filter(|n| matches!(args.pack, PackArg::All) || args.pack == PackArg::One(*n))
                .collect();
            match packs.as_slice() {
                [one] => daly_cli::render(device, *one),
                many => many.iter().map(|n| daly_cli::render(device, *n)).collect(),
            }
        }
    };
    let text = if compact { serde_json::to_string(&document) } else { serde_json::to_string_pretty(&document) }
        .context("encoding JSON")?;
    writeln!(std::io::stdout().lock(), "{text}").context("writing to stdout")?;
    if report.succeeded() {
        return Ok(ExitCode::SUCCESS);
    }
    for f in &report.failures {
        eprintln!("warning: {} failed after {} attempt(s): {}", f.label, f.attempts, f.error);
    }
    Ok(ExitCode::FAILURE)
}

/// Run `check`; never fails: problems become an UNKNOWN line with exit code 3.
#[must_use]
pub(super) fn check(args: &CheckArgs) -> ExitCode {
    let defaults = Thresholds::default();
    let percent = |l: Limit| Limit::new(l.warning / 100.0, l.critical / 100.0);
    let thresholds = Thresholds {
        cell_low_volts: args.cell_low.or(defaults.cell_low_volts),
        cell_high_volts: args.cell_high.or(defaults.cell_high_volts),
        cell_spread_volts: args.spread.or(defaults.cell_spread_volts),
        temperature_high_celsius: args.temp_high.or(defaults.temperature_high_celsius),
        temperature_low_celsius: args.temp_low.or(defaults.temperature_low_celsius),
        soc_low_ratio: args.soc_low.map(percent).or(defaults.soc_low_ratio),
        alarms: !args.ignore_alarms,
    };
    let (line, code) = match poll_once(&args.connection, Sections::all(), args.pack) {
        Ok(status) => {
            // Nothing read, or nothing for the pack asked: UNKNOWN, saying what really happened.
            let unknown = match args.connection.transport() {
                Ok(transport) if status.last.answered == 0 => Some(nothing_read(&transport.describe(), &status.last)),
                _ => require_pack(&status.last, args.pack).err().map(|e| e.to_string()),
            };
            if let Some(why) = unknown {
                println!("BMS UNKNOWN - {why}");
                return ExitCode::from(nagios::Status::Unknown.exit_code());
            }
            let mut device = status.last.device.clone();
            if let PackArg::One(n) = args.pack {
                device.packs.retain(|p| p.pack == n);
            }
            let failures = failure_causes(&status.last.failures);
            let outcome = nagios::check(&device, &failures, &thresholds);
            (outcome.line, outcome.status.exit_code())
        }
        Err(error) => (format!("BMS UNKNOWN - {error:#}"), nagios::Status::Unknown.exit_code()),
    };
    println!("{line}");
    ExitCode::from(code)
}
