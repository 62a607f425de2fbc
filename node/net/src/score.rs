//! Gossipsub peer scoring of a run: what a peer's behaviour costs it.
//!
//! Only invalid messages count against a peer (gossipsub's P4: the node
//! reports `Reject` for a delta or proof that fails validation, and the score
//! falls with the square of how many it sent). The penalties gossipsub scores
//! by default for timing (too few mesh deliveries, slow queues, many peers on
//! one IP) are off: Starling's rounds are bursty, local swarms share an address,
//! and an honest node slowed by training must not be graylisted. A little
//! credit for time in the mesh and first deliveries is capped well below one
//! invalid message's penalty, so it cannot buy an attacker room to lie.

use std::time::Duration;

use libp2p::gossipsub::{PeerScoreParams, PeerScoreThresholds, TopicHash, TopicScoreParams};

/// The penalty weight of one invalid message (squared count times this).
pub const INVALID_MESSAGE_WEIGHT: f64 = -10.0;

/// Below this score a peer's messages are not even processed (graylist):
/// three invalid messages in a short while put a peer there.
pub const GRAYLIST_THRESHOLD: f64 = -80.0;

/// Score parameters for the run's topics.
pub fn params(topics: &[TopicHash]) -> PeerScoreParams {
    let mut params = PeerScoreParams {
        ip_colocation_factor_weight: 0.0,
        slow_peer_weight: 0.0,
        // Protocol misbehaviour (grafting during backoff, broken IWANT promises):
        // mild, so that a loaded honest node is not pushed out.
        behaviour_penalty_weight: -1.0,
        behaviour_penalty_threshold: 6.0,
        ..PeerScoreParams::default()
    };
    for topic in topics {
        params.topics.insert(topic.clone(), topic_params());
    }
    params
}

fn topic_params() -> TopicScoreParams {
    TopicScoreParams {
        topic_weight: 1.0,
        time_in_mesh_weight: 0.01,
        time_in_mesh_quantum: Duration::from_secs(1),
        time_in_mesh_cap: 100.0,
        first_message_deliveries_weight: 0.5,
        first_message_deliveries_decay: 0.9,
        first_message_deliveries_cap: 10.0,
        mesh_message_deliveries_weight: 0.0,
        mesh_failure_penalty_weight: 0.0,
        invalid_message_deliveries_weight: INVALID_MESSAGE_WEIGHT,
        // Per decay interval (1 s): a peer's past invalid messages fade over minutes.
        invalid_message_deliveries_decay: 0.99,
        ..TopicScoreParams::default()
    }
}

/// Thresholds: gossip to, publish to, and process messages of peers above these.
pub fn thresholds() -> PeerScoreThresholds {
    PeerScoreThresholds {
        gossip_threshold: -10.0,
        publish_threshold: -40.0,
        graylist_threshold: GRAYLIST_THRESHOLD,
        accept_px_threshold: 10.0,
        opportunistic_graft_threshold: 5.0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_parameters_are_accepted_and_honest_credit_is_below_one_invalid_message() {
        let topic = TopicHash::from_raw("t");
        params(std::slice::from_ref(&topic)).validate().unwrap();
        thresholds().validate().unwrap();
        let t = topic_params();
        let credit = t.time_in_mesh_weight * t.time_in_mesh_cap
            + t.first_message_deliveries_weight * t.first_message_deliveries_cap;
        assert!(credit < -INVALID_MESSAGE_WEIGHT, "{credit}");
        assert!(3.0 * 3.0 * INVALID_MESSAGE_WEIGHT + credit < GRAYLIST_THRESHOLD);
    }
}
