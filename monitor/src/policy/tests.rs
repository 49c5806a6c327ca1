//! Scenario tests of the engine, replayed on an injected clock.

use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr},
    path::PathBuf,
    time::Duration,
};

use serde_json::Value;

use super::{ejection::Standing, *};
use crate::{
    clock::WallClock,
    source::event::{Attribution, Comm, Family, NetnsOwner},
    table::Destination,
};

pub(super) const SEC: u64 = 1_000_000_000;
const HOST_NETNS: u32 = 4_026_531_840;
pub(super) const BOOT: u64 = 1_000 * SEC;

fn wall() -> WallClock {
    WallClock::from_offset_ns(1_700_000_000_000_000_000)
}

pub(super) fn dst(last: u8) -> SocketAddr {
    SocketAddr::new(IpAddr::V4(Ipv4Addr::new(198, 51, 100, last)), 8080)
}

pub(super) fn engine(config: PolicyConfig) -> EjectionPolicy {
    engine_with_pool(config, PoolMembership::unconfigured())
}

fn engine_with_pool(config: PolicyConfig, pool: PoolMembership) -> EjectionPolicy {
    EjectionPolicy::new(config, pool, HOST_NETNS, wall(), 1).expect("valid config")
}

fn who(netns: u32) -> Attribution {
    Attribution {
        pid: 4242,
        tgid: 4240,
        comm: Comm::from("scraper"),
        cgroup_id: 77,
        netns,
        netns_owner: NetnsOwner::Initial,
        cgroup: None,
        trusted: true,
    }
}

pub(super) fn connect(to: SocketAddr, outcome: Outcome, at: u64) -> ConnectRecord {
    ConnectRecord {
        outcome,
        ktime_ns: at,
        start_ns: at.saturating_sub(300_000),
        family: Family::Ipv4,
        src: SocketAddr::from(([10, 0, 0, 1], 40000)),
        dst: to,
        who: who(HOST_NETNS),
        syn_retransmits: 0,
        errno: 0,
    }
}

fn retransmit(to: SocketAddr, retransmits: u32, at: u64) -> SynRetransmitRecord {
    SynRetransmitRecord {
        ktime_ns: at,
        start_ns: at.saturating_sub(SEC),
        family: Family::Ipv4,
        src: SocketAddr::from(([10, 0, 0, 1], 40001)),
        dst: to,
        who: who(HOST_NETNS),
        retransmits,
    }
}

/// Feeds one outcome and returns the decisions.
fn feed(p: &mut EjectionPolicy, to: SocketAddr, outcome: Outcome, at: u64) -> Vec<Decision> {
    let mut out = Vec::new();
    p.on_connect(&connect(to, outcome, at), at, &mut out);
    out
}

fn tick(p: &mut EjectionPolicy, at: u64) -> Vec<Decision> {
    let mut out = Vec::new();
    p.tick(at, &mut out);
    out
}

fn evictions(out: &[Decision]) -> Vec<&Eviction> {
    out.iter()
        .filter_map(|d| match d {
            Decision::Evict(e) => Some(e),
            _ => None,
        })
        .collect()
}

fn only_eviction(out: &[Decision]) -> &Eviction {
    let e = evictions(out);
    assert_eq!(e.len(), 1, "expected exactly one eviction in {out:?}");
    e[0]
}

fn findings(out: &[Decision]) -> Vec<&Finding> {
    out.iter()
        .filter_map(|d| match d {
            Decision::Diagnosis(d) => Some(&d.finding),
            _ => None,
        })
        .collect()
}

fn standing(p: &EjectionPolicy, to: SocketAddr) -> Standing {
    p.table()
        .get(to)
        .map(|d| d.annotation.clone())
        .expect("tracked")
}

#[test]
fn first_refused_connect_ejects_a_proxy() {
    let mut p = engine(PolicyConfig::default());
    let out = feed(&mut p, dst(44), Outcome::Refused, BOOT);
    let e = only_eviction(&out);
    assert_eq!(
        (e.reason, e.role, e.failure_mode),
        (Reason::Refused, Role::Proxy, Some(FailureMode::Reject))
    );
    assert_eq!(
        (e.evidence.attempts, e.evidence.refused, e.evidence.streak),
        (1, 1, 1)
    );
    assert_eq!(e.ejection.count, 1);
    assert!((30_000..=33_000).contains(&e.ejection.duration_ms));
    assert_eq!(
        e.trigger.as_ref().map(|t| (t.ktime_ns, t.pid)),
        Some((BOOT, 4242))
    );
    assert!(
        feed(&mut p, dst(44), Outcome::Refused, BOOT + SEC).is_empty(),
        "already ejected"
    );
    assert_eq!(p.ejected(), 1);
    assert!(p.take_state_changed() && !p.take_state_changed());
}

#[test]
fn unanswered_connects_eject_after_three_in_a_row() {
    let mut p = engine(PolicyConfig::default());
    let d = dst(1);
    for (i, outcome) in [
        Outcome::Timeout,
        Outcome::Timeout,
        Outcome::Established,
        Outcome::Timeout,
        Outcome::Abandoned,
    ]
    .into_iter()
    .enumerate()
    {
        assert!(
            feed(&mut p, d, outcome, BOOT + i as u64 * SEC).is_empty(),
            "a success resets the streak"
        );
    }
    let out = feed(&mut p, d, Outcome::Unreachable, BOOT + 6 * SEC);
    let e = only_eviction(&out);
    assert_eq!(
        (e.reason, e.failure_mode, e.evidence.streak),
        (Reason::Unreachable, Some(FailureMode::Drop), 3)
    );
    assert_eq!(
        (
            e.evidence.attempts,
            e.evidence.timeout,
            e.evidence.abandoned
        ),
        (6, 3, 1)
    );
}

#[test]
fn five_resets_without_a_new_connection_eject() {
    let mut p = engine(PolicyConfig::default());
    let d = dst(2);
    for i in 0..4 {
        assert!(feed(&mut p, d, Outcome::Reset, BOOT + i * SEC).is_empty());
    }
    assert!(feed(&mut p, d, Outcome::Established, BOOT + 4 * SEC).is_empty());
    for i in 5..9 {
        assert!(feed(&mut p, d, Outcome::Reset, BOOT + i * SEC).is_empty());
    }
    let out = feed(&mut p, d, Outcome::Reset, BOOT + 9 * SEC);
    let e = only_eviction(&out);
    assert_eq!(
        (e.reason, e.failure_mode, e.evidence.streak),
        (Reason::Reset, Some(FailureMode::Reject), 5)
    );
    assert_eq!(
        (e.evidence.attempts, e.evidence.reset),
        (1, 9),
        "a reset is not a connect attempt"
    );
}

#[test]
fn syn_retransmits_make_a_suspect_then_eject() {
    let mut p = engine(PolicyConfig::default());
    let d = dst(3);
    let mut out = Vec::new();
    p.on_syn_retransmit(&retransmit(d, 1, BOOT), BOOT, &mut out);
    let [Decision::Suspect(s)] = out.as_slice() else {
        panic!("expected one suspect, got {out:?}")
    };
    assert_eq!((s.dst, s.syn_retransmits, s.role), (d, 1, Role::Proxy));
    out.clear();
    p.on_syn_retransmit(
        &retransmit(d, 1, BOOT + SEC / 10),
        BOOT + SEC / 10,
        &mut out,
    );
    assert!(out.is_empty(), "one suspect per episode");
    p.on_syn_retransmit(&retransmit(d, 2, BOOT + 3 * SEC), BOOT + 3 * SEC, &mut out);
    let e = only_eviction(&out);
    assert_eq!(
        (e.reason, e.failure_mode, e.evidence.streak),
        (Reason::SynRetransmits, Some(FailureMode::Drop), 2)
    );
    assert_eq!(e.evidence.syn_retransmits, 3);
}

#[test]
fn failure_ratio_ejects_with_enough_attempts() {
    let config = PolicyConfig {
        consecutive_timeouts: 10,
        ..PolicyConfig::default()
    };
    let mut p = engine(config);
    let d = dst(4);
    let pattern = [
        Outcome::Established,
        Outcome::Timeout,
        Outcome::Timeout,
        Outcome::Timeout,
        Outcome::Timeout,
    ];
    let mut decided = Vec::new();
    for i in 0..20u64 {
        decided.push(feed(&mut p, d, pattern[(i % 5) as usize], BOOT + i * SEC));
    }
    assert!(
        decided[..19].iter().all(Vec::is_empty),
        "15/19 is below 0.8"
    );
    let e = only_eviction(&decided[19]);
    assert_eq!(
        (e.reason, e.evidence.attempts, e.evidence.timeout),
        (Reason::FailureRatio, 20, 16)
    );
}

#[test]
fn failures_outside_the_ratio_window_do_not_count() {
    let config = PolicyConfig {
        consecutive_timeouts: 0,
        ratio_min_attempts: 4,
        ..PolicyConfig::default()
    };
    let mut p = engine(config);
    let d = dst(5);
    for i in 0..3 {
        assert!(feed(&mut p, d, Outcome::Timeout, BOOT + i * SEC).is_empty());
    }
    assert!(
        feed(&mut p, d, Outcome::Timeout, BOOT + 120 * SEC).is_empty(),
        "old failures aged out"
    );
}

#[test]
fn expiry_reinstates_and_probation_re_ejects_with_a_longer_term() {
    let mut p = engine(PolicyConfig::default());
    let d = dst(6);
    for i in 0..3 {
        feed(&mut p, d, Outcome::Timeout, BOOT + i * SEC);
    }
    let first = standing(&p, d).ejected.expect("ejected");
    assert_eq!(p.next_deadline(), Some(first.until_ns));
    assert!(tick(&mut p, first.until_ns - 1).is_empty());
    let out = tick(&mut p, first.until_ns);
    let [Decision::Reinstate(r)] = out.as_slice() else {
        panic!("expected a reinstate, got {out:?}")
    };
    assert_eq!(r.ejected_ms, (first.until_ns - first.since_ns) / 1_000_000);
    assert!(standing(&p, d).probation);

    let at = first.until_ns + SEC;
    let e = only_eviction(&feed(&mut p, d, Outcome::Timeout, at)).clone();
    assert_eq!(
        (e.ejection.count, e.evidence.streak),
        (2, 1),
        "one failure in probation re-ejects"
    );
    assert!((60_000..=66_000).contains(&e.ejection.duration_ms));

    let second = standing(&p, d).ejected.expect("ejected");
    tick(&mut p, second.until_ns);
    assert!(feed(&mut p, d, Outcome::Established, second.until_ns + SEC).is_empty());
    assert!(!standing(&p, d).probation, "a success ends probation");
    assert!(feed(&mut p, d, Outcome::Timeout, second.until_ns + 2 * SEC).is_empty());
}

#[test]
fn ejection_count_decays_while_healthy() {
    let config = PolicyConfig {
        jitter: 0.0,
        ..PolicyConfig::default()
    };
    let mut p = engine(config);
    let d = dst(7);
    let mut at = BOOT;
    for _ in 0..2 {
        feed(&mut p, d, Outcome::Refused, at);
        at = standing(&p, d).ejected.expect("ejected").until_ns;
        tick(&mut p, at);
    }
    assert_eq!(standing(&p, d).ejection_count, 2);
    feed(&mut p, d, Outcome::Established, at + SEC);
    let e = only_eviction(&feed(&mut p, d, Outcome::Refused, at + 31 * SEC)).clone();
    assert_eq!(
        (e.ejection.count, e.ejection.duration_ms),
        (2, 60_000),
        "one base period: 3 - 1"
    );

    at = standing(&p, d).ejected.expect("ejected").until_ns;
    tick(&mut p, at);
    feed(&mut p, d, Outcome::Established, at + SEC);
    tick(&mut p, at + 61 * SEC);
    assert_eq!(
        standing(&p, d).ejection_count,
        0,
        "two base periods decay two"
    );
    let e = only_eviction(&feed(&mut p, d, Outcome::Refused, at + 62 * SEC)).clone();
    assert_eq!((e.ejection.count, e.ejection.duration_ms), (1, 30_000));
}

#[test]
fn percentage_guard_keeps_half_the_pool_in_rotation() {
    let pool = PoolMembership::parse(
        "198.51.100.1:8080\n198.51.100.2:8080\n198.51.100.3:8080\n198.51.100.4:8080\n",
    )
    .expect("pool");
    let mut p = engine_with_pool(PolicyConfig::default(), pool);
    assert_eq!(
        p.known_members(),
        4,
        "members named by address are known before traffic"
    );
    assert_eq!(
        evictions(&feed(&mut p, dst(1), Outcome::Refused, BOOT)).len(),
        1
    );
    assert_eq!(
        evictions(&feed(&mut p, dst(2), Outcome::Refused, BOOT)).len(),
        1
    );
    let out = feed(&mut p, dst(3), Outcome::Refused, BOOT);
    assert!(evictions(&out).is_empty());
    assert!(matches!(
        findings(&out).as_slice(),
        [Finding::EjectionGuard {
            ejected: 2,
            known_members: 4,
            max_ejection_percent: 50,
            ..
        }]
    ));
    assert!(
        feed(&mut p, dst(4), Outcome::Refused, BOOT + SEC).is_empty(),
        "guard notice is rate-limited"
    );
    assert_eq!(p.ejected(), 2);

    let until = standing(&p, dst(1)).ejected.expect("ejected").until_ns;
    tick(&mut p, until);
    let e = only_eviction(&feed(&mut p, dst(3), Outcome::Refused, until + SEC)).clone();
    assert_eq!(e.dst, dst(3), "room again after a reinstatement");
}

#[test]
fn guard_with_unconfigured_pool_counts_seen_destinations_and_allows_one() {
    let mut p = engine(PolicyConfig::default());
    assert_eq!(
        evictions(&feed(&mut p, dst(1), Outcome::Refused, BOOT)).len(),
        1,
        "at least one may go"
    );
    let out = feed(&mut p, dst(2), Outcome::Refused, BOOT);
    assert!(evictions(&out).is_empty(), "1 of 2 is already 50 %");
    for i in 3..=6 {
        feed(&mut p, dst(i), Outcome::Established, BOOT + SEC);
    }
    assert_eq!(p.known_members(), 6);
    assert_eq!(
        evictions(&feed(&mut p, dst(2), Outcome::Refused, BOOT + 2 * SEC)).len(),
        1
    );
}

#[test]
fn zero_percent_disables_automatic_ejection_but_not_manual() {
    let config = PolicyConfig {
        max_ejection_percent: 0,
        ..PolicyConfig::default()
    };
    let mut p = engine(config);
    assert!(evictions(&feed(&mut p, dst(1), Outcome::Refused, BOOT)).is_empty());
    let mut out = Vec::new();
    assert!(p.evict_manual(dst(1), Duration::from_secs(5), BOOT, &mut out));
    assert_eq!(only_eviction(&out).reason, Reason::Manual);
}

#[test]
fn local_outage_is_diagnosed_once_and_holds_back_ejections() {
    let config = PolicyConfig {
        max_ejection_percent: 100,
        ..PolicyConfig::default()
    };
    let mut p = engine(config);
    for i in 1..=4 {
        assert_eq!(
            evictions(&feed(&mut p, dst(i), Outcome::Refused, BOOT)).len(),
            1
        );
    }
    let out = feed(&mut p, dst(5), Outcome::Refused, BOOT + SEC);
    assert!(
        evictions(&out).is_empty(),
        "no new ejection during an outage"
    );
    assert!(matches!(
        findings(&out).as_slice(),
        [Finding::LocalOutage {
            destinations: 5,
            failing: 5,
            window_ms: 10_000
        }]
    ));
    assert!(
        feed(&mut p, dst(6), Outcome::Refused, BOOT + 2 * SEC).is_empty(),
        "once per episode"
    );
    tick(&mut p, BOOT + 13 * SEC);
    assert_eq!(
        evictions(&feed(&mut p, dst(7), Outcome::Refused, BOOT + 14 * SEC)).len(),
        1,
        "outage over"
    );
}

#[test]
fn refused_loopback_from_another_namespace_is_a_localhost_trap() {
    let mut p = engine(PolicyConfig::default());
    let loopback: SocketAddr = "127.0.0.1:8080".parse().expect("addr");
    let mut rec = connect(loopback, Outcome::Refused, BOOT);
    rec.who.netns = 4_026_532_999;
    let mut out = Vec::new();
    p.on_connect(&rec, BOOT, &mut out);
    let trap = out.iter().find_map(|d| match d {
        Decision::Diagnosis(d) => Some(d),
        _ => None,
    });
    let trap = trap.expect("a localhost_trap diagnosis");
    assert_eq!(
        trap.finding,
        Finding::LocalhostTrap {
            dst: loopback,
            pid: 4242,
            tgid: 4240,
            comm: Comm::from("scraper"),
            netns: 4_026_532_999,
            cgroup_id: 77,
            origin: None,
            trusted: true,
        }
    );
    assert!(!trap.hint.is_empty() && !trap.hint.contains('\n'));

    let count = |p: &mut EjectionPolicy, rec: &ConnectRecord, at: u64| {
        let mut out = Vec::new();
        p.on_connect(rec, at, &mut out);
        findings(&out)
            .iter()
            .filter(|f| matches!(f, Finding::LocalhostTrap { .. }))
            .count()
    };
    assert_eq!(
        count(&mut p, &rec, BOOT + SEC),
        0,
        "rate-limited per namespace and destination"
    );
    assert_eq!(
        count(&mut p, &rec, BOOT + 61 * SEC),
        1,
        "reported again after the interval"
    );
    let mut v6 = rec.clone();
    v6.dst = "[::1]:8080".parse().expect("addr");
    assert_eq!(count(&mut p, &v6, BOOT + 62 * SEC), 1);
    let mut host = rec.clone();
    host.who.netns = HOST_NETNS;
    host.dst = "127.0.0.2:9".parse().expect("addr");
    assert_eq!(
        count(&mut p, &host, BOOT + 63 * SEC),
        0,
        "the host's own loopback is no trap"
    );
    let mut remote = rec.clone();
    remote.dst = dst(9);
    assert_eq!(count(&mut p, &remote, BOOT + 64 * SEC), 0);
}

#[test]
fn targets_are_tracked_but_ejected_only_when_configured() {
    let pool = PoolMembership::parse("198.51.100.1:8080").expect("pool");
    let mut p = engine_with_pool(PolicyConfig::default(), pool.clone());
    assert!(feed(&mut p, dst(2), Outcome::Refused, BOOT).is_empty());
    assert_eq!(p.table().get(dst(2)).map(Destination::attempts), Some(1));
    let mut out = Vec::new();
    p.on_syn_retransmit(&retransmit(dst(2), 1, BOOT), BOOT, &mut out);
    assert!(out.is_empty(), "no suspect for a target");

    let config = PolicyConfig {
        evict_targets: true,
        ..PolicyConfig::default()
    };
    let mut p = engine_with_pool(config, pool);
    let e = only_eviction(&feed(&mut p, dst(2), Outcome::Refused, BOOT)).clone();
    assert_eq!(e.role, Role::Target);
}

#[test]
fn manual_ejection_shares_the_bookkeeping() {
    let mut p = engine(PolicyConfig::default());
    let d = dst(8);
    let mut out = Vec::new();
    assert!(p.evict_manual(d, Duration::from_secs(5), BOOT, &mut out));
    let e = only_eviction(&out).clone();
    assert_eq!(
        (
            e.reason,
            e.ejection.count,
            e.ejection.duration_ms,
            e.trigger
        ),
        (Reason::Manual, 1, 5_000, None)
    );
    out.clear();
    assert!(p.reinstate_manual(d, BOOT + 2 * SEC, &mut out));
    assert!(matches!(
        out.as_slice(),
        [Decision::Reinstate(Reinstatement {
            ejected_ms: 2_000,
            ..
        })]
    ));
    assert!(
        !p.reinstate_manual(d, BOOT + 3 * SEC, &mut out),
        "not ejected any more"
    );
    assert_eq!(p.next_deadline(), None);
    let e = only_eviction(&feed(&mut p, d, Outcome::Refused, BOOT + 4 * SEC)).clone();
    assert_eq!(
        e.ejection.count, 2,
        "probation after a manual reinstate, and the count kept"
    );
}

#[test]
fn replacing_the_pool_keeps_table_state() {
    let mut p = engine(PolicyConfig::default());
    feed(&mut p, dst(1), Outcome::Established, BOOT);
    feed(&mut p, dst(2), Outcome::Established, BOOT);
    p.set_pool(PoolMembership::parse("198.51.100.1:8080").expect("pool"));
    let snap = p.snapshot(BOOT + SEC);
    let roles: Vec<(SocketAddr, Role, u64)> = snap
        .destinations
        .iter()
        .map(|v| (v.dst, v.role, v.attempts))
        .collect();
    assert_eq!(roles, [(dst(1), Role::Proxy, 1), (dst(2), Role::Target, 1)]);
    assert_eq!(p.known_members(), 1);
}

#[test]
fn full_table_keeps_ejected_destinations() {
    let config = PolicyConfig {
        max_destinations: 3,
        max_ejection_percent: 100,
        ..PolicyConfig::default()
    };
    let mut p = engine(config);
    feed(&mut p, dst(1), Outcome::Refused, BOOT);
    for i in 2..=9 {
        feed(
            &mut p,
            dst(i),
            Outcome::Established,
            BOOT + u64::from(i) * SEC,
        );
    }
    assert_eq!(p.table().len(), 3);
    assert!(
        standing(&p, dst(1)).ejected.is_some(),
        "ejected entries stay"
    );
    assert!(p.table().get(dst(9)).is_some());
    assert_eq!(p.known_members(), 3, "the guard's count follows the table");
}

/// The compact core of an entry (the table docs and the README's "Ejection and guards"
/// section give this figure): 72 bytes since the histogram, ratio window and top lists
/// moved into the lazily allocated detail (before: 712 bytes, bound 800). The detail is
/// bounded too, as it was when it was inline.
#[test]
fn destination_entry_memory_is_as_documented() {
    let size = size_of::<Destination<Standing>>();
    assert!(
        size <= 72,
        "Destination<Standing> is {size} bytes; update the table docs"
    );
    let detail = crate::table::detail_size();
    assert!(
        detail <= 640,
        "the detail is {detail} bytes; update the table docs"
    );
}

fn temp_path(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("connmon-policy-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir.join("state.json")
}

#[test]
fn state_file_round_trip_restores_ejections_and_history() {
    let path = temp_path("round-trip");
    let config = PolicyConfig {
        max_ejection_percent: 100,
        ..PolicyConfig::default()
    };
    let mut p = engine(config.clone());
    feed(&mut p, dst(1), Outcome::Refused, BOOT);
    let mut out = Vec::new();
    p.evict_manual(dst(2), Duration::from_secs(1), BOOT, &mut out);
    tick(&mut p, BOOT + 2 * SEC);
    p.save_state(&path, BOOT + 2 * SEC).expect("save");
    let until = standing(&p, dst(1)).ejected.expect("ejected").until_ns;

    // A restart: a different monotonic origin, the same wall clock.
    let shift = 500 * SEC;
    let restarted = WallClock::from_offset_ns(1_700_000_000_000_000_000 - i128::from(shift));
    let mut q = EjectionPolicy::new(
        config,
        PoolMembership::unconfigured(),
        HOST_NETNS,
        restarted,
        2,
    )
    .expect("config");
    let mut out = Vec::new();
    let report = q
        .load_state(&path, BOOT + shift + 3 * SEC, &mut out)
        .expect("load");
    assert_eq!(
        (
            report.found,
            report.restored,
            report.reinstated,
            report.history
        ),
        (true, 1, 0, 1)
    );
    assert!(out.is_empty());
    let restored = standing(&q, dst(1)).ejected.expect("still ejected");
    assert_eq!(
        (restored.until_ns / 1_000_000, restored.reason),
        ((until + shift) / 1_000_000, Reason::Refused)
    );
    let history = standing(&q, dst(2));
    assert_eq!(
        (history.ejection_count, history.probation, history.ejected),
        (1, true, None)
    );
    assert_eq!(q.next_deadline(), Some(restored.until_ns));
    let _ = std::fs::remove_dir_all(path.parent().unwrap_or(&path));
}

#[test]
fn ejections_expired_while_down_are_reinstated_on_load() {
    let path = temp_path("expired");
    let mut p = engine(PolicyConfig::default());
    feed(&mut p, dst(1), Outcome::Refused, BOOT);
    p.save_state(&path, BOOT).expect("save");
    let mut q = engine(PolicyConfig::default());
    let mut out = Vec::new();
    let report = q
        .load_state(&path, BOOT + 3_600 * SEC, &mut out)
        .expect("load");
    assert_eq!((report.restored, report.reinstated), (0, 1));
    assert!(
        matches!(out.as_slice(), [Decision::Reinstate(r)] if r.dst == dst(1) && r.ejected_ms == 3_600_000)
    );
    assert!(standing(&q, dst(1)).probation);
    assert_eq!(q.ejected(), 0);
    let _ = std::fs::remove_dir_all(path.parent().unwrap_or(&path));
}

#[test]
fn corrupt_missing_or_foreign_state_files_give_an_error_and_empty_state() {
    let path = temp_path("corrupt");
    let mut p = engine(PolicyConfig::default());
    let mut out = Vec::new();
    assert_eq!(
        p.load_state(&path, BOOT, &mut out)
            .expect("missing is fine"),
        LoadReport::default()
    );

    let dir = path.parent().expect("dir");
    std::fs::create_dir_all(dir).expect("mkdir");
    for (content, want) in [
        ("{\"version\":1,\"destinations\":[", "is corrupt"),
        ("\u{0}\u{1}garbage", "is corrupt"),
        (
            "{\"version\":1,\"saved_at\":\"x\",\"destinations\":[{\"dst\":\"nonsense\"}]}",
            "is corrupt",
        ),
        (
            "{\"version\":99,\"saved_at\":\"x\",\"destinations\":[]}",
            "has version 99",
        ),
    ] {
        std::fs::write(&path, content).expect("write");
        let err = p.load_state(&path, BOOT, &mut out).expect_err("bad file");
        assert!(err.to_string().contains(want), "{err}");
        assert!(p.table().is_empty() && out.is_empty());
    }
    std::fs::remove_file(&path).expect("rm");
    std::fs::create_dir(&path).expect("a directory where the file should be");
    assert!(matches!(
        p.load_state(&path, BOOT, &mut out),
        Err(StateError::Read { .. })
    ));
    let _ = std::fs::remove_dir_all(dir);
}

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

/// The attack of issue #10: an unprivileged user's own network namespace (a child user
/// namespace) with a pool member's address on its loopback. Reported, never evidence.
#[test]
fn connects_from_a_rootless_namespace_move_nothing() {
    let pool = PoolMembership::parse(
        "198.51.100.1:8080\n198.51.100.2:8080\n198.51.100.3:8080\n198.51.100.4:8080",
    )
    .expect("pool");
    let mut p = engine_with_pool(PolicyConfig::default(), pool);
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

    let config = PolicyConfig {
        evict_targets: true,
        ..PolicyConfig::default()
    };
    let mut p = engine(config);
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
