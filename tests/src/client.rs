//! A minimal NDJSON client of the agent's Unix socket for the hardening tests
//! (`crash.rs`, `hostile.rs`), and what those tests read about the agent's process:
//! its RSS, open fds and the ids of the BPF programs and maps it holds.

use std::{
    collections::BTreeSet,
    io::{BufRead as _, BufReader, ErrorKind, Write as _},
    os::unix::net::UnixStream,
    path::Path,
    thread,
    time::{Duration, Instant},
};

use serde_json::{Value, json};

/// One connection, past its `hello`.
pub struct Client {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
    next_id: u64,
}

impl Client {
    /// Connects, retrying until `timeout` (the socket appears right after attach).
    pub fn connect(path: &Path, timeout: Duration) -> Self {
        let deadline = Instant::now() + timeout;
        let stream = loop {
            match UnixStream::connect(path) {
                Ok(s) => break s,
                Err(e) if Instant::now() < deadline => {
                    let _ = e;
                    thread::sleep(Duration::from_millis(20));
                }
                Err(e) => panic!("connect {}: {e}", path.display()),
            }
        };
        stream
            // A deadline for each reply (a snapshot of a large table on an overloaded
            // host takes seconds), not a latency goal.
            .set_read_timeout(Some(crate::timing::patient(Duration::from_secs(30))))
            .expect("read timeout");
        let mut client = Client {
            writer: stream.try_clone().expect("clone"),
            reader: BufReader::new(stream),
            next_id: 0,
        };
        let hello = client.read().expect("hello");
        assert_eq!(hello["type"], "hello", "{hello}");
        client
    }

    /// The next line as JSON; None at end of stream.
    pub fn read(&mut self) -> Option<Value> {
        let mut line = String::new();
        match self.reader.read_line(&mut line) {
            Ok(0) => None,
            Ok(_) => Some(
                serde_json::from_str(&line)
                    .unwrap_or_else(|e| panic!("agent sent non-JSON ({e}): {line:?}")),
            ),
            Err(e) if e.kind() == ErrorKind::ConnectionReset => None,
            Err(e) => panic!("reading from the agent: {e}"),
        }
    }

    /// Writes raw bytes (no newline added).
    pub fn write(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.writer.write_all(bytes)
    }

    /// Sends a command with a fresh id and returns its reply (other lines are skipped).
    pub fn request(&mut self, mut command: Value) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        command["id"] = json!(id);
        let mut line = command.to_string();
        line.push('\n');
        self.write(line.as_bytes()).expect("send");
        loop {
            let reply = self
                .read()
                .unwrap_or_else(|| panic!("connection closed before the reply to {command}"));
            if reply["id"] == id {
                return reply;
            }
        }
    }
}

/// `{"cmd":"evict","dst":DST,"for_ms":MS}` as one line.
pub fn evict_line(dst: &str, for_ms: u64) -> String {
    format!(
        "{}\n",
        json!({"cmd": "evict", "dst": dst, "for_ms": for_ms})
    )
}

/// Resident set size of `pid` in KiB (VmRSS).
pub fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no VmRSS in /proc/{pid}/status"))
}

/// Open file descriptors of `pid`.
pub fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("fd dir")
        .count()
}

/// The ids of the BPF programs and maps `pid` holds fds for (from `/proc/PID/fdinfo`,
/// whose `prog_id:`/`map_id:` lines the kernel writes for BPF fds).
pub fn bpf_object_ids(pid: u32) -> (BTreeSet<u32>, BTreeSet<u32>) {
    let mut programs = BTreeSet::new();
    let mut maps = BTreeSet::new();
    let Ok(entries) = std::fs::read_dir(format!("/proc/{pid}/fdinfo")) else {
        return (programs, maps);
    };
    for entry in entries.flatten() {
        let Ok(text) = std::fs::read_to_string(entry.path()) else {
            continue;
        };
        for line in text.lines() {
            let id = |prefix: &str| {
                line.strip_prefix(prefix)
                    .and_then(|v| v.trim().parse::<u32>().ok())
            };
            if let Some(id) = id("prog_id:") {
                programs.insert(id);
            }
            if let Some(id) = id("map_id:") {
                maps.insert(id);
            }
        }
    }
    (programs, maps)
}

/// Waits until none of `programs` and `maps` is loaded in the kernel any more (the
/// kernel frees them once the last reference is gone, shortly after the holder died).
pub fn wait_bpf_objects_released(
    programs: &BTreeSet<u32>,
    maps: &BTreeSet<u32>,
    timeout: Duration,
) {
    let deadline = Instant::now() + timeout;
    loop {
        let live_programs: BTreeSet<u32> = aya::programs::loaded_programs()
            .filter_map(Result::ok)
            .map(|p| p.id())
            .filter(|id| programs.contains(id))
            .collect();
        let live_maps: BTreeSet<u32> = aya::maps::loaded_maps()
            .filter_map(Result::ok)
            .map(|m| m.id())
            .filter(|id| maps.contains(id))
            .collect();
        if live_programs.is_empty() && live_maps.is_empty() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "kernel objects of a dead agent still loaded after {timeout:?}: programs {live_programs:?}, maps {live_maps:?}"
        );
        thread::sleep(Duration::from_millis(100));
    }
}
