//! Command 0x44, warnings, protections and status (`docs/protocols/pace.md#0x44-status`): the level bytes, the bit
//! tables with their canonical names, the balancing mapping, the 0–5 extension bytes, the reply decoder and the
//! reply encoder.

use std::collections::BTreeMap;

use serde::Serialize;

use super::analog::count_u8;
use super::frame::{Frame, Header, encode_frame};
use super::layout::{self, Shape};
use crate::model::LevelAlarmKind;
use crate::protocol::DecodeError;
use crate::protocol::reader::Reader;

/// Protection state 1, bit 0 first.
pub const PROTECT1: [&str; 8] = [
    "cell_overvoltage",
    "cell_undervoltage",
    "pack_overvoltage",
    "pack_undervoltage",
    "charge_overcurrent",
    "discharge_overcurrent",
    "short_circuit",
    "charger_overvoltage",
];
/// Protection state 2, bit 0 first.
pub const PROTECT2: [&str; 8] = [
    "charge_overtemp",
    "discharge_overtemp",
    "charge_undertemp",
    "discharge_undertemp",
    "mosfet_overtemp",
    "ambient_overtemp",
    "ambient_undertemp",
    "fully_charged",
];
/// Instruction (system) state, bit 0 first.
pub const SYSTEM: [&str; 8] = [
    "current_limit_active",
    "charge_mosfet_on",
    "discharge_mosfet_on",
    "pack_power_supply",
    "reverse_connection",
    "ac_in",
    "shutdown",
    "heart",
];
/// Control (configuration) state, bit 0 first.
pub const CONTROL: [&str; 8] = [
    "buzzer_enabled",
    "charge_mosfet_function",
    "discharge_mosfet_function",
    "current_limit_low_gear",
    "current_limit_disabled",
    "led_alarm_disabled",
    "system_lock",
    "test_mode",
];
/// Fault state, bit 0 first.
pub const FAULT: [&str; 8] = [
    "charge_mosfet_fault",
    "discharge_mosfet_fault",
    "ntc_fault",
    "communication_fault",
    "cell_fault",
    "sampling_fault",
    "current_limit_fault",
    "heater_fault",
];
/// Warning state 1, bit 0 first.
pub const WARN1: [&str; 8] = [
    "cell_overvoltage",
    "cell_undervoltage",
    "pack_overvoltage",
    "pack_undervoltage",
    "charge_overcurrent",
    "discharge_overcurrent",
    "reserved_bit6",
    "reserved_bit7",
];
/// Warning state 2, bit 0 first.
pub const WARN2: [&str; 8] = [
    "charge_overtemp",
    "discharge_overtemp",
    "charge_undertemp",
    "discharge_undertemp",
    "ambient_overtemp",
    "ambient_undertemp",
    "mosfet_overtemp",
    "low_capacity",
];

/// Bit number of "charge MOSFET on" in the system state.
pub const SYSTEM_CHARGE_MOSFET_BIT: u8 = 1;
/// Bit number of "discharge MOSFET on" in the system state.
pub const SYSTEM_DISCHARGE_MOSFET_BIT: u8 = 2;

/// Most extension bytes tolerated after warning state 2 (`docs/protocols/pace.md#0x44-status`).
pub const MAX_EXTENSION_BYTES: usize = 5;

/// One status block exactly as on the wire.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct StatusBlock {
    /// Per-cell level bytes.
    pub cell_warn: Vec<u8>,
    /// Per-sensor level bytes.
    pub temp_warn: Vec<u8>,
    /// Charge current level byte.
    pub charge_current_warn: u8,
    /// Pack voltage level byte.
    pub pack_voltage_warn: u8,
    /// Discharge current level byte.
    pub discharge_current_warn: u8,
    /// Protection state 1 bits.
    pub protect1: u8,
    /// Protection state 2 bits.
    pub protect2: u8,
    /// Instruction (system) state bits.
    pub system: u8,
    /// Control (configuration) state bits.
    pub control: u8,
    /// Fault state bits.
    pub fault: u8,
    /// Balancing state 1: bit k = cell k+1.
    pub balance1: u8,
    /// Balancing state 2: bit k = cell k+9.
    pub balance2: u8,
    /// Warning state 1 bits.
    pub warn1: u8,
    /// Warning state 2 bits.
    pub warn2: u8,
    /// Extension bytes after warning state 2, raw.
    pub extension: Vec<u8>,
}

/// One decoded status block: the raw bytes plus their names; field names are those of the shared vectors.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StatusPack {
    /// 1-based block number within the reply.
    pub index: u8,
    /// M.
    pub cell_count: u8,
    /// N.
    pub temp_count: u8,
    /// The raw block.
    #[serde(flatten)]
    pub block: StatusBlock,
    /// Balancing cells, 1-based (state 1 bit k = cell k+1, state 2 bit k = cell k+9).
    pub balancing_cells: Vec<u8>,
    /// Non-normal cell levels by 1-based cell number.
    pub cell_warn_levels: BTreeMap<u8, &'static str>,
    /// Non-normal temperature levels by 1-based sensor number.
    pub temp_warn_levels: BTreeMap<u8, &'static str>,
    /// Set protection 1 bits.
    pub protect1_flags: Vec<&'static str>,
    /// Set protection 2 bits.
    pub protect2_flags: Vec<&'static str>,
    /// Set system state bits.
    pub system_flags: Vec<&'static str>,
    /// Set control state bits.
    pub control_flags: Vec<&'static str>,
    /// Set fault bits.
    pub fault_flags: Vec<&'static str>,
    /// Set warning 1 bits.
    pub warn1_flags: Vec<&'static str>,
    /// Set warning 2 bits.
    pub warn2_flags: Vec<&'static str>,
}

/// A decoded 0x44 reply.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StatusReply {
    /// Frame header.
    #[serde(flatten)]
    pub header: Header,
    /// INFOFLAG (ignored).
    pub info_flag: u8,
    /// The raw second INFO byte: block count for COMMAND FF, else the COMMAND echo.
    pub count_or_command: u8,
    /// Whether the reply answers COMMAND FF.
    pub all_packs: bool,
    /// Blocks decoded.
    pub pack_count: usize,
    /// X, the extension bytes per block.
    pub extension_bytes: usize,
    /// The packs, in block order.
    pub packs: Vec<StatusPack>,
}

const SHAPE: Shape =
    Shape { n_offset: |m| 1 + m, fixed: |m, n| 1 + m + 1 + n + 12, tail_min: 0, tail_max: Some(MAX_EXTENSION_BYTES) };

/// The names of the set bits of `bits` in `table`.
#[must_use]
pub fn flags(bits: u8, table: &[&'static str; 8]) -> Vec<&'static str> {
    table.iter().enumerate().filter(|(bit, _)| bits >> bit & 1 == 1).map(|(_, &name)| name).collect()
}

fn levels(bytes: &[u8]) -> BTreeMap<u8, &'static str> {
    bytes
        .iter()
        .enumerate()
        .filter_map(|(i, &level)| Some(((i + 1) as u8, LevelAlarmKind::from_level(level)?.as_str())))
        .collect()
}

/// Decode a 0x44 reply's INFO; `all_packs` says whether COMMAND FF was asked.
pub fn decode_status(frame: &Frame, all_packs: bool) -> Result<StatusReply, DecodeError> {
    let mut r = Reader::new(&frame.info);
    let info_flag = r.u8()?;
    let count_or_command = r.u8()?;
    let count = if all_packs { usize::from(count_or_command) } else { 1 };
    let (blocks, extension_bytes) = layout::split(r.rest(), count, SHAPE)?;
    let packs = blocks
        .into_iter()
        .enumerate()
        .map(|(i, bytes)| Ok(StatusPack::from_block((i + 1) as u8, read_block(bytes)?)))
        .collect::<Result<Vec<_>, DecodeError>>()?;
    Ok(StatusReply {
        header: frame.header,
        info_flag,
        count_or_command,
        all_packs,
        pack_count: packs.len(),
        extension_bytes,
        packs,
    })
}

fn read_block(bytes: &[u8]) -> Result<StatusBlock, DecodeError> {
    let mut r = Reader::new(bytes);
    let m = r.u8()?;
    let cell_warn = r.take(usize::from(m))?.to_vec();
    let n = r.u8()?;
    let temp_warn = r.take(usize::from(n))?.to_vec();
    let [charge_current_warn, pack_voltage_warn, discharge_current_warn] = r.array()?;
    let [protect1, protect2, system, control, fault, balance1, balance2, warn1, warn2] = r.array()?;
    Ok(StatusBlock {
        cell_warn,
        temp_warn,
        charge_current_warn,
        pack_voltage_warn,
        discharge_current_warn,
        protect1,
        protect2,
        system,
        control,
        fault,
        balance1,
        balance2,
        warn1,
        warn2,
        extension: r.rest().to_vec(),
    })
}

impl StatusPack {
    /// Name the bits of a raw block, as block number `index`.
    #[must_use]
    pub fn from_block(index: u8, block: StatusBlock) -> Self {
        let balancing = u16::from(block.balance2) << 8 | u16::from(block.balance1);
        Self {
            index,
            cell_count: block.cell_warn.len() as u8,
            temp_count: block.temp_warn.len() as u8,
            balancing_cells: (0..16u8).filter(|k| balancing >> k & 1 == 1).map(|k| k + 1).collect(),
            cell_warn_levels: levels(&block.cell_warn),
            temp_warn_levels: levels(&block.temp_warn),
            protect1_flags: flags(block.protect1, &PROTECT1),
            protect2_flags: flags(block.protect2, &PROTECT2),
            system_flags: flags(block.system, &SYSTEM),
            control_flags: flags(block.control, &CONTROL),
            fault_flags: flags(block.fault, &FAULT),
            warn1_flags: flags(block.warn1, &WARN1),
            warn2_flags: flags(block.warn2, &WARN2),
            block,
        }
    }
}

/// Encode a 0x44 reply from raw blocks.
pub fn encode_status(
    header: Header,
    info_flag: u8,
    count_or_command: u8,
    blocks: &[StatusBlock],
) -> Result<Vec<u8>, DecodeError> {
    let mut info = vec![info_flag, count_or_command];
    for b in blocks {
        info.push(count_u8("cell count", b.cell_warn.len())?);
        info.extend_from_slice(&b.cell_warn);
        info.push(count_u8("temperature count", b.temp_warn.len())?);
        info.extend_from_slice(&b.temp_warn);
        info.extend([b.charge_current_warn, b.pack_voltage_warn, b.discharge_current_warn]);
        info.extend([b.protect1, b.protect2, b.system, b.control, b.fault, b.balance1, b.balance2, b.warn1, b.warn2]);
        info.extend_from_slice(&b.extension);
    }
    encode_frame(header, &info)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn balancing_state_one_is_cells_one_to_eight_and_state_two_is_nine_to_sixteen() {
        let block = StatusBlock {
            cell_warn: vec![0; 16],
            balance1: 0b1000_0001,
            balance2: 0b0000_0010,
            ..StatusBlock::default()
        };
        assert_eq!(StatusPack::from_block(1, block).balancing_cells, [1, 8, 10]);
    }

    #[test]
    fn flags_and_levels_use_the_spec_names() {
        assert_eq!(flags(0b1010_0101, &SYSTEM), ["current_limit_active", "discharge_mosfet_on", "ac_in", "heart"]);
        let block = StatusBlock { cell_warn: vec![0, 0x85, 0xF0, 0x03], ..StatusBlock::default() };
        let levels = StatusPack::from_block(1, block).cell_warn_levels;
        assert_eq!(levels.into_iter().collect::<Vec<_>>(), [(2, "user_defined"), (3, "other_fault"), (4, "unknown")]);
    }
}
