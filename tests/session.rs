//! The pure session driven in simulated time against the in-process Daly simulator: retries, gaps, drain,
//! silent devices, late replies and link failures (tests/tests.rs `mod session`).

use std::time::{Duration, Instant};

use bms_exporter::model::Sections;
use bms_exporter::model::{CurrentSign, Section};
use bms_exporter::protocol::daly::exchange::DalyExchange;
use bms_exporter::protocol::daly::{Address, Filler};
use bms_exporter::protocol::daly_modbus::Map;
use bms_exporter::protocol::daly_modbus::exchange::DalyModbusExchange;
use bms_exporter::protocol::sinowealth::CheckPolicy;
use bms_exporter::protocol::sinowealth::exchange::SinowealthExchange;
use bms_exporter::protocol::{DecodeOptions, Exchange};
use bms_exporter::session::{PollError, PollReport, ReplyTimes, SHORT_TIMEOUT_FLOOR, Session, Settings};
use bms_exporter::simulator::Responder;
use bms_exporter::simulator::daly::DalyBus;
use bms_exporter::simulator::daly_modbus::DalyModbusBus;

fn daly(boards: &[Address]) -> DalyExchange {
    let options = DecodeOptions { current_sign: CurrentSign::Auto, ..DecodeOptions::default() };
    DalyExchange::new(boards.to_vec(), Filler::Zero, options)
}

/// Drive a session against `answer` in simulated time: every request is answered `latency` later with
/// whatever `answer` returns (possibly nothing). Returns the report and the simulated wall time.
fn run(
    exchange: &mut dyn Exchange,
    sections: Sections,
    settings: Settings,
    latency: Duration,
    mut answer: impl FnMut(&[u8]) -> Vec<u8>,
) -> (PollReport, Duration) {
    let start = Instant::now();
    let mut session = Session::new(exchange, sections, settings, start);
    let end = drive(&mut session, start, |_, now, request| {
        let reply = answer(request);
        (!reply.is_empty()).then(|| (now + latency, reply))
    });
    (session.finish(), end - start)
}

/// Drive `session` to its end in simulated time from `start`: each request it sends goes to `respond`, which
/// gives the reply and the time it arrives (or nothing); timeouts fire when nothing arrives first. Returns the
/// time the session ended.
fn drive(
    session: &mut Session<'_>,
    start: Instant,
    mut respond: impl FnMut(&Session<'_>, Instant, &[u8]) -> Option<(Instant, Vec<u8>)>,
) -> Instant {
    let mut now = start;
    let mut inbox: Option<(Instant, Vec<u8>)> = None;
    for _ in 0..10_000 {
        if let Some(request) = session.poll_transmit(now) {
            inbox = respond(session, now, &request);
        }
        if session.is_done() {
            break;
        }
        let timer = session.poll_timeout().unwrap();
        match inbox.take() {
            Some((at, bytes)) if at <= timer => {
                now = now.max(at);
                session.handle_bytes(now, &bytes);
            }
            other => {
                inbox = other;
                now = now.max(timer);
                session.handle_timeout(now);
            }
        }
    }
    assert!(session.is_done(), "the session must end");
    now
}

#[test]
fn a_clean_poll_takes_one_round_trip_plus_the_gap_per_request() {
    let mut bus = DalyBus::new(1, 16, 4, 1);
    let mut x = daly(&[Address::Rs485]);
    let settings = Settings { request_gap: Duration::from_millis(50), ..Settings::default() };
    let (report, elapsed) =
        run(&mut x, Sections::all(), settings, Duration::from_millis(20), |r| bus.respond(r).unwrap().reply);
    assert!(report.succeeded(), "{:?}", report.failures);
    assert_eq!(report.answered, 10);
    assert_eq!(report.requests_sent, 10);
    // Ten answers 20 ms after their request and nine gaps of 50 ms between them; nothing waits for quiet,
    // because the 0x63 identity string ends in padding.
    assert_eq!(elapsed, Duration::from_millis(10 * 20 + 9 * 50));
    assert_eq!(report.device.packs[0].cell_volts.len(), 16);
}

#[test]
fn a_corrupt_reply_is_retried_and_reported_as_a_checksum_failure_only_if_every_try_fails() {
    let mut bus = DalyBus::new(1, 16, 4, 1);
    let mut x = daly(&[Address::Rs485]);
    let mut tries = 0;
    let settings = Settings { retries: 2, ..Settings::default() };
    let (report, _) = run(&mut x, Sections::none().with(Section::Alarms), settings, Duration::ZERO, |r| {
        tries += 1;
        let mut reply = bus.respond(r).unwrap().reply;
        if tries < 3 {
            reply[5] ^= 1;
        }
        reply
    });
    assert!(report.succeeded(), "third try is clean: {:?}", report.failures);
    assert_eq!(report.requests_sent, 3);
    assert_eq!(report.skipped_bytes, 2 * 13, "each corrupt frame is skipped byte by byte");

    let mut bus = DalyBus::new(1, 16, 4, 1);
    let (report, _) = run(&mut x, Sections::none().with(Section::Alarms), settings, Duration::ZERO, |r| {
        let mut reply = bus.respond(r).unwrap().reply;
        reply[5] ^= 1;
        reply
    });
    assert_eq!(report.failures.len(), 1);
    assert_eq!(report.failures[0].attempts, 3);
    assert_eq!(report.failures[0].error.reason(), "checksum");
    assert!(report.device.packs[0].alarms.is_empty(), "a bad frame never becomes a value");
}

#[test]
fn an_implausible_reply_is_asked_again_at_once_and_reported_as_implausible_only_if_every_try_fails() {
    // The 0x90 current's high byte raised by 0x80 and the SOC's low byte lowered by as much: the checksum holds,
    // the current reads beyond 3000 A.
    let gross = |reply: &mut Vec<u8>| {
        reply[8] = reply[8].wrapping_add(0x80);
        reply[11] = reply[11].wrapping_sub(0x80);
    };
    let soc = Sections::none().with(Section::Soc);
    let settings = Settings { retries: 2, ..Settings::default() };
    let mut bus = DalyBus::new(1, 16, 4, 1);
    let mut x = daly(&[Address::Rs485]);
    let mut tries = 0;
    let (report, elapsed) = run(&mut x, soc, settings, Duration::ZERO, |r| {
        let mut reply = bus.respond(r).unwrap().reply;
        if r[2] == 0x90 {
            tries += 1;
            if tries < 3 {
                gross(&mut reply);
            }
        }
        reply
    });
    assert!(report.succeeded(), "the third try is plausible: {:?}", report.failures);
    assert_eq!(report.requests_sent, 4, "0x90 three times, then 0x93");
    assert!(elapsed < settings.timeout, "a rejected reply is asked again without waiting out the timeout: {elapsed:?}");
    assert!((report.device.packs[0].current_amperes.unwrap()).abs() < 2000.0);

    let mut bus = DalyBus::new(1, 16, 4, 1);
    let mut x = daly(&[Address::Rs485]);
    let (report, _) = run(&mut x, soc, settings, Duration::ZERO, |r| {
        let mut reply = bus.respond(r).unwrap().reply;
        if r[2] == 0x90 {
            gross(&mut reply);
        }
        reply
    });
    assert_eq!(report.failures.len(), 1, "{:?}", report.failures);
    assert_eq!(report.failures[0].attempts, 3);
    assert_eq!(report.failures[0].error.reason(), "implausible");
    let pack = &report.device.packs[0];
    assert_eq!((pack.voltage_volts, pack.current_amperes), (None, None), "nothing of the reply is exported");
}

#[test]
fn a_silent_device_costs_one_request_not_the_whole_poll() {
    let mut x = daly(&[Address::Rs485]);
    let settings = Settings::default();
    let (report, elapsed) = run(&mut x, Sections::all(), settings, Duration::ZERO, |_| Vec::new());
    assert_eq!(report.answered, 0);
    assert_eq!(report.failures.len(), 1, "the rest of the board's requests are dropped");
    assert_eq!(report.failures[0].error, PollError::Timeout { timeout: settings.timeout });
    assert_eq!(report.failures[0].error.reason(), "timeout");
    assert_eq!(report.requests_sent, 4);
    assert_eq!(elapsed, 4 * settings.timeout + 3 * settings.request_gap);
    assert!(!report.device.packs[0].online);
}

#[test]
fn a_dead_board_does_not_stop_the_other_board_on_the_bus() {
    let mut bus = DalyBus::new(2, 8, 2, 1);
    let mut x = daly(&[Address::Board(1), Address::Board(2)]);
    let settings = Settings { retries: 0, ..Settings::default() };
    let (report, _) = run(&mut x, Sections::all(), settings, Duration::ZERO, |r| {
        if r[1] == 0x40 { Vec::new() } else { bus.respond(r).unwrap().reply }
    });
    assert_eq!(report.failures.len(), 1);
    assert_eq!(report.answered, 10);
    let packs = &report.device.packs;
    assert!(!packs[0].online && packs[1].online);
    assert_eq!(packs[1].cell_volts.len(), 8);
}

#[test]
fn bytes_between_requests_are_dropped_and_a_late_reply_is_not_taken_for_the_next() {
    let mut bus = DalyBus::new(1, 16, 4, 1);
    let mut x = daly(&[Address::Rs485]);
    let now = Instant::now();
    let mut session = Session::new(&mut x, Sections::none().with(Section::Soc), Settings::default(), now);
    let first = session.poll_transmit(now).unwrap();
    let late = bus.respond(&first).unwrap().reply;
    // No answer in time: the retry goes out after the gap, then the late 0x90 reply arrives.
    session.handle_timeout(now + Duration::from_secs(1));
    assert_eq!(session.poll_transmit(now + Duration::from_millis(1010)), None, "the gap is kept");
    let retry = session.poll_transmit(now + Duration::from_millis(1050)).unwrap();
    assert_eq!(retry, first);
    session.handle_bytes(now + Duration::from_millis(1060), &late);
    // That late reply does answer the retried 0x90; the next is 0x93, and a stray 0x90 frame is not its reply.
    let second = session.poll_transmit(now + Duration::from_millis(1110)).unwrap();
    assert_eq!(second[2], 0x93);
    session.handle_bytes(now + Duration::from_millis(1120), &late);
    assert!(!session.is_done());
    session.handle_bytes(now + Duration::from_millis(1130), &bus.respond(&second).unwrap().reply);
    assert!(session.is_done());
    let report = session.finish();
    assert!(report.succeeded());
    assert_eq!(report.bytes_received, 3 * 13);
}

#[test]
fn a_link_failure_is_one_io_failure_and_the_rest_of_the_poll_is_not_sent() {
    let mut x = daly(&[Address::Rs485]);
    let now = Instant::now();
    let mut session = Session::new(&mut x, Sections::all(), Settings::default(), now);
    session.poll_transmit(now).unwrap();
    session.handle_link_error(now, "broken pipe");
    assert!(session.is_done());
    let report = session.finish();
    assert_eq!(report.failures[0].error.reason(), "io");
    assert!(report.failures.len() > 1);
    assert!(report.failures.iter().skip(1).all(|f| f.attempts == 0 && f.error.reason() == "not_sent"));
    assert_eq!(report.failures.iter().filter(|f| f.error.is_failure()).count(), 1, "one io failure per poll");
    // A link lost before the first request was due (still in the gap) ends a poll of zero length.
    let mut x = daly(&[Address::Rs485]);
    let mut session = Session::new(&mut x, Sections::all(), Settings::default(), now + Duration::from_secs(1));
    session.handle_link_error(now, "no such device");
    let report = session.finish();
    assert_eq!(report.duration(), Duration::ZERO);
    assert!(report.finished >= report.started);
    let counted: Vec<&str> =
        report.failures.iter().filter(|f| f.error.is_failure()).map(|f| f.error.reason()).collect();
    assert_eq!(counted, ["io"], "a link down before the poll is one io failure too");
}

#[test]
fn a_board_that_does_not_know_an_identity_read_is_asked_once_and_still_succeeds() {
    let mut bus = DalyBus::new(1, 16, 4, 1);
    let mut x = daly(&[Address::Rs485]);
    let settings = Settings::default();
    let (report, elapsed) = run(&mut x, Sections::all(), settings, Duration::ZERO, |r| {
        if r[2] == 0x63 { Vec::new() } else { bus.respond(r).unwrap().reply }
    });
    assert!(report.succeeded(), "{:?}", report.failures);
    assert_eq!(report.unsupported, vec!["0x63 board 1".to_owned()]);
    assert_eq!(report.requests_sent, 10, "sent once, no retries");
    assert!(elapsed < 2 * settings.timeout, "one timeout, not four: {elapsed:?}");
    // One miss may be bad luck: the next poll asks once more (the board answers now); the cached reads are not
    // asked again, and once the identity is known neither is it.
    let (again, _) = run(&mut x, Sections::all(), settings, Duration::ZERO, |r| bus.respond(r).unwrap().reply);
    assert!(again.unsupported.is_empty());
    assert_eq!(again.requests_sent, 7, "0x90 0x93 0x95 0x96 0x97 0x98 and 0x63 again");
    let (third, _) = run(&mut x, Sections::all(), settings, Duration::ZERO, |r| bus.respond(r).unwrap().reply);
    assert_eq!(third.requests_sent, 6, "neither the identity nor the cached reads are asked again");
}

#[test]
fn a_modbus_refusal_of_an_optional_read_is_unsupported_but_a_refused_value_read_is_a_failure() {
    let mut bus = DalyModbusBus::new(16, 4, 3);
    let mut x = DalyModbusExchange::new(Map::D2, DecodeOptions::default());
    let (report, _) =
        run(&mut x, Sections::all(), Settings::default(), Duration::ZERO, |r| bus.respond(r).unwrap().reply);
    // The simulated board has no version registers and says so with exception 02: known, not failed.
    assert!(report.succeeded(), "{:?}", report.failures);
    assert_eq!(report.unsupported.len(), 1, "{:?}", report.unsupported);
    assert!(report.unsupported[0].contains("version"), "{:?}", report.unsupported);
    assert_eq!(report.requests_sent, 2, "an exception is an answer: no retry");
    // A board that refuses even the 62-register real-time block has nothing to give: that fails the poll.
    let mut refusing = DalyModbusExchange::new(Map::D2, DecodeOptions::default());
    let (report, _) =
        run(&mut refusing, [Section::Soc].into_iter().collect(), Settings::default(), Duration::ZERO, |r| {
            // Function 0x03 with the exception bit and code 02 (illegal data address), CRC by the simulator's rules.
            let mut frame = vec![r[0], 0x83, 0x02];
            let crc = modbus_crc(&frame);
            frame.extend(crc.to_le_bytes());
            frame
        });
    assert!(!report.succeeded());
    assert_eq!(report.unsupported.len(), 1, "the 80-register block falls back to 62: {:?}", report.unsupported);
    assert_eq!(report.failures.len(), 1, "{:?}", report.failures);
    assert!(matches!(report.failures[0].error, PollError::Refused(_)), "{:?}", report.failures);
    assert_eq!(report.requests_sent, 2);
}

/// Modbus RTU CRC-16 (polynomial 0xA001, initial 0xFFFF), written out here so the test does not trust the code.
fn modbus_crc(bytes: &[u8]) -> u16 {
    let mut crc = 0xFFFF_u16;
    for &b in bytes {
        crc ^= u16::from(b);
        for _ in 0..8 {
            crc = if crc & 1 == 1 { (crc >> 1) ^ 0xA001 } else { crc >> 1 };
        }
    }
    crc
}

#[test]
fn noise_that_settles_into_no_reply_waits_for_the_deadline_and_does_not_spin() {
    // Seven bytes that are no Sinowealth reply: the exchange settles, finds nothing on the quiet, and the
    // session must then wait for more bytes or the deadline (it once asked the exchange again, forever).
    let mut x = SinowealthExchange::new(CheckPolicy::Verify);
    let settings = Settings { retries: 1, ..Settings::default() };
    let soc: Sections = [Section::Soc].into_iter().collect();
    let (report, elapsed) = run(&mut x, soc, settings, Duration::ZERO, |_| vec![0x55; 7]);
    assert!(!report.succeeded());
    // Bytes did arrive, so the device is not given up: each of the three requests fails on its own.
    assert_eq!(report.failures.len(), 3, "{:?}", report.failures);
    assert!(report.failures.iter().all(|f| f.error.reason() == "checksum"), "{:?}", report.failures);
    assert_eq!(report.requests_sent, 6, "each request's first attempt and one retry");
    assert!(elapsed >= 6 * settings.timeout, "each attempt waits out its timeout: {elapsed:?}");
}

#[test]
fn a_reply_timeout_shorter_than_the_drain_time_settles_without_spinning() {
    // Sinowealth replies settle on the quiet (100 ms); with a 50 ms reply timeout the deadline passes while a
    // reply settles. The session once asked to be woken at that past deadline over and over until the quiet
    // ended: every wake-up it asks for must lie ahead of the time it was woken at.
    let mut bus = bms_exporter::simulator::sinowealth::SinowealthBus::new(4, 3);
    let mut x = SinowealthExchange::new(CheckPolicy::Verify);
    let settings = Settings { timeout: Duration::from_millis(50), retries: 0, ..Settings::default() };
    let soc: Sections = [Section::Soc].into_iter().collect();
    let start = Instant::now();
    let mut now = start;
    let mut session = Session::new(&mut x, soc, settings, now);
    let mut wakeups = 0;
    while !session.is_done() {
        if let Some(request) = session.poll_transmit(now) {
            let reply = bus.respond(&request).unwrap().reply;
            now += Duration::from_millis(5);
            session.handle_bytes(now, &reply);
            continue;
        }
        let timer = session.poll_timeout().unwrap();
        assert!(timer > now || wakeups == 0, "asked to wake at {:?}, already at {:?}", timer - start, now - start);
        now = now.max(timer);
        session.handle_timeout(now);
        wakeups += 1;
        assert!(wakeups < 100, "the session spins");
    }
    let report = session.finish();
    assert!(report.succeeded(), "{:?}", report.failures);
}

const MS: Duration = Duration::from_millis(1);

/// A simulated 9600-baud line: each reply starts `turnaround` after the request's last byte and arrives
/// whole once its own wire time has passed. Drives `session` to its end in simulated time; returns the time
/// it took and, per request sent, how long the session was prepared to wait for it.
fn run_line(
    session: &mut Session<'_>,
    bus: &mut DalyBus,
    turnaround: Duration,
    start: Instant,
) -> (Duration, Vec<Duration>) {
    let line = ReplyTimes::new(Some(9600));
    let mut waits = Vec::new();
    let end = drive(session, start, |session, now, request| {
        waits.push(session.poll_timeout().unwrap() - now);
        bus.respond(request)
            .map(|r| (now + line.wire_time(request.len()) + turnaround + line.wire_time(r.reply.len()), r.reply))
    });
    (end - start, waits)
}

#[test]
fn answers_teach_the_turnaround_net_of_wire_time() {
    let mut bus = DalyBus::new(1, 16, 4, 1);
    let mut x = daly(&[Address::Rs485]);
    let start = Instant::now();
    let mut session = Session::new(&mut x, Sections::none().with(Section::Soc), Settings::default(), start)
        .with_reply_times(ReplyTimes::new(Some(9600)));
    run_line(&mut session, &mut bus, 37 * MS, start);
    // Wire times round to whole nanoseconds: a few of them either way.
    let learned = session.reply_times().turnaround().unwrap();
    assert!(learned.abs_diff(37 * MS) < Duration::from_micros(1), "{learned:?}");
    assert!(session.finish().succeeded());
}

#[test]
fn unanswered_optional_reads_wait_the_short_timeout_and_mandatory_ones_the_full_one() {
    let settings = Settings::default();
    let mut bus = DalyBus::new(1, 16, 4, 1).without_identity();
    let mut x = daly(&[Address::Rs485]);
    let start = Instant::now();
    let mut session =
        Session::new(&mut x, Sections::all(), settings, start).with_reply_times(ReplyTimes::new(Some(9600)));
    let (_, waits) = run_line(&mut session, &mut bus, 20 * MS, start);
    let times = session.reply_times().clone();
    let report = session.finish();
    assert!(report.succeeded(), "{:?}", report.failures);
    assert_eq!(report.unsupported, ["0x57 board 1", "0x63 board 1"]);
    // 0x94 0x90 0x93 0x95 0x96 0x97 0x98 wait the full timeout; the optional 0x50 (one frame, answered),
    // 0x57 (five frames) and 0x63 (at least one) the short one, from the 20 ms learned: the floor.
    let line = ReplyTimes::new(Some(9600));
    let short = |frames: usize| line.wire_time(13) + SHORT_TIMEOUT_FLOOR + line.wire_time(13 * frames);
    let mut expected = vec![settings.timeout; 7];
    expected.extend([short(1), short(5), short(1)]);
    assert_eq!(waits, expected);
    assert!(times.turnaround().unwrap().abs_diff(20 * MS) < Duration::from_micros(1));

    // A mandatory read keeps the full timeout, learned times or not: a board that stops answering gets its
    // retries at the normal timeout.
    let mut x = daly(&[Address::Rs485]);
    let mut silent = DalyBus::new(1, 16, 4, 1);
    let start = Instant::now();
    let mut session =
        Session::new(&mut x, Sections::none().with(Section::Soc), settings, start).with_reply_times(times);
    let (elapsed, waits) = run_line(&mut session, &mut silent, Duration::from_secs(5), start);
    assert_eq!(waits, vec![settings.timeout; 4]);
    assert_eq!(elapsed, 4 * settings.timeout + 3 * settings.request_gap);
    let report = session.finish();
    assert_eq!(report.failures[0].error, PollError::Timeout { timeout: settings.timeout });
}

#[test]
fn a_probing_session_gives_every_request_the_short_timeout_and_reports_it() {
    let settings = Settings { retries: 1, ..Settings::default() };
    let mut times = ReplyTimes::new(Some(9600));
    times.learn(20 * MS);
    // Nothing answers: the board is not there (the bus has none at board 5).
    let mut bus = DalyBus::new(1, 16, 4, 1);
    let options = DecodeOptions { current_sign: CurrentSign::Auto, ..DecodeOptions::default() };
    let mut x = DalyExchange::new(vec![Address::Board(5)], Filler::Zero, options);
    let start = Instant::now();
    let mut session = Session::new(&mut x, Sections::none().with(Section::Soc), settings, start)
        .with_reply_times(times.clone())
        .probing();
    let (_, waits) = run_line(&mut session, &mut bus, 20 * MS, start);
    // The request's wire time and the allowance: a probe waits for a first byte, not for the reply's length.
    let short = times.short_timeout(13, 0, settings.timeout);
    assert_eq!(short, times.wire_time(13) + SHORT_TIMEOUT_FLOOR);
    assert!(short < settings.timeout / 4, "{short:?}");
    assert_eq!(waits, vec![short; 2], "two attempts of 0x90, then the silent board's other requests are dropped");
    let report = session.finish();
    assert_eq!(report.failures[0].error, PollError::Timeout { timeout: short });
}

#[test]
fn refusals_teach_the_turnaround_as_answers_do() {
    let mut x = DalyModbusExchange::new(Map::D2, DecodeOptions::default());
    let start = Instant::now();
    let mut session = Session::new(&mut x, [Section::Soc].into_iter().collect(), Settings::default(), start)
        .with_reply_times(ReplyTimes::new(None));
    let refusal = |request: &[u8]| {
        let mut frame = vec![request[0], 0x83, 0x02];
        let crc = modbus_crc(&frame);
        frame.extend(crc.to_le_bytes());
        frame
    };
    // The 80-register read is refused (a fallback: unsupported), then the 62-register one (a failure).
    let request = session.poll_transmit(start).unwrap();
    session.handle_bytes(start + 42 * MS, &refusal(&request));
    assert_eq!(session.reply_times().turnaround(), Some(42 * MS), "no baud known: no wire time to take off");
    let again = start + 200 * MS;
    let request = session.poll_transmit(again).unwrap();
    session.handle_bytes(again + 61 * MS, &refusal(&request));
    assert_eq!(session.reply_times().turnaround(), Some(61 * MS));
    assert!(session.is_done());
    assert!(matches!(session.finish().failures[0].error, PollError::Refused(_)));
}
