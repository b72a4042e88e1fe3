//! The prometheus-client [`Collector`] of one scrape: an owned, normalised copy of what the device views say,
//! encoded family by family in the order of [`names::ALL`] — devices in the given order, packs by number,
//! cells by index, sensors, ports and alarm levels sorted — so the body is stable from scrape to scrape.
//!
//! Families are written through `DescriptorEncoder` with full `bms_…` names and no registry prefix (a prefix would
//! double it: prometheus-client prefixes a collector's names too). No I/O, no clock and no locks: everything comes from
//! the views.

use std::collections::BTreeSet;
use std::fmt::{self, Write as _};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{
    DescriptorEncoder, EncodeCounterValue, EncodeGaugeValue, EncodeLabelSet, EncodeLabelValue, EncodeMetric,
    GaugeValueEncoder, LabelValueEncoder, MetricEncoder, NoLabelSet,
};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Unit;

use super::names::{self, Kind, Metric};
use super::{DeviceView, ExporterView, MqttView, ProcessView, ReloadView};
use crate::model::energy::PackEnergy;
use crate::model::{LevelAlarm, LevelAlarmKind, PackSnapshot, PackState, SensorId};
use crate::poller::DeviceStatus;
use crate::protocol::Protocol;

/// Everything one render needs, owned (a `Collector` must be `'static`).
#[derive(Debug)]
pub(crate) struct Scrape {
    devices: Vec<Device>,
    /// The MQTT publisher's health, when it runs.
    mqtt: Option<MqttView>,
    /// The configuration reloads, when serving a configuration file.
    reload: Option<ReloadView>,
    /// The process's own figures, when the caller read them.
    process: Option<ProcessView>,
}

/// One configured device.
#[derive(Debug)]
struct Device {
    name: String,
    protocol: &'static str,
    transport: &'static str,
    up: bool,
    health: Health,
    /// Online packs by number, with the values the view passed.
    packs: Vec<Pack>,
}

/// The health series of a device; counters start at 0 before the first poll.
#[derive(Debug)]
struct Health {
    poll_seconds: Option<f64>,
    last_success_unix: Option<f64>,
    polls: u64,
    /// Every bounded reason first (0 if it never happened), then any other reason the poller reported.
    failures: Vec<(&'static str, u64)>,
    resync_bytes: u64,
}

/// One online pack, normalised for rendering.
#[derive(Debug)]
struct Pack {
    /// Temperatures sorted by sensor, one per sensor; alarms one per name; digital ports sorted by name.
    snapshot: PackSnapshot,
    /// Per-cell levels as (cell, alarm, active), sorted.
    cell_alarms: Vec<(usize, &'static str, bool)>,
    /// Per-sensor levels as (sensor, alarm, active), sorted.
    temperature_alarms: Vec<(SensorId, &'static str, bool)>,
    /// The pack's energy and charge totals, once a poll gave its voltage and current.
    energy: Option<PackEnergy>,
}

impl Scrape {
    /// Copy and normalise what `views` say, and what `exporter` says of the exporter itself.
    pub(crate) fn new(views: &[DeviceView<'_>], exporter: &ExporterView) -> Self {
        Self {
            devices: views.iter().map(Device::new).collect(),
            mqtt: exporter.mqtt,
            reload: exporter.reload,
            process: exporter.process,
        }
    }

    /// Every online pack of every fresh device, in render order, with its device name.
    fn packs(&self) -> impl Iterator<Item = (&str, &Pack)> {
        self.devices.iter().flat_map(|d| d.packs.iter().map(move |p| (d.name.as_str(), p)))
    }
}

impl Device {
    fn new(view: &DeviceView<'_>) -> Self {
        let status = view.status;
        let packs = match view.values {
            Some(values) => {
                let mut packs: Vec<&PackSnapshot> = values.packs.iter().filter(|p| p.online).collect();
                packs.sort_by_key(|p| p.pack);
                packs.dedup_by_key(|p| p.pack);
                // Pace reports a level per cell and sensor, so its limit series exist (0 or 1) on every scrape.
                let levels = view.protocol == Protocol::Pace;
                // The totals go with the pack's values: exported while those are fresh, gone with them.
                let energy = |number: u8| status.and_then(|s| s.energy.pack(number)).cloned();
                packs.into_iter().map(|p| Pack::new(p, levels, energy(p.pack))).collect()
            }
            _ => Vec::new(),
        };
        Self {
            name: view.name.to_owned(),
            protocol: view.protocol.as_str(),
            transport: view.transport,
            up: view.fresh && status.is_some_and(|s| s.last.succeeded()),
            health: Health::new(status),
            packs,
        }
    }
}

impl Health {
    fn new(status: Option<&DeviceStatus>) -> Self {
        let count = |reason: &str| status.and_then(|s| s.failures_total.get(reason).copied()).unwrap_or(0);
        let mut failures: Vec<(&'static str, u64)> = names::FAILURE_REASONS.iter().map(|&r| (r, count(r))).collect();
        // A reason outside the documented set is still counted rather than lost; the names test keeps it rare.
        if let Some(s) = status {
            failures.extend(
                s.failures_total.iter().filter(|(r, _)| !names::FAILURE_REASONS.contains(r)).map(|(&r, &n)| (r, n)),
            );
        }
        Self {
            poll_seconds: status.map(|s| s.last.duration().as_secs_f64()),
            last_success_unix: status.and_then(|s| s.last_success_unix),
            polls: status.map_or(0, |s| s.polls_total),
            failures,
            resync_bytes: status.map_or(0, |s| s.resync_bytes_total),
        }
    }
}

impl Pack {
    /// `levels`: the device reports a warning level for every cell and sensor (Pace), so the limit alarms of
    /// each are rendered, 0 when not active, for alerts that must see the series before it fires.
    fn new(source: &PackSnapshot, levels: bool, energy: Option<PackEnergy>) -> Self {
        // Levels are matched to sensors by the device's own order, so before the temperatures are sorted.
        let active: Vec<(SensorId, &'static str)> =
            source.temperature_alarms.iter().map(|&l| (alarm_sensor(source, l), l.kind.as_str())).collect();
        let sensors: Vec<SensorId> =
            if levels { source.temperatures.iter().map(|t| t.sensor).collect() } else { Vec::new() };
        let temperature_alarms = with_limits(&sensors, &active);
        let mut snapshot = source.clone();
        // One series per label set: a duplicate would make Prometheus reject the samples.
        snapshot.temperatures.sort_by_key(|t| t.sensor);
        snapshot.temperatures.dedup_by_key(|t| t.sensor);
        snapshot.digital_io.sort_by_key(|p| p.port);
        snapshot.digital_io.dedup_by_key(|p| p.port);
        let mut seen = BTreeSet::new();
        snapshot.alarms.retain(|a| seen.insert(a.name));
        let active: Vec<(usize, &'static str)> =
            snapshot.cell_alarms.iter().map(|l| (usize::from(l.index), l.kind.as_str())).collect();
        let cells: Vec<usize> = if levels { (1..=snapshot.cell_volts.len()).collect() } else { Vec::new() };
        let cell_alarms = with_limits(&cells, &active);
        Self { snapshot, cell_alarms, temperature_alarms, energy }
    }
}

/// The limit alarms every one of `items` has, each active or not, plus the `active` levels (all of them,
/// also those of items not listed or of other kinds); sorted, one per (item, alarm).
fn with_limits<T: Ord + Copy>(items: &[T], active: &[(T, &'static str)]) -> Vec<(T, &'static str, bool)> {
    const LIMITS: [&str; 2] = [LevelAlarmKind::BelowLowerLimit.as_str(), LevelAlarmKind::AboveUpperLimit.as_str()];
    let mut all: Vec<(T, &'static str, bool)> = items
        .iter()
        .flat_map(|&item| LIMITS.iter().map(move |&alarm| (item, alarm, false)))
        .chain(active.iter().map(|&(item, alarm)| (item, alarm, true)))
        .collect();
    // Active entries sort after inactive ones of the same (item, alarm); keep the last of each.
    all.sort_unstable();
    all.reverse();
    all.dedup_by_key(|&mut (item, alarm, _)| (item, alarm));
    all.reverse();
    all
}

/// The sensor a per-sensor level belongs to. Levels count the sensors the device reports, 1-based; when every
/// reported sensor has a reading, the n-th reading names it (so a level on a MOSFET probe gets the "mosfet"
/// label its temperature has), otherwise the number is all that is known.
fn alarm_sensor(pack: &PackSnapshot, level: LevelAlarm) -> SensorId {
    let complete = pack.temperature_sensor_count.is_some_and(|n| usize::from(n) == pack.temperatures.len());
    let by_position = usize::from(level.index).checked_sub(1).and_then(|i| pack.temperatures.get(i));
    match by_position {
        Some(t) if complete => t.sensor,
        _ => SensorId::Probe(level.index),
    }
}

/// A label value: text (escaped by prometheus-client) or a number written as at least two digits ("01").
#[derive(Debug, Clone, Copy)]
enum Label<'a> {
    Str(&'a str),
    Num(usize),
}

impl EncodeLabelValue for Label<'_> {
    fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> fmt::Result {
        match *self {
            Label::Str(s) => encoder.write_str(s),
            Label::Num(n) => write!(encoder, "{n:02}"),
        }
    }
}

/// The `sensor` label, as [`SensorId::label`] spells it, without allocating.
fn sensor_label(sensor: SensorId) -> Label<'static> {
    match sensor {
        SensorId::Probe(n) => Label::Num(usize::from(n)),
        SensorId::Mosfet => Label::Str("mosfet"),
        SensorId::Ambient => Label::Str("ambient"),
        SensorId::Board => Label::Str("board"),
    }
}

/// A gauge value: integers stay integers in the text ("1", not "1.0").
#[derive(Debug, Clone, Copy)]
enum Value {
    Float(f64),
    Int(i64),
}

impl EncodeGaugeValue for Value {
    fn encode(&self, encoder: &mut GaugeValueEncoder<'_>) -> fmt::Result {
        match *self {
            Value::Float(v) => EncodeGaugeValue::encode(&v, encoder),
            Value::Int(v) => EncodeGaugeValue::encode(&v, encoder),
        }
    }
}

impl From<f64> for Value {
    fn from(v: f64) -> Self {
        Self::Float(v)
    }
}

impl From<bool> for Value {
    fn from(v: bool) -> Self {
        Self::Int(i64::from(v))
    }
}

impl From<u16> for Value {
    fn from(v: u16) -> Self {
        Self::Int(i64::from(v))
    }
}

impl From<u32> for Value {
    fn from(v: u32) -> Self {
        Self::Int(i64::from(v))
    }
}

impl From<u64> for Value {
    /// An integer while it fits, else the nearest float (`u64::MAX`, an unlimited rlimit, as client_golang
    /// writes it).
    fn from(v: u64) -> Self {
        i64::try_from(v).map_or(Self::Float(v as f64), Self::Int)
    }
}

fn metric_type(kind: Kind) -> MetricType {
    match kind {
        Kind::Gauge => MetricType::Gauge,
        Kind::Counter => MetricType::Counter,
        Kind::Info => MetricType::Info,
    }
}

/// Write the descriptor of `metric` (even when it has no series: the set of families never changes), then
/// its samples.
fn family(
    enc: &mut DescriptorEncoder<'_>,
    metric: &'static Metric,
    samples: impl FnOnce(&mut MetricEncoder<'_>) -> fmt::Result,
) -> fmt::Result {
    let unit = metric.unit.map(|u| Unit::Other(u.to_owned()));
    let mut encoder = enc.encode_descriptor(metric.stem(), metric.help, unit.as_ref(), metric_type(metric.kind))?;
    samples(&mut encoder)
}

/// One gauge sample; a non-finite value is left out (OpenMetrics spells it differently from Rust's dtoa).
fn gauge(encoder: &mut MetricEncoder<'_>, labels: &impl EncodeLabelSet, value: impl Into<Value>) -> fmt::Result {
    let value = value.into();
    if let Value::Float(v) = value
        && !v.is_finite()
    {
        return Ok(());
    }
    ConstGauge::new(value).encode(encoder.encode_family(labels)?)
}

/// One counter sample (prometheus-client adds `_total`).
fn counter(
    encoder: &mut MetricEncoder<'_>,
    labels: &impl EncodeLabelSet,
    value: impl EncodeCounterValue,
) -> fmt::Result {
    ConstCounter::new(value).encode(encoder.encode_family(labels)?)
}

fn device_labels(device: &Device) -> [(&'static str, Label<'_>); 1] {
    [("device", Label::Str(&device.name))]
}

type PackLabels<'a> = [(&'static str, Label<'a>); 2];

fn pack_labels<'a>(device: &'a str, pack: &PackSnapshot) -> PackLabels<'a> {
    [("device", Label::Str(device)), ("pack", Label::Num(usize::from(pack.pack)))]
}

impl Scrape {
    /// A family with at most one series per pack.
    fn per_pack<V: Into<Value>>(
        &self,
        enc: &mut DescriptorEncoder<'_>,
        metric: &'static Metric,
        value: impl Fn(&PackSnapshot) -> Option<V>,
    ) -> fmt::Result {
        family(enc, metric, |m| {
            for (device, pack) in self.packs() {
                if let Some(v) = value(&pack.snapshot) {
                    gauge(m, &pack_labels(device, &pack.snapshot), v)?;
                }
            }
            Ok(())
        })
    }

    /// A counter family with at most one series per pack; a non-finite total is left out, as a gauge's is.
    fn per_pack_counter(
        &self,
        enc: &mut DescriptorEncoder<'_>,
        metric: &'static Metric,
        value: impl Fn(&PackEnergy) -> f64,
    ) -> fmt::Result {
        family(enc, metric, |m| {
            for (device, pack) in self.packs() {
                if let Some(v) = pack.energy.as_ref().map(&value).filter(|v| v.is_finite()) {
                    counter(m, &pack_labels(device, &pack.snapshot), v)?;
                }
            }
            Ok(())
        })
    }

    /// A family with one series per pack and item, the item naming one more label.
    fn per_item<'p, I, V>(
        &'p self,
        enc: &mut DescriptorEncoder<'_>,
        metric: &'static Metric,
        key: &'static str,
        items: impl Fn(&'p Pack) -> I,
    ) -> fmt::Result
    where
        I: Iterator<Item = (Label<'p>, V)>,
        V: Into<Value>,
    {
        family(enc, metric, |m| {
            for (device, pack) in self.packs() {
                let [d, p] = pack_labels(device, &pack.snapshot);
                for (label, v) in items(pack) {
                    gauge(m, &[d, p, (key, label)], v)?;
                }
            }
            Ok(())
        })
    }

    /// A per-pack family with two more labels (cell or sensor, then alarm), each series 0 or 1.
    fn per_level<'p, I>(
        &'p self,
        enc: &mut DescriptorEncoder<'_>,
        metric: &'static Metric,
        key: &'static str,
        levels: impl Fn(&'p Pack) -> I,
    ) -> fmt::Result
    where
        I: Iterator<Item = (Label<'p>, &'static str, bool)>,
    {
        family(enc, metric, |m| {
            for (device, pack) in self.packs() {
                let [d, p] = pack_labels(device, &pack.snapshot);
                for (label, alarm, active) in levels(pack) {
                    gauge(m, &[d, p, (key, label), ("alarm", Label::Str(alarm))], active)?;
                }
            }
            Ok(())
        })
    }

    fn encode_health(&self, enc: &mut DescriptorEncoder<'_>) -> fmt::Result {
        family(enc, &names::BUILD_INFO, |m| {
            m.encode_info(&[
                ("version", Label::Str(env!("CARGO_PKG_VERSION"))),
                ("revision", Label::Str(names::REVISION)),
            ])
        })?;
        family(enc, &names::DEVICE_INFO, |m| {
            for d in &self.devices {
                m.encode_info(&[
                    ("device", Label::Str(&d.name)),
                    ("protocol", Label::Str(d.protocol)),
                    ("transport", Label::Str(d.transport)),
                ])?;
            }
            Ok(())
        })?;
        family(enc, &names::UP, |m| self.devices.iter().try_for_each(|d| gauge(m, &device_labels(d), d.up)))?;
        family(enc, &names::POLL_DURATION, |m| {
            self.devices
                .iter()
                .try_for_each(|d| d.health.poll_seconds.map_or(Ok(()), |v| gauge(m, &device_labels(d), v)))
        })?;
        family(enc, &names::LAST_SUCCESS, |m| {
            self.devices
                .iter()
                .try_for_each(|d| d.health.last_success_unix.map_or(Ok(()), |v| gauge(m, &device_labels(d), v)))
        })?;
        family(enc, &names::POLLS, |m| {
            self.devices.iter().try_for_each(|d| counter(m, &device_labels(d), d.health.polls))
        })?;
        family(enc, &names::POLL_FAILURES, |m| {
            for d in &self.devices {
                for &(reason, n) in &d.health.failures {
                    counter(m, &[("device", Label::Str(&d.name)), ("reason", Label::Str(reason))], n)?;
                }
            }
            Ok(())
        })?;
        family(enc, &names::RESYNC_BYTES, |m| {
            self.devices.iter().try_for_each(|d| counter(m, &device_labels(d), d.health.resync_bytes))
        })
    }

    fn encode_pack_values(&self, enc: &mut DescriptorEncoder<'_>) -> fmt::Result {
        family(enc, &names::PACK_INFO, |m| {
            for (device, pack) in self.packs() {
                let info = &pack.snapshot.info;
                let [d, p] = pack_labels(device, &pack.snapshot);
                let mut labels = vec![d, p];
                let reported = [
                    ("model", &info.model),
                    ("firmware_version", &info.firmware_version),
                    ("serial_number", &info.serial_number),
                ];
                for (key, value) in reported {
                    // An empty string says nothing, and Prometheus treats an empty label as absent anyway.
                    if let Some(v) = value.as_deref().filter(|v| !v.is_empty()) {
                        labels.push((key, Label::Str(v)));
                    }
                }
                if labels.len() > 2 {
                    m.encode_info(&labels)?;
                }
            }
            Ok(())
        })?;
        self.per_pack(enc, &names::PACK_VOLTAGE, |p| p.voltage_volts)?;
        self.per_pack(enc, &names::PACK_CURRENT, |p| p.current_amperes)?;
        self.per_pack(enc, &names::PACK_SOC, |p| p.state_of_charge_ratio)?;
        self.per_pack(enc, &names::PACK_SOH, |p| p.state_of_health_ratio)?;
        self.per_pack(enc, &names::PACK_REMAINING, |p| p.remaining_capacity_ampere_hours)?;
        self.per_pack(enc, &names::PACK_FULL, |p| p.full_capacity_ampere_hours)?;
        self.per_pack(enc, &names::PACK_DESIGN, |p| p.design_capacity_ampere_hours)?;
        self.per_pack_counter(enc, &names::PACK_CHARGED_ENERGY, |e| e.charged_joules)?;
        self.per_pack_counter(enc, &names::PACK_DISCHARGED_ENERGY, |e| e.discharged_joules)?;
        self.per_pack_counter(enc, &names::PACK_CHARGED_CHARGE, |e| e.charged_ampere_hours)?;
        self.per_pack_counter(enc, &names::PACK_DISCHARGED_CHARGE, |e| e.discharged_ampere_hours)?;
        self.per_pack(enc, &names::PACK_CYCLES, |p| p.cycle_count)?;
        self.per_pack(enc, &names::PACK_CELL_COUNT, |p| p.cell_count)?;
        self.per_pack(enc, &names::PACK_SENSOR_COUNT, |p| p.temperature_sensor_count)?;
        self.per_item(enc, &names::PACK_STATE, "state", |p| {
            let state = p.snapshot.state;
            state
                .into_iter()
                .flat_map(|current| PackState::ALL.into_iter().map(move |s| (Label::Str(s.as_str()), s == current)))
        })?;
        self.per_item(enc, &names::MOSFET, "mosfet", |p| {
            let s = &p.snapshot;
            [("charge", s.charge_mosfet_enabled), ("discharge", s.discharge_mosfet_enabled)]
                .into_iter()
                .filter_map(|(name, on)| Some((Label::Str(name), on?)))
        })?;
        self.per_pack(enc, &names::CHARGER, |p| p.charger_connected)?;
        self.per_pack(enc, &names::LOAD, |p| p.load_connected)?;
        self.per_item(enc, &names::DIGITAL_IO, "port", |p| {
            p.snapshot.digital_io.iter().map(|d| (Label::Str(d.port), d.active))
        })?;
        self.per_item(enc, &names::CELL_VOLTAGE, "cell", |p| {
            (1..).zip(&p.snapshot.cell_volts).filter_map(|(n, v)| Some((Label::Num(n), (*v)?)))
        })?;
        self.per_item(enc, &names::CELL_BALANCING, "cell", |p| {
            (1..).zip(&p.snapshot.cell_balancing).map(|(n, &on)| (Label::Num(n), on))
        })?;
        self.per_item(enc, &names::TEMPERATURE, "sensor", |p| {
            p.snapshot.temperatures.iter().map(|t| (sensor_label(t.sensor), t.celsius))
        })?;
        self.per_item(enc, &names::ALARM, "alarm", |p| {
            p.snapshot.alarms.iter().map(|a| (Label::Str(a.name), a.active))
        })?;
        self.per_level(enc, &names::CELL_ALARM, "cell", |p| {
            p.cell_alarms.iter().map(|&(cell, alarm, active)| (Label::Num(cell), alarm, active))
        })?;
        self.per_level(enc, &names::TEMPERATURE_ALARM, "sensor", |p| {
            p.temperature_alarms.iter().map(|&(sensor, alarm, active)| (sensor_label(sensor), alarm, active))
        })
    }
}

/// The MQTT publisher's families, after everything else (so the families of [`names::ALL`] keep their order).
/// Label-less samples are written straight to the family's encoder: `encode_family` would add `{}`.
fn encode_mqtt(enc: &mut DescriptorEncoder<'_>, mqtt: &MqttView) -> fmt::Result {
    let count = |m: &mut MetricEncoder<'_>, n: u64| m.encode_counter::<NoLabelSet, _, f64>(&n, None);
    family(enc, &names::MQTT_CONNECTED, |m| m.encode_gauge(&i64::from(mqtt.connected)))?;
    family(enc, &names::MQTT_MESSAGES, |m| count(m, mqtt.messages_published))?;
    family(enc, &names::MQTT_BYTES, |m| count(m, mqtt.publish_bytes))?;
    family(enc, &names::MQTT_ERRORS, |m| count(m, mqtt.connection_errors))?;
    family(enc, &names::MQTT_LAST_PUBLISH, |m| {
        mqtt.last_publish_unix.filter(|v| v.is_finite()).map_or(Ok(()), |v| m.encode_gauge(&v))
    })?;
    family(enc, &names::MQTT_COMMANDS, |m| {
        names::MQTT_COMMAND_RESULTS
            .iter()
            .zip(mqtt.commands)
            .try_for_each(|(result, n)| counter(m, &[("result", Label::Str(result))], n))
    })
}

/// The process's families, after everything else; a figure that was not read has no series.
fn encode_process(enc: &mut DescriptorEncoder<'_>, process: &ProcessView) -> fmt::Result {
    fn one(m: &mut MetricEncoder<'_>, value: Option<impl Into<Value>>) -> fmt::Result {
        match value.map(Into::into) {
            Some(Value::Float(v)) if v.is_finite() => m.encode_gauge(&v),
            Some(Value::Int(v)) => m.encode_gauge(&v),
            _ => Ok(()),
        }
    }
    family(enc, &names::PROCESS_CPU, |m| match process.cpu_seconds.filter(|v| v.is_finite()) {
        Some(v) => m.encode_counter::<NoLabelSet, _, f64>(&v, None),
        None => Ok(()),
    })?;
    family(enc, &names::PROCESS_MAX_FDS, |m| one(m, process.max_fds))?;
    family(enc, &names::PROCESS_OPEN_FDS, |m| one(m, process.open_fds))?;
    family(enc, &names::PROCESS_RESIDENT, |m| one(m, process.resident_memory_bytes))?;
    family(enc, &names::PROCESS_START, |m| one(m, process.start_time_seconds))?;
    family(enc, &names::PROCESS_VIRTUAL, |m| one(m, process.virtual_memory_bytes))?;
    family(enc, &names::PROCESS_VIRTUAL_MAX, |m| one(m, process.virtual_memory_max_bytes))
}

/// The configuration reload families, last of all; label-less like the MQTT ones.
fn encode_reload(enc: &mut DescriptorEncoder<'_>, reload: &ReloadView) -> fmt::Result {
    family(enc, &names::RELOAD_SUCCESSFUL, |m| m.encode_gauge(&i64::from(reload.successful)))?;
    family(enc, &names::RELOAD_SUCCESS_TIME, |m| {
        if reload.last_success_unix.is_finite() { m.encode_gauge(&reload.last_success_unix) } else { Ok(()) }
    })
}

impl Collector for Scrape {
    fn encode(&self, mut enc: DescriptorEncoder<'_>) -> fmt::Result {
        self.encode_health(&mut enc)?;
        self.encode_pack_values(&mut enc)?;
        if let Some(mqtt) = &self.mqtt {
            encode_mqtt(&mut enc, mqtt)?;
        }
        if let Some(reload) = &self.reload {
            encode_reload(&mut enc, reload)?;
        }
        match &self.process {
            Some(process) => encode_process(&mut enc, process),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::time::{Duration, Instant};

    use super::*;
    use crate::metrics::{CONTENT_TYPE, render};
    use crate::model::energy::Energy;
    use crate::model::{
        Alarm, AlarmSeverity, DeviceSnapshot, DigitalPort, LevelAlarm, LevelAlarmKind, PackInfo, Retained, Temperature,
    };
    use crate::protocol::Protocol;
    use crate::session::{PollError, PollReport, RequestFailure};

    /// One parsed sample line: name, labels in order, value.
    #[derive(Debug, Clone, PartialEq)]
    struct Sample {
        name: String,
        labels: Vec<(String, String)>,
        value: f64,
    }

    impl Sample {
        fn label(&self, key: &str) -> Option<&str> {
            self.labels.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
        }
    }

    /// A strict little reader of the sample lines this renderer writes (label values unescaped).
    fn parse_sample(line: &str) -> Sample {
        let (head, value) = line.rsplit_once(' ').unwrap();
        let (name, labels) = match head.split_once('{') {
            None => (head, Vec::new()),
            Some((name, rest)) => {
                let mut labels = Vec::new();
                let mut chars = rest.chars();
                loop {
                    let key: String = chars.by_ref().take_while(|&c| c != '=').collect();
                    assert_eq!(chars.next(), Some('"'), "{line}");
                    let mut value = String::new();
                    while let Some(c) = chars.next() {
                        match c {
                            '"' => break,
                            '\\' => match chars.next() {
                                Some('n') => value.push('\n'),
                                Some(c @ ('\\' | '"')) => value.push(c),
                                other => panic!("bad escape {other:?} in {line}"),
                            },
                            c => value.push(c),
                        }
                    }
                    labels.push((key, value));
                    match chars.next() {
                        Some(',') => {}
                        Some('}') => break,
                        other => panic!("unexpected {other:?} in {line}"),
                    }
                }
                assert_eq!(chars.next(), None, "{line}");
                (name, labels)
            }
        };
        Sample { name: name.to_owned(), labels, value: value.parse().unwrap() }
    }

    fn samples(body: &str) -> Vec<Sample> {
        body.lines().filter(|l| !l.starts_with('#')).map(parse_sample).collect()
    }

    fn series<'b>(all: &'b [Sample], name: &str) -> Vec<&'b Sample> {
        all.iter().filter(|s| s.name == name).collect()
    }

    fn value(all: &[Sample], name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let found: Vec<_> =
            series(all, name).into_iter().filter(|s| labels.iter().all(|&(k, v)| s.label(k) == Some(v))).collect();
        assert!(found.len() <= 1, "{name} {labels:?} matches {found:?}");
        found.first().map(|s| s.value)
    }

    fn rich_pack(number: u8) -> PackSnapshot {
        let mut p = PackSnapshot::new(number);
        p.voltage_volts = Some(53.301);
        p.current_amperes = Some(-12.5);
        p.state_of_charge_ratio = Some(0.87);
        p.state_of_health_ratio = Some(1.02);
        p.remaining_capacity_ampere_hours = Some(87.0);
        p.full_capacity_ampere_hours = Some(100.0);
        p.design_capacity_ampere_hours = Some(105.0);
        p.cycle_count = Some(321);
        p.state = Some(PackState::Discharging);
        p.charge_mosfet_enabled = Some(true);
        p.discharge_mosfet_enabled = Some(false);
        p.charger_connected = Some(false);
        p.load_connected = Some(true);
        p.digital_io = vec![
            DigitalPort { port: "do1", active: true },
            DigitalPort { port: "di2", active: true },
            DigitalPort { port: "di1", active: false },
        ];
        p.cell_count = Some(16);
        p.temperature_sensor_count = Some(6);
        p.cell_volts = (0..16).map(|i| Some(3.301 + f64::from(i) / 1000.0)).collect();
        p.cell_volts[6] = None;
        p.cell_balancing = (0..16).map(|i| i == 3).collect();
        let t = |sensor, celsius| Temperature { sensor, celsius };
        p.temperatures = vec![
            t(SensorId::Probe(1), 21.5),
            t(SensorId::Probe(2), 22.0),
            t(SensorId::Probe(3), 22.5),
            t(SensorId::Probe(4), 23.0),
            t(SensorId::Mosfet, 31.25),
            t(SensorId::Ambient, 18.0),
        ];
        p.set_alarms([
            Alarm::new("cell_overvoltage", AlarmSeverity::Protection, false),
            Alarm::new("short_circuit", AlarmSeverity::Protection, true),
            Alarm::new("fully_charged", AlarmSeverity::Info, false),
        ]);
        p.cell_alarms = vec![LevelAlarm { index: 3, kind: LevelAlarmKind::AboveUpperLimit }];
        p.temperature_alarms = vec![
            LevelAlarm { index: 5, kind: LevelAlarmKind::AboveUpperLimit },
            LevelAlarm { index: 1, kind: LevelAlarmKind::BelowLowerLimit },
        ];
        p.info = PackInfo {
            model: Some("PACE-48V".to_owned()),
            firmware_version: Some("P16S100A-1.2".to_owned()),
            serial_number: Some("SN001".to_owned()),
            ..PackInfo::default()
        };
        p
    }

    fn status(name: &str, packs: Vec<PackSnapshot>, succeeded: bool) -> DeviceStatus {
        let started = Instant::now();
        let failures = if succeeded {
            Vec::new()
        } else {
            vec![RequestFailure {
                label: "0x42".to_owned(),
                attempts: 4,
                error: PollError::Timeout { timeout: Duration::from_secs(1) },
            }]
        };
        // Two polls a minute apart with these values: one interval integrated for every pack they hold.
        let device = DeviceSnapshot { packs };
        let mut energy = Energy::default();
        energy.update(&device, 1_700_000_040.0, 60.0);
        energy.update(&device, 1_700_000_100.0, 60.0);
        DeviceStatus {
            name: name.to_owned(),
            last: PollReport {
                device,
                answered: 3,
                failures,
                unsupported: Vec::new(),
                requests_sent: 3,
                bytes_sent: 60,
                bytes_received: 400,
                skipped_bytes: 0,
                started,
                finished: started + Duration::from_millis(250),
            },
            last_poll_unix: 1_700_000_100.0,
            last_success_unix: Some(1_700_000_000.5),
            polls_total: 42,
            failures_total: BTreeMap::from([("timeout", 3), ("checksum", 1)]),
            resync_bytes_total: 17,
            values: Retained::default(),
            energy,
        }
    }

    /// A view whose values are the status's last poll while `fresh` (what the scraper passes for a device
    /// whose every value was confirmed within `stale_after`), none otherwise.
    fn view<'a>(name: &'a str, status: Option<&'a DeviceStatus>, fresh: bool) -> DeviceView<'a> {
        let values = status.filter(|_| fresh).map(|s| &s.last.device);
        DeviceView { name, protocol: Protocol::Pace, transport: "tcp", status, fresh, values }
    }

    fn body(views: &[DeviceView<'_>]) -> String {
        let mut out = String::new();
        render(views, &mut out).unwrap();
        out
    }

    fn value_families() -> impl Iterator<Item = &'static Metric> {
        names::ALL.iter().copied().filter(|m| m.scope == names::Scope::Pack)
    }

    #[test]
    fn a_render_emits_exactly_the_families_of_the_table_with_their_labels() {
        let rack = status("rack", vec![rich_pack(1), rich_pack(2)], true);
        let text = body(&[view("rack", Some(&rack), true)]);
        assert!(text.ends_with("# EOF\n"));
        assert!(CONTENT_TYPE.starts_with("application/openmetrics-text; version=1.0.0"));

        let mut families = Vec::new();
        for line in text.lines().filter(|l| l.starts_with("# TYPE ")) {
            let mut words = line.split(' ').skip(2);
            families.push((words.next().unwrap().to_owned(), words.next().unwrap().to_owned()));
        }
        let expected: Vec<(String, String)> =
            names::ALL.iter().map(|m| (m.family().to_owned(), m.kind.as_str().to_owned())).collect();
        assert_eq!(families, expected);

        for m in names::ALL {
            assert!(text.contains(&format!("# HELP {} {}\n", m.family(), m.help)), "{}", m.name);
            if let Some(unit) = m.unit {
                assert!(text.contains(&format!("# UNIT {} {unit}\n", m.family())), "{}", m.name);
            }
        }
        assert_eq!(text.matches("# UNIT ").count(), names::ALL.iter().filter(|m| m.unit.is_some()).count());

        // Every sample belongs to the family whose descriptor precedes it, and carries its label keys.
        let mut current: Option<&Metric> = None;
        let mut seen = BTreeSet::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let family = rest.split(' ').next().unwrap();
                current = names::ALL.iter().copied().find(|m| m.family() == family);
            } else if !line.starts_with('#') {
                let m = current.unwrap();
                let s = parse_sample(line);
                assert_eq!(s.name, m.name, "{line}");
                let keys: Vec<&str> = s.labels.iter().map(|(k, _)| k.as_str()).collect();
                if m.name == names::PACK_INFO.name {
                    assert_eq!(keys, m.labels, "all identity strings are known here");
                } else {
                    assert_eq!(keys, m.labels, "{line}");
                }
                seen.insert(m.name);
            }
        }
        let all: BTreeSet<&str> = names::ALL.iter().map(|m| m.name).collect();
        assert_eq!(seen, all, "a rich snapshot has series in every family");
    }

    #[test]
    fn health_series_report_the_poll_counters_and_every_failure_reason() {
        let ok = status("ok", vec![rich_pack(1)], true);
        let bad = status("bad", vec![rich_pack(1)], false);
        let all = samples(&body(&[view("ok", Some(&ok), true), view("bad", Some(&bad), true)]));
        assert_eq!(value(&all, "bms_up", &[("device", "ok")]), Some(1.0));
        assert_eq!(value(&all, "bms_up", &[("device", "bad")]), Some(0.0), "a failed poll is down even while fresh");
        assert_eq!(value(&all, "bms_poll_duration_seconds", &[("device", "ok")]), Some(0.25));
        assert_eq!(value(&all, "bms_last_poll_success_timestamp_seconds", &[("device", "ok")]), Some(1_700_000_000.5));
        assert_eq!(value(&all, "bms_polls_total", &[("device", "ok")]), Some(42.0));
        assert_eq!(value(&all, "bms_resync_bytes_total", &[("device", "ok")]), Some(17.0));
        let reasons: Vec<(&str, f64)> = series(&all, "bms_poll_failures_total")
            .into_iter()
            .filter(|s| s.label("device") == Some("ok"))
            .map(|s| (s.label("reason").unwrap(), s.value))
            .collect();
        let expected: Vec<(&str, f64)> = names::FAILURE_REASONS
            .iter()
            .map(|&r| {
                (
                    r,
                    match r {
                        "timeout" => 3.0,
                        "checksum" => 1.0,
                        _ => 0.0,
                    },
                )
            })
            .collect();
        assert_eq!(reasons, expected);
        assert_eq!(
            series(&all, "bms_device_info")[0].labels,
            [("device", "ok"), ("protocol", "pace"), ("transport", "tcp")].map(|(k, v)| (k.to_owned(), v.to_owned()))
        );
        // Values of a fresh device stay while a poll fails (they are the cached ones), up says it failed.
        assert_eq!(value(&all, "bms_pack_voltage_volts", &[("device", "bad"), ("pack", "01")]), Some(53.301));
    }

    #[test]
    fn a_reason_outside_the_bounded_set_is_still_counted() {
        let mut s = status("odd", Vec::new(), true);
        s.failures_total.insert("no_frame", 2);
        let all = samples(&body(&[view("odd", Some(&s), true)]));
        assert_eq!(value(&all, "bms_poll_failures_total", &[("reason", "no_frame")]), Some(2.0));
        assert_eq!(series(&all, "bms_poll_failures_total").len(), names::FAILURE_REASONS.len() + 1);
    }

    #[test]
    fn a_stale_device_keeps_its_health_series_and_loses_its_values() {
        let stale = status("stale", vec![rich_pack(1)], true);
        let fresh = status("fresh", vec![rich_pack(1)], true);
        let all = samples(&body(&[view("stale", Some(&stale), false), view("fresh", Some(&fresh), true)]));
        assert_eq!(value(&all, "bms_up", &[("device", "stale")]), Some(0.0), "a stale success is not up");
        for name in ["bms_poll_duration_seconds", "bms_last_poll_success_timestamp_seconds", "bms_polls_total"] {
            assert!(value(&all, name, &[("device", "stale")]).is_some(), "{name}");
        }
        assert!(value(&all, "bms_device_info", &[("device", "stale")]).is_some());
        for m in value_families() {
            let of = |d: &str| series(&all, m.name).into_iter().filter(|s| s.label("device") == Some(d)).count();
            assert_eq!(of("stale"), 0, "{}", m.name);
            assert!(of("fresh") > 0, "{}", m.name);
        }
    }

    #[test]
    fn a_device_never_polled_has_only_its_identity_and_zeroed_health() {
        let all = samples(&body(&[view("new", None, false)]));
        let names: BTreeSet<&str> = all.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(
            names,
            BTreeSet::from([
                "bms_exporter_build_info",
                "bms_device_info",
                "bms_up",
                "bms_polls_total",
                "bms_poll_failures_total",
                "bms_resync_bytes_total"
            ])
        );
        assert!(
            all.iter()
                .filter(|s| s.name != "bms_exporter_build_info" && s.name != "bms_device_info")
                .all(|s| s.value == 0.0)
        );
        assert_eq!(series(&all, "bms_poll_failures_total").len(), names::FAILURE_REASONS.len());
        // `fresh` without a status (a caller's slip) still renders no values and no up.
        let all = samples(&body(&[view("new", None, true)]));
        assert_eq!(value(&all, "bms_up", &[]), Some(0.0));
        assert!(series(&all, "bms_pack_voltage_volts").is_empty());
    }

    #[test]
    fn build_info_names_the_version_and_a_revision() {
        let all = samples(&body(&[]));
        let info = series(&all, "bms_exporter_build_info");
        assert_eq!(info.len(), 1);
        assert_eq!(info[0].label("version"), Some(env!("CARGO_PKG_VERSION")));
        assert_eq!(info[0].label("revision"), Some(names::REVISION));
        assert!(!names::REVISION.is_empty());
        assert_eq!(info[0].value, 1.0);
        assert_eq!(all.len(), 1, "no device, no other series");
    }

    #[test]
    fn offline_packs_render_no_values() {
        let mut offline = rich_pack(2);
        offline.online = false;
        let s = status("bus", vec![rich_pack(1), offline], true);
        let all = samples(&body(&[view("bus", Some(&s), true)]));
        for m in value_families() {
            assert!(series(&all, m.name).iter().all(|s| s.label("pack") == Some("01")), "{}", m.name);
        }
        assert_eq!(value(&all, "bms_up", &[]), Some(1.0), "the device answered");
    }

    #[test]
    fn devices_packs_cells_and_sensors_come_in_a_fixed_order() {
        let mut p2 = rich_pack(2);
        p2.temperatures.reverse();
        p2.temperatures.push(Temperature { sensor: SensorId::Board, celsius: 40.0 });
        p2.temperatures.push(Temperature { sensor: SensorId::Probe(10), celsius: 20.0 });
        let b = status("b", vec![p2, rich_pack(1)], true);
        let a = status("a", vec![rich_pack(1)], true);
        let all = samples(&body(&[view("b", Some(&b), true), view("a", Some(&a), true)]));
        let order = |name: &str, key: &str| -> Vec<String> {
            series(&all, name)
                .iter()
                .map(|s| {
                    format!(
                        "{}/{}/{}",
                        s.label("device").unwrap(),
                        s.label("pack").unwrap(),
                        s.label(key).unwrap_or("-")
                    )
                })
                .collect()
        };
        assert_eq!(order("bms_pack_voltage_volts", "-"), ["b/01/-", "b/02/-", "a/01/-"]);
        let cells: Vec<String> = series(&all, "bms_cell_voltage_volts")
            .iter()
            .filter(|s| s.label("device") == Some("a"))
            .map(|s| s.label("cell").unwrap().to_owned())
            .collect();
        let expected: Vec<String> = (1..=16).filter(|&c| c != 7).map(|c| format!("{c:02}")).collect();
        assert_eq!(cells, expected, "cells by number; the unread cell 07 is absent");
        let sensors: Vec<String> =
            order("bms_temperature_celsius", "sensor").into_iter().filter(|s| s.starts_with("b/02/")).collect();
        assert_eq!(
            sensors,
            ["b/02/01", "b/02/02", "b/02/03", "b/02/04", "b/02/10", "b/02/mosfet", "b/02/ambient", "b/02/board"]
        );
        assert_eq!(order("bms_digital_io", "port")[..3], ["b/01/di1", "b/01/di2", "b/01/do1"]);
        // The same input renders the same bytes.
        let again = body(&[view("b", Some(&b), true), view("a", Some(&a), true)]);
        assert_eq!(again, body(&[view("b", Some(&b), true), view("a", Some(&a), true)]));
    }

    #[test]
    fn pack_values_state_mosfets_and_io_are_rendered_per_family() {
        let s = status("rack", vec![rich_pack(1)], true);
        let all = samples(&body(&[view("rack", Some(&s), true)]));
        let p = [("device", "rack"), ("pack", "01")];
        let at = |name: &str, extra: &[(&str, &str)]| {
            let labels: Vec<(&str, &str)> = p.iter().chain(extra).copied().collect();
            value(&all, name, &labels)
        };
        assert_eq!(at("bms_pack_voltage_volts", &[]), Some(53.301), "the text value parses back exactly");
        assert_eq!(at("bms_pack_current_amperes", &[]), Some(-12.5));
        assert_eq!(at("bms_pack_state_of_charge_ratio", &[]), Some(0.87));
        assert_eq!(at("bms_pack_state_of_health_ratio", &[]), Some(1.02));
        assert_eq!(at("bms_pack_remaining_capacity_ampere_hours", &[]), Some(87.0));
        assert_eq!(at("bms_pack_full_capacity_ampere_hours", &[]), Some(100.0));
        assert_eq!(at("bms_pack_design_capacity_ampere_hours", &[]), Some(105.0));
        assert_eq!(at("bms_pack_cycle_count", &[]), Some(321.0));
        assert_eq!(at("bms_pack_cell_count", &[]), Some(16.0));
        assert_eq!(at("bms_pack_temperature_sensor_count", &[]), Some(6.0));
        assert_eq!(at("bms_pack_state", &[("state", "idle")]), Some(0.0));
        assert_eq!(at("bms_pack_state", &[("state", "charging")]), Some(0.0));
        assert_eq!(at("bms_pack_state", &[("state", "discharging")]), Some(1.0));
        assert_eq!(at("bms_mosfet_enabled", &[("mosfet", "charge")]), Some(1.0));
        assert_eq!(at("bms_mosfet_enabled", &[("mosfet", "discharge")]), Some(0.0));
        assert_eq!(at("bms_charger_connected", &[]), Some(0.0));
        assert_eq!(at("bms_load_connected", &[]), Some(1.0));
        assert_eq!(at("bms_digital_io", &[("port", "di2")]), Some(1.0));
        assert_eq!(at("bms_digital_io", &[("port", "di1")]), Some(0.0));
        assert_eq!(at("bms_cell_voltage_volts", &[("cell", "01")]), Some(3.301));
        assert_eq!(at("bms_cell_voltage_volts", &[("cell", "16")]), Some(3.301 + 15.0 / 1000.0));
        assert_eq!(at("bms_cell_balancing", &[("cell", "04")]), Some(1.0));
        assert_eq!(at("bms_cell_balancing", &[("cell", "05")]), Some(0.0));
        assert_eq!(series(&all, "bms_cell_balancing").len(), 16);
        assert_eq!(at("bms_temperature_celsius", &[("sensor", "mosfet")]), Some(31.25));
        assert_eq!(at("bms_temperature_celsius", &[("sensor", "02")]), Some(22.0));
        assert_eq!(
            series(&all, "bms_pack_info")[0].labels[2..],
            [("model", "PACE-48V"), ("firmware_version", "P16S100A-1.2"), ("serial_number", "SN001")]
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
        );
        // Integers and flags are written as integers.
        assert!(
            body(&[view("rack", Some(&s), true)]).contains("bms_pack_cycle_count{device=\"rack\",pack=\"01\"} 321\n")
        );
    }

    #[test]
    fn energy_counters_carry_the_totals_with_their_unit_and_the_total_suffix() {
        let mut charging = rich_pack(2);
        charging.current_amperes = Some(20.0);
        charging.voltage_volts = Some(54.0);
        let s = status("rack", vec![rich_pack(1), charging], true);
        let text = body(&[view("rack", Some(&s), true)]);
        for (family, unit) in [
            ("bms_pack_charged_energy_joules", "joules"),
            ("bms_pack_discharged_energy_joules", "joules"),
            ("bms_pack_charged_ampere_hours", "ampere_hours"),
            ("bms_pack_discharged_ampere_hours", "ampere_hours"),
        ] {
            assert!(text.contains(&format!("# TYPE {family} counter\n# UNIT {family} {unit}\n")), "{family}\n{text}");
        }
        let all = samples(&text);
        let at = |name: &str, pack: &str| value(&all, name, &[("device", "rack"), ("pack", pack)]);
        // Pack 1 discharged 12.5 A at 53.301 V for the 60 s between the two polls, pack 2 charged 20 A at 54 V.
        assert_eq!(at("bms_pack_discharged_ampere_hours_total", "01"), Some(12.5 * 60.0 / 3600.0));
        assert_eq!(at("bms_pack_discharged_energy_joules_total", "01"), Some(53.301 * 12.5 * 60.0));
        assert_eq!(at("bms_pack_charged_ampere_hours_total", "01"), Some(0.0), "present at 0, not absent");
        assert_eq!(at("bms_pack_charged_energy_joules_total", "01"), Some(0.0));
        assert_eq!(at("bms_pack_charged_ampere_hours_total", "02"), Some(20.0 * 60.0 / 3600.0));
        assert_eq!(at("bms_pack_charged_energy_joules_total", "02"), Some(54.0 * 20.0 * 60.0));
        assert_eq!(at("bms_pack_discharged_energy_joules_total", "02"), Some(0.0));
        // A zero total is written as a float, as every f64 counter is.
        assert!(text.contains("bms_pack_charged_energy_joules_total{device=\"rack\",pack=\"01\"} 0.0\n"), "{text}");
    }

    #[test]
    fn energy_counters_follow_the_pack_values_and_need_a_sample() {
        // Totals for packs 1 and 2, but only pack 1's values are fresh: pack 2's counters go with its values.
        let s = status("d", vec![rich_pack(1), rich_pack(2)], true);
        let fresh_values = DeviceSnapshot { packs: vec![rich_pack(1), rich_pack(3)] };
        let v = DeviceView { values: Some(&fresh_values), ..view("d", Some(&s), true) };
        let all = samples(&body(&[v]));
        for name in ["bms_pack_charged_energy_joules_total", "bms_pack_discharged_ampere_hours_total"] {
            let packs: Vec<&str> = series(&all, name).iter().map(|s| s.label("pack").unwrap()).collect();
            // Pack 3 is fresh but no poll of this status gave its voltage and current: no totals yet.
            assert_eq!(packs, ["01"], "{name}");
        }
    }

    #[test]
    fn unknown_values_render_no_series() {
        let mut bare = PackSnapshot::new(1);
        bare.voltage_volts = Some(f64::NAN);
        bare.current_amperes = Some(f64::INFINITY);
        bare.info.model = Some(String::new());
        let s = status("bare", vec![bare], true);
        let all = samples(&body(&[view("bare", Some(&s), true)]));
        for m in value_families() {
            assert!(series(&all, m.name).is_empty(), "{} from an empty pack", m.name);
        }
    }

    #[test]
    fn pack_info_carries_only_the_identity_strings_that_were_read() {
        let mut p = rich_pack(1);
        p.info = PackInfo { firmware_version: Some("V1".to_owned()), ..PackInfo::default() };
        let s = status("d", vec![p], true);
        let all = samples(&body(&[view("d", Some(&s), true)]));
        let info = series(&all, "bms_pack_info");
        let keys: Vec<&str> = info[0].labels.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(keys, ["device", "pack", "firmware_version"]);
        assert_eq!(info[0].value, 1.0);
    }

    #[test]
    fn every_alarm_the_protocol_listed_is_present_once_with_its_state() {
        let mut p = rich_pack(1);
        p.alarms.push(Alarm::new("short_circuit", AlarmSeverity::Protection, false));
        let s = status("d", vec![p], true);
        let all = samples(&body(&[view("d", Some(&s), true)]));
        let alarms: Vec<(&str, f64)> =
            series(&all, "bms_alarm_active").iter().map(|s| (s.label("alarm").unwrap(), s.value)).collect();
        assert_eq!(alarms, [("cell_overvoltage", 0.0), ("short_circuit", 1.0), ("fully_charged", 0.0)]);
    }

    #[test]
    fn level_alarms_name_the_cell_and_the_sensor_the_temperatures_use() {
        let pack = rich_pack(1);
        let (cell_count, sensor_count) = (pack.cell_volts.len(), pack.temperatures.len());
        let s = status("d", vec![pack], true);
        let all = samples(&body(&[view("d", Some(&s), true)]));
        let cells: Vec<(&str, &str, f64)> = series(&all, "bms_cell_alarm_active")
            .iter()
            .map(|s| (s.label("cell").unwrap(), s.label("alarm").unwrap(), s.value))
            .collect();
        // A Pace pack has both limit series for every cell, 0 unless the level says so.
        assert_eq!(cells.len(), 2 * cell_count, "{cells:?}");
        let active: Vec<_> = cells.iter().filter(|c| c.2 == 1.0).map(|c| (c.0, c.1)).collect();
        assert_eq!(active, [("03", "above_upper_limit")]);
        let sensors: Vec<(&str, &str, f64)> = series(&all, "bms_temperature_alarm_active")
            .iter()
            .map(|s| (s.label("sensor").unwrap(), s.label("alarm").unwrap(), s.value))
            .collect();
        assert_eq!(sensors.len(), 2 * sensor_count, "{sensors:?}");
        let active: Vec<_> = sensors.iter().filter(|s| s.2 == 1.0).map(|s| (s.0, s.1)).collect();
        // Level 5 of six sensors is the MOSFET probe, as in bms_temperature_celsius.
        assert_eq!(active, [("01", "below_lower_limit"), ("mosfet", "above_upper_limit")]);

        // With a reading missing, positions no longer say which sensor it is: the number is used.
        let mut p = rich_pack(1);
        p.temperatures.remove(1);
        let s = status("d", vec![p], true);
        let all = samples(&body(&[view("d", Some(&s), true)]));
        let sensors: Vec<&str> = series(&all, "bms_temperature_alarm_active")
            .iter()
            .filter(|s| s.value == 1.0)
            .map(|s| s.label("sensor").unwrap())
            .collect();
        assert_eq!(sensors, ["01", "05"]);
    }

    #[test]
    fn odd_strings_in_labels_are_escaped() {
        let mut p = rich_pack(1);
        p.info.model = Some("Pack \"48V\" \\ line\nbreak".to_owned());
        let name = "shed \"east\"";
        let s = status(name, vec![p], true);
        let text = body(&[view(name, Some(&s), true)]);
        assert!(text.contains(r#"model="Pack \"48V\" \\ line\nbreak""#), "{text}");
        assert!(text.contains(r#"bms_up{device="shed \"east\""} 1"#));
        let all = samples(&text);
        assert_eq!(series(&all, "bms_pack_info")[0].label("model"), Some("Pack \"48V\" \\ line\nbreak"));
        assert_eq!(value(&all, "bms_up", &[("device", name)]), Some(1.0));
    }

    #[test]
    fn sensor_labels_match_the_model_spelling() {
        for sensor in [SensorId::Probe(1), SensorId::Probe(12), SensorId::Mosfet, SensorId::Ambient, SensorId::Board] {
            let s = status(
                "d",
                vec![{
                    let mut p = PackSnapshot::new(1);
                    p.temperatures = vec![Temperature { sensor, celsius: 1.0 }];
                    p
                }],
                true,
            );
            let all = samples(&body(&[view("d", Some(&s), true)]));
            assert_eq!(series(&all, "bms_temperature_celsius")[0].label("sensor"), Some(sensor.label().as_str()));
        }
    }

    #[test]
    fn the_mqtt_families_follow_the_table_only_when_the_publisher_runs() {
        use crate::metrics::{MqttView, render_with};
        let s = status("d", vec![rich_pack(1)], true);
        let views = [view("d", Some(&s), true)];
        let without = body(&views);
        assert!(!without.contains("bms_mqtt"), "{without}");

        let mqtt = MqttView {
            connected: true,
            messages_published: 12,
            publish_bytes: 3456,
            connection_errors: 2,
            last_publish_unix: Some(1_700_000_000.25),
            commands: [3, 0, 7, 1, 0],
        };
        let mut with = String::new();
        render_with(&views, Some(&mqtt), &mut with).unwrap();
        // The same body up to `# EOF`, then the publisher's families in the order of their table.
        let head = without.strip_suffix("# EOF\n").unwrap();
        let tail = with.strip_prefix(head).expect("the MQTT families come after every other family");
        let types: Vec<&str> = tail.lines().filter_map(|l| l.strip_prefix("# TYPE ")).collect();
        let expected: Vec<String> = names::MQTT.iter().map(|m| format!("{} {}", m.family(), m.kind.as_str())).collect();
        assert_eq!(types, expected);
        let all = samples(tail);
        assert_eq!(value(&all, "bms_mqtt_connected", &[]), Some(1.0));
        assert_eq!(value(&all, "bms_mqtt_messages_published_total", &[]), Some(12.0));
        assert_eq!(value(&all, "bms_mqtt_publish_bytes_total", &[]), Some(3456.0));
        assert_eq!(value(&all, "bms_mqtt_connection_errors_total", &[]), Some(2.0));
        assert_eq!(value(&all, "bms_mqtt_last_publish_timestamp_seconds", &[]), Some(1_700_000_000.25));
        assert!(tail.contains("\nbms_mqtt_connected 1\n"), "no labels, no braces:\n{tail}");
        for (result, want) in [("refused", 3.0), ("duplicate", 0.0), ("obeyed", 7.0), ("ignored_by_bms", 1.0)] {
            assert_eq!(value(&all, "bms_mqtt_commands_total", &[("result", result)]), Some(want), "{result}");
        }
        assert_eq!(value(&all, "bms_mqtt_commands_total", &[("result", "failed")]), Some(0.0));

        // Before the first publish the timestamp has no series (its family is still declared).
        let mut first = String::new();
        render_with(&views, Some(&MqttView::default()), &mut first).unwrap();
        assert!(first.contains("# TYPE bms_mqtt_last_publish_timestamp_seconds gauge"));
        assert!(!first.contains("\nbms_mqtt_last_publish_timestamp_seconds "), "{first}");
        assert!(first.contains("\nbms_mqtt_connected 0\n"));
        // Every command result is there from the start, at 0.
        for result in names::MQTT_COMMAND_RESULTS {
            assert!(first.contains(&format!("\nbms_mqtt_commands_total{{result=\"{result}\"}} 0\n")), "{first}");
        }
    }
    fn render_in(format: crate::metrics::Format, views: &[DeviceView<'_>], exporter: &ExporterView) -> String {
        let mut out = String::new();
        crate::metrics::render_as(format, views, exporter, &mut out).unwrap();
        out
    }

    #[test]
    fn process_families_come_last_and_leave_out_what_was_not_read() {
        use crate::metrics::Format;
        let s = status("d", vec![rich_pack(1)], true);
        let views = [view("d", Some(&s), true)];
        let process = ProcessView {
            cpu_seconds: Some(1.25),
            max_fds: Some(1024),
            open_fds: Some(9),
            resident_memory_bytes: Some(20_000_000),
            start_time_seconds: Some(1_700_000_000.5),
            virtual_memory_bytes: None,
            virtual_memory_max_bytes: Some(u64::MAX),
        };
        let exporter =
            ExporterView { mqtt: Some(MqttView::default()), process: Some(process), ..ExporterView::default() };
        let text = render_in(Format::OpenMetrics, &views, &exporter);
        let types: Vec<&str> = text.lines().filter_map(|l| l.strip_prefix("# TYPE ")).collect();
        let expected: Vec<String> = names::ALL
            .iter()
            .chain(names::MQTT)
            .chain(names::PROCESS)
            .map(|m| format!("{} {}", m.family(), m.kind.as_str()))
            .collect();
        assert_eq!(types, expected, "the table's order: devices, MQTT, process");
        let all = samples(&text);
        assert_eq!(value(&all, "process_cpu_seconds_total", &[]), Some(1.25));
        assert_eq!(value(&all, "process_max_fds", &[]), Some(1024.0));
        assert_eq!(value(&all, "process_open_fds", &[]), Some(9.0));
        assert_eq!(value(&all, "process_resident_memory_bytes", &[]), Some(20_000_000.0));
        assert_eq!(value(&all, "process_start_time_seconds", &[]), Some(1_700_000_000.5));
        assert_eq!(value(&all, "process_virtual_memory_bytes", &[]), None, "not read: no series");
        assert!(text.contains("# TYPE process_virtual_memory_bytes gauge\n"), "the family is still declared");
        assert_eq!(value(&all, "process_virtual_memory_max_bytes", &[]), Some(u64::MAX as f64), "unlimited");
        assert!(text.contains("\nprocess_open_fds 9\n"), "integers as integers:\n{text}");

        // Nothing read at all: every family declared, no series; no view: no families.
        let none = render_in(
            Format::OpenMetrics,
            &views,
            &ExporterView { process: Some(ProcessView::default()), ..ExporterView::default() },
        );
        assert!(samples(&none).iter().all(|s| !s.name.starts_with("process_")));
        assert_eq!(none.matches("# TYPE process_").count(), names::PROCESS.len());
        assert!(!body(&views).contains("process_"));
    }

    #[test]
    fn the_text_body_has_the_openmetrics_samples_under_text_declarations() {
        use crate::metrics::Format;
        let rack = status("rack", vec![rich_pack(1), rich_pack(2)], true);
        let views = [view("rack", Some(&rack), true), view("new", None, false)];
        let exporter = ExporterView {
            mqtt: Some(MqttView { connected: true, ..MqttView::default() }),
            reload: Some(ReloadView { successful: true, last_success_unix: 1_700_000_000.0 }),
            process: Some(ProcessView { open_fds: Some(7), cpu_seconds: Some(0.5), ..ProcessView::default() }),
        };
        let openmetrics = render_in(Format::OpenMetrics, &views, &exporter);
        let text = render_in(Format::Text, &views, &exporter);
        assert!(!text.contains("# EOF") && !text.contains("# UNIT "), "{text}");
        // The same sample lines, in the same order.
        let sample_lines =
            |body: &str| -> Vec<String> { body.lines().filter(|l| !l.starts_with('#')).map(str::to_owned).collect() };
        assert_eq!(sample_lines(&text), sample_lines(&openmetrics));
        // Each family declared under the name its samples carry; info as gauge.
        let types: Vec<String> = text.lines().filter_map(|l| l.strip_prefix("# TYPE ")).map(str::to_owned).collect();
        let expected: Vec<String> = names::every()
            .map(|m| {
                let kind = if m.kind == Kind::Info { "gauge" } else { m.kind.as_str() };
                format!("{} {kind}", m.name)
            })
            .collect();
        assert_eq!(types, expected);
        for m in names::every() {
            assert!(text.contains(&format!("# HELP {} {}\n# TYPE {} ", m.name, m.help, m.name)), "{}", m.name);
        }
    }

    #[test]
    fn the_reload_families_follow_the_mqtt_ones_and_only_when_given() {
        use crate::metrics::{Format, MqttView, ReloadView, render_with};
        let s = status("d", vec![rich_pack(1)], true);
        let views = [view("d", Some(&s), true)];
        let mut without = String::new();
        render_with(&views, Some(&MqttView::default()), &mut without).unwrap();
        assert!(!without.contains("bms_exporter_config"), "{without}");

        let reload = ReloadView { successful: false, last_success_unix: 1_700_000_000.5 };
        let mut with = String::new();
        let exporter =
            ExporterView { mqtt: Some(MqttView::default()), reload: Some(reload), ..ExporterView::default() };
        crate::metrics::render_as(Format::OpenMetrics, &views, &exporter, &mut with).unwrap();
        let head = without.strip_suffix("# EOF\n").unwrap();
        let tail = with.strip_prefix(head).expect("the reload families come after every other family");
        let types: Vec<&str> = tail.lines().filter_map(|l| l.strip_prefix("# TYPE ")).collect();
        let expected: Vec<String> =
            names::RELOAD.iter().map(|m| format!("{} {}", m.family(), m.kind.as_str())).collect();
        assert_eq!(types, expected);
        assert!(tail.contains("\nbms_exporter_config_last_reload_successful 0\n"), "{tail}");
        assert!(tail.contains("\nbms_exporter_config_last_reload_success_timestamp_seconds 1700000000.5\n"), "{tail}");
        assert!(tail.contains("# UNIT bms_exporter_config_last_reload_success_timestamp_seconds seconds"), "{tail}");
        assert!(tail.ends_with("# EOF\n"));
    }
}
