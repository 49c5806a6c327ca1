//! Root integration tests for handshake checks (`[checks]`): verified reinstatement,
//! early reinstatement, blackholed members, background checks of idle members, the
//! global probe rate, and checks off. The agent runs inside each test's namespace so
//! that its probes reach the namespace's loopback and veth neighbours; its events are
//! selected by that namespace's inode and the agent's own pid.

use std::{
    net::{SocketAddr, TcpListener, TcpStream},
    path::Path,
    time::Duration,
};

use connmon_integration::{
    Agent, Netns, closed_port, is_connect,
    otlp_receiver::{Receiver, Value as Otlp},
    require_root, scratch_dir, write_file,
};
use serde_json::Value;

fn of<'a>(lines: &'a [Value], kind: &str, dst: &str) -> Vec<&'a Value> {
    lines
        .iter()
        .filter(|l| l["type"] == kind && l["dst"] == dst)
        .collect()
}

/// Connect events of the agent's own probes to `dst`.
fn probes<'a>(lines: &'a [Value], dst: &str, agent_pid: u32) -> Vec<&'a Value> {
    lines
        .iter()
        .filter(|l| l["type"] == "connect" && l["dst"] == dst && l["probe"] == true)
        .inspect(|l| {
            assert_eq!(
                l["tgid"], agent_pid,
                "a probe is the agent's own connect: {l}"
            );
            assert_eq!(l["comm"], "connmon", "{l}");
        })
        .collect()
}

/// A port on 127.0.0.1 inside `ns` on which nothing listens.
fn closed_in(ns: &Netns) -> SocketAddr {
    let (port, _) = ns.run("setup", || closed_port("127.0.0.1"));
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// A listener on 127.0.0.1 inside `ns` (closed when dropped).
fn listener_in(ns: &Netns, port: u16) -> TcpListener {
    ns.run("setup", move || {
        TcpListener::bind(("127.0.0.1", port)).expect("bind in the namespace")
    })
    .0
}

#[test]
fn dead_members_stay_ejected_across_expiries_and_a_revived_one_is_reinstated_early() {
    require_root();
    let ns = Netns::new("verify");
    let closed = closed_in(&ns);
    let revived = closed_in(&ns);
    // A blackholed neighbour of this test's own (other jobs on the host use
    // BLACKHOLE_V4, and pool membership is by address, whatever the namespace).
    let hole = "10.200.0.87";
    connmon_integration::sh(&[
        "ip",
        "-n",
        &ns.name,
        "neigh",
        "add",
        hole,
        "lladdr",
        "02:00:00:00:00:87",
        "dev",
        "veth0",
        "nud",
        "permanent",
    ]);
    let blackholed = format!("{hole}:80");
    let dir = scratch_dir("verify");
    let config = write_file(
        &dir.join("connmon.toml"),
        &format!(
            "[policy]\noutage_min_destinations = 0\nbase_ejection = \"2s\"\nmax_ejection = \"60s\"\njitter = 0.0\n\
             consecutive_timeouts = 1\nmax_ejection_percent = 100\n\
             pool = [\"{closed}\", \"{revived}\", \"{blackholed}\"]\n\n\
             [checks]\nverify_before_reinstate = true\nprobe_timeout = \"700ms\"\n\
             early_probe_interval = \"500ms\"\nmax_per_second = 50\n"
        ),
    );
    let mut agent = Agent::start_in(&ns, &["--config", &config, "--checks", "on"]);
    let pid = agent.pid();
    let bh: SocketAddr = blackholed.parse().expect("addr");
    // The revived member starts listening right after the refused connect that ejects
    // it, so well within its 2 s ejection however late this test reads the agent's
    // lines (it once started after them, ~1 s into the ejection, and a loaded host
    // pushed it past the end): an early probe (every 500 ms) finds it and reinstates
    // it before the timer.
    let (_revived, _) = ns.run("scraper", move || {
        TcpStream::connect(closed).expect_err("closed member refuses");
        TcpStream::connect(revived).expect_err("not listening yet");
        let revived = TcpListener::bind(revived).expect("bind in the namespace");
        TcpStream::connect_timeout(&bh, Duration::from_millis(300))
            .expect_err("blackholed member never answers");
        revived
    });
    for dst in [closed.to_string(), revived.to_string(), blackholed.clone()] {
        agent.wait_for("first evict", Duration::from_secs(10), |v| {
            v["type"] == "evict" && v["dst"] == dst && v["ejection"]["count"] == 1
        });
    }
    let reinstate = agent.wait_for("early reinstatement", Duration::from_secs(10), |v| {
        v["type"] == "reinstate" && v["dst"] == revived.to_string()
    });
    assert_eq!(reinstate["verified"], true, "{reinstate}");
    // Early as judged by the engine: before the ejection's end (2 s after the evict).
    assert_eq!(reinstate["early"], true, "{reinstate}");
    assert!(
        reinstate["ejected_ms"].as_u64().expect("ejected_ms") < 2_000,
        "{reinstate}"
    );

    // The closed and the blackholed members: re-ejected at every expiry with a growing
    // count (2 s, 4 s, 8 s ...), never reinstated. Count 3 means two failed verifications.
    for dst in [closed.to_string(), blackholed.clone()] {
        agent.wait_for("third ejection", Duration::from_secs(30), |v| {
            v["type"] == "evict" && v["dst"] == dst && v["ejection"]["count"] == 3
        });
    }
    let (ok, lines) = agent.stop();
    assert!(ok, "agent exits cleanly");
    for dst in [closed.to_string(), blackholed.clone()] {
        assert!(
            of(&lines, "reinstate", &dst).is_empty(),
            "a dead member was reinstated: {dst}"
        );
        let evicts = of(&lines, "evict", &dst);
        let counts: Vec<u64> = evicts
            .iter()
            .map(|e| e["ejection"]["count"].as_u64().expect("count"))
            .collect();
        assert!(
            counts.windows(2).all(|w| w[1] == w[0] + 1) && counts.len() >= 3,
            "{dst}: counts {counts:?}"
        );
        let durations: Vec<u64> = evicts
            .iter()
            .map(|e| e["ejection"]["duration_ms"].as_u64().expect("duration"))
            .collect();
        assert_eq!(&durations[..3], [2_000, 4_000, 8_000], "{dst}");
        // Re-ejections are triggered by the agent's own probe.
        for e in &evicts[1..] {
            assert_eq!(e["trigger"]["comm"], "connmon", "{e}");
        }
        assert!(!probes(&lines, &dst, pid).is_empty(), "{dst} was probed");
    }
    // The closed member's probes were refused; the blackholed member's were abandoned
    // by the agent at probe_timeout (700 ms) — the kernel's own timeout is 3 s here.
    let closed_probes = probes(&lines, &closed.to_string(), pid);
    assert!(
        closed_probes.iter().all(|p| p["outcome"] == "refused"),
        "{closed_probes:?}"
    );
    let bh_probes = probes(&lines, &blackholed, pid);
    for p in &bh_probes {
        assert_eq!(p["outcome"], "abandoned", "{p}");
        let us = p["duration_us"].as_u64().expect("duration_us");
        assert!(
            (690_000..2_900_000).contains(&us),
            "a blackholed probe ends at probe_timeout, not the kernel's timeout: {p}"
        );
    }
    let verified = &bh_probes;
    assert!(verified.len() >= 2, "{verified:?}");
    // The revived member's successful probe is an established connect of the agent.
    assert!(
        probes(&lines, &revived.to_string(), pid)
            .iter()
            .any(|p| p["outcome"] == "established")
    );
    // Probes are counted apart in the final stats.
    let stats = lines
        .iter()
        .rev()
        .find(|l| l["type"] == "stats" && l["final"] == true)
        .expect("final stats");
    let sent = stats["probes"]["sent"].as_u64().expect("probes.sent");
    assert!(sent >= 6, "{stats}");
    assert!(
        stats["probes"]["established"].as_u64() >= Some(1),
        "{stats}"
    );
}

#[test]
fn idle_members_are_checked_at_the_global_rate_and_a_dead_one_is_evicted_without_clients() {
    require_root();
    let ns = Netns::new("idle");
    // Twenty healthy members, one that will die, and a target nobody may probe.
    let healthy: Vec<TcpListener> = (0..20).map(|_| listener_in(&ns, 0)).collect();
    let doomed = listener_in(&ns, 0);
    let doomed_dst = doomed.local_addr().expect("addr");
    let target = listener_in(&ns, 0);
    let target_dst = target.local_addr().expect("addr");
    let mut pool: Vec<String> = healthy
        .iter()
        .map(|l| format!("\"{}\"", l.local_addr().expect("addr")))
        .collect();
    pool.push(format!("\"{doomed_dst}\""));
    const RATE: usize = 5;
    // An OTLP receiver inside the namespace, where the agent runs.
    let (receiver, _) = ns.run("otlp", Receiver::start);
    let dir = scratch_dir("idle");
    let config = write_file(
        &dir.join("connmon.toml"),
        &format!(
            "[policy]\noutage_min_destinations = 0\nbase_ejection = \"60s\"\njitter = 0.0\nmax_ejection_percent = 50\n\
             pool = [{}]\n\n[checks]\nidle_after = \"1s\"\nmax_per_second = {RATE}\n\
             probe_timeout = \"1s\"\nearly_probe_interval = \"0s\"\n\n\
             [otlp]\nprotocol = \"http/protobuf\"\nspan_flush_interval = \"100ms\"\nexport_interval = \"300ms\"\n",
            pool.join(", ")
        ),
    );
    let url = receiver.http_url();
    let mut agent = Agent::start_in(
        &ns,
        &[
            "--config",
            &config,
            "--checks",
            "on",
            "--otlp-endpoint",
            &url,
        ],
    );
    let pid = agent.pid();
    // A client uses the target (and only the target).
    ns.run("scraper", move || {
        TcpStream::connect(target_dst).expect("target accepts");
    });
    // Let background checks run, then kill a member nobody uses.
    let _ = agent.collect_for(Duration::from_secs(3));
    drop(doomed);
    let evict = agent.wait_for(
        "evict of the idle dead member",
        Duration::from_secs(30),
        |v| v["type"] == "evict" && v["dst"] == doomed_dst.to_string(),
    );
    assert_eq!(evict["reason"], "refused", "{evict}");
    assert_eq!(
        evict["trigger"]["comm"], "connmon",
        "evicted by a probe: {evict}"
    );
    assert_eq!(evict["trigger"]["pid"].as_u64().map(|p| p > 0), Some(true));
    // OTLP counts probes apart (`connmon.probes`) and makes no span of them: the
    // refused probe that evicted the member would otherwise be a `tcp.connect` span.
    let refused = receiver.wait_for_point(
        "connmon.probes",
        &[("outcome", Otlp::str("refused"))],
        Duration::from_secs(10),
        |p| p.value >= 1.0,
    );
    assert_eq!(
        refused.attr("role"),
        Some(&Otlp::str("proxy")),
        "{refused:?}"
    );
    receiver.wait_for_point(
        "connmon.probes",
        &[("outcome", Otlp::str("established"))],
        Duration::from_secs(10),
        |p| p.value >= 5.0,
    );
    let _ = agent.collect_for(Duration::from_secs(2));
    let (ok, lines) = agent.stop();
    assert!(ok);
    let doomed_port = Otlp::Int(i64::from(doomed_dst.port()));
    assert!(
        !receiver.spans().iter().any(|s| s.span.name == "tcp.connect"
            && s.attr("network.peer.port") == Some(doomed_port.clone())),
        "a probe became a tcp.connect span"
    );

    assert!(
        !lines
            .iter()
            .any(|l| l["probe"] == true && l["dst"] == target_dst.to_string()),
        "a target was probed"
    );
    assert!(
        lines.iter().any(
            |l| is_connect(l, "established", &target_dst.to_string(), ns.inode)
                && l["probe"].is_null()
        ),
        "the client's own connect is reported without the probe flag"
    );
    // Every probe's SYN time (outcome time minus handshake duration): no one-second
    // window holds more than max_per_second (one extra allowed for the skew between
    // the scheduler's clock and the prober's connect()).
    let mut syns: Vec<u64> = lines
        .iter()
        .filter(|l| l["type"] == "connect" && l["probe"] == true && l["netns"] == ns.inode)
        .inspect(|l| assert_eq!(l["tgid"], pid, "{l}"))
        .map(|l| {
            l["ktime_ns"].as_u64().expect("ktime") - l["duration_us"].as_u64().expect("us") * 1_000
        })
        .collect();
    syns.sort_unstable();
    assert!(
        syns.len() >= 2 * RATE,
        "background checks ran: {} probes",
        syns.len()
    );
    let mut lo = 0;
    for hi in 0..syns.len() {
        while syns[hi] - syns[lo] >= 1_000_000_000 {
            lo += 1;
        }
        assert!(
            hi - lo < RATE + 1,
            "{} probes started within one second (max_per_second = {RATE})",
            hi - lo + 1
        );
    }
}

#[test]
fn with_checks_off_reinstatement_is_blind_and_sighup_turns_verification_on() {
    require_root();
    let ns = Netns::new("nochecks");
    let closed = closed_in(&ns);
    let dir = scratch_dir("nochecks");
    let pool = format!("pool = [\"{closed}\", \"10.200.0.10:80\"]");
    let config = write_file(
        &dir.join("connmon.toml"),
        &format!(
            "[policy]\noutage_min_destinations = 0\nbase_ejection = \"1s\"\njitter = 0.0\n{pool}\n\n\
             [checks]\nverify_before_reinstate = false\nearly_probe_interval = \"0s\"\nidle_after = \"0s\"\n"
        ),
    );
    let mut agent = Agent::start_in(&ns, &["--config", &config, "--checks", "on"]);
    ns.run("scraper", move || {
        TcpStream::connect(closed).expect_err("refused")
    });
    let reinstate = agent.wait_for("blind reinstatement", Duration::from_secs(10), |v| {
        v["type"] == "reinstate" && v["dst"] == closed.to_string()
    });
    assert!(reinstate.get("verified").is_none(), "{reinstate}");
    assert!(
        !agent
            .collect_for(Duration::from_millis(300))
            .iter()
            .any(|l| l["probe"] == true),
        "a probe was sent with checks off"
    );

    // SIGHUP turns verification on: the next ejection's expiry is verified by a probe,
    // which is refused, so the member is ejected again (count 2 → 3) and never
    // reinstated.
    write_file(
        Path::new(&config),
        &format!(
            "[policy]\noutage_min_destinations = 0\nbase_ejection = \"1s\"\njitter = 0.0\n{pool}\n\n\
             [checks]\nverify_before_reinstate = true\nearly_probe_interval = \"0s\"\n"
        ),
    );
    agent.signal(libc::SIGHUP);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !agent.stderr().contains("SIGHUP: checks reloaded") {
        assert!(
            std::time::Instant::now() < deadline,
            "no reload: {}",
            agent.stderr()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    ns.run("scraper", move || {
        TcpStream::connect(closed).expect_err("refused")
    });
    let evict = agent.wait_for("verified re-ejection", Duration::from_secs(15), |v| {
        v["type"] == "evict" && v["dst"] == closed.to_string() && v["ejection"]["count"] == 3
    });
    assert_eq!(evict["trigger"]["comm"], "connmon", "{evict}");
    let (_, lines) = agent.stop();
    assert_eq!(
        of(&lines, "reinstate", &closed.to_string()).len(),
        1,
        "only the blind reinstatement before SIGHUP"
    );
    let stats = lines
        .iter()
        .rev()
        .find(|l| l["type"] == "stats")
        .expect("final stats");
    assert!(stats["probes"]["verify"].as_u64() >= Some(1), "{stats}");
}
