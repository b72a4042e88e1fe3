//! The simulated Modbus-style Daly bus (`docs/protocols/daly-modbus.md`): one D2 board (device byte 0xD2) that answers
//! function 3 reads from its register image and function 6 writes to the MOSFET switches, through the codec's
//! own encoders. Pure: no I/O, no clock.

use crate::model::DeviceSnapshot;
use crate::protocol::daly::alarms;
use crate::protocol::daly_modbus::d2::{self, Realtime};
use crate::protocol::daly_modbus::{
    Map, READ, Request, WRITE, crc, decode_request, encode_exception_reply, encode_read_reply, encode_write_reply,
    state_to_raw,
};
use crate::protocol::to_hex;

use super::battery::{Pack, PackConfig};
use super::fault::push_msb_far;
use super::rng::Rng;
use super::{Responder, Response};

/// Registers of the simulated image: the extended real-time read (0x00–0x4F), so every real-time window the
/// clients use (62 or 80 from 0, 9 from 0x3E) is inside it; the pack fills 0x00–0x43, the rest reads 0.
pub const IMAGE_REGISTERS: u16 = d2::REALTIME_EXTENDED_COUNT;
/// Modbus exception code for a register window the board does not hold.
pub const ILLEGAL_DATA_ADDRESS: u8 = 0x02;
/// Modbus exception code for a value a register does not accept.
pub const ILLEGAL_DATA_VALUE: u8 = 0x03;

/// Most series cells and probes the D2 real-time block carries.
const MAX_CELLS: u8 = 32;
const MAX_TEMPERATURES: u8 = 8;

/// A bus with one simulated D2 board.
#[derive(Debug, Clone)]
pub struct DalyModbusBus {
    pack: Pack,
}

impl DalyModbusBus {
    /// A D2 board with `cells` (1–32) series cells and `temperatures` (0–8) probes, values drawn from `seed`.
    #[must_use]
    pub fn new(cells: u8, temperatures: u8, seed: u64) -> Self {
        let config = PackConfig {
            cells: cells.clamp(1, MAX_CELLS),
            temperatures: temperatures.min(MAX_TEMPERATURES),
            ..PackConfig::default()
        };
        Self { pack: Pack::new(config, seed) }
    }

    /// The simulated pack, for tests and faults that need to look at or change it.
    #[must_use]
    pub fn pack(&self) -> &Pack {
        &self.pack
    }

    /// The pack's state as the D2 real-time block (80 registers from 0).
    #[must_use]
    pub fn realtime(&self) -> Realtime {
        let pack = &self.pack;
        let cells = pack.cell_voltages_v();
        let (min_v, max_v) = cells.iter().fold((f64::MAX, f64::MIN), |(lo, hi), &v| (lo.min(v), hi.max(v)));
        let temperatures = pack.temperatures_c().to_vec();
        let (min_t, max_t) = if temperatures.is_empty() {
            (pack.mosfet_temperature_c(), pack.mosfet_temperature_c())
        } else {
            temperatures.iter().fold((f64::MAX, f64::MIN), |(lo, hi), &t| (lo.min(t), hi.max(t)))
        };
        let balancing = pack.balancing_cells();
        let bitmap = balancing.iter().filter(|&&i| i < 32).fold(0u32, |acc, &i| acc | 1 << i);
        let (charge, discharge) = pack.mosfets();
        let voltage = pack.voltage_v();
        let current = pack.current_a();
        let flags = d2::d2_alarm_flags(&alarms::from_names(super::daly::alarm_names(pack.conditions())));
        Realtime {
            register_count: IMAGE_REGISTERS,
            cell_count: cells.len() as u16,
            temperature_sensor_count: temperatures.len() as u16,
            average_cell_voltage_v: voltage / cells.len().max(1) as f64,
            cell_voltages_v: cells,
            temperatures_c: temperatures,
            total_voltage_v: voltage,
            current_a: current,
            soc_percent: pack.soc() * 100.0,
            max_cell_voltage_v: max_v,
            min_cell_voltage_v: min_v,
            max_temperature_c: max_t,
            min_temperature_c: min_t,
            state_raw: state_to_raw(pack.state()),
            remaining_capacity_ah: pack.remaining_capacity_ah(),
            cycles: u16::try_from(pack.cycles()).unwrap_or(u16::MAX),
            balancer_raw: u16::from(!balancing.is_empty()),
            charge_mosfet_on: charge,
            discharge_mosfet_on: discharge,
            cell_voltage_delta_v: max_v - min_v,
            power_w: (voltage * current).abs().round().min(f64::from(u16::MAX)) as u16,
            alarm_flags_raw: flags,
            alarm_flags_hex: to_hex(&flags.to_be_bytes()),
            active_alarms: alarms::active_names(&d2::a5_alarm_bytes(flags)),
            balancing_bitmap: Some(bitmap),
            balance_current_a: Some(0.0),
            mosfet_temperature_c: Some(pack.mosfet_temperature_c()),
            board_temperature_c: None,
        }
    }

    /// The reply to a read of `count` registers from `start`: the window of the image, or exception 0x02.
    fn read(&self, start: u16, count: u16) -> Vec<u8> {
        let image = self.realtime().to_registers().values;
        let window = usize::from(start)
            .checked_add(usize::from(count))
            .and_then(|end| image.get(usize::from(start)..end))
            .filter(|w| !w.is_empty());
        match window {
            Some(values) => encode_read_reply(Map::D2, values),
            None => encode_exception_reply(Map::D2, READ, ILLEGAL_DATA_ADDRESS),
        }
    }

    /// The reply to a write: the MOSFET switches take 0 or 1 and echo; anything else is an exception.
    fn write(&mut self, register: u16, value: u16) -> Vec<u8> {
        let on = match value {
            0 => false,
            1 => true,
            _ => return encode_exception_reply(Map::D2, WRITE, ILLEGAL_DATA_VALUE),
        };
        match register {
            d2::CHARGE_MOSFET_REGISTER => self.pack.set_charge_mosfet(on),
            d2::DISCHARGE_MOSFET_REGISTER => self.pack.set_discharge_mosfet(on),
            _ => return encode_exception_reply(Map::D2, WRITE, ILLEGAL_DATA_ADDRESS),
        }
        encode_write_reply(Map::D2, register, value)
    }
}

/// A request that is really for this board: an 8-byte frame with a good CRC addressed to 0xD2.
fn parse(bytes: &[u8]) -> Option<Request> {
    match decode_request(bytes) {
        Ok((Map::D2, request)) => Some(request),
        _ => None,
    }
}

impl Responder for DalyModbusBus {
    fn next_request(&mut self, pending: &mut Vec<u8>) -> Option<Vec<u8>> {
        loop {
            let start = pending.iter().position(|&b| b == Map::D2.request_address()).unwrap_or(pending.len());
            pending.drain(..start);
            let candidate = pending.get(..8)?;
            if parse(candidate).is_some() {
                return Some(pending.drain(..8).collect());
            }
            pending.drain(..1);
        }
    }

    fn respond(&mut self, request: &[u8]) -> Option<Response> {
        let reply = match parse(request)? {
            Request::Read { start, count } => self.read(start, count),
            Request::Write { register, value } => self.write(register, value),
        };
        // Another window of the same image: the real-time block, or the MOSFET-temperature read when the
        // real-time block was what was asked for.
        let other_request = if parse(request) == Some(d2::REALTIME) { d2::MOSFET_TEMPERATURE } else { d2::REALTIME };
        let other = match other_request {
            Request::Read { start, count } => self.read(start, count),
            Request::Write { register, value } => encode_write_reply(Map::D2, register, value),
        };
        Some(Response { reply, other })
    }

    fn step(&mut self, dt_s: f64) {
        self.pack.step(dt_s);
    }

    fn truth(&self) -> DeviceSnapshot {
        let mut device = DeviceSnapshot::default();
        *device.pack_mut(Map::D2.pack_number()) = self.pack.to_snapshot(Map::D2.pack_number());
        device
    }

    fn passes_check(&self, _request: &[u8], bytes: &[u8]) -> bool {
        crc::verify(bytes).is_ok()
    }

    fn gross(&self, request: &[u8], reply: &[u8], rng: &mut Rng) -> Option<Vec<u8>> {
        let Some(Request::Read { start, count }) = parse(request) else { return None };
        // Only a register read's reply carries values (not an exception reply).
        if reply.get(1) != Some(&READ) || reply.get(2).map(|&n| u16::from(n)) != Some(count.saturating_mul(2)) {
            return None;
        }
        // Registers with a physical range that the model carries: cells (mV), probes and the MOSFET sensor (°C
        // offset 40), pack voltage, current (offset 30000) and SOC (0.1 units), remaining capacity (0.1 Ah).
        let cells = u16::from(self.pack.config().cells);
        let probes = u16::from(self.pack.config().temperatures);
        let ranged = |r: u16| {
            r < cells
                || (0x20..0x20 + probes).contains(&r)
                || matches!(r, 0x28 | 0x29 | 0x2A | 0x30 | d2::MOSFET_TEMPERATURE_REGISTER)
        };
        // A register's high byte follows the address, function and byte count, two bytes per register.
        let sites: Vec<usize> = (start..start.saturating_add(count))
            .filter(|&r| ranged(r))
            .map(|r| 3 + 2 * usize::from(r - start))
            .filter(|&at| reply.get(at).is_some_and(|&b| push_msb_far(b, false).is_some()))
            .collect();
        let &at = sites.get(rng.below(sites.len()))?;
        let mut bytes = reply.get(..reply.len().checked_sub(2)?)?.to_vec();
        let byte = bytes.get_mut(at)?;
        *byte = push_msb_far(*byte, false)?;
        // The CRC is recomputed: the frame is as valid as the board's own.
        crc::append(&mut bytes);
        Some(bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{PackSnapshot, SensorId};
    use crate::protocol::daly_modbus::{Reply, WriteAck, decode_capture, encode_request};
    use crate::protocol::{Capture, DecodeError, DecodeOptions};

    fn bus() -> DalyModbusBus {
        let mut bus = DalyModbusBus::new(16, 4, 11);
        for _ in 0..5 {
            bus.step(60.0);
        }
        bus
    }

    fn ask(bus: &mut DalyModbusBus, request: Request) -> Response {
        bus.respond(&encode_request(Map::D2, request)).unwrap()
    }

    fn decode(request: Request, reply: &[u8]) -> Result<Capture<Reply>, DecodeError> {
        decode_capture(Some(&encode_request(Map::D2, request)), reply, &DecodeOptions::default())
    }

    fn close(a: Option<f64>, b: Option<f64>, tolerance: f64) {
        let (a, b) = (a.unwrap(), b.unwrap());
        assert!((a - b).abs() <= tolerance, "{a} vs {b} (tolerance {tolerance})");
    }

    fn temperature(pack: &PackSnapshot, sensor: SensorId) -> Option<f64> {
        pack.temperatures.iter().find(|t| t.sensor == sensor).map(|t| t.celsius)
    }

    fn assert_matches_truth(decoded: &PackSnapshot, truth: &PackSnapshot) {
        close(decoded.voltage_volts, truth.voltage_volts, 0.051);
        close(decoded.current_amperes, truth.current_amperes, 0.051);
        close(decoded.state_of_charge_ratio, truth.state_of_charge_ratio, 0.000_51);
        close(decoded.remaining_capacity_ampere_hours, truth.remaining_capacity_ampere_hours, 0.051);
        assert_eq!(decoded.cycle_count, truth.cycle_count);
        assert_eq!(decoded.state, truth.state);
        assert_eq!(decoded.charge_mosfet_enabled, truth.charge_mosfet_enabled);
        assert_eq!(decoded.discharge_mosfet_enabled, truth.discharge_mosfet_enabled);
        assert_eq!(decoded.cell_count, truth.cell_count);
        assert_eq!(decoded.cell_volts.len(), truth.cell_volts.len());
        for (d, t) in decoded.cell_volts.iter().zip(&truth.cell_volts) {
            close(*d, *t, 0.000_51);
        }
        assert_eq!(decoded.cell_balancing, truth.cell_balancing);
        for sensor in (1..=4).map(SensorId::Probe).chain([SensorId::Mosfet]) {
            close(temperature(decoded, sensor), temperature(truth, sensor), 0.51);
        }
    }

    #[test]
    fn the_extended_realtime_read_decodes_to_the_true_pack() {
        let mut bus = bus();
        assert!(bus.pack().current_a().abs() > 1.0, "the test needs a real current");
        let response = ask(&mut bus, d2::REALTIME_EXTENDED);
        let capture = decode(d2::REALTIME_EXTENDED, &response.reply).unwrap();
        assert!(capture.rejected.is_empty(), "{:?}", capture.rejected);
        assert_matches_truth(&capture.device.packs[0], &bus.truth().packs[0]);
    }

    #[test]
    fn the_basic_realtime_and_mosfet_temperature_reads_are_windows_of_the_same_image() {
        let mut bus = bus();
        let truth = bus.truth().packs[0].clone();
        let basic = decode(d2::REALTIME, &ask(&mut bus, d2::REALTIME).reply).unwrap();
        let decoded = &basic.device.packs[0];
        close(decoded.voltage_volts, truth.voltage_volts, 0.051);
        close(decoded.current_amperes, truth.current_amperes, 0.051);
        let mosfet = decode(d2::MOSFET_TEMPERATURE, &ask(&mut bus, d2::MOSFET_TEMPERATURE).reply).unwrap();
        assert!(matches!(mosfet.replies[..], [Reply::D2MosfetTemperature(_)]));
        close(temperature(&mosfet.device.packs[0], SensorId::Mosfet), temperature(&truth, SensorId::Mosfet), 0.51);
    }

    #[test]
    fn mosfet_writes_are_echoed_switch_the_pack_and_show_in_the_next_read() {
        let mut bus = bus();
        for (request, charge, discharge) in [
            (d2::set_charge_mosfet(false), false, true),
            (d2::set_discharge_mosfet(false), false, false),
            (d2::set_charge_mosfet(true), true, false),
        ] {
            let response = ask(&mut bus, request);
            assert_eq!(response.reply, encode_request(Map::D2, request));
            let ack = decode(request, &response.reply).unwrap();
            let Request::Write { register, value } = request else { panic!("not a write") };
            assert_eq!(ack.replies, [Reply::WriteAck(WriteAck { register, value })]);
            assert_eq!(bus.pack().mosfets(), (charge, discharge));
            let read = decode(d2::REALTIME, &ask(&mut bus, d2::REALTIME).reply).unwrap();
            let pack = &read.device.packs[0];
            assert_eq!((pack.charge_mosfet_enabled, pack.discharge_mosfet_enabled), (Some(charge), Some(discharge)));
        }
    }

    #[test]
    fn reads_outside_the_image_and_other_writes_get_exception_replies() {
        let mut bus = bus();
        let exception = |function, code| Err(DecodeError::ModbusException { function, code });
        for request in [d2::VERSION, d2::SETTINGS, Request::Read { start: IMAGE_REGISTERS - 2, count: 3 }] {
            assert_eq!(decode(request, &ask(&mut bus, request).reply), exception(READ, ILLEGAL_DATA_ADDRESS));
        }
        let last = Request::Read { start: IMAGE_REGISTERS - 1, count: 1 };
        assert!(decode(last, &ask(&mut bus, last).reply).is_ok());
        let other_write = Request::Write { register: 0x80, value: 1 };
        assert_eq!(decode(other_write, &ask(&mut bus, other_write).reply), exception(WRITE, ILLEGAL_DATA_ADDRESS));
        let bad_value = Request::Write { register: d2::CHARGE_MOSFET_REGISTER, value: 2 };
        assert_eq!(decode(bad_value, &ask(&mut bus, bad_value).reply), exception(WRITE, ILLEGAL_DATA_VALUE));
        assert_eq!(bus.pack().mosfets(), (true, true));
    }

    #[test]
    fn requests_for_other_boards_get_no_answer() {
        let mut bus = bus();
        let p81 = encode_request(Map::p81(1).unwrap(), d2::REALTIME);
        assert_eq!(bus.respond(&p81), None);
        let mut pending = p81.to_vec();
        assert_eq!(bus.next_request(&mut pending), None);
        assert!(pending.is_empty());
    }

    #[test]
    fn the_other_reply_answers_a_different_window() {
        let mut bus = bus();
        for (asked, other) in [(d2::REALTIME, d2::MOSFET_TEMPERATURE), (d2::REALTIME_EXTENDED, d2::REALTIME)] {
            let response = ask(&mut bus, asked);
            assert_ne!(response.other, response.reply);
            assert!(decode(other, &response.other).unwrap().rejected.is_empty());
            let wrong = decode(asked, &response.other);
            assert!(wrong.map_or(true, |c| !c.rejected.is_empty()));
        }
    }

    #[test]
    fn garbage_before_a_request_is_dropped() {
        let mut bus = bus();
        let request = encode_request(Map::D2, d2::REALTIME);
        // A stray 0xD2 with a bad CRC behind it must not swallow the real request.
        let mut pending = vec![0x00, 0xFF, 0xD2, 0x03, 0x00, 0x00, 0x00, 0x3E, 0x00, 0x00];
        pending.extend_from_slice(&request);
        pending.push(0xD2);
        assert_eq!(bus.next_request(&mut pending), Some(request.to_vec()));
        assert_eq!(pending, [0xD2]);
    }

    #[test]
    fn a_request_split_in_two_is_returned_once_complete() {
        let mut bus = bus();
        let request = encode_request(Map::D2, d2::set_charge_mosfet(false));
        for k in 1..request.len() {
            let mut pending = request[..k].to_vec();
            assert_eq!(bus.next_request(&mut pending), None);
            pending.extend_from_slice(&request[k..]);
            assert_eq!(bus.next_request(&mut pending), Some(request.to_vec()));
            assert!(pending.is_empty());
        }
    }

    #[test]
    fn an_empty_pack_raises_the_cell_undervoltage_alarm_in_the_d2_flags() {
        let mut bus = bus();
        let request = encode_request(Map::D2, d2::REALTIME);
        let active = |bus: &mut DalyModbusBus| {
            let reply = bus.respond(&request).unwrap().reply;
            let capture = decode_capture(Some(&request), &reply, &DecodeOptions::default()).unwrap();
            capture.device.packs[0].alarms.iter().filter(|a| a.active).map(|a| a.name).collect::<Vec<_>>()
        };
        assert!(!active(&mut bus).contains(&"cell_voltage_low_l1"));
        bus.pack.set_soc(0.0);
        assert!(active(&mut bus).contains(&"cell_voltage_low_l1"));
    }
}
