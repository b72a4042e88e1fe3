//! Command 0x42, pack analog values (`docs/protocols/pace.md#0x42-analog-values`, and the Pylon 0x20 layout of
//! `docs/protocols/pace.md#ver-0x20-pylon`): the raw [`PackBlock`], its decoded [`AnalogPack`] with derived SOC/SOH
//! and cell spread, the reply decoder and the reply encoder a simulator uses.

use serde::Serialize;

use super::Variant;
use super::frame::{Frame, Header, encode_frame};
use super::layout::{self, Shape};
use crate::protocol::DecodeError;
use crate::protocol::reader::Reader;

/// A temperature word meaning "sensor not fitted" (2023 document).
pub const TEMP_NOT_FITTED: u16 = 0x8000;

/// One pack block exactly as on the wire; `tail` holds the T bytes after P.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PackBlock {
    /// Cell voltages, mV.
    pub cells_mv: Vec<u16>,
    /// Temperatures, 0.1 K (offset 2730 on Pace, 2731 on Pylon).
    pub temps_raw: Vec<u16>,
    /// Current, two's complement, 10 mA (Pace) or 100 mA (Pylon); positive = charging.
    pub current_raw: i16,
    /// Pack voltage, mV.
    pub voltage_mv: u16,
    /// Remaining capacity, 10 mAh (Pace) or mAh (Pylon).
    pub remaining_raw: u16,
    /// P, the user-defined item count the firmware claims (unreliable,
    /// `docs/protocols/pace.md#separating-pack-blocks`).
    pub user_defined_count: u8,
    /// The T bytes after P.
    pub tail: Vec<u8>,
}

/// Tail fields beyond full/cycles/design that newer firmwares add (`docs/protocols/pace.md#tail-fields`); each only
/// when it fits.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Reported {
    /// SOC the BMS itself reports, %.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub soc_pct: Option<u8>,
    /// Cumulative charge word, kept raw (firmwares fill it with junk).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cumulative_charge_raw: Option<u32>,
    /// Cumulative discharge word, kept raw.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cumulative_discharge_raw: Option<u32>,
    /// SOH the BMS itself reports, %.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub soh_pct: Option<u8>,
    /// Port ("independent total") voltage, V.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub port_voltage_v: Option<f64>,
    /// Port ("independent") current, A.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub port_current_a: Option<f64>,
    /// Remaining capacity of the whole bank, Ah.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub summary_remaining_ah: Option<f64>,
    /// Full capacity of the whole bank, Ah.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub summary_full_ah: Option<f64>,
}

/// One decoded pack block; field names are those of the shared vectors.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AnalogPack {
    /// 1-based block number within the reply.
    pub index: u8,
    /// M.
    pub cell_count: u8,
    /// Cell voltages, mV.
    pub cells_mv: Vec<u16>,
    /// N.
    pub temp_count: u8,
    /// Temperatures, °C; `None` for a sensor that is not fitted.
    pub temps_c: Vec<Option<f64>>,
    /// Current, A, positive while charging.
    pub current_a: f64,
    /// Pack voltage, V.
    pub voltage_v: f64,
    /// Remaining capacity, Ah.
    pub remaining_ah: f64,
    /// P as sent.
    pub user_defined_count: u8,
    /// Full-charge capacity, Ah.
    pub full_ah: f64,
    /// Cycle count.
    pub cycles: u16,
    /// Design capacity, Ah (absent in the Pylon layout).
    pub design_ah: Option<f64>,
    /// T, the bytes after P.
    pub tail_bytes: usize,
    /// Extra tail fields, when T > 6.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reported: Option<Reported>,
    /// remaining / full × 100; `None` when full is 0.
    pub soc_pct: Option<f64>,
    /// full / design × 100, unclamped; `None` without a design capacity.
    pub soh_pct: Option<f64>,
    /// Lowest cell, mV.
    pub cell_min_mv: Option<u16>,
    /// Highest cell, mV.
    pub cell_max_mv: Option<u16>,
    /// Highest − lowest, mV.
    pub cell_diff_mv: Option<u16>,
    /// False for an all-zero block (a pack the master cannot read, `docs/protocols/pace.md#addresses-and-packs`).
    pub online: bool,
    /// The raw block, for re-encoding.
    #[serde(skip)]
    pub block: PackBlock,
}

/// A decoded 0x42 reply.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AnalogReply {
    /// Frame header.
    #[serde(flatten)]
    pub header: Header,
    /// INFOFLAG (ignored).
    pub info_flag: u8,
    /// The raw second INFO byte: block count for COMMAND FF, else the COMMAND echo.
    pub count_or_command: u8,
    /// Whether the reply answers COMMAND FF (blocks numbered 1..M) rather than one pack.
    pub all_packs: bool,
    /// Blocks decoded.
    pub pack_count: usize,
    /// The packs, in block order.
    pub packs: Vec<AnalogPack>,
}

fn shape(variant: Variant) -> Shape {
    Shape {
        n_offset: |m| 1 + 2 * m,
        fixed: |m, n| 1 + 2 * m + 1 + 2 * n + 7,
        tail_min: match variant {
            Variant::Pace => 6,
            Variant::Pylon => 4,
        },
        tail_max: None,
    }
}

/// Decode a 0x42 reply's INFO; `all_packs` says whether COMMAND FF was asked.
pub fn decode_analog(frame: &Frame, all_packs: bool, variant: Variant) -> Result<AnalogReply, DecodeError> {
    let mut r = Reader::new(&frame.info);
    let info_flag = r.u8()?;
    let count_or_command = r.u8()?;
    let count = if all_packs { usize::from(count_or_command) } else { 1 };
    let (blocks, tail) = layout::split(r.rest(), count, shape(variant))?;
    if variant == Variant::Pylon && tail != 4 && tail != 10 {
        return Err(DecodeError::UnsupportedVersion {
            version: frame.header.ver,
            why: "0x42 tail is neither Pylon P=2 (4 bytes) nor P=4 (10 bytes); Seplos/EG4 layouts are not supported",
        });
    }
    let packs = blocks
        .into_iter()
        .enumerate()
        .map(|(i, bytes)| Ok(AnalogPack::from_block((i + 1) as u8, read_block(bytes)?, variant)))
        .collect::<Result<Vec<_>, DecodeError>>()?;
    Ok(AnalogReply { header: frame.header, info_flag, count_or_command, all_packs, pack_count: packs.len(), packs })
}

fn read_block(bytes: &[u8]) -> Result<PackBlock, DecodeError> {
    let mut r = Reader::new(bytes);
    let m = r.u8()?;
    let cells_mv = (0..m).map(|_| r.be_u16()).collect::<Result<_, _>>()?;
    let n = r.u8()?;
    let temps_raw = (0..n).map(|_| r.be_u16()).collect::<Result<_, _>>()?;
    Ok(PackBlock {
        cells_mv,
        temps_raw,
        current_raw: r.be_i16()?,
        voltage_mv: r.be_u16()?,
        remaining_raw: r.be_u16()?,
        user_defined_count: r.u8()?,
        tail: r.rest().to_vec(),
    })
}

/// Unit conversions of one variant (divisors, so decimal values print exactly: −225 / 100 = −2.25).
struct Units {
    temp_offset: f64,
    counts_per_amp: f64,
    counts_per_ah: f64,
}

fn units(variant: Variant) -> Units {
    match variant {
        Variant::Pace => Units { temp_offset: 2730.0, counts_per_amp: 100.0, counts_per_ah: 100.0 },
        Variant::Pylon => Units { temp_offset: 2731.0, counts_per_amp: 10.0, counts_per_ah: 1000.0 },
    }
}

/// The big-endian value of `len` tail bytes at `at`, if they are all there.
fn tail_value(tail: &[u8], at: usize, len: usize) -> Option<u32> {
    Some(tail.get(at..at + len)?.iter().fold(0u32, |acc, &b| acc << 8 | u32::from(b)))
}

impl AnalogPack {
    /// Decode a raw block as block number `index` of a reply in `variant`.
    #[must_use]
    pub fn from_block(index: u8, block: PackBlock, variant: Variant) -> Self {
        let u = units(variant);
        let ah = |raw: u32| f64::from(raw) / u.counts_per_ah;
        let scaled = |raw: f64, divisor: f64| raw / divisor;
        let tail = block.tail.as_slice();
        let field = |at, len| tail_value(tail, at, len);
        let mut remaining_ah = ah(u32::from(block.remaining_raw));
        let mut full_ah = field(0, 2).map_or(0.0, ah);
        let cycles = field(2, 2).unwrap_or(0) as u16;
        let (design_ah, reported) = match variant {
            Variant::Pace => {
                let reported = Reported {
                    soc_pct: field(6, 1).map(|v| v as u8),
                    // Both words first appear together at T >= 15 (docs/protocols/pace.md#tail-fields).
                    cumulative_charge_raw: field(11, 4).and(field(7, 4)),
                    cumulative_discharge_raw: field(11, 4),
                    soh_pct: field(15, 1).map(|v| v as u8),
                    port_voltage_v: field(16, 2).map(|v| scaled(f64::from(v), 1000.0)),
                    port_current_a: field(18, 2).map(|v| scaled(f64::from(v as u16 as i16), 100.0)),
                    summary_remaining_ah: field(20, 4).map(|v| scaled(f64::from(v), 100.0)),
                    summary_full_ah: field(24, 4).map(|v| scaled(f64::from(v), 100.0)),
                };
                (field(4, 2).map(ah), (tail.len() > 6).then_some(reported))
            }
            Variant::Pylon => {
                // P = 4: 3-byte remaining and full follow; the 2-byte copies are then 0xFFFF.
                if let (Some(remaining), Some(full)) = (field(4, 3), field(7, 3)) {
                    remaining_ah = ah(remaining);
                    full_ah = ah(full);
                }
                (None, None)
            }
        };
        let cell_min_mv = block.cells_mv.iter().copied().min();
        let cell_max_mv = block.cells_mv.iter().copied().max();
        let online = block.voltage_mv != 0 || block.cells_mv.iter().any(|&mv| mv != 0);
        Self {
            index,
            cell_count: block.cells_mv.len() as u8,
            cells_mv: block.cells_mv.clone(),
            temp_count: block.temps_raw.len() as u8,
            temps_c: block
                .temps_raw
                .iter()
                .map(|&raw| (raw != TEMP_NOT_FITTED).then(|| (f64::from(raw) - u.temp_offset) / 10.0))
                .collect(),
            current_a: f64::from(block.current_raw) / u.counts_per_amp,
            voltage_v: f64::from(block.voltage_mv) / 1000.0,
            remaining_ah,
            user_defined_count: block.user_defined_count,
            full_ah,
            cycles,
            design_ah,
            tail_bytes: block.tail.len(),
            reported,
            soc_pct: (full_ah > 0.0).then(|| remaining_ah / full_ah * 100.0),
            soh_pct: design_ah.filter(|&d| d > 0.0).map(|d| full_ah / d * 100.0),
            cell_min_mv,
            cell_max_mv,
            cell_diff_mv: cell_max_mv.zip(cell_min_mv).map(|(max, min)| max - min),
            online,
            block,
        }
    }
}

/// A Pace tail of `len` bytes: full capacity, cycles and design capacity (10 mAh units), zero-filled beyond.
#[must_use]
pub fn pace_tail(full_raw: u16, cycles: u16, design_raw: u16, len: usize) -> Vec<u8> {
    let mut tail: Vec<u8> = [full_raw, cycles, design_raw].iter().flat_map(|v| v.to_be_bytes()).collect();
    tail.resize(len, 0);
    tail
}

/// Encode a 0x42 reply from raw blocks (a simulator's reply, or a decoded reply re-encoded).
pub fn encode_analog(
    header: Header,
    info_flag: u8,
    count_or_command: u8,
    blocks: &[PackBlock],
) -> Result<Vec<u8>, DecodeError> {
    let mut info = vec![info_flag, count_or_command];
    for block in blocks {
        info.push(count_u8("cell count", block.cells_mv.len())?);
        info.extend(block.cells_mv.iter().flat_map(|v| v.to_be_bytes()));
        info.push(count_u8("temperature count", block.temps_raw.len())?);
        info.extend(block.temps_raw.iter().flat_map(|v| v.to_be_bytes()));
        info.extend(block.current_raw.to_be_bytes());
        info.extend(block.voltage_mv.to_be_bytes());
        info.extend(block.remaining_raw.to_be_bytes());
        info.push(block.user_defined_count);
        info.extend_from_slice(&block.tail);
    }
    encode_frame(header, &info)
}

/// A count as its one-byte wire field, or `OutOfRange`.
pub(crate) fn count_u8(field: &'static str, len: usize) -> Result<u8, DecodeError> {
    u8::try_from(len).map_err(|_| DecodeError::OutOfRange { field, value: u32::try_from(len).unwrap_or(u32::MAX) })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::pace::frame::parse_frame;

    #[test]
    fn the_worked_example_of_the_pace_document_decodes_field_by_field() {
        let frame = parse_frame(
            b"~25004600F07A0001100D420D140D130D130D130D130D130D130D110D120D130D110D110D120D100D13060BB70BB70BB80BB60BB30BBD0000D155128E03138800001388E3AC\r",
        )
        .unwrap();
        let reply = decode_analog(&frame, true, Variant::Pace).unwrap();
        let p = &reply.packs[0];
        assert_eq!((reply.info_flag, reply.count_or_command), (0x00, 0x01)); // INFOFLAG, one pack
        assert_eq!(p.cells_mv[..2], [3394, 3348]); // 0D42, 0D14
        assert_eq!(p.temps_c[4], Some(26.5)); // 0BB3, MOSFET
        assert_eq!(p.temps_c[5], Some(27.5)); // 0BBD, ambient
        assert_eq!((p.current_a, p.voltage_v, p.remaining_ah), (0.0, 53.589, 47.5)); // 0000 D155 128E
        assert_eq!((p.user_defined_count, p.full_ah, p.cycles, p.design_ah), (3, 50.0, 0, Some(50.0)));
        assert_eq!((p.tail_bytes, p.reported), (6, None));
        assert_eq!((p.soc_pct, p.soh_pct, p.cell_diff_mv), (Some(95.0), Some(100.0), Some(50)));
    }

    #[test]
    fn negative_currents_use_a_true_twos_complement() {
        let block = PackBlock { current_raw: 0xFF1Fu16 as i16, ..zero_block(6) };
        assert_eq!(AnalogPack::from_block(1, block, Variant::Pace).current_a, -2.25); // bmspace says -2.24
    }

    #[test]
    fn the_pylon_layout_reads_three_byte_capacities_when_p_is_four() {
        let tail = [0xFF, 0xFF, 0x00, 0x05, 0x01, 0x86, 0xA0, 0x01, 0xD4, 0xC0]; // full copy, cycles, 100000, 120000
        let block = PackBlock { remaining_raw: 0xFFFF, user_defined_count: 4, tail: tail.to_vec(), ..zero_block(0) };
        let pack = AnalogPack::from_block(1, block, Variant::Pylon);
        assert_eq!((pack.remaining_ah, pack.full_ah, pack.cycles, pack.design_ah), (100.0, 120.0, 5, None));
        assert_eq!(pack.soh_pct, None);
    }

    #[test]
    fn a_block_of_zeros_is_offline_and_has_no_soc() {
        let pack = AnalogPack::from_block(2, PackBlock { cells_mv: vec![0; 16], ..zero_block(6) }, Variant::Pace);
        assert!(!pack.online);
        assert_eq!(pack.soc_pct, None);
    }

    fn zero_block(tail: usize) -> PackBlock {
        PackBlock {
            cells_mv: vec![3300],
            temps_raw: vec![],
            current_raw: 0,
            voltage_mv: 0,
            remaining_raw: 0,
            user_defined_count: 3,
            tail: vec![0; tail],
        }
    }
}
