//! Root integration tests for the fleet (issue #15): several agents on this host act as
//! separate hosts of one scraping fleet, sharing verdicts through a real `nats-server
//! -js` on loopback (its own port and store directory, killed by a guard).
//!
//! Each "host" is an agent with its own socket, state file and `host_id`, taking
//! evidence only from its own network namespace (`[policy.evidence] netns`). The pool
//! member is `10.200.0.1:P`: every test namespace has that address on its veth, so the
//! same member refuses in each of them and each host can only learn it from its own
//! namespace's connects — or from the fleet.
//!
//! - share: A's refused connect → B's and C's stdout (the socket's feed) carry the
//!   evict with `"reason":"fleet"`, `"origin":"A"`; A's reinstate propagates.
//! - quorum 2: one host's evict changes nothing elsewhere; a second host's does.
//! - a host in local outage does not evict the fleet (its verdict is flagged and
//!   ignored), while a healthy host still does.
//! - NATS killed and restarted: local verdicts go on, the fleet state resyncs (a
//!   reinstate missed while NATS was away is caught up), and a late joiner starts with
//!   the current ejections.
//! - a bucket of 10 000 ejections (another host's, written straight into the KV stream)
//!   is read completely by `connmon fleet` and by a late joiner's resync, each one
//!   ordered read.

use std::{
    net::{SocketAddr, TcpStream},
    path::PathBuf,
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use connmon_integration::{
    Agent, LOCAL_V4, Netns, closed_port, connmon_bin, is_about, require_root, scratch_dir, sh,
    strip_ansi, timing::wait_until, write_config,
};
use serde_json::Value;

/// Generous: polls end as soon as the line arrives (loopback propagation takes ms).
const WAIT: Duration = Duration::from_secs(20);
/// How long "nothing happens" is watched for.
const QUIET: Duration = Duration::from_secs(3);

/// A `nats-server -js` on loopback with its own store directory; killed on drop.
struct Nats {
    child: Option<Child>,
    port: u16,
    dir: PathBuf,
}

impl Nats {
    fn start() -> Self {
        let mut nats = Nats {
            child: None,
            port: closed_port("127.0.0.1"),
            dir: scratch_dir("nats"),
        };
        nats.restart();
        nats
    }

    fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// (Re)starts the server on the same port and store.
    fn restart(&mut self) {
        self.start_server(true);
    }

    /// Starts the server with or without JetStream (without: core publishes work, KV
    /// puts fail).
    fn start_server(&mut self, jetstream: bool) {
        assert!(self.child.is_none(), "nats-server already running");
        let log = std::fs::File::create(self.dir.join("nats.log")).expect("nats log");
        let mut cmd = Command::new("nats-server");
        if jetstream {
            cmd.args(["-js", "-sd"]).arg(self.dir.join("store"));
        }
        let child = cmd
            .args(["-a", "127.0.0.1", "-p", &self.port.to_string()])
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("dup log"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| {
                panic!("starting nats-server (`cargo xtask setup` installs it): {e}")
            });
        self.child = Some(child);
        wait_until(
            Duration::from_secs(20),
            Duration::from_millis(50),
            || TcpStream::connect(("127.0.0.1", self.port)).is_ok(),
            || {
                let log = std::fs::read_to_string(self.dir.join("nats.log")).unwrap_or_default();
                format!("nats-server did not listen on {}:\n{log}", self.port)
            },
        );
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Nats {
    fn drop(&mut self) {
        self.kill();
    }
}

/// One host of the fleet: an agent whose evidence is its own namespace's connects.
struct Host {
    name: &'static str,
    ns: Netns,
    agent: Agent,
    socket: PathBuf,
    config: PathBuf,
}

/// Policy for every host: guards open (other tests' traffic must not hold them back),
/// long terms (a reinstate is always a propagated one, never an expiry), the pool.
fn config(
    name: &str,
    ns: &Netns,
    nats: &Nats,
    fleet: &str,
    pool: &[SocketAddr],
    policy: &str,
) -> String {
    let pool: Vec<String> = pool.iter().map(|p| format!("\"{p}\"")).collect();
    format!(
        "[policy]\njitter = 0.0\nmax_ejection_percent = 100\nbase_ejection = \"120s\"\n{policy}\
         pool = [{}]\n\n[policy.evidence]\nnetns = [\"{}\"]\n\n\
         [fleet]\nservers = [\"{}\"]\ncluster = \"t{}\"\nhost_id = \"{name}\"\nheartbeat = \"1s\"\n{fleet}\n",
        pool.join(", "),
        ns.path().display(),
        nats.url(),
        nats.port,
    )
}

impl Host {
    fn start(name: &'static str, nats: &Nats, fleet: &str, pool: &[SocketAddr]) -> Self {
        Self::start_with(
            name,
            nats,
            fleet,
            pool,
            "outage_min_destinations = 100000\n",
        )
    }

    fn start_with(
        name: &'static str,
        nats: &Nats,
        fleet: &str,
        pool: &[SocketAddr],
        policy: &str,
    ) -> Self {
        let ns = Netns::new(&format!("fleet{name}"));
        let dir = scratch_dir(&format!("host-{name}"));
        let path = write_config(&dir, config(name, &ns, nats, fleet, pool, policy));
        let socket = dir.join("connmon.sock");
        let agent = Agent::start(&[
            "--config",
            path.to_str().expect("utf-8"),
            "--socket",
            socket.to_str().expect("utf-8"),
        ]);
        agent.wait_for_stderr("fleet: resynced", WAIT);
        Host {
            name,
            ns,
            agent,
            socket,
            config: path,
        }
    }

    /// A refused connect to `dst` from this host's namespace (its evidence).
    fn refuse(&self, dst: SocketAddr) {
        self.ns.run("scraper", move || {
            TcpStream::connect_timeout(&dst, Duration::from_secs(2)).expect_err("refused");
        });
    }

    /// The `fleet` counters of the agent's final `stats` line (the agent is stopped).
    fn final_fleet_stats(self) -> Value {
        let name = self.name;
        let (_, lines) = self.agent.stop();
        let stats = lines
            .iter()
            .rev()
            .find(|v| v["type"] == "stats" && v["final"] == true)
            .unwrap_or_else(|| panic!("no final stats line from {name}"));
        stats["fleet"].clone()
    }

    fn cli(&self, args: &[&str]) -> String {
        let bin = connmon_bin();
        let mut full = vec![bin.to_str().expect("utf-8")];
        full.extend_from_slice(args);
        full.extend_from_slice(&["--socket", self.socket.to_str().expect("utf-8")]);
        sh(&full)
    }

    fn wait_evict(&mut self, dst: SocketAddr, what: &str) -> Value {
        self.wait_about("evict", dst, what)
    }

    fn wait_reinstate(&mut self, dst: SocketAddr, what: &str) -> Value {
        self.wait_about("reinstate", dst, what)
    }

    fn wait_about(&mut self, kind: &str, dst: SocketAddr, what: &str) -> Value {
        let what = format!("{what} on {}", self.name);
        self.agent.wait_for(&what, WAIT, |v| is_about(v, kind, dst))
    }

    /// Whether an evict of `dst` was printed (after watching for [`QUIET`]).
    fn evicted_after_quiet(&mut self, dst: SocketAddr) -> bool {
        let seen = self.agent.collect_for(QUIET);
        seen.iter().any(|v| is_about(v, "evict", dst))
    }
}

/// `connmon fleet --json`: one object per host.
fn fleet_rows(config: &std::path::Path) -> Vec<Value> {
    let bin = connmon_bin();
    let listed = sh(&[
        bin.to_str().expect("utf-8"),
        "fleet",
        "--json",
        "--config",
        config.to_str().expect("utf-8"),
    ]);
    listed
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect()
}

/// `GET /metrics` of an agent's Prometheus endpoint.
fn scrape(addr: SocketAddr) -> String {
    use std::io::{Read as _, Write as _};
    let mut s = TcpStream::connect(addr).expect("connect to /metrics");
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    write!(s, "GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n").expect("request");
    let mut text = String::new();
    s.read_to_string(&mut text).expect("response");
    text
}

fn member() -> SocketAddr {
    // The port is free on the host; in every test namespace nothing listens on it either.
    format!("{LOCAL_V4}:{}", closed_port("127.0.0.1"))
        .parse()
        .expect("addr")
}

#[test]
fn share_applies_other_hosts_verdicts_with_their_origin_and_reinstates() {
    require_root();
    let nats = Nats::start();
    let dst = member();
    let mut a = Host::start("A", &nats, "mode = \"share\"\n", &[dst]);
    let mut b = Host::start("B", &nats, "mode = \"share\"\n", &[dst]);
    let mut c = Host::start("C", &nats, "mode = \"share\"\n", &[dst]);

    a.refuse(dst);
    let own = a.wait_evict(dst, "A's own evict");
    assert_eq!(own["reason"], "refused", "{own}");
    assert!(
        own.get("origin").is_none(),
        "a local decision has no origin: {own}"
    );
    for host in [&mut b, &mut c] {
        let e = host.wait_evict(dst, "the fleet's evict");
        assert_eq!(e["reason"], "fleet", "{e}");
        assert_eq!(e["origin"], "A", "{e}");
        let term = e["ejection"]["duration_ms"].as_u64().expect("duration_ms");
        assert!(
            (100_000..=120_000).contains(&term),
            "A's 120 s term, less the propagation: {e}"
        );
        assert!(
            e.get("trigger").is_none(),
            "no kernel event of its own: {e}"
        );
    }
    // `connmon status` shows where the ejection came from.
    let status = b.cli(&["status"]);
    let row = status
        .lines()
        .find(|l| l.starts_with(&dst.to_string()))
        .unwrap_or_else(|| panic!("{status}"));
    assert!(
        row.contains("ejected") && row.trim_end().ends_with('A'),
        "{status}"
    );

    a.cli(&["reinstate", &dst.to_string()]);
    a.wait_reinstate(dst, "A's manual reinstate");
    for host in [&mut b, &mut c] {
        let r = host.wait_reinstate(dst, "the fleet's reinstate");
        assert_eq!(r["origin"], "A", "{r}");
    }
    // B's reinstate of a fleet ejection is not published again (no echo): A, which
    // reinstated by hand, sees no second evict or reinstate of it.
    let lines = a.agent.collect_for(Duration::from_secs(2));
    let about: Vec<&Value> = lines
        .iter()
        .filter(|v| v["dst"] == dst.to_string() && v["type"] != "connect")
        .collect();
    assert_eq!(
        about.len(),
        2,
        "A saw only its own evict and reinstate: {about:?}"
    );
}

#[test]
fn quorum_two_needs_a_second_host() {
    require_root();
    let nats = Nats::start();
    let dst = member();
    let quorum = "mode = \"quorum\"\nquorum = 2\nwindow = \"60s\"\n";
    let metrics: SocketAddr = format!("127.0.0.1:{}", closed_port("127.0.0.1"))
        .parse()
        .expect("addr");
    let mut a = Host::start("A", &nats, quorum, &[dst]);
    let mut b = Host::start("B", &nats, quorum, &[dst]);
    // C serves Prometheus metrics (`[agent]` follows the `[fleet]` lines).
    let mut c = Host::start(
        "C",
        &nats,
        &format!("{quorum}\n[agent]\nmetrics = \"{metrics}\"\n"),
        &[dst],
    );

    a.refuse(dst);
    a.wait_evict(dst, "A's own evict");
    assert!(!c.evicted_after_quiet(dst), "one host is no quorum");
    b.refuse(dst);
    b.wait_evict(dst, "B's own evict");
    let e = c.wait_evict(dst, "the quorum's evict");
    assert_eq!(e["reason"], "fleet", "{e}");
    assert_eq!(e["origin"], "A,B", "{e}");

    // The counters: on the Prometheus endpoint and in the final stats line. The
    // endpoint is a bus consumer of its own, so it may count the evict a moment after
    // stdout printed it (a loaded host once scraped in between): polled.
    let want = [
        "connmon_fleet_verdicts_ignored_total{reason=\"quorum_pending\"} 1",
        "connmon_fleet_verdicts_applied_total 1",
        "connmon_fleet_verdicts_published_total 0",
        // The ejection counters say the verdict was the fleet's (two label values,
        // not one per host).
        "connmon_evictions_total{reason=\"fleet\",origin=\"fleet\"} 1",
        "connmon_reinstatements_total{origin=\"local\"} 0",
    ];
    let deadline = Instant::now() + WAIT;
    loop {
        let text = scrape(metrics);
        let missing: Vec<&str> = want.iter().copied().filter(|l| !text.contains(l)).collect();
        if missing.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "missing {missing:?} after {WAIT:?} in:\n{text}"
        );
        thread::sleep(Duration::from_millis(200));
    }
    let fleet = c.final_fleet_stats();
    assert_eq!(fleet["applied"], 1, "{fleet}");
    assert_eq!(fleet["ignored"]["quorum_pending"], 1, "{fleet}");
    assert_eq!(fleet["dropped"]["queue_full"], 0, "{fleet}");
    let fleet = a.final_fleet_stats();
    assert_eq!(fleet["published"], 1, "A's evict: {fleet}");
    assert_eq!(
        fleet["ignored"]["echo"], 1,
        "A's own evict came back: {fleet}"
    );
}

#[test]
fn a_host_in_local_outage_does_not_evict_the_fleet_and_its_earlier_verdicts_are_retracted() {
    require_root();
    let nats = Nats::start();
    let early = member();
    let sick = member();
    let healthy = member();
    let others: Vec<SocketAddr> = (0..3).map(|_| member()).collect();
    let mut pool = vec![early, sick, healthy];
    pool.extend(&others);
    // A: every refusal feeds the outage detector and none ejects by itself.
    let outage = "consecutive_refused = 0\nratio_min_attempts = 1000\noutage_min_destinations = 3\n\
                  outage_failure_ratio = 0.5\noutage_window = \"60s\"\n";
    let mut a = Host::start_with("A", &nats, "", &pool, outage);
    let mut b = Host::start("B", &nats, "", &pool);
    let mut c = Host::start("C", &nats, "", &pool);

    // Before its outage, A's verdict is the fleet's.
    a.cli(&["evict", &early.to_string(), "--for", "120s"]);
    a.wait_evict(early, "A's evict before its outage");
    let e = b.wait_evict(early, "A's verdict before its outage");
    assert_eq!(e["origin"], "A", "{e}");

    for dst in &others {
        a.refuse(*dst);
    }
    a.agent.wait_for("A's local outage", WAIT, |v| {
        v["type"] == "diagnosis" && v["kind"] == "local_outage"
    });
    // A's heartbeat says so: its earlier verdict stops counting fleet-wide (A keeps
    // its own ejection).
    let r = b.wait_reinstate(early, "the retraction of A's verdict");
    assert_eq!(r["origin"], "A", "{r}");
    // An operator's evict during the outage is applied on A, flagged, and not applied
    // elsewhere.
    a.cli(&["evict", &sick.to_string(), "--for", "120s"]);
    let flagged = a.wait_evict(sick, "A's evict during its outage");
    assert_eq!(flagged["local_outage"], true, "{flagged}");
    assert!(
        !b.evicted_after_quiet(sick),
        "B applied a verdict of a host in local outage"
    );
    // The fleet itself is live: a healthy host's verdict is applied.
    c.refuse(healthy);
    c.wait_evict(healthy, "C's own evict");
    let e = b.wait_evict(healthy, "C's verdict");
    assert_eq!(e["origin"], "C", "{e}");
    assert!(
        !b.agent
            .collect_for(Duration::ZERO)
            .iter()
            .any(|v| v["type"] == "evict" && v["dst"] == sick.to_string()),
        "still not applied"
    );
    let fleet = b.final_fleet_stats();
    assert_eq!(
        fleet["ignored"]["local_outage"], 1,
        "A's flagged evict: {fleet}"
    );
    assert_eq!(fleet["lifted"], 1, "the retraction: {fleet}");
    assert_eq!(fleet["applied"], 2, "A's early verdict and C's: {fleet}");
}

#[test]
fn nats_restart_resyncs_and_a_late_joiner_starts_with_the_ejections() {
    require_root();
    let mut nats = Nats::start();
    let first = member();
    let second = member();
    let third = member();
    let pool = [first, second, third];
    let mut a = Host::start("A", &nats, "", &pool);
    let mut b = Host::start("B", &nats, "", &pool);

    a.refuse(first);
    a.wait_evict(first, "A's evict");
    b.wait_evict(first, "the fleet's evict");

    nats.kill();
    // Local verdicts go on without NATS.
    a.refuse(second);
    a.wait_evict(second, "A's evict while NATS is down");
    a.cli(&["reinstate", &first.to_string()]);
    a.wait_reinstate(first, "A's reinstate while NATS is down");
    assert!(
        !b.evicted_after_quiet(second),
        "nothing reaches B without NATS"
    );

    // NATS back without JetStream: verdicts flow on the subject, KV puts fail (counted,
    // kept for a retry).
    nats.start_server(false);
    let deadline = Instant::now() + WAIT;
    for host in [&a, &b] {
        while host.agent.stderr().matches("fleet: connected").count() < 2 {
            assert!(
                Instant::now() < deadline,
                "{} did not reconnect: {}",
                host.name,
                host.agent.stderr()
            );
            thread::sleep(Duration::from_millis(100));
        }
    }
    thread::sleep(Duration::from_secs(1));
    a.refuse(third);
    a.wait_evict(third, "A's evict while JetStream is off");
    let e = b.wait_evict(third, "the live evict while JetStream is off");
    assert_eq!(e["origin"], "A", "{e}");
    thread::sleep(Duration::from_secs(2));
    nats.kill();

    nats.restart();
    // A re-puts its ejections and deletes the reinstated one; B resyncs from the bucket.
    let e = b.wait_evict(second, "the evict made while NATS was down");
    assert_eq!(e["origin"], "A", "{e}");
    let r = b.wait_reinstate(first, "the reinstate made while NATS was down");
    assert_eq!(r["origin"], "A", "{r}");

    // `connmon fleet` lists both hosts with fresh heartbeats again (not the ones from
    // before the restart) and A's two ejections in force.
    let deadline = Instant::now() + WAIT;
    let rows = loop {
        let rows = fleet_rows(&a.config);
        let fresh = |name: &str| {
            rows.iter().any(|h| {
                h["host"] == name
                    && h["age_s"].as_f64().is_some_and(|age| age < 3.0)
                    && h["heartbeat"]["ts_ms"].is_u64()
            })
        };
        let a_ejections = rows
            .iter()
            .find(|h| h["host"] == "A")
            .map(|h| h["ejections"].clone());
        if fresh("A") && fresh("B") && a_ejections == Some(Value::from(2)) {
            break rows;
        }
        assert!(
            Instant::now() < deadline,
            "no fresh heartbeats of A and B, or not A's 2 ejections, in `connmon fleet` after the restart: {rows:?}"
        );
        thread::sleep(Duration::from_millis(500));
    };
    assert!(rows.iter().all(|h| h["host"] != "L"), "{rows:?}");

    // A late joiner starts with the current ejections.
    let mut late = Host::start("L", &nats, "", &pool);
    let e = late.wait_evict(second, "the late joiner's evict");
    assert_eq!(e["origin"], "A", "{e}");
    late.wait_evict(third, "the late joiner's evict of the JetStream-less one");
    assert!(
        !late
            .agent
            .collect_for(Duration::from_secs(1))
            .iter()
            .any(|v| v["type"] == "evict" && v["dst"] == first.to_string()),
        "a reinstated destination is not in the bucket"
    );

    let fleet = a.final_fleet_stats();
    assert!(
        fleet["reconnects"].as_u64() >= Some(2),
        "two restarts: {fleet}"
    );
    assert!(fleet["resyncs"].as_u64() >= Some(2), "{fleet}");
    assert!(
        fleet["dropped"]["unreachable"].as_u64() >= Some(2),
        "the evict and reinstate while NATS was down: {fleet}"
    );
    assert!(
        fleet["kv_put_failures"].as_u64() >= Some(1) && fleet["kv_put_retries"].as_u64() >= Some(1),
        "the KV put of the JetStream-less evict failed and was retried: {fleet}"
    );
}

/// Ejections in the big bucket: a fleet of hundreds of hosts sharing one pool.
const BIG_BUCKET: u16 = 10_000;

/// Writes `count` evicts of host `host` into the cluster's KV bucket with plain NATS
/// publishes on the bucket's subjects (what a KV put is), then waits for the server to
/// have read them all (PING → PONG).
fn fill_bucket(nats: &Nats, host: &str, members: &[SocketAddr]) {
    use std::io::{BufRead as _, BufReader, Write as _};
    let stream = TcpStream::connect(("127.0.0.1", nats.port)).expect("connect to nats");
    stream.set_read_timeout(Some(WAIT)).expect("read timeout");
    let mut reader = BufReader::new(stream.try_clone().expect("dup"));
    let mut line = String::new();
    reader.read_line(&mut line).expect("INFO");
    assert!(line.starts_with("INFO"), "not a NATS server: {line}");
    let mut out = std::io::BufWriter::new(stream);
    write!(out, "CONNECT {{\"verbose\":false,\"pedantic\":false}}\r\n").expect("CONNECT");
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_millis() as u64;
    let bucket = format!("connmon_t{}", nats.port);
    for dst in members {
        let payload = serde_json::json!({
            "type": "evict", "v": 1, "host": host, "dst": dst.to_string(),
            "reason": "refused", "failure_mode": "reject",
            "duration_ms": 120_000, "until_ms": now_ms + 120_000, "count": 1,
            "evidence": {"attempts": 3, "refused": 3, "timeout": 0, "abandoned": 0,
                         "reset": 0, "unreachable": 0, "syn_retransmits": 0, "streak": 3},
            "trusted": true, "local_outage": false, "ts_ms": now_ms,
        })
        .to_string();
        let key = format!("e.{}_{}.{host}", dst.ip(), dst.port());
        write!(
            out,
            "PUB $KV.{bucket}.{key} {}\r\n{payload}\r\n",
            payload.len()
        )
        .expect("PUB");
    }
    write!(out, "PING\r\n").expect("PING");
    out.flush().expect("flush");
    loop {
        line.clear();
        let n = reader.read_line(&mut line).expect("PONG from nats");
        assert!(n > 0, "nats closed the connection");
        assert!(!line.starts_with("-ERR"), "nats refused a publish: {line}");
        if line.starts_with("PONG") {
            break;
        }
    }
}

#[test]
fn a_bucket_of_ten_thousand_ejections_is_read_completely_in_one_ordered_read() {
    require_root();
    let nats = Nats::start();
    let pool: Vec<SocketAddr> = (0..BIG_BUCKET)
        .map(|i| SocketAddr::from(([10, 250, 0, 1], 20_000 + i)))
        .collect();
    // A creates the bucket (and stays in the fleet: its heartbeat is in it too).
    let a = Host::start("A", &nats, "", &pool);
    fill_bucket(&nats, "X", &pool);

    // `connmon fleet`: one ordered read lists X with every ejection (JetStream stores
    // the publishes asynchronously: poll).
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let rows = fleet_rows(&a.config);
        let x = rows.iter().find(|h| h["host"] == "X");
        // A's heartbeat (put once its bucket is open) is listed with them.
        let a_listed = rows
            .iter()
            .any(|h| h["host"] == "A" && h["heartbeat"].is_object());
        if a_listed && x.is_some_and(|x| x["ejections"] == u64::from(BIG_BUCKET)) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "`connmon fleet` did not list X's {BIG_BUCKET} ejections and A's heartbeat within 60 s: {x:?}, A listed: {a_listed}"
        );
        thread::sleep(Duration::from_millis(500));
    }

    // A late joiner reads all of them at its resync and applies every one.
    let mut late = Host::start("L", &nats, "", &pool);
    let stderr = strip_ansi(&late.agent.stderr());
    let resynced = stderr
        .lines()
        .find(|l| l.contains("fleet: resynced"))
        .expect("the resync line");
    assert!(
        resynced.contains(&format!("entries={BIG_BUCKET} ")),
        "the resync read every ejection: {resynced}"
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let applied = late
            .agent
            .collect_for(Duration::from_millis(500))
            .iter()
            .filter(|v| v["type"] == "evict" && v["origin"] == "X")
            .count();
        if applied == usize::from(BIG_BUCKET) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the late joiner applied {applied} of {BIG_BUCKET} ejections within 60 s"
        );
    }
    let fleet = late.final_fleet_stats();
    assert_eq!(fleet["applied"], u64::from(BIG_BUCKET), "{fleet}");
    assert_eq!(fleet["guarded"], 0, "{fleet}");
}
