//! Partitions in a local swarm: at a round, the nodes split into sides that
//! cannot reach one another, and at a later round the cut heals. Each node is
//! told through [`crate::node::HarnessHooks::cut_off`] which keys it cannot
//! reach: it closes and refuses their connections, as a network cut would
//! stop them, and dials them again at the heal.
//!
//! An event fires once any node has merged the round before its `at_round`.
//! Sides are consecutive node indices, as netsim's virtual mode assigns them:
//! side `s` takes the nodes below the running sum of the fractions up to `s`,
//! times the node count, rounded.

use std::collections::VecDeque;

use starling_protocol::PublicKey;
use tokio::sync::watch;

/// A change of the network between the swarm's nodes.
#[derive(Clone, Debug, PartialEq)]
pub enum NetworkChange {
    /// The nodes split into sides of these fractions (at least two).
    Partition { at_round: u64, sides: Vec<f64> },
    /// Every node can reach every other again.
    Heal { at_round: u64 },
}

impl NetworkChange {
    fn at_round(&self) -> u64 {
        match self {
            Self::Partition { at_round, .. } | Self::Heal { at_round } => *at_round,
        }
    }
}

/// The changes still to come.
#[derive(Debug)]
pub(super) struct NetworkPlan {
    /// In round order.
    pending: VecDeque<NetworkChange>,
}

impl NetworkPlan {
    pub(super) fn new(mut changes: Vec<NetworkChange>) -> Self {
        changes.sort_by_key(NetworkChange::at_round);
        Self { pending: changes.into() }
    }

    /// The changes due now that a node merged `round`.
    pub(super) fn due(&mut self, round: u64) -> Vec<NetworkChange> {
        let due = self.pending.iter().take_while(|c| round + 1 >= c.at_round()).count();
        self.pending.drain(..due).collect()
    }
}

/// Each node's cut-off list.
#[derive(Debug)]
pub(super) struct CutOffs {
    keys: Vec<PublicKey>,
    senders: Vec<watch::Sender<Vec<PublicKey>>>,
    /// Never read from: each start of a node takes a clone, which sees the
    /// current list as news.
    receivers: Vec<watch::Receiver<Vec<PublicKey>>>,
    /// Whether any change is planned at all (otherwise nodes get no list).
    used: bool,
}

impl CutOffs {
    pub(super) fn new(keys: Vec<PublicKey>, used: bool) -> Self {
        let (senders, receivers) = keys.iter().map(|_| watch::channel(Vec::new())).unzip();
        Self { keys, senders, receivers, used }
    }

    /// What node `index` is to watch (`None` when no change is planned).
    pub(super) fn of(&self, index: usize) -> Option<watch::Receiver<Vec<PublicKey>>> {
        self.used.then(|| self.receivers[index].clone())
    }

    /// Tells every node whom it can no longer, or again, reach.
    pub(super) fn apply(&self, change: &NetworkChange) {
        let side = match change {
            NetworkChange::Partition { sides, .. } => sides_of(self.keys.len(), sides),
            NetworkChange::Heal { .. } => vec![0; self.keys.len()],
        };
        for (i, sender) in self.senders.iter().enumerate() {
            let away = self.keys.iter().enumerate().filter(|(j, _)| side[*j] != side[i]).map(|(_, k)| *k);
            sender.send_replace(away.collect());
        }
    }
}

/// The side of each of `n` nodes for a split into `sides` fractions:
/// consecutive indices, side `s` taking the nodes below the running sum of
/// the fractions up to `s`, times `n`, rounded. netsim's virtual mode splits
/// its nodes with it too, so both modes cut the same nodes apart.
pub fn sides_of(n: usize, sides: &[f64]) -> Vec<usize> {
    let total: f64 = sides.iter().sum();
    let mut bound = 0.0;
    let cuts: Vec<usize> = sides
        .iter()
        .map(|f| {
            bound += f / total;
            (bound * n as f64).round() as usize
        })
        .collect();
    (0..n).map(|i| cuts.iter().position(|&c| i < c).unwrap_or(sides.len() - 1)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(i: u8) -> PublicKey {
        PublicKey([i; 32])
    }

    #[test]
    fn a_partition_cuts_each_side_off_from_the_other_and_a_heal_joins_them() {
        assert_eq!(sides_of(5, &[0.6, 0.4]), vec![0, 0, 0, 1, 1]);
        let keys: Vec<PublicKey> = (0..5).map(key).collect();
        let mut plan = NetworkPlan::new(vec![
            NetworkChange::Heal { at_round: 8 },
            NetworkChange::Partition { at_round: 4, sides: vec![0.6, 0.4] },
        ]);
        let cut = CutOffs::new(keys.clone(), true);
        let (mut node0, mut node4) = (cut.of(0).expect("changes are planned"), cut.of(4).unwrap());
        assert!(plan.due(2).is_empty(), "round 4's partition waits for round 3 to be merged");
        let due = plan.due(3);
        assert_eq!(due.len(), 1);
        cut.apply(&due[0]);
        assert!(node0.has_changed().unwrap());
        assert_eq!(*node0.borrow_and_update(), keys[3..].to_vec());
        assert_eq!(*node4.borrow_and_update(), keys[..3].to_vec());
        // A node started afresh (a restart) sees the cut as news.
        assert_eq!(*cut.of(1).unwrap().borrow_and_update(), keys[3..].to_vec());
        cut.apply(&plan.due(7)[0]);
        assert!(node0.borrow_and_update().is_empty() && node4.borrow_and_update().is_empty());
        assert!(CutOffs::new(keys, false).of(0).is_none());
    }
}
