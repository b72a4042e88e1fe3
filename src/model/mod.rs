//! The protocol-neutral pack snapshot that every protocol applies its replies to, and that every output
//! (metrics, JSON, Nagios, MQTT) renders. No protocol knowledge and no I/O here.
//!
//! Units are in the field names and are SI base units, except capacities in ampere-hours. Current is positive
//! while charging and negative while discharging, whatever the wire convention of the protocol. A field is
//! `None` until a reply has provided it, so a partial poll never invents a value.

mod alarm;
pub mod energy;
mod retained;
mod section;

pub use alarm::{Alarm, AlarmSeverity, Indicator, LevelAlarm, LevelAlarmKind, QuantityAlarm};
pub use retained::Retained;
pub use section::{Section, Sections, UnknownSection};

use serde::Serialize;

/// Everything one device (one Daly board, one Sinowealth board, one Pace master with its packs) reported.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct DeviceSnapshot {
    /// One entry per pack, in pack-number order.
    pub packs: Vec<PackSnapshot>,
}

impl DeviceSnapshot {
    /// The pack with this 1-based number, created empty if it is not there yet (packs stay sorted).
    pub fn pack_mut(&mut self, number: u8) -> &mut PackSnapshot {
        let index = match self.packs.binary_search_by_key(&number, |p| p.pack) {
            Ok(index) => index,
            Err(index) => {
                self.packs.insert(index, PackSnapshot::new(number));
                index
            }
        };
        // `index` is in bounds: it was just found or inserted.
        &mut self.packs[index]
    }
}

/// The operating state of a pack, as the protocol reports or implies it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PackState {
    /// Neither charging nor discharging.
    Idle,
    /// Current flows into the pack.
    Charging,
    /// Current flows out of the pack.
    Discharging,
}

impl PackState {
    /// Every state, in the order the `bms_pack_state` series are rendered.
    pub const ALL: [Self; 3] = [Self::Idle, Self::Charging, Self::Discharging];

    /// The label value of this state.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Idle => "idle",
            Self::Charging => "charging",
            Self::Discharging => "discharging",
        }
    }
}

/// Which temperature a reading belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SensorId {
    /// A numbered probe, 1-based as the device numbers it.
    Probe(u8),
    /// The MOSFET (power stage) sensor.
    Mosfet,
    /// The ambient / environment sensor.
    Ambient,
    /// The BMS board's own sensor.
    Board,
}

impl SensorId {
    /// The `sensor` label value: `"01"`…`"NN"` for probes, otherwise the sensor's name.
    #[must_use]
    pub fn label(self) -> String {
        match self {
            Self::Probe(n) => format!("{n:02}"),
            Self::Mosfet => "mosfet".to_owned(),
            Self::Ambient => "ambient".to_owned(),
            Self::Board => "board".to_owned(),
        }
    }
}

/// One temperature reading.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Temperature {
    /// Which sensor.
    pub sensor: SensorId,
    /// Degrees Celsius.
    pub celsius: f64,
}

/// The state of one digital input or output port of a Daly board.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct DigitalPort {
    /// Port name: `di1`…`di4`, `do1`…`do4`.
    pub port: &'static str,
    /// Whether the port is active.
    pub active: bool,
}

/// Identity strings a device reports about a pack; each is `None` until read.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct PackInfo {
    /// Model or product string.
    pub model: Option<String>,
    /// Firmware / software version string.
    pub firmware_version: Option<String>,
    /// Serial number or battery code.
    pub serial_number: Option<String>,
    /// The BMS board's own serial where the device reports it apart from the pack's (Pace 0xC2 carries both;
    /// tools that key Home Assistant entities by it need this one, not the pack's).
    pub bms_serial_number: Option<String>,
}

/// What one pack reported in one poll.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PackSnapshot {
    /// 1-based pack number: the Daly board number, or the Pace pack address / block number.
    pub pack: u8,
    /// False when the device says the pack is present but not reporting (a Pace block of zeros).
    pub online: bool,
    /// Pack (battery) voltage.
    pub voltage_volts: Option<f64>,
    /// Pack current; positive while charging, negative while discharging.
    pub current_amperes: Option<f64>,
    /// State of charge, 0–1.
    pub state_of_charge_ratio: Option<f64>,
    /// State of health, 0–1 (may exceed 1: packs often hold more than their nameplate capacity).
    pub state_of_health_ratio: Option<f64>,
    /// Remaining capacity.
    pub remaining_capacity_ampere_hours: Option<f64>,
    /// Full-charge capacity.
    pub full_capacity_ampere_hours: Option<f64>,
    /// Design (rated) capacity.
    pub design_capacity_ampere_hours: Option<f64>,
    /// Charge/discharge cycles as the device counts them.
    pub cycle_count: Option<u32>,
    /// Operating state.
    pub state: Option<PackState>,
    /// Whether the charge MOSFET is on.
    pub charge_mosfet_enabled: Option<bool>,
    /// Whether the discharge MOSFET is on.
    pub discharge_mosfet_enabled: Option<bool>,
    /// Whether a charger is detected (Daly).
    pub charger_connected: Option<bool>,
    /// Whether a load is detected (Daly).
    pub load_connected: Option<bool>,
    /// Digital I/O ports (Daly); empty when not reported.
    pub digital_io: Vec<DigitalPort>,
    /// Number of series cells the device reports.
    pub cell_count: Option<u16>,
    /// Number of temperature probes the device reports.
    pub temperature_sensor_count: Option<u16>,
    /// Cell voltages, index 0 = cell 1; `None` for a cell that was not read this time (e.g. a 0 mV reading).
    pub cell_volts: Vec<Option<f64>>,
    /// Per-cell balancing flags, index 0 = cell 1; empty when the protocol does not report balancing.
    pub cell_balancing: Vec<bool>,
    /// Whether the balancer is active at all, where the device reports it as one flag.
    pub balancing_active: Option<bool>,
    /// Temperature readings.
    pub temperatures: Vec<Temperature>,
    /// Every alarm the protocol defines, active or not, in the protocol's table order.
    pub alarms: Vec<Alarm>,
    /// Per-cell warning levels that are not normal (Pace).
    pub cell_alarms: Vec<LevelAlarm>,
    /// Per-sensor warning levels that are not normal (Pace).
    pub temperature_alarms: Vec<LevelAlarm>,
    /// Pack-wide quantities whose warning level is not normal (Pace: charge current, pack voltage, discharge
    /// current), with the direction the level byte gives.
    pub quantity_alarms: Vec<QuantityAlarm>,
    /// On/off states besides alarms, every one the protocol defines, in its table order (Pace instruction and
    /// control bits); empty when the protocol reports none.
    pub indicators: Vec<Indicator>,
    /// Identity strings.
    pub info: PackInfo,
}

impl PackSnapshot {
    /// An empty snapshot for pack `number`: online, nothing known yet.
    #[must_use]
    pub fn new(number: u8) -> Self {
        Self {
            pack: number,
            online: true,
            voltage_volts: None,
            current_amperes: None,
            state_of_charge_ratio: None,
            state_of_health_ratio: None,
            remaining_capacity_ampere_hours: None,
            full_capacity_ampere_hours: None,
            design_capacity_ampere_hours: None,
            cycle_count: None,
            state: None,
            charge_mosfet_enabled: None,
            discharge_mosfet_enabled: None,
            charger_connected: None,
            load_connected: None,
            digital_io: Vec::new(),
            cell_count: None,
            temperature_sensor_count: None,
            cell_volts: Vec::new(),
            cell_balancing: Vec::new(),
            balancing_active: None,
            temperatures: Vec::new(),
            alarms: Vec::new(),
            cell_alarms: Vec::new(),
            temperature_alarms: Vec::new(),
            quantity_alarms: Vec::new(),
            indicators: Vec::new(),
            info: PackInfo::default(),
        }
    }

    /// Pack power in watts (positive while charging), when voltage and current are both known.
    #[must_use]
    pub fn power_watts(&self) -> Option<f64> {
        Some(self.voltage_volts? * self.current_amperes?)
    }

    /// Lowest and highest known cell voltage, when at least one cell was read.
    #[must_use]
    pub fn cell_voltage_range(&self) -> Option<(f64, f64)> {
        self.cell_volts.iter().flatten().fold(None, |acc, &v| match acc {
            None => Some((v, v)),
            Some((lo, hi)) => Some((f64::min(lo, v), f64::max(hi, v))),
        })
    }

    /// Replace the alarm list with `alarms` (the whole table a protocol defines).
    pub fn set_alarms(&mut self, alarms: impl IntoIterator<Item = Alarm>) {
        self.alarms = alarms.into_iter().collect();
    }
}

/// Which sign the device uses for current on the wire; the model always stores positive = charging.
///
/// Daly boards disagree (`docs/protocols/daly-a5.md#current-sign`), so the user can choose; `Auto` learns it from the
/// reported charge/discharge state when the current is large enough to be sure.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CurrentSign {
    /// Decide from the state the device reports; charge-positive until a state says otherwise.
    #[default]
    Auto,
    /// Wire value above the offset means charging.
    ChargePositive,
    /// Wire value above the offset means discharging.
    DischargePositive,
}

impl CurrentSign {
    /// Smallest current (in amperes) whose sign `Auto` trusts when comparing with the reported state.
    pub const AUTO_THRESHOLD_AMPERES: f64 = 1.0;

    /// Convert a current in the wire's convention to the model's (positive = charging).
    ///
    /// `state` is the state the device reported in the same poll, if any; only `Auto` consults it.
    #[must_use]
    pub fn to_model(self, wire_amperes: f64, state: Option<PackState>) -> f64 {
        let invert = match self {
            Self::ChargePositive => false,
            Self::DischargePositive => true,
            Self::Auto => Self::auto_detect(wire_amperes, state) == Some(Self::DischargePositive),
        };
        if invert { -wire_amperes } else { wire_amperes }
    }

    /// What a wire current and a reported state say about the convention, if they are conclusive.
    #[must_use]
    pub fn auto_detect(wire_amperes: f64, state: Option<PackState>) -> Option<Self> {
        if wire_amperes.abs() < Self::AUTO_THRESHOLD_AMPERES {
            return None;
        }
        let positive = wire_amperes > 0.0;
        match state? {
            PackState::Charging => Some(if positive { Self::ChargePositive } else { Self::DischargePositive }),
            PackState::Discharging => Some(if positive { Self::DischargePositive } else { Self::ChargePositive }),
            PackState::Idle => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pack_mut_keeps_packs_sorted_and_reuses_existing_entries() {
        let mut device = DeviceSnapshot::default();
        device.pack_mut(3).cycle_count = Some(3);
        device.pack_mut(1).cycle_count = Some(1);
        device.pack_mut(3).voltage_volts = Some(52.0);
        let numbers: Vec<u8> = device.packs.iter().map(|p| p.pack).collect();
        assert_eq!(numbers, [1, 3]);
        assert_eq!(device.packs[1].cycle_count, Some(3));
        assert_eq!(device.packs[1].voltage_volts, Some(52.0));
    }

    #[test]
    fn auto_sign_flips_a_positive_wire_current_reported_while_discharging() {
        let sign = CurrentSign::Auto;
        assert_eq!(sign.to_model(50.0, Some(PackState::Discharging)), -50.0);
        assert_eq!(sign.to_model(50.0, Some(PackState::Charging)), 50.0);
        assert_eq!(sign.to_model(-25.5, Some(PackState::Charging)), 25.5);
        // Without a state, or below the threshold, auto keeps the wire value (charge-positive).
        assert_eq!(sign.to_model(50.0, None), 50.0);
        assert_eq!(sign.to_model(0.5, Some(PackState::Discharging)), 0.5);
    }

    #[test]
    fn explicit_signs_ignore_the_state() {
        assert_eq!(CurrentSign::DischargePositive.to_model(6.3, Some(PackState::Discharging)), -6.3);
        assert_eq!(CurrentSign::ChargePositive.to_model(6.3, Some(PackState::Discharging)), 6.3);
    }

    #[test]
    fn cell_range_skips_unread_cells_and_power_needs_both_values() {
        let mut pack = PackSnapshot::new(1);
        assert_eq!(pack.cell_voltage_range(), None);
        pack.cell_volts = vec![Some(3.3), None, Some(3.1), Some(3.4)];
        assert_eq!(pack.cell_voltage_range(), Some((3.1, 3.4)));
        assert_eq!(pack.power_watts(), None);
        pack.voltage_volts = Some(50.0);
        pack.current_amperes = Some(-2.0);
        assert_eq!(pack.power_watts(), Some(-100.0));
    }

    #[test]
    fn sensor_labels_are_two_digit_for_probes() {
        assert_eq!(SensorId::Probe(3).label(), "03");
        assert_eq!(SensorId::Probe(12).label(), "12");
        assert_eq!(SensorId::Mosfet.label(), "mosfet");
    }
}
