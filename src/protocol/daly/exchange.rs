//! The Daly A5 side of a poll ([`Exchange`]): which commands to send for the sections asked, for one or more
//! boards on one bus, and when a (possibly multi-frame) reply is complete.
//!
//! Poll economy (`ARCHITECTURE.md#scrape-model`, and `docs/protocols/daly-a5.md#poll-plan`): 0x91/0x92 are never sent
//! (the model derives both ranges from 0x95/0x96); the 0x94 counts are cached and refreshed every
//! [`STATUS_REFRESH_POLLS`] polls; identity and capacity (0x50, 0x57, 0x63) are read once, and are optional: one
//! the board leaves unanswered in [`INFO_GIVE_UP_MISSES`] polls in a row is asked only every
//! [`INFO_REPROBE_POLLS`]. A multi-frame reply is complete when the frame count that the cached counts and the
//! host address predict has arrived (`docs/protocols/daly-a5.md#multi-frame-replies`); with no count known, the
//! reply settles when the line goes quiet.

use std::collections::VecDeque;

use super::capture::{check_plausible, check_reply, conflict_commands, decode_frames, is_multi_frame};
use super::multiframe::first_missing;
use super::response::{Message, Reply};
use super::{A5Framing, Address, Command, Filler, Frame, Request, apply};
use crate::model::{DeviceSnapshot, Section, Sections};
use crate::protocol::deframer::{Deframer, Event};
use crate::protocol::plausible::Conflict;
use crate::protocol::{DecodeError, DecodeOptions, Exchange, Outgoing, Progress, Protocol};

/// 0x94 is asked again after this many polls, to follow cycles, charger and load state.
pub const STATUS_REFRESH_POLLS: u32 = 10;

/// An identity or capacity read left unanswered in this many polls in a row is taken as unknown to the board
/// and no longer sent (one miss may be a board busy at that moment, as the session waits only a short time).
pub const INFO_GIVE_UP_MISSES: u32 = crate::protocol::exchange::GIVE_UP_MISSES;

/// A read given up is asked once more after this many polls (about 25 minutes at a 15 s scrape interval), in
/// case the misses were bad luck: it then costs one short timeout per interval.
pub const INFO_REPROBE_POLLS: u32 = crate::protocol::exchange::REPROBE_POLLS;

/// What one board has told us that later polls reuse.
#[derive(Debug, Clone, Default)]
struct Memory {
    /// The last 0x94 reply.
    status: Option<Reply>,
    /// Polls since 0x94 was last answered.
    polls_since_status: u32,
    /// Identity and capacity replies (0x50, 0x57, 0x63), read once.
    info: Vec<Reply>,
    /// Info commands the board left unanswered, with the number of polls in a row it did so; from
    /// [`INFO_GIVE_UP_MISSES`] on, the board does not know them (`docs/protocols/daly-a5.md#identity-and-capacity-reads`)
    /// and they are asked only every [`INFO_REPROBE_POLLS`] polls.
    info_misses: Vec<(Command, u32)>,
    /// Polls since the commands given up were last asked again.
    polls_since_reprobe: u32,
}

/// The identity and capacity reads, asked once.
const INFO_COMMANDS: [Command; 3] = [Command::Rated, Command::BatteryCode, Command::Identity];

impl Memory {
    /// Info commands not answered yet and not given up (all of those not answered when `reprobe`).
    fn info_missing(&self, reprobe: bool) -> impl Iterator<Item = Command> + '_ {
        INFO_COMMANDS.into_iter().filter(move |c| {
            (reprobe || self.misses(*c) < INFO_GIVE_UP_MISSES) && !self.info.iter().any(|r| r.message.command() == *c)
        })
    }

    /// Polls in a row in which `command` went unanswered.
    fn misses(&self, command: Command) -> u32 {
        self.info_misses.iter().find(|(c, _)| *c == command).map_or(0, |(_, n)| *n)
    }

    /// Whether some info command has been given up.
    fn gave_up(&self) -> bool {
        self.info_misses.iter().any(|(_, n)| *n >= INFO_GIVE_UP_MISSES)
    }

    fn counts(&self) -> (Option<u16>, Option<u16>) {
        match self.status.as_ref().map(|r| &r.message) {
            Some(Message::Status(s)) => (Some(u16::from(s.cell_count)), Some(u16::from(s.temperature_sensor_count))),
            _ => (None, None),
        }
    }
}

/// The request in flight and the frames collected for it.
#[derive(Debug, Clone)]
struct Current {
    board: usize,
    request: Request,
    /// Accepted frames as `(board, command, data)`, one per frame number for multi-frame replies.
    frames: Vec<(u8, Command, [u8; 8])>,
    /// Frames that complete the reply, when known.
    expected: Option<usize>,
    /// The most telling rejection since the request was sent.
    rejection: Option<DecodeError>,
    /// The last reply was plausible alone but contradicted a reply this poll had accepted (see
    /// [`DalyExchange::take_reply`]): which values.
    contradiction: Option<Conflict>,
}

impl Current {
    /// The frame a multi-frame reply still lacks, judged by frame number
    /// (`docs/protocols/daly-a5.md#multi-frame-replies`): with the count known, any of the frames that complete
    /// it, else one below the highest number that came. Frames lost inside a reply (a garbled frame, a dropped
    /// notification) leave holes that must not pass as a complete reply.
    fn missing(&self) -> Option<DecodeError> {
        if !is_multi_frame(self.request.command) {
            return None;
        }
        let numbers: Vec<u8> = self.frames.iter().filter_map(|(_, _, data)| data.first().copied()).collect();
        let number = first_missing(&numbers, self.expected)?;
        Some(DecodeError::MissingFrame { number, received: self.frames.len() })
    }

    /// The reply is given up as incomplete: the rejection that says why, keeping one seen on the way (a frame
    /// that failed its checksum tells the cause of the gap) over the gap itself.
    fn incomplete(&mut self, missing: DecodeError) -> DecodeError {
        let error = match self.rejection {
            Some(seen) if !matches!(seen, DecodeError::HostEcho { .. }) => seen,
            _ => missing,
        };
        self.rejection = Some(error);
        self.frames.clear();
        error
    }
}

/// Polls one or more Daly boards (each board is a pack) on one bus. See the module documentation.
#[derive(Debug, Clone)]
pub struct DalyExchange {
    addresses: Vec<Address>,
    filler: Filler,
    options: DecodeOptions,
    memory: Vec<Memory>,
    plan: VecDeque<(usize, Request)>,
    current: Option<Current>,
    replies: Vec<Reply>,
    answered: Vec<bool>,
    deframer: Deframer<A5Framing>,
}

impl DalyExchange {
    /// An exchange for the boards at `addresses` (one per pack; `Address::Board(n)` is pack `n`), sending
    /// `filler` in the data bytes of read requests, with `options.current_sign` deciding the current sign.
    #[must_use]
    pub fn new(addresses: Vec<Address>, filler: Filler, options: DecodeOptions) -> Self {
        let boards = addresses.len();
        Self {
            addresses,
            filler,
            options,
            memory: vec![Memory::default(); boards],
            plan: VecDeque::new(),
            current: None,
            replies: Vec::new(),
            answered: vec![false; boards],
            deframer: Deframer::new(A5Framing),
        }
    }

    /// Start a "poll" that sends only `request` (a write from the `set` command) and expects its
    /// acknowledgement. The request's address must be one of this exchange's boards.
    pub fn begin_write(&mut self, request: Request) {
        self.start();
        let board = self.addresses.iter().position(|a| *a == request.address).unwrap_or(0);
        self.plan.push_back((board, request));
    }

    /// The replies of the current poll, in arrival order (the `set` command reads write acknowledgements here).
    #[must_use]
    pub fn replies(&self) -> &[Reply] {
        &self.replies
    }

    /// The boards this exchange polls, in order (one per pack).
    #[must_use]
    pub fn addresses(&self) -> &[Address] {
        &self.addresses
    }

    /// A fresh exchange for the one board that serves pack `pack` (its reply board), with this exchange's filler
    /// and decode options, and that board's address; `None` when no board here serves it. A write and its
    /// read-back go through such an exchange, so they touch that board only and leave this one's poll state as
    /// it is.
    #[must_use]
    pub fn for_pack(&self, pack: u8) -> Option<(Address, Self)> {
        let address = self.addresses.iter().copied().find(|a| a.reply_board() == pack)?;
        Some((address, Self::new(vec![address], self.filler, self.options)))
    }

    fn start(&mut self) {
        self.plan.clear();
        self.current = None;
        self.replies.clear();
        self.answered.iter_mut().for_each(|a| *a = false);
        self.deframer.clear();
    }

    fn commands(&self, board: usize, sections: Sections, reprobe: bool) -> Vec<Command> {
        let memory = self.memory.get(board).cloned().unwrap_or_default();
        let (cells, sensors) = memory.counts();
        let needs_counts =
            [Section::Cells, Section::Temperatures, Section::Balancing].iter().any(|s| sections.contains(*s));
        let due = memory.polls_since_status >= STATUS_REFRESH_POLLS;
        let mut commands = Vec::new();
        if cells.is_none() && (needs_counts || sections.contains(Section::Status))
            || due && sections.contains(Section::Status)
        {
            commands.push(Command::Status);
        }
        // The 0x93 state decides the current sign, so it travels with 0x90.
        if sections.contains(Section::Soc) {
            commands.push(Command::Soc);
        }
        if sections.contains(Section::Mosfet) || sections.contains(Section::Soc) {
            commands.push(Command::Mosfet);
        }
        if sections.contains(Section::Cells) && cells != Some(0) {
            commands.push(Command::CellVoltages);
        }
        if sections.contains(Section::Temperatures) && sensors != Some(0) {
            commands.push(Command::Temperatures);
        }
        if sections.contains(Section::Balancing) {
            commands.push(Command::Balancing);
        }
        if sections.contains(Section::Alarms) {
            commands.push(Command::Alarms);
        }
        if sections.contains(Section::Info) {
            commands.extend(memory.info_missing(reprobe));
        }
        commands
    }

    fn options_for(&self, board: usize) -> DecodeOptions {
        let (cell_count, temperature_sensor_count) = self.memory.get(board).map(Memory::counts).unwrap_or_default();
        DecodeOptions { cell_count, temperature_sensor_count, ..self.options }
    }

    /// The replies of this poll from `board`, with the cached ones standing in for commands not sent.
    fn accepted(&self, board: usize) -> Vec<Reply> {
        let Some(address) = self.addresses.get(board) else { return Vec::new() };
        let pack = address.reply_board();
        let mut replies: Vec<Reply> = self.replies.iter().filter(|r| r.board == pack).cloned().collect();
        if let Some(memory) = self.memory.get(board) {
            for cached in memory.status.iter().chain(&memory.info) {
                if !replies.iter().any(|r| r.message.command() == cached.message.command()) {
                    replies.push(cached.clone());
                }
            }
        }
        replies
    }

    /// Decode the collected frames into one reply, judge its plausibility and take it in.
    ///
    /// A reply whose values cannot be physical is rejected whole — every frame of a 0x95/0x96 reply with it —
    /// and asked again at once ([`Progress::Retry`]). One that is plausible alone but contradicts a reply this
    /// poll already accepted (0x95 cells against the 0x90 voltage) is the later one, so it is the one rejected
    /// and asked again; if no retry agrees, the accepted values it contradicted are dropped from the poll too
    /// ([`DalyExchange::settle_contradiction`]), because which side is wrong cannot be known.
    fn take_reply(&mut self) -> Progress {
        let Some(current) = self.current.as_ref() else { return Progress::Pending };
        let board = current.board;
        let options = self.options_for(board);
        let mut errors = Vec::new();
        let decoded = decode_frames(&current.frames, &options, &mut errors);
        let judged = decoded.into_iter().next().map(|reply| {
            let verdict = check_plausible(&self.accepted(board), &reply, &options);
            (reply, verdict)
        });
        let Some(current) = self.current.as_mut() else { return Progress::Pending };
        let reply = match judged {
            Some((reply, Ok(()))) => reply,
            Some((_, Err((error, contradiction)))) => {
                current.rejection = Some(error);
                current.contradiction = contradiction;
                current.frames.clear();
                return Progress::Retry(error);
            }
            None => {
                // Complete frames that do not decode: a bad reply, worth a retry.
                current.rejection = errors.first().copied().or(current.rejection);
                current.frames.clear();
                return Progress::Pending;
            }
        };
        if let Some(answered) = self.answered.get_mut(board) {
            *answered = true;
        }
        if let Some(memory) = self.memory.get_mut(board) {
            match reply.message {
                Message::Status(_) => {
                    memory.status = Some(reply.clone());
                    memory.polls_since_status = 0;
                }
                Message::Rated(_) | Message::BatteryCode(_) | Message::Identity(_) => {
                    memory.info_misses.retain(|(c, _)| *c != reply.message.command());
                    memory.info.retain(|r| r.message.command() != reply.message.command());
                    memory.info.push(reply.clone());
                }
                _ => {}
            }
        }
        self.replies.push(reply);
        self.current = None;
        Progress::Complete
    }

    /// The request in flight is given up: if its last reply contradicted values this poll had accepted, no
    /// retry settled which side is right, so those values leave the poll as well (their whole replies: a 0x90
    /// reply takes its current and SOC along, as any of its bytes may be the wrong one).
    fn settle_contradiction(&mut self) {
        let Some(current) = self.current.take() else { return };
        let (Some(conflict), Some(address)) = (current.contradiction, self.addresses.get(current.board)) else {
            return;
        };
        let pack = address.reply_board();
        let commands = conflict_commands(conflict);
        self.replies.retain(|r| r.board != pack || !commands.contains(&r.message.command()));
    }

    fn expected_frames(&self, board: usize, command: Command) -> Option<usize> {
        let address = *self.addresses.get(board)?;
        let (cells, sensors) = self.memory.get(board).map(Memory::counts).unwrap_or_default();
        // Host 0x80 always gets every frame (16 and 3), so its count is known before the counts are.
        let uart = address == Address::Uart;
        match command {
            Command::CellVoltages if uart || cells.is_some() => {
                Some(command.reply_frame_count(cells.unwrap_or(0), 0, address))
            }
            Command::Temperatures if uart || sensors.is_some() => {
                Some(command.reply_frame_count(0, sensors.unwrap_or(0), address))
            }
            // Without the counts a wired board's reply settles on quiet; identity strings may run longer than the
            // two frames of the one capture, so they settle on quiet too.
            Command::CellVoltages | Command::Temperatures | Command::Identity => None,
            _ => Some(command.reply_frame_count(0, 0, address)),
        }
    }
}

impl Exchange for DalyExchange {
    fn protocol(&self) -> Protocol {
        Protocol::Daly
    }

    fn daly(&self) -> Option<&DalyExchange> {
        Some(self)
    }

    fn begin_poll(&mut self, sections: Sections) {
        self.start();
        for board in 0..self.addresses.len() {
            let mut reprobe = false;
            if let Some(memory) = self.memory.get_mut(board) {
                memory.polls_since_status = memory.polls_since_status.saturating_add(1);
                if sections.contains(Section::Info) && memory.gave_up() {
                    memory.polls_since_reprobe = memory.polls_since_reprobe.saturating_add(1);
                    reprobe = memory.polls_since_reprobe >= INFO_REPROBE_POLLS;
                    if reprobe {
                        memory.polls_since_reprobe = 0;
                    }
                }
            }
            let address = self.addresses.get(board).copied().unwrap_or(Address::Rs485);
            for command in self.commands(board, sections, reprobe) {
                self.plan.push_back((board, Request::read(command, address, self.filler)));
            }
        }
    }

    fn next_request(&mut self) -> Option<Outgoing> {
        // A request still current was given up (a completed one is taken by `take_reply`).
        self.settle_contradiction();
        let (board, request) = self.plan.pop_front()?;
        let expected = self.expected_frames(board, request.command);
        self.current =
            Some(Current { board, request, frames: Vec::new(), expected, rejection: None, contradiction: None });
        // Whatever is still buffered belongs to an earlier request.
        self.deframer.clear();
        let label = format!("0x{:02x} board {}", request.command.code(), request.address.reply_board());
        let optional = INFO_COMMANDS.contains(&request.command);
        // A reply of unknown length (identity strings) is at least one frame.
        let reply_len = expected.unwrap_or(1).saturating_mul(super::FRAME_LEN);
        Some(Outgoing { bytes: request.encode().to_vec(), label, optional, reply_len })
    }

    fn handle_bytes(&mut self, bytes: &[u8]) -> Progress {
        let Some(current) = self.current.as_mut() else { return Progress::Pending };
        self.deframer.push(bytes);
        while let Some(event) = self.deframer.poll() {
            let accepted = match event {
                Event::Frame(bytes) => {
                    Frame::parse(&bytes).and_then(|f| check_reply(&f, Some(&current.request)).map(|c| (f, c)))
                }
                Event::Echo(bytes) => {
                    // Half-duplex adapters loop our request back: expected, and the least telling rejection.
                    let address = bytes.get(1).copied().unwrap_or_default();
                    current.rejection.get_or_insert(DecodeError::HostEcho { address });
                    continue;
                }
                Event::Rejected(error) => Err(error),
            };
            match accepted {
                Ok((frame, command)) => {
                    let number = frame.data.first().copied();
                    let duplicate =
                        is_multi_frame(command) && current.frames.iter().any(|(_, _, d)| d.first().copied() == number);
                    if !duplicate {
                        current.frames.push((frame.address, command, frame.data));
                    }
                }
                Err(error) => current.rejection = Some(error),
            }
        }
        // An identity string that ends in NUL padding is complete; one that fills its frames may go on.
        let padded = current.request.command == Command::Identity
            && current.frames.iter().any(|(_, _, data)| data.get(1..).is_some_and(|text| text.contains(&0)));
        let multi = is_multi_frame(current.request.command);
        match current.expected {
            // A multi-frame reply is complete when every frame number has come, not merely as many frames.
            Some(_) if multi && !current.frames.is_empty() && current.missing().is_none() => self.take_reply(),
            Some(expected) if !multi && current.frames.len() >= expected => self.take_reply(),
            None if padded && current.missing().is_none() => self.take_reply(),
            None if !current.frames.is_empty() => Progress::Settling,
            _ => Progress::Pending,
        }
    }

    fn handle_quiet(&mut self) -> Progress {
        let Some(current) = self.current.as_mut() else { return Progress::Pending };
        if current.frames.is_empty() {
            return Progress::Pending;
        }
        // The reply has ended with a frame missing inside it: nothing more is coming, so ask again now.
        if let Some(missing) = current.missing() {
            return Progress::Retry(current.incomplete(missing));
        }
        self.take_reply()
    }

    fn handle_unanswered(&mut self) {
        let Some(current) = self.current.as_ref() else { return };
        let command = current.request.command;
        let Some(memory) = self.memory.get_mut(current.board) else { return };
        match memory.info_misses.iter_mut().find(|(c, _)| *c == command) {
            Some((_, misses)) => *misses = misses.saturating_add(1),
            None => memory.info_misses.push((command, 1)),
        }
        if memory.misses(command) == INFO_GIVE_UP_MISSES {
            // Given up now: the next re-probe is a full interval away.
            memory.polls_since_reprobe = 0;
        }
    }

    fn clear_reply(&mut self) -> Option<DecodeError> {
        // A frame cut short is still in the deframer: `finish` names it (truncated) and counts its bytes.
        let cut = self.deframer.finish();
        self.deframer.clear();
        let current = self.current.as_mut()?;
        // Frames that came without completing the reply: the gap is the reason, unless a rejection explains it.
        if let Some(missing) = current.missing().filter(|_| !current.frames.is_empty()) {
            current.incomplete(missing);
        }
        current.frames.clear();
        current.rejection.take().or(cut)
    }

    fn abandon_target(&mut self) {
        let Some(board) = self.current.as_ref().map(|c| c.board) else { return };
        if !self.answered.get(board).copied().unwrap_or(false) {
            self.plan.retain(|(b, _)| *b != board);
        }
    }

    fn skipped_bytes(&self) -> u64 {
        self.deframer.skipped_bytes()
    }

    fn snapshot(&self) -> DeviceSnapshot {
        let mut device = DeviceSnapshot::default();
        for (board, address) in self.addresses.iter().enumerate() {
            let pack = address.reply_board();
            let answered = self.answered.get(board).copied().unwrap_or(false);
            if !answered {
                device.pack_mut(pack).online = false;
                continue;
            }
            // Cached replies stand in for the commands this poll did not send.
            let replies = self.accepted(board);
            device.pack_mut(pack);
            apply(&mut device, &replies, &self.options_for(board));
        }
        device
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::CurrentSign;
    use crate::simulator::Responder;
    use crate::simulator::daly::DalyBus;

    fn exchange(boards: &[Address]) -> DalyExchange {
        DalyExchange::new(
            boards.to_vec(),
            Filler::Zero,
            DecodeOptions { current_sign: CurrentSign::Auto, ..DecodeOptions::default() },
        )
    }

    /// Run one poll against `bus`, answering every request at once; returns the requests sent.
    fn poll(x: &mut DalyExchange, bus: &mut DalyBus, sections: Sections) -> Vec<Outgoing> {
        x.begin_poll(sections);
        let mut sent = Vec::new();
        while let Some(request) = x.next_request() {
            let reply = bus.respond(&request.bytes).map(|r| r.reply).unwrap_or_default();
            let progress = x.handle_bytes(&reply);
            let progress = if progress == Progress::Settling { x.handle_quiet() } else { progress };
            assert_eq!(progress, Progress::Complete, "{}", request.label);
            sent.push(request);
        }
        sent
    }

    fn commands(sent: &[Outgoing]) -> Vec<u8> {
        sent.iter().map(|o| o.bytes[2]).collect()
    }

    #[test]
    fn a_full_poll_matches_the_simulated_truth_without_asking_for_the_ranges() {
        let mut bus = DalyBus::new(1, 16, 4, 7);
        let mut x = exchange(&[Address::Rs485]);
        let sent = poll(&mut x, &mut bus, Sections::all());
        assert_eq!(commands(&sent), vec![0x94, 0x90, 0x93, 0x95, 0x96, 0x97, 0x98, 0x50, 0x57, 0x63]);
        let got = &x.snapshot().packs[0];
        let truth = &bus.truth().packs[0];
        assert_eq!(got.cell_volts.len(), 16);
        for (g, t) in got.cell_volts.iter().zip(&truth.cell_volts) {
            assert!((g.unwrap() - t.unwrap()).abs() < 0.0011, "{g:?} vs {t:?}");
        }
        assert!((got.voltage_volts.unwrap() - truth.voltage_volts.unwrap()).abs() < 0.11);
        assert!((got.current_amperes.unwrap() - truth.current_amperes.unwrap()).abs() < 0.11);
        assert_eq!(got.temperatures.len(), 4);
        assert_eq!(got.cycle_count, truth.cycle_count);
        assert_eq!(got.alarms.iter().filter(|a| a.active).count(), truth.alarms.iter().filter(|a| a.active).count());
        assert!(got.online);
    }

    #[test]
    fn later_polls_reuse_counts_and_identity_and_refresh_the_status_rarely() {
        let mut bus = DalyBus::new(1, 16, 4, 7);
        let mut x = exchange(&[Address::Rs485]);
        poll(&mut x, &mut bus, Sections::all());
        let second = poll(&mut x, &mut bus, Sections::all());
        assert_eq!(commands(&second), vec![0x90, 0x93, 0x95, 0x96, 0x97, 0x98]);
        let snapshot = x.snapshot();
        assert_eq!(snapshot.packs[0].cell_count, Some(16), "cached 0x94 still applies");
        assert!(snapshot.packs[0].design_capacity_ampere_hours.is_some(), "cached 0x50 still applies");
        let mut status_polls = 0;
        for _ in 0..STATUS_REFRESH_POLLS * 2 {
            status_polls += usize::from(commands(&poll(&mut x, &mut bus, Sections::all())).contains(&0x94));
        }
        assert_eq!(status_polls, 2);
    }

    #[test]
    fn a_limited_poll_sends_only_what_its_sections_need() {
        let mut bus = DalyBus::new(1, 16, 4, 7);
        let mut x = exchange(&[Address::Rs485]);
        let sent = poll(&mut x, &mut bus, Sections::none().with(Section::Cells));
        assert_eq!(commands(&sent), vec![0x94, 0x95], "the cell count comes first");
        let sent = poll(&mut x, &mut bus, Sections::none().with(Section::Alarms));
        assert_eq!(commands(&sent), vec![0x98]);
    }

    #[test]
    fn two_boards_on_one_bus_become_two_packs() {
        let mut bus = DalyBus::new(2, 8, 2, 3);
        let mut x = exchange(&[Address::Board(1), Address::Board(2)]);
        poll(&mut x, &mut bus, Sections::all());
        let snapshot = x.snapshot();
        let truth = bus.truth();
        assert_eq!(snapshot.packs.iter().map(|p| p.pack).collect::<Vec<_>>(), vec![1, 2]);
        for (got, t) in snapshot.packs.iter().zip(&truth.packs) {
            assert_eq!(got.cell_volts.len(), 8);
            assert!((got.cell_volts[0].unwrap() - t.cell_volts[0].unwrap()).abs() < 0.0011);
        }
    }

    #[test]
    fn a_reply_split_anywhere_completes_the_same_way() {
        let mut bus = DalyBus::new(1, 16, 4, 7);
        let mut x = exchange(&[Address::Rs485]);
        poll(&mut x, &mut bus, Sections::none().with(Section::Status));
        x.begin_poll(Sections::none().with(Section::Cells));
        let request = x.next_request().unwrap();
        let reply = bus.respond(&request.bytes).unwrap().reply;
        for cut in 1..reply.len() {
            x.clear_reply();
            assert_eq!(x.handle_bytes(&reply[..cut]), Progress::Pending);
            if cut < reply.len() {
                let mut y = x.clone();
                assert_eq!(y.handle_bytes(&reply[cut..]), Progress::Complete, "cut at {cut}");
            }
        }
    }

    #[test]
    fn bad_echoed_and_foreign_frames_never_become_values() {
        let mut bus = DalyBus::new(1, 16, 4, 7);
        let mut x = exchange(&[Address::Rs485]);
        x.begin_poll(Sections::none().with(Section::Soc));
        let request = x.next_request().unwrap();
        let response = bus.respond(&request.bytes).unwrap();
        let mut corrupt = response.reply.clone();
        corrupt[6] ^= 0x10;
        assert_eq!(x.handle_bytes(&request.bytes), Progress::Pending, "our own echo");
        assert_eq!(x.handle_bytes(&corrupt), Progress::Pending);
        assert_eq!(x.handle_bytes(&response.other), Progress::Pending, "a reply to another command");
        assert!(matches!(x.clear_reply(), Some(DecodeError::UnexpectedCommand { .. })));
        assert_eq!(x.handle_bytes(&corrupt), Progress::Pending);
        assert!(matches!(x.clear_reply(), Some(DecodeError::Checksum { .. })));
        assert_eq!(x.handle_bytes(&response.reply), Progress::Complete);
        assert!(x.next_request().is_some(), "0x93 follows 0x90");
        let snapshot = x.snapshot();
        assert!(snapshot.packs[0].voltage_volts.is_some());
    }

    /// Raise frame byte `raise` of the frame at `frame` by `by` and lower byte `lower` by as much: the additive
    /// checksum still matches, which is what a gross line corruption can do.
    fn gross(bytes: &mut [u8], frame: usize, raise: usize, lower: usize, by: u8) {
        let at = frame * super::super::FRAME_LEN;
        bytes[at + raise] = bytes[at + raise].wrapping_add(by);
        bytes[at + lower] = bytes[at + lower].wrapping_sub(by);
        assert!(super::super::Frame::parse(&bytes[at..at + 13]).is_ok(), "the checksum still matches");
    }

    /// An exchange with the counts known (0x94 answered) and `sections` begun, at its first request.
    fn counted(bus: &mut DalyBus, sections: Sections) -> (DalyExchange, Outgoing) {
        let mut x = exchange(&[Address::Rs485]);
        poll(&mut x, bus, Sections::none().with(Section::Status));
        x.begin_poll(sections);
        let request = x.next_request().unwrap();
        (x, request)
    }

    #[test]
    fn a_checksum_valid_reply_with_an_implausible_value_is_rejected_whole_and_a_later_good_one_is_taken() {
        // Data byte 4 (current high byte) raised by 0x80: beyond 3000 A. Data byte 1 (voltage low byte) raised
        // and byte 3 (gathered voltage low) lowered: the gathered voltage wraps to 6553 V, which the model never
        // shows, but the total voltage beside it is 25.6 V off, so the whole frame must go.
        for (raise, lower) in [(8, 11), (6, 5)] {
            let mut bus = DalyBus::new(1, 16, 4, 7);
            let (mut x, request) = counted(&mut bus, Sections::none().with(Section::Soc));
            let good = bus.respond(&request.bytes).unwrap().reply;
            let mut bad = good.clone();
            gross(&mut bad, 0, raise, lower, 0x80);
            let progress = x.handle_bytes(&bad);
            assert!(matches!(progress, Progress::Retry(DecodeError::Implausible { .. })), "{raise}: {progress:?}");
            assert_eq!(x.clear_reply().map(|e| e.reason()), Some("implausible"));
            let pack = x.snapshot().packs[0].clone();
            assert_eq!((pack.voltage_volts, pack.current_amperes, pack.state_of_charge_ratio), (None, None, None));
            assert_eq!(x.handle_bytes(&good), Progress::Complete);
            let truth = bus.truth().packs[0].clone();
            assert!((x.snapshot().packs[0].voltage_volts.unwrap() - truth.voltage_volts.unwrap()).abs() < 0.051);
        }
    }

    #[test]
    fn one_implausible_frame_of_a_multi_frame_reply_rejects_every_frame_of_it() {
        // 0x95: cell 7 (frame 3, data bytes 1–2) raised by 16.4 V, and the same frame's reserved byte lowered.
        // 0x96: sensor 1 raised by 192 °C, an unused slot of the same frame lowered.
        for (section, frame, by) in [(Section::Cells, 2, 0x40), (Section::Temperatures, 0, 0xC0)] {
            let mut bus = DalyBus::new(1, 16, 4, 7);
            let (mut x, request) = counted(&mut bus, Sections::none().with(section));
            let good = bus.respond(&request.bytes).unwrap().reply;
            let mut bad = good.clone();
            gross(&mut bad, frame, 5, 11, by);
            assert!(matches!(x.handle_bytes(&bad), Progress::Retry(DecodeError::Implausible { .. })), "{section:?}");
            x.clear_reply();
            let pack = x.snapshot().packs[0].clone();
            assert!(pack.cell_volts.is_empty() && pack.temperatures.is_empty(), "{section:?}: nothing of it is kept");
            assert_eq!(x.handle_bytes(&good), Progress::Complete, "{section:?}");
            let pack = x.snapshot().packs[0].clone();
            let read = if section == Section::Cells {
                pack.cell_volts.iter().flatten().count()
            } else {
                pack.temperatures.len()
            };
            assert_eq!(read, if section == Section::Cells { 16 } else { 4 });
        }
    }

    #[test]
    fn cells_that_contradict_the_pack_voltage_are_asked_again_and_if_none_agree_neither_is_exported() {
        let sections = Sections::none().with(Section::Soc).with(Section::Cells);
        // The cells are right and the 0x90 voltage says 40 V (16 cells of ~3.3 V sum to ~53 V, 24 % more):
        // plausible alone.
        let mut bus = DalyBus::new(1, 16, 4, 7);
        let (mut x, _soc) = counted(&mut bus, sections);
        let wrong_soc = Message::Soc(super::super::Soc::new(40.0, 2.0, 50.0)).encode(1);
        assert_eq!(x.handle_bytes(&wrong_soc), Progress::Complete);
        let mosfet = x.next_request().unwrap();
        assert_eq!(x.handle_bytes(&bus.respond(&mosfet.bytes).unwrap().reply), Progress::Complete);
        let cells = x.next_request().unwrap();
        let good = bus.respond(&cells.bytes).unwrap().reply;
        for _ in 0..3 {
            assert!(matches!(x.handle_bytes(&good), Progress::Retry(DecodeError::Implausible { .. })));
            assert_eq!(x.clear_reply().map(|e| e.kind()), Some("implausible"));
        }
        // The session gives the request up and asks for the next: both sides of the contradiction leave the poll.
        assert!(x.next_request().is_none());
        let pack = x.snapshot().packs[0].clone();
        assert_eq!((pack.voltage_volts, pack.current_amperes, pack.cell_volts.len()), (None, None, 0));
        assert!(pack.remaining_capacity_ampere_hours.is_some(), "0x93 was not part of it");

        // The 0x90 voltage is right and the first 0x95 reply has nine cells 1.5 V high (each still below 5 V, the
        // sum 26 % high): the retry agrees, so both are kept.
        let mut bus = DalyBus::new(1, 16, 4, 7);
        let (mut x, soc) = counted(&mut bus, sections);
        assert_eq!(x.handle_bytes(&bus.respond(&soc.bytes).unwrap().reply), Progress::Complete);
        let mosfet = x.next_request().unwrap();
        assert_eq!(x.handle_bytes(&bus.respond(&mosfet.bytes).unwrap().reply), Progress::Complete);
        let cells = x.next_request().unwrap();
        let good = bus.respond(&cells.bytes).unwrap().reply;
        let mut high = good.clone();
        for frame in 0..3 {
            // Cells 1–9: data bytes 1, 3 and 5 (frame bytes 5, 7, 9) carry their high bytes; +6 is +1.536 V.
            for raise in [5, 7, 9] {
                gross(&mut high, frame, raise, 11, 6);
            }
        }
        assert!(matches!(x.handle_bytes(&high), Progress::Retry(DecodeError::Implausible { .. })));
        x.clear_reply();
        assert_eq!(x.handle_bytes(&good), Progress::Complete);
        assert!(x.next_request().is_none());
        let pack = x.snapshot().packs[0].clone();
        assert!(pack.voltage_volts.is_some());
        assert_eq!(pack.cell_volts.iter().flatten().count(), 16);
    }

    /// `reply` (whole 13-byte frames) without its frames at `lost` (0-based positions).
    fn without_frames(reply: &[u8], lost: &[usize]) -> Vec<u8> {
        let frames = reply.chunks(super::super::FRAME_LEN).enumerate();
        frames.filter(|(i, _)| !lost.contains(i)).flat_map(|(_, f)| f.to_vec()).collect()
    }

    #[test]
    fn a_multi_frame_reply_missing_a_frame_inside_it_is_never_taken_and_is_asked_again() {
        // Over Bluetooth (host 0x80, 16 cell frames) and on RS485 (six frames for 16 cells), with the counts
        // known or not (0x94 lost): a reply with a frame lost in the middle, or only as many frames as expected
        // because one came twice, is incomplete; the whole reply asked again is taken.
        for address in [Address::Uart, Address::Rs485] {
            for counts_known in [true, false] {
                let what = format!("{address:?}, counts known: {counts_known}");
                let mut bus = DalyBus::new(1, 16, 4, 7);
                let mut x = exchange(&[address]);
                if counts_known {
                    poll(&mut x, &mut bus, Sections::none().with(Section::Status));
                }
                x.begin_poll(Sections::none().with(Section::Cells));
                if !counts_known {
                    let status = x.next_request().unwrap();
                    assert_eq!(status.bytes[2], 0x94);
                    assert_eq!(x.clear_reply(), None, "0x94 lost");
                }
                let cells = x.next_request().unwrap();
                assert_eq!(cells.bytes[2], 0x95, "{what}");
                let reply = bus.respond(&cells.bytes).unwrap().reply;
                let frames = reply.len() / super::super::FRAME_LEN;
                assert_eq!(frames, if address == Address::Uart { 16 } else { 6 }, "{what}");

                let holed = without_frames(&reply, &[2]);
                let progress = x.handle_bytes(&holed);
                let progress = if progress == Progress::Settling { x.handle_quiet() } else { progress };
                assert_ne!(progress, Progress::Complete, "{what}: a reply without frame 3 was taken");
                let error = x.clear_reply();
                assert!(
                    matches!(error, Some(DecodeError::MissingFrame { number: 3, .. })),
                    "{what}: the failure names the missing frame: {error:?}"
                );
                assert!(x.snapshot().packs.iter().all(|p| p.cell_volts.is_empty()), "{what}: no cell of it is kept");

                // As many frames as expected, one of them twice and frame 3 lost: still incomplete.
                let mut doubled = holed.clone();
                doubled.extend_from_slice(&reply[..super::super::FRAME_LEN]);
                let progress = x.handle_bytes(&doubled);
                let progress = if progress == Progress::Settling { x.handle_quiet() } else { progress };
                assert_ne!(progress, Progress::Complete, "{what}: a repeated frame stood in for frame 3");
                x.clear_reply();

                let progress = x.handle_bytes(&reply);
                let progress = if progress == Progress::Settling { x.handle_quiet() } else { progress };
                assert_eq!(progress, Progress::Complete, "{what}: the whole reply");
                let pack = x.snapshot().packs[0].clone();
                assert_eq!(pack.cell_volts.iter().flatten().count(), 16, "{what}: {:?}", pack.cell_volts);
            }
        }
    }

    #[test]
    fn over_bluetooth_the_cell_and_temperature_replies_are_complete_at_their_fixed_frame_counts() {
        // Host 0x80 always gets 16 and 3 frames: without the counts the reply still completes the moment its last
        // frame is in, and a reply missing its last frame is incomplete, not a shorter battery.
        let mut bus = DalyBus::new(1, 16, 4, 7);
        let mut x = exchange(&[Address::Uart]);
        x.begin_poll(Sections::none().with(Section::Cells).with(Section::Temperatures));
        let _status = x.next_request().unwrap();
        assert_eq!(x.clear_reply(), None, "0x94 lost");
        let cells = x.next_request().unwrap();
        let reply = bus.respond(&cells.bytes).unwrap().reply;
        assert_eq!(x.handle_bytes(&without_frames(&reply, &[15])), Progress::Pending);
        assert!(matches!(x.clear_reply(), Some(DecodeError::MissingFrame { number: 16, .. })));
        assert_eq!(x.handle_bytes(&reply), Progress::Complete);
        let temperatures = x.next_request().unwrap();
        let reply = bus.respond(&temperatures.bytes).unwrap().reply;
        assert_eq!(x.handle_bytes(&reply), Progress::Complete);
        let pack = x.snapshot().packs[0].clone();
        assert_eq!((pack.cell_volts.iter().flatten().count(), pack.temperatures.len()), (16, 4));
    }

    #[test]
    fn a_frame_that_failed_its_checksum_is_named_as_the_cause_of_the_gap() {
        let mut bus = DalyBus::new(1, 16, 4, 7);
        let (mut x, request) = counted(&mut bus, Sections::none().with(Section::Cells));
        let mut reply = bus.respond(&request.bytes).unwrap().reply;
        reply[2 * super::super::FRAME_LEN + 6] ^= 0x01;
        assert_eq!(x.handle_bytes(&reply), Progress::Pending);
        assert!(matches!(x.clear_reply(), Some(DecodeError::Checksum { .. })));
    }

    /// Run one poll against `bus` the way the session does with optional reads: an unanswered one is given up
    /// through `handle_unanswered`. Returns the codes of the requests sent.
    fn poll_unanswered(x: &mut DalyExchange, bus: &mut DalyBus) -> Vec<u8> {
        x.begin_poll(Sections::all());
        let mut sent = Vec::new();
        while let Some(request) = x.next_request() {
            sent.push(request.bytes[2]);
            if let Some(response) = bus.respond(&request.bytes) {
                let progress = x.handle_bytes(&response.reply);
                let progress = if progress == Progress::Settling { x.handle_quiet() } else { progress };
                assert_eq!(progress, Progress::Complete, "{}", request.label);
            } else {
                assert!(request.optional, "{} is not optional", request.label);
                x.clear_reply();
                x.handle_unanswered();
            }
        }
        sent
    }

    #[test]
    fn identity_reads_are_optional_with_their_reply_length_and_the_rest_are_not() {
        let mut x = exchange(&[Address::Rs485]);
        x.begin_poll(Sections::none().with(Section::Info).with(Section::Soc));
        let mut seen = Vec::new();
        while let Some(request) = x.next_request() {
            seen.push((request.bytes[2], request.optional, request.reply_len));
        }
        // 0x57's battery code is five frames, the identity string at least one.
        assert_eq!(seen, [(0x90, false, 13), (0x93, false, 13), (0x50, true, 13), (0x57, true, 65), (0x63, true, 13)]);
    }

    #[test]
    fn identity_reads_unanswered_twice_in_a_row_are_dropped_and_asked_again_rarely() {
        let mut bus = DalyBus::new(1, 16, 4, 7).without_identity();
        let mut x = exchange(&[Address::Rs485]);
        let has = |sent: &[u8], code: u8| sent.contains(&code);
        // Two misses in a row: asked in both polls (one miss may be bad luck).
        for poll in 1..=INFO_GIVE_UP_MISSES {
            let sent = poll_unanswered(&mut x, &mut bus);
            assert!(has(&sent, 0x57) && has(&sent, 0x63), "poll {poll}: {sent:02x?}");
        }
        assert!(x.snapshot().packs[0].info.model.is_none());
        // Then not again until the re-probe interval has passed, while 0x50 (answered) is cached.
        for poll in 1..INFO_REPROBE_POLLS {
            let sent = poll_unanswered(&mut x, &mut bus);
            assert!(!has(&sent, 0x57) && !has(&sent, 0x63) && !has(&sent, 0x50), "poll {poll}: {sent:02x?}");
        }
        let sent = poll_unanswered(&mut x, &mut bus);
        assert!(has(&sent, 0x57) && has(&sent, 0x63) && !has(&sent, 0x50), "the re-probe: {sent:02x?}");
        // Still unanswered: given up for another interval at once.
        let sent = poll_unanswered(&mut x, &mut bus);
        assert!(!has(&sent, 0x57) && !has(&sent, 0x63), "{sent:02x?}");
        // A board that answers a re-probe (its identity was only late) keeps its identity from then on.
        let mut answering = DalyBus::new(1, 16, 4, 7);
        for _ in 2..INFO_REPROBE_POLLS {
            poll_unanswered(&mut x, &mut answering);
        }
        let sent = poll_unanswered(&mut x, &mut answering);
        assert!(has(&sent, 0x57) && has(&sent, 0x63), "{sent:02x?}");
        assert_eq!(x.snapshot().packs[0].info.model.as_deref(), Some(crate::simulator::daly::DEFAULT_MODEL));
        let sent = poll_unanswered(&mut x, &mut answering);
        assert!(!has(&sent, 0x57) && !has(&sent, 0x63), "answered identity is read once: {sent:02x?}");
    }

    #[test]
    fn one_miss_then_an_answer_keeps_the_identity_read() {
        let mut silent = DalyBus::new(1, 16, 4, 7).without_identity();
        let mut answering = DalyBus::new(1, 16, 4, 7);
        let mut x = exchange(&[Address::Rs485]);
        poll_unanswered(&mut x, &mut silent);
        let sent = poll_unanswered(&mut x, &mut answering);
        assert!(sent.contains(&0x63));
        assert!(x.snapshot().packs[0].info.model.is_some());
        // The miss count was reset by the answer: a later miss alone does not give the read up.
        assert!(x.memory[0].info_misses.is_empty());
    }

    #[test]
    fn unknown_cell_count_settles_on_quiet_and_a_silent_board_is_offline() {
        let mut bus = DalyBus::new(1, 16, 4, 7);
        let mut x = exchange(&[Address::Rs485, Address::Board(5)]);
        x.begin_poll(Sections::none().with(Section::Cells));
        // Skip the 0x94 of board 1 as if it timed out, then answer 0x95 without a known count.
        let _status = x.next_request().unwrap();
        assert_eq!(x.clear_reply(), None);
        let cells = x.next_request().unwrap();
        let reply = bus.respond(&cells.bytes).unwrap().reply;
        assert_eq!(x.handle_bytes(&reply), Progress::Settling);
        assert_eq!(x.handle_quiet(), Progress::Complete);
        let snapshot = x.snapshot();
        assert_eq!(snapshot.packs.len(), 2);
        assert!(snapshot.packs[0].online && !snapshot.packs[1].online);
        assert_eq!(snapshot.packs[0].cell_volts.iter().flatten().count(), 16);
    }
}
