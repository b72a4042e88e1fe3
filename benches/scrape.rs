//! `/metrics` render time and size for 16 packs × 16 cells, laid out two ways: one Pace master with 16 packs,
//! and 16 single-pack Daly devices (the simulators' truth, so every alarm table and sensor is filled); each
//! iteration is what a scrape does: the last good values younger than `stale_after`, then the render.
//! Each layout is rendered as OpenMetrics (what Prometheus asks for) and as the text format (everyone else: the
//! same render plus the rewrite). Run: `cargo bench --bench scrape` (goal: one render well under 1 ms).

use std::collections::BTreeMap;
use std::hint::black_box;
use std::time::{Duration, Instant};

use bms_exporter::metrics::{DeviceView, ExporterView, Format, render_as};
use bms_exporter::model::energy::Energy;
use bms_exporter::model::{DeviceSnapshot, Retained};
use bms_exporter::poller::DeviceStatus;
use bms_exporter::protocol::Protocol;
use bms_exporter::session::PollReport;
use bms_exporter::simulator::Responder;
use bms_exporter::simulator::daly::DalyBus;
use bms_exporter::simulator::pace::PaceBus;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};

/// When the benchmarked statuses were polled (Unix seconds).
const POLLED_AT: f64 = 1_700_000_000.0;

fn status(name: String, device: DeviceSnapshot) -> DeviceStatus {
    let started = Instant::now();
    let mut values = Retained::default();
    values.update(&device, POLLED_AT);
    // Two polls' worth of energy, so every pack renders its counters as in a long-running exporter.
    let mut energy = Energy::default();
    energy.update(&device, POLLED_AT - 15.0, 60.0);
    energy.update(&device, POLLED_AT, 60.0);
    DeviceStatus {
        name,
        last: PollReport {
            device,
            answered: 10,
            failures: Vec::new(),
            unsupported: Vec::new(),
            requests_sent: 10,
            bytes_sent: 130,
            bytes_received: 900,
            skipped_bytes: 0,
            started,
            finished: started + Duration::from_millis(400),
        },
        last_poll_unix: 1_700_000_000.0,
        last_success_unix: Some(1_700_000_000.0),
        polls_total: 1000,
        failures_total: BTreeMap::from([("timeout", 3)]),
        resync_bytes_total: 12,
        values,
        energy,
    }
}

fn bench_layout(c: &mut Criterion, label: &str, protocol: Protocol, statuses: &[DeviceStatus]) {
    bench_format(c, label, protocol, statuses, Format::OpenMetrics);
    bench_format(c, &format!("{label}, text format"), protocol, statuses, Format::Text);
}

fn bench_format(c: &mut Criterion, label: &str, protocol: Protocol, statuses: &[DeviceStatus], format: Format) {
    // What a scrape does: each device's last good values younger than `stale_after`, then the render.
    let scrape = |out: &mut String| {
        let values: Vec<DeviceSnapshot> = statuses.iter().map(|s| s.values.view(POLLED_AT + 1.0, 60.0)).collect();
        let views: Vec<DeviceView<'_>> = statuses
            .iter()
            .zip(&values)
            .map(|(s, v)| DeviceView {
                name: &s.name,
                protocol,
                transport: "serial",
                status: Some(s),
                fresh: true,
                values: Some(v),
            })
            .collect();
        render_as(format, &views, &ExporterView::default(), out).unwrap();
    };
    let mut body = String::new();
    scrape(&mut body);
    let mut group = c.benchmark_group("scrape");
    group.throughput(Throughput::Bytes(body.len() as u64));
    group.bench_function(label, |b| {
        let mut out = String::with_capacity(body.len());
        b.iter(|| {
            out.clear();
            scrape(black_box(&mut out));
            black_box(out.len())
        });
    });
    group.finish();
}

fn scrape(c: &mut Criterion) {
    let pace = vec![status("rack".to_owned(), PaceBus::new(16, 16, 6, 1).truth())];
    assert_eq!(pace[0].last.device.packs.len(), 16);
    bench_layout(c, "1 device x 16 packs x 16 cells", Protocol::Pace, &pace);

    let daly: Vec<DeviceStatus> =
        (0..16u64).map(|k| status(format!("daly-{k:02}"), DalyBus::new(1, 16, 4, k).truth())).collect();
    bench_layout(c, "16 devices x 1 pack x 16 cells", Protocol::Daly, &daly);
}

criterion_group!(benches, scrape);
criterion_main!(benches);
