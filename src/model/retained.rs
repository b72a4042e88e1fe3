//! Last good values of one device, field by field: each poll's snapshot refreshes what it provided and leaves
//! everything else as it was, with the time each value was last confirmed, so a failed request never removes a
//! good value before `stale_after` and a stale value is never served as fresh.
//!
//! Pure: times are Unix seconds passed in by the caller. The grain is the field (one cell, one probe, one
//! scalar), so a device whose polls keep failing on one request still exports everything that keeps answering,
//! and only the values that request provides age out.

use std::collections::BTreeMap;

use super::{DeviceSnapshot, PackSnapshot, SensorId, Temperature};

/// The Option-valued scalars of a [`PackSnapshot`], each with its own confirmation time.
macro_rules! scalars {
    ($($field:ident),* $(,)?) => {
        /// When each scalar of a pack was last provided by a poll (Unix seconds; 0 = never).
        #[derive(Debug, Clone, Default, PartialEq)]
        struct ScalarTimes {
            $($field: f64,)*
        }

        /// Take every scalar `new` provides into `values`, stamped `now`.
        fn merge_scalars(values: &mut PackSnapshot, at: &mut ScalarTimes, new: &PackSnapshot, now: f64) {
            $(
                if new.$field.is_some() {
                    values.$field.clone_from(&new.$field);
                    at.$field = now;
                }
            )*
        }

        impl ScalarTimes {
            /// The latest time any scalar was confirmed.
            fn newest(&self) -> f64 {
                [$(self.$field),*].into_iter().fold(0.0, f64::max)
            }
        }

        /// Clear every scalar of `values` last confirmed before `oldest`.
        fn expire_scalars(values: &mut PackSnapshot, at: &ScalarTimes, oldest: f64) {
            $(
                if at.$field < oldest {
                    values.$field = None;
                }
            )*
        }
    };
}

scalars!(
    voltage_volts,
    current_amperes,
    state_of_charge_ratio,
    state_of_health_ratio,
    remaining_capacity_ampere_hours,
    full_capacity_ampere_hours,
    design_capacity_ampere_hours,
    cycle_count,
    state,
    charge_mosfet_enabled,
    discharge_mosfet_enabled,
    charger_connected,
    load_connected,
    cell_count,
    temperature_sensor_count,
    balancing_active,
);

/// One pack's last good values and when each was confirmed.
#[derive(Debug, Clone, PartialEq)]
struct RetainedPack {
    /// The values; `online` is meaningless here (a pack is shown while any value is fresh).
    values: PackSnapshot,
    scalars: ScalarTimes,
    /// Per cell, index-aligned with `values.cell_volts`.
    cells: Vec<f64>,
    /// Per probe.
    temperatures: BTreeMap<SensorId, (f64, f64)>,
    /// `cell_balancing` comes whole from one reply.
    balancing: f64,
    /// `digital_io` comes whole from one reply.
    digital_io: f64,
    /// `alarms`, `cell_alarms`, `temperature_alarms`, `quantity_alarms` and `indicators` come together from one
    /// reply: the level lists hold only active levels, so an empty list is news only when the reply that carries
    /// the alarms was read.
    alarms: f64,
    /// Model, firmware version, serial number, BMS serial number.
    info: [f64; 4],
}

impl RetainedPack {
    fn new(number: u8) -> Self {
        Self {
            values: PackSnapshot::new(number),
            scalars: ScalarTimes::default(),
            cells: Vec::new(),
            temperatures: BTreeMap::new(),
            balancing: 0.0,
            digital_io: 0.0,
            alarms: 0.0,
            info: [0.0; 4],
        }
    }

    /// Take what the online pack `new` provides, confirmed at `now`.
    fn merge(&mut self, new: &PackSnapshot, now: f64) {
        let values = &mut self.values;
        merge_scalars(values, &mut self.scalars, new, now);
        if !new.cell_volts.is_empty() {
            // A shorter list is not news by itself (a poll whose last cell request failed ends early); only a
            // cell count the device reported removes cells beyond it.
            let len = match new.cell_count {
                Some(count) => usize::from(count).max(new.cell_volts.len()),
                None => values.cell_volts.len().max(new.cell_volts.len()),
            };
            values.cell_volts.resize(len, None);
            self.cells.resize(len, 0.0);
            for ((value, at), cell) in values.cell_volts.iter_mut().zip(&mut self.cells).zip(&new.cell_volts) {
                if cell.is_some() {
                    *value = *cell;
                    *at = now;
                }
            }
        }
        for t in &new.temperatures {
            self.temperatures.insert(t.sensor, (t.celsius, now));
        }
        if !new.cell_balancing.is_empty() {
            values.cell_balancing.clone_from(&new.cell_balancing);
            self.balancing = now;
        }
        if !new.digital_io.is_empty() {
            values.digital_io.clone_from(&new.digital_io);
            self.digital_io = now;
        }
        if !new.alarms.is_empty()
            || !new.cell_alarms.is_empty()
            || !new.temperature_alarms.is_empty()
            || !new.quantity_alarms.is_empty()
            || !new.indicators.is_empty()
        {
            values.alarms.clone_from(&new.alarms);
            values.cell_alarms.clone_from(&new.cell_alarms);
            values.temperature_alarms.clone_from(&new.temperature_alarms);
            values.quantity_alarms.clone_from(&new.quantity_alarms);
            values.indicators.clone_from(&new.indicators);
            self.alarms = now;
        }
        let info = [&new.info.model, &new.info.firmware_version, &new.info.serial_number, &new.info.bms_serial_number];
        let kept = [
            &mut values.info.model,
            &mut values.info.firmware_version,
            &mut values.info.serial_number,
            &mut values.info.bms_serial_number,
        ];
        for ((kept, new), at) in kept.into_iter().zip(info).zip(&mut self.info) {
            if new.is_some() {
                kept.clone_from(new);
                *at = now;
            }
        }
    }

    /// The values confirmed at or after `oldest`, or `None` when none is.
    fn view(&self, oldest: f64) -> Option<PackSnapshot> {
        let mut pack = self.values.clone();
        pack.online = true;
        expire_scalars(&mut pack, &self.scalars, oldest);
        for (value, at) in pack.cell_volts.iter_mut().zip(&self.cells) {
            if *at < oldest {
                *value = None;
            }
        }
        if pack.cell_volts.iter().all(Option::is_none) {
            pack.cell_volts.clear();
        }
        pack.temperatures = self
            .temperatures
            .iter()
            .filter(|(_, (_, at))| *at >= oldest)
            .map(|(&sensor, &(celsius, _))| Temperature { sensor, celsius })
            .collect();
        if self.balancing < oldest {
            pack.cell_balancing.clear();
        }
        if self.digital_io < oldest {
            pack.digital_io.clear();
        }
        if self.alarms < oldest {
            pack.alarms.clear();
            pack.cell_alarms.clear();
            pack.temperature_alarms.clear();
            pack.quantity_alarms.clear();
            pack.indicators.clear();
        }
        let info = [
            &mut pack.info.model,
            &mut pack.info.firmware_version,
            &mut pack.info.serial_number,
            &mut pack.info.bms_serial_number,
        ];
        for (value, at) in info.into_iter().zip(self.info) {
            if at < oldest {
                *value = None;
            }
        }
        let newest = [
            self.cells.iter().copied().fold(0.0, f64::max),
            self.temperatures.values().map(|&(_, at)| at).fold(0.0, f64::max),
            self.balancing,
            self.digital_io,
            self.alarms,
            self.info.iter().copied().fold(0.0, f64::max),
            self.scalars.newest(),
        ]
        .into_iter()
        .fold(0.0, f64::max);
        (newest >= oldest && newest > 0.0).then_some(pack)
    }
}

/// Every pack's last good values for one device. See the module documentation.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Retained {
    packs: BTreeMap<u8, RetainedPack>,
}

impl Retained {
    /// Take in a poll's snapshot, ended at `now_unix`: every value an online pack provides replaces the kept
    /// one; packs that did not answer (offline) and values the poll did not get keep what they had.
    pub fn update(&mut self, snapshot: &DeviceSnapshot, now_unix: f64) {
        for pack in snapshot.packs.iter().filter(|p| p.online) {
            self.packs.entry(pack.pack).or_insert_with(|| RetainedPack::new(pack.pack)).merge(pack, now_unix);
        }
    }

    /// The values confirmed within `stale_after_s` of `now_unix`, as a snapshot whose packs are those with at
    /// least one such value (all marked online).
    #[must_use]
    pub fn view(&self, now_unix: f64, stale_after_s: f64) -> DeviceSnapshot {
        let oldest = now_unix - stale_after_s;
        DeviceSnapshot { packs: self.packs.values().filter_map(|p| p.view(oldest)).collect() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Alarm, AlarmSeverity, Indicator, LevelAlarm, LevelAlarmKind, QuantityAlarm};

    const T0: f64 = 1_700_000_000.0;
    const STALE: f64 = 60.0;

    fn full(number: u8, volts: f64) -> PackSnapshot {
        let mut p = PackSnapshot::new(number);
        p.voltage_volts = Some(volts);
        p.current_amperes = Some(-3.5);
        p.cycle_count = Some(12);
        p.cell_volts = vec![Some(3.301), Some(3.302), Some(3.303)];
        p.temperatures = vec![Temperature { sensor: SensorId::Probe(1), celsius: 21.0 }];
        p.cell_balancing = vec![false, true, false];
        p.alarms = vec![Alarm::new("cell_overvoltage", AlarmSeverity::Warning, false)];
        p.cell_alarms = vec![LevelAlarm { index: 2, kind: LevelAlarmKind::AboveUpperLimit }];
        p.quantity_alarms = vec![QuantityAlarm { quantity: "charge_current", kind: LevelAlarmKind::AboveUpperLimit }];
        p.indicators = vec![Indicator { name: "heart", on: true }];
        p.info.model = Some("M".to_owned());
        p.info.bms_serial_number = Some("BMS1".to_owned());
        p
    }

    fn device(packs: Vec<PackSnapshot>) -> DeviceSnapshot {
        DeviceSnapshot { packs }
    }

    #[test]
    fn a_value_stays_until_stale_after_then_vanishes() {
        let mut kept = Retained::default();
        kept.update(&device(vec![full(1, 52.0)]), T0);
        // Every later poll failed: nothing new arrives.
        for _ in 0..5 {
            kept.update(&device(vec![PackSnapshot::new(1)]), T0 + 30.0);
        }
        assert_eq!(kept.view(T0 + STALE, STALE), device(vec![full(1, 52.0)]), "at exactly stale_after: kept");
        assert_eq!(kept.view(T0 + STALE + 0.001, STALE), DeviceSnapshot::default(), "past it: gone, pack too");
    }

    #[test]
    fn each_field_ages_from_the_last_poll_that_provided_it() {
        let mut kept = Retained::default();
        kept.update(&device(vec![full(1, 52.0)]), T0);
        // Later polls answer the voltage and cell 2 only (the other requests keep failing).
        let mut partial = PackSnapshot::new(1);
        partial.voltage_volts = Some(52.5);
        partial.cell_volts = vec![None, Some(3.310), None];
        kept.update(&device(vec![partial]), T0 + 50.0);

        let view = kept.view(T0 + 55.0, STALE);
        let pack = &view.packs[0];
        assert_eq!(pack.voltage_volts, Some(52.5), "the new value replaces the old");
        assert_eq!(pack.current_amperes, Some(-3.5), "a field the poll missed keeps its last good value");
        assert_eq!(pack.cell_volts, vec![Some(3.301), Some(3.310), Some(3.303)]);

        let view = kept.view(T0 + 70.0, STALE);
        let pack = &view.packs[0];
        assert_eq!(pack.voltage_volts, Some(52.5));
        assert_eq!(pack.current_amperes, None, "older than stale_after");
        assert_eq!(pack.cycle_count, None);
        assert_eq!(pack.cell_volts, vec![None, Some(3.310), None], "cells age one by one");
        assert!(pack.temperatures.is_empty() && pack.cell_balancing.is_empty() && pack.alarms.is_empty());
        assert!(pack.cell_alarms.is_empty() && pack.info.model.is_none());
        assert!(pack.quantity_alarms.is_empty() && pack.indicators.is_empty() && pack.info.bms_serial_number.is_none());

        assert!(kept.view(T0 + 111.0, STALE).packs.is_empty(), "nothing fresh: the pack is not shown");
    }

    #[test]
    fn an_offline_pack_keeps_its_values_and_other_packs_update() {
        let mut kept = Retained::default();
        kept.update(&device(vec![full(1, 52.0), full(2, 53.0)]), T0);
        let mut gone = PackSnapshot::new(2);
        gone.online = false;
        kept.update(&device(vec![full(1, 51.0), gone]), T0 + 10.0);
        let view = kept.view(T0 + 20.0, STALE);
        assert_eq!(
            view.packs.iter().map(|p| (p.pack, p.voltage_volts)).collect::<Vec<_>>(),
            [(1, Some(51.0)), (2, Some(53.0))]
        );
        assert!(view.packs.iter().all(|p| p.online));
    }

    #[test]
    fn alarms_and_their_level_lists_are_replaced_together() {
        let mut kept = Retained::default();
        kept.update(&device(vec![full(1, 52.0)]), T0);
        // The alarm reply was read again: no level is active any more (an empty list is news here).
        let mut next = PackSnapshot::new(1);
        next.alarms = vec![Alarm::new("cell_overvoltage", AlarmSeverity::Warning, true)];
        next.indicators = vec![Indicator { name: "heart", on: false }];
        kept.update(&device(vec![next]), T0 + 1.0);
        let pack = &kept.view(T0 + 2.0, STALE).packs[0];
        assert!(pack.alarms[0].active);
        assert!(pack.cell_alarms.is_empty(), "a level cleared in the same reply is gone");
        assert!(pack.quantity_alarms.is_empty(), "so is a pack-wide level");
        assert_eq!(pack.indicators, [Indicator { name: "heart", on: false }]);
        // A poll without the alarm reply leaves them all as they were.
        kept.update(&device(vec![PackSnapshot::new(1)]), T0 + 3.0);
        let pack = &kept.view(T0 + 4.0, STALE).packs[0];
        assert!(pack.alarms[0].active);
        assert_eq!(pack.indicators, [Indicator { name: "heart", on: false }]);
    }

    #[test]
    fn only_a_reported_cell_count_shortens_the_list_and_probes_are_kept_by_sensor() {
        let mut kept = Retained::default();
        kept.update(&device(vec![full(1, 52.0)]), T0);
        // A poll whose last cell request failed: two cells, no count. Cell 3 keeps its value.
        let mut next = PackSnapshot::new(1);
        next.cell_volts = vec![Some(3.2), Some(3.25)];
        next.temperatures = vec![Temperature { sensor: SensorId::Mosfet, celsius: 30.0 }];
        kept.update(&device(vec![next.clone()]), T0 + 1.0);
        let pack = &kept.view(T0 + 2.0, STALE).packs[0];
        assert_eq!(pack.cell_volts, vec![Some(3.2), Some(3.25), Some(3.303)]);
        assert_eq!(pack.temperatures.len(), 2, "probe 1 kept beside the new MOSFET sensor");
        // The device says it has two cells now: the third goes.
        next.cell_count = Some(2);
        kept.update(&device(vec![next]), T0 + 3.0);
        assert_eq!(kept.view(T0 + 4.0, STALE).packs[0].cell_volts, vec![Some(3.2), Some(3.25)]);
    }
}
