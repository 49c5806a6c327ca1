//! Property tests: random outcome streams against the engine's invariants — the
//! percentage guard is never exceeded, every ejection ends in a reinstate within
//! `max_ejection × (1 + jitter)`, and targets are never ejected by default.

use std::{
    collections::HashMap,
    net::{IpAddr, Ipv4Addr, SocketAddr},
    time::Duration,
};

use proptest::prelude::*;

use super::{
    tests::{HOST_NETNS, connect, retransmit},
    *,
};
use crate::clock::WallClock;

const MS: u64 = 1_000_000;
const START: u64 = 1_000_000 * MS;
/// Destinations 0..POOL are pool members, the rest targets.
const POOL: u8 = 6;
const DESTINATIONS: u8 = 10;

#[derive(Clone, Debug)]
enum Event {
    Connect { dst: u8, outcome: Outcome },
    SynRetransmit { dst: u8, retransmits: u32 },
}

fn outcome() -> impl Strategy<Value = Outcome> {
    prop_oneof![
        3 => Just(Outcome::Established),
        2 => Just(Outcome::Refused),
        1 => Just(Outcome::Reset),
        2 => Just(Outcome::Timeout),
        1 => Just(Outcome::Abandoned),
        1 => Just(Outcome::Unreachable),
    ]
}

fn event() -> impl Strategy<Value = (u64, Event)> {
    let kind = prop_oneof![
        4 => (0..DESTINATIONS, outcome()).prop_map(|(dst, outcome)| Event::Connect { dst, outcome }),
        1 => (0..DESTINATIONS, 1..4u32).prop_map(|(dst, retransmits)| Event::SynRetransmit { dst, retransmits }),
    ];
    (0..3_000u64, kind)
}

fn addr(i: u8) -> SocketAddr {
    SocketAddr::new(IpAddr::V4(Ipv4Addr::new(203, 0, 113, i)), 3128)
}

fn pool() -> PoolMembership {
    PoolMembership::from_entries((0..POOL).map(|i| PoolEntry::Member(addr(i))))
}

fn config(max_ejection_percent: u32, outage_min_destinations: u32) -> PolicyConfig {
    PolicyConfig {
        base_ejection: Duration::from_secs(1),
        max_ejection: Duration::from_secs(8),
        jitter: 0.25,
        max_ejection_percent,
        outage_min_destinations,
        ratio_min_attempts: 5,
        ..PolicyConfig::default()
    }
}

/// Replays the events, ticking at every deadline, and calls `check` after each step.
fn replay(
    p: &mut EjectionPolicy,
    events: &[(u64, Event)],
    mut check: impl FnMut(&mut EjectionPolicy, &[Decision], u64),
) -> u64 {
    let mut now = START;
    let mut out = Vec::new();
    for (delay_ms, ev) in events {
        let at = now + delay_ms * MS;
        while let Some(deadline) = p.next_deadline().filter(|&d| d <= at) {
            out.clear();
            p.tick(deadline, &mut out);
            check(p, &out, deadline);
        }
        now = at;
        out.clear();
        match *ev {
            Event::Connect { dst, outcome } => {
                p.on_connect(&connect(addr(dst), outcome, now), now, &mut out);
            }
            Event::SynRetransmit { dst, retransmits } => {
                p.on_syn_retransmit(&retransmit(addr(dst), retransmits, now), now, &mut out);
            }
        }
        check(p, &out, now);
    }
    now
}

fn engine(config: PolicyConfig, seed: u64) -> EjectionPolicy {
    EjectionPolicy::new(
        config,
        pool(),
        HOST_NETNS,
        WallClock::from_offset_ns(0),
        seed,
    )
    .expect("valid config")
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    #[test]
    fn the_percentage_guard_is_never_exceeded(
        events in prop::collection::vec(event(), 1..300),
        percent in prop_oneof![Just(0u32), Just(10), Just(34), Just(50), Just(100)],
        seed in any::<u64>(),
    ) {
        let mut p = engine(config(percent, 0), seed);
        let mut violation = None;
        replay(&mut p, &events, |p, _, now| {
            let known = p.known_members();
            let allowed = guard::allowed_ejections(known, percent);
            if p.ejected() > allowed && violation.is_none() {
                violation = Some((now, p.ejected(), known, allowed));
            }
        });
        prop_assert!(violation.is_none(), "ejected/known/allowed: {violation:?}");
    }

    #[test]
    fn every_ejection_ends_in_a_reinstate_within_its_bound(
        events in prop::collection::vec(event(), 1..300),
        seed in any::<u64>(),
    ) {
        let config = config(100, 5);
        let bound_ms = ejection::Backoff::from_config(&config).bound_ns() / MS;
        let mut p = engine(config, seed);
        let mut open: HashMap<SocketAddr, u64> = HashMap::new();
        let mut problems = Vec::new();
        let mut on_step = |_: &mut EjectionPolicy, out: &[Decision], _: u64| {
            for d in out {
                match d {
                    Decision::Evict(e) => {
                        if e.ejection.duration_ms > bound_ms {
                            problems.push(format!("{} ejected for {} ms", e.dst, e.ejection.duration_ms));
                        }
                        if open.insert(e.dst, e.ejection.duration_ms).is_some() {
                            problems.push(format!("{} ejected twice", e.dst));
                        }
                    }
                    Decision::Reinstate(r) => match open.remove(&r.dst) {
                        Some(duration_ms) if r.ejected_ms <= duration_ms => {}
                        other => problems.push(format!("{} reinstated after {} ms, ejection {other:?}", r.dst, r.ejected_ms)),
                    },
                    _ => {}
                }
            }
        };
        let end = replay(&mut p, &events, &mut on_step);
        let mut out = Vec::new();
        while let Some(deadline) = p.next_deadline() {
            prop_assert!(deadline <= end + bound_ms * MS, "deadline past the bound");
            out.clear();
            p.tick(deadline, &mut out);
            on_step(&mut p, &out, deadline);
        }
        prop_assert!(problems.is_empty(), "{problems:?}");
        prop_assert!(open.is_empty(), "never reinstated: {open:?}");
        prop_assert_eq!(p.ejected(), 0);
    }

    #[test]
    fn targets_are_never_ejected_by_default(
        events in prop::collection::vec(event(), 1..300),
        seed in any::<u64>(),
    ) {
        let mut p = engine(config(100, 0), seed);
        let mut wrong = Vec::new();
        replay(&mut p, &events, |_, out, _| {
            for d in out {
                if let Decision::Evict(e) = d
                    && (e.role != Role::Proxy || pool().role(&e.dst) != Role::Proxy)
                {
                    wrong.push(e.dst);
                }
            }
        });
        prop_assert!(wrong.is_empty(), "targets ejected: {wrong:?}");
    }
}
