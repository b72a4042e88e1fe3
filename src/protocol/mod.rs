//! Pure protocol codecs: bytes ⇄ typed messages, and typed messages → [`crate::model`].
//!
//! Nothing in this module tree performs I/O, reads a clock or logs: decoders take bytes and return values or a
//! [`DecodeError`], so the same code serves the poller, the `decode` command, the simulator, the tests and the
//! fuzzers. One folder per protocol family; [`deframer`] finds frame edges in a stream for all of them.

#![warn(clippy::indexing_slicing)]

pub mod daly;
pub mod daly_modbus;
pub mod deframer;
mod error;
pub mod exchange;
pub mod pace;
pub mod plausible;
pub mod reader;
pub mod sinowealth;
pub mod wire_log;

use std::fmt;
use std::str::FromStr;

use serde::Serialize;

pub use error::{DecodeError, rtn_name};
pub use exchange::{Exchange, Outgoing, Progress};

use crate::model::{CurrentSign, DeviceSnapshot};

/// The wire protocols bms_exporter speaks (each described in `docs/protocols/`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Protocol {
    /// Daly 13-byte `0xA5` frames.
    Daly,
    /// Daly Modbus-style variants ("D2" and "p81").
    DalyModbus,
    /// Daly boards with a Sinowealth chip (BMStool protocol).
    Sinowealth,
    /// Pace ASCII protocol (VER 0x25, tolerant of 0x20).
    Pace,
}

impl Protocol {
    /// Every protocol, in documentation order.
    pub const ALL: [Self; 4] = [Self::Daly, Self::DalyModbus, Self::Sinowealth, Self::Pace];

    /// The name used in the CLI, the config and the `protocol` label.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Daly => "daly",
            Self::DalyModbus => "daly-modbus",
            Self::Sinowealth => "sinowealth",
            Self::Pace => "pace",
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The error for a protocol name that is not one of [`Protocol::ALL`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown protocol {0:?}: expected one of daly, daly-modbus, sinowealth, pace")]
pub struct UnknownProtocol(pub String);

impl FromStr for Protocol {
    type Err = UnknownProtocol;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL.into_iter().find(|p| p.as_str() == s).ok_or_else(|| UnknownProtocol(s.to_owned()))
    }
}

/// What a decoder may need to know that the bytes alone do not say.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DecodeOptions {
    /// How to turn the wire current into the model's charge-positive current (Daly).
    pub current_sign: CurrentSign,
    /// Cell count learned from an earlier reply (Daly 0x94), if any.
    pub cell_count: Option<u16>,
    /// Temperature sensor count learned from an earlier reply (Daly 0x94), if any.
    pub temperature_sensor_count: Option<u16>,
}

/// A frame a decoder skipped over while salvaging the rest of a capture.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Rejection {
    /// Stable error kind ([`DecodeError::kind`]).
    pub kind: &'static str,
    /// Human-readable reason.
    pub message: String,
}

impl From<DecodeError> for Rejection {
    fn from(error: DecodeError) -> Self {
        Self { kind: error.kind(), message: error.to_string() }
    }
}

/// Everything decoded from one captured byte stream: the typed replies as the protocol defines them, and the
/// same information applied to the protocol-neutral model.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Capture<R> {
    /// Which protocol decoded it.
    pub protocol: Protocol,
    /// Typed replies, in stream order.
    pub replies: Vec<R>,
    /// Frames rejected on the way (bad checksum, echo, cut frame…), in stream order.
    pub rejected: Vec<Rejection>,
    /// Bytes skipped while looking for frames.
    pub skipped_bytes: u64,
    /// The replies applied to the model.
    pub device: DeviceSnapshot,
}

/// Parse hex text into bytes, ignoring white space, `:` and `-` separators and an optional `0x` prefix per
/// group; used by the CLI and the tests to read captures as people paste them.
pub fn parse_hex(text: &str) -> Result<Vec<u8>, DecodeError> {
    let mut digits = Vec::with_capacity(text.len());
    for group in text.split(|c: char| c.is_ascii_whitespace() || c == ':' || c == '-' || c == ',') {
        let group = group.strip_prefix("0x").or_else(|| group.strip_prefix("0X")).unwrap_or(group);
        digits.extend(group.bytes());
    }
    // Name a bad character before complaining about the count: `hello` is not hex, not "one digit short".
    for (offset, &digit) in digits.iter().enumerate() {
        hex_value(digit, offset)?;
    }
    if digits.len() % 2 != 0 {
        return Err(DecodeError::Truncated { have: digits.len(), need: digits.len() + 1 });
    }
    digits
        .chunks_exact(2)
        .enumerate()
        .map(|(i, pair)| match pair {
            [hi, lo] => Ok(hex_value(*hi, 2 * i)? << 4 | hex_value(*lo, 2 * i + 1)?),
            _ => Err(DecodeError::Truncated { have: pair.len(), need: 2 }),
        })
        .collect()
}

/// The value of one ASCII hex digit (either case); `offset` names it in the error.
pub fn hex_value(digit: u8, offset: usize) -> Result<u8, DecodeError> {
    match digit {
        b'0'..=b'9' => Ok(digit - b'0'),
        b'a'..=b'f' => Ok(digit - b'a' + 10),
        b'A'..=b'F' => Ok(digit - b'A' + 10),
        found => Err(DecodeError::NonHex { offset, found }),
    }
}

/// Lower-case hex of `bytes`, for logs and JSON.
#[must_use]
pub fn to_hex(bytes: &[u8]) -> String {
    use fmt::Write as _;
    bytes.iter().fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn protocol_names_round_trip() {
        for p in Protocol::ALL {
            assert_eq!(p.as_str().parse::<Protocol>(), Ok(p));
        }
        assert!("modbus".parse::<Protocol>().unwrap_err().to_string().contains("expected one of"));
    }

    #[test]
    fn hex_accepts_separators_and_rejects_odd_or_bad_digits() {
        assert_eq!(parse_hex("a5 01:90-0x08"), Ok(vec![0xA5, 0x01, 0x90, 0x08]));
        assert_eq!(to_hex(&[0xA5, 0x0F]), "a50f");
        assert_eq!(parse_hex("a5f"), Err(DecodeError::Truncated { have: 3, need: 4 }));
        assert_eq!(parse_hex("hello"), Err(DecodeError::NonHex { offset: 0, found: b'h' }));
        assert_eq!(parse_hex("a5zz"), Err(DecodeError::NonHex { offset: 2, found: b'z' }));
    }
}
