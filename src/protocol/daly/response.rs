//! Typed A5 replies (daly.md §6–§8) with the spec's field names, their decoders from the 8 data bytes of a
//! single-frame reply, and their encoders back to frames (for the simulator and round-trip tests).
//! Multi-frame replies (0x95, 0x96, 0x57, 0x63) are in `multiframe`.

use serde::Serialize;

use super::multiframe::{CellVoltages, Temperatures, Text};
use super::{Command, DecodeError, Frame, alarms};
use crate::model::PackState;
use crate::protocol::reader::Reader;

/// One decoded reply: which board sent it and what it says.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Reply {
    /// Board number from reply frame byte 1 (the pack number in the model).
    pub board: u8,
    /// The decoded content.
    #[serde(flatten)]
    pub message: Message,
}

/// The content of a reply, one variant per command.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "command", rename_all = "snake_case")]
pub enum Message {
    /// 0x90.
    Soc(Soc),
    /// 0x91.
    CellRange(CellRange),
    /// 0x92.
    TemperatureRange(TemperatureRange),
    /// 0x93.
    Mosfet(MosfetStatus),
    /// 0x94.
    Status(Status),
    /// 0x95 (all frames).
    CellVoltages(CellVoltages),
    /// 0x96 (all frames).
    Temperatures(Temperatures),
    /// 0x97.
    Balancing(Balancing),
    /// 0x98.
    Alarms(AlarmStatus),
    /// 0x50.
    Rated(Rated),
    /// 0x53.
    BatteryMode(BatteryMode),
    /// 0x57 (all frames).
    BatteryCode(Text),
    /// 0x63 (all frames).
    Identity(Text),
    /// 0xD9 acknowledgement.
    DischargeMosfet(MosfetEcho),
    /// 0xDA acknowledgement.
    ChargeMosfet(MosfetEcho),
    /// 0x21 acknowledgement.
    SetSoc(SetSocAck),
    /// 0x00 acknowledgement (its data bytes carry nothing documented).
    Restart,
}

impl Message {
    /// The command this message answers.
    #[must_use]
    pub fn command(&self) -> Command {
        match self {
            Self::Soc(_) => Command::Soc,
            Self::CellRange(_) => Command::CellRange,
            Self::TemperatureRange(_) => Command::TemperatureRange,
            Self::Mosfet(_) => Command::Mosfet,
            Self::Status(_) => Command::Status,
            Self::CellVoltages(_) => Command::CellVoltages,
            Self::Temperatures(_) => Command::Temperatures,
            Self::Balancing(_) => Command::Balancing,
            Self::Alarms(_) => Command::Alarms,
            Self::Rated(_) => Command::Rated,
            Self::BatteryMode(_) => Command::BatteryMode,
            Self::BatteryCode(_) => Command::BatteryCode,
            Self::Identity(_) => Command::Identity,
            Self::DischargeMosfet(_) => Command::DischargeMosfet,
            Self::ChargeMosfet(_) => Command::ChargeMosfet,
            Self::SetSoc(_) => Command::SetSoc,
            Self::Restart => Command::Restart,
        }
    }

    /// Decode the data bytes of a single-frame reply; `None` for the multi-frame commands.
    pub fn decode_single(command: Command, data: [u8; 8]) -> Option<Result<Self, DecodeError>> {
        let message = match command {
            Command::Soc => Soc::decode(data).map(Self::Soc),
            Command::CellRange => CellRange::decode(data).map(Self::CellRange),
            Command::TemperatureRange => TemperatureRange::decode(data).map(Self::TemperatureRange),
            Command::Mosfet => MosfetStatus::decode(data).map(Self::Mosfet),
            Command::Status => Status::decode(data).map(Self::Status),
            Command::Balancing => Ok(Self::Balancing(Balancing::decode(data))),
            Command::Alarms => Ok(Self::Alarms(AlarmStatus::decode(data))),
            Command::Rated => Rated::decode(data).map(Self::Rated),
            Command::BatteryMode => Ok(Self::BatteryMode(BatteryMode::decode(data))),
            Command::DischargeMosfet => Ok(Self::DischargeMosfet(MosfetEcho::decode(data))),
            Command::ChargeMosfet => Ok(Self::ChargeMosfet(MosfetEcho::decode(data))),
            Command::SetSoc => Ok(Self::SetSoc(SetSocAck::decode(data))),
            Command::Restart => Ok(Self::Restart),
            Command::CellVoltages | Command::Temperatures | Command::BatteryCode | Command::Identity => return None,
        };
        Some(message)
    }

    /// The reply frames the board `board` would send for this message, concatenated (minimal frame count; see
    /// [`CellVoltages::encode_frames`] / [`Temperatures::encode_frames`] for the padded 0x80 form).
    #[must_use]
    pub fn encode(&self, board: u8) -> Vec<u8> {
        let command = self.command().code();
        let data = match self {
            Self::CellVoltages(m) => return m.encode_frames(board, 0),
            Self::Temperatures(m) => return m.encode_frames(board, 0),
            Self::BatteryCode(m) | Self::Identity(m) => return m.encode_frames(board, command),
            Self::Soc(m) => m.encode(),
            Self::CellRange(m) => m.encode(),
            Self::TemperatureRange(m) => m.encode(),
            Self::Mosfet(m) => m.encode(),
            Self::Status(m) => m.encode(),
            Self::Balancing(m) => m.encode(),
            Self::Alarms(m) => m.encode(),
            Self::Rated(m) => m.encode(),
            Self::BatteryMode(m) => m.encode(),
            Self::DischargeMosfet(m) | Self::ChargeMosfet(m) => m.encode(),
            Self::SetSoc(m) => m.encode(),
            Self::Restart => [0; 8],
        };
        Frame { address: board, command, data }.encode().to_vec()
    }
}

/// Tenths (of a volt, a percent) from a raw value.
fn tenths(raw: u16) -> f64 {
    f64::from(raw) / 10.0
}

/// Raw tenths of a value, rounded and saturated to u16.
fn to_tenths(value: f64) -> u16 {
    (value * 10.0).round().clamp(0.0, f64::from(u16::MAX)) as u16
}

/// Thousandths (mV → V, mAh → Ah) to raw, rounded and saturated.
pub(super) fn to_milli_u16(value: f64) -> u16 {
    (value * 1000.0).round().clamp(0.0, f64::from(u16::MAX)) as u16
}

fn to_milli_u32(value: f64) -> u32 {
    (value * 1000.0).round().clamp(0.0, f64::from(u32::MAX)) as u32
}

/// Temperature byte (raw − 40 °C, unsigned) to °C.
pub(super) fn celsius(raw: u8) -> i16 {
    i16::from(raw) - 40
}

/// °C back to the raw byte, saturated to −40…215.
pub(super) fn celsius_raw(value: i16) -> u8 {
    (value + 40).clamp(0, 255) as u8
}

/// Data bytes made of `parts` in order, zero padded (extra bytes are dropped).
fn concat(parts: &[&[u8]]) -> [u8; 8] {
    let mut out = [0u8; 8];
    out.iter_mut().zip(parts.iter().copied().flatten()).for_each(|(o, &b)| *o = b);
    out
}

/// The first `N` data bytes.
fn head<const N: usize>(data: [u8; 8]) -> [u8; N] {
    let mut out = [0u8; N];
    out.iter_mut().zip(data).for_each(|(o, b)| *o = b);
    out
}

/// 0x90: pack voltage, current and SOC (§6.1).
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

    /// Amperes of a raw current, read unsigned so raw > 32767 stays positive (§6.1).
    #[must_use]
    pub fn current_from_raw(raw: u16) -> f64 {
        f64::from(i32::from(raw) - Self::CURRENT_OFFSET) / 10.0
    }

    fn decode(data: [u8; 8]) -> Result<Self, DecodeError> {
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

    fn encode(&self) -> [u8; 8] {
        concat(&[
            &to_tenths(self.total_voltage_v).to_be_bytes(),
            &to_tenths(self.acquisition_voltage_v).to_be_bytes(),
            &self.current_raw.to_be_bytes(),
            &to_tenths(self.soc_percent).to_be_bytes(),
        ])
    }
}

/// 0x91: highest and lowest cell voltage (§6.2).
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
    fn decode(data: [u8; 8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(&data);
        Ok(Self {
            max_cell_voltage_v: f64::from(r.be_u16()?) / 1000.0,
            max_cell_number: r.u8()?,
            min_cell_voltage_v: f64::from(r.be_u16()?) / 1000.0,
            min_cell_number: r.u8()?,
        })
    }

    fn encode(&self) -> [u8; 8] {
        concat(&[
            &to_milli_u16(self.max_cell_voltage_v).to_be_bytes(),
            &[self.max_cell_number],
            &to_milli_u16(self.min_cell_voltage_v).to_be_bytes(),
            &[self.min_cell_number],
        ])
    }
}

/// 0x92: highest and lowest temperature (§6.3).
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
    fn decode(data: [u8; 8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(&data);
        Ok(Self {
            max_temperature_c: celsius(r.u8()?),
            max_temperature_sensor: r.u8()?,
            min_temperature_c: celsius(r.u8()?),
            min_temperature_sensor: r.u8()?,
        })
    }

    fn encode(self) -> [u8; 8] {
        concat(&[&[
            celsius_raw(self.max_temperature_c),
            self.max_temperature_sensor,
            celsius_raw(self.min_temperature_c),
            self.min_temperature_sensor,
        ]])
    }
}

/// The 0x93 charge/discharge state (§6.4).
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

/// 0x93: state, MOSFETs, heartbeat, remaining capacity (§6.4).
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
    fn decode(data: [u8; 8]) -> Result<Self, DecodeError> {
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

    fn encode(&self) -> [u8; 8] {
        let flags = [u8::from(self.charge_mosfet_on), u8::from(self.discharge_mosfet_on)];
        concat(&[&[self.state_raw], &flags, &[self.bms_life], &to_milli_u32(self.remaining_capacity_ah).to_be_bytes()])
    }
}

/// 0x94: counts, charger/load detection, digital I/O, cycles (§6.5).
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

    fn decode(data: [u8; 8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(&data);
        let (cells, sensors, charger, load, dio) = (r.u8()?, r.u8()?, r.u8()?, r.u8()?, r.u8()?);
        Ok(Self::new(cells, sensors, charger != 0, load != 0, dio, r.be_u16()?))
    }

    fn encode(&self) -> [u8; 8] {
        let (charger, load) = (u8::from(self.charger_connected), u8::from(self.load_connected));
        concat(&[
            &[self.cell_count, self.temperature_sensor_count, charger, load, self.dio_raw],
            &self.cycles.to_be_bytes(),
        ])
    }
}

/// 0x97: balancing bitmap (§6.8), read as data byte 0 bit 0 = cell 1 … byte 5 bit 7 = cell 48.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Balancing {
    /// Sorted 1-based numbers of the cells being balanced; the encoder builds the bitmap from these.
    pub balancing_cells: Vec<u16>,
    /// Any of data bytes 0–5 non-zero.
    pub balancing_active: bool,
    /// Data bytes 0–5 as lower-case hex, for the other readings of this frame the spec lists.
    pub bitmap_hex: String,
}

impl Balancing {
    /// A reply balancing exactly `cells` (numbers outside 1–48 are dropped).
    #[must_use]
    pub fn from_cells(cells: &[u16]) -> Self {
        Self::from_bitmap(bitmap_of(cells))
    }

    fn from_bitmap(bitmap: [u8; 6]) -> Self {
        let set = |i: &u16| bitmap.get(usize::from(i / 8)).is_some_and(|b| b >> (i % 8) & 1 == 1);
        Self {
            balancing_cells: (0u16..48).filter(set).map(|i| i + 1).collect(),
            balancing_active: bitmap.iter().any(|&b| b != 0),
            bitmap_hex: crate::protocol::to_hex(&bitmap),
        }
    }

    fn decode(data: [u8; 8]) -> Self {
        Self::from_bitmap(head(data))
    }

    fn encode(&self) -> [u8; 8] {
        concat(&[&bitmap_of(&self.balancing_cells)])
    }
}

/// The 0x97 bitmap with the bits of `cells` (1-based) set.
fn bitmap_of(cells: &[u16]) -> [u8; 6] {
    let mut bitmap = [0u8; 6];
    for &cell in cells {
        let bit = usize::from(cell.wrapping_sub(1));
        if let Some(byte) = bitmap.get_mut(bit / 8) {
            *byte |= 1 << (bit % 8);
        }
    }
    bitmap
}

/// 0x98: alarm bits and fault code (§6.9).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AlarmStatus {
    /// Identifiers of the active bits, byte 0 bit 0 first; the encoder builds the bytes from these.
    pub alarms: Vec<&'static str>,
    /// Data byte 7; 0 = no fault.
    pub fault_code: u8,
}

impl AlarmStatus {
    /// The alarm bytes 0–6 these identifiers stand for.
    #[must_use]
    pub fn bits(&self) -> [u8; 7] {
        alarms::from_names(self.alarms.iter().copied())
    }

    fn decode(data: [u8; 8]) -> Self {
        let [.., fault_code] = data;
        Self { alarms: alarms::active_names(&head(data)), fault_code }
    }

    fn encode(&self) -> [u8; 8] {
        concat(&[&self.bits(), &[self.fault_code]])
    }
}

/// 0x50: rated capacity and nominal cell voltage (§8).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Rated {
    /// Rated capacity, Ah.
    pub rated_capacity_ah: f64,
    /// Nominal cell voltage, V.
    pub nominal_cell_voltage_v: f64,
}

impl Rated {
    fn decode(data: [u8; 8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(&data);
        Ok(Self {
            rated_capacity_ah: f64::from(r.be_u32()?) / 1000.0,
            nominal_cell_voltage_v: f64::from(r.be_u32()?) / 1000.0,
        })
    }

    fn encode(&self) -> [u8; 8] {
        concat(&[
            &to_milli_u32(self.rated_capacity_ah).to_be_bytes(),
            &to_milli_u32(self.nominal_cell_voltage_v).to_be_bytes(),
        ])
    }
}

/// 0x53: battery type/mode and production date (§8, medium confidence: the raw bytes are kept).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct BatteryMode {
    /// Data byte 0: battery type / operation mode, meaning not settled.
    pub mode_raw: u8,
    /// Data byte 2 + 2000.
    pub production_year: u16,
    /// Data byte 3.
    pub production_month: u8,
    /// Data byte 4.
    pub production_day: u8,
    /// All eight data bytes; the encoder starts from these and writes the fields above over them.
    #[serde(serialize_with = "hex_bytes")]
    pub raw: [u8; 8],
}

#[allow(clippy::trivially_copy_pass_by_ref, reason = "serde's serialize_with passes a reference")]
fn hex_bytes<S: serde::Serializer>(bytes: &[u8; 8], s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&crate::protocol::to_hex(bytes))
}

impl BatteryMode {
    fn decode(data: [u8; 8]) -> Self {
        let [mode_raw, _, year, month, day, ..] = data;
        Self {
            mode_raw,
            production_year: 2000 + u16::from(year),
            production_month: month,
            production_day: day,
            raw: data,
        }
    }

    fn encode(&self) -> [u8; 8] {
        let [_, reserved, _, _, _, e, f, g] = self.raw;
        let year = self.production_year.saturating_sub(2000).min(255) as u8;
        [self.mode_raw, reserved, year, self.production_month, self.production_day, e, f, g]
    }
}

/// 0xD9 / 0xDA reply (§7.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct MosfetEcho {
    /// Data byte 0 ≠ 0: the board reports the MOSFET as switched on.
    pub mosfet_state_echo: bool,
}

impl MosfetEcho {
    fn decode(data: [u8; 8]) -> Self {
        Self { mosfet_state_echo: data[0] != 0 }
    }

    fn encode(self) -> [u8; 8] {
        concat(&[&[u8::from(self.mosfet_state_echo)]])
    }
}

/// 0x21 reply (§7.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct SetSocAck {
    /// Data byte 0 == 1.
    pub accepted: bool,
}

impl SetSocAck {
    fn decode(data: [u8; 8]) -> Self {
        Self { accepted: data[0] == 1 }
    }

    fn encode(self) -> [u8; 8] {
        concat(&[&[u8::from(self.accepted)]])
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
    fn balancing_bitmap_reads_byte_0_bit_0_as_cell_1() {
        let b = Balancing::decode([0x01, 0x81, 0, 0, 0, 0x80, 0xFF, 0xFF]);
        assert_eq!(b.balancing_cells, [1, 9, 16, 48]);
        assert_eq!(b.bitmap_hex, "018100000080");
        assert_eq!(b.encode(), [0x01, 0x81, 0, 0, 0, 0x80, 0, 0]);
        assert!(!Balancing::decode([0, 0, 0, 0, 0, 0, 0xFF, 0xFF]).balancing_active, "bytes 6–7 are reserved");
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

    #[test]
    fn battery_mode_keeps_raw_bytes_and_reads_the_date() {
        let data = [2, 9, 24, 5, 17, 0x1C, 0x20, 0];
        let m = BatteryMode::decode(data);
        assert_eq!((m.production_year, m.production_month, m.production_day, m.mode_raw), (2024, 5, 17, 2));
        assert_eq!(m.encode(), data);
    }
}
