//! The check scheduler's tests, on an injected clock: idle and verification probes,
//! the rate limit, members coming and going.

use super::*;

const MS: u64 = 1_000_000;
const T0: u64 = 1_000 * SEC;

fn dst(i: u32) -> SocketAddr {
    SocketAddr::from(([10, (i >> 16) as u8, (i >> 8) as u8, i as u8], 8080))
}

fn config(f: impl FnOnce(&mut ChecksConfig)) -> ChecksConfig {
    let mut c = ChecksConfig::default();
    f(&mut c);
    c.validate().expect("test config is valid");
    c
}

fn poll(s: &mut CheckScheduler, now: u64) -> (Vec<ProbeRequest>, Vec<ProbeEnded>) {
    let (mut req, mut ended) = (Vec::new(), Vec::new());
    s.poll(now, |_| true, |_| None, &mut req, &mut ended);
    (req, ended)
}

/// A scheduler (`max_seen`, `seed`) whose members `dst(0..n)` are set at `T0`.
fn with_members(
    n: u32,
    max_seen: usize,
    seed: u64,
    f: impl FnOnce(&mut ChecksConfig),
) -> (CheckScheduler, Vec<SocketAddr>) {
    let mut s = CheckScheduler::new(config(f), max_seen, seed, T0);
    let members: Vec<SocketAddr> = (0..n).map(dst).collect();
    s.set_members(&members, T0);
    (s, members)
}

#[test]
fn defaults_validate_and_round_trip_through_toml() {
    let c = ChecksConfig::default();
    c.validate().expect("defaults are valid");
    let text = toml::to_string(&c).expect("serialize");
    assert!(text.contains("probe_timeout = \"1s\""), "{text}");
    assert!(text.contains("idle_after = \"0s\""), "{text}");
    assert_eq!(
        toml::from_str::<ChecksConfig>(&text).expect("parse back"),
        c
    );
    assert!(c.any_enabled());
    assert!(!ChecksConfig::off().any_enabled());
}

#[test]
fn validation_names_key_value_and_allowed_range() {
    type Mutation = fn(&mut ChecksConfig);
    let cases: [(Mutation, &str); 6] = [
        (
            |c| c.probe_timeout = Duration::ZERO,
            "checks.probe_timeout = 0s: must be between 10ms and 60s",
        ),
        (
            |c| c.early_probe_interval = Duration::from_millis(5),
            "checks.early_probe_interval = 5ms: must be 0s (off) or between 100ms and 1h",
        ),
        (
            |c| c.idle_after = Duration::from_secs(100_000),
            "checks.idle_after = 100000s: must be 0s (off) or between 100ms and 24h",
        ),
        (
            |c| c.max_per_second = 0,
            "checks.max_per_second = 0: must be between 1 and 100000",
        ),
        (
            |c| c.max_per_second = 100_001,
            "checks.max_per_second = 100001: must be between 1 and 100000",
        ),
        (
            |c| c.max_in_flight = 0,
            "checks.max_in_flight = 0: must be between 1 and 65536",
        ),
    ];
    for (mutate, want) in cases {
        let mut c = ChecksConfig::default();
        mutate(&mut c);
        let got = c.validate().expect_err("invalid").to_string();
        assert_eq!(got, want);
    }
}

#[test]
fn expired_ejection_is_verified_before_anything_else() {
    let mut s = CheckScheduler::new(config(|c| c.max_per_second = 10), 100, 1, T0);
    s.ejected(dst(1), T0);
    s.ejected(dst(2), T0);
    s.verify(dst(2), T0 + 10 * SEC);
    let (req, _) = poll(&mut s, T0 + 10 * SEC);
    assert_eq!(
        req.first().map(|r| r.dst),
        Some(dst(2)),
        "verification goes first: {req:?}"
    );
    assert_eq!(req.first().map(|r| r.timeout), Some(Duration::from_secs(1)));
    let ended = s
        .on_own_connect(dst(2), Outcome::Refused)
        .expect("probe in flight");
    assert_eq!((ended.purpose, ended.succeeded()), (Purpose::Verify, false));
    assert_eq!(
        s.on_own_connect(dst(2), Outcome::Refused),
        None,
        "a second outcome is not a probe"
    );
}

#[test]
fn early_probes_repeat_with_jitter_while_ejected_and_stop_after() {
    let mut s = CheckScheduler::new(ChecksConfig::default(), 100, 7, T0);
    s.ejected(dst(1), T0);
    assert!(
        poll(&mut s, T0 + 4 * SEC).0.is_empty(),
        "not before the interval"
    );
    let due = s.next_deadline(T0).expect("scheduled");
    assert!((T0 + 5 * SEC..=T0 + 6 * SEC).contains(&due), "due {due}");
    let (req, _) = poll(&mut s, due);
    assert_eq!(req.len(), 1);
    assert!(s.on_own_connect(dst(1), Outcome::Refused).is_some());
    let again = s.next_deadline(due).expect("rescheduled");
    assert!((due + 5 * SEC..=due + 6 * SEC).contains(&again));
    s.reinstated(dst(1));
    assert!(
        poll(&mut s, again + 100 * SEC).0.is_empty(),
        "no probes once reinstated"
    );
    assert_eq!(s.next_deadline(again), None);
}

#[test]
fn lost_probe_ends_at_its_deadline_and_counts_as_failed() {
    let mut s = CheckScheduler::new(ChecksConfig::default(), 100, 1, T0);
    s.ejected(dst(1), T0);
    s.verify(dst(1), T0);
    assert_eq!(poll(&mut s, T0).0.len(), 1);
    assert_eq!(s.next_deadline(T0), Some(T0 + 3 * SEC), "timeout + grace");
    let (req, ended) = poll(&mut s, T0 + 3 * SEC);
    assert!(req.is_empty());
    assert_eq!(
        ended,
        [ProbeEnded {
            dst: dst(1),
            purpose: Purpose::Verify,
            outcome: None
        }]
    );
    let c = s.counts();
    assert_eq!((c.sent, c.lost, c.failed, c.in_flight), (1, 1, 1, 0));
}

#[test]
fn idle_members_are_probed_only_when_nobody_connected_for_idle_after() {
    let mut s = CheckScheduler::new(
        config(|c| c.idle_after = Duration::from_secs(10)),
        100,
        3,
        T0,
    );
    s.set_members(&[dst(1), dst(2)], T0);
    let activity = |d: &SocketAddr| (*d == dst(2)).then_some(T0 + 15 * SEC);
    let (mut req, mut ended) = (Vec::new(), Vec::new());
    s.poll(T0 + 21 * SEC, |_| true, activity, &mut req, &mut ended);
    assert_eq!(
        req.iter().map(|r| r.dst).collect::<Vec<_>>(),
        [dst(1)],
        "dst(2) was used at +15 s"
    );
    s.poll(T0 + 26 * SEC, |_| true, activity, &mut req, &mut ended);
    assert_eq!(
        req.iter().map(|r| r.dst).collect::<Vec<_>>(),
        [dst(1), dst(2)]
    );
    assert_eq!(s.counts().scheduled, 2, "one heap entry per member");
}

#[test]
fn only_seen_network_members_are_checked_and_their_number_is_bounded() {
    let mut s = CheckScheduler::new(config(|c| c.idle_after = Duration::from_secs(1)), 2, 3, T0);
    assert!(s.saw_network_member(dst(1), T0));
    assert!(s.saw_network_member(dst(1), T0), "idempotent");
    assert!(s.saw_network_member(dst(2), T0));
    assert!(!s.saw_network_member(dst(3), T0), "bound reached");
    let (req, _) = poll(&mut s, T0 + 3 * SEC);
    let mut got: Vec<_> = req.iter().map(|r| r.dst).collect();
    got.sort();
    assert_eq!(got, [dst(1), dst(2)]);
}

#[test]
fn removed_members_are_dropped_lazily() {
    let mut s = CheckScheduler::new(config(|c| c.idle_after = Duration::from_secs(1)), 10, 1, T0);
    s.set_members(&[dst(1), dst(2)], T0);
    // dst(1) left the pool: its entry goes when it surfaces.
    let (mut req, mut ended) = (Vec::new(), Vec::new());
    s.poll(
        T0 + 3 * SEC,
        |d| *d == dst(2),
        |_| None,
        &mut req,
        &mut ended,
    );
    assert_eq!(req.iter().map(|r| r.dst).collect::<Vec<_>>(), [dst(2)]);
    assert_eq!(s.counts().scheduled, 1);
    s.set_members(&[dst(2), dst(3)], T0 + 3 * SEC);
    assert_eq!(
        s.counts().scheduled,
        2,
        "a rebuilt schedule holds each member once"
    );
}

/// Start times of probes under load (50 000 members, always due, answered at
/// once), polling every `step` or, with `step` 0, exactly at `next_deadline`.
fn starts_under_load(rate: u32, step: u64, span: u64) -> Vec<u64> {
    let (mut s, _) = with_members(50_000, 10, 9, |c| {
        c.idle_after = Duration::from_millis(100);
        c.max_per_second = rate;
        c.probe_timeout = Duration::from_millis(10);
        c.max_in_flight = 65_536;
    });
    let mut starts = Vec::new();
    let mut now = T0;
    while now < T0 + span {
        let (req, _) = poll(&mut s, now);
        for r in &req {
            // The kernel answers at once: the in-flight limit is not what binds here.
            s.on_own_connect(r.dst, Outcome::Refused);
        }
        starts.extend(std::iter::repeat_n(now, req.len()));
        now = if step == 0 {
            s.next_deadline(now)
                .expect("members stay scheduled")
                .max(now + 1)
        } else {
            now + step
        };
    }
    starts
}

fn max_in_any_second(starts: &[u64]) -> usize {
    let mut best = 0;
    let mut lo = 0;
    for hi in 0..starts.len() {
        while starts[hi] - starts[lo] >= SEC {
            lo += 1;
        }
        best = best.max(hi - lo + 1);
    }
    best
}

#[test]
fn no_one_second_window_ever_holds_more_than_max_per_second_starts() {
    for (rate, step) in [
        (1, 7 * MS),
        (10, MS),
        (100, 3 * MS),
        (100, 250 * MS),
        (5_000, 10 * MS),
        (1, 0),
        (100, 0),
        (10_000, 0),
    ] {
        let starts = starts_under_load(rate, step, 6 * SEC);
        let max = max_in_any_second(&starts);
        assert!(
            max <= rate as usize,
            "rate {rate} step {step}: {max} starts in one second"
        );
        if step == 0 || step <= 10 * MS {
            // Polled when it asks to be (as the agent does), or often enough.
            assert!(
                starts.len() as u64 >= u64::from(rate) * 5,
                "rate {rate} step {step}: only {} starts in 6 s: the limit must not starve",
                starts.len()
            );
        }
    }
}

#[test]
fn in_flight_never_exceeds_its_limit_and_frees_on_outcome_or_loss() {
    let (mut s, _) = with_members(20, 10, 1, |c| {
        c.idle_after = Duration::from_millis(100);
        c.max_in_flight = 3;
        c.max_per_second = 1000;
    });
    let (req, _) = poll(&mut s, T0 + SEC);
    assert_eq!(req.len(), 3);
    assert!(poll(&mut s, T0 + SEC + MS).0.is_empty(), "full");
    assert_eq!(
        s.next_deadline(T0 + SEC + MS),
        Some(T0 + 4 * SEC),
        "full: no busy wake-ups, only the first lost-probe deadline"
    );
    s.on_own_connect(req[0].dst, Outcome::Established);
    assert_eq!(poll(&mut s, T0 + SEC + 2 * MS).0.len(), 1);
    let (_, ended) = poll(&mut s, T0 + 5 * SEC);
    assert_eq!(ended.len(), 3, "the three unanswered probes are lost");
    assert_eq!(s.counts().lost, 3);
}

#[test]
fn an_unsent_verification_is_retried() {
    let mut s = CheckScheduler::new(ChecksConfig::default(), 10, 1, T0);
    s.ejected(dst(1), T0);
    s.verify(dst(1), T0);
    let (req, _) = poll(&mut s, T0);
    s.unsent(&req[0], T0);
    assert!(!s.in_flight(&dst(1)));
    assert_eq!(s.counts().dropped, 1);
    assert!(poll(&mut s, T0 + 500 * MS).0.is_empty());
    assert_eq!(poll(&mut s, T0 + SEC).0.len(), 1, "retried after a second");
}

#[test]
fn a_million_members_are_scheduled_without_scanning_them() {
    let (mut s, _) = with_members(1_000_000, 10, 5, |c| {
        c.idle_after = Duration::from_secs(60);
        c.max_per_second = 1_000;
    });
    assert_eq!(s.counts().scheduled, 1_000_000);
    // Ten thousand polls at 10 ms: each one touches only what is due.
    let started = std::time::Instant::now();
    let mut sent = 0;
    for i in 0..10_000u64 {
        let (req, _) = poll(&mut s, T0 + 60 * SEC + i * 10 * MS);
        for r in &req {
            s.on_own_connect(r.dst, Outcome::Established);
        }
        sent += req.len();
    }
    assert!(
        sent <= 100 * 1_000 + 100,
        "{sent} probes in 100 s at 1000/s"
    );
    assert!(sent >= 90 * 1_000, "{sent}: the limit must not starve");
    assert_eq!(
        s.counts().scheduled,
        1_000_000,
        "every member stays scheduled once"
    );
    // Not a timing assertion on a slow CPU: a scan per poll would take minutes.
    assert!(started.elapsed() < Duration::from_secs(120));
}

#[test]
fn a_busy_pipeline_polling_between_tokens_starves_no_idle_member() {
    // 21 members at 5 probes/s: each is due again 1 s after its check, so ~16 wait at
    // any moment. The pipeline polls far more often than a token arrives (every kernel
    // event on a busy host wakes it); a member at the head of the queue when no token
    // is there must keep its place, not go behind every other overdue member.
    const N: u32 = 21;
    let (mut s, members) = with_members(N, 100, 7, |c| {
        c.idle_after = Duration::from_secs(1);
        c.max_per_second = 5;
    });
    let mut last: HashMap<SocketAddr, u64> = members.iter().map(|&d| (d, T0)).collect();
    let mut worst = 0;
    let mut now = T0;
    while now < T0 + 60 * SEC {
        now += MS;
        let (req, _) = poll(&mut s, now);
        for r in req {
            worst = worst.max(now - last[&r.dst]);
            last.insert(r.dst, now);
            s.on_own_connect(r.dst, Outcome::Established);
        }
    }
    for (&d, &t) in &last {
        worst = worst.max(now - t);
        assert!(t > T0, "{d} never probed");
    }
    // A fair queue checks every member once per N / rate seconds (4.2 s) plus the
    // idle period; a starved one waits far longer.
    assert!(
        worst <= 6 * SEC,
        "a member waited {} ms between checks",
        worst / MS
    );
}
