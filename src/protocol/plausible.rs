//! Plausibility: the physical limits every decoded value must respect, in one place, so that a reply whose
//! checksum passes but whose values cannot be real (a 17 V cell, 1,400 °C, SOC above 100 %) is rejected as
//! [`DecodeError::Implausible`], asked again and never exported (a checksum alone is too weak on
//! noisy lines — an 8-bit sum or check byte passes one noise pattern in 256).
//!
//! The limits judge the model's values, after each protocol's own scaling, so one table serves every protocol.
//! An exchange judges a reply twice: alone ([`check_pack`] on a pack holding only that reply's values: ranges and
//! the reply's own consistency, e.g. a Pace 0x42 block's pack voltage against its cells), and together with
//! what the same poll already accepted (the same check on the merged pack: a Daly 0x95 reply against the 0x90
//! voltage). [`conflict`] names which values a contradiction involves, so an exchange can drop both sides
//! when a contradiction is never resolved. The limits are deliberately wide: a limit a healthy pack can reach
//! would fail every poll of that pack, while the corruptions they catch (a raised high byte, noise taken for a
//! reply) land far outside them.

use super::DecodeError;
use crate::model::{DeviceSnapshot, PackSnapshot};

/// Highest cell voltage, 5.0 V: above the charge limit of every lithium chemistry a BMS of these families
/// manages (LFP 3.65 V, NMC/NCA 4.2 V, high-voltage LCO 4.45 V, LTO 2.8 V) with room for a cell that a failed
/// balancer overcharged; 17 V (the issue 12 noise) is not a cell. The lower limit is 0 V: decoders already
/// report an unread or unfitted cell (0 mV) as unknown, and a negative voltage is a misread.
pub const CELL_VOLTS_MAX: f64 = 5.0;

/// Lowest temperature, −50 °C: below the range NTC probes on BMS boards are specified for (typically −40 °C,
/// which Daly also sends for an absent probe) and below any place a lithium pack is used.
pub const TEMPERATURE_MIN_CELSIUS: f64 = -50.0;

/// Highest temperature, 150 °C: the junction limit of the MOSFETs on these boards (175 °C absolute maximum)
/// and far above the 60–80 °C at which every BMS cuts off; a pack hotter than this is already on fire, while
/// a noise value (1,423 °C in issue 12) is far above it.
pub const TEMPERATURE_MAX_CELSIUS: f64 = 150.0;

/// Highest state of charge as a ratio, 1.0 (100 %): every protocol scales its SOC to 0–100 % (Daly and D2/p81
/// 0.1 %, Sinowealth and Pace whole percent or remaining/full), so more is a misread.
pub const STATE_OF_CHARGE_MAX_RATIO: f64 = 1.0;

/// Highest state of health as a ratio, 1.5 (150 %). Pace derives SOH as full / design capacity and real packs
/// exceed their nameplate (a real capture in `tests/fixtures/vectors/pace.json` reads 103.46 %; the model exports it unclamped), so 100 % would
/// reject healthy packs; 150 % still leaves room for a design capacity set a little low in the BMS, while a
/// corrupted capacity word lands far above.
pub const STATE_OF_HEALTH_MAX_RATIO: f64 = 1.5;

/// Largest current magnitude, 2,000 A: four times the largest Daly board (500 A) and ten times a Pace pack
/// (200 A); the Daly wire range reaches −3,000…+3,553.5 A (offset 30,000 in 0.1 A), so a corrupted current
/// word usually lands outside. (dbus-serialbattery retries Daly frames above 1,000 A.)
pub const CURRENT_MAX_AMPERES: f64 = 2000.0;

/// Most series cells any supported protocol reports: 48 (Daly 0x95 carries 16 frames × 3 cells, p81 registers
/// 0x00–0x2F); D2 holds 32, Pace 16 and Sinowealth 10.
pub const MAX_SERIES_CELLS: u16 = 48;

/// Most temperature sensors any supported protocol reports: 21 (Daly 0x96 carries 3 frames × 7 slots); Daly's
/// sheet names 16, D2 and p81 hold 8.
pub const MAX_TEMPERATURE_SENSORS: u16 = 21;

/// Highest pack voltage, 240 V: [`MAX_SERIES_CELLS`] cells at [`CELL_VOLTS_MAX`] each, i.e. no pack of any
/// supported protocol can reach it. (dbus-serialbattery's Daly filter stops at 70 V, which would reject 24S
/// packs.) A raised high byte of a Daly or D2 voltage word adds at least 25.6 V per bit and usually exceeds it.
pub const PACK_VOLTS_MAX: f64 = MAX_SERIES_CELLS as f64 * CELL_VOLTS_MAX;

/// How far the pack voltage may be from the sum of its cells, as a share of that sum: 20 %. The two are measured
/// by different converters (Pace, Sinowealth) or at different moments (Daly 0x90 and 0x95 are separate requests,
/// and under a load step of 100 A a 16S pack's internal resistance alone moves it by ~2 V, 4 %), and the pack
/// voltage is measured behind the MOSFETs and shunt. 10 % would cover that, but the D2 reply of aiobmsble's
/// tests (`tests/fixtures/vectors/daly.json` `modbus_d2_status_62_registers_4s`, also in batmon-ha's fixtures)
/// has 14.0 V for cells summing 16.568 V (15.5 %), so the limit leaves room for it; a pack voltage that is one
/// cell's (a Sinowealth board of another map) or a raised voltage byte (25.6 V per bit of a Daly or D2 high
/// byte) is still far outside.
pub const PACK_TO_CELL_SUM_TOLERANCE_RATIO: f64 = 0.20;

/// The smallest allowed difference between pack voltage and cell sum, 1 V, so that small packs keep a margin
/// for resolution: Daly sends the pack voltage in 0.1 V, and a 3S pack's 20 % is only ~2 V.
pub const PACK_TO_CELL_SUM_TOLERANCE_VOLTS: f64 = 1.0;

/// Largest capacity, 5,000 Ah: five times the largest single cells sold (560–1,000 Ah), and ten hours at the
/// 500 A of the largest boards of these families, for the biggest parallel bank one BMS manages (D2's 0.1 Ah
/// register cannot say more than 6,553.5 Ah). A corrupted capacity word lands above it: the D2 reply carries
/// the remaining capacity with no full capacity to judge it against, so this bound is all that stands between
/// a raised high byte (≥ 5,734.4 Ah once its top bits are set) and the export; a corrupted 32-bit word (Daly
/// 0x93, 0x50) lands far above.
pub const CAPACITY_MAX_AMPERE_HOURS: f64 = 5_000.0;

/// How far remaining capacity may exceed full capacity, as a share of full: 5 %. Coulomb counters drift between
/// full-charge recalibrations and some boards count past full before they correct, but a remaining capacity
/// well above what the pack holds is a misread. (Where the SOC is derived as remaining/full, as on Pace, the
/// SOC limit is the tighter rule.)
pub const REMAINING_OVER_FULL_TOLERANCE_RATIO: f64 = 0.05;

/// Highest cycle count, 20,000: LFP cells are rated for 6,000–8,000 full cycles (e.g. the EVE LF280K datasheet)
/// and boards count equivalent full cycles, so 20,000 is decades of daily use; a raised high byte of a 16-bit
/// count adds 32,768 or more.
pub const CYCLE_COUNT_MAX: u32 = 20_000;

/// Slack for values that went through a division (0.1 % steps, 10 mAh units): a limit is not missed by a
/// floating-point rounding error.
const ROUNDING: f64 = 1e-9;

/// Which values of a pack a failed consistency rule involves; see [`conflict`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Conflict {
    /// The pack voltage and the cell voltages disagree.
    PackVoltageAndCells,
    /// The remaining and the full capacity disagree.
    RemainingAndFull,
}

/// Check every value of `pack` against the limits of this module, and its values against each other.
pub fn check_pack(pack: &PackSnapshot) -> Result<(), DecodeError> {
    check_ranges(pack)?;
    match conflict(pack) {
        Some(Conflict::PackVoltageAndCells) => Err(DecodeError::Implausible {
            why: "pack voltage differs from the sum of its cells by more than 20 % (and 1 V)",
        }),
        Some(Conflict::RemainingAndFull) => {
            Err(DecodeError::Implausible { why: "remaining capacity exceeds full capacity by more than 5 %" })
        }
        None => Ok(()),
    }
}

/// [`check_pack`] for every pack of `device`: one implausible pack rejects the whole reply.
pub fn check_device(device: &DeviceSnapshot) -> Result<(), DecodeError> {
    device.packs.iter().try_for_each(check_pack)
}

/// Whether every one of `values` (after scaling) is within `low..=high`, allowing for rounding.
fn all(values: impl IntoIterator<Item = f64>, low: f64, high: f64) -> bool {
    values.into_iter().all(|v| v >= low - ROUNDING && v <= high + ROUNDING)
}

fn implausible(ok: bool, why: &'static str) -> Result<(), DecodeError> {
    if ok { Ok(()) } else { Err(DecodeError::Implausible { why }) }
}

/// The range of every known value; `None` values were not reported and are not judged.
fn check_ranges(pack: &PackSnapshot) -> Result<(), DecodeError> {
    implausible(all(pack.cell_volts.iter().flatten().copied(), 0.0, CELL_VOLTS_MAX), "cell voltage outside 0–5 V")?;
    implausible(
        all(pack.temperatures.iter().map(|t| t.celsius), TEMPERATURE_MIN_CELSIUS, TEMPERATURE_MAX_CELSIUS),
        "temperature outside −50…150 °C",
    )?;
    implausible(all(pack.state_of_charge_ratio, 0.0, STATE_OF_CHARGE_MAX_RATIO), "state of charge outside 0–100 %")?;
    implausible(all(pack.state_of_health_ratio, 0.0, STATE_OF_HEALTH_MAX_RATIO), "state of health outside 0–150 %")?;
    implausible(all(pack.current_amperes, -CURRENT_MAX_AMPERES, CURRENT_MAX_AMPERES), "current beyond ±2000 A")?;
    implausible(all(pack.voltage_volts, 0.0, PACK_VOLTS_MAX), "pack voltage outside 0–240 V")?;
    let capacities =
        [pack.remaining_capacity_ampere_hours, pack.full_capacity_ampere_hours, pack.design_capacity_ampere_hours];
    implausible(all(capacities.into_iter().flatten(), 0.0, CAPACITY_MAX_AMPERE_HOURS), "capacity outside 0–5,000 Ah")?;
    implausible(pack.cycle_count.is_none_or(|c| c <= CYCLE_COUNT_MAX), "cycle count above 20,000")?;
    implausible(pack.cell_count.is_none_or(|n| n <= MAX_SERIES_CELLS), "more than 48 series cells")?;
    implausible(
        pack.temperature_sensor_count.is_none_or(|n| n <= MAX_TEMPERATURE_SENSORS),
        "more than 21 temperature sensors",
    )
}

/// The sum of the cell voltages when every cell of the pack is known: the cell count is reported and above 0,
/// and each of those cells has a reading (a 0 mV cell is unknown, so its pack's sum is too).
#[must_use]
pub fn cell_sum(pack: &PackSnapshot) -> Option<f64> {
    let count = usize::from(pack.cell_count.filter(|&n| n > 0)?);
    let cells = pack.cell_volts.get(..count)?;
    cells.iter().copied().sum::<Option<f64>>()
}

/// The first consistency rule `pack` breaks, if any: pack voltage against the sum of its cells (when both are
/// known and the pack voltage is not 0, which some boards send for a value they do not measure), remaining
/// capacity against full capacity (when full is above 0, for the same reason).
#[must_use]
pub fn conflict(pack: &PackSnapshot) -> Option<Conflict> {
    if let (Some(voltage), Some(sum)) = (pack.voltage_volts.filter(|&v| v > 0.0), cell_sum(pack)) {
        let tolerance = (sum * PACK_TO_CELL_SUM_TOLERANCE_RATIO).max(PACK_TO_CELL_SUM_TOLERANCE_VOLTS);
        if (voltage - sum).abs() > tolerance + ROUNDING {
            return Some(Conflict::PackVoltageAndCells);
        }
    }
    if let (Some(remaining), Some(full)) =
        (pack.remaining_capacity_ampere_hours, pack.full_capacity_ampere_hours.filter(|&f| f > 0.0))
        && remaining > full * (1.0 + REMAINING_OVER_FULL_TOLERANCE_RATIO) + ROUNDING
    {
        return Some(Conflict::RemainingAndFull);
    }
    None
}

/// Forget the values of `pack` that `conflict` involves (both sides: which one is wrong cannot be known).
pub fn forget(pack: &mut PackSnapshot, conflict: Conflict) {
    match conflict {
        Conflict::PackVoltageAndCells => {
            pack.voltage_volts = None;
            pack.cell_volts.clear();
        }
        Conflict::RemainingAndFull => {
            pack.remaining_capacity_ampere_hours = None;
            pack.full_capacity_ampere_hours = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{SensorId, Temperature};

    /// A healthy 4S LFP pack with every value the limits judge.
    fn pack() -> PackSnapshot {
        let mut p = PackSnapshot::new(1);
        p.voltage_volts = Some(13.2);
        p.current_amperes = Some(-12.5);
        p.state_of_charge_ratio = Some(0.631);
        p.state_of_health_ratio = Some(1.0346);
        p.remaining_capacity_ampere_hours = Some(176.7);
        p.full_capacity_ampere_hours = Some(280.0);
        p.design_capacity_ampere_hours = Some(280.0);
        p.cycle_count = Some(12);
        p.cell_count = Some(4);
        p.temperature_sensor_count = Some(2);
        p.cell_volts = vec![Some(3.313), Some(3.301), Some(3.298), Some(3.307)];
        p.temperatures = vec![
            Temperature { sensor: SensorId::Probe(1), celsius: 26.8 },
            Temperature { sensor: SensorId::Board, celsius: 32.53 },
        ];
        p
    }

    /// A change to a pack, and a change that sets one value.
    type Corrupt = fn(&mut PackSnapshot);
    type Set = fn(&mut PackSnapshot, f64);

    fn why(pack: &PackSnapshot) -> Option<&'static str> {
        match check_pack(pack) {
            Ok(()) => None,
            Err(DecodeError::Implausible { why }) => Some(why),
            Err(other) => panic!("not an implausible error: {other:?}"),
        }
    }

    #[test]
    fn a_healthy_pack_and_an_empty_one_pass() {
        assert_eq!(check_pack(&pack()), Ok(()));
        assert_eq!(check_pack(&PackSnapshot::new(1)), Ok(()));
    }

    #[test]
    fn the_values_of_issue_12_are_each_rejected() {
        let cases: [(&str, Corrupt); 4] = [
            ("board 1423.55 °C", |p| p.temperatures[1].celsius = 1423.55),
            ("cell 07 17.009 V", |p| p.cell_volts[2] = Some(17.009)),
            ("sensor 1582.65 °C", |p| p.temperatures[0].celsius = 1582.65),
            ("SOC ratio 216.21", |p| p.state_of_charge_ratio = Some(216.21)),
        ];
        for (name, corrupt) in cases {
            let mut p = pack();
            corrupt(&mut p);
            assert!(why(&p).is_some(), "{name} passed");
        }
    }

    #[test]
    fn every_limit_is_inclusive_and_one_step_beyond_is_rejected() {
        let cases: [(Set, f64, f64); 7] = [
            (|p, v| p.cell_volts = vec![Some(v)], 0.0, CELL_VOLTS_MAX),
            (|p, v| p.temperatures[0].celsius = v, TEMPERATURE_MIN_CELSIUS, TEMPERATURE_MAX_CELSIUS),
            (|p, v| p.state_of_charge_ratio = Some(v), 0.0, STATE_OF_CHARGE_MAX_RATIO),
            (|p, v| p.state_of_health_ratio = Some(v), 0.0, STATE_OF_HEALTH_MAX_RATIO),
            (|p, v| p.current_amperes = Some(v), -CURRENT_MAX_AMPERES, CURRENT_MAX_AMPERES),
            (|p, v| p.voltage_volts = Some(v), 0.0, PACK_VOLTS_MAX),
            (|p, v| p.design_capacity_ampere_hours = Some(v), 0.0, CAPACITY_MAX_AMPERE_HOURS),
        ];
        for (i, (set, low, high)) in cases.into_iter().enumerate() {
            let fresh = || {
                // Without cells or full capacity, so that only the range is judged.
                let mut p = pack();
                p.cell_count = None;
                p.full_capacity_ampere_hours = None;
                p
            };
            for ok in [low, high] {
                let mut p = fresh();
                set(&mut p, ok);
                assert_eq!(why(&p), None, "case {i}: {ok}");
            }
            for bad in [low - 0.01, high + 0.01] {
                let mut p = fresh();
                set(&mut p, bad);
                assert!(why(&p).is_some(), "case {i}: {bad} passed");
            }
        }
        let mut p = pack();
        p.remaining_capacity_ampere_hours = Some(-0.01);
        assert_eq!(why(&p), Some("capacity outside 0–5,000 Ah"));
        let mut p = pack();
        p.cycle_count = Some(CYCLE_COUNT_MAX + 1);
        assert_eq!(why(&p), Some("cycle count above 20,000"));
        let mut p = pack();
        p.cell_count = Some(MAX_SERIES_CELLS + 1);
        assert_eq!(why(&p), Some("more than 48 series cells"));
        let mut p = pack();
        p.temperature_sensor_count = Some(MAX_TEMPERATURE_SENSORS + 1);
        assert_eq!(why(&p), Some("more than 21 temperature sensors"));
    }

    #[test]
    fn pack_voltage_is_judged_against_the_cells_only_when_every_cell_is_known() {
        let mut p = pack();
        p.voltage_volts = Some(15.8); // cells sum to 13.219: within 2.6438 V
        assert_eq!(conflict(&p), None);
        p.voltage_volts = Some(15.9);
        assert_eq!(conflict(&p), Some(Conflict::PackVoltageAndCells));
        assert!(why(&p).is_some());
        // A board that does not measure the pack voltage sends 0.
        p.voltage_volts = Some(0.0);
        assert_eq!(conflict(&p), None);
        // One cell unknown, no count, or a count of 0: the sum is unknown.
        for unknown in [
            |p: &mut PackSnapshot| p.cell_volts[1] = None,
            |p: &mut PackSnapshot| p.cell_count = None,
            |p: &mut PackSnapshot| p.cell_count = Some(0),
            |p: &mut PackSnapshot| p.cell_volts.truncate(3),
        ] {
            let mut p = pack();
            p.voltage_volts = Some(3.3);
            unknown(&mut p);
            assert_eq!(conflict(&p), None);
        }
        // A large pack has 20 %, a small one at least 1 V.
        let mut big = pack();
        big.cell_count = Some(16);
        big.cell_volts = vec![Some(3.3); 16];
        big.voltage_volts = Some(52.8 * 1.199);
        assert_eq!(conflict(&big), None);
        big.voltage_volts = Some(52.8 * 0.79);
        assert_eq!(conflict(&big), Some(Conflict::PackVoltageAndCells));
        let mut small = pack();
        small.cell_count = Some(1);
        small.voltage_volts = Some(3.313 - 0.99);
        assert_eq!(conflict(&small), None, "a 1 V margin where 20 % is less");
        small.voltage_volts = Some(3.313 - 1.01);
        assert_eq!(conflict(&small), Some(Conflict::PackVoltageAndCells));
    }

    #[test]
    fn remaining_may_exceed_full_by_the_tolerance_only() {
        let mut p = pack();
        p.remaining_capacity_ampere_hours = Some(280.0 * 1.05);
        assert_eq!(conflict(&p), None);
        p.remaining_capacity_ampere_hours = Some(280.0 * 1.06);
        assert_eq!(conflict(&p), Some(Conflict::RemainingAndFull));
        assert_eq!(why(&p), Some("remaining capacity exceeds full capacity by more than 5 %"));
        p.full_capacity_ampere_hours = Some(0.0);
        assert_eq!(conflict(&p), None, "a full capacity of 0 is not reported");
        let mut p = pack();
        p.remaining_capacity_ampere_hours = Some(400.0);
        forget(&mut p, Conflict::RemainingAndFull);
        assert_eq!((p.remaining_capacity_ampere_hours, p.full_capacity_ampere_hours), (None, None));
        forget(&mut p, Conflict::PackVoltageAndCells);
        assert_eq!((p.voltage_volts, p.cell_volts.len()), (None, 0));
    }

    #[test]
    fn one_implausible_pack_rejects_the_device() {
        let mut device = DeviceSnapshot::default();
        *device.pack_mut(1) = pack();
        *device.pack_mut(2) = PackSnapshot { pack: 2, ..pack() };
        assert_eq!(check_device(&device), Ok(()));
        device.pack_mut(2).current_amperes = Some(-3000.0);
        assert_eq!(check_device(&device), Err(DecodeError::Implausible { why: "current beyond ±2000 A" }));
    }
}
