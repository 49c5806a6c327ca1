//! Helpers for connmon's root integration tests: a network namespace per test (deleted
//! on drop), threads that connect from inside it, and a real `connmon run` child whose
//! NDJSON output is parsed line by line.
//!
//! Tests see every connect on the host (tracepoints are global), so they select events
//! by the inode of their own network namespace.

use std::{
    fs::File,
    io::{BufRead as _, BufReader},
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{
        Arc, Mutex,
        atomic::{AtomicU32, Ordering},
        mpsc::{self, Receiver, RecvTimeoutError},
    },
    thread,
    time::{Duration, Instant},
};

use serde_json::Value;

pub mod client;
pub mod haproxy;
pub mod otlp_receiver;
pub mod timing;

/// A command whose output the test reads: stdin closed, stdout and stderr piped, and no
/// `__pycache__` written into the source tree by the Python it runs.
pub fn piped(program: impl AsRef<std::ffi::OsStr>) -> Command {
    let mut cmd = Command::new(program);
    cmd.env("PYTHONDONTWRITEBYTECODE", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    cmd
}

/// Panics unless running as root: these tests must run, never skip.
pub fn require_root() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "connmon's integration tests load eBPF and create network namespaces: run them as root (`sudo -E cargo xtask test`)"
    );
}

/// Runs a shell-free command and panics with its output if it fails.
pub fn sh(args: &[&str]) -> String {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|e| panic!("starting {args:?}: {e}"));
    assert!(
        out.status.success(),
        "{args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

static NEXT_NS: AtomicU32 = AtomicU32::new(0);

/// A network namespace with loopback up and a veth pair whose addresses let tests make
/// SYNs vanish (a permanent neighbour entry with a MAC nobody has) or fail (a neighbour
/// that never answers ARP).
pub struct Netns {
    pub name: String,
    /// Inode number of the namespace, as connmon reports it in `netns`.
    pub inode: u32,
}

/// The namespace's own address on the veth link.
pub const LOCAL_V4: &str = "10.200.0.1";
/// A neighbour with a permanent, bogus MAC: SYNs to it vanish (a DROP firewall).
pub const BLACKHOLE_V4: &str = "10.200.0.2";
/// A neighbour that never answers ARP: the kernel reports EHOSTUNREACH.
pub const NO_ARP_V4: &str = "10.200.0.3";

impl Netns {
    pub fn new(tag: &str) -> Self {
        SWEEP_NETNS.call_once(sweep_dead_namespaces);
        let name = format!(
            "connmon-{tag}-{}-{}",
            std::process::id(),
            NEXT_NS.fetch_add(1, Ordering::Relaxed)
        );
        sh(&["ip", "netns", "add", &name]);
        let mut ns = Netns { inode: 0, name };
        let ip = |args: &[&str]| {
            let mut full = vec!["ip", "-n", ns.name.as_str()];
            full.extend_from_slice(args);
            sh(&full);
        };
        for command in [
            "link set lo up".to_owned(),
            "link add veth0 type veth peer name veth1".to_owned(),
            format!("addr add {LOCAL_V4}/24 dev veth0"),
            "link set veth0 up".to_owned(),
            "link set veth1 up".to_owned(),
            format!("neigh add {BLACKHOLE_V4} lladdr 02:00:00:00:00:99 dev veth0 nud permanent"),
        ] {
            ip(&command.split(' ').collect::<Vec<_>>());
        }
        ns.sysctl("net.ipv4.tcp_syn_retries", "1");
        ns.sysctl("net.ipv4.neigh.veth0.mcast_solicit", "1");
        ns.sysctl("net.ipv4.neigh.veth0.retrans_time_ms", "300");
        let inode = std::fs::metadata(ns.path()).expect("netns file").ino();
        ns.inode = u32::try_from(inode).expect("netns inode fits u32");
        ns
    }

    pub fn path(&self) -> PathBuf {
        PathBuf::from("/run/netns").join(&self.name)
    }

    pub fn sysctl(&self, key: &str, value: &str) {
        sh(&[
            "ip",
            "netns",
            "exec",
            &self.name,
            "sysctl",
            "-q",
            "-w",
            &format!("{key}={value}"),
        ]);
    }

    /// Runs `f` on a new thread named `thread_name` (that becomes its `comm`) inside this
    /// namespace, and returns its result with the thread's kernel tid.
    pub fn run<T: Send + 'static>(
        &self,
        thread_name: &str,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> (T, u32) {
        self.spawn(Some(thread_name), move || {
            let tid = nix::unistd::gettid().as_raw() as u32;
            (f(), tid)
        })
        .join()
        .expect("test thread panicked")
    }

    /// Starts `f` on a new thread inside this namespace and returns at once; the thread
    /// is named `thread_name` (its `comm`) if given, else unnamed as `thread::spawn`'s.
    pub fn spawn<T: Send + 'static>(
        &self,
        thread_name: Option<&str>,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> thread::JoinHandle<T> {
        let path = self.path();
        let mut builder = thread::Builder::new();
        if let Some(name) = thread_name {
            builder = builder.name(name.to_owned());
        }
        builder
            .spawn(move || {
                let file = File::open(&path).expect("open netns");
                nix::sched::setns(file, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
                f()
            })
            .expect("spawn")
    }
}

static SWEEP_NETNS: std::sync::Once = std::sync::Once::new();

/// Deletes `connmon-<tag>-<pid>-<n>` namespaces whose test process is gone. A test killed
/// by the runner's timeout never runs its guard's `Drop`, and its namespace (with veths and
/// addresses) would stay on the host for good.
fn sweep_dead_namespaces() {
    let Ok(names) = std::fs::read_dir("/run/netns") else {
        return;
    };
    for entry in names.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let mut parts = name.rsplit('-');
        let (Some(_n), Some(pid)) = (parts.next(), parts.next()) else {
            continue;
        };
        let Ok(pid) = pid.parse::<u32>() else {
            continue;
        };
        if name.starts_with("connmon-") && !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            let _ = Command::new("ip").args(["netns", "del", &name]).status();
        }
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// How many eBPF programs a running agent holds: the hooks its start-up line says it
/// attached (`attached to tp_btf/..., fentry/...`). The three required hooks must be
/// among them; the optional `fentry` ones depend on the kernel (BTF) and on whether it
/// lets BPF trampolines attach (see the probe table, monitor/src/source/probes.rs).
pub fn expected_programs(agent: &Agent) -> usize {
    let stderr = agent.wait_for_stderr("attached to ", Duration::from_secs(30));
    let line = stderr
        .lines()
        .find_map(|l| l.split_once("attached to ").map(|(_, rest)| rest))
        .unwrap_or_else(|| panic!("no start-up line in:\n{stderr}"));
    // "tp_btf/a, tp_btf/b, fentry/c ring_buffer_bytes=..."
    let hooks: Vec<&str> = line
        .split(", ")
        .filter_map(|h| h.split_whitespace().next())
        .collect();
    for required in [
        "tp_btf/inet_sock_set_state",
        "tp_btf/tcp_receive_reset",
        "tp_btf/tcp_retransmit_skb",
    ] {
        assert!(hooks.contains(&required), "{required} not attached: {line}");
    }
    hooks.len()
}

/// The `connmon` binary under test: `CONNMON_BIN` (set by `cargo xtask test`) or the
/// workspace's debug build.
pub fn connmon_bin() -> PathBuf {
    std::env::var_os("CONNMON_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/debug/connmon")
        })
}

/// How long [`Agent::start`] waits for the agent to attach.
pub const ATTACH_DEADLINE: Duration = Duration::from_secs(120);

/// A running `connmon run --output json`, its stdout parsed into JSON values.
pub struct Agent {
    child: Child,
    lines: Receiver<Value>,
    stderr: Arc<Mutex<String>>,
    seen: Vec<Value>,
}

impl Agent {
    /// Starts the agent and waits until it has attached. Unless `extra_args` name them,
    /// the agent gets a state file and a control socket of its own (never the host's),
    /// and no handshake checks (`--checks off`: its probes would go to the host's
    /// loopback, not to the test's namespace).
    pub fn start(extra_args: &[&str]) -> Self {
        Self::start_with(extra_args, |_| {})
    }

    /// [`Agent::start`] with the configuration file `config` and the control socket
    /// `socket`.
    pub fn start_serving(config: &Path, socket: &Path) -> Self {
        let utf8 = |p: &Path| p.to_str().expect("utf-8 path").to_owned();
        Self::start(&["--config", &utf8(config), "--socket", &utf8(socket)])
    }

    /// Waits (bounded by `timeout`) until the agent's control socket at `path` accepts.
    pub fn wait_for_socket(&self, path: &Path, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while std::os::unix::net::UnixStream::connect(path).is_err() {
            assert!(
                Instant::now() < deadline,
                "no socket at {} within {timeout:?}; stderr:\n{}",
                path.display(),
                self.stderr()
            );
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// Starts the agent inside `ns` (its own connects — handshake checks — then reach
    /// the namespace's addresses; the kernel programs still see every namespace).
    pub fn start_in(ns: &Netns, extra_args: &[&str]) -> Self {
        let file = File::open(ns.path()).expect("open netns");
        Self::start_with(extra_args, move |cmd| {
            use std::os::unix::process::CommandExt as _;
            // SAFETY: setns is async-signal-safe; the closure only uses the open fd.
            unsafe {
                cmd.pre_exec(move || {
                    nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET)
                        .map_err(std::io::Error::from)
                });
            }
        })
    }

    /// [`Agent::start`], with `configure` applied to the command first (e.g. a
    /// `pre_exec` hook that gives the agent a mount namespace of its own).
    pub fn start_with(extra_args: &[&str], configure: impl FnOnce(&mut Command)) -> Self {
        let mut cmd = Command::new(connmon_bin());
        configure(&mut cmd);
        Self::start_command(cmd, extra_args)
    }

    /// [`Agent::start`] through a wrapper command: `wrapper[0] wrapper[1..] run ...`
    /// (e.g. `setpriv ... connmon`, or `podman run ... image`). An empty wrapper runs
    /// [`connmon_bin`] directly.
    pub fn start_wrapped(wrapper: &[String], extra_args: &[&str]) -> Self {
        let Some((program, args)) = wrapper.split_first() else {
            return Self::start(extra_args);
        };
        let mut cmd = Command::new(program);
        cmd.args(args);
        Self::start_command(cmd, extra_args)
    }

    fn start_command(mut cmd: Command, extra_args: &[&str]) -> Self {
        cmd.args(["run", "--output", "json"]).args(extra_args);
        if !extra_args.contains(&"--checks") {
            cmd.args(["--checks", "off"]);
        }
        if !extra_args.contains(&"--config") {
            // Never the host's /etc/connmon/connmon.toml.
            cmd.args(["--config", "/dev/null"]);
        }
        if !extra_args.contains(&"--state-file") {
            cmd.arg("--state-file")
                .arg(scratch_dir("state").join("state.json"));
        }
        if !extra_args.contains(&"--socket") {
            // Never the host's /run/connmon/connmon.sock (another agent may own it).
            cmd.arg("--socket")
                .arg(scratch_dir("sock").join("connmon.sock"));
        }
        let mut child = cmd
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", connmon_bin().display()));
        let (tx, lines) = mpsc::channel();
        let stdout = child.stdout.take().expect("stdout");
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let value: Value = serde_json::from_str(&line).unwrap_or_else(|e| {
                    panic!("connmon printed a line that is not JSON ({e}): {line}")
                });
                if tx.send(value).is_err() {
                    break;
                }
            }
        });
        let stderr = Arc::new(Mutex::new(String::new()));
        let (ready_tx, ready_rx) = mpsc::channel();
        let err_pipe = child.stderr.take().expect("stderr");
        let sink = Arc::clone(&stderr);
        thread::spawn(move || {
            for line in BufReader::new(err_pipe).lines() {
                let Ok(line) = line else { break };
                let attached = line.contains("attached to");
                // Stored before signalling, so `stderr()` right after `start` has the line.
                sink.lock().expect("stderr lock").push_str(&(line + "\n"));
                if attached {
                    let _ = ready_tx.send(());
                }
            }
        });
        let mut agent = Agent {
            child,
            lines,
            stderr,
            seen: Vec::new(),
        };
        // A deadline, not a goal: attaching takes ~1 s natively but far longer under
        // QEMU emulation (the kernel matrix) on a loaded machine.
        if ready_rx.recv_timeout(ATTACH_DEADLINE).is_err() {
            let status = agent.child.try_wait().ok().flatten();
            panic!(
                "connmon did not attach within {ATTACH_DEADLINE:?} (exit: {status:?}); stderr:\n{}",
                agent.stderr()
            );
        }
        agent
    }

    /// Polls the agent's stderr until it contains `needle` (colour codes do not split
    /// it); returns the stderr.
    pub fn wait_for_stderr(&self, needle: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let stderr = self.stderr();
            if strip_ansi(&stderr).contains(needle) {
                return stderr;
            }
            assert!(
                Instant::now() < deadline,
                "agent stderr has no {needle:?} within {timeout:?}:\n{stderr}"
            );
            thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn stderr(&self) -> String {
        self.stderr.lock().expect("stderr lock").clone()
    }

    /// Waits for the first line matching `pred` (lines already seen are searched first).
    pub fn wait_for(
        &mut self,
        what: &str,
        timeout: Duration,
        pred: impl Fn(&Value) -> bool,
    ) -> Value {
        if let Some(v) = self.seen.iter().find(|v| pred(v)) {
            return v.clone();
        }
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(v) => {
                    self.seen.push(v.clone());
                    if pred(&v) {
                        return v;
                    }
                }
                Err(RecvTimeoutError::Timeout) | Err(RecvTimeoutError::Disconnected) => panic!(
                    "no {what} within {timeout:?}; lines seen:\n{}\nstderr:\n{}",
                    self.seen
                        .iter()
                        .map(Value::to_string)
                        .collect::<Vec<_>>()
                        .join("\n"),
                    self.stderr()
                ),
            }
        }
    }

    /// Makes a connect to a closed port on the loopback of `ns` (from a thread named
    /// `thread`), which is refused, and waits up to `timeout` for its `refused` line.
    pub fn wait_for_refused_connect(
        &mut self,
        what: &str,
        ns: &Netns,
        thread: &str,
        timeout: Duration,
    ) {
        let (port, _) = ns.run(thread, || {
            let port = closed_port("127.0.0.1");
            assert!(std::net::TcpStream::connect(("127.0.0.1", port)).is_err());
            port
        });
        let dst = format!("127.0.0.1:{port}");
        self.wait_for(what, timeout, |v| is_connect(v, "refused", &dst, ns.inode));
    }

    /// Collects lines for `period` and returns everything seen so far.
    pub fn collect_for(&mut self, period: Duration) -> &[Value] {
        let deadline = Instant::now() + period;
        while let Ok(v) = self
            .lines
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
        {
            self.seen.push(v);
        }
        &self.seen
    }

    /// Sends SIGTERM, waits for exit, and returns (exit success, every line it printed).
    pub fn stop(mut self) -> (bool, Vec<Value>) {
        self.signal(libc::SIGTERM);
        let status = wait_timeout(&mut self.child, Duration::from_secs(10));
        while let Ok(v) = self.lines.recv_timeout(Duration::from_millis(500)) {
            self.seen.push(v);
        }
        (status, std::mem::take(&mut self.seen))
    }

    pub fn signal(&self, sig: i32) {
        let signal = nix::sys::signal::Signal::try_from(sig).expect("a signal number");
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.child.id() as i32), signal);
    }
}

fn wait_timeout(child: &mut Child, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if let Ok(Some(status)) = child.try_wait() {
            return status.success();
        }
        thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
    panic!("connmon did not exit within {timeout:?} of SIGTERM");
}

impl Drop for Agent {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            self.signal(libc::SIGTERM);
            let _ = wait_timeout(&mut self.child, Duration::from_secs(10));
        }
    }
}

static NEXT_DIR: AtomicU32 = AtomicU32::new(0);
static SWEEP: std::sync::Once = std::sync::Once::new();

/// The prefix of every scratch directory: `<temp>/connmon-test-<pid>/`.
const SCRATCH_PREFIX: &str = "connmon-test-";

/// A fresh directory for this test process, under `<temp>/connmon-test-<pid>/`.
///
/// Tests run one per process (nextest), and a process never drops its statics, so the
/// directories cannot be removed when the test ends. Instead the first call in each
/// process removes the scratch roots of processes that no longer run: the disk holds at
/// most the directories of the tests running now (and of the last ones to finish), not
/// every binary copy and state file of every run (which once filled CI's disk). A failed
/// test's files stay until the next test run, for a look.
pub fn scratch_dir(tag: &str) -> PathBuf {
    let temp = std::env::temp_dir();
    SWEEP.call_once(|| sweep_dead_scratch_roots(&temp));
    let dir = temp
        .join(format!("{SCRATCH_PREFIX}{}", std::process::id()))
        .join(format!(
            "{tag}-{}",
            NEXT_DIR.fetch_add(1, Ordering::Relaxed)
        ));
    std::fs::create_dir_all(&dir).expect("create scratch dir");
    dir
}

/// Removes `<temp>/connmon-test-<pid>` for every `pid` that is not a running process.
fn sweep_dead_scratch_roots(temp: &std::path::Path) {
    let Ok(entries) = std::fs::read_dir(temp) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.strip_prefix(SCRATCH_PREFIX))
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            // Best effort: another test process may be sweeping the same root.
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

/// Writes `text` to `path` and returns the path as a string (for an argument).
pub fn write_file(path: &Path, text: &str) -> String {
    std::fs::write(path, text).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    path.to_str().expect("utf-8 path").to_owned()
}

/// Writes `text` as `dir/connmon.toml` and returns its path.
pub fn write_config(dir: &std::path::Path, text: impl AsRef<str>) -> PathBuf {
    let path = dir.join("connmon.toml");
    std::fs::write(&path, text.as_ref()).expect("write connmon.toml");
    path
}

/// A copy of `file` that an unprivileged user can execute or read: the build tree (a
/// fresh clone in CI may live in a 0700 directory) is not reachable for uid 65534.
pub fn world_readable_copy(file: &std::path::Path) -> PathBuf {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = scratch_dir("shared");
    for d in [dir.parent().expect("the scratch root"), &dir] {
        std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o755)).expect("chmod dir");
    }
    let copy = dir.join(file.file_name().expect("a file name"));
    std::fs::copy(file, &copy).expect("copy");
    std::fs::set_permissions(&copy, std::fs::Permissions::from_mode(0o755)).expect("chmod file");
    copy
}

/// Matches a `connect` line of `outcome` to `dst` from namespace `netns`.
pub fn is_connect(v: &Value, outcome: &str, dst: &str, netns: u32) -> bool {
    v["type"] == "connect" && v["outcome"] == outcome && v["dst"] == dst && v["netns"] == netns
}

/// Matches a line of `kind` ("connect", "evict", ...) about destination `dst`.
pub fn is_about(v: &Value, kind: &str, dst: impl std::fmt::Display) -> bool {
    v["type"] == kind && v["dst"] == dst.to_string()
}

/// Asserts the columns after the destination (role, state, attempts, failure %) in the
/// row of `dst` of a `connmon status` table.
pub fn assert_status_row(table: &str, dst: &str, expected: [&str; 4]) {
    let row = table
        .lines()
        .find(|l| l.starts_with(dst))
        .unwrap_or_else(|| panic!("no row for {dst}:\n{table}"));
    let cols: Vec<&str> = row.split_whitespace().collect();
    assert_eq!(&cols[1..5], expected, "{row}");
}

/// A non-blocking connect to `target` that is still in progress (`EINPROGRESS`): a
/// neighbour that never answers leaves it pending until the kernel or the caller ends it.
pub fn pending_connect(target: std::net::SocketAddr) -> socket2::Socket {
    use socket2::{Domain, Socket, Type};
    let s = Socket::new(Domain::for_address(target), Type::STREAM, None).expect("socket");
    s.set_nonblocking(true).expect("nonblocking");
    let err = s.connect(&target.into()).expect_err("a pending connect");
    assert_eq!(err.raw_os_error(), Some(libc::EINPROGRESS), "{err}");
    s
}

/// A TCP port on which nothing listens (bound then released) in the current namespace.
pub fn closed_port(addr: &str) -> u16 {
    let l = std::net::TcpListener::bind((addr, 0)).expect("bind");
    l.local_addr().expect("addr").port()
}

/// `text` without terminal colour sequences (`ESC [ … m`).
pub fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\x1b' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}
