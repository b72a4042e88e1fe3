//! The MQTT publisher of the exporter binary (`serve --config FILE` with an `mqtt:` block) against a real broker
//! (Debian `mosquitto`, a fresh one per test on free loopback ports): birth and last will, a broker that is down
//! at start-up or restarts, discovery once per connection, user name and password, TLS with a CA and with a
//! client certificate. `/metrics` must answer throughout, with `bms_mqtt_*` saying what happened. "kill -9" is
//! SIGKILL of the process: its socket closes without an MQTT DISCONNECT, which mosquitto treats as a lost client
//! and answers with the will at once (checked through its log); SIGTERM is how systemd stops it.

use std::path::Path;
use std::process::{Command as Process, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::mqtt_util::{Exporter, Login, Mosquitto, Recorder, client_id, config_yaml, sample, yaml_path};
use crate::util::{Scratch, Simulator, free_port, required_program, wait_for};

const LOGIN: Login = Login { user: "bms", password: "s3cret-for-the-test" };

/// A simulated Daly BMS on TCP (frozen in time, so every poll answers at once).
fn daly(name: &str) -> Simulator {
    Simulator::tcp(
        name,
        &[
            "--protocol",
            "daly",
            "--cells",
            "4",
            "--temperatures",
            "1",
            "--baud",
            "0",
            "--latency-ms",
            "0",
            "--time-scale",
            "0",
        ],
    )
}

/// The config of these tests: the simulator as device `house`, published every second as `client_id` to
/// `broker` in the native layout with discovery, plus `mqtt` lines.
fn config(sim: &Simulator, broker: &str, client_id: &str, mqtt: &str) -> String {
    let device = format!("  - name: house\n    protocol: daly\n    tcp: {}\n", sim.addr.as_deref().unwrap());
    config_yaml(&device, broker, client_id, mqtt)
}

fn plain_url(port: u16) -> String {
    format!("mqtt://127.0.0.1:{port}")
}

/// Wait for a state message of pack 01 and check that it is the pack's JSON with its values.
fn assert_state_published(recorder: &Recorder) {
    let payload = wait_for("a state message of pack 01", Duration::from_secs(10), || {
        recorder.messages().into_iter().find(|m| m.topic == "bms/house/01/state").map(|m| (m.payload, m.retain))
    });
    assert!(!payload.1, "state is not retained");
    let state: Value = serde_json::from_str(&payload.0).unwrap_or_else(|e| panic!("{e}: {}", payload.0));
    assert_eq!(state["pack"], 1, "{state}");
    assert!(state["voltage_volts"].as_f64().is_some_and(|v| v > 1.0), "{state}");
    assert_eq!(state["cells"].as_object().map(serde_json::Map::len), Some(4), "{state}");
}

#[test]
fn mqtt_birth_is_retained_and_a_killed_exporter_leaves_its_will_while_a_stopped_one_says_goodbye() {
    let dir = Scratch::new("mqtt-will");
    let sim = daly("mqtt-will");
    let broker = Mosquitto::plain("will");
    let recorder = broker.recorder(&["bms/#"]);
    let id = client_id("will");

    let mut exporter = Exporter::start(&dir, "crash", &config(&sim, &plain_url(broker.port), &id, ""));
    exporter.wait_connected(true, Duration::from_secs(10));
    broker.wait_log("the exporter's connection", &format!("as {id} (p2, c1, k30)"), Duration::from_secs(5));
    let body = exporter.metrics();
    for name in
        ["bms_mqtt_messages_published_total", "bms_mqtt_publish_bytes_total", "bms_mqtt_connection_errors_total"]
    {
        assert!(sample(&body, name).is_some(), "{name} missing from /metrics:\n{body}");
    }
    assert_eq!(sample(&body, "bms_mqtt_connection_errors_total"), Some(0.0));
    broker.wait_retained("bms/status", "online", Duration::from_secs(5));
    broker.wait_retained("bms/house/availability", "online", Duration::from_secs(5));
    assert_state_published(&recorder);
    let published = exporter.metric("bms_mqtt_messages_published_total").unwrap();
    assert!(published >= 3.0, "birth, availability and state at least: {published}");
    assert!(exporter.metric("bms_mqtt_publish_bytes_total").unwrap() > published);
    assert!(exporter.metric("bms_mqtt_last_publish_timestamp_seconds").is_some());

    // kill -9: the socket closes without DISCONNECT, so the broker publishes the will at once.
    exporter.kill();
    broker.wait_log(
        "the broker to see the connection drop without a goodbye",
        &format!("Client {id} closed its connection."),
        Duration::from_secs(5),
    );
    broker.wait_retained("bms/status", "offline", Duration::from_secs(5));

    // A stopped exporter (SIGTERM) says offline itself and disconnects cleanly, within about a second.
    let id = client_id("goodbye");
    let mut exporter = Exporter::start(&dir, "goodbye", &config(&sim, &plain_url(broker.port), &id, ""));
    exporter.wait_connected(true, Duration::from_secs(10));
    broker.wait_retained("bms/status", "online", Duration::from_secs(5));
    let stopping = Instant::now();
    let status = exporter.terminate();
    assert!(status.success(), "SIGTERM ends the exporter with 0: {status}\n{}", exporter.log());
    broker.wait_log("a clean DISCONNECT", &format!("Client {id} disconnected."), Duration::from_secs(1));
    assert!(stopping.elapsed() < Duration::from_secs(3), "the goodbye took {:?}", stopping.elapsed());
    assert_eq!(broker.retained_payload("bms/status").as_deref(), Some("offline"));
    assert!(exporter.log().contains("disconnected from the MQTT broker"), "{}", exporter.log());
}

#[test]
fn mqtt_a_broker_that_is_down_at_start_up_is_retried_with_backoff_while_metrics_are_served() {
    let dir = Scratch::new("mqtt-down");
    let sim = daly("mqtt-down");
    let port = free_port();
    let id = client_id("down");
    let exporter = Exporter::start(&dir, "exporter", &config(&sim, &plain_url(port), &id, ""));

    // /metrics answers with the device while the broker is away; the publisher keeps trying (1 s, 2 s, …).
    exporter.wait_up("house", true, Duration::from_secs(10));
    wait_for("two failed connection attempts", Duration::from_secs(10), || {
        (exporter.metric("bms_mqtt_connection_errors_total")? >= 2.0).then_some(())
    });
    assert_eq!(exporter.metric("bms_mqtt_connected"), Some(0.0));
    assert_eq!(exporter.metric("bms_mqtt_messages_published_total"), Some(0.0), "nothing is queued while away");
    assert!(exporter.metric("bms_mqtt_last_publish_timestamp_seconds").is_none());
    let log = exporter.log();
    assert_eq!(log.matches("cannot connect to the MQTT broker").count(), 1, "one warning per outage:\n{log}");
    assert!(log.contains("WARN") && log.contains(&plain_url(port)), "{log}");

    let broker = Mosquitto::start("down", Some(port), "", "allow_anonymous true", None);
    let recorder = broker.recorder(&["bms/#"]);
    // The next attempt comes within the backoff reached so far (at most 8 s at this point).
    exporter.wait_connected(true, Duration::from_secs(20));
    broker.wait_log("the exporter's connection", &format!("as {id}"), Duration::from_secs(5));
    assert!(exporter.log().contains("connected to the MQTT broker"), "{}", exporter.log());
    broker.wait_retained("bms/status", "online", Duration::from_secs(5));
    assert_state_published(&recorder);
    assert!(exporter.metric("bms_mqtt_messages_published_total").unwrap() > 0.0);
}

#[test]
fn mqtt_a_restarted_broker_gets_the_birth_again_and_metrics_never_stop() {
    let dir = Scratch::new("mqtt-restart");
    let sim = daly("mqtt-restart");
    let mut broker = Mosquitto::plain("restart");
    let id = client_id("restart");
    let exporter = Exporter::start(&dir, "exporter", &config(&sim, &plain_url(broker.port), &id, ""));
    exporter.wait_connected(true, Duration::from_secs(10));
    broker.wait_retained("bms/status", "online", Duration::from_secs(5));

    broker.kill();
    exporter.wait_connected(false, Duration::from_secs(10));
    assert!(exporter.metric("bms_mqtt_connection_errors_total").unwrap() >= 1.0);
    assert_eq!(exporter.metric("bms_up{device=\"house\"}"), Some(1.0), "the device is still served");
    std::thread::sleep(Duration::from_secs(2));
    let log = exporter.log();
    assert_eq!(log.matches("MQTT broker connection lost").count(), 1, "one warning per outage:\n{log}");
    assert!(!log.contains("connection is back"), "{log}");

    // A new broker on the same port knows nothing: the exporter must connect and send its birth again.
    broker.restart();
    assert_eq!(broker.retained_payload("bms/status"), None);
    let recorder = broker.recorder(&["bms/#"]);
    exporter.wait_connected(true, Duration::from_secs(20));
    broker.wait_log("the reconnection", &format!("as {id}"), Duration::from_secs(5));
    assert!(exporter.log().contains("MQTT broker connection is back"), "{}", exporter.log());
    assert_eq!(exporter.metric("bms_up{device=\"house\"}"), Some(1.0));
    broker.wait_retained("bms/status", "online", Duration::from_secs(5));
    broker.wait_retained("bms/house/availability", "online", Duration::from_secs(5));
    assert_state_published(&recorder);
}

#[test]
fn mqtt_discovery_is_sent_once_per_connection_and_again_when_home_assistant_comes_online() {
    let dir = Scratch::new("mqtt-discovery");
    let sim = daly("mqtt-discovery");
    let broker = Mosquitto::plain("discovery");
    let recorder = broker.recorder(&["homeassistant/#"]);
    let exporter = Exporter::start(&dir, "exporter", &config(&sim, &plain_url(broker.port), &client_id("disc"), ""));
    exporter.wait_connected(true, Duration::from_secs(10));
    let configs = || recorder.messages().iter().filter(|m| m.topic.ends_with("/config")).count();
    // The configs of the 4-cell pack: voltage, current, every cell, the MOSFETs… (far more than a dozen). The
    // energy totals join once two polls have been integrated, so the count settles a round or two later.
    let first = wait_for("the discovery configs to settle", Duration::from_secs(15), || {
        let before = configs();
        std::thread::sleep(Duration::from_millis(2500));
        Some(before).filter(|&n| n > 12 && n == configs())
    });
    // One connection, one discovery: a config comes again only when its content changed (the energy totals).
    let mut seen = std::collections::HashSet::new();
    for message in recorder.messages().into_iter().filter(|m| m.topic.ends_with("/config")) {
        let topic = message.topic.clone();
        assert!(seen.insert((message.topic, message.payload)), "{topic} sent twice unchanged\n{}", exporter.log());
    }
    // Several intervals later nothing has changed, so nothing was sent again.
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(configs(), first, "{:?}", recorder.messages());

    // Home Assistant's birth message: every config again.
    broker.publish("homeassistant/status", "online", false);
    let deadline = Instant::now() + Duration::from_secs(5);
    while configs() < 2 * first && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    let topics: Vec<String> = recorder.messages().into_iter().map(|m| m.topic).collect();
    assert_eq!(configs(), 2 * first, "every config once more:\n{topics:#?}\n{}", exporter.log());
    assert!(exporter.log().contains("Home Assistant is online"), "{}", exporter.log());
}

#[test]
fn mqtt_user_name_and_password_are_sent_and_a_refusal_is_logged_with_its_reason() {
    let dir = Scratch::new("mqtt-auth");
    let sim = daly("mqtt-auth");
    let passwords = dir.path("passwd");
    let status = Process::new(required_program("mosquitto_passwd", "mosquitto"))
        .args(["-c", "-b"])
        .arg(&passwords)
        .args([LOGIN.user, LOGIN.password])
        .status()
        .unwrap();
    assert!(status.success(), "mosquitto_passwd failed");
    let global = format!("allow_anonymous false\npassword_file {}", passwords.display());
    let broker = Mosquitto::start("auth", None, "", &global, Some(LOGIN));
    let url = plain_url(broker.port);
    let login = |file: &Path| format!("  username: {}\n  password_file: {}\n", LOGIN.user, yaml_path(file));

    let id = client_id("auth");
    let right = dir.write("right.password", &format!("{}\n", LOGIN.password));
    let exporter = Exporter::start(&dir, "right", &config(&sim, &url, &id, &login(&right)));
    exporter.wait_connected(true, Duration::from_secs(10));
    broker.wait_log("the login", &format!("as {id} (p2, c1, k30, u'{}')", LOGIN.user), Duration::from_secs(5));
    broker.wait_retained("bms/status", "online", Duration::from_secs(5));
    drop(exporter);

    let wrong = dir.write("wrong.password", "not-the-password\n");
    let exporter = Exporter::start(&dir, "wrong", &config(&sim, &url, &client_id("wrong"), &login(&wrong)));
    wait_for("refused connections counted", Duration::from_secs(10), || {
        (exporter.metric("bms_mqtt_connection_errors_total")? >= 2.0).then_some(())
    });
    assert_eq!(exporter.metric("bms_mqtt_connected"), Some(0.0));
    let log = exporter.log();
    assert!(log.contains("the broker refused the connection: not authorized"), "{log}");
    assert_eq!(log.matches("the broker refused the connection").count(), 1, "one warning per outage:\n{log}");
    // mosquitto refuses before it has taken the client id.
    broker.wait_log("the refusal", "Client <unknown> disconnected, not authorised.", Duration::from_secs(2));
    drop(exporter);

    // A password file that cannot be read stops the start with a clear error, not a silent publisher.
    let missing = dir.path("missing.password");
    let mut exporter = Exporter::spawn(&dir, "nofile", &config(&sim, &url, &client_id("nofile"), &login(&missing)));
    let status = exporter.wait_exit(Duration::from_secs(10));
    let log = exporter.log();
    assert!(!status.success(), "{log}");
    assert!(log.contains("reading the MQTT password file") && log.contains("missing.password"), "{log}");
    assert!(!log.contains("publishing to MQTT"), "{log}");
}

/// A CA (`NAME-ca.pem`, `NAME-ca.key`) made by the openssl CLI.
fn ca(dir: &Path, name: &str) {
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            &format!("{name}-ca.key"),
            "-out",
            &format!("{name}-ca.pem"),
            "-days",
            "2",
            "-subj",
            &format!("/CN=bms test {name} CA"),
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
        ],
    );
}

/// A certificate `NAME.pem` with key `NAME.key`, signed by the CA `CA`, with the extensions `ext`.
fn leaf(dir: &Path, name: &str, ca: &str, ext: &str) {
    openssl(
        dir,
        &[
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            &format!("{name}.key"),
            "-out",
            &format!("{name}.csr"),
            "-subj",
            &format!("/CN={name}"),
        ],
    );
    std::fs::write(dir.join(format!("{name}.ext")), ext).unwrap();
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            &format!("{name}.csr"),
            "-CA",
            &format!("{ca}-ca.pem"),
            "-CAkey",
            &format!("{ca}-ca.key"),
            "-CAcreateserial",
            "-out",
            &format!("{name}.pem"),
            "-days",
            "2",
            "-extfile",
            &format!("{name}.ext"),
        ],
    );
}

fn openssl(dir: &Path, args: &[&str]) {
    let openssl = required_program("openssl", "openssl");
    let out = Process::new(openssl).args(args).current_dir(dir).stdin(Stdio::null()).output().unwrap();
    assert!(out.status.success(), "openssl {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn mqtt_over_tls_verifies_the_broker_against_the_ca_and_presents_a_client_certificate() {
    let dir = Scratch::new("mqtt-tls");
    let sim = daly("mqtt-tls");
    ca(&dir.0, "broker");
    ca(&dir.0, "other");
    leaf(
        &dir.0,
        "server",
        "broker",
        "basicConstraints=CA:FALSE\nsubjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n",
    );
    leaf(&dir.0, "client", "broker", "basicConstraints=CA:FALSE\nextendedKeyUsage=clientAuth\n");
    let tls_files = format!(
        "cafile {}\ncertfile {}\nkeyfile {}",
        dir.path("broker-ca.pem").display(),
        dir.path("server.pem").display(),
        dir.path("server.key").display()
    );
    // mqtts:// with the CA that signs the broker's certificate, plus `extra` lines.
    let tls = |name: &str, port: u16, ca: &str, extra: &str| {
        let id = client_id(name);
        let ca_file = format!("  ca_file: {}\n{extra}", yaml_path(&dir.path(&format!("{ca}-ca.pem"))));
        (config(&sim, &format!("mqtts://127.0.0.1:{port}"), &id, &ca_file), id)
    };

    let broker = Mosquitto::start("tls", None, &tls_files, "allow_anonymous true", None);
    let (yaml, id) = tls("tls", broker.port, "broker", "");
    let exporter = Exporter::start(&dir, "tls", &yaml);
    exporter.wait_connected(true, Duration::from_secs(10));
    broker.wait_log("the TLS connection", &format!("as {id}"), Duration::from_secs(5));
    broker.wait_retained("bms/status", "online", Duration::from_secs(5));
    drop(exporter);

    // A broker certificate from a CA the exporter does not trust is refused.
    let exporter = Exporter::start(&dir, "untrusted", &tls("untrusted", broker.port, "other", "").0);
    wait_for("refused TLS handshakes counted", Duration::from_secs(10), || {
        (exporter.metric("bms_mqtt_connection_errors_total")? >= 2.0).then_some(())
    });
    assert_eq!(exporter.metric("bms_mqtt_connected"), Some(0.0));
    let log = exporter.log();
    assert!(log.contains("certificate") && log.contains("UnknownIssuer"), "{log}");
    assert_eq!(log.matches("cannot connect to the MQTT broker").count(), 1, "one warning per outage:\n{log}");
    drop(exporter);
    drop(broker);

    // A broker that requires a client certificate: with one the exporter gets in, without one it does not.
    let strict = format!("{tls_files}\nrequire_certificate true");
    let broker = Mosquitto::start("tls-strict", None, &strict, "allow_anonymous true", None);
    let client = format!(
        "  cert_file: {}\n  key_file: {}\n",
        yaml_path(&dir.path("client.pem")),
        yaml_path(&dir.path("client.key"))
    );
    let (yaml, id) = tls("client-cert", broker.port, "broker", &client);
    let exporter = Exporter::start(&dir, "client-cert", &yaml);
    exporter.wait_connected(true, Duration::from_secs(10));
    broker.wait_log("the connection with a client certificate", &format!("as {id}"), Duration::from_secs(5));
    broker.wait_retained("bms/status", "online", Duration::from_secs(5));
    drop(exporter);
    let exporter = Exporter::start(&dir, "no-client-cert", &tls("no-client-cert", broker.port, "broker", "").0);
    wait_for("connections without a client certificate refused", Duration::from_secs(10), || {
        (exporter.metric("bms_mqtt_connection_errors_total")? >= 1.0).then_some(())
    });
    assert_eq!(exporter.metric("bms_mqtt_connected"), Some(0.0));
}
