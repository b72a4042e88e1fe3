//! The simulated Pace bus (`docs/protocols/pace.md`): a master pack at ADR 1 relaying up to 16 chained packs, answering
//! the reads 0x42/0x44/0xC1/0xC2/0xA6/0x90/0xB1 through the codec's own encoders. Pure: no I/O, no clock.
//!
//! Where real firmwares differ, this bus chooses (and the tests pin down):
//! - Only ADR 1 answers, plus ADR 0 when the bus holds a single pack (a stand-alone pack); other ADRs stay silent,
//!   as do frames that fail the envelope checks (a real BMS ignores what it cannot parse). Replies carry ADR 1.
//! - COMMAND 0xFF returns every pack (second byte = count); COMMAND n (1..=packs) pack n (second byte = n);
//!   COMMAND 0 the master itself (second byte 0); any other COMMAND gets RTN 0x90 (ADR error).
//! - VER other than 0x25 gets RTN 0x01; CID1 other than 0x46, a command it does not know (writes such as 0x9B
//!   included: this board implements no writes) or a read with the wrong INFO length gets RTN 0x04.
//! - With six temperatures the wire carries probes 1–4, the MOSFET and the ambient sensor (probe 5's reading),
//!   as the codec's N = 6 mapping expects; otherwise the probes only. [`PaceBus::truth`] lists exactly these.
//! - 0xB1 reports 2026-01-01 00:00:00 plus the simulated seconds stepped so far (never the host clock).

use crate::model::{DeviceSnapshot, SensorId, Temperature};
use crate::protocol::DecodeError;
use crate::protocol::pace::analog::TEMP_NOT_FITTED;
use crate::protocol::pace::{
    ALL_PACKS, CID1_BATTERY, Command, DateTime, Header, PackBlock, Request, StatusBlock, VER_PACE, encode_analog,
    encode_capacity, encode_date_time, encode_error_reply, encode_frame, encode_pack_count, encode_product_info,
    encode_status, encode_version, pace_tail, parse_frame,
};

use super::battery::{Pack, PackConfig};
use super::fault::push_msb_far;
use super::rng::Rng;
use super::{Responder, Response};

/// ADR of the master pack, the one that answers.
pub const MASTER_ADR: u8 = 1;
/// Longest run after a `~` without a CR before it is treated as noise (a 16-pack reply is under 3000 bytes).
const MAX_REQUEST_LEN: usize = 4200;
/// RTN: VER not supported.
const RTN_VERSION_ERROR: u8 = 0x01;
/// RTN: CID2 invalid / unknown command.
const RTN_INVALID_COMMAND: u8 = 0x04;
/// RTN: no pack at that address.
const RTN_ADR_ERROR: u8 = 0x90;
/// P as a 2023 firmware sends it.
const USER_DEFINED_COUNT: u8 = 9;
/// T: the 20-byte tail of 2023 firmwares (full, cycles, design, SOC, cumulative, SOH, port voltage and current).
const TAIL_LEN: usize = 20;
/// Pace temperature offset, 0.1 K.
const KELVIN_OFFSET_RAW: f64 = 2730.0;
/// 2026-01-01 in days since 1970-01-01: the simulated clock's start.
const START_DAYS_SINCE_1970: i64 = 20_454;

/// A Pace master at ADR 1 with `packs` chained packs behind it.
#[derive(Debug, Clone)]
pub struct PaceBus {
    packs: Vec<Pack>,
    /// Serial-number seed, so 0xC2 is stable for a given `seed`.
    serial: u64,
    elapsed_s: f64,
}

impl PaceBus {
    /// A bus of `packs` (1–16) packs of `cells` (1–16) cells and `temperatures` (0–16) sensors, seeded by `seed`.
    #[must_use]
    pub fn new(packs: u8, cells: u8, temperatures: u8, seed: u64) -> Self {
        let mut rng = Rng::new(seed);
        let serial = rng.next_u64();
        let packs = (0..packs.clamp(1, 16))
            .map(|k| {
                let config = PackConfig {
                    cells: cells.clamp(1, 16),
                    temperatures: temperatures.min(16),
                    cycles: 42 + 7 * u32::from(k),
                    initial_soc: rng.uniform(0.45, 0.80),
                    ..PackConfig::default()
                };
                Pack::new(config, rng.next_u64())
            })
            .collect();
        Self { packs, serial, elapsed_s: 0.0 }
    }

    /// The simulated packs, pack 1 (the master) first.
    #[must_use]
    pub fn packs(&self) -> &[Pack] {
        &self.packs
    }

    /// Pack `number` (1-based), to change its state (MOSFETs, SOC) from a test or a write command.
    pub fn pack_mut(&mut self, number: u8) -> Option<&mut Pack> {
        self.packs.get_mut(usize::from(number).checked_sub(1)?)
    }

    /// The simulated date and time: 2026-01-01 00:00:00 plus the seconds stepped so far.
    #[must_use]
    pub fn date_time(&self) -> DateTime {
        let seconds = self.elapsed_s.max(0.0).floor() as i64;
        let (year, month, day) = civil_from_days(START_DAYS_SINCE_1970 + seconds.div_euclid(86_400));
        let in_day = seconds.rem_euclid(86_400);
        DateTime {
            year: u16::try_from(year).unwrap_or(u16::MAX),
            month,
            day,
            hour: (in_day / 3600) as u8,
            minute: (in_day / 60 % 60) as u8,
            second: (in_day % 60) as u8,
        }
    }

    /// Whether a request to `adr` reaches a simulated BMS.
    fn answers(&self, adr: u8) -> bool {
        adr == MASTER_ADR || (adr == 0 && self.packs.len() == 1)
    }

    /// Second reply byte and the packs a 0x42/0x44 COMMAND selects, or `None` for a pack that is not there.
    fn select(&self, command: u8) -> Option<(u8, &[Pack])> {
        match command {
            ALL_PACKS => Some((self.packs.len() as u8, self.packs.as_slice())),
            0 => Some((0, self.packs.get(..1)?)),
            n => Some((n, self.packs.get(usize::from(n) - 1..usize::from(n))?)),
        }
    }

    /// The 0x42 reply to COMMAND `command`, or RTN 0x90 when it names no pack.
    fn analog(&self, command: u8) -> Result<Vec<u8>, DecodeError> {
        match self.select(command) {
            Some((second, packs)) => {
                let blocks: Vec<PackBlock> = packs.iter().map(analog_block).collect();
                encode_analog(header(0), 0, second, &blocks)
            }
            None => error_reply(RTN_ADR_ERROR),
        }
    }

    /// The 0x44 reply to COMMAND `command`, or RTN 0x90 when it names no pack.
    fn status(&self, command: u8) -> Result<Vec<u8>, DecodeError> {
        match self.select(command) {
            Some((second, packs)) => {
                let blocks: Vec<StatusBlock> = packs.iter().map(status_block).collect();
                encode_status(header(0), 0, second, &blocks)
            }
            None => error_reply(RTN_ADR_ERROR),
        }
    }

    fn version(&self) -> Result<Vec<u8>, DecodeError> {
        let cells = self.packs.first().map_or(16, |p| p.config().cells);
        encode_version(header(0), &format!("P{cells}S100A-SIM-1.00"), None)
    }

    fn product_info(&self) -> Result<Vec<u8>, DecodeError> {
        let bms = format!("SIMBMS{:010}", self.serial % 10_000_000_000);
        let pack = format!("SIMPACK{:010}", (self.serial >> 20) % 10_000_000_000);
        encode_product_info(header(0), &bms, Some(&pack))
    }

    fn capacity(&self) -> Result<Vec<u8>, DecodeError> {
        let Some(pack) = self.packs.first() else { return error_reply(RTN_ADR_ERROR) };
        let config = pack.config();
        encode_capacity(header(0), pack.remaining_capacity_ah(), config.full_capacity_ah, config.design_capacity_ah)
    }

    fn pack_count(&self) -> Result<Vec<u8>, DecodeError> {
        encode_pack_count(header(0), self.packs.len() as u8)
    }

    /// The reply to `command` and the reply to another command (for the wrong-command fault).
    fn answer(&self, command: Command) -> Result<Response, DecodeError> {
        let (reply, other) = match command {
            Command::Analog(c) => (self.analog(c)?, self.status(c)?),
            Command::Status(c) => (self.status(c)?, self.analog(c)?),
            Command::SoftwareVersion => (self.version()?, self.pack_count()?),
            Command::ProductInfo => (self.product_info()?, self.pack_count()?),
            Command::PackCapacity => (self.capacity()?, self.pack_count()?),
            Command::PackCount => (self.pack_count()?, self.version()?),
            Command::DateTime => (encode_date_time(header(0), self.date_time())?, self.pack_count()?),
        };
        Ok(Response { reply, other })
    }
}

impl Responder for PaceBus {
    fn next_request(&mut self, pending: &mut Vec<u8>) -> Option<Vec<u8>> {
        loop {
            let Some(start) = pending.iter().position(|&b| b == b'~') else {
                pending.clear();
                return None;
            };
            pending.drain(..start);
            // A `~` never occurs inside a frame (the body is hex), so a second one means the first was noise.
            match pending.iter().skip(1).position(|&b| b == b'~' || b == b'\r').map(|i| i + 1) {
                Some(end) if pending.get(end) == Some(&b'\r') => return Some(pending.drain(..=end).collect()),
                Some(next_start) => _ = pending.drain(..next_start),
                None if pending.len() > MAX_REQUEST_LEN => _ = pending.drain(..1),
                None => return None,
            }
        }
    }

    fn respond(&mut self, request: &[u8]) -> Option<Response> {
        let frame = parse_frame(request).ok()?;
        if !self.answers(frame.header.adr) {
            return None;
        }
        let answer = match Request::decode(request) {
            Ok(req) if req.ver != VER_PACE => error_response(RTN_VERSION_ERROR, self.pack_count()),
            Ok(req) if req.cid1 != CID1_BATTERY => error_response(RTN_INVALID_COMMAND, self.pack_count()),
            Ok(req) => self.answer(req.command),
            Err(_) => error_response(RTN_INVALID_COMMAND, self.pack_count()),
        };
        // The encoders fail only on counts or lengths beyond the wire's fields, which 16 packs of 16 cells never
        // reach; were it to happen, silence is what the host would see from a confused BMS.
        answer.ok()
    }

    fn step(&mut self, dt_s: f64) {
        if dt_s.is_finite() && dt_s > 0.0 {
            self.elapsed_s += dt_s;
        }
        for pack in &mut self.packs {
            pack.step(dt_s);
        }
    }

    fn truth(&self) -> DeviceSnapshot {
        let packs = (1..)
            .zip(&self.packs)
            .map(|(number, pack)| {
                let mut snapshot = pack.to_snapshot(number);
                let temperatures = wire_temperatures(pack);
                snapshot.temperature_sensor_count = Some(temperatures.len() as u16);
                snapshot.temperatures =
                    temperatures.into_iter().map(|(sensor, celsius)| Temperature { sensor, celsius }).collect();
                snapshot
            })
            .collect();
        DeviceSnapshot { packs }
    }

    fn passes_check(&self, _request: &[u8], bytes: &[u8]) -> bool {
        parse_frame(bytes).is_ok()
    }

    fn gross(&self, request: &[u8], reply: &[u8], rng: &mut Rng) -> Option<Vec<u8>> {
        // Only the 0x42 analog reply carries ranged values. Its pack voltage (u16 mV) and current (i16, 10 mA)
        // cannot leave their range far: their whole wire range is 65.5 V and ±327 A, within a few times a real
        // pack's. Cells (mV), temperatures (0.1 K) and remaining capacity (10 mAh; SOC is remaining / full) can.
        let Ok(Request { command: Command::Analog(command), .. }) = Request::decode(request) else { return None };
        let frame = parse_frame(reply).ok()?;
        let info = frame.info;
        let blocks = if command == ALL_PACKS { usize::from(*info.get(1)?) } else { 1 };
        let mut sites = Vec::new();
        let mut at = 2;
        for _ in 0..blocks {
            let m = usize::from(*info.get(at)?);
            sites.extend((0..m).map(|i| at + 1 + 2 * i));
            let n_at = at + 1 + 2 * m;
            let n = usize::from(*info.get(n_at)?);
            let temps = (0..n).map(|i| n_at + 1 + 2 * i);
            let fitted = |&t: &usize| {
                let word = info.get(t..t + 2).map(|w| w.iter().fold(0u16, |a, &b| a << 8 | u16::from(b)));
                word.is_some_and(|w| w != TEMP_NOT_FITTED)
            };
            sites.extend(temps.filter(fitted));
            // After the temperatures: current (2), voltage (2), remaining (2), P (1), the tail.
            let remaining = n_at + 1 + 2 * n + 4;
            sites.push(remaining);
            at = remaining + 2 + 1 + TAIL_LEN;
        }
        sites.retain(|&i| info.get(i).is_some_and(|&b| push_msb_far(b, false).is_some()));
        let &target = sites.get(rng.below(sites.len()))?;
        let mut info = info;
        let byte = info.get_mut(target)?;
        *byte = push_msb_far(*byte, false)?;
        // LCHKSUM and CHKSUM are computed anew: the frame is as valid as the master's own.
        encode_frame(frame.header, &info).ok()
    }
}

/// The reply header of the master with CID2/RTN `code`.
fn header(code: u8) -> Header {
    Header { ver: VER_PACE, adr: MASTER_ADR, cid1: CID1_BATTERY, code }
}

fn error_reply(rtn: u8) -> Result<Vec<u8>, DecodeError> {
    encode_error_reply(VER_PACE, MASTER_ADR, CID1_BATTERY, rtn)
}

fn error_response(rtn: u8, other: Result<Vec<u8>, DecodeError>) -> Result<Response, DecodeError> {
    Ok(Response { reply: error_reply(rtn)?, other: other? })
}

/// The temperatures the wire carries, in order, with the sensor each one is.
fn wire_temperatures(pack: &Pack) -> Vec<(SensorId, f64)> {
    let probes = pack.temperatures_c();
    if probes.len() == 6 {
        let ambient = probes.get(4).copied().unwrap_or(pack.config().ambient_c);
        (1..=4)
            .zip(probes)
            .map(|(n, &c)| (SensorId::Probe(n), c))
            .chain([(SensorId::Mosfet, pack.mosfet_temperature_c()), (SensorId::Ambient, ambient)])
            .collect()
    } else {
        (1..).zip(probes).map(|(n, &c)| (SensorId::Probe(n), c)).collect()
    }
}

/// `value × scale`, rounded and saturated into a u16.
fn raw_u16(value: f64, scale: f64) -> u16 {
    (value * scale).round().clamp(0.0, f64::from(u16::MAX)) as u16
}

/// One pack's 0x42 block: T = 20 with the reported SOC, SOH and port voltage filled in.
fn analog_block(pack: &Pack) -> PackBlock {
    let config = pack.config();
    let voltage_mv = raw_u16(pack.voltage_v(), 1000.0);
    let cycles = u16::try_from(pack.cycles()).unwrap_or(u16::MAX);
    let mut tail =
        pace_tail(raw_u16(config.full_capacity_ah, 100.0), cycles, raw_u16(config.design_capacity_ah, 100.0), TAIL_LEN);
    if let Some(soc) = tail.get_mut(6) {
        *soc = raw_u16(pack.soc(), 100.0).min(100) as u8;
    }
    if let Some(soh) = tail.get_mut(15) {
        *soh = raw_u16(config.full_capacity_ah / config.design_capacity_ah, 100.0).min(100) as u8;
    }
    if let Some(port) = tail.get_mut(16..18) {
        port.copy_from_slice(&voltage_mv.to_be_bytes());
    }
    PackBlock {
        cells_mv: pack.cell_voltages_v().into_iter().map(|v| raw_u16(v, 1000.0)).collect(),
        temps_raw: wire_temperatures(pack)
            .into_iter()
            .map(|(_, c)| raw_u16(c * 10.0 + KELVIN_OFFSET_RAW, 1.0))
            .collect(),
        current_raw: (pack.current_a() * 100.0).round().clamp(f64::from(i16::MIN), f64::from(i16::MAX)) as i16,
        voltage_mv,
        remaining_raw: raw_u16(pack.remaining_capacity_ah(), 100.0),
        user_defined_count: USER_DEFINED_COUNT,
        tail,
    }
}

/// A level byte (`docs/protocols/pace.md#0x44-status`): 0x01 below `low`, 0x02 above `high`, else 0x00.
fn level(value: f64, low: f64, high: f64) -> u8 {
    match value {
        v if v > high => 0x02,
        v if v < low => 0x01,
        _ => 0x00,
    }
}

/// One pack's 0x44 block: levels and warnings from the thresholds, MOSFET and balancing state, no extension.
fn status_block(pack: &Pack) -> StatusBlock {
    let th = pack.config().thresholds;
    let conditions = pack.conditions();
    let (charge, discharge) = pack.mosfets();
    let charging = pack.current_a() > 0.0;
    let bit = |on: bool, n: u8| u8::from(on) << n;
    let balancing = pack.balancing_cells().into_iter().filter(|&i| i < 16).fold(0u16, |acc, i| acc | 1 << i);
    let [balance2, balance1] = balancing.to_be_bytes();
    StatusBlock {
        cell_warn: pack.cell_voltages_v().into_iter().map(|v| level(v, th.cell_low_v, th.cell_high_v)).collect(),
        temp_warn: wire_temperatures(pack)
            .into_iter()
            .map(|(_, c)| level(c, th.temperature_low_c, th.temperature_high_c))
            .collect(),
        system: bit(charge, 1) | bit(discharge, 2),
        balance1,
        balance2,
        warn1: bit(conditions.cell_voltage_high, 0) | bit(conditions.cell_voltage_low, 1),
        warn2: bit(conditions.temperature_high, u8::from(!charging))
            | bit(conditions.temperature_low, 2 + u8::from(!charging))
            | bit(conditions.soc_low, 7),
        ..StatusBlock::default()
    }
}

/// (year, month, day) of `days` since 1970-01-01 (Howard Hinnant's `civil_from_days`).
fn civil_from_days(days: i64) -> (i64, u8, u8) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u8;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u8;
    (yoe + era * 400 + i64::from(month <= 2), month, day)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::PackSnapshot;
    use crate::protocol::DecodeOptions;
    use crate::protocol::pace::{self, Reply, encode_frame};

    fn stepped(packs: u8, temperatures: u8) -> PaceBus {
        let mut bus = PaceBus::new(packs, 16, temperatures, 11);
        for _ in 0..40 {
            bus.step(7.0);
        }
        bus
    }

    fn decode(bus: &mut PaceBus, request: &[u8]) -> DeviceSnapshot {
        let response = bus.respond(request).expect("the master answers");
        pace::decode_capture(Some(request), &response.reply, &DecodeOptions::default())
            .expect("the reply decodes")
            .device
    }

    fn close(what: &str, got: Option<f64>, want: Option<f64>, tolerance: f64) {
        let (got, want) = (got.expect(what), want.expect(what));
        assert!((got - want).abs() <= tolerance, "{what}: decoded {got}, truth {want}");
    }

    fn assert_analog_matches(decoded: &PackSnapshot, truth: &PackSnapshot) {
        let n = truth.pack;
        assert_eq!(decoded.pack, n);
        close(&format!("pack {n} voltage"), decoded.voltage_volts, truth.voltage_volts, 0.001);
        close(&format!("pack {n} current"), decoded.current_amperes, truth.current_amperes, 0.01);
        let remaining = (decoded.remaining_capacity_ampere_hours, truth.remaining_capacity_ampere_hours);
        close(&format!("pack {n} remaining"), remaining.0, remaining.1, 0.01);
        assert_eq!(decoded.cycle_count, truth.cycle_count);
        assert_eq!(decoded.cell_volts.len(), truth.cell_volts.len());
        for (i, (got, want)) in decoded.cell_volts.iter().zip(&truth.cell_volts).enumerate() {
            close(&format!("pack {n} cell {}", i + 1), *got, *want, 0.001);
        }
        assert_eq!(decoded.temperatures.len(), truth.temperatures.len(), "pack {n} temperatures");
        for (got, want) in decoded.temperatures.iter().zip(&truth.temperatures) {
            assert_eq!(got.sensor, want.sensor);
            close(&format!("pack {n} {:?}", want.sensor), Some(got.celsius), Some(want.celsius), 0.1);
        }
    }

    #[test]
    fn an_all_packs_analog_reply_decodes_to_the_truth_of_every_pack() {
        for (packs, temperatures) in [(1, 4), (1, 6), (4, 4), (4, 6)] {
            let mut bus = stepped(packs, temperatures);
            let request = Request::new(MASTER_ADR, Command::Analog(ALL_PACKS)).encode();
            let decoded = decode(&mut bus, &request);
            let truth = bus.truth();
            assert_eq!(decoded.packs.len(), usize::from(packs));
            assert_eq!(truth.packs.len(), usize::from(packs));
            for (d, t) in decoded.packs.iter().zip(&truth.packs) {
                assert_analog_matches(d, t);
            }
        }
    }

    #[test]
    fn six_temperatures_are_four_probes_the_mosfet_and_ambient() {
        let truth = stepped(1, 6).truth();
        let sensors: Vec<SensorId> = truth.packs[0].temperatures.iter().map(|t| t.sensor).collect();
        let expected = [1, 2, 3, 4].map(SensorId::Probe).into_iter().chain([SensorId::Mosfet, SensorId::Ambient]);
        assert_eq!(sensors, expected.collect::<Vec<_>>());
    }

    #[test]
    fn a_one_pack_request_returns_that_pack_alone() {
        let mut bus = stepped(4, 4);
        let request = Request::new(MASTER_ADR, Command::Analog(3)).encode();
        let response = bus.respond(&request).expect("the master answers");
        let capture =
            pace::decode_capture(Some(&request), &response.reply, &DecodeOptions::default()).expect("decodes");
        let Some(Reply::Analog(reply)) = capture.replies.first() else { panic!("{:?}", capture.replies) };
        assert_eq!((reply.count_or_command, reply.packs.len()), (3, 1));
        assert_eq!(capture.device.packs.len(), 1);
        assert_analog_matches(&capture.device.packs[0], &bus.truth().packs[2]);
    }

    #[test]
    fn a_pack_that_is_not_there_gets_an_adr_error() {
        let mut bus = stepped(2, 4);
        let reply = bus.respond(&Request::new(MASTER_ADR, Command::Analog(5)).encode()).expect("answered").reply;
        assert_eq!(parse_frame(&reply).expect("valid frame").header.code, RTN_ADR_ERROR);
    }

    #[test]
    fn status_replies_report_the_true_mosfet_state_of_every_pack() {
        let mut bus = stepped(3, 4);
        bus.pack_mut(2).expect("pack 2").set_charge_mosfet(false);
        bus.pack_mut(3).expect("pack 3").set_discharge_mosfet(false);
        let decoded = decode(&mut bus, &Request::new(MASTER_ADR, Command::Status(ALL_PACKS)).encode());
        let truth = bus.truth();
        assert_eq!(decoded.packs.len(), 3);
        for (d, t) in decoded.packs.iter().zip(&truth.packs) {
            assert_eq!(d.charge_mosfet_enabled, t.charge_mosfet_enabled, "pack {}", t.pack);
            assert_eq!(d.discharge_mosfet_enabled, t.discharge_mosfet_enabled, "pack {}", t.pack);
        }
        assert_eq!(decoded.packs[1].charge_mosfet_enabled, Some(false));
        assert_eq!(decoded.packs[2].discharge_mosfet_enabled, Some(false));
    }

    #[test]
    fn the_wrong_command_reply_answers_the_other_pack_read() {
        let mut bus = stepped(2, 4);
        let request = Request::new(MASTER_ADR, Command::Analog(ALL_PACKS)).encode();
        let other = bus.respond(&request).expect("answered").other;
        let status = Request::new(MASTER_ADR, Command::Status(ALL_PACKS)).encode();
        let capture = pace::decode_capture(Some(&status), &other, &DecodeOptions::default()).expect("a status reply");
        assert!(matches!(capture.replies.first(), Some(Reply::Status(_))));
        // Read as the answer to the analog request it is not, it yields no voltage.
        let misread = pace::decode_capture(Some(&request), &other, &DecodeOptions::default());
        let voltage = misread.ok().and_then(|c| c.device.packs.iter().find_map(|p| p.voltage_volts));
        assert_eq!(voltage, None);
    }

    #[test]
    fn the_small_reads_decode_to_the_configured_values() {
        let mut bus = stepped(3, 4);
        bus.step(90_061.0);
        let ask = |bus: &mut PaceBus, command| {
            let request = Request::new(MASTER_ADR, command).encode();
            let reply = bus.respond(&request).expect("answered").reply;
            let capture = pace::decode_capture(Some(&request), &reply, &DecodeOptions::default()).expect("decodes");
            capture.replies.into_iter().next().expect("one reply")
        };
        let Reply::PackCount(count) = ask(&mut bus, Command::PackCount) else { panic!("not a pack count") };
        assert_eq!(count.pack_count, 3);
        let Reply::SoftwareVersion(version) = ask(&mut bus, Command::SoftwareVersion) else { panic!("not 0xC1") };
        assert_eq!(version.version, "P16S100A-SIM-1.00");
        let Reply::ProductInfo(info) = ask(&mut bus, Command::ProductInfo) else { panic!("not 0xC2") };
        assert!(info.bms_serial.starts_with("SIMBMS"), "{}", info.bms_serial);
        let Reply::PackCapacity(capacity) = ask(&mut bus, Command::PackCapacity) else { panic!("not 0xA6") };
        let truth = bus.truth();
        close("0xA6 remaining", Some(capacity.remaining_ah), truth.packs[0].remaining_capacity_ampere_hours, 0.01);
        let Reply::DateTime(time) = ask(&mut bus, Command::DateTime) else { panic!("not 0xB1") };
        // 40 × 7 s + 90 061 s = 1 day, 1 h, 5 min, 41 s after the start.
        let expected = DateTime { year: 2026, month: 1, day: 2, hour: 1, minute: 5, second: 41 };
        assert_eq!(time.date_time, expected);
    }

    #[test]
    fn the_simulated_calendar_handles_month_and_leap_year_ends() {
        assert_eq!(civil_from_days(START_DAYS_SINCE_1970), (2026, 1, 1));
        assert_eq!(civil_from_days(START_DAYS_SINCE_1970 + 58), (2026, 2, 28));
        assert_eq!(civil_from_days(START_DAYS_SINCE_1970 + 59), (2026, 3, 1));
        assert_eq!(civil_from_days(START_DAYS_SINCE_1970 + 365 + 365 + 59), (2028, 2, 29));
    }

    #[test]
    fn garbage_before_a_request_is_dropped_and_a_split_request_waits_for_its_end() {
        let mut bus = PaceBus::new(1, 16, 4, 1);
        let request = Request::new(MASTER_ADR, Command::Analog(ALL_PACKS)).encode();
        let (head, rest) = request.split_at(7);
        let mut pending = b"\x00\xffnoise~25\r~0".to_vec();
        pending.extend_from_slice(head);
        assert_eq!(bus.next_request(&mut pending), Some(b"~25\r".to_vec()), "a short frame is still one frame");
        assert_eq!(bus.next_request(&mut pending), None);
        assert_eq!(pending, head, "the stray `~0` was dropped and the start of the request kept");
        pending.extend_from_slice(rest);
        assert_eq!(bus.next_request(&mut pending), Some(request));
        assert!(pending.is_empty());
        assert_eq!(bus.next_request(&mut pending), None);
    }

    #[test]
    fn a_run_without_a_carriage_return_is_dropped_once_it_is_too_long() {
        let mut bus = PaceBus::new(1, 16, 4, 1);
        let mut pending = vec![b'~'];
        pending.extend(std::iter::repeat_n(b'0', MAX_REQUEST_LEN));
        assert_eq!(bus.next_request(&mut pending), None);
        assert!(pending.is_empty(), "{} bytes left", pending.len());
    }

    #[test]
    fn invalid_frames_and_other_addresses_get_no_reply() {
        let mut bus = PaceBus::new(2, 16, 4, 1);
        let mut corrupt = Request::new(MASTER_ADR, Command::Analog(ALL_PACKS)).encode();
        corrupt[10] = b'E';
        assert_eq!(bus.respond(&corrupt), None);
        assert_eq!(bus.respond(b"~garbage\r"), None);
        assert_eq!(bus.respond(&Request::new(2, Command::Analog(2)).encode()), None);
        assert_eq!(bus.respond(&Request::new(0, Command::Analog(0)).encode()), None, "ADR 0 only when alone");
        let mut alone = PaceBus::new(1, 16, 4, 1);
        assert!(alone.respond(&Request::new(0, Command::Analog(0)).encode()).is_some());
    }

    #[test]
    fn a_write_command_or_another_version_gets_an_error_return_code() {
        let mut bus = PaceBus::new(1, 16, 4, 1);
        let write = encode_frame(header(0x9B), &[0x01]).expect("a small frame");
        let reply = bus.respond(&write).expect("answered").reply;
        assert_eq!(parse_frame(&reply).expect("valid").header.code, RTN_INVALID_COMMAND);
        let pylon = Request::new(MASTER_ADR, Command::Analog(ALL_PACKS)).with_ver(0x20).encode();
        let reply = bus.respond(&pylon).expect("answered").reply;
        assert_eq!(parse_frame(&reply).expect("valid").header.code, RTN_VERSION_ERROR);
    }

    #[test]
    fn packs_differ_and_the_same_seed_repeats_the_run() {
        let (a, b) = (stepped(4, 4), stepped(4, 4));
        assert_eq!(a.truth(), b.truth());
        let volts: Vec<_> = a.truth().packs.iter().map(|p| p.voltage_volts).collect();
        assert!(volts.windows(2).all(|w| w[0] != w[1]), "{volts:?}");
    }
}
