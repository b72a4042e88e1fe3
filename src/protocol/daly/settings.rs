//! Single-frame flag, settings and acknowledgement replies (`docs/protocols/daly-a5.md`: 0x97, 0x98, 0x50, 0x53,
//! 0xD9/0xDA, 0x21): typed values, decoders from 8 data bytes, encoders back to data bytes.

use serde::Serialize;

use super::response::{concat, head, to_milli_u32};
use super::{DecodeError, alarms};
use crate::protocol::reader::Reader;

/// 0x97: balancing bitmap (`docs/protocols/daly-a5.md#0x97-balancing`), read as data byte 0 bit 0 = cell 1 …
/// byte 5 bit 7 = cell 48.
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

    pub(super) fn decode(data: [u8; 8]) -> Self {
        Self::from_bitmap(head(data))
    }

    pub(super) fn encode(&self) -> [u8; 8] {
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

/// 0x98: alarm bits and fault code (`docs/protocols/daly-a5.md#0x98-alarms`).
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

    pub(super) fn decode(data: [u8; 8]) -> Self {
        let [.., fault_code] = data;
        Self { alarms: alarms::active_names(&head(data)), fault_code }
    }

    pub(super) fn encode(&self) -> [u8; 8] {
        concat(&[&self.bits(), &[self.fault_code]])
    }
}

/// 0x50: rated capacity and nominal cell voltage (`docs/protocols/daly-a5.md#identity-and-capacity-reads`).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Rated {
    /// Rated capacity, Ah.
    pub rated_capacity_ah: f64,
    /// Nominal cell voltage, V.
    pub nominal_cell_voltage_v: f64,
}

impl Rated {
    pub(super) fn decode(data: [u8; 8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(&data);
        Ok(Self {
            rated_capacity_ah: f64::from(r.be_u32()?) / 1000.0,
            nominal_cell_voltage_v: f64::from(r.be_u32()?) / 1000.0,
        })
    }

    pub(super) fn encode(&self) -> [u8; 8] {
        concat(&[
            &to_milli_u32(self.rated_capacity_ah).to_be_bytes(),
            &to_milli_u32(self.nominal_cell_voltage_v).to_be_bytes(),
        ])
    }
}

/// 0x53: battery type/mode and production date (medium confidence: the raw bytes are kept).
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
    pub(super) fn decode(data: [u8; 8]) -> Self {
        let [mode_raw, _, year, month, day, ..] = data;
        Self {
            mode_raw,
            production_year: 2000 + u16::from(year),
            production_month: month,
            production_day: day,
            raw: data,
        }
    }

    pub(super) fn encode(&self) -> [u8; 8] {
        let [_, reserved, _, _, _, e, f, g] = self.raw;
        let year = self.production_year.saturating_sub(2000).min(255) as u8;
        [self.mode_raw, reserved, year, self.production_month, self.production_day, e, f, g]
    }
}

/// 0xD9 / 0xDA reply (`docs/protocols/daly-a5.md#write-commands`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct MosfetEcho {
    /// Data byte 0 ≠ 0: the board reports the MOSFET as switched on.
    pub mosfet_state_echo: bool,
}

impl MosfetEcho {
    pub(super) fn decode(data: [u8; 8]) -> Self {
        Self { mosfet_state_echo: data[0] != 0 }
    }

    pub(super) fn encode(self) -> [u8; 8] {
        concat(&[&[u8::from(self.mosfet_state_echo)]])
    }
}

/// 0x21 reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct SetSocAck {
    /// Data byte 0 == 1.
    pub accepted: bool,
}

impl SetSocAck {
    pub(super) fn decode(data: [u8; 8]) -> Self {
        Self { accepted: data[0] == 1 }
    }

    pub(super) fn encode(self) -> [u8; 8] {
        concat(&[&[u8::from(self.accepted)]])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn balancing_bitmap_reads_byte_0_bit_0_as_cell_1() {
        let b = Balancing::decode([0x01, 0x81, 0, 0, 0, 0x80, 0xFF, 0xFF]);
        assert_eq!(b.balancing_cells, [1, 9, 16, 48]);
        assert_eq!(b.bitmap_hex, "018100000080");
        assert_eq!(b.encode(), [0x01, 0x81, 0, 0, 0, 0x80, 0, 0]);
        assert!(!Balancing::decode([0, 0, 0, 0, 0, 0, 0xFF, 0xFF]).balancing_active, "bytes 6–7 are reserved");
    }

    #[test]
    fn battery_mode_keeps_raw_bytes_and_reads_the_date() {
        let data = [2, 9, 24, 5, 17, 0x1C, 0x20, 0];
        let m = BatteryMode::decode(data);
        assert_eq!((m.production_year, m.production_month, m.production_day, m.mode_raw), (2024, 5, 17, 2));
        assert_eq!(m.encode(), data);
    }
}
