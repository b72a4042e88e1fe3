//! A simulated Daly A5 bus: boards 1–16 on one line, answering host addresses 0x40 + board − 1 (and 0x80 for
//! board 1, which then sends all 16 cell frames and 3 temperature frames, as real boards do), through the
//! project's own A5 encoders. Write commands change the simulated state. Pure: no I/O and no clock.

use crate::model::{DeviceSnapshot, PackState};
use crate::protocol::daly::alarms;
use crate::protocol::daly::{
    Address, AlarmStatus, Balancing, BatteryMode, CellRange, CellVoltages, Command, DalyState, Frame, Message,
    MosfetEcho, MosfetStatus, Rated, Request, SetSocAck, Soc, Status, TemperatureRange, Temperatures, Text,
};

use super::battery::{Conditions, Pack, PackConfig};
use super::fault::{raise_top_bits, sum_preserving};
use super::rng::Rng;
use super::{Responder, Response};

/// Length of every A5 request.
const FRAME_LEN: usize = 13;

/// One simulated board.
#[derive(Debug, Clone)]
struct Board {
    number: u8,
    pack: Pack,
    /// The rolling 0x93 "BMS life" counter.
    life: u8,
    /// The 0x63 identity string (the model name readers show).
    model: String,
}

/// The identity string a simulated board reports unless told otherwise.
pub const DEFAULT_MODEL: &str = "DL-BMS-SIM-01";

/// Longest identity string a 0x63 reply carries: 16 frames of 7 characters.
pub const MAX_MODEL_LEN: usize = 112;

/// Boards sharing one simulated RS485/UART line.
#[derive(Debug, Clone)]
pub struct DalyBus {
    boards: Vec<Board>,
    /// Whether the boards answer the identity reads 0x57 and 0x63 (many real ones ignore them).
    identity: bool,
}

impl DalyBus {
    /// `boards` boards (1–16) with `cells` cells (1–48) and `temperatures` probes (0–16) each, seeded by `seed`.
    #[must_use]
    pub fn new(boards: u8, cells: u8, temperatures: u8, seed: u64) -> Self {
        let config =
            PackConfig { cells: cells.clamp(1, 48), temperatures: temperatures.min(16), ..PackConfig::default() };
        let boards = (1..=boards.clamp(1, 16))
            .map(|number| Board {
                number,
                pack: Pack::new(config.clone(), seed.wrapping_add(u64::from(number))),
                life: 0,
                model: DEFAULT_MODEL.to_owned(),
            })
            .collect();
        Self { boards, identity: true }
    }

    /// The boards leave the identity reads (0x57 battery code, 0x63 model) unanswered, as many real boards
    /// do: a reader must not wait out its full timeout on them.
    #[must_use]
    pub fn without_identity(mut self) -> Self {
        self.identity = false;
        self
    }

    /// Every board reports `model` as its 0x63 identity string (cut to [`MAX_MODEL_LEN`] bytes on the wire).
    /// Readers take it as they get it, so a test can make a BMS report markup or quotes and see where they go.
    #[must_use]
    pub fn with_model(mut self, model: &str) -> Self {
        for board in &mut self.boards {
            model.clone_into(&mut board.model);
        }
        self
    }

    /// The board a request's host address selects, and whether it asked with the UART/BLE address 0x80.
    fn board_for(&mut self, address: Address) -> Option<(&mut Board, bool)> {
        let (number, uart) = match address {
            Address::Rs485 => (1, false),
            Address::Uart => (1, true),
            Address::Board(n) => (n, false),
        };
        self.boards.iter_mut().find(|b| b.number == number).map(|b| (b, uart))
    }

    /// The board a request's host address selects, to look at.
    fn board(&self, address: Address) -> Option<&Board> {
        let number = match address {
            Address::Rs485 | Address::Uart => 1,
            Address::Board(n) => n,
        };
        self.boards.iter().find(|b| b.number == number)
    }
}

/// Where a gross fault may strike one reply frame: (byte raised, byte lowered by as much), frame offsets. Each
/// pair is a ranged value's most significant byte and a byte whose change is harmless or makes the same value
/// larger still: the value's own least significant byte, or an unused temperature slot of the same frame.
fn gross_pairs(frame: &[u8], cells: usize, sensors: usize) -> Vec<(usize, usize)> {
    // Frame offsets: data byte i is frame byte 4 + i.
    let Some(&command) = frame.get(2) else { return Vec::new() };
    let number = usize::from(frame.get(4).copied().unwrap_or_default());
    match Command::from_code(command) {
        // Total voltage, current (offset 30000) and SOC, each u16 in 0.1 units.
        Some(Command::Soc) => vec![(4, 5), (8, 9), (10, 11)],
        // Remaining capacity, u32 mAh in data bytes 4–7.
        Some(Command::Mosfet) => vec![(8, 11)],
        // Frame n carries cells 3n−2…3n as u16 mV in data bytes 1–6.
        Some(Command::CellVoltages) => {
            (0..3).filter(|j| number >= 1 && 3 * (number - 1) + j < cells).map(|j| (5 + 2 * j, 6 + 2 * j)).collect()
        }
        // Frame n carries sensors 7n−6…7n, one byte each (offset 40) in data bytes 1–7; the slots past the
        // sensor count are unused, and only they may be lowered (a lowered reading would still look real).
        Some(Command::Temperatures) if number >= 1 => {
            let slot = |j: usize| 7 * (number - 1) + j;
            let unused = (0..7).find(|&j| slot(j) >= sensors);
            match unused {
                Some(spare) => (0..7).filter(|&j| slot(j) < sensors).map(|j| (5 + j, 5 + spare)).collect(),
                None => Vec::new(),
            }
        }
        _ => Vec::new(),
    }
}

impl Board {
    /// The reply to `request` from this board, as wire bytes.
    fn answer(&mut self, request: &Request, uart: bool) -> Vec<u8> {
        let address = if uart { Address::Uart } else { Address::Rs485 };
        let cells = self.pack.cell_voltages_v();
        let sensors = u16::from(self.pack.config().temperatures);
        let frames = request.command.reply_frame_count(cells.len() as u16, sensors, address);
        let message = match request.command {
            Command::CellVoltages => {
                return CellVoltages::new(cells.into_iter().map(Some).collect()).encode_frames(self.number, frames);
            }
            Command::Temperatures => {
                let temps = self.pack.temperatures_c().iter().map(|&t| Some(t.round() as i16)).collect();
                return Temperatures::new(temps).encode_frames(self.number, frames);
            }
            Command::Soc => {
                Message::Soc(Soc::new(self.pack.voltage_v(), self.pack.current_a(), self.pack.soc() * 100.0))
            }
            Command::CellRange => Message::CellRange(cell_range(&cells)),
            Command::TemperatureRange => Message::TemperatureRange(temperature_range(self.pack.temperatures_c())),
            Command::Mosfet => {
                self.life = self.life.wrapping_add(1);
                let (charge, discharge) = self.pack.mosfets();
                let (state, state_raw) = match self.pack.state() {
                    PackState::Idle => (DalyState::Stationary, 0),
                    PackState::Charging => (DalyState::Charging, 1),
                    PackState::Discharging => (DalyState::Discharging, 2),
                };
                Message::Mosfet(MosfetStatus {
                    state,
                    state_raw,
                    charge_mosfet_on: charge,
                    discharge_mosfet_on: discharge,
                    bms_life: self.life,
                    remaining_capacity_ah: self.pack.remaining_capacity_ah(),
                })
            }
            Command::Status => {
                let cycles = u16::try_from(self.pack.cycles()).unwrap_or(u16::MAX);
                let charging = self.pack.state() == PackState::Charging;
                let discharging = self.pack.state() == PackState::Discharging;
                Message::Status(Status::new(cells.len() as u8, sensors as u8, charging, discharging, 0, cycles))
            }
            Command::Balancing => {
                let balancing: Vec<u16> = self.pack.balancing_cells().iter().map(|&i| i as u16 + 1).collect();
                Message::Balancing(Balancing::from_cells(&balancing))
            }
            Command::Alarms => Message::Alarms(AlarmStatus { alarms: self.alarm_names(), fault_code: 0 }),
            Command::Rated => Message::Rated(Rated {
                rated_capacity_ah: self.pack.config().design_capacity_ah,
                nominal_cell_voltage_v: 3.2,
            }),
            Command::BatteryCode => {
                let code = format!("SIM-DALY-{:02}-{:04}", self.number, cells.len());
                return Text::new(Command::BatteryCode, &code).encode_frames(self.number, Command::BatteryCode.code());
            }
            Command::Identity => {
                return Text::new(Command::Identity, &self.model).encode_frames(self.number, Command::Identity.code());
            }
            Command::DischargeMosfet => {
                let on = request.data.first().is_some_and(|&b| b != 0);
                self.pack.set_discharge_mosfet(on);
                Message::DischargeMosfet(MosfetEcho { mosfet_state_echo: on })
            }
            Command::ChargeMosfet => {
                let on = request.data.first().is_some_and(|&b| b != 0);
                self.pack.set_charge_mosfet(on);
                Message::ChargeMosfet(MosfetEcho { mosfet_state_echo: on })
            }
            Command::SetSoc => {
                let permille = request.set_soc_values().map_or(0, |v| v.soc_permille);
                let accepted = permille <= 1000;
                if accepted {
                    self.pack.set_soc(f64::from(permille) / 1000.0);
                }
                Message::SetSoc(SetSocAck { accepted })
            }
            // Mode 0 and a fixed production date (2026-01-15): the layout is only of medium confidence,
            // so the simulator sends exactly what our decoder reads and nothing it would have to guess.
            Command::BatteryMode => Message::BatteryMode(BatteryMode {
                mode_raw: 0,
                production_year: 2026,
                production_month: 1,
                production_day: 15,
                raw: [0, 0, 26, 1, 15, 0, 0, 0],
            }),
            // A restart changes nothing a reader can see (a 2026 board kept its uptime); acknowledge it.
            Command::Restart => Message::Restart,
        };
        message.encode(self.number)
    }

    fn alarm_names(&self) -> Vec<&'static str> {
        alarm_names(self.pack.conditions())
    }
}

/// The Daly 0x98 identifiers a pack's threshold conditions raise (level 1: the simulated BMS warns, it does not
/// trip). The Modbus-style D2 bus reports the same bits.
#[must_use]
pub fn alarm_names(c: Conditions) -> Vec<&'static str> {
    [
        (c.cell_voltage_high, "cell_voltage_high_l1"),
        (c.cell_voltage_low, "cell_voltage_low_l1"),
        (c.temperature_high, "discharge_temperature_high_l1"),
        (c.temperature_low, "charge_temperature_low_l1"),
        (c.soc_low, "soc_low_l1"),
        (c.cell_spread_high, "cell_voltage_difference_l1"),
    ]
    .into_iter()
    .filter_map(|(on, name)| on.then_some(name))
    .collect()
}

fn cell_range(cells: &[f64]) -> CellRange {
    let max = cells.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1));
    let min = cells.iter().enumerate().min_by(|a, b| a.1.total_cmp(b.1));
    let (max_i, max_v) = max.map_or((0, 0.0), |(i, &v)| (i, v));
    let (min_i, min_v) = min.map_or((0, 0.0), |(i, &v)| (i, v));
    CellRange {
        max_cell_voltage_v: (max_v * 1000.0).round() / 1000.0,
        max_cell_number: max_i as u8 + 1,
        min_cell_voltage_v: (min_v * 1000.0).round() / 1000.0,
        min_cell_number: min_i as u8 + 1,
    }
}

fn temperature_range(temps: &[f64]) -> TemperatureRange {
    let max = temps.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1));
    let min = temps.iter().enumerate().min_by(|a, b| a.1.total_cmp(b.1));
    let (max_i, max_t) = max.map_or((0, 0.0), |(i, &t)| (i, t));
    let (min_i, min_t) = min.map_or((0, 0.0), |(i, &t)| (i, t));
    TemperatureRange {
        max_temperature_c: max_t.round() as i16,
        max_temperature_sensor: max_i as u8 + 1,
        min_temperature_c: min_t.round() as i16,
        min_temperature_sensor: min_i as u8 + 1,
    }
}

impl Responder for DalyBus {
    fn next_request(&mut self, pending: &mut Vec<u8>) -> Option<Vec<u8>> {
        loop {
            let start = pending.iter().position(|&b| b == 0xA5).unwrap_or(pending.len());
            pending.drain(..start);
            let candidate = pending.get(..FRAME_LEN)?;
            if Request::decode(candidate).is_ok() {
                return Some(pending.drain(..FRAME_LEN).collect());
            }
            // Not a request (noise, or a cut frame): resynchronise on the next start byte.
            pending.drain(..1);
        }
    }

    fn respond(&mut self, request: &[u8]) -> Option<Response> {
        let request = Request::decode(request).ok()?;
        if !self.identity && matches!(request.command, Command::BatteryCode | Command::Identity) {
            return None;
        }
        let (board, uart) = self.board_for(request.address)?;
        let reply = board.answer(&request, uart);
        let other_command = if request.command == Command::Soc { Command::CellRange } else { Command::Soc };
        let other = board.answer(&Request { command: other_command, ..request }, uart);
        Some(Response { reply, other })
    }

    fn step(&mut self, dt_s: f64) {
        for board in &mut self.boards {
            board.pack.step(dt_s);
        }
    }

    fn truth(&self) -> DeviceSnapshot {
        let packs = self
            .boards
            .iter()
            .map(|b| {
                let mut pack = b.pack.to_snapshot(b.number);
                pack.alarms = alarms::to_model(&alarms::from_names(b.alarm_names()), 0);
                pack
            })
            .collect();
        DeviceSnapshot { packs }
    }

    fn passes_check(&self, _request: &[u8], bytes: &[u8]) -> bool {
        !bytes.is_empty()
            && bytes.len().is_multiple_of(FRAME_LEN)
            && bytes.chunks_exact(FRAME_LEN).all(|frame| Frame::parse(frame).is_ok())
    }

    fn gross(&self, request: &[u8], reply: &[u8], rng: &mut Rng) -> Option<Vec<u8>> {
        let request = Request::decode(request).ok()?;
        let board = self.board(request.address)?;
        let (cells, sensors) = (board.pack.cell_voltages_v().len(), usize::from(board.pack.config().temperatures));
        let sites: Vec<(usize, usize, usize)> = reply
            .chunks_exact(FRAME_LEN)
            .enumerate()
            .flat_map(|(k, frame)| {
                gross_pairs(frame, cells, sensors)
                    .into_iter()
                    .filter(|&(raise, _)| frame.get(raise).is_some_and(|&b| raise_top_bits(b).is_some()))
                    .map(move |(raise, lower)| (k, raise, lower))
            })
            .collect();
        let &(k, raise, lower) = sites.get(rng.below(sites.len()))?;
        let at = k * FRAME_LEN;
        let frame = sum_preserving(reply.get(at..at + FRAME_LEN)?, raise, lower)?;
        let mut bytes = reply.to_vec();
        bytes.get_mut(at..at + FRAME_LEN)?.copy_from_slice(&frame);
        Some(bytes)
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn without_identity_the_identity_reads_go_unanswered_and_the_rest_still_answer() {
        let mut bus = DalyBus::new(1, 16, 4, 7).without_identity();
        for command in [Command::BatteryCode, Command::Identity] {
            let request = Request::read(command, Address::Rs485, crate::protocol::daly::Filler::Zero);
            assert_eq!(bus.respond(&request.encode()), None, "{command:?}");
        }
        for command in [Command::Rated, Command::Soc, Command::Status] {
            let request = Request::read(command, Address::Rs485, crate::protocol::daly::Filler::Zero);
            assert!(bus.respond(&request.encode()).is_some(), "{command:?}");
        }
    }

    use super::*;
    use crate::protocol::DecodeOptions;
    use crate::protocol::daly::{Filler, decode_capture};

    fn poll(bus: &mut DalyBus, address: Address) -> (Vec<u8>, Vec<u8>) {
        let (mut requests, mut replies) = (Vec::new(), Vec::new());
        for command in [
            Command::Status,
            Command::Soc,
            Command::Mosfet,
            Command::CellVoltages,
            Command::Temperatures,
            Command::Balancing,
            Command::Alarms,
        ] {
            let request = Request::read(command, address, Filler::Aa).encode();
            replies.extend(bus.respond(&request).unwrap().reply);
            requests.extend(request);
        }
        (requests, replies)
    }

    #[test]
    fn a_full_poll_decodes_to_the_truth_within_wire_resolution() {
        for address in [Address::Rs485, Address::Uart] {
            let mut bus = DalyBus::new(1, 16, 4, 11);
            bus.step(300.0);
            let (_, replies) = poll(&mut bus, address);
            let capture = decode_capture(None, &replies, &DecodeOptions::default()).unwrap();
            assert!(capture.rejected.is_empty(), "{:?}", capture.rejected);
            let (got, truth) = (&capture.device.packs[0], &bus.truth().packs[0]);
            assert!((got.voltage_volts.unwrap() - truth.voltage_volts.unwrap()).abs() <= 0.05 + 1e-9);
            assert!((got.current_amperes.unwrap() - truth.current_amperes.unwrap()).abs() <= 0.05 + 1e-9);
            assert!((got.state_of_charge_ratio.unwrap() - truth.state_of_charge_ratio.unwrap()).abs() <= 0.0005 + 1e-9);
            assert_eq!(got.cell_volts.len(), 16);
            for (g, t) in got.cell_volts.iter().zip(&truth.cell_volts) {
                assert!((g.unwrap() - t.unwrap()).abs() <= 0.0005 + 1e-9);
            }
            assert_eq!(got.temperatures.len(), 4);
            for (g, t) in got.temperatures.iter().zip(&truth.temperatures) {
                assert_eq!(g.sensor, t.sensor);
                assert!((g.celsius - t.celsius).abs() <= 0.5 + 1e-9);
            }
            assert_eq!(got.cycle_count, truth.cycle_count);
            assert_eq!(got.state, truth.state);
            assert_eq!(got.charge_mosfet_enabled, truth.charge_mosfet_enabled);
            assert_eq!(got.cell_balancing, truth.cell_balancing);
            let active = |p: &crate::model::PackSnapshot| {
                p.alarms.iter().filter(|a| a.active).map(|a| a.name).collect::<Vec<_>>()
            };
            assert_eq!(active(got), active(truth));
        }
    }

    #[test]
    fn host_0x80_gets_all_sixteen_cell_frames_and_0x40_only_the_needed_ones() {
        let bus = DalyBus::new(1, 8, 2, 1);
        let frames = |address| {
            bus.clone()
                .respond(&Request::read(Command::CellVoltages, address, Filler::Zero).encode())
                .unwrap()
                .reply
                .len()
                / 13
        };
        assert_eq!(frames(Address::Uart), 16);
        assert_eq!(frames(Address::Rs485), 3);
    }

    #[test]
    fn every_read_the_codec_knows_is_answered_and_decodes() {
        let mut bus = DalyBus::new(1, 16, 4, 5);
        for command in Command::ALL.into_iter().filter(|c| !c.is_write()) {
            let request = Request::read(command, Address::Rs485, Filler::Aa).encode();
            let reply = bus.respond(&request).unwrap_or_else(|| panic!("{command:?} unanswered")).reply;
            let capture = decode_capture(Some(&request), &reply, &DecodeOptions::default()).unwrap();
            assert!(capture.rejected.is_empty() && !capture.replies.is_empty(), "{command:?}: {capture:?}");
        }
    }

    #[test]
    fn the_identity_reply_carries_the_model_it_was_given() {
        let identity = |bus: &mut DalyBus| {
            let request = Request::read(Command::Identity, Address::Rs485, Filler::Zero).encode();
            let reply = bus.respond(&request).unwrap().reply;
            let capture = decode_capture(Some(&request), &reply, &DecodeOptions::default()).unwrap();
            match capture.replies.as_slice() {
                [reply] => match &reply.message {
                    Message::Identity(text) => text.text.clone(),
                    other => panic!("{other:?}"),
                },
                other => panic!("{other:?}"),
            }
        };
        assert_eq!(identity(&mut DalyBus::new(1, 4, 1, 1)), DEFAULT_MODEL);
        let xss = "<script>alert(1)</script> \"quoted\" & 'single'";
        assert_eq!(identity(&mut DalyBus::new(2, 4, 1, 1).with_model(xss)), xss);
        let long = "M".repeat(MAX_MODEL_LEN + 10);
        assert_eq!(identity(&mut DalyBus::new(1, 4, 1, 1).with_model(&long)), long[..MAX_MODEL_LEN]);
    }

    #[test]
    fn boards_answer_only_their_own_address() {
        let mut bus = DalyBus::new(2, 4, 1, 1);
        let ask = |bus: &mut DalyBus, address| bus.respond(&Request::read(Command::Soc, address, Filler::Aa).encode());
        assert_eq!(ask(&mut bus, Address::Board(2)).unwrap().reply[1], 2);
        assert_eq!(ask(&mut bus, Address::Board(1)).unwrap().reply[1], 1);
        assert!(ask(&mut bus, Address::Board(3)).is_none());
    }

    #[test]
    fn mosfet_and_soc_writes_change_the_state_that_later_reads_report() {
        let mut bus = DalyBus::new(1, 4, 1, 1);
        bus.respond(&Request::charge_mosfet(Address::Rs485, false).encode()).unwrap();
        assert_eq!(bus.truth().packs[0].charge_mosfet_enabled, Some(false));
        let soc = crate::protocol::daly::SetSoc {
            year: 26,
            month: 11,
            day: 22,
            hour: 0,
            minute: 0,
            second: 0,
            soc_permille: 500,
        };
        let ack = bus.respond(&Request::set_soc(Address::Rs485, &soc).encode()).unwrap().reply;
        let capture = decode_capture(None, &ack, &DecodeOptions::default()).unwrap();
        assert_eq!(capture.replies.len(), 1);
        assert!((bus.truth().packs[0].state_of_charge_ratio.unwrap() - 0.5).abs() < 1e-9);
    }

    #[test]
    fn requests_are_found_after_noise_and_only_once_complete() {
        let mut bus = DalyBus::new(1, 4, 1, 1);
        let request = Request::read(Command::Soc, Address::Rs485, Filler::Aa).encode();
        let mut pending = vec![0x00, 0xA5, 0x13];
        pending.extend_from_slice(&request[..6]);
        assert_eq!(bus.next_request(&mut pending), None);
        pending.extend_from_slice(&request[6..]);
        assert_eq!(bus.next_request(&mut pending), Some(request.to_vec()));
        assert!(pending.is_empty());
    }

    #[test]
    fn the_wrong_command_reply_is_a_valid_reply_to_another_command() {
        let mut bus = DalyBus::new(1, 4, 1, 1);
        let request = Request::read(Command::Soc, Address::Rs485, Filler::Aa).encode();
        let other = bus.respond(&request).unwrap().other;
        assert_eq!(other[2], Command::CellRange.code());
        let err = decode_capture(Some(&request), &other, &DecodeOptions::default()).unwrap_err();
        assert_eq!(err.kind(), "unexpected_command");
    }
}
