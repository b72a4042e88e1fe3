//! `config check FILE`: validate a configuration file without opening any device, so a change can be tested
//! before the exporter is restarted with it.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Subcommand;

/// The `config` subcommands.
#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Validate FILE without opening any device: prints "FILE: ok: N devices on M buses" (and the MQTT
    /// broker and layout, if any) and exits 0, or prints the mistake as FILE:LINE:COLUMN: key.path: message to
    /// stderr and exits 1.
    Check {
        /// The configuration file.
        file: PathBuf,
    },
}

/// Runs a `config` subcommand.
#[must_use]
pub(super) fn run(command: &ConfigCommand) -> ExitCode {
    match command {
        ConfigCommand::Check { file } => match crate::config::load(file) {
            Ok(config) => {
                let mut line = format!("{}: ok: {}", file.display(), summary(config.devices.len(), config.bus_count()));
                // Says where MQTT would go, since a broker cannot be checked without connecting to it.
                if let Some(mqtt) = &config.mqtt {
                    let _ = write!(line, "; MQTT to {} in the {} layout", mqtt.broker, mqtt.layout.as_str());
                }
                println!("{line}");
                ExitCode::SUCCESS
            }
            Err(error) => {
                eprintln!("{error}");
                ExitCode::FAILURE
            }
        },
    }
}

/// `3 devices on 2 buses`, singular where it reads better.
fn summary(devices: usize, buses: usize) -> String {
    let plural = |n: usize, one: &str, many: &str| format!("{n} {}", if n == 1 { one } else { many });
    format!("{} on {}", plural(devices, "device", "devices"), plural(buses, "bus", "buses"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_summary_counts_devices_and_buses_in_words() {
        assert_eq!(summary(3, 2), "3 devices on 2 buses");
        assert_eq!(summary(1, 1), "1 device on 1 bus");
    }
}
