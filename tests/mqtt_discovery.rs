//! Home Assistant's own code accepts the discovery configs of every MQTT layout: `scripts/ha-check-discovery.py`,
//! run by the Python of a venv with `homeassistant==2024.3.3` (the test command builds it at `target/ha`;
//! `BMS_HA_PYTHON` names another), validates each config with the component's discovery schema and renders its
//! templates against the states.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use bms_exporter::config::mqtt::{Broker, Layout, MqttConfig};
use bms_exporter::model::energy::PackEnergy;
use bms_exporter::model::{
    Alarm, AlarmSeverity, DeviceSnapshot, DigitalPort, LevelAlarm, LevelAlarmKind, PackSnapshot, PackState, SensorId,
    Temperature,
};
use bms_exporter::mqtt::{self, DeviceView, Message};
use bms_exporter::protocol::Protocol;
use serde_json::{Value, json};

use crate::util::venv_program_in;

/// Every layout; the match makes a new variant a compile error here until it is added to the list.
const LAYOUTS: [Layout; 3] = [Layout::Native, Layout::DalyBmsCli, Layout::Bmspace];

fn _every_layout_is_listed(layout: Layout) {
    match layout {
        Layout::Native | Layout::DalyBmsCli | Layout::Bmspace => {}
    }
}

fn config(layout: Layout, control: bool) -> MqttConfig {
    MqttConfig {
        control,
        zero_pad_number_cells: 2,
        zero_pad_number_packs: 2,
        ..MqttConfig::with_defaults(
            Broker { tls: false, host: "127.0.0.1".to_owned(), port: 1883 },
            "bms_exporter-test",
            layout,
        )
    }
}

/// A pack with everything a BMS can report: `cells` cells, probes plus MOSFET/ambient sensors, alarms, identity.
fn full_pack(device: &mut DeviceSnapshot, number: u8, cells: u16) -> &mut PackSnapshot {
    let p = device.pack_mut(number);
    p.voltage_volts = Some(52.8);
    p.current_amperes = Some(-12.3);
    p.state_of_charge_ratio = Some(0.619);
    p.state_of_health_ratio = Some(0.98);
    p.remaining_capacity_ampere_hours = Some(61.9);
    p.full_capacity_ampere_hours = Some(100.0);
    p.design_capacity_ampere_hours = Some(100.0);
    p.cycle_count = Some(42);
    p.state = Some(PackState::Discharging);
    p.charge_mosfet_enabled = Some(true);
    p.discharge_mosfet_enabled = Some(false);
    p.cell_count = Some(cells);
    p.temperature_sensor_count = Some(4);
    p.cell_volts = (0..cells).map(|i| Some(f64::from(3300 + i) / 1000.0)).collect();
    p.cell_balancing = (0..cells).map(|i| i == 3).collect();
    p.temperatures = (1..=4)
        .map(|n| Temperature { sensor: SensorId::Probe(n), celsius: 20.0 + f64::from(n) / 2.0 })
        .chain([
            Temperature { sensor: SensorId::Mosfet, celsius: 31.2 },
            Temperature { sensor: SensorId::Ambient, celsius: 18.4 },
        ])
        .collect();
    p.set_alarms([
        Alarm::new("cell_voltage_high_l1", AlarmSeverity::Warning, true),
        Alarm::new("short_circuit", AlarmSeverity::Protection, false),
    ]);
    p.info.model = Some("16S 100A".to_owned());
    p.info.firmware_version = Some("1.2.3".to_owned());
    p.info.serial_number = Some(format!("SN-{number}"));
    p
}

fn daly() -> DeviceSnapshot {
    let mut device = DeviceSnapshot::default();
    let p = full_pack(&mut device, 1, 16);
    p.charger_connected = Some(false);
    p.load_connected = Some(true);
    p.balancing_active = Some(true);
    p.digital_io = vec![DigitalPort { port: "di1", active: true }];
    device
}

fn pace() -> DeviceSnapshot {
    let mut device = DeviceSnapshot::default();
    full_pack(&mut device, 1, 16);
    let p = full_pack(&mut device, 2, 16);
    p.cell_alarms = vec![LevelAlarm { index: 4, kind: LevelAlarmKind::AboveUpperLimit }];
    p.temperature_alarms = vec![LevelAlarm { index: 2, kind: LevelAlarmKind::BelowLowerLimit }];
    device
}

fn energy(pack: u8) -> PackEnergy {
    PackEnergy {
        pack,
        charged_joules: 12_345_678.9,
        discharged_joules: 9_876_543.2,
        charged_ampere_hours: 64.3,
        discharged_ampere_hours: 51.4,
    }
}

/// The Python of the Home Assistant venv: `BMS_HA_PYTHON`, else the one the test command builds at `target/ha`;
/// the test fails loudly when it is missing or cannot import homeassistant.
fn ha_python() -> PathBuf {
    venv_program_in("target/ha", "BMS_HA_PYTHON", "python", Some("homeassistant"), "homeassistant==2024.3.3")
}

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("bms-ha-discovery-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// The messages as the checker's JSON lines.
fn write_lines(path: &Path, messages: &[Message]) {
    let text: String = messages
        .iter()
        .map(|m| json!({"topic": m.topic, "payload": m.payload, "retain": m.retain}).to_string() + "\n")
        .collect();
    std::fs::write(path, text).unwrap();
}

fn check(python: &Path, file: &Path, args: &[&str]) -> Output {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("scripts/ha-check-discovery.py");
    Command::new(python).arg(script).arg(file).args(args).output().unwrap()
}

fn text(output: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr))
}

/// Discovery (and state) of both devices in one layout, with control on or off.
fn render(layout: Layout, control: bool) -> (Vec<Message>, Vec<Message>) {
    let config = config(layout, control);
    let (daly, pace) = (daly(), pace());
    let energy = [energy(1), energy(2)];
    let devices = [
        DeviceView { name: "garage", protocol: Protocol::Daly, up: true, values: &daly, energy: &energy[..1] },
        DeviceView { name: "rack", protocol: Protocol::Pace, up: true, values: &pace, energy: &energy },
    ];
    // As the publisher sends them: the exporter's own device first, then each device's; the birth is state too.
    // The compatibility layouts publish one device under their base topic (the config refuses more).
    let devices = match layout {
        Layout::Native => &devices[..],
        Layout::DalyBmsCli => &devices[..1],
        Layout::Bmspace => &devices[1..],
    };
    let discovery =
        mqtt::exporter_discovery(&config).into_iter().chain(devices.iter().flat_map(|d| mqtt::discovery(&config, d)));
    let state = mqtt::birth(&config).into_iter().chain(devices.iter().flat_map(|d| mqtt::state(&config, d)));
    (discovery.collect(), state.collect())
}

#[test]
fn home_assistant_accepts_the_discovery_of_every_layout() {
    let python = ha_python();
    let dir = scratch("all");
    for layout in LAYOUTS {
        for control in [false, true] {
            let (discovery, state) = render(layout, control);
            if layout == Layout::Native {
                assert!(discovery.len() > 100, "native: {} discovery messages", discovery.len());
                assert!(discovery.iter().any(|m| m.topic.contains("/switch/") && !m.payload.is_empty()) == control);
            }
            let file = dir.join(format!("{}-{control}.jsonl", layout.as_str()));
            write_lines(&file, &discovery.iter().chain(&state).cloned().collect::<Vec<_>>());
            // The native states are complete, so every native entity must find its value in them.
            let args: &[&str] = if layout == Layout::Native { &["--require-values"] } else { &[] };
            let out = check(&python, &file, args);
            assert!(
                out.status.success(),
                "Home Assistant refuses {} discovery (control {control}):\n{}",
                layout.as_str(),
                text(&out)
            );
            eprintln!("{} (control {control}): {}", layout.as_str(), text(&out).trim());
        }
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn values_missing_from_a_state_render_unknown_without_template_warnings() {
    let python = ha_python();
    let dir = scratch("missing");
    let (discovery, state) = render(Layout::Native, true);
    // The same state topics, each carrying a pack that reports nothing: every template meets a missing key.
    let empty: Vec<Message> = state
        .iter()
        .filter(|m| m.topic.ends_with("/state"))
        .map(|m| {
            let pack: Value = serde_json::from_str(&m.payload).unwrap();
            Message::new(m.topic.clone(), json!({"pack": pack["pack"], "online": true}).to_string())
        })
        .collect();
    assert_eq!(empty.len(), 3);
    let file = dir.join("missing.jsonl");
    write_lines(&file, &discovery.into_iter().chain(empty).collect::<Vec<_>>());
    let out = check(&python, &file, &[]);
    assert!(out.status.success(), "a missing value must become unknown, quietly:\n{}", text(&out));
    // And the checker does see them as unknown: demanding values fails for every entity.
    let out = check(&python, &file, &["--require-values"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).lines().filter(|l| l.contains("renders unknown")).count() > 100, "{}", text(&out));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn the_checker_fails_on_a_wrong_unit_a_typo_and_a_template_that_finds_nothing() {
    let python = ha_python();
    let dir = scratch("bad");
    let (discovery, state) = render(Layout::Native, false);
    let voltage = discovery.iter().find(|m| m.topic.ends_with("/bms_exporter_garage/01_voltage/config")).unwrap();
    let mut good: Value = serde_json::from_str(&voltage.payload).unwrap();
    let mut bad = Vec::new();
    let mut variant = |field: &str, change: &dyn Fn(&mut Value)| {
        let mut payload = good.clone();
        payload["unique_id"] = json!(format!("bad_{field}"));
        payload["object_id"] = json!(format!("bad_{field}"));
        change(&mut payload);
        let topic = format!("homeassistant/sensor/bad/{field}/config");
        bad.push(Message::retained(topic, payload.to_string()));
    };
    variant("unit", &|p| p["unit_of_measurement"] = json!("kWh"));
    variant("typo", &|p| p["unit_of_measurment"] = json!("V"));
    variant("template", &|p| p["value_template"] = json!("{{ value_json.voltage | default(none) }}"));
    good["unique_id"] = json!("bad_unretained");
    let lines: Vec<Message> = bad
        .into_iter()
        .chain([Message::new("homeassistant/sensor/bad/unretained/config", good.to_string())])
        .chain(state)
        .collect();
    let file = dir.join("bad.jsonl");
    write_lines(&file, &lines);
    let out = check(&python, &file, &["--require-values"]);
    let report = text(&out);
    assert_eq!(out.status.code(), Some(1), "{report}");
    for (topic, reason) in [
        ("homeassistant/sensor/bad/unit/config", "'kWh' is not a valid unit for the device class 'voltage'"),
        ("homeassistant/sensor/bad/typo/config", "unit_of_measurment"),
        ("homeassistant/sensor/bad/template/config", "renders unknown"),
        ("homeassistant/sensor/bad/unretained/config", "not retained"),
    ] {
        assert!(
            report.lines().any(|l| l.starts_with(topic) && l.contains(reason)),
            "no failure '{reason}' for {topic} in:\n{report}"
        );
    }
    std::fs::remove_dir_all(&dir).unwrap();
}
