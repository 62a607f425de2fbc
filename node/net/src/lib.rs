//! The libp2p side of a node: the composed behaviour, the transport stack (TCP
//! and QUIC, or libp2p's in-memory transport for many nodes in one process), and
//! the mapping between libp2p peer ids and Starling's ed25519 keys.

pub mod first_dials;
pub mod forward_hold;
pub mod given_relays;
pub mod large_buffer;
pub mod payload;
pub mod pnet;
pub mod rate_limit;
pub mod reach;
pub mod score;
pub mod sync;
pub mod throttle;
pub mod upkeep;

use std::time::Duration;

use libp2p::{
    allow_block_list, autonat, connection_limits,
    core::{muxing::StreamMuxerBox, transport::Boxed, transport::MemoryTransport, upgrade, Transport as _},
    dcutr, gossipsub, identify, identity, kad, mdns, noise, ping,
    pnet::{PnetConfig, PreSharedKey},
    quic, relay, request_response,
    swarm::behaviour::toggle::Toggle,
    swarm::NetworkBehaviour,
    tcp, yamux, Multiaddr, PeerId, StreamProtocol, Swarm,
};
use starling_protocol::{PublicKey, RunSpec};

pub use sync::StateCodec;

/// Protocol version string sent in identify.
pub const AGENT: &str = concat!("starling/", env!("CARGO_PKG_VERSION"));

/// Every protocol a node speaks, composed.
#[derive(NetworkBehaviour)]
pub struct Behaviour {
    /// Caps on connections (see [`ConnectionCaps`]); first, so it refuses
    /// before any other behaviour sets anything up for a connection.
    pub caps: connection_limits::Behaviour,
    /// Peers this node will not talk to: banned equivocators, in a private
    /// run peers whose key the spec does not allow, and a harness's cut-off
    /// peers. Second, for the same reason as `caps`: a behaviour before it
    /// would record a connection it then denies, and keep it (libp2p's
    /// request-response asserts on that when the peer's next connection closes).
    pub blocked: allow_block_list::Behaviour<allow_block_list::BlockedPeers>,
    pub gossipsub: gossipsub::Behaviour,
    pub identify: identify::Behaviour,
    pub ping: ping::Behaviour,
    pub kad: kad::Behaviour<kad::store::MemoryStore>,
    pub mdns: Toggle<mdns::tokio::Behaviour>,
    pub sync: request_response::Behaviour<StateCodec>,
    /// Payloads of deltas announced on gossip without them (see [`payload`]).
    pub payload: request_response::Behaviour<payload::PayloadCodec>,
    /// Listens through relays and dials `/p2p-circuit` addresses (see [`reach`]).
    pub relay_client: relay::client::Behaviour,
    /// Relays for others, with `--relay-server`.
    pub relay_server: Toggle<relay::Behaviour>,
    /// Upgrades relayed connections to direct ones by hole punching.
    pub dcutr: dcutr::Behaviour,
    /// Learns whether the node is publicly reachable (off on the memory transport).
    pub autonat: Toggle<autonat::Behaviour>,
}

/// Which transport carries a node's connections.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Transport {
    /// TCP and QUIC over real sockets: what `starling run` uses.
    #[default]
    Tcp,
    /// libp2p's in-process memory transport, upgraded with noise and yamux like
    /// TCP: nodes listen on `/memory/0` (the transport picks the port) and dial
    /// `/memory/N`. Only nodes of the same process can reach each other, so many
    /// nodes run without sockets or ports; mDNS is off whatever `mdns` says.
    Memory,
}

/// Network options of a node.
#[derive(Clone, Debug)]
pub struct NetOptions {
    pub mdns: bool,
    pub idle_timeout: Duration,
    pub transport: Transport,
    /// Serve Kademlia lookups, so that nodes find and connect run peers beyond
    /// their bootnodes. Every lookup connects the asker to the peers it walks,
    /// so a swarm of a few hundred nodes ends up close to a full mesh. Off, the
    /// node answers no lookups (Kademlia client mode) and does no periodic ones:
    /// nodes keep the connections they dial and accept, and gossipsub's mesh
    /// carries deltas across that graph.
    pub peer_discovery: bool,
    /// Upload and download caps shared by every connection (TCP and QUIC only).
    pub bandwidth: throttle::BandwidthLimits,
    /// A private network's pre-shared key (see [`pnet`]): TCP only, no QUIC.
    pub swarm_key: Option<PreSharedKey>,
    /// Relays, relay serving and announced addresses (see [`reach`]).
    pub reach: reach::ReachOptions,
    /// Run peers to keep connected: below it, the node dials known peers
    /// again (see [`upkeep`]).
    pub target_peers: usize,
    /// Caps on connections.
    pub caps: ConnectionCaps,
    /// Deltas whose wire bytes exceed this go out as an announcement on
    /// gossip, their payload fetched apart (see [`payload`]).
    pub pull_above: usize,
}

/// The default of [`NetOptions::pull_above`]: gossip carries deltas up to 1 MiB whole.
pub const DEFAULT_PULL_ABOVE: usize = 1 << 20;

/// Caps on connections, so that no one can open more than a node serves:
/// past a cap, libp2p refuses the connection before its handshake uses more
/// (each established connection holds buffers in yamux, gossipsub and the
/// state protocol). Far above what a node keeps (`target_peers`, default 8,
/// plus the peers that dial it); see `docs/bounds.md`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnectionCaps {
    /// Incoming connections still in their handshake.
    pub pending_incoming: u32,
    /// Established incoming connections.
    pub incoming: u32,
    /// Established connections, both ways.
    pub established: u32,
    /// Established connections with one peer (TCP, QUIC, a relayed one and
    /// the direct one hole punching upgrades it to).
    pub per_peer: u32,
}

impl Default for ConnectionCaps {
    fn default() -> Self {
        Self { pending_incoming: 64, incoming: 256, established: 384, per_peer: 4 }
    }
}

impl ConnectionCaps {
    fn limits(&self) -> connection_limits::ConnectionLimits {
        connection_limits::ConnectionLimits::default()
            .with_max_pending_incoming(Some(self.pending_incoming))
            .with_max_established_incoming(Some(self.incoming))
            .with_max_established(Some(self.established))
            .with_max_established_per_peer(Some(self.per_peer))
    }
}

impl Default for NetOptions {
    fn default() -> Self {
        Self {
            mdns: true,
            idle_timeout: Duration::from_secs(120),
            transport: Transport::Tcp,
            peer_discovery: true,
            bandwidth: throttle::BandwidthLimits::default(),
            swarm_key: None,
            reach: reach::ReachOptions::default(),
            target_peers: upkeep::DEFAULT_TARGET_PEERS,
            caps: ConnectionCaps::default(),
            pull_above: DEFAULT_PULL_ABOVE,
        }
    }
}

/// Errors building the network stack.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error("transport setup failed: {0}")]
    Transport(String),
    #[error("gossipsub configuration rejected: {0}")]
    Gossipsub(String),
    #[error(transparent)]
    SwarmKey(#[from] pnet::SwarmKeyError),
    #[error("cannot use the relay {address}: {reason}")]
    Relay { address: Multiaddr, reason: String },
}

/// The gossip topic of a run: deltas of different runs never meet.
pub fn delta_topic(spec: &RunSpec) -> gossipsub::IdentTopic {
    gossipsub::IdentTopic::new(format!("/starling/{}/deltas/1", spec.run_id().short()))
}

/// The gossip topic of a run's equivocation proofs.
pub fn proof_topic(spec: &RunSpec) -> gossipsub::IdentTopic {
    gossipsub::IdentTopic::new(format!("/starling/{}/equivocations/1", spec.run_id().short()))
}

/// The gossip topic of a run's leave notices (see [`starling_protocol::leave`]):
/// a topic of its own, so that the deltas' wire bytes stay as they are.
pub fn leave_topic(spec: &RunSpec) -> gossipsub::IdentTopic {
    gossipsub::IdentTopic::new(format!("/starling/{}/leaving/1", spec.run_id().short()))
}

/// The topic of announcements: the signed headers of deltas too large for
/// gossip, whose payloads are fetched apart (see [`payload`]).
pub fn announce_topic(spec: &RunSpec) -> gossipsub::IdentTopic {
    gossipsub::IdentTopic::new(format!("/starling/{}/announce/1", spec.run_id().short()))
}

/// Subscribes `swarm` to the run's delta, equivocation-proof, leave-notice and
/// announcement topics; returns the first two in that order (see
/// [`leave_topic`], [`announce_topic`]).
pub fn subscribe_run(
    swarm: &mut Swarm<Behaviour>,
    spec: &RunSpec,
) -> (gossipsub::IdentTopic, gossipsub::IdentTopic) {
    let topics = (delta_topic(spec), proof_topic(spec));
    for topic in [&topics.0, &topics.1, &leave_topic(spec), &announce_topic(spec)] {
        swarm.behaviour_mut().gossipsub.subscribe(topic).expect("subscribing to a new topic cannot fail");
    }
    topics
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

/// Builds the swarm on the transport `options` names (TCP and QUIC, or memory),
/// with noise and yamux, a relay client, and bandwidth counted into `registry`.
/// With a swarm key, TCP runs inside the private network and QUIC is left out;
/// a spec that names a swarm key refuses to build without it.
pub fn build_swarm(
    key: &ed25519_dalek::SigningKey,
    spec: &RunSpec,
    options: &NetOptions,
    registry: &mut prometheus_client::registry::Registry,
) -> Result<Swarm<Behaviour>, NetError> {
    pnet::check_key(spec, options.swarm_key.as_ref())?;
    let limits = BehaviourLimits {
        run: spec.run_id().short(),
        topic: delta_topic(spec).hash(),
        proof_topic: proof_topic(spec).hash(),
        leave_topic: leave_topic(spec).hash(),
        round_deadline: Duration::from_millis(spec.round.deadline_ms),
        max_delta: spec.max_delta_bytes(),
        max_sync: sync::max_response_bytes(spec),
        // mDNS multicasts on real interfaces; in-memory nodes cannot be reached that way.
        mdns: options.mdns && options.transport == Transport::Tcp,
        peer_discovery: options.peer_discovery,
        relay_server: options.reach.relay_server,
        // Dialling back means nothing between nodes of one process.
        autonat: options.transport == Transport::Tcp,
        caps: options.caps,
    };
    let idle_timeout = options.idle_timeout;
    let swarm_key = options.swarm_key;
    let transport = options.transport;
    let bandwidth = options.bandwidth;
    let mut swarm = libp2p::SwarmBuilder::with_existing_identity(keypair(key))
        .with_tokio()
        .with_other_transport(|key| -> Result<_, Box<dyn std::error::Error + Send + Sync>> {
            Ok(match transport {
                Transport::Tcp => socket_transport(key, swarm_key, bandwidth)?,
                Transport::Memory => MemoryTransport::default()
                    .upgrade(upgrade::Version::V1)
                    .authenticate(noise::Config::new(key)?)
                    .multiplex(yamux::Config::default())
                    .map(|(peer, muxer), _| (peer, StreamMuxerBox::new(muxer)))
                    .boxed(),
            })
        })
        .map_err(|e| NetError::Transport(e.to_string()))?
        .with_relay_client(noise::Config::new, yamux::Config::default)
        .map_err(|e| NetError::Transport(e.to_string()))?
        .with_bandwidth_metrics(registry)
        .with_behaviour(|key, relay_client| behaviour(key, relay_client, &limits))
        .map_err(|e| NetError::Gossipsub(e.to_string()))?
        .with_swarm_config(|c| c.with_idle_connection_timeout(idle_timeout))
        .build();
    reach::start(&mut swarm, &options.reach)?;
    Ok(swarm)
}

/// The longest a TCP connection may take to finish its handshakes (pnet,
/// noise, yamux): a peer speaking another protocol, or with another swarm key,
/// is dropped rather than left open.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(20);

/// TCP (inside the private network when there is a swarm key) and, without a
/// key, QUIC: pnet cannot protect QUIC, so a private node has none. With
/// bandwidth caps, every connection's substreams draw from one pair of buckets.
fn socket_transport(
    key: &identity::Keypair,
    swarm_key: Option<PreSharedKey>,
    bandwidth: throttle::BandwidthLimits,
) -> Result<Boxed<(PeerId, StreamMuxerBox)>, noise::Error> {
    let transport = unthrottled_socket_transport(key, swarm_key)?;
    if !bandwidth.is_limited() {
        return Ok(transport);
    }
    let limiter = throttle::Limiter::new(bandwidth);
    Ok(transport.map(move |(peer, muxer), _| (peer, limiter.wrap(muxer))).boxed())
}

fn unthrottled_socket_transport(
    key: &identity::Keypair,
    swarm_key: Option<PreSharedKey>,
) -> Result<Boxed<(PeerId, StreamMuxerBox)>, noise::Error> {
    let tcp = tcp::tokio::Transport::new(tcp::Config::default().nodelay(true));
    let noise = noise::Config::new(key)?;
    // In a private swarm every TCP connection first proves the swarm key.
    let tcp = tcp
        .and_then(move |socket, _| async move {
            match swarm_key {
                Some(psk) => PnetConfig::new(psk).handshake(socket).await.map(futures::future::Either::Left),
                None => Ok(futures::future::Either::Right(socket)),
            }
        })
        .upgrade(upgrade::Version::V1Lazy)
        .authenticate(noise)
        .multiplex(yamux::Config::default())
        .timeout(HANDSHAKE_TIMEOUT)
        .map(|(peer, muxer), _| (peer, StreamMuxerBox::new(muxer)))
        .boxed();
    if swarm_key.is_some() {
        return Ok(tcp);
    }
    let quic = quic::tokio::Transport::new(quic::Config::new(key))
        .map(|(peer, connection), _| (peer, StreamMuxerBox::new(connection)));
    Ok(tcp
        .or_transport(quic)
        .map(|either, _| match either {
            futures::future::Either::Left(output) => output,
            futures::future::Either::Right(output) => output,
        })
        .boxed())
}

/// What the behaviour takes from the run spec and the options.
struct BehaviourLimits {
    run: String,
    topic: gossipsub::TopicHash,
    proof_topic: gossipsub::TopicHash,
    leave_topic: gossipsub::TopicHash,
    round_deadline: Duration,
    max_delta: usize,
    max_sync: usize,
    mdns: bool,
    peer_discovery: bool,
    relay_server: bool,
    autonat: bool,
    caps: ConnectionCaps,
}

fn behaviour(
    key: &identity::Keypair,
    relay_client: relay::client::Behaviour,
    limits: &BehaviourLimits,
) -> Result<Behaviour, Box<dyn std::error::Error + Send + Sync>> {
    let run = &limits.run;
    let mut gossipsub = gossipsub::Behaviour::new(
        gossipsub::MessageAuthenticity::Anonymous,
        gossipsub_config(limits.max_delta, limits.topic.clone(), limits.round_deadline)?,
    )?;
    // Rejected messages (invalid deltas, proofs and leave notices) lower their sender's score.
    gossipsub.with_peer_score(
        score::params(&[limits.topic.clone(), limits.proof_topic.clone(), limits.leave_topic.clone()]),
        score::thresholds(),
    )?;
    let identify = identify::Behaviour::new(
        identify::Config::new(format!("/starling/{run}/1"), key.public())
            .with_agent_version(AGENT.into())
            // A node that starts listening through a relay tells its peers at once,
            // so they can pass that address on (kad) before the next periodic identify.
            .with_push_listen_addr_updates(true),
    );
    let peer = key.public().to_peer_id();
    let mut kad_config = kad::Config::new(
        StreamProtocol::try_from_owned(format!("/starling/{run}/kad/1")).expect("starts with a slash"),
    );
    kad_config.set_query_timeout(Duration::from_secs(30));
    if !limits.peer_discovery {
        kad_config.set_periodic_bootstrap_interval(None);
    }
    let mut kad = kad::Behaviour::with_config(peer, kad::store::MemoryStore::new(peer), kad_config);
    // Nodes of a swarm are servers to each other even without a confirmed
    // external address (loopback, LAN and in-memory swarms never get one).
    kad.set_mode(Some(if limits.peer_discovery { kad::Mode::Server } else { kad::Mode::Client }));
    let mdns =
        if limits.mdns { Some(mdns::tokio::Behaviour::new(mdns::Config::default(), peer)?) } else { None };
    let sync = request_response::Behaviour::with_codec(
        StateCodec::new(limits.max_sync),
        [(
            StreamProtocol::try_from_owned(format!("/starling/{run}/state/2")).expect("starts with a slash"),
            request_response::ProtocolSupport::Full,
        )],
        request_response::Config::default()
            .with_request_timeout(Duration::from_secs(30))
            .with_max_concurrent_streams(64),
    );
    let payload = request_response::Behaviour::with_codec(
        payload::PayloadCodec::new(limits.max_delta),
        [(
            StreamProtocol::try_from_owned(format!("/starling/{run}/payload/1"))
                .expect("starts with a slash"),
            request_response::ProtocolSupport::Full,
        )],
        request_response::Config::default()
            .with_request_timeout(payload_timeout(limits.max_delta))
            .with_max_concurrent_streams(64),
    );
    Ok(Behaviour {
        caps: connection_limits::Behaviour::new(limits.caps.limits()),
        payload,
        gossipsub,
        identify,
        ping: ping::Behaviour::default(),
        kad,
        mdns: Toggle::from(mdns),
        sync,
        blocked: allow_block_list::Behaviour::default(),
        relay_client,
        relay_server: Toggle::from(
            limits.relay_server.then(|| relay::Behaviour::new(peer, reach::relay_server_config())),
        ),
        dcutr: dcutr::Behaviour::new(peer),
        autonat: Toggle::from(
            limits.autonat.then(|| autonat::Behaviour::new(peer, autonat::Config::default())),
        ),
    })
}

/// How long a payload may take to arrive: 30 s, or the run's largest payload at 2 MB/s.
fn payload_timeout(max_payload: usize) -> Duration {
    Duration::from_secs(30).max(Duration::from_secs_f64(max_payload as f64 / 2e6))
}

/// How far gossipsub's frame limit must exceed the largest message: libp2p-gossipsub
/// 0.50.1 checks the limit against its whole read buffer, not against one frame, and
/// that buffer holds a frame plus up to one 8 KiB read of the next (asynchronous-codec's
/// read size). At exactly the message limit, two messages sent back to back can fail
/// that check; the receiver then drops its inbound stream and every message buffered on it.
const GOSSIP_READ_SLACK: usize = 8 * 1024;

/// The least time a queued gossip message waits before it is dropped (gossipsub's publish default).
const MIN_QUEUE_DURATION: Duration = Duration::from_secs(5);
/// Messages over this many bytes are answered with an IDONTWANT to the other
/// mesh peers as soon as they arrive (see [`gossipsub_config`]).
const IDONTWANT_ABOVE: usize = 128;

fn gossipsub_config(
    max_delta: usize,
    topic: gossipsub::TopicHash,
    round_deadline: Duration,
) -> Result<gossipsub::Config, String> {
    // A delta travels whole, as one message: it is only useful whole, is
    // validated whole before it is forwarded, and splitting it would need
    // reassembly state per sender. So the limit is raised from the 64 KiB
    // default to the largest delta this run's spec allows, plus framing.
    let max_message = max_delta + 4096;
    gossipsub::ConfigBuilder::default()
        // Each delta is held to the tight limit; only the frame limit has the slack.
        .max_transmit_size(max_message + GOSSIP_READ_SLACK)
        .max_transmit_size_for_topic(max_message, topic)
        // A delta waiting in a connection's queue is still worth sending until the
        // round it belongs to can close without it. gossipsub's defaults (5 s to
        // publish, 1 s to forward) drop forwarded deltas whenever a burst of them
        // outlasts a second on a busy node or a slow uplink, and lost deltas hold
        // the nodes expecting them until the deadline.
        .publish_queue_duration(round_deadline.max(MIN_QUEUE_DURATION))
        .forward_queue_duration(round_deadline.max(MIN_QUEUE_DURATION))
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
        // And when a delta arrives, tell the other mesh peers before validating
        // it, so that they do not forward it to us too. gossipsub does this only
        // for messages over 1000 bytes by default; a small delta (a few hundred
        // bytes of top-k) or a pulled delta's announcement then reached every
        // node once from its publisher and again from each other mesh peer
        // (3.2× the bytes a node needs in a 4-node swarm). An IDONTWANT costs
        // about 30 bytes a peer.
        .idontwant_message_size_threshold(IDONTWANT_ABOVE)
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

    /// Starts `listener` on the in-memory transport and returns its address.
    async fn listen_on_memory(listener: &mut Swarm<Behaviour>) -> Multiaddr {
        use futures::StreamExt;
        use libp2p::swarm::SwarmEvent;
        listener.listen_on("/memory/0".parse().expect("valid")).expect("memory listens");
        tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                if let SwarmEvent::NewListenAddr { address, .. } = listener.select_next_some().await {
                    return address;
                }
            }
        })
        .await
        .expect("the listener reports its address")
    }

    #[tokio::test]
    async fn memory_swarms_listen_on_an_assigned_port_and_connect() {
        use futures::StreamExt;
        use libp2p::{multiaddr::Protocol, swarm::SwarmEvent};

        let spec = RunSpec::builtin();
        let options = NetOptions { transport: Transport::Memory, ..NetOptions::default() };
        let build = |seed: u8| {
            let key = ed25519_dalek::SigningKey::from_bytes(&[seed; 32]);
            build_swarm(&key, &spec, &options, &mut Default::default()).expect("memory swarm builds")
        };
        let (mut listener, mut dialer) = (build(1), build(2));
        let wait = Duration::from_secs(10);
        let address = listen_on_memory(&mut listener).await;
        assert!(matches!(address.iter().next(), Some(Protocol::Memory(port)) if port != 0), "{address}");
        let listener_id = *listener.local_peer_id();
        dialer.dial(address.with(Protocol::P2p(listener_id))).expect("dial starts");
        tokio::time::timeout(wait, async {
            loop {
                tokio::select! {
                    _ = listener.select_next_some() => {}
                    event = dialer.select_next_some() => match event {
                        SwarmEvent::ConnectionEstablished { peer_id, .. } if peer_id == listener_id => return,
                        SwarmEvent::OutgoingConnectionError { error, .. } => panic!("dial failed: {error}"),
                        _ => {}
                    },
                }
            }
        })
        .await
        .expect("noise and yamux upgrade the memory connection");
    }

    #[tokio::test]
    async fn a_node_refuses_incoming_connections_past_its_cap() {
        use futures::StreamExt;
        use libp2p::{multiaddr::Protocol, swarm::SwarmEvent};

        let spec = RunSpec::builtin();
        let caps = ConnectionCaps { incoming: 1, ..ConnectionCaps::default() };
        let options = NetOptions { transport: Transport::Memory, mdns: false, caps, ..NetOptions::default() };
        let build = |seed: u8| {
            let key = ed25519_dalek::SigningKey::from_bytes(&[seed; 32]);
            build_swarm(&key, &spec, &options, &mut Default::default()).expect("memory swarm builds")
        };
        let (mut listener, mut first, mut second) = (build(1), build(2), build(3));
        let wait = Duration::from_secs(10);
        let address = listen_on_memory(&mut listener).await;
        let address = address.with(Protocol::P2p(*listener.local_peer_id()));
        first.dial(address.clone()).expect("dial starts");
        let mut second_dialed = false;
        let refused = tokio::time::timeout(wait, async {
            loop {
                tokio::select! {
                    event = listener.select_next_some() => match event {
                        SwarmEvent::ConnectionEstablished { .. } if !second_dialed => {
                            second_dialed = true;
                            second.dial(address.clone()).expect("dial starts");
                        }
                        SwarmEvent::IncomingConnectionError { error, .. } => return error.to_string(),
                        SwarmEvent::ConnectionEstablished { peer_id, .. } => {
                            panic!("a second incoming connection ({peer_id}) got past a cap of one")
                        }
                        _ => {}
                    },
                    _ = first.select_next_some() => {}
                    _ = second.select_next_some() => {}
                }
            }
        })
        .await
        .expect("the second incoming connection is refused");
        assert!(refused.contains("enied"), "{refused}");
    }
}
