//! The Nagios/Icinga check: thresholds and a snapshot in, one status line with perfdata and an exit code out.
//!
//! PURE (`ARCHITECTURE.md#layers`, checked by `scripts/check-layers.sh`): no I/O, no clock, no printing; the CLI prints
//! [`CheckOutcome::line`] and exits with [`Status::exit_code`].
//!
//! The line follows the Monitoring Plugins guidelines: `BMS <STATUS> - <text> | <perfdata>`. The text names
//! every problem, worst first ("pack 1 cell 7 3.71 V > 3.65 V", "pack 2 alarm cell_voltage_high_l2"), then a
//! summary per pack. Perfdata items are `label=value[UOM];warn;crit;min;max` with Nagios ranges ("3:" alerts
//! below 3, "~:45" above 45, "0:45" outside 0–45), one set per pack labelled `packN_…`: voltage, current,
//! soc (in percent), cell_min, cell_max, cell_spread and `temp_<sensor>` for every temperature sensor.
//!
//! Rules:
//! - Worst status wins. A threshold beyond its critical limit is CRITICAL, beyond its warning limit WARNING.
//! - Active alarms (when [`Thresholds::alarms`] is on): severity Info or Warning → WARNING, Protection or Fault →
//!   CRITICAL. Pace per-cell and per-sensor levels → WARNING.
//! - Temperature limits apply to the numbered (cell) probes; MOSFET, ambient and board sensors run at other
//!   temperatures, so they are graphed but left to the BMS's own alarms.
//! - No pack with a voltage or a cell voltage → UNKNOWN, naming the failures. Failures next to data (a section
//!   that did not answer), an offline pack or a pack without data → WARNING: the check could not see everything.

use std::fmt::Write as _;

use super::{cell_extremes, round_to};
use crate::model::{AlarmSeverity, DeviceSnapshot, LevelAlarm, PackSnapshot, SensorId};

/// A warning and a critical limit for one quantity; which side is bad depends on the [`Thresholds`] field.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Limit {
    /// Crossing this gives WARNING.
    pub warning: f64,
    /// Crossing this gives CRITICAL.
    pub critical: f64,
}

impl Limit {
    /// A limit pair.
    #[must_use]
    pub const fn new(warning: f64, critical: f64) -> Self {
        Self { warning, critical }
    }
}

/// What the check compares the snapshot with; `None` switches a comparison off.
///
/// [`Thresholds::default`] suits LiFePO4 (LFP) cells: cell voltage warning below 3.00 V / above 3.55 V,
/// critical below 2.80 V / above 3.65 V; cell spread warning 0.05 V, critical 0.10 V; cell temperature
/// warning above 45 °C / below 0 °C, critical above 55 °C / below −10 °C; SOC warning below 0.20, critical
/// below 0.10; alarms on.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Thresholds {
    /// Any cell below these voltages.
    pub cell_low_volts: Option<Limit>,
    /// Any cell above these voltages.
    pub cell_high_volts: Option<Limit>,
    /// Highest minus lowest cell above these voltages.
    pub cell_spread_volts: Option<Limit>,
    /// Any cell probe above these temperatures (°C).
    pub temperature_high_celsius: Option<Limit>,
    /// Any cell probe below these temperatures (°C).
    pub temperature_low_celsius: Option<Limit>,
    /// State of charge below these ratios (0–1).
    pub soc_low_ratio: Option<Limit>,
    /// Whether active BMS alarms count.
    pub alarms: bool,
}

impl Default for Thresholds {
    fn default() -> Self {
        Self {
            cell_low_volts: Some(Limit::new(3.00, 2.80)),
            cell_high_volts: Some(Limit::new(3.55, 3.65)),
            cell_spread_volts: Some(Limit::new(0.05, 0.10)),
            temperature_high_celsius: Some(Limit::new(45.0, 55.0)),
            temperature_low_celsius: Some(Limit::new(0.0, -10.0)),
            soc_low_ratio: Some(Limit::new(0.20, 0.10)),
            alarms: true,
        }
    }
}

/// A Nagios plugin state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// Everything within limits.
    Ok,
    /// A warning limit crossed, a warning alarm, or an incomplete read.
    Warning,
    /// A critical limit crossed or a protection/fault alarm.
    Critical,
    /// Nothing could be read.
    Unknown,
}

impl Status {
    /// The plugin exit code: 0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN.
    #[must_use]
    pub fn exit_code(self) -> u8 {
        match self {
            Self::Ok => 0,
            Self::Warning => 1,
            Self::Critical => 2,
            Self::Unknown => 3,
        }
    }

    /// The word the status line shows.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ok => "OK",
            Self::Warning => "WARNING",
            Self::Critical => "CRITICAL",
            Self::Unknown => "UNKNOWN",
        }
    }

    /// How bad the status is, for "worst wins": critical outranks unknown, which outranks warning.
    fn rank(self) -> u8 {
        match self {
            Self::Ok => 0,
            Self::Warning => 1,
            Self::Unknown => 2,
            Self::Critical => 3,
        }
    }
}

/// The check's result: the status and the one line to print.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckOutcome {
    /// Worst status found.
    pub status: Status,
    /// `BMS <STATUS> - <text> | <perfdata>`, without a trailing newline.
    pub line: String,
}

/// One problem found, with its status and its text.
struct Problem {
    status: Status,
    text: String,
}

/// Check `device` against `thresholds`; `failures` are the poll's error texts (sections that did not answer).
#[must_use]
pub fn check(device: &DeviceSnapshot, failures: &[String], thresholds: &Thresholds) -> CheckOutcome {
    let failure_text = failures.iter().map(|f| clean(f)).collect::<Vec<_>>().join("; ");
    if !device.packs.iter().any(has_data) {
        let text = if failure_text.is_empty() {
            "no data from the BMS".to_owned()
        } else {
            format!("no data from the BMS: {failure_text}")
        };
        return CheckOutcome { status: Status::Unknown, line: format!("BMS UNKNOWN - {text}") };
    }

    let mut problems = Vec::new();
    let mut summaries = Vec::new();
    let mut perfdata = Vec::new();
    for pack in &device.packs {
        check_pack(pack, thresholds, &mut problems);
        if has_data(pack) {
            summaries.push(summary(pack));
            pack_perfdata(pack, thresholds, &mut perfdata);
        }
    }
    if !failure_text.is_empty() {
        problems.push(Problem { status: Status::Warning, text: format!("incomplete read: {failure_text}") });
    }
    // Worst first, so a truncated display still shows what matters; stable within a status.
    problems.sort_by_key(|p| std::cmp::Reverse(p.status.rank()));
    let status = problems.first().map_or(Status::Ok, |p| p.status);

    let mut text: Vec<String> = problems.into_iter().map(|p| p.text).collect();
    text.extend(summaries);
    let mut line = format!("BMS {} - {}", status.as_str(), text.join(", "));
    if !perfdata.is_empty() {
        let _ = write!(line, " | {}", perfdata.join(" "));
    }
    CheckOutcome { status, line }
}

/// Whether the pack reported anything to judge: its voltage or at least one cell.
fn has_data(pack: &PackSnapshot) -> bool {
    pack.voltage_volts.is_some() || pack.cell_volts.iter().any(Option::is_some)
}

/// Text safe inside a plugin line: `|` would start perfdata and a newline would start long output.
fn clean(text: &str) -> String {
    text.chars()
        .map(|c| {
            if c == '|' {
                '/'
            } else if c.is_control() {
                ' '
            } else {
                c
            }
        })
        .collect()
}

/// `value` with at most `decimals` decimals and no trailing zeros ("3.6", "55", "-2.5").
fn fmt_num(value: f64, decimals: usize) -> String {
    let text = format!("{:.*}", decimals, round_to(value, decimals as i32));
    let text = if text.contains('.') { text.trim_end_matches('0').trim_end_matches('.') } else { &text };
    if text == "-0" { "0".to_owned() } else { text.to_owned() }
}

/// Compare `value` with a lower limit pair; `describe` names the quantity, `unit` follows each number.
fn below(value: f64, limit: Option<Limit>, decimals: usize, unit: &str, describe: &str) -> Option<Problem> {
    let limit = limit?;
    let (status, bound) = if value < limit.critical {
        (Status::Critical, limit.critical)
    } else if value < limit.warning {
        (Status::Warning, limit.warning)
    } else {
        return None;
    };
    let text = format!("{describe} {}{unit} < {}{unit}", fmt_num(value, decimals), fmt_num(bound, decimals));
    Some(Problem { status, text })
}

/// Compare `value` with an upper limit pair.
fn above(value: f64, limit: Option<Limit>, decimals: usize, unit: &str, describe: &str) -> Option<Problem> {
    let limit = limit?;
    let (status, bound) = if value > limit.critical {
        (Status::Critical, limit.critical)
    } else if value > limit.warning {
        (Status::Warning, limit.warning)
    } else {
        return None;
    };
    let text = format!("{describe} {}{unit} > {}{unit}", fmt_num(value, decimals), fmt_num(bound, decimals));
    Some(Problem { status, text })
}

fn check_pack(pack: &PackSnapshot, t: &Thresholds, problems: &mut Vec<Problem>) {
    let n = pack.pack;
    if !pack.online {
        problems.push(Problem { status: Status::Warning, text: format!("pack {n} offline") });
        return;
    }
    if !has_data(pack) {
        problems.push(Problem { status: Status::Warning, text: format!("pack {n} no data") });
        return;
    }
    if let Some(soc) = pack.state_of_charge_ratio {
        // Compared and shown in percent, as people read SOC.
        let limit = t.soc_low_ratio.map(|l| Limit::new(l.warning * 100.0, l.critical * 100.0));
        problems.extend(below(soc * 100.0, limit, 1, " %", &format!("pack {n} SOC")));
    }
    for (cell, volts) in pack.cell_volts.iter().enumerate().filter_map(|(i, v)| v.map(|v| (i + 1, v))) {
        let describe = format!("pack {n} cell {cell}");
        problems.extend(above(volts, t.cell_high_volts, 3, " V", &describe));
        problems.extend(below(volts, t.cell_low_volts, 3, " V", &describe));
    }
    if let Some(((lo, _), (hi, _))) = cell_extremes(pack) {
        problems.extend(above(round_to(hi - lo, 4), t.cell_spread_volts, 3, " V", &format!("pack {n} cell spread")));
    }
    for temp in pack.temperatures.iter().filter(|t| matches!(t.sensor, SensorId::Probe(_))) {
        let describe = format!("pack {n} temperature {}", temp.sensor.label());
        problems.extend(above(temp.celsius, t.temperature_high_celsius, 1, " C", &describe));
        problems.extend(below(temp.celsius, t.temperature_low_celsius, 1, " C", &describe));
    }
    if t.alarms {
        alarm_problems(pack, problems);
    }
}

fn alarm_problems(pack: &PackSnapshot, problems: &mut Vec<Problem>) {
    let n = pack.pack;
    for alarm in pack.alarms.iter().filter(|a| a.active) {
        let status = match alarm.severity {
            AlarmSeverity::Info | AlarmSeverity::Warning => Status::Warning,
            AlarmSeverity::Protection | AlarmSeverity::Fault => Status::Critical,
        };
        problems.push(Problem { status, text: format!("pack {n} alarm {}", alarm.name) });
    }
    let levels = |alarms: &[LevelAlarm], what: &str, problems: &mut Vec<Problem>| {
        for a in alarms {
            let text = format!("pack {n} {what} {:02} alarm {}", a.index, a.kind.as_str());
            problems.push(Problem { status: Status::Warning, text });
        }
    };
    levels(&pack.cell_alarms, "cell", problems);
    levels(&pack.temperature_alarms, "temperature", problems);
}

fn summary(pack: &PackSnapshot) -> String {
    let mut parts = Vec::new();
    if let Some(v) = pack.voltage_volts {
        parts.push(format!("{} V", fmt_num(v, 3)));
    }
    if let Some(a) = pack.current_amperes {
        parts.push(format!("{} A", fmt_num(a, 3)));
    }
    if let Some(soc) = pack.state_of_charge_ratio {
        parts.push(format!("SOC {} %", fmt_num(soc * 100.0, 1)));
    }
    if let Some(((lo, _), (hi, _))) = cell_extremes(pack) {
        parts.push(format!("cells {}-{} V", fmt_num(lo, 3), fmt_num(hi, 3)));
    }
    let temps: Vec<f64> = pack.temperatures.iter().map(|t| t.celsius).collect();
    if let (Some(lo), Some(hi)) = (temps.iter().copied().reduce(f64::min), temps.iter().copied().reduce(f64::max)) {
        parts.push(format!("{}-{} C", fmt_num(lo, 1), fmt_num(hi, 1)));
    }
    format!("pack {}: {}", pack.pack, parts.join(" "))
}

/// A perfdata label, single-quoted (with quotes doubled) when it holds a space, `=` or a quote.
fn perf_label(label: &str) -> String {
    if label.contains([' ', '=', '\'']) { format!("'{}'", label.replace('\'', "''")) } else { label.to_owned() }
}

/// One perfdata item; empty fields keep their `;` so positions stay fixed.
fn perf_item(label: &str, value: &str, uom: &str, warn: &str, crit: &str, min: &str, max: &str) -> String {
    let item = format!("{}={value}{uom};{warn};{crit};{min};{max}", perf_label(label));
    item.trim_end_matches(';').to_owned()
}

/// A Nagios range that alerts below `low` and/or above `high`.
fn range(low: Option<f64>, high: Option<f64>, decimals: usize) -> String {
    match (low, high) {
        (Some(lo), Some(hi)) => format!("{}:{}", fmt_num(lo, decimals), fmt_num(hi, decimals)),
        (Some(lo), None) => format!("{}:", fmt_num(lo, decimals)),
        (None, Some(hi)) => format!("~:{}", fmt_num(hi, decimals)),
        (None, None) => String::new(),
    }
}

fn pack_perfdata(pack: &PackSnapshot, t: &Thresholds, out: &mut Vec<String>) {
    let p = format!("pack{}_", pack.pack);
    let warn = |l: Option<Limit>| l.map(|l| l.warning);
    let crit = |l: Option<Limit>| l.map(|l| l.critical);
    if let Some(v) = pack.voltage_volts {
        out.push(perf_item(&format!("{p}voltage"), &fmt_num(v, 3), "V", "", "", "0", ""));
    }
    if let Some(a) = pack.current_amperes {
        out.push(perf_item(&format!("{p}current"), &fmt_num(a, 3), "A", "", "", "", ""));
    }
    if let Some(soc) = pack.state_of_charge_ratio {
        let pct = |x: Option<f64>| x.map(|x| x * 100.0);
        let (w, c) = (range(pct(warn(t.soc_low_ratio)), None, 1), range(pct(crit(t.soc_low_ratio)), None, 1));
        out.push(perf_item(&format!("{p}soc"), &fmt_num(soc * 100.0, 1), "%", &w, &c, "0", "100"));
    }
    if let Some(((lo, _), (hi, _))) = cell_extremes(pack) {
        let (w, c) = (range(warn(t.cell_low_volts), None, 3), range(crit(t.cell_low_volts), None, 3));
        out.push(perf_item(&format!("{p}cell_min"), &fmt_num(lo, 3), "V", &w, &c, "0", ""));
        let (w, c) = (range(None, warn(t.cell_high_volts), 3), range(None, crit(t.cell_high_volts), 3));
        out.push(perf_item(&format!("{p}cell_max"), &fmt_num(hi, 3), "V", &w, &c, "0", ""));
        let (w, c) = (range(None, warn(t.cell_spread_volts), 3), range(None, crit(t.cell_spread_volts), 3));
        out.push(perf_item(&format!("{p}cell_spread"), &fmt_num(hi - lo, 3), "V", &w, &c, "0", ""));
    }
    for temp in &pack.temperatures {
        let (w, c) = if matches!(temp.sensor, SensorId::Probe(_)) {
            (
                range(warn(t.temperature_low_celsius), warn(t.temperature_high_celsius), 1),
                range(crit(t.temperature_low_celsius), crit(t.temperature_high_celsius), 1),
            )
        } else {
            (String::new(), String::new())
        };
        let label = format!("{p}temp_{}", temp.sensor.label());
        out.push(perf_item(&label, &fmt_num(temp.celsius, 1), "C", &w, &c, "", ""));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Alarm, LevelAlarmKind, Temperature};

    /// A healthy 4-cell LFP pack.
    fn healthy() -> DeviceSnapshot {
        let mut device = DeviceSnapshot::default();
        let p = device.pack_mut(1);
        p.voltage_volts = Some(13.2);
        p.current_amperes = Some(-2.5);
        p.state_of_charge_ratio = Some(0.619);
        p.cell_volts = vec![Some(3.30), Some(3.31), Some(3.29), Some(3.30)];
        p.temperatures = vec![
            Temperature { sensor: SensorId::Probe(1), celsius: 21.0 },
            Temperature { sensor: SensorId::Mosfet, celsius: 60.0 },
        ];
        p.set_alarms([
            Alarm::new("cell_voltage_high_l1", AlarmSeverity::Warning, false),
            Alarm::new("cell_voltage_high_l2", AlarmSeverity::Protection, false),
        ]);
        device
    }

    fn run(device: &DeviceSnapshot) -> CheckOutcome {
        check(device, &[], &Thresholds::default())
    }

    fn with(edit: impl FnOnce(&mut PackSnapshot)) -> CheckOutcome {
        let mut device = healthy();
        edit(&mut device.packs[0]);
        run(&device)
    }

    #[test]
    fn a_healthy_pack_is_ok_with_summary_and_perfdata() {
        let out = run(&healthy());
        assert_eq!(out.status, Status::Ok);
        assert_eq!(
            out.line,
            "BMS OK - pack 1: 13.2 V -2.5 A SOC 61.9 % cells 3.29-3.31 V 21-60 C | pack1_voltage=13.2V;;;0 \
             pack1_current=-2.5A pack1_soc=61.9%;20:;10:;0;100 pack1_cell_min=3.29V;3:;2.8:;0 \
             pack1_cell_max=3.31V;~:3.55;~:3.65;0 pack1_cell_spread=0.02V;~:0.05;~:0.1;0 \
             pack1_temp_01=21C;0:45;-10:55 pack1_temp_mosfet=60C"
        );
        assert_eq!(out.status.exit_code(), 0);
    }

    #[test]
    fn cell_voltage_high_and_low_warn_then_go_critical() {
        // Spread off: one outlying cell would otherwise also cross the spread limits.
        let thresholds = Thresholds { cell_spread_volts: None, ..Thresholds::default() };
        let cell = |index: usize, volts: f64| {
            let mut device = healthy();
            device.packs[0].cell_volts[index] = Some(volts);
            check(&device, &[], &thresholds)
        };
        let out = cell(1, 3.56);
        assert_eq!(out.status, Status::Warning);
        assert!(out.line.starts_with("BMS WARNING - pack 1 cell 2 3.56 V > 3.55 V, pack 1: "), "{}", out.line);
        let out = cell(3, 3.71);
        assert_eq!(out.status, Status::Critical);
        assert!(out.line.starts_with("BMS CRITICAL - pack 1 cell 4 3.71 V > 3.65 V, pack 1: "), "{}", out.line);
        let out = cell(0, 2.95);
        assert_eq!(out.status, Status::Warning);
        assert!(out.line.contains("pack 1 cell 1 2.95 V < 3 V"), "{}", out.line);
        let out = cell(0, 2.79);
        assert_eq!(out.status, Status::Critical);
        assert!(out.line.contains("pack 1 cell 1 2.79 V < 2.8 V"), "{}", out.line);
        assert_eq!(cell(0, 3.55).status, Status::Ok, "a limit itself is not crossed");
        // With the defaults the same outlier is critical through the spread as well.
        let mut device = healthy();
        device.packs[0].cell_volts[1] = Some(3.56);
        assert_eq!(run(&device).status, Status::Critical);
    }

    #[test]
    fn cell_spread_warns_and_goes_critical() {
        let out = with(|p| p.cell_volts = vec![Some(3.30), Some(3.36)]);
        assert_eq!(out.status, Status::Warning);
        assert!(out.line.contains("pack 1 cell spread 0.06 V > 0.05 V"), "{}", out.line);
        let out = with(|p| p.cell_volts = vec![Some(3.20), Some(3.31)]);
        assert_eq!(out.status, Status::Critical);
        assert!(out.line.contains("pack 1 cell spread 0.11 V > 0.1 V"), "{}", out.line);
        assert_eq!(with(|p| p.cell_volts = vec![Some(3.30), Some(3.35)]).status, Status::Ok, "0.05 V is not above");
    }

    #[test]
    fn probe_temperatures_warn_and_go_critical_on_both_sides() {
        let set = |c: f64| with(move |p| p.temperatures[0].celsius = c);
        assert_eq!(set(45.0).status, Status::Ok);
        let out = set(46.0);
        assert_eq!(out.status, Status::Warning);
        assert!(out.line.contains("pack 1 temperature 01 46 C > 45 C"), "{}", out.line);
        let out = set(55.5);
        assert_eq!(out.status, Status::Critical);
        assert!(out.line.contains("pack 1 temperature 01 55.5 C > 55 C"), "{}", out.line);
        let out = set(-1.0);
        assert_eq!(out.status, Status::Warning);
        assert!(out.line.contains("pack 1 temperature 01 -1 C < 0 C"), "{}", out.line);
        assert_eq!(set(-12.0).status, Status::Critical);
        // The MOSFET sensor at 60 °C in `healthy` is graphed but not judged.
        assert!(run(&healthy()).line.contains("pack1_temp_mosfet=60C"));
    }

    #[test]
    fn low_soc_warns_and_goes_critical() {
        let out = with(|p| p.state_of_charge_ratio = Some(0.15));
        assert_eq!(out.status, Status::Warning);
        assert!(out.line.contains("pack 1 SOC 15 % < 20 %"), "{}", out.line);
        let out = with(|p| p.state_of_charge_ratio = Some(0.08));
        assert_eq!(out.status, Status::Critical);
        assert!(out.line.contains("pack 1 SOC 8 % < 10 %"), "{}", out.line);
        assert_eq!(with(|p| p.state_of_charge_ratio = Some(0.2)).status, Status::Ok);
    }

    #[test]
    fn alarm_severity_decides_warning_or_critical() {
        let alarm = |severity| with(move |p| p.set_alarms([Alarm::new("cell_overvoltage_protection", severity, true)]));
        assert_eq!(alarm(AlarmSeverity::Info).status, Status::Warning);
        assert_eq!(alarm(AlarmSeverity::Warning).status, Status::Warning);
        assert_eq!(alarm(AlarmSeverity::Fault).status, Status::Critical);
        let out = alarm(AlarmSeverity::Protection);
        assert_eq!(out.status, Status::Critical);
        assert!(out.line.starts_with("BMS CRITICAL - pack 1 alarm cell_overvoltage_protection, pack 1: "));
        // Switched off, alarms do not count.
        let mut device = healthy();
        device.packs[0].set_alarms([Alarm::new("short_circuit", AlarmSeverity::Fault, true)]);
        assert_eq!(check(&device, &[], &Thresholds { alarms: false, ..Thresholds::default() }).status, Status::Ok);
    }

    #[test]
    fn pace_level_alarms_warn_and_the_worst_problem_comes_first() {
        let out = with(|p| {
            p.cell_alarms = vec![LevelAlarm { index: 3, kind: LevelAlarmKind::AboveUpperLimit }];
            p.temperature_alarms = vec![LevelAlarm { index: 1, kind: LevelAlarmKind::BelowLowerLimit }];
            p.cell_volts[1] = Some(3.7);
        });
        assert_eq!(out.status, Status::Critical);
        assert!(
            out.line.starts_with(
                "BMS CRITICAL - pack 1 cell 2 3.7 V > 3.65 V, pack 1 cell spread 0.41 V > 0.1 V, \
                 pack 1 cell 03 alarm above_upper_limit, pack 1 temperature 01 alarm below_lower_limit, pack 1: "
            ),
            "{}",
            out.line
        );
    }

    #[test]
    fn no_data_is_unknown_with_the_failures() {
        let failures = vec!["timeout waiting for 0x90 | retry".to_owned(), "checksum".to_owned()];
        let out = check(&DeviceSnapshot::default(), &failures, &Thresholds::default());
        assert_eq!(out.status, Status::Unknown);
        assert_eq!(out.status.exit_code(), 3);
        assert_eq!(out.line, "BMS UNKNOWN - no data from the BMS: timeout waiting for 0x90 / retry; checksum");
        // A pack that exists but has neither voltage nor cells is still no data.
        let mut device = DeviceSnapshot::default();
        device.pack_mut(1).state_of_charge_ratio = Some(0.5);
        assert_eq!(check(&device, &[], &Thresholds::default()).line, "BMS UNKNOWN - no data from the BMS");
    }

    #[test]
    fn failures_next_to_data_and_offline_packs_warn() {
        let out = check(&healthy(), &["cells: timeout".to_owned()], &Thresholds::default());
        assert_eq!(out.status, Status::Warning);
        assert!(out.line.starts_with("BMS WARNING - incomplete read: cells: timeout, pack 1: "), "{}", out.line);
        let mut device = healthy();
        device.pack_mut(2).online = false;
        let out = run(&device);
        assert_eq!(out.status, Status::Warning);
        assert!(out.line.contains("pack 2 offline"), "{}", out.line);
        assert!(!out.line.contains("pack2_"), "an offline pack has no perfdata: {}", out.line);
    }

    #[test]
    fn perfdata_labels_are_quoted_and_numbers_trimmed() {
        assert_eq!(perf_label("pack1_voltage"), "pack1_voltage");
        assert_eq!(perf_label("pack 1 voltage"), "'pack 1 voltage'");
        assert_eq!(perf_label("it's"), "'it''s'");
        assert_eq!(perf_item("a b", "1", "V", "", "", "", ""), "'a b'=1V");
        assert_eq!(fmt_num(3.30, 3), "3.3");
        assert_eq!(fmt_num(-0.0001, 3), "0");
        assert_eq!(fmt_num(55.0, 1), "55");
        assert_eq!(fmt_num(3.401 - 3.3, 3), "0.101");
        assert_eq!(Status::Warning.exit_code(), 1);
        assert_eq!(Status::Critical.exit_code(), 2);
    }

    #[test]
    fn every_pack_gets_its_own_perfdata() {
        let mut device = healthy();
        let second = device.pack_mut(2);
        second.voltage_volts = Some(13.1);
        let out = run(&device);
        assert_eq!(out.status, Status::Ok);
        assert!(out.line.contains(", pack 2: 13.1 V |"), "{}", out.line);
        assert!(out.line.ends_with(" pack2_voltage=13.1V;;;0"), "{}", out.line);
    }
}
