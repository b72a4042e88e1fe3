//! The README's metrics reference is generated from the metric tables in the code (`metrics::names::ALL` and
//! `MQTT`); this test keeps them equal. Regenerate with `BMS_UPDATE_README=1 cargo test --test integration readme`.
//! Other README statements that drift are held to their source too: the `decode` example's output, the packages
//! the test command installs, and the Rust version it asks for.

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

fn readme() -> String {
    std::fs::read_to_string(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("README.md")).unwrap()
}

/// The text of the first `fence` block (e.g. "```json") after `marker`.
fn block_after<'a>(text: &'a str, marker: &str, fence: &str) -> &'a str {
    let at = text.find(marker).unwrap_or_else(|| panic!("README.md lacks {marker:?}")) + marker.len();
    let opening = format!("\n{fence}\n");
    let body =
        at + text[at..].find(&opening).unwrap_or_else(|| panic!("no {fence} block after {marker:?}")) + opening.len();
    &text[body..body + text[body..].find("```").expect("a closing fence")]
}

#[test]
fn the_readme_decode_example_prints_what_the_binary_prints() {
    let readme = readme();
    let command = "cargo run --release -- decode --protocol daly a5019008020300007724033819";
    let shown: serde_json::Value = serde_json::from_str(block_after(&readme, command, "```json"))
        .expect("the README's decode output is the JSON the command prints, unabridged");
    let args: Vec<&str> = command.split_whitespace().skip(4).collect();
    let output = assert_cmd::Command::cargo_bin("bms_exporter").unwrap().args(&args).output().unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let printed: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(shown, printed, "README.md's decode example is out of date: paste what the command prints now");
}

#[test]
fn the_readme_names_every_package_the_test_command_installs() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let script = std::fs::read_to_string(root.join("scripts/test.sh")).unwrap();
    let readme = readme();
    let tests = &readme[readme.find("## Tests").expect("a Tests section")..];
    // Debian packages: the `command:package` pairs of the install loop, plus the Python module checked apart.
    let pairs = script.split("for pair in ").nth(1).and_then(|rest| rest.split("; do").next()).expect("the loop");
    let mut packages: Vec<&str> =
        pairs.split_whitespace().filter_map(|pair| pair.split_once(':').map(|(_, package)| package)).collect();
    assert!(packages.len() >= 10, "the install loop of scripts/test.sh was not found: {packages:?}");
    packages.push("python3-dbusmock");
    // Python packages: the names pinned on the venv's pip line.
    let pip = script.lines().find(|l| l.contains("pip\" install") && l.contains("dalybms")).expect("the pip line");
    let pinned = pip.split_whitespace().filter_map(|w| w.split_once("==").map(|(name, _)| name));
    for package in packages.into_iter().chain(pinned) {
        assert!(tests.contains(&format!("`{package}`")), "the README's Tests section does not name `{package}`");
    }
}

#[test]
fn the_readme_asks_for_the_rust_version_cargo_toml_declares() {
    let manifest = std::fs::read_to_string(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml")).unwrap();
    let version = manifest
        .lines()
        .find_map(|l| l.strip_prefix("rust-version = "))
        .map(|v| v.trim_matches('"'))
        .expect("Cargo.toml declares rust-version");
    let readme = readme();
    let first_command = readme.find("```sh").expect("a first command");
    assert!(
        readme[..first_command].contains(&format!("Rust {version} or later")),
        "README.md must say, before its first command, that Rust {version} or later is needed"
    );
    assert!(readme[..first_command].contains("rustup"), "and how to install it");
}
