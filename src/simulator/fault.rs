//! Fault injection for the simulator: what can go wrong on a real line, each at a rate, decided by a seeded
//! generator so a test run is reproducible. Pure: it turns a clean reply into what the wire carries and says
//! how long to wait; the serving loop carries it out. The two faults that must know a protocol's frame check
//! (`multibyte`, `gross`) ask the simulated bus through [`Tamper`].

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use super::Response;
use super::rng::Rng;

/// A kind of fault (`--fault KIND=RATE`, or `KIND:SECONDS=RATE` for `delay` and `silent`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum FaultKind {
    /// No reply at all.
    Drop,
    /// One byte of the reply changed, so its checksum fails.
    Corrupt,
    /// Line noise: a burst of 2–4 consecutive bytes of the reply changed. A burst that happens to leave every
    /// frame check passing is drawn again, so the reply always fails its check: a change no check can see is
    /// no reader's to find, and the checksum-passing case is [`FaultKind::Gross`]'s, on purpose.
    Multibyte,
    /// A value pushed far out of physical range inside frames that still pass their check: on a sum check
    /// (Daly A5) the top bits of one data byte raised and another byte lowered by the same amount; on a CRC
    /// (Daly Modbus-style, Sinowealth) or Pace's hex checksum, the check recomputed. Strikes only replies that
    /// carry such a value ([`Tamper::gross`]); other replies go out clean and count no fault.
    Gross,
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
    pub const NAMES: [&'static str; 11] = [
        "drop",
        "corrupt",
        "multibyte",
        "gross",
        "truncate",
        "delay",
        "garbage",
        "echo",
        "wrong_command",
        "silent",
        "close",
    ];

    /// The kind's name.
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Self::Drop => "drop",
            Self::Corrupt => "corrupt",
            Self::Multibyte => "multibyte",
            Self::Gross => "gross",
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
        "unknown fault kind {0:?}: expected one of drop, corrupt, multibyte, gross, truncate, delay, garbage, echo, wrong_command, silent, close"
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
            ("multibyte", None) => FaultKind::Multibyte,
            ("gross", None) => FaultKind::Gross,
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

/// What the faults that depend on a protocol's framing ask of the simulated bus.
pub trait Tamper {
    /// Whether every frame in `bytes`, the reply to `request` as the wire would carry it (possibly damaged), still
    /// passes the protocol's frame check (checksum, CRC, Pace's LCHKSUM and CHKSUM).
    fn passes_check(&self, request: &[u8], bytes: &[u8]) -> bool;

    /// `reply`, the clean reply to `request`, with one value that has a physical range (a cell or pack voltage, a
    /// current, the state of charge, a remaining capacity, a temperature) pushed far outside it while every frame
    /// still passes its check; `None` when the reply carries no such value.
    fn gross(&self, request: &[u8], reply: &[u8], rng: &mut Rng) -> Option<Vec<u8>>;
}

/// Draws of a `multibyte` burst before giving up on a reply whose check passes every time (never seen: a sum
/// check lets about one burst in 256 through, the CRCs far fewer).
const MULTIBYTE_DRAWS: usize = 64;

/// The configured faults, the generator that decides when they strike, and how often each kind has.
#[derive(Debug, Clone)]
pub struct FaultPlan {
    faults: Vec<Fault>,
    rng: Rng,
    counts: BTreeMap<&'static str, u64>,
}

impl FaultPlan {
    /// A plan with `faults`, deterministic under `seed`.
    #[must_use]
    pub fn new(faults: Vec<Fault>, seed: u64) -> Self {
        // Every configured kind is counted from 0, so a reader of the counts tells "never struck" from "not
        // configured".
        let counts = faults.iter().map(|f| (f.kind.name(), 0)).collect();
        Self { faults, rng: Rng::new(seed ^ 0xFA17_FA17), counts }
    }

    /// Faults injected so far, by kind name: every configured kind, 0 until it strikes.
    #[must_use]
    pub fn counts(&self) -> &BTreeMap<&'static str, u64> {
        &self.counts
    }

    /// Turn the clean reply of `response` to `request` into what the wire carries. At most one fault strikes per
    /// request (the first configured one whose dice roll hits); its `other` reply serves
    /// [`FaultKind::WrongCommand`], and `tamper` the faults that need the protocol's frame check. A fault that
    /// cannot apply to this reply (`gross` on a reply without a ranged value) leaves it clean and is not counted.
    pub fn apply<T: Tamper + ?Sized>(&mut self, request: &[u8], response: Response, tamper: &T) -> Outcome {
        let hit = self.faults.iter().copied().find(|f| self.rng.chance(f.rate));
        let Some(Fault { kind, .. }) = hit else { return Outcome::clean(response.reply) };
        let reply = response.reply;
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
            FaultKind::Multibyte => {
                let drawn = (0..MULTIBYTE_DRAWS)
                    .map(|_| burst(&reply, &mut self.rng))
                    .find(|bytes| !tamper.passes_check(request, bytes));
                let Some(bytes) = drawn else { return Outcome::clean(reply) };
                out.bytes = bytes;
            }
            FaultKind::Gross => match tamper.gross(request, &reply, &mut self.rng) {
                Some(bytes) => out.bytes = bytes,
                None => return Outcome::clean(reply),
            },
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
            FaultKind::WrongCommand => out.bytes = response.other,
            FaultKind::Silent(seconds) => out.silence_s = seconds,
            FaultKind::Close => out.close = true,
        }
        *self.counts.entry(kind.name()).or_insert(0) += 1;
        out
    }
}

/// `reply` with a burst of 2–4 consecutive bytes after the first each changed (XOR with a non-zero byte), as line
/// noise does; a reply too short for a burst of two is returned unchanged.
fn burst(reply: &[u8], rng: &mut Rng) -> Vec<u8> {
    let mut bytes = reply.to_vec();
    // Byte 0 stays, as for `corrupt`: the frame still starts right and it is the check that must catch the burst.
    let room = bytes.len().saturating_sub(1);
    if room < 2 {
        return bytes;
    }
    let len = (2 + rng.below(3)).min(room);
    let start = 1 + rng.below(room - len + 1);
    for b in bytes.iter_mut().skip(start).take(len) {
        *b ^= 1 + rng.below(255) as u8;
    }
    bytes
}

/// The byte `b` with its top three bits set, and by how much that raised it; `None` when they are all set
/// already (the byte cannot be raised that way). Setting them puts a value's most significant byte at 0xE0 or
/// more: 57.3 V for a millivolt cell, 5,734 V for a pack in 0.1 V, 184 °C for a byte offset by 40.
#[must_use]
pub fn raise_top_bits(b: u8) -> Option<(u8, u8)> {
    let raised = b | 0xE0;
    (raised != b).then(|| (raised, raised - b))
}

/// For checks that are recomputed after the change (CRCs, Pace): the most significant byte `b` of a value with
/// its top three bits set, or, for a negative two's-complement value (`signed` and the top bit set), cleared,
/// so that the value lands far from zero either way; `None` when neither changes the byte.
#[must_use]
pub fn push_msb_far(b: u8, signed: bool) -> Option<u8> {
    let pushed = if signed && b & 0x80 != 0 { b & 0x1F } else { b | 0xE0 };
    (pushed != b).then_some(pushed)
}

/// Apply a sum-preserving gross change to `frame`: raise byte `raise` by setting its top three bits and lower
/// byte `lower` by the same amount (wrapping), which leaves an 8-bit additive checksum unchanged. `None` when the
/// raised byte cannot be raised or an index is outside the frame.
#[must_use]
pub fn sum_preserving(frame: &[u8], raise: usize, lower: usize) -> Option<Vec<u8>> {
    let mut bytes = frame.to_vec();
    let (raised, delta) = raise_top_bits(*bytes.get(raise)?)?;
    let lowered = bytes.get(lower)?.wrapping_sub(delta);
    *bytes.get_mut(raise)? = raised;
    *bytes.get_mut(lower)? = lowered;
    Some(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A toy protocol: one frame whose last byte is the 8-bit sum of the others, value bytes 1–2 big-endian.
    struct SumFrame;

    fn sealed(mut body: Vec<u8>) -> Vec<u8> {
        body.push(body.iter().fold(0u8, |s, &b| s.wrapping_add(b)));
        body
    }

    impl Tamper for SumFrame {
        fn passes_check(&self, _request: &[u8], bytes: &[u8]) -> bool {
            match bytes.split_last() {
                Some((&sum, body)) => body.iter().fold(0u8, |s, &b| s.wrapping_add(b)) == sum,
                None => false,
            }
        }

        fn gross(&self, _request: &[u8], reply: &[u8], _rng: &mut Rng) -> Option<Vec<u8>> {
            sum_preserving(reply, 1, 2)
        }
    }

    fn plan(spec: &str) -> FaultPlan {
        FaultPlan::new(vec![spec.parse().unwrap()], 9)
    }

    fn response(reply: &[u8]) -> Response {
        Response { reply: reply.to_vec(), other: vec![0xEE] }
    }

    #[test]
    fn fault_specs_parse_with_rates_and_optional_seconds() {
        assert_eq!("corrupt=0.25".parse(), Ok(Fault { kind: FaultKind::Corrupt, rate: 0.25 }));
        assert_eq!("multibyte=0.05".parse(), Ok(Fault { kind: FaultKind::Multibyte, rate: 0.05 }));
        assert_eq!("gross=1".parse(), Ok(Fault { kind: FaultKind::Gross, rate: 1.0 }));
        assert_eq!("silent:5=1".parse(), Ok(Fault { kind: FaultKind::Silent(5.0), rate: 1.0 }));
        assert_eq!("delay=0.5".parse(), Ok(Fault { kind: FaultKind::Delay(2.0), rate: 0.5 }));
        assert_eq!("corrupt:5=0.1".parse::<Fault>(), Err(FaultParseError::Kind("corrupt:5".into())));
        assert_eq!("gross:5=0.1".parse::<Fault>(), Err(FaultParseError::Kind("gross:5".into())));
        assert_eq!("corrupt=1.5".parse::<Fault>(), Err(FaultParseError::Rate("1.5".into())));
        assert_eq!("corrupt".parse::<Fault>(), Err(FaultParseError::Syntax("corrupt".into())));
        assert_eq!("melt=0.1".parse::<Fault>(), Err(FaultParseError::Kind("melt".into())));
        assert_eq!("silent:-1=0.1".parse::<Fault>(), Err(FaultParseError::Seconds("-1".into())));
        assert_eq!("silent:5=1".parse::<Fault>().unwrap().to_string(), "silent:5=1");
        let message = "melt=0.1".parse::<Fault>().unwrap_err().to_string();
        for name in FaultKind::NAMES {
            assert!(message.contains(name), "the error lists {name}: {message}");
        }
    }

    #[test]
    fn each_kind_changes_the_reply_as_named() {
        let req = [0xA5, 0x40, 0x90];
        let reply = sealed(vec![0xA5, 0x01, 0x90, 0x08, 1, 2, 3]);
        let run = |spec: &str| plan(spec).apply(&req, response(&reply), &SumFrame);
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
        let gross = run("gross=1").bytes;
        assert!(SumFrame.passes_check(&req, &gross), "a gross reply keeps its sum: {gross:02x?}");
        assert_eq!(gross[1], 0x01 | 0xE0, "the value's high byte has its top bits raised");
        assert_eq!(gross[2], 0x90u8.wrapping_sub(0xE0), "and the byte after it is lowered as much");
    }

    #[test]
    fn a_multibyte_burst_is_two_to_four_adjacent_bytes_and_never_passes_the_check() {
        let reply = sealed((0..40).collect());
        let mut p = plan("multibyte=1");
        for _ in 0..500 {
            let out = p.apply(&[], response(&reply), &SumFrame);
            assert_eq!(out.fault, Some(FaultKind::Multibyte));
            let bytes = out.bytes;
            assert_eq!((bytes.len(), bytes[0]), (reply.len(), reply[0]));
            let changed: Vec<usize> = (0..reply.len()).filter(|&i| bytes[i] != reply[i]).collect();
            let (first, last) = (changed[0], changed[changed.len() - 1]);
            assert!((2..=4).contains(&(last - first + 1)) && changed.len() == last - first + 1, "{changed:?}");
            assert!(!SumFrame.passes_check(&[], &bytes), "a burst the sum cannot see was sent: {bytes:02x?}");
        }
        assert_eq!(p.counts().get("multibyte"), Some(&500));
    }

    #[test]
    fn faults_are_counted_by_kind_and_one_that_cannot_apply_is_not() {
        let faults = ["gross=0.3", "drop=0.3"].iter().map(|s| s.parse().unwrap()).collect();
        let mut p = FaultPlan::new(faults, 4);
        assert_eq!(p.counts().iter().map(|(k, v)| (*k, *v)).collect::<Vec<_>>(), [("drop", 0), ("gross", 0)]);
        let reply = sealed(vec![0xA5, 0x01, 0x90]);
        let (mut gross, mut drops) = (0, 0);
        for _ in 0..200 {
            match p.apply(&[], response(&reply), &SumFrame).fault {
                Some(FaultKind::Gross) => gross += 1,
                Some(FaultKind::Drop) => drops += 1,
                _ => {}
            }
        }
        assert!(gross > 0 && drops > 0);
        assert_eq!(p.counts()["gross"], gross);
        assert_eq!(p.counts()["drop"], drops);
        // A reply whose value byte is already at the top cannot be pushed further: sent clean, not counted.
        let mut only = plan("gross=1");
        let out = only.apply(&[], response(&sealed(vec![0xA5, 0xFF, 0x00])), &SumFrame);
        assert_eq!(out.fault, None);
        assert_eq!(only.counts()["gross"], 0);
    }

    #[test]
    fn raising_top_bits_keeps_a_sum_and_pushing_lands_far_from_zero() {
        assert_eq!(raise_top_bits(0x0C), Some((0xEC, 0xE0)));
        assert_eq!(raise_top_bits(0x76), Some((0xF6, 0x80)));
        assert_eq!(raise_top_bits(0xE3), None);
        let frame = [0xA5, 0x0C, 0xE4, 0x00];
        let gross = sum_preserving(&frame, 1, 2).unwrap();
        let sum = |f: &[u8]| f.iter().fold(0u8, |s, &b| s.wrapping_add(b));
        assert_eq!(sum(&gross), sum(&frame));
        assert_eq!(u16::from_be_bytes([gross[1], gross[2]]), 0xEC04);
        assert_eq!(sum_preserving(&frame, 1, 9), None);
        assert_eq!(push_msb_far(0x00, true), Some(0xE0));
        assert_eq!(push_msb_far(0xFF, true), Some(0x1F));
        assert_eq!(push_msb_far(0xFF, false), None);
    }

    #[test]
    fn a_rate_of_zero_never_strikes_and_runs_repeat_under_a_seed() {
        let mut never = plan("corrupt=0");
        assert!((0..100).all(|_| never.apply(&[], response(&[1, 2]), &SumFrame).fault.is_none()));
        let hits = |seed| {
            let mut p = FaultPlan::new(vec!["drop=0.3".parse().unwrap()], seed);
            (0..200).map(|_| p.apply(&[], response(&[1]), &SumFrame).fault.is_some()).collect::<Vec<_>>()
        };
        assert_eq!(hits(1), hits(1));
        let n = hits(1).iter().filter(|&&h| h).count();
        assert!((35..85).contains(&n), "{n}");
    }
}
