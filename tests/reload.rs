//! Reloading without a restart, through the binary with real peers: TCP simulators as devices, SIGHUP (what
//! `systemctl reload` sends) and `POST /-/reload`. A kept device keeps its worker (one connection to its
//! simulator for the whole run) and its counters; a removed one leaves `/metrics` and its connection is closed; an
//! added one appears; a broken file changes nothing and says where it is broken; a changed `mqtt:` block
//! publishes under its new prefix through a real mosquitto. The web config needs no signal: a renewed
//! certificate (openssl CLI) is served on the next connection (checked with curl). A Bluetooth device removed on
//! reload has its module disconnected at once (against the mock BlueZ of tests/ble_util.rs).

use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Command as Process, Stdio};
use std::time::Duration;

use crate::ble_util::MockBluez;
use crate::exporter::{exporter, sim_args};
use crate::mqtt_util::{Exporter, Mosquitto, client_id, sample};
use crate::util::{HttpResponse, Killed, Scratch, Simulator, free_port, http_get, required_program, wait_for};

/// A Daly simulator on TCP answering at once.
fn daly(name: &str) -> Simulator {
    Simulator::tcp(name, &sim_args("daly", &["--cells", "4", "--temperatures", "1"]))
}

/// Quick polls (a scrape older than 300 ms polls again), then `devices` (YAML list items) and `rest`.
fn yaml(defaults: &str, devices: &[(&str, &Simulator)], rest: &str) -> String {
    let mut text = format!(
        "defaults:\n  timeout: 300ms\n  retries: 1\n  max_age: 300ms\n  stale_after: 10s\n{defaults}devices:\n"
    );
    for (name, sim) in devices {
        text.push_str(&format!("  - name: {name}\n    protocol: daly\n    tcp: {}\n", sim.addr.as_deref().unwrap()));
    }
    text + rest
}

/// `method path` over plain HTTP/1.0.
fn request(addr: &str, method: &str, path: &str) -> HttpResponse {
    request_with(addr, method, path, "")
}

/// `method path` over plain HTTP/1.0 with `headers` (each line ending in CRLF).
fn request_with(addr: &str, method: &str, path: &str, headers: &str) -> HttpResponse {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    write!(stream, "{method} {path} HTTP/1.0\r\nHost: {addr}\r\nContent-Length: 0\r\n{headers}\r\n").unwrap();
    let mut text = String::new();
    stream.read_to_string(&mut text).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    let mut lines = head.lines();
    let status = lines.next().unwrap().split_whitespace().nth(1).unwrap().parse().unwrap();
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    HttpResponse { status, headers, body: body.to_owned() }
}

/// How many times the exporter logged a new connection to `sim`.
fn connections(exporter: &Exporter, sim: &Simulator) -> usize {
    let needle = format!("tcp {}", sim.addr.as_deref().unwrap());
    exporter.log().lines().filter(|l| l.contains(" connected") && l.contains(&needle)).count()
}

/// `bms_polls_total` of `device`, read several times, checking that it never goes down from `floor`; the last.
fn polls_never_fall(exporter: &Exporter, device: &str, floor: f64) -> f64 {
    let series = format!("bms_polls_total{{device=\"{device}\"}}");
    let mut last = floor;
    for _ in 0..5 {
        let now = exporter.metric(&series).unwrap_or_else(|| panic!("{series} is gone:\n{}", exporter.metrics()));
        assert!(now >= last, "{series} went down from {last} to {now}");
        last = now;
        std::thread::sleep(Duration::from_millis(200));
    }
    last
}

#[test]
fn sighup_adds_and_removes_devices_and_a_kept_device_keeps_its_worker_and_counters() {
    let (keep, gone, added) = (daly("reload-keep"), daly("reload-gone"), daly("reload-added"));
    let dir = Scratch::new("reload-sighup");
    let exporter = Exporter::start(&dir, "exporter", &yaml("", &[("keep", &keep), ("gone", &gone)], ""));
    exporter.wait_up("keep", true, Duration::from_secs(20));
    exporter.wait_up("gone", true, Duration::from_secs(20));
    let before = polls_never_fall(&exporter, "keep", 1.0);
    assert_eq!(exporter.metric("bms_exporter_config_last_reload_successful"), Some(1.0));
    let loaded = exporter.metric("bms_exporter_config_last_reload_success_timestamp_seconds").unwrap();

    std::fs::write(exporter.config_path(), yaml("", &[("keep", &keep), ("added", &added)], "")).unwrap();
    exporter.hangup();
    exporter.wait_up("added", true, Duration::from_secs(20));
    let body = exporter.metrics();
    assert!(!body.contains("device=\"gone\""), "a removed device leaves /metrics:\n{body}");
    let after = polls_never_fall(&exporter, "keep", before);
    assert!(after > before, "keep is still polled ({before} → {after})");
    assert!(exporter.log().contains("configuration reloaded"), "{}", exporter.log());
    assert_eq!(exporter.metric("bms_exporter_config_last_reload_successful"), Some(1.0));
    let reloaded = exporter.metric("bms_exporter_config_last_reload_success_timestamp_seconds").unwrap();
    assert!(reloaded > loaded, "the success timestamp moves ({loaded} → {reloaded})");
    // The removed device's worker closed its link: its simulator saw the client go.
    wait_for("the removed device's connection to close", Duration::from_secs(10), || {
        gone.lines.lock().unwrap().iter().any(|l| l.contains("requests=")).then_some(())
    });

    // A new request gap restarts every worker; the kept device's link and totals carry over to its new worker.
    std::fs::write(exporter.config_path(), yaml("  request_gap: 20ms\n", &[("keep", &keep), ("added", &added)], ""))
        .unwrap();
    exporter.hangup();
    wait_for("the second reload", Duration::from_secs(20), || {
        (exporter.log().matches("configuration reloaded").count() == 2).then_some(())
    });
    polls_never_fall(&exporter, "keep", after);
    exporter.wait_up("keep", true, Duration::from_secs(10));
    exporter.wait_up("added", true, Duration::from_secs(10));

    // One connection each for the whole run: no worker reconnected, and the kept simulator never saw its client go.
    assert_eq!(connections(&exporter, &keep), 1, "{}", exporter.log());
    assert_eq!(connections(&exporter, &added), 1, "{}", exporter.log());
    assert!(!keep.lines.lock().unwrap().iter().any(|l| l.contains("requests=")), "{:?}", keep.lines);
}

#[test]
fn a_broken_file_is_refused_with_its_position_and_the_old_devices_stay() {
    let (sim, other) = (daly("reload-broken"), daly("reload-broken-other"));
    let dir = Scratch::new("reload-broken");
    let good = yaml("", &[("house", &sim)], "");
    let exporter = Exporter::start(&dir, "exporter", &good);
    exporter.wait_up("house", true, Duration::from_secs(20));
    let loaded = exporter.metric("bms_exporter_config_last_reload_success_timestamp_seconds").unwrap();

    let wrong_method = http_get(&exporter.addr, "/-/reload", &[]).unwrap();
    assert_eq!(wrong_method.status, 405, "{}", wrong_method.body);
    assert_eq!(wrong_method.header("allow"), Some("POST"));

    // Line 11 (after 6 lines of defaults and 3 of the first device): a second `:` where YAML allows none.
    let broken = format!("{good}  - name: shed\n    protocol: daly: x\n    tcp: {}\n", other.addr.as_deref().unwrap());
    std::fs::write(exporter.config_path(), &broken).unwrap();
    let refused = request(&exporter.addr, "POST", "/-/reload");
    assert_eq!(refused.status, 500, "{}", refused.body);
    let file = exporter.config_path().display().to_string();
    let position = refused.body.split_once(&format!("{file}:")).map(|(_, rest)| rest.to_owned());
    let position = position.unwrap_or_else(|| panic!("the answer names the file: {}", refused.body));
    let mut numbers = position.split(':').take(2).map(|n| n.trim().parse::<u32>());
    let (line, column) = (numbers.next(), numbers.next());
    assert!(matches!((&line, &column), (Some(Ok(_)), Some(Ok(_)))), "file:line:column in {}", refused.body);
    assert!(matches!(line, Some(Ok(11))), "the error is on line 11: {}", refused.body);
    assert!(exporter.log().contains(refused.body.trim()), "the log names it too:\n{}", exporter.log());
    assert_eq!(exporter.metric("bms_exporter_config_last_reload_successful"), Some(0.0));
    assert_eq!(exporter.metric("bms_exporter_config_last_reload_success_timestamp_seconds"), Some(loaded));
    exporter.wait_up("house", true, Duration::from_secs(10));
    assert!(!exporter.metrics().contains("device=\"shed\""));

    // Fixed: 200 naming what changed, the new device appears, success again, and the timestamp moves.
    let fixed = format!("{good}  - name: shed\n    protocol: daly\n    tcp: {}\n", other.addr.as_deref().unwrap());
    std::fs::write(exporter.config_path(), fixed).unwrap();
    let accepted = request(&exporter.addr, "POST", "/-/reload");
    assert_eq!(accepted.status, 200, "{}", accepted.body);
    assert!(accepted.body.contains("added: shed"), "{}", accepted.body);
    assert!(accepted.body.contains("unchanged: house"), "{}", accepted.body);
    exporter.wait_up("shed", true, Duration::from_secs(20));
    assert_eq!(exporter.metric("bms_exporter_config_last_reload_successful"), Some(1.0));
    let reloaded = exporter.metric("bms_exporter_config_last_reload_success_timestamp_seconds").unwrap();
    assert!(reloaded > loaded, "{loaded} → {reloaded}");
    assert_eq!(connections(&exporter, &sim), 1, "house kept its link:\n{}", exporter.log());
}

#[test]
fn a_changed_mqtt_block_restarts_the_publisher_under_its_new_prefix_and_an_unchanged_one_is_left_alone() {
    let sim = daly("reload-mqtt");
    let broker = Mosquitto::plain("reload");
    let recorder = broker.recorder(&["#"]);
    let dir = Scratch::new("reload-mqtt");
    let id = client_id("reload");
    let mqtt = |prefix: &str| {
        format!(
            "mqtt:\n  broker: mqtt://127.0.0.1:{}\n  client_id: {id}\n  interval: 1s\n  topic_prefix: {prefix}\n",
            broker.port
        )
    };
    let exporter = Exporter::start(&dir, "exporter", &yaml("", &[("house", &sim)], &mqtt("before")));
    exporter.wait_connected(true, Duration::from_secs(20));
    wait_for("state under before/", Duration::from_secs(20), || recorder.last("before/house/01/state"));
    assert_eq!(broker.retained_payload("before/status").as_deref(), Some("online"));

    std::fs::write(exporter.config_path(), yaml("", &[("house", &sim)], &mqtt("after"))).unwrap();
    exporter.hangup();
    wait_for("state under after/", Duration::from_secs(20), || recorder.last("after/house/01/state"));
    // The old publisher's goodbye (as on shutdown), the new one's birth.
    broker.wait_retained("before/status", "offline", Duration::from_secs(10));
    broker.wait_retained("after/status", "online", Duration::from_secs(10));
    let skip = recorder.len();
    std::thread::sleep(Duration::from_secs(3));
    let late: Vec<String> =
        recorder.messages().into_iter().skip(skip).map(|m| m.topic).filter(|t| t.starts_with("before/")).collect();
    assert!(late.is_empty(), "nothing is published under the old prefix any more: {late:?}");
    exporter.wait_connected(true, Duration::from_secs(10));
    assert!(sample(&exporter.metrics(), "bms_mqtt_messages_published_total").is_some_and(|n| n > 0.0));
    assert_eq!(connections(&exporter, &sim), 1, "the device was not touched:\n{}", exporter.log());

    // An unchanged block leaves the publisher alone (no new connection) and it publishes the new device list; a
    // device removed later is published once more as down, so its retained availability is not left online.
    let broker_connections = || exporter.log().matches("connected to the MQTT broker").count();
    assert_eq!(broker_connections(), 2, "{}", exporter.log());
    let shed = daly("reload-mqtt-shed");
    std::fs::write(exporter.config_path(), yaml("", &[("house", &sim), ("shed", &shed)], &mqtt("after"))).unwrap();
    exporter.hangup();
    wait_for("state of the added device", Duration::from_secs(20), || recorder.last("after/shed/01/state"));
    broker.wait_retained("after/shed/availability", "online", Duration::from_secs(10));
    std::fs::write(exporter.config_path(), yaml("", &[("house", &sim)], &mqtt("after"))).unwrap();
    exporter.hangup();
    broker.wait_retained("after/shed/availability", "offline", Duration::from_secs(10));
    assert_eq!(broker.retained_payload("after/house/availability").as_deref(), Some("online"));
    assert_eq!(broker_connections(), 2, "the publisher kept its connection:\n{}", exporter.log());
}

/// A self-signed P-256 certificate for 127.0.0.1 in `dir`: `NAME.crt` and `NAME.key`.
fn certificate(dir: &Path, name: &str) {
    let (key, crt) = (format!("{name}.key"), format!("{name}.crt"));
    let out = Process::new(required_program("openssl", "openssl"))
        .args(["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-keyout"])
        .args([&key, "-out", &crt, "-days", "2", "-subj", &format!("/CN={name}")])
        .args(["-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"])
        .current_dir(dir)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(out.status.success(), "openssl: {}", String::from_utf8_lossy(&out.stderr));
}

/// Put `NAME.crt` and `NAME.key` in place as `server.crt` and `server.key`, each replaced in one step (a rename),
/// as certificate tools do.
fn install(dir: &Path, name: &str) {
    for ext in ["key", "crt"] {
        std::fs::copy(dir.join(format!("{name}.{ext}")), dir.join(format!("new.{ext}"))).unwrap();
        std::fs::rename(dir.join(format!("new.{ext}")), dir.join(format!("server.{ext}"))).unwrap();
    }
}

/// The HTTP status of `GET /-/healthy` over TLS trusting only `ca`, on a new connection; `None` when the
/// handshake fails (curl's own exit status says why).
fn healthy_trusting(addr: &str, ca: &Path) -> Option<u16> {
    let out = Process::new(required_program("curl", "curl"))
        .args(["-sS", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "10", "--cacert"])
        .arg(ca)
        .arg(format!("https://{addr}/-/healthy"))
        .output()
        .unwrap();
    if out.status.success() { String::from_utf8_lossy(&out.stdout).trim().parse().ok() } else { None }
}

#[test]
fn a_renewed_certificate_is_served_on_the_next_connection_without_a_restart() {
    let dir = Scratch::new("reload-tls");
    certificate(&dir.0, "first");
    certificate(&dir.0, "second");
    install(&dir.0, "first");
    let web = dir.write("web.yml", "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n");
    let addr = format!("127.0.0.1:{}", free_port());
    let mut exporter =
        exporter(&dir.0, &["--demo", "--web.listen-address", &addr, "--web.config.file", web.to_str().unwrap()]);
    let log = || std::fs::read_to_string(dir.path("exporter.log")).unwrap_or_default();
    let (first, second) = (dir.path("first.crt"), dir.path("second.crt"));
    wait_for("the exporter to serve HTTPS with the first certificate", Duration::from_secs(30), || {
        assert!(exporter.0.try_wait().unwrap().is_none(), "the exporter exited:\n{}", log());
        (healthy_trusting(&addr, &first) == Some(200)).then_some(())
    });
    assert_eq!(healthy_trusting(&addr, &second), None, "the second certificate is not served yet");

    install(&dir.0, "second");
    wait_for("the renewed certificate on a new connection", Duration::from_secs(10), || {
        (healthy_trusting(&addr, &second) == Some(200)).then_some(())
    });
    assert_eq!(healthy_trusting(&addr, &first), None, "the old certificate is no longer served");
    assert!(log().contains("web config reloaded"), "{}", log());
    assert!(exporter.0.try_wait().unwrap().is_none(), "no restart:\n{}", log());

    // A broken web config is logged, and the one in force goes on.
    std::fs::write(&web, "tls_server_config:\n  cert_file: [server.crt\n").unwrap();
    wait_for("the broken web config to be reported", Duration::from_secs(10), || {
        healthy_trusting(&addr, &second)?;
        log().contains("web config not reloaded").then_some(())
    });
    assert_eq!(healthy_trusting(&addr, &second), Some(200), "{}", log());
    assert!(log().contains(&web.display().to_string()), "the error names the file:\n{}", log());
}

#[test]
fn the_reload_endpoint_asks_for_the_web_configs_credentials_like_every_other() {
    let (sim, other) = (daly("reload-auth"), daly("reload-auth-other"));
    let dir = Scratch::new("reload-auth");
    let config = dir.write("bms.yaml", &yaml("", &[("house", &sim)], ""));
    // Cost 4 keeps the test fast; the server treats every cost alike.
    let web = dir.write("web.yml", &format!("basic_auth_users:\n  alice: {}\n", bcrypt::hash("pw", 4).unwrap()));
    let addr = format!("127.0.0.1:{}", free_port());
    let (config_arg, web_arg) = (config.to_str().unwrap(), web.to_str().unwrap());
    let mut exporter =
        exporter(&dir.0, &["--config", config_arg, "--web.listen-address", &addr, "--web.config.file", web_arg]);
    // alice:pw
    let login = "Authorization: Basic YWxpY2U6cHc=\r\n";
    wait_for("the exporter to answer", Duration::from_secs(30), || {
        assert!(exporter.0.try_wait().unwrap().is_none(), "the exporter exited");
        let answer = http_get(&addr, "/-/healthy", &[("Authorization", "Basic YWxpY2U6cHc=")])?;
        (answer.status == 200).then_some(())
    });
    std::fs::write(&config, yaml("", &[("house", &sim), ("shed", &other)], "")).unwrap();
    let refused = request(&addr, "POST", "/-/reload");
    assert_eq!(refused.status, 401, "{}", refused.body);
    assert_eq!(refused.header("www-authenticate"), Some("Basic realm=\"bms_exporter\""));
    let wrong = request_with(&addr, "POST", "/-/reload", "Authorization: Basic YWxpY2U6d3Jvbmc=\r\n");
    assert_eq!(wrong.status, 401, "{}", wrong.body);
    let body = request_with(&addr, "GET", "/metrics", login).body;
    assert!(!body.contains("device=\"shed\""), "nothing was reloaded without credentials:\n{body}");
    let accepted = request_with(&addr, "POST", "/-/reload", login);
    assert_eq!(accepted.status, 200, "{}", accepted.body);
    assert!(accepted.body.contains("added: shed"), "{}", accepted.body);
}

#[test]
fn a_bluetooth_device_removed_on_reload_has_its_module_disconnected_while_the_exporter_runs_on() {
    let (house, boat) = (daly("reload-ble-house"), daly("reload-ble-boat"));
    let bluez = MockBluez::start();
    bluez.add_adapter("hci0");
    let module = bluez.add_device("hci0", "AA:BB:CC:00:00:07", "DL-boat");
    bluez.add_daly_a5_gatt(&module, boat.addr.as_deref().unwrap(), true);
    let dir = Scratch::new("reload-ble");
    let tcp_only = yaml("", &[("house", &house)], "");
    let config = dir.write(
        "bms.yaml",
        &format!("{tcp_only}  - name: boat\n    protocol: daly\n    bluetooth: AA:BB:CC:00:00:07\n"),
    );
    let addr = format!("127.0.0.1:{}", free_port());
    let log = std::fs::File::create(dir.path("exporter.log")).unwrap();
    let mut command = Process::new(env!("CARGO_BIN_EXE_bms_exporter"));
    command.args(["--config", config.to_str().unwrap(), "--web.listen-address", &addr]).stderr(log);
    let mut exporter = Killed(bluez.env(&mut command).spawn().unwrap());
    let log = || std::fs::read_to_string(dir.path("exporter.log")).unwrap_or_default();
    let up = |device: &str| {
        let body = http_get(&addr, "/metrics", &[])?.body;
        sample(&body, &format!("bms_up{{device=\"{device}\"}}"))
    };
    wait_for("both devices up", Duration::from_secs(30), || {
        assert!(exporter.0.try_wait().unwrap().is_none(), "the exporter exited:\n{}", log());
        (up("house") == Some(1.0) && up("boat") == Some(1.0)).then_some(())
    });
    assert_eq!(bluez.stats(&module)["disconnects"].as_u64(), Some(0), "{}", bluez.stats(&module));

    std::fs::write(&config, &tcp_only).unwrap();
    let reloaded = request(&addr, "POST", "/-/reload");
    assert_eq!(reloaded.status, 200, "{}", reloaded.body);
    assert!(reloaded.body.contains("removed: boat"), "{}", reloaded.body);
    // The module is released (unsubscribed and disconnected) without waiting for the exporter to exit.
    wait_for("the module to be disconnected", Duration::from_secs(10), || {
        (bluez.stats(&module)["disconnects"].as_u64() == Some(1)).then_some(())
    });
    assert!(exporter.0.try_wait().unwrap().is_none(), "{}", log());
    assert_eq!(up("boat"), None, "the removed device left /metrics");
    assert_eq!(up("house"), Some(1.0));
    assert_eq!(bluez.stats(&module)["connects"].as_u64(), Some(1), "{}", bluez.stats(&module));
}
