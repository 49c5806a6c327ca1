//! Root integration tests for the pool-controller Unix socket and the client subcommands:
//! the real agent, real connects from a network namespace, real socket clients (this
//! process, `connmon` subcommands, the Python client as an unprivileged user).
//!
//! One module per concept: [`commands`] (requests, replies and the events they cause),
//! [`access`] (who may connect and change state), [`robustness`] (hostile input, slow
//! readers), [`lifecycle`] (the socket file, shutdown), [`cli`] (the client
//! subcommands), [`schema`] (every message against docs/schemas). This file holds the
//! client and agent helpers they share.

mod access;
mod cli;
mod commands;
mod lifecycle;
mod robustness;
mod schema;

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
    Agent, LOCAL_V4, Netns, assert_status_row, closed_port, connmon_bin, is_connect, require_root,
    scratch_dir, timing::wait_until, world_readable_copy, write_file,
};
use serde_json::{Value, json};

/// How long to wait for a reply, a line or the socket: a deadline, ended as soon as it
/// comes (6 s was short for a loaded 2-core host, where a debug agent's reply can wait
/// seconds for the CPU).
const WAIT: Duration = Duration::from_secs(20);
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

/// An agent serving a socket in a fresh scratch directory `tag`, configured by `toml`
/// (and `extra` arguments): the socket's path and the agent.
fn start_configured(tag: &str, toml: &str, extra: &[&str]) -> (PathBuf, Agent) {
    let dir = scratch_dir(tag);
    let path = dir.join("sock").join("connmon.sock");
    let cfg = config(&dir, toml);
    let mut args = vec!["--config", cfg.as_str()];
    args.extend_from_slice(extra);
    let agent = start(&path, &args);
    (path, agent)
}

fn start(path: &Path, extra: &[&str]) -> Agent {
    let mut args = vec!["--socket", path.to_str().expect("utf-8 path")];
    args.extend_from_slice(extra);
    let agent = Agent::start(&args);
    // The socket is bound right after the probes attach.
    agent.wait_for_socket(path, WAIT);
    agent
}

fn config(dir: &Path, text: &str) -> String {
    write_file(&dir.join("connmon.toml"), text)
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
