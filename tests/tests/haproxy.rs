//! Root integration tests for the HAProxy adapter, against a real HAProxy (the Debian
//! package) running inside the test's network namespace, so its outgoing connects reach
//! the namespace's loopback and its blackholed neighbour. connmon sees those connects,
//! evicts, and the adapter drives HAProxy's runtime API; the tests check the result
//! through HAProxy's own `show servers state`.

use std::{
    fs::File,
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpListener, TcpStream},
    os::unix::net::UnixStream,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use connmon_integration::{
    Agent, BLACKHOLE_V4, LOCAL_V4, Netns, closed_port, require_root, scratch_dir,
};
use serde_json::Value;

/// `srv_admin_state` bit of `set server … state maint`.
const FORCED_MAINT: u32 = 0x01;

/// A `haproxy -db` (foreground) process inside a namespace, killed on drop.
struct Haproxy {
    child: Child,
    socket: PathBuf,
    log: PathBuf,
}

/// The three servers of backend `proxies` and the frontend ports that pick each one.
struct Layout {
    up: SocketAddr,
    closed: SocketAddr,
    blackholed: SocketAddr,
    /// Frontend ports whose traffic goes to `up`, `closed`, `blackholed` respectively.
    ports: [u16; 3],
}

impl Haproxy {
    /// Writes the configuration into `dir` and starts HAProxy in `ns`: TCP mode, no
    /// health checks, one frontend whose port selects the server (`use-server`), no
    /// connect retries (one refused connect per request keeps the decisions countable).
    fn start(ns: &Netns, dir: &Path, layout: &Layout) -> Self {
        let socket = dir.join("admin.sock");
        let [p_up, p_closed, p_bh] = layout.ports;
        let config = format!(
            "global\n\
             \x20   stats socket {socket} mode 600 level admin\n\
             defaults\n\
             \x20   mode tcp\n\
             \x20   timeout connect 5s\n\
             \x20   retries 0\n\
             \x20   timeout client 10s\n\
             \x20   timeout server 10s\n\
             frontend front\n\
             \x20   bind 127.0.0.1:{p_up}\n\
             \x20   bind 127.0.0.1:{p_closed}\n\
             \x20   bind 127.0.0.1:{p_bh}\n\
             \x20   default_backend proxies\n\
             backend proxies\n\
             \x20   use-server up if {{ dst_port {p_up} }}\n\
             \x20   use-server closed if {{ dst_port {p_closed} }}\n\
             \x20   use-server blackholed if {{ dst_port {p_bh} }}\n\
             \x20   server up {up}\n\
             \x20   server closed {closed}\n\
             \x20   server blackholed {bh}\n",
            socket = socket.display(),
            up = layout.up,
            closed = layout.closed,
            bh = layout.blackholed,
        );
        let config_path = dir.join("haproxy.cfg");
        std::fs::write(&config_path, config).expect("write haproxy.cfg");
        let log = dir.join("haproxy.log");
        let out = File::create(&log).expect("haproxy log");
        let child = Command::new("ip")
            .args(["netns", "exec", &ns.name, "haproxy", "-db", "-f"])
            .arg(&config_path)
            .stdin(Stdio::null())
            .stdout(out.try_clone().expect("dup log"))
            .stderr(out)
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "starting haproxy (is the Debian package installed? `cargo xtask setup`): {e}"
                )
            });
        let mut haproxy = Haproxy { child, socket, log };
        let deadline = Instant::now() + Duration::from_secs(10);
        while haproxy.try_command("show info").is_none() {
            if let Ok(Some(status)) = haproxy.child.try_wait() {
                panic!("haproxy exited ({status}):\n{}", haproxy.log());
            }
            assert!(
                Instant::now() < deadline,
                "haproxy's stats socket did not answer within 10 s:\n{}",
                haproxy.log()
            );
            thread::sleep(Duration::from_millis(50));
        }
        haproxy
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// One runtime-API command, or None if the socket does not answer.
    fn try_command(&self, line: &str) -> Option<String> {
        let mut stream = UnixStream::connect(&self.socket).ok()?;
        stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
        stream.write_all(format!("{line}\n").as_bytes()).ok()?;
        let mut answer = String::new();
        stream.read_to_string(&mut answer).ok()?;
        Some(answer)
    }

    /// `srv_admin_state` of every server of `proxies`, read by the header's column names.
    fn admin_states(&self) -> Vec<(String, u32)> {
        let answer = self
            .try_command("show servers state proxies")
            .expect("haproxy answers show servers state");
        let mut lines = answer.lines();
        assert_eq!(lines.next(), Some("1"), "servers-state version: {answer}");
        let header: Vec<&str> = lines
            .next()
            .and_then(|h| h.strip_prefix("# "))
            .expect("header")
            .split(' ')
            .collect();
        let col = |name: &str| {
            header
                .iter()
                .position(|c| *c == name)
                .unwrap_or_else(|| panic!("no {name} column"))
        };
        let (name, admin) = (col("srv_name"), col("srv_admin_state"));
        lines
            .filter(|l| !l.trim().is_empty())
            .map(|l| {
                let fields: Vec<&str> = l.split(' ').collect();
                (
                    fields[name].to_owned(),
                    fields[admin].parse().expect("admin state"),
                )
            })
            .collect()
    }

    fn admin_state(&self, server: &str) -> u32 {
        self.admin_states()
            .into_iter()
            .find(|(name, _)| name == server)
            .unwrap_or_else(|| panic!("no server {server} in haproxy"))
            .1
    }

    /// Polls until `server`'s MAINT bit is `maint`, checking on every poll that the
    /// listening server `up` was never touched. Returns how long it took.
    fn wait_for_maint(
        &self,
        server: &str,
        maint: bool,
        timeout: Duration,
        agent: &Agent,
    ) -> Duration {
        let start = Instant::now();
        loop {
            let states = self.admin_states();
            let up = states.iter().find(|(n, _)| n == "up").expect("server up").1;
            assert_eq!(up, 0, "the listening server was touched: {states:?}");
            let state = states.iter().find(|(n, _)| n == server).expect("server").1;
            if (state & FORCED_MAINT != 0) == maint {
                return start.elapsed();
            }
            assert!(
                start.elapsed() < timeout,
                "haproxy server {server} not {} within {timeout:?}: {states:?}\nagent stderr:\n{}",
                if maint { "MAINT" } else { "READY" },
                agent.stderr()
            );
            thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A namespace with a listening server (kept alive by the returned listener), a closed
/// port, the blackholed neighbour, and three free frontend ports.
fn layout(ns: &Netns) -> (TcpListener, Layout) {
    let ((listener, closed, ports), _) = ns.run("setup", || {
        // Servers on the namespace's veth address: its loopback would be a destination
        // of that namespace alone (a target), not the pool member HAProxy names.
        let listener = TcpListener::bind((LOCAL_V4, 0)).expect("bind");
        let closed: SocketAddr = format!("{LOCAL_V4}:{}", closed_port(LOCAL_V4))
            .parse()
            .expect("addr");
        let ports = [
            closed_port("127.0.0.1"),
            closed_port("127.0.0.1"),
            closed_port("127.0.0.1"),
        ];
        (listener, closed, ports)
    });
    let up = listener.local_addr().expect("addr");
    let blackholed = format!("{BLACKHOLE_V4}:80").parse().expect("addr");
    (
        listener,
        Layout {
            up,
            closed,
            blackholed,
            ports,
        },
    )
}

fn connmon_config(dir: &Path, socket: &Path, base_ejection: &str) -> String {
    connmon_config_with(dir, socket, base_ejection, "")
}

/// As [`connmon_config`], with extra `[agent]` lines. The agent sees every connect on
/// the host: the guards (ejection percentage, local outage) are opened wide so failures
/// of anything else running at the same time cannot hold back this test's evictions.
fn connmon_config_with(dir: &Path, socket: &Path, base_ejection: &str, agent: &str) -> String {
    let path = dir.join("connmon.toml");
    let text = format!(
        "[agent]\n{agent}socket = \"{}\"\n\n[policy]\nbase_ejection = \"{base_ejection}\"\njitter = 0.0\n\
         max_ejection_percent = 100\noutage_min_destinations = 100000\n\n\
         [[haproxy]]\nsocket = \"{}\"\nbackends = [\"proxies\"]\nrefresh = \"1s\"\npool_from_haproxy = true\n",
        dir.join("connmon.sock").display(),
        socket.display()
    );
    std::fs::write(&path, text).expect("write connmon.toml");
    path.to_str().expect("utf-8 path").to_owned()
}

/// Waits until the agent's stderr (without colours) contains `needle`.
fn wait_for_log(agent: &Agent, needle: &str, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    while !strip_ansi(&agent.stderr()).contains(needle) {
        assert!(
            Instant::now() < deadline,
            "no {needle:?} in the agent's log within {timeout:?}:\n{}",
            agent.stderr()
        );
        thread::sleep(Duration::from_millis(50));
    }
}

/// Opens a connection to HAProxy's frontend from inside `ns` and waits (bounded) for
/// HAProxy to close it or for `hold` to pass.
fn through_haproxy(ns: &Netns, port: u16, hold: Duration) {
    ns.run("client", move || {
        let mut stream =
            TcpStream::connect(("127.0.0.1", port)).expect("haproxy's frontend accepts");
        stream.set_read_timeout(Some(hold)).expect("timeout");
        let mut buf = [0u8; 64];
        let _ = stream.read(&mut buf);
    });
}

/// The counters the adapter logs at exit, as `key=value` pairs of its last line.
fn exit_counter(stderr: &str, key: &str) -> u64 {
    let plain = strip_ansi(stderr);
    let line = plain
        .lines()
        .rev()
        .find(|l| l.contains("haproxy adapter stopped"))
        .unwrap_or_else(|| panic!("no exit counters:\n{stderr}"));
    let value = line
        .split_whitespace()
        .find_map(|kv| kv.strip_prefix(&format!("{key}=")))
        .unwrap_or_else(|| panic!("no {key} in {line}"));
    value.parse().unwrap_or_else(|_| panic!("{key} in {line}"))
}

/// The log without terminal colour sequences (`ESC [ … m`).
fn strip_ansi(text: &str) -> String {
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

fn decisions<'a>(lines: &'a [Value], kind: &str, dst: &SocketAddr) -> Vec<&'a Value> {
    lines
        .iter()
        .filter(|l| l["type"] == kind && l["dst"] == dst.to_string())
        .collect()
}

#[test]
fn a_refusing_server_goes_to_maint_and_back_to_ready_and_the_listening_one_is_never_touched() {
    require_root();
    let ns = Netns::new("hapx");
    let (_listener, layout) = layout(&ns);
    let dir = scratch_dir("haproxy");
    let haproxy = Haproxy::start(&ns, &dir, &layout);
    let config = connmon_config(&dir, &haproxy.socket, "2s");
    let mut agent = Agent::start(&["--config", &config]);
    wait_for_log(&agent, "pool updated from haproxy", Duration::from_secs(10));

    // Healthy traffic first: the listening server is used and stays as it is.
    for _ in 0..3 {
        through_haproxy(&ns, layout.ports[0], Duration::from_millis(100));
    }
    // HAProxy connects to the closed server: refused (and its own retries, refused too).
    through_haproxy(&ns, layout.ports[1], Duration::from_secs(2));

    let evict = agent.wait_for("evict of the closed server", Duration::from_secs(5), |v| {
        v["type"] == "evict" && v["dst"] == layout.closed.to_string()
    });
    assert_eq!(
        evict["role"], "proxy",
        "discovered servers are pool members: {evict}"
    );
    assert_eq!(evict["reason"], "refused", "{evict}");
    assert_eq!(
        evict["trigger"]["comm"], "haproxy",
        "HAProxy's own connect was seen: {evict}"
    );
    // A deadline, not a latency goal (a slow CPU must not fail it; see BENCHMARKS.md).
    haproxy.wait_for_maint("closed", true, Duration::from_secs(30), &agent);
    assert_eq!(
        haproxy.admin_state("blackholed"),
        0,
        "no traffic went to the blackholed server"
    );

    agent.wait_for(
        "reinstate of the closed server",
        Duration::from_secs(5),
        |v| v["type"] == "reinstate" && v["dst"] == layout.closed.to_string(),
    );
    haproxy.wait_for_maint("closed", false, Duration::from_secs(30), &agent);

    let frontend = format!("127.0.0.1:{}", layout.ports[0]);
    let (ok, lines, stderr) = stop(agent);
    assert!(ok, "agent exit:\n{stderr}");
    let to_frontend = lines
        .iter()
        .find(|l| l["type"] == "connect" && l["dst"] == frontend && l["netns"] == ns.inode)
        .expect("the client's connect to HAProxy's frontend");
    assert_eq!(
        to_frontend["role"], "target",
        "HAProxy's frontend is no pool member: {to_frontend}"
    );
    assert!(
        decisions(&lines, "evict", &layout.up).is_empty(),
        "the listening server was evicted"
    );
    assert_eq!(decisions(&lines, "evict", &layout.closed).len(), 1);
    assert_eq!(
        exit_counter(&stderr, "applied"),
        2,
        "maint then ready:\n{stderr}"
    );
    assert_eq!(exit_counter(&stderr, "failed"), 0, "{stderr}");
}

#[test]
fn a_blackholed_server_goes_to_maint_while_haproxy_still_waits_for_its_syn() {
    require_root();
    let ns = Netns::new("hapbh");
    // Default-like SYN retries: retransmits at ~1 s and ~3 s; HAProxy gives up at 5 s.
    ns.sysctl("net.ipv4.tcp_syn_retries", "6");
    let (_listener, layout) = layout(&ns);
    let dir = scratch_dir("haproxy-bh");
    let haproxy = Haproxy::start(&ns, &dir, &layout);
    let config = connmon_config(&dir, &haproxy.socket, "30s");
    let mut agent = Agent::start(&["--config", &config]);
    wait_for_log(&agent, "pool updated from haproxy", Duration::from_secs(10));

    let port = layout.ports[2];
    let client = {
        let path = ns.path();
        thread::spawn(move || {
            let file = File::open(&path).expect("open netns");
            nix::sched::setns(file, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
            let mut stream =
                TcpStream::connect(("127.0.0.1", port)).expect("haproxy's frontend accepts");
            stream
                .set_read_timeout(Some(Duration::from_secs(8)))
                .expect("timeout");
            let _ = stream.read(&mut [0u8; 16]);
        })
    };
    let sent = Instant::now();
    let evict = agent.wait_for(
        "evict of the blackholed server",
        Duration::from_secs(8),
        |v| v["type"] == "evict" && v["dst"] == layout.blackholed.to_string(),
    );
    assert_eq!(evict["reason"], "syn_retransmits", "{evict}");
    assert_eq!(evict["trigger"]["comm"], "haproxy", "{evict}");
    haproxy.wait_for_maint("blackholed", true, Duration::from_secs(2), &agent);
    let in_maint_after = sent.elapsed();
    assert!(
        in_maint_after < Duration::from_secs(5),
        "MAINT {in_maint_after:?} after the client connected: before HAProxy's own 5 s connect timeout"
    );
    assert_eq!(haproxy.admin_state("closed"), 0);
    client.join().expect("client thread");
    let (ok, lines, stderr) = stop(agent);
    assert!(ok, "agent exit:\n{stderr}");
    assert!(
        decisions(&lines, "evict", &layout.up).is_empty(),
        "the listening server was evicted"
    );
    assert_eq!(exit_counter(&stderr, "applied"), 1, "{stderr}");
}

#[test]
fn an_agent_started_before_haproxy_keeps_working_and_applies_the_eviction_once_haproxy_is_up() {
    require_root();
    let ns = Netns::new("haplate");
    let (_listener, layout) = layout(&ns);
    let dir = scratch_dir("haproxy-late");
    let socket = dir.join("admin.sock");
    let config = connmon_config(&dir, &socket, "60s");
    let mut agent = Agent::start(&["--config", &config]);
    wait_for_log(
        &agent,
        "cannot discover haproxy servers",
        Duration::from_secs(5),
    );

    // A node dies while HAProxy is away: connmon evicts it; the adapter cannot reach
    // HAProxy and retries.
    let closed = layout.closed;
    ns.run("scraper", move || {
        TcpStream::connect(closed).expect_err("closed port refuses")
    });
    agent.wait_for("evict of the closed server", Duration::from_secs(5), |v| {
        v["type"] == "evict" && v["dst"] == closed.to_string()
    });
    wait_for_log(
        &agent,
        "haproxy action failed, will retry",
        Duration::from_secs(5),
    );

    // The pipeline never waits for HAProxy: new connects still come out at once.
    let up = layout.up;
    for round in 0..3 {
        let started = Instant::now();
        let (src, _) = ns.run("scraper", move || {
            TcpStream::connect(up)
                .expect("listening server")
                .local_addr()
                .expect("addr")
        });
        agent.wait_for(
            "a connect while haproxy is away",
            Duration::from_secs(2),
            |v| {
                v["type"] == "connect"
                    && v["src"] == src.to_string()
                    && v["outcome"] == "established"
            },
        );
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "round {round}: the agent stalled"
        );
        thread::sleep(Duration::from_millis(500));
    }

    // HAProxy comes up within the retry budget: the queued eviction is applied.
    let haproxy = Haproxy::start(&ns, &dir, &layout);
    haproxy.wait_for_maint("closed", true, Duration::from_secs(15), &agent);
    let (ok, _lines, stderr) = stop(agent);
    assert!(ok, "agent exit:\n{stderr}");
    assert_eq!(exit_counter(&stderr, "applied"), 1, "{stderr}");
    assert!(exit_counter(&stderr, "retried") >= 1, "{stderr}");
    assert_eq!(exit_counter(&stderr, "failed"), 0, "{stderr}");
}

#[test]
fn after_missing_bus_messages_haproxy_is_resynced_with_the_policy() {
    require_root();
    let ns = Netns::new("haplag");
    let (_listener, layout) = layout(&ns);
    let dir = scratch_dir("haproxy-lag");
    let haproxy = Haproxy::start(&ns, &dir, &layout);
    // A one-message bus: the adapter misses most of a burst, possibly the evict itself.
    let config = connmon_config_with(&dir, &haproxy.socket, "60s", "bus_capacity = 1\n");
    let mut agent = Agent::start(&["--config", &config]);
    wait_for_log(&agent, "pool updated from haproxy", Duration::from_secs(10));

    let ((flood, flood_addr), _) = ns.run("setup", || {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = l.local_addr().expect("addr");
        (l, addr)
    });
    let acceptor = thread::spawn(move || {
        for _ in 0..400 {
            if flood.accept().is_err() {
                break;
            }
        }
    });
    let path = ns.path();
    let burst = thread::spawn(move || {
        let file = File::open(&path).expect("open netns");
        nix::sched::setns(file, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
        for _ in 0..400 {
            drop(TcpStream::connect(flood_addr).expect("flood listener accepts"));
        }
    });
    through_haproxy(&ns, layout.ports[1], Duration::from_secs(1));
    burst.join().expect("burst thread");
    acceptor.join().expect("acceptor thread");

    agent.wait_for("evict of the closed server", Duration::from_secs(5), |v| {
        v["type"] == "evict" && v["dst"] == layout.closed.to_string()
    });
    haproxy.wait_for_maint("closed", true, Duration::from_secs(5), &agent);
    // Resyncs after lags run at most once a second.
    wait_for_log(&agent, "reason=\"lagged\"", Duration::from_secs(5));
    let (ok, _lines, stderr) = stop(agent);
    assert!(ok, "agent exit:\n{stderr}");
    assert!(
        exit_counter(&stderr, "lagged") > 0,
        "the burst overran a one-message bus:\n{stderr}"
    );
    assert!(
        exit_counter(&stderr, "resyncs") >= 2,
        "start plus at least one after a lag:\n{stderr}"
    );
    assert_eq!(exit_counter(&stderr, "failed"), 0, "{stderr}");
}

#[test]
fn a_restarted_haproxy_gets_the_current_ejection_again() {
    require_root();
    let ns = Netns::new("haprst");
    let (_listener, layout) = layout(&ns);
    let dir = scratch_dir("haproxy-restart");
    let haproxy = Haproxy::start(&ns, &dir, &layout);
    let config = connmon_config(&dir, &haproxy.socket, "60s");
    let agent = Agent::start(&["--config", &config]);
    wait_for_log(&agent, "pool updated from haproxy", Duration::from_secs(10));
    through_haproxy(&ns, layout.ports[1], Duration::from_secs(1));
    haproxy.wait_for_maint("closed", true, Duration::from_secs(5), &agent);

    // A restart loses HAProxy's runtime state: the closed server comes back READY...
    drop(haproxy);
    let haproxy = Haproxy::start(&ns, &dir, &layout);
    // ...and the next discovery (refresh = 1s) puts it in MAINT again.
    haproxy.wait_for_maint("closed", true, Duration::from_secs(5), &agent);
    assert!(
        strip_ansi(&agent.stderr()).contains("setting it again"),
        "{}",
        agent.stderr()
    );
    let (ok, lines, stderr) = stop(agent);
    assert!(ok, "agent exit:\n{stderr}");
    assert_eq!(
        decisions(&lines, "evict", &layout.closed).len(),
        1,
        "one eviction, applied twice"
    );
    assert_eq!(exit_counter(&stderr, "applied"), 2, "{stderr}");
}

/// SIGTERM, wait for the agent's last log line, then collect everything.
fn stop(agent: Agent) -> (bool, Vec<Value>, String) {
    agent.signal(libc::SIGTERM);
    wait_for_log(&agent, "detached; exiting", Duration::from_secs(10));
    let stderr = agent.stderr();
    let (ok, lines) = agent.stop();
    (ok, lines, stderr)
}
