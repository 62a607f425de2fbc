//! A simulated node merging a round: the ledger of attack deltas merged, the
//! aggregation and outer step (or, in grouped rounds, the step towards the
//! group's models), the lineage, and the evaluation that fills the round's row.

use rand::RngExt;
use starling_protocol::{round::CloseReason, SignedDelta};

use super::Engine;
use crate::{metrics::NodeMerge, SimError};

impl Engine<'_> {
    pub(super) fn merge(
        &mut self,
        node: usize,
        round: u64,
        deltas: Vec<SignedDelta>,
        reason: CloseReason,
    ) -> Result<bool, SimError> {
        let merged = deltas.len();
        self.trace_merge(node, round, &deltas, reason);
        if !self.nodes[node].attacker && self.sc.attack.behaviour.protocol_attack() {
            // A replayer's deltas are honest until it has old ones to replay.
            let lies_from = match self.sc.attack.behaviour {
                crate::attack::AttackBehaviour::Replay => self.sc.attack.replay_age,
                _ => 0,
            };
            let from_attackers = deltas.iter().filter(|d| {
                d.header.round >= lies_from
                    && self.index_of(&d.header.sender).is_some_and(|i| self.nodes[i].attacker)
            });
            self.ledger.attack_deltas_merged += from_attackers.count() as u64;
        }
        if deltas.is_empty() {
            self.merge_buffer.fill(0.0);
        } else {
            // Grouped rounds carry models, not deltas: no momentum screening.
            let reference = (!self.grouped).then_some(self.nodes[node].state.momentum.as_slice());
            self.sc
                .protocol
                .aggregation
                .aggregate_deltas_with(&deltas, self.codec, reference, &mut self.merge_buffer)
                .map_err(|e| SimError::Merge { node, round, reason: e.to_string() })?;
        }
        self.untrack(node);
        let n = &mut self.nodes[node];
        if self.grouped {
            // The members of a group start from different states (they were in
            // different groups last round), so averaging their pseudo-gradients
            // would never bring the states together. Each publishes its trained
            // model θⱼ instead, and the outer step's pseudo-gradient is
            // θᵢ − mean θⱼ: the group's progress plus this node's distance from
            // the group, which the step closes.
            for (g, p) in self.merge_buffer.iter_mut().zip(&n.state.params) {
                *g = p - *g;
            }
        }
        self.outer.step(&mut n.state.params, &mut n.state.momentum, &self.merge_buffer);
        n.state.record_merge(round, &deltas);
        self.track(node);
        let n = &mut self.nodes[node];
        n.seen.retain(|_, (r, _)| *r + 2 >= round);
        let score = if self.eval_nodes.get(node).copied().unwrap_or(false) {
            Some(self.task.evaluate(&n.state.params).map_err(SimError::Workload)?)
        } else {
            None
        };
        let params = n.state.params.clone();
        self.ledger.merged(
            round,
            NodeMerge {
                node,
                merged,
                deadline: reason == CloseReason::Deadline,
                score,
                params,
                honest: !self.nodes[node].attacker,
            },
        );
        if round + 1 > self.leading_round {
            self.leading_round = round + 1;
            self.fire_events();
        }
        if self.up(node)
            && self.sc.churn.crash_per_round > 0.0
            && self.rng.random_bool(self.sc.churn.crash_per_round)
        {
            self.crash(node, self.sc.churn.restart_after_ms);
            return Ok(false);
        }
        self.enter_round(node);
        Ok(true)
    }
}
