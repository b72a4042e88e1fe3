//! The p81 register map (`docs/protocols/daly-modbus.md#p81-real-time-registers`, H/K/M/S boards): its requests and the
//! real-time registers 0x00–0x73, decoded from whatever window a read covered, encoded back, and applied to the model.

use serde::Serialize;

use super::{Registers, Request, offset, scaled, set_temperature, state_from_raw, unoffset, unscaled};
use crate::model::{PackSnapshot, SensorId};

/// Read the first real-time window (64 registers from 0).
pub const REALTIME_LOW: Request = Request::Read { start: 0, count: 64 };
/// Read the second real-time window (62 registers from 0x41).
pub const REALTIME_HIGH: Request = Request::Read { start: 0x41, count: 62 };
/// Charge MOSFET control register (write 1 = on, 0 = off).
pub const CHARGE_MOSFET_REGISTER: u16 = 0x121;
/// Discharge MOSFET control register (write 1 = on, 0 = off).
pub const DISCHARGE_MOSFET_REGISTER: u16 = 0x122;
/// Last register this module gives a meaning to.
pub const LAST_REALTIME_REGISTER: u16 = 0x73;

const MAX_CELLS: u16 = 48;
const MAX_SENSORS: u16 = 8;
const TEMPERATURE_OFFSET: f64 = 40.0;
const CURRENT_OFFSET: f64 = 30000.0;
/// A probe register holding 255 has no probe.
const ABSENT_PROBE: u16 = 255;
const ALARMS_V1: u16 = 0x66;
const ALARMS_V2: u16 = 0x6D;

/// Switch the charge MOSFET on or off.
#[must_use]
pub fn set_charge_mosfet(on: bool) -> Request {
    Request::Write { register: CHARGE_MOSFET_REGISTER, value: u16::from(on) }
}

/// Switch the discharge MOSFET on or off.
#[must_use]
pub fn set_discharge_mosfet(on: bool) -> Request {
    Request::Write { register: DISCHARGE_MOSFET_REGISTER, value: u16::from(on) }
}

/// The p81 real-time values a read covered; every field is `None` when its register was outside the window.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Realtime {
    /// Board number (reply address − 0x50).
    pub board: u8,
    /// First register read.
    pub start: u16,
    /// Registers read.
    pub register_count: u16,
    /// Series cells (capped at 48).
    pub cell_count: Option<u16>,
    /// Temperature probes (capped at 8).
    pub temperature_sensor_count: Option<u16>,
    /// Cell voltages from cell 1, as many as the count says and the window holds.
    pub cell_voltages_v: Vec<f64>,
    /// Probe temperatures from probe 1; `None` for a probe reading 255 (absent).
    pub temperatures_c: Vec<Option<f64>>,
    /// Pack voltage.
    pub total_voltage_v: Option<f64>,
    /// Current, positive while charging.
    pub current_a: Option<f64>,
    /// State of charge in percent.
    pub soc_percent: Option<f64>,
    /// Register 0x3B: SOH per one source, a heartbeat counter per another; kept raw.
    pub soh_or_heartbeat_raw: Option<u16>,
    /// Highest cell voltage.
    pub max_cell_voltage_v: Option<f64>,
    /// Number of the highest cell.
    pub max_cell_number: Option<u16>,
    /// Lowest cell voltage.
    pub min_cell_voltage_v: Option<f64>,
    /// Number of the lowest cell.
    pub min_cell_number: Option<u16>,
    /// Highest minus lowest cell voltage.
    pub cell_voltage_delta_v: Option<f64>,
    /// Highest temperature.
    pub max_temperature_c: Option<f64>,
    /// Probe with the highest temperature.
    pub max_temperature_sensor: Option<u16>,
    /// Lowest temperature.
    pub min_temperature_c: Option<f64>,
    /// Probe with the lowest temperature.
    pub min_temperature_sensor: Option<u16>,
    /// Highest minus lowest temperature (no offset).
    pub temperature_delta_c: Option<f64>,
    /// Charge/discharge state register: 0 idle, 1 charging, 2 discharging.
    pub state_raw: Option<u16>,
    /// Remaining capacity.
    pub remaining_capacity_ah: Option<f64>,
    /// Cycle count.
    pub cycles: Option<u16>,
    /// Balancing status register.
    pub balancer_raw: Option<u16>,
    /// Balance current in amperes.
    pub balance_current_a: Option<f64>,
    /// Balancing cells 1–48 (bit 0 = cell 1), when all three bitmap registers were read.
    pub balancing_bitmap: Option<u64>,
    /// Charge MOSFET on.
    pub charge_mosfet_on: Option<bool>,
    /// Discharge MOSFET on.
    pub discharge_mosfet_on: Option<bool>,
    /// Pre-charge MOSFET on.
    pub precharge_mosfet_on: Option<bool>,
    /// Heater on.
    pub heater_on: Option<bool>,
    /// Fan on.
    pub fan_on: Option<bool>,
    /// Average cell voltage.
    pub average_cell_voltage_v: Option<f64>,
    /// Power in watts.
    pub power_w: Option<u16>,
    /// Energy in watt-hours.
    pub energy_wh: Option<u16>,
    /// MOSFET temperature.
    pub mosfet_temperature_c: Option<f64>,
    /// Board temperature.
    pub board_temperature_c: Option<f64>,
    /// Heater temperature.
    pub heater_temperature_c: Option<f64>,
    /// First-generation alarm words 0x66–0x69, raw (no confirmed bit meanings), when all were read.
    pub alarm_words_v1: Option<[u16; 4]>,
    /// Second-generation ("K version") alarm words 0x6D–0x73, raw, when all were read.
    pub alarm_words_v2: Option<[u16; 7]>,
}

fn temperature(raw: u16) -> f64 {
    offset(raw, TEMPERATURE_OFFSET, 1.0)
}

fn temperature_raw(celsius: f64) -> u16 {
    unoffset(celsius, TEMPERATURE_OFFSET, 1.0)
}

fn words<const N: usize>(block: &Registers, first: u16) -> Option<[u16; N]> {
    let mut out = [0u16; N];
    for (register, slot) in (first..).zip(out.iter_mut()) {
        *slot = block.get(register)?;
    }
    Some(out)
}

impl Realtime {
    /// Decode the registers of `block` for `board`; `cell_count_hint` counts cells when the window lacks 0x3C.
    #[must_use]
    pub fn decode(board: u8, block: &Registers, cell_count_hint: Option<u16>) -> Self {
        let get = |r: u16| block.get(r);
        let cell_count = get(0x3C).map(|n| n.min(MAX_CELLS));
        let temperature_sensor_count = get(0x3D).map(|n| n.min(MAX_SENSORS));
        let cells = cell_count.or(cell_count_hint.map(|n| n.min(MAX_CELLS))).unwrap_or(MAX_CELLS);
        let probes = temperature_sensor_count.unwrap_or(MAX_SENSORS);
        Self {
            board,
            start: block.start,
            register_count: block.values.len() as u16,
            cell_count,
            temperature_sensor_count,
            cell_voltages_v: (0..cells).map_while(get).map(|r| scaled(r, 1000.0)).collect(),
            temperatures_c: (0x30..0x30 + probes)
                .map_while(get)
                .map(|r| (r != ABSENT_PROBE).then(|| temperature(r)))
                .collect(),
            total_voltage_v: get(0x38).map(|r| scaled(r, 10.0)),
            current_a: get(0x39).map(|r| offset(r, CURRENT_OFFSET, 10.0)),
            soc_percent: get(0x3A).map(|r| scaled(r, 10.0)),
            soh_or_heartbeat_raw: get(0x3B),
            max_cell_voltage_v: get(0x3E).map(|r| scaled(r, 1000.0)),
            max_cell_number: get(0x3F),
            min_cell_voltage_v: get(0x40).map(|r| scaled(r, 1000.0)),
            min_cell_number: get(0x41),
            cell_voltage_delta_v: get(0x42).map(|r| scaled(r, 1000.0)),
            max_temperature_c: get(0x43).map(temperature),
            max_temperature_sensor: get(0x44),
            min_temperature_c: get(0x45).map(temperature),
            min_temperature_sensor: get(0x46),
            temperature_delta_c: get(0x47).map(f64::from),
            state_raw: get(0x48),
            remaining_capacity_ah: get(0x4B).map(|r| scaled(r, 10.0)),
            cycles: get(0x4C),
            balancer_raw: get(0x4D),
            balance_current_a: get(0x4E).map(|r| offset(r, CURRENT_OFFSET, 1000.0)),
            balancing_bitmap: words::<3>(block, 0x4F)
                .map(|[a, b, c]| u64::from(a) | u64::from(b) << 16 | u64::from(c) << 32),
            charge_mosfet_on: get(0x52).map(|r| r != 0),
            discharge_mosfet_on: get(0x53).map(|r| r != 0),
            precharge_mosfet_on: get(0x54).map(|r| r != 0),
            heater_on: get(0x55).map(|r| r != 0),
            fan_on: get(0x56).map(|r| r != 0),
            average_cell_voltage_v: get(0x57).map(|r| scaled(r, 1000.0)),
            power_w: get(0x58),
            energy_wh: get(0x59),
            mosfet_temperature_c: get(0x5A).map(temperature),
            board_temperature_c: get(0x5B).map(temperature),
            heater_temperature_c: get(0x5C).map(temperature),
            alarm_words_v1: words(block, ALARMS_V1),
            alarm_words_v2: words(block, ALARMS_V2),
        }
    }

    /// The register values of the window this was decoded from (registers without a field are 0).
    #[must_use]
    pub fn to_registers(&self) -> Registers {
        let mut block = Registers { start: self.start, values: vec![0; usize::from(self.register_count)] };
        for (i, v) in (0..).zip(&self.cell_voltages_v) {
            block.set(i, unscaled(*v, 1000.0));
        }
        for (i, t) in (0x30..).zip(&self.temperatures_c) {
            block.set(i, t.map_or(ABSENT_PROBE, temperature_raw));
        }
        let volts = |v: Option<f64>| v.map(|v| unscaled(v, 1000.0));
        let tenths = |v: Option<f64>| v.map(|v| unscaled(v, 10.0));
        let celsius = |v: Option<f64>| v.map(temperature_raw);
        let flag = |v: Option<bool>| v.map(u16::from);
        let bitmap = self.balancing_bitmap;
        let fields: [(u16, Option<u16>); 35] = [
            (0x38, tenths(self.total_voltage_v)),
            (0x39, self.current_a.map(|a| unoffset(a, CURRENT_OFFSET, 10.0))),
            (0x3A, tenths(self.soc_percent)),
            (0x3B, self.soh_or_heartbeat_raw),
            (0x3C, self.cell_count),
            (0x3D, self.temperature_sensor_count),
            (0x3E, volts(self.max_cell_voltage_v)),
            (0x3F, self.max_cell_number),
            (0x40, volts(self.min_cell_voltage_v)),
            (0x41, self.min_cell_number),
            (0x42, volts(self.cell_voltage_delta_v)),
            (0x43, celsius(self.max_temperature_c)),
            (0x44, self.max_temperature_sensor),
            (0x45, celsius(self.min_temperature_c)),
            (0x46, self.min_temperature_sensor),
            (0x47, self.temperature_delta_c.map(|d| unscaled(d, 1.0))),
            (0x48, self.state_raw),
            (0x4B, tenths(self.remaining_capacity_ah)),
            (0x4C, self.cycles),
            (0x4D, self.balancer_raw),
            (0x4E, self.balance_current_a.map(|a| unoffset(a, CURRENT_OFFSET, 1000.0))),
            (0x4F, bitmap.map(|b| b as u16)),
            (0x50, bitmap.map(|b| (b >> 16) as u16)),
            (0x51, bitmap.map(|b| (b >> 32) as u16)),
            (0x52, flag(self.charge_mosfet_on)),
            (0x53, flag(self.discharge_mosfet_on)),
            (0x54, flag(self.precharge_mosfet_on)),
            (0x55, flag(self.heater_on)),
            (0x56, flag(self.fan_on)),
            (0x57, volts(self.average_cell_voltage_v)),
            (0x58, self.power_w),
            (0x59, self.energy_wh),
            (0x5A, celsius(self.mosfet_temperature_c)),
            (0x5B, celsius(self.board_temperature_c)),
            (0x5C, celsius(self.heater_temperature_c)),
        ];
        for (register, value) in fields {
            if let Some(value) = value {
                block.set(register, value);
            }
        }
        for (register, value) in (ALARMS_V1..).zip(self.alarm_words_v1.iter().flatten()) {
            block.set(register, *value);
        }
        for (register, value) in (ALARMS_V2..).zip(self.alarm_words_v2.iter().flatten()) {
            block.set(register, *value);
        }
        block
    }

    /// Apply what the window held to the pack.
    pub fn apply(&self, pack: &mut PackSnapshot) {
        let set = |target: &mut Option<f64>, value: Option<f64>| {
            if value.is_some() {
                *target = value;
            }
        };
        set(&mut pack.voltage_volts, self.total_voltage_v);
        // p81 sends positive = charging (a capture with state 2 shows −8.9 A).
        set(&mut pack.current_amperes, self.current_a);
        set(&mut pack.state_of_charge_ratio, self.soc_percent.map(|p| p / 100.0));
        set(&mut pack.remaining_capacity_ampere_hours, self.remaining_capacity_ah);
        if let Some(state) = self.state_raw.and_then(state_from_raw) {
            pack.state = Some(state);
        }
        if let Some(cycles) = self.cycles {
            pack.cycle_count = Some(u32::from(cycles));
        }
        pack.charge_mosfet_enabled = self.charge_mosfet_on.or(pack.charge_mosfet_enabled);
        pack.discharge_mosfet_enabled = self.discharge_mosfet_on.or(pack.discharge_mosfet_enabled);
        pack.cell_count = self.cell_count.or(pack.cell_count);
        pack.temperature_sensor_count = self.temperature_sensor_count.or(pack.temperature_sensor_count);
        if !self.cell_voltages_v.is_empty() {
            pack.cell_volts = self.cell_voltages_v.iter().map(|&v| (v > 0.0).then_some(v)).collect();
        }
        for (n, t) in (1..).zip(&self.temperatures_c) {
            if let Some(t) = *t {
                set_temperature(pack, SensorId::Probe(n), t);
            }
        }
        if let Some(t) = self.mosfet_temperature_c {
            set_temperature(pack, SensorId::Mosfet, t);
        }
        if let Some(t) = self.board_temperature_c {
            set_temperature(pack, SensorId::Board, t);
        }
        if let (Some(bitmap), Some(cells)) = (self.balancing_bitmap, pack.cell_count) {
            pack.cell_balancing = (0..u64::from(cells)).map(|i| bitmap >> i & 1 == 1).collect();
        }
        if let Some(raw) = self.balancer_raw {
            pack.balancing_active = Some(raw != 0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_window_decodes_only_the_registers_it_holds() {
        let mut block = Registers { start: 0x38, values: vec![0; 3] };
        block.set(0x38, 530);
        block.set(0x39, 0x74D7);
        block.set(0x3A, 905);
        let r = Realtime::decode(1, &block, None);
        assert_eq!(r.total_voltage_v, Some(53.0));
        assert!((r.current_a.unwrap() + 8.9).abs() < 1e-9, "{:?}", r.current_a);
        assert_eq!(r.soc_percent, Some(90.5));
        assert_eq!((r.cell_count, r.state_raw), (None, None));
        assert!(r.cell_voltages_v.is_empty());
        assert_eq!(r.to_registers(), block);
    }

    #[test]
    fn an_absent_probe_is_none_and_cells_follow_the_count() {
        let mut block = Registers { start: 0, values: vec![0; 64] };
        for cell in 0..4 {
            block.set(cell, 3300 + cell);
        }
        block.set(0x30, 65);
        block.set(0x31, ABSENT_PROBE);
        block.set(0x3C, 4);
        block.set(0x3D, 2);
        let r = Realtime::decode(2, &block, None);
        assert_eq!(r.cell_voltages_v, [3.3, 3.301, 3.302, 3.303]);
        assert_eq!(r.temperatures_c, [Some(25.0), None]);
        let mut pack = PackSnapshot::new(2);
        r.apply(&mut pack);
        assert_eq!(pack.cell_count, Some(4));
        assert_eq!(pack.temperatures.len(), 1);
    }
}
