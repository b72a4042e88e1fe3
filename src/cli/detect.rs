//! `detect`: find out what answers on a port by probing every protocol at its usual addresses with read
//! requests only (never a write), and print a ready config block for what answered. `--bluetooth-scan` first
//! lists the Bluetooth LE modules that look like a BMS, then probes each of them the same way.

use std::fmt::Write as _;
use std::process::ExitCode;
use std::time::{Duration, Instant};

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
use crate::session::{ReplyTimes, Session, Settings};
use crate::transport::{self, Advertised, BluetoothSettings, Link, TransportSettings};

/// Arguments of `detect`.
#[derive(Debug, Args)]
// A scan needs no port: --serial is required unless --tcp, --bluetooth or --bluetooth-scan is given.
#[command(mut_arg("serial", |a| a.required_unless_present_any(["tcp", "bluetooth", "bluetooth_scan"])))]
pub struct DetectArgs {
    /// How to reach the device (`--protocol` and `--address` are ignored: every protocol is tried).
    #[command(flatten)]
    pub connection: ConnectionArgs,
    /// Instead of one port: scan for Bluetooth LE modules for SECONDS, list those that look like a BMS (name DL-,
    /// JHB- or DALY…, or service fff0/ff00), probe each and print a config block for every one that answers.
    /// `--adapter` picks the adapter.
    #[arg(
        long,
        value_name = "SECONDS",
        num_args = 0..=1,
        default_missing_value = "10",
        conflicts_with_all = ["serial", "tcp", "bluetooth"],
        value_parser = clap::value_parser!(u64).range(1..=300)
    )]
    pub bluetooth_scan: Option<u64>,
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
    if args.bluetooth.is_some() {
        // Behind a Bluetooth module there is a Daly UART dongle (host address 0x80) or a Modbus-style module;
        // the other probes cannot answer there and would each cost two Bluetooth timeouts.
        probes.retain(|p| {
            p.config != "daly: { address: rs485 }" && matches!(p.protocol, Protocol::Daly | Protocol::DalyModbus)
        });
    }
    probes
}

/// What a Bluetooth module probably speaks, judged from its advertisement.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Likely {
    /// A UART dongle of an older Daly board (service fff0): A5 frames.
    Daly,
    /// A newer DL-/JHB- module (service ff00, or its name): Modbus-style frames.
    DalyModbus,
}

/// Whether an advertised device looks like a BMS module, and what it probably speaks: `ff00` and the DL-/JHB-
/// names belong to the Modbus-style modules only; `fff0` and a DALY name are the UART dongles' (some
/// Modbus-style modules use `fff0` too, which is why the other protocol is probed as well).
fn likely(device: &Advertised) -> Option<Likely> {
    let name = device.name.as_deref().unwrap_or_default().to_ascii_uppercase();
    if device.service_ff00 || name.starts_with("DL-") || name.starts_with("JHB-") {
        Some(Likely::DalyModbus)
    } else if device.service_fff0 || name.starts_with("DALY") {
        Some(Likely::Daly)
    } else {
        None
    }
}

/// The Bluetooth probes of a module that probably speaks `likely`, most likely first.
fn bluetooth_probes(args: &ConnectionArgs, likely: Likely) -> Vec<Probe> {
    let options = args.options();
    let daly = Probe {
        protocol: Protocol::Daly,
        what: "Daly A5 through a UART dongle, host address 0x80",
        config: "daly: { address: uart }",
        exchange: Box::new(DalyExchange::new(vec![Address::Uart], Filler::Zero, options)),
    };
    let modbus = Probe {
        protocol: Protocol::DalyModbus,
        what: "Daly Modbus-style, D2 map",
        config: "daly_modbus: { address: d2 }",
        exchange: Box::new(DalyModbusExchange::new(Map::D2, options)),
    };
    match likely {
        Likely::Daly => vec![daly, modbus],
        Likely::DalyModbus => vec![modbus, daly],
    }
}

/// One line about a scanned module, e.g. `DL-40D63C1234 11:22:33:44:55:66 RSSI -67 dBm, probably daly-modbus`.
fn scan_line(device: &Advertised, likely: Likely) -> String {
    let name = device.name.as_deref().unwrap_or("(no name)");
    let rssi = device.rssi.map_or_else(|| "RSSI unknown".to_owned(), |r| format!("RSSI {r} dBm"));
    let probable = match likely {
        Likely::Daly => "daly (A5 through a UART dongle)",
        Likely::DalyModbus => "daly-modbus",
    };
    let mut services = Vec::new();
    if device.service_fff0 {
        services.push("fff0");
    }
    if device.service_ff00 {
        services.push("ff00");
    }
    let services = if services.is_empty() { String::new() } else { format!(", service {}", services.join("+")) };
    format!("{name} {} {rssi}, probably {probable}{services}", device.address)
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

/// Runs `probes` over `link` (at `baud`, when known) one after the other (one answer per protocol is enough; with
/// `one_device`, the first answer is) and returns those that got an answer, each with a summary of what it read.
/// `Err` is a link failure.
///
/// A Bluetooth module carries one BMS (`one_device`): once it has answered, every further probe could only wait out
/// its timeouts. A wired bus may hold boards of several protocols.
///
/// Until something answers, every probe waits the full timeout. Once a device has answered, the link is known
/// to work and its reply time is known, so the probes after it wait only the short timeout of optional reads
/// (`crate::session::ReplyTimes::short_timeout`): a board that found its protocol answers in well under that.
async fn run_probes(
    link: &mut Link,
    probes: Vec<Probe>,
    settings: Settings,
    one_device: bool,
    baud: Option<u32>,
) -> anyhow::Result<Vec<(Probe, String)>> {
    let mut found: Vec<(Probe, String)> = Vec::new();
    let mut times = ReplyTimes::new(baud);
    for mut probe in probes {
        if one_device && !found.is_empty() {
            break;
        }
        if found.iter().any(|(p, _)| p.protocol == probe.protocol) {
            continue; // one address per protocol is enough to write a config
        }
        eprintln!("detect: trying {} …", probe.what);
        let mut session =
            Session::new(probe.exchange.as_mut(), Sections::none().with(Section::Soc), settings, Instant::now())
                .with_reply_times(times.clone());
        if !found.is_empty() {
            session = session.probing();
        }
        drive(link, &mut session).await.map_err(anyhow::Error::msg)?;
        session.reply_times().clone_into(&mut times);
        let report = session.finish();
        if report.answered > 0 {
            let text = summary(&report.device);
            eprintln!("detect: {} answered: {text}", probe.what);
            found.push((probe, text));
        }
        tokio::time::sleep(settings.request_gap).await;
    }
    Ok(found)
}

/// The `devices:` block for what answered, each on its transport.
fn config_block(found: &[(Probe, String, TransportSettings)]) -> String {
    let mut out = String::from("devices:\n");
    for (i, (probe, text, transport)) in found.iter().enumerate() {
        let name = if found.len() == 1 { "battery".to_owned() } else { format!("battery{}", i + 1) };
        let _ = writeln!(out, "  # {} — {text}", probe.what);
        let _ = writeln!(out, "  - name: {name}");
        let _ = writeln!(out, "    protocol: {}", probe.protocol);
        match transport {
            TransportSettings::Serial(s) => {
                let _ = writeln!(out, "    serial: {}", s.path.display());
                let _ = writeln!(out, "    baud: {}", s.baud);
            }
            TransportSettings::Tcp(t) => {
                let _ = writeln!(out, "    tcp: {}", t.address);
            }
            TransportSettings::Bluetooth(b) => {
                let _ = writeln!(out, "    bluetooth: {}", b.address);
                if let Some(adapter) = &b.adapter {
                    let _ = writeln!(out, "    adapter: {adapter}");
                }
            }
        }
        let _ = writeln!(out, "    {}", probe.config);
    }
    out
}

/// Run `detect`.
pub(super) fn detect(args: &DetectArgs) -> anyhow::Result<ExitCode> {
    if let Some(seconds) = args.bluetooth_scan {
        return scan(args, Duration::from_secs(seconds));
    }
    let transport = args.connection.transport()?;
    let settings = Settings { retries: 1, ..args.connection.settings() };
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().context("starting the runtime")?;
    let found = runtime.block_on(async {
        let found = match transport::open(&transport).await {
            Ok(mut link) => {
                let one_device = matches!(transport, TransportSettings::Bluetooth(_));
                run_probes(&mut link, probes(&args.connection), settings, one_device, transport.baud()).await
            }
            Err(error) => Err(error.into()),
        };
        transport::close_bluetooth(CLOSE_WAIT).await;
        found
    })?;
    if found.is_empty() {
        anyhow::bail!(
            "nothing answered on {} (tried Daly, Daly Modbus-style, Sinowealth and Pace at their usual addresses); \
             check wiring, baud rate (--baud) and that the BMS is awake",
            transport.describe()
        );
    }
    let found: Vec<_> = found.into_iter().map(|(probe, text)| (probe, text, transport.clone())).collect();
    print!("{}", config_block(&found));
    Ok(ExitCode::SUCCESS)
}

/// How long a command waits for its Bluetooth modules to be released before it exits.
const CLOSE_WAIT: Duration = Duration::from_secs(5);

/// `detect --bluetooth-scan`: list what looks like a BMS, then probe each module over its own connection.
fn scan(args: &DetectArgs, duration: Duration) -> anyhow::Result<ExitCode> {
    let connection = &args.connection;
    // Over Bluetooth the modules' own timeout applies unless --timeout-ms says otherwise (without --bluetooth
    // the connection flags would pick the wired default).
    let timeout = connection.timeout_ms.map_or(crate::config::BLUETOOTH_TIMEOUT, Duration::from_millis);
    let settings = Settings { retries: 1, timeout, ..connection.settings() };
    let adapter = connection.adapter.clone();
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().context("starting the runtime")?;
    let found = runtime.block_on(async {
        eprintln!("detect: scanning for Bluetooth LE modules for {} s …", duration.as_secs());
        let heard = transport::scan_bluetooth(adapter.as_deref(), duration).await?;
        let candidates: Vec<(Advertised, Likely)> =
            heard.iter().filter_map(|d| likely(d).map(|l| (d.clone(), l))).collect();
        eprintln!(
            "detect: heard {} device{}, {} of them look like a BMS",
            heard.len(),
            if heard.len() == 1 { "" } else { "s" },
            candidates.len()
        );
        for (device, likely) in &candidates {
            eprintln!("detect: found {}", scan_line(device, *likely));
        }
        let mut found = Vec::new();
        for (device, likely) in candidates {
            let transport = TransportSettings::Bluetooth(BluetoothSettings {
                address: device.address.clone(),
                adapter: adapter.clone(),
                connect_timeout: transport::BLUETOOTH_CONNECT_TIMEOUT,
            });
            eprintln!("detect: connecting to {} …", transport.describe());
            let answered = match transport::open(&transport).await {
                Ok(mut link) => run_probes(&mut link, bluetooth_probes(connection, likely), settings, true, None).await,
                Err(error) => Err(error.into()),
            };
            match answered {
                Ok(answered) if answered.is_empty() => eprintln!("detect: {} did not answer", device.address),
                Ok(answered) => found.extend(answered.into_iter().map(|(p, t)| (p, t, transport.clone()))),
                Err(error) => eprintln!("detect: {}: {error:#}", device.address),
            }
            // One module at a time: released before the next is connected.
            transport::close_bluetooth(CLOSE_WAIT).await;
        }
        anyhow::Ok(found)
    })?;
    if found.is_empty() {
        anyhow::bail!(
            "no Bluetooth BMS module answered (scanned {} s); a module that sleeps stops advertising: wake the BMS \
             (current, the button, or serial traffic) and scan again, or scan longer",
            duration.as_secs()
        );
    }
    print!("{}", config_block(&found));
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
    fn detect_args(flags: &[&str]) -> DetectArgs {
        let cli = Cli::try_parse_from(["bms_exporter", "detect"].iter().chain(flags)).unwrap();
        let Some(Command::Detect(detect)) = cli.command else { panic!("not detect") };
        detect
    }

    /// A scanned device with `name` advertising services fff0 (`uart`) and/or ff00 (`modbus`).
    fn heard(name: Option<&str>, uart: bool, modbus: bool) -> Advertised {
        Advertised {
            address: "11:22:33:44:55:66".to_owned(),
            name: name.map(str::to_owned),
            rssi: Some(-67),
            service_fff0: uart,
            service_ff00: modbus,
        }
    }

    #[test]
    fn modules_are_judged_by_service_and_name_and_everything_else_is_left_out() {
        assert_eq!(likely(&heard(None, true, false)), Some(Likely::Daly));
        assert_eq!(likely(&heard(Some("DALY-BMS-01"), false, false)), Some(Likely::Daly));
        assert_eq!(likely(&heard(None, false, true)), Some(Likely::DalyModbus));
        // ff00 or a DL-/JHB- name means a Modbus-style module even when it lists fff0 as well.
        assert_eq!(likely(&heard(None, true, true)), Some(Likely::DalyModbus));
        assert_eq!(likely(&heard(Some("DL-40D63C123456"), true, false)), Some(Likely::DalyModbus));
        assert_eq!(likely(&heard(Some("jhb-40d63c123456"), false, false)), Some(Likely::DalyModbus));
        assert_eq!(likely(&heard(Some("Galaxy Buds"), false, false)), None);
        assert_eq!(likely(&heard(None, false, false)), None);
        assert_eq!(
            scan_line(&heard(Some("DL-40D63C123456"), true, true), Likely::DalyModbus),
            "DL-40D63C123456 11:22:33:44:55:66 RSSI -67 dBm, probably daly-modbus, service fff0+ff00"
        );
        let mut quiet = heard(None, true, false);
        quiet.rssi = None;
        assert_eq!(
            scan_line(&quiet, Likely::Daly),
            "(no name) 11:22:33:44:55:66 RSSI unknown, probably daly (A5 through a UART dongle), service fff0"
        );
    }

    #[test]
    fn a_module_is_probed_for_its_likely_protocol_first_and_the_other_one_next() {
        let args = detect_args(&["--bluetooth-scan"]);
        assert_eq!(args.bluetooth_scan, Some(10), "the scan lasts 10 s unless told");
        assert_eq!(detect_args(&["--bluetooth-scan", "3", "--adapter", "hci1"]).bluetooth_scan, Some(3));
        let order = |likely| bluetooth_probes(&args.connection, likely).iter().map(|p| p.config).collect::<Vec<_>>();
        assert_eq!(order(Likely::Daly), ["daly: { address: uart }", "daly_modbus: { address: d2 }"]);
        assert_eq!(order(Likely::DalyModbus), ["daly_modbus: { address: d2 }", "daly: { address: uart }"]);
        // Over --bluetooth only what a module can carry is probed, and never the RS485 host address.
        let over_ble = detect_args(&["--bluetooth", "11:22:33:44:55:66"]);
        let configs: Vec<&str> = probes(&over_ble.connection).iter().map(|p| p.config).collect();
        assert_eq!(
            configs,
            ["daly: { address: uart }", "daly_modbus: { address: d2 }", "daly_modbus: { address: \"p81:1\" }"]
        );
        assert!(Cli::try_parse_from(["bms_exporter", "detect", "--bluetooth-scan", "--tcp", "127.0.0.1:1"]).is_err());
        assert!(Cli::try_parse_from(["bms_exporter", "detect", "--bluetooth-scan", "0"]).is_err());
        assert!(Cli::try_parse_from(["bms_exporter", "detect"]).is_err(), "a port or a scan is needed");
    }

    /// A link to a simulated Daly board (host 0x80 and 0x40 both answered), and every byte the board received.
    fn daly_board() -> (Link, tokio::task::JoinHandle<Vec<u8>>) {
        use crate::simulator::Responder as _;
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let (near, mut far) = tokio::io::duplex(4096);
        let task = tokio::spawn(async move {
            let mut bus = crate::simulator::daly::DalyBus::new(1, 8, 2, 3);
            let (mut received, mut pending, mut buf) = (Vec::new(), Vec::new(), [0u8; 256]);
            while let Ok(n) = far.read(&mut buf).await {
                if n == 0 {
                    break;
                }
                received.extend_from_slice(&buf[..n]);
                pending.extend_from_slice(&buf[..n]);
                while let Some(request) = bus.next_request(&mut pending) {
                    if let Some(response) = bus.respond(&request) {
                        far.write_all(&response.reply).await.unwrap();
                    }
                }
            }
            received
        });
        (Link::from_stream(near, "duplex"), task)
    }

    #[tokio::test]
    async fn a_bluetooth_module_is_probed_until_it_answers_and_a_wired_bus_for_every_protocol() {
        let args = detect_args(&["--bluetooth-scan"]);
        let settings = Settings { timeout: Duration::from_millis(50), retries: 0, ..Settings::default() };
        // A module that answered Daly A5 is not asked in the Modbus-style protocol as well.
        let (mut link, board) = daly_board();
        let found = run_probes(&mut link, bluetooth_probes(&args.connection, Likely::Daly), settings, true, None).await;
        let found: Vec<&str> = found.unwrap().iter().map(|(p, _)| p.config).collect();
        assert_eq!(found, ["daly: { address: uart }"]);
        drop(link);
        let received = board.await.unwrap();
        assert!(
            received.chunks(13).all(|frame| frame.len() == 13 && frame[0] == 0xA5),
            "only A5 requests were sent: {}",
            crate::protocol::to_hex(&received)
        );
        // A wired bus may hold boards of other protocols too: each is still asked.
        let (mut link, board) = daly_board();
        let wired = detect_args(&["--tcp", "127.0.0.1:8899"]);
        let found = run_probes(&mut link, probes(&wired.connection), settings, false, None).await.unwrap();
        assert_eq!(found.iter().map(|(p, _)| p.protocol).collect::<Vec<_>>(), [Protocol::Daly]);
        drop(link);
        let received = board.await.unwrap();
        assert!(received.chunks(13).any(|frame| frame[0] != 0xA5), "the other protocols were probed as well");
    }

    #[cfg(feature = "ble")]
    #[test]
    fn the_bluetooth_config_block_is_accepted_and_builds_the_probe_that_answered() {
        let args = detect_args(&["--bluetooth-scan"]);
        for likely in [Likely::Daly, Likely::DalyModbus] {
            for probe in bluetooth_probes(&args.connection, likely) {
                let transport = TransportSettings::Bluetooth(BluetoothSettings {
                    address: "12:34:56:78:90:12".to_owned(),
                    adapter: Some("hci1".to_owned()),
                    connect_timeout: transport::BLUETOOTH_CONNECT_TIMEOUT,
                });
                let exchange = format!("{:?}", probe.exchange);
                let (what, protocol) = (probe.what, probe.protocol);
                let text = config_block(&[(probe, "pack 1 52.20 V".to_owned(), transport.clone())]);
                assert!(text.contains("    bluetooth: 12:34:56:78:90:12\n    adapter: hci1\n"), "{text}");
                let config = crate::config::parse(&text, std::path::Path::new("detect.yaml"))
                    .unwrap_or_else(|e| panic!("{what}: {e}\n{text}"));
                let device = &config.devices[0];
                assert_eq!((device.protocol, &device.transport), (protocol, &transport), "{what}");
                assert_eq!(format!("{:?}", device.exchange()), exchange, "{what}");
            }
        }
    }
}
