//! Dialling the bootnodes once this node's own listeners are up.
//!
//! A TCP dial reuses the port the node listens on only once that listener has
//! reported its address. A bootnode dialled earlier sees the connection come
//! from an ephemeral port, and so tells the node (identify's observed address)
//! an address that NATs map to nothing else: the first candidate dcutr offers
//! for hole punching is then a dead one. So the bootnodes, and the DHT that
//! would dial them too, wait until every listener on an IP address has an
//! address, or [`LISTEN_GRACE`] has passed.

use std::{
    collections::HashSet,
    time::{Duration, Instant},
};

use libp2p::{core::transport::ListenerId, multiaddr::Protocol, Multiaddr, Swarm};
use tracing::warn;

use super::{reach::is_relayed, Behaviour};

/// The longest the bootnodes wait for the listeners.
pub const LISTEN_GRACE: Duration = Duration::from_secs(2);

/// Bootnodes not dialled yet, and the listeners they wait for.
#[derive(Debug)]
pub struct Bootnodes {
    pending: Vec<Multiaddr>,
    waiting: HashSet<ListenerId>,
    since: Instant,
}

impl Bootnodes {
    /// `listeners` are the ids and addresses `listen_on` was called with;
    /// relayed ones are not waited for (they need a connection to the relay first).
    pub fn new(bootnodes: Vec<Multiaddr>, listeners: &[(ListenerId, Multiaddr)]) -> Self {
        let waiting = listeners.iter().filter(|(_, a)| !is_relayed(a)).map(|(id, _)| *id).collect();
        Self { pending: bootnodes, waiting, since: Instant::now() }
    }

    /// A listener reported an address.
    pub fn on_listen_addr(&mut self, listener: ListenerId) {
        self.waiting.remove(&listener);
    }

    /// Whether the bootnodes may be dialled now.
    fn ready(&self, now: Instant) -> bool {
        self.waiting.is_empty() || now.duration_since(self.since) >= LISTEN_GRACE
    }

    /// Dials the bootnodes (and tells the DHT about them) once ready; at most once.
    pub fn dial_when_ready(&mut self, swarm: &mut Swarm<Behaviour>) {
        if self.pending.is_empty() || !self.ready(Instant::now()) {
            return;
        }
        for address in std::mem::take(&mut self.pending) {
            if let Some(Protocol::P2p(peer)) = address.iter().last() {
                swarm.behaviour_mut().kad.add_address(&peer, address.clone());
            }
            if let Err(e) = swarm.dial(address.clone()) {
                warn!(%address, error = %e, "cannot dial bootnode");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bootnodes_wait_for_direct_listeners_only_and_not_past_the_grace() {
        let ma = |s: &str| s.parse::<Multiaddr>().unwrap();
        let (tcp, quic, relayed) = (ListenerId::next(), ListenerId::next(), ListenerId::next());
        let peer =
            crate::net::keypair(&ed25519_dalek::SigningKey::from_bytes(&[4; 32])).public().to_peer_id();
        let listeners = [
            (tcp, ma("/ip4/0.0.0.0/tcp/0")),
            (quic, ma("/ip4/0.0.0.0/udp/0/quic-v1")),
            (relayed, ma("/ip4/7.7.1.1/tcp/4001").with_p2p(peer).unwrap().with(Protocol::P2pCircuit)),
        ];
        let mut boot = Bootnodes::new(vec![ma("/ip4/7.7.1.1/tcp/4001")], &listeners);
        let start = boot.since;
        assert!(!boot.ready(start));
        boot.on_listen_addr(tcp);
        assert!(!boot.ready(start));
        boot.on_listen_addr(quic);
        assert!(boot.ready(start), "a relayed listener is not waited for");
        let mut stuck = Bootnodes::new(vec![], &listeners);
        stuck.since = start;
        assert!(!stuck.ready(start + LISTEN_GRACE / 2));
        assert!(stuck.ready(start + LISTEN_GRACE));
    }
}
