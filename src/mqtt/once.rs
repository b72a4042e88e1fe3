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
use crate::config::mqtt::{Broker, MqttConfig};

/// How long a one-shot publish may take in all, connecting included.
pub const DEADLINE: Duration = Duration::from_secs(15);

/// Parse a broker URL: `mqtt://HOST[:PORT]` (default port 1883) or `mqtts://HOST[:PORT]` (TLS, default 8883);
/// an IPv6 address goes in brackets.
pub fn parse_broker(url: &str) -> Result<Broker, String> {
    let usage = || format!("{url:?}: expected mqtt://HOST[:PORT] or mqtts://HOST[:PORT]");
    let (tls, rest) = if let Some(rest) = url.strip_prefix("mqtt://") {
        (false, rest)
    } else if let Some(rest) = url.strip_prefix("mqtts://") {
        (true, rest)
    } else {
        return Err(usage());
    };
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    let (host, port) = if let Some(bracketed) = rest.strip_prefix('[') {
        let (address, after) = bracketed.split_once(']').ok_or_else(usage)?;
        let port = if after.is_empty() { after } else { after.strip_prefix(':').ok_or_else(usage)? };
        (format!("[{address}]"), port)
    } else {
        let (host, port) = rest.split_once(':').unwrap_or((rest, ""));
        (host.to_owned(), port)
    };
    if host.is_empty() || host == "[]" || host.contains(['/', '@', '?', '#']) {
        return Err(usage());
    }
    let port = if port.is_empty() {
        if tls { 8883 } else { 1883 }
    } else {
        match port.parse::<u16>() {
            Ok(p) if p > 0 => p,
            _ => return Err(format!("{url:?}: {port:?} is not a TCP port")),
        }
    };
    Ok(Broker { tls, host, port })
}

/// The broker as a URL, for messages.
fn describe(broker: &Broker) -> String {
    format!("{}://{}:{}", if broker.tls { "mqtts" } else { "mqtt" }, broker.host, broker.port)
}

/// Connect to the broker of `config`, publish `messages` in order at `config.qos`, wait until the broker has
/// them all, then disconnect; everything within `deadline`.
pub async fn publish(config: &MqttConfig, messages: &[Message], deadline: Duration) -> anyhow::Result<()> {
    let broker = describe(&config.broker);
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
    use crate::config::mqtt::{Discovery, Layout, MqttTls};

    #[test]
    fn broker_urls_take_a_scheme_a_host_and_an_optional_port() {
        let broker = |tls, host: &str, port| Ok(Broker { tls, host: host.to_owned(), port });
        assert_eq!(parse_broker("mqtt://localhost"), broker(false, "localhost", 1883));
        assert_eq!(parse_broker("mqtt://10.0.0.5:1884"), broker(false, "10.0.0.5", 1884));
        assert_eq!(parse_broker("mqtts://broker.lan"), broker(true, "broker.lan", 8883));
        assert_eq!(parse_broker("mqtts://broker.lan:8884/"), broker(true, "broker.lan", 8884));
        assert_eq!(parse_broker("mqtt://[::1]:1885"), broker(false, "[::1]", 1885));
        assert_eq!(parse_broker("mqtt://[::1]"), broker(false, "[::1]", 1883));
        for bad in ["localhost:1883", "http://x", "mqtt://", "mqtt://:1883", "mqtt://h:0", "mqtt://h:x", "mqtt://h/t"] {
            assert!(parse_broker(bad).is_err(), "{bad}");
        }
        assert!(parse_broker("mqtt://h:99999").unwrap_err().contains("not a TCP port"));
    }

    #[test]
    fn an_unreachable_broker_is_a_clear_error_not_a_hang() {
        // A port nothing listens on: bind one, note it, close it.
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let config = MqttConfig {
            broker: Broker { tls: false, host: "127.0.0.1".to_owned(), port },
            client_id: "once-test".to_owned(),
            username: None,
            password_file: None,
            tls: MqttTls::default(),
            topic_prefix: "daly_bms".to_owned(),
            interval: Duration::from_secs(10),
            qos: 1,
            layout: Layout::DalyBmsCli,
            discovery: Discovery { enabled: false, prefix: "homeassistant".to_owned() },
            control: false,
            zero_pad_number_cells: 0,
            zero_pad_number_packs: 0,
        };
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let error = runtime
            .block_on(publish(&config, &[Message::new("t", "v")], Duration::from_secs(5)))
            .unwrap_err()
            .to_string();
        assert!(error.contains(&format!("cannot reach the MQTT broker at mqtt://127.0.0.1:{port}")), "{error}");
    }
}
