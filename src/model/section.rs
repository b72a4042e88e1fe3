//! The sections a poll can be limited to, shared by every protocol's request planner and every output: the
//! `read` command's positional arguments, and the unit of "what to ask the bus for".

use std::fmt;
use std::str::FromStr;

use serde::Serialize;

/// One group of values that a protocol fetches together (one request on Daly, part of one block elsewhere).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Section {
    /// Pack voltage, current, state of charge (Daly 0x90).
    Soc,
    /// Charge/discharge state, MOSFETs, remaining capacity (Daly 0x93).
    Mosfet,
    /// Cell and sensor counts, cycles, charger/load, digital I/O (Daly 0x94).
    Status,
    /// Every cell's voltage (Daly 0x95).
    Cells,
    /// Every temperature probe (Daly 0x96).
    Temperatures,
    /// Balancing per cell (Daly 0x97).
    Balancing,
    /// Every alarm and protection bit (Daly 0x98).
    Alarms,
    /// Capacities and identity: model, firmware, serial number (Daly 0x50, 0x57, 0x62, 0x63).
    Info,
}

impl Section {
    /// Every section, in output order.
    pub const ALL: [Self; 8] = [
        Self::Soc,
        Self::Mosfet,
        Self::Status,
        Self::Cells,
        Self::Temperatures,
        Self::Balancing,
        Self::Alarms,
        Self::Info,
    ];

    /// The name used on the command line and as the JSON key.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Soc => "soc",
            Self::Mosfet => "mosfet",
            Self::Status => "status",
            Self::Cells => "cells",
            Self::Temperatures => "temperatures",
            Self::Balancing => "balancing",
            Self::Alarms => "alarms",
            Self::Info => "info",
        }
    }
}

impl fmt::Display for Section {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The error for a section name that is not one of [`Section::ALL`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown section {0:?}: expected soc, mosfet, status, cells, temperatures, balancing, alarms or info")]
pub struct UnknownSection(pub String);

impl FromStr for Section {
    type Err = UnknownSection;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL.into_iter().find(|x| x.as_str() == s).ok_or_else(|| UnknownSection(s.to_owned()))
    }
}

/// A set of sections (a bit set: cheap to copy into every poll plan).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct Sections(u16);

impl Sections {
    /// Every section.
    #[must_use]
    pub fn all() -> Self {
        Self::ALL_SECTIONS
    }

    const ALL_SECTIONS: Self = Self(0xFF);

    /// No section.
    #[must_use]
    pub fn none() -> Self {
        Self(0)
    }

    /// This set with `section` added.
    #[must_use]
    pub fn with(self, section: Section) -> Self {
        Self(self.0 | 1 << section as u16)
    }

    /// Whether `section` is in the set.
    #[must_use]
    pub fn contains(self, section: Section) -> bool {
        self.0 & 1 << section as u16 != 0
    }

    /// Whether the set is empty.
    #[must_use]
    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// The sections in the set, in output order.
    pub fn iter(self) -> impl Iterator<Item = Section> {
        Section::ALL.into_iter().filter(move |s| self.contains(*s))
    }
}

impl FromIterator<Section> for Sections {
    fn from_iter<I: IntoIterator<Item = Section>>(iter: I) -> Self {
        iter.into_iter().fold(Self::none(), Self::with)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_sets_hold_what_was_added() {
        for s in Section::ALL {
            assert_eq!(s.as_str().parse::<Section>(), Ok(s));
        }
        assert!("cell".parse::<Section>().is_err());
        let set: Sections = [Section::Cells, Section::Soc].into_iter().collect();
        assert_eq!(set.iter().collect::<Vec<_>>(), vec![Section::Soc, Section::Cells]);
        assert!(!set.contains(Section::Info));
        assert_eq!(Sections::all().iter().count(), Section::ALL.len());
        assert!(Sections::none().is_empty());
    }
}
