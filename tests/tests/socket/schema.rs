//! Every message the agent sends validates against its schema in docs/schemas (all
//! generated from the protocol's, the events' and the snapshot's types), checked with the
//! `jsonschema` crate; the requests are built from the protocol's types and checked
//! against their schemas too.

use monitor::protocol::{self as wire, Request};

use super::*;

/// Checks `v` against docs/schemas/<name>.json and returns the name.
fn check_schema(v: &Value) -> String {
    let t = v["type"].as_str().unwrap_or_else(|| panic!("no type: {v}"));
    let name = match t {
        "hello" | "ok" | "error" | "pong" | "snapshot" | "lagged" | "bye" => t.to_owned(),
        _ => format!("event-{t}"),
    };
    validate(&name, v);
    if t == "diagnosis" {
        format!("diagnosis:{}", v["kind"].as_str().unwrap_or_default())
    } else {
        t.to_owned()
    }
}

/// A typed request as the line a client sends, checked against its cmd-*.json.
fn request(r: Request) -> Value {
    let v: Value = serde_json::from_str(&r.to_line(Some(&json!("x")))).expect("JSON");
    validate(&format!("cmd-{}", r.command().as_str()), &v);
    v
}

/// Panics unless `v` validates against docs/schemas/<name>.json.
fn validate(name: &str, v: &Value) {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../docs/schemas")
        .join(format!("{name}.json"));
    let schema: Value = serde_json::from_str(
        &std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display())),
    )
    .expect("schema is JSON");
    let validator = jsonschema::validator_for(&schema)
        .unwrap_or_else(|e| panic!("{} is not a valid schema: {e}", path.display()));
    let errors: Vec<String> = validator
        .iter_errors(v)
        .map(|e| format!("{}: {e}", e.instance_path()))
        .collect();
    assert!(
        errors.is_empty(),
        "{v}\ndoes not match {}:\n{}",
        path.display(),
        errors.join("\n")
    );
}

#[test]
fn every_message_matches_its_json_schema() {
    require_root();
    let ns = Netns::new("schema");
    // SYN retransmits at ~1 s and ~3 s: a `suspect` at the first, an `evict` at the second.
    ns.sysctl("net.ipv4.tcp_syn_retries", "6");
    // No percentage guard and no outage detection: host traffic must not withhold the
    // ejections this test needs to see.
    let (path, agent) = start_configured(
        "schema",
        "[policy]\nmax_ejection_percent = 100\noutage_min_destinations = 1000000\n",
        &["--stats-interval", "1s"],
    );
    let mut seen = std::collections::BTreeSet::new();
    let (mut c, hello) = Sock::open(&path);
    seen.insert(check_schema(&hello));
    let subscribe = request(Request::Subscribe(wire::Subscribe::default()));
    seen.insert(check_schema(&c.request(subscribe)));
    let (mut admin, _) = Sock::open(&path);
    for cmd in [
        request(Request::Ping(wire::Ping {})),
        request(Request::Pool(wire::Pool::List(wire::PoolList::default()))),
        request(Request::Evict(wire::Evict {
            dst: "10.9.0.3:80".into(),
            for_ms: Some(100_000),
        })),
        request(Request::Reinstate(wire::Reinstate {
            dst: "10.9.0.3:80".into(),
        })),
        request(Request::Reinstate(wire::Reinstate {
            dst: "10.9.0.3:80".into(),
        })),
    ] {
        seen.insert(check_schema(&admin.request(cmd)));
    }
    let dst = refused_dst(&ns);
    refuse_from(&ns, &dst, 1);
    let (port, _) = ns.run("trap", || {
        let port = closed_port("127.0.0.1");
        TcpStream::connect(("127.0.0.1", port)).expect_err("refused");
        port
    });
    let blackholed: std::net::SocketAddr = format!("{}:80", connmon_integration::BLACKHOLE_V4)
        .parse()
        .unwrap();
    ns.run("bh", move || {
        TcpStream::connect_timeout(&blackholed, Duration::from_millis(3500))
            .expect_err("blackholed")
    });
    let want = [
        "connect",
        "syn_retransmit",
        "evict",
        "reinstate",
        "suspect",
        "diagnosis:localhost_trap",
        "stats",
    ];
    let deadline = Instant::now() + Duration::from_secs(10);
    while !want.iter().all(|w| seen.contains(*w)) && Instant::now() < deadline {
        if let Some(Some(v)) = c.read_within() {
            seen.insert(check_schema(&v));
        }
    }
    let snapshot = request(Request::Snapshot(wire::Snapshot {}));
    seen.insert(check_schema(&admin.request(snapshot)));
    let (ok, printed) = agent.stop();
    assert!(ok);
    // What was still queued, then the goodbye.
    while let Some(v) = c.read() {
        seen.insert(check_schema(&v));
    }
    for v in &printed {
        check_schema(v);
    }
    for w in want
        .iter()
        .chain(&["hello", "ok", "pong", "error", "snapshot", "bye"])
    {
        assert!(
            seen.contains(*w),
            "no {w} seen (saw {seen:?}; trap port {port}); agent printed for {blackholed}:\n{}",
            printed
                .iter()
                .filter(|v| v["dst"] == blackholed.to_string())
                .map(Value::to_string)
                .collect::<Vec<_>>()
                .join("\n")
        );
    }
}
