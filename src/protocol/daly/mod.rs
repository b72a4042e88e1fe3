//! The Daly A5 frame protocol (`docs/protocols/daly-a5.md`): command codes, host/board addressing, the 13-byte
//! frame and its `Framing` rules, and `decode_capture`, which turns a captured byte stream into typed replies
//! and applies them to the model. Encoders live in `request`, reply types in `response`/`multiframe`, the
//! mapping to the model in `apply`. No I/O here.

pub mod alarms;
mod apply;
mod capture;
pub mod exchange;
mod measurements;
mod multiframe;
mod request;
mod response;
mod settings;

pub use apply::apply;
pub use capture::{check_reply, decode_capture, decode_chunks};
pub use measurements::{CellRange, DalyState, MosfetStatus, Soc, Status, TemperatureRange};
pub use multiframe::{CellVoltages, Temperatures, Text};
pub use request::{Request, SetSoc};
pub use response::{Message, Reply};
pub use settings::{AlarmStatus, Balancing, BatteryMode, MosfetEcho, Rated, SetSocAck};

use super::DecodeError;
use super::deframer::{Framing, Scan};

/// Every A5 frame, request or reply, is this long.
pub const FRAME_LEN: usize = 13;
/// First byte of every frame.
pub const START: u8 = 0xA5;
/// The only value the data length byte (frame byte 3) may hold.
pub const DATA_LEN: u8 = 8;

/// The command (data ID) byte of a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Command {
    /// 0x90: pack voltage, current, SOC.
    Soc,
    /// 0x91: highest and lowest cell voltage.
    CellRange,
    /// 0x92: highest and lowest temperature.
    TemperatureRange,
    /// 0x93: charge/discharge state, MOSFETs, remaining capacity.
    Mosfet,
    /// 0x94: cell and sensor counts, charger/load, digital I/O, cycles.
    Status,
    /// 0x95: cell voltages, three per frame.
    CellVoltages,
    /// 0x96: temperatures, seven per frame.
    Temperatures,
    /// 0x97: cell balancing bitmap.
    Balancing,
    /// 0x98: alarm bits and fault code.
    Alarms,
    /// 0x50: rated capacity and nominal cell voltage.
    Rated,
    /// 0x53: battery type/mode and production date (medium confidence).
    BatteryMode,
    /// 0x57: battery code, five frames of seven characters.
    BatteryCode,
    /// 0x63: identity (model) string, frames of seven characters.
    Identity,
    /// 0xD9: switch the discharge MOSFET (write).
    DischargeMosfet,
    /// 0xDA: switch the charge MOSFET (write).
    ChargeMosfet,
    /// 0x21: set SOC and the clock (write).
    SetSoc,
    /// 0x00: restart the BMS (write).
    Restart,
}

impl Command {
    /// Every command, reads first.
    pub const ALL: [Self; 17] = [
        Self::Soc,
        Self::CellRange,
        Self::TemperatureRange,
        Self::Mosfet,
        Self::Status,
        Self::CellVoltages,
        Self::Temperatures,
        Self::Balancing,
        Self::Alarms,
        Self::Rated,
        Self::BatteryMode,
        Self::BatteryCode,
        Self::Identity,
        Self::DischargeMosfet,
        Self::ChargeMosfet,
        Self::SetSoc,
        Self::Restart,
    ];

    /// The command byte on the wire.
    #[must_use]
    pub const fn code(self) -> u8 {
        match self {
            Self::Soc => 0x90,
            Self::CellRange => 0x91,
            Self::TemperatureRange => 0x92,
            Self::Mosfet => 0x93,
            Self::Status => 0x94,
            Self::CellVoltages => 0x95,
            Self::Temperatures => 0x96,
            Self::Balancing => 0x97,
            Self::Alarms => 0x98,
            Self::Rated => 0x50,
            Self::BatteryMode => 0x53,
            Self::BatteryCode => 0x57,
            Self::Identity => 0x63,
            Self::DischargeMosfet => 0xD9,
            Self::ChargeMosfet => 0xDA,
            Self::SetSoc => 0x21,
            Self::Restart => 0x00,
        }
    }

    /// The command with this wire byte, if it is one this codec knows.
    #[must_use]
    pub fn from_code(code: u8) -> Option<Self> {
        Self::ALL.into_iter().find(|c| c.code() == code)
    }

    /// Whether the command changes the BMS (never sent by a read-only exporter or a probe).
    #[must_use]
    pub const fn is_write(self) -> bool {
        matches!(self, Self::DischargeMosfet | Self::ChargeMosfet | Self::SetSoc | Self::Restart)
    }

    /// How many reply frames the board sends (`docs/protocols/daly-a5.md#multi-frame-replies`): with host 0x80 a `0x95`
    /// reply always has 16 frames and a `0x96` reply 3; otherwise only the frames that carry data.
    #[must_use]
    pub fn reply_frame_count(self, cell_count: u16, sensor_count: u16, address: Address) -> usize {
        let uart = matches!(address, Address::Uart);
        match self {
            Self::CellVoltages if uart => multiframe::CELL_FRAMES,
            Self::CellVoltages => usize::from(cell_count).div_ceil(3).clamp(1, multiframe::CELL_FRAMES),
            Self::Temperatures if uart => multiframe::TEMPERATURE_FRAMES,
            Self::Temperatures => usize::from(sensor_count).div_ceil(7).clamp(1, multiframe::TEMPERATURE_FRAMES),
            Self::BatteryCode => multiframe::BATTERY_CODE_FRAMES,
            // The one public capture (mpp-solar #113) has two frames; longer strings may use more.
            Self::Identity => 2,
            _ => 1,
        }
    }
}

/// Who a request is addressed from/to: the host address byte and the board that answers
/// (`docs/protocols/daly-a5.md#addressing`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Address {
    /// Host 0x40 ("upper computer"), board 1: the RS485 default. On the wire identical to `Board(1)`.
    Rs485,
    /// Host 0x80 ("Bluetooth app"), board 1: the UART/BLE default; 0x95/0x96 then send every frame.
    Uart,
    /// Board `n` (1–16) on a shared RS485 bus: host 0x40 + n − 1; values outside 1–16 are clamped.
    Board(u8),
}

impl Address {
    /// Highest board number a host address can name (0x40–0x4F).
    pub const MAX_BOARD: u8 = 16;

    /// The host address byte (request frame byte 1).
    #[must_use]
    pub fn host_byte(self) -> u8 {
        match self {
            Self::Rs485 => 0x40,
            Self::Uart => 0x80,
            Self::Board(n) => 0x40 + (n.clamp(1, Self::MAX_BOARD) - 1),
        }
    }

    /// The board number the reply carries in frame byte 1.
    #[must_use]
    pub fn reply_board(self) -> u8 {
        match self {
            Self::Rs485 | Self::Uart => 1,
            Self::Board(n) => n.clamp(1, Self::MAX_BOARD),
        }
    }

    /// The address a request's host byte names (0x40 → `Rs485`, 0x41–0x4F → `Board`, 0x80 → `Uart`).
    #[must_use]
    pub fn from_host_byte(byte: u8) -> Option<Self> {
        match byte {
            0x40 => Some(Self::Rs485),
            0x41..=0x4F => Some(Self::Board(byte - 0x3F)),
            0x80 => Some(Self::Uart),
            _ => None,
        }
    }
}

/// Whether `byte` in frame byte 1 is a host address, i.e. the frame is a request, not a reply
/// (`docs/protocols/daly-a5.md#addressing`).
#[must_use]
pub fn is_host_address(byte: u8) -> bool {
    matches!(byte, 0x20 | 0x40..=0x4F | 0x80)
}

/// What fills the reserved data bytes of a read request (`docs/protocols/daly-a5.md#frame-layout`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Filler {
    /// 0x00: the protocol sheet's value; fine over BLE.
    #[default]
    Zero,
    /// 0xAA: fewer lost requests on wires, because the BMS UART resynchronises on the edges.
    Aa,
}

impl Filler {
    /// The filler byte.
    #[must_use]
    pub const fn byte(self) -> u8 {
        match self {
            Self::Zero => 0x00,
            Self::Aa => 0xAA,
        }
    }
}

/// The A5 checksum: low 8 bits of the plain sum of `bytes`.
#[must_use]
pub fn checksum(bytes: &[u8]) -> u8 {
    bytes.iter().fold(0u8, |sum, &b| sum.wrapping_add(b))
}

/// One checked 13-byte frame: address byte (host address in a request, board number in a reply), command and
/// data bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Frame {
    /// Frame byte 1.
    pub address: u8,
    /// Frame byte 2.
    pub command: u8,
    /// Frame bytes 4–11.
    pub data: [u8; 8],
}

impl Frame {
    /// Check start byte, length byte and checksum of exactly 13 bytes.
    pub fn parse(bytes: &[u8]) -> Result<Self, DecodeError> {
        let frame: &[u8; FRAME_LEN] = match bytes.len() {
            n if n < FRAME_LEN => return Err(DecodeError::Truncated { have: n, need: FRAME_LEN }),
            n if n > FRAME_LEN => return Err(DecodeError::Oversize { declared: FRAME_LEN, actual: n }),
            _ => bytes.try_into().map_err(|_| DecodeError::Truncated { have: bytes.len(), need: FRAME_LEN })?,
        };
        let [start, address, command, len, data @ .., received] = *frame;
        if start != START {
            return Err(DecodeError::BadStart { expected: START, found: start });
        }
        if len != DATA_LEN {
            return Err(DecodeError::BadLength { expected: DATA_LEN, found: len });
        }
        let computed = checksum(&[start, address, command, len]).wrapping_add(checksum(&data));
        if computed != received {
            return Err(DecodeError::Checksum { computed, received });
        }
        Ok(Self { address, command, data })
    }

    /// The 13 bytes of this frame, checksum included.
    #[must_use]
    pub fn encode(&self) -> [u8; FRAME_LEN] {
        let [d0, d1, d2, d3, d4, d5, d6, d7] = self.data;
        let head = [START, self.address, self.command, DATA_LEN];
        let sum = checksum(&head).wrapping_add(checksum(&self.data));
        [START, self.address, self.command, DATA_LEN, d0, d1, d2, d3, d4, d5, d6, d7, sum]
    }
}

/// The A5 framing rules for [`crate::protocol::deframer::Deframer`]: fixed 13-byte frames starting 0xA5 with
/// length byte 0x08 and an additive checksum; frames whose byte 1 is a host address are echoes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct A5Framing;

impl Framing for A5Framing {
    fn is_start(&self, byte: u8) -> bool {
        byte == START
    }

    fn scan(&self, buf: &[u8]) -> Scan {
        // The length byte is decidable after four bytes; rejecting early does not depend on chunking.
        if let Some(&len) = buf.get(3)
            && len != DATA_LEN
        {
            return Scan::Invalid(DecodeError::BadLength { expected: DATA_LEN, found: len });
        }
        let Some(frame) = buf.get(..FRAME_LEN) else { return Scan::Incomplete { need: FRAME_LEN } };
        match Frame::parse(frame) {
            Ok(f) if is_host_address(f.address) => Scan::Echo { len: FRAME_LEN },
            Ok(_) => Scan::Frame { len: FRAME_LEN },
            Err(error) => Scan::Invalid(error),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_codes_round_trip_and_are_unique() {
        for c in Command::ALL {
            assert_eq!(Command::from_code(c.code()), Some(c));
        }
        assert_eq!(Command::from_code(0x5A), None);
    }

    #[test]
    fn board_addresses_follow_the_host_plus_board_minus_one_rule() {
        assert_eq!(Address::Board(1).host_byte(), 0x40);
        assert_eq!(Address::Board(2).host_byte(), 0x41);
        assert_eq!(Address::Board(16).host_byte(), 0x4F);
        assert_eq!(Address::Board(3).reply_board(), 3);
        assert_eq!(Address::Uart.host_byte(), 0x80);
        assert_eq!(Address::Uart.reply_board(), 1);
        assert_eq!(Address::from_host_byte(0x42), Some(Address::Board(3)));
        assert_eq!(Address::from_host_byte(0x20), None);
    }

    #[test]
    fn frame_counts_depend_on_the_host_address() {
        assert_eq!(Command::CellVoltages.reply_frame_count(14, 1, Address::Rs485), 5);
        assert_eq!(Command::CellVoltages.reply_frame_count(14, 1, Address::Uart), 16);
        assert_eq!(Command::Temperatures.reply_frame_count(16, 8, Address::Board(2)), 2);
        assert_eq!(Command::Temperatures.reply_frame_count(16, 1, Address::Uart), 3);
        assert_eq!(Command::BatteryCode.reply_frame_count(16, 1, Address::Rs485), 5);
        assert_eq!(Command::Soc.reply_frame_count(16, 1, Address::Uart), 1);
    }

    #[test]
    fn framing_rejects_a_bad_length_byte_after_four_bytes() {
        assert_eq!(
            A5Framing.scan(&[0xA5, 0x01, 0x90, 0x07]),
            Scan::Invalid(DecodeError::BadLength { expected: 8, found: 7 })
        );
        assert_eq!(A5Framing.scan(&[0xA5, 0x01, 0x90, 0x08]), Scan::Incomplete { need: 13 });
    }

    #[test]
    fn framing_reports_a_request_as_an_echo() {
        let request = [0xA5, 0x40, 0x90, 0x08, 0, 0, 0, 0, 0, 0, 0, 0, 0x7D];
        assert_eq!(A5Framing.scan(&request), Scan::Echo { len: 13 });
    }

    #[test]
    fn frame_parse_names_the_first_fault() {
        let mut f = Frame { address: 1, command: 0x90, data: [2, 0x3A, 0, 0, 0x75, 0x30, 1, 0xED] }.encode();
        assert_eq!(f[12], 0x0D, "checksum example of docs/protocols/daly-a5.md#checksum");
        f[12] = 0x0E;
        assert_eq!(Frame::parse(&f), Err(DecodeError::Checksum { computed: 0x0D, received: 0x0E }));
        assert_eq!(Frame::parse(&f[..9]), Err(DecodeError::Truncated { have: 9, need: 13 }));
        f[0] = 0x5A;
        assert_eq!(Frame::parse(&f), Err(DecodeError::BadStart { expected: 0xA5, found: 0x5A }));
    }
}
