//! Per-peer rate limits on the state sync requests a node answers.
//!
//! Answering an offer request builds (or looks up) a snapshot of the node's
//! state and encodes it with the round's deltas; answering a chunk request
//! copies a chunk of up to 1 MiB out. Both are cheap for a peer to ask and
//! dear to answer, so each peer gets a token bucket per kind of request (a
//! GCRA, as Lighthouse's `rpc/rate_limiter.rs`): a burst of `capacity`
//! requests, then one every `period / capacity`. A request over the limit is
//! answered `Unavailable` at once, without touching the engine or the state.
//!
//! The buckets live in a map bounded by [`MAX_TRACKED_PEERS`]; a bucket that
//! has refilled is the same as a fresh one and is dropped by [`RateLimiter::prune`],
//! and when the map is full the fullest bucket gives way (forgetting it
//! gives its peer the least it did not already have).

use std::{
    collections::HashMap,
    hash::Hash,
    time::{Duration, Instant},
};

use libp2p::PeerId;
use starling_protocol::wire::SyncRequest;

/// Most peers whose buckets are held at once (per kind of request).
pub const MAX_TRACKED_PEERS: usize = 1024;

/// A token bucket's shape: `capacity` requests at once, refilled in full every `period`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Quota {
    pub capacity: u32,
    pub period: Duration,
}

impl Quota {
    /// The time one token takes to come back.
    fn interval(&self) -> Duration {
        self.period / self.capacity.max(1)
    }
}

/// Offers: a syncing node asks each peer once per try, and tries again at
/// most every half second while no state has a majority (the engine's
/// `sync_retry_ms`, plus the wait for offers): 2 a second, 10 at once, keeps
/// an honest node clear of the limit.
pub const OFFER_QUOTA: Quota = Quota { capacity: 10, period: Duration::from_secs(5) };

/// Chunks: a fetching node keeps 4 chunk requests in flight per peer, so
/// honest fetches run at the speed of the link; 256 chunks (256 MiB) at once
/// and 64 MiB a second after that are more than one peer's share of any
/// state fetch up to 128 MiB, and bound what one peer can make this node
/// upload. Larger states get [`chunk_quota`].
pub const CHUNK_QUOTA: Quota = Quota { capacity: 256, period: Duration::from_secs(4) };

/// The chunk quota for a run whose state takes up to `max_state_bytes`: at
/// once, two whole states (a fetch and one retry, even from this peer
/// alone: a lone honest joiner fetches at the speed of the link), and the
/// same 64 chunks a second as [`CHUNK_QUOTA`] after that. Measured: with the
/// fixed 256 a 10⁸-parameter joiner (767 chunks) was cut off four times in
/// one fetch from one peer.
pub fn chunk_quota(max_state_bytes: usize) -> Quota {
    let chunks = max_state_bytes.div_ceil(starling_protocol::chunks::CHUNK_BYTES) as u32;
    let capacity = CHUNK_QUOTA.capacity.max(chunks.saturating_mul(2));
    Quota { capacity, period: CHUNK_QUOTA.period * capacity / CHUNK_QUOTA.capacity }
}

/// Why a request was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limited {
    /// When the peer may ask again.
    pub retry_in: Duration,
}

/// The buckets of one kind of request, one per key, within a bound.
#[derive(Debug)]
pub struct Buckets<K> {
    quota: Quota,
    max_keys: usize,
    /// Each key's theoretical arrival time: the bucket is full once it is
    /// past, and holds `(now + period - tat) / interval` tokens before.
    /// Bound: `max_keys` entries.
    tat: HashMap<K, Instant>,
}

impl<K: Hash + Eq + Clone + Ord> Buckets<K> {
    pub fn new(quota: Quota, max_keys: usize) -> Self {
        Self { quota, max_keys: max_keys.max(1), tat: HashMap::new() }
    }

    /// Takes one token of `key`'s bucket, or says how long until there is one.
    pub fn take(&mut self, key: &K, now: Instant) -> Result<(), Limited> {
        let interval = self.quota.interval();
        let tat = match self.tat.get(key) {
            Some(&tat) => tat.max(now),
            None => {
                if self.tat.len() >= self.max_keys {
                    self.evict_fullest(now);
                }
                now
            }
        };
        let next = tat + interval;
        // The bucket would be over its capacity: `next` lies more than a full
        // refill ahead of now.
        if next > now + self.quota.period {
            return Err(Limited { retry_in: next - (now + self.quota.period) });
        }
        self.tat.insert(key.clone(), next);
        Ok(())
    }

    /// Drops the buckets that have refilled: they are the same as none.
    pub fn prune(&mut self, now: Instant) {
        self.tat.retain(|_, tat| *tat > now);
    }

    /// How many keys are tracked.
    pub fn len(&self) -> usize {
        self.tat.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tat.is_empty()
    }

    /// Makes room for one key: a refilled bucket if any, else the fullest
    /// (earliest arrival time; ties broken by key, so eviction is deterministic).
    fn evict_fullest(&mut self, now: Instant) {
        self.prune(now);
        if self.tat.len() < self.max_keys {
            return;
        }
        if let Some(key) =
            self.tat.iter().min_by(|a, b| a.1.cmp(b.1).then(a.0.cmp(b.0))).map(|(k, _)| k.clone())
        {
            self.tat.remove(&key);
        }
    }
}

/// The sync requests this node answers, limited per peer.
#[derive(Debug)]
pub struct RateLimiter {
    offers: Buckets<PeerId>,
    chunks: Buckets<PeerId>,
}

impl Default for RateLimiter {
    fn default() -> Self {
        Self::new(OFFER_QUOTA, CHUNK_QUOTA, MAX_TRACKED_PEERS)
    }
}

impl RateLimiter {
    /// The default quotas, with chunks sized to the run's largest state ([`chunk_quota`]).
    pub fn for_state(max_state_bytes: usize) -> Self {
        Self::new(OFFER_QUOTA, chunk_quota(max_state_bytes), MAX_TRACKED_PEERS)
    }

    pub fn new(offers: Quota, chunks: Quota, max_peers: usize) -> Self {
        Self { offers: Buckets::new(offers, max_peers), chunks: Buckets::new(chunks, max_peers) }
    }

    /// Whether `peer` may be answered `request` now; the kind of request (a
    /// metric label) when it may not. Joining notices are not limited: they
    /// cost a map update, and refusing one would make the peer's deltas unexpected.
    pub fn check(
        &mut self,
        peer: &PeerId,
        request: &SyncRequest,
        now: Instant,
    ) -> Result<(), (&'static str, Limited)> {
        match request {
            SyncRequest::Offer => self.offers.take(peer, now).map_err(|l| ("offer", l)),
            SyncRequest::Chunk { .. } => self.chunks.take(peer, now).map_err(|l| ("chunk", l)),
            SyncRequest::Joining { .. } => Ok(()),
        }
    }

    /// Drops refilled buckets (called on the node's tick).
    pub fn prune(&mut self, now: Instant) {
        self.offers.prune(now);
        self.chunks.prune(now);
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_large_state_may_be_fetched_whole_twice_at_the_same_steady_rate() {
        let small = chunk_quota(8 << 20);
        assert_eq!(small, CHUNK_QUOTA);
        let big = chunk_quota(800 << 20);
        assert_eq!(big.capacity, 1600);
        assert_eq!(big.period, Duration::from_secs(25));
        let rate = |q: Quota| q.capacity as f64 / q.period.as_secs_f64();
        assert_eq!(rate(big), rate(CHUNK_QUOTA));
    }

    use super::*;

    const QUOTA: Quota = Quota { capacity: 4, period: Duration::from_secs(4) };

    #[test]
    fn a_burst_of_capacity_passes_then_one_per_interval() {
        let mut buckets = Buckets::new(QUOTA, 8);
        let t0 = Instant::now();
        for _ in 0..4 {
            buckets.take(&1u32, t0).expect("within the burst");
        }
        let limited = buckets.take(&1, t0).expect_err("over the burst");
        assert_eq!(limited.retry_in, Duration::from_secs(1));
        assert!(buckets.take(&1, t0 + Duration::from_millis(999)).is_err());
        buckets.take(&1, t0 + Duration::from_secs(1)).expect("one token back after an interval");
        assert!(buckets.take(&1, t0 + Duration::from_secs(1)).is_err());
        // Another peer has a bucket of its own.
        buckets.take(&2, t0 + Duration::from_secs(1)).expect("a fresh bucket");
        // After a full period the bucket is full again.
        let later = t0 + Duration::from_secs(6);
        for _ in 0..4 {
            buckets.take(&1, later).expect("refilled");
        }
        assert!(buckets.take(&1, later).is_err());
    }

    #[test]
    fn refused_requests_take_no_token() {
        let mut buckets = Buckets::new(QUOTA, 8);
        let t0 = Instant::now();
        for _ in 0..4 {
            buckets.take(&1u32, t0).unwrap();
        }
        for _ in 0..100 {
            assert!(buckets.take(&1, t0).is_err());
        }
        buckets
            .take(&1, t0 + Duration::from_secs(1))
            .expect("a flood of refusals does not push the refill back");
    }

    #[test]
    fn refilled_buckets_are_pruned_and_a_full_map_evicts_the_fullest() {
        let mut buckets = Buckets::new(QUOTA, 3);
        let t0 = Instant::now();
        let t1 = t0 + Duration::from_secs(1);
        for (key, at, takes) in [(1u32, t0, 2), (2, t1, 2), (3, t1, 3)] {
            for _ in 0..takes {
                buckets.take(&key, at).unwrap();
            }
        }
        assert_eq!(buckets.len(), 3);
        // None has refilled yet; key 1's bucket is the fullest (two tokens
        // taken longest ago), so it gives way to the newcomer.
        buckets.take(&4, t1).unwrap();
        assert_eq!(buckets.len(), 3);
        assert!(!buckets.tat.contains_key(&1), "{:?}", buckets.tat);
        assert!(buckets.tat.contains_key(&2) && buckets.tat.contains_key(&4));
        // A bucket that has refilled is pruned before any is evicted.
        buckets.take(&5, t0 + Duration::from_millis(2500)).unwrap();
        assert!(!buckets.tat.contains_key(&4) && buckets.tat.contains_key(&2));
        // Once every bucket has refilled, pruning forgets them all.
        buckets.prune(t0 + Duration::from_secs(10));
        assert!(buckets.is_empty());
    }

    #[test]
    fn offers_and_chunks_are_limited_apart_and_joining_notices_never() {
        let mut limiter = RateLimiter::new(
            Quota { capacity: 1, period: Duration::from_secs(1) },
            Quota { capacity: 2, period: Duration::from_secs(1) },
            4,
        );
        let peer = crate::keypair(&ed25519_dalek::SigningKey::from_bytes(&[1; 32])).public().to_peer_id();
        let t0 = Instant::now();
        let chunk = SyncRequest::Chunk { root: [0; 32], index: 0 };
        limiter.check(&peer, &SyncRequest::Offer, t0).unwrap();
        assert_eq!(limiter.check(&peer, &SyncRequest::Offer, t0).unwrap_err().0, "offer");
        limiter.check(&peer, &chunk, t0).unwrap();
        limiter.check(&peer, &chunk, t0).unwrap();
        assert_eq!(limiter.check(&peer, &chunk, t0).unwrap_err().0, "chunk");
        for _ in 0..10 {
            limiter.check(&peer, &SyncRequest::Joining { from: 3 }, t0).unwrap();
        }
    }
}
