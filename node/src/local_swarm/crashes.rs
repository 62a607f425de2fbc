//! Crashes and departures in a local swarm: nodes that stop dead at a round,
//! as a `kill -9` stops `starling run` (their task is aborted: no leave, no
//! last checkpoint), and start again from their datadirs a while later; and
//! nodes that go for good, gracefully (as on SIGTERM: a signed leave notice,
//! then the connections close) or dead.
//!
//! A crash or departure fires once any node has merged the round before its
//! `at_round`, and takes the `count` lowest node indices that are up (as
//! netsim's virtual mode picks them). A restarted node
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

/// `count` nodes leave for good once a node has merged the round before
/// `at_round`: `graceful`ly, as `starling run` does on SIGTERM, or dead, as
/// after `kill -9` with no restart.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Departure {
    pub at_round: u64,
    pub count: usize,
    pub graceful: bool,
}

/// What befalls a node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Fault {
    /// It crashes, and restarts later.
    Crash(usize),
    /// It goes for good.
    Depart { index: usize, graceful: bool },
}

/// A planned crash or departure.
#[derive(Clone, Debug)]
enum Planned {
    Crash(Crash),
    Depart(Departure),
}

impl Planned {
    fn at_round(&self) -> u64 {
        match self {
            Planned::Crash(c) => c.at_round,
            Planned::Depart(d) => d.at_round,
        }
    }

    fn count(&self) -> usize {
        match self {
            Planned::Crash(c) => c.count,
            Planned::Depart(d) => d.count,
        }
    }
}

/// The crashes and departures still to come, and the restarts due.
#[derive(Debug, Default)]
pub(super) struct CrashPlan {
    /// In round order; crashes before departures of the same round.
    pending: VecDeque<Planned>,
    /// When each crashed node starts again, earliest first.
    restarts: Vec<(Instant, usize)>,
}

impl CrashPlan {
    pub(super) fn new(crashes: Vec<Crash>, departures: Vec<Departure>) -> Self {
        let mut pending: Vec<Planned> = crashes
            .into_iter()
            .map(Planned::Crash)
            .chain(departures.into_iter().map(Planned::Depart))
            .collect();
        pending.sort_by_key(Planned::at_round);
        Self { pending: pending.into(), restarts: Vec::new() }
    }

    /// What befalls which nodes now (`now`) that a node merged `round`,
    /// chosen among `up`; the crashed nodes' restarts are scheduled.
    pub(super) fn due(&mut self, round: u64, up: &BTreeSet<usize>, now: Instant) -> Vec<Fault> {
        let mut faults: Vec<Fault> = Vec::new();
        while let Some(planned) = self.pending.front().filter(|p| round + 1 >= p.at_round()).cloned() {
            self.pending.pop_front();
            let hit = |i: &usize| {
                faults.iter().any(|f| matches!(f, Fault::Crash(j) | Fault::Depart { index: j, .. } if j == i))
            };
            let chosen: Vec<usize> = up.iter().copied().filter(|i| !hit(i)).take(planned.count()).collect();
            match planned {
                Planned::Crash(crash) => {
                    let at = now + crash.restart_after;
                    self.restarts.extend(chosen.iter().map(|&i| (at, i)));
                    faults.extend(chosen.into_iter().map(Fault::Crash));
                }
                Planned::Depart(d) => faults
                    .extend(chosen.into_iter().map(|index| Fault::Depart { index, graceful: d.graceful })),
            }
        }
        self.restarts.sort();
        faults
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
        let mut plan = CrashPlan::new(
            vec![
                Crash { at_round: 6, count: 1, restart_after: Duration::from_secs(2) },
                Crash { at_round: 3, count: 2, restart_after: Duration::from_secs(1) },
            ],
            Vec::new(),
        );
        let (t0, up) = (Instant::now(), BTreeSet::from([1, 2, 3, 4]));
        assert!(plan.due(1, &up, t0).is_empty(), "round 3's crash waits for round 2 to be merged");
        assert_eq!(plan.due(2, &up, t0), vec![Fault::Crash(1), Fault::Crash(2)]);
        assert!(plan.due(2, &up, t0).is_empty(), "a crash fires once");
        assert!(plan.take_restarts(t0).is_empty());
        assert_eq!(plan.next_restart(), Some(t0 + Duration::from_secs(1)));
        assert_eq!(plan.take_restarts(t0 + Duration::from_secs(1)), vec![1, 2]);
        assert_eq!(plan.next_restart(), None);
        assert_eq!(plan.due(9, &BTreeSet::from([3, 4]), t0), vec![Fault::Crash(3)]);
        assert_eq!(plan.next_restart(), Some(t0 + Duration::from_secs(2)));
    }

    #[test]
    fn departures_take_the_lowest_nodes_up_after_the_crashes_of_their_round_and_never_restart() {
        let mut plan = CrashPlan::new(
            vec![Crash { at_round: 4, count: 1, restart_after: Duration::from_secs(1) }],
            vec![
                Departure { at_round: 4, count: 1, graceful: true },
                Departure { at_round: 7, count: 2, graceful: false },
            ],
        );
        let (t0, up) = (Instant::now(), BTreeSet::from([0, 1, 2, 3]));
        assert_eq!(
            plan.due(3, &up, t0),
            vec![Fault::Crash(0), Fault::Depart { index: 1, graceful: true }],
            "a node crashed in the same round is not taken twice"
        );
        assert_eq!(
            plan.due(6, &BTreeSet::from([0, 2, 3]), t0),
            vec![Fault::Depart { index: 0, graceful: false }, Fault::Depart { index: 2, graceful: false }]
        );
        assert_eq!(plan.take_restarts(t0 + Duration::from_secs(1)), vec![0], "only the crash restarts");
        assert_eq!(plan.next_restart(), None);
    }
}
