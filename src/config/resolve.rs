//! Stage two: the raw structs of [`super`] → the validated [`Config`]. This file holds the resolved types, the
//! document-level checks (defaults, durations, the device list, unique names) and the translation of serde's
//! stage-one errors; `device.rs` checks each device. Every failure names the position of the key or value at
//! fault. No I/O: nothing is opened.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_saphyr::budget::BudgetBreach;
use serde_saphyr::{MessageFormatter as _, Spanned};

use super::address::ProtocolOptions;
use super::locate::{PathIndex, Position, join};
use super::{ConfigError, Located, RawConfig, RawDefaults};
use super::{device, mqtt};
use crate::model::Sections;
use crate::poller::{BusSpec, DeviceSpec};
use crate::protocol::{Exchange, Protocol};
use crate::session::Settings;
use crate::transport::TransportSettings;

/// How long a TCP serial server may take to accept a connection: generous for Wi-Fi boxes, well below a
/// Prometheus scrape timeout.
pub const TCP_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// The reply timeout of a Bluetooth device that sets none (and whose file sets no `defaults.timeout`): a request
/// and its reply each wait for a connection interval, a reply of many frames arrives as several notifications,
/// and Daly's own Bluetooth tools wait 5 s, where a wired bus answers within a second.
pub const BLUETOOTH_TIMEOUT: Duration = Duration::from_secs(5);

/// A validated configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// Timing shared by every device unless a device overrides it.
    pub defaults: Defaults,
    /// The devices, in file order.
    pub devices: Vec<DeviceConfig>,
    /// MQTT publishing, when configured.
    pub mqtt: Option<mqtt::MqttConfig>,
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

/// What makes two devices share one bus worker: the same serial path, the same TCP endpoint as written, or the
/// same Bluetooth module (whatever the adapter: one module holds one connection, so it must be one worker).
/// Modules with different addresses are different buses, polled independently over one adapter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum BusKey {
    Serial(PathBuf),
    Tcp(String),
    Bluetooth(String),
}

/// Whether devices reached through `a` and `b` share one bus worker (see [`Config::buses`]).
#[must_use]
pub fn same_bus(a: &TransportSettings, b: &TransportSettings) -> bool {
    bus_key(a) == bus_key(b)
}

pub(super) fn bus_key(transport: &TransportSettings) -> BusKey {
    match transport {
        TransportSettings::Serial(s) => BusKey::Serial(s.path.clone()),
        TransportSettings::Tcp(t) => BusKey::Tcp(t.address.clone()),
        TransportSettings::Bluetooth(b) => BusKey::Bluetooth(b.address.clone()),
    }
}

impl Config {
    /// One bus per serial path, TCP endpoint or Bluetooth module, in order of first appearance, each with its
    /// devices in file order, a fresh exchange per device and every section polled. Validation has made sure devices on one bus
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
                        stale_after: self.defaults.stale_after,
                    },
                )),
            }
        }
        buses.into_iter().map(|(_, bus)| bus).collect()
    }

    /// The devices of each bus [`Config::buses`] makes, in the same order (a reload compares buses by these).
    #[must_use]
    pub fn bus_devices(&self) -> Vec<Vec<&DeviceConfig>> {
        let mut buses: Vec<(BusKey, Vec<&DeviceConfig>)> = Vec::new();
        for device in &self.devices {
            let key = bus_key(&device.transport);
            match buses.iter_mut().find(|(k, _)| *k == key) {
                Some((_, bus)) => bus.push(device),
                None => buses.push((key, vec![device])),
            }
        }
        buses.into_iter().map(|(_, devices)| devices).collect()
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
    pub(super) fn error(&self, at: Position, path: &str, message: impl Into<String>) -> ConfigError {
        ConfigError::Invalid(Located {
            file: self.file.to_owned(),
            line: at.line,
            column: at.column,
            path: path.to_owned(),
            message: message.into(),
        })
    }

    /// An error about a value, at the value.
    pub(super) fn at_value<T>(&self, value: &Spanned<T>, path: &str, message: impl Into<String>) -> ConfigError {
        self.error(Position::of(value), path, message)
    }

    /// An error about a key's presence, at the key (or at its value if the key came from a merge or alias).
    pub(super) fn at_key<T>(&self, value: &Spanned<T>, path: &str, message: impl Into<String>) -> ConfigError {
        self.error(self.key_position(value, path), path, message)
    }

    pub(super) fn key_position<T>(&self, value: &Spanned<T>, path: &str) -> Position {
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
    pub(super) fn quote(&self, value: &Spanned<String>) -> String {
        match self.written(value) {
            Some(w) if w.starts_with('"') || w.starts_with('\'') => w.to_owned(),
            _ => format!("{:?}", value.value),
        }
    }
}

/// Stage two: check and convert everything. Mistakes that do not depend on each other are all reported: the
/// `defaults:` block and each device on its own (within one device, the first mistake only, as later checks
/// build on earlier ones); the checks across devices and the `mqtt:` block only once every device resolved.
pub(crate) fn resolve(raw: &RawConfig, src: &Source<'_>) -> Result<Config, ConfigError> {
    let mut errors = Vec::new();
    let defaults = match &raw.defaults {
        Some(d) => resolve_defaults(&d.value, src).unwrap_or_else(|error| {
            errors.push(error);
            Defaults::default()
        }),
        None => Defaults::default(),
    };
    let Some(list) = raw.devices.as_ref().filter(|d| !d.value.is_empty()) else {
        let at = src.index.key("devices").unwrap_or(Position { line: 1, column: 1 });
        errors.push(src.error(at, "devices", "missing or empty: list at least one device"));
        return Err(ConfigError::combine(errors).unwrap_or_else(|| src.error(at, "devices", "no devices")));
    };
    // A Bluetooth device's own default timeout gives way to one the file sets for every device.
    let default_timeout_written = raw.defaults.as_ref().is_some_and(|d| d.value.timeout.is_some());
    let mut devices: Vec<DeviceConfig> = Vec::with_capacity(list.value.len());
    let mut failed_devices = false;
    for (i, item) in list.value.iter().enumerate() {
        let path = format!("devices[{i}]");
        let device = match device::resolve_device(item, &path, &defaults, default_timeout_written, src) {
            Ok(device) => device,
            Err(error) => {
                errors.push(error);
                failed_devices = true;
                continue;
            }
        };
        if failed_devices {
            // Names and shared buses are compared with devices that did not resolve: judged once they do.
            continue;
        }
        if let Some(first) = devices.iter().position(|d| d.name == device.name) {
            let name = item.value.name.as_ref().map(|n| (Position::of(n), src.quote(n)));
            let (at, quoted) = name.unwrap_or((Position::of(item), format!("{:?}", device.name)));
            errors.push(src.error(
                at,
                &join(&path, "name"),
                format!("{quoted} is already the name of devices[{first}]; names must be unique"),
            ));
            failed_devices = true;
            continue;
        }
        if let Err(error) = device::check_shared_bus(&devices, &device, item, &path, src) {
            errors.push(error);
            failed_devices = true;
            continue;
        }
        devices.push(device);
    }
    // The `mqtt:` block names devices: judged against a complete, valid list only.
    if let Some(error) = ConfigError::combine(errors) {
        return Err(error);
    }
    let mqtt = match &raw.mqtt {
        Some(block) => Some(mqtt::resolve_mqtt(block, &devices, src)?),
        None => match mqtt::empty_block(src) {
            Some(error) => return Err(error),
            None => None,
        },
    };
    Ok(Config { defaults, devices, mqtt })
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
pub(super) const TIMEOUT_RANGE: (Duration, Duration) = (Duration::from_millis(1), Duration::from_secs(60));
const GAP_RANGE: (Duration, Duration) = (Duration::ZERO, Duration::from_secs(10));
const MAX_AGE_RANGE: (Duration, Duration) = (Duration::ZERO, Duration::from_secs(3600));
const STALE_RANGE: (Duration, Duration) = (Duration::from_secs(1), Duration::from_secs(86_400));
/// More retries than this only make a dead device hold the bus longer.
const MAX_RETRIES: u32 = 10;

pub(super) fn duration(
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

pub(super) fn retries(value: &Spanned<String>, path: &str, src: &Source<'_>) -> Result<u32, ConfigError> {
    match value.value.trim().parse::<u32>() {
        Ok(n) if n <= MAX_RETRIES => Ok(n),
        _ => Err(src.at_value(value, path, format!("{} is not a number of retries 0–{MAX_RETRIES}", src.quote(value)))),
    }
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
    if matches!(inner, E::Budget { .. }) {
        let message = budget_message(inner);
        return ConfigError::Invalid(Located {
            file: file.to_owned(),
            line: at.line,
            column: at.column,
            path: String::new(),
            message,
        });
    }
    let index = PathIndex::build(text);
    // The parser's own complaints about structure land on the key before a mis-indented line: name the line.
    if matches!(inner, E::ExternalMessage { .. } | E::Message { .. })
        && let Some(found) = super::indent::find(text, at.line, &index)
    {
        let Position { line, column } = found.at;
        return ConfigError::Invalid(Located {
            file: file.to_owned(),
            line,
            column,
            path: found.path,
            message: found.message,
        });
    }
    let path = index.path_at(at);
    let message = match inner {
        E::SerdeUnknownField { field, expected, .. } => {
            format!("unknown key {field:?}; expected one of: {}", expected.join(", "))
        }
        E::SerdeInvalidType { unexpected, expected, .. } => {
            format!("expected {}, found {unexpected}", friendly_expected(expected))
        }
        E::Unexpected { expected, .. } => format!("expected {}", friendly_expected(expected)),
        E::DuplicateMappingKey { .. } => "this key is given twice".to_owned(),
        other => sanitize(&serde_saphyr::UserMessageFormatter.format_message(other)),
    };
    ConfigError::Invalid(Located { file: file.to_owned(), line: at.line, column: at.column, path, message })
}

/// At most this many stage-one mistakes are reported in one run.
const MAX_REPORTED: usize = 20;

/// Stage one failed: every independent mistake of the kind serde stops at (an unknown key, a value of the wrong
/// type, a key given twice), each located as [`deserialize_error`] does. serde stops at the first; the entry at
/// fault is blanked out (spaces, so every position stays) and the text parsed again, for as long as the next
/// mistake is of that kind and not on a blanked line (which would make it a consequence of the blanking).
pub(crate) fn stage_one_errors(first: &serde_saphyr::Error, text: &str, file: &Path) -> ConfigError {
    let mut errors = vec![deserialize_error(first, text, file)];
    let mut continuable = is_entry_mistake(first);
    let mut current = text.to_owned();
    let mut blanked: Vec<u64> = Vec::new();
    while continuable && errors.len() < MAX_REPORTED {
        let Some(last) = errors.last().and_then(ConfigError::located) else { break };
        let here = Position { line: last.line, column: last.column };
        let index = PathIndex::build(&current);
        let entry =
            blank_entry(&current, here).or_else(|| index.key(&last.path).and_then(|at| blank_entry(&current, at)));
        let Some((next, lines)) = entry else { break };
        blanked.extend(lines);
        current = next;
        let Err(error) = serde_saphyr::from_str_with_options::<super::RawConfig>(&current, super::options()) else {
            break;
        };
        continuable = is_entry_mistake(&error);
        let located = deserialize_error(&error, &current, file);
        match located.located() {
            Some(l) if continuable && !blanked.contains(&l.line) => errors.push(located),
            _ => break,
        }
    }
    ConfigError::combine(errors).unwrap_or_else(|| deserialize_error(first, text, file))
}

/// The mistakes that concern one entry and leave the rest of the file readable.
fn is_entry_mistake(error: &serde_saphyr::Error) -> bool {
    use serde_saphyr::Error as E;
    let mut inner = error;
    while let E::AliasError { error, .. } | E::WithSnippet { error, .. } = inner {
        inner = error;
    }
    matches!(
        inner,
        E::SerdeUnknownField { .. } | E::SerdeInvalidType { .. } | E::Unexpected { .. } | E::DuplicateMappingKey { .. }
    )
}

/// `text` with the block-style entry whose key starts `at` replaced by spaces (the key, its value and the lines
/// nested under it), and the lines touched; `None` when no block-style key starts there (a flow mapping).
fn blank_entry(text: &str, at: Position) -> Option<(String, Vec<u64>)> {
    let mut lines: Vec<String> = text.split('\n').map(str::to_owned).collect();
    let first = usize::try_from(at.line).ok()?.checked_sub(1)?;
    let column = usize::try_from(at.column).ok()?.checked_sub(1)?;
    let line = lines.get(first)?;
    let prefix = line.get(..column)?;
    let rest = line.get(column..)?;
    // A key in block style: only indentation (and a list item's dash) before it, and a colon after it.
    if !prefix.trim_start_matches(' ').trim_start_matches('-').trim_start_matches(' ').is_empty()
        || rest.is_empty()
        || rest.starts_with([' ', '#', '-', '{', '['])
        || !rest.contains(':')
    {
        return None;
    }
    let opens_block = rest.split_once(':').is_some_and(|(_, after)| {
        let after = after.trim();
        after.is_empty() || after.starts_with('#')
    });
    let blank = |s: &str| " ".repeat(s.chars().count());
    let new_first = format!("{prefix}{}", blank(rest));
    let mut touched = vec![at.line];
    if let Some(l) = lines.get_mut(first) {
        *l = new_first;
    }
    for (i, line) in lines.iter_mut().enumerate().skip(first + 1) {
        let body = line.trim_start_matches(' ');
        let indent = line.len() - body.len();
        let nested = body.trim().is_empty()
            || indent > column
            // A list may sit at its key's own indentation.
            || (opens_block && indent == column && (body == "-" || body.starts_with("- ")));
        if !nested {
            break;
        }
        *line = blank(line);
        touched.push(i as u64 + 1);
    }
    Some((lines.join("\n"), touched))
}

/// Why a file that broke the parser's budget was refused.
fn budget_message(error: &serde_saphyr::Error) -> String {
    match error {
        serde_saphyr::Error::Budget { breach: BudgetBreach::Documents { .. }, .. } => {
            "more than one YAML document (---): a configuration is one document".to_owned()
        }
        serde_saphyr::Error::Budget { breach, .. } => {
            format!("too large or too complex for a configuration file ({breach:?})")
        }
        other => sanitize(&serde_saphyr::UserMessageFormatter.format_message(other)),
    }
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
}
