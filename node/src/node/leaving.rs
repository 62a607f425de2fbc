//! Leave notices in the node: the signed notice a node gossips as it shuts
//! down gracefully, and what it does with its peers' notices.
//!
//! A direct peer sees our connections close and stops expecting us; a peer
//! that knows us only through relayed deltas hears of it from this notice
//! (see [`starling_protocol::leave`]). It goes out after our last delta and
//! before the connections close, on the run's leave topic; `Node::leave`
//! then gives gossip a bounded moment to send it. A peer's notice that fails
//! to decode or verify is rejected and counted as a refusal of its sender (an
//! honest node never forwards one); an old one (too old to matter, or older
//! than what the key did since: a replay) is ignored and counted as ignored,
//! as a stale delta is; one that is news is handed to the engine and
//! forwarded.

use libp2p::{gossipsub, PeerId};
use starling_protocol::{engine::Input, round::LeaveAdmission, LeaveNotice};
use tracing::{debug, info, warn};

use super::{accountability, Node, NodeError};

impl Node {
    /// Signs and gossips our notice: no delta of ours from the round the engine names.
    pub(super) fn publish_leave_notice(&mut self) {
        let from = self.engine.leaving_from();
        let notice = LeaveNotice::sign(&self.key, self.spec.run_id(), from);
        match self.swarm.behaviour_mut().gossipsub.publish(self.leave_topic.clone(), notice.to_bytes()) {
            Ok(_) => info!(from, "told the run we leave: no delta of ours from round {from} on"),
            // Alone in the run: nobody to tell.
            Err(e) => debug!(error = %e, "leave notice not published"),
        }
    }

    /// A gossiped leave notice: verified, judged by the engine, forwarded when it is news.
    pub(super) fn on_leave_notice(
        &mut self,
        source: PeerId,
        id: gossipsub::MessageId,
        data: &[u8],
    ) -> Result<(), NodeError> {
        let acceptance = match LeaveNotice::from_untrusted(data, self.spec.run_id()) {
            Err(refusal) => {
                warn!(peer = %source, reason = %refusal, "refused a leave notice");
                self.refuse(&source, refusal.label());
                gossipsub::MessageAcceptance::Reject
            }
            Ok(notice) => match self.engine.admit_leave(&notice.sender, notice.from) {
                LeaveAdmission::Accept => {
                    info!(key = %notice.sender, from = notice.from, "a peer leaves the run: not expected from round {} on", notice.from);
                    self.drive(Input::PeerLeaving { peer: notice.sender, from: notice.from })?;
                    gossipsub::MessageAcceptance::Accept
                }
                LeaveAdmission::Stale => {
                    debug!(peer = %source, key = %notice.sender, from = notice.from, "ignored an old leave notice");
                    self.metrics.ignored("stale_leave");
                    accountability::blame(&source, &notice.sender)
                }
                LeaveAdmission::Duplicate | LeaveAdmission::Ignored => gossipsub::MessageAcceptance::Ignore,
            },
        };
        self.swarm.behaviour_mut().gossipsub.report_message_validation_result(&id, &source, acceptance);
        Ok(())
    }
}
