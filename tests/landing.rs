//! The landing page in a real browser (Debian `chromium`, headless): `--demo` served on loopback, the page's DOM
//! as Chromium builds it checked against `/metrics` fetched around it, a phone-sized screenshot, and a simulated
//! BMS whose model name is markup, which must reach the DOM as text and nothing else. Also the page's cost: it
//! polls no more than a scrape, and a silent device does not hold it up.

use std::collections::BTreeMap;
use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::process::{Command as Process, Stdio};
use std::time::{Duration, Instant};

use crate::exporter::{exporter, tolerance, wait_ready};
use crate::util::{Scratch, Simulator, free_port, http_get, required_program};

/// How long one Chromium run may take before the test fails (it takes 1–3 s).
const BROWSER_TIMEOUT: Duration = Duration::from_secs(90);

/// Run headless Chromium with `args` and a profile of its own in `dir`; its stdout. Fails loudly when Chromium is
/// missing, exits with an error or hangs.
fn chromium(dir: &Path, args: &[&str]) -> String {
    let binary = required_program("chromium", "chromium");
    let profile = dir.join("chromium-profile");
    let log = std::fs::File::create(dir.join("chromium.log")).unwrap();
    let mut child = Process::new(binary)
        // Root in a container has no sandbox to use, and there is no GPU.
        .args(["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-extensions"])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(log)
        .spawn()
        .unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut out = String::new();
        stdout.read_to_string(&mut out).map(|_| out)
    });
    let deadline = Instant::now() + BROWSER_TIMEOUT;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("chromium {args:?} ran longer than {BROWSER_TIMEOUT:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let out = reader.join().unwrap().unwrap();
    let log = std::fs::read_to_string(dir.join("chromium.log")).unwrap_or_default();
    assert!(status.success(), "chromium {args:?} failed ({status}):\n{log}");
    out
}

/// The DOM of `url` after Chromium loaded it, serialised.
fn dump_dom(dir: &Path, url: &str) -> String {
    let dom = chromium(dir, &["--dump-dom", url]);
    assert!(dom.contains("</html>"), "no document from {url}:\n{dom}");
    dom
}

/// A phone-sized (412 × 915, a common Android size) screenshot of `url` as `file` in `dir`; its bytes.
fn phone_screenshot(dir: &Path, url: &str, file: &str) -> Vec<u8> {
    let path = dir.join(file);
    chromium(dir, &[&format!("--screenshot={}", path.display()), "--window-size=412,915", url]);
    std::fs::read(&path).unwrap_or_else(|e| panic!("no screenshot at {}: {e}", path.display()))
}

/// Width and height from a PNG's IHDR chunk; fails on anything that is not a PNG.
fn png_size(png: &[u8]) -> (u32, u32) {
    assert_eq!(png.get(..8), Some(&b"\x89PNG\r\n\x1a\n"[..]), "not a PNG");
    assert_eq!(png.get(12..16), Some(&b"IHDR"[..]), "no IHDR first");
    let be = |at: usize| u32::from_be_bytes(png[at..at + 4].try_into().unwrap());
    (be(16), be(20))
}

/// The samples of the OpenMetrics family `name` in `body`: labels and value. Only for families whose label
/// values hold no quote or comma (the figures and identity-free families the tests compare).
fn samples(body: &str, name: &str) -> Vec<(BTreeMap<String, String>, f64)> {
    body.lines()
        .filter_map(|line| line.strip_prefix(name)?.strip_prefix('{'))
        .map(|rest| {
            let (labels, value) = rest.rsplit_once("} ").unwrap();
            let labels = labels
                .split("\",")
                .map(|pair| {
                    let (k, v) = pair.split_once("=\"").unwrap();
                    (k.to_owned(), v.trim_end_matches('"').to_owned())
                })
                .collect();
            (labels, value.parse().unwrap())
        })
        .collect()
}

/// The value of `name` for pack `pack` ("01") of `device`, if the body has one.
fn pack_value(body: &str, name: &str, device: &str, pack: &str) -> Option<f64> {
    samples(body, name).into_iter().find(|(l, _)| l["device"] == device && l["pack"] == pack).map(|(_, v)| v)
}

/// The element of `dom` that starts with `open` (an exact start tag), up to its closing `close`.
fn element<'a>(dom: &'a str, open: &str, close: &str) -> &'a str {
    let start = dom.find(open).unwrap_or_else(|| panic!("no {open} in the page:\n{dom}"));
    let end = dom[start..].find(close).unwrap_or_else(|| panic!("{open} is not closed"));
    &dom[start..start + end + close.len()]
}

/// The `value` of the `<data class="CLASS">` in `html`, and its text.
fn data(html: &str, class: &str) -> (f64, String) {
    let tag = element(html, &format!("<data class=\"{class}\" value=\""), "</data>");
    let value = tag.split('"').nth(3).unwrap().parse().unwrap();
    let text = tag[tag.find('>').unwrap() + 1..tag.len() - "</data>".len()].to_owned();
    (value, text)
}

/// The attributes of every `<rect>` in `svg`, in order.
fn rects(svg: &str) -> Vec<BTreeMap<String, String>> {
    svg.split("<rect").skip(1).map(|r| attributes(&r[..r.find('>').unwrap()])).collect()
}

fn attributes(tag: &str) -> BTreeMap<String, String> {
    let mut found = BTreeMap::new();
    let mut rest = tag;
    while let Some(eq) = rest.find("=\"") {
        let key = rest[..eq].rsplit(' ').next().unwrap().to_owned();
        let end = rest[eq + 2..].find('"').unwrap();
        found.insert(key, rest[eq + 2..eq + 2 + end].to_owned());
        rest = &rest[eq + 2 + end + 1..];
    }
    found
}

/// Assert that the chart `svg` has one bar per cell, cells numbered in order, heights ordered like the voltages.
fn assert_chart(svg: &str, cells: usize, what: &str) {
    let bars = rects(svg);
    assert_eq!(bars.len(), cells, "{what}: one bar per cell:\n{svg}");
    let mut read: Vec<(f64, f64)> = Vec::new();
    for (i, bar) in bars.iter().enumerate() {
        assert_eq!(bar["data-cell"], (i + 1).to_string(), "{what}: bars in cell order");
        let volts: f64 = bar["data-volts"].parse().unwrap();
        let height: f64 = bar["height"].parse().unwrap();
        assert!(height > 0.0, "{what}: cell {} has no bar", i + 1);
        read.push((volts, height));
    }
    for &(va, ha) in &read {
        for &(vb, hb) in &read {
            if va < vb {
                assert!(ha < hb, "{what}: a {va} V cell is drawn as high as a {vb} V one or higher");
            }
        }
    }
}

/// Assert that the browser built no script, frame or image element: whatever a string held, it stayed text.
fn assert_inert(dom: &str) {
    let lower = dom.to_ascii_lowercase();
    for tag in ["<script", "<iframe", "<img", "<object", "<embed", "<link"] {
        assert!(!lower.contains(tag), "the page has a {tag} element:\n{dom}");
    }
}

#[test]
fn the_landing_page_shows_every_demo_pack_in_a_real_browser() {
    let scratch = Scratch::new("landing-demo");
    let dir = scratch.0.clone();
    let addr = format!("127.0.0.1:{}", free_port());
    let mut exporter = exporter(&dir, &["--demo", "--web.listen-address", &addr]);
    wait_ready(&mut exporter, &addr, &dir);
    let url = format!("http://{addr}/");

    // /metrics just before and just after the page: the demo reuses a poll for 5 s (max_age), so the page shows
    // the values of one of them, pack by pack.
    let before = http_get(&addr, "/metrics", &[]).unwrap().body;
    let dom = dump_dom(&dir, &url);
    let after = http_get(&addr, "/metrics", &[]).unwrap().body;

    assert_inert(&dom);
    assert!(dom.contains("<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"), "{dom}");
    let (build, _) = &samples(&before, "bms_exporter_build_info")[0];
    assert!(dom.contains(&format!("<code class=\"version\">{}</code>", build["version"])), "{dom}");
    assert!(dom.contains(&format!("<code class=\"revision\">{}</code>", build["revision"])), "{dom}");
    assert!(dom.contains("Configuration: none, simulated devices"), "{dom}");
    for link in ["/metrics", "/-/healthy", "/-/ready", "/probe?target=demo-daly", "/probe?target=demo-pace"] {
        assert!(dom.contains(&format!("href=\"{link}\"")), "no link to {link}");
    }

    let packs = samples(&before, "bms_pack_voltage_volts");
    assert_eq!(packs.len(), 5, "the demo has 1 Daly, 1 Sinowealth and 3 Pace packs: {packs:?}");
    for device in ["demo-daly", "demo-sinowealth", "demo-pace"] {
        assert!(before.contains(&format!("bms_up{{device=\"{device}\"}} 1")), "{device} is down:\n{before}");
        assert!(
            dom.contains(&format!("data-device=\"{device}\">\n<h2><span class=\"state\">up</span> {device}</h2>")),
            "{device} is not shown up:\n{dom}"
        );
    }
    for (labels, _) in &packs {
        let (device, pack) = (labels["device"].as_str(), labels["pack"].as_str());
        let number: u8 = pack.parse().unwrap();
        let what = format!("{device} pack {number}");
        let html = element(
            &dom,
            &format!("<article class=\"pack\" data-device=\"{device}\" data-pack=\"{number}\">"),
            "</article>",
        );
        for (class, family, shown) in [
            ("soc", "bms_pack_state_of_charge_ratio", (|v: f64| format!("{:.1} %", v * 100.0)) as fn(f64) -> String),
            ("voltage", "bms_pack_voltage_volts", |v: f64| format!("{v:.2} V")),
            ("current", "bms_pack_current_amperes", |v: f64| format!("{v:.2} A")),
        ] {
            let (value, text) = data(html, class);
            let candidates = [pack_value(&before, family, device, pack), pack_value(&after, family, device, pack)];
            assert!(
                candidates.iter().flatten().any(|m| (m - value).abs() < 1e-9),
                "{what} {class}: the page shows {value}, /metrics said {candidates:?} around it"
            );
            assert_eq!(text, shown(value), "{what} {class}: the text rounds the value");
        }
        let cells = samples(&before, "bms_cell_voltage_volts")
            .into_iter()
            .filter(|(l, _)| l["device"] == device && l["pack"] == pack)
            .count();
        assert!(cells >= 4, "{what}: {cells} cells in /metrics");
        assert_chart(element(html, "<svg class=\"cells\"", "</svg>"), cells, &what);
        assert!(html.contains("<dd class=\"temperature\">") && html.contains(" °C</dd>"), "{what}: {html}");
    }

    // Phone-sized: a PNG of that size, and far more than an empty page's few kilobytes.
    let blank = phone_screenshot(&dir, "about:blank", "blank.png");
    let shot = phone_screenshot(&dir, &url, "landing.png");
    assert_eq!(png_size(&shot), (412, 915));
    assert!(shot.len() > 5 * blank.len(), "the screenshot has {} bytes, an empty page {}", shot.len(), blank.len());
    // Kept for a person to look at when BMS_LANDING_SCREENSHOT names a file.
    if let Some(keep) = std::env::var_os("BMS_LANDING_SCREENSHOT") {
        std::fs::write(PathBuf::from(keep), &shot).unwrap();
    }
}

#[test]
fn a_model_name_with_markup_reaches_the_browser_as_text() {
    let scratch = Scratch::new("landing-xss");
    let dir = scratch.0.clone();
    let model = "<script>alert(1)</script>";
    let sim =
        Simulator::tcp("landing-xss", &["--protocol", "daly", "--cells", "8", "--time-scale", "0", "--model", model]);
    // The configuration file's own name is shown too: markup there must stay text as well.
    let config = dir.join("<img src=x onerror=alert(2)>.yaml");
    std::fs::write(
        &config,
        format!("devices:\n  - name: markup\n    protocol: daly\n    tcp: {}\n", sim.addr.as_deref().unwrap()),
    )
    .unwrap();
    let addr = format!("127.0.0.1:{}", free_port());
    let mut exporter = exporter(&dir, &["--config", config.to_str().unwrap(), "--web.listen-address", &addr]);
    wait_ready(&mut exporter, &addr, &dir);

    // The model arrived as the BMS sent it: /metrics carries it raw in bms_pack_info.
    let metrics = http_get(&addr, "/metrics", &[]).unwrap().body;
    assert!(metrics.contains(&format!("model=\"{model}\"")), "{metrics}");

    let dom = dump_dom(&dir, &format!("http://{addr}/"));
    assert_inert(&dom);
    let identity = element(&dom, "<small class=\"identity\">", "</small>");
    assert!(identity.starts_with("<small class=\"identity\">&lt;script&gt;alert(1)&lt;/script&gt; · "), "{identity}");
    let shown = element(&dom, "<code class=\"config\">", "</code>");
    assert!(shown.ends_with("/&lt;img src=x onerror=alert(2)&gt;.yaml</code>"), "{shown}");

    // And the figures are the simulator's (frozen) truth, within the protocol's wire resolution.
    let truth = &sim.truth().packs[0];
    let html = element(&dom, "<article class=\"pack\" data-device=\"markup\" data-pack=\"1\">", "</article>");
    let (volts, _, _, _) = tolerance("daly");
    let (soc, _) = data(html, "soc");
    assert!((soc - truth.state_of_charge_ratio.unwrap()).abs() <= 0.0005 + 1e-9, "SOC {soc} vs {truth:?}");
    let (voltage, _) = data(html, "voltage");
    assert!((voltage - truth.voltage_volts.unwrap()).abs() <= volts, "voltage {voltage} vs {truth:?}");
    assert_chart(element(html, "<svg class=\"cells\"", "</svg>"), truth.cell_volts.len(), "markup pack 1");
}

#[test]
fn the_page_polls_no_more_than_a_scrape_and_does_not_wait_out_a_silent_device() {
    let scratch = Scratch::new("landing-polls");
    let dir = scratch.0.clone();
    let sim = Simulator::tcp("landing-polls", &["--protocol", "daly", "--cells", "4", "--time-scale", "0"]);
    // Connections to it complete in the kernel's backlog, and nothing ever answers: a BMS that went silent.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let config = dir.join("config.yaml");
    std::fs::write(
        &config,
        format!(
            "defaults:\n  max_age: 30s\n  stale_after: 60s\n  timeout: 2s\n  retries: 3\n\
             devices:\n  - name: good\n    protocol: daly\n    tcp: {}\n\
             \x20 - name: mute\n    protocol: daly\n    tcp: {}\n",
            sim.addr.as_deref().unwrap(),
            silent.local_addr().unwrap(),
        ),
    )
    .unwrap();
    let addr = format!("127.0.0.1:{}", free_port());
    let mut exporter = exporter(&dir, &["--config", config.to_str().unwrap(), "--web.listen-address", &addr]);
    crate::util::wait_for("the exporter to listen", Duration::from_secs(30), || {
        http_get(&addr, "/-/healthy", &[]).filter(|r| r.status == 200)
    });

    // The silent device's first poll takes 8 s (2 s timeout, 3 retries), within a scrape's 9 s budget; the page
    // waits 3 s at the most.
    let started = Instant::now();
    let page = http_get(&addr, "/", &[]).unwrap();
    let took = started.elapsed();
    assert_eq!(page.status, 200);
    assert!(took < Duration::from_secs(5), "the page took {took:?} with a device silent");
    assert_eq!(page.header("content-type"), Some("text/html; charset=utf-8"));
    let csp = page.header("content-security-policy").unwrap_or_default();
    assert!(csp.contains("default-src 'none'") && !csp.contains("script-src"), "{csp}");
    assert!(!page.body.contains("<span class=\"state\">up</span> mute"), "{}", page.body);

    wait_ready(&mut exporter, &addr, &dir);
    let polls = |body: &str, device: &str| {
        samples(body, "bms_polls_total").into_iter().find(|(l, _)| l["device"] == device).unwrap().1
    };
    let metrics = http_get(&addr, "/metrics", &[]).unwrap().body;
    let (good, mute) = (polls(&metrics, "good"), polls(&metrics, "mute"));
    // Views within max_age reuse the last poll, as scrapes do: the counters do not move.
    let mut last = String::new();
    for _ in 0..5 {
        last = http_get(&addr, "/", &[]).unwrap().body;
    }
    let metrics = http_get(&addr, "/metrics", &[]).unwrap().body;
    assert_eq!((polls(&metrics, "good"), polls(&metrics, "mute")), (good, mute), "{metrics}");
    // What the page says about each agrees with bms_up and bms_poll_failures_total.
    assert!(metrics.contains("bms_up{device=\"good\"} 1") && metrics.contains("bms_up{device=\"mute\"} 0"));
    assert!(last.contains("<span class=\"state\">up</span> good</h2>"), "{last}");
    assert!(last.contains("<span class=\"state\">down</span> mute</h2>"), "{last}");
    let timeouts = samples(&metrics, "bms_poll_failures_total")
        .into_iter()
        .find(|(l, _)| l["device"] == "mute" && l["reason"] == "timeout")
        .unwrap()
        .1;
    assert!(timeouts >= 1.0, "{metrics}");
    let mute_section = element(&last, "<section class=\"device down\" data-device=\"mute\">", "</section>");
    assert!(mute_section.contains(&format!("Failed requests since start: timeout {timeouts}</p>")), "{mute_section}");
    assert!(mute_section.contains("Last poll incomplete: "), "{mute_section}");
    drop(silent);
}
