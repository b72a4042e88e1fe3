//! Helpers shared by the integration tests: fixture loading, tolerance checks and the simulator process.

#![allow(dead_code)] // each topic module uses a different subset

use std::io::{BufRead as _, BufReader};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command as Process, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bms_exporter::model::{DeviceSnapshot, PackSnapshot};
use serde_json::Value;

/// Path of a file under `tests/fixtures/`.
pub fn fixture(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(rel)
}

/// A shared vector file under `tests/fixtures/vectors/`, parsed as JSON.
pub fn vectors(file: &str) -> Vec<serde_json::Value> {
    let path = fixture(&format!("vectors/{file}"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Assert that `actual` is within `tolerance` of `expected`, naming the field on failure.
pub fn assert_close(what: &str, actual: f64, expected: f64, tolerance: f64) {
    assert!((actual - expected).abs() <= tolerance, "{what}: got {actual}, expected {expected} (±{tolerance})");
}

/// A running `bms_exporter simulate`, killed when dropped so no test leaves a process behind.
pub struct Simulator {
    pub child: Child,
    /// `127.0.0.1:PORT` for TCP runs.
    pub addr: Option<String>,
    pub dir: PathBuf,
    /// Lines the simulator wrote to stderr (TCP runs), e.g. the `requests=… replies=…` line when a client goes.
    pub lines: Arc<Mutex<Vec<String>>>,
}

impl Drop for Simulator {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

pub fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("bms-sim-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

impl Simulator {
    /// Start on TCP at a free loopback port from [`free_port`] (outside the ephemeral range, so a restart at the
    /// same address after [`Simulator::stop`] is not met by the kernel lending the port to an outgoing
    /// connection), and wait until it listens.
    pub fn tcp(name: &str, args: &[&str]) -> Self {
        Self::tcp_at(&scratch(name), &format!("127.0.0.1:{}", free_port()), args)
    }

    /// A frozen, unpaced simulator of `protocol` on TCP (`--time-scale 0 --baud 0 --latency-ms 0`), so the truth
    /// it writes stays the value every read gets and a run takes milliseconds.
    pub fn frozen_tcp(name: &str, protocol: &str, extra: &[&str]) -> Self {
        let mut args = vec!["--protocol", protocol, "--time-scale", "0", "--baud", "0", "--latency-ms", "0"];
        args.extend_from_slice(extra);
        Self::tcp(name, &args)
    }

    /// Start on TCP at `addr` (a restart after [`Simulator::stop`] reuses the port), keeping its truth in `dir`.
    ///
    /// A port held by something else for a moment (seen about once in 2,000 starts under load, the holder gone
    /// a few milliseconds later) is tried again for up to 5 s.
    pub fn tcp_at(dir: &Path, addr: &str, args: &[&str]) -> Self {
        let deadline = Instant::now() + Duration::from_secs(5);
        let (child, stderr, addr) = loop {
            let mut child = Process::new(env!("CARGO_BIN_EXE_bms_exporter"))
                .args(["simulate", "--tcp", addr, "--truth"])
                .arg(dir.join("truth.json"))
                .args(args)
                .stderr(Stdio::piped())
                .spawn()
                .unwrap();
            let mut stderr = BufReader::new(child.stderr.take().unwrap());
            let mut line = String::new();
            stderr.read_line(&mut line).unwrap();
            // The address it really listens on (the port it picked for `:0`); anything else is its start-up error.
            if let Some(bound) = line
                .trim()
                .strip_prefix("simulator: listening on ")
                .filter(|bound| bound.parse::<std::net::SocketAddr>().is_ok())
            {
                break (child, stderr, bound.to_owned());
            }
            let _ = child.wait();
            assert!(
                line.contains("Address already in use") && Instant::now() < deadline,
                "the simulator did not start listening on {addr}: {line}"
            );
            std::thread::sleep(Duration::from_millis(100));
        };
        let lines = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&lines);
        // Keep draining stderr so the simulator never blocks on a full pipe.
        std::thread::spawn(move || {
            for line in stderr.lines() {
                let Ok(line) = line else { break };
                sink.lock().unwrap().push(line);
            }
        });
        Self { child, addr: Some(addr), dir: dir.to_owned(), lines }
    }

    /// Start on a pseudo-terminal linked at `<scratch>/tty` and wait for the link.
    pub fn pty(name: &str, args: &[&str]) -> (Self, PathBuf) {
        let dir = scratch(name);
        let link = dir.join("tty");
        let child = Process::new(env!("CARGO_BIN_EXE_bms_exporter"))
            .args(["simulate", "--pty"])
            .arg(&link)
            .arg("--truth")
            .arg(dir.join("truth.json"))
            .args(args)
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while !link.exists() {
            assert!(Instant::now() < deadline, "the PTY link never appeared");
            std::thread::sleep(Duration::from_millis(20));
        }
        (Self { child, addr: None, dir, lines: Arc::default() }, link)
    }

    /// Start on a pseudo-terminal linked at `link` (a restart after [`Simulator::stop`] reuses the path).
    pub fn pty_at(dir: &Path, link: &Path, args: &[&str]) -> Self {
        let child = Process::new(env!("CARGO_BIN_EXE_bms_exporter"))
            .args(["simulate", "--pty"])
            .arg(link)
            .arg("--truth")
            .arg(dir.join("truth.json"))
            .args(args)
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while !link.exists() {
            assert!(Instant::now() < deadline, "the PTY link never appeared");
            std::thread::sleep(Duration::from_millis(20));
        }
        Self { child, addr: None, dir: dir.to_owned(), lines: Arc::default() }
    }

    /// Stop the process (SIGKILL) but keep the scratch directory, as a device unplugged.
    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// The true state as the simulator wrote it last, raw.
    pub fn truth_json(&self) -> Value {
        serde_json::from_str(&std::fs::read_to_string(self.dir.join("truth.json")).unwrap()).unwrap()
    }

    pub fn truth(&self) -> DeviceSnapshot {
        let text = std::fs::read_to_string(self.dir.join("truth.json")).unwrap();
        let value: Value = serde_json::from_str(&text).unwrap();
        snapshot_from_json(&value)
    }

    pub fn connect(&self) -> TcpStream {
        let stream = TcpStream::connect(self.addr.as_deref().unwrap()).unwrap();
        stream.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
        stream
    }
}

/// A program from the venv the test command builds under `target/py` (or `$var`), checked to exist and, with
/// `module`, to import it; the test fails loudly, naming the PyPI package, when it does not.
pub fn venv_program(var: &str, file: &str, module: Option<&str>, package: &str) -> PathBuf {
    venv_program_in("target/py", var, file, module, package)
}

/// [`venv_program`] from the venv the test command builds at `venv` (relative to the manifest directory).
pub fn venv_program_in(venv: &str, var: &str, file: &str, module: Option<&str>, package: &str) -> PathBuf {
    let path = std::env::var_os(var)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(venv).join("bin").join(file));
    let usable = path.exists()
        && module.is_none_or(|m| {
            Process::new(&path).args(["-c", &format!("import {m}")]).output().is_ok_and(|o| o.status.success())
        });
    assert!(
        usable,
        "{} is missing or lacks {package}: run the test command (bash scripts/test.sh), which installs it in a venv, \
         or point {var} at one that has it",
        path.display()
    );
    path
}

/// Path of `daly-bms-cli` (PyPI dalybms) from the test command's venv.
pub fn daly_bms_cli() -> PathBuf {
    venv_program("BMS_DALY_BMS_CLI", "daly-bms-cli", None, "dalybms==0.5.0")
}

/// Run `daly-bms-cli -d LINK ARGS…` and parse the JSON it prints.
pub fn daly_bms_cli_json(link: &Path, args: &[&str]) -> Value {
    let out = Process::new(daly_bms_cli()).arg("-d").arg(link).args(args).output().unwrap();
    assert!(out.status.success(), "daly-bms-cli failed: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

/// The truth file is the model serialised; read back the fields the tests compare.
pub fn snapshot_from_json(value: &Value) -> DeviceSnapshot {
    let packs = value["packs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            let mut pack = PackSnapshot::new(p["pack"].as_u64().unwrap() as u8);
            pack.voltage_volts = p["voltage_volts"].as_f64();
            pack.current_amperes = p["current_amperes"].as_f64();
            pack.state_of_charge_ratio = p["state_of_charge_ratio"].as_f64();
            pack.remaining_capacity_ampere_hours = p["remaining_capacity_ampere_hours"].as_f64();
            pack.cycle_count = p["cycle_count"].as_u64().map(|c| c as u32);
            pack.charge_mosfet_enabled = p["charge_mosfet_enabled"].as_bool();
            pack.discharge_mosfet_enabled = p["discharge_mosfet_enabled"].as_bool();
            pack.cell_volts = p["cell_volts"].as_array().unwrap().iter().map(Value::as_f64).collect();
            pack
        })
        .collect();
    DeviceSnapshot { packs }
}

/// A free TCP port on 127.0.0.1 (bound, then released for the program under test to take).
///
/// Chosen below the kernel's ephemeral range: a port the kernel hands out for `:0` may be given again to the next
/// `:0` bind or outgoing connection of any program (a simulator, the demo's in-process devices) in the moment
/// between our release and the program's bind. No port is handed out twice in one test run, and each run starts
/// at an offset of its own so two suites on one machine rarely meet.
pub fn free_port() -> u16 {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|range| range.split_whitespace().next()?.parse::<u32>().ok())
        .unwrap_or(32768);
    // A machine whose ephemeral range starts too low to leave room falls back to any port above 10000.
    let low = if low < 12_000 { 65_536 } else { low };
    let (first, span) = (10_000, low - 10_000);
    let start = std::process::id() * 97;
    for _ in 0..span {
        let port = first + (start + NEXT.fetch_add(1, Ordering::Relaxed)) % span;
        let port = u16::try_from(port).unwrap();
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free TCP port on 127.0.0.1 between {first} and {low}")
}

/// A plain HTTP/1.0 response: status code, lower-cased headers and body.
#[derive(Debug)]
pub struct HttpResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl HttpResponse {
    /// The value of header `name` (lower case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }
}

/// `GET path` from `addr` over plain HTTP, with extra request headers; `None` when nothing answers.
pub fn http_get(addr: &str, path: &str, headers: &[(&str, &str)]) -> Option<HttpResponse> {
    use std::io::{Read as _, Write as _};
    let mut stream = TcpStream::connect(addr).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(30))).ok()?;
    let mut request = format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n");
    for (k, v) in headers {
        request.push_str(&format!("{k}: {v}\r\n"));
    }
    request.push_str("\r\n");
    stream.write_all(request.as_bytes()).ok()?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).ok()?;
    let text = String::from_utf8(raw).ok()?;
    let (head, body) = text.split_once("\r\n\r\n")?;
    let mut lines = head.lines();
    let status = lines.next()?.split_whitespace().nth(1)?.parse().ok()?;
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    Some(HttpResponse { status, headers, body: body.to_owned() })
}

/// Poll `check` every 100 ms until it gives `Some`, or fail naming `what` after `timeout`.
pub fn wait_for<T>(what: &str, timeout: Duration, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check() {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out after {timeout:?} waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Percent-encode a query parameter value.
pub fn url_encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// A child process killed (and reaped) when dropped, so no test leaves one behind.
pub struct Killed(pub Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Path of a program the suite needs from a Debian package; fails loudly when it is missing.
pub fn required_program(name: &str, package: &str) -> PathBuf {
    let found = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .chain([PathBuf::from("/usr/bin"), PathBuf::from("/usr/sbin")])
        .map(|dir| dir.join(name))
        .find(|p| p.is_file());
    found.unwrap_or_else(|| {
        panic!("{name} is missing: install the Debian package {package} (bash scripts/test.sh does it)")
    })
}

/// A real Prometheus (Debian package `prometheus`) on a free loopback port, scraping `target` every second as job
/// `bms`, evaluating `rule_files` every second, with its data and log in `dir`. Returns it and its address.
pub fn prometheus(dir: &Path, target: &str, rule_files: &[PathBuf]) -> (Killed, String) {
    let binary = required_program("prometheus", "prometheus");
    let config = dir.join("prometheus.yml");
    let rules: String = rule_files.iter().map(|f| format!("  - {}\n", f.display())).collect();
    let rules = if rules.is_empty() { String::new() } else { format!("rule_files:\n{rules}") };
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n{rules}\
             scrape_configs:\n  - job_name: bms\n    static_configs:\n      - targets: ['{target}']\n"
        ),
    )
    .unwrap();
    // A port taken by something else in the moment between free_port and Prometheus' bind: try another.
    for _ in 0..3 {
        let port = free_port();
        let log = std::fs::File::create(dir.join("prometheus.log")).unwrap();
        let child = Process::new(&binary)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!("--storage.tsdb.path={}", dir.join("tsdb").display()))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .arg("--log.level=warn")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        let prometheus = Killed(child);
        let addr = format!("127.0.0.1:{port}");
        let started = wait_for("Prometheus to be ready", Duration::from_secs(30), || {
            if http_get(&addr, "/-/ready", &[]).is_some_and(|r| r.status == 200) {
                return Some(true);
            }
            let log = std::fs::read_to_string(dir.join("prometheus.log")).unwrap_or_default();
            if log.contains("address already in use") {
                return Some(false);
            }
            assert!(!log.contains("level=error"), "Prometheus failed to start:\n{log}");
            None
        });
        if started {
            return (prometheus, addr);
        }
    }
    panic!("Prometheus found its port taken three times")
}

/// A scratch directory, removed with its contents when dropped.
pub struct Scratch(pub PathBuf);

impl Scratch {
    /// `bms-NAME-PID` in the system's temporary directory, emptied first.
    pub fn new(name: &str) -> Self {
        Self::in_dir(&std::env::temp_dir(), &format!("bms-{name}"))
    }

    /// `NAME-PID` inside `base` (for tools that want their inputs inside the repository, like kustomize).
    pub fn in_dir(base: &Path, name: &str) -> Self {
        let dir = base.join(format!("{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }

    /// A path inside the directory.
    pub fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }

    /// Write `text` to `name` inside the directory and return its path.
    pub fn write(&self, name: &str, text: &str) -> PathBuf {
        let path = self.path(name);
        std::fs::write(&path, text).unwrap();
        path
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
