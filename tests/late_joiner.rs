//! A node that joins a running swarm late fetches the current state from a peer
//! instead of starting at round 0, then trains and merges with the others.

mod common;

use std::time::Duration;

use starling_node::{
    net::NetOptions,
    node::{run_node, NodeEvent, NodeOptions},
};
use starling_protocol::{keys::node_key, round::CloseReason, PublicKey};
use tokio::sync::{mpsc, watch};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_joiner_syncs_state_and_then_agrees_with_the_swarm() {
    let _ =
        tracing_subscriber::fmt().with_env_filter(std::env::var("RUST_LOG").unwrap_or_default()).try_init();
    let spec = common::test_spec("late-joiner");
    let dir = tempfile::tempdir().unwrap();
    let (events_tx, mut events) = mpsc::unbounded_channel();
    let (_stop, stop_rx) = watch::channel(false);
    let options = |i: usize, bootnodes, wait_peers, rounds| NodeOptions {
        datadir: dir.path().join(format!("node-{i}")),
        spec: spec.clone(),
        listen: vec!["/ip4/127.0.0.1/tcp/0".parse().unwrap()],
        bootnodes,
        net: NetOptions { mdns: false, ..NetOptions::default() },
        wait_peers,
        wait_timeout: Duration::from_secs(30),
        rounds: Some(rounds),
        key: Some(node_key(99, i)),
        evaluate: false,
        evaluate_every: 1,
        checkpoint_every: 1,
        data: Default::default(),
    };
    const ROUNDS: u64 = 12;
    let mut addresses = Vec::new();
    let mut handles = Vec::new();
    for i in 0..2 {
        handles.push(tokio::spawn(run_node(
            options(i, addresses.clone(), i, ROUNDS),
            Some(events_tx.clone()),
            stop_rx.clone(),
        )));
        loop {
            match tokio::time::timeout(Duration::from_secs(30), events.recv()).await.expect("node listens") {
                Some(NodeEvent::Listening { address, .. }) => {
                    addresses.push(address);
                    break;
                }
                Some(_) => continue,
                None => panic!("node stopped"),
            }
        }
    }
    // Let the first two reach round 4 before the third starts.
    let mut seen_round = 0;
    tokio::time::timeout(Duration::from_secs(120), async {
        while seen_round < 4 {
            if let Some(NodeEvent::Round(report)) = events.recv().await {
                seen_round = seen_round.max(report.round);
            }
        }
    })
    .await
    .expect("the first two nodes advance");
    let late_key = PublicKey::of(&node_key(99, 2));
    handles.push(tokio::spawn(run_node(
        options(2, addresses.clone(), 1, ROUNDS),
        Some(events_tx.clone()),
        stop_rx.clone(),
    )));
    drop(events_tx);

    let mut late_rounds = Vec::new();
    let mut merged_with_late = 0;
    let mut history = Vec::new();
    let mut deadline_closes = 0;
    tokio::time::timeout(Duration::from_secs(240), async {
        while let Some(event) = events.recv().await {
            if let NodeEvent::Round(report) = event {
                history.push(format!(
                    "{} merged round {} from {} ({:?})",
                    report.node.short(),
                    report.round,
                    report.merged,
                    report.reason
                ));
                if report.reason != CloseReason::Quorum {
                    deadline_closes += 1;
                }
                if report.node == late_key {
                    late_rounds.push(report.round);
                } else if report.merged == 3 {
                    merged_with_late += 1;
                }
            }
        }
    })
    .await
    .expect("all nodes finish");
    let mut outcomes = Vec::new();
    for handle in handles {
        outcomes.push(handle.await.unwrap().expect("node runs to the end"));
    }
    let first = *late_rounds.first().expect("the late node merged rounds");
    assert!(first >= 4, "the late node started at round {first}, not from the swarm's state");
    assert!(merged_with_late > 0, "the others never merged the late node's deltas");
    assert_eq!(deadline_closes, 0, "no round waited for a node that never came:\n{}", history.join("\n"));
    for outcome in &outcomes {
        assert_eq!(outcome.state.round, ROUNDS);
    }
    assert!(
        outcomes.iter().all(|o| o.state.params == outcomes[0].state.params),
        "all three nodes hold bit-identical parameters at the end; merges after the late start:\n{}",
        history.join("\n")
    );
}
