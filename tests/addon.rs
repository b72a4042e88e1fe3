//! The Home Assistant add-on in deploy/home-assistant/: the manifest's options against its schema and the
//! exporter's version, the Dockerfile's structure (no container engine runs here), run.sh turning bmspace-style
//! options into a configuration that the exporter's own loader and `config check` accept with the values asked
//! for, and the local add-on folder make-local-addon.sh assembles.

use std::collections::BTreeSet;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use bms_exporter::config::mqtt::{Broker, Discovery, Layout, MqttConfig};
use bms_exporter::config::{self, Config};
use bms_exporter::protocol::Protocol;
use bms_exporter::transport::{Parity, SerialSettings, TcpSettings, TransportSettings};
use serde_json::{Value, json};

use crate::util::{Scratch, required_program};

const BIN: &str = env!("CARGO_BIN_EXE_bms_exporter");
const ADDON: &str = "deploy/home-assistant";

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read(rel: &str) -> String {
    let path = root().join(rel);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn text(out: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

/// The manifest, parsed with the YAML parser the exporter itself uses.
fn manifest() -> Value {
    serde_saphyr::from_str(&read(&format!("{ADDON}/config.yaml"))).unwrap_or_else(|e| panic!("config.yaml: {e}"))
}

/// Whether `value` is valid for the Supervisor's option type `schema` (`str`, `int(0,3)`, `list(a|b)`, … with
/// `?` for optional).
fn fits(schema: &str, value: &Value) -> bool {
    let ty = schema.strip_suffix('?').unwrap_or(schema);
    let within = |args: &str, n: i64| {
        let (min, max) = args.split_once(',').unwrap_or_else(|| panic!("{schema}: no range"));
        (min.is_empty() || n >= min.parse::<i64>().unwrap()) && (max.is_empty() || n <= max.parse::<i64>().unwrap())
    };
    match ty {
        "str" | "password" => value.is_string(),
        "bool" => value.is_boolean(),
        "int" => value.is_i64(),
        "port" => value.as_i64().is_some_and(|p| (1..=65535).contains(&p)),
        _ => {
            if let Some(args) = ty.strip_prefix("int(").and_then(|r| r.strip_suffix(')')) {
                value.as_i64().is_some_and(|n| within(args, n))
            } else if let Some(choices) = ty.strip_prefix("list(").and_then(|r| r.strip_suffix(')')) {
                value.as_str().is_some_and(|v| choices.split('|').any(|c| c == v))
            } else {
                panic!("{schema} is not a Supervisor option type this test knows")
            }
        }
    }
}

#[test]
fn the_manifest_has_a_schema_entry_for_every_option_and_every_default_fits_its_type() {
    let manifest = manifest();
    assert_eq!(manifest["name"], "BMS Exporter");
    assert_eq!(manifest["slug"], "bms_exporter");
    assert_eq!(manifest["version"], env!("CARGO_PKG_VERSION"), "the add-on's version follows Cargo.toml");
    assert!(manifest["description"].as_str().is_some_and(|d| !d.is_empty()));
    assert_eq!(manifest["arch"], json!(["aarch64", "amd64", "armv7"]));
    assert_eq!((&manifest["startup"], &manifest["boot"]), (&json!("application"), &json!("auto")));
    assert_eq!((&manifest["init"], &manifest["uart"]), (&json!(false), &json!(true)));
    // The exporter's own default listen port (`--web.listen-address :10485`), the same on the host.
    assert_eq!(manifest["ports"], json!({"10485/tcp": 10485}));
    assert_eq!(manifest["services"], json!(["mqtt:need"]));

    let options = manifest["options"].as_object().expect("options");
    let schema = manifest["schema"].as_object().expect("schema");
    let option_keys: BTreeSet<&String> = options.keys().collect();
    let schema_keys: BTreeSet<&String> = schema.keys().collect();
    assert_eq!(option_keys, schema_keys, "every option needs a schema entry and every schema entry a default");
    for (key, value) in options {
        let ty = schema[key].as_str().unwrap_or_else(|| panic!("schema.{key} is not a type"));
        assert!(fits(ty, value), "options.{key} = {value} does not fit its schema type {ty}");
    }
    // bmspace's option names, so its users can paste theirs, and this exporter's own three.
    for key in [
        "mqtt_host",
        "mqtt_port",
        "mqtt_user",
        "mqtt_password",
        "mqtt_ha_discovery",
        "mqtt_ha_discovery_topic",
        "mqtt_base_topic",
        "connection_type",
        "bms_ip",
        "bms_port",
        "bms_serial",
        "scan_interval",
        "debug_output",
        "force_pack_offset",
        "zero_pad_number_cells",
        "zero_pad_number_packs",
        "protocol",
        "layout",
        "control",
    ] {
        assert!(options.contains_key(key), "no option {key}");
    }
    assert_eq!(schema["mqtt_password"], "password?", "the UI must hide the password");
    assert_eq!(schema["connection_type"], "list(IP|Serial)");
    assert_eq!(schema["protocol"], "list(pace|daly|daly-modbus|sinowealth)");
    assert_eq!(schema["layout"], "list(bmspace|native|daly-bms-cli)");
    let defaults = [
        ("mqtt_ha_discovery_topic", json!("homeassistant")),
        ("mqtt_base_topic", json!("bmspace")),
        ("bms_port", json!(5000)),
        ("bms_serial", json!("/dev/ttyUSB0")),
        ("scan_interval", json!(5)),
        ("protocol", json!("pace")),
        ("layout", json!("bmspace")),
        ("control", json!(false)),
    ];
    for (key, want) in defaults {
        assert_eq!(options[key], want, "options.{key}");
    }

    // The checker itself refuses what the Supervisor would.
    assert!(!fits("int(0,3)", &json!(4)) && !fits("list(IP|Serial)", &json!("USB")) && !fits("port", &json!(0)));
    assert!(fits("int(1,)", &json!(99)) && fits("str?", &json!("")) && !fits("bool", &json!("true")));
}

#[test]
fn the_dockerfile_builds_locked_from_the_repository_root_and_runs_run_sh_next_to_jq() {
    let file = read(&format!("{ADDON}/Dockerfile"));
    let lines: Vec<&str> = file.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')).collect();
    let instruction = |name: &str| -> Vec<&str> {
        lines.iter().filter_map(|l| l.strip_prefix(name).and_then(|r| r.strip_prefix(' '))).collect()
    };
    let from = instruction("FROM");
    assert_eq!(from.len(), 2, "two stages: {from:?}");
    assert!(from[0].starts_with("docker.io/library/rust:") && from[0].contains(" AS "), "builder: {}", from[0]);
    let builder = from[0].rsplit(' ').next().unwrap();
    assert!(from[1].contains("debian:bookworm-slim"), "runtime: {}", from[1]);
    let runs = instruction("RUN");
    assert!(runs.iter().any(|r| r.contains("cargo build --release --locked")), "{runs:?}");
    // run.sh needs jq (and bash, which Debian has); TLS brokers need the CA bundle.
    let installs = file.split("apt-get install").nth(1).expect("an apt-get install");
    assert!(installs.contains(" jq ") && installs.contains("ca-certificates"), "{installs}");

    let copies = instruction("COPY");
    let binary = copies.iter().find(|c| c.starts_with(&format!("--from={builder} "))).expect("COPY --from builder");
    assert_eq!(*binary, format!("--from={builder} /src/target/release/bms_exporter /usr/local/bin/bms_exporter"));
    assert!(copies.contains(&"deploy/home-assistant/run.sh /run.sh"), "{copies:?}");
    assert_eq!(instruction("CMD"), ["[\"/run.sh\"]"]);
    assert!(read(&format!("{ADDON}/run.sh")).contains("exec \"${command[@]}\""));
    assert!(read(&format!("{ADDON}/run.sh")).contains("command=(bms_exporter serve --config"));
    // The label continues over several lines, so the whole file is searched.
    let version = format!("io.hass.version=\"{}\"", env!("CARGO_PKG_VERSION"));
    assert!(file.contains(&version), "the image's label should read {version}");

    // Every file copied from the context exists at the repository root, and the ignore file lets it in.
    let ignore = read(&format!("{ADDON}/Dockerfile.dockerignore"));
    assert!(ignore.lines().any(|l| l == "*"), "the ignore file should start from nothing");
    for source in context_sources(&file) {
        assert!(root().join(&source).exists(), "COPY {source}: no such file");
        let allowed = format!("!{}", source.trim_end_matches('/'));
        assert!(ignore.lines().any(|l| l.trim_end_matches('/') == allowed), "{source} is kept out of the context");
    }
    let mode = std::fs::metadata(root().join(ADDON).join("run.sh")).unwrap().permissions().mode();
    assert!(mode & 0o111 != 0, "run.sh is not executable: {mode:o}");
}

/// The build-context paths the Dockerfile copies (every COPY without --from, destination dropped).
fn context_sources(dockerfile: &str) -> Vec<String> {
    dockerfile
        .lines()
        .filter_map(|l| l.trim().strip_prefix("COPY "))
        .filter(|c| !c.starts_with("--"))
        .flat_map(|c| {
            let words: Vec<&str> = c.split_whitespace().collect();
            words[..words.len() - 1].iter().map(|w| (*w).to_owned()).collect::<Vec<_>>()
        })
        .collect()
}

/// run.sh on `options` in dry-run mode, its files in `scratch`.
fn run_sh(scratch: &Scratch, options: &Value) -> Output {
    let bash = required_program("bash", "bash");
    // run.sh cannot work without jq; without it this test must fail, not pass on a script that never ran.
    required_program("jq", "jq");
    let options_file = scratch.write("options.json", &options.to_string());
    Command::new(bash)
        .arg(root().join(ADDON).join("run.sh"))
        .env("OPTIONS_FILE", &options_file)
        .env("CONFIG_FILE", scratch.path("bms_exporter.yml"))
        .env("RUN_SH_DRY_RUN", "1")
        .env_remove("PASSWORD_FILE")
        .output()
        .unwrap()
}

/// run.sh succeeds on `options`, and the file it names passes `config check` and loads; returns the loaded config
/// and run.sh's log.
fn generate(scratch: &Scratch, options: &Value) -> (Config, String) {
    let out = run_sh(scratch, options);
    assert!(out.status.success(), "run.sh failed on {options}:\n{}", text(&out));
    let config_file = scratch.path("bms_exporter.yml");
    assert_eq!(String::from_utf8_lossy(&out.stdout), format!("{}\n", config_file.display()));
    let check = Command::new(BIN).args(["config", "check"]).arg(&config_file).output().unwrap();
    assert!(
        check.status.success(),
        "config check on run.sh's output:\n{}\n{}",
        text(&check),
        std::fs::read_to_string(&config_file).unwrap()
    );
    assert!(String::from_utf8_lossy(&check.stdout).contains(": ok: 1 device on 1 bus; MQTT to "), "{}", text(&check));
    let config = config::load(&config_file).unwrap_or_else(|e| panic!("{e}"));
    (config, String::from_utf8_lossy(&out.stderr).into_owned())
}

/// bmspace's own option values, as a user would paste them (IP connection, no credentials).
fn bmspace_options() -> Value {
    json!({
        "mqtt_host": "192.168.1.10",
        "mqtt_port": 1883,
        "mqtt_user": "",
        "mqtt_password": "",
        "mqtt_ha_discovery": true,
        "mqtt_ha_discovery_topic": "homeassistant",
        "mqtt_base_topic": "bmspace",
        "connection_type": "IP",
        "bms_ip": "10.0.0.161",
        "bms_port": 5000,
        "bms_serial": "/dev/ttyUSB0",
        "scan_interval": 5,
        "debug_output": 0,
        "force_pack_offset": 0,
        "zero_pad_number_cells": 2,
        "zero_pad_number_packs": 0,
        "protocol": "pace",
        "layout": "bmspace",
        "control": false
    })
}

fn mqtt_of(config: &Config) -> &MqttConfig {
    config.mqtt.as_ref().expect("run.sh always writes an mqtt: block")
}

#[test]
fn bmspace_options_over_ip_become_a_pace_device_behind_tcp_in_the_bmspace_layout() {
    let scratch = Scratch::new("addon-ip");
    let (config, log) = generate(&scratch, &bmspace_options());
    assert_eq!(config.devices.len(), 1);
    let device = &config.devices[0];
    assert_eq!((device.name.as_str(), device.protocol), ("battery", Protocol::Pace));
    assert_eq!(
        device.transport,
        TransportSettings::Tcp(TcpSettings {
            address: "10.0.0.161:5000".to_owned(),
            connect_timeout: config::TCP_CONNECT_TIMEOUT
        })
    );
    let mqtt = mqtt_of(&config);
    assert_eq!(mqtt.broker, Broker { tls: false, host: "192.168.1.10".to_owned(), port: 1883 });
    assert_eq!((mqtt.username.as_ref(), mqtt.password_file.as_ref()), (None, None));
    assert_eq!(mqtt.topic_prefix, "bmspace");
    assert_eq!(mqtt.interval, Duration::from_secs(5));
    assert_eq!(mqtt.layout, Layout::Bmspace);
    assert_eq!(mqtt.discovery, Discovery { enabled: true, prefix: "homeassistant".to_owned() });
    assert!(!mqtt.control);
    assert_eq!((mqtt.zero_pad_number_cells, mqtt.zero_pad_number_packs), (2, 0));
    assert!(!scratch.path("mqtt.password").exists(), "no password, no password file");
    assert!(log.contains("--log.level info"), "debug_output 0 is the info level:\n{log}");
    assert!(!log.contains("force_pack_offset"), "an offset of 0 is the default, not worth a line:\n{log}");

    // The manifest's own defaults, with only the box's address added, run as they are.
    let mut defaults = manifest()["options"].clone();
    defaults["bms_ip"] = json!("fe80::10");
    let (config, _) = generate(&scratch, &defaults);
    assert_eq!(
        config.devices[0].transport,
        TransportSettings::Tcp(TcpSettings {
            address: "[fe80::10]:5000".to_owned(),
            connect_timeout: config::TCP_CONNECT_TIMEOUT
        })
    );
    assert_eq!(mqtt_of(&config).broker, Broker { tls: false, host: "core-mosquitto".to_owned(), port: 1883 });
}

#[test]
fn serial_options_with_the_native_layout_become_a_serial_device_with_control_and_no_padding() {
    let scratch = Scratch::new("addon-serial");
    let mut options = bmspace_options();
    options["connection_type"] = json!("Serial");
    options["bms_serial"] = json!("/dev/serial/by-id/usb-FTDI_FT232R_USB_UART_A10K-if00-port0");
    options["protocol"] = json!("daly");
    options["layout"] = json!("native");
    options["mqtt_base_topic"] = json!("home/battery");
    options["mqtt_ha_discovery"] = json!(false);
    options["mqtt_ha_discovery_topic"] = json!("ha");
    options["control"] = json!(true);
    options["scan_interval"] = json!(30);
    options["debug_output"] = json!(3);
    options["force_pack_offset"] = json!(1);
    let (config, log) = generate(&scratch, &options);
    let device = &config.devices[0];
    assert_eq!(device.protocol, Protocol::Daly);
    assert_eq!(
        device.transport,
        TransportSettings::Serial(SerialSettings {
            path: "/dev/serial/by-id/usb-FTDI_FT232R_USB_UART_A10K-if00-port0".into(),
            baud: 9600,
            parity: Parity::None
        })
    );
    let mqtt = mqtt_of(&config);
    assert_eq!((mqtt.layout, mqtt.topic_prefix.as_str()), (Layout::Native, "home/battery"));
    assert_eq!(mqtt.discovery, Discovery { enabled: false, prefix: "ha".to_owned() });
    assert!(mqtt.control);
    assert_eq!(mqtt.interval, Duration::from_secs(30));
    // bmspace's padding means nothing in the native layout: left out of the config (which would refuse it).
    assert_eq!((mqtt.zero_pad_number_cells, mqtt.zero_pad_number_packs), (0, 0));
    assert!(log.contains("zero_pad_number_cells and zero_pad_number_packs apply to layout bmspace only"), "{log}");
    assert!(log.contains("force_pack_offset (1) is ignored"), "{log}");
    assert!(log.contains("--log.level trace"), "debug_output 3 is the trace level:\n{log}");

    // The native layout's own default prefix when the base topic is left empty.
    options["mqtt_base_topic"] = json!("");
    options["debug_output"] = json!(2);
    let (config, log) = generate(&scratch, &options);
    assert_eq!(mqtt_of(&config).topic_prefix, "bms");
    assert!(log.contains("--log.level debug"), "{log}");
}

#[test]
fn credentials_go_to_a_private_password_file_and_odd_characters_stay_inside_their_strings() {
    let scratch = Scratch::new("addon-credentials");
    let mut options = bmspace_options();
    let password = "pa: ss # \"quoted\" 'single' \\ {x} ünï";
    options["mqtt_user"] = json!("bms user: #1");
    options["mqtt_password"] = json!(password);
    options["mqtt_base_topic"] = json!("bms'pace \"x\"");
    let (config, _) = generate(&scratch, &options);
    let mqtt = mqtt_of(&config);
    assert_eq!(mqtt.username.as_deref(), Some("bms user: #1"));
    assert_eq!(mqtt.topic_prefix, "bms'pace \"x\"");
    let password_file = scratch.path("mqtt.password");
    assert_eq!(mqtt.password_file.as_deref(), Some(password_file.as_path()));
    let mode = std::fs::metadata(&password_file).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "the password file is {mode:o}");
    assert_eq!(bms_exporter::mqtt::connect::read_password(&password_file).unwrap(), password);
    let written = std::fs::read_to_string(scratch.path("bms_exporter.yml")).unwrap();
    assert!(!written.contains("pa: ss"), "the password leaked into the config:\n{written}");

    // Without a password on the next start, the old file goes.
    options["mqtt_password"] = json!("");
    let (config, _) = generate(&scratch, &options);
    assert_eq!(mqtt_of(&config).password_file, None);
    assert!(!password_file.exists(), "a stale password file stayed behind");
}

#[test]
fn options_run_sh_cannot_use_stop_it_with_the_option_named() {
    let scratch = Scratch::new("addon-refused");
    for (change, message) in [
        (json!({"bms_ip": ""}), "connection_type is IP but bms_ip is empty"),
        (json!({"mqtt_password": "x"}), "mqtt_password is set but mqtt_user is empty"),
        (json!({"debug_output": 4}), "debug_output is \"4\"; expected a whole number 0–3"),
        (json!({"bms_port": "50x"}), "bms_port is \"50x\"; expected a whole number 1–65535"),
        (json!({"connection_type": "USB"}), "connection_type is \"USB\"; expected IP or Serial"),
        (json!({"protocol": "jbd"}), "protocol is \"jbd\"; expected pace, daly, daly-modbus or sinowealth"),
        (json!({"mqtt_ha_discovery": "yes"}), "mqtt_ha_discovery is \"yes\"; expected true or false"),
    ] {
        let mut options = bmspace_options();
        for (key, value) in change.as_object().unwrap() {
            options[key] = value.clone();
        }
        let out = run_sh(&scratch, &options);
        assert_eq!(out.status.code(), Some(1), "{change} was accepted:\n{}", text(&out));
        assert!(text(&out).contains(message), "{change}: {}", text(&out));
        assert!(out.stdout.is_empty(), "{change}: nothing on stdout when refused");
    }
    let out = Command::new(required_program("bash", "bash"))
        .arg(root().join(ADDON).join("run.sh"))
        .env("OPTIONS_FILE", scratch.path("missing.json"))
        .env("CONFIG_FILE", scratch.path("c.yml"))
        .env("RUN_SH_DRY_RUN", "1")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out).contains("cannot read the options file"), "{}", text(&out));
}

#[test]
fn the_local_addon_folder_holds_one_manifest_and_everything_its_dockerfile_copies() {
    let scratch = Scratch::new("addon-local");
    let dest = scratch.path("bms_exporter");
    let out = Command::new(required_program("bash", "bash"))
        .arg(root().join(ADDON).join("make-local-addon.sh"))
        .arg(&dest)
        .output()
        .unwrap();
    assert!(out.status.success(), "make-local-addon.sh:\n{}", text(&out));
    let dockerfile = std::fs::read_to_string(dest.join("Dockerfile")).unwrap();
    assert_eq!(dockerfile, read(&format!("{ADDON}/Dockerfile")));
    for source in context_sources(&dockerfile) {
        assert!(dest.join(&source).exists(), "the Supervisor's build would miss {source}");
    }
    assert!(dest.join("DOCS.md").is_file() && dest.join("src/main.rs").is_file());
    let mode = std::fs::metadata(dest.join("deploy/home-assistant/run.sh")).unwrap().permissions().mode();
    assert!(mode & 0o111 != 0, "run.sh lost its executable bit");
    // The Supervisor takes every config.{json,yaml,yml} below an add-on folder for a manifest.
    let manifests = manifests_below(&dest);
    assert_eq!(manifests, [dest.join("config.yaml")], "the Supervisor would see other manifests");

    // Running it again over the folder refreshes it rather than failing.
    std::fs::write(dest.join("src/stale.rs"), "").unwrap();
    let out = Command::new(required_program("bash", "bash"))
        .arg(root().join(ADDON).join("make-local-addon.sh"))
        .arg(&dest)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    assert!(!dest.join("src/stale.rs").exists(), "a file gone from the sources stayed in the add-on");
}

/// Files named config.json, config.yaml or config.yml anywhere below `dir`.
fn manifests_below(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            found.extend(manifests_below(&path));
        } else if ["config.json", "config.yaml", "config.yml"].iter().any(|n| path.file_name().unwrap() == *n) {
            found.push(path);
        }
    }
    found
}
