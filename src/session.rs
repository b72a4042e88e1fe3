//! The pure per-device poll: requests, reply timeouts, retries and drain time, with time as an input.
