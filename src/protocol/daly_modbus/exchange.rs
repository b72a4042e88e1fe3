//! daly_modbus side of a poll: the [`crate::protocol::Exchange`] implementation.
