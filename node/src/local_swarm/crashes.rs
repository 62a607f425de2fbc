//! Crashes in a local swarm: nodes that stop dead at a round, as a `kill -9`
//! stops `starling run` (their task is aborted: no leave, no last checkpoint),
//! and start again from their datadirs a while later.
//!
//! A crash fires once any node has merged the round before its `at_round`,
//! and takes the `count` lowest node indices that are up. A restarted node
//! dials every node that is up and waits for one of them, then catches up as
//! `starling run` does after a crash: it resumes from its checkpoint and
//! fetches the swarm's state when the swarm has moved on.

use std::{
    collections::{BTreeSet, VecDeque},
    path::Path,
    time::Duration,
};

use tokio::time::Instant;

/// How long a restart waits, at most, for the crashed node's store to be let
/// go (a worker of the aborted node can still be finishing a write).
const STORE_RELEASE_TIMEOUT: Duration = Duration::from_secs(20);

/// `count` nodes crash once a node has merged the round before `at_round`,
/// and restart `restart_after` later.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Crash {
    pub at_round: u64,
    pub count: usize,
    pub restart_after: Duration,
}

/// The crashes still to come and the restarts due.
#[derive(Debug, Default)]
pub(super) struct CrashPlan {
    /// In round order.
    pending: VecDeque<Crash>,
    /// When each crashed node starts again, earliest first.
    restarts: Vec<(Instant, usize)>,
}

impl CrashPlan {
    pub(super) fn new(mut crashes: Vec<Crash>) -> Self {
        crashes.sort_by_key(|c| c.at_round);
        Self { pending: crashes.into(), restarts: Vec::new() }
    }

    /// The nodes to crash now (`now`) that a node merged `round`, chosen
    /// among `up`; their restarts are scheduled.
    pub(super) fn due(&mut self, round: u64, up: &BTreeSet<usize>, now: Instant) -> Vec<usize> {
        let mut victims: Vec<usize> = Vec::new();
        while let Some(crash) = self.pending.front().filter(|c| round + 1 >= c.at_round).cloned() {
            self.pending.pop_front();
            let chosen: Vec<usize> =
                up.iter().copied().filter(|i| !victims.contains(i)).take(crash.count).collect();
            let at = now + crash.restart_after;
            self.restarts.extend(chosen.iter().map(|&i| (at, i)));
            victims.extend(chosen);
        }
        self.restarts.sort();
        victims
    }

    /// When the next restart is due, if any.
    pub(super) fn next_restart(&self) -> Option<Instant> {
        self.restarts.first().map(|(at, _)| *at)
    }

    /// The nodes whose restart is due at `now`.
    pub(super) fn take_restarts(&mut self, now: Instant) -> Vec<usize> {
        let due = self.restarts.iter().take_while(|(at, _)| *at <= now).count();
        self.restarts.drain(..due).map(|(_, i)| i).collect()
    }
}

/// Waits until the store in `datadir` can be opened again (sled holds a lock
/// on it until the last handle of the aborted node is dropped); `false` when it
/// is still held after [`STORE_RELEASE_TIMEOUT`].
pub(super) async fn store_released(datadir: &Path) -> bool {
    let until = Instant::now() + STORE_RELEASE_TIMEOUT;
    loop {
        if starling_storage::Store::open(datadir).is_ok() {
            return true;
        }
        if Instant::now() >= until {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_crash_takes_the_lowest_nodes_up_once_its_round_comes_and_restarts_them_later() {
        let mut plan = CrashPlan::new(vec![
            Crash { at_round: 6, count: 1, restart_after: Duration::from_secs(2) },
            Crash { at_round: 3, count: 2, restart_after: Duration::from_secs(1) },
        ]);
        let (t0, up) = (Instant::now(), BTreeSet::from([1, 2, 3, 4]));
        assert!(plan.due(1, &up, t0).is_empty(), "round 3's crash waits for round 2 to be merged");
        assert_eq!(plan.due(2, &up, t0), vec![1, 2]);
        assert!(plan.due(2, &up, t0).is_empty(), "a crash fires once");
        assert!(plan.take_restarts(t0).is_empty());
        assert_eq!(plan.next_restart(), Some(t0 + Duration::from_secs(1)));
        assert_eq!(plan.take_restarts(t0 + Duration::from_secs(1)), vec![1, 2]);
        assert_eq!(plan.next_restart(), None);
        assert_eq!(plan.due(9, &BTreeSet::from([3, 4]), t0), vec![3]);
        assert_eq!(plan.next_restart(), Some(t0 + Duration::from_secs(2)));
    }
}
