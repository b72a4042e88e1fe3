//! The exporter's HTTP surface: `/metrics` (or the configured telemetry path), `/probe?target=NAME`, a landing
//! page and the orchestrator endpoints `/-/healthy` and `/-/ready`. Read-only by construction: nothing here can
//! reach a write command (those live in `control`, which this module does not import).

use std::fmt::Write as _;
use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use tokio::time::Instant;

use crate::metrics::{self, DeviceView, MqttView, ReloadView};
use crate::mqtt::MqttStats;
use crate::scrape::{Scraper, Seen, scrape_budget};

/// Header in which Prometheus announces its scrape timeout.
const SCRAPE_TIMEOUT_HEADER: &str = "x-prometheus-scrape-timeout-seconds";

/// What the handlers share.
#[derive(Debug)]
struct App {
    scraper: Arc<Scraper>,
    telemetry_path: String,
    /// The MQTT publisher's health, when `mqtt:` is configured.
    mqtt: Option<Arc<MqttStats>>,
}

/// The router for `scraper`, with the metrics at `telemetry_path` (e.g. `/metrics`), which also carry the MQTT
/// publisher's health when `mqtt` is given.
pub fn router(scraper: Arc<Scraper>, telemetry_path: &str, mqtt: Option<Arc<MqttStats>>) -> Router {
    let app = Arc::new(App { scraper, telemetry_path: telemetry_path.to_owned(), mqtt });
    Router::new()
        .route("/", get(landing))
        .route(telemetry_path, get(scrape))
        .route("/probe", get(probe))
        .route("/-/healthy", get(|| async { "Healthy\n" }))
        .route("/-/ready", get(ready))
        .with_state(app)
}

/// `/metrics`: every configured device.
async fn scrape(State(app): State<Arc<App>>, headers: HeaderMap) -> Response {
    let deadline = deadline(&headers);
    let seen = app.scraper.collect(None, deadline).await;
    let reload = app.scraper.reload_view();
    render(&app.scraper, &seen, app.mqtt.as_deref().map(MqttStats::view).as_ref(), reload.as_ref())
}

/// `/probe?target=NAME`: one configured device (the multi-target pattern of blackbox and snmp exporters).
async fn probe(State(app): State<Arc<App>>, headers: HeaderMap, uri: Uri) -> Response {
    let targets = query_params(uri.query().unwrap_or_default(), "target");
    let target = match targets.as_slice() {
        [one] if !one.is_empty() => one,
        [] | [_] => {
            return (StatusCode::BAD_REQUEST, "missing the target parameter: /probe?target=DEVICE_NAME\n")
                .into_response();
        }
        // Taking the first would answer for a device the caller may not have meant; say so instead.
        several => {
            let body =
                format!("{} target parameters: /probe takes exactly one (/probe?target=DEVICE_NAME)\n", several.len());
            return (StatusCode::BAD_REQUEST, body).into_response();
        }
    };
    let Some(index) = app.scraper.find(target) else {
        let mut known: Vec<&str> = app.scraper.targets().iter().map(|t| t.name.as_str()).collect();
        known.sort_unstable();
        let body = format!("unknown target {target:?}: configured devices are {}\n", known.join(", "));
        return (StatusCode::NOT_FOUND, body).into_response();
    };
    let seen = app.scraper.collect(Some(index), deadline(&headers)).await;
    // The exporter's MQTT health and reload state belong to `/metrics`, not to a probe of one device.
    render(&app.scraper, &seen, None, None)
}

/// The deadline for a scrape that arrived now with `headers`.
fn deadline(headers: &HeaderMap) -> Instant {
    let announced = headers.get(SCRAPE_TIMEOUT_HEADER).and_then(|v| v.to_str().ok());
    Instant::now() + scrape_budget(announced)
}

/// Render the devices `seen` (indices into the scraper's targets), and the MQTT publisher's health and the
/// configuration reloads' state when given, as one OpenMetrics body.
fn render(scraper: &Scraper, seen: &[(usize, Seen)], mqtt: Option<&MqttView>, reload: Option<&ReloadView>) -> Response {
    let views: Vec<DeviceView<'_>> = seen
        .iter()
        .filter_map(|(index, seen)| {
            let target = scraper.targets().get(*index)?;
            Some(DeviceView {
                name: &target.name,
                protocol: target.protocol,
                transport: target.transport,
                status: seen.status.as_deref(),
                fresh: seen.fresh,
                values: Some(&seen.values),
            })
        })
        .collect();
    let mut body = String::with_capacity(16 * 1024);
    match metrics::render_all(&views, mqtt, reload, &mut body) {
        Ok(()) => ([(header::CONTENT_TYPE, metrics::CONTENT_TYPE)], body).into_response(),
        Err(error) => {
            tracing::error!(%error, "rendering the metrics failed");
            (StatusCode::INTERNAL_SERVER_ERROR, "rendering the metrics failed\n").into_response()
        }
    }
}

/// `/-/ready`: 200 once every device has finished its first poll (successful or not).
async fn ready(State(app): State<Arc<App>>) -> Response {
    if app.scraper.ready() {
        (StatusCode::OK, "Ready\n").into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "Not ready: waiting for the first poll of every device\n").into_response()
    }
}

/// `/`: what this is and where to go.
async fn landing(State(app): State<Arc<App>>) -> Html<String> {
    let mut page = String::with_capacity(2048);
    let path = html_escape(&app.telemetry_path);
    let _ = write!(
        page,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>bms_exporter</title></head><body>\n\
         <h1>bms_exporter {version}</h1>\n<p>Battery management systems, exported for Prometheus.</p>\n<ul>\n\
         <li><a href=\"{path}\">{path}</a>: every configured device</li>\n",
        version = env!("CARGO_PKG_VERSION"),
    );
    for target in app.scraper.targets() {
        let name = html_escape(&target.name);
        let _ = writeln!(
            page,
            "<li><a href=\"/probe?target={name}\">/probe?target={name}</a>: {protocol} over {transport}</li>",
            protocol = target.protocol,
            transport = target.transport,
        );
    }
    page.push_str(
        "<li><a href=\"/-/healthy\">/-/healthy</a> and <a href=\"/-/ready\">/-/ready</a>: for orchestrators</li>\n\
         </ul>\n</body></html>\n",
    );
    Html(page)
}

/// Every value of `key` in a URL query string, in order and percent-decoded (an empty one included).
fn query_params(query: &str, key: &str) -> Vec<String> {
    query
        .split('&')
        .filter_map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (percent_decode(k) == key).then(|| percent_decode(v))
        })
        .collect()
}

/// Decode `%XX` escapes and `+` (a space in a form-encoded query); a malformed escape is kept as it is.
fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        let hex = bytes.get(i + 1..i + 3).and_then(|h| std::str::from_utf8(h).ok());
        match (b, hex.and_then(|h| u8::from_str_radix(h, 16).ok())) {
            (b'%', Some(decoded)) => {
                out.push(decoded);
                i += 3;
            }
            (b'+', _) => {
                out.push(b' ');
                i += 1;
            }
            _ => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Escape text for HTML element content and attribute values.
fn html_escape(text: &str) -> String {
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
    use super::*;

    #[test]
    fn the_target_parameter_is_found_and_decoded() {
        assert_eq!(query_params("target=house", "target"), ["house"]);
        assert_eq!(query_params("a=1&target=rack-2&b", "target"), ["rack-2"]);
        assert_eq!(query_params("target=my%2dbms", "target"), ["my-bms"]);
        assert_eq!(query_params("target=a+b%zz", "target"), ["a b%zz"]);
        assert_eq!(query_params("target=", "target"), [""]);
        assert_eq!(query_params("target", "target"), [""]);
        assert!(query_params("targets=x", "target").is_empty());
        assert!(query_params("", "target").is_empty());
    }

    #[test]
    fn every_target_parameter_is_found_so_several_can_be_refused() {
        assert_eq!(query_params("target=a&target=b", "target"), ["a", "b"]);
        assert_eq!(query_params("target=a&x=1&target=a", "target"), ["a", "a"]);
        // An encoded key is the same key: it cannot smuggle a second target past the check.
        assert_eq!(query_params("target=a&%74arget=b", "target"), ["a", "b"]);
    }

    #[test]
    fn html_is_escaped() {
        assert_eq!(html_escape("<a href=\"x\">&'"), "&lt;a href=&quot;x&quot;&gt;&amp;&#39;");
    }
}
