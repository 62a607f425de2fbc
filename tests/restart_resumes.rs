//! Ctrl-C stops a node cleanly with its last merged round checkpointed, and the
//! node restarted on the same datadir resumes from there, spec read from the datadir.

mod common;

use std::time::Duration;

use common::{test_spec, write_spec, NodeProcess};
use starling_storage::Store;

#[test]
fn sigint_checkpoints_and_a_restart_resumes() {
    let dir = tempfile::tempdir().unwrap();
    let spec = test_spec("restart-resumes");
    let spec_path = write_spec(dir.path(), &spec);
    let datadir = dir.path().join("node").to_str().unwrap().to_string();
    let listen = ["--listen", "/ip4/127.0.0.1/tcp/0", "--no-mdns"];

    let mut node = NodeProcess::start(
        "first run",
        &[&["run", "--datadir", &datadir, "--spec", &spec_path][..], &listen].concat(),
    );
    node.wait_for_line("round=2", Duration::from_secs(120));
    node.interrupt();
    node.wait_exit(Duration::from_secs(30));
    assert!(node.log().contains("shutting down"), "{}", node.log());

    let reached = {
        let store = Store::open(std::path::Path::new(&datadir)).unwrap();
        let state =
            store.latest_checkpoint(spec.param_count()).unwrap().checkpoint.expect("a checkpoint").state;
        assert!(state.round >= 3, "checkpoint at round {}", state.round);
        state.round
    };

    // No --spec: the datadir remembers its run.
    let until = (reached + 2).to_string();
    let mut again = NodeProcess::start(
        "second run",
        &[&["run", "--datadir", &datadir, "--rounds", &until][..], &listen].concat(),
    );
    again.wait_exit(Duration::from_secs(120));
    assert!(again.log().contains(&format!("resuming from checkpoint round={reached}")), "{}", again.log());
    let store = Store::open(std::path::Path::new(&datadir)).unwrap();
    assert_eq!(
        store.latest_checkpoint(spec.param_count()).unwrap().checkpoint.unwrap().state.round,
        reached + 2
    );
}

#[test]
fn a_bad_spec_file_is_named_in_the_error() {
    let dir = tempfile::tempdir().unwrap();
    let spec_path = dir.path().join("spec.toml");
    std::fs::write(&spec_path, "name = \"x\"\n").unwrap();
    let datadir = dir.path().join("node");
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_starling"))
        .args(["run", "--datadir", datadir.to_str().unwrap(), "--spec", spec_path.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("spec.toml") && stderr.contains("missing field"), "{stderr}");
}
