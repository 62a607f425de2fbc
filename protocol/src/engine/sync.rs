//! How the engine drives a state sync: whom it asks first, what each step of
//! the fetch ([`super::fetch`]) turns into, whether the chosen state is still
//! worth installing, the install, and what the node does after.

use super::fetch::FetchStep;
use super::{fetch, round, Engine, Note, Output, Phase, Ready, SyncReason};
use crate::keys::PublicKey;

impl Engine {
    /// Whether a chosen state, of `round` and `lineage`, is worth installing;
    /// `majority`: a strict majority of the peers reached announced it.
    pub(super) fn wanted(&self) -> impl Fn(u64, [u8; 32], bool) -> bool {
        let (own_round, observing, reason) = (self.round, self.rounds.observing(), self.fetch.reason);
        let reach = own_round.saturating_add(self.config.round.sync_lag_rounds);
        // Whether a state of `round` is of another lineage than ours. One of
        // a round we held compares with what we held then: a peer one merge
        // behind us on our own lineage (it has not yet merged the round we
        // just did) holds no other lineage, and going back to its state would
        // only undo our merge (a diverged node's pending retry once did so at
        // the last round, and stopped a round short).
        let differs = self.lineages.differs_from();
        move |round, lineage, majority| match reason {
            SyncReason::Probe => round > own_round,
            SyncReason::Behind => round > own_round || (observing && differs(round, lineage)),
            // A diverged node that ran ahead of the majority (the faster side
            // of a partition) goes back to the majority's state, but only on
            // the word of a strict majority: fewer colluders cannot turn it back.
            // The peers whose deltas showed the divergence train the rounds we
            // do: a root further ahead than a lagging peer would be is what a
            // node behind takes, on the same strict majority, so that a few
            // colluders claiming a far round cannot win a repair by plurality.
            SyncReason::Diverged => {
                (round > own_round && (round <= reach || majority))
                    || (differs(round, lineage) && (round == own_round || (round < own_round && majority)))
            }
        }
    }

    pub(super) fn start_sync(&mut self, now: u64, reason: SyncReason) {
        if !self.fetch.is_idle() {
            return;
        }
        // Whom to ask first when there are more peers than `max_asked`: an
        // order of our own (by hash with our key), so no key can grind its way
        // to the front of every node's list.
        let mut peers: Vec<PublicKey> = self.peers.iter().copied().collect();
        peers.sort_by_cached_key(|p| {
            let mut h = blake3::Hasher::new_derive_key("starling 2026-12 offer order v1");
            h.update(&self.me.0);
            h.update(&p.0);
            *h.finalize().as_bytes()
        });
        let asked = peers.len().min(self.config.fetch.max_asked);
        let step = self.fetch.start(now, peers, reason);
        if self.fetch.is_idle() {
            if reason == SyncReason::Probe && self.phase == Phase::Probing {
                // Every peer left before we could ask: nobody to catch up with.
                self.start_running(now);
            }
            return;
        }
        self.out.push(Output::Note(Note::Asking { reason, peers: asked }));
        self.on_fetch(now, step);
    }

    pub(super) fn on_fetch(&mut self, now: u64, step: FetchStep) {
        let reason = self.fetch.reason;
        match &step {
            FetchStep::Send(_) => self.syncing_for_a_while(self.fetch.is_fetching()),
            FetchStep::Ended { agreed: false, ahead } => self.syncing_for_a_while(*ahead),
            _ => {}
        }
        match step {
            FetchStep::Send(requests) => {
                self.out.extend(requests.into_iter().map(|(peer, id, request)| Output::Request {
                    peer,
                    id,
                    request,
                }));
            }
            FetchStep::Decode(decode) => self.out.push(Output::DecodeState(decode)),
            FetchStep::Current { round, lineage, expected_from, deltas } => {
                if round == self.round && lineage == self.lineage {
                    self.round_event(now, round::Event::PeersExpect { from: expected_from });
                    if !deltas.is_empty() {
                        self.out.push(Output::Deltas(deltas));
                    }
                }
                self.after_sync(now, reason);
            }
            FetchStep::Done { state, agreed } => {
                let ready = Ready { state, agreed };
                if self.merging.is_some() {
                    // Installed once the merge in flight is applied, if still wanted.
                    self.ready = Some(ready);
                } else {
                    self.finish_fetch(now, ready);
                }
            }
            FetchStep::Ended { agreed, ahead } => {
                if !agreed {
                    // A joiner whose peers are ahead, only one merge apart as
                    // they answered, asks longer before it starts on its own
                    // old state: that start holds every round that expects it.
                    if reason == SyncReason::Probe {
                        if ahead {
                            self.probes_ahead += 1;
                        } else {
                            self.failed_probes += 1;
                        }
                    }
                    let give_up = self.failed_probes >= self.config.max_failed_probes
                        || self.probes_ahead >= self.config.max_probes_ahead;
                    // Peers one merge apart announce different roots for a moment; ask again soon.
                    if reason != SyncReason::Probe || !give_up {
                        self.retry = Some((now.saturating_add(self.config.sync_retry_ms), reason));
                        if reason == SyncReason::Probe {
                            return;
                        }
                    }
                }
                self.after_sync(now, reason);
            }
        }
    }

    pub(super) fn finish_fetch(&mut self, now: u64, ready: Ready) {
        let reason = self.fetch.reason;
        let Ready { state, agreed: fetch::Agreed { expected_from, deltas, expected, majority } } = ready;
        if !(self.wanted())(state.round, state.lineage, majority) {
            self.out.push(Output::Note(Note::Outdated { round: state.round }));
            self.after_sync(now, reason);
            return;
        }
        let from = self.round;
        self.round = state.round;
        self.lineage = state.lineage;
        self.lineages.installed(state.round, state.lineage);
        // A training job from the old state is dropped when it comes back
        // (`wants_trained`), and the next one starts from the new state.
        self.out.push(Output::Install { state, from, expected_from, deltas });
        self.round_event(now, round::Event::Synced { round: self.round, expected_from, expected });
        if self.rounds.observing() {
            // Peers saw us connect in rounds of their own; tell them all the one
            // our source gave (or, back in rounds we signed, the one past
            // them), so none waits for us before then.
            self.notify_peers(self.rounds.contributes_from());
            self.joining.take_owed();
        }
        if self.done() && self.phase == Phase::Running {
            self.phase = Phase::Done;
            self.out.push(Output::Finished);
        }
        self.after_sync(now, reason);
    }

    pub(super) fn after_sync(&mut self, now: u64, reason: SyncReason) {
        if reason == SyncReason::Probe && self.phase == Phase::Probing {
            if self.done() {
                self.phase = Phase::Done;
                self.out.push(Output::Finished);
            } else {
                self.start_running(now);
            }
        } else {
            self.maybe_train(now);
        }
    }
}
