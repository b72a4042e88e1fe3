//! The Modbus-style Daly protocol (`docs/protocols/daly-modbus.md`): the two address maps ("D2" and "p81"), request
//! encoding and parsing, and the capture decoder that turns a reply stream into typed replies and the model.
//!
//! Frames are Modbus RTU shaped (function 3 reads, function 6 writes, CRC-16/MODBUS), but the p81 map answers
//! from another address than it was asked on, so this is not a generic Modbus client. Pure code: no I/O.

pub mod crc;
pub mod d2;
pub mod exchange;
mod framing;
pub mod p81;

use serde::Serialize;

pub use framing::{
    ModbusFraming, Pdu, READ, WRITE, encode_exception_reply, encode_read_reply, encode_write_reply, parse_frame,
};

use crate::model::{DeviceSnapshot, PackSnapshot, PackState, SensorId, Temperature};
use crate::protocol::deframer::{Deframer, Event};
use crate::protocol::plausible::{self, CELL_VOLTS_MAX, TEMPERATURE_MAX_CELSIUS, TEMPERATURE_MIN_CELSIUS};
use crate::protocol::{Capture, DecodeError, DecodeOptions, Protocol};

/// Highest p81 board number whose addresses stay in the documented ranges (0x81–0x90, 0x51–0x60).
pub const MAX_BOARD: u8 = 16;
/// The most registers one Modbus read may ask for (the byte count must fit one byte).
pub const MAX_READ_COUNT: u16 = 125;

/// Which register map (and so which device addresses) a board uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Map {
    /// The "Smart BMS" app map: requests and replies both use device byte 0xD2.
    D2,
    /// The H/K/M/S map: requests go to 0x80 + board, replies come from 0x50 + board (board 1–16).
    P81 {
        /// Board number, 1–16.
        board: u8,
    },
}

impl Map {
    /// The p81 map of `board`, if the board number is in 1–16.
    pub fn p81(board: u8) -> Result<Self, DecodeError> {
        if (1..=MAX_BOARD).contains(&board) {
            Ok(Self::P81 { board })
        } else {
            Err(DecodeError::OutOfRange { field: "p81 board number", value: u32::from(board) })
        }
    }

    /// The device byte of requests.
    #[must_use]
    pub fn request_address(self) -> u8 {
        match self {
            Self::D2 => 0xD2,
            Self::P81 { board } => 0x80u8.wrapping_add(board),
        }
    }

    /// The device byte of replies.
    #[must_use]
    pub fn reply_address(self) -> u8 {
        match self {
            Self::D2 => 0xD2,
            Self::P81 { board } => 0x50u8.wrapping_add(board),
        }
    }

    /// The model's pack number: 1 for D2, the board number for p81.
    #[must_use]
    pub fn pack_number(self) -> u8 {
        match self {
            Self::D2 => 1,
            Self::P81 { board } => board,
        }
    }

    /// The map a request device byte belongs to.
    #[must_use]
    pub fn from_request_address(address: u8) -> Option<Self> {
        match address {
            0xD2 => Some(Self::D2),
            0x81..=0x90 => Some(Self::P81 { board: address - 0x80 }),
            _ => None,
        }
    }

    /// The map a reply device byte belongs to.
    #[must_use]
    pub fn from_reply_address(address: u8) -> Option<Self> {
        match address {
            0xD2 => Some(Self::D2),
            0x51..=0x60 => Some(Self::P81 { board: address - 0x50 }),
            _ => None,
        }
    }
}

/// A request the host sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Request {
    /// Function 3: read `count` registers from `start`.
    Read {
        /// First register.
        start: u16,
        /// Number of registers (1–125).
        count: u16,
    },
    /// Function 6: write `value` to `register`.
    Write {
        /// Register to write.
        register: u16,
        /// Value to write.
        value: u16,
    },
}

/// The 8 bytes of `request` for a board of `map`.
#[must_use]
pub fn encode_request(map: Map, request: Request) -> [u8; 8] {
    let (function, a, b) = match request {
        Request::Read { start, count } => (framing::READ, start, count),
        Request::Write { register, value } => (framing::WRITE, register, value),
    };
    let [a_hi, a_lo] = a.to_be_bytes();
    let [b_hi, b_lo] = b.to_be_bytes();
    let body = [map.request_address(), function, a_hi, a_lo, b_hi, b_lo];
    let [crc_lo, crc_hi] = crc::crc16(&body).to_le_bytes();
    [body[0], function, a_hi, a_lo, b_hi, b_lo, crc_lo, crc_hi]
}

/// Parse one 8-byte request back into its map and meaning.
pub fn decode_request(bytes: &[u8]) -> Result<(Map, Request), DecodeError> {
    let frame: [u8; 8] = bytes.try_into().map_err(|_| {
        if bytes.len() < 8 {
            DecodeError::Truncated { have: bytes.len(), need: 8 }
        } else {
            DecodeError::Oversize { declared: 8, actual: bytes.len() }
        }
    })?;
    crc::verify(&frame)?;
    let [address, function, a_hi, a_lo, b_hi, b_lo, _, _] = frame;
    let map = Map::from_request_address(address)
        .ok_or(DecodeError::UnexpectedAddress { expected: Map::D2.request_address(), found: address })?;
    let (a, b) = (u16::from_be_bytes([a_hi, a_lo]), u16::from_be_bytes([b_hi, b_lo]));
    let request = match function {
        framing::READ if (1..=MAX_READ_COUNT).contains(&b) => Request::Read { start: a, count: b },
        framing::READ => return Err(DecodeError::OutOfRange { field: "register count", value: u32::from(b) }),
        framing::WRITE => Request::Write { register: a, value: b },
        command => return Err(DecodeError::UnknownCommand { command }),
    };
    Ok((map, request))
}

/// What a register written by [`Request::Write`] controls on a board of `map`, for showing a write before it
/// is sent; `None` for a register this module knows no write for.
#[must_use]
pub fn write_register_name(map: Map, register: u16) -> Option<&'static str> {
    match (map, register) {
        (Map::D2, d2::CHARGE_MOSFET_REGISTER) | (Map::P81 { .. }, p81::CHARGE_MOSFET_REGISTER) => {
            Some("charge MOSFET switch")
        }
        (Map::D2, d2::DISCHARGE_MOSFET_REGISTER) | (Map::P81 { .. }, p81::DISCHARGE_MOSFET_REGISTER) => {
            Some("discharge MOSFET switch")
        }
        _ => None,
    }
}

/// A block of consecutive register values read from `start`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Registers {
    /// Register of the first value.
    pub start: u16,
    /// The values, in register order.
    pub values: Vec<u16>,
}

impl Registers {
    /// The value of `register`, if the block holds it.
    #[must_use]
    pub fn get(&self, register: u16) -> Option<u16> {
        let index = register.checked_sub(self.start)?;
        self.values.get(usize::from(index)).copied()
    }

    /// Whether the block holds every register of `first..first + count`.
    #[must_use]
    pub fn covers(&self, first: u16, count: u16) -> bool {
        first >= self.start && usize::from(first - self.start) + usize::from(count) <= self.values.len()
    }

    /// Set `register` to `value` if the block holds it (used by the reply encoders).
    pub fn set(&mut self, register: u16, value: u16) {
        if let Some(index) = register.checked_sub(self.start)
            && let Some(slot) = self.values.get_mut(usize::from(index))
        {
            *slot = value;
        }
    }
}

/// A write acknowledgement.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct WriteAck {
    /// Register written.
    pub register: u16,
    /// Value written.
    pub value: u16,
}

/// One decoded reply.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "reply", rename_all = "snake_case")]
pub enum Reply {
    /// D2 real-time block (62 or 80 registers from 0).
    D2Realtime(d2::Realtime),
    /// D2 MOSFET temperature read (a block holding register 0x42 that is not the real-time block).
    D2MosfetTemperature(d2::MosfetTemperature),
    /// D2 version strings (registers from 0xA9).
    D2Version(d2::Version),
    /// p81 real-time registers (any window of 0x00–0x73).
    P81Realtime(p81::Realtime),
    /// A block this decoder has no typed meaning for, kept raw.
    Registers(Registers),
    /// A write acknowledgement.
    WriteAck(WriteAck),
}

impl Reply {
    /// Decode the register values of a read reply from a board of `map`, by the block's start register.
    pub fn from_block(map: Map, block: Registers, options: &DecodeOptions) -> Result<Self, DecodeError> {
        Ok(match map {
            Map::D2 if block.start == 0 && block.values.len() >= usize::from(d2::REALTIME_COUNT) => {
                Self::D2Realtime(d2::Realtime::decode(&block)?)
            }
            Map::D2 if block.get(d2::MOSFET_TEMPERATURE_REGISTER).is_some() => {
                Self::D2MosfetTemperature(d2::MosfetTemperature::decode(&block)?)
            }
            Map::D2 if block.start == d2::VERSION_START && block.covers(d2::VERSION_START, 16) => {
                Self::D2Version(d2::Version::decode(&block)?)
            }
            Map::P81 { board } if block.start <= p81::LAST_REALTIME_REGISTER => {
                Self::P81Realtime(p81::Realtime::decode(board, &block, options.cell_count))
            }
            Map::D2 | Map::P81 { .. } => Self::Registers(block),
        })
    }

    /// Apply the reply to the pack it describes.
    pub fn apply(&self, pack: &mut PackSnapshot) {
        match self {
            Self::D2Realtime(r) => r.apply(pack),
            Self::D2MosfetTemperature(r) => r.apply(pack),
            Self::D2Version(r) => r.apply(pack),
            Self::P81Realtime(r) => r.apply(pack),
            Self::Registers(_) | Self::WriteAck(_) => {}
        }
    }
}

/// Judge `reply` from the board of `map` by the limits of [`plausible`]: the values it gives the model, alone and
/// on top of `accepted` (what the same poll or capture already took), and the summaries the model does not keep
/// (highest, lowest and average cell voltage, highest and lowest temperature), so that no value of a rejected
/// block is kept and none of an accepted block is out of range.
pub fn check_plausible(map: Map, reply: &Reply, accepted: &DeviceSnapshot) -> Result<(), DecodeError> {
    let (cells, temperatures) = match reply {
        Reply::D2Realtime(r) => (
            vec![Some(r.max_cell_voltage_v), Some(r.min_cell_voltage_v), Some(r.average_cell_voltage_v)],
            // Without probes the summary registers hold nothing measured.
            if r.temperature_sensor_count > 0 {
                vec![Some(r.max_temperature_c), Some(r.min_temperature_c)]
            } else {
                Vec::new()
            },
        ),
        Reply::P81Realtime(r) => (
            vec![r.max_cell_voltage_v, r.min_cell_voltage_v, r.average_cell_voltage_v],
            if r.temperature_sensor_count.is_some_and(|n| n > 0) {
                vec![r.max_temperature_c, r.min_temperature_c]
            } else {
                Vec::new()
            },
        ),
        _ => (Vec::new(), Vec::new()),
    };
    if !cells.into_iter().flatten().all(|v| (0.0..=CELL_VOLTS_MAX).contains(&v)) {
        return Err(DecodeError::Implausible { why: "highest, lowest or average cell voltage outside 0–5 V" });
    }
    if !temperatures.into_iter().flatten().all(|c| (TEMPERATURE_MIN_CELSIUS..=TEMPERATURE_MAX_CELSIUS).contains(&c)) {
        return Err(DecodeError::Implausible { why: "highest or lowest temperature outside −50…150 °C" });
    }
    let pack = map.pack_number();
    let mut alone = PackSnapshot::new(pack);
    reply.apply(&mut alone);
    plausible::check_pack(&alone)?;
    let mut merged = accepted.packs.iter().find(|p| p.pack == pack).cloned().unwrap_or_else(|| PackSnapshot::new(pack));
    reply.apply(&mut merged);
    plausible::check_pack(&merged)
}

/// Decodes a reply stream pushed in any chunking; [`decode_capture`] is this with one push.
#[derive(Debug)]
pub struct CaptureDecoder {
    requests: Vec<(Map, Request)>,
    next: usize,
    options: DecodeOptions,
    deframer: Option<Deframer<ModbusFraming>>,
    skipped_before_start: u64,
    replies: Vec<(Map, Reply)>,
    errors: Vec<DecodeError>,
}

impl CaptureDecoder {
    /// A decoder for the replies to `requests` (in order); with none, the map is taken from the first reply
    /// address seen and every read is assumed to start at register 0.
    #[must_use]
    pub fn new(requests: Vec<(Map, Request)>, options: DecodeOptions) -> Self {
        let deframer = requests.first().map(|&(map, request)| Deframer::new(ModbusFraming::new(map, Some(request))));
        Self { requests, next: 0, options, deframer, skipped_before_start: 0, replies: Vec::new(), errors: Vec::new() }
    }

    /// Feed received bytes.
    pub fn push(&mut self, mut bytes: &[u8]) {
        if self.deframer.is_none() {
            let start = bytes.iter().position(|&b| Map::from_reply_address(b).is_some());
            let skip = start.unwrap_or(bytes.len());
            self.skipped_before_start += skip as u64;
            bytes = bytes.get(skip..).unwrap_or_default();
            let Some(map) = start.and_then(|_| bytes.first()).and_then(|&b| Map::from_reply_address(b)) else {
                return;
            };
            self.deframer = Some(Deframer::new(ModbusFraming::new(map, None)));
        }
        if let Some(deframer) = self.deframer.as_mut() {
            deframer.push(bytes);
        }
        self.drain();
    }

    fn drain(&mut self) {
        while let Some(event) = self.deframer.as_mut().and_then(Deframer::poll) {
            match event {
                Event::Frame(frame) => self.on_frame(&frame),
                Event::Echo(frame) => {
                    let address = frame.first().copied().unwrap_or_default();
                    self.errors.push(DecodeError::HostEcho { address });
                }
                Event::Rejected(error) => self.errors.push(error),
            }
        }
    }

    fn on_frame(&mut self, frame: &[u8]) {
        let Some(deframer) = self.deframer.as_mut() else { return };
        let framing = *deframer.framing();
        let map = framing.map();
        let request = framing.request();
        // Whatever this frame holds, it answers the current request: the next frame answers the next one.
        self.next += 1;
        let next = self
            .requests
            .get(self.next)
            .map_or(ModbusFraming::new(map, None), |&(m, r)| ModbusFraming::new(m, Some(r)));
        deframer.set_framing(next);
        let decoded = parse_frame(map, frame).and_then(|pdu| match (pdu, request) {
            (Pdu::Read(values), Some(Request::Read { start, .. })) => {
                Reply::from_block(map, Registers { start, values }, &self.options)
            }
            (Pdu::Read(values), None) => Reply::from_block(map, Registers { start: 0, values }, &self.options),
            (Pdu::Write { register, value }, None | Some(Request::Write { .. })) => {
                Ok(Reply::WriteAck(WriteAck { register, value }))
            }
            (Pdu::Read(_), Some(Request::Write { .. })) => {
                Err(DecodeError::UnexpectedCommand { expected: framing::WRITE, found: framing::READ })
            }
            (Pdu::Write { .. }, Some(Request::Read { .. })) => {
                Err(DecodeError::UnexpectedCommand { expected: framing::READ, found: framing::WRITE })
            }
        });
        match decoded.and_then(|reply| self.accept(map, reply)) {
            Ok(reply) => self.replies.push((map, reply)),
            Err(error) => self.errors.push(error),
        }
    }

    /// `reply` if it is plausible, alone and with the replies decoded before it (as a poll judges it).
    fn accept(&self, map: Map, reply: Reply) -> Result<Reply, DecodeError> {
        let mut accepted = DeviceSnapshot::default();
        for (m, r) in self.replies.iter().filter(|(m, _)| *m == map) {
            r.apply(accepted.pack_mut(m.pack_number()));
        }
        check_plausible(map, &reply, &accepted).map(|()| reply)
    }

    /// End of input: report a cut tail, apply the replies and return the capture (Err when nothing decoded).
    pub fn finish(mut self, len: usize) -> Result<Capture<Reply>, DecodeError> {
        let mut skipped = self.skipped_before_start;
        if let Some(deframer) = self.deframer.as_mut() {
            if let Some(error) = deframer.finish() {
                self.errors.push(error);
            }
            skipped += deframer.skipped_bytes();
        }
        if self.replies.is_empty() {
            return Err(self.errors.first().copied().unwrap_or(DecodeError::NoFrame { len }));
        }
        let mut device = DeviceSnapshot::default();
        for (map, reply) in &self.replies {
            reply.apply(device.pack_mut(map.pack_number()));
        }
        Ok(Capture {
            protocol: Protocol::DalyModbus,
            replies: self.replies.into_iter().map(|(_, reply)| reply).collect(),
            rejected: self.errors.into_iter().map(Into::into).collect(),
            skipped_bytes: skipped,
            device,
        })
    }
}

/// Decode a captured reply stream. `request` holds the 8-byte request(s) that were sent, back to back, if known;
/// without it the map comes from the first reply address and reads are taken as the real-time block at 0.
pub fn decode_capture(
    request: Option<&[u8]>,
    response: &[u8],
    options: &DecodeOptions,
) -> Result<Capture<Reply>, DecodeError> {
    let requests = match request {
        Some(bytes) if bytes.len() % 8 != 0 => {
            return Err(DecodeError::LengthMismatch { declared: bytes.len().next_multiple_of(8), actual: bytes.len() });
        }
        Some(bytes) => bytes.chunks_exact(8).map(decode_request).collect::<Result<Vec<_>, _>>()?,
        None => Vec::new(),
    };
    let mut decoder = CaptureDecoder::new(requests, *options);
    decoder.push(response);
    decoder.finish(response.len())
}

/// The pack state a charge/discharge state register value names (0 idle, 1 charging, 2 discharging).
#[must_use]
pub fn state_from_raw(raw: u16) -> Option<PackState> {
    match raw {
        0 => Some(PackState::Idle),
        1 => Some(PackState::Charging),
        2 => Some(PackState::Discharging),
        _ => None,
    }
}

/// The register value of a state (inverse of [`state_from_raw`]).
#[must_use]
pub fn state_to_raw(state: PackState) -> u16 {
    match state {
        PackState::Idle => 0,
        PackState::Charging => 1,
        PackState::Discharging => 2,
    }
}

/// Put one temperature into the pack, replacing an earlier reading of the same sensor.
fn set_temperature(pack: &mut PackSnapshot, sensor: SensorId, celsius: f64) {
    match pack.temperatures.iter_mut().find(|t| t.sensor == sensor) {
        Some(t) => t.celsius = celsius,
        None => pack.temperatures.push(Temperature { sensor, celsius }),
    }
}

/// `raw / divisor`: register scaling shared by both maps.
fn scaled(raw: u16, divisor: f64) -> f64 {
    f64::from(raw) / divisor
}

/// Inverse of [`scaled`], saturating at the register's range.
fn unscaled(value: f64, divisor: f64) -> u16 {
    (value * divisor).round().clamp(0.0, f64::from(u16::MAX)) as u16
}

/// Offset-encoded value: `(raw - offset) / divisor` (currents around 30000, temperatures around 40).
fn offset(raw: u16, offset: f64, divisor: f64) -> f64 {
    (f64::from(raw) - offset) / divisor
}

/// Inverse of [`offset`], saturating at the register's range.
fn unoffset(value: f64, offset: f64, divisor: f64) -> u16 {
    (value * divisor + offset).round().clamp(0.0, f64::from(u16::MAX)) as u16
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_encode_to_the_spec_bytes_and_parse_back() {
        let cases: [(Map, Request, [u8; 8]); 5] = [
            (Map::D2, d2::REALTIME, [0xd2, 0x03, 0x00, 0x00, 0x00, 0x3e, 0xd7, 0xb9]),
            (Map::D2, d2::SETTINGS, [0xd2, 0x03, 0x00, 0x80, 0x00, 0x29, 0x96, 0x5f]),
            (Map::D2, d2::set_charge_mosfet(true), [0xd2, 0x06, 0x00, 0xa5, 0x00, 0x01, 0x4b, 0x8a]),
            (Map::P81 { board: 1 }, p81::REALTIME_LOW, [0x81, 0x03, 0x00, 0x00, 0x00, 0x40, 0x5b, 0xfa]),
            (Map::P81 { board: 1 }, p81::REALTIME_HIGH, [0x81, 0x03, 0x00, 0x41, 0x00, 0x3e, 0x8b, 0xce]),
        ];
        for (map, request, bytes) in cases {
            assert_eq!(encode_request(map, request), bytes);
            assert_eq!(decode_request(&bytes), Ok((map, request)));
        }
    }

    #[test]
    fn p81_addresses_follow_the_board_number() {
        let map = Map::p81(3).unwrap();
        assert_eq!((map.request_address(), map.reply_address(), map.pack_number()), (0x83, 0x53, 3));
        assert_eq!(Map::from_reply_address(0x53), Some(map));
        assert!(Map::p81(0).is_err());
        assert!(Map::p81(17).is_err());
    }

    #[test]
    fn a_capture_with_only_garbage_names_no_frame() {
        let result = decode_capture(None, &[0x00, 0x01, 0x02], &DecodeOptions::default());
        assert_eq!(result, Err(DecodeError::NoFrame { len: 3 }));
    }
}
