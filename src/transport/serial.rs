//! Opening a local serial port (8 data bits, 1 stop bit, no flow control) exclusively, as a [`Link`].
//!
//! Exclusivity comes from serialport (pinned at 4.10 through tokio-serial), which on Unix does two things on open:
//! `TIOCEXCL`, so a second `open()` by a non-root process fails with `EBUSY`, and `flock(LOCK_EX | LOCK_NB)`,
//! which also stops root and every other flock-aware program (another bms_exporter, picocom, minicom). Both
//! failures arrive as serialport's `NoDevice` kind and become [`TransportError::PortBusy`]. We do not take a
//! second flock of our own on another file handle: flock locks belong to the open file description, so it would
//! collide with serialport's lock and make every open look busy. `a_second_open_of_a_held_port_is_busy` (run as
//! root in CI) guards that the lock is really there.

use std::io;
use std::path::Path;

use tokio_serial::{DataBits, ErrorKind, FlowControl, SerialPortBuilderExt as _, StopBits};

use super::{Link, Parity, SerialSettings, TransportError};

/// Opens `settings.path` exclusively with the configured line settings.
///
/// This runs inline on the async task rather than in `spawn_blocking`: serialport opens with `O_NONBLOCK` (so it
/// never waits for carrier detect) and then issues a handful of ioctls, which take microseconds; a worker-thread
/// hop would cost more than it saves.
pub(super) fn open(settings: &SerialSettings, description: String) -> Result<Link, TransportError> {
    let path = &settings.path;
    // serialport takes the path as a string; refusing a non-UTF-8 path beats opening a lossily converted one.
    let Some(path_str) = path.to_str() else {
        return Err(TransportError::Serial { path: path.clone(), message: "the path is not valid UTF-8".to_owned() });
    };
    let stream = tokio_serial::new(path_str, settings.baud)
        .parity(match settings.parity {
            Parity::None => tokio_serial::Parity::None,
            Parity::Even => tokio_serial::Parity::Even,
            Parity::Odd => tokio_serial::Parity::Odd,
        })
        .data_bits(DataBits::Eight)
        .stop_bits(StopBits::One)
        .flow_control(FlowControl::None)
        // The default already, but the README promises exclusive use ("port busy"), so it is spelled out.
        .exclusive(true)
        .open_native_async()
        .map_err(|err| open_error(path, &err))?;
    Ok(Link::from_stream(stream, description))
}

/// Turns serialport's open error into the variant a user can act on.
fn open_error(path: &Path, err: &tokio_serial::Error) -> TransportError {
    let path = path.to_path_buf();
    match err.kind {
        // serialport reports both EBUSY (TIOCEXCL held) and a held flock as NoDevice while opening.
        ErrorKind::NoDevice => TransportError::PortBusy { path },
        ErrorKind::Io(io::ErrorKind::NotFound) => TransportError::NotFound { path },
        ErrorKind::Io(io::ErrorKind::PermissionDenied) => TransportError::PermissionDenied { path },
        ErrorKind::Io(_) | ErrorKind::InvalidInput | ErrorKind::Unknown => {
            TransportError::Serial { path, message: err.description.clone() }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;
    use std::time::Duration;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio_serial::{SerialPort as _, SerialStream};

    use super::*;
    use crate::transport::{TransportSettings, open as open_transport};

    fn settings(path: PathBuf, baud: u32, parity: Parity) -> TransportSettings {
        TransportSettings::Serial(SerialSettings { path, baud, parity })
    }

    /// A PTY pair; the slave handle is kept so the master never sees a hang-up between our opens.
    fn pty() -> (SerialStream, SerialStream, PathBuf) {
        let (master, slave) = SerialStream::pair().unwrap();
        let path = PathBuf::from(slave.name().unwrap());
        (master, slave, path)
    }

    #[tokio::test]
    async fn bytes_flow_both_ways_through_a_pty() {
        let (mut master, _slave, path) = pty();
        let mut link = open_transport(&settings(path.clone(), 9600, Parity::None)).await.unwrap();
        assert_eq!(link.description(), format!("serial {} 9600 8N1", path.display()));

        master.write_all(b"\xa5\x01\x90\x08").await.unwrap();
        let mut got = [0u8; 4];
        tokio::time::timeout(Duration::from_secs(5), link.read_exact(&mut got)).await.unwrap().unwrap();
        assert_eq!(&got, b"\xa5\x01\x90\x08");

        link.write_all(b"~25014").await.unwrap();
        let mut got = [0u8; 6];
        tokio::time::timeout(Duration::from_secs(5), master.read_exact(&mut got)).await.unwrap().unwrap();
        assert_eq!(&got, b"~25014");
    }

    #[tokio::test]
    async fn line_settings_reach_the_port() {
        let (_master, slave, path) = pty();
        let _link = open_transport(&settings(path, 19200, Parity::Even)).await.unwrap();
        // termios belongs to the terminal, not the file handle, so the pair's own slave handle reads back what
        // the Link configured. Parity cannot be observed here: Linux PTYs clear PARENB on every termios change,
        // so opening with even parity only shows that a parity request does not break the open.
        assert_eq!(slave.baud_rate().unwrap(), 19200);
        assert_eq!(slave.data_bits().unwrap(), DataBits::Eight);
        assert_eq!(slave.stop_bits().unwrap(), StopBits::One);
        assert_eq!(slave.flow_control().unwrap(), FlowControl::None);
    }

    #[tokio::test]
    async fn a_second_open_of_a_held_port_is_busy_until_the_first_is_dropped() {
        let (_master, _slave, path) = pty();
        let wanted = settings(path.clone(), 9600, Parity::None);
        let first = open_transport(&wanted).await.unwrap();

        match open_transport(&wanted).await {
            Err(TransportError::PortBusy { path: busy }) => assert_eq!(busy, path),
            other => panic!("expected PortBusy, got {other:?}"),
        }
        let message = TransportError::PortBusy { path: path.clone() }.to_string();
        assert!(message.contains(&path.display().to_string()) && message.contains("busy"), "{message}");

        drop(first);
        open_transport(&wanted).await.unwrap();
    }

    #[tokio::test]
    async fn a_missing_path_is_not_found_and_named() {
        let path = std::env::temp_dir().join(format!("bms-exporter-no-such-port-{}", std::process::id()));
        match open_transport(&settings(path.clone(), 9600, Parity::None)).await {
            Err(err @ TransportError::NotFound { .. }) => {
                assert!(err.to_string().contains(&path.display().to_string()), "{err}");
            }
            other => panic!("expected NotFound, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn a_path_that_is_not_a_terminal_is_a_serial_error_naming_it() {
        let path = std::env::temp_dir().join(format!("bms-exporter-not-a-tty-{}", std::process::id()));
        std::fs::write(&path, b"").unwrap();
        let result = open_transport(&settings(path.clone(), 9600, Parity::None)).await;
        std::fs::remove_file(&path).unwrap();
        match result {
            Err(err @ TransportError::Serial { .. }) => {
                assert!(err.to_string().contains(&path.display().to_string()), "{err}");
            }
            other => panic!("expected Serial, got {other:?}"),
        }
    }

    #[test]
    fn open_errors_map_to_what_the_user_can_act_on() {
        let path = Path::new("/dev/ttyUSB7");
        let cases = [
            (ErrorKind::NoDevice, "PortBusy"),
            (ErrorKind::Io(io::ErrorKind::NotFound), "NotFound"),
            (ErrorKind::Io(io::ErrorKind::PermissionDenied), "PermissionDenied"),
            (ErrorKind::Io(io::ErrorKind::Other), "Serial"),
            (ErrorKind::Unknown, "Serial"),
        ];
        for (kind, expected) in cases {
            let mapped = open_error(path, &tokio_serial::Error::new(kind, "the OS said no"));
            let name = format!("{mapped:?}");
            assert!(name.starts_with(expected), "{kind:?} became {name}");
            assert!(mapped.to_string().contains("/dev/ttyUSB7"), "{mapped}");
        }
        let serial = open_error(path, &tokio_serial::Error::new(ErrorKind::Unknown, "the OS said no"));
        assert!(serial.to_string().contains("the OS said no"), "{serial}");
    }
}
