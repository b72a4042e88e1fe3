//! The Daly alarm table (`docs/protocols/daly-a5.md#0x98-alarms`): which bit of the seven alarm bytes of an A5 `0x98`
//! reply means what, under the spec's snake_case identifiers. The Modbus-style D2 map reuses it
//! (`docs/protocols/daly-modbus.md#d2-alarm-bytes`).

use crate::model::{Alarm, AlarmSeverity};

use AlarmSeverity::{Fault, Info, Protection, Warning};

/// One defined bit: byte (0–6), bit (0 = least significant), identifier, severity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AlarmBit {
    /// Alarm byte, 0-based (data byte of the `0x98` reply).
    pub byte: u8,
    /// Bit within the byte, 0 = least significant.
    pub bit: u8,
    /// The spec's identifier; reserved bits are named `reserved_b<byte>_<bit>`.
    pub name: &'static str,
    /// Warning (level 1), protection (level 2) or fault.
    pub severity: AlarmSeverity,
}

const fn bit(byte: u8, bit: u8, name: &'static str, severity: AlarmSeverity) -> AlarmBit {
    AlarmBit { byte, bit, name, severity }
}

/// Every bit of alarm bytes 0–6, in wire order (byte 0 bit 0 first). Reserved bits are listed too, so that a bit the
/// sheets do not define is exported under a generic name instead of being dropped
/// (`docs/protocols/daly-a5.md#0x98-alarms`).
pub const ALARM_BITS: [AlarmBit; 56] = [
    bit(0, 0, "cell_voltage_high_l1", Warning),
    bit(0, 1, "cell_voltage_high_l2", Protection),
    bit(0, 2, "cell_voltage_low_l1", Warning),
    bit(0, 3, "cell_voltage_low_l2", Protection),
    bit(0, 4, "pack_voltage_high_l1", Warning),
    bit(0, 5, "pack_voltage_high_l2", Protection),
    bit(0, 6, "pack_voltage_low_l1", Warning),
    bit(0, 7, "pack_voltage_low_l2", Protection),
    bit(1, 0, "charge_temperature_high_l1", Warning),
    bit(1, 1, "charge_temperature_high_l2", Protection),
    bit(1, 2, "charge_temperature_low_l1", Warning),
    bit(1, 3, "charge_temperature_low_l2", Protection),
    bit(1, 4, "discharge_temperature_high_l1", Warning),
    bit(1, 5, "discharge_temperature_high_l2", Protection),
    bit(1, 6, "discharge_temperature_low_l1", Warning),
    bit(1, 7, "discharge_temperature_low_l2", Protection),
    bit(2, 0, "charge_overcurrent_l1", Warning),
    bit(2, 1, "charge_overcurrent_l2", Protection),
    bit(2, 2, "discharge_overcurrent_l1", Warning),
    bit(2, 3, "discharge_overcurrent_l2", Protection),
    bit(2, 4, "soc_high_l1", Warning),
    bit(2, 5, "soc_high_l2", Protection),
    bit(2, 6, "soc_low_l1", Warning),
    bit(2, 7, "soc_low_l2", Protection),
    bit(3, 0, "cell_voltage_difference_l1", Warning),
    bit(3, 1, "cell_voltage_difference_l2", Protection),
    bit(3, 2, "temperature_difference_l1", Warning),
    bit(3, 3, "temperature_difference_l2", Protection),
    bit(3, 4, "reserved_b3_4", Info),
    bit(3, 5, "reserved_b3_5", Info),
    bit(3, 6, "reserved_b3_6", Info),
    bit(3, 7, "reserved_b3_7", Info),
    bit(4, 0, "charge_mosfet_overtemperature", Fault),
    bit(4, 1, "discharge_mosfet_overtemperature", Fault),
    bit(4, 2, "charge_mosfet_temperature_sensor_fault", Fault),
    bit(4, 3, "discharge_mosfet_temperature_sensor_fault", Fault),
    bit(4, 4, "charge_mosfet_adhesion_fault", Fault),
    bit(4, 5, "discharge_mosfet_adhesion_fault", Fault),
    bit(4, 6, "charge_mosfet_open_circuit_fault", Fault),
    bit(4, 7, "discharge_mosfet_open_circuit_fault", Fault),
    bit(5, 0, "afe_chip_fault", Fault),
    bit(5, 1, "cell_voltage_acquisition_lost", Fault),
    bit(5, 2, "cell_temperature_sensor_fault", Fault),
    bit(5, 3, "eeprom_fault", Fault),
    bit(5, 4, "rtc_fault", Fault),
    bit(5, 5, "precharge_failure", Fault),
    bit(5, 6, "external_communication_fault", Fault),
    bit(5, 7, "internal_communication_fault", Fault),
    bit(6, 0, "current_module_fault", Fault),
    bit(6, 1, "total_voltage_detection_fault", Fault),
    bit(6, 2, "short_circuit_protection_fault", Fault),
    bit(6, 3, "low_voltage_charge_forbidden", Protection),
    // Seen set whenever a MOSFET was switched off by command: a state, so Info rather than an alarm.
    bit(6, 4, "reserved_b6_4", Info),
    bit(6, 5, "reserved_b6_5", Info),
    bit(6, 6, "reserved_b6_6", Info),
    bit(6, 7, "reserved_b6_7", Info),
];

/// Name of the model alarm that is active while the `0x98` fault code (byte 7) is non-zero.
pub const FAULT_CODE_ALARM: &str = "fault_code";

/// Whether `bits` (alarm bytes 0–6 in wire order) has `entry` set.
#[must_use]
pub fn is_set(bits: &[u8; 7], entry: &AlarmBit) -> bool {
    bits.get(usize::from(entry.byte)).is_some_and(|b| b >> entry.bit & 1 == 1)
}

/// Identifiers of the active bits, in wire order (byte 0 bit 0 first).
#[must_use]
pub fn active_names(bits: &[u8; 7]) -> Vec<&'static str> {
    ALARM_BITS.iter().filter(|e| is_set(bits, e)).map(|e| e.name).collect()
}

/// The whole table as model alarms (every identifier, active or not), plus `fault_code`.
#[must_use]
pub fn to_model(bits: &[u8; 7], fault_code: u8) -> Vec<Alarm> {
    ALARM_BITS
        .iter()
        .map(|e| Alarm::new(e.name, e.severity, is_set(bits, e)))
        .chain(std::iter::once(Alarm::new(FAULT_CODE_ALARM, Fault, fault_code != 0)))
        .collect()
}

/// Alarm bytes with exactly the named bits set; unknown names are ignored (used by encoders and the simulator).
#[must_use]
pub fn from_names<'a>(names: impl IntoIterator<Item = &'a str>) -> [u8; 7] {
    let mut bits = [0u8; 7];
    for name in names {
        if let Some(e) = ALARM_BITS.iter().find(|e| e.name == name)
            && let Some(b) = bits.get_mut(usize::from(e.byte))
        {
            *b |= 1 << e.bit;
        }
    }
    bits
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_covers_every_bit_once_in_wire_order() {
        for (i, e) in ALARM_BITS.iter().enumerate() {
            assert_eq!((usize::from(e.byte), usize::from(e.bit)), (i / 8, i % 8), "{}", e.name);
        }
        let mut names: Vec<_> = ALARM_BITS.iter().map(|e| e.name).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), ALARM_BITS.len(), "identifiers are unique");
    }

    #[test]
    fn names_and_bytes_round_trip() {
        let bits = [0x02, 0x08, 0x80, 0x00, 0x10, 0x00, 0x04];
        let names = active_names(&bits);
        assert_eq!(
            names,
            [
                "cell_voltage_high_l2",
                "charge_temperature_low_l2",
                "soc_low_l2",
                "charge_mosfet_adhesion_fault",
                "short_circuit_protection_fault"
            ]
        );
        assert_eq!(from_names(names), bits);
    }

    #[test]
    fn model_alarms_list_every_identifier_and_the_fault_code() {
        let alarms = to_model(&[0; 7], 3);
        assert_eq!(alarms.len(), ALARM_BITS.len() + 1);
        assert!(alarms.iter().filter(|a| a.active).map(|a| a.name).eq([FAULT_CODE_ALARM]));
    }
}
