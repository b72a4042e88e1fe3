//! The pure per-device poll: sends each request an [`Exchange`] plans, waits for its reply up to a timeout,
//! retries, keeps the bus quiet between requests, drains the extra frames a Daly board may still send, and
//! collects the resulting snapshot with every request's failure.
//!
//! Time is an input (quinn-proto's `handle_*`/`poll_*` shape): the driver calls [`Session::poll_transmit`] to
//! get bytes to write, [`Session::handle_bytes`] with what it read, and [`Session::handle_timeout`] when
//! [`Session::poll_timeout`] has passed. Nothing here reads a clock or touches a port, so every timing rule is
//! tested with simulated time.
//!
//! Optional requests (reads a device may not know, which it ignores in silence) do not wait out the full reply
//! timeout: the session learns the device's turnaround from its answers ([`ReplyTimes`], which the caller keeps
//! for the life of the device's worker) and gives them [`ReplyTimes::short_timeout`] instead.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use crate::model::{DeviceSnapshot, Sections};
use crate::protocol::{DecodeError, Exchange, Outgoing, Progress};

/// Timing and retry rules of a poll (the configuration's `defaults:`, per device overridable).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Settings {
    /// How long to wait for a complete reply after sending a request.
    pub timeout: Duration,
    /// How many times a request is sent again after its first attempt failed.
    pub retries: u32,
    /// Quiet time on the bus between the end of one exchange and the next request.
    pub request_gap: Duration,
    /// Silence that ends a reply whose length is not known in advance (about 100 ms for a Daly burst:
    /// `docs/protocols/daly-a5.md#multi-frame-replies`).
    pub drain_quiet: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(1),
            retries: 3,
            request_gap: Duration::from_millis(50),
            drain_quiet: Duration::from_millis(100),
        }
    }
}

/// The least an optional request waits for its reply beyond the wire time of the request and of the reply: a
/// board's turnaround wanders (a busy board answers late), and a reply cut off by a short wait would cost more
/// than the wait saves.
pub const SHORT_TIMEOUT_FLOOR: Duration = Duration::from_millis(150);

/// How many recent turnarounds [`ReplyTimes`] keeps; its estimate is the largest of them.
pub const TURNAROUND_SAMPLES: usize = 8;

/// What one device's replies have shown of its turnaround (the time from the end of a request on the wire to the
/// first byte of its reply), and the wire time of a byte on its link. The caller keeps one per device for the
/// life of its worker and lends it to each [`Session`] ([`Session::with_reply_times`]); sessions add what they
/// measure.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReplyTimes {
    /// The line's baud rate (a byte is ten bit times, 8N1 or 7E1); `None` when the link does not tell (TCP,
    /// Bluetooth): wire time then counts as zero, and the turnaround measured includes it.
    baud: Option<u32>,
    /// The latest turnarounds, oldest first.
    recent: VecDeque<Duration>,
}

impl ReplyTimes {
    /// Nothing learned yet, on a link running at `baud` (`None`: unknown, wire time counts as zero).
    #[must_use]
    pub fn new(baud: Option<u32>) -> Self {
        Self { baud: baud.filter(|b| *b > 0), recent: VecDeque::with_capacity(TURNAROUND_SAMPLES) }
    }

    /// How long `bytes` bytes take on the wire.
    #[must_use]
    pub fn wire_time(&self, bytes: usize) -> Duration {
        let Some(baud) = self.baud else { return Duration::ZERO };
        let nanos = (bytes as u128).saturating_mul(10_000_000_000) / u128::from(baud);
        Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX))
    }

    /// Take in one measured turnaround, forgetting the oldest beyond [`TURNAROUND_SAMPLES`].
    pub fn learn(&mut self, turnaround: Duration) {
        if self.recent.len() >= TURNAROUND_SAMPLES {
            self.recent.pop_front();
        }
        self.recent.push_back(turnaround);
    }

    /// The estimated turnaround: the largest of the recent ones (a robust upper estimate, which a single fast
    /// reply cannot pull down); `None` before any reply.
    #[must_use]
    pub fn turnaround(&self) -> Option<Duration> {
        self.recent.iter().max().copied()
    }

    /// How long an optional request of `request` bytes, whose reply is about `reply` bytes long, waits for that
    /// reply: its wire time, plus twice the estimated turnaround but at least [`SHORT_TIMEOUT_FLOOR`], plus the
    /// reply's wire time; never more than `normal`, and `normal` itself while nothing has been learned. (Once a
    /// reply starts to arrive, the session waits for it to finish whatever the timeout.)
    #[must_use]
    pub fn short_timeout(&self, request: usize, reply: usize, normal: Duration) -> Duration {
        let Some(turnaround) = self.turnaround() else { return normal };
        let allowance = SHORT_TIMEOUT_FLOOR.max(turnaround.saturating_mul(2));
        (self.wire_time(request) + allowance + self.wire_time(reply)).min(normal)
    }
}

/// Why a request failed; [`PollError::reason`] is the `reason` label of `bms_poll_failures_total`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PollError {
    /// Nothing that answers the request arrived in time.
    #[error("no reply within {timeout:?}")]
    Timeout {
        /// The reply timeout.
        timeout: Duration,
    },
    /// Bytes arrived, but no valid reply among them; the most telling rejection.
    #[error("no valid reply: {0}")]
    Invalid(DecodeError),
    /// The device answered with a refusal (Modbus exception, Pace error code).
    #[error("the device refused the command: {0}")]
    Refused(DecodeError),
    /// The link failed (port gone, connection reset).
    #[error("link failed: {0}")]
    Io(String),
    /// Not sent: the device stopped answering earlier in the poll, or the link was lost.
    #[error("not sent: {0}")]
    Skipped(&'static str),
}

impl PollError {
    /// The bounded `reason` label: timeout, checksum, truncated, unexpected_reply, io, decode, implausible,
    /// echo; `not_sent` for a request that was never sent (see [`PollError::is_failure`]).
    #[must_use]
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Timeout { .. } => "timeout",
            Self::Invalid(e) | Self::Refused(e) => e.reason(),
            Self::Io(_) => "io",
            Self::Skipped(_) => "not_sent",
        }
    }

    /// Whether this counts in `bms_poll_failures_total`: a request never sent because the link had already
    /// failed is not a failure of its own (the link failure is counted once, as `io`).
    #[must_use]
    pub fn is_failure(&self) -> bool {
        !matches!(self, Self::Skipped(_))
    }
}

/// One request that did not get a valid answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestFailure {
    /// What the request asked ([`Outgoing::label`]).
    pub label: String,
    /// How many times it was sent.
    pub attempts: u32,
    /// Why it failed (after the last attempt).
    pub error: PollError,
}

/// The outcome of one poll.
#[derive(Debug, Clone, PartialEq)]
pub struct PollReport {
    /// What the device reported (cached values included; packs that did not answer are marked offline).
    pub device: DeviceSnapshot,
    /// Requests that completed with a valid reply.
    pub answered: u32,
    /// Requests that failed, in order.
    pub failures: Vec<RequestFailure>,
    /// Optional requests the device did not answer (it does not know them); not failures.
    pub unsupported: Vec<String>,
    /// Request frames written, retries included.
    pub requests_sent: u32,
    /// Bytes written.
    pub bytes_sent: u64,
    /// Bytes read (replies, echoes, noise and late frames alike).
    pub bytes_received: u64,
    /// Bytes skipped while looking for frames during this poll.
    pub skipped_bytes: u64,
    /// When the first request could be sent.
    pub started: Instant,
    /// When the poll ended.
    pub finished: Instant,
}

impl PollReport {
    /// Wall time of the poll.
    #[must_use]
    pub fn duration(&self) -> Duration {
        self.finished.saturating_duration_since(self.started)
    }

    /// Whether every request was answered.
    #[must_use]
    pub fn succeeded(&self) -> bool {
        self.answered > 0 && self.failures.is_empty()
    }
}

/// Where the poll stands.
#[derive(Debug, Clone)]
enum State {
    /// The next request (or a retry of `current`) goes out at `send_at`.
    Gap { send_at: Instant },
    /// `current` is on the wire; its reply is awaited until `deadline`.
    Waiting { deadline: Instant, last_byte: Option<Instant>, settling: bool },
    /// Nothing more to send.
    Done,
}

/// The request in flight.
#[derive(Debug, Clone)]
struct Current {
    outgoing: Outgoing,
    attempts: u32,
    heard: bool,
    /// When the latest attempt went out, and how long it waits for its reply.
    sent_at: Option<Instant>,
    timeout: Duration,
    /// Bytes received since the latest attempt went out.
    received: usize,
}

/// One poll of one device. See the module documentation.
#[derive(Debug)]
pub struct Session<'e> {
    exchange: &'e mut dyn Exchange,
    settings: Settings,
    state: State,
    current: Option<Current>,
    report: PollReport,
    skipped_at_start: u64,
    /// The device's reply times, learned across polls.
    times: ReplyTimes,
    /// Every request gets the short timeout of optional ones (`detect`, once another protocol answered).
    probing: bool,
}

impl<'e> Session<'e> {
    /// Begin a poll of `exchange` limited to `sections`; the first request may go out at `not_before` (the
    /// driver passes the end of the bus's last exchange plus the request gap).
    pub fn new(exchange: &'e mut dyn Exchange, sections: Sections, settings: Settings, not_before: Instant) -> Self {
        exchange.begin_poll(sections);
        let skipped_at_start = exchange.skipped_bytes();
        let report = PollReport {
            device: DeviceSnapshot::default(),
            answered: 0,
            failures: Vec::new(),
            unsupported: Vec::new(),
            requests_sent: 0,
            bytes_sent: 0,
            bytes_received: 0,
            skipped_bytes: 0,
            started: not_before,
            finished: not_before,
        };
        let mut session = Self {
            exchange,
            settings,
            state: State::Gap { send_at: not_before },
            current: None,
            report,
            skipped_at_start,
            times: ReplyTimes::default(),
            probing: false,
        };
        session.advance(not_before);
        session
    }

    /// Continue with an exchange the caller has already started (e.g. `DalyExchange::begin_write` for the `set`
    /// command) instead of beginning a poll of some sections.
    pub fn resume(exchange: &'e mut dyn Exchange, settings: Settings, not_before: Instant) -> Self {
        let skipped_at_start = exchange.skipped_bytes();
        let report = PollReport {
            device: DeviceSnapshot::default(),
            answered: 0,
            failures: Vec::new(),
            unsupported: Vec::new(),
            requests_sent: 0,
            bytes_sent: 0,
            bytes_received: 0,
            skipped_bytes: 0,
            started: not_before,
            finished: not_before,
        };
        let mut session = Self {
            exchange,
            settings,
            state: State::Gap { send_at: not_before },
            current: None,
            report,
            skipped_at_start,
            times: ReplyTimes::default(),
            probing: false,
        };
        session.advance(not_before);
        session
    }

    /// The protocol the device speaks, for logs that cut its bytes into frames.
    #[must_use]
    pub fn protocol(&self) -> crate::protocol::Protocol {
        self.exchange.protocol()
    }

    /// Use (and add to) what earlier polls learned of this device's reply times; without it the session starts
    /// from nothing, so optional requests wait the full timeout until the device has answered something.
    #[must_use]
    pub fn with_reply_times(mut self, times: ReplyTimes) -> Self {
        self.times = times;
        self
    }

    /// Give every request the short timeout of optional ones (without the reply's wire time: the first byte
    /// tells whether anything answers), retries included: for `detect`, which tries other protocols on a link
    /// where one device has already answered, so silence is the expected answer.
    #[must_use]
    pub fn probing(mut self) -> Self {
        self.probing = true;
        self
    }

    /// The reply times as learned so far (the caller keeps them for the next poll of the same device).
    #[must_use]
    pub fn reply_times(&self) -> &ReplyTimes {
        &self.times
    }

    /// The label of the request in flight or due next, for logs.
    #[must_use]
    pub fn current_label(&self) -> Option<&str> {
        self.current.as_ref().map(|c| c.outgoing.label.as_str())
    }

    /// Bytes to write now, if a request is due; the reply timeout starts at `now`.
    pub fn poll_transmit(&mut self, now: Instant) -> Option<Vec<u8>> {
        let State::Gap { send_at } = self.state else { return None };
        if now < send_at {
            return None;
        }
        let current = self.current.as_mut()?;
        let normal = self.settings.timeout;
        let request_len = current.outgoing.bytes.len();
        let timeout = if current.outgoing.optional {
            self.times.short_timeout(request_len, current.outgoing.reply_len, normal)
        } else if self.probing {
            // A probe asks whether anything answers at all: the first byte tells, and a reply that has begun is
            // waited for whatever its length (the drain time), so the reply's wire time is not added.
            self.times.short_timeout(request_len, 0, normal)
        } else {
            normal
        };
        current.attempts += 1;
        current.sent_at = Some(now);
        current.timeout = timeout;
        current.received = 0;
        self.report.requests_sent += 1;
        self.report.bytes_sent += current.outgoing.bytes.len() as u64;
        self.state = State::Waiting { deadline: now + timeout, last_byte: None, settling: false };
        Some(current.outgoing.bytes.clone())
    }

    /// Bytes read from the link at `now`. Between requests they are late frames or noise and are dropped.
    pub fn handle_bytes(&mut self, now: Instant, bytes: &[u8]) {
        self.report.bytes_received += bytes.len() as u64;
        let State::Waiting { deadline, .. } = self.state else { return };
        if let Some(current) = self.current.as_mut() {
            current.heard |= !bytes.is_empty();
            current.received += bytes.len();
        }
        let progress = self.exchange.handle_bytes(bytes);
        self.state = State::Waiting { deadline, last_byte: Some(now), settling: false };
        self.on_progress(now, progress);
    }

    /// When [`Session::handle_timeout`] should be called next (`None` once the poll is done).
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        match self.state {
            State::Gap { send_at } => Some(send_at),
            // A settling reply is judged once the line has been quiet for the drain time; the deadline cannot
            // end it sooner (bytes that still stream in extend it), so waking at the deadline would only
            // find nothing to do, again and again when the deadline is already past.
            State::Waiting { last_byte: Some(last), settling: true, .. } => Some(last + self.settings.drain_quiet),
            State::Waiting { deadline, last_byte, .. } => {
                // A reply still streaming in at the deadline gets the drain time to finish.
                Some(last_byte.map_or(deadline, |last| deadline.max(last + self.settings.drain_quiet)))
            }
            State::Done => None,
        }
    }

    /// Time has reached `now`: settle a quiet reply, or give up on (or retry) the request in flight.
    pub fn handle_timeout(&mut self, now: Instant) {
        let State::Waiting { deadline, last_byte, settling } = self.state else { return };
        if settling && last_byte.is_some_and(|last| now >= last + self.settings.drain_quiet) {
            // Settled once: whatever the exchange makes of the quiet, only new bytes or the deadline come next.
            // (Staying in `settling` would ask again at once, forever.)
            self.state = State::Waiting { deadline, last_byte, settling: false };
            let progress = match self.exchange.handle_quiet() {
                Progress::Settling => Progress::Pending,
                other => other,
            };
            self.on_progress(now, progress);
            return;
        }
        let streaming_until = last_byte.map_or(deadline, |last| deadline.max(last + self.settings.drain_quiet));
        if now < deadline || now < streaming_until {
            return;
        }
        let rejection = self.exchange.clear_reply();
        let Some(current) = self.current.as_ref() else { return };
        if current.outgoing.optional {
            // Sent once: a board that does not know the command stays silent, and that is an answer too.
            self.exchange.handle_unanswered();
            if let Some(current) = self.current.take() {
                self.report.unsupported.push(current.outgoing.label);
            }
            self.state = State::Gap { send_at: now + self.settings.request_gap };
            self.advance(now);
            return;
        }
        if current.attempts <= self.settings.retries {
            self.state = State::Gap { send_at: now + self.settings.request_gap };
            return;
        }
        let error = rejection.map_or(PollError::Timeout { timeout: current.timeout }, PollError::Invalid);
        let heard = current.heard;
        self.fail_current(error);
        if !heard {
            self.exchange.abandon_target();
        }
        self.state = State::Gap { send_at: now + self.settings.request_gap };
        self.advance(now);
    }

    /// The link failed at `now` (or was down before the poll began): one `io` failure for the request in
    /// flight, or the first one due, and every later request is marked not sent.
    pub fn handle_link_error(&mut self, now: Instant, message: &str) {
        if self.current.is_none() {
            self.advance(now);
        }
        self.fail_current(PollError::Io(message.to_owned()));
        while let Some(outgoing) = self.exchange.next_request() {
            self.report.failures.push(RequestFailure {
                label: outgoing.label,
                attempts: 0,
                error: PollError::Skipped("the link failed"),
            });
        }
        self.state = State::Done;
        // The link may fail before the first request was due (during the gap): the poll then took no time.
        self.report.finished = now.max(self.report.started);
    }

    /// Whether the poll has ended.
    #[must_use]
    pub fn is_done(&self) -> bool {
        matches!(self.state, State::Done)
    }

    /// The report of the poll (call once [`Session::is_done`]; earlier, the requests not yet answered are
    /// simply missing from the snapshot).
    #[must_use]
    pub fn finish(mut self) -> PollReport {
        self.report.device = self.exchange.snapshot();
        self.report.skipped_bytes = self.exchange.skipped_bytes().saturating_sub(self.skipped_at_start);
        self.report
    }

    fn on_progress(&mut self, now: Instant, progress: Progress) {
        match progress {
            Progress::Pending => {}
            Progress::Settling => {
                if let State::Waiting { deadline, last_byte, .. } = self.state {
                    self.state = State::Waiting { deadline, last_byte, settling: true };
                }
            }
            Progress::Complete => {
                self.learn_turnaround();
                self.report.answered += 1;
                self.current = None;
                self.state = State::Gap { send_at: now + self.settings.request_gap };
                self.advance(now);
            }
            Progress::Unsupported => {
                // A refusal is an answer too, and as quick to come as any.
                self.learn_turnaround();
                if let Some(current) = self.current.take() {
                    self.report.unsupported.push(current.outgoing.label);
                }
                self.state = State::Gap { send_at: now + self.settings.request_gap };
                self.advance(now);
            }
            Progress::Refused(error) => {
                self.learn_turnaround();
                self.fail_current(PollError::Refused(error));
                self.state = State::Gap { send_at: now + self.settings.request_gap };
                self.advance(now);
            }
            Progress::Retry(error) => {
                // The reply is complete and was rejected: waiting out the timeout would only delay the retry.
                let error = self.exchange.clear_reply().unwrap_or(error);
                let Some(current) = self.current.as_ref() else { return };
                self.state = State::Gap { send_at: now + self.settings.request_gap };
                if current.attempts > self.settings.retries {
                    self.fail_current(PollError::Invalid(error));
                    self.advance(now);
                }
            }
        }
    }

    /// The request in flight was answered (or refused): its turnaround is the time from sending it to the reply's last byte,
    /// less the wire time of the request and of every byte received (an echo of the request included, which
    /// makes the estimate err short by one request's wire time, covered by the short timeout's margin).
    fn learn_turnaround(&mut self) {
        let (Some(current), State::Waiting { last_byte: Some(last), .. }) = (self.current.as_ref(), &self.state) else {
            return;
        };
        let Some(sent_at) = current.sent_at else { return };
        let wire = self.times.wire_time(current.outgoing.bytes.len().saturating_add(current.received));
        let turnaround = last.saturating_duration_since(sent_at).saturating_sub(wire);
        self.times.learn(turnaround);
    }

    fn fail_current(&mut self, error: PollError) {
        if let Some(current) = self.current.take() {
            self.report.failures.push(RequestFailure {
                label: current.outgoing.label,
                attempts: current.attempts,
                error,
            });
        }
    }

    /// Take the next request from the exchange, or end the poll at `now`.
    fn advance(&mut self, now: Instant) {
        if self.current.is_some() {
            return;
        }
        if let Some(outgoing) = self.exchange.next_request() {
            let timeout = self.settings.timeout;
            self.current = Some(Current { outgoing, attempts: 0, heard: false, sent_at: None, timeout, received: 0 });
        } else {
            self.state = State::Done;
            self.report.finished = now;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn the_short_timeout_is_the_full_one_until_a_reply_and_stays_between_its_bounds() {
        let normal = Duration::from_secs(1);
        let mut times = ReplyTimes::new(Some(9600));
        assert_eq!(times.wire_time(96), Duration::from_millis(100), "ten bit times a byte");
        assert_eq!(times.short_timeout(13, 65, normal), normal, "nothing learned yet");
        // A fast board: the floor, plus the wire time of request and reply.
        times.learn(20 * MS);
        assert_eq!(
            times.short_timeout(13, 65, normal),
            times.wire_time(13) + SHORT_TIMEOUT_FLOOR + times.wire_time(65)
        );
        // A slower board: twice its slowest recent turnaround.
        times.learn(120 * MS);
        times.learn(30 * MS);
        assert_eq!(times.turnaround(), Some(120 * MS));
        assert_eq!(times.short_timeout(13, 13, normal), times.wire_time(13) + 240 * MS + times.wire_time(13));
        // Never more than the normal timeout.
        times.learn(Duration::from_secs(2));
        assert_eq!(times.short_timeout(13, 13, normal), normal);
        // Old samples are forgotten: the slow one leaves after TURNAROUND_SAMPLES faster ones.
        for _ in 0..TURNAROUND_SAMPLES {
            times.learn(10 * MS);
        }
        assert_eq!(times.turnaround(), Some(10 * MS));
        // A link without a known baud rate counts no wire time.
        let mut tcp = ReplyTimes::new(None);
        tcp.learn(10 * MS);
        assert_eq!(tcp.short_timeout(13, 65, normal), SHORT_TIMEOUT_FLOOR);
    }
}
