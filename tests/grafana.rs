//! The Grafana dashboards and provisioning files, read as a Grafana import would (no offline validator
//! exists): identity, panel ids, the `${datasource}` variable everywhere, only metric names the exporter
//! serves (`names::ALL`), only the dashboard's own variables, links between the two dashboards, and a provider
//! that loads them. `dashboard_queries` is what the end-to-end test sends to a real Prometheus.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use bms_exporter::metrics::names;
use serde_json::{Value, json};

/// The dashboards, by file stem under `grafana/dashboards/` (also their uid).
pub(crate) const DASHBOARDS: [&str; 2] = ["bms-overview", "bms-cells"];

/// The Grafana variables a query may use: the dashboard's own and the built-in interval/range ones.
const ALLOWED_VARIABLES: [&str; 6] = ["device", "pack", "datasource", "__rate_interval", "__interval", "__range"];

/// Path of a file under the repository's `grafana/` folder.
fn grafana_path(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("grafana").join(rel)
}

/// A dashboard's JSON model.
pub(crate) fn dashboard(name: &str) -> Value {
    let path = grafana_path(&format!("dashboards/{name}.json"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Every panel, rows and the panels a collapsed row holds included, in document order.
fn panels(dashboard: &Value) -> Vec<&Value> {
    fn walk<'a>(list: &'a Value, out: &mut Vec<&'a Value>) {
        for panel in list.as_array().into_iter().flatten() {
            out.push(panel);
            walk(&panel["panels"], out);
        }
    }
    let mut out = Vec::new();
    walk(&dashboard["panels"], &mut out);
    out
}

/// Every query of every panel: (dashboard uid, panel title, expr), for the end-to-end test to send to Prometheus
/// after substituting the variables (see [`substitute_variables`]).
pub(crate) fn dashboard_queries() -> Vec<(String, String, String)> {
    let mut queries = Vec::new();
    for name in DASHBOARDS {
        let dashboard = dashboard(name);
        for panel in panels(&dashboard) {
            for target in panel["targets"].as_array().into_iter().flatten() {
                let expr = target["expr"].as_str().unwrap_or_else(|| panic!("{name}: a target of {panel} has no expr"));
                let title = panel["title"].as_str().unwrap_or_default();
                queries.push((name.to_owned(), title.to_owned(), expr.to_owned()));
            }
        }
    }
    queries
}

/// Every query variable's lookup: (dashboard uid, variable, series selector, label), from its
/// `label_values(selector, label)` definition; Grafana sends it as `/api/v1/label/<label>/values?match[]=<selector>`
/// (after [`substitute_variables`] on the selector), which the end-to-end test can do too.
pub(crate) fn variable_queries() -> Vec<(String, String, String, String)> {
    let mut queries = Vec::new();
    for name in DASHBOARDS {
        for variable in dashboard(name)["templating"]["list"].as_array().into_iter().flatten() {
            if variable["type"] != "query" {
                continue;
            }
            let definition = variable["definition"].as_str().unwrap_or_default();
            let args =
                definition.strip_prefix("label_values(").and_then(|rest| rest.strip_suffix(')')).unwrap_or_else(|| {
                    panic!("{name}: variable {} is not label_values(…): {definition}", variable["name"])
                });
            let (selector, label) =
                args.rsplit_once(',').unwrap_or_else(|| panic!("{name}: {definition} names no label"));
            let variable = variable["name"].as_str().unwrap_or_default();
            queries.push((name.to_owned(), variable.to_owned(), selector.trim().to_owned(), label.trim().to_owned()));
        }
    }
    queries
}

/// `expr` as Prometheus would get it from Grafana with every device and pack selected (`All` is `.*`) and a
/// 15 s scrape interval.
pub(crate) fn substitute_variables(expr: &str) -> String {
    expr.replace("$__rate_interval", "1m")
        .replace("$__interval", "15s")
        .replace("$__range", "1h")
        .replace("$device", ".*")
        .replace("$pack", ".*")
}

/// `expr` with the contents of its string literals blanked, so label values are not read as names.
fn without_strings(expr: &str) -> String {
    let mut out = String::with_capacity(expr.len());
    let mut quote = None;
    let mut escaped = false;
    for c in expr.chars() {
        match quote {
            Some(q) => {
                if escaped {
                    escaped = false;
                } else if c == '\\' {
                    escaped = true;
                } else if c == q {
                    quote = None;
                    out.push(c);
                    continue;
                }
                out.push(' ');
            }
            None => {
                if matches!(c, '"' | '\'' | '`') {
                    quote = Some(c);
                }
                out.push(c);
            }
        }
    }
    out
}

/// The metric names an expr uses: identifiers starting `bms_` outside string literals.
fn metric_names(expr: &str) -> BTreeSet<String> {
    without_strings(expr)
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
        .filter(|token| token.starts_with("bms_"))
        .map(str::to_owned)
        .collect()
}

/// The Grafana variables a text refers to: `$name`, `${name}`, `${name:format}` and the deprecated `[[name]]`.
fn variables_in(text: &str) -> BTreeSet<String> {
    let is_name = |c: char| c.is_ascii_alphanumeric() || c == '_';
    let mut found = BTreeSet::new();
    for (i, _) in text.match_indices('$') {
        let rest = &text[i + 1..];
        let name = match rest.strip_prefix('{') {
            Some(inner) => inner.split(['}', ':']).next().unwrap_or_default(),
            None => &rest[..rest.find(|c| !is_name(c)).unwrap_or(rest.len())],
        };
        found.insert(name.to_owned());
    }
    for (i, _) in text.match_indices("[[") {
        let rest = &text[i + 2..];
        found.insert(rest[..rest.find("]]").unwrap_or(rest.len())].to_owned());
    }
    found
}

fn served_names() -> BTreeSet<&'static str> {
    names::ALL.iter().map(|m| m.name).collect()
}

fn datasource_variable() -> Value {
    json!({"type": "prometheus", "uid": "${datasource}"})
}

#[test]
fn dashboards_have_a_stable_unique_uid_and_title_and_import_with_a_prometheus_input() {
    let mut uids = BTreeSet::new();
    let mut titles = BTreeSet::new();
    for name in DASHBOARDS {
        let d = dashboard(name);
        let uid = d["uid"].as_str().unwrap_or_default();
        let title = d["title"].as_str().unwrap_or_default();
        assert_eq!(uid, name, "{name}: the uid is the file stem, so links and bookmarks survive a re-import");
        assert!(uid.len() <= 40, "{name}: Grafana caps a uid at 40 characters");
        assert!(!title.is_empty(), "{name}: no title");
        assert!(uids.insert(uid.to_owned()), "{name}: uid {uid} is used twice");
        assert!(titles.insert(title.to_owned()), "{name}: title {title} is used twice");
        // id null: an import creates the dashboard instead of overwriting whatever has that database id.
        assert!(d["id"].is_null(), "{name}: id must be null");
        let schema = d["schemaVersion"].as_u64().unwrap_or_default();
        assert!((36..=41).contains(&schema), "{name}: schemaVersion {schema} is not Grafana 10/11's");
        let inputs = d["__inputs"].as_array().unwrap_or_else(|| panic!("{name}: no __inputs"));
        assert!(
            inputs
                .iter()
                .any(|i| i["name"] == "DS_PROMETHEUS" && i["type"] == "datasource" && i["pluginId"] == "prometheus"),
            "{name}: the import form must ask for a Prometheus data source (DS_PROMETHEUS)"
        );
        assert!(!d["description"].as_str().unwrap_or_default().is_empty(), "{name}: no description");
    }
}

#[test]
fn panel_ids_are_unique_within_a_dashboard_rows_included() {
    for name in DASHBOARDS {
        let d = dashboard(name);
        let all = panels(&d);
        assert!(all.len() >= 10, "{name}: only {} panels", all.len());
        let mut ids = BTreeMap::new();
        // Titles name a panel in the e2e test's failures (`dashboard_queries`), so they are unique too.
        let mut titles = BTreeSet::new();
        for panel in &all {
            let title = panel["title"].as_str().unwrap_or_else(|| panel["type"].as_str().unwrap_or_default());
            let id = panel["id"].as_u64().unwrap_or_else(|| panic!("{name}: panel {title:?} has no numeric id"));
            if let Some(other) = ids.insert(id, title) {
                panic!("{name}: panels {other:?} and {title:?} share id {id}");
            }
            let grid = &panel["gridPos"];
            let (x, w) = (grid["x"].as_u64(), grid["w"].as_u64());
            assert!(
                matches!((x, w), (Some(x), Some(w)) if w > 0 && x + w <= 24) && grid["h"].as_u64().is_some(),
                "{name}: panel {title:?} has no gridPos inside Grafana's 24 columns: {grid}"
            );
            assert!(panel["type"].is_string(), "{name}: panel {title:?} has no type");
            assert!(titles.insert(title), "{name}: two panels are titled {title:?}");
        }
    }
}

#[test]
fn every_panel_and_target_reads_the_datasource_variable() {
    let expected = datasource_variable();
    for name in DASHBOARDS {
        let d = dashboard(name);
        for panel in panels(&d) {
            let title = panel["title"].as_str().unwrap_or_default();
            if panel["type"] == "row" {
                assert!(panel.get("targets").is_none(), "{name}: row {title:?} has queries");
                continue;
            }
            assert_eq!(panel["datasource"], expected, "{name}: panel {title:?}");
            let targets =
                panel["targets"].as_array().unwrap_or_else(|| panic!("{name}: panel {title:?} has no targets"));
            assert!(!targets.is_empty(), "{name}: panel {title:?} has no query");
            let mut refs = BTreeSet::new();
            for target in targets {
                assert_eq!(target["datasource"], expected, "{name}: a target of {title:?}");
                assert!(
                    !target["expr"].as_str().unwrap_or_default().trim().is_empty(),
                    "{name}: {title:?}: empty expr"
                );
                let reference = target["refId"].as_str().unwrap_or_default();
                assert!(!reference.is_empty() && refs.insert(reference), "{name}: {title:?}: refId {reference:?}");
            }
        }
        for variable in d["templating"]["list"].as_array().into_iter().flatten() {
            if variable["type"] == "query" {
                assert_eq!(variable["datasource"], expected, "{name}: variable {}", variable["name"]);
            }
        }
    }
}

#[test]
fn every_metric_a_query_uses_is_one_the_exporter_serves_and_every_family_is_shown() {
    let served = served_names();
    let mut used = BTreeSet::new();
    for (dashboard, title, expr) in dashboard_queries() {
        let names = metric_names(&expr);
        assert!(!names.is_empty(), "{dashboard}: {title:?} queries no bms_ metric: {expr}");
        for metric in names {
            assert!(
                served.contains(metric.as_str()),
                "{dashboard}: {title:?} uses {metric}, not in names::ALL: {expr}"
            );
            used.insert(metric);
        }
    }
    for name in DASHBOARDS {
        for variable in dashboard(name)["templating"]["list"].as_array().into_iter().flatten() {
            for metric in metric_names(variable["definition"].as_str().unwrap_or_default()) {
                assert!(served.contains(metric.as_str()), "{name}: variable {} uses {metric}", variable["name"]);
            }
        }
    }
    // Every family the exporter serves has a place on a dashboard; a new one fails here until it gets one.
    let missing: Vec<_> = served.iter().filter(|m| !used.contains(**m)).collect();
    assert!(missing.is_empty(), "no dashboard shows {missing:?}");
}

#[test]
fn the_tokeniser_reads_names_and_variables_as_promql_and_grafana_do() {
    let expr = r#"sum by (device) (rate(bms_polls_total{device=~"$device", x="bms_not_a_name"}[$__rate_interval]))
        / on (device) bms_up:ratio or ${pack:regex} [[old]]"#;
    assert_eq!(metric_names(expr), BTreeSet::from(["bms_polls_total".to_owned(), "bms_up:ratio".to_owned()]));
    let vars: Vec<_> = variables_in(expr).into_iter().collect();
    assert_eq!(vars, ["__rate_interval", "device", "old", "pack"]);
    assert_eq!(substitute_variables("x{device=~\"$device\"}[$__rate_interval]"), "x{device=~\".*\"}[1m]");
}

#[test]
fn variables_are_datasource_device_and_pack_and_queries_use_no_others() {
    for name in DASHBOARDS {
        let d = dashboard(name);
        let list = d["templating"]["list"].as_array().unwrap_or_else(|| panic!("{name}: no templating.list"));
        let by_name: BTreeMap<&str, &Value> =
            list.iter().map(|v| (v["name"].as_str().unwrap_or_default(), v)).collect();
        assert_eq!(by_name.keys().copied().collect::<Vec<_>>(), ["datasource", "device", "pack"], "{name}");
        let lookups: Vec<_> = variable_queries().into_iter().filter(|(d, ..)| d == name).collect();
        let expected =
            [("device", "bms_up", "device"), ("pack", "bms_pack_voltage_volts{device=~\"$device\"}", "pack")];
        assert_eq!(lookups.len(), expected.len(), "{name}: {lookups:?}");
        for ((_, variable, selector, label), (v, s, l)) in lookups.iter().zip(expected) {
            assert_eq!((variable.as_str(), selector.as_str(), label.as_str()), (v, s, l), "{name}");
        }
        let datasource = by_name["datasource"];
        assert_eq!((&datasource["type"], &datasource["query"]), (&json!("datasource"), &json!("prometheus")), "{name}");
        for (variable, definition) in [
            ("device", "label_values(bms_up, device)"),
            ("pack", "label_values(bms_pack_voltage_volts{device=~\"$device\"}, pack)"),
        ] {
            let v = by_name[variable];
            assert_eq!(v["type"], "query", "{name}: {variable}");
            assert_eq!(v["definition"], definition, "{name}: {variable}");
            assert_eq!(v["query"]["query"], definition, "{name}: {variable}");
            assert_eq!((&v["multi"], &v["includeAll"]), (&json!(true), &json!(true)), "{name}: {variable}");
            // All as `.*` keeps the regex matchers short and matches devices added after the page loaded.
            assert_eq!(v["allValue"], ".*", "{name}: {variable}");
        }
        // The whole document refers only to these variables; DS_PROMETHEUS is the import form's input and
        // `$__all` the value a variable holds while All is selected.
        let text = serde_json::to_string(&d).unwrap();
        for variable in variables_in(&text) {
            assert!(
                ALLOWED_VARIABLES.contains(&variable.as_str())
                    || ["DS_PROMETHEUS", "__all"].contains(&variable.as_str()),
                "{name} refers to ${variable}, which it does not define"
            );
        }
    }
    for (dashboard, title, expr) in dashboard_queries() {
        for variable in variables_in(&expr) {
            assert!(ALLOWED_VARIABLES.contains(&variable.as_str()), "{dashboard}: {title:?} uses ${variable}: {expr}");
        }
        assert!(!expr.contains("${"), "{dashboard}: {title:?}: write $name, which the e2e substitution knows: {expr}");
        let sent = substitute_variables(&expr);
        assert!(!sent.contains('$'), "{dashboard}: {title:?}: a variable survives substitution: {sent}");
        if expr.contains("$pack") {
            assert!(expr.contains("$device"), "{dashboard}: {title:?} filters packs but not devices: {expr}");
        }
    }
}

#[test]
fn no_query_filters_by_value_so_each_answers_while_all_is_well() {
    // A comparison (`bms_alarm_active == 1`) returns nothing while no alarm is active, and the e2e test requires
    // data from every query; panels filter client-side instead (the tables' filterByValue transformation).
    for (dashboard, title, expr) in dashboard_queries() {
        let mut outside = String::new();
        let mut depth = 0_u32;
        for c in without_strings(&expr).chars() {
            match c {
                '{' => depth += 1,
                '}' => depth = depth.saturating_sub(1),
                _ if depth == 0 => outside.push(c),
                _ => {}
            }
        }
        for op in ["==", "!=", ">", "<", " unless "] {
            assert!(!outside.contains(op), "{dashboard}: {title:?} filters with {op}: {expr}");
        }
    }
}

#[test]
fn the_dashboards_show_what_issue_7_asks_for() {
    let queries = dashboard_queries();
    let has = |uid: &str, title: &str, needle: &str| {
        queries.iter().any(|(d, t, e)| d == uid && t == title && e.contains(needle))
    };
    assert!(has("bms-overview", "Pack power", "bms_pack_voltage_volts"));
    assert!(has("bms-overview", "Pack power", "* bms_pack_current_amperes"));
    assert!(has("bms-overview", "Active alarms", "sum by (device, pack) (bms_alarm_active"));
    assert!(has("bms-overview", "Last success age", "time() - bms_last_poll_success_timestamp_seconds"));
    assert!(has("bms-overview", "Poll failures by reason", "rate(bms_poll_failures_total"));
    assert!(has("bms-cells", "Cell spread", "max by (device, pack)"));
    let cells = dashboard("bms-cells");
    let types: BTreeMap<&str, &str> = panels(&cells)
        .into_iter()
        .map(|p| (p["title"].as_str().unwrap_or_default(), p["type"].as_str().unwrap_or_default()))
        .collect();
    assert_eq!(types.get("Cell voltage heat map"), Some(&"heatmap"));
    assert_eq!(types.get("Balancing per cell"), Some(&"state-timeline"));
    // Rate windows follow the scrape interval Grafana knows, never a fixed one that may hold a single sample.
    for (dashboard, title, expr) in &queries {
        if expr.contains("rate(") || expr.contains("increase(") {
            assert!(
                expr.contains("[$__rate_interval]") || expr.contains("[$__range]"),
                "{dashboard}: {title:?}: {expr}"
            );
        }
    }
}

#[test]
fn each_dashboard_links_to_the_other() {
    let all: Vec<Value> = DASHBOARDS.iter().map(|n| dashboard(n)).collect();
    for (name, d) in DASHBOARDS.iter().zip(&all) {
        let links = d["links"].as_array().unwrap_or_else(|| panic!("{name}: no links"));
        let reaches_others = DASHBOARDS.iter().zip(&all).filter(|(other, _)| *other != name).all(|(_, other)| {
            links.iter().any(|link| {
                link["type"] == "dashboards"
                    && link["includeVars"] == true
                    && link["keepTime"] == true
                    && link["tags"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .all(|tag| other["tags"].as_array().is_some_and(|tags| tags.contains(tag)))
                    && link["tags"].as_array().is_some_and(|tags| !tags.is_empty())
            })
        });
        assert!(reaches_others, "{name}: no dashboards link (with variables and time) whose tags the other carries");
    }
}

#[test]
fn provisioning_loads_the_dashboards_folder_from_a_prometheus_source() {
    let read = |rel: &str| {
        let path = grafana_path(rel);
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let value: Value = serde_saphyr::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        (text, value)
    };
    let (text, provider) = read("provisioning/dashboards/bms.yaml");
    assert!(text.starts_with('#'), "bms.yaml: starts with a comment saying what it is");
    assert!(text.contains("grafana/dashboards"), "bms.yaml: the header says which folder to put at options.path");
    assert_eq!(provider["apiVersion"], 1);
    let providers = provider["providers"].as_array().expect("bms.yaml: providers");
    assert_eq!(providers.len(), 1);
    let p = &providers[0];
    assert_eq!(p["type"], "file");
    let path = p["options"]["path"].as_str().unwrap_or_default();
    assert!(path.starts_with('/') && path.ends_with("/dashboards/bms"), "bms.yaml: options.path {path:?}");
    // The provider loads every JSON file of the folder: the folder holds exactly the dashboards tested here.
    let mut files: Vec<String> = std::fs::read_dir(grafana_path("dashboards"))
        .expect("grafana/dashboards")
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    files.sort();
    let mut expected: Vec<String> = DASHBOARDS.iter().map(|n| format!("{n}.json")).collect();
    expected.sort();
    assert_eq!(files, expected, "grafana/dashboards holds a file this test does not check");

    let (text, source) = read("provisioning/datasources/prometheus.yaml");
    assert!(text.starts_with('#'), "prometheus.yaml: starts with a comment saying what it is");
    assert_eq!(source["apiVersion"], 1);
    let ds = &source["datasources"][0];
    assert_eq!(ds["type"], "prometheus");
    assert!(ds["url"].as_str().is_some_and(|u| u.starts_with("http")), "prometheus.yaml: url {}", ds["url"]);
    assert!(ds["jsonData"]["timeInterval"].is_string(), "prometheus.yaml: $__rate_interval needs timeInterval");
}
