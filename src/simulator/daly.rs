//! Placeholder for the simulated daly bus while it is being written.
