//! Helpers for tests of a node's HTTP API: find its address in the datadir,
//! send requests with bounded waits, run `starling status|pause|resume`.

use std::{
    net::SocketAddr,
    path::Path,
    process::{Command, Output},
    time::{Duration, Instant},
};

use starling_node::http::{client, ADDR_FILE};

/// The address in `<datadir>/http.addr`, waiting at most `timeout` for the node to write it.
pub fn wait_addr(datadir: &str, timeout: Duration) -> SocketAddr {
    let path = Path::new(datadir).join(ADDR_FILE);
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok(text) = std::fs::read_to_string(&path) {
            return text.trim().parse().unwrap_or_else(|e| panic!("{} holds {text:?}: {e}", path.display()));
        }
        assert!(Instant::now() < deadline, "{} not written within {timeout:?}", path.display());
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn send(addr: SocketAddr, method: hyper::Method, path: &str) -> (u16, String) {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let (status, body) = runtime
        .block_on(client::request(addr, method, path))
        .unwrap_or_else(|e| panic!("{path} on {addr}: {e}"));
    (status.as_u16(), String::from_utf8(body.to_vec()).expect("the API answers UTF-8"))
}

/// `GET path`: the status code and the body.
pub fn get(addr: SocketAddr, path: &str) -> (u16, String) {
    send(addr, hyper::Method::GET, path)
}

/// `POST path`: the status code and the body.
pub fn post(addr: SocketAddr, path: &str) -> (u16, String) {
    send(addr, hyper::Method::POST, path)
}

/// `GET /status`, parsed.
pub fn status(addr: SocketAddr) -> serde_json::Value {
    let (code, body) = get(addr, "/status");
    assert_eq!(code, 200, "/status answered {code}: {body}");
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("/status is not JSON ({e}): {body}"))
}

/// Polls `/status` until `done` holds, at most `timeout`; returns the status that did.
pub fn wait_status(
    addr: SocketAddr,
    what: &str,
    timeout: Duration,
    done: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let deadline = Instant::now() + timeout;
    loop {
        let status = status(addr);
        if done(&status) {
            return status;
        }
        assert!(Instant::now() < deadline, "{what}: not within {timeout:?}; last status {status}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Runs `starling ARGS` to completion.
pub fn starling(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_starling")).args(args).output().expect("the starling binary runs")
}

/// Starts `starling` with owned arguments (as [`super::run_args`] makes them).
pub fn start(name: &str, args: Vec<String>) -> super::NodeProcess {
    super::NodeProcess::start(name, &args.iter().map(String::as_str).collect::<Vec<_>>())
}
