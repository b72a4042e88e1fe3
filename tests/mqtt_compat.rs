//! The MQTT compatibility layouts against a real broker (Debian `mosquitto`, one fresh broker per run so retained
//! messages never leak between runs) and the real tool they replace: `daly-bms-cli --all --mqtt [--mqtt-hass]`
//! (PyPI dalybms 0.5.0 with paho-mqtt 1.x) and `bms_exporter read --mqtt [--mqtt-hass]` read the same frozen
//! Daly simulator, and must publish the same topics in the same order, the same discovery payloads byte for byte
//! and the same values.

use std::path::{Path, PathBuf};
use std::process::{Command as Process, Output, Stdio};
use std::time::{Duration, Instant};

use crate::mqtt_util::{Login, Mosquitto, Received};
use crate::util::{Scratch, Simulator, daly_bms_cli, free_port, required_program, wait_for};

/// Run `program args…` to completion within 30 s (a hang fails the test instead of stalling the suite).
fn run(program: &Path, args: &[&str], env: &[(&str, &Path)]) -> Output {
    let mut command = Process::new(program);
    command.args(args).stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
    for (key, value) in env {
        command.env(key, value);
    }
    let mut child = command.spawn().unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("{} {args:?} did not finish within 30 s", program.display());
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    child.wait_with_output().unwrap()
}

fn bms_exporter(args: &[&str]) -> Output {
    run(Path::new(env!("CARGO_BIN_EXE_bms_exporter")), args, &[])
}

/// `daly-bms-cli`, checked to have the paho-mqtt 1.x its `--mqtt` imports (2.x refuses its `paho.Client()`).
fn daly_bms_cli_with_paho() -> PathBuf {
    let cli = daly_bms_cli();
    let python = cli.with_file_name("python3");
    let check = Process::new(&python)
        .args(["-c", "import paho.mqtt; assert paho.mqtt.__version__.startswith('1.'), paho.mqtt.__version__"])
        .output();
    assert!(
        check.as_ref().is_ok_and(|o| o.status.success()),
        "{} lacks paho-mqtt 1.x, which daly-bms-cli --mqtt needs: run bash scripts/test.sh (it installs \
         paho-mqtt==1.6.1 in the venv) or pip install it there: {check:?}",
        python.display()
    );
    cli
}

/// A `sitecustomize` that makes daly-bms-cli read the broker's CONNACK before it disconnects. The tool never
/// reads from its socket, so closing it with the CONNACK unread makes the kernel reset the connection and the
/// broker drops every message it had not read yet (on loopback, most of them). Draining first changes nothing
/// that is published, only that it all arrives.
fn connack_shim(dir: &Scratch) -> PathBuf {
    let shim = dir.path("shim");
    std::fs::create_dir_all(&shim).unwrap();
    std::fs::write(
        shim.join("sitecustomize.py"),
        "import paho.mqtt.client as _client\n\
         _disconnect = _client.Client.disconnect\n\
         def _read_then_disconnect(self, *args, **kwargs):\n\
         \x20   self.loop(timeout=1.0)\n\
         \x20   return _disconnect(self, *args, **kwargs)\n\
         _client.Client.disconnect = _read_then_disconnect\n",
    )
    .unwrap();
    shim
}

/// A frozen Daly simulator on a pseudo-terminal (both tools read a serial port).
fn daly_simulator(name: &str, extra: &[&str]) -> (Simulator, PathBuf) {
    let mut args = vec!["--protocol", "daly", "--cells", "16", "--time-scale", "0", "--baud", "0", "--latency-ms", "0"];
    args.extend_from_slice(extra);
    Simulator::pty(name, &args)
}

/// What `daly-bms-cli -d LINK --all --mqtt ARGS…` published on a fresh broker, and what that broker retained.
fn daly_bms_cli_run(name: &str, link: &Path, args: &[&str]) -> (Vec<Received>, Vec<Received>) {
    let cli = daly_bms_cli_with_paho();
    let broker = Mosquitto::plain(&format!("{name}-tool"));
    let recorder = broker.recorder(&["#"]);
    let port = broker.port.to_string();
    let mut all = vec!["-d", link.to_str().unwrap(), "--all", "--mqtt", "--mqtt-broker", "127.0.0.1", "--mqtt-port"];
    all.push(&port);
    all.extend_from_slice(args);
    let shim = connack_shim(&broker.dir);
    let out = run(&cli, &all, &[("PYTHONPATH", &shim)]);
    assert!(out.status.success(), "daly-bms-cli failed: {}", String::from_utf8_lossy(&out.stderr));
    assert!(out.stdout.is_empty(), "daly-bms-cli --mqtt prints nothing");
    (recorder.settle(), broker.retained(&["#"]))
}

/// What `bms_exporter read --protocol daly --serial LINK --mqtt URL ARGS…` published on a fresh broker, and
/// what that broker retained.
fn read_run(name: &str, link: &Path, args: &[&str]) -> (Vec<Received>, Vec<Received>) {
    let broker = Mosquitto::plain(&format!("{name}-ours"));
    let recorder = broker.recorder(&["#"]);
    let url = format!("mqtt://127.0.0.1:{}", broker.port);
    let mut all = vec!["read", "--protocol", "daly", "--serial", link.to_str().unwrap(), "--mqtt", &url];
    all.extend_from_slice(args);
    let out = bms_exporter(&all);
    assert!(out.status.success(), "read --mqtt failed: {}", String::from_utf8_lossy(&out.stderr));
    assert!(out.stdout.is_empty(), "read --mqtt prints nothing, like daly-bms-cli --mqtt");
    (recorder.settle(), broker.retained(&["#"]))
}

fn topics(messages: &[Received]) -> Vec<&str> {
    messages.iter().map(|m| m.topic.as_str()).collect()
}

/// Range leaves that name a cell or sensor: on a tie the two tools may name different ones (a documented
/// deviation of the daly-bms-cli layout), so their values are compared by what they point at instead.
fn names_a_cell_or_sensor(topic: &str) -> bool {
    topic.ends_with("_range/highest_cell")
        || topic.ends_with("_range/lowest_cell")
        || topic.ends_with("_range/highest_sensor")
        || topic.ends_with("_range/lowest_sensor")
}

/// Every range leaf naming a cell or sensor points at one that holds the extreme the range states.
fn assert_ranges_consistent(messages: &[Received], base: &str) {
    let value = |path: &str| {
        messages.iter().find(|m| m.topic == format!("{base}/{path}")).map(|m| m.payload.clone()).unwrap_or_default()
    };
    for (range, list, pairs) in [
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
        for (extreme, index) in pairs {
            let named = value(&format!("{range}/{index}"));
            assert_eq!(
                value(&format!("{list}/{named}")),
                value(&format!("{range}/{extreme}")),
                "{base}/{range}/{index} = {named} does not hold {extreme}"
            );
        }
    }
}

#[test]
fn read_mqtt_hass_publishes_what_daly_bms_cli_mqtt_hass_publishes() {
    let (_sim, link) = daly_simulator("mqtt-compat-hass", &[]);
    let (tool, tool_retained) = daly_bms_cli_run("hass", &link, &["--mqtt-hass"]);
    let (ours, ours_retained) = read_run("hass", &link, &["--mqtt-hass"]);

    // The tool's tree: a config before every value (16 cells, 4 probes: 43 leaves).
    assert_eq!(tool.len(), 2 * 43, "{:#?}", topics(&tool));
    assert!(tool.iter().any(|m| m.topic == "daly_bms/soc/soc_percent"));
    assert!(tool.iter().any(|m| m.topic == "homeassistant/sensor/daly_bms/_soc_soc_percent/config"));

    // Same topics, in the same order.
    assert_eq!(topics(&ours), topics(&tool));
    // Discovery configs byte for byte (unique_id, name, device, device_class, unit, topics), and retained.
    for (o, t) in ours.iter().zip(&tool).filter(|(_, t)| t.topic.starts_with("homeassistant/")) {
        assert_eq!(o.payload, t.payload, "{}", t.topic);
    }
    assert_eq!(ours_retained, tool_retained, "the broker retains the same configs, and only those");
    assert_eq!(tool_retained.len(), 43);
    assert!(tool_retained.iter().all(|m| m.topic.starts_with("homeassistant/sensor/daly_bms/")));
    // The values: equal (the simulator is frozen), except which cell or sensor a range names on a tie.
    for (o, t) in ours.iter().zip(&tool).filter(|(_, t)| t.topic.starts_with("daly_bms/")) {
        if names_a_cell_or_sensor(&t.topic) {
            continue;
        }
        assert_eq!(o.payload, t.payload, "{}", t.topic);
    }
    assert_ranges_consistent(&tool, "daly_bms");
    assert_ranges_consistent(&ours, "daly_bms");
}

#[test]
fn read_mqtt_without_hass_publishes_only_values_below_the_chosen_topic_like_the_tool() {
    let (_sim, link) = daly_simulator("mqtt-compat-topic", &[]);
    let (tool, tool_retained) = daly_bms_cli_run("topic", &link, &["--mqtt-topic", "garage/bms"]);
    let (ours, ours_retained) = read_run("topic", &link, &["--mqtt-topic", "garage/bms"]);
    assert_eq!(tool.len(), 43);
    assert!(tool.iter().all(|m| m.topic.starts_with("garage/bms/")), "{:#?}", topics(&tool));
    assert_eq!(topics(&ours), topics(&tool));
    for (o, t) in ours.iter().zip(&tool) {
        assert!(!o.retain, "{} is not retained", o.topic);
        if !names_a_cell_or_sensor(&t.topic) {
            assert_eq!(o.payload, t.payload, "{}", t.topic);
        }
    }
    assert!(tool_retained.is_empty() && ours_retained.is_empty(), "no discovery, nothing retained");
}

#[test]
fn read_mqtt_puts_other_boards_below_pack_n_and_keeps_board_one_at_the_tools_topics() {
    let (_sim, link) = daly_simulator("mqtt-compat-boards", &["--boards", "2"]);
    let broker = Mosquitto::plain("boards");
    let recorder = broker.recorder(&["#"]);
    let url = format!("mqtt://127.0.0.1:{}", broker.port);
    let path = link.to_str().unwrap();
    let out = bms_exporter(&["read", "--protocol", "daly", "--serial", path, "--address", "1,2", "--mqtt", &url]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let got = recorder.settle();
    let board_one: Vec<&str> = topics(&got).into_iter().filter(|t| !t.starts_with("daly_bms/pack_")).collect();
    let board_two: Vec<String> = topics(&got)
        .into_iter()
        .filter_map(|t| t.strip_prefix("daly_bms/pack_2").map(|rest| format!("daly_bms{rest}")))
        .collect();
    assert_eq!(board_one.len(), 43, "{board_one:#?}");
    assert_eq!(board_two, board_one, "board 2 has board 1's tree below daly_bms/pack_2");
    assert_eq!(got.len(), 86);
}

#[test]
fn read_mqtt_reports_an_unreachable_or_refusing_broker_and_logs_in_with_a_password_file() {
    let (_sim, link) = daly_simulator("mqtt-compat-broker", &[]);
    let path = link.to_str().unwrap();

    // Nothing listens: a clear error, exit 1, in well under the deadline.
    let closed = free_port();
    let started = Instant::now();
    let out = bms_exporter(&[
        "read",
        "--protocol",
        "daly",
        "--serial",
        path,
        "--mqtt",
        &format!("mqtt://127.0.0.1:{closed}"),
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains(&format!("cannot reach the MQTT broker at mqtt://127.0.0.1:{closed}")), "{stderr}");
    assert!(started.elapsed() < Duration::from_secs(15));

    // A broker with logins: a wrong password is refused, the right one from a file publishes.
    let dir = Scratch::new("mqtt-compat-passwords");
    let passwords = dir.path("passwords");
    let made = Process::new(required_program("mosquitto_passwd", "mosquitto"))
        .args(["-c", "-b"])
        .arg(&passwords)
        .args(["bms", "s3cret"])
        .output()
        .unwrap();
    assert!(made.status.success(), "{}", String::from_utf8_lossy(&made.stderr));
    let login = Login { user: "bms", password: "s3cret" };
    let global = format!("password_file {}\nallow_anonymous false", passwords.display());
    let broker = Mosquitto::start("passwords", None, "", &global, Some(login));
    let url = format!("mqtt://127.0.0.1:{}", broker.port);
    let wrong = dir.write("wrong", "nope\n");
    let right = dir.write("right", "s3cret\n");
    let with = |file: &Path| {
        let file = file.to_str().unwrap().to_owned();
        bms_exporter(&[
            "read",
            "--protocol",
            "daly",
            "--serial",
            path,
            "--mqtt",
            &url,
            "--mqtt-user",
            "bms",
            "--mqtt-password-file",
            &file,
        ])
    };
    let out = with(&wrong);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("refused the connection"), "{stderr}\nbroker log:\n{}", broker.log());

    let recorder = broker.recorder(&["daly_bms/soc/#"]);
    let out = with(&right);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let first = wait_for("the first value", Duration::from_secs(10), || recorder.messages().into_iter().next());
    assert_eq!(first.topic, "daly_bms/soc/total_voltage");
}
