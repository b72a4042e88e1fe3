//! The A5 reply envelope (`docs/protocols/daly-a5.md#read-commands`): `Reply` (board + message), `Message` (one variant
//! per command) with its dispatch to the per-command decoders and encoders, and the scaling helpers they share. The
//! reply types live in `measurements` (0x90–0x94), `settings` (0x97, 0x98, 0x50, 0x53, write acknowledgements) and
//! `multiframe` (0x95, 0x96, 0x57, 0x63).

use serde::Serialize;

use super::measurements::{CellRange, MosfetStatus, Soc, Status, TemperatureRange};
use super::multiframe::{CellVoltages, Temperatures, Text};
use super::settings::{AlarmStatus, Balancing, BatteryMode, MosfetEcho, Rated, SetSocAck};
use super::{Command, DecodeError, Frame};

/// One decoded reply: which board sent it and what it says.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Reply {
    /// Board number from reply frame byte 1 (the pack number in the model).
    pub board: u8,
    /// The decoded content.
    #[serde(flatten)]
    pub message: Message,
}

/// The content of a reply, one variant per command.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "command", rename_all = "snake_case")]
pub enum Message {
    /// 0x90.
    Soc(Soc),
    /// 0x91.
    CellRange(CellRange),
    /// 0x92.
    TemperatureRange(TemperatureRange),
    /// 0x93.
    Mosfet(MosfetStatus),
    /// 0x94.
    Status(Status),
    /// 0x95 (all frames).
    CellVoltages(CellVoltages),
    /// 0x96 (all frames).
    Temperatures(Temperatures),
    /// 0x97.
    Balancing(Balancing),
    /// 0x98.
    Alarms(AlarmStatus),
    /// 0x50.
    Rated(Rated),
    /// 0x53.
    BatteryMode(BatteryMode),
    /// 0x57 (all frames).
    BatteryCode(Text),
    /// 0x63 (all frames).
    Identity(Text),
    /// 0xD9 acknowledgement.
    DischargeMosfet(MosfetEcho),
    /// 0xDA acknowledgement.
    ChargeMosfet(MosfetEcho),
    /// 0x21 acknowledgement.
    SetSoc(SetSocAck),
    /// 0x00 acknowledgement (its data bytes carry nothing documented).
    Restart,
}

impl Message {
    /// The command this message answers.
    #[must_use]
    pub fn command(&self) -> Command {
        match self {
            Self::Soc(_) => Command::Soc,
            Self::CellRange(_) => Command::CellRange,
            Self::TemperatureRange(_) => Command::TemperatureRange,
            Self::Mosfet(_) => Command::Mosfet,
            Self::Status(_) => Command::Status,
            Self::CellVoltages(_) => Command::CellVoltages,
            Self::Temperatures(_) => Command::Temperatures,
            Self::Balancing(_) => Command::Balancing,
            Self::Alarms(_) => Command::Alarms,
            Self::Rated(_) => Command::Rated,
            Self::BatteryMode(_) => Command::BatteryMode,
            Self::BatteryCode(_) => Command::BatteryCode,
            Self::Identity(_) => Command::Identity,
            Self::DischargeMosfet(_) => Command::DischargeMosfet,
            Self::ChargeMosfet(_) => Command::ChargeMosfet,
            Self::SetSoc(_) => Command::SetSoc,
            Self::Restart => Command::Restart,
        }
    }

    /// Decode the data bytes of a single-frame reply; `None` for the multi-frame commands.
    pub fn decode_single(command: Command, data: [u8; 8]) -> Option<Result<Self, DecodeError>> {
        let message = match command {
            Command::Soc => Soc::decode(data).map(Self::Soc),
            Command::CellRange => CellRange::decode(data).map(Self::CellRange),
            Command::TemperatureRange => TemperatureRange::decode(data).map(Self::TemperatureRange),
            Command::Mosfet => MosfetStatus::decode(data).map(Self::Mosfet),
            Command::Status => Status::decode(data).map(Self::Status),
            Command::Balancing => Ok(Self::Balancing(Balancing::decode(data))),
            Command::Alarms => Ok(Self::Alarms(AlarmStatus::decode(data))),
            Command::Rated => Rated::decode(data).map(Self::Rated),
            Command::BatteryMode => Ok(Self::BatteryMode(BatteryMode::decode(data))),
            Command::DischargeMosfet => Ok(Self::DischargeMosfet(MosfetEcho::decode(data))),
            Command::ChargeMosfet => Ok(Self::ChargeMosfet(MosfetEcho::decode(data))),
            Command::SetSoc => Ok(Self::SetSoc(SetSocAck::decode(data))),
            Command::Restart => Ok(Self::Restart),
            Command::CellVoltages | Command::Temperatures | Command::BatteryCode | Command::Identity => return None,
        };
        Some(message)
    }

    /// The reply frames the board `board` would send for this message, concatenated (minimal frame count; see
    /// [`CellVoltages::encode_frames`] / [`Temperatures::encode_frames`] for the padded 0x80 form).
    #[must_use]
    pub fn encode(&self, board: u8) -> Vec<u8> {
        let command = self.command().code();
        let data = match self {
            Self::CellVoltages(m) => return m.encode_frames(board, 0),
            Self::Temperatures(m) => return m.encode_frames(board, 0),
            Self::BatteryCode(m) | Self::Identity(m) => return m.encode_frames(board, command),
            Self::Soc(m) => m.encode(),
            Self::CellRange(m) => m.encode(),
            Self::TemperatureRange(m) => m.encode(),
            Self::Mosfet(m) => m.encode(),
            Self::Status(m) => m.encode(),
            Self::Balancing(m) => m.encode(),
            Self::Alarms(m) => m.encode(),
            Self::Rated(m) => m.encode(),
            Self::BatteryMode(m) => m.encode(),
            Self::DischargeMosfet(m) | Self::ChargeMosfet(m) => m.encode(),
            Self::SetSoc(m) => m.encode(),
            Self::Restart => [0; 8],
        };
        Frame { address: board, command, data }.encode().to_vec()
    }
}

/// Tenths (of a volt, a percent) from a raw value.
pub(super) fn tenths(raw: u16) -> f64 {
    f64::from(raw) / 10.0
}

/// Raw tenths of a value, rounded and saturated to u16.
pub(super) fn to_tenths(value: f64) -> u16 {
    (value * 10.0).round().clamp(0.0, f64::from(u16::MAX)) as u16
}

/// Thousandths (mV → V, mAh → Ah) to raw, rounded and saturated.
pub(super) fn to_milli_u16(value: f64) -> u16 {
    (value * 1000.0).round().clamp(0.0, f64::from(u16::MAX)) as u16
}

pub(super) fn to_milli_u32(value: f64) -> u32 {
    (value * 1000.0).round().clamp(0.0, f64::from(u32::MAX)) as u32
}

/// Temperature byte (raw − 40 °C, unsigned) to °C.
pub(super) fn celsius(raw: u8) -> i16 {
    i16::from(raw) - 40
}

/// °C back to the raw byte, saturated to −40…215.
pub(super) fn celsius_raw(value: i16) -> u8 {
    (value + 40).clamp(0, 255) as u8
}

/// Data bytes made of `parts` in order, zero padded (extra bytes are dropped).
pub(super) fn concat(parts: &[&[u8]]) -> [u8; 8] {
    let mut out = [0u8; 8];
    out.iter_mut().zip(parts.iter().copied().flatten()).for_each(|(o, &b)| *o = b);
    out
}

/// The first `N` data bytes.
pub(super) fn head<const N: usize>(data: [u8; 8]) -> [u8; N] {
    let mut out = [0u8; N];
    out.iter_mut().zip(data).for_each(|(o, b)| *o = b);
    out
}
