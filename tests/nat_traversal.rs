//! NAT traversal end to end: autonat, relay reservations, discovery of a relayed
//! peer, and dcutr hole punching, with real `starling run` processes in network
//! namespaces.
//!
//! ```text
//!            a ── na ──┐                  ┌── nb ── b
//!   192.168.10.2    NAT 7.7.1.2 ── r ── 7.7.2.2 NAT    192.168.20.2
//!                           7.7.1.1 / 7.7.2.1
//! ```
//!
//! `r` is the internet and a public volunteer node running `--relay-server`;
//! it is the only bootnode. `na` and `nb` are home routers: they masquerade
//! what leaves, keeping source ports where they can (Linux's NAT does), and
//! silently drop whatever arrives that does not answer something sent out.
//! The addresses come from public ranges because autonat, as on the internet,
//! only dials back global addresses; the namespaces are closed, so nothing
//! leaves the machine.
//!
//! What must happen, with no address but the bootnode's given:
//! 1. autonat: `r` learns it is publicly reachable, `a` that it is not;
//! 2. `a` reserves a slot on `r`, the relay it met. `b` joins later, given `r`
//!    by `--relay` too, and reserves a slot on it at once (once its listener is
//!    up, so that the relay observes `b`'s listening port, the one a hole punch
//!    can use), before any autonat probe;
//! 3. they find each other through `r`'s DHT at their relayed addresses and connect through it;
//! 4. dcutr punches a direct connection through both NATs, each side connected
//!    to the other's NAT;
//! 5. all three train together.
//!
//! Run again behind symmetric NATs (a new random port for every connection),
//! step 4 cannot happen: nothing may claim a hole punch, and all three must
//! still train together, `a` and `b` over the relay.
//!
//! Needs root, iproute2 and nftables; skips with a printed reason otherwise.

mod common;

use std::time::Duration;

use common::{field, netns::Namespaces, test_spec, write_spec, NodeProcess};

/// The public address of each home router, and its side of the relay's links.
const NAT_A: &str = "7.7.1.2";
const NAT_B: &str = "7.7.2.2";
const RELAY: &str = "7.7.1.1";
const PORT: &str = "4001";
const ROUNDS: u64 = 5;

/// How the home routers map a connection's source port.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Nat {
    /// Kept where it is free, as most home routers do: hole punching works.
    KeepsPorts,
    /// A new random port for every connection (symmetric NAT): the port a
    /// peer observed is never the one the next connection leaves from, so
    /// hole punching cannot work and the relay carries everything.
    Symmetric,
}

/// The five namespaces of the picture above, with routes and NAT rules.
fn build_lab(tag: &str, nat: Nat) -> Result<Namespaces, String> {
    if std::process::Command::new("nft").arg("--version").output().is_err() {
        return Err("nft is not installed (Debian: apt-get install nftables)".into());
    }
    let net = Namespaces::create(tag, &["r", "na", "a", "nb", "b"])?;
    net.connect("r", "7.7.1.1/24", "na", &format!("{NAT_A}/24"))?;
    net.connect("r", "7.7.2.1/24", "nb", &format!("{NAT_B}/24"))?;
    net.connect("na", "192.168.10.1/24", "a", "192.168.10.2/24")?;
    net.connect("nb", "192.168.20.1/24", "b", "192.168.20.2/24")?;
    for (ns, gateway) in [("na", "7.7.1.1"), ("nb", "7.7.2.1"), ("a", "192.168.10.1"), ("b", "192.168.20.1")]
    {
        common::netns::ip(&["-n", &net.name(ns), "route", "add", "default", "via", gateway])?;
    }
    for ns in ["r", "na", "nb"] {
        net.exec(ns, "sh", &["-c", "echo 1 > /proc/sys/net/ipv4/ip_forward"], "")?;
    }
    let masquerade = match nat {
        Nat::KeepsPorts => "masquerade",
        Nat::Symmetric => "masquerade fully-random",
    };
    for router in ["na", "nb"] {
        let outside = net.link(router, "r");
        let rules = format!(
            "table ip nat {{
  chain postrouting {{
    type nat hook postrouting priority srcnat;
    oifname \"{outside}\" {masquerade}
  }}
}}
table ip filter {{
  chain inbound {{
    type filter hook input priority 0;
    iifname \"{outside}\" ct state new drop
  }}
  chain through {{
    type filter hook forward priority 0;
    iifname \"{outside}\" ct state new drop
  }}
}}
"
        );
        net.exec(router, "nft", &["-f", "-"], &rules)?;
    }
    Ok(net)
}

#[test]
fn nodes_behind_two_nats_meet_through_a_relay_and_punch_a_direct_tcp_connection() {
    meet_and_punch("nt", Nat::KeepsPorts, &format!("/ip4/0.0.0.0/tcp/{PORT}"), "tcp");
}

#[test]
fn nodes_behind_two_nats_meet_through_a_relay_and_punch_a_direct_quic_connection() {
    meet_and_punch("nq", Nat::KeepsPorts, &format!("/ip4/0.0.0.0/udp/{PORT}/quic-v1"), "udp");
}

#[test]
fn nodes_behind_two_symmetric_nats_train_over_the_relay() {
    meet_and_punch("ns", Nat::Symmetric, &format!("/ip4/0.0.0.0/tcp/{PORT}"), "tcp");
}

/// The scenario above, every node listening on `listen` only; the direct
/// connection's address names `protocol` (tcp or udp). Behind symmetric NATs
/// step 4 cannot happen, and step 5 must happen over the relay.
fn meet_and_punch(tag: &str, nat: Nat, listen: &str, protocol: &str) {
    let net = match build_lab(tag, nat) {
        Ok(net) => net,
        Err(reason) => {
            println!("skipped: cannot build the NAT lab ({reason}); needs root, iproute2 and nftables");
            return;
        }
    };
    let dir = tempfile::tempdir().unwrap();
    let spec_path = write_spec(dir.path(), &test_spec(&format!("nat-traversal-{protocol}")));
    let rounds = ROUNDS.to_string();
    let start = |name: &str, extra: &[&str]| {
        let datadir = dir.path().join(name);
        let mut args = vec![
            "run",
            "--datadir",
            datadir.to_str().unwrap(),
            "--spec",
            &spec_path,
            "--listen",
            listen,
            "--no-mdns",
            "--wait-peers",
            "2",
            "--wait-timeout",
            "180",
            "--rounds",
            &rounds,
        ];
        args.extend(extra);
        NodeProcess::start_in_netns(&net.name(name), name, &args)
    };

    let mut r = start("r", &["--relay-server"]);
    let started = r.wait_for_line("node started", Duration::from_secs(30));
    let relay_peer = field(&started, "peer").expect("the start line names the peer");
    let bootnode = format!("/ip4/{RELAY}{}/p2p/{relay_peer}", listen.trim_start_matches("/ip4/0.0.0.0"));
    let mut a = start("a", &["--bootnodes", &bootnode]);

    // 1. autonat (its first probe waits 15 s; a dial-back into a NAT times out after 10 s).
    let probe = Duration::from_secs(90);
    r.wait_for_line("autonat: peers dialled this node back; it is publicly reachable", probe);
    a.wait_for_line("autonat: peers cannot dial this node back", probe);

    // 2. A slot on the relay, at the address it was reached at; `b` only starts now.
    let mut b = start("b", &["--bootnodes", &bootnode, "--relay", &bootnode]);
    for (node, reserving) in
        [(&mut a, "reserving a slot on a relay"), (&mut b, "reserving a slot on the relay given by --relay")]
    {
        let reserving = node.wait_for_line(reserving, Duration::from_secs(30));
        assert!(reserving.contains(&format!("/{protocol}/{PORT}/")), "{reserving}");
        assert!(!reserving.contains("127.0.0.1"), "reserved on the relay's loopback address: {reserving}");
        node.wait_for_line("reserved a slot on a relay", Duration::from_secs(30));
    }
    let log = b.log();
    // The listener is up once it reports its first address (interfaces come in any order).
    let listening = log.find("listening address=/ip4/").expect("b logs its listen address");
    let reserving = log.find("reserving a slot on the relay given by --relay").expect("logged above");
    assert!(listening < reserving, "b reserved on its --relay before its listener was up:\n{log}");

    // 3. and 4. Connected through the relay, then directly, through both NATs.
    for (node, other_nat) in [(&mut a, NAT_B), (&mut b, NAT_A)] {
        node.wait_for_line("connected to a peer through a relay", Duration::from_secs(60));
        if nat == Nat::Symmetric {
            continue;
        }
        let punched = node.wait_for_line("hole punching succeeded", Duration::from_secs(60));
        assert!(
            punched.contains(&format!("/ip4/{other_nat}/{protocol}/")),
            "{}'s direct connection is not to the other NAT: {punched}",
            node.name
        );
    }

    // 5. All three train together to the last round.
    for node in [&mut r, &mut a, &mut b] {
        node.wait_exit(Duration::from_secs(120));
        let merged = node.merged_rounds();
        assert!(
            merged.iter().any(|(_, count, _)| *count == 3),
            "{} never merged a round with all three deltas: {merged:?}\n{}",
            node.name,
            node.log()
        );
    }
    if nat == Nat::Symmetric {
        r.wait_for_line("relay server: relaying a connection", Duration::from_secs(1));
        for node in [&a, &b] {
            let log = node.log();
            assert!(
                !log.contains("hole punching succeeded"),
                "{} punched through a symmetric NAT:\n{log}",
                node.name
            );
        }
    }
}
