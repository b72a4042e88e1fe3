//! Opening a Bluetooth LE BMS module through BlueZ (btleplug over D-Bus) as a [`Link`], and scanning for modules.
//!
//! Two GATT layouts carry a BMS's serial protocol, each a notify characteristic (module → host) and a write
//! characteristic (host → module) in one service: `fff0` with `fff1`/`fff2` (the UART dongles of older Daly
//! boards, which pass A5 frames through unchanged, and some Modbus-style modules) and `ff00` with `ff01`/`ff02`
//! (newer DL-/JHB- modules, Modbus-style only; those may also list `fff0` but refuse notifications on `fff1`, which
//! is why `ff00` wins when both are complete). Characteristics are found by UUID, never by handle: handles differ
//! between dongle generations.
//!
//! Order matters: the notification stream is taken and the notify characteristic subscribed before anything is
//! written, or the first reply is lost; old dongles also want one empty write to their extra characteristic
//! `02f00000-0000-0000-0000-00000000ff01` after subscribing (skipped when absent). Every step is bounded by a
//! timeout, so a sleeping or out-of-range module is an error within seconds, never a hang; a failure after the
//! connection was made disconnects again, so the module is not left held. Connecting (connect, service discovery,
//! subscription) happens for one module at a time in the process, as BlueZ takes one connection attempt at a time
//! per adapter; open links are used side by side.
//!
//! BlueZ's D-Bus connection is shared by every link of the process: btleplug's `Manager::new` opens a new system
//! bus connection each time and never closes it, and the system bus limits connections per user, so a module that
//! sleeps for a day (one attempt every few seconds) would otherwise exhaust them.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Weak};
use std::time::Duration;

use btleplug::api::bleuuid::uuid_from_u16;
use btleplug::api::{Central as _, CentralEvent, CentralState, Characteristic, Manager as _, Peripheral as _};
use btleplug::api::{ScanFilter, WriteType};
use btleplug::platform::{Adapter, Manager, Peripheral};
use futures::future::BoxFuture;
use futures::{FutureExt as _, StreamExt as _};
use tokio::time::{Instant, sleep, timeout};

use super::bridge::{BRIDGES, Gatt, Pipe, bridge};
use super::{Advertised, BluetoothSettings, Link, TransportError};

/// Bound for one D-Bus round trip to BlueZ (listing adapters, reading properties, starting a scan); bluez-async's
/// own bound is 30 s, far too long for a scrape.
const STEP_TIMEOUT: Duration = Duration::from_secs(3);
/// Bound for resolving the module's services after connecting: BlueZ reads the whole GATT table over the air the
/// first time it sees a module (a few seconds), later from its cache.
const DISCOVER_TIMEOUT: Duration = Duration::from_secs(8);
/// Bound for enabling notifications (one write to the module's configuration descriptor).
const SUBSCRIBE_TIMEOUT: Duration = Duration::from_secs(5);
/// How often the list of known devices is read while scanning for a module BlueZ has not seen yet.
const SCAN_POLL: Duration = Duration::from_millis(250);

/// The 128-bit form of a 16-bit Bluetooth SIG UUID (`fff0` → `0000fff0-0000-1000-8000-00805f9b34fb`).
const fn short(uuid: u16) -> u128 {
    uuid_from_u16(uuid).as_u128()
}

/// The extra characteristic old Daly dongles expose; python-daly-bms and batmon-ha write it once, empty.
const EXTRA: u128 = 0x02f00000_0000_0000_0000_00000000ff01;

/// The pipes a BMS module may offer, `(service, notify, write)`, in order of preference.
const PIPES: [(u16, u16, u16); 2] = [(0xff00, 0xff01, 0xff02), (0xfff0, 0xfff1, 0xfff2)];

/// A characteristic of the module, reduced to what choosing a pipe needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct CharInfo {
    service: u128,
    uuid: u128,
    write: bool,
    write_without_response: bool,
}

/// The pipe chosen on a module.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Choice {
    /// The 16-bit UUID of its service, for logs.
    service: u16,
    notify: CharInfo,
    write: CharInfo,
    /// The old dongles' extra characteristic, when the module has it.
    extra: Option<CharInfo>,
}

/// The pipe to use among the module's characteristics: the first of [`PIPES`] whose service has both of its
/// characteristics.
fn choose(chars: &[CharInfo]) -> Option<Choice> {
    let find = |service: u16, uuid: u16| chars.iter().find(|c| c.service == short(service) && c.uuid == short(uuid));
    PIPES.iter().find_map(|&(service, notify, write)| {
        let (notify, write) = (find(service, notify)?, find(service, write)?);
        let extra = chars.iter().find(|c| c.uuid == EXTRA).copied();
        Some(Choice { service, notify: *notify, write: *write, extra })
    })
}

/// Write without response (what the modules expect, and it does not wait a connection interval for an
/// acknowledgement), unless the characteristic only offers write with response.
fn write_type(c: &CharInfo) -> WriteType {
    if c.write && !c.write_without_response { WriteType::WithResponse } else { WriteType::WithoutResponse }
}

/// The largest write for an ATT MTU: the MTU less the 3-byte ATT header, and never below the 20 bytes every
/// connection carries.
fn chunk_size(mtu: u16) -> usize {
    usize::from(mtu.saturating_sub(3)).max(20)
}

/// A UUID as a user would look it up: the 16-bit form for Bluetooth SIG UUIDs, else the full form. Generic so
/// the uuid crate (which comes with btleplug) need not be a direct dependency just to name its type.
fn uuid_text<U: btleplug::api::bleuuid::BleUuid + std::fmt::Display>(uuid: &U) -> String {
    uuid.to_ble_u16().map_or_else(|| uuid.to_string(), |u| format!("{u:04x}"))
}

/// The shared BlueZ connection and a marker that dies with the runtime that drives it.
struct Shared {
    manager: Manager,
    /// btleplug drives the D-Bus connection from a task on the runtime that created it; when that runtime is
    /// gone (a command's runtime, or a test's), so is the connection, and this no longer upgrades.
    runtime_alive: Weak<()>,
}

/// The process's BlueZ connection, made on first use.
static SHARED: tokio::sync::Mutex<Option<Shared>> = tokio::sync::Mutex::const_new(None);

/// The shared BlueZ connection, made (again) when there is none or its runtime has gone.
async fn manager() -> Result<Manager, String> {
    let mut shared = SHARED.lock().await;
    if let Some(s) = shared.as_ref().filter(|s| s.runtime_alive.upgrade().is_some()) {
        return Ok(s.manager.clone());
    }
    let manager = step("connecting to BlueZ on the D-Bus system bus", STEP_TIMEOUT, Manager::new())
        .await
        .map_err(|e| format!("{e}; is the system D-Bus up and bluetoothd running?"))?;
    let alive = Arc::new(());
    let runtime_alive = Arc::downgrade(&alive);
    // Never finishes: it is dropped, and with it `alive`, only when the runtime shuts down.
    tokio::spawn(async move {
        std::future::pending::<()>().await;
        drop(alive);
    });
    *shared = Some(Shared { manager: manager.clone(), runtime_alive });
    Ok(manager)
}

/// Held while a module is connected and set up: one module at a time in this process.
static CONNECTING: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Runs `steps` (connecting a module, discovering its services, subscribing) while no other module of this process
/// is being connected. BlueZ refuses a second LE connection attempt on an adapter while one is pending
/// ("Operation already in progress"), and the buses of two modules, started together, would otherwise try at the
/// same moment; polls over links already open run side by side.
async fn one_at_a_time<T>(steps: impl Future<Output = T>) -> T {
    let _turn = CONNECTING.lock().await;
    steps.await
}

/// Drops the shared connection after BlueZ stopped answering on it (the bus or bluetoothd restarted), so the
/// next attempt makes a new one.
async fn forget_manager() {
    SHARED.lock().await.take();
}

/// Runs one BlueZ call within `within`; the error names `what`.
async fn step<T>(what: &str, within: Duration, call: impl Future<Output = btleplug::Result<T>>) -> Result<T, String> {
    match timeout(within, call).await {
        Err(_elapsed) => Err(format!("{what}: no answer within {within:?}")),
        Ok(Err(error)) => Err(format!("{what}: {error}")),
        Ok(Ok(value)) => Ok(value),
    }
}

/// The adapter called `wanted` (the first one BlueZ lists when `None`), with its name.
async fn adapter(manager: &Manager, wanted: Option<&str>) -> Result<(Adapter, String), String> {
    let adapters = match step("listing Bluetooth adapters", STEP_TIMEOUT, manager.adapters()).await {
        Ok(adapters) => adapters,
        Err(error) => {
            forget_manager().await;
            return Err(error);
        }
    };
    let mut names = Vec::new();
    for adapter in adapters {
        // adapter_info is "hci0 (usb:v1D6Bp0246d0537)": the BlueZ name, then the modalias.
        let info = step("reading the adapter's name", STEP_TIMEOUT, adapter.adapter_info()).await?;
        let name = info.split_whitespace().next().unwrap_or_default().to_owned();
        if wanted.is_none_or(|w| w == name) {
            let state = step("reading the adapter's state", STEP_TIMEOUT, adapter.adapter_state()).await?;
            if state == CentralState::PoweredOff {
                return Err(format!("Bluetooth adapter {name} is powered off (bluetoothctl power on)"));
            }
            return Ok((adapter, name));
        }
        names.push(name);
    }
    Err(match (wanted, names.is_empty()) {
        (_, true) => "BlueZ has no Bluetooth adapter: is one plugged in and not blocked (rfkill)?".to_owned(),
        (Some(w), false) => format!("there is no Bluetooth adapter {w}; BlueZ has {}", names.join(", ")),
        (None, false) => "BlueZ has no Bluetooth adapter".to_owned(),
    })
}

/// The module with `address` among the devices BlueZ knows on `adapter`.
async fn known(adapter: &Adapter, address: &str) -> Result<Option<Peripheral>, String> {
    let peripherals = step("listing known devices", STEP_TIMEOUT, adapter.peripherals()).await?;
    Ok(peripherals.into_iter().find(|p| p.address().to_string().eq_ignore_ascii_case(address)))
}

/// The module with `address`: one BlueZ knows already, or one a scan of at most `within` finds.
async fn find(adapter: &Adapter, address: &str, within: Duration) -> Result<Peripheral, String> {
    if let Some(peripheral) = known(adapter, address).await? {
        return Ok(peripheral);
    }
    tracing::debug!(address, "not known to BlueZ yet; scanning for it");
    // BlueZ refuses a second scan from the same D-Bus connection (two buses opening at once share ours) with
    // InProgress; the scan that runs finds this module as well, so only the wait below decides.
    if let Err(error) = step("starting a scan", STEP_TIMEOUT, adapter.start_scan(ScanFilter::default())).await {
        tracing::debug!(%error, "could not start a scan; waiting for one that runs");
    }
    let deadline = Instant::now() + within;
    let found = loop {
        sleep(SCAN_POLL).await;
        match known(adapter, address).await {
            Ok(Some(peripheral)) => break Ok(peripheral),
            Err(error) => break Err(error),
            Ok(None) if Instant::now() >= deadline => {
                break Err(format!(
                    "not found: no advertisement within {within:?}; is it in range and awake? (a Daly dongle \
                     sleeps after about an hour without traffic and stops advertising)"
                ));
            }
            Ok(None) => {}
        }
    };
    // Many controllers cannot connect while they scan; stopping is best effort (another client may scan too).
    let _ = timeout(STEP_TIMEOUT, adapter.stop_scan()).await;
    found
}

/// Connects to `peripheral` within `within`, unless BlueZ is connected to it already.
async fn connect(peripheral: &Peripheral, within: Duration) -> Result<(), String> {
    if step("reading the connection state", STEP_TIMEOUT, peripheral.is_connected()).await? {
        return Ok(());
    }
    match timeout(within, peripheral.connect()).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(error)) => Err(format!("connecting failed: {error}")),
        Err(_elapsed) => {
            // BlueZ keeps trying in the background; a disconnect cancels the pending attempt.
            let _ = timeout(STEP_TIMEOUT, peripheral.disconnect()).await;
            Err(format!("no connection within {within:?}; is it in range, awake and not connected to a phone?"))
        }
    }
}

/// Discovers the pipe, takes the notification stream, subscribes, wakes old dongles and watches for the
/// disconnect: everything between connecting and the first request.
async fn setup(adapter: &Adapter, peripheral: &Peripheral) -> Result<(Pipe<BlueZGatt>, Choice), String> {
    // Taken first, so a disconnect at any later step is seen.
    let events = step("watching the adapter's events", STEP_TIMEOUT, adapter.events()).await?;
    step("discovering services", DISCOVER_TIMEOUT, peripheral.discover_services()).await?;
    let characteristics: Vec<Characteristic> = peripheral.characteristics().into_iter().collect();
    let infos: Vec<CharInfo> = characteristics
        .iter()
        .map(|c| CharInfo {
            service: c.service_uuid.as_u128(),
            uuid: c.uuid.as_u128(),
            write: c.properties.contains(btleplug::api::CharPropFlags::WRITE),
            write_without_response: c.properties.contains(btleplug::api::CharPropFlags::WRITE_WITHOUT_RESPONSE),
        })
        .collect();
    let Some(choice) = choose(&infos) else {
        let mut services: Vec<String> = peripheral.services().iter().map(|s| uuid_text(&s.uuid)).collect();
        services.dedup();
        return Err(format!(
            "no BMS pipe: the module has services [{}] but neither fff0 (fff1 notify, fff2 write) nor ff00 \
             (ff01 notify, ff02 write)",
            services.join(", ")
        ));
    };
    let by_uuid: HashMap<(u128, u128), Characteristic> =
        characteristics.into_iter().map(|c| ((c.service_uuid.as_u128(), c.uuid.as_u128()), c)).collect();
    let characteristic = |info: &CharInfo| by_uuid.get(&(info.service, info.uuid)).cloned().ok_or("vanished");
    let (Ok(notify), Ok(write)) = (characteristic(&choice.notify), characteristic(&choice.write)) else {
        return Err("the module's characteristics changed while they were read".to_owned());
    };
    // The stream before the subscription, and the subscription before any write: nothing may be missed.
    let notify_uuid = notify.uuid;
    let notifications = step("listening for notifications", STEP_TIMEOUT, peripheral.notifications())
        .await?
        .filter_map(move |n| std::future::ready((n.uuid == notify_uuid).then_some(n.value)))
        .boxed();
    step("subscribing to notifications", SUBSCRIBE_TIMEOUT, peripheral.subscribe(&notify)).await?;
    if let Some(extra) = choice.extra.as_ref().and_then(|info| by_uuid.get(&(info.service, info.uuid))) {
        let kind = if extra.properties.contains(btleplug::api::CharPropFlags::WRITE_WITHOUT_RESPONSE) {
            WriteType::WithoutResponse
        } else {
            WriteType::WithResponse
        };
        // Only old dongles want it, and they answer without it more often than not: a failure is not fatal.
        if let Err(error) = step("waking the dongle", STEP_TIMEOUT, peripheral.write(extra, &[], kind)).await {
            tracing::debug!(%error, "the old dongles' extra characteristic refused its empty write");
        }
    }
    let id = peripheral.id();
    let gone = events
        .filter_map(move |event| {
            std::future::ready(matches!(event, CentralEvent::DeviceDisconnected(ref d) if *d == id).then_some(()))
        })
        .into_future()
        .map(|(disconnected, _rest)| match disconnected {
            Some(()) => "the module disconnected".to_owned(),
            None => "the connection to BlueZ was lost".to_owned(),
        })
        .boxed();
    let gatt = BlueZGatt { peripheral: peripheral.clone(), write_type: write_type(&choice.write), write, notify };
    Ok((Pipe { gatt, notifications, gone, chunk: chunk_size(peripheral.mtu()) }, choice))
}

/// Unsubscribes (when subscribed) and disconnects, best effort and bounded.
async fn release(peripheral: &Peripheral, notify: Option<&Characteristic>) {
    if let Some(notify) = notify {
        let _ = timeout(STEP_TIMEOUT, peripheral.unsubscribe(notify)).await;
    }
    let _ = timeout(STEP_TIMEOUT, peripheral.disconnect()).await;
}

/// The write side of a module's pipe.
struct BlueZGatt {
    peripheral: Peripheral,
    write: Characteristic,
    write_type: WriteType,
    notify: Characteristic,
}

impl Gatt for BlueZGatt {
    fn write(&self, chunk: Vec<u8>) -> BoxFuture<'_, Result<(), String>> {
        async move { self.peripheral.write(&self.write, &chunk, self.write_type).await.map_err(|e| e.to_string()) }
            .boxed()
    }

    fn close(&self) -> BoxFuture<'_, ()> {
        release(&self.peripheral, Some(&self.notify)).boxed()
    }
}

/// Finds, connects and sets up the module `settings` names, and bridges its pipe to a [`Link`].
pub(super) async fn open(settings: &BluetoothSettings, description: String) -> Result<Link, TransportError> {
    let fail = |message: String| TransportError::Bluetooth { target: description.clone(), message };
    let manager = manager().await.map_err(fail)?;
    let (adapter, adapter_name) = adapter(&manager, settings.adapter.as_deref()).await.map_err(fail)?;
    let peripheral = find(&adapter, &settings.address, settings.connect_timeout).await.map_err(fail)?;
    let (pipe, choice) = one_at_a_time(async {
        connect(&peripheral, settings.connect_timeout).await?;
        let set_up = setup(&adapter, &peripheral).await;
        if set_up.is_err() {
            // Connected but unusable: let go, or the module stays held and stops advertising.
            release(&peripheral, None).await;
        }
        set_up
    })
    .await
    .map_err(fail)?;
    tracing::info!(
        transport = %description,
        adapter = %adapter_name,
        service = %format!("{:04x}", choice.service),
        chunk = pipe.chunk,
        "bluetooth module connected"
    );
    Ok(bridge(pipe, description, &BRIDGES))
}

/// Scans on `adapter_name` (the first adapter when `None`) for `duration` and lists every device BlueZ knows
/// there, strongest first.
pub(super) async fn scan(adapter_name: Option<&str>, duration: Duration) -> Result<Vec<Advertised>, TransportError> {
    let target = adapter_name.map_or_else(|| "Bluetooth scan".to_owned(), |a| format!("Bluetooth scan on {a}"));
    let fail = |message: String| TransportError::Bluetooth { target: target.clone(), message };
    let manager = manager().await.map_err(fail)?;
    let (adapter, _) = adapter(&manager, adapter_name).await.map_err(fail)?;
    step("starting a scan", STEP_TIMEOUT, adapter.start_scan(ScanFilter::default())).await.map_err(fail)?;
    sleep(duration).await;
    let listed = step("listing the devices heard", STEP_TIMEOUT, adapter.peripherals()).await;
    let _ = timeout(STEP_TIMEOUT, adapter.stop_scan()).await;
    let mut found = Vec::new();
    for peripheral in listed.map_err(fail)? {
        let address = peripheral.address().to_string();
        let Ok(Some(properties)) = step("reading a device's properties", STEP_TIMEOUT, peripheral.properties()).await
        else {
            continue;
        };
        let has = |service: u16| properties.services.iter().any(|s| s.as_u128() == short(service));
        found.push(Advertised {
            address,
            name: properties.local_name.or(properties.advertisement_name),
            rssi: properties.rssi,
            service_fff0: has(0xfff0),
            service_ff00: has(0xff00),
        });
    }
    // Strongest first; devices BlueZ only remembers (no signal now) last.
    found.sort_by_key(|a| std::cmp::Reverse(a.rssi.unwrap_or(i16::MIN)));
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn char(service: u16, uuid: u16, write: bool, write_without_response: bool) -> CharInfo {
        CharInfo { service: short(service), uuid: short(uuid), write, write_without_response }
    }

    #[test]
    fn the_uart_dongle_pipe_is_fff0_with_fff1_and_fff2_and_the_extra_characteristic_when_present() {
        let extra = CharInfo { service: short(0xfee7), uuid: EXTRA, write: true, write_without_response: true };
        let chars = [
            char(0x180a, 0x2a29, false, false),
            char(0xfff0, 0xfff2, true, true),
            char(0xfff0, 0xfff1, false, false),
            extra,
        ];
        let choice = choose(&chars).unwrap();
        assert_eq!(choice.service, 0xfff0);
        assert_eq!(choice.notify.uuid, short(0xfff1));
        assert_eq!(choice.write.uuid, short(0xfff2));
        assert_eq!(choice.extra, Some(extra));
        assert_eq!(short(0xfff1), 0x0000fff1_0000_1000_8000_00805f9b34fb);
    }

    #[test]
    fn ff00_wins_when_a_module_offers_both_and_half_a_pipe_is_no_pipe() {
        let both = [
            char(0xfff0, 0xfff1, false, false),
            char(0xfff0, 0xfff2, false, true),
            char(0xff00, 0xff01, false, false),
            char(0xff00, 0xff02, false, true),
        ];
        let choice = choose(&both).unwrap();
        assert_eq!((choice.service, choice.notify.uuid, choice.write.uuid), (0xff00, short(0xff01), short(0xff02)));
        assert_eq!(choice.extra, None);
        // ff00 without its write characteristic falls back to a complete fff0.
        let partial = [both[0], both[1], both[2]];
        assert_eq!(choose(&partial).unwrap().service, 0xfff0);
        // The right UUIDs under the wrong service are not a pipe.
        assert_eq!(choose(&[char(0x1800, 0xfff1, false, false), char(0x1800, 0xfff2, true, true)]), None);
        assert_eq!(choose(&[]), None);
    }

    #[test]
    fn writes_go_without_response_unless_only_with_response_is_offered() {
        assert_eq!(write_type(&char(0xfff0, 0xfff2, true, true)), WriteType::WithoutResponse);
        assert_eq!(write_type(&char(0xfff0, 0xfff2, false, true)), WriteType::WithoutResponse);
        assert_eq!(write_type(&char(0xfff0, 0xfff2, true, false)), WriteType::WithResponse);
        // Flags unknown: the modules' own habit.
        assert_eq!(write_type(&char(0xfff0, 0xfff2, false, false)), WriteType::WithoutResponse);
    }

    #[test]
    fn chunks_follow_the_mtu_and_never_go_below_twenty_bytes() {
        assert_eq!(chunk_size(23), 20);
        assert_eq!(chunk_size(247), 244);
        assert_eq!(chunk_size(0), 20);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn modules_are_connected_one_at_a_time_even_when_their_buses_ask_together() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        let inside = Arc::new(AtomicUsize::new(0));
        let most = Arc::new(AtomicUsize::new(0));
        let connects = (0..4).map(|_| {
            let (inside, most) = (Arc::clone(&inside), Arc::clone(&most));
            tokio::spawn(one_at_a_time(async move {
                let now = inside.fetch_add(1, Ordering::SeqCst) + 1;
                most.fetch_max(now, Ordering::SeqCst);
                // A connect, a service discovery and a subscription take a while.
                sleep(Duration::from_millis(30)).await;
                inside.fetch_sub(1, Ordering::SeqCst);
            }))
        });
        let started = Instant::now();
        for connect in connects.collect::<Vec<_>>() {
            connect.await.unwrap();
        }
        assert_eq!(most.load(Ordering::SeqCst), 1, "two modules were being connected at once");
        assert!(started.elapsed() >= Duration::from_millis(4 * 30), "one after the other");
    }

    #[test]
    fn uuids_print_short_when_they_are_sig_uuids() {
        assert_eq!(uuid_text(&uuid_from_u16(0xfff0)), "fff0");
    }
}
