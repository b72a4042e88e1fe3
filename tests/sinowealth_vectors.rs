//! Placeholder for the sinowealth_vectors tests while they are being written.
