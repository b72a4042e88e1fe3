//! The `mqtt:` block, resolved: broker address and credentials, topic layout, Home Assistant discovery and the
//! opt-in control switches. Parsing and validation of the raw block live here too.

use std::path::PathBuf;
use std::time::Duration;

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
