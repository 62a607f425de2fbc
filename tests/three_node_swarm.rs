//! Three separate `starling run` processes on 127.0.0.1, the second and third
//! bootstrapped from the first, train together: every node ends more accurate
//! than the best node trained alone on its shard, and all hold the same model.

mod common;

use std::time::Duration;

use common::{test_spec, write_spec, NodeProcess};
use starling_protocol::{consensus_distance, PublicKey};
use starling_storage::Store;
use starling_training::{
    data::SyntheticTask,
    datasets::shard_seed,
    model::Mlp,
    trainer::{train_alone, Trainer},
};

const ROUNDS: u64 = 8;

#[test]
fn three_processes_beat_training_alone_and_agree() {
    let dir = tempfile::tempdir().unwrap();
    let spec = test_spec("three-node-swarm");
    let spec_path = write_spec(dir.path(), &spec);
    let rounds = ROUNDS.to_string();
    let datadirs: Vec<String> =
        (0..3).map(|i| dir.path().join(format!("node-{i}")).to_str().unwrap().to_string()).collect();
    let args = |i: usize| -> Vec<&str> {
        vec![
            "run",
            "--datadir",
            &datadirs[i],
            "--spec",
            &spec_path,
            "--listen",
            "/ip4/127.0.0.1/tcp/0",
            "--no-mdns",
            "--wait-peers",
            "2",
            "--wait-timeout",
            "60",
            "--rounds",
            &rounds,
        ]
    };
    let mut first = NodeProcess::start("node-0", &args(0));
    let boot = first.tcp_address();
    let mut nodes = vec![first];
    for i in 1..3 {
        let mut a = args(i);
        a.extend(["--bootnodes", &boot]);
        nodes.push(NodeProcess::start(&format!("node-{i}"), &a));
    }
    for node in &mut nodes {
        node.wait_exit(Duration::from_secs(300));
    }

    // Read each node's final state back from its datadir, offline.
    let task = SyntheticTask::new(&spec).unwrap();
    let eval = task.eval_set().into();
    let mut finals = Vec::new();
    let mut keys = Vec::new();
    for datadir in &datadirs {
        let store = Store::open(std::path::Path::new(datadir)).unwrap();
        let state =
            store.latest_checkpoint(spec.param_count()).unwrap().checkpoint.expect("a checkpoint").state;
        assert_eq!(state.round, ROUNDS, "{datadir} stopped at round {}", state.round);
        keys.push(PublicKey::of(&store.identity().unwrap()));
        finals.push(state.params);
    }
    let evaluator = Trainer::new(&spec, task.shard(0, 1), 0).unwrap();
    let swarm_acc: Vec<f32> = finals.iter().map(|p| evaluator.evaluate(p, &eval).unwrap().accuracy).collect();

    // Each node trained alone on its own shard for the same number of local steps.
    let initial =
        Mlp::initial_params(spec.model.mlp_layers().expect("the built-in model is an MLP"), spec.seed);
    let steps = ROUNDS * spec.inner.steps as u64;
    let best_alone = keys
        .iter()
        .map(|key| {
            let shard = task.shard(shard_seed(key), spec.dataset.samples_per_node);
            let params = train_alone(&spec, shard, &initial, steps, shard_seed(key)).unwrap();
            evaluator.evaluate(&params, &eval).unwrap().accuracy
        })
        .fold(0.0f32, f32::max);
    for (i, acc) in swarm_acc.iter().enumerate() {
        assert!(
            *acc > best_alone,
            "node {i} reached {acc:.4}, not above the best lone node's {best_alone:.4}"
        );
    }
    let views: Vec<&[f32]> = finals.iter().map(|p| p.as_slice()).collect();
    let distance = consensus_distance(&views);
    assert!(distance < 1e-3, "nodes disagree: consensus distance {distance:.3e}");
}
