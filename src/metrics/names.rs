//! Every metric family the exporter serves (`ARCHITECTURE.md#metric-naming`): name, type, unit, help and label keys.
//! This table is the single source the renderer, the README metric reference and the dashboards follow; a unit test in
//! `collector.rs` checks that a render emits exactly these families, in this order.
//!
//! `name` is the name a query uses (`bms_polls_total`, `bms_pack_voltage_volts`, `bms_exporter_build_info`).
//! prometheus-client appends `_total` to counters, `_info` to info metrics and `_<unit>` to a family with a
//! unit, so the renderer passes it [`Metric::stem`], never `name` itself
//! (a name passed whole would come out as `bms_polls_total_total`).

/// The OpenMetrics type of a family.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A value that goes up and down.
    Gauge,
    /// A monotonic count since the exporter started; the sample name ends in `_total`.
    Counter,
    /// Constant 1 carrying labels; the sample name ends in `_info`.
    Info,
}

impl Kind {
    /// The type as the `# TYPE` line spells it.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Gauge => "gauge",
            Self::Counter => "counter",
            Self::Info => "info",
        }
    }

    /// The suffix prometheus-client appends to the samples of this type.
    #[must_use]
    pub fn suffix(self) -> Option<&'static str> {
        match self {
            Self::Gauge => None,
            Self::Counter => Some("_total"),
            Self::Info => Some("_info"),
        }
    }
}

/// When the series of a family are present.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// Once per exporter.
    Exporter,
    /// For every configured device, polled or not, fresh or stale (health and identity).
    Device,
    /// Only for a device whose last success is fresher than `stale_after`, and only for its online packs.
    Pack,
}

/// One metric family.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Metric {
    /// The sample name a query uses.
    pub name: &'static str,
    /// The OpenMetrics type.
    pub kind: Kind,
    /// The OpenMetrics unit (also the name's last word before a type suffix), if any.
    pub unit: Option<&'static str>,
    /// The `# HELP` text: what the value means and which command or register it comes from.
    pub help: &'static str,
    /// Label keys, in the order they are rendered; `bms_pack_info`'s identity keys appear only when reported.
    pub labels: &'static [&'static str],
    /// When the series are present.
    pub scope: Scope,
}

impl Metric {
    /// The OpenMetrics family name: `name` without the suffix the type adds (`bms_polls` for `bms_polls_total`).
    #[must_use]
    pub fn family(&self) -> &'static str {
        self.kind.suffix().and_then(|s| self.name.strip_suffix(s)).unwrap_or(self.name)
    }

    /// The family name without its unit: what prometheus-client's `encode_descriptor` takes (it adds the unit).
    #[must_use]
    pub fn stem(&self) -> &'static str {
        let family = self.family();
        match self.unit {
            Some(unit) => family.strip_suffix(unit).and_then(|s| s.strip_suffix('_')).unwrap_or(family),
            None => family,
        }
    }
}

const DEVICE: &[&str] = &["device"];
const PACK: &[&str] = &["device", "pack"];

const fn gauge(
    name: &'static str,
    unit: Option<&'static str>,
    labels: &'static [&'static str],
    help: &'static str,
) -> Metric {
    Metric { name, kind: Kind::Gauge, unit, help, labels, scope: Scope::Pack }
}

/// A per-pack running total: exported with the pack's values, from the first poll that gave its voltage and
/// current (at 0, so the first increase is seen).
const fn pack_counter(name: &'static str, unit: &'static str, help: &'static str) -> Metric {
    Metric { name, kind: Kind::Counter, unit: Some(unit), help, labels: PACK, scope: Scope::Pack }
}

const fn health(name: &'static str, kind: Kind, unit: Option<&'static str>, help: &'static str) -> Metric {
    Metric { name, kind, unit, help, labels: DEVICE, scope: Scope::Device }
}

/// The bounded `reason` label values of `bms_poll_failures_total` (`PollError::reason`); each is rendered for
/// every device, 0 until it happens, so `rate()` and alerts see the series from the first scrape.
pub const FAILURE_REASONS: [&str; 8] =
    ["timeout", "checksum", "truncated", "unexpected_reply", "io", "decode", "implausible", "echo"];

/// The `revision` label of `bms_exporter_build_info`: set by build.rs (git, or `BMS_EXPORTER_REVISION`), else "unknown".
pub const REVISION: &str = match option_env!("BMS_EXPORTER_REVISION") {
    Some(revision) => revision,
    None => "unknown",
};

/// `bms_exporter_build_info`.
pub const BUILD_INFO: Metric = Metric {
    name: "bms_exporter_build_info",
    kind: Kind::Info,
    unit: None,
    help: "Version and source revision of the running bms_exporter; always 1",
    labels: &["version", "revision"],
    scope: Scope::Exporter,
};
/// `bms_device_info`.
pub const DEVICE_INFO: Metric = Metric {
    name: "bms_device_info",
    kind: Kind::Info,
    unit: None,
    help: "Configured device with its protocol and transport (serial, tcp or bluetooth); always 1",
    labels: &["device", "protocol", "transport"],
    scope: Scope::Device,
};
/// `bms_up`.
pub const UP: Metric = health(
    "bms_up",
    Kind::Gauge,
    None,
    "1 if the last poll of the device answered every request and its last success is fresher than stale_after, else 0",
);
/// `bms_poll_duration_seconds`.
pub const POLL_DURATION: Metric =
    health("bms_poll_duration_seconds", Kind::Gauge, Some("seconds"), "Wall time of the last poll of the device");
/// `bms_last_poll_success_timestamp_seconds`.
pub const LAST_SUCCESS: Metric = health(
    "bms_last_poll_success_timestamp_seconds",
    Kind::Gauge,
    Some("seconds"),
    "Unix time of the last poll in which the device answered every request",
);
/// `bms_polls_total`.
pub const POLLS: Metric =
    health("bms_polls_total", Kind::Counter, None, "Polls of the device run since the exporter started");
/// `bms_poll_failures_total`.
pub const POLL_FAILURES: Metric = Metric {
    name: "bms_poll_failures_total",
    kind: Kind::Counter,
    unit: None,
    help: "Requests that got no valid reply after their retries, by reason: timeout, checksum, truncated, unexpected_reply, io (once per poll that found the link down or lost it), decode, implausible, echo (only our own request came back)",
    labels: &["device", "reason"],
    scope: Scope::Device,
};
/// `bms_resync_bytes_total`.
pub const RESYNC_BYTES: Metric = health(
    "bms_resync_bytes_total",
    Kind::Counter,
    Some("bytes"),
    "Bytes read from the device's link that were skipped while looking for the start of the next frame",
);
/// `bms_pack_info`.
pub const PACK_INFO: Metric = Metric {
    name: "bms_pack_info",
    kind: Kind::Info,
    unit: None,
    help: "Identity strings the pack reported (Daly 0x63 model and 0x57 battery code, Pace 0xC1 version and 0xC2 serial, Daly D2 version); only the labels read appear; always 1",
    labels: &["device", "pack", "model", "firmware_version", "serial_number"],
    scope: Scope::Pack,
};
/// `bms_pack_voltage_volts`.
pub const PACK_VOLTAGE: Metric = gauge(
    "bms_pack_voltage_volts",
    Some("volts"),
    PACK,
    "Pack voltage (Daly 0x90, Pace 0x42, Sinowealth register 0x0B)",
);
/// `bms_pack_current_amperes`.
pub const PACK_CURRENT: Metric = gauge(
    "bms_pack_current_amperes",
    Some("amperes"),
    PACK,
    "Pack current, positive while charging and negative while discharging (Daly 0x90, Pace 0x42, Sinowealth register 0x10)",
);
/// `bms_pack_state_of_charge_ratio`.
pub const PACK_SOC: Metric = gauge(
    "bms_pack_state_of_charge_ratio",
    Some("ratio"),
    PACK,
    "State of charge, 0 to 1 (Daly 0x90, Pace 0x42 or 0xA6, Sinowealth register 0x13)",
);
/// `bms_pack_state_of_health_ratio`.
pub const PACK_SOH: Metric = gauge(
    "bms_pack_state_of_health_ratio",
    Some("ratio"),
    PACK,
    "State of health as the device reports it, 0 to 1, may exceed 1 (Pace 0x42 or 0xA6)",
);
/// `bms_pack_remaining_capacity_ampere_hours`.
pub const PACK_REMAINING: Metric = gauge(
    "bms_pack_remaining_capacity_ampere_hours",
    Some("ampere_hours"),
    PACK,
    "Remaining capacity (Daly 0x93, Pace 0x42 or 0xA6, Sinowealth register 0x12)",
);
/// `bms_pack_full_capacity_ampere_hours`.
pub const PACK_FULL: Metric = gauge(
    "bms_pack_full_capacity_ampere_hours",
    Some("ampere_hours"),
    PACK,
    "Full-charge capacity (Pace 0x42 or 0xA6, Sinowealth register 0x11)",
);
/// `bms_pack_design_capacity_ampere_hours`.
pub const PACK_DESIGN: Metric = gauge(
    "bms_pack_design_capacity_ampere_hours",
    Some("ampere_hours"),
    PACK,
    "Design (rated) capacity (Daly 0x50, Pace 0x42 or 0xA6)",
);
/// `bms_pack_charged_energy_joules_total`.
pub const PACK_CHARGED_ENERGY: Metric = pack_counter(
    "bms_pack_charged_energy_joules_total",
    "joules",
    "Energy that flowed into the pack since the exporter started: pack voltage times current while charging, \
     integrated between consecutive polls no more than stale_after apart",
);
/// `bms_pack_discharged_energy_joules_total`.
pub const PACK_DISCHARGED_ENERGY: Metric = pack_counter(
    "bms_pack_discharged_energy_joules_total",
    "joules",
    "Energy that flowed out of the pack since the exporter started: pack voltage times current while \
     discharging, integrated between consecutive polls no more than stale_after apart",
);
/// `bms_pack_charged_ampere_hours_total`.
pub const PACK_CHARGED_CHARGE: Metric = pack_counter(
    "bms_pack_charged_ampere_hours_total",
    "ampere_hours",
    "Charge that flowed into the pack since the exporter started: pack current while charging, integrated \
     between consecutive polls no more than stale_after apart",
);
/// `bms_pack_discharged_ampere_hours_total`.
pub const PACK_DISCHARGED_CHARGE: Metric = pack_counter(
    "bms_pack_discharged_ampere_hours_total",
    "ampere_hours",
    "Charge that flowed out of the pack since the exporter started: pack current while discharging, integrated \
     between consecutive polls no more than stale_after apart",
);
/// `bms_pack_cycle_count`.
pub const PACK_CYCLES: Metric = gauge(
    "bms_pack_cycle_count",
    None,
    PACK,
    "Charge/discharge cycles as the device counts them (Daly 0x94, Pace 0x42, Sinowealth register 0x14)",
);
/// `bms_pack_cell_count`.
pub const PACK_CELL_COUNT: Metric = gauge(
    "bms_pack_cell_count",
    None,
    PACK,
    "Series cells the device reports (Daly 0x94, Pace 0x42, Sinowealth register 0x17)",
);
/// `bms_pack_temperature_sensor_count`.
pub const PACK_SENSOR_COUNT: Metric = gauge(
    "bms_pack_temperature_sensor_count",
    None,
    PACK,
    "Temperature sensors the device reports (Daly 0x94, Pace 0x42)",
);
/// `bms_pack_state`.
pub const PACK_STATE: Metric = gauge(
    "bms_pack_state",
    None,
    &["device", "pack", "state"],
    "1 for the pack's current state (idle, charging, discharging), 0 for the others (Daly 0x93, Sinowealth register 0x15; Pace from the current)",
);
/// `bms_mosfet_enabled`.
pub const MOSFET: Metric = gauge(
    "bms_mosfet_enabled",
    None,
    &["device", "pack", "mosfet"],
    "1 while the charge or discharge MOSFET is on (Daly 0x93, Pace 0x44, Sinowealth register 0x15)",
);
/// `bms_charger_connected`.
pub const CHARGER: Metric = gauge("bms_charger_connected", None, PACK, "1 while a charger is detected (Daly 0x94)");
/// `bms_load_connected`.
pub const LOAD: Metric = gauge("bms_load_connected", None, PACK, "1 while a load is detected (Daly 0x94)");
/// `bms_digital_io`.
pub const DIGITAL_IO: Metric = gauge(
    "bms_digital_io",
    None,
    &["device", "pack", "port"],
    "1 while the digital input or output port is active (Daly 0x94)",
);
/// `bms_cell_voltage_volts`.
pub const CELL_VOLTAGE: Metric = gauge(
    "bms_cell_voltage_volts",
    Some("volts"),
    &["device", "pack", "cell"],
    "Cell voltage (Daly 0x95, Pace 0x42, Sinowealth registers 0x01-0x0A)",
);
/// `bms_cell_balancing`.
pub const CELL_BALANCING: Metric = gauge(
    "bms_cell_balancing",
    None,
    &["device", "pack", "cell"],
    "1 while the cell is being balanced (Daly 0x97, Pace 0x44)",
);
/// `bms_temperature_celsius`.
pub const TEMPERATURE: Metric = gauge(
    "bms_temperature_celsius",
    Some("celsius"),
    &["device", "pack", "sensor"],
    "Temperature; sensor 01..NN for probes, mosfet, ambient or board for named sensors (Daly 0x96, Pace 0x42, Sinowealth registers 0x0C-0x0F)",
);
/// `bms_alarm_active`.
pub const ALARM: Metric = gauge(
    "bms_alarm_active",
    None,
    &["device", "pack", "alarm"],
    "1 while the alarm is active; every alarm the protocol defines is present (Daly 0x98, Pace 0x44, Sinowealth register 0x16)",
);
/// `bms_cell_alarm_active`.
pub const CELL_ALARM: Metric = gauge(
    "bms_cell_alarm_active",
    None,
    &["device", "pack", "cell", "alarm"],
    "1 while the cell's warning level says so (Pace 0x44 cell levels): below_lower_limit and above_upper_limit \
     for every cell of a Pace pack, other levels only while active",
);
/// `bms_temperature_alarm_active`.
pub const TEMPERATURE_ALARM: Metric = gauge(
    "bms_temperature_alarm_active",
    None,
    &["device", "pack", "sensor", "alarm"],
    "1 while the sensor's warning level says so (Pace 0x44 temperature levels): below_lower_limit and \
     above_upper_limit for every sensor of a Pace pack, other levels only while active",
);

/// Every family, in the order they are rendered.
pub const ALL: &[&Metric] = &[
    &BUILD_INFO,
    &DEVICE_INFO,
    &UP,
    &POLL_DURATION,
    &LAST_SUCCESS,
    &POLLS,
    &POLL_FAILURES,
    &RESYNC_BYTES,
    &PACK_INFO,
    &PACK_VOLTAGE,
    &PACK_CURRENT,
    &PACK_SOC,
    &PACK_SOH,
    &PACK_REMAINING,
    &PACK_FULL,
    &PACK_DESIGN,
    &PACK_CHARGED_ENERGY,
    &PACK_DISCHARGED_ENERGY,
    &PACK_CHARGED_CHARGE,
    &PACK_DISCHARGED_CHARGE,
    &PACK_CYCLES,
    &PACK_CELL_COUNT,
    &PACK_SENSOR_COUNT,
    &PACK_STATE,
    &MOSFET,
    &CHARGER,
    &LOAD,
    &DIGITAL_IO,
    &CELL_VOLTAGE,
    &CELL_BALANCING,
    &TEMPERATURE,
    &ALARM,
    &CELL_ALARM,
    &TEMPERATURE_ALARM,
];

/// `bms_mqtt_connected`.
pub const MQTT_CONNECTED: Metric = mqtt(
    "bms_mqtt_connected",
    Kind::Gauge,
    None,
    "1 while the MQTT publisher is connected to the broker, else 0 (only with mqtt: configured, like every bms_mqtt_ family)",
);
/// `bms_mqtt_messages_published_total`.
pub const MQTT_MESSAGES: Metric = mqtt(
    "bms_mqtt_messages_published_total",
    Kind::Counter,
    None,
    "MQTT messages (state, discovery, status) handed to the broker connection since the exporter started",
);
/// `bms_mqtt_publish_bytes_total`.
pub const MQTT_BYTES: Metric = mqtt(
    "bms_mqtt_publish_bytes_total",
    Kind::Counter,
    Some("bytes"),
    "Payload bytes of the MQTT messages handed to the broker connection since the exporter started",
);
/// `bms_mqtt_connection_errors_total`.
pub const MQTT_ERRORS: Metric = mqtt(
    "bms_mqtt_connection_errors_total",
    Kind::Counter,
    None,
    "Failed MQTT connection attempts and lost connections (broker down, refused credentials, TLS errors)",
);
/// `bms_mqtt_last_publish_timestamp_seconds`.
pub const MQTT_LAST_PUBLISH: Metric = mqtt(
    "bms_mqtt_last_publish_timestamp_seconds",
    Kind::Gauge,
    Some("seconds"),
    "Unix time of the last MQTT message handed to the broker connection; absent before the first",
);

/// `bms_mqtt_commands_total`.
pub const MQTT_COMMANDS: Metric = Metric {
    labels: &["result"],
    ..mqtt(
        "bms_mqtt_commands_total",
        Kind::Counter,
        None,
        "MQTT control commands handled, by result: refused (failed a check; nothing was sent), duplicate (the same \
         command was still running), obeyed (the read-back shows it), ignored_by_bms (sent, but the read-back does \
         not show it), failed (the link failed; what the BMS did is unknown); all 0 unless control: true",
    )
};

/// The bounded `result` label values of `bms_mqtt_commands_total` (`mqtt::control::Outcome`), in this order;
/// each is rendered from the start, 0 until it happens, so `increase()` and alerts see the series at once.
pub const MQTT_COMMAND_RESULTS: [&str; 5] = ["refused", "duplicate", "obeyed", "ignored_by_bms", "failed"];

const fn mqtt(name: &'static str, kind: Kind, unit: Option<&'static str>, help: &'static str) -> Metric {
    Metric { name, kind, unit, help, labels: &[], scope: Scope::Exporter }
}

/// The MQTT publisher's families, rendered after [`ALL`] only when `mqtt:` is configured.
pub const MQTT: &[&Metric] =
    &[&MQTT_CONNECTED, &MQTT_MESSAGES, &MQTT_BYTES, &MQTT_ERRORS, &MQTT_LAST_PUBLISH, &MQTT_COMMANDS];

/// `bms_exporter_config_last_reload_successful`, as Prometheus's own `prometheus_config_last_reload_successful`.
pub const RELOAD_SUCCESSFUL: Metric = Metric {
    name: "bms_exporter_config_last_reload_successful",
    kind: Kind::Gauge,
    unit: None,
    help: "1 if the last attempt to load the configuration file (at start, on SIGHUP or POST /-/reload) succeeded, 0 if \
           it failed and the previous configuration is still running (only with --config, like the next family)",
    labels: &[],
    scope: Scope::Exporter,
};
/// `bms_exporter_config_last_reload_success_timestamp_seconds`.
pub const RELOAD_SUCCESS_TIME: Metric = Metric {
    name: "bms_exporter_config_last_reload_success_timestamp_seconds",
    kind: Kind::Gauge,
    unit: Some("seconds"),
    help: "Unix time of the last successful load of the configuration file (the start, or the last good reload)",
    labels: &[],
    scope: Scope::Exporter,
};

/// The configuration reload families, rendered after [`MQTT`] only when serving a configuration file.
pub const RELOAD: &[&Metric] = &[&RELOAD_SUCCESSFUL, &RELOAD_SUCCESS_TIME];

const fn process(name: &'static str, kind: Kind, unit: Option<&'static str>, help: &'static str) -> Metric {
    Metric { name, kind, unit, help, labels: &[], scope: Scope::Exporter }
}

/// `process_cpu_seconds_total`.
pub const PROCESS_CPU: Metric = process(
    "process_cpu_seconds_total",
    Kind::Counter,
    Some("seconds"),
    "CPU time the exporter has used in user and system mode (Linux /proc/self/stat utime + stime)",
);
/// `process_resident_memory_bytes`.
pub const PROCESS_RESIDENT: Metric = process(
    "process_resident_memory_bytes",
    Kind::Gauge,
    Some("bytes"),
    "Resident memory of the exporter (Linux /proc/self/stat rss times the page size)",
);
/// `process_virtual_memory_bytes`.
pub const PROCESS_VIRTUAL: Metric = process(
    "process_virtual_memory_bytes",
    Kind::Gauge,
    Some("bytes"),
    "Virtual memory size of the exporter (Linux /proc/self/stat vsize)",
);
/// `process_virtual_memory_max_bytes`.
pub const PROCESS_VIRTUAL_MAX: Metric = process(
    "process_virtual_memory_max_bytes",
    Kind::Gauge,
    Some("bytes"),
    "Soft limit on the exporter's virtual memory size (RLIMIT_AS, Max address space in /proc/self/limits); \
     about 1.8e19 (2^64) when unlimited",
);
/// `process_open_fds`.
pub const PROCESS_OPEN_FDS: Metric =
    process("process_open_fds", Kind::Gauge, None, "Open file descriptors of the exporter (Linux /proc/self/fd)");
/// `process_max_fds`.
pub const PROCESS_MAX_FDS: Metric = process(
    "process_max_fds",
    Kind::Gauge,
    None,
    "Soft limit on the exporter's open file descriptors (RLIMIT_NOFILE, Max open files in /proc/self/limits)",
);
/// `process_start_time_seconds`.
pub const PROCESS_START: Metric = process(
    "process_start_time_seconds",
    Kind::Gauge,
    Some("seconds"),
    "Unix time the exporter process started (Linux /proc/self/stat starttime after /proc/stat btime)",
);

/// The exporter process's own families, named as every client_golang exporter names them and in the alphabetical
/// order a Go exporter's body has them; the server renders them last (after [`MQTT`] and [`RELOAD`]), and a figure that cannot
/// be read has no series.
pub const PROCESS: &[&Metric] = &[
    &PROCESS_CPU,
    &PROCESS_MAX_FDS,
    &PROCESS_OPEN_FDS,
    &PROCESS_RESIDENT,
    &PROCESS_START,
    &PROCESS_VIRTUAL,
    &PROCESS_VIRTUAL_MAX,
];

/// Every family the exporter can serve: [`ALL`], then [`MQTT`], then [`RELOAD`], then [`PROCESS`].
pub fn every() -> impl Iterator<Item = &'static Metric> {
    ALL.iter().chain(MQTT).chain(RELOAD).chain(PROCESS).copied()
}

/// The metrics reference as a Markdown table, one row per family of [`ALL`], [`MQTT`], [`RELOAD`] and [`PROCESS`] (the
/// README embeds it; a test keeps the two equal).
#[must_use]
pub fn reference_markdown() -> String {
    use std::fmt::Write as _;
    let mut out = String::from("| metric | type | labels | meaning |\n|---|---|---|---|\n");
    for metric in every() {
        let labels: Vec<String> = metric.labels.iter().map(|l| format!("`{l}`")).collect();
        // A `|` in help text would end the cell early.
        let help = metric.help.replace('|', "\\|");
        let _ = writeln!(out, "| `{}` | {} | {} | {help} |", metric.name, metric.kind.as_str(), labels.join(", "));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn is_name(s: &str) -> bool {
        s.starts_with(|c: char| c.is_ascii_lowercase())
            && s.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
    }

    #[test]
    fn names_carry_their_unit_and_type_suffix_and_are_unique() {
        let mut names: Vec<&str> = every().map(|m| m.name).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), every().count(), "a family is listed twice");
        for m in every() {
            // The process families keep the names every Prometheus user's dashboards already query.
            let prefix = if PROCESS.contains(&m) { "process_" } else { "bms_" };
            assert!(m.name.starts_with(prefix), "{}", m.name);
            assert!(is_name(m.name), "{}", m.name);
            if let Some(suffix) = m.kind.suffix() {
                assert!(m.name.ends_with(suffix), "{} must end in {suffix}", m.name);
            }
            assert!(!m.name.ends_with("_total") || m.kind == Kind::Counter, "{} looks like a counter", m.name);
            if let Some(unit) = m.unit {
                assert!(m.family().ends_with(&format!("_{unit}")), "{} must end in its unit {unit}", m.name);
                assert_eq!(format!("{}_{unit}", m.stem()), m.family());
            } else {
                assert_eq!(m.stem(), m.family());
            }
        }
    }

    #[test]
    fn stems_drop_exactly_the_parts_prometheus_client_adds_back() {
        assert_eq!(POLLS.family(), "bms_polls");
        assert_eq!(RESYNC_BYTES.family(), "bms_resync_bytes");
        assert_eq!(RESYNC_BYTES.stem(), "bms_resync");
        assert_eq!(BUILD_INFO.stem(), "bms_exporter_build");
        assert_eq!(PACK_REMAINING.stem(), "bms_pack_remaining_capacity");
        assert_eq!(PACK_SOC.stem(), "bms_pack_state_of_charge");
        assert_eq!(UP.stem(), "bms_up");
        // A counter with a unit: the unit comes before `_total`, as OpenMetrics requires.
        assert_eq!(PACK_CHARGED_ENERGY.family(), "bms_pack_charged_energy_joules");
        assert_eq!(PACK_CHARGED_ENERGY.stem(), "bms_pack_charged_energy");
        assert_eq!(PACK_DISCHARGED_CHARGE.family(), "bms_pack_discharged_ampere_hours");
        assert_eq!(PACK_DISCHARGED_CHARGE.stem(), "bms_pack_discharged");
    }

    #[test]
    fn help_needs_no_escaping_and_labels_start_with_the_scope_keys() {
        for m in every() {
            assert!(!m.help.is_empty(), "{}", m.name);
            assert!(!m.help.contains(['\\', '"', '\n']), "{}: HELP would need escaping", m.name);
            assert!(m.labels.iter().all(|l| is_name(l)), "{}", m.name);
            match m.scope {
                Scope::Exporter => assert!(!m.labels.contains(&"device"), "{}", m.name),
                Scope::Device => assert_eq!(m.labels.first(), Some(&"device"), "{}", m.name),
                Scope::Pack => assert_eq!(m.labels.get(..2), Some(PACK), "{}", m.name),
            }
        }
    }

    #[test]
    fn failure_reasons_cover_what_poll_errors_report() {
        use crate::protocol::DecodeError;
        use crate::session::PollError;
        let errors = [
            PollError::Timeout { timeout: std::time::Duration::from_secs(1) },
            PollError::Io("gone".to_owned()),
            PollError::Invalid(DecodeError::HostEcho { address: 0x40 }),
            PollError::Invalid(DecodeError::Truncated { have: 4, need: 13 }),
            PollError::Invalid(DecodeError::Checksum { computed: 1, received: 2 }),
            PollError::Invalid(DecodeError::Implausible { why: "cell above 5 V" }),
            PollError::Refused(DecodeError::NoPacks),
        ];
        for e in &errors {
            assert!(e.is_failure(), "{e}");
            assert!(FAILURE_REASONS.contains(&e.reason()), "{} is not in the bounded set", e.reason());
        }
        // A request never sent is not counted at all.
        assert!(!PollError::Skipped("link lost").is_failure());
    }
}
