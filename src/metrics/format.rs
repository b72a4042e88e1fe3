//! The two exposition formats a scrape can get: which one its `Accept` header asks for ([`Format::negotiate`],
//! as Prometheus client_golang's `expfmt` negotiates), and the rewrite of the OpenMetrics body into the
//! Prometheus text format 0.0.4 ([`to_text`]) for every client that does not ask for OpenMetrics (curl,
//! `promtool check metrics`, older scrapers).
//!
//! Pure: strings in, strings out.

use std::cmp::Ordering;

/// An exposition format of the `/metrics` and `/probe` bodies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// The Prometheus text format 0.0.4: what a client gets unless it asks for OpenMetrics.
    Text,
    /// OpenMetrics 1.0.0, with `info` types, `# UNIT` lines and `# EOF`: what Prometheus asks for.
    OpenMetrics,
}

/// The `Content-Type` of the OpenMetrics body.
pub const OPENMETRICS_CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The `Content-Type` of the Prometheus text body, as client_golang spells it.
pub const TEXT_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

impl Format {
    /// The format for a request whose `Accept` header is `accept` (`None`: absent or not visible ASCII).
    ///
    /// As client_golang's `expfmt.NegotiateIncludingOpenMetrics` does: the media ranges are tried from the highest
    /// q-value down (at equal q, a concrete type before a wildcard, otherwise in the order given), and the first
    /// that names `text/plain` (version 0.0.4 or none) or `application/openmetrics-text` (version 1.0.0, 0.0.1
    /// or none) decides; nothing matching, a wildcard or a garbled header gives the text format. Unlike
    /// client_golang, a range with `q=0` (or an unreadable q) is skipped: RFC 9110 §12.4.2 makes it "not
    /// acceptable". OpenMetrics 0.0.1 is answered with the 1.0.0 body, the only OpenMetrics this exporter writes
    /// (the two differ in nothing it uses).
    #[must_use]
    pub fn negotiate(accept: Option<&str>) -> Self {
        let Some(accept) = accept else { return Self::Text };
        let mut ranges: Vec<MediaRange<'_>> = accept.split(',').filter_map(MediaRange::parse).collect();
        // A stable sort: ranges that compare equal keep the order the client wrote them in.
        ranges.sort_by(MediaRange::preference);
        for range in ranges.iter().filter(|r| r.q > 0.0) {
            let version = range.version.unwrap_or("");
            if range.is("text", "plain") && matches!(version, "" | "0.0.4") {
                return Self::Text;
            }
            if range.is("application", "openmetrics-text") && matches!(version, "" | "1.0.0" | "0.0.1") {
                return Self::OpenMetrics;
            }
        }
        Self::Text
    }

    /// The `Content-Type` of a body in this format.
    #[must_use]
    pub fn content_type(self) -> &'static str {
        match self {
            Self::Text => TEXT_CONTENT_TYPE,
            Self::OpenMetrics => OPENMETRICS_CONTENT_TYPE,
        }
    }
}

/// One media range of an `Accept` header: `type/subtype` with its `version` parameter and q-value.
#[derive(Debug, Clone, Copy)]
struct MediaRange<'a> {
    kind: &'a str,
    subtype: &'a str,
    version: Option<&'a str>,
    q: f32,
}

impl<'a> MediaRange<'a> {
    /// Parse one comma-separated element; `None` for one that is not `type/subtype` or `*` (skipped, as
    /// goautoneg skips it). Parameters without `=` are ignored; a q-value that does not parse is 0.
    fn parse(element: &'a str) -> Option<Self> {
        let mut parts = element.split(';');
        let range = parts.next()?.trim();
        let (kind, subtype) = match range.split_once('/') {
            Some((kind, subtype)) => (kind.trim(), subtype.trim()),
            None if range == "*" => ("*", "*"),
            None => return None,
        };
        if kind.is_empty() || subtype.is_empty() || subtype.contains('/') {
            return None;
        }
        let mut media = Self { kind, subtype, version: None, q: 1.0 };
        for parameter in parts {
            let Some((key, value)) = parameter.split_once('=') else { continue };
            let (key, value) = (key.trim(), value.trim());
            if key.eq_ignore_ascii_case("q") {
                let q: f32 = value.parse().unwrap_or(0.0);
                media.q = if q.is_finite() { q.clamp(0.0, 1.0) } else { 0.0 };
            } else if key.eq_ignore_ascii_case("version") {
                media.version = Some(value.trim_matches('"'));
            }
        }
        Some(media)
    }

    /// Whether this is `kind/subtype` (media types are case-insensitive).
    fn is(&self, kind: &str, subtype: &str) -> bool {
        self.kind.eq_ignore_ascii_case(kind) && self.subtype.eq_ignore_ascii_case(subtype)
    }

    /// The order ranges are tried in: higher q first, then a concrete type before `*/*` and a concrete subtype
    /// before `type/*`.
    fn preference(a: &Self, b: &Self) -> Ordering {
        b.q.total_cmp(&a.q)
            .then_with(|| (a.kind == "*").cmp(&(b.kind == "*")))
            .then_with(|| (a.subtype == "*").cmp(&(b.subtype == "*")))
    }
}

/// Append `openmetrics`, an OpenMetrics body as prometheus-client writes it, to `out` in the Prometheus text
/// format 0.0.4, as the official Python client's `generate_latest` writes the same families:
/// - a counter family `x` is declared as `x_total` (the name of its samples, which promtool's lint wants);
/// - an `info` family `x` becomes the gauge `x_info` (the text format has no info type), its samples unchanged;
/// - `# UNIT` lines and the closing `# EOF` are dropped (the text format has neither);
/// - sample lines are copied: label escaping (`\\`, `\"`, `\n`) and float spelling are the same in both formats.
///
/// HELP texts are copied as they are: the family table holds none that needs escaping in either format.
pub fn to_text(openmetrics: &str, out: &mut String) {
    // prometheus-client writes HELP before TYPE; the text name depends on the type, so HELP waits for it.
    let mut help: Option<(&str, &str)> = None;
    for line in openmetrics.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            flush_help(&mut help, out);
            help = Some(rest.split_once(' ').unwrap_or((rest, "")));
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (family, kind) = rest.split_once(' ').unwrap_or((rest, ""));
            let (name, kind) = match kind {
                "counter" => (format!("{family}_total"), "counter"),
                "info" => (format!("{family}_info"), "gauge"),
                "stateset" => (family.to_owned(), "gauge"),
                "unknown" => (family.to_owned(), "untyped"),
                other => (family.to_owned(), other),
            };
            match help.take() {
                Some((helped, text)) if helped == family => push_help(out, &name, text),
                other => {
                    help = other;
                    flush_help(&mut help, out);
                }
            }
            push_line(out, &["# TYPE ", &name, " ", kind]);
            continue;
        }
        flush_help(&mut help, out);
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        push_line(out, &[line]);
    }
    flush_help(&mut help, out);
}

/// Write a HELP line still waiting for its TYPE as it was (a family without a type is untyped in both formats).
fn flush_help(help: &mut Option<(&str, &str)>, out: &mut String) {
    if let Some((name, text)) = help.take() {
        push_help(out, name, text);
    }
}

fn push_help(out: &mut String, name: &str, text: &str) {
    let space = if text.is_empty() { "" } else { " " };
    push_line(out, &["# HELP ", name, space, text]);
}

fn push_line(out: &mut String, parts: &[&str]) {
    for part in parts {
        out.push_str(part);
    }
    out.push('\n');
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The header Prometheus 2.42 sends (scrape/scrape.go `acceptHeader`).
    const PROMETHEUS_2: &str = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
    /// The header Prometheus 3 sends with its default `scrape_protocols`.
    const PROMETHEUS_3: &str = "application/openmetrics-text;version=1.0.0;escaping=allow-utf-8;q=0.5,application/openmetrics-text;version=0.0.1;q=0.4,text/plain;version=1.0.0;escaping=allow-utf-8;q=0.3,text/plain;version=0.0.4;q=0.2,*/*;q=0.1";

    fn negotiate(accept: &str) -> Format {
        Format::negotiate(Some(accept))
    }

    #[test]
    fn prometheus_gets_openmetrics_and_everyone_else_text() {
        assert_eq!(negotiate(PROMETHEUS_2), Format::OpenMetrics);
        assert_eq!(negotiate(PROMETHEUS_3), Format::OpenMetrics);
        // Prometheus 3 told to scrape text only (`scrape_protocols: [PrometheusText0.0.4]`).
        assert_eq!(negotiate("text/plain;version=0.0.4;q=0.2,*/*;q=0.1"), Format::Text);
        assert_eq!(Format::negotiate(None), Format::Text, "no Accept header: curl, wget, a browser's default");
        assert_eq!(negotiate("*/*"), Format::Text, "curl");
        assert_eq!(negotiate("text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"), Format::Text);
        assert_eq!(negotiate("application/openmetrics-text"), Format::OpenMetrics, "no version: the current one");
        assert_eq!(negotiate("application/openmetrics-text; version=0.0.1"), Format::OpenMetrics);
    }

    #[test]
    fn q_values_order_the_ranges() {
        let om = "application/openmetrics-text;version=1.0.0";
        let text = "text/plain;version=0.0.4";
        assert_eq!(negotiate(&format!("{text};q=0.9,{om};q=0.5")), Format::Text);
        assert_eq!(negotiate(&format!("{text};q=0.5,{om};q=0.9")), Format::OpenMetrics);
        assert_eq!(negotiate(&format!("{text};q=0.5,{om}")), Format::OpenMetrics, "q defaults to 1");
        assert_eq!(negotiate(&format!("{text};q=0.500,{om};q=0.501")), Format::OpenMetrics);
        // Equal q: the order the client wrote.
        assert_eq!(negotiate(&format!("{text},{om}")), Format::Text);
        assert_eq!(negotiate(&format!("{om},{text}")), Format::OpenMetrics);
        // A wildcard at a higher q than OpenMetrics matches nothing of its own; OpenMetrics is still next.
        assert_eq!(negotiate(&format!("*/*;q=1,{om};q=0.5")), Format::OpenMetrics);
        assert_eq!(negotiate(&format!("application/*,{om};q=0.1")), Format::OpenMetrics);
    }

    #[test]
    fn a_refused_or_unknown_version_is_not_chosen() {
        assert_eq!(negotiate("application/openmetrics-text;q=0"), Format::Text, "q=0 is not acceptable");
        assert_eq!(negotiate("application/openmetrics-text;version=1.0.0;q=0.0,text/plain;q=0.1"), Format::Text);
        assert_eq!(negotiate("application/openmetrics-text;version=2.0.0"), Format::Text);
        assert_eq!(negotiate("application/openmetrics-text;version=2.0.0,text/plain;version=1.0.0"), Format::Text);
        assert_eq!(negotiate("text/plain;version=1.0.0;q=0.9,application/openmetrics-text;q=0.5"), Format::OpenMetrics);
        assert_eq!(negotiate("application/openmetrics-text;q=abc"), Format::Text, "an unreadable q counts as 0");
        assert_eq!(negotiate("application/openmetrics-text;q=NaN"), Format::Text);
    }

    #[test]
    fn spelling_variants_are_understood() {
        assert_eq!(negotiate("Application/OpenMetrics-Text; Version=1.0.0; Q=0.8"), Format::OpenMetrics);
        assert_eq!(
            negotiate(" application/openmetrics-text ; version=\"1.0.0\" ; charset=utf-8 "),
            Format::OpenMetrics
        );
        assert_eq!(negotiate("application/openmetrics-text;version=1.0.0;escaping=underscores"), Format::OpenMetrics);
        assert_eq!(negotiate("\tapplication/openmetrics-text\t"), Format::OpenMetrics);
        // Parameters without a value are ignored, as goautoneg ignores them; the range stands.
        assert_eq!(negotiate("application/openmetrics-text;=;==;q"), Format::OpenMetrics);
    }

    #[test]
    fn a_garbled_header_gives_text_and_never_panics() {
        for garbage in [
            "",
            ",",
            ";;;,,/",
            "/",
            "application/",
            "/openmetrics-text",
            "application/openmetrics-text/x",
            "openmetrics",
            ";q=1",
            "\u{fffd}\u{0}",
            "application/openmetrics-text;q=1e99999",
        ] {
            // The last one is a range, but its q reads as infinity, which is no q-value: not acceptable.
            assert_eq!(negotiate(garbage), Format::Text, "{garbage:?}");
        }
        let long = "a/b;q=0.5,".repeat(10_000);
        assert_eq!(negotiate(&long), Format::Text);
    }

    #[test]
    fn content_types_are_the_ones_each_format_is_registered_under() {
        assert_eq!(Format::Text.content_type(), "text/plain; version=0.0.4; charset=utf-8");
        assert_eq!(Format::OpenMetrics.content_type(), "application/openmetrics-text; version=1.0.0; charset=utf-8");
    }

    #[test]
    fn the_text_rewrite_renames_counters_and_info_and_drops_what_text_lacks() {
        let openmetrics = "\
# HELP bms_exporter_build Version; always 1
# TYPE bms_exporter_build info
bms_exporter_build_info{version=\"1.0\",revision=\"a\\\"b\\\\c\\nd\"} 1
# HELP bms_polls Polls run
# TYPE bms_polls counter
bms_polls_total{device=\"d\"} 3
# HELP bms_resync_bytes Bytes skipped
# TYPE bms_resync_bytes counter
# UNIT bms_resync_bytes bytes
bms_resync_bytes_total{device=\"d\"} 0
# HELP bms_pack_voltage_volts Pack voltage
# TYPE bms_pack_voltage_volts gauge
# UNIT bms_pack_voltage_volts volts
bms_pack_voltage_volts{device=\"d\",pack=\"01\"} 53.301
# HELP bms_empty A family without series
# TYPE bms_empty gauge
# HELP x_state A state set
# TYPE x_state stateset
# HELP x_unknown Untyped
# TYPE x_unknown unknown
x_unknown 1.5e-7
# EOF
";
        let mut text = String::new();
        to_text(openmetrics, &mut text);
        assert_eq!(
            text,
            "\
# HELP bms_exporter_build_info Version; always 1
# TYPE bms_exporter_build_info gauge
bms_exporter_build_info{version=\"1.0\",revision=\"a\\\"b\\\\c\\nd\"} 1
# HELP bms_polls_total Polls run
# TYPE bms_polls_total counter
bms_polls_total{device=\"d\"} 3
# HELP bms_resync_bytes_total Bytes skipped
# TYPE bms_resync_bytes_total counter
bms_resync_bytes_total{device=\"d\"} 0
# HELP bms_pack_voltage_volts Pack voltage
# TYPE bms_pack_voltage_volts gauge
bms_pack_voltage_volts{device=\"d\",pack=\"01\"} 53.301
# HELP bms_empty A family without series
# TYPE bms_empty gauge
# HELP x_state A state set
# TYPE x_state gauge
# HELP x_unknown Untyped
# TYPE x_unknown untyped
x_unknown 1.5e-7
"
        );
    }

    #[test]
    fn a_help_without_its_type_is_kept_as_it_is() {
        let mut text = String::new();
        to_text("# HELP a Lonely\n# HELP b B\n# TYPE b counter\nb_total 1\n# HELP c C\n# TYPE d gauge\n", &mut text);
        assert_eq!(
            text,
            "# HELP a Lonely\n# HELP b_total B\n# TYPE b_total counter\nb_total 1\n# HELP c C\n# TYPE d gauge\n"
        );
        let mut text = String::new();
        to_text("# HELP\n# TYPE\n# HELP only-name\n", &mut text);
        assert_eq!(text, "# HELP\n# TYPE\n# HELP only-name\n", "odd input is carried, not a panic");
    }
}
