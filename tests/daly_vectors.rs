//! Placeholder for the daly_vectors tests while they are being written.
