//! The `connmon` client subcommands against a running agent, and without one.

use super::*;

#[test]
fn cli_subcommands_talk_to_the_agent() {
    require_root();
    let ns = Netns::new("cli");
    let path = socket_path("cli");
    let sock = path.to_str().unwrap();
    let mut agent = start(&path, &[]);
    let dst = refused_dst(&ns);
    refuse_from(&ns, &dst, 2);
    agent.wait_for("evict", WAIT, |v| v["type"] == "evict" && v["dst"] == dst);

    let status = connmon(&["status", "--socket", sock]);
    assert!(status.status.success(), "{}", text(&status.stderr));
    let table = text(&status.stdout);
    let header = table.lines().nth(1).expect("header");
    assert!(
        header.starts_with("DESTINATION")
            && header.contains("FAIL%")
            && header.contains("EJECTED UNTIL")
            && header.ends_with("ORIGIN"),
        "{table}"
    );
    assert_status_row(&table, &dst, ["proxy", "ejected", "2", "100%"]);
    let json_status = connmon(&["status", "--json", "--socket", sock]);
    let snap: Value = serde_json::from_slice(&json_status.stdout).expect("status --json is JSON");
    assert_eq!(snap["type"], "snapshot");

    // watch (not a terminal: NDJSON) sees the manual evict made by `connmon evict`.
    let mut watch = Command::new(connmon_bin())
        .args([
            "watch",
            "--types",
            "evict,reinstate",
            "--count",
            "2",
            "--socket",
            sock,
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("watch");
    // The watch must subscribe before the evict (it is not replayed): first wait until
    // it is connected (a fixed pause once covered its start too, which a loaded host
    // stretches past it), then leave it the moment between its hello and its subscribe.
    let (mut counter, _) = Sock::open(&path);
    let deadline = Instant::now() + WAIT;
    loop {
        let snap = counter.request(json!({"cmd": "snapshot"}));
        // This connection and the watch's.
        if snap["server"]["clients"].as_u64() >= Some(2) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "connmon watch did not connect within {WAIT:?}: {}",
            snap["server"]
        );
        thread::sleep(Duration::from_millis(50));
    }
    drop(counter);
    thread::sleep(Duration::from_millis(500));
    let evict = connmon(&["evict", "10.9.0.9:80", "--for", "5m", "--socket", sock]);
    assert!(evict.status.success(), "{}", text(&evict.stderr));
    assert_eq!(text(&evict.stdout), "evicted 10.9.0.9:80\n");
    // `connmon ARGS --socket SOCK` prints `want`.
    let prints = |args: &[&str], want: &str| {
        let out = connmon(&[args, &["--socket", sock]].concat());
        assert_eq!(text(&out.stdout), want, "{args:?}: {}", text(&out.stderr));
    };
    prints(&["reinstate", "10.9.0.9:80"], "reinstated 10.9.0.9:80\n");
    let again = connmon(&["reinstate", "10.9.0.9:80", "--socket", sock]);
    assert_eq!(again.status.code(), Some(1));
    assert_eq!(
        text(&again.stderr).trim_end(),
        "connmon: error: the agent answered rejected: reinstate: 10.9.0.9:80 is not ejected"
    );
    wait_until(
        WAIT,
        Duration::from_millis(20),
        || watch.try_wait().expect("wait").is_some(),
        || "connmon watch --count 2 did not finish".to_owned(),
    );
    let out = watch.wait_with_output().expect("watch output");
    let lines: Vec<Value> = text(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("NDJSON"))
        .collect();
    assert_eq!(lines.len(), 2, "{lines:?}");
    assert_eq!(
        (&lines[0]["type"], &lines[0]["reason"], &lines[0]["dst"]),
        (&json!("evict"), &json!("manual"), &json!("10.9.0.9:80"))
    );
    assert_eq!(lines[0]["ejection"]["duration_ms"], 300_000);
    assert_eq!(
        (&lines[1]["type"], &lines[1]["dst"]),
        (&json!("reinstate"), &json!("10.9.0.9:80"))
    );

    let both = "10.9.0.1:8080\n10.9.2.0/24\n";
    prints(&["pool", "add", "10.9.0.1:8080", "10.9.2.0/24"], both);
    prints(&["pool", "list"], both);
    prints(&["pool", "remove", "10.9.2.0/24"], "10.9.0.1:8080\n");
    let bad = connmon(&["pool", "add", "not-an-address", "--socket", sock]);
    assert_eq!(bad.status.code(), Some(1));
    assert!(text(&bad.stderr).starts_with(
        "connmon: error: the agent answered invalid_argument: pool: member \"not-an-address\""
    ));
}

#[test]
fn cli_says_when_no_agent_is_running() {
    let dir = scratch_dir("none");
    let missing = dir.join("connmon.sock");
    for args in [
        &["status"][..],
        &["watch"],
        &["evict", "10.0.0.1:80"],
        &["reinstate", "10.0.0.1:80"],
        &["pool", "list"],
    ] {
        let mut full = args.to_vec();
        full.extend(["--socket", missing.to_str().unwrap()]);
        let out = connmon(&full);
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        assert_eq!(
            text(&out.stderr).trim_end(),
            format!(
                "connmon: error: cannot connect to {}: no agent is running (start one with connmon run)",
                missing.display()
            ),
            "{args:?}"
        );
    }
    // A stale socket file (nobody listening) is the same situation.
    drop(std::os::unix::net::UnixListener::bind(&missing).expect("bind"));
    let out = connmon(&["status", "--socket", missing.to_str().unwrap()]);
    assert!(
        text(&out.stderr).contains("no agent is running"),
        "{}",
        text(&out.stderr)
    );
}
