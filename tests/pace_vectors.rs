//! Pace codec against the shared vectors (`tests/fixtures/vectors/pace.json`), split-stream reassembly, model
//! application, property tests (no panics, encode→decode round trips) and the `decode` command line.

use bms_exporter::model::{AlarmSeverity, LevelAlarmKind, PackState, SensorId};
use bms_exporter::protocol::deframer::{Deframer, Event};
use bms_exporter::protocol::pace::{
    self, ALL_PACKS, Command, DateTime, Header, PaceFraming, PackBlock, Reply, Request, StatusBlock,
};
use bms_exporter::protocol::{DecodeError, DecodeOptions, rtn_name};
use proptest::prelude::*;
use serde_json::Value;

use crate::util::{assert_close, vectors};

struct Vector {
    name: String,
    request: Vec<u8>,
    response: Vec<u8>,
    expected: Value,
}

fn all_vectors() -> Vec<Vector> {
    vectors("pace.json")
        .into_iter()
        .map(|v| Vector {
            name: v["name"].as_str().unwrap().to_owned(),
            request: v["request_ascii"].as_str().unwrap().as_bytes().to_vec(),
            response: v["response_ascii"].as_str().unwrap().as_bytes().to_vec(),
            expected: v["expected"].clone(),
        })
        .collect()
}

/// Compare every key the vector states with the serialized reply: integers exactly, other numbers within 0.01.
fn assert_matches(path: &str, actual: &Value, expected: &Value) {
    match expected {
        Value::Object(fields) => {
            for (key, want) in fields {
                // `variant` is prose; `bmspace_*` describe bmspace's truncated output, not ours.
                if key == "variant" || key.starts_with("bmspace_") {
                    continue;
                }
                let got = actual.get(key).unwrap_or(&Value::Null);
                assert_matches(&format!("{path}.{key}"), got, want);
            }
        }
        Value::Array(items) => {
            let got = actual.as_array().unwrap_or_else(|| panic!("{path}: expected an array, got {actual}"));
            assert_eq!(got.len(), items.len(), "{path}: length");
            for (i, (g, w)) in got.iter().zip(items).enumerate() {
                assert_matches(&format!("{path}[{i}]"), g, w);
            }
        }
        Value::Number(want) if want.is_f64() || actual.as_number().is_some_and(serde_json::Number::is_f64) => {
            let got = actual.as_f64().unwrap_or_else(|| panic!("{path}: expected a number, got {actual}"));
            assert_close(path, got, want.as_f64().unwrap(), 0.01);
        }
        _ => assert_eq!(actual, expected, "{path}"),
    }
}

fn decode(request: Option<&[u8]>, response: &[u8]) -> Result<bms_exporter::protocol::Capture<Reply>, DecodeError> {
    pace::decode_capture(request, response, &DecodeOptions::default())
}

#[test]
fn every_vector_decodes_to_its_expected_values_or_error() {
    for v in all_vectors() {
        let result = decode(Some(&v.request), &v.response);
        if let Some(kind) = v.expected["error"].as_str() {
            let error = result.expect_err(&v.name);
            assert_eq!(error.kind(), kind, "{}", v.name);
            assert_eq!(pace::parse_reply_frame(&v.response).unwrap_err().kind(), kind, "{} (frame level)", v.name);
            if let Some(rtn) = v.expected["rtn"].as_u64() {
                assert_eq!(error, DecodeError::ReturnCode { rtn: rtn as u8 }, "{}", v.name);
                let name = v.expected["rtn_name"].as_str().unwrap();
                assert_eq!(rtn_name(rtn as u8), name, "{}", v.name);
                assert!(error.to_string().contains(name), "{}: {error}", v.name);
            }
            continue;
        }
        let capture = result.unwrap_or_else(|e| panic!("{}: {e}", v.name));
        assert_eq!(capture.replies.len(), 1, "{}", v.name);
        assert!(capture.rejected.is_empty(), "{}: {:?}", v.name, capture.rejected);
        let actual = serde_json::to_value(&capture.replies[0]).unwrap();
        assert_matches(&v.name, &actual, &v.expected);
    }
}

#[test]
fn every_valid_vector_decodes_the_same_without_its_request() {
    for v in all_vectors().into_iter().filter(|v| v.expected.get("error").is_none()) {
        let capture = decode(None, &v.response).unwrap_or_else(|e| panic!("{}: {e}", v.name));
        let actual = serde_json::to_value(&capture.replies[0]).unwrap();
        assert_matches(&format!("{} (no request)", v.name), &actual, &v.expected);
    }
}

#[test]
fn every_vector_request_is_reproduced_by_the_request_encoder_when_it_is_a_read() {
    let mut reads = 0;
    for v in all_vectors() {
        match Request::decode(&v.request) {
            Ok(request) => {
                assert_eq!(request.encode(), v.request, "{}", v.name);
                reads += 1;
            }
            // Writes and unknown reads are deliberately not representable; their frames are still valid.
            Err(DecodeError::UnknownCommand { .. }) => assert!(pace::parse_frame(&v.request).is_ok(), "{}", v.name),
            Err(e) => panic!("{}: {e}", v.name),
        }
    }
    assert!(reads >= 18, "only {reads} read requests");
}

fn events(framing: PaceFraming, chunks: &[&[u8]]) -> Vec<Event> {
    let mut deframer = Deframer::new(framing);
    let mut out = Vec::new();
    for chunk in chunks {
        deframer.push(chunk);
        out.extend(std::iter::from_fn(|| deframer.poll()));
    }
    out.extend(deframer.finish().map(Event::Rejected));
    out
}

#[test]
fn every_vector_deframes_identically_when_split_at_every_byte() {
    for v in all_vectors() {
        let framing = PaceFraming::with_request(&v.request);
        let whole = events(framing.clone(), &[&v.response]);
        if v.expected.get("error").is_none() || v.expected["error"] == "rtn_error" {
            assert_eq!(whole, [Event::Frame(v.response.clone())], "{}", v.name);
        }
        for cut in 0..=v.response.len() {
            let (a, b) = v.response.split_at(cut);
            assert_eq!(events(framing.clone(), &[a, b]), whole, "{} cut at {cut}", v.name);
        }
    }
}

#[test]
fn an_echoed_request_before_the_reply_is_recognised_and_skipped() {
    let v = all_vectors().into_iter().find(|v| v.name == "nkinnan-analog-pack1-negative-current").unwrap();
    let stream = [b"\x00\xff".as_slice(), &v.request, &v.response].concat();
    let capture = decode(Some(&v.request), &stream).unwrap();
    assert_eq!(capture.replies.len(), 1);
    assert_eq!(capture.rejected.iter().map(|r| r.kind).collect::<Vec<_>>(), ["host_echo"]);
    assert_eq!(capture.skipped_bytes, 2);
    assert!(matches!(decode(Some(&v.request), &v.request), Err(DecodeError::HostEcho { address: 1 })));
}

#[test]
fn a_stream_of_several_replies_fills_one_snapshot() {
    let by_name = |name: &str| all_vectors().into_iter().find(|v| v.name == name).unwrap();
    let analog = by_name("bmspace-issue23-two-pack-all-16-byte-tail");
    let version = by_name("nkinnan-c1-version");
    let serial = by_name("bmspace-issue22-c2-product-info");
    let cut = &analog.response[..40];
    let stream = [cut, &analog.response, &version.response, &serial.response].concat();
    let capture = decode(None, &stream).unwrap();
    assert_eq!(capture.replies.len(), 3);
    assert_eq!(capture.rejected.len(), 1, "{:?}", capture.rejected);
    let packs = &capture.device.packs;
    assert_eq!(packs.len(), 2);
    assert_eq!(packs[0].info.firmware_version.as_deref(), Some("P16S100A-1812-1.00"));
    assert_eq!(packs[0].info.serial_number.as_deref(), Some("GPSR2PC200YW28021109"));
    assert_eq!(packs[1].info.serial_number, None);
}

#[test]
fn the_two_pack_reply_applies_both_packs_to_the_model() {
    let v = all_vectors().into_iter().find(|v| v.name == "spdg-two-pack-all-20-byte-tail-port-voltage").unwrap();
    let device = decode(Some(&v.request), &v.response).unwrap().device;
    assert_eq!(device.packs.iter().map(|p| p.pack).collect::<Vec<_>>(), [1, 2]);
    let p1 = &device.packs[0];
    assert_close("voltage", p1.voltage_volts.unwrap(), 51.676, 1e-9);
    assert_close("current", p1.current_amperes.unwrap(), -10.84, 1e-9);
    assert_eq!(p1.state, Some(PackState::Discharging));
    assert_close("soc", p1.state_of_charge_ratio.unwrap(), 0.3598, 1e-4);
    assert_close("soh", p1.state_of_health_ratio.unwrap(), 1.0953, 1e-4);
    assert_eq!(p1.cycle_count, Some(42));
    assert_eq!(p1.cell_volts.len(), 16);
    assert_close("cell 1", p1.cell_volts[0].unwrap(), 3.227, 1e-9);
    let sensors: Vec<SensorId> = p1.temperatures.iter().map(|t| t.sensor).collect();
    assert_eq!(sensors[3..], [SensorId::Probe(4), SensorId::Mosfet, SensorId::Ambient]);
    assert_close("pack 2 design", device.packs[1].design_capacity_ampere_hours.unwrap(), 304.0, 1e-9);
}

#[test]
fn a_single_pack_reply_is_numbered_by_its_command_and_command_zero_is_pack_one() {
    let by_name = |name: &str| all_vectors().into_iter().find(|v| v.name == name).unwrap();
    let pack2 = by_name("nkinnan-issue50-rs485-pack2-charging-soc-byte");
    let device = decode(Some(&pack2.request), &pack2.response).unwrap().device;
    assert_eq!(device.packs.iter().map(|p| p.pack).collect::<Vec<_>>(), [2]);
    assert_eq!(device.packs[0].state, Some(PackState::Charging));
    let zero = by_name("fancyui-issue8-address0-p0-reply-from-adr2");
    let device = decode(Some(&zero.request), &zero.response).unwrap().device;
    assert_eq!(device.packs.iter().map(|p| p.pack).collect::<Vec<_>>(), [1]);
    assert_eq!(device.packs[0].state, Some(PackState::Idle));
    let four = by_name("constructed-15s-4t-discharging-subzero-temp");
    let device = decode(Some(&four.request), &four.response).unwrap().device;
    let sensors: Vec<SensorId> = device.packs[0].temperatures.iter().map(|t| t.sensor).collect();
    assert_eq!(sensors, [SensorId::Probe(1), SensorId::Probe(2), SensorId::Probe(3), SensorId::Probe(4)]);
}

#[test]
fn status_bits_become_named_alarms_with_severities_and_level_alarms() {
    let v = all_vectors().into_iter().find(|v| v.name == "constructed-status-overcharge-many-bits").unwrap();
    let pack = decode(Some(&v.request), &v.response).unwrap().device.packs.remove(0);
    assert_eq!(pack.alarms.len(), 8 * 5 + 3, "every alarm is always listed");
    let alarm = |name: &str| *pack.alarms.iter().find(|a| a.name == name).unwrap_or_else(|| panic!("{name}"));
    assert!(alarm("cell_overvoltage").active);
    assert_eq!(alarm("cell_overvoltage").severity, AlarmSeverity::Protection);
    assert!(!alarm("short_circuit").active);
    assert_eq!(alarm("fully_charged").severity, AlarmSeverity::Info);
    assert!(alarm("fully_charged").active);
    assert_eq!(alarm("ntc_fault").severity, AlarmSeverity::Fault);
    assert!(alarm("charge_overcurrent_warning").active);
    assert_eq!(alarm("reserved_bit7_warning").severity, AlarmSeverity::Warning);
    assert!(alarm("charge_current_warning").active && alarm("pack_voltage_warning").active);
    assert!(!alarm("discharge_current_warning").active);
    assert_eq!(pack.charge_mosfet_enabled, Some(false));
    assert_eq!(pack.discharge_mosfet_enabled, Some(true));
    let balancing: Vec<usize> = (0..16).filter(|&i| pack.cell_balancing[i]).map(|i| i + 1).collect();
    assert_eq!(balancing, [3, 8, 9, 12]);
    let cells: Vec<(u8, LevelAlarmKind)> = pack.cell_alarms.iter().map(|a| (a.index, a.kind)).collect();
    assert_eq!(cells, [(3, LevelAlarmKind::AboveUpperLimit), (12, LevelAlarmKind::AboveUpperLimit)]);
    assert_eq!(pack.temperature_alarms.len(), 1);
}

fn header(adr: u8) -> Header {
    Header { ver: 0x25, adr, cid1: 0x46, code: 0 }
}

fn block(cells: usize, voltage_mv: u16, tail: Vec<u8>) -> PackBlock {
    PackBlock {
        cells_mv: vec![if voltage_mv == 0 { 0 } else { 3300 }; cells],
        temps_raw: vec![2730 + 250, pace::analog::TEMP_NOT_FITTED],
        current_raw: 0,
        voltage_mv,
        remaining_raw: 0,
        user_defined_count: 3,
        tail,
    }
}

#[test]
fn an_all_zero_block_is_an_offline_pack_with_no_values() {
    let blocks = [block(16, 52800, pace::pace_tail(10000, 1, 10000, 20)), block(16, 0, vec![0; 20])];
    let frame = pace::encode_analog(header(1), 0, 2, &blocks).unwrap();
    let capture = decode(Some(&Request::new(1, Command::Analog(ALL_PACKS)).encode()), &frame).unwrap();
    let [online, offline] = capture.device.packs.as_slice() else { panic!("two packs") };
    assert!(online.online && !offline.online);
    assert_eq!(online.temperatures.len(), 1, "a sensor that is not fitted is left out");
    assert_eq!((offline.voltage_volts, offline.state_of_charge_ratio, offline.state), (None, None, None));
    assert!(offline.cell_volts.is_empty());
}

#[test]
fn packs_with_different_cell_counts_are_separated_by_the_walk() {
    let blocks = [block(16, 52800, pace::pace_tail(100, 1, 100, 7)), block(15, 49500, pace::pace_tail(100, 1, 100, 7))];
    let frame = pace::encode_analog(header(1), 0, 2, &blocks).unwrap();
    let Reply::Analog(reply) = pace::decode_reply(&frame, Some(&Request::new(1, Command::Analog(ALL_PACKS)))).unwrap()
    else {
        panic!("analog")
    };
    let cells: Vec<u8> = reply.packs.iter().map(|p| p.cell_count).collect();
    assert_eq!(cells, [16, 15]);
    assert!(reply.packs.iter().all(|p| p.tail_bytes == 7));
}

#[test]
fn no_packs_and_unseparable_blocks_are_reported() {
    let all = Request::new(1, Command::Analog(ALL_PACKS));
    let empty = pace::encode_frame(header(1), &[0, 0]).unwrap();
    assert_eq!(pace::decode_reply(&empty, Some(&all)), Err(DecodeError::NoPacks));
    let mut frame = pace::encode_analog(header(1), 0, 2, &[block(16, 52800, pace::pace_tail(1, 1, 1, 6))]).unwrap();
    assert_eq!(pace::decode_reply(&frame, Some(&all)).unwrap_err().kind(), "layout_unresolved");
    frame = pace::encode_status(header(1), 0, 1, &[StatusBlock { extension: vec![0; 6], ..StatusBlock::default() }])
        .unwrap();
    let status = Request::new(1, Command::Status(1));
    assert_eq!(pace::decode_reply(&frame, Some(&status)).unwrap_err().kind(), "layout_unresolved");
}

#[test]
fn version_0x20_layouts_other_than_pylon_are_refused() {
    let pylon = Request::new(1, Command::Analog(1)).with_ver(pace::VER_PYLON);
    let seplos = pace::encode_analog(Header { ver: 0x20, ..header(1) }, 0, 1, &[block(16, 52800, vec![0; 20])]);
    let error = pace::decode_reply(&seplos.unwrap(), Some(&pylon)).unwrap_err();
    assert_eq!(error.kind(), "unsupported_version");
    let eg4 = pace::encode_analog(Header { ver: 0x20, cid1: 0x4A, ..header(1) }, 0, 1, &[block(16, 1, vec![0; 4])]);
    assert_eq!(pace::decode_reply(&eg4.unwrap(), None).unwrap_err().kind(), "unsupported_version");
    let status = pace::encode_status(Header { ver: 0x20, ..header(1) }, 0, 1, &[StatusBlock::default()]).unwrap();
    let error = pace::decode_reply(&status, Some(&Request::new(1, Command::Status(1)).with_ver(0x20))).unwrap_err();
    assert_eq!(error.kind(), "unsupported_version");
}

#[test]
fn an_rtn_error_reply_encodes_and_decodes_back_to_its_code() {
    let frame = pace::encode_error_reply(0x25, 0, 0x46, 0x04).unwrap();
    assert_eq!(frame, b"~250046040000FDAB\r");
    assert_eq!(pace::decode_reply(&frame, None), Err(DecodeError::ReturnCode { rtn: 4 }));
}

fn cli() -> assert_cmd::Command {
    assert_cmd::Command::cargo_bin("bms_exporter").unwrap()
}

#[test]
fn the_decode_command_prints_both_packs_of_a_two_pack_frame_pasted_without_its_cr() {
    let v = all_vectors().into_iter().find(|v| v.name == "bmspace-issue23-two-pack-all-16-byte-tail").unwrap();
    let text = String::from_utf8(v.response).unwrap();
    let out = cli().args(["decode", "--protocol", "pace", text.trim_end_matches('\r')]).assert().success();
    let json: Value = serde_json::from_slice(&out.get_output().stdout).unwrap();
    let packs = json["device"]["packs"].as_array().unwrap();
    assert_eq!(packs.len(), 2);
    assert_close("pack 1 voltage", packs[0]["voltage_volts"].as_f64().unwrap(), 55.897, 1e-9);
    assert_close("pack 2 voltage", packs[1]["voltage_volts"].as_f64().unwrap(), 55.925, 1e-9);
    assert_eq!(packs[1]["cycle_count"], 7);
    assert_eq!(json["replies"][0]["packs"][1]["reported"]["soh_pct"], 0);
}

#[test]
fn the_decode_command_exits_1_on_a_garbage_frame() {
    let out = cli().args(["decode", "--protocol", "pace", "~25014600ZZ"]).assert().failure().code(1);
    assert!(String::from_utf8_lossy(&out.get_output().stderr).contains("non_hex"));
}

fn analog_blocks() -> impl Strategy<Value = (Vec<PackBlock>, usize)> {
    (1usize..=16, 1usize..=16, 0usize..=6, prop::sample::select(vec![6usize, 7, 16, 20])).prop_flat_map(
        |(packs, cells, temps, tail)| {
            let one = (
                prop::collection::vec(any::<u16>(), cells),
                prop::collection::vec(any::<u16>(), temps),
                any::<i16>(),
                any::<u16>(),
                any::<u16>(),
                any::<u8>(),
                prop::collection::vec(any::<u8>(), tail),
            )
                .prop_map(
                    |(cells_mv, temps_raw, current_raw, voltage_mv, remaining_raw, user_defined_count, tail)| {
                        PackBlock {
                            cells_mv,
                            temps_raw,
                            current_raw,
                            voltage_mv,
                            remaining_raw,
                            user_defined_count,
                            tail,
                        }
                    },
                );
            (prop::collection::vec(one, packs), Just(tail))
        },
    )
}

fn status_blocks() -> impl Strategy<Value = Vec<StatusBlock>> {
    (1usize..=16, 1usize..=16, 0usize..=6, 0usize..=5).prop_flat_map(|(packs, cells, temps, ext)| {
        let one = (
            prop::collection::vec(any::<u8>(), cells),
            prop::collection::vec(any::<u8>(), temps),
            any::<[u8; 12]>(),
            prop::collection::vec(any::<u8>(), ext),
        )
            .prop_map(|(cell_warn, temp_warn, b, extension)| StatusBlock {
                cell_warn,
                temp_warn,
                charge_current_warn: b[0],
                pack_voltage_warn: b[1],
                discharge_current_warn: b[2],
                protect1: b[3],
                protect2: b[4],
                system: b[5],
                control: b[6],
                fault: b[7],
                balance1: b[8],
                balance2: b[9],
                warn1: b[10],
                warn2: b[11],
                extension,
            });
        prop::collection::vec(one, packs)
    })
}

fn commands() -> impl Strategy<Value = Command> {
    prop_oneof![
        any::<u8>().prop_map(Command::Analog),
        any::<u8>().prop_map(Command::Status),
        Just(Command::SoftwareVersion),
        Just(Command::ProductInfo),
        Just(Command::PackCapacity),
        Just(Command::PackCount),
        Just(Command::DateTime),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    #[test]
    fn arbitrary_bytes_never_panic_any_decoder(bytes in prop::collection::vec(any::<u8>(), 0..4096)) {
        let _ = decode(None, &bytes);
        let _ = decode(Some(b"~25014642E002FFFD05\r"), &bytes);
        let _ = pace::parse_frame(&bytes);
        let _ = Request::decode(&bytes);
        let _ = events(PaceFraming::default(), &[&bytes]);
    }

    #[test]
    fn arbitrary_frames_with_valid_checksums_never_panic(
        ver in prop::sample::select(vec![0x25u8, 0x20]),
        cid1 in prop::sample::select(vec![0x46u8, 0x4A]),
        info in prop::collection::vec(any::<u8>(), 0..1200),
        all in any::<bool>(),
    ) {
        let frame = pace::encode_frame(Header { ver, adr: 1, cid1, code: 0 }, &info).unwrap();
        let pack = if all { ALL_PACKS } else { 1 };
        for request in [None, Some(Command::Analog(pack)), Some(Command::Status(pack))] {
            let request = request.map(|c| Request::new(1, c).with_ver(ver).encode());
            let _ = decode(request.as_deref(), &frame);
        }
    }

    #[test]
    fn requests_round_trip(ver in any::<u8>(), adr in any::<u8>(), cid1 in any::<u8>(), command in commands()) {
        let request = Request::new(adr, command).with_ver(ver).with_cid1(cid1);
        prop_assert_eq!(Request::decode(&request.encode()), Ok(request));
    }

    #[test]
    fn analog_replies_round_trip((blocks, tail) in analog_blocks(), flag in any::<u8>(), adr in 0u8..16) {
        let frame = pace::encode_analog(header(adr), flag, blocks.len() as u8, &blocks).unwrap();
        let reply = pace::decode_reply(&frame, Some(&Request::new(adr, Command::Analog(ALL_PACKS)))).unwrap();
        let Reply::Analog(analog) = &reply else { panic!("analog") };
        prop_assert_eq!(analog.packs.iter().map(|p| p.block.clone()).collect::<Vec<_>>(), blocks);
        prop_assert!(analog.packs.iter().all(|p| p.tail_bytes == tail));
        prop_assert_eq!(reply.encode().unwrap(), frame);
    }

    #[test]
    fn status_replies_round_trip(blocks in status_blocks(), adr in 0u8..16) {
        let frame = pace::encode_status(header(adr), 0, blocks.len() as u8, &blocks).unwrap();
        let reply = pace::decode_reply(&frame, Some(&Request::new(adr, Command::Status(ALL_PACKS)))).unwrap();
        let Reply::Status(status) = &reply else { panic!("status") };
        prop_assert_eq!(status.packs.iter().map(|p| p.block.clone()).collect::<Vec<_>>(), blocks);
        prop_assert_eq!(reply.encode().unwrap(), frame);
    }

    #[test]
    fn small_replies_round_trip(
        version in "[A-Z0-9][A-Z0-9.-]{0,19}",
        bluetooth in proptest::option::of("[A-Za-z0-9_]{1,20}"),
        serial in "[A-Z0-9]{1,20}",
        capacities in any::<[u16; 3]>(),
        count in any::<u8>(),
        clock in (0u8..=99, 1u8..=12, 1u8..=28, 0u8..24, 0u8..60, 0u8..60),
    ) {
        let h = header(1);
        let request = |c| Some(Request::new(1, c));
        let frame = pace::encode_version(h, &version, bluetooth.as_deref()).unwrap();
        let Ok(Reply::SoftwareVersion(r)) = pace::decode_reply(&frame, request(Command::SoftwareVersion).as_ref())
        else { panic!("C1") };
        prop_assert_eq!((&r.version, &r.bluetooth_name), (&version, &bluetooth));
        let frame = pace::encode_product_info(h, &serial, Some(&version)).unwrap();
        let Ok(Reply::ProductInfo(r)) = pace::decode_reply(&frame, request(Command::ProductInfo).as_ref())
        else { panic!("C2") };
        prop_assert_eq!((&r.bms_serial, &r.pack_serial), (&serial, &version));
        let [rem, full, design] = capacities.map(|c| f64::from(c) / 100.0);
        let frame = pace::encode_capacity(h, rem, full, design).unwrap();
        let Ok(Reply::PackCapacity(r)) = pace::decode_reply(&frame, request(Command::PackCapacity).as_ref())
        else { panic!("A6") };
        prop_assert_eq!((r.remaining_ah, r.full_ah, r.design_ah), (rem, full, design));
        let frame = pace::encode_pack_count(h, count).unwrap();
        prop_assert_eq!(pace::decode_reply(&frame, None).unwrap().encode().unwrap(), frame);
        let (y, month, day, hour, minute, second) = clock;
        let t = DateTime { year: 2000 + u16::from(y), month, day, hour, minute, second };
        let frame = pace::encode_date_time(h, t).unwrap();
        let Ok(Reply::DateTime(r)) = pace::decode_reply(&frame, None) else { panic!("B1") };
        prop_assert_eq!(r.date_time, t);
    }
}
