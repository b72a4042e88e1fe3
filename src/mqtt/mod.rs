//! MQTT publishing: the layouts turn what the bus workers know into messages (pure), the publisher task sends
//! them to a broker and handles Home Assistant's birth messages and the opt-in control commands.

use crate::model::DeviceSnapshot;
use crate::model::energy::PackEnergy;
use crate::protocol::Protocol;

pub mod connect;
pub mod publisher;

pub use publisher::{MqttStats, Publisher};

/// One MQTT message to publish.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// Full topic.
    pub topic: String,
    /// Payload text (JSON or a plain value); empty with `retain` removes a retained message.
    pub payload: String,
    /// Whether the broker keeps it for later subscribers.
    pub retain: bool,
}

impl Message {
    /// A message that is not retained.
    #[must_use]
    pub fn new(topic: impl Into<String>, payload: impl Into<String>) -> Self {
        Self { topic: topic.into(), payload: payload.into(), retain: false }
    }

    /// A retained message.
    #[must_use]
    pub fn retained(topic: impl Into<String>, payload: impl Into<String>) -> Self {
        Self { topic: topic.into(), payload: payload.into(), retain: true }
    }
}

/// What a layout needs to know about one device at publish time.
#[derive(Debug, Clone, Copy)]
pub struct DeviceView<'a> {
    /// The configured name (the `device` label).
    pub name: &'a str,
    /// The protocol it speaks.
    pub protocol: Protocol,
    /// `bms_up`: its latest poll succeeded and is younger than `stale_after`.
    pub up: bool,
    /// Its last good values younger than `stale_after` (what `/metrics` serves).
    pub values: &'a DeviceSnapshot,
    /// Energy totals per pack, where the exporter integrated them.
    pub energy: &'a [PackEnergy],
}

pub mod bmspace;
pub mod cleanup;
pub mod control;
pub mod daly_cli;
pub mod native;
pub mod once;
pub mod python;

use crate::config::mqtt::{Layout, MqttConfig};

/// The exporter's birth message in the configured layout.
#[must_use]
pub fn birth(config: &MqttConfig) -> Option<Message> {
    match config.layout {
        Layout::Native => native::birth(config),
        Layout::DalyBmsCli => daly_cli::birth(config),
        Layout::Bmspace => bmspace::birth(config),
    }
}

/// The last will in the configured layout.
#[must_use]
pub fn will(config: &MqttConfig) -> Option<Message> {
    match config.layout {
        Layout::Native => native::will(config),
        Layout::DalyBmsCli => daly_cli::will(config),
        Layout::Bmspace => bmspace::will(config),
    }
}

/// One device's state messages in the configured layout.
#[must_use]
pub fn state(config: &MqttConfig, device: &DeviceView<'_>) -> Vec<Message> {
    match config.layout {
        Layout::Native => native::state(config, device),
        Layout::DalyBmsCli => daly_cli::state(config, device),
        Layout::Bmspace => bmspace::state(config, device),
    }
}

/// Discovery of the exporter's own Home Assistant device (native layout, discovery on): published once per
/// connection, before the devices' configs, because every pack device names it as `via_device`.
#[must_use]
pub fn exporter_discovery(config: &MqttConfig) -> Vec<Message> {
    if config.discovery.enabled && config.layout == Layout::Native {
        vec![native::discovery::bridge_config(config)]
    } else {
        Vec::new()
    }
}

/// One device's discovery configs in the configured layout (empty when discovery is off).
#[must_use]
pub fn discovery(config: &MqttConfig, device: &DeviceView<'_>) -> Vec<Message> {
    if !config.discovery.enabled {
        return Vec::new();
    }
    match config.layout {
        Layout::Native => native::discovery(config, device),
        Layout::DalyBmsCli => daly_cli::discovery(config, device),
        Layout::Bmspace => bmspace::discovery(config, device),
    }
}
