//! bms_exporter: reads battery management systems (Daly, Daly Modbus-style, Sinowealth, Pace) and publishes
//! what they report.
//!
//! The crate is layered bottom-up: [`model`] holds the protocol-neutral pack
//! snapshot, [`protocol`] turns bytes into typed messages and applies them to the model. Both layers are pure:
//! no I/O, no clock and no logging, so every byte path is testable with plain `#[test]`s. [`cli`] is the
//! command-line glue on top.
//!
//! The whole map (layers, the data flow from bytes on a wire to `/metrics`, where each concern lives, the
//! invariants, how to add a protocol or a transport) is `ARCHITECTURE.md` at the repository root; each wire
//! protocol is described in `docs/protocols/` (`daly-a5.md`, `daly-modbus.md`, `sinowealth.md`, `pace.md`).

#![forbid(unsafe_code)]
#![warn(
    clippy::expect_used,
    clippy::pedantic,
    clippy::unwrap_used,
    missing_debug_implementations,
    missing_docs,
    unreachable_pub
)]
#![allow(
    // Protocol fields are narrowed deliberately after range checks; casts are spelled out at each site.
    clippy::cast_possible_truncation,
    clippy::cast_precision_loss,
    clippy::cast_sign_loss,
    clippy::cast_possible_wrap,
    // Error types are documented once on the enum; repeating `# Errors` on every decoder adds nothing.
    clippy::missing_errors_doc,
    // Wire-format tables read better with the spec's own hex spelling.
    clippy::unreadable_literal,
    // Prose names such as BMStool or snake_case are not code; backticking every one hurts reading.
    clippy::doc_markdown,
    // `daly::DalyCommand`-style names are kept where they read better at the use site.
    clippy::module_name_repetitions
)]
// Tests compare exact values on purpose (a sign flip or a decoded constant is exact).
#![cfg_attr(test, allow(clippy::float_cmp))]

pub mod cli;
pub mod config;
pub mod control;
pub mod demo;
pub mod metrics;
pub mod model;
pub mod mqtt;
pub mod output;
pub mod poller;
pub mod protocol;
pub mod reload;
pub mod scrape;
pub mod server;
pub mod session;
pub mod simulator;
pub mod transport;
