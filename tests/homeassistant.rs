//! A real Home Assistant core (PyPI `homeassistant==2024.3.3`, in the venv the test command caches under
//! `target/ha`) reading the exporter's MQTT discovery and state from a real mosquitto: entities, their values
//! against the simulators' truth, units and classes, devices, availability and the control switch.

use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command as Process, Stdio};
use std::time::Duration;

use serde_json::{Value, json};

use crate::mqtt_util::Mosquitto;
use crate::util::{Killed, Scratch, free_port, wait_for};

/// A running Home Assistant with an onboarded owner's access token.
pub struct HomeAssistant {
    /// The process, killed on drop.
    _process: Killed,
    /// `127.0.0.1:PORT` of its HTTP API.
    pub addr: String,
    /// A bearer token of the owner created by onboarding.
    pub token: String,
    /// Its configuration directory (the log is `home-assistant.log` there).
    pub dir: PathBuf,
}

/// One HTTP/1.0 exchange with a JSON or form body; `None` when nothing answers.
pub fn http(addr: &str, method: &str, path: &str, headers: &[(&str, &str)], body: &str) -> Option<(u16, String)> {
    let mut stream = TcpStream::connect(addr).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(30))).ok()?;
    let mut request = format!("{method} {path} HTTP/1.0\r\nHost: {addr}\r\nContent-Length: {}\r\n", body.len());
    for (k, v) in headers {
        request.push_str(&format!("{k}: {v}\r\n"));
    }
    request.push_str("\r\n");
    request.push_str(body);
    stream.write_all(request.as_bytes()).ok()?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).ok()?;
    let text = String::from_utf8(raw).ok()?;
    let (head, body) = text.split_once("\r\n\r\n")?;
    let status = head.lines().next()?.split_whitespace().nth(1)?.parse().ok()?;
    Some((status, body.to_owned()))
}

impl HomeAssistant {
    /// The `hass` program of the test command's venv; fails loudly when it is missing.
    pub fn program() -> PathBuf {
        let python = std::env::var_os("BMS_HA_PYTHON")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/ha/bin/python"));
        let hass = python.with_file_name("hass");
        let usable = hass.is_file()
            && Process::new(&python).args(["-c", "import homeassistant"]).output().is_ok_and(|o| o.status.success());
        assert!(
            usable,
            "{} is missing or lacks homeassistant==2024.3.3: run the test command (bash scripts/test.sh), which \
             installs it in a venv under target/ha, or point BMS_HA_PYTHON at that venv's python",
            python.display()
        );
        hass
    }

    /// Start Home Assistant in `dir` with the MQTT integration pointed at the broker on `mqtt_port`, wait for its
    /// API and onboard an owner.
    pub fn start(dir: &Path, mqtt_port: u16) -> Self {
        let hass = Self::program();
        std::fs::create_dir_all(dir.join(".storage")).unwrap();
        let port = free_port();
        std::fs::write(
            dir.join("configuration.yaml"),
            format!(
                "homeassistant:\n  name: Test\n  latitude: 0\n  longitude: 0\n  elevation: 0\n  unit_system: metric\n  \
                 time_zone: UTC\n  country: DE\n  currency: EUR\nhttp:\n  server_host: 127.0.0.1\n  server_port: {port}\n\
                 api:\nlogger:\n  default: warning\n"
            ),
        )
        .unwrap();
        // The MQTT integration is set up by a config entry (YAML cannot): written before the first start, as
        // the UI would have stored it.
        let entries = json!({
            "version": 1, "minor_version": 1, "key": "core.config_entries",
            "data": {"entries": [{
                "entry_id": "0123456789abcdef0123456789abcdef", "version": 1, "minor_version": 1,
                "domain": "mqtt", "title": "127.0.0.1",
                "data": {"broker": "127.0.0.1", "port": mqtt_port, "discovery": true},
                "options": {}, "pref_disable_new_entities": false, "pref_disable_polling": false,
                "source": "user", "unique_id": null, "disabled_by": null
            }]}
        });
        std::fs::write(dir.join(".storage/core.config_entries"), entries.to_string()).unwrap();
        let out = std::fs::File::create(dir.join("hass.out")).unwrap();
        let process = Process::new(&hass)
            .arg("-c")
            .arg(dir)
            .arg("--skip-pip")
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .unwrap();
        let process = Killed(process);
        let addr = format!("127.0.0.1:{port}");
        wait_for("Home Assistant's HTTP API", Duration::from_secs(120), || {
            http(&addr, "GET", "/api/onboarding", &[], "").filter(|(s, _)| *s == 200)
        });
        let client = format!("http://{addr}/");
        let body = json!({"client_id": client, "name": "Test", "username": "test", "password": "test-password",
                          "language": "en"});
        let (status, reply) =
            http(&addr, "POST", "/api/onboarding/users", &[("Content-Type", "application/json")], &body.to_string())
                .unwrap();
        assert_eq!(status, 200, "onboarding: {reply}");
        let code = serde_json::from_str::<Value>(&reply).unwrap()["auth_code"].as_str().unwrap().to_owned();
        let form = format!("grant_type=authorization_code&code={code}&client_id={}", crate::util::url_encode(&client));
        let (status, reply) =
            http(&addr, "POST", "/auth/token", &[("Content-Type", "application/x-www-form-urlencoded")], &form)
                .unwrap();
        assert_eq!(status, 200, "token: {reply}");
        let token = serde_json::from_str::<Value>(&reply).unwrap()["access_token"].as_str().unwrap().to_owned();
        Self { _process: process, addr, token, dir: dir.to_owned() }
    }

    /// `GET /api/states/<entity>`: its state object, `None` while it does not exist.
    pub fn state(&self, entity: &str) -> Option<Value> {
        let auth = format!("Bearer {}", self.token);
        let (status, body) =
            http(&self.addr, "GET", &format!("/api/states/{entity}"), &[("Authorization", &auth)], "")?;
        (status == 200).then(|| serde_json::from_str(&body).unwrap())
    }

    /// Render a template (e.g. `{{ device_attr('sensor.x', 'manufacturer') }}`) in Home Assistant.
    pub fn template(&self, template: &str) -> String {
        let auth = format!("Bearer {}", self.token);
        let body = json!({ "template": template }).to_string();
        let headers = [("Authorization", auth.as_str()), ("Content-Type", "application/json")];
        let (status, reply) = http(&self.addr, "POST", "/api/template", &headers, &body).unwrap();
        assert_eq!(status, 200, "{template}: {reply}");
        reply
    }

    /// Call a service, e.g. `switch`/`turn_off` with `{"entity_id": …}`.
    pub fn call(&self, domain: &str, service: &str, data: &Value) {
        let auth = format!("Bearer {}", self.token);
        let headers = [("Authorization", auth.as_str()), ("Content-Type", "application/json")];
        let path = format!("/api/services/{domain}/{service}");
        let (status, reply) = http(&self.addr, "POST", &path, &headers, &data.to_string()).unwrap();
        assert_eq!(status, 200, "{domain}.{service}: {reply}");
    }

    /// Its log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("home-assistant.log")).unwrap_or_default()
    }
}

/// Expected unit, device class and state class of an entity, by field, as Home Assistant defines them.
fn classes(field: &str) -> (Option<&'static str>, Option<&'static str>, Option<&'static str>) {
    match field {
        "voltage" => (Some("V"), Some("voltage"), Some("measurement")),
        "current" => (Some("A"), Some("current"), Some("measurement")),
        "power" => (Some("W"), Some("power"), Some("measurement")),
        "state_of_charge" => (Some("%"), Some("battery"), Some("measurement")),
        "cycles" => (None, None, Some("total_increasing")),
        "charged_energy" | "discharged_energy" => (Some("kWh"), Some("energy"), Some("total_increasing")),
        f if f.starts_with("cell_") && f[5..].chars().all(|c| c.is_ascii_digit()) => {
            (Some("V"), Some("voltage"), Some("measurement"))
        }
        f if f.starts_with("temperature_") => (Some("°C"), Some("temperature"), Some("measurement")),
        other => panic!("no expectation for {other}"),
    }
}

/// The truth's value of `field` for one pack (SOC in percent, as the entity shows it).
fn truth_value(pack: &Value, field: &str) -> Option<f64> {
    let f = |key: &str| pack[key].as_f64();
    match field {
        "voltage" => f("voltage_volts"),
        "current" => f("current_amperes"),
        "power" => Some(f("voltage_volts")? * f("current_amperes")?),
        "state_of_charge" => f("state_of_charge_ratio").map(|r| r * 100.0),
        "cycles" => f("cycle_count"),
        c if c.starts_with("cell_") => pack["cell_volts"][c[5..].parse::<usize>().ok()? - 1].as_f64(),
        t if t.starts_with("temperature_") => {
            let probe: u64 = t["temperature_".len()..].parse().ok()?;
            pack["temperatures"].as_array()?.iter().find(|x| x["sensor"]["probe"] == probe)?["celsius"].as_f64()
        }
        _ => None,
    }
}

/// The tolerance of `field` for a protocol's wire resolution (a value is rounded once, on the wire).
fn tolerance(protocol: &str, field: &str, truth: f64) -> f64 {
    let daly = protocol == "daly";
    match field {
        "voltage" => {
            if daly {
                0.051
            } else {
                0.0051
            }
        }
        "current" => {
            if daly {
                0.051
            } else {
                0.0051
            }
        }
        "power" => truth.abs() * 0.002 + 1.0,
        "state_of_charge" => {
            if daly {
                0.051
            } else {
                1.0
            }
        }
        "cycles" => 0.0,
        f if f.starts_with("cell_") => 0.000_51,
        _ => {
            if daly {
                0.51
            } else {
                0.051
            }
        }
    }
}

/// Every sensor of a pack whose value the test compares with the truth.
fn compared_fields(pack: &Value) -> Vec<String> {
    let mut fields: Vec<String> =
        ["voltage", "current", "power", "state_of_charge", "cycles"].iter().map(|s| (*s).to_owned()).collect();
    let cells = pack["cell_volts"].as_array().unwrap().len();
    fields.extend((1..=cells).map(|n| format!("cell_{n:02}")));
    for t in pack["temperatures"].as_array().unwrap() {
        // Named sensors (mosfet, ambient, board) exist only where the protocol reports them: not compared.
        if let Some(probe) = t["sensor"]["probe"].as_u64() {
            fields.push(format!("temperature_{probe:02}"));
        }
    }
    fields
}

/// The exporter with `config`, on a free web port; its log in `dir/exporter.log`.
fn exporter(dir: &Path, config: &str) -> (Killed, String) {
    let file = dir.join("exporter.yaml");
    std::fs::write(&file, config).unwrap();
    let addr = format!("127.0.0.1:{}", free_port());
    let log = std::fs::File::create(dir.join("exporter.log")).unwrap();
    let child = Process::new(env!("CARGO_BIN_EXE_bms_exporter"))
        .args(["serve", "--config"])
        .arg(&file)
        .args(["--web.listen-address", &addr])
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    (Killed(child), addr)
}

/// A Daly and a 2-pack Pace simulator published through mosquitto into a real Home Assistant: every pack is its
/// own device with the BMS's identity, every entity carries the truth with the right unit and classes, a switch
/// turned off in Home Assistant turns the simulator's MOSFET off, and the exporter's last will makes every entity
/// unavailable. Home Assistant logs no discovery error on the way.
#[test]
fn home_assistant_shows_every_pack_as_a_device_with_true_values_and_switches_the_mosfet() {
    let hass = HomeAssistant::program();
    let _ = hass;
    let scratch = Scratch::new("ha-e2e");
    let broker = Mosquitto::plain("ha-e2e");
    let mqtt_port = broker.port;
    let fixed = ["--baud", "0", "--latency-ms", "0", "--time-scale", "0"];
    let (daly, link) = crate::util::Simulator::pty("ha-daly", &[&["--protocol", "daly"], &fixed[..]].concat());
    let pace = crate::util::Simulator::tcp("ha-pace", &[&["--protocol", "pace", "--packs", "2"], &fixed[..]].concat());
    let config = format!(
        "devices:\n  - name: garage\n    protocol: daly\n    serial: {}\n  - name: rack\n    protocol: pace\n    tcp: {}\n\
         mqtt:\n  broker: mqtt://127.0.0.1:{mqtt_port}\n  client_id: ha-e2e\n  interval: 1s\n  control: true\n",
        link.display(),
        pace.addr.as_deref().unwrap()
    );
    let (mut exporter, web) = exporter(&scratch.0, &config);
    let ha = HomeAssistant::start(&scratch.path("ha"), mqtt_port);
    let log = || std::fs::read_to_string(scratch.path("exporter.log")).unwrap_or_default();

    let devices = [("garage", "daly", &daly), ("rack", "pace", &pace)];
    for (device, protocol, sim) in devices {
        let truth = sim.truth_json();
        for pack in truth["packs"].as_array().unwrap() {
            let number = pack["pack"].as_u64().unwrap();
            for field in compared_fields(pack) {
                let entity = format!("sensor.bms_exporter_{device}_{number:02}_{field}");
                let state = wait_for(&format!("{entity} with a value"), Duration::from_secs(60), || {
                    ha.state(&entity).filter(|s| s["state"].as_str().is_some_and(|v| v.parse::<f64>().is_ok()))
                });
                let got: f64 = state["state"].as_str().unwrap().parse().unwrap();
                let want = truth_value(pack, &field).unwrap_or_else(|| panic!("{entity}: no truth"));
                let tol = tolerance(protocol, &field, want);
                assert!(
                    (got - want).abs() <= tol,
                    "{entity}: Home Assistant shows {got}, the truth is {want} (±{tol})"
                );
                let (unit, class, state_class) = classes(&field);
                let attributes = &state["attributes"];
                assert_eq!(attributes["unit_of_measurement"].as_str(), unit, "{entity}: {state}");
                assert_eq!(attributes["device_class"].as_str(), class, "{entity}: {state}");
                assert_eq!(attributes["state_class"].as_str(), state_class, "{entity}: {state}");
            }
            for field in ["charged_energy", "discharged_energy"] {
                let entity = format!("sensor.bms_exporter_{device}_{number:02}_{field}");
                let state = wait_for(&entity, Duration::from_secs(30), || ha.state(&entity));
                let (unit, class, state_class) = classes(field);
                assert_eq!(state["attributes"]["unit_of_measurement"].as_str(), unit, "{entity}: {state}");
                assert_eq!(state["attributes"]["device_class"].as_str(), class, "{entity}: {state}");
                assert_eq!(state["attributes"]["state_class"].as_str(), state_class, "{entity}: {state}");
                assert!(state["state"].as_str().unwrap().parse::<f64>().is_ok_and(|v| v >= 0.0), "{entity}: {state}");
            }
        }
    }

    // Each pack is a device of its own, made and named by what the BMS reports (the exporter's /metrics holds
    // the same identity as labels of bms_pack_info).
    let metrics = crate::util::http_get(&web, "/metrics", &[]).unwrap().body;
    let mut device_ids = std::collections::BTreeSet::new();
    for (device, number, manufacturer) in [("garage", 1, "Daly"), ("rack", 1, "Pace"), ("rack", 2, "Pace")] {
        let entity = format!("sensor.bms_exporter_{device}_{number:02}_voltage");
        let attr = |name: &str| ha.template(&format!("{{{{ device_attr('{entity}', '{name}') }}}}"));
        assert_eq!(attr("manufacturer"), manufacturer, "{entity}");
        // A pack without identity (a Pace slave pack reports none) has no bms_pack_info and no model in HA.
        let pack_info = metrics
            .lines()
            .find(|l| {
                l.starts_with("bms_pack_info{")
                    && l.contains(&format!("device=\"{device}\""))
                    && l.contains(&format!("pack=\"{number:02}\""))
            })
            .unwrap_or_default();
        for (label, key) in [("model", "model"), ("firmware_version", "sw_version"), ("serial_number", "serial_number")]
        {
            let reported = pack_info.split(&format!("{label}=\"")).nth(1).and_then(|r| r.split('"').next());
            assert_eq!(attr(key), reported.unwrap_or("None"), "{entity}: {key} (bms_pack_info: {pack_info})");
        }
        device_ids.insert(ha.template(&format!("{{{{ device_id('{entity}') }}}}")));
    }
    assert_eq!(device_ids.len(), 3, "every pack is its own device: {device_ids:?}");
    let via = ha.template("{{ device_attr(device_id('sensor.bms_exporter_rack_02_voltage'), 'via_device_id') }}");
    assert_eq!(
        via,
        ha.template("{{ device_id('binary_sensor.bms_exporter_bms_status') }}"),
        "packs hang off the exporter"
    );
    assert_eq!(ha.state("binary_sensor.bms_exporter_bms_status").unwrap()["state"], "on");

    // Control: the switch shows what the BMS reports, and turning it off in Home Assistant turns the MOSFET off.
    let switch = "switch.bms_exporter_garage_01_charge_mosfet";
    wait_for("the charge MOSFET switch on", Duration::from_secs(30), || {
        ha.state(switch).filter(|s| s["state"] == "on")
    });
    ha.call("switch", "turn_off", &json!({ "entity_id": switch }));
    wait_for("the simulator's charge MOSFET off", Duration::from_secs(30), || {
        (daly.truth_json()["packs"][0]["charge_mosfet_enabled"] == false).then_some(())
    });
    wait_for("the switch off in Home Assistant", Duration::from_secs(30), || {
        ha.state(switch).filter(|s| s["state"] == "off")
    });
    assert!(log().contains("charge"), "the write is logged:\n{}", log());

    // The exporter vanishes: its last will makes every entity unavailable.
    let _ = exporter.0.kill();
    let _ = exporter.0.wait();
    for entity in ["sensor.bms_exporter_garage_01_voltage", "sensor.bms_exporter_rack_02_cell_16", switch] {
        wait_for(&format!("{entity} unavailable"), Duration::from_secs(30), || {
            ha.state(entity).filter(|s| s["state"] == "unavailable")
        });
    }
    assert_eq!(ha.state("binary_sensor.bms_exporter_bms_status").unwrap()["state"], "off");

    let ha_log = ha.log();
    for bad in ["when processing MQTT discovery message", "Unable to parse JSON", "is not a valid unit"] {
        assert!(!ha_log.contains(bad), "Home Assistant logged {bad:?}:\n{ha_log}");
    }
    let mqtt_problems: Vec<&str> = ha_log
        .lines()
        .filter(|l| (l.contains("ERROR") || l.contains("WARNING")) && l.to_ascii_lowercase().contains("mqtt"))
        .collect();
    assert!(mqtt_problems.is_empty(), "Home Assistant's MQTT integration complained:\n{}", mqtt_problems.join("\n"));
}
