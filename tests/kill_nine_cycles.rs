//! kill -9 at random (seeded) moments, over and over: every time the node
//! restarts on the same datadir, `starling inspect` finds it healthy, and it
//! resumes from a readable checkpoint, never from a round before the last
//! checkpoint it had written.

mod common;

use std::time::{Duration, Instant};

use common::{field, inspect, run_args, test_spec, write_spec, NodeProcess};
use rand::{rngs::Xoshiro256PlusPlus, RngExt, SeedableRng};

/// Cycles tried; the run stops early (and says so) if it would take longer than [`TIME_BUDGET`].
const CYCLES: usize = 50;
const TIME_BUDGET: Duration = Duration::from_secs(150);
/// The longest a node runs before it is killed; each kill lands at a random moment up to this.
const MAX_LIFETIME_MS: u64 = 1500;

/// Inspects the datadir: it must be healthy; returns the round of its newest checkpoint.
fn healthy_round(datadir: &str, cycle: usize) -> u64 {
    let inspection = inspect(datadir);
    assert_eq!(inspection["healthy"], true, "after kill {cycle}, inspect reports: {inspection}");
    inspection["round"].as_u64().expect("a healthy datadir has a round")
}

#[test]
fn kill_nine_at_random_moments_always_restarts_from_a_readable_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let spec_path = write_spec(dir.path(), &test_spec("kill-nine-cycles"));
    let datadir = dir.path().join("node").to_str().unwrap().to_string();
    let args = run_args(&datadir, &spec_path, &[]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();

    // The first start creates the identity, spec and genesis checkpoint.
    let mut node = NodeProcess::start("first start", &args);
    node.wait_merged(1, Duration::from_secs(120));
    node.kill_hard();
    let mut last = healthy_round(&datadir, 0);

    let mut rng = Xoshiro256PlusPlus::seed_from_u64(0x6b69_6c6c);
    let started = Instant::now();
    let mut survived = 0;
    let mut tried = 0;
    for cycle in 1..=CYCLES {
        if started.elapsed() + Duration::from_millis(MAX_LIFETIME_MS) > TIME_BUDGET {
            println!("stopping after {tried} cycles: the next could overrun the {TIME_BUDGET:?} budget");
            break;
        }
        tried += 1;
        let lifetime = Duration::from_millis(rng.random_range(0..MAX_LIFETIME_MS));
        let mut node = NodeProcess::start(&format!("cycle {cycle}"), &args);
        std::thread::sleep(lifetime);
        node.kill_hard();
        // If it got as far as opening the datadir, it resumed from the last checkpoint or a later one.
        if let Some(line) = node.log().lines().find(|l| l.contains("node started")) {
            let resumed: u64 = field(line, "round").and_then(|r| r.parse().ok()).expect("round field");
            assert!(
                resumed >= last,
                "cycle {cycle} resumed at round {resumed}, before checkpoint {last}:\n{}",
                node.log()
            );
        }
        let round = healthy_round(&datadir, cycle);
        assert!(
            round >= last,
            "after kill {cycle} the newest checkpoint is round {round}, older than {last}"
        );
        last = round;
        survived += 1;
    }
    println!("kill -9 cycles survived: {survived} of {tried} (last checkpoint: round {last})");

    // And it carries on past where it was.
    let until = (last + 3).to_string();
    let mut args = args.clone();
    args.extend(["--rounds", &until]);
    let mut node = NodeProcess::start("final run", &args);
    node.wait_exit(Duration::from_secs(120));
    assert!(node.log().contains("node started"), "{}", node.log());
    assert_eq!(healthy_round(&datadir, CYCLES + 1), last + 3);
    assert!(tried >= 10, "only {tried} cycles fit in the time budget");
}

/// A newest checkpoint whose bytes rotted is reported by `inspect`, skipped
/// with a clear log line on restart, and the node resumes from the one before.
#[test]
fn a_corrupted_newest_checkpoint_falls_back_to_the_previous_one() {
    let dir = tempfile::tempdir().unwrap();
    let spec = test_spec("corrupt-checkpoint");
    let spec_path = write_spec(dir.path(), &spec);
    let datadir = dir.path().join("node").to_str().unwrap().to_string();
    let args = run_args(&datadir, &spec_path, &["--rounds", "4"]);
    let mut node = NodeProcess::start("first run", &args.iter().map(String::as_str).collect::<Vec<_>>());
    node.wait_exit(Duration::from_secs(120));
    assert_eq!(healthy_round(&datadir, 0), 4);

    // Flip one byte in the body of the round-4 record.
    {
        let store = starling_storage::Store::open(std::path::Path::new(&datadir)).unwrap();
        let mut record = store.raw_checkpoint(4).unwrap().expect("the round-4 record");
        let last = record.len() - 1;
        record[last] ^= 0x01;
        store.put_raw_checkpoint(4, &record).unwrap();
    }
    let inspection = inspect(&datadir);
    assert_eq!(inspection["healthy"], false, "{inspection}");
    assert_eq!(inspection["round"].as_u64(), Some(3), "{inspection}");

    let args = run_args(&datadir, &spec_path, &["--rounds", "6"]);
    let mut node =
        NodeProcess::start("after the corruption", &args.iter().map(String::as_str).collect::<Vec<_>>());
    node.wait_exit(Duration::from_secs(120));
    let log = node.log();
    assert!(log.contains("skipping unreadable checkpoint") && log.contains("checksum"), "{log}");
    assert!(log.contains("resuming from checkpoint round=3"), "{log}");
    assert_eq!(healthy_round(&datadir, 1), 6, "the rewritten round-4 record replaced the rotten one");
}

/// With `--checkpoint-every 4` a state is checkpointed every fourth round and
/// at the `--rounds` limit; a kill -9 goes back to the last fourth, and a node
/// that signed a delta for a later round says on restart that it sits out
/// the rounds up to it (it never signs twice).
#[test]
fn checkpoint_every_n_checkpoints_every_nth_state_and_the_last() {
    let dir = tempfile::tempdir().unwrap();
    let spec_path = write_spec(dir.path(), &test_spec("checkpoint-every"));
    let datadir = dir.path().join("node").to_str().unwrap().to_string();
    let args = run_args(&datadir, &spec_path, &["--checkpoint-every", "4", "--rounds", "6"]);
    let mut node = NodeProcess::start("to round 6", &args.iter().map(String::as_str).collect::<Vec<_>>());
    node.wait_exit(Duration::from_secs(120));
    let inspection = inspect(&datadir);
    assert_eq!(inspection["round"].as_u64(), Some(6), "{inspection}");
    assert_eq!(inspection["checkpoints_kept"], serde_json::json!([4, 6]), "{inspection}");

    let args = run_args(&datadir, &spec_path, &["--checkpoint-every", "4"]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut node = NodeProcess::start("killed", &args);
    node.wait_merged(9, Duration::from_secs(120));
    node.kill_hard();
    let merged = node.last_merged().expect("merged rounds");
    let round = healthy_round(&datadir, 1);
    assert!(
        round.is_multiple_of(4) && round >= 8 && round <= merged + 1,
        "checkpoint {round} after merging {merged}"
    );

    let mut node = NodeProcess::start("after the kill", &args);
    node.wait_for_line("node started", Duration::from_secs(60));
    let log = node.log();
    assert!(log.contains(&format!("resuming from checkpoint round={round}")), "{log}");
    if round < merged {
        assert!(log.contains("sits out the rounds"), "signed round {merged} or later:\n{log}");
    }
}
