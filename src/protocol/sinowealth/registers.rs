//! The Sinowealth register map (`docs/protocols/sinowealth.md#register-map`): which register holds what, its size and
//! signedness, the flag words' bit names, and the value of one register decoded from (and encoded to) its
//! data bytes.

use serde::Serialize;

use crate::model::{Alarm, AlarmSeverity};
use crate::protocol::DecodeError;
use crate::protocol::reader::Reader;

/// Temperatures are sent in 0.1 K. python-daly-bms subtracts 273 and dbus-serialbattery 273.1; we use the
/// physical 273.15 so a reading means what it says (the others read 0.15 °C / 0.05 °C high).
pub const KELVIN_OFFSET_C: f64 = 273.15;
/// Highest cell register of the map (cells 1–10 are registers 0x01–0x0A).
pub const MAX_CELLS: u8 = 10;

/// One register of the map.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Register {
    /// Registers 0x01–0x0A: cell 1–10 voltage, u16 mV.
    Cell(u8),
    /// 0x0B: pack voltage, u16 mV.
    PackVoltage,
    /// 0x0C: external temperature 1, u16 0.1 K.
    ExternalTemperature1,
    /// 0x0D: external temperature 2, u16 0.1 K.
    ExternalTemperature2,
    /// 0x0E: IC temperature 1, u16 0.1 K.
    IcTemperature1,
    /// 0x0F: IC temperature 2, meaning unclear; kept raw.
    IcTemperature2,
    /// 0x10: current, s32 mA, negative while discharging.
    Current,
    /// 0x11: full charge capacity, s32 mAh.
    FullCapacity,
    /// 0x12: remaining capacity, s32 mAh.
    RemainingCapacity,
    /// 0x13: relative state of charge, u16 %.
    Rsoc,
    /// 0x14: cycle count, u16.
    CycleCount,
    /// 0x15: pack status flags (`docs/protocols/sinowealth.md#pack-status-bits`).
    PackStatus,
    /// 0x16: battery status protections (`docs/protocols/sinowealth.md#battery-status-bits`).
    BatteryStatus,
    /// 0x17: pack configuration (cell count − 3 in bits 0–2).
    PackConfig,
    /// 0x18: manufacture access, unknown; kept raw.
    ManufactureAccess,
}

impl Register {
    /// The register at `address`, if the map defines it.
    #[must_use]
    pub fn from_address(address: u8) -> Option<Self> {
        Some(match address {
            0x01..=0x0A => Self::Cell(address),
            0x0B => Self::PackVoltage,
            0x0C => Self::ExternalTemperature1,
            0x0D => Self::ExternalTemperature2,
            0x0E => Self::IcTemperature1,
            0x0F => Self::IcTemperature2,
            0x10 => Self::Current,
            0x11 => Self::FullCapacity,
            0x12 => Self::RemainingCapacity,
            0x13 => Self::Rsoc,
            0x14 => Self::CycleCount,
            0x15 => Self::PackStatus,
            0x16 => Self::BatteryStatus,
            0x17 => Self::PackConfig,
            0x18 => Self::ManufactureAccess,
            _ => return None,
        })
    }

    /// The register number (request byte 1).
    #[must_use]
    pub fn address(self) -> u8 {
        match self {
            Self::Cell(n) => n,
            Self::PackVoltage => 0x0B,
            Self::ExternalTemperature1 => 0x0C,
            Self::ExternalTemperature2 => 0x0D,
            Self::IcTemperature1 => 0x0E,
            Self::IcTemperature2 => 0x0F,
            Self::Current => 0x10,
            Self::FullCapacity => 0x11,
            Self::RemainingCapacity => 0x12,
            Self::Rsoc => 0x13,
            Self::CycleCount => 0x14,
            Self::PackStatus => 0x15,
            Self::BatteryStatus => 0x16,
            Self::PackConfig => 0x17,
            Self::ManufactureAccess => 0x18,
        }
    }

    /// Data bytes of the reply (request byte 2): 4 for 0x10–0x12, else 2.
    #[must_use]
    pub fn data_len(self) -> u8 {
        match self {
            Self::Current | Self::FullCapacity | Self::RemainingCapacity => 4,
            _ => 2,
        }
    }

    /// A stable snake_case name of the register.
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Self::Cell(_) => "cell_voltage",
            Self::PackVoltage => "pack_voltage",
            Self::ExternalTemperature1 => "external_temperature_1",
            Self::ExternalTemperature2 => "external_temperature_2",
            Self::IcTemperature1 => "ic_temperature_1",
            Self::IcTemperature2 => "ic_temperature_2",
            Self::Current => "current",
            Self::FullCapacity => "full_capacity",
            Self::RemainingCapacity => "remaining_capacity",
            Self::Rsoc => "rsoc",
            Self::CycleCount => "cycle_count",
            Self::PackStatus => "pack_status",
            Self::BatteryStatus => "battery_status",
            Self::PackConfig => "pack_config",
            Self::ManufactureAccess => "manufacture_access",
        }
    }
}

/// One named bit of a flag word: bit number, the spec's mnemonic, our snake_case identifier.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FlagBit {
    /// Bit number, 0 = least significant.
    pub bit: u8,
    /// The BMStool mnemonic of the spec.
    pub mnemonic: &'static str,
    /// Stable identifier.
    pub name: &'static str,
}

const fn flag(bit: u8, mnemonic: &'static str, name: &'static str) -> FlagBit {
    FlagBit { bit, mnemonic, name }
}

/// Pack status bits, high bit first as the note lists them.
pub const PACK_STATUS_BITS: [FlagBit; 11] = [
    flag(15, "CAL", "calibration"),
    flag(10, "VDQ", "valid_discharge_qualified"),
    flag(9, "FD", "fully_discharged"),
    flag(8, "FC", "fully_charged"),
    flag(6, "FAST_DSG", "fast_discharging"),
    flag(5, "MID_DSG", "medium_discharging"),
    flag(4, "SLOW_DSG", "slow_discharging"),
    flag(3, "DSGING", "discharging"),
    flag(2, "CHGING", "charging"),
    flag(1, "DSGMOS", "discharge_mosfet_on"),
    flag(0, "CHGMOS", "charge_mosfet_on"),
];

/// Battery status protection bits, high bit first. These names are the `alarm` identifiers.
pub const BATTERY_STATUS_BITS: [FlagBit; 11] = [
    flag(14, "CTO", "disconnection"),
    flag(13, "AFE_SC", "hardware_short_circuit"),
    flag(12, "AFE_OV", "hardware_overvoltage"),
    flag(11, "UTD", "discharge_undertemperature"),
    flag(10, "UTC", "charge_undertemperature"),
    flag(9, "OTD", "discharge_overtemperature"),
    flag(8, "OTC", "charge_overtemperature"),
    flag(3, "OCD", "discharge_overcurrent"),
    flag(2, "OCC", "charge_overcurrent"),
    flag(1, "UV", "cell_undervoltage"),
    flag(0, "OV", "cell_overvoltage"),
];

/// Identifiers of the bits of `table` set in `raw`.
#[must_use]
pub fn active_flags(table: &[FlagBit], raw: u16) -> Vec<&'static str> {
    table.iter().filter(|f| raw >> f.bit & 1 == 1).map(|f| f.name).collect()
}

/// The flag word with exactly the named bits of `table` set (unknown names ignored).
#[must_use]
pub fn flags_from_names<'a>(table: &[FlagBit], names: impl IntoIterator<Item = &'a str>) -> u16 {
    names.into_iter().filter_map(|n| table.iter().find(|f| f.name == n)).fold(0, |acc, f| acc | 1 << f.bit)
}

/// Every protection of a battery status word as model alarms (severity Protection).
#[must_use]
pub fn protection_alarms(raw: u16) -> Vec<Alarm> {
    BATTERY_STATUS_BITS.iter().map(|f| Alarm::new(f.name, AlarmSeverity::Protection, raw >> f.bit & 1 == 1)).collect()
}

/// The pack status word (register 0x15).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PackStatus {
    /// The raw 16-bit value.
    pub pack_status_raw: u16,
    /// Identifiers of the set bits ([`PACK_STATUS_BITS`]).
    pub pack_status: Vec<&'static str>,
}

impl PackStatus {
    /// Interpret a raw word.
    #[must_use]
    pub fn new(raw: u16) -> Self {
        Self { pack_status_raw: raw, pack_status: active_flags(&PACK_STATUS_BITS, raw) }
    }

    /// CHGMOS (bit 0).
    #[must_use]
    pub fn charge_mosfet_on(&self) -> bool {
        self.pack_status_raw & 1 == 1
    }

    /// DSGMOS (bit 1).
    #[must_use]
    pub fn discharge_mosfet_on(&self) -> bool {
        self.pack_status_raw >> 1 & 1 == 1
    }

    /// CHGING (bit 2).
    #[must_use]
    pub fn charging(&self) -> bool {
        self.pack_status_raw >> 2 & 1 == 1
    }

    /// DSGING (bit 3).
    #[must_use]
    pub fn discharging(&self) -> bool {
        self.pack_status_raw >> 3 & 1 == 1
    }
}

/// The battery status word (register 0x16).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BatteryStatus {
    /// The raw 16-bit value.
    pub battery_status_raw: u16,
    /// Identifiers of the active protections ([`BATTERY_STATUS_BITS`]).
    pub protections: Vec<&'static str>,
}

/// The value of one register, in SI units; serialized by its field names only.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum Value {
    /// A cell voltage.
    CellVoltage {
        /// Cell number, 1-based.
        cell: u8,
        /// Volts.
        cell_voltage_v: f64,
    },
    /// The pack voltage.
    PackVoltage {
        /// Volts.
        pack_voltage_v: f64,
    },
    /// A temperature (0x0C–0x0E).
    Temperature {
        /// Degrees Celsius.
        temperature_c: f64,
    },
    /// The current, positive while charging.
    Current {
        /// Amperes.
        current_a: f64,
    },
    /// Full charge capacity.
    FullCapacity {
        /// Ampere-hours.
        full_capacity_ah: f64,
    },
    /// Remaining capacity.
    RemainingCapacity {
        /// Ampere-hours.
        remaining_capacity_ah: f64,
    },
    /// Relative state of charge.
    Rsoc {
        /// Percent.
        soc_percent: u16,
    },
    /// Cycle count.
    CycleCount {
        /// Cycles.
        cycles: u16,
    },
    /// Pack status flags.
    PackStatus(PackStatus),
    /// Battery status protections.
    BatteryStatus(BatteryStatus),
    /// Pack configuration.
    PackConfig {
        /// The raw 16-bit value.
        pack_config_raw: u16,
        /// Series cells: (bits 0–2) + 3.
        cell_count: u16,
    },
    /// A register without a known meaning (0x0F, 0x18), kept raw.
    Raw {
        /// The raw value.
        raw: u16,
    },
}

fn millis(raw: i32) -> f64 {
    f64::from(raw) / 1000.0
}

fn to_millis(value: f64) -> i32 {
    (value * 1000.0).round().clamp(f64::from(i32::MIN), f64::from(i32::MAX)) as i32
}

fn to_millis_u16(value: f64) -> u16 {
    (value * 1000.0).round().clamp(0.0, f64::from(u16::MAX)) as u16
}

impl Value {
    /// Decode the data bytes (check byte excluded) of `register`.
    pub fn decode(register: Register, data: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(data);
        let value = match register {
            Register::Current | Register::FullCapacity | Register::RemainingCapacity => {
                let v = millis(r.be_i32()?);
                match register {
                    Register::Current => Self::Current { current_a: v },
                    Register::FullCapacity => Self::FullCapacity { full_capacity_ah: v },
                    _ => Self::RemainingCapacity { remaining_capacity_ah: v },
                }
            }
            _ => {
                let raw = r.be_u16()?;
                match register {
                    Register::Cell(cell) => Self::CellVoltage { cell, cell_voltage_v: millis(i32::from(raw)) },
                    Register::PackVoltage => Self::PackVoltage { pack_voltage_v: millis(i32::from(raw)) },
                    Register::ExternalTemperature1 | Register::ExternalTemperature2 | Register::IcTemperature1 => {
                        // In hundredths (27 315 = KELVIN_OFFSET_C × 100), exact in integers: 2986 reads 25.45, not 25.450000000000045.
                        Self::Temperature { temperature_c: (f64::from(raw) * 10.0 - 27_315.0) / 100.0 }
                    }
                    Register::Rsoc => Self::Rsoc { soc_percent: raw },
                    Register::CycleCount => Self::CycleCount { cycles: raw },
                    Register::PackStatus => Self::PackStatus(PackStatus::new(raw)),
                    Register::BatteryStatus => Self::BatteryStatus(BatteryStatus {
                        battery_status_raw: raw,
                        protections: active_flags(&BATTERY_STATUS_BITS, raw),
                    }),
                    Register::PackConfig => Self::PackConfig { pack_config_raw: raw, cell_count: (raw & 0x07) + 3 },
                    _ => Self::Raw { raw },
                }
            }
        };
        if r.remaining() != 0 {
            return Err(DecodeError::Oversize { declared: r.position(), actual: data.len() });
        }
        Ok(value)
    }

    /// The data bytes a board sends for this value (check byte excluded).
    #[must_use]
    pub fn to_data(&self) -> Vec<u8> {
        let word = |raw: u16| raw.to_be_bytes().to_vec();
        match self {
            Self::CellVoltage { cell_voltage_v: v, .. } | Self::PackVoltage { pack_voltage_v: v } => {
                word(to_millis_u16(*v))
            }
            Self::Temperature { temperature_c } => {
                word(((temperature_c + KELVIN_OFFSET_C) * 10.0).round().clamp(0.0, f64::from(u16::MAX)) as u16)
            }
            Self::Current { current_a: v }
            | Self::FullCapacity { full_capacity_ah: v }
            | Self::RemainingCapacity { remaining_capacity_ah: v } => to_millis(*v).to_be_bytes().to_vec(),
            Self::Rsoc { soc_percent: raw }
            | Self::CycleCount { cycles: raw }
            | Self::PackStatus(PackStatus { pack_status_raw: raw, .. })
            | Self::BatteryStatus(BatteryStatus { battery_status_raw: raw, .. })
            | Self::PackConfig { pack_config_raw: raw, .. }
            | Self::Raw { raw } => word(*raw),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_register_maps_back_to_its_address() {
        for address in 0..=0xFF {
            if let Some(register) = Register::from_address(address) {
                assert_eq!(register.address(), address);
            }
        }
        assert_eq!(Register::from_address(0x00), None);
        assert_eq!(Register::from_address(0x19), None);
    }

    #[test]
    fn the_issue_34_status_words_name_the_spec_flags() {
        let status = PackStatus::new(0x004B);
        assert_eq!(status.pack_status, ["fast_discharging", "discharging", "discharge_mosfet_on", "charge_mosfet_on"]);
        assert!(status.discharging() && !status.charging());
        assert_eq!(active_flags(&BATTERY_STATUS_BITS, 0x0400), ["charge_undertemperature"]);
        assert_eq!(flags_from_names(&BATTERY_STATUS_BITS, ["charge_undertemperature"]), 0x0400);
    }

    #[test]
    fn current_is_signed_and_temperature_uses_273_15() {
        let current = Value::decode(Register::Current, &(-149i32).to_be_bytes()).unwrap();
        assert_eq!(current, Value::Current { current_a: -0.149 });
        let Value::Temperature { temperature_c } =
            Value::decode(Register::ExternalTemperature1, &[0x0A, 0x5D]).unwrap()
        else {
            panic!("not a temperature")
        };
        assert!((temperature_c - (265.3 - 273.15)).abs() < 1e-9);
        // The shortest decimal that names the value, as a JSON reader sees it.
        let Value::Temperature { temperature_c } =
            Value::decode(Register::ExternalTemperature1, &[0x0B, 0xAA]).unwrap()
        else {
            panic!("not a temperature")
        };
        assert_eq!(temperature_c.to_string(), "25.45");
    }
}
