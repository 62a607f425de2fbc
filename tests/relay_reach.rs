//! Reachability through a relay, with real `starling run` processes on loopback.
//!
//! Node R runs `--relay-server` (for another run, so it forwards none of this
//! run's gossip: whatever A and B exchange crosses the relay circuit or a
//! direct connection they make themselves). Node A has no listener of its own,
//! like a node behind NAT: it listens only through R's circuit. Node B knows A
//! only by its `/p2p-circuit` address. They train together, and B's merged
//! rounds hold A's delta. A announces an `--external-addr`, which B sees in
//! A's identify info.

mod common;

use std::time::Duration;

use common::{run_args, test_spec, NodeProcess};

const ROUNDS: u64 = 2;
/// A documentation address (TEST-NET-3): announced, never dialled successfully.
const EXTERNAL: &str = "/ip4/203.0.113.7/tcp/4001";

fn args(list: &[String]) -> Vec<&str> {
    list.iter().map(String::as_str).collect()
}

#[test]
fn a_node_reachable_only_through_a_relay_trains_with_a_peer() {
    let dir = tempfile::tempdir().unwrap();
    let d = |name: &str| dir.path().join(name).to_str().unwrap().to_string();
    let spec_path = d("spec.toml");
    std::fs::write(&spec_path, test_spec("relay-reach").to_toml()).unwrap();
    let relay_spec_path = d("relay-spec.toml");
    std::fs::write(&relay_spec_path, test_spec("relay-reach-relay").to_toml()).unwrap();

    // R: a relay that never trains (it waits for peers of its own run that never come).
    let r_args = run_args(
        &d("r"),
        &relay_spec_path,
        &["--relay-server", "--wait-peers", "9", "--wait-timeout", "3600"],
    );
    let mut r = NodeProcess::start("r", &args(&r_args));
    let relay = r.tcp_address();
    r.wait_for_line("relay server: announcing this listen address", Duration::from_secs(30));

    // A: listens only through the relay.
    let rounds = ROUNDS.to_string();
    let circuit_listen = format!("{relay}/p2p-circuit");
    let a_args: Vec<String> = [
        "run",
        "--datadir",
        &d("a"),
        "--spec",
        &spec_path,
        "--listen",
        &circuit_listen,
        "--no-mdns",
        "--external-addr",
        EXTERNAL,
        "--wait-peers",
        "1",
        "--rounds",
        &rounds,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let mut a = NodeProcess::start("a", &args(&a_args));
    a.wait_for_line("reserved a slot on a relay", Duration::from_secs(60));
    let line = a.wait_for_line("listening address=", Duration::from_secs(30));
    let a_circuit = common::field(&line, "address").expect("address field");
    assert!(a_circuit.contains("/p2p-circuit/p2p/"), "A listens through the relay only: {line}");
    r.wait_for_line("relay server: reserved a slot for a peer", Duration::from_secs(30));

    // B: dials A only through the relay.
    let b_args = run_args(
        &d("b"),
        &spec_path,
        &[
            "--bootnodes",
            &a_circuit,
            "--wait-peers",
            "1",
            "--rounds",
            &rounds,
            "--log",
            "info,starling_node::net::reach=debug",
        ],
    );
    let mut b = NodeProcess::start("b", &args(&b_args));
    b.wait_for_line("reached a peer through a relay", Duration::from_secs(60));
    r.wait_for_line("relay server: relaying a connection", Duration::from_secs(30));
    a.wait_for_line("a peer reached this node through a relay", Duration::from_secs(30));

    a.wait_exit(Duration::from_secs(240));
    b.wait_exit(Duration::from_secs(60));
    for node in [&a, &b] {
        let merged = node.merged_rounds();
        assert_eq!(merged.len(), ROUNDS as usize, "{}: {merged:?}\n{}", node.name, node.log());
        // Two deltas a round: the node's own and the other's (R is in another run).
        assert!(merged.iter().all(|(_, n, _)| *n == 2), "{}: {merged:?}\n{}", node.name, node.log());
    }

    // B saw A's announced external address in identify.
    let a_peer = a_circuit.rsplit("/p2p/").next().unwrap().to_string();
    let identified = b.log();
    assert!(
        identified
            .lines()
            .any(|l| l.contains("identified a peer") && l.contains(&a_peer) && l.contains(EXTERNAL)),
        "B never saw {EXTERNAL} in A's identify info:\n{identified}"
    );
    // Whether hole punching made the connection direct, for the report.
    for node in [&a, &b] {
        for line in node.log().lines().filter(|l| l.contains("hole punching")) {
            eprintln!("{}: {line}", node.name);
        }
    }
}
