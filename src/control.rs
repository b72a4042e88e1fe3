//! Write commands: switch a MOSFET, set the SOC, restart the board (Daly A5; the Modbus-style Daly maps only
//! switch MOSFETs). Two callers only: the `set` subcommand on its own link ([`Prepared::send`], either protocol),
//! and the opt-in MQTT control through the bus worker ([`crate::poller::BusHandle::write`], Daly A5 through
//! [`apply`]). The HTTP side never imports this module and never asks a worker to write.
//!
//! Every protocol goes through the same guarded flow: the write is sent once (no retries), its acknowledgement
//! is kept for the report, then after a settle time the state is read back and the verdict says whether the BMS
//! obeyed. The read-back decides, never the acknowledgement: many boards acknowledge a command they then ignore,
//! and some Modbus-style boards obey a write without echoing it.

use std::time::Duration;

use anyhow::{Context as _, bail};

use crate::model::{PackSnapshot, Section, Sections};
use crate::poller::drive;
use crate::protocol::daly::Message;
use crate::protocol::daly::exchange::DalyExchange;
use crate::protocol::daly::{Address, Filler, Request, SetSoc};
use crate::protocol::daly_modbus::exchange::DalyModbusExchange;
use crate::protocol::daly_modbus::{self, Map, WriteAck, d2, p81};
use crate::protocol::{DecodeError, DecodeOptions, Exchange, Protocol, to_hex};
use crate::session::{PollReport, Session, Settings};
use crate::transport::Link;

/// One write the `set` command can send.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Action {
    /// Switch the charge MOSFET on or off (A5 0xDA; Modbus-style D2 register 0xA5, p81 0x121).
    ChargeMosfet(bool),
    /// Switch the discharge MOSFET on or off (A5 0xD9; Modbus-style D2 register 0xA6, p81 0x122).
    DischargeMosfet(bool),
    /// Set the state of charge, in percent 0–100 (A5 0x21, with the clock).
    Soc(f64),
    /// Restart the board (A5 0x00).
    Restart,
}

/// The board a write goes to, in its protocol's terms.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// A Daly A5 board at this address.
    Daly(Address),
    /// A Modbus-style Daly board of this map (D2, or p81 with its board number).
    DalyModbus(Map),
}

/// An action the target's protocol has no write for; it is refused before anything is sent.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{protocol} has no write to {what}: set can only {supported} on this protocol; nothing was sent")]
pub struct Unsupported {
    /// The protocol that lacks the write.
    pub protocol: Protocol,
    /// The action, in words.
    pub what: String,
    /// What the protocol can do instead, in words.
    pub supported: &'static str,
}

/// A write ready to send: one action's request for one board. Built before anything is opened, so the frame can
/// be shown (and an unsupported action refused) first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Prepared {
    /// A Daly A5 write frame.
    Daly(Request),
    /// A Modbus-style single-register write (function 6) to the board of `map`.
    DalyModbus {
        /// The board's map, which fixes its device addresses.
        map: Map,
        /// Register written.
        register: u16,
        /// Value written.
        value: u16,
    },
}

/// Wall-clock fields for the 0x21 request (UTC).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Clock {
    /// Full year, e.g. 2026.
    pub year: u16,
    /// Month 1–12.
    pub month: u8,
    /// Day 1–31.
    pub day: u8,
    /// Hour 0–23.
    pub hour: u8,
    /// Minute 0–59.
    pub minute: u8,
    /// Second 0–59.
    pub second: u8,
}

impl Clock {
    /// The UTC civil time of `unix_seconds` (Howard Hinnant's days-from-civil inverse).
    #[must_use]
    pub fn from_unix(unix_seconds: u64) -> Self {
        let days = (unix_seconds / 86_400) as i64;
        let rest = unix_seconds % 86_400;
        let z = days + 719_468;
        let era = z.div_euclid(146_097);
        let doe = z - era * 146_097;
        let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
        let mp = (5 * doy + 2) / 153;
        let day = doy - (153 * mp + 2) / 5 + 1;
        let month = if mp < 10 { mp + 3 } else { mp - 9 };
        let year = yoe + era * 400 + i64::from(month <= 2);
        Self {
            year: year as u16,
            month: month as u8,
            day: day as u8,
            hour: (rest / 3600) as u8,
            minute: (rest / 60 % 60) as u8,
            second: (rest % 60) as u8,
        }
    }
}

impl Action {
    /// What the action does, in words.
    #[must_use]
    pub fn describe(&self) -> String {
        let state = |on: bool| if on { "on" } else { "off" };
        match self {
            Self::ChargeMosfet(on) => format!("switch the charge MOSFET {}", state(*on)),
            Self::DischargeMosfet(on) => format!("switch the discharge MOSFET {}", state(*on)),
            Self::Soc(percent) => format!("set the state of charge to {percent:.1} %"),
            Self::Restart => "restart the BMS".to_owned(),
        }
    }

    /// The request frame for the board at `address`; `clock` fills the 0x21 time fields.
    pub fn request(&self, address: Address, clock: Clock) -> anyhow::Result<Request> {
        Ok(match *self {
            Self::ChargeMosfet(on) => Request::charge_mosfet(address, on),
            Self::DischargeMosfet(on) => Request::discharge_mosfet(address, on),
            Self::Soc(percent) => {
                if !(0.0..=100.0).contains(&percent) {
                    bail!("--soc {percent} is outside 0–100");
                }
                let values = SetSoc {
                    year: clock.year.saturating_sub(2000).min(255) as u8,
                    month: clock.month,
                    day: clock.day,
                    hour: clock.hour,
                    minute: clock.minute,
                    second: clock.second,
                    soc_permille: (percent * 10.0).round() as u16,
                };
                Request::set_soc(address, &values)
            }
            Self::Restart => Request::restart(address),
        })
    }

    /// The request for `target`; `clock` fills the A5 0x21 time fields. An action the target's protocol has no
    /// write for is an [`Unsupported`] error, as is an SOC outside 0–100.
    pub fn prepare(&self, target: Target, clock: Clock) -> anyhow::Result<Prepared> {
        Ok(match target {
            Target::Daly(address) => Prepared::Daly(self.request(address, clock)?),
            Target::DalyModbus(map) => match self.modbus_request(map)? {
                daly_modbus::Request::Write { register, value } => Prepared::DalyModbus { map, register, value },
                // `modbus_request` builds writes only; a read here would be a bug, and must not be sent as one.
                daly_modbus::Request::Read { .. } => bail!("internal error: a Modbus write became a read"),
            },
        })
    }

    /// The Modbus-style write for a board of `map`: the MOSFET control registers of its map. Neither map has a
    /// register known to set the SOC or restart the board, so those are refused.
    pub fn modbus_request(&self, map: Map) -> Result<daly_modbus::Request, Unsupported> {
        match (*self, map) {
            (Self::ChargeMosfet(on), Map::D2) => Ok(d2::set_charge_mosfet(on)),
            (Self::DischargeMosfet(on), Map::D2) => Ok(d2::set_discharge_mosfet(on)),
            (Self::ChargeMosfet(on), Map::P81 { .. }) => Ok(p81::set_charge_mosfet(on)),
            (Self::DischargeMosfet(on), Map::P81 { .. }) => Ok(p81::set_discharge_mosfet(on)),
            (Self::Soc(_) | Self::Restart, _) => Err(Unsupported {
                protocol: Protocol::DalyModbus,
                what: self.describe(),
                supported: "switch the charge and discharge MOSFETs",
            }),
        }
    }

    /// How long to wait after the write before reading back (a restart takes a while).
    #[must_use]
    pub fn settle_time(&self) -> Duration {
        match self {
            Self::Restart => Duration::from_secs(3),
            _ => Duration::from_millis(300),
        }
    }

    /// Whether `after` shows the action took effect, and what it shows.
    #[must_use]
    pub fn verdict(&self, after: Option<&PackSnapshot>) -> (bool, String) {
        let Some(after) = after.filter(|p| p.online) else {
            return (false, "the BMS did not answer the read-back".to_owned());
        };
        let state = |v: Option<bool>| match v {
            Some(true) => "on",
            Some(false) => "off",
            None => "unknown",
        };
        match *self {
            Self::ChargeMosfet(on) => (
                after.charge_mosfet_enabled == Some(on),
                format!("the charge MOSFET is {}", state(after.charge_mosfet_enabled)),
            ),
            Self::DischargeMosfet(on) => (
                after.discharge_mosfet_enabled == Some(on),
                format!("the discharge MOSFET is {}", state(after.discharge_mosfet_enabled)),
            ),
            Self::Soc(percent) => match after.state_of_charge_ratio {
                Some(ratio) => (
                    (ratio * 100.0 - percent).abs() < 0.15,
                    format!("the state of charge reads {:.1} %", ratio * 100.0),
                ),
                None => (false, "the state of charge could not be read".to_owned()),
            },
            Self::Restart => (true, "the BMS answers again after the restart".to_owned()),
        }
    }

    /// The sections to read back.
    #[must_use]
    pub fn read_back(&self) -> Sections {
        match self {
            Self::ChargeMosfet(_) | Self::DischargeMosfet(_) => Sections::none().with(Section::Mosfet),
            Self::Soc(_) | Self::Restart => Sections::none().with(Section::Soc),
        }
    }
}

/// What happened when a write was sent.
#[derive(Debug, Clone)]
pub struct WriteOutcome {
    /// The acknowledgement, in words, if the board sent one.
    pub acknowledgement: Option<String>,
    /// Whether the BMS obeyed, judged from the read-back.
    pub obeyed: bool,
    /// What the read-back shows.
    pub observed: String,
    /// The read-back poll.
    pub read_back: PollReport,
}

impl Prepared {
    /// The bytes that go on the wire.
    #[must_use]
    pub fn frame(&self) -> Vec<u8> {
        match *self {
            Self::Daly(request) => request.encode().to_vec(),
            Self::DalyModbus { map, register, value } => {
                daly_modbus::encode_request(map, daly_modbus::Request::Write { register, value }).to_vec()
            }
        }
    }

    /// What the frame says, field by field, for the person who has to confirm it.
    #[must_use]
    pub fn meaning(&self) -> String {
        match *self {
            Self::Daly(request) => format!(
                "Daly A5 command 0x{:02x} to host address 0x{:02x}, data {}",
                request.command.code(),
                request.address.host_byte(),
                to_hex(&request.data)
            ),
            Self::DalyModbus { map, register, value } => format!(
                "Modbus-style device 0x{:02x}, function 6 (write one register): register 0x{register:04x} ({}) = {value}",
                map.request_address(),
                daly_modbus::write_register_name(map, register).unwrap_or("no known meaning"),
            ),
        }
    }

    /// The board the write goes to, in words.
    #[must_use]
    pub fn board(&self) -> String {
        match *self {
            Self::Daly(request) => format!("board {}", request.address.reply_board()),
            Self::DalyModbus { map: Map::D2, .. } => "the D2 board".to_owned(),
            Self::DalyModbus { map: Map::P81 { board }, .. } => format!("p81 board {board}"),
        }
    }

    /// Send the write over `link` through the guarded flow of its protocol (see [`apply`]), with a fresh exchange
    /// for the one board it targets.
    pub async fn send(
        self,
        link: &mut Link,
        action: Action,
        options: DecodeOptions,
        settings: Settings,
    ) -> anyhow::Result<WriteOutcome> {
        match self {
            Self::Daly(request) => {
                let mut exchange = DalyExchange::new(vec![request.address], Filler::Zero, options);
                apply(link, &mut exchange, action, request, settings).await
            }
            Self::DalyModbus { map, register, value } => {
                let mut exchange = DalyModbusExchange::new(map, options);
                apply_modbus(link, &mut exchange, action, register, value, settings).await
            }
        }
    }
}

/// Send the A5 `request` (already shown to and confirmed by the user, or logged by the bus worker) over `link`,
/// wait, read back and judge.
pub async fn apply(
    link: &mut Link,
    exchange: &mut DalyExchange,
    action: Action,
    request: Request,
    settings: Settings,
) -> anyhow::Result<WriteOutcome> {
    exchange.begin_write(request);
    let frame = request.encode();
    guarded(link, exchange, action, request.address.reply_board(), &frame, settings, |exchange| {
        exchange.replies().first().map(|reply| match &reply.message {
            Message::ChargeMosfet(echo) | Message::DischargeMosfet(echo) => {
                format!("acknowledged (MOSFET echo {})", if echo.mosfet_state_echo { "on" } else { "off" })
            }
            Message::SetSoc(ack) => format!("acknowledged (accepted = {})", ack.accepted),
            other => format!("answered with {:?}", other.command()),
        })
    })
    .await
}

/// Send the Modbus-style write of `value` to `register` (already shown and confirmed) to the board of
/// `exchange`'s map over `link`, wait, read the MOSFET state back and judge.
pub async fn apply_modbus(
    link: &mut Link,
    exchange: &mut DalyModbusExchange,
    action: Action,
    register: u16,
    value: u16,
    settings: Settings,
) -> anyhow::Result<WriteOutcome> {
    let map = exchange.map();
    exchange.begin_write(register, value);
    let frame = daly_modbus::encode_request(map, daly_modbus::Request::Write { register, value });
    let sent = WriteAck { register, value };
    guarded(link, exchange, action, map.pack_number(), &frame, settings, |exchange| {
        exchange.write_reply().map(|reply| modbus_acknowledgement(sent, reply))
    })
    .await
}

/// The Modbus-style answer to a write, in words.
fn modbus_acknowledgement(sent: WriteAck, reply: &Result<WriteAck, DecodeError>) -> String {
    match reply {
        Ok(echo) if *echo == sent => {
            format!("acknowledged (echo: register 0x{:04x} = {})", echo.register, echo.value)
        }
        Ok(echo) => format!(
            "answered with an echo that differs from the request (register 0x{:04x} = {})",
            echo.register, echo.value
        ),
        Err(DecodeError::ModbusException { code, .. }) => format!("refused (Modbus exception code 0x{code:02x})"),
        Err(error) => format!("refused ({error})"),
    }
}

/// The flow every write shares, once `exchange` has begun the write: send it once, take its acknowledgement
/// from the exchange, wait the action's settle time, read back the sections the action changes and judge pack
/// `pack` of the read-back.
async fn guarded<E: Exchange>(
    link: &mut Link,
    exchange: &mut E,
    action: Action,
    pack: u8,
    frame: &[u8],
    settings: Settings,
    acknowledgement: impl FnOnce(&E) -> Option<String>,
) -> anyhow::Result<WriteOutcome> {
    // A write is sent once: repeating a restart is not harmless, and the read-back tells the truth anyway.
    let write_settings = Settings { retries: 0, ..settings };
    let mut session = Session::resume(exchange, write_settings, std::time::Instant::now());
    drive(link, &mut session).await.map_err(anyhow::Error::msg).context("sending the command")?;
    drop(session);
    let acknowledgement = acknowledgement(exchange);
    tracing::debug!(request = %to_hex(frame), ?acknowledgement, "write sent");
    tokio::time::sleep(action.settle_time()).await;
    let mut session = Session::new(exchange, action.read_back(), settings, std::time::Instant::now());
    drive(link, &mut session).await.map_err(anyhow::Error::msg).context("reading back")?;
    let read_back = session.finish();
    // A read-back nothing answered shows only cached values (a Modbus-style exchange keeps its pack online on
    // them): that is no evidence of the state, so it is judged as no answer.
    let after = read_back.device.packs.iter().find(|p| p.pack == pack).filter(|_| read_back.answered > 0);
    let (obeyed, observed) = action.verdict(after);
    Ok(WriteOutcome { acknowledgement, obeyed, observed, read_back })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::simulator::Responder;

    #[test]
    fn unix_time_becomes_the_civil_utc_date() {
        assert_eq!(Clock::from_unix(0), Clock { year: 1970, month: 1, day: 1, hour: 0, minute: 0, second: 0 });
        // 2026-12-02T21:50:06Z
        assert_eq!(
            Clock::from_unix(1_796_248_206),
            Clock { year: 2026, month: 12, day: 2, hour: 21, minute: 50, second: 6 }
        );
        // 2024-02-29T12:00:00Z, a leap day.
        assert_eq!(Clock::from_unix(1_709_208_000).day, 29);
    }

    #[test]
    fn requests_carry_the_action_and_soc_is_range_checked() {
        let clock = Clock::from_unix(1_796_248_206);
        let r = Action::ChargeMosfet(false).request(Address::Rs485, clock).unwrap();
        assert_eq!(r.encode()[2], 0xDA);
        assert_eq!(r.encode()[4], 0);
        let r = Action::Soc(55.5).request(Address::Board(2), clock).unwrap();
        let values = r.set_soc_values().unwrap();
        assert_eq!((values.year, values.month, values.soc_permille), (26, 12, 555));
        assert!(Action::Soc(101.0).request(Address::Rs485, clock).is_err());
    }

    #[test]
    fn the_verdict_reads_the_state_after_the_write() {
        let mut pack = PackSnapshot::new(1);
        pack.charge_mosfet_enabled = Some(false);
        assert!(Action::ChargeMosfet(false).verdict(Some(&pack)).0);
        assert!(!Action::ChargeMosfet(true).verdict(Some(&pack)).0);
        pack.state_of_charge_ratio = Some(0.555);
        assert!(Action::Soc(55.5).verdict(Some(&pack)).0);
        assert!(!Action::Soc(60.0).verdict(Some(&pack)).0);
        pack.online = false;
        assert!(!Action::Restart.verdict(Some(&pack)).0);
        assert!(!Action::Restart.verdict(None).0);
    }

    /// `hex` as bytes (test vectors are written as the spec writes frames).
    fn bytes(hex: &str) -> Vec<u8> {
        crate::protocol::parse_hex(hex).unwrap()
    }

    #[test]
    fn every_mosfet_action_encodes_to_its_documented_frame_on_every_protocol_and_map() {
        let clock = Clock::from_unix(0);
        let p81 = |board| Target::DalyModbus(Map::p81(board).unwrap());
        let cases = [
            // A5 (host 0x40): the frames of the Daly protocol sheet.
            (Target::Daly(Address::Rs485), Action::DischargeMosfet(true), "a540d9080100000000000000c7"),
            (Target::Daly(Address::Rs485), Action::DischargeMosfet(false), "a540d9080000000000000000c6"),
            (Target::Daly(Address::Rs485), Action::ChargeMosfet(true), "a540da080100000000000000c8"),
            (Target::Daly(Address::Rs485), Action::ChargeMosfet(false), "a540da080000000000000000c7"),
            // D2: the frames captured from the Smart BMS app (registers 0xA5 and 0xA6).
            (Target::DalyModbus(Map::D2), Action::ChargeMosfet(true), "d20600a500014b8a"),
            (Target::DalyModbus(Map::D2), Action::ChargeMosfet(false), "d20600a500008a4a"),
            (Target::DalyModbus(Map::D2), Action::DischargeMosfet(true), "d20600a60001bb8a"),
            (Target::DalyModbus(Map::D2), Action::DischargeMosfet(false), "d20600a600007a4a"),
            // p81 (registers 0x121 and 0x122, device 0x80 + board); CRCs computed independently of this crate.
            (p81(1), Action::ChargeMosfet(true), "810601210001063c"),
            (p81(1), Action::ChargeMosfet(false), "810601210000c7fc"),
            (p81(1), Action::DischargeMosfet(true), "810601220001f63c"),
            (p81(1), Action::DischargeMosfet(false), "81060122000037fc"),
            (p81(3), Action::ChargeMosfet(false), "830601210000c61e"),
            (p81(3), Action::DischargeMosfet(true), "830601220001f7de"),
        ];
        for (target, action, frame) in cases {
            let prepared = action.prepare(target, clock).unwrap();
            assert_eq!(prepared.frame(), bytes(frame), "{target:?} {action:?}");
        }
    }

    #[test]
    fn the_meaning_names_the_device_the_register_and_the_value() {
        let prepared = Action::ChargeMosfet(false).prepare(Target::DalyModbus(Map::D2), Clock::from_unix(0)).unwrap();
        let meaning = prepared.meaning();
        for part in ["0xd2", "function 6", "0x00a5", "charge MOSFET switch", "= 0"] {
            assert!(meaning.contains(part), "{part}: {meaning}");
        }
        assert_eq!(prepared.board(), "the D2 board");
        let p81 = Target::DalyModbus(Map::p81(2).unwrap());
        let prepared = Action::DischargeMosfet(true).prepare(p81, Clock::from_unix(0)).unwrap();
        assert!(
            prepared.meaning().contains("0x82") && prepared.meaning().contains("0x0122 (discharge MOSFET switch) = 1")
        );
        assert_eq!(prepared.board(), "p81 board 2");
        let prepared =
            Action::ChargeMosfet(false).prepare(Target::Daly(Address::Board(2)), Clock::from_unix(0)).unwrap();
        assert!(prepared.meaning().contains("command 0xda to host address 0x41"), "{}", prepared.meaning());
        assert_eq!(prepared.board(), "board 2");
    }

    #[test]
    fn soc_and_restart_are_refused_on_the_modbus_maps_naming_the_protocol() {
        for map in [Map::D2, Map::p81(1).unwrap()] {
            for action in [Action::Soc(50.0), Action::Restart] {
                let error = action.prepare(Target::DalyModbus(map), Clock::from_unix(0)).unwrap_err();
                let unsupported = error.downcast_ref::<Unsupported>().expect("an Unsupported error");
                assert_eq!(unsupported.protocol, Protocol::DalyModbus);
                let text = error.to_string();
                assert!(text.contains("daly-modbus") && text.contains("nothing was sent"), "{text}");
            }
        }
        // The same actions stay available on A5.
        assert!(Action::Restart.prepare(Target::Daly(Address::Rs485), Clock::from_unix(0)).is_ok());
    }

    #[test]
    fn the_modbus_acknowledgement_tells_an_echo_a_different_echo_and_an_exception_apart() {
        let sent = WriteAck { register: 0xA5, value: 0 };
        assert!(modbus_acknowledgement(sent, &Ok(sent)).starts_with("acknowledged"));
        let other = WriteAck { register: 0xA5, value: 1 };
        assert!(modbus_acknowledgement(sent, &Ok(other)).contains("differs"));
        let refused = Err(DecodeError::ModbusException { function: 6, code: 2 });
        assert_eq!(modbus_acknowledgement(sent, &refused), "refused (Modbus exception code 0x02)");
    }

    /// A fake board behind a link: the D2 simulator or a p81 register image, with a write echoed or not, obeyed
    /// or not.
    mod board {
        use std::time::Duration;

        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _, DuplexStream};

        use crate::model::DeviceSnapshot;
        use crate::protocol::daly_modbus::{
            Map, Registers, Request, decode_request, encode_read_reply, encode_write_reply, p81,
        };
        use crate::simulator::daly_modbus::DalyModbusBus;
        use crate::simulator::{Responder, Response};
        use crate::transport::Link;

        /// A p81 board's real-time registers (0x00–0x7F), its MOSFET state in 0x52/0x53.
        pub(super) struct P81Image {
            pub(super) map: Map,
            pub(super) image: Registers,
        }

        impl P81Image {
            pub(super) fn new(board: u8) -> Self {
                let mut image = Registers { start: 0, values: vec![0; 0x80] };
                for (register, value) in [(0, 3300), (1, 3301), (0x38, 66), (0x3C, 2), (0x52, 1), (0x53, 1)] {
                    image.set(register, value);
                }
                Self { map: Map::p81(board).unwrap(), image }
            }
        }

        impl Responder for P81Image {
            fn next_request(&mut self, pending: &mut Vec<u8>) -> Option<Vec<u8>> {
                let at =
                    (0..pending.len()).find(|&i| pending.get(i..i + 8).is_some_and(|f| decode_request(f).is_ok()))?;
                pending.drain(..at);
                Some(pending.drain(..8).collect())
            }

            fn respond(&mut self, request: &[u8]) -> Option<Response> {
                let (map, request) = decode_request(request).ok().filter(|(m, _)| *m == self.map)?;
                let reply = match request {
                    Request::Read { start, count } => {
                        let window = self.image.values.get(usize::from(start)..usize::from(start + count))?;
                        encode_read_reply(map, window)
                    }
                    Request::Write { register, value } => {
                        let state = match register {
                            p81::CHARGE_MOSFET_REGISTER => 0x52,
                            p81::DISCHARGE_MOSFET_REGISTER => 0x53,
                            _ => return None,
                        };
                        self.image.set(state, value);
                        encode_write_reply(map, register, value)
                    }
                };
                Some(Response { other: reply.clone(), reply })
            }

            fn step(&mut self, _dt_s: f64) {}

            fn truth(&self) -> DeviceSnapshot {
                DeviceSnapshot::default()
            }
        }

        /// `inner`, but a write is echoed only if `echo` and carried out only if `obey`.
        pub(super) struct Quirky<R> {
            pub(super) inner: R,
            pub(super) echo: bool,
            pub(super) obey: bool,
            pub(super) writes: usize,
        }

        impl<R: Responder> Quirky<R> {
            fn respond(&mut self, request: &[u8]) -> Option<Vec<u8>> {
                let Ok((map, Request::Write { register, value })) = decode_request(request) else {
                    return self.inner.respond(request).map(|r| r.reply);
                };
                self.writes += 1;
                let echo = if self.obey {
                    self.inner.respond(request)?.reply
                } else {
                    encode_write_reply(map, register, value)
                };
                self.echo.then_some(echo)
            }
        }

        /// Answer requests on `far` until the other end closes, then hand the board back.
        pub(super) async fn serve<R: Responder>(mut far: DuplexStream, mut board: Quirky<R>) -> Quirky<R> {
            let mut pending = Vec::new();
            let mut buf = [0u8; 256];
            while let Ok(n) = far.read(&mut buf).await {
                if n == 0 {
                    break;
                }
                pending.extend_from_slice(&buf[..n]);
                while let Some(request) = board.inner.next_request(&mut pending) {
                    if let Some(reply) = board.respond(&request) {
                        far.write_all(&reply).await.unwrap();
                    }
                }
            }
            board
        }

        /// A link to `board`, and the task serving it.
        pub(super) fn link<R: Responder + 'static>(board: Quirky<R>) -> (Link, tokio::task::JoinHandle<Quirky<R>>) {
            let (near, far) = tokio::io::duplex(1024);
            (Link::from_stream(near, "duplex"), tokio::spawn(serve(far, board)))
        }

        /// The D2 simulator with both MOSFETs on.
        pub(super) fn d2() -> DalyModbusBus {
            let mut bus = DalyModbusBus::new(8, 2, 5);
            bus.step(60.0);
            bus
        }

        /// Short timeouts: the fake answers at once, and a silent one should not slow the suite.
        pub(super) fn settings() -> crate::session::Settings {
            crate::session::Settings {
                timeout: Duration::from_millis(150),
                retries: 3,
                request_gap: Duration::ZERO,
                ..crate::session::Settings::default()
            }
        }
    }

    async fn send<R: Responder + 'static>(
        target: Target,
        action: Action,
        fake: board::Quirky<R>,
    ) -> (WriteOutcome, board::Quirky<R>) {
        let (mut link, task) = board::link(fake);
        let prepared = action.prepare(target, Clock::from_unix(0)).unwrap();
        let outcome = prepared.send(&mut link, action, DecodeOptions::default(), board::settings()).await.unwrap();
        drop(link);
        (outcome, task.await.unwrap())
    }

    #[tokio::test]
    async fn a_d2_write_is_sent_once_echoed_and_the_read_back_says_the_bms_obeyed() {
        let fake = board::Quirky { inner: board::d2(), echo: true, obey: true, writes: 0 };
        let (outcome, fake) = send(Target::DalyModbus(Map::D2), Action::ChargeMosfet(false), fake).await;
        assert_eq!(outcome.acknowledgement.as_deref(), Some("acknowledged (echo: register 0x00a5 = 0)"));
        assert!(outcome.obeyed, "{}", outcome.observed);
        assert_eq!(outcome.observed, "the charge MOSFET is off");
        assert_eq!((fake.writes, fake.inner.pack().mosfets()), (1, (false, true)));
        assert!(outcome.read_back.succeeded());
    }

    #[tokio::test]
    async fn the_read_back_decides_not_the_echo() {
        // Obeyed without an echo: sent once all the same (a write is never retried), and judged obeyed.
        let fake = board::Quirky { inner: board::d2(), echo: false, obey: true, writes: 0 };
        let (outcome, fake) = send(Target::DalyModbus(Map::D2), Action::DischargeMosfet(false), fake).await;
        assert_eq!(outcome.acknowledgement, None);
        assert!(outcome.obeyed, "{}", outcome.observed);
        assert_eq!((fake.writes, fake.inner.pack().mosfets()), (1, (true, false)));
        // Echoed and ignored: not obeyed.
        let fake = board::Quirky { inner: board::d2(), echo: true, obey: false, writes: 0 };
        let (outcome, fake) = send(Target::DalyModbus(Map::D2), Action::DischargeMosfet(false), fake).await;
        assert!(outcome.acknowledgement.is_some_and(|a| a.starts_with("acknowledged")));
        assert!(!outcome.obeyed);
        assert_eq!(outcome.observed, "the discharge MOSFET is on");
        assert_eq!((fake.writes, fake.inner.pack().mosfets()), (1, (true, true)));
    }

    #[tokio::test]
    async fn a_p81_write_reaches_its_board_and_is_read_back_from_the_high_window() {
        let fake = board::Quirky { inner: board::P81Image::new(3), echo: true, obey: true, writes: 0 };
        let target = Target::DalyModbus(Map::p81(3).unwrap());
        let (outcome, fake) = send(target, Action::DischargeMosfet(false), fake).await;
        assert_eq!(outcome.acknowledgement.as_deref(), Some("acknowledged (echo: register 0x0122 = 0)"));
        assert!(outcome.obeyed, "{}", outcome.observed);
        assert_eq!((fake.image_value(0x52), fake.image_value(0x53)), (1, 0));
        assert_eq!(outcome.read_back.device.packs[0].pack, 3);
    }

    #[tokio::test]
    async fn a_board_that_never_answers_did_not_obey() {
        // Board 3 is asked; only board 1 is on the line, so nothing answers the write or the read-back.
        let fake = board::Quirky { inner: board::P81Image::new(1), echo: true, obey: true, writes: 0 };
        let target = Target::DalyModbus(Map::p81(3).unwrap());
        let (outcome, fake) = send(target, Action::ChargeMosfet(false), fake).await;
        assert_eq!(outcome.acknowledgement, None);
        assert!(!outcome.obeyed);
        assert_eq!(outcome.observed, "the BMS did not answer the read-back");
        assert_eq!(fake.image_value(0x52), 1);
    }

    impl board::Quirky<board::P81Image> {
        fn image_value(&self, register: u16) -> u16 {
            self.inner.image.get(register).unwrap()
        }
    }
}
