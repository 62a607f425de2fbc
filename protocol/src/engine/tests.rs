//! Unit tests of the [`Engine`](super::Engine): gathering and the probe, the
//! majority rule of state sync against lone liars and colluders, chunked
//! fetches that resume, and the phase guard on syncs started by deltas.
use std::collections::{BTreeMap, BTreeSet};

use super::*;
use crate::chunks::{StateOffer, StateSnapshot};
use crate::spec::RoundSpec;
use crate::test_keys::{delta, key, pk};
use crate::{Codec, RunId};

const PARAMS: usize = 600_000;

fn state(round: u64, value: f32) -> ModelState {
    let mut s = ModelState::initial(vec![value; PARAMS]);
    s.round = round;
    s
}

fn config(wait_peers: usize) -> EngineConfig {
    let round = RoundConfig {
        settle_ms: 0,
        ..RoundConfig::from_spec(&RoundSpec { deadline_ms: 1_000, quorum: 1.0 })
    };
    EngineConfig {
        wait_peers,
        wait_timeout_ms: 60_000,
        ..EngineConfig::new(round, PARAMS, PARAMS * 8 + 1024)
    }
}

/// Node 1 at genesis with peers `2..2 + peers` connected, started at t = 0.
fn engine(peers: u8, wait_peers: usize) -> (Engine, Vec<Output>) {
    let genesis = ModelState::initial(vec![0.0; PARAMS]);
    started(Engine::new(pk(1), config(wait_peers), 0, genesis.lineage), peers)
}

/// Starts `e` at time 0 with `peers` peers connected (keys 2, 3, ...).
fn started(mut e: Engine, peers: u8) -> (Engine, Vec<Output>) {
    let mut out = e.handle(0, Input::Start);
    for i in 0..peers {
        out.extend(e.handle(0, Input::PeerConnected(pk(2 + i))));
    }
    (e, out)
}

fn requests(out: &[Output]) -> Vec<(PublicKey, RequestId, SyncRequest)> {
    out.iter()
        .filter_map(|o| match o {
            Output::Request { peer, id, request } => Some((*peer, *id, request.clone())),
            _ => None,
        })
        .collect()
}

fn offer(snapshot: &StateSnapshot) -> SyncResponse {
    offer_from(snapshot, 9)
}

fn offer_from(snapshot: &StateSnapshot, expected_from: u64) -> SyncResponse {
    SyncResponse::Offer(StateOffer {
        manifest: snapshot.manifest.clone(),
        expected_from,
        deltas: vec![],
        expected: vec![],
    })
}

/// Answers every request in `out` from the snapshot each peer serves, until
/// the engine installs a state or stops asking; returns the installed state
/// and who served chunks.
fn serve_all(
    e: &mut Engine,
    out: Vec<Output>,
    serves: &BTreeMap<PublicKey, StateSnapshot>,
) -> (Option<ModelState>, BTreeSet<PublicKey>, Vec<Output>) {
    serve_expecting(e, out, serves, 9)
}

/// [`serve_all`], the peers expecting our deltas from `expected_from`.
fn serve_expecting(
    e: &mut Engine,
    out: Vec<Output>,
    serves: &BTreeMap<PublicKey, StateSnapshot>,
    expected_from: u64,
) -> (Option<ModelState>, BTreeSet<PublicKey>, Vec<Output>) {
    serve_decoding(e, out, serves, expected_from, StateDecode::decode)
}

/// [`serve_expecting`], the driver decoding fetched states with `decode`.
fn serve_decoding(
    e: &mut Engine,
    mut out: Vec<Output>,
    serves: &BTreeMap<PublicKey, StateSnapshot>,
    expected_from: u64,
    decode: impl Fn(StateDecode) -> Result<ModelState, ChunkError>,
) -> (Option<ModelState>, BTreeSet<PublicKey>, Vec<Output>) {
    let mut served_by = BTreeSet::new();
    let mut all = Vec::new();
    loop {
        let reqs = requests(&out);
        let decodes: Vec<StateDecode> = out
            .iter()
            .filter_map(|o| match o {
                Output::DecodeState(d) => Some(d.clone()),
                _ => None,
            })
            .collect();
        all.append(&mut out);
        if let Some(state) = all.iter().find_map(|o| match o {
            Output::Install { state, .. } => Some(state.clone()),
            _ => None,
        }) {
            return (Some(state), served_by, all);
        }
        if reqs.is_empty() && decodes.is_empty() {
            return (None, served_by, all);
        }
        for d in decodes {
            let root = d.root();
            out.extend(e.handle(1, Input::StateDecoded { root, result: decode(d) }));
        }
        for (peer, id, request) in reqs {
            let snapshot = &serves[&peer];
            let response = match request {
                SyncRequest::Offer => offer_from(snapshot, expected_from),
                SyncRequest::Chunk { index, .. } => {
                    served_by.insert(peer);
                    SyncResponse::Chunk(snapshot.chunk(index).unwrap().to_vec())
                }
                SyncRequest::Joining { .. } => continue,
            };
            out.extend(e.handle(1, Input::SyncResponse { id, response: Some(response) }));
        }
    }
}

#[test]
fn the_probe_fetches_the_root_a_majority_announce_from_all_of_them_and_skips_a_lone_liar() {
    let (good, lie) = (StateSnapshot::of_flat(&state(5, 1.0)), StateSnapshot::of_flat(&state(50, 2.0)));
    let (mut e, out) = engine(3, 3);
    assert_eq!(e.phase(), Phase::Probing);
    let serves = BTreeMap::from([(pk(2), good.clone()), (pk(3), good.clone()), (pk(4), lie)]);
    let (installed, served_by, all) = serve_all(&mut e, out, &serves);
    assert_eq!(installed.expect("a state").round, 5);
    assert_eq!(served_by, BTreeSet::from([pk(2), pk(3)]), "chunks come from both agreeing peers only");
    assert!(all.iter().any(|o| matches!(o, Output::Note(Note::Fetching { peers: 2, reached: 3, .. }))));
    assert_eq!(e.phase(), Phase::Running, "the probe found the swarm's state and the node runs");
    assert_eq!(e.round(), 5);
}

#[test]
fn colluders_under_half_of_the_peers_reached_cannot_plant_a_state_with_a_higher_round() {
    // A quarter of the peers collude on a forged state far ahead.
    let (honest, forged) = (StateSnapshot::of_flat(&state(5, 1.0)), StateSnapshot::of_flat(&state(900, 3.0)));
    let (mut e, out) = engine(8, 8);
    let serves: BTreeMap<PublicKey, StateSnapshot> =
        (2..10).map(|i| (pk(i), if i < 4 { forged.clone() } else { honest.clone() })).collect();
    let (installed, served_by, _) = serve_all(&mut e, out, &serves);
    assert_eq!(installed.expect("the honest state").round, 5);
    assert!(!served_by.contains(&pk(2)) && !served_by.contains(&pk(3)));

    // Half of them colluding is not a majority either: no state, and a retry.
    let (mut e, out) = engine(4, 4);
    let serves: BTreeMap<PublicKey, StateSnapshot> =
        (2..6).map(|i| (pk(i), if i < 4 { forged.clone() } else { honest.clone() })).collect();
    let (installed, _, all) = serve_all(&mut e, out, &serves);
    assert!(installed.is_none());
    assert!(all.iter().any(|o| matches!(o, Output::Note(Note::NoAgreement { reached: 4, required: 3, .. }))));
    assert_eq!(e.phase(), Phase::Probing, "still probing: it asks again");
    assert!(e.next_timer().is_some());
}

#[test]
fn a_peer_that_leaves_unanswered_is_not_counted_as_reached() {
    let good = StateSnapshot::of_flat(&state(5, 1.0));
    let (mut e, out) = engine(3, 3);
    let reqs = requests(&out);
    assert_eq!(reqs.len(), 3);
    let mut out = Vec::new();
    for (peer, id, _) in &reqs {
        if *peer == pk(4) {
            out.extend(e.handle(1, Input::PeerLeft(*peer)));
        } else {
            out.extend(e.handle(1, Input::SyncResponse { id: *id, response: Some(offer(&good)) }));
        }
    }
    assert!(
        out.iter().any(|o| matches!(o, Output::Note(Note::Fetching { peers: 2, reached: 2, .. }))),
        "{out:?}"
    );
}

#[test]
fn a_delta_from_the_future_while_gathering_starts_no_sync_on_one_peers_word() {
    // The late joiner: its bootnode is connected, more peers are coming, and a
    // delta of round 20 arrives before it has gathered them.
    let (mut e, out) = engine(1, 3);
    assert_eq!(e.phase(), Phase::Gathering);
    assert!(requests(&out).is_empty());
    let out = e.handle(10, Input::PeerDelta(delta(2, 20)));
    assert!(requests(&out).is_empty(), "no state is asked for while gathering: {out:?}");
    // Once the peers are there, the probe asks all of them.
    let mut out = e.handle(20, Input::PeerConnected(pk(3)));
    out.extend(e.handle(30, Input::PeerConnected(pk(4))));
    assert_eq!(e.phase(), Phase::Probing);
    let asked: BTreeSet<PublicKey> = requests(&out).into_iter().map(|(p, _, _)| p).collect();
    assert_eq!(asked, BTreeSet::from([pk(2), pk(3), pk(4)]));
}

#[test]
fn a_fetch_whose_sources_all_leave_resumes_with_the_chunks_it_had() {
    let good = StateSnapshot::of_flat(&state(5, 1.0));
    let (mut e, out) = engine(1, 1);
    let (_, id, _) = requests(&out).remove(0);
    let out = e.handle(1, Input::SyncResponse { id, response: Some(offer(&good)) });
    let chunks = requests(&out);
    assert!(chunks.len() > 1);
    let (_, id, request) = &chunks[0];
    let SyncRequest::Chunk { index, .. } = request else { panic!("{request:?}") };
    let bytes = good.chunk(*index).unwrap().to_vec();
    e.handle(2, Input::SyncResponse { id: *id, response: Some(SyncResponse::Chunk(bytes)) });
    let out = e.handle(3, Input::PeerLeft(pk(2)));
    assert!(out.iter().any(|o| matches!(o, Output::Note(Note::Stalled { held: 1, .. }))), "{out:?}");
    // Another peer offers the same root: the chunk held is not asked for again.
    let mut out = e.handle(4, Input::PeerConnected(pk(3)));
    out.extend(e.handle(600, Input::Timer));
    let (_, id, _) =
        requests(&out).into_iter().find(|(_, _, r)| *r == SyncRequest::Offer).expect("asks again");
    let out = e.handle(601, Input::SyncResponse { id, response: Some(offer(&good)) });
    assert!(out.iter().any(|o| matches!(o, Output::Note(Note::Fetching { kept: 1, .. }))), "{out:?}");
    assert!(requests(&out)
        .iter()
        .all(|(_, _, r)| *r != SyncRequest::Chunk { root: good.root, index: *index }));
}

#[test]
fn chunks_kept_before_a_restart_are_not_fetched_again() {
    let good = StateSnapshot::of_flat(&state(5, 1.0));
    let kept = vec![(0, good.chunk(0).unwrap().to_vec()), (1, vec![0; 3])];
    let genesis = ModelState::initial(vec![0.0; PARAMS]);
    let mut e = Engine::new(pk(1), config(1), 0, genesis.lineage).with_stored_chunks(good.root, kept);
    e.handle(0, Input::Start);
    let out = e.handle(0, Input::PeerConnected(pk(2)));
    let (_, id, _) = requests(&out).remove(0);
    let out = e.handle(1, Input::SyncResponse { id, response: Some(offer(&good)) });
    let asked: Vec<u32> = requests(&out)
        .into_iter()
        .filter_map(|(_, _, r)| match r {
            SyncRequest::Chunk { index, .. } => Some(index),
            _ => None,
        })
        .collect();
    // Chunk 0 was kept and verifies; the kept chunk 1 is garbage and is fetched again.
    assert_eq!(asked, vec![1, 2, 3, 4]);
}

#[test]
fn a_node_alone_runs_at_once_and_trains_from_its_state() {
    let (mut e, out) = engine(0, 0);
    assert_eq!(e.phase(), Phase::Running);
    let Some(Output::Train { round: 0, base }) =
        out.iter().find(|o| matches!(o, Output::Train { .. })).cloned()
    else {
        panic!("{out:?}")
    };
    let mine = SignedDelta::sign(
        &key(1),
        RunId([0; 32]),
        0,
        base,
        10,
        Codec::Dense,
        Codec::Dense.encode(&[1.0, 1.0]),
    );
    let out = e.handle(5, Input::Trained { round: 0, base, delta: Some(mine) });
    assert!(out.iter().any(|o| matches!(o, Output::Publish(_))));
    let merge = out.iter().find_map(|o| match o {
        Output::Merge { round, deltas, .. } => Some((*round, deltas.len())),
        _ => None,
    });
    assert_eq!(merge, Some((0, 1)), "alone, its own delta is the quorum");
    assert!(!out.iter().any(|o| matches!(o, Output::Train { .. })), "no training while the merge runs");
    let out = e.handle(6, Input::Merged { round: 0, lineage: [7; 32] });
    assert!(out.iter().any(|o| matches!(o, Output::Train { round: 1, base } if *base == [7; 32])), "{out:?}");
}

#[test]
fn deltas_of_the_next_round_are_forwarded_and_those_of_farther_rounds_only_kept() {
    let (e, _) = engine(0, 0);
    assert_eq!(e.round(), 0);
    for (round, relayed) in [(0, true), (1, true), (2, false), (1_000, false)] {
        let delta = based(2, round, [0; 32]);
        assert_eq!(e.admit(&delta.header), Admission::Accept, "round {round} is kept");
        assert_eq!(e.relays(&delta.header), relayed, "round {round}");
    }
}

fn based(i: u8, round: u64, base: [u8; 32]) -> SignedDelta {
    let payload = Codec::Dense.encode(&[f32::from(i), round as f32, 0.5]);
    SignedDelta::sign(&key(i), RunId([0; 32]), round, base, 10, Codec::Dense, payload)
}

fn of_lineage(round: u64, lineage: [u8; 32]) -> StateSnapshot {
    let mut s = state(round, f32::from(lineage[0]));
    s.lineage = lineage;
    StateSnapshot::of_flat(&s)
}

/// Node 1 of five, on the minority's lineage `[50; 32]` at round 5, running
/// without a probe: it merges round 5 with its partner (node 2) alone, as the
/// faster side of a partition does, and is at round 6 with lineage
/// `[60; 32]`, its delta of round 6 signed. Nodes 3 to 5 are the majority.
fn minority_ahead() -> Engine {
    let config = EngineConfig { probe_on_start: false, ..config(4) };
    let mut e = Engine::new(pk(1), config, 5, [50; 32]);
    e.handle(0, Input::Start);
    for i in 2..6 {
        e.handle(0, Input::PeerConnected(pk(i)));
    }
    assert_eq!(e.phase(), Phase::Running);
    e.handle(10, Input::Trained { round: 5, base: [50; 32], delta: Some(based(1, 5, [50; 32])) });
    let out = e.handle(20, Input::PeerDelta(based(2, 5, [50; 32])));
    assert!(out.is_empty() || !out.iter().any(|o| matches!(o, Output::Merge { .. })));
    let out = e.handle(1_010, Input::Timer);
    assert!(out.iter().any(|o| matches!(o, Output::Merge { round: 5, .. })), "{out:?}");
    let out = e.handle(1_020, Input::Merged { round: 5, lineage: [60; 32] });
    assert!(out.iter().any(|o| matches!(o, Output::Train { round: 6, .. })), "{out:?}");
    let out =
        e.handle(1_500, Input::Trained { round: 6, base: [60; 32], delta: Some(based(1, 6, [60; 32])) });
    assert!(out.iter().any(|o| matches!(o, Output::Publish(_))));
    e
}

#[test]
fn a_node_ahead_of_the_majority_goes_back_to_its_older_state_and_signs_no_round_twice() {
    let mut e = minority_ahead();
    // The majority's deltas of round 5 arrive late: stale, but their lineage counts.
    for i in 3..5 {
        assert_eq!(e.admit(&based(i, 5, [51; 32]).header), Admission::Stale);
        let out = e.handle(1_600, Input::PeerDelta(based(i, 5, [51; 32])));
        assert!(requests(&out).is_empty(), "two of four peers elsewhere are no majority: {out:?}");
    }
    let out = e.handle(1_600, Input::PeerDelta(based(5, 5, [51; 32])));
    assert!(
        out.iter().any(|o| matches!(o, Output::Note(Note::Outnumbered { elsewhere: 3, peers: 4, .. }))),
        "{out:?}"
    );
    assert_eq!(requests(&out).len(), 4, "offers asked of every peer");
    // The majority serves its state of round 5 (it is a round behind); the partner, its own.
    let (majority, partner) = (of_lineage(5, [51; 32]), of_lineage(6, [60; 32]));
    let serves: BTreeMap<PublicKey, StateSnapshot> =
        (2..6).map(|i| (pk(i), if i == 2 { partner.clone() } else { majority.clone() })).collect();
    let (installed, served_by, all) = serve_expecting(&mut e, out, &serves, 0);
    let installed = installed.expect("the majority's older state");
    assert_eq!((installed.round, installed.lineage), (5, [51; 32]));
    assert!(!served_by.contains(&pk(2)));
    assert_eq!(e.round(), 5);
    assert!(
        e.rounds().observing() && e.rounds().contributes_from() == 7,
        "observes past round 6, which it signed"
    );
    let joining: Vec<u64> = all
        .iter()
        .filter_map(|o| match o {
            Output::Notify { request: SyncRequest::Joining { from }, .. } => Some(*from),
            _ => None,
        })
        .collect();
    assert_eq!(joining, vec![7; 4], "peers are told not to wait for it before round 7");
    assert!(!all.iter().any(|o| matches!(o, Output::Train { .. })), "no training for rounds it signed");

    // It follows the majority's rounds 5 and 6 without signing anything.
    let mut out = Vec::new();
    for i in 2..6 {
        out.extend(e.handle(2_000, Input::PeerDelta(based(i, 5, [51; 32]))));
    }
    assert!(out.iter().any(|o| matches!(o, Output::Merge { round: 5, .. })), "{out:?}");
    let out = e.handle(2_100, Input::Merged { round: 5, lineage: [61; 32] });
    assert!(!out.iter().any(|o| matches!(o, Output::Train { .. })), "round 6 was signed: {out:?}");
    // Even a delta for round 6 handed in from outside is not published.
    let out =
        e.handle(2_200, Input::Trained { round: 6, base: [61; 32], delta: Some(based(1, 6, [61; 32])) });
    assert!(!out.iter().any(|o| matches!(o, Output::Publish(_))), "{out:?}");
    // Its own delta of round 6 was trained from the lineage it left: neither
    // the majority nor the node merges it.
    let mut out = Vec::new();
    for i in 2..6 {
        out.extend(e.handle(2_300, Input::PeerDelta(based(i, 6, [61; 32]))));
    }
    let merged = out.iter().find_map(|o| match o {
        Output::Merge { round: 6, deltas, .. } => {
            Some(deltas.iter().map(|d| d.header.sender).collect::<Vec<_>>())
        }
        _ => None,
    });
    let merged = merged.expect("round 6 closes");
    assert!(!merged.contains(&pk(1)) && merged.len() == 4, "{merged:?}");
    let out = e.handle(2_400, Input::Merged { round: 6, lineage: [71; 32] });
    assert!(
        out.iter().any(|o| matches!(o, Output::Train { round: 7, .. })),
        "contributes again from round 7: {out:?}"
    );
}

#[test]
fn a_node_ahead_goes_back_only_on_the_word_of_a_strict_majority() {
    let mut e = minority_ahead();
    let mut out = Vec::new();
    for i in 3..6 {
        out = e.handle(1_600, Input::PeerDelta(based(i, 5, [51; 32])));
    }
    // Only two of the four peers reached announce the older state (the most
    // support, but no strict majority): not enough to go back.
    let (majority, partner, third) =
        (of_lineage(5, [51; 32]), of_lineage(6, [60; 32]), of_lineage(6, [62; 32]));
    let serves: BTreeMap<PublicKey, StateSnapshot> = (2..6)
        .map(|i| {
            (
                pk(i),
                if i == 2 {
                    partner.clone()
                } else if i == 3 {
                    third.clone()
                } else {
                    majority.clone()
                },
            )
        })
        .collect();
    let (installed, _, all) = serve_all(&mut e, out, &serves);
    assert!(installed.is_none());
    assert!(all.iter().any(|o| matches!(o, Output::Note(Note::NoAgreement { .. }))), "{all:?}");
    assert_eq!((e.round(), e.rounds().observing()), (6, false));
}

/// sync_sybil's failure in CI, deterministically: a node repairing a
/// divergence asked four peers; two colluders announce a forged state far
/// ahead, two honest peers agree on the round it holds. By support alone the
/// tie went to the higher round: the forged one. A root further ahead than
/// `sync_lag_rounds` needs a strict majority, as for a node behind.
#[test]
fn a_diverged_node_takes_no_far_round_on_a_tie_with_the_honest_lineage() {
    let mut e = minority_ahead();
    let mut out = Vec::new();
    for i in 3..6 {
        out = e.handle(1_600, Input::PeerDelta(based(i, 5, [51; 32])));
    }
    let (forged, honest) = (of_lineage(50, [99; 32]), of_lineage(6, [61; 32]));
    let serves: BTreeMap<PublicKey, StateSnapshot> =
        (2..6).map(|i| (pk(i), if i == 2 || i == 5 { forged.clone() } else { honest.clone() })).collect();
    let (installed, _, all) = serve_all(&mut e, out, &serves);
    let installed = installed.unwrap_or_else(|| panic!("the honest state is installed: {all:?}"));
    assert_eq!((installed.round, installed.lineage), (6, [61; 32]));
}

/// A node restarted in its swarm's round (its checkpoint is the state its
/// peers hold) takes from their offers the deltas they published while it was
/// down: gossip does not bring them again, and without them it could not
/// close the round with its peers, and fetched the next state when their
/// next round began (crash-restart-live, in live mode).
#[test]
fn a_node_restarted_in_its_swarms_round_takes_the_deltas_its_peers_offers_carry() {
    let held = state(5, 1.0);
    let snapshot = StateSnapshot::of_flat(&held);
    let (mut e, out) = started(Engine::new(pk(1), config(2), 5, held.lineage), 2);
    assert_eq!(e.phase(), Phase::Probing);
    let published = [based(2, 5, held.lineage), based(3, 5, held.lineage)];
    let mut out_after = Vec::new();
    for (_, id, request) in requests(&out) {
        assert!(matches!(request, SyncRequest::Offer), "{request:?}");
        let response = SyncResponse::Offer(StateOffer {
            manifest: snapshot.manifest.clone(),
            expected_from: 5,
            deltas: published.to_vec(),
            expected: vec![pk(2), pk(3)],
        });
        out_after.extend(e.handle(1, Input::SyncResponse { id, response: Some(response) }));
    }
    assert_eq!((e.phase(), e.round()), (Phase::Running, 5), "{out_after:?}");
    assert!(!out_after.iter().any(|o| matches!(o, Output::Install { .. })), "nothing to fetch");
    let offered: Vec<SignedDelta> = out_after
        .iter()
        .find_map(|o| match o {
            Output::Deltas(d) => Some(d.clone()),
            _ => None,
        })
        .unwrap_or_else(|| panic!("the offers' deltas go to the driver: {out_after:?}"));
    let ids = |ds: &[SignedDelta]| ds.iter().map(|d| d.id()).collect::<BTreeSet<_>>();
    assert_eq!(offered.len(), 2, "each delta once, though both offers carry both");
    assert_eq!(ids(&offered), ids(&published));
    // The driver validates them and hands them in; with our own, round 5 closes.
    let mut out = Vec::new();
    for delta in offered {
        assert_eq!(e.admit(&delta.header), Admission::Accept);
        out.extend(e.handle(2, Input::PeerDelta(delta)));
    }
    out.extend(
        e.handle(3, Input::Trained { round: 5, base: held.lineage, delta: Some(based(1, 5, held.lineage)) }),
    );
    let merged = out.iter().find_map(|o| match o {
        Output::Merge { round: 5, deltas, reason } => Some((deltas.len(), *reason)),
        _ => None,
    });
    assert_eq!(merged, Some((3, CloseReason::Quorum)), "{out:?}");
}

#[test]
fn a_restarted_node_whose_outbox_is_ahead_of_its_checkpoint_observes_past_it() {
    let config = EngineConfig { probe_on_start: false, ..config(0) };
    // The checkpoint is an older state it went back to; it had signed round 6.
    let mut e = Engine::new(pk(1), config, 5, [51; 32]).with_outbox(based(1, 6, [60; 32]));
    let out = e.handle(0, Input::Start);
    assert_eq!(e.phase(), Phase::Running);
    assert!(!out.iter().any(|o| matches!(o, Output::Train { .. } | Output::Publish(_))), "{out:?}");
    assert_eq!(e.rounds().contributes_from(), 7);
}

#[test]
fn a_restarted_node_that_knows_only_the_header_of_its_delta_never_signs_that_round_again() {
    let config = EngineConfig { probe_on_start: false, ..config(0) };
    // Its delta of round 5, trained from its checkpoint, was torn on disk.
    let mut e = Engine::new(pk(1), config, 5, [51; 32]).with_signed(based(1, 5, [51; 32]).header);
    let out = e.handle(0, Input::Start);
    assert!(!out.iter().any(|o| matches!(o, Output::Train { .. } | Output::Publish(_))), "{out:?}");
    assert_eq!(e.rounds().contributes_from(), 6);
}

/// A node alone, restarted from a checkpoint older than its last signed delta,
/// sits out the rounds it signed as empty rounds closed at their deadline, and
/// trains again past them (it stalled at its first observed round before).
#[test]
fn a_lone_node_restarted_behind_its_last_delta_sits_its_signed_rounds_out_and_goes_on() {
    let genesis = ModelState::initial(vec![0.0; PARAMS]);
    let signed =
        SignedDelta::sign(&key(1), RunId([0; 32]), 2, [9; 32], 10, Codec::Dense, Codec::Dense.encode(&[1.0]));
    let (mut e, mut out) = started(Engine::new(pk(1), config(0), 0, genesis.lineage).with_outbox(signed), 0);
    let mut lineage = genesis.lineage;
    let mut now = 0;
    for round in 0..3 {
        assert!(!out.iter().any(|o| matches!(o, Output::Train { .. })), "round {round}: no training yet");
        let at = e.next_timer().expect("a deadline to wait for");
        assert_eq!(at, now + 1_000, "round {round}: the deadline counts from the round's start");
        now = at;
        out = e.handle(now, Input::Timer);
        let merged = out.iter().find_map(|o| match o {
            Output::Merge { round, deltas, reason } => Some((*round, deltas.len(), *reason)),
            _ => None,
        });
        assert_eq!(merged, Some((round, 0, CloseReason::Deadline)), "{out:?}");
        lineage[0] = lineage[0].wrapping_add(1);
        out = e.handle(now, Input::Merged { round, lineage });
    }
    assert!(
        out.iter().any(|o| matches!(o, Output::Train { round: 3, .. })),
        "trains past its signed round: {out:?}"
    );
}

#[test]
fn a_fetched_state_is_decoded_by_the_driver_and_one_that_does_not_decode_is_not_installed() {
    let good = StateSnapshot::of_flat(&state(5, 1.0));
    let serves = BTreeMap::from([(pk(2), good.clone()), (pk(3), good)]);
    let (mut e, out) = engine(2, 2);
    let (installed, _, all) =
        serve_decoding(&mut e, out, &serves, 9, |_| Err(ChunkError::RoundMismatch { got: 4, announced: 5 }));
    assert!(installed.is_none(), "nothing that failed to decode is installed");
    assert!(all.iter().any(|o| matches!(o, Output::Note(Note::Undecodable { .. }))), "{all:?}");
    assert_eq!(e.round(), 0);
    // An answer for a decode nobody asked for changes nothing.
    let stray = e.handle(2, Input::StateDecoded { root: [7; 32], result: Ok(state(50, 2.0)) });
    assert!(!stray.iter().any(|o| matches!(o, Output::Install { .. })), "{stray:?}");
    // The next probe fetches again, and this time the state decodes.
    let retry = e.handle(e.next_timer().expect("a retry"), Input::Timer);
    let (installed, _, _) = serve_all(&mut e, retry, &serves);
    assert_eq!(installed.expect("the retry installs").round, 5);
}

/// After a heal, gossip brings a delta of the round we gather from a peer of
/// another lineage at a time of its own: merged, it would split nodes of one
/// lineage by when it arrived. It is left out, with a note, and still counts
/// as evidence (here: one of four, so no divergence).
#[test]
fn a_closing_round_merges_only_the_deltas_of_our_own_lineage() {
    let config = EngineConfig { probe_on_start: false, wait_peers: 3, ..config(3) };
    let (mut e, _) = started(Engine::new(pk(1), config, 0, [0; 32]), 3);
    let mut out = e.handle(10, Input::PeerDelta(based(4, 0, [7; 32])));
    out.extend(e.handle(11, Input::PeerDelta(delta(2, 0))));
    out.extend(e.handle(12, Input::Trained { round: 0, base: [0; 32], delta: Some(delta(1, 0)) }));
    out.extend(e.handle(13, Input::PeerDelta(delta(3, 0))));
    let merged = out.iter().find_map(|o| match o {
        Output::Merge { round: 0, deltas, .. } => {
            Some(deltas.iter().map(|d| d.header.sender).collect::<Vec<_>>())
        }
        _ => None,
    });
    let mut merged = merged.expect("round 0 closes at quorum");
    merged.sort();
    let mut ours = vec![pk(1), pk(2), pk(3)];
    ours.sort();
    assert_eq!(merged, ours);
    assert!(
        out.iter().any(|o| matches!(o, Output::Note(Note::OtherLineage { round: 0, left_out: 1 }))),
        "{out:?}"
    );
    assert!(!out.iter().any(|o| matches!(o, Output::Note(Note::Diverged { .. }))));
}
