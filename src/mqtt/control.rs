//! Opt-in MQTT control: the command topics of the Daly MOSFET switches
//! (`<topic_prefix>/<device>/<NN>/<charge_mosfet|discharge_mosfet>/set`, payload `ON` or `OFF`), checked strictly
//! and run through the device's bus worker on the guarded write path (frame logged, sent once, read back,
//! verdict). What is published afterwards is what the BMS reports, never what was asked.
//!
//! Payload rule: exactly `ON` or `OFF`, byte for byte. Home Assistant sends exactly the `payload_on` /
//! `payload_off` of the switch's discovery config, so anything else (`on`, `ON\n`, ` OFF`, `1`, `true`, empty)
//! comes from somewhere else and switching a battery on a guess is not worth the convenience: it is refused.

use std::fmt;

use super::{DeviceView, Message};
use crate::config::mqtt::MqttConfig;
use crate::control::Action;
use crate::poller::WriteError;
use crate::protocol::Protocol;
use crate::scrape::{Scraper, unix_now};

/// The payload that switches a MOSFET on.
pub const PAYLOAD_ON: &str = "ON";
/// The payload that switches a MOSFET off.
pub const PAYLOAD_OFF: &str = "OFF";

/// The longest part of a refused payload quoted in the log: a payload is untrusted and may be large.
const PAYLOAD_QUOTE_BYTES: usize = 32;

/// The subscription filter of the command topics, when control is on (`None` when it is off).
#[must_use]
pub fn command_filter(config: &MqttConfig) -> Option<String> {
    config.control.then(|| format!("{}/+/+/+/set", config.topic_prefix))
}

/// A switch that a command topic can name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Switch {
    /// The charge MOSFET (Daly 0xDA).
    ChargeMosfet,
    /// The discharge MOSFET (Daly 0xD9).
    DischargeMosfet,
}

impl Switch {
    /// The topic level that names it.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ChargeMosfet => "charge_mosfet",
            Self::DischargeMosfet => "discharge_mosfet",
        }
    }

    /// The switch a topic level names, if any.
    #[must_use]
    pub fn from_level(level: &str) -> Option<Self> {
        match level {
            "charge_mosfet" => Some(Self::ChargeMosfet),
            "discharge_mosfet" => Some(Self::DischargeMosfet),
            _ => None,
        }
    }

    /// The write that sets it `on` or off.
    #[must_use]
    pub fn action(self, on: bool) -> Action {
        match self {
            Self::ChargeMosfet => Action::ChargeMosfet(on),
            Self::DischargeMosfet => Action::DischargeMosfet(on),
        }
    }
}

/// A command topic, taken apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CommandTopic<'a> {
    /// The device name level.
    pub device: &'a str,
    /// The pack number (from its two-digit level).
    pub pack: u8,
    /// The switch.
    pub switch: Switch,
}

/// Why a command was refused; no write was sent for it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// `mqtt.control` is off (the topics should not even be subscribed).
    #[error("control is off (mqtt.control is false)")]
    ControlOff,
    /// The topic is not `<topic_prefix>/<device>/<NN>/<switch>/set`.
    #[error("not a command topic: expected <topic_prefix>/<device>/<NN>/<charge_mosfet|discharge_mosfet>/set")]
    NotACommand,
    /// The switch level names no switch.
    #[error("unknown switch {0:?}: expected charge_mosfet or discharge_mosfet")]
    UnknownSwitch(String),
    /// The pack level is not two digits.
    #[error("pack {0:?} is not a two-digit pack number such as 01")]
    BadPack(String),
    /// The payload is not exactly `ON` or `OFF`; the text is the quoted payload.
    #[error("payload {0} is neither ON nor OFF (exactly, in capitals)")]
    BadPayload(String),
    /// No configured device has this name.
    #[error("no configured device is called {0:?}")]
    UnknownDevice(String),
    /// The device is not a Daly A5 device.
    #[error("{device} speaks {protocol}; only Daly A5 devices (protocol daly) take commands")]
    NotDaly {
        /// The device's name.
        device: String,
        /// The protocol it speaks.
        protocol: Protocol,
    },
    /// None of the device's boards serves the pack.
    #[error("{device} has no pack {pack:02} (its boards serve {served})")]
    NoSuchPack {
        /// The device's name.
        device: String,
        /// The pack asked for.
        pack: u8,
        /// The packs it has, as a list for the log.
        served: String,
    },
    /// The bus worker refused the write (its own checks, which mirror these).
    #[error("{0}")]
    Worker(String),
}

/// What became of one command: the `result` label a command counter would carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Refused before anything was sent.
    Refused,
    /// The same command for the same pack was still queued or running: dropped unsent.
    Duplicate,
    /// Sent, and the read-back shows the asked state.
    Obeyed,
    /// Sent, but the read-back does not show the asked state (or the BMS did not answer the read-back).
    IgnoredByBms,
    /// The link failed while sending or reading back: whether the BMS took it is unknown.
    Failed,
}

impl Outcome {
    /// Every outcome, in the order of the counter's label values.
    pub const ALL: [Self; 5] = [Self::Refused, Self::Duplicate, Self::Obeyed, Self::IgnoredByBms, Self::Failed];

    /// The label value: `refused`, `duplicate`, `obeyed`, `ignored_by_bms` or `failed`.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Refused => "refused",
            Self::Duplicate => "duplicate",
            Self::Obeyed => "obeyed",
            Self::IgnoredByBms => "ignored_by_bms",
            Self::Failed => "failed",
        }
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One handled command: what became of it, and the messages to publish at once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Handled {
    /// What became of it.
    pub outcome: Outcome,
    /// The device's state messages after a write that ran (empty otherwise).
    pub messages: Vec<Message>,
}

/// A command that passed every check: which target, which pack, which write.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Accepted {
    /// The target's index in [`Scraper::targets`].
    pub target: usize,
    /// The pack.
    pub pack: u8,
    /// The write.
    pub action: Action,
}

/// Take a command topic apart: `<prefix>/<device>/<NN>/<switch>/set`, NN exactly two digits.
pub fn parse_topic<'a>(prefix: &str, topic: &'a str) -> Result<CommandTopic<'a>, Refusal> {
    let rest = topic.strip_prefix(prefix).and_then(|r| r.strip_prefix('/')).ok_or(Refusal::NotACommand)?;
    let levels: Vec<&str> = rest.split('/').collect();
    let [device, pack, switch, "set"] = levels.as_slice() else { return Err(Refusal::NotACommand) };
    if device.is_empty() {
        return Err(Refusal::NotACommand);
    }
    let switch = Switch::from_level(switch).ok_or_else(|| Refusal::UnknownSwitch((*switch).to_owned()))?;
    // Exactly the zero-padded form the state and discovery topics use: `1` or `001` is not ours.
    let pack = match pack.as_bytes() {
        [tens @ b'0'..=b'9', ones @ b'0'..=b'9'] => (tens - b'0') * 10 + (ones - b'0'),
        _ => return Err(Refusal::BadPack((*pack).to_owned())),
    };
    Ok(CommandTopic { device, pack, switch })
}

/// `true` for exactly `ON`, `false` for exactly `OFF`; anything else is refused (see the module documentation).
pub fn parse_payload(payload: &[u8]) -> Result<bool, Refusal> {
    match payload {
        b"ON" => Ok(true),
        b"OFF" => Ok(false),
        other => Err(Refusal::BadPayload(quote(other))),
    }
}

/// A payload quoted for a log line: at most [`PAYLOAD_QUOTE_BYTES`], escaped, with its length when cut.
fn quote(payload: &[u8]) -> String {
    let shown = payload.get(..PAYLOAD_QUOTE_BYTES).unwrap_or(payload);
    let text = format!("{:?}", String::from_utf8_lossy(shown));
    if shown.len() < payload.len() { format!("{text}… ({} bytes)", payload.len()) } else { text }
}

/// Every check a command must pass before a write is queued: control on, a command topic, an `ON`/`OFF`
/// payload, a configured Daly A5 device, a pack one of its boards serves.
pub fn check(config: &MqttConfig, scraper: &Scraper, topic: &str, payload: &[u8]) -> Result<Accepted, Refusal> {
    if !config.control {
        return Err(Refusal::ControlOff);
    }
    let command = parse_topic(&config.topic_prefix, topic)?;
    let on = parse_payload(payload)?;
    let index = scraper.find(command.device).ok_or_else(|| Refusal::UnknownDevice(command.device.to_owned()))?;
    let target = scraper.targets().get(index).ok_or_else(|| Refusal::UnknownDevice(command.device.to_owned()))?;
    if target.protocol != Protocol::Daly {
        return Err(Refusal::NotDaly { device: target.name.clone(), protocol: target.protocol });
    }
    let served = target.bus.writable_packs(target.index);
    if !served.contains(&command.pack) {
        let served = served.iter().map(|p| format!("{p:02}")).collect::<Vec<_>>().join(", ");
        return Err(Refusal::NoSuchPack { device: target.name.clone(), pack: command.pack, served });
    }
    Ok(Accepted { target: index, pack: command.pack, action: command.switch.action(on) })
}

/// Handle one message on a command topic: refuse it with a log line, or run the guarded write through the
/// device's bus worker. Returns what became of it (for `bms_mqtt_commands_total`) and the messages to publish at
/// once (the device's new state), if any.
pub async fn run(config: &MqttConfig, scraper: &Scraper, topic: &str, payload: &[u8]) -> Handled {
    let refused = |reason: &dyn fmt::Display| {
        tracing::warn!(topic, reason = %reason, "MQTT command refused; nothing was sent");
        Handled { outcome: Outcome::Refused, messages: Vec::new() }
    };
    let accepted = match check(config, scraper, topic, payload) {
        Ok(accepted) => accepted,
        Err(refusal) => return refused(&refusal),
    };
    let Some(target) = scraper.targets().get(accepted.target) else {
        return refused(&Refusal::NotACommand);
    };
    let Accepted { pack, action, .. } = accepted;
    let written = match target.bus.write(target.index, pack, action).await {
        Ok(written) => written,
        Err(WriteError::Duplicate) => {
            tracing::info!(topic, action = %action.describe(), "MQTT command ignored: the same command is still running");
            return Handled { outcome: Outcome::Duplicate, messages: Vec::new() };
        }
        Err(
            error @ (WriteError::NoDevice(_)
            | WriteError::NotDaly { .. }
            | WriteError::NoSuchPack { .. }
            | WriteError::Invalid(_)),
        ) => return refused(&Refusal::Worker(error.to_string())),
        Err(error @ (WriteError::Gone | WriteError::Failed(_))) => {
            tracing::warn!(topic, action = %action.describe(), %error, "MQTT command failed; the BMS state is unknown");
            return Handled { outcome: Outcome::Failed, messages: Vec::new() };
        }
    };
    let outcome = &written.outcome;
    let acknowledgement = outcome.acknowledgement.as_deref().unwrap_or("no acknowledgement");
    let verdict = if outcome.obeyed {
        tracing::info!(
            topic, device = %target.name, pack, action = %action.describe(), acknowledgement,
            read_back = %outcome.observed, "MQTT command obeyed"
        );
        Outcome::Obeyed
    } else {
        tracing::warn!(
            topic, device = %target.name, pack, action = %action.describe(), acknowledgement,
            read_back = %outcome.observed, "the BMS did NOT obey the MQTT command"
        );
        Outcome::IgnoredByBms
    };
    // The state after the read-back, built as a publish would build it: what the BMS reports now.
    let status = &written.status;
    let now = unix_now();
    let fresh = scraper.is_fresh(status, now);
    let values = status.values.view(now, scraper.freshness().stale_after.as_secs_f64());
    let view = DeviceView {
        name: &target.name,
        protocol: target.protocol,
        up: fresh && status.last.succeeded(),
        values: &values,
        energy: status.energy.packs(),
    };
    Handled { outcome: verdict, messages: super::state(config, &view) }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::config::mqtt::{Broker, Layout};
    use crate::model::{CurrentSign, Sections};
    use crate::poller::{BusSpec, DeviceSpec};
    use crate::protocol::DecodeOptions;
    use crate::protocol::daly::exchange::DalyExchange;
    use crate::protocol::daly::{Address, Filler};
    use crate::protocol::pace::exchange::{PaceExchange, PackSelection};
    use crate::scrape::Freshness;
    use crate::session::Settings;
    use crate::transport::{TcpSettings, TransportSettings};

    fn config(control: bool) -> MqttConfig {
        MqttConfig {
            topic_prefix: "home/bms".to_owned(),
            control,
            ..MqttConfig::with_defaults(
                Broker { tls: false, host: "127.0.0.1".to_owned(), port: 1883 },
                "test",
                Layout::Native,
            )
        }
    }

    /// A TCP bus nobody listens on: refusals must never reach it, and the workers only connect when asked.
    fn nowhere() -> TransportSettings {
        TransportSettings::Tcp(TcpSettings { address: "127.0.0.1:9".to_owned(), connect_timeout: Duration::ZERO })
    }

    /// `house`: a Daly device with boards 1 and 2; `rack`: a Pace master.
    fn scraper() -> Scraper {
        let options = DecodeOptions { current_sign: CurrentSign::Auto, ..DecodeOptions::default() };
        let daly = DalyExchange::new(vec![Address::Board(1), Address::Board(2)], Filler::Zero, options);
        let pace = PaceExchange::new(1, PackSelection::All, crate::protocol::pace::VER_PACE);
        let bus = |name: &str, exchange: Box<dyn crate::protocol::Exchange>| BusSpec {
            transport: nowhere(),
            settings: Settings::default(),
            stale_after: Duration::from_secs(60),
            devices: vec![DeviceSpec { name: name.to_owned(), exchange, sections: Sections::all() }],
        };
        let freshness = Freshness { max_age: Duration::from_secs(5), stale_after: Duration::from_secs(60) };
        Scraper::spawn(vec![bus("house", Box::new(daly)), bus("rack", Box::new(pace))], freshness)
    }

    #[test]
    fn the_filter_exists_only_with_control_on() {
        assert_eq!(command_filter(&config(true)).as_deref(), Some("home/bms/+/+/+/set"));
        assert_eq!(command_filter(&config(false)), None);
    }

    #[test]
    fn command_topics_are_taken_apart_exactly() {
        let parsed = parse_topic("home/bms", "home/bms/house/02/discharge_mosfet/set").unwrap();
        assert_eq!(parsed, CommandTopic { device: "house", pack: 2, switch: Switch::DischargeMosfet });
        let parsed = parse_topic("home/bms", "home/bms/house/16/charge_mosfet/set").unwrap();
        assert_eq!((parsed.pack, parsed.switch.action(false)), (16, Action::ChargeMosfet(false)));

        for topic in [
            "other/house/01/charge_mosfet/set",
            "home/bmsx/house/01/charge_mosfet/set",
            "home/bms/house/01/charge_mosfet",
            "home/bms/house/01/charge_mosfet/get",
            "home/bms/house/01/charge_mosfet/set/x",
            "home/bms//01/charge_mosfet/set",
            "home/bms/01/charge_mosfet/set",
            "home/bms/house/01/charge_mosfet/set/",
        ] {
            assert_eq!(parse_topic("home/bms", topic), Err(Refusal::NotACommand), "{topic}");
        }
        assert_eq!(
            parse_topic("home/bms", "home/bms/house/01/balancing/set"),
            Err(Refusal::UnknownSwitch("balancing".to_owned()))
        );
        for pack in ["1", "001", "0x", "+1", "", "１２"] {
            let topic = format!("home/bms/house/{pack}/charge_mosfet/set");
            assert_eq!(parse_topic("home/bms", &topic), Err(Refusal::BadPack(pack.to_owned())), "{topic}");
        }
    }

    #[test]
    fn only_exactly_on_and_off_are_payloads() {
        assert_eq!(parse_payload(b"ON"), Ok(true));
        assert_eq!(parse_payload(b"OFF"), Ok(false));
        for bad in [&b""[..], b"on", b"off", b"On", b"ON\n", b" OFF", b"1", b"0", b"true", b"{\"state\":\"ON\"}"] {
            assert!(matches!(parse_payload(bad), Err(Refusal::BadPayload(_))), "{bad:?}");
        }
        assert_eq!(
            parse_payload(b"").unwrap_err().to_string(),
            "payload \"\" is neither ON nor OFF (exactly, in capitals)"
        );
        // A large or binary payload is quoted short and escaped.
        let big = vec![0xFF; 10_000];
        let Err(Refusal::BadPayload(quoted)) = parse_payload(&big) else { panic!("refused") };
        assert!(quoted.len() < 200 && quoted.ends_with("(10000 bytes)"), "{quoted}");
    }

    #[tokio::test]
    async fn every_refusal_names_its_reason_and_the_accepted_command_is_the_write() {
        let scraper = scraper();
        let on = config(true);
        let check = |config: &MqttConfig, topic: &str, payload: &[u8]| check(config, &scraper, topic, payload);

        assert_eq!(
            check(&on, "home/bms/house/02/charge_mosfet/set", b"OFF"),
            Ok(Accepted { target: 0, pack: 2, action: Action::ChargeMosfet(false) })
        );
        assert_eq!(
            check(&on, "home/bms/house/01/discharge_mosfet/set", b"ON"),
            Ok(Accepted { target: 0, pack: 1, action: Action::DischargeMosfet(true) })
        );
        assert_eq!(check(&config(false), "home/bms/house/01/charge_mosfet/set", b"OFF"), Err(Refusal::ControlOff));
        assert_eq!(
            check(&on, "home/bms/garage/01/charge_mosfet/set", b"OFF"),
            Err(Refusal::UnknownDevice("garage".to_owned()))
        );
        assert_eq!(
            check(&on, "home/bms/rack/01/charge_mosfet/set", b"OFF"),
            Err(Refusal::NotDaly { device: "rack".to_owned(), protocol: Protocol::Pace })
        );
        let no_pack = check(&on, "home/bms/house/03/charge_mosfet/set", b"OFF").unwrap_err();
        assert_eq!(no_pack.to_string(), "house has no pack 03 (its boards serve 01, 02)");
        assert!(matches!(check(&on, "home/bms/house/00/charge_mosfet/set", b"OFF"), Err(Refusal::NoSuchPack { .. })));
        assert!(matches!(check(&on, "home/bms/house/01/charge_mosfet/set", b"off"), Err(Refusal::BadPayload(_))));
        assert!(matches!(check(&on, "home/bms/house/01/fan/set", b"OFF"), Err(Refusal::UnknownSwitch(_))));
    }

    #[tokio::test]
    async fn a_refused_command_publishes_nothing_and_never_reaches_the_bus() {
        let scraper = scraper();
        for (config, topic, payload) in [
            (config(false), "home/bms/house/01/charge_mosfet/set", &b"OFF"[..]),
            (config(true), "home/bms/house/01/charge_mosfet/set", b""),
            (config(true), "home/bms/rack/01/charge_mosfet/set", b"OFF"),
            (config(true), "home/bms/house/09/charge_mosfet/set", b"OFF"),
        ] {
            let handled = run(&config, &scraper, topic, payload).await;
            assert_eq!(handled, Handled { outcome: Outcome::Refused, messages: Vec::new() }, "{topic}");
        }
        // No write and no poll ran: neither worker has a status.
        assert!(scraper.targets().iter().all(|t| t.bus.latest(t.index).is_none()));
    }

    #[test]
    fn outcome_labels_are_the_counter_values() {
        let labels = Outcome::ALL.map(Outcome::as_str);
        assert_eq!(labels, ["refused", "duplicate", "obeyed", "ignored_by_bms", "failed"]);
        assert_eq!(labels, crate::metrics::names::MQTT_COMMAND_RESULTS);
    }
}
