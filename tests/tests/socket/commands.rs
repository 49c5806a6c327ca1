//! Requests and their replies, and the events they cause on a subscription.

use super::*;

#[test]
fn hello_ping_snapshot_and_pool_commands() {
    require_root();
    let path = socket_path("basic");
    let _agent = start(&path, &[]);
    let meta = std::fs::metadata(&path).expect("socket exists");
    use std::os::unix::fs::{FileTypeExt as _, PermissionsExt as _};
    assert!(meta.file_type().is_socket());
    assert_eq!(meta.permissions().mode() & 0o777, 0o660);
    assert_eq!(
        std::fs::metadata(path.parent().unwrap())
            .unwrap()
            .permissions()
            .mode()
            & 0o777,
        0o755
    );

    let (mut c, hello) = Sock::open(&path);
    assert_eq!(hello["v"], 1);
    assert!(hello["version"].is_string());
    assert_eq!(
        hello["capabilities"],
        json!([
            "subscribe",
            "snapshot",
            "ping",
            "pool",
            "evict",
            "reinstate"
        ])
    );
    c.send(&json!({"cmd": "ping", "id": 42}));
    assert_eq!(c.read().expect("pong"), json!({"type": "pong", "id": 42}));
    c.send(&json!({"cmd": "ping"}));
    assert_eq!(c.read().expect("pong"), json!({"type": "pong"}));

    let snap = c.request(json!({"cmd": "snapshot"}));
    assert_eq!(snap["type"], "snapshot", "{snap}");
    for key in [
        "ts",
        "local_outage",
        "known_members",
        "ejected",
        "max_ejected",
        "tracked",
        "destinations",
    ] {
        assert!(snap.get(key).is_some(), "snapshot lacks {key}: {snap}");
    }
    assert_eq!(snap["server"]["clients"], 1, "{snap}");

    // Listing an unconfigured pool leaves it unconfigured (every destination a proxy).
    let listed = c.request(json!({"cmd": "pool", "op": "list"}));
    assert_eq!(listed["pool"], json!([]), "{listed}");
    let (port, dst) = {
        let port = closed_port("127.0.0.1");
        (port, format!("127.0.0.1:{port}"))
    };
    TcpStream::connect(("127.0.0.1", port)).expect_err("refused");
    let deadline = Instant::now() + WAIT;
    loop {
        let snap = c.request(json!({"cmd": "snapshot"}));
        let rows = snap["destinations"].as_array().cloned().unwrap_or_default();
        if let Some(row) = rows.iter().find(|d| d["dst"] == dst) {
            assert_eq!(row["role"], "proxy", "{row}");
            break;
        }
        assert!(Instant::now() < deadline, "{dst} never tracked");
        thread::sleep(Duration::from_millis(50));
    }

    let added = c.request(
        json!({"cmd": "pool", "op": "add", "members": ["10.9.0.1:8080", "10.9.1.0/24:3128"]}),
    );
    assert_eq!(added["type"], "ok", "{added}");
    assert_eq!(added["pool"], json!(["10.9.0.1:8080", "10.9.1.0/24:3128"]));
    let listed = c.request(json!({"cmd": "pool", "op": "list"}));
    assert_eq!(listed["pool"], added["pool"]);
    let removed = c.request(json!({"cmd": "pool", "op": "remove", "members": ["10.9.0.1:8080"]}));
    assert_eq!(removed["pool"], json!(["10.9.1.0/24:3128"]));
    let replaced = c.request(json!({"cmd": "pool", "op": "replace", "members": []}));
    assert_eq!(replaced["pool"], json!([]));

    let bad = c.request(json!({"cmd": "reinstate", "dst": "10.9.0.7:1"}));
    assert_eq!(
        (bad["type"].as_str(), bad["code"].as_str()),
        (Some("error"), Some("rejected")),
        "{bad}"
    );
}

#[test]
fn a_subscriber_receives_the_evict_for_a_refused_connect_as_run_prints_it() {
    require_root();
    let ns = Netns::new("sub");
    let path = socket_path("sub");
    let mut agent = start(&path, &[]);
    let (mut c, _) = Sock::open(&path);
    let ok =
        c.request(json!({"cmd": "subscribe", "types": ["evict", "connect"], "roles": ["proxy"]}));
    assert_eq!(
        ok,
        json!({"type": "ok", "id": "req-subscribe", "cmd": "subscribe", "types": ["evict", "connect"], "roles": ["proxy"]})
    );
    let dst = refused_dst(&ns);
    refuse_from(&ns, &dst, 1);
    let connect = c.wait_for("refused connect", |v| {
        is_connect(v, "refused", &dst, ns.inode)
    });
    let evict = c.wait_for("evict", |v| v["type"] == "evict" && v["dst"] == dst);
    assert_eq!(evict["reason"], "refused");
    assert_eq!(evict["trigger"]["comm"], "scraper");
    let printed = agent.wait_for("evict on stdout", WAIT, |v| {
        v["type"] == "evict" && v["dst"] == dst
    });
    assert_eq!(
        evict, printed,
        "the socket and stdout carry the same object"
    );
    let printed = agent.wait_for("connect on stdout", WAIT, |v| {
        is_connect(v, "refused", &dst, ns.inode)
    });
    assert_eq!(connect, printed);
}

#[test]
fn manual_evict_and_reinstate_are_broadcast() {
    require_root();
    let path = socket_path("manual");
    let mut agent = start(&path, &[]);
    let (mut watcher, _) = Sock::open(&path);
    watcher.request(json!({"cmd": "subscribe", "types": ["evict", "reinstate"]}));
    let (mut admin, _) = Sock::open(&path);
    let dst = "10.9.0.5:8080";
    let ok = admin.request(json!({"cmd": "evict", "dst": dst, "for_ms": 60_000}));
    assert_eq!(
        ok,
        json!({"type": "ok", "id": "req-evict", "cmd": "evict", "dst": dst})
    );
    let evict = watcher.wait_for("manual evict", |v| v["type"] == "evict" && v["dst"] == dst);
    assert_eq!(evict["reason"], "manual");
    assert_eq!(evict["ejection"]["duration_ms"], 60_000);
    let snap = admin.request(json!({"cmd": "snapshot"}));
    let row = snap["destinations"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["dst"] == dst)
        .cloned()
        .expect("row");
    assert_eq!(row["state"], "ejected", "{row}");
    let ok = admin.request(json!({"cmd": "reinstate", "dst": dst}));
    assert_eq!(ok["type"], "ok", "{ok}");
    let reinstate = watcher.wait_for("reinstate", |v| v["type"] == "reinstate" && v["dst"] == dst);
    assert!(reinstate["ejected_ms"].as_u64().unwrap() < 60_000);
    agent.wait_for("reinstate on stdout", WAIT, |v| {
        v["type"] == "reinstate" && v["dst"] == dst
    });
}
