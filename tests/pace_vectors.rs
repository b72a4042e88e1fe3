//! Placeholder for the pace_vectors tests while they are being written.
