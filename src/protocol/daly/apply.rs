//! Applies decoded A5 replies to the protocol-neutral model. Order-independent: the 0x93 state
//! that decides the current sign and the 0x94 cell count that sizes the balancing flags are looked up across
//! all replies of the same board first. 0x91/0x92 are not applied: the model derives ranges from the cells.

use super::alarms;
use super::measurements::Status;
use super::response::{Message, Reply};
use crate::model::{DeviceSnapshot, DigitalPort, SensorId, Temperature};
use crate::protocol::DecodeOptions;

/// Frames a complete 0x57 battery code has; a partial code is not a serial number.
const BATTERY_CODE_FRAMES: usize = 5;

/// Apply `replies` to `device`; the board number of each reply is its pack number.
pub fn apply(device: &mut DeviceSnapshot, replies: &[Reply], options: &DecodeOptions) {
    for reply in replies {
        let board = reply.board;
        let same_board = || replies.iter().filter(move |r| r.board == board).map(|r| &r.message);
        let state = same_board().find_map(|m| match m {
            Message::Mosfet(s) => s.state.to_model(),
            _ => None,
        });
        let cell_count = same_board()
            .find_map(|m| match m {
                Message::Status(s) => Some(u16::from(s.cell_count)),
                _ => None,
            })
            .or(options.cell_count);
        let pack = device.pack_mut(board);
        match &reply.message {
            Message::Soc(soc) => {
                pack.voltage_volts = Some(soc.total_voltage_v);
                pack.current_amperes = Some(options.current_sign.to_model(soc.current_a, state));
                // Via tenths of a percent, so 82.4 % becomes exactly 0.824 rather than 0.8240000000000001.
                pack.state_of_charge_ratio = Some((soc.soc_percent * 10.0).round() / 1000.0);
            }
            Message::Mosfet(m) => {
                pack.state = m.state.to_model();
                pack.charge_mosfet_enabled = Some(m.charge_mosfet_on);
                pack.discharge_mosfet_enabled = Some(m.discharge_mosfet_on);
                pack.remaining_capacity_ampere_hours = Some(m.remaining_capacity_ah);
            }
            Message::Status(s) => {
                pack.cell_count = Some(u16::from(s.cell_count));
                pack.temperature_sensor_count = Some(u16::from(s.temperature_sensor_count));
                pack.charger_connected = Some(s.charger_connected);
                pack.load_connected = Some(s.load_connected);
                pack.digital_io = Status::PORTS
                    .iter()
                    .enumerate()
                    .map(|(bit, &port)| DigitalPort { port, active: s.dio_raw >> bit & 1 == 1 })
                    .collect();
                pack.cycle_count = Some(u32::from(s.cycles));
            }
            Message::CellVoltages(c) => pack.cell_volts.clone_from(&c.cell_voltages_v),
            Message::Temperatures(t) => {
                pack.temperatures = (1u8..)
                    .zip(&t.temperatures_c)
                    .filter_map(|(n, c)| c.map(|c| Temperature { sensor: SensorId::Probe(n), celsius: f64::from(c) }))
                    .collect();
            }
            Message::Balancing(b) => {
                let count = cell_count
                    .map(usize::from)
                    .or_else(|| same_board().find_map(cells_read))
                    .unwrap_or_else(|| b.balancing_cells.last().map_or(0, |&c| usize::from(c)));
                pack.cell_balancing = (1..=count).map(|cell| b.balancing_cells.contains(&(cell as u16))).collect();
                pack.balancing_active = Some(b.balancing_active);
            }
            Message::Alarms(a) => pack.set_alarms(alarms::to_model(&a.bits(), a.fault_code)),
            Message::Rated(r) => pack.design_capacity_ampere_hours = Some(r.rated_capacity_ah),
            Message::BatteryCode(t) if t.frame_numbers.len() == BATTERY_CODE_FRAMES && !t.text.is_empty() => {
                pack.info.serial_number = Some(t.text.clone());
            }
            Message::Identity(t) if !t.text.is_empty() => pack.info.model = Some(t.text.clone()),
            Message::CellRange(_)
            | Message::TemperatureRange(_)
            | Message::BatteryMode(_)
            | Message::BatteryCode(_)
            | Message::Identity(_)
            | Message::DischargeMosfet(_)
            | Message::ChargeMosfet(_)
            | Message::SetSoc(_)
            | Message::Restart => {}
        }
    }
}

/// The number of cells a 0x95 reply covered.
fn cells_read(message: &Message) -> Option<usize> {
    match message {
        Message::CellVoltages(c) => Some(c.cell_voltages_v.len()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{CurrentSign, PackState};
    use crate::protocol::daly::{Balancing, DalyState, MosfetStatus, Soc};

    fn reply(message: Message) -> Reply {
        Reply { board: 2, message }
    }

    fn mosfet(state_raw: u8) -> Message {
        Message::Mosfet(MosfetStatus {
            state: DalyState::from_raw(state_raw),
            state_raw,
            charge_mosfet_on: true,
            discharge_mosfet_on: true,
            bms_life: 1,
            remaining_capacity_ah: 100.0,
        })
    }

    #[test]
    fn current_sign_uses_the_state_whatever_the_order() {
        let options = DecodeOptions { current_sign: CurrentSign::Auto, ..DecodeOptions::default() };
        let soc = Message::Soc(Soc::new(51.5, 50.0, 82.4));
        for replies in [vec![reply(soc.clone()), reply(mosfet(2))], vec![reply(mosfet(2)), reply(soc.clone())]] {
            let mut device = DeviceSnapshot::default();
            apply(&mut device, &replies, &options);
            let pack = &device.packs[0];
            assert_eq!((pack.pack, pack.current_amperes), (2, Some(-50.0)));
            assert_eq!(pack.state, Some(PackState::Discharging));
        }
    }

    #[test]
    fn balancing_flags_have_one_entry_per_cell() {
        let options = DecodeOptions { cell_count: Some(10), ..DecodeOptions::default() };
        let mut device = DeviceSnapshot::default();
        apply(&mut device, &[reply(Message::Balancing(Balancing::from_cells(&[1, 9])))], &options);
        let flags = &device.packs[0].cell_balancing;
        assert_eq!(flags.len(), 10);
        assert!(flags[0] && flags[8] && !flags[1]);
        assert_eq!(device.packs[0].balancing_active, Some(true));
    }
}
