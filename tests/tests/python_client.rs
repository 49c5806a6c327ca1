//! The Python client (`clients/python/`) against the real agent: its unittest suite
//! (subscribe, the evict for a refused connect, snapshot, `forbidden` as uid 65534,
//! the asyncio reader) and the example pool controller.

use std::{
    io::{BufRead as _, BufReader},
    net::TcpStream,
    path::PathBuf,
    process::Stdio,
    sync::mpsc,
    thread,
    time::{Duration, Instant},
};

use connmon_integration::{
    Agent, closed_port, piped, require_root, scratch_dir, sh, timing::wait_until, write_config,
};

fn python_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../clients/python")
}

/// An agent with no pool (every destination may be evicted, with no percentage guard:
/// each Python test evicts one more) whose socket uid 65534 can open (group `nogroup`).
/// The local-outage guard is host-wide: other processes' failing connects would suspend
/// the ejections these tests wait for, so it is off.
fn start_agent(tag: &str, extra_policy: &str) -> (Agent, PathBuf) {
    let dir = scratch_dir(tag);
    let config = write_config(
        &dir,
        format!(
            "[agent]\nsocket_group = \"nogroup\"\n[policy]\nmax_ejection_percent = 100\noutage_min_destinations = 100000\n{extra_policy}"
        ),
    );
    let socket = dir.join("sock").join("connmon.sock");
    let agent = Agent::start_serving(&config, &socket);
    // A deadline (the socket is bound right after attach), generous for a loaded host.
    agent.wait_for_socket(&socket, Duration::from_secs(20));
    (agent, socket)
}

#[test]
fn the_python_client_test_suite_passes_against_a_real_agent() {
    require_root();
    let (_agent, socket) = start_agent("py", "");
    let mut child = piped("python3")
        .args(["-m", "unittest", "-v", "test_connmon_client"])
        .current_dir(python_dir())
        .env("CONNMON_SOCKET", &socket)
        .spawn()
        .expect("python3");
    let deadline = Instant::now() + Duration::from_secs(60);
    while child.try_wait().expect("wait").is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            break;
        }
        thread::sleep(Duration::from_millis(50));
    }
    let out = child.wait_with_output().expect("output");
    let report = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "python3 -m unittest failed:\n{report}"
    );
    for test in [
        "test_subscribe_receives_the_evict_for_a_refused_connect",
        "test_snapshot_lists_destinations",
        "test_state_changing_commands_are_forbidden_as_non_root",
        "test_async_reader_receives_the_evict",
    ] {
        assert!(
            report
                .lines()
                .any(|l| l.starts_with(test) && l.ends_with("ok")),
            "{test} did not pass:\n{report}"
        );
    }
    assert!(!report.contains("skipped"), "no test may skip:\n{report}");
}

#[test]
fn the_example_pool_controller_marks_an_evicted_proxy_dead_and_then_good() {
    require_root();
    // Its pool is the one destination this test fails: other processes' failures on
    // this host stay targets and never reach the controller.
    let port = closed_port("127.0.0.1");
    let (_agent, socket) = start_agent("pyexample", &format!("pool = [\"127.0.0.1:{port}\"]\n"));
    let mut child = piped("python3")
        .arg("example_pool_controller.py")
        .arg("--socket")
        .arg(&socket)
        .args(["--exit-after", "2"])
        .current_dir(python_dir())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("python3");
    let (tx, lines) = mpsc::channel();
    let stdout = child.stdout.take().expect("stdout");
    thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let first = lines
        .recv_timeout(Duration::from_secs(10))
        .expect("the controller connects");
    assert!(first.starts_with("connected to connmon"), "{first}");
    let synced = lines
        .recv_timeout(Duration::from_secs(10))
        .expect("the controller starts from a snapshot");
    // Other processes' refused connects on this host may already be ejected.
    assert!(synced.contains(" proxies already dead: "), "{synced}");
    TcpStream::connect(("127.0.0.1", port)).expect_err("refused");
    let dst = format!("127.0.0.1:{port}");
    let dead = lines
        .recv_timeout(Duration::from_secs(10))
        .expect("dead line");
    assert!(
        dead.starts_with(&format!("dead {dst} (refused, until ")),
        "{dead}"
    );
    let bin = connmon_integration::connmon_bin();
    let (bin, socket) = (
        bin.to_str().expect("utf-8"),
        socket.to_str().expect("utf-8"),
    );
    sh(&[bin, "reinstate", &dst, "--socket", socket]);
    let good = lines
        .recv_timeout(Duration::from_secs(10))
        .expect("good line");
    assert_eq!(good, format!("good {dst}"));
    wait_until(
        Duration::from_secs(10),
        Duration::from_millis(20),
        || child.try_wait().expect("wait").is_some(),
        || "the controller did not exit after two changes".to_owned(),
    );
    assert!(child.wait().expect("status").success());
}
