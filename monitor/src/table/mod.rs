//! The destination table: everything connmon has observed about each ip:port this host
//! connects to — attempts and outcomes, failure streaks, handshake latency, who connected
//! — as input for the policy stage. It records facts only; whether a destination is
//! ejected is the policy's business, attached to each entry as an [`Annotation`].
//!
//! The table is bounded by a capacity (`policy.max_destinations`). When it is full, the
//! least recently used entries whose annotation is not pinned (in practice: healthy,
//! non-ejected destinations) are dropped in a batch of 1 % of the capacity, so the cost
//! of finding them is amortised over many inserts. If every entry is pinned, the new
//! destination is not tracked and [`DestinationTable::untracked`] counts it.
//!
//! Memory per entry: with the policy's annotation an entry is 712 bytes (a policy test
//! keeps it under 768), dominated by the latency histogram (200 B), the ratio window
//! (160 B) and the top-process/cgroup lists (208 B). With the 32-byte key and the hash
//! table's spare capacity (load factor at most 7/8) count about 850 bytes: ~85 MB at the
//! default bound of 100 000 entries.
//! A host that talks to a few thousand destinations uses a few megabytes.

mod histogram;
mod top;
mod window;

use std::{collections::HashMap, net::SocketAddr, time::Duration};

pub use histogram::LatencyHistogram;
use serde::Serialize;
pub use top::{Tally, TopN};
pub use window::RatioWindow;

use crate::source::event::{Comm, ConnectRecord, Outcome, SynRetransmitRecord};

/// How a failing destination fails, as a pool operator would want to know it.
///
/// `reject`: something answered with a RST — refused connects and resets of established
/// connections; the host is up and its port closed (or the service shed the connection).
/// `drop`: nothing useful came back — SYN timeouts, connects the application abandoned,
/// ICMP unreachable (the packet never reached a listening host) and SYN retransmits;
/// the node is blackholed, powered off or firewalled with DROP.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum FailureMode {
    Reject,
    Drop,
}

impl FailureMode {
    /// The failure mode an outcome shows, `None` for a success.
    pub fn of(outcome: Outcome) -> Option<Self> {
        match outcome {
            Outcome::Established => None,
            Outcome::Refused | Outcome::Reset => Some(FailureMode::Reject),
            Outcome::Timeout | Outcome::Abandoned | Outcome::Unreachable => Some(FailureMode::Drop),
        }
    }
}

/// The consecutive-failure counters a destination keeps; each outcome kind feeds one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StreakKind {
    /// Refused connects.
    Refused,
    /// Connects that got no answer: timeouts, abandoned, unreachable.
    Unanswered,
    /// Resets of established connections.
    Reset,
}

impl StreakKind {
    pub const ALL: [StreakKind; 3] = [
        StreakKind::Refused,
        StreakKind::Unanswered,
        StreakKind::Reset,
    ];

    /// The streak an outcome extends, `None` for a success.
    pub fn of(outcome: Outcome) -> Option<Self> {
        match outcome {
            Outcome::Established => None,
            Outcome::Refused => Some(StreakKind::Refused),
            Outcome::Timeout | Outcome::Abandoned | Outcome::Unreachable => {
                Some(StreakKind::Unanswered)
            }
            Outcome::Reset => Some(StreakKind::Reset),
        }
    }
}

/// Failures of each kind since the last successful connect.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Streaks {
    refused: u32,
    unanswered: u32,
    reset: u32,
}

impl Streaks {
    pub fn get(&self, kind: StreakKind) -> u32 {
        match kind {
            StreakKind::Refused => self.refused,
            StreakKind::Unanswered => self.unanswered,
            StreakKind::Reset => self.reset,
        }
    }

    fn bump(&mut self, kind: StreakKind) {
        let n = match kind {
            StreakKind::Refused => &mut self.refused,
            StreakKind::Unanswered => &mut self.unanswered,
            StreakKind::Reset => &mut self.reset,
        };
        *n = n.saturating_add(1);
    }
}

/// A process that connected to a destination.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Process {
    pub tgid: u32,
    pub comm: Comm,
}

/// A cgroup whose processes connected to a destination.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Cgroup {
    pub cgroup_id: u64,
}

/// State a later stage attaches to each entry.
pub trait Annotation: Default {
    /// A pinned entry is never dropped to make room (e.g. an ejected destination).
    fn pinned(&self) -> bool;
}

impl Annotation for () {
    fn pinned(&self) -> bool {
        false
    }
}

/// What the table knows about one destination.
#[derive(Clone, Debug)]
pub struct Destination<A> {
    /// Connect attempts: every outcome except `reset`, which ends an already counted one.
    attempts: u64,
    /// Outcomes, indexed like [`Outcome::ALL`].
    outcomes: [u64; 6],
    syn_retransmits: u64,
    streaks: Streaks,
    handshake: LatencyHistogram,
    window: RatioWindow,
    last_outcome: Option<(Outcome, u64)>,
    /// Last time anything happened to this destination, for LRU eviction.
    last_used_ns: u64,
    failure_mode: Option<FailureMode>,
    processes: TopN<Process, 4>,
    cgroups: TopN<Cgroup, 4>,
    /// The policy's view of this destination.
    pub annotation: A,
}

fn outcome_index(outcome: Outcome) -> usize {
    match outcome {
        Outcome::Established => 0,
        Outcome::Refused => 1,
        Outcome::Reset => 2,
        Outcome::Timeout => 3,
        Outcome::Abandoned => 4,
        Outcome::Unreachable => 5,
    }
}

impl<A: Default> Destination<A> {
    fn new(now: u64) -> Self {
        Destination {
            attempts: 0,
            outcomes: [0; 6],
            syn_retransmits: 0,
            streaks: Streaks::default(),
            handshake: LatencyHistogram::default(),
            window: RatioWindow::default(),
            last_outcome: None,
            last_used_ns: now,
            failure_mode: None,
            processes: TopN::default(),
            cgroups: TopN::default(),
            annotation: A::default(),
        }
    }
}

impl<A> Destination<A> {
    fn record_connect(&mut self, rec: &ConnectRecord, now: u64, slot_ns: u64) {
        let outcome = rec.outcome;
        let i = outcome_index(outcome);
        self.outcomes[i] = self.outcomes[i].saturating_add(1);
        if outcome != Outcome::Reset {
            self.attempts = self.attempts.saturating_add(1);
            self.window.record(now, outcome.is_failure(), slot_ns);
            self.processes.observe(Process {
                tgid: rec.who.tgid,
                comm: rec.who.comm,
            });
            self.cgroups.observe(Cgroup {
                cgroup_id: rec.who.cgroup_id,
            });
        }
        match StreakKind::of(outcome) {
            None => {
                self.streaks = Streaks::default();
                self.handshake.record(rec.duration_us());
            }
            Some(kind) => {
                self.streaks.bump(kind);
                self.failure_mode = FailureMode::of(outcome);
            }
        }
        self.last_outcome = Some((outcome, now));
        self.last_used_ns = now;
    }

    fn record_syn_retransmit(&mut self, _rec: &SynRetransmitRecord, now: u64) {
        self.syn_retransmits = self.syn_retransmits.saturating_add(1);
        self.last_used_ns = now;
    }

    /// Marks a drop-mode failure that was not an outcome (SYN retransmits).
    pub fn note_failure_mode(&mut self, mode: FailureMode) {
        self.failure_mode = Some(mode);
    }

    /// Forgets the streaks and the ratio window: after an ejection the evidence is spent,
    /// and a reinstated destination is judged on what happens next.
    pub fn clear_evidence(&mut self) {
        self.streaks = Streaks::default();
        self.window.clear();
    }

    pub fn attempts(&self) -> u64 {
        self.attempts
    }

    pub fn count(&self, outcome: Outcome) -> u64 {
        self.outcomes[outcome_index(outcome)]
    }

    pub fn syn_retransmits(&self) -> u64 {
        self.syn_retransmits
    }

    pub fn streaks(&self) -> Streaks {
        self.streaks
    }

    pub fn streak(&self, kind: StreakKind) -> u32 {
        self.streaks.get(kind)
    }

    pub fn handshake(&self) -> &LatencyHistogram {
        &self.handshake
    }

    /// `(attempts, failures)` over the ratio window ending at `now`.
    pub fn window_totals(&self, now: u64, slot_ns: u64) -> (u32, u32) {
        self.window.totals(now, slot_ns)
    }

    pub fn last_outcome(&self) -> Option<(Outcome, u64)> {
        self.last_outcome
    }

    pub fn last_used_ns(&self) -> u64 {
        self.last_used_ns
    }

    pub fn failure_mode(&self) -> Option<FailureMode> {
        self.failure_mode
    }

    pub fn top_processes(&self) -> Vec<Tally<Process>> {
        self.processes.ranked()
    }

    pub fn top_cgroups(&self) -> Vec<Tally<Cgroup>> {
        self.cgroups.ranked()
    }
}

/// Per-destination observations, bounded by a capacity with LRU eviction of unpinned
/// entries.
#[derive(Debug)]
pub struct DestinationTable<A> {
    entries: HashMap<SocketAddr, Destination<A>>,
    capacity: usize,
    /// Length of one ratio-window slot.
    slot_ns: u64,
    evicted: u64,
    untracked: u64,
}

impl<A: Annotation> DestinationTable<A> {
    /// A table of at most `capacity` destinations whose failure ratio covers `ratio_window`.
    pub fn new(capacity: usize, ratio_window: Duration) -> Self {
        let window_ns = u64::try_from(ratio_window.as_nanos()).unwrap_or(u64::MAX);
        DestinationTable {
            entries: HashMap::new(),
            capacity: capacity.max(1),
            slot_ns: (window_ns / window::SLOTS).max(1),
            evicted: 0,
            untracked: 0,
        }
    }

    /// The entry for `dst`, created if needed, marked as used at `now`. The flag is true
    /// when the entry is new. `None` when the table is full of pinned entries.
    pub fn entry(&mut self, dst: SocketAddr, now: u64) -> Option<(&mut Destination<A>, bool)> {
        let created = !self.entries.contains_key(&dst);
        if created {
            if self.entries.len() >= self.capacity {
                self.evict_least_recently_used();
            }
            if self.entries.len() >= self.capacity {
                self.untracked = self.untracked.saturating_add(1);
                return None;
            }
            self.entries.insert(dst, Destination::new(now));
        }
        let entry = self.entries.get_mut(&dst)?;
        entry.last_used_ns = entry.last_used_ns.max(now);
        Some((entry, created))
    }

    /// Records a connect outcome; see [`DestinationTable::entry`] for the return value.
    pub fn record_connect(
        &mut self,
        rec: &ConnectRecord,
        now: u64,
    ) -> Option<(&mut Destination<A>, bool)> {
        let slot_ns = self.slot_ns;
        let (entry, created) = self.entry(rec.dst, now)?;
        entry.record_connect(rec, now, slot_ns);
        Some((entry, created))
    }

    /// Records a SYN retransmit of a pending connect.
    pub fn record_syn_retransmit(
        &mut self,
        rec: &SynRetransmitRecord,
        now: u64,
    ) -> Option<(&mut Destination<A>, bool)> {
        let (entry, created) = self.entry(rec.dst, now)?;
        entry.record_syn_retransmit(rec, now);
        Some((entry, created))
    }

    pub fn get(&self, dst: &SocketAddr) -> Option<&Destination<A>> {
        self.entries.get(dst)
    }

    pub fn get_mut(&mut self, dst: &SocketAddr) -> Option<&mut Destination<A>> {
        self.entries.get_mut(dst)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&SocketAddr, &Destination<A>)> {
        self.entries.iter()
    }

    pub fn iter_mut(&mut self) -> impl Iterator<Item = (&SocketAddr, &mut Destination<A>)> {
        self.entries.iter_mut()
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Length of one ratio-window slot, for [`Destination::window_totals`].
    pub fn slot_ns(&self) -> u64 {
        self.slot_ns
    }

    /// Entries dropped to make room since the table was created.
    pub fn evicted(&self) -> u64 {
        self.evicted
    }

    /// Events for new destinations that found the table full of pinned entries.
    pub fn untracked(&self) -> u64 {
        self.untracked
    }

    /// Drops the least recently used 1 % (at least one) of the unpinned entries.
    fn evict_least_recently_used(&mut self) {
        let batch = (self.capacity / 100).max(1);
        let mut candidates: Vec<(u64, SocketAddr)> = self
            .entries
            .iter()
            .filter(|(_, d)| !d.annotation.pinned())
            .map(|(dst, d)| (d.last_used_ns, *dst))
            .collect();
        if candidates.len() > batch {
            candidates.select_nth_unstable(batch - 1);
            candidates.truncate(batch);
        }
        for (_, dst) in &candidates {
            self.entries.remove(dst);
        }
        self.evicted = self.evicted.saturating_add(candidates.len() as u64);
    }
}

#[cfg(test)]
mod tests {
    use std::net::{IpAddr, Ipv4Addr};

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
            t.record_connect(&record(dst, outcome, SEC), SEC);
        }
        let d = t.get(&dst).expect("entry");
        assert_eq!(d.attempts(), 3, "a reset is not a new attempt");
        assert_eq!(d.count(Outcome::Refused), 2);
        assert_eq!(d.streak(StreakKind::Refused), 2);
        assert_eq!(d.streak(StreakKind::Unanswered), 1);
        assert_eq!(d.streak(StreakKind::Reset), 1);
        assert_eq!(d.failure_mode(), Some(FailureMode::Reject));
        assert_eq!(d.window_totals(SEC, t.slot_ns()), (3, 3));

        t.record_connect(&record(dst, Outcome::Established, 2 * SEC), 2 * SEC);
        let d = t.get(&dst).expect("entry");
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
            t.get(&addr(1, 80)).is_some(),
            "pinned entries stay however old"
        );
        assert!(
            t.get(&addr(3, 80)).is_none(),
            "least recently used unpinned entry goes"
        );
        assert!(t.get(&addr(2, 80)).is_some());
        assert_eq!(t.evicted(), 1);

        for e in [1, 2, 4] {
            t.entry(addr(e, 80), 6 * SEC)
                .expect("present")
                .0
                .annotation
                .0 = true;
        }
        assert!(t.entry(addr(5, 80), 7 * SEC).is_none());
        assert_eq!(t.untracked(), 1);
        assert_eq!(t.len(), 3);
    }
}
