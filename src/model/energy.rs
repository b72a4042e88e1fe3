//! Charged and discharged energy and charge per pack, integrated from pack power between consecutive good polls.

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
