//! Reloading the configuration file while serving (SIGHUP or `POST /-/reload`), as blackbox_exporter does: the
//! pure [`plan`] that compares the configuration in force with the new one, and [`Running`], the bus workers,
//! scraper and MQTT publisher a plan is applied to.
//!
//! The unit of change is the bus worker, because a worker owns its port and polls its devices by position: a bus
//! whose devices, device settings and timing are all unchanged keeps its worker untouched (its link, exchanges,
//! counters and last snapshots go on as if nothing happened). Any other change to a bus (a device added, removed
//! or changed on it, a new request gap) retires its worker between two polls and starts a new one for the new
//! device list; the new worker takes over the open link when the transport settings are the same, and every
//! device whose settings did not change takes over its exchange and its status, so its counters continue and
//! `/metrics` shows it without a gap. A changed device starts afresh (new counters, values after its first poll).
//! A bus that is gone is retired and its link closed (a Bluetooth module is disconnected and so released).
//!
//! A new file is loaded and validated completely, and a new `mqtt:` block's files read, before anything stops:
//! a file with an error changes nothing. Reloads never send anything to a BMS; they only start and stop workers.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use crate::config::mqtt::MqttConfig;
use crate::config::{self, Config, DeviceConfig, same_bus};
use crate::mqtt::{MqttStats, publisher};
use crate::poller::{self, BusHandle, BusSpec};
use crate::scrape::{Freshness, ReloadStats, Scraper, Target};

/// How long a reload waits for the workers it retires (all at once) to finish the job in progress; past it, a
/// bus's new worker starts without the old one's link and statuses, and the old worker closes its link when that
/// job ends (a new worker on a serial port then opens it at its next attempt, 2 s later). Well inside systemd's
/// stop timeout, so a shutdown that arrives during a reload is not held up for long.
const RETIRE_WAIT: Duration = Duration::from_secs(10);

/// What becomes of one bus of the new configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BusPlan {
    /// The old bus at this index has the same devices with the same settings and the same timing: its worker
    /// goes on untouched.
    Keep(usize),
    /// The old bus at index `old` is the same port, but its devices or timing changed: its worker is retired and
    /// a new one started, handing over the exchange and status of each device named in `keep` (its settings did
    /// not change).
    Restart {
        /// The old bus's index.
        old: usize,
        /// The devices that carry over.
        keep: Vec<String>,
    },
    /// A port the old configuration did not use.
    Start,
}

/// What becomes of the MQTT publisher.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MqttPlan {
    /// No `mqtt:` before or after.
    Off,
    /// The same `mqtt:` block: the publisher goes on untouched (it publishes the new device list).
    Keep,
    /// A changed block: the publisher says goodbye as on shutdown, and a new one connects with the new settings.
    Restart,
    /// A block that was not there: a publisher starts.
    Start,
    /// The block is gone: the publisher says goodbye and stops.
    Stop,
}

/// Everything a reload changes, from the old and the new configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// One entry per bus of the new configuration ([`Config::buses`] order).
    pub buses: Vec<BusPlan>,
    /// The old buses (indices) that no longer exist.
    pub removed_buses: Vec<usize>,
    /// Devices only the new configuration has.
    pub added: Vec<String>,
    /// Devices only the old configuration has.
    pub removed: Vec<String>,
    /// Devices in both whose settings differ (they start afresh).
    pub changed: Vec<String>,
    /// Devices in both with the same settings (they keep their counters and last snapshot).
    pub unchanged: Vec<String>,
    /// The MQTT publisher.
    pub mqtt: MqttPlan,
}

/// Compare the configuration in force with a new one.
#[must_use]
pub fn plan(old: &Config, new: &Config) -> Plan {
    let old_buses = old.bus_devices();
    let new_buses = new.bus_devices();
    // The bus timing every worker of a configuration shares.
    let timing = |c: &Config| (c.defaults.request_gap, c.defaults.stale_after);
    let same_timing = timing(old) == timing(new);
    let same_port = |a: &[&DeviceConfig], b: &[&DeviceConfig]| match (a.first(), b.first()) {
        (Some(a), Some(b)) => same_bus(&a.transport, &b.transport),
        _ => false,
    };
    let buses = new_buses
        .iter()
        .map(|bus| match old_buses.iter().position(|o| same_port(o, bus)) {
            Some(at) if same_timing && old_buses.get(at).is_some_and(|o| o == bus) => BusPlan::Keep(at),
            Some(at) => {
                let before = old_buses.get(at).map_or(&[][..], Vec::as_slice);
                let keep = bus.iter().filter(|d| before.contains(d)).map(|d| d.name.clone()).collect();
                BusPlan::Restart { old: at, keep }
            }
            None => BusPlan::Start,
        })
        .collect::<Vec<_>>();
    let removed_buses = (0..old_buses.len())
        .filter(|at| !buses.iter().any(|b| matches!(b, BusPlan::Keep(o) | BusPlan::Restart { old: o, .. } if o == at)))
        .collect();
    let names = |c: &Config| c.devices.iter().map(|d| d.name.clone()).collect::<Vec<_>>();
    let (mut added, mut changed, mut unchanged) = (Vec::new(), Vec::new(), Vec::new());
    for device in &new.devices {
        match old.device(&device.name) {
            None => added.push(device.name.clone()),
            Some(before) if before == device => unchanged.push(device.name.clone()),
            Some(_) => changed.push(device.name.clone()),
        }
    }
    let removed = names(old).into_iter().filter(|n| new.device(n).is_none()).collect();
    let mqtt = match (&old.mqtt, &new.mqtt) {
        (None, None) => MqttPlan::Off,
        (Some(a), Some(b)) if a == b => MqttPlan::Keep,
        (Some(_), Some(_)) => MqttPlan::Restart,
        (None, Some(_)) => MqttPlan::Start,
        (Some(_), None) => MqttPlan::Stop,
    };
    Plan { buses, removed_buses, added, removed, changed, unchanged, mqtt }
}

/// The running MQTT publisher and what it was started with.
#[derive(Debug)]
struct Mqtt {
    config: MqttConfig,
    publisher: publisher::Publisher,
    stats: Arc<MqttStats>,
}

/// The bus workers, the scraper over them and the MQTT publisher in force, and the configuration they came from.
#[derive(Debug)]
pub struct Running {
    /// The configuration file and what it said at the last successful load; `None` for `--demo`.
    file: Option<(PathBuf, Config)>,
    /// One handle per bus, in [`Config::buses`] order.
    buses: Vec<BusHandle>,
    /// The scraper in force; the publisher and the routes read it from here.
    scraper: watch::Sender<Arc<Scraper>>,
    mqtt: Option<Mqtt>,
    /// The reloads' outcome, when serving a configuration file.
    stats: Option<Arc<ReloadStats>>,
}

impl Running {
    /// Start the workers, scraper and publisher of `config`, loaded from `path` (on the current runtime).
    pub fn from_config(path: &Path, config: Config) -> anyhow::Result<Self> {
        let stats = Arc::new(ReloadStats::loaded_now());
        let buses: Vec<BusHandle> = config.buses().into_iter().map(poller::spawn).collect();
        let scraper = scraper(&config, &buses, &stats);
        let (scraper, _) = watch::channel(Arc::new(scraper));
        let mut running =
            Self { file: Some((path.to_owned(), config)), buses, scraper, mqtt: None, stats: Some(stats) };
        let mqtt = running.file.as_ref().and_then(|(_, c)| c.mqtt.clone());
        if let Some(mqtt) = mqtt {
            // An unreadable password file or a bad CA or client certificate fails the start here.
            running.mqtt = Some(running.start_mqtt(mqtt, Arc::new(MqttStats::default()))?);
        }
        Ok(running)
    }

    /// Start the demo's devices (no configuration file: nothing to reload).
    #[must_use]
    pub fn demo(buses: Vec<BusSpec>, freshness: Freshness) -> Self {
        let scraper = Scraper::spawn(buses, freshness);
        let (scraper, _) = watch::channel(Arc::new(scraper));
        Self { file: None, buses: Vec::new(), scraper, mqtt: None, stats: None }
    }

    /// The scraper in force.
    #[must_use]
    pub fn scraper(&self) -> Arc<Scraper> {
        Arc::clone(&self.scraper.borrow())
    }

    /// The MQTT publisher's health, while one runs.
    #[must_use]
    pub fn mqtt_stats(&self) -> Option<Arc<MqttStats>> {
        self.mqtt.as_ref().map(|m| Arc::clone(&m.stats))
    }

    /// Start the goodbye of the MQTT publisher, if one runs, without waiting for it (see [`Running::shutdown`]).
    pub fn stop_mqtt(&self) {
        if let Some(mqtt) = &self.mqtt {
            mqtt.publisher.stop_handle().stop();
        }
    }

    /// Say goodbye to the MQTT broker and stop; the bus workers stop when the last handle is dropped.
    pub async fn shutdown(self) {
        if let Some(mqtt) = self.mqtt {
            mqtt.publisher.shutdown().await;
        }
    }

    fn start_mqtt(&self, config: MqttConfig, stats: Arc<MqttStats>) -> anyhow::Result<Mqtt> {
        let (broker, layout) = (publisher::broker_url(&config), config.layout.as_str().to_owned());
        let (interval_s, discovery, control) =
            (config.interval.as_secs_f64(), config.discovery.enabled, config.control);
        let started = publisher::spawn(config.clone(), self.scraper.subscribe(), Arc::clone(&stats))?;
        tracing::info!(broker = %broker, layout, interval_s, discovery, control, "publishing to MQTT");
        Ok(Mqtt { config, publisher: started, stats })
    }

    /// Read the configuration file again and apply what changed. `Err` carries the reason (the file's
    /// `file:line:column` error) and leaves everything as it was; `Ok` says what changed.
    pub async fn reload(&mut self) -> Result<String, String> {
        let Some((path, _)) = &self.file else {
            return Err("--demo has no configuration file to reload".to_owned());
        };
        let loaded = config::load(path).map_err(|e| e.to_string());
        let checked = loaded.and_then(|new| match &new.mqtt {
            Some(mqtt) if self.mqtt.as_ref().is_none_or(|m| m.config != *mqtt) => {
                publisher::check(mqtt).map(|()| new).map_err(|e| format!("{}: {e:#}", path.display()))
            }
            _ => Ok(new),
        });
        let new = match checked {
            Ok(new) => new,
            Err(error) => {
                if let Some(stats) = &self.stats {
                    stats.failed();
                }
                return Err(error);
            }
        };
        let summary = self.apply(new).await;
        if let Some(stats) = &self.stats {
            stats.succeeded();
        }
        Ok(summary)
    }

    /// Move from the configuration in force to `new` (valid, its MQTT files readable).
    async fn apply(&mut self, new: Config) -> String {
        let Some((path, old)) = self.file.take() else { return String::new() };
        let plan = plan(&old, &new);
        let old_buses = std::mem::take(&mut self.buses);
        // Every worker that stops or restarts is retired first, all at once (each finishes its job in progress),
        // so the ports of gone buses are closed before any new worker opens one.
        let restarted = plan.buses.iter().filter_map(|b| match b {
            BusPlan::Restart { old, .. } => Some(*old),
            BusPlan::Keep(_) | BusPlan::Start => None,
        });
        let mut retiring = tokio::task::JoinSet::new();
        for at in plan.removed_buses.iter().copied().chain(restarted) {
            if let Some(handle) = old_buses.get(at).cloned() {
                retiring.spawn(async move { (at, retire(&handle).await) });
            }
        }
        let mut retired: Vec<Option<poller::Retired>> = old_buses.iter().map(|_| None).collect();
        while let Some(done) = retiring.join_next().await {
            if let Ok((at, Some(worker))) = done
                && let Some(slot) = retired.get_mut(at)
            {
                *slot = Some(worker);
            }
        }
        for &at in &plan.removed_buses {
            // Dropping what a gone worker handed back closes its link (and releases a Bluetooth module).
            if let Some(gone) = retired.get_mut(at) {
                drop(gone.take());
            }
        }
        let mut buses = Vec::with_capacity(plan.buses.len());
        for (spec, bus) in new.buses().into_iter().zip(&plan.buses) {
            let handle = match bus {
                BusPlan::Keep(at) => old_buses.get(*at).cloned().unwrap_or_else(|| poller::spawn(spec)),
                BusPlan::Restart { old, keep } => match retired.get_mut(*old).and_then(Option::take) {
                    Some(worker) => {
                        let keep: Vec<&str> = keep.iter().map(String::as_str).collect();
                        poller::respawn(spec, worker, &keep)
                    }
                    None => poller::spawn(spec),
                },
                BusPlan::Start => poller::spawn(spec),
            };
            buses.push(handle);
        }
        let stats = self.stats.clone().unwrap_or_else(|| Arc::new(ReloadStats::loaded_now()));
        let scraper = Arc::new(scraper(&new, &buses, &stats));
        scraper.warm_up();
        self.scraper.send_replace(scraper);
        self.buses = buses;
        match plan.mqtt {
            MqttPlan::Off | MqttPlan::Keep => {}
            MqttPlan::Stop | MqttPlan::Restart | MqttPlan::Start => {
                // The counters of bms_mqtt_* continue across a restart; they go only with the block.
                let stats = self.mqtt.as_ref().map_or_else(Arc::default, |m| Arc::clone(&m.stats));
                if let Some(running) = self.mqtt.take() {
                    // The goodbye of a shutdown (the will's message, DISCONNECT) under the old settings.
                    running.publisher.shutdown().await;
                }
                if let Some(mqtt) = new.mqtt.clone() {
                    match self.start_mqtt(mqtt, stats) {
                        Ok(started) => self.mqtt = Some(started),
                        // Checked before anything stopped; only a file changed since then gets here.
                        Err(error) => tracing::error!(error = %format!("{error:#}"), "cannot start MQTT publishing"),
                    }
                }
            }
        }
        let summary = summary(&plan);
        self.file = Some((path, new));
        summary
    }
}

/// Retire the worker of `handle`, waiting at most [`RETIRE_WAIT`].
async fn retire(handle: &BusHandle) -> Option<poller::Retired> {
    tokio::time::timeout(RETIRE_WAIT, handle.retire()).await.ok().flatten()
}

/// The scraper over `buses` (in [`Config::buses`] order) for `config`'s devices and freshness.
fn scraper(config: &Config, buses: &[BusHandle], stats: &Arc<ReloadStats>) -> Scraper {
    let mut targets = Vec::new();
    for (devices, bus) in config.bus_devices().into_iter().zip(buses) {
        for (index, device) in devices.into_iter().enumerate() {
            targets.push(Target {
                name: device.name.clone(),
                protocol: device.protocol,
                transport: device.transport.kind(),
                bus: bus.clone(),
                index,
            });
        }
    }
    let freshness = Freshness { max_age: config.defaults.max_age, stale_after: config.defaults.stale_after };
    Scraper::new(targets, freshness).with_reload(Arc::clone(stats))
}

/// What a plan changed, in one line for the log and the `/-/reload` answer.
fn summary(plan: &Plan) -> String {
    let list = |names: &[String]| if names.is_empty() { "none".to_owned() } else { names.join(", ") };
    let mqtt = match plan.mqtt {
        MqttPlan::Off => "off",
        MqttPlan::Keep => "unchanged",
        MqttPlan::Restart => "restarted",
        MqttPlan::Start => "started",
        MqttPlan::Stop => "stopped",
    };
    format!(
        "added: {}; removed: {}; changed: {}; unchanged: {}; mqtt: {mqtt}",
        list(&plan.added),
        list(&plan.removed),
        list(&plan.changed),
        list(&plan.unchanged)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(text: &str) -> Config {
        config::parse(text, Path::new("test.yaml")).unwrap()
    }

    const BASE: &str = "devices:
  - {name: house, protocol: daly, tcp: 'h:1'}
  - {name: shed, protocol: daly, serial: /dev/ttyUSB0}
  - {name: rack, protocol: pace, serial: /dev/ttyUSB0}
";

    #[test]
    fn the_same_file_keeps_every_worker_and_the_publisher() {
        let old = config(&format!("{BASE}mqtt: {{broker: 'mqtt://b:1883', client_id: x}}\n"));
        let plan = plan(&old, &old.clone());
        assert_eq!(plan.buses, [BusPlan::Keep(0), BusPlan::Keep(1)]);
        assert!(plan.removed_buses.is_empty() && plan.added.is_empty() && plan.removed.is_empty());
        assert!(plan.changed.is_empty());
        assert_eq!(plan.unchanged, ["house", "shed", "rack"]);
        assert_eq!(plan.mqtt, MqttPlan::Keep);
    }

    #[test]
    fn a_device_added_to_a_shared_bus_restarts_that_bus_only_carrying_its_neighbours() {
        let old = config(BASE);
        let new =
            config(&format!("{BASE}  - {{name: spare, protocol: daly, serial: /dev/ttyUSB0, daly: {{address: 2}}}}\n"));
        let plan = plan(&old, &new);
        assert_eq!(
            plan.buses,
            [BusPlan::Keep(0), BusPlan::Restart { old: 1, keep: vec!["shed".to_owned(), "rack".to_owned()] }]
        );
        assert_eq!((plan.added, plan.removed, plan.changed), (vec!["spare".to_owned()], vec![], vec![]));
        assert_eq!(plan.mqtt, MqttPlan::Off);
    }

    #[test]
    fn removed_changed_and_new_ports_are_told_apart() {
        let old = config(BASE);
        // house moves to another TCP endpoint, shed is gone, rack gets another timeout, a new Bluetooth device.
        let new = config(
            "devices:
  - {name: house, protocol: daly, tcp: 'h:2'}
  - {name: rack, protocol: pace, serial: /dev/ttyUSB0, timeout: 2s}
  - {name: boat, protocol: daly, bluetooth: 'AA:BB:CC:DD:EE:FF'}
",
        );
        let plan = plan(&old, &new);
        assert_eq!(plan.buses, [BusPlan::Start, BusPlan::Restart { old: 1, keep: vec![] }, BusPlan::Start]);
        assert_eq!(plan.removed_buses, [0], "the old TCP endpoint is closed");
        assert_eq!(plan.added, ["boat"]);
        assert_eq!(plan.removed, ["shed"]);
        assert_eq!(plan.changed, ["house", "rack"]);
        assert!(plan.unchanged.is_empty());
    }

    #[test]
    fn bus_timing_restarts_every_bus_but_keeps_every_device_and_max_age_alone_keeps_the_workers() {
        let old = config(BASE);
        let gap = config(&format!("defaults: {{request_gap: 200ms}}\n{BASE}"));
        let plan = plan(&old, &gap);
        assert_eq!(
            plan.buses,
            [
                BusPlan::Restart { old: 0, keep: vec!["house".to_owned()] },
                BusPlan::Restart { old: 1, keep: vec!["shed".to_owned(), "rack".to_owned()] }
            ]
        );
        assert_eq!(plan.unchanged.len(), 3);
        // max_age only changes what the scraper accepts; no worker needs to know.
        let max_age = config(&format!("defaults: {{max_age: 1s}}\n{BASE}"));
        assert_eq!(super::plan(&old, &max_age).buses, [BusPlan::Keep(0), BusPlan::Keep(1)]);
        // A default timeout reaches every device that sets none: they change.
        let timeout = config(&format!("defaults: {{timeout: 3s}}\n{BASE}"));
        assert_eq!(super::plan(&old, &timeout).changed.len(), 3);
    }

    #[test]
    fn the_mqtt_block_is_kept_restarted_started_or_stopped() {
        let without = config(BASE);
        let with = config(&format!("{BASE}mqtt: {{broker: 'mqtt://b:1883', client_id: x}}\n"));
        let prefix = config(&format!("{BASE}mqtt: {{broker: 'mqtt://b:1883', client_id: x, topic_prefix: other}}\n"));
        assert_eq!(plan(&without, &without).mqtt, MqttPlan::Off);
        assert_eq!(plan(&without, &with).mqtt, MqttPlan::Start);
        assert_eq!(plan(&with, &prefix).mqtt, MqttPlan::Restart);
        assert_eq!(plan(&with, &without).mqtt, MqttPlan::Stop);
        // The device part of the plan does not depend on MQTT.
        assert_eq!(plan(&with, &prefix).buses, [BusPlan::Keep(0), BusPlan::Keep(1)]);
    }

    #[test]
    fn the_summary_names_every_change() {
        let old = config(BASE);
        let new = config("devices:\n  - {name: house, protocol: daly, tcp: 'h:1'}\n");
        assert_eq!(
            summary(&plan(&old, &new)),
            "added: none; removed: shed, rack; changed: none; unchanged: house; mqtt: off"
        );
    }
}
