//! `detect`: find out what answers on a port by probing every protocol at its usual addresses with read
//! requests only (never a write), and print a ready config block for what answered.

use std::fmt::Write as _;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::Context as _;
use clap::Args;

use super::connection::ConnectionArgs;
use crate::model::{DeviceSnapshot, Section, Sections};
use crate::poller::drive;
use crate::protocol::daly::exchange::DalyExchange;
use crate::protocol::daly::{Address, Filler};
use crate::protocol::daly_modbus::Map;
use crate::protocol::daly_modbus::exchange::DalyModbusExchange;
use crate::protocol::pace::exchange::{PaceExchange, PackSelection};
use crate::protocol::pace::{VER_PACE, VER_PYLON};
use crate::protocol::sinowealth::CheckPolicy;
use crate::protocol::sinowealth::exchange::SinowealthExchange;
use crate::protocol::{Exchange, Protocol};
use crate::session::{Session, Settings};
use crate::transport::{self, TransportSettings};

/// Arguments of `detect`.
#[derive(Debug, Args)]
pub struct DetectArgs {
    /// How to reach the device (`--protocol` and `--address` are ignored: every protocol is tried).
    #[command(flatten)]
    pub connection: ConnectionArgs,
}

/// One probe: a protocol at an address, and the config lines that select it.
struct Probe {
    protocol: Protocol,
    what: &'static str,
    config: &'static str,
    exchange: Box<dyn Exchange>,
}

fn probes(args: &ConnectionArgs) -> Vec<Probe> {
    let options = args.options();
    let mut probes = vec![
        Probe {
            protocol: Protocol::Daly,
            what: "Daly A5, host address 0x40 (RS485)",
            config: "daly: { address: rs485 }",
            exchange: Box::new(DalyExchange::new(vec![Address::Rs485], Filler::Zero, options)),
        },
        Probe {
            protocol: Protocol::Daly,
            what: "Daly A5, host address 0x80 (UART)",
            config: "daly: { address: uart }",
            exchange: Box::new(DalyExchange::new(vec![Address::Uart], Filler::Zero, options)),
        },
        Probe {
            protocol: Protocol::DalyModbus,
            what: "Daly Modbus-style, D2 map",
            config: "daly_modbus: { address: d2 }",
            exchange: Box::new(DalyModbusExchange::new(Map::D2, options)),
        },
        Probe {
            protocol: Protocol::Sinowealth,
            what: "Daly Sinowealth board",
            config: "sinowealth: {}",
            exchange: Box::new(SinowealthExchange::new(CheckPolicy::Verify)),
        },
        Probe {
            protocol: Protocol::Pace,
            what: "Pace, ADR 1",
            config: "pace: { address: 1, packs: all }",
            exchange: Box::new(PaceExchange::new(1, PackSelection::All, VER_PACE)),
        },
        Probe {
            protocol: Protocol::Pace,
            what: "Pace (Pylon-compatible VER 0x20), ADR 2",
            config: "pace: { address: 2, packs: all, version: 0x20 }",
            exchange: Box::new(PaceExchange::new(2, PackSelection::All, VER_PYLON)),
        },
    ];
    if let Ok(map) = Map::p81(1) {
        probes.insert(
            3,
            Probe {
                protocol: Protocol::DalyModbus,
                what: "Daly Modbus-style, p81 map, board 1",
                config: "daly_modbus: { address: \"p81:1\" }",
                exchange: Box::new(DalyModbusExchange::new(map, options)),
            },
        );
    }
    probes
}

/// A one-line summary of what a probe read.
fn summary(device: &DeviceSnapshot) -> String {
    let mut text = String::new();
    for pack in device.packs.iter().filter(|p| p.online) {
        let _ = write!(text, "pack {}", pack.pack);
        if let Some(v) = pack.voltage_volts {
            let _ = write!(text, " {v:.2} V");
        }
        if let Some(soc) = pack.state_of_charge_ratio {
            let _ = write!(text, " SOC {:.0} %", soc * 100.0);
        }
        text.push_str("; ");
    }
    text.trim_end_matches("; ").to_owned()
}

/// Run `detect`.
pub(super) fn detect(args: &DetectArgs) -> anyhow::Result<ExitCode> {
    let transport = args.connection.transport()?;
    let settings = Settings { retries: 1, ..args.connection.settings() };
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().context("starting the runtime")?;
    let found = runtime.block_on(async {
        let mut link = transport::open(&transport).await?;
        let mut found = Vec::new();
        for mut probe in probes(&args.connection) {
            if found.iter().any(|(p, _): &(Probe, String)| p.protocol == probe.protocol) {
                continue; // one address per protocol is enough to write a config
            }
            eprintln!("detect: trying {} …", probe.what);
            let mut session =
                Session::new(probe.exchange.as_mut(), Sections::none().with(Section::Soc), settings, Instant::now());
            drive(&mut link, &mut session).await.map_err(anyhow::Error::msg)?;
            let report = session.finish();
            if report.answered > 0 {
                let text = summary(&report.device);
                eprintln!("detect: {} answered: {text}", probe.what);
                found.push((probe, text));
            }
            tokio::time::sleep(settings.request_gap).await;
        }
        anyhow::Ok(found)
    })?;
    if found.is_empty() {
        anyhow::bail!(
            "nothing answered on {} (tried Daly, Daly Modbus-style, Sinowealth and Pace at their usual addresses); \
             check wiring, baud rate (--baud) and that the BMS is awake",
            transport.describe()
        );
    }
    let mut out = String::from("devices:\n");
    for (i, (probe, text)) in found.iter().enumerate() {
        let name = if found.len() == 1 { "battery".to_owned() } else { format!("battery{}", i + 1) };
        let _ = writeln!(out, "  # {} — {text}", probe.what);
        let _ = writeln!(out, "  - name: {name}");
        let _ = writeln!(out, "    protocol: {}", probe.protocol);
        match &transport {
            TransportSettings::Serial(s) => {
                let _ = writeln!(out, "    serial: {}", s.path.display());
                let _ = writeln!(out, "    baud: {}", s.baud);
            }
            TransportSettings::Tcp(t) => {
                let _ = writeln!(out, "    tcp: {}", t.address);
            }
            TransportSettings::Bluetooth(b) => {
                let _ = writeln!(out, "    bluetooth: {}", b.address);
            }
        }
        let _ = writeln!(out, "    {}", probe.config);
    }
    print!("{out}");
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use clap::Parser as _;

    use super::*;
    use crate::cli::{Cli, Command};

    #[test]
    fn every_printed_config_line_is_accepted_and_builds_the_probe_that_answered() {
        let cli = Cli::try_parse_from(["bms_exporter", "detect", "--tcp", "127.0.0.1:8899"]).unwrap();
        let Some(Command::Detect(args)) = cli.command else { panic!("not detect") };
        for probe in probes(&args.connection) {
            let text = format!(
                "devices:\n  - name: battery\n    protocol: {}\n    tcp: 127.0.0.1:8899\n    {}\n",
                probe.protocol, probe.config
            );
            let config = crate::config::parse(&text, std::path::Path::new("detect.yaml"))
                .unwrap_or_else(|e| panic!("{}: {e}", probe.what));
            let device = &config.devices[0];
            assert_eq!(device.protocol, probe.protocol, "{}", probe.what);
            assert_eq!(format!("{:?}", device.exchange()), format!("{:?}", probe.exchange), "{}", probe.what);
        }
    }
}
