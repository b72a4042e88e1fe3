//! Connection limits of the real binary (issue 12, point 4): under a soft and hard open-file limit of 1,024,
//! 1,100 idle connections must not stall `/metrics`, the cap must say so in the log, and a client trickling its
//! request head must be closed at the default header read timeout. Also that the binary raises its soft limit.
//! Only 127.0.0.1; every process is killed and every socket closed when a test ends.

use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::exporter::wait_ready;
use crate::util::{Killed, Scratch, free_port, http_get, required_program};

const BIN: &str = env!("CARGO_BIN_EXE_bms_exporter");

/// `bms_exporter --demo` on `addr` with `extra` flags, under the open-file limits `nofile` (prlimit's
/// `SOFT:HARD`), its stderr in `dir/exporter.log`; ready when this returns.
fn exporter_under(dir: &Path, nofile: &str, addr: &str, extra: &[&str]) -> Killed {
    let log = std::fs::File::create(dir.join("exporter.log")).unwrap();
    // prlimit sets the limits on itself and then executes the exporter, so the PID is the exporter's.
    let child = Command::new(required_program("prlimit", "util-linux"))
        .arg(format!("--nofile={nofile}"))
        .args(["--", BIN, "--demo", "--web.listen-address", addr])
        .args(extra)
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    let mut exporter = Killed(child);
    wait_ready(&mut exporter, addr, dir);
    exporter
}

fn log(dir: &Path) -> String {
    std::fs::read_to_string(dir.join("exporter.log")).unwrap_or_default()
}

/// The soft and hard "Max open files" of a running process.
fn open_file_limits(pid: u32) -> (u64, u64) {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let line = limits.lines().find(|l| l.starts_with("Max open files")).expect("a Max open files line");
    let numbers: Vec<u64> = line.split_whitespace().filter_map(|w| w.parse().ok()).collect();
    (numbers[0], numbers[1])
}

/// The descriptors a process has open.
fn open_descriptors(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map(|d| d.count()).unwrap_or(0)
}

#[test]
fn eleven_hundred_idle_connections_under_a_1024_descriptor_limit_do_not_stall_metrics() {
    // This test's own process holds the 1,100 client ends, so it needs more than 1,024 descriptors itself.
    let own = bms_exporter::server::raise_open_file_limit().expect("the test's open-file limits");
    assert!(own.soft >= 1_400, "this test needs a hard open-file limit of at least 1400, not {}", own.hard);

    let scratch = Scratch::new("conn-cap");
    let addr = format!("127.0.0.1:{}", free_port());
    // Soft and hard 1,024: raising cannot help, so only the cap keeps descriptors free. A long header read timeout,
    // so idle connections are not closed by it during the test: what keeps /metrics answering is the cap alone.
    let exporter = exporter_under(&scratch.0, "1024:1024", &addr, &["--web.header-read-timeout", "60s"]);
    let pid = exporter.0.id();
    assert_eq!(open_file_limits(pid), (1024, 1024));

    let opening = Instant::now();
    let mut idle = Vec::with_capacity(1_100);
    for i in 0..1_100 {
        let stream = TcpStream::connect(&addr).unwrap_or_else(|e| panic!("connection {i}: {e}"));
        idle.push(stream);
    }
    let opened = opening.elapsed();

    let scraping = Instant::now();
    let metrics = http_get(&addr, "/metrics", &[]).expect("/metrics did not answer");
    let took = scraping.elapsed();
    eprintln!("opened 1,100 idle connections in {opened:?}; /metrics answered in {took:?}");
    assert_eq!(metrics.status, 200, "{}", metrics.body);
    assert!(metrics.body.contains("bms_up{device=\"demo-daly\"}"), "{}", metrics.body);
    assert!(took < Duration::from_secs(5), "/metrics took {took:?} with 1,100 idle connections open");

    // The server closed the idle connections beyond the cap (a closed one reads end-of-file at once).
    std::thread::sleep(Duration::from_millis(300));
    let still_open = idle
        .iter()
        .filter(|&stream| {
            stream.set_nonblocking(true).unwrap();
            let mut stream: &TcpStream = stream;
            matches!(stream.read(&mut [0u8; 1]), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
        })
        .count();
    assert!(still_open <= 512, "{still_open} idle connections are open, above the cap of 512");
    assert!(still_open >= 400, "only {still_open} idle connections stayed open: closed for another reason?");
    assert!(open_descriptors(pid) < 1024, "{} descriptors open", open_descriptors(pid));

    let log = log(&scratch.0);
    assert!(
        log.contains("connection limit reached: 512 connections are open (--web.max-connections)"),
        "no cap line in the log:\n{log}"
    );
    assert_eq!(log.matches("connection limit reached").count(), 1, "one line per episode:\n{log}");
    assert!(!log.contains("accepting a connection failed"), "the exporter ran out of descriptors:\n{log}");
}

#[test]
fn a_client_trickling_its_request_head_is_closed_at_the_default_header_read_timeout() {
    let scratch = Scratch::new("conn-trickle");
    let addr = format!("127.0.0.1:{}", free_port());
    let _exporter = exporter_under(&scratch.0, "1024:4096", &addr, &[]);
    let mut stream = TcpStream::connect(&addr).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
    let head = format!("GET /metrics HTTP/1.1\r\nHost: {addr}\r\nX-Slow: {}\r\n\r\n", "a".repeat(100));
    let start = Instant::now();
    let mut sent = 0;
    let closed_after = loop {
        // One byte a second: the read waits the second, and returns at once when the server closes.
        if stream.write_all(&head.as_bytes()[sent..=sent]).is_err() {
            break start.elapsed();
        }
        sent += 1;
        match stream.read(&mut [0u8; 256]) {
            Ok(0) => break start.elapsed(),
            Ok(n) => panic!("the server answered {n} bytes to an incomplete head"),
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
            Err(_) => break start.elapsed(), // reset
        }
        assert!(start.elapsed() < Duration::from_secs(15), "a trickling client is still connected after 15 s");
    };
    assert!(
        (Duration::from_millis(4_900)..Duration::from_millis(6_500)).contains(&closed_after),
        "closed after {closed_after:?} and {sent} bytes, expected at the 5 s default"
    );
    // The exporter is unharmed, and it raised its own soft limit at start-up, saying so.
    assert_eq!(http_get(&addr, "/-/healthy", &[]).map(|r| r.status), Some(200));
    let log = log(&scratch.0);
    assert!(
        log.contains("raised the soft open-file limit (RLIMIT_NOFILE) to the hard limit from=1024 to=4096"),
        "{log}"
    );
}
