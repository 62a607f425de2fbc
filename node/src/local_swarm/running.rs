//! The running nodes of a local swarm: their tasks, each node's own stop
//! signal (a graceful leave stops one node, the end of the run all of them),
//! and what their ends mean: a node that reached the last round, one that
//! crashed and will restart, one gone for good, or a failure.

use std::collections::{HashMap, HashSet};

use tokio::{sync::watch, task::JoinSet};

use super::{NodeResult, SwarmError, STOP_TIMEOUT};
use crate::node::NodeOutcome;

/// The running nodes, stopped and joined on every way out.
pub(super) struct RunningNodes {
    tasks: JoinSet<NodeResult>,
    /// Node index of each task, for the tasks that end without returning theirs.
    index_of_task: HashMap<tokio::task::Id, usize>,
    /// Each running node's task, to abort it in a crash.
    aborts: HashMap<usize, tokio::task::AbortHandle>,
    /// Tasks aborted in a crash: their end is no failure.
    crashed: HashSet<tokio::task::Id>,
    /// Each node's stop signal, the one its latest task watches.
    stops: HashMap<usize, watch::Sender<bool>>,
    /// Nodes gone for good (left or killed): their early end is no failure,
    /// and they have no outcome.
    gone: HashSet<usize>,
    rounds: u64,
}

impl RunningNodes {
    pub(super) fn new(rounds: u64) -> Self {
        Self {
            tasks: JoinSet::new(),
            index_of_task: HashMap::new(),
            aborts: HashMap::new(),
            crashed: HashSet::new(),
            stops: HashMap::new(),
            gone: HashSet::new(),
            rounds,
        }
    }

    /// Starts node `index` as `node(stop)`, where `stop` turns true when the
    /// node is to leave or the run is over.
    pub(super) fn spawn<F>(&mut self, index: usize, node: impl FnOnce(watch::Receiver<bool>) -> F)
    where
        F: std::future::Future<Output = NodeResult> + Send + 'static,
    {
        let (stop_tx, stop_rx) = watch::channel(false);
        self.stops.insert(index, stop_tx);
        let handle = self.tasks.spawn(node(stop_rx));
        self.index_of_task.insert(handle.id(), index);
        self.aborts.insert(index, handle);
    }

    /// Stops node `index` dead, as a crash would; it restarts later.
    pub(super) fn crash(&mut self, index: usize) {
        if let Some(handle) = self.aborts.remove(&index) {
            self.crashed.insert(handle.id());
            handle.abort();
        }
    }

    /// Node `index` goes for good: `graceful`ly as `starling run` does on
    /// SIGTERM (it gossips its leave notice, then its connections close), or
    /// dead, as after `kill -9`.
    pub(super) fn depart(&mut self, index: usize, graceful: bool) {
        self.gone.insert(index);
        if graceful {
            if let Some(stop) = self.stops.get(&index) {
                let _ = stop.send(true);
            }
        } else {
            self.crash(index);
        }
    }

    /// The rounds the swarm runs.
    pub(super) fn rounds(&self) -> u64 {
        self.rounds
    }

    /// How many nodes are gone for good.
    pub(super) fn gone(&self) -> usize {
        self.gone.len()
    }

    /// Whether node `index` is gone for good.
    pub(super) fn is_gone(&self, index: usize) -> bool {
        self.gone.contains(&index)
    }

    /// Tells every node the run is over.
    pub(super) fn shutdown_all(&self) {
        for stop in self.stops.values() {
            let _ = stop.send(true);
        }
    }

    /// The next node to stop: its outcome if it reached the last round, none
    /// if it is gone for good, or why it failed.
    pub(super) async fn join_next(&mut self) -> Option<Result<(usize, Option<NodeOutcome>), SwarmError>> {
        let joined = loop {
            match self.tasks.join_next().await? {
                Err(e) if e.is_cancelled() && self.crashed.remove(&e.id()) => {
                    match self.index_of_task.get(&e.id()).filter(|i| self.gone.contains(i)) {
                        Some(&index) => return Some(Ok((index, None))),
                        None => continue,
                    }
                }
                joined => break joined,
            }
        };
        Some(match joined {
            Ok((index, Ok(_))) if self.gone.contains(&index) => Ok((index, None)),
            Ok((index, Ok(outcome))) if outcome.state.round >= self.rounds => Ok((index, Some(outcome))),
            Ok((index, Ok(outcome))) => {
                Err(SwarmError::NodeStoppedEarly { index, round: outcome.state.round, rounds: self.rounds })
            }
            Ok((index, Err(source))) => Err(SwarmError::Node { index, source }),
            Err(e) => Err(SwarmError::NodePanicked {
                index: self.index_of_task.get(&e.id()).copied().unwrap_or(usize::MAX),
                reason: e.to_string(),
            }),
        })
    }

    /// Asks every node to stop, waits a little for them to checkpoint, aborts the rest.
    pub(super) async fn stop(mut self) {
        self.shutdown_all();
        let _ = tokio::time::timeout(STOP_TIMEOUT, async { while self.tasks.join_next().await.is_some() {} })
            .await;
        self.tasks.shutdown().await;
    }
}
