//! Transports as byte pipes: serial ports, TCP serial servers and Bluetooth LE GATT pipes behind one `Link` type.
//!
//! This module owns opening a connection and nothing else: it does not frame, retry or time out requests (that is
//! the session and the poller). Everything above it sees a [`Link`], an `AsyncRead + AsyncWrite` pipe, and never
//! learns which transport it is; tests build one from an in-memory stream with [`Link::from_stream`].
//!
//! The Bluetooth settings, address parsing and scan results are here in every build, so a configuration that
//! names a Bluetooth device parses the same way with or without the `ble` cargo feature; only opening one (and
//! scanning) needs the feature.

#[cfg(feature = "ble")]
mod bluetooth;
#[cfg(feature = "ble")]
mod bridge;
mod serial;
mod tcp;

use std::fmt;
use std::io;
use std::path::PathBuf;
use std::pin::Pin;
use std::str::FromStr;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Parity of a serial line (data bits and stop bits are fixed at 8 and 1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Parity {
    /// No parity bit: the common 8N1.
    #[default]
    None,
    /// Even parity (8E1).
    Even,
    /// Odd parity (8O1).
    Odd,
}

impl Parity {
    /// The letter used in the usual "8N1" spelling.
    fn letter(self) -> char {
        match self {
            Parity::None => 'N',
            Parity::Even => 'E',
            Parity::Odd => 'O',
        }
    }
}

impl fmt::Display for Parity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Parity::None => "none",
            Parity::Even => "even",
            Parity::Odd => "odd",
        })
    }
}

/// A parity name that is not `none`, `even` or `odd`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown parity {found:?}: expected none, even or odd")]
pub struct ParseParityError {
    /// The text that was given.
    pub found: String,
}

impl FromStr for Parity {
    type Err = ParseParityError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        // Case is forgiven because users copy "None"/"EVEN" from adapter manuals; nothing else is guessed.
        match s.to_ascii_lowercase().as_str() {
            "none" => Ok(Parity::None),
            "even" => Ok(Parity::Even),
            "odd" => Ok(Parity::Odd),
            _ => Err(ParseParityError { found: s.to_owned() }),
        }
    }
}

/// How to open a local serial port (always 8 data bits, 1 stop bit, no flow control).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SerialSettings {
    /// Device path, e.g. `/dev/ttyUSB0`.
    pub path: PathBuf,
    /// Line speed in bits per second.
    pub baud: u32,
    /// Parity bit.
    pub parity: Parity,
}

/// How to reach a transparent serial server (RS485-to-Ethernet box, ser2net) over TCP.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TcpSettings {
    /// `host:port`, e.g. `192.168.1.50:8899` or `[fe80::1]:8899`.
    pub address: String,
    /// Upper bound for name resolution and, separately, for each connection attempt.
    pub connect_timeout: Duration,
}

/// How to reach a Bluetooth LE BMS module (a Daly UART dongle or a DL-/JHB- module) through BlueZ.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BluetoothSettings {
    /// The module's address, six upper-case hex pairs separated by colons (`AA:BB:CC:DD:EE:FF`), as
    /// [`parse_bluetooth_address`] returns it.
    pub address: String,
    /// The BlueZ adapter to use (`hci0`); `None` takes the first one BlueZ lists.
    pub adapter: Option<String>,
    /// Upper bound for finding the module by a scan and, separately, for establishing the connection.
    pub connect_timeout: Duration,
}

/// How long a Bluetooth LE module may take to be found and then to accept a connection: BlueZ's LE connection
/// usually completes in 1–3 s, a module at the edge of its range needs a few attempts, and the bound stays below
/// a Prometheus scrape's default 10 s timeout so a sleeping module fails one scrape, not several.
pub const BLUETOOTH_CONNECT_TIMEOUT: Duration = Duration::from_secs(8);

/// Checks a Bluetooth device address (`AA:BB:CC:DD:EE:FF`, either case) and returns it in upper case, the
/// spelling BlueZ and `bluetoothctl` print.
pub fn parse_bluetooth_address(text: &str) -> Result<String, String> {
    let text = text.trim();
    let parts: Vec<&str> = text.split(':').collect();
    let valid = parts.len() == 6 && parts.iter().all(|p| p.len() == 2 && p.bytes().all(|b| b.is_ascii_hexdigit()));
    if valid {
        Ok(text.to_ascii_uppercase())
    } else {
        Err(format!("{text:?} is not a Bluetooth address: expected six hex pairs like AA:BB:CC:DD:EE:FF"))
    }
}

/// Checks a BlueZ adapter name (`hci0`, `hci1`, …): BlueZ names every adapter this way, so anything else is a typo.
pub fn parse_bluetooth_adapter(text: &str) -> Result<String, String> {
    let text = text.trim();
    match text.strip_prefix("hci") {
        Some(n) if !n.is_empty() && n.len() <= 3 && n.bytes().all(|b| b.is_ascii_digit()) => Ok(text.to_owned()),
        _ => Err(format!("{text:?} is not a Bluetooth adapter name: expected hci0, hci1, …")),
    }
}

/// Which transport a device is reached through, with its settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TransportSettings {
    /// A local serial port.
    Serial(SerialSettings),
    /// A TCP serial server.
    Tcp(TcpSettings),
    /// A Bluetooth LE module.
    Bluetooth(BluetoothSettings),
}

impl TransportSettings {
    /// The line's baud rate, when this program sets it (serial ports); a TCP serial server or a Bluetooth
    /// module runs its line at a rate it does not tell.
    #[must_use]
    pub fn baud(&self) -> Option<u32> {
        match self {
            Self::Serial(serial) => Some(serial.baud),
            Self::Tcp(_) | Self::Bluetooth(_) => None,
        }
    }

    /// One line for logs and errors, e.g. `serial /dev/ttyUSB0 9600 8N1`, `tcp 192.168.1.50:8899` or
    /// `bluetooth AA:BB:CC:DD:EE:FF (hci0)`.
    #[must_use]
    pub fn describe(&self) -> String {
        match self {
            TransportSettings::Serial(s) => {
                format!("serial {} {} 8{}1", s.path.display(), s.baud, s.parity.letter())
            }
            TransportSettings::Tcp(t) => format!("tcp {}", t.address),
            TransportSettings::Bluetooth(b) => match &b.adapter {
                Some(adapter) => format!("bluetooth {} ({adapter})", b.address),
                None => format!("bluetooth {}", b.address),
            },
        }
    }

    /// The bounded `transport` label value: `serial`, `tcp` or `bluetooth`.
    #[must_use]
    pub fn kind(&self) -> &'static str {
        match self {
            TransportSettings::Serial(_) => "serial",
            TransportSettings::Tcp(_) => "tcp",
            TransportSettings::Bluetooth(_) => "bluetooth",
        }
    }
}

/// One device heard during a Bluetooth LE scan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Advertised {
    /// Its address, upper case (`AA:BB:CC:DD:EE:FF`).
    pub address: String,
    /// The name it advertises, if any.
    pub name: Option<String>,
    /// The latest signal strength BlueZ reported, in dBm.
    pub rssi: Option<i16>,
    /// It advertises service `fff0` (the UART dongles' service; some Modbus-style modules use it too).
    pub service_fff0: bool,
    /// It advertises service `ff00` (only the newer Modbus-style DL-/JHB- modules).
    pub service_ff00: bool,
}

/// Why a transport could not be opened or used; each variant names the port or address concerned.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    /// Someone else holds the serial port open exclusively.
    #[error(
        "serial port {} is busy: another program (perhaps another bms_exporter, ModemManager or a serial console) \
         has it open",
        .path.display()
    )]
    PortBusy {
        /// The device path.
        path: PathBuf,
    },
    /// The device path does not exist (adapter unplugged, or a typo).
    #[error("serial port {} does not exist: is the adapter plugged in and the path right?", .path.display())]
    NotFound {
        /// The device path.
        path: PathBuf,
    },
    /// The device exists but this user may not open it.
    #[error(
        "no permission to open serial port {}: add the user running bms_exporter to the group owning it \
         (usually `dialout`, e.g. `sudo usermod -aG dialout $USER`, then log in again)",
        .path.display()
    )]
    PermissionDenied {
        /// The device path.
        path: PathBuf,
    },
    /// Any other failure opening or configuring a serial port.
    #[error("cannot open serial port {}: {message}", .path.display())]
    Serial {
        /// The device path.
        path: PathBuf,
        /// What the serial layer reported.
        message: String,
    },
    /// The TCP address is malformed or its host name did not resolve.
    #[error("cannot resolve {address}: {message}")]
    Resolve {
        /// The `host:port` as configured.
        address: String,
        /// What went wrong.
        message: String,
    },
    /// No TCP connection could be established within the timeout.
    #[error("cannot connect to {address}: no answer within {after:?}")]
    ConnectTimeout {
        /// The `host:port` as configured.
        address: String,
        /// The timeout that expired.
        after: Duration,
    },
    /// The TCP connection was refused or failed.
    #[error("cannot connect to {address}: {cause}")]
    Connect {
        /// The `host:port` as configured.
        address: String,
        /// The operating system's error (in the message, not a `source`, so `{:#}` does not print it twice).
        cause: io::Error,
    },
    /// Bluetooth LE could not be used: BlueZ is unreachable, the adapter or module is missing, or a step of
    /// connecting to the module failed or took too long.
    #[error("{target}: {message}")]
    Bluetooth {
        /// What was being reached, e.g. `bluetooth AA:BB:CC:DD:EE:FF (hci0)` or `Bluetooth adapter hci1`.
        target: String,
        /// What went wrong, in words a user can act on.
        message: String,
    },
    /// This binary was built without the `ble` cargo feature.
    #[error(
        "{target}: this bms_exporter was built without the ble feature (Bluetooth LE); rebuild with default features"
    )]
    BluetoothNotBuilt {
        /// The transport that was asked for.
        target: String,
    },
    /// An I/O failure while setting a transport up.
    #[error("{what}: {cause}")]
    Io {
        /// What was being done, e.g. "creating a TCP socket".
        what: &'static str,
        /// The operating system's error (in the message, not a `source`, so `{:#}` does not print it twice).
        cause: io::Error,
    },
}

impl TransportError {
    /// The bounded `reason` label of a poll failure; every transport failure is `io`.
    #[must_use]
    pub fn kind(&self) -> &'static str {
        "io"
    }
}

/// Anything that can carry a Link's bytes; private so the concrete transport stays hidden.
trait LinkIo: AsyncRead + AsyncWrite + Unpin + Send {}

impl<T: AsyncRead + AsyncWrite + Unpin + Send> LinkIo for T {}

/// An open byte pipe to a bus, whatever carries it. Dropping it closes the port or connection.
pub struct Link {
    /// The stream itself; it owns the port, and with it the port's exclusive lock.
    inner: Box<dyn LinkIo>,
    /// Human description for logs, e.g. `serial /dev/ttyUSB0 9600 8N1`.
    description: String,
}

impl Link {
    /// Wraps any stream as a Link; tests use `tokio::io::duplex`.
    pub fn from_stream(
        stream: impl AsyncRead + AsyncWrite + Unpin + Send + 'static,
        description: impl Into<String>,
    ) -> Self {
        Link { inner: Box::new(stream), description: description.into() }
    }

    /// The human description given when the Link was made (for logs only, not for branching).
    #[must_use]
    pub fn description(&self) -> &str {
        &self.description
    }
}

impl fmt::Debug for Link {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Link").field("description", &self.description).finish_non_exhaustive()
    }
}

impl AsyncRead for Link {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for Link {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut *self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut *self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// Opens the transport `settings` describe.
pub async fn open(settings: &TransportSettings) -> Result<Link, TransportError> {
    let description = settings.describe();
    match settings {
        TransportSettings::Serial(s) => serial::open(s, description),
        TransportSettings::Tcp(t) => tcp::open(t, description).await,
        #[cfg(feature = "ble")]
        TransportSettings::Bluetooth(b) => bluetooth::open(b, description).await,
        #[cfg(not(feature = "ble"))]
        TransportSettings::Bluetooth(_) => Err(TransportError::BluetoothNotBuilt { target: description }),
    }
}

/// Scans for Bluetooth LE devices for `duration` on `adapter` (the first one when `None`) and returns every
/// device BlueZ heard, strongest signal first.
// Async in every build, so callers need no cfg of their own.
#[cfg_attr(not(feature = "ble"), allow(clippy::unused_async))]
pub async fn scan_bluetooth(adapter: Option<&str>, duration: Duration) -> Result<Vec<Advertised>, TransportError> {
    #[cfg(feature = "ble")]
    {
        bluetooth::scan(adapter, duration).await
    }
    #[cfg(not(feature = "ble"))]
    {
        let _ = duration;
        Err(TransportError::BluetoothNotBuilt { target: adapter.map_or("Bluetooth".to_owned(), str::to_owned) })
    }
}

/// Closes every Bluetooth LE link this process still has open (their reads then fail as if the module had gone)
/// and waits, at most `max`, until each has unsubscribed and disconnected. BlueZ keeps a connection up after the
/// program that asked for it exits, and a module serves one connection at a time, so a command that exits without
/// this would leave the module unreachable (for the phone app, or the next run) until the module drops it. Returns
/// at once when no Bluetooth link is open, and always without the `ble` feature.
#[cfg_attr(not(feature = "ble"), allow(clippy::unused_async))]
pub async fn close_bluetooth(max: Duration) {
    #[cfg(feature = "ble")]
    bridge::BRIDGES.close_all(max).await;
    #[cfg(not(feature = "ble"))]
    let _ = max;
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[test]
    fn parity_parses_its_three_names_and_prints_them_back() {
        for parity in [Parity::None, Parity::Even, Parity::Odd] {
            assert_eq!(parity.to_string().parse::<Parity>(), Ok(parity));
        }
        assert_eq!("EVEN".parse::<Parity>(), Ok(Parity::Even));
        let err = "mark".parse::<Parity>().unwrap_err();
        assert_eq!(err.found, "mark");
        assert!(err.to_string().contains("expected none, even or odd"), "{err}");
    }

    #[test]
    fn settings_describe_themselves_and_give_the_transport_label() {
        let serial = TransportSettings::Serial(SerialSettings {
            path: PathBuf::from("/dev/ttyUSB0"),
            baud: 9600,
            parity: Parity::None,
        });
        assert_eq!(serial.describe(), "serial /dev/ttyUSB0 9600 8N1");
        assert_eq!(serial.kind(), "serial");
        let even = TransportSettings::Serial(SerialSettings {
            path: PathBuf::from("/dev/ttyS1"),
            baud: 19200,
            parity: Parity::Even,
        });
        assert_eq!(even.describe(), "serial /dev/ttyS1 19200 8E1");
        let tcp = TransportSettings::Tcp(TcpSettings {
            address: "192.168.1.50:8899".to_owned(),
            connect_timeout: Duration::from_secs(3),
        });
        assert_eq!(tcp.describe(), "tcp 192.168.1.50:8899");
        assert_eq!(tcp.kind(), "tcp");
    }

    #[test]
    fn bluetooth_addresses_are_six_hex_pairs_returned_in_upper_case() {
        assert_eq!(parse_bluetooth_address("aa:bb:cc:dd:ee:ff"), Ok("AA:BB:CC:DD:EE:FF".to_owned()));
        assert_eq!(parse_bluetooth_address(" 12:34:56:78:90:Ab "), Ok("12:34:56:78:90:AB".to_owned()));
        for bad in [
            "",
            "AA:BB:CC:DD:EE",
            "AA:BB:CC:DD:EE:FF:00",
            "AA-BB-CC-DD-EE-FF",
            "AABBCCDDEEFF",
            "A:BB:CC:DD:EE:FF0",
            "GG:BB:CC:DD:EE:FF",
            "AA:BB:CC:DD:EE:F",
            "AA::BB:CC:DD:EE",
            "+A:BB:CC:DD:EE:FF",
        ] {
            let error = parse_bluetooth_address(bad).unwrap_err();
            assert!(error.contains("AA:BB:CC:DD:EE:FF") && error.contains(&format!("{:?}", bad.trim())), "{error}");
        }
        assert_eq!(parse_bluetooth_adapter("hci0"), Ok("hci0".to_owned()));
        assert_eq!(parse_bluetooth_adapter("hci12"), Ok("hci12".to_owned()));
        for bad in ["", "hci", "hc0", "HCI0", "hci-1", "usb0", "hci1234"] {
            assert!(parse_bluetooth_adapter(bad).unwrap_err().contains("hci0, hci1"), "{bad:?}");
        }
        // Trimmed, as YAML and shells may keep a stray space.
        assert_eq!(parse_bluetooth_adapter("hci0 "), Ok("hci0".to_owned()));
    }

    #[test]
    fn bluetooth_settings_describe_the_module_and_its_adapter() {
        let mut settings = BluetoothSettings {
            address: "AA:BB:CC:DD:EE:FF".to_owned(),
            adapter: Some("hci0".to_owned()),
            connect_timeout: BLUETOOTH_CONNECT_TIMEOUT,
        };
        assert_eq!(TransportSettings::Bluetooth(settings.clone()).describe(), "bluetooth AA:BB:CC:DD:EE:FF (hci0)");
        settings.adapter = None;
        let transport = TransportSettings::Bluetooth(settings);
        assert_eq!(transport.describe(), "bluetooth AA:BB:CC:DD:EE:FF");
        assert_eq!(transport.kind(), "bluetooth");
        let error = TransportError::Bluetooth { target: transport.describe(), message: "not found".to_owned() };
        assert_eq!(error.to_string(), "bluetooth AA:BB:CC:DD:EE:FF: not found");
        assert_eq!(error.kind(), "io");
    }

    #[cfg(not(feature = "ble"))]
    #[tokio::test]
    async fn without_the_ble_feature_opening_or_scanning_says_so() {
        let transport = TransportSettings::Bluetooth(BluetoothSettings {
            address: "AA:BB:CC:DD:EE:FF".to_owned(),
            adapter: None,
            connect_timeout: BLUETOOTH_CONNECT_TIMEOUT,
        });
        let error = open(&transport).await.unwrap_err().to_string();
        assert!(
            error.starts_with("bluetooth AA:BB:CC:DD:EE:FF: ") && error.contains("without the ble feature"),
            "{error}"
        );
        let error = scan_bluetooth(Some("hci0"), Duration::from_secs(1)).await.unwrap_err().to_string();
        assert!(error.contains("without the ble feature"), "{error}");
    }

    #[test]
    fn every_transport_error_has_the_io_reason_and_names_its_subject() {
        let errors = [
            TransportError::PortBusy { path: "/dev/ttyUSB0".into() },
            TransportError::NotFound { path: "/dev/ttyUSB0".into() },
            TransportError::PermissionDenied { path: "/dev/ttyUSB0".into() },
            TransportError::Serial { path: "/dev/ttyUSB0".into(), message: "x".to_owned() },
        ];
        for err in &errors {
            assert_eq!(err.kind(), "io");
            assert!(err.to_string().contains("/dev/ttyUSB0"), "{err}");
        }
        let timeout =
            TransportError::ConnectTimeout { address: "10.0.0.9:8899".to_owned(), after: Duration::from_secs(3) };
        assert_eq!(timeout.kind(), "io");
        assert_eq!(timeout.to_string(), "cannot connect to 10.0.0.9:8899: no answer within 3s");
        let permission = TransportError::PermissionDenied { path: "/dev/ttyS0".into() }.to_string();
        assert!(permission.contains("dialout"), "{permission}");
    }

    #[tokio::test]
    async fn a_link_from_an_in_memory_stream_carries_bytes_both_ways() {
        let (near, mut far) = tokio::io::duplex(64);
        let mut link = Link::from_stream(near, "duplex");
        assert_eq!(link.description(), "duplex");
        assert!(format!("{link:?}").contains("duplex"));

        link.write_all(b"\xa5\x40\x90\x08").await.unwrap();
        let mut got = [0u8; 4];
        far.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"\xa5\x40\x90\x08");

        far.write_all(b"reply").await.unwrap();
        let mut got = [0u8; 5];
        link.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"reply");
    }
}
