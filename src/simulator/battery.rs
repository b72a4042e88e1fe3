//! The simulated battery: LFP-like cells whose values drift slowly and consistently, so every protocol front
//! end reports the same physical truth. Pure: time is an argument (`step(dt)`), randomness comes from a seeded
//! generator, nothing here reads a clock or does I/O.
//!
//! The physics is deliberately simple but self-consistent: current follows a slow charge/discharge cycle and
//! integrates into SOC; each cell's voltage follows an LFP open-circuit curve at its own SOC plus an IR drop;
//! temperatures rise with current and relax towards ambient; the balancer bleeds the highest cells while the
//! spread exceeds a threshold; alarms set when thresholds are crossed.

use serde::Serialize;

use crate::model::{PackSnapshot, PackState, SensorId, Temperature};

use super::rng::Rng;

/// Open-circuit voltage of an LFP cell by state of charge: (SOC 0–1, volts), piecewise linear.
const LFP_OCV: [(f64, f64); 11] = [
    (0.00, 2.80),
    (0.05, 3.05),
    (0.10, 3.18),
    (0.20, 3.24),
    (0.40, 3.27),
    (0.60, 3.29),
    (0.80, 3.31),
    (0.90, 3.33),
    (0.95, 3.36),
    (0.99, 3.42),
    (1.00, 3.50),
];

/// Internal resistance per cell in ohms: the IR term that makes cell voltages follow the current.
const CELL_RESISTANCE_OHMS: f64 = 0.0008;
/// Period of the simulated charge/discharge cycle, seconds.
const CYCLE_PERIOD_S: f64 = 1800.0;
/// Heating per ampere squared and per second, and cooling rate towards ambient (per second).
const HEAT_PER_A2_S: f64 = 0.000_02;
const COOLING_PER_S: f64 = 0.002;
/// Balancing starts above this spread (volts) and bleeds this much SOC per second from the highest cell.
const BALANCE_START_SPREAD_V: f64 = 0.015;
const BALANCE_BLEED_SOC_PER_S: f64 = 0.000_002;

/// Alarm thresholds of the simulated BMS (LFP defaults).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Thresholds {
    /// Cell over-voltage (volts).
    pub cell_high_v: f64,
    /// Cell under-voltage (volts).
    pub cell_low_v: f64,
    /// Temperature high (°C).
    pub temperature_high_c: f64,
    /// Temperature low (°C).
    pub temperature_low_c: f64,
    /// SOC low (0–1).
    pub soc_low: f64,
    /// Cell spread (volts).
    pub spread_v: f64,
}

impl Default for Thresholds {
    fn default() -> Self {
        Self {
            cell_high_v: 3.60,
            cell_low_v: 2.90,
            temperature_high_c: 55.0,
            temperature_low_c: 0.0,
            soc_low: 0.10,
            spread_v: 0.100,
        }
    }
}

/// How a simulated pack is built.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PackConfig {
    /// Series cells (1–48).
    pub cells: u8,
    /// Temperature probes (0–16).
    pub temperatures: u8,
    /// Full-charge capacity (ampere-hours).
    pub full_capacity_ah: f64,
    /// Design capacity (ampere-hours).
    pub design_capacity_ah: f64,
    /// Cycle count at start.
    pub cycles: u32,
    /// State of charge at start (0–1).
    pub initial_soc: f64,
    /// Peak current of the simulated cycle (amperes).
    pub peak_current_a: f64,
    /// Ambient temperature (°C).
    pub ambient_c: f64,
    /// Alarm thresholds.
    pub thresholds: Thresholds,
}

impl Default for PackConfig {
    fn default() -> Self {
        Self {
            cells: 16,
            temperatures: 4,
            full_capacity_ah: 280.0,
            design_capacity_ah: 280.0,
            cycles: 42,
            initial_soc: 0.62,
            peak_current_a: 30.0,
            ambient_c: 21.0,
            thresholds: Thresholds::default(),
        }
    }
}

/// The true state of one simulated pack.
#[derive(Debug, Clone)]
pub struct Pack {
    config: PackConfig,
    rng: Rng,
    elapsed_s: f64,
    /// Per-cell state of charge (0–1); cells differ slightly so spread and balancing are real.
    cell_soc: Vec<f64>,
    /// Per-cell voltage offsets (volts): on the flat LFP plateau SOC differences alone hide in the last digit, so
    /// cells also differ a little in resistance and calibration, as real ones do.
    cell_offset_v: Vec<f64>,
    current_a: f64,
    temperatures_c: Vec<f64>,
    mosfet_temperature_c: f64,
    charge_mosfet: bool,
    discharge_mosfet: bool,
    cycles: u32,
    /// Ampere-hours moved since the last counted cycle (a cycle = one full capacity discharged).
    discharged_since_cycle_ah: f64,
    phase: f64,
}

impl Pack {
    /// A pack built from `config`, with cell imbalance and phase drawn from `seed`.
    #[must_use]
    pub fn new(config: PackConfig, seed: u64) -> Self {
        let mut rng = Rng::new(seed);
        let cells = usize::from(config.cells.clamp(1, 48));
        let cell_soc = (0..cells).map(|_| (config.initial_soc + rng.uniform(-0.004, 0.004)).clamp(0.0, 1.0)).collect();
        let cell_offset_v = (0..cells).map(|_| rng.uniform(-0.004, 0.004)).collect();
        let temperatures_c = (0..config.temperatures).map(|_| config.ambient_c + rng.uniform(0.0, 2.0)).collect();
        let phase = rng.uniform(0.0, 1.0);
        Self {
            mosfet_temperature_c: config.ambient_c + 3.0,
            cycles: config.cycles,
            config,
            rng,
            elapsed_s: 0.0,
            cell_soc,
            cell_offset_v,
            current_a: 0.0,
            temperatures_c,
            charge_mosfet: true,
            discharge_mosfet: true,
            discharged_since_cycle_ah: 0.0,
            phase,
        }
    }

    /// Advance the simulation by `dt_s` seconds.
    pub fn step(&mut self, dt_s: f64) {
        if !(dt_s.is_finite() && dt_s > 0.0) {
            return;
        }
        self.elapsed_s += dt_s;
        self.current_a = self.target_current();
        let delta_soc = self.current_a * dt_s / 3600.0 / self.config.full_capacity_ah;
        for soc in &mut self.cell_soc {
            *soc = (*soc + delta_soc).clamp(0.0, 1.0);
        }
        if self.current_a < 0.0 {
            self.discharged_since_cycle_ah += -self.current_a * dt_s / 3600.0;
            if self.discharged_since_cycle_ah >= self.config.full_capacity_ah {
                self.discharged_since_cycle_ah -= self.config.full_capacity_ah;
                self.cycles = self.cycles.saturating_add(1);
            }
        }
        self.balance(dt_s);
        let heat = HEAT_PER_A2_S * self.current_a * self.current_a * dt_s;
        let relax = (COOLING_PER_S * dt_s).min(1.0);
        let ambient = self.config.ambient_c;
        for t in &mut self.temperatures_c {
            *t += heat + (ambient - *t) * relax;
        }
        self.mosfet_temperature_c += 1.5 * heat + (ambient + 3.0 - self.mosfet_temperature_c) * relax;
    }

    /// The current the cycle asks for now, limited by the MOSFETs and by empty/full cells.
    fn target_current(&mut self) -> f64 {
        let angle = std::f64::consts::TAU * (self.elapsed_s / CYCLE_PERIOD_S + self.phase);
        let noise = self.rng.uniform(-0.2, 0.2);
        let mut current = self.config.peak_current_a * angle.sin() + noise;
        let soc = self.soc();
        if (current > 0.0 && (!self.charge_mosfet || soc >= 0.999))
            || (current < 0.0 && (!self.discharge_mosfet || soc <= 0.001))
        {
            current = 0.0;
        }
        current
    }

    /// Bleed the highest cells while the spread is above the balancing threshold.
    fn balance(&mut self, dt_s: f64) {
        for cell in self.balancing_cells() {
            if let Some(soc) = self.cell_soc.get_mut(cell) {
                *soc = (*soc - BALANCE_BLEED_SOC_PER_S * dt_s).max(0.0);
            }
        }
    }

    /// 0-based indices of cells being balanced: those more than half the start spread above the lowest cell,
    /// while the pack spread exceeds the start spread.
    #[must_use]
    pub fn balancing_cells(&self) -> Vec<usize> {
        let volts = self.cell_voltages_v();
        let (lo, hi) = volts.iter().fold((f64::MAX, f64::MIN), |(lo, hi), &v| (lo.min(v), hi.max(v)));
        if hi - lo <= BALANCE_START_SPREAD_V {
            return Vec::new();
        }
        volts.iter().enumerate().filter(|&(_, &v)| v - lo > BALANCE_START_SPREAD_V / 2.0).map(|(i, _)| i).collect()
    }

    /// The configuration the pack was built with.
    #[must_use]
    pub fn config(&self) -> &PackConfig {
        &self.config
    }

    /// Pack state of charge (0–1): the mean of the cells.
    #[must_use]
    pub fn soc(&self) -> f64 {
        self.cell_soc.iter().sum::<f64>() / self.cell_soc.len().max(1) as f64
    }

    /// Set the state of charge of every cell (the BMS "set SOC" command), keeping their differences.
    pub fn set_soc(&mut self, soc: f64) {
        let shift = soc.clamp(0.0, 1.0) - self.soc();
        for cell in &mut self.cell_soc {
            *cell = (*cell + shift).clamp(0.0, 1.0);
        }
    }

    /// Pack current (amperes, positive while charging).
    #[must_use]
    pub fn current_a(&self) -> f64 {
        self.current_a
    }

    /// Cell voltages (volts), index 0 = cell 1.
    #[must_use]
    pub fn cell_voltages_v(&self) -> Vec<f64> {
        self.cell_soc
            .iter()
            .zip(&self.cell_offset_v)
            .map(|(&soc, &offset)| ocv(soc) + offset + self.current_a * CELL_RESISTANCE_OHMS)
            .collect()
    }

    /// Pack voltage: the sum of the cells.
    #[must_use]
    pub fn voltage_v(&self) -> f64 {
        self.cell_voltages_v().iter().sum()
    }

    /// Probe temperatures (°C), index 0 = probe 1.
    #[must_use]
    pub fn temperatures_c(&self) -> &[f64] {
        &self.temperatures_c
    }

    /// MOSFET temperature (°C).
    #[must_use]
    pub fn mosfet_temperature_c(&self) -> f64 {
        self.mosfet_temperature_c
    }

    /// Remaining capacity (ampere-hours).
    #[must_use]
    pub fn remaining_capacity_ah(&self) -> f64 {
        self.soc() * self.config.full_capacity_ah
    }

    /// Cycle count.
    #[must_use]
    pub fn cycles(&self) -> u32 {
        self.cycles
    }

    /// Operating state from the current (±0.5 A dead band, as a BMS reports idle for small currents).
    #[must_use]
    pub fn state(&self) -> PackState {
        match self.current_a {
            c if c > 0.5 => PackState::Charging,
            c if c < -0.5 => PackState::Discharging,
            _ => PackState::Idle,
        }
    }

    /// Whether the charge and discharge MOSFETs are on.
    #[must_use]
    pub fn mosfets(&self) -> (bool, bool) {
        (self.charge_mosfet, self.discharge_mosfet)
    }

    /// Switch the charge MOSFET (a write command from the host).
    pub fn set_charge_mosfet(&mut self, on: bool) {
        self.charge_mosfet = on;
    }

    /// Switch the discharge MOSFET (a write command from the host).
    pub fn set_discharge_mosfet(&mut self, on: bool) {
        self.discharge_mosfet = on;
    }

    /// Conditions that are true now, by threshold; each protocol maps them onto its own alarm bits.
    #[must_use]
    pub fn conditions(&self) -> Conditions {
        let th = &self.config.thresholds;
        let volts = self.cell_voltages_v();
        let (lo, hi) = volts.iter().fold((f64::MAX, f64::MIN), |(lo, hi), &v| (lo.min(v), hi.max(v)));
        let temps = self.temperatures_c.iter().copied();
        let (tlo, thi) = temps.fold((f64::MAX, f64::MIN), |(lo, hi), t| (lo.min(t), hi.max(t)));
        Conditions {
            cell_voltage_high: hi > th.cell_high_v,
            cell_voltage_low: lo < th.cell_low_v,
            temperature_high: thi > th.temperature_high_c,
            temperature_low: tlo < th.temperature_low_c,
            soc_low: self.soc() < th.soc_low,
            cell_spread_high: hi - lo > th.spread_v,
        }
    }
}

impl Pack {
    /// The true state as the model holds it, for pack `number`; protocols fill in their own alarms.
    #[must_use]
    pub fn to_snapshot(&self, number: u8) -> PackSnapshot {
        let mut pack = PackSnapshot::new(number);
        let (charge, discharge) = self.mosfets();
        let balancing = self.balancing_cells();
        pack.voltage_volts = Some(self.voltage_v());
        pack.current_amperes = Some(self.current_a);
        pack.state_of_charge_ratio = Some(self.soc());
        pack.state_of_health_ratio = Some(self.config.full_capacity_ah / self.config.design_capacity_ah);
        pack.remaining_capacity_ampere_hours = Some(self.remaining_capacity_ah());
        pack.full_capacity_ampere_hours = Some(self.config.full_capacity_ah);
        pack.design_capacity_ampere_hours = Some(self.config.design_capacity_ah);
        pack.cycle_count = Some(self.cycles);
        pack.state = Some(self.state());
        pack.charge_mosfet_enabled = Some(charge);
        pack.discharge_mosfet_enabled = Some(discharge);
        pack.cell_count = Some(u16::from(self.config.cells));
        pack.temperature_sensor_count = Some(u16::from(self.config.temperatures));
        pack.cell_volts = self.cell_voltages_v().into_iter().map(Some).collect();
        pack.cell_balancing = (0..self.cell_soc.len()).map(|i| balancing.contains(&i)).collect();
        pack.balancing_active = Some(!balancing.is_empty());
        pack.temperatures = (1..=self.config.temperatures)
            .zip(&self.temperatures_c)
            .map(|(n, &celsius)| Temperature { sensor: SensorId::Probe(n), celsius })
            .chain(std::iter::once(Temperature { sensor: SensorId::Mosfet, celsius: self.mosfet_temperature_c }))
            .collect();
        pack
    }
}

/// Threshold conditions of a simulated pack.
// Independent flags, one per alarm family; an enum set would only hide that.
#[allow(clippy::struct_excessive_bools)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Conditions {
    /// Some cell is above the over-voltage threshold.
    pub cell_voltage_high: bool,
    /// Some cell is below the under-voltage threshold.
    pub cell_voltage_low: bool,
    /// Some probe is above the high-temperature threshold.
    pub temperature_high: bool,
    /// Some probe is below the low-temperature threshold.
    pub temperature_low: bool,
    /// SOC is below the low threshold.
    pub soc_low: bool,
    /// The cell spread is above the threshold.
    pub cell_spread_high: bool,
}

/// LFP open-circuit voltage at `soc`, interpolated from [`LFP_OCV`].
fn ocv(soc: f64) -> f64 {
    let soc = soc.clamp(0.0, 1.0);
    LFP_OCV
        .windows(2)
        .find_map(|w| match w {
            [(s0, v0), (s1, v1)] if soc <= *s1 => Some(v0 + (v1 - v0) * (soc - s0) / (s1 - s0)),
            _ => None,
        })
        .unwrap_or(3.50)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pack() -> Pack {
        Pack::new(PackConfig::default(), 7)
    }

    #[test]
    fn current_integrates_into_soc_and_cells_follow_the_pack() {
        let mut p = pack();
        let soc0 = p.soc();
        let mut charge_ah = 0.0;
        for _ in 0..600 {
            p.step(1.0);
            charge_ah += p.current_a() / 3600.0;
        }
        let expected = soc0 + charge_ah / p.config().full_capacity_ah;
        assert!((p.soc() - expected).abs() < 1e-3, "soc {} expected {expected}", p.soc());
        let sum: f64 = p.cell_voltages_v().iter().sum();
        assert!((p.voltage_v() - sum).abs() < 1e-9);
        assert!(p.cell_voltages_v().iter().all(|v| (2.8..3.7).contains(v)));
    }

    #[test]
    fn the_same_seed_gives_the_same_run_and_another_seed_differs() {
        let (mut a, mut b, mut c) = (pack(), pack(), Pack::new(PackConfig::default(), 8));
        for _ in 0..100 {
            a.step(2.0);
            b.step(2.0);
            c.step(2.0);
        }
        assert_eq!(a.cell_voltages_v(), b.cell_voltages_v());
        assert_ne!(a.cell_voltages_v(), c.cell_voltages_v());
    }

    #[test]
    fn temperatures_rise_under_load_and_relax_towards_ambient() {
        let mut p = Pack::new(PackConfig { peak_current_a: 150.0, initial_soc: 0.5, ..PackConfig::default() }, 1);
        let start: f64 = p.temperatures_c().iter().sum();
        for _ in 0..900 {
            p.step(1.0);
        }
        let loaded: f64 = p.temperatures_c().iter().sum();
        assert!(loaded > start, "{loaded} > {start}");
        p.set_charge_mosfet(false);
        p.set_discharge_mosfet(false);
        for _ in 0..5000 {
            p.step(1.0);
        }
        let ambient = p.config().ambient_c * p.temperatures_c().len() as f64;
        assert!((p.temperatures_c().iter().sum::<f64>() - ambient).abs() < 1.0);
    }

    #[test]
    fn open_mosfets_stop_the_current_in_their_direction() {
        let mut p = pack();
        p.set_charge_mosfet(false);
        p.set_discharge_mosfet(false);
        for _ in 0..50 {
            p.step(10.0);
            assert_eq!(p.current_a(), 0.0);
            assert_eq!(p.state(), PackState::Idle);
        }
    }

    #[test]
    fn set_soc_moves_every_cell_and_low_soc_raises_the_condition() {
        let mut p = pack();
        p.set_soc(0.05);
        assert!((p.soc() - 0.05).abs() < 1e-9);
        assert!(p.conditions().soc_low);
        p.set_soc(0.5);
        assert!(!p.conditions().soc_low);
    }

    #[test]
    fn a_wide_spread_is_balanced_down_over_time() {
        let mut p = Pack::new(PackConfig { peak_current_a: 0.0, initial_soc: 0.97, ..PackConfig::default() }, 3);
        if let Some(first) = p.cell_soc.first_mut() {
            *first = 1.0;
        }
        assert!(p.balancing_cells().contains(&0));
        for _ in 0..20_000 {
            p.step(1.0);
        }
        assert!(!p.balancing_cells().contains(&0), "cell 1 was bled back into line");
    }

    #[test]
    fn ocv_is_monotonic_over_the_whole_range() {
        let points: Vec<f64> = (0..=100).map(|i| ocv(f64::from(i) / 100.0)).collect();
        assert!(points.windows(2).all(|w| w[0] <= w[1]));
        assert_eq!(ocv(-1.0), 2.80);
        assert_eq!(ocv(2.0), 3.50);
    }
}
