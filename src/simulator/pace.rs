//! Placeholder for the simulated pace bus while it is being written.
