//! What a scrape sees: asks each device's bus worker for a snapshot no older than `max_age`, waits for it up to a
//! deadline below the scrape timeout, and otherwise serves the latest status the worker has.
//!
//! The bus workers do the polling and the single-flight sharing and publish every poll's status; this layer only
//! bounds how long an HTTP request waits and decides freshness (`stale_after`).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::metrics::ReloadView;
use crate::model::DeviceSnapshot;
use crate::poller::{self, BusHandle, BusSpec, DeviceStatus};
use crate::protocol::Protocol;

/// One configured device and the bus worker that reaches it.
#[derive(Debug, Clone)]
pub struct Target {
    /// The configured name (the `device` label).
    pub name: String,
    /// The protocol it speaks.
    pub protocol: Protocol,
    /// The bounded transport label: `serial` or `tcp`.
    pub transport: &'static str,
    /// The worker owning its bus.
    pub bus: BusHandle,
    /// Its index among the bus's devices.
    pub index: usize,
}

/// Timing rules of the scrape model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Freshness {
    /// A scrape reuses a snapshot younger than this instead of polling again.
    pub max_age: Duration,
    /// Values older than this are not exported at all.
    pub stale_after: Duration,
}

/// The status of one device as a scrape sees it.
#[derive(Debug, Clone)]
pub struct Seen {
    /// The last status the worker gave (`None` before its first poll ended).
    pub status: Option<Arc<DeviceStatus>>,
    /// Whether its last successful poll is younger than `stale_after`.
    pub fresh: bool,
    /// Its last good values that are younger than `stale_after`, field by field (a failed poll removes none).
    pub values: DeviceSnapshot,
}

/// The outcome of the configuration loads, for `bms_exporter_config_last_reload_*`.
#[derive(Debug)]
pub struct ReloadStats {
    successful: AtomicBool,
    /// Unix time of the last successful load in milliseconds.
    last_success_ms: AtomicU64,
}

impl ReloadStats {
    /// The state right after the configuration was loaded at start-up.
    #[must_use]
    pub fn loaded_now() -> Self {
        let stats = Self { successful: AtomicBool::new(true), last_success_ms: AtomicU64::new(0) };
        stats.succeeded();
        stats
    }

    /// A load succeeded now.
    pub fn succeeded(&self) {
        self.last_success_ms.store((unix_now() * 1000.0) as u64, Ordering::Relaxed);
        self.successful.store(true, Ordering::Relaxed);
    }

    /// A load failed; the previous configuration stays in force.
    pub fn failed(&self) {
        self.successful.store(false, Ordering::Relaxed);
    }

    /// The values `/metrics` renders.
    #[must_use]
    pub fn view(&self) -> ReloadView {
        ReloadView {
            successful: self.successful.load(Ordering::Relaxed),
            last_success_unix: self.last_success_ms.load(Ordering::Relaxed) as f64 / 1000.0,
        }
    }
}

/// Every target and the timing rules. Shared by the HTTP handlers.
#[derive(Debug)]
pub struct Scraper {
    targets: Vec<Target>,
    freshness: Freshness,
    /// The configuration reloads' state, when serving a configuration file.
    reload: Option<Arc<ReloadStats>>,
}

impl Scraper {
    /// A scraper over `targets` (their names are unique: the configuration checked it).
    #[must_use]
    pub fn new(targets: Vec<Target>, freshness: Freshness) -> Self {
        Self { targets, freshness, reload: None }
    }

    /// This scraper, also reporting the configuration reloads' state (`bms_exporter_config_*` in `/metrics`).
    #[must_use]
    pub fn with_reload(self, reload: Arc<ReloadStats>) -> Self {
        Self { reload: Some(reload), ..self }
    }

    /// The configuration reloads' state, when serving a configuration file.
    #[must_use]
    pub fn reload_view(&self) -> Option<ReloadView> {
        self.reload.as_deref().map(ReloadStats::view)
    }

    /// Start one worker per bus of `buses` and a scraper over every device on them, in the given order.
    #[must_use]
    pub fn spawn(buses: Vec<BusSpec>, freshness: Freshness) -> Self {
        let mut targets = Vec::new();
        for bus in buses {
            let transport = bus.transport.kind();
            let devices: Vec<(String, Protocol)> =
                bus.devices.iter().map(|d| (d.name.clone(), d.exchange.protocol())).collect();
            let handle = poller::spawn(bus);
            for (index, (name, protocol)) in devices.into_iter().enumerate() {
                targets.push(Target { name, protocol, transport, bus: handle.clone(), index });
            }
        }
        Self::new(targets, freshness)
    }

    /// The timing rules in force.
    #[must_use]
    pub fn freshness(&self) -> Freshness {
        self.freshness
    }

    /// The configured targets, in configuration order.
    #[must_use]
    pub fn targets(&self) -> &[Target] {
        &self.targets
    }

    /// The index of the target named `name`.
    #[must_use]
    pub fn find(&self, name: &str) -> Option<usize> {
        self.targets.iter().position(|t| t.name == name)
    }

    /// Whether every device has finished at least one poll (successful or not): until then a scrape would
    /// mostly wait on first connections, so orchestrators are told to hold back.
    #[must_use]
    pub fn ready(&self) -> bool {
        self.targets.iter().all(|t| t.bus.latest(t.index).is_some())
    }

    /// Ask every worker for a first poll in the background, so the first scrape finds data.
    pub fn warm_up(self: &Arc<Self>) {
        let this = Arc::clone(self);
        tokio::spawn(async move {
            this.collect(None, Instant::now() + Duration::from_secs(3600)).await;
        });
    }

    /// Statuses of every target (or only `only`), each no older than `max_age` where the worker can poll
    /// before `deadline`; past it, the last status known. Index-aligned with [`Scraper::targets`] (for `only`,
    /// a single entry).
    pub async fn collect(&self, only: Option<usize>, deadline: Instant) -> Vec<(usize, Seen)> {
        let chosen: Vec<usize> = match only {
            Some(index) if index < self.targets.len() => vec![index],
            Some(_) => Vec::new(),
            None => (0..self.targets.len()).collect(),
        };
        let mut asks = JoinSet::new();
        for &index in &chosen {
            let Some(target) = self.targets.get(index) else { continue };
            let bus = target.bus.clone();
            let (device, max_age) = (target.index, self.freshness.max_age);
            asks.spawn(async move {
                (index, tokio::time::timeout_at(deadline, bus.snapshot_until(device, max_age, deadline)).await)
            });
        }
        // A worker that is gone or too slow is not waited for: its latest status is served (a poll that ends
        // after the deadline is published all the same, for the next scrape).
        while asks.join_next().await.is_some() {}
        let now = unix_now();
        chosen
            .into_iter()
            .map(|index| {
                let status = self.targets.get(index).and_then(|t| t.bus.latest(t.index));
                let fresh = status.as_deref().is_some_and(|s| self.is_fresh(s, now));
                let values = status
                    .as_deref()
                    .map(|s| s.values.view(now, self.freshness.stale_after.as_secs_f64()))
                    .unwrap_or_default();
                (index, Seen { status, fresh, values })
            })
            .collect()
    }

    /// Whether `status` had a successful poll within `stale_after` of `now_unix`.
    #[must_use]
    pub fn is_fresh(&self, status: &DeviceStatus, now_unix: f64) -> bool {
        status.last_success_unix.is_some_and(|at| now_unix - at <= self.freshness.stale_after.as_secs_f64())
    }
}

/// Seconds since the Unix epoch (0 on a clock before 1970, which only a broken clock has).
#[must_use]
pub fn unix_now() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64())
}

/// How long a scrape may wait for fresh data: a little below the scrape timeout Prometheus announces in
/// `X-Prometheus-Scrape-Timeout-Seconds` (default 10 s), so the answer arrives before Prometheus gives up.
#[must_use]
pub fn scrape_budget(header: Option<&str>) -> Duration {
    const DEFAULT_S: f64 = 10.0;
    let timeout = header.and_then(|h| h.trim().parse::<f64>().ok()).filter(|t| t.is_finite() && *t > 0.0);
    let timeout = timeout.unwrap_or(DEFAULT_S).min(3600.0);
    // Leave a tenth (at least 250 ms, at most 1 s) for rendering and the network.
    let margin = (timeout / 10.0).clamp(0.25, 1.0);
    Duration::from_secs_f64((timeout - margin).max(timeout / 2.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_stats_start_successful_and_a_failure_keeps_the_last_success_time() {
        let stats = ReloadStats::loaded_now();
        let first = stats.view();
        assert!(first.successful);
        assert!((first.last_success_unix - unix_now()).abs() < 60.0);
        stats.failed();
        assert_eq!(stats.view(), ReloadView { successful: false, ..first });
    }

    #[test]
    fn the_budget_stays_below_the_announced_scrape_timeout() {
        assert_eq!(scrape_budget(None), Duration::from_secs(9));
        assert_eq!(scrape_budget(Some("10")), Duration::from_secs(9));
        assert_eq!(scrape_budget(Some("2.5")), Duration::from_millis(2250));
        assert_eq!(scrape_budget(Some("0.4")), Duration::from_millis(200));
        for bad in ["", "abc", "-1", "0", "NaN", "inf"] {
            assert_eq!(scrape_budget(Some(bad)), Duration::from_secs(9), "{bad:?}");
        }
    }
}
