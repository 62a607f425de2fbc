//! A node stopped after publishing its delta for a round, before merging it,
//! publishes the very same delta when it restarts into that round. Training
//! again would sign a different delta (the batch sampler starts afresh), a
//! second delta for the round, and peers ban a key that equivocates.

mod common;

use std::time::Duration;

use common::raw_peer::RawPeer;
use ed25519_dalek::SigningKey;
use starling_node::{
    net::NetOptions,
    node::{run_node_with, HarnessHooks, NodeEvent, NodeOptions},
};
use starling_protocol::{wire, PublicKey};
use tokio::sync::{mpsc, watch};

/// Runs the node until it waits in vain for a raw peer's delta; stops it and
/// returns the round it was in and the delta it published for that round.
/// With `train_alone_first`, the node trains round 0 alone and the peer
/// connects afterwards, so that the node waits from a later round on.
async fn run_until_stalled(options: NodeOptions, peer_seed: u8, train_alone_first: bool) -> (u64, Vec<u8>) {
    let me = PublicKey::of(options.key.as_ref().unwrap());
    let spec = options.spec.clone();
    let (events_tx, mut events) = mpsc::unbounded_channel();
    let (stop, stop_rx) = watch::channel(false);
    let node = tokio::spawn(run_node_with(options, HarnessHooks::default(), Some(events_tx), stop_rx));
    let address = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            if let Some(NodeEvent::Listening { address, .. }) = events.recv().await {
                return address;
            }
        }
    })
    .await
    .expect("the node listens within 30 s");
    if train_alone_first {
        tokio::time::timeout(Duration::from_secs(60), async {
            loop {
                if let Some(NodeEvent::Round(r)) = events.recv().await {
                    if r.round == 0 {
                        return;
                    }
                }
            }
        })
        .await
        .expect("the node merges round 0 alone within 60 s");
    }
    let peer = RawPeer::connect(peer_seed, &spec, address, &[]).await;
    // The peer never sends a delta: the node stalls in the first round that expects it.
    let mut stalled_at = None;
    tokio::time::timeout(Duration::from_secs(60), async {
        loop {
            if let Ok(Some(NodeEvent::Round(r))) =
                tokio::time::timeout(Duration::from_secs(3), events.recv()).await
            {
                stalled_at = Some(r.round + 1);
                continue;
            }
            let round = stalled_at.unwrap_or(0);
            if peer.received().iter().any(|b| {
                wire::decode_delta(b, usize::MAX)
                    .is_ok_and(|d| d.header.sender == me && d.header.round >= round)
            }) {
                return;
            }
        }
    })
    .await
    .expect("the node publishes a delta for the round it stalls in within 60 s");
    stop.send(true).unwrap();
    let outcome = tokio::time::timeout(Duration::from_secs(30), node)
        .await
        .expect("the node stops within 30 s")
        .unwrap()
        .expect("the node runs");
    let round = outcome.state.round;
    let published = peer
        .received()
        .into_iter()
        .find(|b| {
            wire::decode_delta(b, usize::MAX).is_ok_and(|d| d.header.sender == me && d.header.round == round)
        })
        .expect("the peer holds the node's delta for the round it stopped in");
    (round, published)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_into_a_published_round_publishes_the_same_delta() {
    let mut spec = common::test_spec("restart-same-delta");
    spec.round.deadline_ms = 600_000;
    let dir = tempfile::tempdir().unwrap();
    let options = NodeOptions {
        datadir: dir.path().join("node"),
        spec,
        listen: vec!["/ip4/127.0.0.1/tcp/0".parse().unwrap()],
        bootnodes: vec![],
        net: NetOptions { mdns: false, ..NetOptions::default() },
        wait_peers: 0,
        wait_timeout: Duration::from_secs(60),
        rounds: Some(10),
        key: Some(SigningKey::from_bytes(&[60; 32])),
        evaluate: false,
        evaluate_every: 1,
        checkpoint_every: 1,
        data: Default::default(),
    };
    let (round, before) = run_until_stalled(options.clone(), 61, true).await;
    assert!(round >= 1, "the node stalls after training from its own sampler state");
    let restarted = NodeOptions { wait_peers: 1, ..options };
    let (again, after) = run_until_stalled(restarted, 62, false).await;
    assert_eq!(again, round, "the node resumes in the round it stopped in");
    assert!(before == after, "the restarted node signed a different delta for round {round}");
}
