//! A real partition: five `starling run` processes in two network namespaces
//! joined by one veth pair (all traffic stays inside them). The link goes down:
//! both sides keep merging rounds without the other. It comes back up: the
//! swarm agrees again (the side behind syncs the most advanced state at least
//! two peers announce, or the minority adopts the majority's lineage), and all
//! five end at the same round with bit-identical parameters.
//!
//! Needs root and `ip netns`; skips with a printed reason otherwise.

mod common;

use std::time::{Duration, Instant};

use common::{
    inspect,
    netns::{ip, Namespaces},
    test_spec, write_spec, NodeProcess,
};

/// Two namespaces, `a` and `b`, joined by one veth pair.
struct Partitionable {
    net: Namespaces,
    sides: [String; 2],
}

const ADDRESSES: [&str; 2] = ["10.231.77.1", "10.231.77.2"];

impl Partitionable {
    fn create() -> Result<Self, String> {
        let net = Namespaces::create("prt", &["a", "b"])?;
        net.connect("a", &format!("{}/24", ADDRESSES[0]), "b", &format!("{}/24", ADDRESSES[1]))?;
        Ok(Self { sides: [net.name("a"), net.name("b")], net })
    }

    /// Takes the link between the sides down (or up): nothing crosses while it is down.
    fn set_link(&self, up: bool) {
        let state = if up { "up" } else { "down" };
        for (side, other) in [("a", "b"), ("b", "a")] {
            ip(&["-n", &self.net.name(side), "link", "set", &self.net.link(side, other), state]).unwrap();
        }
    }
}

fn listen_address(node: &mut NodeProcess, host: &str) -> String {
    let line = node.wait_for_line(&format!("listening address=/ip4/{host}/tcp/"), Duration::from_secs(30));
    line.split("address=").nth(1).unwrap().split_whitespace().next().unwrap().to_string()
}

/// Waits until every node in `nodes` has merged `round`.
fn all_merged(nodes: &mut [NodeProcess], round: u64, timeout: Duration) {
    for node in nodes {
        node.wait_merged(round, timeout);
    }
}

#[test]
fn a_partition_between_namespaces_heals_and_the_swarm_agrees_again() {
    let net = match Partitionable::create() {
        Ok(net) => net,
        Err(reason) => {
            println!("skipped: cannot make network namespaces ({reason}); needs root and iproute2");
            return;
        }
    };
    let dir = tempfile::tempdir().unwrap();
    let mut spec = test_spec("partition-netns");
    spec.round.deadline_ms = 2_000;
    let spec_path = write_spec(dir.path(), &spec);
    const ROUNDS: u64 = 80;
    let rounds = ROUNDS.to_string();
    // Three nodes on side a, two on side b.
    let side_of = |i: usize| usize::from(i >= 3);
    let datadirs: Vec<String> =
        (0..5).map(|i| dir.path().join(format!("node-{i}")).to_str().unwrap().to_string()).collect();
    let mut nodes: Vec<NodeProcess> = Vec::new();
    let mut boot = String::new();
    for (i, datadir) in datadirs.iter().enumerate() {
        let side = side_of(i);
        let listen = format!("/ip4/{}/tcp/0", ADDRESSES[side]);
        let mut args = vec![
            "run",
            "--datadir",
            datadir,
            "--spec",
            &spec_path,
            "--listen",
            &listen,
            "--no-mdns",
            "--wait-peers",
            "4",
            "--wait-timeout",
            "120",
            "--rounds",
            &rounds,
        ];
        if i > 0 {
            args.extend(["--bootnodes", &boot]);
        }
        let mut node = NodeProcess::start_in_netns(&net.sides[side], &format!("node-{i}"), &args);
        if i == 0 {
            boot = listen_address(&mut node, ADDRESSES[0]);
        }
        nodes.push(node);
    }
    all_merged(&mut nodes, 2, Duration::from_secs(120));
    assert!(nodes[0].merged_rounds().iter().any(|(_, m, _)| *m == 5), "{}", nodes[0].log());

    net.set_link(false);
    let cut = nodes.iter().map(|n| n.last_merged().unwrap()).max().unwrap();
    // Both sides keep training on their own.
    all_merged(&mut nodes, cut + 4, Duration::from_secs(60));
    for (i, node) in nodes.iter().enumerate() {
        let alone = node.merged_rounds().into_iter().filter(|(r, _, _)| *r > cut + 1).map(|(_, m, _)| m);
        let expected = if side_of(i) == 0 { 3 } else { 2 };
        assert!(alone.clone().all(|m| m <= expected), "node-{i} merged deltas from across the cut");
    }

    let healed = Instant::now();
    let heal_round = nodes.iter().map(|n| n.last_merged().unwrap()).max().unwrap();
    net.set_link(true);
    for node in &mut nodes {
        node.wait_exit(Duration::from_secs(240));
    }
    println!("healed; all five reached round {ROUNDS} in {:.1} s", healed.elapsed().as_secs_f64());
    let states: Vec<serde_json::Value> = datadirs.iter().map(|d| inspect(d)).collect();
    for (i, s) in states.iter().enumerate() {
        assert_eq!(s["round"].as_u64(), Some(ROUNDS), "node-{i}: {s}");
        assert_eq!(
            s["params_hash"], states[0]["params_hash"],
            "node-{i} disagrees with node-0 after the heal"
        );
    }
    // After the heal, all five merge the same rounds together again.
    let together = (heal_round..ROUNDS)
        .find(|r| nodes.iter().all(|n| n.merged_rounds().iter().any(|(round, m, _)| round == r && *m == 5)))
        .unwrap_or_else(|| panic!("no round after the heal was merged by all five:\n{}", nodes[0].log()));
    println!(
        "partition at round {cut}, healed at round {heal_round}; first round all five merged together: {together} ({} rounds after the heal)",
        together - heal_round
    );
}
