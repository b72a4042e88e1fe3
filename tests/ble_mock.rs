//! The mock BlueZ (tests/ble/bluez_bms.py) proved on its own, before any Bluetooth code of ours uses it: an
//! independent D-Bus client reads Daly simulators through it, and every reply put together from the notifications
//! decodes to the simulator's truth, however the dongle cuts it up or misbehaves.

use std::time::Duration;

use bms_exporter::protocol::daly::{self, Address, Command, Filler, Request};
use bms_exporter::protocol::daly_modbus::{self, Map, d2, encode_request};
use bms_exporter::protocol::{DecodeOptions, parse_hex};
use serde_json::Value;

use crate::ble_util::{
    A5_EXTRA, A5_NOTIFY, A5_WRITE, MODBUS_NOTIFY, MODBUS_WRITE, MockBluez, Mode, Split, chunks, hex,
};
use crate::util::{Simulator, vectors};

// The simulators send each reply in one write (`--baud 0`): paced like a 9600 baud line, a reply could meet a stall
// of the loaded test machine longer than the mock's end-of-reply quiet, and reach the client as two bursts, which
// would upset the exact notification counts checked here (a client must reassemble across notifications anyway).

/// A mock with adapter hci0, its start-up time reported (it should take well under a second or two).
fn mock() -> MockBluez {
    let bluez = MockBluez::start();
    eprintln!("mock BlueZ ready in {:?}", bluez.started_in);
    assert!(bluez.started_in < Duration::from_secs(10), "the mock took {:?} to start", bluez.started_in);
    assert_eq!(bluez.add_adapter("hci0"), "/org/bluez/hci0");
    bluez
}

fn close(what: &str, got: Option<f64>, want: Option<f64>, tolerance: f64) {
    let (got, want) = (got.unwrap_or_else(|| panic!("{what} missing")), want.unwrap());
    assert!((got - want).abs() <= tolerance + 1e-9, "{what}: got {got}, truth {want} (±{tolerance})");
}

/// The request a BLE client sends for pack voltage, current and SOC: 0x90 to board 1 from host 0x80.
fn soc_request() -> Vec<u8> {
    let request = Request::read(Command::Soc, Address::Uart, Filler::Zero).encode().to_vec();
    // The same bytes as the shared vector captured from a client using host address 0x80.
    let vector = vectors("daly.json").into_iter().find(|v| v["name"] == "soc_0x90_real_positive_raw_current");
    assert_eq!(hex(&request), vector.unwrap()["request_hex"].as_str().unwrap());
    request
}

/// Decode the notifications of `reply` (joined) as the answer to `request` and check voltage, current and SOC
/// against the simulator's truth; returns how many bytes the decoder skipped plus how many frames it rejected.
fn assert_a5_soc_is_the_truth(sim: &Simulator, request: &[u8], reply: &Value) -> usize {
    let bytes = chunks(reply).concat();
    let capture = daly::decode_capture(Some(request), &bytes, &DecodeOptions::default())
        .unwrap_or_else(|e| panic!("{e:?}: {}", hex(&bytes)));
    let (got, truth) = (&capture.device.packs[0], &sim.truth().packs[0]);
    close("voltage", got.voltage_volts, truth.voltage_volts, 0.05);
    close("current", got.current_amperes, truth.current_amperes, 0.05);
    close("soc", got.state_of_charge_ratio, truth.state_of_charge_ratio, 0.0005);
    usize::try_from(capture.skipped_bytes).unwrap() + capture.rejected.len()
}

#[test]
fn an_a5_dongle_answers_in_mtu_sized_notifications_that_decode_to_the_truth_and_gets_its_empty_write() {
    let sim = Simulator::tcp("ble-a5", &["--protocol", "daly", "--cells", "16", "--baud", "0", "--time-scale", "0"]);
    let bluez = mock();
    let device = bluez.add_device("hci0", "AA:BB:CC:00:00:01", "HI-Link-B20");
    bluez.add_daly_a5_gatt(&device, sim.addr.as_deref().unwrap(), true);
    let soc = soc_request();
    let cells = Request::read(Command::CellVoltages, Address::Uart, Filler::Zero).encode();
    let got = bluez.client_exchange(&device, A5_NOTIFY, A5_WRITE, Some(A5_EXTRA), &[&soc, &cells]);

    let reply = &got["replies"][0];
    assert_eq!(chunks(reply).len(), 1, "a 13-byte frame fits one notification: {reply}");
    assert_eq!(assert_a5_soc_is_the_truth(&sim, &soc, reply), 0);

    // Host 0x80 gets all 16 cell-voltage frames: 208 bytes, in 20-byte notifications.
    let pieces = chunks(&got["replies"][1]);
    let bytes = pieces.concat();
    assert_eq!(bytes.len(), 16 * 13);
    assert_eq!(pieces.len(), bytes.len().div_ceil(20));
    assert!(pieces.iter().all(|p| p.len() <= 20));
    let capture = daly::decode_capture(Some(&cells), &bytes, &DecodeOptions::default()).unwrap();
    assert!(capture.rejected.is_empty() && capture.skipped_bytes == 0, "{:?}", capture.rejected);
    let (got_cells, truth) = (&capture.device.packs[0].cell_volts, &sim.truth().packs[0]);
    assert_eq!(got_cells.len(), 16);
    for (i, (g, t)) in got_cells.iter().zip(&truth.cell_volts).enumerate() {
        close(&format!("cell {}", i + 1), *g, *t, 0.0005);
    }

    let stats = bluez.stats(&device);
    assert_eq!(bluez.extra_writes(&device), [""], "one empty write to the extra characteristic: {stats}");
    assert_eq!(stats["write_types"], serde_json::json!(["command", "command"]), "writes without response");
    assert_eq!((stats["connects"].as_u64(), stats["disconnects"].as_u64()), (Some(1), Some(1)), "{stats}");
    assert_eq!(stats["notifications"], 1 + pieces.len());
}

#[test]
fn a_modbus_style_module_answers_a_d2_read_on_service_ff00_with_the_truth() {
    let sim =
        Simulator::tcp("ble-d2", &["--protocol", "daly-modbus", "--cells", "16", "--baud", "0", "--time-scale", "0"]);
    let bluez = mock();
    let device = bluez.add_device("hci0", "AA:BB:CC:00:00:02", "DL-40D63C123456");
    bluez.add_daly_modbus_gatt(&device, sim.addr.as_deref().unwrap());
    // The shared vector's 62-register read, the one the Smart BMS app sends.
    let vector = vectors("daly.json").into_iter().find(|v| v["variant"] == "modbus_d2").unwrap();
    let request = parse_hex(vector["request_hex"].as_str().unwrap()).unwrap();
    assert_eq!(request, encode_request(Map::D2, d2::REALTIME));
    let got = bluez.client_exchange(&device, MODBUS_NOTIFY, MODBUS_WRITE, None, &[&request]);

    let pieces = chunks(&got["replies"][0]);
    let bytes = pieces.concat();
    assert_eq!(bytes.len(), 3 + 2 * 62 + 2, "header, 62 registers, CRC");
    assert_eq!(pieces.len(), bytes.len().div_ceil(20));
    let capture = daly_modbus::decode_capture(Some(&request), &bytes, &DecodeOptions::default()).unwrap();
    assert!(capture.rejected.is_empty() && capture.skipped_bytes == 0, "{:?}", capture.rejected);
    let (got, truth) = (&capture.device.packs[0], &sim.truth().packs[0]);
    close("voltage", got.voltage_volts, truth.voltage_volts, 0.05);
    close("current", got.current_amperes, truth.current_amperes, 0.05);
    close("soc", got.state_of_charge_ratio, truth.state_of_charge_ratio, 0.0005);
    assert_eq!(got.cell_volts.len(), 16);
    for (i, (g, t)) in got.cell_volts.iter().zip(&truth.cell_volts).enumerate() {
        close(&format!("cell {}", i + 1), *g, *t, 0.0005);
    }
}

#[test]
fn random_splits_cut_one_reply_into_several_notifications_and_joined_keeps_a_burst_whole() {
    let sim = Simulator::tcp("ble-split", &["--protocol", "daly", "--cells", "16", "--baud", "0", "--time-scale", "0"]);
    let bluez = mock();
    let device = bluez.add_device("hci0", "AA:BB:CC:00:00:03", "HI-Link-B20");
    bluez.add_daly_a5_gatt(&device, sim.addr.as_deref().unwrap(), false);
    bluez.set_split(&device, Split::Random(7));
    let soc = soc_request();
    let got = bluez.client_exchange(&device, A5_NOTIFY, A5_WRITE, None, &[&soc, &soc, &soc]);
    for reply in got["replies"].as_array().unwrap() {
        assert!(chunks(reply).len() > 1, "a random split gives several notifications: {reply}");
        assert_eq!(assert_a5_soc_is_the_truth(&sim, &soc, reply), 0);
    }
    assert!(bluez.extra_writes(&device).is_empty(), "newer dongles have no extra characteristic to write");

    bluez.set_split(&device, Split::Joined);
    let cells = Request::read(Command::CellVoltages, Address::Uart, Filler::Zero).encode();
    let got = bluez.client_exchange(&device, A5_NOTIFY, A5_WRITE, None, &[&cells]);
    let pieces = chunks(&got["replies"][0]);
    assert_eq!(pieces.iter().map(Vec::len).collect::<Vec<_>>(), [16 * 13], "one notification for the burst");
}

#[test]
fn garbage_silence_a_dropped_link_and_an_unreachable_dongle_behave_as_set() {
    let sim = Simulator::tcp("ble-faults", &["--protocol", "daly", "--baud", "0", "--time-scale", "0"]);
    let bluez = mock();
    let device = bluez.add_device("hci0", "AA:BB:CC:00:00:04", "HI-Link-B20");
    bluez.add_daly_a5_gatt(&device, sim.addr.as_deref().unwrap(), false);
    let soc = soc_request();

    // Garbage before a reply that fits one notification: the decoder skips it and finds the truth.
    bluez.set_mode(&device, Mode::Garbage);
    let got = bluez.client_exchange(&device, A5_NOTIFY, A5_WRITE, None, &[&soc, &soc]);
    for reply in got["replies"].as_array().unwrap() {
        assert!(chunks(reply).len() > 1, "garbage came as notifications of its own: {reply}");
        assert!(assert_a5_soc_is_the_truth(&sim, &soc, reply) > 0, "the garbage was passed over: {reply}");
    }
    // Garbage between the pieces of a cut reply lands inside the frame: the reply fails its checksum, and what
    // does decode is true.
    bluez.set_split(&device, Split::Random(3));
    let got = bluez.client_exchange(&device, A5_NOTIFY, A5_WRITE, None, &[&soc, &soc, &soc]);
    let mut struck = 0;
    for reply in got["replies"].as_array().unwrap() {
        let bytes = chunks(reply).concat();
        match daly::decode_capture(Some(&soc), &bytes, &DecodeOptions::default()) {
            Ok(capture) if !capture.device.packs.is_empty() => {
                close("voltage", capture.device.packs[0].voltage_volts, sim.truth().packs[0].voltage_volts, 0.05);
            }
            _ => struck += 1,
        }
    }
    assert!(struck > 0, "garbage inside a frame must break it: {got}");
    assert!(bluez.stats(&device)["garbage_notifications"].as_u64() >= Some(5));

    // Silent: the write is taken, nothing answers, the link stays up.
    bluez.set_mode(&device, Mode::Silent);
    let got = bluez.client_exchange(&device, A5_NOTIFY, A5_WRITE, None, &[&soc]);
    assert_eq!(got["replies"][0]["chunks"], serde_json::json!([]));
    assert_eq!(got["replies"][0]["dropped"], false);

    // A dongle that goes away mid-poll: that reply is lost, the client connects again and the next one comes.
    bluez.set_split(&device, Split::Mtu);
    bluez.set_mode(&device, Mode::DisconnectNext);
    let got = bluez.client_exchange(&device, A5_NOTIFY, A5_WRITE, None, &[&soc, &soc]);
    assert_eq!(got["replies"][0]["dropped"], true, "{got}");
    assert_eq!(got["replies"][0]["chunks"], serde_json::json!([]));
    assert_eq!(assert_a5_soc_is_the_truth(&sim, &soc, &got["replies"][1]), 0);
    assert_eq!(got["connects"], 2);
    let stats = bluez.stats(&device);
    assert_eq!((stats["mode"].as_str(), stats["swallowed"].as_u64()), (Some("normal"), Some(2)), "{stats}");

    // Later in a poll: one more request is answered, the next one drops the link.
    bluez.disconnect_after(&device, 1);
    let got = bluez.client_exchange(&device, A5_NOTIFY, A5_WRITE, None, &[&soc, &soc, &soc]);
    assert_eq!(assert_a5_soc_is_the_truth(&sim, &soc, &got["replies"][0]), 0);
    assert_eq!(got["replies"][1]["dropped"], true, "{got}");
    assert_eq!(assert_a5_soc_is_the_truth(&sim, &soc, &got["replies"][2]), 0);
    assert_eq!(bluez.stats(&device)["swallowed"], 3);

    // Unreachable: Connect fails as bluetoothd reports a peer that does not answer, until the mode is lifted.
    bluez.set_mode(&device, Mode::Unreachable);
    let refused = bluez.call_on(&device, "org.bluez.Device1.Connect", &[]).unwrap_err();
    assert!(refused.contains("org.bluez.Error.Failed"), "{refused}");
    bluez.set_mode(&device, Mode::Normal);
    bluez.call_on(&device, "org.bluez.Device1.Connect", &[]).unwrap();
    let connected = bluez.call_on(&device, "org.freedesktop.DBus.Properties.Get", &["org.bluez.Device1", "Connected"]);
    assert_eq!(connected.unwrap().trim(), "(<true>,)");
}

#[test]
fn one_connect_at_a_time_per_adapter_as_bluez_refuses_a_second_with_in_progress() {
    let bluez = mock();
    let first = bluez.add_device("hci0", "AA:BB:CC:00:00:05", "HI-Link-B20");
    let second = bluez.add_device("hci0", "AA:BB:CC:00:00:06", "DL-40D63C123456");
    let connected = |device: &str| {
        bluez.call_on(device, "org.freedesktop.DBus.Properties.Get", &["org.bluez.Device1", "Connected"]).unwrap()
    };
    // Both asked at once: one connects, the other is told the adapter is busy.
    let (a, b) = std::thread::scope(|s| {
        let a = s.spawn(|| bluez.call_on(&first, "org.bluez.Device1.Connect", &[]));
        let b = s.spawn(|| bluez.call_on(&second, "org.bluez.Device1.Connect", &[]));
        (a.join().unwrap(), b.join().unwrap())
    });
    let refused = match (&a, &b) {
        (Ok(_), Err(e)) | (Err(e), Ok(_)) => e.clone(),
        _ => panic!("exactly one of two simultaneous connects must succeed: {a:?} {b:?}"),
    };
    assert!(refused.contains("org.bluez.Error.InProgress") && refused.contains("already in progress"), "{refused}");
    assert_eq!(bluez.adapter_stats("/org/bluez/hci0")["refused_in_progress"], 1);
    // One after the other, both connect.
    for device in [&first, &second] {
        bluez.call_on(device, "org.bluez.Device1.Connect", &[]).unwrap();
        assert_eq!(connected(device).trim(), "(<true>,)");
    }
    // The stock mock's -79 dBm can be changed per device.
    bluez.set_rssi(&second, -55);
    let rssi = bluez.call_on(&second, "org.freedesktop.DBus.Properties.Get", &["org.bluez.Device1", "RSSI"]);
    assert_eq!(rssi.unwrap().trim(), "(<int16 -55>,)");
}
