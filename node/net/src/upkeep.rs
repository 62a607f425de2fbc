//! Connection upkeep: whenever the node has fewer run peers than it aims for
//! (`--target-peers`), it dials its bootnodes and the run peers it has known
//! again, each after a wait that doubles with every failure, so a partition
//! or a restart heals without an operator.
//!
//! Modelled on reth's `PeersManager`: a bounded table of known peers
//! ([`MAX_KNOWN_PEERS`], each with at most [`MAX_ADDRESSES`] addresses
//! learnt from identify, Kademlia, mDNS or a dial), a backoff per peer, and
//! free slots refilled on the node's tick. [`Upkeep`] is a plain struct with
//! `now` passed in, so its rules are tested without a swarm; [`Upkeep::redial`]
//! is the only part that touches one.
//!
//! The first dials to the bootnodes are [`super::first_dials`]'s, and the
//! relays given by `--relay` are [`super::given_relays`]'s: this module leaves
//! those relays alone, and holds its own dials to bootnodes until the first
//! ones have had their chance.

use std::{
    collections::{BTreeMap, BTreeSet, VecDeque},
    time::{Duration, Instant},
};

use libp2p::{
    multiaddr::Protocol,
    swarm::{dial_opts::DialOpts, DialError},
    Multiaddr, PeerId, Swarm,
};
use tracing::{debug, info};

use super::{first_dials::LISTEN_GRACE, reach::relay_peer, Behaviour};

/// How many run peers a node keeps connected unless told otherwise.
pub const DEFAULT_TARGET_PEERS: usize = 8;
/// Most peers remembered. Bootnodes and connected peers are never evicted;
/// past the bound, a peer never seen in the run gives way first, then the one
/// that failed most, then the one heard of longest ago.
pub const MAX_KNOWN_PEERS: usize = 512;
/// Most addresses remembered per peer; the oldest gives way to a new one.
pub const MAX_ADDRESSES: usize = 8;
/// The wait before the first redial of a peer (and after a connection drops).
pub const FIRST_BACKOFF: Duration = Duration::from_secs(1);
/// The longest wait between dials of one peer, jitter included.
pub const MAX_BACKOFF: Duration = Duration::from_secs(60);
/// Dials of this module in flight at once.
pub const MAX_PENDING_DIALS: usize = 4;
/// A dial with no outcome after this long counts as failed (the TCP
/// handshakes time out after 20 s).
pub const DIAL_TIMEOUT: Duration = Duration::from_secs(30);
/// A connection that lasted this long was a success: the peer's failures reset.
pub const STABLE_CONNECTION: Duration = Duration::from_secs(30);
/// Failures in a row after which a peer that is not a bootnode is forgotten
/// (about ten minutes of tries with the waits above).
pub const FORGET_AFTER_FAILURES: u32 = 16;

/// What the node knows of one peer.
#[derive(Clone, Debug)]
struct Known {
    /// Newest last; bound: [`MAX_ADDRESSES`].
    addresses: VecDeque<Multiaddr>,
    bootnode: bool,
    /// Subscribed to the run's topic at some point.
    run_peer: bool,
    /// Since when a connection to it is open.
    connected_since: Option<Instant>,
    /// Failed dials (and connections that dropped early) since the last success.
    failures: u32,
    /// No dial before this.
    next_dial: Instant,
    /// A dial of ours is under way, until this.
    dialing_until: Option<Instant>,
    last_heard: Instant,
}

impl Known {
    fn new(now: Instant) -> Self {
        Self {
            addresses: VecDeque::new(),
            bootnode: false,
            run_peer: false,
            connected_since: None,
            failures: 0,
            next_dial: now,
            dialing_until: None,
            last_heard: now,
        }
    }

    fn add_address(&mut self, address: Multiaddr) {
        if self.addresses.contains(&address) {
            return;
        }
        if self.addresses.len() >= MAX_ADDRESSES {
            self.addresses.pop_front();
        }
        self.addresses.push_back(address);
    }

    fn dialable(&self, now: Instant) -> bool {
        (self.bootnode || self.run_peer)
            && self.connected_since.is_none()
            && self.dialing_until.is_none()
            && self.next_dial <= now
    }
}

/// The known peers, their backoffs, and the dials that keep the node at its target.
#[derive(Debug)]
pub struct Upkeep {
    target: usize,
    /// Keys the jitter, so that nodes (and peers) spread their redials apart
    /// while a given node's waits stay reproducible.
    jitter_key: [u8; 32],
    /// Bound: [`MAX_KNOWN_PEERS`] entries, bootnodes included.
    peers: BTreeMap<PeerId, Known>,
    /// Peers this module never dials (the `--relay` relays).
    excluded: BTreeSet<PeerId>,
}

impl Upkeep {
    /// Aims at `target` run peers. Bootnodes with a `/p2p/` id are remembered
    /// for good, first dialled by [`super::first_dials`]: this module waits
    /// for those dials before its own. `seed` keys the jitter (the node's peer id).
    pub fn new(
        target: usize,
        bootnodes: &[Multiaddr],
        excluded: impl IntoIterator<Item = PeerId>,
        seed: &[u8],
        now: Instant,
    ) -> Self {
        let mut upkeep = Self {
            target,
            jitter_key: blake3::derive_key("starling 2026-11 upkeep jitter", seed),
            peers: BTreeMap::new(),
            excluded: excluded.into_iter().collect(),
        };
        for address in bootnodes {
            let Some(peer) = relay_peer(address) else { continue };
            let known = upkeep.peers.entry(peer).or_insert_with(|| Known::new(now));
            known.bootnode = true;
            known.next_dial = now + LISTEN_GRACE + FIRST_BACKOFF;
            known.add_address(without_peer(address, &peer));
        }
        upkeep
    }

    /// Addresses of `peer` learnt from identify, Kademlia or mDNS.
    pub fn learn(&mut self, peer: PeerId, addresses: impl IntoIterator<Item = Multiaddr>, now: Instant) {
        let Some(known) = self.entry(peer, now) else { return };
        known.last_heard = now;
        for address in addresses {
            known.add_address(without_peer(&address, &peer));
        }
    }

    /// `peer` subscribed to the run: it is worth dialling again if it goes.
    pub fn on_run_peer(&mut self, peer: PeerId, now: Instant) {
        if let Some(known) = self.entry(peer, now) {
            known.run_peer = true;
            known.last_heard = now;
        }
    }

    /// A connection to `peer` is up; `dialled` is the address when this node dialled it.
    pub fn on_connected(&mut self, peer: PeerId, dialled: Option<&Multiaddr>, now: Instant) {
        let Some(known) = self.entry(peer, now) else { return };
        known.connected_since.get_or_insert(now);
        if known.dialing_until.take().is_some() {
            info!(%peer, failures = known.failures, "reconnected to a known peer");
        }
        known.last_heard = now;
        if let Some(address) = dialled {
            known.add_address(without_peer(address, &peer));
        }
    }

    /// The last connection to `peer` closed: it is dialled again after a
    /// wait. A connection that lasted was a success (failures reset); one
    /// that dropped soon after it opened counts as a failure.
    pub fn on_disconnected(&mut self, peer: PeerId, now: Instant) {
        let Some(known) = self.peers.get_mut(&peer) else { return };
        let Some(since) = known.connected_since.take() else { return };
        if now.saturating_duration_since(since) >= STABLE_CONNECTION {
            known.failures = 0;
        } else {
            known.failures = known.failures.saturating_add(1);
        }
        known.next_dial = now + backoff(&self.jitter_key, &peer, known.failures);
    }

    /// A dial to `peer` failed. Only this module's dials count: others (the
    /// DHT's, mDNS's) fail for reasons of their own.
    pub fn on_dial_failed(&mut self, peer: PeerId, now: Instant) {
        let Some(known) = self.peers.get_mut(&peer) else { return };
        if known.dialing_until.take().is_none() {
            return;
        }
        self.failed(peer, now);
    }

    /// Forgets `peer` (banned, or not allowed in a private run).
    pub fn forget(&mut self, peer: &PeerId) {
        self.peers.remove(peer);
    }

    /// The peers to dial now, with their addresses, each marked as being
    /// dialled: none while `run_peers` reaches the target, else the dialable
    /// ones that failed least (bootnodes first among equals), within the free
    /// slots. Dials that outlived [`DIAL_TIMEOUT`] count as failed first.
    pub fn due(&mut self, run_peers: usize, now: Instant) -> Vec<(PeerId, Vec<Multiaddr>)> {
        let timed_out: Vec<PeerId> = self
            .peers
            .iter()
            .filter(|(_, k)| k.dialing_until.is_some_and(|until| until <= now))
            .map(|(p, _)| *p)
            .collect();
        for peer in timed_out {
            self.peers.get_mut(&peer).expect("listed").dialing_until = None;
            self.failed(peer, now);
        }
        let pending = self.peers.values().filter(|k| k.dialing_until.is_some()).count();
        let wanted = self.target.saturating_sub(run_peers).min(MAX_PENDING_DIALS).saturating_sub(pending);
        if wanted == 0 {
            return Vec::new();
        }
        let mut candidates: Vec<(&PeerId, &Known)> =
            self.peers.iter().filter(|(p, k)| k.dialable(now) && !self.excluded.contains(p)).collect();
        candidates.sort_by_key(|(p, k)| (k.failures, !k.bootnode, **p));
        let chosen: Vec<(PeerId, Vec<Multiaddr>)> = candidates
            .into_iter()
            .take(wanted)
            .map(|(p, k)| (*p, k.addresses.iter().cloned().collect()))
            .collect();
        for (peer, _) in &chosen {
            self.peers.get_mut(peer).expect("chosen from the table").dialing_until = Some(now + DIAL_TIMEOUT);
        }
        chosen
    }

    /// Dials the peers [`Upkeep::due`] names (their known addresses, and any
    /// the behaviours know), never a peer connected or being dialled already.
    pub fn redial(&mut self, swarm: &mut Swarm<Behaviour>, run_peers: usize, now: Instant) {
        for (peer, addresses) in self.due(run_peers, now) {
            let failures = self.peers.get(&peer).map_or(0, |k| k.failures);
            info!(%peer, ?addresses, failures, run_peers, target = self.target, "dialling a known peer again");
            let dial =
                DialOpts::peer_id(peer).addresses(addresses).extend_addresses_through_behaviour().build();
            match swarm.dial(dial) {
                Ok(()) => {}
                // Connected or being dialled by someone else: look again later.
                Err(DialError::DialPeerConditionFalse(_)) => {
                    if let Some(known) = self.peers.get_mut(&peer) {
                        known.dialing_until = None;
                        known.next_dial = now + FIRST_BACKOFF;
                    }
                }
                Err(error) => {
                    debug!(%peer, %error, "cannot dial a known peer");
                    self.on_dial_failed(peer, now);
                }
            }
        }
    }

    /// How many peers are known.
    pub fn len(&self) -> usize {
        self.peers.len()
    }

    pub fn is_empty(&self) -> bool {
        self.peers.is_empty()
    }

    fn failed(&mut self, peer: PeerId, now: Instant) {
        let Some(known) = self.peers.get_mut(&peer) else { return };
        known.failures = known.failures.saturating_add(1);
        if !known.bootnode && known.failures >= FORGET_AFTER_FAILURES {
            debug!(%peer, failures = known.failures, "forgetting a peer that cannot be reached");
            self.peers.remove(&peer);
            return;
        }
        known.next_dial = now + backoff(&self.jitter_key, &peer, known.failures);
    }

    /// The entry of `peer`, made room for when new; `None` when the table is
    /// full of peers that may not be evicted.
    fn entry(&mut self, peer: PeerId, now: Instant) -> Option<&mut Known> {
        if !self.peers.contains_key(&peer) {
            if self.peers.len() >= MAX_KNOWN_PEERS {
                let evict = self
                    .peers
                    .iter()
                    .filter(|(_, k)| !k.bootnode && k.connected_since.is_none() && k.dialing_until.is_none())
                    .min_by_key(|(p, k)| (k.run_peer, std::cmp::Reverse(k.failures), k.last_heard, **p))
                    .map(|(p, _)| *p)?;
                self.peers.remove(&evict);
            }
            self.peers.insert(peer, Known::new(now));
        }
        self.peers.get_mut(&peer)
    }
}

/// The wait after `failures` failures in a row: [`FIRST_BACKOFF`] doubled per
/// failure past the first, capped at [`MAX_BACKOFF`], of which the upper half
/// is jitter drawn from the key, the peer and the count.
pub fn backoff(key: &[u8; 32], peer: &PeerId, failures: u32) -> Duration {
    let doublings = failures.saturating_sub(1).min(16);
    let base = FIRST_BACKOFF.saturating_mul(1 << doublings).min(MAX_BACKOFF);
    let mut input = peer.to_bytes();
    input.extend_from_slice(&failures.to_le_bytes());
    let draw = blake3::keyed_hash(key, &input);
    let fraction =
        u64::from_le_bytes(draw.as_bytes()[..8].try_into().expect("8 bytes")) as f64 / u64::MAX as f64;
    base / 2 + (base / 2).mul_f64(fraction)
}

/// `address` without a trailing `/p2p/PEER` of `peer` (the dial adds it).
fn without_peer(address: &Multiaddr, peer: &PeerId) -> Multiaddr {
    let mut address = address.clone();
    if matches!(address.iter().last(), Some(Protocol::P2p(p)) if p == *peer) {
        address.pop();
    }
    address
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(seed: u8) -> PeerId {
        crate::keypair(&ed25519_dalek::SigningKey::from_bytes(&[seed; 32])).public().to_peer_id()
    }

    fn ma(s: &str) -> Multiaddr {
        s.parse().unwrap()
    }

    /// The `n`th of many distinct peers, the same in every run.
    fn nth_peer(n: u32) -> PeerId {
        let mut secret = [0x5a; 32];
        secret[..4].copy_from_slice(&n.to_le_bytes());
        crate::keypair(&ed25519_dalek::SigningKey::from_bytes(&secret)).public().to_peer_id()
    }

    fn run_peer(upkeep: &mut Upkeep, seed: u8, now: Instant) -> PeerId {
        let p = peer(seed);
        upkeep.learn(p, [ma(&format!("/ip4/10.0.0.{seed}/tcp/9000"))], now);
        upkeep.on_run_peer(p, now);
        p
    }

    #[test]
    fn backoff_doubles_within_its_jitter_and_is_capped() {
        let key = [9; 32];
        let p = peer(1);
        let mut previous_base = Duration::ZERO;
        for failures in 1..=12 {
            let base = FIRST_BACKOFF.saturating_mul(1 << (failures - 1)).min(MAX_BACKOFF);
            let wait = backoff(&key, &p, failures);
            assert!(
                wait >= base / 2 && wait <= base,
                "{failures}: {wait:?} outside [{:?}, {base:?}]",
                base / 2
            );
            assert!(base >= previous_base);
            previous_base = base;
        }
        assert!(backoff(&key, &p, u32::MAX) <= MAX_BACKOFF);
        assert_eq!(backoff(&key, &p, 5), backoff(&key, &p, 5), "the same key draws the same jitter");
        let spread: BTreeSet<Duration> = (1..=20).map(|s| backoff(&key, &peer(s), 7)).collect();
        assert!(spread.len() > 15, "peers are spread apart: {spread:?}");
    }

    #[test]
    fn a_lost_run_peer_is_redialled_after_a_growing_wait_while_below_the_target() {
        let t0 = Instant::now();
        let mut upkeep = Upkeep::new(2, &[], [], b"me", t0);
        let p = run_peer(&mut upkeep, 1, t0);
        upkeep.on_connected(p, None, t0);
        assert!(upkeep.due(0, t0).is_empty(), "a connected peer is not dialled");
        upkeep.on_disconnected(p, t0 + Duration::from_secs(1));
        let t1 = t0 + Duration::from_secs(1);
        let first_wait = upkeep.peers[&p].next_dial - t1;
        assert!(first_wait <= FIRST_BACKOFF, "{first_wait:?}");
        assert!(upkeep.due(0, t1).is_empty(), "not before the wait");
        let t2 = t1 + FIRST_BACKOFF;
        let dials = upkeep.due(0, t2);
        assert_eq!(dials, vec![(p, vec![ma("/ip4/10.0.0.1/tcp/9000")])]);
        assert!(upkeep.due(0, t2).is_empty(), "a peer being dialled is not dialled twice");

        // Each failure doubles the wait.
        let mut now = t2;
        let mut waits = Vec::new();
        for _ in 0..6 {
            upkeep.on_dial_failed(p, now);
            let next = upkeep.peers[&p].next_dial;
            waits.push(next - now);
            now = next;
            assert_eq!(upkeep.due(0, now).len(), 1);
        }
        for (i, wait) in waits.iter().enumerate() {
            let base = FIRST_BACKOFF.saturating_mul(1 << (i + 1)).min(MAX_BACKOFF);
            assert!(*wait >= base / 2 && *wait <= base, "failure {}: {waits:?}", i + 2);
        }
        assert!(waits[5] >= MAX_BACKOFF / 2, "capped, not past: {waits:?}");

        // Enough run peers: nothing is dialled, however long it has been.
        upkeep.on_dial_failed(p, now);
        assert!(upkeep.due(2, now + MAX_BACKOFF).is_empty());
    }

    #[test]
    fn a_connection_that_lasts_resets_the_backoff_and_one_that_drops_at_once_counts_as_a_failure() {
        let t0 = Instant::now();
        let mut upkeep = Upkeep::new(8, &[], [], b"me", t0);
        let p = run_peer(&mut upkeep, 1, t0);
        for _ in 0..5 {
            upkeep.due(0, upkeep.peers[&p].next_dial);
            upkeep.on_dial_failed(p, upkeep.peers[&p].next_dial);
        }
        assert_eq!(upkeep.peers[&p].failures, 5);
        let t1 = upkeep.peers[&p].next_dial;
        upkeep.on_connected(p, None, t1);
        upkeep.on_disconnected(p, t1 + Duration::from_secs(2));
        assert_eq!(upkeep.peers[&p].failures, 6, "a connection that dropped at once is no success");
        let t2 = upkeep.peers[&p].next_dial;
        upkeep.on_connected(p, None, t2);
        upkeep.on_disconnected(p, t2 + STABLE_CONNECTION);
        assert_eq!(upkeep.peers[&p].failures, 0);
        assert!(upkeep.peers[&p].next_dial <= t2 + STABLE_CONNECTION + FIRST_BACKOFF);
    }

    #[test]
    fn peers_that_never_answer_are_forgotten_but_bootnodes_are_not() {
        let t0 = Instant::now();
        let boot = peer(7);
        let boot_address = ma("/ip4/10.0.0.7/tcp/9000").with_p2p(boot).unwrap();
        let mut upkeep = Upkeep::new(8, &[boot_address], [], b"me", t0);
        assert!(upkeep.due(0, t0).is_empty(), "the first dial to a bootnode is first_dials'");
        let p = run_peer(&mut upkeep, 1, t0);
        let mut now = t0 + LISTEN_GRACE + FIRST_BACKOFF;
        for _ in 0..FORGET_AFTER_FAILURES {
            let dials = upkeep.due(0, now);
            assert!(dials.iter().any(|(d, a)| *d == boot && a == &[ma("/ip4/10.0.0.7/tcp/9000")]));
            for (d, _) in dials {
                upkeep.on_dial_failed(d, now);
            }
            now += MAX_BACKOFF;
        }
        assert!(!upkeep.peers.contains_key(&p), "forgotten");
        assert!(upkeep.peers.contains_key(&boot), "a bootnode is tried forever, at the longest wait");
    }

    #[test]
    fn dials_fill_the_free_slots_only_and_time_out() {
        let t0 = Instant::now();
        let relay = peer(99);
        let mut upkeep = Upkeep::new(3, &[], [relay], b"me", t0);
        let peers: Vec<PeerId> = (1..=6).map(|s| run_peer(&mut upkeep, s, t0)).collect();
        upkeep.on_run_peer(relay, t0);
        let first = upkeep.due(1, t0);
        assert_eq!(first.len(), 2, "two slots free");
        assert_eq!(upkeep.due(1, t0).len(), 0, "both taken by dials in flight");
        let third = upkeep.due(0, t0);
        assert_eq!(third.len(), 1, "one more when a peer leaves");
        let later = t0 + DIAL_TIMEOUT;
        let again = upkeep.due(0, later);
        assert_eq!(again.len(), 3, "timed-out dials free their slots");
        assert!(again.iter().all(|(p, _)| peers.contains(p)), "the excluded relay is never dialled");
        for (p, _) in first.iter().chain(&third) {
            assert_eq!(upkeep.peers[p].failures, 1, "a timed-out dial is a failure");
            assert!(!again.iter().any(|(d, _)| d == p), "and waits its backoff");
        }
        let at_target = Upkeep::new(0, &[], [], b"me", t0).due(0, t0);
        assert!(at_target.is_empty());
    }

    #[test]
    fn the_table_is_bounded_and_evicts_strangers_before_run_peers() {
        let t0 = Instant::now();
        let boot = peer(200);
        let mut upkeep =
            Upkeep::new(8, &[ma("/ip4/10.0.0.200/tcp/1").with_p2p(boot).unwrap()], [], b"me", t0);
        let run: Vec<PeerId> = (0..10u8).map(|s| run_peer(&mut upkeep, s, t0)).collect();
        let mut now = t0;
        let mut strangers = 0u32;
        while upkeep.len() < MAX_KNOWN_PEERS {
            now += Duration::from_millis(1);
            upkeep.learn(nth_peer(strangers), [ma("/ip4/10.1.0.1/tcp/1")], now);
            strangers += 1;
        }
        let oldest_stranger = *upkeep
            .peers
            .iter()
            .filter(|(_, k)| !k.run_peer && !k.bootnode)
            .min_by_key(|(_, k)| k.last_heard)
            .unwrap()
            .0;
        for n in 0..100 {
            now += Duration::from_millis(1);
            upkeep.learn(nth_peer(10_000 + n), [ma("/ip4/10.1.0.2/tcp/1")], now);
        }
        assert_eq!(upkeep.len(), MAX_KNOWN_PEERS, "after {strangers} strangers and 100 more");
        assert!(!upkeep.peers.contains_key(&oldest_stranger), "the stranger heard of longest ago went first");
        assert!(run.iter().all(|p| upkeep.peers.contains_key(p)), "run peers outlast strangers");
        assert!(upkeep.peers.contains_key(&boot));

        // A table of bootnodes and connected peers only turns newcomers away.
        let mut full = Upkeep::new(8, &[], [], b"me", t0);
        for n in 0..MAX_KNOWN_PEERS as u32 {
            full.on_connected(nth_peer(n), None, t0);
        }
        let newcomer = nth_peer(20_000);
        full.learn(newcomer, [ma("/ip4/10.1.0.3/tcp/1")], t0);
        assert_eq!(full.len(), MAX_KNOWN_PEERS);
        assert!(!full.peers.contains_key(&newcomer));
    }

    #[test]
    fn addresses_per_peer_are_bounded_and_kept_without_the_peer_id() {
        let t0 = Instant::now();
        let mut upkeep = Upkeep::new(8, &[], [], b"me", t0);
        let p = peer(1);
        for i in 0..(MAX_ADDRESSES as u16 + 3) {
            upkeep.learn(p, [ma(&format!("/ip4/10.0.0.1/tcp/{i}")).with_p2p(p).unwrap()], t0);
        }
        upkeep.learn(p, [ma("/ip4/10.0.0.1/tcp/3")], t0);
        let addresses = &upkeep.peers[&p].addresses;
        assert_eq!(addresses.len(), MAX_ADDRESSES);
        assert_eq!(addresses.front(), Some(&ma("/ip4/10.0.0.1/tcp/3")), "the oldest gave way");
        assert!(addresses.iter().all(|a| !matches!(a.iter().last(), Some(Protocol::P2p(_)))));
        upkeep.forget(&p);
        assert!(upkeep.is_empty());
    }
}
