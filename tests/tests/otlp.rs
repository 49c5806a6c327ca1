//! Root integration tests for the OTLP exporter: the real agent sends to a receiver built
//! from the official OTLP protobufs (tonic gRPC services and an HTTP/protobuf endpoint),
//! while real connects in a network namespace fail. Spans carry the exact attributes,
//! metrics the exact counts (the test's destinations are pool members, so `role=proxy`
//! singles them out from the host's other traffic), evictions link to their trigger, and
//! export survives a collector that is away with bounded memory.

use std::{
    io::ErrorKind,
    net::{SocketAddr, TcpListener, TcpStream},
    path::Path,
    thread,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use connmon_integration::{
    Agent, BLACKHOLE_V4, LOCAL_V4, Netns, closed_port, is_connect,
    otlp_receiver::{ReceivedSpan, Receiver, Transport, Value},
    pending_connect, require_root, scratch_dir, write_file,
};
use opentelemetry_proto::tonic::trace::v1::{span::SpanKind, status::StatusCode};

/// A deadline for what the agent and the receiver do, ended as soon as it happens.
const WAIT: Duration = Duration::from_secs(30);

/// A config that exports quickly and ejects for one second.
fn config(dir: &Path, protocol: &str, extra_otlp: &str) -> String {
    write_file(
        &dir.join("connmon.toml"),
        &format!(
            "[policy]\nconsecutive_refused = 1\nbase_ejection = \"1s\"\nmax_ejection = \"1s\"\n\n\
             [otlp]\nprotocol = \"{protocol}\"\nspan_flush_interval = \"100ms\"\nexport_interval = \"300ms\"\n{extra_otlp}"
        ),
    )
}

fn port_of(s: &ReceivedSpan) -> Option<i64> {
    match s.attr("network.peer.port") {
        Some(Value::Int(p)) => Some(p),
        _ => None,
    }
}

fn is_connect_span(s: &ReceivedSpan, dst: SocketAddr) -> bool {
    s.span.name == "tcp.connect"
        && s.attr("network.peer.address") == Some(Value::Str(dst.ip().to_string()))
        && port_of(s) == Some(i64::from(dst.port()))
}

/// The agent with a control socket of its own, so that it runs beside other agents.
fn start_agent(args: &[&str]) -> Agent {
    let socket = scratch_dir("otlpsock").join("connmon.sock");
    let mut all = args.to_vec();
    all.extend(["--socket", socket.to_str().unwrap()]);
    Agent::start(&all)
}

fn now_unix_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
}

/// Checks the span of a failed connect against the agent's own JSON line for it.
fn assert_failed_connect_span(s: &ReceivedSpan, line: &serde_json::Value, want: &[(&str, Value)]) {
    assert_eq!(s.span.kind, SpanKind::Client as i32, "{s:?}");
    let status = s.span.status.as_ref().expect("status");
    assert_eq!(status.code, StatusCode::Error as i32, "{s:?}");
    let keys: Vec<String> = s.attrs().into_iter().map(|(k, _)| k).collect();
    let mut expected: Vec<String> = [
        "network.peer.address",
        "network.peer.port",
        "network.transport",
        "network.type",
        "error.type",
        "process.pid",
        "process.executable.name",
        "connmon.cgroup_id",
        "connmon.cgroup",
        "connmon.netns",
        "connmon.trusted",
        "connmon.role",
        "connmon.failure_mode",
        "connmon.syn_retransmits",
    ]
    .iter()
    .map(|k| k.to_string())
    .collect();
    expected.sort();
    assert_eq!(keys, expected, "exactly the documented attributes");
    for (k, v) in want {
        assert_eq!(s.attr(k).as_ref(), Some(v), "{k} of {:?}", s.attrs());
    }
    assert_eq!(s.attr("network.transport"), Some(Value::str("tcp")));
    assert_eq!(
        s.attr("process.pid"),
        Some(Value::Int(i64::from(std::process::id())))
    );
    assert_eq!(
        s.attr("connmon.cgroup_id"),
        Some(Value::Int(line["cgroup_id"].as_i64().unwrap()))
    );
    assert_eq!(
        s.attr("connmon.cgroup"),
        Some(Value::str(line["cgroup"].as_str().expect("cgroup path")))
    );
    assert_eq!(
        s.attr("connmon.netns"),
        Some(Value::Int(line["netns"].as_i64().unwrap()))
    );
    assert_eq!(s.attr("connmon.trusted"), Some(Value::Bool(true)));
    // Start = the SYN, end = the outcome, on the wall clock: the same interval as the line's.
    let (start, end) = (s.span.start_time_unix_nano, s.span.end_time_unix_nano);
    assert_eq!(
        (end - start) / 1_000,
        line["duration_us"].as_u64().unwrap(),
        "{s:?}\n{line}"
    );
    assert!(
        now_unix_ns().abs_diff(end) < 60_000_000_000,
        "end time is wall-clock time: {end}"
    );
}

/// The whole scenario over one transport: refused and abandoned connects, a sampled-out
/// success, an eviction and its reinstatement, and the metrics that count them.
fn scenario(protocol: &str, transport: Transport) {
    require_root();
    let ns = Netns::new(if transport == Transport::Grpc {
        "otlpg"
    } else {
        "otlph"
    });
    let receiver = Receiver::start();
    let ((listener, open, closed), _) = ns.run("setup", || {
        let l = TcpListener::bind((LOCAL_V4, 0)).unwrap();
        let open = l.local_addr().unwrap();
        let closed: SocketAddr = format!("{LOCAL_V4}:{}", closed_port(LOCAL_V4))
            .parse()
            .unwrap();
        (l, open, closed)
    });
    let dir = scratch_dir("otlp");
    let pool = write_file(
        &dir.join("pool.txt"),
        &format!("{open}\n{closed}\n10.200.0.10:80\n10.200.0.11:80\n"),
    );
    let url = if transport == Transport::Grpc {
        receiver.grpc_url()
    } else {
        receiver.http_url()
    };
    let cfg = config(&dir, protocol, "");
    let mut agent = start_agent(&["--config", &cfg, "--pool", &pool, "--otlp-endpoint", &url]);

    let blackholed: SocketAddr = format!("{BLACKHOLE_V4}:81").parse().unwrap();
    ns.run("otlpscraper", move || {
        for _ in 0..2 {
            drop(TcpStream::connect(open).expect("open member accepts"));
        }
        for _ in 0..3 {
            assert_eq!(
                TcpStream::connect(closed).unwrap_err().kind(),
                ErrorKind::ConnectionRefused
            );
        }
        // A connect the application gives up on after 1.5 s: one SYN retransmit at ~1 s.
        let _pending = pending_connect(blackholed);
        thread::sleep(Duration::from_millis(1500));
    });
    drop(listener);

    // Refused: the first one triggered the eviction.
    let first = agent.wait_for("refused line", WAIT, |v| {
        is_connect(v, "refused", &closed.to_string(), ns.inode)
    });
    let refused_spans = receiver.wait_for_spans("refused tcp.connect", 3, WAIT, |s| {
        is_connect_span(s, closed)
    });
    assert_eq!(refused_spans.len(), 3, "one span per refused connect");
    assert!(refused_spans.iter().all(|s| s.transport == transport));
    assert!(
        agent.stderr().contains("OTLP export on"),
        "{}",
        agent.stderr()
    );
    let first_span = refused_spans
        .iter()
        .min_by_key(|s| s.span.end_time_unix_nano)
        .unwrap();
    assert_failed_connect_span(
        first_span,
        &first,
        &[
            ("network.peer.address", Value::str(LOCAL_V4)),
            ("network.peer.port", Value::Int(i64::from(closed.port()))),
            ("network.type", Value::str("ipv4")),
            ("error.type", Value::str("connection_refused")),
            ("process.executable.name", Value::str("otlpscraper")),
            ("connmon.role", Value::str("proxy")),
            ("connmon.failure_mode", Value::str("reject")),
            ("connmon.syn_retransmits", Value::Int(0)),
        ],
    );

    // Abandoned, with its SYN retransmit as a span event.
    let line = agent.wait_for("abandoned line", WAIT, |v| {
        is_connect(v, "abandoned", &blackholed.to_string(), ns.inode)
    });
    let abandoned = receiver.wait_for_span("abandoned tcp.connect", WAIT, |s| {
        is_connect_span(s, blackholed)
    });
    assert_failed_connect_span(
        &abandoned,
        &line,
        &[
            ("network.peer.address", Value::str(BLACKHOLE_V4)),
            ("error.type", Value::str("connect_abandoned")),
            ("connmon.role", Value::str("target")),
            ("connmon.failure_mode", Value::str("drop")),
            ("connmon.syn_retransmits", Value::Int(1)),
        ],
    );
    let events = &abandoned.span.events;
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0].name, "syn_retransmit");
    let since_syn = events[0].time_unix_nano - abandoned.span.start_time_unix_nano;
    assert!(
        (800_000_000..2_500_000_000).contains(&since_syn),
        "first retransmit ~1 s after the SYN: {since_syn} ns"
    );

    // Successful connects are not exported at the default ratio of 0.
    assert!(
        !receiver.spans().iter().any(|s| is_connect_span(s, open)),
        "no span for an established connect"
    );

    // The eviction, linked to the span of the connect that triggered it, and the reinstatement.
    let evict_line = agent.wait_for("evict line", WAIT, |v| {
        v["type"] == "evict" && v["dst"] == closed.to_string()
    });
    let evict = receiver.wait_for_span("connmon.evict", WAIT, |s| {
        s.span.name == "connmon.evict" && port_of(s) == Some(i64::from(closed.port()))
    });
    assert_eq!(evict.attr("connmon.reason"), Some(Value::str("refused")));
    assert_eq!(evict.attr("connmon.role"), Some(Value::str("proxy")));
    assert_eq!(evict.attr("connmon.evidence.refused"), Some(Value::Int(1)));
    assert_eq!(evict.attr("connmon.ejection.count"), Some(Value::Int(1)));
    assert_eq!(
        evict.attr("connmon.trigger.comm"),
        Some(Value::str("otlpscraper"))
    );
    assert_eq!(evict_line["trigger"]["comm"], "otlpscraper");
    assert_eq!(evict.span.links.len(), 1, "{evict:?}");
    let link = &evict.span.links[0];
    let trigger = refused_spans
        .iter()
        .find(|s| s.span.span_id == link.span_id)
        .expect("the link names one of the refused connects' spans");
    assert_eq!(trigger.span.trace_id, link.trace_id);
    assert_eq!(
        trigger.span.end_time_unix_nano,
        refused_spans
            .iter()
            .map(|s| s.span.end_time_unix_nano)
            .min()
            .unwrap(),
        "the trigger is the first refused connect"
    );
    let reinstate = receiver.wait_for_span("connmon.reinstate", WAIT, |s| {
        s.span.name == "connmon.reinstate" && port_of(s) == Some(i64::from(closed.port()))
    });
    assert_eq!(
        reinstate.span.links.first().map(|l| &l.span_id),
        Some(&evict.span.span_id),
        "reinstatement links to its eviction"
    );

    // Metrics: exact counts for the test's pool members.
    let proxy = |outcome: &str| {
        vec![
            ("outcome", Value::str(outcome)),
            ("role", Value::str("proxy")),
        ]
    };
    let p = receiver.wait_for_point("connmon.connect.attempts", &proxy("refused"), WAIT, |p| {
        p.value >= 3.0
    });
    assert_eq!(
        (p.value, p.unit.as_str(), p.transport),
        (3.0, "{attempt}", transport)
    );
    let p = receiver.wait_for_point(
        "connmon.connect.attempts",
        &proxy("established"),
        WAIT,
        |p| p.value >= 2.0,
    );
    assert_eq!(p.value, 2.0);
    let h = receiver.wait_for_point(
        "connmon.connect.duration",
        &[("role", Value::str("proxy"))],
        WAIT,
        |p| p.value >= 2.0,
    );
    assert_eq!(h.value, 2.0, "two handshakes");
    assert_eq!(h.unit, "s");
    assert!(h.sum.unwrap() > 0.0 && h.sum.unwrap() < 1.0, "{h:?}");
    let p = receiver.wait_for_point(
        "connmon.evictions",
        &[("reason", Value::str("refused"))],
        WAIT,
        |p| p.value >= 1.0,
    );
    assert_eq!((p.value, p.unit.as_str()), (1.0, "{eviction}"));
    let p = receiver.wait_for_point("connmon.reinstatements", &[], WAIT, |p| p.value >= 1.0);
    assert_eq!(p.value, 1.0);
    receiver.wait_for_point("connmon.destinations.tracked", &[], WAIT, |p| {
        p.value >= 3.0
    });
    // Exported every 300 ms, the one-second ejection shows in the gauge, and then its end.
    receiver.wait_for_point("connmon.destinations.ejected", &[], WAIT, |p| {
        p.value == 0.0
    });
    assert!(
        receiver
            .points()
            .iter()
            .any(|p| p.name == "connmon.destinations.ejected" && p.value == 1.0),
        "the ejected gauge showed the ejection"
    );
    for name in [
        "connmon.events.lost",
        "connmon.subscribers.lagged",
        "connmon.export.dropped",
    ] {
        assert!(receiver.latest(name, &[]).is_some(), "{name} is exported");
    }

    let resource = receiver.resource();
    assert_eq!(resource.get("service.name"), Some(&Value::str("connmon")));
    assert!(
        matches!(resource.get("service.version"), Some(Value::Str(v)) if !v.is_empty()),
        "{resource:?}"
    );
    assert!(
        matches!(resource.get("host.name"), Some(Value::Str(v)) if !v.is_empty()),
        "{resource:?}"
    );
    if let Ok(id) = std::fs::read_to_string("/etc/machine-id") {
        assert_eq!(resource.get("host.id"), Some(&Value::str(id.trim())));
    }
    let other = if transport == Transport::Grpc {
        Transport::HttpProtobuf
    } else {
        Transport::Grpc
    };
    assert_eq!(
        receiver.requests(other),
        (0, 0),
        "everything came over {transport:?}"
    );
    let (ok, _) = agent.stop();
    assert!(ok, "connmon exited non-zero");
}

#[test]
fn grpc_spans_metrics_and_eviction_links() {
    scenario("grpc", Transport::Grpc);
}

#[test]
fn http_protobuf_spans_metrics_and_eviction_links() {
    scenario("http/protobuf", Transport::HttpProtobuf);
}

fn rss_kib(agent: &Agent) -> u64 {
    let status =
        std::fs::read_to_string(format!("/proc/{}/status", agent.pid())).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("the agent is gone (no VmRSS); stderr:\n{}", agent.stderr()))
}

/// Fails connects, one every 250 ms, until the span of one of them reaches the receiver
/// (right after a long outage the queue may still be full of older spans, and a new one
/// is then dropped, as it should be).
fn until_exported(ns: &Netns, receiver: &Receiver, what: &str) -> ReceivedSpan {
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut markers = Vec::new();
    while Instant::now() < deadline {
        let (marker, _) = ns.run("otlpmarker", || {
            let dst: SocketAddr = format!("127.0.0.1:{}", closed_port("127.0.0.1"))
                .parse()
                .unwrap();
            TcpStream::connect(dst).unwrap_err();
            dst
        });
        markers.push(marker);
        thread::sleep(Duration::from_millis(250));
        if let Some(span) = receiver
            .spans()
            .into_iter()
            .find(|s| markers.iter().any(|m| is_connect_span(s, *m)))
        {
            eprintln!("{what}: exported after {} attempt(s)", markers.len());
            return span;
        }
    }
    panic!("no {what} within 20 s ({} attempts)", markers.len());
}

/// `n` refused connects from inside `ns`, as fast as the kernel answers.
fn refuse_many(ns: &Netns, dst: SocketAddr, n: usize) {
    ns.run("otlpflood", move || {
        for _ in 0..n {
            assert_eq!(
                TcpStream::connect(dst).unwrap_err().kind(),
                ErrorKind::ConnectionRefused
            );
        }
    });
}

#[test]
fn collector_away_at_start_then_back_with_bounded_memory() {
    require_root();
    let ns = Netns::new("otlpdown");
    let dir = scratch_dir("otlpdown");
    // Nothing listens on this port until the receiver starts there.
    let port = closed_port("127.0.0.1");
    let cfg = config(
        &dir,
        "grpc",
        "span_queue_size = 256\nspan_batch_size = 64\nexport_timeout = \"500ms\"\n",
    );
    let url = format!("http://127.0.0.1:{port}");
    let mut agent = start_agent(&["--config", &cfg, "--otlp-endpoint", &url]);
    // The namespace's veth address, not its loopback: another namespace's loopback is
    // always a target, and the metrics below count candidates (role=proxy).
    let (flood_dst, _) = ns.run("setup", || -> SocketAddr {
        format!("{LOCAL_V4}:{}", closed_port(LOCAL_V4))
            .parse()
            .unwrap()
    });

    // The collector is away: failures keep flowing, the agent keeps running, memory stays flat.
    refuse_many(&ns, flood_dst, 500);
    thread::sleep(Duration::from_secs(1));
    let warm = rss_kib(&agent);
    let mut peak = warm;
    for _ in 0..5 {
        refuse_many(&ns, flood_dst, 1000);
        thread::sleep(Duration::from_millis(300));
        peak = peak.max(rss_kib(&agent));
    }
    eprintln!(
        "agent RSS with the collector away: {warm} KiB after 500 failures, at most {peak} KiB over 5000 more"
    );
    agent.wait_for("refused lines keep coming", WAIT, |v| {
        is_connect(v, "refused", &flood_dst.to_string(), ns.inode)
    });
    assert!(
        peak <= warm + 8 * 1024,
        "RSS grew from {warm} KiB to {peak} KiB over 5000 failures while the collector was away"
    );
    let stderr = agent.stderr();
    assert!(
        stderr.contains("OTLP export is losing telemetry"),
        "the loss is logged:\n{stderr}"
    );

    // The collector comes back on the same port: export resumes on its own.
    let receiver = Receiver::start_on(port, 0);
    let span = until_exported(&ns, &receiver, "a span after the collector returned");
    assert_eq!(span.transport, Transport::Grpc);
    assert_eq!(
        span.attr("error.type"),
        Some(Value::str("connection_refused"))
    );
    // What was lost while it was away is counted.
    let dropped = |reason: &str| {
        receiver
            .latest("connmon.export.dropped", &[("reason", Value::str(reason))])
            .map(|p| p.value)
            .unwrap_or(0.0)
    };
    receiver.wait_for_point(
        "connmon.export.dropped",
        &[("reason", Value::str("export_failed"))],
        WAIT,
        |p| p.value > 0.0,
    );
    assert!(
        dropped("export_failed") + dropped("queue_full") >= 1000.0,
        "most of 5500 spans were dropped and counted"
    );
    // Without a pool every destination is a candidate: role=proxy.
    let refused = receiver.wait_for_point(
        "connmon.connect.attempts",
        &[
            ("outcome", Value::str("refused")),
            ("role", Value::str("proxy")),
        ],
        WAIT,
        |p| p.value >= 5501.0,
    );
    assert!(
        refused.value >= 5501.0,
        "metrics are cumulative: nothing lost while away ({})",
        refused.value
    );

    // It goes away again mid-run and comes back: the broken connection is replaced.
    drop(receiver);
    refuse_many(&ns, flood_dst, 200);
    thread::sleep(Duration::from_secs(1));
    let receiver = Receiver::start_on(port, 0);
    until_exported(&ns, &receiver, "a span after the collector returned again");
    let (ok, _) = agent.stop();
    assert!(ok);
}

#[test]
fn shutdown_flushes_queued_spans_within_the_time_limit() {
    require_root();
    let ns = Netns::new("otlpexit");
    let receiver = Receiver::start();
    let dir = scratch_dir("otlpexit");
    // Nothing would be sent for a minute (spans) or an hour (metrics) but for the exit.
    let cfg = write_file(
        &dir.join("connmon.toml"),
        "[otlp]\nprotocol = \"http/protobuf\"\nspan_flush_interval = \"60s\"\nexport_interval = \"1h\"\nshutdown_timeout = \"1s\"\n",
    );
    let url = receiver.http_url();
    let mut agent = start_agent(&["--config", &cfg, "--otlp-endpoint", &url]);
    let (dst, _) = ns.run("otlpexit", || {
        let dst: SocketAddr = format!("{LOCAL_V4}:{}", closed_port(LOCAL_V4))
            .parse()
            .unwrap();
        TcpStream::connect(dst).unwrap_err();
        dst
    });
    agent.wait_for("refused line", WAIT, |v| {
        is_connect(v, "refused", &dst.to_string(), ns.inode)
    });
    // Longer than the shutdown time limit: that limit counts from the exit, not the start.
    thread::sleep(Duration::from_millis(1500));
    assert!(
        !receiver.spans().iter().any(|s| is_connect_span(s, dst)),
        "not sent before exit"
    );
    let stopping = Instant::now();
    let (ok, _) = agent.stop();
    let took = stopping.elapsed();
    assert!(ok, "connmon exited non-zero");
    assert!(took < Duration::from_secs(5), "exit took {took:?}");
    let span = receiver.wait_for_span("span flushed at exit", Duration::from_secs(1), |s| {
        is_connect_span(s, dst)
    });
    assert_eq!(span.transport, Transport::HttpProtobuf);
    // Without a pool every destination is a candidate: role=proxy.
    let p = receiver.wait_for_point(
        "connmon.connect.attempts",
        &[
            ("outcome", Value::str("refused")),
            ("role", Value::str("proxy")),
        ],
        Duration::from_secs(1),
        |p| p.value >= 1.0,
    );
    assert!(p.value >= 1.0);
}
