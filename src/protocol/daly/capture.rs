//! Decoding a captured A5 byte stream (`docs/protocols/daly-a5.md#finding-frames-in-a-stream`): deframe it, check each
//! frame against the request (board, command, echo), group multi-frame replies, decode, judge their plausibility, and
//! apply to the model.

use super::multiframe::{CellVoltages, Temperatures, Text};
use super::response::{Message, Reply};
use super::{A5Framing, Command, DecodeError, Frame, Request, apply};
use crate::model::DeviceSnapshot;
use crate::protocol::deframer::{Deframer, Event};
use crate::protocol::plausible::{self, CELL_VOLTS_MAX, Conflict, PACK_VOLTS_MAX};
use crate::protocol::{Capture, DecodeOptions, Protocol, Rejection};

/// Decode the reply bytes `response` to `request` (if known). Without a request any board and command is
/// accepted. `Err` only when nothing valid was decoded: then the first rejection (or `NoFrame`).
pub fn decode_capture(
    request: Option<&[u8]>,
    response: &[u8],
    options: &DecodeOptions,
) -> Result<Capture<Reply>, DecodeError> {
    decode_chunks(request, &[response], options)
}

/// [`decode_capture`] for a stream that arrived in `chunks` (serial reads, BLE notifications); the result does
/// not depend on where the stream was cut.
pub fn decode_chunks(
    request: Option<&[u8]>,
    chunks: &[&[u8]],
    options: &DecodeOptions,
) -> Result<Capture<Reply>, DecodeError> {
    let request = request.map(Request::decode).transpose()?;
    let mut deframer = Deframer::new(A5Framing);
    let mut errors = Vec::new();
    let mut frames = Vec::new();
    for chunk in chunks {
        deframer.push(chunk);
        while let Some(event) = deframer.poll() {
            let accepted = match event {
                Event::Frame(bytes) => {
                    Frame::parse(&bytes).and_then(|f| check_reply(&f, request.as_ref()).map(|c| (f, c)))
                }
                Event::Echo(bytes) => Err(DecodeError::HostEcho { address: bytes.get(1).copied().unwrap_or_default() }),
                Event::Rejected(error) => Err(error),
            };
            match accepted {
                Ok((frame, command)) => frames.push((frame.address, command, frame.data)),
                Err(error) => errors.push(error),
            }
        }
    }
    errors.extend(deframer.finish());
    let mut replies: Vec<Reply> = Vec::new();
    for reply in decode_frames(&frames, options, &mut errors) {
        // As in a poll: a reply is judged alone and against the replies accepted before it.
        match check_plausible(&replies, &reply, options) {
            Ok(()) => replies.push(reply),
            Err((error, _)) => errors.push(error),
        }
    }
    if replies.is_empty() {
        let len = chunks.iter().map(|c| c.len()).sum();
        return Err(errors.first().copied().unwrap_or(DecodeError::NoFrame { len }));
    }
    let mut device = DeviceSnapshot::default();
    apply(&mut device, &replies, options);
    Ok(Capture {
        protocol: Protocol::Daly,
        replies,
        rejected: errors.into_iter().map(Rejection::from).collect(),
        skipped_bytes: deframer.skipped_bytes(),
        device,
    })
}

/// Whether a deframed reply frame answers `request`: right board (1 unless addressed), right command. Without a
/// request only the command must be one this codec knows. Returns the command.
pub fn check_reply(frame: &Frame, request: Option<&Request>) -> Result<Command, DecodeError> {
    if super::is_host_address(frame.address) {
        return Err(DecodeError::HostEcho { address: frame.address });
    }
    if let Some(request) = request {
        let board = request.address.reply_board();
        if frame.address != board {
            return Err(DecodeError::UnexpectedAddress { expected: board, found: frame.address });
        }
        let expected = request.command.code();
        if frame.command != expected {
            return Err(DecodeError::UnexpectedCommand { expected, found: frame.command });
        }
    }
    Command::from_code(frame.command).ok_or(DecodeError::UnknownCommand { command: frame.command })
}

/// Whether a command's reply spans several frames that decode together.
pub(crate) fn is_multi_frame(command: Command) -> bool {
    matches!(command, Command::CellVoltages | Command::Temperatures | Command::BatteryCode | Command::Identity)
}

/// Decode accepted frames `(board, command, data)`: single-frame replies one by one, multi-frame replies
/// grouped per board and command at the position of their first frame. Decode failures go to `errors`.
pub(crate) fn decode_frames(
    frames: &[(u8, Command, [u8; 8])],
    options: &DecodeOptions,
    errors: &mut Vec<DecodeError>,
) -> Vec<Reply> {
    let mut groups: Vec<(u8, Command, Vec<[u8; 8]>)> = Vec::new();
    for &(board, command, data) in frames {
        let existing = groups.iter_mut().find(|(b, c, _)| is_multi_frame(command) && *b == board && *c == command);
        match existing {
            Some((_, _, group)) => group.push(data),
            None => groups.push((board, command, vec![data])),
        }
    }
    let status = |board: u8| {
        frames.iter().find_map(|&(b, c, data)| match Message::decode_single(c, data) {
            Some(Ok(Message::Status(s))) if b == board => Some(s),
            _ => None,
        })
    };
    let mut replies = Vec::new();
    for (board, command, group) in groups {
        // The board's own 0x94 in this capture is fresher than a count given from outside.
        let cells = status(board).map(|s| u16::from(s.cell_count)).or(options.cell_count);
        let sensors = status(board).map(|s| u16::from(s.temperature_sensor_count)).or(options.temperature_sensor_count);
        let decoded = match (command, group.as_slice()) {
            (Command::CellVoltages, _) => CellVoltages::decode(&group, cells).map(Message::CellVoltages),
            (Command::Temperatures, _) => Temperatures::decode(&group, sensors).map(Message::Temperatures),
            (Command::BatteryCode, _) => Text::decode(&group, command).map(Message::BatteryCode),
            (Command::Identity, _) => Text::decode(&group, command).map(Message::Identity),
            (_, [data]) => Message::decode_single(command, *data)
                .unwrap_or(Err(DecodeError::UnknownCommand { command: command.code() })),
            (_, _) => Err(DecodeError::UnknownCommand { command: command.code() }),
        };
        match decoded {
            Ok(message) => replies.push(Reply { board, message }),
            Err(error) => errors.push(error),
        }
    }
    replies
}

/// The commands whose replies provide the values a consistency rule involves.
pub(crate) fn conflict_commands(conflict: Conflict) -> &'static [Command] {
    match conflict {
        Conflict::PackVoltageAndCells => &[Command::Soc, Command::CellVoltages],
        Conflict::RemainingAndFull => &[Command::Mosfet],
    }
}

/// Judge `reply` by the limits of [`plausible`]: alone (its own values, and the decoded values the model does not
/// keep, such as the 0x90 gathered voltage, so that a frame whose checksum a raised byte and a lowered byte keep
/// intact is rejected whole), then together with `accepted` (the replies already taken from the same board:
/// a 0x95 reply against the 0x90 voltage). `Err` names the rejection and, when the reply is plausible alone but
/// contradicts what was accepted, the values involved.
pub(crate) fn check_plausible(
    accepted: &[Reply],
    reply: &Reply,
    options: &DecodeOptions,
) -> Result<(), (DecodeError, Option<Conflict>)> {
    check_message(&reply.message).map_err(|e| (e, None))?;
    let alone = |replies: &[Reply]| {
        let mut device = DeviceSnapshot::default();
        apply(&mut device, replies, options);
        device
    };
    plausible::check_device(&alone(std::slice::from_ref(reply))).map_err(|e| (e, None))?;
    let mut together: Vec<Reply> = accepted.iter().filter(|r| r.board == reply.board).cloned().collect();
    together.push(reply.clone());
    let device = alone(&together);
    plausible::check_device(&device)
        .map_err(|e| (e, device.packs.iter().find(|p| p.pack == reply.board).and_then(plausible::conflict)))
}

/// The limits for decoded values the model does not keep (see [`check_plausible`]).
fn check_message(message: &Message) -> Result<(), DecodeError> {
    let cell = |v: f64| (0.0..=CELL_VOLTS_MAX).contains(&v);
    let temperature =
        |c: i16| (plausible::TEMPERATURE_MIN_CELSIUS..=plausible::TEMPERATURE_MAX_CELSIUS).contains(&f64::from(c));
    let (ok, why) = match message {
        Message::Soc(s) => {
            ((0.0..=PACK_VOLTS_MAX).contains(&s.acquisition_voltage_v), "0x90 gathered voltage outside 0–240 V")
        }
        Message::CellRange(r) => {
            (cell(r.max_cell_voltage_v) && cell(r.min_cell_voltage_v), "0x91 cell voltage outside 0–5 V")
        }
        Message::TemperatureRange(r) => (
            temperature(r.max_temperature_c) && temperature(r.min_temperature_c),
            "0x92 temperature outside −50…150 °C",
        ),
        Message::Rated(r) => (cell(r.nominal_cell_voltage_v), "0x50 nominal cell voltage outside 0–5 V"),
        _ => (true, ""),
    };
    if ok { Ok(()) } else { Err(DecodeError::Implausible { why }) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::parse_hex;

    #[test]
    fn without_a_request_the_board_of_the_frame_is_the_pack() {
        let mut reply = parse_hex("a5029008020300007724033819").unwrap();
        reply[12] = super::super::checksum(&reply[..12]); // board 2 instead of 1: one more in the sum
        let capture = decode_capture(None, &reply, &DecodeOptions::default()).unwrap();
        assert_eq!(capture.device.packs[0].pack, 2);
        assert_eq!(capture.replies[0].board, 2);
    }

    #[test]
    fn a_reply_from_another_board_is_rejected_when_the_request_names_one() {
        let request = Request::read(Command::Soc, super::super::Address::Board(3), super::super::Filler::Zero).encode();
        let reply = parse_hex("a5019008020300007724033819").unwrap();
        let error = decode_capture(Some(&request), &reply, &DecodeOptions::default()).unwrap_err();
        assert_eq!(error, DecodeError::UnexpectedAddress { expected: 3, found: 1 });
    }

    #[test]
    fn an_unknown_command_is_rejected_but_the_rest_is_kept() {
        let stray = Frame { address: 1, command: 0xD8, data: [0, 0, 0, 0, 1, 0, 0, 0] }.encode();
        let good = parse_hex("a5019008020300007724033819").unwrap();
        let capture = decode_capture(None, &[stray.as_slice(), &good].concat(), &DecodeOptions::default()).unwrap();
        assert_eq!(capture.replies.len(), 1);
        assert_eq!(capture.rejected[0].kind, "unknown_command");
    }
}
