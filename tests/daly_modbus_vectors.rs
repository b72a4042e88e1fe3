//! Placeholder for the daly_modbus_vectors tests while they are being written.
