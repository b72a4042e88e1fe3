//! `mqtt cleanup`: removes the retained Home Assistant discovery configs (native layout) of devices that are no
//! longer configured, and their retained availability, by publishing empty retained payloads (which is how Home
//! Assistant is told to delete an entity). A dry run only lists what it would remove.

use std::collections::BTreeSet;
use std::time::Duration;

use anyhow::{Context as _, bail};
use rumqttc::{AsyncClient, Event, Packet, QoS};
use tokio::time::{Instant, timeout_at};

use super::connect;
use crate::config::mqtt::MqttConfig;

/// The node id of this exporter's discovery topics is this prefix followed by the device name.
pub const NODE_PREFIX: &str = "bms_exporter_";

/// How long connecting, subscribing and having the deletions acknowledged may each take.
const BROKER_TIMEOUT: Duration = Duration::from_secs(10);

/// What cleanup removed (or, in a dry run, would remove).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    /// The devices whose messages are removed, sorted.
    pub devices: Vec<String>,
    /// The retained topics removed: discovery configs, then availability topics, each sorted.
    pub removed: Vec<String>,
    /// Discovery configs of this exporter that belong to configured devices and were left alone.
    pub kept: usize,
    /// Nothing was published.
    pub dry_run: bool,
}

/// The name in a discovery topic's node id (its third level, `<prefix>/<component>/<node_id>/…/config`) when it
/// is one of this exporter's (`bms_exporter_<name>`); `None` for every other topic.
#[must_use]
pub fn discovery_owner<'a>(discovery_prefix: &str, topic: &'a str) -> Option<&'a str> {
    let rest = topic.strip_prefix(discovery_prefix)?.strip_prefix('/')?;
    let levels: Vec<&str> = rest.split('/').collect();
    let node = match levels.as_slice() {
        [_, node, _, "config"] | [_, node, "config"] => *node,
        _ => return None,
    };
    node.strip_prefix(NODE_PREFIX).filter(|name| !name.is_empty())
}

/// Whether the node-id name `name` belongs to a configured device: it is one, or it is one followed by a
/// two-digit pack suffix (`house_01`), so a per-pack node id of a live device is never taken for a stale device.
fn belongs_to_configured(name: &str, devices: &[String]) -> bool {
    devices.iter().any(|device| {
        name == device
            || name
                .strip_prefix(device.as_str())
                .and_then(|rest| rest.strip_prefix('_'))
                .is_some_and(|pack| pack.len() == 2 && pack.bytes().all(|b| b.is_ascii_digit()))
    })
}

/// The removals for the retained discovery topics `retained`, given the configured `devices` (pure: what
/// [`cleanup`] does once it has collected the topics).
#[must_use]
pub fn plan(config: &MqttConfig, devices: &[String], retained: &BTreeSet<String>) -> Report {
    let mut stale = BTreeSet::new();
    let mut removed = Vec::new();
    let mut kept = 0;
    for topic in retained {
        let Some(name) = discovery_owner(&config.discovery.prefix, topic) else { continue };
        if belongs_to_configured(name, devices) {
            kept += 1;
        } else {
            stale.insert(name.to_owned());
            removed.push(topic.clone());
        }
    }
    removed.extend(stale.iter().map(|name| format!("{}/{name}/availability", config.topic_prefix)));
    Report { devices: stale.into_iter().collect(), removed, kept, dry_run: false }
}

/// Connect to the broker of `config`, collect the retained discovery configs for `wait`, and remove those of
/// devices not in `devices` (with their availability); with `dry_run`, only report them. Native layout only.
pub async fn cleanup(config: &MqttConfig, devices: &[String], wait: Duration, dry_run: bool) -> anyhow::Result<Report> {
    let broker = format!("{}:{}", config.broker.host, config.broker.port);
    let mut options = connect::options(config, None)?;
    // Its own client id: taking the exporter's would disconnect a running exporter (and fire its last will).
    options.set_client_id(format!("{}-cleanup", config.client_id));
    let (client, mut events) = AsyncClient::new(options, 64);
    let filters =
        [format!("{}/+/+/+/config", config.discovery.prefix), format!("{}/+/+/config", config.discovery.prefix)];
    for filter in &filters {
        client.subscribe(filter, QoS::AtLeastOnce).await.context("queueing the subscription")?;
    }

    // Retained messages arrive right after the subscription is acknowledged; collect them for `wait` from then.
    let mut retained = BTreeSet::new();
    let mut subscribed = 0;
    let mut deadline = Instant::now() + BROKER_TIMEOUT;
    loop {
        let event = match timeout_at(deadline, events.poll()).await {
            Ok(event) => event.with_context(|| format!("talking to the MQTT broker at {broker}"))?,
            Err(_) if subscribed == filters.len() => break,
            Err(_) => {
                bail!("the MQTT broker at {broker} did not acknowledge the subscriptions within {BROKER_TIMEOUT:?}")
            }
        };
        match event {
            Event::Incoming(Packet::SubAck(_)) => {
                subscribed += 1;
                if subscribed == filters.len() {
                    deadline = Instant::now() + wait;
                }
            }
            // An empty retained payload is a deletion already made; a live (not retained) message is not a
            // stored config.
            Event::Incoming(Packet::Publish(publish)) if publish.retain && !publish.payload.is_empty() => {
                retained.insert(publish.topic);
            }
            _ => {}
        }
    }

    let mut report = plan(config, devices, &retained);
    report.dry_run = dry_run;
    if !dry_run && !report.removed.is_empty() {
        remove(&client, &mut events, &report.removed, &broker).await?;
    }
    client.disconnect().await.context("queueing the disconnect")?;
    // Send the DISCONNECT so the broker closes the session cleanly; an error here changes nothing done.
    let end = Instant::now() + Duration::from_secs(2);
    while let Ok(Ok(event)) = timeout_at(end, events.poll()).await {
        if matches!(event, Event::Outgoing(rumqttc::Outgoing::Disconnect)) {
            break;
        }
    }
    Ok(report)
}

/// Publish an empty retained payload on every topic and wait until the broker has acknowledged each (QoS 1).
async fn remove(
    client: &AsyncClient,
    events: &mut rumqttc::EventLoop,
    topics: &[String],
    broker: &str,
) -> anyhow::Result<()> {
    let sender = client.clone();
    let queued: Vec<String> = topics.to_vec();
    // Queued from a task of its own: the request channel is bounded and only drains while the loop below polls.
    let publishing = tokio::spawn(async move {
        for topic in queued {
            sender.publish(topic, QoS::AtLeastOnce, true, Vec::new()).await?;
        }
        Ok::<(), rumqttc::ClientError>(())
    });
    let mut acknowledged = 0;
    let deadline = Instant::now() + BROKER_TIMEOUT;
    while acknowledged < topics.len() {
        let event = match timeout_at(deadline, events.poll()).await {
            Ok(event) => event.with_context(|| format!("removing retained messages at the MQTT broker {broker}"))?,
            Err(_) => bail!(
                "the MQTT broker at {broker} acknowledged {acknowledged} of {} removals within {BROKER_TIMEOUT:?}",
                topics.len()
            ),
        };
        if matches!(event, Event::Incoming(Packet::PubAck(_))) {
            acknowledged += 1;
        }
    }
    publishing.await.context("the publishing task")?.context("queueing a removal")?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::mqtt::{Broker, Discovery, Layout};

    fn config() -> MqttConfig {
        MqttConfig {
            discovery: Discovery { enabled: true, prefix: "ha".to_owned() },
            ..MqttConfig::with_defaults(
                Broker { tls: false, host: "127.0.0.1".to_owned(), port: 1883 },
                "bms_exporter-test",
                Layout::Native,
            )
        }
    }

    #[test]
    fn only_this_exporters_node_ids_name_an_owner() {
        assert_eq!(discovery_owner("ha", "ha/sensor/bms_exporter_old/old_01_voltage/config"), Some("old"));
        assert_eq!(discovery_owner("ha", "ha/binary_sensor/bms_exporter_old/config"), Some("old"));
        for topic in [
            "ha/sensor/daly_bms/_soc_soc_percent/config",
            "ha/sensor/bms_exporter_/x/config",
            "ha/sensor/bms_exporter_old/x/state",
            "ha/sensor/bms_exporter_old/x/y/config",
            "other/sensor/bms_exporter_old/x/config",
            "hax/sensor/bms_exporter_old/x/config",
        ] {
            assert_eq!(discovery_owner("ha", topic), None, "{topic}");
        }
    }

    #[test]
    fn the_plan_removes_unconfigured_devices_and_their_availability_only() {
        let retained: BTreeSet<String> = [
            "ha/sensor/bms_exporter_old/old_01_voltage/config",
            "ha/switch/bms_exporter_old/old_01_charge_mosfet/config",
            "ha/sensor/bms_exporter_gone/config",
            "ha/sensor/bms_exporter_kept/kept_01_voltage/config",
            "ha/sensor/bms_exporter_kept_02/kept_02_voltage/config",
            "ha/sensor/daly_bms/_soc_soc_percent/config",
        ]
        .into_iter()
        .map(str::to_owned)
        .collect();
        let report = plan(&config(), &["kept".to_owned()], &retained);
        assert_eq!(report.devices, ["gone", "old"]);
        assert_eq!(
            report.removed,
            [
                "ha/sensor/bms_exporter_gone/config",
                "ha/sensor/bms_exporter_old/old_01_voltage/config",
                "ha/switch/bms_exporter_old/old_01_charge_mosfet/config",
                "bms/gone/availability",
                "bms/old/availability",
            ]
        );
        assert_eq!(report.kept, 2, "kept and its per-pack node id kept_02");
        assert_eq!(
            plan(&config(), &["kept".to_owned(), "old".to_owned(), "gone".to_owned()], &retained).removed.len(),
            0
        );
    }
}
