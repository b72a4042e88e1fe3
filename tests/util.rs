//! Helpers shared by the integration tests: fixture loading and tolerance checks.

#![allow(dead_code)] // each topic module uses a different subset

use std::path::PathBuf;

/// Path of a file under `tests/fixtures/`.
pub fn fixture(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(rel)
}

/// A shared vector file under `tests/fixtures/vectors/`, parsed as JSON.
pub fn vectors(file: &str) -> Vec<serde_json::Value> {
    let path = fixture(&format!("vectors/{file}"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Assert that `actual` is within `tolerance` of `expected`, naming the field on failure.
pub fn assert_close(what: &str, actual: f64, expected: f64, tolerance: f64) {
    assert!((actual - expected).abs() <= tolerance, "{what}: got {actual}, expected {expected} (±{tolerance})");
}
