//! The connection flags shared by `read`, `check`, `set` and `detect` (DESIGN.md §2 `CONNECTION`), and what
//! they resolve to: a transport, a protocol exchange and the session's timing.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context as _, bail};
use clap::Args;

use super::{SignArg, parse_protocol};
use crate::config::address::ProtocolOptions;
pub(super) use crate::config::address::{daly_addresses, daly_modbus_map, pace_adr};
use crate::model::Sections;
use crate::poller::{BusSpec, DeviceSpec};
use crate::protocol::pace::VER_PACE;
use crate::protocol::pace::exchange::PackSelection;
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
        Ok(self.protocol_options(protocol, packs)?.exchange())
    }

    /// What `--address` and `--current-sign` mean for `protocol`; `packs` selects Pace packs.
    pub fn protocol_options(&self, protocol: Protocol, packs: Option<u8>) -> anyhow::Result<ProtocolOptions> {
        let address = self.address.as_deref();
        let current_sign = self.options().current_sign;
        Ok(match protocol {
            Protocol::Daly => ProtocolOptions::Daly {
                addresses: daly_addresses(address.unwrap_or("rs485")).context("--address")?,
                current_sign,
            },
            Protocol::DalyModbus => ProtocolOptions::DalyModbus {
                map: daly_modbus_map(address.unwrap_or("d2")).context("--address")?,
                current_sign,
            },
            Protocol::Sinowealth => {
                if address.is_some() {
                    bail!("--address: Sinowealth boards have no address");
                }
                ProtocolOptions::Sinowealth
            }
            Protocol::Pace => ProtocolOptions::Pace {
                adr: pace_adr(address.unwrap_or("1")).context("--address")?,
                packs: packs.map_or(PackSelection::All, |p| PackSelection::List(vec![p])),
                version: VER_PACE,
            },
        })
    }

    /// A bus with one device named `name` polling `sections`. The commands show no energy counters, so the
    /// exporter's default `stale_after` is as good a gap limit as any.
    pub fn bus(&self, name: &str, sections: Sections, packs: Option<u8>) -> anyhow::Result<BusSpec> {
        let protocol = self.protocol()?;
        Ok(BusSpec {
            transport: self.transport()?,
            settings: self.settings(),
            devices: vec![DeviceSpec { name: name.to_owned(), exchange: self.exchange(protocol, packs)?, sections }],
            stale_after: crate::config::Defaults::default().stale_after,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::daly::Address;
    use crate::protocol::daly_modbus::Map;

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
