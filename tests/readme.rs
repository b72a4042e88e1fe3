//! The README's metrics reference is generated from the metric tables in the code (`metrics::names::ALL` and
//! `MQTT`); this test keeps them equal. Regenerate with `BMS_UPDATE_README=1 cargo test --test integration readme`.

use std::path::PathBuf;

use bms_exporter::metrics::names;

const START: &str = "<!-- metrics-reference:start (generated from src/metrics/names.rs; do not edit) -->\n";
const END: &str = "<!-- metrics-reference:end -->";

#[test]
fn the_readme_metrics_reference_is_the_metric_table() {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("README.md");
    let readme = std::fs::read_to_string(&path).unwrap();
    let start = readme.find(START).expect("README.md lacks the metrics-reference start marker") + START.len();
    let end = start + readme[start..].find(END).expect("README.md lacks the metrics-reference end marker");
    let table = names::reference_markdown();
    if std::env::var_os("BMS_UPDATE_README").is_some() {
        std::fs::write(&path, format!("{}{table}{}", &readme[..start], &readme[end..])).unwrap();
        return;
    }
    assert_eq!(
        &readme[start..end],
        table,
        "README.md's metrics reference is out of date: regenerate it (see the module doc)"
    );
    for metric in names::every() {
        assert!(readme[start..end].contains(&format!("`{}`", metric.name)), "{}", metric.name);
    }
}
