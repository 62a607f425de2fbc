//! Differential privacy across a swarm: nodes spend their ε budget, then sit
//! rounds out while still merging, and a restarted node resumes its ε rather
//! than starting again from zero.

use std::{collections::BTreeMap, time::Duration};

use starling_node::local_swarm::{run_swarm, NodeRound, SwarmOptions};
use starling_protocol::privacy::{epsilon_for, PrivacyLevel, PrivacySpec};
use starling_protocol::{ModelSpec, RunSpec};
use tokio::sync::mpsc;

const NODES: usize = 3;

fn private_spec(level: PrivacyLevel) -> RunSpec {
    let mut spec = RunSpec::builtin();
    spec.name = format!("test-privacy-{level:?}");
    spec.model = ModelSpec::mlp(vec![32, 32, 10]);
    spec.dataset.samples_per_node = 256;
    spec.dataset.eval_samples = 256;
    spec.inner.steps = 5;
    spec.inner.batch_size = 32;
    // Rounds without any delta close at this deadline.
    spec.round.deadline_ms = 1_500;
    spec.privacy = Some(PrivacySpec {
        level,
        epsilon: 2.0,
        delta: 1e-5,
        clip: 1.0,
        noise_multiplier: None,
        rounds: Some(2),
    });
    spec
}

async fn swarm(spec: &RunSpec, rounds: u64, datadir: &std::path::Path) -> BTreeMap<u64, Vec<NodeRound>> {
    let (rounds_tx, mut rounds_rx) = mpsc::unbounded_channel();
    let options = SwarmOptions {
        seed: 5,
        datadir: Some(datadir.to_path_buf()),
        rounds_tx: Some(rounds_tx),
        stall_timeout: Duration::from_secs(60),
        ..SwarmOptions::live(NODES, rounds, spec.clone())
    };
    let summary = tokio::time::timeout(Duration::from_secs(180), run_swarm(options))
        .await
        .expect("the swarm finishes within three minutes")
        .expect("the swarm runs");
    assert!(summary.epsilon.is_some_and(|e| e <= 2.0), "{:?}", summary.epsilon);
    let mut by_round: BTreeMap<u64, Vec<NodeRound>> = BTreeMap::new();
    while let Ok(report) = rounds_rx.try_recv() {
        by_round.entry(report.round).or_default().push(report);
    }
    by_round
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_stop_contributing_when_the_budget_is_spent_and_keep_it_across_restarts() {
    for level in [PrivacyLevel::Record, PrivacyLevel::Node] {
        let dir = tempfile::tempdir().unwrap();
        let spec = private_spec(level);
        let by_round = swarm(&spec, 3, dir.path()).await;
        assert_eq!(by_round.keys().copied().collect::<Vec<_>>(), vec![0, 1, 2], "{level:?}");
        let spent = by_round[&1][0].epsilon.unwrap();
        // Two rounds fit the budget: every node contributes to both, then none can.
        for round in [0, 1] {
            for r in &by_round[&round] {
                assert_eq!(r.merged, NODES, "{level:?}: node {} round {round}", r.node);
                assert!(r.epsilon.unwrap() <= 2.0 && r.epsilon.unwrap() > 0.0);
            }
        }
        assert!(spent > 1.9, "{level:?}: the calibrated noise spends the budget: {spent}");
        for r in &by_round[&2] {
            assert_eq!(r.merged, 0, "{level:?}: node {} published with its budget spent", r.node);
            assert_eq!(r.epsilon, Some(spent), "{level:?}: sitting out spends nothing");
        }
        if level == PrivacyLevel::Node {
            // One Gaussian mechanism per round, no subsampling.
            let sigma = spec.privacy.as_ref().unwrap().noise_for(1.0, 1).unwrap();
            assert!((spent - epsilon_for(1.0, sigma, 2, 1e-5)).abs() < 1e-9);
        }
        // Restarted on the same datadirs, the nodes resume their ε and still abstain.
        let again = swarm(&spec, 4, dir.path()).await;
        assert_eq!(again.keys().copied().collect::<Vec<_>>(), vec![3], "{level:?}");
        for r in &again[&3] {
            assert_eq!((r.merged, r.epsilon), (0, Some(spent)), "{level:?}: node {}", r.node);
        }
    }
}
