//! Transports as byte pipes: serial ports and TCP serial servers behind one `Link` type.
//!
//! This module owns opening a connection and nothing else: it does not frame, retry or time out requests (that is
//! the session and the poller). Everything above it sees a [`Link`], an `AsyncRead + AsyncWrite` pipe, and never
//! learns which transport it is; tests build one from an in-memory stream with [`Link::from_stream`].

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

/// Which transport a device is reached through, with its settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TransportSettings {
    /// A local serial port.
    Serial(SerialSettings),
    /// A TCP serial server.
    Tcp(TcpSettings),
}

impl TransportSettings {
    /// One line for logs and errors, e.g. `serial /dev/ttyUSB0 9600 8N1` or `tcp 192.168.1.50:8899`.
    #[must_use]
    pub fn describe(&self) -> String {
        match self {
            TransportSettings::Serial(s) => {
                format!("serial {} {} 8{}1", s.path.display(), s.baud, s.parity.letter())
            }
            TransportSettings::Tcp(t) => format!("tcp {}", t.address),
        }
    }

    /// The bounded `transport` label value: `serial` or `tcp`.
    #[must_use]
    pub fn kind(&self) -> &'static str {
        match self {
            TransportSettings::Serial(_) => "serial",
            TransportSettings::Tcp(_) => "tcp",
        }
    }
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
    }
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
