//! Printing a snapshot for people and scripts: `read` JSON, the daly-bms-cli layout, the Nagios check.
pub mod nagios;
