//! The exporter end to end with real components on 127.0.0.1: simulators on a PTY and TCP → the `serve` binary →
//! a real Prometheus server (Debian package `prometheus`) scraping it. Values are checked in Prometheus against
//! the simulators' truth; a simulator that goes away makes `bms_up` 0 and its values vanish, and coming back
//! brings them back. Also `--demo`, TLS and basic auth through the binary, and a bad config at start-up.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command as Process, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::util::{
    Killed, Scratch, Simulator, free_port, http_get, prometheus, required_program, url_encode, wait_for,
};
use bms_exporter::metrics::names;

/// The exporter binary serving with `args`, its stderr kept in `dir/exporter.log`.
pub(crate) fn exporter(dir: &Path, args: &[&str]) -> Killed {
    let log = std::fs::File::create(dir.join("exporter.log")).unwrap();
    let child =
        Process::new(env!("CARGO_BIN_EXE_bms_exporter")).args(args).stdout(Stdio::null()).stderr(log).spawn().unwrap();
    Killed(child)
}

pub(crate) fn exporter_log(dir: &Path) -> String {
    std::fs::read_to_string(dir.join("exporter.log")).unwrap_or_default()
}

/// Wait until the exporter at `addr` answers `/-/ready` with 200; fail at once, with its log, if it exits.
pub(crate) fn wait_ready(exporter: &mut Killed, addr: &str, dir: &Path) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if http_get(addr, "/-/ready", &[]).is_some_and(|r| r.status == 200) {
            return;
        }
        if let Some(status) = exporter.0.try_wait().unwrap() {
            panic!("the exporter for {addr} exited ({status}) before it was ready:\n{}", exporter_log(dir));
        }
        assert!(Instant::now() < deadline, "the exporter at {addr} was not ready after 30 s:\n{}", exporter_log(dir));
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// One sample of an instant query: its labels and value.
pub(crate) type Sample = (BTreeMap<String, String>, f64);

/// An instant query against Prometheus; fails on a query error.
pub(crate) fn query(prometheus: &str, expr: &str) -> Vec<Sample> {
    let response = http_get(prometheus, &format!("/api/v1/query?query={}", url_encode(expr)), &[])
        .unwrap_or_else(|| panic!("Prometheus did not answer {expr}"));
    let json: Value = serde_json::from_str(&response.body).unwrap_or_else(|e| panic!("{expr}: {e}: {}", response.body));
    assert_eq!(json["status"], "success", "{expr}: {}", response.body);
    json["data"]["result"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            let labels = r["metric"]
                .as_object()
                .unwrap()
                .iter()
                .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_owned()))
                .collect();
            let value = r["value"][1].as_str().unwrap().parse().unwrap();
            (labels, value)
        })
        .collect()
}

/// The single value of `expr`, waiting (up to 20 s) until Prometheus has one.
pub(crate) fn value(prometheus: &str, expr: &str) -> f64 {
    wait_for(&format!("a value for {expr}"), Duration::from_secs(20), || {
        let samples = query(prometheus, expr);
        assert!(samples.len() <= 1, "{expr} has {} series: {samples:?}", samples.len());
        samples.first().map(|(_, v)| *v)
    })
}

fn close(what: &str, got: f64, want: f64, tolerance: f64) {
    assert!((got - want).abs() <= tolerance + 1e-9, "{what}: Prometheus has {got}, the truth is {want} (±{tolerance})");
}

/// Half the step each protocol reports a field in: (volts, amperes, cell volts, °C).
pub(crate) fn tolerance(protocol: &str) -> (f64, f64, f64, f64) {
    match protocol {
        "daly" | "daly-modbus" => (0.051, 0.051, 0.000_51, 0.51),
        "pace" => (0.005_1, 0.005_1, 0.000_51, 0.051),
        _ => (0.000_51, 0.000_51, 0.000_51, 0.051),
    }
}

/// Check the values Prometheus holds for `device` against the simulator's truth.
pub(crate) fn assert_device_matches_truth(prom: &str, device: &str, protocol: &str, truth: &Value) {
    let (volts, amperes, cell_volts, celsius) = tolerance(protocol);
    for pack in truth["packs"].as_array().unwrap() {
        let n = format!("{:02}", pack["pack"].as_u64().unwrap());
        let sel = format!("device=\"{device}\",pack=\"{n}\"");
        let what = |field: &str| format!("{device} pack {n} {field}");
        close(
            &what("voltage"),
            value(prom, &format!("bms_pack_voltage_volts{{{sel}}}")),
            pack["voltage_volts"].as_f64().unwrap(),
            volts,
        );
        close(
            &what("current"),
            value(prom, &format!("bms_pack_current_amperes{{{sel}}}")),
            pack["current_amperes"].as_f64().unwrap(),
            amperes,
        );
        close(
            &what("state of charge"),
            value(prom, &format!("bms_pack_state_of_charge_ratio{{{sel}}}")),
            pack["state_of_charge_ratio"].as_f64().unwrap(),
            0.0051,
        );
        let cells = pack["cell_volts"].as_array().unwrap();
        let got = query(prom, &format!("bms_cell_voltage_volts{{{sel}}}"));
        assert_eq!(got.len(), cells.len(), "{}: {got:?}", what("cell count"));
        for (labels, v) in &got {
            let cell: usize = labels["cell"].parse().unwrap();
            close(&what(&format!("cell {cell}")), *v, cells[cell - 1].as_f64().unwrap(), cell_volts);
        }
        for (mosfet, field) in [("charge", "charge_mosfet_enabled"), ("discharge", "discharge_mosfet_enabled")] {
            if let Some(on) = pack[field].as_bool() {
                let got = value(prom, &format!("bms_mosfet_enabled{{{sel},mosfet=\"{mosfet}\"}}"));
                assert_eq!(got, f64::from(u8::from(on)), "{}", what(&format!("{mosfet} MOSFET")));
            }
        }
        for t in pack["temperatures"].as_array().unwrap() {
            let want = t["celsius"].as_f64().unwrap();
            if let Some(probe) = t["sensor"]["probe"].as_u64() {
                let got = value(prom, &format!("bms_temperature_celsius{{{sel},sensor=\"{probe:02}\"}}"));
                close(&what(&format!("probe {probe}")), got, want, celsius);
            } else if let Some(name) = t["sensor"].as_str() {
                // Named sensors (mosfet, ambient, board) only where the protocol reports them.
                let got = query(prom, &format!("bms_temperature_celsius{{{sel},sensor=\"{name}\"}}"));
                if let Some((_, got)) = got.first() {
                    close(&what(name), *got, want, celsius);
                }
            }
        }
        assert_pack_details_match_truth(prom, &sel, &what(""), pack);
    }
}

/// The remaining value families of one pack against the truth: SOH, capacities, counts, state, charger/load,
/// digital I/O, balancing, alarms and identity. The truth is the simulated battery, which knows more than some
/// protocols carry (a Daly board reports no SOH), so a series Prometheus has must equal the truth, and one it
/// lacks must be a field the protocol does not report; that each family is served at all is checked by name.
fn assert_pack_details_match_truth(prom: &str, sel: &str, what: &str, pack: &Value) {
    let numbers: [(&str, &str, f64); 7] = [
        ("bms_pack_state_of_health_ratio", "state_of_health_ratio", 0.0051),
        ("bms_pack_remaining_capacity_ampere_hours", "remaining_capacity_ampere_hours", 0.051),
        ("bms_pack_full_capacity_ampere_hours", "full_capacity_ampere_hours", 0.051),
        ("bms_pack_design_capacity_ampere_hours", "design_capacity_ampere_hours", 0.051),
        ("bms_pack_cycle_count", "cycle_count", 0.0),
        ("bms_pack_cell_count", "cell_count", 0.0),
        ("bms_pack_temperature_sensor_count", "temperature_sensor_count", 0.0),
    ];
    for (metric, field, tolerance) in numbers {
        if let Some((_, got)) = query(prom, &format!("{metric}{{{sel}}}")).first() {
            let want =
                pack[field].as_f64().unwrap_or_else(|| panic!("{what}{field}: served {got}, the truth has none"));
            close(&format!("{what}{field}"), *got, want, tolerance);
        }
    }
    for (metric, field) in [("bms_charger_connected", "charger_connected"), ("bms_load_connected", "load_connected")] {
        if let (Some(on), Some((_, got))) = (pack[field].as_bool(), query(prom, &format!("{metric}{{{sel}}}")).first())
        {
            assert_eq!(*got, f64::from(u8::from(on)), "{what}{field}");
        }
    }
    if let Some(state) = pack["state"].as_str() {
        let states = query(prom, &format!("bms_pack_state{{{sel}}}"));
        assert_eq!(states.len(), 3, "{what}state: one series per state: {states:?}");
        for (labels, v) in states {
            assert_eq!(v, f64::from(u8::from(labels["state"] == state)), "{what}state {}", labels["state"]);
        }
    }
    for port in pack["digital_io"].as_array().unwrap() {
        let name = port["port"].as_str().unwrap();
        let got = value(prom, &format!("bms_digital_io{{{sel},port=\"{name}\"}}"));
        assert_eq!(got, f64::from(u8::from(port["active"].as_bool().unwrap())), "{what}{name}");
    }
    let balancing = pack["cell_balancing"].as_array().unwrap();
    let got = query(prom, &format!("bms_cell_balancing{{{sel}}}"));
    // Sinowealth boards have no balancing register: no series, rather than a made-up 0.
    if !got.is_empty() {
        assert_eq!(got.len(), balancing.len(), "{what}balancing series: {got:?}");
        for (labels, v) in got {
            let cell: usize = labels["cell"].parse().unwrap();
            let want = balancing[cell - 1].as_bool().unwrap();
            assert_eq!(v, f64::from(u8::from(want)), "{what}cell {cell} balancing");
        }
    }
    // Alarms: the set Prometheus shows active is exactly the set the truth has active.
    let mut active_truth: Vec<String> = pack["alarms"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| a["active"].as_bool().unwrap_or(true))
        .map(|a| a["name"].as_str().unwrap().to_owned())
        .collect();
    active_truth.sort();
    let mut active_prom: Vec<String> = query(prom, &format!("bms_alarm_active{{{sel}}} == 1"))
        .into_iter()
        .map(|(labels, _)| labels["alarm"].clone())
        .collect();
    active_prom.sort();
    assert_eq!(active_prom, active_truth, "{what}active alarms");
    assert!(!query(prom, &format!("bms_alarm_active{{{sel}}}")).is_empty(), "{what}every alarm is listed");
    for field in ["model", "firmware_version", "serial_number"] {
        if let Some(want) = pack["info"][field].as_str() {
            let got = query(prom, &format!("bms_pack_info{{{sel}}}"));
            assert_eq!(got.first().map(|(l, _)| l.get(field).cloned()), Some(Some(want.to_owned())), "{what}{field}");
        }
    }
}

/// Families with series in Prometheus, by name.
fn families_in_prometheus(prom: &str) -> Vec<String> {
    let mut names: Vec<String> = query(prom, "count by (__name__) ({__name__=~\"bms_.+\"})")
        .into_iter()
        .filter_map(|(labels, _)| labels.get("__name__").cloned())
        .collect();
    names.sort();
    names
}

/// The `Accept` header Prometheus 2.42 sends with every scrape.
pub(crate) const PROMETHEUS_ACCEPT: (&str, &str) = (
    "Accept",
    "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,\
     text/plain;version=0.0.4;q=0.5,*/*;q=0.1",
);

/// `/metrics` without an `Accept` header (as curl asks) is the Prometheus text format: promtool finds nothing
/// but the names the metric table fixes, the official Python text parser reads every family, and its samples
/// are those of the OpenMetrics bodies served just before and just after it.
fn assert_text_body_matches_openmetrics(addr: &str) {
    use crate::metrics::{
        PROMTOOL_NAME_FINDINGS, assert_promtool_finds, expected_text_families, parse_text_with_python,
        parse_with_python, sample_map, text_families,
    };
    let get = |headers: &[(&str, &str)]| {
        let r = http_get(addr, "/metrics", headers).unwrap();
        assert_eq!(r.status, 200, "{}", r.body);
        r
    };
    let text = get(&[]);
    assert_eq!(text.header("content-type"), Some("text/plain; version=0.0.4; charset=utf-8"));
    assert_promtool_finds(&text.body, &PROMTOOL_NAME_FINDINGS);
    let families = parse_text_with_python(&text.body);
    assert_eq!(
        text_families(&families),
        expected_text_families(names::ALL.iter().chain(names::RELOAD).chain(names::PROCESS).copied())
    );

    // The same series with the same values as the OpenMetrics bodies served just before and just after it. The
    // batteries are frozen (--time-scale 0), but a scrape may run polls (max_age is 500 ms): a series that
    // differs between those two is one a poll moves, and the text one must lie between them.
    let before = sample_map(&parse_with_python(&get(&[PROMETHEUS_ACCEPT]).body));
    let from_text = sample_map(&parse_text_with_python(&get(&[]).body));
    let after = sample_map(&parse_with_python(&get(&[PROMETHEUS_ACCEPT]).body));
    let keys = |m: &BTreeMap<String, f64>| m.keys().cloned().collect::<Vec<_>>();
    assert_eq!(keys(&from_text), keys(&before), "the same series");
    assert_eq!(keys(&after), keys(&before));
    assert!(before.len() > 400, "only {} series", before.len());
    // Figures that any poll or any scrape changes, each with whether it only grows.
    let moving = |key: &str| -> Option<bool> {
        let growing = [
            "bms_polls_total",
            "bms_poll_failures_total",
            "bms_resync_bytes_total",
            "bms_last_poll_success_timestamp_seconds",
            "bms_pack_charged_energy_joules_total",
            "bms_pack_discharged_energy_joules_total",
            "bms_pack_charged_ampere_hours_total",
            "bms_pack_discharged_ampere_hours_total",
            "process_cpu_seconds_total",
        ];
        let name = key.split('{').next().unwrap();
        if growing.contains(&name) {
            Some(true)
        } else {
            [
                "bms_poll_duration_seconds",
                "process_resident_memory_bytes",
                "process_virtual_memory_bytes",
                "process_open_fds",
            ]
            .contains(&name)
            .then_some(false)
        }
    };
    for (key, text) in &from_text {
        let (b, a) = (before[key], after[key]);
        match moving(key) {
            None => assert!(b == *text && *text == a, "{key}: OpenMetrics {b} then {a}, text {text}"),
            Some(true) => assert!(b <= *text && *text <= a, "{key}: OpenMetrics {b} then {a}, text {text}"),
            Some(false) => {}
        }
    }
}

pub(crate) fn sim_args<'a>(protocol: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec!["--protocol", protocol, "--baud", "0", "--latency-ms", "0", "--time-scale", "0"];
    args.extend_from_slice(extra);
    args
}

#[test]
fn a_real_prometheus_scrapes_every_family_with_true_values_and_sees_a_device_go_and_return() {
    let scratch = Scratch::new("e2e-exporter");
    let dir = scratch.0.clone();
    let (daly, daly_tty) = Simulator::pty("e2e-daly", &sim_args("daly", &["--cells", "16", "--temperatures", "4"]));
    let mut pace = Simulator::tcp("e2e-pace", &sim_args("pace", &["--packs", "2", "--cells", "15"]));
    let sinowealth = Simulator::tcp("e2e-sinowealth", &sim_args("sinowealth", &["--cells", "4"]));
    let modbus = Simulator::tcp("e2e-modbus", &sim_args("daly-modbus", &["--cells", "8", "--temperatures", "2"]));
    let pace_addr = pace.addr.clone().unwrap();
    let config = dir.join("bms.yaml");
    // stale_after must outlast Prometheus' start: its 1 s scrape timeout is shorter than a Sinowealth poll
    // (each register settles on 100 ms of quiet), so its first scrape serves the poll before it.
    std::fs::write(
        &config,
        format!(
            "defaults:\n  timeout: 300ms\n  retries: 1\n  request_gap: 0ms\n  max_age: 500ms\n  stale_after: 10s\n\
             devices:\n\
             \x20 - name: daly\n    protocol: daly\n    serial: {tty}\n\
             \x20 - name: pace\n    protocol: pace\n    tcp: {pace_addr}\n    pace: {{ address: 1, packs: all }}\n\
             \x20 - name: sinowealth\n    protocol: sinowealth\n    tcp: {sino}\n\
             \x20 - name: modbus\n    protocol: daly-modbus\n    tcp: {modbus}\n",
            tty = daly_tty.display(),
            sino = sinowealth.addr.as_deref().unwrap(),
            modbus = modbus.addr.as_deref().unwrap(),
        ),
    )
    .unwrap();
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let mut exporter = exporter(
        &dir,
        &["serve", "--config", config.to_str().unwrap(), "--web.listen-address", &addr, "--log.level", "warn"],
    );
    wait_ready(&mut exporter, &addr, &dir);

    // The body Prometheus asks for: OpenMetrics, every family of the table, and the official Python parser
    // accepts it.
    let body = wait_for("every device up in /metrics", Duration::from_secs(20), || {
        let r = http_get(&addr, "/metrics", &[("X-Prometheus-Scrape-Timeout-Seconds", "5"), PROMETHEUS_ACCEPT])?;
        let all_up = ["daly", "pace", "sinowealth", "modbus"]
            .iter()
            .all(|d| r.body.contains(&format!("bms_up{{device=\"{d}\"}} 1")));
        all_up.then_some(r)
    });
    assert_eq!(body.header("content-type"), Some(bms_exporter::metrics::CONTENT_TYPE));
    for metric in names::ALL {
        assert!(
            body.body.contains(&format!("\n{}{{", metric.name)),
            "{} missing from /metrics:\n{}",
            metric.name,
            body.body
        );
    }
    let parsed = crate::metrics::parse_with_python(&body.body);
    assert!(parsed.len() >= names::ALL.len(), "the Python parser saw {} families", parsed.len());
    // The body everyone else gets (curl, promtool): the Prometheus text format, with the same values.
    assert_text_body_matches_openmetrics(&addr);

    let (_prometheus, prom) = prometheus(&dir, &addr, &[]);
    // The target is healthy and every family arrived in Prometheus' storage.
    wait_for("Prometheus to scrape the exporter without error", Duration::from_secs(30), || {
        let targets = http_get(&prom, "/api/v1/targets", &[])?;
        let json: Value = serde_json::from_str(&targets.body).ok()?;
        let target = json["data"]["activeTargets"].as_array()?.first()?.clone();
        assert_eq!(target["lastError"], "", "scrape error: {target}");
        (target["health"] == "up").then_some(())
    });
    let expected: Vec<String> = {
        // Served with --config: the configuration reload families too.
        let mut v: Vec<String> = names::ALL.iter().chain(names::RELOAD).map(|m| m.name.to_owned()).collect();
        v.sort();
        v
    };
    wait_for("every family in Prometheus", Duration::from_secs(20), || {
        (families_in_prometheus(&prom) == expected).then_some(())
    });
    // Prometheus negotiated OpenMetrics: only that format carries the info type and units into its metadata.
    let metadata = |family: &str| -> Value {
        let r = http_get(&prom, &format!("/api/v1/metadata?metric={family}"), &[]).unwrap();
        serde_json::from_str::<Value>(&r.body).unwrap()["data"][family][0].clone()
    };
    assert_eq!(metadata(names::DEVICE_INFO.family())["type"], "info");
    assert_eq!(metadata(names::PACK_VOLTAGE.family())["unit"], "volts");
    for m in names::PROCESS {
        assert_eq!(query(&prom, m.name).len(), 1, "{} in Prometheus", m.name);
    }
    for device in ["daly", "pace", "sinowealth", "modbus"] {
        assert_eq!(value(&prom, &format!("bms_up{{device=\"{device}\"}}")), 1.0, "{device}");
        assert_eq!(
            query(&prom, &format!("sum(bms_poll_failures_total{{device=\"{device}\"}})"))[0].1,
            0.0,
            "{device} had poll failures"
        );
    }
    // Health of every device: polled, no failures, a recent success, a sane poll duration, no noise skipped.
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs_f64();
    for device in ["daly", "pace", "sinowealth", "modbus"] {
        let sel = format!("device=\"{device}\"");
        assert!(value(&prom, &format!("bms_polls_total{{{sel}}}")) >= 1.0, "{device} polls");
        let last = value(&prom, &format!("bms_last_poll_success_timestamp_seconds{{{sel}}}"));
        assert!((now - last).abs() < 60.0, "{device}: last success {last}, now {now}");
        let duration = value(&prom, &format!("bms_poll_duration_seconds{{{sel}}}"));
        assert!(duration > 0.0 && duration < 5.0, "{device}: poll took {duration} s");
        assert_eq!(value(&prom, &format!("bms_resync_bytes_total{{{sel}}}")), 0.0, "{device}: clean line");
    }
    let build = query(&prom, "bms_exporter_build_info");
    assert_eq!(build.len(), 1);
    assert_eq!(build[0].0["version"], env!("CARGO_PKG_VERSION"));
    assert_device_matches_truth(&prom, "daly", "daly", &daly.truth_json());
    assert_device_matches_truth(&prom, "pace", "pace", &pace.truth_json());
    assert_device_matches_truth(&prom, "sinowealth", "sinowealth", &sinowealth.truth_json());
    assert_device_matches_truth(&prom, "modbus", "daly-modbus", &modbus.truth_json());
    assert_eq!(value(&prom, "bms_device_info{device=\"pace\",protocol=\"pace\",transport=\"tcp\"}"), 1.0);
    assert_eq!(value(&prom, "bms_device_info{device=\"daly\",protocol=\"daly\",transport=\"serial\"}"), 1.0);

    // The Pace rack goes away: bms_up drops to 0, and after stale_after its values vanish while health stays.
    pace.stop();
    wait_for("bms_up 0 for the stopped Pace", Duration::from_secs(20), || {
        (query(&prom, "bms_up{device=\"pace\"}").first()?.1 == 0.0).then_some(())
    });
    wait_for("the stale Pace values to vanish", Duration::from_secs(20), || {
        query(&prom, "bms_pack_voltage_volts{device=\"pace\"}").is_empty().then_some(())
    });
    let scrape = http_get(&addr, "/metrics", &[]).unwrap().body;
    assert!(!scrape.contains("bms_cell_voltage_volts{device=\"pace\""), "stale cells still served");
    assert!(scrape.contains("bms_polls_total{device=\"pace\"}"), "health series must stay");
    assert!(query(&prom, "bms_poll_failures_total{device=\"pace\",reason=\"io\"}")[0].1 > 0.0);
    assert_eq!(value(&prom, "bms_up{device=\"daly\"}"), 1.0, "the other devices are unaffected");

    // It comes back on the same address: the same exporter reads it again.
    let pace = Simulator::tcp_at(&pace.dir.clone(), &pace_addr, &sim_args("pace", &["--packs", "2", "--cells", "15"]));
    wait_for("bms_up 1 for the returned Pace", Duration::from_secs(40), || {
        (query(&prom, "bms_up{device=\"pace\"}").first()?.1 == 1.0).then_some(())
    });
    assert_device_matches_truth(&prom, "pace", "pace", &pace.truth_json());
    drop(daly);
}

#[test]
fn the_demo_serves_every_family_with_no_config_and_probe_serves_one_device() {
    let scratch = Scratch::new("e2e-demo");
    let dir = scratch.0.clone();
    let addr = format!("127.0.0.1:{}", free_port());
    let mut exporter = exporter(&dir, &["--demo", "--web.listen-address", &addr]);
    wait_ready(&mut exporter, &addr, &dir);
    let body = http_get(&addr, "/metrics", &[]).unwrap().body;
    for metric in names::ALL {
        assert!(body.contains(&format!("\n{}{{", metric.name)), "{} missing from the demo:\n{body}", metric.name);
    }
    for device in ["demo-daly", "demo-sinowealth", "demo-pace"] {
        assert!(body.contains(&format!("bms_up{{device=\"{device}\"}} 1")), "{device} not up:\n{body}");
    }
    assert_eq!(body.matches("bms_pack_voltage_volts{device=\"demo-pace\"").count(), 3, "three Pace packs");
    let probe = http_get(&addr, "/probe?target=demo-pace", &[]).unwrap();
    assert_eq!(probe.status, 200);
    assert!(probe.body.contains("bms_up{device=\"demo-pace\"} 1"), "{}", probe.body);
    assert!(!probe.body.contains("device=\"demo-daly\""), "a probe renders only its target");
    // A probe is negotiated as /metrics is, and carries only the device: no process figures.
    assert_eq!(probe.header("content-type"), Some("text/plain; version=0.0.4; charset=utf-8"));
    assert!(!probe.body.contains("process_") && !probe.body.contains("# EOF"), "{}", probe.body);
    crate::metrics::assert_promtool_finds(&probe.body, &crate::metrics::PROMTOOL_NAME_FINDINGS);
    let probe = http_get(&addr, "/probe?target=demo-pace", &[PROMETHEUS_ACCEPT]).unwrap();
    assert_eq!(probe.header("content-type"), Some(bms_exporter::metrics::CONTENT_TYPE));
    assert!(probe.body.ends_with("# EOF\n") && probe.body.contains("# TYPE bms_pack info\n"), "{}", probe.body);
    let unknown = http_get(&addr, "/probe?target=nope", &[]).unwrap();
    assert_eq!(unknown.status, 404);
    assert!(unknown.body.contains("demo-daly"), "the error lists the configured devices: {}", unknown.body);
    assert_eq!(http_get(&addr, "/probe", &[]).unwrap().status, 400);
    // Several targets are refused, not answered for the first one.
    let several = http_get(&addr, "/probe?target=demo-pace&target=demo-daly", &[]).unwrap();
    assert_eq!(several.status, 400, "{}", several.body);
    assert!(several.body.contains("2 target parameters: /probe takes exactly one"), "{}", several.body);
    assert!(!several.body.contains("bms_up"), "{}", several.body);
    let landing = http_get(&addr, "/", &[]).unwrap();
    assert_eq!(landing.status, 200);
    assert!(landing.body.contains("href=\"/metrics\"") && landing.body.contains("/probe?target=demo-pace"));
    assert_eq!(http_get(&addr, "/-/healthy", &[]).unwrap().status, 200);
}

/// One process's figures as the test reads them from `/proc/PID`, independently of the exporter's code.
#[derive(Debug)]
struct ProcFigures {
    /// utime + stime, in clock ticks.
    cpu_ticks: u64,
    /// Field 22 of stat.
    start_ticks: u64,
    vsize_bytes: f64,
    /// VmRSS of status (kB), in bytes.
    rss_bytes: f64,
    open_fds: f64,
}

fn proc_figures(pid: u32) -> ProcFigures {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let fields: Vec<&str> = stat.rsplit_once(')').unwrap().1.split_whitespace().collect();
    let field = |n: usize| fields[n - 3].parse::<u64>().unwrap();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let rss_kb: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().strip_suffix(" kB"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    ProcFigures {
        cpu_ticks: field(14) + field(15),
        start_ticks: field(22),
        vsize_bytes: field(23) as f64,
        rss_bytes: rss_kb * 1024.0,
        open_fds: std::fs::read_dir(format!("/proc/{pid}/fd")).unwrap().count() as f64,
    }
}

/// The soft limit of `name` (a row of /proc/PID/limits, e.g. "Max open files"); "unlimited" is 2^64.
fn soft_limit(pid: u32, name: &str) -> f64 {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let row = limits.lines().find_map(|l| l.strip_prefix(name)).unwrap_or_else(|| panic!("{name}:\n{limits}"));
    match row.split_whitespace().next().unwrap() {
        "unlimited" => u64::MAX as f64,
        soft => soft.parse().unwrap(),
    }
}

fn getconf(variable: &str) -> f64 {
    let out = Process::new(required_program("getconf", "libc-bin")).arg(variable).output().unwrap();
    assert!(out.status.success(), "getconf {variable}");
    String::from_utf8(out.stdout).unwrap().trim().parse().unwrap()
}

#[test]
fn process_metrics_agree_with_what_proc_says_of_the_exporter() {
    let scratch = Scratch::new("e2e-process");
    let dir = scratch.0.clone();
    let addr = format!("127.0.0.1:{}", free_port());
    // Limits of our choosing, so the figures are not just the defaults: the exporter raises the soft open-file
    // limit to the hard one at start, and keeps the address-space limit it was given.
    let log = std::fs::File::create(dir.join("exporter.log")).unwrap();
    let spawned = unix_now();
    let child = Process::new(required_program("prlimit", "util-linux"))
        .args(["--nofile=512:4096", "--as=68719476736:unlimited", "--", env!("CARGO_BIN_EXE_bms_exporter")])
        .args(["--demo", "--web.listen-address", &addr, "--web.telemetry-path", "/bms/metrics"])
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    let spawn_returned = unix_now();
    let mut exporter = Killed(child);
    // prlimit sets the limits and then execs the exporter: the same process.
    let pid = exporter.0.id();
    wait_ready(&mut exporter, &addr, &dir);

    let before = proc_figures(pid);
    let response = http_get(&addr, "/bms/metrics", &[]).unwrap();
    let after = proc_figures(pid);
    assert_eq!(response.status, 200, "{}", response.body);
    assert_eq!(response.header("content-type"), Some("text/plain; version=0.0.4; charset=utf-8"));
    let body = response.body;
    let got = |name: &str| series_value(&body, name).unwrap_or_else(|| panic!("{name} missing:\n{body}"));
    let ticks = getconf("CLK_TCK");

    // Start time: /proc/stat btime plus the start in ticks, exactly as the test computes it, and within a
    // second of the real start (btime is whole seconds, so the figure may be up to 1 s early, never late).
    let btime: f64 = std::fs::read_to_string("/proc/stat")
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("btime "))
        .unwrap()
        .parse()
        .unwrap();
    let start = got("process_start_time_seconds");
    assert!((start - (btime + before.start_ticks as f64 / ticks)).abs() < 1e-6, "start {start}, {before:?}");
    assert!(
        spawned - 1.0 <= start && start <= spawn_returned + 0.01,
        "start {start}, spawned in [{spawned}, {spawn_returned}]"
    );

    let cpu = got("process_cpu_seconds_total");
    let (cpu_before, cpu_after) = (before.cpu_ticks as f64 / ticks, after.cpu_ticks as f64 / ticks);
    assert!(cpu_before <= cpu && cpu <= cpu_after, "cpu {cpu} outside [{cpu_before}, {cpu_after}]");
    assert!(cpu > 0.0, "the demo has polled: some CPU time is spent");

    let rss = got("process_resident_memory_bytes");
    let (low, high) = (before.rss_bytes.min(after.rss_bytes), before.rss_bytes.max(after.rss_bytes));
    assert!(low * 0.9 <= rss && rss <= high * 1.1, "RSS {rss} vs VmRSS {low}..{high}");
    let vsize = got("process_virtual_memory_bytes");
    let (low, high) = (before.vsize_bytes.min(after.vsize_bytes), before.vsize_bytes.max(after.vsize_bytes));
    assert!(low * 0.9 <= vsize && vsize <= high * 1.1, "vsize {vsize} vs {low}..{high}");
    assert_eq!(rss % getconf("PAGESIZE"), 0.0, "RSS is whole pages");

    // Descriptors: the exporter counts while serving this scrape (its connection and the listing's own handle
    // are open then), the test before and after.
    let fds = got("process_open_fds");
    let (low, high) = (before.open_fds.min(after.open_fds), before.open_fds.max(after.open_fds));
    assert!(low <= fds && fds <= high + 3.0, "open fds {fds} vs {low}..{high}");
    assert_eq!(got("process_max_fds"), soft_limit(pid, "Max open files"));
    assert_eq!(got("process_max_fds"), 4096.0, "raised to the hard limit at start");
    assert_eq!(got("process_virtual_memory_max_bytes"), soft_limit(pid, "Max address space"));
    assert_eq!(got("process_virtual_memory_max_bytes"), 68_719_476_736.0);
}

#[test]
fn a_bad_config_stops_the_start_naming_its_file_and_line() {
    let scratch = Scratch::new("e2e-badconfig");
    let dir = scratch.0.clone();
    let config = dir.join("bad.yaml");
    std::fs::write(
        &config,
        "devices:\n  - name: house\n    protocol: daly\n    serial: /dev/ttyUSB0\n    baud: fast\n",
    )
    .unwrap();
    let out = Process::new(env!("CARGO_BIN_EXE_bms_exporter"))
        .args(["--config", config.to_str().unwrap(), "--web.listen-address", "127.0.0.1:0"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains(&format!("{}:5:", config.display())), "the error names file and line: {stderr}");
    assert!(stderr.contains("baud"), "{stderr}");
}

#[test]
fn a_listen_address_without_a_colon_is_refused_with_the_spelling_that_works() {
    for (given, hint) in
        [("10485", "write :10485 (every interface) or 127.0.0.1:10485"), ("localhost", "write localhost:10485")]
    {
        let out = Process::new(env!("CARGO_BIN_EXE_bms_exporter"))
            .args(["--demo", "--web.listen-address", given])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(&format!("--web.listen-address {given}: expected HOST:PORT or :PORT")), "{stderr}");
        assert!(stderr.contains(hint), "{stderr}");
    }
}

#[test]
fn a_listen_address_in_use_stops_the_start_naming_it() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let out = Process::new(env!("CARGO_BIN_EXE_bms_exporter"))
        .args(["--demo", "--web.listen-address", &addr])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains(&format!("--web.listen-address {addr}: cannot listen")), "{stderr}");
}

/// A self-signed certificate for 127.0.0.1 made by the openssl CLI: (certificate, key).
fn certificate(dir: &Path) -> (PathBuf, PathBuf) {
    let openssl = required_program("openssl", "openssl");
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    let status = Process::new(openssl)
        .args(["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-days", "2"])
        .args(["-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert!(status.success(), "openssl could not make a certificate");
    (cert, key)
}

/// `curl` status code for `url` (0 when the connection or handshake failed).
fn curl_status(url: &str, extra: &[&str]) -> u16 {
    let curl = required_program("curl", "curl");
    let out = Process::new(curl)
        .args(["-s", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "10"])
        .args(extra)
        .arg(url)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap_or(0)
}

#[test]
fn tls_and_basic_auth_from_the_web_config_file_guard_every_endpoint() {
    let scratch = Scratch::new("e2e-tls");
    let dir = scratch.0.clone();
    let (cert, key) = certificate(&dir);
    let hash = bcrypt::hash("s3cret", 4).unwrap();
    let web = dir.join("web.yml");
    std::fs::write(
        &web,
        format!(
            "tls_server_config:\n  cert_file: {}\n  key_file: {}\nbasic_auth_users:\n  prometheus: '{hash}'\n",
            cert.display(),
            key.display()
        ),
    )
    .unwrap();
    let addr = format!("127.0.0.1:{}", free_port());
    let _exporter =
        exporter(&dir, &["--demo", "--web.listen-address", &addr, "--web.config.file", web.to_str().unwrap()]);
    let cacert = cert.to_str().unwrap();
    let url = format!("https://{addr}/metrics");
    wait_for(&format!("the TLS exporter:\n{}", exporter_log(&dir)), Duration::from_secs(30), || {
        (curl_status(&url, &["--cacert", cacert, "-u", "prometheus:s3cret"]) == 200).then_some(())
    });
    assert_eq!(curl_status(&url, &["--cacert", cacert, "-u", "prometheus:wrong"]), 401);
    assert_eq!(curl_status(&url, &["--cacert", cacert, "-u", "nobody:s3cret"]), 401);
    assert_eq!(curl_status(&url, &["--cacert", cacert]), 401);
    assert_eq!(curl_status(&format!("https://{addr}/probe?target=demo-pace"), &["--cacert", cacert]), 401);
    // Plain HTTP to the TLS port is never served.
    assert_eq!(curl_status(&format!("http://{addr}/metrics"), &["-u", "prometheus:s3cret"]), 0);
    assert!(http_get(&addr, "/metrics", &[]).is_none_or(|r| r.status != 200));
}

#[test]
fn a_scrape_waits_no_longer_than_the_announced_timeout_for_a_device_that_does_not_answer() {
    let scratch = Scratch::new("e2e-deadline");
    let dir = scratch.0.clone();
    // A serial server that accepts connections and never answers: each poll would take many seconds.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let silent_addr = silent.local_addr().unwrap().to_string();
    let held = std::thread::spawn(move || {
        let mut peers = Vec::new();
        for stream in silent.incoming().take(4) {
            peers.push(stream);
        }
        peers.len()
    });
    let config = dir.join("bms.yaml");
    std::fs::write(
        &config,
        format!(
            "defaults:\n  timeout: 2s\n  retries: 3\n  max_age: 1s\n  stale_after: 30s\n\
             devices:\n  - name: mute\n    protocol: daly\n    tcp: {silent_addr}\n"
        ),
    )
    .unwrap();
    let addr = format!("127.0.0.1:{}", free_port());
    let _exporter = exporter(&dir, &["--config", config.to_str().unwrap(), "--web.listen-address", &addr]);
    wait_for("the exporter to listen", Duration::from_secs(30), || http_get(&addr, "/-/healthy", &[]));
    assert_eq!(http_get(&addr, "/-/ready", &[]).unwrap().status, 503, "not ready before the first poll ended");
    for announced in ["1", "2.5"] {
        let started = std::time::Instant::now();
        let r = http_get(&addr, "/metrics", &[("X-Prometheus-Scrape-Timeout-Seconds", announced)]).unwrap();
        let took = started.elapsed();
        let limit = Duration::from_secs_f64(announced.parse().unwrap());
        assert!(took < limit, "a scrape announced {announced} s took {took:?}");
        assert!(took >= limit / 2, "it waited for the device first ({took:?})");
        assert_eq!(r.status, 200);
        assert!(r.body.contains("bms_up{device=\"mute\"} 0"), "{}", r.body);
        assert!(!r.body.contains("bms_pack_voltage_volts{"), "no values without a reply");
    }
    drop(held);
}

/// The value series of `device` in a `/metrics` body (pack-scope families), each with its value as text.
fn value_series(body: &str, device: &str) -> BTreeMap<String, String> {
    let pack_families: Vec<&str> =
        names::ALL.iter().filter(|m| m.scope == names::Scope::Pack).map(|m| m.name).collect();
    let tag = format!("device=\"{device}\"");
    body.lines()
        .filter(|l| l.contains(&tag) && pack_families.iter().any(|f| l.starts_with(f)))
        .filter_map(|l| l.rsplit_once(' ').map(|(series, value)| (series.to_owned(), value.to_owned())))
        .collect()
}

pub(crate) fn scrape_body(addr: &str) -> String {
    let r = http_get(addr, "/metrics", &[("X-Prometheus-Scrape-Timeout-Seconds", "5")]).unwrap();
    assert_eq!(r.status, 200);
    r.body
}

fn up(body: &str, device: &str) -> bool {
    body.contains(&format!("bms_up{{device=\"{device}\"}} 1"))
}

#[test]
fn a_device_that_goes_away_keeps_every_value_until_stale_after_and_is_up_on_the_first_scrape_back() {
    const STALE_S: u64 = 8;
    let scratch = Scratch::new("e2e-away");
    let dir = scratch.0.clone();
    let daly_args = sim_args("daly", &["--cells", "8", "--temperatures", "2"]);
    let pace_args = sim_args("pace", &["--packs", "2", "--cells", "8"]);
    let (mut daly, tty) = Simulator::pty("e2e-away-daly", &daly_args);
    let mut pace = Simulator::tcp("e2e-away-pace", &pace_args);
    let pace_addr = pace.addr.clone().unwrap();
    let config = scratch.write(
        "bms.yaml",
        &format!(
            "defaults:\n  timeout: 300ms\n  retries: 1\n  request_gap: 0ms\n  max_age: 0s\n  stale_after: {STALE_S}s\n\
             devices:\n\
             \x20 - name: daly\n    protocol: daly\n    serial: {tty}\n\
             \x20 - name: pace\n    protocol: pace\n    tcp: {pace_addr}\n    pace: {{ address: 1, packs: all }}\n",
            tty = tty.display(),
        ),
    );
    let addr = format!("127.0.0.1:{}", free_port());
    let mut exporter = exporter(&dir, &["--config", config.to_str().unwrap(), "--web.listen-address", &addr]);
    wait_ready(&mut exporter, &addr, &dir);
    let (before, confirmed) = wait_for("both devices up", Duration::from_secs(20), || {
        // Every value in this body was confirmed by a poll that ran after `asked` (max_age is 0).
        let asked = Instant::now();
        let body = scrape_body(&addr);
        (up(&body, "daly") && up(&body, "pace")).then_some((body, asked))
    });
    let series: Vec<(&str, BTreeMap<String, String>)> =
        ["daly", "pace"].into_iter().map(|d| (d, value_series(&before, d))).collect();
    for (device, s) in &series {
        assert!(s.len() > 40, "{device} has only {} value series", s.len());
    }

    // Both go away (the PTY's link disappears as an unplugged adapter's node does). Until stale_after every
    // value series stays with its value (the battery is frozen: --time-scale 0), and bms_up says 0.
    daly.stop();
    let _ = std::fs::remove_file(&tty);
    pace.stop();
    let expires = confirmed + Duration::from_secs(STALE_S);
    let mut scrapes = 0;
    // A scrape that finds a link down may wait up to 2 s for the next reconnect attempt: the values it serves
    // are judged at its end, so only scrapes that ended well before the values could expire count.
    while Instant::now() + Duration::from_millis(3000) < expires {
        let body = scrape_body(&addr);
        if Instant::now() + Duration::from_millis(500) >= expires {
            break;
        }
        scrapes += 1;
        for (device, expected) in &series {
            assert!(!up(&body, device), "{device} up while away");
            assert_eq!(
                &value_series(&body, device),
                expected,
                "{device} lost or changed values after {scrapes} scrapes"
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(scrapes >= 5, "only {scrapes} scrapes in the window");
    let body = scrape_body(&addr);
    let io = |body: &str, device: &str| -> f64 {
        let line = format!("bms_poll_failures_total{{device=\"{device}\",reason=\"io\"}} ");
        body.lines().find_map(|l| l.strip_prefix(&line)).unwrap().parse().unwrap()
    };
    let polls = |body: &str, device: &str| -> f64 {
        let line = format!("bms_polls_total{{device=\"{device}\"}} ");
        body.lines().find_map(|l| l.strip_prefix(&line)).unwrap().parse().unwrap()
    };
    for device in ["daly", "pace"] {
        // One io failure per poll that found the link down, never one per planned request.
        assert!(io(&body, device) >= 1.0 && io(&body, device) <= polls(&body, device), "{device}");
    }

    // Past stale_after the values vanish; health stays.
    std::thread::sleep(expires.saturating_duration_since(Instant::now()) + Duration::from_millis(500));
    let body = scrape_body(&addr);
    for device in ["daly", "pace"] {
        assert!(value_series(&body, device).is_empty(), "{device} still has values past stale_after");
        assert!(body.contains(&format!("bms_polls_total{{device=\"{device}\"}}")), "{device} health");
    }

    // They come back: the first scrape after that finds both up (a reconnect attempt within its deadline).
    let daly = Simulator::pty_at(&daly.dir.clone(), &tty, &daly_args);
    let pace = Simulator::tcp_at(&pace.dir.clone(), &pace_addr, &pace_args);
    std::thread::sleep(Duration::from_millis(300));
    let started = Instant::now();
    let body = scrape_body(&addr);
    assert!(
        up(&body, "daly") && up(&body, "pace"),
        "not up on the first scrape back ({:?}):\n{body}",
        started.elapsed()
    );
    for (device, expected) in &series {
        assert_eq!(&value_series(&body, device), expected, "{device} values back");
    }
    drop((daly, pace));
}

/// The value of the series `series` (name and labels exactly as rendered) in a `/metrics` body.
pub(crate) fn series_value(body: &str, series: &str) -> Option<f64> {
    body.lines().find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

/// Unix time now, in seconds.
fn unix_now() -> f64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs_f64()
}

#[test]
fn energy_counters_grow_by_power_times_the_time_between_the_polls_behind_two_scrapes() {
    let scratch = Scratch::new("e2e-energy");
    let dir = scratch.0.clone();
    // Frozen (--time-scale 0) at seed 1: pack 1 charges and pack 2 discharges, each at a constant current.
    let pace = Simulator::tcp("e2e-energy-pace", &sim_args("pace", &["--packs", "2", "--cells", "8"]));
    // max_age 0: every scrape runs its own poll, and nothing else polls between the two scrapes below.
    let config = scratch.write(
        "bms.yaml",
        &format!(
            "defaults:\n  timeout: 300ms\n  retries: 1\n  request_gap: 0ms\n  max_age: 0s\n  stale_after: 30s\n\
             devices:\n  - name: pace\n    protocol: pace\n    tcp: {addr}\n    pace: {{ address: 1, packs: all }}\n",
            addr = pace.addr.as_deref().unwrap(),
        ),
    );
    let addr = format!("127.0.0.1:{}", free_port());
    let mut exporter = exporter(&dir, &["--config", config.to_str().unwrap(), "--web.listen-address", &addr]);
    wait_ready(&mut exporter, &addr, &dir);
    // A scrape and the Unix times just before it was sent and just after its answer arrived.
    let scrape = || {
        let sent = unix_now();
        let body = scrape_body(&addr);
        (body, sent, unix_now())
    };
    let (a, a_sent, a_back) = wait_for("pace up", Duration::from_secs(20), || {
        let (body, sent, back) = scrape();
        up(&body, "pace").then_some((body, sent, back))
    });
    std::thread::sleep(Duration::from_secs(2));
    let (b, b_sent, b_back) = scrape();
    assert!(up(&b, "pace"), "{b}");

    // Both scrapes were served by a poll of their own that succeeded: its end is the success timestamp, the very
    // time the energy was integrated to. That poll ended while its scrape was being answered.
    let polled = |body: &str| series_value(body, "bms_last_poll_success_timestamp_seconds{device=\"pace\"}").unwrap();
    let (t_a, t_b) = (polled(&a), polled(&b));
    assert!(a_sent <= t_a && t_a <= a_back, "poll a ended at {t_a}, outside its scrape [{a_sent}, {a_back}]");
    assert!(b_sent <= t_b && t_b <= b_back, "poll b ended at {t_b}, outside its scrape [{b_sent}, {b_back}]");
    let seconds = t_b - t_a;

    let mut directions = Vec::new();
    for pack in ["01", "02"] {
        let sel = format!("{{device=\"pace\",pack=\"{pack}\"}}");
        let at = |body: &str, name: &str| {
            series_value(body, &format!("{name}{sel}")).unwrap_or_else(|| panic!("no {name}{sel}:\n{body}"))
        };
        let (volts, amperes) = (at(&b, "bms_pack_voltage_volts"), at(&b, "bms_pack_current_amperes"));
        assert_eq!((at(&a, "bms_pack_voltage_volts"), at(&a, "bms_pack_current_amperes")), (volts, amperes));
        let (way, other) = if amperes > 0.0 { ("charged", "discharged") } else { ("discharged", "charged") };
        directions.push(way);
        let grew = |name: &str| at(&b, name) - at(&a, name);
        let ah = grew(&format!("bms_pack_{way}_ampere_hours_total"));
        let joules = grew(&format!("bms_pack_{way}_energy_joules_total"));
        // The two polls' values are equal, so the trapezoid between them is exact: the only difference left is
        // floating-point rounding of a handful of operations.
        let close = |what: &str, got: f64, want: f64| {
            assert!((got - want).abs() <= want.abs() * 1e-9, "pack {pack} {what}: grew {got}, expected {want}");
        };
        close("Ah", ah, amperes.abs() * seconds / 3600.0);
        close("J", joules, volts * amperes.abs() * seconds);
        // Bounded by the scrapes alone: the polls ended inside them, so the interval integrated is at least the
        // time from the end of scrape a to the start of scrape b, and at most the time from the start of a to the
        // end of b.
        let (least, most) = (b_sent - a_back, b_back - a_sent);
        assert!(least >= 1.9, "the scrapes were {least} s apart");
        assert!(ah >= amperes.abs() * least / 3600.0 * (1.0 - 1e-9), "pack {pack}: {ah} Ah in at least {least} s");
        assert!(ah <= amperes.abs() * most / 3600.0 * (1.0 + 1e-9), "pack {pack}: {ah} Ah in at most {most} s");
        // Nothing flowed the other way: those counters are there, at exactly 0.
        for body in [&a, &b] {
            assert_eq!(at(body, &format!("bms_pack_{other}_ampere_hours_total")), 0.0, "pack {pack}");
            assert_eq!(at(body, &format!("bms_pack_{other}_energy_joules_total")), 0.0, "pack {pack}");
        }
    }
    assert_eq!(directions, ["charged", "discharged"], "seed 1 must give one charging and one discharging pack");
    drop(pace);
}

#[test]
fn build_info_names_the_git_revision_the_binary_was_built_from() {
    // The build script asks git; outside a checkout (a source tarball) the revision is "unknown".
    let git = Process::new("git")
        .args(["-C", env!("CARGO_MANIFEST_DIR"), "rev-parse", "--short=12", "HEAD"])
        .output()
        .expect("git is needed to know which revision this checkout is");
    let expected = if git.status.success() {
        String::from_utf8(git.stdout).unwrap().trim().to_owned()
    } else {
        "unknown".to_owned()
    };
    let scratch = Scratch::new("e2e-build-info");
    let dir = scratch.0.clone();
    let addr = format!("127.0.0.1:{}", free_port());
    let mut exporter = exporter(&dir, &["--demo", "--web.listen-address", &addr]);
    wait_ready(&mut exporter, &addr, &dir);
    let body = http_get(&addr, "/metrics", &[]).unwrap().body;
    let line = body.lines().find(|l| l.starts_with("bms_exporter_build_info{")).expect("no build_info in /metrics");
    assert!(line.contains(&format!("revision=\"{expected}\"")), "expected revision {expected}: {line}");
}
