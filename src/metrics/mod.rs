//! The `/metrics` body: every family of the metric table ([`names`]) rendered as OpenMetrics text from the bus
//! workers' device statuses, through prometheus-client's `Collector` API (`collector.rs`), and rewritten into the
//! Prometheus text format for clients that do not ask for OpenMetrics ([`format`](mod@format)).
//!
//! Pure: the caller gathers the statuses (and decides freshness from its clock) and reads the process figures;
//! rendering only formats them. Health series (`bms_up`, poll timing and counters, `bms_device_info`) are present
//! for every configured device; value series for the values the caller passes (each field's last good value
//! until `stale_after`).

mod collector;
pub mod format;
pub mod names;

use prometheus_client::registry::Registry;

use crate::model::DeviceSnapshot;
use crate::poller::DeviceStatus;
use crate::protocol::Protocol;

pub use format::Format;

/// The `Content-Type` of the OpenMetrics body (the text body's is [`format::TEXT_CONTENT_TYPE`]).
pub const CONTENT_TYPE: &str = format::OPENMETRICS_CONTENT_TYPE;

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

/// The exporter process's own figures (the `process_*` families), each `None` when it could not be read.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct ProcessView {
    /// User plus system CPU time, in seconds.
    pub cpu_seconds: Option<f64>,
    /// Soft limit on open file descriptors.
    pub max_fds: Option<u64>,
    /// Open file descriptors.
    pub open_fds: Option<u64>,
    /// Resident memory, in bytes.
    pub resident_memory_bytes: Option<u64>,
    /// Unix time the process started.
    pub start_time_seconds: Option<f64>,
    /// Virtual memory size, in bytes.
    pub virtual_memory_bytes: Option<u64>,
    /// Soft limit on the virtual memory size, in bytes (`u64::MAX` when unlimited).
    pub virtual_memory_max_bytes: Option<u64>,
}

/// What a body carries besides the devices: the exporter's own health.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct ExporterView {
    /// The MQTT publisher's health, when `mqtt:` is configured (the `bms_mqtt_*` families).
    pub mqtt: Option<MqttView>,
    /// The configuration reloads' state, when serving a configuration file (the [`names::RELOAD`] families).
    pub reload: Option<ReloadView>,
    /// The process's figures, when the families are wanted (the `process_*` families).
    pub process: Option<ProcessView>,
}

/// Append the whole OpenMetrics body for `devices` (in their order) to `out`; it ends with `# EOF`.
pub fn render(devices: &[DeviceView<'_>], out: &mut String) -> std::fmt::Result {
    render_with(devices, None, out)
}

/// [`render`], plus the MQTT publisher's families ([`names::MQTT`]) when `mqtt` is given.
pub fn render_with(devices: &[DeviceView<'_>], mqtt: Option<&MqttView>, out: &mut String) -> std::fmt::Result {
    let exporter = ExporterView { mqtt: mqtt.copied(), ..ExporterView::default() };
    render_as(Format::OpenMetrics, devices, &exporter, out)
}

/// Append the body for `devices` and the `exporter`'s own families to `out`, in `format`.
pub fn render_as(
    format: Format,
    devices: &[DeviceView<'_>],
    exporter: &ExporterView,
    out: &mut String,
) -> std::fmt::Result {
    // No prefix: the collector writes full `bms_` names, and a registry prefix would double them.
    let mut registry = Registry::default();
    registry.register_collector(Box::new(collector::Scrape::new(devices, exporter)));
    match format {
        Format::OpenMetrics => prometheus_client::encoding::text::encode(out, &registry),
        Format::Text => {
            let mut openmetrics = String::with_capacity(out.capacity().max(16 * 1024));
            prometheus_client::encoding::text::encode(&mut openmetrics, &registry)?;
            format::to_text(&openmetrics, out);
            Ok(())
        }
    }
}
