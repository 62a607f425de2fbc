//! Helpers for whole-behaviour tests: real `starling` processes that are always
//! killed, log lines read back with bounded waits, and a small spec that trains fast.

#![allow(dead_code)]

use std::{
    io::{BufRead, BufReader},
    path::Path,
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use starling_protocol::RunSpec;

pub mod http;
pub mod netns;
pub mod raw_peer;

/// The built-in spec, named for the test so runs of different tests never mix.
pub fn test_spec(name: &str) -> RunSpec {
    let mut spec = RunSpec::builtin();
    spec.name = format!("test-{name}");
    spec
}

/// How many of a node's decision lines a failing test prints.
const DECISION_LINES: usize = 80;

/// A running `starling` process, killed when dropped; a failing test prints
/// its decisions.
pub struct NodeProcess {
    pub name: String,
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
}

impl NodeProcess {
    /// Starts `starling ARGS`, capturing its log (stderr) line by line.
    pub fn start(name: &str, args: &[&str]) -> Self {
        Self::spawn(name, Command::new(env!("CARGO_BIN_EXE_starling")).args(args))
    }

    /// Starts `starling ARGS` inside the network namespace `netns` (`ip netns exec`
    /// execs the binary, so the process is still the one killed on drop).
    pub fn start_in_netns(netns: &str, name: &str, args: &[&str]) -> Self {
        Self::spawn(
            name,
            Command::new("ip").args(["netns", "exec", netns, env!("CARGO_BIN_EXE_starling")]).args(args),
        )
    }

    fn spawn(name: &str, command: &mut Command) -> Self {
        let mut child = command
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            // Tests run nodes side by side: each serves its HTTP API on a free port.
            .env("STARLING_HTTP", "127.0.0.1:0")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("the starling binary starts");
        let stderr = child.stderr.take().expect("stderr is piped");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let sink = lines.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                sink.lock().unwrap().push(line);
            }
        });
        Self { name: name.into(), child, lines }
    }

    /// The first log line containing `needle`, waiting at most `timeout`.
    pub fn wait_for_line(&mut self, needle: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(line) = self.lines.lock().unwrap().iter().find(|l| l.contains(needle)) {
                return line.clone();
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("{} exited ({status}) before logging {needle:?}:\n{}", self.name, self.log());
            }
            assert!(
                Instant::now() < deadline,
                "{} did not log {needle:?} within {timeout:?}:\n{}",
                self.name,
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The node's TCP listen address on 127.0.0.1, with its peer id.
    pub fn tcp_address(&mut self) -> String {
        let line = self.wait_for_line("listening address=/ip4/127.0.0.1/tcp/", Duration::from_secs(30));
        line.split("address=").nth(1).expect("address field").split_whitespace().next().unwrap().to_string()
    }

    /// Waits for the process to exit by itself, at most `timeout`; panics with its log otherwise.
    pub fn wait_exit(&mut self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                assert!(status.success(), "{} failed ({status}):\n{}", self.name, self.log());
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{} still running after {timeout:?}:\n{}",
                self.name,
                self.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Sends SIGINT, as Ctrl-C would.
    pub fn interrupt(&self) {
        let status = Command::new("kill").args(["-INT", &self.child.id().to_string()]).status().unwrap();
        assert!(status.success(), "kill -INT failed");
    }

    /// Sends SIGTERM, as a service manager would.
    pub fn terminate(&self) {
        let status = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status().unwrap();
        assert!(status.success(), "kill -TERM failed");
    }

    /// Kills the process with SIGKILL (kill -9) and reaps it.
    pub fn kill_hard(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Waits for the process to exit, at most `timeout`, and returns its exit code (None: killed by a signal).
    pub fn wait_status(&mut self, timeout: Duration) -> Option<i32> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status.code();
            }
            assert!(
                Instant::now() < deadline,
                "{} still running after {timeout:?}:\n{}",
                self.name,
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Every merged round it logged: (round, deltas merged, close reason).
    pub fn merged_rounds(&self) -> Vec<(u64, usize, String)> {
        self.lines
            .lock()
            .unwrap()
            .iter()
            .filter(|l| l.contains("round merged"))
            .filter_map(|l| {
                Some((
                    field(l, "round")?.parse().ok()?,
                    field(l, "merged")?.parse().ok()?,
                    field(l, "reason")?,
                ))
            })
            .collect()
    }

    /// The highest round it merged so far.
    pub fn last_merged(&self) -> Option<u64> {
        self.merged_rounds().iter().map(|r| r.0).max()
    }

    /// Waits until it has merged `round`, at most `timeout`.
    pub fn wait_merged(&mut self, round: u64, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while self.last_merged().is_none_or(|r| r < round) {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("{} exited ({status}) before merging round {round}:\n{}", self.name, self.log());
            }
            assert!(
                Instant::now() < deadline,
                "{} did not merge round {round} within {timeout:?}:\n{}",
                self.name,
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Its log lines that record a protocol decision (merges, syncs,
    /// installs, lineage checks, warnings), the last [`DECISION_LINES`] of them.
    pub fn decisions(&self) -> String {
        const MARKS: [&str; 14] = [
            "round merged",
            "not newer",
            "no state is announced",
            "installed",
            "fetching",
            "lineage",
            "other than ours",
            "drifted",
            "diverged",
            "ahead",
            "peer leaves",
            "expected",
            " WARN ",
            " ERROR ",
        ];
        let lines = self.lines.lock().unwrap();
        let after_time = |l: &str| l.split_once(' ').map_or("", |(_, rest)| rest).to_string();
        let mut kept: Vec<&str> = Vec::new();
        for line in lines.iter().filter(|l| MARKS.iter().any(|m| l.contains(m))) {
            // A repeated line (a retry) shows once per run of repeats.
            if kept.last().is_none_or(|last| after_time(last) != after_time(line)) {
                kept.push(line);
            }
        }
        kept[kept.len().saturating_sub(DECISION_LINES)..].join("\n")
    }

    /// Everything it logged so far.
    pub fn log(&self) -> String {
        self.lines.lock().unwrap().join("\n")
    }
}

impl Drop for NodeProcess {
    /// Kills the node. With `STARLING_TEST_LOGS=DIR`, its whole log is kept
    /// as `DIR/<name>.log`, for reading every node's side after a failure.
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            // A failing test prints one node's log at most: show every node's
            // protocol decisions, so that a failure seen once (in CI) can be read.
            eprintln!("--- {}: its protocol decisions ---\n{}", self.name, self.decisions());
        }
        if let Some(dir) = std::env::var_os("STARLING_TEST_LOGS") {
            let _ = std::fs::create_dir_all(&dir);
            let _ = std::fs::write(Path::new(&dir).join(format!("{}.log", self.name)), self.log());
        }
    }
}

/// Writes a spec file into `dir` and returns its path as a string.
pub fn write_spec(dir: &Path, spec: &RunSpec) -> String {
    let path = dir.join("spec.toml");
    std::fs::write(&path, spec.to_toml()).unwrap();
    path.to_str().unwrap().to_string()
}

/// The value of `name=value` in a tracing log line (quotes removed).
pub fn field(line: &str, name: &str) -> Option<String> {
    let key = format!(" {name}=");
    let start = line.find(&key)? + key.len();
    let value = line[start..].split_whitespace().next()?;
    Some(value.trim_matches('"').to_string())
}

/// `starling inspect --datadir DIR --json`, parsed; panics with its output when it does not run.
pub fn inspect(datadir: &str) -> serde_json::Value {
    let output = Command::new(env!("CARGO_BIN_EXE_starling"))
        .args(["inspect", "--datadir", datadir, "--json"])
        .output()
        .expect("starling inspect runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    serde_json::from_str(&stdout).unwrap_or_else(|e| {
        panic!("inspect printed no JSON ({e}): {stdout}\n{}", String::from_utf8_lossy(&output.stderr))
    })
}

/// The arguments of `starling run` for a loopback node of a test.
pub fn run_args(datadir: &str, spec_path: &str, extra: &[&str]) -> Vec<String> {
    let mut args: Vec<String> =
        ["run", "--datadir", datadir, "--spec", spec_path, "--listen", "/ip4/127.0.0.1/tcp/0", "--no-mdns"]
            .iter()
            .map(|s| s.to_string())
            .collect();
    args.extend(extra.iter().map(|s| s.to_string()));
    args
}
