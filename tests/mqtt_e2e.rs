//! MQTT end to end: simulators frozen in time (`--time-scale 0`, so their truth file holds exactly what they
//! answer) → the exporter binary (`serve` with an `mqtt:` block) → a real mosquitto → a recording subscriber.
//! Each layout's topics must carry the truth's values within the protocol's resolution; availability must follow
//! `bms_up` as a device vanishes and returns; commands through the broker must switch the simulated MOSFET, and
//! bad ones must be refused without a write.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use serde_json::{Map, Value};

use crate::exporter::{sim_args, tolerance};
use crate::mqtt_util::{Exporter, Mosquitto, Recorder, client_id, config_yaml, yaml_path};
use crate::util::{Scratch, Simulator, assert_close, wait_for};

/// How long a value may take to reach the broker: a few publish intervals (1 s) and polls.
const SOON: Duration = Duration::from_secs(15);

fn url(broker: &Mosquitto) -> String {
    format!("mqtt://127.0.0.1:{}", broker.port)
}

/// A Daly device on a serial port, as a config's list item.
fn daly_device(name: &str, tty: &Path) -> String {
    format!("  - name: {name}\n    protocol: daly\n    serial: {}\n", yaml_path(tty))
}

/// A Pace master with every pack behind it on a TCP serial server, as a config's list item.
fn pace_device(name: &str, addr: &str) -> String {
    format!("  - name: {name}\n    protocol: pace\n    tcp: {addr}\n    pace: {{ address: 1, packs: all }}\n")
}

/// The latest payload on `topic`, waiting until one has arrived.
fn latest(recorder: &Recorder, topic: &str) -> String {
    wait_for(&format!("a message on {topic}"), SOON, || recorder.last(topic))
}

/// The latest payload on `topic` as a number.
fn number(recorder: &Recorder, topic: &str) -> f64 {
    let text = latest(recorder, topic);
    text.parse().unwrap_or_else(|e| panic!("{topic}: {text:?} is not a number: {e}"))
}

fn json(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("{e}: {text}"))
}

fn truth_f64(pack: &Value, field: &str) -> f64 {
    pack[field].as_f64().unwrap_or_else(|| panic!("the truth has no {field}: {pack}"))
}

/// The truth's temperatures as (label, °C): probes `01`…, named sensors by name.
fn truth_temperatures(pack: &Value) -> Vec<(String, f64)> {
    let sensors = pack["temperatures"].as_array().unwrap();
    sensors
        .iter()
        .map(|t| {
            let label = match t["sensor"]["probe"].as_u64() {
                Some(probe) => format!("{probe:02}"),
                None => t["sensor"].as_str().unwrap().to_owned(),
            };
            (label, t["celsius"].as_f64().unwrap())
        })
        .collect()
}

/// The names of the truth's active alarm flags.
fn truth_alarms(pack: &Value) -> BTreeSet<String> {
    let alarms = pack["alarms"].as_array().unwrap();
    alarms.iter().filter(|a| a["active"] == true).map(|a| a["name"].as_str().unwrap().to_owned()).collect()
}

/// A native state message of one pack against the simulator's truth of that pack: every value the truth has
/// that the protocol reports, within the step the protocol reports it in.
fn assert_state_matches_truth(what: &str, protocol: &str, state: &Value, pack: &Value) {
    let (volts, amperes, cell_volts, celsius) = tolerance(protocol);
    let close = |key: &str, field: &str, tolerance: f64| {
        let got = state[key].as_f64().unwrap_or_else(|| panic!("{what}: no {key} in {state}"));
        assert_close(&format!("{what} {key}"), got, truth_f64(pack, field), tolerance);
    };
    assert_eq!(state["pack"], pack["pack"], "{what}");
    assert_eq!(state["online"], true, "{what}");
    close("voltage_volts", "voltage_volts", volts);
    close("current_amperes", "current_amperes", amperes);
    close("state_of_charge_ratio", "state_of_charge_ratio", 0.0051);
    close("remaining_capacity_ampere_hours", "remaining_capacity_ampere_hours", 0.051);
    // Values not every protocol reports: compared where the state has them (a Daly board has no health).
    for (key, tolerance) in [
        ("state_of_health_ratio", 0.0051),
        ("full_capacity_ampere_hours", 0.051),
        ("design_capacity_ampere_hours", 0.051),
    ] {
        if state.get(key).is_some() {
            close(key, key, tolerance);
        }
    }
    for key in ["cycle_count", "cell_count", "temperature_sensor_count", "state"] {
        assert_eq!(state[key], pack[key], "{what} {key}");
    }
    for key in ["charge_mosfet_enabled", "discharge_mosfet_enabled", "charger_connected", "load_connected"] {
        if !pack[key].is_null() {
            assert_eq!(state[key], pack[key], "{what} {key}");
        }
    }

    let cells = state["cells"].as_object().unwrap_or_else(|| panic!("{what}: no cells in {state}"));
    let truth_cells = pack["cell_volts"].as_array().unwrap();
    assert_eq!(cells.len(), truth_cells.len(), "{what}: cells {cells:?}");
    for (i, want) in truth_cells.iter().enumerate() {
        let label = format!("{:02}", i + 1);
        let got = cells.get(&label).and_then(Value::as_f64).unwrap_or_else(|| panic!("{what}: no cell {label}"));
        assert_close(&format!("{what} cell {label}"), got, want.as_f64().unwrap(), cell_volts);
    }

    // Every probe the truth has; a named sensor (MOSFET, ambient) only where the protocol carries it.
    let empty = Map::new();
    let temperatures = state["temperatures"].as_object().unwrap_or(&empty);
    let truth = truth_temperatures(pack);
    for (label, want) in &truth {
        match temperatures.get(label).and_then(Value::as_f64) {
            Some(got) => assert_close(&format!("{what} temperature {label}"), got, *want, celsius),
            None => assert!(label.parse::<u8>().is_err(), "{what}: probe {label} missing from {state}"),
        }
    }
    for label in temperatures.keys() {
        assert!(truth.iter().any(|(l, _)| l == label), "{what}: temperature {label} is not in the truth");
    }

    let balancing: Vec<u64> =
        (1..).zip(pack["cell_balancing"].as_array().unwrap()).filter(|(_, on)| **on == true).map(|(n, _)| n).collect();
    assert_eq!(state["balancing_cells"], serde_json::json!(balancing), "{what} balancing");
    let alarms: BTreeSet<String> =
        state["alarms"].as_array().unwrap().iter().map(|a| a.as_str().unwrap().to_owned()).collect();
    assert_eq!(alarms, truth_alarms(pack), "{what} alarms");
    // Ports the truth does not list are ones the simulated board reports inactive.
    let ports = state.get("digital_io").and_then(Value::as_object).unwrap_or(&empty);
    let truth_ports = pack["digital_io"].as_array().unwrap();
    for port in truth_ports {
        assert_eq!(ports.get(port["port"].as_str().unwrap()), Some(&port["active"]), "{what} digital I/O {port}");
    }
    for (name, active) in ports {
        if !truth_ports.iter().any(|p| p["port"] == name.as_str()) {
            assert_eq!(active, false, "{what} digital I/O {name}");
        }
    }
}

/// Every pack of `sim`'s truth has a state message on `bms/<device>/<NN>/state` equal to it; returns how many.
fn assert_device_matches_truth(recorder: &Recorder, device: &str, protocol: &str, sim: &Simulator) -> usize {
    let truth = sim.truth_json();
    let packs = truth["packs"].as_array().unwrap();
    // A state published from this moment on, so from a poll of the simulator as it is now.
    let from = recorder.len();
    packs
        .iter()
        .map(|pack| {
            let n = pack["pack"].as_u64().unwrap();
            let topic = format!("bms/{device}/{n:02}/state");
            let state = json(&recorder.next_after(from, &topic, SOON));
            assert_state_matches_truth(&format!("{device} pack {n:02}"), protocol, &state, pack);
        })
        .count()
}

/// The retained discovery of the native layout: the exporter's own status entity, and for every pack of every
/// device (with its truth) the entities of its values, each with the unique id
/// `bms_exporter_<device>_<NN>_<field>`, on the topic and state topic that id names, reading a key the pack's
/// state has.
fn assert_native_discovery(broker: &Mosquitto, recorder: &Recorder, devices: &[(&str, &Simulator)]) {
    let configs = broker.retained(&["homeassistant/#"]);
    // States published after these configs: discovery only grows (the energy totals join after two polls), and
    // a round sends its configs before its states.
    let from = recorder.len();
    let truths: Vec<(&str, Value)> = devices.iter().map(|(name, sim)| (*name, sim.truth_json())).collect();
    let mut packs: Vec<(&str, Value, &Value)> = Vec::new();
    for (device, truth) in &truths {
        for pack in truth["packs"].as_array().unwrap() {
            let topic = format!("bms/{device}/{:02}/state", pack["pack"].as_u64().unwrap());
            packs.push((device, json(&recorder.next_after(from, &topic, SOON)), pack));
        }
    }
    let mut fields: BTreeSet<(String, String, String)> = BTreeSet::new();
    let mut own = 0;
    for message in &configs {
        let config = json(&message.payload);
        let state_topic = config["state_topic"].as_str().unwrap_or_default();
        if state_topic == "bms/status" {
            own += 1;
            continue;
        }
        let id = config["unique_id"].as_str().unwrap_or_else(|| panic!("{}: no unique_id", message.topic));
        let (device, pack, state, field) = packs
            .iter()
            .find_map(|(device, state, truth)| {
                let pack = format!("{:02}", truth["pack"].as_u64().unwrap());
                let field = id.strip_prefix(&format!("bms_exporter_{device}_{pack}_"))?;
                Some((device, pack, state, field))
            })
            .unwrap_or_else(|| panic!("{}: unique id {id} names no configured device and pack", message.topic));
        let field_chars = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_';
        assert!(!field.is_empty() && field.bytes().all(field_chars), "{id}");
        assert_eq!(config["object_id"], id, "{}", message.topic);
        let component = message.topic.split('/').nth(1).unwrap();
        assert_eq!(
            message.topic,
            format!("homeassistant/{component}/bms_exporter_{device}/{pack}_{field}/config"),
            "{id}"
        );
        assert_eq!(state_topic, format!("bms/{device}/{pack}/state"), "{id}");
        let template = config["value_template"].as_str().unwrap_or_else(|| panic!("{id}: no value_template"));
        let key: String = template
            .split("value_json.")
            .nth(1)
            .unwrap_or_else(|| panic!("{id}: {template}"))
            .chars()
            .take_while(|c| c.is_ascii_lowercase() || *c == '_')
            .collect();
        assert!(state.get(&key).is_some(), "{id} reads {key}, which the state lacks: {state}");
        fields.insert(((*device).to_owned(), pack, field.to_owned()));
    }
    assert_eq!(own, 1, "the exporter's own status entity, once");
    for (device, state, truth) in packs {
        let pack = format!("{:02}", truth["pack"].as_u64().unwrap());
        let mut wanted: Vec<String> =
            ["voltage", "current", "power", "state_of_charge", "remaining_capacity", "cycles"]
                .map(str::to_owned)
                .into();
        wanted.extend(["charge_mosfet", "discharge_mosfet", "problem", "alarms"].map(str::to_owned));
        // Values only some protocols report (Pace: health, full and design capacity) have entities where they do.
        for (key, field) in [
            ("state_of_health_ratio", "state_of_health"),
            ("full_capacity_ampere_hours", "full_capacity"),
            ("design_capacity_ampere_hours", "design_capacity"),
        ] {
            if state.get(key).is_some() {
                wanted.push(field.to_owned());
            }
        }
        wanted.extend(state["cells"].as_object().unwrap().keys().map(|label| format!("cell_{label}")));
        wanted.extend(
            truth_temperatures(truth)
                .into_iter()
                .filter_map(|(label, _)| state["temperatures"].get(&label).map(|_| format!("temperature_{label}"))),
        );
        for field in wanted {
            let key = ((*device).to_owned(), pack.clone(), field);
            assert!(fields.contains(&key), "no retained discovery config for {key:?}");
        }
    }
}

#[test]
fn mqtt_native_states_are_the_simulators_truth_with_discovery_and_availability_following_bms_up() {
    let dir = Scratch::new("mqtt-e2e-native");
    let (daly, tty) =
        Simulator::pty("mqtt-e2e-native-daly", &sim_args("daly", &["--cells", "16", "--temperatures", "4"]));
    let pace_args = sim_args("pace", &["--packs", "2", "--cells", "16"]);
    let mut pace = Simulator::tcp("mqtt-e2e-native-pace", &pace_args);
    let pace_addr = pace.addr.clone().unwrap();
    let broker = Mosquitto::plain("e2e-native");
    let recorder = broker.recorder(&["bms/#"]);
    let devices = daly_device("daly", &tty) + &pace_device("pace", &pace_addr);
    let exporter = Exporter::start(&dir, "exporter", &config_yaml(&devices, &url(&broker), &client_id("native"), ""));
    exporter.wait_connected(true, Duration::from_secs(10));

    broker.wait_retained("bms/status", "online", SOON);
    broker.wait_retained("bms/daly/availability", "online", SOON);
    broker.wait_retained("bms/pace/availability", "online", SOON);
    assert_device_matches_truth(&recorder, "daly", "daly", &daly);
    assert_eq!(assert_device_matches_truth(&recorder, "pace", "pace", &pace), 2, "packs");
    for message in recorder.messages().iter().filter(|m| m.topic.ends_with("/state")) {
        assert!(!message.retain, "{} is not retained", message.topic);
    }
    assert_native_discovery(&broker, &recorder, &[("daly", &daly), ("pace", &pace)]);

    // Availability is retained, so it is sent again only when it changes: over several rounds it never repeats,
    // and it ends online. While both answer, the Pace rack's only ever said online.
    let availability = |device: &str| {
        let topic = format!("bms/{device}/availability");
        recorder.messages().into_iter().filter(|m| m.topic == topic).map(|m| m.payload).collect::<Vec<_>>()
    };
    let assert_sent_on_change = |device: &str| {
        let said = availability(device);
        assert_eq!(said.last().map(String::as_str), Some("online"), "{device}: {said:?}");
        assert!(said.windows(2).all(|w| w[0] != w[1]), "{device}: sent only when it changed: {said:?}");
    };
    for _ in 0..2 {
        recorder.next_after(recorder.len(), "bms/daly/01/state", SOON);
    }
    assert_sent_on_change("daly");
    assert_sent_on_change("pace");
    assert_eq!(availability("pace"), ["online"]);

    // The Pace rack vanishes: once bms_up is 0 its availability turns offline; the Daly board stays online.
    pace.stop();
    exporter.wait_up("pace", false, SOON);
    broker.wait_retained("bms/pace/availability", "offline", Duration::from_secs(5));
    assert_eq!(exporter.metric("bms_up{device=\"pace\"}"), Some(0.0));
    assert_eq!(broker.retained_payload("bms/daly/availability").as_deref(), Some("online"));
    assert_eq!(exporter.metric("bms_up{device=\"daly\"}"), Some(1.0));

    // It returns at the same address: online again, with true values.
    let pace = Simulator::tcp_at(&pace.dir.clone(), &pace_addr, &pace_args);
    exporter.wait_up("pace", true, Duration::from_secs(40));
    broker.wait_retained("bms/pace/availability", "online", Duration::from_secs(5));
    assert_device_matches_truth(&recorder, "pace", "pace", &pace);
    assert_sent_on_change("pace");
    assert_sent_on_change("daly");
}

/// The bmspace values of one Pace pack `p` against its truth: cells in mV, current, voltage, capacities in mAh,
/// charge and health in %, cycles, temperatures and the FET bits; `cell` names cell `i` as the padding says.
fn assert_bmspace_pack(recorder: &Recorder, pack: &Value, cell: &dyn Fn(usize) -> String) {
    let p = pack["pack"].as_u64().unwrap();
    let (volts, amperes, cell_volts, celsius) = tolerance("pace");
    let topic = |leaf: &str| format!("bmspace/pack_{p}/{leaf}");
    let cells = pack["cell_volts"].as_array().unwrap();
    let mut millivolts = Vec::new();
    for (i, want) in cells.iter().enumerate() {
        let topic = topic(&format!("v_cells/{}", cell(i + 1)));
        let got = latest(recorder, &topic);
        assert!(!got.contains('.'), "{topic}: whole millivolts, got {got}");
        let got: f64 = got.parse().unwrap();
        assert_close(&topic, got, want.as_f64().unwrap() * 1000.0, cell_volts * 1000.0);
        millivolts.push(got);
    }
    let spread =
        millivolts.iter().copied().fold(f64::MIN, f64::max) - millivolts.iter().copied().fold(f64::MAX, f64::min);
    assert_eq!(number(recorder, &topic("cells_max_diff_calc")), spread);
    assert_close(&topic("i_pack"), number(recorder, &topic("i_pack")), truth_f64(pack, "current_amperes"), amperes);
    assert_close(&topic("v_pack"), number(recorder, &topic("v_pack")), truth_f64(pack, "voltage_volts"), volts);
    for (leaf, field) in [
        ("i_remain_cap", "remaining_capacity_ampere_hours"),
        ("i_full_cap", "full_capacity_ampere_hours"),
        ("i_design_cap", "design_capacity_ampere_hours"),
    ] {
        assert_close(&topic(leaf), number(recorder, &topic(leaf)), truth_f64(pack, field) * 1000.0, 51.0);
    }
    for (leaf, field) in [("soc", "state_of_charge_ratio"), ("soh", "state_of_health_ratio")] {
        assert_close(&topic(leaf), number(recorder, &topic(leaf)), truth_f64(pack, field) * 100.0, 0.51);
    }
    assert_eq!(number(recorder, &topic("cycles")), truth_f64(pack, "cycle_count"));
    for (label, want) in truth_temperatures(pack) {
        let probe: u8 = label.parse().unwrap_or_else(|_| panic!("the Pace truth names probes only: {label}"));
        let leaf = format!("temps/temp_{probe}");
        assert_close(&topic(&leaf), number(recorder, &topic(&leaf)), want, celsius);
    }
    for (leaf, field) in [("charge_fet", "charge_mosfet_enabled"), ("discharge_fet", "discharge_mosfet_enabled")] {
        let want = if pack[field] == true { "1" } else { "0" };
        assert_eq!(latest(recorder, &topic(leaf)), want, "{}", topic(leaf));
    }
    // Exactly the truth's cells: one more would be a cell that does not exist.
    let prefix = topic("v_cells/");
    let published: BTreeSet<String> =
        recorder.messages().into_iter().filter(|m| m.topic.starts_with(&prefix)).map(|m| m.topic).collect();
    assert_eq!(published.len(), cells.len(), "{published:?}");
}

#[test]
fn mqtt_bmspace_topics_carry_the_pace_truth_and_zero_padding_renames_the_cells() {
    let dir = Scratch::new("mqtt-e2e-bmspace");
    let pace = Simulator::tcp("mqtt-e2e-bmspace-pace", &sim_args("pace", &["--packs", "2", "--cells", "16"]));
    let device = pace_device("rack", pace.addr.as_deref().unwrap());
    for (run, padding, cell) in [
        ("plain", "", &(|i: usize| format!("cell_{i}")) as &dyn Fn(usize) -> String),
        ("padded", "  zero_pad_number_cells: 2\n", &|i: usize| format!("cell_{i:02}")),
    ] {
        let broker = Mosquitto::plain(&format!("e2e-bmspace-{run}"));
        let recorder = broker.recorder(&["bmspace/#"]);
        let mqtt = format!("  layout: bmspace\n{padding}");
        let exporter = Exporter::start(&dir, run, &config_yaml(&device, &url(&broker), &client_id(run), &mqtt));
        exporter.wait_connected(true, Duration::from_secs(10));
        broker.wait_retained("bmspace/availability", "online", SOON);
        let truth = pace.truth_json();
        for pack in truth["packs"].as_array().unwrap() {
            assert_bmspace_pack(&recorder, pack, cell);
        }
        // Whole-bank values are the master's (pack 1), as bmspace publishes them.
        let first = &truth["packs"][0];
        assert_close(
            "pack_soc",
            number(&recorder, "bmspace/pack_soc"),
            truth_f64(first, "state_of_charge_ratio") * 100.0,
            0.51,
        );
        if padding.is_empty() {
            assert!(recorder.last("bmspace/pack_1/v_cells/cell_01").is_none(), "unpadded: no cell_01");
        } else {
            assert!(recorder.last("bmspace/pack_1/v_cells/cell_1").is_none(), "padded: no cell_1");
        }
    }
}

/// One frozen Daly board (device `daly`) on a PTY, published by the exporter to a fresh broker with the `mqtt`
/// lines, and a recorder on `filter` started before the exporter.
struct DalyRun {
    exporter: Exporter,
    recorder: Recorder,
    broker: Mosquitto,
    sim: Simulator,
    _dir: Scratch,
}

impl DalyRun {
    fn start(name: &str, sim_extra: &[&str], filter: &str, mqtt: &str) -> Self {
        let dir = Scratch::new(&format!("mqtt-e2e-{name}"));
        let (sim, tty) = Simulator::pty(&format!("mqtt-e2e-{name}"), &sim_args("daly", sim_extra));
        let broker = Mosquitto::plain(&format!("e2e-{name}"));
        let recorder = broker.recorder(&[filter]);
        let yaml = config_yaml(&daly_device("daly", &tty), &url(&broker), &client_id(name), mqtt);
        let exporter = Exporter::start(&dir, "exporter", &yaml);
        exporter.wait_connected(true, Duration::from_secs(10));
        Self { exporter, recorder, broker, sim, _dir: dir }
    }
}

#[test]
fn mqtt_daly_bms_cli_layout_through_serve_carries_the_daly_truth_with_the_tools_discovery() {
    let run =
        DalyRun::start("daly-cli", &["--cells", "16", "--temperatures", "4"], "daly_bms/#", "  layout: daly-bms-cli\n");
    let (daly, broker, recorder) = (&run.sim, &run.broker, &run.recorder);

    let truth = daly.truth_json();
    let pack = &truth["packs"][0];
    let (volts, amperes, cell_volts, celsius) = tolerance("daly");
    let close = |topic: &str, want: f64, tolerance: f64| assert_close(topic, number(recorder, topic), want, tolerance);
    close("daly_bms/soc/total_voltage", truth_f64(pack, "voltage_volts"), volts);
    close("daly_bms/soc/current", truth_f64(pack, "current_amperes"), amperes);
    close("daly_bms/soc/soc_percent", truth_f64(pack, "state_of_charge_ratio") * 100.0, 0.51);
    close("daly_bms/mosfet_status/capacity_ah", truth_f64(pack, "remaining_capacity_ampere_hours"), 0.051);
    close("daly_bms/status/cycles", truth_f64(pack, "cycle_count"), 0.0);
    close("daly_bms/status/cells", truth_f64(pack, "cell_count"), 0.0);
    for (i, want) in (1..).zip(pack["cell_volts"].as_array().unwrap()) {
        close(&format!("daly_bms/cell_voltages/{i}"), want.as_f64().unwrap(), cell_volts);
    }
    for (label, want) in truth_temperatures(pack) {
        // The MOSFET sensor of the truth is not on Daly's wire; probes are numbered without padding.
        if let Ok(probe) = label.parse::<u8>() {
            close(&format!("daly_bms/temperatures/{probe}"), want, celsius);
        }
    }
    for (leaf, field) in
        [("charging_mosfet", "charge_mosfet_enabled"), ("discharging_mosfet", "discharge_mosfet_enabled")]
    {
        let want = if pack[field] == true { "True" } else { "False" };
        assert_eq!(latest(recorder, &format!("daly_bms/mosfet_status/{leaf}")), want, "{leaf}");
    }
    assert!(recorder.messages().iter().all(|m| !m.retain), "the tool's values are not retained");

    // Discovery as the tool's --mqtt-hass sends it, retained.
    let config = wait_for("the soc_percent discovery config", SOON, || {
        broker.retained_payload("homeassistant/sensor/daly_bms/_soc_soc_percent/config")
    });
    let config = json(&config);
    assert_eq!(config["unique_id"], "daly_bms__soc_soc_percent", "{config}");
    assert_eq!(config["state_topic"], "daly_bms/soc/soc_percent", "{config}");
    assert_eq!(config["unit_of_measurement"], "%", "{config}");
}

#[test]
fn mqtt_control_through_the_broker_switches_the_simulated_mosfet_and_refuses_bad_commands_without_a_write() {
    let run = DalyRun::start("control", &["--cells", "8", "--temperatures", "2"], "bms/#", "  control: true\n");
    let (daly, broker, recorder, exporter) = (&run.sim, &run.broker, &run.recorder, &run.exporter);
    let mosfets = || {
        let truth = daly.truth_json();
        (truth["packs"][0]["charge_mosfet_enabled"].clone(), truth["packs"][0]["discharge_mosfet_enabled"].clone())
    };
    assert_eq!(mosfets(), (Value::Bool(true), Value::Bool(true)));
    let commands = |result: &str| exporter.metric(&format!("bms_mqtt_commands_total{{result=\"{result}\"}}"));
    for result in ["refused", "duplicate", "obeyed", "ignored_by_bms", "failed"] {
        assert_eq!(commands(result), Some(0.0), "{result} is there from the start, at 0");
    }

    // The switch's command topic, as Home Assistant learns it from discovery.
    let switch = wait_for("the charge MOSFET switch", SOON, || {
        broker.retained_payload("homeassistant/switch/bms_exporter_daly/01_charge_mosfet/config")
    });
    let charge = json(&switch)["command_topic"].as_str().unwrap().to_owned();
    assert_eq!(charge, "bms/daly/01/charge_mosfet/set");
    let state = |after: usize| json(&recorder.next_after(after, "bms/daly/01/state", SOON));
    assert_eq!(state(0)["charge_mosfet_enabled"], true);

    // OFF switches the simulator's charge MOSFET, and the state says so at once and from then on.
    let before = recorder.len();
    broker.publish(&charge, "OFF", false);
    wait_for("the simulator's charge MOSFET off", SOON, || (mosfets().0 == false).then_some(()));
    assert_eq!(mosfets().1, true, "the discharge MOSFET is untouched");
    let first = state(before);
    assert_eq!(first["charge_mosfet_enabled"], false, "{first}");
    wait_for("the command counted", SOON, || (commands("obeyed")? == 1.0).then_some(()));
    std::thread::sleep(Duration::from_secs(2));
    let later: Vec<Value> = recorder.messages()[before..]
        .iter()
        .filter(|m| m.topic == "bms/daly/01/state")
        .map(|m| json(&m.payload))
        .collect();
    assert!(later.len() >= 2 && later.iter().all(|s| s["charge_mosfet_enabled"] == false), "{later:?}");

    // Refused, each with a log line naming its topic, and nothing written: payloads that are not exactly ON or
    // OFF (each would change a MOSFET if taken), an unknown device, pack and field.
    let discharge = "bms/daly/01/discharge_mosfet/set";
    let refused = [
        (discharge, "off"),
        (charge.as_str(), "1"),
        ("bms/nope/01/charge_mosfet/set", "ON"),
        ("bms/daly/02/charge_mosfet/set", "ON"),
        ("bms/daly/01/balancing/set", "ON"),
    ];
    for (topic, payload) in refused {
        broker.publish(topic, payload, false);
    }
    wait_for("five refusals counted", SOON, || (commands("refused")? == 5.0).then_some(()));
    let log = exporter.log();
    for (topic, payload) in refused {
        let lines = log.lines().filter(|l| l.contains("MQTT command refused") && l.contains(topic)).count();
        assert!(lines >= 1, "no refusal naming {topic} ({payload}) in the log:\n{log}");
    }
    assert_eq!(log.matches("MQTT command refused").count(), 5, "{log}");
    assert_eq!(log.matches("sending a write").count(), 1, "only the OFF was written:\n{log}");
    assert_eq!(mosfets(), (Value::Bool(false), Value::Bool(true)), "the truth is unchanged");
    assert_eq!((commands("obeyed"), commands("duplicate")), (Some(1.0), Some(0.0)));
    assert_eq!((commands("ignored_by_bms"), commands("failed")), (Some(0.0), Some(0.0)));

    // ON brings it back, as a second obeyed command.
    let before = recorder.len();
    broker.publish(&charge, "ON", false);
    wait_for("the simulator's charge MOSFET on", SOON, || (mosfets().0 == true).then_some(()));
    assert_eq!(state(before)["charge_mosfet_enabled"], true);
    wait_for("the second command counted", SOON, || (commands("obeyed")? == 2.0).then_some(()));
    assert_eq!(commands("refused"), Some(5.0));
}
