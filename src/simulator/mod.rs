//! The built-in BMS simulator: simulated devices that answer request bytes with reply bytes through the
//! project's own encoders, with drifting LFP-like values and injectable faults. It powers the tests and `--demo`.

pub mod battery;
pub mod fault;
pub mod rng;
