//! The small trait each protocol implements so that one pure session can poll any of them: which requests a
//! poll sends (given the sections asked for and what is already known), how reply bytes are recognised as a
//! complete answer, and how the answers become a [`DeviceSnapshot`].
//!
//! An `Exchange` is long-lived: it belongs to one configured device and remembers across polls what need not be
//! asked again (Daly cell and sensor counts, identity strings, whether a Pace master answers all-packs reads).
//! It knows nothing about time, retries or the wire: the session (`crate::session`) decides when to send, how
//! long to wait and when to give up.

use std::fmt;

use super::{DecodeError, Protocol};
use crate::model::{DeviceSnapshot, Sections};

/// One request the session is to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outgoing {
    /// The request bytes, exactly as they go on the wire.
    pub bytes: Vec<u8>,
    /// What the request asks, for logs and errors (e.g. `0x95 cells board 1`).
    pub label: String,
    /// The device may not know this command at all (Daly identity reads: a board that does not know a code stays
    /// silent, `docs/protocols/daly-a5.md#identity-and-capacity-reads`): send it once, and silence is not a failure but
    /// [`Exchange::handle_unanswered`]. The session gives it a short timeout learned from the device's
    /// other replies (`crate::session::ReplyTimes`), so a board that ignores it costs little.
    pub optional: bool,
    /// The expected reply's length in bytes (its shortest form when it varies; 0 when unknown), whose wire time
    /// the short timeout of an optional request includes.
    pub reply_len: usize,
}

/// What the bytes received so far for the current request amount to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Progress {
    /// No complete reply yet: keep reading until the reply timeout.
    Pending,
    /// The reply is complete and has been taken in; move on to the next request.
    Complete,
    /// Enough has arrived to be useful, but more frames may still come (a Daly multi-frame reply whose frame
    /// count is unknown): the session calls [`Exchange::handle_quiet`] once the line has been quiet for its
    /// drain time, or earlier bytes arrive and are handled as usual.
    Settling,
    /// A complete, valid reply that refuses the request (Modbus exception, Pace RTN error): do not retry.
    Refused(DecodeError),
    /// A complete reply passed the wire's checks but was rejected (values that cannot be physical,
    /// [`crate::protocol::plausible`]): nothing more is coming for this attempt, so the session sends the request
    /// again now, as a retry that counts, instead of waiting out the reply timeout first.
    Retry(DecodeError),
    /// A valid refusal the exchange has taken in as knowledge, not a failure: the device lacks an optional
    /// read (identity registers) or a fallback has been planned in its place (Daly Modbus 62-register block,
    /// Pace pack-by-pack reads). Move on; the exchange will not ask it again.
    Unsupported,
}

/// A protocol's side of a poll. See the module documentation.
pub trait Exchange: Send + fmt::Debug {
    /// The protocol spoken.
    fn protocol(&self) -> Protocol;

    /// Start a poll limited to `sections`: plan its requests from what is already known. Values cached from
    /// earlier polls (counts, identity) are kept and appear in the snapshot of this poll too.
    fn begin_poll(&mut self, sections: Sections);

    /// The next request of the poll, or `None` when the poll is done. Called once the previous request was
    /// completed or given up; a request may depend on the replies before it (cell count before cells).
    fn next_request(&mut self) -> Option<Outgoing>;

    /// Bytes received while the current request is outstanding, in any chunking. Frames that do not answer
    /// it (echoes, stale replies, bad checksums) are rejected inside and remembered for [`Exchange::clear_reply`].
    fn handle_bytes(&mut self, bytes: &[u8]) -> Progress;

    /// The line has been quiet for the drain time after [`Progress::Settling`]: accept what arrived.
    fn handle_quiet(&mut self) -> Progress;

    /// An optional request got no valid reply: the device may not know it. The exchange decides when (or
    /// whether) to ask again (Daly: after two misses in a row, only rarely). The default does nothing.
    fn handle_unanswered(&mut self) {}

    /// Forget any partial reply to the current request (before a retry, or before giving it up) and return the
    /// most telling rejection seen since the request was sent, if any — the reason a timeout is reported as a
    /// checksum or unexpected-reply failure rather than silence.
    fn clear_reply(&mut self) -> Option<DecodeError>;

    /// The device the current request addresses has not answered it at all, even after retries: drop the
    /// rest of this poll's requests to that device (other boards or packs on the bus still get theirs), so a
    /// dead device costs one request's timeouts, not every request's. The default drops nothing.
    fn abandon_target(&mut self) {}

    /// Bytes skipped while looking for frames, since this exchange was created (for `bms_resync_bytes_total`).
    fn skipped_bytes(&self) -> u64;

    /// Everything known after the poll: replies of this poll applied to the model, plus cached values.
    fn snapshot(&self) -> DeviceSnapshot;

    /// The Daly A5 exchange this is, if it is one: only those boards accept writes, and the bus worker builds a
    /// write's exchange from it (same addresses and decode options). The default: not a Daly A5 device.
    fn daly(&self) -> Option<&super::daly::exchange::DalyExchange> {
        None
    }
}

/// An optional read left unanswered in this many polls in a row is taken as unknown to the device and no longer
/// sent (one miss may be a device busy at that moment: the session waits only a short time for optional reads).
pub const GIVE_UP_MISSES: u32 = 2;

/// An optional read given up is sent once more after this many polls (about 25 minutes at a 15 s scrape
/// interval), in case the misses were bad luck: it then costs one short timeout per interval.
pub const REPROBE_POLLS: u32 = 100;

/// One optional read's record on one device, kept by its exchange for the life of the worker: whether the
/// read is still worth sending ([`GIVE_UP_MISSES`], [`REPROBE_POLLS`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OptionalRead {
    misses: u32,
    polls_since_reprobe: u32,
}

impl OptionalRead {
    /// Whether to send the read in the poll being planned; call once per poll that would send it.
    pub fn due(&mut self) -> bool {
        if self.misses < GIVE_UP_MISSES {
            return true;
        }
        self.polls_since_reprobe = self.polls_since_reprobe.saturating_add(1);
        let due = self.polls_since_reprobe >= REPROBE_POLLS;
        if due {
            self.polls_since_reprobe = 0;
        }
        due
    }

    /// The read went unanswered in this poll.
    pub fn missed(&mut self) {
        self.misses = self.misses.saturating_add(1);
    }

    /// The read was answered: any misses before were bad luck.
    pub fn answered(&mut self) {
        *self = Self::default();
    }
}

/// The most telling rejection seen since a request was sent, for [`Exchange::clear_reply`]: a reply that passed
/// every check of the wire but holds values that cannot be physical tells most (it is the device's reply, read
/// wrong), a frame that was there but wrong (checksum, other command, other device) more than a cut frame, and a
/// cut frame more than the echo of our own request, which half-duplex adapters produce on every request.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Rejections {
    most_telling: Option<DecodeError>,
}

impl Rejections {
    /// Remember `error` unless an equally or more telling one was seen first.
    pub(crate) fn note(&mut self, error: DecodeError) {
        if self.most_telling.is_none_or(|seen| rank(&error) > rank(&seen)) {
            self.most_telling = Some(error);
        }
    }

    /// The most telling rejection, forgetting every one seen.
    pub(crate) fn take(&mut self) -> Option<DecodeError> {
        self.most_telling.take()
    }
}

fn rank(error: &DecodeError) -> u8 {
    match error {
        DecodeError::HostEcho { .. } => 0,
        DecodeError::Truncated { .. } | DecodeError::NoFrame { .. } => 1,
        DecodeError::Implausible { .. } => 3,
        _ => 2,
    }
}

/// Helpers the exchange tests of every protocol share: a session stand-in that drives an exchange against a
/// simulated bus, and float comparisons.
#[cfg(test)]
pub(crate) mod test_support {
    use super::{Exchange, Outgoing, Progress};
    use crate::model::{PackSnapshot, Sections, SensorId};
    use crate::simulator::Responder;

    /// Run one poll the way the session does, feeding each reply through `feed`; a request the bus does not
    /// answer, or whose reply stays pending or is rejected ([`Progress::Retry`]), is given up after
    /// `clear_reply` (the stand-in does not retry), and an optional one left unanswered is reported to the
    /// exchange with `handle_unanswered`, as the session does. Returns the requests sent and the progress each ended with
    /// (`None` when given up unanswered).
    pub(crate) fn poll_with(
        exchange: &mut dyn Exchange,
        bus: &mut dyn Responder,
        sections: Sections,
        mut feed: impl FnMut(&mut dyn Exchange, &[u8]) -> Progress,
    ) -> Vec<(Outgoing, Option<Progress>)> {
        exchange.begin_poll(sections);
        let mut sent = Vec::new();
        while let Some(outgoing) = exchange.next_request() {
            let progress = match bus.respond(&outgoing.bytes) {
                Some(response) => match feed(exchange, &response.reply) {
                    Progress::Pending => None,
                    Progress::Settling => Some(exchange.handle_quiet()),
                    done => Some(done),
                },
                None => None,
            };
            if matches!(progress, None | Some(Progress::Retry(_))) {
                exchange.clear_reply();
            }
            if progress.is_none() && outgoing.optional {
                exchange.handle_unanswered();
            }
            sent.push((outgoing, progress));
            assert!(sent.len() < 1000, "the poll does not end");
        }
        sent
    }

    /// [`poll_with`] feeding each reply in one piece.
    pub(crate) fn poll(
        exchange: &mut dyn Exchange,
        bus: &mut dyn Responder,
        sections: Sections,
    ) -> Vec<(Outgoing, Option<Progress>)> {
        poll_with(exchange, bus, sections, |e, bytes| e.handle_bytes(bytes))
    }

    /// Feed `reply` cut at `cut`: the first piece must leave the reply pending, the whole must complete it.
    pub(crate) fn feed_split(exchange: &mut dyn Exchange, reply: &[u8], cut: usize) -> Progress {
        let (first, second) = reply.split_at(cut);
        assert_eq!(exchange.handle_bytes(first), Progress::Pending, "first {cut} bytes");
        exchange.handle_bytes(second)
    }

    /// Assert `a` and `b` are both known and within `tolerance`.
    pub(crate) fn close(a: Option<f64>, b: Option<f64>, tolerance: f64, what: &str) {
        let (Some(a), Some(b)) = (a, b) else { panic!("{what}: {a:?} vs {b:?}") };
        assert!((a - b).abs() <= tolerance, "{what}: {a} vs {b} (tolerance {tolerance})");
    }

    /// The reading of `sensor`, if the pack has one.
    pub(crate) fn temperature(pack: &PackSnapshot, sensor: SensorId) -> Option<f64> {
        pack.temperatures.iter().find(|t| t.sensor == sensor).map(|t| t.celsius)
    }

    /// Assert the cell voltages agree, cell by cell.
    pub(crate) fn cells_close(decoded: &PackSnapshot, truth: &PackSnapshot, tolerance: f64) {
        assert_eq!(decoded.cell_volts.len(), truth.cell_volts.len(), "cell count");
        for (i, (d, t)) in decoded.cell_volts.iter().zip(&truth.cell_volts).enumerate() {
            close(*d, *t, tolerance, &format!("cell {}", i + 1));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_optional_read_is_given_up_after_two_misses_in_a_row_and_asked_again_every_reprobe_interval() {
        let mut read = OptionalRead::default();
        for _ in 0..GIVE_UP_MISSES {
            assert!(read.due());
            read.missed();
        }
        let sent: Vec<bool> = (0..2 * REPROBE_POLLS).map(|_| read.due()).collect();
        let asked: Vec<usize> = sent.iter().enumerate().filter(|(_, s)| **s).map(|(i, _)| i + 1).collect();
        assert_eq!(asked, [REPROBE_POLLS as usize, 2 * REPROBE_POLLS as usize], "only every {REPROBE_POLLS} polls");
        // An answer (a re-probe that got one) restores it for good; one later miss alone does not give it up.
        read.answered();
        read.missed();
        assert!(read.due() && read.due());
        // A miss, an answer, a miss: never two in a row.
        let mut read = OptionalRead::default();
        read.missed();
        read.answered();
        read.missed();
        assert!(read.due());
    }

    #[test]
    fn an_implausible_reply_is_the_most_telling_rejection_whatever_the_order() {
        let checksum = DecodeError::Checksum { computed: 1, received: 2 };
        let implausible = DecodeError::Implausible { why: "cell voltage outside 0–5 V" };
        for order in [[checksum, implausible], [implausible, checksum]] {
            let mut rejections = Rejections::default();
            rejections.note(DecodeError::HostEcho { address: 0x40 });
            for error in order {
                rejections.note(error);
            }
            rejections.note(DecodeError::Truncated { have: 1, need: 13 });
            assert_eq!(rejections.take(), Some(implausible), "{order:?}");
            assert_eq!(rejections.take(), None);
        }
    }
}
