//! The small reads (`docs/protocols/pace.md#small-reads`): 0xC1 software version, 0xC2 serial numbers, 0xA6 pack
//! capacity, 0x90 pack count and 0xB1 date/time — decoders and the matching reply encoders.

use serde::Serialize;

use super::frame::{Frame, Header, encode_frame};
use crate::protocol::reader::Reader;
use crate::protocol::{DecodeError, to_hex};

/// Characters of one text field of 0xC1/0xC2.
pub const TEXT_FIELD_LEN: usize = 20;

/// A decoded 0xC1 reply.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VersionReply {
    /// Frame header.
    #[serde(flatten)]
    pub header: Header,
    /// INFO length in characters (40, or 80 with a Bluetooth name).
    pub lenid: usize,
    /// The BMS model/firmware string, trailing spaces and NULs stripped.
    pub version: String,
    /// The Bluetooth device name of boards that send one.
    pub bluetooth_name: Option<String>,
    /// INFO as upper-case hex, as received.
    pub info_hex: String,
}

/// A decoded 0xC2 reply.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ProductInfoReply {
    /// Frame header.
    #[serde(flatten)]
    pub header: Header,
    /// INFO length in characters (40 or 80).
    pub lenid: usize,
    /// BMS production info (serial), full field trimmed.
    pub bms_serial: String,
    /// Pack production info (serial), full field trimmed; empty when absent or blank.
    pub pack_serial: String,
    /// INFO as upper-case hex, as received.
    pub info_hex: String,
}

/// A decoded 0xA6 reply (describes pack 1 / the master, `docs/protocols/pace.md#addresses-and-packs`).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct CapacityReply {
    /// Frame header.
    #[serde(flatten)]
    pub header: Header,
    /// Remaining capacity, Ah.
    pub remaining_ah: f64,
    /// Full-charge capacity, Ah.
    pub full_ah: f64,
    /// Design capacity, Ah.
    pub design_ah: f64,
    /// remaining / full × 100; `None` when full is 0.
    pub soc_pct: Option<f64>,
    /// full / design × 100, unclamped; `None` when design is 0.
    pub soh_pct: Option<f64>,
}

/// A decoded 0x90 reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct PackCountReply {
    /// Frame header.
    #[serde(flatten)]
    pub header: Header,
    /// Packs the master sees.
    pub pack_count: u8,
}

/// A BMS clock reading (binary fields, not BCD).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct DateTime {
    /// Full year (wire value + 2000).
    pub year: u16,
    /// Month, 1–12 when valid.
    pub month: u8,
    /// Day, 1–31 when valid.
    pub day: u8,
    /// Hour.
    pub hour: u8,
    /// Minute.
    pub minute: u8,
    /// Second.
    pub second: u8,
}

impl DateTime {
    /// Whether every field is in its calendar range.
    #[must_use]
    pub fn is_valid(&self) -> bool {
        (1..=12).contains(&self.month)
            && (1..=31).contains(&self.day)
            && self.hour < 24
            && self.minute < 60
            && self.second < 60
    }
}

/// A decoded 0xB1 reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct DateTimeReply {
    /// Frame header.
    #[serde(flatten)]
    pub header: Header,
    /// The BMS clock.
    pub date_time: DateTime,
}

/// Upper-case hex of INFO, as the frame carries it.
fn upper_hex(bytes: &[u8]) -> String {
    to_hex(bytes).to_ascii_uppercase()
}

/// Text of a fixed field: cut at the first NUL, trailing spaces dropped (leading too when `both_ends`).
fn text(bytes: &[u8], both_ends: bool) -> String {
    let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    let s = String::from_utf8_lossy(bytes.get(..end).unwrap_or_default()).into_owned();
    if both_ends { s.trim_matches(' ').to_owned() } else { s.trim_end_matches(' ').to_owned() }
}

fn halves(info: &[u8]) -> (&[u8], &[u8]) {
    info.split_at(info.len().min(TEXT_FIELD_LEN))
}

/// Decode a 0xC1 reply.
#[must_use]
pub fn decode_version(frame: &Frame) -> VersionReply {
    let (version, rest) = halves(&frame.info);
    let bluetooth = text(rest, false);
    VersionReply {
        header: frame.header,
        lenid: frame.info.len() * 2,
        version: text(version, false),
        bluetooth_name: (!bluetooth.is_empty()).then_some(bluetooth),
        info_hex: upper_hex(&frame.info),
    }
}

/// Decode a 0xC2 reply.
#[must_use]
pub fn decode_product_info(frame: &Frame) -> ProductInfoReply {
    let (bms, pack) = halves(&frame.info);
    ProductInfoReply {
        header: frame.header,
        lenid: frame.info.len() * 2,
        bms_serial: text(bms, true),
        pack_serial: text(pack, true),
        info_hex: upper_hex(&frame.info),
    }
}

fn exact<const N: usize>(info: &[u8]) -> Result<[u8; N], DecodeError> {
    let mut r = Reader::new(info);
    let out = r.array()?;
    r.expect_end()?;
    Ok(out)
}

/// Decode a 0xA6 reply: remaining, full and design capacity in 10 mAh.
pub fn decode_capacity(frame: &Frame) -> Result<CapacityReply, DecodeError> {
    let [r1, r0, f1, f0, d1, d0] = exact(&frame.info)?;
    let ah = |hi, lo| f64::from(u16::from_be_bytes([hi, lo])) / 100.0;
    let (remaining_ah, full_ah, design_ah) = (ah(r1, r0), ah(f1, f0), ah(d1, d0));
    Ok(CapacityReply {
        header: frame.header,
        remaining_ah,
        full_ah,
        design_ah,
        soc_pct: (full_ah > 0.0).then(|| remaining_ah / full_ah * 100.0),
        soh_pct: (design_ah > 0.0).then(|| full_ah / design_ah * 100.0),
    })
}

/// Decode a 0x90 reply.
pub fn decode_pack_count(frame: &Frame) -> Result<PackCountReply, DecodeError> {
    let [pack_count] = exact(&frame.info)?;
    Ok(PackCountReply { header: frame.header, pack_count })
}

/// Decode a 0xB1 reply.
pub fn decode_date_time(frame: &Frame) -> Result<DateTimeReply, DecodeError> {
    let [year, month, day, hour, minute, second] = exact(&frame.info)?;
    let date_time = DateTime { year: 2000 + u16::from(year), month, day, hour, minute, second };
    Ok(DateTimeReply { header: frame.header, date_time })
}

/// A text field padded with spaces (or cut) to exactly 20 characters.
fn field(text: &str) -> Vec<u8> {
    let mut bytes: Vec<u8> = text.bytes().take(TEXT_FIELD_LEN).collect();
    bytes.resize(TEXT_FIELD_LEN, b' ');
    bytes
}

/// Encode a 0xC1 reply (LENID 40, or 80 with a Bluetooth name).
pub fn encode_version(header: Header, version: &str, bluetooth_name: Option<&str>) -> Result<Vec<u8>, DecodeError> {
    let mut info = field(version);
    info.extend(bluetooth_name.map(field).unwrap_or_default());
    encode_frame(header, &info)
}

/// Encode a 0xC2 reply (LENID 40, or 80 with a pack serial).
pub fn encode_product_info(
    header: Header,
    bms_serial: &str,
    pack_serial: Option<&str>,
) -> Result<Vec<u8>, DecodeError> {
    let mut info = field(bms_serial);
    info.extend(pack_serial.map(field).unwrap_or_default());
    encode_frame(header, &info)
}

/// Encode a 0xA6 reply from capacities in Ah (rounded to 10 mAh).
pub fn encode_capacity(
    header: Header,
    remaining_ah: f64,
    full_ah: f64,
    design_ah: f64,
) -> Result<Vec<u8>, DecodeError> {
    let raw = |ah: f64| ((ah * 100.0).round() as u16).to_be_bytes();
    encode_frame(header, &[raw(remaining_ah), raw(full_ah), raw(design_ah)].concat())
}

/// Encode a 0x90 reply.
pub fn encode_pack_count(header: Header, pack_count: u8) -> Result<Vec<u8>, DecodeError> {
    encode_frame(header, &[pack_count])
}

/// Encode a 0xB1 reply.
pub fn encode_date_time(header: Header, t: DateTime) -> Result<Vec<u8>, DecodeError> {
    let year = t.year.saturating_sub(2000).min(255) as u8;
    encode_frame(header, &[year, t.month, t.day, t.hour, t.minute, t.second])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::pace::frame::parse_frame;

    #[test]
    fn the_date_time_example_reads_as_binary_fields() {
        let frame = parse_frame(b"~25004600400C180815051D1FFB10\r").unwrap();
        let t = decode_date_time(&frame).unwrap().date_time;
        assert_eq!((t.year, t.month, t.day, t.hour, t.minute, t.second), (2024, 8, 21, 5, 29, 31));
        assert!(t.is_valid());
    }

    #[test]
    fn a_version_with_a_bluetooth_name_is_split_and_nul_terminated_text_is_cut() {
        let header = Header { ver: 0x25, adr: 1, cid1: 0x46, code: 0 };
        let frame = parse_frame(&encode_version(header, "P16S100A-1812-1.00", Some("BT-01")).unwrap()).unwrap();
        let reply = decode_version(&frame);
        assert_eq!((reply.lenid, reply.version.as_str()), (80, "P16S100A-1812-1.00"));
        assert_eq!(reply.bluetooth_name.as_deref(), Some("BT-01"));
        assert_eq!(text(b"V1.0 \0junk", false), "V1.0");
    }

    #[test]
    fn a_blank_pack_serial_is_empty() {
        let header = Header { ver: 0x25, adr: 1, cid1: 0x46, code: 0 };
        let frame = parse_frame(&encode_product_info(header, "03", Some("")).unwrap()).unwrap();
        let reply = decode_product_info(&frame);
        assert_eq!((reply.bms_serial.as_str(), reply.pack_serial.as_str()), ("03", ""));
    }
}
