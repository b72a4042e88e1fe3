//! The publisher task: keeps one connection to the broker and, every `interval`, publishes what the bus workers
//! know through the configured layout.
//!
//! Two tasks: the *driver* polls rumqttc's event loop (reconnecting with backoff, logging once per outage and
//! cause, counting errors), and tells the *publisher* about connections and incoming messages; the publisher
//! asks the [`Scraper`] for every device (the same single-flight path as scrapes), sends birth, discovery and
//! state, re-sends discovery when Home Assistant comes online or a device's discovery changes, and hands
//! command messages to [`control::run`] one at a time, counting each result. While the broker is away nothing
//! is queued: state is skipped until the next connection, and a full request queue makes a publish give up
//! instead of waiting.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use anyhow::Context as _;
use rumqttc::{AsyncClient, ConnectReturnCode, ConnectionError, Event, EventLoop, Incoming, Outgoing, QoS};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::{Instant, MissedTickBehavior, sleep, timeout};

use super::control::Outcome;
use super::{DeviceView, Message, connect, control};
use crate::config::mqtt::MqttConfig;
use crate::metrics::{MqttView, names};
use crate::model::DeviceSnapshot;
use crate::protocol::Protocol;
use crate::scrape::{Scraper, unix_now};

/// The first wait after a failed connection; it doubles up to [`BACKOFF_MAX`].
pub const BACKOFF_MIN: Duration = Duration::from_secs(1);
/// The longest wait between two connection attempts.
pub const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// A connection that held this long starts the next outage's backoff from [`BACKOFF_MIN`] again (one that drops
/// at once, e.g. a second exporter with the same client id taking it over, keeps doubling).
const STABLE_CONNECTION: Duration = Duration::from_secs(10);
/// Requests rumqttc queues between the publisher and the socket (a Pace rack's discovery is a few hundred).
const REQUEST_QUEUE: usize = 256;
/// How long one publish may wait for room in the request queue before the rest of its batch is given up.
const QUEUE_WAIT: Duration = Duration::from_secs(2);
/// The longest wait for fresh data per interval (a fraction of the interval below that).
const COLLECT_MAX: Duration = Duration::from_secs(10);
/// The whole shutdown: the `offline` status, DISCONNECT and the socket's close.
pub const SHUTDOWN_BUDGET: Duration = Duration::from_secs(1);
/// Command messages waiting for the control handler; more are dropped with a warning.
const COMMAND_QUEUE: usize = 16;

/// The publisher's own health, read by `/metrics` (`bms_mqtt_*`).
#[derive(Debug, Default)]
pub struct MqttStats {
    connected: AtomicBool,
    messages: AtomicU64,
    bytes: AtomicU64,
    errors: AtomicU64,
    /// Unix time of the last publish in milliseconds; 0 before the first.
    last_publish_ms: AtomicU64,
    /// Control commands handled, per [`Outcome`] in the order of [`names::MQTT_COMMAND_RESULTS`].
    commands: [AtomicU64; names::MQTT_COMMAND_RESULTS.len()],
}

impl MqttStats {
    /// Whether the broker has accepted the connection and it has not failed since.
    #[must_use]
    pub fn connected(&self) -> bool {
        self.connected.load(Ordering::Relaxed)
    }

    fn set_connected(&self, connected: bool) {
        self.connected.store(connected, Ordering::Relaxed);
    }

    fn published(&self, payload_bytes: usize) {
        self.messages.fetch_add(1, Ordering::Relaxed);
        self.bytes.fetch_add(payload_bytes as u64, Ordering::Relaxed);
        let ms = (unix_now() * 1000.0) as u64;
        self.last_publish_ms.store(ms.max(1), Ordering::Relaxed);
    }

    fn connection_failed(&self) {
        self.errors.fetch_add(1, Ordering::Relaxed);
    }

    /// Count one handled control command under its result.
    pub fn command_handled(&self, outcome: Outcome) {
        // Outcome's labels are the table's, in its order (a unit test in control.rs holds them equal).
        if let Some(count) =
            names::MQTT_COMMAND_RESULTS.iter().position(|r| *r == outcome.as_str()).and_then(|i| self.commands.get(i))
        {
            count.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The values `/metrics` renders.
    #[must_use]
    pub fn view(&self) -> MqttView {
        let last = self.last_publish_ms.load(Ordering::Relaxed);
        MqttView {
            connected: self.connected(),
            messages_published: self.messages.load(Ordering::Relaxed),
            publish_bytes: self.bytes.load(Ordering::Relaxed),
            connection_errors: self.errors.load(Ordering::Relaxed),
            last_publish_unix: (last > 0).then(|| last as f64 / 1000.0),
            commands: self.commands.each_ref().map(|n| n.load(Ordering::Relaxed)),
        }
    }
}

/// The running publisher; [`Publisher::shutdown`] says goodbye to the broker.
#[derive(Debug)]
pub struct Publisher {
    stop: Stop,
    task: JoinHandle<()>,
}

/// Tells a publisher to say goodbye and stop, from wherever the shutdown signal arrives.
#[derive(Debug, Clone)]
pub struct Stop(Arc<watch::Sender<bool>>);

impl Stop {
    /// Start the goodbye (see [`Publisher::shutdown`]); returns at once.
    pub fn stop(&self) {
        let _ = self.0.send(true);
    }
}

impl Publisher {
    /// A handle that starts the goodbye without waiting for it.
    #[must_use]
    pub fn stop_handle(&self) -> Stop {
        self.stop.clone()
    }

    /// Publish `offline` on the exporter's status topic, disconnect and stop, within about [`SHUTDOWN_BUDGET`].
    pub async fn shutdown(self) {
        self.stop.stop();
        let mut task = self.task;
        // The task bounds its own goodbye; this is the backstop for one stuck elsewhere.
        if timeout(SHUTDOWN_BUDGET + Duration::from_millis(500), &mut task).await.is_err() {
            task.abort();
        }
    }
}

/// `mqtt://host:port` (or `mqtts://`) of the configured broker, for log lines.
#[must_use]
pub fn broker_url(config: &MqttConfig) -> String {
    let scheme = if config.broker.tls { "mqtts" } else { "mqtt" };
    format!("{scheme}://{}:{}", config.broker.host, config.broker.port)
}

/// The devices to publish: the scraper in force, replaced when a configuration reload changes the devices (each
/// round and each command takes the one current when it starts).
pub type Scrapers = watch::Receiver<Arc<Scraper>>;

/// Read the connection settings of `config` (password file, CA and client certificates) as [`spawn`] would,
/// without connecting: a reload checks a new `mqtt:` block this way before it stops the running publisher.
pub fn check(config: &MqttConfig) -> anyhow::Result<()> {
    let will = super::will(config);
    connect::options(config, will.as_ref()).context("the mqtt: broker connection settings")?;
    Ok(())
}

/// Start publishing the devices of the current scraper as `config` says, on the current tokio runtime. The
/// connection settings (password file, CA and client certificates) are read here, so a mistake in them fails the
/// start.
pub fn spawn(config: MqttConfig, scraper: Scrapers, stats: Arc<MqttStats>) -> anyhow::Result<Publisher> {
    let will = super::will(&config);
    let options = connect::options(&config, will.as_ref()).context("the mqtt: broker connection settings")?;
    let (client, eventloop) = AsyncClient::new(options, REQUEST_QUEUE);
    let (notes_tx, notes) = mpsc::channel(64);
    let broker = broker_url(&config);
    let driver = tokio::spawn(drive(eventloop, Arc::clone(&stats), notes_tx, broker));
    let (stop, stop_rx) = watch::channel(false);
    let config = Arc::new(config);
    let outbox = Outbox { client, stats, qos: connect::qos(config.qos), bad_topics: Arc::default() };
    let task = tokio::spawn(run(config, scraper, outbox, notes, stop_rx, driver));
    Ok(Publisher { stop: Stop(Arc::new(stop)), task })
}

/// What the driver tells the publisher.
#[derive(Debug)]
enum Note {
    /// The broker accepted a (re)connection: birth, subscriptions and discovery are due.
    Connected,
    /// A message arrived on a subscribed topic.
    Message { topic: String, payload: Vec<u8>, retain: bool },
}

/// The event loop: connects, reconnects with backoff, and reports connections and messages.
async fn drive(mut eventloop: EventLoop, stats: Arc<MqttStats>, notes: mpsc::Sender<Note>, broker: String) {
    let mut backoff = BACKOFF_MIN;
    // The cause last logged in the current outage (`None` while connected): each outage logs once per cause.
    let mut outage: Option<String> = None;
    let mut connected_at: Option<Instant> = None;
    let mut ever_connected = false;
    loop {
        match eventloop.poll().await {
            Ok(Event::Incoming(Incoming::ConnAck(_))) => {
                stats.set_connected(true);
                if outage.take().is_some() && ever_connected {
                    tracing::info!(broker = %broker, "MQTT broker connection is back");
                } else {
                    tracing::info!(broker = %broker, "connected to the MQTT broker");
                }
                ever_connected = true;
                connected_at = Some(Instant::now());
                if notes.send(Note::Connected).await.is_err() {
                    return;
                }
            }
            Ok(Event::Incoming(Incoming::Publish(publish))) => {
                let note =
                    Note::Message { topic: publish.topic, payload: publish.payload.to_vec(), retain: publish.retain };
                match notes.try_send(note) {
                    Ok(()) => {}
                    Err(mpsc::error::TrySendError::Full(_)) => {
                        tracing::warn!("the MQTT publisher is busy; an incoming message was dropped");
                    }
                    Err(mpsc::error::TrySendError::Closed(_)) => return,
                }
            }
            // Our own goodbye went out, or every client handle is gone: nothing more to do.
            Ok(Event::Outgoing(Outgoing::Disconnect)) | Err(ConnectionError::RequestsDone) => {
                stats.set_connected(false);
                return;
            }
            Ok(_) => {}
            Err(error) => {
                stats.set_connected(false);
                stats.connection_failed();
                let cause = describe(&error);
                let retry_s = backoff.as_secs();
                let refused = matches!(error, ConnectionError::ConnectionRefused(_));
                if outage.as_deref() == Some(cause.as_str()) {
                    tracing::debug!(broker = %broker, error = %cause, retry_s, "MQTT connection attempt failed");
                } else if outage.is_none() && ever_connected {
                    tracing::warn!(
                        broker = %broker, error = %cause, retry_s,
                        "MQTT broker connection lost; /metrics is unaffected, reconnecting with backoff"
                    );
                } else if outage.is_none() || refused {
                    // The first failure of an outage, and a refusal whatever came before it: someone has to fix
                    // the credentials or the ACLs.
                    tracing::warn!(
                        broker = %broker, error = %cause, retry_s,
                        "cannot connect to the MQTT broker; /metrics is unaffected, retrying with backoff"
                    );
                } else {
                    tracing::info!(broker = %broker, error = %cause, retry_s, "still no MQTT broker connection");
                }
                outage = Some(cause);
                if connected_at.take().is_some_and(|at| at.elapsed() >= STABLE_CONNECTION) {
                    backoff = BACKOFF_MIN;
                }
                sleep(backoff).await;
                backoff = (backoff * 2).min(BACKOFF_MAX);
            }
        }
    }
}

/// A connection error in words, with the broker's reason for a refusal.
fn describe(error: &ConnectionError) -> String {
    match error {
        ConnectionError::ConnectionRefused(code) => {
            let reason = match code {
                ConnectReturnCode::BadUserNamePassword => {
                    "bad user name or password (check mqtt.username and password_file)"
                }
                ConnectReturnCode::NotAuthorized => "not authorized (check the broker's users and ACLs)",
                ConnectReturnCode::BadClientId => "client id rejected (check mqtt.client_id)",
                ConnectReturnCode::RefusedProtocolVersion => "MQTT 3.1.1 not accepted",
                ConnectReturnCode::ServiceUnavailable => "service unavailable",
                ConnectReturnCode::Success => "success (unexpected)",
            };
            format!("the broker refused the connection: {reason}")
        }
        other => other.to_string(),
    }
}

/// The publishing side of the client, shared with the command handler.
#[derive(Debug, Clone)]
struct Outbox {
    client: AsyncClient,
    stats: Arc<MqttStats>,
    qos: QoS,
    /// Topics already reported as invalid (a layout bug or a device name with MQTT wildcards): warned once.
    bad_topics: Arc<std::sync::Mutex<HashSet<String>>>,
}

/// Why a publish did not happen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Skipped {
    /// Not connected, or the request queue stayed full: the rest of the batch waits for the next round.
    NotNow,
    /// This message cannot be sent at all (invalid topic); the batch goes on.
    Invalid,
}

impl Outbox {
    /// Hand `message` to the connection, unless it is down or its queue stays full for [`QUEUE_WAIT`].
    async fn publish(&self, message: &Message) -> Result<(), Skipped> {
        if !self.stats.connected() {
            return Err(Skipped::NotNow);
        }
        if !rumqttc::valid_topic(&message.topic) {
            let mut bad = self.bad_topics.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            if bad.insert(message.topic.clone()) {
                tracing::warn!(topic = %message.topic, "not a valid MQTT topic; this message is not published");
            }
            return Err(Skipped::Invalid);
        }
        let send = self.client.publish(&message.topic, self.qos, message.retain, message.payload.as_bytes());
        match timeout(QUEUE_WAIT, send).await {
            Ok(Ok(())) => {
                self.stats.published(message.payload.len());
                Ok(())
            }
            Ok(Err(error)) => {
                tracing::debug!(%error, topic = %message.topic, "the MQTT client is gone");
                Err(Skipped::NotNow)
            }
            Err(_) => {
                tracing::debug!(topic = %message.topic, "the MQTT request queue stayed full; the rest waits");
                Err(Skipped::NotNow)
            }
        }
    }

    /// Publish `messages` in order; `false` when the batch was cut short.
    async fn publish_all<'a>(&self, messages: impl IntoIterator<Item = &'a Message>) -> bool {
        for message in messages {
            if self.publish(message).await == Err(Skipped::NotNow) {
                return false;
            }
        }
        true
    }

    async fn subscribe(&self, filter: &str) {
        match timeout(QUEUE_WAIT, self.client.subscribe(filter, QoS::AtLeastOnce)).await {
            Ok(Ok(())) => tracing::debug!(filter, "subscribed"),
            Ok(Err(error)) => tracing::warn!(filter, %error, "cannot subscribe"),
            Err(_) => tracing::warn!(filter, "cannot subscribe: the MQTT request queue stayed full"),
        }
    }
}

/// The publisher's state between intervals.
struct Run {
    config: Arc<MqttConfig>,
    scraper: Scrapers,
    outbox: Outbox,
    /// Every retained message (discovery, availability) sent on this connection, by topic: the broker keeps it,
    /// so it is sent again only when its payload changed (or discovery is due).
    retained_sent: HashMap<String, String>,
    /// Send every discovery message at the next round (a new connection, Home Assistant restarted).
    discovery_due: bool,
    /// The first connection's birth and subscriptions are done. The client marks itself connected before this
    /// task hears of it, and a round in between would send discovery once more than the connection needs.
    greeted: bool,
    /// The devices the last round published: one a reload removed is published once more, as down, so its
    /// retained availability does not stay `online`.
    published: Vec<(String, Protocol)>,
}

async fn run(
    config: Arc<MqttConfig>,
    scraper: Scrapers,
    outbox: Outbox,
    mut notes: mpsc::Receiver<Note>,
    mut stop: watch::Receiver<bool>,
    mut driver: JoinHandle<()>,
) {
    let ha_status = config.discovery.enabled.then(|| format!("{}/status", config.discovery.prefix));
    let command_filter = control::command_filter(&config);
    let commands = command_filter.as_ref().map(|_| spawn_commands(&config, &scraper, &outbox));
    let mut ticks = tokio::time::interval(config.interval);
    ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut state = Run {
        config: Arc::clone(&config),
        scraper,
        outbox,
        retained_sent: HashMap::new(),
        discovery_due: true,
        greeted: false,
        published: Vec::new(),
    };
    loop {
        tokio::select! {
            () = stopped(&mut stop) => break,
            note = notes.recv() => match note {
                None => break,
                Some(Note::Connected) => {
                    if let Some(birth) = super::birth(&config) {
                        let _ = state.outbox.publish(&birth).await;
                    }
                    for filter in ha_status.iter().chain(&command_filter) {
                        state.outbox.subscribe(filter).await;
                    }
                    // A new connection may reach a broker that lost what it retained (restarted without
                    // persistence), and the birth may have overwritten an availability topic (bmspace).
                    state.retained_sent.clear();
                    state.discovery_due = true;
                    state.greeted = true;
                    ticks.reset_immediately();
                }
                Some(Note::Message { topic, payload, retain }) => {
                    if ha_status.as_deref() == Some(topic.as_str()) {
                        // A retained `online` is an old message replayed on subscribing: discovery was just sent.
                        if payload.trim_ascii() == b"online" && !retain {
                            tracing::info!("Home Assistant is online; sending discovery again");
                            state.discovery_due = true;
                            ticks.reset_immediately();
                        }
                    } else if let (Some(filter), Some(commands)) = (&command_filter, &commands)
                        && rumqttc::matches(&topic, filter)
                    {
                        if retain {
                            // A retained command would run again on every reconnect.
                            tracing::warn!(topic, "ignoring a retained MQTT command; publish commands without retain");
                        } else if commands.try_send((topic, payload)).is_err() {
                            tracing::warn!("MQTT commands are arriving faster than they run; one dropped");
                        }
                    }
                }
            },
            _ = ticks.tick() => {
                tokio::select! {
                    () = stopped(&mut stop) => break,
                    () = state.round() => {}
                }
            }
        }
    }
    goodbye(&config, &state.outbox, &mut driver).await;
}

/// Resolves once a stop is asked for (or the [`Publisher`] is dropped).
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|stop| *stop).await;
}

impl Run {
    /// One interval: every device's discovery (when due or changed) and state.
    async fn round(&mut self) {
        if !self.greeted || !self.outbox.stats.connected() {
            return;
        }
        let interval = self.config.interval;
        let deadline = Instant::now() + (interval.mul_f64(0.8)).min(COLLECT_MAX);
        // One scraper for the whole round: a reload in between must not pair a status with another device.
        let scraper = Arc::clone(&self.scraper.borrow());
        let gone: Vec<(String, Protocol)> =
            self.published.iter().filter(|(name, _)| scraper.find(name).is_none()).cloned().collect();
        for (name, protocol) in &gone {
            let nothing = DeviceSnapshot::default();
            let view = DeviceView { name, protocol: *protocol, up: false, values: &nothing, energy: &[] };
            if !self.send(&super::state(&self.config, &view), false).await {
                return;
            }
        }
        self.published = scraper.targets().iter().map(|t| (t.name.clone(), t.protocol)).collect();
        let seen = scraper.collect(None, deadline).await;
        if self.discovery_due && !self.send(&super::exporter_discovery(&self.config), true).await {
            return;
        }
        for (index, seen) in &seen {
            let Some(target) = scraper.targets().get(*index) else { continue };
            let view = DeviceView {
                name: &target.name,
                protocol: target.protocol,
                // As bms_up: the last poll answered everything and the last success is fresh.
                up: seen.fresh && seen.status.as_deref().is_some_and(|s| s.last.succeeded()),
                values: &seen.values,
                // The layouts show a pack's totals only next to its (fresh) values.
                energy: seen.status.as_deref().map_or(&[], |s| s.energy.packs()),
            };
            if !self.send(&super::discovery(&self.config, &view), self.discovery_due).await
                || !self.send(&super::state(&self.config, &view), false).await
            {
                return;
            }
        }
        // Only a round that sent everything settles a due re-send of discovery.
        self.discovery_due = false;
    }

    /// Publish `messages` in order, leaving out each retained one this connection already sent with the same
    /// payload unless `all`; `false` when the batch was cut short (the rest waits for the next round).
    async fn send(&mut self, messages: &[Message], all: bool) -> bool {
        for message in messages {
            if message.retain && !all && self.retained_sent.get(&message.topic) == Some(&message.payload) {
                continue;
            }
            match self.outbox.publish(message).await {
                Ok(()) if message.retain => {
                    self.retained_sent.insert(message.topic.clone(), message.payload.clone());
                }
                Ok(()) | Err(Skipped::Invalid) => {}
                Err(Skipped::NotNow) => return false,
            }
        }
        true
    }
}

/// The command handler: one command at a time, through the same guarded path as `bms_exporter set`.
fn spawn_commands(config: &Arc<MqttConfig>, scraper: &Scrapers, outbox: &Outbox) -> mpsc::Sender<(String, Vec<u8>)> {
    let (tx, mut rx) = mpsc::channel::<(String, Vec<u8>)>(COMMAND_QUEUE);
    let (config, scrapers, outbox) = (Arc::clone(config), scraper.clone(), outbox.clone());
    tokio::spawn(async move {
        while let Some((topic, payload)) = rx.recv().await {
            let scraper = Arc::clone(&scrapers.borrow());
            let handled = control::run(&config, &scraper, &topic, &payload).await;
            outbox.stats.command_handled(handled.outcome);
            // Only the values: availability is the rounds' (a retained message sent from here would not be in
            // their record of what the broker holds, so a later change back could be left out).
            let values: Vec<&Message> = handled.messages.iter().filter(|m| !m.retain).collect();
            outbox.publish_all(values).await;
        }
    });
    tx
}

/// Tell the broker (and so Home Assistant) that the exporter is going: the will's content, retained, then a
/// clean DISCONNECT, all within [`SHUTDOWN_BUDGET`].
async fn goodbye(config: &MqttConfig, outbox: &Outbox, driver: &mut JoinHandle<()>) {
    let deadline = Instant::now() + SHUTDOWN_BUDGET;
    if outbox.stats.connected() {
        if let Some(will) = super::will(config) {
            let send = outbox.client.publish(&will.topic, outbox.qos, will.retain, will.payload.as_bytes());
            if let Ok(Ok(())) = tokio::time::timeout_at(deadline, send).await {
                outbox.stats.published(will.payload.len());
            }
        }
        let _ = tokio::time::timeout_at(deadline, outbox.client.disconnect()).await;
        if tokio::time::timeout_at(deadline, &mut *driver).await.is_ok() {
            tracing::info!("disconnected from the MQTT broker");
        }
    }
    driver.abort();
    outbox.stats.set_connected(false);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::mqtt::{Broker, Layout};

    fn config() -> MqttConfig {
        MqttConfig::with_defaults(Broker { tls: false, host: "127.0.0.1".to_owned(), port: 1 }, "unit", Layout::Native)
    }

    /// An outbox whose client is never driven: its request queue holds `room` requests.
    fn unpolled(room: usize) -> (Outbox, EventLoop) {
        let options = connect::options(&config(), None).unwrap();
        let (client, eventloop) = AsyncClient::new(options, room);
        let outbox = Outbox { client, stats: Arc::default(), qos: QoS::AtLeastOnce, bad_topics: Arc::default() };
        (outbox, eventloop)
    }

    #[test]
    fn refusals_name_the_broker_reason_and_urls_name_the_scheme() {
        let refused = |code| describe(&ConnectionError::ConnectionRefused(code));
        assert!(refused(ConnectReturnCode::BadUserNamePassword).contains("bad user name or password"));
        assert!(
            refused(ConnectReturnCode::NotAuthorized).starts_with("the broker refused the connection: not authorized")
        );
        let mut c = config();
        assert_eq!(broker_url(&c), "mqtt://127.0.0.1:1");
        c.broker.tls = true;
        assert_eq!(broker_url(&c), "mqtts://127.0.0.1:1");
    }

    #[test]
    fn the_stats_start_disconnected_with_no_publish_and_count_payload_bytes() {
        let stats = MqttStats::default();
        assert_eq!(stats.view(), MqttView::default());
        stats.set_connected(true);
        stats.published(10);
        stats.published(5);
        stats.connection_failed();
        stats.command_handled(Outcome::Obeyed);
        stats.command_handled(Outcome::Refused);
        stats.command_handled(Outcome::Refused);
        stats.command_handled(Outcome::Failed);
        let view = stats.view();
        assert!(view.connected);
        assert_eq!((view.messages_published, view.publish_bytes, view.connection_errors), (2, 15, 1));
        // refused, duplicate, obeyed, ignored_by_bms, failed.
        assert_eq!(view.commands, [2, 0, 1, 0, 1]);
        assert!(view.last_publish_unix.is_some_and(|t| (t - unix_now()).abs() < 60.0));
    }

    #[tokio::test]
    async fn nothing_is_queued_while_disconnected_and_a_full_queue_gives_up_instead_of_blocking() {
        let (outbox, _eventloop) = unpolled(1);
        let message = Message::new("bms/house/01/state", "{}");
        assert_eq!(outbox.publish(&message).await, Err(Skipped::NotNow));
        assert_eq!(outbox.stats.view().messages_published, 0);

        outbox.stats.set_connected(true);
        assert_eq!(outbox.publish(&message).await, Ok(()), "the queue has room for one");
        let started = Instant::now();
        assert_eq!(outbox.publish(&message).await, Err(Skipped::NotNow), "the event loop is not draining it");
        assert!(started.elapsed() < QUEUE_WAIT + Duration::from_secs(1));
        assert!(!outbox.publish_all([&message, &message]).await, "a batch stops at the first message that waits");
        let view = outbox.stats.view();
        assert_eq!((view.messages_published, view.publish_bytes), (1, 2));

        // A topic no broker accepts is skipped (once warned), without ending the batch.
        let (outbox, _eventloop) = unpolled(4);
        outbox.stats.set_connected(true);
        let bad = Message::new("bms/house+/01/state", "{}");
        assert_eq!(outbox.publish(&bad).await, Err(Skipped::Invalid));
        assert!(outbox.publish_all([&bad, &message]).await);
        assert_eq!(outbox.stats.view().messages_published, 1);
    }
}
