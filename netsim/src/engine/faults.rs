//! The fault schedule of a virtual run: crashes and restarts, departures
//! (graceful ones with a signed leave notice gossiped through the mesh, as
//! `starling run` sends on SIGTERM), joins, partitions and heals, fired as the
//! leading node reaches their rounds.

use std::rc::Rc;

use starling_node::local_swarm::sides_of;
use starling_protocol::{engine::Input, round::LeaveAdmission, DeltaId, LeaveNotice};

use super::{Body, Engine, Happening, Life, Message, MS};
use crate::{
    scenario::{partition_label, EventKind},
    SimError,
};

impl Engine<'_> {
    pub(super) fn crash(&mut self, node: usize, restart_after_ms: u64) {
        self.untrack(node);
        let n = &mut self.nodes[node];
        n.life = Life::Crashed;
        n.epoch += 1;
        self.disconnect_everywhere(node);
        if restart_after_ms > 0 {
            self.schedule(self.now + restart_after_ms * MS, Happening::Restart { node });
        }
    }

    /// Its connected peers see `node`'s connections close.
    fn disconnect_everywhere(&mut self, node: usize) {
        if self.grouped {
            return;
        }
        let key = self.nodes[node].public;
        let now = self.now / MS;
        for i in 0..self.nodes.len() {
            if self.nodes[i].life == Life::Up && i != node && self.direct(node, i) {
                let outputs = self.nodes[i].engine.handle(now, Input::PeerLeft(key));
                // A departure can complete a round that waited for the departed node.
                let _ = self.apply(i, outputs);
            }
        }
    }

    /// A crashed node restarts from its last checkpoint (its state at the last merge).
    pub(super) fn restart(&mut self, node: usize) {
        if self.nodes[node].life != Life::Crashed {
            return;
        }
        let (round, lineage) = (self.nodes[node].state.round, self.nodes[node].state.lineage);
        let public = self.nodes[node].public;
        // As a real node restarts: from its checkpoint, probing its peers
        // first, with the last delta it signed (its outbox).
        let mut engine = self.new_engine(public, round, lineage, true);
        if let Some(delta) = self.nodes[node].signed.clone() {
            engine = engine.with_outbox(delta);
        }
        self.nodes[node].engine = engine;
        let n = &mut self.nodes[node];
        n.life = Life::Up;
        n.wake = None;
        n.snapshot = None;
        n.uplink_free = self.now;
        n.downlink_free = self.now;
        n.seen.clear();
        self.track(node);
        self.connect_to_peers(node);
        self.enter_round(node);
        let _ = self.drive(node, Input::Start);
    }

    /// With `link.partition_disconnects`: the pairs of running, directly
    /// connected nodes whose sides were apart (in `before`) or are apart now
    /// see each other leave (`connect` false) or connect again (`connect` true).
    fn reconnect_across(&mut self, before: &[usize], connect: bool) {
        if self.grouped {
            return;
        }
        let now = self.now / MS;
        let n = self.nodes.len();
        for a in 0..n {
            for b in 0..n {
                let apart =
                    if connect { before[a] != before[b] } else { self.nodes[a].side != self.nodes[b].side };
                if a == b || !apart || !self.up(a) || !self.up(b) || !self.direct(a, b) {
                    continue;
                }
                let peer = self.nodes[b].public;
                let input = if connect { Input::PeerConnected(peer) } else { Input::PeerLeft(peer) };
                let outputs = self.nodes[a].engine.handle(now, input);
                let _ = self.apply(a, outputs);
            }
        }
    }

    /// Tells `node` and every running peer that they are connected (all to all
    /// when not grouped).
    fn connect_to_peers(&mut self, node: usize) {
        if self.grouped {
            return;
        }
        let now = self.now / MS;
        let public = self.nodes[node].public;
        for i in 0..self.nodes.len() {
            if i != node && self.nodes[i].life == Life::Up && self.direct(node, i) {
                let peer = self.nodes[i].public;
                let outputs = self.nodes[node].engine.handle(now, Input::PeerConnected(peer));
                let _ = self.apply(node, outputs);
                let outputs = self.nodes[i].engine.handle(now, Input::PeerConnected(public));
                let _ = self.apply(i, outputs);
            }
        }
    }

    pub(super) fn fire_events(&mut self) {
        while let Some((at, _)) = self.events.first() {
            if *at > self.leading_round {
                break;
            }
            let (at, what) = self.events.remove(0);
            let label = match &what {
                EventKind::Partition { sides } => {
                    let before: Vec<usize> = self.nodes.iter().map(|n| n.side).collect();
                    // The same nodes apart as in live mode.
                    for (node, side) in self.nodes.iter_mut().zip(sides_of(before.len(), sides)) {
                        node.side = side;
                    }
                    if self.sc.link.partition_disconnects {
                        self.reconnect_across(&before, false);
                    }
                    partition_label(sides)
                }
                EventKind::Heal => {
                    let before: Vec<usize> = self.nodes.iter().map(|n| n.side).collect();
                    for n in &mut self.nodes {
                        n.side = 0;
                    }
                    if self.sc.link.partition_disconnects {
                        self.reconnect_across(&before, true);
                    }
                    self.deliver_held();
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
                EventKind::Leave { count, graceful } => {
                    let leaving: Vec<usize> =
                        (0..self.nodes.len()).filter(|&i| self.up(i)).take(*count).collect();
                    for &v in &leaving {
                        if *graceful {
                            self.send_leave_notice(v);
                        }
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

    /// A new node: genesis state, connected to everyone, probing its peers
    /// for the swarm's state before its first round.
    fn join(&mut self) -> Result<usize, SimError> {
        let initial = self.task.initial_params();
        let node = self.add_node(initial, 1.0, false, true)?;
        self.eval_nodes.push(self.task.cheap_to_evaluate());
        let side = self.nodes.first().map_or(0, |n| n.side);
        self.nodes[node].side = side;
        self.nodes[node].uplink_free = self.now;
        self.nodes[node].downlink_free = self.now;
        self.mesh.join(node, self.sc.link.mesh_degree, &mut self.rng);
        self.connect_to_peers(node);
        self.drive(node, Input::Start)?;
        Ok(node)
    }
}

impl Engine<'_> {
    /// Whether nodes `a` and `b` are connected (not only linked by relays).
    pub(super) fn direct(&self, a: usize, b: usize) -> bool {
        !self.sc.link.mesh_connections || self.mesh.peers(a).contains(&b)
    }

    /// `node` leaves gracefully: it signs a leave notice for the round its
    /// engine names and gossips it to its mesh peers, before its connections
    /// close (the caller crashes it next, so its training in flight is lost,
    /// as the real node's is).
    fn send_leave_notice(&mut self, node: usize) {
        let n = &self.nodes[node];
        let notice = LeaveNotice::sign(&n.key, self.run, n.engine.leaving_from());
        let id = DeltaId(notice.id());
        let round = n.state.round;
        let bytes = notice.to_bytes().len() as u64;
        let message =
            Rc::new(Message { body: Body::Leave(notice), round, id, bytes, published_at: self.now });
        self.nodes[node].seen.insert(id, (round, self.now));
        self.gossip_to_mesh(node, None, &message);
    }

    /// A leave notice reached `to`: verified, judged by its engine, taken in
    /// and passed on when it is news.
    pub(super) fn on_leave_notice(
        &mut self,
        to: usize,
        from: usize,
        notice: &LeaveNotice,
        message: Rc<Message>,
    ) -> Result<(), crate::SimError> {
        if let Err(refusal) = notice.verify(self.run) {
            self.ledger.refused(refusal.label());
            return Ok(());
        }
        let engine = &mut self.nodes[to].engine;
        match engine.admit_leave(&notice.sender, notice.from) {
            LeaveAdmission::Accept => {}
            LeaveAdmission::Stale => {
                self.ledger.refused("stale_leave");
                return Ok(());
            }
            LeaveAdmission::Duplicate | LeaveAdmission::Ignored => return Ok(()),
        }
        let outputs =
            engine.handle(self.now / MS, Input::PeerLeaving { peer: notice.sender, from: notice.from });
        self.gossip_to_mesh(to, Some(from), &message);
        self.apply(to, outputs)
    }
}
