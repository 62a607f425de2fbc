//! A private run: the nodes whose keys the spec lists train together; a node
//! whose key it does not list cannot start, and a peer with such a key is
//! disconnected, cannot reconnect, and never has a delta merged.

mod common;

use std::time::Duration;

use ed25519_dalek::SigningKey;
use futures::StreamExt;
use libp2p::{swarm::SwarmEvent, Multiaddr};
use starling_node::{
    net::{self, NetOptions},
    node::{run_node, run_node_with, HarnessHooks, NodeError, NodeEvent, NodeOptions},
};
use starling_protocol::{Codec, PublicKey, SignedDelta};
use tokio::sync::{mpsc, watch};

const ROUNDS: u64 = 2;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_private_swarm_refuses_keys_it_does_not_allow() {
    let keys: Vec<SigningKey> = (1..=3u8).map(|i| SigningKey::from_bytes(&[40 + i; 32])).collect();
    let public: Vec<PublicKey> = keys.iter().map(PublicKey::of).collect();
    let mut spec = common::test_spec("private-swarm");
    spec.allowed_keys = Some(vec![public[0].to_string(), public[1].to_string()]);
    spec.round.deadline_ms = 5_000;
    let dir = tempfile::tempdir().unwrap();
    let options = |i: usize, bootnodes: Vec<Multiaddr>| NodeOptions {
        datadir: dir.path().join(format!("node{i}")),
        spec: spec.clone(),
        listen: vec!["/ip4/127.0.0.1/tcp/0".parse().unwrap()],
        bootnodes,
        net: NetOptions { mdns: false, ..NetOptions::default() },
        wait_peers: 1,
        wait_timeout: Duration::from_secs(60),
        rounds: Some(ROUNDS),
        key: Some(keys[i].clone()),
        evaluate: false,
        evaluate_every: 1,
        checkpoint_every: 1,
        data: Default::default(),
    };
    let (_stop, stop_rx) = watch::channel(false);

    // A node with an unlisted key does not start, and says which key and what to do.
    let err =
        run_node(options(2, vec![]), None, stop_rx.clone()).await.expect_err("an unlisted key cannot run");
    assert!(matches!(err, NodeError::NotAllowed { key } if key == public[2]));
    assert!(err.to_string().contains(&public[2].to_string()) && err.to_string().contains("--allow"), "{err}");

    let (events_tx, mut events) = mpsc::unbounded_channel();
    let (start, start_rx) = watch::channel(false);
    let hooks = HarnessHooks { start: Some(start_rx), ..Default::default() };
    let first = tokio::spawn(run_node_with(
        options(0, vec![]),
        hooks.clone(),
        Some(events_tx.clone()),
        stop_rx.clone(),
    ));
    let address = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            if let Some(NodeEvent::Listening { address, .. }) = events.recv().await {
                return address;
            }
        }
    })
    .await
    .expect("node 0 listens within 30 s");
    let second = tokio::spawn(run_node_with(
        options(1, vec![address.clone()]),
        hooks,
        Some(events_tx),
        stop_rx.clone(),
    ));

    // The outsider: a real libp2p peer of the run with a valid delta for round 0.
    let mut registry = Default::default();
    let mut outsider =
        net::build_swarm(&keys[2], &spec, &NetOptions { mdns: false, ..Default::default() }, &mut registry)
            .unwrap();
    let topic = net::delta_topic(&spec);
    outsider.behaviour_mut().gossipsub.subscribe(&topic).unwrap();
    let own = SignedDelta::sign(
        &keys[2],
        spec.run_id(),
        0,
        [0; 32],
        64,
        Codec::Dense,
        Codec::Dense.encode(&vec![0.0; spec.param_count()]),
    );
    let mut closed = 0;
    outsider.dial(address.clone()).unwrap();
    tokio::time::timeout(Duration::from_secs(30), async {
        // Connected, then closed by node 0; a second dial gets no lasting connection either.
        while closed < 2 {
            match outsider.select_next_some().await {
                SwarmEvent::ConnectionEstablished { .. } => {
                    let _ = outsider.behaviour_mut().gossipsub.publish(topic.clone(), own.to_bytes());
                }
                SwarmEvent::ConnectionClosed { .. } | SwarmEvent::OutgoingConnectionError { .. } => {
                    closed += 1;
                    if closed == 1 {
                        outsider.dial(address.clone()).unwrap();
                    }
                }
                _ => {}
            }
        }
    })
    .await
    .expect("node 0 closes the outsider's connections within 30 s");

    start.send(true).unwrap();
    let mut merged = Vec::new();
    let outcomes = tokio::time::timeout(Duration::from_secs(120), async {
        let mut done = Vec::new();
        for mut node in [first, second] {
            loop {
                tokio::select! {
                    _ = outsider.select_next_some() => {}
                    Some(event) = events.recv() => if let NodeEvent::Round(r) = event { merged.push((r.round, r.merged)) },
                    result = &mut node => { done.push(result.unwrap().expect("node runs")); break; }
                }
            }
        }
        done
    })
    .await
    .expect("the allowed nodes finish their rounds within 120 s");
    while let Ok(NodeEvent::Round(r)) = events.try_recv() {
        merged.push((r.round, r.merged));
    }
    assert_eq!(merged.len(), 2 * ROUNDS as usize, "{merged:?}");
    assert!(
        merged.iter().all(|&(_, n)| n == 2),
        "the allowed nodes merge each other, never the outsider: {merged:?}"
    );
    for outcome in &outcomes {
        assert_eq!(outcome.rounds_merged, ROUNDS);
    }
}
