//! Whole behaviours of the simulator: reproducible files, agreement with the
//! real swarm, and what the protocol promises under partitions and scale.

use std::{path::PathBuf, process::Command};

use starling_netsim::{
    scenario::{EventKind, Mode, Workload},
    Scenario,
};

fn scenario(name: &str) -> Scenario {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("scenarios").join(format!("{name}.toml"));
    Scenario::load(&path).unwrap_or_else(|e| panic!("{name}: {e}"))
}

fn netsim(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_starling-netsim")).args(args).output().expect("starling-netsim runs")
}

#[test]
fn the_same_scenario_and_seed_give_byte_identical_reports() {
    let dirs = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
    let file = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("scenarios/partition-heal.toml");
    for dir in &dirs {
        let out = netsim(&[
            "run",
            file.to_str().unwrap(),
            "--out",
            dir.path().to_str().unwrap(),
            "--no-host-figures",
            "--quiet",
        ]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    }
    for name in ["summary.json", "rounds.csv", "consensus.svg", "loss.svg", "overview.svg"] {
        let a = std::fs::read(dirs[0].path().join(name)).unwrap();
        let b = std::fs::read(dirs[1].path().join(name)).unwrap();
        assert!(!a.is_empty(), "{name} is empty");
        assert!(a == b, "{name} differs between two runs of the same scenario");
    }
    let rows = std::fs::read_to_string(dirs[0].path().join("rounds.csv")).unwrap();
    assert_eq!(rows.lines().count(), 36, "a header and one row per round");
}

#[test]
fn a_bad_scenario_is_refused_with_the_file_and_field_named() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("typo.toml");
    std::fs::write(&file, "name = \"t\"\nnodes = 3\nrounds = 2\n[link]\nlatncy = 5\n").unwrap();
    let out = netsim(&["run", file.to_str().unwrap(), "--out", dir.path().to_str().unwrap()]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("typo.toml") && err.contains("latncy"), "unclear error: {err}");
}

/// The simulated baseline trains the same shards with the same protocol code
/// as `starling swarm`, so it must reach the same accuracy.
#[test]
fn the_simulated_baseline_reaches_the_accuracy_of_the_real_swarm() {
    let mut sc = scenario("baseline");
    sc.rounds = 8;
    let simulated = starling_netsim::run(&sc, false, &mut |_, _| {}).unwrap();
    let simulated = simulated.summary.final_mean_accuracy.expect("a classification workload");
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let real = runtime
        .block_on(starling_node::local_swarm::run_swarm(starling_node::local_swarm::SwarmOptions {
            seed: sc.seed,
            quiet: true,
            centralized_baseline: false,
            ..starling_node::local_swarm::SwarmOptions::new(
                sc.nodes,
                sc.rounds,
                starling_protocol::RunSpec::builtin(),
            )
        }))
        .unwrap();
    let real = real.mean_accuracy as f64;
    assert!(real > 0.7, "the real swarm learns beyond a linear model ({real})");
    assert!((simulated - real).abs() <= 0.01, "simulated {simulated:.4} vs real swarm {real:.4}");
}

#[test]
fn after_a_partition_heals_the_swarm_agrees_again() {
    let sc = scenario("partition-heal");
    let out = starling_netsim::run(&sc, false, &mut |_, _| {}).unwrap();
    let rows = &out.rows;
    let bound = 1e-9;
    assert!(rows[..10].iter().all(|r| r.consensus_distance < bound), "agreement before the partition");
    let split = rows[12..20].iter().map(|r| r.consensus_distance).fold(0.0, f64::max);
    assert!(split > 1e-3, "the sides drift apart while split ({split:e})");
    let heal = out.markers.iter().find(|(_, l)| l == "heal").expect("heal marker").0 as usize;
    let back = rows[heal..].iter().position(|r| r.consensus_distance < bound).expect("agreement returns");
    assert!(back <= 3, "consensus took {back} rounds to return after the heal");
    assert!(rows[heal + 3..].iter().all(|r| r.consensus_distance < bound), "and it stays");
    let before = rows[9].mean_loss;
    let end = rows.last().unwrap().mean_loss;
    assert!(end < before * 1.5, "training goes on after the heal ({before:e} -> {end:e})");
}

/// A late joiner never makes a round wait for its deadline, whatever the
/// order in which offers, announcements and deltas cross (seeds 12, 18, 31,
/// 37, 39 and 53 each closed rounds at the deadline before the fixes).
#[test]
fn a_late_joiner_of_a_fast_swarm_holds_no_round_to_its_deadline() {
    let sc = scenario("late-joiner-fast-rounds");
    for seed in 1..=60 {
        let mut sc = sc.clone();
        sc.seed = seed;
        let out = starling_netsim::run(&sc, false, &mut |_, _| {}).unwrap();
        let s = &out.summary;
        assert_eq!(s.deadline_closes, 0, "seed {seed}: rounds closed at the deadline");
        assert!(s.state_syncs > 0, "seed {seed}: the joiner fetched no state");
        assert_eq!(s.final_consensus_distance, 0.0, "seed {seed}: the nodes disagree at the end");
        assert_eq!(s.honest_equivocations, Some(0), "seed {seed}");
    }
}

/// A node leaves gracefully from a swarm where each node is connected only to
/// its mesh peers: those that know it only through relayed deltas hear of it
/// from its signed leave notice, and no round closes at its deadline. The
/// same leave as a kill (no notice) holds rounds to their deadline until the
/// leaver has been silent for two rounds: the gap the notice closes.
#[test]
fn a_graceful_leave_holds_no_round_to_its_deadline() {
    let sc = scenario("graceful-leave");
    let out = starling_netsim::run(&sc, false, &mut |_, _| {}).unwrap();
    assert!(out.markers.iter().any(|(_, l)| l == "1 leave"), "{:?}", out.markers);
    assert_eq!(out.summary.deadline_closes, 0, "rounds closed at the deadline: {:?}", out.rows);
    assert!(out.summary.final_consensus_distance < 1e-9, "the nodes disagree at the end");
    assert_eq!(out.rows.last().unwrap().active_nodes, 11);
    let mut killed = sc.clone();
    for event in &mut killed.events {
        if let EventKind::Leave { graceful, .. } = &mut event.what {
            *graceful = false;
        }
    }
    let out = starling_netsim::run(&killed, false, &mut |_, _| {}).unwrap();
    assert!(out.summary.deadline_closes > 0, "without a notice, relayed peers wait for the leaver");
}

/// The faster side of a partition is the minority: when the link comes back
/// it is rounds ahead, so the majority's deltas reach it only as stale ones.
/// Their lineage still counts: it goes back to the majority's older state,
/// observes until past the last round it signed, and the swarm agrees again
/// (seed 11 makes the three majority nodes the stragglers; before lineage
/// evidence counted late deltas, the two sides never agreed again).
#[test]
fn a_minority_that_heals_rounds_ahead_goes_back_to_the_majority_without_equivocating() {
    let sc = scenario("partition-heal-minority-ahead");
    let out = starling_netsim::run(&sc, false, &mut |_, _| {}).unwrap();
    let rows = &out.rows;
    let bound = 1e-9;
    assert!(rows[..5].iter().all(|r| r.consensus_distance < bound), "agreement before the partition");
    let split = rows[6..9].iter().map(|r| r.consensus_distance).fold(0.0, f64::max);
    assert!(split > 1e-3, "the sides drift apart while split ({split:e})");
    let heal = out.markers.iter().find(|(_, l)| l == "heal").expect("heal marker").0 as usize;
    let back = rows[heal..].iter().position(|r| r.consensus_distance < bound).expect("agreement returns");
    assert!(back <= 3, "consensus took {back} rounds to return after the heal");
    assert!(rows[heal + 3..].iter().all(|r| r.consensus_distance < bound), "and it stays");
    assert!(rows.iter().all(|r| r.active_nodes == 5), "every node merges every round");
    assert!(out.summary.state_syncs > 0);
    assert_eq!(out.summary.honest_equivocations, Some(0), "a node signed two deltas for one round");
    assert_eq!(out.summary.final_consensus_distance, 0.0);

    // A longer split: the minority is 18 rounds ahead at the heal, and still
    // goes back (the lineage evidence reaches that far).
    let mut far = sc.clone();
    far.events[1].at_round = 60;
    far.rounds = 80;
    let out = starling_netsim::run(&far, false, &mut |_, _| {}).unwrap();
    let heal = out.markers.iter().find(|(_, l)| l == "heal").expect("heal marker").0 as usize;
    assert!(out.rows[heal..].iter().any(|r| r.consensus_distance < bound), "agreement returns");
    assert_eq!(out.summary.honest_equivocations, Some(0));
    assert_eq!(out.summary.final_consensus_distance, 0.0);
}

/// As in `tests/partition_netns.rs`: TCP holds what was sent across the cut
/// and each connection delivers it at its own time after the heal, so deltas
/// of rounds long closed, and of the round being gathered, arrive late and at
/// different times at different nodes. Before the fix, seeds 1, 3, 5, 6 and 10
/// of the first scenario (and 2, 5, 8, 9 and 10 of the second, the minority
/// ahead) ended split: the healed minority was told by its source to
/// contribute at once, to rounds the majority closed without it, and synced
/// again round after round.
#[test]
fn deltas_held_across_a_partition_and_delivered_late_never_split_the_swarm() {
    let held = scenario("partition-heal-held");
    let mut ahead = scenario("partition-heal-minority-ahead");
    ahead.link.heal_retransmit_ms = 3_000;
    for sc in [held, ahead] {
        for seed in 1..=10 {
            let sc = Scenario { seed, ..sc.clone() };
            let out = starling_netsim::run(&sc, false, &mut |_, _| {}).unwrap();
            let what = format!("{} seed {seed}", sc.name);
            let heal = out.markers.iter().find(|(_, l)| l == "heal").expect("heal marker").0 as usize;
            assert!(
                out.rows[heal..].iter().any(|r| r.active_nodes == 5 && r.consensus_distance == 0.0),
                "{what}: no round after the heal merged by all five in agreement"
            );
            assert_eq!(out.rows.last().unwrap().active_nodes, 5, "{what}: all five merge the last round");
            assert_eq!(out.summary.final_consensus_distance, 0.0, "{what}: the swarm ends split");
            assert_eq!(out.summary.honest_equivocations, Some(0), "{what}");
        }
    }
}

#[test]
fn rotating_groups_train_a_large_swarm_and_keep_it_together() {
    let mut sc = scenario("scale-1k");
    sc.nodes = 300;
    sc.rounds = 25;
    let out = starling_netsim::run(&sc, false, &mut |_, _| {}).unwrap();
    assert!(matches!(sc.workload, Workload::Quadratic { .. }));
    let (first, last) = (&out.rows[0], out.rows.last().unwrap());
    assert!(last.mean_loss < first.mean_loss / 3.0, "loss {:e} -> {:e}", first.mean_loss, last.mean_loss);
    assert!(last.consensus_distance < 0.5, "groups mix the swarm ({:e})", last.consensus_distance);
    assert_eq!(last.active_nodes, 300);
}

/// Live mode runs real node stacks over the in-memory transport.
#[test]
fn live_mode_runs_real_nodes_that_agree() {
    let sc: Scenario = toml::from_str(
        r#"
name = "live-small"
nodes = 6
rounds = 2
mode = "live"
[workload]
kind = "candle"
samples_per_node = 256
eval_samples = 256
inner_steps = 3
eval_nodes = 2
"#,
    )
    .unwrap();
    let out = starling_netsim::run(&sc, true, &mut |_, _| {}).unwrap();
    assert_eq!(out.rows.len(), 2);
    for r in &out.rows {
        assert_eq!(r.active_nodes, 6, "round {}: every node merged", r.round);
        assert!(r.consensus_distance < 1e-12, "round {}: nodes hold identical parameters", r.round);
        assert!(r.mean_accuracy.is_some() && r.bytes_received_per_node > 0.0);
    }
    assert!(out.summary.wall_seconds.is_some());
}

/// One scenario, a late joiner, through the engine over simulated links and
/// through real node stacks: both merge the same rounds with the same nodes,
/// sync the joiner once, close no round at its deadline and end agreeing.
#[test]
fn a_late_joiner_behaves_alike_in_virtual_and_live_mode() {
    let sc = scenario("late-joiner-live");
    let join = sc.events[0].at_round as usize;
    let mut outs = Vec::new();
    for mode in [Mode::Virtual, Mode::Live] {
        let sc = Scenario { mode, ..sc.clone() };
        outs.push((mode, starling_netsim::run(&sc, false, &mut |_, _| {}).unwrap()));
    }
    for (mode, out) in &outs {
        let merged: Vec<usize> = out.rows.iter().map(|r| r.active_nodes).collect();
        assert_eq!(merged.len(), sc.rounds as usize, "{mode:?}: a row per round");
        assert!(merged[..join].iter().all(|&n| n == 2), "{mode:?}: two nodes before the join: {merged:?}");
        // From two rounds after it connects, the joiner merges every round.
        assert!(merged[join + 2..].iter().all(|&n| n == 3), "{mode:?}: three nodes after: {merged:?}");
        let s = &out.summary;
        assert_eq!(s.state_syncs, 1, "{mode:?}: the joiner fetched the state once");
        assert_eq!(s.deadline_closes, 0, "{mode:?}: no round waited for its deadline");
        assert_eq!(s.final_consensus_distance, 0.0, "{mode:?}: the nodes end agreeing");
    }
}

/// A partition and its heal, in both modes: each side goes on merging rounds
/// of its own, the minority fetches the majority's state after the heal (live
/// mode's nodes close and refuse the other side's connections while cut, and
/// dial them again at the heal; virtual mode does the same with
/// `partition_disconnects`), all five merge rounds together again, and all end
/// agreeing.
///
/// No round waits for its deadline: each side sees the other leave. (In live
/// mode that once failed in 3 of 36 runs: a delta verified after its sender's
/// connection closed counted the sender as active for two more rounds; now a
/// delta of the round a peer left in does not.) Virtual mode is exact: each
/// minority node fetches once. A live minority node may fetch again when it
/// lands in a round the majority closes before its delta arrives (2 of 16
/// runs), so live mode is held to at least one fetch each.
#[test]
fn a_partition_and_its_heal_behave_alike_in_virtual_and_live_mode() {
    let sc = scenario("partition-live");
    for mode in [Mode::Virtual, Mode::Live] {
        let sc = Scenario { mode, ..sc.clone() };
        let out = starling_netsim::run(&sc, false, &mut |_, _| {}).unwrap();
        let rows = &out.rows;
        assert_eq!(rows.len(), sc.rounds as usize, "{mode:?}: a row per round");
        let split = rows[4..8].iter().map(|r| r.consensus_distance).fold(0.0, f64::max);
        assert!(split > 0.0, "{mode:?}: the sides drift apart while cut");
        let heal = out.markers.iter().find(|(_, l)| l == "heal").expect("heal marker").0 as usize;
        assert!(
            rows[heal..].iter().any(|r| r.active_nodes == 5 && r.consensus_distance == 0.0),
            "{mode:?}: no round after the heal merged by all five in agreement"
        );
        assert_eq!(rows.last().unwrap().active_nodes, 5, "{mode:?}: all five merge the last round");
        let s = &out.summary;
        assert_eq!(s.final_consensus_distance, 0.0, "{mode:?}: the nodes end agreeing");
        assert_eq!(s.deadline_closes, 0, "{mode:?}: no round waited for its deadline");
        match mode {
            Mode::Virtual => assert_eq!(s.state_syncs, 2, "{mode:?}: each minority node fetched once"),
            Mode::Live => {
                assert!(s.state_syncs >= 2, "{mode:?}: each minority node fetched ({})", s.state_syncs)
            }
        }
    }
}

/// A crash and a restart, in both modes: the others go on without the crashed
/// node, it restarts from its checkpoint (1.5 s later: rounds behind, in live
/// mode too, unless a round took longer than that), fetches the swarm's state,
/// and merges the last rounds with them; no round waits for its deadline.
///
/// Virtual mode is exact: one fetch. A live node fetches only if the swarm
/// moved on while it was down (rounds take well under 1.5 s here, but a loaded
/// machine can stretch one); back in the swarm's round, it observes until its
/// peers expect it (and takes the round's deltas its peers published while it
/// was down from their offers: `crash-restart-in-round`). A second fetch is a
/// known gap, not yet fixed: the node installs the state of round r before its
/// peers publish their deltas of r, and those published within a few tens of
/// milliseconds of its connection do not reach it (gossipsub sends a message
/// only to peers it knows are subscribed); it cannot close r, and as an
/// observer it syncs again at their first delta of r + 1. Under load (both
/// cores busy) that happened in 4 of 20 live runs with the offers' deltas
/// taken. A request for the set a peer merged in r, closed on as the peer
/// did, removes it, but was not kept: in netsim's churn it made lagging
/// nodes contribute a round earlier, and the swarm waited for their later
/// deltas (5-18 % more virtual time over seeds 1-5). A third fetch would be
/// a bug (seeds 1-30 with restarts of 0.8 to 4 s showed repeated fetches
/// before the fixes this test came with).
#[test]
fn a_crash_and_restart_behave_alike_in_virtual_and_live_mode() {
    let sc = scenario("crash-restart-live");
    let crash = sc.events[0].at_round as usize;
    for mode in [Mode::Virtual, Mode::Live] {
        let sc = Scenario { mode, ..sc.clone() };
        let out = starling_netsim::run(&sc, false, &mut |_, _| {}).unwrap();
        let merged: Vec<usize> = out.rows.iter().map(|r| r.active_nodes).collect();
        assert_eq!(merged.len(), sc.rounds as usize, "{mode:?}: a row per round");
        assert!(
            merged[..crash - 1].iter().all(|&n| n == 3),
            "{mode:?}: three nodes before the crash: {merged:?}"
        );
        // The crash comes as the first node merges round `crash - 1`; whether the
        // crashed one had merged it too is a race in live mode.
        assert!(
            merged[crash - 1..crash + 1].contains(&2),
            "{mode:?}: the crashed node misses rounds: {merged:?}"
        );
        assert!(merged[merged.len() - 2..].iter().all(|&n| n == 3), "{mode:?}: three at the end: {merged:?}");
        let s = &out.summary;
        let syncs = if mode == Mode::Virtual { 1..=1 } else { 0..=2 };
        assert!(
            syncs.contains(&s.state_syncs),
            "{mode:?}: the restarted node fetched {} times",
            s.state_syncs
        );
        assert_eq!(s.deadline_closes, 0, "{mode:?}: no round waited for its deadline");
        assert_eq!(s.final_consensus_distance, 0.0, "{mode:?}: the nodes end agreeing");
    }
}

/// A node restarted in the round its peers are in, after one of them
/// published its delta of that round (see the scenario): it takes that delta
/// from the offers of its probe and merges the round with them, where it
/// fetched the next state before.
#[test]
fn a_node_restarted_in_its_swarms_round_merges_that_round_without_a_fetch() {
    let sc = scenario("crash-restart-in-round");
    let out = starling_netsim::run(&sc, false, &mut |_, _| {}).unwrap();
    let merged: Vec<usize> = out.rows.iter().map(|r| r.active_nodes).collect();
    assert_eq!(merged, vec![3; sc.rounds as usize], "every node merges every round");
    let s = &out.summary;
    assert_eq!(s.state_syncs, 0, "the restarted node had the state; it needed only the round's deltas");
    assert_eq!(s.deadline_closes, 0, "no round waited for its deadline");
    assert_eq!(s.final_consensus_distance, 0.0, "the nodes end agreeing");
}

/// A graceful leave and a kill with no restart, in both modes: the others
/// go on without each from the round it went (the leaver's notice, or its
/// closed connections, tell them to stop waiting), no round waits for its
/// deadline, nobody fetches a state, and the two left end agreeing. As with
/// a crash, whether the departing node merged the round before its event
/// is a race in live mode, so that round may count it or not.
#[test]
fn a_leave_and_a_kill_behave_alike_in_virtual_and_live_mode() {
    let sc = scenario("leave-live");
    let (leave, kill) = (sc.events[0].at_round as usize, sc.events[1].at_round as usize);
    for mode in [Mode::Virtual, Mode::Live] {
        let sc = Scenario { mode, ..sc.clone() };
        let out = starling_netsim::run(&sc, false, &mut |_, _| {}).unwrap();
        let merged: Vec<usize> = out.rows.iter().map(|r| r.active_nodes).collect();
        assert_eq!(merged.len(), sc.rounds as usize, "{mode:?}: a row per round");
        assert!(merged[..leave - 1].iter().all(|&n| n == 4), "{mode:?}: four before the leave: {merged:?}");
        assert!(merged[leave - 1..=leave].contains(&3), "{mode:?}: the leaver is gone: {merged:?}");
        assert!(merged[leave + 1..kill - 1].iter().all(|&n| n == 3), "{mode:?}: three after it: {merged:?}");
        assert!(merged[kill - 1..=kill].contains(&2), "{mode:?}: the killed node is gone: {merged:?}");
        assert!(merged[kill + 1..].iter().all(|&n| n == 2), "{mode:?}: two at the end: {merged:?}");
        let s = &out.summary;
        assert_eq!(s.deadline_closes, 0, "{mode:?}: no round waited for its deadline");
        assert_eq!(s.state_syncs, 0, "{mode:?}: nobody needed a state");
        assert_eq!(s.final_consensus_distance, 0.0, "{mode:?}: the nodes left end agreeing");
    }
}

#[test]
fn live_mode_refuses_what_only_virtual_mode_simulates() {
    let sc: Scenario = toml::from_str(
        "name = \"l\"\nnodes = 3\nrounds = 1\nmode = \"live\"\n[workload]\nkind = \"candle\"\n[link]\nloss = 0.1\n",
    )
    .unwrap();
    let err = starling_netsim::run(&sc, false, &mut |_, _| {}).err().expect("refused").to_string();
    assert!(err.contains("[link]") && err.contains("virtual"), "{err}");
}

/// The SparseLoCo outer rule (the default of chunked sparse codecs) runs in
/// the simulator as in a node: error feedback in place of outer momentum, and
/// the swarm still trains and agrees bit for bit. (The codec's step, lr 5,
/// is tuned on the built-in MLP; the quadratic takes a smaller one.)
#[test]
fn the_sparseloco_rule_trains_and_agrees_in_virtual_mode() {
    let text = r#"
name = "sparseloco"
seed = 3
nodes = 6
rounds = 30
[workload]
kind = "quadratic"
dim = 512
[protocol]
codec = "sparse:16/256+4bit"
outer_lr = 1.0
[link]
latency = { kind = "fixed", ms = 2 }
mesh_degree = 0
"#;
    let sc: Scenario = toml::from_str(text).unwrap();
    assert_eq!(sc.protocol.outer().rule, starling_protocol::OuterRule::Sparseloco);
    let out = starling_netsim::run(&sc, false, &mut |_, _| {}).unwrap();
    let (first, last) = (out.rows.first().unwrap(), out.rows.last().unwrap());
    assert!(
        last.mean_loss < 0.5 * first.mean_loss,
        "it trains ({:e} -> {:e})",
        first.mean_loss,
        last.mean_loss
    );
    assert!(out.rows.iter().all(|r| r.consensus_distance < 1e-9), "every node merges the same");
}
