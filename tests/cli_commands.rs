//! The read, check, set and detect commands against the simulator over real PTYs and TCP.
//!
//! Every test runs the real binary as a user would and compares what it prints with the simulator's truth file
//! (`--time-scale 0` freezes the batteries, so the truth a test reads after a command is what the command saw).

use std::ffi::OsStr;
use std::io::{ErrorKind, Read as _};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Command as Process, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::util::{Simulator, daly_bms_cli, fixture, wait_for};
use bms_exporter::protocol::daly::{Address, Command as DalyCommand, Filler, Request};
use bms_exporter::protocol::daly_modbus::{Map as ModbusMap, d2, encode_request};
use bms_exporter::protocol::to_hex;
use serde_json::{Map, Value};

/// What one run of the binary left behind.
pub(crate) struct Run {
    pub(crate) code: i32,
    pub(crate) stdout: String,
    pub(crate) stderr: String,
    /// From spawn to exit.
    pub(crate) took: Duration,
}

impl Run {
    pub(crate) fn json(&self) -> Value {
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| {
            panic!("stdout is not one JSON document ({e}):\n{}\nstderr:\n{}", self.stdout, self.stderr)
        })
    }

    /// One document per line (`read --watch`).
    pub(crate) fn json_lines(&self) -> Vec<Value> {
        self.stdout
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}\nstderr:\n{}", self.stderr)))
            .collect()
    }
}

/// Run `bms_exporter ARGS…`, killed if it outlives a generous deadline (a hung command must fail, not stall the
/// suite); a panic in the product fails every test that meets it.
pub(crate) fn bms<S: AsRef<OsStr>>(args: impl IntoIterator<Item = S>) -> Run {
    let mut command = Process::new(env!("CARGO_BIN_EXE_bms_exporter"));
    command.args(args);
    run_bounded(&mut command, Duration::from_secs(20), String::new)
}

/// Run `command` (the binary with its arguments and environment set), killed and the test failed if it outlives
/// `limit`, with `context()` added to the failure; a panic in the product fails the test too.
pub(crate) fn run_bounded(command: &mut Process, limit: Duration, context: impl FnOnce() -> String) -> Run {
    let args: Vec<std::ffi::OsString> = command.get_args().map(OsStr::to_owned).collect();
    let started = Instant::now();
    let mut child = command.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let drain = |mut pipe: Box<dyn std::io::Read + Send>| {
        std::thread::spawn(move || {
            let mut bytes = Vec::new();
            let _ = pipe.read_to_end(&mut bytes);
            bytes
        })
    };
    let out = drain(Box::new(child.stdout.take().unwrap()));
    let err = drain(Box::new(child.stderr.take().unwrap()));
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if started.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            let stderr = String::from_utf8_lossy(&err.join().unwrap()).into_owned();
            panic!("bms_exporter {args:?} did not finish within {limit:?}:\n{stderr}\n{}", context());
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    let took = started.elapsed();
    let stdout = String::from_utf8(out.join().unwrap()).expect("stdout is UTF-8");
    let stderr = String::from_utf8_lossy(&err.join().unwrap()).into_owned();
    let code = status.code().unwrap_or_else(|| panic!("bms_exporter {args:?} was killed by a signal: {stderr}"));
    assert!(!stderr.contains("panicked"), "bms_exporter {args:?} panicked:\n{stderr}");
    Run { code, stdout, stderr, took }
}

/// A frozen, unpaced simulator on TCP, so values are exact and runs fast.
fn simulator(name: &str, protocol: &str, extra: &[&str]) -> Simulator {
    Simulator::frozen_tcp(&format!("cli-{name}"), protocol, extra)
}

/// The CONNECTION flags that reach `sim` over TCP with short timeouts (loopback answers in microseconds).
fn tcp(protocol: &str, sim: &Simulator) -> Vec<String> {
    connection(protocol, "--tcp", sim.addr.as_deref().unwrap())
}

fn connection(protocol: &str, flag: &str, target: &str) -> Vec<String> {
    ["--protocol", protocol, flag, target, "--timeout-ms", "300", "--request-gap-ms", "0"].map(str::to_owned).to_vec()
}

fn with(mut base: Vec<String>, more: &[&str]) -> Vec<String> {
    base.extend(more.iter().map(|s| (*s).to_owned()));
    base
}

fn cmd(command: &str, base: Vec<String>, more: &[&str]) -> Vec<String> {
    let mut args = vec![command.to_owned()];
    args.extend(base);
    with(args, more)
}

/// How finely each protocol reports a quantity; a value read back may differ from the truth by this much.
#[derive(Clone, Copy)]
struct Resolution {
    volts: f64,
    amperes: f64,
    soc: f64,
    ampere_hours: f64,
    celsius: f64,
}

fn resolution(protocol: &str) -> Resolution {
    match protocol {
        // 0.1 V, 0.1 A, 0.1 % SOC, mAh, whole degrees (offset 40).
        "daly" => Resolution { volts: 0.1, amperes: 0.1, soc: 0.001, ampere_hours: 0.001, celsius: 1.0 },
        "daly-modbus" => Resolution { volts: 0.1, amperes: 0.1, soc: 0.001, ampere_hours: 0.1, celsius: 1.0 },
        // mV, mA, whole percent, mAh, 0.1 K.
        "sinowealth" => Resolution { volts: 0.001, amperes: 0.001, soc: 0.01, ampere_hours: 0.001, celsius: 0.1 },
        // mV, 10 mA, 10 mAh (SOC derives from the capacities), 0.1 K.
        "pace" => Resolution { volts: 0.001, amperes: 0.01, soc: 0.001, ampere_hours: 0.01, celsius: 0.1 },
        other => panic!("no resolution for {other}"),
    }
}

pub(crate) fn close(what: &str, got: &Value, want: f64, tolerance: f64) {
    let got = got.as_f64().unwrap_or_else(|| panic!("{what}: expected a number, got {got}"));
    assert!((got - want).abs() <= tolerance + 1e-9, "{what}: got {got}, truth {want} (±{tolerance})");
}

pub(crate) fn f(value: &Value) -> f64 {
    value.as_f64().unwrap_or_else(|| panic!("expected a number, got {value}"))
}

/// The numbered probes of a truth pack, in order.
fn truth_probes(pack: &Value) -> Vec<f64> {
    pack["temperatures"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| t["sensor"].get("probe").is_some())
        .map(|t| f(&t["celsius"]))
        .collect()
}

/// The truth pack numbered `n`.
pub(crate) fn truth_pack(truth: &Value, n: u64) -> &Value {
    truth["packs"].as_array().unwrap().iter().find(|p| p["pack"] == n).unwrap_or_else(|| panic!("no pack {n}"))
}

/// Assert that every section of one `read` pack agrees with the truth pack of the same number.
pub(crate) fn assert_pack_matches(protocol: &str, got: &Value, truth: &Value) {
    let r = resolution(protocol);
    let n = &got["pack"];
    let what = |field: &str| format!("{protocol} pack {n} {field}");
    assert_eq!(got["online"], true, "{}", what("online"));
    close(&what("voltage"), &got["soc"]["voltage_volts"], f(&truth["voltage_volts"]), r.volts);
    close(&what("current"), &got["soc"]["current_amperes"], f(&truth["current_amperes"]), r.amperes);
    close(&what("SOC"), &got["soc"]["state_of_charge_ratio"], f(&truth["state_of_charge_ratio"]), r.soc);
    let mosfet = &got["mosfet"];
    close(
        &what("remaining capacity"),
        &mosfet["remaining_capacity_ampere_hours"],
        f(&truth["remaining_capacity_ampere_hours"]),
        r.ampere_hours,
    );
    assert_eq!(mosfet["charge_mosfet_enabled"], truth["charge_mosfet_enabled"], "{}", what("charge MOSFET"));
    assert_eq!(mosfet["discharge_mosfet_enabled"], truth["discharge_mosfet_enabled"], "{}", what("discharge MOSFET"));
    assert_eq!(mosfet["state"], truth["state"], "{}", what("state"));
    assert_eq!(got["status"]["cycle_count"], truth["cycle_count"], "{}", what("cycles"));
    assert_eq!(got["status"]["cell_count"], truth["cell_count"], "{}", what("cell count"));

    let cells = got["cells"]["cell_volts"].as_array().unwrap_or_else(|| panic!("{}: {got}", what("cell_volts")));
    let want = truth["cell_volts"].as_array().unwrap();
    assert_eq!(cells.len(), want.len(), "{}", what("number of cells"));
    for (i, (cell, want)) in cells.iter().zip(want).enumerate() {
        close(&what(&format!("cell {}", i + 1)), cell, f(want), 0.001);
    }
    let (lo, hi) = cells.iter().map(f).fold((f64::MAX, f64::MIN), |(lo, hi), v| (lo.min(v), hi.max(v)));
    close(&what("min_volts"), &got["cells"]["min_volts"], lo, 0.0);
    close(&what("max_volts"), &got["cells"]["max_volts"], hi, 0.0);

    let temperatures = got["temperatures"].as_object().unwrap_or_else(|| panic!("{}: {got}", what("temperatures")));
    let probes = truth_probes(truth);
    assert!(!probes.is_empty(), "the simulator has probes");
    for (i, want) in probes.iter().enumerate() {
        let label = format!("{:02}", i + 1);
        let value = temperatures.get(&label).unwrap_or_else(|| panic!("{}: {temperatures:?}", what(&label)));
        close(&what(&format!("probe {label}")), value, *want, r.celsius);
    }
    let count = &got["status"]["temperature_sensor_count"];
    assert_eq!(count.as_u64(), Some(probes.len() as u64), "{}", what("temperature sensor count"));
}

/// `read --all` against a simulator of `protocol`: exit 0 and every pack equal to the truth.
fn read_all_matches_truth(name: &str, protocol: &str, extra: &[&str]) {
    let sim = simulator(name, protocol, extra);
    let run = bms(cmd("read", tcp(protocol, &sim), &["--all"]));
    let doc = run.json();
    let truth = sim.truth_json();
    assert_eq!(doc["protocol"], protocol);
    let packs = doc["packs"].as_array().unwrap();
    assert_eq!(packs.len(), truth["packs"].as_array().unwrap().len(), "one entry per pack: {doc}");
    for pack in packs {
        assert_pack_matches(protocol, pack, truth_pack(&truth, pack["pack"].as_u64().unwrap()));
    }
    assert_eq!(doc["errors"], Value::Array(vec![]), "no request failed");
    assert_eq!(run.code, 0, "read --all --protocol {protocol} exits 0; stderr:\n{}", run.stderr);
}

#[test]
fn read_all_daly_over_a_pty_prints_every_value_of_the_truth() {
    let (sim, link) = Simulator::pty(
        "cli-read-daly-pty",
        &["--protocol", "daly", "--cells", "16", "--time-scale", "0", "--baud", "0", "--latency-ms", "0"],
    );
    let run = bms(cmd("read", connection("daly", "--serial", link.to_str().unwrap()), &["--all"]));
    assert_eq!(run.code, 0, "{}", run.stderr);
    let doc = run.json();
    let truth = sim.truth_json();
    assert_eq!(doc["packs"].as_array().unwrap().len(), 1);
    assert_pack_matches("daly", &doc["packs"][0], truth_pack(&truth, 1));
    // --all means all eight sections, the Daly alarm table included.
    let pack = doc["packs"][0].as_object().unwrap();
    for section in ["soc", "mosfet", "status", "cells", "temperatures", "balancing", "alarms", "info"] {
        assert!(pack.contains_key(section), "{section} missing from {doc}");
    }
    assert_eq!(doc["packs"][0]["alarms"]["active"], Value::Array(vec![]), "a healthy simulator has no alarm");
    assert_eq!(doc["errors"], Value::Array(vec![]));
}

#[test]
fn read_all_daly_modbus_over_tcp_prints_every_value_of_the_truth() {
    // Known bug (a): the optional version read is refused and counted as a failure, so this exits 1 for now.
    read_all_matches_truth("read-dmb", "daly-modbus", &["--cells", "8"]);
}

#[test]
fn read_all_sinowealth_over_tcp_prints_every_value_of_the_truth() {
    read_all_matches_truth("read-sino", "sinowealth", &["--cells", "8"]);
}

#[test]
fn read_all_pace_with_three_packs_prints_every_pack_as_the_truth_has_it() {
    read_all_matches_truth("read-pace", "pace", &["--packs", "3", "--cells", "15"]);
}

/// The section keys of each pack of a `read` document (besides `pack` and `online`).
fn section_keys(doc: &Value) -> Vec<Vec<String>> {
    doc["packs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_object().unwrap().keys().filter(|k| *k != "pack" && *k != "online").cloned().collect())
        .collect()
}

#[test]
fn read_with_sections_prints_only_those_sections() {
    let sim = simulator("sections", "daly", &[]);
    let truth = sim.truth_json();
    let t = truth_pack(&truth, 1);

    let cells = bms(cmd("read", tcp("daly", &sim), &["cells"]));
    assert_eq!(cells.code, 0, "{}", cells.stderr);
    let doc = cells.json();
    assert_eq!(section_keys(&doc), vec![vec!["cells".to_owned()]], "{doc}");
    let volts = doc["packs"][0]["cells"]["cell_volts"].as_array().unwrap();
    assert_eq!(volts.len(), t["cell_volts"].as_array().unwrap().len());
    for (i, (got, want)) in volts.iter().zip(t["cell_volts"].as_array().unwrap()).enumerate() {
        close(&format!("cell {}", i + 1), got, f(want), 0.001);
    }

    let two = bms(cmd("read", tcp("daly", &sim), &["soc", "mosfet"]));
    assert_eq!(two.code, 0, "{}", two.stderr);
    let doc = two.json();
    let mut keys = section_keys(&doc);
    keys[0].sort();
    assert_eq!(keys, vec![vec!["mosfet".to_owned(), "soc".to_owned()]], "{doc}");
    close("voltage", &doc["packs"][0]["soc"]["voltage_volts"], f(&t["voltage_volts"]), 0.1);
    assert_eq!(doc["packs"][0]["mosfet"]["discharge_mosfet_enabled"], t["discharge_mosfet_enabled"]);
}

#[test]
fn read_pack_n_prints_one_pace_pack_and_pack_all_prints_every_pack() {
    let sim = simulator("pack", "pace", &["--packs", "3", "--cells", "8"]);
    let truth = sim.truth_json();

    let one = bms(cmd("read", tcp("pace", &sim), &["--pack", "2", "soc", "cells"]));
    assert_eq!(one.code, 0, "{}", one.stderr);
    let doc = one.json();
    let packs = doc["packs"].as_array().unwrap();
    assert_eq!(packs.len(), 1, "--pack 2 prints one pack: {doc}");
    assert_eq!(packs[0]["pack"], 2);
    let t = truth_pack(&truth, 2);
    close("pack 2 voltage", &packs[0]["soc"]["voltage_volts"], f(&t["voltage_volts"]), 0.001);
    close("pack 2 SOC", &packs[0]["soc"]["state_of_charge_ratio"], f(&t["state_of_charge_ratio"]), 0.001);
    for (i, (got, want)) in
        packs[0]["cells"]["cell_volts"].as_array().unwrap().iter().zip(t["cell_volts"].as_array().unwrap()).enumerate()
    {
        close(&format!("pack 2 cell {}", i + 1), got, f(want), 0.001);
    }
    // The packs differ in the simulator, so a wrong pack would not pass the comparison above by chance.
    assert!((f(&truth_pack(&truth, 1)["voltage_volts"]) - f(&t["voltage_volts"])).abs() > 0.01);

    let all = bms(cmd("read", tcp("pace", &sim), &["--pack", "all", "soc"]));
    assert_eq!(all.code, 0, "{}", all.stderr);
    let doc = all.json();
    let numbers: Vec<u64> = doc["packs"].as_array().unwrap().iter().map(|p| p["pack"].as_u64().unwrap()).collect();
    assert_eq!(numbers, vec![1, 2, 3]);
    for p in doc["packs"].as_array().unwrap() {
        let t = truth_pack(&truth, p["pack"].as_u64().unwrap());
        close("voltage", &p["soc"]["voltage_volts"], f(&t["voltage_volts"]), 0.001);
    }
}

#[test]
fn pace_pack_16_is_read_and_configured_and_a_pack_the_device_lacks_is_an_error() {
    let sim = simulator("pack16", "pace", &["--packs", "16", "--cells", "4"]);
    let truth = sim.truth_json();
    let run = bms(cmd("read", tcp("pace", &sim), &["--pack", "16", "soc"]));
    assert_eq!(run.code, 0, "{}", run.stderr);
    let doc = run.json();
    assert_eq!(doc["packs"].as_array().unwrap().len(), 1, "{doc}");
    assert_eq!(doc["packs"][0]["pack"], 16);
    let t = truth_pack(&truth, 16);
    close("pack 16 voltage", &doc["packs"][0]["soc"]["voltage_volts"], f(&t["voltage_volts"]), 0.001);
    assert!((f(&truth_pack(&truth, 1)["voltage_volts"]) - f(&t["voltage_volts"])).abs() > 0.01, "packs differ");
    let beyond = bms(cmd("read", tcp("pace", &sim), &["--pack", "17", "soc"]));
    assert_eq!(beyond.code, 1, "{}", beyond.stderr);
    assert!(beyond.stderr.contains("Pace packs are numbered 1–16, not 17"), "{}", beyond.stderr);

    // The configuration takes pack 16 too.
    let dir = crate::util::Scratch::new("cli-pack16-config");
    let config = dir.write(
        "config.yaml",
        &format!(
            "devices:\n  - name: rack\n    protocol: pace\n    tcp: {}\n    pace: {{ packs: [15, 16] }}\n",
            sim.addr.as_deref().unwrap()
        ),
    );
    let checked = bms(["config", "check", config.to_str().unwrap()]);
    assert_eq!(checked.code, 0, "{}{}", checked.stdout, checked.stderr);

    // A device that answers but has no such pack: an error naming the pack, not an empty document and exit 0.
    let daly = simulator("pack-missing", "daly", &[]);
    let missing = bms(cmd("read", tcp("daly", &daly), &["--pack", "5", "soc"]));
    assert_eq!(missing.code, 1, "{}", missing.stdout);
    assert!(missing.stdout.is_empty(), "{}", missing.stdout);
    assert!(
        missing.stderr.contains("nothing was read for pack 5: the device reported pack(s) 1"),
        "{}",
        missing.stderr
    );
    let check = bms(cmd("check", tcp("daly", &daly), &["--pack", "5"]));
    assert_eq!(check.code, 3, "{}", check.stdout);
    assert!(check.stdout.starts_with("BMS UNKNOWN - nothing was read for pack 5"), "{}", check.stdout);
}

#[test]
fn read_two_daly_boards_by_address_list_prints_both_boards() {
    let sim = simulator("boards", "daly", &["--boards", "2", "--cells", "8"]);
    let run = bms(cmd("read", tcp("daly", &sim), &["--address", "1,2", "--all"]));
    assert_eq!(run.code, 0, "{}", run.stderr);
    let doc = run.json();
    let truth = sim.truth_json();
    let packs = doc["packs"].as_array().unwrap();
    let numbers: Vec<u64> = packs.iter().map(|p| p["pack"].as_u64().unwrap()).collect();
    assert_eq!(numbers, vec![1, 2], "{doc}");
    for pack in packs {
        assert_pack_matches("daly", pack, truth_pack(&truth, pack["pack"].as_u64().unwrap()));
    }
    assert!(
        (f(&truth_pack(&truth, 1)["current_amperes"]) - f(&truth_pack(&truth, 2)["current_amperes"])).abs() > 0.2,
        "the two boards differ, so each was read from its own address"
    );
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "bool",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "list",
        Value::Object(_) => "object",
    }
}

/// Every difference in keys or value kinds between two documents, as paths (both sides recursively).
fn layout_differences(path: &str, ours: &Value, theirs: &Value, out: &mut Vec<String>) {
    if kind(ours) != kind(theirs) {
        out.push(format!("{path}: ours {} vs theirs {}", kind(ours), kind(theirs)));
        return;
    }
    if let (Value::Object(a), Value::Object(b)) = (ours, theirs) {
        for key in a.keys().filter(|k| !b.contains_key(*k)) {
            out.push(format!("{path}.{key}: only ours"));
        }
        for key in b.keys().filter(|k| !a.contains_key(*k)) {
            out.push(format!("{path}.{key}: only theirs"));
        }
        for (key, value) in a {
            if let Some(other) = b.get(key) {
                layout_differences(&format!("{path}.{key}"), value, other, out);
            }
        }
    }
}

/// In a daly-bms-cli `range` section, the named cell or sensor must carry the named extreme.
fn assert_range_consistent(doc: &Value, range: &str, list: &str, ends: [(&str, &str); 2]) {
    let values: &Map<String, Value> = doc[list].as_object().unwrap();
    for (value_key, index_key) in ends {
        let index = doc[range][index_key].to_string();
        let named = values.get(&index).unwrap_or_else(|| panic!("{range}.{index_key} = {index} is not in {list}"));
        assert_eq!(named, &doc[range][value_key], "{range}: {index_key} {index} does not hold {value_key}");
    }
}

#[test]
fn read_format_daly_bms_cli_has_its_layout_and_agrees_with_a_live_daly_bms_cli() {
    let cli = daly_bms_cli();
    let (sim, link) = Simulator::pty(
        "cli-dalycli-format",
        &["--protocol", "daly", "--cells", "16", "--time-scale", "0", "--baud", "0", "--latency-ms", "0"],
    );
    let run = bms(cmd("read", connection("daly", "--serial", link.to_str().unwrap()), &["--format", "daly-bms-cli"]));
    assert_eq!(run.code, 0, "{}", run.stderr);
    let ours = run.json();

    let captured: Value = serde_json::from_str(&std::fs::read_to_string(fixture("daly-bms-cli-all.json")).unwrap())
        .expect("the fixture is JSON");
    let mut diffs = Vec::new();
    layout_differences("", &ours, &captured, &mut diffs);
    assert!(diffs.is_empty(), "layout differs from the captured daly-bms-cli --all run: {diffs:#?}");

    let live = Process::new(cli).arg("-d").arg(&link).arg("--all").output().unwrap();
    assert!(live.status.success(), "daly-bms-cli failed: {}", String::from_utf8_lossy(&live.stderr));
    let theirs: Value = serde_json::from_slice(&live.stdout).unwrap();
    let mut diffs = Vec::new();
    layout_differences("", &ours, &theirs, &mut diffs);
    assert!(diffs.is_empty(), "layout differs from a live daly-bms-cli --all run: {diffs:#?}");

    // Same values, except which cell or sensor a range names on a tie (a documented deviation): there, each
    // side's named cell or sensor must hold the extreme both sides agree on.
    for key in ["soc", "mosfet_status", "status", "cell_voltages", "temperatures", "balancing_status", "errors"] {
        assert_eq!(ours[key], theirs[key], "{key}");
    }
    for (range, list, ends) in [
        (
            "cell_voltage_range",
            "cell_voltages",
            [("highest_voltage", "highest_cell"), ("lowest_voltage", "lowest_cell")],
        ),
        (
            "temperature_range",
            "temperatures",
            [("highest_temperature", "highest_sensor"), ("lowest_temperature", "lowest_sensor")],
        ),
    ] {
        for (value_key, _) in ends {
            assert_eq!(ours[range][value_key], theirs[range][value_key], "{range}.{value_key}");
        }
        assert_range_consistent(&ours, range, list, ends);
        assert_range_consistent(&theirs, range, list, ends);
    }

    // And both agree with the truth.
    let truth = sim.truth_json();
    let t = truth_pack(&truth, 1);
    close("total_voltage", &ours["soc"]["total_voltage"], f(&t["voltage_volts"]), 0.1);
    close("soc_percent", &ours["soc"]["soc_percent"], f(&t["state_of_charge_ratio"]) * 100.0, 0.1);
    for (i, want) in t["cell_volts"].as_array().unwrap().iter().enumerate() {
        close(&format!("cell {}", i + 1), &ours["cell_voltages"][(i + 1).to_string()], f(want), 0.001);
    }
}

#[test]
fn read_verbose_logs_every_frame_in_hex_on_stderr_and_keeps_stdout_pure_json() {
    let sim = simulator("verbose", "daly", &[]);
    let run = bms(cmd("read", tcp("daly", &sim), &["soc", "--verbose"]));
    assert_eq!(run.code, 0, "{}", run.stderr);
    // stdout is the document alone: it parses whole.
    let doc = run.json();
    close(
        "voltage",
        &doc["packs"][0]["soc"]["voltage_volts"],
        f(&truth_pack(&sim.truth_json(), 1)["voltage_volts"]),
        0.1,
    );

    let request = to_hex(&Request::read(DalyCommand::Soc, Address::Rs485, Filler::Zero).encode());
    assert!(run.stderr.contains(&request), "the 0x90 request {request} is logged:\n{}", run.stderr);
    // Each reply is logged as hex too: a 13-byte frame from board 1 (0xA5 0x01) answering 0x90.
    let replies: Vec<&str> =
        run.stderr.split_whitespace().filter(|w| w.len() == 26 && w.starts_with("a50190")).collect();
    assert!(!replies.is_empty(), "the 0x90 reply is logged in hex:\n{}", run.stderr);
    assert!(replies.iter().all(|w| w.chars().all(|c| c.is_ascii_hexdigit())));
    // Known bug (c): stderr is a pipe here, not a terminal, so no colour escapes belong in it.
    assert!(!run.stderr.contains('\u{1b}'), "ANSI escapes in non-terminal stderr:\n{:?}", run.stderr);
    assert!(!run.stdout.contains('\u{1b}'));
}

/// The hex words of the `rx …` lines a `--verbose` run logged (`rx HEX`, `rx echo HEX`, `rx rejected HEX (why)`).
fn logged_rx(stderr: &str) -> Vec<(String, String)> {
    stderr
        .lines()
        .filter_map(|line| {
            let words: Vec<&str> = line.split_whitespace().collect();
            let at = words.iter().position(|w| *w == "rx")?;
            match words.get(at + 1..)? {
                [kind @ ("echo" | "rejected"), hex, ..] => Some(((*kind).to_owned(), (*hex).to_owned())),
                [hex, ..] => Some(("frame".to_owned(), (*hex).to_owned())),
                [] => None,
            }
        })
        .collect()
}

#[test]
fn verbose_logs_each_frame_read_from_a_pty_as_one_line_that_decode_takes_as_it_is() {
    // A serial port hands the reply over a byte or two at a time; the log still shows whole frames.
    let (sim, link) = Simulator::pty("cli-verbose-pty", &["--protocol", "daly", "--cells", "16", "--time-scale", "0"]);
    let run = bms(cmd("read", connection("daly", "--serial", link.to_str().unwrap()), &["soc", "cells", "--verbose"]));
    assert_eq!(run.code, 0, "{}", run.stderr);
    let rx = logged_rx(&run.stderr);
    // 0x94 (to learn the cell count), 0x90, 0x93 and six 0x95 frames for 16 cells.
    let frames: Vec<&String> = rx.iter().filter(|(kind, _)| kind == "frame").map(|(_, hex)| hex).collect();
    assert!(frames.len() >= 8, "whole frames logged:\n{}", run.stderr);
    assert!(frames.iter().all(|hex| hex.len() == 26), "every line one 13-byte frame:\n{}", run.stderr);
    assert!(rx.iter().all(|(kind, _)| kind == "frame"), "a clean line rejects nothing:\n{}", run.stderr);

    let truth = sim.truth_json();
    let t = truth_pack(&truth, 1);
    // The 0x90 line pasted into decode gives the pack's voltage.
    let soc = frames.iter().find(|hex| hex.starts_with("a50190")).expect("a logged 0x90 frame");
    let decoded = bms(["decode", "--protocol", "daly", soc.as_str()]);
    assert_eq!(decoded.code, 0, "{}", decoded.stderr);
    close("decoded voltage", &decoded.json()["device"]["packs"][0]["voltage_volts"], f(&t["voltage_volts"]), 0.1);
    // The cell frames pasted together (several arguments are one stream) give every cell.
    let cells: Vec<&str> = frames.iter().filter(|hex| hex.starts_with("a50195")).map(|h| h.as_str()).collect();
    assert_eq!(cells.len(), 6, "{}", run.stderr);
    let mut args = vec!["decode", "--protocol", "daly", "--cells", "16"];
    args.extend(&cells);
    let decoded = bms(args);
    assert_eq!(decoded.code, 0, "{}", decoded.stderr);
    let doc = decoded.json();
    let got = doc["device"]["packs"][0]["cell_volts"].as_array().unwrap();
    let want = t["cell_volts"].as_array().unwrap();
    assert_eq!(got.len(), 16, "{doc}");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        close(&format!("decoded cell {}", i + 1), g, f(w), 0.001);
    }
}

#[test]
fn verbose_logs_a_damaged_reply_as_one_rejected_chunk_that_decode_explains() {
    // Every reply has one byte flipped: the log shows each as a rejected chunk with its reason, pasteable too.
    let sim = simulator("verbose-corrupt", "pace", &["--fault", "corrupt=1"]);
    let run = bms(cmd("read", tcp("pace", &sim), &["soc", "--verbose", "--retry", "0"]));
    let rx = logged_rx(&run.stderr);
    let rejected: Vec<&String> = rx.iter().filter(|(kind, _)| kind == "rejected").map(|(_, hex)| hex).collect();
    assert!(!rejected.is_empty(), "{}", run.stderr);
    assert!(rx.iter().all(|(kind, _)| kind != "frame"), "nothing passed:\n{}", run.stderr);
    for hex in rejected {
        assert!(hex.chars().all(|c| c.is_ascii_hexdigit()), "{hex}");
        let decoded = bms(["decode", "--protocol", "pace", hex.as_str()]);
        assert_eq!(decoded.code, 1, "a damaged frame does not decode: {}", decoded.stdout);
        assert!(decoded.stderr.starts_with("error: "), "{}", decoded.stderr);
    }
}

/// A TCP listener that accepts every connection, never answers, and keeps every byte it is sent: a port with
/// nothing behind it, as a serial server with the BMS unplugged looks.
struct SilentListener {
    addr: String,
    received: Arc<Mutex<Vec<u8>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl SilentListener {
    fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let received = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (bytes, done) = (Arc::clone(&received), Arc::clone(&stop));
        let thread = std::thread::spawn(move || {
            let mut clients: Vec<TcpStream> = Vec::new();
            let mut buf = [0u8; 1024];
            while !done.load(Ordering::Relaxed) {
                if let Ok((stream, _)) = listener.accept() {
                    stream.set_nonblocking(true).unwrap();
                    clients.push(stream);
                }
                for client in &mut clients {
                    loop {
                        match client.read(&mut buf) {
                            Ok(n) if n > 0 => bytes.lock().unwrap().extend_from_slice(&buf[..n]),
                            Err(e) if e.kind() == ErrorKind::Interrupted => {}
                            _ => break,
                        }
                    }
                }
                std::thread::sleep(Duration::from_millis(2));
            }
        });
        Self { addr, received, stop, thread: Some(thread) }
    }

    fn received(&self) -> Vec<u8> {
        // Let bytes still in flight arrive first.
        std::thread::sleep(Duration::from_millis(20));
        self.received.lock().unwrap().clone()
    }
}

impl Drop for SilentListener {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// A loopback port nobody listens on: bound, then released.
fn closed_port() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().to_string()
}

/// The one status line of a `check` run, checked for the plugin format; returns the text before and after `|`.
fn status_line(run: &Run, status: &str) -> (String, String) {
    let lines: Vec<&str> = run.stdout.lines().collect();
    assert_eq!(lines.len(), 1, "check prints one line:\n{}", run.stdout);
    let line = lines[0];
    assert!(line.starts_with(&format!("BMS {status} - ")), "expected {status}: {line}");
    match line.split_once(" | ") {
        Some((text, perf)) => (text.to_owned(), perf.to_owned()),
        None => (line.to_owned(), String::new()),
    }
}

/// The value of perfdata item `label` (`label=VALUE[UOM];…`).
fn perf_value(perf: &str, label: &str) -> f64 {
    let item = perf
        .split(' ')
        .find_map(|item| item.strip_prefix(&format!("{label}=")))
        .unwrap_or_else(|| panic!("no {label} in perfdata {perf}"));
    let value = item.split(';').next().unwrap().trim_end_matches(|c: char| c.is_ascii_alphabetic() || c == '%');
    value.parse().unwrap_or_else(|_| panic!("{label}: {item}"))
}

#[test]
fn check_is_ok_with_defaults_on_a_healthy_simulator_and_its_perfdata_is_the_truth() {
    let sim = simulator("check-ok", "daly", &[]);
    let run = bms(cmd("check", tcp("daly", &sim), &[]));
    let (_, perf) = status_line(&run, "OK");
    assert_eq!(run.code, 0, "{}", run.stdout);
    let truth = sim.truth_json();
    let t = truth_pack(&truth, 1);
    let cells: Vec<f64> = t["cell_volts"].as_array().unwrap().iter().map(f).collect();
    let max = cells.iter().copied().fold(f64::MIN, f64::max);
    let min = cells.iter().copied().fold(f64::MAX, f64::min);
    close("perf voltage", &Value::from(perf_value(&perf, "pack1_voltage")), f(&t["voltage_volts"]), 0.1);
    close("perf soc", &Value::from(perf_value(&perf, "pack1_soc")), f(&t["state_of_charge_ratio"]) * 100.0, 0.1);
    close("perf cell_max", &Value::from(perf_value(&perf, "pack1_cell_max")), max, 0.001);
    close("perf cell_min", &Value::from(perf_value(&perf, "pack1_cell_min")), min, 0.001);
    for (i, want) in truth_probes(t).iter().enumerate() {
        close("perf temp", &Value::from(perf_value(&perf, &format!("pack1_temp_{:02}", i + 1))), *want, 1.0);
    }
}

#[test]
fn check_warns_and_goes_critical_by_thresholds_set_around_the_truth() {
    let sim = simulator("check-levels", "pace", &["--packs", "2", "--cells", "8"]);
    let truth = sim.truth_json();
    let t = truth_pack(&truth, 1);
    let cells: Vec<f64> = t["cell_volts"].as_array().unwrap().iter().map(f).collect();
    let (top, max) =
        cells.iter().copied().enumerate().fold((0, f64::MIN), |a, (i, v)| if v > a.1 { (i + 1, v) } else { a });
    // The reported value is within 1 mV of the truth, so 1.5 mV below it is surely crossed and 50 mV above not.
    let warn = format!("{:.4},{:.4}", max - 0.0015, max + 0.05);
    let crit = format!("{:.4},{:.4}", max - 0.01, max - 0.0015);

    let warning = bms(cmd("check", tcp("pace", &sim), &["--pack", "1", "--cell-high", &warn]));
    let (text, perf) = status_line(&warning, "WARNING");
    assert_eq!(warning.code, 1, "{}", warning.stdout);
    assert!(text.contains(&format!("pack 1 cell {top} ")), "names the highest cell {top}: {text}");
    assert!(!perf.is_empty() && perf.contains("pack1_cell_max="), "{perf}");
    assert!(!perf.contains("pack2_"), "--pack 1 judges pack 1 only: {perf}");

    let critical = bms(cmd("check", tcp("pace", &sim), &["--pack", "1", "--cell-high", &crit]));
    let (text, perf) = status_line(&critical, "CRITICAL");
    assert_eq!(critical.code, 2, "{}", critical.stdout);
    assert!(text.contains(&format!("pack 1 cell {top} ")), "{text}");
    assert!(perf.contains("pack1_cell_max="), "{perf}");

    // A low-side limit: SOC warning above the truth, critical below it.
    let soc = f(&t["state_of_charge_ratio"]) * 100.0;
    let soc_limits = format!("{:.1},{:.1}", soc + 5.0, soc - 5.0);
    let low = bms(cmd("check", tcp("pace", &sim), &["--pack", "1", "--soc-low", &soc_limits]));
    status_line(&low, "WARNING");
    assert_eq!(low.code, 1, "{}", low.stdout);

    // Both packs judged by default: a limit below pack 2's lowest cell alone still trips.
    let t2 = truth_pack(&truth, 2);
    let min2 = t2["cell_volts"].as_array().unwrap().iter().map(f).fold(f64::MAX, f64::min);
    let low_cells = format!("{:.4},{:.4}", min2 + 0.0015, min2 - 0.05);
    let both = bms(cmd("check", tcp("pace", &sim), &["--cell-low", &low_cells]));
    let (text, perf) = status_line(&both, "WARNING");
    assert!(text.contains("pack 2 cell"), "{text}");
    assert!(perf.contains("pack1_") && perf.contains("pack2_"), "{perf}");
}

#[test]
fn check_is_unknown_when_nothing_answers_the_port_is_closed_or_the_usage_is_wrong() {
    let silent = SilentListener::start();
    // One short attempt per request: the point is the verdict, not waiting out retries.
    let quick = |target: &str| {
        ["check", "--protocol", "daly", "--tcp", target, "--timeout-ms", "100", "--retry", "0"].map(str::to_owned)
    };
    let run = bms(quick(&silent.addr));
    let (text, perf) = status_line(&run, "UNKNOWN");
    assert_eq!(run.code, 3, "{}", run.stdout);
    assert!(text.contains("timeout") || text.contains("no reply") || text.contains("no data"), "{text}");
    assert!(perf.is_empty(), "no perfdata without data: {}", run.stdout);
    assert!(!silent.received().is_empty(), "the check did ask");

    let closed = closed_port();
    let run = bms(quick(&closed));
    let (text, _) = status_line(&run, "UNKNOWN");
    assert_eq!(run.code, 3);
    assert!(text.contains(&closed), "names the endpoint: {text}");

    let usage = bms(["check", "--protocol", "daly", "--tcp", &closed, "--cell-high", "high"]);
    assert_eq!(usage.code, 3, "a usage error is UNKNOWN to Nagios:\n{}", usage.stderr);
    assert!(usage.stderr.contains("--cell-high"), "{}", usage.stderr);
    // Nagios shows only stdout: the usage error still gets its one status line there.
    assert!(usage.stdout.starts_with("BMS UNKNOWN - ") && usage.stdout.contains("--cell-high"), "{}", usage.stdout);
    let missing = bms(["check", "--protocol", "daly"]);
    assert_eq!(missing.code, 3, "{}", missing.stderr);
    assert!(missing.stdout.starts_with("BMS UNKNOWN - "), "{}", missing.stdout);
}

#[test]
fn set_without_yes_shows_the_frame_and_sends_nothing() {
    let silent = SilentListener::start();
    let run = bms(cmd("set", connection("daly", "--tcp", &silent.addr), &["--discharge-mosfet", "off"]));
    assert_ne!(run.code, 0, "refusing is not success");
    let frame = to_hex(&Request::discharge_mosfet(Address::Rs485, false).encode());
    assert!(run.stdout.contains(&frame), "shows the frame {frame}:\n{}", run.stdout);
    assert!(run.stderr.contains("--yes"), "says how to send it:\n{}", run.stderr);
    assert_eq!(silent.received(), Vec::<u8>::new(), "nothing may reach the bus without --yes");

    // Against the simulator, the truth stays as it was.
    let sim = simulator("set-refused", "daly", &[]);
    for action in [["--discharge-mosfet", "off"], ["--charge-mosfet", "off"], ["--soc", "10"]] {
        let run = bms(cmd("set", tcp("daly", &sim), &action));
        assert_ne!(run.code, 0, "{action:?}");
    }
    let t = sim.truth_json();
    let t = truth_pack(&t, 1);
    assert_eq!(t["discharge_mosfet_enabled"], true);
    assert_eq!(t["charge_mosfet_enabled"], true);
    assert!(f(&t["state_of_charge_ratio"]) > 0.2, "SOC unchanged: {}", t["state_of_charge_ratio"]);
}

#[test]
fn set_with_yes_switches_mosfets_and_soc_and_the_bms_obeys() {
    let sim = simulator("set-yes", "daly", &[]);
    let truth = || truth_pack(&sim.truth_json(), 1).clone();
    assert_eq!(truth()["discharge_mosfet_enabled"], true);

    let run = bms(cmd("set", tcp("daly", &sim), &["--discharge-mosfet", "off", "--yes"]));
    assert_eq!(run.code, 0, "{}{}", run.stdout, run.stderr);
    assert!(run.stdout.contains("obeyed") && !run.stdout.contains("NOT"), "{}", run.stdout);
    assert!(run.stdout.contains(&to_hex(&Request::discharge_mosfet(Address::Rs485, false).encode())));
    assert_eq!(truth()["discharge_mosfet_enabled"], false);
    assert_eq!(truth()["charge_mosfet_enabled"], true, "only the discharge MOSFET moved");

    let run = bms(cmd("set", tcp("daly", &sim), &["--charge-mosfet", "off", "--yes"]));
    assert_eq!(run.code, 0, "{}{}", run.stdout, run.stderr);
    assert!(run.stdout.contains("obeyed"), "{}", run.stdout);
    assert_eq!(truth()["charge_mosfet_enabled"], false);

    let run = bms(cmd("set", tcp("daly", &sim), &["--discharge-mosfet", "on", "--yes"]));
    assert_eq!(run.code, 0, "{}{}", run.stdout, run.stderr);
    assert_eq!(truth()["discharge_mosfet_enabled"], true);

    let run = bms(cmd("set", tcp("daly", &sim), &["--soc", "42.5", "--yes"]));
    assert_eq!(run.code, 0, "{}{}", run.stdout, run.stderr);
    assert!(run.stdout.contains("obeyed") && run.stdout.contains("42.5"), "{}", run.stdout);
    close("SOC after set", &truth()["state_of_charge_ratio"], 0.425, 0.0005);

    // A read afterwards sees the new state, as any client would.
    let read = bms(cmd("read", tcp("daly", &sim), &["soc", "mosfet"]));
    let doc = read.json();
    assert_eq!(doc["packs"][0]["mosfet"]["charge_mosfet_enabled"], false);
    assert_eq!(doc["packs"][0]["mosfet"]["discharge_mosfet_enabled"], true);
    close("SOC read back", &doc["packs"][0]["soc"]["state_of_charge_ratio"], 0.425, 0.001);
}

#[test]
fn set_refuses_other_protocols_and_two_boards_before_sending() {
    let silent = SilentListener::start();
    let run = bms(cmd("set", connection("pace", "--tcp", &silent.addr), &["--discharge-mosfet", "off", "--yes"]));
    assert_ne!(run.code, 0);
    assert!(run.stderr.contains("daly"), "{}", run.stderr);
    let run = bms(cmd("set", connection("daly", "--tcp", &silent.addr), &["--address", "1,2", "--soc", "50", "--yes"]));
    assert_ne!(run.code, 0);
    assert!(run.stderr.contains("--address"), "{}", run.stderr);
    assert_eq!(silent.received(), Vec::<u8>::new());
}

/// The `requests=… replies=…` line the TCP simulator logs when its one client of a `set` run goes.
fn client_gone_line(sim: &Simulator) -> String {
    wait_for("the simulator to log the client going", Duration::from_secs(5), || {
        sim.lines.lock().unwrap().iter().find(|l| l.contains(" gone: ")).cloned()
    })
}

#[test]
fn set_daly_modbus_over_a_pty_switches_each_mosfet_and_the_bms_obeys() {
    let (sim, link) = Simulator::pty(
        "cli-set-dmb-pty",
        &["--protocol", "daly-modbus", "--time-scale", "0", "--baud", "0", "--latency-ms", "0"],
    );
    let serial = || connection("daly-modbus", "--serial", link.to_str().unwrap());
    let truth = || truth_pack(&sim.truth_json(), 1).clone();
    assert_eq!(
        (truth()["charge_mosfet_enabled"].clone(), truth()["discharge_mosfet_enabled"].clone()),
        (true.into(), true.into())
    );

    let run = bms(cmd("set", serial(), &["--charge-mosfet", "off", "--yes"]));
    assert_eq!(run.code, 0, "{}{}", run.stdout, run.stderr);
    // The D2 charge-MOSFET-off frame, shown with its meaning before it is sent.
    let frame = to_hex(&encode_request(ModbusMap::D2, d2::set_charge_mosfet(false)));
    assert_eq!(frame, "d20600a500008a4a");
    assert!(run.stdout.contains(&frame), "shows the frame {frame}:\n{}", run.stdout);
    assert!(run.stdout.contains("register 0x00a5 (charge MOSFET switch) = 0"), "{}", run.stdout);
    assert!(run.stdout.contains("sent: acknowledged (echo: register 0x00a5 = 0)"), "{}", run.stdout);
    assert!(
        run.stdout.contains("the BMS obeyed: the charge MOSFET is off") && !run.stdout.contains("NOT"),
        "{}",
        run.stdout
    );
    assert_eq!(truth()["charge_mosfet_enabled"], false);
    assert_eq!(truth()["discharge_mosfet_enabled"], true, "only the charge MOSFET moved");

    let run = bms(cmd("set", serial(), &["--discharge-mosfet", "off", "--yes"]));
    assert_eq!(run.code, 0, "{}{}", run.stdout, run.stderr);
    assert!(run.stdout.contains("d20600a600007a4a") && run.stdout.contains("obeyed"), "{}", run.stdout);
    assert_eq!(truth()["discharge_mosfet_enabled"], false);

    let run = bms(cmd("set", serial(), &["--charge-mosfet", "on", "--yes"]));
    assert_eq!(run.code, 0, "{}{}", run.stdout, run.stderr);
    assert_eq!(truth()["charge_mosfet_enabled"], true);

    // A read afterwards sees the new state, as any client would.
    let doc = bms(cmd("read", serial(), &["mosfet"])).json();
    assert_eq!(doc["packs"][0]["mosfet"]["charge_mosfet_enabled"], true);
    assert_eq!(doc["packs"][0]["mosfet"]["discharge_mosfet_enabled"], false);
}

#[test]
fn set_daly_modbus_over_tcp_sends_the_write_once_and_reads_back_once() {
    let sim = simulator("set-dmb-tcp", "daly-modbus", &[]);
    let run = bms(cmd("set", tcp("daly-modbus", &sim), &["--discharge-mosfet", "off", "--yes"]));
    assert_eq!(run.code, 0, "{}{}", run.stdout, run.stderr);
    assert!(run.stdout.contains("the BMS obeyed: the discharge MOSFET is off"), "{}", run.stdout);
    assert_eq!(truth_pack(&sim.truth_json(), 1)["discharge_mosfet_enabled"], false);
    // The write and the one read-back block: nothing repeated.
    assert!(client_gone_line(&sim).contains("requests=2 replies=2"), "{:?}", sim.lines.lock().unwrap());
}

#[test]
fn set_daly_modbus_to_a_board_that_never_answers_says_it_did_not_obey() {
    // The simulator holds the D2 board only: a write to p81 board 1 goes unanswered, and so does the read-back.
    let sim = simulator("set-dmb-p81", "daly-modbus", &[]);
    let run = bms(cmd("set", tcp("daly-modbus", &sim), &["--address", "p81:1", "--charge-mosfet", "off", "--yes"]));
    assert_eq!(run.code, 1, "{}{}", run.stdout, run.stderr);
    assert!(run.stdout.contains("810601210000c7fc"), "the p81 frame for board 1: {}", run.stdout);
    assert!(run.stdout.contains("sent: no acknowledgement from the board"), "{}", run.stdout);
    assert!(run.stdout.contains("the BMS did NOT obey: the BMS did not answer the read-back"), "{}", run.stdout);
    assert_eq!(truth_pack(&sim.truth_json(), 1)["charge_mosfet_enabled"], true);
}

#[test]
fn set_daly_modbus_refuses_soc_and_restart_and_without_yes_sends_nothing() {
    let sim = simulator("set-dmb-refused", "daly-modbus", &[]);
    let before = sim.truth_json();
    for action in [&["--soc", "50", "--yes"][..], &["--restart", "--yes"]] {
        let run = bms(cmd("set", tcp("daly-modbus", &sim), action));
        assert_eq!(run.code, 1, "{action:?}");
        assert!(run.stderr.contains("daly-modbus has no write to"), "names the protocol: {}", run.stderr);
        assert!(run.stderr.contains("nothing was sent"), "{}", run.stderr);
        assert!(run.stdout.is_empty(), "no frame is offered for an action the protocol lacks: {}", run.stdout);
    }
    let run = bms(cmd("set", tcp("daly-modbus", &sim), &["--charge-mosfet", "off"]));
    assert_ne!(run.code, 0, "refusing is not success");
    assert!(run.stdout.contains("d20600a500008a4a") && run.stderr.contains("--yes"), "{}{}", run.stdout, run.stderr);
    // None of the three even connected, and the battery is as it was.
    std::thread::sleep(Duration::from_millis(100));
    let lines = sim.lines.lock().unwrap().clone();
    assert!(!lines.iter().any(|l| l.contains("connected")), "{lines:?}");
    assert_eq!(sim.truth_json(), before);

    // On a bare port too: not one byte reaches it.
    let silent = SilentListener::start();
    for action in [&["--soc", "50", "--yes"][..], &["--restart", "--yes"], &["--discharge-mosfet", "off"]] {
        assert_ne!(bms(cmd("set", connection("daly-modbus", "--tcp", &silent.addr), action)).code, 0);
    }
    assert_eq!(silent.received(), Vec::<u8>::new());
}

/// `detect` on `target` with short timeouts: a silent protocol costs two timeouts per probe.
fn detect(target: &str) -> Run {
    bms(["detect", "--tcp", target, "--timeout-ms", "150", "--request-gap-ms", "0"])
}

#[test]
fn detect_finds_each_protocol_and_prints_a_config_block_for_it() {
    let cases: [(&str, &str, &[&str], &str); 4] = [
        ("daly", "daly: { address: rs485 }", &[], "detect-daly"),
        ("daly-modbus", "daly_modbus: { address: d2 }", &[], "detect-dmb"),
        ("sinowealth", "sinowealth: {}", &["--cells", "8"], "detect-sino"),
        ("pace", "pace: { address: 1", &["--packs", "2"], "detect-pace"),
    ];
    // Each detect waits out the probes that get no answer: run the four side by side.
    let handles: Vec<_> = cases
        .into_iter()
        .map(|(protocol, config, extra, name)| {
            std::thread::spawn(move || {
                let sim = simulator(name, protocol, extra);
                let run = detect(sim.addr.as_deref().unwrap());
                (protocol, config, run, sim.truth_json(), sim.addr.clone().unwrap())
            })
        })
        .collect();
    for handle in handles {
        let (protocol, config, run, truth, addr) = handle.join().unwrap();
        assert_eq!(run.code, 0, "detect on {protocol}: {}", run.stderr);
        let out = &run.stdout;
        assert!(out.starts_with("devices:\n"), "{out}");
        assert_eq!(out.matches("- name:").count(), 1, "{protocol}: exactly one device found:\n{out}");
        assert!(out.contains(&format!("    protocol: {protocol}\n")), "{protocol}:\n{out}");
        assert!(out.contains(&format!("    tcp: {addr}\n")), "{protocol}:\n{out}");
        assert!(out.contains(config), "{protocol}: {config}\n{out}");
        // The summary comment carries what was read: every pack's voltage, as the truth has it.
        for pack in truth["packs"].as_array().unwrap() {
            let n = pack["pack"].as_u64().unwrap();
            let shown = out
                .split(&format!("pack {n} "))
                .nth(1)
                .and_then(|rest| rest.split(" V").next())
                .and_then(|v| v.parse::<f64>().ok())
                .unwrap_or_else(|| panic!("{protocol}: no voltage for pack {n}:\n{out}"));
            close(&format!("{protocol} pack {n} voltage"), &Value::from(shown), f(&pack["voltage_volts"]), 0.1);
        }
    }
}

/// Every frame in what detect sent, by its framing, with the reason it is a write if it is one.
fn write_commands(bytes: &[u8]) -> (Vec<String>, [usize; 4]) {
    let mut writes = Vec::new();
    let mut seen = [0usize; 4]; // daly, modbus, sinowealth, pace
    let mut i = 0;
    while i < bytes.len() {
        let rest = &bytes[i..];
        match rest {
            // Daly A5: start, host address, command, length 8, 8 data bytes, checksum.
            [0xA5, 0x40 | 0x80, command, 0x08, ..] if rest.len() >= 13 => {
                seen[0] += 1;
                if [0xD9, 0xDA, 0x21, 0x00].contains(command) {
                    writes.push(format!("Daly command 0x{command:02x}"));
                }
                i += 13;
            }
            // Modbus RTU to the D2 or P81 device address: 03 reads; 06 and 10 write.
            [0xD2 | 0x81, function, ..] if rest.len() >= 8 => {
                seen[1] += 1;
                if *function != 0x03 && *function != 0x04 {
                    writes.push(format!("Modbus function 0x{function:02x}"));
                }
                i += 8;
            }
            // Sinowealth: 0x0A, register, length; the protocol has no write request at all.
            [0x0A, _, _, ..] => {
                seen[2] += 1;
                i += 3;
            }
            // Pace: ~VER ADR CID1 CID2 … CR in ASCII hex.
            [b'~', ..] => {
                seen[3] += 1;
                let end = rest.iter().position(|b| *b == b'\r').map_or(rest.len(), |p| p + 1);
                let cid2 = std::str::from_utf8(&rest[7.min(end)..9.min(end)]).unwrap_or("");
                let reads =
                    ["42", "44", "47", "4F", "51", "60", "61", "62", "63", "90", "92", "93", "A6", "B1", "C1", "C2"];
                if !reads.contains(&cid2) {
                    writes.push(format!("Pace CID2 {cid2:?} in {:?}", String::from_utf8_lossy(&rest[..end])));
                }
                i += end;
            }
            _ => i += 1,
        }
    }
    (writes, seen)
}

#[test]
fn detect_on_a_silent_port_finds_nothing_says_so_and_never_writes() {
    let silent = SilentListener::start();
    let run = detect(&silent.addr);
    assert_ne!(run.code, 0, "nothing found is a failure:\n{}", run.stdout);
    assert!(!run.stdout.contains("devices:"), "no config block for nothing:\n{}", run.stdout);
    assert!(run.stderr.contains("nothing answered"), "{}", run.stderr);
    assert!(run.stderr.contains(&silent.addr), "names the endpoint: {}", run.stderr);
    let bytes = silent.received();
    let (writes, seen) = write_commands(&bytes);
    assert!(writes.is_empty(), "detect sent write commands: {writes:?}");
    assert!(seen.iter().all(|n| *n > 0), "every protocol was tried (daly, modbus, sinowealth, pace): {seen:?}");

    // The scan itself would see a write, were one among the reads.
    let mut with_writes = bytes.clone();
    with_writes.extend(Request::discharge_mosfet(Address::Rs485, false).encode());
    with_writes.extend(encode_request(ModbusMap::D2, d2::set_charge_mosfet(false)));
    assert_eq!(write_commands(&with_writes).0.len(), 2, "{:?}", write_commands(&with_writes).0);
}

#[test]
fn a_missing_serial_port_or_a_closed_tcp_port_is_a_clear_error_for_every_command() {
    let missing = Path::new("/nonexistent/bms-cli-test/ttyUSB9");
    let missing = missing.to_str().unwrap();
    let closed = closed_port();
    for (flag, target, words) in [("--serial", missing, "does not exist"), ("--tcp", closed.as_str(), "refused")] {
        let base = || connection("daly", flag, target);
        let read = bms(cmd("read", base(), &["soc"]));
        assert_eq!(read.code, 1, "read {flag}: {}", read.stderr);
        assert!(read.stdout.is_empty(), "no document without data: {}", read.stdout);
        assert!(read.stderr.contains(target) && read.stderr.contains(words), "read {flag}: {}", read.stderr);

        let check = bms(cmd("check", base(), &[]));
        assert_eq!(check.code, 3, "check {flag}: {}", check.stdout);
        assert!(check.stdout.starts_with("BMS UNKNOWN - ") && check.stdout.contains(words), "{}", check.stdout);

        let set = bms(cmd("set", base(), &["--soc", "50", "--yes"]));
        assert_eq!(set.code, 1, "set {flag}: {}", set.stderr);
        assert!(set.stderr.contains(target) && set.stderr.contains(words), "set {flag}: {}", set.stderr);
        // The operating system's reason is said once, not repeated by the error chain.
        assert_eq!(set.stderr.matches("os error").count(), usize::from(flag == "--tcp"), "{}", set.stderr);

        let detect = bms(["detect", flag, target, "--timeout-ms", "100"]);
        assert_eq!(detect.code, 1, "detect {flag}: {}", detect.stderr);
        assert!(detect.stderr.contains(target) && detect.stderr.contains(words), "detect {flag}: {}", detect.stderr);
    }
}

#[test]
fn read_and_check_say_what_really_happened_and_each_cause_once() {
    // Nothing was sent: the link never opened. No "no reply from", which would blame the device or its wiring.
    let closed = closed_port();
    let missing = "/nonexistent/bms-cli-test/ttyUSB9";
    for (flag, target, says) in [
        ("--tcp", closed.as_str(), format!("cannot connect to {closed}: Connection refused")),
        ("--serial", missing, format!("serial port {missing} does not exist")),
    ] {
        let read = bms(cmd("read", connection("daly", flag, target), &["soc"]));
        assert_eq!(read.code, 1, "{}", read.stderr);
        assert!(read.stderr.starts_with(&format!("error: {says}")), "read {flag}: {}", read.stderr);
        assert!(!read.stderr.contains("no reply"), "read {flag}: {}", read.stderr);
        // check: one status line with the cause once, not once per command it planned.
        let check = bms(cmd("check", connection("daly", flag, target), &[]));
        assert_eq!(check.code, 3, "{}", check.stdout);
        assert_eq!(check.stdout.lines().count(), 1, "check {flag}: {}", check.stdout);
        assert!(check.stdout.starts_with(&format!("BMS UNKNOWN - {says}")), "check {flag}: {}", check.stdout);
        assert_eq!(check.stdout.matches(target).count(), 1, "check {flag}: {}", check.stdout);
        assert!(!check.stdout.contains("not sent"), "check {flag}: {}", check.stdout);
    }

    // The device answered with a refusal: said as such, with Pace's return code, not as silence.
    let sim = simulator("refusal", "pace", &["--packs", "2"]);
    let read = bms(cmd("read", tcp("pace", &sim), &["--pack", "5", "soc"]));
    assert_eq!(read.code, 1, "{}", read.stderr);
    assert!(
        read.stderr
            .contains("the device refused the command: Pace return code 0x90 (adr_error) (for 0x42 analog, pack 5"),
        "{}",
        read.stderr
    );
    assert!(!read.stderr.contains("no reply"), "{}", read.stderr);
    // Two commands refused for the same reason: the reason once, naming both.
    let check = bms(cmd("check", tcp("pace", &sim), &["--pack", "5"]));
    assert_eq!(check.code, 3, "{}", check.stdout);
    assert_eq!(check.stdout.matches("Pace return code 0x90").count(), 1, "{}", check.stdout);
    assert!(
        check.stdout.contains("0x42 analog, pack 5") && check.stdout.contains("0x44 status, pack 5"),
        "{}",
        check.stdout
    );
}

#[test]
fn set_help_offers_only_the_protocols_set_accepts() {
    let help = bms(["set", "--help"]);
    assert_eq!(help.code, 0, "{}", help.stderr);
    let lines: Vec<&str> = help.stdout.lines().collect();
    let at = lines.iter().position(|l| l.trim_start().starts_with("--protocol")).expect("--protocol in set --help");
    let text = lines[at + 1];
    assert!(text.contains("daly (the A5 frames) or daly-modbus"), "{text}");
    assert!(!help.stdout.contains("sinowealth") && !help.stdout.contains("pace"), "{}", help.stdout);
    // What the help does not offer is refused as a usage error before anything is opened.
    for protocol in ["sinowealth", "pace"] {
        let run = bms(["set", "--protocol", protocol, "--tcp", "127.0.0.1:9", "--soc", "50", "--yes"]);
        assert_eq!(run.code, 2, "{}", run.stderr);
        assert!(run.stderr.contains(&format!("{protocol} takes no writes: set supports daly")), "{}", run.stderr);
    }
    // read still offers all four.
    let read = bms(["read", "--help"]);
    assert!(read.stdout.contains("daly, daly-modbus, sinowealth or pace"), "{}", read.stdout);
}
