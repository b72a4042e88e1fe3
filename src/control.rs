//! Write commands: switch a MOSFET, set the SOC, restart the board (Daly A5). Two callers only: the `set`
//! subcommand on its own link, and the opt-in MQTT control through the bus worker ([`crate::poller::BusHandle::write`]).
//! The HTTP side never imports this module and never asks a worker to write. Every write is followed by a
//! read-back, and the verdict says whether the BMS obeyed, because many boards acknowledge a command they then
//! ignore.

use std::time::Duration;

use anyhow::{Context as _, bail};

use crate::model::{PackSnapshot, Section, Sections};
use crate::poller::drive;
use crate::protocol::daly::Message;
use crate::protocol::daly::exchange::DalyExchange;
use crate::protocol::daly::{Address, Request, SetSoc};
use crate::protocol::to_hex;
use crate::session::{PollReport, Session, Settings};
use crate::transport::Link;

/// One write the `set` command can send.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Action {
    /// Switch the charge MOSFET on or off (0xDA).
    ChargeMosfet(bool),
    /// Switch the discharge MOSFET on or off (0xD9).
    DischargeMosfet(bool),
    /// Set the state of charge, in percent 0–100 (0x21, with the clock).
    Soc(f64),
    /// Restart the board (0x00).
    Restart,
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

/// Send `request` (already shown to and confirmed by the user, or logged by the bus worker) over `link`, wait,
/// read back and judge.
pub async fn apply(
    link: &mut Link,
    exchange: &mut DalyExchange,
    action: Action,
    request: Request,
    settings: Settings,
) -> anyhow::Result<WriteOutcome> {
    // A write is sent once: repeating a restart is not harmless, and the read-back tells the truth anyway.
    let write_settings = Settings { retries: 0, ..settings };
    exchange.begin_write(request);
    let mut session = Session::resume(exchange, write_settings, std::time::Instant::now());
    drive(link, &mut session).await.map_err(anyhow::Error::msg).context("sending the command")?;
    drop(session);
    let acknowledgement = exchange.replies().first().map(|reply| match &reply.message {
        Message::ChargeMosfet(echo) | Message::DischargeMosfet(echo) => {
            format!("acknowledged (MOSFET echo {})", if echo.mosfet_state_echo { "on" } else { "off" })
        }
        Message::SetSoc(ack) => format!("acknowledged (accepted = {})", ack.accepted),
        other => format!("answered with {:?}", other.command()),
    });
    tracing::debug!(request = %to_hex(&request.encode()), ?acknowledgement, "write sent");
    tokio::time::sleep(action.settle_time()).await;
    let mut session = Session::new(exchange, action.read_back(), settings, std::time::Instant::now());
    drive(link, &mut session).await.map_err(anyhow::Error::msg).context("reading back")?;
    let read_back = session.finish();
    let pack = read_back.device.packs.iter().find(|p| p.pack == request.address.reply_board());
    let (obeyed, observed) = action.verdict(pack);
    Ok(WriteOutcome { acknowledgement, obeyed, observed, read_back })
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
