//! Multi-frame A5 replies (`docs/protocols/daly-a5.md#multi-frame-replies`): cell voltages (0x95), temperatures (0x96)
//! and the text replies (0x57 battery code, 0x63 identity). Frames are placed by their frame number, never by arrival
//! order: 0-based when the lowest number seen is 0, else 1-based; 0xFF and out-of-range numbers are dropped; of
//! duplicates the first wins.

use serde::Serialize;

use super::response::{celsius, celsius_raw, to_milli_u16};
use super::{Command, DecodeError, Frame};

/// Most frames a 0x95 reply has (48 cells).
pub(super) const CELL_FRAMES: usize = 16;
/// Most frames a 0x96 reply has (21 sensor slots).
pub(super) const TEMPERATURE_FRAMES: usize = 3;
/// Frames of a 0x57 reply.
pub(super) const BATTERY_CODE_FRAMES: usize = 5;
/// Most frames accepted for a 0x63 string (no source says; 16 like 0x95).
const IDENTITY_FRAMES: usize = 16;
/// Frame number that marks an invalid frame (protocol sheet).
const INVALID_FRAME: u8 = 0xFF;

/// Frame payloads (data bytes 1–7) in slot order, with the frame numbers used.
struct Placed {
    slots: Vec<Option<[u8; 7]>>,
    numbers: Vec<u8>,
}

/// Put each frame (8 data bytes, byte 0 = frame number) into its slot.
fn place(frames: &[[u8; 8]], max_frames: usize) -> Result<Placed, DecodeError> {
    let valid = frames.iter().map(|f| f[0]).filter(|&n| n != INVALID_FRAME);
    let base = usize::from(valid.min() != Some(0));
    let mut slots = vec![None; max_frames];
    let mut numbers = Vec::new();
    for &[number, a, b, c, d, e, f, g] in frames {
        if number == INVALID_FRAME {
            continue;
        }
        let index = usize::from(number).saturating_sub(base);
        if let Some(slot @ None) = slots.get_mut(index) {
            *slot = Some([a, b, c, d, e, f, g]);
            numbers.push(number);
        }
    }
    if numbers.is_empty() {
        let first = frames.first().map_or(0, |f| f[0]);
        return Err(DecodeError::OutOfRange { field: "frame number", value: u32::from(first) });
    }
    numbers.sort_unstable();
    Ok(Placed { slots, numbers })
}

/// The first frame number a multi-frame reply lacks, judged from the frame numbers received (`numbers`, any
/// order, repeats allowed): with `expected` frames known, any of those; with the count unknown, one below the
/// highest number received, since frames are numbered without gaps (a frame lost at the end cannot be told from a
/// shorter reply, so it is not missing here). Numbering is 0-based when a frame 0 arrived, else 1-based, as
/// [`place`] decides. `None` when nothing is missing, or nothing valid arrived.
pub(super) fn first_missing(numbers: &[u8], expected: Option<usize>) -> Option<u8> {
    let valid: Vec<u8> = numbers.iter().copied().filter(|&n| n != INVALID_FRAME).collect();
    let base = u8::from(!valid.contains(&0));
    let last = match expected {
        Some(0) => return None,
        Some(n) => usize::from(base) + n - 1,
        None => usize::from(*valid.iter().max()?),
    };
    (usize::from(base)..=last).filter_map(|n| u8::try_from(n).ok()).find(|n| !valid.contains(n))
}

/// Frame numbers `1..=n` for a reply of `n` frames.
fn numbered(frames: usize) -> Vec<u8> {
    (1..=frames.max(1)).map(|n| n as u8).collect()
}

/// 0x95: cell voltages.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CellVoltages {
    /// Frame numbers that were used, as sent, sorted.
    pub frame_numbers: Vec<u8>,
    /// Index 0 = cell 1, in V; `None` for a 0 mV reading or a missing frame inside the cell count.
    pub cell_voltages_v: Vec<Option<f64>>,
}

impl CellVoltages {
    /// Most cells a board reports.
    pub const MAX_CELLS: usize = CELL_FRAMES * 3;

    /// A reply carrying `cells` (at most 48 are kept), numbered from 1.
    #[must_use]
    pub fn new(mut cells: Vec<Option<f64>>) -> Self {
        cells.truncate(Self::MAX_CELLS);
        Self { frame_numbers: numbered(cells.len().div_ceil(3)), cell_voltages_v: cells }
    }

    /// Decode the data bytes of every 0x95 frame received. With `cell_count` unknown, every slot up to the last
    /// non-zero one is a cell.
    pub fn decode(frames: &[[u8; 8]], cell_count: Option<u16>) -> Result<Self, DecodeError> {
        let placed = place(frames, CELL_FRAMES)?;
        let slots: Vec<Option<u16>> = placed
            .slots
            .iter()
            .flat_map(|frame| {
                let [hi0, lo0, hi1, lo1, hi2, lo2, _] = frame.unwrap_or_default();
                let mv = [[hi0, lo0], [hi1, lo1], [hi2, lo2]].map(u16::from_be_bytes);
                mv.map(|v| frame.map(|_| v))
            })
            .collect();
        let count = match cell_count {
            Some(n) => usize::from(n).min(Self::MAX_CELLS),
            None => slots.iter().rposition(|s| s.is_some_and(|v| v != 0)).map_or(0, |i| i + 1),
        };
        let cells = slots.iter().take(count).map(|s| s.filter(|&mv| mv != 0).map(|mv| f64::from(mv) / 1000.0));
        Ok(Self { frame_numbers: placed.numbers, cell_voltages_v: cells.collect() })
    }

    /// The reply frames, numbered from 1: the frames the cells need, padded with zero-voltage frames up to
    /// `frame_count` (16 for host 0x80), at most 16. Unread cells are sent as 0 mV.
    #[must_use]
    pub fn encode_frames(&self, board: u8, frame_count: usize) -> Vec<u8> {
        let needed = self.cell_voltages_v.len().div_ceil(3);
        let frames = needed.max(frame_count).clamp(1, CELL_FRAMES);
        let mv = |i: usize| self.cell_voltages_v.get(i).copied().flatten().map_or(0, to_milli_u16);
        (0..frames)
            .flat_map(|k| {
                let [[hi0, lo0], [hi1, lo1], [hi2, lo2]] = [0, 1, 2].map(|j| mv(3 * k + j).to_be_bytes());
                let data = [k as u8 + 1, hi0, lo0, hi1, lo1, hi2, lo2, 0];
                Frame { address: board, command: Command::CellVoltages.code(), data }.encode()
            })
            .collect()
    }
}

/// 0x96: temperatures.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Temperatures {
    /// Frame numbers that were used, as sent, sorted.
    pub frame_numbers: Vec<u8>,
    /// Index 0 = sensor 1, in °C; `None` only when the frame carrying that sensor is missing.
    pub temperatures_c: Vec<Option<i16>>,
}

impl Temperatures {
    /// Most sensor slots a reply has.
    pub const MAX_SENSORS: usize = TEMPERATURE_FRAMES * 7;

    /// A reply carrying `temperatures` (at most 21 are kept), numbered from 1.
    #[must_use]
    pub fn new(mut temperatures: Vec<Option<i16>>) -> Self {
        temperatures.truncate(Self::MAX_SENSORS);
        Self { frame_numbers: numbered(temperatures.len().div_ceil(7)), temperatures_c: temperatures }
    }

    /// Decode the data bytes of every 0x96 frame received. With `sensor_count` unknown, trailing 0x00/0xFF
    /// slots (what boards put in unused slots) are dropped.
    pub fn decode(frames: &[[u8; 8]], sensor_count: Option<u16>) -> Result<Self, DecodeError> {
        let placed = place(frames, TEMPERATURE_FRAMES)?;
        let slots: Vec<Option<u8>> =
            placed.slots.iter().flat_map(|frame| frame.unwrap_or_default().map(|raw| frame.map(|_| raw))).collect();
        let count = match sensor_count {
            Some(n) => usize::from(n).min(Self::MAX_SENSORS),
            None => slots.iter().rposition(|s| s.is_some_and(|raw| raw != 0x00 && raw != 0xFF)).map_or(0, |i| i + 1),
        };
        let temperatures = slots.iter().take(count).map(|s| s.map(celsius));
        Ok(Self { frame_numbers: placed.numbers, temperatures_c: temperatures.collect() })
    }

    /// The reply frames, numbered from 1, padded with 0x00 slots up to `frame_count` frames (at most 3).
    /// A missing reading is sent as 0x00 (−40 °C), which is what boards send for an absent probe.
    #[must_use]
    pub fn encode_frames(&self, board: u8, frame_count: usize) -> Vec<u8> {
        let needed = self.temperatures_c.len().div_ceil(7);
        let frames = needed.max(frame_count).clamp(1, TEMPERATURE_FRAMES);
        let raw = |i: usize| self.temperatures_c.get(i).copied().flatten().map_or(0, celsius_raw);
        (0..frames)
            .flat_map(|k| {
                let mut data = [k as u8 + 1, 0, 0, 0, 0, 0, 0, 0];
                data.iter_mut().skip(1).enumerate().for_each(|(j, d)| *d = raw(7 * k + j));
                Frame { address: board, command: Command::Temperatures.code(), data }.encode()
            })
            .collect()
    }
}

/// 0x57 battery code or 0x63 identity string: seven characters per frame.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Text {
    /// Frame numbers that were used, as sent, sorted.
    pub frame_numbers: Vec<u8>,
    /// The characters of the frames in order, NUL and space padding trimmed.
    pub text: String,
}

impl Text {
    /// How many frames a reply to `command` may have.
    fn max_frames(command: Command) -> usize {
        if command == Command::BatteryCode { BATTERY_CODE_FRAMES } else { IDENTITY_FRAMES }
    }

    /// Frames the board sends for `len` text bytes: always five for 0x57.
    fn frames_for(command: Command, len: usize) -> usize {
        let needed = len.div_ceil(7);
        let frames = if command == Command::BatteryCode { BATTERY_CODE_FRAMES } else { needed };
        frames.clamp(1, Self::max_frames(command))
    }

    /// A reply to `command` carrying `text` (cut to what the frames hold).
    #[must_use]
    pub fn new(command: Command, text: &str) -> Self {
        let frames = Self::frames_for(command, text.len());
        let bytes: Vec<u8> = text.bytes().take(7 * Self::max_frames(command)).collect();
        Self { frame_numbers: numbered(frames), text: trim(&bytes) }
    }

    /// Decode the data bytes of every frame of a 0x57 or 0x63 reply; missing frames leave no gap.
    pub fn decode(frames: &[[u8; 8]], command: Command) -> Result<Self, DecodeError> {
        let placed = place(frames, Self::max_frames(command))?;
        let bytes: Vec<u8> = placed.slots.iter().flatten().flatten().copied().collect();
        Ok(Self { frame_numbers: placed.numbers, text: trim(&bytes) })
    }

    /// The reply frames to `command`, numbered from 1, NUL padded.
    #[must_use]
    pub fn encode_frames(&self, board: u8, command: u8) -> Vec<u8> {
        let kind = Command::from_code(command).unwrap_or(Command::Identity);
        let bytes = self.text.as_bytes();
        (0..Self::frames_for(kind, bytes.len()))
            .flat_map(|k| {
                let mut data = [k as u8 + 1, 0, 0, 0, 0, 0, 0, 0];
                let chunk = bytes.iter().skip(7 * k).take(7);
                data.iter_mut().skip(1).zip(chunk).for_each(|(d, &c)| *d = c);
                Frame { address: board, command, data }.encode()
            })
            .collect()
    }
}

/// Text of padded ASCII bytes: NUL and space padding trimmed at both ends.
fn trim(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).trim_matches(|c| c == '\0' || c == ' ').to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cells(number: u8, mv: [u16; 3]) -> [u8; 8] {
        let [[hi0, lo0], [hi1, lo1], [hi2, lo2]] = mv.map(u16::to_be_bytes);
        [number, hi0, lo0, hi1, lo1, hi2, lo2, 0x40]
    }

    #[test]
    fn zero_based_frame_numbers_are_recognised() {
        let frames = [cells(0, [3300, 3301, 3302]), cells(1, [3303, 0, 0])];
        let v = CellVoltages::decode(&frames, Some(4)).unwrap();
        assert_eq!(v.cell_voltages_v, [Some(3.3), Some(3.301), Some(3.302), Some(3.303)]);
        assert_eq!(v.frame_numbers, [0, 1]);
    }

    #[test]
    fn out_of_order_frames_are_placed_by_number() {
        let frames = [cells(2, [3400, 3401, 3402]), cells(1, [3300, 3301, 3302])];
        let v = CellVoltages::decode(&frames, None).unwrap();
        assert_eq!(v.cell_voltages_v.first(), Some(&Some(3.3)));
        assert_eq!(v.cell_voltages_v.get(3), Some(&Some(3.4)));
        assert_eq!(v.frame_numbers, [1, 2]);
    }

    #[test]
    fn invalid_out_of_range_and_duplicate_frames_are_dropped() {
        let frames =
            [cells(0xFF, [1, 1, 1]), cells(1, [3300, 3301, 3302]), cells(1, [9999, 9999, 9999]), cells(17, [2, 2, 2])];
        let v = CellVoltages::decode(&frames, None).unwrap();
        assert_eq!(v.cell_voltages_v, [Some(3.3), Some(3.301), Some(3.302)]);
        assert_eq!(v.frame_numbers, [1]);
        assert!(matches!(CellVoltages::decode(&[cells(0xFF, [1, 1, 1])], None), Err(DecodeError::OutOfRange { .. })));
    }

    #[test]
    fn a_zero_cell_inside_the_count_is_unread_and_a_missing_frame_leaves_holes() {
        let frames = [cells(1, [3300, 0, 3302]), cells(3, [3310, 3311, 3312])];
        let v = CellVoltages::decode(&frames, Some(8)).unwrap();
        let expected = [Some(3.3), None, Some(3.302), None, None, None, Some(3.31), Some(3.311)];
        assert_eq!(v.cell_voltages_v, expected);
    }

    #[test]
    fn a_frame_missing_inside_the_count_or_below_the_highest_number_is_found() {
        // Sixteen frames expected (host 0x80): any of them missing, whatever the order they came in.
        let all: Vec<u8> = (1..=16).collect();
        assert_eq!(first_missing(&all, Some(16)), None);
        let without_3: Vec<u8> = all.iter().copied().filter(|&n| n != 3).rev().collect();
        assert_eq!(first_missing(&without_3, Some(16)), Some(3));
        assert_eq!(first_missing(&all[..15], Some(16)), Some(16), "the last one too");
        // Fifteen frames plus an invalid and an out-of-range one still lack frame 3.
        let padded: Vec<u8> = without_3.iter().copied().chain([0xFF, 17]).collect();
        assert_eq!(first_missing(&padded, Some(16)), Some(3));
        // 0-based boards.
        assert_eq!(first_missing(&[0, 1, 2], Some(3)), None);
        assert_eq!(first_missing(&[0, 2], Some(3)), Some(1));
        // Count unknown: a gap below the highest number, or a missing frame 1, is missing; the end is not known.
        assert_eq!(first_missing(&[1, 2, 4], None), Some(3));
        assert_eq!(first_missing(&[2, 3], None), Some(1));
        assert_eq!(first_missing(&[1, 2, 3], None), None);
        assert_eq!(first_missing(&[1, 1, 2], None), None, "a repeat is not a gap");
        assert_eq!(first_missing(&[0xFF], None), None);
        assert_eq!(first_missing(&[], Some(0)), None);
    }

    #[test]
    fn temperatures_without_a_count_drop_trailing_empty_slots() {
        let frames = [[1, 0x37, 0x00, 0xFF, 0x28, 0xFF, 0x00, 0xFF]];
        let t = Temperatures::decode(&frames, None).unwrap();
        assert_eq!(t.temperatures_c, [Some(15), Some(-40), Some(215), Some(0)]);
        let t = Temperatures::decode(&frames, Some(1)).unwrap();
        assert_eq!(t.temperatures_c, [Some(15)]);
    }

    #[test]
    fn battery_code_is_joined_in_frame_order_and_trimmed() {
        let frames = [
            [2, b'4', b'5', b'6', b'7', b'8', b'9', b'0'],
            [1, b'S', b'N', b'1', b'2', b'3', b' ', b' '],
            [3, 0, 0, 0, 0, 0, 0, 0],
        ];
        let t = Text::decode(&frames, Command::BatteryCode).unwrap();
        assert_eq!(t.text, "SN123  4567890");
        assert_eq!(t.frame_numbers, [1, 2, 3]);
    }
}
