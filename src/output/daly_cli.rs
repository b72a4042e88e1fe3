//! `read --format daly-bms-cli`: one pack rendered in the key layout of `daly-bms-cli --all` (PyPI `dalybms`
//! 0.5.0), so scripts written against that tool keep working.
//!
//! Layout (each key is `false` when nothing of it is known, which is what daly-bms-cli prints for a failed read):
//!
//! | key | value |
//! |---|---|
//! | `soc` | `{"total_voltage": V, "current": A, "soc_percent": %}` |
//! | `cell_voltage_range` | `{"highest_voltage": V, "highest_cell": n, "lowest_voltage": V, "lowest_cell": n}` |
//! | `temperature_range` | `{"highest_temperature": °C, "highest_sensor": n, "lowest_temperature": °C, "lowest_sensor": n}` |
//! | `mosfet_status` | `{"mode": "stationary"\|"charging"\|"discharging", "charging_mosfet": bool, "discharging_mosfet": bool, "capacity_ah": Ah}` |
//! | `status` | `{"cells": n, "temperature_sensors": n, "charger_running": bool, "load_running": bool, "states": {"DI1": bool, …}, "cycles": n}` |
//! | `cell_voltages` | `{"1": V, "2": V, …}` |
//! | `temperatures` | `{"1": °C, …}` (numbered probes only) |
//! | `balancing_status` | `{"error": "not implemented"}` (daly-bms-cli never decodes balancing) |
//! | `errors` | list of daly-bms-cli's error texts for the active alarms |
//!
//! Deviations, each deliberate:
//! - Ranges are derived from the cells and probes (0x91/0x92 are not polled, `docs/protocols/daly-a5.md#poll-plan`); on
//!   a tie the lowest-numbered cell or sensor is named, where a board may name another.
//! - `current` is the model's current, positive while charging. daly-bms-cli prints the raw wire value, which
//!   has the same sign on charge-positive boards; on a discharge-positive board, `--current-sign
//!   charge-positive` reproduces daly-bms-cli's sign exactly.
//! - A field that is unknown inside a section that is otherwise known is `null` (daly-bms-cli reads a section
//!   all or nothing, so it has no such case); a cell not read this time is `null` where daly-bms-cli printed 0.0.
//! - `errors` is `null` when no alarm table was read: daly-bms-cli crashes in that case. Alarms that
//!   daly-bms-cli has no text for (Daly reserved bits 3.4–3.7, where it crashes, the fault code, other
//!   protocols' alarms) appear under the model's snake_case name. The texts are reproduced verbatim, including
//!   daly-bms-cli's reuse of the level-1 over-voltage text for three different bits.
//! - `states` keeps daly-bms-cli's quirk of listing ports only up to the highest active one (at least `DI1`),
//!   but lists all eight when DO4 is active, where daly-bms-cli crashes on the sign bit.
//! - Temperatures print as integers when whole (daly-bms-cli's are always whole), else with one decimal.

use serde_json::{Map, Value, json};

use super::{cell_extremes, round_to};
use crate::model::{DeviceSnapshot, PackSnapshot, PackState, SensorId};

/// daly-bms-cli's port names, in bit order of the 0x94 I/O byte, paired with the model's port names.
const PORTS: [(&str, &str); 8] = [
    ("di1", "DI1"),
    ("di2", "DI2"),
    ("di3", "DI3"),
    ("di4", "DI4"),
    ("do1", "DO1"),
    ("do2", "DO2"),
    ("do3", "DO3"),
    ("do4", "DO4"),
];

/// The model's Daly alarm names and the text daly-bms-cli 0.5.0 prints for the same bit (`error_codes.py`).
const ERROR_TEXTS: [(&str, &str); 52] = [
    ("cell_voltage_high_l1", "one stage warning of unit over voltage"),
    ("cell_voltage_high_l2", "one stage warning of unit over voltage"),
    ("cell_voltage_low_l1", "one stage warning of unit over voltage"),
    ("cell_voltage_low_l2", "two stage warning of unit over voltage"),
    ("pack_voltage_high_l1", "Total voltage is too high One alarm"),
    ("pack_voltage_high_l2", "Total voltage is too high Level two alarm"),
    ("pack_voltage_low_l1", "Total voltage is too low One alarm"),
    ("pack_voltage_low_l2", "Total voltage is too low Level two alarm"),
    ("charge_temperature_high_l1", "Charging temperature too high. One alarm"),
    ("charge_temperature_high_l2", "Charging temperature too high. Level two alarm"),
    ("charge_temperature_low_l1", "Charging temperature too low. One alarm"),
    ("charge_temperature_low_l2", "Charging temperature's too low. Level two alarm"),
    ("discharge_temperature_high_l1", "Discharge temperature is too high. One alarm"),
    ("discharge_temperature_high_l2", "Discharge temperature is too high. Level two alarm"),
    ("discharge_temperature_low_l1", "Discharge temperature is too low. One alarm"),
    ("discharge_temperature_low_l2", "Discharge temperature is too low. Level two alarm"),
    ("charge_overcurrent_l1", "Charge over current. Level one alarm"),
    ("charge_overcurrent_l2", "Charge over current, level two alarm"),
    ("discharge_overcurrent_l1", "Discharge over current. Level one alarm"),
    ("discharge_overcurrent_l2", "Discharge overcurrent, level two alarm"),
    ("soc_high_l1", "SOC is too high an alarm"),
    ("soc_high_l2", "SOC is too high. Alarm Two"),
    ("soc_low_l1", "SOC is too low. level one alarm"),
    ("soc_low_l2", "SOC is too low. level two alarm"),
    ("cell_voltage_difference_l1", "Excessive differential pressure level one alarm"),
    ("cell_voltage_difference_l2", "Excessive differential pressure level two alarm"),
    ("temperature_difference_l1", "Excessive temperature difference level one alarm"),
    ("temperature_difference_l2", "Excessive temperature difference level two alarm"),
    ("charge_mosfet_overtemperature", "charging  MOS overtemperature warning"),
    ("discharge_mosfet_overtemperature", "discharge MOS overtemperature warning"),
    ("charge_mosfet_temperature_sensor_fault", "charging MOS temperature detection sensor failure"),
    ("discharge_mosfet_temperature_sensor_fault", "discharge MOS temperature detection sensor failure"),
    ("charge_mosfet_adhesion_fault", "charging MOS adhesion failure"),
    ("discharge_mosfet_adhesion_fault", "discharge MOS adhesion failure"),
    ("charge_mosfet_open_circuit_fault", "charging MOS breaker failure"),
    ("discharge_mosfet_open_circuit_fault", "discharge MOS breaker failure"),
    ("afe_chip_fault", "AFE acquisition chip malfunction"),
    ("cell_voltage_acquisition_lost", "monomer collect drop off"),
    ("cell_temperature_sensor_fault", "Single Temperature Sensor Fault"),
    ("eeprom_fault", "EEPROM storage failures"),
    ("rtc_fault", "RTC clock malfunction"),
    ("precharge_failure", "Precharge Failure"),
    ("external_communication_fault", "vehicle communications malfunction"),
    ("internal_communication_fault", "intranet communication module malfunction"),
    ("current_module_fault", "Current Module Failure"),
    ("total_voltage_detection_fault", "main pressure detection module"),
    ("short_circuit_protection_fault", "Short circuit protection failure"),
    ("low_voltage_charge_forbidden", "Low Voltage No Charging"),
    ("reserved_b6_4", "RESERVED"),
    ("reserved_b6_5", "RESERVED"),
    ("reserved_b6_6", "RESERVED"),
    ("reserved_b6_7", "RESERVED"),
];

/// Render pack `pack` of `device` in daly-bms-cli's `--all` layout; a pack the device did not report renders
/// as a failed read of every section.
#[must_use]
pub fn render(device: &DeviceSnapshot, pack: u8) -> Value {
    let empty = PackSnapshot::new(pack);
    let p = device.packs.iter().find(|p| p.pack == pack).unwrap_or(&empty);
    let mut out = Map::new();
    out.insert("soc".to_owned(), soc(p));
    out.insert("cell_voltage_range".to_owned(), cell_voltage_range(p));
    out.insert("temperature_range".to_owned(), temperature_range(p));
    out.insert("mosfet_status".to_owned(), mosfet_status(p));
    out.insert("status".to_owned(), status(p));
    out.insert("cell_voltages".to_owned(), cell_voltages(p));
    out.insert("temperatures".to_owned(), temperatures(p));
    out.insert("balancing_status".to_owned(), balancing_status(p));
    out.insert("errors".to_owned(), errors(p));
    Value::Object(out)
}

/// A number rounded to `decimals`, or `null`.
fn number(value: Option<f64>, decimals: i32) -> Value {
    value.filter(|v| v.is_finite()).map_or(Value::Null, |v| json!(round_to(v, decimals)))
}

/// A temperature as daly-bms-cli prints it: an integer when whole.
fn celsius(value: f64) -> Value {
    let rounded = round_to(value, 1);
    if rounded.fract() == 0.0 && rounded.abs() < 1e9 { json!(rounded as i64) } else { number(Some(value), 1) }
}

/// `false` (daly-bms-cli's failed read) when every field of a section is unknown, else the section object.
fn section(fields: Vec<(&str, Value)>) -> Value {
    if fields.iter().all(|(_, v)| v.is_null()) {
        return Value::Bool(false);
    }
    Value::Object(fields.into_iter().map(|(k, v)| (k.to_owned(), v)).collect())
}

fn soc(p: &PackSnapshot) -> Value {
    section(vec![
        ("total_voltage", number(p.voltage_volts, 3)),
        ("current", number(p.current_amperes, 3)),
        ("soc_percent", number(p.state_of_charge_ratio.map(|r| r * 100.0), 2)),
    ])
}

fn cell_voltage_range(p: &PackSnapshot) -> Value {
    let Some(((lo, lo_cell), (hi, hi_cell))) = cell_extremes(p) else { return Value::Bool(false) };
    json!({
        "highest_voltage": number(Some(hi), 3),
        "highest_cell": hi_cell,
        "lowest_voltage": number(Some(lo), 3),
        "lowest_cell": lo_cell,
    })
}

/// Numbered probes as `(number, celsius)`, the sensors daly-bms-cli knows.
fn probes(p: &PackSnapshot) -> impl Iterator<Item = (u8, f64)> + '_ {
    p.temperatures.iter().filter_map(|t| match t.sensor {
        SensorId::Probe(n) => Some((n, t.celsius)),
        SensorId::Mosfet | SensorId::Ambient | SensorId::Board => None,
    })
}

fn temperature_range(p: &PackSnapshot) -> Value {
    let extremes = probes(p).fold(None, |acc: Option<((u8, f64), (u8, f64))>, probe| match acc {
        None => Some((probe, probe)),
        Some((lo, hi)) => Some((if probe.1 < lo.1 { probe } else { lo }, if probe.1 > hi.1 { probe } else { hi })),
    });
    let Some((lo, hi)) = extremes else { return Value::Bool(false) };
    json!({
        "highest_temperature": celsius(hi.1),
        "highest_sensor": hi.0,
        "lowest_temperature": celsius(lo.1),
        "lowest_sensor": lo.0,
    })
}

fn mosfet_status(p: &PackSnapshot) -> Value {
    let mode = p.state.map(|s| match s {
        PackState::Idle => "stationary",
        PackState::Charging => "charging",
        PackState::Discharging => "discharging",
    });
    section(vec![
        ("mode", json!(mode)),
        ("charging_mosfet", json!(p.charge_mosfet_enabled)),
        ("discharging_mosfet", json!(p.discharge_mosfet_enabled)),
        ("capacity_ah", number(p.remaining_capacity_ampere_hours, 3)),
    ])
}

/// daly-bms-cli's `states`: ports in bit order up to the highest active one, at least `DI1`.
fn states(p: &PackSnapshot) -> Value {
    if p.digital_io.is_empty() {
        return Value::Null;
    }
    let active = |name: &str| p.digital_io.iter().any(|d| d.port == name && d.active);
    let shown = PORTS.iter().rposition(|(name, _)| active(name)).map_or(1, |highest| highest + 1);
    Value::Object(PORTS.iter().take(shown).map(|(name, key)| ((*key).to_owned(), Value::Bool(active(name)))).collect())
}

fn status(p: &PackSnapshot) -> Value {
    section(vec![
        ("cells", json!(p.cell_count)),
        ("temperature_sensors", json!(p.temperature_sensor_count)),
        ("charger_running", json!(p.charger_connected)),
        ("load_running", json!(p.load_connected)),
        ("states", states(p)),
        ("cycles", json!(p.cycle_count)),
    ])
}

fn cell_voltages(p: &PackSnapshot) -> Value {
    if p.cell_volts.is_empty() {
        return Value::Bool(false);
    }
    Value::Object(p.cell_volts.iter().enumerate().map(|(i, v)| ((i + 1).to_string(), number(*v, 3))).collect())
}

fn temperatures(p: &PackSnapshot) -> Value {
    let map: Map<String, Value> = probes(p).map(|(n, c)| (n.to_string(), celsius(c))).collect();
    if map.is_empty() { Value::Bool(false) } else { Value::Object(map) }
}

fn balancing_status(p: &PackSnapshot) -> Value {
    // daly-bms-cli reads 0x97 but always prints this placeholder when the read succeeded.
    if p.cell_balancing.is_empty() && p.balancing_active.is_none() {
        Value::Bool(false)
    } else {
        json!({ "error": "not implemented" })
    }
}

fn errors(p: &PackSnapshot) -> Value {
    if p.alarms.is_empty() {
        return Value::Null;
    }
    p.alarms
        .iter()
        .filter(|a| a.active)
        .map(|a| {
            let text = ERROR_TEXTS.iter().find(|(name, _)| *name == a.name).map_or(a.name, |(_, text)| text);
            Value::String(text.to_owned())
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Alarm, AlarmSeverity, DigitalPort, Temperature};
    use crate::protocol::daly::alarms::ALARM_BITS;

    const FIXTURE: &str = include_str!("../../tests/fixtures/daly-bms-cli-all.json");

    /// A pack shaped like the simulator run the fixture was captured from (16 cells, 4 probes, no port active).
    fn filled() -> DeviceSnapshot {
        let mut device = DeviceSnapshot::default();
        let p = device.pack_mut(1);
        p.voltage_volts = Some(52.6);
        p.current_amperes = Some(-2.5);
        p.state_of_charge_ratio = Some(0.619);
        p.state = Some(PackState::Discharging);
        p.charge_mosfet_enabled = Some(true);
        p.discharge_mosfet_enabled = Some(true);
        p.remaining_capacity_ampere_hours = Some(173.401);
        p.cell_count = Some(16);
        p.temperature_sensor_count = Some(4);
        p.charger_connected = Some(false);
        p.load_connected = Some(true);
        p.digital_io = PORTS.iter().map(|(port, _)| DigitalPort { port, active: false }).collect();
        p.cycle_count = Some(42);
        p.cell_volts = (0..16).map(|i| Some(3.28 + f64::from(i) * 0.001)).collect();
        p.temperatures =
            (1..=4).map(|n| Temperature { sensor: SensorId::Probe(n), celsius: 20.0 + f64::from(n) }).collect();
        p.temperatures.push(Temperature { sensor: SensorId::Mosfet, celsius: 35.0 });
        p.cell_balancing = vec![false; 16];
        p.balancing_active = Some(false);
        p.set_alarms(ALARM_BITS.iter().map(|b| Alarm::new(b.name, b.severity, false)));
        device
    }

    fn kind(v: &Value) -> &'static str {
        match v {
            Value::Null => "null",
            Value::Bool(_) => "bool",
            Value::Number(_) => "number",
            Value::String(_) => "string",
            Value::Array(_) => "list",
            Value::Object(_) => "object",
        }
    }

    /// Every difference in key set or value type between `ours` and `theirs`, as paths.
    fn differences(path: &str, ours: &Value, theirs: &Value, out: &mut Vec<String>) {
        if kind(ours) != kind(theirs) {
            out.push(format!("{path}: {} vs {}", kind(ours), kind(theirs)));
            return;
        }
        match (ours, theirs) {
            (Value::Object(a), Value::Object(b)) => {
                for key in a.keys().filter(|k| !b.contains_key(*k)) {
                    out.push(format!("{path}.{key}: only ours"));
                }
                for key in b.keys().filter(|k| !a.contains_key(*k)) {
                    out.push(format!("{path}.{key}: only daly-bms-cli"));
                }
                for (key, value) in a.iter().filter_map(|(k, v)| b.get(k).map(|w| (k, (v, w)))) {
                    differences(&format!("{path}.{key}"), value.0, value.1, out);
                }
            }
            (Value::Array(a), Value::Array(b)) => {
                for (i, (x, y)) in a.iter().zip(b).enumerate() {
                    differences(&format!("{path}[{i}]"), x, y, out);
                }
            }
            _ => {}
        }
    }

    #[test]
    fn key_layout_and_value_types_match_a_real_daly_bms_cli_run() {
        let theirs: Value = serde_json::from_str(FIXTURE).unwrap();
        let ours = render(&filled(), 1);
        let mut diffs = Vec::new();
        differences("", &ours, &theirs, &mut diffs);
        assert!(diffs.is_empty(), "{diffs:#?}");
        // Integers where daly-bms-cli prints integers.
        assert!(ours["status"]["cells"].is_u64());
        assert!(ours["temperatures"]["1"].is_i64());
        assert!(ours["cell_voltage_range"]["highest_cell"].is_u64());
    }

    #[test]
    fn values_use_daly_bms_cli_units_and_names() {
        let mut device = filled();
        device.packs[0].cell_volts[6] = Some(3.401);
        device.packs[0].set_alarms([
            Alarm::new("cell_voltage_low_l2", AlarmSeverity::Protection, true),
            Alarm::new("soc_low_l1", AlarmSeverity::Warning, false),
            Alarm::new("fault_code", AlarmSeverity::Fault, true),
        ]);
        let v = render(&device, 1);
        assert_eq!(v["soc"], json!({"total_voltage": 52.6, "current": -2.5, "soc_percent": 61.9}));
        assert_eq!(v["mosfet_status"]["mode"], "discharging");
        assert_eq!(v["mosfet_status"]["capacity_ah"], 173.401);
        assert_eq!(v["cell_voltage_range"]["highest_voltage"], 3.401);
        assert_eq!(v["cell_voltage_range"]["highest_cell"], 7);
        assert_eq!(v["cell_voltage_range"]["lowest_voltage"], 3.28);
        assert_eq!(v["cell_voltage_range"]["lowest_cell"], 1);
        assert_eq!(
            v["temperature_range"],
            json!({"highest_temperature": 24, "highest_sensor": 4, "lowest_temperature": 21, "lowest_sensor": 1})
        );
        assert_eq!(v["temperatures"].as_object().unwrap().len(), 4, "the MOSFET sensor is not a probe");
        assert_eq!(v["errors"], json!(["two stage warning of unit over voltage", "fault_code"]));
        assert_eq!(v["balancing_status"], json!({"error": "not implemented"}));
    }

    #[test]
    fn states_list_ports_up_to_the_highest_active_one() {
        let mut device = filled();
        assert_eq!(render(&device, 1)["status"]["states"], json!({"DI1": false}));
        device.packs[0].digital_io[2].active = true;
        assert_eq!(render(&device, 1)["status"]["states"], json!({"DI1": false, "DI2": false, "DI3": true}));
        device.packs[0].digital_io[7].active = true;
        assert_eq!(render(&device, 1)["status"]["states"].as_object().unwrap().len(), 8);
    }

    #[test]
    fn an_unread_pack_prints_what_a_failed_read_prints() {
        let v = render(&filled(), 2);
        for key in ["soc", "cell_voltage_range", "temperature_range", "mosfet_status", "status", "cell_voltages"] {
            assert_eq!(v[key], false, "{key}");
        }
        assert_eq!(v["temperatures"], false);
        assert_eq!(v["balancing_status"], false);
        assert_eq!(v["errors"], Value::Null);
        // A partly known section keeps its keys, with null for what is unknown.
        let mut device = DeviceSnapshot::default();
        device.pack_mut(1).state_of_charge_ratio = Some(0.5);
        assert_eq!(render(&device, 1)["soc"], json!({"total_voltage": null, "current": null, "soc_percent": 50.0}));
        assert_eq!(render(&device, 1)["mosfet_status"], false);
    }

    #[test]
    fn charging_and_idle_modes_and_stationary_wording() {
        let mut device = filled();
        device.packs[0].state = Some(PackState::Idle);
        assert_eq!(render(&device, 1)["mosfet_status"]["mode"], "stationary");
        device.packs[0].state = Some(PackState::Charging);
        assert_eq!(render(&device, 1)["mosfet_status"]["mode"], "charging");
    }

    #[test]
    fn error_texts_follow_the_daly_alarm_table_in_wire_order() {
        // daly-bms-cli indexes its texts by byte and bit; ours are keyed by the model name of the same bit.
        let named: Vec<&str> = ALARM_BITS.iter().filter(|b| !(b.byte == 3 && b.bit >= 4)).map(|b| b.name).collect();
        let ours: Vec<&str> = ERROR_TEXTS.iter().map(|(name, _)| *name).collect();
        assert_eq!(ours, named);
    }
}
