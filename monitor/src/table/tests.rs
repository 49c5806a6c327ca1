//! The destination table's tests: streaks and latency, LRU eviction under a full table,
//! namespace-local keys, the compact entry's size, and a property test of the index.

use std::net::{IpAddr, Ipv4Addr};

use proptest::prelude::*;

use super::*;
use crate::source::event::{Attribution, Family};

const SEC: u64 = 1_000_000_000;

#[derive(Default)]
struct Pin(bool);

impl Annotation for Pin {
    fn pinned(&self) -> bool {
        self.0
    }
}

fn addr(last: u8, port: u16) -> SocketAddr {
    SocketAddr::new(IpAddr::V4(Ipv4Addr::new(10, 0, 0, last)), port)
}

fn record(dst: SocketAddr, outcome: Outcome, at: u64) -> ConnectRecord {
    ConnectRecord {
        outcome,
        ktime_ns: at,
        start_ns: at.saturating_sub(250_000),
        family: Family::Ipv4,
        src: addr(1, 40000),
        dst,
        who: Attribution {
            pid: 7,
            tgid: 7,
            comm: Comm::from("curl"),
            cgroup_id: 9,
            netns: 1,
            netns_owner: crate::source::event::NetnsOwner::Initial,
            cgroup: None,
            trusted: true,
        },
        syn_retransmits: 0,
        errno: 0,
    }
}

#[test]
fn counts_streaks_and_latency() {
    let mut t: DestinationTable<()> = DestinationTable::new(10, Duration::from_secs(60));
    let dst = addr(2, 80);
    for outcome in [
        Outcome::Refused,
        Outcome::Timeout,
        Outcome::Refused,
        Outcome::Reset,
    ] {
        t.record_connect(dst, &record(dst, outcome, SEC), SEC);
    }
    let d = t.get(dst).expect("entry");
    assert_eq!(d.attempts(), 3, "a reset is not a new attempt");
    assert_eq!(d.count(Outcome::Refused), 2);
    assert_eq!(d.streak(StreakKind::Refused), 2);
    assert_eq!(d.streak(StreakKind::Unanswered), 1);
    assert_eq!(d.streak(StreakKind::Reset), 1);
    assert_eq!(d.failure_mode(), Some(FailureMode::Reject));
    assert_eq!(d.window_totals(SEC, t.slot_ns()), (3, 3));

    t.record_connect(dst, &record(dst, Outcome::Established, 2 * SEC), 2 * SEC);
    let d = t.get(dst).expect("entry");
    assert_eq!(
        d.streaks(),
        Streaks::default(),
        "a success resets every streak"
    );
    let p50 = d.handshake().quantile(0.5).unwrap_or_default();
    assert!((190..=320).contains(&p50), "p50 {p50}");
    assert_eq!(d.last_outcome(), Some((Outcome::Established, 2 * SEC)));
    assert_eq!(d.top_processes()[0].connects, 4);
    assert_eq!(d.top_cgroups()[0].key.cgroup_id, 9);
}

/// The statistics as the full structures compute them, fed the same connects.
#[derive(Default)]
struct Reference {
    attempts: u64,
    counts: [u64; 6],
    streaks: Streaks,
    handshake: LatencyHistogram,
    window: RatioWindow,
    processes: TopN<Process, 4>,
    cgroups: TopN<Cgroup, 4>,
}

impl Reference {
    fn record(&mut self, rec: &ConnectRecord, now: u64, slot_ns: u64) {
        let i = Outcome::ALL
            .iter()
            .position(|&o| o == rec.outcome)
            .unwrap_or_default();
        self.counts[i] += 1;
        if rec.outcome != Outcome::Reset {
            self.attempts += 1;
            self.window.record(now, rec.outcome.is_failure(), slot_ns);
            self.processes.observe(Process {
                tgid: rec.who.tgid,
                comm: rec.who.comm,
            });
            self.cgroups.observe(Cgroup {
                cgroup_id: rec.who.cgroup_id,
            });
        }
        match StreakKind::of(rec.outcome) {
            None => {
                self.streaks = Streaks::default();
                self.handshake.record(rec.duration_us());
            }
            Some(kind) => self.streaks.bump(kind),
        }
    }
}

fn connect() -> impl Strategy<Value = (Outcome, u64, u64, u32)> {
    (
        prop_oneof![
            8 => Just(Outcome::Established),
            1 => Just(Outcome::Refused),
            1 => Just(Outcome::Reset),
            1 => Just(Outcome::Timeout),
        ],
        prop_oneof![3 => 0..2 * SEC, 1 => 0..2_000 * SEC],
        1..5_000_000u64,
        prop_oneof![6 => Just(7u32), 1 => 8..10u32],
    )
}

proptest! {
    /// Whether a destination is still an inline summary or has its detail, every
    /// statistic is what the full structures give for the same connects.
    #[test]
    fn compact_entries_report_what_the_full_structures_would(
        connects in proptest::collection::vec(connect(), 1..12),
    ) {
        let mut t: DestinationTable<()> = DestinationTable::new(10, Duration::from_secs(60));
        let slot_ns = t.slot_ns();
        let dst = addr(2, 80);
        let mut reference = Reference::default();
        let mut now = SEC;
        for (outcome, gap, handshake_ns, tgid) in connects {
            now += gap;
            let mut rec = record(dst, outcome, now);
            rec.start_ns = now - handshake_ns;
            rec.who.tgid = tgid;
            rec.who.cgroup_id = u64::from(tgid);
            t.record_connect(dst, &rec, now);
            reference.record(&rec, now, slot_ns);
            let d = t.get(dst).expect("entry");
            prop_assert_eq!(d.attempts(), reference.attempts);
            for (i, o) in Outcome::ALL.into_iter().enumerate() {
                prop_assert_eq!(d.count(o), reference.counts[i], "{:?}", o);
            }
            prop_assert_eq!(d.streaks(), reference.streaks);
            prop_assert_eq!(d.handshake(), reference.handshake.clone());
            for later in [0, SEC, 30 * SEC, 59 * SEC, 61 * SEC, 600 * SEC] {
                prop_assert_eq!(
                    d.window_totals(now + later, slot_ns),
                    reference.window.totals(now + later, slot_ns)
                );
            }
            prop_assert_eq!(d.top_processes(), reference.processes.ranked());
            prop_assert_eq!(d.top_cgroups(), reference.cgroups.ranked());
            prop_assert_eq!(d.last_outcome(), Some((outcome, now)));
        }
    }
}

#[test]
fn a_few_successes_from_one_process_allocate_no_detail() {
    let mut t: DestinationTable<()> = DestinationTable::new(10, Duration::from_secs(60));
    let dst = addr(2, 80);
    for i in 0..INLINE as u64 {
        t.record_connect(dst, &record(dst, Outcome::Established, SEC + i), SEC + i);
    }
    assert!(t.get(dst).is_some_and(|d| d.detail.is_none()));
    t.record_connect(dst, &record(dst, Outcome::Established, 2 * SEC), 2 * SEC);
    assert!(
        t.get(dst).is_some_and(|d| d.detail.is_some()),
        "attempt {} needs the detail",
        INLINE + 1
    );
    let other = addr(3, 80);
    t.record_connect(other, &record(other, Outcome::Refused, SEC), SEC);
    assert!(
        t.get(other).is_some_and(|d| d.detail.is_some()),
        "a failure needs the detail"
    );
}

#[test]
fn eviction_keeps_every_remaining_entry_reachable() {
    let mut t: DestinationTable<Pin> = DestinationTable::new(300, Duration::from_secs(60));
    let dst = |i: u32| -> SocketAddr {
        if i.is_multiple_of(3) {
            SocketAddr::new(IpAddr::V6(std::net::Ipv6Addr::from(u128::from(i))), 443)
        } else {
            SocketAddr::new(IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + i)), 80)
        }
    };
    for i in 0..2_000u32 {
        let now = SEC * u64::from(i + 1);
        let (d, created) = t.entry(dst(i), now).expect("room");
        assert!(created);
        d.annotation.0 = i % 50 == 0;
        for _ in 0..i % 4 {
            t.record_connect(dst(i), &record(dst(i), Outcome::Established, now), now);
        }
    }
    assert!(t.len() <= 300);
    assert_eq!(t.len() as u64 + t.dropped(), 2_000);
    let mut seen = 0;
    for (a, d) in t.iter() {
        let got = t.get(a).expect("iterated entry is found by address");
        assert_eq!(got.attempts(), d.attempts());
        seen += 1;
    }
    assert_eq!(seen, t.len());
    for i in (0..2_000u32).filter(|i| i % 50 == 0) {
        assert!(t.get(dst(i)).is_some(), "pinned {i} kept");
    }
    for i in 1_990..2_000u32 {
        let d = t.get(dst(i)).expect("recent entries kept");
        assert_eq!(d.attempts(), u64::from(i % 4), "entry {i} is its own");
    }
}

#[test]
fn another_namespaces_loopback_is_a_separate_entry_and_evictable() {
    let mut t: DestinationTable<Pin> = DestinationTable::new(3, Duration::from_secs(60));
    let lo: SocketAddr = "127.0.0.1:8080".parse().unwrap();
    let theirs = DestinationKey::of(lo, 4_026_532_301, 4_026_531_840);
    t.record_connect(lo, &record(lo, Outcome::Established, SEC), SEC);
    t.record_connect(theirs, &record(lo, Outcome::Refused, SEC), SEC);
    t.record_connect(theirs, &record(lo, Outcome::Refused, SEC), SEC);
    assert_eq!(t.len(), 2);
    assert_eq!(t.get(lo).map(|d| d.count(Outcome::Refused)), Some(0));
    assert_eq!(
        t.get(theirs).map(|d| d.streak(StreakKind::Refused)),
        Some(2)
    );
    let keys: Vec<DestinationKey> = t.iter().map(|(k, _)| k).collect();
    assert!(keys.contains(&theirs) && keys.contains(&DestinationKey::host(lo)));
    t.entry(addr(1, 80), 5 * SEC);
    t.entry(addr(2, 80), 6 * SEC);
    assert_eq!(t.len(), 3);
    assert!(
        t.get(lo).is_none() || t.get(theirs).is_none(),
        "an old namespace-local entry is dropped like any other"
    );
    for (k, d) in t.iter() {
        assert!(t.get(k).is_some_and(|got| got.attempts() == d.attempts()));
    }
}

#[test]
fn full_table_drops_least_recently_used_unpinned_entries() {
    let mut t: DestinationTable<Pin> = DestinationTable::new(3, Duration::from_secs(60));
    t.entry(addr(1, 80), SEC).expect("room").0.annotation.0 = true;
    t.entry(addr(2, 80), 2 * SEC);
    t.entry(addr(3, 80), 3 * SEC);
    t.entry(addr(2, 80), 4 * SEC);
    t.entry(addr(4, 80), 5 * SEC);
    assert_eq!(t.len(), 3);
    assert!(
        t.get(addr(1, 80)).is_some(),
        "pinned entries stay however old"
    );
    assert!(
        t.get(addr(3, 80)).is_none(),
        "least recently used unpinned entry goes"
    );
    assert!(t.get(addr(2, 80)).is_some());
    assert_eq!(t.dropped(), 1);

    for e in [1, 2, 4] {
        t.entry(addr(e, 80), 6 * SEC)
            .expect("present")
            .0
            .annotation
            .0 = true;
    }
    assert!(t.entry(addr(5, 80), 7 * SEC).is_none());
    assert_eq!(t.refused_when_full(), 1);
    assert_eq!(t.len(), 3);
}
