//! Daly A5 codec against the shared vectors (`vectors/daly.json`, variant `a5`), the issue #165 resync case,
//! property tests (no panics, encode→decode round trips) and the `decode --protocol daly` command line.

use bms_exporter::protocol::daly::{
    A5Framing, Address, CellVoltages, Command, Filler, Frame, Message, Request, Temperatures, Text, decode_capture,
    decode_chunks,
};
use bms_exporter::protocol::deframer::Deframer;
use bms_exporter::protocol::{DecodeError, DecodeOptions, parse_hex};
use proptest::prelude::*;
use serde_json::Value;

use crate::util::{assert_close, vectors};

/// The A5 vectors (the Modbus-style ones belong to `daly_modbus_vectors`).
fn a5_vectors() -> Vec<Value> {
    let all = vectors("daly.json");
    let a5: Vec<Value> = all.into_iter().filter(|v| v["variant"] == "a5").collect();
    assert!(a5.len() >= 20, "expected the a5 vectors, found {}", a5.len());
    a5
}

fn hex_field(vector: &Value, field: &str) -> Vec<u8> {
    parse_hex(vector[field].as_str().unwrap_or_else(|| panic!("{field} missing"))).unwrap()
}

/// Decode options carrying the vector's `context` counts.
fn options(vector: &Value) -> DecodeOptions {
    let count = |key: &str| vector["context"][key].as_u64().map(|n| u16::try_from(n).unwrap());
    DecodeOptions {
        cell_count: count("cell_count"),
        temperature_sensor_count: count("temperature_sensor_count"),
        ..DecodeOptions::default()
    }
}

/// Compare a decoded JSON value with an expected one: numbers within 1e-6, arrays element-wise, rest exact.
fn assert_json_close(what: &str, actual: &Value, expected: &Value) {
    match expected {
        Value::Number(n) => {
            let got = actual.as_f64().unwrap_or_else(|| panic!("{what}: expected a number, got {actual}"));
            assert_close(what, got, n.as_f64().unwrap(), 1e-6);
        }
        Value::Array(items) => {
            let got = actual.as_array().unwrap_or_else(|| panic!("{what}: expected a list, got {actual}"));
            assert_eq!(got.len(), items.len(), "{what}: {actual} vs {expected}");
            for (i, (a, e)) in got.iter().zip(items).enumerate() {
                assert_json_close(&format!("{what}[{i}]"), a, e);
            }
        }
        _ => assert_eq!(actual, expected, "{what}"),
    }
}

/// The request a vector's `request_hex` describes, rebuilt with this codec's constructors.
fn rebuild(request: &Request) -> Request {
    match request.command {
        Command::DischargeMosfet => Request::discharge_mosfet(request.address, request.data[0] != 0),
        Command::ChargeMosfet => Request::charge_mosfet(request.address, request.data[0] != 0),
        Command::SetSoc => Request::set_soc(request.address, &request.set_soc_values().unwrap()),
        Command::Restart => Request::restart(request.address),
        read => Request::read(read, request.address, Filler::Zero),
    }
}

#[test]
fn every_a5_request_vector_is_built_byte_for_byte() {
    for v in a5_vectors() {
        let name = v["name"].as_str().unwrap();
        let bytes = hex_field(&v, "request_hex");
        let parsed = Request::decode(&bytes).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(rebuild(&parsed).encode().as_slice(), bytes.as_slice(), "{name}");
    }
}

#[test]
fn every_a5_response_vector_decodes_to_its_expected_values_or_error() {
    for v in a5_vectors() {
        let name = v["name"].as_str().unwrap();
        let request = hex_field(&v, "request_hex");
        let response = hex_field(&v, "response_hex");
        let result = decode_capture(Some(&request), &response, &options(&v));
        let expected = v["expected"].as_object().unwrap();
        if let Some(error) = expected.get("error") {
            let err = result.err().unwrap_or_else(|| panic!("{name}: decoded although malformed"));
            assert_eq!(err.to_string(), error.as_str().unwrap(), "{name}");
            continue;
        }
        let capture = result.unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(capture.replies.len(), 1, "{name}: {:?}", capture.replies);
        assert!(capture.rejected.is_empty(), "{name}: {:?}", capture.rejected);
        let reply = serde_json::to_value(&capture.replies[0]).unwrap();
        for (key, value) in expected {
            assert_json_close(&format!("{name}.{key}"), &reply[key], value);
        }
    }
}

#[test]
fn every_a5_response_vector_decodes_the_same_when_split_at_any_byte() {
    for v in a5_vectors() {
        let name = v["name"].as_str().unwrap();
        let request = hex_field(&v, "request_hex");
        let response = hex_field(&v, "response_hex");
        let whole = decode_capture(Some(&request), &response, &options(&v));
        for k in 0..=response.len() {
            let (head, tail) = response.split_at(k);
            let split = decode_chunks(Some(&request), &[head, tail], &options(&v));
            assert_eq!(split, whole, "{name} split at {k}");
        }
    }
}

#[test]
fn vector_captures_reach_the_model() {
    let vector = |name: &str| a5_vectors().into_iter().find(|v| v["name"] == name).unwrap();
    let v = vector("cells_0x95_real_9s_three_frames");
    let capture = decode_capture(Some(&hex_field(&v, "request_hex")), &hex_field(&v, "response_hex"), &options(&v));
    let pack = &capture.unwrap().device.packs[0];
    assert_eq!(pack.cell_volts.len(), 9);
    assert_eq!(pack.cell_voltage_range(), Some((3.377, 3.38)));

    let v = vector("model_string_0x63_real_two_frames");
    let capture = decode_capture(Some(&hex_field(&v, "request_hex")), &hex_field(&v, "response_hex"), &options(&v));
    assert_eq!(capture.unwrap().device.packs[0].info.model.as_deref(), Some("DL-BMS-R32-01E"));
}

/// Six 0x95 frames for 16 cells (host 0x40), in cell order.
fn cell_burst(board: u8) -> Vec<[u8; 13]> {
    let cells: Vec<Option<f64>> = (0..16).map(|i| Some(3.300 + f64::from(i) / 1000.0)).collect();
    let bytes = CellVoltages::new(cells).encode_frames(board, 0);
    bytes.chunks_exact(13).map(|c| c.try_into().unwrap()).collect()
}

#[test]
fn a_cut_frame_5_costs_its_bytes_and_frame_6_is_still_found_issue_165() {
    let frames = cell_burst(1);
    assert_eq!(frames.len(), 6);
    let stray_soc = parse_hex("a5019008020300007724033819").unwrap();
    let mut stream = Vec::new();
    for f in &frames[..4] {
        stream.extend_from_slice(f);
    }
    stream.extend_from_slice(&frames[4][..9]); // frame 5 cut short, as in Louisvdw/dbus-serialbattery #165
    stream.extend_from_slice(&frames[5]);
    stream.extend_from_slice(&stray_soc);

    let request = Request::read(Command::CellVoltages, Address::Rs485, Filler::Zero).encode();
    let options = DecodeOptions { cell_count: Some(16), ..DecodeOptions::default() };
    let capture = decode_capture(Some(&request), &stream, &options).unwrap();

    let Message::CellVoltages(cells) = &capture.replies[0].message else { panic!("{:?}", capture.replies) };
    assert_eq!(cells.frame_numbers, [1, 2, 3, 4, 6]);
    let missing: Vec<usize> = (0..16).filter(|&i| cells.cell_voltages_v[i].is_none()).collect();
    assert_eq!(missing, [12, 13, 14], "only the cells of the cut frame are unknown");
    assert_eq!(cells.cell_voltages_v[15], Some(3.315));
    assert_eq!(capture.skipped_bytes, 9);
    let kinds: Vec<&str> = capture.rejected.iter().map(|r| r.kind).collect();
    assert_eq!(kinds, ["checksum_mismatch", "unexpected_command"]);
}

#[test]
fn the_0xaa_filled_request_of_the_spec_is_produced() {
    let request = Request::read(Command::Soc, Address::Rs485, Filler::Aa).encode();
    assert_eq!(request.as_slice(), parse_hex("a5 40 90 08 aa aa aa aa aa aa aa aa cd").unwrap().as_slice());
    assert_eq!(Request::decode(&request).unwrap().data, [0xAA; 8]);
}

fn address() -> impl Strategy<Value = Address> {
    prop_oneof![Just(Address::Rs485), Just(Address::Uart), (2u8..=16).prop_map(Address::Board)]
}

fn command() -> impl Strategy<Value = Command> {
    proptest::sample::select(Command::ALL.to_vec())
}

fn single_frame_command() -> impl Strategy<Value = Command> {
    let multi = [Command::CellVoltages, Command::Temperatures, Command::BatteryCode, Command::Identity];
    proptest::sample::select(Command::ALL.into_iter().filter(|c| !multi.contains(c)).collect::<Vec<_>>())
}

/// Byte streams that mix valid reply frames (any known command) with garbage.
fn mixed_stream() -> impl Strategy<Value = Vec<u8>> {
    let piece = prop_oneof![
        (1u8..=16, command(), any::<[u8; 8]>())
            .prop_map(|(b, c, data)| Frame { address: b, command: c.code(), data }.encode().to_vec()),
        proptest::collection::vec(any::<u8>(), 0..20),
    ];
    proptest::collection::vec(piece, 0..40).prop_map(|pieces| pieces.concat())
}

fn decoded_message(bytes: &[u8], options: &DecodeOptions) -> (u8, Message) {
    let capture = decode_capture(None, bytes, options).unwrap();
    assert!(capture.rejected.is_empty(), "{:?}", capture.rejected);
    assert_eq!(capture.replies.len(), 1);
    (capture.replies[0].board, capture.replies[0].message.clone())
}

/// [`decoded_message`] for arbitrary data: `None` when the reply was rejected as implausible (a value no pack
/// can have), which is the only reason a well-formed reply may be refused.
fn decoded_unless_implausible(bytes: &[u8], options: &DecodeOptions) -> Option<(u8, Message)> {
    match decode_capture(None, bytes, options) {
        Err(DecodeError::Implausible { .. }) => None,
        _ => Some(decoded_message(bytes, options)),
    }
}

proptest! {
    #[test]
    fn arbitrary_bytes_never_panic_the_decoders(bytes in proptest::collection::vec(any::<u8>(), 0..4096)) {
        let request = Request::read(Command::CellVoltages, Address::Uart, Filler::Zero).encode();
        let _ = decode_capture(None, &bytes, &DecodeOptions::default());
        let _ = decode_capture(Some(&request), &bytes, &DecodeOptions::default());
        let _ = decode_capture(Some(&bytes), &bytes, &DecodeOptions::default());
        let _ = Request::decode(&bytes);
        let _ = Frame::parse(&bytes);
        let mut deframer = Deframer::new(A5Framing);
        deframer.push(&bytes);
        while deframer.poll().is_some() {}
        let _ = deframer.finish();
        let frames: Vec<[u8; 8]> = bytes.chunks_exact(8).map(|c| c.try_into().unwrap()).collect();
        let _ = CellVoltages::decode(&frames, None);
        let _ = CellVoltages::decode(&frames, Some(u16::MAX));
        let _ = Temperatures::decode(&frames, None);
        let _ = Temperatures::decode(&frames, Some(7));
        let _ = Text::decode(&frames, Command::BatteryCode);
        let _ = Text::decode(&frames, Command::Identity);
        for (command, data) in Command::ALL.iter().zip(frames.iter().cycle()) {
            let _ = Message::decode_single(*command, *data);
        }
    }

    #[test]
    fn streams_of_frames_and_garbage_never_panic_and_split_the_same(stream in mixed_stream(), cut in any::<usize>()) {
        let options = DecodeOptions { cell_count: Some(16), ..DecodeOptions::default() };
        let whole = decode_capture(None, &stream, &options);
        let k = if stream.is_empty() { 0 } else { cut % stream.len() };
        let (head, tail) = stream.split_at(k);
        prop_assert_eq!(decode_chunks(None, &[head, tail], &options), whole);
    }

    #[test]
    fn requests_round_trip(command in command(), address in address(), data in any::<[u8; 8]>()) {
        let request = Request { command, address, data };
        prop_assert_eq!(Request::decode(&request.encode()), Ok(request));
    }

    #[test]
    fn single_frame_replies_round_trip(command in single_frame_command(), data in any::<[u8; 8]>(), board in 1u8..=16) {
        let message = Message::decode_single(command, data).unwrap().unwrap();
        // The codec round-trips every value; the capture may refuse an implausible one.
        let frame = Frame::parse(&message.encode(board)).unwrap();
        prop_assert_eq!((frame.address, Message::decode_single(command, frame.data).unwrap().unwrap()), (board, message.clone()));
        if let Some((decoded_board, decoded)) = decoded_unless_implausible(&message.encode(board), &DecodeOptions::default()) {
            prop_assert_eq!(decoded_board, board);
            prop_assert_eq!(decoded, message);
        }
    }

    #[test]
    fn cell_voltage_replies_round_trip(mv in proptest::collection::vec(0u16..=5000, 0..=48), board in 1u8..=16) {
        let cells = mv.iter().map(|&v| (v != 0).then(|| f64::from(v) / 1000.0)).collect::<Vec<_>>();
        let message = Message::CellVoltages(CellVoltages::new(cells));
        let options = DecodeOptions { cell_count: Some(mv.len() as u16), ..DecodeOptions::default() };
        prop_assert_eq!(decoded_message(&message.encode(board), &options), (board, message));
    }

    #[test]
    fn padded_cell_bursts_decode_like_minimal_ones(mv in proptest::collection::vec(1u16..=5000, 1..=48)) {
        let cells = CellVoltages::new(mv.iter().map(|&v| Some(f64::from(v) / 1000.0)).collect());
        let padded = cells.encode_frames(1, 16);
        prop_assert_eq!(padded.len(), 16 * 13);
        let (_, decoded) = decoded_message(&padded, &DecodeOptions::default());
        let Message::CellVoltages(decoded) = decoded else { panic!("not cells") };
        prop_assert_eq!(decoded.cell_voltages_v, cells.cell_voltages_v);
    }

    #[test]
    fn temperature_replies_round_trip(raw in proptest::collection::vec(0u8..=255, 0..=21), board in 1u8..=16) {
        let temperatures = raw.iter().map(|&r| Some(i16::from(r) - 40)).collect();
        let message = Message::Temperatures(Temperatures::new(temperatures));
        let options = DecodeOptions { temperature_sensor_count: Some(raw.len() as u16), ..DecodeOptions::default() };
        let frames: Vec<[u8; 8]> = message.encode(board).chunks(13).map(|f| Frame::parse(f).unwrap().data).collect();
        prop_assert_eq!(Message::Temperatures(Temperatures::decode(&frames, Some(raw.len() as u16)).unwrap()), message.clone());
        // Raw 191 and above read over 150 °C: the whole reply is refused, not only that sensor.
        match decoded_unless_implausible(&message.encode(board), &options) {
            Some(decoded) => prop_assert_eq!(decoded, (board, message)),
            None => prop_assert!(raw.iter().any(|&r| r > 190), "{:?}", raw),
        }
    }

    #[test]
    fn text_replies_round_trip(code in "[A-Za-z0-9-]{0,35}", model in "[A-Za-z0-9-]{0,60}", board in 1u8..=16) {
        for message in [
            Message::BatteryCode(Text::new(Command::BatteryCode, &code)),
            Message::Identity(Text::new(Command::Identity, &model)),
        ] {
            prop_assert_eq!(decoded_message(&message.encode(board), &DecodeOptions::default()), (board, message));
        }
    }
}

mod cli {
    use assert_cmd::Command;

    fn decode(args: &[&str]) -> assert_cmd::assert::Assert {
        Command::cargo_bin("bms_exporter").unwrap().args(["decode", "--protocol", "daly"]).args(args).assert()
    }

    #[test]
    fn decoding_a_soc_reply_prints_typed_values_and_the_model() {
        let out = decode(&["a5019008020300007724033819"]).success().get_output().stdout.clone();
        let json: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(json["replies"][0]["total_voltage_v"], 51.5);
        assert_eq!(json["replies"][0]["soc_percent"], 82.4);
        assert_eq!(json["device"]["packs"][0]["voltage_volts"], 51.5);
        assert_eq!(json["device"]["packs"][0]["state_of_charge_ratio"], 0.824);
    }

    #[test]
    fn non_hex_input_and_a_bad_checksum_exit_1_with_a_reason() {
        let out = decode(&["zz"]).code(1).get_output().stderr.clone();
        assert!(String::from_utf8_lossy(&out).contains("not hex"), "{}", String::from_utf8_lossy(&out));
        let out = decode(&["a5019008023a0000753001ed0e"]).code(1).get_output().stderr.clone();
        let text = String::from_utf8_lossy(&out);
        assert!(text.contains("checksum mismatch: computed 0x0d, received 0x0e"), "{text}");
    }
}
