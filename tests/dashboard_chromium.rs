//! The dashboard in a real browser: two `starling run` processes train a few
//! rounds; headless Chromium loads the first one's page, runs its script and
//! dumps the rendered DOM, which must chart every merged round, then takes a
//! screenshot. Skipped, saying so, where no Chromium is installed (`.ci/run`
//! installs it).

mod common;

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use common::{
    http::{status, wait_addr},
    run_args, test_spec, write_spec,
};

const WAIT: Duration = Duration::from_secs(180);

fn chromium() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("CHROMIUM") {
        return Some(PathBuf::from(path));
    }
    ["/usr/bin/chromium", "/usr/bin/chromium-browser", "/usr/bin/google-chrome"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
}

/// A Chromium process, killed when dropped.
struct Browser(Child);

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Runs headless Chromium with `args` on `url` and returns its stdout, within 90 s.
fn headless(chromium: &Path, profile: &Path, args: &[&str], url: &str) -> String {
    let child = Command::new(chromium)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-dev-shm-usage",
            &format!("--user-data-dir={}", profile.display()),
        ])
        .args(args)
        .arg(url)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("chromium starts");
    let mut browser = Browser(child);
    let deadline = Instant::now() + Duration::from_secs(90);
    while browser.0.try_wait().expect("try_wait").is_none() {
        assert!(Instant::now() < deadline, "chromium did not finish {args:?} within 90 s");
        std::thread::sleep(Duration::from_millis(100));
    }
    let mut out = String::new();
    std::io::Read::read_to_string(browser.0.stdout.as_mut().unwrap(), &mut out).unwrap();
    out
}

/// The `data-points` of the chart `id` in a rendered page.
fn chart_points(dom: &str, id: &str) -> usize {
    let start = dom.find(&format!("id=\"{id}\"")).unwrap_or_else(|| panic!("no #{id} in the page:\n{dom}"));
    let tag = &dom[dom[..start].rfind('<').unwrap()..];
    let tag = &tag[..tag.find('>').unwrap()];
    let value =
        tag.split("data-points=\"").nth(1).unwrap_or_else(|| panic!("#{id} has no data-points: {tag}"));
    value[..value.find('"').unwrap()].parse().unwrap()
}

#[test]
fn the_dashboard_charts_every_merged_round_in_chromium() {
    let Some(chromium) = chromium() else {
        println!("skipping: no Chromium at /usr/bin/chromium (CI installs it: apt-get install chromium; or set CHROMIUM)");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let mut spec = test_spec("dashboard");
    spec.round.deadline_ms = 5_000;
    let spec_path = write_spec(dir.path(), &spec);
    let datadirs: Vec<String> =
        (0..2).map(|i| dir.path().join(format!("node-{i}")).to_str().unwrap().to_string()).collect();
    let extra = ["--http", "127.0.0.1:0", "--evaluate", "--wait-peers", "1"];
    let mut first = common::http::start("node-0", run_args(&datadirs[0], &spec_path, &extra));
    let boot = first.tcp_address();
    let _second = common::http::start(
        "node-1",
        run_args(&datadirs[1], &spec_path, &[&extra[..], &["--bootnodes", &boot]].concat()),
    );
    let addr = wait_addr(&datadirs[0], WAIT);
    first.wait_merged(4, WAIT);
    let merged = status(addr)["rounds_merged"].as_u64().unwrap() as usize;
    assert!(merged >= 5, "five rounds merged before the page loads");
    let url = format!("http://{addr}/");

    let profile = dir.path().join("chromium-profile");
    let dom = headless(&chromium, &profile, &["--virtual-time-budget=5000", "--dump-dom"], &url);
    for chart in ["chart-loss", "chart-accuracy", "chart-peers", "chart-bytes"] {
        let points = chart_points(&dom, chart);
        assert!(points >= merged, "#{chart} charts {points} rounds of the {merged} merged:\n{dom}");
    }
    assert!(dom.matches("class=\"pt\"").count() >= 4 * merged, "a point per round and chart:\n{dom}");
    assert!(dom.contains("class=\"badge training\""), "the state badge says training:\n{dom}");
    assert!(dom.contains("<div id=\"banner\" style=\"display: none;\">"), "the page reached /status:\n{dom}");

    let shot = Path::new(env!("CARGO_TARGET_TMPDIR")).join("dashboard.png");
    let _ = std::fs::remove_file(&shot);
    headless(
        &chromium,
        &profile,
        &[
            "--virtual-time-budget=5000",
            "--window-size=1280,900",
            &format!("--screenshot={}", shot.display()),
        ],
        &url,
    );
    let png = std::fs::read(&shot).unwrap_or_else(|e| panic!("no screenshot at {}: {e}", shot.display()));
    assert!(png.starts_with(b"\x89PNG\r\n\x1a\n") && png.len() > 20_000, "{} bytes", png.len());
    println!("dashboard screenshot: {} ({} bytes)", shot.display(), png.len());
}
