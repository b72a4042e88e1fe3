//! The `/metrics` body: every family of DESIGN.md §5 rendered as OpenMetrics text from the bus workers' device
//! statuses, through prometheus-client's `Collector` API ([`collector`]), with the family table in [`names`].
//!
//! Pure: the caller gathers the statuses (and decides freshness from its clock); rendering only formats them.
//! Health series (`bms_up`, poll timing and counters, `bms_device_info`) are present for every configured
//! device; value series for the values the caller passes (each field's last good value until `stale_after`).

mod collector;
pub mod names;

use prometheus_client::registry::Registry;

use crate::model::DeviceSnapshot;
use crate::poller::DeviceStatus;
use crate::protocol::Protocol;

/// The `Content-Type` of the body. Served as `text/plain`, Prometheus rejects the `info` type (ECOSYSTEM.md §4).
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// One configured device as a scrape sees it.
#[derive(Debug, Clone, Copy)]
pub struct DeviceView<'a> {
    /// The configured name (the `device` label).
    pub name: &'a str,
    /// Its protocol (the `protocol` label of `bms_device_info`).
    pub protocol: Protocol,
    /// How it is reached: "serial", "tcp" or "bluetooth" (the `transport` label).
    pub transport: &'static str,
    /// The latest status; `None` until its first poll has ended.
    pub status: Option<&'a DeviceStatus>,
    /// Whether its last successful poll is within `stale_after` (with a successful last poll: `bms_up`).
    pub fresh: bool,
    /// The values to render: each field's last good value while younger than `stale_after`.
    pub values: Option<&'a DeviceSnapshot>,
}

/// The MQTT publisher's health, when `mqtt:` is configured (the `bms_mqtt_*` families).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct MqttView {
    /// Whether the broker connection is up.
    pub connected: bool,
    /// Messages handed to the broker connection since start.
    pub messages_published: u64,
    /// Their payload bytes.
    pub publish_bytes: u64,
    /// Failed connection attempts and lost connections since start.
    pub connection_errors: u64,
    /// Unix time of the last message handed to the broker connection, if any.
    pub last_publish_unix: Option<f64>,
    /// Control commands handled, per result in the order of [`names::MQTT_COMMAND_RESULTS`].
    pub commands: [u64; names::MQTT_COMMAND_RESULTS.len()],
}

/// The state of configuration reloads (the [`names::RELOAD`] families), when serving a configuration file.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ReloadView {
    /// Whether the last attempt to load the file succeeded.
    pub successful: bool,
    /// Unix time of the last successful load.
    pub last_success_unix: f64,
}

/// Append the whole body for `devices` (in their order) to `out`; it ends with `# EOF`.
pub fn render(devices: &[DeviceView<'_>], out: &mut String) -> std::fmt::Result {
    render_with(devices, None, out)
}

/// [`render`], plus the MQTT publisher's families ([`names::MQTT`]) when `mqtt` is given.
pub fn render_with(devices: &[DeviceView<'_>], mqtt: Option<&MqttView>, out: &mut String) -> std::fmt::Result {
    render_all(devices, mqtt, None, out)
}

/// [`render_with`], plus the configuration reload families ([`names::RELOAD`]) when `reload` is given.
pub fn render_all(
    devices: &[DeviceView<'_>],
    mqtt: Option<&MqttView>,
    reload: Option<&ReloadView>,
    out: &mut String,
) -> std::fmt::Result {
    // No prefix: the collector writes full `bms_` names, and a registry prefix would double them.
    let mut registry = Registry::default();
    registry.register_collector(Box::new(collector::Scrape::new(devices, mqtt.copied()).with_reload(reload.copied())));
    prometheus_client::encoding::text::encode(out, &registry)
}
