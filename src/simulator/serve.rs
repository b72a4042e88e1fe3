//! Serving a simulated bus over a pseudo-terminal or TCP, with wire timing: the one place in the simulator
//! that does I/O and reads the clock. Requests are paced as an 8N1 line at `--baud` would carry them, the
//! board waits `--latency-ms` before answering, replies leave byte by byte at line speed, and the fault plan
//! decides what goes wrong.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};
use tokio::net::TcpListener;
use tokio::time::{Instant, sleep, sleep_until};
use tokio_serial::SerialPort as _;

use super::Responder;
use super::fault::FaultPlan;
use crate::model::DeviceSnapshot;

/// Line and board timing.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Timing {
    /// Line speed in baud (8N1: ten bit times per byte); 0 sends at full speed.
    pub baud: u32,
    /// The board's turnaround between the last request byte and the first reply byte.
    pub latency: Duration,
}

impl Timing {
    /// Wire time of `bytes` bytes at this line speed.
    #[must_use]
    pub fn wire_time(&self, bytes: usize) -> Duration {
        if self.baud == 0 {
            return Duration::ZERO;
        }
        Duration::from_secs_f64(bytes as f64 * 10.0 / f64::from(self.baud))
    }
}

/// Where the simulator listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    /// A pseudo-terminal whose slave side is symlinked at this path.
    Pty(PathBuf),
    /// A TCP listener, like a transparent serial server.
    Tcp(String),
}

/// Everything the serving loop needs besides the device.
#[derive(Debug)]
pub struct ServeOptions {
    /// Line timing.
    pub timing: Timing,
    /// Faults to inject.
    pub faults: FaultPlan,
    /// Where to keep the true state as JSON ([`TruthFile`]), rewritten after every answered request.
    pub truth: Option<PathBuf>,
    /// Simulated seconds per wall second (0 freezes the battery, for exact comparisons in tests).
    pub time_scale: f64,
}

/// What happened on the line, for the log and the tests' expectations.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LineStats {
    /// Requests recognised.
    pub requests: u64,
    /// Replies sent (including faulty ones).
    pub replies: u64,
    /// Bytes read from the client (requests, and anything else it sent).
    pub bytes_in: u64,
    /// Bytes written.
    pub bytes_out: u64,
}

impl std::fmt::Display for LineStats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // One `key=value` line, so scripts/measure-bus.sh can add up what crossed the line.
        write!(
            f,
            "requests={} replies={} bytes_in={} bytes_out={}",
            self.requests, self.replies, self.bytes_in, self.bytes_out
        )
    }
}

/// The one simulated bus that every client shares, like the RS-485 line behind a serial server: the lock is
/// held from a request's turn until its reply has left, so requests from different clients take turns.
struct Bus {
    device: Box<dyn Responder>,
    options: ServeOptions,
    /// When the battery model was last advanced.
    last_step: Instant,
    /// A `silent` fault struck: the board answers nobody until then.
    silent_until: Option<Instant>,
    /// When the last reply finished on the wire: a request waiting for its turn goes out after it.
    free_at: Instant,
    /// What crossed the line for each client still connected, by peer.
    clients: BTreeMap<String, LineStats>,
}

/// The bus, shared by the tasks serving its clients.
type SharedBus = std::sync::Arc<tokio::sync::Mutex<Bus>>;

impl Bus {
    fn shared(device: Box<dyn Responder>, options: ServeOptions) -> SharedBus {
        let now = Instant::now();
        let bus = Self { device, options, last_step: now, silent_until: None, free_at: now, clients: BTreeMap::new() };
        std::sync::Arc::new(tokio::sync::Mutex::new(bus))
    }

    fn write_truth(&self) -> anyhow::Result<()> {
        write_truth(self.device.as_ref(), &self.options.faults, self.options.truth.as_deref())
    }

    fn stats(&mut self, peer: &str) -> &mut LineStats {
        self.clients.entry(peer.to_owned()).or_default()
    }
}

/// Serve `device` at `endpoint` until the process is stopped. Over TCP, any number of clients may connect (and
/// reconnect) at once; their requests are answered one at a time, as a serial server shares its one line. On a
/// PTY the link stays up for the program's life.
pub async fn serve(device: Box<dyn Responder>, endpoint: &Endpoint, options: ServeOptions) -> anyhow::Result<()> {
    write_truth(device.as_ref(), &options.faults, options.truth.as_deref())?;
    let bus = Bus::shared(device, options);
    match endpoint {
        Endpoint::Pty(link) => {
            let (master, slave) = tokio_serial::SerialStream::pair().context("creating a pseudo-terminal pair")?;
            let slave_path = slave.name().context("the pseudo-terminal has no name")?;
            let slave_path = PathBuf::from(slave_path);
            replace_symlink(&slave_path, link)?;
            eprintln!("simulator: {} → {}", link.display(), slave_path.display());
            // Keep the slave open: without an opener the master reads EIO whenever a client closes.
            let _slave = slave;
            let mut master = master;
            let result = tokio::select! {
                result = run_link(&bus, &mut master, "pty") => result,
                signal = shutdown_signal() => signal,
            };
            let stats = bus.lock().await.clients.remove("pty").unwrap_or_default();
            eprintln!("simulator: stopped: {stats}");
            // Leave no dangling link behind for the next run or a confused user, but only our own: someone may
            // have pointed the path elsewhere meanwhile.
            if std::fs::read_link(link).is_ok_and(|target| target == slave_path) {
                let _ = std::fs::remove_file(link);
            }
            result
        }
        Endpoint::Tcp(addr) => {
            let listener = TcpListener::bind(addr).await.with_context(|| format!("listening on {addr}"))?;
            eprintln!("simulator: listening on {}", listener.local_addr().context("local address")?);
            // Dropping the set on return aborts the clients' tasks.
            let mut tasks = tokio::task::JoinSet::new();
            loop {
                let accepted = tokio::select! {
                    accepted = listener.accept() => accepted,
                    signal = shutdown_signal() => {
                        // Clients still connected are counted as gone too, so the counts add up.
                        for (peer, stats) in std::mem::take(&mut bus.lock().await.clients) {
                            eprintln!("simulator: client {peer} gone: {stats}");
                        }
                        return signal;
                    }
                };
                let (mut stream, peer) = accepted.context("accepting a connection")?;
                let peer = peer.to_string();
                eprintln!("simulator: client {peer} connected");
                let bus = std::sync::Arc::clone(&bus);
                tasks.spawn(async move {
                    let result = run_link(&bus, &mut stream, &peer).await;
                    if let Err(error) = result {
                        // One client's broken connection is not the server's end: the others go on.
                        eprintln!("simulator: client {peer}: {error:#}");
                    }
                    let stats = bus.lock().await.clients.remove(&peer).unwrap_or_default();
                    eprintln!("simulator: client {peer} gone: {stats}");
                });
                // Reap finished clients so the set does not grow with every reconnect.
                while tasks.try_join_next().is_some() {}
            }
        }
    }
}

/// Serve `device` on an already bound `listener` inside a larger program (the exporter's `--demo`): any number
/// of clients, one request at a time, silently, until the task is dropped (which ends the clients' tasks too).
pub async fn serve_listener(device: Box<dyn Responder>, listener: TcpListener, options: ServeOptions) {
    let bus = Bus::shared(device, options);
    let mut tasks = tokio::task::JoinSet::new();
    loop {
        let Ok((mut stream, peer)) = listener.accept().await else {
            // Out of file descriptors or similar: back off rather than spin.
            sleep(Duration::from_millis(100)).await;
            continue;
        };
        let bus = std::sync::Arc::clone(&bus);
        tasks.spawn(async move {
            let peer = peer.to_string();
            let _ = run_link(&bus, &mut stream, &peer).await;
            bus.lock().await.clients.remove(&peer);
        });
        while tasks.try_join_next().is_some() {}
    }
}

/// Resolves when the process is asked to stop (SIGINT or SIGTERM).
async fn shutdown_signal() -> anyhow::Result<()> {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("installing the SIGTERM handler")?;
    tokio::select! {
        r = tokio::signal::ctrl_c() => r.context("waiting for SIGINT"),
        _ = term.recv() => Ok(()),
    }
}

/// Answer one client's requests until it goes away or a `close` fault strikes. Each request is handled with
/// the bus locked, from taking it off the client's bytes to the last byte of its reply.
async fn run_link<L: AsyncRead + AsyncWrite + Unpin>(bus: &SharedBus, link: &mut L, peer: &str) -> anyhow::Result<()> {
    let mut pending = Vec::new();
    let mut chunk = [0u8; 512];
    loop {
        let n = match link.read(&mut chunk).await {
            Ok(0) => return Ok(()),
            Ok(n) => n,
            // A PTY master reads EIO while no client has the slave open; wait for the next one.
            Err(e) if e.raw_os_error() == Some(5) => {
                sleep(Duration::from_millis(20)).await;
                continue;
            }
            Err(e) => return Err(e).context("reading from the link"),
        };
        let arrived = Instant::now();
        let mut guard = bus.lock().await;
        let bus = &mut *guard;
        bus.stats(peer).bytes_in += n as u64;
        pending.extend_from_slice(chunk.get(..n).unwrap_or_default());
        while let Some(request) = bus.device.next_request(&mut pending) {
            bus.stats(peer).requests += 1;
            let now = Instant::now();
            bus.device.step(now.duration_since(bus.last_step).as_secs_f64() * bus.options.time_scale);
            bus.last_step = now;
            if bus.silent_until.is_some_and(|until| now < until) {
                continue;
            }
            let Some(response) = bus.device.respond(&request) else { continue };
            let outcome = bus.options.faults.apply(&request, response, &*bus.device);
            if outcome.silence_s > 0.0 {
                bus.silent_until = Some(now + Duration::from_secs_f64(outcome.silence_s));
                bus.write_truth()?;
                continue;
            }
            if outcome.close {
                bus.write_truth()?;
                return Ok(());
            }
            // The request goes on the wire when the line is free (another client's reply may still have been
            // on it); the board sees its last byte after its wire time, then turns around.
            let timing = bus.options.timing;
            let start = arrived.max(bus.free_at) + timing.wire_time(request.len()) + timing.latency;
            sleep_until(start + Duration::from_secs_f64(outcome.delay_s)).await;
            write_paced(link, &outcome.bytes, timing).await?;
            bus.free_at = Instant::now();
            let stats = bus.stats(peer);
            stats.replies += 1;
            stats.bytes_out += outcome.bytes.len() as u64;
            bus.write_truth()?;
        }
    }
}

/// Write `bytes` at line speed: each chunk leaves when the line would have finished the bytes before it.
async fn write_paced<L: AsyncWrite + Unpin>(link: &mut L, bytes: &[u8], timing: Timing) -> anyhow::Result<()> {
    let start = Instant::now();
    // About 2 ms of wire time per write keeps pacing accurate without a syscall per byte.
    let per_chunk = if timing.baud == 0 { bytes.len().max(1) } else { (timing.baud as usize / 5000).max(1) };
    let mut sent = 0;
    for piece in bytes.chunks(per_chunk) {
        link.write_all(piece).await.context("writing to the link")?;
        sent += piece.len();
        sleep_until(start + timing.wire_time(sent)).await;
    }
    link.flush().await.context("flushing the link")?;
    Ok(())
}

/// The truth file's document: the true state as the model holds it (`packs`, as [`DeviceSnapshot`] serialises)
/// and, beside it, the faults injected so far by kind (`faults`: every configured kind, 0 until it strikes).
#[derive(Debug, serde::Serialize)]
pub struct TruthFile<'a> {
    /// The true state.
    #[serde(flatten)]
    pub device: DeviceSnapshot,
    /// Faults injected so far, by kind name.
    pub faults: &'a BTreeMap<&'static str, u64>,
}

/// Rewrite the truth file atomically (write a sibling, then rename), so readers never see half a document.
fn write_truth(device: &dyn Responder, faults: &FaultPlan, path: Option<&Path>) -> anyhow::Result<()> {
    let Some(path) = path else { return Ok(()) };
    let truth = TruthFile { device: device.truth(), faults: faults.counts() };
    let json = serde_json::to_vec_pretty(&truth).context("encoding the truth file")?;
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, json).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("renaming {} to {}", tmp.display(), path.display()))
}

/// Point `link` at `target`, replacing a stale symlink but never a regular file nor a link to a live device.
///
/// A link whose target exists as a character device belongs to someone: a running simulator's pseudo-terminal
/// (devpts removes `/dev/pts/N` once its master is closed, so a dead simulator's link dangles) or a real serial
/// port. Taking it over would cut that simulator off from its clients and delete its link when we stop.
fn replace_symlink(target: &Path, link: &Path) -> anyhow::Result<()> {
    match std::fs::symlink_metadata(link) {
        Ok(meta) if meta.file_type().is_symlink() => {
            let current = std::fs::read_link(link).unwrap_or_default();
            // metadata() follows the link: it fails for a dangling one.
            if std::fs::metadata(link).is_ok_and(|m| std::os::unix::fs::FileTypeExt::is_char_device(&m.file_type())) {
                anyhow::bail!(
                    "{} points at {}, which is live (a running simulator's pseudo-terminal or a serial port); \
                     stop the simulator that owns it, remove the link, or choose another --pty path",
                    link.display(),
                    current.display()
                );
            }
            std::fs::remove_file(link).with_context(|| format!("removing the old link {}", link.display()))?;
        }
        Ok(_) => anyhow::bail!("{} exists and is not a symlink; refusing to replace it", link.display()),
        Err(_) => {}
    }
    // Created, not overwritten: a simulator starting at the same moment makes one of the two fail here.
    std::os::unix::fs::symlink(target, link).with_context(|| format!("creating {}", link.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_time_is_ten_bit_times_per_byte() {
        let t = Timing { baud: 9600, latency: Duration::ZERO };
        assert_eq!(t.wire_time(96).as_micros(), 100_000);
        assert_eq!(Timing { baud: 0, ..t }.wire_time(1000), Duration::ZERO);
    }

    #[test]
    fn a_regular_file_is_never_replaced_by_the_pty_link() {
        let dir = std::env::temp_dir().join(format!("bms-sim-link-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("plain");
        std::fs::write(&file, "keep").unwrap();
        let err = replace_symlink(Path::new("/dev/null"), &file).unwrap_err();
        assert!(err.to_string().contains("not a symlink"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_stale_link_is_replaced_but_a_link_to_a_live_device_is_not() {
        let dir = std::env::temp_dir().join(format!("bms-sim-live-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let link = dir.join("link");
        // A dead simulator's link dangles: it is taken over.
        std::os::unix::fs::symlink(dir.join("gone"), &link).unwrap();
        replace_symlink(&dir.join("plain"), &link).unwrap();
        assert_eq!(std::fs::read_link(&link).unwrap(), dir.join("plain"));
        // A link to something that is no terminal (here a regular file) is stale too.
        std::fs::write(dir.join("plain"), "x").unwrap();
        replace_symlink(Path::new("/dev/null"), &link).unwrap();
        assert_eq!(std::fs::read_link(&link).unwrap(), Path::new("/dev/null"));
        // A link to a character device that exists is someone's: refused, and left as it was.
        let err = replace_symlink(&dir.join("plain"), &link).unwrap_err();
        assert!(err.to_string().contains("points at /dev/null, which is live"), "{err}");
        assert_eq!(std::fs::read_link(&link).unwrap(), Path::new("/dev/null"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
