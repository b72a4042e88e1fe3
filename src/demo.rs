//! `--demo`: simulated devices served inside the exporter's own process on loopback TCP ports, polled over the
//! same TCP transport, sessions and workers as real hardware — so a newcomer sees real metrics with one command.
//!
//! The devices: a 16-cell Daly (A5 frames), a 4-cell Sinowealth board and a 3-pack Pace rack, at 9600 baud line
//! timing with values drifting in real time.

use std::time::Duration;

use anyhow::Context as _;
use tokio::net::TcpListener;

use crate::model::{CurrentSign, Sections};
use crate::poller::{BusSpec, DeviceSpec};
use crate::protocol::daly::exchange::DalyExchange;
use crate::protocol::daly::{Address, Filler};
use crate::protocol::pace::VER_PACE;
use crate::protocol::pace::exchange::{PaceExchange, PackSelection};
use crate::protocol::sinowealth::CheckPolicy;
use crate::protocol::sinowealth::exchange::SinowealthExchange;
use crate::protocol::{DecodeOptions, Exchange};
use crate::session::Settings;
use crate::simulator::Responder;
use crate::simulator::daly::DalyBus;
use crate::simulator::fault::FaultPlan;
use crate::simulator::pace::PaceBus;
use crate::simulator::serve::{ServeOptions, Timing, serve_listener};
use crate::simulator::sinowealth::SinowealthBus;
use crate::transport::{TcpSettings, TransportSettings};

/// One simulated device of the demo.
struct DemoDevice {
    name: &'static str,
    responder: Box<dyn Responder>,
    exchange: Box<dyn Exchange>,
}

fn devices() -> Vec<DemoDevice> {
    let daly_options = DecodeOptions { current_sign: CurrentSign::Auto, ..DecodeOptions::default() };
    vec![
        DemoDevice {
            name: "demo-daly",
            responder: Box::new(DalyBus::new(1, 16, 4, 1)),
            exchange: Box::new(DalyExchange::new(vec![Address::Rs485], Filler::Zero, daly_options)),
        },
        DemoDevice {
            name: "demo-sinowealth",
            responder: Box::new(SinowealthBus::new(4, 2)),
            exchange: Box::new(SinowealthExchange::new(CheckPolicy::Verify)),
        },
        DemoDevice {
            name: "demo-pace",
            responder: Box::new(PaceBus::new(3, 16, 4, 3)),
            exchange: Box::new(PaceExchange::new(1, PackSelection::All, VER_PACE)),
        },
    ]
}

/// Start the demo devices on loopback ports (tasks on the current runtime) and return one bus per device, each
/// polled with `settings`, its energy counters bridging at most `stale_after` between polls.
pub async fn start(settings: Settings, stale_after: Duration) -> anyhow::Result<Vec<BusSpec>> {
    let mut buses = Vec::new();
    for device in devices() {
        let listener = TcpListener::bind("127.0.0.1:0").await.context("binding a loopback port for the demo")?;
        let address = listener.local_addr().context("the demo port's address")?.to_string();
        let options = ServeOptions {
            timing: Timing { baud: 9600, latency: Duration::from_millis(10) },
            faults: FaultPlan::new(Vec::new(), 1),
            truth: None,
            time_scale: 1.0,
        };
        tokio::spawn(serve_listener(device.responder, listener, options));
        buses.push(BusSpec {
            transport: TransportSettings::Tcp(TcpSettings { address, connect_timeout: Duration::from_secs(1) }),
            settings,
            devices: vec![DeviceSpec {
                name: device.name.to_owned(),
                exchange: device.exchange,
                sections: Sections::all(),
            }],
            stale_after,
        });
    }
    Ok(buses)
}
