//! Accepted gossip held back a moment before gossipsub may forward it.
//!
//! Peers that got a delta at the same time as this node tell it so within a
//! few milliseconds (gossipsub's IDONTWANT, sent on receipt), and gossipsub
//! skips them when it forwards; without the hold, every node of a small mesh
//! forwards every delta to every other node that already has it. The hold is
//! one queue in arrival order (every message waits the same time, so the
//! front is always the first due) and one timer in the event loop, not a task
//! per message; past [`MAX_HELD`] messages the oldest is let go early, which
//! costs a duplicate or two and never a message.

use std::{
    collections::VecDeque,
    time::{Duration, Instant},
};

use libp2p::{gossipsub::MessageId, PeerId};

/// Most messages held at once: far more than the valid deltas of a few
/// rounds of a large swarm arriving within one hold.
pub const MAX_HELD: usize = 4096;

/// Messages accepted and not yet handed back to gossipsub.
#[derive(Debug)]
pub struct ForwardHold {
    hold: Duration,
    max: usize,
    /// When each may go, the message and the peer it came from; bound: `max`.
    queue: VecDeque<(Instant, MessageId, PeerId)>,
}

impl ForwardHold {
    pub fn new(hold: Duration, max: usize) -> Self {
        Self { hold, max: max.max(1), queue: VecDeque::new() }
    }

    /// Holds `id` from `source`; returns a message to forward at once when
    /// the queue was full (the oldest).
    pub fn hold(&mut self, id: MessageId, source: PeerId, now: Instant) -> Option<(MessageId, PeerId)> {
        let early = (self.queue.len() >= self.max).then(|| self.queue.pop_front()).flatten();
        self.queue.push_back((now + self.hold, id, source));
        early.map(|(_, id, source)| (id, source))
    }

    /// When the next message is due, if one is held.
    pub fn next_due(&self) -> Option<Instant> {
        self.queue.front().map(|(at, _, _)| *at)
    }

    /// The messages due by `now`, oldest first.
    pub fn due(&mut self, now: Instant) -> Vec<(MessageId, PeerId)> {
        let ready = self.queue.iter().take_while(|(at, _, _)| *at <= now).count();
        self.queue.drain(..ready).map(|(_, id, source)| (id, source)).collect()
    }

    pub fn len(&self) -> usize {
        self.queue.len()
    }

    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }
}

/// Waits until `at` (a [`ForwardHold::next_due`]), or for ever when nothing is held.
pub async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(tokio::time::Instant::from_std(at)).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u8) -> MessageId {
        MessageId::new(&[n])
    }

    #[test]
    fn messages_go_after_the_hold_in_order_and_a_full_queue_lets_the_oldest_go_early() {
        let hold = Duration::from_millis(25);
        let mut held = ForwardHold::new(hold, 3);
        let source = crate::keypair(&ed25519_dalek::SigningKey::from_bytes(&[1; 32])).public().to_peer_id();
        let t0 = Instant::now();
        assert_eq!(held.next_due(), None);
        assert_eq!(held.hold(id(1), source, t0), None);
        assert_eq!(held.hold(id(2), source, t0 + Duration::from_millis(10)), None);
        assert_eq!(held.next_due(), Some(t0 + hold));
        assert!(held.due(t0 + Duration::from_millis(24)).is_empty());
        assert_eq!(held.due(t0 + hold), vec![(id(1), source)]);
        held.hold(id(3), source, t0 + Duration::from_millis(20));
        held.hold(id(4), source, t0 + Duration::from_millis(20));
        assert_eq!(held.hold(id(5), source, t0 + Duration::from_millis(20)), Some((id(2), source)));
        assert_eq!(held.len(), 3);
        assert_eq!(
            held.due(t0 + Duration::from_secs(1)),
            vec![(id(3), source), (id(4), source), (id(5), source)]
        );
        assert!(held.is_empty());
    }
}
