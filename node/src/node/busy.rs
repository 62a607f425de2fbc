//! How long the node's event loop stays busy, and so how long it stops
//! answering the swarm: the time in each `select!` arm's handler (wall-clock,
//! and the CPU time the loop's thread spent in it, which leaves out time the
//! OS gave other threads on a loaded machine), how late a
//! watchdog tick comes (which also catches work done while polling the swarm
//! itself), and the time of each kind of heavy work wherever it runs. Exported
//! as metrics (`starling_event_loop_busy_seconds`, `starling_event_loop_lag_seconds`,
//! `starling_work_seconds`) and in [`super::NodeOutcome`] for `starling bench stall`.

use std::{
    collections::BTreeMap,
    time::{Duration, Instant},
};

use libp2p::{gossipsub, request_response, swarm::SwarmEvent};
use serde::{Deserialize, Serialize};

use crate::{metrics::NodeMetrics, net::BehaviourEvent};

/// How often the watchdog tick is due; its lateness is the loop's lag.
pub(super) const WATCHDOG: Duration = Duration::from_millis(10);

/// Count, total and longest of one kind of timing.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Timing {
    pub count: u64,
    pub total_seconds: f64,
    pub max_seconds: f64,
    /// The most CPU time the event loop's thread spent in one (handlers only).
    pub max_cpu_seconds: f64,
    /// CPU time in all, where it is measured (work on the workers): wall time
    /// less what the OS gave other threads (training, on a loaded machine) and
    /// the waits on the disk.
    #[serde(default)]
    pub cpu_seconds: f64,
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
        self.max_cpu_seconds = self.max_cpu_seconds.max(other.max_cpu_seconds);
        self.cpu_seconds += other.cpu_seconds;
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

    /// The most CPU time one handler spent.
    pub fn longest_stall_cpu_seconds(&self) -> f64 {
        self.handlers.values().map(|t| t.max_cpu_seconds).fold(0.0, f64::max)
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

/// When a handler started: wall clock and the thread's CPU time.
#[derive(Clone, Copy, Debug)]
pub(super) struct Since {
    wall: Instant,
    cpu: f64,
}

impl Since {
    pub(super) fn now() -> Self {
        Self { wall: Instant::now(), cpu: thread_cpu() }
    }
}

/// CPU seconds the calling thread has used.
pub(super) fn thread_cpu() -> f64 {
    let mut t = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes one timespec into `t`, which lives for the call.
    let ok = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut t) } == 0;
    if ok {
        t.tv_sec as f64 + t.tv_nsec as f64 * 1e-9
    } else {
        0.0
    }
}

/// The arm a swarm event is counted under: the events that may carry heavy
/// work get their own.
pub(super) fn swarm_arm(event: &SwarmEvent<BehaviourEvent>) -> &'static str {
    match event {
        SwarmEvent::Behaviour(BehaviourEvent::Gossipsub(gossipsub::Event::Message { .. })) => "swarm/gossip",
        SwarmEvent::Behaviour(BehaviourEvent::Sync(request_response::Event::Message { message, .. })) => {
            match message {
                request_response::Message::Request { .. } => "swarm/sync-request",
                request_response::Message::Response { .. } => "swarm/sync-response",
            }
        }
        _ => "swarm",
    }
}

/// The loop's accounting: its figures and the metrics they also go to.
#[derive(Default)]
pub(super) struct Busy {
    stats: LoopStats,
}

impl Busy {
    /// A handler of arm `arm` ran from `since` until now.
    pub(super) fn handler(&mut self, metrics: &NodeMetrics, arm: &'static str, since: Since) {
        let seconds = since.wall.elapsed().as_secs_f64();
        let cpu = (thread_cpu() - since.cpu).max(0.0);
        metrics.loop_busy(arm, seconds);
        let timing = self.stats.handlers.entry(arm.to_string()).or_default();
        timing.add(seconds);
        timing.max_cpu_seconds = timing.max_cpu_seconds.max(cpu);
    }

    /// The watchdog tick due at `due` came now.
    pub(super) fn lag(&mut self, metrics: &NodeMetrics, due: tokio::time::Instant) {
        let seconds = due.elapsed().as_secs_f64();
        metrics.event_loop_lag.observe(seconds);
        self.stats.lag.add(seconds);
    }

    /// One piece of heavy work of `kind` took `took`, of which `cpu` seconds
    /// of its thread's CPU time (where measured).
    pub(super) fn work(
        &mut self,
        metrics: &NodeMetrics,
        kind: &'static str,
        took: Duration,
        cpu: Option<f64>,
    ) {
        let seconds = took.as_secs_f64();
        metrics.work_done(kind, seconds);
        let timing = self.stats.work.entry(kind.to_string()).or_default();
        timing.add(seconds);
        timing.cpu_seconds += cpu.unwrap_or(0.0);
    }

    /// Time of `kind` counted in the figures only: `starling_train_seconds`
    /// already exports training, so it stays out of `starling_work_seconds`.
    pub(super) fn stats_only(&mut self, kind: &'static str, took: Duration) {
        self.stats.work.entry(kind.to_string()).or_default().add(took.as_secs_f64());
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
        let before = Since { wall: Instant::now() - Duration::from_millis(30), cpu: thread_cpu() };
        busy.handler(&metrics, "swarm", before);
        busy.handler(&metrics, "tick", Since::now());
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
