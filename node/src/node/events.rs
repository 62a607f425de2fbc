//! What the swarm tells the node: connections, peers joining and leaving,
//! identify and mDNS discoveries, sync requests, and gossiped deltas and
//! equivocation proofs, each validated before it reaches the round state
//! (large deltas on a worker, see [`super::workers`]).

use std::time::Instant;

use libp2p::{
    core::ConnectedPoint, gossipsub, identify, kad, mdns, multiaddr::Protocol, request_response,
    swarm::SwarmEvent, PeerId,
};
use starling_protocol::{engine::Input, Admission, Refusal, SignedDelta};
use tracing::{debug, info, warn};

use super::{
    accountability,
    workers::{Origin, Unverified, INLINE_VERIFY_BYTES},
    Node, NodeError, NodeEvent,
};
use crate::net::{self, BehaviourEvent};

impl Node {
    pub(super) fn on_swarm_event(&mut self, event: SwarmEvent<BehaviourEvent>) -> Result<(), NodeError> {
        self.record_p2p(&event);
        self.reach.on_swarm_event(&mut self.swarm, &event);
        match event {
            SwarmEvent::NewListenAddr { listener_id, address } => {
                self.first_dials.on_listen_addr(listener_id);
                self.given_relays.on_listen_addr(listener_id);
                // Relayed listen addresses already end in this node's /p2p/ID.
                let full = match address.iter().last() {
                    Some(Protocol::P2p(_)) => address,
                    _ => address.with(Protocol::P2p(*self.swarm.local_peer_id())),
                };
                info!(address = %full, "listening");
                if let Some(events) = &self.events {
                    let _ = events.send(NodeEvent::Listening { node: self.me, address: full });
                }
            }
            SwarmEvent::ConnectionEstablished { peer_id, endpoint, .. } => {
                let refused = self.refuse_connection(peer_id);
                if !refused {
                    self.given_relays.on_connected(peer_id, &endpoint, &mut self.swarm);
                    let dialled = match &endpoint {
                        ConnectedPoint::Dialer { address, .. } => Some(address),
                        ConnectedPoint::Listener { .. } => None,
                    };
                    self.upkeep.on_connected(peer_id, dialled, Instant::now());
                }
            }
            SwarmEvent::OutgoingConnectionError { peer_id, error, .. } => {
                self.given_relays.on_dial_failed(peer_id, &error);
                if let Some(peer) = peer_id {
                    self.upkeep.on_dial_failed(peer, Instant::now());
                }
            }
            SwarmEvent::ListenerClosed { listener_id, .. } => {
                self.given_relays.on_listener_closed(listener_id)
            }
            SwarmEvent::ConnectionClosed { peer_id, num_established: 0, .. } => {
                self.upkeep.on_disconnected(peer_id, Instant::now());
                self.peer_left(peer_id)?
            }
            SwarmEvent::Behaviour(event) => self.on_behaviour_event(event)?,
            _ => {}
        }
        Ok(())
    }

    pub(super) fn peer_left(&mut self, peer: PeerId) -> Result<(), NodeError> {
        if self.run_peers.remove(&peer) {
            debug!(%peer, "run peer left");
        }
        match net::peer_key(&peer) {
            Some(key) => self.drive(Input::PeerLeft(key)),
            None => Ok(()),
        }
    }

    pub(super) fn on_behaviour_event(&mut self, event: BehaviourEvent) -> Result<(), NodeError> {
        match event {
            BehaviourEvent::Gossipsub(gossipsub::Event::Message {
                propagation_source,
                message_id,
                message,
            }) => {
                if message.topic == self.proof_topic.hash() {
                    self.on_proof(propagation_source, message_id, &message.data)?;
                } else if message.topic == self.leave_topic.hash() {
                    self.on_leave_notice(propagation_source, message_id, &message.data)?;
                } else if message.topic == self.announce_topic.hash() {
                    self.on_announcement(propagation_source, message_id, &message.data)?;
                } else {
                    self.on_gossip(propagation_source, message_id, message.data)?;
                }
            }
            BehaviourEvent::Gossipsub(gossipsub::Event::Subscribed { peer_id, topic })
                if topic == self.topic.hash() =>
            {
                if self.refuse_connection(peer_id) {
                    return Ok(());
                }
                self.met_peers.insert(peer_id);
                self.upkeep.on_run_peer(peer_id, Instant::now());
                if let Some(key) = net::peer_key(&peer_id) {
                    if self.run_peers.insert(peer_id) {
                        debug!(peer = %peer_id, "run peer joined");
                        if let Some(events) = &self.events {
                            let _ = events.send(NodeEvent::RunPeerJoined { node: self.me, peer: key });
                        }
                        self.drive(Input::PeerConnected(key))?;
                    }
                }
            }
            BehaviourEvent::Gossipsub(gossipsub::Event::Unsubscribed { peer_id, topic })
                if topic == self.topic.hash() =>
            {
                self.peer_left(peer_id)?;
            }
            BehaviourEvent::Identify(identify::Event::Received { peer_id, info, connection_id }) => {
                let addresses = self.reach.addresses_to_share(connection_id, info.listen_addrs);
                self.upkeep.learn(peer_id, addresses.iter().cloned(), Instant::now());
                let kad = &mut self.swarm.behaviour_mut().kad;
                let mut new = false;
                for address in addresses {
                    new |= matches!(kad.add_address(&peer_id, address), kad::RoutingUpdate::Success);
                }
                // Ask the newcomer whom it knows, so swarms bootstrapped from one node become a mesh.
                if new {
                    let _ = kad.bootstrap();
                }
            }
            BehaviourEvent::Kad(kad::Event::RoutingUpdated { peer, addresses, .. }) => {
                self.upkeep.learn(peer, addresses.iter().cloned(), Instant::now());
            }
            BehaviourEvent::Mdns(mdns::Event::Discovered(found)) => {
                for (peer, address) in found {
                    self.upkeep.learn(peer, [address.clone()], Instant::now());
                    self.swarm.behaviour_mut().kad.add_address(&peer, address.clone());
                    if !self.swarm.is_connected(&peer) {
                        let _ = self.swarm.dial(address);
                    }
                }
            }
            BehaviourEvent::Sync(request_response::Event::Message { peer, message, .. }) => match message {
                request_response::Message::Request { request, channel, .. } => {
                    self.serve_sync(peer, request, channel)?;
                }
                request_response::Message::Response { request_id, response } => {
                    self.on_sync_response(request_id, Some(response))?;
                }
            },
            BehaviourEvent::Payload(request_response::Event::Message { peer, message, .. }) => {
                match message {
                    request_response::Message::Request { request, channel, .. } => {
                        self.on_payload_request(peer, request, channel);
                    }
                    request_response::Message::Response { request_id, response } => {
                        self.on_payload_response(request_id, Some(response))?;
                    }
                }
            }
            BehaviourEvent::Payload(request_response::Event::OutboundFailure {
                peer,
                request_id,
                error,
                ..
            }) => {
                debug!(%peer, %error, "payload request failed");
                self.on_payload_response(request_id, None)?;
            }
            BehaviourEvent::Sync(request_response::Event::OutboundFailure {
                peer,
                request_id,
                error,
                ..
            }) => {
                debug!(%peer, %error, "state sync request failed");
                self.on_sync_response(request_id, None)?;
            }
            _ => {}
        }
        Ok(())
    }

    pub(super) fn on_gossip(
        &mut self,
        source: PeerId,
        id: gossipsub::MessageId,
        data: Vec<u8>,
    ) -> Result<(), NodeError> {
        if data.len() > INLINE_VERIFY_BYTES {
            self.verify_later(Origin::Gossip { source, id }, Unverified::Bytes(data));
            return Ok(());
        }
        let verified = SignedDelta::from_untrusted(&data, &self.rules);
        self.on_verified(source, id, verified)
    }

    /// A gossiped delta, verified (or refused): admitted, and the verdict given to gossipsub.
    pub(super) fn on_verified(
        &mut self,
        source: PeerId,
        id: gossipsub::MessageId,
        verified: Result<SignedDelta, Refusal>,
    ) -> Result<(), NodeError> {
        let acceptance = match verified {
            Err(refusal) => {
                warn!(peer = %source, reason = %refusal, "refused a delta");
                self.refuse(&source, refusal.label());
                gossipsub::MessageAcceptance::Reject
            }
            Ok(delta) => match self.refuse_key(&source, &delta) {
                Some((reason, acceptance)) => {
                    self.refuse(&source, reason);
                    acceptance
                }
                None => self.admit_valid(source, delta)?,
            },
        };
        if acceptance == gossipsub::MessageAcceptance::Accept {
            // Forward a little later, once peers that got it too said so (see net::forward_hold).
            if let Some((id, source)) = self.held_forwards.hold(id, source, Instant::now()) {
                self.forward(&id, &source);
            }
        } else {
            self.swarm.behaviour_mut().gossipsub.report_message_validation_result(&id, &source, acceptance);
        }
        Ok(())
    }

    /// Lets gossipsub forward the accepted messages whose hold is over.
    pub(super) fn release_forwards(&mut self) {
        for (id, source) in self.held_forwards.due(Instant::now()) {
            self.forward(&id, &source);
        }
    }

    fn forward(&mut self, id: &gossipsub::MessageId, source: &PeerId) {
        self.swarm.behaviour_mut().gossipsub.report_message_validation_result(
            id,
            source,
            gossipsub::MessageAcceptance::Accept,
        );
    }

    /// Admits a delta that passed validation and whose key may take part.
    pub(super) fn admit_valid(
        &mut self,
        source: PeerId,
        delta: SignedDelta,
    ) -> Result<gossipsub::MessageAcceptance, NodeError> {
        Ok(match self.engine.admit(&delta.header) {
            Admission::Accept => {
                self.metrics.deltas_accepted.inc();
                let relays = self.engine.relays(&delta.header);
                self.hold_accepted(&delta);
                self.drive(Input::PeerDelta(delta))?;
                if relays {
                    gossipsub::MessageAcceptance::Accept
                } else {
                    // Kept, not forwarded: ignoring it also takes gossipsub's
                    // copy out of its message cache (see `Engine::relays`).
                    gossipsub::MessageAcceptance::Ignore
                }
            }
            Admission::Equivocation => {
                warn!(peer = %source, sender = %delta.header.sender, round = delta.header.round, "refused a second, different delta of one key for one round");
                self.refuse(&source, "equivocation");
                let acceptance = accountability::blame(&source, &delta.header.sender);
                // The round state checks it against the delta it holds and bans the key.
                self.drive(Input::PeerDelta(delta))?;
                acceptance
            }
            Admission::Stale => {
                // Not merged nor forwarded, but the lineage it was trained
                // from tells a node that ran ahead whether it is on its own.
                self.metrics.ignored("stale");
                self.drive(Input::PeerDelta(delta))?;
                gossipsub::MessageAcceptance::Ignore
            }
            Admission::Replayed => {
                warn!(peer = %source, sender = %delta.header.sender, round = delta.header.round, "refused a delta whose payload was already seen in another round or from another key (a replay)");
                self.refuse_replay(&source, &delta.header.sender);
                self.drive(Input::PeerReplayed(delta.header))?;
                // Never merged, but forwarded: its sender signed its delta of
                // the round (validly; one per round, or it equivocates), and
                // peers that do not hear of it would wait for that key until
                // the deadline. The mesh carries it as it would an honest delta.
                gossipsub::MessageAcceptance::Accept
            }
            other => {
                self.metrics.ignored(&format!("{other:?}").to_lowercase());
                gossipsub::MessageAcceptance::Ignore
            }
        })
    }
}
