//! The read, check, set and detect commands against the simulator over real PTYs and TCP.
