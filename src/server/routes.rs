//! The exporter's HTTP surface: `/metrics` (or the configured telemetry path), `/probe?target=NAME`, the live
//! landing page (`landing.rs`) and the orchestrator endpoints `/-/healthy` and `/-/ready`.
//! Read-only by construction: nothing here can reach a write command (those live in `control`, which this module
//! does not import). The metric bodies are OpenMetrics when the request's `Accept` header asks for it (Prometheus
//! does), else the Prometheus text format.

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use tokio::time::Instant;

use super::landing::{self, About};
use crate::metrics::{self, DeviceView, ExporterView, Format};
use crate::mqtt::MqttStats;
use crate::scrape::{Scraper, Seen, scrape_budget};
use crate::server::process;

/// Header in which Prometheus announces its scrape timeout.
const SCRAPE_TIMEOUT_HEADER: &str = "x-prometheus-scrape-timeout-seconds";

/// What the handlers share.
#[derive(Debug)]
struct App {
    scraper: Arc<Scraper>,
    telemetry_path: String,
    /// The MQTT publisher's health, when `mqtt:` is configured.
    mqtt: Option<Arc<MqttStats>>,
    /// What the landing page says about this run.
    about: About,
}

/// The router for `scraper`, with the metrics at `telemetry_path` (e.g. `/metrics`), which also carry the MQTT
/// publisher's health when `mqtt` is given, and the landing page telling `about` this run.
pub fn router(scraper: Arc<Scraper>, telemetry_path: &str, mqtt: Option<Arc<MqttStats>>, about: About) -> Router {
    let app = Arc::new(App { scraper, telemetry_path: telemetry_path.to_owned(), mqtt, about });
    Router::new()
        .route("/", get(landing))
        .route(telemetry_path, get(scrape))
        .route("/probe", get(probe))
        .route("/-/healthy", get(|| async { "Healthy\n" }))
        .route("/-/ready", get(ready))
        .with_state(app)
}

/// `/metrics`: every configured device, and the exporter's own health.
async fn scrape(State(app): State<Arc<App>>, headers: HeaderMap) -> Response {
    let deadline = deadline(&headers);
    let seen = app.scraper.collect(None, deadline).await;
    // Read after the devices, so the figures include what this scrape's polls cost.
    let exporter = ExporterView {
        mqtt: app.mqtt.as_deref().map(MqttStats::view),
        reload: app.scraper.reload_view(),
        process: Some(process::read()),
    };
    render(&app.scraper, &seen, &exporter, format(&headers))
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
    // The exporter's own health (MQTT, reloads, process) belongs to `/metrics`, not to a probe of one device.
    render(&app.scraper, &seen, &ExporterView::default(), format(&headers))
}

/// The body format the request's `Accept` header asks for; a header that is not visible ASCII counts as absent.
fn format(headers: &HeaderMap) -> Format {
    Format::negotiate(headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()))
}

/// The deadline for a scrape that arrived now with `headers`.
fn deadline(headers: &HeaderMap) -> Instant {
    let announced = headers.get(SCRAPE_TIMEOUT_HEADER).and_then(|v| v.to_str().ok());
    Instant::now() + scrape_budget(announced)
}

/// The devices `seen` (indices into the scraper's targets) as the renderers take them: `/metrics`, `/probe` and
/// the status page.
pub(super) fn device_views<'a>(scraper: &'a Scraper, seen: &'a [(usize, Seen)]) -> Vec<DeviceView<'a>> {
    seen.iter()
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
        .collect()
}

/// Render the devices `seen` (indices into the scraper's targets) and the `exporter`'s own families as one body
/// in `format`.
fn render(scraper: &Scraper, seen: &[(usize, Seen)], exporter: &ExporterView, format: Format) -> Response {
    let views = device_views(scraper, seen);
    let mut body = String::with_capacity(16 * 1024);
    match metrics::render_as(format, &views, exporter, &mut body) {
        // `Vary`: a cache between scraper and exporter must not answer one format's request with the other's.
        Ok(()) => ([(header::CONTENT_TYPE, format.content_type()), (header::VARY, "Accept")], body).into_response(),
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

/// `/`: the live view of every device, collected as a scrape would be (see [`landing::PAGE_WAIT`]).
async fn landing(State(app): State<Arc<App>>, headers: HeaderMap) -> Response {
    landing::page(&app.scraper, &app.about, &app.telemetry_path, deadline(&headers)).await
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
}
