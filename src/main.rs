//! Binary entry point: parse the command line, run the chosen subcommand, map the outcome to an exit code.

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    match bms_exporter::cli::Cli::try_parse() {
        Ok(args) => bms_exporter::cli::run(args),
        Err(error) => {
            let _ = error.print();
            // A Nagios plugin must answer 3 UNKNOWN for a usage error; clap's 2 would read as CRITICAL.
            let check = std::env::args().nth(1).is_some_and(|a| a == "check");
            if check && error.use_stderr() {
                // Nagios shows stdout only: give it a status line, not "(No output on stdout)".
                let text = error.render().to_string();
                let first = text.lines().next().unwrap_or("invalid arguments").trim_start_matches("error: ");
                println!("BMS UNKNOWN - {first}");
                ExitCode::from(3)
            } else {
                ExitCode::from(error.exit_code() as u8)
            }
        }
    }
}
