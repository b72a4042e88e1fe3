//! Alarm identifiers shared by every output: a named flag with a severity, and per-cell/per-sensor levels.
//!
//! Names are the snake_case identifiers of the protocol specifications (`docs/protocols/`); they become the
//! `alarm` label of `bms_alarm_active`, so they must stay stable across releases.

use serde::Serialize;

/// How serious an alarm is, so outputs (Nagios, alert rules) can tell a warning from a protection trip.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AlarmSeverity {
    /// Informational state (e.g. "fully charged") that is reported alongside alarms.
    Info,
    /// A level-1 / warning threshold was crossed.
    Warning,
    /// A level-2 / protection threshold tripped: the BMS acts (opens a MOSFET).
    Protection,
    /// A hardware or internal fault.
    Fault,
}

/// One alarm the protocol defines, with its current state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Alarm {
    /// Stable snake_case identifier from the protocol specification.
    pub name: &'static str,
    /// Severity class of the alarm.
    pub severity: AlarmSeverity,
    /// Whether the alarm is active now.
    pub active: bool,
}

impl Alarm {
    /// An alarm named `name` of `severity`, active or not.
    #[must_use]
    pub const fn new(name: &'static str, severity: AlarmSeverity, active: bool) -> Self {
        Self { name, severity, active }
    }
}

/// A non-normal warning level reported for one cell or one temperature sensor (Pace 0x44 level bytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct LevelAlarm {
    /// 1-based cell or sensor number.
    pub index: u8,
    /// What the level byte says.
    pub kind: LevelAlarmKind,
}

/// A non-normal warning level of a pack-wide quantity (Pace 0x44: charge current, pack voltage, discharge
/// current), which a plain active flag would lose the direction of.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct QuantityAlarm {
    /// Which quantity: `charge_current`, `pack_voltage` or `discharge_current`.
    pub quantity: &'static str,
    /// What the level byte says.
    pub kind: LevelAlarmKind,
}

/// A named on/off state a device reports that is not an alarm (Pace instruction and control bits: heartbeat,
/// AC in, buzzer enabled, …).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Indicator {
    /// Stable snake_case identifier from the protocol specification.
    pub name: &'static str,
    /// Whether it is on.
    pub on: bool,
}

/// The meaning of a Pace level byte (`docs/protocols/pace.md#0x44-status`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LevelAlarmKind {
    /// 0x01: below the lower limit.
    BelowLowerLimit,
    /// 0x02: above the upper limit.
    AboveUpperLimit,
    /// 0x80–0xEF: a user-defined fault.
    UserDefined,
    /// 0xF0: other fault.
    OtherFault,
    /// Any other non-zero value, kept raw.
    Unknown(u8),
}

impl LevelAlarmKind {
    /// Interpret a level byte; `None` for 0x00 (normal).
    #[must_use]
    pub fn from_level(level: u8) -> Option<Self> {
        match level {
            0x00 => None,
            0x01 => Some(Self::BelowLowerLimit),
            0x02 => Some(Self::AboveUpperLimit),
            0x80..=0xEF => Some(Self::UserDefined),
            0xF0 => Some(Self::OtherFault),
            other => Some(Self::Unknown(other)),
        }
    }

    /// The `alarm` label value for this level.
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::BelowLowerLimit => "below_lower_limit",
            Self::AboveUpperLimit => "above_upper_limit",
            Self::UserDefined => "user_defined",
            Self::OtherFault => "other_fault",
            Self::Unknown(_) => "unknown",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn level_bytes_map_to_the_spec_names() {
        assert_eq!(LevelAlarmKind::from_level(0), None);
        assert_eq!(LevelAlarmKind::from_level(1).map(LevelAlarmKind::as_str), Some("below_lower_limit"));
        assert_eq!(LevelAlarmKind::from_level(2).map(LevelAlarmKind::as_str), Some("above_upper_limit"));
        assert_eq!(LevelAlarmKind::from_level(0x85).map(LevelAlarmKind::as_str), Some("user_defined"));
        assert_eq!(LevelAlarmKind::from_level(0xF0).map(LevelAlarmKind::as_str), Some("other_fault"));
        assert_eq!(LevelAlarmKind::from_level(0x03), Some(LevelAlarmKind::Unknown(3)));
    }
}
