//! The connection flags shared by `read`, `check`, `set` and `detect` (`CONNECTION` in `--help`), and what
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
use crate::protocol::pace::exchange::PackSelection;
use crate::protocol::pace::{MAX_PACK, VER_PACE};
use crate::protocol::{DecodeOptions, Exchange, Protocol};
use crate::session::Settings;
use crate::transport::{
    BLUETOOTH_CONNECT_TIMEOUT, BluetoothSettings, Parity, SerialSettings, TcpSettings, TransportSettings,
    parse_bluetooth_adapter, parse_bluetooth_address,
};

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
    /// Bluetooth LE address of a BMS module (a Daly UART dongle, or a DL-/JHB- module), AA:BB:CC:DD:EE:FF.
    #[arg(long, value_name = "ADDR", value_parser = parse_bluetooth_address)]
    pub bluetooth: Option<String>,
    /// Bluetooth adapter to use with --bluetooth, e.g. hci1 (default: the first one).
    #[arg(long, value_name = "NAME", value_parser = parse_bluetooth_adapter)]
    pub adapter: Option<String>,
    /// Device address. Daly: rs485 (0x40, default on a wire), uart (0x80, default over Bluetooth), or board
    /// numbers such as 1 or 1,2,3 for several boards on one bus. Daly Modbus-style: d2 (default) or p81:N. Pace: the master's ADR (default 1).
    #[arg(long, value_name = "A")]
    pub address: Option<String>,
    /// How the device signs its current on the wire (Daly).
    #[arg(long, value_enum, default_value_t = SignArg::Auto)]
    pub current_sign: SignArg,
    /// Reply timeout per request, in milliseconds [default: 1000, or 5000 over Bluetooth].
    #[arg(long, value_name = "MS")]
    pub timeout_ms: Option<u64>,
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
        // Not a clap `requires`: `detect --bluetooth-scan` takes --adapter without --bluetooth.
        if self.adapter.is_some() && self.bluetooth.is_none() {
            bail!("--adapter names the Bluetooth adapter for --bluetooth ADDR; give --bluetooth too, or drop it");
        }
        match (&self.serial, &self.tcp, &self.bluetooth) {
            (Some(path), None, None) => Ok(TransportSettings::Serial(SerialSettings {
                path: path.clone(),
                baud: self.baud,
                parity: self.parity,
            })),
            (None, Some(address), None) => Ok(TransportSettings::Tcp(TcpSettings {
                address: address.clone(),
                connect_timeout: Duration::from_secs(5),
            })),
            (None, None, Some(address)) => {
                if cfg!(not(feature = "ble")) {
                    bail!(
                        "--bluetooth: this bms_exporter was built without the ble feature (Bluetooth LE); rebuild \
                         it with default features, or use --serial or --tcp"
                    );
                }
                Ok(TransportSettings::Bluetooth(BluetoothSettings {
                    address: address.clone(),
                    adapter: self.adapter.clone(),
                    connect_timeout: BLUETOOTH_CONNECT_TIMEOUT,
                }))
            }
            _ => bail!("give exactly one of --serial PATH, --tcp HOST:PORT or --bluetooth ADDR"),
        }
    }

    /// The reply timeout: `--timeout-ms`, else 1 s on a wire and the longer Bluetooth default over Bluetooth (a
    /// request and its reply each wait for a connection interval).
    #[must_use]
    pub fn timeout(&self) -> Duration {
        match self.timeout_ms {
            Some(ms) => Duration::from_millis(ms),
            None if self.bluetooth.is_some() => crate::config::BLUETOOTH_TIMEOUT,
            None => Settings::default().timeout,
        }
    }

    /// The session timing.
    #[must_use]
    pub fn settings(&self) -> Settings {
        Settings {
            timeout: self.timeout(),
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

    /// The Daly address when `--address` names none: a UART dongle forwards frames for the UART host address
    /// only, a wired RS485 bus answers the RS485 one.
    #[must_use]
    pub fn daly_default_address(&self) -> &'static str {
        if self.bluetooth.is_some() { "uart" } else { "rs485" }
    }

    /// What `--address` and `--current-sign` mean for `protocol`; `packs` selects Pace packs.
    pub fn protocol_options(&self, protocol: Protocol, packs: Option<u8>) -> anyhow::Result<ProtocolOptions> {
        let address = self.address.as_deref();
        let current_sign = self.options().current_sign;
        Ok(match protocol {
            Protocol::Daly => ProtocolOptions::Daly {
                addresses: daly_addresses(address.unwrap_or(self.daly_default_address())).context("--address")?,
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
            Protocol::Pace if packs.is_some_and(|p| !(1..=MAX_PACK).contains(&p)) => {
                bail!("--pack: Pace packs are numbered 1–{MAX_PACK}, not {}", packs.unwrap_or_default())
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
    use clap::Parser as _;

    use super::*;
    use crate::cli::{Cli, Command};
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
    fn connection(flags: &[&str]) -> ConnectionArgs {
        let cli = Cli::try_parse_from(["bms_exporter", "read"].iter().chain(flags)).unwrap();
        let Some(Command::Read(read)) = cli.command else { panic!("not read") };
        read.connection
    }

    #[test]
    fn bluetooth_flags_pick_the_module_the_uart_address_and_the_longer_timeout() {
        let ble = connection(&["--protocol", "daly", "--bluetooth", "aa:bb:cc:dd:ee:ff", "--adapter", "hci1"]);
        let expected = TransportSettings::Bluetooth(BluetoothSettings {
            address: "AA:BB:CC:DD:EE:FF".to_owned(),
            adapter: Some("hci1".to_owned()),
            connect_timeout: BLUETOOTH_CONNECT_TIMEOUT,
        });
        if cfg!(feature = "ble") {
            assert_eq!(ble.transport().unwrap(), expected);
        } else {
            let error = ble.transport().unwrap_err().to_string();
            assert!(error.contains("without the ble feature"), "{error}");
        }
        assert_eq!(ble.settings().timeout, crate::config::BLUETOOTH_TIMEOUT);
        assert_eq!(
            ble.protocol_options(Protocol::Daly, None).unwrap(),
            ProtocolOptions::Daly { addresses: vec![Address::Uart], current_sign: crate::model::CurrentSign::Auto }
        );
        let wired = connection(&["--protocol", "daly", "--tcp", "127.0.0.1:8899"]);
        assert_eq!(wired.settings().timeout, Duration::from_secs(1));
        assert_eq!(
            wired.protocol_options(Protocol::Daly, None).unwrap(),
            ProtocolOptions::Daly { addresses: vec![Address::Rs485], current_sign: crate::model::CurrentSign::Auto }
        );
        let told = connection(&["--bluetooth", "AA:BB:CC:DD:EE:FF", "--timeout-ms", "700", "--address", "1"]);
        assert_eq!(told.settings().timeout, Duration::from_millis(700));
        let options = told.protocol_options(Protocol::Daly, None).unwrap();
        assert!(matches!(options, ProtocolOptions::Daly { addresses, .. } if addresses == [Address::Board(1)]));
    }

    #[test]
    fn an_adapter_without_a_module_and_a_malformed_address_are_refused() {
        let stray = connection(&["--tcp", "127.0.0.1:8899", "--adapter", "hci0"]);
        let error = stray.transport().unwrap_err().to_string();
        assert!(error.contains("--adapter") && error.contains("--bluetooth"), "{error}");
        for argv in [
            ["bms_exporter", "read", "--bluetooth", "AA:BB:CC:DD:EE"],
            ["bms_exporter", "read", "--bluetooth", "AA:BB:CC:DD:EE:FF:00"],
        ] {
            let error = Cli::try_parse_from(argv).unwrap_err().to_string();
            assert!(error.contains("not a Bluetooth address"), "{error}");
        }
        let error =
            Cli::try_parse_from(["bms_exporter", "read", "--bluetooth", "AA:BB:CC:DD:EE:FF", "--adapter", "bt0"])
                .unwrap_err()
                .to_string();
        assert!(error.contains("not a Bluetooth adapter name"), "{error}");
        let error =
            Cli::try_parse_from(["bms_exporter", "read", "--bluetooth", "AA:BB:CC:DD:EE:FF", "--tcp", "127.0.0.1:1"])
                .unwrap_err();
        assert_eq!(error.kind(), clap::error::ErrorKind::ArgumentConflict);
    }
}
