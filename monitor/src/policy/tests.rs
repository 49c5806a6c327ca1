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

mod shapes;
mod state_file;
mod trust;

pub(super) const SEC: u64 = 1_000_000_000;
pub(super) const HOST_NETNS: u32 = 4_026_531_840;
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

/// An engine with the default configuration changed by `f`.
pub(super) fn engine_with(f: impl FnOnce(&mut PolicyConfig)) -> EjectionPolicy {
    let mut config = PolicyConfig::default();
    f(&mut config);
    engine(config)
}

/// The pool `198.51.100.1-4:8080`.
fn pool_of_four() -> PoolMembership {
    PoolMembership::parse(
        "198.51.100.1:8080\n198.51.100.2:8080\n198.51.100.3:8080\n198.51.100.4:8080\n",
    )
    .expect("pool")
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

pub(super) fn retransmit(to: SocketAddr, retransmits: u32, at: u64) -> SynRetransmitRecord {
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

/// The one eviction in `out`, checked to be for `reason` (`mode`) after a streak of
/// `streak`.
fn only_eviction_for(
    out: &[Decision],
    reason: Reason,
    mode: Option<FailureMode>,
    streak: u32,
) -> &Eviction {
    let e = only_eviction(out);
    assert_eq!(
        (e.reason, e.failure_mode, e.evidence.streak),
        (reason, mode, streak)
    );
    e
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
    let e = only_eviction_for(&out, Reason::Unreachable, Some(FailureMode::Drop), 3);
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
    let e = only_eviction_for(&out, Reason::Reset, Some(FailureMode::Reject), 5);
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
    let e = only_eviction_for(&out, Reason::SynRetransmits, Some(FailureMode::Drop), 2);
    assert_eq!(e.evidence.syn_retransmits, 3);
}

#[test]
fn failure_ratio_ejects_with_enough_attempts() {
    let mut p = engine_with(|c| c.consecutive_timeouts = 10);
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
    let mut p = engine_with(|c| {
        c.consecutive_timeouts = 0;
        c.ratio_min_attempts = 4;
    });
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
    let mut p = engine_with(|c| c.jitter = 0.0);
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
    let mut p = engine_with_pool(PolicyConfig::default(), pool_of_four());
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
    let mut p = engine_with(|c| c.max_ejection_percent = 0);
    assert!(evictions(&feed(&mut p, dst(1), Outcome::Refused, BOOT)).is_empty());
    let mut out = Vec::new();
    assert!(p.evict_manual(dst(1), Duration::from_secs(5), BOOT, &mut out));
    assert_eq!(only_eviction(&out).reason, Reason::Manual);
}

#[test]
fn local_outage_is_diagnosed_once_and_holds_back_ejections() {
    let mut p = engine_with(|c| c.max_ejection_percent = 100);
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
    let mut p = engine_with(|c| {
        c.max_destinations = 3;
        c.max_ejection_percent = 100;
    });
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
