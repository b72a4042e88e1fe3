//! Connecting to a transparent serial server (RS485-to-Ethernet box, ser2net) over TCP, as a [`Link`].
//!
//! Resolution and each connection attempt are bounded by the configured timeout, so a dead box or a hanging
//! resolver cannot stall a bus worker. Keepalive is switched on so a box that vanished without a FIN is eventually
//! noticed even on an idle link (the kernel's default idle time applies; the poller's reply timeouts notice sooner
//! while polling). Reconnecting is the caller's job (the bus worker paces it).

use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::{TcpSocket, TcpStream};

use super::{Link, TcpSettings, TransportError};

/// Resolves `settings.address` and connects to the first resolved address that answers.
pub(super) async fn open(settings: &TcpSettings, description: String) -> Result<Link, TransportError> {
    let address = settings.address.as_str();
    let after = settings.connect_timeout;
    let resolve_error = |message: String| TransportError::Resolve { address: address.to_owned(), message };

    let (host, port) = split_host_port(address).map_err(resolve_error)?;
    let resolved: Vec<SocketAddr> = match tokio::time::timeout(after, tokio::net::lookup_host((host, port))).await {
        Err(_elapsed) => return Err(resolve_error(format!("no answer from the name resolver within {after:?}"))),
        Ok(Err(err)) => return Err(resolve_error(err.to_string())),
        Ok(Ok(addrs)) => addrs.collect(),
    };

    // A name may resolve to several addresses (IPv6 and IPv4); the last failure is the one reported.
    let mut last = resolve_error("the name resolved to no addresses".to_owned());
    for addr in resolved {
        match connect_one(addr, address, after).await {
            Ok(stream) => return Ok(Link::from_stream(stream, description)),
            Err(err) => last = err,
        }
    }
    Err(last)
}

/// One connection attempt with keepalive and no Nagle delay (requests are tiny and latency-bound).
async fn connect_one(addr: SocketAddr, address: &str, after: Duration) -> Result<TcpStream, TransportError> {
    let socket = if addr.is_ipv4() { TcpSocket::new_v4() } else { TcpSocket::new_v6() }
        .map_err(|cause| TransportError::Io { what: "creating a TCP socket", cause })?;
    socket.set_keepalive(true).map_err(|cause| TransportError::Io { what: "enabling TCP keepalive", cause })?;
    socket.set_nodelay(true).map_err(|cause| TransportError::Io { what: "disabling Nagle's algorithm", cause })?;
    match tokio::time::timeout(after, socket.connect(addr)).await {
        Err(_elapsed) => Err(TransportError::ConnectTimeout { address: address.to_owned(), after }),
        Ok(Err(cause)) => Err(TransportError::Connect { address: address.to_owned(), cause }),
        Ok(Ok(stream)) => Ok(stream),
    }
}

/// Splits `host:port` (IPv6 hosts in brackets) with a message a user can act on when it is malformed.
fn split_host_port(address: &str) -> Result<(&str, u16), String> {
    let example = "expected HOST:PORT, e.g. 192.168.1.50:8899";
    let Some((host, port)) = address.rsplit_once(':') else {
        return Err(format!("the port is missing: {example}"));
    };
    let host = match host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        Some(bracketed) => bracketed,
        // An unbracketed IPv6 address would otherwise silently lose its last group to the port.
        None if host.contains(':') => {
            return Err("an IPv6 address needs brackets and a port, e.g. [fe80::1]:8899".to_owned());
        }
        None => host,
    };
    if host.is_empty() {
        return Err(format!("the host is missing: {example}"));
    }
    match port.parse::<u16>() {
        Ok(port) if port != 0 => Ok((host, port)),
        _ => Err(format!("{port:?} is not a port number from 1 to 65535: {example}")),
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    use super::*;
    use crate::transport::{TransportSettings, open as open_transport};

    fn settings(address: &str) -> TransportSettings {
        TransportSettings::Tcp(TcpSettings { address: address.to_owned(), connect_timeout: Duration::from_secs(5) })
    }

    #[tokio::test]
    async fn bytes_flow_both_ways_over_loopback() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap().to_string();
        // The kernel completes the handshake from the listen backlog, so connecting before accepting is fine.
        let mut link = open_transport(&settings(&address)).await.unwrap();
        let (mut server, _) = listener.accept().await.unwrap();
        assert_eq!(link.description(), format!("tcp {address}"));

        link.write_all(b"\xa5\x40\x90\x08").await.unwrap();
        let mut got = [0u8; 4];
        server.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"\xa5\x40\x90\x08");

        server.write_all(b"reply").await.unwrap();
        let mut got = [0u8; 5];
        link.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"reply");
    }

    #[tokio::test]
    async fn a_bracketed_ipv6_loopback_address_connects_when_the_host_has_ipv6() {
        // Containers without IPv6 cannot bind ::1; then there is nothing to connect to and nothing to check.
        let Ok(listener) = TcpListener::bind("[::1]:0").await else { return };
        let address = listener.local_addr().unwrap().to_string();
        assert!(address.starts_with('['), "{address}");
        let _link = open_transport(&settings(&address)).await.unwrap();
        listener.accept().await.unwrap();
    }

    #[tokio::test]
    async fn a_refused_port_is_a_connect_error_naming_the_address() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap().to_string();
        drop(listener);
        match open_transport(&settings(&address)).await {
            Err(err @ TransportError::Connect { .. }) => {
                assert!(err.to_string().contains(&address), "{err}");
                assert_eq!(err.kind(), "io");
            }
            other => panic!("expected Connect, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn an_unresolvable_name_is_an_error_naming_the_address() {
        let address = "no-such-host.invalid:1";
        match open_transport(&settings(address)).await {
            Err(
                err @ (TransportError::Resolve { .. }
                | TransportError::Connect { .. }
                | TransportError::ConnectTimeout { .. }),
            ) => assert!(err.to_string().contains(address), "{err}"),
            other => panic!("expected a resolve or connect error, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn an_address_without_a_port_says_the_port_is_missing() {
        match open_transport(&settings("127.0.0.1")).await {
            Err(err @ TransportError::Resolve { .. }) => {
                let message = err.to_string();
                assert!(message.contains("127.0.0.1") && message.contains("port is missing"), "{message}");
            }
            other => panic!("expected Resolve, got {other:?}"),
        }
    }

    #[test]
    fn host_and_port_are_split_and_malformed_addresses_explained() {
        assert_eq!(split_host_port("192.168.1.50:8899"), Ok(("192.168.1.50", 8899)));
        assert_eq!(split_host_port("bms-gw.local:23"), Ok(("bms-gw.local", 23)));
        assert_eq!(split_host_port("[fe80::1]:8899"), Ok(("fe80::1", 8899)));
        let cases = [
            ("127.0.0.1", "port is missing"),
            (":8899", "host is missing"),
            ("[]:8899", "host is missing"),
            ("10.0.0.1:http", "\"http\" is not a port number"),
            ("10.0.0.1:0", "\"0\" is not a port number"),
            ("10.0.0.1:70000", "\"70000\" is not a port number"),
            ("fe80::1", "needs brackets"),
        ];
        for (address, expected) in cases {
            let message = split_host_port(address).unwrap_err();
            assert!(message.contains(expected), "{address}: {message}");
        }
    }
}
