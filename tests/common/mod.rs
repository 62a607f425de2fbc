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

pub mod raw_peer;

/// The built-in spec, named for the test so runs of different tests never mix.
pub fn test_spec(name: &str) -> RunSpec {
    let mut spec = RunSpec::builtin();
    spec.name = format!("test-{name}");
    spec
}

/// A running `starling` process, killed when dropped.
pub struct NodeProcess {
    pub name: String,
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
}

impl NodeProcess {
    /// Starts `starling ARGS`, capturing its log (stderr) line by line.
    pub fn start(name: &str, args: &[&str]) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_starling"))
            .args(args)
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
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

    /// Everything it logged so far.
    pub fn log(&self) -> String {
        self.lines.lock().unwrap().join("\n")
    }
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Writes a spec file into `dir` and returns its path as a string.
pub fn write_spec(dir: &Path, spec: &RunSpec) -> String {
    let path = dir.join("spec.toml");
    std::fs::write(&path, spec.to_toml()).unwrap();
    path.to_str().unwrap().to_string()
}
