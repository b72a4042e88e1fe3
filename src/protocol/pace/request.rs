//! Pace read requests (`docs/protocols/pace.md#frame-layout`): the typed [`Request`], its encoder, and its decoder for
//! round trips and for reading captured requests. Only the read commands the exporter uses exist here, so a
//! write command cannot be built by mistake.

use serde::Serialize;

use super::frame::{Header, encode_frame, parse_frame};
use crate::protocol::DecodeError;

/// VER sent by default (Pace V2.5).
pub const VER_PACE: u8 = 0x25;
/// VER of the Pylon-derived firmwares (`docs/protocols/pace.md#ver-0x20-pylon`).
pub const VER_PYLON: u8 = 0x20;
/// CID1 sent by default (LiFePO4 battery).
pub const CID1_BATTERY: u8 = 0x46;
/// The COMMAND byte asking the master for every pack (`docs/protocols/pace.md#addresses-and-packs`).
pub const ALL_PACKS: u8 = 0xFF;
/// The highest pack number: a master relays up to 16 packs (an all-packs reply numbers its blocks 1..=16), and
/// COMMAND `0x01`–`0x10` asks it for one of them.
pub const MAX_PACK: u8 = 16;

/// A read command and, for 0x42/0x44, its COMMAND byte (`0xFF` all packs, `0x01`–`0x10` one pack, or `0x00`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Command {
    /// 0x42 pack analog values.
    Analog(u8),
    /// 0x44 warnings, protections and status.
    Status(u8),
    /// 0xC1 software version.
    SoftwareVersion,
    /// 0xC2 product information (serial numbers).
    ProductInfo,
    /// 0xA6 pack capacity.
    PackCapacity,
    /// 0x90 number of packs.
    PackCount,
    /// 0xB1 BMS date and time.
    DateTime,
}

impl Command {
    /// The CID2 code of this command.
    #[must_use]
    pub fn cid2(self) -> u8 {
        match self {
            Self::Analog(_) => 0x42,
            Self::Status(_) => 0x44,
            Self::SoftwareVersion => 0xC1,
            Self::ProductInfo => 0xC2,
            Self::PackCapacity => 0xA6,
            Self::PackCount => 0x90,
            Self::DateTime => 0xB1,
        }
    }

    /// The COMMAND byte of a 0x42/0x44 request.
    #[must_use]
    pub fn pack_command(self) -> Option<u8> {
        match self {
            Self::Analog(c) | Self::Status(c) => Some(c),
            _ => None,
        }
    }

    /// Whether the request asks the master for every pack (COMMAND `0xFF`).
    #[must_use]
    pub fn is_all_packs(self) -> bool {
        self.pack_command() == Some(ALL_PACKS)
    }
}

/// One request frame's content.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Request {
    /// VER (default 0x25).
    pub ver: u8,
    /// ADR: the DIP address of the BMS asked.
    pub adr: u8,
    /// CID1 (default 0x46).
    pub cid1: u8,
    /// What is asked.
    pub command: Command,
}

impl Request {
    /// A request with the default VER 0x25 and CID1 0x46.
    #[must_use]
    pub fn new(adr: u8, command: Command) -> Self {
        Self { ver: VER_PACE, adr, cid1: CID1_BATTERY, command }
    }

    /// The same request with another VER.
    #[must_use]
    pub fn with_ver(self, ver: u8) -> Self {
        Self { ver, ..self }
    }

    /// The same request with another CID1.
    #[must_use]
    pub fn with_cid1(self, cid1: u8) -> Self {
        Self { cid1, ..self }
    }

    /// The complete request frame, `~` to CR.
    #[must_use]
    pub fn encode(&self) -> Vec<u8> {
        let header = Header { ver: self.ver, adr: self.adr, cid1: self.cid1, code: self.command.cid2() };
        let info: Vec<u8> = self.command.pack_command().into_iter().collect();
        // At most one INFO byte: far below the LENID limit, so encoding cannot fail.
        encode_frame(header, &info).unwrap_or_default()
    }

    /// Parse a request frame (a capture's request, or our own encoding).
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        let frame = parse_frame(bytes)?;
        let Header { ver, adr, cid1, code } = frame.header;
        let byte = match frame.info.as_slice() {
            [] => None,
            [byte] => Some(*byte),
            more => return Err(DecodeError::LengthMismatch { declared: 1, actual: more.len() }),
        };
        let command = match (code, byte) {
            (0x42, Some(c)) => Command::Analog(c),
            (0x44, Some(c)) => Command::Status(c),
            (0x42 | 0x44, None) => return Err(DecodeError::LengthMismatch { declared: 1, actual: 0 }),
            (_, Some(_)) if [0xC1, 0xC2, 0xA6, 0x90, 0xB1].contains(&code) => {
                return Err(DecodeError::LengthMismatch { declared: 0, actual: 1 });
            }
            (0xC1, None) => Command::SoftwareVersion,
            (0xC2, None) => Command::ProductInfo,
            (0xA6, None) => Command::PackCapacity,
            (0x90, None) => Command::PackCount,
            (0xB1, None) => Command::DateTime,
            (command, _) => return Err(DecodeError::UnknownCommand { command }),
        };
        Ok(Self { ver, adr, cid1, command })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_made_requests_of_the_spec_are_reproduced_byte_for_byte() {
        let table: [(Request, &[u8]); 10] = [
            (Request::new(1, Command::Analog(ALL_PACKS)), b"~25014642E002FFFD05\r"),
            (Request::new(1, Command::Analog(1)), b"~25014642E00201FD30\r"),
            (Request::new(2, Command::Analog(2)), b"~25024642E00202FD2E\r"),
            (Request::new(0, Command::Analog(0)), b"~25004642E00200FD32\r"),
            (Request::new(1, Command::Status(ALL_PACKS)), b"~25014644E002FFFD03\r"),
            (Request::new(1, Command::Status(1)), b"~25014644E00201FD2E\r"),
            (Request::new(1, Command::SoftwareVersion), b"~250146C10000FD9A\r"),
            (Request::new(1, Command::ProductInfo), b"~250146C20000FD99\r"),
            (Request::new(1, Command::PackCapacity), b"~250146A60000FD97\r"),
            (Request::new(1, Command::PackCount), b"~250146900000FDA5\r"),
        ];
        for (request, frame) in table {
            assert_eq!(request.encode(), frame, "{request:?}");
            assert_eq!(Request::decode(frame), Ok(request));
        }
    }

    #[test]
    fn write_commands_and_misplaced_info_are_refused() {
        assert_eq!(Request::decode(b"~2500469BE00201FD1C\r"), Err(DecodeError::UnknownCommand { command: 0x9B }));
        let analog_without_info = Request::new(1, Command::PackCount).encode();
        let analog_without_info = String::from_utf8(analog_without_info).unwrap().replace("4690", "4642");
        assert!(Request::decode(analog_without_info.as_bytes()).is_err());
    }

    #[test]
    fn the_pylon_version_is_sent_when_configured() {
        let request = Request::new(1, Command::Analog(1)).with_ver(VER_PYLON);
        assert_eq!(request.encode(), b"~20014642E00201FD35\r");
    }
}
