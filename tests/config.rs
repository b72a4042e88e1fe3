//! The configuration file: every `examples/*.yaml` loads and resolves to what it says, every file under
//! `tests/fixtures/config/bad/` fails with exactly the located message next to it, `config check` behaves as
//! documented, hostile input is refused without a panic, and a loaded config polls a real simulator.

use std::path::{Path, PathBuf};
use std::time::Duration;

use bms_exporter::config::address::ProtocolOptions;
use bms_exporter::config::mqtt::{Broker, Discovery, Layout, MqttConfig, MqttTls};
use bms_exporter::config::{self, Config, ConfigError, Defaults, MAX_FILE_BYTES, TCP_CONNECT_TIMEOUT};
use bms_exporter::model::CurrentSign;
use bms_exporter::protocol::Protocol;
use bms_exporter::protocol::daly::Address;
use bms_exporter::protocol::daly_modbus::Map;
use bms_exporter::protocol::pace::exchange::PackSelection;
use bms_exporter::transport::{Parity, SerialSettings, TcpSettings, TransportSettings};

use crate::util::{Simulator, fixture};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Loads `examples/NAME` through `load`, the way the exporter will.
fn example(name: &str) -> Config {
    let path = root().join("examples").join(name);
    config::load(&path).unwrap_or_else(|e| panic!("{e}"))
}

fn serial(path: &str, baud: u32, parity: Parity) -> TransportSettings {
    TransportSettings::Serial(SerialSettings { path: path.into(), baud, parity })
}

fn tcp(address: &str) -> TransportSettings {
    TransportSettings::Tcp(TcpSettings { address: address.to_owned(), connect_timeout: TCP_CONNECT_TIMEOUT })
}

/// The error text of `text` parsed as if it were the file `name`.
fn error_of(text: &str, name: &str) -> String {
    match config::parse(text, Path::new(name)) {
        Ok(config) => panic!("{name} was accepted: {config:?}"),
        Err(error) => error.to_string(),
    }
}

#[test]
fn every_example_file_loads() {
    let mut names: Vec<PathBuf> = std::fs::read_dir(root().join("examples"))
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    names.sort();
    assert!(names.len() >= 7, "{names:?}");
    for path in names {
        let config = config::load(&path).unwrap_or_else(|e| panic!("{e}"));
        assert!(!config.devices.is_empty(), "{}", path.display());
        assert_eq!(config.buses().iter().map(|b| b.devices.len()).sum::<usize>(), config.devices.len());
    }
}

#[test]
fn the_full_example_spells_out_the_defaults_and_one_device_per_protocol() {
    let config = example("config.yaml");
    assert_eq!(config.defaults, Defaults::default());
    assert_eq!(
        config.defaults,
        Defaults {
            timeout: Duration::from_secs(1),
            retries: 3,
            request_gap: Duration::from_millis(50),
            max_age: Duration::from_secs(5),
            stale_after: Duration::from_secs(60),
        }
    );
    let protocols: Vec<Protocol> = config.devices.iter().map(|d| d.protocol).collect();
    assert_eq!(protocols, [Protocol::Daly, Protocol::DalyModbus, Protocol::Sinowealth, Protocol::Pace]);
    let house = config.device("house").unwrap();
    assert_eq!(house.transport, serial("/dev/ttyUSB0", 9600, Parity::None));
    assert_eq!(
        house.options,
        ProtocolOptions::Daly { addresses: vec![Address::Rs485], current_sign: CurrentSign::Auto }
    );
    assert_eq!(config.device("garage").unwrap().transport, tcp("192.168.1.60:8899"));
    assert_eq!(
        config.device("rack").unwrap().options,
        ProtocolOptions::Pace { adr: 1, packs: PackSelection::All, version: 0x25 }
    );
    assert_eq!(config.buses().len(), 4);
}

#[test]
fn daly_boards_on_one_port_become_one_bus_polled_in_file_order() {
    let config = example("daly-boards-rs485.yaml");
    assert_eq!(config.defaults.request_gap, Duration::from_millis(120));
    assert_eq!(config.defaults.timeout, Duration::from_secs(1));
    let a = config.device("bank-a").unwrap();
    assert_eq!(
        a.options,
        ProtocolOptions::Daly {
            addresses: vec![Address::Board(1), Address::Board(2)],
            current_sign: CurrentSign::Auto
        }
    );
    let b = config.device("bank-b").unwrap();
    assert_eq!(
        b.options,
        ProtocolOptions::Daly {
            addresses: vec![Address::Board(3), Address::Board(4)],
            current_sign: CurrentSign::DischargePositive
        }
    );
    let buses = config.buses();
    assert_eq!(buses.len(), 1);
    let bus = &buses[0];
    assert_eq!(bus.transport, serial("/dev/ttyUSB0", 9600, Parity::None));
    assert_eq!(bus.settings.request_gap, Duration::from_millis(120));
    assert_eq!(bus.settings.timeout, Duration::from_secs(1));
    assert_eq!(bus.settings.retries, 3);
    let names: Vec<&str> = bus.devices.iter().map(|d| d.name.as_str()).collect();
    assert_eq!(names, ["bank-a", "bank-b", "spare"]);
    assert!(bus.devices.iter().all(|d| d.exchange.protocol() == Protocol::Daly));
    assert!(bus.devices.iter().all(|d| d.sections == bms_exporter::model::Sections::all()));
}

#[test]
fn the_single_device_examples_resolve_their_transport_and_options() {
    let daly = example("daly-serial.yaml");
    assert_eq!(daly.devices[0].name, "house");
    assert_eq!(daly.devices[0].transport, serial("/dev/ttyUSB0", 9600, Parity::None));

    let sino = example("sinowealth-serial.yaml");
    assert_eq!(sino.devices[0].options, ProtocolOptions::Sinowealth);

    let pace = example("pace-tcp.yaml");
    assert_eq!(pace.devices[0].transport, tcp("192.168.1.50:8899"));
    // A device without its own timeout takes the default's.
    assert_eq!(pace.devices[0].timeout, Duration::from_secs(2));
    assert_eq!(pace.buses()[0].settings.timeout, Duration::from_secs(2));

    let modbus = example("daly-modbus-tcp.yaml");
    assert_eq!(modbus.devices[0].protocol, Protocol::DalyModbus);
    assert_eq!(
        modbus.devices[0].options,
        ProtocolOptions::DalyModbus { map: Map::p81(2).unwrap(), current_sign: CurrentSign::Auto }
    );
    assert_eq!(modbus.devices[0].transport, tcp("10.0.0.7:502"));
}

#[test]
fn the_mqtt_example_spells_out_the_mqtt_defaults_and_config_check_names_the_broker() {
    let config = example("mqtt-home-assistant.yaml");
    let mqtt = config.mqtt.expect("the example's mqtt: block");
    assert_eq!(mqtt.broker, Broker { tls: false, host: "192.168.1.10".to_owned(), port: 1883 });
    assert!(mqtt.client_id.starts_with("bms_exporter"), "{}", mqtt.client_id);
    assert_eq!(mqtt.username.as_deref(), Some("bms"));
    assert_eq!(mqtt.password_file, Some(PathBuf::from("/etc/bms_exporter/mqtt.password")));
    assert_eq!(mqtt.tls, MqttTls::default());
    assert_eq!(mqtt.topic_prefix, "bms");
    assert_eq!(mqtt.interval, Duration::from_secs(10));
    assert_eq!(mqtt.qos, 1);
    assert_eq!(mqtt.layout, Layout::Native);
    assert_eq!(mqtt.discovery, Discovery { enabled: true, prefix: "homeassistant".to_owned() });
    assert!(!mqtt.control);
    assert_eq!((mqtt.zero_pad_number_cells, mqtt.zero_pad_number_packs), (0, 0));
    // Only the keys the defaults cannot supply differ from a block holding nothing but the broker.
    let bare = config::parse(
        "devices:\n  - name: house\n    protocol: daly\n    serial: /dev/ttyUSB0\nmqtt:\n  broker: mqtt://192.168.1.10\n",
        Path::new("bare.yaml"),
    )
    .unwrap_or_else(|e| panic!("{e}"))
    .mqtt
    .unwrap();
    assert_eq!(MqttConfig { username: mqtt.username.clone(), password_file: mqtt.password_file.clone(), ..bare }, mqtt);
    assert!(example("config.yaml").mqtt.is_none(), "the full example keeps its mqtt: block commented out");

    let out = assert_cmd::Command::new(env!("CARGO_BIN_EXE_bms_exporter"))
        .current_dir(root())
        .args(["config", "check", "examples/mqtt-home-assistant.yaml"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "examples/mqtt-home-assistant.yaml: ok: 1 device on 1 bus; MQTT to mqtt://192.168.1.10:1883 in the native \
         layout\n"
    );
}

#[test]
fn pace_masters_on_one_port_share_a_bus_with_their_own_versions_and_packs() {
    let config = example("pace-multipack-rs485.yaml");
    assert_eq!(config.defaults.request_gap, Duration::from_millis(200));
    assert_eq!(config.defaults.max_age, Duration::from_secs(10));
    assert_eq!(
        config.device("rack-a").unwrap().options,
        ProtocolOptions::Pace { adr: 1, packs: PackSelection::List(vec![1, 2, 3]), version: 0x25 }
    );
    assert_eq!(
        config.device("rack-b").unwrap().options,
        ProtocolOptions::Pace { adr: 2, packs: PackSelection::All, version: 0x20 }
    );
    assert_eq!(config.buses().len(), 1);
}

#[test]
fn durations_per_device_overrides_and_odd_spellings_resolve() {
    let text = "\
defaults:
  timeout: 1.5s
  request_gap: 0.2s
  max_age: 2m
  stale_after: 1h
devices:
  - name: a_1
    protocol: daly_modbus
    tcp: '[fe80::1]:8899'
    timeout: 250ms
    retries: 0
  - name: b-2
    protocol: daly
    serial: /dev/ttyS1
    baud: 19200
    parity: even
    daly: { address: 3-5 }
";
    let config = config::parse(text, Path::new("inline.yaml")).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(config.defaults.timeout, Duration::from_millis(1500));
    assert_eq!(config.defaults.request_gap, Duration::from_millis(200));
    assert_eq!(config.defaults.max_age, Duration::from_secs(120));
    assert_eq!(config.defaults.stale_after, Duration::from_secs(3600));
    let a = &config.devices[0];
    assert_eq!((a.protocol, a.timeout, a.retries), (Protocol::DalyModbus, Duration::from_millis(250), 0));
    assert_eq!(a.transport, tcp("[fe80::1]:8899"));
    let b = &config.devices[1];
    assert_eq!(b.transport, serial("/dev/ttyS1", 19200, Parity::Even));
    assert_eq!((b.timeout, b.retries), (Duration::from_millis(1500), 3));
    assert_eq!(
        b.options,
        ProtocolOptions::Daly {
            addresses: vec![Address::Board(3), Address::Board(4), Address::Board(5)],
            current_sign: CurrentSign::Auto
        }
    );
}

#[cfg(feature = "ble")]
fn bluetooth(address: &str, adapter: Option<&str>) -> TransportSettings {
    TransportSettings::Bluetooth(bms_exporter::transport::BluetoothSettings {
        address: address.to_owned(),
        adapter: adapter.map(str::to_owned),
        connect_timeout: bms_exporter::transport::BLUETOOTH_CONNECT_TIMEOUT,
    })
}

/// Two dongles, one module listed twice (two names for one connection) and a wired board.
const BLUETOOTH_DEVICES: &str = "\
devices:
  - name: garage
    protocol: daly
    bluetooth: aa:bb:cc:dd:ee:ff
  - name: shed
    protocol: daly-modbus
    bluetooth: 12:34:56:78:90:12
    adapter: hci1
  - name: shed-again
    protocol: daly-modbus
    bluetooth: 12:34:56:78:90:12
    adapter: hci1
    daly_modbus: { address: p81 }
  - name: house
    protocol: daly
    serial: /dev/ttyUSB0
";

#[cfg(feature = "ble")]
#[test]
fn bluetooth_devices_resolve_with_their_address_adapter_uart_default_and_longer_timeout() {
    let config = config::parse(BLUETOOTH_DEVICES, Path::new("ble.yaml")).unwrap_or_else(|e| panic!("{e}"));
    let garage = config.device("garage").unwrap();
    // Upper case whatever the file wrote, and an all-digit address stays text (not a YAML 1.1 sexagesimal).
    assert_eq!(garage.transport, bluetooth("AA:BB:CC:DD:EE:FF", None));
    assert_eq!(garage.transport.describe(), "bluetooth AA:BB:CC:DD:EE:FF");
    assert_eq!(garage.transport.kind(), "bluetooth");
    // A UART dongle forwards the UART host address; the wired default would go unanswered.
    assert_eq!(
        garage.options,
        ProtocolOptions::Daly { addresses: vec![Address::Uart], current_sign: CurrentSign::Auto }
    );
    assert_eq!((garage.timeout, garage.retries), (config::BLUETOOTH_TIMEOUT, 3));
    assert_eq!(config::BLUETOOTH_TIMEOUT, Duration::from_secs(5));
    let shed = config.device("shed").unwrap();
    assert_eq!(shed.transport, bluetooth("12:34:56:78:90:12", Some("hci1")));
    assert_eq!(shed.transport.describe(), "bluetooth 12:34:56:78:90:12 (hci1)");
    let house = config.device("house").unwrap();
    assert_eq!(house.timeout, Duration::from_secs(1), "wired devices keep the general default");
    assert_eq!(
        house.options,
        ProtocolOptions::Daly { addresses: vec![Address::Rs485], current_sign: CurrentSign::Auto }
    );
    // One bus per module address: the two entries of one module share its connection.
    let buses = config.buses();
    let per_bus: Vec<Vec<&str>> = buses.iter().map(|b| b.devices.iter().map(|d| d.name.as_str()).collect()).collect();
    assert_eq!(per_bus, [vec!["garage"], vec!["shed", "shed-again"], vec!["house"]]);
    assert_eq!(config.bus_count(), 3);
    assert_eq!(buses[0].settings.timeout, config::BLUETOOTH_TIMEOUT);
}

#[cfg(feature = "ble")]
#[test]
fn a_written_timeout_wins_over_the_bluetooth_default() {
    let with_defaults = format!("defaults:\n  timeout: 2s\n{BLUETOOTH_DEVICES}");
    let config = config::parse(&with_defaults, Path::new("ble.yaml")).unwrap_or_else(|e| panic!("{e}"));
    assert!(config.devices.iter().all(|d| d.timeout == Duration::from_secs(2)), "{config:?}");
    let own = "devices:\n  - name: g\n    protocol: daly\n    bluetooth: AA:BB:CC:DD:EE:FF\n    timeout: 800ms\n";
    let config = config::parse(own, Path::new("ble.yaml")).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(config.devices[0].timeout, Duration::from_millis(800));
}

#[cfg(feature = "ble")]
#[test]
fn one_module_through_two_adapters_is_refused_at_the_second_adapter() {
    let text =
        BLUETOOTH_DEVICES.replacen("    adapter: hci1\n    daly_modbus", "    adapter: hci0\n    daly_modbus", 1);
    assert_eq!(
        error_of(&text, "ble.yaml"),
        "ble.yaml:12:5: devices[2].adapter: Bluetooth module 12:34:56:78:90:12 is reached through hci1 for \
         devices[1] but through hci0 here; one module has one connection, through one adapter"
    );
}

#[cfg(not(feature = "ble"))]
#[test]
fn without_the_ble_feature_a_bluetooth_device_is_refused_at_its_key() {
    assert_eq!(
        error_of(BLUETOOTH_DEVICES, "ble.yaml"),
        "ble.yaml:4:5: devices[0].bluetooth: this bms_exporter was built without the ble feature (Bluetooth LE); \
         rebuild it with default features, or reach the device through serial: or tcp:"
    );
}

/// The configuration mistakes the README and the issues name; each must keep a fixture so none can silently lose its
/// test.
const REQUIRED_BAD: [&str; 24] = [
    "unknown-key",
    "bad-duration",
    "duplicate-name",
    "bad-name",
    "two-transports",
    "no-transport",
    "unknown-protocol",
    "wrong-protocol-block",
    "bad-address",
    "bad-baud",
    "bad-parity",
    "bluetooth",
    "bluetooth-adapter",
    "adapter-without-bluetooth",
    "baud-on-bluetooth",
    "mqtt",
    "mqtt-password",
    "mqtt-broker",
    "mqtt-qos",
    "mqtt-control-layout",
    "mqtt-layout-devices",
    "serial-baud-conflict",
    "serial-parity-conflict",
    "syntax-error",
];

#[test]
fn every_bad_fixture_fails_with_its_expected_file_line_column_key_and_message() {
    let dir = fixture("config/bad");
    let mut checked = Vec::new();
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let Some(stem) = path.file_stem().and_then(|s| s.to_str()).map(str::to_owned) else { continue };
        match path.extension().and_then(|e| e.to_str()) {
            Some("yaml") => {}
            Some("expected") => {
                assert!(dir.join(format!("{stem}.yaml")).exists(), "{stem}.expected has no {stem}.yaml");
                continue;
            }
            _ => panic!("unexpected file {}", path.display()),
        }
        let name = format!("tests/fixtures/config/bad/{stem}.yaml");
        let expected_file = dir.join(format!("{stem}.expected"));
        let expected = std::fs::read_to_string(&expected_file)
            .unwrap_or_else(|e| panic!("{}: {e}", expected_file.display()))
            .trim_end()
            .to_owned();
        // Both entry points report the same thing: parse() for the text, load() for the file.
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(error_of(&text, &name), expected, "{stem} via parse");
        let loaded = config::load(&path).unwrap_err().to_string();
        assert_eq!(loaded, expected.replacen(&name, &path.display().to_string(), 1), "{stem} via load");
        // Every message is FILE:LINE:COLUMN: then the rest, on one line.
        let rest = expected.strip_prefix(&format!("{name}:")).unwrap();
        let mut parts = rest.splitn(3, ':');
        let line: u64 = parts.next().unwrap().parse().unwrap();
        let column: u64 = parts.next().unwrap().parse().unwrap();
        assert!(line >= 1 && column >= 1, "{expected}");
        assert!(!expected.contains('\n'), "{expected}");
        checked.push(stem);
    }
    for required in REQUIRED_BAD {
        assert!(checked.iter().any(|c| c == required), "no fixture for {required}");
    }
}

#[test]
fn the_issue_example_error_reads_exactly_as_promised() {
    let text = "\
devices:
  - name: house
    protocol: daly
    serial: /dev/ttyUSB0
  - name: garage
    protocol: daly
    serial: /dev/ttyUSB1
    daly:
      address: \"0x99\"
";
    assert_eq!(
        error_of(text, "examples/x.yaml"),
        "examples/x.yaml:9:16: devices[1].daly.address: \"0x99\" is not rs485, uart or a board number 1–16"
    );
}

#[test]
fn the_error_carries_its_parts_for_callers_that_format_their_own() {
    let error = config::parse("devices:\n  - name: Bad\n", Path::new("c.yaml")).unwrap_err();
    let located = error.located().unwrap();
    assert_eq!((located.line, located.column, located.path.as_str()), (2, 11, "devices[0].name"));
    assert_eq!(located.file, Path::new("c.yaml"));
    assert_eq!(error.kind(), "invalid");
    let missing = config::load(Path::new("/nonexistent/bms.yaml")).unwrap_err();
    assert!(matches!(missing, ConfigError::Read { .. }), "{missing:?}");
    assert!(missing.to_string().starts_with("/nonexistent/bms.yaml: cannot read"), "{missing}");
}

#[test]
fn hostile_files_are_refused_with_a_located_error_and_no_panic() {
    // An alias bomb under a key whose contents are skipped unread (it is refused whatever it holds): each level
    // doubles, 2^30 expanded.
    let mut bomb = String::from(
        "devices:\n  - name: ok\n    protocol: daly\n    serial: /dev/ttyUSB0\nmqtt:\n  broker: mqtt://b\n  password:\n",
    );
    bomb.push_str("    a0: &a0 [x, x]\n");
    for i in 1..30 {
        bomb.push_str(&format!("    a{i}: &a{i} [*a{p}, *a{p}]\n", p = i - 1));
    }
    let error = error_of(&bomb, "bomb.yaml");
    assert!(error.starts_with("bomb.yaml:") && error.contains("too large or too complex"), "{error}");

    assert_eq!(error_of("", "empty.yaml"), "empty.yaml:1:1: devices: missing or empty: list at least one device");

    let deep = format!("devices: {}{}\n", "[".repeat(500), "]".repeat(500));
    let error = error_of(&deep, "deep.yaml");
    assert!(error.starts_with("deep.yaml:1:"), "{error}");

    let huge = format!("# {}\n", "x".repeat(MAX_FILE_BYTES));
    assert_eq!(error_of(&huge, "huge.yaml"), "huge.yaml:1:1: the file is larger than 1024 KiB");

    let two_docs = "devices: []\n---\ndevices: []\n";
    assert_eq!(
        error_of(two_docs, "two.yaml"),
        "two.yaml:2:1: more than one YAML document (---): a configuration is one document"
    );

    let dir = crate::util::scratch("config-binary");
    let binary = dir.join("binary.yaml");
    std::fs::write(&binary, b"devices:\n  - name: \xff\xfe\n").unwrap();
    let error = config::load(&binary).unwrap_err().to_string();
    assert_eq!(error, format!("{}:2:11: the file is not UTF-8 text", binary.display()));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn config_check_reports_ok_with_counts_or_the_located_error() {
    let good = root().join("examples/daly-boards-rs485.yaml");
    let out = assert_cmd::Command::new(env!("CARGO_BIN_EXE_bms_exporter"))
        .args(["config", "check"])
        .arg(&good)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout), format!("{}: ok: 3 devices on 1 bus\n", good.display()));
    assert!(out.stderr.is_empty());

    let out = assert_cmd::Command::new(env!("CARGO_BIN_EXE_bms_exporter"))
        .current_dir(root())
        .args(["config", "check", "tests/fixtures/config/bad/two-transports.yaml"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(out.stdout.is_empty());
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        "tests/fixtures/config/bad/two-transports.yaml:5:5: devices[0].tcp: a device has one transport, and \
         serial: is already given; remove one of them\n"
    );
}

#[test]
fn the_config_file_from_the_full_example_counts_its_buses_in_config_check() {
    let out = assert_cmd::Command::new(env!("CARGO_BIN_EXE_bms_exporter"))
        .current_dir(root())
        .args(["config", "check", "examples/config.yaml"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "examples/config.yaml: ok: 4 devices on 4 buses\n");
}

#[test]
fn two_configured_daly_boards_on_one_tcp_bus_poll_the_simulator() {
    let sim = Simulator::tcp(
        "config-boards",
        &["--protocol", "daly", "--boards", "2", "--cells", "8", "--time-scale", "0", "--latency-ms", "1"],
    );
    let addr = sim.addr.clone().unwrap();
    let text = format!(
        "devices:\n  - name: one\n    protocol: daly\n    tcp: {addr}\n    daly: {{ address: 1 }}\n  - name: two\n    \
         protocol: daly\n    tcp: {addr}\n    daly: {{ address: 2 }}\n"
    );
    let config = config::parse(&text, Path::new("sim.yaml")).unwrap_or_else(|e| panic!("{e}"));
    let mut buses = config.buses();
    assert_eq!(buses.len(), 1);
    let spec = buses.remove(0);
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let truth = sim.truth();
    runtime.block_on(async move {
        let bus = bms_exporter::poller::spawn(spec);
        assert_eq!(bus.devices(), ["one", "two"]);
        for (device, board) in [(0usize, 1u8), (1, 2)] {
            let status = bus.snapshot(device, Duration::ZERO).await.unwrap();
            assert!(status.last.failures.is_empty(), "{:?}", status.last.failures);
            let pack = status.last.device.packs.iter().find(|p| p.online).unwrap();
            assert_eq!(pack.pack, board);
            let want = &truth.packs[usize::from(board) - 1];
            assert_eq!(pack.cell_volts.len(), want.cell_volts.len());
            for (got, want) in pack.cell_volts.iter().zip(&want.cell_volts) {
                crate::util::assert_close("cell", got.unwrap(), want.unwrap(), 0.0005);
            }
        }
    });
}

#[test]
fn independent_mistakes_are_all_reported_in_one_run_each_with_its_place() {
    // Two devices each with an unknown key, a third with a list for a scalar: serde stops at the first; all three
    // come out, in file order, each FILE:LINE:COLUMN: PATH: MESSAGE on a line of its own.
    let text = "\
devices:
  - name: house
    protocol: daly
    serial: /dev/ttyUSB0
    bogus: 1
  - name: garage
    protocol: pace
    tcp: 192.168.1.50:8899
    pace:
      address: 1
      colour: red
      packs: [1, 2]
  - name: shed
    protocol: daly
    tcp: 192.168.1.51:8899
    baud: [1, 2]
";
    let error = config::parse(text, Path::new("multi.yaml")).unwrap_err();
    assert_eq!(
        error.to_string(),
        "multi.yaml:5:5: devices[0].bogus: unknown key \"bogus\"; expected one of: name, protocol, serial, tcp, \
         bluetooth, adapter, baud, parity, timeout, retries, daly, daly_modbus, sinowealth, pace\n\
         multi.yaml:11:7: devices[1].pace.colour: unknown key \"colour\"; expected one of: address, packs, version\n\
         multi.yaml:16:11: devices[2].baud: expected a single value, not a list or mapping"
    );
    assert_eq!(error.all_located().len(), 3);
    assert_eq!(error.located().map(|l| (l.line, l.column)), Some((5, 5)), "the first stays the first");

    // Stage two too: a bad default and two bad devices, each on its own; the duplicate name of a fourth device
    // is judged only once the devices before it resolve (it would be a consequence of their mistakes).
    let text = "\
defaults:
  timeout: 1parsec
devices:
  - name: house
    protocol: daly
    serial: /dev/ttyUSB0
    baud: fast
  - name: garage
    protocol: pace
    tcp: 192.168.1.50:8899
    pace: { packs: [17] }
  - name: house
    protocol: daly
    tcp: 192.168.1.51:8899
";
    let lines: Vec<String> = error_of(text, "multi2.yaml").lines().map(str::to_owned).collect();
    assert_eq!(lines.len(), 3, "{lines:?}");
    assert!(lines[0].starts_with("multi2.yaml:2:12: defaults.timeout: \"1parsec\" is not a duration"), "{lines:?}");
    assert!(lines[1].starts_with("multi2.yaml:7:11: devices[0].baud: \"fast\" is not a baud rate"), "{lines:?}");
    assert_eq!(lines[2], "multi2.yaml:11:21: devices[1].pace.packs[0]: \"17\" is not all or a pack number 1–16");

    // One mistake inside one device: only the first, as before (later checks of a device build on earlier ones).
    let one =
        "devices:\n  - name: house\n    protocol: daly\n    serial: /dev/ttyUSB0\n    baud: fast\n    parity: maybe\n";
    assert_eq!(error_of(one, "one.yaml").lines().count(), 1);
    // And through the binary, as a user runs it.
    let dir = crate::util::Scratch::new("config-multi");
    let file = dir.write("multi.yaml", text);
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_bms_exporter"))
        .args(["config", "check", file.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.lines().filter(|l| l.starts_with(file.to_str().unwrap())).count(), 3, "{stderr}");
}
