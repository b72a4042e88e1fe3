//! Printing a snapshot for people and scripts: `read` JSON, the daly-bms-cli layout, the Nagios check.
//!
//! Every renderer here is pure (snapshot in, value or text out); the CLI does the printing.

pub mod daly_cli;
pub mod json;
pub mod nagios;

use crate::model::PackSnapshot;

/// `value` rounded to `decimals` places, so derived values (spreads, products, percentages) print without
/// binary floating-point noise: dividing by a power of ten yields the shortest decimal spelling.
pub(crate) fn round_to(value: f64, decimals: i32) -> f64 {
    let scale = 10f64.powi(decimals);
    (value * scale).round() / scale
}

/// Lowest and highest read cell as `(volts, 1-based cell number)`; on a tie the lower-numbered cell wins.
pub(crate) fn cell_extremes(pack: &PackSnapshot) -> Option<((f64, usize), (f64, usize))> {
    let read = pack.cell_volts.iter().enumerate().filter_map(|(i, v)| v.map(|v| (v, i + 1)));
    read.fold(None, |acc, (v, cell)| match acc {
        None => Some(((v, cell), (v, cell))),
        Some((lo, hi)) => Some((if v < lo.0 { (v, cell) } else { lo }, if v > hi.0 { (v, cell) } else { hi })),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rounding_removes_float_noise_and_extremes_prefer_the_first_cell() {
        assert_eq!(round_to(3.401 - 3.3, 4), 0.101);
        assert_eq!(round_to(0.619 * 100.0, 2), 61.9);
        let mut pack = PackSnapshot::new(1);
        assert_eq!(cell_extremes(&pack), None);
        pack.cell_volts = vec![None, Some(3.2), Some(3.4), Some(3.2), Some(3.4)];
        assert_eq!(cell_extremes(&pack), Some(((3.2, 2), (3.4, 3))));
    }
}
