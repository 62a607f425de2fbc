//! Lineage evidence: which lineage the node's peers train from, late deltas
//! included, against the lineage the node itself held in the same round.
//!
//! A round's close compares the bases of the deltas it merges (see
//! [`crate::round`]); that misses a node that runs ahead of most of its peers,
//! as the faster side of a partition does once it heals: their deltas reach it
//! only after it has left their rounds, as stale ones, and it never merges a
//! round with them. Here every delta a connected peer sends counts, late or
//! not: the base of its latest delta is kept, and compared with the node's own
//! lineage at that delta's round. When more than half of the node and its
//! connected peers train from lineages other than its own, and one of those
//! lineages has more of them than its own has, it has drifted, whichever side
//! is ahead, and it repairs itself by state sync. (Right after a heal, nodes
//! that merged different sets hold many lineages, none a majority: only those
//! off the largest one sync, not every node.)
//!
//! A key counts once, and only while connected, so a peer flooding deltas of
//! many rounds weighs what any peer weighs; colluders fewer than half of a
//! node's peers cannot make it sync (and a sync installs a state older than
//! the node's only on the word of a strict majority of the peers reached).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use crate::delta::SignedDelta;
use crate::keys::PublicKey;

use super::{Engine, Note, Output, Phase, SyncReason};

/// For how many rounds before the current one the node's own lineage is
/// remembered (32 bytes a round): a peer's delta older than that is not
/// compared. A side of a partition whose rounds close quickly (few nodes,
/// none waiting for the other side) can run tens of rounds ahead before the
/// heal; it must still see the other side's deltas as evidence.
pub const LINEAGE_ROUNDS: u64 = 256;

/// The node's own lineage by round, and the base of each connected peer's latest delta.
#[derive(Debug, Default)]
pub(super) struct Lineages {
    /// Our lineage at the start of each recent round. Bound: `LINEAGE_ROUNDS + 1` rounds.
    /// Shared with [`Lineages::differs_from`]'s check, which the engine builds
    /// on every timer and sync response: a merge copies the map only while
    /// such a check is alive, which it never is by then.
    own: Arc<BTreeMap<u64, [u8; 32]>>,
    /// The round and base of each connected peer's latest delta. Bound: the
    /// engine's connected peers (a peer is forgotten when it leaves).
    latest: BTreeMap<PublicKey, (u64, [u8; 32])>,
}

impl Lineages {
    pub(super) fn new(round: u64, lineage: [u8; 32]) -> Self {
        Self { own: Arc::new(BTreeMap::from([(round, lineage)])), latest: BTreeMap::new() }
    }

    /// Our state reached `round` with `lineage` by a merge.
    pub(super) fn merged(&mut self, round: u64, lineage: [u8; 32]) {
        let own = Arc::make_mut(&mut self.own);
        own.insert(round, lineage);
        let horizon = round.saturating_sub(LINEAGE_ROUNDS);
        own.retain(|r, _| *r >= horizon);
    }

    /// We installed a state of `round` with `lineage`: our history before it
    /// is of a lineage we left, and compares with nothing any more.
    pub(super) fn installed(&mut self, round: u64, lineage: [u8; 32]) {
        self.own = Arc::new(BTreeMap::from([(round, lineage)]));
    }

    /// Our lineage at the start of `round`, if we held that round.
    pub(super) fn at(&self, round: u64) -> Option<[u8; 32]> {
        self.own.get(&round).copied()
    }

    /// Whether a state of a round and lineage is not ours: compared with our
    /// lineage in that round if we held it, else with our latest one.
    pub(super) fn differs_from(&self) -> impl Fn(u64, [u8; 32]) -> bool {
        let own = Arc::clone(&self.own);
        let latest = own.last_key_value().map(|(_, l)| *l);
        move |round, lineage| own.get(&round).copied().or(latest) != Some(lineage)
    }

    /// A connected peer sent a delta of `round` trained from `base`. Returns
    /// whether that base differs from our own lineage in that round (a
    /// round we did not hold, ahead of us or long past, compares with nothing).
    pub(super) fn saw(&mut self, peer: PublicKey, round: u64, base: [u8; 32]) -> bool {
        match self.latest.get(&peer) {
            Some(&(seen, _)) if seen > round => {}
            _ => {
                self.latest.insert(peer, (round, base));
            }
        }
        self.own.get(&round).is_some_and(|own| *own != base)
    }

    /// A peer left: its deltas no longer count.
    pub(super) fn left(&mut self, peer: &PublicKey) {
        self.latest.remove(peer);
    }

    /// How many of `peers` last sent a delta trained from a lineage other
    /// than ours in its round.
    pub(super) fn elsewhere(&self, peers: &BTreeSet<PublicKey>) -> usize {
        peers
            .iter()
            .filter_map(|p| self.latest.get(p))
            .filter(|(round, base)| self.own.get(round).is_some_and(|own| own != base))
            .count()
    }

    /// Whether more than half of us and `peers` train from lineages other
    /// than ours, and one of them (a base in a round) has more of us and
    /// `peers` than ours has.
    pub(super) fn outnumbered(&self, peers: &BTreeSet<PublicKey>) -> bool {
        let mut ours = 1;
        let mut others: BTreeMap<(u64, [u8; 32]), usize> = BTreeMap::new();
        for (round, base) in peers.iter().filter_map(|p| self.latest.get(p)) {
            match self.own.get(round) {
                Some(own) if own == base => ours += 1,
                Some(_) => *others.entry((*round, *base)).or_default() += 1,
                None => {}
            }
        }
        let elsewhere: usize = others.values().sum();
        2 * elsewhere > peers.len() + 1 && others.values().any(|&n| n > ours)
    }
}

impl Engine {
    /// A closing round merges only the deltas trained from our own lineage in
    /// it. A delta of another lineage (a peer across a healed partition,
    /// whose delta of this round gossip brought late) merged or not would
    /// hang on when it happened to arrive: the nodes of one lineage would
    /// merge different sets and split it. It stays evidence: the round's
    /// agreement check and [`Lineages`] saw it. Rotating groups train from
    /// different states by design and merge what their group sent; a round we
    /// hold no lineage for (its state still being merged) keeps every delta.
    pub(super) fn keep_own_lineage(&mut self, round: u64, deltas: &mut Vec<SignedDelta>) {
        let Some(own) = self.lineages.at(round).filter(|_| !self.grouped) else {
            return;
        };
        let before = deltas.len();
        deltas.retain(|d| d.header.base == own);
        if deltas.len() < before {
            self.out.push(Output::Note(Note::OtherLineage { round, left_out: before - deltas.len() }));
        }
    }

    /// A connected peer's delta of `round` was trained from `base`: if that is
    /// not our lineage in its round and we are now [`Lineages::outnumbered`],
    /// we have drifted, though no round we merged may show it (we ran ahead of
    /// them): sync, at most once per `sync_retry_ms`.
    pub(super) fn weigh_lineage(&mut self, now: u64, sender: PublicKey, round: u64, base: [u8; 32]) {
        if self.rounds.is_banned(&sender) {
            // Caught equivocating (perhaps by this very delta): it counts no more.
            self.lineages.left(&sender);
            return;
        }
        if self.grouped || !self.peers.contains(&sender) || !self.lineages.saw(sender, round, base) {
            return;
        }
        if self.phase != Phase::Running
            || !self.fetch.is_idle()
            || self.outnumbered_at.is_some_and(|at| now.saturating_sub(at) < self.config.sync_retry_ms)
            || !self.lineages.outnumbered(&self.peers)
        {
            return;
        }
        self.outnumbered_at = Some(now);
        self.out.push(Output::Note(Note::Outnumbered {
            round: self.round,
            elsewhere: self.lineages.elsewhere(&self.peers),
            peers: self.peers.len(),
        }));
        self.start_sync(now, SyncReason::Diverged);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ed25519_dalek::SigningKey;

    fn pk(i: u8) -> PublicKey {
        PublicKey::of(&SigningKey::from_bytes(&[i; 32]))
    }

    #[test]
    fn a_state_one_merge_behind_ours_on_our_lineage_is_not_another_lineage() {
        let (a, b, c) = ([1; 32], [2; 32], [3; 32]);
        let mut l = Lineages::new(10, a);
        l.merged(11, b);
        let differs = l.differs_from();
        // A peer that has not merged round 10 yet holds what we held then.
        assert!(!differs(10, a));
        assert!(differs(10, c), "round 10 of another lineage");
        assert!(!differs(11, b) && differs(11, a));
        // A round we never held compares with our latest lineage.
        assert!(!differs(4, b) && differs(4, a));
    }

    #[test]
    fn late_deltas_of_another_lineage_from_most_peers_outnumber_us() {
        let (ours, theirs) = ([1; 32], [2; 32]);
        let mut l = Lineages::new(10, ours);
        l.merged(11, [3; 32]);
        let peers: BTreeSet<PublicKey> = (2..6).map(pk).collect();
        // Two of four peers on another lineage in round 10: with us, not more than half.
        assert!(l.saw(pk(2), 10, theirs));
        assert!(l.saw(pk(3), 10, theirs));
        assert!(!l.outnumbered(&peers));
        // A delta of a round we never held compares with nothing.
        assert!(!l.saw(pk(4), 40, theirs));
        assert!(!l.outnumbered(&peers));
        // A third one, late: three of five.
        assert!(l.saw(pk(5), 10, theirs));
        assert!(l.outnumbered(&peers));
        // Three of five elsewhere, but on three lineages, none larger than
        // ours (us alone): no lineage to go to.
        let mut split = Lineages::new(10, ours);
        for (i, base) in [(2, [4; 32]), (3, [5; 32]), (4, [6; 32])] {
            split.saw(pk(i), 10, base);
        }
        assert!(!split.outnumbered(&peers));
        // The latest delta of each peer counts: one back on our lineage.
        assert!(!l.saw(pk(5), 11, [3; 32]));
        assert_eq!(l.elsewhere(&peers), 2);
        // A peer that left counts no more.
        l.left(&pk(2));
        assert_eq!(l.elsewhere(&peers), 1);
        // After an install, only the installed round compares: node 5's
        // delta of round 11 is now of a lineage other than ours.
        l.installed(11, theirs);
        assert_eq!(l.elsewhere(&peers), 1);
    }
}
