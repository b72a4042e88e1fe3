//! The `daly-bms-cli` layout: the topics, payloads and Home Assistant discovery of python-daly-bms 0.5.0's
//! `daly-bms-cli --all --mqtt [--mqtt-hass]`, so that a cron job running it can be replaced without Home
//! Assistant losing an entity or its history.
//!
//! What the tool does, and so what this layout does:
//! - State: the document `--all` prints (rendered by [`crate::output::daly_cli`]) is walked leaf by leaf; a leaf
//!   at `/<section>/<key>` (deeper for `status/states/DI1`) goes to `<topic_prefix><path>`, e.g.
//!   `daly_bms/soc/soc_percent`. The payload is what paho-mqtt makes of the Python value: `str()` of a number
//!   (`52.6`, `53.0`, `16`), `True`/`False`, the text of a string, an empty payload for `None`, and a list as
//!   `json.dumps` writes it (`[]`, `["a", "b"]`). A section the BMS did not answer is one leaf whose payload is
//!   `False`, as the tool publishes it. Not retained. The tool publishes at QoS 0; `qos: 0` matches it.
//!   The values are those `read --format daly-bms-cli` prints, with the deviations listed there (which cell a
//!   range names on a tie, the sign of the current on discharge-positive boards unless configured).
//! - Discovery: before each leaf the tool sends a retained config to
//!   `homeassistant/sensor/daly_bms/<path, / → _>/config` (here `<discovery prefix>/…`) with `unique_id`
//!   `daly_bms_<path, / → _>` (so `daly_bms__soc_soc_percent`), `name` `Daly BMS <path, / → space>`,
//!   `json_attributes_topic` and `state_topic` the state topic, one fixed device, and a device class and unit
//!   chosen by words in the path. The `daly_bms` in the config topic and unique ids is fixed in the tool: it does
//!   not follow the base topic. Payloads are byte for byte the tool's (`json.dumps`: key order, `\u00b0C`).
//! - No birth message and no last will: the tool has neither, and inventing an availability topic would make
//!   Home Assistant mark the old entities unavailable whenever it is missing.
//!
//! Decisions where the tool has no answer:
//! - Several packs on one device (Daly boards on one bus, Pace packs behind a master): the tool knows one BMS.
//!   Pack 1 is published exactly where the tool publishes; every other pack `n` as if the document had one more
//!   section `pack_<n>` holding its own document: `daly_bms/pack_2/soc/soc_percent`, unique id
//!   `daly_bms__pack_2_soc_soc_percent`. Pack 1 keeps the tool's topics, and no pack is silently dropped. A
//!   device without a pack 1 publishes nothing at the tool's own topics rather than another pack's values there.
//! - A device that is down publishes nothing (the tool, run from cron against a silent BMS, fails before it
//!   publishes): Home Assistant keeps the last values rather than seeing a tree of `False`.

use super::python::{PyValue, float_str};
use super::{DeviceView, Message};
use crate::config::mqtt::MqttConfig;
use crate::output::daly_cli;
use serde_json::Value;

/// The node id and unique-id prefix the tool fixes in its discovery, whatever its base topic.
const NODE: &str = "daly_bms";

/// Keys in the order the tool's dicts hold them (`get_all` and each section's reader), so leaves go out in the
/// tool's order; numbered keys (cells, probes) follow in numeric order, anything else after them by name.
const KEY_ORDER: [&str; 39] = [
    "soc",
    "cell_voltage_range",
    "temperature_range",
    "mosfet_status",
    "status",
    "cell_voltages",
    "temperatures",
    "balancing_status",
    "errors",
    "total_voltage",
    "current",
    "soc_percent",
    "highest_voltage",
    "highest_cell",
    "lowest_voltage",
    "lowest_cell",
    "highest_temperature",
    "highest_sensor",
    "lowest_temperature",
    "lowest_sensor",
    "mode",
    "charging_mosfet",
    "discharging_mosfet",
    "capacity_ah",
    "cells",
    "temperature_sensors",
    "charger_running",
    "load_running",
    "states",
    "cycles",
    "DI1",
    "DI2",
    "DI3",
    "DI4",
    "DO1",
    "DO2",
    "DO3",
    "DO4",
    "error",
];

/// One published value: its path below the base topic (`/soc/soc_percent`) and its payload.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Leaf {
    path: String,
    payload: String,
}

/// The exporter's birth message: none, as the tool has none.
#[must_use]
pub fn birth(_config: &MqttConfig) -> Option<Message> {
    None
}

/// The last will: none, as the tool has none.
#[must_use]
pub fn will(_config: &MqttConfig) -> Option<Message> {
    None
}

/// State messages of one device: one unretained message per leaf of its `--all` document(s).
#[must_use]
pub fn state(config: &MqttConfig, device: &DeviceView<'_>) -> Vec<Message> {
    leaves(device).into_iter().map(|leaf| Message::new(state_topic(config, &leaf.path), leaf.payload)).collect()
}

/// Home Assistant discovery configs of one device: the tool's retained sensor config for every leaf.
#[must_use]
pub fn discovery(config: &MqttConfig, device: &DeviceView<'_>) -> Vec<Message> {
    leaves(device).iter().map(|leaf| sensor_config(config, &leaf.path)).collect()
}

/// The tool's messages in the tool's order: with `hass`, each leaf's config right before its value.
#[must_use]
pub fn interleaved(config: &MqttConfig, device: &DeviceView<'_>, hass: bool) -> Vec<Message> {
    let mut out = Vec::new();
    for leaf in leaves(device) {
        if hass {
            out.push(sensor_config(config, &leaf.path));
        }
        out.push(Message::new(state_topic(config, &leaf.path), leaf.payload));
    }
    out
}

fn state_topic(config: &MqttConfig, path: &str) -> String {
    format!("{}{path}", config.topic_prefix)
}

/// Every leaf of the device's documents: pack 1 at the root, other packs under `/pack_<n>`.
fn leaves(device: &DeviceView<'_>) -> Vec<Leaf> {
    let mut out = Vec::new();
    if !device.up {
        return out;
    }
    for pack in &device.values.packs {
        let base = if pack.pack == 1 { String::new() } else { format!("/pack_{}", pack.pack) };
        walk(&daly_cli::render(device.values, pack.pack), &base, &mut out);
    }
    out
}

/// The tool's `mqtt_iterator`: recurse into objects, publish everything else.
fn walk(value: &Value, base: &str, out: &mut Vec<Leaf>) {
    let Value::Object(map) = value else { return };
    let mut keys: Vec<&String> = map.keys().collect();
    keys.sort_by(|a, b| order(a).cmp(&order(b)));
    for key in keys {
        let path = format!("{base}/{key}");
        match &map[key.as_str()] {
            child @ Value::Object(_) => walk(child, &path, out),
            leaf => out.push(Leaf { path, payload: payload(leaf) }),
        }
    }
}

/// Sort key of a dict key: known keys in the tool's order, then numbers, then the rest by name.
fn order(key: &str) -> (u8, u64, &str) {
    if let Some(rank) = KEY_ORDER.iter().position(|k| *k == key) {
        return (0, rank as u64, "");
    }
    match key.parse::<u64>() {
        Ok(n) => (1, n, ""),
        Err(_) => (2, 0, key),
    }
}

/// What paho-mqtt 1.x sends for the value the tool passes: `str()` of numbers and booleans (`True`), the text
/// of a string, nothing for `None`; the tool itself turns lists into `json.dumps` text.
fn payload(value: &Value) -> String {
    match value {
        Value::Null => String::new(),
        Value::Bool(b) => if *b { "True" } else { "False" }.to_owned(),
        Value::String(s) => s.clone(),
        Value::Number(_) => match PyValue::from(value) {
            PyValue::Float(x) => float_str(x),
            PyValue::Int(i) => i.to_string(),
            other => other.dumps(),
        },
        Value::Array(_) | Value::Object(_) => PyValue::from(value).dumps(),
    }
}

/// The tool's device class and unit for a path: by words anywhere in it, first match wins. (The tool also has a
/// capacity rule, but it tests the literal text `'base'`, so it never fires; neither does it here.)
fn device_class(path: &str) -> Option<(&'static str, &'static str)> {
    if path.contains("soc_percent") {
        Some(("battery", "%"))
    } else if path.contains("voltage") && !(path.contains("lowest_cell") || path.contains("highest_cell")) {
        Some(("voltage", "V"))
    } else if path.contains("current") {
        Some(("current", "A"))
    } else if path.contains("temperatures") {
        Some(("temperature", "°C"))
    } else {
        None
    }
}

/// The tool's retained discovery config for the leaf at `path`.
fn sensor_config(config: &MqttConfig, path: &str) -> Message {
    let object_id = path.replace('/', "_");
    let state = state_topic(config, path);
    let mut fields = vec![
        ("unique_id", PyValue::str(format!("{NODE}_{object_id}"))),
        ("name", PyValue::str(format!("Daly BMS {}", path.replace('/', " ")))),
    ];
    if let Some((class, unit)) = device_class(path) {
        fields.push(("device_class", PyValue::str(class)));
        fields.push(("unit_of_measurement", PyValue::str(unit)));
    }
    fields.push(("json_attributes_topic", PyValue::str(state.clone())));
    fields.push(("state_topic", PyValue::str(state)));
    let device = PyValue::Dict(
        [
            ("identifiers", PyValue::List(vec![PyValue::str(NODE)])),
            ("manufacturer", PyValue::str("Daly")),
            ("model", PyValue::str("Currently not available")),
            ("name", PyValue::str("Daly BMS")),
            ("sw_version", PyValue::str("Currently not available")),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect(),
    );
    fields.push(("device", device));
    let body = PyValue::Dict(fields.into_iter().map(|(k, v)| (k.to_owned(), v)).collect());
    Message::retained(format!("{}/sensor/{NODE}/{object_id}/config", config.discovery.prefix), body.dumps())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::mqtt::{Broker, Layout};
    use crate::model::{
        Alarm, AlarmSeverity, DeviceSnapshot, DigitalPort, PackSnapshot, PackState, SensorId, Temperature,
    };
    use crate::protocol::Protocol;

    fn config(prefix: &str) -> MqttConfig {
        MqttConfig {
            topic_prefix: prefix.to_owned(),
            qos: 0,
            ..MqttConfig::with_defaults(
                Broker { tls: false, host: "127.0.0.1".to_owned(), port: 1883 },
                "test",
                Layout::DalyBmsCli,
            )
        }
    }

    /// A pack like the simulator's: what a frozen `simulate --protocol daly` reports.
    fn pack(number: u8) -> PackSnapshot {
        let mut p = PackSnapshot::new(number);
        p.voltage_volts = Some(52.6);
        p.current_amperes = Some(-2.5);
        p.state_of_charge_ratio = Some(0.619);
        p.state = Some(PackState::Discharging);
        p.charge_mosfet_enabled = Some(true);
        p.discharge_mosfet_enabled = Some(true);
        p.remaining_capacity_ampere_hours = Some(173.401);
        p.cell_count = Some(2);
        p.temperature_sensor_count = Some(1);
        p.charger_connected = Some(false);
        p.load_connected = Some(true);
        p.digital_io = vec![DigitalPort { port: "di1", active: false }];
        p.cycle_count = Some(42);
        p.cell_volts = vec![Some(3.288), Some(3.3)];
        p.temperatures = vec![Temperature { sensor: SensorId::Probe(1), celsius: 21.0 }];
        p.cell_balancing = vec![false, false];
        p.set_alarms([Alarm::new("soc_low_l1", AlarmSeverity::Warning, false)]);
        p
    }

    fn view(values: &DeviceSnapshot) -> DeviceView<'_> {
        DeviceView { name: "bms", protocol: Protocol::Daly, up: true, values, energy: &[] }
    }

    fn pairs(messages: &[Message]) -> Vec<(String, String, bool)> {
        messages.iter().map(|m| (m.topic.clone(), m.payload.clone(), m.retain)).collect()
    }

    #[test]
    fn state_is_every_leaf_in_the_tools_order_with_python_payloads() {
        let values = DeviceSnapshot { packs: vec![pack(1)] };
        let got = pairs(&state(&config("daly_bms"), &view(&values)));
        let want: Vec<(String, String, bool)> = [
            ("soc/total_voltage", "52.6"),
            ("soc/current", "-2.5"),
            ("soc/soc_percent", "61.9"),
            ("cell_voltage_range/highest_voltage", "3.3"),
            ("cell_voltage_range/highest_cell", "2"),
            ("cell_voltage_range/lowest_voltage", "3.288"),
            ("cell_voltage_range/lowest_cell", "1"),
            ("temperature_range/highest_temperature", "21"),
            ("temperature_range/highest_sensor", "1"),
            ("temperature_range/lowest_temperature", "21"),
            ("temperature_range/lowest_sensor", "1"),
            ("mosfet_status/mode", "discharging"),
            ("mosfet_status/charging_mosfet", "True"),
            ("mosfet_status/discharging_mosfet", "True"),
            ("mosfet_status/capacity_ah", "173.401"),
            ("status/cells", "2"),
            ("status/temperature_sensors", "1"),
            ("status/charger_running", "False"),
            ("status/load_running", "True"),
            ("status/states/DI1", "False"),
            ("status/cycles", "42"),
            ("cell_voltages/1", "3.288"),
            ("cell_voltages/2", "3.3"),
            ("temperatures/1", "21"),
            ("balancing_status/error", "not implemented"),
            ("errors", "[]"),
        ]
        .iter()
        .map(|(path, payload)| (format!("daly_bms/{path}"), (*payload).to_owned(), false))
        .collect();
        assert_eq!(got, want);
    }

    #[test]
    fn whole_floats_keep_their_point_and_lists_are_json() {
        let mut p = pack(1);
        p.voltage_volts = Some(53.0);
        p.state_of_charge_ratio = Some(1.0);
        p.remaining_capacity_ampere_hours = Some(200.0);
        p.set_alarms([
            Alarm::new("soc_low_l1", AlarmSeverity::Warning, true),
            Alarm::new("cell_voltage_low_l2", AlarmSeverity::Protection, true),
        ]);
        let values = DeviceSnapshot { packs: vec![p] };
        let messages = state(&config("daly_bms"), &view(&values));
        let get = |topic: &str| messages.iter().find(|m| m.topic == topic).map(|m| m.payload.as_str());
        assert_eq!(get("daly_bms/soc/total_voltage"), Some("53.0"));
        assert_eq!(get("daly_bms/soc/soc_percent"), Some("100.0"));
        assert_eq!(get("daly_bms/mosfet_status/capacity_ah"), Some("200.0"));
        assert_eq!(
            get("daly_bms/errors"),
            Some(r#"["SOC is too low. level one alarm", "two stage warning of unit over voltage"]"#)
        );
    }

    #[test]
    fn an_unanswered_section_is_one_false_leaf_and_unknown_fields_are_empty() {
        let mut p = PackSnapshot::new(1);
        p.state_of_charge_ratio = Some(0.5);
        let values = DeviceSnapshot { packs: vec![p] };
        let messages = state(&config("daly_bms"), &view(&values));
        let get = |topic: &str| messages.iter().find(|m| m.topic == topic).map(|m| m.payload.as_str());
        assert_eq!(get("daly_bms/soc/soc_percent"), Some("50.0"));
        assert_eq!(get("daly_bms/soc/total_voltage"), Some(""), "None goes out as an empty payload");
        assert_eq!(get("daly_bms/mosfet_status"), Some("False"));
        assert_eq!(get("daly_bms/cell_voltages"), Some("False"));
    }

    #[test]
    fn discovery_is_the_tools_payload_byte_for_byte() {
        let values = DeviceSnapshot { packs: vec![pack(1)] };
        let configs = discovery(&config("daly_bms"), &view(&values));
        assert_eq!(configs.len(), state(&config("daly_bms"), &view(&values)).len());
        assert!(configs.iter().all(|m| m.retain));
        let get = |topic: &str| configs.iter().find(|m| m.topic == topic).map(|m| m.payload.as_str());
        // Captured from daly-bms-cli 0.5.0 `--all --mqtt --mqtt-hass` with paho-mqtt 1.6.1.
        assert_eq!(
            get("homeassistant/sensor/daly_bms/_soc_total_voltage/config"),
            Some(
                r#"{"unique_id": "daly_bms__soc_total_voltage", "name": "Daly BMS  soc total_voltage", "device_class": "voltage", "unit_of_measurement": "V", "json_attributes_topic": "daly_bms/soc/total_voltage", "state_topic": "daly_bms/soc/total_voltage", "device": {"identifiers": ["daly_bms"], "manufacturer": "Daly", "model": "Currently not available", "name": "Daly BMS", "sw_version": "Currently not available"}}"#
            )
        );
        assert_eq!(
            get("homeassistant/sensor/daly_bms/_cell_voltage_range_highest_cell/config"),
            Some(
                r#"{"unique_id": "daly_bms__cell_voltage_range_highest_cell", "name": "Daly BMS  cell_voltage_range highest_cell", "json_attributes_topic": "daly_bms/cell_voltage_range/highest_cell", "state_topic": "daly_bms/cell_voltage_range/highest_cell", "device": {"identifiers": ["daly_bms"], "manufacturer": "Daly", "model": "Currently not available", "name": "Daly BMS", "sw_version": "Currently not available"}}"#
            )
        );
        let temperature = get("homeassistant/sensor/daly_bms/_temperatures_1/config").unwrap();
        assert!(temperature.contains(r#""device_class": "temperature", "unit_of_measurement": "\u00b0C""#));
    }

    #[test]
    fn device_classes_follow_the_tools_word_rules() {
        assert_eq!(device_class("/soc/soc_percent"), Some(("battery", "%")));
        assert_eq!(device_class("/soc/total_voltage"), Some(("voltage", "V")));
        assert_eq!(device_class("/cell_voltages/3"), Some(("voltage", "V")));
        assert_eq!(device_class("/cell_voltage_range/lowest_voltage"), Some(("voltage", "V")));
        assert_eq!(device_class("/cell_voltage_range/lowest_cell"), None);
        assert_eq!(device_class("/soc/current"), Some(("current", "A")));
        assert_eq!(device_class("/temperatures/2"), Some(("temperature", "°C")));
        // "temperature_range" is not "temperatures"; capacity never gets a class (the tool's rule is dead).
        assert_eq!(device_class("/temperature_range/highest_temperature"), None);
        assert_eq!(device_class("/mosfet_status/capacity_ah"), None);
        assert_eq!(device_class("/status/cycles"), None);
    }

    #[test]
    fn the_base_topic_moves_state_but_not_the_tools_fixed_node_id() {
        let values = DeviceSnapshot { packs: vec![pack(1)] };
        let mut cfg = config("garage/bms");
        cfg.discovery.prefix = "ha".to_owned();
        let messages = interleaved(&cfg, &view(&values), true);
        assert_eq!(messages[0].topic, "ha/sensor/daly_bms/_soc_total_voltage/config");
        assert!(messages[0].payload.starts_with(r#"{"unique_id": "daly_bms__soc_total_voltage", "#));
        assert!(messages[0].payload.contains(r#""state_topic": "garage/bms/soc/total_voltage""#));
        assert_eq!(pairs(&messages[1..2]), [("garage/bms/soc/total_voltage".to_owned(), "52.6".to_owned(), false)]);
        // Without --mqtt-hass only values.
        assert!(interleaved(&cfg, &view(&values), false).iter().all(|m| !m.retain));
    }

    #[test]
    fn other_packs_go_below_pack_n_and_pack_one_keeps_the_tools_topics() {
        let mut second = pack(2);
        second.voltage_volts = Some(51.2);
        let values = DeviceSnapshot { packs: vec![pack(1), second] };
        let cfg = config("daly_bms");
        let messages = state(&cfg, &view(&values));
        let get = |topic: &str| messages.iter().find(|m| m.topic == topic).map(|m| m.payload.as_str());
        assert_eq!(get("daly_bms/soc/total_voltage"), Some("52.6"));
        assert_eq!(get("daly_bms/pack_2/soc/total_voltage"), Some("51.2"));
        assert_eq!(messages.len(), 52);
        let configs = discovery(&cfg, &view(&values));
        let second_config =
            configs.iter().find(|m| m.topic == "homeassistant/sensor/daly_bms/_pack_2_soc_total_voltage/config");
        let second_config = second_config.unwrap();
        assert!(second_config.payload.contains(r#""unique_id": "daly_bms__pack_2_soc_total_voltage""#));
        assert!(second_config.payload.contains(r#""name": "Daly BMS  pack_2 soc total_voltage""#));

        // No pack 1: nothing at the tool's own topics.
        let values = DeviceSnapshot { packs: vec![pack(3)] };
        let messages = state(&cfg, &view(&values));
        assert!(!messages.is_empty());
        assert!(messages.iter().all(|m| m.topic.starts_with("daly_bms/pack_3/")), "{messages:?}");
    }

    #[test]
    fn a_device_that_is_down_publishes_nothing_and_there_is_no_birth_or_will() {
        let values = DeviceSnapshot { packs: vec![pack(1)] };
        let down = DeviceView { up: false, ..view(&values) };
        let cfg = config("daly_bms");
        assert!(state(&cfg, &down).is_empty());
        assert!(discovery(&cfg, &down).is_empty());
        assert_eq!(birth(&cfg), None);
        assert_eq!(will(&cfg), None);
        let empty = DeviceSnapshot::default();
        assert!(state(&cfg, &view(&empty)).is_empty());
    }
}
