//! Errors an operator can act on: turns a node's failure into one that says
//! which flag to change and, for a listen port in use, a port that is free.

use std::net::{IpAddr, SocketAddr, TcpListener, UdpSocket};

use libp2p::{multiaddr::Protocol, Multiaddr};

use crate::node::NodeError;

/// `error`, with what to do about it when that is known.
pub fn explain(error: NodeError) -> anyhow::Error {
    match &error {
        NodeError::Listen { address, reason } => match port_in_use(address, reason) {
            Some(port) => {
                let free = free_alternative(address)
                    .map(|a| format!(", e.g. --listen {a} (free now)"))
                    .unwrap_or_default();
                anyhow::anyhow!(
                    "cannot listen on {address}: port {port} is already in use by another process; change --listen{free}, or stop the process that holds the port"
                )
            }
            None => error.into(),
        },
        _ => error.into(),
    }
}

/// The IP, port and whether it is TCP (else UDP) of a listen address.
fn socket(address: &Multiaddr) -> Option<(SocketAddr, bool)> {
    let mut parts = address.iter();
    let ip: IpAddr = match parts.next()? {
        Protocol::Ip4(ip) => ip.into(),
        Protocol::Ip6(ip) => ip.into(),
        _ => return None,
    };
    match parts.next()? {
        Protocol::Tcp(port) => Some((SocketAddr::new(ip, port), true)),
        Protocol::Udp(port) => Some((SocketAddr::new(ip, port), false)),
        _ => None,
    }
}

/// The port, if `address` failed because its port is taken.
fn port_in_use(address: &Multiaddr, reason: &str) -> Option<u16> {
    let (socket, tcp) = socket(address)?;
    if socket.port() == 0 {
        return None;
    }
    let taken = reason.to_ascii_lowercase().contains("in use")
        || match tcp {
            true => TcpListener::bind(socket).is_err_and(|e| e.kind() == std::io::ErrorKind::AddrInUse),
            false => UdpSocket::bind(socket).is_err_and(|e| e.kind() == std::io::ErrorKind::AddrInUse),
        };
    taken.then_some(socket.port())
}

/// `address` with a port the OS says is free right now.
pub fn free_alternative(address: &Multiaddr) -> Option<Multiaddr> {
    let (socket, tcp) = socket(address)?;
    let any = SocketAddr::new(socket.ip(), 0);
    let port = match tcp {
        true => TcpListener::bind(any).ok()?.local_addr().ok()?.port(),
        false => UdpSocket::bind(any).ok()?.local_addr().ok()?.port(),
    };
    let old = socket.port();
    Some(
        address
            .iter()
            .map(|p| match p {
                Protocol::Tcp(p) if p == old && tcp => Protocol::Tcp(port),
                Protocol::Udp(p) if p == old && !tcp => Protocol::Udp(port),
                other => other,
            })
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_port_in_use_names_listen_and_a_free_port() {
        let taken = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = taken.local_addr().unwrap().port();
        let address: Multiaddr = format!("/ip4/127.0.0.1/tcp/{port}").parse().unwrap();
        let error = NodeError::Listen { address: address.clone(), reason: "os error".into() };
        let message = explain(error).to_string();
        assert!(message.contains("--listen /ip4/127.0.0.1/tcp/"), "{message}");
        assert!(message.contains(&format!("port {port} is already in use")), "{message}");
        let suggested: Multiaddr =
            message.split("--listen ").nth(1).unwrap().split(' ').next().unwrap().parse().unwrap();
        assert_ne!(suggested, address);
    }

    #[test]
    fn quic_addresses_keep_their_protocols() {
        let address: Multiaddr = "/ip4/127.0.0.1/udp/1/quic-v1".parse().unwrap();
        let free = free_alternative(&address).unwrap().to_string();
        assert!(free.starts_with("/ip4/127.0.0.1/udp/") && free.ends_with("/quic-v1"), "{free}");
    }
}
