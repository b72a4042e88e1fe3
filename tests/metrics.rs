//! The `/metrics` body against an independent reader: the official Python client's OpenMetrics parser
//! (`prometheus_client.openmetrics.parser`, installed by scripts/test.sh in the venv target/py) must accept a
//! rich render — real polls of simulated Daly and Pace buses, odd identity strings, a stale and a never-polled
//! device — and see every family of the table with its type, unit and samples (tests/tests.rs `mod metrics`).

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Instant;

use bms_exporter::metrics::names::{self, Scope};
use bms_exporter::metrics::{DeviceView, render};
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

/// Two real buses plus the awkward cases, rendered.
fn rich_body() -> String {
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
    render(&views, &mut body).unwrap();
    body
}

fn python() -> PathBuf {
    crate::util::venv_program("BMS_PYTHON", "python", Some("prometheus_client"), "prometheus-client==0.26.0")
}

/// Parse `body` with the official parser; the families it saw, as JSON. Bytes go in raw (`sys.stdin.buffer`)
/// so that no newline translation happens on the way.
const PARSE: &str = r#"
import json, sys
from prometheus_client.openmetrics.parser import text_string_to_metric_families
text = sys.stdin.buffer.read().decode("utf-8")
out = []
for f in text_string_to_metric_families(text):
    out.append({"name": f.name, "type": f.type, "unit": f.unit, "help": f.documentation,
                "samples": [{"name": s.name, "labels": s.labels, "value": s.value} for s in f.samples]})
print(json.dumps(out))
"#;

pub(crate) fn parse_with_python(body: &str) -> Vec<Value> {
    let mut child = Command::new(python())
        .args(["-c", PARSE])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(body.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
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
