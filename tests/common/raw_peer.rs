//! A raw libp2p peer of a run, for tests that play an attacker: it dials one
//! node, subscribes to the run's topics and publishes whatever bytes the test
//! hands it, with none of a real node's checks. Its swarm runs on its own task,
//! which is aborted when the peer is dropped.

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use ed25519_dalek::SigningKey;
use futures::StreamExt;
use libp2p::{gossipsub, swarm::SwarmEvent, Multiaddr};
use starling_node::net::{self, BehaviourEvent, NetOptions};
use starling_protocol::{PublicKey, RunSpec};
use tokio::{sync::mpsc, task::JoinHandle};

pub struct RawPeer {
    pub key: SigningKey,
    pub public: PublicKey,
    publish: mpsc::UnboundedSender<(gossipsub::IdentTopic, Vec<u8>)>,
    /// Delta messages it received, in order.
    received: Arc<Mutex<Vec<Vec<u8>>>>,
    task: JoinHandle<()>,
}

impl RawPeer {
    /// Connects to the node at `address` and waits (at most 30 s) until that
    /// node has subscribed it to the run's delta topic. It never connects to
    /// the nodes of `avoid` (its Kademlia would otherwise find and dial them).
    pub async fn connect(seed: u8, spec: &RunSpec, address: Multiaddr, avoid: &[PublicKey]) -> Self {
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
        let (publish, mut requests) = mpsc::unbounded_channel::<(gossipsub::IdentTopic, Vec<u8>)>();
        let received = Arc::new(Mutex::new(Vec::new()));
        let sink = received.clone();
        let task = tokio::spawn(async move {
            loop {
                tokio::select! {
                    Some((topic, bytes)) = requests.recv() => {
                        // Refused only when it has no peer or has seen these bytes already.
                        let _ = swarm.behaviour_mut().gossipsub.publish(topic, bytes);
                    }
                    event = swarm.select_next_some() => {
                        if let SwarmEvent::Behaviour(BehaviourEvent::Gossipsub(gossipsub::Event::Message { message, .. })) = event {
                            if message.topic == topic.hash() {
                                sink.lock().unwrap().push(message.data);
                            }
                        }
                    }
                }
            }
        });
        Self { public: PublicKey::of(&key), key, publish, received, task }
    }

    /// Publishes `bytes` on `topic`, as is.
    pub fn publish(&self, topic: &gossipsub::IdentTopic, bytes: Vec<u8>) {
        self.publish.send((topic.clone(), bytes)).expect("the raw peer's task runs");
    }

    /// The delta messages received so far.
    pub fn received(&self) -> Vec<Vec<u8>> {
        self.received.lock().unwrap().clone()
    }
}

impl Drop for RawPeer {
    fn drop(&mut self) {
        self.task.abort();
    }
}
