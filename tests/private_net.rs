//! A private network (libp2p pnet, kubo's swarm.key): `starling spec new
//! --private` writes a key and records its fingerprint; two `starling run`
//! processes with the key train together (one finds it in its datadir, one is
//! given `--swarm-key`, and QUIC is dropped with a warning); peers with no key
//! or another key cannot complete a connection to them, so they never merge
//! from or list them; and the private spec refuses to start without its key or
//! with another one, naming `--swarm-key` and the datadir file.

mod common;

use std::{path::Path, process::Command, time::Duration};

use common::{run_args, NodeProcess};
use futures::StreamExt;
use libp2p::{swarm::SwarmEvent, Multiaddr};
use starling_node::net::{self, pnet, NetOptions};
use starling_protocol::RunSpec;

const ROUNDS: u64 = 2;

fn starling(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_starling")).args(args).output().expect("starling runs")
}

/// A peer outside the network dials `address` again and again for a while;
/// every attempt must fail before a connection is established.
async fn outsider_cannot_connect(
    spec: &RunSpec,
    swarm_key: Option<libp2p::pnet::PreSharedKey>,
    address: &Multiaddr,
) {
    let key = ed25519_dalek::SigningKey::from_bytes(&[if swarm_key.is_some() { 91 } else { 92 }; 32]);
    let options = NetOptions { mdns: false, swarm_key, ..NetOptions::default() };
    let mut outsider =
        net::build_swarm(&key, spec, &options, &mut Default::default()).expect("outsider builds");
    let mut failures = 0;
    outsider.dial(address.clone()).unwrap();
    tokio::time::timeout(Duration::from_secs(60), async {
        while failures < 3 {
            match outsider.select_next_some().await {
                SwarmEvent::ConnectionEstablished { peer_id, .. } => {
                    panic!("a peer with swarm key {swarm_key:?} connected to {peer_id}")
                }
                SwarmEvent::OutgoingConnectionError { .. } => {
                    failures += 1;
                    if failures < 3 {
                        outsider.dial(address.clone()).unwrap();
                    }
                }
                _ => {}
            }
        }
    })
    .await
    .expect("the outsider's dials fail within 60 s");
}

fn read_spec(path: &Path) -> RunSpec {
    RunSpec::from_toml(&std::fs::read_to_string(path).unwrap()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_nodes_with_the_swarm_key_connect_and_train() {
    let dir = tempfile::tempdir().unwrap();
    let d = |name: &str| dir.path().join(name).to_str().unwrap().to_string();

    // `spec new --private` writes swarm.key beside the spec and records its fingerprint.
    let made = starling(&["spec", "new", "--private", "--out", &d("made.toml")]);
    assert!(made.status.success(), "{}", String::from_utf8_lossy(&made.stderr));
    let key = pnet::read_key(&dir.path().join("swarm.key")).expect("spec new --private wrote a swarm key");
    let made_spec = read_spec(&dir.path().join("made.toml"));
    assert_eq!(made_spec.swarm_key_fingerprint, Some(pnet::fingerprint(&key)));
    // A second --private beside the same spec would overwrite the key: refused.
    let again = starling(&["spec", "new", "--private", "--out", &d("made.toml")]);
    assert!(!again.status.success() && String::from_utf8_lossy(&again.stderr).contains("--swarm-key"));
    // `--swarm-key FILE` records an existing key.
    let given = starling(&["spec", "new", "--swarm-key", &d("swarm.key")]);
    assert!(
        given.status.success() && String::from_utf8_lossy(&given.stdout).contains(&pnet::fingerprint(&key))
    );

    // The test's spec: the small test task, private with that key.
    let mut spec = common::test_spec("private-net");
    spec.swarm_key_fingerprint = made_spec.swarm_key_fingerprint.clone();
    let spec_path = d("spec.toml");
    std::fs::write(&spec_path, spec.to_toml()).unwrap();
    let wrong_key_path = d("wrong.key");
    pnet::write_key(Path::new(&wrong_key_path), pnet::generate_key()).unwrap();

    // Without its key, or with another one, the private spec does not start.
    for (name, extra) in [("nokey", vec![]), ("wrongkey", vec!["--swarm-key", wrong_key_path.as_str()])] {
        let datadir = d(name);
        let args = run_args(&datadir, &spec_path, &extra);
        let mut node = NodeProcess::start(name, &args.iter().map(String::as_str).collect::<Vec<_>>());
        assert_eq!(node.wait_status(Duration::from_secs(60)), Some(1), "{name} must refuse to start");
        let log = node.log();
        assert!(log.contains("--swarm-key") && log.contains("swarm.key"), "{name}: {log}");
    }

    // Node a finds the key in its datadir; node b is given it. a also asks for QUIC.
    std::fs::create_dir_all(d("a")).unwrap();
    std::fs::copy(d("swarm.key"), dir.path().join("a").join("swarm.key")).unwrap();
    let rounds = ROUNDS.to_string();
    let a_args = run_args(
        &d("a"),
        &spec_path,
        &["--listen", "/ip4/127.0.0.1/udp/0/quic-v1", "--wait-peers", "1", "--rounds", &rounds],
    );
    let mut a = NodeProcess::start("a", &a_args.iter().map(String::as_str).collect::<Vec<_>>());
    a.wait_for_line("private network: only peers with this swarm key", Duration::from_secs(30));
    a.wait_for_line("ignoring this --listen address", Duration::from_secs(30));
    let a_address = a.tcp_address();
    let key_path = d("swarm.key");
    let b_args = run_args(
        &d("b"),
        &spec_path,
        &["--swarm-key", &key_path, "--bootnodes", &a_address, "--wait-peers", "1", "--rounds", &rounds],
    );
    let mut b = NodeProcess::start("b", &b_args.iter().map(String::as_str).collect::<Vec<_>>());

    // Outsiders: the same run without the fingerprint (so they may start), with
    // another swarm key or with none. Neither gets a connection to a.
    let mut public_spec = spec.clone();
    public_spec.swarm_key_fingerprint = None;
    let address: Multiaddr = a_address.parse().unwrap();
    outsider_cannot_connect(
        &public_spec,
        Some(pnet::read_key(Path::new(&wrong_key_path)).unwrap()),
        &address,
    )
    .await;
    outsider_cannot_connect(&public_spec, None, &address).await;

    a.wait_exit(Duration::from_secs(180));
    b.wait_exit(Duration::from_secs(60));
    for node in [&a, &b] {
        let merged = node.merged_rounds();
        assert_eq!(merged.len(), ROUNDS as usize, "{}: {merged:?}\n{}", node.name, node.log());
        // Each round: both members' deltas, and no one else's.
        assert!(merged.iter().all(|(_, n, _)| *n == 2), "{}: {merged:?}", node.name);
        for line in node.log().lines().filter(|l| l.contains("round merged")) {
            assert_eq!(common::field(line, "peers").as_deref(), Some("1"), "{}: {line}", node.name);
        }
    }
}
