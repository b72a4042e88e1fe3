//! One-shot publishing, for `read --mqtt`: connect, send a list of messages, wait until the broker has every
//! one, disconnect cleanly — or fail with a clear error within a deadline, so a cron job never hangs and never
//! reports success for messages that were not delivered.
//!
//! Why the care: `daly-bms-cli --mqtt` writes its messages and closes the socket without ever reading the
//! broker's CONNACK; the unread CONNACK makes the kernel reset the connection, and the broker drops whatever it
//! had not read yet (on a fast link, most of the burst). Here the messages go at the configured QoS and the
//! command waits for the broker's acknowledgements (QoS 1) or for every byte to be written (QoS 0) before it
//! sends DISCONNECT.

use std::time::Duration;

use anyhow::{Context as _, anyhow, bail};
use rumqttc::{AsyncClient, ConnectionError, Event, EventLoop, Outgoing, Packet, QoS};

use super::Message;
use super::connect::{options, qos};
use crate::config::mqtt::MqttConfig;

/// How long a one-shot publish may take in all, connecting included.
pub const DEADLINE: Duration = Duration::from_secs(15);

/// Connect to the broker of `config`, publish `messages` in order at `config.qos`, wait until the broker has
/// them all, then disconnect; everything within `deadline`.
pub async fn publish(config: &MqttConfig, messages: &[Message], deadline: Duration) -> anyhow::Result<()> {
    let broker = config.broker.to_string();
    let options = options(config, None)?;
    // Room for every message and the DISCONNECT: nothing waits on the request channel.
    let (client, events) = AsyncClient::new(options, messages.len() + 1);
    tokio::time::timeout(deadline, run(&client, events, config, messages, &broker)).await.map_err(|_| {
        anyhow!("the MQTT broker at {broker} did not take {} message(s) within {deadline:?}", messages.len())
    })?
}

async fn run(
    client: &AsyncClient,
    mut events: EventLoop,
    config: &MqttConfig,
    messages: &[Message],
    broker: &str,
) -> anyhow::Result<()> {
    // Connect before queueing, so an unreachable or refusing broker is reported as that.
    loop {
        match events.poll().await {
            Ok(Event::Incoming(Packet::ConnAck(_))) => break,
            Ok(_) => {}
            Err(ConnectionError::ConnectionRefused(code)) => {
                bail!("the MQTT broker at {broker} refused the connection: {code:?}")
            }
            Err(error) => bail!("cannot reach the MQTT broker at {broker}: {error}"),
        }
    }
    let level = qos(config.qos);
    for m in messages {
        client
            .try_publish(m.topic.as_str(), level, m.retain, m.payload.clone().into_bytes())
            .with_context(|| format!("queueing the message for {}", m.topic))?;
    }
    let mut left = messages.len();
    while left > 0 {
        match events.poll().await.with_context(|| format!("publishing to the MQTT broker at {broker}"))? {
            // QoS 0: the event comes once the packet is written and flushed.
            Event::Outgoing(Outgoing::Publish(_)) if level == QoS::AtMostOnce => left -= 1,
            Event::Incoming(Packet::PubAck(_)) if level != QoS::AtMostOnce => left -= 1,
            _ => {}
        }
    }
    client.try_disconnect().context("queueing the MQTT DISCONNECT")?;
    loop {
        match events.poll().await {
            Ok(Event::Outgoing(Outgoing::Disconnect)) => return Ok(()),
            Ok(_) => {}
            Err(error) => bail!("disconnecting from the MQTT broker at {broker}: {error}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::mqtt::{Broker, Discovery, Layout};

    #[test]
    fn an_unreachable_broker_is_a_clear_error_not_a_hang() {
        // A port nothing listens on: bind one, note it, close it.
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let config = MqttConfig {
            discovery: Discovery { enabled: false, prefix: "homeassistant".to_owned() },
            ..MqttConfig::with_defaults(
                Broker { tls: false, host: "127.0.0.1".to_owned(), port },
                "once-test",
                Layout::DalyBmsCli,
            )
        };
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let error = runtime
            .block_on(publish(&config, &[Message::new("t", "v")], Duration::from_secs(5)))
            .unwrap_err()
            .to_string();
        assert!(error.contains(&format!("cannot reach the MQTT broker at mqtt://127.0.0.1:{port}")), "{error}");
    }
}
