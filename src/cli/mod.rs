//! The command line: clap types for every subcommand and the glue that runs them. Data goes to stdout, errors
//! to stderr; exit code 0 on success, 1 on a failure the command reports, 2 on a usage error (clap's).

use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context as _, bail};
use clap::{Args, Parser, Subcommand, ValueEnum};
use serde::Serialize;

mod config;
mod connection;
mod detect;
mod mqtt;
mod read;
mod serve;

pub use config::ConfigCommand;
pub use connection::ConnectionArgs;
pub use detect::DetectArgs;
pub use mqtt::{CleanupArgs, MqttCommand};
pub use read::{CheckArgs, Format, PackArg, ReadArgs};
pub use serve::{LogFormat, LogLevel, ServeArgs};

use crate::control::{Action, Clock, Target};
use crate::model::CurrentSign;
use crate::protocol::{self, DecodeOptions, Protocol};
use crate::simulator::fault::{Fault, FaultPlan};
use crate::simulator::serve::{self as simulator_serve, Endpoint, ServeOptions, Timing};
use crate::simulator::{
    Responder, daly::DalyBus, daly_modbus::DalyModbusBus, pace::PaceBus, sinowealth::SinowealthBus,
};

/// Reads battery management systems (Daly, Daly Modbus-style, Sinowealth, Pace) and publishes what they know.
#[derive(Debug, Parser)]
#[command(name = "bms_exporter", version, about, long_about = None, args_conflicts_with_subcommands = true)]
pub struct Cli {
    /// What to do; without a subcommand, `serve`.
    #[command(subcommand)]
    pub command: Option<Command>,
    /// `serve`'s flags, accepted without the word `serve` (`bms_exporter --config FILE`, `bms_exporter --demo`).
    #[command(flatten)]
    pub serve: ServeArgs,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the Prometheus exporter: poll the configured devices and serve /metrics and /probe (the default).
    Serve(ServeArgs),
    /// Poll a device once and print one JSON document of the chosen sections.
    Read(ReadArgs),
    /// Nagios/Icinga plugin: poll once, judge against thresholds, print one status line with perfdata and exit
    /// 0 OK, 1 WARNING, 2 CRITICAL or 3 UNKNOWN.
    Check(CheckArgs),
    /// Send a write command to a Daly board (A5: MOSFET, SOC, restart; daly-modbus: MOSFET): shows the frame,
    /// needs --yes, then reads back whether the BMS obeyed.
    Set(SetArgs),
    /// Probe a port for every protocol at its usual addresses (reads only) and print a config block.
    Detect(DetectArgs),
    /// Decode captured bytes (from a bug report, a logic analyser or `--verbose` output) and print them as JSON.
    Decode(DecodeArgs),
    /// Run a simulated BMS bus on a pseudo-terminal or a TCP port, for trying clients and the exporter
    /// without hardware.
    Simulate(SimulateArgs),
    /// Work with configuration files (`config check FILE`).
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Broker-side maintenance (`mqtt cleanup --config FILE`: remove Home Assistant discovery of devices that are
    /// no longer configured).
    #[command(subcommand)]
    Mqtt(MqttCommand),
}

/// Arguments of `set`.
#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("action").required(true).args(["charge_mosfet", "discharge_mosfet", "soc", "restart"])))]
// Only the protocols that take writes are offered (and accepted) here: the shared connection flags list all four.
#[command(mut_arg("protocol", |arg| arg
    .help("Protocol the board speaks: daly (the A5 frames) or daly-modbus, the ones that take writes")
    .value_parser(parse_set_protocol)))]
pub struct SetArgs {
    /// How to reach the device (protocol daly or daly-modbus).
    #[command(flatten)]
    pub connection: ConnectionArgs,
    /// Switch the charge MOSFET.
    #[arg(long, value_name = "on|off", value_parser = parse_on_off)]
    pub charge_mosfet: Option<bool>,
    /// Switch the discharge MOSFET.
    #[arg(long, value_name = "on|off", value_parser = parse_on_off)]
    pub discharge_mosfet: Option<bool>,
    /// Set the state of charge, in percent (0–100; daly only).
    #[arg(long, value_name = "PCT")]
    pub soc: Option<f64>,
    /// Restart the BMS (daly only).
    #[arg(long)]
    pub restart: bool,
    /// Really send it. Without this flag the command only shows what it would send.
    #[arg(long)]
    pub yes: bool,
}

/// `set --protocol`: the protocols whose boards take writes.
fn parse_set_protocol(s: &str) -> Result<Protocol, String> {
    match parse_protocol(s)? {
        protocol @ (Protocol::Daly | Protocol::DalyModbus) => Ok(protocol),
        other => Err(format!("{other} takes no writes: set supports daly (the A5 frames) and daly-modbus")),
    }
}

fn parse_on_off(s: &str) -> Result<bool, String> {
    match s {
        "on" => Ok(true),
        "off" => Ok(false),
        _ => Err(format!("{s:?}: expected on or off")),
    }
}

/// Arguments of `simulate`.
#[derive(Debug, Args)]
pub struct SimulateArgs {
    /// Protocol the simulated devices speak.
    #[arg(long, value_parser = parse_protocol)]
    pub protocol: Protocol,
    /// Create a pseudo-terminal and a symlink to it at this path (e.g. /tmp/ttyDALY).
    #[arg(long, value_name = "LINK", conflicts_with = "tcp", required_unless_present = "tcp")]
    pub pty: Option<PathBuf>,
    /// Listen on this address like a TCP serial server (e.g. 127.0.0.1:8899); clients may reconnect.
    #[arg(long, value_name = "ADDR")]
    pub tcp: Option<String>,
    /// Series cells per pack (Daly 1–48, Daly Modbus-style 1–32, Sinowealth 3–10, Pace 1–16).
    #[arg(long, default_value_t = 16, value_name = "N")]
    pub cells: u8,
    /// Temperature probes per pack (0–16; Daly Modbus-style at most 8, Sinowealth 2).
    #[arg(long, default_value_t = 4, value_name = "N")]
    pub temperatures: u8,
    /// Packs behind the Pace master at address 1 (1–16).
    #[arg(long, default_value_t = 1, value_name = "N")]
    pub packs: u8,
    /// Daly boards on the bus, numbered 1…N (1–16).
    #[arg(long, default_value_t = 1, value_name = "N")]
    pub boards: u8,
    /// Line speed: bytes leave as an 8N1 line at this rate would carry them (0 = no pacing).
    #[arg(long, default_value_t = 9600, value_name = "N")]
    pub baud: u32,
    /// The board's turnaround between a request and its reply, in milliseconds.
    #[arg(long, default_value_t = 10, value_name = "N")]
    pub latency_ms: u64,
    /// Inject a fault at a rate (0–1) per request: drop, corrupt (one byte), multibyte (a burst of 2–4 bytes,
    /// drawn again until the frame check fails), gross (a value far out of range in frames whose check still
    /// passes), truncate, delay (or delay:SECONDS), garbage, echo, wrong_command, silent (or silent:SECONDS),
    /// close. Repeatable; the truth file counts the faults injected by kind.
    #[arg(long = "fault", value_name = "KIND=RATE")]
    pub faults: Vec<Fault>,
    /// Seed for drift, noise and fault dice: the same seed gives the same run.
    #[arg(long, default_value_t = 1, value_name = "N")]
    pub seed: u64,
    /// Keep the current true state in this file as JSON (the model's units) with the faults injected so far by
    /// kind (`faults`), rewritten after each answered request.
    #[arg(long, value_name = "FILE")]
    pub truth: Option<PathBuf>,
    /// Simulated seconds per wall-clock second; 0 freezes the batteries (exact comparisons in tests).
    #[arg(long, default_value_t = 1.0, value_name = "F")]
    pub time_scale: f64,
    /// The model name the boards report in their identity reply (Daly 0x63 only; printable ASCII, up to 112
    /// characters; default DL-BMS-SIM-01). Sent as given, markup and quotes included, to see how readers show it.
    #[arg(long, value_name = "TEXT", value_parser = parse_model)]
    pub model: Option<String>,
    /// Daly only: leave the identity reads 0x57 (battery code) and 0x63 (model) unanswered, as many real boards
    /// do (readers then report the identity as absent, after a short wait).
    #[arg(long, conflicts_with = "model")]
    pub no_identity: bool,
}

/// `simulate --model`: printable ASCII that fits the identity reply's frames.
fn parse_model(text: &str) -> Result<String, String> {
    let max = crate::simulator::daly::MAX_MODEL_LEN;
    if text.is_empty() || text.len() > max || !text.bytes().all(|b| b.is_ascii_graphic() || b == b' ') {
        return Err(format!("{text:?}: expected 1–{max} printable ASCII characters"));
    }
    Ok(text.to_owned())
}

/// Arguments of `decode`.
#[derive(Debug, Args)]
pub struct DecodeArgs {
    /// Protocol of the captured bytes.
    #[arg(long, value_parser = parse_protocol)]
    pub protocol: Protocol,
    /// The request that was sent, if known (hex; Pace also as `~…` text). Lets the decoder check that the
    /// reply answers it; Sinowealth needs it because its replies do not name their register.
    #[arg(long, value_name = "HEX")]
    pub request: Option<String>,
    /// Cell count learned from an earlier reply (Daly 0x94), to know which cell slots are real.
    #[arg(long, value_name = "N")]
    pub cells: Option<u16>,
    /// Temperature sensor count learned from an earlier reply (Daly 0x94).
    #[arg(long, value_name = "N")]
    pub temperatures: Option<u16>,
    /// How the device signs its current on the wire (Daly).
    #[arg(long, value_enum, default_value_t = SignArg::Auto)]
    pub current_sign: SignArg,
    /// Captured reply bytes as hex (several arguments are one stream), or Pace frames as `~…` text; a Pace
    /// frame given as text gets its closing carriage return added if it is missing.
    #[arg(required = true, value_name = "HEX")]
    pub bytes: Vec<String>,
}

/// The `--current-sign` choices (the config's `current_sign`, `docs/protocols/daly-a5.md#current-sign`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum SignArg {
    /// Learn it from the charge/discharge state the device reports.
    Auto,
    /// A wire current above zero means charging.
    ChargePositive,
    /// A wire current above zero means discharging.
    DischargePositive,
}

impl From<SignArg> for CurrentSign {
    fn from(arg: SignArg) -> Self {
        match arg {
            SignArg::Auto => Self::Auto,
            SignArg::ChargePositive => Self::ChargePositive,
            SignArg::DischargePositive => Self::DischargePositive,
        }
    }
}

fn parse_protocol(s: &str) -> Result<Protocol, String> {
    s.parse().map_err(|e: protocol::UnknownProtocol| e.to_string())
}

/// Run the parsed command line and map its outcome to an exit code.
#[must_use]
pub fn run(cli: Cli) -> ExitCode {
    let command = match cli.command {
        Some(command) => command,
        None => Command::Serve(cli.serve),
    };
    let verbose = match &command {
        Command::Serve(args) => {
            serve::init_logging(args);
            return finish(serve::serve(args).map(|()| ExitCode::SUCCESS));
        }
        Command::Read(a) => a.connection.verbose,
        Command::Check(a) => a.connection.verbose,
        Command::Set(a) => a.connection.verbose,
        Command::Detect(a) => a.connection.verbose,
        Command::Decode(_) | Command::Simulate(_) | Command::Config(_) | Command::Mqtt(_) => false,
    };
    init_logging(verbose);
    let result = match command {
        Command::Serve(_) => Ok(ExitCode::SUCCESS), // handled above, with its own logging
        Command::Read(args) => read::read(&args),
        Command::Check(args) => return read::check(&args),
        Command::Set(args) => set(&args),
        Command::Detect(args) => detect::detect(&args),
        Command::Decode(args) => decode(&args).map(|()| ExitCode::SUCCESS),
        Command::Simulate(args) => simulate(&args).map(|()| ExitCode::SUCCESS),
        Command::Config(command) => return config::run(&command),
        Command::Mqtt(command) => mqtt::run(&command),
    };
    finish(result)
}

/// The exit code of a command's outcome; an error is printed once, with its causes.
fn finish(result: anyhow::Result<ExitCode>) -> ExitCode {
    match result {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

/// Log to stderr: warnings and errors only, or every frame with `--verbose`.
fn init_logging(verbose: bool) {
    let level = if verbose { tracing::Level::DEBUG } else { tracing::Level::ERROR };
    // A second initialisation (tests calling run twice) is harmless: the first subscriber stays.
    // Colour only for a person at a terminal: escape codes would corrupt a log file or a script's capture.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let _ = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_max_level(level)
        .with_target(false)
        .with_ansi(ansi)
        .try_init();
}

/// The one action `set` was given.
fn set_action(args: &SetArgs) -> anyhow::Result<Action> {
    match (args.charge_mosfet, args.discharge_mosfet, args.soc, args.restart) {
        (Some(on), None, None, false) => Ok(Action::ChargeMosfet(on)),
        (None, Some(on), None, false) => Ok(Action::DischargeMosfet(on)),
        (None, None, Some(pct), false) => Ok(Action::Soc(pct)),
        (None, None, None, true) => Ok(Action::Restart),
        _ => bail!("give exactly one of --charge-mosfet, --discharge-mosfet, --soc or --restart"),
    }
}

/// The board `set` writes to, from `--protocol` and `--address`; other protocols take no writes.
fn set_target(connection: &ConnectionArgs) -> anyhow::Result<Target> {
    let address = connection.address.as_deref();
    match connection.protocol()? {
        Protocol::Daly => {
            let addresses = connection::daly_addresses(address.unwrap_or(connection.daly_default_address()))
                .context("--address")?;
            let [address] = addresses.as_slice() else {
                bail!("--address: set talks to exactly one board, not {}", addresses.len());
            };
            Ok(Target::Daly(*address))
        }
        Protocol::DalyModbus => {
            Ok(Target::DalyModbus(connection::daly_modbus_map(address.unwrap_or("d2")).context("--address")?))
        }
        other => bail!("set supports --protocol daly (the A5 frames) and daly-modbus only, not {other}"),
    }
}

fn set(args: &SetArgs) -> anyhow::Result<ExitCode> {
    let connection = &args.connection;
    let target = set_target(connection)?;
    let action = set_action(args)?;
    let unix = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    // Built before the link is opened: an action the protocol cannot carry is refused with nothing sent.
    let prepared = action.prepare(target, Clock::from_unix(unix))?;
    let transport = connection.transport()?;
    println!(
        "{} on {} via {}: frame {}",
        action.describe(),
        prepared.board(),
        transport.describe(),
        protocol::to_hex(&prepared.frame())
    );
    println!("frame meaning: {}", prepared.meaning());
    if !args.yes {
        eprintln!("not sent: writing to a BMS changes how the battery behaves; repeat with --yes to send it");
        return Ok(ExitCode::FAILURE);
    }
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().context("starting the runtime")?;
    let outcome = runtime.block_on(async {
        let outcome = async {
            let mut link = crate::transport::open(&transport).await?;
            prepared.send(&mut link, action, connection.options(), connection.settings()).await
        }
        .await;
        // A Bluetooth module is released before the runtime (and with it the link's task) stops.
        crate::transport::close_bluetooth(Duration::from_secs(5)).await;
        outcome
    })?;
    println!("sent: {}", outcome.acknowledgement.as_deref().unwrap_or("no acknowledgement from the board"));
    if outcome.obeyed {
        println!("the BMS obeyed: {}", outcome.observed);
        Ok(ExitCode::SUCCESS)
    } else {
        println!("the BMS did NOT obey: {}", outcome.observed);
        Ok(ExitCode::FAILURE)
    }
}

fn decode(args: &DecodeArgs) -> anyhow::Result<()> {
    let options = DecodeOptions {
        current_sign: args.current_sign.into(),
        cell_count: args.cells,
        temperature_sensor_count: args.temperatures,
    };
    let request = args.request.as_deref().map(|r| capture_bytes(args.protocol, r)).transpose().context("--request")?;
    let mut response = Vec::new();
    for (i, text) in args.bytes.iter().enumerate() {
        response.extend(capture_bytes(args.protocol, text).with_context(|| format!("argument {}", i + 1))?);
    }
    let request = request.as_deref();
    let json = match args.protocol {
        Protocol::Daly => to_json(protocol::daly::decode_capture(request, &response, &options)),
        Protocol::DalyModbus => to_json(protocol::daly_modbus::decode_capture(request, &response, &options)),
        Protocol::Sinowealth => {
            if request.is_none() {
                bail!("sinowealth replies do not name their register: pass the request(s) with --request");
            }
            to_json(protocol::sinowealth::decode_capture(request, &response, &options))
        }
        Protocol::Pace => to_json(protocol::pace::decode_capture(request, &response, &options)),
    }?;
    let mut out = std::io::stdout().lock();
    writeln!(out, "{json}").context("writing to stdout")?;
    Ok(())
}

fn to_json<T: Serialize>(result: Result<T, protocol::DecodeError>) -> anyhow::Result<String> {
    let capture = result.map_err(|e| anyhow::anyhow!("{e} ({kind})", kind = e.kind()))?;
    serde_json::to_string_pretty(&capture).context("encoding JSON")
}

/// Bytes of one capture argument: Pace frames may be pasted as text (`~2501…`), everything else is hex.
fn capture_bytes(protocol: Protocol, text: &str) -> anyhow::Result<Vec<u8>> {
    let trimmed = text.trim();
    if protocol == Protocol::Pace && trimmed.starts_with('~') {
        // People paste frames from logs with a literal `\r`, or without the CR a shell cannot carry.
        let mut bytes = trimmed.replace("\\r", "\r").replace("\\n", "").into_bytes();
        if bytes.last() != Some(&b'\r') {
            bytes.push(b'\r');
        }
        return Ok(bytes);
    }
    protocol::parse_hex(trimmed).map_err(|e| match e {
        protocol::DecodeError::Truncated { have, .. } => {
            anyhow::anyhow!("not hex: an odd number of hex digits ({have})")
        }
        e => anyhow::anyhow!("not hex: {e}"),
    })
}

/// Simulated seconds the batteries run before the first request is answered.
const WARM_UP_SECONDS: f64 = 420.0;

fn simulate(args: &SimulateArgs) -> anyhow::Result<()> {
    let mut bus = simulated_bus(args)?;
    // Start mid-cycle, so even a frozen run (--time-scale 0) shows current, spread and warm probes.
    bus.step(WARM_UP_SECONDS);
    let endpoint = match (&args.pty, &args.tcp) {
        (Some(link), _) => Endpoint::Pty(link.clone()),
        (None, Some(addr)) => Endpoint::Tcp(addr.clone()),
        (None, None) => bail!("give --pty LINK or --tcp ADDR"),
    };
    if !(args.time_scale.is_finite() && args.time_scale >= 0.0) {
        bail!("--time-scale must be a number of 0 or more, got {}", args.time_scale);
    }
    let options = ServeOptions {
        timing: Timing { baud: args.baud, latency: Duration::from_millis(args.latency_ms) },
        faults: FaultPlan::new(args.faults.clone(), args.seed),
        truth: args.truth.clone(),
        time_scale: args.time_scale,
    };
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().context("starting the runtime")?;
    runtime.block_on(simulator_serve::serve(bus, &endpoint, options))
}

/// The simulated bus for `args`, after checking the sizes the protocol can carry.
fn simulated_bus(args: &SimulateArgs) -> anyhow::Result<Box<dyn Responder>> {
    let check = |what: &str, value: u8, range: std::ops::RangeInclusive<u8>| {
        if range.contains(&value) {
            Ok(())
        } else {
            Err(anyhow::anyhow!(
                "--{what} {value} is outside {}..={} for {}",
                range.start(),
                range.end(),
                args.protocol
            ))
        }
    };
    check("temperatures", args.temperatures, 0..=16)?;
    if args.model.is_some() && args.protocol != Protocol::Daly {
        bail!("--model is reported by Daly boards only (their 0x63 identity reply), not by {}", args.protocol);
    }
    if args.no_identity && args.protocol != Protocol::Daly {
        bail!("--no-identity silences the Daly identity reads 0x57 and 0x63, which {} does not have", args.protocol);
    }
    match args.protocol {
        Protocol::Daly => {
            check("cells", args.cells, 1..=48)?;
            check("boards", args.boards, 1..=16)?;
            let bus = DalyBus::new(args.boards, args.cells, args.temperatures, args.seed);
            let bus = if args.no_identity { bus.without_identity() } else { bus };
            Ok(Box::new(match &args.model {
                Some(model) => bus.with_model(model),
                None => bus,
            }))
        }
        Protocol::DalyModbus => {
            check("cells", args.cells, 1..=32)?;
            check("temperatures", args.temperatures, 0..=8)?;
            Ok(Box::new(DalyModbusBus::new(args.cells, args.temperatures, args.seed)))
        }
        Protocol::Sinowealth => {
            check("cells", args.cells, 3..=10)?;
            Ok(Box::new(SinowealthBus::new(args.cells, args.seed)))
        }
        Protocol::Pace => {
            check("cells", args.cells, 1..=16)?;
            check("packs", args.packs, 1..=16)?;
            Ok(Box::new(PaceBus::new(args.packs, args.cells, args.temperatures, args.seed)))
        }
    }
}
