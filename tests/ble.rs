//! Our binary end to end over Bluetooth LE: `read`, `detect --bluetooth-scan`, `set` and `serve` (scraped by a real
//! Prometheus) against Daly UART dongles and Modbus-style DL- modules of the mock BlueZ (tests/ble_util.rs), whose
//! GATT characteristics answer through the simulator. Every value is compared with the simulator's truth, also when
//! replies are cut up, mixed with garbage, or the dongle drops the connection, sleeps or never answers.
//!
//! The simulators run frozen and unpaced (`--time-scale 0 --baud 0 --latency-ms 0`): the truth a test reads after a
//! command is what the command saw, and the wire's timing is the mock's (notifications, connects), not a UART's.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command as Process, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::ble_util::{MockBluez, Mode, Split};
use crate::cli_commands::{Run, assert_pack_matches, close, f, run_bounded, truth_pack};
use crate::exporter::{assert_device_matches_truth, exporter_log, query, scrape_body, series_value, wait_ready};
use crate::util::{Killed, Scratch, Simulator, free_port, http_get, prometheus, wait_for};
use bms_exporter::protocol::daly::{Address, Request};
use bms_exporter::protocol::daly_modbus::{Map as ModbusMap, d2, encode_request};
use bms_exporter::protocol::to_hex;

/// Run `bms_exporter ARGS…` against the mock's bus, killed (and the test failed) if it outlives `limit`: a command
/// that hangs on a module must fail, not stall the suite.
fn bms(bluez: &MockBluez, args: &[&str], limit: Duration) -> Run {
    run_bounded(bluez.env(Process::new(env!("CARGO_BIN_EXE_bms_exporter")).args(args)), limit, || bluez.log())
}

/// A frozen, unpaced simulator of `protocol` on TCP, the far end of a mock dongle.
fn simulator(name: &str, protocol: &str, extra: &[&str]) -> Simulator {
    Simulator::frozen_tcp(&format!("ble-e2e-{name}"), protocol, extra)
}

/// A mock BlueZ with adapter hci0.
fn mock() -> MockBluez {
    let bluez = MockBluez::start();
    assert_eq!(bluez.add_adapter("hci0"), "/org/bluez/hci0");
    bluez
}

/// A Daly UART dongle (service fff0) at `address` in front of `sim`; its object path.
fn a5_dongle(bluez: &MockBluez, address: &str, sim: &Simulator, extra: bool) -> String {
    let device = bluez.add_device("hci0", address, "HI-Link-B20");
    bluez.add_daly_a5_gatt(&device, sim.addr.as_deref().unwrap(), extra);
    device
}

/// A Modbus-style module (service ff00, a DL- name) at `address` in front of `sim`; its object path.
fn modbus_module(bluez: &MockBluez, address: &str, sim: &Simulator) -> String {
    let device = bluez.add_device("hci0", address, "DL-40D63C123456");
    bluez.add_daly_modbus_gatt(&device, sim.addr.as_deref().unwrap());
    device
}

/// The connection flags for the module at `address` speaking `protocol`, with no gap between requests (the
/// simulator needs none) and the Bluetooth default reply timeout.
fn ble<'a>(command: &'a str, protocol: &'a str, address: &'a str, more: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec![command, "--protocol", protocol, "--bluetooth", address, "--request-gap-ms", "0"];
    args.extend_from_slice(more);
    args
}

/// Every section of a `read --all` pack against the truth pack: what [`assert_pack_matches`] checks (voltage,
/// current, SOC, capacity, MOSFETs, state, cycles, counts, every cell and probe), plus balancing, alarms and
/// identity.
fn assert_read_is_the_truth(protocol: &str, got: &Value, truth: &Value) {
    assert_pack_matches(protocol, got, truth);
    let pack = got.as_object().unwrap();
    for section in ["soc", "mosfet", "status", "cells", "temperatures", "balancing", "alarms", "info"] {
        assert!(pack.contains_key(section), "{protocol}: {section} missing from {got}");
    }
    assert_eq!(got["balancing"]["cell_balancing"], truth["cell_balancing"], "{protocol}: balancing");
    let active_truth: Vec<&Value> =
        truth["alarms"].as_array().unwrap().iter().filter(|a| a["active"] == true).map(|a| &a["name"]).collect();
    let active: Vec<&Value> = got["alarms"]["active"].as_array().unwrap().iter().collect();
    assert_eq!(active, active_truth, "{protocol}: active alarms");
    for field in ["model", "serial_number", "firmware_version"] {
        if let Some(want) = truth["info"][field].as_str() {
            assert_eq!(got["info"][field], want, "{protocol}: {field}");
        }
    }
}

/// The module is no longer held: BlueZ shows it disconnected and unsubscribed, and every connect was undone.
fn assert_released(bluez: &MockBluez, device: &str) {
    let stats = wait_for("the module to be released", Duration::from_secs(5), || {
        let stats = bluez.stats(device);
        (stats["connected"] == false).then_some(stats)
    });
    assert_eq!(stats["notifying"], false, "{stats}");
    assert_eq!(stats["connects"], stats["disconnects"], "every connect undone: {stats}");
}

#[test]
fn read_all_over_an_a5_dongle_prints_every_value_of_the_truth_and_releases_the_dongle() {
    let sim = simulator("read-a5", "daly", &["--cells", "16", "--temperatures", "4"]);
    let bluez = mock();
    let device = a5_dongle(&bluez, "AA:BB:CC:01:00:01", &sim, true);
    let run = bms(&bluez, &ble("read", "daly", "AA:BB:CC:01:00:01", &["--all"]), Duration::from_secs(30));
    assert_eq!(run.code, 0, "{}\n{}", run.stderr, bluez.log());
    let doc = run.json();
    assert_eq!(doc["protocol"], "daly");
    assert_eq!(doc["errors"], Value::Array(vec![]), "no request failed: {doc}");
    let packs = doc["packs"].as_array().unwrap();
    assert_eq!(packs.len(), 1, "{doc}");
    assert_read_is_the_truth("daly", &packs[0], truth_pack(&sim.truth_json(), 1));
    let stats = bluez.stats(&device);
    assert_eq!(stats["connects"], 1, "one connection for the whole read: {stats}");
    assert!(stats["write_types"].as_array().unwrap().iter().all(|t| t == "command"), "writes without response");
    assert_eq!(bluez.extra_writes(&device), [""], "the old dongle's one empty write");
    assert_released(&bluez, &device);
}

#[test]
fn read_all_over_a_modbus_style_dl_module_prints_every_value_of_the_truth() {
    let sim = simulator("read-dl", "daly-modbus", &["--cells", "16", "--temperatures", "4"]);
    let bluez = mock();
    let device = modbus_module(&bluez, "AA:BB:CC:01:00:02", &sim);
    let run = bms(&bluez, &ble("read", "daly-modbus", "AA:BB:CC:01:00:02", &["--all"]), Duration::from_secs(30));
    assert_eq!(run.code, 0, "{}\n{}", run.stderr, bluez.log());
    let doc = run.json();
    assert_eq!(doc["protocol"], "daly-modbus");
    assert_eq!(doc["errors"], Value::Array(vec![]), "no request failed: {doc}");
    assert_read_is_the_truth("daly-modbus", &doc["packs"][0], truth_pack(&sim.truth_json(), 1));
    assert_eq!(bluez.stats(&device)["kind"], "daly-modbus");
    assert_released(&bluez, &device);
}

/// `read --all` of the module at `address` exits 0 with every value of `sim`'s truth.
fn read_all_is_the_truth(bluez: &MockBluez, protocol: &str, address: &str, sim: &Simulator, what: &str) {
    let run = bms(bluez, &ble("read", protocol, address, &["--all"]), Duration::from_secs(30));
    assert_eq!(run.code, 0, "{what}: {}\n{}", run.stderr, bluez.log());
    let doc = run.json();
    assert_eq!(doc["errors"], Value::Array(vec![]), "{what}: no request failed: {doc}");
    assert_read_is_the_truth(protocol, &doc["packs"][0], truth_pack(&sim.truth_json(), 1));
}

#[test]
fn replies_cut_at_random_points_or_joined_into_one_notification_still_read_as_the_truth() {
    let a5 = simulator("split-a5", "daly", &["--cells", "16", "--temperatures", "4"]);
    let dl = simulator("split-dl", "daly-modbus", &["--cells", "16", "--temperatures", "4"]);
    let bluez = mock();
    let dongle = a5_dongle(&bluez, "AA:BB:CC:02:00:01", &a5, false);
    let module = modbus_module(&bluez, "AA:BB:CC:02:00:02", &dl);
    for seed in [1, 2, 3] {
        bluez.set_split(&dongle, Split::Random(seed));
        bluez.set_split(&module, Split::Random(seed));
        read_all_is_the_truth(&bluez, "daly", "AA:BB:CC:02:00:01", &a5, &format!("A5, random split {seed}"));
        read_all_is_the_truth(&bluez, "daly-modbus", "AA:BB:CC:02:00:02", &dl, &format!("DL, random split {seed}"));
    }
    // The splits really cut replies: more notifications than replies (a 13-byte A5 frame fits one at the MTU).
    for device in [&dongle, &module] {
        let stats = bluez.stats(device);
        assert!(stats["notifications"].as_u64() > stats["replies"].as_u64(), "{stats}");
    }
    bluez.set_split(&dongle, Split::Joined);
    bluez.set_split(&module, Split::Joined);
    let before: Vec<Value> = [&dongle, &module].iter().map(|d| bluez.stats(d)).collect();
    read_all_is_the_truth(&bluez, "daly", "AA:BB:CC:02:00:01", &a5, "A5, joined");
    read_all_is_the_truth(&bluez, "daly-modbus", "AA:BB:CC:02:00:02", &dl, "DL, joined");
    for (device, before) in [&dongle, &module].iter().zip(before) {
        let stats = bluez.stats(device);
        let grew = |key: &str| stats[key].as_u64().unwrap() - before[key].as_u64().unwrap();
        assert_eq!(grew("notifications"), grew("replies"), "joined: one notification per reply: {stats}");
    }
}

/// Every value a `read` pack holds is the truth; a value may be missing (its request failed), never wrong or
/// partial: a cell list is whole or absent. Returns how many values it compared.
fn assert_nothing_wrong(got: &Value, truth: &Value, what: &str) -> usize {
    let what = |field: &str| format!("{what}: {field}");
    let compared = std::cell::Cell::new(0);
    let near = |field: &str, got: &Value, want: &Value, tolerance: f64| {
        if !got.is_null() {
            close(&what(field), got, f(want), tolerance);
            compared.set(compared.get() + 1);
        }
    };
    // Both Daly protocols report 0.1 V and 0.1 A.
    near("voltage", &got["soc"]["voltage_volts"], &truth["voltage_volts"], 0.1);
    near("current", &got["soc"]["current_amperes"], &truth["current_amperes"], 0.1);
    near("SOC", &got["soc"]["state_of_charge_ratio"], &truth["state_of_charge_ratio"], 0.001);
    for field in ["charge_mosfet_enabled", "discharge_mosfet_enabled", "state"] {
        if !got["mosfet"][field].is_null() {
            assert_eq!(got["mosfet"][field], truth[field], "{}", what(field));
        }
    }
    if let Some(cells) = got["cells"]["cell_volts"].as_array() {
        let want = truth["cell_volts"].as_array().unwrap();
        assert_eq!(cells.len(), want.len(), "{}: a partial cell list: {cells:?}", what("cells"));
        for (i, (cell, want)) in cells.iter().zip(want).enumerate() {
            assert!(!cell.is_null(), "{}: a hole in the cell list: {cells:?}", what("cells"));
            near(&format!("cell {}", i + 1), cell, want, 0.001);
        }
    }
    if let Some(temperatures) = got["temperatures"].as_object() {
        let probes: Vec<f64> = truth["temperatures"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|t| t["sensor"].get("probe").is_some())
            .map(|t| f(&t["celsius"]))
            .collect();
        for (label, value) in temperatures.iter().filter(|(k, _)| k.parse::<usize>().is_ok()) {
            let probe: usize = label.parse().unwrap();
            let want = probes.get(probe - 1).unwrap_or_else(|| panic!("{}: no probe {probe}", what("temperatures")));
            near(&format!("probe {label}"), value, &Value::from(*want), 1.0);
        }
    }
    if let Some(balancing) = got["balancing"]["cell_balancing"].as_array().filter(|b| !b.is_empty()) {
        assert_eq!(&Value::Array(balancing.clone()), &truth["cell_balancing"], "{}", what("balancing"));
    }
    compared.get()
}

#[test]
fn garbage_notifications_never_become_a_value_and_the_failures_are_reported() {
    let a5 = simulator("garbage-a5", "daly", &["--cells", "16", "--temperatures", "4"]);
    let dl = simulator("garbage-dl", "daly-modbus", &["--cells", "16", "--temperatures", "4"]);
    let bluez = mock();
    let dongle = a5_dongle(&bluez, "AA:BB:CC:03:00:01", &a5, false);
    let module = modbus_module(&bluez, "AA:BB:CC:03:00:02", &dl);
    for device in [&dongle, &module] {
        bluez.set_mode(device, Mode::Garbage);
    }
    let mut reasons = BTreeMap::<String, usize>::new();
    let mut compared = 0;
    // In 20-byte notifications, single-frame A5 replies get garbage only before them (the parser skips it) and
    // the 16-frame cell reply gets it between its pieces, inside frames; cut at random points, every reply does.
    let runs = [
        (&dongle, "daly", "AA:BB:CC:03:00:01", &a5, Split::Mtu, "2"),
        (&dongle, "daly", "AA:BB:CC:03:00:01", &a5, Split::Random(11), "1"),
        (&module, "daly-modbus", "AA:BB:CC:03:00:02", &dl, Split::Mtu, "1"),
        (&module, "daly-modbus", "AA:BB:CC:03:00:02", &dl, Split::Random(11), "1"),
    ];
    for (device, protocol, address, sim, split, polls) in runs {
        bluez.set_split(device, split);
        let what = format!("{protocol}, split {split:?}");
        // Short timeouts and one retry: a reply broken by garbage waits out its timeout.
        let args = ble("read", protocol, address, &["--all", "--timeout-ms", "300", "--retry", "1", "--watch", "0"]);
        let run = bms(&bluez, &[&args[..], &["--count", polls]].concat(), Duration::from_secs(60));
        assert_eq!(run.code, 1, "{what}: failures make the exit code 1: {}", run.stderr);
        // A poll that read something is a document whose `errors` name every request that failed, by reason; one
        // that read nothing is an error line on stderr naming the first failure.
        let docs = run.json_lines();
        let nothing: Vec<&str> =
            run.stderr.lines().filter(|l| l.starts_with("error: nothing read from bluetooth")).collect();
        // (A poll whose every request timed out would say "no reply from" instead; garbage makes replies invalid.)
        assert_eq!(docs.len() + nothing.len(), polls.parse::<usize>().unwrap(), "{what}: {}", run.stderr);
        for line in nothing {
            assert!(line.contains("no valid reply: "), "{what}: the cause is named: {line}");
            *reasons.entry("(nothing read)".to_owned()).or_default() += 1;
        }
        for doc in docs {
            for error in doc["errors"].as_array().unwrap() {
                *reasons.entry(error["reason"].as_str().unwrap().to_owned()).or_default() += 1;
            }
            compared += assert_nothing_wrong(&doc["packs"][0], truth_pack(&sim.truth_json(), 1), &what);
        }
    }
    eprintln!("failures by reason: {reasons:?}; {compared} values compared with the truth");
    assert!(compared > 0, "values got through the garbage where it fell between frames");
    assert!(reasons.contains_key("checksum"), "garbage inside frames breaks their checksums: {reasons:?}");
    for device in [&dongle, &module] {
        assert!(bluez.stats(device)["garbage_notifications"].as_u64() > Some(0));
    }
}

/// `bms_exporter serve --config CONFIG` on a free loopback port against the mock's bus, its stderr in
/// `dir/exporter.log`; returns it, ready, and its address.
fn serve(bluez: &MockBluez, dir: &Path, config: &Path) -> (Killed, String) {
    let addr = format!("127.0.0.1:{}", free_port());
    let log = std::fs::File::create(dir.join("exporter.log")).unwrap();
    let child = bluez
        .env(Process::new(env!("CARGO_BIN_EXE_bms_exporter")).args(["serve", "--config"]).arg(config))
        .args(["--web.listen-address", &addr, "--log.level", "info"])
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    let mut exporter = Killed(child);
    wait_ready(&mut exporter, &addr, dir);
    (exporter, addr)
}

/// One sample of a `/metrics` body: family name, labels, value.
type Sample = (String, BTreeMap<String, String>, f64);

/// The samples of `device` in a `/metrics` body.
fn samples(body: &str, device: &str) -> Vec<Sample> {
    let tag = format!("device=\"{device}\"");
    body.lines()
        .filter(|l| !l.starts_with('#') && l.contains(&tag))
        .map(|line| {
            let (series, value) = line.rsplit_once(' ').unwrap();
            let (name, labels) = series.split_once('{').unwrap();
            let labels = labels
                .trim_end_matches('}')
                .split("\",")
                .filter_map(|pair| pair.split_once("=\""))
                .map(|(k, v)| (k.to_owned(), v.trim_end_matches('"').to_owned()))
                .collect();
            (name.to_owned(), labels, value.parse().unwrap_or_else(|e| panic!("{e}: {line}")))
        })
        .collect()
}

/// Every value `/metrics` serves for `device` (one Daly pack) is the truth: pack voltage, current and SOC, each
/// cell, each probe and both MOSFETs. With `whole`, every one of them must be served, too.
fn assert_served_values_are_the_truth(body: &str, device: &str, truth: &Value, whole: bool) {
    let samples = samples(body, device);
    let pack = truth_pack(truth, 1);
    let find = |name: &str| -> Vec<&Sample> {
        samples.iter().filter(|(n, l, _)| n == name && l.get("pack").is_some_and(|p| p == "01")).collect()
    };
    for (name, field, tolerance) in [
        ("bms_pack_voltage_volts", "voltage_volts", 0.051),
        ("bms_pack_current_amperes", "current_amperes", 0.051),
        ("bms_pack_state_of_charge_ratio", "state_of_charge_ratio", 0.000_51),
    ] {
        let got: Vec<f64> = find(name).iter().map(|(_, _, v)| *v).collect();
        assert!(got.len() <= 1 && (!whole || got.len() == 1), "{device} {name}: {got:?}\n{body}");
        if let Some(got) = got.first() {
            close(&format!("{device} {name}"), &Value::from(*got), f(&pack[field]), tolerance);
        }
    }
    let cells = pack["cell_volts"].as_array().unwrap();
    let served = find("bms_cell_voltage_volts");
    assert!(served.is_empty() || served.len() == cells.len(), "{device}: a partial cell set: {served:?}");
    assert!(!whole || served.len() == cells.len(), "{device}: cells missing:\n{body}");
    for (_, labels, value) in served {
        let cell: usize = labels["cell"].parse().unwrap();
        close(&format!("{device} cell {cell}"), &Value::from(*value), f(&cells[cell - 1]), 0.000_51);
    }
    let probes: Vec<f64> = pack["temperatures"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| t["sensor"].get("probe").is_some())
        .map(|t| f(&t["celsius"]))
        .collect();
    let served: Vec<&Sample> =
        find("bms_temperature_celsius").into_iter().filter(|(_, l, _)| l["sensor"].parse::<usize>().is_ok()).collect();
    assert!(!whole || served.len() == probes.len(), "{device}: probes missing:\n{body}");
    for (_, labels, value) in served {
        let probe: usize = labels["sensor"].parse().unwrap();
        close(&format!("{device} probe {probe}"), &Value::from(*value), probes[probe - 1], 0.51);
    }
    for mosfet in ["charge", "discharge"] {
        let got: Vec<f64> =
            find("bms_mosfet_enabled").iter().filter(|(_, l, _)| l["mosfet"] == mosfet).map(|s| s.2).collect();
        assert!(!whole || got.len() == 1, "{device}: {mosfet} MOSFET missing:\n{body}");
        if let Some(got) = got.first() {
            let want = pack[format!("{mosfet}_mosfet_enabled")].as_bool().unwrap();
            assert_eq!(*got, f64::from(u8::from(want)), "{device} {mosfet} MOSFET");
        }
    }
}

/// The value of the series `series` in `body`, or 0 when it is not there (a counter not yet counted).
fn counter(body: &str, series: &str) -> f64 {
    series_value(body, series).unwrap_or(0.0)
}

#[test]
fn serve_reconnects_a_dongle_that_drops_the_connection_mid_poll_and_never_serves_a_wrong_value() {
    let scratch = Scratch::new("ble-e2e-drop");
    let sim = simulator("drop", "daly", &["--cells", "16", "--temperatures", "4"]);
    let bluez = mock();
    let device = a5_dongle(&bluez, "AA:BB:CC:05:00:01", &sim, true);
    // max_age 0: every scrape runs a poll of its own.
    let config = scratch.write(
        "bms.yaml",
        "defaults:\n  timeout: 1s\n  retries: 1\n  request_gap: 0ms\n  max_age: 0s\n  stale_after: 60s\n\
         devices:\n  - name: garage\n    protocol: daly\n    bluetooth: AA:BB:CC:05:00:01\n",
    );
    let (exporter, addr) = serve(&bluez, &scratch.0, &config);
    let body = scrape_body(&addr);
    assert_eq!(series_value(&body, "bms_up{device=\"garage\"}"), Some(1.0), "{body}");
    assert_served_values_are_the_truth(&body, "garage", &sim.truth_json(), true);
    assert_eq!(counter(&body, "bms_poll_failures_total{device=\"garage\",reason=\"io\"}"), 0.0);

    // The dongle goes away at the first request of a poll, then at its third (0x95, the cells) and its fifth
    // (0x97): that poll fails on the link, and serves the values it read and those it had, all of them true (the
    // battery is frozen).
    for (drop, answered) in [(1, 0), (2, 2), (3, 4)] {
        bluez.disconnect_after(&device, answered);
        let body = scrape_body(&addr);
        assert_eq!(series_value(&body, "bms_up{device=\"garage\"}"), Some(0.0), "drop {drop}: {body}");
        assert_served_values_are_the_truth(&body, "garage", &sim.truth_json(), false);
        let io = counter(&body, "bms_poll_failures_total{device=\"garage\",reason=\"io\"}");
        assert_eq!(io, f64::from(drop), "one io failure per drop");
        // The next scrape connects again and reads everything, true.
        let body = scrape_body(&addr);
        assert_eq!(series_value(&body, "bms_up{device=\"garage\"}"), Some(1.0), "back after drop {drop}: {body}");
        assert_served_values_are_the_truth(&body, "garage", &sim.truth_json(), true);
    }
    let stats = bluez.stats(&device);
    assert_eq!(stats["connects"], 4, "connected once, then again after each drop: {stats}");
    assert_eq!(stats["swallowed"], 3, "{stats}");
    assert_eq!(bluez.extra_writes(&device).len(), 4, "the old dongle's empty write after each connect");
    let log = exporter_log(&scratch.0);
    let lost = log.lines().filter(|l| l.contains("link lost") && l.contains("bluetooth AA:BB:CC:05:00:01")).count();
    assert_eq!(lost, 3, "one log line per drop, naming the module:\n{log}");
    assert!(log.contains("the module disconnected"), "the log says why:\n{log}");

    // Stopped gracefully, the exporter lets go of the dongle.
    let pid = exporter.0.id().to_string();
    assert!(Process::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    assert_released(&bluez, &device);
    drop(exporter);
}

#[test]
fn a_silent_dongle_an_unreachable_one_and_one_never_heard_fail_in_bounded_time_naming_the_cause() {
    let sim = simulator("mute", "daly", &[]);
    let bluez = mock();
    let silent = a5_dongle(&bluez, "AA:BB:CC:06:00:01", &sim, false);
    let unreachable = a5_dongle(&bluez, "AA:BB:CC:06:00:02", &sim, false);
    bluez.set_mode(&silent, Mode::Silent);
    bluez.set_mode(&unreachable, Mode::Unreachable);

    // Silent: the requests go out and nothing answers. Two attempts of 1 s at the first request, then the board
    // counts as gone and the rest of the poll is skipped.
    let run = bms(
        &bluez,
        &ble("read", "daly", "AA:BB:CC:06:00:01", &["--all", "--timeout-ms", "1000", "--retry", "1"]),
        Duration::from_secs(30),
    );
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert!(run.stdout.is_empty(), "nothing made up: {}", run.stdout);
    assert!(
        run.stderr.contains("error: no reply from bluetooth AA:BB:CC:06:00:01: no reply within 1s (for 0x94 board 1)"),
        "{}",
        run.stderr
    );
    assert!(run.took >= Duration::from_secs(2), "it waited for both attempts: {:?}", run.took);
    assert!(run.took < Duration::from_secs(2 + 5), "2 × 1 s and a connect took {:?}", run.took);
    assert_eq!(bluez.stats(&silent)["swallowed"], 2, "the request and its one retry");
    assert_released(&bluez, &silent);

    // Unreachable: BlueZ refuses the connection; the command says so at once, with BlueZ's reason.
    let run = bms(&bluez, &ble("read", "daly", "AA:BB:CC:06:00:02", &["--all"]), Duration::from_secs(30));
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert!(run.stdout.is_empty(), "nothing made up: {}", run.stdout);
    let line = run.stderr.lines().find(|l| l.starts_with("error: ")).unwrap_or_else(|| panic!("{}", run.stderr));
    assert!(
        line.contains("bluetooth AA:BB:CC:06:00:02: connecting failed")
            && line.contains("le-connection-abort-by-local"),
        "{line}"
    );
    let bound = bms_exporter::transport::BLUETOOTH_CONNECT_TIMEOUT + Duration::from_secs(5);
    assert!(run.took < bound, "a refused connection took {:?}", run.took);

    // Never heard (asleep, out of range): a scan looks for it up to the connect timeout, then gives up saying so.
    let run = bms(&bluez, &ble("read", "daly", "AA:BB:CC:06:00:03", &["--all"]), Duration::from_secs(30));
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert!(
        run.stderr.contains("bluetooth AA:BB:CC:06:00:03: not found: no advertisement within 8s"),
        "{}",
        run.stderr
    );
    assert!(run.took >= bms_exporter::transport::BLUETOOTH_CONNECT_TIMEOUT, "{:?}", run.took);
    assert!(run.took < bound, "the scan took {:?}", run.took);
}

#[test]
fn serve_answers_a_scrape_in_time_for_a_silent_and_an_unreachable_dongle_with_bms_up_0_and_says_why() {
    let scratch = Scratch::new("ble-e2e-mute");
    let sim = simulator("mute-serve", "daly", &[]);
    let bluez = mock();
    let silent = a5_dongle(&bluez, "AA:BB:CC:07:00:01", &sim, false);
    let unreachable = a5_dongle(&bluez, "AA:BB:CC:07:00:02", &sim, false);
    bluez.set_mode(&silent, Mode::Silent);
    bluez.set_mode(&unreachable, Mode::Unreachable);
    // The documented defaults over Bluetooth: a 5 s reply timeout and 3 retries, a 20 s poll for a mute board.
    let config = scratch.write(
        "bms.yaml",
        "defaults:\n  max_age: 0s\n  stale_after: 60s\n\
         devices:\n\
         \x20 - name: mute\n    protocol: daly\n    bluetooth: AA:BB:CC:07:00:01\n\
         \x20 - name: asleep\n    protocol: daly\n    bluetooth: AA:BB:CC:07:00:02\n",
    );
    let addr = format!("127.0.0.1:{}", free_port());
    let log = std::fs::File::create(scratch.path("exporter.log")).unwrap();
    let child = bluez
        .env(Process::new(env!("CARGO_BIN_EXE_bms_exporter")).args(["serve", "--config"]).arg(&config))
        .args(["--web.listen-address", &addr])
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    let _exporter = Killed(child);
    wait_for("the exporter to listen", Duration::from_secs(30), || http_get(&addr, "/-/healthy", &[]));
    for announced in [2.0, 1.5] {
        let started = Instant::now();
        let header = announced.to_string();
        let r = http_get(&addr, "/metrics", &[("X-Prometheus-Scrape-Timeout-Seconds", &header)]).unwrap();
        let took = started.elapsed();
        assert!(took < Duration::from_secs_f64(announced), "a scrape announced {announced} s took {took:?}");
        assert_eq!(r.status, 200);
        for device in ["mute", "asleep"] {
            assert_eq!(series_value(&r.body, &format!("bms_up{{device=\"{device}\"}}")), Some(0.0), "{}", r.body);
        }
        assert!(!r.body.contains("bms_pack_voltage_volts{"), "no values without a reply:\n{}", r.body);
    }
    // From here on only the refused module is looked at (/probe): a scrape of both waits for the mute one's poll.
    let probe = || {
        let r = http_get(&addr, "/probe?target=asleep", &[("X-Prometheus-Scrape-Timeout-Seconds", "5")]).unwrap();
        assert_eq!(r.status, 200, "{}", r.body);
        r.body
    };
    let body = wait_for("the refused connection counted as io", Duration::from_secs(10), || {
        let body = probe();
        (counter(&body, "bms_poll_failures_total{device=\"asleep\",reason=\"io\"}") >= 1.0).then_some(body)
    });
    assert_eq!(series_value(&body, "bms_up{device=\"asleep\"}"), Some(0.0));
    let log = exporter_log(&scratch.0);
    assert!(
        log.lines().any(|l| l.contains("asleep")
            && l.contains("bluetooth AA:BB:CC:07:00:02: connecting failed")
            && l.contains("le-connection-abort-by-local")),
        "a log line names the device, the module and BlueZ's reason:\n{log}"
    );
    // The module wakes up: a later scrape reconnects (one attempt per 2 s at most) and reads the truth.
    bluez.set_mode(&unreachable, Mode::Normal);
    let body = wait_for("the woken module up again", Duration::from_secs(15), || {
        let body = probe();
        (series_value(&body, "bms_up{device=\"asleep\"}") == Some(1.0)).then_some(body)
    });
    assert_served_values_are_the_truth(&body, "asleep", &sim.truth_json(), true);
}

#[test]
fn detect_bluetooth_scan_lists_both_kinds_of_module_and_prints_a_config_block_for_each_one() {
    let scratch = Scratch::new("ble-e2e-detect");
    let a5 = simulator("detect-a5", "daly", &["--cells", "8"]);
    let dl = simulator("detect-dl", "daly-modbus", &["--cells", "8"]);
    let bluez = mock();
    let dongle = a5_dongle(&bluez, "AA:BB:CC:08:00:01", &a5, true);
    let module = modbus_module(&bluez, "AA:BB:CC:08:00:02", &dl);
    let earbuds = bluez.add_device("hci0", "AA:BB:CC:08:00:03", "Galaxy Buds");
    bluez.set_rssi(&dongle, -71);
    bluez.set_rssi(&module, -48);
    bluez.set_rssi(&earbuds, -30);
    let run = bms(&bluez, &["detect", "--bluetooth-scan", "1", "--adapter", "hci0"], Duration::from_secs(60));
    assert_eq!(run.code, 0, "{}\n{}", run.stderr, bluez.log());
    // Each module answers the protocol it most likely speaks, and is not then asked the other one, which could
    // only wait out two 5 s Bluetooth timeouts per module.
    assert!(run.took < Duration::from_secs(10), "detect took {:?}:\n{}", run.took, run.stderr);
    assert!(run.stderr.contains("heard 3 devices, 2 of them look like a BMS"), "{}", run.stderr);
    let found: Vec<&str> = run.stderr.lines().filter_map(|l| l.strip_prefix("detect: found ")).collect();
    assert_eq!(
        found,
        [
            "DL-40D63C123456 AA:BB:CC:08:00:02 RSSI -48 dBm, probably daly-modbus, service ff00",
            "HI-Link-B20 AA:BB:CC:08:00:01 RSSI -71 dBm, probably daly (A5 through a UART dongle), service fff0",
        ],
        "name, address, RSSI and protocol, strongest first, and not the earbuds:\n{}",
        run.stderr
    );
    // One block for both, each answered by the protocol it speaks, with what it read: the truth.
    let block = &run.stdout;
    let entries: Vec<&str> = block.split("\n  # ").skip(1).collect();
    assert_eq!(entries.len(), 2, "{block}");
    for (entry, address, protocol, config, sim) in [
        (entries[0], "AA:BB:CC:08:00:02", "daly-modbus", "daly_modbus: { address: d2 }", &dl),
        (entries[1], "AA:BB:CC:08:00:01", "daly", "daly: { address: uart }", &a5),
    ] {
        let want =
            [format!("    protocol: {protocol}"), format!("    bluetooth: {address}"), "    adapter: hci0".into()];
        for line in want.iter().map(String::as_str).chain([format!("    {config}").as_str()]) {
            assert!(entry.lines().any(|l| l == line), "{line:?} missing from\n{entry}");
        }
        let volts: f64 = entry.split(" V").next().unwrap().rsplit(' ').next().unwrap().parse().unwrap();
        close(
            &format!("{address} voltage in the comment"),
            &Value::from(volts),
            f(&truth_pack(&sim.truth_json(), 1)["voltage_volts"]),
            0.051,
        );
    }
    for device in [&dongle, &module] {
        assert_released(&bluez, device);
        assert_eq!(bluez.stats(device)["connects"], 1, "each module connected once");
    }
    // The block is a config the exporter accepts as it is.
    let config = scratch.write("detected.yaml", block);
    let check = bms(&bluez, &["config", "check", config.to_str().unwrap()], Duration::from_secs(10));
    assert_eq!(check.code, 0, "{}{}", check.stdout, check.stderr);

    // One module by address: the first probe that answers (Daly A5 through the dongle) is the last one sent.
    let run = bms(&bluez, &["detect", "--bluetooth", "AA:BB:CC:08:00:01"], Duration::from_secs(60));
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(run.took < Duration::from_secs(10), "detect took {:?}:\n{}", run.took, run.stderr);
    for line in ["    protocol: daly", "    bluetooth: AA:BB:CC:08:00:01", "    daly: { address: uart }"] {
        assert!(run.stdout.lines().any(|l| l == line), "{line:?} missing from\n{}", run.stdout);
    }
    assert_released(&bluez, &dongle);
}

#[test]
fn a_real_prometheus_scrapes_two_bluetooth_modules_next_to_a_tcp_device_with_true_values() {
    let scratch = Scratch::new("ble-e2e-prometheus");
    let a5 = simulator("prom-a5", "daly", &["--cells", "16", "--temperatures", "4"]);
    let dl = simulator("prom-dl", "daly-modbus", &["--cells", "8", "--temperatures", "2"]);
    let wired = simulator("prom-tcp", "daly", &["--cells", "8", "--temperatures", "2"]);
    let bluez = mock();
    let dongle = a5_dongle(&bluez, "AA:BB:CC:09:00:01", &a5, true);
    let module = modbus_module(&bluez, "AA:BB:CC:09:00:02", &dl);
    // Both modules on one adapter: the exporter connects them as it starts, at the same moment.
    let config = scratch.write(
        "bms.yaml",
        &format!(
            "defaults:\n  retries: 1\n  request_gap: 0ms\n  max_age: 500ms\n  stale_after: 30s\n\
             devices:\n\
             \x20 - name: garage\n    protocol: daly\n    bluetooth: AA:BB:CC:09:00:01\n    adapter: hci0\n\
             \x20 - name: shed\n    protocol: daly-modbus\n    bluetooth: AA:BB:CC:09:00:02\n\
             \x20 - name: house\n    protocol: daly\n    tcp: {}\n    timeout: 300ms\n",
            wired.addr.as_deref().unwrap()
        ),
    );
    let (_exporter, addr) = serve(&bluez, &scratch.0, &config);
    let (_prometheus, prom) = prometheus(&scratch.0, &addr, &[]);
    wait_for("Prometheus to scrape the exporter", Duration::from_secs(30), || {
        let targets = http_get(&prom, "/api/v1/targets", &[])?;
        let json: Value = serde_json::from_str(&targets.body).ok()?;
        let target = json["data"]["activeTargets"].as_array()?.first()?.clone();
        assert_eq!(target["lastError"], "", "scrape error: {target}");
        (target["health"] == "up").then_some(())
    });
    wait_for("every device up in Prometheus", Duration::from_secs(30), || {
        let up = query(&prom, "bms_up == 1");
        (up.len() == 3).then_some(())
    });
    // BlueZ takes one connection attempt at a time per adapter: the exporter must not ask for two.
    let refused = bluez.adapter_stats("/org/bluez/hci0")["refused_in_progress"].clone();
    assert_eq!(refused, 0, "{}\n{}", exporter_log(&scratch.0), bluez.log());
    assert_device_matches_truth(&prom, "garage", "daly", &a5.truth_json());
    assert_device_matches_truth(&prom, "shed", "daly-modbus", &dl.truth_json());
    assert_device_matches_truth(&prom, "house", "daly", &wired.truth_json());
    for (device, transport, protocol) in
        [("garage", "bluetooth", "daly"), ("shed", "bluetooth", "daly-modbus"), ("house", "tcp", "daly")]
    {
        let info = query(&prom, &format!("bms_device_info{{device=\"{device}\",transport=\"{transport}\"}}"));
        assert_eq!(info.len(), 1, "{device}: {info:?}");
        assert_eq!(info[0].0["protocol"], protocol);
        // Not one failed request, not even while both modules were being connected at the same moment.
        let failures = query(&prom, &format!("sum(bms_poll_failures_total{{device=\"{device}\"}})"));
        assert_eq!(failures[0].1, 0.0, "{device} had poll failures");
    }
    for device in [&dongle, &module] {
        assert_eq!(bluez.stats(device)["connects"], 1, "one connection, kept between polls");
    }
}

#[test]
fn set_over_bluetooth_switches_a_mosfet_shows_the_frame_reads_back_and_releases_the_module() {
    let a5 = simulator("set-a5", "daly", &[]);
    let dl = simulator("set-dl", "daly-modbus", &[]);
    let bluez = mock();
    let dongle = a5_dongle(&bluez, "AA:BB:CC:10:00:01", &a5, true);
    let module = modbus_module(&bluez, "AA:BB:CC:10:00:02", &dl);
    let cases = [
        (&dongle, &a5, "daly", "AA:BB:CC:10:00:01", to_hex(&Request::discharge_mosfet(Address::Uart, false).encode())),
        (
            &module,
            &dl,
            "daly-modbus",
            "AA:BB:CC:10:00:02",
            to_hex(&encode_request(ModbusMap::D2, d2::set_discharge_mosfet(false))),
        ),
    ];
    for (device, sim, protocol, address, frame) in cases {
        assert_eq!(truth_pack(&sim.truth_json(), 1)["discharge_mosfet_enabled"], true);
        let run = bms(
            &bluez,
            &ble("set", protocol, address, &["--discharge-mosfet", "off", "--yes"]),
            Duration::from_secs(30),
        );
        assert_eq!(run.code, 0, "{protocol}: {}{}\n{}", run.stdout, run.stderr, bluez.log());
        assert!(
            run.stdout.contains(&format!("via bluetooth {address}: frame {frame}")),
            "{protocol}: the frame {frame} is shown:\n{}",
            run.stdout
        );
        assert!(run.stdout.contains("frame meaning: "), "{}", run.stdout);
        assert!(run.stdout.contains("the BMS obeyed") && !run.stdout.contains("NOT"), "{}", run.stdout);
        let truth = truth_pack(&sim.truth_json(), 1).clone();
        assert_eq!(truth["discharge_mosfet_enabled"], false, "{protocol}: the simulator switched");
        assert_eq!(truth["charge_mosfet_enabled"], true, "{protocol}: only the discharge MOSFET moved");
        // Released before exiting: the module is free, and the next command connects at once and sees the change.
        assert_released(&bluez, device);
        let read = bms(&bluez, &ble("read", protocol, address, &["mosfet"]), Duration::from_secs(30));
        assert_eq!(read.code, 0, "{protocol}: {}", read.stderr);
        let doc = read.json();
        assert_eq!(doc["packs"][0]["mosfet"]["discharge_mosfet_enabled"], false, "{protocol}: {doc}");
        assert_eq!(doc["packs"][0]["mosfet"]["charge_mosfet_enabled"], true, "{protocol}: {doc}");
        assert_released(&bluez, device);
        assert_eq!(bluez.stats(device)["connects"], 2, "{protocol}: set and read each connected once");
    }
}
