//! Root integration tests for the HAProxy adapter, against a real HAProxy (the Debian
//! package) running inside the test's network namespace, so its outgoing connects reach
//! the namespace's loopback and its blackholed neighbour. connmon sees those connects,
//! evicts, and the adapter drives HAProxy's runtime API; the tests check the result
//! through HAProxy's own `show servers state`.

use std::{
    io::Read as _,
    net::{SocketAddr, TcpListener, TcpStream},
    path::{Path, PathBuf},
    sync::mpsc,
    thread,
    time::{Duration, Instant},
};

use connmon_integration::{
    Agent, BLACKHOLE_V4, LOCAL_V4, Netns, closed_port, haproxy::Haproxy, is_about, require_root,
    scratch_dir, strip_ansi, timing::patient, write_file,
};
use serde_json::Value;

/// How long to wait for what HAProxy and the agent do: generous, because the kernel
/// matrix runs these tests on an emulated CPU (waiting ends as soon as it happens).
const WAIT: Duration = Duration::from_secs(30);

/// The three servers of backend `proxies` and the frontend ports that pick each one.
struct Layout {
    up: SocketAddr,
    closed: SocketAddr,
    blackholed: SocketAddr,
    /// Frontend ports whose traffic goes to `up`, `closed`, `blackholed` respectively.
    ports: [u16; 3],
}

impl Layout {
    /// HAProxy's frontend and backend: no health checks, the frontend's port selects the
    /// server (`use-server`); `connect` is HAProxy's connect timeout.
    fn sections(&self, connect: &str) -> String {
        let [p_up, p_closed, p_bh] = self.ports;
        format!(
            "frontend front\n\
             \x20   bind 127.0.0.1:{p_up}\n\
             \x20   bind 127.0.0.1:{p_closed}\n\
             \x20   bind 127.0.0.1:{p_bh}\n\
             \x20   default_backend proxies\n\
             backend proxies\n\
             \x20   timeout connect {connect}\n\
             \x20   use-server up if {{ dst_port {p_up} }}\n\
             \x20   use-server closed if {{ dst_port {p_closed} }}\n\
             \x20   use-server blackholed if {{ dst_port {p_bh} }}\n\
             \x20   server up {up}\n\
             \x20   server closed {closed}\n\
             \x20   server blackholed {bh}\n",
            up = self.up,
            closed = self.closed,
            bh = self.blackholed,
        )
    }

    fn haproxy(&self, ns: &Netns, dir: &Path) -> Haproxy {
        Haproxy::start(ns, dir, &self.sections("5s"))
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

/// What every test here starts from: its namespace with the [`layout`] and a scratch
/// directory.
struct Rig {
    ns: Netns,
    _listener: TcpListener,
    layout: Layout,
    dir: PathBuf,
}

impl Rig {
    fn new(netns_tag: &str, dir_tag: &str) -> Rig {
        require_root();
        let ns = Netns::new(netns_tag);
        let (_listener, layout) = layout(&ns);
        Rig {
            _listener,
            layout,
            dir: scratch_dir(dir_tag),
            ns,
        }
    }

    /// HAProxy (connect timeout 5 s), and an agent (`base_ejection`, extra `[agent]`
    /// lines) whose adapter has read HAProxy's pool.
    fn start(&self, base_ejection: &str, agent_lines: &str) -> (Haproxy, Agent) {
        let haproxy = self.layout.haproxy(&self.ns, &self.dir);
        let agent = self.agent(&haproxy.socket, base_ejection, agent_lines, POOL_READ);
        (haproxy, agent)
    }

    /// An agent whose adapter drives the HAProxy at `socket`, once its stderr says `ready`.
    fn agent(&self, socket: &Path, base_ejection: &str, agent_lines: &str, ready: &str) -> Agent {
        let config = connmon_config_with(&self.dir, socket, base_ejection, agent_lines);
        let agent = Agent::start(&["--config", &config]);
        agent.wait_for_stderr(ready, WAIT);
        agent
    }
}

/// The adapter's log line once it has read HAProxy's servers.
const POOL_READ: &str = "pool updated from haproxy";

/// Waits for the agent's `kind` decision ("evict", "reinstate") about `dst`.
fn wait_decision(agent: &mut Agent, what: &str, kind: &str, dst: SocketAddr) -> Value {
    agent.wait_for(what, WAIT, |v| is_about(v, kind, dst))
}

/// connmon's configuration with extra `[agent]` lines. The agent sees every connect on
/// the host: the guards (ejection percentage, local outage) are opened wide so failures
/// of anything else running at the same time cannot hold back this test's evictions.
fn connmon_config_with(dir: &Path, socket: &Path, base_ejection: &str, agent: &str) -> String {
    let text = format!(
        "[agent]\n{agent}socket = \"{}\"\n\n[policy]\nbase_ejection = \"{base_ejection}\"\njitter = 0.0\n\
         max_ejection_percent = 100\noutage_min_destinations = 100000\n\n\
         [[haproxy]]\nsocket = \"{}\"\nbackends = [\"proxies\"]\nrefresh = \"1s\"\npool_from_haproxy = true\n",
        dir.join("connmon.sock").display(),
        socket.display()
    );
    write_file(&dir.join("connmon.toml"), &text)
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

fn decisions<'a>(lines: &'a [Value], kind: &str, dst: &SocketAddr) -> Vec<&'a Value> {
    lines
        .iter()
        .filter(|l| l["type"] == kind && l["dst"] == dst.to_string())
        .collect()
}

#[test]
fn a_refusing_server_goes_to_maint_and_back_to_ready_and_the_listening_one_is_never_touched() {
    let rig = Rig::new("hapx", "haproxy");
    let (ns, layout) = (&rig.ns, &rig.layout);
    let (haproxy, mut agent) = rig.start("2s", "");

    // Healthy traffic first: the listening server is used and stays as it is.
    for _ in 0..3 {
        through_haproxy(ns, layout.ports[0], Duration::from_millis(100));
    }
    // HAProxy connects to the closed server: refused (and its own retries, refused too).
    through_haproxy(ns, layout.ports[1], Duration::from_secs(2));

    let evict = wait_decision(
        &mut agent,
        "evict of the closed server",
        "evict",
        layout.closed,
    );
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
    haproxy.wait_for_maint("closed", true, WAIT, &agent, &["up"]);
    assert_eq!(
        haproxy.admin_state("blackholed"),
        0,
        "no traffic went to the blackholed server"
    );

    wait_decision(
        &mut agent,
        "reinstate of the closed server",
        "reinstate",
        layout.closed,
    );
    haproxy.wait_for_maint("closed", false, WAIT, &agent, &["up"]);

    let frontend = format!("127.0.0.1:{}", layout.ports[0]);
    let (lines, stderr) = stop(agent);
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
    let rig = Rig::new("hapbh", "haproxy-bh");
    let (ns, layout) = (&rig.ns, &rig.layout);
    // Default-like SYN retries: the kernel keeps retransmitting for about two minutes.
    ns.sysctl("net.ipv4.tcp_syn_retries", "6");
    // HAProxy waits far longer than any deadline below: the server goes to MAINT while
    // HAProxy still holds the client's connection, whatever the CPU's speed.
    let haproxy = Haproxy::start(ns, &rig.dir, &layout.sections("300s"));
    let mut agent = rig.agent(&haproxy.socket, "30s", "", POOL_READ);

    let port = layout.ports[2];
    let (stream_tx, stream_rx) = mpsc::channel();
    let client = ns.spawn(None, move || {
        let mut stream =
            TcpStream::connect(("127.0.0.1", port)).expect("haproxy's frontend accepts");
        stream_tx
            .send(stream.try_clone().expect("clone stream"))
            .expect("main thread waits");
        // Returns when HAProxy gives up on the server (closes the connection) or
        // when the test shuts the stream down.
        let _ = stream.read(&mut [0u8; 16]);
    });
    let stream = stream_rx.recv().expect("the client connected");
    let evict = wait_decision(
        &mut agent,
        "evict of the blackholed server",
        "evict",
        layout.blackholed,
    );
    assert_eq!(evict["reason"], "syn_retransmits", "{evict}");
    assert_eq!(evict["trigger"]["comm"], "haproxy", "{evict}");
    haproxy.wait_for_maint("blackholed", true, WAIT, &agent, &["up"]);
    assert!(
        !client.is_finished(),
        "MAINT only after HAProxy gave up on the server's SYN"
    );
    assert_eq!(haproxy.admin_state("closed"), 0);
    stream
        .shutdown(std::net::Shutdown::Both)
        .expect("shut the client down");
    client.join().expect("client thread");
    let (lines, stderr) = stop(agent);
    assert!(
        decisions(&lines, "evict", &layout.up).is_empty(),
        "the listening server was evicted"
    );
    assert_eq!(exit_counter(&stderr, "applied"), 1, "{stderr}");
}

#[test]
fn an_agent_started_before_haproxy_keeps_working_and_applies_the_eviction_once_haproxy_is_up() {
    let rig = Rig::new("haplate", "haproxy-late");
    let (ns, layout, dir) = (&rig.ns, &rig.layout, &rig.dir);
    let mut agent = rig.agent(
        &dir.join("admin.sock"),
        "60s",
        "",
        "cannot discover haproxy servers",
    );

    // A node dies while HAProxy is away: connmon evicts it; the adapter cannot reach
    // HAProxy and retries.
    let closed = layout.closed;
    ns.run("scraper", move || {
        TcpStream::connect(closed).expect_err("closed port refuses")
    });
    wait_decision(&mut agent, "evict of the closed server", "evict", closed);
    agent.wait_for_stderr("haproxy action failed, will retry", WAIT);

    // The pipeline never waits for HAProxy: new connects still come out while the
    // adapter retries. Were the pipeline to wait for the adapter, it would stall until
    // HAProxy answers (never, in this part) or the 60 s retry budget ends; the bound is
    // far below that and far above what a loaded host takes (milliseconds natively).
    let up = layout.up;
    let stall = patient(Duration::from_secs(10));
    for round in 0..3 {
        let started = Instant::now();
        let (src, _) = ns.run("scraper", move || {
            TcpStream::connect(up)
                .expect("listening server")
                .local_addr()
                .expect("addr")
        });
        agent.wait_for("a connect while haproxy is away", stall, |v| {
            v["type"] == "connect" && v["src"] == src.to_string() && v["outcome"] == "established"
        });
        assert!(
            started.elapsed() < stall,
            "round {round}: the agent stalled"
        );
        thread::sleep(Duration::from_millis(500));
    }

    // HAProxy comes up within the retry budget: the queued eviction is applied.
    let haproxy = layout.haproxy(ns, dir);
    haproxy.wait_for_maint("closed", true, WAIT, &agent, &["up"]);
    let (_lines, stderr) = stop(agent);
    assert_eq!(exit_counter(&stderr, "applied"), 1, "{stderr}");
    assert!(exit_counter(&stderr, "retried") >= 1, "{stderr}");
    assert_eq!(exit_counter(&stderr, "failed"), 0, "{stderr}");
}

#[test]
fn after_missing_bus_messages_haproxy_is_resynced_with_the_policy() {
    let rig = Rig::new("haplag", "haproxy-lag");
    let (ns, layout) = (&rig.ns, &rig.layout);
    // A one-message bus: the adapter misses most of a burst, possibly the evict itself.
    let (haproxy, mut agent) = rig.start("60s", "bus_capacity = 1\n");

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
    let burst = ns.spawn(None, move || {
        for _ in 0..400 {
            drop(TcpStream::connect(flood_addr).expect("flood listener accepts"));
        }
    });
    through_haproxy(ns, layout.ports[1], Duration::from_secs(1));
    burst.join().expect("burst thread");
    acceptor.join().expect("acceptor thread");

    wait_decision(
        &mut agent,
        "evict of the closed server",
        "evict",
        layout.closed,
    );
    haproxy.wait_for_maint("closed", true, WAIT, &agent, &["up"]);
    // Resyncs after lags run at most once a second.
    agent.wait_for_stderr("reason=\"lagged\"", WAIT);
    let (_lines, stderr) = stop(agent);
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
    let rig = Rig::new("haprst", "haproxy-restart");
    let (ns, layout) = (&rig.ns, &rig.layout);
    let (haproxy, agent) = rig.start("60s", "");
    through_haproxy(ns, layout.ports[1], Duration::from_secs(1));
    haproxy.wait_for_maint("closed", true, WAIT, &agent, &["up"]);

    // A restart loses HAProxy's runtime state: the closed server comes back READY...
    drop(haproxy);
    let haproxy = layout.haproxy(ns, &rig.dir);
    // ...and the next discovery (refresh = 1s) puts it in MAINT again.
    haproxy.wait_for_maint("closed", true, WAIT, &agent, &["up"]);
    assert!(
        strip_ansi(&agent.stderr()).contains("setting it again"),
        "{}",
        agent.stderr()
    );
    let (lines, stderr) = stop(agent);
    assert_eq!(
        decisions(&lines, "evict", &layout.closed).len(),
        1,
        "one eviction, applied twice"
    );
    assert_eq!(exit_counter(&stderr, "applied"), 2, "{stderr}");
}

/// SIGTERM, wait for the agent's last log line, check that it exited well, then collect
/// everything.
fn stop(agent: Agent) -> (Vec<Value>, String) {
    agent.signal(libc::SIGTERM);
    agent.wait_for_stderr("detached; exiting", Duration::from_secs(10));
    let stderr = agent.stderr();
    let (ok, lines) = agent.stop();
    assert!(ok, "agent exit:\n{stderr}");
    (lines, stderr)
}
