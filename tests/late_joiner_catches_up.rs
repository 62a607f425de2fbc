//! A node started 20 rounds after three others fetches the swarm's state in
//! chunks, verified against what at least two peers announce, then trains with
//! them; all four end at the same round with bit-identical parameters.

mod common;

use std::time::Duration;

use common::{field, inspect, run_args, test_spec, write_spec, NodeProcess};

const LATE_BY: u64 = 20;
const ROUNDS: u64 = LATE_BY + 8;

#[test]
fn a_node_twenty_rounds_late_catches_up_and_agrees() {
    let dir = tempfile::tempdir().unwrap();
    let spec_path = write_spec(dir.path(), &test_spec("late-joiner-catches-up"));
    let datadirs: Vec<String> =
        (0..4).map(|i| dir.path().join(format!("node-{i}")).to_str().unwrap().to_string()).collect();
    let rounds = ROUNDS.to_string();
    let start = |i: usize, boot: Option<&str>, wait: &str| {
        let mut extra = vec!["--rounds", &rounds, "--wait-peers", wait, "--wait-timeout", "120"];
        if let Some(boot) = boot {
            extra.extend(["--bootnodes", boot]);
        }
        let args = run_args(&datadirs[i], &spec_path, &extra);
        NodeProcess::start(&format!("node-{i}"), &args.iter().map(String::as_str).collect::<Vec<_>>())
    };
    let mut first = start(0, None, "2");
    let boot = first.tcp_address();
    let mut nodes = [first, start(1, Some(&boot), "2"), start(2, Some(&boot), "2")];
    nodes[0].wait_merged(LATE_BY - 1, Duration::from_secs(240));

    let mut late = start(3, Some(&boot), "3");
    for node in nodes.iter_mut().chain([&mut late]) {
        node.wait_exit(Duration::from_secs(240));
    }
    let log = late.log();
    let fetch =
        log.lines().find(|l| l.contains("fetching the state several peers announce")).unwrap_or_else(|| {
            panic!("the late node never fetched state:\n{log}");
        });
    let peers: usize = field(fetch, "peers").and_then(|p| p.parse().ok()).unwrap();
    assert!(peers >= 2, "the state was fetched on the word of {peers} peer(s): {fetch}");
    let installed = log.lines().find(|l| l.contains("installed the state of the swarm")).unwrap();
    let to: u64 = field(installed, "to").and_then(|p| p.parse().ok()).unwrap();
    assert!(to >= LATE_BY, "installed round {to}, not the swarm's: {installed}");
    assert!(
        late.merged_rounds().iter().any(|(_, merged, _)| *merged == 4),
        "the late node never trained with the others:\n{log}"
    );

    let states: Vec<serde_json::Value> = datadirs.iter().map(|d| inspect(d)).collect();
    for (i, s) in states.iter().enumerate() {
        assert_eq!(s["healthy"], true, "node-{i}: {s}");
        assert_eq!(s["round"].as_u64(), Some(ROUNDS), "node-{i}: {s}");
        assert_eq!(s["params_hash"], states[0]["params_hash"], "node-{i} disagrees with node-0");
    }
}
