//! Attackers inside the simulation (what they sign and what they send; see
//! [`crate::attack`]) and the honest side of equivocation: a node whose round
//! state catches a key signing two deltas for one round floods the proof, and
//! every node that receives it bans the key too (`Event::Ban`), as real nodes
//! do over their proof topic. Sync attackers (`sync-sybil`) answer offer
//! requests with a state they forged together and gossip lures for it.

use std::rc::Rc;

use starling_protocol::{
    engine::Input,
    wire::{SyncRequest, SyncResponse},
    DeltaId, ModelState, PublicKey, SignedDelta, StateOffer, StateSnapshot,
};

use super::{Body, Engine, Message};
use crate::attack::{self, AttackBehaviour, Junk};

/// Bytes of an equivocation proof: two signed headers.
const PROOF_BYTES: u64 = 2 * (32 + 8 + 32 + 32 + 8 + 8 + 8 + 32 + 64);

impl Engine<'_> {
    /// Remembers an honest delta of `round` for the omniscient attacks.
    pub(super) fn note_honest(&mut self, round: u64, delta: &[f32]) {
        if self.honest_deltas.0 != round {
            self.honest_deltas = (round, Vec::new());
        }
        self.honest_deltas.1.push(delta.to_vec());
    }

    /// The honest deltas of `round` known so far: those already published and
    /// those of finished training jobs not yet collected.
    fn honest_of(&self, round: u64) -> Vec<Vec<f32>> {
        let mut rows = if self.honest_deltas.0 == round { self.honest_deltas.1.clone() } else { Vec::new() };
        for job in &self.jobs {
            if job.round != round || self.nodes[job.node].attacker {
                continue;
            }
            if let Some(Ok(trained)) = &job.result {
                rows.push(job.start.iter().zip(&trained.params).map(|(a, b)| a - b).collect());
            }
        }
        rows
    }

    /// Changes an attacker's honestly trained delta of `round`.
    pub(super) fn tamper(&mut self, node: usize, round: u64, delta: &mut Vec<f32>) {
        let sc = self.sc;
        let attack = &sc.attack;
        match attack.behaviour {
            AttackBehaviour::Replay => {
                let n = &mut self.nodes[node];
                n.own_history.push_back((round, delta.clone()));
                while n.own_history.front().is_some_and(|(r, _)| r + attack.replay_age < round) {
                    n.own_history.pop_front();
                }
                if let Some((r, old)) = n.own_history.front() {
                    if r + attack.replay_age == round {
                        *delta = old.clone();
                    }
                }
            }
            b => {
                let honest = if b.omniscient() { self.honest_of(round) } else { Vec::new() };
                attack.tamper(delta, &honest, sc.nodes, self.attackers, &mut self.rng);
            }
        }
    }

    /// What an attacker sends in place of publishing `message` to `targets`.
    pub(super) fn attack_send(&mut self, node: usize, message: Rc<Message>, targets: Vec<usize>) {
        let sc = self.sc;
        let Body::Delta(delta) = &message.body else { return };
        let round = message.round;
        match sc.attack.behaviour {
            AttackBehaviour::Forge => {
                let honest = sc.nodes - self.attackers;
                let victim = self.nodes[(round as usize + node) % honest.max(1)].public;
                for forged in attack::forgeries(delta, victim) {
                    let m = self.delta_message(forged);
                    for &to in &targets {
                        self.send(node, to, m.clone());
                    }
                }
            }
            AttackBehaviour::Equivocate => {
                let values = self.codec.decode(&delta.payload, self.params).unwrap_or_default();
                let negated: Vec<f32> = values.iter().map(|v| -v).collect();
                let twin = attack::equivocation(&self.nodes[node].key, delta, self.codec.encode(&negated));
                let twin = self.delta_message(twin);
                for (i, &to) in targets.iter().enumerate() {
                    self.send(node, to, if i % 2 == 0 { message.clone() } else { twin.clone() });
                }
            }
            AttackBehaviour::Replay => {
                let age = sc.attack.replay_age;
                let n = &mut self.nodes[node];
                n.heard.retain(|d| d.header.round + age >= round);
                let old: Vec<SignedDelta> =
                    n.heard.iter().filter(|d| d.header.round + age == round).take(2).cloned().collect();
                let replays: Vec<Rc<Message>> = old.into_iter().map(|d| self.delta_message(d)).collect();
                for &to in &targets {
                    self.send(node, to, message.clone());
                    for m in &replays {
                        self.send(node, to, m.clone());
                    }
                }
            }
            AttackBehaviour::Flood => {
                let oversized = self.codec.max_payload_len(self.params) as u64 + 1024 + 1;
                for &to in &targets {
                    self.send(node, to, message.clone());
                    for i in 0..sc.attack.flood_messages {
                        let (junk, bytes) = if i % 2 == 0 {
                            (Junk::Oversized, oversized)
                        } else {
                            (Junk::Malformed, message.bytes)
                        };
                        let id = junk_id(node, to, round, i);
                        let m = Rc::new(Message {
                            body: Body::Junk(junk),
                            round,
                            id,
                            bytes,
                            published_at: self.now,
                        });
                        self.send(node, to, m);
                    }
                }
            }
            _ => {
                for &to in &targets {
                    self.send(node, to, message.clone());
                }
            }
        }
    }

    fn delta_message(&self, delta: SignedDelta) -> Rc<Message> {
        let (id, round, bytes) = (delta.id(), delta.header.round, delta.to_bytes().len() as u64);
        Rc::new(Message { body: Body::Delta(delta), round, id, bytes, published_at: self.now })
    }

    /// `node` caught `offender` equivocating (its round state banned the
    /// key): flood the proof to its mesh.
    pub(super) fn send_proof(&mut self, node: usize, offender: PublicKey, round: u64) {
        let id = proof_id(&offender);
        self.nodes[node].seen.insert(id, (round, self.now));
        let proof = Rc::new(Message {
            body: Body::Proof { offender },
            round,
            id,
            bytes: PROOF_BYTES,
            published_at: self.now,
        });
        self.gossip_to_mesh(node, None, &proof);
    }

    /// A proof arrived: ban the key and pass the proof on.
    pub(super) fn on_proof(
        &mut self,
        to: usize,
        from: usize,
        offender: PublicKey,
        message: Rc<Message>,
    ) -> Result<(), crate::SimError> {
        if self.nodes[to].engine.rounds().is_banned(&offender) {
            return Ok(());
        }
        let outputs = self.nodes[to].engine.handle(self.now / super::MS, Input::Ban(offender));
        self.gossip_to_mesh(to, Some(from), &message);
        self.apply(to, outputs)
    }
}

impl Engine<'_> {
    /// Whether `node` mounts the state-sync attack.
    pub(super) fn sync_sybil(&self, node: usize) -> bool {
        self.nodes[node].attacker && self.sc.attack.behaviour == AttackBehaviour::SyncSybil
    }

    /// The state the sync attackers collude on: far ahead of the swarm, the
    /// same for all of them (its round steps by ten), worthless parameters.
    fn forged_snapshot(&mut self) -> Rc<StateSnapshot> {
        let round = (self.leading_round / 10 + 5) * 10;
        if let Some(s) = self.forged.as_ref().filter(|s| s.manifest.round == round) {
            return s.clone();
        }
        let mut h = blake3::Hasher::new_derive_key("starling netsim forged state");
        h.update(&round.to_le_bytes());
        let state = ModelState {
            round,
            lineage: *h.finalize().as_bytes(),
            params: vec![1000.0; self.params],
            momentum: vec![0.0; self.params],
        };
        self.forged_lineages.insert(state.lineage);
        let snapshot = Rc::new(StateSnapshot::of_flat(&state));
        self.forged = Some(snapshot.clone());
        snapshot
    }

    /// A sync attacker's answer: the forged state's offer and chunks.
    pub(super) fn forged_answer(&mut self, request: &SyncRequest) -> Option<SyncResponse> {
        let forged = self.forged_snapshot();
        match *request {
            SyncRequest::Offer => Some(SyncResponse::Offer(StateOffer {
                manifest: forged.manifest.clone(),
                expected_from: forged.manifest.round,
                deltas: Vec::new(),
                expected: Vec::new(),
            })),
            SyncRequest::Chunk { root, index } if root == forged.root => {
                forged.chunk(index).map(|c| SyncResponse::Chunk(c.to_vec()))
            }
            _ => None,
        }
    }

    /// A sync attacker's lure: a validly signed delta far beyond the swarm's
    /// round (a later round each time, so it is never an equivocation), so
    /// that every node that sees it believes it is far behind.
    pub(super) fn lure(&mut self, node: usize) {
        let forged = self.forged_snapshot();
        let mut values = vec![0.0; self.params];
        values[0] = node as f32 + self.now as f32 * 1e-9;
        let n = &mut self.nodes[node];
        n.lures += 1;
        let delta = SignedDelta::sign(
            &n.key,
            self.run,
            forged.manifest.round + n.lures,
            forged.manifest.lineage,
            1,
            self.codec,
            self.codec.encode(&values),
        );
        self.publish(node, delta);
    }
}

fn proof_id(offender: &PublicKey) -> DeltaId {
    let mut h = blake3::Hasher::new_derive_key("starling netsim equivocation proof id");
    h.update(&offender.0);
    DeltaId(*h.finalize().as_bytes())
}

fn junk_id(from: usize, to: usize, round: u64, i: u32) -> DeltaId {
    let mut h = blake3::Hasher::new_derive_key("starling netsim junk id");
    for v in [from as u64, to as u64, round, i as u64] {
        h.update(&v.to_le_bytes());
    }
    DeltaId(*h.finalize().as_bytes())
}
