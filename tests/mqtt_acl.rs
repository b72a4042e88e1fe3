//! The broker ACL that README.md gives for `control: true`, taken from the README as written and loaded into a
//! real mosquitto: the exporter still publishes and hears Home Assistant's commands, Home Assistant can switch a
//! MOSFET, and any other broker user's command never reaches the exporter.

use std::process::Command as Process;
use std::time::Duration;

use crate::exporter::sim_args;
use crate::mqtt_util::{Exporter, Login, Mosquitto, config_yaml};
use crate::util::{Scratch, Simulator, required_program, wait_for};

/// The fenced block of README.md that holds the ACL (the one with `topic write bms/+/+/+/set`).
fn readme_acl() -> String {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let block = readme
        .split("```")
        .find(|b| b.contains("topic write bms/+/+/+/set"))
        .expect("README.md has the broker ACL example for control");
    block.trim_start_matches('\n').to_owned()
}

/// Add `user` with `password` to the mosquitto password file at `file`.
fn add_user(file: &std::path::Path, user: &str, password: &str) {
    let mut command = Process::new(required_program("mosquitto_passwd", "mosquitto"));
    if !file.exists() {
        command.arg("-c");
    }
    let out = command.arg("-b").arg(file).args([user, password]).output().unwrap();
    assert!(out.status.success(), "mosquitto_passwd: {}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn the_readme_acl_lets_home_assistant_switch_a_mosfet_and_keeps_everyone_else_out() {
    let files = Scratch::new("mqtt-acl");
    let acl = files.write("acl", &readme_acl());
    let passwords = files.path("passwords");
    add_user(&passwords, "bms", "exporter-secret");
    add_user(&passwords, "homeassistant", "ha-secret");
    add_user(&passwords, "intruder", "intruder-secret");
    let global = format!("allow_anonymous false\npassword_file {}\nacl_file {}", passwords.display(), acl.display());
    let home_assistant = Login { user: "homeassistant", password: "ha-secret" };
    let broker = Mosquitto::start("acl", None, "", &global, Some(home_assistant));

    let (sim, tty) = Simulator::pty("mqtt-acl-daly", &sim_args("daly", &["--cells", "4"]));
    let password_file = files.write("exporter.password", "exporter-secret\n");
    let device = format!("  - name: garage\n    protocol: daly\n    serial: {}\n", tty.display());
    let mqtt = format!("  username: bms\n  password_file: {}\n  control: true\n", password_file.display());
    let yaml = config_yaml(&device, &format!("mqtt://127.0.0.1:{}", broker.port), "acl-test", &mqtt);
    let exporter = Exporter::start(&files, "exporter", &yaml);
    exporter.wait_connected(true, Duration::from_secs(10));

    // Home Assistant's user reads the exporter's tree and its discovery.
    let states = broker.recorder(&["bms/#", "homeassistant/#"]);
    wait_for("the pack's state, read as Home Assistant", Duration::from_secs(10), || {
        states.last("bms/garage/01/state")
    });
    wait_for("the switch's discovery", Duration::from_secs(10), || {
        states.last("homeassistant/switch/bms_exporter_garage/01_charge_mosfet/config")
    });
    let charge_on = || sim.truth_json()["packs"][0]["charge_mosfet_enabled"].as_bool();
    assert_eq!(charge_on(), Some(true));

    // Another broker user's command is dropped by the broker: the exporter never sees it.
    let out = Process::new(required_program("mosquitto_pub", "mosquitto-clients"))
        .args(["-h", "127.0.0.1", "-p", &broker.observer_port.to_string(), "-q", "1"])
        .args(["-u", "intruder", "-P", "intruder-secret", "-t", "bms/garage/01/charge_mosfet/set", "-m", "OFF"])
        .output()
        .unwrap();
    assert!(out.status.success(), "mosquitto_pub as intruder: {}", String::from_utf8_lossy(&out.stderr));
    // (mosquitto 2.0 drops a denied publish silently at its default log level, so the proof is on our side.)
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(charge_on(), Some(true), "an intruder's command reached the battery");
    assert!(!exporter.log().contains("sending a write"), "{}", exporter.log());

    // Home Assistant's command gets through and is obeyed.
    broker.publish("bms/garage/01/charge_mosfet/set", "OFF", false);
    wait_for("the charge MOSFET off", Duration::from_secs(10), || (charge_on() == Some(false)).then_some(()));
    wait_for("the obeyed command counted", Duration::from_secs(5), || {
        (exporter.metric("bms_mqtt_commands_total{result=\"obeyed\"}") == Some(1.0)).then_some(())
    });
    // Exactly one command ever reached the exporter: Home Assistant's.
    std::thread::sleep(Duration::from_secs(1));
    for (result, count) in [("obeyed", 1.0), ("refused", 0.0), ("ignored_by_bms", 0.0), ("failed", 0.0)] {
        let series = format!("bms_mqtt_commands_total{{result=\"{result}\"}}");
        assert_eq!(exporter.metric(&series), Some(count), "{series}");
    }
    assert_eq!(exporter.log().matches("sending a write").count(), 1, "{}", exporter.log());
}
