//! The D2 register map (`docs/protocols/daly-modbus.md#d2-real-time-block`): its requests, the real-time block, the
//! MOSFET temperature read and the version strings — decoded, encoded back for the simulator, and applied to the model.

use serde::Serialize;

use super::{Registers, Request, offset, scaled, set_temperature, state_from_raw, unoffset, unscaled};
use crate::model::{PackSnapshot, SensorId};
use crate::protocol::daly::alarms;
use crate::protocol::{DecodeError, to_hex};

/// Registers of the basic real-time read.
pub const REALTIME_COUNT: u16 = 62;
/// Registers of the extended real-time read (adds balancing, MOSFET and board temperatures).
pub const REALTIME_EXTENDED_COUNT: u16 = 80;
/// Read the real-time block (62 registers from 0).
pub const REALTIME: Request = Request::Read { start: 0, count: REALTIME_COUNT };
/// Read the extended real-time block (80 registers from 0).
pub const REALTIME_EXTENDED: Request = Request::Read { start: 0, count: REALTIME_EXTENDED_COUNT };
/// Read the 41 settings registers from 0x80.
pub const SETTINGS: Request = Request::Read { start: 0x80, count: 41 };
/// First register of the version strings.
pub const VERSION_START: u16 = 0xA9;
/// Read the version strings (32 registers from 0xA9).
pub const VERSION: Request = Request::Read { start: VERSION_START, count: 32 };
/// The MOSFET temperature register.
pub const MOSFET_TEMPERATURE_REGISTER: u16 = 0x42;
/// Read the MOSFET temperature the way aiobmsble does (9 registers from 0x3E).
pub const MOSFET_TEMPERATURE: Request = Request::Read { start: 0x3E, count: 9 };
/// Charge MOSFET switch register (write 1 = on, 0 = off).
pub const CHARGE_MOSFET_REGISTER: u16 = 0xA5;
/// Discharge MOSFET switch register (write 1 = on, 0 = off).
pub const DISCHARGE_MOSFET_REGISTER: u16 = 0xA6;

const MAX_CELLS: u16 = 32;
const MAX_SENSORS: u16 = 8;
const TEMPERATURE_OFFSET: f64 = 40.0;
const CURRENT_OFFSET: f64 = 30000.0;
const ALARM_START: u16 = 0x3A;

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

/// The D2 real-time block; serde names are the keys of the vectors' `expected` objects.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Realtime {
    /// Registers read: 62 or 80 (or more).
    pub register_count: u16,
    /// Series cells (capped at 32).
    pub cell_count: u16,
    /// Temperature probes (capped at 8).
    pub temperature_sensor_count: u16,
    /// Cell voltages 1…cell_count.
    pub cell_voltages_v: Vec<f64>,
    /// Probe temperatures 1…temperature_sensor_count.
    pub temperatures_c: Vec<f64>,
    /// Pack voltage.
    pub total_voltage_v: f64,
    /// Current, positive while charging.
    pub current_a: f64,
    /// State of charge in percent.
    pub soc_percent: f64,
    /// Highest cell voltage.
    pub max_cell_voltage_v: f64,
    /// Lowest cell voltage.
    pub min_cell_voltage_v: f64,
    /// Highest temperature.
    pub max_temperature_c: f64,
    /// Lowest temperature.
    pub min_temperature_c: f64,
    /// Charge/discharge state register: 0 idle, 1 charging, 2 discharging.
    pub state_raw: u16,
    /// Remaining capacity.
    pub remaining_capacity_ah: f64,
    /// Cycle count.
    pub cycles: u16,
    /// Balancer state register: 0 off, non-zero active.
    pub balancer_raw: u16,
    /// Charge MOSFET on.
    pub charge_mosfet_on: bool,
    /// Discharge MOSFET on.
    pub discharge_mosfet_on: bool,
    /// Average cell voltage.
    pub average_cell_voltage_v: f64,
    /// Highest minus lowest cell voltage.
    pub cell_voltage_delta_v: f64,
    /// Power in watts, unsigned as sent.
    pub power_w: u16,
    /// The 8 alarm bytes as one big-endian value (aiobmsble's "problem code").
    pub alarm_flags_raw: u64,
    /// The 8 alarm bytes as lowercase hex, wire order.
    pub alarm_flags_hex: String,
    /// Identifiers of the active alarms after the byte mapping of
    /// `docs/protocols/daly-modbus.md#d2-alarm-bytes`.
    pub active_alarms: Vec<&'static str>,
    /// Balancing cells 1–32 (bit 0 = cell 1); 80-register read only.
    pub balancing_bitmap: Option<u32>,
    /// Balance current in amperes; 80-register read only.
    pub balance_current_a: Option<f64>,
    /// MOSFET temperature; `None` when not read or not fitted.
    pub mosfet_temperature_c: Option<f64>,
    /// Board temperature; `None` when not read or not fitted.
    pub board_temperature_c: Option<f64>,
}

/// The A5 `0x98` alarm bytes 0–6 that the 8 D2 alarm bytes stand for (`docs/protocols/daly-modbus.md#d2-alarm-bytes`:
/// each register's low byte holds the even A5 byte; bytes 6–7 of the block are unused, A5 byte 6 has no D2
/// counterpart).
#[must_use]
pub fn a5_alarm_bytes(flags: u64) -> [u8; 7] {
    let [b0, b1, b2, b3, b4, b5, _, _] = flags.to_be_bytes();
    [b1, b0, b3, b2, b5, b4, 0]
}

/// Inverse of [`a5_alarm_bytes`] (used by encoders and the simulator).
#[must_use]
pub fn d2_alarm_flags(a5: &[u8; 7]) -> u64 {
    let [a0, a1, a2, a3, a4, a5, _] = *a5;
    u64::from_be_bytes([a1, a0, a3, a2, a5, a4, 0, 0])
}

fn temperature(raw: u16) -> f64 {
    offset(raw, TEMPERATURE_OFFSET, 1.0)
}

fn temperature_raw(celsius: f64) -> u16 {
    unoffset(celsius, TEMPERATURE_OFFSET, 1.0)
}

/// A fitted-sensor temperature: 0x0000 and 0xFFFF mean "no sensor".
fn fitted_temperature(raw: Option<u16>) -> Option<f64> {
    raw.filter(|&r| r != 0 && r != 0xFFFF).map(temperature)
}

impl Realtime {
    /// Decode the real-time block; `block` must start at register 0 and hold at least 62 registers.
    pub fn decode(block: &Registers) -> Result<Self, DecodeError> {
        if block.start != 0 || block.values.len() < usize::from(REALTIME_COUNT) {
            return Err(DecodeError::LengthMismatch {
                declared: usize::from(REALTIME_COUNT),
                actual: block.values.len(),
            });
        }
        let reg = |r: u16| block.get(r).unwrap_or_default();
        let cell_count = reg(0x31).min(MAX_CELLS);
        let temperature_sensor_count = reg(0x32).min(MAX_SENSORS);
        let alarm_flags_raw = (0..4).fold(0u64, |acc, i| acc << 16 | u64::from(reg(ALARM_START + i)));
        let bitmap = match (block.get(0x3E), block.get(0x3F)) {
            (Some(lo), Some(hi)) => Some(u32::from(hi) << 16 | u32::from(lo)),
            _ => None,
        };
        Ok(Self {
            register_count: block.values.len() as u16,
            cell_count,
            temperature_sensor_count,
            cell_voltages_v: (0..cell_count).map(|i| scaled(reg(i), 1000.0)).collect(),
            temperatures_c: (0..temperature_sensor_count).map(|i| temperature(reg(0x20 + i))).collect(),
            total_voltage_v: scaled(reg(0x28), 10.0),
            current_a: offset(reg(0x29), CURRENT_OFFSET, 10.0),
            soc_percent: scaled(reg(0x2A), 10.0),
            max_cell_voltage_v: scaled(reg(0x2B), 1000.0),
            min_cell_voltage_v: scaled(reg(0x2C), 1000.0),
            max_temperature_c: temperature(reg(0x2D)),
            min_temperature_c: temperature(reg(0x2E)),
            state_raw: reg(0x2F),
            remaining_capacity_ah: scaled(reg(0x30), 10.0),
            cycles: reg(0x33),
            balancer_raw: reg(0x34),
            charge_mosfet_on: reg(0x35) != 0,
            discharge_mosfet_on: reg(0x36) != 0,
            average_cell_voltage_v: scaled(reg(0x37), 1000.0),
            cell_voltage_delta_v: scaled(reg(0x38), 1000.0),
            power_w: reg(0x39),
            alarm_flags_raw,
            alarm_flags_hex: to_hex(&alarm_flags_raw.to_be_bytes()),
            active_alarms: alarms::active_names(&a5_alarm_bytes(alarm_flags_raw)),
            balancing_bitmap: bitmap,
            balance_current_a: block.get(0x40).map(|r| offset(r, CURRENT_OFFSET, 1000.0)),
            mosfet_temperature_c: fitted_temperature(block.get(MOSFET_TEMPERATURE_REGISTER)),
            board_temperature_c: fitted_temperature(block.get(0x43)),
        })
    }

    /// The register values of this block (`register_count` of them, from register 0).
    #[must_use]
    pub fn to_registers(&self) -> Registers {
        let mut block = Registers { start: 0, values: vec![0; usize::from(self.register_count)] };
        for (i, v) in (0..).zip(&self.cell_voltages_v) {
            block.set(i, unscaled(*v, 1000.0));
        }
        for (i, t) in (0x20..).zip(&self.temperatures_c) {
            block.set(i, temperature_raw(*t));
        }
        let fields = [
            (0x28, unscaled(self.total_voltage_v, 10.0)),
            (0x29, unoffset(self.current_a, CURRENT_OFFSET, 10.0)),
            (0x2A, unscaled(self.soc_percent, 10.0)),
            (0x2B, unscaled(self.max_cell_voltage_v, 1000.0)),
            (0x2C, unscaled(self.min_cell_voltage_v, 1000.0)),
            (0x2D, temperature_raw(self.max_temperature_c)),
            (0x2E, temperature_raw(self.min_temperature_c)),
            (0x2F, self.state_raw),
            (0x30, unscaled(self.remaining_capacity_ah, 10.0)),
            (0x31, self.cell_count),
            (0x32, self.temperature_sensor_count),
            (0x33, self.cycles),
            (0x34, self.balancer_raw),
            (0x35, u16::from(self.charge_mosfet_on)),
            (0x36, u16::from(self.discharge_mosfet_on)),
            (0x37, unscaled(self.average_cell_voltage_v, 1000.0)),
            (0x38, unscaled(self.cell_voltage_delta_v, 1000.0)),
            (0x39, self.power_w),
            (0x3E, self.balancing_bitmap.unwrap_or_default() as u16),
            (0x3F, (self.balancing_bitmap.unwrap_or_default() >> 16) as u16),
            (0x40, unoffset(self.balance_current_a.unwrap_or_default(), CURRENT_OFFSET, 1000.0)),
            (MOSFET_TEMPERATURE_REGISTER, self.mosfet_temperature_c.map_or(0, temperature_raw)),
            (0x43, self.board_temperature_c.map_or(0, temperature_raw)),
        ];
        for (register, value) in fields {
            block.set(register, value);
        }
        for (i, word) in (ALARM_START..).zip(self.alarm_flags_raw.to_be_bytes().chunks_exact(2)) {
            if let [hi, lo] = word {
                block.set(i, u16::from_be_bytes([*hi, *lo]));
            }
        }
        block
    }

    /// Apply the block to the pack: everything it reports, in model units and sign.
    pub fn apply(&self, pack: &mut PackSnapshot) {
        pack.voltage_volts = Some(self.total_voltage_v);
        // D2 already sends positive = charging (a capture with state 2 shows a negative current).
        pack.current_amperes = Some(self.current_a);
        pack.state_of_charge_ratio = Some(self.soc_percent / 100.0);
        pack.state = state_from_raw(self.state_raw);
        pack.remaining_capacity_ampere_hours = Some(self.remaining_capacity_ah);
        pack.cycle_count = Some(u32::from(self.cycles));
        pack.charge_mosfet_enabled = Some(self.charge_mosfet_on);
        pack.discharge_mosfet_enabled = Some(self.discharge_mosfet_on);
        pack.cell_count = Some(self.cell_count);
        pack.temperature_sensor_count = Some(self.temperature_sensor_count);
        pack.cell_volts = self.cell_voltages_v.iter().map(|&v| (v > 0.0).then_some(v)).collect();
        for (n, &t) in (1..).zip(&self.temperatures_c) {
            set_temperature(pack, SensorId::Probe(n), t);
        }
        if let Some(t) = self.mosfet_temperature_c {
            set_temperature(pack, SensorId::Mosfet, t);
        }
        if let Some(t) = self.board_temperature_c {
            set_temperature(pack, SensorId::Board, t);
        }
        pack.set_alarms(alarms::to_model(&a5_alarm_bytes(self.alarm_flags_raw), 0));
        if let Some(bitmap) = self.balancing_bitmap {
            pack.cell_balancing = (0..u32::from(self.cell_count)).map(|i| bitmap >> i & 1 == 1).collect();
        }
        pack.balancing_active = Some(self.balancer_raw != 0);
    }
}

/// The MOSFET temperature read (`d2 03 00 3e 00 09`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MosfetTemperature {
    /// First register of the block read.
    pub start: u16,
    /// Registers read.
    pub register_count: u16,
    /// MOSFET temperature; `None` when the board has no sensor (0x0000 or 0xFFFF).
    pub mosfet_temperature_c: Option<f64>,
}

impl MosfetTemperature {
    /// Decode a block that holds register 0x42.
    pub fn decode(block: &Registers) -> Result<Self, DecodeError> {
        let raw = block.get(MOSFET_TEMPERATURE_REGISTER).ok_or(DecodeError::LengthMismatch {
            declared: usize::from(MOSFET_TEMPERATURE_REGISTER - block.start.min(MOSFET_TEMPERATURE_REGISTER)) + 1,
            actual: block.values.len(),
        })?;
        Ok(Self {
            start: block.start,
            register_count: block.values.len() as u16,
            mosfet_temperature_c: fitted_temperature(Some(raw)),
        })
    }

    /// The register values of this read: balance current 0 A, and 0xFFFF for "no sensor", as boards send.
    #[must_use]
    pub fn to_registers(&self) -> Registers {
        let mut block = Registers { start: self.start, values: vec![0; usize::from(self.register_count)] };
        block.set(0x40, CURRENT_OFFSET as u16);
        block.set(MOSFET_TEMPERATURE_REGISTER, self.mosfet_temperature_c.map_or(0xFFFF, temperature_raw));
        block
    }

    /// Apply the reading to the pack (nothing when no sensor is fitted).
    pub fn apply(&self, pack: &mut PackSnapshot) {
        if let Some(t) = self.mosfet_temperature_c {
            set_temperature(pack, SensorId::Mosfet, t);
        }
    }
}

/// The version strings (registers from 0xA9).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Version {
    /// Software version (first 16 bytes), e.g. `T00K_321042_11`.
    pub software_version: String,
    /// Hardware version (next 16 bytes), e.g. `H2.0_103R_309F9F`.
    pub hardware_version: String,
}

/// Printable ASCII of `bytes` up to the first NUL, trimmed; other bytes are dropped rather than guessed at.
fn ascii(bytes: &[u8]) -> String {
    let text: String = bytes
        .iter()
        .take_while(|&&b| b != 0)
        .filter(|b| b.is_ascii_graphic() || **b == b' ')
        .map(|&b| char::from(b))
        .collect();
    text.trim().to_owned()
}

impl Version {
    /// Decode a block from 0xA9 holding at least the 16 registers of the two strings.
    pub fn decode(block: &Registers) -> Result<Self, DecodeError> {
        if block.start != VERSION_START || block.values.len() < 16 {
            return Err(DecodeError::LengthMismatch { declared: 16, actual: block.values.len() });
        }
        let bytes: Vec<u8> = block.values.iter().flat_map(|v| v.to_be_bytes()).collect();
        Ok(Self {
            software_version: ascii(bytes.get(..16).unwrap_or_default()),
            hardware_version: ascii(bytes.get(16..32).unwrap_or_default()),
        })
    }

    /// The 32 registers of the version read (strings NUL-padded, cut at 16 bytes).
    #[must_use]
    pub fn to_registers(&self) -> Registers {
        let mut bytes = [0u8; 64];
        for (field, text) in bytes.chunks_exact_mut(16).zip([&self.software_version, &self.hardware_version]) {
            for (slot, b) in field.iter_mut().zip(text.bytes()) {
                *slot = b;
            }
        }
        let values = bytes.chunks_exact(2).map(|w| w.iter().fold(0u16, |acc, &b| acc << 8 | u16::from(b))).collect();
        Registers { start: VERSION_START, values }
    }

    /// Apply the software version to the pack's identity.
    pub fn apply(&self, pack: &mut PackSnapshot) {
        if !self.software_version.is_empty() {
            pack.info.firmware_version = Some(self.software_version.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::daly_modbus::{Map, Pdu, encode_read_reply, parse_frame};

    #[test]
    fn a_mosfet_read_without_sensor_reports_none() {
        // syssi/esphome-daly-bms issue #9: 9 registers from 0x3E, register 0x42 = 0xFFFF.
        let frame = [
            0xd2, 0x03, 0x12, 0x00, 0x00, 0x00, 0x00, 0x75, 0x30, 0x00, 0x00, 0xff, 0xff, 0x00, 0x00, 0x00, 0x00, 0x00,
            0x00, 0x00, 0x00, 0x47, 0x6e,
        ];
        let Ok(Pdu::Read(values)) = parse_frame(Map::D2, &frame) else { panic!("not a read reply") };
        let reading = MosfetTemperature::decode(&Registers { start: 0x3E, values }).unwrap();
        assert_eq!(reading.mosfet_temperature_c, None);
        assert_eq!(encode_read_reply(Map::D2, &reading.to_registers().values), frame);
    }

    #[test]
    fn alarm_bytes_swap_within_each_register_into_a5_order() {
        let flags = u64::from_be_bytes([0x01, 0x02, 0x04, 0x08, 0x10, 0x20, 0, 0]);
        let a5 = a5_alarm_bytes(flags);
        assert_eq!(a5, [0x02, 0x01, 0x08, 0x04, 0x20, 0x10, 0]);
        assert_eq!(d2_alarm_flags(&a5), flags);
        assert_eq!(
            alarms::active_names(&a5),
            [
                "cell_voltage_high_l2",
                "charge_temperature_high_l1",
                "discharge_overcurrent_l2",
                "temperature_difference_l1",
                "discharge_mosfet_adhesion_fault",
                "rtc_fault"
            ]
        );
    }

    #[test]
    fn version_strings_are_read_as_ascii() {
        let version =
            Version { software_version: "T00K_321042_11".into(), hardware_version: "H2.0_103R_309F9F".into() };
        let block = version.to_registers();
        assert_eq!(block.values.len(), 32);
        assert_eq!(Version::decode(&block), Ok(version));
    }
}
