//! Decoding throughput: filled in once the codecs land.

fn main() {}
