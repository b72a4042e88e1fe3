//! The Daly "Sinowealth" variant (`docs/protocols/sinowealth.md`): 3-byte requests `0a <reg> <len>`, replies of bare
//! data bytes plus one check byte. Replies do not name their register, so every decode needs the request.
//!
//! The check byte is CRC-8/SMBUS over the request and the data. That is this project's own finding (it
//! reproduces all 8 captured replies but no 4-byte reply was ever captured), so one could argue for only counting
//! mismatches until hardware confirms it. Polling rejects them all the same ([`CheckPolicy::Verify`], the
//! default): replies have no start byte, so noise before a reply is framed as a candidate reply, and a
//! candidate with a wrong check byte kept as a value would be noise exported (issue 12). `decode` keeps such a
//! value and flags it ([`CheckPolicy::Report`]), because a person reading a capture wants to see it.
//! Every value is also judged by [`crate::protocol::plausible`]. Pure code: no I/O.

pub mod exchange;
pub mod registers;

use serde::Serialize;

pub use registers::{
    BATTERY_STATUS_BITS, BatteryStatus, KELVIN_OFFSET_C, PACK_STATUS_BITS, PackStatus, Register, Value,
};

use crate::model::{DeviceSnapshot, PackSnapshot, PackState, SensorId, Temperature};
use crate::protocol::deframer::{Framing, Scan};
use crate::protocol::exchange::Rejections;
use crate::protocol::plausible;
use crate::protocol::{Capture, DecodeError, DecodeOptions, Protocol, to_hex};

/// First byte of every request.
pub const REQUEST_START: u8 = 0x0A;
/// Pack voltage below this many times the highest cell voltage means another register map
/// (`docs/protocols/sinowealth.md#boards-with-another-map`).
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
    /// Reject the reply with [`DecodeError::Checksum`]: what polling (`serve`, `read`) uses, so a reply with a
    /// wrong check byte never becomes a value (see the module documentation).
    #[default]
    Verify,
    /// Keep the value, flag the reply and record the mismatch (the check is not confirmed on every board): for
    /// `decode`, which shows a capture to a person.
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

/// Bytes of a reply to `register`: its data and the check byte.
#[must_use]
pub fn reply_len(register: Register) -> usize {
    usize::from(register.data_len()) + 1
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

/// Most (requests + 1) × (bytes + 1) a capture may hold: the framing search of [`CaptureDecoder`] keeps a score
/// and a choice for each pair, so this bounds its memory (about 16 MB) for input that is not a real capture.
const MAX_SEARCH_STATES: usize = 1 << 22;

/// How well a window of bytes answers a request: the framing of [`CaptureDecoder`] maximises the sum.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Grade {
    /// Under [`CheckPolicy::Report`] only: the check byte is wrong, but the value is plausible.
    CheckWrong = 1,
    /// The check byte is right and the value plausible.
    Good = 2,
}

/// Whether the value of `reply`, alone, is plausible ([`crate::protocol::plausible`]).
pub(crate) fn check_alone(reply: &Reply) -> Result<(), DecodeError> {
    let mut pack = PackSnapshot::new(1);
    apply(reply, &mut pack);
    plausible::check_pack(&pack)
}

/// `window` as the reply to `register`: its grade and reply, or why it is none (a wrong check byte under
/// [`CheckPolicy::Verify`], an implausible value, the request looped back).
fn grade(register: Register, window: &[u8], policy: CheckPolicy) -> Result<(Grade, Reply), DecodeError> {
    if window == encode_request(register) && !check_byte_matches(register, window) {
        return Err(DecodeError::HostEcho { address: REQUEST_START });
    }
    let reply = decode_reply(register, window, policy)?;
    check_alone(&reply)?;
    Ok((if reply.check_ok { Grade::Good } else { Grade::CheckWrong }, reply))
}

/// Whether the last byte of `frame` is the check byte of the bytes before it, whatever the policy.
#[must_use]
pub fn check_byte_matches(register: Register, frame: &[u8]) -> bool {
    frame.split_last().is_some_and(|(&received, data)| check_byte(register, data) == received)
}

/// A step of the framing search: what request `k` does at byte `pos`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Choice {
    /// Byte `pos` is not the start of request `k`'s reply: look from `pos + 1`.
    Skip,
    /// Request `k`'s reply is the window at `pos`.
    Take,
    /// Request `k` has no reply in what is left.
    Missing,
}

/// Decodes the replies to a sequence of requests, pushed in any chunking; [`decode_capture`] is one push.
///
/// Replies have no start byte and an 8-bit check, so noise can pass for one at any offset (issue 12: three noise
/// bytes passed the check as an IC temperature of 1,423 °C). The bytes are therefore framed once the capture is
/// complete: of every way to place the replies, in request order, the one whose windows grade best is taken —
/// a window whose value is implausible ([`crate::protocol::plausible`]) is never a reply, one whose check byte
/// is right outgrades one whose check byte is wrong (only accepted under [`CheckPolicy::Report`]) — and among
/// equally good framings the latest bytes, because a board's reply ends its transmission and noise comes before
/// it. Bytes outside the windows are noise (counted as skipped) or echoed requests.
#[derive(Debug)]
pub struct CaptureDecoder {
    requests: Vec<Register>,
    policy: CheckPolicy,
    buffer: Vec<u8>,
}

impl CaptureDecoder {
    /// A decoder for the replies to `requests`, in order.
    #[must_use]
    pub fn new(requests: Vec<Register>, policy: CheckPolicy) -> Self {
        Self { requests, policy, buffer: Vec::new() }
    }

    /// Feed received bytes (framed in [`CaptureDecoder::finish`], when the latest bytes are known).
    pub fn push(&mut self, bytes: &[u8]) {
        self.buffer.extend_from_slice(bytes);
    }

    /// End of input: frame the replies, note what was rejected on the way, check plausibility across the
    /// replies, apply them and return the capture.
    pub fn finish(self, len: usize) -> Result<Capture<Reply>, DecodeError> {
        let windows = self.frame()?;
        let mut errors = Vec::new();
        let mut replies = Vec::new();
        let mut skipped = 0u64;
        let mut region_start = 0;
        let mut k = 0;
        while k < self.requests.len() {
            // The requests from `k` up to the next one that has a reply share the bytes before that reply.
            let next = (k..self.requests.len()).find(|&i| windows.get(i).copied().flatten().is_some());
            let region_end = next.and_then(|i| windows.get(i).copied().flatten()).unwrap_or(self.buffer.len());
            let region = self.buffer.get(region_start..region_end).unwrap_or_default();
            for (offset, &register) in
                self.requests.iter().enumerate().take(next.unwrap_or(self.requests.len())).skip(k)
            {
                errors.push(self.missing(register, region, offset == k));
            }
            let Some(taken) = next else {
                skipped += region.len() as u64;
                break;
            };
            let register = self.requests.get(taken).copied().unwrap_or(Register::PackVoltage);
            skipped += self.gap(register, region, &mut errors);
            let end = region_end + reply_len(register);
            if let Some(window) = self.buffer.get(region_end..end)
                && let Ok((_, reply)) = grade(register, window, self.policy)
            {
                if !reply.check_ok {
                    errors
                        .push(DecodeError::Checksum { computed: reply.check_computed, received: reply.check_received });
                }
                replies.push(reply);
            }
            region_start = end;
            k = taken + 1;
        }
        if k >= self.requests.len() {
            skipped += self.buffer.len().saturating_sub(region_start) as u64;
        }
        check_plausible(&replies)?;
        // As in a poll: each reply is judged against the ones before it (pack voltage against the cell sum).
        let mut device = DeviceSnapshot::default();
        let mut accepted = Vec::new();
        for reply in replies {
            let pack = device.pack_mut(1);
            let mut merged = pack.clone();
            apply(&reply, &mut merged);
            match plausible::check_pack(&merged) {
                Ok(()) => {
                    *pack = merged;
                    accepted.push(reply);
                }
                Err(error) => errors.push(error),
            }
        }
        if accepted.is_empty() {
            return Err(errors.first().copied().unwrap_or(DecodeError::NoFrame { len }));
        }
        Ok(Capture {
            protocol: Protocol::Sinowealth,
            replies: accepted,
            rejected: errors.into_iter().map(Into::into).collect(),
            skipped_bytes: skipped,
            device,
        })
    }

    /// The start of each request's reply in the buffer (`None`: no reply), by the search the type documents.
    fn frame(&self) -> Result<Vec<Option<usize>>, DecodeError> {
        let (n, m) = (self.requests.len(), self.buffer.len());
        let states = (n + 1).saturating_mul(m + 1);
        if states > MAX_SEARCH_STATES {
            return Err(DecodeError::OutOfRange { field: "capture size (requests × bytes)", value: states as u32 });
        }
        let at = |k: usize, pos: usize| k * (m + 1) + pos;
        let mut score = vec![0u16; states];
        let mut choice = vec![Choice::Missing; states];
        for (k, &register) in self.requests.iter().enumerate().rev() {
            let len = reply_len(register);
            for pos in (0..=m).rev() {
                let missing = score.get(at(k + 1, pos)).copied().unwrap_or(0);
                let skip = (pos < m).then(|| score.get(at(k, pos + 1)).copied().unwrap_or(0));
                let take = self
                    .buffer
                    .get(pos..pos + len)
                    .and_then(|window| grade(register, window, self.policy).ok())
                    .map(|(grade, _)| grade as u16 + score.get(at(k + 1, pos + len)).copied().unwrap_or(0));
                // Ties go to the later window: skipping a byte before taking one, taking before giving up.
                let mut best = (missing, Choice::Missing);
                if let Some(take) = take.filter(|&t| t >= best.0) {
                    best = (take, Choice::Take);
                }
                if let Some(skip) = skip.filter(|&s| s >= best.0) {
                    best = (skip, Choice::Skip);
                }
                let (best, how) = best;
                if let (Some(s), Some(h)) = (score.get_mut(at(k, pos)), choice.get_mut(at(k, pos))) {
                    *s = best;
                    *h = how;
                }
            }
        }
        let (mut k, mut pos) = (0, 0);
        let mut windows = vec![None; n];
        while k < n {
            match choice.get(at(k, pos)).copied().unwrap_or(Choice::Missing) {
                Choice::Skip => pos += 1,
                Choice::Take => {
                    if let Some(w) = windows.get_mut(k) {
                        *w = Some(pos);
                    }
                    pos += self.requests.get(k).map_or(0, |&r| reply_len(r));
                    k += 1;
                }
                Choice::Missing => k += 1,
            }
        }
        Ok(windows)
    }

    /// Why `register` has no reply in `region` (the bytes between the replies around it): cut short when the
    /// region is too short (only the first of several such requests gets the region's bytes), else the most
    /// telling rejection of the windows in it.
    fn missing(&self, register: Register, region: &[u8], first: bool) -> DecodeError {
        let need = reply_len(register);
        let have = if first { region.len() } else { 0 };
        if have < need {
            return DecodeError::Truncated { have, need };
        }
        let mut rejections = Rejections::default();
        for window in region.windows(need) {
            if let Err(error) = grade(register, window, self.policy) {
                rejections.note(error);
            }
        }
        rejections.take().unwrap_or(DecodeError::Truncated { have, need })
    }

    /// Note what the bytes before the reply to `register` were: echoes of the request, and noise that passed
    /// the check byte but is implausible (listed, so `decode` shows why it was not taken). Returns the bytes
    /// skipped as noise.
    fn gap(&self, register: Register, gap: &[u8], errors: &mut Vec<DecodeError>) -> u64 {
        let len = reply_len(register);
        let request = encode_request(register);
        // A 2-byte reply is as long as the request: those bytes are the reply if their check byte says so.
        let request_is_reply = len == request.len() && check_byte_matches(register, &request);
        let mut skipped = gap.len() as u64;
        let mut pos = 0;
        while let Some(window) = gap.get(pos..) {
            if window.starts_with(&request) && !request_is_reply {
                errors.push(DecodeError::HostEcho { address: REQUEST_START });
                skipped = skipped.saturating_sub(request.len() as u64);
                pos += request.len();
                continue;
            }
            if let Some(candidate) = window.get(..len)
                && check_byte_matches(register, candidate)
                && let Err(error @ DecodeError::Implausible { .. }) = grade(register, candidate, self.policy)
            {
                errors.push(error);
            }
            if window.is_empty() {
                break;
            }
            pos += 1;
        }
        skipped
    }
}

/// `docs/protocols/sinowealth.md#boards-with-another-map`: boards with more than 10 cells answer register 0x0B with the
/// 11th cell, so a pack voltage close to one cell's voltage means the map does not apply: refuse rather than export
/// nonsense.
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
    decode_capture_with(request, response, CheckPolicy::Report)
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

    fn capture(request: &str, response: &str, policy: CheckPolicy) -> Result<Capture<Reply>, DecodeError> {
        let (request, response) = (crate::protocol::parse_hex(request)?, crate::protocol::parse_hex(response)?);
        decode_capture_with(Some(&request), &response, policy)
    }

    #[test]
    fn the_issue_12_capture_decodes_to_the_real_reply_and_lists_the_noise_as_implausible() {
        // Five noise bytes, of which the first three pass the check byte of register 0x0E (1,423.55 °C), then
        // the board's reply (32.55 °C).
        for policy in [CheckPolicy::Report, CheckPolicy::Verify] {
            let got = capture("0a0e02", "42476c5e7f0bf181", policy).unwrap();
            assert_eq!(got.replies.len(), 1);
            assert_eq!(got.replies[0].value, Value::Temperature { temperature_c: 32.55 });
            assert_eq!(got.device.packs[0].temperatures[0].celsius, 32.55);
            assert_eq!(got.skipped_bytes, 5);
            assert_eq!(got.rejected.iter().map(|r| r.kind).collect::<Vec<_>>(), ["implausible"]);
        }
        // The noise alone is no reply: the capture is rejected for it.
        let error = capture("0a0e02", "42476c", CheckPolicy::Report).unwrap_err();
        assert_eq!(error.kind(), "implausible");
    }

    #[test]
    fn of_two_plausible_candidates_with_right_check_bytes_the_latest_is_the_reply() {
        // Noise that is a perfect pack-voltage reply (32.639 V) before the real one (13.325 V): a board's reply
        // ends what it sends, so the later one is taken.
        let fake = encode_reply(Register::PackVoltage, &Value::PackVoltage { pack_voltage_v: 32.639 });
        for noise in [fake.clone(), [fake.clone(), vec![0x55, 0x41]].concat(), [vec![0x77], fake].concat()] {
            let response = [noise.clone(), vec![0x34, 0x0d, 0x0f]].concat();
            let got = decode_capture_with(Some(&[0x0a, 0x0b, 0x02]), &response, CheckPolicy::Verify).unwrap();
            assert_eq!(got.device.packs[0].voltage_volts, Some(13.325), "{noise:02x?}");
            assert_eq!(got.skipped_bytes, noise.len() as u64);
        }
        // With several requests, a noise byte between replies does not shift the framing.
        let got = capture("0a0b02 0a0102", "340d0f 55 0d03fd", CheckPolicy::Verify).unwrap();
        assert_eq!(
            (got.device.packs[0].voltage_volts, got.device.packs[0].cell_volts.clone()),
            (Some(13.325), vec![Some(3.331)])
        );
    }

    #[test]
    fn a_capture_too_large_to_search_is_refused_rather_than_allocated() {
        let request = encode_request(Register::Cell(1)).repeat(300);
        let error = decode_capture_with(Some(&request), &vec![0u8; 20_000], CheckPolicy::Report).unwrap_err();
        assert_eq!(error.kind(), "out_of_range");
    }

    #[test]
    fn a_looped_back_request_is_an_echo_not_a_reply() {
        let framing = ReplyFraming::new(Register::PackVoltage);
        assert_eq!(framing.scan(&[0x0a, 0x0b]), Scan::Incomplete { need: 3 });
        assert_eq!(framing.scan(&[0x0a, 0x0b, 0x02, 0x34]), Scan::Echo { len: 3 });
        assert_eq!(framing.scan(&[0x34, 0x0d, 0x0f]), Scan::Frame { len: 3 });
    }
}
