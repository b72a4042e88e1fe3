//! Placeholder for the cli_decode tests while they are being written.
