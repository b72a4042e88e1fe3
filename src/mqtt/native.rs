//! The `native` layout: this project's own MQTT topic tree, one JSON state message per pack, and per-entity
//! Home Assistant discovery for it (in [`discovery`](mod@self::discovery)).
//!
//! The tree, under the configured `topic_prefix` (`bms` by default):
//!
//! | topic | retained | payload |
//! |---|---|---|
//! | `<prefix>/status` | yes | `online` / `offline`: the exporter's birth message and its last will |
//! | `<prefix>/<device>/availability` | yes | `online` / `offline`: follows `bms_up` of the device (the publisher sends it when it changes) |
//! | `<prefix>/<device>/<NN>/state` | no | one JSON object per pack (`NN` = pack number, two digits) |
//!
//! One message per pack per interval keeps the broker's load at (devices × packs) messages, not one per value;
//! Home Assistant picks single values out of it with `value_template`.
//!
//! The state object uses the key names of `read`'s JSON (the unit in the name: SI base units, capacities in
//! ampere-hours, ratios 0–1, current positive while charging), flattened into one level per pack:
//!
//! | keys | from |
//! |---|---|
//! | `pack`, `online` | the pack number; false for a pack the device lists but that does not report |
//! | `voltage_volts`, `current_amperes`, `power_watts`, `state_of_charge_ratio`, `state_of_health_ratio` | `soc` |
//! | `remaining_capacity_ampere_hours`, `full_capacity_ampere_hours`, `design_capacity_ampere_hours`, `cycle_count` | capacities |
//! | `state`, `charge_mosfet_enabled`, `discharge_mosfet_enabled`, `charger_connected`, `load_connected`, `digital_io` | `mosfet`, `status` |
//! | `cell_count`, `temperature_sensor_count` | `status` |
//! | `cells` (`{"01": 3.301, …}`), `lowest_cell_volts`, `lowest_cell`, `highest_cell_volts`, `highest_cell`, `cell_spread_volts` | `cells` |
//! | `balancing_active`, `balancing_cells` (1-based numbers being balanced) | `balancing` |
//! | `temperatures` (`{"01": 21.5, "mosfet": 30.1, …}`, degrees Celsius) | `temperatures` |
//! | `alarms` (active alarm names; Pace cell and sensor levels as `cell_03_above_upper_limit`, `temperature_01_…`) | `alarms` |
//! | `model`, `firmware_version`, `serial_number` | `info` |
//! | `charged_kilowatt_hours`, `discharged_kilowatt_hours`, `charged_ampere_hours`, `discharged_ampere_hours` | the exporter's energy integration |
//!
//! A value the device has not reported is left out, never sent as a guess or as `null`: the templates treat a
//! missing key as unknown. Derived values (power, spread, energy) are rounded to a resolution finer than any
//! protocol reports, so binary floating-point noise does not reach subscribers.

pub mod discovery;

use serde_json::{Map, Value, json};

use super::{DeviceView, Message};
use crate::config::mqtt::MqttConfig;
use crate::model::PackSnapshot;
use crate::model::energy::PackEnergy;
use crate::output::{cell_extremes, round_to};

/// Payload of the exporter and availability topics while up.
const ONLINE: &str = "online";
/// Payload of the exporter and availability topics while down (also the last will).
const OFFLINE: &str = "offline";
/// Joules in one kilowatt-hour.
const JOULES_PER_KILOWATT_HOUR: f64 = 3_600_000.0;

/// The exporter's birth message: retained `online` on `<prefix>/status`.
#[must_use]
pub fn birth(config: &MqttConfig) -> Option<Message> {
    Some(Message::retained(status_topic(config), ONLINE))
}

/// The last will, published by the broker when the exporter vanishes: retained `offline` on `<prefix>/status`.
#[must_use]
pub fn will(config: &MqttConfig) -> Option<Message> {
    Some(Message::retained(status_topic(config), OFFLINE))
}

/// State messages of one device for one publish interval: its retained availability, then one JSON state
/// message per pack it has values for.
#[must_use]
pub fn state(config: &MqttConfig, device: &DeviceView<'_>) -> Vec<Message> {
    let availability = if device.up { ONLINE } else { OFFLINE };
    let mut messages = vec![Message::retained(availability_topic(config, device.name), availability)];
    for pack in &device.values.packs {
        let energy = device.energy.iter().find(|e| e.pack == pack.pack);
        let payload = pack_state(pack, energy).to_string();
        messages.push(Message::new(state_topic(config, device.name, pack.pack), payload));
    }
    messages
}

/// Home Assistant discovery configs of one device (retained); see [`discovery::configs`].
#[must_use]
pub fn discovery(config: &MqttConfig, device: &DeviceView<'_>) -> Vec<Message> {
    discovery::configs(config, device)
}

/// `<prefix>/status`: the exporter's own availability.
#[must_use]
pub fn status_topic(config: &MqttConfig) -> String {
    format!("{}/status", config.topic_prefix)
}

/// `<prefix>/<device>/availability`: whether the device answers (`bms_up`).
#[must_use]
pub fn availability_topic(config: &MqttConfig, device: &str) -> String {
    format!("{}/{device}/availability", config.topic_prefix)
}

/// `<prefix>/<device>/<NN>/state`: the JSON state of one pack.
#[must_use]
pub fn state_topic(config: &MqttConfig, device: &str, pack: u8) -> String {
    format!("{}/{device}/{}/state", config.topic_prefix, pack_label(pack))
}

/// The pack number as it appears in topics and ids: at least two digits (`01`).
#[must_use]
pub fn pack_label(pack: u8) -> String {
    format!("{pack:02}")
}

/// A 1-based cell number as a key of `cells`: at least two digits (`01`), like the `cell` label of the metrics.
#[must_use]
pub fn cell_label(cell: usize) -> String {
    format!("{cell:02}")
}

/// The active alarm names of a pack, in the protocol's table order and without repeats, followed by the
/// per-cell and per-sensor levels (Pace) named after their cell or sensor. `None` when no alarm table was read.
#[must_use]
pub fn active_alarms(pack: &PackSnapshot) -> Option<Vec<String>> {
    if pack.alarms.is_empty() && pack.cell_alarms.is_empty() && pack.temperature_alarms.is_empty() {
        return None;
    }
    let mut names: Vec<String> = Vec::new();
    let flags = pack.alarms.iter().filter(|a| a.active).map(|a| a.name.to_owned());
    let cells =
        pack.cell_alarms.iter().map(|l| format!("cell_{}_{}", cell_label(usize::from(l.index)), l.kind.as_str()));
    let sensors = pack
        .temperature_alarms
        .iter()
        .map(|l| format!("temperature_{}_{}", cell_label(usize::from(l.index)), l.kind.as_str()));
    for name in flags.chain(cells).chain(sensors) {
        if !names.contains(&name) {
            names.push(name);
        }
    }
    Some(names)
}

/// The JSON state object of one pack: every value it has, nothing it lacks.
#[must_use]
pub fn pack_state(pack: &PackSnapshot, energy: Option<&PackEnergy>) -> Value {
    let mut state = Map::new();
    state.insert("pack".to_owned(), json!(pack.pack));
    state.insert("online".to_owned(), json!(pack.online));
    put_scalars(&mut state, pack);
    put_cells(&mut state, pack);
    let temperatures: Map<String, Value> = pack
        .temperatures
        .iter()
        .filter(|t| t.celsius.is_finite())
        .map(|t| (t.sensor.label(), json!(t.celsius)))
        .collect();
    if !temperatures.is_empty() {
        state.insert("temperatures".to_owned(), Value::Object(temperatures));
    }
    if let Some(alarms) = active_alarms(pack) {
        state.insert("alarms".to_owned(), json!(alarms));
    }
    let identity = [
        ("model", &pack.info.model),
        ("firmware_version", &pack.info.firmware_version),
        ("serial_number", &pack.info.serial_number),
    ];
    for (key, value) in identity {
        if let Some(text) = value {
            state.insert(key.to_owned(), json!(text));
        }
    }
    if let Some(e) = energy {
        let totals = [
            // Milliwatt-hour and tenth-of-a-milliampere-hour resolution: far below what a poll interval can resolve.
            ("charged_kilowatt_hours", round_to(e.charged_joules / JOULES_PER_KILOWATT_HOUR, 6)),
            ("discharged_kilowatt_hours", round_to(e.discharged_joules / JOULES_PER_KILOWATT_HOUR, 6)),
            ("charged_ampere_hours", round_to(e.charged_ampere_hours, 4)),
            ("discharged_ampere_hours", round_to(e.discharged_ampere_hours, 4)),
        ];
        for (key, value) in totals.into_iter().filter(|(_, v)| v.is_finite()) {
            state.insert(key.to_owned(), json!(value));
        }
    }
    Value::Object(state)
}

/// The pack's single values: measurements, capacities, counters, operating state and flags.
fn put_scalars(state: &mut Map<String, Value>, pack: &PackSnapshot) {
    let numbers = [
        ("voltage_volts", pack.voltage_volts),
        ("current_amperes", pack.current_amperes),
        // Milliwatt resolution: volts × amperes carries no more.
        ("power_watts", pack.power_watts().map(|w| round_to(w, 3))),
        ("state_of_charge_ratio", pack.state_of_charge_ratio),
        ("state_of_health_ratio", pack.state_of_health_ratio),
        ("remaining_capacity_ampere_hours", pack.remaining_capacity_ampere_hours),
        ("full_capacity_ampere_hours", pack.full_capacity_ampere_hours),
        ("design_capacity_ampere_hours", pack.design_capacity_ampere_hours),
    ];
    for (key, value) in numbers {
        if let Some(v) = finite(value) {
            state.insert(key.to_owned(), json!(v));
        }
    }
    let counts = [
        ("cycle_count", pack.cycle_count),
        ("cell_count", pack.cell_count.map(u32::from)),
        ("temperature_sensor_count", pack.temperature_sensor_count.map(u32::from)),
    ];
    for (key, value) in counts {
        if let Some(n) = value {
            state.insert(key.to_owned(), json!(n));
        }
    }
    if let Some(s) = pack.state {
        state.insert("state".to_owned(), json!(s.as_str()));
    }
    let flags = [
        ("charge_mosfet_enabled", pack.charge_mosfet_enabled),
        ("discharge_mosfet_enabled", pack.discharge_mosfet_enabled),
        ("charger_connected", pack.charger_connected),
        ("load_connected", pack.load_connected),
        ("balancing_active", balancing_active(pack)),
    ];
    for (key, value) in flags {
        if let Some(v) = value {
            state.insert(key.to_owned(), json!(v));
        }
    }
    if !pack.digital_io.is_empty() {
        let ports = pack.digital_io.iter().map(|p| (p.port.to_owned(), json!(p.active))).collect();
        state.insert("digital_io".to_owned(), Value::Object(ports));
    }
}

/// The cell voltages keyed by label, the extremes and spread, and which cells are being balanced.
fn put_cells(state: &mut Map<String, Value>, pack: &PackSnapshot) {
    let cells: Map<String, Value> = pack
        .cell_volts
        .iter()
        .enumerate()
        .filter_map(|(i, v)| finite(*v).map(|v| (cell_label(i + 1), json!(v))))
        .collect();
    if !cells.is_empty() {
        state.insert("cells".to_owned(), Value::Object(cells));
    }
    if let Some(((lo, lo_cell), (hi, hi_cell))) =
        cell_extremes(pack).filter(|((lo, _), (hi, _))| lo.is_finite() && hi.is_finite())
    {
        state.insert("lowest_cell_volts".to_owned(), json!(lo));
        state.insert("lowest_cell".to_owned(), json!(lo_cell));
        state.insert("highest_cell_volts".to_owned(), json!(hi));
        state.insert("highest_cell".to_owned(), json!(hi_cell));
        // Tenth-of-a-millivolt resolution hides the subtraction's float noise; cells report whole millivolts.
        state.insert("cell_spread_volts".to_owned(), json!(round_to(hi - lo, 4)));
    }
    if !pack.cell_balancing.is_empty() {
        let numbers: Vec<usize> =
            pack.cell_balancing.iter().enumerate().filter(|(_, on)| **on).map(|(i, _)| i + 1).collect();
        state.insert("balancing_cells".to_owned(), json!(numbers));
    }
}

/// Whether the balancer is active: the device's own flag, else whether any cell's balancing flag is set (a
/// device that reports flags per cell reports them all, so none set means the balancer is idle).
fn balancing_active(pack: &PackSnapshot) -> Option<bool> {
    pack.balancing_active.or_else(|| (!pack.cell_balancing.is_empty()).then(|| pack.cell_balancing.contains(&true)))
}

/// A value that JSON can carry: JSON has no NaN or infinity, and an unusable reading is no reading.
fn finite(value: Option<f64>) -> Option<f64> {
    value.filter(|v| v.is_finite())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::config::mqtt::{Broker, Layout};
    use crate::model::{
        Alarm, AlarmSeverity, DeviceSnapshot, DigitalPort, LevelAlarm, LevelAlarmKind, PackState, SensorId, Temperature,
    };
    use crate::protocol::Protocol;

    pub(crate) fn config(control: bool) -> MqttConfig {
        MqttConfig {
            control,
            ..MqttConfig::with_defaults(
                Broker { tls: false, host: "127.0.0.1".to_owned(), port: 1883 },
                "bms_exporter-test",
                Layout::Native,
            )
        }
    }

    /// A Daly board with everything it can report: 16 cells, 2 probes plus the MOSFET sensor, alarms.
    pub(crate) fn daly() -> DeviceSnapshot {
        let mut device = DeviceSnapshot::default();
        let p = device.pack_mut(1);
        p.voltage_volts = Some(52.8);
        p.current_amperes = Some(-12.3);
        p.state_of_charge_ratio = Some(0.619);
        p.remaining_capacity_ampere_hours = Some(173.4);
        p.cycle_count = Some(42);
        p.state = Some(PackState::Discharging);
        p.charge_mosfet_enabled = Some(true);
        p.discharge_mosfet_enabled = Some(true);
        p.charger_connected = Some(false);
        p.load_connected = Some(true);
        p.digital_io = vec![DigitalPort { port: "di1", active: true }, DigitalPort { port: "do1", active: false }];
        p.cell_count = Some(16);
        p.temperature_sensor_count = Some(2);
        p.cell_volts = (0..16).map(|i| Some(f64::from(3300 + i) / 1000.0)).collect();
        p.cell_volts[4] = Some(3.401);
        p.cell_balancing = (0..16).map(|i| i == 4).collect();
        p.balancing_active = Some(true);
        p.temperatures = vec![
            Temperature { sensor: SensorId::Probe(1), celsius: 21.0 },
            Temperature { sensor: SensorId::Probe(2), celsius: 22.5 },
            Temperature { sensor: SensorId::Mosfet, celsius: 30.5 },
        ];
        p.set_alarms([
            Alarm::new("cell_voltage_high_l1", AlarmSeverity::Warning, true),
            Alarm::new("cell_voltage_high_l2", AlarmSeverity::Protection, false),
            Alarm::new("charge_overcurrent_l1", AlarmSeverity::Warning, true),
        ]);
        p.info.model = Some("DL-16S".to_owned());
        p.info.firmware_version = Some("20210222-1.01T".to_owned());
        p.info.serial_number = Some("SN123".to_owned());
        device
    }

    /// A Pace master with two packs of 16 cells, 6 sensors, level alarms on pack 2.
    pub(crate) fn pace() -> DeviceSnapshot {
        let mut device = DeviceSnapshot::default();
        for number in 1..=2u8 {
            let p = device.pack_mut(number);
            p.voltage_volts = Some(53.1);
            p.current_amperes = Some(4.2);
            p.state_of_charge_ratio = Some(0.85);
            p.state_of_health_ratio = Some(1.0);
            p.remaining_capacity_ampere_hours = Some(85.0);
            p.full_capacity_ampere_hours = Some(100.0);
            p.design_capacity_ampere_hours = Some(100.0);
            p.cycle_count = Some(7);
            p.state = Some(PackState::Charging);
            p.charge_mosfet_enabled = Some(true);
            p.discharge_mosfet_enabled = Some(true);
            p.cell_count = Some(16);
            p.temperature_sensor_count = Some(6);
            p.cell_volts = (0..16).map(|_| Some(3.318)).collect();
            p.cell_balancing = vec![false; 16];
            p.temperatures = (1..=4)
                .map(|n| Temperature { sensor: SensorId::Probe(n), celsius: 24.0 })
                .chain([
                    Temperature { sensor: SensorId::Mosfet, celsius: 27.0 },
                    Temperature { sensor: SensorId::Ambient, celsius: 20.0 },
                ])
                .collect();
            p.set_alarms([Alarm::new("fully_charged", AlarmSeverity::Info, false)]);
            p.info.model = Some("PACE-48V100".to_owned());
            p.info.firmware_version = Some("P16S100A-1.2".to_owned());
            p.info.serial_number = Some(format!("PACK{number}"));
        }
        device.packs[1].cell_alarms = vec![LevelAlarm { index: 3, kind: LevelAlarmKind::AboveUpperLimit }];
        device.packs[1].temperature_alarms = vec![LevelAlarm { index: 1, kind: LevelAlarmKind::BelowLowerLimit }];
        device
    }

    pub(crate) fn energy(pack: u8) -> PackEnergy {
        PackEnergy {
            pack,
            charged_joules: 3_600_000.0 * 1.25 + 0.1,
            discharged_joules: 3_600_000.0 * 0.5,
            charged_ampere_hours: 24.1 + 0.000_001,
            discharged_ampere_hours: 9.6,
        }
    }

    pub(crate) fn view<'a>(
        name: &'a str,
        protocol: Protocol,
        values: &'a DeviceSnapshot,
        energy: &'a [PackEnergy],
    ) -> DeviceView<'a> {
        DeviceView { name, protocol, up: true, values, energy }
    }

    fn parse(message: &Message) -> Value {
        serde_json::from_str(&message.payload).unwrap()
    }

    #[test]
    fn birth_and_will_are_retained_on_the_status_topic() {
        let config = config(false);
        assert_eq!(birth(&config), Some(Message::retained("bms/status", "online")));
        assert_eq!(will(&config), Some(Message::retained("bms/status", "offline")));
    }

    #[test]
    fn availability_follows_up_and_is_retained_state_is_not() {
        let config = config(false);
        let values = daly();
        let mut device = view("garage", Protocol::Daly, &values, &[]);
        let messages = state(&config, &device);
        assert_eq!(messages.len(), 2);
        assert_eq!(messages[0], Message::retained("bms/garage/availability", "online"));
        assert_eq!(messages[1].topic, "bms/garage/01/state");
        assert!(!messages[1].retain);
        device.up = false;
        assert_eq!(state(&config, &device)[0], Message::retained("bms/garage/availability", "offline"));
    }

    #[test]
    fn a_daly_pack_state_holds_every_value_with_unit_keys() {
        let config = config(false);
        let values = daly();
        let energy = [energy(1)];
        let messages = state(&config, &view("garage", Protocol::Daly, &values, &energy));
        let s = parse(&messages[1]);
        assert_eq!(s["pack"], 1);
        assert_eq!(s["online"], true);
        assert_eq!(s["voltage_volts"], 52.8);
        assert_eq!(s["current_amperes"], -12.3);
        // 52.8 × -12.3 is -649.4399999999999 in binary floating point.
        assert_eq!(s["power_watts"], -649.44);
        assert_eq!(s["state_of_charge_ratio"], 0.619);
        assert_eq!(s["remaining_capacity_ampere_hours"], 173.4);
        assert_eq!(s["cycle_count"], 42);
        assert_eq!(s["state"], "discharging");
        assert_eq!(s["charge_mosfet_enabled"], true);
        assert_eq!(s["charger_connected"], false);
        assert_eq!(s["load_connected"], true);
        assert_eq!(s["digital_io"], json!({"di1": true, "do1": false}));
        assert_eq!(s["cell_count"], 16);
        assert_eq!(s["cells"].as_object().unwrap().len(), 16);
        assert_eq!(s["cells"]["01"], 3.3);
        assert_eq!(s["cells"]["02"], 3.301);
        assert_eq!(s["cells"]["16"], 3.315);
        assert_eq!(s["lowest_cell_volts"], 3.3);
        assert_eq!(s["lowest_cell"], 1);
        assert_eq!(s["highest_cell_volts"], 3.401);
        assert_eq!(s["highest_cell"], 5);
        // 3.401 - 3.3 is 0.10099999999999998 in binary floating point.
        assert_eq!(s["cell_spread_volts"], 0.101);
        assert_eq!(s["balancing_active"], true);
        assert_eq!(s["balancing_cells"], json!([5]));
        assert_eq!(s["temperatures"], json!({"01": 21.0, "02": 22.5, "mosfet": 30.5}));
        assert_eq!(s["alarms"], json!(["cell_voltage_high_l1", "charge_overcurrent_l1"]));
        assert_eq!(s["model"], "DL-16S");
        assert_eq!(s["serial_number"], "SN123");
        assert_eq!(s["charged_kilowatt_hours"], 1.25);
        assert_eq!(s["discharged_kilowatt_hours"], 0.5);
        assert_eq!(s["charged_ampere_hours"], 24.1);
        assert_eq!(s["discharged_ampere_hours"], 9.6);
        // Daly reports neither health nor full/design capacity: absent, not null.
        for key in ["state_of_health_ratio", "full_capacity_ampere_hours", "design_capacity_ampere_hours"] {
            assert!(s.get(key).is_none(), "{key} must be left out");
        }
    }

    #[test]
    fn a_pace_device_sends_one_state_per_pack_with_level_alarms_named() {
        let config = config(false);
        let values = pace();
        let messages = state(&config, &view("rack", Protocol::Pace, &values, &[]));
        let topics: Vec<&str> = messages.iter().map(|m| m.topic.as_str()).collect();
        assert_eq!(topics, ["bms/rack/availability", "bms/rack/01/state", "bms/rack/02/state"]);
        let first = parse(&messages[1]);
        let second = parse(&messages[2]);
        assert_eq!(first["pack"], 1);
        assert_eq!(first["alarms"], json!([]));
        assert_eq!(first["state_of_health_ratio"], 1.0);
        assert_eq!(first["design_capacity_ampere_hours"], 100.0);
        // Per-cell flags, none set: the balancer is idle.
        assert_eq!(first["balancing_active"], false);
        assert_eq!(first["balancing_cells"], json!([]));
        assert_eq!(first["temperatures"]["ambient"], 20.0);
        assert_eq!(second["alarms"], json!(["cell_03_above_upper_limit", "temperature_01_below_lower_limit"]));
        assert_eq!(second["serial_number"], "PACK2");
        assert!(first.get("charged_kilowatt_hours").is_none(), "no energy integrated, none invented");
    }

    #[test]
    fn an_empty_pack_has_only_its_number_and_unread_values_are_left_out() {
        let mut device = DeviceSnapshot::default();
        let p = device.pack_mut(3);
        p.online = false;
        p.voltage_volts = Some(f64::NAN);
        p.cell_volts = vec![None, Some(3.2)];
        let s = pack_state(&device.packs[0], None);
        assert_eq!(
            s,
            json!({
                "pack": 3, "online": false, "cells": {"02": 3.2}, "lowest_cell_volts": 3.2, "lowest_cell": 2,
                "highest_cell_volts": 3.2, "highest_cell": 2, "cell_spread_volts": 0.0,
            })
        );
        let empty = pack_state(&PackSnapshot::new(1), None);
        assert_eq!(empty, json!({"pack": 1, "online": true}));
    }

    #[test]
    fn alarm_names_repeat_once() {
        let mut pack = PackSnapshot::new(1);
        assert_eq!(active_alarms(&pack), None);
        pack.set_alarms([
            Alarm::new("a", AlarmSeverity::Warning, true),
            Alarm::new("a", AlarmSeverity::Warning, true),
            Alarm::new("b", AlarmSeverity::Warning, false),
        ]);
        assert_eq!(active_alarms(&pack), Some(vec!["a".to_owned()]));
    }

    #[test]
    fn topic_helpers_pad_pack_numbers() {
        let config = config(false);
        assert_eq!(state_topic(&config, "x", 7), "bms/x/07/state");
        assert_eq!(state_topic(&config, "x", 12), "bms/x/12/state");
        assert_eq!(availability_topic(&config, "x"), "bms/x/availability");
        assert_eq!(status_topic(&config), "bms/status");
    }
}
