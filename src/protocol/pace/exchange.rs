//! pace side of a poll: the [`crate::protocol::Exchange`] implementation.
//!
//! Request plan (poll economy, `docs/protocols/pace.md#poll-plan`): 0x42 analog when `soc`, `mosfet`, `status`, `cells`
//! or `temperatures` is asked; 0x44 status when `mosfet`, `balancing` or `alarms` is asked. With [`PackSelection::All`]
//! each is one all-packs read (COMMAND 0xFF) that the master answers for every pack; once the master refuses an
//! all-packs read (RTN error), the pack count is read once (0x90) and from then on every pack is asked on its own. With
//! [`PackSelection::List`] exactly the listed packs are asked. `info` reads the software version (0xC1) and product
//! information (0xC2) once; the results are cached, a refusal is remembered. VER 0x20 (Pylon) asks 0x42 only: the codec
//! reads neither its 0x44 layout nor its identity commands.

use std::collections::VecDeque;

use super::apply::apply;
use super::frame::PaceFraming;
use super::request::{ALL_PACKS, Command, MAX_PACK, Request, VER_PYLON};
use super::{Reply, check_plausible, decode_reply};
use crate::model::{CurrentSign, DeviceSnapshot, Section, Sections};
use crate::protocol::deframer::{Deframer, Event};
use crate::protocol::exchange::{OptionalRead, Rejections};
use crate::protocol::{DecodeError, Exchange, Outgoing, Progress, Protocol};

/// Below this, a "cell voltage" is not one (see [`check_answers`]).
const MIN_REAL_CELL_MV: u16 = 1000;

/// Which packs behind the addressed BMS a poll reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PackSelection {
    /// Every pack the master sees: all-packs reads where the master supports them.
    All,
    /// Exactly these pack numbers (1–16), each asked on its own.
    List(Vec<u8>),
}

/// One step of a poll's plan.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    /// Send this command.
    Ask(Command),
    /// Ask every pack on its own (after the master refused all-packs reads); needs the pack count.
    EachPack,
}

/// Which pack reads a poll wants.
#[derive(Debug, Clone, Copy, Default)]
struct Wanted {
    /// 0x42 analog values.
    analog: bool,
    /// 0x44 status.
    status: bool,
}

/// The request in flight and what has come of it.
#[derive(Debug, Clone)]
struct Current {
    request: Request,
    outcome: Option<Progress>,
}

/// The Pace side of a poll, for one BMS address (a master and the packs behind it, or a stand-alone pack).
#[derive(Debug)]
pub struct PaceExchange {
    adr: u8,
    packs: PackSelection,
    ver: u8,
    deframer: Deframer<PaceFraming>,
    plan: VecDeque<Step>,
    current: Option<Current>,
    rejections: Rejections,
    device: DeviceSnapshot,
    /// The pack reads this poll wants (kept for re-planning after an all-packs refusal).
    wanted: Wanted,
    /// The master refused an all-packs read: ask pack by pack.
    all_packs_refused: bool,
    /// The pack count read with 0x90, once.
    pack_count: Option<u8>,
    /// A 0x90 read was tried in this poll (so a failed one is not repeated forever).
    pack_count_tried: bool,
    /// Cached identity replies (0xC1, 0xC2).
    info: Vec<Reply>,
    /// Identity commands the BMS refused: never asked again.
    info_refused: Vec<Command>,
    /// The identity reads' record of silence (0xC1, 0xC2: a BMS may ignore them rather than refuse them).
    info_reads: [OptionalRead; 2],
}

impl PaceExchange {
    /// An exchange for the BMS at address `adr`, reading `packs`, sending protocol version `ver` (0x25 Pace,
    /// 0x20 Pylon).
    #[must_use]
    pub fn new(adr: u8, packs: PackSelection, ver: u8) -> Self {
        Self {
            adr,
            packs,
            ver,
            deframer: Deframer::new(PaceFraming::default()),
            plan: VecDeque::new(),
            current: None,
            rejections: Rejections::default(),
            device: DeviceSnapshot::default(),
            wanted: Wanted::default(),
            all_packs_refused: false,
            pack_count: None,
            pack_count_tried: false,
            info: Vec::new(),
            info_refused: Vec::new(),
            info_reads: [OptionalRead::default(); 2],
        }
    }

    fn pylon(&self) -> bool {
        self.ver == VER_PYLON
    }

    /// The 0x42/0x44 steps for pack `command` that this poll wants.
    fn pack_steps(&self, command: u8) -> impl Iterator<Item = Step> + use<> {
        let analog = self.wanted.analog.then_some(Step::Ask(Command::Analog(command)));
        let status = self.wanted.status.then_some(Step::Ask(Command::Status(command)));
        analog.into_iter().chain(status)
    }

    /// The next command to send, expanding [`Step::EachPack`] once the pack count is known.
    fn next_command(&mut self) -> Option<Command> {
        loop {
            match self.plan.pop_front()? {
                Step::Ask(command) => return Some(command),
                Step::EachPack => match self.pack_count {
                    Some(count) => {
                        let steps: Vec<Step> =
                            (1..=count.clamp(1, MAX_PACK)).flat_map(|n| self.pack_steps(n)).collect();
                        for step in steps.into_iter().rev() {
                            self.plan.push_front(step);
                        }
                    }
                    None if !self.pack_count_tried => {
                        self.pack_count_tried = true;
                        self.plan.push_front(Step::EachPack);
                        return Some(Command::PackCount);
                    }
                    None => {
                        // The count could not be read: the master itself is pack 1.
                        let steps: Vec<Step> = self.pack_steps(1).collect();
                        for step in steps.into_iter().rev() {
                            self.plan.push_front(step);
                        }
                    }
                },
            }
        }
    }

    /// Take in a complete, envelope-checked frame as the answer to `request`.
    fn on_frame(&mut self, request: Request, frame: &[u8]) -> Result<Progress, DecodeError> {
        let reply = match decode_reply(frame, Some(&request)) {
            Ok(reply) => reply,
            Err(error @ DecodeError::ReturnCode { .. }) => {
                return Ok(if self.on_refusal(request.command) {
                    Progress::Unsupported
                } else {
                    Progress::Refused(error)
                });
            }
            Err(error) => return Err(error),
        };
        check_answers(&reply, request.command)?;
        if let Err(error) = check_plausible(&reply, &self.device) {
            // The CHKSUM held, so this is the BMS's whole reply, read wrong: ask again now, keep nothing of it.
            return Ok(Progress::Retry(error));
        }
        match &reply {
            Reply::PackCount(r) => self.pack_count = Some(r.pack_count),
            Reply::SoftwareVersion(_) | Reply::ProductInfo(_) => {
                if let Some(read) = self.info_read(request.command) {
                    read.answered();
                }
                self.info.push(reply.clone());
            }
            _ => {}
        }
        apply(&reply, CurrentSign::ChargePositive, &mut self.device);
        Ok(Progress::Complete)
    }

    /// The silence record of identity read `command` (`None` for any other command).
    fn info_read(&mut self, command: Command) -> Option<&mut OptionalRead> {
        match command {
            Command::SoftwareVersion => self.info_reads.get_mut(0),
            Command::ProductInfo => self.info_reads.get_mut(1),
            _ => None,
        }
    }

    /// Remember what a refusal says about the BMS; whether that settles the request (a fallback is planned, or
    /// the read was optional) rather than failing it.
    fn on_refusal(&mut self, command: Command) -> bool {
        match command {
            Command::Analog(ALL_PACKS) | Command::Status(ALL_PACKS) => {
                self.all_packs_refused = true;
                // The rest of this poll asks pack by pack instead.
                self.plan.retain(|step| !matches!(step, Step::Ask(c) if c.is_all_packs()));
                self.plan.push_front(Step::EachPack);
                true
            }
            Command::SoftwareVersion | Command::ProductInfo => {
                self.info_refused.push(command);
                true
            }
            // Without a count the master itself is taken as pack 1 (`next_command`).
            Command::PackCount => true,
            _ => false,
        }
    }
}

/// Refuse a reply that decodes but cannot answer `command`: a one-pack read is answered by the pack asked (second INFO
/// byte = COMMAND, `docs/protocols/pace.md#addresses-and-packs`), and an analog block that reports itself online has
/// real cell voltages.
fn check_answers(reply: &Reply, command: Command) -> Result<(), DecodeError> {
    let echoed = match reply {
        Reply::Analog(r) => (!r.all_packs).then_some(r.count_or_command),
        Reply::Status(r) => (!r.all_packs).then_some(r.count_or_command),
        _ => None,
    };
    if let (Some(found), Some(expected @ 1..=MAX_PACK)) = (echoed, command.pack_command())
        && found != expected
    {
        return Err(DecodeError::UnexpectedCommand { expected, found });
    }
    // Pace replies do not name their command: a 0x44 reply whose bytes happen to fit the 0x42 layout would put
    // its level bytes (0, 1, 2…) where the millivolts belong. No lithium cell of a working pack reads below 1 V.
    if let Reply::Analog(r) = reply
        && r.packs.iter().any(|p| p.online && p.cells_mv.iter().all(|&mv| mv < MIN_REAL_CELL_MV))
    {
        return Err(DecodeError::Implausible { why: "an online pack whose cells all read below 1 V" });
    }
    Ok(())
}

/// Label of a request, for logs.
fn label(request: Request) -> String {
    let what = match request.command {
        Command::Analog(ALL_PACKS) => "0x42 analog, all packs".to_owned(),
        Command::Analog(n) => format!("0x42 analog, pack {n}"),
        Command::Status(ALL_PACKS) => "0x44 status, all packs".to_owned(),
        Command::Status(n) => format!("0x44 status, pack {n}"),
        Command::SoftwareVersion => "0xC1 software version".to_owned(),
        Command::ProductInfo => "0xC2 product information".to_owned(),
        Command::PackCapacity => "0xA6 pack capacity".to_owned(),
        Command::PackCount => "0x90 pack count".to_owned(),
        Command::DateTime => "0xB1 date and time".to_owned(),
    };
    format!("{what} (ADR {})", request.adr)
}

impl Exchange for PaceExchange {
    fn protocol(&self) -> Protocol {
        Protocol::Pace
    }

    fn begin_poll(&mut self, sections: Sections) {
        use Section::{Alarms, Balancing, Cells, Info, Mosfet, Soc, Status, Temperatures};
        let wants = |list: &[Section]| list.iter().any(|&s| sections.contains(s));
        self.plan.clear();
        self.current = None;
        self.rejections = Rejections::default();
        self.deframer.clear();
        self.pack_count_tried = false;
        self.wanted = Wanted {
            analog: wants(&[Soc, Mosfet, Status, Cells, Temperatures]),
            status: wants(&[Mosfet, Balancing, Alarms]) && !self.pylon(),
        };
        match &self.packs {
            PackSelection::All if self.all_packs_refused => self.plan.push_back(Step::EachPack),
            PackSelection::All => self.plan.extend(self.pack_steps(ALL_PACKS)),
            PackSelection::List(list) => {
                let steps: Vec<Step> = list.iter().flat_map(|&n| self.pack_steps(n)).collect();
                self.plan.extend(steps);
            }
        }
        if sections.contains(Info) && !self.pylon() {
            for command in [Command::SoftwareVersion, Command::ProductInfo] {
                let cached = self.info.iter().any(|r| identity_command(r) == Some(command));
                if !cached
                    && !self.info_refused.contains(&command)
                    && self.info_read(command).is_some_and(OptionalRead::due)
                {
                    self.plan.push_back(Step::Ask(command));
                }
            }
        }
        let mut device = DeviceSnapshot::default();
        for reply in &self.info {
            apply(reply, CurrentSign::ChargePositive, &mut device);
        }
        self.device = device;
    }

    fn next_request(&mut self) -> Option<Outgoing> {
        self.current = None;
        let command = self.next_command()?;
        let request = Request::new(self.adr, command).with_ver(self.ver);
        let bytes = request.encode();
        self.deframer.clear();
        self.deframer.set_framing(PaceFraming::with_request(&bytes));
        self.rejections = Rejections::default();
        self.current = Some(Current { request, outcome: None });
        // The identity reads are optional: a BMS without them may stay silent rather than refuse. Their reply is
        // at least an empty envelope: SOI, twelve header characters, four of checksum, EOI.
        let optional = matches!(command, Command::SoftwareVersion | Command::ProductInfo);
        Some(Outgoing { bytes, label: label(request), optional, reply_len: 18 })
    }

    fn handle_bytes(&mut self, bytes: &[u8]) -> Progress {
        let Some(current) = self.current.clone() else { return Progress::Pending };
        if let Some(outcome) = current.outcome {
            return outcome;
        }
        self.deframer.push(bytes);
        while let Some(event) = self.deframer.poll() {
            let result = match event {
                Event::Frame(frame) => self.on_frame(current.request, &frame),
                Event::Echo(_) => Err(DecodeError::HostEcho { address: current.request.adr }),
                Event::Rejected(error) => Err(error),
            };
            match result {
                Ok(Progress::Retry(error)) => {
                    // Not an outcome: the retry's reply is handled afresh.
                    self.rejections.note(error);
                    return Progress::Retry(error);
                }
                Ok(progress) => {
                    if let Some(c) = self.current.as_mut() {
                        c.outcome = Some(progress);
                    }
                    return progress;
                }
                Err(error) => self.rejections.note(error),
            }
        }
        Progress::Pending
    }

    fn handle_unanswered(&mut self) {
        if let Some(command) = self.current.as_ref().map(|c| c.request.command)
            && let Some(read) = self.info_read(command)
        {
            read.missed();
        }
    }

    fn handle_quiet(&mut self) -> Progress {
        // Frames carry their length: there is never anything to settle.
        self.current.as_ref().and_then(|c| c.outcome).unwrap_or(Progress::Pending)
    }

    fn clear_reply(&mut self) -> Option<DecodeError> {
        if let Some(error) = self.deframer.finish() {
            self.rejections.note(error);
        }
        self.rejections.take()
    }

    fn abandon_target(&mut self) {
        // One device answers every request of this exchange: if it is silent, the rest would be too.
        self.plan.clear();
    }

    fn skipped_bytes(&self) -> u64 {
        self.deframer.skipped_bytes()
    }

    fn snapshot(&self) -> DeviceSnapshot {
        self.device.clone()
    }
}

/// The identity command a cached reply answers.
fn identity_command(reply: &Reply) -> Option<Command> {
    match reply {
        Reply::SoftwareVersion(_) => Some(Command::SoftwareVersion),
        Reply::ProductInfo(_) => Some(Command::ProductInfo),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::PackSnapshot;
    use crate::protocol::exchange::test_support::{cells_close, close, feed_split, poll, poll_with, temperature};
    use crate::protocol::pace::{
        CID1_BATTERY, Header, PackBlock, VER_PACE, encode_analog, encode_error_reply, parse_frame,
    };
    use crate::simulator::pace::{MASTER_ADR, PaceBus};
    use crate::simulator::{Responder, Response};

    const PACKS: u8 = 4;

    fn bus() -> PaceBus {
        let mut bus = PaceBus::new(PACKS, 16, 6, 11);
        for _ in 0..40 {
            bus.step(7.0);
        }
        // Two packs with a switched-off MOSFET, so the status bits are not all alike.
        bus.pack_mut(2).unwrap().set_charge_mosfet(false);
        bus.pack_mut(4).unwrap().set_discharge_mosfet(false);
        bus
    }

    fn all() -> PaceExchange {
        PaceExchange::new(MASTER_ADR, PackSelection::All, VER_PACE)
    }

    fn sections(list: &[Section]) -> Sections {
        list.iter().copied().collect()
    }

    fn commands(sent: &[(Outgoing, Option<Progress>)]) -> Vec<Command> {
        sent.iter().map(|(o, _)| Request::decode(&o.bytes).unwrap().command).collect()
    }

    /// The simulated master, refusing every all-packs read with RTN 0x04 (as a firmware without the relay).
    struct NoAllPacks {
        bus: PaceBus,
    }

    impl Responder for NoAllPacks {
        fn next_request(&mut self, pending: &mut Vec<u8>) -> Option<Vec<u8>> {
            self.bus.next_request(pending)
        }

        fn respond(&mut self, request: &[u8]) -> Option<Response> {
            let mut response = self.bus.respond(request)?;
            if Request::decode(request).is_ok_and(|r| r.command.is_all_packs()) {
                response.reply = encode_error_reply(VER_PACE, MASTER_ADR, CID1_BATTERY, 0x04).unwrap();
            }
            Some(response)
        }

        fn step(&mut self, dt_s: f64) {
            self.bus.step(dt_s);
        }

        fn truth(&self) -> DeviceSnapshot {
            self.bus.truth()
        }
    }

    fn assert_matches_truth(decoded: &PackSnapshot, truth: &PackSnapshot) {
        let n = truth.pack;
        assert_eq!(decoded.pack, n);
        assert!(decoded.online, "pack {n}");
        close(decoded.voltage_volts, truth.voltage_volts, 0.000_51, &format!("pack {n} voltage"));
        close(decoded.current_amperes, truth.current_amperes, 0.0051, &format!("pack {n} current"));
        close(decoded.state_of_charge_ratio, truth.state_of_charge_ratio, 0.001, &format!("pack {n} soc"));
        close(decoded.state_of_health_ratio, truth.state_of_health_ratio, 0.001, &format!("pack {n} soh"));
        close(decoded.remaining_capacity_ampere_hours, truth.remaining_capacity_ampere_hours, 0.0051, "remaining");
        close(decoded.full_capacity_ampere_hours, truth.full_capacity_ampere_hours, 0.0051, "full");
        close(decoded.design_capacity_ampere_hours, truth.design_capacity_ampere_hours, 0.0051, "design");
        assert_eq!(decoded.cycle_count, truth.cycle_count, "pack {n}");
        if truth.current_amperes.is_some_and(|a| a.abs() > 0.5) {
            assert_eq!(decoded.state, truth.state, "pack {n}");
        }
        assert_eq!(decoded.charge_mosfet_enabled, truth.charge_mosfet_enabled, "pack {n}");
        assert_eq!(decoded.discharge_mosfet_enabled, truth.discharge_mosfet_enabled, "pack {n}");
        assert_eq!(decoded.cell_count, truth.cell_count, "pack {n}");
        assert_eq!(decoded.temperature_sensor_count, truth.temperature_sensor_count, "pack {n}");
        cells_close(decoded, truth, 0.000_51);
        assert_eq!(decoded.cell_balancing, truth.cell_balancing, "pack {n}");
        assert_eq!(decoded.balancing_active, truth.balancing_active, "pack {n}");
        assert_eq!(decoded.temperatures.len(), truth.temperatures.len(), "pack {n}");
        for t in &truth.temperatures {
            close(temperature(decoded, t.sensor), Some(t.celsius), 0.051, &format!("pack {n} {:?}", t.sensor));
        }
        assert!(!decoded.alarms.is_empty(), "pack {n}: every alarm is listed");
    }

    fn assert_all_match(exchange: &PaceExchange, truth: &DeviceSnapshot, numbers: &[u8]) {
        let snapshot = exchange.snapshot();
        let got: Vec<u8> = snapshot.packs.iter().map(|p| p.pack).collect();
        assert_eq!(got, numbers);
        for (decoded, n) in snapshot.packs.iter().zip(numbers) {
            assert_matches_truth(decoded, &truth.packs[usize::from(*n) - 1]);
        }
    }

    #[test]
    fn a_full_poll_uses_all_packs_reads_and_matches_the_truth_of_every_pack() {
        let mut bus = bus();
        let mut exchange = all();
        let sent = poll(&mut exchange, &mut bus, Sections::all());
        assert_eq!(
            commands(&sent),
            [Command::Analog(ALL_PACKS), Command::Status(ALL_PACKS), Command::SoftwareVersion, Command::ProductInfo]
        );
        assert!(sent.iter().all(|(_, p)| *p == Some(Progress::Complete)));
        assert_all_match(&exchange, &bus.truth(), &[1, 2, 3, 4]);
        let info = &exchange.snapshot().packs[0].info;
        assert_eq!(info.firmware_version.as_deref(), Some("P16S100A-SIM-1.00"));
        assert!(info.serial_number.as_deref().is_some_and(|s| s.starts_with("SIMPACK")), "{info:?}");
        assert_eq!(exchange.skipped_bytes(), 0);
    }

    #[test]
    fn later_polls_send_two_requests_and_keep_the_cached_info() {
        let mut bus = bus();
        let mut exchange = all();
        poll(&mut exchange, &mut bus, Sections::all());
        for _ in 0..2 {
            bus.step(30.0);
            let sent = poll(&mut exchange, &mut bus, Sections::all());
            assert_eq!(commands(&sent), [Command::Analog(ALL_PACKS), Command::Status(ALL_PACKS)]);
            assert_all_match(&exchange, &bus.truth(), &[1, 2, 3, 4]);
            assert_eq!(exchange.snapshot().packs[0].info.firmware_version.as_deref(), Some("P16S100A-SIM-1.00"));
        }
    }

    /// The simulated master, silent to the identity reads (as a BMS without them may be).
    struct SilentInfo(PaceBus);

    impl Responder for SilentInfo {
        fn next_request(&mut self, pending: &mut Vec<u8>) -> Option<Vec<u8>> {
            self.0.next_request(pending)
        }

        fn respond(&mut self, request: &[u8]) -> Option<Response> {
            match Request::decode(request).map(|r| r.command) {
                Ok(Command::SoftwareVersion | Command::ProductInfo) => None,
                _ => self.0.respond(request),
            }
        }

        fn step(&mut self, dt_s: f64) {
            self.0.step(dt_s);
        }

        fn truth(&self) -> DeviceSnapshot {
            self.0.truth()
        }
    }

    #[test]
    fn identity_reads_left_unanswered_are_optional_and_given_up_after_two_polls() {
        let mut bus = SilentInfo(bus());
        let mut exchange = all();
        let identity = [Command::SoftwareVersion, Command::ProductInfo];
        for poll_number in 1..=crate::protocol::exchange::GIVE_UP_MISSES {
            let sent = poll(&mut exchange, &mut bus, Sections::all());
            assert_eq!(commands(&sent)[2..], identity, "poll {poll_number}");
            for (outgoing, progress) in &sent[2..] {
                assert_eq!((outgoing.optional, *progress), (true, None), "{}", outgoing.label);
            }
            assert!(sent[..2].iter().all(|(o, p)| !o.optional && *p == Some(Progress::Complete)));
        }
        assert_all_match(&exchange, &bus.truth(), &[1, 2, 3, 4]);
        assert_eq!(exchange.snapshot().packs[0].info.firmware_version, None);
        let sent = poll(&mut exchange, &mut bus, Sections::all());
        assert_eq!(commands(&sent), [Command::Analog(ALL_PACKS), Command::Status(ALL_PACKS)], "given up");
    }

    #[test]
    fn a_limited_poll_asks_only_what_its_sections_need() {
        let mut bus = bus();
        let cases: [(&[Section], &[Command]); 6] = [
            (&[], &[]),
            (&[Section::Soc, Section::Cells], &[Command::Analog(ALL_PACKS)]),
            (&[Section::Alarms, Section::Balancing], &[Command::Status(ALL_PACKS)]),
            (&[Section::Mosfet], &[Command::Analog(ALL_PACKS), Command::Status(ALL_PACKS)]),
            (&[Section::Info], &[Command::SoftwareVersion, Command::ProductInfo]),
            (
                &[Section::Temperatures, Section::Info],
                &[Command::Analog(ALL_PACKS), Command::SoftwareVersion, Command::ProductInfo],
            ),
        ];
        for (list, expected) in cases {
            let mut exchange = all();
            let sent = poll(&mut exchange, &mut bus, sections(list));
            assert_eq!(commands(&sent), expected, "{list:?}");
            assert!(sent.iter().all(|(_, p)| *p == Some(Progress::Complete)), "{list:?}");
        }
        let mut exchange = all();
        poll(&mut exchange, &mut bus, sections(&[Section::Info]));
        assert!(poll(&mut exchange, &mut bus, sections(&[Section::Info])).is_empty());
    }

    #[test]
    fn replies_split_anywhere_complete_the_same_way() {
        let mut bus = bus();
        let mut whole = all();
        poll(&mut whole, &mut bus, Sections::all());
        let longest = bus.respond(&Request::new(MASTER_ADR, Command::Analog(ALL_PACKS)).encode()).unwrap().reply.len();
        for cut in 1..longest {
            let mut exchange = all();
            let sent = poll_with(&mut exchange, &mut bus, Sections::all(), |e, reply| {
                feed_split(e, reply, cut.min(reply.len() - 1))
            });
            assert!(sent.iter().all(|(_, p)| *p == Some(Progress::Complete)), "cut at {cut}");
            assert_eq!(exchange.snapshot(), whole.snapshot(), "cut at {cut}");
        }
    }

    #[test]
    fn a_corrupted_reply_stays_pending_reports_the_chksum_and_the_retry_completes() {
        let mut bus = bus();
        let mut exchange = all();
        exchange.begin_poll(sections(&[Section::Soc]));
        let request = exchange.next_request().unwrap();
        let good = bus.respond(&request.bytes).unwrap().reply;
        let mut bad = good.clone();
        // A hex digit inside INFO becomes another hex digit: only the CHKSUM can tell.
        bad[40] = if bad[40] == b'1' { b'2' } else { b'1' };
        assert_eq!(exchange.handle_bytes(&bad), Progress::Pending);
        let error = exchange.clear_reply().unwrap();
        assert_eq!(error.kind(), "chksum_mismatch", "{error}");
        assert!(exchange.snapshot().packs.is_empty());
        assert_eq!(exchange.handle_bytes(&good), Progress::Complete);
        assert_eq!(exchange.snapshot().packs.len(), usize::from(PACKS));
        assert!(exchange.skipped_bytes() >= bad.len() as u64);
    }

    #[test]
    fn an_echo_and_a_reply_to_the_other_read_never_become_values() {
        let mut bus = bus();
        for list in [&[Section::Soc], &[Section::Alarms]] {
            let mut exchange = all();
            exchange.begin_poll(sections(list));
            let request = exchange.next_request().unwrap();
            let response = bus.respond(&request.bytes).unwrap();
            assert_eq!(exchange.handle_bytes(&request.bytes), Progress::Pending);
            assert_eq!(exchange.clear_reply(), Some(DecodeError::HostEcho { address: MASTER_ADR }));
            // The other reply is a valid frame answering the other pack read (0x44 for 0x42 and back).
            assert_eq!(exchange.handle_bytes(&request.bytes), Progress::Pending, "{list:?}");
            assert_eq!(exchange.handle_bytes(&response.other), Progress::Pending, "{list:?}");
            let error = exchange.clear_reply();
            assert!(error.is_some_and(|e| e != DecodeError::HostEcho { address: MASTER_ADR }), "{error:?}");
            assert!(exchange.snapshot().packs.is_empty(), "{list:?}");
            let stream = [request.bytes.clone(), response.reply].concat();
            assert_eq!(exchange.handle_bytes(&stream), Progress::Complete);
            assert_eq!(exchange.snapshot().packs.len(), usize::from(PACKS));
        }
    }

    #[test]
    fn a_master_refusing_all_packs_reads_is_asked_pack_by_pack_after_one_pack_count() {
        let mut bus = NoAllPacks { bus: bus() };
        let mut exchange = all();
        let sent = poll(&mut exchange, &mut bus, Sections::all());
        let mut expected = vec![Command::Analog(ALL_PACKS), Command::PackCount];
        expected.extend((1..=PACKS).flat_map(|n| [Command::Analog(n), Command::Status(n)]));
        expected.extend([Command::SoftwareVersion, Command::ProductInfo]);
        assert_eq!(commands(&sent), expected);
        assert_eq!(sent[0].1, Some(Progress::Unsupported));
        assert!(sent[1..].iter().all(|(_, p)| *p == Some(Progress::Complete)));
        assert_all_match(&exchange, &bus.truth(), &[1, 2, 3, 4]);
        // From then on: pack by pack, without asking the count or all packs again.
        let sent = poll(&mut exchange, &mut bus, Sections::all());
        let expected: Vec<Command> = (1..=PACKS).flat_map(|n| [Command::Analog(n), Command::Status(n)]).collect();
        assert_eq!(commands(&sent), expected);
        assert_all_match(&exchange, &bus.truth(), &[1, 2, 3, 4]);
    }

    #[test]
    fn a_refusal_fed_by_hand_switches_to_per_pack_reads() {
        let mut exchange = all();
        exchange.begin_poll(sections(&[Section::Alarms]));
        let request = exchange.next_request().unwrap();
        assert_eq!(Request::decode(&request.bytes).unwrap().command, Command::Status(ALL_PACKS));
        let refusal = encode_error_reply(VER_PACE, MASTER_ADR, CID1_BATTERY, 0x90).unwrap();
        assert_eq!(exchange.handle_bytes(&refusal), Progress::Unsupported);
        let next = exchange.next_request().unwrap();
        assert_eq!(Request::decode(&next.bytes).unwrap().command, Command::PackCount);
        // The count is not answered: the master alone is asked.
        assert_eq!(exchange.clear_reply(), None);
        let next = exchange.next_request().unwrap();
        assert_eq!(Request::decode(&next.bytes).unwrap().command, Command::Status(1));
    }

    #[test]
    fn an_analog_reply_whose_cells_are_level_bytes_is_refused() {
        let mut exchange = all();
        exchange.begin_poll(sections(&[Section::Cells]));
        exchange.next_request().unwrap();
        let levels = PackBlock {
            cells_mv: vec![0x0001, 0x0200, 0, 0],
            temps_raw: vec![],
            current_raw: 0,
            voltage_mv: 0x0102,
            remaining_raw: 0,
            user_defined_count: 0,
            tail: vec![0; 6],
        };
        let header = Header { ver: VER_PACE, adr: MASTER_ADR, cid1: CID1_BATTERY, code: 0 };
        let reply = encode_analog(header, 0, 1, &[levels]).unwrap();
        assert_eq!(exchange.handle_bytes(&reply), Progress::Pending);
        assert_eq!(exchange.clear_reply().map(|e| e.kind()), Some("implausible"));
        assert!(exchange.snapshot().packs.is_empty());
    }

    #[test]
    fn a_reply_with_a_right_chksum_and_an_implausible_value_is_rejected_whole_and_a_later_good_one_taken() {
        // One block of the all-packs reply changed, the frame re-encoded with a right CHKSUM: pack 3's cell 1 at
        // 17.009 V; its probe 1 at 1,582.6 °C; its pack voltage twice its cell sum; its remaining capacity far
        // above its full capacity (the current cannot leave the limits: 10 mA in 16 bits ends at ±327 A).
        let changes: [fn(&mut PackBlock); 4] = [
            |b| b.cells_mv[0] = 17_009,
            |b| b.temps_raw[0] = 2730 + 15_826,
            |b| b.voltage_mv = b.voltage_mv.saturating_mul(2),
            |b| b.remaining_raw = u16::MAX,
        ];
        for (i, change) in changes.into_iter().enumerate() {
            let mut bus = bus();
            let mut exchange = all();
            exchange.begin_poll(sections(&[Section::Soc, Section::Cells, Section::Temperatures]));
            let request = exchange.next_request().unwrap();
            let good = bus.respond(&request.bytes).unwrap().reply;
            let Ok(Reply::Analog(analog)) = decode_reply(&good, Some(&Request::decode(&request.bytes).unwrap())) else {
                panic!("not an analog reply")
            };
            let mut blocks: Vec<PackBlock> = analog.packs.iter().map(|p| p.block.clone()).collect();
            change(&mut blocks[2]);
            let bad = encode_analog(analog.header, analog.info_flag, analog.count_or_command, &blocks).unwrap();
            let progress = exchange.handle_bytes(&bad);
            assert!(matches!(progress, Progress::Retry(DecodeError::Implausible { .. })), "change {i}: {progress:?}");
            assert_eq!(exchange.clear_reply().map(|e| e.reason()), Some("implausible"));
            assert!(exchange.snapshot().packs.iter().all(|p| p.voltage_volts.is_none()), "no pack of it is kept");
            assert_eq!(exchange.handle_bytes(&good), Progress::Complete, "change {i}");
            let (got, truth) = (exchange.snapshot(), bus.truth());
            for (g, t) in got.packs.iter().zip(&truth.packs) {
                close(g.voltage_volts, t.voltage_volts, 0.000_51, &format!("change {i} pack {}", g.pack));
                cells_close(g, t, 0.000_51);
            }
            assert_eq!(got.packs.len(), usize::from(PACKS));
        }
    }

    #[test]
    fn a_pack_list_asks_exactly_those_packs() {
        let mut bus = bus();
        let mut exchange = PaceExchange::new(MASTER_ADR, PackSelection::List(vec![2, 4]), VER_PACE);
        let no_info: Sections = Section::ALL.into_iter().filter(|&s| s != Section::Info).collect();
        let sent = poll(&mut exchange, &mut bus, no_info);
        assert_eq!(commands(&sent), [Command::Analog(2), Command::Status(2), Command::Analog(4), Command::Status(4)]);
        assert_all_match(&exchange, &bus.truth(), &[2, 4]);
        // A reply for another pack than the one asked is refused.
        exchange.begin_poll(sections(&[Section::Soc]));
        let request = exchange.next_request().unwrap();
        let wrong = bus.respond(&Request::new(MASTER_ADR, Command::Analog(3)).encode()).unwrap().reply;
        assert_eq!(exchange.handle_bytes(&wrong), Progress::Pending);
        assert_eq!(exchange.clear_reply(), Some(DecodeError::UnexpectedCommand { expected: 2, found: 3 }));
        let right = bus.respond(&request.bytes).unwrap().reply;
        assert_eq!(exchange.handle_bytes(&right), Progress::Complete);
    }

    #[test]
    fn the_pylon_version_asks_the_analog_read_only_and_decodes_its_units() {
        let mut exchange = PaceExchange::new(2, PackSelection::All, VER_PYLON);
        exchange.begin_poll(Sections::all());
        let request = exchange.next_request().unwrap();
        assert!(request.bytes.starts_with(b"~20024642"), "{:?}", String::from_utf8_lossy(&request.bytes));
        assert_eq!(parse_frame(&request.bytes).unwrap().info, [ALL_PACKS]);
        // Pylon P = 2: 100 mA current, mAh capacities, temperatures offset 2731.
        let block = PackBlock {
            cells_mv: vec![3300; 15],
            temps_raw: vec![2981; 5],
            current_raw: -40,
            voltage_mv: 49_500,
            remaining_raw: 50_000,
            user_defined_count: 2,
            tail: vec![0xC3, 0x50, 0x00, 0x0C], // full 50000 mAh, 12 cycles
        };
        let header = Header { ver: VER_PYLON, adr: 2, cid1: CID1_BATTERY, code: 0 };
        let reply = encode_analog(header, 0, 1, &[block]).unwrap();
        assert_eq!(exchange.handle_bytes(&reply), Progress::Complete);
        assert_eq!(exchange.next_request(), None, "no 0x44 and no identity reads on VER 0x20");
        let pack = &exchange.snapshot().packs[0];
        assert_eq!(pack.voltage_volts, Some(49.5));
        assert_eq!(pack.current_amperes, Some(-4.0));
        assert_eq!(pack.remaining_capacity_ampere_hours, Some(50.0));
        assert_eq!(pack.full_capacity_ampere_hours, Some(50.0));
        assert_eq!(pack.cycle_count, Some(12));
        close(temperature(pack, crate::model::SensorId::Probe(1)), Some(25.0), 1e-9, "probe 1");
    }
}
