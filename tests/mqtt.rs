//! The MQTT publisher against a real broker (Debian `mosquitto`, a fresh one per test on a free loopback port):
//! birth and last will, a broker that is down at start-up or restarts, user name and password, TLS with a CA and
//! with a client certificate. `/metrics` must answer throughout, with `bms_mqtt_*` saying what happened.
//!
//! The exporter runs in-process here (a simulator → the library's scraper → the publisher, and the same router
//! and server the binary uses), each on a thread of its own whose log lines are kept: its connection settings
//! are an `MqttConfig` built by hand until the `mqtt:` block of the configuration file is parsed. "kill -9" is the
//! runtime dropped at once: every socket closes without an MQTT DISCONNECT, which mosquitto treats as a lost
//! client and answers with the will at once (checked below through its log).
//!
//! Every broker also listens on a second, plain port for the test's own observer (`mosquitto_sub`).

use std::io::{BufRead as _, BufReader};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command as Process, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bms_exporter::config::mqtt::{Broker as BrokerAddress, Discovery, Layout, MqttConfig, MqttTls};
use bms_exporter::mqtt::{self, MqttStats, publisher};
use bms_exporter::scrape::{Freshness, Scraper};
use bms_exporter::server;

use crate::util::{Killed, Scratch, Simulator, free_port, http_get, required_program, wait_for};

const USER: &str = "bms";
const PASSWORD: &str = "s3cret-for-the-test";

/// A mosquitto process with a generated config; killed (SIGKILL) on drop.
struct Broker {
    child: Option<Killed>,
    /// A plain port for the test's observer.
    observer_port: u16,
    config: PathBuf,
    log: PathBuf,
    /// `-u USER -P PASSWORD` where anonymous clients are refused.
    observer_auth: Vec<String>,
}

impl Broker {
    /// mosquitto on `port` with `listener_options` (TLS files, `require_certificate`) for that listener and
    /// `global` options (`allow_anonymous`, `password_file`) for both. `user root` keeps a broker started by root
    /// as root, so it can read the test's private keys and password file (without root it changes nothing).
    fn start(dir: &Scratch, name: &str, port: u16, listener_options: &str, global: &str) -> Self {
        let observer_port = free_port();
        let config = dir.write(
            &format!("{name}.conf"),
            &format!(
                "user root\npersistence false\n{global}\nlistener {port} 127.0.0.1\n{listener_options}\n\
                 listener {observer_port} 127.0.0.1\n"
            ),
        );
        let anonymous = !global.contains("allow_anonymous false");
        let observer_auth =
            if anonymous { Vec::new() } else { ["-u", USER, "-P", PASSWORD].map(str::to_owned).to_vec() };
        let mut broker =
            Self { child: None, observer_port, config, log: dir.path(&format!("{name}.log")), observer_auth };
        broker.restart();
        broker
    }

    /// A simple broker: anonymous clients allowed, no TLS.
    fn plain(dir: &Scratch, name: &str, port: u16) -> Self {
        Self::start(dir, name, port, "", "allow_anonymous true")
    }

    /// Start (again) from the same config, on the same ports, with nothing retained; waits until it listens.
    fn restart(&mut self) {
        let mosquitto = required_program("mosquitto", "mosquitto");
        let log = std::fs::File::create(&self.log).unwrap();
        let child = Process::new(mosquitto)
            .arg("-c")
            .arg(&self.config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        let mut child = Killed(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", self.observer_port)).is_err() {
            if let Some(status) = child.0.try_wait().unwrap() {
                panic!("mosquitto exited ({status}):\n{}", self.log());
            }
            assert!(Instant::now() < deadline, "mosquitto did not listen within 10 s:\n{}", self.log());
            std::thread::sleep(Duration::from_millis(50));
        }
        self.child = Some(child);
    }

    /// kill -9 the broker.
    fn kill(&mut self) {
        self.child = None;
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The retained message on `topic` (`None` if there is none), read by a fresh subscriber.
    fn retained(&self, topic: &str) -> Option<String> {
        let sub = required_program("mosquitto_sub", "mosquitto-clients");
        let out = Process::new(sub)
            .args(["-h", "127.0.0.1", "-p", &self.observer_port.to_string(), "-t", topic])
            .args(&self.observer_auth)
            // Retained messages arrive at once; -W ends the wait when there is none.
            .args(["-C", "1", "-W", "1", "-F", "%r %p"])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        text.lines().next().and_then(|l| l.strip_prefix("1 ")).map(str::to_owned)
    }

    /// A subscriber on `filter` that keeps every message as `RETAIN TOPIC PAYLOAD`.
    fn watch(&self, filter: &str) -> Watch {
        let sub = required_program("mosquitto_sub", "mosquitto-clients");
        let mut child = Process::new(sub)
            .args(["-h", "127.0.0.1", "-p", &self.observer_port.to_string(), "-t", filter])
            .args(&self.observer_auth)
            .args(["-F", "%r %t %p"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = BufReader::new(child.stdout.take().unwrap());
        let lines = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&lines);
        std::thread::spawn(move || {
            for line in stdout.lines() {
                let Ok(line) = line else { break };
                sink.lock().unwrap().push(line);
            }
        });
        // Subscribed once the connection shows in the broker's log (mosquitto_sub connects, then subscribes).
        std::thread::sleep(Duration::from_millis(300));
        Watch { _child: Killed(child), lines }
    }

    /// Wait until the broker's log has `text` (its client lines: connected, disconnected, refused).
    fn wait_log(&self, what: &str, text: &str, timeout: Duration) {
        wait_for(&format!("{what} (mosquitto log: {text:?})"), timeout, || self.log().contains(text).then_some(()));
    }
}

/// The lines a `mosquitto_sub` received.
struct Watch {
    _child: Killed,
    lines: Arc<Mutex<Vec<String>>>,
}

impl Watch {
    fn lines(&self) -> Vec<String> {
        self.lines.lock().unwrap().clone()
    }
}

/// Whether the native layout (another branch) has landed: until it has, birth, will, state and discovery are
/// empty, so only the connection itself can be observed and the message checks below are skipped.
fn layout_landed(config: &MqttConfig) -> bool {
    let landed = mqtt::birth(config).is_some();
    if !landed {
        eprintln!("the native layout publishes nothing yet: checking the connection only");
    }
    landed
}

/// A unique client id per exporter, so the broker's log lines can be told apart.
fn client_id(name: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    format!("bms-test-{name}-{}-{}", std::process::id(), N.fetch_add(1, Ordering::Relaxed))
}

/// The `mqtt:` settings of a test: a plain broker at `port`, the native layout, discovery on, 1 s interval.
fn mqtt_config(port: u16, name: &str) -> MqttConfig {
    MqttConfig {
        broker: BrokerAddress { tls: false, host: "127.0.0.1".to_owned(), port },
        client_id: client_id(name),
        username: None,
        password_file: None,
        tls: MqttTls::default(),
        topic_prefix: "bms".to_owned(),
        interval: Duration::from_secs(1),
        qos: 1,
        layout: Layout::Native,
        discovery: Discovery { enabled: true, prefix: "homeassistant".to_owned() },
        control: false,
        zero_pad_number_cells: 0,
        zero_pad_number_packs: 0,
    }
}

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

/// How an in-process exporter ends.
enum End {
    /// SIGTERM: the publisher says goodbye.
    Graceful,
    /// kill -9: every task and socket dropped at once.
    Crash,
}

/// The exporter in-process: the simulator's device behind a scraper, the publisher and `/metrics` on a free
/// port, on a thread with a current-thread runtime whose log lines are kept.
struct Exporter {
    addr: String,
    logs: Arc<Mutex<Vec<u8>>>,
    end: Option<tokio::sync::oneshot::Sender<End>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// Log lines into a shared buffer.
struct Sink(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Sink {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Exporter {
    fn start(dir: &Scratch, simulator: &Simulator, mqtt: MqttConfig) -> Self {
        let config = dir.write(
            "bms.yaml",
            &format!(
                "defaults:\n  timeout: 300ms\n  retries: 1\n  max_age: 500ms\n  stale_after: 10s\n\
                 devices:\n  - name: house\n    protocol: daly\n    tcp: {}\n",
                simulator.addr.as_deref().unwrap()
            ),
        );
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let logs = Arc::new(Mutex::new(Vec::new()));
        let (end_tx, end_rx) = tokio::sync::oneshot::channel();
        let (started_tx, started_rx) = std::sync::mpsc::channel();
        let sink = Arc::clone(&logs);
        let thread = std::thread::spawn(move || {
            let subscriber = tracing_subscriber::fmt()
                .with_writer(move || Sink(Arc::clone(&sink)))
                .with_ansi(false)
                .with_max_level(tracing::Level::INFO)
                .finish();
            let _guard = tracing::subscriber::set_default(subscriber);
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            runtime.block_on(async move {
                let config = bms_exporter::config::load(&config).unwrap();
                let freshness =
                    Freshness { max_age: config.defaults.max_age, stale_after: config.defaults.stale_after };
                let scraper = Arc::new(Scraper::spawn(config.buses(), freshness));
                scraper.warm_up();
                let stats = Arc::new(MqttStats::default());
                let started = publisher::spawn(mqtt, Arc::clone(&scraper), Arc::clone(&stats));
                let publisher = match started {
                    Ok(publisher) => publisher,
                    Err(error) => {
                        started_tx.send(Err(format!("{error:#}"))).unwrap();
                        return;
                    }
                };
                listener.set_nonblocking(true).unwrap();
                let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                let app = server::routes::router(scraper, "/metrics", Some(stats));
                let limits = server::Limits { max_connections: 16, header_read_timeout: Duration::from_secs(5) };
                tokio::spawn(server::serve_with(listener, app, None, limits, std::future::pending()));
                started_tx.send(Ok(())).unwrap();
                match end_rx.await {
                    Ok(End::Graceful) => publisher.shutdown().await,
                    // Return without polling anything again: the runtime's drop closes every socket.
                    Ok(End::Crash) | Err(_) => {}
                }
            });
            drop(runtime);
        });
        if let Err(error) = started_rx.recv().unwrap() {
            panic!("the publisher did not start: {error}");
        }
        Self { addr, logs, end: Some(end_tx), thread: Some(thread) }
    }

    /// The `/metrics` body; fails if it does not answer.
    fn metrics(&self) -> String {
        let response = http_get(&self.addr, "/metrics", &[]).expect("/metrics did not answer");
        assert_eq!(response.status, 200, "{}", response.body);
        response.body
    }

    /// The value of the label-less sample `name` in `/metrics`.
    fn metric(&self, name: &str) -> Option<f64> {
        sample(&self.metrics(), name)
    }

    fn log(&self) -> String {
        String::from_utf8_lossy(&self.logs.lock().unwrap()).into_owned()
    }

    /// Wait until `bms_mqtt_connected` is `want`.
    fn wait_connected(&self, want: bool, timeout: Duration) {
        let value = if want { 1.0 } else { 0.0 };
        let what = format!("bms_mqtt_connected {value}");
        let deadline = Instant::now() + timeout;
        loop {
            if self.metric("bms_mqtt_connected") == Some(value) {
                return;
            }
            assert!(Instant::now() < deadline, "timed out after {timeout:?} waiting for {what}; log:\n{}", self.log());
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn stop(mut self, end: End) {
        if let Some(tx) = self.end.take() {
            let _ = tx.send(end);
        }
        if let Some(thread) = self.thread.take() {
            thread.join().unwrap();
        }
    }
}

impl Drop for Exporter {
    fn drop(&mut self) {
        if let Some(tx) = self.end.take() {
            let _ = tx.send(End::Crash);
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// The value of the label-less sample `name` in an OpenMetrics body.
fn sample(body: &str, name: &str) -> Option<f64> {
    body.lines().find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
}

#[test]
fn mqtt_birth_is_retained_and_a_killed_exporter_leaves_its_will_while_a_stopped_one_says_goodbye() {
    let dir = Scratch::new("mqtt-will");
    let sim = daly("mqtt-will");
    let port = free_port();
    let broker = Broker::plain(&dir, "broker", port);
    let watch = broker.watch("bms/#");
    let config = mqtt_config(port, "will");
    let landed = layout_landed(&config);

    let exporter = Exporter::start(&dir, &sim, config.clone());
    exporter.wait_connected(true, Duration::from_secs(10));
    broker.wait_log(
        "the exporter's connection",
        &format!("as {} (p2, c1, k30)", config.client_id),
        Duration::from_secs(5),
    );
    let body = exporter.metrics();
    for name in
        ["bms_mqtt_messages_published_total", "bms_mqtt_publish_bytes_total", "bms_mqtt_connection_errors_total"]
    {
        assert!(sample(&body, name).is_some(), "{name} missing from /metrics:\n{body}");
    }
    assert_eq!(sample(&body, "bms_mqtt_connection_errors_total"), Some(0.0));
    if landed {
        wait_for("the retained birth", Duration::from_secs(5), || {
            (broker.retained("bms/status")? == "online").then_some(())
        });
        wait_for("a state message of pack 01", Duration::from_secs(5), || {
            watch.lines().iter().any(|l| l.starts_with("0 bms/house/01/state {")).then_some(())
        });
        let published = exporter.metric("bms_mqtt_messages_published_total").unwrap();
        assert!(published >= 2.0, "{published}");
        assert!(exporter.metric("bms_mqtt_publish_bytes_total").unwrap() > published);
        assert!(exporter.metric("bms_mqtt_last_publish_timestamp_seconds").is_some());
    }

    // kill -9: the socket closes without DISCONNECT, so the broker publishes the will at once.
    exporter.stop(End::Crash);
    broker.wait_log(
        "the broker to see the connection drop without a goodbye",
        &format!("Client {} closed its connection.", config.client_id),
        Duration::from_secs(5),
    );
    if landed {
        wait_for("the will: status offline, retained", Duration::from_secs(5), || {
            (broker.retained("bms/status")? == "offline").then_some(())
        });
    }

    // A stopped exporter (SIGTERM) says offline itself and disconnects cleanly, within about a second.
    let config = mqtt_config(port, "goodbye");
    let exporter = Exporter::start(&dir, &sim, config.clone());
    exporter.wait_connected(true, Duration::from_secs(10));
    if landed {
        wait_for("the birth again", Duration::from_secs(5), || {
            (broker.retained("bms/status")? == "online").then_some(())
        });
    }
    let stopping = Instant::now();
    exporter.stop(End::Graceful);
    assert!(stopping.elapsed() < Duration::from_secs(2), "the goodbye took {:?}", stopping.elapsed());
    broker.wait_log(
        "a clean DISCONNECT",
        &format!("Client {} disconnected.", config.client_id),
        Duration::from_secs(2),
    );
    if landed {
        assert_eq!(broker.retained("bms/status").as_deref(), Some("offline"));
    }
}

#[test]
fn mqtt_a_broker_that_is_down_at_start_up_is_retried_with_backoff_while_metrics_are_served() {
    let dir = Scratch::new("mqtt-down");
    let sim = daly("mqtt-down");
    let port = free_port();
    let config = mqtt_config(port, "down");
    let landed = layout_landed(&config);
    let exporter = Exporter::start(&dir, &sim, config.clone());

    // /metrics answers with the device while the broker is away; the publisher keeps trying (1 s, 2 s, …).
    wait_for("the device up in /metrics", Duration::from_secs(10), || {
        exporter.metrics().contains("bms_up{device=\"house\"} 1").then_some(())
    });
    wait_for("two failed connection attempts", Duration::from_secs(10), || {
        (exporter.metric("bms_mqtt_connection_errors_total")? >= 2.0).then_some(())
    });
    assert_eq!(exporter.metric("bms_mqtt_connected"), Some(0.0));
    assert_eq!(exporter.metric("bms_mqtt_messages_published_total"), Some(0.0), "nothing is queued while away");
    assert!(exporter.metric("bms_mqtt_last_publish_timestamp_seconds").is_none());
    let log = exporter.log();
    assert_eq!(log.matches("cannot connect to the MQTT broker").count(), 1, "one warning per outage:\n{log}");
    assert!(log.contains("WARN") && log.contains(&format!("mqtt://127.0.0.1:{port}")), "{log}");

    let broker = Broker::plain(&dir, "broker", port);
    let watch = broker.watch("bms/#");
    // The next attempt comes within the backoff reached so far (at most 8 s at this point).
    exporter.wait_connected(true, Duration::from_secs(20));
    broker.wait_log("the exporter's connection", &format!("as {}", config.client_id), Duration::from_secs(5));
    assert!(exporter.log().contains("connected to the MQTT broker"), "{}", exporter.log());
    if landed {
        wait_for("the retained birth", Duration::from_secs(5), || {
            (broker.retained("bms/status")? == "online").then_some(())
        });
        wait_for("state published", Duration::from_secs(5), || {
            watch.lines().iter().any(|l| l.contains(" bms/house/01/state ")).then_some(())
        });
        assert!(exporter.metric("bms_mqtt_messages_published_total").unwrap() > 0.0);
    }
}

#[test]
fn mqtt_a_restarted_broker_gets_the_birth_again_and_metrics_never_stop() {
    let dir = Scratch::new("mqtt-restart");
    let sim = daly("mqtt-restart");
    let port = free_port();
    let mut broker = Broker::plain(&dir, "broker", port);
    let config = mqtt_config(port, "restart");
    let landed = layout_landed(&config);
    let exporter = Exporter::start(&dir, &sim, config.clone());
    exporter.wait_connected(true, Duration::from_secs(10));
    if landed {
        wait_for("the retained birth", Duration::from_secs(5), || {
            (broker.retained("bms/status")? == "online").then_some(())
        });
    }

    broker.kill();
    exporter.wait_connected(false, Duration::from_secs(10));
    assert!(exporter.metric("bms_mqtt_connection_errors_total").unwrap() >= 1.0);
    assert!(exporter.metrics().contains("bms_up{device=\"house\"} 1"), "the device is still served");
    std::thread::sleep(Duration::from_secs(2));
    let log = exporter.log();
    assert_eq!(log.matches("MQTT broker connection lost").count(), 1, "one warning per outage:\n{log}");
    assert!(!log.contains("connection is back"), "{log}");

    // A new broker on the same port knows nothing: the exporter must connect and send its birth again.
    broker.restart();
    assert_eq!(broker.retained("bms/status"), None);
    exporter.wait_connected(true, Duration::from_secs(20));
    broker.wait_log("the reconnection", &format!("as {}", config.client_id), Duration::from_secs(5));
    assert!(exporter.log().contains("MQTT broker connection is back"), "{}", exporter.log());
    assert!(exporter.metrics().contains("bms_up{device=\"house\"} 1"));
    if landed {
        wait_for("the birth on the new broker", Duration::from_secs(5), || {
            (broker.retained("bms/status")? == "online").then_some(())
        });
    }
}

#[test]
fn mqtt_discovery_is_sent_once_per_connection_and_again_when_home_assistant_comes_online() {
    let dir = Scratch::new("mqtt-discovery");
    let sim = daly("mqtt-discovery");
    let port = free_port();
    let broker = Broker::plain(&dir, "broker", port);
    let watch = broker.watch("homeassistant/#");
    let config = mqtt_config(port, "discovery");
    let landed = layout_landed(&config);
    let exporter = Exporter::start(&dir, &sim, config);
    exporter.wait_connected(true, Duration::from_secs(10));
    if !landed {
        return;
    }
    let configs = || watch.lines().iter().filter(|l| l.contains("/config ")).count();
    let first = wait_for("the discovery configs", Duration::from_secs(10), || Some(configs()).filter(|&n| n > 0));
    // Several intervals later nothing has changed, so nothing was sent again.
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(configs(), first, "{:?}", watch.lines());

    // Home Assistant's birth message: every config again.
    let publish = Process::new(required_program("mosquitto_pub", "mosquitto-clients"))
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &broker.observer_port.to_string(),
            "-t",
            "homeassistant/status",
            "-m",
            "online",
        ])
        .status()
        .unwrap();
    assert!(publish.success());
    wait_for("the discovery configs again", Duration::from_secs(5), || (configs() == 2 * first).then_some(()));
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
        .args([USER, PASSWORD])
        .status()
        .unwrap();
    assert!(status.success(), "mosquitto_passwd failed");
    let port = free_port();
    let global = format!("allow_anonymous false\npassword_file {}", passwords.display());
    let broker = Broker::start(&dir, "broker", port, "", &global);

    let mut config = mqtt_config(port, "auth");
    config.username = Some(USER.to_owned());
    config.password_file = Some(dir.write("right.password", &format!("{PASSWORD}\n")));
    let landed = layout_landed(&config);
    let exporter = Exporter::start(&dir, &sim, config.clone());
    exporter.wait_connected(true, Duration::from_secs(10));
    broker.wait_log("the login", &format!("as {} (p2, c1, k30, u'{USER}')", config.client_id), Duration::from_secs(5));
    if landed {
        wait_for("the retained birth", Duration::from_secs(5), || {
            (broker.retained("bms/status")? == "online").then_some(())
        });
    }
    drop(exporter);

    let mut config = mqtt_config(port, "wrong");
    config.username = Some(USER.to_owned());
    config.password_file = Some(dir.write("wrong.password", "not-the-password\n"));
    let exporter = Exporter::start(&dir, &sim, config.clone());
    wait_for("refused connections counted", Duration::from_secs(10), || {
        (exporter.metric("bms_mqtt_connection_errors_total")? >= 2.0).then_some(())
    });
    assert_eq!(exporter.metric("bms_mqtt_connected"), Some(0.0));
    let log = exporter.log();
    assert!(log.contains("the broker refused the connection: not authorized"), "{log}");
    assert_eq!(log.matches("the broker refused the connection").count(), 1, "one warning per outage:\n{log}");
    // mosquitto refuses before it has taken the client id.
    broker.wait_log("the refusal", "Client <unknown> disconnected, not authorised.", Duration::from_secs(2));

    // A password file that cannot be read stops the start with a clear error, not a silent publisher.
    let mut config = mqtt_config(port, "nofile");
    config.username = Some(USER.to_owned());
    config.password_file = Some(dir.path("missing.password"));
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let error = runtime.block_on(async {
        let scraper =
            Arc::new(Scraper::new(Vec::new(), Freshness { max_age: Duration::ZERO, stale_after: Duration::ZERO }));
        publisher::spawn(config, scraper, Arc::default()).unwrap_err()
    });
    let text = format!("{error:#}");
    assert!(text.contains("reading the MQTT password file") && text.contains("missing.password"), "{text}");
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
    let tls = |name: &str, port: u16, ca: &str| {
        let mut config = mqtt_config(port, name);
        config.broker.tls = true;
        config.tls.ca_file = Some(dir.path(&format!("{ca}-ca.pem")));
        config
    };

    let port = free_port();
    let broker = Broker::start(&dir, "broker", port, &tls_files, "allow_anonymous true");
    let config = tls("tls", port, "broker");
    let landed = layout_landed(&config);
    let exporter = Exporter::start(&dir, &sim, config.clone());
    exporter.wait_connected(true, Duration::from_secs(10));
    broker.wait_log("the TLS connection", &format!("as {}", config.client_id), Duration::from_secs(5));
    if landed {
        wait_for("the retained birth", Duration::from_secs(5), || {
            (broker.retained("bms/status")? == "online").then_some(())
        });
    }
    drop(exporter);

    // A broker certificate from a CA the exporter does not trust is refused.
    let exporter = Exporter::start(&dir, &sim, tls("untrusted", port, "other"));
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
    let port = free_port();
    let broker =
        Broker::start(&dir, "strict", port, &format!("{tls_files}\nrequire_certificate true"), "allow_anonymous true");
    let mut config = tls("client-cert", port, "broker");
    config.tls.cert_file = Some(dir.path("client.pem"));
    config.tls.key_file = Some(dir.path("client.key"));
    let exporter = Exporter::start(&dir, &sim, config.clone());
    exporter.wait_connected(true, Duration::from_secs(10));
    broker.wait_log(
        "the connection with a client certificate",
        &format!("as {}", config.client_id),
        Duration::from_secs(5),
    );
    if landed {
        wait_for("the retained birth", Duration::from_secs(5), || {
            (broker.retained("bms/status")? == "online").then_some(())
        });
    }
    drop(exporter);
    let exporter = Exporter::start(&dir, &sim, tls("no-client-cert", port, "broker"));
    wait_for("connections without a client certificate refused", Duration::from_secs(10), || {
        (exporter.metric("bms_mqtt_connection_errors_total")? >= 1.0).then_some(())
    });
    assert_eq!(exporter.metric("bms_mqtt_connected"), Some(0.0));
}
