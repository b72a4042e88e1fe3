//! The `native` layout (placeholder until it is written: publishes nothing).

use super::{DeviceView, Message};
use crate::config::mqtt::MqttConfig;

/// The exporter's birth message (the will is the same topic with `offline`), if this layout has one.
#[must_use]
pub fn birth(_config: &MqttConfig) -> Option<Message> {
    None
}

/// The last will, published by the broker when the exporter vanishes.
#[must_use]
pub fn will(_config: &MqttConfig) -> Option<Message> {
    None
}

/// State messages of one device for one publish interval (availability included where the layout has it).
#[must_use]
pub fn state(_config: &MqttConfig, _device: &DeviceView<'_>) -> Vec<Message> {
    Vec::new()
}

/// Home Assistant discovery configs of one device (retained).
#[must_use]
pub fn discovery(_config: &MqttConfig, _device: &DeviceView<'_>) -> Vec<Message> {
    Vec::new()
}
