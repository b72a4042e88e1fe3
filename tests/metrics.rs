//! The `/metrics` body against independent readers: the official Python client's OpenMetrics parser
//! (`prometheus_client.openmetrics.parser`, installed by scripts/test.sh in the venv target/py) must accept a
//! rich render — real polls of simulated Daly and Pace buses, odd identity strings, a stale and a never-polled
//! device — and see every family of the table with its type, unit and samples; the same render in the Prometheus
//! text format must pass `promtool check metrics` and the Python client's text parser with the same samples
//! (tests/tests.rs `mod metrics`).

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Instant;

use bms_exporter::metrics::names::{self, Scope};
use bms_exporter::metrics::{DeviceView, ExporterView, Format, MqttView, ProcessView, ReloadView, render, render_as};
use bms_exporter::model::energy::Energy;
use bms_exporter::model::{CurrentSign, LevelAlarm, LevelAlarmKind, Retained, Sections};
use bms_exporter::poller::DeviceStatus;
use bms_exporter::protocol::daly::exchange::DalyExchange;
use bms_exporter::protocol::daly::{Address, Filler};
use bms_exporter::protocol::pace::VER_PACE;
use bms_exporter::protocol::pace::exchange::{PaceExchange, PackSelection};
use bms_exporter::protocol::{DecodeOptions, Exchange, Protocol};
use bms_exporter::session::{PollReport, Session, Settings};
use bms_exporter::simulator::Responder;
use bms_exporter::simulator::daly::DalyBus;
use bms_exporter::simulator::pace::{MASTER_ADR, PaceBus};
use serde_json::Value;

/// One poll of `exchange` against `bus` in simulated time, every request answered at once.
fn poll(exchange: &mut dyn Exchange, bus: &mut dyn Responder) -> PollReport {
    let mut now = Instant::now();
    let mut session = Session::new(exchange, Sections::all(), Settings::default(), now);
    for _ in 0..10_000 {
        if let Some(request) = session.poll_transmit(now)
            && let Some(response) = bus.respond(&request)
        {
            session.handle_bytes(now, &response.reply);
        }
        if session.is_done() {
            break;
        }
        now = now.max(session.poll_timeout().unwrap());
        session.handle_timeout(now);
    }
    assert!(session.is_done(), "the poll must end");
    let report = session.finish();
    assert!(report.succeeded(), "{:?}", report.failures);
    report
}

fn status(name: &str, last: PollReport) -> DeviceStatus {
    // The same values a minute apart: one interval integrated, so the energy counters have their series.
    let mut energy = Energy::default();
    energy.update(&last.device, 1_700_000_040.0, 60.0);
    energy.update(&last.device, 1_700_000_100.0, 60.0);
    DeviceStatus {
        name: name.to_owned(),
        last,
        last_poll_unix: 1_700_000_100.0,
        last_success_unix: Some(1_700_000_100.0),
        polls_total: 7,
        failures_total: BTreeMap::from([("timeout", 2)]),
        resync_bytes_total: 5,
        values: Retained::default(),
        energy,
    }
}

/// Two real buses plus the awkward cases, rendered as OpenMetrics.
fn rich_body() -> String {
    rich_render(Format::OpenMetrics, &ExporterView::default())
}

/// Two real buses plus the awkward cases, with the `exporter`'s own families, rendered in `format`.
fn rich_render(format: Format, exporter: &ExporterView) -> String {
    let options = DecodeOptions { current_sign: CurrentSign::Auto, ..DecodeOptions::default() };
    let mut daly = DalyExchange::new(vec![Address::Rs485], Filler::Zero, options);
    let daly = status("garage \"daly\"", poll(&mut daly, &mut DalyBus::new(1, 16, 4, 7)));

    let mut pace = PaceExchange::new(MASTER_ADR, PackSelection::All, VER_PACE);
    let mut rack = status("rack", poll(&mut pace, &mut PaceBus::new(3, 16, 6, 11)));
    let pack = rack.last.device.packs.first_mut().unwrap();
    pack.info.model = Some("LFP \"48V\" 100Ah \\ v2\nrev\tb".to_owned());
    pack.cell_alarms = vec![LevelAlarm { index: 2, kind: LevelAlarmKind::Unknown(0x33) }];
    pack.temperature_alarms = vec![LevelAlarm { index: 6, kind: LevelAlarmKind::AboveUpperLimit }];
    let stale = status("stale", rack.last.clone());

    let views = [
        DeviceView {
            name: &daly.name,
            protocol: Protocol::Daly,
            transport: "serial",
            status: Some(&daly),
            fresh: true,
            values: Some(&daly.last.device),
        },
        DeviceView {
            name: "rack",
            protocol: Protocol::Pace,
            transport: "tcp",
            status: Some(&rack),
            fresh: true,
            values: Some(&rack.last.device),
        },
        DeviceView {
            name: "stale",
            protocol: Protocol::Pace,
            transport: "tcp",
            status: Some(&stale),
            fresh: false,
            values: None,
        },
        DeviceView {
            name: "new",
            protocol: Protocol::Sinowealth,
            transport: "serial",
            status: None,
            fresh: false,
            values: None,
        },
    ];
    let mut body = String::new();
    render_as(format, &views, exporter, &mut body).unwrap();
    body
}

fn python() -> PathBuf {
    crate::util::venv_program("BMS_PYTHON", "python", Some("prometheus_client"), "prometheus-client==0.26.0")
}

/// Parse `body` with the official parser (`{parser}`: the OpenMetrics or the text one); the families it saw, as
/// JSON. Bytes go in raw (`sys.stdin.buffer`) so that no newline translation happens on the way.
const PARSE: &str = r#"
import json, sys
from prometheus_client.{parser} import text_string_to_metric_families
text = sys.stdin.buffer.read().decode("utf-8")
out = []
for f in text_string_to_metric_families(text):
    out.append({"name": f.name, "type": f.type, "unit": f.unit, "help": f.documentation,
                "samples": [{"name": s.name, "labels": s.labels, "value": s.value} for s in f.samples]})
print(json.dumps(out))
"#;

/// The families the official OpenMetrics parser reads in `body`; fails if it rejects it.
pub(crate) fn parse_with_python(body: &str) -> Vec<Value> {
    parse_with(body, "openmetrics.parser")
}

/// The families the official parser of the Prometheus text format reads in `body`; fails if it rejects it.
pub(crate) fn parse_text_with_python(body: &str) -> Vec<Value> {
    parse_with(body, "parser")
}

/// Run `command` with `input` on its standard input; its output once it exits.
fn with_stdin(command: &mut Command, input: &str) -> std::process::Output {
    let mut child = command.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    child.stdin.take().unwrap().write_all(input.as_bytes()).unwrap();
    child.wait_with_output().unwrap()
}

fn parse_with(body: &str, parser: &str) -> Vec<Value> {
    let out = with_stdin(Command::new(python()).args(["-c", &PARSE.replace("{parser}", parser)]), body);
    assert!(
        out.status.success(),
        "the Python parser rejected the body:\n{}\n{body}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice::<Vec<Value>>(&out.stdout).unwrap()
}

fn samples_of<'v>(families: &'v [Value], family: &str) -> &'v [Value] {
    families.iter().find(|f| f["name"] == family).and_then(|f| f["samples"].as_array()).map_or(&[], Vec::as_slice)
}

#[test]
fn the_official_python_parser_accepts_a_rich_body_with_every_family() {
    let body = rich_body();
    let families = parse_with_python(&body);

    let seen: Vec<(&str, &str, &str)> = families
        .iter()
        .map(|f| (f["name"].as_str().unwrap(), f["type"].as_str().unwrap(), f["unit"].as_str().unwrap()))
        .collect();
    let expected: Vec<(&str, &str, &str)> =
        names::ALL.iter().map(|m| (m.family(), m.kind.as_str(), m.unit.unwrap_or(""))).collect();
    assert_eq!(seen, expected, "families, types and units as the parser read them");

    let sample_lines = body.lines().filter(|l| !l.starts_with('#')).count();
    let parsed: usize = families.iter().map(|f| f["samples"].as_array().unwrap().len()).sum();
    assert_eq!(parsed, sample_lines, "every sample line was read");
    for m in names::ALL {
        let samples = samples_of(&families, m.family());
        assert!(!samples.is_empty(), "{} has no series in the rich body", m.name);
        assert!(samples.iter().all(|s| s["name"] == m.name), "{}", m.name);
        assert_eq!(families.iter().find(|f| f["name"] == m.family()).unwrap()["help"], m.help);
    }

    // Values and labels survive the trip: escaping, two-digit numbers, devices in their order.
    let info = samples_of(&families, names::PACK_INFO.family());
    let rack_model = info.iter().find(|s| s["labels"]["device"] == "rack").unwrap();
    assert_eq!(rack_model["labels"]["model"], "LFP \"48V\" 100Ah \\ v2\nrev\tb");
    let up: Vec<(&str, f64)> = samples_of(&families, "bms_up")
        .iter()
        .map(|s| (s["labels"]["device"].as_str().unwrap(), s["value"].as_f64().unwrap()))
        .collect();
    assert_eq!(up, [("garage \"daly\"", 1.0), ("rack", 1.0), ("stale", 0.0), ("new", 0.0)]);
    let rack_cells = samples_of(&families, "bms_cell_voltage_volts")
        .iter()
        .filter(|s| s["labels"]["device"] == "rack" && s["labels"]["pack"] == "03")
        .count();
    assert_eq!(rack_cells, 16, "the third Pace pack's cells");
    // Every sensor of a Pace pack has its limit series; the one level raised is 1.
    let levels = samples_of(&families, "bms_temperature_alarm_active");
    let active: Vec<&Value> = levels.iter().filter(|s| s["value"].as_f64() == Some(1.0)).collect();
    assert_eq!(active.len(), 1, "{active:?}");
    let level = &active[0]["labels"];
    assert_eq!((level["sensor"].as_str(), level["alarm"].as_str()), (Some("ambient"), Some("above_upper_limit")));
    assert!(levels.len() > active.len(), "the inactive limits are there too, as 0");

    // The stale and the never-polled device keep only health and identity.
    for m in names::ALL.iter().filter(|m| m.scope == Scope::Pack) {
        for device in ["stale", "new"] {
            assert!(samples_of(&families, m.family()).iter().all(|s| s["labels"]["device"] != device), "{}", m.name);
        }
    }
    let failures = samples_of(&families, "bms_poll_failures").iter().filter(|s| s["labels"]["device"] == "new").count();
    assert_eq!(failures, names::FAILURE_REASONS.len());
}

#[test]
fn the_official_python_parser_accepts_a_body_whose_value_families_are_empty() {
    let views = [DeviceView {
        name: "new",
        protocol: Protocol::Daly,
        transport: "serial",
        status: None,
        fresh: false,
        values: None,
    }];
    let mut body = String::new();
    render(&views, &mut body).unwrap();
    let families = parse_with_python(&body);
    assert_eq!(families.len(), names::ALL.len(), "every family is declared even without series");
    assert!(samples_of(&families, "bms_pack_voltage_volts").is_empty());
    assert_eq!(samples_of(&families, "bms_up").len(), 1);
}

/// What `promtool check metrics` (Prometheus 2.42) finds in the text body, sorted: all of it about names the
/// metric table fixes (and that dashboards, alerts and users query). `ampere_hours` is the unit node_exporter's
/// power_supply collector uses too, and the `_count` gauges are counts a BMS reports, not a summary's count.
/// Anything else promtool says — a missing HELP, a counter without `_total`, a parse error — fails the test.
pub(crate) const PROMTOOL_NAME_FINDINGS: [&str; 8] = [
    "bms_pack_cell_count non-histogram and non-summary metrics should not have \"_count\" suffix",
    "bms_pack_charged_ampere_hours_total use base unit \"seconds\" instead of \"hours\"",
    "bms_pack_cycle_count non-histogram and non-summary metrics should not have \"_count\" suffix",
    "bms_pack_design_capacity_ampere_hours use base unit \"seconds\" instead of \"hours\"",
    "bms_pack_discharged_ampere_hours_total use base unit \"seconds\" instead of \"hours\"",
    "bms_pack_full_capacity_ampere_hours use base unit \"seconds\" instead of \"hours\"",
    "bms_pack_remaining_capacity_ampere_hours use base unit \"seconds\" instead of \"hours\"",
    "bms_pack_temperature_sensor_count non-histogram and non-summary metrics should not have \"_count\" suffix",
];

/// Run `promtool check metrics` on `body`; fail unless it parses the body and finds exactly `expected` (sorted):
/// exit 0 and no output when that is empty, else exit 3, promtool's code for lint findings.
pub(crate) fn assert_promtool_finds(body: &str, expected: &[&str]) {
    let out = with_stdin(
        Command::new(crate::util::required_program("promtool", "prometheus")).args(["check", "metrics"]),
        body,
    );
    let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    let mut findings: Vec<&str> = said.lines().collect();
    findings.sort_unstable();
    assert_eq!(findings, expected, "promtool check metrics said:\n{said}\n{body}");
    let expected_code = if expected.is_empty() { 0 } else { 3 };
    assert_eq!(out.status.code(), Some(expected_code), "promtool check metrics: {}", out.status);
}

/// Every sample of `families` (a Python parser's output) as `name{labels}` → value.
pub(crate) fn sample_map(families: &[Value]) -> BTreeMap<String, f64> {
    let mut map = BTreeMap::new();
    for family in families {
        for sample in family["samples"].as_array().unwrap() {
            let labels: BTreeMap<&String, &Value> = sample["labels"].as_object().unwrap().iter().collect();
            let key = format!("{}{}", sample["name"].as_str().unwrap(), serde_json::to_string(&labels).unwrap());
            let value = sample["value"].as_f64().unwrap();
            assert!(map.insert(key.clone(), value).is_none(), "{key} twice");
        }
    }
    map
}

/// Each family of `families` (a Python text-parser output) as (name, type), in order.
pub(crate) fn text_families(families: &[Value]) -> Vec<(String, String)> {
    families.iter().map(|f| (f["name"].as_str().unwrap().to_owned(), f["type"].as_str().unwrap().to_owned())).collect()
}

/// The (name, type) the Python text parser gives each family of the table: a counter under its family name
/// (the parser strips `_total`, as its OpenMetrics twin does), an info family as the gauge `…_info`.
pub(crate) fn expected_text_families<'m>(metrics: impl Iterator<Item = &'m names::Metric>) -> Vec<(String, String)> {
    metrics
        .map(|m| match m.kind {
            names::Kind::Counter => (m.family().to_owned(), "counter".to_owned()),
            names::Kind::Info => (m.name.to_owned(), "gauge".to_owned()),
            names::Kind::Gauge => (m.name.to_owned(), "gauge".to_owned()),
        })
        .collect()
}

/// Every family of the table with a series: the rich devices, a running MQTT publisher, a reload state and every
/// process figure.
fn everything() -> ExporterView {
    ExporterView {
        mqtt: Some(MqttView {
            connected: true,
            messages_published: 120,
            publish_bytes: 34_567,
            connection_errors: 1,
            last_publish_unix: Some(1_700_000_099.5),
            commands: [1, 0, 2, 0, 1],
        }),
        reload: Some(ReloadView { successful: true, last_success_unix: 1_700_000_000.25 }),
        process: Some(ProcessView {
            cpu_seconds: Some(12.34),
            max_fds: Some(524_288),
            open_fds: Some(17),
            resident_memory_bytes: Some(21_118_976),
            start_time_seconds: Some(1_700_000_000.12),
            virtual_memory_bytes: Some(169_603_072),
            virtual_memory_max_bytes: Some(u64::MAX),
        }),
    }
}

#[test]
fn the_text_body_of_a_rich_render_passes_promtool_and_the_python_text_parser_with_the_openmetrics_values() {
    let exporter = everything();
    let text = rich_render(Format::Text, &exporter);
    assert_promtool_finds(&text, &PROMTOOL_NAME_FINDINGS);

    let families = parse_text_with_python(&text);
    assert_eq!(text_families(&families), expected_text_families(names::every()), "families and types");
    for family in &families {
        assert!(!family["samples"].as_array().unwrap().is_empty(), "{} has no series", family["name"]);
        assert_eq!(family["unit"], "", "the text format has no units");
    }
    let sample_lines = text.lines().filter(|l| !l.starts_with('#')).count();
    let from_text = sample_map(&families);
    assert_eq!(from_text.len(), sample_lines, "every sample line was read");

    // The same samples with the same values as the OpenMetrics body of the same render.
    let openmetrics = rich_render(Format::OpenMetrics, &exporter);
    assert_eq!(from_text, sample_map(&parse_with_python(&openmetrics)));
    // The odd identity string survives the text format's escaping too.
    let model = families
        .iter()
        .find(|f| f["name"] == "bms_pack_info")
        .and_then(|f| f["samples"].as_array()?.iter().find(|s| s["labels"]["device"] == "rack").cloned())
        .unwrap();
    assert_eq!(model["labels"]["model"], "LFP \"48V\" 100Ah \\ v2\nrev\tb");
}

#[test]
fn the_text_body_of_a_body_without_series_passes_promtool_and_the_python_text_parser() {
    let views = [DeviceView {
        name: "new",
        protocol: Protocol::Daly,
        transport: "serial",
        status: None,
        fresh: false,
        values: None,
    }];
    let mut text = String::new();
    let exporter = ExporterView { process: Some(ProcessView::default()), ..ExporterView::default() };
    render_as(Format::Text, &views, &exporter, &mut text).unwrap();
    // Without value series promtool has nothing to say: it lints only families with samples (the names it
    // objects to are all pack values). Exit 0, no output.
    assert_promtool_finds(&text, &[]);
    let families = parse_text_with_python(&text);
    assert_eq!(text_families(&families), expected_text_families(names::ALL.iter().chain(names::PROCESS).copied()));
}
