//! The pure per-device poll: sends each request an [`Exchange`] plans, waits for its reply up to a timeout,
//! retries, keeps the bus quiet between requests, drains the extra frames a Daly board may still send, and
//! collects the resulting snapshot with every request's failure.
//!
//! Time is an input (quinn-proto's `handle_*`/`poll_*` shape): the driver calls [`Session::poll_transmit`] to
//! get bytes to write, [`Session::handle_bytes`] with what it read, and [`Session::handle_timeout`] when
//! [`Session::poll_timeout`] has passed. Nothing here reads a clock or touches a port, so every timing rule is
//! tested with simulated time.

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
        };
        session.advance(not_before);
        session
    }

    /// The protocol the device speaks, for logs that cut its bytes into frames.
    #[must_use]
    pub fn protocol(&self) -> crate::protocol::Protocol {
        self.exchange.protocol()
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
        current.attempts += 1;
        self.report.requests_sent += 1;
        self.report.bytes_sent += current.outgoing.bytes.len() as u64;
        self.state = State::Waiting { deadline: now + self.settings.timeout, last_byte: None, settling: false };
        Some(current.outgoing.bytes.clone())
    }

    /// Bytes read from the link at `now`. Between requests they are late frames or noise and are dropped.
    pub fn handle_bytes(&mut self, now: Instant, bytes: &[u8]) {
        self.report.bytes_received += bytes.len() as u64;
        let State::Waiting { deadline, .. } = self.state else { return };
        if let Some(current) = self.current.as_mut() {
            current.heard |= !bytes.is_empty();
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
        let error = rejection.map_or(PollError::Timeout { timeout: self.settings.timeout }, PollError::Invalid);
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
                self.report.answered += 1;
                self.current = None;
                self.state = State::Gap { send_at: now + self.settings.request_gap };
                self.advance(now);
            }
            Progress::Unsupported => {
                if let Some(current) = self.current.take() {
                    self.report.unsupported.push(current.outgoing.label);
                }
                self.state = State::Gap { send_at: now + self.settings.request_gap };
                self.advance(now);
            }
            Progress::Refused(error) => {
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
            self.current = Some(Current { outgoing, attempts: 0, heard: false });
        } else {
            self.state = State::Done;
            self.report.finished = now;
        }
    }
}
