//! The fault schedule of a virtual run: crashes and restarts, departures,
//! joins, partitions and heals, fired as the leading node reaches their rounds.

use starling_protocol::{Event, PublicKey, RoundState};

use super::{Engine, Happening, Life, MS};
use crate::{scenario::EventKind, SimError};

impl Engine<'_> {
    pub(super) fn crash(&mut self, node: usize, restart_after_ms: u64) {
        self.untrack(node);
        let n = &mut self.nodes[node];
        n.life = Life::Crashed;
        n.epoch += 1;
        let key = n.public;
        self.disconnect_everywhere(key);
        if restart_after_ms > 0 {
            self.schedule(self.now + restart_after_ms * MS, Happening::Restart { node });
        }
    }

    fn disconnect_everywhere(&mut self, key: PublicKey) {
        if self.grouped {
            return;
        }
        let now = self.now / MS;
        for i in 0..self.nodes.len() {
            if self.nodes[i].life == Life::Up {
                let actions = self.nodes[i].rounds.handle(now, Event::PeerDisconnected(key));
                // A departure can complete a round that waited for the departed node.
                let _ = self.apply(i, actions);
            }
        }
    }

    /// A crashed node restarts from its last checkpoint (its state at the last merge).
    pub(super) fn restart(&mut self, node: usize) {
        if self.nodes[node].life != Life::Crashed {
            return;
        }
        let now = self.now / MS;
        let round = self.nodes[node].state.round;
        let public = self.nodes[node].public;
        let mut rounds = RoundState::new(public, self.config.clone(), round);
        if !self.grouped {
            for p in self.nodes.iter().filter(|p| p.life == Life::Up) {
                rounds.handle(now, Event::PeerConnected(p.public));
            }
            for i in 0..self.nodes.len() {
                if self.nodes[i].life == Life::Up {
                    self.nodes[i].rounds.handle(now, Event::PeerConnected(public));
                }
            }
        }
        let n = &mut self.nodes[node];
        n.rounds = rounds;
        n.life = Life::Up;
        n.uplink_free = self.now;
        n.downlink_free = self.now;
        n.seen.clear();
        self.track(node);
        self.enter_round(node);
        self.maybe_train(node);
    }

    pub(super) fn fire_events(&mut self) {
        while let Some((at, _)) = self.events.first() {
            if *at > self.leading_round {
                break;
            }
            let (at, what) = self.events.remove(0);
            let label = match &what {
                EventKind::Partition { sides } => {
                    let total: f64 = sides.iter().sum();
                    let n = self.nodes.len();
                    let mut bound = 0.0;
                    let mut cuts = Vec::new();
                    for f in sides {
                        bound += f / total;
                        cuts.push((bound * n as f64).round() as usize);
                    }
                    for i in 0..n {
                        self.nodes[i].side = cuts.iter().position(|&c| i < c).unwrap_or(sides.len() - 1);
                    }
                    format!(
                        "partition {}",
                        sides.iter().map(|f| format!("{f}")).collect::<Vec<_>>().join("/")
                    )
                }
                EventKind::Heal => {
                    for n in &mut self.nodes {
                        n.side = 0;
                    }
                    "heal".to_string()
                }
                EventKind::Crash { count, restart_after_ms } => {
                    let victims: Vec<usize> =
                        (0..self.nodes.len()).filter(|&i| self.up(i)).take(*count).collect();
                    for v in &victims {
                        self.crash(*v, *restart_after_ms);
                    }
                    format!("{} crash", victims.len())
                }
                EventKind::Leave { count } => {
                    let leaving: Vec<usize> =
                        (0..self.nodes.len()).filter(|&i| self.up(i)).take(*count).collect();
                    for &v in &leaving {
                        self.crash(v, 0);
                        self.nodes[v].life = Life::Left;
                    }
                    self.groups.clear();
                    format!("{} leave", leaving.len())
                }
                EventKind::Join { count } => {
                    let mut joined = 0;
                    for _ in 0..*count {
                        if self.join().is_ok() {
                            joined += 1;
                        }
                    }
                    format!("{joined} join")
                }
            };
            self.markers.push((at, label));
        }
    }

    /// A new node: genesis state, connected to everyone, fetching a peer's state first.
    fn join(&mut self) -> Result<usize, SimError> {
        let initial = self.task.initial_params();
        let node = self.add_node(initial, 1.0, false)?;
        self.eval_nodes.push(self.task.cheap_to_evaluate());
        let side = self.nodes.first().map_or(0, |n| n.side);
        self.nodes[node].side = side;
        self.nodes[node].syncing = true;
        self.nodes[node].uplink_free = self.now;
        self.nodes[node].downlink_free = self.now;
        self.mesh.join(node, self.sc.link.mesh_degree, &mut self.rng);
        let now = self.now / MS;
        let public = self.nodes[node].public;
        if !self.grouped {
            for i in 0..node {
                if self.up(i) {
                    let peer = self.nodes[i].public;
                    self.nodes[node].rounds.handle(now, Event::PeerConnected(peer));
                    self.nodes[i].rounds.handle(now, Event::PeerConnected(public));
                }
            }
        }
        let source = (0..node)
            .filter(|&i| self.up(i) && self.nodes[i].side == side)
            .max_by_key(|&i| self.nodes[i].state.round);
        if let Some(source) = source {
            let peer = self.nodes[source].public;
            self.request_state(node, peer);
        } else {
            self.nodes[node].syncing = false;
        }
        Ok(node)
    }
}
