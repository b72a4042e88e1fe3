//! Single-frame measurement replies (0x90–0x94, `docs/protocols/daly-a5.md#read-commands`): the typed values with the
//! spec's field names, their decoders from 8 data bytes and their encoders back to data bytes.

use serde::Serialize;

use super::DecodeError;
use super::response::{celsius, celsius_raw, concat, tenths, to_milli_u16, to_milli_u32, to_tenths};
use crate::model::PackState;
use crate::protocol::reader::Reader;

/// 0x90: pack voltage, current and SOC (`docs/protocols/daly-a5.md#0x90-pack-voltage-current-and-soc`).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Soc {
    /// Cumulative total voltage, V.
    pub total_voltage_v: f64,
    /// Gathered total voltage, V (0 on every board seen).
    pub acquisition_voltage_v: f64,
    /// The unsigned wire current; the encoder uses this, not `current_a`.
    pub current_raw: u16,
    /// (raw − 30000) / 10 A, in the board's own sign convention.
    pub current_a: f64,
    /// State of charge, %.
    pub soc_percent: f64,
}

impl Soc {
    /// Offset of the wire current.
    pub const CURRENT_OFFSET: i32 = 30000;

    /// A reply with these values (current in the wire convention, saturated to the wire range).
    #[must_use]
    pub fn new(total_voltage_v: f64, current_a: f64, soc_percent: f64) -> Self {
        let raw = (current_a * 10.0).round() + f64::from(Self::CURRENT_OFFSET);
        let current_raw = raw.clamp(0.0, f64::from(u16::MAX)) as u16;
        Self {
            total_voltage_v: tenths(to_tenths(total_voltage_v)),
            acquisition_voltage_v: 0.0,
            current_raw,
            current_a: Self::current_from_raw(current_raw),
            soc_percent: tenths(to_tenths(soc_percent)),
        }
    }

    /// Amperes of a raw current, read unsigned so raw > 32767 stays positive.
    #[must_use]
    pub fn current_from_raw(raw: u16) -> f64 {
        f64::from(i32::from(raw) - Self::CURRENT_OFFSET) / 10.0
    }

    pub(super) fn decode(data: [u8; 8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(&data);
        let total = r.be_u16()?;
        let acquisition = r.be_u16()?;
        let current_raw = r.be_u16()?;
        let soc = r.be_u16()?;
        Ok(Self {
            total_voltage_v: tenths(total),
            acquisition_voltage_v: tenths(acquisition),
            current_raw,
            current_a: Self::current_from_raw(current_raw),
            soc_percent: tenths(soc),
        })
    }

    pub(super) fn encode(&self) -> [u8; 8] {
        concat(&[
            &to_tenths(self.total_voltage_v).to_be_bytes(),
            &to_tenths(self.acquisition_voltage_v).to_be_bytes(),
            &self.current_raw.to_be_bytes(),
            &to_tenths(self.soc_percent).to_be_bytes(),
        ])
    }
}

/// 0x91: highest and lowest cell voltage (`docs/protocols/daly-a5.md#0x91-and-0x92-ranges-not-polled`).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct CellRange {
    /// Highest cell voltage, V.
    pub max_cell_voltage_v: f64,
    /// 1-based number of that cell.
    pub max_cell_number: u8,
    /// Lowest cell voltage, V.
    pub min_cell_voltage_v: f64,
    /// 1-based number of that cell.
    pub min_cell_number: u8,
}

impl CellRange {
    pub(super) fn decode(data: [u8; 8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(&data);
        Ok(Self {
            max_cell_voltage_v: f64::from(r.be_u16()?) / 1000.0,
            max_cell_number: r.u8()?,
            min_cell_voltage_v: f64::from(r.be_u16()?) / 1000.0,
            min_cell_number: r.u8()?,
        })
    }

    pub(super) fn encode(&self) -> [u8; 8] {
        concat(&[
            &to_milli_u16(self.max_cell_voltage_v).to_be_bytes(),
            &[self.max_cell_number],
            &to_milli_u16(self.min_cell_voltage_v).to_be_bytes(),
            &[self.min_cell_number],
        ])
    }
}

/// 0x92: highest and lowest temperature (`docs/protocols/daly-a5.md#0x91-and-0x92-ranges-not-polled`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct TemperatureRange {
    /// Highest temperature, °C.
    pub max_temperature_c: i16,
    /// 1-based sensor number.
    pub max_temperature_sensor: u8,
    /// Lowest temperature, °C.
    pub min_temperature_c: i16,
    /// 1-based sensor number.
    pub min_temperature_sensor: u8,
}

impl TemperatureRange {
    pub(super) fn decode(data: [u8; 8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(&data);
        Ok(Self {
            max_temperature_c: celsius(r.u8()?),
            max_temperature_sensor: r.u8()?,
            min_temperature_c: celsius(r.u8()?),
            min_temperature_sensor: r.u8()?,
        })
    }

    pub(super) fn encode(self) -> [u8; 8] {
        concat(&[&[
            celsius_raw(self.max_temperature_c),
            self.max_temperature_sensor,
            celsius_raw(self.min_temperature_c),
            self.min_temperature_sensor,
        ]])
    }
}

/// The 0x93 charge/discharge state (`docs/protocols/daly-a5.md#0x93-state-mosfets-and-remaining-capacity`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DalyState {
    /// 0: idle.
    Stationary,
    /// 1.
    Charging,
    /// 2.
    Discharging,
    /// Anything else (kept in `state_raw`).
    Unknown,
}

impl DalyState {
    /// The state of a raw byte.
    #[must_use]
    pub fn from_raw(raw: u8) -> Self {
        match raw {
            0 => Self::Stationary,
            1 => Self::Charging,
            2 => Self::Discharging,
            _ => Self::Unknown,
        }
    }

    /// The model's state, when known.
    #[must_use]
    pub fn to_model(self) -> Option<PackState> {
        match self {
            Self::Stationary => Some(PackState::Idle),
            Self::Charging => Some(PackState::Charging),
            Self::Discharging => Some(PackState::Discharging),
            Self::Unknown => None,
        }
    }
}

/// 0x93: state, MOSFETs, heartbeat, remaining capacity.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct MosfetStatus {
    /// Decoded state.
    pub state: DalyState,
    /// The state byte; the encoder uses this.
    pub state_raw: u8,
    /// Charge MOSFET on.
    pub charge_mosfet_on: bool,
    /// Discharge MOSFET on.
    pub discharge_mosfet_on: bool,
    /// Rolling 0–255 heartbeat counter (not cycles).
    pub bms_life: u8,
    /// Remaining capacity, Ah.
    pub remaining_capacity_ah: f64,
}

impl MosfetStatus {
    pub(super) fn decode(data: [u8; 8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(&data);
        let state_raw = r.u8()?;
        Ok(Self {
            state: DalyState::from_raw(state_raw),
            state_raw,
            charge_mosfet_on: r.u8()? != 0,
            discharge_mosfet_on: r.u8()? != 0,
            bms_life: r.u8()?,
            remaining_capacity_ah: f64::from(r.be_u32()?) / 1000.0,
        })
    }

    pub(super) fn encode(&self) -> [u8; 8] {
        let flags = [u8::from(self.charge_mosfet_on), u8::from(self.discharge_mosfet_on)];
        concat(&[&[self.state_raw], &flags, &[self.bms_life], &to_milli_u32(self.remaining_capacity_ah).to_be_bytes()])
    }
}

/// 0x94: counts, charger/load detection, digital I/O, cycles
/// (`docs/protocols/daly-a5.md#0x94-counts-charger-load-io-and-cycles`).
#[allow(clippy::struct_excessive_bools, reason = "the spec names each I/O port as its own flag")]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Status {
    /// Series cells.
    pub cell_count: u8,
    /// Temperature probes.
    pub temperature_sensor_count: u8,
    /// Charger detected.
    pub charger_connected: bool,
    /// Load detected.
    pub load_connected: bool,
    /// The I/O byte; the encoder uses this, not the eight flags.
    pub dio_raw: u8,
    /// Bit 0.
    pub di1: bool,
    /// Bit 1.
    pub di2: bool,
    /// Bit 2.
    pub di3: bool,
    /// Bit 3.
    pub di4: bool,
    /// Bit 4.
    pub do1: bool,
    /// Bit 5.
    pub do2: bool,
    /// Bit 6.
    pub do3: bool,
    /// Bit 7.
    pub do4: bool,
    /// Charge/discharge cycles (data bytes 5–6).
    pub cycles: u16,
}

impl Status {
    /// Port names in bit order of `dio_raw`.
    pub const PORTS: [&'static str; 8] = ["di1", "di2", "di3", "di4", "do1", "do2", "do3", "do4"];

    /// A reply with these values; the eight port flags are derived from `dio_raw`.
    #[must_use]
    pub fn new(cell_count: u8, sensor_count: u8, charger: bool, load: bool, dio_raw: u8, cycles: u16) -> Self {
        let bit = |n: u8| dio_raw >> n & 1 == 1;
        Self {
            cell_count,
            temperature_sensor_count: sensor_count,
            charger_connected: charger,
            load_connected: load,
            dio_raw,
            di1: bit(0),
            di2: bit(1),
            di3: bit(2),
            di4: bit(3),
            do1: bit(4),
            do2: bit(5),
            do3: bit(6),
            do4: bit(7),
            cycles,
        }
    }

    pub(super) fn decode(data: [u8; 8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(&data);
        let (cells, sensors, charger, load, dio) = (r.u8()?, r.u8()?, r.u8()?, r.u8()?, r.u8()?);
        Ok(Self::new(cells, sensors, charger != 0, load != 0, dio, r.be_u16()?))
    }

    pub(super) fn encode(&self) -> [u8; 8] {
        let (charger, load) = (u8::from(self.charger_connected), u8::from(self.load_connected));
        concat(&[
            &[self.cell_count, self.temperature_sensor_count, charger, load, self.dio_raw],
            &self.cycles.to_be_bytes(),
        ])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn current_above_32767_raw_is_read_unsigned() {
        assert_eq!(Soc::current_from_raw(65535), 3553.5);
        assert_eq!(Soc::current_from_raw(0), -3000.0);
        let soc = Soc::decode([0x02, 0x03, 0, 0, 0xFF, 0xFF, 0x03, 0x38]).unwrap();
        assert_eq!(soc.current_raw, 65535);
        assert_eq!(soc.current_a, 3553.5);
    }

    #[test]
    fn temperature_raw_0xff_is_215_degrees() {
        let t = TemperatureRange::decode([0xFF, 1, 0x00, 2, 0, 0, 0, 0]).unwrap();
        assert_eq!((t.max_temperature_c, t.min_temperature_c), (215, -40));
    }

    #[test]
    fn status_splits_the_io_byte_into_ports() {
        let s = Status::decode([16, 1, 1, 0, 0x82, 0x00, 0x35, 0x40]).unwrap();
        assert!(s.di2 && s.do4 && !s.di1 && !s.do3);
        assert!(s.charger_connected && !s.load_connected);
        assert_eq!(s.cycles, 53);
    }

    #[test]
    fn unknown_state_byte_is_kept_raw() {
        let m = MosfetStatus::decode([7, 0, 1, 9, 0, 0, 0x03, 0xE8]).unwrap();
        assert_eq!((m.state, m.state_raw, m.remaining_capacity_ah), (DalyState::Unknown, 7, 1.0));
        assert_eq!(m.state.to_model(), None);
    }
}
