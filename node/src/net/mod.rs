//! The libp2p side of a node: the composed behaviour, the transport stack, and
//! the mapping between libp2p peer ids and Starling's ed25519 keys.

pub mod sync;

use std::time::Duration;

use libp2p::{
    gossipsub, identify, identity, kad, mdns, noise, ping, request_response,
    swarm::behaviour::toggle::Toggle, swarm::NetworkBehaviour, tcp, yamux, PeerId, StreamProtocol, Swarm,
};
use starling_protocol::{PublicKey, RunSpec};

pub use sync::{StateCodec, StateRequest, StateResponse};

/// Protocol version string sent in identify.
pub const AGENT: &str = concat!("starling/", env!("CARGO_PKG_VERSION"));

/// Every protocol a node speaks, composed.
#[derive(NetworkBehaviour)]
pub struct Behaviour {
    pub gossipsub: gossipsub::Behaviour,
    pub identify: identify::Behaviour,
    pub ping: ping::Behaviour,
    pub kad: kad::Behaviour<kad::store::MemoryStore>,
    pub mdns: Toggle<mdns::tokio::Behaviour>,
    pub sync: request_response::Behaviour<StateCodec>,
}

/// Network options of a node.
#[derive(Clone, Debug)]
pub struct NetOptions {
    pub mdns: bool,
    pub idle_timeout: Duration,
}

impl Default for NetOptions {
    fn default() -> Self {
        Self { mdns: true, idle_timeout: Duration::from_secs(120) }
    }
}

/// Errors building the network stack.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error("transport setup failed: {0}")]
    Transport(String),
    #[error("gossipsub configuration rejected: {0}")]
    Gossipsub(String),
}

/// The gossip topic of a run: deltas of different runs never meet.
pub fn delta_topic(spec: &RunSpec) -> gossipsub::IdentTopic {
    gossipsub::IdentTopic::new(format!("/starling/{}/deltas/1", spec.run_id().short()))
}

/// The libp2p keypair of a Starling identity (one key for both).
pub fn keypair(key: &ed25519_dalek::SigningKey) -> identity::Keypair {
    identity::Keypair::ed25519_from_bytes(key.to_bytes()).expect("32 bytes are always a valid ed25519 secret")
}

/// The Starling key behind a peer id, when the peer id inlines an ed25519 key.
pub fn peer_key(peer: &PeerId) -> Option<PublicKey> {
    let multihash = peer.as_ref();
    if multihash.code() != 0 {
        return None; // not an identity multihash: not an ed25519 peer
    }
    let key = identity::PublicKey::try_decode_protobuf(multihash.digest()).ok()?;
    Some(PublicKey(key.try_into_ed25519().ok()?.to_bytes()))
}

/// The peer id of a Starling key.
pub fn peer_id(key: &PublicKey) -> Option<PeerId> {
    let ed = identity::ed25519::PublicKey::try_from_bytes(&key.0).ok()?;
    Some(PeerId::from_public_key(&identity::PublicKey::from(ed)))
}

/// Builds the swarm: TCP and QUIC, noise, yamux, with bandwidth counted into `registry`.
pub fn build_swarm(
    key: &ed25519_dalek::SigningKey,
    spec: &RunSpec,
    options: &NetOptions,
    registry: &mut prometheus_client::registry::Registry,
) -> Result<Swarm<Behaviour>, NetError> {
    let run = spec.run_id().short();
    let max_delta = spec.max_delta_bytes();
    let max_sync = spec.max_sync_reply_bytes();
    let mdns_enabled = options.mdns;
    let swarm = libp2p::SwarmBuilder::with_existing_identity(keypair(key))
        .with_tokio()
        .with_tcp(tcp::Config::default().nodelay(true), noise::Config::new, yamux::Config::default)
        .map_err(|e| NetError::Transport(e.to_string()))?
        .with_quic()
        .with_bandwidth_metrics(registry)
        .with_behaviour(|key| {
            let gossipsub = gossipsub::Behaviour::new(
                gossipsub::MessageAuthenticity::Anonymous,
                gossipsub_config(max_delta)?,
            )?;
            let identify = identify::Behaviour::new(
                identify::Config::new(format!("/starling/{run}/1"), key.public())
                    .with_agent_version(AGENT.into()),
            );
            let peer = key.public().to_peer_id();
            let mut kad_config = kad::Config::new(
                StreamProtocol::try_from_owned(format!("/starling/{run}/kad/1"))
                    .expect("starts with a slash"),
            );
            kad_config.set_query_timeout(Duration::from_secs(30));
            let mut kad = kad::Behaviour::with_config(peer, kad::store::MemoryStore::new(peer), kad_config);
            // Nodes of a swarm are servers to each other even without a confirmed
            // external address (loopback and LAN swarms never get one).
            kad.set_mode(Some(kad::Mode::Server));
            let mdns = if mdns_enabled {
                Some(mdns::tokio::Behaviour::new(mdns::Config::default(), peer)?)
            } else {
                None
            };
            let sync = request_response::Behaviour::with_codec(
                StateCodec::new(max_sync),
                [(
                    StreamProtocol::try_from_owned(format!("/starling/{run}/state/1"))
                        .expect("starts with a slash"),
                    request_response::ProtocolSupport::Full,
                )],
                request_response::Config::default().with_request_timeout(Duration::from_secs(60)),
            );
            Ok(Behaviour {
                gossipsub,
                identify,
                ping: ping::Behaviour::default(),
                kad,
                mdns: Toggle::from(mdns),
                sync,
            })
        })
        .map_err(|e| NetError::Gossipsub(e.to_string()))?
        .with_swarm_config(|c| c.with_idle_connection_timeout(options.idle_timeout))
        .build();
    Ok(swarm)
}

fn gossipsub_config(max_delta: usize) -> Result<gossipsub::Config, String> {
    gossipsub::ConfigBuilder::default()
        // A delta travels whole, as one message: it is only useful whole, is
        // validated whole before it is forwarded, and splitting it would need
        // reassembly state per sender. So the limit is raised from the 64 KiB
        // default to the largest delta this run's spec allows, plus framing.
        .max_transmit_size(max_delta + 4096)
        // Forward nothing until the node has decoded, verified and admitted it.
        .validate_messages()
        // Deltas carry their own ed25519 signature, so gossipsub's own signing
        // would hash every payload twice; messages are anonymous and identified by
        // their content.
        .validation_mode(gossipsub::ValidationMode::Anonymous)
        .message_id_fn(|m: &gossipsub::Message| {
            gossipsub::MessageId::from(&blake3::hash(&m.data).as_bytes()[..20])
        })
        // Tell mesh peers at once that we already hold the deltas we publish,
        // so they do not forward our own delta back to us.
        .idontwant_on_publish(true)
        .heartbeat_interval(Duration::from_millis(500))
        .duplicate_cache_time(Duration::from_secs(300))
        .build()
        .map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peer_ids_and_keys_convert_both_ways() {
        let key = ed25519_dalek::SigningKey::from_bytes(&[5; 32]);
        let public = PublicKey::of(&key);
        let id = keypair(&key).public().to_peer_id();
        assert_eq!(peer_key(&id), Some(public));
        assert_eq!(peer_id(&public), Some(id));
    }
}
