//! The `bmspace` layout: the topics, payloads and Home Assistant discovery of the bmspace 2.x add-on for Pace
//! batteries (2.2, with 2.3's optional zero padding), so that its users can switch without Home Assistant losing
//! an entity or its history.
//!
//! State, below the base topic (`topic_prefix`, bmspace's `mqtt_base_topic`), plain text, not retained:
//!
//! | topic | payload |
//! |---|---|
//! | `availability` | `online` / `offline` (retained here, and the birth and last will) |
//! | `bms_version`, `bms_sn`, `pack_sn` | the 0xC1 text; the BMS and pack serials cut to 15 / 14 characters, spaces removed |
//! | `pack_<p>/v_cells/cell_<c>` | cell voltage, integer mV |
//! | `pack_<p>/cells_max_diff_calc` | highest − lowest cell, integer mV |
//! | `pack_<p>/temps/temp_<t>` | °C as Python prints `round(x, 1)` (`25.0`); t is the position in the Pace list (probes, then MOSFET 5 and ambient 6) |
//! | `pack_<p>/i_pack`, `v_pack` | A and V as Python prints them (`-2.5`, `53.28`) |
//! | `pack_<p>/i_remain_cap`, `i_full_cap`, `i_design_cap` | integer mAh |
//! | `pack_<p>/soc`, `soh` | remaining/full and full/design × 100, Python's `round(…, 2)` (`86.7`) |
//! | `pack_<p>/cycles` | integer |
//! | `pack_<p>/prot_short_circuit`, `prot_discharge_current`, `prot_charge_current`, `fully` | protection bits, `1`/`0` |
//! | `pack_<p>/current_limit`, `charge_fet`, `discharge_fet`, `pack_indicate`, `reverse`, `ac_in`, `heart` | instruction bits, `1`/`0` |
//! | `pack_<p>/warnings` | bmspace's text line (`cell 3 > up limit, Protection State 1: Short circuit`), empty when all is well |
//! | `pack_<p>/balancing1`, `balancing2` | the two balancing bytes as 8-digit binary, most significant bit first |
//! | `pack_remain_cap`, `pack_full_cap`, `pack_design_cap`, `pack_soc`, `pack_soh` | bmspace's 0xA6 "whole bank" values, which describe pack 1 (the master): pack 1's values here |
//!
//! `zero_pad_number_packs` / `zero_pad_number_cells` widen `pack_1`/`cell_1` to `pack_01`/`cell_01` in topics,
//! entity names and unique ids, as bmspace's options do (temperature numbers are never padded there either).
//!
//! Discovery, retained: `<prefix>/sensor/BMS-<bms_sn>/<entity name, spaces → _>/config` (and `binary_sensor/`
//! for the ten protection and instruction bits, with `payload_on` `1` / `payload_off` `0`), each with the
//! entity's `name` (`Pack 1 Cell 3 Voltage`), `unique_id` `bmspace_<bms_sn>_pack_<p>_<field>`, `state_topic`,
//! the unit bmspace gives it (`mV`, `°C`, `A`, `V`, `mAh`, `%`, and an empty unit for cycles),
//! `availability_topic`, and one device: manufacturer `BMS Pace`, model `AM-x`, name `Generic Lithium`,
//! identifiers `bmspace_<bms_sn>`, sw_version the 0xC1 text. Keys in bmspace's order, `json.dumps` text.
//!
//! Deviations, each deliberate:
//! - bmspace reads the serial once at start and exits without it; the exporter may not have it until a poll
//!   returns it, so discovery is empty until pack 1's BMS serial is known (the entities' ids depend on it).
//! - bmspace reuses one dict for every config, so keys leak from one entity to the next (`payload_on` on the
//!   sensors of pack 2 and on `Cell Max Volt Diff`). Those keys mean nothing to a sensor and Home Assistant
//!   drops them; they are not reproduced.
//! - bmspace reads a negative current 0.01 A too high (it subtracts from 65535, not 65536); the true value is
//!   published. Its version text keeps trailing padding; the trimmed text is published.
//! - A cell not read this poll is left out (bmspace would publish a 0 mV reading, and a spread to match); a
//!   level byte bmspace has no text for (user-defined 0x80–0xEF, or unknown), where it stops reading the
//!   status block, appears as `user defined` / `unknown`.
//! - Availability is retained, so Home Assistant sees the right state after its own restart; it follows
//!   whether the device answers, as bmspace's does.

use super::python::{PyValue, float_str, round};
use super::{DeviceView, Message};
use crate::config::mqtt::MqttConfig;
use crate::model::{DeviceSnapshot, LevelAlarmKind, PackSnapshot, SensorId};
use crate::protocol::Protocol;
use crate::protocol::pace::status::{CONTROL, FAULT, PROTECT1, PROTECT2, SYSTEM, WARN1, WARN2};

/// bmspace's texts for the set bits of each status byte, bit 0 first (its `constants.py` since 2.1).
const PROTECT1_TEXT: [&str; 8] = [
    "Above cell volt protect",
    "Lower cell volt protect",
    "Above total volt protect",
    "Lower total volt protect",
    "Charge current protect",
    "Discharge current protect",
    "Short circuit",
    "undefined",
];
const PROTECT2_TEXT: [&str; 8] = [
    "Above charge temp protect",
    "Above discharge temp protect",
    "Lower charge temp protect",
    "Lower discharge temp protect",
    "Above MOS temp protect",
    "Above Env temp protect",
    "Lower Env temp protect",
    "Fully",
];
const CONTROL_TEXT: [&str; 8] = [
    "Buzzer warn function enabled",
    "undefined",
    "undefined",
    "Current limit gear => low gear",
    "Current limit function disabled",
    "LED warn functiuon disabled",
    "Undefined",
    "Undefined",
];
const FAULT_TEXT: [&str; 8] = [
    "Charge MOS fault",
    "Discharge MOS fault",
    "NTC fault (NTC)",
    "Undefined",
    "Cell fault",
    "Sample fault",
    "Undefined",
    "Undefined",
];
const WARN1_TEXT: [&str; 8] = [
    "Above cell volt warn",
    "Lower cell volt warn",
    "Above total volt warn",
    "Lower total volt warn",
    "Charge current warn",
    "Discharge current warn",
    "Undefined",
    "Undefined",
];
const WARN2_TEXT: [&str; 8] = [
    "Above charge temp warn",
    "Above discharge temp warn",
    "Low charge temp warn",
    "Low discharge temp warn",
    "High env temp warn",
    "Low env temp warn",
    "High MOS temp warn",
    "Low power warn",
];

/// bmspace's topic, bit of the instruction byte, and entity name of each instruction binary sensor.
const INSTRUCTION_TOPICS: [(&str, u8, &str); 7] = [
    ("current_limit", 0, "Current Limit"),
    ("charge_fet", 1, "Charge FET"),
    ("discharge_fet", 2, "Discharge FET"),
    ("pack_indicate", 3, "Pack Indicate"),
    ("reverse", 4, "Reverse"),
    ("ac_in", 5, "AC In"),
    ("heart", 7, "Heart"),
];

/// bmspace's topic, bit of protection state 1, and entity name of each protection binary sensor.
const PROTECTION_TOPICS: [(&str, u8, &str); 3] = [
    ("prot_short_circuit", 6, "Protection Short Circuit"),
    ("prot_discharge_current", 5, "Protection Discharge Current"),
    ("prot_charge_current", 4, "Protection Charge Current"),
];

/// The topic of the availability messages.
fn availability(config: &MqttConfig) -> String {
    format!("{}/availability", config.topic_prefix)
}

/// The exporter's birth message: retained `online` on `<base>/availability`.
#[must_use]
pub fn birth(config: &MqttConfig) -> Option<Message> {
    Some(Message::retained(availability(config), "online"))
}

/// The last will: retained `offline` on `<base>/availability`.
#[must_use]
pub fn will(config: &MqttConfig) -> Option<Message> {
    Some(Message::retained(availability(config), "offline"))
}

/// State messages of one device, in bmspace's order: identity, analog values of every pack, the whole-bank
/// values, the status of every pack, then availability (only `offline` while the device is down).
#[must_use]
pub fn state(config: &MqttConfig, device: &DeviceView<'_>) -> Vec<Message> {
    let mut out = Vec::new();
    if device.up {
        let base = &config.topic_prefix;
        let mut put = |topic: String, payload: String| out.push(Message::new(format!("{base}/{topic}"), payload));
        let identity = Identity::of(device.values);
        if let Some(version) = identity.version {
            put("bms_version".to_owned(), version.to_owned());
        }
        if let Some(sn) = &identity.bms_sn {
            put("bms_sn".to_owned(), sn.clone());
            put("pack_sn".to_owned(), identity.pack_sn.clone());
        }
        for pack in &device.values.packs {
            analog(config, device.protocol, pack, &mut put);
        }
        if let Some(first) = device.values.packs.iter().find(|p| p.pack == 1) {
            bank(first, &mut put);
        }
        for pack in &device.values.packs {
            status(config, pack, &mut put);
        }
    }
    out.push(Message::retained(availability(config), if device.up { "online" } else { "offline" }));
    out
}

/// Home Assistant discovery configs of one device; empty until pack 1's BMS serial is known.
#[must_use]
pub fn discovery(config: &MqttConfig, device: &DeviceView<'_>) -> Vec<Message> {
    let identity = Identity::of(device.values);
    let Some(sn) = identity.bms_sn.as_deref() else { return Vec::new() };
    let entity = Entity { config, sn, version: identity.version.unwrap_or_default() };
    let mut out = Vec::new();
    for pack in &device.values.packs {
        let p = pad(pack.pack, config.zero_pad_number_packs);
        let cells = pack.cell_count.map_or(pack.cell_volts.len(), usize::from);
        for c in 1..=cells {
            let c = pad(c as u64, config.zero_pad_number_cells);
            out.push(entity.sensor(
                &format!("Pack {p} Cell {c} Voltage"),
                &format!("pack_{p}_v_cell_{c}"),
                &format!("pack_{p}/v_cells/cell_{c}"),
                Some("mV"),
            ));
        }
        let temps = pack.temperature_sensor_count.map_or(pack.temperatures.len(), usize::from);
        for t in 1..=temps {
            out.push(entity.sensor(
                &format!("Pack {p} Temperature {t}"),
                &format!("pack_{p}_temp_{t}"),
                &format!("pack_{p}/temps/temp_{t}"),
                Some("°C"),
            ));
        }
        for (name, field, unit) in [
            ("Current", "i_pack", Some("A")),
            ("Voltage", "v_pack", Some("V")),
            ("Remaining Capacity", "i_remain_cap", Some("mAh")),
            ("State of Health", "soh", Some("%")),
            ("Cycles", "cycles", Some("")),
            ("Full Capacity", "i_full_cap", Some("mAh")),
            ("Design Capacity", "i_design_cap", Some("mAh")),
            ("State of Charge", "soc", Some("%")),
            ("Warnings", "warnings", None),
            ("Balancing1", "balancing1", None),
            ("Balancing2", "balancing2", None),
        ] {
            out.push(entity.sensor(
                &format!("Pack {p} {name}"),
                &format!("pack_{p}_{field}"),
                &format!("pack_{p}/{field}"),
                unit,
            ));
        }
        let binaries = PROTECTION_TOPICS.iter().chain(&INSTRUCTION_TOPICS);
        for (field, _, name) in binaries {
            out.push(entity.binary_sensor(
                &format!("Pack {p} {name}"),
                &format!("pack_{p}_{field}"),
                &format!("pack_{p}/{field}"),
            ));
        }
        out.push(entity.sensor(
            &format!("Pack {p} Cell Max Volt Diff"),
            &format!("pack_{p}_cells_max_diff_calc"),
            &format!("pack_{p}/cells_max_diff_calc"),
            Some("mV"),
        ));
    }
    // bmspace sends these inside its pack loop, the same configs once per pack; once is the same to HA.
    for (name, field, topic, unit) in [
        ("Pack Remaining Capacity", "pack_i_remain_cap", "pack_remain_cap", "mAh"),
        ("Pack Full Capacity", "pack_i_full_cap", "pack_full_cap", "mAh"),
        ("Pack Design Capacity", "pack_i_design_cap", "pack_design_cap", "mAh"),
        ("Pack State of Charge", "pack_soc", "pack_soc", "%"),
        ("Pack State of Health", "pack_soh", "pack_soh", "%"),
    ] {
        out.push(entity.sensor(name, field, topic, Some(unit)));
    }
    out
}

/// What bmspace reads once at start: the 0xC1 text and the serials as it cuts them, from pack 1 (the BMS that
/// answers the identity reads).
struct Identity<'a> {
    version: Option<&'a str>,
    bms_sn: Option<String>,
    pack_sn: String,
}

impl<'a> Identity<'a> {
    fn of(values: &'a DeviceSnapshot) -> Self {
        let Some(first) = values.packs.iter().find(|p| p.pack == 1) else {
            return Self { version: None, bms_sn: None, pack_sn: String::new() };
        };
        let info = &first.info;
        let bms = info.bms_serial_number.as_deref().or(info.serial_number.as_deref());
        // The model's serial is the pack's when 0xC2 carried one, else the BMS's again.
        let pack = info.serial_number.as_deref().filter(|s| Some(*s) != bms).unwrap_or_default();
        Self { version: info.firmware_version.as_deref(), bms_sn: bms.map(|s| cut(s, 15)), pack_sn: cut(pack, 14) }
    }
}

/// bmspace's serial: the first `chars` characters of the field, spaces removed (they would end up in ids).
fn cut(text: &str, chars: usize) -> String {
    text.chars().take(chars).filter(|c| *c != ' ').collect()
}

/// A number as Python's `str(n).zfill(width)` writes it.
fn pad(n: impl Into<u64>, width: u8) -> String {
    format!("{:0width$}", n.into(), width = usize::from(width))
}

fn milli(value: f64) -> i64 {
    (value * 1000.0).round() as i64
}

/// Python's `round(a / b * 100, 2)` of two integers, as bmspace computes SOC and SOH; `None` when `b` is 0.
fn percent(a: i64, b: i64) -> Option<String> {
    (b != 0).then(|| float_str(round(a as f64 / b as f64 * 100.0, 2)))
}

/// The 0x42 values of one pack.
fn analog(config: &MqttConfig, protocol: Protocol, pack: &PackSnapshot, put: &mut impl FnMut(String, String)) {
    let p = pad(pack.pack, config.zero_pad_number_packs);
    let mut millivolts = Vec::new();
    for (i, volts) in pack.cell_volts.iter().enumerate() {
        let Some(volts) = volts else { continue };
        let mv = milli(*volts);
        millivolts.push(mv);
        put(format!("pack_{p}/v_cells/cell_{}", pad(i as u64 + 1, config.zero_pad_number_cells)), mv.to_string());
    }
    if let (Some(lo), Some(hi)) = (millivolts.iter().min(), millivolts.iter().max()) {
        put(format!("pack_{p}/cells_max_diff_calc"), (hi - lo).to_string());
    }
    let mut temps: Vec<(u8, f64)> =
        pack.temperatures.iter().filter_map(|t| Some((position(protocol, t.sensor)?, t.celsius))).collect();
    temps.sort_by_key(|(n, _)| *n);
    for (n, celsius) in temps {
        put(format!("pack_{p}/temps/temp_{n}"), float_str(round(celsius, 1)));
    }
    if let Some(amperes) = pack.current_amperes {
        put(format!("pack_{p}/i_pack"), float_str(round(amperes, 2)));
    }
    if let Some(volts) = pack.voltage_volts {
        put(format!("pack_{p}/v_pack"), float_str(round(volts, 3)));
    }
    let remaining = pack.remaining_capacity_ampere_hours.map(milli);
    let full = pack.full_capacity_ampere_hours.map(milli);
    let design = pack.design_capacity_ampere_hours.map(milli);
    if let Some(remaining) = remaining {
        put(format!("pack_{p}/i_remain_cap"), remaining.to_string());
    }
    if let Some(full) = full {
        put(format!("pack_{p}/i_full_cap"), full.to_string());
    }
    if let Some(soc) = remaining.zip(full).and_then(|(r, f)| percent(r, f)) {
        put(format!("pack_{p}/soc"), soc);
    }
    if let Some(cycles) = pack.cycle_count {
        put(format!("pack_{p}/cycles"), cycles.to_string());
    }
    if let Some(design) = design {
        put(format!("pack_{p}/i_design_cap"), design.to_string());
    }
    if let Some(soh) = full.zip(design).and_then(|(f, d)| percent(f, d)) {
        put(format!("pack_{p}/soh"), soh);
    }
}

/// The number bmspace gives a temperature: its position in the Pace list, where the model's MOSFET and ambient
/// sensors are the fifth and sixth of six. Other protocols' non-probe sensors have no place in that list.
fn position(protocol: Protocol, sensor: SensorId) -> Option<u8> {
    match (protocol, sensor) {
        (_, SensorId::Probe(n)) => Some(n),
        (Protocol::Pace, SensorId::Mosfet) => Some(5),
        (Protocol::Pace, SensorId::Ambient) => Some(6),
        _ => None,
    }
}

/// bmspace's whole-bank values (its 0xA6 read, which answers for pack 1).
fn bank(first: &PackSnapshot, put: &mut impl FnMut(String, String)) {
    let remaining = first.remaining_capacity_ampere_hours.map(milli);
    let full = first.full_capacity_ampere_hours.map(milli);
    let design = first.design_capacity_ampere_hours.map(milli);
    let (Some(remaining), Some(full), Some(design)) = (remaining, full, design) else { return };
    put("pack_remain_cap".to_owned(), remaining.to_string());
    put("pack_full_cap".to_owned(), full.to_string());
    put("pack_design_cap".to_owned(), design.to_string());
    if let Some(soc) = percent(remaining, full) {
        put("pack_soc".to_owned(), soc);
    }
    if let Some(soh) = percent(full, design) {
        put("pack_soh".to_owned(), soh);
    }
}

/// A status byte rebuilt from the model: bit k set when the alarm or indicator named `names[k]` is.
fn byte(names: &[&str; 8], is_set: impl Fn(&str) -> bool) -> u8 {
    names.iter().enumerate().filter(|(_, name)| is_set(name)).fold(0, |b, (k, _)| b | 1 << k)
}

/// The 0x44 values of one pack, when the status was read.
fn status(config: &MqttConfig, pack: &PackSnapshot, put: &mut impl FnMut(String, String)) {
    if pack.alarms.is_empty() {
        return;
    }
    let p = pad(pack.pack, config.zero_pad_number_packs);
    let alarm = |name: &str| pack.alarms.iter().any(|a| a.name == name && a.active);
    let warning = |name: &str| pack.alarms.iter().any(|a| a.active && a.name.strip_suffix("_warning") == Some(name));
    let indicator = |name: &str| pack.indicators.iter().any(|i| i.name == name && i.on);
    let protect1 = byte(&PROTECT1, alarm);
    let protect2 = byte(&PROTECT2, alarm);
    let fault = byte(&FAULT, alarm);
    let warn1 = byte(&WARN1, warning);
    let warn2 = byte(&WARN2, warning);
    let control = byte(&CONTROL, indicator);
    let bit = |b: u8, k: u8| (b >> k & 1).to_string();
    for (topic, k, _) in PROTECTION_TOPICS {
        put(format!("pack_{p}/{topic}"), bit(protect1, k));
    }
    put(format!("pack_{p}/fully"), bit(protect2, 7));
    if pack.indicators.is_empty() {
        // No instruction byte from this protocol: the MOSFET states are still known.
        let fets = [("charge_fet", pack.charge_mosfet_enabled), ("discharge_fet", pack.discharge_mosfet_enabled)];
        for (topic, on) in fets {
            if let Some(on) = on {
                put(format!("pack_{p}/{topic}"), u8::from(on).to_string());
            }
        }
    } else {
        let system = byte(&SYSTEM, indicator);
        for (topic, k, _) in INSTRUCTION_TOPICS {
            put(format!("pack_{p}/{topic}"), bit(system, k));
        }
    }
    put(format!("pack_{p}/warnings"), warnings(pack, [protect1, protect2, control, fault, warn1, warn2]));
    let balancing = |first: usize| {
        let cells = pack.cell_balancing.iter().skip(first).take(8);
        format!("{:08b}", cells.enumerate().filter(|(_, on)| **on).fold(0u8, |b, (k, _)| b | 1 << k))
    };
    put(format!("pack_{p}/balancing1"), balancing(0));
    put(format!("pack_{p}/balancing2"), balancing(8));
}

/// bmspace's text for a level byte.
fn level(kind: LevelAlarmKind) -> &'static str {
    match kind {
        LevelAlarmKind::BelowLowerLimit => "< low limit",
        LevelAlarmKind::AboveUpperLimit => "> up limit",
        LevelAlarmKind::OtherFault => "other fault",
        LevelAlarmKind::UserDefined => "user defined",
        LevelAlarmKind::Unknown(_) => "unknown",
    }
}

/// bmspace's warnings line: non-normal levels (cells, temperatures, the three pack-wide ones), then the set
/// bits of protection 1 and 2, control, fault, warning 1 and 2, each group `Name: a | b`, all joined by `, `.
fn warnings(pack: &PackSnapshot, [protect1, protect2, control, fault, warn1, warn2]: [u8; 6]) -> String {
    let mut parts: Vec<String> = Vec::new();
    parts.extend(pack.cell_alarms.iter().map(|a| format!("cell {} {}", a.index, level(a.kind))));
    parts.extend(pack.temperature_alarms.iter().map(|a| format!("temp {} {}", a.index, level(a.kind))));
    for (quantity, text) in [
        ("charge_current", "charge current"),
        ("pack_voltage", "total voltage"),
        ("discharge_current", "discharge current"),
    ] {
        if let Some(alarm) = pack.quantity_alarms.iter().find(|a| a.quantity == quantity) {
            parts.push(format!("{text} {}", level(alarm.kind)));
        }
    }
    for (title, bits, texts) in [
        ("Protection State 1", protect1, &PROTECT1_TEXT),
        ("Protection State 2", protect2, &PROTECT2_TEXT),
        ("Control State", control, &CONTROL_TEXT),
        ("Fault State", fault, &FAULT_TEXT),
        ("Warning State 1", warn1, &WARN1_TEXT),
        ("Warning State 2", warn2, &WARN2_TEXT),
    ] {
        if bits != 0 {
            let set: Vec<&str> = (0..8).filter(|k| bits >> k & 1 == 1).map(|k| texts[k]).collect();
            parts.push(format!("{title}: {}", set.join(" | ")));
        }
    }
    parts.join(", ")
}

/// Builds bmspace's discovery configs for one device.
struct Entity<'a> {
    config: &'a MqttConfig,
    sn: &'a str,
    version: &'a str,
}

impl Entity<'_> {
    /// The fields every config starts with, in bmspace's key order.
    fn fields(&self, name: &str, field: &str, topic: &str) -> Vec<(String, PyValue)> {
        let device = PyValue::Dict(vec![
            ("manufacturer".to_owned(), PyValue::str("BMS Pace")),
            ("model".to_owned(), PyValue::str("AM-x")),
            ("identifiers".to_owned(), PyValue::str(format!("bmspace_{}", self.sn))),
            ("name".to_owned(), PyValue::str("Generic Lithium")),
            ("sw_version".to_owned(), PyValue::str(self.version)),
        ]);
        let base = &self.config.topic_prefix;
        vec![
            ("availability_topic".to_owned(), PyValue::str(format!("{base}/availability"))),
            ("device".to_owned(), device),
            ("name".to_owned(), PyValue::str(name)),
            ("unique_id".to_owned(), PyValue::str(format!("bmspace_{}_{field}", self.sn))),
            ("state_topic".to_owned(), PyValue::str(format!("{base}/{topic}"))),
        ]
    }

    fn message(&self, component: &str, name: &str, fields: Vec<(String, PyValue)>) -> Message {
        let object_id = name.replace(' ', "_");
        let topic = format!("{}/{component}/BMS-{}/{object_id}/config", self.config.discovery.prefix, self.sn);
        Message::retained(topic, PyValue::Dict(fields).dumps())
    }

    fn sensor(&self, name: &str, field: &str, topic: &str, unit: Option<&str>) -> Message {
        let mut fields = self.fields(name, field, topic);
        if let Some(unit) = unit {
            fields.push(("unit_of_measurement".to_owned(), PyValue::str(unit)));
        }
        self.message("sensor", name, fields)
    }

    fn binary_sensor(&self, name: &str, field: &str, topic: &str) -> Message {
        let mut fields = self.fields(name, field, topic);
        fields.push(("payload_on".to_owned(), PyValue::str("1")));
        fields.push(("payload_off".to_owned(), PyValue::str("0")));
        self.message("binary_sensor", name, fields)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::mqtt::{Broker, Layout};
    use crate::model::{Alarm, AlarmSeverity, Indicator, LevelAlarm, QuantityAlarm, Temperature};
    use crate::protocol::pace::apply::alarms;
    use crate::protocol::pace::status::{StatusBlock, StatusPack};

    fn config() -> MqttConfig {
        MqttConfig {
            qos: 0,
            ..MqttConfig::with_defaults(
                Broker { tls: false, host: "127.0.0.1".to_owned(), port: 1883 },
                "test",
                Layout::Bmspace,
            )
        }
    }

    /// A Pace pack as the protocol layer leaves it: 0x42 values, then a 0x44 block applied through the real
    /// alarm table, so the bits rebuilt here are the bits on the wire.
    fn pack(number: u8, block: StatusBlock) -> PackSnapshot {
        let mut p = PackSnapshot::new(number);
        p.voltage_volts = Some(53.28);
        p.current_amperes = Some(-2.5);
        p.remaining_capacity_ampere_hours = Some(86.7);
        p.full_capacity_ampere_hours = Some(100.0);
        p.design_capacity_ampere_hours = Some(100.0);
        p.cycle_count = Some(17);
        p.cell_count = Some(4);
        p.temperature_sensor_count = Some(6);
        p.cell_volts = vec![Some(3.33), Some(3.331), Some(3.329), Some(3.335)];
        p.temperatures = (1..=4)
            .map(|n| Temperature { sensor: SensorId::Probe(n), celsius: 24.9 + f64::from(n) / 10.0 })
            .chain([
                Temperature { sensor: SensorId::Mosfet, celsius: 30.0 },
                Temperature { sensor: SensorId::Ambient, celsius: 22.4 },
            ])
            .collect();
        let status = StatusPack::from_block(1, block);
        p.set_alarms(alarms(&status));
        p.cell_balancing = (1..=4u8).map(|cell| status.balancing_cells.contains(&cell)).collect();
        p.indicators = SYSTEM
            .iter()
            .enumerate()
            .map(|(k, &name)| Indicator { name, on: status.block.system >> k & 1 == 1 })
            .chain(
                CONTROL.iter().enumerate().map(|(k, &name)| Indicator { name, on: status.block.control >> k & 1 == 1 }),
            )
            .collect();
        p.info.firmware_version = Some("P16S100A-1812-1.00".to_owned());
        p.info.serial_number = Some("GPSR2PC200YW28021109".to_owned());
        p.info.bms_serial_number = Some("216061024400003A".to_owned());
        p
    }

    fn quiet() -> StatusBlock {
        StatusBlock { cell_warn: vec![0; 4], temp_warn: vec![0; 6], system: 0b0000_0110, ..StatusBlock::default() }
    }

    fn view(values: &DeviceSnapshot) -> DeviceView<'_> {
        DeviceView { name: "pace", protocol: Protocol::Pace, up: true, values, energy: &[] }
    }

    fn topics(messages: &[Message]) -> Vec<(&str, &str)> {
        messages.iter().map(|m| (m.topic.as_str(), m.payload.as_str())).collect()
    }

    #[test]
    fn state_is_bmspace_s_topics_and_text_in_its_order() {
        let values = DeviceSnapshot { packs: vec![pack(1, quiet())] };
        let messages = state(&config(), &view(&values));
        let want = [
            ("bmspace/bms_version", "P16S100A-1812-1.00"),
            ("bmspace/bms_sn", "216061024400003"),
            ("bmspace/pack_sn", "GPSR2PC200YW28"),
            ("bmspace/pack_1/v_cells/cell_1", "3330"),
            ("bmspace/pack_1/v_cells/cell_2", "3331"),
            ("bmspace/pack_1/v_cells/cell_3", "3329"),
            ("bmspace/pack_1/v_cells/cell_4", "3335"),
            ("bmspace/pack_1/cells_max_diff_calc", "6"),
            ("bmspace/pack_1/temps/temp_1", "25.0"),
            ("bmspace/pack_1/temps/temp_2", "25.1"),
            ("bmspace/pack_1/temps/temp_3", "25.2"),
            ("bmspace/pack_1/temps/temp_4", "25.3"),
            ("bmspace/pack_1/temps/temp_5", "30.0"),
            ("bmspace/pack_1/temps/temp_6", "22.4"),
            ("bmspace/pack_1/i_pack", "-2.5"),
            ("bmspace/pack_1/v_pack", "53.28"),
            ("bmspace/pack_1/i_remain_cap", "86700"),
            ("bmspace/pack_1/i_full_cap", "100000"),
            ("bmspace/pack_1/soc", "86.7"),
            ("bmspace/pack_1/cycles", "17"),
            ("bmspace/pack_1/i_design_cap", "100000"),
            ("bmspace/pack_1/soh", "100.0"),
            ("bmspace/pack_remain_cap", "86700"),
            ("bmspace/pack_full_cap", "100000"),
            ("bmspace/pack_design_cap", "100000"),
            ("bmspace/pack_soc", "86.7"),
            ("bmspace/pack_soh", "100.0"),
            ("bmspace/pack_1/prot_short_circuit", "0"),
            ("bmspace/pack_1/prot_discharge_current", "0"),
            ("bmspace/pack_1/prot_charge_current", "0"),
            ("bmspace/pack_1/fully", "0"),
            ("bmspace/pack_1/current_limit", "0"),
            ("bmspace/pack_1/charge_fet", "1"),
            ("bmspace/pack_1/discharge_fet", "1"),
            ("bmspace/pack_1/pack_indicate", "0"),
            ("bmspace/pack_1/reverse", "0"),
            ("bmspace/pack_1/ac_in", "0"),
            ("bmspace/pack_1/heart", "0"),
            ("bmspace/pack_1/warnings", ""),
            ("bmspace/pack_1/balancing1", "00000000"),
            ("bmspace/pack_1/balancing2", "00000000"),
            ("bmspace/availability", "online"),
        ];
        assert_eq!(topics(&messages), want);
        assert!(messages[..messages.len() - 1].iter().all(|m| !m.retain), "values are not retained");
        assert!(messages.last().unwrap().retain, "availability is");
    }

    #[test]
    fn the_warnings_line_and_bits_follow_bmspace() {
        let block = StatusBlock {
            cell_warn: vec![0, 0, 0x02, 0],
            temp_warn: vec![0x01, 0, 0, 0, 0, 0],
            charge_current_warn: 0x02,
            pack_voltage_warn: 0xF0,
            discharge_current_warn: 0x00,
            protect1: 0b0101_0000,
            protect2: 0b1000_0000,
            system: 0b1010_0111,
            control: 0b0010_0001,
            fault: 0b0000_0100,
            balance1: 0b1000_0001,
            balance2: 0b0000_0010,
            warn1: 0b0000_0001,
            warn2: 0b1000_0000,
            ..StatusBlock::default()
        };
        let mut p = pack(1, block);
        p.cell_alarms = vec![LevelAlarm { index: 3, kind: LevelAlarmKind::AboveUpperLimit }];
        p.temperature_alarms = vec![LevelAlarm { index: 1, kind: LevelAlarmKind::BelowLowerLimit }];
        p.quantity_alarms = vec![
            QuantityAlarm { quantity: "charge_current", kind: LevelAlarmKind::AboveUpperLimit },
            QuantityAlarm { quantity: "pack_voltage", kind: LevelAlarmKind::OtherFault },
        ];
        p.cell_count = Some(16);
        p.cell_balancing = (1..=16).map(|c| [1, 8, 10].contains(&c)).collect();
        let values = DeviceSnapshot { packs: vec![p] };
        let messages = state(&config(), &view(&values));
        let get = |topic: &str| messages.iter().find(|m| m.topic == topic).map(|m| m.payload.as_str());
        assert_eq!(
            get("bmspace/pack_1/warnings"),
            Some(
                "cell 3 > up limit, temp 1 < low limit, charge current > up limit, total voltage other fault, \
                 Protection State 1: Charge current protect | Short circuit, Protection State 2: Fully, \
                 Control State: Buzzer warn function enabled | LED warn functiuon disabled, \
                 Fault State: NTC fault (NTC), Warning State 1: Above cell volt warn, Warning State 2: Low power warn"
            )
        );
        assert_eq!(get("bmspace/pack_1/prot_short_circuit"), Some("1"));
        assert_eq!(get("bmspace/pack_1/prot_discharge_current"), Some("0"));
        assert_eq!(get("bmspace/pack_1/prot_charge_current"), Some("1"));
        assert_eq!(get("bmspace/pack_1/fully"), Some("1"));
        for (topic, on) in [
            ("current_limit", "1"),
            ("charge_fet", "1"),
            ("discharge_fet", "1"),
            ("pack_indicate", "0"),
            ("reverse", "0"),
            ("ac_in", "1"),
            ("heart", "1"),
        ] {
            assert_eq!(get(&format!("bmspace/pack_1/{topic}")), Some(on), "{topic}");
        }
        assert_eq!(get("bmspace/pack_1/balancing1"), Some("10000001"));
        assert_eq!(get("bmspace/pack_1/balancing2"), Some("00000010"));
    }

    #[test]
    fn zero_padding_widens_packs_and_cells_but_not_temperatures() {
        let mut cfg = config();
        cfg.zero_pad_number_packs = 2;
        cfg.zero_pad_number_cells = 2;
        let values = DeviceSnapshot { packs: vec![pack(1, quiet()), pack(2, quiet())] };
        let messages = state(&cfg, &view(&values));
        let has = |topic: &str| messages.iter().any(|m| m.topic == topic);
        assert!(has("bmspace/pack_01/v_cells/cell_01"));
        assert!(has("bmspace/pack_02/v_cells/cell_04"));
        assert!(has("bmspace/pack_02/temps/temp_6"));
        assert!(has("bmspace/pack_02/warnings"));
        assert!(!has("bmspace/pack_1/i_pack"));
        let configs = discovery(&cfg, &view(&values));
        let cell = configs
            .iter()
            .find(|m| m.topic == "homeassistant/sensor/BMS-216061024400003/Pack_02_Cell_03_Voltage/config")
            .unwrap();
        assert!(cell.payload.contains(r#""name": "Pack 02 Cell 03 Voltage""#));
        assert!(cell.payload.contains(r#""unique_id": "bmspace_216061024400003_pack_02_v_cell_03""#));
        assert!(cell.payload.contains(r#""state_topic": "bmspace/pack_02/v_cells/cell_03""#));
        assert!(configs.iter().any(|m| m.topic.ends_with("/Pack_02_Temperature_6/config")));
    }

    #[test]
    fn discovery_payloads_are_bmspace_s() {
        let values = DeviceSnapshot { packs: vec![pack(1, quiet())] };
        let configs = discovery(&config(), &view(&values));
        let get = |topic: &str| {
            configs.iter().find(|m| m.topic == topic).map_or_else(|| panic!("{topic}"), |m| m.payload.as_str())
        };
        let device = r#""device": {"manufacturer": "BMS Pace", "model": "AM-x", "identifiers": "bmspace_216061024400003", "name": "Generic Lithium", "sw_version": "P16S100A-1812-1.00"}"#;
        assert_eq!(
            get("homeassistant/sensor/BMS-216061024400003/Pack_1_Cell_1_Voltage/config"),
            format!(
                r#"{{"availability_topic": "bmspace/availability", {device}, "name": "Pack 1 Cell 1 Voltage", "unique_id": "bmspace_216061024400003_pack_1_v_cell_1", "state_topic": "bmspace/pack_1/v_cells/cell_1", "unit_of_measurement": "mV"}}"#
            )
        );
        assert_eq!(
            get("homeassistant/binary_sensor/BMS-216061024400003/Pack_1_Heart/config"),
            format!(
                r#"{{"availability_topic": "bmspace/availability", {device}, "name": "Pack 1 Heart", "unique_id": "bmspace_216061024400003_pack_1_heart", "state_topic": "bmspace/pack_1/heart", "payload_on": "1", "payload_off": "0"}}"#
            )
        );
        assert!(
            get("homeassistant/sensor/BMS-216061024400003/Pack_1_Temperature_5/config")
                .ends_with(r#""unit_of_measurement": "\u00b0C"}"#)
        );
        assert!(
            get("homeassistant/sensor/BMS-216061024400003/Pack_1_Cycles/config")
                .ends_with(r#""unit_of_measurement": ""}"#)
        );
        assert!(
            get("homeassistant/sensor/BMS-216061024400003/Pack_1_Warnings/config")
                .ends_with(r#""state_topic": "bmspace/pack_1/warnings"}"#)
        );
        assert!(get("homeassistant/sensor/BMS-216061024400003/Pack_State_of_Charge/config").contains(
            r#""unique_id": "bmspace_216061024400003_pack_soc", "state_topic": "bmspace/pack_soc", "unit_of_measurement": "%""#
        ));
        assert!(
            get("homeassistant/sensor/BMS-216061024400003/Pack_Remaining_Capacity/config")
                .contains(r#""unique_id": "bmspace_216061024400003_pack_i_remain_cap""#)
        );
        // 4 cells, 6 temperatures, 11 values, 10 bits, the spread; then 5 whole-bank sensors; all retained.
        assert_eq!(configs.len(), 4 + 6 + 11 + 10 + 1 + 5);
        assert!(configs.iter().all(|m| m.retain));
        let binaries = configs.iter().filter(|m| m.topic.contains("/binary_sensor/")).count();
        assert_eq!(binaries, 10);
        // Every state topic a config names is one the state publishes.
        let published: Vec<String> = state(&config(), &view(&values)).into_iter().map(|m| m.topic).collect();
        for config in &configs {
            let body: serde_json::Value = serde_json::from_str(&config.payload).unwrap();
            let topic = body["state_topic"].as_str().unwrap();
            assert!(published.iter().any(|t| t == topic), "{topic} is never published");
        }
    }

    #[test]
    fn no_discovery_until_the_serial_is_known_and_a_down_device_is_offline() {
        let mut p = pack(1, quiet());
        p.info.bms_serial_number = None;
        p.info.serial_number = None;
        let values = DeviceSnapshot { packs: vec![p] };
        assert!(discovery(&config(), &view(&values)).is_empty());
        assert!(!state(&config(), &view(&values)).iter().any(|m| m.topic == "bmspace/bms_sn"));

        let values = DeviceSnapshot { packs: vec![pack(1, quiet())] };
        let down = DeviceView { up: false, ..view(&values) };
        assert_eq!(topics(&state(&config(), &down)), [("bmspace/availability", "offline")]);
        assert_eq!(birth(&config()), Some(Message::retained("bmspace/availability", "online")));
        assert_eq!(will(&config()), Some(Message::retained("bmspace/availability", "offline")));
    }

    #[test]
    fn serials_are_cut_first_then_lose_their_spaces() {
        // bmspace: INFO[0:30] (15 characters) then .replace(" ", ""); the pack serial likewise at 14.
        assert_eq!(cut("21606 1024400003A", 15), "21606102440000");
        assert_eq!(cut("GPSR2PC200YW28021109", 14), "GPSR2PC200YW28");
        assert_eq!(cut("03", 15), "03");
        let mut p = pack(1, quiet());
        p.info.serial_number = p.info.bms_serial_number.clone();
        let values = DeviceSnapshot { packs: vec![p] };
        let messages = state(&config(), &view(&values));
        let get = |topic: &str| messages.iter().find(|m| m.topic == topic).map(|m| m.payload.as_str());
        assert_eq!(get("bmspace/pack_sn"), Some(""), "no pack serial in 0xC2: bmspace publishes an empty one");
    }

    #[test]
    fn only_what_was_read_is_published() {
        // A poll that read 0x42 but not 0x44, with one cell missing and no design capacity.
        let mut p = PackSnapshot::new(1);
        p.cell_volts = vec![Some(3.3), None, Some(3.31)];
        p.remaining_capacity_ampere_hours = Some(50.0);
        p.full_capacity_ampere_hours = Some(0.0);
        let values = DeviceSnapshot { packs: vec![p] };
        let messages = state(&config(), &view(&values));
        assert_eq!(
            topics(&messages),
            [
                ("bmspace/pack_1/v_cells/cell_1", "3300"),
                ("bmspace/pack_1/v_cells/cell_3", "3310"),
                ("bmspace/pack_1/cells_max_diff_calc", "10"),
                ("bmspace/pack_1/i_remain_cap", "50000"),
                ("bmspace/pack_1/i_full_cap", "0"),
                ("bmspace/availability", "online"),
            ]
        );
    }

    #[test]
    fn a_simulated_pace_master_read_through_the_real_codec_fills_every_topic() {
        use crate::model::Sections;
        use crate::protocol::Exchange as _;
        use crate::protocol::exchange::test_support::poll;
        use crate::protocol::pace::VER_PACE;
        use crate::protocol::pace::exchange::{PaceExchange, PackSelection};
        use crate::simulator::Responder as _;
        use crate::simulator::pace::{MASTER_ADR, PaceBus};

        let mut bus = PaceBus::new(2, 16, 6, 7);
        for _ in 0..10 {
            bus.step(30.0);
        }
        bus.pack_mut(2).unwrap().set_charge_mosfet(false);
        let mut exchange = PaceExchange::new(MASTER_ADR, PackSelection::All, VER_PACE);
        poll(&mut exchange, &mut bus, Sections::all());
        let values = exchange.snapshot();
        let truth = bus.truth();
        let messages = state(&config(), &view(&values));
        let get = |topic: &str| {
            messages.iter().find(|m| m.topic == topic).map_or_else(|| panic!("{topic} missing"), |m| m.payload.as_str())
        };
        let sn = get("bmspace/bms_sn");
        assert!(sn.starts_with("SIMBMS") && sn.len() == 15, "{sn}");
        assert!(get("bmspace/pack_sn").starts_with("SIMPACK"));
        assert!(get("bmspace/bms_version").starts_with("P16S100A"));
        for (p, t) in [("1", &truth.packs[0]), ("2", &truth.packs[1])] {
            for (i, volts) in t.cell_volts.iter().enumerate() {
                let mv: i64 = get(&format!("bmspace/pack_{p}/v_cells/cell_{}", i + 1)).parse().unwrap();
                assert!((mv as f64 - volts.unwrap() * 1000.0).abs() <= 1.0, "pack {p} cell {}", i + 1);
            }
            for n in 1..=6 {
                let celsius: f64 = get(&format!("bmspace/pack_{p}/temps/temp_{n}")).parse().unwrap();
                assert!((-40.0..100.0).contains(&celsius));
            }
            assert_eq!(get(&format!("bmspace/pack_{p}/cycles")), t.cycle_count.unwrap().to_string());
            let remaining: f64 = get(&format!("bmspace/pack_{p}/i_remain_cap")).parse().unwrap();
            let full: f64 = get(&format!("bmspace/pack_{p}/i_full_cap")).parse().unwrap();
            assert_eq!(get(&format!("bmspace/pack_{p}/soc")), float_str(round(remaining / full * 100.0, 2)));
            assert!(get(&format!("bmspace/pack_{p}/balancing1")).chars().all(|c| c == '0' || c == '1'));
        }
        assert_eq!(get("bmspace/pack_1/charge_fet"), "1");
        assert_eq!(get("bmspace/pack_2/charge_fet"), "0");
        assert_eq!(get("bmspace/pack_2/discharge_fet"), "1");
        assert_eq!(get("bmspace/pack_remain_cap"), get("bmspace/pack_1/i_remain_cap"));

        // Discovery names exactly the state topics, once each: 2 × (16 cells + 6 temperatures + 22) + 5.
        let configs = discovery(&config(), &view(&values));
        assert_eq!(configs.len(), 2 * (16 + 6 + 22) + 5);
        let mut named: Vec<String> = configs
            .iter()
            .map(|c| {
                serde_json::from_str::<serde_json::Value>(&c.payload).unwrap()["state_topic"]
                    .as_str()
                    .unwrap()
                    .to_owned()
            })
            .collect();
        named.sort();
        named.dedup();
        assert_eq!(named.len(), configs.len(), "no two configs share a state topic");
        for topic in &named {
            assert!(messages.iter().any(|m| &m.topic == topic), "{topic} is never published");
        }
        assert!(configs.iter().all(|c| c.topic.contains(&format!("/BMS-{sn}/"))));
    }

    #[test]
    fn a_protocol_without_instruction_bits_still_reports_its_mosfets() {
        let mut p = PackSnapshot::new(1);
        p.set_alarms([Alarm::new("short_circuit", AlarmSeverity::Protection, true)]);
        p.charge_mosfet_enabled = Some(false);
        p.discharge_mosfet_enabled = Some(true);
        let values = DeviceSnapshot { packs: vec![p] };
        let daly = DeviceView { protocol: Protocol::Daly, ..view(&values) };
        let messages = state(&config(), &daly);
        let get = |topic: &str| messages.iter().find(|m| m.topic == topic).map(|m| m.payload.as_str());
        assert_eq!(get("bmspace/pack_1/charge_fet"), Some("0"));
        assert_eq!(get("bmspace/pack_1/discharge_fet"), Some("1"));
        assert_eq!(get("bmspace/pack_1/heart"), None);
        assert_eq!(get("bmspace/pack_1/prot_short_circuit"), Some("1"));
        assert_eq!(get("bmspace/pack_1/warnings"), Some("Protection State 1: Short circuit"));
    }
}
