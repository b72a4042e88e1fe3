//! The landing page at `/`: a live, server-rendered view of the exporter — its build, its configuration file, each
//! device's state (as `bms_up` and the poll counters say it) and each pack's figures with an inline SVG chart of
//! the cell voltages. Plain HTML and inline CSS: no script, no external asset, readable on a phone.
//!
//! Every string that comes from a device or from the configuration is escaped here, whatever its source claims
//! about its alphabet: a BMS can report any bytes as its model name.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use axum::http::header;
use axum::response::{IntoResponse, Response};
use tokio::time::Instant;

use crate::metrics::DeviceView;
use crate::metrics::names::REVISION;
use crate::model::{AlarmSeverity, PackSnapshot, SensorId};
use crate::scrape::{Freshness, Scraper, unix_now};

/// The longest the page waits for a device before rendering what is known. The page reads through the same
/// single-flight path as a scrape ([`Scraper::collect`]): a poll younger than `max_age` is reused, and a view
/// never adds a poll a scrape at that moment would not have caused. Reading only the retained statuses would
/// never poll, but then the page of an exporter nobody scrapes (the demo, a first look at new hardware) would
/// show nothing but stale devices. A person is waiting, so the wait is shorter than a scrape's budget; a poll
/// that ends later is published for the next view and the next scrape all the same.
pub(super) const PAGE_WAIT: Duration = Duration::from_secs(3);

/// How often the browser reloads the page (a `<meta http-equiv="refresh">`, so no script is needed).
pub(super) const REFRESH_SECONDS: u32 = 15;

/// The policy sent with the page: nothing but its own inline styles may load or run, so even a string that
/// escaped escaping could not run a script or fetch anything.
const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; style-src 'unsafe-inline'; img-src 'none'; \
                                       form-action 'none'; base-uri 'none'; frame-ancestors 'none'";

/// What the page says about the running exporter besides its devices.
#[derive(Debug, Clone, Default)]
pub struct About {
    /// The configuration file as given on the command line (`None` for `--demo`).
    pub config_file: Option<PathBuf>,
}

impl About {
    /// The page's facts for a run from `config_file` (made absolute, so the page says where it is), or for
    /// the demo when `None`.
    #[must_use]
    pub fn new(config_file: Option<&Path>) -> Self {
        let config_file = config_file.map(|p| std::path::absolute(p).unwrap_or_else(|_| p.to_owned()));
        Self { config_file }
    }
}

/// The page's header facts.
#[derive(Debug, Clone, Copy)]
pub(super) struct Header<'a> {
    /// `bms_exporter_build_info`'s version.
    pub version: &'a str,
    /// `bms_exporter_build_info`'s revision.
    pub revision: &'a str,
    /// The configuration file, `None` for the demo.
    pub config_file: Option<&'a Path>,
    /// Where the metrics are served.
    pub telemetry_path: &'a str,
    /// The timing rules in force (the page explains missing values with them).
    pub freshness: Freshness,
    /// Unix time of the rendering, for ages.
    pub now_unix: f64,
}

/// Answer `/`: collect every device as a scrape would, waiting until `deadline` at the most (and never longer
/// than [`PAGE_WAIT`]), then render.
pub(super) async fn page(scraper: &Scraper, about: &About, telemetry_path: &str, deadline: Instant) -> Response {
    let deadline = deadline.min(Instant::now() + PAGE_WAIT);
    let seen = scraper.collect(None, deadline).await;
    let views = super::routes::device_views(scraper, &seen);
    let head = Header {
        version: env!("CARGO_PKG_VERSION"),
        revision: REVISION,
        config_file: about.config_file.as_deref(),
        telemetry_path,
        freshness: scraper.freshness(),
        now_unix: unix_now(),
    };
    let body = render(&head, &views);
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
            (header::CONTENT_SECURITY_POLICY, CONTENT_SECURITY_POLICY),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        body,
    )
        .into_response()
}

/// Inline styles: a single column on a phone, cards side by side on wider screens, dark when the system is.
const STYLE: &str = "\
:root{color-scheme:light dark;--fg:#1b1f24;--mute:#5c6570;--bg:#f6f7f9;--card:#fff;--line:#d8dde3;\
--up:#1a7f37;--down:#cf222e;--wait:#9a6700;--bar:#4a7fb5;--low:#0969da;--high:#d1242f;--miss:#aab2bb}\
@media(prefers-color-scheme:dark){:root{--fg:#e6edf3;--mute:#9198a1;--bg:#0d1117;--card:#161b22;--line:#30363d;\
--bar:#5b8fc7;--low:#58a6ff;--high:#ff7b72;--miss:#484f58}}\
*{box-sizing:border-box}\
body{margin:0;padding:1rem;font:16px/1.45 system-ui,-apple-system,\"Segoe UI\",Roboto,sans-serif;color:var(--fg);\
background:var(--bg);overflow-wrap:anywhere}\
h1{font-size:1.4rem;margin:0 0 .3rem}h2{font-size:1.2rem;margin:0 0 .3rem}h3{font-size:1rem;margin:0 0 .4rem}\
p{margin:.25rem 0}a{color:var(--low)}code{font-size:.9em}small,.mute{color:var(--mute)}\
nav{display:flex;flex-wrap:wrap;gap:.4rem 1rem;margin:.5rem 0 1rem}\
main{display:flex;flex-wrap:wrap;gap:1rem;align-items:flex-start}\
.device{flex:1 1 21rem;min-width:0;background:var(--card);border:1px solid var(--line);\
border-left:.35rem solid var(--wait);border-radius:.5rem;padding:.8rem}\
.device.n2{flex:2 1 42rem}.device.n3{flex:3 1 63rem}.device.n4{flex:4 1 84rem}\
.device.up{border-left-color:var(--up)}.device.down{border-left-color:var(--down)}\
.state{display:inline-block;padding:0 .45rem;border-radius:1rem;color:#fff;font-size:.85rem;\
background:var(--wait);vertical-align:middle}\
.up .state{background:var(--up)}.down .state{background:var(--down)}\
.packs{display:grid;grid-template-columns:repeat(auto-fill,minmax(min(100%,18rem),1fr));gap:.8rem;margin-top:.6rem}\
.pack{border:1px solid var(--line);border-radius:.4rem;padding:.6rem}\
dl{display:grid;grid-template-columns:repeat(auto-fill,minmax(8.5rem,1fr));gap:.3rem .8rem;margin:.3rem 0}\
dl div{min-width:0}dt{font-size:.8rem;color:var(--mute)}dd{margin:0;font-variant-numeric:tabular-nums}\
meter{width:100%;height:.6rem}\
svg.cells{display:block;width:100%;height:4.5rem;margin:.4rem 0 .1rem}\
.cells rect{fill:var(--bar)}.cells rect.low{fill:var(--low)}.cells rect.high{fill:var(--high)}\
.cells rect.missing{fill:var(--miss)}\
.alarm{display:inline-block;margin:.1rem .2rem 0 0;padding:0 .4rem;border-radius:.3rem;font-size:.85rem;\
border:1px solid var(--down);color:var(--down)}.alarm.info{border-color:var(--line);color:var(--mute)}\
footer{margin-top:1rem;font-size:.85rem;color:var(--mute)}";

/// The whole page for `devices`, in their order.
pub(super) fn render(head: &Header<'_>, devices: &[DeviceView<'_>]) -> String {
    let mut page = String::with_capacity(8 * 1024 + devices.len() * 6 * 1024);
    let _ = write!(
        page,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\n\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n\
         <meta http-equiv=\"refresh\" content=\"{REFRESH_SECONDS}\">\n\
         <title>bms_exporter</title>\n<style>{STYLE}</style></head>\n<body>\n<header>\n<h1>bms_exporter</h1>\n\
         <p class=\"build\">version <code class=\"version\">{version}</code>, revision \
         <code class=\"revision\">{revision}</code></p>\n",
        version = escape(head.version),
        revision = escape(head.revision),
    );
    match head.config_file {
        Some(path) => {
            let _ = writeln!(
                page,
                "<p>Configuration: <code class=\"config\">{}</code></p>",
                escape(&path.display().to_string())
            );
        }
        None => page.push_str("<p>Configuration: none, simulated devices (<code>--demo</code>)</p>\n"),
    }
    let metrics = escape(head.telemetry_path);
    let _ = writeln!(
        page,
        "<nav><a href=\"{metrics}\">{metrics}</a><a href=\"/-/healthy\">/-/healthy</a>\
         <a href=\"/-/ready\">/-/ready</a><span class=\"mute\">/probe?target=NAME per device</span></nav>\n\
         </header>\n<main>"
    );
    if devices.is_empty() {
        page.push_str("<p>No devices are configured.</p>\n");
    }
    for device in devices {
        render_device(&mut page, head, device);
    }
    let _ = write!(
        page,
        "</main>\n<footer>Polled as a scrape would poll (a poll younger than {max_age} is reused); values older \
         than {stale} are not shown. The page reloads every {REFRESH_SECONDS} s.</footer>\n</body></html>\n",
        max_age = duration(head.freshness.max_age),
        stale = duration(head.freshness.stale_after),
    );
    page
}

/// One device: its state as `bms_up` sees it, its poll counters, then its packs.
fn render_device(page: &mut String, head: &Header<'_>, device: &DeviceView<'_>) {
    let name = escape(device.name);
    let status = device.status;
    let up = device.fresh && status.is_some_and(|s| s.last.succeeded());
    let (class, state) = match status {
        None => ("pending", "waiting"),
        Some(_) if up => ("up", "up"),
        Some(_) => ("down", "down"),
    };
    let packs: Vec<&PackSnapshot> =
        device.values.map(|v| v.packs.iter().filter(|p| p.online).collect()).unwrap_or_default();
    // A device with several packs gets room for them side by side where the screen has it.
    let width = match packs.len() {
        0 | 1 => "",
        2 => " n2",
        3 => " n3",
        _ => " n4",
    };
    let _ = writeln!(
        page,
        "<section class=\"device {class}{width}\" data-device=\"{name}\">\n<h2><span class=\"state\">{state}</span> {name}</h2>\n\
         <p class=\"mute\">{protocol} over {transport} · <a href=\"/probe?target={target}\">/probe?target={name}</a></p>",
        protocol = escape(device.protocol.as_str()),
        transport = escape(device.transport),
        target = escape(&url_encode(device.name)),
    );
    let Some(status) = status else {
        page.push_str("<p>No poll has finished yet.</p>\n</section>\n");
        return;
    };
    let last = &status.last;
    let success = match status.last_success_unix {
        Some(at) => format!("last success {} ago", age(head.now_unix - at)),
        None => "no successful poll yet".to_owned(),
    };
    let _ = writeln!(
        page,
        "<p class=\"poll\">Last poll {ago} ago, took {took} · {success} · {polls} poll{plural}</p>",
        ago = age(head.now_unix - status.last_poll_unix),
        took = duration(last.duration()),
        polls = status.polls_total,
        plural = if status.polls_total == 1 { "" } else { "s" },
    );
    if !last.succeeded() {
        let why = match last.failures.first() {
            Some(first) if last.failures.len() > 1 => {
                format!("{} requests failed, first {}: {}", last.failures.len(), first.label, first.error)
            }
            Some(first) => format!("{}: {}", first.label, first.error),
            None => "no request was answered".to_owned(),
        };
        let _ = writeln!(page, "<p class=\"error\">Last poll incomplete: {}</p>", escape(&why));
    } else if !device.fresh {
        let _ = writeln!(
            page,
            "<p class=\"error\">No successful poll within {}.</p>",
            duration(head.freshness.stale_after)
        );
    }
    let failures: Vec<String> = status
        .failures_total
        .iter()
        .filter(|(_, n)| **n > 0)
        .map(|(reason, n)| format!("{} {n}", escape(reason)))
        .collect();
    if failures.is_empty() {
        page.push_str("<p class=\"failures\">Failed requests since start: none</p>\n");
    } else {
        let _ = writeln!(page, "<p class=\"failures\">Failed requests since start: {}</p>", failures.join(", "));
    }
    if packs.is_empty() {
        let _ = writeln!(page, "<p>No values younger than {}.</p>", duration(head.freshness.stale_after));
    } else {
        page.push_str("<div class=\"packs\">\n");
        for pack in packs {
            render_pack(page, device.name, pack);
        }
        page.push_str("</div>\n");
    }
    page.push_str("</section>\n");
}

/// One pack: its identity, figures, cell chart and active alarms.
fn render_pack(page: &mut String, device: &str, pack: &PackSnapshot) {
    let _ = write!(
        page,
        "<article class=\"pack\" data-device=\"{device}\" data-pack=\"{number}\">\n<h3>Pack {number}",
        device = escape(device),
        number = pack.pack,
    );
    let identity: Vec<String> = [&pack.info.model, &pack.info.firmware_version, &pack.info.serial_number]
        .into_iter()
        .flatten()
        .filter(|s| !s.is_empty())
        .map(|s| escape(s))
        .collect();
    if !identity.is_empty() {
        let _ = write!(page, " <small class=\"identity\">{}</small>", identity.join(" · "));
    }
    page.push_str("</h3>\n");
    let soc = finite(pack.state_of_charge_ratio);
    if let Some(soc) = soc {
        let _ = writeln!(
            page,
            "<meter min=\"0\" max=\"1\" low=\"0.2\" high=\"0.95\" optimum=\"0.6\" value=\"{soc}\"></meter>"
        );
    }
    page.push_str("<dl>\n");
    figure(page, "SOC", "soc", soc, |v| format!("{:.1} %", v * 100.0));
    figure(page, "Voltage", "voltage", finite(pack.voltage_volts), |v| format!("{v:.2} V"));
    let state = pack.state.map(|s| format!(" <small>{}</small>", s.as_str())).unwrap_or_default();
    let current = finite(pack.current_amperes);
    let _ = writeln!(
        page,
        "<div><dt>Current</dt><dd>{}{state}</dd></div>",
        data("current", current, |v| format!("{v:.2} A"))
    );
    let cells: Vec<Option<f64>> = pack.cell_volts.iter().map(|v| finite(*v)).collect();
    let lowest = extreme(&cells, |a, b| a < b);
    let highest = extreme(&cells, |a, b| a > b);
    for (label, class, cell) in [("Lowest cell", "cell-low", lowest), ("Highest cell", "cell-high", highest)] {
        let text = match cell {
            Some((index, v)) => {
                format!("{} <small>#{}</small>", data(class, Some(v), |v| format!("{v:.3} V")), index + 1)
            }
            None => "—".to_owned(),
        };
        let _ = writeln!(page, "<div><dt>{label}</dt><dd>{text}</dd></div>");
    }
    if let (Some((_, lo)), Some((_, hi))) = (lowest, highest) {
        let _ = writeln!(page, "<div><dt>Spread</dt><dd>{:.0} mV</dd></div>", (hi - lo) * 1000.0);
    }
    let temperatures: Vec<(SensorId, f64)> =
        pack.temperatures.iter().filter(|t| t.celsius.is_finite()).map(|t| (t.sensor, t.celsius)).collect();
    let coldest = temperatures.iter().map(|t| t.1).reduce(f64::min);
    let warmest = temperatures.iter().map(|t| t.1).reduce(f64::max);
    let range = match (coldest, warmest) {
        (Some(lo), Some(hi)) if (hi - lo).abs() < 0.05 => format!("{lo:.1} °C"),
        (Some(lo), Some(hi)) => format!("{lo:.1} – {hi:.1} °C"),
        _ => "—".to_owned(),
    };
    let _ = writeln!(page, "<div><dt>Temperature</dt><dd class=\"temperature\">{range}</dd></div>");
    page.push_str("</dl>\n");
    cell_chart(page, &cells, lowest, highest);
    alarms(page, pack);
    page.push_str("</article>\n");
}

/// One `<dt>`/`<dd>` pair whose value is machine-readable too (`<data value>`), "—" when unknown.
fn figure(page: &mut String, label: &str, class: &str, value: Option<f64>, text: impl Fn(f64) -> String) {
    let _ = writeln!(page, "<div><dt>{label}</dt><dd>{}</dd></div>", data(class, value, text));
}

/// `<data class value>text</data>`, or "—" when the value is unknown.
fn data(class: &str, value: Option<f64>, text: impl Fn(f64) -> String) -> String {
    match value {
        Some(v) => format!("<data class=\"{class}\" value=\"{v}\">{}</data>", text(v)),
        None => "—".to_owned(),
    }
}

/// The cell voltages as one bar each, in cell order. The bars' heights rise with the voltage; the scale starts
/// a little below the lowest cell so a few millivolts of spread are visible, yet the lowest bar never vanishes.
/// A cell that was not read gets a flat grey bar in its place.
fn cell_chart(page: &mut String, cells: &[Option<f64>], lowest: Option<(usize, f64)>, highest: Option<(usize, f64)>) {
    // Bar width, gap and chart height in viewBox units; the lowest bar's height above the baseline.
    const BAR: f64 = 10.0;
    const GAP: f64 = 2.0;
    const HEIGHT: f64 = 60.0;
    const FLOOR: f64 = 3.0;
    if cells.is_empty() {
        page.push_str("<p class=\"mute\">No cell voltages.</p>\n");
        return;
    }
    let (lo, hi) = match (lowest, highest) {
        (Some((_, lo)), Some((_, hi))) => (lo, hi),
        _ => (0.0, 0.0),
    };
    // At least 20 mV of headroom below the lowest cell: equal cells show as full bars, not as nothing.
    let base = lo - ((hi - lo) * 0.5).max(0.02);
    let width = cells.len() as f64 * (BAR + GAP) - GAP;
    let _ = writeln!(
        page,
        "<svg class=\"cells\" viewBox=\"0 0 {width} {HEIGHT}\" preserveAspectRatio=\"none\" role=\"img\" \
         aria-label=\"cell voltages, {count} cells\" style=\"max-width:{max}rem\">",
        count = cells.len(),
        // A few cells would otherwise stretch into slabs.
        max = cells.len() * 2,
    );
    for (index, volts) in cells.iter().enumerate() {
        let x = index as f64 * (BAR + GAP);
        let number = index + 1;
        let Some(v) = *volts else {
            let _ = writeln!(
                page,
                "<rect class=\"missing\" data-cell=\"{number}\" x=\"{x}\" y=\"{y}\" width=\"{BAR}\" height=\"{FLOOR}\">\
                 <title>cell {number}: not read</title></rect>",
                y = HEIGHT - FLOOR,
            );
            continue;
        };
        let height = FLOOR + (v - base) / (hi - base) * (HEIGHT - FLOOR);
        let class = if lowest.is_some_and(|(i, _)| i == index) {
            " class=\"low\""
        } else if highest.is_some_and(|(i, _)| i == index) {
            " class=\"high\""
        } else {
            ""
        };
        let _ = writeln!(
            page,
            "<rect{class} data-cell=\"{number}\" data-volts=\"{v}\" x=\"{x}\" y=\"{y:.3}\" width=\"{BAR}\" \
             height=\"{height:.3}\"><title>cell {number}: {v:.3} V</title></rect>",
            y = HEIGHT - height,
        );
    }
    page.push_str("</svg>\n");
    if let (Some((_, lo)), Some((_, hi))) = (lowest, highest) {
        let _ = writeln!(page, "<p class=\"mute\"><small>{} cells, {lo:.3}–{hi:.3} V</small></p>", cells.len());
    }
}

/// Every active alarm of the pack: named alarms, then per-cell, per-sensor and pack-wide levels.
fn alarms(page: &mut String, pack: &PackSnapshot) {
    let mut active: Vec<(bool, String)> = pack
        .alarms
        .iter()
        .filter(|a| a.active)
        .map(|a| (a.severity == AlarmSeverity::Info, a.name.to_owned()))
        .collect();
    active.extend(pack.cell_alarms.iter().map(|l| (false, format!("cell {} {}", l.index, l.kind.as_str()))));
    active.extend(pack.temperature_alarms.iter().map(|l| (false, format!("sensor {} {}", l.index, l.kind.as_str()))));
    active.extend(pack.quantity_alarms.iter().map(|q| (false, format!("{} {}", q.quantity, q.kind.as_str()))));
    if active.is_empty() {
        page.push_str("<p class=\"alarms mute\">No active alarms</p>\n");
        return;
    }
    page.push_str("<p class=\"alarms\">");
    for (info, name) in active {
        let class = if info { "alarm info" } else { "alarm" };
        let _ = write!(page, "<span class=\"{class}\">{}</span>", escape(&name));
    }
    page.push_str("</p>\n");
}

/// A value, unless unknown or not a number.
fn finite(value: Option<f64>) -> Option<f64> {
    value.filter(|v| v.is_finite())
}

/// The first cell whose known voltage beats every other by `better` (index, volts).
fn extreme(cells: &[Option<f64>], better: impl Fn(f64, f64) -> bool) -> Option<(usize, f64)> {
    cells.iter().enumerate().filter_map(|(i, v)| Some((i, (*v)?))).fold(None, |best, (i, v)| match best {
        Some((_, b)) if !better(v, b) => best,
        _ => Some((i, v)),
    })
}

/// An age in seconds as a person reads it: "0.4 s", "12 s", "3 min", "5 h", "2 d".
fn age(seconds: f64) -> String {
    let s = seconds.max(0.0);
    if !s.is_finite() {
        "a long time".to_owned()
    } else if s < 10.0 {
        format!("{s:.1} s")
    } else if s < 120.0 {
        format!("{s:.0} s")
    } else if s < 7200.0 {
        format!("{:.0} min", s / 60.0)
    } else if s < 172_800.0 {
        format!("{:.0} h", s / 3600.0)
    } else {
        format!("{:.0} d", s / 86_400.0)
    }
}

/// A configured or measured duration, as [`age`] writes it.
fn duration(d: Duration) -> String {
    if d < Duration::from_secs(1) {
        format!("{} ms", d.as_millis())
    } else if d.subsec_nanos() == 0 && d < Duration::from_secs(120) {
        format!("{} s", d.as_secs())
    } else {
        age(d.as_secs_f64())
    }
}

/// Percent-encode a query parameter value (device names are plain, but the page does not rely on it).
fn url_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(char::from(b));
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

/// Escape text for HTML element content and attribute values.
pub(super) fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            _ => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::model::{Alarm, DeviceSnapshot, LevelAlarm, LevelAlarmKind, PackInfo, Retained, Temperature};
    use crate::poller::DeviceStatus;
    use crate::protocol::DecodeError;
    use crate::protocol::Protocol;
    use crate::session::{PollError, PollReport, RequestFailure};

    const NOW: f64 = 1_700_000_100.0;
    const XSS: &str = "<script>alert(1)</script>";

    fn head() -> Header<'static> {
        Header {
            version: "1.2.3",
            revision: "abc123",
            config_file: Some(Path::new("/etc/bms/<img src=x onerror=alert(2)>.yaml")),
            telemetry_path: "/metrics",
            freshness: Freshness { max_age: Duration::from_secs(5), stale_after: Duration::from_secs(60) },
            now_unix: NOW,
        }
    }

    fn status(name: &str, packs: Vec<PackSnapshot>, failures: Vec<RequestFailure>) -> DeviceStatus {
        let started = std::time::Instant::now();
        DeviceStatus {
            name: name.to_owned(),
            last: PollReport {
                device: DeviceSnapshot { packs },
                answered: 5,
                failures,
                unsupported: Vec::new(),
                requests_sent: 5,
                bytes_sent: 65,
                bytes_received: 400,
                skipped_bytes: 0,
                started,
                finished: started + Duration::from_millis(420),
            },
            values: Retained::default(),
            last_poll_unix: NOW - 2.5,
            last_success_unix: Some(NOW - 2.5),
            polls_total: 7,
            failures_total: BTreeMap::from([("timeout", 3), ("checksum", 0), ("echo", 1)]),
            resync_bytes_total: 0,
            energy: crate::model::energy::Energy::default(),
        }
    }

    fn view<'a>(name: &'a str, status: Option<&'a DeviceStatus>, fresh: bool) -> DeviceView<'a> {
        DeviceView {
            name,
            protocol: Protocol::Daly,
            transport: "tcp",
            status,
            fresh,
            values: status.map(|s| &s.last.device),
        }
    }

    fn pack(number: u8, cells: &[Option<f64>]) -> PackSnapshot {
        let mut p = PackSnapshot::new(number);
        p.voltage_volts = Some(52.91);
        p.current_amperes = Some(-7.25);
        p.state_of_charge_ratio = Some(0.573);
        p.cell_volts = cells.to_vec();
        p.temperatures = vec![
            Temperature { sensor: SensorId::Probe(1), celsius: 21.0 },
            Temperature { sensor: SensorId::Mosfet, celsius: 30.5 },
        ];
        p
    }

    /// The attributes of every `<rect …>` of the first chart, in document order.
    fn bars(page: &str) -> Vec<BTreeMap<String, String>> {
        let start = page.find("<svg class=\"cells\"").expect("a cell chart");
        let svg = &page[start..start + page[start..].find("</svg>").unwrap()];
        svg.split("<rect").skip(1).map(|r| attributes(&r[..r.find('>').unwrap()])).collect()
    }

    fn attributes(tag: &str) -> BTreeMap<String, String> {
        let mut found = BTreeMap::new();
        let mut rest = tag;
        while let Some(eq) = rest.find("=\"") {
            let key = rest[..eq].rsplit(' ').next().unwrap().to_owned();
            let value_end = rest[eq + 2..].find('"').unwrap();
            found.insert(key, rest[eq + 2..eq + 2 + value_end].to_owned());
            rest = &rest[eq + 2 + value_end + 1..];
        }
        found
    }

    #[test]
    fn device_provided_strings_render_as_text() {
        let mut p = pack(1, &[Some(3.3), Some(3.31)]);
        p.info = PackInfo {
            model: Some(XSS.to_owned()),
            firmware_version: Some("v1 \"quoted\" & 'single'".to_owned()),
            serial_number: Some("<b onmouseover=alert(3)>SN</b>".to_owned()),
            bms_serial_number: None,
        };
        let failure =
            RequestFailure { label: "0x63 <board>".to_owned(), attempts: 4, error: PollError::Io(XSS.to_owned()) };
        let s = status(XSS, vec![p], vec![failure]);
        let page = render(&head(), &[view(XSS, Some(&s), true)]);
        let lower = page.to_ascii_lowercase();
        assert!(!lower.contains("<script"), "{page}");
        assert!(!lower.contains("<img") && !lower.contains("<b "), "{page}");
        let escaped = "&lt;script&gt;alert(1)&lt;/script&gt;";
        // The device name (heading, attribute, probe link text), the model and the failure message.
        assert!(page.matches(escaped).count() >= 4, "{page}");
        assert!(page.contains(&format!("<small class=\"identity\">{escaped} · ")), "{page}");
        assert!(page.contains(&format!("<h2><span class=\"state\">down</span> {escaped}</h2>")), "{page}");
        assert!(page.contains("v1 &quot;quoted&quot; &amp; &#39;single&#39;"), "{page}");
        assert!(page.contains("0x63 &lt;board&gt;"), "{page}");
        assert!(page.contains("/etc/bms/&lt;img src=x onerror=alert(2)&gt;.yaml"), "{page}");
        // In the link the name is percent-encoded, so it cannot end the attribute either.
        assert!(page.contains("href=\"/probe?target=%3Cscript%3Ealert%281%29%3C%2Fscript%3E\""), "{page}");
    }

    #[test]
    fn a_pack_with_nothing_known_renders_dashes_without_panicking() {
        let mut bare = PackSnapshot::new(2);
        bare.voltage_volts = Some(f64::NAN);
        bare.current_amperes = Some(f64::INFINITY);
        bare.temperatures = vec![Temperature { sensor: SensorId::Board, celsius: f64::NAN }];
        let mut unread = PackSnapshot::new(3);
        unread.cell_volts = vec![None, None, Some(f64::NAN)];
        let s = status("bare", vec![PackSnapshot::new(1), bare, unread], Vec::new());
        let page = render(&head(), &[view("bare", Some(&s), true)]);
        assert_eq!(page.matches("<article class=\"pack\"").count(), 3, "{page}");
        assert!(page.contains("No cell voltages."), "{page}");
        assert!(!page.contains("<data class=\"voltage\""), "NaN is no value: {page}");
        assert!(!page.contains("NaN") && !page.contains("inf V") && !page.contains("inf A"), "{page}");
        assert!(page.contains("<dt>SOC</dt><dd>—</dd>"), "{page}");
        assert!(page.contains("<dd class=\"temperature\">—</dd>"), "{page}");
        // Three cells, none read: three grey placeholders.
        let chart = bars(&page[page.find("data-pack=\"3\"").unwrap()..]);
        assert_eq!(chart.len(), 3);
        assert!(chart.iter().all(|b| b.get("class").map(String::as_str) == Some("missing")), "{chart:?}");
        // No device at all, and a device before its first poll.
        let empty = render(&head(), &[]);
        assert!(empty.contains("No devices are configured."));
        let waiting = render(&head(), &[view("new", None, false)]);
        assert!(waiting.contains("<span class=\"state\">waiting</span> new"), "{waiting}");
        assert!(waiting.contains("No poll has finished yet."));
    }

    #[test]
    fn the_chart_has_one_bar_per_cell_ordered_like_the_voltages() {
        let cells = [Some(3.301), Some(3.352), Some(3.287), Some(3.402), None, Some(3.352), Some(3.31)];
        let s = status("d", vec![pack(1, &cells)], Vec::new());
        let page = render(&head(), &[view("d", Some(&s), true)]);
        let chart = bars(&page);
        assert_eq!(chart.len(), cells.len());
        let cell_numbers: Vec<&str> = chart.iter().map(|b| b["data-cell"].as_str()).collect();
        assert_eq!(cell_numbers, ["1", "2", "3", "4", "5", "6", "7"]);
        let height = |i: usize| chart[i]["height"].parse::<f64>().unwrap();
        for (i, a) in cells.iter().enumerate() {
            let Some(a) = a else { continue };
            assert_eq!(chart[i]["data-volts"].parse::<f64>().unwrap(), *a);
            assert!(height(i) > 0.0 && height(i) <= 60.0, "bar {i}: {}", height(i));
            for (j, b) in cells.iter().enumerate() {
                let Some(b) = b else { continue };
                match a.partial_cmp(b).unwrap() {
                    std::cmp::Ordering::Less => assert!(height(i) < height(j), "cells {i} and {j}"),
                    std::cmp::Ordering::Equal => assert_eq!(height(i), height(j), "cells {i} and {j}"),
                    std::cmp::Ordering::Greater => assert!(height(i) > height(j), "cells {i} and {j}"),
                }
            }
        }
        // Each bar stands on the baseline.
        for (i, bar) in chart.iter().enumerate() {
            let bottom = bar["y"].parse::<f64>().unwrap() + height(i);
            assert!((bottom - 60.0).abs() < 0.01, "bar {i} ends at {bottom}");
        }
        assert_eq!(chart[2].get("class").map(String::as_str), Some("low"));
        assert_eq!(chart[3].get("class").map(String::as_str), Some("high"));
        assert_eq!(chart[4].get("class").map(String::as_str), Some("missing"));
        assert!(page.contains("<data class=\"cell-low\" value=\"3.287\">3.287 V</data> <small>#3</small>"), "{page}");
        assert!(page.contains("<data class=\"cell-high\" value=\"3.402\">3.402 V</data> <small>#4</small>"), "{page}");
        assert!(page.contains("<dd>115 mV</dd>"), "{page}");

        // Equal cells are equal, visible bars.
        let s = status("d", vec![pack(1, &[Some(3.3); 4])], Vec::new());
        let chart = bars(&render(&head(), &[view("d", Some(&s), true)]));
        assert_eq!(chart.len(), 4);
        assert!(chart.iter().all(|b| b["height"] == chart[0]["height"] && b["height"].parse::<f64>().unwrap() > 3.0));
    }

    #[test]
    fn figures_state_and_alarms_are_shown() {
        let mut p = pack(1, &[Some(3.3), Some(3.31)]);
        p.set_alarms([
            Alarm::new("cell_overvoltage", AlarmSeverity::Protection, false),
            Alarm::new("short_circuit", AlarmSeverity::Protection, true),
        ]);
        p.cell_alarms = vec![LevelAlarm { index: 2, kind: LevelAlarmKind::AboveUpperLimit }];
        let s = status("rack", vec![p, pack(2, &[Some(3.3)])], Vec::new());
        let page = render(&head(), &[view("rack", Some(&s), true)]);
        assert!(page.contains("<h2><span class=\"state\">up</span> rack</h2>"), "{page}");
        assert!(page.contains("<data class=\"soc\" value=\"0.573\">57.3 %</data>"), "{page}");
        assert!(page.contains("<data class=\"voltage\" value=\"52.91\">52.91 V</data>"), "{page}");
        assert!(page.contains("<data class=\"current\" value=\"-7.25\">-7.25 A</data>"), "{page}");
        assert!(page.contains("<dd class=\"temperature\">21.0 – 30.5 °C</dd>"), "{page}");
        assert!(page.contains(
            "<span class=\"alarm\">short_circuit</span><span class=\"alarm\">cell 2 above_upper_limit</span>"
        ));
        assert!(!page.contains(">cell_overvoltage<"), "inactive alarms are not listed");
        assert!(page.contains("No active alarms"), "pack 2 has none");
        // Counters as bms_poll_failures_total has them, zero reasons left out; ages from the clock given.
        assert!(page.contains("Failed requests since start: echo 1, timeout 3</p>"), "{page}");
        assert!(page.contains("Last poll 2.5 s ago, took 420 ms · last success 2.5 s ago · 7 polls"), "{page}");
        assert!(
            page.contains(
                "version <code class=\"version\">1.2.3</code>, revision <code class=\"revision\">abc123</code>"
            )
        );
        assert!(page.contains("<a href=\"/metrics\">/metrics</a>") && page.contains("<a href=\"/-/ready\">"));
        assert!(page.contains("<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"));

        // A stale device is down although its last poll succeeded; a failed one says why.
        let page = render(&head(), &[view("rack", Some(&s), false)]);
        assert!(
            page.contains("<span class=\"state\">down</span> rack") && page.contains("No successful poll within 60 s")
        );
        let failure = RequestFailure {
            label: "0x90 board 1".to_owned(),
            attempts: 4,
            error: PollError::Invalid(DecodeError::Checksum { computed: 1, received: 2 }),
        };
        let s = status("rack", Vec::new(), vec![failure]);
        let page = render(&head(), &[view("rack", Some(&s), true)]);
        assert!(page.contains("<p class=\"error\">Last poll incomplete: 0x90 board 1: no valid reply:"), "{page}");
        assert!(page.contains("No values younger than 60 s."), "{page}");
        let demo = render(&Header { config_file: None, ..head() }, &[]);
        assert!(demo.contains("Configuration: none, simulated devices"));
    }

    #[test]
    fn ages_read_naturally() {
        assert_eq!(age(0.42), "0.4 s");
        assert_eq!(age(-1.0), "0.0 s", "a clock step back is no negative age");
        assert_eq!(age(42.0), "42 s");
        assert_eq!(age(600.0), "10 min");
        assert_eq!(age(3.0 * 3600.0), "3 h");
        assert_eq!(age(3.0 * 86_400.0), "3 d");
        assert_eq!(age(f64::INFINITY), "a long time");
        assert_eq!(duration(Duration::from_millis(250)), "250 ms");
        assert_eq!(duration(Duration::from_secs(5)), "5 s");
        assert_eq!(duration(Duration::from_millis(1500)), "1.5 s");
        assert_eq!(duration(Duration::from_secs(60)), "60 s");
    }

    #[test]
    fn html_is_escaped() {
        assert_eq!(escape("<a href=\"x\">&'"), "&lt;a href=&quot;x&quot;&gt;&amp;&#39;");
    }
}
