//! A harness's partition ([`super::HarnessHooks::cut_off`]): the keys listed
//! are kept away as a network cut would keep them: their connections close
//! and dials both ways are refused. Taken off the list, each is dialled at
//! once, as the network coming back lets the upkeep's next dial through. A
//! banned key, or one a private run does not allow, stays blocked.

use std::collections::BTreeSet;

use libp2p::swarm::dial_opts::DialOpts;
use starling_protocol::PublicKey;
use tracing::info;

use super::Node;
use crate::net;

impl Node {
    /// Applies the harness's latest cut-off list, if it changed.
    pub(super) fn apply_cut_off(&mut self) {
        let Some(cut_off) = self.hooks.cut_off.as_mut() else {
            return;
        };
        if !cut_off.has_changed().unwrap_or(false) {
            return;
        }
        let now: BTreeSet<PublicKey> = cut_off.borrow_and_update().iter().copied().collect();
        let before = std::mem::replace(&mut self.cut, now.clone());
        for key in now.difference(&before) {
            if let Some(peer) = net::peer_id(key) {
                self.swarm.behaviour_mut().blocked.block_peer(peer);
            }
        }
        for key in before.difference(&now) {
            let Some(peer) = net::peer_id(key) else { continue };
            if self.refuse_connection(peer) {
                continue;
            }
            self.swarm.behaviour_mut().blocked.unblock_peer(peer);
            let _ = self.swarm.dial(DialOpts::peer_id(peer).build());
        }
        info!(cut_off = now.len(), "the harness changed which peers this node can reach");
    }
}
