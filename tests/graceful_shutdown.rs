//! SIGTERM stops a node within a bounded time, and it tells its peers on the
//! way out (a signed leave notice, then its connections close): they stop
//! expecting its deltas at once rather than wait out the round deadline. A second signal exits at once.

mod common;

use std::time::{Duration, Instant};

use common::{run_args, test_spec, write_spec, NodeProcess};

#[test]
fn sigterm_leaves_in_bounded_time_and_the_others_carry_on_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let spec_path = write_spec(dir.path(), &test_spec("graceful-shutdown"));
    let datadirs: Vec<String> =
        (0..3).map(|i| dir.path().join(format!("node-{i}")).to_str().unwrap().to_string()).collect();
    let start = |i: usize, boot: Option<&str>| {
        let mut extra = vec!["--wait-peers", "2", "--wait-timeout", "120"];
        if let Some(boot) = boot {
            extra.extend(["--bootnodes", boot]);
        }
        let args = run_args(&datadirs[i], &spec_path, &extra);
        NodeProcess::start(&format!("node-{i}"), &args.iter().map(String::as_str).collect::<Vec<_>>())
    };
    let mut first = start(0, None);
    let boot = first.tcp_address();
    let mut nodes = vec![first, start(1, Some(&boot)), start(2, Some(&boot))];
    for node in &mut nodes {
        node.wait_merged(2, Duration::from_secs(180));
    }
    // The leaver says goodbye to its direct peers by closing its connections,
    // and to everyone by a signed leave notice on the run's leave topic. Here
    // it waits until the leaver is a direct peer of both (nodes 1 and 2 only
    // dial node 0; they meet through Kademlia), so that the round timing below
    // does not depend on when they meet; the case of a node that knows the
    // leaver only through relayed deltas is the netsim scenario
    // `graceful-leave` (tests/netsim_scenarios.rs), deterministic and cheap.
    for node in &mut nodes {
        node.wait_for_line(" peers=2", Duration::from_secs(60));
    }
    let asked = Instant::now();
    nodes[2].terminate();
    assert_eq!(nodes[2].wait_status(Duration::from_secs(10)), Some(0), "{}", nodes[2].log());
    let took = asked.elapsed();
    assert!(took < Duration::from_secs(5), "SIGTERM took {took:?}");
    assert!(nodes[2].log().contains("left the run"), "{}", nodes[2].log());
    assert!(nodes[2].log().contains("told the run we leave"), "{}", nodes[2].log());
    let left_at = nodes[0].last_merged().unwrap().max(nodes[1].last_merged().unwrap());

    // Both heard its notice (it went out before the connections closed).
    for node in &mut nodes[..2] {
        node.wait_for_line("a peer leaves the run", Duration::from_secs(10));
    }
    // The round deadline is 30 s: rounds that close by quorum of two were not waiting for the leaver.
    for (i, node) in nodes.iter_mut().enumerate().take(2) {
        node.wait_merged(left_at + 4, Duration::from_secs(25));
        let after: Vec<_> = node.merged_rounds().into_iter().filter(|(r, _, _)| *r > left_at + 1).collect();
        assert!(
            after.iter().all(|(_, merged, reason)| *merged == 2 && reason == "Quorum"),
            "node-{i} after the leave: {after:?}"
        );
    }
}

#[test]
fn a_second_signal_exits_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let spec_path = write_spec(dir.path(), &test_spec("second-signal"));
    let datadir = dir.path().join("node").to_str().unwrap().to_string();
    let args = run_args(&datadir, &spec_path, &["--wait-peers", "1", "--wait-timeout", "600"]);
    let mut node = NodeProcess::start("node", &args.iter().map(String::as_str).collect::<Vec<_>>());
    node.wait_for_line("node started", Duration::from_secs(60));
    node.terminate();
    // While it leaves the run (it lets its last messages go for a fixed
    // LEAVE_TIME after this line), a second signal.
    node.wait_for_line("shutting down", Duration::from_secs(10));
    let asked = Instant::now();
    node.interrupt();
    let code = node.wait_status(Duration::from_secs(5));
    assert_eq!(code, Some(130), "{}", node.log());
    assert!(node.log().contains("second signal"), "{}", node.log());
    assert!(asked.elapsed() < Duration::from_secs(1), "the second signal took {:?}", asked.elapsed());
}
