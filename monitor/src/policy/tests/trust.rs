//! Trusted evidence (issue #10): who may move a verdict — rootless namespaces,
//! another namespace's loopback, allow-lists — and namespace-local ejections across a
//! restart.

use super::*;

/// The attack of issue #10: an unprivileged user's own network namespace (a child user
/// namespace) with a pool member's address on its loopback. Reported, never evidence.
#[test]
fn connects_from_a_rootless_namespace_move_nothing() {
    let mut p = engine_with_pool(PolicyConfig::default(), pool_of_four());
    let mut out = Vec::new();
    for (i, last) in [1u8, 2, 3, 4, 1, 2, 3, 4, 5, 6].into_iter().enumerate() {
        let at = BOOT + i as u64 * SEC / 10;
        let mut rec = connect(dst(last), Outcome::Refused, at);
        rec.who.netns = 4_026_533_000;
        rec.who.netns_owner = NetnsOwner::Child;
        p.on_connect(&rec, at, &mut out);
        let mut retx = retransmit(dst(last), 3, at);
        retx.who = rec.who.clone();
        p.on_syn_retransmit(&retx, at, &mut out);
    }
    assert!(out.is_empty(), "no eviction, suspect or outage: {out:?}");
    assert_eq!(p.untrusted(), 20);
    assert_eq!(p.table().len(), 0, "untrusted connects leave no evidence");
    assert_eq!(p.snapshot(BOOT + SEC).untrusted_events, 20);

    let mut rec = connect(
        "127.0.0.1:8080".parse().expect("addr"),
        Outcome::Refused,
        BOOT,
    );
    rec.who.netns = 4_026_533_000;
    rec.who.netns_owner = NetnsOwner::Child;
    p.on_connect(&rec, BOOT, &mut out);
    assert!(
        matches!(
            findings(&out).as_slice(),
            [Finding::LocalhostTrap { trusted: false, .. }]
        ),
        "still diagnosed: {out:?}"
    );

    let config = PolicyConfig {
        evidence: EvidenceConfig {
            trust: Trust::All,
            ..EvidenceConfig::default()
        },
        ..PolicyConfig::default()
    };
    let mut p = engine(config);
    let mut rec = connect(dst(1), Outcome::Refused, BOOT);
    rec.who.netns_owner = NetnsOwner::Child;
    rec.who.netns = 4_026_533_000;
    let mut out = Vec::new();
    p.on_connect(&rec, BOOT, &mut out);
    assert_eq!(
        evictions(&out).len(),
        1,
        "trust = \"all\" is the old behaviour"
    );
}

/// A root-created namespace refusing its own 127.0.0.1:P while the host's listens: a
/// localhost trap, a separate destination, and the host's member is untouched.
#[test]
fn another_namespaces_loopback_is_its_own_destination() {
    let member: SocketAddr = "127.0.0.1:8080".parse().expect("addr");
    let pool = PoolMembership::parse("127.0.0.1:8080\n127.0.0.1:8081").expect("pool");
    let mut p = engine_with_pool(PolicyConfig::default(), pool);
    let container = 4_026_532_777;
    let mut out = Vec::new();
    for i in 0..5 {
        let mut rec = connect(member, Outcome::Refused, BOOT + i * SEC);
        rec.who.netns = container;
        p.on_connect(&rec, BOOT + i * SEC, &mut out);
    }
    assert!(evictions(&out).is_empty(), "{out:?}");
    assert_eq!(
        findings(&out)
            .iter()
            .filter(|f| matches!(f, Finding::LocalhostTrap { .. }))
            .count(),
        1
    );
    let theirs = DestinationKey {
        addr: member,
        netns: Some(container),
    };
    assert_eq!(p.table().get(theirs).map(Destination::attempts), Some(5));
    assert!(
        p.table().get(member).is_none(),
        "the host's member saw nothing"
    );
    assert_eq!(
        p.role(&theirs),
        Role::Target,
        "no pool controller can reach it"
    );
    let snapshot = p.snapshot(BOOT + 6 * SEC);
    let view = &snapshot.destinations[0];
    assert_eq!((view.dst, view.netns), (member, Some(container)));
    let v = serde_json::to_value(view).expect("json");
    assert_eq!(v["netns"], container);

    let e = only_eviction(&feed(&mut p, member, Outcome::Refused, BOOT + 7 * SEC)).clone();
    assert_eq!(
        (e.dst, e.netns),
        (member, None),
        "the host's own refusal evicts as before"
    );
    let json = serde_json::to_value(&e).expect("json");
    assert!(json.get("netns").is_none(), "{json}");

    let mut p = engine_with(|c| c.evict_targets = true);
    let mut rec = connect(member, Outcome::Refused, BOOT);
    rec.who.netns = container;
    let mut out = Vec::new();
    p.on_connect(&rec, BOOT, &mut out);
    let e = only_eviction(&out).clone();
    assert_eq!(e.netns, Some(container));
    let d = Decision::Evict(e);
    assert!(d.is_foreign_local(), "sinks acting on the host skip it");
    assert_eq!(serde_json::to_value(&d).expect("json")["netns"], container);
}

#[test]
fn allow_lists_limit_who_moves_verdicts() {
    let config = PolicyConfig {
        evidence: EvidenceConfig {
            cgroups: vec!["/system.slice/scrapyd.service".to_owned()],
            netns: vec![evidence::NetnsRef::Inode(4_026_532_500)],
            ..EvidenceConfig::default()
        },
        ..PolicyConfig::default()
    };
    let pool = PoolMembership::parse("198.51.100.0/24:8080").expect("pool");
    let mut p = engine_with_pool(config, pool);
    for last in 10..20 {
        // Healthy members, so that the percentage guard allows the next ejection.
        let mut ok = connect(dst(last), Outcome::Established, BOOT);
        ok.who.netns = 4_026_532_500;
        p.on_connect(&ok, BOOT, &mut Vec::new());
    }
    let mut out = Vec::new();
    let mut rec = connect(dst(1), Outcome::Refused, BOOT);
    rec.who.cgroup = Some(std::sync::Arc::new(
        crate::source::cgroup::CgroupOrigin::from_path(
            "/user.slice/user-1000.slice/session-2.scope",
        ),
    ));
    p.on_connect(&rec, BOOT, &mut out);
    assert!(out.is_empty(), "an unlisted cgroup in the host namespace");
    rec.who.cgroup = Some(std::sync::Arc::new(
        crate::source::cgroup::CgroupOrigin::from_path("/system.slice/scrapyd.service/worker"),
    ));
    p.on_connect(&rec, BOOT, &mut out);
    assert_eq!(evictions(&out).len(), 1, "a listed cgroup");
    let mut rec = connect(dst(2), Outcome::Refused, BOOT);
    rec.who.netns = 4_026_532_500;
    let mut out = Vec::new();
    p.on_connect(&rec, BOOT, &mut out);
    assert_eq!(evictions(&out).len(), 1, "a listed namespace");
    assert_eq!(p.untrusted(), 1);

    p.set_evidence(EvidenceScope::rootful(HOST_NETNS));
    let mut out = Vec::new();
    p.on_connect(&connect(dst(3), Outcome::Refused, BOOT), BOOT, &mut out);
    assert_eq!(evictions(&out).len(), 1, "a reloaded scope applies at once");
}

#[test]
fn namespace_local_ejections_survive_a_restart_with_their_namespace() {
    let dir = std::env::temp_dir().join(format!("connmon-evidence-state-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let path = dir.join("state.json");
    let config = PolicyConfig {
        evict_targets: true,
        ..PolicyConfig::default()
    };
    let member: SocketAddr = "127.0.0.1:8080".parse().expect("addr");
    let mut p = engine(config.clone());
    let mut rec = connect(member, Outcome::Refused, BOOT);
    rec.who.netns = 4_026_532_777;
    let mut out = Vec::new();
    p.on_connect(&rec, BOOT, &mut out);
    assert_eq!(evictions(&out).len(), 1);
    p.save_state(&path, BOOT).expect("saved");
    let text = std::fs::read_to_string(&path).expect("read");
    assert!(
        text.contains(r#""netns": 4026532777"#) || text.contains(r#""netns":4026532777"#),
        "{text}"
    );

    let mut q = engine(config);
    let mut out = Vec::new();
    let report = q.load_state(&path, BOOT + SEC, &mut out).expect("loaded");
    assert_eq!(report.restored, 1);
    let key = DestinationKey {
        addr: member,
        netns: Some(4_026_532_777),
    };
    assert!(
        q.table()
            .get(key)
            .is_some_and(|d| d.annotation.ejected.is_some())
    );
    assert!(q.table().get(member).is_none());
    std::fs::remove_dir_all(&dir).expect("cleanup");
}
