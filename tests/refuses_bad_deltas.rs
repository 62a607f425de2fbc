//! A node refuses, and never merges, a delta signed by the wrong key or made for
//! another run, while a valid delta from the same peer is merged.

mod common;

use std::time::Duration;

use ed25519_dalek::SigningKey;
use futures::StreamExt;
use libp2p::{gossipsub, swarm::SwarmEvent};
use starling_node::{
    net::{self, BehaviourEvent, NetOptions},
    node::{run_node, NodeEvent, NodeOptions},
};
use starling_protocol::{Codec, PublicKey, RunId, SignedDelta};
use tokio::sync::{mpsc, watch};

fn delta(signer: &SigningKey, run: RunId, round: u64, base: [u8; 32], params: usize) -> SignedDelta {
    SignedDelta::sign(signer, run, round, base, 64, Codec::Dense, Codec::Dense.encode(&vec![0.0; params]))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_key_and_wrong_run_deltas_are_refused_and_never_merged() {
    let mut spec = common::test_spec("refuses-bad-deltas");
    spec.round.deadline_ms = 2_000;
    let dir = tempfile::tempdir().unwrap();
    let (events_tx, mut events) = mpsc::unbounded_channel();
    let (_stop, stop_rx) = watch::channel(false);
    let options = NodeOptions {
        datadir: dir.path().join("node"),
        spec: spec.clone(),
        listen: vec!["/ip4/127.0.0.1/tcp/0".parse().unwrap()],
        bootnodes: vec![],
        net: NetOptions { mdns: false, ..NetOptions::default() },
        wait_peers: 1,
        wait_timeout: Duration::from_secs(30),
        rounds: Some(2),
        key: Some(SigningKey::from_bytes(&[1; 32])),
        evaluate: false,
        evaluate_every: 1,
        checkpoint_every: 1,
        data: Default::default(),
    };
    let node = tokio::spawn(run_node(options, Some(events_tx), stop_rx));
    let address = match tokio::time::timeout(Duration::from_secs(30), events.recv()).await {
        Ok(Some(NodeEvent::Listening { address, .. })) => address,
        other => panic!("node did not start listening: {other:?}"),
    };

    // The attacker: a real libp2p peer of the run with its own key.
    let attacker_key = SigningKey::from_bytes(&[2; 32]);
    let mut registry = Default::default();
    let mut attacker = net::build_swarm(
        &attacker_key,
        &spec,
        &NetOptions { mdns: false, ..Default::default() },
        &mut registry,
    )
    .unwrap();
    let topic = net::delta_topic(&spec);
    attacker.behaviour_mut().gossipsub.subscribe(&topic).unwrap();
    attacker.dial(address).unwrap();
    tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            if let SwarmEvent::Behaviour(BehaviourEvent::Gossipsub(gossipsub::Event::Subscribed {
                topic: t,
                ..
            })) = attacker.select_next_some().await
            {
                if t == topic.hash() {
                    break;
                }
            }
        }
    })
    .await
    .expect("the node subscribes to the run topic");

    let params = spec.param_count();
    let run = spec.run_id();
    // Signed by one key while claiming another sender.
    let mut forged = delta(&SigningKey::from_bytes(&[3; 32]), run, 0, [0; 32], params);
    forged.header.sender = PublicKey::of(&attacker_key);
    // Correctly signed, but for another run.
    let other_run = delta(&attacker_key, RunId([0xAA; 32]), 0, [0; 32], params);
    for d in [forged, other_run] {
        attacker.behaviour_mut().gossipsub.publish(topic.clone(), d.to_bytes()).expect("published");
    }

    // The control that shows the peer's deltas do get merged: a valid delta
    // for round 1, trained (as far as the node can tell) from the state the
    // node holds then, which the node's own delta of round 1 names.
    let mut sent_valid = false;
    let mut merged_by_round = Vec::new();
    let outcome = tokio::time::timeout(Duration::from_secs(90), async {
        let mut node = node;
        loop {
            tokio::select! {
                event = attacker.select_next_some() => {
                    if let SwarmEvent::Behaviour(BehaviourEvent::Gossipsub(gossipsub::Event::Message { message, .. })) = event {
                        let theirs = starling_protocol::wire::decode_delta(&message.data, usize::MAX).ok();
                        if let Some(base) = theirs.filter(|d| !sent_valid && d.header.round == 1).map(|d| d.header.base) {
                            let valid = delta(&attacker_key, run, 1, base, params);
                            attacker.behaviour_mut().gossipsub.publish(topic.clone(), valid.to_bytes()).expect("published");
                            sent_valid = true;
                        }
                    }
                }
                Some(NodeEvent::Round(report)) = events.recv() => merged_by_round.push((report.round, report.merged)),
                result = &mut node => break result.unwrap().unwrap(),
            }
        }
    })
    .await
    .expect("the node finishes its two rounds");

    assert_eq!(
        merged_by_round,
        vec![(0, 1), (1, 2)],
        "round 0 merges only our own delta; round 1 also the valid one"
    );
    assert_eq!(outcome.refused_deltas, 2, "both bad deltas are refused");
}
