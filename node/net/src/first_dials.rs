//! The node's first dials, to its bootnodes and the relays given by `--relay`,
//! made once its own listeners are up.
//!
//! A TCP dial reuses the port the node listens on only once that listener has
//! reported its address. A bootnode or relay dialled earlier sees the
//! connection come from an ephemeral port, and so tells the node (identify's
//! observed address) an address that NATs map to nothing else: the first
//! candidate dcutr offers for hole punching is then a dead one. So the
//! bootnodes, the DHT that would dial them too, and the relays wait until
//! every listener on an IP address has an address, or [`LISTEN_GRACE`] has
//! passed. A relay is reserved on once the connection to it is up, over that
//! connection (see [`super::given_relays`]).

use std::{
    collections::HashSet,
    time::{Duration, Instant},
};

use libp2p::{core::transport::ListenerId, Multiaddr, Swarm};
use tracing::warn;

use super::{
    reach::{is_relayed, relay_peer},
    Behaviour,
};

/// The longest the first dials wait for the listeners.
pub const LISTEN_GRACE: Duration = Duration::from_secs(2);

/// Bootnodes and relays not dialled yet, and the listeners the dials wait for.
#[derive(Debug)]
pub struct FirstDials {
    /// Addresses to dial once ready: the bootnodes, then the relays that are not
    /// bootnodes too. Two dials to one address would leave from the same
    /// listening port and collide on one TCP 4-tuple.
    dials: Vec<Multiaddr>,
    /// How many of `dials` are bootnodes (the first ones).
    bootnodes: usize,
    waiting: HashSet<ListenerId>,
    since: Instant,
}

impl FirstDials {
    /// `relays` are those given by `--relay` (reserved on by
    /// [`super::given_relays`] once connected); `listeners` are the ids and
    /// addresses `listen_on` was called with. Relayed listeners are not waited
    /// for (they need a connection to the relay first).
    pub fn new(
        bootnodes: Vec<Multiaddr>,
        relays: &[Multiaddr],
        listeners: &[(ListenerId, Multiaddr)],
    ) -> Self {
        let waiting = listeners.iter().filter(|(_, a)| !is_relayed(a)).map(|(id, _)| *id).collect();
        let count = bootnodes.len();
        let mut dials = bootnodes;
        for relay in relays {
            if !dials.contains(relay) {
                dials.push(relay.clone());
            }
        }
        Self { dials, bootnodes: count, waiting, since: Instant::now() }
    }

    /// A listener reported an address.
    pub fn on_listen_addr(&mut self, listener: ListenerId) {
        self.waiting.remove(&listener);
    }

    /// Whether the first dials may be made now.
    fn ready(&self, now: Instant) -> bool {
        self.waiting.is_empty() || now.duration_since(self.since) >= LISTEN_GRACE
    }

    /// Once ready, and at most once: dials the bootnodes (telling the DHT about
    /// them) and the relays.
    pub fn dial_when_ready(&mut self, swarm: &mut Swarm<Behaviour>) {
        if self.dials.is_empty() || !self.ready(Instant::now()) {
            return;
        }
        for (i, address) in std::mem::take(&mut self.dials).into_iter().enumerate() {
            let bootnode = i < self.bootnodes;
            if bootnode {
                if let Some(peer) = relay_peer(&address) {
                    swarm.behaviour_mut().kad.add_address(&peer, address.clone());
                }
            }
            if let Err(error) = swarm.dial(address.clone()) {
                let what = if bootnode { "bootnode" } else { "relay given by --relay" };
                warn!(%address, %error, "cannot dial the {what}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use libp2p::{multiaddr::Protocol, PeerId};

    use super::*;

    fn ma(s: &str) -> Multiaddr {
        s.parse().unwrap()
    }

    fn peer(seed: u8) -> PeerId {
        crate::keypair(&ed25519_dalek::SigningKey::from_bytes(&[seed; 32])).public().to_peer_id()
    }

    #[test]
    fn a_relay_that_is_also_a_bootnode_is_dialled_once() {
        let relay = ma("/ip4/7.7.1.1/tcp/4001").with_p2p(peer(1)).unwrap();
        let other = ma("/ip4/7.7.3.1/udp/4001/quic-v1").with_p2p(peer(2)).unwrap();
        let dials = FirstDials::new(vec![relay.clone()], &[relay.clone(), other.clone()], &[]);
        assert_eq!(dials.dials, vec![relay, other], "one dial per address");
        assert_eq!(dials.bootnodes, 1);
    }

    #[test]
    fn first_dials_wait_for_direct_listeners_only_and_not_past_the_grace() {
        let (tcp, quic, relayed) = (ListenerId::next(), ListenerId::next(), ListenerId::next());
        let peer = peer(4);
        let listeners = [
            (tcp, ma("/ip4/0.0.0.0/tcp/0")),
            (quic, ma("/ip4/0.0.0.0/udp/0/quic-v1")),
            (relayed, ma("/ip4/7.7.1.1/tcp/4001").with_p2p(peer).unwrap().with(Protocol::P2pCircuit)),
        ];
        let mut boot = FirstDials::new(vec![ma("/ip4/7.7.1.1/tcp/4001")], &[], &listeners);
        let start = boot.since;
        assert!(!boot.ready(start));
        boot.on_listen_addr(tcp);
        assert!(!boot.ready(start));
        boot.on_listen_addr(quic);
        assert!(boot.ready(start), "a relayed listener is not waited for");
        let mut stuck = FirstDials::new(vec![], &[], &listeners);
        stuck.since = start;
        assert!(!stuck.ready(start + LISTEN_GRACE / 2));
        assert!(stuck.ready(start + LISTEN_GRACE));
    }
}
