//! The mock BlueZ the Bluetooth tests run against: a private dbus-daemon, python-dbusmock with the
//! `tests/ble/bluez_bms.py` template on it, and the calls that set up adapters, Daly dongles and their faults.
//!
//! The test machines have no Bluetooth hardware or kernel support, so nothing can talk to a real bluetoothd. The
//! mock stands in for it on a bus of its own (never the machine's system bus): a client pointed at
//! [`MockBluez::bus_address`] through `DBUS_SYSTEM_BUS_ADDRESS` sees adapters, devices and GATT objects as BlueZ
//! presents them, and each dongle carries its writes to a `bms_exporter simulate --tcp` and the answers back as
//! notifications.

#![allow(dead_code)] // each Bluetooth test uses a different subset

use std::io::{BufRead as _, BufReader};
use std::path::PathBuf;
use std::process::{Command as Process, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::util::{Killed, Scratch, required_program};

/// GATT of an A5-protocol Daly dongle: service, notify (BMS to host), write (host to BMS).
pub const A5_SERVICE: &str = "0000fff0-0000-1000-8000-00805f9b34fb";
pub const A5_NOTIFY: &str = "0000fff1-0000-1000-8000-00805f9b34fb";
pub const A5_WRITE: &str = "0000fff2-0000-1000-8000-00805f9b34fb";
/// The old dongles' extra characteristic, which clients write one empty value to after subscribing.
pub const A5_EXTRA: &str = "02f00000-0000-0000-0000-00000000ff01";
/// GATT of a Modbus-style Daly module (names DL-…, JHB-…).
pub const MODBUS_SERVICE: &str = "0000ff00-0000-1000-8000-00805f9b34fb";
pub const MODBUS_NOTIFY: &str = "0000ff01-0000-1000-8000-00805f9b34fb";
pub const MODBUS_WRITE: &str = "0000ff02-0000-1000-8000-00805f9b34fb";

/// How a dongle cuts one reply into notifications.
#[derive(Clone, Copy, Debug)]
pub enum Split {
    /// 20-byte notifications, what fits at the default ATT MTU (the mock's default).
    Mtu,
    /// One to five cuts at random points, drawn from this seed.
    Random(u32),
    /// The whole reply in one notification, as with a large negotiated MTU.
    Joined,
}

/// A dongle's behaviour, for fault tests.
#[derive(Clone, Copy, Debug)]
pub enum Mode {
    Normal,
    /// Random 1–4 byte notifications between a reply's pieces (and before a reply that fits one).
    Garbage,
    /// Writes accepted, never answered.
    Silent,
    /// The next write drops the connection (Connected and ServicesResolved false, notifications off), once; the
    /// client can connect again and the dongle then works.
    DisconnectNext,
    /// Drops the connection now and refuses Connect until set back to another mode.
    Unreachable,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Self::Normal => "normal",
            Self::Garbage => "garbage",
            Self::Silent => "silent",
            Self::DisconnectNext => "disconnect_next",
            Self::Unreachable => "unreachable",
        }
    }
}

/// A running mock BlueZ. Dropping it kills the mock and its bus, and removes the scratch directory.
pub struct MockBluez {
    // Fields drop in order: the mock before the bus it is on, the directory holding the bus socket last.
    mock: Killed,
    daemon: Killed,
    address: String,
    gdbus: PathBuf,
    dir: Scratch,
    /// Wall time from nothing to a mock answering calls.
    pub started_in: Duration,
}

/// The system Python that Debian's python3-dbusmock, python3-dbus and python3-gi are installed for (a venv's
/// python would lack them); fails loudly when dbusmock is missing.
pub fn system_python() -> PathBuf {
    let python = PathBuf::from("/usr/bin/python3");
    let usable =
        Process::new(&python).args(["-c", "import dbusmock, dbus, gi"]).output().is_ok_and(|o| o.status.success());
    assert!(
        usable,
        "/usr/bin/python3 cannot import dbusmock: install the Debian package python3-dbusmock (bash scripts/test.sh \
         does it)"
    );
    python
}

/// A file under `tests/ble/`.
pub fn ble_file(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/ble").join(name)
}

impl MockBluez {
    /// Start a private bus and the mock on it, and wait until the mock answers.
    pub fn start() -> Self {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let started = Instant::now();
        let daemon_program = required_program("dbus-daemon", "dbus-daemon");
        let gdbus = required_program("gdbus", "libglib2.0-bin");
        let python = system_python();
        let dir = Scratch::new(&format!("bluez-{}", NEXT.fetch_add(1, Ordering::Relaxed)));
        // A session-type bus that lets anyone own any name and call anything: the mock takes org.bluez, which the
        // system bus policy would reserve for root. Listening only on a socket in the scratch directory.
        let config = dir.write(
            "bus.conf",
            &format!(
                r#"<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>session</type>
  <listen>unix:path={}</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow send_destination="*" eavesdrop="true"/>
    <allow eavesdrop="true"/>
    <allow own="*"/>
  </policy>
</busconfig>
"#,
                dir.path("bus").display()
            ),
        );
        let mut child = Process::new(daemon_program)
            .arg(format!("--config-file={}", config.display()))
            .args(["--nofork", "--print-address=1"])
            .stdout(Stdio::piped())
            // It warns that it may not raise its file limit when not root; nothing else is expected.
            .stderr(std::fs::File::create(dir.path("dbus-daemon.log")).unwrap())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let daemon = Killed(child);
        // It prints its address once it listens.
        let mut address = String::new();
        BufReader::new(stdout).read_line(&mut address).unwrap();
        let address = address.trim().to_owned();
        assert!(
            address.starts_with("unix:"),
            "dbus-daemon did not start: {}",
            std::fs::read_to_string(dir.path("dbus-daemon.log")).unwrap_or_default()
        );
        let mock = Process::new(python)
            .args(["-m", "dbusmock", "--system", "--template"])
            .arg(ble_file("bluez_bms.py"))
            .arg("-l")
            .arg(dir.path("calls.log"))
            .env("DBUS_SYSTEM_BUS_ADDRESS", &address)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.path("mock.log")).unwrap())
            .spawn()
            .unwrap();
        let mut bluez = Self { mock: Killed(mock), daemon, address, gdbus, dir, started_in: Duration::ZERO };
        // The mock owns org.bluez before its template is loaded, but it serves no call until the template is in,
        // so the first answered call proves it ready.
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = bluez.mock.0.try_wait().unwrap() {
                panic!("the mock BlueZ exited ({status}):\n{}", bluez.log());
            }
            let owned = bluez.gdbus(&[
                "--dest",
                "org.freedesktop.DBus",
                "--object-path",
                "/org/freedesktop/DBus",
                "--method",
                "org.freedesktop.DBus.NameHasOwner",
                "org.bluez",
            ]);
            if owned.is_ok_and(|out| out.contains("true")) {
                break;
            }
            assert!(Instant::now() < deadline, "the mock BlueZ never took org.bluez:\n{}", bluez.log());
            std::thread::sleep(Duration::from_millis(20));
        }
        bluez.started_in = started.elapsed();
        bluez
    }

    /// The bus address to give a client as `DBUS_SYSTEM_BUS_ADDRESS`.
    pub fn bus_address(&self) -> &str {
        &self.address
    }

    /// Point `command` at the mock's bus.
    pub fn env<'a>(&self, command: &'a mut Process) -> &'a mut Process {
        command.env("DBUS_SYSTEM_BUS_ADDRESS", &self.address)
    }

    /// What the mock wrote to stderr (its own notes and Python errors), then its log of every call.
    pub fn log(&self) -> String {
        let read = |name: &str| std::fs::read_to_string(self.dir.path(name)).unwrap_or_default();
        format!("--- mock stderr\n{}--- calls\n{}", read("mock.log"), read("calls.log"))
    }

    /// Call `METHOD` (interface-qualified, e.g. `org.bluez.Device1.Connect`) on the object at `path` of org.bluez,
    /// as a client would; gdbus' rendering of the result, or the D-Bus error.
    pub fn call_on(&self, path: &str, method: &str, args: &[&str]) -> Result<String, String> {
        let mut all = vec!["--dest", "org.bluez", "--object-path", path, "--method", method];
        all.extend_from_slice(args);
        self.gdbus(&all)
    }

    fn gdbus(&self, args: &[&str]) -> Result<String, String> {
        let out = Process::new(&self.gdbus)
            .args(["call", "--system", "--timeout", "10"])
            .args(args)
            .env("DBUS_SYSTEM_BUS_ADDRESS", &self.address)
            .output()
            .unwrap();
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }

    /// Call `org.bluez.Mock.METHOD` on `/` with gdbus; the D-Bus error when it fails.
    pub fn try_call(&self, method: &str, args: &[&str]) -> Result<String, String> {
        self.call_on("/", &format!("org.bluez.Mock.{method}"), args)
    }

    /// [`MockBluez::try_call`] that must succeed; returns gdbus' rendering of the result, e.g. `('/org/bluez/hci0',)`.
    pub fn call(&self, method: &str, args: &[&str]) -> String {
        self.try_call(method, args).unwrap_or_else(|e| panic!("{method} {args:?} failed: {e}\n{}", self.log()))
    }

    /// The one string a call returned (gdbus prints `('TEXT',)`; the template's strings hold no quotes).
    fn call_string(&self, method: &str, args: &[&str]) -> String {
        let out = self.call(method, args);
        let text = out.trim().strip_prefix("('").and_then(|s| s.strip_suffix("',)"));
        text.unwrap_or_else(|| panic!("{method}: unexpected answer {out}")).to_owned()
    }

    /// Add adapter `name` (e.g. `hci0`); returns its object path.
    pub fn add_adapter(&self, name: &str) -> String {
        self.call_string("AddAdapter", &[name, "host"])
    }

    /// Add a device seen by `adapter` at `address` (`AA:BB:CC:DD:EE:FF`) advertising `name`; returns its path.
    pub fn add_device(&self, adapter: &str, address: &str, name: &str) -> String {
        self.call_string("AddDevice", &[adapter, address, name])
    }

    /// Give `device` an A5 dongle's GATT, bridged to the simulator at `sim_addr`, with the old modules' extra
    /// characteristic when `extra`; returns the service path.
    pub fn add_daly_a5_gatt(&self, device: &str, sim_addr: &str, extra: bool) -> String {
        self.call_string("AddDalyA5Gatt", &[device, sim_addr, if extra { "true" } else { "false" }])
    }

    /// Give `device` a Modbus-style module's GATT (service ff00), bridged to `sim_addr`; returns the service path.
    pub fn add_daly_modbus_gatt(&self, device: &str, sim_addr: &str) -> String {
        self.call_string("AddDalyModbusGatt", &[device, sim_addr])
    }

    pub fn set_split(&self, device: &str, split: Split) {
        let (name, seed) = match split {
            Split::Mtu => ("mtu", 0),
            Split::Random(seed) => ("random", seed),
            Split::Joined => ("joined", 0),
        };
        self.call("SetSplit", &[device, name, &seed.to_string()]);
    }

    pub fn set_mode(&self, device: &str, mode: Mode) {
        self.call("SetDeviceMode", &[device, mode.name()]);
    }

    /// The dongle answers `writes` more writes, then drops the connection at the next one (as [`Mode::DisconnectNext`]).
    pub fn disconnect_after(&self, device: &str, writes: u32) {
        self.call("DisconnectAfter", &[device, &writes.to_string()]);
    }

    /// The dongle's counters (see the template's GetDeviceStats): writes, notifications, connects, write_types,
    /// extra_writes and more.
    pub fn stats(&self, device: &str) -> Value {
        let text = self.call_string("GetDeviceStats", &[device]);
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("GetDeviceStats: {e}: {text}"))
    }

    /// The adapter's counters (see the template's GetAdapterStats): refused_in_progress.
    pub fn adapter_stats(&self, adapter: &str) -> Value {
        let text = self.call_string("GetAdapterStats", &[adapter]);
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("GetAdapterStats: {e}: {text}"))
    }

    /// Set the signal strength BlueZ reports for `device` (the stock mock gives every device -79 dBm).
    pub fn set_rssi(&self, device: &str, rssi: i16) {
        // gdbus reads a leading minus as an option unless the value is typed.
        self.call("SetDeviceRssi", &[device, &format!("int16 {rssi}")]);
    }

    /// Hex of each write to the extra characteristic (an empty string per empty write).
    pub fn extra_writes(&self, device: &str) -> Vec<String> {
        let stats = self.stats(device);
        stats["extra_writes"].as_array().unwrap().iter().map(|w| w.as_str().unwrap().to_owned()).collect()
    }

    /// Run the independent D-Bus client (`tests/ble/gatt_client.py`) against `device`: connect, subscribe to
    /// `notify`, write one empty value to `extra` if given, then write each request to `write` and collect the
    /// notifications after it. Returns its JSON: `replies[i].chunks` (hex per notification), `replies[i].dropped`
    /// (the link went down while waiting) and `connects`.
    pub fn client_exchange(
        &self,
        device: &str,
        notify: &str,
        write: &str,
        extra: Option<&str>,
        requests: &[&[u8]],
    ) -> Value {
        let mut command = Process::new(system_python());
        command.arg(ble_file("gatt_client.py")).args(["--device", device, "--notify", notify, "--write", write]);
        if let Some(extra) = extra {
            command.args(["--extra", extra]);
        }
        for request in requests {
            command.arg("--request").arg(hex(request));
        }
        let out = self.env(&mut command).output().unwrap();
        assert!(
            out.status.success(),
            "gatt_client.py failed: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            self.log()
        );
        serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("gatt_client.py: {e}: {}", String::from_utf8_lossy(&out.stdout)))
    }
}

/// Lower-case hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The notifications of one reply from [`MockBluez::client_exchange`], as byte strings.
pub fn chunks(reply: &Value) -> Vec<Vec<u8>> {
    reply["chunks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| bms_exporter::protocol::parse_hex(c.as_str().unwrap()).unwrap())
        .collect()
}
