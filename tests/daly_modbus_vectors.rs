//! The Modbus-style Daly codec against the shared D2 vectors, split-stream decoding, no-panic properties and
//! encode→decode round trips for requests and replies, and the `decode --protocol daly-modbus` command.

use bms_exporter::model::{PackState, SensorId};
use bms_exporter::protocol::daly_modbus::{
    CaptureDecoder, Map, ModbusFraming, Pdu, READ, Registers, Reply, Request, d2, decode_capture, decode_request,
    encode_exception_reply, encode_read_reply, encode_request, encode_write_reply, p81, parse_frame,
};
use bms_exporter::protocol::deframer::Deframer;
use bms_exporter::protocol::{Capture, DecodeError, DecodeOptions, parse_hex};
use proptest::prelude::*;
use serde_json::Value;

use crate::util::{assert_close, vectors};

fn d2_vectors() -> Vec<Value> {
    let all: Vec<Value> = vectors("daly.json").into_iter().filter(|v| v["variant"] == "modbus_d2").collect();
    assert_eq!(all.len(), 2, "the shared file holds two D2 vectors");
    all
}

fn bytes(vector: &Value, key: &str) -> Vec<u8> {
    parse_hex(vector[key].as_str().unwrap()).unwrap()
}

/// Every key of `expected` must be in `actual` with the same value (numbers within 1e-6), recursively.
fn assert_subset(path: &str, actual: &Value, expected: &Value) {
    match (actual, expected) {
        (Value::Object(a), Value::Object(e)) => {
            for (key, want) in e {
                let got = a.get(key).unwrap_or_else(|| panic!("{path}.{key} missing in {actual}"));
                assert_subset(&format!("{path}.{key}"), got, want);
            }
        }
        (Value::Array(a), Value::Array(e)) => {
            assert_eq!(a.len(), e.len(), "{path}: {actual} vs {expected}");
            for (i, (got, want)) in a.iter().zip(e).enumerate() {
                assert_subset(&format!("{path}[{i}]"), got, want);
            }
        }
        (Value::Number(a), Value::Number(e)) => assert_close(path, a.as_f64().unwrap(), e.as_f64().unwrap(), 1e-6),
        _ => assert_eq!(actual, expected, "{path}"),
    }
}

fn decode_split(request: Option<&[u8]>, response: &[u8], cut: usize) -> Result<Capture<Reply>, DecodeError> {
    let requests = request.map(|r| r.chunks_exact(8).map(|c| decode_request(c).unwrap()).collect()).unwrap_or_default();
    let mut decoder = CaptureDecoder::new(requests, DecodeOptions::default());
    decoder.push(&response[..cut]);
    decoder.push(&response[cut..]);
    decoder.finish(response.len())
}

#[test]
fn every_d2_vector_decodes_to_its_expected_values_or_error() {
    for vector in d2_vectors() {
        let name = vector["name"].as_str().unwrap();
        let request = bytes(&vector, "request_hex");
        let response = bytes(&vector, "response_hex");
        let expected = &vector["expected"];
        let result = decode_capture(Some(&request), &response, &DecodeOptions::default());
        if let Some(reason) = expected.get("error") {
            let error = result.expect_err(name);
            assert_eq!(error.kind(), "chksum_mismatch", "{name}");
            assert!(error.to_string().contains(reason.as_str().unwrap()), "{name}: {error}");
            continue;
        }
        let capture = result.unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(capture.replies.len(), 1, "{name}");
        assert!(capture.rejected.is_empty(), "{name}: {:?}", capture.rejected);
        let json = serde_json::to_value(&capture.replies[0]).unwrap();
        assert_eq!(json["reply"], "d2_realtime", "{name}");
        assert_subset(name, &json, expected);
        // Without the request the map and the real-time block are inferred from the reply itself.
        let inferred = decode_capture(None, &response, &DecodeOptions::default()).unwrap();
        assert_eq!(inferred.replies, capture.replies, "{name}");
    }
}

#[test]
fn every_d2_vector_decodes_identically_when_split_at_every_byte() {
    for vector in d2_vectors() {
        let request = bytes(&vector, "request_hex");
        let response = bytes(&vector, "response_hex");
        let whole = decode_capture(Some(&request), &response, &DecodeOptions::default());
        for cut in 0..=response.len() {
            assert_eq!(decode_split(Some(&request), &response, cut), whole, "{} cut at {cut}", vector["name"]);
            assert_eq!(
                decode_split(None, &response, cut),
                decode_capture(None, &response, &DecodeOptions::default()),
                "{} without request, cut at {cut}",
                vector["name"]
            );
        }
    }
}

#[test]
fn the_d2_status_vector_applies_to_the_model() {
    let vector = &d2_vectors()[0];
    let capture =
        decode_capture(Some(&bytes(vector, "request_hex")), &bytes(vector, "response_hex"), &DecodeOptions::default())
            .unwrap();
    let pack = &capture.device.packs[0];
    assert_eq!(pack.pack, 1);
    assert_eq!(pack.state, Some(PackState::Idle));
    assert_eq!(pack.current_amperes, Some(3.0));
    assert_close("soc", pack.state_of_charge_ratio.unwrap(), 0.9, 1e-9);
    assert_eq!(pack.cell_volts, [Some(4.127), Some(4.137), Some(4.147), Some(4.157)]);
    let sensors: Vec<_> = pack.temperatures.iter().map(|t| t.sensor).collect();
    assert_eq!(sensors, (1..=4).map(SensorId::Probe).collect::<Vec<_>>());
    assert_eq!((pack.charge_mosfet_enabled, pack.discharge_mosfet_enabled), (Some(false), Some(true)));
    assert_eq!(pack.balancing_active, Some(true));
    assert!(pack.cell_balancing.is_empty(), "a 62-register read has no balancing bitmap");
    assert_eq!(pack.alarms.len(), 57);
    assert!(pack.alarms.iter().all(|a| !a.active));
}

#[test]
fn an_extended_d2_block_reports_balancing_alarms_and_fitted_sensors() {
    let mut block = Registers { start: 0, values: vec![0; 80] };
    block.set(0x31, 4); // cell count
    block.set(0x2F, 2); // discharging
    block.set(0x29, 30000 - 25); // -2.5 A
    block.set(0x3A, 0x0002); // A5 byte 0 bit 1 (offset 117 = low byte of register 0x3A)
    block.set(0x3E, 0b0101); // cells 1 and 3 balancing
    block.set(0x42, 0xFFFF); // no MOSFET sensor
    block.set(0x43, 65); // board 25 °C
    let frame = encode_read_reply(Map::D2, &block.values);
    let request = encode_request(Map::D2, d2::REALTIME_EXTENDED);
    let capture = decode_capture(Some(&request), &frame, &DecodeOptions::default()).unwrap();
    let Reply::D2Realtime(r) = &capture.replies[0] else { panic!("{:?}", capture.replies) };
    assert_eq!(r.alarm_flags_hex, "0002000000000000");
    assert_eq!(r.active_alarms, ["cell_voltage_high_l2"]);
    let pack = &capture.device.packs[0];
    assert_eq!(pack.state, Some(PackState::Discharging));
    assert_close("current", pack.current_amperes.unwrap(), -2.5, 1e-9);
    assert_eq!(pack.cell_balancing, [true, false, true, false]);
    assert!(pack.alarms.iter().any(|a| a.name == "cell_voltage_high_l2" && a.active));
    let sensors: Vec<_> = pack.temperatures.iter().map(|t| t.sensor).collect();
    assert_eq!(sensors, [SensorId::Board]);
}

#[test]
fn a_looped_back_request_is_rejected_as_echo_and_the_reply_still_decodes() {
    let vector = &d2_vectors()[0];
    let request = bytes(vector, "request_hex");
    let stream = [request.clone(), bytes(vector, "response_hex")].concat();
    let capture = decode_capture(Some(&request), &stream, &DecodeOptions::default()).unwrap();
    assert_eq!(capture.replies.len(), 1);
    assert_eq!(capture.rejected.iter().map(|r| r.kind).collect::<Vec<_>>(), ["host_echo"]);
}

#[test]
fn replies_to_several_requests_are_decoded_by_their_own_start_register() {
    let map = Map::p81(2).unwrap();
    let requests = [encode_request(map, p81::REALTIME_LOW), encode_request(map, p81::REALTIME_HIGH)].concat();
    let mut low = Registers { start: 0, values: vec![0; 64] };
    low.set(0x38, 530);
    low.set(0x39, 0x74D7);
    low.set(0x3C, 16);
    let mut high = Registers { start: 0x41, values: vec![0; 62] };
    high.set(0x48, 2);
    high.set(0x4C, 7);
    let stream = [encode_read_reply(map, &low.values), encode_read_reply(map, &high.values)].concat();
    let capture = decode_capture(Some(&requests), &stream, &DecodeOptions::default()).unwrap();
    let pack = &capture.device.packs[0];
    assert_eq!(pack.pack, 2);
    assert_eq!(pack.voltage_volts, Some(53.0));
    assert_close("current", pack.current_amperes.unwrap(), -8.9, 1e-9);
    assert_eq!((pack.state, pack.cycle_count, pack.cell_count), (Some(PackState::Discharging), Some(7), Some(16)));
    assert_eq!(pack.cell_volts.len(), 16);
}

#[test]
fn an_exception_reply_is_listed_and_alone_is_an_error() {
    let map = Map::p81(1).unwrap();
    let request = encode_request(map, p81::REALTIME_LOW);
    let error = decode_capture(Some(&request), &encode_exception_reply(map, READ, 2), &DecodeOptions::default());
    assert_eq!(error, Err(DecodeError::ModbusException { function: 3, code: 2 }));
}

fn realtime_block() -> impl Strategy<Value = Registers> {
    prop_oneof![Just(62usize), Just(80usize)]
        .prop_flat_map(|n| proptest::collection::vec(any::<u16>(), n))
        .prop_map(|values| Registers { start: 0, values })
}

fn any_map() -> impl Strategy<Value = Map> {
    prop_oneof![Just(Map::D2), (1u8..=16).prop_map(|board| Map::P81 { board })]
}

fn any_request() -> impl Strategy<Value = Request> {
    prop_oneof![
        (any::<u16>(), 1u16..=125).prop_map(|(start, count)| Request::Read { start, count }),
        (any::<u16>(), any::<u16>()).prop_map(|(register, value)| Request::Write { register, value }),
    ]
}

/// The reply the codec makes of `frame` (a read reply from register `start`), below the plausibility judgement.
fn codec_reply(map: Map, start: u16, frame: &[u8]) -> Reply {
    let Ok(Pdu::Read(values)) = parse_frame(map, frame) else { panic!("not a read reply") };
    Reply::from_block(map, Registers { start, values }, &DecodeOptions::default()).unwrap()
}

/// The replies a capture decoded, or `None` when it was refused as implausible: a block of arbitrary register
/// values may hold a value no pack can have, and that is the only reason a well-formed reply may be refused.
fn unless_implausible(result: Result<Capture<Reply>, DecodeError>) -> Option<Vec<Reply>> {
    match result {
        Err(DecodeError::Implausible { .. }) => None,
        other => Some(other.unwrap().replies),
    }
}

proptest! {
    #[test]
    fn no_input_makes_the_decoders_panic(stream in proptest::collection::vec(any::<u8>(), 0..=4096), map in any_map(),
                                          request in any_request()) {
        let options = DecodeOptions::default();
        let _ = decode_capture(None, &stream, &options);
        let _ = decode_capture(Some(&encode_request(map, request)), &stream, &options);
        let _ = decode_capture(Some(&stream), &stream, &options);
        let _ = decode_request(&stream);
        let _ = parse_frame(map, &stream);
        let _ = Reply::from_block(map, Registers { start: 0, values: stream.iter().map(|&b| u16::from(b) * 257).collect() }, &options);
        let mut deframer = Deframer::new(ModbusFraming::new(map, Some(request)));
        deframer.push(&stream);
        while deframer.poll().is_some() {}
        let _ = deframer.finish();
    }

    #[test]
    fn requests_round_trip(map in any_map(), request in any_request()) {
        prop_assert_eq!(decode_request(&encode_request(map, request)), Ok((map, request)));
    }

    #[test]
    fn d2_realtime_replies_round_trip(block in realtime_block()) {
        let first = d2::Realtime::decode(&block).unwrap();
        let frame = encode_read_reply(Map::D2, &first.to_registers().values);
        let request = encode_request(Map::D2, Request::Read { start: 0, count: block.values.len() as u16 });
        prop_assert_eq!(codec_reply(Map::D2, 0, &frame), Reply::D2Realtime(first.clone()));
        if let Some(replies) = unless_implausible(decode_capture(Some(&request), &frame, &DecodeOptions::default())) {
            prop_assert_eq!(&replies, &vec![Reply::D2Realtime(first)]);
        }
    }

    #[test]
    fn p81_windows_round_trip(start in 0u16..=0x73, values in proptest::collection::vec(any::<u16>(), 1..=125),
                              board in 1u8..=16) {
        let map = Map::P81 { board };
        let block = Registers { start, values };
        let first = p81::Realtime::decode(board, &block, None);
        let request = encode_request(map, Request::Read { start, count: block.values.len() as u16 });
        let frame = encode_read_reply(map, &first.to_registers().values);
        prop_assert_eq!(codec_reply(map, start, &frame), Reply::P81Realtime(first.clone()));
        if let Some(replies) = unless_implausible(decode_capture(Some(&request), &frame, &DecodeOptions::default())) {
            prop_assert_eq!(&replies, &vec![Reply::P81Realtime(first)]);
        }
    }

    #[test]
    fn mosfet_temperature_version_and_write_replies_round_trip(raw in any::<u16>(), text in "[ -~]{0,20}",
                                                               register in any::<u16>(), value in any::<u16>()) {
        let mut block = Registers { start: 0x3E, values: vec![0; 9] };
        block.set(0x42, raw);
        let mosfet = d2::MosfetTemperature::decode(&block).unwrap();
        let frame = encode_read_reply(Map::D2, &mosfet.to_registers().values);
        let request = encode_request(Map::D2, d2::MOSFET_TEMPERATURE);
        prop_assert_eq!(codec_reply(Map::D2, 0x3E, &frame), Reply::D2MosfetTemperature(mosfet.clone()));
        if let Some(replies) = unless_implausible(decode_capture(Some(&request), &frame, &DecodeOptions::default())) {
            prop_assert_eq!(&replies, &vec![Reply::D2MosfetTemperature(mosfet)]);
        }

        let version = d2::Version::decode(&d2::Version { software_version: text.clone(), hardware_version: text }.to_registers()).unwrap();
        let frame = encode_read_reply(Map::D2, &version.to_registers().values);
        let capture = decode_capture(Some(&encode_request(Map::D2, d2::VERSION)), &frame, &DecodeOptions::default()).unwrap();
        prop_assert_eq!(&capture.replies, &vec![Reply::D2Version(version)]);

        let map = Map::P81 { board: 1 };
        let write = Request::Write { register, value };
        let frame = encode_write_reply(map, register, value);
        let capture = decode_capture(Some(&encode_request(map, write)), &frame, &DecodeOptions::default()).unwrap();
        prop_assert_eq!(serde_json::to_value(&capture.replies).unwrap(),
                        serde_json::json!([{"reply": "write_ack", "register": register, "value": value}]));
    }
}

#[test]
fn the_cli_decodes_a_d2_vector_and_reports_a_bad_crc() {
    let vectors = d2_vectors();
    let output = assert_cmd::Command::cargo_bin("bms_exporter")
        .unwrap()
        .args(["decode", "--protocol", "daly-modbus", vectors[0]["response_hex"].as_str().unwrap()])
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let json: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_subset("cli", &json["replies"][0], &vectors[0]["expected"]);
    assert_eq!(json["device"]["packs"][0]["voltage_volts"], 14.0);

    let output = assert_cmd::Command::cargo_bin("bms_exporter")
        .unwrap()
        .args(["decode", "--protocol", "daly-modbus", vectors[1]["response_hex"].as_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("modbus CRC mismatch") && stderr.contains("chksum_mismatch"), "{stderr}");
}
