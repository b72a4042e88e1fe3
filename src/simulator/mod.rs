//! The built-in BMS simulator: simulated devices that answer request bytes with reply bytes through the
//! project's own encoders, with drifting LFP-like values and injectable faults. It powers the tests and `--demo`.
//!
//! Everything but [`serve`] is pure: a [`Responder`] takes request bytes and returns reply bytes, time is an
//! argument, randomness is seeded.

pub mod battery;
pub mod daly;
pub mod daly_modbus;
pub mod fault;
pub mod pace;
pub mod rng;
pub mod serve;
pub mod sinowealth;

use crate::model::DeviceSnapshot;

/// A reply to one request, and a reply to some other command for the `wrong_command` fault.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// The correct reply bytes.
    pub reply: Vec<u8>,
    /// A valid reply to a different command.
    pub other: Vec<u8>,
}

/// A simulated bus: one protocol, one or more boards or packs behind it.
pub trait Responder: Send {
    /// Take the next complete request off the front of `pending` (dropping garbage before it); `None` when
    /// more bytes are needed.
    fn next_request(&mut self, pending: &mut Vec<u8>) -> Option<Vec<u8>>;
    /// Answer `request`, or `None` when no simulated device on the bus answers it (wrong address, unknown or
    /// write command to a board that ignores it).
    fn respond(&mut self, request: &[u8]) -> Option<Response>;
    /// Advance the simulated batteries by `dt_s` seconds.
    fn step(&mut self, dt_s: f64);
    /// The true state, in the model's units, for tests to compare decoded values with.
    fn truth(&self) -> DeviceSnapshot;
    /// Whether every frame in `bytes`, the reply to `request` as the wire would carry it (possibly damaged), still
    /// passes the protocol's frame check, for the `multibyte` fault. The default (for test doubles) says none does.
    fn passes_check(&self, _request: &[u8], _bytes: &[u8]) -> bool {
        false
    }
    /// The `gross` fault's reply: `reply` with a ranged value far out of range and its checks passing
    /// ([`fault::Tamper::gross`]). The default (for test doubles) has none.
    fn gross(&self, _request: &[u8], _reply: &[u8], _rng: &mut rng::Rng) -> Option<Vec<u8>> {
        None
    }
}

// Every simulated bus answers the fault plan's questions about its framing.
impl<R: Responder + ?Sized> fault::Tamper for R {
    fn passes_check(&self, request: &[u8], bytes: &[u8]) -> bool {
        Responder::passes_check(self, request, bytes)
    }

    fn gross(&self, request: &[u8], reply: &[u8], rng: &mut rng::Rng) -> Option<Vec<u8>> {
        Responder::gross(self, request, reply, rng)
    }
}
