//! The Sinowealth codec against `vectors/sinowealth.json` (the captured replies of
//! `docs/protocols/sinowealth.md#test-vectors` plus constructed cases), split-stream decoding, no-panic and
//! round-trip properties, and the `decode --protocol sinowealth` command.

use bms_exporter::protocol::deframer::Deframer;
use bms_exporter::protocol::sinowealth::{
    CaptureDecoder, CheckPolicy, Register, ReplyFraming, Value, decode_capture, decode_capture_with, decode_reply,
    decode_request, encode_reply, encode_request,
};
use bms_exporter::protocol::{Capture, DecodeError, DecodeOptions, parse_hex};
use proptest::prelude::*;

use crate::util::{assert_close, vectors};

type Json = serde_json::Value;

fn all_vectors() -> Vec<Json> {
    let all = vectors("sinowealth.json");
    assert!(all.len() >= 14, "captured and constructed vectors are all there");
    all
}

fn bytes(vector: &Json, key: &str) -> Vec<u8> {
    parse_hex(vector[key].as_str().unwrap()).unwrap()
}

/// Every key of `expected` must be in `actual` with the same value (numbers within 1e-6), recursively.
fn assert_subset(path: &str, actual: &Json, expected: &Json) {
    match (actual, expected) {
        (Json::Object(a), Json::Object(e)) => {
            for (key, want) in e {
                let got = a.get(key).unwrap_or_else(|| panic!("{path}.{key} missing in {actual}"));
                assert_subset(&format!("{path}.{key}"), got, want);
            }
        }
        (Json::Array(a), Json::Array(e)) => {
            assert_eq!(a.len(), e.len(), "{path}: {actual} vs {expected}");
            for (i, (got, want)) in a.iter().zip(e).enumerate() {
                assert_subset(&format!("{path}[{i}]"), got, want);
            }
        }
        (Json::Number(a), Json::Number(e)) => assert_close(path, a.as_f64().unwrap(), e.as_f64().unwrap(), 1e-6),
        _ => assert_eq!(actual, expected, "{path}"),
    }
}

fn decode_split(
    request: &[u8],
    response: &[u8],
    cut: usize,
) -> Result<Capture<bms_exporter::protocol::sinowealth::Reply>, DecodeError> {
    let requests = request.chunks_exact(3).map(|r| decode_request(r).unwrap()).collect();
    let mut decoder = CaptureDecoder::new(requests, CheckPolicy::Report);
    decoder.push(&response[..cut]);
    decoder.push(&response[cut..]);
    decoder.finish(response.len())
}

#[test]
fn every_sinowealth_vector_decodes_to_its_expected_values_or_error() {
    for vector in all_vectors() {
        let name = vector["name"].as_str().unwrap();
        assert_eq!(vector["variant"], "sinowealth", "{name}");
        let request = bytes(&vector, "request_hex");
        let response = bytes(&vector, "response_hex");
        let mut expected = vector["expected"].as_object().unwrap().clone();
        let result = decode_capture(Some(&request), &response, &DecodeOptions::default());
        if let Some(kind) = expected.remove("error_kind") {
            expected.remove("error");
            let kinds: Vec<&str> = match &result {
                Err(e) => vec![e.kind()],
                Ok(capture) => capture.rejected.iter().map(|r| r.kind).collect(),
            };
            assert!(kinds.contains(&kind.as_str().unwrap()), "{name}: {kinds:?}");
            if expected.is_empty() {
                continue;
            }
        }
        let capture = result.unwrap_or_else(|e| panic!("{name}: {e}"));
        let json = serde_json::to_value(&capture).unwrap();
        if let Some(pack) = expected.remove("pack") {
            assert_subset(name, &json["device"]["packs"][0], &pack);
        }
        if let Some(replies) = expected.remove("replies") {
            assert_subset(name, &json["replies"], &replies);
        }
        if !expected.is_empty() {
            assert_eq!(capture.replies.len(), 1, "{name}");
            assert_subset(name, &json["replies"][0], &Json::Object(expected));
        }
    }
}

#[test]
fn every_sinowealth_vector_decodes_identically_when_split_at_every_byte() {
    for vector in all_vectors() {
        let request = bytes(&vector, "request_hex");
        let response = bytes(&vector, "response_hex");
        let whole = decode_capture(Some(&request), &response, &DecodeOptions::default());
        for cut in 0..=response.len() {
            assert_eq!(decode_split(&request, &response, cut), whole, "{} cut at {cut}", vector["name"]);
        }
    }
}

#[test]
fn the_issue_34_poll_applies_every_protection_as_an_alarm() {
    let vector = all_vectors().into_iter().find(|v| v["name"] == "sinowealth_issue34_full_poll_constructed").unwrap();
    let capture = decode_capture(
        Some(&bytes(&vector, "request_hex")),
        &bytes(&vector, "response_hex"),
        &DecodeOptions::default(),
    )
    .unwrap();
    assert!(capture.rejected.is_empty(), "{:?}", capture.rejected);
    let alarms = &capture.device.packs[0].alarms;
    assert_eq!(alarms.len(), 11);
    let active: Vec<_> = alarms.iter().filter(|a| a.active).map(|a| a.name).collect();
    assert_eq!(active, ["charge_undertemperature"]);
}

#[test]
fn a_missing_reply_truncates_only_the_requests_left_unanswered() {
    let request = parse_hex("0a0b02 0a0102 0a0202").unwrap();
    let capture = decode_capture(Some(&request), &parse_hex("340d0f 0d").unwrap(), &DecodeOptions::default()).unwrap();
    assert_eq!(capture.replies.len(), 1);
    assert_eq!(
        capture.rejected.iter().map(|r| r.message.as_str()).collect::<Vec<_>>(),
        ["truncated frame: 1 of 3 bytes", "truncated frame: 0 of 3 bytes"]
    );
}

#[test]
fn verify_policy_rejects_what_report_policy_keeps() {
    let request = parse_hex("0a0b02").unwrap();
    let response = parse_hex("340d00").unwrap();
    assert_eq!(
        decode_capture_with(Some(&request), &response, CheckPolicy::Verify),
        Err(DecodeError::Checksum { computed: 0x0f, received: 0x00 })
    );
    let kept = decode_capture_with(Some(&request), &response, CheckPolicy::Report).unwrap();
    assert_eq!(kept.device.packs[0].voltage_volts, Some(13.325));
}

#[test]
fn an_echoed_request_is_skipped_and_its_reply_decoded() {
    let request = parse_hex("0a1004").unwrap();
    let reply = encode_reply(Register::Current, &Value::Current { current_a: 1.5 });
    let stream = [request.clone(), reply].concat();
    let capture = decode_capture(Some(&request), &stream, &DecodeOptions::default()).unwrap();
    assert_eq!(capture.device.packs[0].current_amperes, Some(1.5));
    assert_eq!(capture.rejected.iter().map(|r| r.kind).collect::<Vec<_>>(), ["host_echo"]);
}

fn any_register() -> impl Strategy<Value = Register> {
    (1u8..=0x18).prop_map(|a| Register::from_address(a).unwrap())
}

proptest! {
    #[test]
    fn no_input_makes_the_decoders_panic(stream in proptest::collection::vec(any::<u8>(), 0..=4096),
                                          register in any_register()) {
        let options = DecodeOptions::default();
        let _ = decode_capture(Some(&encode_request(register)), &stream, &options);
        let _ = decode_capture(Some(&stream), &stream, &options);
        let _ = decode_capture(None, &stream, &options);
        let _ = decode_request(&stream);
        let _ = decode_reply(register, &stream, CheckPolicy::Verify);
        let _ = Value::decode(register, &stream);
        let mut deframer = Deframer::new(ReplyFraming::new(register));
        deframer.push(&stream);
        while deframer.poll().is_some() {}
        let _ = deframer.finish();
    }

    #[test]
    fn requests_round_trip(register in any_register()) {
        prop_assert_eq!(decode_request(&encode_request(register)), Ok(register));
    }

    #[test]
    fn replies_round_trip_with_a_valid_check_byte(register in any_register(), raw in any::<[u8; 4]>()) {
        let data = &raw[..usize::from(register.data_len())];
        let first = Value::decode(register, data).unwrap();
        let reply = encode_reply(register, &first);
        let decoded = decode_reply(register, &reply, CheckPolicy::Verify).unwrap();
        prop_assert!(decoded.check_ok);
        prop_assert_eq!(decoded.value, first);
    }
}

#[test]
fn the_cli_decodes_the_worked_example_and_needs_the_request() {
    let output = assert_cmd::Command::cargo_bin("bms_exporter")
        .unwrap()
        .args(["decode", "--protocol", "sinowealth", "--request", "0a0b02", "340d0f"])
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let json: Json = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(json["replies"][0]["pack_voltage_v"], 13.325);
    assert_eq!(json["device"]["packs"][0]["voltage_volts"], 13.325);

    let output = assert_cmd::Command::cargo_bin("bms_exporter")
        .unwrap()
        .args(["decode", "--protocol", "sinowealth", "340d0f"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&output.stderr).contains("--request"));
}
