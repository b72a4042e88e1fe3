//! The bus worker layer end to end: `poller::spawn` with real transports (PTYs and TCP) against `bms_exporter
//! simulate` processes, checking every value against the simulator's truth file and every failure against the
//! worker's counters (tests/tests.rs `mod bus`).

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bms_exporter::model::energy::PackEnergy;
use bms_exporter::model::{CurrentSign, DeviceSnapshot, PackSnapshot, Section, Sections};
use bms_exporter::poller::{self, BusHandle, BusSpec, DeviceSpec, DeviceStatus};
use bms_exporter::protocol::daly::exchange::DalyExchange;
use bms_exporter::protocol::daly::{Address, Filler};
use bms_exporter::protocol::daly_modbus::Map;
use bms_exporter::protocol::daly_modbus::exchange::DalyModbusExchange;
use bms_exporter::protocol::pace::VER_PACE;
use bms_exporter::protocol::pace::exchange::{PaceExchange, PackSelection};
use bms_exporter::protocol::sinowealth::CheckPolicy;
use bms_exporter::protocol::sinowealth::exchange::SinowealthExchange;
use bms_exporter::protocol::{DecodeOptions, Exchange};
use bms_exporter::session::Settings;
use bms_exporter::transport::{self, Parity, SerialSettings, TcpSettings, TransportError, TransportSettings};

use crate::util::Simulator;

const PROTOCOLS: [&str; 4] = ["daly", "daly-modbus", "sinowealth", "pace"];

/// Every section but `info`: identity reads are optional and some variants refuse them (bug (a) on D2), which
/// says nothing about the bus layer under test here.
fn sections() -> Sections {
    Section::ALL.into_iter().filter(|s| *s != Section::Info).fold(Sections::none(), Sections::with)
}

/// The exchange a protocol's default address resolves to, as `read` builds it.
fn exchange(protocol: &str) -> Box<dyn Exchange> {
    exchange_at(protocol, &[Address::Rs485])
}

/// The exchange of `protocol`, reaching these Daly addresses (ignored by the other protocols).
fn exchange_at(protocol: &str, daly: &[Address]) -> Box<dyn Exchange> {
    let options = DecodeOptions { current_sign: CurrentSign::Auto, ..DecodeOptions::default() };
    match protocol {
        "daly" => Box::new(DalyExchange::new(daly.to_vec(), Filler::Zero, options)),
        "daly-modbus" => Box::new(DalyModbusExchange::new(Map::D2, options)),
        "sinowealth" => Box::new(SinowealthExchange::new(CheckPolicy::Verify)),
        "pace" => Box::new(PaceExchange::new(1, PackSelection::All, VER_PACE)),
        other => panic!("no protocol {other}"),
    }
}

/// A simulator of `protocol` that answers at once with frozen values, plus `extra` flags (which replace the
/// defaults they name).
fn sim_args<'a>(protocol: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec!["--protocol", protocol, "--time-scale", "0"];
    // Sinowealth boards carry at most 10 cells; 8 everywhere keeps the frames alike and short.
    for (flag, value) in [("--baud", "0"), ("--latency-ms", "0"), ("--cells", "8")] {
        if !extra.contains(&flag) {
            args.extend([flag, value]);
        }
    }
    args.extend_from_slice(extra);
    args
}

/// Timings for a simulator that answers at once (`--baud 0 --latency-ms 0`): no gap between requests, and a
/// timeout that is only ever waited out when a reply is really lost, so it can be generous towards a loaded
/// test machine.
fn fast(retries: u32) -> Settings {
    Settings { timeout: Duration::from_secs(2), retries, request_gap: Duration::ZERO, ..Settings::default() }
}

fn tcp(addr: &str) -> TransportSettings {
    TransportSettings::Tcp(TcpSettings { address: addr.to_owned(), connect_timeout: Duration::from_secs(2) })
}

fn serial(path: &Path) -> TransportSettings {
    TransportSettings::Serial(SerialSettings { path: path.to_owned(), baud: 9600, parity: Parity::None })
}

fn device(name: &str, exchange: Box<dyn Exchange>) -> DeviceSpec {
    DeviceSpec { name: name.to_owned(), exchange, sections: sections() }
}

/// The `stale_after` of the buses here: longer than any test's pause between polls, so energy integrates.
const STALE_AFTER: Duration = Duration::from_secs(60);

fn spawn_one(transport: TransportSettings, settings: Settings, protocol: &str) -> BusHandle {
    poller::spawn(BusSpec {
        transport,
        settings,
        devices: vec![device(protocol, exchange(protocol))],
        stale_after: STALE_AFTER,
    })
}

/// A fresh poll of device `index`.
async fn poll(bus: &BusHandle, index: usize) -> Arc<DeviceStatus> {
    tokio::time::timeout(Duration::from_secs(10), bus.snapshot(index, Duration::ZERO))
        .await
        .expect("a poll must end within its timeouts")
        .expect("the worker is alive")
}

/// Half a step of the unit each protocol reports a field in, so a one-step error (a flipped low bit) is caught
/// while honest rounding passes.
fn tolerances(protocol: &str) -> (f64, f64, f64, f64) {
    // (volts, amperes, state-of-charge ratio, ampere-hours)
    match protocol {
        "daly" => (0.05, 0.05, 0.0005, 0.0005),
        "daly-modbus" => (0.05, 0.05, 0.0005, 0.05),
        // RSOC is a whole percentage on this chip.
        "sinowealth" => (0.0005, 0.0005, 0.005, 0.0005),
        "pace" => (0.0005, 0.005, 0.0005, 0.005),
        _ => unreachable!(),
    }
}

fn close(what: &str, got: Option<f64>, want: Option<f64>, tolerance: f64) {
    if let Some(got) = got {
        let want = want.unwrap_or_else(|| panic!("{what}: got {got}, but the truth has no value"));
        assert!((got - want).abs() <= tolerance + 1e-9, "{what}: got {got}, truth {want} (±{tolerance})");
    }
}

/// Every value `got` holds equals the truth; values it lacks are not judged (a failed request leaves a gap).
fn assert_true_values(protocol: &str, got: &PackSnapshot, want: &PackSnapshot) {
    let (volts, amperes, ratio, ah) = tolerances(protocol);
    let p = got.pack;
    close(&format!("{protocol} pack {p} voltage"), got.voltage_volts, want.voltage_volts, volts);
    close(&format!("{protocol} pack {p} current"), got.current_amperes, want.current_amperes, amperes);
    close(&format!("{protocol} pack {p} soc"), got.state_of_charge_ratio, want.state_of_charge_ratio, ratio);
    close(
        &format!("{protocol} pack {p} remaining"),
        got.remaining_capacity_ampere_hours,
        want.remaining_capacity_ampere_hours,
        ah,
    );
    if got.cycle_count.is_some() {
        assert_eq!(got.cycle_count, want.cycle_count, "{protocol} pack {p} cycles");
    }
    for (name, g, w) in [
        ("charge mosfet", got.charge_mosfet_enabled, want.charge_mosfet_enabled),
        ("discharge mosfet", got.discharge_mosfet_enabled, want.discharge_mosfet_enabled),
    ] {
        if g.is_some() {
            assert_eq!(g, w, "{protocol} pack {p} {name}");
        }
    }
    assert!(got.cell_volts.len() <= want.cell_volts.len(), "{protocol} pack {p}: {} cells", got.cell_volts.len());
    for (i, (g, w)) in got.cell_volts.iter().zip(&want.cell_volts).enumerate() {
        close(&format!("{protocol} pack {p} cell {}", i + 1), *g, *w, 0.0005);
    }
}

/// Every pack of a snapshot is a pack of the truth and holds only true values (gaps are allowed).
fn assert_snapshot_true(protocol: &str, got: &DeviceSnapshot, truth: &DeviceSnapshot) {
    for pack in &got.packs {
        let want = truth
            .packs
            .iter()
            .find(|t| t.pack == pack.pack)
            .unwrap_or_else(|| panic!("{protocol}: pack {} is not in the truth", pack.pack));
        assert_true_values(protocol, pack, want);
    }
}

/// A successful poll gave every pack of the truth with all its core values.
fn assert_complete(protocol: &str, status: &DeviceStatus, truth: &DeviceSnapshot) {
    assert!(status.last.succeeded(), "{protocol}: poll failed: {:?}", status.last.failures);
    let got = &status.last.device;
    assert_eq!(got.packs.len(), truth.packs.len(), "{protocol}: packs");
    for (g, w) in got.packs.iter().zip(&truth.packs) {
        assert_eq!(g.pack, w.pack);
        assert!(g.voltage_volts.is_some() && g.current_amperes.is_some(), "{protocol}: no SOC values");
        assert_eq!(g.cell_volts.len(), w.cell_volts.len(), "{protocol}: cell count");
        assert!(g.cell_volts.iter().all(Option::is_some), "{protocol}: missing cells");
        assert_true_values(protocol, g, w);
    }
}

/// The fault kinds at a rate rare enough that requests between strikes succeed; `delay` and `silent` last a
/// little longer than the reply timeout, so the late reply lands in the next request's window.
const FAULTS: [&str; 9] = [
    "drop=0.25",
    "corrupt=0.25",
    "truncate=0.25",
    "delay:0.15=0.25",
    "garbage=0.25",
    "echo=0.25",
    "wrong_command=0.25",
    "silent:0.15=0.25",
    "close=0.25",
];

/// What the worker's counters must show once `kind` has struck, given the totals before and after a poll.
fn struck(kind: &str, before: &DeviceStatus, after: &DeviceStatus) -> bool {
    let grew = |reason: &str| after.failures_total.get(reason) > before.failures_total.get(reason);
    match kind {
        "drop" | "delay" | "silent" => grew("timeout"),
        "corrupt" => grew("checksum"),
        // Bytes arrived and then stopped: that is a truncated reply, not silence.
        "truncate" => grew("truncated"),
        "garbage" => after.resync_bytes_total > before.resync_bytes_total,
        // A reply to another command must be refused; which check catches it depends on the protocol.
        "wrong_command" => after.last.failures.iter().any(|f| f.error.reason() != "io"),
        "close" => grew("io"),
        // An echo is recognised and dropped without a trace in the counters; `fault_case` sees it in the bytes.
        "echo" => false,
        _ => unreachable!(),
    }
}

/// What [`struck`] looks for, for failure messages.
fn evidence(kind: &str) -> &'static str {
    match kind {
        "drop" | "delay" | "silent" => "a timeout failure",
        "corrupt" => "a checksum failure",
        "truncate" => "a truncated failure",
        "garbage" => "resync bytes",
        "wrong_command" => "a failure other than io",
        "close" => "an io failure",
        "echo" => "a successful poll with more bytes than another of the same requests",
        _ => unreachable!(),
    }
}

/// The sections the fault matrix polls: one or two requests per poll (eight on Sinowealth with four cells, one
/// per register), so that faults strike often relative to the time spent.
fn matrix_sections() -> Sections {
    Sections::none().with(Section::Soc).with(Section::Cells)
}

/// One protocol under one fault, on its own TCP simulator and worker: no strike becomes a value, strikes are
/// counted, requests after a strike are answered, and once the fault is gone the same worker polls cleanly.
async fn fault_case(protocol: &'static str, fault: &'static str) -> String {
    let kind = fault.split(['=', ':']).next().unwrap();
    let started = Instant::now();
    let name = format!("fault-{protocol}-{kind}");
    let faulty = sim_args(protocol, &["--cells", "4", "--seed", "5", "--fault", fault]);
    let mut sim = tokio::task::spawn_blocking({
        let name = name.clone();
        move || Simulator::tcp(&name, &faulty)
    })
    .await
    .unwrap();
    let addr = sim.addr.clone().unwrap();
    let truth = sim.truth();
    // No retries: every struck request fails and is counted, and no retry can paper over a bad value. Strikes
    // that lose a reply cost a timeout each, so it is short here; a fault-free reply still takes well under it.
    // A Sinowealth reply is taken only once the line has been quiet for the drain time (100 ms: its replies
    // have no start byte, so only their end frames them), so its timeout must exceed that, and its polls are
    // slower.
    let sinowealth = protocol == "sinowealth";
    let timeout = match kind {
        "garbage" | "echo" => 2000,
        _ if sinowealth => 150,
        _ => 50,
    };
    let settings = Settings { timeout: Duration::from_millis(timeout), ..fast(0) };
    let bus = poller::spawn(BusSpec {
        transport: tcp(&addr),
        settings,
        devices: vec![DeviceSpec { name: name.clone(), exchange: exchange(protocol), sections: matrix_sections() }],
        stale_after: STALE_AFTER,
    });

    let deadline = Instant::now() + Duration::from_secs(if sinowealth { 10 } else { 4 });
    let mut before = poll(&bus, 0).await;
    assert_snapshot_true(protocol, &before.last.device, &truth);
    let (mut strikes, mut recovered, mut polls) = (0, false, 1);
    // Bytes received by polls whose every request was answered, by request count: an echo shows up as a poll
    // that got more bytes than another poll of the same requests.
    let mut clean_bytes: std::collections::BTreeMap<u32, (u64, u64)> = Default::default();
    while polls < 6 || strikes == 0 || !recovered {
        assert!(
            Instant::now() < deadline,
            "{protocol} {kind}: after {polls} polls: {strikes} strikes seen as {}, recovered {recovered}; \
             failures {:?}, resync {}; last failures {:?}; the simulator said:\n{}",
            evidence(kind),
            before.failures_total,
            before.resync_bytes_total,
            before.last.failures,
            sim.lines.lock().unwrap().join("\n")
        );
        let after = poll(&bus, 0).await;
        polls += 1;
        // The heart of it: whatever the fault did, every value the worker serves is the true one.
        assert_snapshot_true(protocol, &after.last.device, &truth);
        let report = &after.last;
        if report.succeeded() {
            let (low, high) = clean_bytes.entry(report.requests_sent).or_insert((u64::MAX, 0));
            *low = (*low).min(report.bytes_received);
            *high = (*high).max(report.bytes_received);
        }
        let echoed = kind == "echo" && clean_bytes.values().any(|(low, high)| high > low);
        // A request answered after an earlier strike: the worker did not stay wedged (this poll may be struck too).
        recovered |= strikes > 0 && report.answered > 0;
        if struck(kind, &before, &after) || (echoed && strikes == 0) {
            strikes += 1;
        }
        if matches!(kind, "garbage" | "echo") {
            // Noise around a good reply costs nothing: the reply is still taken, first time.
            assert!(report.failures.is_empty(), "{protocol} {kind}: a reply was lost: {:?}", report.failures);
        }
        if report.answered == 0 && report.failures.iter().all(|f| f.error.reason() == "io" || f.attempts == 0) {
            // The link is down and the worker waits out its reconnect backoff; do not spin meanwhile.
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        before = after;
    }
    let log = format!(
        "{protocol} {kind}: {:?} polls={polls} failures={:?} resync={}",
        started.elapsed(),
        before.failures_total,
        before.resync_bytes_total
    );

    // The fault goes away: the same worker finds a clean board (the same seed: the same battery) at the address.
    sim.stop();
    let dir = sim.dir.clone();
    let clean = sim_args(protocol, &["--cells", "4", "--seed", "5"]);
    let sim2 = tokio::task::spawn_blocking(move || Simulator::tcp_at(&dir, &addr, &clean)).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(4);
    loop {
        let status = poll(&bus, 0).await;
        assert_snapshot_true(protocol, &status.last.device, &truth);
        if status.last.succeeded() {
            let got = &status.last.device.packs[0];
            assert_eq!(got.cell_volts.len(), 4, "{protocol} {kind}: cells after recovery");
            assert!(got.voltage_volts.is_some(), "{protocol} {kind}: no voltage after recovery");
            assert_snapshot_true(protocol, &status.last.device, &sim2.truth());
            break;
        }
        assert!(Instant::now() < deadline, "{protocol} {kind}: no poll succeeded after the fault went away");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    drop(sim);
    format!("{log}; clean again after {:?}", started.elapsed())
}

/// Wait for every task of `tasks` and fail with all their panics, so one failing case does not hide another.
async fn expect_all(mut tasks: tokio::task::JoinSet<String>) {
    let total = tasks.len();
    let mut failed = Vec::new();
    while let Some(result) = tasks.join_next().await {
        match result {
            Ok(line) => eprintln!("{line}"),
            Err(error) => {
                let payload = error.into_panic();
                let message = payload
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| payload.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                    .unwrap_or_default();
                failed.push(message);
            }
        }
    }
    assert!(failed.is_empty(), "{} of {total} cases failed:\n{}", failed.len(), failed.join("\n"));
}

/// Every fault kind against one protocol, concurrently.
async fn fault_matrix(protocol: &'static str) {
    let mut tasks = tokio::task::JoinSet::new();
    for fault in FAULTS {
        tasks.spawn(fault_case(protocol, fault));
    }
    expect_all(tasks).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn daly_faults_never_become_values_are_counted_and_pass() {
    fault_matrix("daly").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn daly_modbus_faults_never_become_values_are_counted_and_pass() {
    fault_matrix("daly-modbus").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sinowealth_faults_never_become_values_are_counted_and_pass() {
    fault_matrix("sinowealth").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pace_faults_never_become_values_are_counted_and_pass() {
    fault_matrix("pace").await;
}

/// A TCP simulator and its stderr lines, for the `requests=… replies=…` line it prints when a client goes (the
/// bus worker's connection closes when the last handle is dropped).
fn tcp_logged(name: &str, args: &[&str]) -> (Simulator, Arc<Mutex<Vec<String>>>) {
    let sim = Simulator::tcp(name, args);
    let lines = Arc::clone(&sim.lines);
    (sim, lines)
}

/// The `requests=N` the simulator printed for the first client that went away, waiting up to 5 s for it.
async fn requests_seen(lines: &Mutex<Vec<String>>) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let gone = lines.lock().unwrap().iter().find(|l| l.contains(" gone: ")).cloned();
        if let Some(line) = gone {
            let field = line.split_whitespace().find_map(|w| w.strip_prefix("requests=")).unwrap();
            return field.parse().unwrap();
        }
        assert!(Instant::now() < deadline, "the simulator never saw the client go: {:?}", lines.lock().unwrap());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_callers_share_one_poll_and_max_age_serves_the_cached_snapshot() {
    // 40 ms per reply makes a poll (six or seven requests) long enough that every caller below asks while it
    // runs, even on a loaded machine.
    let (sim, lines) = tcp_logged("singleflight", &sim_args("daly", &["--latency-ms", "40"]));
    let bus = spawn_one(tcp(sim.addr.as_deref().unwrap()), fast(0), "daly");

    let callers: Vec<_> = (0..16)
        .map(|_| {
            let bus = bus.clone();
            tokio::spawn(async move { bus.snapshot(0, Duration::ZERO).await.unwrap() })
        })
        .collect();
    let mut got = Vec::new();
    for caller in callers {
        got.push(caller.await.unwrap());
    }
    let first = &got[0];
    assert_complete("daly", first, &sim.truth());
    assert_eq!(first.polls_total, 1, "16 concurrent callers must share one poll");
    assert!(got.iter().all(|s| Arc::ptr_eq(s, first)), "every caller gets the same snapshot");

    // A caller content with an older snapshot gets the cached one: same object, no poll.
    let cached = bus.snapshot(0, Duration::from_secs(60)).await.unwrap();
    assert!(Arc::ptr_eq(&cached, first));
    // One that is not runs a new poll.
    let fresh = poll(&bus, 0).await;
    assert_eq!(fresh.polls_total, 2);
    assert!(fresh.last.finished > first.last.finished);
    assert_complete("daly", &fresh, &sim.truth());
    // An unknown device is refused, and the worker keeps serving the known one.
    assert!(bus.snapshot(5, Duration::ZERO).await.is_err());
    assert!(Arc::ptr_eq(&bus.snapshot(0, Duration::from_secs(60)).await.unwrap(), &fresh));

    // The bus saw exactly the requests of two polls.
    let sent = u64::from(first.last.requests_sent + fresh.last.requests_sent);
    drop(bus);
    assert_eq!(requests_seen(&lines).await, sent, "requests on the wire vs the two polls' reports");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_daly_boards_on_one_bus_read_as_one_device_and_as_two_devices() {
    let (sim, link) = Simulator::pty("boards", &sim_args("daly", &["--boards", "2"]));
    let truth = sim.truth();
    assert_eq!(truth.packs.len(), 2);
    let boards = |list: &[Address]| exchange_at("daly", list);
    let bus = poller::spawn(BusSpec {
        transport: serial(&link),
        settings: fast(1),
        devices: vec![
            device("both", boards(&[Address::Board(1), Address::Board(2)])),
            device("first", boards(&[Address::Board(1)])),
            device("second", boards(&[Address::Board(2)])),
        ],
        stale_after: STALE_AFTER,
    });
    assert_eq!(bus.devices(), ["both", "first", "second"]);
    // Asked at once: the worker takes them one after another on its single port.
    let (both, first, second) = tokio::join!(poll(&bus, 0), poll(&bus, 1), poll(&bus, 2));
    assert_complete("daly", &both, &truth);
    for (status, board) in [(&first, 1u8), (&second, 2)] {
        assert!(status.last.succeeded(), "board {board}: {:?}", status.last.failures);
        let packs = &status.last.device.packs;
        assert_eq!(packs.iter().map(|p| p.pack).collect::<Vec<_>>(), [board], "board {board}'s device");
        let want = DeviceSnapshot { packs: vec![truth.packs[usize::from(board) - 1].clone()] };
        assert_complete("daly", status, &want);
    }
    // The two boards are different batteries, so a mix-up would show.
    assert_ne!(truth.packs[0].cell_volts, truth.packs[1].cell_volts);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_four_pack_pace_master_is_read_with_all_packs_requests() {
    let (sim, lines) = tcp_logged("pace4", &sim_args("pace", &["--packs", "4"]));
    let truth = sim.truth();
    assert_eq!(truth.packs.len(), 4);
    let bus = spawn_one(tcp(sim.addr.as_deref().unwrap()), fast(0), "pace");
    let status = poll(&bus, 0).await;
    assert_complete("pace", &status, &truth);
    // Poll economy (docs/protocols/pace.md#poll-plan): one analog and one status read for all four packs, not two per
    // pack.
    assert_eq!(status.last.requests_sent, 2, "requests for 4 packs");
    drop(bus);
    assert_eq!(requests_seen(&lines).await, 2, "requests the simulator saw");
}

/// Poll until a poll succeeds (the worker reconnects on its own backoff), failing after `within`.
async fn poll_until_success(
    bus: &BusHandle,
    protocol: &str,
    truth: &DeviceSnapshot,
    within: Duration,
) -> Arc<DeviceStatus> {
    let deadline = Instant::now() + within;
    loop {
        let status = poll(bus, 0).await;
        assert_snapshot_true(protocol, &status.last.device, truth);
        if status.last.succeeded() {
            return status;
        }
        assert!(
            Instant::now() < deadline,
            "{protocol}: no poll succeeded within {within:?}: {:?}",
            status.last.failures
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// While the device is away, polls fail as `io` and serve no invented values; the last success stays put.
async fn assert_away(bus: &BusHandle, protocol: &str, truth: &DeviceSnapshot, last_ok: &DeviceStatus) {
    for _ in 0..2 {
        let status = poll(bus, 0).await;
        assert!(!status.last.succeeded(), "{protocol}: a poll succeeded with the device unplugged");
        assert_eq!(status.last.answered, 0);
        assert!(status.failures_total.get("io") > last_ok.failures_total.get("io"), "{:?}", status.failures_total);
        assert_eq!(status.last_success_unix, last_ok.last_success_unix);
        assert_snapshot_true(protocol, &status.last.device, truth);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unplugged_pty_device_fails_its_polls_and_is_read_again_when_it_returns() {
    let args = sim_args("daly", &[]);
    let (mut sim, link) = Simulator::pty("replug", &args);
    let truth = sim.truth();
    let bus = spawn_one(serial(&link), fast(0), "daly");
    let before = poll(&bus, 0).await;
    assert_complete("daly", &before, &truth);

    sim.stop();
    // SIGKILL leaves the link dangling; another test's new PTY could reuse its /dev/pts number, so remove it.
    std::fs::remove_file(&link).unwrap();
    assert_away(&bus, "daly", &truth, &before).await;

    let back = tokio::task::spawn_blocking({
        let (dir, link) = (sim.dir.clone(), link.clone());
        move || Simulator::pty_at(&dir, &link, &args)
    })
    .await
    .unwrap();
    // The same worker reopens the path once its backoff (0.5 s, then 1 s) allows.
    let after = poll_until_success(&bus, "daly", &truth, Duration::from_secs(4)).await;
    assert_complete("daly", &after, &back.truth());
    assert!(after.last_success_unix > before.last_success_unix);
    assert!(after.polls_total >= before.polls_total + 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tcp_server_that_goes_away_fails_its_polls_and_is_read_again_when_it_returns() {
    let args = sim_args("pace", &["--packs", "2"]);
    let mut sim = Simulator::tcp("retcp", &args);
    let addr = sim.addr.clone().unwrap();
    let truth = sim.truth();
    let bus = spawn_one(tcp(&addr), fast(0), "pace");
    let before = poll(&bus, 0).await;
    assert_complete("pace", &before, &truth);

    sim.stop();
    assert_away(&bus, "pace", &truth, &before).await;

    let back = tokio::task::spawn_blocking({
        let dir = sim.dir.clone();
        move || Simulator::tcp_at(&dir, &addr, &args)
    })
    .await
    .unwrap();
    let after = poll_until_success(&bus, "pace", &truth, Duration::from_secs(4)).await;
    assert_complete("pace", &after, &back.truth());
    assert!(after.last_success_unix > before.last_success_unix);
}

#[tokio::test]
async fn a_held_serial_port_is_busy_for_a_second_opener_and_a_second_process() {
    let (sim, link) = Simulator::pty("busy", &sim_args("daly", &[]));
    let held = transport::open(&serial(&link)).await.unwrap();
    match transport::open(&serial(&link)).await {
        Err(error @ TransportError::PortBusy { .. }) => {
            let message = error.to_string();
            assert!(message.contains("busy") && message.contains(&*link.to_string_lossy()), "{message}");
        }
        other => panic!("a second open of a held port: {other:?}"),
    }
    let read = || {
        tokio::process::Command::new(env!("CARGO_BIN_EXE_bms_exporter"))
            .args(["read", "--protocol", "daly", "--timeout-ms", "200", "--retry", "0", "soc", "--serial"])
            .arg(&link)
            .output()
    };
    let out = read().await.unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "read on a held port succeeded: {stderr}");
    assert!(stderr.contains("busy"), "{stderr}");

    // Released, the port serves the same command, so "busy" was the hold and nothing else.
    drop(held);
    let out = read().await.unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let got = json["packs"][0]["soc"]["voltage_volts"].as_f64();
    close("read voltage", got, sim.truth().packs[0].voltage_volts, 0.05);
    assert!(got.is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_before_every_reply_is_skipped_counted_and_the_values_still_decode() {
    let mut tasks = tokio::task::JoinSet::new();
    for protocol in PROTOCOLS {
        tasks.spawn(async move {
            let (sim, link) = tokio::task::spawn_blocking(move || {
                Simulator::pty(&format!("garbage-{protocol}"), &sim_args(protocol, &["--fault", "garbage=1"]))
            })
            .await
            .unwrap();
            // No retries: a reply lost to the noise would show as a failed poll. Several polls, because the
            // noise differs each time and a false frame in it may only show up now and then.
            let bus = spawn_one(serial(&link), fast(0), protocol);
            let mut replies = 0;
            for _ in 0..8 {
                let status = poll(&bus, 0).await;
                assert_complete(protocol, &status, &sim.truth());
                assert!(status.last.skipped_bytes > 0, "{protocol}: the garbage was not counted");
                replies += u64::from(status.last.answered);
                // 1–8 bytes of garbage per reply, every one of them skipped and counted.
                assert!(
                    (replies..=8 * replies).contains(&status.resync_bytes_total),
                    "{protocol}: {} resync bytes for {replies} replies",
                    status.resync_bytes_total
                );
            }
            drop(sim);
            format!("{protocol}: {replies} replies through the garbage")
        });
    }
    expect_all(tasks).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_worker_integrates_energy_between_polls_from_their_own_values_and_never_across_stale_after() {
    // Seed 1, frozen: pack 1 charges and pack 2 discharges at constant currents.
    let sim = Simulator::tcp("energy", &sim_args("pace", &["--packs", "2"]));
    let addr = sim.addr.clone().unwrap();
    let spec = |addr: &str, stale_after| BusSpec {
        transport: tcp(addr),
        settings: fast(1),
        devices: vec![device("pace", exchange("pace"))],
        stale_after,
    };
    let bus = poller::spawn(spec(&addr, STALE_AFTER));
    let first = poll(&bus, 0).await;
    assert!(first.energy.packs().iter().all(|p| *p == PackEnergy::new(p.pack)), "one poll: totals at 0");
    tokio::time::sleep(Duration::from_millis(300)).await;
    poll(&bus, 0).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let last = poll(&bus, 0).await;
    assert!(last.last.succeeded(), "{:?}", last.last.failures);
    // The energy uses the very time each poll is stamped with, so the two intervals add up to this exactly.
    let seconds = last.last_poll_unix - first.last_poll_unix;
    assert!(seconds >= 0.6, "{seconds} s between the first and the last poll");
    let close = |what: &str, got: f64, want: f64| {
        assert!((got - want).abs() <= want.abs() * 1e-12, "{what}: {got}, expected {want}");
    };
    let mut signs = Vec::new();
    for pack in &last.last.device.packs {
        let (volts, amperes) = (pack.voltage_volts.unwrap(), pack.current_amperes.unwrap());
        let e = last.energy.pack(pack.pack).unwrap_or_else(|| panic!("no totals for pack {}", pack.pack));
        let (into, out_of) = if amperes > 0.0 {
            ((e.charged_ampere_hours, e.charged_joules), (e.discharged_ampere_hours, e.discharged_joules))
        } else {
            ((e.discharged_ampere_hours, e.discharged_joules), (e.charged_ampere_hours, e.charged_joules))
        };
        close(&format!("pack {} Ah", pack.pack), into.0, amperes.abs() * seconds / 3600.0);
        close(&format!("pack {} J", pack.pack), into.1, volts * amperes.abs() * seconds);
        assert_eq!(out_of, (0.0, 0.0), "pack {}: the other direction stays 0", pack.pack);
        signs.push(amperes > 0.0);
    }
    assert_eq!(signs, [true, false], "seed 1 must give one charging and one discharging pack");

    // A bus whose stale_after is shorter than the pause between its polls integrates nothing (a simulator of
    // its own: a TCP simulator serves one client at a time).
    let other = Simulator::tcp("energy-gap", &sim_args("pace", &["--packs", "2"]));
    let short = poller::spawn(spec(other.addr.as_deref().unwrap(), Duration::from_millis(100)));
    poll(&short, 0).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let after = poll(&short, 0).await;
    assert!(after.last.succeeded(), "{:?}", after.last.failures);
    assert_eq!(after.energy.packs().len(), 2);
    assert!(after.energy.packs().iter().all(|p| *p == PackEnergy::new(p.pack)), "{:?}", after.energy.packs());
}
