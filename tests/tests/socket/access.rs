//! Who may connect and who may change state: socket mode, peer credentials,
//! `agent.max_clients`.

use super::*;

#[test]
fn state_changing_commands_are_forbidden_for_an_unprivileged_peer() {
    require_root();
    let (path, _agent) =
        start_configured("forbidden", "[agent]\nsocket_group = \"nogroup\"\n", &[]);
    use std::os::unix::fs::MetadataExt as _;
    assert_eq!(
        std::fs::metadata(&path).unwrap().gid(),
        NOBODY,
        "socket given to agent.socket_group"
    );
    let client = world_readable_copy(&python_client());
    let as_nobody = |args: &[&str]| {
        let mut cmd = Command::new("/usr/bin/python3");
        cmd.arg(&client)
            .arg("--socket")
            .arg(&path)
            .args(args)
            .uid(NOBODY)
            .gid(NOBODY);
        run_with_timeout(&mut cmd, Duration::from_secs(10))
    };
    let hello = as_nobody(&["hello"]);
    assert!(hello.status.success(), "{}", text(&hello.stderr));
    let hello: Value = serde_json::from_slice(&hello.stdout).expect("hello JSON");
    assert_eq!(
        hello["capabilities"],
        json!(["subscribe", "snapshot", "ping"]),
        "{hello}"
    );
    let snap = as_nobody(&["snapshot"]);
    assert!(
        snap.status.success(),
        "reading is allowed: {}",
        text(&snap.stderr)
    );
    for args in [
        &["evict", "10.9.0.5:80"][..],
        &["reinstate", "10.9.0.5:80"],
        &["pool", "add", "10.9.0.5:80"],
    ] {
        let out = as_nobody(args);
        assert_eq!(out.status.code(), Some(1), "{args:?} must be refused");
        let err = text(&out.stderr);
        assert!(
            err.contains("forbidden:") && err.contains("uid 65534"),
            "{args:?}: {err}"
        );
    }
    let list = as_nobody(&["pool", "list"]);
    assert!(
        list.status.success(),
        "pool list is read-only: {}",
        text(&list.stderr)
    );
}

#[test]
fn clients_without_access_to_the_socket_get_a_clear_error() {
    require_root();
    let path = socket_path("noaccess");
    let _agent = start(&path, &[]);
    let out = run_with_timeout(
        Command::new(world_readable_copy(&connmon_bin()))
            .args(["status", "--socket"])
            .arg(&path)
            .uid(NOBODY)
            .gid(NOBODY),
        Duration::from_secs(10),
    );
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        text(&out.stderr).trim_end(),
        format!(
            "connmon: error: cannot connect to {}: permission denied (the socket is mode 0660: run as root or as a member of agent.socket_group)",
            path.display()
        )
    );
}

#[test]
fn clients_beyond_max_clients_are_refused_with_a_reason() {
    require_root();
    let (path, _agent) = start_configured("max", "[agent]\nmax_clients = 2\n", &[]);
    let (a, _) = Sock::open(&path);
    let (_b, _) = Sock::open(&path);
    let mut c = Sock::connect(&path);
    let refusal = c.read().expect("refusal line");
    assert_eq!(refusal["type"], "error");
    assert_eq!(refusal["code"], "too_many_clients");
    assert!(
        refusal["message"]
            .as_str()
            .unwrap()
            .contains("at most 2 clients"),
        "{refusal}"
    );
    assert!(c.read().is_none());
    drop(a);
    let deadline = Instant::now() + WAIT;
    loop {
        let mut d = Sock::connect(&path);
        if d.read().expect("a line")["type"] == "hello" {
            break;
        }
        assert!(Instant::now() < deadline, "a slot never freed up");
        thread::sleep(Duration::from_millis(50));
    }
}
