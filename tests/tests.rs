//! The one integration-test binary (ripgrep's layout): each topic is a module, sharing `util`.

mod addon;
mod bus;
mod cli_commands;
mod cli_decode;
mod config;
mod connections;
mod daly_modbus_vectors;
mod daly_vectors;
mod deploy;
mod exporter;
mod grafana;
mod metrics;
mod mqtt;
mod mqtt_cleanup;
mod mqtt_compat;
mod mqtt_control;
mod mqtt_discovery;
mod observability;
mod pace_vectors;
mod prometheus_rules;
mod readme;
mod session;
mod simulator;
mod sinowealth_vectors;
mod util;
mod web;
