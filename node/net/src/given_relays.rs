//! Keeping a slot on each relay given by `--relay`.
//!
//! A slot is reserved over the node's own connection to the relay once it is
//! up (a second dial from the listening port to the same address would
//! collide on one TCP 4-tuple). When the slot is lost, because the relay
//! restarted or the connection dropped, or the relay cannot be reached, the
//! node dials it again and reserves anew, waiting [`FIRST_RETRY`] and then
//! twice as long each time up to [`MAX_RETRY`]; a slot won back resets the wait.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    time::{Duration, Instant},
};

use libp2p::{
    core::{transport::ListenerId, ConnectedPoint},
    swarm::{dial_opts::DialOpts, DialError},
    Multiaddr, PeerId, Swarm,
};
use tracing::{info, warn};

use super::{
    reach::{circuit_address, relay_peer},
    Behaviour,
};

/// The first wait before a lost or unreachable relay is tried again.
pub const FIRST_RETRY: Duration = Duration::from_secs(1);
/// The longest wait between tries.
pub const MAX_RETRY: Duration = Duration::from_secs(60);

/// The relays given by `--relay` and the slots held on them.
#[derive(Debug)]
pub struct GivenRelays {
    /// Each relay's address, ending in `/p2p/RELAY` (checked by `reach::start`).
    addresses: BTreeMap<PeerId, Multiaddr>,
    /// Relays with no slot and no reservation under way.
    unreserved: BTreeSet<PeerId>,
    /// The circuit listener of each reservation under way or held.
    listeners: HashMap<ListenerId, PeerId>,
    /// When to try the unreserved relays again.
    retry_at: Option<Instant>,
    /// The wait after the next try.
    backoff: Duration,
}

impl GivenRelays {
    pub fn new(relays: &[Multiaddr]) -> Self {
        let addresses: BTreeMap<PeerId, Multiaddr> =
            relays.iter().filter_map(|a| Some((relay_peer(a)?, a.clone()))).collect();
        Self {
            unreserved: addresses.keys().copied().collect(),
            addresses,
            listeners: HashMap::new(),
            retry_at: None,
            backoff: FIRST_RETRY,
        }
    }

    /// A connection is up: a direct one to an unreserved relay carries a reservation.
    pub fn on_connected(&mut self, peer: PeerId, endpoint: &ConnectedPoint, swarm: &mut Swarm<Behaviour>) {
        if !endpoint.is_relayed() && self.unreserved.contains(&peer) {
            self.reserve(peer, swarm, Instant::now());
        }
    }

    /// A listener reported an address: a slot on a relay was won, so the wait resets.
    pub fn on_listen_addr(&mut self, listener: ListenerId) {
        if self.listeners.contains_key(&listener) {
            self.backoff = FIRST_RETRY;
        }
    }

    /// A listener closed: when it held (or was reserving) a slot on a given
    /// relay, that relay is tried again after the wait.
    pub fn on_listener_closed(&mut self, listener: ListenerId) {
        if let Some(peer) = self.listeners.remove(&listener) {
            self.unreserved.insert(peer);
            self.schedule(Instant::now());
        }
    }

    /// A dial failed: an unreserved relay is tried again after the wait (said
    /// once per try, however many dials to it failed).
    pub fn on_dial_failed(&mut self, peer: Option<PeerId>, error: &DialError) {
        let Some(peer) = peer.filter(|p| self.unreserved.contains(p)) else { return };
        if self.schedule(Instant::now()) {
            let relay = &self.addresses[&peer];
            warn!(%relay, %error, retry_in = ?self.backoff, "cannot reach the relay given by --relay; trying again");
        }
    }

    /// Once the wait is over: reserves on each unreserved relay already
    /// connected, and dials the others.
    pub fn retry_when_due(&mut self, swarm: &mut Swarm<Behaviour>) {
        let now = Instant::now();
        if self.retry_at.is_none_or(|at| now < at) {
            return;
        }
        self.retry_at = None;
        self.backoff = (self.backoff * 2).min(MAX_RETRY);
        for peer in self.unreserved.clone() {
            if swarm.is_connected(&peer) {
                self.reserve(peer, swarm, now);
                continue;
            }
            let address = self.addresses[&peer].clone();
            info!(relay = %address, "dialling the relay given by --relay again");
            let dial = DialOpts::peer_id(peer).addresses(vec![address]).build();
            if let Err(error) = swarm.dial(dial) {
                self.on_dial_failed(Some(peer), &error);
            }
        }
    }

    fn reserve(&mut self, peer: PeerId, swarm: &mut Swarm<Behaviour>, now: Instant) {
        let relay = &self.addresses[&peer];
        info!(%relay, "reserving a slot on the relay given by --relay");
        match swarm.listen_on(circuit_address(relay)) {
            Ok(listener) => {
                self.unreserved.remove(&peer);
                self.listeners.insert(listener, peer);
            }
            Err(error) => {
                warn!(%relay, %error, "cannot listen through the relay given by --relay");
                self.schedule(now);
            }
        }
    }

    /// Sets the next try unless one is set; whether it was not.
    fn schedule(&mut self, now: Instant) -> bool {
        let unset = self.retry_at.is_none();
        if unset {
            self.retry_at = Some(now + self.backoff);
        }
        unset
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn relay(seed: u8) -> (PeerId, Multiaddr) {
        let peer = crate::keypair(&ed25519_dalek::SigningKey::from_bytes(&[seed; 32])).public().to_peer_id();
        (peer, format!("/ip4/7.7.1.1/tcp/400{seed}").parse::<Multiaddr>().unwrap().with_p2p(peer).unwrap())
    }

    #[test]
    fn a_lost_slot_is_tried_again_after_the_wait_which_resets_when_a_slot_is_won() {
        let (peer, address) = relay(1);
        let mut relays = GivenRelays::new(&[address]);
        assert_eq!(relays.unreserved, BTreeSet::from([peer]), "every given relay starts unreserved");
        assert_eq!(relays.retry_at, None, "the first dial is FirstDials'");

        // Reserving: the listener is recorded and the relay is no longer unreserved.
        let listener = ListenerId::next();
        relays.unreserved.remove(&peer);
        relays.listeners.insert(listener, peer);

        let before = Instant::now();
        relays.on_listener_closed(listener);
        assert_eq!(relays.unreserved, BTreeSet::from([peer]));
        let at = relays.retry_at.expect("a lost slot is tried again");
        assert!(at >= before + FIRST_RETRY && at <= Instant::now() + FIRST_RETRY);
        relays.on_listener_closed(ListenerId::next());
        assert_eq!(relays.retry_at, Some(at), "another listener's closing changes nothing");

        relays.backoff = MAX_RETRY;
        let won = ListenerId::next();
        relays.listeners.insert(won, peer);
        relays.on_listen_addr(won);
        assert_eq!(relays.backoff, FIRST_RETRY, "a slot won resets the wait");
    }
}
