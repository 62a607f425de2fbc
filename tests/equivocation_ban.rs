//! An equivocating key (two different deltas signed for one round) is banned by
//! every honest node of a three-node swarm, whether it saw both deltas or only
//! one and the gossiped proof; neither delta is merged; forged and wrong-run
//! deltas from another peer are refused and cost it gossipsub score, and a
//! replayed delta is never merged; and a restarted node still holds the ban.

mod common;

use std::time::{Duration, Instant};

use common::raw_peer::RawPeer;
use ed25519_dalek::SigningKey;
use libp2p::Multiaddr;
use starling_node::{
    net::{self, NetOptions},
    node::{run_node_with, HarnessHooks, NodeEvent, NodeOptions, NodeOutcome},
};
use starling_protocol::{Codec, PublicKey, RunId, SignedDelta};
use tokio::sync::{mpsc, watch};

const ROUNDS: u64 = 4;

fn delta(signer: &SigningKey, run: RunId, round: u64, params: usize, value: f32) -> SignedDelta {
    SignedDelta::sign(
        signer,
        run,
        round,
        [0; 32],
        64,
        Codec::Dense,
        Codec::Dense.encode(&vec![value; params]),
    )
}

/// The next event that `pick` selects, at most `timeout` away.
async fn next_event<T>(
    events: &mut mpsc::UnboundedReceiver<NodeEvent>,
    timeout: Duration,
    what: &str,
    mut pick: impl FnMut(NodeEvent) -> Option<T>,
) -> T {
    tokio::time::timeout(timeout, async {
        loop {
            if let Some(found) = pick(events.recv().await.expect("nodes are running")) {
                return found;
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("{what} within {timeout:?}"))
}

/// Waits (at most 60 s) until `node` has merged `round`, keeping every merge seen in `merged`.
async fn wait_merge(
    events: &mut mpsc::UnboundedReceiver<NodeEvent>,
    merged: &mut Vec<(PublicKey, u64, usize)>,
    node: PublicKey,
    round: u64,
) {
    next_event(events, Duration::from_secs(60), &format!("node merges round {round}"), |e| match e {
        NodeEvent::Round(r) => {
            merged.push((r.node, r.round, r.merged));
            (r.node == node && r.round == round).then_some(())
        }
        _ => None,
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_equivocating_key_is_banned_by_every_node_and_after_a_restart() {
    let _ =
        tracing_subscriber::fmt().with_env_filter(std::env::var("RUST_LOG").unwrap_or_default()).try_init();
    let mut spec = common::test_spec("equivocation-ban");
    spec.round.deadline_ms = 10_000;
    let (run, params) = (spec.run_id(), spec.param_count());
    let keys: Vec<SigningKey> = (1..=3u8).map(|i| SigningKey::from_bytes(&[i; 32])).collect();
    let honest: Vec<PublicKey> = keys.iter().map(PublicKey::of).collect();
    let dir = tempfile::tempdir().unwrap();
    let (events_tx, mut events) = mpsc::unbounded_channel();
    let (start, start_rx) = watch::channel(false);
    let (_stop, stop_rx) = watch::channel(false);
    let options = |i: usize, bootnodes: Vec<Multiaddr>| NodeOptions {
        datadir: dir.path().join(format!("node{i}")),
        spec: spec.clone(),
        listen: vec!["/ip4/127.0.0.1/tcp/0".parse().unwrap()],
        bootnodes,
        net: NetOptions { mdns: false, ..NetOptions::default() },
        wait_peers: 2,
        wait_timeout: Duration::from_secs(60),
        rounds: Some(ROUNDS),
        key: Some(keys[i].clone()),
        evaluate: false,
        evaluate_every: 1,
        checkpoint_every: 1,
        data: Default::default(),
    };
    let hooks = HarnessHooks { start: Some(start_rx), expected_peers: honest.clone(), ..Default::default() };
    let mut nodes = vec![tokio::spawn(run_node_with(
        options(0, vec![]),
        hooks.clone(),
        Some(events_tx.clone()),
        stop_rx.clone(),
    ))];
    let hub = next_event(&mut events, Duration::from_secs(30), "node 0 listens", |e| match e {
        NodeEvent::Listening { address, .. } => Some(address),
        _ => None,
    })
    .await;
    for i in 1..3 {
        let node = run_node_with(
            options(i, vec![hub.clone()]),
            hooks.clone(),
            Some(events_tx.clone()),
            stop_rx.clone(),
        );
        nodes.push(tokio::spawn(node));
    }
    // The equivocator and the forger reach the swarm through node 0 only.
    let equivocator = RawPeer::connect(20, &spec, hub.clone(), &honest[1..]).await;
    let forger = RawPeer::connect(21, &spec, hub.clone(), &honest[1..]).await;
    let forger_key = forger.public;
    // Nodes 1 and 2 must hear node 0's gossip (the proof it publishes): wait
    // until node 0 has them subscribed.
    let mut joined = std::collections::BTreeSet::new();
    while joined.len() < 2 {
        let peer =
            next_event(&mut events, Duration::from_secs(60), "nodes 1 and 2 join node 0", |e| match e {
                NodeEvent::RunPeerJoined { node, peer }
                    if node == honest[0] && honest[1..].contains(&peer) =>
                {
                    Some(peer)
                }
                _ => None,
            })
            .await;
        joined.insert(peer);
    }

    // Forged: signed by one key in another's name. Then a valid delta of another run.
    let topic = net::delta_topic(&spec);
    for value in [1.0, 2.0] {
        let mut forged = delta(&SigningKey::from_bytes(&[99; 32]), run, 0, params, value);
        forged.header.sender = forger.public;
        forger.publish(&topic, forged.to_bytes());
    }
    forger.publish(&topic, delta(&forger.key, RunId([0xAA; 32]), 0, params, 1.0).to_bytes());

    // Two different deltas for round 0, both validly signed by one key.
    let equivocation_sent = Instant::now();
    equivocator.publish(&topic, delta(&equivocator.key, run, 0, params, 0.5).to_bytes());
    equivocator.publish(&topic, delta(&equivocator.key, run, 0, params, -0.5).to_bytes());
    let mut bans = Vec::new();
    while bans.len() < 3 {
        let ban =
            next_event(&mut events, Duration::from_secs(30), "every honest node bans the equivocator", |e| {
                match e {
                    NodeEvent::Banned { node, key, round, caught } => Some((node, key, round, caught)),
                    _ => None,
                }
            })
            .await;
        assert_eq!(ban.1, equivocator.public, "only the equivocator is banned");
        bans.push(ban);
    }
    let banned_swarm_wide = equivocation_sent.elapsed();
    let caught_alone = bans.iter().filter(|b| b.3).count();
    assert!(bans.iter().any(|b| b.0 == honest[0] && b.3), "node 0 saw both deltas and caught it: {bans:?}");
    assert!(caught_alone < 3, "nodes 1 and 2 saw one delta at most; they banned on the proof: {bans:?}");
    println!(
        "equivocator banned by all 3 nodes {:.0} ms after it published, in round {}; {caught_alone} caught it, {} banned on the gossiped proof",
        banned_swarm_wide.as_secs_f64() * 1e3,
        bans.iter().map(|b| b.2).max().unwrap(),
        3 - caught_alone,
    );
    // The forger stays connected to the end: dropping it could cut its queued
    // messages before they leave. It sends nothing valid, so node 0 stops
    // waiting for it after two silent rounds.
    start.send(true).unwrap();

    // A replay: a listener records a delta of node 0's, and once node 0 has
    // merged that round, a newcomer sends it again.
    let mut merged = Vec::new();
    wait_merge(&mut events, &mut merged, honest[0], 0).await;
    let listener = RawPeer::connect(22, &spec, hub.clone(), &honest[1..]).await;
    let (replayed, replayed_round) = tokio::time::timeout(Duration::from_secs(60), async {
        loop {
            let found = listener.received().into_iter().find_map(|b| {
                let d = starling_protocol::wire::decode_delta(&b, usize::MAX).ok()?;
                (d.header.sender == honest[0]).then_some((b, d.header.round))
            });
            if let Some(found) = found {
                return found;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("node 0 publishes a delta to the listener within 60 s");
    assert!(replayed_round + 1 < ROUNDS, "the replay comes before the last round");
    wait_merge(&mut events, &mut merged, honest[0], replayed_round).await;
    let replayer = RawPeer::connect(23, &spec, hub.clone(), &honest[1..]).await;
    replayer.publish(&topic, replayed);

    let outcomes: Vec<NodeOutcome> = tokio::time::timeout(Duration::from_secs(120), async {
        let mut done = Vec::new();
        for node in nodes {
            let mut node = node;
            loop {
                tokio::select! {
                    Some(event) = events.recv() => if let NodeEvent::Round(r) = event { merged.push((r.node, r.round, r.merged)) },
                    result = &mut node => { done.push(result.unwrap().expect("node runs")); break; }
                }
            }
        }
        done
    })
    .await
    .expect("the swarm finishes its rounds within 120 s");
    drop(forger);
    while let Ok(event) = events.try_recv() {
        if let NodeEvent::Round(r) = event {
            merged.push((r.node, r.round, r.merged));
        }
    }

    assert_eq!(merged.len(), 3 * ROUNDS as usize, "every node merged every round: {merged:?}");
    assert!(merged.iter().all(|m| m.2 == 3), "only the three honest deltas are ever merged: {merged:?}");
    for outcome in &outcomes {
        assert_eq!(outcome.banned, vec![equivocator.public]);
        let honest_scores: Vec<f64> =
            outcome.peer_scores.iter().filter(|(k, _)| honest.contains(k)).map(|(_, s)| *s).collect();
        assert_eq!(honest_scores.len(), 2, "{:?}", outcome.peer_scores);
        assert!(
            honest_scores.iter().all(|&s| s >= 0.0),
            "honest peers keep a score >= 0: {:?}",
            outcome.peer_scores
        );
    }
    let hub_outcome = outcomes.iter().find(|o| o.node == honest[0]).unwrap();
    let refused = &hub_outcome.refused_by_reason;
    println!("node 0 refused {refused:?}; peer scores {:?}", hub_outcome.peer_scores);
    assert_eq!(refused.get("bad_signature"), Some(&2), "both forged deltas are refused: {refused:?}");
    assert_eq!(refused.get("wrong_run"), Some(&1), "the other run's delta is refused: {refused:?}");
    assert!(refused.get("equivocation").is_some_and(|&n| n >= 1), "{refused:?}");
    let score = |key: &PublicKey| hub_outcome.peer_scores.iter().find(|(k, _)| k == key).map(|(_, s)| *s);
    assert!(
        score(&forger_key).is_some_and(|s| s < 0.0),
        "the forger's score falls: {:?}",
        hub_outcome.peer_scores
    );
    assert!(
        score(&equivocator.public).is_some_and(|s| s < 0.0),
        "so does the equivocator's: {:?}",
        hub_outcome.peer_scores
    );

    // Restart node 1: it reloads the ban from its datadir before any gossip.
    let mut restarted = options(1, vec![]);
    restarted.wait_peers = 0;
    let outcome = tokio::time::timeout(
        Duration::from_secs(60),
        run_node_with(restarted, HarnessHooks::default(), None, stop_rx.clone()),
    )
    .await
    .expect("the restarted node stops within 60 s")
    .expect("the restarted node runs");
    assert_eq!(outcome.banned, vec![equivocator.public], "the ban survives the restart");
}
