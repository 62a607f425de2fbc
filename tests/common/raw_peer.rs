//! A raw libp2p peer of a run, for tests that play an attacker: it dials one
//! node, subscribes to the run's topics and publishes whatever bytes the test
//! hands it, with none of a real node's checks. A colluder also answers state
//! sync requests with a forged state of its choosing. Its swarm runs on its own
//! task, which is aborted when the peer is dropped.

use std::{
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc, Mutex,
    },
    time::Duration,
};

use ed25519_dalek::SigningKey;
use futures::StreamExt;
use libp2p::{gossipsub, request_response, swarm::SwarmEvent, Multiaddr, Swarm};
use starling_node::net::{self, Behaviour, BehaviourEvent, NetOptions};
use starling_protocol::{
    wire::{SyncRequest, SyncResponse},
    PublicKey, RunSpec, StateOffer, StateSnapshot,
};
use tokio::{sync::mpsc, task::JoinHandle};

enum Command {
    Publish(gossipsub::IdentTopic, Vec<u8>),
    Dial(Multiaddr),
}

pub struct RawPeer {
    pub key: SigningKey,
    pub public: PublicKey,
    commands: mpsc::UnboundedSender<Command>,
    /// Delta messages it received, in order.
    received: Arc<Mutex<Vec<Vec<u8>>>>,
    /// Offers of its forged state it handed out.
    offers_served: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

impl RawPeer {
    /// Connects to the node at `address` and waits (at most 30 s) until that
    /// node has subscribed it to the run's delta topic. It never connects to
    /// the nodes of `avoid` (its Kademlia would otherwise find and dial them).
    /// It answers every sync request as unavailable.
    pub async fn connect(seed: u8, spec: &RunSpec, address: Multiaddr, avoid: &[PublicKey]) -> Self {
        Self::start(seed, spec, address, avoid, None).await
    }

    /// A colluder: connects like [`RawPeer::connect`] and answers every offer
    /// request with `forged` (and serves its chunks), whatever it was asked.
    pub async fn colluder(seed: u8, spec: &RunSpec, address: Multiaddr, forged: Arc<StateSnapshot>) -> Self {
        Self::start(seed, spec, address, &[], Some(forged)).await
    }

    async fn start(
        seed: u8,
        spec: &RunSpec,
        address: Multiaddr,
        avoid: &[PublicKey],
        forged: Option<Arc<StateSnapshot>>,
    ) -> Self {
        let key = SigningKey::from_bytes(&[seed; 32]);
        let mut registry = Default::default();
        let mut swarm =
            net::build_swarm(&key, spec, &NetOptions { mdns: false, ..Default::default() }, &mut registry)
                .expect("the raw peer's swarm builds");
        for key in avoid {
            swarm.behaviour_mut().blocked.block_peer(net::peer_id(key).expect("an ed25519 key"));
        }
        let (topic, _) = net::subscribe_run(&mut swarm, spec);
        swarm.dial(address).unwrap();
        tokio::time::timeout(Duration::from_secs(30), async {
            loop {
                if let SwarmEvent::Behaviour(BehaviourEvent::Gossipsub(gossipsub::Event::Subscribed {
                    topic: t,
                    ..
                })) = swarm.select_next_some().await
                {
                    if t == topic.hash() {
                        break;
                    }
                }
            }
        })
        .await
        .expect("the node subscribes the raw peer to the run topic within 30 s");
        let (commands, mut requests) = mpsc::unbounded_channel::<Command>();
        let received = Arc::new(Mutex::new(Vec::new()));
        let offers_served = Arc::new(AtomicUsize::new(0));
        let (sink, served) = (received.clone(), offers_served.clone());
        let task = tokio::spawn(async move {
            loop {
                tokio::select! {
                    Some(command) = requests.recv() => match command {
                        // Refused only when it has no peer or has seen these bytes already.
                        Command::Publish(topic, bytes) => {
                            let _ = swarm.behaviour_mut().gossipsub.publish(topic, bytes);
                        }
                        Command::Dial(address) => {
                            let _ = swarm.dial(address);
                        }
                    },
                    event = swarm.select_next_some() => match event {
                        SwarmEvent::Behaviour(BehaviourEvent::Gossipsub(gossipsub::Event::Message { message, .. }))
                            if message.topic == topic.hash() =>
                        {
                            sink.lock().unwrap().push(message.data);
                        }
                        SwarmEvent::Behaviour(BehaviourEvent::Sync(request_response::Event::Message {
                            message: request_response::Message::Request { request, channel, .. },
                            ..
                        })) => answer(&mut swarm, forged.as_deref(), &served, request, channel),
                        _ => {}
                    },
                }
            }
        });
        Self { public: PublicKey::of(&key), key, commands, received, offers_served, task }
    }

    /// Publishes `bytes` on `topic`, as is.
    pub fn publish(&self, topic: &gossipsub::IdentTopic, bytes: Vec<u8>) {
        self.commands.send(Command::Publish(topic.clone(), bytes)).expect("the raw peer's task runs");
    }

    /// Dials another node as well.
    pub fn dial(&self, address: Multiaddr) {
        self.commands.send(Command::Dial(address)).expect("the raw peer's task runs");
    }

    /// The delta messages received so far.
    pub fn received(&self) -> Vec<Vec<u8>> {
        self.received.lock().unwrap().clone()
    }

    /// How many offers of its forged state it handed out.
    pub fn offers_served(&self) -> usize {
        self.offers_served.load(Ordering::Relaxed)
    }
}

/// A colluder's answer: the forged state's offer and chunks; nothing for anyone else.
fn answer(
    swarm: &mut Swarm<Behaviour>,
    forged: Option<&StateSnapshot>,
    served: &AtomicUsize,
    request: SyncRequest,
    channel: request_response::ResponseChannel<SyncResponse>,
) {
    let response = match (forged, request) {
        (Some(forged), SyncRequest::Offer) => {
            served.fetch_add(1, Ordering::Relaxed);
            SyncResponse::Offer(StateOffer {
                manifest: forged.manifest.clone(),
                expected_from: forged.manifest.round,
                deltas: Vec::new(),
                expected: Vec::new(),
            })
        }
        (Some(forged), SyncRequest::Chunk { root, index }) if root == forged.root => {
            match forged.chunk(index) {
                Some(bytes) => SyncResponse::Chunk(bytes.to_vec()),
                None => SyncResponse::Unavailable,
            }
        }
        (_, SyncRequest::Joining { .. }) => SyncResponse::Noted,
        _ => SyncResponse::Unavailable,
    };
    let _ = swarm.behaviour_mut().sync.send_response(channel, response);
}

impl Drop for RawPeer {
    fn drop(&mut self) {
        self.task.abort();
    }
}
