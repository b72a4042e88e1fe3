//! Cold reads of a Daly board that ignores the identity reads 0x57/0x63 (`simulate --no-identity`): `read` and
//! `detect` over a real PTY at 9600 baud must not wait out full reply timeouts for what the board never answers,
//! and must still read every value (tests/tests.rs `mod cold_read`). Speed itself is measured by
//! scripts/measure-cold-read.py; here a long `--timeout-ms` makes a full-timeout wait unmistakable instead.

use std::time::{Duration, Instant};

use serde_json::Value;

use crate::cli_commands::{assert_pack_matches, bms, truth_pack};
use crate::util::Simulator;

/// A reply timeout so long that waiting it out even once shows in the run time beyond any load on the machine.
const LONG_TIMEOUT_MS: u64 = 4000;

/// A frozen Daly simulator on a PTY, paced as a 9600-baud line with a 20 ms turnaround, identity reads ignored.
fn board(name: &str) -> (Simulator, String) {
    let (sim, link) = Simulator::pty(
        name,
        &["--protocol", "daly", "--time-scale", "0", "--baud", "9600", "--latency-ms", "20", "--no-identity"],
    );
    let link = link.to_str().unwrap().to_owned();
    (sim, link)
}

#[test]
fn read_all_of_a_board_without_identity_reads_every_value_reports_no_identity_and_waits_no_full_timeout() {
    let (sim, link) = board("cold-read");
    let timeout = LONG_TIMEOUT_MS.to_string();
    let started = Instant::now();
    let run = bms(["read", "--protocol", "daly", "--serial", &link, "--all", "--timeout-ms", &timeout]);
    let elapsed = started.elapsed();
    assert_eq!(run.code, 0, "a board without identity reads is not an error: {}", run.stderr);
    let doc = run.json();
    assert_eq!(doc["errors"], Value::Array(vec![]), "no request failed: {doc}");
    let truth = sim.truth_json();
    assert_pack_matches("daly", &doc["packs"][0], truth_pack(&truth, 1));
    let info = &doc["packs"][0]["info"];
    assert_eq!(info["model"], Value::Null, "0x63 unanswered: no model: {info}");
    assert_eq!(info["serial_number"], Value::Null, "0x57 unanswered: no battery code: {info}");
    let rated = &truth_pack(&truth, 1)["design_capacity_ampere_hours"];
    assert!(rated.is_number(), "the simulator rates its pack: {rated}");
    assert_eq!(&info["design_capacity_ampere_hours"], rated, "0x50 is answered and read: {info}");
    // Two unanswered reads at the full timeout would take 8 s on their own.
    assert!(
        elapsed < Duration::from_millis(2 * LONG_TIMEOUT_MS - 1000),
        "the identity reads waited out the full {LONG_TIMEOUT_MS} ms timeout: {elapsed:?}"
    );
}

#[test]
fn a_worker_stops_asking_for_identity_a_board_left_unanswered_twice() {
    let (_sim, link) = board("cold-read-watch");
    let run =
        bms(["read", "--protocol", "daly", "--serial", &link, "--all", "--watch", "0", "--count", "3", "--verbose"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(run.stdout.lines().count(), 3, "three polls: {}", run.stdout);
    // --verbose logs each request as `tx <hex>`: A5, host 0x40, the command.
    let sent = |command: &str| run.stderr.lines().filter(|l| l.contains(&format!("tx a540{command}08"))).count();
    assert_eq!(sent("90"), 3, "every poll reads 0x90:\n{}", run.stderr);
    assert_eq!(sent("57"), 2, "0x57 is asked in two polls, then given up:\n{}", run.stderr);
    assert_eq!(sent("63"), 2, "0x63 is asked in two polls, then given up:\n{}", run.stderr);
    assert_eq!(sent("50"), 1, "0x50, answered, is read once:\n{}", run.stderr);
}

#[test]
fn detect_finds_a_board_without_identity_reads_and_tries_the_other_protocols_briefly() {
    let (_sim, link) = board("cold-detect");
    let timeout = LONG_TIMEOUT_MS.to_string();
    let started = Instant::now();
    let run = bms(["detect", "--serial", &link, "--timeout-ms", &timeout]);
    let elapsed = started.elapsed();
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(run.stdout.contains("    protocol: daly\n    serial: "), "{}", run.stdout);
    assert!(run.stdout.contains("    daly: { address: rs485 }\n"), "{}", run.stdout);
    // Five other probes follow the answer; at the full timeout each would wait 4 s at least.
    assert!(
        elapsed < Duration::from_millis(2 * LONG_TIMEOUT_MS),
        "the probes after the answer waited out the full {LONG_TIMEOUT_MS} ms timeout: {elapsed:?}"
    );
}
