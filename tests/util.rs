//! Helpers shared by the integration tests: fixture loading, tolerance checks and the simulator process.

#![allow(dead_code)] // each topic module uses a different subset

use std::io::{BufRead as _, BufReader};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command as Process, Stdio};
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
    /// Start on TCP at a free loopback port the simulator picks, and wait until it listens.
    pub fn tcp(name: &str, args: &[&str]) -> Self {
        let dir = scratch(name);
        let mut child = Process::new(env!("CARGO_BIN_EXE_bms_exporter"))
            .args(["simulate", "--tcp", "127.0.0.1:0", "--truth"])
            .arg(dir.join("truth.json"))
            .args(args)
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut stderr = BufReader::new(child.stderr.take().unwrap());
        let mut line = String::new();
        stderr.read_line(&mut line).unwrap();
        let addr = line.trim().rsplit(' ').next().unwrap().to_owned();
        assert!(line.contains("listening on 127.0.0.1:"), "{line}");
        // Keep draining stderr so the simulator never blocks on a full pipe.
        std::thread::spawn(move || std::io::copy(&mut stderr, &mut std::io::sink()));
        Self { child, addr: Some(addr), dir }
    }

    /// Start on TCP at a given address (a restart after [`Simulator::stop`] reuses the port), keeping `dir`.
    pub fn tcp_at(dir: &Path, addr: &str, args: &[&str]) -> Self {
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
        assert!(line.contains("listening on"), "{line}");
        std::thread::spawn(move || std::io::copy(&mut stderr, &mut std::io::sink()));
        Self { child, addr: Some(addr.to_owned()), dir: dir.to_owned() }
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
        (Self { child, addr: None, dir }, link)
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
        Self { child, addr: None, dir: dir.to_owned() }
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

/// Path of `daly-bms-cli` from the venv the test command builds; the test fails loudly without it.
pub fn daly_bms_cli() -> PathBuf {
    let path = std::env::var_os("BMS_DALY_BMS_CLI")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/py/bin/daly-bms-cli"));
    assert!(
        path.exists(),
        "{} is missing: run the test command (bash scripts/test.sh), which installs dalybms in a venv",
        path.display()
    );
    path
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
