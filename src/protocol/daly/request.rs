//! A5 requests (`docs/protocols/daly-a5.md#frame-layout`): building the 13 bytes of every read and write command, and
//! parsing a request back (for round-trip checks, echo recognition and the simulator).

use super::{Address, Command, DecodeError, Filler, Frame};

/// A request frame: which command, to whom, with which data bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Request {
    /// The command.
    pub command: Command,
    /// Host address (and so the board that must answer).
    pub address: Address,
    /// Data bytes 0–7: filler for reads, values for writes.
    pub data: [u8; 8],
}

/// The values a `0x21` request carries (`docs/protocols/daly-a5.md#write-commands`): clock fields and the SOC to set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SetSoc {
    /// Year minus 2000 (python-daly-bms sends zeros for every clock field).
    pub year: u8,
    /// Month 1–12.
    pub month: u8,
    /// Day 1–31.
    pub day: u8,
    /// Hour 0–23.
    pub hour: u8,
    /// Minute 0–59.
    pub minute: u8,
    /// Second 0–59.
    pub second: u8,
    /// SOC in tenths of a percent, 0–1000.
    pub soc_permille: u16,
}

impl Request {
    /// A read request (any command; write commands get the filler too, so use the write constructors).
    #[must_use]
    pub fn read(command: Command, address: Address, filler: Filler) -> Self {
        Self { command, address, data: [filler.byte(); 8] }
    }

    /// `0xD9`: switch the discharge MOSFET on (`true`) or off.
    #[must_use]
    pub fn discharge_mosfet(address: Address, on: bool) -> Self {
        Self { command: Command::DischargeMosfet, address, data: [u8::from(on), 0, 0, 0, 0, 0, 0, 0] }
    }

    /// `0xDA`: switch the charge MOSFET on (`true`) or off.
    #[must_use]
    pub fn charge_mosfet(address: Address, on: bool) -> Self {
        Self { command: Command::ChargeMosfet, address, data: [u8::from(on), 0, 0, 0, 0, 0, 0, 0] }
    }

    /// `0x21`: set the SOC and the clock; the SOC is capped at 100.0 %.
    #[must_use]
    pub fn set_soc(address: Address, values: &SetSoc) -> Self {
        let [hi, lo] = values.soc_permille.min(1000).to_be_bytes();
        let data = [values.year, values.month, values.day, values.hour, values.minute, values.second, hi, lo];
        Self { command: Command::SetSoc, address, data }
    }

    /// `0x00`: restart the BMS.
    #[must_use]
    pub fn restart(address: Address) -> Self {
        Self { command: Command::Restart, address, data: [0; 8] }
    }

    /// The `0x21` values, when this is a set-SOC request.
    #[must_use]
    pub fn set_soc_values(&self) -> Option<SetSoc> {
        let [year, month, day, hour, minute, second, hi, lo] = self.data;
        (self.command == Command::SetSoc).then(|| SetSoc {
            year,
            month,
            day,
            hour,
            minute,
            second,
            soc_permille: u16::from_be_bytes([hi, lo]),
        })
    }

    /// The 13 request bytes.
    #[must_use]
    pub fn encode(&self) -> [u8; 13] {
        Frame { address: self.address.host_byte(), command: self.command.code(), data: self.data }.encode()
    }

    /// Parse 13 request bytes. Host 0x40 comes back as [`Address::Rs485`] (the same bytes as `Board(1)`).
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        let frame = Frame::parse(bytes)?;
        let address = Address::from_host_byte(frame.address)
            .ok_or(DecodeError::UnexpectedAddress { expected: Address::Rs485.host_byte(), found: frame.address })?;
        let command =
            Command::from_code(frame.command).ok_or(DecodeError::UnknownCommand { command: frame.command })?;
        Ok(Self { command, address, data: frame.data })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(bytes: &[u8]) -> String {
        crate::protocol::to_hex(bytes)
    }

    #[test]
    fn read_requests_match_the_ready_made_table() {
        let table = [
            (Command::Soc, 0x7D, 0xBD),
            (Command::CellRange, 0x7E, 0xBE),
            (Command::TemperatureRange, 0x7F, 0xBF),
            (Command::Mosfet, 0x80, 0xC0),
            (Command::Status, 0x81, 0xC1),
            (Command::CellVoltages, 0x82, 0xC2),
            (Command::Temperatures, 0x83, 0xC3),
            (Command::Balancing, 0x84, 0xC4),
            (Command::Alarms, 0x85, 0xC5),
            (Command::Rated, 0x3D, 0x7D),
        ];
        for (command, sum40, sum80) in table {
            let r40 = Request::read(command, Address::Rs485, Filler::Zero).encode();
            let r80 = Request::read(command, Address::Uart, Filler::Zero).encode();
            assert_eq!((r40[12], r80[12]), (sum40, sum80), "{command:?}");
            assert_eq!(&r40[..4], &[0xA5, 0x40, command.code(), 0x08]);
        }
    }

    #[test]
    fn aa_filler_is_covered_by_the_checksum() {
        let r = Request::read(Command::Soc, Address::Rs485, Filler::Aa).encode();
        assert_eq!(hex(&r), "a5409008aaaaaaaaaaaaaaaacd");
    }

    #[test]
    fn write_requests_carry_only_their_values() {
        assert_eq!(hex(&Request::discharge_mosfet(Address::Rs485, true).encode()), "a540d9080100000000000000c7");
        assert_eq!(hex(&Request::discharge_mosfet(Address::Rs485, false).encode()), "a540d9080000000000000000c6");
        assert_eq!(hex(&Request::charge_mosfet(Address::Rs485, true).encode()), "a540da080100000000000000c8");
        assert_eq!(hex(&Request::charge_mosfet(Address::Uart, false).encode()), "a580da08000000000000000007");
        assert_eq!(hex(&Request::restart(Address::Rs485).encode()), "a54000080000000000000000ed");
        let soc = SetSoc { year: 24, month: 5, day: 17, hour: 12, minute: 30, second: 45, soc_permille: 1000 };
        let r = Request::set_soc(Address::Rs485, &soc);
        assert_eq!(hex(&r.encode()), "a54021081805110c1e2d03e87e");
        assert_eq!(r.set_soc_values(), Some(soc));
    }

    #[test]
    fn board_two_request_uses_host_0x41_and_decodes_back() {
        let r = Request::read(Command::Soc, Address::Board(2), Filler::Zero);
        assert_eq!(r.encode()[1], 0x41);
        assert_eq!(Request::decode(&r.encode()), Ok(r));
        let one = Request::read(Command::Soc, Address::Board(1), Filler::Zero).encode();
        assert_eq!(Request::decode(&one).map(|r| r.address), Ok(Address::Rs485));
    }

    #[test]
    fn a_reply_is_not_a_request() {
        let reply = Frame { address: 0x01, command: 0x90, data: [0; 8] }.encode();
        assert_eq!(Request::decode(&reply), Err(DecodeError::UnexpectedAddress { expected: 0x40, found: 0x01 }));
        let unknown = Frame { address: 0x40, command: 0x5A, data: [0; 8] }.encode();
        assert_eq!(Request::decode(&unknown), Err(DecodeError::UnknownCommand { command: 0x5A }));
    }
}
