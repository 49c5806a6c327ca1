//! Hostile local clients (issue #18): while the socket is abused — connections opened
//! and dropped in a loop, half lines left hanging, 64 KiB lines, subscribers that never
//! read or read slowly, from root and from an allowed uid — the pipeline keeps
//! deciding: refused connects from a test namespace are evicted with a `detect_us`
//! within a generous bound, a well-behaved subscriber still gets every one of those
//! evictions, and the agent's memory and file descriptors stay bounded and come back
//! when the clients leave. Meanwhile a pool controller of a uid of its own sends bursts
//! of pipelined commands (snapshots of a 12 000-destination table among them) and
//! half-closes: `agent.max_clients_per_uid` keeps a slot for it whatever the others do
//! (it is never refused), and it gets every reply, in order.

use std::{
    collections::HashMap,
    io::{BufRead as _, BufReader, Read as _, Write as _},
    net::{SocketAddr, TcpStream},
    os::unix::net::UnixStream,
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use connmon_integration::{
    Agent, LOCAL_V4, Netns,
    client::{Client, open_fds, rss_kib},
    closed_port, require_root, scratch_dir,
    timing::{patience, patient, wait_until},
    write_config,
};
use serde_json::{Value, json};

const NOBODY: u32 = 65534;
/// The pool controller's uid (an allowed uid of its own); its gid is `NOBODY`'s group,
/// which owns the socket.
const CONTROLLER: u32 = 65533;
/// `agent.max_clients_per_uid` and `agent.max_clients`: root's and nobody's abusers
/// together can hold at most 2 × 64 of the 256 slots, so the controller always finds one.
const PER_UID: usize = 64;
const MAX_CLIENTS: usize = 256;
/// Commands in a burst; one in 40 is a snapshot.
const BURST: u32 = 200;
/// How long the abuse lasts.
const ABUSE: Duration = Duration::from_secs(12);
/// Refused probes during the abuse, one every PROBE_EVERY.
const PROBES: usize = 16;
const PROBE_EVERY: Duration = Duration::from_millis(500);
/// Probes before the abuse starts: the quiet figure the abuse is compared with.
const QUIET_PROBES: usize = 8;
/// Kernel event → evict decision during the abuse. Generous (a debug build on a loaded
/// 2-core host): measured maxima are ~12 ms with the socket server on its own thread
/// (~30 ms at load average 14), and p50 622 ms / max 1.1 s when the sessions shared the
/// pipeline's thread (the defect this test guards against); the figures are in
/// BENCHMARKS.md. The bound is raised to four times the quiet median when the host is
/// so loaded that decisions are slow before the abuse too, and stretched by
/// `timing::patience`.
const DETECT_BOUND_US: u64 = 100_000;
/// How many probes during the abuse may exceed the bound. A host overloaded by others
/// (load average > 10) delays an odd wake-up of the pipeline past 100 ms whatever the
/// socket does; decisions that wait on the sessions are late for most probes (at least
/// half of them, by the defect's p50), so a quarter still fails on that defect.
const LATE_PROBES_ALLOWED: usize = PROBES / 4;
/// Agent RSS growth allowed over the abuse.
const RSS_GROWTH_BOUND_KIB: u64 = 64 * 1024;
/// Destinations put in the table (manual ejections) before the probes: every snapshot
/// of the bursts is then a large one.
const TABLE_FILL: usize = 12_000;

/// Makes the calling thread (only it: the raw syscalls act per thread) uid `uid`, gid
/// `NOBODY`.
fn become_uid(uid: u32) {
    // SAFETY: raw setresgid/setresuid change only this thread's credentials.
    unsafe {
        assert_eq!(
            libc::syscall(libc::SYS_setresgid, NOBODY, NOBODY, NOBODY),
            0
        );
        assert_eq!(libc::syscall(libc::SYS_setresuid, uid, uid, uid), 0);
    }
}

/// Runs `f` in a loop on its own thread (as `uid`, or root) until `stop`; counts its
/// rounds.
fn abuser(
    name: &str,
    uid: Option<u32>,
    stop: &Arc<AtomicBool>,
    rounds: &Arc<AtomicU64>,
    mut f: impl FnMut() + Send + 'static,
) -> thread::JoinHandle<()> {
    let (stop, rounds) = (Arc::clone(stop), Arc::clone(rounds));
    thread::Builder::new()
        .name(name.to_owned())
        .spawn(move || {
            if let Some(uid) = uid {
                become_uid(uid);
            }
            while !stop.load(Ordering::Relaxed) {
                f();
                rounds.fetch_add(1, Ordering::Relaxed);
            }
        })
        .expect("spawn")
}

fn connect(path: &Path) -> Option<UnixStream> {
    let s = UnixStream::connect(path).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    s.set_write_timeout(Some(Duration::from_secs(2))).ok()?;
    Some(s)
}

/// Reads whatever is there (up to 64 KiB) without caring.
fn drain(s: &mut UnixStream) {
    let mut buf = [0u8; 65536];
    let _ = s.read(&mut buf);
}

/// Partial lines: connections that send half a command, byte by byte, and hang.
fn partial_lines(p: &Path) {
    let mut held = Vec::new();
    for _ in 0..8 {
        if let Some(mut s) = connect(p) {
            for b in b"{\"cmd\":\"snap" {
                let _ = s.write_all(&[*b]);
            }
            held.push(s);
        }
    }
    thread::sleep(Duration::from_millis(200));
}

/// 64 KiB lines: exactly at the limit (valid JSON that is not a command) and one byte
/// over (too long); ten bad lines in a row close the connection.
fn long_lines(p: &Path) {
    let Some(mut s) = connect(p) else { return };
    let at_limit = format!("\"{}\"", "x".repeat(64 * 1024 - 2));
    let over = "y".repeat(64 * 1024 + 1);
    for i in 0..12 {
        let line = if i % 2 == 0 { &at_limit } else { &over };
        if s.write_all(line.as_bytes())
            .and_then(|()| s.write_all(b"\n"))
            .is_err()
        {
            break;
        }
        drain(&mut s);
    }
}

/// Slow readers: subscribe to everything, then read one line a second or never.
fn slow_readers(p: &Path) {
    let mut subs = Vec::new();
    for _ in 0..4 {
        if let Some(mut s) = connect(p) {
            let _ = s.write_all(b"{\"cmd\":\"subscribe\"}\n");
            subs.push(s);
        }
    }
    for _ in 0..3 {
        thread::sleep(Duration::from_secs(1));
        if let Some(s) = subs.first_mut() {
            let mut byte = [0u8; 1];
            let _ = s.read(&mut byte);
        }
    }
}

#[test]
fn hostile_clients_neither_slow_decisions_nor_grow_memory() {
    require_root();
    let ns = Netns::new("hostile");
    let dir = scratch_dir("hostile");
    let path: PathBuf = dir.join("sock").join("connmon.sock");
    // Every port of the namespace's address is a pool member; the guards that would
    // (rightly) stop a run of evictions are opened up, so each probe must be evicted.
    let cfg = write_config(
        &dir,
        format!(
            "[agent]\nsocket_group = \"nogroup\"\nallowed_uids = [{NOBODY}, {CONTROLLER}]\nmax_clients = {MAX_CLIENTS}\nmax_clients_per_uid = {PER_UID}\n\n[policy]\npool = [\"{LOCAL_V4}/32\"]\nmax_ejection_percent = 100\noutage_min_destinations = 1000000\n"
        ),
    );
    let mut agent = Agent::start(&[
        "--config",
        cfg.to_str().expect("utf-8"),
        "--socket",
        path.to_str().expect("utf-8"),
    ]);
    let pid = agent.pid();
    drop(Client::connect(&path, Duration::from_secs(10)));
    // Warm-up: one eviction end to end, so the baseline includes what any run allocates.
    let warm = refuse(&ns);
    agent.wait_for("warm-up evict", Duration::from_secs(10), |v| {
        v["type"] == "evict" && v["dst"] == warm.to_string()
    });
    thread::sleep(Duration::from_millis(300));
    fill_table(&ns, &path);
    let (snapshot_ms, tracked) = timed_snapshot(&path);
    assert!(
        tracked >= TABLE_FILL as u64,
        "the table holds the {TABLE_FILL} ejections ({tracked} tracked)"
    );
    // A subscriber that reads: when each eviction reached it.
    let seen_by_subscriber: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let subscriber = subscribe_evictions(&path, Arc::clone(&seen_by_subscriber));
    // The same probes without abuse, for comparison (reported, not asserted).
    let mut quiet = Vec::new();
    for _ in 0..QUIET_PROBES {
        let dst = refuse(&ns);
        let evict = agent.wait_for("evict before the abuse", Duration::from_secs(20), |v| {
            v["type"] == "evict" && v["dst"] == dst.to_string() && v["trigger"]["comm"] == "prober"
        });
        quiet.push(evict["detect_us"].as_u64().expect("detect_us"));
        thread::sleep(Duration::from_millis(100));
    }
    quiet.sort_unstable();
    let (rss_before, fds_before) = (rss_kib(pid), open_fds(pid));

    let stop = Arc::new(AtomicBool::new(false));
    let rounds: Vec<Arc<AtomicU64>> = (0..5).map(|_| Arc::new(AtomicU64::new(0))).collect();
    let mut threads = Vec::new();
    // 1. Connections opened and dropped, some mid-hello, some mid-line (4 threads).
    for i in 0..4 {
        let p = path.clone();
        let uid = (i % 2 == 0).then_some(NOBODY);
        threads.push(abuser("churn", uid, &stop, &rounds[0], move || {
            if let Some(mut s) = connect(&p)
                && i % 2 == 1
            {
                let _ = s.write_all(b"{\"cmd\":\"pi");
            }
        }));
    }
    // 2.-4. As nobody: `partial_lines`, `long_lines`, `slow_readers` (see each).
    for (round, name, body) in [
        (1, "partial", partial_lines as fn(&Path)),
        (2, "long-lines", long_lines),
        (3, "slow-readers", slow_readers),
    ] {
        let p = path.clone();
        threads.push(abuser(
            name,
            Some(NOBODY),
            &stop,
            &rounds[round],
            move || body(&p),
        ));
    }
    // 5. The pool controller: bursts of pipelined commands (pool changes, manual
    //    evictions and reinstatements of other addresses, snapshots, pings), then a
    //    half-close, then every reply read.
    let p = path.clone();
    let bursts: Arc<Mutex<Bursts>> = Arc::default();
    let tally = Arc::clone(&bursts);
    let mut round = 0u32;
    threads.push(abuser(
        "bursts",
        Some(CONTROLLER),
        &stop,
        &rounds[4],
        move || {
            round += 1;
            let outcome = burst(&p, round);
            tally.lock().expect("lock").record(outcome);
        },
    ));
    // 6. Another client of the controller's uid pings every 20 ms: how long a reply
    //    takes while the others abuse the socket and the bursts' snapshots are rendered.
    let p = path.clone();
    let ping_ms: Arc<Mutex<Vec<f64>>> = Arc::default();
    let pings = Arc::clone(&ping_ms);
    let pinger_stop = Arc::clone(&stop);
    let pinger = thread::spawn(move || {
        become_uid(CONTROLLER);
        let mut client = Client::connect(&p, Duration::from_secs(10));
        while !pinger_stop.load(Ordering::Relaxed) {
            let sent = Instant::now();
            assert_eq!(client.request(json!({"cmd": "ping"}))["type"], "pong");
            pings
                .lock()
                .expect("lock")
                .push(sent.elapsed().as_secs_f64() * 1e3);
            thread::sleep(Duration::from_millis(20));
        }
    });

    // Meanwhile: refused connects to fresh pool members, each of which must be evicted
    // promptly.
    let started = Instant::now();
    let mut detect = Vec::new();
    let mut probed = Vec::new();
    let mut peak_rss = rss_before;
    for _ in 0..PROBES {
        let dst = refuse(&ns);
        let refused_at = Instant::now();
        let evict = agent.wait_for("evict during the abuse", Duration::from_secs(20), |v| {
            v["type"] == "evict" && v["dst"] == dst.to_string() && v["trigger"]["comm"] == "prober"
        });
        let us = evict["detect_us"].as_u64().expect("detect_us");
        detect.push(us);
        probed.push((dst.to_string(), refused_at));
        peak_rss = peak_rss.max(rss_kib(pid));
        thread::sleep(PROBE_EVERY);
    }
    while started.elapsed() < ABUSE {
        peak_rss = peak_rss.max(rss_kib(pid));
        thread::sleep(Duration::from_millis(200));
    }
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        t.join().expect("an abuser thread panicked");
    }
    pinger.join().expect("the pinger panicked");
    let counts: Vec<u64> = rounds.iter().map(|r| r.load(Ordering::Relaxed)).collect();
    let bursts = std::mem::take(&mut *bursts.lock().expect("lock"));
    let mut ping_ms = std::mem::take(&mut *ping_ms.lock().expect("lock"));
    ping_ms.sort_by(f64::total_cmp);

    // Every probe's eviction reached the reading subscriber; how long after the refused
    // connect returned (reported, not asserted).
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut delivered_ms = Vec::new();
    for (dst, refused_at) in &probed {
        let at = loop {
            if let Some(at) = seen_by_subscriber.lock().expect("lock").get(dst) {
                break *at;
            }
            assert!(
                Instant::now() < deadline,
                "the subscriber never got the eviction of {dst}"
            );
            thread::sleep(Duration::from_millis(50));
        };
        delivered_ms.push(at.saturating_duration_since(*refused_at).as_secs_f64() * 1e3);
    }
    delivered_ms.sort_by(f64::total_cmp);
    let bound_us = DETECT_BOUND_US.max(4 * quiet[quiet.len() / 2]) * u64::from(patience());
    let late: Vec<u64> = detect.iter().copied().filter(|&us| us > bound_us).collect();
    detect.sort_unstable();
    let max = *detect.last().expect("probes");
    eprintln!(
        "hostile clients ({tracked} destinations, a snapshot of them in {snapshot_ms:.0} ms): detect_us of {QUIET_PROBES} evictions before the abuse: min {} p50 {} max {}; of {PROBES} during the abuse: min {} p50 {} max {max}; at a reading subscriber after the refused connect: p50 {:.1} ms max {:.1} ms; RSS {rss_before} KiB before, peak {peak_rss} KiB; rounds churn/partial/long/slow/burst = {:?}; controller bursts answered whole {} (longest {:.0} ms), refused {}, cut short {}; another client's {} pings: p50 {:.1} ms p99 {:.1} ms max {:.1} ms",
        quiet[0],
        quiet[quiet.len() / 2],
        quiet[quiet.len() - 1],
        detect[0],
        detect[detect.len() / 2],
        delivered_ms[delivered_ms.len() / 2],
        delivered_ms[delivered_ms.len() - 1],
        &counts[..5],
        bursts.answered,
        bursts.longest_ms,
        bursts.refused.len(),
        bursts.cut_short.len(),
        ping_ms.len(),
        ping_ms[ping_ms.len() / 2],
        ping_ms[ping_ms.len() * 99 / 100],
        ping_ms[ping_ms.len() - 1],
    );
    assert!(
        late.len() <= LATE_PROBES_ALLOWED,
        "{} of {PROBES} evictions during the abuse took more than {bound_us} µs (at most {LATE_PROBES_ALLOWED} may, on a loaded host): the late ones {late:?}; all, sorted: {detect:?}; before the abuse: {quiet:?}",
        late.len()
    );
    assert!(
        counts[..5].iter().all(|&c| c > 0),
        "every kind of abuse ran: {counts:?}"
    );
    assert!(
        bursts.refused.is_empty(),
        "the controller was refused {} time(s) although agent.max_clients_per_uid keeps slots for it: {:?}",
        bursts.refused.len(),
        bursts.refused.first()
    );
    assert!(
        bursts.cut_short.is_empty(),
        "every burst gets hello and its {BURST} replies in order: {:?}",
        bursts.cut_short
    );
    assert!(
        bursts.answered > 0,
        "the controller's bursts were answered ({} rounds)",
        counts[4]
    );
    assert!(
        peak_rss <= rss_before + RSS_GROWTH_BOUND_KIB,
        "agent RSS grew from {rss_before} KiB to {peak_rss} KiB"
    );
    // The clients are gone: their connections are closed and the agent answers.
    wait_until(
        Duration::from_secs(15),
        Duration::from_millis(100),
        || open_fds(pid) <= fds_before + 2,
        || {
            format!(
                "fds stay open after the clients left: {} now, {fds_before} before",
                open_fds(pid)
            )
        },
    );
    let mut client = Client::connect(&path, Duration::from_secs(5));
    assert_eq!(client.request(json!({"cmd": "ping"}))["type"], "pong");
    // A loaded pipeline may answer `unavailable` (no copy of the table within 5 s): ask
    // again, within a deadline.
    let deadline = Instant::now() + patient(Duration::from_secs(60));
    let snapshot: Value = loop {
        let reply = client.request(json!({"cmd": "snapshot"}));
        if reply["type"] == "snapshot" || Instant::now() > deadline {
            break reply;
        }
        eprintln!("closing snapshot: {reply:.300}; asking again");
    };
    let errors = &snapshot["server"]["protocol_errors"];
    assert!(
        errors.as_u64().is_some_and(|e| e > 0),
        "the abuse was seen as protocol errors: {}",
        snapshot["server"]
    );
    drop(client);
    let (ok, _) = agent.stop();
    assert!(ok, "clean exit after the abuse");
    subscriber.join().expect("the subscriber thread panicked");
}

/// What became of the controller's bursts.
#[derive(Debug, Default)]
struct Bursts {
    answered: u64,
    /// The refusal lines.
    refused: Vec<String>,
    /// Why each burst that was not answered whole fell short.
    cut_short: Vec<String>,
    longest_ms: f64,
}

/// One burst's fate.
enum BurstOutcome {
    /// Hello and every reply, in order, in this long.
    Answered(Duration),
    Refused(String),
    CutShort(String),
}

impl Bursts {
    fn record(&mut self, outcome: BurstOutcome) {
        match outcome {
            BurstOutcome::Answered(took) => {
                self.answered += 1;
                self.longest_ms = self.longest_ms.max(took.as_secs_f64() * 1e3);
            }
            BurstOutcome::Refused(line) => self.refused.push(line),
            BurstOutcome::CutShort(why) => self.cut_short.push(why),
        }
    }
}

/// One burst: [`BURST`] pipelined commands with ids, a half-close, then every reply
/// read (each read may wait 60 s, a deadline: a snapshot of the full table is rendered
/// in a few seconds on a quiet host, in far more on an overloaded one).
fn burst(path: &Path, round: u32) -> BurstOutcome {
    let started = Instant::now();
    let Some(mut s) = connect(path) else {
        return BurstOutcome::CutShort("connect failed".into());
    };
    let _ = s.set_read_timeout(Some(patient(Duration::from_secs(60))));
    let mut burst = String::new();
    let mut expected = Vec::new();
    for i in 0..BURST {
        let dst = format!("10.251.{}.{}:80", (round + i) % 200, i % 250);
        let (mut cmd, reply) = match i % 5 {
            _ if i % 40 == 39 => (json!({"cmd": "snapshot"}), "snapshot"),
            0 => (json!({"cmd": "pool", "op": "add", "members": [dst]}), "ok"),
            1 => (json!({"cmd": "evict", "dst": dst, "for_ms": 600_000}), "ok"),
            // Reinstating what the line before evicted (for 10 minutes: it cannot have
            // expired meanwhile, however slow the host).
            2 => (
                json!({"cmd": "reinstate", "dst": format!("10.251.{}.{}:80", (round + i - 1) % 200, (i - 1) % 250)}),
                "ok",
            ),
            3 => (
                json!({"cmd": "pool", "op": "remove", "members": [dst]}),
                "ok",
            ),
            _ => (json!({"cmd": "ping"}), "pong"),
        };
        cmd["id"] = json!(i);
        burst.push_str(&cmd.to_string());
        burst.push('\n');
        expected.push(reply);
    }
    if let Err(e) = s.write_all(burst.as_bytes()) {
        return BurstOutcome::CutShort(format!("writing the burst: {e}"));
    }
    let _ = s.shutdown(std::net::Shutdown::Write);
    let mut lines = BufReader::new(s).lines();
    let first = match lines.next() {
        Some(Ok(line)) => line,
        other => return BurstOutcome::CutShort(format!("no hello: {other:?}")),
    };
    if first.starts_with(r#"{"type":"error","code":"too_many_clients""#) {
        return BurstOutcome::Refused(first);
    }
    if !first.starts_with(r#"{"type":"hello""#) {
        return BurstOutcome::CutShort(format!("not hello: {first:.200}"));
    }
    for (i, kind) in expected.iter().enumerate() {
        let line = match lines.next() {
            Some(Ok(line)) => line,
            other => {
                return BurstOutcome::CutShort(format!(
                    "round {round}: reply {i} of {BURST} after {:?}: {other:?}",
                    started.elapsed()
                ));
            }
        };
        let v: Value = serde_json::from_str(&line).unwrap_or(Value::Null);
        if v["id"] != json!(i) || v["type"] != *kind {
            return BurstOutcome::CutShort(format!(
                "round {round}: reply {i} is not a {kind} with id {i}: {line:.200}"
            ));
        }
    }
    match lines.next() {
        None => BurstOutcome::Answered(started.elapsed()),
        Some(other) => BurstOutcome::CutShort(format!("more after the replies: {other:.200?}")),
    }
}

/// Where the table is filled: an address of the namespace outside the pool (its
/// destinations are targets, never ejected), added for this.
const FILL_V4: &str = "10.200.1.1";

/// Puts [`TABLE_FILL`] destinations in the table: refused connects to as many ports of
/// [`FILL_V4`], paced so that the ring buffer keeps them all; waits until the agent
/// tracks them.
fn fill_table(ns: &Netns, path: &Path) {
    let out = std::process::Command::new("ip")
        .args([
            "-n",
            &ns.name,
            "addr",
            "add",
            &format!("{FILL_V4}/32"),
            "dev",
            "lo",
        ])
        .output()
        .expect("ip");
    assert!(out.status.success(), "ip addr add: {out:?}");
    // On a loaded host the ring buffer can overflow during a pass (lost events are
    // counted, not retried): the ports not yet tracked get another pass.
    let mut client = Client::connect(path, Duration::from_secs(5));
    let mut tracked = 0;
    for pass in 1..=4 {
        ns.run("filler", || {
            for i in 0..TABLE_FILL {
                let dst: SocketAddr = format!("{FILL_V4}:{}", 20_000 + i).parse().expect("addr");
                TcpStream::connect(dst).expect_err("refused");
                if i % 250 == 249 {
                    thread::sleep(Duration::from_millis(20));
                }
            }
        });
        // Until the count stops growing (the pipeline may still be taking the events in).
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let snapshot = client.request(json!({"cmd": "snapshot"}));
            // A loaded pipeline may answer `unavailable` (no answer within 5 s): ask again.
            let now_tracked = snapshot["tracked"].as_u64().unwrap_or(tracked);
            if now_tracked >= TABLE_FILL as u64 {
                return;
            }
            if snapshot["type"] == "snapshot" && now_tracked == tracked && tracked > 0 {
                break;
            }
            tracked = now_tracked;
            assert!(
                Instant::now() < deadline,
                "pass {pass}: the agent tracks {tracked} destinations after 60 s, not the {TABLE_FILL} of the fill: {snapshot:.300}"
            );
            thread::sleep(Duration::from_millis(1000));
        }
        eprintln!("fill pass {pass}: {tracked} of {TABLE_FILL} destinations tracked; another pass");
    }
    panic!(
        "the agent tracks {tracked} destinations after 4 passes, not the {TABLE_FILL} of the fill"
    );
}

/// How long a `snapshot` takes end to end, and how many destinations it has.
fn timed_snapshot(path: &Path) -> (f64, u64) {
    let mut client = Client::connect(path, Duration::from_secs(5));
    let started = Instant::now();
    let snapshot = client.request(json!({"cmd": "snapshot"}));
    let ms = started.elapsed().as_secs_f64() * 1e3;
    (ms, snapshot["tracked"].as_u64().expect("tracked"))
}

/// A subscriber to evictions that reads everything until the agent says `bye`: when
/// each eviction arrived, by `dst`.
fn subscribe_evictions(
    path: &Path,
    seen: Arc<Mutex<HashMap<String, Instant>>>,
) -> thread::JoinHandle<()> {
    let mut stream = connect(path).expect("connect");
    stream.set_read_timeout(None).expect("no read timeout");
    stream
        .write_all(b"{\"cmd\":\"subscribe\",\"types\":[\"evict\"]}\n")
        .expect("subscribe");
    thread::spawn(move || {
        for line in BufReader::new(stream).lines() {
            let Ok(line) = line else { return };
            let v: Value = serde_json::from_str(&line)
                .unwrap_or_else(|e| panic!("the subscriber got non-JSON ({e}): {line:.200}"));
            if v["type"] == "evict"
                && let Some(dst) = v["dst"].as_str()
            {
                seen.lock()
                    .expect("lock")
                    .insert(dst.to_owned(), Instant::now());
            }
        }
    })
}

/// One refused connect from the namespace to a fresh closed port of its own address.
fn refuse(ns: &Netns) -> SocketAddr {
    let (dst, _) = ns.run("prober", || {
        let port = closed_port(LOCAL_V4);
        let dst: SocketAddr = format!("{LOCAL_V4}:{port}").parse().expect("addr");
        TcpStream::connect(dst).expect_err("refused");
        dst
    });
    dst
}
