//! Root integration tests for the pool-controller Unix socket and the client subcommands:
//! the real agent, real connects from a network namespace, real socket clients (this
//! process, `connmon` subcommands, the Python client as an unprivileged user).

use std::{
    io::{BufRead as _, BufReader, ErrorKind, Write as _},
    net::TcpStream,
    os::unix::{net::UnixStream, process::CommandExt as _},
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
    thread,
    time::{Duration, Instant},
};

use connmon_integration::{
    Agent, LOCAL_V4, Netns, closed_port, connmon_bin, is_connect, require_root, scratch_dir,
    world_readable_copy,
};
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(6);
const NOBODY: u32 = 65534;

/// A socket client speaking NDJSON, with a read timeout.
struct Sock {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
}

impl Sock {
    fn connect(path: &Path) -> Self {
        let stream =
            UnixStream::connect(path).unwrap_or_else(|e| panic!("connect {}: {e}", path.display()));
        stream.set_read_timeout(Some(WAIT)).expect("timeout");
        Sock {
            writer: stream.try_clone().expect("clone"),
            reader: BufReader::new(stream),
        }
    }

    /// Connects and checks the greeting.
    fn open(path: &Path) -> (Self, Value) {
        let mut s = Sock::connect(path);
        let hello = s.read().expect("hello");
        assert_eq!(hello["type"], "hello", "{hello}");
        (s, hello)
    }

    /// The next message; None at end of stream (or a reset after the agent closed).
    fn read(&mut self) -> Option<Value> {
        self.read_within()
            .unwrap_or_else(|| panic!("nothing from the agent within {WAIT:?}"))
    }

    /// Like `read`, but None (outer) when nothing came within the read timeout.
    fn read_within(&mut self) -> Option<Option<Value>> {
        let mut line = String::new();
        match self.reader.read_line(&mut line) {
            Ok(0) => Some(None),
            Ok(_) => {
                Some(Some(serde_json::from_str(&line).unwrap_or_else(|e| {
                    panic!("agent sent non-JSON ({e}): {line:?}")
                })))
            }
            Err(e) if e.kind() == ErrorKind::ConnectionReset => Some(None),
            Err(e)
                if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut)
                    && line.is_empty() =>
            {
                None
            }
            Err(e) => panic!("reading from the agent: {e}"),
        }
    }

    fn send_raw(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.writer.write_all(bytes)?;
        self.writer.write_all(b"\n")
    }

    fn send(&mut self, v: &Value) {
        self.send_raw(v.to_string().as_bytes()).expect("send");
    }

    /// Sends a command and returns the reply with its `id` (events in between are skipped).
    fn request(&mut self, mut v: Value) -> Value {
        let id = format!("req-{}", v["cmd"].as_str().unwrap_or("x"));
        v["id"] = json!(id);
        self.send(&v);
        loop {
            let reply = self.read().unwrap_or_else(|| panic!("no reply to {v}"));
            if reply["id"] == id {
                return reply;
            }
        }
    }

    /// Waits for a message matching `pred`.
    fn wait_for(&mut self, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + WAIT;
        while Instant::now() < deadline {
            match self.read() {
                Some(v) if pred(&v) => return v,
                Some(_) => {}
                None => panic!("connection closed while waiting for {what}"),
            }
        }
        panic!("no {what} within {WAIT:?}");
    }
}

/// A socket path in a fresh scratch directory (the agent creates `sock/`).
fn socket_path(tag: &str) -> PathBuf {
    scratch_dir(tag).join("sock").join("connmon.sock")
}

fn start(path: &Path, extra: &[&str]) -> Agent {
    let mut args = vec!["--socket", path.to_str().expect("utf-8 path")];
    args.extend_from_slice(extra);
    let agent = Agent::start(&args);
    // The socket is bound right after the probes attach.
    let deadline = Instant::now() + WAIT;
    while UnixStream::connect(path).is_err() {
        assert!(
            Instant::now() < deadline,
            "no socket at {} within {WAIT:?}; stderr:\n{}",
            path.display(),
            agent.stderr()
        );
        thread::sleep(Duration::from_millis(20));
    }
    agent
}

fn config(dir: &Path, text: &str) -> String {
    let path = dir.join("connmon.toml");
    std::fs::write(&path, text).expect("write config");
    path.to_str().expect("utf-8").to_owned()
}

/// Runs `cmd` with a deadline, returning its output.
fn run_with_timeout(cmd: &mut Command, timeout: Duration) -> Output {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if child.try_wait().expect("wait").is_some() {
            return child.wait_with_output().expect("output");
        }
        thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let out = child.wait_with_output().expect("output");
    panic!(
        "{cmd:?} did not finish within {timeout:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn connmon(args: &[&str]) -> Output {
    run_with_timeout(
        Command::new(connmon_bin()).args(args),
        Duration::from_secs(10),
    )
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn python_client() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../clients/python/connmon_client.py")
}

/// A refused connect from inside `ns` to a closed port on the namespace's veth address.
fn refused_dst(ns: &Netns) -> String {
    let (port, _) = ns.run("probe", || closed_port(LOCAL_V4));
    format!("{LOCAL_V4}:{port}")
}

fn refuse_from(ns: &Netns, dst: &str, times: usize) {
    let dst: std::net::SocketAddr = dst.parse().expect("addr");
    ns.run("scraper", move || {
        for _ in 0..times {
            TcpStream::connect(dst).expect_err("closed port refuses");
        }
    });
}

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

#[test]
fn state_changing_commands_are_forbidden_for_an_unprivileged_peer() {
    require_root();
    let dir = scratch_dir("forbidden");
    let path = dir.join("sock").join("connmon.sock");
    let cfg = config(&dir, "[agent]\nsocket_group = \"nogroup\"\n");
    let _agent = start(&path, &["--config", &cfg]);
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

/// A small deterministic PRNG (xorshift64*), so a failing run can be replayed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    /// One malformed (or occasionally valid) line, never containing a newline, and
    /// whether it is valid (`None`: random fragments that may happen to form a command).
    fn line(&mut self) -> (Vec<u8>, Option<bool>) {
        const FRAGMENTS: [&str; 16] = [
            "{",
            "}",
            "[",
            "]",
            "\"cmd\"",
            ":",
            ",",
            "\"subscribe\"",
            "\"evict\"",
            "null",
            "1e999",
            "\"\\u0000\"",
            "{\"cmd\":",
            "\"dst\":",
            "-",
            "\"pool\"",
        ];
        let kind = self.below(10);
        let line: Vec<u8> = match kind {
            0 => (0..self.below(200))
                .map(|_| (self.next() as u8).max(1))
                .map(|b| if b == b'\n' { b' ' } else { b })
                .collect(),
            1 => (0..self.below(30))
                .flat_map(|_| {
                    FRAGMENTS[self.below(16) as usize]
                        .bytes()
                        .collect::<Vec<_>>()
                })
                .collect(),
            2 => format!(
                "{{\"cmd\":\"{}\"}}",
                ["launch", "EVICT", "", "subscribe ", "snap"][self.below(5) as usize]
            )
            .into_bytes(),
            3 => [
                r#"{"cmd":"evict","dst":12}"#,
                r#"{"cmd":"evict","dst":"10.0.0.1:0"}"#,
                r#"{"cmd":"evict","dst":"10.0.0.1:80","for_ms":"5m"}"#,
                r#"{"cmd":"subscribe","types":"evict"}"#,
                r#"{"cmd":"subscribe","types":["nope"]}"#,
                r#"{"cmd":"pool","op":"add","members":[1,2]}"#,
                r#"{"cmd":"pool","op":"explode"}"#,
                r#"{"cmd":"reinstate"}"#,
                r#"{"cmd":"ping","id":{"a":1}}"#,
                r#"{"cmd":["ping"]}"#,
            ][self.below(10) as usize]
                .as_bytes()
                .to_vec(),
            4 => vec![0xff, 0xfe, 0x80, 0xc3, 0x28, b'{', 0xa0, 0xa1],
            5 => {
                // Over 64 KiB.
                let n = 65 * 1024 + self.below(10_000) as usize;
                vec![b'x'; n]
            }
            6 => format!("\"{}\"", self.next()).into_bytes(),
            7 => format!("{{\"cmd\":\"ping\",\"id\":{}}}", self.below(1000)).into_bytes(),
            8 => r#"{"cmd":"pool","op":"list"}"#.as_bytes().to_vec(),
            _ => format!("{{\"cmd\":\"snapshot\",\"extra\":{}}}", self.below(9)).into_bytes(),
        };
        // Kinds 7 and 8 are valid; blank lines are ignored by the server (no reply).
        let valid = match kind {
            1 => None,
            7 | 8 => Some(true),
            _ => Some(false),
        };
        let blank = line.iter().all(u8::is_ascii_whitespace);
        (if blank { b"{".to_vec() } else { line }, valid)
    }
}

#[test]
fn ten_thousand_malformed_lines_neither_crash_nor_starve_a_subscriber() {
    require_root();
    let ns = Netns::new("fuzz");
    let path = socket_path("fuzz");
    let agent = start(&path, &[]);
    let (mut sub, _) = Sock::open(&path);
    sub.request(json!({"cmd": "subscribe", "types": ["connect"]}));
    let dst = refused_dst(&ns);
    const CONNECTS: usize = 300;

    let fuzz_path = path.clone();
    let fuzzer = thread::spawn(move || {
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        let (mut lines, mut connections, mut closed_for_errors) = (0usize, 0usize, 0usize);
        let deadline = Instant::now() + Duration::from_secs(90);
        while lines < 10_000 {
            assert!(
                Instant::now() < deadline,
                "fuzzing took too long ({lines} lines)"
            );
            let (mut c, _) = Sock::open(&fuzz_path);
            connections += 1;
            let mut consecutive = 0;
            loop {
                let (line, valid) = rng.line();
                c.send_raw(&line)
                    .expect("the agent reads every line of an open connection");
                lines += 1;
                // One reply per line; a subscribe made of random fragments may also
                // bring events, which are skipped.
                let reply = loop {
                    let v = c.read().expect("one reply per line");
                    if ["error", "ok", "pong", "snapshot"]
                        .contains(&v["type"].as_str().unwrap_or_default())
                    {
                        break v;
                    }
                };
                if let Some(valid) = valid {
                    assert_eq!(
                        reply["type"] == "error",
                        !valid,
                        "line {:?} got {reply}",
                        String::from_utf8_lossy(&line[..line.len().min(80)])
                    );
                }
                if reply["type"] != "error" {
                    consecutive = 0;
                    continue;
                }
                assert!(
                    reply["code"].is_string() && reply["message"].is_string(),
                    "{reply}"
                );
                consecutive += 1;
                if consecutive == 10 {
                    let last = c.read().expect("closing notice");
                    assert_eq!(last["code"], "too_many_errors", "{last}");
                    assert!(c.read().is_none(), "closed after 10 consecutive errors");
                    closed_for_errors += 1;
                    break;
                }
                if lines >= 10_000 {
                    break;
                }
            }
        }
        (lines, connections, closed_for_errors)
    });
    let (dst_c, ns_path) = (dst.clone(), ns.path());
    let ns_inode = ns.inode;
    let prober = thread::spawn(move || {
        let file = std::fs::File::open(ns_path).expect("netns");
        nix::sched::setns(file, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
        let dst: std::net::SocketAddr = dst_c.parse().unwrap();
        for _ in 0..CONNECTS {
            TcpStream::connect(dst).expect_err("refused");
            thread::sleep(Duration::from_millis(5));
        }
    });
    let mut got = 0;
    let deadline = Instant::now() + Duration::from_secs(60);
    while got < CONNECTS {
        assert!(
            Instant::now() < deadline,
            "subscriber got {got} of {CONNECTS} connects"
        );
        let v = sub.read().expect("subscriber stays connected");
        assert_ne!(v["type"], "lagged", "{v}");
        if is_connect(&v, "refused", &dst, ns_inode) {
            got += 1;
        }
    }
    prober.join().expect("prober");
    let (lines, connections, closed) = fuzzer.join().expect("fuzzer");
    assert!(
        lines >= 10_000 && connections > 1 && closed > 0,
        "{lines} lines, {connections} connections, {closed} closed"
    );
    let snap = sub.request(json!({"cmd": "snapshot"}));
    assert!(
        snap["server"]["protocol_errors"].as_u64().unwrap() > 5_000,
        "{}",
        snap["server"]
    );
    assert!(snap["server"]["closed_for_errors"].as_u64().unwrap() >= closed as u64);
    let (ok, printed) = agent.stop();
    assert!(ok, "agent exits cleanly after the fuzzing");
    assert_eq!(
        printed
            .iter()
            .filter(|v| is_connect(v, "refused", &dst, ns_inode))
            .count(),
        CONNECTS
    );
}

#[test]
fn a_subscriber_that_never_reads_stalls_nothing_and_is_told_it_lagged() {
    require_root();
    let ns = Netns::new("slow");
    let dir = scratch_dir("slow");
    let path = dir.join("sock").join("connmon.sock");
    // The default bus capacity (16384 messages per subscriber) holds a full 1 MiB ring
    // buffer's worth of records, so a subscriber that reads never lags; the one that
    // does not read falls 30000 events behind.
    let cfg = config(
        &dir,
        "[agent]\nbus_capacity = 16384\nring_buffer_bytes = 1048576\n",
    );
    let agent = start(&path, &["--config", &cfg]);
    let (mut slow, _) = Sock::open(&path);
    slow.request(json!({"cmd": "subscribe", "types": ["connect"]}));
    let (mut good, _) = Sock::open(&path);
    good.request(json!({"cmd": "subscribe", "types": ["connect"]}));
    let dst = refused_dst(&ns);
    const EVENTS: usize = 30_000;

    let ns_inode = ns.inode;
    let dst_c = dst.clone();
    let reader = thread::spawn(move || {
        let mut got = 0;
        let deadline = Instant::now() + Duration::from_secs(100);
        while got < EVENTS && Instant::now() < deadline {
            match good.read_within().flatten() {
                Some(v) => {
                    assert_ne!(
                        v["type"], "lagged",
                        "the reading subscriber must not lag: {v}"
                    );
                    if is_connect(&v, "refused", &dst_c, ns_inode) {
                        got += 1;
                    }
                }
                None => break,
            }
        }
        got
    });
    let (flood_dst, ns_path) = (dst.clone(), ns.path());
    let flood = thread::spawn(move || {
        let file = std::fs::File::open(ns_path).expect("netns");
        nix::sched::setns(file, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
        let dst: std::net::SocketAddr = flood_dst.parse().unwrap();
        // Paced (20 ms every 100 connects) so that the agent's one thread, which also
        // writes to the reading subscriber, keeps up on a slow CPU with a debug build;
        // the silent subscriber still falls 30000 events behind its 16384-message queue.
        for i in 0..EVENTS {
            TcpStream::connect(dst).expect_err("refused");
            if i % 100 == 99 {
                thread::sleep(Duration::from_millis(20));
            }
        }
    });
    // The agent answers while the flood runs and the slow client holds a full socket.
    let (mut pinger, _) = Sock::open(&path);
    let mut pings = 0;
    while !flood.is_finished() {
        let started = Instant::now();
        let pong = pinger.request(json!({"cmd": "ping"}));
        assert_eq!(pong["type"], "pong");
        // Answered at all while the flood runs is the point; how fast is a benchmark
        // figure, and a slow (emulated) CPU must not fail this.
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "ping took {:?}",
            started.elapsed()
        );
        pings += 1;
        thread::sleep(Duration::from_millis(100));
    }
    flood.join().expect("flood");
    assert!(pings > 0);
    let got = reader.join().expect("reader");
    if got != EVENTS {
        let (_, printed) = agent.stop();
        let on_stdout = printed
            .iter()
            .filter(|v| is_connect(v, "refused", &dst, ns.inode))
            .count();
        let stats = printed
            .iter()
            .rev()
            .find(|v| v["type"] == "stats")
            .cloned()
            .unwrap_or_default();
        panic!(
            "the reading subscriber got {got} of {EVENTS} events; stdout {on_stdout}; final stats {stats}"
        );
    }

    // Now the slow one reads: what fit in its socket, then `lagged`, then the rest.
    let mut before_lag = 0;
    let lagged = loop {
        let v = slow.read().expect("slow client still connected");
        if v["type"] == "lagged" {
            break v;
        }
        before_lag += 1;
        assert!(
            before_lag <= EVENTS,
            "no lagged notice after {before_lag} lines"
        );
    };
    let missed = lagged["missed"].as_u64().expect("missed");
    assert!(
        missed > 0 && (before_lag as u64) < EVENTS as u64,
        "{lagged} after {before_lag}"
    );
    let snap = pinger.request(json!({"cmd": "snapshot"}));
    assert!(
        snap["server"]["lagged_messages"].as_u64().unwrap() >= missed,
        "{}",
        snap["server"]
    );
    let (ok, printed) = agent.stop();
    assert!(ok);
    assert_eq!(
        printed
            .iter()
            .filter(|v| is_connect(v, "refused", &dst, ns.inode))
            .count(),
        EVENTS,
        "stdout got every event"
    );
    assert!(
        printed
            .iter()
            .any(|v| v["type"] == "stats" && v["lost_events"] == 0 && v["final"] == true)
    );
}

#[test]
fn clients_beyond_max_clients_are_refused_with_a_reason() {
    require_root();
    let dir = scratch_dir("max");
    let path = dir.join("sock").join("connmon.sock");
    let cfg = config(&dir, "[agent]\nmax_clients = 2\n");
    let _agent = start(&path, &["--config", &cfg]);
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
    assert_eq!(
        sub.read(),
        Some(json!({"type": "bye", "reason": "shutdown"}))
    );
    assert_eq!(sub.read(), None);
    assert_eq!(
        idle.read(),
        Some(json!({"type": "bye", "reason": "shutdown"}))
    );
    assert!(!path.exists(), "socket file removed at exit");
}

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
            && header.ends_with("EJECTED UNTIL"),
        "{table}"
    );
    let row = table
        .lines()
        .find(|l| l.starts_with(&dst))
        .unwrap_or_else(|| panic!("no row for {dst}:\n{table}"));
    let cols: Vec<&str> = row.split_whitespace().collect();
    assert_eq!(&cols[1..5], ["proxy", "ejected", "2", "100%"], "{row}");
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
    thread::sleep(Duration::from_millis(500));
    let evict = connmon(&["evict", "10.9.0.9:80", "--for", "5m", "--socket", sock]);
    assert!(evict.status.success(), "{}", text(&evict.stderr));
    assert_eq!(text(&evict.stdout), "evicted 10.9.0.9:80\n");
    let reinstate = connmon(&["reinstate", "10.9.0.9:80", "--socket", sock]);
    assert_eq!(
        text(&reinstate.stdout),
        "reinstated 10.9.0.9:80\n",
        "{}",
        text(&reinstate.stderr)
    );
    let again = connmon(&["reinstate", "10.9.0.9:80", "--socket", sock]);
    assert_eq!(again.status.code(), Some(1));
    assert_eq!(
        text(&again.stderr).trim_end(),
        "connmon: error: the agent answered rejected: reinstate: 10.9.0.9:80 is not ejected"
    );
    let deadline = Instant::now() + WAIT;
    while watch.try_wait().expect("wait").is_none() {
        assert!(
            Instant::now() < deadline,
            "connmon watch --count 2 did not finish"
        );
        thread::sleep(Duration::from_millis(20));
    }
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

    let add = connmon(&[
        "pool",
        "add",
        "10.9.0.1:8080",
        "10.9.2.0/24",
        "--socket",
        sock,
    ]);
    assert_eq!(
        text(&add.stdout),
        "10.9.0.1:8080\n10.9.2.0/24\n",
        "{}",
        text(&add.stderr)
    );
    let list = connmon(&["pool", "list", "--socket", sock]);
    assert_eq!(text(&list.stdout), "10.9.0.1:8080\n10.9.2.0/24\n");
    let remove = connmon(&["pool", "remove", "10.9.2.0/24", "--socket", sock]);
    assert_eq!(text(&remove.stdout), "10.9.0.1:8080\n");
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

/// The subset of JSON Schema (draft 2020-12) that docs/schemas uses: type, const, enum,
/// properties/required/additionalProperties, items, anyOf, oneOf. Returns the first
/// violation.
fn violation(schema: &Value, v: &Value, at: &str) -> Option<String> {
    if let Some(c) = schema.get("const") {
        return (c != v).then(|| format!("{at}: {v} is not {c}"));
    }
    if let Some(options) = schema["enum"].as_array() {
        return (!options.contains(v)).then(|| format!("{at}: {v} not in {options:?}"));
    }
    for (key, need_one) in [("anyOf", false), ("oneOf", true)] {
        if let Some(options) = schema[key].as_array() {
            let ok = options
                .iter()
                .filter(|s| violation(s, v, at).is_none())
                .count();
            return (if need_one { ok != 1 } else { ok == 0 })
                .then(|| format!("{at}: {v} matches {ok} of {key}"));
        }
    }
    if let Some(types) = schema.get("type") {
        let names: Vec<&str> = match types {
            Value::Array(a) => a.iter().filter_map(Value::as_str).collect(),
            t => vec![t.as_str().unwrap_or_default()],
        };
        let fits = |t: &str| match t {
            "object" => v.is_object(),
            "array" => v.is_array(),
            "string" => v.is_string(),
            "integer" => v.is_u64() || v.is_i64(),
            "number" => v.is_number(),
            "boolean" => v.is_boolean(),
            "null" => v.is_null(),
            _ => false,
        };
        if !names.iter().any(|t| fits(t)) {
            return Some(format!("{at}: {v} is not {names:?}"));
        }
    }
    if let (Some(obj), Some(props)) = (v.as_object(), schema["properties"].as_object()) {
        for key in schema["required"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
        {
            if !obj.contains_key(key) {
                return Some(format!("{at}: missing {key}"));
            }
        }
        for (key, value) in obj {
            match props.get(key) {
                Some(s) => {
                    if let Some(e) = violation(s, value, &format!("{at}.{key}")) {
                        return Some(e);
                    }
                }
                None if schema["additionalProperties"] == false => {
                    return Some(format!("{at}: unexpected key {key}"));
                }
                None => {}
            }
        }
    }
    if let (Some(items), Some(schema)) = (v.as_array(), schema.get("items")) {
        return items
            .iter()
            .enumerate()
            .find_map(|(i, item)| violation(schema, item, &format!("{at}[{i}]")));
    }
    None
}

/// Checks `v` against docs/schemas/<name>.json and returns the name.
fn check_schema(v: &Value) -> String {
    let t = v["type"].as_str().unwrap_or_else(|| panic!("no type: {v}"));
    let name = match t {
        "hello" | "ok" | "error" | "pong" | "snapshot" | "lagged" | "bye" => t.to_owned(),
        _ => format!("event-{t}"),
    };
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../docs/schemas")
        .join(format!("{name}.json"));
    let schema: Value = serde_json::from_str(
        &std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display())),
    )
    .expect("schema is JSON");
    if let Some(e) = violation(&schema, v, &name) {
        panic!("{v}\ndoes not match {}: {e}", path.display());
    }
    if t == "diagnosis" {
        format!("diagnosis:{}", v["kind"].as_str().unwrap_or_default())
    } else {
        t.to_owned()
    }
}

#[test]
fn every_message_matches_its_json_schema() {
    require_root();
    let ns = Netns::new("schema");
    // SYN retransmits at ~1 s and ~3 s: a `suspect` at the first, an `evict` at the second.
    ns.sysctl("net.ipv4.tcp_syn_retries", "6");
    let dir = scratch_dir("schema");
    let path = dir.join("sock").join("connmon.sock");
    // No percentage guard and no outage detection: host traffic must not withhold the
    // ejections this test needs to see.
    let cfg = config(
        &dir,
        "[policy]\nmax_ejection_percent = 100\noutage_min_destinations = 1000000\n",
    );
    let agent = start(&path, &["--config", &cfg, "--stats-interval", "1s"]);
    let mut seen = std::collections::BTreeSet::new();
    let (mut c, hello) = Sock::open(&path);
    seen.insert(check_schema(&hello));
    seen.insert(check_schema(&c.request(json!({"cmd": "subscribe"}))));
    let (mut admin, _) = Sock::open(&path);
    for cmd in [
        json!({"cmd": "ping"}),
        json!({"cmd": "pool", "op": "list"}),
        json!({"cmd": "evict", "dst": "10.9.0.3:80", "for_ms": 100_000}),
        json!({"cmd": "reinstate", "dst": "10.9.0.3:80"}),
        json!({"cmd": "reinstate", "dst": "10.9.0.3:80"}),
    ] {
        seen.insert(check_schema(&admin.request(cmd)));
    }
    let dst = refused_dst(&ns);
    refuse_from(&ns, &dst, 1);
    let (port, _) = ns.run("trap", || {
        let port = closed_port("127.0.0.1");
        TcpStream::connect(("127.0.0.1", port)).expect_err("refused");
        port
    });
    let blackholed: std::net::SocketAddr = format!("{}:80", connmon_integration::BLACKHOLE_V4)
        .parse()
        .unwrap();
    ns.run("bh", move || {
        TcpStream::connect_timeout(&blackholed, Duration::from_millis(3500))
            .expect_err("blackholed")
    });
    let want = [
        "connect",
        "syn_retransmit",
        "evict",
        "reinstate",
        "suspect",
        "diagnosis:localhost_trap",
        "stats",
    ];
    let deadline = Instant::now() + Duration::from_secs(10);
    while !want.iter().all(|w| seen.contains(*w)) && Instant::now() < deadline {
        if let Some(Some(v)) = c.read_within() {
            seen.insert(check_schema(&v));
        }
    }
    seen.insert(check_schema(&admin.request(json!({"cmd": "snapshot"}))));
    let (ok, printed) = agent.stop();
    assert!(ok);
    // What was still queued, then the goodbye.
    while let Some(v) = c.read() {
        seen.insert(check_schema(&v));
    }
    for v in &printed {
        check_schema(v);
    }
    for w in want
        .iter()
        .chain(&["hello", "ok", "pong", "error", "snapshot", "bye"])
    {
        assert!(
            seen.contains(*w),
            "no {w} seen (saw {seen:?}; trap port {port}); agent printed for {blackholed}:\n{}",
            printed
                .iter()
                .filter(|v| v["dst"] == blackholed.to_string())
                .map(Value::to_string)
                .collect::<Vec<_>>()
                .join("\n")
        );
    }
}
