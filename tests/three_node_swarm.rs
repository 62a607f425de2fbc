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
fn three_processes_agree_when_every_delta_travels_apart_from_gossip() {
    // --pull-above 0: every delta is announced on gossip and its payload fetched
    // from the peer that forwarded the announcement. Node 2 is bootstrapped from node 1 alone.
    let dir = tempfile::tempdir().unwrap();
    let spec = test_spec("three-node-pull");
    let spec_path = write_spec(dir.path(), &spec);
    let rounds = "4";
    let path = |what: String| dir.path().join(what).to_str().unwrap().to_string();
    let datadirs: Vec<String> = (0..3).map(|i| path(format!("node-{i}"))).collect();
    let summaries: Vec<String> = (0..3).map(|i| path(format!("summary-{i}.json"))).collect();
    let args = |i: usize, boot: Option<String>| -> Vec<String> {
        let wait = if i == 1 { "2" } else { "1" };
        let mut extra = vec!["--wait-peers", wait, "--wait-timeout", "60", "--rounds", rounds];
        extra.extend(["--pull-above", "0", "--summary", &summaries[i]]);
        let mut args = common::run_args(&datadirs[i], &spec_path, &extra);
        args.extend(boot.into_iter().flat_map(|boot| ["--bootnodes".to_string(), boot]));
        args
    };
    let start = |i: usize, boot: Option<String>| {
        let args = args(i, boot);
        NodeProcess::start(&format!("node-{i}"), &args.iter().map(String::as_str).collect::<Vec<_>>())
    };
    let mut nodes = vec![start(0, None)];
    for i in 1..3 {
        let boot = nodes[i - 1].tcp_address();
        nodes.push(start(i, Some(boot)));
    }
    for node in &mut nodes {
        node.wait_exit(Duration::from_secs(300));
    }
    let mut finals = Vec::new();
    for (datadir, summary) in datadirs.iter().zip(&summaries) {
        let store = Store::open(std::path::Path::new(datadir)).unwrap();
        let state =
            store.latest_checkpoint(spec.param_count()).unwrap().checkpoint.expect("a checkpoint").state;
        assert_eq!(state.round, 4, "{datadir} stopped at round {}", state.round);
        finals.push(state.params);
        let summary: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(summary).unwrap()).unwrap();
        let (published, pulled) =
            (summary["published_bytes"].as_u64().unwrap(), summary["pulled_bytes"].as_u64().unwrap());
        // It fetched its two peers' payloads, at least one round's worth, and
        // each once: no more than two peers' deltas of every round.
        assert!(pulled >= 2 * spec.param_count() as u64 * 4, "{datadir} pulled only {pulled} bytes");
        assert!(
            pulled <= 2 * published,
            "{datadir} pulled {pulled} bytes; its peers published at most {published} each"
        );
    }
    let views: Vec<&[f32]> = finals.iter().map(|p| p.as_slice()).collect();
    let distance = consensus_distance(&views);
    assert!(distance < 1e-6, "nodes disagree: consensus distance {distance:.3e}");
}

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
