//! How long the node's event loop stays busy, and so how long it stops
//! answering the swarm: the time in each `select!` arm's handler, how late a
//! watchdog tick comes (which also catches work done while polling the swarm
//! itself), and the time of each kind of heavy work wherever it runs. Exported
//! as metrics (`starling_event_loop_busy_seconds`, `starling_event_loop_lag_seconds`,
//! `starling_work_seconds`) and in [`super::NodeOutcome`] for `starling bench stall`.

use std::{
    collections::BTreeMap,
    time::{Duration, Instant},
};

use serde::Serialize;

use crate::metrics::NodeMetrics;

/// How often the watchdog tick is due; its lateness is the loop's lag.
pub(super) const WATCHDOG: Duration = Duration::from_millis(10);

/// Count, total and longest of one kind of timing.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct Timing {
    pub count: u64,
    pub total_seconds: f64,
    pub max_seconds: f64,
}

impl Timing {
    fn add(&mut self, seconds: f64) {
        self.count += 1;
        self.total_seconds += seconds;
        self.max_seconds = self.max_seconds.max(seconds);
    }

    /// Both timings together.
    pub fn merge(&mut self, other: &Timing) {
        self.count += other.count;
        self.total_seconds += other.total_seconds;
        self.max_seconds = self.max_seconds.max(other.max_seconds);
    }

    pub fn mean_seconds(&self) -> f64 {
        if self.count == 0 {
            0.0
        } else {
            self.total_seconds / self.count as f64
        }
    }
}

/// Where a node's event loop spent its time.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct LoopStats {
    /// Time in each `select!` arm's handler, by arm.
    pub handlers: BTreeMap<String, Timing>,
    /// How late the watchdog tick came.
    pub lag: Timing,
    /// Heavy work by kind, on the loop or on a worker.
    pub work: BTreeMap<String, Timing>,
}

impl LoopStats {
    /// The longest time one handler held the loop.
    pub fn longest_stall_seconds(&self) -> f64 {
        self.handlers.values().map(|t| t.max_seconds).fold(0.0, f64::max)
    }

    /// Both nodes' figures together.
    pub fn merge(&mut self, other: &LoopStats) {
        for (kind, timing) in &other.handlers {
            self.handlers.entry(kind.clone()).or_default().merge(timing);
        }
        for (kind, timing) in &other.work {
            self.work.entry(kind.clone()).or_default().merge(timing);
        }
        self.lag.merge(&other.lag);
    }
}

/// The loop's accounting: its figures and the metrics they also go to.
#[derive(Default)]
pub(super) struct Busy {
    stats: LoopStats,
}

impl Busy {
    /// A handler of arm `arm` ran from `since` until now.
    pub(super) fn handler(&mut self, metrics: &NodeMetrics, arm: &'static str, since: Instant) {
        let seconds = since.elapsed().as_secs_f64();
        metrics.loop_busy(arm, seconds);
        self.stats.handlers.entry(arm.to_string()).or_default().add(seconds);
    }

    /// The watchdog tick due at `due` came now.
    pub(super) fn lag(&mut self, metrics: &NodeMetrics, due: tokio::time::Instant) {
        let seconds = due.elapsed().as_secs_f64();
        metrics.event_loop_lag.observe(seconds);
        self.stats.lag.add(seconds);
    }

    /// One piece of heavy work of `kind` took `took`.
    pub(super) fn work(&mut self, metrics: &NodeMetrics, kind: &'static str, took: Duration) {
        let seconds = took.as_secs_f64();
        metrics.work_done(kind, seconds);
        self.stats.work.entry(kind.to_string()).or_default().add(seconds);
    }

    pub(super) fn stats(&self) -> LoopStats {
        self.stats.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_longest_stall_is_the_longest_handler_of_any_arm() {
        let metrics = NodeMetrics::default();
        let mut busy = Busy::default();
        let before = Instant::now() - Duration::from_millis(30);
        busy.handler(&metrics, "swarm", before);
        busy.handler(&metrics, "tick", Instant::now());
        let stats = busy.stats();
        assert!(stats.longest_stall_seconds() >= 0.03);
        assert_eq!(stats.handlers["swarm"].count, 1);
        let mut all = stats.clone();
        all.merge(&stats);
        assert_eq!(all.handlers["swarm"].count, 2);
        assert_eq!(all.longest_stall_seconds(), stats.longest_stall_seconds());
        assert!(metrics.render().contains("starling_event_loop_busy_seconds_bucket"));
    }
}
