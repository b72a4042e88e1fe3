//! The command line: clap types for every subcommand and the glue that runs them. Data goes to stdout, errors
//! to stderr; exit code 0 on success, 1 on a failure the command reports, 2 on a usage error (clap's).

use std::io::Write as _;
use std::process::ExitCode;

use anyhow::{Context as _, bail};
use clap::{Args, Parser, Subcommand, ValueEnum};
use serde::Serialize;

use crate::model::CurrentSign;
use crate::protocol::{self, DecodeOptions, Protocol};

/// Reads battery management systems (Daly, Daly Modbus-style, Sinowealth, Pace) and publishes what they know.
#[derive(Debug, Parser)]
#[command(name = "bms_exporter", version, about, long_about = None)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Decode captured bytes (from a bug report, a logic analyser or `--verbose` output) and print them as JSON.
    Decode(DecodeArgs),
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

/// The `--current-sign` choices (DESIGN.md §3 `current_sign`).
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
    let result = match cli.command {
        Command::Decode(args) => decode(&args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
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
