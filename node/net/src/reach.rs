//! Reachability: how a node behind NAT still joins a swarm.
//!
//! - **autonat (v1)** asks connected peers to dial the node back and so learns
//!   whether it is publicly reachable. v1 rather than v2: v1 is one behaviour
//!   that both serves probes and keeps an overall `Public`/`Private` status, the
//!   transition this module acts on; v2 only confirms single addresses, needs
//!   separate client and server behaviours, and reports no such status.
//! - **circuit relay v2**: a node that learns it is private reserves a slot on a
//!   relay it met (a peer that runs `--relay-server`), or on each `--relay ADDR`
//!   from the start, and is then reachable at `RELAY/p2p-circuit/p2p/ME`.
//! - **dcutr** turns a relayed connection into a direct one by hole punching
//!   when both NATs allow it; the relay carries the traffic when they do not.
//! - `--external-addr` announces an address the node is reachable at (a port
//!   forward, a public IP in front of the host) to identify, kad and relays.
//!
//! Every transition is logged at info level in plain words.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
    time::Duration,
};

use libp2p::{
    autonat,
    core::ConnectedPoint,
    dcutr, identify,
    multiaddr::Protocol,
    relay,
    swarm::{ConnectionId, SwarmEvent},
    Multiaddr, PeerId, Swarm,
};
use tracing::{debug, info, warn};

use super::{Behaviour, BehaviourEvent, NetError};

/// How a node makes itself reachable.
#[derive(Clone, Debug, Default)]
pub struct ReachOptions {
    /// Serve as a relay for other nodes (circuit relay v2, with [`relay_server_config`]'s limits).
    pub relay_server: bool,
    /// Relays to reserve a slot on from the start, each ending in `/p2p/PEER`.
    pub relays: Vec<Multiaddr>,
    /// Addresses to announce as this node's own (`--external-addr`).
    pub external_addrs: Vec<Multiaddr>,
}

/// Relays a private node reserves on by itself, at most.
const MAX_AUTO_RELAYS: usize = 2;

/// Most relays remembered as met. Any peer can say it relays, so past the
/// bound a newly met relay takes the place of one not reserved on.
pub const MAX_KNOWN_RELAYS: usize = 64;

/// A relay server's limits. libp2p's defaults (128 KiB and 2 minutes per
/// circuit) only fit hole-punch coordination; a training swarm's deltas are
/// megabytes per round, and nodes whose NATs defeat hole punching train over
/// the relay. So circuits may carry up to 1 GiB each way for an hour, and the
/// relay holds at most 64 circuits (8 per peer) and 128 reservations (4 per
/// peer); libp2p's per-peer and per-IP rate limits on new reservations and
/// circuits stay as they are.
pub fn relay_server_config() -> relay::Config {
    relay::Config {
        max_reservations: 128,
        max_reservations_per_peer: 4,
        reservation_duration: Duration::from_secs(60 * 60),
        max_circuits: 64,
        max_circuits_per_peer: 8,
        max_circuit_duration: Duration::from_secs(60 * 60),
        max_circuit_bytes: 1 << 30,
        ..relay::Config::default()
    }
}

/// The relay address to listen on through `relay` (which ends in `/p2p/RELAY`).
pub fn circuit_address(relay: &Multiaddr) -> Multiaddr {
    relay.clone().with(Protocol::P2pCircuit)
}

/// The peer a relay address names, when it ends in `/p2p/PEER`.
pub fn relay_peer(relay: &Multiaddr) -> Option<PeerId> {
    match relay.iter().last() {
        Some(Protocol::P2p(peer)) => Some(peer),
        _ => None,
    }
}

/// Announces the external addresses and checks the relays `options` names;
/// their slots are reserved once the listeners are up (see [`super::first_dials`]).
pub fn start(swarm: &mut Swarm<Behaviour>, options: &ReachOptions) -> Result<(), NetError> {
    for address in &options.external_addrs {
        info!(%address, "announcing the external address given by --external-addr");
        swarm.add_external_address(address.clone());
    }
    for relay in &options.relays {
        if relay_peer(relay).is_none() {
            return Err(NetError::Relay {
                address: relay.clone(),
                reason: "a relay address must end in /p2p/PEER_ID (--relay)".into(),
            });
        }
    }
    Ok(())
}

/// A node's reachability as it learns it, and the relays it reserves on.
#[derive(Debug, Default)]
pub struct Reachability {
    relay_server: bool,
    announce_listen: bool,
    /// The IPs the node was told to listen on (wildcards left out).
    listen_ips: BTreeSet<IpAddr>,
    /// Peers that serve as relays, with an address of theirs. Bound:
    /// [`MAX_KNOWN_RELAYS`].
    relays: BTreeMap<PeerId, Multiaddr>,
    /// Where this node dialled each peer it reached directly: the address to
    /// reserve on when that peer turns out to be a relay. Bound: one per
    /// connected peer (removed when its last connection closes).
    dialled: BTreeMap<PeerId, Multiaddr>,
    /// The remote address of each open direct connection, to say where hole
    /// punching connected. Bound: the open connections.
    direct: BTreeMap<ConnectionId, Multiaddr>,
    /// Relays this node listens through, the `--relay` ones always (their
    /// slots are kept by [`super::given_relays`], never reserved on here).
    reserved: BTreeSet<PeerId>,
    /// The relays given by `--relay`.
    given: BTreeSet<PeerId>,
    /// Whether autonat found this node unreachable.
    private: bool,
    /// Whether to leave out QUIC relay addresses (a node with a swarm key).
    tcp_only: bool,
}

impl Reachability {
    /// `listen` is what the node listens on; `tcp_only` holds for a private
    /// network (pnet), which has no QUIC.
    pub fn new(options: &ReachOptions, listen: &[Multiaddr], tcp_only: bool) -> Self {
        let listen_ips = listen
            .iter()
            .filter_map(|a| match a.iter().next() {
                Some(Protocol::Ip4(ip)) if !ip.is_unspecified() => Some(IpAddr::V4(ip)),
                Some(Protocol::Ip6(ip)) if !ip.is_unspecified() => Some(IpAddr::V6(ip)),
                _ => None,
            })
            .collect();
        Self {
            relay_server: options.relay_server,
            // A relay must announce where it is reachable, or it serves no one.
            announce_listen: options.relay_server && options.external_addrs.is_empty(),
            listen_ips,
            reserved: options.relays.iter().filter_map(relay_peer).collect(),
            given: options.relays.iter().filter_map(relay_peer).collect(),
            tcp_only,
            ..Self::default()
        }
    }

    /// Logs what `event` changes about reachability and acts on it.
    pub fn on_swarm_event(&mut self, swarm: &mut Swarm<Behaviour>, event: &SwarmEvent<BehaviourEvent>) {
        match event {
            SwarmEvent::NewListenAddr { address, .. }
                if self.announce_listen && self.announceable(address) =>
            {
                info!(%address, "relay server: announcing this listen address as reachable (pass --external-addr to announce another)");
                swarm.add_external_address(address.clone());
            }
            SwarmEvent::ExternalAddrConfirmed { address } => {
                info!(%address, "external address confirmed: peers can reach this node there");
            }
            SwarmEvent::ExternalAddrExpired { address } => {
                info!(%address, "external address expired");
            }
            SwarmEvent::ListenerClosed { addresses, reason, .. } if addresses.iter().any(is_relayed) => {
                warn!(addresses = ?addresses, reason = ?reason, "lost the slot on a relay");
                for address in addresses {
                    if let Some(relay) =
                        address.iter().take_while(|p| *p != Protocol::P2pCircuit).find_map(|p| match p {
                            Protocol::P2p(peer) => Some(peer),
                            _ => None,
                        })
                    {
                        if !self.given.contains(&relay) {
                            self.reserved.remove(&relay);
                        }
                    }
                }
            }
            SwarmEvent::ConnectionEstablished { peer_id, endpoint, .. } if endpoint.is_relayed() => {
                info!(peer = %peer_id, address = %endpoint.get_remote_address(), "connected to a peer through a relay");
            }
            SwarmEvent::ConnectionEstablished { peer_id, connection_id, endpoint, .. } => {
                if let ConnectedPoint::Dialer { address, .. } = endpoint {
                    self.dialled.insert(*peer_id, without_peer(address));
                }
                self.direct.insert(*connection_id, endpoint.get_remote_address().clone());
            }
            SwarmEvent::ConnectionClosed { peer_id, connection_id, num_established, .. } => {
                self.direct.remove(connection_id);
                if *num_established == 0 {
                    self.dialled.remove(peer_id);
                }
            }
            SwarmEvent::OutgoingConnectionError { peer_id, error, .. } => {
                debug!(peer = ?peer_id, %error, "dial failed");
            }
            SwarmEvent::Behaviour(event) => self.on_behaviour_event(swarm, event),
            _ => {}
        }
    }

    fn on_behaviour_event(&mut self, swarm: &mut Swarm<Behaviour>, event: &BehaviourEvent) {
        match event {
            BehaviourEvent::Identify(identify::Event::Received { peer_id, info, .. }) => {
                debug!(
                    peer = %peer_id,
                    listen_addrs = ?info.listen_addrs,
                    observed = %info.observed_addr,
                    "identified a peer"
                );
                if info.protocols.contains(&relay::HOP_PROTOCOL_NAME) {
                    if !self.relays.contains_key(peer_id) {
                        let address =
                            relay_address(self.dialled.get(peer_id), &info.listen_addrs, self.tcp_only);
                        if let Some(address) = address {
                            let address = address.with_p2p(*peer_id).unwrap_or_else(|a| a);
                            debug!(relay = %address, "met a peer that serves as a relay");
                            self.remember_relay(*peer_id, address);
                        }
                    }
                    // Also a relay met again, after its slot was lost (it restarted, say).
                    self.reserve_if_private(swarm);
                }
            }
            BehaviourEvent::Autonat(autonat::Event::StatusChanged { old, new }) => match new {
                autonat::NatStatus::Public(address) => {
                    self.private = false;
                    info!(%address, "autonat: peers dialled this node back; it is publicly reachable");
                }
                autonat::NatStatus::Private => {
                    self.private = true;
                    info!("autonat: peers cannot dial this node back (NAT or firewall); it will be reachable through a relay");
                    self.reserve_if_private(swarm);
                }
                autonat::NatStatus::Unknown => {
                    info!(before = ?old, "autonat: reachability unknown again");
                }
            },
            BehaviourEvent::RelayClient(event) => match event {
                relay::client::Event::ReservationReqAccepted { relay_peer_id, renewal: false, .. } => {
                    info!(relay = %relay_peer_id, "reserved a slot on a relay: peers can reach this node through it");
                }
                relay::client::Event::InboundCircuitEstablished { src_peer_id, .. } => {
                    info!(peer = %src_peer_id, "a peer reached this node through a relay");
                }
                relay::client::Event::OutboundCircuitEstablished { relay_peer_id, .. } => {
                    info!(relay = %relay_peer_id, "reached a peer through a relay");
                }
                _ => {}
            },
            BehaviourEvent::RelayServer(event) => match event {
                relay::Event::ReservationReqAccepted { src_peer_id, renewed: false } => {
                    info!(peer = %src_peer_id, "relay server: reserved a slot for a peer");
                }
                relay::Event::CircuitReqAccepted { src_peer_id, dst_peer_id } => {
                    info!(from = %src_peer_id, to = %dst_peer_id, "relay server: relaying a connection");
                }
                relay::Event::ReservationReqDenied { src_peer_id, status } => {
                    info!(peer = %src_peer_id, ?status, "relay server: refused a reservation (limits reached)");
                }
                relay::Event::CircuitReqDenied { src_peer_id, dst_peer_id, status } => {
                    info!(from = %src_peer_id, to = %dst_peer_id, ?status, "relay server: refused to relay a connection");
                }
                other => debug!(event = ?other, "relay server"),
            },
            BehaviourEvent::Dcutr(dcutr::Event { remote_peer_id, result }) => match result {
                Ok(connection) => {
                    let address = self.direct.get(connection).map(ToString::to_string).unwrap_or_default();
                    info!(peer = %remote_peer_id, %address, "hole punching succeeded: a direct connection replaces the relayed one")
                }
                Err(error) => {
                    info!(peer = %remote_peer_id, %error, "hole punching failed: the connection stays relayed")
                }
            },
            _ => {}
        }
    }

    /// The addresses among `addresses` (a peer's own, from identify on
    /// `connection`) worth passing on to the DHT: those that reach at least as
    /// far as the connection they came over, and relayed ones. A peer met over
    /// the internet is not dialled at its loopback or LAN addresses, which
    /// lead elsewhere (to the dialler itself, for loopback over QUIC, and a
    /// dial that reaches the wrong peer fails on every address).
    pub fn addresses_to_share(&self, connection: ConnectionId, addresses: Vec<Multiaddr>) -> Vec<Multiaddr> {
        let over = self.direct.get(&connection).map_or(Scope::Global, scope);
        addresses.into_iter().filter(|a| is_relayed(a) || scope(a) >= over).collect()
    }

    /// Whether a relay server announces this listen address by itself: one it
    /// was told to listen on by IP, or any global one.
    fn announceable(&self, address: &Multiaddr) -> bool {
        if is_relayed(address) {
            return false;
        }
        match address.iter().next() {
            Some(Protocol::Ip4(ip)) => self.listen_ips.contains(&IpAddr::V4(ip)) || is_global(IpAddr::V4(ip)),
            Some(Protocol::Ip6(ip)) => self.listen_ips.contains(&IpAddr::V6(ip)) || is_global(IpAddr::V6(ip)),
            _ => false,
        }
    }

    /// Remembers a relay met, within [`MAX_KNOWN_RELAYS`]: when full, the
    /// first (by peer id) not reserved on gives way.
    fn remember_relay(&mut self, peer: PeerId, address: Multiaddr) {
        if !self.relays.contains_key(&peer) && self.relays.len() >= MAX_KNOWN_RELAYS {
            let spare = self.relays.keys().find(|p| !self.reserved.contains(p)).copied();
            match spare {
                Some(spare) => {
                    self.relays.remove(&spare);
                }
                None => return,
            }
        }
        self.relays.insert(peer, address);
    }

    /// A private node listens through relays it met, up to [`MAX_AUTO_RELAYS`].
    fn reserve_if_private(&mut self, swarm: &mut Swarm<Behaviour>) {
        if !self.private || self.relay_server {
            return;
        }
        let candidates: Vec<(PeerId, Multiaddr)> = self
            .relays
            .iter()
            .filter(|(p, _)| !self.reserved.contains(p))
            .map(|(p, a)| (*p, a.clone()))
            .collect();
        for (peer, address) in candidates {
            if self.reserved.len() >= MAX_AUTO_RELAYS {
                break;
            }
            match swarm.listen_on(circuit_address(&address)) {
                Ok(_) => {
                    info!(relay = %address, "this node is not publicly reachable: reserving a slot on a relay");
                    self.reserved.insert(peer);
                }
                Err(error) => warn!(relay = %address, %error, "cannot listen through a relay"),
            }
        }
    }
}

/// The address to reserve a slot on a relay at: the one this node dialled it
/// at, which is known to work from here; otherwise one of the addresses it
/// listens on, global ones first and loopback last (a relay's loopback
/// address is its own host, which is ours only on one machine).
fn relay_address(dialled: Option<&Multiaddr>, listen: &[Multiaddr], tcp_only: bool) -> Option<Multiaddr> {
    let usable = |a: &&Multiaddr| !is_relayed(a) && (!tcp_only || !super::pnet::is_quic(a));
    if let Some(address) = dialled.filter(usable) {
        return Some(address.clone());
    }
    listen.iter().filter(usable).min_by_key(|a| std::cmp::Reverse(scope(a))).map(without_peer)
}

/// How far an address reaches, nearest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Scope {
    /// This host.
    Loopback,
    /// A private network: RFC 1918, carrier-grade NAT, link local, unique local.
    Private,
    /// The internet (and names, which resolve who knows where).
    Global,
}

fn scope(address: &Multiaddr) -> Scope {
    let ip = match address.iter().next() {
        Some(Protocol::Ip4(ip)) => IpAddr::V4(ip),
        Some(Protocol::Ip6(ip)) => IpAddr::V6(ip),
        _ => return Scope::Global,
    };
    if ip.is_loopback() {
        Scope::Loopback
    } else if is_global(ip) {
        Scope::Global
    } else {
        Scope::Private
    }
}

/// `address` without a trailing `/p2p/PEER`.
fn without_peer(address: &Multiaddr) -> Multiaddr {
    let mut address = address.clone();
    if matches!(address.iter().last(), Some(Protocol::P2p(_))) {
        address.pop();
    }
    address
}

/// Whether an address goes through a relay.
pub fn is_relayed(address: &Multiaddr) -> bool {
    address.iter().any(|p| p == Protocol::P2pCircuit)
}

/// Whether an IP is reachable from the whole internet (std's `is_global` is unstable).
pub fn is_global(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(ip) => {
            let [a, b, ..] = ip.octets();
            !(ip.is_private()
                || ip.is_loopback()
                || ip.is_link_local()
                || ip.is_unspecified()
                || ip.is_broadcast()
                || ip.is_documentation()
                || ip.is_multicast()
                || (a == 100 && (64..128).contains(&b)) // carrier-grade NAT
                || a == 0
                || a >= 240)
        }
        IpAddr::V6(ip) => {
            let first = ip.segments()[0];
            !(ip.is_loopback()
                || ip.is_unspecified()
                || ip.is_multicast()
                || (first & 0xfe00) == 0xfc00 // unique local
                || (first & 0xffc0) == 0xfe80 // link local
                || first == 0x2001 && ip.segments()[1] == 0x0db8) // documentation
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relays_met_are_bounded_and_those_reserved_on_stay() {
        let peer = |n: u32| {
            let mut secret = [0x33; 32];
            secret[..4].copy_from_slice(&n.to_le_bytes());
            crate::keypair(&ed25519_dalek::SigningKey::from_bytes(&secret)).public().to_peer_id()
        };
        let address: Multiaddr = "/ip4/7.7.1.1/tcp/4001".parse().unwrap();
        let mut reach = Reachability::default();
        for n in 0..MAX_KNOWN_RELAYS as u32 {
            reach.remember_relay(peer(n), address.clone());
        }
        let reserved: Vec<PeerId> = reach.relays.keys().take(2).copied().collect();
        reach.reserved.extend(reserved.iter().copied());
        for n in 0..(3 * MAX_KNOWN_RELAYS) as u32 {
            reach.remember_relay(peer(1000 + n), address.clone());
        }
        assert_eq!(reach.relays.len(), MAX_KNOWN_RELAYS);
        assert!(reserved.iter().all(|p| reach.relays.contains_key(p)), "relays in use are kept");
        assert!(reach.relays.contains_key(&peer(1000 + 3 * MAX_KNOWN_RELAYS as u32 - 1)), "the newest is in");
    }

    #[tokio::test]
    async fn a_lost_slot_on_a_given_relay_stays_counted_so_it_is_never_auto_reserved_twice() {
        use crate::{build_swarm, NetOptions, Transport};
        use libp2p::core::transport::ListenerId;

        let key = |seed: u8| ed25519_dalek::SigningKey::from_bytes(&[seed; 32]);
        let peer = |seed: u8| crate::keypair(&key(seed)).public().to_peer_id();
        let options = NetOptions { transport: Transport::Memory, ..NetOptions::default() };
        let mut swarm =
            build_swarm(&key(1), &starling_protocol::RunSpec::builtin(), &options, &mut Default::default())
                .expect("memory swarm builds");
        let relay =
            |seed: u8| "/ip4/7.7.1.1/tcp/4001".parse::<Multiaddr>().unwrap().with_p2p(peer(seed)).unwrap();
        let (given, auto) = (peer(2), peer(3));
        let mut reach = Reachability::new(
            &ReachOptions { relays: vec![relay(2)], ..ReachOptions::default() },
            &[],
            false,
        );
        reach.reserved.insert(auto);
        let lost = SwarmEvent::ListenerClosed {
            listener_id: ListenerId::next(),
            addresses: [relay(2), relay(3)].map(|r| circuit_address(&r).with_p2p(peer(1)).unwrap()).to_vec(),
            reason: Ok(()),
        };
        reach.on_swarm_event(&mut swarm, &lost);
        assert_eq!(reach.reserved, BTreeSet::from([given]), "given relays are kept by given_relays");
    }

    #[test]
    fn global_addresses_are_told_from_local_ones() {
        for local in [
            "127.0.0.1",
            "10.1.2.3",
            "192.168.0.1",
            "172.16.5.5",
            "100.64.0.1",
            "169.254.1.1",
            "::1",
            "fd00::1",
            "fe80::1",
        ] {
            assert!(!is_global(local.parse().unwrap()), "{local}");
        }
        for global in ["8.8.8.8", "203.0.114.1", "2a00:1450::1"] {
            assert!(is_global(global.parse().unwrap()), "{global}");
        }
    }

    #[test]
    fn a_relay_server_announces_only_addresses_it_was_told_or_global_ones() {
        let options = ReachOptions { relay_server: true, ..Default::default() };
        let reach = Reachability::new(
            &options,
            &["/ip4/127.0.0.1/tcp/0".parse().unwrap(), "/ip4/0.0.0.0/udp/0/quic-v1".parse().unwrap()],
            false,
        );
        assert!(reach.announce_listen);
        assert!(reach.announceable(&"/ip4/127.0.0.1/tcp/4001".parse().unwrap()));
        assert!(!reach.announceable(&"/ip4/192.168.1.2/udp/4001/quic-v1".parse().unwrap()));
        assert!(reach.announceable(&"/ip4/8.8.8.8/udp/4001/quic-v1".parse().unwrap()));
        let peer = crate::keypair(&ed25519_dalek::SigningKey::from_bytes(&[1; 32])).public().to_peer_id();
        let relay: Multiaddr = format!("/ip4/127.0.0.1/tcp/1/p2p/{peer}").parse().unwrap();
        assert!(!reach.announceable(&circuit_address(&relay)));
        assert!(relay_peer(&relay).is_some() && is_relayed(&circuit_address(&relay)));
        let announced = ReachOptions { external_addrs: vec![relay], ..options };
        assert!(!Reachability::new(&announced, &[], false).announce_listen);
    }

    #[test]
    fn a_relay_is_reserved_on_where_it_was_reached_or_at_its_most_public_address() {
        let ma = |s: &str| s.parse::<Multiaddr>().unwrap();
        let listen = [
            ma("/ip4/127.0.0.1/tcp/4001"),
            ma("/ip4/10.0.0.5/tcp/4001"),
            ma("/ip4/7.7.1.1/udp/4001/quic-v1"),
        ];
        let peer = crate::keypair(&ed25519_dalek::SigningKey::from_bytes(&[2; 32])).public().to_peer_id();
        let dialled = ma("/ip4/7.7.2.1/tcp/4001").with_p2p(peer).unwrap();
        assert_eq!(
            relay_address(Some(&without_peer(&dialled)), &listen, false),
            Some(ma("/ip4/7.7.2.1/tcp/4001"))
        );
        assert_eq!(relay_address(None, &listen, false), Some(ma("/ip4/7.7.1.1/udp/4001/quic-v1")));
        // Without QUIC, the private address beats loopback.
        assert_eq!(relay_address(None, &listen, true), Some(ma("/ip4/10.0.0.5/tcp/4001")));
        assert_eq!(relay_address(None, &listen[..1], false), Some(ma("/ip4/127.0.0.1/tcp/4001")));
        assert_eq!(relay_address(None, &[], false), None);
    }

    #[test]
    fn a_peer_met_over_the_internet_is_not_passed_on_at_its_loopback_or_lan_addresses() {
        let ma = |s: &str| s.parse::<Multiaddr>().unwrap();
        let peer = crate::keypair(&ed25519_dalek::SigningKey::from_bytes(&[3; 32])).public().to_peer_id();
        let circuit = ma("/ip4/7.7.1.1/tcp/4001").with_p2p(peer).unwrap().with(Protocol::P2pCircuit);
        let own = vec![
            ma("/ip4/127.0.0.1/udp/4001/quic-v1"),
            ma("/ip4/192.168.10.2/tcp/4001"),
            ma("/ip4/7.7.1.2/tcp/4001"),
            ma("/dns4/node.example/tcp/4001"),
            circuit.clone(),
        ];
        let mut reach = Reachability::default();
        let (internet, lan, local, unknown) = (
            ConnectionId::new_unchecked(1),
            ConnectionId::new_unchecked(2),
            ConnectionId::new_unchecked(3),
            ConnectionId::new_unchecked(4),
        );
        reach.direct.insert(internet, ma("/ip4/7.7.1.2/tcp/4001"));
        reach.direct.insert(lan, ma("/ip4/192.168.10.2/tcp/4001"));
        reach.direct.insert(local, ma("/ip4/127.0.0.1/tcp/4001"));
        assert_eq!(reach.addresses_to_share(internet, own.clone()), own[2..].to_vec());
        assert_eq!(reach.addresses_to_share(lan, own.clone()), own[1..].to_vec());
        assert_eq!(reach.addresses_to_share(local, own.clone()), own);
        // A relayed connection (not in `direct`) came over the internet.
        assert_eq!(reach.addresses_to_share(unknown, own.clone()), own[2..].to_vec());
    }
}
