//! `bms_exporter decode` as a user meets it: what it accepts, and how it says no. Protocol-specific decoding is
//! covered next to each protocol's vectors.

use assert_cmd::Command;

fn decode() -> Command {
    let mut cmd = Command::cargo_bin("bms_exporter").unwrap();
    cmd.arg("decode");
    cmd
}

fn stderr_of(cmd: &mut Command) -> (i32, String) {
    let out = cmd.output().unwrap();
    (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stderr).into_owned())
}

#[test]
fn an_unknown_protocol_is_a_usage_error_that_lists_the_valid_ones() {
    let (code, stderr) = stderr_of(decode().args(["--protocol", "modbus", "a5"]));
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("daly, daly-modbus, sinowealth, pace"), "{stderr}");
}

#[test]
fn missing_bytes_are_a_usage_error() {
    let (code, stderr) = stderr_of(decode().args(["--protocol", "daly"]));
    assert_eq!(code, 2, "{stderr}");
}

#[test]
fn text_that_is_not_hex_names_the_argument_and_the_offset() {
    let (code, stderr) = stderr_of(decode().args(["--protocol", "daly", "a501", "a5zz"]));
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("argument 2"), "{stderr}");
    assert!(stderr.contains("non-hex character 0x7a at offset 2"), "{stderr}");
}

#[test]
fn an_odd_number_of_hex_digits_is_refused() {
    let (code, stderr) = stderr_of(decode().args(["--protocol", "daly", "a50"]));
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("an odd number of hex digits (3)"), "{stderr}");
}

#[test]
fn sinowealth_needs_the_request_because_its_replies_do_not_name_a_register() {
    let (code, stderr) = stderr_of(decode().args(["--protocol", "sinowealth", "340d0f"]));
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("--request"), "{stderr}");
}

#[test]
fn bytes_with_no_frame_in_them_fail_without_printing_json() {
    for protocol in ["daly", "daly-modbus", "pace"] {
        let out = decode().args(["--protocol", protocol, "00112233445566778899"]).output().unwrap();
        assert_eq!(out.status.code(), Some(1), "{protocol}");
        assert!(out.stdout.is_empty(), "{protocol}: {}", String::from_utf8_lossy(&out.stdout));
        assert!(String::from_utf8_lossy(&out.stderr).starts_with("error: "), "{protocol}");
    }
}

#[test]
fn an_implausible_reply_is_reported_as_rejected_with_its_reason() {
    // Issue 12: noise whose first three bytes pass the Sinowealth check byte (1,423.55 °C) before the reply.
    let out = decode().args(["--protocol", "sinowealth", "--request", "0a0e02", "42476c5e7f0bf181"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["replies"][0]["temperature_c"], 32.55);
    assert_eq!(json["rejected"][0]["kind"], "implausible");
    assert!(json["rejected"][0]["message"].as_str().unwrap().contains("temperature outside"), "{json}");
    // Alone, the noise is no reply at all.
    let (code, stderr) = stderr_of(decode().args(["--protocol", "sinowealth", "--request", "0a0e02", "42476c"]));
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("implausible reply: temperature outside −50…150 °C (implausible)"), "{stderr}");
    // A Daly 0x90 frame whose checksum survived a raised current byte and a lowered SOC byte: beyond 3000 A.
    let (code, stderr) = stderr_of(decode().args(["--protocol", "daly", "a501900802030000f72403b819"]));
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("current beyond ±2000 A (implausible)"), "{stderr}");
}

#[test]
fn an_implausible_modbus_or_pace_reply_is_refused_with_its_reason_and_a_plausible_one_decodes() {
    use bms_exporter::protocol::daly_modbus::{Map, encode_read_reply};
    use bms_exporter::protocol::pace::{CID1_BATTERY, Header, PackBlock, VER_PACE, encode_analog, pace_tail};
    // A p81 read of cells 1–2: 3.3 V, then 3.301 V or 17.009 V.
    for (cell, ok) in [(3301, true), (17_009, false)] {
        let reply = encode_read_reply(Map::P81 { board: 1 }, &[3300, cell]);
        let out =
            decode().args(["--protocol", "daly-modbus", "--request", "810300000002dbcb"]).arg(hex(&reply)).output();
        let out = out.unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.success(), ok, "{cell}: {stderr}");
        assert_eq!(stderr.contains("cell voltage outside 0–5 V (implausible)"), !ok, "{cell}: {stderr}");
    }
    // A Pace 0x42 reply whose cell 2 reads 17.009 V, with a right CHKSUM.
    let block = PackBlock {
        cells_mv: vec![3300, 17_009, 3300, 3300],
        temps_raw: vec![2980; 2],
        current_raw: 0,
        voltage_mv: 13_200,
        remaining_raw: 5000,
        user_defined_count: 3,
        tail: pace_tail(10_000, 7, 10_000, 6),
    };
    let header = Header { ver: VER_PACE, adr: 1, cid1: CID1_BATTERY, code: 0 };
    let frame = encode_analog(header, 0, 1, &[block]).unwrap();
    let (code, stderr) = stderr_of(decode().args(["--protocol", "pace", std::str::from_utf8(&frame).unwrap()]));
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("implausible reply: cell voltage outside 0–5 V (implausible)"), "{stderr}");
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
