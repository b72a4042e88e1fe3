//! MQTT control end to end through the library: `mqtt::control::run` over a `Scraper` whose bus worker reaches a
//! `bms_exporter simulate` Daly bus on a PTY, checked against the simulator's truth file and the worker's
//! counters (tests/tests.rs `mod mqtt_control`).

use std::path::Path;
use std::time::Duration;

use bms_exporter::config::mqtt::{Broker, Layout, MqttConfig};
use bms_exporter::model::{CurrentSign, DeviceSnapshot, Sections};
use bms_exporter::mqtt::control::{self, Handled, Outcome};
use bms_exporter::poller::{BusSpec, DeviceSpec};
use bms_exporter::protocol::daly::exchange::DalyExchange;
use bms_exporter::protocol::daly::{Address, Filler};
use bms_exporter::protocol::pace::VER_PACE;
use bms_exporter::protocol::pace::exchange::{PaceExchange, PackSelection};
use bms_exporter::protocol::{DecodeOptions, Exchange};
use bms_exporter::scrape::{Freshness, Scraper};
use bms_exporter::session::Settings;
use bms_exporter::transport::{Parity, SerialSettings, TcpSettings, TransportSettings};

use crate::util::Simulator;

fn mqtt(control: bool) -> MqttConfig {
    MqttConfig {
        control,
        ..MqttConfig::with_defaults(
            Broker { tls: false, host: "127.0.0.1".to_owned(), port: 1883 },
            "test",
            Layout::Native,
        )
    }
}

/// `house`: the simulator's boards 1 and 2 on `link`; `rack`: a Pace master on a TCP port nobody listens on
/// (a command for it must be refused before any bus is touched).
fn scraper(link: &Path) -> Scraper {
    let options = DecodeOptions { current_sign: CurrentSign::Auto, ..DecodeOptions::default() };
    let daly: Box<dyn Exchange> =
        Box::new(DalyExchange::new(vec![Address::Board(1), Address::Board(2)], Filler::Zero, options));
    let pace: Box<dyn Exchange> = Box::new(PaceExchange::new(1, PackSelection::All, VER_PACE));
    let settings =
        Settings { timeout: Duration::from_secs(2), retries: 1, request_gap: Duration::ZERO, ..Settings::default() };
    let device = |name: &str, exchange| DeviceSpec { name: name.to_owned(), exchange, sections: Sections::all() };
    let buses = vec![
        BusSpec {
            transport: TransportSettings::Serial(SerialSettings {
                path: link.to_owned(),
                baud: 9600,
                parity: Parity::None,
            }),
            settings,
            stale_after: Duration::from_secs(60),
            devices: vec![device("house", daly)],
        },
        BusSpec {
            transport: TransportSettings::Tcp(TcpSettings {
                address: "127.0.0.1:9".to_owned(),
                connect_timeout: Duration::from_millis(200),
            }),
            settings,
            stale_after: Duration::from_secs(60),
            devices: vec![device("rack", pace)],
        },
    ];
    Scraper::spawn(buses, Freshness { max_age: Duration::from_secs(5), stale_after: Duration::from_secs(60) })
}

/// (charge, discharge) MOSFET of each pack, in pack order.
fn mosfets(snapshot: &DeviceSnapshot) -> Vec<(u8, Option<bool>, Option<bool>)> {
    snapshot.packs.iter().map(|p| (p.pack, p.charge_mosfet_enabled, p.discharge_mosfet_enabled)).collect()
}

async fn command(config: &MqttConfig, scraper: &Scraper, topic: &str, payload: &[u8]) -> Handled {
    tokio::time::timeout(Duration::from_secs(20), control::run(config, scraper, topic, payload))
        .await
        .expect("a command ends within its timeouts")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_switches_the_simulated_mosfet_and_a_bad_one_changes_nothing() {
    let (sim, link) = Simulator::pty(
        "mqtt-control",
        &[
            "--protocol",
            "daly",
            "--boards",
            "2",
            "--cells",
            "8",
            "--time-scale",
            "0",
            "--baud",
            "0",
            "--latency-ms",
            "0",
        ],
    );
    let scraper = scraper(&link);
    let house = &scraper.targets()[0];
    let config = mqtt(true);
    assert_eq!(mosfets(&sim.truth()), [(1, Some(true), Some(true)), (2, Some(true), Some(true))]);

    // OFF for pack 02's charge MOSFET: board 2 switches, board 1 does not, and the device's latest status
    // holds what the read-back reported.
    let handled = command(&config, &scraper, "bms/house/02/charge_mosfet/set", b"OFF").await;
    assert_eq!(handled.outcome, Outcome::Obeyed);
    assert_eq!(mosfets(&sim.truth()), [(1, Some(true), Some(true)), (2, Some(false), Some(true))]);
    let status = house.bus.latest(house.index).expect("the read-back is recorded");
    let seen = status.values.view(bms_exporter::scrape::unix_now(), 60.0);
    let pack2 = seen.packs.iter().find(|p| p.pack == 2).expect("pack 2 read back");
    assert_eq!(pack2.charge_mosfet_enabled, Some(false));
    assert!(status.last.succeeded(), "the read-back answered: {:?}", status.last.failures);
    let polls = status.polls_total;

    // Refused commands: nothing sent, nothing read, nothing published.
    for (config, topic, payload) in [
        (mqtt(true), "bms/house/02/charge_mosfet/set", &b"ON\n"[..]),
        (mqtt(true), "bms/house/02/charge_mosfet/set", b"on"),
        (mqtt(true), "bms/house/02/charge_mosfet/set", b""),
        (mqtt(true), "bms/garage/02/charge_mosfet/set", b"ON"),
        (mqtt(true), "bms/rack/01/charge_mosfet/set", b"ON"),
        (mqtt(true), "bms/house/03/charge_mosfet/set", b"ON"),
        (mqtt(true), "bms/house/2/charge_mosfet/set", b"ON"),
        (mqtt(true), "bms/house/02/balancing/set", b"ON"),
        (mqtt(false), "bms/house/02/charge_mosfet/set", b"ON"),
    ] {
        let handled = command(&config, &scraper, topic, payload).await;
        assert_eq!(handled, Handled { outcome: Outcome::Refused, messages: Vec::new() }, "{topic} {payload:?}");
    }
    assert_eq!(mosfets(&sim.truth()), [(1, Some(true), Some(true)), (2, Some(false), Some(true))]);
    assert_eq!(house.bus.latest(house.index).map(|s| s.polls_total), Some(polls), "a refusal touched the bus");
    let rack = &scraper.targets()[1];
    assert!(rack.bus.latest(rack.index).is_none(), "the Pace bus was never used");

    // The same command twice at once: one write, the repeat dropped while the first runs.
    let topic = "bms/house/02/charge_mosfet/set";
    let (first, second) =
        tokio::join!(command(&config, &scraper, topic, b"ON"), command(&config, &scraper, topic, b"ON"));
    let mut outcomes = [first.outcome, second.outcome];
    outcomes.sort_by_key(|o| o.as_str());
    assert_eq!(outcomes, [Outcome::Duplicate, Outcome::Obeyed]);
    assert_eq!(mosfets(&sim.truth()), [(1, Some(true), Some(true)), (2, Some(true), Some(true))]);
    assert_eq!(house.bus.latest(house.index).map(|s| s.polls_total), Some(polls + 1), "one read-back only");

    // Once it has finished, the same command runs again; the discharge switch of pack 01 works the same way.
    let handled = command(&config, &scraper, "bms/house/01/discharge_mosfet/set", b"OFF").await;
    assert_eq!(handled.outcome, Outcome::Obeyed);
    let handled = command(&config, &scraper, "bms/house/01/discharge_mosfet/set", b"OFF").await;
    assert_eq!(handled.outcome, Outcome::Obeyed);
    assert_eq!(mosfets(&sim.truth()), [(1, Some(true), Some(false)), (2, Some(true), Some(true))]);

    // A scrape after the writes polls the whole device over the same link and agrees with the simulator.
    let seen = scraper.collect(Some(0), tokio::time::Instant::now() + Duration::from_secs(15)).await;
    let values = &seen[0].1.values;
    assert_eq!(mosfets(values), [(1, Some(true), Some(false)), (2, Some(true), Some(true))]);
}

#[tokio::test]
async fn the_bus_worker_writes_to_daly_boards_it_has_and_says_why_not_otherwise() {
    use bms_exporter::control::Action;
    use bms_exporter::poller::WriteError;

    // Both buses point at a port nobody listens on: only the Daly write to a board it has gets as far as the link.
    let scraper = scraper(Path::new("/nonexistent/tty-mqtt-control"));
    let (house, rack) = (&scraper.targets()[0], &scraper.targets()[1]);
    assert_eq!(house.bus.writable_packs(house.index), [1, 2]);
    assert!(rack.bus.writable_packs(rack.index).is_empty());

    let error = rack.bus.write(rack.index, 1, Action::ChargeMosfet(false)).await.unwrap_err();
    assert!(matches!(error, WriteError::NotDaly { .. }), "{error}");
    assert_eq!(error.to_string(), "rack speaks pace; only Daly A5 boards (protocol daly) accept writes");
    let error = house.bus.write(house.index, 3, Action::ChargeMosfet(false)).await.unwrap_err();
    assert_eq!(error, WriteError::NoSuchPack { device: "house".to_owned(), pack: 3 });
    let error = house.bus.write(7, 1, Action::ChargeMosfet(false)).await.unwrap_err();
    assert_eq!(error, WriteError::NoDevice(7));
    let error = house.bus.write(house.index, 1, Action::Soc(120.0)).await.unwrap_err();
    assert!(matches!(error, WriteError::Invalid(_)), "{error}");
    let error = house.bus.write(house.index, 1, Action::ChargeMosfet(false)).await.unwrap_err();
    assert!(matches!(error, WriteError::Failed(ref m) if m.contains("tty-mqtt-control")), "{error}");
    // Nothing was read back, so nothing was recorded.
    assert!(house.bus.latest(house.index).is_none());
}
