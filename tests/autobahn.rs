//! RFC 6455 conformance through wssd: the Autobahn|Testsuite fuzzingclient (cases 1–7 and
//! 9, 300 cases) against a conformant echo server, once directly and once through wssd in
//! proxy mode. No case may come out worse through wssd than directly.
//!
//! The suite is Python 2 only; `scripts/autobahn-setup` installs it from PyPI into a cache
//! directory on first use. The upstream is Autobahn's own echo server, set to answer
//! protocol violations with a close frame (`--no-fail-by-drop`) as most servers do, so
//! that what the client sees is decided by the close codes, not by who drops TCP first.
//! A case that looks worse through wssd is run again, both ways, before it counts: a few
//! cases depend on timing even directly (the suite's own timers of 0.5 to 1 s).

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::pebble::free_port;
use common::*;

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn wstest() -> PathBuf {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/autobahn-setup");
    let out = Command::new(&script)
        .output()
        .expect("run scripts/autobahn-setup");
    assert!(
        out.status.success(),
        "scripts/autobahn-setup failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    PathBuf::from(stdout.lines().last().expect("the path of wstest").trim())
}

fn wait_for_port(port: u16) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "nothing listens on {port}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// (behavior, behaviorClose) by case, for each agent.
type Results = BTreeMap<String, BTreeMap<String, (String, String)>>;

/// Runs the fuzzingclient on `cases` against each (agent, url); returns the results.
fn fuzz(wstest: &Path, dir: &Path, servers: &[(&str, String)], cases: &[String]) -> Results {
    let out = dir.join(format!("reports-{}", free_port()));
    let spec = serde_json::json!({
        "outdir": out,
        "servers": servers
            .iter()
            .map(|(agent, url)| serde_json::json!({"agent": agent, "url": url}))
            .collect::<Vec<_>>(),
        "cases": cases,
        "exclude-cases": [],
        "exclude-agent-cases": {},
    });
    let spec_path = dir.join("fuzzingclient.json");
    std::fs::write(&spec_path, spec.to_string()).unwrap();
    let mut child = Killed(
        Command::new(wstest)
            .args(["-m", "fuzzingclient", "-s"])
            .arg(&spec_path)
            .current_dir(dir)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("wstest.err")).unwrap())
            .spawn()
            .expect("start wstest"),
    );
    let deadline = Instant::now() + Duration::from_secs(600);
    let status = loop {
        if let Some(status) = child.0.try_wait().unwrap() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "the fuzzingclient ran over 10 minutes"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(
        status.success(),
        "wstest failed; see {}",
        dir.join("wstest.err").display()
    );
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("index.json")).expect("index.json"))
            .unwrap();
    let mut results = Results::new();
    for (agent, cases) in index.as_object().unwrap() {
        for (case, result) in cases.as_object().unwrap() {
            results.entry(agent.clone()).or_default().insert(
                case.clone(),
                (
                    result["behavior"].as_str().unwrap_or("").to_string(),
                    result["behaviorClose"].as_str().unwrap_or("").to_string(),
                ),
            );
        }
    }
    results
}

/// How good an outcome is: a pass (OK, or informational) over a non-strict pass over
/// unimplemented over a failure (FAILED, WRONG CODE, UNCLEAN, FAILED BY CLIENT).
fn rank(outcome: &str) -> u8 {
    match outcome {
        "OK" | "INFORMATIONAL" => 3,
        "NON-STRICT" => 2,
        "UNIMPLEMENTED" => 1,
        _ => 0,
    }
}

fn worse(through: &(String, String), direct: &(String, String)) -> bool {
    rank(&through.0) < rank(&direct.0) || rank(&through.1) < rank(&direct.1)
}

#[test]
fn every_autobahn_case_is_as_good_through_wssd_as_directly() {
    let wstest = wstest();
    let dir = tempfile::tempdir().unwrap();
    let up_port = free_port();
    let _upstream = Killed(
        Command::new(wstest.with_file_name("autobahn-echoserver"))
            .args(["--no-fail-by-drop", &format!("ws://127.0.0.1:{up_port}")])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.path().join("echoserver.err")).unwrap())
            .spawn()
            .expect("start the echo server"),
    );
    wait_for_port(up_port);
    let ca = TestCa::new();
    write_pair(dir.path(), &ca.leaf(&["localhost", "127.0.0.1"]));
    let config = files_config(
        dir.path(),
        &format!("upstream = \"ws://127.0.0.1:{up_port}\"\nmax_message_size = \"64MiB\""),
        "",
    );
    let wssd = Wssd::start(dir.path(), &config);
    let servers = [
        ("direct", format!("ws://127.0.0.1:{up_port}")),
        ("wssd", format!("wss://127.0.0.1:{}", wssd.addr.port())),
    ];
    let all: Vec<String> = ["1", "2", "3", "4", "5", "6", "7", "9"]
        .iter()
        .map(|c| format!("{c}.*"))
        .collect();
    let results = fuzz(&wstest, dir.path(), &servers, &all);
    let (direct, through) = (&results["direct"], &results["wssd"]);
    assert!(direct.len() >= 290, "only {} cases ran", direct.len());
    assert_eq!(direct.len(), through.len());
    let mut suspects: Vec<String> = direct
        .iter()
        .filter(|(case, d)| worse(&through[*case], d))
        .map(|(case, _)| case.clone())
        .collect();
    let first_look: Vec<String> = suspects
        .iter()
        .map(|c| format!("{c}: direct {:?}, through wssd {:?}", direct[c], through[c]))
        .collect();
    // Timing-dependent cases get two more chances, both ways.
    for _ in 0..2 {
        if suspects.is_empty() {
            break;
        }
        let again = fuzz(&wstest, dir.path(), &servers, &suspects);
        suspects.retain(|case| worse(&again["wssd"][case], &again["direct"][case]));
    }
    assert!(
        suspects.is_empty(),
        "worse through wssd, in three runs: {suspects:?}\nfirst run: {first_look:#?}\n{}",
        wssd.logs()
            .lines()
            .filter(|l| !l.contains("DEBUG"))
            .collect::<Vec<_>>()
            .join("\n")
    );
}
