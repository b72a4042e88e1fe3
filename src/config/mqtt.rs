//! The `mqtt:` block: the raw keys as written (`RawMqtt`), their validation, and the resolved [`MqttConfig`]
//! (broker address and credentials, topic layout, Home Assistant discovery, the opt-in control switches). Like
//! the rest of the configuration, every mistake is one located [`ConfigError`]. Nothing is opened or connected
//! here, not even the password file: `config check` must be safe to run anywhere, so the publisher reads that
//! file at start-up. The one thing asked of the system is the host name, for the default client id.

use std::fmt;
use std::net::Ipv6Addr;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;
use serde::de::IgnoredAny;
use serde_saphyr::Spanned;

use super::ConfigError;
use super::locate::{Position, join};
use super::resolve::{DeviceConfig, Source, duration};

/// Where the broker is and how to reach it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Broker {
    /// `mqtts://`: TLS to the broker.
    pub tls: bool,
    /// Host name or address.
    pub host: String,
    /// TCP port (default 1883, or 8883 with TLS).
    pub port: u16,
}

impl fmt::Display for Broker {
    /// The broker as a URL, port always written: `mqtts://[fe80::1]:8883`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let scheme = if self.tls { "mqtts" } else { "mqtt" };
        if self.host.contains(':') {
            write!(f, "{scheme}://[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{scheme}://{}:{}", self.host, self.port)
        }
    }
}

/// Which topic tree and discovery payloads are published.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// This project's tree: one JSON state message per pack, per-entity discovery.
    Native,
    /// The topics and discovery of python-daly-bms 0.5.0 `daly-bms-cli --mqtt [--mqtt-hass]`.
    DalyBmsCli,
    /// The topics and discovery of the bmspace 2.x Home Assistant add-on (Pace).
    Bmspace,
}

impl Layout {
    /// The name used in the configuration.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Native => "native",
            Self::DalyBmsCli => "daly-bms-cli",
            Self::Bmspace => "bmspace",
        }
    }
}

/// Home Assistant discovery settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Discovery {
    /// Whether discovery configs are published.
    pub enabled: bool,
    /// The discovery prefix Home Assistant listens on (default `homeassistant`).
    pub prefix: String,
}

/// TLS material for `mqtts://` brokers.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MqttTls {
    /// CA certificate(s) that sign the broker's certificate (PEM); the system roots when absent.
    pub ca_file: Option<PathBuf>,
    /// Client certificate chain (PEM), for brokers that require one.
    pub cert_file: Option<PathBuf>,
    /// The client certificate's private key (PEM).
    pub key_file: Option<PathBuf>,
}

/// The whole `mqtt:` block with every default filled in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MqttConfig {
    /// The broker.
    pub broker: Broker,
    /// MQTT client id (default `bms_exporter-<hostname>`).
    pub client_id: String,
    /// User name, if the broker asks for one.
    pub username: Option<String>,
    /// File holding the password (first line, trailing newline dropped).
    pub password_file: Option<PathBuf>,
    /// TLS material (used only with `mqtts://`).
    pub tls: MqttTls,
    /// State topics live under `<topic_prefix>/` (default `bms`; for the compatibility layouts, their base
    /// topic: `daly_bms` and `bmspace` by default).
    pub topic_prefix: String,
    /// How often every device is published (default 10 s).
    pub interval: Duration,
    /// QoS of published messages, 0 or 1 (default 1).
    pub qos: u8,
    /// The topic tree.
    pub layout: Layout,
    /// Home Assistant discovery.
    pub discovery: Discovery,
    /// Opt-in: Home Assistant switches for the Daly MOSFETs.
    pub control: bool,
    /// bmspace layout: digits of cell numbers in topics (0 = as is, 2 = `cell_01`).
    pub zero_pad_number_cells: u8,
    /// bmspace layout: digits of pack numbers in topics (0 = as is, 2 = `pack_01`).
    pub zero_pad_number_packs: u8,
}

impl MqttConfig {
    /// What a block holding only `broker:` and `layout:` gives (with this client id): every other key at its
    /// documented default. For code that builds a configuration itself (`read --mqtt`, tests).
    #[must_use]
    pub fn with_defaults(broker: Broker, client_id: &str, layout: Layout) -> Self {
        Self {
            broker,
            client_id: client_id.to_owned(),
            username: None,
            password_file: None,
            tls: MqttTls::default(),
            topic_prefix: layout.default_topic_prefix().to_owned(),
            interval: DEFAULT_INTERVAL,
            qos: DEFAULT_QOS,
            layout,
            discovery: Discovery { enabled: true, prefix: DEFAULT_DISCOVERY_PREFIX.to_owned() },
            control: false,
            zero_pad_number_cells: 0,
            zero_pad_number_packs: 0,
        }
    }
}

impl Layout {
    /// The default `topic_prefix`: each compatibility layout's own default base topic, so its users' topics
    /// stay where their Home Assistant expects them.
    #[must_use]
    pub fn default_topic_prefix(self) -> &'static str {
        match self {
            Self::Native => "bms",
            Self::DalyBmsCli => "daly_bms",
            Self::Bmspace => "bmspace",
        }
    }
}

/// The `mqtt:` block as written; every value is checked in [`resolve_mqtt`].
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawMqtt {
    /// `mqtt://host[:port]` or `mqtts://host[:port]` (required).
    pub(crate) broker: Option<Spanned<String>>,
    /// MQTT client id (default `bms_exporter-<hostname>`).
    pub(crate) client_id: Option<Spanned<String>>,
    /// User name for the broker.
    pub(crate) username: Option<Spanned<String>>,
    /// Recognised only so the error can say to use `password_file` instead.
    pub(crate) password: Option<Spanned<IgnoredAny>>,
    /// File holding the password.
    pub(crate) password_file: Option<Spanned<String>>,
    /// CA certificate(s) for `mqtts://`.
    pub(crate) ca_file: Option<Spanned<String>>,
    /// Client certificate for `mqtts://`.
    pub(crate) cert_file: Option<Spanned<String>>,
    /// The client certificate's key.
    pub(crate) key_file: Option<Spanned<String>>,
    /// Base of every state topic (default by layout).
    pub(crate) topic_prefix: Option<Spanned<String>>,
    /// Publish interval (duration, default 10s).
    pub(crate) interval: Option<Spanned<String>>,
    /// 0 or 1 (default 1).
    pub(crate) qos: Option<Spanned<String>>,
    /// native, daly-bms-cli or bmspace (default native).
    pub(crate) layout: Option<Spanned<String>>,
    /// Home Assistant discovery.
    pub(crate) discovery: Option<Spanned<RawDiscovery>>,
    /// Home Assistant switches for the MOSFETs (default false).
    pub(crate) control: Option<Spanned<bool>>,
    /// bmspace layout: digits of cell numbers (0–3, default 0).
    pub(crate) zero_pad_number_cells: Option<Spanned<String>>,
    /// bmspace layout: digits of pack numbers (0–3, default 0).
    pub(crate) zero_pad_number_packs: Option<Spanned<String>>,
}

/// The `mqtt.discovery:` block as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawDiscovery {
    /// Whether discovery configs are published (default true).
    pub(crate) enabled: Option<Spanned<bool>>,
    /// Home Assistant's discovery prefix (default `homeassistant`).
    pub(crate) prefix: Option<Spanned<String>>,
}

/// How often every device is published unless `interval` says otherwise.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(10);
/// Default `qos`: at least once, so a state or discovery message is not lost on a busy broker.
const DEFAULT_QOS: u8 = 1;
/// Default `discovery.prefix`: the one Home Assistant listens on unless told otherwise.
const DEFAULT_DISCOVERY_PREFIX: &str = "homeassistant";
/// Accepted intervals: below a second a bus could not keep up, above an hour Home Assistant shows stale values.
const INTERVAL_RANGE: (Duration, Duration) = (Duration::from_secs(1), Duration::from_secs(3600));
/// Longest client id: MQTT 3.1.1 brokers must accept 23 characters and common ones take far more; 64 leaves
/// room for a host name while keeping ids readable in broker logs.
const MAX_CLIENT_ID_CHARS: usize = 64;
/// Longest topic prefix: device and field levels still fit far below MQTT's 65,535-byte topic limit.
const MAX_TOPIC_BYTES: usize = 1024;
/// Most digits a zero-padded cell or pack number gets (bmspace offers 0 and 2; 3 covers 100+ cells).
const MAX_PAD: u8 = 3;
/// The client id without a host name, and the prefix of the default one.
const CLIENT_ID_BASE: &str = "bms_exporter";

/// The `mqtt:` block, checked and with every default filled in; `devices` are the configured devices.
pub(super) fn resolve_mqtt(
    block: &Spanned<RawMqtt>,
    devices: &[DeviceConfig],
    src: &Source<'_>,
) -> Result<MqttConfig, ConfigError> {
    let raw = &block.value;
    // `password:` with no value parses as no key at all, so the index is asked as well.
    let password_at = raw.password.as_ref().map(|p| src.key_position(p, &path("password")));
    if let Some(at) = password_at.or_else(|| src.index.key(&path("password"))) {
        return Err(src.error(
            at,
            &path("password"),
            "no inline password: a configuration file is often world-readable; put the password in a file only \
             the exporter can read and name it with password_file:",
        ));
    }
    let Some(broker_text) = &raw.broker else {
        return Err(src.at_key(block, "mqtt", "no broker: add broker: mqtt://HOST[:PORT] or mqtts://HOST[:PORT]"));
    };
    let broker = parse_broker(broker_text.value.trim()).map_err(|problem| {
        src.at_value(broker_text, &path("broker"), format!("{} is not a broker URL: {problem}", src.quote(broker_text)))
    })?;
    let client_id = match &raw.client_id {
        Some(id) => client_id(id, src)?,
        None => default_client_id(hostname().as_deref()),
    };
    let (username, password_file) = credentials(raw, src)?;
    let tls = tls(raw, &broker, src)?;
    let layout = layout(raw.layout.as_ref(), src)?;
    let topic_prefix = match &raw.topic_prefix {
        Some(v) => topic(v, &path("topic_prefix"), src)?,
        None => layout.default_topic_prefix().to_owned(),
    };
    one_device_per_base_topic(raw.layout.as_ref(), layout, &topic_prefix, devices, src)?;
    let interval = match &raw.interval {
        Some(v) => duration(v, &path("interval"), INTERVAL_RANGE, src)?,
        None => DEFAULT_INTERVAL,
    };
    let qos = match &raw.qos {
        Some(v) => qos(v, src)?,
        None => DEFAULT_QOS,
    };
    let raw_discovery = raw.discovery.as_ref().map(|d| &d.value);
    let discovery = Discovery {
        enabled: raw_discovery.and_then(|d| d.enabled.as_ref()).is_none_or(|e| e.value),
        prefix: match raw_discovery.and_then(|d| d.prefix.as_ref()) {
            Some(v) => topic(v, &path("discovery.prefix"), src)?,
            None => DEFAULT_DISCOVERY_PREFIX.to_owned(),
        },
    };
    let control = match &raw.control {
        Some(v) if v.value && layout != Layout::Native => {
            return Err(src.at_value(
                v,
                &path("control"),
                format!(
                    "control: true needs layout: native (the switches exist only in the native layout), and the \
                     layout is {}",
                    layout.as_str()
                ),
            ));
        }
        Some(v) => v.value,
        None => false,
    };
    Ok(MqttConfig {
        broker,
        client_id,
        username,
        password_file,
        tls,
        topic_prefix,
        interval,
        qos,
        layout,
        discovery,
        control,
        zero_pad_number_cells: zero_pad(raw.zero_pad_number_cells.as_ref(), "zero_pad_number_cells", layout, src)?,
        zero_pad_number_packs: zero_pad(raw.zero_pad_number_packs.as_ref(), "zero_pad_number_packs", layout, src)?,
    })
}

/// `mqtt.KEY`.
fn path(key: &str) -> String {
    join("mqtt", key)
}

/// A written client id: 1–64 characters, none of them control characters.
fn client_id(id: &Spanned<String>, src: &Source<'_>) -> Result<String, ConfigError> {
    let chars = id.value.chars().count();
    if chars == 0 || chars > MAX_CLIENT_ID_CHARS || id.value.chars().any(char::is_control) {
        return Err(src.at_value(
            id,
            &path("client_id"),
            format!(
                "{} is not a client id: use 1–{MAX_CLIENT_ID_CHARS} characters without control characters",
                src.quote(id)
            ),
        ));
    }
    Ok(id.value.clone())
}

/// The user name and password file; the file is only named here, never read.
fn credentials(raw: &RawMqtt, src: &Source<'_>) -> Result<(Option<String>, Option<PathBuf>), ConfigError> {
    let username = match &raw.username {
        Some(user) if user.value.is_empty() || user.value.chars().any(char::is_control) => {
            return Err(src.at_value(
                user,
                &path("username"),
                format!("{} is not a user name: give a non-empty name without control characters", src.quote(user)),
            ));
        }
        Some(user) => Some(user.value.clone()),
        None => None,
    };
    let password_file = file_path(raw.password_file.as_ref(), &path("password_file"), src)?;
    if let (Some(file), None) = (&raw.password_file, &username) {
        return Err(src.at_key(
            file,
            &path("password_file"),
            "password_file without username: a broker takes a password only with a user name; add username:",
        ));
    }
    Ok((username, password_file))
}

/// The TLS files: only with `mqtts://`, and a client certificate only with its key.
fn tls(raw: &RawMqtt, broker: &Broker, src: &Source<'_>) -> Result<MqttTls, ConfigError> {
    let files = [("ca_file", &raw.ca_file), ("cert_file", &raw.cert_file), ("key_file", &raw.key_file)];
    if !broker.tls
        && let Some((key, v)) = files.iter().find_map(|(key, v)| v.as_ref().map(|v| (key, v)))
    {
        return Err(src.at_key(
            v,
            &path(key),
            format!("{key} applies to TLS only, and the broker is mqtt://; write mqtts:// to use TLS"),
        ));
    }
    match (&raw.cert_file, &raw.key_file) {
        (Some(cert), None) => {
            return Err(src.at_key(
                cert,
                &path("cert_file"),
                "cert_file needs key_file: a client certificate goes with its key",
            ));
        }
        (None, Some(key)) => {
            return Err(src.at_key(
                key,
                &path("key_file"),
                "key_file needs cert_file: a client key goes with its certificate",
            ));
        }
        _ => {}
    }
    Ok(MqttTls {
        ca_file: file_path(raw.ca_file.as_ref(), &path("ca_file"), src)?,
        cert_file: file_path(raw.cert_file.as_ref(), &path("cert_file"), src)?,
        key_file: file_path(raw.key_file.as_ref(), &path("key_file"), src)?,
    })
}

/// The layout (default native).
fn layout(value: Option<&Spanned<String>>, src: &Source<'_>) -> Result<Layout, ConfigError> {
    let Some(v) = value else { return Ok(Layout::Native) };
    match v.value.as_str() {
        "native" => Ok(Layout::Native),
        "daly-bms-cli" => Ok(Layout::DalyBmsCli),
        "bmspace" => Ok(Layout::Bmspace),
        _ => Err(src.at_value(v, &path("layout"), format!("{} is not native, daly-bms-cli or bmspace", src.quote(v)))),
    }
}

/// The compatibility layouts publish every device at the same topics below one base topic (the tools they copy
/// know one BMS), so a second device would overwrite the first one's values message by message: refused, at the
/// layout that says so.
fn one_device_per_base_topic(
    value: Option<&Spanned<String>>,
    layout: Layout,
    topic_prefix: &str,
    devices: &[DeviceConfig],
    src: &Source<'_>,
) -> Result<(), ConfigError> {
    let (Some(v), [_, _, ..]) = (value, devices) else { return Ok(()) };
    if layout == Layout::Native {
        return Ok(());
    }
    let names: Vec<&str> = devices.iter().map(|d| d.name.as_str()).collect();
    Err(src.at_value(
        v,
        &path("layout"),
        format!(
            "{} publishes every device at the same topics below {topic_prefix}, so the {} configured devices ({}) \
             would overwrite each other's values: use layout: native, or one exporter per device",
            layout.as_str(),
            names.len(),
            names.join(", ")
        ),
    ))
}

/// QoS 0 or 1; 2 is refused by name, since a user may well expect it to work.
fn qos(v: &Spanned<String>, src: &Source<'_>) -> Result<u8, ConfigError> {
    match v.value.trim() {
        "0" => Ok(0),
        "1" => Ok(1),
        "2" => Err(src.at_value(
            v,
            &path("qos"),
            "QoS 2 is not supported: use 1 (at least once; the default) or 0 (at most once)",
        )),
        _ => Err(src.at_value(v, &path("qos"), format!("{} is not a QoS level: use 0 or 1", src.quote(v)))),
    }
}

/// `mqtt://host[:port]` or `mqtts://host[:port]`, IPv6 in brackets; the problem otherwise. The config's `broker:`
/// and `read --mqtt URL` both parse with this, so one URL means the same broker everywhere.
pub fn parse_broker(text: &str) -> Result<Broker, String> {
    let Some((scheme, rest)) = text.split_once("://") else {
        return Err("write mqtt://HOST[:PORT] or mqtts://HOST[:PORT]".to_owned());
    };
    // Schemes are case-insensitive (RFC 3986), so MQTT:// is the same URL.
    let (tls, default_port) = match scheme.to_ascii_lowercase().as_str() {
        "mqtt" => (false, 1883),
        "mqtts" => (true, 8883),
        _ => return Err(format!("the scheme {scheme}:// is not mqtt:// or mqtts:// (TLS)")),
    };
    if let Some(at) = rest.find(['/', '?', '#']) {
        return Err(format!(
            "a broker URL has no path, query or fragment ({}); write {scheme}://HOST[:PORT]",
            rest.get(at..).unwrap_or_default()
        ));
    }
    if rest.contains('@') {
        return Err("credentials do not belong in the URL: use username: and password_file:".to_owned());
    }
    let (host, port) = if let Some(v6) = rest.strip_prefix('[') {
        let Some((inner, after)) = v6.split_once(']') else {
            return Err("the IPv6 address has no closing ]".to_owned());
        };
        if inner.parse::<Ipv6Addr>().is_err() {
            return Err(format!("[{inner}] is not an IPv6 address"));
        }
        let port = match after {
            "" => None,
            _ => match after.strip_prefix(':') {
                Some(port) => Some(port),
                None => return Err(format!("{after} after the IPv6 address is not :PORT")),
            },
        };
        // Stored bare: the connection resolves (host, port), where brackets would be part of the name.
        (inner, port)
    } else {
        match rest.split_once(':') {
            Some((_, after)) if after.contains(':') => {
                return Err(format!("an IPv6 address goes in brackets: {scheme}://[{rest}]"));
            }
            Some((host, port)) => (host, Some(port)),
            None => (rest, None),
        }
    };
    if host.is_empty() {
        return Err("no host".to_owned());
    }
    let host_ok =
        host.contains(':') || host.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b'_');
    if !host_ok {
        return Err(format!("{host:?} is not a host name or IP address"));
    }
    let port = match port {
        None => default_port,
        Some(p) => match p.parse::<u16>() {
            Ok(n) if n != 0 => n,
            _ => return Err(format!("the port {p:?} is not a number 1–65535")),
        },
    };
    Ok(Broker { tls, host: host.to_owned(), port })
}

/// A bmspace zero padding, 0–3 digits (default 0).
fn zero_pad(value: Option<&Spanned<String>>, key: &str, layout: Layout, src: &Source<'_>) -> Result<u8, ConfigError> {
    let Some(v) = value else { return Ok(0) };
    let path = path(key);
    // Refused rather than ignored: a padding that silently does nothing would look like a bug in the topics.
    if layout != Layout::Bmspace {
        return Err(src.at_key(
            v,
            &path,
            format!("{key} applies to layout: bmspace only, and the layout is {}", layout.as_str()),
        ));
    }
    match v.value.trim().parse::<u8>() {
        Ok(n) if n <= MAX_PAD => Ok(n),
        _ => Err(src.at_value(
            v,
            &path,
            format!("{} is not a number of digits 0–{MAX_PAD} (0 = no padding, 2 = 01)", src.quote(v)),
        )),
    }
}

/// A topic prefix (or discovery prefix): a plain topic a message can be published under.
fn topic(value: &Spanned<String>, path: &str, src: &Source<'_>) -> Result<String, ConfigError> {
    let text = value.value.as_str();
    let problem = if text.is_empty() {
        Some("it is empty".to_owned())
    } else if text.contains(['+', '#']) {
        Some("the wildcards + and # are for subscriptions, not for topics messages are published to".to_owned())
    } else if text.chars().any(char::is_control) {
        // NUL is forbidden by MQTT; other control characters are legal there but never meant.
        Some("it holds a control character".to_owned())
    } else if text.starts_with('$') {
        Some("topics starting with $ are reserved for the broker ($SYS)".to_owned())
    } else if text.starts_with('/') || text.ends_with('/') {
        Some("it starts or ends with /, which makes an empty topic level".to_owned())
    } else if text.contains("//") {
        Some("// makes an empty topic level".to_owned())
    } else if text.len() > MAX_TOPIC_BYTES {
        Some(format!("it is longer than {MAX_TOPIC_BYTES} bytes"))
    } else {
        None
    };
    match problem {
        Some(problem) => {
            Err(src.at_value(value, path, format!("{} is not a topic prefix: {problem}", src.quote(value))))
        }
        None => Ok(text.to_owned()),
    }
}

/// An optional file path, refused when empty.
fn file_path(value: Option<&Spanned<String>>, path: &str, src: &Source<'_>) -> Result<Option<PathBuf>, ConfigError> {
    match value {
        None => Ok(None),
        Some(v) if v.value.trim().is_empty() => Err(src.at_value(v, path, "empty: give the path of a file")),
        Some(v) => Ok(Some(PathBuf::from(&v.value))),
    }
}

/// This machine's host name, if the system tells it.
fn hostname() -> Option<String> {
    nix::unistd::gethostname().ok().and_then(|name| name.into_string().ok())
}

/// `bms_exporter-<hostname>`, cut to the longest client id; `bms_exporter` without a usable host name. The host
/// name keeps two exporters on one broker from sharing an id, which would make the broker drop each in turn.
fn default_client_id(hostname: Option<&str>) -> String {
    let host: String = hostname.unwrap_or_default().chars().filter(|c| !c.is_control() && !c.is_whitespace()).collect();
    if host.is_empty() {
        return CLIENT_ID_BASE.to_owned();
    }
    format!("{CLIENT_ID_BASE}-{host}").chars().take(MAX_CLIENT_ID_CHARS).collect()
}

/// Where the `mqtt` key is, for an empty `mqtt:` block (which parses as no block at all).
pub(super) fn empty_block(src: &Source<'_>) -> Option<ConfigError> {
    let at: Position = src.index.key("mqtt")?;
    Some(src.error(at, "mqtt", "empty: add broker: mqtt://HOST[:PORT], or remove the mqtt: line"))
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    /// One device on lines 1–4, so the `mqtt:` key is on line 5 and its first key on line 6.
    const DEVICES: &str = "devices:\n  - name: house\n    protocol: daly\n    serial: /dev/ttyUSB0\n";

    fn parse(mqtt: &str) -> Result<MqttConfig, ConfigError> {
        let config = crate::config::parse(&format!("{DEVICES}{mqtt}"), Path::new("m.yaml"))?;
        Ok(config.mqtt.expect("an mqtt block"))
    }

    fn ok(mqtt: &str) -> MqttConfig {
        parse(mqtt).unwrap_or_else(|e| panic!("{e}"))
    }

    /// The one-line error of an `mqtt:` block.
    fn error(mqtt: &str) -> String {
        match parse(mqtt) {
            Ok(config) => panic!("accepted: {config:?}"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn a_broker_alone_gets_every_default() {
        let config = ok("mqtt:\n  broker: mqtt://192.168.1.10\n");
        assert_eq!(config.broker, Broker { tls: false, host: "192.168.1.10".to_owned(), port: 1883 });
        assert_eq!(config.client_id, default_client_id(hostname().as_deref()));
        assert!(config.client_id.starts_with("bms_exporter"), "{}", config.client_id);
        assert_eq!((&config.username, &config.password_file), (&None, &None));
        assert_eq!(config.tls, MqttTls::default());
        assert_eq!(config.topic_prefix, "bms");
        assert_eq!(config.interval, Duration::from_secs(10));
        assert_eq!(config.qos, 1);
        assert_eq!(config.layout, Layout::Native);
        assert_eq!(config.discovery, Discovery { enabled: true, prefix: "homeassistant".to_owned() });
        assert!(!config.control);
        assert_eq!((config.zero_pad_number_cells, config.zero_pad_number_packs), (0, 0));
        let built = MqttConfig::with_defaults(config.broker.clone(), &config.client_id, Layout::Native);
        assert_eq!(built, config, "with_defaults is what a bare block parses to");
        for layout in ["daly-bms-cli", "bmspace"] {
            let parsed = ok(&format!("mqtt:\n  broker: mqtt://h\n  client_id: c\n  layout: {layout}\n"));
            assert_eq!(MqttConfig::with_defaults(parsed.broker.clone(), "c", parsed.layout), parsed, "{layout}");
        }
    }

    #[test]
    fn every_key_written_is_taken() {
        let config = ok("\
mqtt:
  broker: mqtts://broker.example.net:8884
  client_id: garage-bms
  username: bms
  password_file: /etc/bms_exporter/mqtt.password
  ca_file: /etc/ssl/ca.pem
  cert_file: client.pem
  key_file: client.key
  topic_prefix: home/battery
  interval: 30s
  qos: 0
  layout: native
  discovery: { enabled: false, prefix: ha/discovery }
  control: true
");
        assert_eq!(config.broker, Broker { tls: true, host: "broker.example.net".to_owned(), port: 8884 });
        assert_eq!(config.client_id, "garage-bms");
        assert_eq!(config.username.as_deref(), Some("bms"));
        assert_eq!(config.password_file, Some(PathBuf::from("/etc/bms_exporter/mqtt.password")));
        assert_eq!(
            config.tls,
            MqttTls {
                ca_file: Some("/etc/ssl/ca.pem".into()),
                cert_file: Some("client.pem".into()),
                key_file: Some("client.key".into())
            }
        );
        assert_eq!(config.topic_prefix, "home/battery");
        assert_eq!(config.interval, Duration::from_secs(30));
        assert_eq!(config.qos, 0);
        assert_eq!(config.discovery, Discovery { enabled: false, prefix: "ha/discovery".to_owned() });
        assert!(config.control);
    }

    #[test]
    fn each_layout_has_its_own_default_topic_prefix_and_bmspace_takes_zero_padding() {
        let daly = ok("mqtt:\n  broker: mqtt://h\n  layout: daly-bms-cli\n");
        assert_eq!((daly.layout, daly.topic_prefix.as_str()), (Layout::DalyBmsCli, "daly_bms"));
        let pace = ok("mqtt:\n  broker: mqtt://h\n  layout: bmspace\n  zero_pad_number_cells: 2\n");
        assert_eq!((pace.layout, pace.topic_prefix.as_str()), (Layout::Bmspace, "bmspace"));
        assert_eq!((pace.zero_pad_number_cells, pace.zero_pad_number_packs), (2, 0));
        let own =
            ok("mqtt:\n  broker: mqtt://h\n  layout: bmspace\n  topic_prefix: pace\n  zero_pad_number_packs: 3\n");
        assert_eq!((own.topic_prefix.as_str(), own.zero_pad_number_packs), ("pace", 3));
    }

    #[test]
    fn broker_urls_take_default_ports_names_and_bracketed_ipv6() {
        for (url, tls, host, port) in [
            ("mqtt://localhost", false, "localhost", 1883),
            ("mqtts://localhost", true, "localhost", 8883),
            ("mqtt://core-mosquitto:1884", false, "core-mosquitto", 1884),
            ("MQTT://my_broker.lan", false, "my_broker.lan", 1883),
            ("mqtt://[fe80::1]", false, "fe80::1", 1883),
            ("mqtts://[::1]:8884", true, "::1", 8884),
        ] {
            assert_eq!(parse_broker(url), Ok(Broker { tls, host: host.to_owned(), port }), "{url}");
            let shown = Broker { tls, host: host.to_owned(), port }.to_string();
            assert_eq!(parse_broker(&shown).map(|b| b.to_string()), Ok(shown.clone()), "{shown}");
        }
        assert_eq!(parse_broker("mqtt://[::1]").unwrap().to_string(), "mqtt://[::1]:1883");
    }

    #[test]
    fn broker_mistakes_are_named() {
        for (url, problem) in [
            ("broker.lan:1883", "write mqtt://HOST[:PORT] or mqtts://HOST[:PORT]"),
            ("tcp://broker.lan", "the scheme tcp:// is not mqtt:// or mqtts:// (TLS)"),
            ("ws://broker.lan/mqtt", "the scheme ws:// is not mqtt:// or mqtts:// (TLS)"),
            ("mqtt://broker.lan/", "a broker URL has no path, query or fragment (/); write mqtt://HOST[:PORT]"),
            ("mqtt://b:1883/x", "a broker URL has no path, query or fragment (/x); write mqtt://HOST[:PORT]"),
            ("mqtt://b?x=1", "a broker URL has no path, query or fragment (?x=1); write mqtt://HOST[:PORT]"),
            ("mqtt://u:p@b", "credentials do not belong in the URL: use username: and password_file:"),
            ("mqtt://", "no host"),
            ("mqtt://:1883", "no host"),
            ("mqtt://b:", "the port \"\" is not a number 1–65535"),
            ("mqtt://b:0", "the port \"0\" is not a number 1–65535"),
            ("mqtt://b:65536", "the port \"65536\" is not a number 1–65535"),
            ("mqtt://b:http", "the port \"http\" is not a number 1–65535"),
            ("mqtt://fe80::1", "an IPv6 address goes in brackets: mqtt://[fe80::1]"),
            ("mqtt://[fe80::1", "the IPv6 address has no closing ]"),
            ("mqtt://[zz]:1", "[zz] is not an IPv6 address"),
            ("mqtt://[::1]x", "x after the IPv6 address is not :PORT"),
            ("mqtt://a b", "\"a b\" is not a host name or IP address"),
        ] {
            assert_eq!(parse_broker(url), Err(problem.to_owned()), "{url}");
        }
    }

    #[test]
    fn a_bad_broker_is_reported_at_its_value() {
        assert_eq!(
            error("mqtt:\n  broker: http://b\n"),
            "m.yaml:6:11: mqtt.broker: \"http://b\" is not a broker URL: the scheme http:// is not mqtt:// or \
             mqtts:// (TLS)"
        );
        assert_eq!(
            error("mqtt:\n  broker: 'mqtt://b:99999'\n"),
            "m.yaml:6:11: mqtt.broker: 'mqtt://b:99999' is not a broker URL: the port \"99999\" is not a number \
             1–65535"
        );
    }

    #[test]
    fn a_block_without_a_broker_or_without_anything_is_refused_at_its_key() {
        assert_eq!(
            error("mqtt:\n  qos: 0\n"),
            "m.yaml:5:1: mqtt: no broker: add broker: mqtt://HOST[:PORT] or mqtts://HOST[:PORT]"
        );
        assert_eq!(
            error("mqtt: {}\n"),
            "m.yaml:5:1: mqtt: no broker: add broker: mqtt://HOST[:PORT] or mqtts://HOST[:PORT]"
        );
        for empty in ["mqtt:\n", "mqtt: ~\n"] {
            assert_eq!(
                error(empty),
                "m.yaml:5:1: mqtt: empty: add broker: mqtt://HOST[:PORT], or remove the mqtt: line",
                "{empty:?}"
            );
        }
    }

    #[test]
    fn an_inline_password_is_refused_with_the_way_to_give_one() {
        let want = "m.yaml:8:3: mqtt.password: no inline password: a configuration file is often world-readable; \
                    put the password in a file only the exporter can read and name it with password_file:";
        assert_eq!(error("mqtt:\n  broker: mqtt://b\n  username: u\n  password: secret\n"), want);
        // Even with no value, and before a missing broker: the key itself is the mistake.
        assert_eq!(error("mqtt:\n  qos: 1\n  username: u\n  password:\n"), want);
    }

    #[test]
    fn credential_and_tls_mistakes_point_at_their_key() {
        assert_eq!(
            error("mqtt:\n  broker: mqtt://b\n  password_file: /p\n"),
            "m.yaml:7:3: mqtt.password_file: password_file without username: a broker takes a password only with \
             a user name; add username:"
        );
        assert_eq!(
            error("mqtt:\n  broker: mqtt://b\n  username: ''\n"),
            "m.yaml:7:13: mqtt.username: '' is not a user name: give a non-empty name without control characters"
        );
        assert_eq!(
            error("mqtt:\n  broker: mqtt://b\n  username: u\n  password_file: ' '\n"),
            "m.yaml:8:18: mqtt.password_file: empty: give the path of a file"
        );
        assert_eq!(
            error("mqtt:\n  broker: mqtt://b\n  ca_file: /ca.pem\n"),
            "m.yaml:7:3: mqtt.ca_file: ca_file applies to TLS only, and the broker is mqtt://; write mqtts:// to \
             use TLS"
        );
        assert_eq!(
            error("mqtt:\n  broker: mqtts://b\n  cert_file: c.pem\n"),
            "m.yaml:7:3: mqtt.cert_file: cert_file needs key_file: a client certificate goes with its key"
        );
        assert_eq!(
            error("mqtt:\n  broker: mqtts://b\n  key_file: c.key\n"),
            "m.yaml:7:3: mqtt.key_file: key_file needs cert_file: a client key goes with its certificate"
        );
    }

    #[test]
    fn client_ids_are_one_to_64_printable_characters_and_default_to_the_host_name() {
        let long = "x".repeat(65);
        assert_eq!(
            error(&format!("mqtt:\n  broker: mqtt://b\n  client_id: {long}\n")),
            format!(
                "m.yaml:7:14: mqtt.client_id: \"{long}\" is not a client id: use 1–64 characters without control \
                 characters"
            )
        );
        assert_eq!(
            error("mqtt:\n  broker: mqtt://b\n  client_id: \"a\\tb\"\n"),
            "m.yaml:7:14: mqtt.client_id: \"a\\tb\" is not a client id: use 1–64 characters without control \
             characters"
        );
        assert_eq!(ok(&format!("mqtt:\n  broker: mqtt://b\n  client_id: {}\n", "x".repeat(64))).client_id.len(), 64);

        assert_eq!(default_client_id(Some("pi")), "bms_exporter-pi");
        assert_eq!(default_client_id(Some("")), "bms_exporter");
        assert_eq!(default_client_id(None), "bms_exporter");
        assert_eq!(default_client_id(Some("a b\n")), "bms_exporter-ab");
        let cut = default_client_id(Some(&"h".repeat(64)));
        assert_eq!(cut.chars().count(), 64);
        assert!(cut.starts_with("bms_exporter-hhh"), "{cut}");
    }

    #[test]
    fn topic_prefixes_are_plain_topics() {
        for (prefix, problem) in [
            ("''", "it is empty"),
            ("bms/+", "the wildcards + and # are for subscriptions, not for topics messages are published to"),
            ("bms/#", "the wildcards + and # are for subscriptions, not for topics messages are published to"),
            ("\"a\\0b\"", "it holds a control character"),
            ("$SYS/bms", "topics starting with $ are reserved for the broker ($SYS)"),
            ("/bms", "it starts or ends with /, which makes an empty topic level"),
            ("bms/", "it starts or ends with /, which makes an empty topic level"),
            ("a//b", "// makes an empty topic level"),
        ] {
            let quoted = if prefix.starts_with(['\'', '"']) { prefix.to_owned() } else { format!("{prefix:?}") };
            assert_eq!(
                error(&format!("mqtt:\n  broker: mqtt://b\n  topic_prefix: {prefix}\n")),
                format!("m.yaml:7:17: mqtt.topic_prefix: {quoted} is not a topic prefix: {problem}"),
                "{prefix}"
            );
        }
        assert_eq!(
            error(&format!("mqtt:\n  broker: mqtt://b\n  topic_prefix: {}\n", "a".repeat(1025))),
            format!(
                "m.yaml:7:17: mqtt.topic_prefix: \"{}\" is not a topic prefix: it is longer than 1024 bytes",
                "a".repeat(1025)
            )
        );
        assert_eq!(
            error("mqtt:\n  broker: mqtt://b\n  discovery:\n    prefix: home/+\n"),
            "m.yaml:8:13: mqtt.discovery.prefix: \"home/+\" is not a topic prefix: the wildcards + and # are for \
             subscriptions, not for topics messages are published to"
        );
        assert_eq!(
            ok("mqtt:\n  broker: mqtt://b\n  topic_prefix: 'home battery/bms'\n").topic_prefix,
            "home battery/bms"
        );
    }

    #[test]
    fn interval_qos_and_layout_mistakes_are_located() {
        assert_eq!(
            error("mqtt:\n  broker: mqtt://b\n  interval: 10\n"),
            "m.yaml:7:13: mqtt.interval: \"10\" is not a duration: write a number and a unit, like 1s, 50ms, 1.5s \
             or 2m"
        );
        assert_eq!(
            error("mqtt:\n  broker: mqtt://b\n  interval: 500ms\n"),
            "m.yaml:7:13: mqtt.interval: \"500ms\" is outside 1s–3600s"
        );
        assert_eq!(
            error("mqtt:\n  broker: mqtt://b\n  interval: 2h\n"),
            "m.yaml:7:13: mqtt.interval: \"2h\" is outside 1s–3600s"
        );
        assert_eq!(ok("mqtt:\n  broker: mqtt://b\n  interval: 1h\n").interval, Duration::from_secs(3600));
        assert_eq!(
            error("mqtt:\n  broker: mqtt://b\n  qos: 2\n"),
            "m.yaml:7:8: mqtt.qos: QoS 2 is not supported: use 1 (at least once; the default) or 0 (at most once)"
        );
        assert_eq!(
            error("mqtt:\n  broker: mqtt://b\n  qos: high\n"),
            "m.yaml:7:8: mqtt.qos: \"high\" is not a QoS level: use 0 or 1"
        );
        assert_eq!(
            error("mqtt:\n  broker: mqtt://b\n  layout: homeassistant\n"),
            "m.yaml:7:11: mqtt.layout: \"homeassistant\" is not native, daly-bms-cli or bmspace"
        );
    }

    #[test]
    fn control_needs_the_native_layout_and_padding_the_bmspace_one() {
        assert_eq!(
            error("mqtt:\n  broker: mqtt://b\n  layout: daly-bms-cli\n  control: true\n"),
            "m.yaml:8:12: mqtt.control: control: true needs layout: native (the switches exist only in the native \
             layout), and the layout is daly-bms-cli"
        );
        assert!(!ok("mqtt:\n  broker: mqtt://b\n  layout: bmspace\n  control: false\n").control);
        assert_eq!(
            error("mqtt:\n  broker: mqtt://b\n  zero_pad_number_cells: 2\n"),
            "m.yaml:7:3: mqtt.zero_pad_number_cells: zero_pad_number_cells applies to layout: bmspace only, and the \
             layout is native"
        );
        assert_eq!(
            error("mqtt:\n  broker: mqtt://b\n  layout: bmspace\n  zero_pad_number_packs: 4\n"),
            "m.yaml:8:26: mqtt.zero_pad_number_packs: \"4\" is not a number of digits 0–3 (0 = no padding, 2 = 01)"
        );
    }

    #[test]
    fn the_compatibility_layouts_take_one_device_and_native_any_number() {
        let two = "devices:\n  - name: house\n    protocol: daly\n    serial: /dev/ttyUSB0\n\
                   \x20 - name: rack\n    protocol: pace\n    tcp: 192.168.1.20:5000\n";
        let parse_two = |mqtt: &str| crate::config::parse(&format!("{two}{mqtt}"), Path::new("m.yaml"));
        for (layout, base) in [("daly-bms-cli", "daly_bms"), ("bmspace", "bmspace")] {
            let error = parse_two(&format!("mqtt:\n  broker: mqtt://b\n  layout: {layout}\n")).unwrap_err();
            assert_eq!(
                error.to_string(),
                format!(
                    "m.yaml:10:11: mqtt.layout: {layout} publishes every device at the same topics below {base}, so \
                     the 2 configured devices (house, rack) would overwrite each other's values: use layout: \
                     native, or one exporter per device"
                )
            );
        }
        let native = parse_two("mqtt:\n  broker: mqtt://b\n  layout: native\n").unwrap();
        assert_eq!(native.mqtt.map(|m| m.layout), Some(Layout::Native));
        // One device with several packs (boards on one bus, a Pace rack) is one tree: accepted.
        assert_eq!(ok("mqtt:\n  broker: mqtt://b\n  layout: bmspace\n").layout, Layout::Bmspace);
    }

    #[test]
    fn unknown_keys_and_wrong_types_are_stage_one_errors_with_their_path() {
        let unknown = error("mqtt:\n  broker: mqtt://b\n  host: b\n");
        assert!(
            unknown.starts_with("m.yaml:7:3: mqtt.host: unknown key \"host\"; expected one of: broker,"),
            "{unknown}"
        );
        let unknown = error("mqtt:\n  broker: mqtt://b\n  discovery: { enable: true }\n");
        assert!(unknown.starts_with("m.yaml:7:16: mqtt.discovery.enable: unknown key \"enable\""), "{unknown}");
        assert_eq!(error("mqtt: mqtt://b\n"), "m.yaml:5:7: mqtt: expected a mapping of keys");
        let not_bool = error("mqtt:\n  broker: mqtt://b\n  control: maybe\n");
        assert!(not_bool.starts_with("m.yaml:7:12: mqtt.control: "), "{not_bool}");
    }
}
