//! Fault injection for the simulator: what can go wrong on a real line, each at a rate, decided by a seeded
//! generator so a test run is reproducible. Pure: it turns a clean reply into what the wire carries and says
//! how long to wait; the serving loop carries it out.

use std::fmt;
use std::str::FromStr;

use super::rng::Rng;

/// A kind of fault (`--fault KIND=RATE`, or `KIND:SECONDS=RATE` for `delay` and `silent`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum FaultKind {
    /// No reply at all.
    Drop,
    /// One byte of the reply changed, so its checksum fails.
    Corrupt,
    /// The reply cut short.
    Truncate,
    /// The reply sent after this many seconds, past any sensible timeout.
    Delay(f64),
    /// Random bytes before the reply.
    Garbage,
    /// The request looped back before the reply (a half-duplex adapter without echo suppression).
    Echo,
    /// A reply to another command instead of the one asked.
    WrongCommand,
    /// No reply to anything for this many seconds.
    Silent(f64),
    /// The connection closed (TCP) or hung up (PTY).
    Close,
}

impl FaultKind {
    /// Every kind's name, for help texts and errors.
    pub const NAMES: [&'static str; 9] =
        ["drop", "corrupt", "truncate", "delay", "garbage", "echo", "wrong_command", "silent", "close"];

    /// The kind's name.
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Self::Drop => "drop",
            Self::Corrupt => "corrupt",
            Self::Truncate => "truncate",
            Self::Delay(_) => "delay",
            Self::Garbage => "garbage",
            Self::Echo => "echo",
            Self::WrongCommand => "wrong_command",
            Self::Silent(_) => "silent",
            Self::Close => "close",
        }
    }
}

/// One `--fault` setting: a kind and the probability (0–1) that it hits a given request.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Fault {
    /// What happens.
    pub kind: FaultKind,
    /// Probability per request, 0–1.
    pub rate: f64,
}

/// Why a `--fault` value was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FaultParseError {
    /// No `=RATE` part.
    #[error("expected KIND=RATE (e.g. corrupt=0.1), got {0:?}")]
    Syntax(String),
    /// A kind that does not exist.
    #[error(
        "unknown fault kind {0:?}: expected one of drop, corrupt, truncate, delay, garbage, echo, wrong_command, silent, close"
    )]
    Kind(String),
    /// A rate outside 0–1 or not a number.
    #[error("fault rate {0:?} is not a number from 0 to 1")]
    Rate(String),
    /// A duration that is not a positive number of seconds.
    #[error("fault duration {0:?} is not a positive number of seconds")]
    Seconds(String),
}

impl FromStr for Fault {
    type Err = FaultParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (kind, rate) = s.split_once('=').ok_or_else(|| FaultParseError::Syntax(s.to_owned()))?;
        let rate_value: f64 = rate.trim().parse().map_err(|_| FaultParseError::Rate(rate.to_owned()))?;
        if !(0.0..=1.0).contains(&rate_value) {
            return Err(FaultParseError::Rate(rate.to_owned()));
        }
        let (name, seconds) = match kind.split_once(':') {
            Some((name, secs)) => {
                let value: f64 = secs.trim().parse().map_err(|_| FaultParseError::Seconds(secs.to_owned()))?;
                if !(value.is_finite() && value > 0.0) {
                    return Err(FaultParseError::Seconds(secs.to_owned()));
                }
                (name.trim(), Some(value))
            }
            None => (kind.trim(), None),
        };
        let kind = match (name, seconds) {
            ("drop", None) => FaultKind::Drop,
            ("corrupt", None) => FaultKind::Corrupt,
            ("truncate", None) => FaultKind::Truncate,
            ("delay", s) => FaultKind::Delay(s.unwrap_or(2.0)),
            ("garbage", None) => FaultKind::Garbage,
            ("echo", None) => FaultKind::Echo,
            ("wrong_command", None) => FaultKind::WrongCommand,
            ("silent", s) => FaultKind::Silent(s.unwrap_or(3.0)),
            ("close", None) => FaultKind::Close,
            _ => return Err(FaultParseError::Kind(kind.to_owned())),
        };
        Ok(Self { kind, rate: rate_value })
    }
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.kind {
            FaultKind::Delay(s) | FaultKind::Silent(s) => write!(f, "{}:{s}={}", self.kind.name(), self.rate),
            kind => write!(f, "{}={}", kind.name(), self.rate),
        }
    }
}

/// What the wire carries in answer to one request.
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    /// Bytes to send (possibly empty, corrupted, cut or padded).
    pub bytes: Vec<u8>,
    /// Extra seconds to wait before sending them.
    pub delay_s: f64,
    /// Seconds to stay silent after this request (answering nothing), 0 for none.
    pub silence_s: f64,
    /// Close the connection instead of answering.
    pub close: bool,
    /// The fault that was applied, if any.
    pub fault: Option<FaultKind>,
}

impl Outcome {
    /// The clean reply, untouched.
    #[must_use]
    pub fn clean(bytes: Vec<u8>) -> Self {
        Self { bytes, delay_s: 0.0, silence_s: 0.0, close: false, fault: None }
    }
}

/// The configured faults and the generator that decides when they strike.
#[derive(Debug, Clone)]
pub struct FaultPlan {
    faults: Vec<Fault>,
    rng: Rng,
}

impl FaultPlan {
    /// A plan with `faults`, deterministic under `seed`.
    #[must_use]
    pub fn new(faults: Vec<Fault>, seed: u64) -> Self {
        Self { faults, rng: Rng::new(seed ^ 0xFA17_FA17) }
    }

    /// Turn the clean `reply` to `request` into what the wire carries. At most one fault strikes per request
    /// (the first configured one whose dice roll hits). `other_reply` builds a reply to a different command
    /// for [`FaultKind::WrongCommand`].
    pub fn apply(&mut self, request: &[u8], reply: Vec<u8>, other_reply: impl FnOnce() -> Vec<u8>) -> Outcome {
        let hit = self.faults.iter().copied().find(|f| self.rng.chance(f.rate));
        let Some(Fault { kind, .. }) = hit else { return Outcome::clean(reply) };
        let mut out = Outcome { fault: Some(kind), ..Outcome::clean(Vec::new()) };
        match kind {
            FaultKind::Drop => {}
            FaultKind::Corrupt => {
                let mut bytes = reply;
                // Change a byte after the first, so the frame still starts right but fails its checksum.
                let len = bytes.len();
                if len > 1 {
                    let at = 1 + self.rng.below(len - 1);
                    if let Some(b) = bytes.get_mut(at) {
                        *b ^= 1 << self.rng.below(8);
                    }
                }
                out.bytes = bytes;
            }
            FaultKind::Truncate => {
                let mut bytes = reply;
                let keep = if bytes.len() > 1 { 1 + self.rng.below(bytes.len() - 1) } else { 0 };
                bytes.truncate(keep);
                out.bytes = bytes;
            }
            FaultKind::Delay(seconds) => {
                out.bytes = reply;
                out.delay_s = seconds;
            }
            FaultKind::Garbage => {
                let n = 1 + self.rng.below(8);
                // Garbage never contains the protocols' start bytes, or it could be mistaken for a frame start.
                out.bytes = (0..n).map(|_| (self.rng.next_u64() as u8) & 0x3F | 0x40).collect();
                out.bytes.extend(reply);
            }
            FaultKind::Echo => {
                out.bytes = request.to_vec();
                out.bytes.extend(reply);
            }
            FaultKind::WrongCommand => out.bytes = other_reply(),
            FaultKind::Silent(seconds) => out.silence_s = seconds,
            FaultKind::Close => out.close = true,
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(spec: &str) -> FaultPlan {
        FaultPlan::new(vec![spec.parse().unwrap()], 9)
    }

    #[test]
    fn fault_specs_parse_with_rates_and_optional_seconds() {
        assert_eq!("corrupt=0.25".parse(), Ok(Fault { kind: FaultKind::Corrupt, rate: 0.25 }));
        assert_eq!("silent:5=1".parse(), Ok(Fault { kind: FaultKind::Silent(5.0), rate: 1.0 }));
        assert_eq!("delay=0.5".parse(), Ok(Fault { kind: FaultKind::Delay(2.0), rate: 0.5 }));
        assert_eq!("corrupt:5=0.1".parse::<Fault>(), Err(FaultParseError::Kind("corrupt:5".into())));
        assert_eq!("corrupt=1.5".parse::<Fault>(), Err(FaultParseError::Rate("1.5".into())));
        assert_eq!("corrupt".parse::<Fault>(), Err(FaultParseError::Syntax("corrupt".into())));
        assert_eq!("melt=0.1".parse::<Fault>(), Err(FaultParseError::Kind("melt".into())));
        assert_eq!("silent:-1=0.1".parse::<Fault>(), Err(FaultParseError::Seconds("-1".into())));
        assert_eq!("silent:5=1".parse::<Fault>().unwrap().to_string(), "silent:5=1");
    }

    #[test]
    fn each_kind_changes_the_reply_as_named() {
        let req = [0xA5, 0x40, 0x90];
        let reply = vec![0xA5, 0x01, 0x90, 0x08, 1, 2, 3];
        let run = |spec: &str| plan(spec).apply(&req, reply.clone(), || vec![0xEE]);
        assert!(run("drop=1").bytes.is_empty());
        let corrupt = run("corrupt=1").bytes;
        assert_eq!(corrupt.len(), reply.len());
        assert_eq!(corrupt[0], 0xA5);
        assert_eq!(corrupt.iter().zip(&reply).filter(|(a, b)| a != b).count(), 1);
        let cut = run("truncate=1").bytes;
        assert!(!cut.is_empty() && cut.len() < reply.len() && reply.starts_with(&cut));
        assert_eq!(run("delay:4=1").delay_s, 4.0);
        let noisy = run("garbage=1").bytes;
        assert!(noisy.ends_with(&reply) && noisy.len() > reply.len());
        assert!(noisy[..noisy.len() - reply.len()].iter().all(|&b| b != 0xA5 && b != b'~'));
        assert_eq!(run("echo=1").bytes, [&req[..], &reply[..]].concat());
        assert_eq!(run("wrong_command=1").bytes, [0xEE]);
        assert_eq!(run("silent:2=1").silence_s, 2.0);
        assert!(run("close=1").close);
    }

    #[test]
    fn a_rate_of_zero_never_strikes_and_runs_repeat_under_a_seed() {
        let mut never = plan("corrupt=0");
        assert!((0..100).all(|_| never.apply(&[], vec![1, 2], Vec::new).fault.is_none()));
        let hits = |seed| {
            let mut p = FaultPlan::new(vec!["drop=0.3".parse().unwrap()], seed);
            (0..200).map(|_| p.apply(&[], vec![1], Vec::new).fault.is_some()).collect::<Vec<_>>()
        };
        assert_eq!(hits(1), hits(1));
        let n = hits(1).iter().filter(|&&h| h).count();
        assert!((35..85).contains(&n), "{n}");
    }
}
