//! Six `starling run` processes train together; two are killed with kill -9
//! mid-round, and the other four keep advancing rounds: their quorum shrinks to
//! who is still there at once (no round waits out its deadline for the dead).

mod common;

use std::time::Duration;

use common::{run_args, test_spec, write_spec, NodeProcess};

#[test]
fn killing_two_of_six_leaves_four_that_keep_advancing() {
    let dir = tempfile::tempdir().unwrap();
    let spec_path = write_spec(dir.path(), &test_spec("swarm-survives-kills"));
    let datadirs: Vec<String> =
        (0..6).map(|i| dir.path().join(format!("node-{i}")).to_str().unwrap().to_string()).collect();
    let mut first = {
        let args = run_args(&datadirs[0], &spec_path, &["--wait-peers", "5", "--wait-timeout", "120"]);
        NodeProcess::start("node-0", &args.iter().map(String::as_str).collect::<Vec<_>>())
    };
    let boot = first.tcp_address();
    let mut nodes = vec![first];
    for (i, datadir) in datadirs.iter().enumerate().skip(1) {
        let args = run_args(
            datadir,
            &spec_path,
            &["--wait-peers", "5", "--wait-timeout", "120", "--bootnodes", &boot],
        );
        nodes.push(NodeProcess::start(
            &format!("node-{i}"),
            &args.iter().map(String::as_str).collect::<Vec<_>>(),
        ));
    }
    for node in &mut nodes {
        node.wait_merged(2, Duration::from_secs(180));
    }
    // All six merged rounds together before the kill.
    assert!(nodes[0].merged_rounds().iter().any(|(_, merged, _)| *merged == 6), "{}", nodes[0].log());

    // Mid-round: node 0 has just merged a round, so the next one is under way.
    let before = nodes[0].last_merged().unwrap();
    nodes[0].wait_merged(before + 1, Duration::from_secs(60));
    std::thread::sleep(Duration::from_millis(150));
    nodes[2].kill_hard();
    nodes[5].kill_hard();
    let killed_at = [0, 1, 3, 4].iter().map(|&i| nodes[i].last_merged().unwrap()).max().unwrap();

    // Six more rounds, well within one round deadline (30 s) per round.
    let target = killed_at + 6;
    for &i in &[0, 1, 3, 4] {
        nodes[i].wait_merged(target, Duration::from_secs(90));
    }
    for &i in &[0, 1, 3, 4] {
        let late: Vec<_> =
            nodes[i].merged_rounds().into_iter().filter(|(r, _, _)| *r > killed_at + 1).collect();
        assert!(
            late.iter().all(|(_, merged, reason)| *merged == 4 && reason == "Quorum"),
            "node-{i} after the kill at round {killed_at}: {late:?}"
        );
    }
}
