//! Opt-in MQTT control (placeholder until it is written): command topics for the Daly MOSFET switches.

use super::Message;
use crate::config::mqtt::MqttConfig;
use crate::scrape::Scraper;

/// The subscription filter of the command topics, when control is on (`None` when it is off).
#[must_use]
pub fn command_filter(config: &MqttConfig) -> Option<String> {
    config.control.then(|| format!("{}/+/+/+/set", config.topic_prefix))
}

/// Handle one message on a command topic: refuse it with a log line, or run the guarded write through the
/// device's bus worker. Returns messages to publish at once (the device's new state), if any.
#[allow(clippy::unused_async)] // The real handler awaits the bus worker.
pub async fn handle(_config: &MqttConfig, _scraper: &Scraper, topic: &str, _payload: &[u8]) -> Vec<Message> {
    tracing::warn!(topic, "MQTT control is not written yet; command ignored");
    Vec::new()
}
