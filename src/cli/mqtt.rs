//! `bms_exporter mqtt …`: broker-side maintenance. `mqtt cleanup` removes the Home Assistant discovery (and the
//! availability) of devices that are no longer in the configuration.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context as _, bail};
use clap::{Args, Subcommand};

use crate::config::{self, mqtt::Layout};
use crate::mqtt::cleanup;

/// The `mqtt` subcommands.
#[derive(Debug, Subcommand)]
pub enum MqttCommand {
    /// Remove the retained Home Assistant discovery configs and availability of devices that are no longer
    /// configured (native layout); with --dry-run, only list them.
    Cleanup(CleanupArgs),
}

/// Arguments of `mqtt cleanup`.
#[derive(Debug, Args)]
pub struct CleanupArgs {
    /// Configuration file: its mqtt: block names the broker and prefixes, its devices are the ones that stay.
    #[arg(long, value_name = "FILE")]
    pub config: PathBuf,
    /// Only list what would be removed; publish nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// How long to collect the broker's retained discovery configs after subscribing (e.g. 2s, 500ms).
    #[arg(long, value_name = "DURATION", default_value = "2s", value_parser = wait)]
    pub wait: Duration,
}

/// `--wait`: a duration from 100 ms to 1 min.
fn wait(text: &str) -> Result<Duration, String> {
    match config::parse_duration(text) {
        Some(d) if (Duration::from_millis(100)..=Duration::from_secs(60)).contains(&d) => Ok(d),
        Some(_) => Err(format!("{text:?} is outside 100ms–1m")),
        None => Err(format!("{text:?} is not a duration: write a number and a unit, like 2s or 500ms")),
    }
}

/// Run an `mqtt` subcommand.
pub(super) fn run(command: &MqttCommand) -> anyhow::Result<ExitCode> {
    match command {
        MqttCommand::Cleanup(args) => cleanup_command(args),
    }
}

fn cleanup_command(args: &CleanupArgs) -> anyhow::Result<ExitCode> {
    let file = args.config.display();
    let config = config::load(&args.config)?;
    let Some(mqtt) = &config.mqtt else {
        bail!("{file} has no mqtt: block; cleanup needs the broker and the prefixes it names");
    };
    if mqtt.layout != Layout::Native {
        println!(
            "cleanup applies to the native layout; {file} uses layout {}, whose discovery it leaves alone",
            mqtt.layout.as_str()
        );
        return Ok(ExitCode::SUCCESS);
    }
    let devices: Vec<String> = config.devices.iter().map(|d| d.name.clone()).collect();
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().context("starting the runtime")?;
    let report = runtime.block_on(cleanup::cleanup(mqtt, &devices, args.wait, args.dry_run))?;
    let verb = if report.dry_run { "would remove" } else { "removed" };
    for topic in &report.removed {
        println!("{verb} {topic}");
    }
    if report.removed.is_empty() {
        println!(
            "nothing to remove: no discovery of unconfigured devices under {}/ ({} configs of configured devices kept)",
            mqtt.discovery.prefix, report.kept
        );
    } else {
        println!(
            "{verb} {} retained messages of {} ({}); {} configs of configured devices kept",
            report.removed.len(),
            if report.devices.len() == 1 { "1 device".to_owned() } else { format!("{} devices", report.devices.len()) },
            report.devices.join(", "),
            report.kept
        );
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_wait_is_a_short_duration() {
        assert_eq!(wait("2s"), Ok(Duration::from_secs(2)));
        assert_eq!(wait("500ms"), Ok(Duration::from_millis(500)));
        for bad in ["0s", "2", "2h", "soon"] {
            assert!(wait(bad).is_err(), "{bad:?}");
        }
    }
}
