//! daly_modbus side of a poll: the [`crate::protocol::Exchange`] implementation.
//!
//! Request plan: the sections of the poll are mapped to register blocks, and each block is asked once per poll.
//! D2: the real-time block (80 registers, or 62 once the board has refused 80) serves every section but `info`;
//! `info` asks the version strings (0xA9) once — a success is cached and a Modbus exception means the board
//! has no such registers, so they are never asked again. p81: the low window (0x00–0x3F: cells, probes,
//! voltage/current/SOC, counts) and the high window (0x41–0x7E: state, capacity, cycles, balancing, MOSFETs,
//! MOSFET/board temperatures) are asked as the sections need them; p81 has no identity registers we know.
//! Cell and sensor counts are cached and appear in every snapshot.
//!
//! A write (the `set` command) is a one-request plan of its own ([`DalyModbusExchange::begin_write`]): its echo,
//! or the board's exception reply, is kept for the caller to report ([`DalyModbusExchange::write_reply`]).

use std::collections::VecDeque;

use super::{Map, Pdu, Registers, Reply, Request, WriteAck, check_plausible, d2, p81, parse_frame};
use super::{ModbusFraming, READ, WRITE, encode_request, write_register_name};
use crate::model::{DeviceSnapshot, Section, Sections};
use crate::protocol::deframer::{Deframer, Event};
use crate::protocol::exchange::{OptionalRead, Rejections};
use crate::protocol::{DecodeError, DecodeOptions, Exchange, Outgoing, Progress, Protocol};

/// A register block a poll may ask for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Block {
    /// D2 real-time block from register 0.
    D2Realtime,
    /// D2 version strings from 0xA9.
    D2Version,
    /// p81 registers 0x00–0x3F.
    P81Low,
    /// p81 registers 0x41–0x7E.
    P81High,
    /// A single-register write (function 6).
    Write {
        /// Register written.
        register: u16,
        /// Value written.
        value: u16,
    },
}

/// The request in flight and what has come of it.
#[derive(Debug, Clone)]
struct Current {
    block: Block,
    /// First register asked: replies do not repeat it.
    start: u16,
    outcome: Option<Progress>,
}

/// The Modbus-style Daly side of a poll, for one board of either map.
#[derive(Debug)]
pub struct DalyModbusExchange {
    map: Map,
    options: DecodeOptions,
    deframer: Deframer<ModbusFraming>,
    plan: VecDeque<Block>,
    current: Option<Current>,
    rejections: Rejections,
    device: DeviceSnapshot,
    /// The version strings, once read (D2).
    version: Option<d2::Version>,
    /// The board answered the version read with an exception: it has no such registers.
    version_unsupported: bool,
    /// The version read's record of silence (a board may ignore it rather than refuse it).
    version_read: OptionalRead,
    /// The board answered the 80-register real-time read with an exception: ask 62.
    extended_unsupported: bool,
    /// How the board answered the write of the current plan, once it has.
    write_reply: Option<Result<WriteAck, DecodeError>>,
}

impl DalyModbusExchange {
    /// An exchange for the board of `map`; `options` may carry cell and sensor counts known in advance.
    #[must_use]
    pub fn new(map: Map, options: DecodeOptions) -> Self {
        Self {
            map,
            options,
            deframer: Deframer::new(ModbusFraming::new(map, None)),
            plan: VecDeque::new(),
            current: None,
            rejections: Rejections::default(),
            device: DeviceSnapshot::default(),
            version: None,
            version_unsupported: false,
            version_read: OptionalRead::default(),
            extended_unsupported: false,
            write_reply: None,
        }
    }

    /// The map (and so the device addresses) this exchange talks to.
    #[must_use]
    pub fn map(&self) -> Map {
        self.map
    }

    /// Plan one write of `value` to `register` instead of a poll; the session is then resumed on this
    /// exchange. The board's answer is [`DalyModbusExchange::write_reply`] afterwards.
    pub fn begin_write(&mut self, register: u16, value: u16) {
        self.start();
        self.plan.push_back(Block::Write { register, value });
    }

    /// How the board answered the last write: its echo (normally the request verbatim), or the exception it
    /// refused it with; `None` when nothing valid came back (some boards accept a write without echoing it).
    #[must_use]
    pub fn write_reply(&self) -> Option<&Result<WriteAck, DecodeError>> {
        self.write_reply.as_ref()
    }

    /// Forget the last plan and what came of it; cached counts and identity stay.
    fn start(&mut self) {
        self.plan.clear();
        self.current = None;
        self.rejections = Rejections::default();
        self.deframer.clear();
        self.write_reply = None;
        self.device = self.cached_snapshot();
    }

    fn request(&self, block: Block) -> Request {
        match block {
            Block::D2Realtime if self.extended_unsupported => d2::REALTIME,
            Block::D2Realtime => d2::REALTIME_EXTENDED,
            Block::D2Version => d2::VERSION,
            Block::P81Low => p81::REALTIME_LOW,
            Block::P81High => p81::REALTIME_HIGH,
            Block::Write { register, value } => Request::Write { register, value },
        }
    }

    /// The snapshot this poll starts from: cached counts and identity only.
    fn cached_snapshot(&self) -> DeviceSnapshot {
        let mut device = DeviceSnapshot::default();
        let pack = device.pack_mut(self.map.pack_number());
        pack.cell_count = self.options.cell_count;
        pack.temperature_sensor_count = self.options.temperature_sensor_count;
        if let Some(version) = &self.version {
            version.apply(pack);
        }
        device
    }

    /// Take in a complete, CRC-checked frame: the progress it makes, or why it does not answer the request.
    fn on_frame(&mut self, current: &Current, frame: &[u8]) -> Result<Progress, DecodeError> {
        if let Block::Write { .. } = current.block {
            return self.on_write_frame(frame);
        }
        let start = current.start;
        let values = match parse_frame(self.map, frame) {
            Ok(Pdu::Read(values)) => values,
            Ok(Pdu::Write { .. }) => return Err(DecodeError::UnexpectedCommand { expected: READ, found: WRITE }),
            Err(error @ DecodeError::ModbusException { function: READ, .. }) => {
                return Ok(if self.on_refusal(current.block) {
                    Progress::Unsupported
                } else {
                    Progress::Refused(error)
                });
            }
            Err(error) => return Err(error),
        };
        let reply = Reply::from_block(self.map, Registers { start, values }, &self.options)?;
        if let Err(error) = check_plausible(self.map, &reply, &self.device) {
            // The CRC held, so this is the board's whole reply, read wrong: ask again now. Nothing of it is
            // kept, not even the counts it carries.
            return Ok(Progress::Retry(error));
        }
        match (&reply, current.block) {
            (Reply::D2Realtime(r), Block::D2Realtime) => {
                self.options.cell_count = Some(r.cell_count);
                self.options.temperature_sensor_count = Some(r.temperature_sensor_count);
            }
            (Reply::D2Version(v), Block::D2Version) => {
                self.version = Some(v.clone());
                self.version_read.answered();
            }
            (Reply::P81Realtime(r), Block::P81Low | Block::P81High) => {
                self.options.cell_count = r.cell_count.or(self.options.cell_count);
                self.options.temperature_sensor_count =
                    r.temperature_sensor_count.or(self.options.temperature_sensor_count);
            }
            // `from_block` chooses by the start register we asked, so this cannot happen; refuse it anyway.
            _ => return Err(DecodeError::Implausible { why: "reply block does not answer the register block asked" }),
        }
        reply.apply(self.device.pack_mut(self.map.pack_number()));
        Ok(Progress::Complete)
    }

    /// Take in the answer to a write: its echo completes it, an exception reply refuses it (never retried: a
    /// write is sent once), a read reply is not an answer to it.
    fn on_write_frame(&mut self, frame: &[u8]) -> Result<Progress, DecodeError> {
        match parse_frame(self.map, frame) {
            Ok(Pdu::Write { register, value }) => {
                self.write_reply = Some(Ok(WriteAck { register, value }));
                Ok(Progress::Complete)
            }
            Ok(Pdu::Read(_)) => Err(DecodeError::UnexpectedCommand { expected: WRITE, found: READ }),
            Err(error @ DecodeError::ModbusException { function: WRITE, .. }) => {
                self.write_reply = Some(Err(error));
                Ok(Progress::Refused(error))
            }
            Err(error) => Err(error),
        }
    }

    /// Remember what an exception reply says about the board; whether that settles the request (a fallback
    /// is planned, or the read was optional) rather than failing it.
    fn on_refusal(&mut self, block: Block) -> bool {
        match block {
            Block::D2Realtime if !self.extended_unsupported => {
                // Boards that only hold the 62-register block: ask that instead, in this poll already.
                self.extended_unsupported = true;
                self.plan.push_front(Block::D2Realtime);
                true
            }
            Block::D2Version => {
                self.version_unsupported = true;
                true
            }
            Block::D2Realtime | Block::P81Low | Block::P81High | Block::Write { .. } => false,
        }
    }
}

/// Label of a request, for logs.
fn label(map: Map, request: Request, block: Block) -> String {
    let what = match block {
        Block::D2Realtime => "D2 real-time",
        Block::D2Version => "D2 version",
        Block::P81Low => "p81 real-time low",
        Block::P81High => "p81 real-time high",
        Block::Write { register, .. } => write_register_name(map, register).unwrap_or("register write"),
    };
    match request {
        Request::Read { start, count } => {
            format!("read {count} registers from 0x{start:02x} ({what}, device 0x{:02x})", map.request_address())
        }
        Request::Write { register, value } => {
            format!("write {value} to register 0x{register:04x} ({what}, device 0x{:02x})", map.request_address())
        }
    }
}

impl Exchange for DalyModbusExchange {
    fn protocol(&self) -> Protocol {
        Protocol::DalyModbus
    }

    fn begin_poll(&mut self, sections: Sections) {
        use Section::{Alarms, Balancing, Cells, Info, Mosfet, Soc, Status, Temperatures};
        let wants = |list: &[Section]| list.iter().any(|&s| sections.contains(s));
        self.start();
        match self.map {
            Map::D2 => {
                if wants(&[Soc, Mosfet, Status, Cells, Temperatures, Balancing, Alarms]) {
                    self.plan.push_back(Block::D2Realtime);
                }
                if sections.contains(Info)
                    && self.version.is_none()
                    && !self.version_unsupported
                    && self.version_read.due()
                {
                    self.plan.push_back(Block::D2Version);
                }
            }
            Map::P81 { .. } => {
                // Balancing bits are mapped to cells by the cell count, which the low window holds.
                let count_unknown = self.options.cell_count.is_none();
                if wants(&[Soc, Status, Cells, Temperatures]) || (sections.contains(Balancing) && count_unknown) {
                    self.plan.push_back(Block::P81Low);
                }
                if wants(&[Mosfet, Status, Temperatures, Balancing]) {
                    self.plan.push_back(Block::P81High);
                }
                // p81 alarm words have no confirmed bit meanings and no identity registers are known: `alarms`
                // and `info` alone ask nothing.
            }
        }
    }

    fn next_request(&mut self) -> Option<Outgoing> {
        self.current = None;
        let block = self.plan.pop_front()?;
        let request = self.request(block);
        self.deframer.clear();
        self.deframer.set_framing(ModbusFraming::new(self.map, Some(request)));
        self.rejections = Rejections::default();
        let start = match request {
            Request::Read { start, .. } => start,
            Request::Write { register, .. } => register,
        };
        self.current = Some(Current { block, start, outcome: None });
        // A read's reply: address, function, byte count, two bytes a register, CRC.
        let reply_len = match request {
            Request::Read { count, .. } => 5 + 2 * usize::from(count),
            Request::Write { .. } => 8,
        };
        Some(Outgoing {
            bytes: encode_request(self.map, request).to_vec(),
            label: label(self.map, request, block),
            // The version read only: a board without those registers may stay silent instead of refusing.
            optional: block == Block::D2Version,
            reply_len,
        })
    }

    fn handle_bytes(&mut self, bytes: &[u8]) -> Progress {
        let Some(current) = self.current.clone() else { return Progress::Pending };
        if let Some(outcome) = current.outcome {
            return outcome;
        }
        self.deframer.push(bytes);
        while let Some(event) = self.deframer.poll() {
            let result = match event {
                Event::Frame(frame) => self.on_frame(&current, &frame),
                Event::Echo(frame) => {
                    Err(DecodeError::HostEcho { address: frame.first().copied().unwrap_or_default() })
                }
                Event::Rejected(error) => Err(error),
            };
            match result {
                Ok(Progress::Retry(error)) => {
                    // Not an outcome: the retry's reply is handled afresh.
                    self.rejections.note(error);
                    return Progress::Retry(error);
                }
                Ok(progress) => {
                    if let Some(c) = self.current.as_mut() {
                        c.outcome = Some(progress);
                    }
                    return progress;
                }
                Err(error) => self.rejections.note(error),
            }
        }
        Progress::Pending
    }

    fn handle_unanswered(&mut self) {
        if self.current.as_ref().is_some_and(|c| c.block == Block::D2Version) {
            self.version_read.missed();
        }
    }

    fn handle_quiet(&mut self) -> Progress {
        // Modbus replies carry their length: there is never anything to settle.
        self.current.as_ref().and_then(|c| c.outcome).unwrap_or(Progress::Pending)
    }

    fn clear_reply(&mut self) -> Option<DecodeError> {
        if let Some(error) = self.deframer.finish() {
            self.rejections.note(error);
        }
        self.rejections.take()
    }

    fn abandon_target(&mut self) {
        // One device answers every request of this exchange: if it is silent, the rest would be too.
        self.plan.clear();
    }

    fn skipped_bytes(&self) -> u64 {
        self.deframer.skipped_bytes()
    }

    fn snapshot(&self) -> DeviceSnapshot {
        self.device.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{PackSnapshot, SensorId};
    use crate::protocol::daly_modbus::{encode_exception_reply, encode_read_reply};
    use crate::protocol::exchange::test_support::{cells_close, close, feed_split, poll, poll_with, temperature};
    use crate::simulator::daly_modbus::DalyModbusBus;
    use crate::simulator::{Responder, Response};

    fn bus() -> DalyModbusBus {
        let mut bus = DalyModbusBus::new(16, 4, 11);
        for _ in 0..5 {
            bus.step(60.0);
        }
        bus
    }

    fn exchange() -> DalyModbusExchange {
        DalyModbusExchange::new(Map::D2, DecodeOptions::default())
    }

    fn sections(list: &[Section]) -> Sections {
        list.iter().copied().collect()
    }

    fn bytes(request: Request) -> Vec<u8> {
        encode_request(Map::D2, request).to_vec()
    }

    fn version() -> d2::Version {
        d2::Version { software_version: "T00K_321042_11".into(), hardware_version: "H2.0_103R_309F9F".into() }
    }

    /// The D2 bus, with the version read answered (`true`) and the 80-register read refused (`false`).
    struct Patched {
        bus: DalyModbusBus,
        has_version: bool,
        has_extended: bool,
        asked: Vec<Vec<u8>>,
    }

    impl Responder for Patched {
        fn next_request(&mut self, pending: &mut Vec<u8>) -> Option<Vec<u8>> {
            self.bus.next_request(pending)
        }

        fn respond(&mut self, request: &[u8]) -> Option<Response> {
            self.asked.push(request.to_vec());
            let other = self.bus.respond(&bytes(d2::REALTIME))?.reply;
            if request == bytes(d2::VERSION) && self.has_version {
                return Some(Response { reply: encode_read_reply(Map::D2, &version().to_registers().values), other });
            }
            if request == bytes(d2::REALTIME_EXTENDED) && !self.has_extended {
                return Some(Response { reply: encode_exception_reply(Map::D2, READ, 0x02), other });
            }
            self.bus.respond(request)
        }

        fn step(&mut self, dt_s: f64) {
            self.bus.step(dt_s);
        }

        fn truth(&self) -> DeviceSnapshot {
            self.bus.truth()
        }
    }

    fn patched(has_version: bool, has_extended: bool) -> Patched {
        Patched { bus: bus(), has_version, has_extended, asked: Vec::new() }
    }

    fn assert_matches_truth(decoded: &PackSnapshot, truth: &PackSnapshot) {
        close(decoded.voltage_volts, truth.voltage_volts, 0.051, "voltage");
        close(decoded.current_amperes, truth.current_amperes, 0.051, "current");
        close(decoded.state_of_charge_ratio, truth.state_of_charge_ratio, 0.000_51, "soc");
        close(decoded.remaining_capacity_ampere_hours, truth.remaining_capacity_ampere_hours, 0.051, "remaining");
        assert_eq!(decoded.cycle_count, truth.cycle_count);
        assert_eq!(decoded.state, truth.state);
        assert_eq!(decoded.charge_mosfet_enabled, truth.charge_mosfet_enabled);
        assert_eq!(decoded.discharge_mosfet_enabled, truth.discharge_mosfet_enabled);
        assert_eq!(decoded.cell_count, truth.cell_count);
        assert_eq!(decoded.temperature_sensor_count, truth.temperature_sensor_count);
        cells_close(decoded, truth, 0.000_51);
        assert_eq!(decoded.cell_balancing, truth.cell_balancing);
        assert_eq!(decoded.balancing_active, truth.balancing_active);
        for sensor in (1..=4).map(SensorId::Probe).chain([SensorId::Mosfet]) {
            close(temperature(decoded, sensor), temperature(truth, sensor), 0.51, &format!("{sensor:?}"));
        }
        assert!(!decoded.alarms.is_empty(), "every D2 alarm is listed");
    }

    #[test]
    fn a_full_poll_asks_the_realtime_block_and_the_version_once_and_matches_the_truth() {
        let mut bus = bus();
        assert!(bus.pack().current_a().abs() > 1.0, "the test needs a real current");
        let mut exchange = exchange();
        let sent = poll(&mut exchange, &mut bus, Sections::all());
        let requests: Vec<Vec<u8>> = sent.iter().map(|(o, _)| o.bytes.clone()).collect();
        assert_eq!(requests, [bytes(d2::REALTIME_EXTENDED), bytes(d2::VERSION)]);
        assert_eq!(sent[0].1, Some(Progress::Complete));
        // The simulated board holds no version registers: its Modbus exception tells us so, and is no failure.
        assert_eq!(sent[1].1, Some(Progress::Unsupported));
        let snapshot = exchange.snapshot();
        assert_eq!(snapshot.packs.len(), 1);
        assert_matches_truth(&snapshot.packs[0], &bus.truth().packs[0]);
        assert_eq!(exchange.skipped_bytes(), 0);
        // A refused version read is not asked again.
        let again = poll(&mut exchange, &mut bus, Sections::all());
        assert_eq!(again.len(), 1);
    }

    #[test]
    fn replies_split_anywhere_complete_the_same_way() {
        let mut bus = bus();
        let mut whole = exchange();
        poll(&mut whole, &mut bus, sections(&[Section::Cells]));
        let reply_len = bus.respond(&bytes(d2::REALTIME_EXTENDED)).unwrap().reply.len();
        for cut in 1..reply_len {
            let mut exchange = exchange();
            let sent =
                poll_with(&mut exchange, &mut bus, sections(&[Section::Cells]), |e, reply| feed_split(e, reply, cut));
            assert_eq!(sent.len(), 1);
            assert_eq!(sent[0].1, Some(Progress::Complete), "cut at {cut}");
            assert_eq!(exchange.snapshot(), whole.snapshot(), "cut at {cut}");
        }
    }

    #[test]
    fn a_corrupted_reply_stays_pending_reports_the_crc_and_the_retry_completes() {
        let mut bus = bus();
        let mut exchange = exchange();
        exchange.begin_poll(sections(&[Section::Soc]));
        let request = exchange.next_request().unwrap();
        let good = bus.respond(&request.bytes).unwrap().reply;
        let mut bad = good.clone();
        bad[40] ^= 0x01;
        assert_eq!(exchange.handle_bytes(&bad), Progress::Pending);
        let error = exchange.clear_reply().unwrap();
        assert_eq!(error.kind(), "chksum_mismatch", "{error}");
        assert_eq!(exchange.snapshot().packs[0].voltage_volts, None);
        assert_eq!(exchange.handle_bytes(&good), Progress::Complete);
        assert!(exchange.snapshot().packs[0].voltage_volts.is_some());
        assert_eq!(exchange.next_request(), None);
        assert!(exchange.skipped_bytes() > 0);
    }

    /// `reply` (a read reply of `map`) with register `index` of its block set to `value`, and a right CRC.
    fn with_register(map: Map, reply: &[u8], index: usize, value: u16) -> Vec<u8> {
        let Ok(Pdu::Read(mut values)) = parse_frame(map, reply) else { panic!("not a read reply") };
        values[index] = value;
        encode_read_reply(map, &values)
    }

    #[test]
    fn a_reply_with_a_right_crc_and_an_implausible_value_is_rejected_whole_and_a_later_good_one_taken() {
        // D2 block: cell 1 at 17.009 V; probe 1 at 1,582 °C; a pack voltage of 99.9 V for cells summing ~53 V;
        // a highest-cell summary of 9 V, which the model does not keep but which makes the block suspect.
        for (index, value) in [(0x00, 17009), (0x20, 1622), (0x28, 999), (0x2B, 9000)] {
            let mut bus = bus();
            let mut exchange = exchange();
            exchange.begin_poll(sections(&[Section::Soc, Section::Cells, Section::Temperatures]));
            let request = exchange.next_request().unwrap();
            let good = bus.respond(&request.bytes).unwrap().reply;
            let bad = with_register(Map::D2, &good, index, value);
            let progress = exchange.handle_bytes(&bad);
            assert!(
                matches!(progress, Progress::Retry(DecodeError::Implausible { .. })),
                "0x{index:02x}: {progress:?}"
            );
            assert_eq!(exchange.clear_reply().map(|e| e.reason()), Some("implausible"));
            let pack = &exchange.snapshot().packs[0];
            assert_eq!((pack.voltage_volts, pack.cell_volts.len(), pack.cell_count), (None, 0, None), "0x{index:02x}");
            assert_eq!(exchange.handle_bytes(&good), Progress::Complete, "0x{index:02x}");
            assert_matches_truth(&exchange.snapshot().packs[0], &bus.truth().packs[0]);
        }
        // p81 low window: cell 3 at 17.009 V.
        let mut board = P81Board::new();
        let map = Map::p81(2).unwrap();
        let mut exchange = DalyModbusExchange::new(map, DecodeOptions::default());
        exchange.begin_poll(sections(&[Section::Soc]));
        let request = exchange.next_request().unwrap();
        let good = board.respond(&request.bytes).unwrap().reply;
        let progress = exchange.handle_bytes(&with_register(map, &good, 2, 17009));
        assert!(matches!(progress, Progress::Retry(DecodeError::Implausible { .. })), "{progress:?}");
        exchange.clear_reply();
        assert_eq!(exchange.snapshot().packs[0].voltage_volts, None);
        assert_eq!(exchange.handle_bytes(&good), Progress::Complete);
        assert_eq!(exchange.snapshot().packs[0].voltage_volts, Some(26.5));
    }

    #[test]
    fn an_echo_and_a_reply_to_another_window_never_become_values() {
        let mut bus = bus();
        let mut exchange = exchange();
        exchange.begin_poll(sections(&[Section::Soc]));
        let request = exchange.next_request().unwrap();
        let response = bus.respond(&request.bytes).unwrap();
        assert_eq!(exchange.handle_bytes(&request.bytes), Progress::Pending);
        assert_eq!(exchange.clear_reply(), Some(DecodeError::HostEcho { address: 0xD2 }));
        // The other reply is a valid frame of another window: its byte count betrays it.
        assert_eq!(exchange.handle_bytes(&request.bytes), Progress::Pending);
        assert_eq!(exchange.handle_bytes(&response.other), Progress::Pending);
        assert_eq!(exchange.clear_reply().map(|e| e.kind()), Some("bad_length"));
        assert_eq!(exchange.snapshot().packs[0].voltage_volts, None);
        // The echo followed by the reply in one chunk completes.
        let stream = [request.bytes.clone(), response.reply].concat();
        assert_eq!(exchange.handle_bytes(&stream), Progress::Complete);
        assert!(exchange.snapshot().packs[0].voltage_volts.is_some());
    }

    #[test]
    fn a_limited_poll_asks_only_the_blocks_its_sections_need() {
        let mut bus = patched(true, true);
        let cases: [(&[Section], usize); 5] = [
            (&[], 0),
            (&[Section::Soc], 1),
            (&[Section::Soc, Section::Cells, Section::Alarms, Section::Balancing], 1),
            (&[Section::Info], 1),
            (&[Section::Temperatures, Section::Info], 2),
        ];
        for (list, expected) in cases {
            let mut exchange = exchange();
            let sent = poll(&mut exchange, &mut bus, sections(list));
            assert_eq!(sent.len(), expected, "{list:?}");
            assert!(sent.iter().all(|(_, p)| *p == Some(Progress::Complete)), "{list:?}");
        }
        let mut exchange = exchange();
        poll(&mut exchange, &mut bus, sections(&[Section::Info]));
        let pack = &exchange.snapshot().packs[0];
        assert_eq!(pack.info.firmware_version.as_deref(), Some("T00K_321042_11"));
        assert_eq!(pack.voltage_volts, None);
    }

    #[test]
    fn the_version_is_read_once_and_kept_in_later_snapshots() {
        let mut bus = patched(true, true);
        let mut exchange = exchange();
        assert_eq!(poll(&mut exchange, &mut bus, Sections::all()).len(), 2);
        bus.asked.clear();
        let sent = poll(&mut exchange, &mut bus, Sections::all());
        assert_eq!(bus.asked, [bytes(d2::REALTIME_EXTENDED)]);
        assert_eq!(sent.len(), 1);
        let pack = &exchange.snapshot().packs[0];
        assert_eq!(pack.info.firmware_version.as_deref(), Some("T00K_321042_11"));
        assert_matches_truth(pack, &bus.truth().packs[0]);
    }

    /// The simulated board, silent to the version read (as a board without those registers may be).
    struct SilentVersion(DalyModbusBus);

    impl Responder for SilentVersion {
        fn next_request(&mut self, pending: &mut Vec<u8>) -> Option<Vec<u8>> {
            self.0.next_request(pending)
        }

        fn respond(&mut self, request: &[u8]) -> Option<Response> {
            if request == bytes(d2::VERSION) { None } else { self.0.respond(request) }
        }

        fn step(&mut self, dt_s: f64) {
            self.0.step(dt_s);
        }

        fn truth(&self) -> DeviceSnapshot {
            self.0.truth()
        }
    }

    #[test]
    fn a_version_read_left_unanswered_is_optional_and_given_up_after_two_polls() {
        let mut bus = SilentVersion(bus());
        let mut exchange = exchange();
        let is_version = |(o, _): &(Outgoing, Option<Progress>)| o.bytes == bytes(d2::VERSION);
        for poll_number in 1..=crate::protocol::exchange::GIVE_UP_MISSES {
            let sent = poll(&mut exchange, &mut bus, Sections::all());
            let version = sent.iter().find(|s| is_version(s)).unwrap_or_else(|| panic!("poll {poll_number}"));
            // 32 registers: address, function, count, 64 bytes, CRC.
            assert_eq!((version.0.optional, version.0.reply_len, version.1), (true, 69, None));
            assert!(!sent[0].0.optional, "the real-time read is not optional");
            assert_eq!(sent[0].1, Some(Progress::Complete));
        }
        let pack = &exchange.snapshot().packs[0];
        assert_eq!(pack.info.firmware_version, None);
        assert_matches_truth(pack, &bus.truth().packs[0]);
        let asked = (0..crate::protocol::exchange::REPROBE_POLLS)
            .map(|_| poll(&mut exchange, &mut bus, Sections::all()).iter().any(is_version))
            .collect::<Vec<_>>();
        assert_eq!(asked.iter().filter(|a| **a).count(), 1, "asked again once in the re-probe interval");
        assert_eq!(asked.last(), Some(&true), "at its end");
    }

    #[test]
    fn a_board_refusing_80_registers_is_asked_62_from_then_on() {
        let mut bus = patched(false, false);
        let mut exchange = exchange();
        let sent = poll(&mut exchange, &mut bus, sections(&[Section::Soc]));
        assert_eq!(bus.asked, [bytes(d2::REALTIME_EXTENDED), bytes(d2::REALTIME)]);
        assert_eq!(sent[0].1, Some(Progress::Unsupported));
        assert_eq!(sent[1].1, Some(Progress::Complete));
        let truth = bus.truth();
        close(exchange.snapshot().packs[0].voltage_volts, truth.packs[0].voltage_volts, 0.051, "voltage");
        bus.asked.clear();
        poll(&mut exchange, &mut bus, sections(&[Section::Soc]));
        assert_eq!(bus.asked, [bytes(d2::REALTIME)]);
    }

    /// A p81 board (board 2) answering any window of a fixed register image.
    struct P81Board {
        image: Registers,
        asked: Vec<(u16, u16)>,
    }

    impl P81Board {
        fn new() -> Self {
            let mut image = Registers { start: 0, values: vec![0; 0x80] };
            for cell in 0..8 {
                image.set(cell, 3300 + cell);
            }
            let fields = [
                (0x30, 65),     // probe 1: 25 °C
                (0x31, 67),     // probe 2: 27 °C
                (0x38, 265),    // 26.5 V
                (0x39, 0x74D7), // −8.9 A
                (0x3A, 905),    // 90.5 %
                (0x3C, 8),      // cells
                (0x3D, 2),      // probes
                (0x48, 2),      // discharging
                (0x4B, 1234),   // 123.4 Ah
                (0x4C, 17),     // cycles
                (0x4D, 1),      // balancing
                (0x4F, 0b101),  // cells 1 and 3
                (0x52, 1),      // charge MOSFET
                (0x53, 0),      // discharge MOSFET
                (0x5A, 70),     // MOSFET 30 °C
            ];
            for (register, value) in fields {
                image.set(register, value);
            }
            Self { image, asked: Vec::new() }
        }
    }

    impl Responder for P81Board {
        fn next_request(&mut self, _pending: &mut Vec<u8>) -> Option<Vec<u8>> {
            None
        }

        fn respond(&mut self, request: &[u8]) -> Option<Response> {
            let (map, request) = super::super::decode_request(request).ok()?;
            if map != (Map::P81 { board: 2 }) {
                return None;
            }
            let (start, count) = match request {
                Request::Read { start, count } => (start, count),
                // The MOSFET control registers switch the state registers 0x52/0x53 and echo, as a board does.
                Request::Write { register, value } => {
                    let state = match register {
                        p81::CHARGE_MOSFET_REGISTER => 0x52,
                        p81::DISCHARGE_MOSFET_REGISTER => 0x53,
                        _ => return None,
                    };
                    self.image.set(state, value);
                    let reply = super::super::encode_write_reply(map, register, value);
                    return Some(Response { other: reply.clone(), reply });
                }
            };
            self.asked.push((start, count));
            let window =
                |start: u16, count: u16| self.image.values[usize::from(start)..usize::from(start + count)].to_vec();
            let reply = encode_read_reply(Map::P81 { board: 2 }, &window(start, count));
            let other = encode_read_reply(Map::P81 { board: 2 }, &window(0, 3));
            Some(Response { reply, other })
        }

        fn step(&mut self, _dt_s: f64) {}

        fn truth(&self) -> DeviceSnapshot {
            DeviceSnapshot::default()
        }
    }

    #[test]
    fn a_p81_board_is_asked_its_two_windows_as_the_sections_need_them() {
        let mut board = P81Board::new();
        let map = Map::p81(2).unwrap();
        let mut exchange = DalyModbusExchange::new(map, DecodeOptions::default());
        let sent = poll(&mut exchange, &mut board, Sections::all());
        assert_eq!(sent[0].0.bytes, encode_request(map, p81::REALTIME_LOW));
        assert_eq!(board.asked, [(0, 64), (0x41, 62)]);
        assert!(sent.iter().all(|(_, p)| *p == Some(Progress::Complete)));
        let snapshot = exchange.snapshot();
        let pack = &snapshot.packs[0];
        assert_eq!(pack.pack, 2);
        assert_eq!(pack.voltage_volts, Some(26.5));
        close(pack.current_amperes, Some(-8.9), 1e-9, "current");
        assert_eq!(pack.cell_count, Some(8));
        assert_eq!(pack.cell_volts[7], Some(3.307));
        assert_eq!(pack.cell_balancing, [true, false, true, false, false, false, false, false]);
        assert_eq!((pack.charge_mosfet_enabled, pack.discharge_mosfet_enabled), (Some(true), Some(false)));
        assert_eq!(temperature(pack, SensorId::Mosfet), Some(30.0));
        assert_eq!(temperature(pack, SensorId::Probe(2)), Some(27.0));
        assert_eq!(pack.cycle_count, Some(17));
        // Balancing alone needs only the high window once the cell count is known; alarms and info ask nothing.
        board.asked.clear();
        poll(&mut exchange, &mut board, sections(&[Section::Balancing, Section::Alarms, Section::Info]));
        assert_eq!(board.asked, [(0x41, 62)]);
        assert_eq!(exchange.snapshot().packs[0].cell_balancing.len(), 8);
        board.asked.clear();
        poll(&mut exchange, &mut board, sections(&[Section::Soc]));
        assert_eq!(board.asked, [(0, 64)]);
        // A fresh exchange asks the low window for balancing too: the bits need the cell count.
        let mut fresh = DalyModbusExchange::new(map, DecodeOptions::default());
        board.asked.clear();
        poll(&mut fresh, &mut board, sections(&[Section::Balancing]));
        assert_eq!(board.asked, [(0, 64), (0x41, 62)]);
    }

    #[test]
    fn a_p81_reply_to_another_window_is_rejected() {
        let mut board = P81Board::new();
        let mut exchange = DalyModbusExchange::new(Map::p81(2).unwrap(), DecodeOptions::default());
        exchange.begin_poll(sections(&[Section::Soc]));
        let request = exchange.next_request().unwrap();
        let response = board.respond(&request.bytes).unwrap();
        assert_eq!(exchange.handle_bytes(&request.bytes), Progress::Pending);
        assert_eq!(exchange.handle_bytes(&response.other), Progress::Pending);
        assert_eq!(exchange.clear_reply().map(|e| e.kind()), Some("bad_length"));
        assert_eq!(exchange.handle_bytes(&response.reply), Progress::Complete);
    }

    /// Send the planned write through `exchange` to `bus` and feed back whatever it answers (`None`: silence).
    fn write(exchange: &mut DalyModbusExchange, bus: &mut dyn Responder, register: u16, value: u16) -> Progress {
        exchange.begin_write(register, value);
        let outgoing = exchange.next_request().expect("a write is planned");
        let progress = bus.respond(&outgoing.bytes).map_or(Progress::Pending, |r| exchange.handle_bytes(&r.reply));
        assert_eq!(exchange.next_request(), None, "a write is one request");
        progress
    }

    #[test]
    fn a_d2_write_sends_the_documented_frame_and_its_echo_completes_it() {
        let mut bus = bus();
        let mut exchange = exchange();
        exchange.begin_write(d2::CHARGE_MOSFET_REGISTER, 0);
        let outgoing = exchange.next_request().unwrap();
        assert_eq!(outgoing.bytes, [0xd2, 0x06, 0x00, 0xa5, 0x00, 0x00, 0x8a, 0x4a]);
        assert!(outgoing.label.contains("charge MOSFET switch"), "{}", outgoing.label);
        let reply = bus.respond(&outgoing.bytes).unwrap().reply;
        assert_eq!(exchange.handle_bytes(&reply), Progress::Complete);
        assert_eq!(exchange.write_reply(), Some(&Ok(WriteAck { register: d2::CHARGE_MOSFET_REGISTER, value: 0 })));
        assert_eq!(bus.pack().mosfets(), (false, true));
        // The read-back afterwards is an ordinary poll and sees the new state.
        poll(&mut exchange, &mut bus, sections(&[Section::Mosfet]));
        let pack = &exchange.snapshot().packs[0];
        assert_eq!((pack.charge_mosfet_enabled, pack.discharge_mosfet_enabled), (Some(false), Some(true)));
        assert_eq!(exchange.write_reply(), None, "a poll forgets the write's answer");
    }

    #[test]
    fn a_write_refused_with_an_exception_is_refused_not_retried_and_silence_leaves_no_reply() {
        let mut bus = bus();
        let mut exchange = exchange();
        let refused = DecodeError::ModbusException { function: WRITE, code: 0x02 };
        assert_eq!(write(&mut exchange, &mut bus, 0x80, 1), Progress::Refused(refused));
        assert_eq!(exchange.write_reply(), Some(&Err(refused)));
        // A read reply is not the answer to a write; a board that stays silent leaves no reply to report.
        exchange.begin_write(d2::DISCHARGE_MOSFET_REGISTER, 0);
        exchange.next_request().unwrap();
        let read = bus.respond(&bytes(d2::REALTIME)).unwrap().reply;
        assert_eq!(exchange.handle_bytes(&read), Progress::Pending);
        assert_eq!(exchange.clear_reply().map(|e| e.kind()), Some("unexpected_command"));
        assert_eq!(exchange.write_reply(), None);
        assert_eq!(bus.pack().mosfets(), (true, true));
    }

    #[test]
    fn a_p81_write_goes_to_its_board_its_echo_comes_from_the_reply_address_and_the_high_window_shows_it() {
        let mut board = P81Board::new();
        let map = Map::p81(2).unwrap();
        let mut exchange = DalyModbusExchange::new(map, DecodeOptions::default());
        exchange.begin_write(p81::DISCHARGE_MOSFET_REGISTER, 1);
        let outgoing = exchange.next_request().unwrap();
        assert_eq!(outgoing.bytes, encode_request(map, p81::set_discharge_mosfet(true)));
        assert_eq!(&outgoing.bytes[..6], [0x82, 0x06, 0x01, 0x22, 0x00, 0x01]);
        // A half-duplex adapter's loop-back of the request is an echo, not the board's answer.
        assert_eq!(exchange.handle_bytes(&outgoing.bytes), Progress::Pending);
        let reply = board.respond(&outgoing.bytes).unwrap().reply;
        assert_eq!(reply[0], 0x52);
        assert_eq!(exchange.handle_bytes(&reply), Progress::Complete);
        assert_eq!(exchange.write_reply(), Some(&Ok(WriteAck { register: p81::DISCHARGE_MOSFET_REGISTER, value: 1 })));
        let sent = poll(&mut exchange, &mut board, sections(&[Section::Mosfet]));
        assert_eq!(board.asked, [(0x41, 62)]);
        assert_eq!(sent.len(), 1);
        let pack = &exchange.snapshot().packs[0];
        assert_eq!((pack.charge_mosfet_enabled, pack.discharge_mosfet_enabled), (Some(true), Some(true)));
    }
}
