//! The exporter's own process figures for the `process_*` families, read at scrape time as client_golang's
//! process collector reads them on Linux: CPU time, virtual and resident memory and the start time from
//! `/proc/self/stat` (with the boot time from `/proc/stat`), open descriptors by listing `/proc/self/fd`, and
//! the soft limits on descriptors and address space (`getrlimit`, what `/proc/self/limits` shows).
//!
//! A figure that cannot be read or parsed is `None`, and its family then has no series: never a panic, never a
//! guess. The reads are of procfs, which the kernel answers from memory, so they do not stall the scrape.

use std::path::Path;

use nix::sys::resource::{Resource, getrlimit};
use nix::unistd::{SysconfVar, sysconf};

use crate::metrics::ProcessView;

/// The figures of this process now.
#[must_use]
pub fn read() -> ProcessView {
    // Clock ticks and page size from sysconf (nix's safe wrapper), not assumed: USER_HZ is 100 on every
    // mainstream Linux architecture (client_golang hard-codes it), but the kernel's word is better.
    let positive = |var| sysconf(var).ok().flatten().and_then(|v| u64::try_from(v).ok()).filter(|&v| v > 0);
    let mut view = read_procfs(Path::new("/proc"), positive(SysconfVar::CLK_TCK), positive(SysconfVar::PAGE_SIZE));
    let soft_limit = |resource| getrlimit(resource).ok().map(|(soft, _hard)| soft);
    // RLIM_INFINITY is u64::MAX on Linux: an unlimited soft limit is reported as that, as client_golang does.
    view.max_fds = soft_limit(Resource::RLIMIT_NOFILE);
    view.virtual_memory_max_bytes = soft_limit(Resource::RLIMIT_AS);
    view
}

/// The procfs figures under `proc` (normally `/proc`), given the clock ticks per second and the page size.
fn read_procfs(proc: &Path, ticks_per_second: Option<u64>, page_size: Option<u64>) -> ProcessView {
    let stat = std::fs::read_to_string(proc.join("self/stat")).ok().and_then(|text| Stat::parse(&text));
    let boot_time = std::fs::read_to_string(proc.join("stat")).ok().and_then(|text| boot_time(&text));
    let ticks = ticks_per_second.map(|t| t as f64);
    ProcessView {
        cpu_seconds: stat.zip(ticks).map(|(s, t)| s.cpu_ticks() as f64 / t),
        open_fds: count_entries(&proc.join("self/fd")),
        resident_memory_bytes: stat.zip(page_size).and_then(|(s, page)| s.rss_pages.checked_mul(page)),
        start_time_seconds: stat.zip(ticks).zip(boot_time).map(|((s, t), boot)| boot as f64 + s.start_ticks as f64 / t),
        virtual_memory_bytes: stat.map(|s| s.vsize_bytes),
        max_fds: None,
        virtual_memory_max_bytes: None,
    }
}

/// The fields of `/proc/PID/stat` the process families use (proc(5)).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stat {
    /// Field 14: user-mode CPU time, in clock ticks.
    utime: u64,
    /// Field 15: kernel-mode CPU time, in clock ticks.
    stime: u64,
    /// Field 22: when the process started, in clock ticks after boot.
    start_ticks: u64,
    /// Field 23: virtual memory size, in bytes.
    vsize_bytes: u64,
    /// Field 24: resident set size, in pages.
    rss_pages: u64,
}

impl Stat {
    /// Parse the one line of `/proc/PID/stat`; `None` if any field used is missing or not a number.
    fn parse(text: &str) -> Option<Self> {
        // Field 2, the command name, is in parentheses and may itself hold spaces and ')': the fields after it
        // start after the last ')'.
        let (_, after) = text.rsplit_once(')')?;
        let fields: Vec<&str> = after.split_ascii_whitespace().collect();
        // `fields[0]` is field 3 (the state).
        let field = |n: usize| fields.get(n - 3)?.parse::<u64>().ok();
        Some(Self {
            utime: field(14)?,
            stime: field(15)?,
            start_ticks: field(22)?,
            vsize_bytes: field(23)?,
            rss_pages: field(24)?,
        })
    }

    fn cpu_ticks(self) -> u64 {
        self.utime.saturating_add(self.stime)
    }
}

/// The boot time (Unix seconds) from the `btime` line of `/proc/stat`.
fn boot_time(text: &str) -> Option<u64> {
    text.lines().find_map(|line| line.strip_prefix("btime "))?.trim().parse().ok()
}

/// The number of entries of a directory, or `None` if it or any entry cannot be read.
fn count_entries(dir: &Path) -> Option<u64> {
    let mut count: u64 = 0;
    for entry in std::fs::read_dir(dir).ok()? {
        entry.ok()?;
        count += 1;
    }
    Some(count)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A real line of `/proc/PID/stat` (a shell), with a command name that holds ") (" and spaces.
    const STAT: &str = "4242 (odd) (name x) S 1 4242 4242 0 -1 4194560 1540 0 0 0 250 75 0 0 20 0 1 0 123456 \
                        23658496 1234 18446744073709551615 1 1 0 0 0 0 65536 3686404 1266761467 0 0 0 17 1 0 0 0 0 \
                        0 0 0 0 0 0 0 0 0\n";

    #[test]
    fn stat_fields_are_found_after_the_command_name() {
        let stat = Stat::parse(STAT).unwrap();
        assert_eq!(
            stat,
            Stat { utime: 250, stime: 75, start_ticks: 123_456, vsize_bytes: 23_658_496, rss_pages: 1234 }
        );
        assert_eq!(stat.cpu_ticks(), 325);
    }

    #[test]
    fn a_cut_or_garbled_stat_gives_nothing() {
        for bad in ["", "4242 (x", "4242 (x) S 1 2 3", &STAT[..60], &STAT.replace(" 250 ", " -5 "), "\u{0}\u{fffd})"] {
            assert_eq!(Stat::parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn boot_time_is_the_btime_line() {
        assert_eq!(
            boot_time("cpu  1 2 3\ncpu0 1 2 3\nintr 5\nctxt 9\nbtime 1796633443\nprocesses 7\n"),
            Some(1_796_633_443)
        );
        assert_eq!(boot_time("cpu  1 2 3\n"), None);
        assert_eq!(boot_time("btime soon\n"), None);
        assert_eq!(boot_time("xbtime 5\n"), None);
    }

    /// A fake procfs in a scratch directory, removed at the end.
    struct FakeProc(std::path::PathBuf);

    impl FakeProc {
        fn new(name: &str) -> Self {
            let dir = std::env::temp_dir().join(format!("bms-process-{name}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(dir.join("self/fd")).unwrap();
            Self(dir)
        }
    }

    impl Drop for FakeProc {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    #[test]
    fn figures_come_from_the_files_with_the_given_ticks_and_page_size() {
        let proc = FakeProc::new("full");
        std::fs::write(proc.0.join("self/stat"), STAT).unwrap();
        std::fs::write(proc.0.join("stat"), "cpu  1 2 3\nbtime 1700000000\n").unwrap();
        for fd in ["0", "1", "2"] {
            std::fs::write(proc.0.join("self/fd").join(fd), "").unwrap();
        }
        let view = read_procfs(&proc.0, Some(100), Some(4096));
        assert_eq!(
            view,
            ProcessView {
                cpu_seconds: Some(3.25),
                open_fds: Some(3),
                resident_memory_bytes: Some(1234 * 4096),
                start_time_seconds: Some(1_700_000_000.0 + 1234.56),
                virtual_memory_bytes: Some(23_658_496),
                max_fds: None,
                virtual_memory_max_bytes: None,
            }
        );
        // Another tick rate is honoured, not assumed.
        assert_eq!(read_procfs(&proc.0, Some(250), Some(4096)).cpu_seconds, Some(1.3));
    }

    #[test]
    fn what_cannot_be_read_is_left_out_and_the_rest_is_kept() {
        let proc = FakeProc::new("partial");
        // No /proc/stat: no start time; unknown ticks: no CPU time either; unknown page size: no RSS.
        std::fs::write(proc.0.join("self/stat"), STAT).unwrap();
        let view = read_procfs(&proc.0, None, None);
        assert_eq!(view.virtual_memory_bytes, Some(23_658_496));
        assert_eq!((view.cpu_seconds, view.start_time_seconds, view.resident_memory_bytes), (None, None, None));
        assert_eq!(view.open_fds, Some(0));
        // A garbled stat and a missing fd directory: nothing from them.
        std::fs::write(proc.0.join("self/stat"), "garbage").unwrap();
        std::fs::write(proc.0.join("stat"), "btime 1700000000\n").unwrap();
        std::fs::remove_dir(proc.0.join("self/fd")).unwrap();
        assert_eq!(read_procfs(&proc.0, Some(100), Some(4096)), ProcessView::default());
        // No procfs at all (another OS, a sandbox without /proc).
        assert_eq!(read_procfs(&proc.0.join("absent"), Some(100), Some(4096)), ProcessView::default());
    }

    #[test]
    fn this_process_reads_as_itself() {
        let view = read();
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs_f64();
        let started = view.start_time_seconds.expect("this test runs on Linux");
        assert!(started <= now + 1.0 && started > now - 24.0 * 3600.0, "started {started}, now {now}");
        assert!(view.open_fds.unwrap() >= 3, "{view:?}");
        assert!(view.max_fds.unwrap() >= view.open_fds.unwrap(), "{view:?}");
        assert!(view.resident_memory_bytes.unwrap() > 1 << 20, "{view:?}");
        assert!(view.virtual_memory_bytes.unwrap() >= view.resident_memory_bytes.unwrap(), "{view:?}");
        assert!(view.virtual_memory_max_bytes.is_some() && view.cpu_seconds.is_some(), "{view:?}");
    }
}
