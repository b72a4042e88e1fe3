//! Placeholder for the simulated sinowealth bus while it is being written.
