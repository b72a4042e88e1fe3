//! Charged and discharged energy and charge per pack, integrated from pack power between consecutive good polls.
//!
//! Pure: the caller passes each poll's own snapshot and the Unix time it ended. Between two samples of the same
//! pack the current and the power are integrated with the trapezoid rule; when the current changes sign inside
//! the interval, the interval is split at the linear zero crossing, so a pack that went from charging to
//! discharging counts both parts instead of their difference. An interval is never guessed across: one longer
//! than the caller's limit (a gap), one that does not go forward (a clock stepped back) and one in which the pack
//! went offline are not integrated, and the next good sample starts a new one. A poll that missed a pack's
//! voltage or current adds no sample: the next good poll integrates from the last good one, as after a poll
//! that failed as a whole, and the gap limit bounds how far that may reach.
//!
//! Totals are kept in memory only, so they start at 0 whenever the exporter starts; consumers of counters
//! (Prometheus' `rate()`/`increase()`, Home Assistant's `total_increasing`) treat the drop as a reset.

use std::collections::{BTreeMap, BTreeSet};

use super::{DeviceSnapshot, PackSnapshot};

/// Seconds per hour: ampere-seconds to ampere-hours.
const SECONDS_PER_HOUR: f64 = 3600.0;

/// The running totals of one pack.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PackEnergy {
    /// 1-based pack number.
    pub pack: u8,
    /// Energy that flowed into the pack, in joules.
    pub charged_joules: f64,
    /// Energy that flowed out of the pack, in joules.
    pub discharged_joules: f64,
    /// Charge that flowed into the pack, in ampere-hours.
    pub charged_ampere_hours: f64,
    /// Charge that flowed out of the pack, in ampere-hours.
    pub discharged_ampere_hours: f64,
}

impl PackEnergy {
    /// Zero totals for pack `number`.
    #[must_use]
    pub fn new(number: u8) -> Self {
        Self { pack: number, ..Self::default() }
    }

    /// Add the interval from `a` to `b`, split at the zero crossing when the current changes sign in it.
    fn integrate(&mut self, a: Sample, b: Sample) {
        let opposite = (a.amperes > 0.0 && b.amperes < 0.0) || (a.amperes < 0.0 && b.amperes > 0.0);
        if opposite {
            // Where the straight line between the two currents crosses 0; in (0, 1) because the signs differ.
            let fraction = a.amperes / (a.amperes - b.amperes);
            let zero = Sample {
                unix: a.unix + (b.unix - a.unix) * fraction,
                volts: a.volts + (b.volts - a.volts) * fraction,
                amperes: 0.0,
            };
            self.add_segment(a, zero);
            self.add_segment(zero, b);
        } else {
            self.add_segment(a, b);
        }
    }

    /// Add one interval in which the current keeps one sign (either end may be 0).
    fn add_segment(&mut self, a: Sample, b: Sample) {
        let seconds = b.unix - a.unix;
        // 0.5 * (I + I) is I exactly, so a constant current gives exactly I * seconds / 3600.
        let amperes = 0.5 * (a.amperes + b.amperes);
        let watts = 0.5 * (a.volts * a.amperes + b.volts * b.amperes);
        let ampere_hours = amperes * seconds / SECONDS_PER_HOUR;
        let joules = watts * seconds;
        // Only finite, non-negative increments: totals never decrease, whatever the inputs (a negative voltage
        // would flip the sign of the power, an overflow would make it infinite or NaN).
        let add = |total: &mut f64, increment: f64| {
            if increment.is_finite() && increment > 0.0 {
                *total += increment;
            }
        };
        if amperes > 0.0 {
            add(&mut self.charged_ampere_hours, ampere_hours);
            add(&mut self.charged_joules, joules);
        } else if amperes < 0.0 {
            add(&mut self.discharged_ampere_hours, -ampere_hours);
            add(&mut self.discharged_joules, -joules);
        }
    }
}

/// One pack's voltage and current at the end of a poll: the start of its next interval.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Sample {
    unix: f64,
    volts: f64,
    amperes: f64,
}

impl Sample {
    /// The sample `pack` gives at `unix`, if it reported a finite voltage and current.
    fn of(pack: &PackSnapshot, unix: f64) -> Option<Self> {
        let sample = Self { unix, volts: pack.voltage_volts?, amperes: pack.current_amperes? };
        let finite = sample.unix.is_finite() && sample.volts.is_finite() && sample.amperes.is_finite();
        finite.then_some(sample)
    }
}

/// The energy and charge integrator of one device: per-pack totals and each pack's latest usable sample.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Energy {
    /// Totals by pack number, sorted.
    totals: Vec<PackEnergy>,
    /// Each pack's latest usable sample, where its next interval starts.
    starts: BTreeMap<u8, Sample>,
}

impl Energy {
    /// Take in one poll's own snapshot (never a cache of older values), ended at `now_unix`.
    ///
    /// Each online pack with a usable sample (voltage and current known) integrates the interval since its
    /// previous sample when that is no longer than `max_gap_s` and time went forward; either way the new sample
    /// starts the next interval. An offline pack loses its start: the device said it was not reporting, so
    /// nothing is known about that time. A pack whose values this poll missed (or that it did not list) keeps
    /// its start, like a device whose whole poll failed; only the gap limit decides whether the next sample is
    /// still close enough to integrate.
    pub fn update(&mut self, snapshot: &DeviceSnapshot, now_unix: f64, max_gap_s: f64) {
        let mut seen = BTreeSet::new();
        for pack in &snapshot.packs {
            // A pack listed twice is taken once: a second pass would integrate the same interval again.
            if !seen.insert(pack.pack) {
                continue;
            }
            if !pack.online {
                self.starts.remove(&pack.pack);
                continue;
            }
            let Some(sample) = Sample::of(pack, now_unix) else { continue };
            let totals = totals_of(&mut self.totals, pack.pack);
            if let Some(&start) = self.starts.get(&pack.pack) {
                let seconds = sample.unix - start.unix;
                if seconds > 0.0 && seconds <= max_gap_s {
                    totals.integrate(start, sample);
                }
            }
            self.starts.insert(pack.pack, sample);
        }
    }

    /// The totals of every pack that has given at least one usable sample, by pack number. A pack's totals
    /// exist (at 0) from its first sample, before any interval was integrated, so a counter built on them starts
    /// at 0 and its first increase is seen.
    #[must_use]
    pub fn packs(&self) -> &[PackEnergy] {
        &self.totals
    }

    /// The totals of pack `number`, if it has given a usable sample.
    #[must_use]
    pub fn pack(&self, number: u8) -> Option<&PackEnergy> {
        self.totals.binary_search_by_key(&number, |p| p.pack).ok().and_then(|index| self.totals.get(index))
    }
}

/// The totals of pack `number` in the sorted `totals`, created at 0 if missing.
fn totals_of(totals: &mut Vec<PackEnergy>, number: u8) -> &mut PackEnergy {
    let index = match totals.binary_search_by_key(&number, |p| p.pack) {
        Ok(index) => index,
        Err(index) => {
            totals.insert(index, PackEnergy::new(number));
            index
        }
    };
    // `index` is in bounds: it was just found or inserted.
    &mut totals[index]
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    const T0: f64 = 1_700_000_000.0;
    const GAP: f64 = 60.0;

    fn pack(number: u8, volts: Option<f64>, amperes: Option<f64>) -> PackSnapshot {
        let mut p = PackSnapshot::new(number);
        p.voltage_volts = volts;
        p.current_amperes = amperes;
        p
    }

    fn one(volts: f64, amperes: f64) -> DeviceSnapshot {
        DeviceSnapshot { packs: vec![pack(1, Some(volts), Some(amperes))] }
    }

    fn totals(energy: &Energy) -> (f64, f64, f64, f64) {
        let p = energy.pack(1).expect("pack 1 has totals");
        (p.charged_joules, p.discharged_joules, p.charged_ampere_hours, p.discharged_ampere_hours)
    }

    #[test]
    fn a_steady_charge_counts_power_times_time_and_nothing_discharged() {
        let mut energy = Energy::default();
        energy.update(&one(50.0, 20.0), T0, GAP);
        assert_eq!(totals(&energy), (0.0, 0.0, 0.0, 0.0), "one sample: the totals exist, at 0");
        energy.update(&one(50.0, 20.0), T0 + 36.0, GAP);
        assert_eq!(totals(&energy), (50.0 * 20.0 * 36.0, 0.0, 20.0 * 36.0 / 3600.0, 0.0));
    }

    #[test]
    fn a_sign_change_is_split_at_the_zero_crossing() {
        // +10 A to -30 A over 40 s: the line crosses 0 a quarter in (10 s), where the voltage is 51 V.
        let mut energy = Energy::default();
        energy.update(&one(52.0, 10.0), T0, GAP);
        energy.update(&one(48.0, -30.0), T0 + 40.0, GAP);
        let (charged_j, discharged_j, charged_ah, discharged_ah) = totals(&energy);
        let close = |got: f64, want: f64| assert!((got - want).abs() < 1e-9, "{got} != {want}");
        close(charged_ah, 0.5 * 10.0 * 10.0 / 3600.0);
        close(discharged_ah, 0.5 * 30.0 * 30.0 / 3600.0);
        close(charged_j, 0.5 * (52.0 * 10.0 + 51.0 * 0.0) * 10.0);
        close(discharged_j, 0.5 * (51.0 * 0.0 + 48.0 * 30.0) * 30.0);
        // The plain trapezoid would have netted the two into 400/3600 Ah discharged and nothing charged.
        assert!(charged_ah > 0.0 && discharged_ah > 400.0 / 3600.0);
    }

    #[test]
    fn a_gap_longer_than_the_limit_is_not_integrated_and_restarts_the_interval() {
        let mut energy = Energy::default();
        energy.update(&one(50.0, -10.0), T0, GAP);
        energy.update(&one(50.0, -10.0), T0 + GAP + 0.001, GAP);
        assert_eq!(totals(&energy), (0.0, 0.0, 0.0, 0.0), "across the gap: nothing");
        energy.update(&one(50.0, -10.0), T0 + GAP + 30.001, GAP);
        let (_, discharged_j, _, discharged_ah) = totals(&energy);
        assert!((discharged_ah - 10.0 * 30.0 / 3600.0).abs() < 1e-9, "from the sample after the gap");
        assert!((discharged_j - 500.0 * 30.0).abs() < 1e-6);
        // Exactly the limit is still integrated.
        let mut energy = Energy::default();
        energy.update(&one(50.0, -10.0), T0, GAP);
        energy.update(&one(50.0, -10.0), T0 + GAP, GAP);
        assert_eq!(totals(&energy).3, 10.0 * GAP / 3600.0);
    }

    #[test]
    fn a_clock_stepping_back_integrates_nothing_and_restarts_from_the_new_time() {
        let mut energy = Energy::default();
        energy.update(&one(50.0, 10.0), T0, GAP);
        energy.update(&one(50.0, 10.0), T0 - 5.0, GAP);
        assert_eq!(totals(&energy), (0.0, 0.0, 0.0, 0.0), "back by 5 s: nothing");
        energy.update(&one(50.0, 10.0), T0 - 5.0, GAP);
        assert_eq!(totals(&energy), (0.0, 0.0, 0.0, 0.0), "the same time again: dt = 0");
        // The interval runs from the stepped-back time, not from the first sample.
        energy.update(&one(50.0, 10.0), T0 + 13.0, GAP);
        assert_eq!(totals(&energy).2, 10.0 * 18.0 / 3600.0);
    }

    #[test]
    fn a_poll_without_voltage_or_current_adds_nothing_and_the_next_integrates_from_the_last_good_one() {
        let missing = [
            DeviceSnapshot { packs: vec![pack(1, None, Some(-10.0))] },
            DeviceSnapshot { packs: vec![pack(1, Some(50.0), None)] },
            DeviceSnapshot { packs: vec![pack(1, Some(50.0), Some(f64::NAN))] },
            DeviceSnapshot { packs: vec![pack(1, Some(f64::INFINITY), Some(-10.0))] },
            DeviceSnapshot::default(),
        ];
        for poll in missing {
            let mut energy = Energy::default();
            energy.update(&one(50.0, -10.0), T0, GAP);
            energy.update(&poll, T0 + 10.0, GAP);
            assert_eq!(totals(&energy), (0.0, 0.0, 0.0, 0.0), "{poll:?}");
            // 0 s to 30 s, across the poll that missed the values: within the gap limit, so one interval.
            energy.update(&one(50.0, -10.0), T0 + 30.0, GAP);
            assert_eq!(totals(&energy), (0.0, 500.0 * 30.0, 0.0, 10.0 * 30.0 / 3600.0), "{poll:?}");
            // Missing values do not stretch the gap limit: the last good sample is 61 s back.
            energy.update(&poll, T0 + 60.0, GAP);
            energy.update(&one(50.0, -10.0), T0 + 91.0, GAP);
            assert_eq!(totals(&energy).3, 10.0 * 30.0 / 3600.0, "{poll:?}");
        }
    }

    #[test]
    fn an_offline_pack_ends_the_interval() {
        let mut energy = Energy::default();
        energy.update(&one(50.0, 10.0), T0, GAP);
        let offline = PackSnapshot { online: false, ..pack(1, Some(50.0), Some(10.0)) };
        energy.update(&DeviceSnapshot { packs: vec![offline] }, T0 + 10.0, GAP);
        // Back online: what flowed while it was not reporting is unknown, so its first sample starts anew.
        energy.update(&one(50.0, 10.0), T0 + 20.0, GAP);
        assert_eq!(totals(&energy), (0.0, 0.0, 0.0, 0.0));
        energy.update(&one(50.0, 10.0), T0 + 30.0, GAP);
        assert_eq!(totals(&energy), (5000.0, 0.0, 10.0 * 10.0 / 3600.0, 0.0));
    }

    #[test]
    fn packs_are_kept_apart_and_listed_by_number_from_their_first_sample() {
        let mut energy = Energy::default();
        assert!(energy.packs().is_empty());
        let device = |a: f64, b: f64| DeviceSnapshot {
            packs: vec![
                pack(2, Some(50.0), Some(b)),
                pack(1, Some(50.0), Some(a)),
                pack(3, None, None),
                // Listed twice: counted once.
                pack(1, Some(50.0), Some(a)),
            ],
        };
        energy.update(&device(10.0, -5.0), T0, GAP);
        energy.update(&device(10.0, -5.0), T0 + 36.0, GAP);
        let numbers: Vec<u8> = energy.packs().iter().map(|p| p.pack).collect();
        assert_eq!(numbers, [1, 2], "pack 3 never gave a sample");
        assert_eq!(energy.pack(1).map(|p| p.charged_ampere_hours), Some(0.1));
        assert_eq!(energy.pack(2).map(|p| p.discharged_ampere_hours), Some(0.05));
        assert_eq!(energy.pack(2).map(|p| p.charged_ampere_hours), Some(0.0));
        assert_eq!(energy.pack(3), None);
    }

    #[test]
    fn values_too_large_to_multiply_leave_the_totals_finite() {
        let mut energy = Energy::default();
        for (t, amperes) in [(T0, -f64::MAX), (T0 + 10.0, -f64::MAX), (T0 + 20.0, f64::MAX)] {
            energy.update(&one(f64::MAX, amperes), t, GAP);
        }
        let (a, b, c, d) = totals(&energy);
        assert!([a, b, c, d].iter().all(|v| v.is_finite() && *v >= 0.0), "{:?}", totals(&energy));
    }

    /// One poll: seconds since the previous one, volts, amperes, or `None` for a poll without the values.
    fn polls() -> impl Strategy<Value = Vec<(f64, Option<(f64, f64)>)>> {
        let values = prop::option::weighted(0.9, (-10.0..120.0f64, -500.0..500.0f64));
        prop::collection::vec((-5.0..90.0f64, values), 1..60)
    }

    proptest! {
        #[test]
        fn totals_never_decrease(polls in polls()) {
            let mut energy = Energy::default();
            let mut now = T0;
            let mut before = PackEnergy::new(1);
            for (step, values) in polls {
                now += step;
                let p = pack(1, values.map(|v| v.0), values.map(|v| v.1));
                energy.update(&DeviceSnapshot { packs: vec![p] }, now, GAP);
                if let Some(after) = energy.pack(1) {
                    prop_assert!(after.charged_joules >= before.charged_joules);
                    prop_assert!(after.discharged_joules >= before.discharged_joules);
                    prop_assert!(after.charged_ampere_hours >= before.charged_ampere_hours);
                    prop_assert!(after.discharged_ampere_hours >= before.discharged_ampere_hours);
                    before = after.clone();
                }
            }
        }

        #[test]
        fn a_constant_current_for_one_interval_gives_exactly_current_times_time(
            amperes in -1000.0..1000.0f64,
            volts in 0.0..100.0f64,
            seconds in 0.001..60.0f64,
        ) {
            let mut energy = Energy::default();
            energy.update(&one(volts, amperes), T0, GAP);
            energy.update(&one(volts, amperes), T0 + seconds, GAP);
            let t = (T0 + seconds) - T0;
            let p = energy.pack(1).expect("pack 1 has totals");
            if amperes >= 0.0 {
                prop_assert_eq!(p.charged_ampere_hours, amperes * t / 3600.0);
                prop_assert_eq!(p.discharged_ampere_hours, 0.0);
                prop_assert_eq!(p.discharged_joules, 0.0);
            } else {
                prop_assert_eq!(p.discharged_ampere_hours, -amperes * t / 3600.0);
                prop_assert_eq!(p.charged_ampere_hours, 0.0);
                prop_assert_eq!(p.charged_joules, 0.0);
            }
        }

        #[test]
        fn a_constant_current_over_many_polls_sums_to_current_times_time(
            amperes in -1000.0..1000.0f64,
            volts in 0.0..100.0f64,
            steps in prop::collection::vec(0.5..30.0f64, 1..100),
        ) {
            let mut energy = Energy::default();
            let mut now = T0;
            energy.update(&one(volts, amperes), now, GAP);
            for step in steps {
                now += step;
                energy.update(&one(volts, amperes), now, GAP);
            }
            let t = now - T0;
            let p = energy.pack(1).expect("pack 1 has totals");
            let (ah, joules) = if amperes >= 0.0 {
                (p.charged_ampere_hours, p.charged_joules)
            } else {
                (p.discharged_ampere_hours, p.discharged_joules)
            };
            // Only the rounding of a sum of up to 100 terms separates the two (the steps add up to `t` exactly:
            // each is a whole number of the timestamps' last bit).
            let close = |got: f64, want: f64| (got - want).abs() <= want.abs() * 1e-12 + 1e-12;
            prop_assert!(close(ah, amperes.abs() * t / 3600.0), "{} Ah", ah);
            prop_assert!(close(joules, volts * amperes.abs() * t), "{} J", joules);
        }
    }
}
