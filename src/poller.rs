//! One worker task per bus (a serial path, a TCP endpoint or a Bluetooth module): it owns the port, runs every
//! device's poll on it one after the other with the bus's quiet gap, reopens the link when a poll finds it down (at most once
//! per [`RECONNECT_INTERVAL`], waiting for that moment when the caller's deadline allows), and answers [`BusHandle::snapshot`] requests. A request accepts any poll that finished no earlier than
//! `max_age` before it was asked, so callers that arrive while a poll runs share that poll (single-flight).
//!
//! Writes ([`BusHandle::write`], for MQTT control) run on the same worker between polls, over the same link,
//! through the guarded path of [`crate::control::apply`]: nothing else ever opens a second path to a device.
//!
//! [`drive`] is the loop that feeds a pure [`Session`] from a [`Link`]; the `set` command uses it directly.
//!
//! A configuration reload retires a worker ([`BusHandle::retire`]) between two jobs and gets back its port and
//! devices, so [`respawn`] can start the bus's new worker on the same open link with the exchanges and running
//! totals of the devices that did not change.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::sync::{mpsc, oneshot};
use tokio::time::{Instant, sleep_until, timeout};

use crate::control::{self, Action, Clock, WriteOutcome};
use crate::model::energy::Energy;
use crate::model::{Retained, Sections};
use crate::protocol::wire_log::{Piece, WireLog};
use crate::protocol::{Exchange, Protocol, to_hex};
use crate::session::{PollReport, ReplyTimes, RequestFailure, Session, Settings};
use crate::transport::{self, Link, TransportSettings};

/// The shortest time between two failed attempts to open a bus's link. Polls run only when a caller asks, so a
/// device that comes back is seen by the first scrape after it (that scrape waits for the next permitted
/// attempt if its deadline allows), while a device that stays away costs at most one attempt (and one log
/// line) per interval, however many scrapes and probes arrive.
pub const RECONNECT_INTERVAL: Duration = Duration::from_secs(2);

/// One device on a bus.
#[derive(Debug)]
pub struct DeviceSpec {
    /// The configured name (the `device` label).
    pub name: String,
    /// The protocol side of its polls.
    pub exchange: Box<dyn Exchange>,
    /// What each poll asks for.
    pub sections: Sections,
}

/// A bus: one port and the devices behind it.
#[derive(Debug)]
pub struct BusSpec {
    /// How to open the port.
    pub transport: TransportSettings,
    /// Timing and retries of every poll on this bus.
    pub settings: Settings,
    /// The devices, polled in this order.
    pub devices: Vec<DeviceSpec>,
    /// The configured `stale_after`: the longest interval between two polls that the energy counters
    /// integrate. A value older than that is unknown, so integrating across a longer gap would be a guess.
    pub stale_after: Duration,
}

/// What is known about one device after its latest poll: the report and the running totals for `/metrics`.
#[derive(Debug, Clone)]
pub struct DeviceStatus {
    /// The configured name.
    pub name: String,
    /// The latest poll (its snapshot holds only what that poll and the caches provided).
    pub last: PollReport,
    /// Every value any poll provided, each with the time it was last confirmed (what `/metrics` serves).
    pub values: Retained,
    /// Unix time when the latest poll ended.
    pub last_poll_unix: f64,
    /// Unix time of the latest poll in which every request was answered.
    pub last_success_unix: Option<f64>,
    /// Polls run.
    pub polls_total: u64,
    /// Failed requests by reason.
    pub failures_total: BTreeMap<&'static str, u64>,
    /// Bytes skipped while looking for frames.
    pub resync_bytes_total: u64,
    /// Charged and discharged energy and charge per pack, integrated from the values of consecutive polls that
    /// got answers; in memory only, so every total starts at 0 when the exporter starts.
    pub energy: Energy,
}

/// The worker has stopped (its task ended or panicked); no snapshot can be had from it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the bus worker has stopped")]
pub struct WorkerGone;

/// Why a write was not run, or did not complete.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WriteError {
    /// The worker has stopped.
    #[error("the bus worker has stopped")]
    Gone,
    /// No device has this index on the bus.
    #[error("there is no device {0} on this bus")]
    NoDevice(usize),
    /// The device does not speak the Daly A5 protocol, the only one whose writes this program sends.
    #[error("{device} speaks {protocol}; only Daly A5 boards (protocol daly) accept writes")]
    NotDaly {
        /// The device's name.
        device: String,
        /// The protocol it speaks.
        protocol: Protocol,
    },
    /// None of the device's configured boards serves this pack.
    #[error("{device} has no board for pack {pack}")]
    NoSuchPack {
        /// The device's name.
        device: String,
        /// The pack asked for.
        pack: u8,
    },
    /// The same action for the same pack is already queued or running; this one was dropped unsent.
    #[error("the same command for this pack is already queued or running")]
    Duplicate,
    /// The action cannot be encoded (an SOC outside 0–100).
    #[error("{0}")]
    Invalid(String),
    /// The link failed while sending or reading back; whether the BMS took the command is unknown.
    #[error("{0}")]
    Failed(String),
}

/// A write that ran: the verdict, and the device's status after its read-back was recorded.
#[derive(Debug, Clone)]
pub struct Written {
    /// The acknowledgement, the verdict and the read-back poll.
    pub outcome: WriteOutcome,
    /// The device's status with the read-back recorded (what the next scrape or publish serves).
    pub status: Arc<DeviceStatus>,
}

/// Writes queued or running, by `(device, pack, action)`: a repeat of one of them is dropped, not queued again.
type Pending = Arc<Mutex<Vec<(usize, u8, Action)>>>;

/// Holds a write's place in [`Pending`] from the moment it is queued until the worker is done with it (or drops
/// it), so a caller that stops waiting does not free the slot of a write that still runs.
#[derive(Debug)]
struct PendingSlot {
    pending: Pending,
    key: (usize, u8, Action),
}

impl PendingSlot {
    /// Take the slot for `key`, or `None` when an equal write is already pending.
    fn take(pending: &Pending, key: (usize, u8, Action)) -> Option<Self> {
        let mut list = pending.lock().unwrap_or_else(PoisonError::into_inner);
        if list.contains(&key) {
            return None;
        }
        list.push(key);
        Some(Self { pending: Arc::clone(pending), key })
    }
}

impl Drop for PendingSlot {
    fn drop(&mut self) {
        let mut list = self.pending.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(at) = list.iter().position(|k| *k == self.key) {
            list.swap_remove(at);
        }
    }
}

/// A write request to the worker.
#[derive(Debug)]
struct WriteAsk {
    device: usize,
    pack: u8,
    action: Action,
    reply: oneshot::Sender<Result<Written, WriteError>>,
    /// Released by the worker once the write is done, before it answers.
    _slot: PendingSlot,
}

/// What the worker is asked to do.
#[derive(Debug)]
enum Job {
    /// Serve a snapshot (polling when needed).
    Snapshot(Ask),
    /// Send a write, read back and record the result.
    Write(WriteAsk),
    /// Stop after the jobs queued before this one, handing back the port and the devices.
    Retire(oneshot::Sender<Retired>),
}

/// What a retired worker hands back: its port (with the link, open or not) and every device with its exchange
/// (caches and plan) and latest status (running totals, retained values, energy). Dropping it closes the link
/// (a Bluetooth bridge then unsubscribes and disconnects its module).
#[derive(Debug)]
pub struct Retired {
    port: Port,
    devices: Vec<(DeviceSpec, Option<Arc<DeviceStatus>>)>,
}

impl Retired {
    /// How the port was opened.
    #[must_use]
    pub fn transport(&self) -> &TransportSettings {
        &self.port.transport
    }
}

/// A request to the worker.
#[derive(Debug)]
struct Ask {
    device: usize,
    max_age: Duration,
    asked_at: Instant,
    /// When the caller stops waiting (`None`: it waits for the poll, however long).
    deadline: Option<Instant>,
    reply: oneshot::Sender<Arc<DeviceStatus>>,
}

/// The latest status of each device on a bus, written by its worker after every poll.
type Latest = Arc<[Mutex<Option<Arc<DeviceStatus>>>]>;

/// The status in `latest` of device `device`.
fn read(latest: &Latest, device: usize) -> Option<Arc<DeviceStatus>> {
    latest.get(device).and_then(|slot| slot.lock().unwrap_or_else(PoisonError::into_inner).clone())
}

/// A cheap, cloneable handle to a bus worker.
#[derive(Debug, Clone)]
pub struct BusHandle {
    tx: mpsc::Sender<Job>,
    names: Arc<[String]>,
    latest: Latest,
    /// Per device, the packs whose boards accept writes (empty for every protocol but Daly A5).
    writable: Arc<[Vec<u8>]>,
    pending: Pending,
}

impl BusHandle {
    /// The names of the devices on this bus, by index.
    #[must_use]
    pub fn devices(&self) -> &[String] {
        &self.names
    }

    /// The status after the latest poll of device `device` that has ended, without asking for one (`None`
    /// before its first poll ends). A caller that stopped waiting for a poll sees its result here once it ends,
    /// so a poll longer than a scrape's deadline still refreshes what the next scrape serves.
    #[must_use]
    pub fn latest(&self, device: usize) -> Option<Arc<DeviceStatus>> {
        read(&self.latest, device)
    }

    /// The packs of device `device` that accept writes: the boards of a Daly A5 device, none for other protocols
    /// (or an unknown index).
    #[must_use]
    pub fn writable_packs(&self, device: usize) -> &[u8] {
        self.writable.get(device).map_or(&[], Vec::as_slice)
    }

    /// Run `action` on pack `pack` of device `device` through the worker, between its polls and over its link:
    /// the frame is logged, sent once, and read back after the action's settle time, and the read-back is
    /// recorded as the device's latest status. A repeat of a write that is still queued or running is dropped
    /// ([`WriteError::Duplicate`]) rather than sent twice. Only Daly A5 devices accept writes.
    pub async fn write(&self, device: usize, pack: u8, action: Action) -> Result<Written, WriteError> {
        let Some(slot) = PendingSlot::take(&self.pending, (device, pack, action)) else {
            return Err(WriteError::Duplicate);
        };
        let (reply, rx) = oneshot::channel();
        let ask = WriteAsk { device, pack, action, reply, _slot: slot };
        self.tx.send(Job::Write(ask)).await.map_err(|_| WriteError::Gone)?;
        rx.await.map_err(|_| WriteError::Gone)?
    }

    /// The status of device `device` after a poll that ended no more than `max_age` before this call; runs a
    /// poll if there is none, or joins the one in progress.
    pub async fn snapshot(&self, device: usize, max_age: Duration) -> Result<Arc<DeviceStatus>, WorkerGone> {
        self.ask(device, max_age, None).await
    }

    /// [`BusHandle::snapshot`] for a caller that stops waiting at `deadline`: a poll that finds the link down
    /// waits for the next permitted reconnect attempt only if that comes before `deadline`. The caller still
    /// bounds its own wait (the poll itself may take longer).
    pub async fn snapshot_until(
        &self,
        device: usize,
        max_age: Duration,
        deadline: Instant,
    ) -> Result<Arc<DeviceStatus>, WorkerGone> {
        self.ask(device, max_age, Some(deadline)).await
    }

    async fn ask(
        &self,
        device: usize,
        max_age: Duration,
        deadline: Option<Instant>,
    ) -> Result<Arc<DeviceStatus>, WorkerGone> {
        let (reply, rx) = oneshot::channel();
        let ask = Ask { device, max_age, asked_at: Instant::now(), deadline, reply };
        self.tx.send(Job::Snapshot(ask)).await.map_err(|_| WorkerGone)?;
        rx.await.map_err(|_| WorkerGone)
    }

    /// Stop the worker once the jobs queued before this call are done (a poll in progress ends normally), and
    /// take back its port and devices; `None` when the worker had already stopped. Jobs queued after this one
    /// are dropped unanswered: their callers see [`WorkerGone`] and serve the latest status, as for a worker that
    /// stopped. Other handles still read [`BusHandle::latest`].
    pub async fn retire(&self) -> Option<Retired> {
        let (reply, rx) = oneshot::channel();
        self.tx.send(Job::Retire(reply)).await.ok()?;
        rx.await.ok()
    }
}

/// Start the worker for `spec` on the current tokio runtime. It stops when every handle is dropped.
#[must_use]
pub fn spawn(spec: BusSpec) -> BusHandle {
    let latest: Latest = spec.devices.iter().map(|_| Mutex::new(None)).collect();
    let port = Port { transport: spec.transport.clone(), link: None, retry_at: None, last_error: None };
    start(spec, port, latest)
}

/// Start the worker for `spec` in place of the retired worker of the same bus: the open link is taken over when
/// the transport settings are equal (otherwise it is closed first, so the new one can open the port), and each
/// device named in `keep` that the retired worker had takes over its exchange and latest status, so its counters
/// continue and its last snapshot is served without a gap. Every other device starts afresh.
#[must_use]
pub fn respawn(mut spec: BusSpec, retired: Retired, keep: &[&str]) -> BusHandle {
    let Retired { port, devices: mut old } = retired;
    let port = if port.transport == spec.transport {
        Port { retry_at: None, ..port }
    } else {
        drop(port);
        Port { transport: spec.transport.clone(), link: None, retry_at: None, last_error: None }
    };
    let mut latest = Vec::with_capacity(spec.devices.len());
    for device in &mut spec.devices {
        let taken = keep
            .contains(&device.name.as_str())
            .then(|| old.iter().position(|(d, _)| d.name == device.name))
            .flatten()
            .map(|at| old.swap_remove(at));
        match taken {
            Some((previous, status)) => {
                *device = previous;
                latest.push(Mutex::new(status));
            }
            None => latest.push(Mutex::new(None)),
        }
    }
    start(spec, port, latest.into())
}

/// Start the worker task for `spec` on `port`, with `latest` as each device's starting status.
fn start(spec: BusSpec, port: Port, latest: Latest) -> BusHandle {
    let names: Arc<[String]> = spec.devices.iter().map(|d| d.name.clone()).collect();
    let writable: Arc<[Vec<u8>]> = spec
        .devices
        .iter()
        .map(|d| d.exchange.daly().map(|x| x.addresses().iter().map(|a| a.reply_board()).collect()).unwrap_or_default())
        .collect();
    let (tx, rx) = mpsc::channel(64);
    tokio::spawn(Worker::new(spec, port, Arc::clone(&latest)).run(rx));
    BusHandle { tx, names, latest, writable, pending: Pending::default() }
}

/// The link and its reconnect state.
#[derive(Debug)]
struct Port {
    transport: TransportSettings,
    link: Option<Link>,
    /// The earliest time the next attempt to open the link may be made.
    retry_at: Option<Instant>,
    last_error: Option<String>,
}

impl Port {
    /// The open link, opening it if the last attempt is [`RECONNECT_INTERVAL`] old (waiting for that moment
    /// when it comes before `deadline`); the error says why there is none.
    async fn link(&mut self, deadline: Option<Instant>) -> Result<&mut Link, String> {
        if self.link.is_none() {
            let now = Instant::now();
            if let Some(at) = self.retry_at.filter(|at| now < *at) {
                if deadline.is_some_and(|d| d <= at) {
                    let last = self.last_error.as_deref().unwrap_or("the link failed");
                    return Err(format!("{last}; next attempt in {:.1} s", (at - now).as_secs_f64()));
                }
                sleep_until(at).await;
            }
            match transport::open(&self.transport).await {
                Ok(link) => {
                    tracing::info!(transport = %self.transport.describe(), "connected");
                    self.link = Some(link);
                    self.retry_at = None;
                }
                Err(error) => {
                    let message = error.to_string();
                    self.lost(&message);
                    return Err(message);
                }
            }
        }
        self.link.as_mut().ok_or_else(|| "no link".to_owned())
    }

    /// The link failed (`message` says how). A link that was open is reopened by the next poll at once (a
    /// serial server that dropped the connection usually takes the next one); a failed attempt to open it
    /// waits [`RECONNECT_INTERVAL`].
    fn lost(&mut self, message: &str) {
        if self.link.take().is_some() {
            tracing::warn!(transport = %self.transport.describe(), error = message, "link lost");
            self.retry_at = None;
        } else {
            self.retry_at = Some(Instant::now() + RECONNECT_INTERVAL);
        }
        self.last_error = Some(message.to_owned());
    }
}

/// The worker's state.
#[derive(Debug)]
struct Worker {
    port: Port,
    settings: Settings,
    devices: Vec<DeviceSpec>,
    /// The longest interval between polls the energy counters integrate.
    stale_after: Duration,
    /// Each device's latest status, published for [`BusHandle::latest`] too.
    latest: Latest,
    /// When the poll that last used the bus ended (the quiet gap counts from there).
    bus_quiet_since: Option<Instant>,
    /// Per device, its reply times learned by every poll so far (optional reads get short timeouts from them).
    times: Vec<ReplyTimes>,
}

impl Worker {
    fn new(spec: BusSpec, port: Port, latest: Latest) -> Self {
        let times = vec![ReplyTimes::new(spec.transport.baud()); spec.devices.len()];
        Self {
            times,
            port,
            settings: spec.settings,
            devices: spec.devices,
            stale_after: spec.stale_after,
            latest,
            bus_quiet_since: None,
        }
    }

    async fn run(mut self, mut rx: mpsc::Receiver<Job>) {
        while let Some(job) = rx.recv().await {
            let ask = match job {
                Job::Snapshot(ask) => ask,
                Job::Retire(reply) => {
                    let latest: Vec<_> = (0..self.devices.len()).map(|i| read(&self.latest, i)).collect();
                    let devices = self.devices.into_iter().zip(latest).collect();
                    // A caller that stopped waiting drops what it asked for: the link closes here.
                    let _ = reply.send(Retired { port: self.port, devices });
                    return;
                }
                Job::Write(WriteAsk { device, pack, action, reply, _slot: slot }) => {
                    let result = self.write(device, pack, action).await;
                    // Free the slot before answering: a caller woken by the answer may send the same write again
                    // at once (on another runtime thread), and must not find it still pending.
                    drop(slot);
                    // The caller may have given up waiting; the read-back is recorded all the same.
                    let _ = reply.send(result);
                    continue;
                }
            };
            let fresh = read(&self.latest, ask.device).filter(|s| {
                let finished = Instant::from_std(s.last.finished);
                finished + ask.max_age >= ask.asked_at
            });
            let status = match fresh {
                Some(status) => status,
                None => match self.poll(ask.device, ask.deadline).await {
                    Some(status) => status,
                    None => continue, // no such device: dropping the sender tells the caller
                },
            };
            // The caller may have given up waiting; that is not the worker's problem.
            let _ = ask.reply.send(status);
        }
    }

    /// Send `action` to the board serving pack `pack` of device `index` over this bus's link, read back, and
    /// record the read-back as the device's latest status (a poll of the sections the action changes).
    async fn write(&mut self, index: usize, pack: u8, action: Action) -> Result<Written, WriteError> {
        let device = self.devices.get(index).ok_or(WriteError::NoDevice(index))?;
        let name = device.name.clone();
        let Some(daly) = device.exchange.daly() else {
            return Err(WriteError::NotDaly { device: name, protocol: device.exchange.protocol() });
        };
        // A fresh exchange for that one board: the read-back asks only it, and the device's own exchange keeps
        // its poll plan and caches untouched.
        let Some((address, mut exchange)) = daly.for_pack(pack) else {
            return Err(WriteError::NoSuchPack { device: name, pack });
        };
        let unix = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_secs());
        let request =
            action.request(address, Clock::from_unix(unix)).map_err(|e| WriteError::Invalid(e.to_string()))?;
        let link = self.port.link(None).await.map_err(WriteError::Failed)?;
        // The bus's quiet gap holds for writes as for polls: some boards miss a frame that follows too closely.
        if let Some(quiet) = self.bus_quiet_since {
            sleep_until(quiet + self.settings.request_gap).await;
        }
        drain(link).await;
        tracing::info!(
            device = %name,
            pack,
            action = %action.describe(),
            frame = %to_hex(&request.encode()),
            "sending a write"
        );
        let result = control::apply(link, &mut exchange, action, request, self.settings).await;
        self.bus_quiet_since = Some(Instant::now());
        let outcome = match result {
            Ok(outcome) => outcome,
            Err(error) => {
                // `apply` fails only when the link does: reopen it on the next use, as a poll would.
                let message = format!("{error:#}");
                self.port.lost(&message);
                return Err(WriteError::Failed(message));
            }
        };
        let previous = read(&self.latest, index);
        let status = Arc::new(record(&name, previous.as_deref(), outcome.read_back.clone(), self.stale_after));
        log_poll(&status);
        if let Some(slot) = self.latest.get(index) {
            *slot.lock().unwrap_or_else(PoisonError::into_inner) = Some(Arc::clone(&status));
        }
        Ok(Written { outcome, status })
    }

    /// Poll device `index` now and record the result; `deadline` is when the asking caller stops waiting.
    async fn poll(&mut self, index: usize, deadline: Option<Instant>) -> Option<Arc<DeviceStatus>> {
        let device = self.devices.get_mut(index)?;
        // A wait for the next reconnect attempt comes before the poll's start, not inside its duration.
        let linked = self.port.link(deadline).await;
        // The gap counts from the bus's last exchange, but a poll never starts in the past: its duration is
        // reported as `bms_poll_duration_seconds`.
        let now = Instant::now();
        let not_before = self.bus_quiet_since.map_or(now, |t| (t + self.settings.request_gap).max(now));
        let times = self.times.get(index).cloned().unwrap_or_default();
        let mut session = Session::new(device.exchange.as_mut(), device.sections, self.settings, not_before.into_std())
            .with_reply_times(times);
        match linked {
            Ok(link) => {
                drain(link).await;
                match drive(link, &mut session).await {
                    Ok(()) => {}
                    Err(message) => self.port.lost(&message),
                }
            }
            Err(message) => session.handle_link_error(Instant::now().into_std(), &message),
        }
        if let Some(times) = self.times.get_mut(index) {
            session.reply_times().clone_into(times);
        }
        let report = session.finish();
        self.bus_quiet_since = Some(Instant::now());
        let previous = read(&self.latest, index);
        let status = Arc::new(record(&device.name, previous.as_deref(), report, self.stale_after));
        log_poll(&status);
        if let Some(slot) = self.latest.get(index) {
            *slot.lock().unwrap_or_else(PoisonError::into_inner) = Some(Arc::clone(&status));
        }
        Some(status)
    }
}

/// Fold a poll report into the running totals of a device; `max_gap` is the longest interval since the
/// previous poll that the energy counters integrate.
fn record(name: &str, previous: Option<&DeviceStatus>, report: PollReport, max_gap: Duration) -> DeviceStatus {
    let now = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64());
    let mut failures_total = previous.map(|p| p.failures_total.clone()).unwrap_or_default();
    let mut values = previous.map(|p| p.values.clone()).unwrap_or_default();
    let mut energy = previous.map(|p| p.energy.clone()).unwrap_or_default();
    // A poll that got no answer holds only what the exchange had cached (counts, identity): nothing in it was
    // confirmed now, so it must not keep those values fresh.
    if report.answered > 0 {
        values.update(&report.device, now);
        // This poll's own values (frame-checked and plausible), never the retained ones: those may be old, and
        // integrating an old value as if it were now would invent energy.
        energy.update(&report.device, now, max_gap.as_secs_f64());
    }
    for failure in report.failures.iter().filter(|f| f.error.is_failure()) {
        *failures_total.entry(failure.error.reason()).or_default() += 1;
    }
    DeviceStatus {
        name: name.to_owned(),
        last_poll_unix: now,
        last_success_unix: if report.succeeded() { Some(now) } else { previous.and_then(|p| p.last_success_unix) },
        polls_total: previous.map_or(0, |p| p.polls_total) + 1,
        failures_total,
        resync_bytes_total: previous.map_or(0, |p| p.resync_bytes_total) + report.skipped_bytes,
        values,
        energy,
        last: report,
    }
}

fn log_poll(status: &DeviceStatus) {
    let report = &status.last;
    for RequestFailure { label, attempts, error } in &report.failures {
        tracing::debug!(device = %status.name, request = %label, attempts, %error, "request failed");
    }
    if report.succeeded() {
        tracing::debug!(device = %status.name, duration_ms = report.duration().as_millis(), "poll ok");
    } else {
        let first = report.failures.first().map(|f| format!("{}: {}", f.label, f.error)).unwrap_or_default();
        tracing::warn!(device = %status.name, failed = report.failures.len(), answered = report.answered, first = %first, "poll incomplete");
    }
}

/// Read and drop whatever the link already holds (late frames of an earlier poll), without waiting.
async fn drain(link: &mut Link) {
    let mut buf = [0u8; 256];
    // A zero timeout still polls the read once: ready bytes are taken, an empty line returns at once.
    while let Ok(Ok(n)) = timeout(Duration::ZERO, link.read(&mut buf)).await {
        if n == 0 {
            break;
        }
        tracing::trace!(bytes = n, "drained stale bytes before the poll");
    }
}

/// Run `session` over `link` until it is done. `Err` carries the link failure (the session has already
/// recorded it); the caller drops the link and reconnects later.
pub async fn drive(link: &mut Link, session: &mut Session<'_>) -> Result<(), String> {
    let mut wire = WireTrace::new(session.protocol());
    let result = drive_logged(link, session, &mut wire).await;
    wire.log(WireLog::finish);
    result
}

/// The debug log of what crossed the link, one line per frame (a serial port hands bytes over one or two at a
/// time), built only when that log is on.
struct WireTrace(Option<WireLog>);

impl WireTrace {
    fn new(protocol: Protocol) -> Self {
        Self(tracing::enabled!(target: "bms_exporter::wire", tracing::Level::DEBUG).then(|| WireLog::new(protocol)))
    }

    fn log(&mut self, step: impl FnOnce(&mut WireLog) -> Vec<Piece>) {
        if let Some(log) = self.0.as_mut() {
            for piece in step(log) {
                tracing::debug!(target: "bms_exporter::wire", "{piece}");
            }
        }
    }
}

async fn drive_logged(link: &mut Link, session: &mut Session<'_>, wire: &mut WireTrace) -> Result<(), String> {
    let mut buf = [0u8; 512];
    loop {
        let now = Instant::now();
        while let Some(bytes) = session.poll_transmit(now.into_std()) {
            let label = session.current_label().unwrap_or_default().to_owned();
            // The end of the previous reply first (a cut frame, trailing bytes), then what is sent.
            wire.log(|log| log.sent(&bytes));
            tracing::debug!(target: "bms_exporter::wire", request = %label, "tx {}", to_hex(&bytes));
            let written = match link.write_all(&bytes).await {
                Ok(()) => link.flush().await,
                Err(e) => Err(e),
            };
            if let Err(error) = written {
                let message = format!("writing to the link: {error}");
                session.handle_link_error(Instant::now().into_std(), &message);
                return Err(message);
            }
        }
        let Some(timer) = session.poll_timeout() else { return Ok(()) };
        tokio::select! {
            read = link.read(&mut buf) => {
                let message = match read {
                    Ok(0) => "the link was closed by the other end".to_owned(),
                    Ok(n) => {
                        let bytes = buf.get(..n).unwrap_or_default();
                        wire.log(|log| log.received(bytes));
                        session.handle_bytes(Instant::now().into_std(), bytes);
                        continue;
                    }
                    Err(error) => format!("reading from the link: {error}"),
                };
                session.handle_link_error(Instant::now().into_std(), &message);
                return Err(message);
            }
            () = sleep_until(Instant::from_std(timer)) => session.handle_timeout(Instant::now().into_std()),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use tokio::net::TcpListener;

    use super::*;

    /// The one bus of a configuration of Daly boards `addresses` (named `d<N>`) behind the TCP endpoint `address`.
    fn bus(address: &str, addresses: &[u8]) -> BusSpec {
        use std::fmt::Write as _;
        let mut text = "defaults: {timeout: 20ms, retries: 0}\ndevices:\n".to_owned();
        for n in addresses {
            let _ = writeln!(text, "  - {{name: d{n}, protocol: daly, tcp: '{address}', daly: {{address: {n}}}}}");
        }
        let config = crate::config::parse(&text, Path::new("test.yaml")).unwrap();
        config.buses().into_iter().next().unwrap()
    }

    #[tokio::test]
    async fn a_retired_workers_link_and_kept_statuses_go_to_its_successor() {
        // A serial server that accepts and never answers: every poll fails, but is counted.
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap().to_string();
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = Arc::clone(&accepted);
        tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((stream, _)) = listener.accept().await {
                count.fetch_add(1, Ordering::SeqCst);
                held.push(stream);
            }
        });

        let first = spawn(bus(&address, &[1, 2]));
        assert_eq!(first.snapshot(0, Duration::ZERO).await.unwrap().polls_total, 1);
        assert_eq!(first.snapshot(1, Duration::ZERO).await.unwrap().polls_total, 1);
        let retired = first.retire().await.unwrap();
        assert!(retired.port.link.is_some(), "the link comes back open");
        assert_eq!(first.snapshot(0, Duration::ZERO).await.unwrap_err(), WorkerGone);
        assert!(first.retire().await.is_none(), "a worker retires once");
        assert_eq!(first.latest(0).unwrap().polls_total, 1, "what it published stays readable");

        // d1 stays, d2 goes, d3 is new.
        let second = respawn(bus(&address, &[1, 3]), retired, &["d1"]);
        assert_eq!(second.devices(), ["d1", "d3"]);
        assert_eq!(second.latest(0).unwrap().polls_total, 1, "d1's status carries over");
        assert!(second.latest(1).is_none(), "d3 starts afresh");
        let again = second.snapshot(0, Duration::ZERO).await.unwrap();
        assert_eq!(again.polls_total, 2, "d1's counters continue");
        let failures = |s: &DeviceStatus| s.failures_total.values().sum::<u64>();
        assert!(
            failures(&again) > failures(&first.latest(0).unwrap()),
            "d1's failure counts go on from where they were"
        );
        assert_eq!(second.snapshot(1, Duration::ZERO).await.unwrap().polls_total, 1);
        assert_eq!(accepted.load(Ordering::SeqCst), 1, "the successor polled over the same connection");
    }
}
