//! The JSON shapes of decisions and of the snapshot, as docs/protocol.md documents them.

use super::*;

fn json(decision: &Decision) -> serde_json::Map<String, Value> {
    let text = serde_json::to_string(decision).expect("serialize");
    assert!(!text.contains('\n'));
    match serde_json::from_str(&text).expect("valid json") {
        Value::Object(map) => map,
        other => panic!("not an object: {other}"),
    }
}

fn keys(map: &serde_json::Map<String, Value>) -> Vec<&str> {
    let mut k: Vec<&str> = map.keys().map(String::as_str).collect();
    k.sort_unstable();
    k
}

#[test]
fn decisions_serialize_to_the_documented_shapes() {
    let pool = PoolMembership::parse("198.51.100.1:8080").expect("pool");
    let mut p = engine_with_pool(PolicyConfig::default(), pool);
    let mut out = Vec::new();
    p.on_syn_retransmit(&retransmit(dst(1), 1, BOOT), BOOT, &mut out);
    p.on_syn_retransmit(&retransmit(dst(1), 2, BOOT + SEC), BOOT + SEC, &mut out);
    let mut trap = connect(
        "127.0.0.1:80".parse().expect("addr"),
        Outcome::Refused,
        BOOT + SEC,
    );
    trap.who.netns = 7;
    p.on_connect(&trap, BOOT + SEC, &mut out);
    p.tick(BOOT + 3_600 * SEC, &mut out);
    for d in &mut out {
        d.stamp(BOOT + SEC + 57_000, &wall());
    }
    let types: Vec<String> = out
        .iter()
        .map(|d| json(d)["type"].as_str().unwrap_or_default().to_owned())
        .collect();
    assert_eq!(types, ["suspect", "evict", "diagnosis", "reinstate"]);

    let suspect = json(&out[0]);
    assert_eq!(
        keys(&suspect),
        [
            "detect_us",
            "dst",
            "role",
            "syn_retransmits",
            "trigger",
            "ts",
            "type"
        ]
    );
    assert_eq!(suspect["dst"], "198.51.100.1:8080");

    let evict = json(&out[1]);
    assert_eq!(
        keys(&evict),
        [
            "detect_us",
            "dst",
            "ejection",
            "evidence",
            "failure_mode",
            "reason",
            "role",
            "trigger",
            "ts",
            "type"
        ]
    );
    assert_eq!(
        (&evict["reason"], &evict["role"], &evict["failure_mode"]),
        (&"syn_retransmits".into(), &"proxy".into(), &"drop".into())
    );
    let evidence = evict["evidence"].as_object().expect("evidence");
    assert_eq!(
        keys(evidence),
        [
            "abandoned",
            "attempts",
            "refused",
            "reset",
            "streak",
            "syn_retransmits",
            "timeout",
            "unreachable"
        ]
    );
    let ejection = evict["ejection"].as_object().expect("ejection");
    assert_eq!(keys(ejection), ["count", "duration_ms", "until"]);
    assert!(
        ejection["until"]
            .as_str()
            .is_some_and(|u| u.starts_with("2023-11-14T22:") && u.ends_with('Z'))
    );
    let trigger = evict["trigger"].as_object().expect("trigger");
    assert_eq!(
        keys(trigger),
        ["cgroup_id", "comm", "ktime_ns", "netns", "pid"]
    );
    assert_eq!(
        (&trigger["comm"], &trigger["pid"]),
        (&"scraper".into(), &4242.into())
    );
    assert_eq!(evict["detect_us"], 57);
    assert_eq!(evict["ts"], "2023-11-14T22:30:01.000057000Z");

    let diagnosis = json(&out[2]);
    assert_eq!(
        keys(&diagnosis),
        [
            "cgroup_id",
            "comm",
            "detect_us",
            "dst",
            "hint",
            "kind",
            "netns",
            "pid",
            "tgid",
            "trusted",
            "ts",
            "type"
        ]
    );
    assert_eq!(
        (&diagnosis["kind"], &diagnosis["dst"]),
        (&"localhost_trap".into(), &"127.0.0.1:80".into())
    );

    let reinstate = json(&out[3]);
    assert_eq!(keys(&reinstate), ["dst", "ejected_ms", "ts", "type"]);

    let outage = Decision::Diagnosis(Diagnosis::new(
        Finding::LocalOutage {
            destinations: 5,
            failing: 5,
            window_ms: 10_000,
        },
        None,
    ));
    assert_eq!(
        keys(&json(&outage)),
        [
            "destinations",
            "failing",
            "hint",
            "kind",
            "type",
            "window_ms"
        ]
    );
    let v6 = Decision::Reinstate(Reinstatement {
        dst: "[2001:db8::1]:443".parse().expect("addr"),
        netns: None,
        ejected_ms: 1,
        verified: false,
        early: false,
        origin: None,
        ts: None,
    });
    assert_eq!(json(&v6)["dst"], "[2001:db8::1]:443");
}

#[test]
fn snapshot_reports_statistics_and_standing() {
    let mut p = engine(PolicyConfig::default());
    for i in 0..10 {
        feed(&mut p, dst(1), Outcome::Established, BOOT + i * SEC);
    }
    feed(&mut p, dst(2), Outcome::Refused, BOOT);
    let snap = p.snapshot(BOOT + 10 * SEC);
    assert_eq!(
        (
            snap.tracked,
            snap.ejected,
            snap.known_members,
            snap.max_ejected
        ),
        (2, 1, 2, 1)
    );
    let healthy = &snap.destinations[0];
    assert_eq!(
        (
            healthy.state,
            healthy.failure_ratio,
            healthy.window_attempts
        ),
        (DestinationState::Healthy, Some(0.0), 10)
    );
    let p50 = healthy.handshake_p50_us.unwrap_or_default();
    assert!((225..=375).contains(&p50), "p50 {p50}");
    let ejected = &snap.destinations[1];
    assert_eq!(
        (ejected.state, ejected.ejection_reason),
        (DestinationState::Ejected, Some(Reason::Refused))
    );
    assert!(ejected.ejected_until.is_some());
    let text = serde_json::to_string(&snap).expect("serialize");
    assert!(
        text.contains("\"top_processes\":[{\"tgid\":4240,\"comm\":\"scraper\",\"connects\":10}]"),
        "{text}"
    );
}
