//! pace side of a poll: the [`crate::protocol::Exchange`] implementation.
