//! Placeholder for the simulated daly_modbus bus while it is being written.
