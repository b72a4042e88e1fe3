//! The YAML configuration (README "Export real batteries", `examples/config.yaml`), in two stages as ripgrep's low/high
//! arguments: [`parse`] reads the text with serde-saphyr into the raw structs below, which mirror the YAML one-to-one
//! (`deny_unknown_fields` at every level, protocol blocks nested, scalars kept as written with their position), then
//! `resolve` turns them into the validated [`Config`] the rest of the program uses. Every mistake becomes one
//! [`ConfigError`] naming the file, line, column and key path.
//!
//! The file is untrusted input: it is size-limited, parsed under a serde-saphyr budget, and nothing here opens
//! a device, so `config check` is safe to run anywhere.

pub mod address;
mod device;
mod error;
mod indent;
mod locate;
pub mod mqtt;
mod resolve;

use std::fmt;
use std::io::Read as _;
use std::path::Path;

use serde::de;
use serde::{Deserialize, Deserializer};
use serde_saphyr::{Budget, Options, Spanned};

pub use error::{ConfigError, Located};
pub(crate) use resolve::parse_duration;
pub use resolve::{BLUETOOTH_TIMEOUT, Config, Defaults, DeviceConfig, TCP_CONNECT_TIMEOUT, same_bus};

use locate::{PathIndex, Position};

/// The largest configuration file accepted; real ones are a few kilobytes.
pub const MAX_FILE_BYTES: usize = 1024 * 1024;

/// Reads and validates the configuration file at `path`.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    let read_error = |cause| ConfigError::Read { file: path.to_owned(), cause };
    let file = std::fs::File::open(path).map_err(read_error)?;
    let mut bytes = Vec::new();
    // One byte past the limit is enough to know it is too large without reading a huge file.
    file.take(MAX_FILE_BYTES as u64 + 1).read_to_end(&mut bytes).map_err(read_error)?;
    if bytes.len() > MAX_FILE_BYTES {
        return Err(at_start(path, format!("the file is larger than {} KiB", MAX_FILE_BYTES / 1024)));
    }
    match String::from_utf8(bytes) {
        Ok(text) => parse(&text, path),
        Err(e) => {
            let good = e.utf8_error().valid_up_to();
            let before = String::from_utf8_lossy(e.as_bytes().get(..good).unwrap_or_default()).into_owned();
            let line = before.matches('\n').count() as u64 + 1;
            let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) as u64 + 1;
            Err(ConfigError::Invalid(Located {
                file: path.to_owned(),
                line,
                column,
                path: String::new(),
                message: "the file is not UTF-8 text".to_owned(),
            }))
        }
    }
}

/// Validates configuration `text`; `file` is only used to name the file in errors.
pub fn parse(text: &str, file: &Path) -> Result<Config, ConfigError> {
    if text.len() > MAX_FILE_BYTES {
        return Err(at_start(file, format!("the file is larger than {} KiB", MAX_FILE_BYTES / 1024)));
    }
    let raw: RawConfig = match serde_saphyr::from_str_with_options(text, options()) {
        Ok(raw) => raw,
        Err(error) => return Err(resolve::stage_one_errors(&error, text, file)),
    };
    let index = PathIndex::build(text);
    resolve::resolve(&raw, &resolve::Source { file, text, index: &index })
}

/// An error at the first character of the file.
fn at_start(file: &Path, message: String) -> ConfigError {
    ConfigError::Invalid(Located { file: file.to_owned(), line: 1, column: 1, path: String::new(), message })
}

/// Parser limits far above any real configuration and far below what would hurt: a config has a few dozen
/// devices, each a dozen nodes, and no reason for deep nesting or many aliases.
fn options() -> Options {
    let mut budget = Budget::default();
    budget.max_reader_input_bytes = Some(MAX_FILE_BYTES);
    budget.max_events = 200_000;
    budget.max_nodes = 100_000;
    budget.max_depth = 32;
    budget.max_documents = 1;
    budget.max_aliases = 1_000;
    budget.max_anchors = 1_000;
    budget.max_merge_keys = 1_000;
    budget.max_total_scalar_bytes = MAX_FILE_BYTES;
    budget.max_recorded_anchor_events = 100_000;
    budget.max_recorded_anchor_bytes = MAX_FILE_BYTES;
    let mut options = Options::default();
    options.budget = Some(budget);
    // Our own one-line errors replace the multi-line snippet.
    options.with_snippet = false;
    options
}

/// A whole configuration file as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawConfig {
    /// Timing defaults for every device.
    pub(crate) defaults: Option<Spanned<RawDefaults>>,
    /// The devices to poll.
    pub(crate) devices: Option<Spanned<Vec<Spanned<RawDevice>>>>,
    /// MQTT publishing.
    pub(crate) mqtt: Option<Spanned<mqtt::RawMqtt>>,
}

/// The `defaults:` block; each value is a duration text or a count, checked in stage two.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawDefaults {
    /// Reply timeout per request (duration, default 1s).
    pub(crate) timeout: Option<Spanned<String>>,
    /// Retries per request (count, default 3).
    pub(crate) retries: Option<Spanned<String>>,
    /// Quiet time between requests on one bus (duration, default 50ms).
    pub(crate) request_gap: Option<Spanned<String>>,
    /// Age below which a scrape reuses a snapshot (duration, default 5s).
    pub(crate) max_age: Option<Spanned<String>>,
    /// Age above which values are no longer exported (duration, default 60s).
    pub(crate) stale_after: Option<Spanned<String>>,
}

/// One `devices:` item.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawDevice {
    /// The `device` label: `[a-z0-9_-]+`, unique.
    pub(crate) name: Option<Spanned<String>>,
    /// daly, daly-modbus, sinowealth or pace.
    pub(crate) protocol: Option<Spanned<String>>,
    /// Serial port path (one transport per device).
    pub(crate) serial: Option<Spanned<String>>,
    /// TCP serial server `host:port`.
    pub(crate) tcp: Option<Spanned<String>>,
    /// Bluetooth LE module address `AA:BB:CC:DD:EE:FF`.
    pub(crate) bluetooth: Option<Spanned<String>>,
    /// BlueZ adapter for the Bluetooth module (`hci0`; default: the first adapter).
    pub(crate) adapter: Option<Spanned<String>>,
    /// Serial line speed (default 9600).
    pub(crate) baud: Option<Spanned<String>>,
    /// Serial parity: none (default), even or odd.
    pub(crate) parity: Option<Spanned<String>>,
    /// This device's reply timeout (overrides `defaults.timeout`).
    pub(crate) timeout: Option<Spanned<String>>,
    /// This device's retries (overrides `defaults.retries`).
    pub(crate) retries: Option<Spanned<String>>,
    /// Options of protocol `daly`.
    pub(crate) daly: Option<Spanned<RawDaly>>,
    /// Options of protocol `daly-modbus`.
    pub(crate) daly_modbus: Option<Spanned<RawDalyModbus>>,
    /// Protocol `sinowealth` has no options; an empty block is accepted (what `detect` prints).
    pub(crate) sinowealth: Option<Spanned<RawSinowealth>>,
    /// Options of protocol `pace`.
    pub(crate) pace: Option<Spanned<RawPace>>,
}

/// The `daly:` block.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawDaly {
    /// rs485 (default), uart, a board number, `"1,2"`, `"1-4"` or a list of board numbers.
    pub(crate) address: Option<Spanned<OneOrList>>,
    /// auto (default), charge-positive or discharge-positive.
    pub(crate) current_sign: Option<Spanned<String>>,
}

/// The `daly_modbus:` block.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawDalyModbus {
    /// d2 (default), p81 or `p81:N`.
    pub(crate) address: Option<Spanned<String>>,
}

/// The `sinowealth:` block, which has no keys.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawSinowealth {}

/// The `pace:` block.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawPace {
    /// The master's ADR, 0–255 (default 1).
    pub(crate) address: Option<Spanned<String>>,
    /// `all` (default) or a list of pack numbers.
    pub(crate) packs: Option<Spanned<OneOrList>>,
    /// The VER byte: 0x25 (default) or the Pylon-compatible 0x20.
    pub(crate) version: Option<Spanned<String>>,
}

/// A value that is either one scalar, kept as text, or a list of scalars, each with its position.
#[derive(Debug)]
pub(crate) enum OneOrList {
    /// One scalar, as text (`rs485`, `1,2`, `all`, `3`).
    One(String),
    /// A sequence of scalars.
    List(Vec<Spanned<String>>),
}

impl<'de> Deserialize<'de> for OneOrList {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(OneOrListVisitor)
    }
}

/// Accepts a string, a number or a sequence.
struct OneOrListVisitor;

impl<'de> de::Visitor<'de> for OneOrListVisitor {
    type Value = OneOrList;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a single value or a list of values")
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
        Ok(OneOrList::One(v.to_owned()))
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
        Ok(OneOrList::One(v.to_string()))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
        Ok(OneOrList::One(v.to_string()))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Self::Value, E> {
        Ok(OneOrList::One(v.to_string()))
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Self::Value, E> {
        Ok(OneOrList::One(v.to_string()))
    }

    fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element::<Spanned<String>>()? {
            items.push(item);
        }
        Ok(OneOrList::List(items))
    }
}

impl Position {
    /// Where a spanned value was referenced (for an alias: where the alias is written).
    fn of<T>(spanned: &Spanned<T>) -> Self {
        // serde-saphyr marks a lost position as 0:0; the first character is the honest fallback.
        Self { line: spanned.referenced.line().max(1), column: spanned.referenced.column().max(1) }
    }
}
