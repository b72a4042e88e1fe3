//! Stage two for one `devices:` item: its name, transport, protocol and protocol block, and whether it agrees
//! with the devices before it on the same port. Pure: nothing is opened, a serial path is only compared.

use std::path::PathBuf;

use serde_saphyr::Spanned;

use super::address::{ProtocolOptions, daly_addresses, daly_modbus_map, pace_adr};
use super::locate::{Position, join};
use super::resolve::{
    BLUETOOTH_TIMEOUT, BusKey, Defaults, DeviceConfig, Source, TCP_CONNECT_TIMEOUT, TIMEOUT_RANGE, bus_key, duration,
    retries,
};
use super::{ConfigError, OneOrList, RawDaly, RawDevice, RawPace};
use crate::model::CurrentSign;
use crate::protocol::Protocol;
use crate::protocol::daly::Address;
use crate::protocol::daly_modbus::Map;
use crate::protocol::pace::exchange::PackSelection;
use crate::protocol::pace::{VER_PACE, VER_PYLON};
use crate::transport::{
    BLUETOOTH_CONNECT_TIMEOUT, BluetoothSettings, Parity, SerialSettings, TcpSettings, TransportSettings,
    parse_bluetooth_adapter, parse_bluetooth_address,
};

/// One `devices:` item, checked and resolved; `path` is its key path (`devices[2]`). `default_timeout_written`
/// says whether the file's `defaults:` sets a timeout, which then applies to Bluetooth devices too.
pub(super) fn resolve_device(
    item: &Spanned<RawDevice>,
    path: &str,
    defaults: &Defaults,
    default_timeout_written: bool,
    src: &Source<'_>,
) -> Result<DeviceConfig, ConfigError> {
    let raw = &item.value;
    let name = device_name(item, path, src)?;
    let Some(protocol_text) = &raw.protocol else {
        return Err(src.error(
            Position::of(item),
            path,
            "no protocol: add protocol: daly, daly-modbus, sinowealth or pace",
        ));
    };
    // The block is spelled daly_modbus (a YAML key), so the same spelling is accepted as the protocol name.
    let protocol = match protocol_text.value.as_str() {
        "daly_modbus" => Ok(Protocol::DalyModbus),
        other => other.parse::<Protocol>(),
    }
    .map_err(|e| src.at_value(protocol_text, &join(path, "protocol"), e.to_string()))?;
    let transport = transport(item, path, src)?;
    let bluetooth = matches!(transport, TransportSettings::Bluetooth(_));
    // A Daly UART dongle forwards frames for the UART host address; the RS485 one goes unanswered there.
    let daly_default = if bluetooth { Address::Uart } else { Address::Rs485 };
    let options = protocol_options(raw, protocol, daly_default, path, src)?;
    let timeout = match &raw.timeout {
        Some(t) => duration(t, &join(path, "timeout"), TIMEOUT_RANGE, src)?,
        None if bluetooth && !default_timeout_written => BLUETOOTH_TIMEOUT,
        None => defaults.timeout,
    };
    let retries = match &raw.retries {
        Some(r) => retries(r, &join(path, "retries"), src)?,
        None => defaults.retries,
    };
    Ok(DeviceConfig { name, protocol, options, transport, timeout, retries })
}

/// Longest device name: it becomes a label value and an MQTT topic level.
const MAX_NAME_CHARS: usize = 64;

fn device_name(item: &Spanned<RawDevice>, path: &str, src: &Source<'_>) -> Result<String, ConfigError> {
    let Some(name) = &item.value.name else {
        return Err(src.error(Position::of(item), path, "no name: add name: with a unique [a-z0-9_-]+ label"));
    };
    let text = &name.value;
    let valid = !text.is_empty()
        && text.len() <= MAX_NAME_CHARS
        && text.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-');
    if !valid {
        return Err(src.at_value(
            name,
            &join(path, "name"),
            format!(
                "{} is not a device name: use 1–{MAX_NAME_CHARS} lower-case letters, digits, _ or -",
                src.quote(name)
            ),
        ));
    }
    Ok(text.clone())
}

/// Exactly one of serial/tcp/bluetooth, with serial line settings only on serial and an adapter only on bluetooth.
fn transport(item: &Spanned<RawDevice>, path: &str, src: &Source<'_>) -> Result<TransportSettings, ConfigError> {
    let raw = &item.value;
    let none_given = "no transport: add serial: PATH, tcp: HOST:PORT or bluetooth: AA:BB:CC:DD:EE:FF";
    // Every transport key given, in the order written, so the second one is the one reported.
    let mut given: Vec<(&str, Position)> = Vec::new();
    if let Some(v) = &raw.serial {
        given.push(("serial", src.key_position(v, &join(path, "serial"))));
    }
    if let Some(v) = &raw.tcp {
        given.push(("tcp", src.key_position(v, &join(path, "tcp"))));
    }
    if let Some(v) = &raw.bluetooth {
        given.push(("bluetooth", src.key_position(v, &join(path, "bluetooth"))));
    }
    given.sort_by_key(|(_, at)| *at);
    match given.as_slice() {
        [] => return Err(src.error(Position::of(item), path, none_given)),
        [(first, _), (second, at), ..] => {
            return Err(src.error(
                *at,
                &join(path, second),
                format!("a device has one transport, and {first}: is already given; remove one of them"),
            ));
        }
        [_] => {}
    }
    if let Some(adapter) = &raw.adapter
        && raw.bluetooth.is_none()
    {
        return Err(src.at_key(
            adapter,
            &join(path, "adapter"),
            "adapter applies to bluetooth: devices only; it names the Bluetooth adapter (hci0) to reach them through",
        ));
    }
    if let Some(ble) = &raw.bluetooth {
        return bluetooth(raw, ble, path, src);
    }
    if let Some(serial) = &raw.serial {
        let serial_path = join(path, "serial");
        if serial.value.trim().is_empty() {
            return Err(src.at_key(serial, &serial_path, "empty: give the serial port, e.g. /dev/ttyUSB0"));
        }
        let baud = match &raw.baud {
            Some(b) => baud(b, &join(path, "baud"), src)?,
            None => 9600,
        };
        let parity = match &raw.parity {
            Some(p) => p.value.parse::<Parity>().map_err(|_| {
                src.at_value(p, &join(path, "parity"), format!("{} is not none, even or odd", src.quote(p)))
            })?,
            None => Parity::None,
        };
        return Ok(TransportSettings::Serial(SerialSettings { path: PathBuf::from(&serial.value), baud, parity }));
    }
    let Some(tcp) = &raw.tcp else {
        return Err(src.error(Position::of(item), path, none_given));
    };
    serial_only_keys(raw, path, "a TCP serial server has its own line settings", src)?;
    let address = tcp.value.trim();
    if !is_host_port(address) {
        return Err(src.at_value(
            tcp,
            &join(path, "tcp"),
            format!("{} is not HOST:PORT, e.g. 192.168.1.50:8899 or [fe80::1]:8899", src.quote(tcp)),
        ));
    }
    Ok(TransportSettings::Tcp(TcpSettings { address: address.to_owned(), connect_timeout: TCP_CONNECT_TIMEOUT }))
}

/// `baud:` and `parity:` belong to serial devices; `why` says why they mean nothing for this one.
fn serial_only_keys(raw: &RawDevice, path: &str, why: &str, src: &Source<'_>) -> Result<(), ConfigError> {
    for (key, value) in [("baud", &raw.baud), ("parity", &raw.parity)] {
        if let Some(v) = value {
            return Err(src.at_key(v, &join(path, key), format!("{key} applies to serial ports only; {why}")));
        }
    }
    Ok(())
}

/// A `bluetooth:` device: its address, its adapter, and no serial line settings. The address and adapter are
/// checked in every build, so a mistake is reported the same way with or without Bluetooth support.
fn bluetooth(
    raw: &RawDevice,
    ble: &Spanned<String>,
    path: &str,
    src: &Source<'_>,
) -> Result<TransportSettings, ConfigError> {
    serial_only_keys(raw, path, "a Bluetooth module has its own line settings", src)?;
    let ble_path = join(path, "bluetooth");
    let address = parse_bluetooth_address(&ble.value).map_err(|_| {
        src.at_value(
            ble,
            &ble_path,
            format!("{} is not a Bluetooth address: write six hex pairs like AA:BB:CC:DD:EE:FF", src.quote(ble)),
        )
    })?;
    let adapter = match &raw.adapter {
        Some(a) => Some(parse_bluetooth_adapter(&a.value).map_err(|_| {
            src.at_value(
                a,
                &join(path, "adapter"),
                format!("{} is not a Bluetooth adapter name: write hci0, hci1, …", src.quote(a)),
            )
        })?),
        None => None,
    };
    if cfg!(not(feature = "ble")) {
        return Err(src.at_key(
            ble,
            &ble_path,
            "this bms_exporter was built without the ble feature (Bluetooth LE); rebuild it with default features, \
             or reach the device through serial: or tcp:",
        ));
    }
    Ok(TransportSettings::Bluetooth(BluetoothSettings { address, adapter, connect_timeout: BLUETOOTH_CONNECT_TIMEOUT }))
}

/// Line speeds serial adapters and BMS boards actually offer; anything else is most likely a typo.
const BAUD_RATES: [u32; 12] = [1200, 2400, 4800, 9600, 14400, 19200, 38400, 57600, 115_200, 230_400, 460_800, 921_600];

/// A standard line speed.
fn baud(value: &Spanned<String>, path: &str, src: &Source<'_>) -> Result<u32, ConfigError> {
    match value.value.trim().parse::<u32>() {
        Ok(b) if BAUD_RATES.contains(&b) => Ok(b),
        _ => Err(src.at_value(
            value,
            path,
            format!("{} is not a baud rate: use one of 1200, 2400, 4800, 9600, 14400, 19200, 38400, 57600, 115200, 230400, 460800 or 921600", src.quote(value)),
        )),
    }
}

/// `host:port` with a non-empty host (IPv6 in brackets) and a port 1–65535.
fn is_host_port(text: &str) -> bool {
    let Some((host, port)) = text.rsplit_once(':') else { return false };
    let port_ok = port.parse::<u16>().is_ok_and(|p| p != 0);
    let host_ok = match host.strip_prefix('[') {
        Some(v6) => v6.strip_suffix(']').is_some_and(|inner| !inner.is_empty()),
        None => !host.is_empty() && !host.contains(':') && !host.contains(char::is_whitespace),
    };
    port_ok && host_ok
}

/// The protocol block that matches `protocol` (none of another protocol's), resolved.
/// `daly_default` is the Daly address when the `daly:` block names none (it depends on the transport).
fn protocol_options(
    raw: &RawDevice,
    protocol: Protocol,
    daly_default: Address,
    path: &str,
    src: &Source<'_>,
) -> Result<ProtocolOptions, ConfigError> {
    // A block for another protocol is reported before its contents are looked at.
    let blocks = [
        ("daly", Protocol::Daly, raw.daly.as_ref().map(|b| src.key_position(b, &join(path, "daly")))),
        (
            "daly_modbus",
            Protocol::DalyModbus,
            raw.daly_modbus.as_ref().map(|b| src.key_position(b, &join(path, "daly_modbus"))),
        ),
        (
            "sinowealth",
            Protocol::Sinowealth,
            raw.sinowealth.as_ref().map(|b| src.key_position(b, &join(path, "sinowealth"))),
        ),
        ("pace", Protocol::Pace, raw.pace.as_ref().map(|b| src.key_position(b, &join(path, "pace")))),
    ];
    for (key, owner, at) in blocks {
        if let Some(at) = at
            && owner != protocol
        {
            let hint = match protocol {
                Protocol::Sinowealth => "sinowealth has no options".to_owned(),
                Protocol::DalyModbus => "its options go under daly_modbus:".to_owned(),
                other => format!("its options go under {other}:"),
            };
            return Err(src.error(
                at,
                &join(path, key),
                format!("a {key}: block does not belong to a {protocol} device ({hint})"),
            ));
        }
    }
    Ok(match protocol {
        Protocol::Daly => daly_options(raw.daly.as_ref().map(|b| &b.value), daly_default, &join(path, "daly"), src)?,
        Protocol::DalyModbus => {
            let address = raw.daly_modbus.as_ref().and_then(|b| b.value.address.as_ref());
            let map = match address {
                Some(a) => daly_modbus_map(a.value.trim())
                    .map_err(|e| src.at_value(a, &join(path, "daly_modbus.address"), e.to_string()))?,
                None => Map::D2,
            };
            ProtocolOptions::DalyModbus { map, current_sign: CurrentSign::Auto }
        }
        Protocol::Sinowealth => ProtocolOptions::Sinowealth,
        Protocol::Pace => pace_options(raw.pace.as_ref().map(|b| &b.value), &join(path, "pace"), src)?,
    })
}

/// The `daly:` block: addresses (default `default`: rs485 on a wire, uart over Bluetooth) and current sign
/// (default auto).
fn daly_options(
    raw: Option<&RawDaly>,
    default: Address,
    path: &str,
    src: &Source<'_>,
) -> Result<ProtocolOptions, ConfigError> {
    let address_path = join(path, "address");
    let addresses = match raw.and_then(|r| r.address.as_ref()) {
        None => vec![default],
        Some(spanned) => match &spanned.value {
            OneOrList::One(text) => {
                daly_addresses(text.trim()).map_err(|e| src.at_value(spanned, &address_path, e.to_string()))?
            }
            OneOrList::List(items) => {
                if items.is_empty() {
                    return Err(src.at_value(spanned, &address_path, "an empty list: give board numbers 1–16"));
                }
                let mut boards = Vec::with_capacity(items.len());
                for (i, item) in items.iter().enumerate() {
                    let item_path = format!("{address_path}[{i}]");
                    let board = match daly_addresses(item.value.trim()).as_deref() {
                        Ok([board @ Address::Board(_)]) => *board,
                        _ => {
                            return Err(src.at_value(
                                item,
                                &item_path,
                                format!("{} is not a board number 1–16", src.quote(item)),
                            ));
                        }
                    };
                    if boards.contains(&board) {
                        return Err(src.at_value(
                            item,
                            &item_path,
                            format!("board {} is listed twice", src.quote(item)),
                        ));
                    }
                    boards.push(board);
                }
                boards
            }
        },
    };
    let current_sign = match raw.and_then(|r| r.current_sign.as_ref()) {
        None => CurrentSign::Auto,
        Some(sign) => match sign.value.as_str() {
            "auto" => CurrentSign::Auto,
            "charge-positive" => CurrentSign::ChargePositive,
            "discharge-positive" => CurrentSign::DischargePositive,
            _ => {
                return Err(src.at_value(
                    sign,
                    &join(path, "current_sign"),
                    format!("{} is not auto, charge-positive or discharge-positive", src.quote(sign)),
                ));
            }
        },
    };
    Ok(ProtocolOptions::Daly { addresses, current_sign })
}

/// Highest pack number behind a Pace master.
const MAX_PACE_PACK: u8 = crate::protocol::pace::MAX_PACK;

/// The `pace:` block: ADR (default 1), packs (default all) and VER (default 0x25).
fn pace_options(raw: Option<&RawPace>, path: &str, src: &Source<'_>) -> Result<ProtocolOptions, ConfigError> {
    let adr = match raw.and_then(|r| r.address.as_ref()) {
        None => 1,
        Some(a) => pace_adr(a.value.trim()).map_err(|e| src.at_value(a, &join(path, "address"), e.to_string()))?,
    };
    let packs_path = join(path, "packs");
    let pack_number = |item: &Spanned<String>, item_path: &str| match item.value.trim().parse::<u8>() {
        Ok(n) if (1..=MAX_PACE_PACK).contains(&n) => Ok(n),
        _ => Err(src.at_value(
            item,
            item_path,
            format!("{} is not all or a pack number 1–{MAX_PACE_PACK}", src.quote(item)),
        )),
    };
    let packs = match raw.and_then(|r| r.packs.as_ref()) {
        None => PackSelection::All,
        Some(spanned) => match &spanned.value {
            OneOrList::One(text) if text.trim() == "all" => PackSelection::All,
            OneOrList::One(text) => {
                let as_item = Spanned::new(text.clone(), spanned.referenced, spanned.defined);
                PackSelection::List(vec![pack_number(&as_item, &packs_path)?])
            }
            OneOrList::List(items) => {
                if items.is_empty() {
                    return Err(src.at_value(spanned, &packs_path, "an empty list: give all or pack numbers"));
                }
                let mut packs = Vec::with_capacity(items.len());
                for (i, item) in items.iter().enumerate() {
                    let item_path = format!("{packs_path}[{i}]");
                    let pack = pack_number(item, &item_path)?;
                    if packs.contains(&pack) {
                        return Err(src.at_value(item, &item_path, format!("pack {pack} is listed twice")));
                    }
                    packs.push(pack);
                }
                PackSelection::List(packs)
            }
        },
    };
    let version = match raw.and_then(|r| r.version.as_ref()) {
        None => VER_PACE,
        Some(v) => match pace_adr(v.value.trim()) {
            Ok(ver) if ver == VER_PACE || ver == VER_PYLON => ver,
            _ => {
                return Err(src.at_value(
                    v,
                    &join(path, "version"),
                    format!("{} is not 0x25 (Pace) or 0x20 (Pylon-compatible)", src.quote(v)),
                ));
            }
        },
    };
    Ok(ProtocolOptions::Pace { adr, packs, version })
}

/// Devices on one port share its line settings and one poll timing (one worker polls them in turn).
pub(super) fn check_shared_bus(
    earlier: &[DeviceConfig],
    device: &DeviceConfig,
    item: &Spanned<RawDevice>,
    path: &str,
    src: &Source<'_>,
) -> Result<(), ConfigError> {
    let key = bus_key(&device.transport);
    let Some((first, other)) = earlier.iter().enumerate().find(|(_, d)| bus_key(&d.transport) == key) else {
        return Ok(());
    };
    let raw = &item.value;
    let port = match &key {
        BusKey::Serial(p) => format!("serial port {}", p.display()),
        BusKey::Tcp(a) => format!("TCP endpoint {a}"),
        BusKey::Bluetooth(a) => format!("Bluetooth module {a}"),
    };
    // Point at this device's own key when it wrote one, else at its transport.
    let place = |written: Option<&Spanned<String>>, key: &str| -> (Position, String) {
        let transport = [("serial", &raw.serial), ("tcp", &raw.tcp), ("bluetooth", &raw.bluetooth)]
            .into_iter()
            .find_map(|(transport_key, t)| t.as_ref().map(|t| (Position::of(t), join(path, transport_key))));
        match written {
            Some(w) => (src.key_position(w, &join(path, key)), join(path, key)),
            None => transport.unwrap_or((Position::of(item), path.to_owned())),
        }
    };
    if let (TransportSettings::Serial(a), TransportSettings::Serial(b)) = (&other.transport, &device.transport) {
        if a.baud != b.baud {
            let (at, at_path) = place(raw.baud.as_ref(), "baud");
            return Err(src.error(
                at,
                &at_path,
                format!(
                    "{port} runs at {} baud for devices[{first}] but at {} here; one port has one line speed",
                    a.baud, b.baud
                ),
            ));
        }
        if a.parity != b.parity {
            let (at, at_path) = place(raw.parity.as_ref(), "parity");
            return Err(src.error(
                at,
                &at_path,
                format!(
                    "{port} has parity {} for devices[{first}] but {} here; one port has one parity",
                    a.parity, b.parity
                ),
            ));
        }
    }
    if let (TransportSettings::Bluetooth(a), TransportSettings::Bluetooth(b)) = (&other.transport, &device.transport)
        && a.adapter != b.adapter
    {
        let (at, at_path) = place(raw.adapter.as_ref(), "adapter");
        let name = |adapter: &Option<String>| adapter.clone().unwrap_or_else(|| "the first adapter".to_owned());
        return Err(src.error(
            at,
            &at_path,
            format!(
                "{port} is reached through {} for devices[{first}] but through {} here; one module has one \
                 connection, through one adapter",
                name(&a.adapter),
                name(&b.adapter)
            ),
        ));
    }
    if other.timeout != device.timeout || other.retries != device.retries {
        let (written, key) = if other.timeout == device.timeout {
            (raw.retries.as_ref(), "retries")
        } else {
            (raw.timeout.as_ref(), "timeout")
        };
        let (at, at_path) = place(written, key);
        return Err(src.error(
            at,
            &at_path,
            format!(
                "devices on one {port} are polled with one timing: devices[{first}] has timeout {:?} and retries {}, \
                 this one {:?} and {}; set them alike (or in defaults:)",
                other.timeout, other.retries, device.timeout, device.retries
            ),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_port_needs_both_halves_and_brackets_around_ipv6() {
        for good in ["192.168.1.50:8899", "bms.local:23", "[fe80::1]:8899"] {
            assert!(is_host_port(good), "{good}");
        }
        for bad in ["192.168.1.50", ":8899", "host:0", "host:65536", "fe80::1:8899", "[]:1", "a b:1"] {
            assert!(!is_host_port(bad), "{bad}");
        }
    }
}
