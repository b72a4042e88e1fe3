//! The `read` subcommand's JSON document: a snapshot rendered as one object per chosen section per pack.
//!
//! Shape: `{"protocol": "daly", "packs": [{"pack": 1, "online": true, "soc": {…}, …}]}`; the CLI adds an `"errors"` key
//! itself. Keys carry their unit (`ARCHITECTURE.md#metric-naming`): SI base units, capacities in ampere-hours, ratios
//! 0–1, current positive while charging. A value the device has not reported is `null`, never a guess; a list or map
//! that was not read at all (no cells, no temperatures, no alarm table) is `null` as well.
//!
//! Which model field goes into which section (the section is the unit a poll is limited to, so this follows
//! what each Daly request returns, and the other protocols fill the same slots):
//!
//! | section | keys |
//! |---|---|
//! | `soc` | `voltage_volts`, `current_amperes`, `power_watts` (derived), `state_of_charge_ratio`, `state_of_health_ratio` |
//! | `mosfet` | `state` (`idle`/`charging`/`discharging`), `charge_mosfet_enabled`, `discharge_mosfet_enabled`, `remaining_capacity_ampere_hours` |
//! | `status` | `cell_count`, `temperature_sensor_count`, `cycle_count`, `charger_connected`, `load_connected`, `digital_io` (`{"di1": bool, …}`) |
//! | `cells` | `cell_volts` (index 0 = cell 1, `null` for a cell not read), `cell_count`, `min_volts`, `min_cell`, `max_volts`, `max_cell`, `spread_volts` |
//! | `temperatures` | an object keyed by sensor label (`"01"`…, `"mosfet"`, `"ambient"`, `"board"`) → degrees Celsius |
//! | `balancing` | `balancing_active`, `cell_balancing` (per cell), `balancing_cells` (1-based numbers being balanced) |
//! | `alarms` | `active` (names), `all` (`{name: bool}`); Pace adds `cell_alarms` and `temperature_alarms` |
//! | `info` | `model`, `firmware_version`, `serial_number`, `design_capacity_ampere_hours`, `full_capacity_ampere_hours` |
//!
//! Derived values (power, spread) are rounded to a resolution finer than any protocol reports, so binary
//! floating-point noise such as `0.10099999999999998` does not reach scripts.

use serde_json::{Map, Value, json};

use super::{cell_extremes, round_to};
use crate::model::{DeviceSnapshot, LevelAlarm, PackSnapshot, PackState, Section, Sections};
use crate::protocol::Protocol;

/// Which packs of a device the document includes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PackFilter {
    /// Every pack the device reported.
    All,
    /// Only the pack with this 1-based number (an empty `packs` list if the device did not report it).
    One(u8),
}

impl PackFilter {
    /// Whether pack `number` is included.
    #[must_use]
    pub fn includes(self, number: u8) -> bool {
        match self {
            Self::All => true,
            Self::One(n) => n == number,
        }
    }
}

/// Render the chosen `sections` of the chosen `packs` of `device` as the `read` JSON document.
#[must_use]
pub fn render(protocol: Protocol, device: &DeviceSnapshot, sections: Sections, packs: PackFilter) -> Value {
    let packs: Vec<Value> =
        device.packs.iter().filter(|p| packs.includes(p.pack)).map(|p| render_pack(protocol, p, sections)).collect();
    json!({ "protocol": protocol.as_str(), "packs": packs })
}

fn render_pack(protocol: Protocol, pack: &PackSnapshot, sections: Sections) -> Value {
    let mut object = Map::new();
    object.insert("pack".to_owned(), json!(pack.pack));
    object.insert("online".to_owned(), json!(pack.online));
    for section in sections.iter() {
        let value = match section {
            Section::Soc => soc(pack),
            Section::Mosfet => mosfet(pack),
            Section::Status => status(pack),
            Section::Cells => cells(pack),
            Section::Temperatures => temperatures(pack),
            Section::Balancing => balancing(pack),
            Section::Alarms => alarms(protocol, pack),
            Section::Info => info(pack),
        };
        object.insert(section.as_str().to_owned(), value);
    }
    Value::Object(object)
}

/// A number, or `null` when unknown or not finite (JSON has no NaN).
fn number(value: Option<f64>) -> Value {
    value.filter(|v| v.is_finite()).map_or(Value::Null, |v| json!(v))
}

fn soc(pack: &PackSnapshot) -> Value {
    json!({
        "voltage_volts": number(pack.voltage_volts),
        "current_amperes": number(pack.current_amperes),
        // Milliwatt resolution: volts × amperes carries no more.
        "power_watts": number(pack.power_watts().map(|w| round_to(w, 3))),
        "state_of_charge_ratio": number(pack.state_of_charge_ratio),
        "state_of_health_ratio": number(pack.state_of_health_ratio),
    })
}

fn mosfet(pack: &PackSnapshot) -> Value {
    json!({
        "state": pack.state.map(PackState::as_str),
        "charge_mosfet_enabled": pack.charge_mosfet_enabled,
        "discharge_mosfet_enabled": pack.discharge_mosfet_enabled,
        "remaining_capacity_ampere_hours": number(pack.remaining_capacity_ampere_hours),
    })
}

fn status(pack: &PackSnapshot) -> Value {
    let digital_io = if pack.digital_io.is_empty() {
        Value::Null
    } else {
        Value::Object(pack.digital_io.iter().map(|p| (p.port.to_owned(), Value::Bool(p.active))).collect())
    };
    json!({
        "cell_count": pack.cell_count,
        "temperature_sensor_count": pack.temperature_sensor_count,
        "cycle_count": pack.cycle_count,
        "charger_connected": pack.charger_connected,
        "load_connected": pack.load_connected,
        "digital_io": digital_io,
    })
}

fn cells(pack: &PackSnapshot) -> Value {
    if pack.cell_volts.is_empty() {
        return json!({
            "cell_volts": null, "cell_count": pack.cell_count, "min_volts": null, "min_cell": null,
            "max_volts": null, "max_cell": null, "spread_volts": null,
        });
    }
    let volts: Vec<Value> = pack.cell_volts.iter().map(|v| number(*v)).collect();
    // The count the device reports, else the number of cells this reply covered.
    let count = pack.cell_count.map_or(pack.cell_volts.len(), usize::from);
    let extremes = cell_extremes(pack);
    json!({
        "cell_volts": volts,
        "cell_count": count,
        "min_volts": number(extremes.map(|(lo, _)| lo.0)),
        "min_cell": extremes.map(|(lo, _)| lo.1),
        "max_volts": number(extremes.map(|(_, hi)| hi.0)),
        "max_cell": extremes.map(|(_, hi)| hi.1),
        // Tenth-of-a-millivolt resolution hides the subtraction's float noise; cells report whole millivolts.
        "spread_volts": number(extremes.map(|(lo, hi)| round_to(hi.0 - lo.0, 4))),
    })
}

fn temperatures(pack: &PackSnapshot) -> Value {
    if pack.temperatures.is_empty() {
        return Value::Null;
    }
    Value::Object(pack.temperatures.iter().map(|t| (t.sensor.label(), number(Some(t.celsius)))).collect())
}

fn balancing(pack: &PackSnapshot) -> Value {
    let (cells, numbers) = if pack.cell_balancing.is_empty() {
        (Value::Null, Value::Null)
    } else {
        let numbers: Vec<usize> =
            pack.cell_balancing.iter().enumerate().filter(|(_, on)| **on).map(|(i, _)| i + 1).collect();
        (json!(pack.cell_balancing), json!(numbers))
    };
    json!({
        "balancing_active": pack.balancing_active,
        "cell_balancing": cells,
        "balancing_cells": numbers,
    })
}

fn level_alarms(alarms: &[LevelAlarm], key: &str) -> Value {
    alarms.iter().map(|a| json!({ key: a.index, "alarm": a.kind.as_str() })).collect()
}

fn alarms(protocol: Protocol, pack: &PackSnapshot) -> Value {
    let (active, all) = if pack.alarms.is_empty() {
        (Value::Null, Value::Null)
    } else {
        let active: Vec<&str> = pack.alarms.iter().filter(|a| a.active).map(|a| a.name).collect();
        let all: Map<String, Value> = pack.alarms.iter().map(|a| (a.name.to_owned(), Value::Bool(a.active))).collect();
        (json!(active), Value::Object(all))
    };
    let mut object = Map::new();
    object.insert("active".to_owned(), active);
    object.insert("all".to_owned(), all);
    // Only Pace reports per-cell and per-sensor levels; an empty list elsewhere would claim a check that never ran.
    if protocol == Protocol::Pace {
        object.insert("cell_alarms".to_owned(), level_alarms(&pack.cell_alarms, "cell"));
        object.insert("temperature_alarms".to_owned(), level_alarms(&pack.temperature_alarms, "sensor"));
    }
    Value::Object(object)
}

fn info(pack: &PackSnapshot) -> Value {
    json!({
        "model": pack.info.model,
        "firmware_version": pack.info.firmware_version,
        "serial_number": pack.info.serial_number,
        "design_capacity_ampere_hours": number(pack.design_capacity_ampere_hours),
        "full_capacity_ampere_hours": number(pack.full_capacity_ampere_hours),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Alarm, AlarmSeverity, DigitalPort, LevelAlarmKind, SensorId, Temperature};

    fn filled() -> DeviceSnapshot {
        let mut device = DeviceSnapshot::default();
        let p = device.pack_mut(1);
        p.voltage_volts = Some(52.6);
        p.current_amperes = Some(-2.5);
        p.state_of_charge_ratio = Some(0.619);
        p.remaining_capacity_ampere_hours = Some(173.401);
        p.state = Some(PackState::Discharging);
        p.charge_mosfet_enabled = Some(true);
        p.discharge_mosfet_enabled = Some(false);
        p.cell_count = Some(4);
        p.cycle_count = Some(42);
        p.digital_io = vec![DigitalPort { port: "di1", active: true }, DigitalPort { port: "do1", active: false }];
        p.cell_volts = vec![Some(3.3), Some(3.401), None, Some(3.3)];
        p.cell_balancing = vec![false, true, false, false];
        p.balancing_active = Some(true);
        p.temperatures = vec![
            Temperature { sensor: SensorId::Probe(1), celsius: 21.0 },
            Temperature { sensor: SensorId::Mosfet, celsius: 30.5 },
        ];
        p.set_alarms([
            Alarm::new("cell_voltage_high_l1", AlarmSeverity::Warning, true),
            Alarm::new("cell_voltage_high_l2", AlarmSeverity::Protection, false),
        ]);
        p.cell_alarms = vec![LevelAlarm { index: 2, kind: LevelAlarmKind::AboveUpperLimit }];
        p.info.model = Some("DL-16S".to_owned());
        device.pack_mut(2).voltage_volts = Some(51.0);
        device
    }

    #[test]
    fn every_section_renders_with_unit_keys_and_derived_values() {
        let v = render(Protocol::Daly, &filled(), Sections::all(), PackFilter::All);
        assert_eq!(v["protocol"], "daly");
        let p = &v["packs"][0];
        assert_eq!(p["pack"], 1);
        assert_eq!(p["online"], true);
        assert_eq!(p["soc"]["voltage_volts"], 52.6);
        assert_eq!(p["soc"]["current_amperes"], -2.5);
        assert_eq!(p["soc"]["power_watts"], -131.5);
        assert_eq!(p["soc"]["state_of_charge_ratio"], 0.619);
        assert_eq!(p["soc"]["state_of_health_ratio"], Value::Null);
        assert_eq!(p["mosfet"]["state"], "discharging");
        assert_eq!(p["mosfet"]["discharge_mosfet_enabled"], false);
        assert_eq!(p["mosfet"]["remaining_capacity_ampere_hours"], 173.401);
        assert_eq!(p["status"]["cycle_count"], 42);
        assert_eq!(p["status"]["charger_connected"], Value::Null);
        assert_eq!(p["status"]["digital_io"], json!({"di1": true, "do1": false}));
        assert_eq!(p["cells"]["cell_volts"], json!([3.3, 3.401, null, 3.3]));
        assert_eq!(p["cells"]["cell_count"], 4);
        assert_eq!(p["cells"]["min_volts"], 3.3);
        assert_eq!(p["cells"]["min_cell"], 1);
        assert_eq!(p["cells"]["max_cell"], 2);
        // 3.401 - 3.3 is 0.10099999999999998 in binary floating point.
        assert_eq!(p["cells"]["spread_volts"], 0.101);
        assert_eq!(p["temperatures"], json!({"01": 21.0, "mosfet": 30.5}));
        assert_eq!(p["balancing"]["balancing_cells"], json!([2]));
        assert_eq!(p["balancing"]["cell_balancing"], json!([false, true, false, false]));
        assert_eq!(p["alarms"]["active"], json!(["cell_voltage_high_l1"]));
        assert_eq!(p["alarms"]["all"], json!({"cell_voltage_high_l1": true, "cell_voltage_high_l2": false}));
        assert!(p["alarms"].get("cell_alarms").is_none(), "Daly has no level alarms");
        assert_eq!(p["info"]["model"], "DL-16S");
        assert_eq!(p["info"]["serial_number"], Value::Null);
    }

    #[test]
    fn unread_lists_are_null_and_only_chosen_sections_appear() {
        let sections: Sections = [Section::Cells, Section::Temperatures, Section::Alarms].into_iter().collect();
        let v = render(Protocol::Pace, &filled(), sections, PackFilter::One(2));
        let packs = v["packs"].as_array().unwrap();
        assert_eq!(packs.len(), 1);
        let p = &packs[0];
        assert_eq!(p["pack"], 2);
        let keys: Vec<&String> = p.as_object().unwrap().keys().collect();
        assert_eq!(keys.len(), 5, "pack, online and three sections: {keys:?}");
        assert_eq!(p["cells"]["cell_volts"], Value::Null);
        assert_eq!(p["cells"]["min_volts"], Value::Null);
        assert_eq!(p["temperatures"], Value::Null);
        assert_eq!(p["alarms"]["active"], Value::Null);
        assert_eq!(p["alarms"]["cell_alarms"], json!([]));
    }

    #[test]
    fn pace_level_alarms_name_cell_and_kind() {
        let v = render(Protocol::Pace, &filled(), Sections::none().with(Section::Alarms), PackFilter::One(1));
        assert_eq!(v["packs"][0]["alarms"]["cell_alarms"], json!([{"cell": 2, "alarm": "above_upper_limit"}]));
        assert_eq!(v["packs"][0]["alarms"]["temperature_alarms"], json!([]));
    }

    #[test]
    fn a_missing_pack_gives_an_empty_list_and_nan_becomes_null() {
        let mut device = filled();
        assert_eq!(render(Protocol::Daly, &device, Sections::all(), PackFilter::One(9))["packs"], json!([]));
        device.packs[0].voltage_volts = Some(f64::NAN);
        let v = render(Protocol::Daly, &device, Sections::none().with(Section::Soc), PackFilter::One(1));
        assert_eq!(v["packs"][0]["soc"]["voltage_volts"], Value::Null);
        assert_eq!(v["packs"][0]["soc"]["power_watts"], Value::Null);
    }
}
