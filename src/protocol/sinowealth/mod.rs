//! The Daly "Sinowealth" variant (`protocols/sinowealth.md`): 3-byte requests `0a <reg> <len>`, replies of bare
//! data bytes plus one check byte. Replies do not name their register, so every decode needs the request.
//!
//! The check byte is CRC-8/SMBUS over the request and the data. That is the spec authors' own finding (it
//! reproduces all 8 captured replies but no 4-byte reply was ever captured), so by default a mismatch is
//! reported and counted but the value is kept ([`CheckPolicy::Report`], as §3 recommends); [`CheckPolicy::Verify`]
//! rejects instead, for when it is confirmed on hardware. Pure code: no I/O.

pub mod exchange;
pub mod registers;

use serde::Serialize;

pub use registers::{
    BATTERY_STATUS_BITS, BatteryStatus, KELVIN_OFFSET_C, PACK_STATUS_BITS, PackStatus, Register, Value,
};

use crate::model::{DeviceSnapshot, PackSnapshot, PackState, SensorId, Temperature};
use crate::protocol::deframer::{Deframer, Event, Framing, Scan};
use crate::protocol::{Capture, DecodeError, DecodeOptions, Protocol, to_hex};

/// First byte of every request.
pub const REQUEST_START: u8 = 0x0A;
/// Pack voltage below this many times the highest cell voltage means another register map (§4).
const PLAUSIBLE_PACK_TO_CELL: f64 = 1.1;

/// CRC-8/SMBUS: polynomial 0x07, initial value 0, no reflection, no final XOR.
#[must_use]
pub fn crc8(bytes: &[u8]) -> u8 {
    bytes
        .iter()
        .fold(0u8, |crc, &b| (0..8).fold(crc ^ b, |crc, _| if crc & 0x80 != 0 { crc << 1 ^ 0x07 } else { crc << 1 }))
}

/// What to do with a check byte that does not match.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum CheckPolicy {
    /// Reject the reply with [`DecodeError::Checksum`].
    Verify,
    /// Keep the value, flag the reply and record the mismatch (the check is not confirmed on every board).
    #[default]
    Report,
}

/// The 3 request bytes asking for `register`.
#[must_use]
pub fn encode_request(register: Register) -> [u8; 3] {
    [REQUEST_START, register.address(), register.data_len()]
}

/// Parse one 3-byte request back into its register.
pub fn decode_request(bytes: &[u8]) -> Result<Register, DecodeError> {
    let [start, address, len] = *bytes else {
        return Err(if bytes.len() < 3 {
            DecodeError::Truncated { have: bytes.len(), need: 3 }
        } else {
            DecodeError::Oversize { declared: 3, actual: bytes.len() }
        });
    };
    if start != REQUEST_START {
        return Err(DecodeError::BadStart { expected: REQUEST_START, found: start });
    }
    let register = Register::from_address(address).ok_or(DecodeError::UnknownCommand { command: address })?;
    if len != register.data_len() {
        return Err(DecodeError::BadLength { expected: register.data_len(), found: len });
    }
    Ok(register)
}

/// The check byte of a reply to `register` carrying `data`.
#[must_use]
pub fn check_byte(register: Register, data: &[u8]) -> u8 {
    let request = encode_request(register);
    crc8(&[request.as_slice(), data].concat())
}

/// The reply a board sends for `value` of `register`: data bytes and check byte.
#[must_use]
pub fn encode_reply(register: Register, value: &Value) -> Vec<u8> {
    let mut reply = value.to_data();
    reply.push(check_byte(register, &reply));
    reply
}

/// One decoded reply.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Reply {
    /// Register number asked for.
    pub register: u8,
    /// Register name.
    pub name: &'static str,
    /// Data bytes as received, hex.
    pub data_hex: String,
    /// Check byte received.
    pub check_received: u8,
    /// Check byte computed (CRC-8/SMBUS over request and data).
    pub check_computed: u8,
    /// Whether they match.
    pub check_ok: bool,
    /// The decoded value.
    #[serde(flatten)]
    pub value: Value,
    /// The register, for applying (serialized as `register`/`name`).
    #[serde(skip)]
    pub source: Register,
}

/// Decode the reply (data + check byte) to a request for `register`.
pub fn decode_reply(register: Register, reply: &[u8], policy: CheckPolicy) -> Result<Reply, DecodeError> {
    let need = usize::from(register.data_len()) + 1;
    if reply.len() != need {
        return Err(if reply.len() < need {
            DecodeError::Truncated { have: reply.len(), need }
        } else {
            DecodeError::Oversize { declared: need, actual: reply.len() }
        });
    }
    let (data, check) = reply.split_at(need - 1);
    let received = check.first().copied().unwrap_or_default();
    let computed = check_byte(register, data);
    if policy == CheckPolicy::Verify && computed != received {
        return Err(DecodeError::Checksum { computed, received });
    }
    Ok(Reply {
        register: register.address(),
        name: register.name(),
        data_hex: to_hex(data),
        check_received: received,
        check_computed: computed,
        check_ok: computed == received,
        value: Value::decode(register, data)?,
        source: register,
    })
}

/// Framing of the reply to one request: a fixed length, and the request itself recognised as a local echo.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReplyFraming {
    register: Register,
}

impl ReplyFraming {
    /// Framing for the reply to a request for `register`.
    #[must_use]
    pub fn new(register: Register) -> Self {
        Self { register }
    }
}

impl Framing for ReplyFraming {
    fn is_start(&self, _byte: u8) -> bool {
        // Replies have no start byte: whatever arrives after the request is the reply.
        true
    }

    fn scan(&self, buf: &[u8]) -> Scan {
        let request = encode_request(self.register);
        let len = usize::from(self.register.data_len()) + 1;
        if buf.starts_with(&request) {
            // A 2-byte reply is as long as the request: it is the reply only if its check byte says so.
            let is_reply = len == request.len()
                && buf.get(..2).is_some_and(|data| Some(&check_byte(self.register, data)) == buf.get(2));
            if !is_reply {
                return Scan::Echo { len: request.len() };
            }
        } else if buf.len() < request.len() && request.starts_with(buf) {
            return Scan::Incomplete { need: request.len() };
        }
        if buf.len() < len { Scan::Incomplete { need: len } } else { Scan::Frame { len } }
    }
}

/// Decodes the replies to a sequence of requests, pushed in any chunking; [`decode_capture`] is one push.
#[derive(Debug)]
pub struct CaptureDecoder {
    requests: Vec<Register>,
    next: usize,
    policy: CheckPolicy,
    deframer: Deframer<ReplyFraming>,
    replies: Vec<Reply>,
    errors: Vec<DecodeError>,
}

impl CaptureDecoder {
    /// A decoder for the replies to `requests`, in order.
    #[must_use]
    pub fn new(requests: Vec<Register>, policy: CheckPolicy) -> Self {
        let first = requests.first().copied().unwrap_or(Register::PackVoltage);
        Self {
            requests,
            next: 0,
            policy,
            deframer: Deframer::new(ReplyFraming::new(first)),
            replies: Vec::new(),
            errors: Vec::new(),
        }
    }

    /// Feed received bytes.
    pub fn push(&mut self, bytes: &[u8]) {
        self.deframer.push(bytes);
        while let Some(&register) = self.requests.get(self.next) {
            match self.deframer.poll() {
                Some(Event::Frame(frame)) => {
                    self.next += 1;
                    if let Some(&next) = self.requests.get(self.next) {
                        self.deframer.set_framing(ReplyFraming::new(next));
                    }
                    match decode_reply(register, &frame, self.policy) {
                        Ok(reply) => {
                            if !reply.check_ok {
                                let (computed, received) = (reply.check_computed, reply.check_received);
                                self.errors.push(DecodeError::Checksum { computed, received });
                            }
                            self.replies.push(reply);
                        }
                        Err(error) => self.errors.push(error),
                    }
                }
                Some(Event::Echo(_)) => self.errors.push(DecodeError::HostEcho { address: REQUEST_START }),
                Some(Event::Rejected(error)) => self.errors.push(error),
                None => break,
            }
        }
    }

    /// End of input: every unanswered request is truncated; then check plausibility, apply and return.
    pub fn finish(mut self, len: usize) -> Result<Capture<Reply>, DecodeError> {
        let cut = self.deframer.finish();
        for (i, register) in self.requests.iter().enumerate().skip(self.next) {
            let need = usize::from(register.data_len()) + 1;
            let first = i == self.next;
            self.errors.push(cut.filter(|_| first).unwrap_or(DecodeError::Truncated { have: 0, need }));
        }
        check_plausible(&self.replies)?;
        if self.replies.is_empty() {
            return Err(self.errors.first().copied().unwrap_or(DecodeError::NoFrame { len }));
        }
        let mut device = DeviceSnapshot::default();
        let pack = device.pack_mut(1);
        for reply in &self.replies {
            apply(reply, pack);
        }
        Ok(Capture {
            protocol: Protocol::Sinowealth,
            replies: self.replies,
            rejected: self.errors.into_iter().map(Into::into).collect(),
            skipped_bytes: self.deframer.skipped_bytes(),
            device,
        })
    }
}

/// §4: boards with more than 10 cells answer register 0x0B with the 11th cell, so a pack voltage close to one
/// cell's voltage means the map does not apply: refuse rather than export nonsense.
fn check_plausible(replies: &[Reply]) -> Result<(), DecodeError> {
    let highest_cell = replies
        .iter()
        .filter_map(|r| match r.value {
            Value::CellVoltage { cell_voltage_v, .. } if cell_voltage_v > 0.0 => Some(cell_voltage_v),
            _ => None,
        })
        .reduce(f64::max);
    let pack = replies.iter().find_map(|r| match r.value {
        Value::PackVoltage { pack_voltage_v } => Some(pack_voltage_v),
        _ => None,
    });
    match (pack, highest_cell) {
        (Some(pack), Some(cell)) if pack < cell * PLAUSIBLE_PACK_TO_CELL => Err(DecodeError::Implausible {
            why: "pack voltage is within 10 % of one cell's voltage: a board with more than 10 cells and another register map",
        }),
        _ => Ok(()),
    }
}

fn set_temperature(pack: &mut PackSnapshot, sensor: SensorId, celsius: f64) {
    match pack.temperatures.iter_mut().find(|t| t.sensor == sensor) {
        Some(t) => t.celsius = celsius,
        None => pack.temperatures.push(Temperature { sensor, celsius }),
    }
}

/// Apply one reply to the pack (current already has the model's sign: negative while discharging).
pub fn apply(reply: &Reply, pack: &mut PackSnapshot) {
    match (&reply.value, reply.source) {
        (Value::CellVoltage { cell, cell_voltage_v }, _) => {
            let index = usize::from(cell.saturating_sub(1));
            if pack.cell_volts.len() <= index {
                pack.cell_volts.resize(index + 1, None);
            }
            if let Some(slot) = pack.cell_volts.get_mut(index) {
                *slot = (*cell_voltage_v > 0.0).then_some(*cell_voltage_v);
            }
        }
        (Value::PackVoltage { pack_voltage_v }, _) => pack.voltage_volts = Some(*pack_voltage_v),
        (Value::Temperature { temperature_c }, register) => {
            let sensor = match register {
                Register::ExternalTemperature1 => SensorId::Probe(1),
                Register::ExternalTemperature2 => SensorId::Probe(2),
                _ => SensorId::Board,
            };
            set_temperature(pack, sensor, *temperature_c);
        }
        (Value::Current { current_a }, _) => pack.current_amperes = Some(*current_a),
        (Value::FullCapacity { full_capacity_ah }, _) => pack.full_capacity_ampere_hours = Some(*full_capacity_ah),
        (Value::RemainingCapacity { remaining_capacity_ah }, _) => {
            pack.remaining_capacity_ampere_hours = Some(*remaining_capacity_ah);
        }
        (Value::Rsoc { soc_percent }, _) => pack.state_of_charge_ratio = Some(f64::from(*soc_percent) / 100.0),
        (Value::CycleCount { cycles }, _) => pack.cycle_count = Some(u32::from(*cycles)),
        (Value::PackStatus(status), _) => {
            pack.charge_mosfet_enabled = Some(status.charge_mosfet_on());
            pack.discharge_mosfet_enabled = Some(status.discharge_mosfet_on());
            pack.state = Some(if status.charging() {
                PackState::Charging
            } else if status.discharging() {
                PackState::Discharging
            } else {
                PackState::Idle
            });
        }
        (Value::BatteryStatus(status), _) => pack.set_alarms(registers::protection_alarms(status.battery_status_raw)),
        (Value::PackConfig { cell_count, .. }, _) => pack.cell_count = Some(*cell_count),
        (Value::Raw { .. }, _) => {}
    }
}

/// [`decode_capture`] with an explicit check-byte policy.
pub fn decode_capture_with(
    request: Option<&[u8]>,
    response: &[u8],
    policy: CheckPolicy,
) -> Result<Capture<Reply>, DecodeError> {
    // Without the request the register of a reply is unknowable: nothing can be decoded.
    let Some(request) = request else { return Err(DecodeError::NoFrame { len: response.len() }) };
    if request.is_empty() || request.len() % 3 != 0 {
        return Err(DecodeError::LengthMismatch {
            declared: request.len().next_multiple_of(3).max(3),
            actual: request.len(),
        });
    }
    let requests = request.chunks_exact(3).map(decode_request).collect::<Result<Vec<_>, _>>()?;
    let mut decoder = CaptureDecoder::new(requests, policy);
    decoder.push(response);
    decoder.finish(response.len())
}

/// Decode the replies to `request` (one or more 3-byte requests back to back) found in `response` (their
/// replies back to back, in order). Uses [`CheckPolicy::Report`]: see the module documentation.
pub fn decode_capture(
    request: Option<&[u8]>,
    response: &[u8],
    _options: &DecodeOptions,
) -> Result<Capture<Reply>, DecodeError> {
    decode_capture_with(request, response, CheckPolicy::default())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc8_reproduces_the_worked_example() {
        assert_eq!(crc8(&[0x0a, 0x0b, 0x02, 0x34, 0x0d]), 0x0f);
        assert_eq!(check_byte(Register::Cell(1), &[0x0d, 0x03]), 0xfd);
    }

    #[test]
    fn verify_rejects_a_bad_check_byte_and_report_keeps_the_value() {
        let reply = [0x34, 0x0d, 0x00];
        assert_eq!(
            decode_reply(Register::PackVoltage, &reply, CheckPolicy::Verify),
            Err(DecodeError::Checksum { computed: 0x0f, received: 0x00 })
        );
        let kept = decode_reply(Register::PackVoltage, &reply, CheckPolicy::Report).unwrap();
        assert!(!kept.check_ok);
        assert_eq!(kept.value, Value::PackVoltage { pack_voltage_v: 13.325 });
    }

    #[test]
    fn requests_parse_back_and_wrong_lengths_are_refused() {
        assert_eq!(encode_request(Register::Current), [0x0a, 0x10, 0x04]);
        assert_eq!(decode_request(&[0x0a, 0x10, 0x04]), Ok(Register::Current));
        assert_eq!(decode_request(&[0x0a, 0x10, 0x02]), Err(DecodeError::BadLength { expected: 4, found: 2 }));
        assert_eq!(decode_request(&[0x0b, 0x10, 0x04]), Err(DecodeError::BadStart { expected: 0x0a, found: 0x0b }));
    }

    #[test]
    fn a_looped_back_request_is_an_echo_not_a_reply() {
        let framing = ReplyFraming::new(Register::PackVoltage);
        assert_eq!(framing.scan(&[0x0a, 0x0b]), Scan::Incomplete { need: 3 });
        assert_eq!(framing.scan(&[0x0a, 0x0b, 0x02, 0x34]), Scan::Echo { len: 3 });
        assert_eq!(framing.scan(&[0x34, 0x0d, 0x0f]), Scan::Frame { len: 3 });
    }
}
