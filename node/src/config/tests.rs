//! The layers of `run`'s options, resolved from real files (no environment:
//! tests run in parallel; the binary's tests under `tests/cli.rs` cover it).

use std::path::Path;

use super::*;
use crate::cli::{command, parse_from, Command, RunArgs};

fn resolve(datadir: &Path, file: Option<&str>, flags: &[&str]) -> Result<RunArgs, ConfigError> {
    if let Some(text) = file {
        std::fs::write(datadir.join("config.toml"), text).unwrap();
    }
    let mut args = vec!["starling", "run", "--datadir", datadir.to_str().unwrap()];
    args.extend(flags);
    match parse_from(args)?.command {
        Command::Run(args) => Ok(args),
        other => panic!("parsed as {other:?}"),
    }
}

fn source<'a>(args: &'a RunArgs, key: &str) -> &'a Source {
    &args.provenance.get(key).unwrap_or_else(|| panic!("no {key} in {:?}", args.provenance)).source
}

#[test]
fn a_flag_beats_the_file_and_the_file_beats_the_default() {
    let dir = tempfile::tempdir().unwrap();
    let file = "rounds = 9\nwait-peers = 2\nevaluate = true\nno_mdns = true\n";
    let args = resolve(dir.path(), Some(file), &["--rounds", "3"]).unwrap();
    let path = dir.path().join("config.toml");
    assert_eq!(args.rounds, Some(3));
    assert_eq!(source(&args, "rounds"), &Source::Flag);
    assert_eq!(args.network.wait_peers, 2);
    assert_eq!(source(&args, "wait-peers"), &Source::File(path.clone()));
    assert!(args.evaluate && args.network.no_mdns);
    assert_eq!(source(&args, "no-mdns"), &Source::File(path.clone()));
    assert_eq!(args.network.wait_timeout, 60);
    assert_eq!(source(&args, "wait-timeout"), &Source::Default);
    assert_eq!(source(&args, "spec"), &Source::Unset);
    assert_eq!(args.provenance.file.as_deref(), Some(path.as_path()));
    assert_eq!(args.provenance.get("wait-peers").unwrap().value, Some(toml::Value::Integer(2)));
}

#[test]
fn relative_paths_in_the_file_are_taken_from_the_datadir() {
    let dir = tempfile::tempdir().unwrap();
    let args = resolve(dir.path(), Some("spec = \"swarm.toml\"\n"), &[]).unwrap();
    assert_eq!(args.spec, Some(dir.path().join("swarm.toml")));
}

#[test]
fn lists_in_the_file_set_options_that_take_several_values() {
    let dir = tempfile::tempdir().unwrap();
    let file = "listen = [\"/ip4/127.0.0.1/tcp/7000\", \"/ip4/127.0.0.1/udp/7000/quic-v1\"]\n";
    let args = resolve(dir.path(), Some(file), &[]).unwrap();
    assert_eq!(args.network.listen.len(), 2);
    let listen = &args.provenance.get("listen").unwrap().value;
    assert_eq!(listen.as_ref().and_then(|v| v.as_array()).map(Vec::len), Some(2));
}

#[test]
fn a_bad_value_names_the_file_the_key_and_what_it_takes() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.toml").display().to_string();
    let err = resolve(dir.path(), Some("wait-peers = \"many\"\n"), &[]).unwrap_err().to_string();
    assert!(err.contains(&path) && err.contains("`wait-peers = \"many\"`"), "{err}");
    assert!(err.contains("expected a whole number"), "{err}");
    let err = resolve(dir.path(), Some("listen = 5\n"), &[]).unwrap_err().to_string();
    assert!(err.contains("`listen = 5`") && err.contains("multiaddr"), "{err}");
    let err = resolve(dir.path(), Some("rounds = [1, 2]\n"), &[]).unwrap_err().to_string();
    assert!(err.contains("a list where one value goes"), "{err}");
    let err = resolve(dir.path(), Some("evaluate = \"yes\"\n"), &[]).unwrap_err().to_string();
    assert!(err.contains("true or false"), "{err}");
}

#[test]
fn a_flag_fixes_a_bad_value_in_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let args = resolve(dir.path(), Some("wait-peers = \"many\"\n"), &["--wait-peers", "1"]).unwrap();
    assert_eq!(args.network.wait_peers, 1);
}

#[test]
fn unknown_keys_datadir_and_bad_toml_are_refused_with_the_file_named() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.toml").display().to_string();
    let err = resolve(dir.path(), Some("wait-peer = 2\n"), &[]).unwrap_err().to_string();
    assert!(
        err.contains(&path) && err.contains("unknown key `wait-peer`") && err.contains("wait-peers"),
        "{err}"
    );
    let err = resolve(dir.path(), Some("datadir = \"/x\"\n"), &[]).unwrap_err().to_string();
    assert!(err.contains("cannot set `datadir`") && err.contains("--datadir"), "{err}");
    let err = resolve(dir.path(), Some("rounds = \n"), &[]).unwrap_err().to_string();
    assert!(err.contains(&path) && err.contains("not valid TOML"), "{err}");
}

#[test]
fn the_commented_defaults_parse_and_resolve_to_the_defaults_when_uncommented() {
    let text = commented_defaults(&command());
    assert!(text.contains("# wait-peers = 0\n"), "{text}");
    assert!(text.contains("STARLING_WAIT_PEERS"), "{text}");
    let dir = tempfile::tempdir().unwrap();
    let defaults = resolve(dir.path(), None, &[]).unwrap();
    let uncommented: String = text
        .lines()
        .filter_map(|l| l.strip_prefix("# "))
        .filter(|l| l.contains(" = ") && !l.contains('<') && !l.starts_with('`'))
        .map(|l| format!("{l}\n"))
        .collect();
    assert!(uncommented.contains("listen = [") && uncommented.contains("evaluate = false"), "{uncommented}");
    let from_file = resolve(dir.path(), Some(&uncommented), &[]).unwrap();
    for (a, b) in defaults.provenance.values.iter().zip(&from_file.provenance.values) {
        assert_eq!(a.value, b.value, "{}", a.key);
    }
    assert_eq!(source(&from_file, "wait-peers"), &Source::File(dir.path().join("config.toml")));
}

#[test]
fn every_run_option_gets_a_starling_variable() {
    let command = command();
    let run = command.find_subcommand("run").unwrap();
    for arg in file_args(run) {
        let env = arg.get_env().map(|e| e.to_string_lossy().into_owned());
        assert!(env.as_deref().is_some_and(|e| e.starts_with("STARLING_")), "--{:?}", arg.get_long());
    }
}

#[test]
fn the_dump_is_toml_with_a_source_per_value() {
    let dir = tempfile::tempdir().unwrap();
    let args = resolve(dir.path(), Some("wait-peers = 2\n"), &["--rounds", "3"]).unwrap();
    let text = dump(&args.provenance);
    let table: toml::Table = text.parse().expect("the dump is TOML");
    assert_eq!(table["rounds"].as_integer(), Some(3));
    assert!(!table.contains_key("spec"));
    let line = |key: &str| text.lines().find(|l| l.starts_with(&format!("{key} = "))).unwrap().to_string();
    assert!(line("rounds").ends_with("# flag"), "{text}");
    assert!(line("wait-peers").contains("# config.toml"), "{text}");
    assert!(line("wait-timeout").ends_with("# default"), "{text}");
}
