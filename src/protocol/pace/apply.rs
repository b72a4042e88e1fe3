//! Pace replies applied to the protocol-neutral [`DeviceSnapshot`].
//!
//! Pack numbering: an all-packs reply (COMMAND FF) numbers its blocks 1..M; a single-pack reply is pack COMMAND when
//! that is 1..=16, otherwise pack 1 (COMMAND 0x00 is the usual stand-alone pack). The 0xC1, 0xC2 and 0xA6 readings
//! describe the answering BMS / the master (`docs/protocols/pace.md#addresses-and-packs`), so they land on pack 1; 0x90
//! and 0xB1 have no model field.

use super::Reply;
use super::analog::{AnalogPack, AnalogReply};
use super::request::MAX_PACK;
use super::status::{self, StatusPack, StatusReply};
use crate::model::{
    Alarm, AlarmSeverity, CurrentSign, DeviceSnapshot, Indicator, LevelAlarm, LevelAlarmKind, PackSnapshot, PackState,
    QuantityAlarm, SensorId, Temperature,
};

/// Below this magnitude (A) the pack counts as idle.
pub const IDLE_CURRENT_AMPERES: f64 = 0.05;

/// Warning 1 bit names as model alarm names (`<name>_warning`).
const WARN1_ALARMS: [&str; 8] = [
    "cell_overvoltage_warning",
    "cell_undervoltage_warning",
    "pack_overvoltage_warning",
    "pack_undervoltage_warning",
    "charge_overcurrent_warning",
    "discharge_overcurrent_warning",
    "reserved_bit6_warning",
    "reserved_bit7_warning",
];
/// Warning 2 bit names as model alarm names.
const WARN2_ALARMS: [&str; 8] = [
    "charge_overtemp_warning",
    "discharge_overtemp_warning",
    "charge_undertemp_warning",
    "discharge_undertemp_warning",
    "ambient_overtemp_warning",
    "ambient_undertemp_warning",
    "mosfet_overtemp_warning",
    "low_capacity_warning",
];

/// The model pack number of block `index` of a reply.
#[must_use]
pub fn pack_number(all_packs: bool, count_or_command: u8, index: u8) -> u8 {
    match (all_packs, count_or_command) {
        (true, _) => index,
        (false, command @ 1..=MAX_PACK) => command,
        (false, _) => 1,
    }
}

/// Apply one reply to `device`; `sign` converts the current (Pace is charge-positive on the wire).
pub fn apply(reply: &Reply, sign: CurrentSign, device: &mut DeviceSnapshot) {
    match reply {
        Reply::Analog(r) => apply_analog(r, sign, device),
        Reply::Status(r) => apply_status(r, device),
        Reply::SoftwareVersion(r) => device.pack_mut(1).info.firmware_version = Some(r.version.clone()),
        Reply::ProductInfo(r) => {
            let serial = if r.pack_serial.is_empty() { &r.bms_serial } else { &r.pack_serial };
            let info = &mut device.pack_mut(1).info;
            info.serial_number = Some(serial.clone());
            info.bms_serial_number = Some(r.bms_serial.clone());
        }
        Reply::PackCapacity(r) => {
            let pack = device.pack_mut(1);
            pack.remaining_capacity_ampere_hours = Some(r.remaining_ah);
            pack.full_capacity_ampere_hours = Some(r.full_ah);
            pack.design_capacity_ampere_hours = Some(r.design_ah);
            pack.state_of_charge_ratio = r.soc_pct.map(|p| p / 100.0);
            pack.state_of_health_ratio = r.soh_pct.map(|p| p / 100.0);
        }
        Reply::PackCount(_) | Reply::DateTime(_) => {}
    }
}

/// Apply a 0x42 reply.
pub fn apply_analog(reply: &AnalogReply, sign: CurrentSign, device: &mut DeviceSnapshot) {
    for p in &reply.packs {
        let pack = device.pack_mut(pack_number(reply.all_packs, reply.count_or_command, p.index));
        apply_analog_pack(p, sign, pack);
    }
}

fn apply_analog_pack(p: &AnalogPack, sign: CurrentSign, pack: &mut PackSnapshot) {
    pack.online = p.online;
    pack.cell_count = Some(u16::from(p.cell_count));
    pack.temperature_sensor_count = Some(u16::from(p.temp_count));
    if !p.online {
        // A block of zeros: the pack is there but not reporting; suppress everything it "measured".
        let fresh = PackSnapshot::new(pack.pack);
        pack.voltage_volts = None;
        pack.current_amperes = None;
        pack.state_of_charge_ratio = None;
        pack.state_of_health_ratio = None;
        pack.remaining_capacity_ampere_hours = None;
        pack.full_capacity_ampere_hours = None;
        pack.design_capacity_ampere_hours = None;
        pack.cycle_count = None;
        pack.state = None;
        pack.cell_volts = fresh.cell_volts;
        pack.temperatures = fresh.temperatures;
        return;
    }
    let current = sign.to_model(p.current_a, None);
    pack.voltage_volts = Some(p.voltage_v);
    pack.current_amperes = Some(current);
    let reported_soc = p.reported.and_then(|r| r.soc_pct).map(|s| f64::from(s) / 100.0);
    pack.state_of_charge_ratio = p.soc_pct.map(|s| s / 100.0).or(reported_soc);
    pack.state_of_health_ratio = p.soh_pct.map(|s| s / 100.0);
    pack.remaining_capacity_ampere_hours = Some(p.remaining_ah);
    pack.full_capacity_ampere_hours = Some(p.full_ah);
    pack.design_capacity_ampere_hours = p.design_ah;
    pack.cycle_count = Some(u32::from(p.cycles));
    pack.state = Some(if current.abs() < IDLE_CURRENT_AMPERES {
        PackState::Idle
    } else if current > 0.0 {
        PackState::Charging
    } else {
        PackState::Discharging
    });
    pack.cell_volts = p.cells_mv.iter().map(|&mv| (mv != 0).then(|| f64::from(mv) / 1000.0)).collect();
    let n = p.temps_c.len();
    pack.temperatures = p
        .temps_c
        .iter()
        .enumerate()
        .filter_map(|(i, &c)| Some(Temperature { sensor: sensor(i, n), celsius: c? }))
        .collect();
}

/// Sensor of temperature `i` (0-based) of `n`: with six, cells 1–4, MOSFET, ambient
/// (`docs/protocols/pace.md#0x42-analog-values`); else probes.
fn sensor(i: usize, n: usize) -> SensorId {
    match (n, i) {
        (6, 4) => SensorId::Mosfet,
        (6, 5) => SensorId::Ambient,
        _ => SensorId::Probe((i + 1) as u8),
    }
}

/// Apply a 0x44 reply.
pub fn apply_status(reply: &StatusReply, device: &mut DeviceSnapshot) {
    for p in &reply.packs {
        let pack = device.pack_mut(pack_number(reply.all_packs, reply.count_or_command, p.index));
        apply_status_pack(p, pack);
    }
}

fn apply_status_pack(p: &StatusPack, pack: &mut PackSnapshot) {
    let b = &p.block;
    let bit = |byte: u8, k: u8| byte >> k & 1 == 1;
    pack.charge_mosfet_enabled = Some(bit(b.system, status::SYSTEM_CHARGE_MOSFET_BIT));
    pack.discharge_mosfet_enabled = Some(bit(b.system, status::SYSTEM_DISCHARGE_MOSFET_BIT));
    let cells = usize::from(p.cell_count).min(16);
    pack.cell_balancing = (1..=cells).map(|cell| p.balancing_cells.contains(&(cell as u8))).collect();
    pack.balancing_active = Some(b.balance1 != 0 || b.balance2 != 0);
    pack.cell_count.get_or_insert(u16::from(p.cell_count));
    pack.temperature_sensor_count.get_or_insert(u16::from(p.temp_count));
    pack.set_alarms(alarms(p));
    pack.cell_alarms = level_alarms(&b.cell_warn);
    pack.temperature_alarms = level_alarms(&b.temp_warn);
    pack.quantity_alarms = [
        ("charge_current", b.charge_current_warn),
        ("pack_voltage", b.pack_voltage_warn),
        ("discharge_current", b.discharge_current_warn),
    ]
    .into_iter()
    .filter_map(|(quantity, level)| Some(QuantityAlarm { quantity, kind: LevelAlarmKind::from_level(level)? }))
    .collect();
    pack.indicators = indicators(b.system, &status::SYSTEM).chain(indicators(b.control, &status::CONTROL)).collect();
}

/// Every bit of an instruction or control byte as a named indicator, bit 0 first.
fn indicators(bits: u8, names: &'static [&'static str; 8]) -> impl Iterator<Item = Indicator> {
    names.iter().enumerate().map(move |(k, &name)| Indicator { name, on: bits >> k & 1 == 1 })
}

/// Every alarm 0x44 defines, in table order: protection 1/2, faults, warnings 1/2, the three level warnings.
#[must_use]
pub fn alarms(p: &StatusPack) -> Vec<Alarm> {
    let b = &p.block;
    let table = |bits: u8, names: [&'static str; 8], severity: fn(&str) -> AlarmSeverity| {
        names.into_iter().enumerate().map(move |(k, name)| Alarm::new(name, severity(name), bits >> k & 1 == 1))
    };
    let protection = |name: &str| {
        if name == "fully_charged" { AlarmSeverity::Info } else { AlarmSeverity::Protection }
    };
    table(b.protect1, status::PROTECT1, protection)
        .chain(table(b.protect2, status::PROTECT2, protection))
        .chain(table(b.fault, status::FAULT, |_| AlarmSeverity::Fault))
        .chain(table(b.warn1, WARN1_ALARMS, |_| AlarmSeverity::Warning))
        .chain(table(b.warn2, WARN2_ALARMS, |_| AlarmSeverity::Warning))
        .chain([
            Alarm::new("charge_current_warning", AlarmSeverity::Warning, b.charge_current_warn != 0),
            Alarm::new("pack_voltage_warning", AlarmSeverity::Warning, b.pack_voltage_warn != 0),
            Alarm::new("discharge_current_warning", AlarmSeverity::Warning, b.discharge_current_warn != 0),
        ])
        .collect()
}

fn level_alarms(levels: &[u8]) -> Vec<LevelAlarm> {
    levels
        .iter()
        .enumerate()
        .filter_map(|(i, &level)| Some(LevelAlarm { index: (i + 1) as u8, kind: LevelAlarmKind::from_level(level)? }))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn all_pack_blocks_count_from_one_and_single_packs_follow_their_command() {
        assert_eq!(pack_number(true, 3, 2), 2);
        assert_eq!(pack_number(false, 7, 1), 7);
        assert_eq!(pack_number(false, 0, 1), 1);
        assert_eq!(pack_number(false, 0xFF, 1), 1);
    }

    #[test]
    fn status_keeps_the_pack_wide_levels_and_every_instruction_and_control_bit() {
        use super::super::status::StatusBlock;
        let block = StatusBlock {
            cell_warn: vec![0; 4],
            temp_warn: vec![0; 2],
            charge_current_warn: 0x02,
            pack_voltage_warn: 0x00,
            discharge_current_warn: 0xF0,
            system: 0b1000_0110,
            control: 0b0000_0001,
            ..StatusBlock::default()
        };
        let mut device = DeviceSnapshot::default();
        apply_status_pack(&StatusPack::from_block(1, block), device.pack_mut(1));
        let pack = &device.packs[0];
        assert_eq!(
            pack.quantity_alarms,
            [
                QuantityAlarm { quantity: "charge_current", kind: LevelAlarmKind::AboveUpperLimit },
                QuantityAlarm { quantity: "discharge_current", kind: LevelAlarmKind::OtherFault },
            ]
        );
        let on: Vec<&str> = pack.indicators.iter().filter(|i| i.on).map(|i| i.name).collect();
        assert_eq!(on, ["charge_mosfet_on", "discharge_mosfet_on", "heart", "buzzer_enabled"]);
        assert_eq!(pack.indicators.len(), 16, "every bit of both bytes, set or not");
        assert_eq!((pack.charge_mosfet_enabled, pack.discharge_mosfet_enabled), (Some(true), Some(true)));
    }

    #[test]
    fn product_info_keeps_the_bms_serial_beside_the_pack_serial() {
        use super::super::frame::Header;
        use super::super::info::ProductInfoReply;
        let header = Header { ver: 0x25, adr: 1, cid1: 0x46, code: 0 };
        let reply = |pack_serial: &str| {
            Reply::ProductInfo(ProductInfoReply {
                header,
                lenid: 80,
                bms_serial: "216061024400003A".to_owned(),
                pack_serial: pack_serial.to_owned(),
                info_hex: String::new(),
            })
        };
        let mut device = DeviceSnapshot::default();
        apply(&reply("GPSR2PC200YW28021109"), CurrentSign::Auto, &mut device);
        let info = &device.packs[0].info;
        assert_eq!(info.serial_number.as_deref(), Some("GPSR2PC200YW28021109"));
        assert_eq!(info.bms_serial_number.as_deref(), Some("216061024400003A"));
        apply(&reply(""), CurrentSign::Auto, &mut device);
        assert_eq!(device.packs[0].info.serial_number.as_deref(), Some("216061024400003A"));
    }

    #[test]
    fn six_temperatures_end_with_mosfet_and_ambient() {
        let sensors: Vec<SensorId> = (0..6).map(|i| sensor(i, 6)).collect();
        assert_eq!(sensors[3..], [SensorId::Probe(4), SensorId::Mosfet, SensorId::Ambient]);
        assert_eq!(sensor(4, 5), SensorId::Probe(5));
    }
}
