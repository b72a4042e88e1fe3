//! Device addresses and protocol options as the user writes them (`rs485`, `1,3-4`, `p81:2`, `0x02`), and the
//! one place that turns a protocol plus its options into the [`Exchange`] a bus worker drives. Both the CLI's
//! `--address` flag and the config file's protocol blocks go through here, so they accept the same spellings.

use crate::model::CurrentSign;
use crate::protocol::daly::exchange::DalyExchange;
use crate::protocol::daly::{Address, Filler};
use crate::protocol::daly_modbus::Map;
use crate::protocol::daly_modbus::exchange::DalyModbusExchange;
use crate::protocol::pace::exchange::{PaceExchange, PackSelection};
use crate::protocol::sinowealth::CheckPolicy;
use crate::protocol::sinowealth::exchange::SinowealthExchange;
use crate::protocol::{DecodeOptions, Exchange, Protocol};

/// An address or option text that does not name a device; the message quotes the offending part.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct AddressError(pub String);

/// Daly addresses: `rs485`, `uart`, or board numbers `1,2` / ranges `1-4` (each 1–16, duplicates dropped).
pub fn daly_addresses(text: &str) -> Result<Vec<Address>, AddressError> {
    match text {
        "rs485" => return Ok(vec![Address::Rs485]),
        "uart" => return Ok(vec![Address::Uart]),
        _ => {}
    }
    let mut boards = Vec::new();
    for part in text.split(',').map(str::trim) {
        let (first, last) = part.split_once('-').unwrap_or((part, part));
        for board in daly_board(first)?..=daly_board(last)? {
            if !boards.contains(&Address::Board(board)) {
                boards.push(Address::Board(board));
            }
        }
    }
    if boards.is_empty() {
        return Err(AddressError("no board given".to_owned()));
    }
    Ok(boards)
}

/// One Daly board number, 1–16.
fn daly_board(text: &str) -> Result<u8, AddressError> {
    match text.trim().parse::<u8>() {
        Ok(n) if (1..=Address::MAX_BOARD).contains(&n) => Ok(n),
        _ => Err(AddressError(format!("{text:?} is not rs485, uart or a board number 1–16"))),
    }
}

/// The Daly Modbus-style register map: `d2`, `p81` (board 1) or `p81:N`.
pub fn daly_modbus_map(text: &str) -> Result<Map, AddressError> {
    let p81 = |board: u8| Map::p81(board).map_err(|e| AddressError(e.to_string()));
    match text.split_once(':') {
        None if text == "d2" => Ok(Map::D2),
        None if text == "p81" => p81(1),
        Some(("p81", board)) => match board.parse::<u8>() {
            Ok(board) => p81(board),
            Err(e) => Err(AddressError(format!("{board:?} is not a board number: {e}"))),
        },
        _ => Err(AddressError(format!("{text:?} is not d2, p81 or p81:N"))),
    }
}

/// A Pace master address (ADR) 0–255, decimal or 0x-hex.
pub fn pace_adr(text: &str) -> Result<u8, AddressError> {
    let parsed = match text.strip_prefix("0x") {
        Some(hex) => u8::from_str_radix(hex, 16).ok(),
        None => text.parse().ok(),
    };
    parsed.ok_or_else(|| AddressError(format!("{text:?} is not a Pace address (0–255)")))
}

/// Everything a protocol needs besides the bus to build its exchange.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProtocolOptions {
    /// Daly A5 frames.
    Daly {
        /// The boards polled, in order (one for `rs485`/`uart`).
        addresses: Vec<Address>,
        /// How the board signs its current on the wire.
        current_sign: CurrentSign,
    },
    /// Daly Modbus-style frames.
    DalyModbus {
        /// The register map, which also fixes the device address.
        map: Map,
        /// How the board signs its current on the wire.
        current_sign: CurrentSign,
    },
    /// Sinowealth boards: no address, no options.
    Sinowealth,
    /// Pace ASCII frames.
    Pace {
        /// The master's ADR.
        adr: u8,
        /// Which packs behind the master are read.
        packs: PackSelection,
        /// The VER byte: [`crate::protocol::pace::VER_PACE`] or the Pylon-compatible 0x20.
        version: u8,
    },
}

impl ProtocolOptions {
    /// The protocol these options belong to.
    #[must_use]
    pub fn protocol(&self) -> Protocol {
        match self {
            Self::Daly { .. } => Protocol::Daly,
            Self::DalyModbus { .. } => Protocol::DalyModbus,
            Self::Sinowealth => Protocol::Sinowealth,
            Self::Pace { .. } => Protocol::Pace,
        }
    }

    /// A fresh exchange for one device: each bus worker owns its own, since exchanges cache what they learnt.
    #[must_use]
    pub fn exchange(&self) -> Box<dyn Exchange> {
        let options = |current_sign| DecodeOptions { current_sign, ..DecodeOptions::default() };
        match self {
            Self::Daly { addresses, current_sign } => {
                Box::new(DalyExchange::new(addresses.clone(), Filler::Zero, options(*current_sign)))
            }
            Self::DalyModbus { map, current_sign } => Box::new(DalyModbusExchange::new(*map, options(*current_sign))),
            Self::Sinowealth => Box::new(SinowealthExchange::new(CheckPolicy::Verify)),
            Self::Pace { adr, packs, version } => Box::new(PaceExchange::new(*adr, packs.clone(), *version)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn daly_modbus_board_errors_read_as_before_the_move() {
        assert_eq!(
            daly_modbus_map("p81:x").unwrap_err().to_string(),
            "\"x\" is not a board number: invalid digit found in string"
        );
        assert!(daly_modbus_map("p81:17").is_err());
        assert_eq!(daly_modbus_map("p81").unwrap(), Map::p81(1).unwrap());
        assert_eq!(daly_addresses("").unwrap_err().to_string(), "\"\" is not rs485, uart or a board number 1–16");
    }

    #[test]
    fn every_protocol_option_builds_an_exchange_of_its_protocol() {
        let all = [
            ProtocolOptions::Daly { addresses: vec![Address::Rs485], current_sign: CurrentSign::Auto },
            ProtocolOptions::DalyModbus { map: Map::D2, current_sign: CurrentSign::Auto },
            ProtocolOptions::Sinowealth,
            ProtocolOptions::Pace { adr: 1, packs: PackSelection::All, version: 0x25 },
        ];
        let protocols: Vec<Protocol> = all.iter().map(ProtocolOptions::protocol).collect();
        assert_eq!(protocols, Protocol::ALL);
        for options in &all {
            assert_eq!(options.exchange().protocol(), options.protocol());
        }
    }
}
