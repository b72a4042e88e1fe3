//! `mqtt cleanup` against a real mosquitto (a fresh broker per test, so retained messages never leak between
//! tests): the library function removes the discovery and availability of unconfigured devices only, and the
//! command line refuses a configuration without an mqtt: block (tests/tests.rs `mod mqtt_cleanup`).

use std::collections::BTreeSet;
use std::process::Command as Process;
use std::time::Duration;

use bms_exporter::config::mqtt::{Broker, Layout, MqttConfig};
use bms_exporter::mqtt::cleanup;

use crate::mqtt_util::Mosquitto;
use crate::util::{Scratch, free_port};

/// The topics holding a retained message under `filters`.
fn retained_topics(broker: &Mosquitto, filters: &[&str]) -> BTreeSet<String> {
    broker.retained(filters).into_iter().map(|m| m.topic).collect()
}

/// The native layout on the broker at 127.0.0.1:`port`, discovery under `homeassistant`, state under `bms`.
fn mqtt_config(port: u16) -> MqttConfig {
    MqttConfig::with_defaults(
        Broker { tls: false, host: "127.0.0.1".to_owned(), port },
        "bms_exporter-cleanup-test",
        Layout::Native,
    )
}

const OLD: [&str; 3] = [
    "homeassistant/sensor/bms_exporter_old/old_01_voltage/config",
    "homeassistant/binary_sensor/bms_exporter_old/old_01_charge_mosfet/config",
    "homeassistant/sensor/bms_exporter_old/config",
];
const KEPT: [&str; 2] = [
    "homeassistant/sensor/bms_exporter_kept/kept_01_voltage/config",
    "homeassistant/switch/bms_exporter_kept/kept_01_charge_mosfet/config",
];
/// Another tool's discovery, which cleanup must never touch.
const FOREIGN: &str = "homeassistant/sensor/daly_bms/_soc_soc_percent/config";

fn set(topics: &[&str]) -> BTreeSet<String> {
    topics.iter().map(|t| (*t).to_owned()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cleanup_removes_the_discovery_and_availability_of_unconfigured_devices_only() {
    let broker = Mosquitto::plain("cleanup");
    for topic in OLD.iter().chain(&KEPT).chain([&FOREIGN]) {
        broker.publish(topic, r#"{"name":"x"}"#, true);
    }
    broker.publish("bms/old/availability", "online", true);
    broker.publish("bms/kept/availability", "online", true);
    let filters = ["homeassistant/#", "bms/#"];
    let everything = retained_topics(&broker, &filters);
    assert_eq!(everything.len(), 8, "{everything:?}");

    let config = mqtt_config(broker.port);
    let kept = ["kept".to_owned()];
    let wait = Duration::from_millis(500);

    // A dry run lists what would go, and removes nothing.
    let report = cleanup::cleanup(&config, &kept, wait, true).await.unwrap();
    let mut expected: Vec<String> = set(&OLD).into_iter().collect();
    expected.push("bms/old/availability".to_owned());
    assert_eq!(report.removed, expected);
    assert_eq!((report.devices.as_slice(), report.kept, report.dry_run), (&["old".to_owned()][..], 2, true));
    assert_eq!(retained_topics(&broker, &filters), everything, "a dry run removed something");

    // The real run removes exactly those, and leaves the configured device's and other tools' messages.
    let report = cleanup::cleanup(&config, &kept, wait, false).await.unwrap();
    assert_eq!(report.removed, expected);
    let mut left = set(&KEPT);
    left.insert(FOREIGN.to_owned());
    left.insert("bms/kept/availability".to_owned());
    assert_eq!(retained_topics(&broker, &filters), left);

    // Nothing is left to remove the second time.
    let report = cleanup::cleanup(&config, &kept, wait, false).await.unwrap();
    assert!(report.removed.is_empty() && report.devices.is_empty(), "{report:?}");
    assert_eq!(report.kept, 2);
}

#[tokio::test]
async fn a_broker_that_is_not_there_is_an_error_naming_it() {
    // A free port: nothing listens there.
    let port = free_port();
    let config = mqtt_config(port);
    let error = cleanup::cleanup(&config, &[], Duration::from_millis(100), true).await.unwrap_err();
    assert!(format!("{error:#}").contains(&format!("MQTT broker at 127.0.0.1:{port}")), "{error:#}");
}

#[test]
fn the_command_needs_an_mqtt_block() {
    let dir = Scratch::new("mqtt-cleanup-cli");
    let file = dir.write("config.yaml", "devices:\n  - name: house\n    protocol: daly\n    serial: /dev/ttyUSB0\n");
    let output = Process::new(env!("CARGO_BIN_EXE_bms_exporter"))
        .args(["mqtt", "cleanup", "--config"])
        .arg(&file)
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("has no mqtt: block"), "{stderr}");
    assert!(output.stdout.is_empty());

    let output = Process::new(env!("CARGO_BIN_EXE_bms_exporter"))
        .args(["mqtt", "cleanup", "--config"])
        .arg(&file)
        .args(["--wait", "2h"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2), "a bad --wait is a usage error");
}
