//! Reachability through a relay, with real `starling run` processes on loopback.
//!
//! Node R runs `--relay-server` (for another run, so it forwards none of this
//! run's gossip: whatever A and B exchange crosses the relay circuit or a
//! direct connection they make themselves). Node A has no listener of its own,
//! like a node behind NAT: it listens only through R's circuit. Node B knows A
//! only by its `/p2p-circuit` address. They train together, and B's merged
//! rounds hold A's delta. A announces an `--external-addr`, which B sees in
//! A's identify info.
//!
//! A second test kills and restarts a relay given by `--relay`: the node
//! dials it again with backoff and wins a slot back.

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
    let (spec_path, relay_spec_path) = write_specs(&dir, "relay-reach");

    // R: a relay that never trains (it waits for peers of its own run that never come).
    let r_args = relay_args(&d("r"), &relay_spec_path, "/ip4/127.0.0.1/tcp/0");
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
            "info,starling_net::reach=debug",
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

/// Writes the spec of run `name` and of the relay's own run `name-relay` into
/// `dir`; returns their paths.
fn write_specs(dir: &tempfile::TempDir, name: &str) -> (String, String) {
    let write = |file: &str, run: &str| {
        let path = dir.path().join(file);
        std::fs::write(&path, test_spec(run).to_toml()).unwrap();
        path.to_str().unwrap().to_string()
    };
    (write("spec.toml", name), write("relay-spec.toml", &format!("{name}-relay")))
}

/// The `starling run` arguments of a relay server for a run of its own (so it
/// never trains: it waits for peers that never come), listening on `listen`.
fn relay_args(datadir: &str, spec_path: &str, listen: &str) -> Vec<String> {
    let mut args =
        run_args(datadir, spec_path, &["--relay-server", "--wait-peers", "9", "--wait-timeout", "3600"]);
    let at = args.iter().position(|a| a == "--listen").expect("run_args listens") + 1;
    args[at] = listen.to_string();
    args
}

/// Waits until `needle` appears in `node`'s log at least `count` times.
fn wait_for_count(node: &mut NodeProcess, needle: &str, count: usize, timeout: Duration) {
    let deadline = std::time::Instant::now() + timeout;
    while node.log().matches(needle).count() < count {
        assert!(
            std::time::Instant::now() < deadline,
            "{} did not log {needle:?} {count} times within {timeout:?}:\n{}",
            node.name,
            node.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A node given a relay by `--relay` loses its slot when the relay is killed,
/// cannot reach it while it is down, and wins a slot back once the relay
/// restarts at the same address with the same key.
#[test]
fn a_slot_on_a_relay_given_by_flag_is_won_back_after_the_relay_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let d = |name: &str| dir.path().join(name).to_str().unwrap().to_string();
    let (spec_path, relay_spec_path) = write_specs(&dir, "relay-restart");

    let mut r = NodeProcess::start(
        "restarted-relay",
        &args(&relay_args(&d("r"), &relay_spec_path, "/ip4/127.0.0.1/tcp/0")),
    );
    let relay = r.tcp_address();
    let listen = relay.split("/p2p/").next().unwrap().to_string();

    // A never trains either: it only keeps its slot.
    let a_args =
        run_args(&d("a"), &spec_path, &["--relay", &relay, "--wait-peers", "9", "--wait-timeout", "3600"]);
    let mut a = NodeProcess::start("relay-keeper", &args(&a_args));
    a.wait_for_line("reserved a slot on a relay", Duration::from_secs(30));

    r.kill_hard();
    a.wait_for_line("lost the slot on a relay", Duration::from_secs(30));
    a.wait_for_line("cannot reach the relay given by --relay; trying again", Duration::from_secs(30));

    let mut r =
        NodeProcess::start("restarted-relay-again", &args(&relay_args(&d("r"), &relay_spec_path, &listen)));
    assert_eq!(r.tcp_address(), relay, "the relay restarts at the same address with the same key");
    wait_for_count(&mut a, "reserved a slot on a relay", 2, Duration::from_secs(60));
    r.wait_for_line("relay server: reserved a slot for a peer", Duration::from_secs(10));
}
