//! Transports as byte pipes: serial ports and TCP serial servers behind one `Link` type.
