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
}
