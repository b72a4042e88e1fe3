//! Stage two: the raw structs of [`super`] → the validated [`Config`]. Every check that serde cannot express
//! lives here (durations, names, exactly one transport, protocol blocks, addresses, buses agreeing on their
//! line settings), and each failure names the position of the key or value at fault. No I/O: nothing is opened.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_saphyr::budget::BudgetBreach;
use serde_saphyr::{MessageFormatter as _, Spanned};

use super::address::{ProtocolOptions, daly_addresses, daly_modbus_map, pace_adr};
use super::locate::{PathIndex, Position, join};
use super::{ConfigError, Located, OneOrList, RawConfig, RawDaly, RawDefaults, RawDevice, RawPace};
use crate::model::{CurrentSign, Sections};
use crate::poller::{BusSpec, DeviceSpec};
use crate::protocol::daly::Address;
use crate::protocol::daly_modbus::Map;
use crate::protocol::pace::exchange::PackSelection;
use crate::protocol::pace::{VER_PACE, VER_PYLON};
use crate::protocol::{Exchange, Protocol};
use crate::session::Settings;
use crate::transport::{Parity, SerialSettings, TcpSettings, TransportSettings};

/// How long a TCP serial server may take to accept a connection: generous for Wi-Fi boxes, well below a
/// Prometheus scrape timeout.
pub const TCP_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// A validated configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// Timing shared by every device unless a device overrides it.
    pub defaults: Defaults,
    /// The devices, in file order.
    pub devices: Vec<DeviceConfig>,
}

/// The `defaults:` block with every default filled in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Defaults {
    /// Reply timeout per request (default 1 s).
    pub timeout: Duration,
    /// Retries per request after the first attempt (default 3).
    pub retries: u32,
    /// Quiet time between requests on one bus (default 50 ms; Pace v20 needs ~200 ms).
    pub request_gap: Duration,
    /// A scrape reuses a snapshot younger than this instead of polling again (default 5 s).
    pub max_age: Duration,
    /// Values older than this are not exported at all (default 60 s).
    pub stale_after: Duration,
}

impl Default for Defaults {
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(1),
            retries: 3,
            request_gap: Duration::from_millis(50),
            max_age: Duration::from_secs(5),
            stale_after: Duration::from_secs(60),
        }
    }
}

/// One validated device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceConfig {
    /// The `device` label, `[a-z0-9_-]+`, unique in the file.
    pub name: String,
    /// The protocol it speaks.
    pub protocol: Protocol,
    /// Its address and protocol options.
    pub options: ProtocolOptions,
    /// How its bus is reached.
    pub transport: TransportSettings,
    /// Reply timeout per request (its own, or the default).
    pub timeout: Duration,
    /// Retries per request (its own, or the default).
    pub retries: u32,
}

impl DeviceConfig {
    /// A fresh exchange for this device.
    #[must_use]
    pub fn exchange(&self) -> Box<dyn Exchange> {
        self.options.exchange()
    }

    /// The session timing of this device on a bus with the given request gap.
    #[must_use]
    pub fn settings(&self, request_gap: Duration) -> Settings {
        Settings { timeout: self.timeout, retries: self.retries, request_gap, ..Settings::default() }
    }
}

/// What makes two devices share one bus worker: the same serial path, or the same TCP endpoint as written.
#[derive(Debug, Clone, PartialEq, Eq)]
enum BusKey {
    Serial(PathBuf),
    Tcp(String),
}

fn bus_key(transport: &TransportSettings) -> BusKey {
    match transport {
        TransportSettings::Serial(s) => BusKey::Serial(s.path.clone()),
        TransportSettings::Tcp(t) => BusKey::Tcp(t.address.clone()),
    }
}

impl Config {
    /// One bus per serial path or TCP endpoint, in order of first appearance, each with its devices in file
    /// order, a fresh exchange per device and every section polled. Validation has made sure devices on one bus
    /// agree on line settings and timing.
    #[must_use]
    pub fn buses(&self) -> Vec<BusSpec> {
        let mut buses: Vec<(BusKey, BusSpec)> = Vec::new();
        for device in &self.devices {
            let spec = DeviceSpec { name: device.name.clone(), exchange: device.exchange(), sections: Sections::all() };
            let key = bus_key(&device.transport);
            match buses.iter_mut().find(|(k, _)| *k == key) {
                Some((_, bus)) => bus.devices.push(spec),
                None => buses.push((
                    key,
                    BusSpec {
                        transport: device.transport.clone(),
                        settings: device.settings(self.defaults.request_gap),
                        devices: vec![spec],
                    },
                )),
            }
        }
        buses.into_iter().map(|(_, bus)| bus).collect()
    }

    /// How many buses [`Config::buses`] would make.
    #[must_use]
    pub fn bus_count(&self) -> usize {
        let mut keys: Vec<BusKey> = Vec::new();
        for device in &self.devices {
            let key = bus_key(&device.transport);
            if !keys.contains(&key) {
                keys.push(key);
            }
        }
        keys.len()
    }

    /// The device called `name`.
    #[must_use]
    pub fn device(&self, name: &str) -> Option<&DeviceConfig> {
        self.devices.iter().find(|d| d.name == name)
    }
}

/// The text being resolved, for positions and quotes in errors.
#[derive(Debug)]
pub(crate) struct Source<'a> {
    /// The file name for errors.
    pub(crate) file: &'a Path,
    /// The whole text.
    pub(crate) text: &'a str,
    /// Key positions and paths.
    pub(crate) index: &'a PathIndex,
}

impl Source<'_> {
    fn error(&self, at: Position, path: &str, message: impl Into<String>) -> ConfigError {
        ConfigError::Invalid(Located {
            file: self.file.to_owned(),
            line: at.line,
            column: at.column,
            path: path.to_owned(),
            message: message.into(),
        })
    }

    /// An error about a value, at the value.
    fn at_value<T>(&self, value: &Spanned<T>, path: &str, message: impl Into<String>) -> ConfigError {
        self.error(Position::of(value), path, message)
    }

    /// An error about a key's presence, at the key (or at its value if the key came from a merge or alias).
    fn at_key<T>(&self, value: &Spanned<T>, path: &str, message: impl Into<String>) -> ConfigError {
        self.error(self.key_position(value, path), path, message)
    }

    fn key_position<T>(&self, value: &Spanned<T>, path: &str) -> Position {
        self.index.key(path).unwrap_or_else(|| Position::of(value))
    }

    /// The text of a scalar as written in the file (quotes included), for quoting it in a message.
    fn written<T>(&self, value: &Spanned<T>) -> Option<&str> {
        let span = value.referenced.span();
        let start = usize::try_from(span.byte_offset()?).ok()?;
        let len = usize::try_from(span.byte_len()?).ok()?;
        self.text.get(start..start.checked_add(len)?)
    }

    /// `"text"`: the value quoted for a message.
    fn quote(&self, value: &Spanned<String>) -> String {
        match self.written(value) {
            Some(w) if w.starts_with('"') || w.starts_with('\'') => w.to_owned(),
            _ => format!("{:?}", value.value),
        }
    }
}

/// Stage two: check and convert everything.
pub(crate) fn resolve(raw: &RawConfig, src: &Source<'_>) -> Result<Config, ConfigError> {
    if let Some(mqtt) = &raw.mqtt {
        return Err(src.at_key(
            mqtt,
            "mqtt",
            "MQTT publishing is not in this build yet; remove the mqtt: block (Prometheus scrapes /metrics)",
        ));
    }
    let defaults = match &raw.defaults {
        Some(d) => resolve_defaults(&d.value, src)?,
        None => Defaults::default(),
    };
    let Some(list) = raw.devices.as_ref().filter(|d| !d.value.is_empty()) else {
        let at = src.index.key("devices").unwrap_or(Position { line: 1, column: 1 });
        return Err(src.error(at, "devices", "missing or empty: list at least one device"));
    };
    let mut devices: Vec<DeviceConfig> = Vec::with_capacity(list.value.len());
    for (i, item) in list.value.iter().enumerate() {
        let path = format!("devices[{i}]");
        let device = resolve_device(item, &path, &defaults, src)?;
        if let Some(first) = devices.iter().position(|d| d.name == device.name) {
            let name = item.value.name.as_ref().map(|n| (Position::of(n), src.quote(n)));
            let (at, quoted) = name.unwrap_or((Position::of(item), format!("{:?}", device.name)));
            return Err(src.error(
                at,
                &join(&path, "name"),
                format!("{quoted} is already the name of devices[{first}]; names must be unique"),
            ));
        }
        check_shared_bus(&devices, &device, item, &path, src)?;
        devices.push(device);
    }
    Ok(Config { defaults, devices })
}

fn resolve_defaults(raw: &RawDefaults, src: &Source<'_>) -> Result<Defaults, ConfigError> {
    let mut d = Defaults::default();
    let field = |value: &Option<Spanned<String>>, key: &str, range: (Duration, Duration), default: Duration| {
        value.as_ref().map_or(Ok(default), |v| duration(v, &join("defaults", key), range, src))
    };
    d.timeout = field(&raw.timeout, "timeout", TIMEOUT_RANGE, d.timeout)?;
    d.request_gap = field(&raw.request_gap, "request_gap", GAP_RANGE, d.request_gap)?;
    d.max_age = field(&raw.max_age, "max_age", MAX_AGE_RANGE, d.max_age)?;
    d.stale_after = field(&raw.stale_after, "stale_after", STALE_RANGE, d.stale_after)?;
    if let Some(r) = &raw.retries {
        d.retries = retries(r, "defaults.retries", src)?;
    }
    if d.stale_after < d.max_age {
        let message = format!(
            "stale_after ({:?}) is shorter than max_age ({:?}): every reused snapshot would already be stale",
            d.stale_after, d.max_age
        );
        // The built-in values agree, so one of the two was written; the last arm only keeps this total.
        return Err(match (&raw.stale_after, &raw.max_age) {
            (Some(v), _) => src.at_value(v, "defaults.stale_after", message),
            (None, Some(v)) => src.at_value(v, "defaults.max_age", message),
            (None, None) => {
                src.error(src.index.key("defaults").unwrap_or(Position { line: 1, column: 1 }), "defaults", message)
            }
        });
    }
    Ok(d)
}

/// Accepted ranges, inclusive: wide enough for any real bus, narrow enough to catch a unit slip (`1000s`).
const TIMEOUT_RANGE: (Duration, Duration) = (Duration::from_millis(1), Duration::from_secs(60));
const GAP_RANGE: (Duration, Duration) = (Duration::ZERO, Duration::from_secs(10));
const MAX_AGE_RANGE: (Duration, Duration) = (Duration::ZERO, Duration::from_secs(3600));
const STALE_RANGE: (Duration, Duration) = (Duration::from_secs(1), Duration::from_secs(86_400));
/// More retries than this only make a dead device hold the bus longer.
const MAX_RETRIES: u32 = 10;

fn duration(
    value: &Spanned<String>,
    path: &str,
    (min, max): (Duration, Duration),
    src: &Source<'_>,
) -> Result<Duration, ConfigError> {
    let parsed = parse_duration(&value.value).ok_or_else(|| {
        src.at_value(
            value,
            path,
            format!("{} is not a duration: write a number and a unit, like 1s, 50ms, 1.5s or 2m", src.quote(value)),
        )
    })?;
    if parsed < min || parsed > max {
        return Err(src.at_value(value, path, format!("{} is outside {min:?}–{max:?}", src.quote(value))));
    }
    Ok(parsed)
}

/// `1s`, `50ms`, `1.5s`, `2m`, `1h`: digits, an optional fraction, and a unit; at most one day.
pub(crate) fn parse_duration(text: &str) -> Option<Duration> {
    let text = text.trim();
    let split = text.find(|c: char| !(c.is_ascii_digit() || c == '.'))?;
    let (number, unit) = text.split_at(split);
    let (whole, fraction) = number.split_once('.').unwrap_or((number, "0"));
    if whole.is_empty() || fraction.is_empty() || !fraction.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let seconds_per_unit = match unit {
        "ms" => 0.001,
        "s" => 1.0,
        "m" => 60.0,
        "h" => 3600.0,
        _ => return None,
    };
    let seconds = number.parse::<f64>().ok()? * seconds_per_unit;
    // Checked before converting: Duration::from_secs_f64 panics on values it cannot hold.
    if !seconds.is_finite() || !(0.0..=86_400.0).contains(&seconds) {
        return None;
    }
    // Round to whole microseconds so "1.1s" is exactly 1.1 s and not 1.100000000000000088 s.
    Some(Duration::from_micros((seconds * 1e6).round() as u64))
}

fn retries(value: &Spanned<String>, path: &str, src: &Source<'_>) -> Result<u32, ConfigError> {
    match value.value.trim().parse::<u32>() {
        Ok(n) if n <= MAX_RETRIES => Ok(n),
        _ => Err(src.at_value(value, path, format!("{} is not a number of retries 0–{MAX_RETRIES}", src.quote(value)))),
    }
}

fn resolve_device(
    item: &Spanned<RawDevice>,
    path: &str,
    defaults: &Defaults,
    src: &Source<'_>,
) -> Result<DeviceConfig, ConfigError> {
    let raw = &item.value;
    let name = device_name(item, path, src)?;
    let Some(protocol_text) = &raw.protocol else {
        return Err(src.error(
            Position::of(item),
            path,
            "no protocol: add protocol: daly, daly-modbus, sinowealth or pace",
        ));
    };
    // The block is spelled daly_modbus (a YAML key), so the same spelling is accepted as the protocol name.
    let protocol = match protocol_text.value.as_str() {
        "daly_modbus" => Ok(Protocol::DalyModbus),
        other => other.parse::<Protocol>(),
    }
    .map_err(|e| src.at_value(protocol_text, &join(path, "protocol"), e.to_string()))?;
    let transport = transport(item, path, src)?;
    let options = protocol_options(raw, protocol, path, src)?;
    let timeout = match &raw.timeout {
        Some(t) => duration(t, &join(path, "timeout"), TIMEOUT_RANGE, src)?,
        None => defaults.timeout,
    };
    let retries = match &raw.retries {
        Some(r) => retries(r, &join(path, "retries"), src)?,
        None => defaults.retries,
    };
    Ok(DeviceConfig { name, protocol, options, transport, timeout, retries })
}

/// Longest device name: it becomes a label value and an MQTT topic level.
const MAX_NAME_CHARS: usize = 64;

fn device_name(item: &Spanned<RawDevice>, path: &str, src: &Source<'_>) -> Result<String, ConfigError> {
    let Some(name) = &item.value.name else {
        return Err(src.error(Position::of(item), path, "no name: add name: with a unique [a-z0-9_-]+ label"));
    };
    let text = &name.value;
    let valid = !text.is_empty()
        && text.len() <= MAX_NAME_CHARS
        && text.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-');
    if !valid {
        return Err(src.at_value(
            name,
            &join(path, "name"),
            format!(
                "{} is not a device name: use 1–{MAX_NAME_CHARS} lower-case letters, digits, _ or -",
                src.quote(name)
            ),
        ));
    }
    Ok(text.clone())
}

fn transport(item: &Spanned<RawDevice>, path: &str, src: &Source<'_>) -> Result<TransportSettings, ConfigError> {
    let raw = &item.value;
    // Every transport key given, in the order written, so the second one is the one reported.
    let mut given: Vec<(&str, Position)> = Vec::new();
    if let Some(v) = &raw.serial {
        given.push(("serial", src.key_position(v, &join(path, "serial"))));
    }
    if let Some(v) = &raw.tcp {
        given.push(("tcp", src.key_position(v, &join(path, "tcp"))));
    }
    if let Some(v) = &raw.bluetooth {
        given.push(("bluetooth", src.key_position(v, &join(path, "bluetooth"))));
    }
    given.sort_by_key(|(_, at)| *at);
    match given.as_slice() {
        [] => {
            return Err(src.error(Position::of(item), path, "no transport: add serial: PATH or tcp: HOST:PORT"));
        }
        [(first, _), (second, at), ..] => {
            return Err(src.error(
                *at,
                &join(path, second),
                format!("a device has one transport, and {first}: is already given; remove one of them"),
            ));
        }
        [_] => {}
    }
    if let Some(ble) = &raw.bluetooth {
        return Err(src.at_key(
            ble,
            &join(path, "bluetooth"),
            "Bluetooth LE is not in this build; reach the device through serial: or tcp:",
        ));
    }
    if let Some(serial) = &raw.serial {
        let serial_path = join(path, "serial");
        if serial.value.trim().is_empty() {
            return Err(src.at_key(serial, &serial_path, "empty: give the serial port, e.g. /dev/ttyUSB0"));
        }
        let baud = match &raw.baud {
            Some(b) => baud(b, &join(path, "baud"), src)?,
            None => 9600,
        };
        let parity = match &raw.parity {
            Some(p) => p.value.parse::<Parity>().map_err(|_| {
                src.at_value(p, &join(path, "parity"), format!("{} is not none, even or odd", src.quote(p)))
            })?,
            None => Parity::None,
        };
        return Ok(TransportSettings::Serial(SerialSettings { path: PathBuf::from(&serial.value), baud, parity }));
    }
    let Some(tcp) = &raw.tcp else {
        return Err(src.error(Position::of(item), path, "no transport: add serial: PATH or tcp: HOST:PORT"));
    };
    for (key, value) in [("baud", &raw.baud), ("parity", &raw.parity)] {
        if let Some(v) = value {
            return Err(src.at_key(
                v,
                &join(path, key),
                format!("{key} applies to serial ports only; a TCP serial server has its own line settings"),
            ));
        }
    }
    let address = tcp.value.trim();
    if !is_host_port(address) {
        return Err(src.at_value(
            tcp,
            &join(path, "tcp"),
            format!("{} is not HOST:PORT, e.g. 192.168.1.50:8899 or [fe80::1]:8899", src.quote(tcp)),
        ));
    }
    Ok(TransportSettings::Tcp(TcpSettings { address: address.to_owned(), connect_timeout: TCP_CONNECT_TIMEOUT }))
}

/// Line speeds serial adapters and BMS boards actually offer; anything else is most likely a typo.
const BAUD_RATES: [u32; 12] = [1200, 2400, 4800, 9600, 14400, 19200, 38400, 57600, 115_200, 230_400, 460_800, 921_600];

fn baud(value: &Spanned<String>, path: &str, src: &Source<'_>) -> Result<u32, ConfigError> {
    match value.value.trim().parse::<u32>() {
        Ok(b) if BAUD_RATES.contains(&b) => Ok(b),
        _ => Err(src.at_value(
            value,
            path,
            format!("{} is not a baud rate: use one of 1200, 2400, 4800, 9600, 14400, 19200, 38400, 57600, 115200, 230400, 460800 or 921600", src.quote(value)),
        )),
    }
}

/// `host:port` with a non-empty host (IPv6 in brackets) and a port 1–65535.
fn is_host_port(text: &str) -> bool {
    let Some((host, port)) = text.rsplit_once(':') else { return false };
    let port_ok = port.parse::<u16>().is_ok_and(|p| p != 0);
    let host_ok = match host.strip_prefix('[') {
        Some(v6) => v6.strip_suffix(']').is_some_and(|inner| !inner.is_empty()),
        None => !host.is_empty() && !host.contains(':') && !host.contains(char::is_whitespace),
    };
    port_ok && host_ok
}

fn protocol_options(
    raw: &RawDevice,
    protocol: Protocol,
    path: &str,
    src: &Source<'_>,
) -> Result<ProtocolOptions, ConfigError> {
    // A block for another protocol is reported before its contents are looked at.
    let blocks = [
        ("daly", Protocol::Daly, raw.daly.as_ref().map(|b| src.key_position(b, &join(path, "daly")))),
        (
            "daly_modbus",
            Protocol::DalyModbus,
            raw.daly_modbus.as_ref().map(|b| src.key_position(b, &join(path, "daly_modbus"))),
        ),
        (
            "sinowealth",
            Protocol::Sinowealth,
            raw.sinowealth.as_ref().map(|b| src.key_position(b, &join(path, "sinowealth"))),
        ),
        ("pace", Protocol::Pace, raw.pace.as_ref().map(|b| src.key_position(b, &join(path, "pace")))),
    ];
    for (key, owner, at) in blocks {
        if let Some(at) = at
            && owner != protocol
        {
            let hint = match protocol {
                Protocol::Sinowealth => "sinowealth has no options".to_owned(),
                Protocol::DalyModbus => "its options go under daly_modbus:".to_owned(),
                other => format!("its options go under {other}:"),
            };
            return Err(src.error(
                at,
                &join(path, key),
                format!("a {key}: block does not belong to a {protocol} device ({hint})"),
            ));
        }
    }
    Ok(match protocol {
        Protocol::Daly => daly_options(raw.daly.as_ref().map(|b| &b.value), &join(path, "daly"), src)?,
        Protocol::DalyModbus => {
            let address = raw.daly_modbus.as_ref().and_then(|b| b.value.address.as_ref());
            let map = match address {
                Some(a) => daly_modbus_map(a.value.trim())
                    .map_err(|e| src.at_value(a, &join(path, "daly_modbus.address"), e.to_string()))?,
                None => Map::D2,
            };
            ProtocolOptions::DalyModbus { map, current_sign: CurrentSign::Auto }
        }
        Protocol::Sinowealth => ProtocolOptions::Sinowealth,
        Protocol::Pace => pace_options(raw.pace.as_ref().map(|b| &b.value), &join(path, "pace"), src)?,
    })
}

fn daly_options(raw: Option<&RawDaly>, path: &str, src: &Source<'_>) -> Result<ProtocolOptions, ConfigError> {
    let address_path = join(path, "address");
    let addresses = match raw.and_then(|r| r.address.as_ref()) {
        None => vec![Address::Rs485],
        Some(spanned) => match &spanned.value {
            OneOrList::One(text) => {
                daly_addresses(text.trim()).map_err(|e| src.at_value(spanned, &address_path, e.to_string()))?
            }
            OneOrList::List(items) => {
                if items.is_empty() {
                    return Err(src.at_value(spanned, &address_path, "an empty list: give board numbers 1–16"));
                }
                let mut boards = Vec::with_capacity(items.len());
                for (i, item) in items.iter().enumerate() {
                    let item_path = format!("{address_path}[{i}]");
                    let board = match daly_addresses(item.value.trim()).as_deref() {
                        Ok([board @ Address::Board(_)]) => *board,
                        _ => {
                            return Err(src.at_value(
                                item,
                                &item_path,
                                format!("{} is not a board number 1–16", src.quote(item)),
                            ));
                        }
                    };
                    if boards.contains(&board) {
                        return Err(src.at_value(
                            item,
                            &item_path,
                            format!("board {} is listed twice", src.quote(item)),
                        ));
                    }
                    boards.push(board);
                }
                boards
            }
        },
    };
    let current_sign = match raw.and_then(|r| r.current_sign.as_ref()) {
        None => CurrentSign::Auto,
        Some(sign) => match sign.value.as_str() {
            "auto" => CurrentSign::Auto,
            "charge-positive" => CurrentSign::ChargePositive,
            "discharge-positive" => CurrentSign::DischargePositive,
            _ => {
                return Err(src.at_value(
                    sign,
                    &join(path, "current_sign"),
                    format!("{} is not auto, charge-positive or discharge-positive", src.quote(sign)),
                ));
            }
        },
    };
    Ok(ProtocolOptions::Daly { addresses, current_sign })
}

/// Highest pack number behind a Pace master.
const MAX_PACE_PACK: u8 = 15;

fn pace_options(raw: Option<&RawPace>, path: &str, src: &Source<'_>) -> Result<ProtocolOptions, ConfigError> {
    let adr = match raw.and_then(|r| r.address.as_ref()) {
        None => 1,
        Some(a) => pace_adr(a.value.trim()).map_err(|e| src.at_value(a, &join(path, "address"), e.to_string()))?,
    };
    let packs_path = join(path, "packs");
    let pack_number = |item: &Spanned<String>, item_path: &str| match item.value.trim().parse::<u8>() {
        Ok(n) if (1..=MAX_PACE_PACK).contains(&n) => Ok(n),
        _ => Err(src.at_value(
            item,
            item_path,
            format!("{} is not all or a pack number 1–{MAX_PACE_PACK}", src.quote(item)),
        )),
    };
    let packs = match raw.and_then(|r| r.packs.as_ref()) {
        None => PackSelection::All,
        Some(spanned) => match &spanned.value {
            OneOrList::One(text) if text.trim() == "all" => PackSelection::All,
            OneOrList::One(text) => {
                let as_item = Spanned::new(text.clone(), spanned.referenced, spanned.defined);
                PackSelection::List(vec![pack_number(&as_item, &packs_path)?])
            }
            OneOrList::List(items) => {
                if items.is_empty() {
                    return Err(src.at_value(spanned, &packs_path, "an empty list: give all or pack numbers"));
                }
                let mut packs = Vec::with_capacity(items.len());
                for (i, item) in items.iter().enumerate() {
                    let item_path = format!("{packs_path}[{i}]");
                    let pack = pack_number(item, &item_path)?;
                    if packs.contains(&pack) {
                        return Err(src.at_value(item, &item_path, format!("pack {pack} is listed twice")));
                    }
                    packs.push(pack);
                }
                PackSelection::List(packs)
            }
        },
    };
    let version = match raw.and_then(|r| r.version.as_ref()) {
        None => VER_PACE,
        Some(v) => match pace_adr(v.value.trim()) {
            Ok(ver) if ver == VER_PACE || ver == VER_PYLON => ver,
            _ => {
                return Err(src.at_value(
                    v,
                    &join(path, "version"),
                    format!("{} is not 0x25 (Pace) or 0x20 (Pylon-compatible)", src.quote(v)),
                ));
            }
        },
    };
    Ok(ProtocolOptions::Pace { adr, packs, version })
}

/// Devices on one port share its line settings and one poll timing (one worker polls them in turn).
fn check_shared_bus(
    earlier: &[DeviceConfig],
    device: &DeviceConfig,
    item: &Spanned<RawDevice>,
    path: &str,
    src: &Source<'_>,
) -> Result<(), ConfigError> {
    let key = bus_key(&device.transport);
    let Some((first, other)) = earlier.iter().enumerate().find(|(_, d)| bus_key(&d.transport) == key) else {
        return Ok(());
    };
    let raw = &item.value;
    let port = match &key {
        BusKey::Serial(p) => format!("serial port {}", p.display()),
        BusKey::Tcp(a) => format!("TCP endpoint {a}"),
    };
    // Point at this device's own key when it wrote one, else at its transport.
    let place = |written: Option<&Spanned<String>>, key: &str| -> (Position, String) {
        let transport = raw.serial.as_ref().or(raw.tcp.as_ref()).map(|t| {
            let transport_key = if raw.serial.is_some() { "serial" } else { "tcp" };
            (Position::of(t), join(path, transport_key))
        });
        match written {
            Some(w) => (src.key_position(w, &join(path, key)), join(path, key)),
            None => transport.unwrap_or((Position::of(item), path.to_owned())),
        }
    };
    if let (TransportSettings::Serial(a), TransportSettings::Serial(b)) = (&other.transport, &device.transport) {
        if a.baud != b.baud {
            let (at, at_path) = place(raw.baud.as_ref(), "baud");
            return Err(src.error(
                at,
                &at_path,
                format!(
                    "{port} runs at {} baud for devices[{first}] but at {} here; one port has one line speed",
                    a.baud, b.baud
                ),
            ));
        }
        if a.parity != b.parity {
            let (at, at_path) = place(raw.parity.as_ref(), "parity");
            return Err(src.error(
                at,
                &at_path,
                format!(
                    "{port} has parity {} for devices[{first}] but {} here; one port has one parity",
                    a.parity, b.parity
                ),
            ));
        }
    }
    if other.timeout != device.timeout || other.retries != device.retries {
        let (written, key) = if other.timeout == device.timeout {
            (raw.retries.as_ref(), "retries")
        } else {
            (raw.timeout.as_ref(), "timeout")
        };
        let (at, at_path) = place(written, key);
        return Err(src.error(
            at,
            &at_path,
            format!(
                "devices on one {port} are polled with one timing: devices[{first}] has timeout {:?} and retries {}, \
                 this one {:?} and {}; set them alike (or in defaults:)",
                other.timeout, other.retries, device.timeout, device.retries
            ),
        ));
    }
    Ok(())
}

/// Stage one failed: turn serde-saphyr's error into one located line with the key path.
pub(crate) fn deserialize_error(error: &serde_saphyr::Error, text: &str, file: &Path) -> ConfigError {
    use serde_saphyr::Error as E;
    let error = error.without_snippet();
    let at = error
        .location()
        .filter(|l| l.line() > 0)
        .map_or(Position { line: 1, column: 1 }, |l| Position { line: l.line(), column: l.column().max(1) });
    // The position stays the outer one (where an alias is used); the message comes from the error inside.
    let mut inner = error;
    while let E::AliasError { error, .. } | E::WithSnippet { error, .. } = inner {
        inner = error;
    }
    // A file that broke the budget is not walked a second time.
    let path = if matches!(inner, E::Budget { .. }) { String::new() } else { PathIndex::build(text).path_at(at) };
    let message = match inner {
        E::SerdeUnknownField { field, expected, .. } => {
            format!("unknown key {field:?}; expected one of: {}", expected.join(", "))
        }
        E::SerdeInvalidType { unexpected, expected, .. } => {
            format!("expected {}, found {unexpected}", friendly_expected(expected))
        }
        E::Unexpected { expected, .. } => format!("expected {}", friendly_expected(expected)),
        E::DuplicateMappingKey { .. } => "this key is given twice".to_owned(),
        E::Budget { breach: BudgetBreach::Documents { .. }, .. } => {
            "more than one YAML document (---): a configuration is one document".to_owned()
        }
        E::Budget { breach, .. } => format!("too large or too complex for a configuration file ({breach:?})"),
        other => sanitize(&serde_saphyr::UserMessageFormatter.format_message(other)),
    };
    ConfigError::Invalid(Located { file: file.to_owned(), line: at.line, column: at.column, path, message })
}

/// serde names our raw structs (`struct RawDaly`); a user knows them as mappings.
fn friendly_expected(expected: &str) -> String {
    match expected {
        e if e.starts_with("struct ") || e == "mapping start" => "a mapping of keys".to_owned(),
        "sequence start" => "a list".to_owned(),
        "string scalar" | "a string" => "a single value, not a list or mapping".to_owned(),
        other => other.to_owned(),
    }
}

/// One line without control characters: parser text may quote the file's contents.
fn sanitize(text: &str) -> String {
    text.chars().map(|c| if c.is_control() { ' ' } else { c }).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_take_a_number_and_a_unit_and_nothing_that_could_panic() {
        assert_eq!(parse_duration("1s"), Some(Duration::from_secs(1)));
        assert_eq!(parse_duration("50ms"), Some(Duration::from_millis(50)));
        assert_eq!(parse_duration("1.5s"), Some(Duration::from_millis(1500)));
        assert_eq!(parse_duration("1.1s"), Some(Duration::from_millis(1100)));
        assert_eq!(parse_duration("2m"), Some(Duration::from_secs(120)));
        assert_eq!(parse_duration("1h"), Some(Duration::from_secs(3600)));
        assert_eq!(parse_duration("0ms"), Some(Duration::ZERO));
        for bad in ["5", "s", "1.s", ".5s", "1..5s", "-1s", "1 d", "1e3s", "1sec", "99999999999999999999h", ""] {
            assert_eq!(parse_duration(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn host_port_needs_both_halves_and_brackets_around_ipv6() {
        for good in ["192.168.1.50:8899", "bms.local:23", "[fe80::1]:8899"] {
            assert!(is_host_port(good), "{good}");
        }
        for bad in ["192.168.1.50", ":8899", "host:0", "host:65536", "fe80::1:8899", "[]:1", "a b:1"] {
            assert!(!is_host_port(bad), "{bad}");
        }
    }
}
