//! The Pace ASCII envelope (`docs/protocols/pace.md#frame-layout`): `~`, hex-text header, LENGTH with its LCHKSUM
//! nibble, hex INFO, the 16-bit CHKSUM and CR — building frames, validating them in the spec's order, and
//! finding them in a stream ([`PaceFraming`]). Nothing here knows what INFO means.

use serde::{Serialize, Serializer};

use crate::protocol::deframer::{Framing, Scan};
use crate::protocol::{DecodeError, hex_value, to_hex};

/// Start of frame, sent raw.
pub const SOI: u8 = b'~';
/// End of frame (carriage return), sent raw.
pub const EOI: u8 = b'\r';
/// Characters of a frame without INFO: SOI, VER, ADR, CID1, CID2/RTN, LENGTH, CHKSUM, EOI.
pub const MIN_FRAME_LEN: usize = 18;
/// Largest LENID the 12-bit field can carry, in characters.
pub const MAX_LENID: usize = 0xFFF;
/// Characters before INFO (SOI through LENGTH).
const HEADER_LEN: usize = 13;

/// The four header bytes of a frame; the fourth is CID2 in a request and RTN in a reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Header {
    /// Protocol version (0x25 Pace, 0x20 Pylon family), shown as two hex digits.
    #[serde(serialize_with = "hex_byte")]
    pub ver: u8,
    /// Address of the answering BMS (not necessarily the one asked, `docs/protocols/pace.md#addresses-and-packs`).
    pub adr: u8,
    /// Device type (0x46 battery), shown as two hex digits.
    #[serde(serialize_with = "hex_byte")]
    pub cid1: u8,
    /// CID2 of a request, RTN of a reply.
    #[serde(rename = "rtn")]
    pub code: u8,
}

#[allow(clippy::trivially_copy_pass_by_ref)] // serde's `serialize_with` passes a reference
fn hex_byte<S: Serializer>(value: &u8, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(&format!("{value:02X}"))
}

/// A frame that passed every envelope check (`docs/protocols/pace.md#validation-order`, steps 1–8), with INFO converted
/// to bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// The header bytes.
    pub header: Header,
    /// INFO as bytes (LENID / 2 of them).
    pub info: Vec<u8>,
}

/// The LCHKSUM nibble for a LENID: two's complement of the nibble sum, in 4 bits
/// (`docs/protocols/pace.md#length-checksum`).
#[must_use]
pub fn lchksum(lenid: u16) -> u8 {
    let sum = (lenid >> 8 & 0xF) + (lenid >> 4 & 0xF) + (lenid & 0xF);
    ((!sum).wrapping_add(1) & 0xF) as u8
}

/// The CHKSUM of the characters between SOI and CHKSUM: two's complement of their 16-bit sum
/// (`docs/protocols/pace.md#frame-checksum`).
#[must_use]
pub fn chksum(body: &[u8]) -> u16 {
    let sum = body.iter().fold(0u16, |acc, &c| acc.wrapping_add(u16::from(c)));
    (!sum).wrapping_add(1)
}

/// Build a complete frame (upper-case hex, with SOI and CR) from a header and INFO bytes.
pub fn encode_frame(header: Header, info: &[u8]) -> Result<Vec<u8>, DecodeError> {
    let lenid = info.len() * 2;
    if lenid > MAX_LENID {
        return Err(DecodeError::OutOfRange { field: "LENID", value: u32::try_from(lenid).unwrap_or(u32::MAX) });
    }
    let lenid = lenid as u16;
    let length = u16::from(lchksum(lenid)) << 12 | lenid;
    let mut text = format!("{:02X}{:02X}{:02X}{:02X}{length:04X}", header.ver, header.adr, header.cid1, header.code);
    text.push_str(&to_hex(info).to_ascii_uppercase());
    let sum = chksum(text.as_bytes());
    let mut frame = Vec::with_capacity(text.len() + 6);
    frame.push(SOI);
    frame.extend_from_slice(text.as_bytes());
    frame.extend_from_slice(format!("{sum:04X}").as_bytes());
    frame.push(EOI);
    Ok(frame)
}

/// Validate a whole frame in the order of `docs/protocols/pace.md#validation-order` (steps 1–8) and convert its INFO;
/// RTN is not checked here.
pub fn parse_frame(bytes: &[u8]) -> Result<Frame, DecodeError> {
    let Some(&first) = bytes.first() else { return Err(DecodeError::Truncated { have: 0, need: MIN_FRAME_LEN }) };
    if first != SOI {
        return Err(DecodeError::BadStart { expected: SOI, found: first });
    }
    match bytes.last() {
        Some(&EOI) => {}
        Some(&found) => return Err(DecodeError::MissingEnd { expected: EOI, found }),
        None => return Err(DecodeError::Truncated { have: 0, need: MIN_FRAME_LEN }),
    }
    if bytes.len() < MIN_FRAME_LEN {
        return Err(DecodeError::Truncated { have: bytes.len(), need: MIN_FRAME_LEN });
    }
    let body = bytes.get(1..bytes.len() - 1).unwrap_or_default();
    let digits =
        body.iter().enumerate().map(|(i, &c)| hex_value(c, i + 1)).collect::<Result<Vec<u8>, DecodeError>>()?;
    // `digits` holds every character from VER to CHKSUM: at least 16 of them.
    let nibbles =
        |from: usize, count: usize| digits.iter().skip(from).take(count).fold(0u16, |acc, &d| acc << 4 | u16::from(d));
    let received_lchksum = nibbles(8, 1) as u8;
    let lenid = nibbles(9, 3);
    let computed_lchksum = lchksum(lenid);
    if computed_lchksum != received_lchksum {
        return Err(DecodeError::LengthChecksum { computed: computed_lchksum, received: received_lchksum, lenid });
    }
    let info_len = bytes.len() - MIN_FRAME_LEN;
    let declared = usize::from(lenid);
    if info_len < declared {
        return Err(DecodeError::Truncated { have: bytes.len(), need: declared + MIN_FRAME_LEN });
    }
    if info_len > declared {
        return Err(DecodeError::Oversize { declared: declared + MIN_FRAME_LEN, actual: bytes.len() });
    }
    if lenid % 2 != 0 {
        return Err(DecodeError::OddLength { lenid });
    }
    let sum_end = HEADER_LEN - 1 + declared;
    let computed = chksum(body.get(..sum_end).unwrap_or_default());
    let received = nibbles(sum_end, 4);
    if computed != received {
        return Err(DecodeError::Checksum16 { name: "CHKSUM", computed, received });
    }
    let byte_at = |i: usize| nibbles(i, 2) as u8;
    let header = Header { ver: byte_at(0), adr: byte_at(2), cid1: byte_at(4), code: byte_at(6) };
    let info = (0..declared / 2).map(|i| byte_at(HEADER_LEN - 1 + 2 * i)).collect();
    Ok(Frame { header, info })
}

/// Parse a reply frame and refuse it unless RTN is 0 (`docs/protocols/pace.md#validation-order`, step 9).
pub fn parse_reply_frame(bytes: &[u8]) -> Result<Frame, DecodeError> {
    let frame = parse_frame(bytes)?;
    if frame.header.code != 0 {
        return Err(DecodeError::ReturnCode { rtn: frame.header.code });
    }
    Ok(frame)
}

/// Pace framing for the [`Deframer`](crate::protocol::deframer::Deframer): length from LENID, full validation,
/// and our own request recognised as an echo (`docs/protocols/pace.md#validation-order`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PaceFraming {
    /// The request frame we sent, if any; a received copy of it is an RS485 echo.
    pub request: Option<Vec<u8>>,
}

impl PaceFraming {
    /// Framing that treats a received copy of `request` as an echo.
    #[must_use]
    pub fn with_request(request: &[u8]) -> Self {
        Self { request: Some(request.to_vec()) }
    }
}

impl Framing for PaceFraming {
    fn is_start(&self, byte: u8) -> bool {
        byte == SOI
    }

    fn scan(&self, buf: &[u8]) -> Scan {
        let lenid_digits = buf.get(10..HEADER_LEN);
        let Some(lenid_digits) = lenid_digits else {
            return early_failure(buf, buf.len(), MIN_FRAME_LEN).unwrap_or(Scan::Incomplete { need: HEADER_LEN });
        };
        let mut lenid = 0usize;
        for (i, &c) in lenid_digits.iter().enumerate() {
            match hex_value(c, 10 + i) {
                Ok(d) => lenid = lenid << 4 | usize::from(d),
                Err(error) => return Scan::Invalid(error),
            }
        }
        let total = MIN_FRAME_LEN + lenid;
        // A CR or `~` inside the frame means it was cut short: reject now instead of waiting for bytes that
        // belong to the next frame.
        if let Some(scan) = early_failure(buf, total - 1, total) {
            return scan;
        }
        let Some(frame) = buf.get(..total) else { return Scan::Incomplete { need: total } };
        match parse_frame(frame) {
            Err(error) => Scan::Invalid(error),
            Ok(_) if self.request.as_deref() == Some(frame) => Scan::Echo { len: total },
            Ok(_) => Scan::Frame { len: total },
        }
    }
}

/// The rejection for a non-hex character among `buf[1..end]`, if there is one; a CR there means a frame of
/// `need` bytes was cut short.
fn early_failure(buf: &[u8], end: usize, need: usize) -> Option<Scan> {
    let inner = buf.get(1..end.min(buf.len())).unwrap_or_default();
    let offset = inner.iter().position(|c| !c.is_ascii_hexdigit())? + 1;
    let found = buf.get(offset).copied().unwrap_or_default();
    Some(Scan::Invalid(if found == EOI {
        DecodeError::Truncated { have: offset + 1, need }
    } else {
        DecodeError::NonHex { offset, found }
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lchksum_wraps_to_zero_when_the_nibble_sum_is_a_multiple_of_sixteen() {
        for (lenid, expected) in
            [(0x000, 0x0), (0x002, 0xE), (0x028, 0x6), (0x04C, 0x0), (0x050, 0xB), (0x07A, 0xF), (0x0F0, 0x1)]
        {
            assert_eq!(lchksum(lenid), expected, "LENID {lenid:#05x}");
        }
        assert_eq!(lchksum(0x118), 0x6);
    }

    #[test]
    fn chksum_matches_the_textbook_example() {
        assert_eq!(chksum(b"1203400356ABCEFE"), 0xFC72);
        assert_eq!(chksum(b"25014642E002FF"), 0xFD05);
        assert_eq!(chksum(b""), 0);
    }

    #[test]
    fn encoded_frames_are_zero_padded_upper_case_and_parse_back() {
        let header = Header { ver: 0x25, adr: 0, cid1: 0x46, code: 0 };
        let frame = encode_frame(header, &[0x01]).unwrap();
        assert_eq!(frame, b"~25004600E00201FD37\r");
        assert_eq!(parse_frame(&frame), Ok(Frame { header, info: vec![1] }));
        assert!(encode_frame(header, &[0; 2048]).is_err());
    }

    #[test]
    fn lower_case_hex_is_accepted() {
        let frame = parse_frame(b"~25004600400c183c286a2710faae\r").unwrap();
        assert_eq!(frame.info, [0x18, 0x3C, 0x28, 0x6A, 0x27, 0x10]);
    }

    #[test]
    fn validation_follows_the_spec_order() {
        let kind = |f: &[u8]| parse_frame(f).unwrap_err().kind();
        assert_eq!(kind(b"x25004600E00201FD37\r"), "bad_soi");
        assert_eq!(kind(b"~25004600E00201FD37"), "missing_eoi");
        assert_eq!(kind(b"~2500\r"), "truncated");
        assert_eq!(kind(b"~25004600E00201FD3G\r"), "non_hex");
        assert_eq!(kind(b"~25004600F00201FD37\r"), "lchksum_mismatch");
        assert_eq!(kind(b"~25004600E00201FD\r"), "truncated");
        assert_eq!(kind(b"~25004600E0020100FD37\r"), "oversize");
        assert_eq!(kind(b"~25004600D0030FFFD37\r"), "odd_lenid");
        assert_eq!(kind(b"~25004600E00201FD38\r"), "chksum_mismatch");
        assert_eq!(parse_reply_frame(b"~25004609E00204FD2B\r"), Err(DecodeError::ReturnCode { rtn: 9 }));
    }

    #[test]
    fn scanning_waits_for_the_declared_length_and_flags_an_echo() {
        let request = b"~25014642E002FFFD05\r";
        let framing = PaceFraming::with_request(request);
        assert_eq!(framing.scan(&request[..5]), Scan::Incomplete { need: 13 });
        assert_eq!(framing.scan(&request[..15]), Scan::Incomplete { need: 20 });
        assert_eq!(framing.scan(request), Scan::Echo { len: 20 });
        assert_eq!(PaceFraming::default().scan(request), Scan::Frame { len: 20 });
        assert!(matches!(framing.scan(b"~25014642E0ZZ"), Scan::Invalid(DecodeError::NonHex { offset: 11, .. })));
        assert!(matches!(framing.scan(b"~25014642E002F\r~"), Scan::Invalid(DecodeError::Truncated { .. })));
    }
}
