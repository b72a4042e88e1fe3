//! The connection flags shared by `read`, `check`, `set` and `detect` (DESIGN.md §2 `CONNECTION`), and what
//! they resolve to: a transport, a protocol exchange and the session's timing.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context as _, bail};
use clap::Args;

use super::{SignArg, parse_protocol};
use crate::model::Sections;
use crate::poller::{BusSpec, DeviceSpec};
use crate::protocol::daly::exchange::DalyExchange;
use crate::protocol::daly::{Address, Filler};
use crate::protocol::daly_modbus::Map;
use crate::protocol::daly_modbus::exchange::DalyModbusExchange;
use crate::protocol::pace::VER_PACE;
use crate::protocol::pace::exchange::{PaceExchange, PackSelection};
use crate::protocol::sinowealth::CheckPolicy;
use crate::protocol::sinowealth::exchange::SinowealthExchange;
use crate::protocol::{DecodeOptions, Exchange, Protocol};
use crate::session::Settings;
use crate::transport::{Parity, SerialSettings, TcpSettings, TransportSettings};

/// How to reach the device.
#[derive(Debug, Clone, Args)]
pub struct ConnectionArgs {
    /// Protocol the device speaks: daly, daly-modbus, sinowealth or pace (`detect` finds out).
    #[arg(long, value_parser = parse_protocol)]
    pub protocol: Option<Protocol>,
    /// Serial port (RS485/UART/RS232 adapter), e.g. /dev/ttyUSB0.
    #[arg(long, value_name = "PATH", conflicts_with_all = ["tcp", "bluetooth"], required_unless_present_any = ["tcp", "bluetooth"])]
    pub serial: Option<PathBuf>,
    /// Serial line speed.
    #[arg(long, default_value_t = 9600, value_name = "N")]
    pub baud: u32,
    /// Serial parity (8 data bits and 1 stop bit always).
    #[arg(long, default_value = "none", value_name = "none|even|odd")]
    pub parity: Parity,
    /// TCP serial server (RS485-to-Ethernet/Wi-Fi box, ser2net), HOST:PORT.
    #[arg(long, value_name = "HOST:PORT", conflicts_with = "bluetooth")]
    pub tcp: Option<String>,
    /// Bluetooth LE address of a Daly dongle (not in this build yet).
    #[arg(long, value_name = "ADDR")]
    pub bluetooth: Option<String>,
    /// Device address. Daly: rs485 (0x40, default), uart (0x80), or board numbers such as 1 or 1,2,3 for
    /// several boards on one bus. Daly Modbus-style: d2 (default) or p81:N. Pace: the master's ADR (default 1).
    #[arg(long, value_name = "A")]
    pub address: Option<String>,
    /// How the device signs its current on the wire (Daly).
    #[arg(long, value_enum, default_value_t = SignArg::Auto)]
    pub current_sign: SignArg,
    /// Reply timeout per request, in milliseconds.
    #[arg(long, default_value_t = 1000, value_name = "MS")]
    pub timeout_ms: u64,
    /// Quiet time between requests on the bus, in milliseconds (Daly documents ≥ 120 for some boards, Pace
    /// v20 ~200).
    #[arg(long, default_value_t = 50, value_name = "MS")]
    pub request_gap_ms: u64,
    /// Retries per request after the first attempt.
    #[arg(long, default_value_t = 3, value_name = "N")]
    pub retry: u32,
    /// Log every frame sent and received, in hex, to stderr.
    #[arg(long, short)]
    pub verbose: bool,
}

impl ConnectionArgs {
    /// The protocol, which every command but `detect` needs.
    pub fn protocol(&self) -> anyhow::Result<Protocol> {
        self.protocol.context("--protocol is required (daly, daly-modbus, sinowealth or pace); `detect` finds it")
    }

    /// The transport the flags name.
    pub fn transport(&self) -> anyhow::Result<TransportSettings> {
        if self.bluetooth.is_some() {
            bail!("--bluetooth: Bluetooth LE is not part of this build yet; use --serial or --tcp");
        }
        match (&self.serial, &self.tcp) {
            (Some(path), None) => Ok(TransportSettings::Serial(SerialSettings {
                path: path.clone(),
                baud: self.baud,
                parity: self.parity,
            })),
            (None, Some(address)) => Ok(TransportSettings::Tcp(TcpSettings {
                address: address.clone(),
                connect_timeout: Duration::from_secs(5),
            })),
            _ => bail!("give exactly one of --serial PATH or --tcp HOST:PORT"),
        }
    }

    /// The session timing.
    #[must_use]
    pub fn settings(&self) -> Settings {
        Settings {
            timeout: Duration::from_millis(self.timeout_ms),
            retries: self.retry,
            request_gap: Duration::from_millis(self.request_gap_ms),
            ..Settings::default()
        }
    }

    /// The decode options.
    #[must_use]
    pub fn options(&self) -> DecodeOptions {
        DecodeOptions { current_sign: self.current_sign.into(), ..DecodeOptions::default() }
    }

    /// The exchange for `protocol` at the configured address; `packs` selects Pace packs.
    pub fn exchange(&self, protocol: Protocol, packs: Option<u8>) -> anyhow::Result<Box<dyn Exchange>> {
        let address = self.address.as_deref();
        Ok(match protocol {
            Protocol::Daly => {
                let addresses = daly_addresses(address.unwrap_or("rs485")).context("--address")?;
                Box::new(DalyExchange::new(addresses, Filler::Zero, self.options()))
            }
            Protocol::DalyModbus => Box::new(DalyModbusExchange::new(
                daly_modbus_map(address.unwrap_or("d2")).context("--address")?,
                self.options(),
            )),
            Protocol::Sinowealth => {
                if address.is_some() {
                    bail!("--address: Sinowealth boards have no address");
                }
                Box::new(SinowealthExchange::new(CheckPolicy::Verify))
            }
            Protocol::Pace => {
                let adr = pace_adr(address.unwrap_or("1")).context("--address")?;
                let selection = packs.map_or(PackSelection::All, |p| PackSelection::List(vec![p]));
                Box::new(PaceExchange::new(adr, selection, VER_PACE))
            }
        })
    }

    /// A bus with one device named `name` polling `sections`.
    pub fn bus(&self, name: &str, sections: Sections, packs: Option<u8>) -> anyhow::Result<BusSpec> {
        let protocol = self.protocol()?;
        Ok(BusSpec {
            transport: self.transport()?,
            settings: self.settings(),
            devices: vec![DeviceSpec { name: name.to_owned(), exchange: self.exchange(protocol, packs)?, sections }],
        })
    }
}

/// Daly addresses: `rs485`, `uart`, or board numbers `1,2` / ranges `1-4`.
pub(super) fn daly_addresses(text: &str) -> anyhow::Result<Vec<Address>> {
    match text {
        "rs485" => return Ok(vec![Address::Rs485]),
        "uart" => return Ok(vec![Address::Uart]),
        _ => {}
    }
    let mut boards = Vec::new();
    for part in text.split(',').map(str::trim) {
        let (first, last) = part.split_once('-').unwrap_or((part, part));
        let parse = |s: &str| -> anyhow::Result<u8> {
            match s.trim().parse::<u8>() {
                Ok(n) if (1..=Address::MAX_BOARD).contains(&n) => Ok(n),
                _ => bail!("{s:?} is not rs485, uart or a board number 1–16"),
            }
        };
        for board in parse(first)?..=parse(last)? {
            if !boards.contains(&Address::Board(board)) {
                boards.push(Address::Board(board));
            }
        }
    }
    if boards.is_empty() {
        bail!("no board given");
    }
    Ok(boards)
}

/// The Daly Modbus-style register map: `d2`, `p81` (board 1) or `p81:N`.
pub(super) fn daly_modbus_map(text: &str) -> anyhow::Result<Map> {
    match text.split_once(':') {
        None if text == "d2" => Ok(Map::D2),
        None if text == "p81" => Map::p81(1).map_err(anyhow::Error::from),
        Some(("p81", board)) => {
            let board: u8 = board.parse().with_context(|| format!("{board:?} is not a board number"))?;
            Map::p81(board).map_err(anyhow::Error::from)
        }
        _ => bail!("{text:?} is not d2, p81 or p81:N"),
    }
}

/// A Pace master address (ADR) 0–255, decimal or 0x-hex.
pub(super) fn pace_adr(text: &str) -> anyhow::Result<u8> {
    let parsed = match text.strip_prefix("0x") {
        Some(hex) => u8::from_str_radix(hex, 16).ok(),
        None => text.parse().ok(),
    };
    parsed.with_context(|| format!("{text:?} is not a Pace address (0–255)"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn daly_addresses_accept_names_lists_and_ranges_and_name_the_bad_part() {
        assert_eq!(daly_addresses("rs485").unwrap(), vec![Address::Rs485]);
        assert_eq!(daly_addresses("uart").unwrap(), vec![Address::Uart]);
        assert_eq!(daly_addresses("1,3-4").unwrap(), vec![Address::Board(1), Address::Board(3), Address::Board(4)]);
        assert!(daly_addresses("17").unwrap_err().to_string().contains("\"17\""));
        assert!(daly_addresses("x").is_err());
        assert_eq!(daly_modbus_map("d2").unwrap(), Map::D2);
        assert!(daly_modbus_map("p81:2").is_ok());
        assert!(daly_modbus_map("p82").is_err());
        assert_eq!(pace_adr("0x02").unwrap(), 2);
        assert!(pace_adr("300").is_err());
    }
}
