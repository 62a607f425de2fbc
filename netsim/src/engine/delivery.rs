//! Message delivery in a virtual run: publishing a delta to the mesh, each
//! link's latency and loss, arrival at a node (validation, admission, sync
//! requests and answers), and gossip forwarding to the next hops.

use std::rc::Rc;

use rand::RngExt;
use starling_protocol::{engine::Input, Admission, SignedDelta};

use super::{Body, Engine, Happening, Life, Message, FORWARD_HOLD, MS};
use crate::{link, SimError};

impl Engine<'_> {
    pub(super) fn publish(&mut self, node: usize, delta: SignedDelta) {
        let id = delta.id();
        let round = delta.header.round;
        let bytes = delta.to_bytes().len() as u64;
        let message = Rc::new(Message { body: Body::Delta(delta), round, id, bytes, published_at: self.now });
        self.nodes[node].seen.insert(id, (round, self.now));
        let owed = self.audience(node).into_iter().filter(|&p| self.up(p)).count();
        self.ledger.published(round, owed);
        let deadline = self.now + (self.config.deadline_ms + 1) * MS;
        self.schedule(deadline, Happening::Deadline { node });
        let targets: Vec<usize> = self.first_hops(node);
        if self.nodes[node].attacker {
            return self.attack_send(node, message, targets);
        }
        for to in targets {
            self.send(node, to, message.clone());
        }
    }

    /// Who should receive `node`'s delta: its group, or everyone.
    pub(super) fn audience(&mut self, node: usize) -> Vec<usize> {
        if self.grouped {
            let round = self.nodes[node].state.round;
            self.group_of(round, node).into_iter().filter(|&p| p != node).collect()
        } else {
            (0..self.nodes.len()).filter(|&p| p != node && self.nodes[p].life != Life::Left).collect()
        }
    }

    /// Where a node sends its own delta: its group directly, or its mesh peers.
    pub(super) fn first_hops(&mut self, node: usize) -> Vec<usize> {
        if self.grouped {
            self.audience(node)
        } else {
            self.mesh.peers(node).to_vec()
        }
    }

    /// Sends `message` from `node` to each of its mesh peers but `except`
    /// (the peer it came from, when passing it on).
    pub(super) fn gossip_to_mesh(&mut self, node: usize, except: Option<usize>, message: &Rc<Message>) {
        for to in self.mesh.peers(node).to_vec() {
            if Some(to) != except {
                self.send(node, to, message.clone());
            }
        }
    }

    pub(super) fn send(&mut self, from: usize, to: usize, message: Rc<Message>) {
        if !self.up(to) {
            return;
        }
        if self.nodes[from].side != self.nodes[to].side {
            if self.sc.link.heal_retransmit_ms > 0 {
                self.ledger.sent(message.round, message.bytes);
                self.held.push((from, to, message));
            }
            return;
        }
        let round = message.round;
        self.ledger.sent(round, message.bytes);
        let tx = link::transfer_time(message.bytes, self.sc.link.uplink_mbps);
        let start = self.now.max(self.nodes[from].uplink_free);
        self.nodes[from].uplink_free = start + tx;
        if self.sc.link.loss > 0.0 && self.rng.random_bool(self.sc.link.loss) {
            self.ledger.lost();
            return;
        }
        let latency = link::sample_latency(&self.sc.link.latency, &mut self.rng);
        self.schedule(start + tx + latency, Happening::Arrive { to, from, message });
    }

    /// The partition healed: each connection that held messages across it
    /// delivers them, in the order they were sent, after its own
    /// retransmission delay.
    pub(super) fn deliver_held(&mut self) {
        let held = std::mem::take(&mut self.held);
        let mut delays: std::collections::HashMap<(usize, usize), u64> = std::collections::HashMap::new();
        let window = self.sc.link.heal_retransmit_ms * MS;
        for (from, to, message) in held {
            // One connection's data arrives at once after its first
            // retransmission, in the order it was sent (equal times are
            // taken in the order scheduled).
            let at = *delays.entry((from, to)).or_insert_with(|| {
                let latency = link::sample_latency(&self.sc.link.latency, &mut self.rng);
                self.now + self.rng.random_range(0..=window) + latency
            });
            self.schedule(at, Happening::Arrive { to, from, message });
        }
    }

    pub(super) fn on_deliver(
        &mut self,
        to: usize,
        from: usize,
        message: Rc<Message>,
    ) -> Result<(), SimError> {
        if !self.up(to) {
            return Ok(());
        }
        let round = message.round;
        self.ledger.received(round, message.bytes);
        if self.nodes[to].seen.contains_key(&message.id) {
            return Ok(());
        }
        self.nodes[to].seen.insert(message.id, (round, self.now));
        let delta = match &message.body {
            Body::Delta(delta) => {
                self.ledger.first_delivery(round, self.now - message.published_at);
                delta
            }
            Body::Junk(junk) => {
                self.ledger.refused(junk.reason());
                return Ok(());
            }
            Body::Proof { offender } => {
                let offender = *offender;
                return self.on_proof(to, from, offender, message);
            }
            Body::Leave(notice) => {
                let notice = notice.clone();
                return self.on_leave_notice(to, from, &notice, message);
            }
        };
        let rules = self.rules;
        let verdict = *self
            .verdicts
            .entry(message.id)
            .or_insert_with(|| delta.validate(&rules).err().map(|r| r.label()));
        if let Some(reason) = verdict {
            self.ledger.refused(reason);
            return Ok(());
        }
        if self.nodes[to].attacker && self.sc.attack.behaviour == crate::attack::AttackBehaviour::Replay {
            self.nodes[to].heard.push_back(delta.clone());
        }
        if self.sync_sybil(to) {
            // A sync attacker relays gossip as any mesh peer does, and takes
            // no part in the rounds: it never syncs, nor says when it starts.
            self.relay(to, from, message);
            return Ok(());
        }
        let n = &mut self.nodes[to];
        match n.engine.admit(&delta.header) {
            Admission::Accept => {}
            Admission::Duplicate => return Ok(()),
            Admission::Stale => {
                // Not merged nor forwarded; its lineage still counts as evidence.
                self.ledger.refused("stale");
                let actions = n.engine.handle(self.now / MS, Input::PeerDelta(delta.clone()));
                return self.apply(to, actions);
            }
            Admission::Full => {
                self.ledger.refused("full");
                return Ok(());
            }
            Admission::Banned => {
                self.ledger.refused("banned");
                return Ok(());
            }
            Admission::Replayed => {
                self.ledger.refused("replayed");
                // Its sender spent its delta of the round: not merged, but
                // passed on as the real node does, so that nodes past this
                // one stop waiting for that key too (see `events.rs`).
                let actions = n.engine.handle(self.now / MS, Input::PeerReplayed(delta.header.clone()));
                self.relay(to, from, message);
                return self.apply(to, actions);
            }
            Admission::Equivocation => {
                // The round state checks it against the delta it holds, bans
                // the key and drops that delta; the proof goes out to the mesh.
                self.ledger.refused("equivocation");
                let actions = n.engine.handle(self.now / MS, Input::PeerDelta(delta.clone()));
                for proof in n.engine.take_equivocations() {
                    self.send_proof(to, proof.sender(), round);
                }
                return self.apply(to, actions);
            }
        }
        let relays = n.engine.relays(&delta.header);
        let actions = n.engine.handle(self.now / MS, Input::PeerDelta(delta.clone()));
        if relays {
            self.relay(to, from, message);
        }
        self.apply(to, actions)
    }

    /// `node` passes an accepted delta on to its mesh after the forward hold
    /// (grouped rounds send to their group directly: nothing to relay).
    fn relay(&mut self, node: usize, from: usize, message: Rc<Message>) {
        if !self.grouped {
            self.schedule(self.now + FORWARD_HOLD, Happening::Forward { node, from, message });
        }
    }

    /// Gossip: forward an accepted delta to mesh peers, except the one it came
    /// from and those whose IDONTWANT (sent when they got it) has arrived.
    pub(super) fn forward(&mut self, node: usize, from: usize, message: Rc<Message>) {
        if !self.up(node) {
            return;
        }
        let peers: Vec<usize> = self.mesh.peers(node).to_vec();
        for p in peers {
            if p == from || !self.up(p) {
                continue;
            }
            if let Some(&(_, at)) = self.nodes[p].seen.get(&message.id) {
                let idontwant = link::sample_latency(&self.sc.link.latency, &mut self.rng);
                if at + idontwant <= self.now {
                    continue;
                }
            }
            self.send(node, p, message.clone());
        }
    }
}
