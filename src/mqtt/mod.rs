//! MQTT publishing: the layouts turn what the bus workers know into messages (pure), the publisher task sends
//! them to a broker and handles Home Assistant's birth messages and the opt-in control commands.

use crate::model::DeviceSnapshot;
use crate::model::energy::PackEnergy;
use crate::protocol::Protocol;

pub mod connect;

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
