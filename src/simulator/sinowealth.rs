//! The simulated Sinowealth bus (`docs/protocols/sinowealth.md`): one board answering 3-byte register requests with
//! the register's data bytes and check byte, built with the codec's own encoder. Pure: no I/O, no clock.

use crate::model::{DeviceSnapshot, PackState, SensorId};
use crate::protocol::sinowealth::registers::{MAX_CELLS, active_flags, flags_from_names};
use crate::protocol::sinowealth::{
    BATTERY_STATUS_BITS, BatteryStatus, KELVIN_OFFSET_C, PACK_STATUS_BITS, PackStatus, REQUEST_START, Register, Value,
    check_byte, decode_request, encode_reply,
};

use super::battery::{Pack, PackConfig};
use super::fault::push_msb_far;
use super::rng::Rng;
use super::{Responder, Response};

/// Fewest series cells the pack-config register can describe (its bits 0–2 hold cells − 3).
const MIN_CELLS: u8 = 3;
/// Probes the map has registers for (external temperatures 1 and 2).
const PROBES: u8 = 2;

/// A bus with one simulated Sinowealth board.
#[derive(Debug, Clone)]
pub struct SinowealthBus {
    pack: Pack,
}

impl SinowealthBus {
    /// A board with `cells` (3–10) series cells and two probes, values drawn from `seed`.
    #[must_use]
    pub fn new(cells: u8, seed: u64) -> Self {
        let config =
            PackConfig { cells: cells.clamp(MIN_CELLS, MAX_CELLS), temperatures: PROBES, ..PackConfig::default() };
        Self { pack: Pack::new(config, seed) }
    }

    /// The simulated pack, for tests and faults that need to look at or change it.
    #[must_use]
    pub fn pack(&self) -> &Pack {
        &self.pack
    }

    /// The value the board reports for `register`; `None` for a cell register above the cell count (the board
    /// stays silent, which python-daly-bms takes as "no such cell").
    #[must_use]
    pub fn value(&self, register: Register) -> Option<Value> {
        let pack = &self.pack;
        let probe = |n: usize| pack.temperatures_c().get(n).copied().unwrap_or(pack.config().ambient_c);
        Some(match register {
            Register::Cell(cell) => Value::CellVoltage {
                cell,
                cell_voltage_v: pack.cell_voltages_v().get(usize::from(cell).checked_sub(1)?).copied()?,
            },
            Register::PackVoltage => Value::PackVoltage { pack_voltage_v: pack.voltage_v() },
            Register::ExternalTemperature1 => Value::Temperature { temperature_c: probe(0) },
            Register::ExternalTemperature2 => Value::Temperature { temperature_c: probe(1) },
            Register::IcTemperature1 => Value::Temperature { temperature_c: pack.mosfet_temperature_c() },
            // Meaning unclear on real boards; the same 0.1 K encoding of the MOSFET temperature is plausible.
            Register::IcTemperature2 => Value::Raw { raw: kelvin_tenths(pack.mosfet_temperature_c()) },
            Register::Current => Value::Current { current_a: pack.current_a() },
            Register::FullCapacity => Value::FullCapacity { full_capacity_ah: pack.config().full_capacity_ah },
            Register::RemainingCapacity => {
                Value::RemainingCapacity { remaining_capacity_ah: pack.remaining_capacity_ah() }
            }
            Register::Rsoc => Value::Rsoc { soc_percent: (pack.soc() * 100.0).round().clamp(0.0, 100.0) as u16 },
            Register::CycleCount => Value::CycleCount { cycles: u16::try_from(pack.cycles()).unwrap_or(u16::MAX) },
            Register::PackStatus => Value::PackStatus(PackStatus::new(self.pack_status_raw())),
            Register::BatteryStatus => {
                let c = pack.conditions();
                let names = [
                    (c.cell_voltage_high, "cell_overvoltage"),
                    (c.cell_voltage_low, "cell_undervoltage"),
                    (c.temperature_high, "discharge_overtemperature"),
                    (c.temperature_low, "charge_undertemperature"),
                ];
                let raw =
                    flags_from_names(&BATTERY_STATUS_BITS, names.into_iter().filter(|(on, _)| *on).map(|(_, n)| n));
                Value::BatteryStatus(BatteryStatus {
                    battery_status_raw: raw,
                    protections: active_flags(&BATTERY_STATUS_BITS, raw),
                })
            }
            Register::PackConfig => {
                let cells = u16::from(pack.config().cells);
                Value::PackConfig { pack_config_raw: (cells - u16::from(MIN_CELLS)) & 0x07, cell_count: cells }
            }
            Register::ManufactureAccess => Value::Raw { raw: 0 },
        })
    }

    /// The pack status word: MOSFET bits from the switches, CHGING/DSGING from the operating state.
    fn pack_status_raw(&self) -> u16 {
        let (charge, discharge) = self.pack.mosfets();
        let state = self.pack.state();
        let names = [
            (charge, "charge_mosfet_on"),
            (discharge, "discharge_mosfet_on"),
            (state == PackState::Charging, "charging"),
            (state == PackState::Discharging, "discharging"),
        ];
        flags_from_names(&PACK_STATUS_BITS, names.into_iter().filter(|(on, _)| *on).map(|(_, name)| name))
    }

    /// The reply bytes for `register`, if the board answers it.
    fn reply(&self, register: Register) -> Option<Vec<u8>> {
        self.value(register).map(|value| encode_reply(register, &value))
    }
}

/// A temperature in the map's 0.1 K units.
fn kelvin_tenths(celsius: f64) -> u16 {
    ((celsius + KELVIN_OFFSET_C) * 10.0).round().clamp(0.0, f64::from(u16::MAX)) as u16
}

impl Responder for SinowealthBus {
    fn next_request(&mut self, pending: &mut Vec<u8>) -> Option<Vec<u8>> {
        loop {
            let start = pending.iter().position(|&b| b == REQUEST_START).unwrap_or(pending.len());
            pending.drain(..start);
            let candidate = pending.get(..3)?;
            if decode_request(candidate).is_ok() {
                return Some(pending.drain(..3).collect());
            }
            pending.drain(..1);
        }
    }

    fn respond(&mut self, request: &[u8]) -> Option<Response> {
        let register = decode_request(request).ok()?;
        let reply = self.reply(register)?;
        // Another register with a reply of the same length, so only the values betray the mix-up.
        let other_register = match (register.data_len(), register) {
            (4, Register::Current) => Register::FullCapacity,
            (4, _) => Register::Current,
            (_, Register::PackVoltage) => Register::Rsoc,
            _ => Register::PackVoltage,
        };
        let other = self.reply(other_register)?;
        Some(Response { reply, other })
    }

    fn step(&mut self, dt_s: f64) {
        self.pack.step(dt_s);
    }

    fn truth(&self) -> DeviceSnapshot {
        let mut device = DeviceSnapshot::default();
        let mut pack = self.pack.to_snapshot(1);
        // The board sends the simulated MOSFET temperature as its IC temperature 1, which the map files under
        // the board sensor: the truth names it as a reader of this protocol sees it.
        for t in &mut pack.temperatures {
            if t.sensor == SensorId::Mosfet {
                t.sensor = SensorId::Board;
            }
        }
        *device.pack_mut(1) = pack;
        device
    }

    fn passes_check(&self, request: &[u8], bytes: &[u8]) -> bool {
        let Ok(register) = decode_request(request) else { return false };
        match bytes.split_last() {
            Some((&check, data)) => {
                data.len() == usize::from(register.data_len()) && check_byte(register, data) == check
            }
            None => false,
        }
    }

    fn gross(&self, request: &[u8], reply: &[u8], _rng: &mut Rng) -> Option<Vec<u8>> {
        // One register per reply: push its value's most significant byte (data byte 0, big-endian) if the register
        // has a physical range the model carries. Current and remaining capacity are signed (s32).
        let register = decode_request(request).ok()?;
        let signed = match register {
            Register::Cell(_)
            | Register::PackVoltage
            | Register::ExternalTemperature1
            | Register::ExternalTemperature2
            | Register::IcTemperature1
            | Register::Rsoc => false,
            Register::Current | Register::RemainingCapacity => true,
            _ => return None,
        };
        let (_, data) = reply.split_last()?;
        let mut data = data.to_vec();
        let msb = data.first_mut()?;
        *msb = push_msb_far(*msb, signed)?;
        // The CRC-8 is recomputed over request and data: the reply is as valid as the board's own.
        let check = check_byte(register, &data);
        data.push(check);
        Some(data)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{PackSnapshot, SensorId};
    use crate::protocol::DecodeOptions;
    use crate::protocol::sinowealth::{decode_capture, encode_request};

    fn bus(cells: u8) -> SinowealthBus {
        let mut bus = SinowealthBus::new(cells, 5);
        for _ in 0..5 {
            bus.step(60.0);
        }
        bus
    }

    fn close(a: Option<f64>, b: Option<f64>, tolerance: f64) {
        let (a, b) = (a.unwrap(), b.unwrap());
        assert!((a - b).abs() <= tolerance, "{a} vs {b} (tolerance {tolerance})");
    }

    fn temperature(pack: &PackSnapshot, sensor: SensorId) -> Option<f64> {
        pack.temperatures.iter().find(|t| t.sensor == sensor).map(|t| t.celsius)
    }

    fn every_register(cells: u8) -> Vec<Register> {
        (0..=0xFF)
            .filter_map(Register::from_address)
            .filter(|r| !matches!(r, Register::Cell(n) if *n > cells))
            .collect()
    }

    #[test]
    fn a_full_poll_back_to_back_decodes_to_the_true_pack() {
        let mut bus = bus(8);
        assert!(bus.pack().current_a().abs() > 1.0, "the test needs a real current");
        let registers = every_register(8);
        let requests: Vec<u8> = registers.iter().flat_map(|&r| encode_request(r)).collect();
        let mut replies = Vec::new();
        for chunk in requests.chunks_exact(3) {
            replies.extend(bus.respond(chunk).unwrap().reply);
        }
        let capture = decode_capture(Some(&requests), &replies, &DecodeOptions::default()).unwrap();
        assert!(capture.rejected.is_empty(), "{:?}", capture.rejected);
        assert_eq!(capture.replies.len(), registers.len());
        assert!(capture.replies.iter().all(|r| r.check_ok));
        let (decoded, truth) = (&capture.device.packs[0], &bus.truth().packs[0]);
        close(decoded.voltage_volts, truth.voltage_volts, 0.000_51);
        close(decoded.current_amperes, truth.current_amperes, 0.000_51);
        close(decoded.state_of_charge_ratio, truth.state_of_charge_ratio, 0.0051);
        close(decoded.remaining_capacity_ampere_hours, truth.remaining_capacity_ampere_hours, 0.000_51);
        close(decoded.full_capacity_ampere_hours, truth.full_capacity_ampere_hours, 0.000_51);
        assert_eq!(decoded.cycle_count, truth.cycle_count);
        assert_eq!(decoded.cell_count, truth.cell_count);
        assert_eq!(decoded.state, truth.state);
        assert_eq!(decoded.charge_mosfet_enabled, truth.charge_mosfet_enabled);
        assert_eq!(decoded.discharge_mosfet_enabled, truth.discharge_mosfet_enabled);
        assert_eq!(decoded.cell_volts.len(), truth.cell_volts.len());
        for (d, t) in decoded.cell_volts.iter().zip(&truth.cell_volts) {
            close(*d, *t, 0.000_51);
        }
        for n in 1..=2 {
            close(temperature(decoded, SensorId::Probe(n)), temperature(truth, SensorId::Probe(n)), 0.051);
        }
        // The codec files IC temperature 1 under the board sensor; the simulator sends the MOSFET temperature.
        close(temperature(decoded, SensorId::Board), temperature(truth, SensorId::Board), 0.051);
    }

    #[test]
    fn the_pack_status_word_follows_the_mosfets_and_the_state() {
        let mut bus = bus(4);
        let Some(Value::PackStatus(status)) = bus.value(Register::PackStatus) else { panic!("no pack status") };
        assert!(status.charge_mosfet_on() && status.discharge_mosfet_on());
        assert_eq!(status.charging(), bus.pack().state() == PackState::Charging);
        assert_eq!(status.discharging(), bus.pack().state() == PackState::Discharging);
        bus.pack.set_charge_mosfet(false);
        let Some(Value::PackStatus(status)) = bus.value(Register::PackStatus) else { panic!("no pack status") };
        assert!(!status.charge_mosfet_on() && status.discharge_mosfet_on());
        assert!(bus.respond(&[0x0a, 0x15, 0x02]).is_some());
    }

    #[test]
    fn pack_config_holds_the_cell_count_minus_three() {
        for cells in 3..=10 {
            let Some(Value::PackConfig { pack_config_raw, .. }) = bus(cells).value(Register::PackConfig) else {
                panic!("no pack config")
            };
            assert_eq!(pack_config_raw, u16::from(cells) - 3);
        }
    }

    #[test]
    fn cells_above_the_cell_count_get_no_reply() {
        let mut bus = bus(4);
        assert!(bus.respond(&encode_request(Register::Cell(4))).is_some());
        assert_eq!(bus.respond(&encode_request(Register::Cell(5))), None);
        assert_eq!(bus.respond(&encode_request(Register::Cell(10))), None);
        assert_eq!(bus.respond(&[0x0a, 0x19, 0x02]), None);
        assert_eq!(bus.respond(&[0x0a, 0x10, 0x02]), None);
    }

    #[test]
    fn the_other_reply_has_the_same_length_but_another_value() {
        let mut bus = bus(4);
        for register in every_register(4) {
            let response = bus.respond(&encode_request(register)).unwrap();
            assert_eq!(response.other.len(), response.reply.len(), "{register:?}");
            assert_ne!(response.other, response.reply, "{register:?}");
        }
    }

    #[test]
    fn garbage_and_malformed_requests_before_a_request_are_dropped() {
        let mut bus = bus(4);
        let request = encode_request(Register::Current);
        // 0x0a starts a request only with a known register and its length behind it.
        let mut pending = vec![0x00, 0x0a, 0x10, 0x02, 0x0a, 0x19, 0x02, 0xff];
        pending.extend_from_slice(&request);
        pending.push(0x0a);
        assert_eq!(bus.next_request(&mut pending), Some(request.to_vec()));
        assert_eq!(pending, [0x0a]);
    }

    #[test]
    fn a_request_split_in_two_is_returned_once_complete() {
        let mut bus = bus(4);
        let request = encode_request(Register::PackVoltage);
        for k in 1..request.len() {
            let mut pending = request[..k].to_vec();
            assert_eq!(bus.next_request(&mut pending), None);
            pending.extend_from_slice(&request[k..]);
            assert_eq!(bus.next_request(&mut pending), Some(request.to_vec()));
            assert!(pending.is_empty());
        }
    }

    #[test]
    fn an_empty_pack_raises_the_cell_undervoltage_protection() {
        let mut bus = bus(4);
        let request = encode_request(Register::BatteryStatus);
        let active = |bus: &mut SinowealthBus| {
            let reply = bus.respond(&request).unwrap().reply;
            let capture = decode_capture(Some(&request), &reply, &DecodeOptions::default()).unwrap();
            capture.device.packs[0].alarms.iter().filter(|a| a.active).map(|a| a.name).collect::<Vec<_>>()
        };
        assert!(active(&mut bus).is_empty());
        bus.pack.set_soc(0.0);
        assert_eq!(active(&mut bus), ["cell_undervoltage"]);
    }
}
