//! What the MQTT tests (tests/mqtt*.rs) share: a real mosquitto on loopback ports ([`Mosquitto`], a fresh one per
//! test so retained messages never leak between tests), a subscriber that records what arrives ([`Recorder`]),
//! and the exporter binary serving a configuration with an `mqtt:` block ([`Exporter`]).
//!
//! Every broker has a second, plain listener for the test's own clients ([`Mosquitto::observer_port`]), so a test
//! of TLS or client certificates observes the messages without being a TLS client itself.

#![allow(dead_code)] // each MQTT test module uses a different subset

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command as Process, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use rumqttc::{Client, Event, MqttOptions, Packet, QoS};

use crate::exporter::{exporter, wait_ready};
use crate::util::{Killed, Scratch, free_port, http_get, required_program, wait_for};

/// A user name and password a broker accepts.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Login {
    pub user: &'static str,
    pub password: &'static str,
}

/// A mosquitto process with a generated config, killed (SIGKILL) on drop.
pub(crate) struct Mosquitto {
    /// The port the exporter connects to (TLS where the listener options say so).
    pub port: u16,
    /// A plain port for the test's own clients.
    pub observer_port: u16,
    /// Its config and log; test files (certificates, password files) may go here too.
    pub dir: Scratch,
    login: Option<Login>,
    process: Option<Killed>,
}

impl Mosquitto {
    /// A plain broker on a free port: anonymous clients allowed, no TLS.
    pub fn plain(name: &str) -> Self {
        Self::start(name, None, "", "allow_anonymous true", None)
    }

    /// mosquitto on `port` (a free one if `None`) with `listener_options` (TLS files, `require_certificate`) for
    /// that listener, and `global` options (`allow_anonymous`, `password_file`) for both listeners; the test's
    /// clients log in with `login`. `persistence false` keeps nothing from one start to the next, and `user root`
    /// keeps a broker started by root as root, so it can read the test's keys and password file (without root
    /// it changes nothing). Listening on both ports before this returns.
    pub fn start(name: &str, port: Option<u16>, listener_options: &str, global: &str, login: Option<Login>) -> Self {
        let mut dir = Scratch::new(&format!("mosquitto-{name}"));
        // A port taken by something else between free_port and mosquitto's bind: try others, unless the caller
        // chose the port (then it is a failure).
        for _ in 0..3 {
            let (main, observer_port) = (port.unwrap_or_else(free_port), free_port());
            dir.write(
                "mosquitto.conf",
                &format!(
                    "user root\npersistence false\n{global}\nlistener {main} 127.0.0.1\n{listener_options}\n\
                     listener {observer_port} 127.0.0.1\n"
                ),
            );
            let mut broker = Self { port: main, observer_port, dir, login, process: None };
            match broker.launch() {
                Ok(()) => return broker,
                Err(log) if port.is_some() => panic!("mosquitto could not listen on {main}:\n{log}"),
                Err(_) => dir = broker.take_dir(),
            }
        }
        panic!("mosquitto found its port taken three times")
    }

    /// Start (again) from the same config on the same ports, with nothing retained; waits until it listens.
    pub fn restart(&mut self) {
        if let Err(log) = self.launch() {
            panic!("mosquitto exited on restart:\n{log}");
        }
    }

    /// kill -9 the broker.
    pub fn kill(&mut self) {
        self.process = None;
    }

    /// Spawn mosquitto and wait until both ports accept connections; its log if it exits first.
    fn launch(&mut self) -> Result<(), String> {
        let log = std::fs::File::create(self.dir.path("mosquitto.log")).unwrap();
        let child = Process::new(required_program("mosquitto", "mosquitto"))
            .arg("-c")
            .arg(self.dir.path("mosquitto.conf"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        let mut process = Killed(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        let listening = |port| TcpStream::connect(("127.0.0.1", port)).is_ok();
        while !(listening(self.port) && listening(self.observer_port)) {
            if process.0.try_wait().unwrap().is_some() {
                let log = self.log();
                assert!(log.contains("Address already in use"), "mosquitto exited:\n{log}");
                return Err(log);
            }
            assert!(Instant::now() < deadline, "mosquitto did not listen within 10 s:\n{}", self.log());
            std::thread::sleep(Duration::from_millis(20));
        }
        self.process = Some(process);
        Ok(())
    }

    fn take_dir(self) -> Scratch {
        let Self { dir, .. } = self;
        dir
    }

    /// The broker's log so far (its stderr: connections, disconnections, refusals).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path("mosquitto.log")).unwrap_or_default()
    }

    /// Wait until the broker's log has `text`.
    pub fn wait_log(&self, what: &str, text: &str, timeout: Duration) {
        wait_for(&format!("{what} (mosquitto log: {text:?})"), timeout, || self.log().contains(text).then_some(()));
    }

    /// A subscriber on the observer port to `filters`, recording from its SUBACK on.
    pub fn recorder(&self, filters: &[&str]) -> Recorder {
        Recorder::start(self.observer_port, filters, self.login)
    }

    /// The retained messages under `filters`: what a new subscriber gets first.
    pub fn retained(&self, filters: &[&str]) -> Vec<Received> {
        self.recorder(filters).settle().into_iter().filter(|m| m.retain).collect()
    }

    /// The retained payload on exactly `topic`, if the broker holds one.
    pub fn retained_payload(&self, topic: &str) -> Option<String> {
        self.retained(&[topic]).into_iter().find(|m| m.topic == topic).map(|m| m.payload)
    }

    /// Wait until the broker retains `payload` on `topic`.
    pub fn wait_retained(&self, topic: &str, payload: &str, timeout: Duration) {
        wait_for(&format!("retained {payload:?} on {topic}"), timeout, || {
            (self.retained_payload(topic)? == payload).then_some(())
        });
    }

    /// Publish `payload` on `topic` at QoS 1 from the observer port, and return once the broker has it.
    pub fn publish(&self, topic: &str, payload: &str, retain: bool) {
        let mut command = Process::new(required_program("mosquitto_pub", "mosquitto-clients"));
        command.args(["-h", "127.0.0.1", "-p", &self.observer_port.to_string(), "-q", "1", "-t", topic, "-m", payload]);
        if retain {
            command.arg("-r");
        }
        if let Some(login) = self.login {
            command.args(["-u", login.user, "-P", login.password]);
        }
        let out = command.output().unwrap();
        assert!(out.status.success(), "mosquitto_pub {topic}: {}", String::from_utf8_lossy(&out.stderr));
    }
}

/// One message as a subscriber received it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Received {
    pub topic: String,
    pub payload: String,
    /// Set for a retained message delivered on subscribing, clear for one delivered as it was published.
    pub retain: bool,
}

/// A subscriber recording every message it gets, in arrival order.
pub(crate) struct Recorder {
    client: Client,
    got: Arc<Mutex<Vec<Received>>>,
}

impl Recorder {
    /// Subscribe to `filters` on `port` (at QoS 1, so nothing is lost) and wait for the broker's SUBACKs, so no
    /// message published afterwards is missed. Retained messages arrive first, flagged `retain`.
    pub fn start(port: u16, filters: &[&str], login: Option<Login>) -> Self {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let id = format!("recorder-{}-{}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed));
        let mut options = MqttOptions::new(id, "127.0.0.1", port);
        options.set_max_packet_size(1 << 20, 1 << 20);
        if let Some(login) = login {
            options.set_credentials(login.user, login.password);
        }
        let (client, mut connection) = Client::new(options, 16);
        for filter in filters {
            client.subscribe(*filter, QoS::AtLeastOnce).unwrap();
        }
        let got = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&got);
        let (ready, subscribed) = mpsc::channel();
        std::thread::spawn(move || {
            for event in connection.iter() {
                match event {
                    Ok(Event::Incoming(Packet::SubAck(_))) => {
                        let _ = ready.send(());
                    }
                    Ok(Event::Incoming(Packet::Publish(p))) => sink.lock().unwrap().push(Received {
                        topic: p.topic.clone(),
                        payload: String::from_utf8(p.payload.to_vec()).expect("payloads are UTF-8"),
                        retain: p.retain,
                    }),
                    Ok(_) => {}
                    // Disconnected (the test is done with it) or the broker went away: stop recording.
                    Err(_) => break,
                }
            }
        });
        for _ in filters {
            subscribed.recv_timeout(Duration::from_secs(10)).expect("the recorder's subscription was not acknowledged");
        }
        Self { client, got }
    }

    /// Everything received so far.
    pub fn messages(&self) -> Vec<Received> {
        self.got.lock().unwrap().clone()
    }

    /// Everything received once nothing new has arrived for 300 ms (at most 10 s).
    pub fn settle(&self) -> Vec<Received> {
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut seen = 0;
        loop {
            std::thread::sleep(Duration::from_millis(300));
            let now = self.got.lock().unwrap().len();
            if now == seen || Instant::now() > deadline {
                return self.messages();
            }
            seen = now;
        }
    }

    /// The payload of the latest message on `topic`.
    pub fn last(&self, topic: &str) -> Option<String> {
        self.got.lock().unwrap().iter().rev().find(|m| m.topic == topic).map(|m| m.payload.clone())
    }

    /// How many messages arrived so far.
    pub fn len(&self) -> usize {
        self.got.lock().unwrap().len()
    }

    /// The payload of the first message on `topic` after the first `skip` messages, waiting up to `timeout`.
    pub fn next_after(&self, skip: usize, topic: &str, timeout: Duration) -> String {
        wait_for(&format!("a message on {topic}"), timeout, || {
            let got = self.got.lock().unwrap();
            got.iter().skip(skip).find(|m| m.topic == topic).map(|m| m.payload.clone())
        })
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        let _ = self.client.disconnect();
    }
}

/// A client id unique to this test run, so the broker's log lines of two exporters can be told apart.
pub(crate) fn client_id(name: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    format!("bms-test-{name}-{}-{}", std::process::id(), N.fetch_add(1, Ordering::Relaxed))
}

/// A configuration file: quick polls of `devices` (YAML list items), and an `mqtt:` block publishing every second
/// as `client_id` to `broker`, plus the `mqtt` lines (two-space indented keys such as `  layout: bmspace\n`).
pub(crate) fn config_yaml(devices: &str, broker: &str, client_id: &str, mqtt: &str) -> String {
    format!(
        "defaults:\n  timeout: 300ms\n  retries: 1\n  request_gap: 0ms\n  max_age: 500ms\n  stale_after: 10s\n\
         devices:\n{devices}\
         mqtt:\n  broker: {broker}\n  client_id: {client_id}\n  interval: 1s\n{mqtt}"
    )
}

/// The exporter binary (`serve --config FILE`) on a free loopback port, killed (SIGKILL) on drop.
pub(crate) struct Exporter {
    process: Killed,
    /// `127.0.0.1:PORT` of its web server.
    pub addr: String,
    /// Its config (`bms.yaml`) and log (`exporter.log`, its stderr).
    pub dir: PathBuf,
}

impl Exporter {
    /// Serve `yaml` from `dir/NAME/`; returns once `/-/ready` answers (and fails, with its log, if it exits).
    pub fn start(dir: &Scratch, name: &str, yaml: &str) -> Self {
        let mut exporter = Self::spawn(dir, name, yaml);
        wait_ready(&mut exporter.process, &exporter.addr, &exporter.dir);
        exporter
    }

    /// Serve `yaml` from `dir/NAME/` without waiting for anything.
    pub fn spawn(dir: &Scratch, name: &str, yaml: &str) -> Self {
        let dir = dir.path(name);
        std::fs::create_dir_all(&dir).unwrap();
        let config = dir.join("bms.yaml");
        std::fs::write(&config, yaml).unwrap();
        let addr = format!("127.0.0.1:{}", free_port());
        let args = ["serve", "--config", config.to_str().unwrap(), "--web.listen-address", &addr];
        Self { process: exporter(&dir, &args), addr, dir }
    }

    /// Its exit status, waiting up to `timeout` for it to exit.
    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.process.0.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < deadline, "the exporter did not exit within {timeout:?}:\n{}", self.log());
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// kill -9: every socket closes without an MQTT DISCONNECT.
    pub fn kill(&mut self) {
        let _ = self.process.0.kill();
        let _ = self.process.0.wait();
    }

    /// SIGTERM, as systemd stops it; the exporter's exit status.
    pub fn terminate(&mut self) -> ExitStatus {
        let out = Process::new(required_program("kill", "procps"))
            .args(["-TERM", &self.process.0.id().to_string()])
            .output()
            .unwrap();
        assert!(out.status.success(), "kill -TERM: {}", String::from_utf8_lossy(&out.stderr));
        self.wait_exit(Duration::from_secs(10))
    }

    /// SIGHUP, as `systemctl reload` sends it: the exporter re-reads its configuration file.
    pub fn hangup(&self) {
        let out = Process::new(required_program("kill", "procps"))
            .args(["-HUP", &self.process.0.id().to_string()])
            .output()
            .unwrap();
        assert!(out.status.success(), "kill -HUP: {}", String::from_utf8_lossy(&out.stderr));
    }

    /// Its configuration file, which a reload test rewrites.
    pub fn config_path(&self) -> PathBuf {
        self.dir.join("bms.yaml")
    }

    /// Its log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("exporter.log")).unwrap_or_default()
    }

    /// The `/metrics` body; fails if it does not answer.
    pub fn metrics(&self) -> String {
        let response = http_get(&self.addr, "/metrics", &[]).expect("/metrics did not answer");
        assert_eq!(response.status, 200, "{}", response.body);
        response.body
    }

    /// The value of the sample `series` (a name, with its labels if it has any) in `/metrics`.
    pub fn metric(&self, series: &str) -> Option<f64> {
        sample(&self.metrics(), series)
    }

    /// Wait until `bms_mqtt_connected` is `want`.
    pub fn wait_connected(&self, want: bool, timeout: Duration) {
        let value = if want { 1.0 } else { 0.0 };
        let deadline = Instant::now() + timeout;
        while self.metric("bms_mqtt_connected") != Some(value) {
            assert!(
                Instant::now() < deadline,
                "timed out after {timeout:?} waiting for bms_mqtt_connected {value}; log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Wait until `bms_up` of `device` is `want`.
    pub fn wait_up(&self, device: &str, want: bool, timeout: Duration) {
        let series = format!("bms_up{{device=\"{device}\"}}");
        let value = if want { 1.0 } else { 0.0 };
        wait_for(&format!("{series} {value}"), timeout, || (self.metric(&series)? == value).then_some(()));
    }
}

/// The value of the sample `series` (name and labels exactly as rendered) in an OpenMetrics body.
pub(crate) fn sample(body: &str, series: &str) -> Option<f64> {
    body.lines().find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

/// A path inside `dir` as text, for a YAML value.
pub(crate) fn yaml_path(path: &Path) -> String {
    path.to_str().expect("test paths are UTF-8").to_owned()
}
