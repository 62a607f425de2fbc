//! Connection upkeep with real processes: a node below `--target-peers` dials
//! a run peer it knew again once that peer is gone, waiting longer after each
//! failed dial, and reconnects by itself when the peer comes back at the same
//! address (the peer, restarted with no bootnodes, could not find it).

mod common;

use std::time::Duration;

use common::{run_args, test_spec, write_spec, NodeProcess};

fn args(list: &[String]) -> Vec<&str> {
    list.iter().map(String::as_str).collect()
}

#[test]
fn a_node_redials_a_lost_peer_until_it_is_back() {
    let dir = tempfile::tempdir().unwrap();
    let d = |name: &str| dir.path().join(name).to_str().unwrap().to_string();
    let spec_path = write_spec(dir.path(), &test_spec("redial"));

    // A waits for peers that never come, so it only holds its connections.
    let a_args = run_args(&d("a"), &spec_path, &["--wait-peers", "9", "--wait-timeout", "3600"]);
    let mut a = NodeProcess::start("redial-a", &args(&a_args));
    let a_address = a.tcp_address();
    let listen = a_address.split("/p2p/").next().unwrap().to_string();
    let a_peer = a_address.split("/p2p/").nth(1).unwrap().to_string();

    // B starts its rounds with A, so it is past gathering (no DHT lookups on
    // every tick): only the upkeep can bring A back.
    let b_args = run_args(
        &d("b"),
        &spec_path,
        &["--bootnodes", &a_address, "--wait-peers", "1", "--wait-timeout", "60", "--target-peers", "2"],
    );
    let mut b = NodeProcess::start("redial-b", &args(&b_args));
    b.wait_merged(0, Duration::from_secs(120));

    a.kill_hard();
    let line = b.wait_for_line("dialling a known peer again", Duration::from_secs(30));
    assert!(line.contains(&a_peer), "{line}");

    let mut a_args = run_args(&d("a"), &spec_path, &["--wait-peers", "9", "--wait-timeout", "3600"]);
    let at = a_args.iter().position(|x| x == "--listen").unwrap() + 1;
    a_args[at] = listen;
    let mut a = NodeProcess::start("redial-a-again", &args(&a_args));
    assert_eq!(a.tcp_address(), a_address, "A restarts at the same address with the same key");
    let line = b.wait_for_line("reconnected to a known peer", Duration::from_secs(90));
    assert!(line.contains(&a_peer), "{line}");
}
