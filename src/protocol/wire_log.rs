//! Received bytes cut into the pieces the debug log shows: each complete frame, each echo of our request and
//! each rejected chunk as one hex string that `bms_exporter decode` takes as it is, however the link chunked
//! them (a serial port at 9600 baud hands them over a byte or two at a time).
//!
//! Pure, like the rest of the protocol layer: the driver feeds it what it sent and read and logs what comes out.
//! The cutting follows the protocol's own framing for the request in flight; a request it cannot read back
//! (a write it does not know) leaves the bytes uncut, logged as one piece when the next request goes out.

use std::fmt;

use super::deframer::{Framing, Scan};
use super::{DecodeError, Protocol, daly, daly_modbus, pace, sinowealth, to_hex};

/// One piece of what was received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Piece {
    /// A complete frame that passed its checks.
    Frame(Vec<u8>),
    /// Our own request, looped back by a half-duplex adapter.
    Echo(Vec<u8>),
    /// Bytes that are no frame (garbage, a cut or damaged frame), with the first reason the framing gave.
    Rejected(Vec<u8>, Option<DecodeError>),
    /// Bytes received while the protocol's framing was unknown, as they came.
    Unframed(Vec<u8>),
}

impl fmt::Display for Piece {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The hex is always a word of its own, so a double click selects exactly what `decode` takes.
        match self {
            Self::Frame(bytes) | Self::Unframed(bytes) => write!(f, "rx {}", to_hex(bytes)),
            Self::Echo(bytes) => write!(f, "rx echo {}", to_hex(bytes)),
            Self::Rejected(bytes, Some(why)) => write!(f, "rx rejected {} ({why})", to_hex(bytes)),
            Self::Rejected(bytes, None) => write!(f, "rx rejected {}", to_hex(bytes)),
        }
    }
}

/// Cuts one link's received bytes into [`Piece`]s.
pub struct WireLog {
    protocol: Protocol,
    framing: Option<Box<dyn Framing + Send>>,
    buf: Vec<u8>,
    rejected: Vec<u8>,
    reason: Option<DecodeError>,
}

impl fmt::Debug for WireLog {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The framing is a trait object without Debug; whether there is one is what matters.
        f.debug_struct("WireLog")
            .field("protocol", &self.protocol)
            .field("framed", &self.framing.is_some())
            .field("buf", &self.buf)
            .field("rejected", &self.rejected)
            .field("reason", &self.reason)
            .finish()
    }
}

impl WireLog {
    /// A log for a link that speaks `protocol`; nothing is framed until the first request is sent.
    #[must_use]
    pub fn new(protocol: Protocol) -> Self {
        Self { protocol, framing: None, buf: Vec::new(), rejected: Vec::new(), reason: None }
    }

    /// `request` is about to be sent: returns what is left of the previous reply (a cut frame, trailing
    /// garbage), and frames what follows as replies to `request`.
    pub fn sent(&mut self, request: &[u8]) -> Vec<Piece> {
        let left = self.finish();
        self.framing = framing(self.protocol, request);
        left
    }

    /// Bytes read from the link: returns every piece they complete.
    pub fn received(&mut self, bytes: &[u8]) -> Vec<Piece> {
        self.buf.extend_from_slice(bytes);
        let mut pieces = Vec::new();
        let Some(framing) = self.framing.as_deref() else { return pieces };
        loop {
            let start = self.buf.iter().position(|&b| framing.is_start(b)).unwrap_or(self.buf.len());
            self.rejected.extend(self.buf.drain(..start));
            if self.buf.is_empty() {
                break;
            }
            let (len, echo) = match framing.scan(&self.buf) {
                Scan::Incomplete { .. } => break,
                Scan::Frame { len } => (len, false),
                Scan::Echo { len } => (len, true),
                Scan::Invalid(error) => {
                    // As the deframer does: the candidate costs one byte, the search goes on after it.
                    self.reason.get_or_insert(error);
                    self.rejected.extend(self.buf.drain(..1));
                    continue;
                }
            };
            let len = len.clamp(1, self.buf.len());
            if !self.rejected.is_empty() {
                pieces.push(Piece::Rejected(std::mem::take(&mut self.rejected), self.reason.take()));
            }
            let frame: Vec<u8> = self.buf.drain(..len).collect();
            pieces.push(if echo { Piece::Echo(frame) } else { Piece::Frame(frame) });
        }
        pieces
    }

    /// No more bytes will come for this request (the next is sent, or the poll ended): whatever is buffered
    /// is a rejected chunk (or, with no framing, the reply as it came).
    pub fn finish(&mut self) -> Vec<Piece> {
        let rest = std::mem::take(&mut self.buf);
        if self.framing.is_none() {
            return if rest.is_empty() { Vec::new() } else { vec![Piece::Unframed(rest)] };
        }
        if let (Some(&first), None) = (rest.first(), self.reason) {
            // A frame start that never completed: say so, as `decode` would.
            if self.framing.as_deref().is_some_and(|f| f.is_start(first)) {
                let need = match self.framing.as_deref().map(|f| f.scan(&rest)) {
                    Some(Scan::Incomplete { need }) => need,
                    _ => rest.len(),
                };
                self.reason = Some(DecodeError::Truncated { have: rest.len(), need });
            }
        }
        self.rejected.extend(rest);
        self.take_rejected().into_iter().collect()
    }

    fn take_rejected(&mut self) -> Option<Piece> {
        let reason = self.reason.take();
        (!self.rejected.is_empty()).then(|| Piece::Rejected(std::mem::take(&mut self.rejected), reason))
    }
}

/// The protocol's reply framing for `request`, if the request reads back as one of the protocol's.
fn framing(protocol: Protocol, request: &[u8]) -> Option<Box<dyn Framing + Send>> {
    match protocol {
        Protocol::Daly => Some(Box::new(daly::A5Framing)),
        Protocol::Pace => Some(Box::new(pace::PaceFraming::with_request(request))),
        Protocol::DalyModbus => {
            let (map, request) = daly_modbus::decode_request(request).ok()?;
            Some(Box::new(daly_modbus::ModbusFraming::new(map, Some(request))))
        }
        Protocol::Sinowealth => {
            let register = sinowealth::decode_request(request).ok()?;
            Some(Box::new(sinowealth::ReplyFraming::new(register)))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::daly::{Address, Command, Filler, Request};

    fn soc_request() -> Vec<u8> {
        Request::read(Command::Soc, Address::Rs485, Filler::Zero).encode().to_vec()
    }

    /// A valid 0x90 reply from board 1 (the README's decode example).
    fn soc_reply() -> Vec<u8> {
        crate::protocol::parse_hex("a5019008020300007724033819").unwrap()
    }

    #[test]
    fn a_reply_fed_byte_by_byte_is_one_frame() {
        let mut log = WireLog::new(Protocol::Daly);
        assert!(log.sent(&soc_request()).is_empty());
        let mut pieces = Vec::new();
        for byte in soc_reply() {
            pieces.extend(log.received(&[byte]));
        }
        assert_eq!(pieces, [Piece::Frame(soc_reply())]);
        assert_eq!(pieces[0].to_string(), "rx a5019008020300007724033819");
        assert!(log.finish().is_empty());
    }

    #[test]
    fn garbage_a_damaged_frame_and_an_echo_are_pieces_of_their_own() {
        let mut log = WireLog::new(Protocol::Daly);
        log.sent(&soc_request());
        let mut damaged = soc_reply();
        damaged[12] ^= 0xff;
        let mut stream = vec![0x00, 0x11];
        stream.extend(&damaged);
        stream.extend(soc_request());
        stream.extend(soc_reply());
        let pieces = log.received(&stream);
        let mut expected_rejected = vec![0x00, 0x11];
        expected_rejected.extend(&damaged);
        assert_eq!(pieces.len(), 3, "{pieces:?}");
        assert!(
            matches!(&pieces[0], Piece::Rejected(bytes, Some(DecodeError::Checksum { .. })) if *bytes == expected_rejected)
        );
        assert_eq!(pieces[1], Piece::Echo(soc_request()));
        assert_eq!(pieces[2], Piece::Frame(soc_reply()));
    }

    #[test]
    fn a_cut_frame_is_reported_as_truncated_when_the_next_request_goes_out() {
        let mut log = WireLog::new(Protocol::Daly);
        log.sent(&soc_request());
        assert!(log.received(&soc_reply()[..9]).is_empty());
        let left = log.sent(&soc_request());
        assert_eq!(
            left,
            [Piece::Rejected(soc_reply()[..9].to_vec(), Some(DecodeError::Truncated { have: 9, need: 13 }))]
        );
        assert_eq!(left[0].to_string(), "rx rejected a50190080203000077 (truncated frame: 9 of 13 bytes)");
    }

    #[test]
    fn without_a_request_the_bytes_come_out_whole_at_the_end() {
        let mut log = WireLog::new(Protocol::Sinowealth);
        assert!(log.received(&[1, 2]).is_empty());
        assert!(log.received(&[3]).is_empty());
        assert_eq!(log.finish(), [Piece::Unframed(vec![1, 2, 3])]);
    }
}
