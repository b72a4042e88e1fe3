//! Home Assistant discovery for the native layout: one retained config per entity, one Home Assistant device
//! per pack, every value read from the pack's JSON state message with a `value_template`.
//!
//! Topics are `<discovery_prefix>/<component>/bms_exporter_<device>/<NN>_<field>/config`. The node id (third
//! level) is exactly `bms_exporter_<device>`, so the discovery of a device that is no longer configured can be
//! found and removed by its topic alone. `unique_id` and `object_id` are `bms_exporter_<device>_<NN>_<field>`:
//! stable entity ids that survive restarts and survive the order packs are discovered in.
//!
//! Decisions, and why:
//! - Only values the pack has get an entity (cells up to the reported cell count, the temperature sensors that
//!   were read): an entity for a value the protocol never reports would stay unknown forever. An entity is never
//!   withdrawn because a value is missing from one poll; its retained config stays, and it shows unknown.
//! - Every template is written so that a missing key renders `None`, which Home Assistant turns into unknown
//!   for numeric sensors, binary sensors and switches, without logging a template warning. The two text sensors
//!   (pack state, active alarms) render `unknown` instead: a text sensor would show the string "None", while
//!   `unknown` is the state string Home Assistant itself records for an unknown value.
//! - No `expire_after`: availability already says when values are stale (the device's availability topic
//!   follows `bms_up`, which turns false once values are older than `stale_after`, and the exporter's status
//!   topic carries the last will), so a second timer would only disagree with it.
//! - With `control: true` on a Daly device, switches for the charge and discharge MOSFET replace the two
//!   MOSFET binary sensors (a switch shows the same state, and two entities for one MOSFET would be clutter).
//!   The replaced pair is removed with an empty retained config, so turning control on or off never leaves a
//!   stale entity behind; a switch's state is what the BMS reports, not what was asked.
//! - The active-alarms text sensor is cut to Home Assistant's 255-character state limit (a longer state is
//!   rejected); the `problem` binary sensor carries the full list as its `alarms` attribute.

use serde_json::{Map, Value, json};

use super::{availability_topic, cell_label, pack_label, pack_state, state_topic, status_topic};
use crate::config::mqtt::MqttConfig;
use crate::model::{PackSnapshot, SensorId};
use crate::mqtt::{DeviceView, Message};
use crate::protocol::Protocol;

/// The exporter's own name: origin of every config and the node id of its own device's entity.
const EXPORTER: &str = "bms_exporter";

/// The Home Assistant device of the exporter itself (every pack device hangs off it): `bms_exporter_<prefix>`,
/// so two exporters with their own topic prefixes on one broker stay two devices. Its node id in the discovery
/// topic is plain `bms_exporter`, which `mqtt cleanup` (looking for `bms_exporter_<device>`) never touches.
#[must_use]
pub fn bridge_id(config: &MqttConfig) -> String {
    let prefix: String = config
        .topic_prefix
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_lowercase() } else { '_' })
        .collect();
    format!("{EXPORTER}_{prefix}")
}

/// The exporter's own device: one connectivity sensor on the status topic (birth and last will), so Home
/// Assistant shows whether the exporter is connected and links each pack device to it.
#[must_use]
pub fn bridge_config(config: &MqttConfig) -> Message {
    let id = bridge_id(config);
    let payload = json!({
        "name": "Status",
        "unique_id": format!("{id}_status"),
        "object_id": format!("{id}_status"),
        "state_topic": status_topic(config),
        "payload_on": "online",
        "payload_off": "offline",
        "device_class": "connectivity",
        "entity_category": "diagnostic",
        "device": {
            "identifiers": [id],
            "name": "BMS Exporter",
            "manufacturer": "bms_exporter",
            "model": "bms_exporter",
            "sw_version": env!("CARGO_PKG_VERSION"),
        },
        "origin": { "name": EXPORTER, "sw_version": env!("CARGO_PKG_VERSION") },
    });
    let topic = format!("{}/binary_sensor/{EXPORTER}/{id}_status/config", config.discovery.prefix);
    Message::retained(topic, payload.to_string())
}

/// Which Home Assistant platform an entity belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Component {
    /// A value (`sensor`).
    Sensor,
    /// An on/off state (`binary_sensor`).
    BinarySensor,
    /// An on/off state that can be commanded (`switch`).
    Switch,
}

impl Component {
    /// The platform name, as it appears in discovery topics.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Sensor => "sensor",
            Self::BinarySensor => "binary_sensor",
            Self::Switch => "switch",
        }
    }
}

/// How an entity's value is read from the pack's JSON state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Read {
    /// The number at a top-level key, as it is.
    Number(&'static str),
    /// A 0–1 ratio at a top-level key, shown in percent.
    Percent(&'static str),
    /// The number under a label in an object (`cells`, `temperatures`).
    Member(&'static str, String),
    /// A boolean (or a list, true when not empty) at a top-level key, as `ON` / `OFF`.
    Flag(&'static str),
    /// A string at a top-level key.
    Text(&'static str),
    /// The list at a top-level key, comma-joined, `none` when empty, cut to 255 characters.
    List(&'static str),
}

impl Read {
    /// The top-level key of the state JSON this reads.
    #[must_use]
    pub fn key(&self) -> &'static str {
        match self {
            Self::Number(k) | Self::Percent(k) | Self::Member(k, _) | Self::Flag(k) | Self::Text(k) | Self::List(k) => {
                k
            }
        }
    }

    /// The label inside the object at [`key`](Self::key), for values kept in an object.
    #[must_use]
    pub fn label(&self) -> Option<&str> {
        match self {
            Self::Member(_, label) => Some(label),
            _ => None,
        }
    }

    /// The Jinja `value_template`: the value, or `None` (text: `unknown`) when the key is missing.
    #[must_use]
    pub fn template(&self) -> String {
        // `is defined` and `default` look at a missing key without touching it, so Home Assistant logs no
        // "template variable warning" for a value the pack does not report in this message.
        let body = match self {
            Self::Number(k) => format!("value_json.{k} | default(none)"),
            // Two decimals of a percent: finer than any protocol reports, coarse enough to hide float noise.
            Self::Percent(k) => format!("(value_json.{k} * 100) | round(2) if value_json.{k} is defined else none"),
            // The parentheses give a missing object an empty one, so the label lookup cannot fail.
            Self::Member(k, label) => format!("(value_json.{k} | default({{}}))['{label}'] | default(none)"),
            Self::Flag(k) => format!("('ON' if value_json.{k} else 'OFF') if value_json.{k} is defined else none"),
            Self::Text(k) => format!("value_json.{k} | default('unknown')"),
            Self::List(k) => format!(
                "((value_json.{k} | join(', ')) or 'none') | truncate(255, true, '...', 0) \
                 if value_json.{k} is defined else 'unknown'"
            ),
        };
        format!("{{{{ {body} }}}}")
    }
}

/// One Home Assistant entity of a pack.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entity {
    /// Its platform.
    pub component: Component,
    /// The field part of its ids (`voltage`, `cell_01`): `[a-z0-9_]` only.
    pub field: String,
    /// Its name; Home Assistant puts the device name in front.
    pub name: String,
    /// Where its value is in the state JSON.
    pub read: Read,
    /// Home Assistant device class, if one fits.
    pub device_class: Option<&'static str>,
    /// Unit of measurement.
    pub unit: Option<&'static str>,
    /// Statistics state class (`measurement`, `total_increasing`).
    pub state_class: Option<&'static str>,
    /// Decimals Home Assistant shows by default.
    pub precision: Option<u8>,
    /// Whether it belongs in the diagnostic section rather than with the pack's main values.
    pub diagnostic: bool,
    /// Material Design icon, where the device class gives none.
    pub icon: Option<&'static str>,
    /// Whether the state JSON's `alarms` list is given as the entity's attributes.
    pub alarm_attributes: bool,
}

impl Entity {
    fn new(component: Component, field: impl Into<String>, name: impl Into<String>, read: Read) -> Self {
        Self {
            component,
            field: field.into(),
            name: name.into(),
            read,
            device_class: None,
            unit: None,
            state_class: None,
            precision: None,
            diagnostic: false,
            icon: None,
            alarm_attributes: false,
        }
    }

    fn sensor(field: &str, name: &str, read: Read) -> Self {
        Self::new(Component::Sensor, field, name, read)
    }

    fn binary(field: &str, name: &str, key: &'static str, device_class: Option<&'static str>) -> Self {
        Self { device_class, ..Self::new(Component::BinarySensor, field, name, Read::Flag(key)) }
    }

    /// A measured quantity with its device class, unit and display precision.
    fn measured(self, device_class: Option<&'static str>, unit: &'static str, precision: u8) -> Self {
        Self { device_class, unit: Some(unit), state_class: Some("measurement"), precision: Some(precision), ..self }
    }

    /// A total that only grows (statistics see a reset when it falls); `class`: device class and unit, if any.
    fn total(self, class: Option<(&'static str, &'static str)>, precision: u8) -> Self {
        let (device_class, unit) = class.map_or((None, self.unit), |(c, u)| (Some(c), Some(u)));
        Self { device_class, unit, state_class: Some("total_increasing"), precision: Some(precision), ..self }
    }

    fn diagnostic(self) -> Self {
        Self { diagnostic: true, ..self }
    }

    fn icon(self, icon: &'static str) -> Self {
        Self { icon: Some(icon), ..self }
    }
}

/// The charge and discharge MOSFET entities: (field, name, state key, icon).
const MOSFETS: [(&str, &str, &str, &str); 2] = [
    ("charge_mosfet", "Charge MOSFET", "charge_mosfet_enabled", "mdi:battery-arrow-up"),
    ("discharge_mosfet", "Discharge MOSFET", "discharge_mosfet_enabled", "mdi:battery-arrow-down"),
];

/// Whether the MOSFETs of this device are switches (control on, and a protocol whose MOSFET writes are known).
#[must_use]
pub fn mosfet_switches(config: &MqttConfig, protocol: Protocol) -> bool {
    config.control && protocol == Protocol::Daly
}

/// `<prefix>/<device>/<NN>/<field>/set`: where a switch's commands go.
#[must_use]
pub fn command_topic(config: &MqttConfig, device: &str, pack: u8, field: &str) -> String {
    format!("{}/{device}/{}/{field}/set", config.topic_prefix, pack_label(pack))
}

/// `<discovery_prefix>/<component>/bms_exporter_<device>/<NN>_<field>/config`.
#[must_use]
pub fn config_topic(config: &MqttConfig, component: Component, device: &str, pack: u8, field: &str) -> String {
    format!(
        "{}/{}/{EXPORTER}_{device}/{}_{field}/config",
        config.discovery.prefix,
        component.as_str(),
        pack_label(pack)
    )
}

/// `bms_exporter_<device>_<NN>_<field>`: the entity's `unique_id` and `object_id`.
#[must_use]
pub fn entity_id(device: &str, pack: u8, field: &str) -> String {
    format!("{EXPORTER}_{device}_{}_{field}", pack_label(pack))
}

/// The entities of one pack: those whose value `state` (the pack's JSON state) has, plus every cell up to the
/// reported cell count. `switches`: the MOSFETs as switches rather than binary sensors.
#[must_use]
pub fn entities(pack: &PackSnapshot, state: &Value, switches: bool) -> Vec<Entity> {
    let mut list = measurement_entities();
    list.extend(cell_entities(pack, state));
    list.extend(temperature_entities(pack));
    list.extend(flag_entities(switches));
    list.extend(total_entities());
    // Cells count from the reported cell count even before their voltages are read; everything else needs its key.
    list.retain(|e| e.read.key() == "cells" || state.get(e.read.key()).is_some());
    list
}

/// Pack voltage, current, power, charge and health, capacities, cycles and operating state.
fn measurement_entities() -> Vec<Entity> {
    use Read::{Number, Percent, Text};
    vec![
        Entity::sensor("voltage", "Voltage", Number("voltage_volts")).measured(Some("voltage"), "V", 2),
        Entity::sensor("current", "Current", Number("current_amperes")).measured(Some("current"), "A", 2),
        Entity::sensor("power", "Power", Number("power_watts")).measured(Some("power"), "W", 0),
        Entity::sensor("state_of_charge", "State of charge", Percent("state_of_charge_ratio")).measured(
            Some("battery"),
            "%",
            1,
        ),
        Entity::sensor("state_of_health", "State of health", Percent("state_of_health_ratio"))
            .measured(None, "%", 1)
            .icon("mdi:battery-heart-variant")
            .diagnostic(),
        Entity::sensor("remaining_capacity", "Remaining capacity", Number("remaining_capacity_ampere_hours"))
            .measured(None, "Ah", 1)
            .icon("mdi:battery-50"),
        Entity::sensor("full_capacity", "Full capacity", Number("full_capacity_ampere_hours"))
            .measured(None, "Ah", 1)
            .icon("mdi:battery")
            .diagnostic(),
        // A rating, not a measurement: no state class, so no statistics are kept for a constant.
        Entity {
            unit: Some("Ah"),
            precision: Some(1),
            ..Entity::sensor("design_capacity", "Design capacity", Number("design_capacity_ampere_hours"))
        }
        .icon("mdi:battery-outline")
        .diagnostic(),
        Entity::sensor("cycles", "Cycles", Number("cycle_count")).total(None, 0).icon("mdi:battery-sync").diagnostic(),
        Entity::sensor("state", "State", Text("state")).icon("mdi:battery-charging"),
    ]
}

/// One voltage entity per cell (the reported count, and any cell read beyond it), then the extremes and spread.
fn cell_entities(pack: &PackSnapshot, state: &Value) -> Vec<Entity> {
    let read = state.get("cells").and_then(Value::as_object);
    let total = pack.cell_count.map_or(0, usize::from).max(pack.cell_volts.len());
    let mut labels: Vec<String> = (1..=total).map(cell_label).collect();
    labels.extend(read.into_iter().flat_map(|m| m.keys().cloned()));
    labels.sort();
    labels.dedup();
    let cells = labels.into_iter().map(|label| {
        Entity::sensor(&format!("cell_{label}"), &format!("Cell {label}"), Read::Member("cells", label)).measured(
            Some("voltage"),
            "V",
            3,
        )
    });
    let summary = [
        ("lowest_cell_voltage", "Lowest cell voltage", "lowest_cell_volts"),
        ("highest_cell_voltage", "Highest cell voltage", "highest_cell_volts"),
        ("cell_spread", "Cell voltage spread", "cell_spread_volts"),
    ];
    let summary = summary
        .map(|(field, name, key)| Entity::sensor(field, name, Read::Number(key)).measured(Some("voltage"), "V", 3));
    cells.chain(summary).collect()
}

/// One entity per temperature sensor that was read.
fn temperature_entities(pack: &PackSnapshot) -> Vec<Entity> {
    let mut sensors: Vec<SensorId> =
        pack.temperatures.iter().filter(|t| t.celsius.is_finite()).map(|t| t.sensor).collect();
    sensors.sort();
    sensors.dedup();
    sensors
        .into_iter()
        .map(|sensor| {
            let label = sensor.label();
            let name = match sensor {
                SensorId::Probe(_) => format!("Temperature {label}"),
                SensorId::Mosfet => "MOSFET temperature".to_owned(),
                SensorId::Ambient => "Ambient temperature".to_owned(),
                SensorId::Board => "Board temperature".to_owned(),
            };
            Entity::sensor(&format!("temperature_{label}"), &name, Read::Member("temperatures", label)).measured(
                Some("temperature"),
                "°C",
                1,
            )
        })
        .collect()
}

/// The MOSFETs (switches or binary sensors), balancer, charger and load, and the alarm entities.
fn flag_entities(switches: bool) -> Vec<Entity> {
    let component = if switches { Component::Switch } else { Component::BinarySensor };
    let mosfets =
        MOSFETS.map(|(field, name, key, icon)| Entity::new(component, field, name, Read::Flag(key)).icon(icon));
    let others = [
        Entity::binary("balancing", "Balancing", "balancing_active", Some("running")).icon("mdi:scale-balance"),
        Entity::binary("charger", "Charger", "charger_connected", Some("plug")),
        Entity::binary("load", "Load", "load_connected", Some("plug")),
        Entity { alarm_attributes: true, ..Entity::binary("problem", "Problem", "alarms", Some("problem")) },
        Entity::sensor("alarms", "Active alarms", Read::List("alarms")).icon("mdi:alert-outline"),
    ];
    mosfets.into_iter().chain(others).collect()
}

/// Energy and charge that flowed in and out, where the exporter integrates them.
fn total_entities() -> Vec<Entity> {
    use Read::Number;
    vec![
        Entity::sensor("charged_energy", "Charged energy", Number("charged_kilowatt_hours"))
            .total(Some(("energy", "kWh")), 3),
        Entity::sensor("discharged_energy", "Discharged energy", Number("discharged_kilowatt_hours"))
            .total(Some(("energy", "kWh")), 3),
        // Charge has no Home Assistant device class; Ah is its natural unit here, as for the capacities.
        Entity {
            unit: Some("Ah"),
            ..Entity::sensor("charged_ampere_hours", "Charged ampere-hours", Number("charged_ampere_hours"))
        }
        .total(None, 2)
        .icon("mdi:battery-plus-variant"),
        Entity {
            unit: Some("Ah"),
            ..Entity::sensor("discharged_ampere_hours", "Discharged ampere-hours", Number("discharged_ampere_hours"))
        }
        .total(None, 2)
        .icon("mdi:battery-minus-variant"),
    ]
}

/// Every discovery config of one device: per pack its entities, and (Daly) the empty config that removes
/// whichever of MOSFET switches or binary sensors the `control` setting does not want.
#[must_use]
pub fn configs(config: &MqttConfig, device: &DeviceView<'_>) -> Vec<Message> {
    let switches = mosfet_switches(config, device.protocol);
    let single = device.values.packs.len() == 1;
    let bridge = bridge_id(config);
    let mut messages = Vec::new();
    for pack in &device.values.packs {
        let energy = device.energy.iter().find(|e| e.pack == pack.pack);
        let state = pack_state(pack, energy);
        let device_info = device_info(device, pack, single, &bridge);
        for entity in entities(pack, &state, switches) {
            let payload = entity_config(config, device.name, pack.pack, &entity, &device_info);
            let topic = config_topic(config, entity.component, device.name, pack.pack, &entity.field);
            messages.push(Message::retained(topic, payload.to_string()));
        }
        if device.protocol == Protocol::Daly {
            let unwanted = if switches { Component::BinarySensor } else { Component::Switch };
            for (field, ..) in MOSFETS {
                messages.push(Message::retained(config_topic(config, unwanted, device.name, pack.pack, field), ""));
            }
        }
    }
    messages
}

/// The Home Assistant device of one pack: what the BMS says about itself, and nothing it does not say.
fn device_info(device: &DeviceView<'_>, pack: &PackSnapshot, single: bool, bridge: &str) -> Value {
    let label = pack_label(pack.pack);
    let name = if single { device.name.to_owned() } else { format!("{} pack {label}", device.name) };
    let manufacturer = match device.protocol {
        Protocol::Daly | Protocol::DalyModbus | Protocol::Sinowealth => "Daly",
        Protocol::Pace => "Pace",
    };
    let mut info = Map::new();
    info.insert("identifiers".to_owned(), json!([format!("{EXPORTER}_{}_{label}", device.name)]));
    info.insert("name".to_owned(), json!(name));
    info.insert("manufacturer".to_owned(), json!(manufacturer));
    let reported = [
        ("model", &pack.info.model),
        ("sw_version", &pack.info.firmware_version),
        ("serial_number", &pack.info.serial_number),
    ];
    for (key, value) in reported {
        if let Some(text) = value.as_deref().map(str::trim).filter(|t| !t.is_empty()) {
            info.insert(key.to_owned(), json!(text));
        }
    }
    info.insert("via_device".to_owned(), json!(bridge));
    Value::Object(info)
}

/// The discovery payload of one entity.
fn entity_config(config: &MqttConfig, device: &str, pack: u8, entity: &Entity, device_info: &Value) -> Value {
    let id = entity_id(device, pack, &entity.field);
    let state = state_topic(config, device, pack);
    let mut c = Map::new();
    let mut put = |key: &str, value: Value| {
        c.insert(key.to_owned(), value);
    };
    put("name", json!(entity.name));
    put("unique_id", json!(id));
    put("object_id", json!(id));
    put("state_topic", json!(state));
    put("value_template", json!(entity.read.template()));
    put("availability", json!([{ "topic": status_topic(config) }, { "topic": availability_topic(config, device) }]));
    put("availability_mode", json!("all"));
    put("device", device_info.clone());
    put("origin", json!({ "name": EXPORTER, "sw_version": env!("CARGO_PKG_VERSION") }));
    if let Some(v) = entity.device_class {
        put("device_class", json!(v));
    }
    if let Some(v) = entity.unit {
        put("unit_of_measurement", json!(v));
    }
    if let Some(v) = entity.state_class {
        put("state_class", json!(v));
    }
    if let Some(v) = entity.precision {
        put("suggested_display_precision", json!(v));
    }
    if entity.diagnostic {
        put("entity_category", json!("diagnostic"));
    }
    if let Some(v) = entity.icon {
        put("icon", json!(v));
    }
    if entity.alarm_attributes {
        let key = entity.read.key();
        put("json_attributes_topic", json!(state));
        put(
            "json_attributes_template",
            json!(format!(
                "{{{{ {{'{key}': value_json.{key}}} | tojson if value_json.{key} is defined else '{{}}' }}}}"
            )),
        );
    }
    if entity.component == Component::Switch {
        put("command_topic", json!(command_topic(config, device, pack, &entity.field)));
        put("payload_on", json!("ON"));
        put("payload_off", json!("OFF"));
        put("optimistic", json!(false));
        put("qos", json!(config.qos));
        put("device_class", json!("switch"));
    }
    Value::Object(c)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::energy::PackEnergy;
    use crate::mqtt::native::tests::{config, daly, energy, pace, view};
    use std::collections::BTreeSet;

    fn parse(message: &Message) -> Value {
        serde_json::from_str(&message.payload).unwrap()
    }

    fn by_id<'a>(messages: &'a [Message], id_suffix: &str) -> (&'a Message, Value) {
        let m = messages
            .iter()
            .find(|m| m.topic.ends_with(&format!("/{id_suffix}/config")) && !m.payload.is_empty())
            .unwrap_or_else(|| panic!("no config for {id_suffix}"));
        (m, parse(m))
    }

    fn valid_id(text: &str) -> bool {
        !text.is_empty() && text.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    }

    #[test]
    fn a_daly_pack_gets_one_device_and_every_entity_it_has_values_for() {
        let config = config(false);
        let values = daly();
        let energy = [energy(1)];
        let messages = configs(&config, &view("garage", Protocol::Daly, &values, &energy));
        assert!(messages.iter().all(|m| m.retain), "discovery is retained");
        let (m, voltage) = by_id(&messages, "01_voltage");
        assert_eq!(m.topic, "homeassistant/sensor/bms_exporter_garage/01_voltage/config");
        assert_eq!(voltage["unique_id"], "bms_exporter_garage_01_voltage");
        assert_eq!(voltage["object_id"], "bms_exporter_garage_01_voltage");
        assert_eq!(voltage["name"], "Voltage");
        assert_eq!(voltage["state_topic"], "bms/garage/01/state");
        assert_eq!(voltage["value_template"], "{{ value_json.voltage_volts | default(none) }}");
        assert_eq!(voltage["device_class"], "voltage");
        assert_eq!(voltage["unit_of_measurement"], "V");
        assert_eq!(voltage["state_class"], "measurement");
        assert_eq!(voltage["availability"], json!([{"topic": "bms/status"}, {"topic": "bms/garage/availability"}]));
        assert_eq!(voltage["availability_mode"], "all");
        assert_eq!(voltage["origin"]["name"], "bms_exporter");
        assert_eq!(
            voltage["device"],
            json!({
                "identifiers": ["bms_exporter_garage_01"], "name": "garage", "manufacturer": "Daly",
                "model": "DL-16S", "sw_version": "20210222-1.01T", "serial_number": "SN123",
                "via_device": "bms_exporter_bms",
            })
        );

        let fields: BTreeSet<String> = messages
            .iter()
            .filter(|m| !m.payload.is_empty())
            .map(|m| m.topic.split('/').nth(3).unwrap().trim_start_matches("01_").to_owned())
            .collect();
        let mut expected: BTreeSet<String> = [
            "voltage",
            "current",
            "power",
            "state_of_charge",
            "remaining_capacity",
            "cycles",
            "state",
            "lowest_cell_voltage",
            "highest_cell_voltage",
            "cell_spread",
            "temperature_01",
            "temperature_02",
            "temperature_mosfet",
            "charge_mosfet",
            "discharge_mosfet",
            "balancing",
            "charger",
            "load",
            "problem",
            "alarms",
            "charged_energy",
            "discharged_energy",
            "charged_ampere_hours",
            "discharged_ampere_hours",
        ]
        .into_iter()
        .map(str::to_owned)
        .collect();
        expected.extend((1..=16).map(|n| format!("cell_{n:02}")));
        assert_eq!(fields, expected, "Daly reports no health and no full or design capacity");

        let (_, soc) = by_id(&messages, "01_state_of_charge");
        assert_eq!(soc["device_class"], "battery");
        assert_eq!(soc["unit_of_measurement"], "%");
        let (_, cycles) = by_id(&messages, "01_cycles");
        assert_eq!(cycles["state_class"], "total_increasing");
        assert_eq!(cycles["entity_category"], "diagnostic");
        let (_, cell) = by_id(&messages, "01_cell_07");
        assert_eq!(cell["value_template"], "{{ (value_json.cells | default({}))['07'] | default(none) }}");
        let (_, temp) = by_id(&messages, "01_temperature_mosfet");
        assert_eq!(temp["name"], "MOSFET temperature");
        assert_eq!(temp["unit_of_measurement"], "°C");
        let (m, charge) = by_id(&messages, "01_charge_mosfet");
        assert!(m.topic.starts_with("homeassistant/binary_sensor/"));
        assert!(charge.get("command_topic").is_none());
        let (_, problem) = by_id(&messages, "01_problem");
        assert_eq!(problem["device_class"], "problem");
        assert_eq!(problem["json_attributes_topic"], "bms/garage/01/state");
        let (_, energy) = by_id(&messages, "01_charged_energy");
        assert_eq!((&energy["device_class"], &energy["unit_of_measurement"]), (&json!("energy"), &json!("kWh")));
        assert_eq!(energy["state_class"], "total_increasing");

        // Control is off: the switches a previous run may have created are removed.
        let removed: Vec<&str> = messages.iter().filter(|m| m.payload.is_empty()).map(|m| m.topic.as_str()).collect();
        assert_eq!(
            removed,
            [
                "homeassistant/switch/bms_exporter_garage/01_charge_mosfet/config",
                "homeassistant/switch/bms_exporter_garage/01_discharge_mosfet/config",
            ]
        );
    }

    #[test]
    fn control_turns_the_daly_mosfets_into_switches_and_removes_the_binary_sensors() {
        let config = config(true);
        let values = daly();
        let messages = configs(&config, &view("garage", Protocol::Daly, &values, &[]));
        let (m, switch) = by_id(&messages, "01_discharge_mosfet");
        assert_eq!(m.topic, "homeassistant/switch/bms_exporter_garage/01_discharge_mosfet/config");
        assert_eq!(switch["command_topic"], "bms/garage/01/discharge_mosfet/set");
        assert_eq!(switch["payload_on"], "ON");
        assert_eq!(switch["payload_off"], "OFF");
        assert_eq!(switch["optimistic"], false);
        assert_eq!(switch["state_topic"], "bms/garage/01/state");
        assert_eq!(
            switch["value_template"],
            "{{ ('ON' if value_json.discharge_mosfet_enabled else 'OFF') \
             if value_json.discharge_mosfet_enabled is defined else none }}"
        );
        let (_, charge) = by_id(&messages, "01_charge_mosfet");
        assert_eq!(charge["command_topic"], "bms/garage/01/charge_mosfet/set");
        let removed: Vec<&str> = messages.iter().filter(|m| m.payload.is_empty()).map(|m| m.topic.as_str()).collect();
        assert_eq!(
            removed,
            [
                "homeassistant/binary_sensor/bms_exporter_garage/01_charge_mosfet/config",
                "homeassistant/binary_sensor/bms_exporter_garage/01_discharge_mosfet/config",
            ]
        );
        // Every command topic is under the filter the control handler subscribes to.
        let filter = crate::mqtt::control::command_filter(&config).unwrap();
        assert_eq!(filter, "bms/+/+/+/set");
    }

    #[test]
    fn control_never_makes_switches_for_other_protocols() {
        let config = config(true);
        let values = pace();
        let messages = configs(&config, &view("rack", Protocol::Pace, &values, &[]));
        assert!(messages.iter().all(|m| !m.topic.contains("/switch/")), "Pace MOSFET writes are not supported");
        assert!(messages.iter().all(|m| !m.payload.is_empty()), "no switch ever existed to remove");
        assert!(messages.iter().any(|m| m.topic.ends_with("/binary_sensor/bms_exporter_rack/02_charge_mosfet/config")));
    }

    #[test]
    fn a_pace_device_gets_one_device_per_pack() {
        let config = config(false);
        let values = pace();
        let messages = configs(&config, &view("rack", Protocol::Pace, &values, &[]));
        let (_, first) = by_id(&messages, "01_state_of_health");
        let (_, second) = by_id(&messages, "02_state_of_health");
        assert_eq!(first["device"]["name"], "rack pack 01");
        assert_eq!(second["device"]["name"], "rack pack 02");
        assert_eq!(second["device"]["identifiers"], json!(["bms_exporter_rack_02"]));
        assert_eq!(second["device"]["manufacturer"], "Pace");
        assert_eq!(second["device"]["serial_number"], "PACK2");
        assert_eq!(first["unit_of_measurement"], "%");
        assert!(first.get("device_class").is_none(), "Home Assistant has no device class for health");
        assert_eq!(first["entity_category"], "diagnostic");
        let (_, design) = by_id(&messages, "01_design_capacity");
        assert_eq!(design["unit_of_measurement"], "Ah");
        assert!(design.get("state_class").is_none());
        assert!(by_id(&messages, "02_temperature_ambient").1["name"] == "Ambient temperature");
        assert!(messages.iter().all(|m| !m.topic.contains("charged_energy")), "no energy integrated, no entity");
        assert!(messages.iter().all(|m| !m.topic.contains("_charger/")), "Pace reports no charger flag");
        assert_eq!(
            messages.iter().filter(|m| m.topic.contains("/02_cell_") && !m.topic.contains("spread")).count(),
            16
        );
    }

    #[test]
    fn ids_are_unique_and_valid_in_topics() {
        for control in [false, true] {
            let config = config(control);
            let daly_values = daly();
            let pace_values = pace();
            let energy: Vec<PackEnergy> = vec![energy(1), energy(2)];
            let mut messages = configs(&config, &view("garage", Protocol::Daly, &daly_values, &energy));
            messages.extend(configs(&config, &view("rack", Protocol::Pace, &pace_values, &energy)));
            let mut topics = BTreeSet::new();
            let mut ids = BTreeSet::new();
            for m in &messages {
                assert!(topics.insert(m.topic.clone()), "duplicate topic {}", m.topic);
                let levels: Vec<&str> = m.topic.split('/').collect();
                assert_eq!(levels.len(), 5, "{}", m.topic);
                assert_eq!(levels[0], "homeassistant");
                assert!(["sensor", "binary_sensor", "switch"].contains(&levels[1]));
                assert!(levels[2] == "bms_exporter_garage" || levels[2] == "bms_exporter_rack", "{}", m.topic);
                assert!(valid_id(levels[2]) && valid_id(levels[3]), "{}", m.topic);
                assert_eq!(levels[4], "config");
                if m.payload.is_empty() {
                    continue;
                }
                let c = parse(m);
                let id = c["unique_id"].as_str().unwrap().to_owned();
                assert_eq!(c["object_id"], id);
                assert!(valid_id(&id), "{id}");
                assert_eq!(id, format!("{}_{}", levels[2], levels[3]), "the id follows the topic");
                assert!(ids.insert((levels[1].to_owned(), id.clone())), "duplicate unique_id {id}");
            }
        }
    }

    #[test]
    fn every_template_key_exists_in_the_state_of_a_full_pack() {
        for (name, protocol, values) in [("garage", Protocol::Daly, daly()), ("rack", Protocol::Pace, pace())] {
            for pack in &values.packs {
                let state = pack_state(pack, Some(&energy(pack.pack)));
                let list = entities(pack, &state, true);
                assert!(list.len() > 30, "{name}: {} entities", list.len());
                for entity in list {
                    let value = &state[entity.read.key()];
                    let value = match entity.read.label() {
                        Some(label) => &value[label],
                        None => value,
                    };
                    assert!(!value.is_null(), "{name} {protocol}: {} reads a missing {:?}", entity.field, entity.read);
                    // The template names exactly that key.
                    let template = entity.read.template();
                    assert!(template.contains(&format!("value_json.{} ", entity.read.key())), "{template}");
                    if let Some(label) = entity.read.label() {
                        assert!(template.contains(&format!("['{label}']")), "{template}");
                    }
                }
            }
        }
    }

    #[test]
    fn cells_follow_the_reported_count_before_their_voltages_are_read() {
        let mut pack = PackSnapshot::new(1);
        pack.cell_count = Some(4);
        let state = pack_state(&pack, None);
        let fields: Vec<String> = entities(&pack, &state, false).into_iter().map(|e| e.field).collect();
        assert_eq!(fields, ["cell_01", "cell_02", "cell_03", "cell_04"]);
        let empty = PackSnapshot::new(1);
        assert!(entities(&empty, &pack_state(&empty, None), false).is_empty(), "nothing known, nothing announced");
    }

    #[test]
    fn templates_read_missing_keys_without_failing() {
        assert_eq!(Read::Number("x").template(), "{{ value_json.x | default(none) }}");
        assert_eq!(
            Read::Percent("r").template(),
            "{{ (value_json.r * 100) | round(2) if value_json.r is defined else none }}"
        );
        assert_eq!(Read::Text("state").template(), "{{ value_json.state | default('unknown') }}");
        assert_eq!(
            Read::List("alarms").template(),
            "{{ ((value_json.alarms | join(', ')) or 'none') | truncate(255, true, '...', 0) \
             if value_json.alarms is defined else 'unknown' }}"
        );
    }

    #[test]
    fn the_problem_sensor_carries_the_alarm_list_as_attributes() {
        let config = config(false);
        let values = daly();
        let messages = configs(&config, &view("garage", Protocol::Daly, &values, &[]));
        let (_, problem) = by_id(&messages, "01_problem");
        assert_eq!(
            problem["json_attributes_template"],
            "{{ {'alarms': value_json.alarms} | tojson if value_json.alarms is defined else '{}' }}"
        );
        assert_eq!(
            problem["value_template"],
            "{{ ('ON' if value_json.alarms else 'OFF') if value_json.alarms is defined else none }}"
        );
    }
}
