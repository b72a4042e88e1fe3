//! The Pace BMS protocol (`docs/protocols/pace.md`): hex-ASCII frames with LCHKSUM/CHKSUM, the read requests, the
//! 0x42/0x44/0xC1/0xC2/0xA6/0x90/0xB1 replies (VER 0x25, and the Pylon 0x20 analog layout where it fits), their
//! encoders, and the capture decoder used by `bms_exporter decode --protocol pace`.
//!
//! Layout: [`frame`] envelope and stream framing, [`request`] requests, `layout` block splitting, [`analog`]
//! 0x42, [`status`] 0x44, [`info`] the small reads, [`apply`] replies → model. Pure code: no I/O, no clock.

pub mod analog;
pub mod apply;
pub mod exchange;
pub mod frame;
pub mod info;
mod layout;
pub mod request;
pub mod status;

use serde::Serialize;

pub use analog::{AnalogPack, AnalogReply, PackBlock, Reported, encode_analog, pace_tail};
pub use frame::{Frame, Header, PaceFraming, chksum, encode_frame, lchksum, parse_frame, parse_reply_frame};
pub use info::{
    CapacityReply, DateTime, DateTimeReply, PackCountReply, ProductInfoReply, VersionReply, encode_capacity,
    encode_date_time, encode_pack_count, encode_product_info, encode_version,
};
pub use request::{ALL_PACKS, CID1_BATTERY, Command, MAX_PACK, Request, VER_PACE, VER_PYLON};
pub use status::{StatusBlock, StatusPack, StatusReply, encode_status};

use super::deframer::{Deframer, Event};
use super::plausible::{self, CURRENT_MAX_AMPERES, PACK_VOLTS_MAX, STATE_OF_HEALTH_MAX_RATIO};
use super::{Capture, DecodeError, DecodeOptions, Protocol, parse_hex};
use crate::model::{CurrentSign, DeviceSnapshot};

/// CID1 of EG4's 0x20 variant, whose INFO layouts this decoder does not read
/// (`docs/protocols/pace.md#ver-0x20-pylon`).
const CID1_EG4: u8 = 0x4A;

/// Which INFO layout a reply uses: chosen from the request's VER when known, else from the reply's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Variant {
    /// VER 0x25 (and any other VER): the Pace layout.
    Pace,
    /// VER 0x20: the Pylon layout (offset 2731, 100 mA, mAh, no design capacity).
    Pylon,
}

impl Variant {
    /// The variant a VER byte selects.
    #[must_use]
    pub fn from_ver(ver: u8) -> Self {
        if ver == VER_PYLON { Self::Pylon } else { Self::Pace }
    }
}

/// A decoded Pace reply; `command` names which read it answers.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "command", rename_all = "snake_case")]
pub enum Reply {
    /// 0x42.
    Analog(AnalogReply),
    /// 0x44.
    Status(StatusReply),
    /// 0xC1.
    SoftwareVersion(VersionReply),
    /// 0xC2.
    ProductInfo(ProductInfoReply),
    /// 0xA6.
    PackCapacity(CapacityReply),
    /// 0x90.
    PackCount(PackCountReply),
    /// 0xB1.
    DateTime(DateTimeReply),
}

impl Reply {
    /// The reply's frame header.
    #[must_use]
    pub fn header(&self) -> Header {
        match self {
            Self::Analog(r) => r.header,
            Self::Status(r) => r.header,
            Self::SoftwareVersion(r) => r.header,
            Self::ProductInfo(r) => r.header,
            Self::PackCapacity(r) => r.header,
            Self::PackCount(r) => r.header,
            Self::DateTime(r) => r.header,
        }
    }

    /// The reply as a frame again (the simulator's encoder for decoded or hand-built replies).
    pub fn encode(&self) -> Result<Vec<u8>, DecodeError> {
        match self {
            Self::Analog(r) => {
                let blocks: Vec<PackBlock> = r.packs.iter().map(|p| p.block.clone()).collect();
                encode_analog(r.header, r.info_flag, r.count_or_command, &blocks)
            }
            Self::Status(r) => {
                let blocks: Vec<StatusBlock> = r.packs.iter().map(|p| p.block.clone()).collect();
                encode_status(r.header, r.info_flag, r.count_or_command, &blocks)
            }
            Self::SoftwareVersion(VersionReply { header, info_hex, .. })
            | Self::ProductInfo(ProductInfoReply { header, info_hex, .. }) => {
                encode_frame(*header, &parse_hex(info_hex)?)
            }
            Self::PackCapacity(r) => encode_capacity(r.header, r.remaining_ah, r.full_ah, r.design_ah),
            Self::PackCount(r) => encode_pack_count(r.header, r.pack_count),
            Self::DateTime(r) => encode_date_time(r.header, r.date_time),
        }
    }
}

/// Encode a reply that carries only a non-zero RTN (how a BMS refuses a request,
/// `docs/protocols/pace.md#return-codes`).
pub fn encode_error_reply(ver: u8, adr: u8, cid1: u8, rtn: u8) -> Result<Vec<u8>, DecodeError> {
    encode_frame(Header { ver, adr, cid1, code: rtn }, &[])
}

/// Decode one complete reply frame, as the answer to `request` when known (else the command is inferred from
/// the INFO shape, see [`infer`]).
pub fn decode_reply(bytes: &[u8], request: Option<&Request>) -> Result<Reply, DecodeError> {
    decode_for(bytes, request.map(|r| r.command), request.map(|r| r.ver))
}

/// Decode a reply to `command` (inferred when `None`), in the variant `request_ver` selects (else the reply's).
fn decode_for(bytes: &[u8], command: Option<Command>, request_ver: Option<u8>) -> Result<Reply, DecodeError> {
    let frame = parse_reply_frame(bytes)?;
    let variant = Variant::from_ver(request_ver.unwrap_or(frame.header.ver));
    if variant == Variant::Pylon && frame.header.cid1 == CID1_EG4 {
        return Err(DecodeError::UnsupportedVersion {
            version: frame.header.ver,
            why: "EG4 layout (CID1 0x4A) is not the Pylon one",
        });
    }
    match command {
        Some(command) => decode_as(&frame, command, variant),
        None => infer(&frame, variant),
    }
}

/// Decode `frame` as the reply to `command`.
pub fn decode_as(frame: &Frame, command: Command, variant: Variant) -> Result<Reply, DecodeError> {
    Ok(match command {
        Command::Analog(c) => Reply::Analog(analog::decode_analog(frame, c == ALL_PACKS, variant)?),
        Command::Status(_) if variant == Variant::Pylon => {
            return Err(DecodeError::UnsupportedVersion {
                version: frame.header.ver,
                why: "the 0x20 status bytes (Pylon/Seplos/EG4) differ from Pace's",
            });
        }
        Command::Status(c) => Reply::Status(status::decode_status(frame, c == ALL_PACKS)?),
        Command::SoftwareVersion => Reply::SoftwareVersion(info::decode_version(frame)),
        Command::ProductInfo => Reply::ProductInfo(info::decode_product_info(frame)),
        Command::PackCapacity => Reply::PackCapacity(info::decode_capacity(frame)?),
        Command::PackCount => Reply::PackCount(info::decode_pack_count(frame)?),
        Command::DateTime => Reply::DateTime(info::decode_date_time(frame)?),
    })
}

/// Guess which read `frame` answers from its INFO alone; only partly possible, so the rules are heuristics:
/// 1 byte → 0x90; 6 bytes → 0xB1 if they form a valid date/time, else 0xA6; 20 or 40 bytes of text → 0xC1 if the
/// first field holds `-` or `.` (version strings such as `P16S100A-1812-1.00`), else 0xC2 (serials); anything else
/// → 0x42 then 0x44, each first as an all-packs reply (second byte = block count) and then as a one-pack reply.
pub fn infer(frame: &Frame, variant: Variant) -> Result<Reply, DecodeError> {
    let info = frame.info.as_slice();
    let is_text = info.iter().all(|&b| b == 0 || (0x20..0x7F).contains(&b));
    match info.len() {
        0 => Err(DecodeError::Implausible { why: "empty INFO: the command it answers is unknown without the request" }),
        1 => decode_as(frame, Command::PackCount, variant),
        6 => match info::decode_date_time(frame) {
            Ok(reply) if reply.date_time.is_valid() => Ok(Reply::DateTime(reply)),
            _ => decode_as(frame, Command::PackCapacity, variant),
        },
        20 | 40 if is_text => {
            let first = info.get(..20).unwrap_or_default();
            if first.iter().any(|&b| b == b'-' || b == b'.') {
                decode_as(frame, Command::SoftwareVersion, variant)
            } else {
                decode_as(frame, Command::ProductInfo, variant)
            }
        }
        _ => {
            let attempts =
                [Command::Analog(ALL_PACKS), Command::Analog(1), Command::Status(ALL_PACKS), Command::Status(1)];
            let mut first_error = None;
            for command in attempts {
                match decode_as(frame, command, variant) {
                    // A one-pack guess keeps the real second byte, so pack numbering still follows the echoed COMMAND.
                    Ok(reply) => return Ok(reply),
                    Err(error) => _ = first_error.get_or_insert(error),
                }
            }
            Err(first_error.unwrap_or(DecodeError::Implausible { why: "no reply layout fits" }))
        }
    }
}

/// Judge `reply` by the limits of [`plausible`]: the values it gives the model, alone and on top of `accepted`
/// (what the same poll or capture already took), and the readings of a 0x42 block the model does not keep (the
/// SOC and SOH the BMS itself reports, the port voltage and current). One implausible pack block rejects the
/// whole reply: the hex-text CHKSUM is a plain sum, which a digit raised and another lowered leave intact.
pub fn check_plausible(reply: &Reply, accepted: &DeviceSnapshot) -> Result<(), DecodeError> {
    if let Reply::Analog(r) = reply {
        for reported in r.packs.iter().filter(|p| p.online).filter_map(|p| p.reported) {
            let within = |value: Option<f64>, high: f64| value.is_none_or(|v| (-high..=high).contains(&v));
            let ok = reported.soc_pct.is_none_or(|soc| soc <= 100)
                && within(reported.soh_pct.map(f64::from), STATE_OF_HEALTH_MAX_RATIO * 100.0)
                && within(reported.port_voltage_v, PACK_VOLTS_MAX)
                && within(reported.port_current_a, CURRENT_MAX_AMPERES);
            if !ok {
                return Err(DecodeError::Implausible {
                    why: "reported SOC or SOH above 100 % / 150 %, or port voltage or current out of range",
                });
            }
        }
    }
    // The sign does not matter to the limits, which are symmetric.
    let mut alone = DeviceSnapshot::default();
    apply::apply(reply, CurrentSign::ChargePositive, &mut alone);
    plausible::check_device(&alone)?;
    let mut merged = accepted.clone();
    apply::apply(reply, CurrentSign::ChargePositive, &mut merged);
    plausible::check_device(&merged)
}

/// Decode a captured stream: one frame or several, with garbage, echoes and cut frames in between. Each reply is
/// decoded as the answer to `request` when given (a request frame for a command this decoder does not read, such
/// as a write, still selects the variant and is recognised as an echo; its replies are inferred). Errors of single
/// frames are listed in `rejected`; `Err` is returned only when nothing decoded (a frame's decode error first,
/// then a framing error, then an echo).
pub fn decode_capture(
    request: Option<&[u8]>,
    response: &[u8],
    options: &DecodeOptions,
) -> Result<Capture<Reply>, DecodeError> {
    let request_frame = request.map(parse_frame).transpose()?;
    let request_ver = request_frame.as_ref().map(|f| f.header.ver);
    let request_adr = request_frame.as_ref().map_or(0, |f| f.header.adr);
    let command = match request.map(Request::decode) {
        Some(Ok(r)) => Some(r.command),
        Some(Err(DecodeError::UnknownCommand { .. })) | None => None,
        Some(Err(error)) => return Err(error),
    };
    let framing = request.map_or_else(PaceFraming::default, PaceFraming::with_request);
    let mut deframer = Deframer::new(framing);
    deframer.push(response);
    let mut replies = Vec::new();
    let mut rejected = Vec::new();
    let (mut decode_error, mut framing_error, mut echo) = (None, None, None);
    let events: Vec<Event> = std::iter::from_fn(|| deframer.poll()).collect();
    let mut accepted = DeviceSnapshot::default();
    for event in events {
        match event {
            // As in a poll: each reply is judged alone and against the ones before it.
            Event::Frame(bytes) => match decode_for(&bytes, command, request_ver)
                .and_then(|reply| check_plausible(&reply, &accepted).map(|()| reply))
            {
                Ok(reply) => {
                    apply::apply(&reply, options.current_sign, &mut accepted);
                    replies.push(reply);
                }
                Err(error) => {
                    decode_error.get_or_insert(error);
                    rejected.push(error.into());
                }
            },
            Event::Echo(_) => {
                let error = DecodeError::HostEcho { address: request_adr };
                echo.get_or_insert(error);
                rejected.push(error.into());
            }
            Event::Rejected(error) => {
                framing_error.get_or_insert(error);
                rejected.push(error.into());
            }
        }
    }
    if let Some(error) = deframer.finish() {
        framing_error.get_or_insert(error);
        rejected.push(error.into());
    }
    if replies.is_empty() {
        return Err(decode_error.or(framing_error).or(echo).unwrap_or(DecodeError::NoFrame { len: response.len() }));
    }
    Ok(Capture {
        protocol: Protocol::Pace,
        replies,
        rejected,
        skipped_bytes: deframer.skipped_bytes(),
        device: accepted,
    })
}
