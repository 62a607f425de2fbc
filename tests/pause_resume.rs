//! Pausing a real node's training keeps it in the run: two `starling run`
//! processes train; one is paused with `starling pause`, keeps merging its
//! peer's rounds (to the same state) while it publishes nothing, says so in
//! `/status` and `/health`, and after `POST /resume` contributes again.

mod common;

use std::time::{Duration, Instant};

use common::{
    http::{get, post, starling, status, wait_addr, wait_status},
    run_args, test_spec, write_spec,
};

const WAIT: Duration = Duration::from_secs(180);

#[test]
fn a_paused_node_follows_the_run_without_publishing_and_resumes() {
    let dir = tempfile::tempdir().unwrap();
    let mut spec = test_spec("pause-resume");
    // A paused node holds its peer's rounds until this deadline for two rounds.
    spec.round.deadline_ms = 3_000;
    let spec_path = write_spec(dir.path(), &spec);
    let datadirs: Vec<String> =
        (0..2).map(|i| dir.path().join(format!("node-{i}")).to_str().unwrap().to_string()).collect();
    let extra = ["--http", "127.0.0.1:0", "--wait-peers", "1"];
    let mut trainer = common::http::start("trainer", run_args(&datadirs[0], &spec_path, &extra));
    let boot = trainer.tcp_address();
    let mut paused = common::http::start(
        "paused",
        run_args(&datadirs[1], &spec_path, &[&extra[..], &["--bootnodes", &boot]].concat()),
    );
    let (trainer_api, paused_api) = (wait_addr(&datadirs[0], WAIT), wait_addr(&datadirs[1], WAIT));
    trainer.wait_merged(2, WAIT);
    paused.wait_merged(2, WAIT);

    let out = starling(&["pause", "--datadir", &datadirs[1]]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("paused at round"));
    let at_pause = status(paused_api);
    assert_eq!((at_pause["paused"].as_bool(), at_pause["state"].as_str()), (Some(true), Some("paused")));
    let (code, health) = get(paused_api, "/health");
    assert_eq!(code, 200, "a paused node is healthy: {health}");
    assert!(health.contains("\"paused\""), "{health}");
    let published = at_pause["deltas_published"].as_u64().unwrap();
    let pause_round = at_pause["round"].as_u64().unwrap();

    // Paused, it follows four more rounds, and merges them to the same state as its peer.
    let followed = wait_status(paused_api, "the paused node follows rounds", WAIT, |s| {
        s["round"].as_u64() >= Some(pause_round + 4)
    });
    assert_eq!(followed["deltas_published"].as_u64(), Some(published), "a paused node publishes nothing");
    assert_eq!(followed["state"], "paused");
    let deadline = Instant::now() + WAIT;
    loop {
        let (a, b) = (status(trainer_api), status(paused_api));
        if a["round"] == b["round"] && a["round"].as_u64() > Some(pause_round + 1) {
            assert_eq!(a["lineage"], b["lineage"], "the paused node merged what its peer merged");
            break;
        }
        assert!(Instant::now() < deadline, "the two nodes never stood at the same round: {a} {b}");
        std::thread::sleep(Duration::from_millis(20));
    }
    for (node, name) in [(&paused, "paused"), (&trainer, "trainer")] {
        let merged = node.merged_rounds();
        let during: Vec<_> = merged.iter().filter(|r| r.0 > pause_round && r.0 < pause_round + 4).collect();
        assert!(
            !during.is_empty() && during.iter().all(|r| r.1 == 1),
            "{name} merged only the trainer's deltas while paused: {during:?}"
        );
    }

    // Resumed over HTTP, it publishes again and its peer merges its deltas.
    let (code, body) = post(paused_api, "/resume");
    assert_eq!(code, 200, "{body}");
    let resumed: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(resumed["paused"], false);
    let resume_round = resumed["round"].as_u64().unwrap();
    wait_status(paused_api, "the resumed node publishes", WAIT, |s| {
        s["deltas_published"].as_u64() > Some(published) && s["state"] == "training"
    });
    let deadline = Instant::now() + WAIT;
    while !trainer.merged_rounds().iter().any(|r| r.0 >= resume_round && r.1 == 2) {
        assert!(
            Instant::now() < deadline,
            "the trainer never merged the resumed node's delta:\n{}",
            trainer.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(paused.log().contains("training paused") && paused.log().contains("training resumed"));
}
