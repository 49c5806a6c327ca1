//! Root integration tests for the eviction engine: real connects to a pool whose members
//! listen, refuse or blackhole, in a network namespace, through the real agent.

use std::{
    net::{SocketAddr, TcpListener, TcpStream},
    path::Path,
    time::Duration,
};

use connmon_integration::{
    Agent, BLACKHOLE_V4, LOCAL_V4, Netns, closed_port, is_about, is_connect, require_root,
    scratch_dir, write_file,
};
use serde_json::Value;

/// A deadline for a line to appear, not a latency goal (BENCHMARKS.md has those):
/// generous, as the kernel matrix runs these tests under emulation.
const WAIT: Duration = Duration::from_secs(30);

fn decisions<'a>(lines: &'a [Value], kind: &str, dst: &str) -> Vec<&'a Value> {
    lines
        .iter()
        .filter(|l| l["type"] == kind && l["dst"] == dst)
        .collect()
}

/// An open listener (kept alive by the returned value) and a closed port, in `ns`.
///
/// They listen on the namespace's own veth address, not its loopback: another
/// namespace's loopback is a destination of that namespace alone, never a pool member.
fn open_and_closed(ns: &Netns) -> (TcpListener, SocketAddr, SocketAddr) {
    let ((listener, closed), _) = ns.run("setup", || {
        let l = TcpListener::bind((LOCAL_V4, 0)).unwrap();
        let closed: SocketAddr = format!("{LOCAL_V4}:{}", closed_port(LOCAL_V4))
            .parse()
            .unwrap();
        (l, closed)
    });
    let open = listener.local_addr().unwrap();
    (listener, open, closed)
}

/// A configuration whose pool is `closed` and a member nothing connects to, ejecting for
/// `term` without jitter.
fn ejecting_for(dir: &Path, term: &str, closed: SocketAddr) -> String {
    write_file(
        &dir.join("connmon.toml"),
        &format!(
            "[policy]\nbase_ejection = \"{term}\"\njitter = 0.0\npool = [\"{closed}\", \"10.200.0.10:80\"]\n"
        ),
    )
}

/// One connect to `closed` from a thread named `scraper` in `ns`: refused.
fn refuse_from_scraper(ns: &Netns, closed: SocketAddr) {
    ns.run("scraper", move || {
        TcpStream::connect(closed).expect_err("refused")
    });
}

#[test]
fn pool_members_are_evicted_by_how_they_fail_and_healthy_ones_never() {
    require_root();
    let ns = Netns::new("pool");
    // Default-like SYN retries: retransmits at ~1 s and ~3 s, the kernel would wait ~2 min.
    ns.sysctl("net.ipv4.tcp_syn_retries", "6");
    let (_listener, open, closed) = open_and_closed(&ns);
    let blackholed = format!("{BLACKHOLE_V4}:80");
    let dir = scratch_dir("pool");
    // Six members so that the 50 % guard allows three ejections at once.
    let pool = write_file(
        &dir.join("pool.txt"),
        &format!(
            "# test pool\n{open}\n{closed}\n{blackholed}\n10.200.0.10:80\n10.200.0.11:80\n10.200.0.12:80\n"
        ),
    );
    let mut agent = Agent::start(&["--pool", &pool]);
    let target_port = ns
        .run("scraper", move || {
            for _ in 0..5 {
                TcpStream::connect(open).expect("open member accepts");
            }
            TcpStream::connect(closed).expect_err("closed member refuses");
            let target_port = closed_port("127.0.0.1");
            TcpStream::connect(("127.0.0.1", target_port)).expect_err("target refuses");
            // A scraper-style 4 s connect timeout against the blackholed member.
            let dst: SocketAddr = format!("{BLACKHOLE_V4}:80").parse().unwrap();
            TcpStream::connect_timeout(&dst, Duration::from_secs(4))
                .expect_err("blackholed member never answers");
            target_port
        })
        .0;
    let target = format!("127.0.0.1:{target_port}");

    let evict = agent.wait_for("evict of the closed member", WAIT, |v| {
        is_about(v, "evict", closed)
    });
    assert_eq!(evict["reason"], "refused", "{evict}");
    assert_eq!(evict["role"], "proxy");
    assert_eq!(evict["failure_mode"], "reject");
    assert_eq!(evict["evidence"]["refused"], 1);
    assert_eq!(evict["ejection"]["count"], 1);
    assert!(evict["trigger"]["comm"] == "scraper", "{evict}");
    // Detection latency is a benchmark figure (BENCHMARKS.md), not a test threshold: a
    // slow (emulated) CPU must not fail it. Here only its plausibility is checked.
    assert!(evict["detect_us"].as_u64().unwrap() < 60_000_000, "{evict}");

    let suspect = agent.wait_for("suspect for the blackholed member", WAIT, |v| {
        v["type"] == "suspect" && v["dst"] == blackholed
    });
    let evict_bh = agent.wait_for("evict of the blackholed member", WAIT, |v| {
        v["type"] == "evict" && v["dst"] == blackholed
    });
    assert_eq!(evict_bh["reason"], "syn_retransmits", "{evict_bh}");
    assert_eq!(evict_bh["failure_mode"], "drop");
    let first_syn_to_evict = evict_bh["trigger"]["ktime_ns"].as_u64().unwrap();
    let retransmit = agent.wait_for("first syn_retransmit", WAIT, |v| {
        v["type"] == "syn_retransmit" && v["dst"] == blackholed
    });
    let since_syn = retransmit["since_syn_us"].as_u64().unwrap() * 1_000;
    let syn_ns = retransmit["ktime_ns"].as_u64().unwrap() - since_syn;
    let evicted_after = Duration::from_nanos(first_syn_to_evict - syn_ns);
    assert!(
        evicted_after < Duration::from_millis(3500),
        "blackholed node evicted {evicted_after:?} after its SYN"
    );
    let abandoned = agent.wait_for("abandoned connect", WAIT, |v| {
        is_connect(v, "abandoned", &blackholed, ns.inode)
    });
    assert!(
        suspect["ts"].as_str() < evict_bh["ts"].as_str()
            && evict_bh["ts"].as_str() < abandoned["ts"].as_str()
    );

    let refused_target = agent.wait_for("refused target", WAIT, |v| {
        is_connect(v, "refused", &target, ns.inode)
    });
    assert_eq!(refused_target["role"], "target");
    let (ok, lines) = agent.stop();
    assert!(ok);
    assert_eq!(
        decisions(&lines, "evict", &closed.to_string()).len(),
        1,
        "exactly one evict for the closed member"
    );
    assert_eq!(
        decisions(&lines, "evict", &blackholed).len(),
        1,
        "exactly one evict for the blackholed member"
    );
    for kind in ["evict", "suspect"] {
        assert!(
            decisions(&lines, kind, &open.to_string()).is_empty(),
            "healthy member touched: {kind}"
        );
        assert!(
            decisions(&lines, kind, &target).is_empty(),
            "target evicted: {kind}"
        );
    }
    let established = lines
        .iter()
        .filter(|l| is_connect(l, "established", &open.to_string(), ns.inode))
        .count();
    assert_eq!(established, 5);
}

#[test]
fn a_short_ejection_is_reinstated() {
    require_root();
    let ns = Netns::new("reinst");
    let (_listener, _open, closed) = open_and_closed(&ns);
    let dir = scratch_dir("reinst");
    let config = ejecting_for(&dir, "1s", closed);
    let mut agent = Agent::start(&["--config", &config]);
    refuse_from_scraper(&ns, closed);
    let evict = agent.wait_for("evict", WAIT, |v| is_about(v, "evict", closed));
    assert_eq!(evict["ejection"]["duration_ms"], 1000, "{evict}");
    let reinstate = agent.wait_for("reinstate", WAIT, |v| is_about(v, "reinstate", closed));
    let ejected_ms = reinstate["ejected_ms"].as_u64().unwrap();
    // Never early; how late depends on the CPU (a benchmark matter).
    assert!((1000..30_000).contains(&ejected_ms), "{reinstate}");
}

#[test]
fn refused_loopback_from_another_namespace_is_a_localhost_trap() {
    require_root();
    let ns = Netns::new("trap");
    let mut agent = Agent::start(&[]);
    // The agent's own namespace: a refused loopback connect here is no trap.
    let host_port = closed_port("127.0.0.1");
    TcpStream::connect(("127.0.0.1", host_port)).expect_err("refused");
    let (port, tid) = ns.run("container-app", || {
        let port = closed_port("127.0.0.1");
        TcpStream::connect(("127.0.0.1", port)).expect_err("refused");
        port
    });
    let dst = format!("127.0.0.1:{port}");
    let trap = agent.wait_for("localhost_trap", WAIT, |v| {
        v["type"] == "diagnosis" && v["kind"] == "localhost_trap" && v["dst"] == dst
    });
    assert_eq!(trap["netns"], ns.inode);
    assert_eq!(trap["pid"], tid);
    assert_eq!(trap["tgid"], std::process::id());
    assert_eq!(trap["comm"], "container-app");
    assert!(
        trap["hint"].as_str().is_some_and(|h| h.len() > 20),
        "{trap}"
    );
    let (_, lines) = agent.stop();
    let host_dst = format!("127.0.0.1:{host_port}");
    assert!(
        lines
            .iter()
            .any(|l| l["type"] == "connect" && l["dst"] == host_dst),
        "host connect seen"
    );
    assert!(
        !lines
            .iter()
            .any(|l| l["kind"] == "localhost_trap" && l["dst"] == host_dst),
        "a refused loopback connect in the agent's own namespace is not a trap"
    );
}

#[test]
fn an_ejection_survives_a_restart() {
    require_root();
    let ns = Netns::new("restart");
    let (_listener, _open, closed) = open_and_closed(&ns);
    let dir = scratch_dir("restart");
    let state = dir.join("state.json");
    let state_arg = state.to_str().unwrap().to_owned();
    let config = ejecting_for(&dir, "4s", closed);
    let mut first = Agent::start(&["--config", &config, "--state-file", &state_arg]);
    refuse_from_scraper(&ns, closed);
    let evict = first.wait_for("evict", WAIT, |v| is_about(v, "evict", closed));
    let evicted_at = std::time::Instant::now();
    let until = evict["ejection"]["until"]
        .as_str()
        .expect("ejection.until")
        .to_owned();
    let (ok, lines) = first.stop();
    assert!(ok);
    assert!(
        decisions(&lines, "reinstate", &closed.to_string()).is_empty(),
        "reinstated before the restart"
    );
    let saved: Value =
        serde_json::from_str(&std::fs::read_to_string(&state).expect("state file written"))
            .unwrap();
    assert!(saved.to_string().contains(&closed.to_string()), "{saved}");

    let mut second = Agent::start(&["--config", &config, "--state-file", &state_arg]);
    // How long the restart took depends on the CPU, so it is measured, not assumed: on a
    // slow (emulated) CPU the term may expire before the second agent loads the state
    // (it is then reinstated at once); when the agent attached well within the term, the
    // state was loaded (before attaching) while the ejection still ran.
    let restarted_after = evicted_at.elapsed().as_millis() as u64;
    let stderr = second.stderr();
    assert!(stderr.contains("loaded ejection state"), "{stderr}");
    if restarted_after < 3500 {
        assert!(
            stderr.contains("restored=1"),
            "the running ejection was restored:\n{stderr}"
        );
    }
    let reinstate = second.wait_for("reinstate after restart", WAIT, |v| {
        is_about(v, "reinstate", closed)
    });
    let ejected_ms = reinstate["ejected_ms"].as_u64().unwrap();
    // Never before the term the first agent announced (same RFC 3339 format: the strings
    // order like the times), and late only by the restart, the ~1 s reinstatement tick
    // and slack for a slow CPU.
    assert!(
        reinstate["ts"].as_str().expect("ts") >= until.as_str(),
        "reinstated before the term ({until}) ended: {reinstate}"
    );
    assert!(
        (3900..restarted_after + 4000 + 2000).contains(&ejected_ms),
        "the restored ejection kept its term (restart took {restarted_after} ms): {reinstate}"
    );
    let (_, lines) = second.stop();
    assert!(
        decisions(&lines, "evict", &closed.to_string()).is_empty(),
        "no second eviction after restart"
    );
}

#[test]
fn sighup_reloads_the_pool_without_losing_state() {
    require_root();
    let ns = Netns::new("hup");
    let (_listener, open, closed) = open_and_closed(&ns);
    let dir = scratch_dir("hup");
    let pool_path = dir.join("pool.txt");
    let pool = write_file(
        &pool_path,
        &format!("{open}\n10.200.0.10:80\n10.200.0.11:80\n"),
    );
    let mut agent = Agent::start(&["--pool", &pool]);
    refuse_from_scraper(&ns, closed);
    let before = agent.wait_for("refused target", WAIT, |v| {
        is_connect(v, "refused", &closed.to_string(), ns.inode)
    });
    assert_eq!(before["role"], "target");
    write_file(
        &pool_path,
        &format!("{open}\n{closed}\n10.200.0.10:80\n10.200.0.11:80\n"),
    );
    agent.signal(libc::SIGHUP);
    agent.wait_for_stderr("SIGHUP: pool reloaded", WAIT);
    refuse_from_scraper(&ns, closed);
    let evict = agent.wait_for("evict after reload", WAIT, |v| is_about(v, "evict", closed));
    assert_eq!(evict["role"], "proxy");
    assert_eq!(
        evict["evidence"]["attempts"], 2,
        "the attempt made before the reload is kept: {evict}"
    );

    // A broken pool file keeps the current pool.
    write_file(&pool_path, "this is not an address\n");
    agent.signal(libc::SIGHUP);
    agent.wait_for_stderr("SIGHUP: keeping the current pool", WAIT);
    assert!(agent.stderr().contains("line 1"), "{}", agent.stderr());
}
