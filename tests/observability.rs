//! The shipped dashboards and rules against a real Prometheus (Debian package `prometheus`) that scrapes
//! `bms_exporter --demo` with `deploy/prometheus/{rules,alerts}.yml` loaded: every rule expression and every
//! dashboard query (Grafana variables substituted) is sent to the query API and must not error, and every
//! dashboard query must return data; Prometheus must have loaded every rule group without an evaluation error.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;

use crate::util::{Killed, Scratch, free_port, http_get, prometheus, url_encode, wait_for};

fn repo(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(rel)
}

/// Send `expr` to Prometheus' instant query API: the status and the number of series or samples it returned.
fn ask(prometheus: &str, expr: &str) -> (Value, usize) {
    let response = http_get(prometheus, &format!("/api/v1/query?query={}", url_encode(expr)), &[])
        .unwrap_or_else(|| panic!("Prometheus did not answer {expr}"));
    let json: Value = serde_json::from_str(&response.body).unwrap_or_else(|e| panic!("{expr}: {e}: {}", response.body));
    let count = match &json["data"]["result"] {
        Value::Array(series) => series.len(),
        Value::Null => 0,
        _ => 1, // a scalar or string result
    };
    (json, count)
}

fn exporter_demo(dir: &Path) -> (Killed, String) {
    let addr = format!("127.0.0.1:{}", free_port());
    let mut exporter =
        crate::exporter::exporter(dir, &["--demo", "--web.listen-address", &addr, "--log.level", "warn"]);
    crate::exporter::wait_ready(&mut exporter, &addr, dir);
    (exporter, addr)
}

#[test]
fn every_dashboard_query_returns_data_and_every_rule_evaluates_against_a_real_prometheus_scraping_the_demo() {
    let scratch = Scratch::new("e2e-observability");
    let dir = scratch.0.clone();
    let (_exporter, target) = exporter_demo(&dir);
    let rules = [repo("deploy/prometheus/rules.yml"), repo("deploy/prometheus/alerts.yml")];
    let (_prometheus, prom) = prometheus(&dir, &target, &rules);
    // Enough scrapes for rate() over the 1m windows the dashboards use with $__rate_interval.
    wait_for("the demo's series in Prometheus", Duration::from_secs(30), || {
        (ask(&prom, "count(bms_cell_voltage_volts)").1 > 0).then_some(())
    });
    std::thread::sleep(Duration::from_secs(5));

    let queries = crate::grafana::dashboard_queries();
    assert!(queries.len() >= 20, "the dashboards have only {} queries", queries.len());
    let mut empty = Vec::new();
    for (dashboard, panel, expr) in &queries {
        let expr = crate::grafana::substitute_variables(expr);
        let (json, count) = ask(&prom, &expr);
        assert_eq!(json["status"], "success", "{dashboard} / {panel}: {expr}: {json}");
        if count == 0 {
            empty.push(format!("{dashboard} / {panel}: {expr}"));
        }
    }
    assert!(empty.is_empty(), "dashboard queries without data against the demo:\n{}", empty.join("\n"));
    // The variable pickers fill too: each label_values lookup finds values.
    for (dashboard, variable, selector, label) in crate::grafana::variable_queries() {
        let selector = crate::grafana::substitute_variables(&selector);
        let path = format!("/api/v1/label/{label}/values?match[]={}", url_encode(&selector));
        let response = http_get(&prom, &path, &[]).unwrap();
        let json: Value = serde_json::from_str(&response.body).unwrap();
        let values = json["data"].as_array().map_or(0, Vec::len);
        assert!(values > 0, "{dashboard} variable {variable}: no {label} values for {selector}: {json}");
    }

    let rules = crate::prometheus_rules::rule_expressions();
    assert!(rules.len() >= 10, "only {} rules", rules.len());
    for (name, expr) in &rules {
        let (json, _) = ask(&prom, expr);
        assert_eq!(json["status"], "success", "rule {name}: {expr}: {json}");
    }
    // Prometheus loaded every group from the files and evaluates each rule without error.
    wait_for("every rule evaluated", Duration::from_secs(20), || {
        let response = http_get(&prom, "/api/v1/rules", &[])?;
        let json: Value = serde_json::from_str(&response.body).ok()?;
        let groups = json["data"]["groups"].as_array()?;
        let rules_seen: Vec<&Value> = groups.iter().flat_map(|g| g["rules"].as_array().into_iter().flatten()).collect();
        for rule in &rules_seen {
            assert_ne!(rule["health"], "err", "rule {} fails to evaluate: {}", rule["name"], rule["lastError"]);
        }
        let evaluated = rules_seen.iter().all(|r| r["health"] == "ok");
        (evaluated && rules_seen.len() == rules.len()).then_some(())
    });
    // The recording rules produce series from the demo (cell spread and pack power per pack).
    let recorded = query_recorded(&prom);
    assert!(recorded > 0, "no recording rule produced a series");
}

/// How many series the recording rules (names with a `:`) produced.
fn query_recorded(prometheus: &str) -> usize {
    let (json, _) = ask(prometheus, "count by (__name__) ({__name__=~\".+:.+\"})");
    json["data"]["result"].as_array().map_or(0, Vec::len)
}
