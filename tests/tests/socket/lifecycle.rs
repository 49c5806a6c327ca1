//! The socket file across an agent's life: a stale one replaced, a live one kept, bye
//! and removal at shutdown.

use super::*;

#[test]
fn a_stale_socket_is_replaced_and_a_live_one_is_an_error() {
    require_root();
    let path = socket_path("stale");
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    drop(std::os::unix::net::UnixListener::bind(&path).expect("stale socket"));
    assert!(path.exists());
    let _agent = start(&path, &[]);
    let (mut c, _) = Sock::open(&path);
    assert_eq!(c.request(json!({"cmd": "ping"}))["type"], "pong");

    let state = scratch_dir("stale2").join("state.json");
    let out = run_with_timeout(
        Command::new(connmon_bin())
            .args([
                "run",
                "--output",
                "json",
                "--config",
                "/dev/null",
                "--state-file",
            ])
            .arg(&state)
            .arg("--socket")
            .arg(&path),
        Duration::from_secs(30),
    );
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(
        err.contains(&format!(
            "connmon: error: another connmon is listening on {}",
            path.display()
        )),
        "{err}"
    );
    assert_eq!(
        c.request(json!({"cmd": "ping"}))["type"],
        "pong",
        "the first agent keeps its socket"
    );
}

#[test]
fn shutdown_says_bye_and_removes_the_socket_file() {
    require_root();
    let path = socket_path("bye");
    let agent = start(&path, &[]);
    let (mut sub, _) = Sock::open(&path);
    sub.request(json!({"cmd": "subscribe", "types": ["evict"]}));
    let (mut idle, _) = Sock::open(&path);
    let (ok, _) = agent.stop();
    assert!(ok);
    // What was still queued for the subscriber comes first (other connects on the host
    // can be evicted: tracepoints are global), then bye.
    let mut next = sub.read();
    while next.as_ref().is_some_and(|v| v["type"] == "evict") {
        next = sub.read();
    }
    assert_eq!(next, Some(json!({"type": "bye", "reason": "shutdown"})));
    assert_eq!(sub.read(), None);
    assert_eq!(
        idle.read(),
        Some(json!({"type": "bye", "reason": "shutdown"}))
    );
    assert!(!path.exists(), "socket file removed at exit");
}
