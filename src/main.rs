//! Binary entry point: parse the command line, run the chosen subcommand, map the outcome to an exit code.

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let args = bms_exporter::cli::Cli::parse();
    bms_exporter::cli::run(args)
}
