//! Frame edges and frame validation for the Modbus-style Daly maps (`docs/protocols/daly-modbus.md#framing-and-crc`):
//! the [`Framing`] the deframer uses, and the parse of one complete frame into its protocol data unit.

use super::{Map, Request, crc, encode_request};
use crate::protocol::DecodeError;
use crate::protocol::deframer::{Framing, Scan};
use crate::protocol::reader::Reader;

/// Function code of a register read.
pub const READ: u8 = 0x03;
/// Function code of a single-register write.
pub const WRITE: u8 = 0x06;
/// Bit set in the function byte of an exception reply.
const EXCEPTION: u8 = 0x80;

/// Framing rules for replies from one device, optionally knowing the request that was sent (to recognise its
/// local echo and check the byte count).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ModbusFraming {
    map: Map,
    request: Option<Request>,
}

impl ModbusFraming {
    /// Framing for replies of `map`, to `request` if it is known.
    #[must_use]
    pub fn new(map: Map, request: Option<Request>) -> Self {
        Self { map, request }
    }

    /// The map whose reply address starts frames.
    #[must_use]
    pub fn map(&self) -> Map {
        self.map
    }

    /// The request the replies answer, if known.
    #[must_use]
    pub fn request(&self) -> Option<Request> {
        self.request
    }

    /// Our own request bytes, when a loop-back of them would be told apart from a reply.
    fn echo_bytes(self) -> Option<[u8; 8]> {
        let request = self.request?;
        // A D2 write is acknowledged by echoing it verbatim, so its echo IS the reply: never call it an echo.
        let is_reply =
            self.map.request_address() == self.map.reply_address() && matches!(request, Request::Write { .. });
        (!is_reply).then(|| encode_request(self.map, request))
    }

    fn scan_reply(self, buf: &[u8]) -> Scan {
        let Some(&function) = buf.get(1) else { return Scan::Incomplete { need: 2 } };
        let len = match function {
            READ => match buf.get(2) {
                Some(&count) => 3 + usize::from(count) + 2,
                None => return Scan::Incomplete { need: 3 },
            },
            WRITE => 8,
            f if f & EXCEPTION != 0 && matches!(f & !EXCEPTION, READ | WRITE) => 5,
            command => return Scan::Invalid(DecodeError::UnknownCommand { command }),
        };
        let Some(frame) = buf.get(..len) else { return Scan::Incomplete { need: len } };
        if let Err(error) = crc::verify(frame) {
            return Scan::Invalid(error);
        }
        if let (READ, Some(Request::Read { count, .. }), Some(&found)) = (function, self.request, buf.get(2)) {
            let expected = count.saturating_mul(2);
            if u16::from(found) != expected {
                return Scan::Invalid(DecodeError::BadLength { expected: expected.min(255) as u8, found });
            }
        }
        Scan::Frame { len }
    }
}

impl Framing for ModbusFraming {
    fn is_start(&self, byte: u8) -> bool {
        byte == self.map.reply_address()
    }

    fn scan(&self, buf: &[u8]) -> Scan {
        let echo = self.echo_bytes();
        if let Some(echo) = echo
            && buf.starts_with(&echo)
        {
            return Scan::Echo { len: echo.len() };
        }
        let reply = self.scan_reply(buf);
        if matches!(reply, Scan::Frame { .. }) {
            return reply;
        }
        // D2 requests start with the reply address: a partial echo must wait for its eighth byte.
        match echo {
            Some(echo) if buf.len() < echo.len() && echo.starts_with(buf) => Scan::Incomplete { need: echo.len() },
            _ => reply,
        }
    }
}

/// What a complete, CRC-checked frame carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pdu {
    /// A read reply: the register values, in order.
    Read(Vec<u16>),
    /// A write acknowledgement (echo of the write).
    Write {
        /// Register written.
        register: u16,
        /// Value written.
        value: u16,
    },
}

/// Parse one complete reply frame from a device of `map` (CRC, address, function, byte count checked).
///
/// An exception reply is returned as [`DecodeError::ModbusException`].
pub fn parse_frame(map: Map, frame: &[u8]) -> Result<Pdu, DecodeError> {
    crc::verify(frame)?;
    let body = frame.get(..frame.len().saturating_sub(2)).unwrap_or_default();
    let mut r = Reader::new(body);
    let address = r.u8()?;
    if address != map.reply_address() {
        return Err(DecodeError::UnexpectedAddress { expected: map.reply_address(), found: address });
    }
    let pdu = match r.u8()? {
        READ => {
            let count = usize::from(r.u8()?);
            if r.remaining() != count {
                return Err(DecodeError::LengthMismatch { declared: count, actual: r.remaining() });
            }
            if count % 2 != 0 {
                return Err(DecodeError::OutOfRange { field: "byte count (must be even)", value: count as u32 });
            }
            let mut values = Vec::with_capacity(count / 2);
            while r.remaining() > 0 {
                values.push(r.be_u16()?);
            }
            Pdu::Read(values)
        }
        WRITE => Pdu::Write { register: r.be_u16()?, value: r.be_u16()? },
        f if f & EXCEPTION != 0 => {
            return Err(DecodeError::ModbusException { function: f & !EXCEPTION, code: r.u8()? });
        }
        command => return Err(DecodeError::UnknownCommand { command }),
    };
    r.expect_end()?;
    Ok(pdu)
}

/// A read reply of `map` carrying `values` (at most 127 registers; more are cut off to fit the byte count).
#[must_use]
pub fn encode_read_reply(map: Map, values: &[u16]) -> Vec<u8> {
    let values = values.get(..values.len().min(127)).unwrap_or_default();
    let mut frame = Vec::with_capacity(5 + 2 * values.len());
    frame.extend_from_slice(&[map.reply_address(), READ, (2 * values.len()) as u8]);
    for v in values {
        frame.extend_from_slice(&v.to_be_bytes());
    }
    crc::append(&mut frame);
    frame
}

/// The acknowledgement of a single-register write, as the device echoes it.
#[must_use]
pub fn encode_write_reply(map: Map, register: u16, value: u16) -> Vec<u8> {
    let mut frame = vec![map.reply_address(), WRITE];
    frame.extend_from_slice(&register.to_be_bytes());
    frame.extend_from_slice(&value.to_be_bytes());
    crc::append(&mut frame);
    frame
}

/// An exception reply to `function` with exception `code`.
#[must_use]
pub fn encode_exception_reply(map: Map, function: u8, code: u8) -> Vec<u8> {
    let mut frame = vec![map.reply_address(), function | EXCEPTION, code];
    crc::append(&mut frame);
    frame
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_d2_request_looped_back_is_an_echo_and_the_reply_behind_it_a_frame() {
        let request = Request::Read { start: 0x3E, count: 9 };
        let framing = ModbusFraming::new(Map::D2, Some(request));
        let echo = encode_request(Map::D2, request);
        assert_eq!(framing.scan(&echo[..5]), Scan::Incomplete { need: 8 });
        assert_eq!(framing.scan(&echo), Scan::Echo { len: 8 });
        let reply = encode_read_reply(Map::D2, &[0; 9]);
        assert_eq!(framing.scan(&reply), Scan::Frame { len: 23 });
    }

    #[test]
    fn an_exception_reply_is_a_five_byte_frame_that_parses_to_the_exception() {
        let map = Map::P81 { board: 1 };
        let frame = encode_exception_reply(map, READ, 0x02);
        assert_eq!(frame.len(), 5);
        assert_eq!(ModbusFraming::new(map, None).scan(&frame), Scan::Frame { len: 5 });
        assert_eq!(parse_frame(map, &frame), Err(DecodeError::ModbusException { function: 3, code: 2 }));
    }

    #[test]
    fn a_byte_count_that_does_not_answer_the_request_is_rejected() {
        let framing = ModbusFraming::new(Map::D2, Some(Request::Read { start: 0, count: 62 }));
        let reply = encode_read_reply(Map::D2, &[0; 9]);
        assert_eq!(framing.scan(&reply), Scan::Invalid(DecodeError::BadLength { expected: 124, found: 18 }));
    }

    #[test]
    fn a_d2_write_acknowledgement_is_a_reply_even_though_it_equals_the_request() {
        let request = Request::Write { register: 0xA5, value: 1 };
        let framing = ModbusFraming::new(Map::D2, Some(request));
        let ack = encode_request(Map::D2, request);
        assert_eq!(framing.scan(&ack), Scan::Frame { len: 8 });
        assert_eq!(parse_frame(Map::D2, &ack), Ok(Pdu::Write { register: 0xA5, value: 1 }));
    }
}
