//! Finds frame edges in a byte stream that arrives in any chunking (serial reads, TCP segments, BLE
//! notifications), for any protocol that implements [`Framing`].
//!
//! Garbage before a start byte is skipped; a candidate that fails its checks (bad length, bad checksum, a frame cut
//! short by the next one) costs one byte and the search goes on from the next start byte, which is what finds the good
//! frame behind a cut one (`docs/protocols/daly-a5.md#finding-frames-in-a-stream`). Every skipped byte is counted for
//! `bms_resync_bytes_total`. The buffer never holds more than one maximum-size frame plus one pushed chunk.

use super::DecodeError;

/// What a protocol's framing rules say about the bytes at the front of the buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scan {
    /// Not enough bytes to decide; at least `need` bytes in total are required.
    Incomplete {
        /// Bytes needed from the front of the buffer.
        need: usize,
    },
    /// A complete, valid frame of `len` bytes.
    Frame {
        /// Frame length in bytes.
        len: usize,
    },
    /// A complete, valid frame of `len` bytes that is our own request looped back (half-duplex adapters).
    Echo {
        /// Frame length in bytes.
        len: usize,
    },
    /// The bytes at the front are not a valid frame.
    Invalid(DecodeError),
}

/// A protocol's framing rules.
pub trait Framing {
    /// Whether `byte` can start a frame.
    fn is_start(&self, byte: u8) -> bool;
    /// Examine `buf`, whose first byte satisfies [`Framing::is_start`].
    fn scan(&self, buf: &[u8]) -> Scan;
}

/// What the deframer found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A valid frame.
    Frame(Vec<u8>),
    /// Our own request, looped back; not a reply.
    Echo(Vec<u8>),
    /// A candidate frame was rejected; one byte was skipped and the search continues.
    Rejected(DecodeError),
}

/// Buffers pushed bytes and yields frames, echoes and rejections in stream order.
#[derive(Debug, Clone)]
pub struct Deframer<F> {
    framing: F,
    buf: Vec<u8>,
    pos: usize,
    skipped: u64,
}

impl<F: Framing> Deframer<F> {
    /// A deframer with an empty buffer.
    pub fn new(framing: F) -> Self {
        Self { framing, buf: Vec::new(), pos: 0, skipped: 0 }
    }

    /// The framing rules in use.
    pub fn framing(&self) -> &F {
        &self.framing
    }

    /// Replace the framing rules (e.g. a new request to recognise as echo) and keep the buffer.
    pub fn set_framing(&mut self, framing: F) {
        self.framing = framing;
    }

    /// Append received bytes.
    pub fn push(&mut self, bytes: &[u8]) {
        if self.pos > 0 {
            // Compact lazily so skipping garbage byte by byte stays linear.
            self.buf.drain(..self.pos);
            self.pos = 0;
        }
        self.buf.extend_from_slice(bytes);
    }

    /// The next event, or `None` when more bytes are needed.
    pub fn poll(&mut self) -> Option<Event> {
        let pending = self.buf.get(self.pos..).unwrap_or_default();
        let start = pending.iter().position(|&b| self.framing.is_start(b));
        let garbage = start.unwrap_or(pending.len());
        self.consume_skipped(garbage);
        start?;
        let pending = self.buf.get(self.pos..).unwrap_or_default();
        match self.framing.scan(pending) {
            Scan::Incomplete { .. } => None,
            Scan::Frame { len } => Some(Event::Frame(self.take(len))),
            Scan::Echo { len } => Some(Event::Echo(self.take(len))),
            Scan::Invalid(error) => {
                self.consume_skipped(1);
                Some(Event::Rejected(error))
            }
        }
    }

    /// Call when no more bytes will come (reply timeout): whatever is left is a cut frame or garbage. Returns
    /// the error for a cut frame; the left bytes are counted as skipped and dropped.
    pub fn finish(&mut self) -> Option<DecodeError> {
        let pending = self.buf.get(self.pos..).unwrap_or_default();
        let error = match pending.first() {
            Some(&b) if self.framing.is_start(b) => match self.framing.scan(pending) {
                Scan::Incomplete { need } => Some(DecodeError::Truncated { have: pending.len(), need }),
                Scan::Invalid(error) => Some(error),
                Scan::Frame { .. } | Scan::Echo { .. } => None,
            },
            _ => None,
        };
        let left = pending.len();
        self.consume_skipped(left);
        error
    }

    /// Drop everything buffered without counting it (before sending a new request, the line is flushed).
    pub fn clear(&mut self) {
        self.buf.clear();
        self.pos = 0;
    }

    /// Bytes buffered and not yet consumed.
    #[must_use]
    pub fn buffered(&self) -> usize {
        self.buf.len().saturating_sub(self.pos)
    }

    /// Total bytes skipped while looking for frames.
    #[must_use]
    pub fn skipped_bytes(&self) -> u64 {
        self.skipped
    }

    fn consume_skipped(&mut self, n: usize) {
        self.pos = self.pos.saturating_add(n).min(self.buf.len());
        self.skipped = self.skipped.saturating_add(n as u64);
    }

    fn take(&mut self, len: usize) -> Vec<u8> {
        let end = self.pos.saturating_add(len).min(self.buf.len());
        let frame = self.buf.get(self.pos..end).unwrap_or_default().to_vec();
        self.pos = end;
        frame
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A toy framing: `0x7E`, a length byte, that many payload bytes, and a sum byte; `0x7E 0x00 ..` is an echo.
    struct Toy;

    impl Framing for Toy {
        fn is_start(&self, byte: u8) -> bool {
            byte == 0x7E
        }

        fn scan(&self, buf: &[u8]) -> Scan {
            let Some(&len) = buf.get(1) else { return Scan::Incomplete { need: 2 } };
            let total = usize::from(len) + 3;
            let Some(frame) = buf.get(..total) else { return Scan::Incomplete { need: total } };
            let sum = frame.iter().take(total - 1).fold(0u8, |a, &b| a.wrapping_add(b));
            if frame.last() != Some(&sum) {
                return Scan::Invalid(DecodeError::Checksum { computed: sum, received: frame[total - 1] });
            }
            if len == 0 { Scan::Echo { len: total } } else { Scan::Frame { len: total } }
        }
    }

    fn frame(payload: &[u8]) -> Vec<u8> {
        let mut f = vec![0x7E, payload.len() as u8];
        f.extend_from_slice(payload);
        f.push(f.iter().fold(0u8, |a, &b| a.wrapping_add(b)));
        f
    }

    fn drain(d: &mut Deframer<Toy>) -> Vec<Event> {
        std::iter::from_fn(|| d.poll()).collect()
    }

    #[test]
    fn garbage_is_skipped_and_counted_before_a_frame() {
        let mut d = Deframer::new(Toy);
        d.push(&[1, 2, 3]);
        d.push(&frame(&[9, 9]));
        assert_eq!(drain(&mut d), [Event::Frame(frame(&[9, 9]))]);
        assert_eq!(d.skipped_bytes(), 3);
    }

    #[test]
    fn a_cut_frame_costs_one_byte_and_the_next_frame_is_still_found() {
        let good = frame(&[5, 6, 7]);
        let mut stream = good[..4].to_vec(); // cut short
        stream.extend_from_slice(&good);
        let mut d = Deframer::new(Toy);
        d.push(&stream);
        let events = drain(&mut d);
        assert!(matches!(events.first(), Some(Event::Rejected(DecodeError::Checksum { .. }))), "{events:?}");
        assert_eq!(events.last(), Some(&Event::Frame(good)));
        assert_eq!(d.skipped_bytes(), 4);
    }

    #[test]
    fn frames_split_at_every_boundary_are_reassembled() {
        let stream = [frame(&[1]), frame(&[]), frame(&[2, 3])].concat();
        for cut in 0..=stream.len() {
            let mut d = Deframer::new(Toy);
            let mut events = Vec::new();
            d.push(&stream[..cut]);
            events.extend(drain(&mut d));
            d.push(&stream[cut..]);
            events.extend(drain(&mut d));
            assert_eq!(
                events,
                [Event::Frame(frame(&[1])), Event::Echo(frame(&[])), Event::Frame(frame(&[2, 3]))],
                "cut at {cut}"
            );
            assert_eq!(d.skipped_bytes(), 0);
        }
    }

    #[test]
    fn finish_reports_a_truncated_tail_and_empties_the_buffer() {
        let mut d = Deframer::new(Toy);
        d.push(&frame(&[1, 2, 3])[..4]);
        assert_eq!(d.poll(), None);
        assert_eq!(d.finish(), Some(DecodeError::Truncated { have: 4, need: 6 }));
        assert_eq!(d.buffered(), 0);
        assert_eq!(d.skipped_bytes(), 4);
    }
}
