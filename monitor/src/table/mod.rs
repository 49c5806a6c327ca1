//! The destination table: everything connmon has observed about each ip:port this host
//! connects to — attempts and outcomes, failure streaks, handshake latency, who connected
//! — as input for the policy stage. It records facts only; whether a destination is
//! ejected is the policy's business, attached to each entry as an [`Annotation`].
//!
//! The table is bounded by a capacity (`policy.max_destinations`). When it is full, the
//! least recently used entries whose annotation is not pinned (in practice: healthy,
//! non-ejected destinations) are dropped in a batch of 1 % of the capacity, so the cost
//! of finding them is amortised over many inserts. Recency is kept to the second, so
//! entries last used within the same second are an arbitrary tie. If every entry is
//! pinned, the new destination is not tracked and [`DestinationTable::refused_when_full`]
//! counts it.
//!
//! Memory: the common destination is contacted a few times, successfully, by one
//! process, so an entry is a compact core — 72 bytes with the policy's annotation (a
//! policy test holds it to that) — and everything that grows with variety lives in a
//! lazily allocated 640-byte `Detail`: failure counts, streaks, SYN retransmits, the
//! latency histogram (200 B), the ratio window (160 B) and the top-process/cgroup lists
//! (208 B). Until a destination's first failure (a reset included), first SYN
//! retransmit, 5th attempt (`INLINE` is 4), second process or cgroup, or an ejection, the
//! core keeps an inline summary of its successes (window slot and histogram bucket of
//! each, and a shared handle on the process) from which every statistic is computed
//! exactly as the detail would give it. Entries live in a dense vector per address
//! family with a parallel vector of addresses (6 bytes for IPv4, 28 for IPv6) and a hash
//! index of `u32` positions (5 bytes a bucket, load 44–88 %): about 85–90 bytes per
//! common destination all in, ~9 MB at the default bound of 100 000 entries. The IPv4
//! vectors and index are reserved for the capacity (up to 2 M entries) when the table is
//! created: virtual memory, resident only once touched, and no rehash that would hold two
//! copies of the index at once.
//!
//! Destinations are keyed by [`DestinationKey`]: another network namespace's loopback is
//! its own destination. Those few entries live in a third part keyed by
//! `(address, namespace inode)`, so the common keys keep their compact layout.

mod histogram;
mod index;
mod key;
mod top;
mod window;

use std::{
    collections::HashMap,
    net::{SocketAddr, SocketAddrV4, SocketAddrV6},
    sync::Arc,
    time::Duration,
};

pub(crate) use histogram::LatencyHistogram;
use index::Part;
pub(crate) use key::{DestinationKey, is_namespace_local};
use serde::Serialize;
pub(crate) use top::{Tally, TopN};
pub(crate) use window::RatioWindow;

use crate::source::event::{Comm, ConnectRecord, Outcome};

/// How a failing destination fails, as a pool operator would want to know it.
///
/// `reject`: something answered with a RST — refused connects and resets of established
/// connections; the host is up and its port closed (or the service shed the connection).
/// `drop`: nothing useful came back — SYN timeouts, connects the application abandoned,
/// ICMP unreachable (the packet never reached a listening host) and SYN retransmits;
/// the node is blackholed, powered off or firewalled with DROP.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Serialize, serde::Deserialize, schemars::JsonSchema,
)]
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
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, schemars::JsonSchema)]
pub struct Process {
    pub tgid: u32,
    pub comm: Comm,
}

/// A cgroup whose processes connected to a destination.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, schemars::JsonSchema)]
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

/// Up to this many IPv4 entries are reserved when the table is created (virtual memory:
/// pages count only once touched); a larger table grows from there.
const RESERVE_LIMIT: usize = 1 << 21;

/// Attempts a destination keeps in its inline summary before its [`Detail`] is allocated.
const INLINE: usize = 4;

/// Who made a connect attempt: the process and its cgroup.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct Who {
    process: Process,
    cgroup: Cgroup,
}

/// The full statistics of a destination that is more than a few successes from one
/// process: allocated on its first failure (a reset included), its first SYN retransmit,
/// its `INLINE + 1`-th attempt, a second process or cgroup, or when its evidence is
/// cleared by an ejection.
#[derive(Clone, Debug, Default)]
struct Detail {
    /// Successful connects (without detail every attempt was one).
    established: u64,
    /// Failure outcomes, indexed like [`Outcome::ALL`] without `established`.
    failures: [u64; 5],
    syn_retransmits: u64,
    streaks: Streaks,
    handshake: LatencyHistogram,
    window: RatioWindow,
    processes: TopN<Process, 4>,
    cgroups: TopN<Cgroup, 4>,
}

/// Size of a destination's detail, for the memory documentation's test.
#[cfg(test)]
pub(crate) fn detail_size() -> usize {
    size_of::<Detail>()
}

/// What the table knows about one destination.
///
/// Every entry has a compact core: the count of attempts (`u32`, saturating),
/// the last outcome and its time, the last-used time in whole seconds, the failure mode
/// and the annotation. Until it needs a `Detail` it also keeps an inline summary of
/// its at most `INLINE` successful attempts — their ratio-window slots and handshake
/// histogram buckets and the one process behind them (shared with other entries) — from
/// which the window totals, handshake percentiles and top lists are computed exactly as
/// the full structures would give them; the summary is replayed into the detail when
/// that is allocated.
#[derive(Clone, Debug)]
pub struct Destination<A> {
    last_outcome_ns: u64,
    detail: Option<Box<Detail>>,
    /// Without detail and with attempts: who made every one of them.
    who: Option<Arc<Who>>,
    /// The policy's view of this destination.
    pub annotation: A,
    /// Connect attempts: every outcome except `reset`, which ends an already counted one.
    attempts: u32,
    /// Last time anything happened to this destination (whole seconds of the monotonic
    /// clock), for LRU eviction.
    last_used_s: u32,
    /// Without detail: the ratio-window slot of the first attempt.
    first_slot: u32,
    /// Without detail: the slot of attempt `i + 1` minus `first_slot`.
    slot_delta: [u8; INLINE - 1],
    /// Without detail: the handshake histogram bucket of attempt `i`.
    buckets: [u8; INLINE],
    last_outcome: Option<Outcome>,
    failure_mode: Option<FailureMode>,
}

/// Index of a failure outcome in [`Detail::failures`], `None` for `established`.
fn failure_index(outcome: Outcome) -> Option<usize> {
    match outcome {
        Outcome::Established => None,
        Outcome::Refused => Some(0),
        Outcome::Reset => Some(1),
        Outcome::Timeout => Some(2),
        Outcome::Abandoned => Some(3),
        Outcome::Unreachable => Some(4),
    }
}

fn seconds(ns: u64) -> u32 {
    u32::try_from(ns / 1_000_000_000).unwrap_or(u32::MAX)
}

impl<A: Default> Destination<A> {
    fn new(now: u64) -> Self {
        Destination {
            last_outcome_ns: 0,
            detail: None,
            who: None,
            annotation: A::default(),
            attempts: 0,
            last_used_s: seconds(now),
            first_slot: 0,
            slot_delta: [0; INLINE - 1],
            buckets: [0; INLINE],
            last_outcome: None,
            failure_mode: None,
        }
    }
}

impl<A> Destination<A> {
    /// Attempts kept in the inline summary (all of them while there is no detail).
    fn inline_len(&self) -> usize {
        if self.detail.is_some() {
            0
        } else {
            self.attempts as usize
        }
    }

    /// Absolute ratio-window slot of inline attempt `i`.
    fn inline_slot(&self, i: usize) -> u64 {
        let delta = if i == 0 { 0 } else { self.slot_delta[i - 1] };
        u64::from(self.first_slot) + u64::from(delta)
    }

    /// The ratio window the inline summary stands for.
    fn inline_window(&self) -> RatioWindow {
        let mut window = RatioWindow::default();
        for i in 0..self.inline_len() {
            window.record_slot(self.inline_slot(i), false);
        }
        window
    }

    /// Whether a successful attempt in `slot` by `who` still fits the inline summary.
    fn fits_inline(&self, slot: u64, who: &Who) -> bool {
        let n = self.attempts as usize;
        if n == 0 {
            return u32::try_from(slot).is_ok();
        }
        n < INLINE
            && self.who.as_deref() == Some(who)
            && slot
                .checked_sub(u64::from(self.first_slot))
                .is_some_and(|d| d <= u64::from(u8::MAX))
    }

    /// The detail, allocated from the inline summary if needed.
    fn detail_mut(&mut self) -> &mut Detail {
        if self.detail.is_none() {
            let mut detail = Detail {
                established: self.inline_len() as u64,
                ..Detail::default()
            };
            for i in 0..self.inline_len() {
                detail.window.record_slot(self.inline_slot(i), false);
                detail.handshake.record_bucket(self.buckets[i]);
                if let Some(who) = self.who.as_deref() {
                    detail.processes.observe(who.process);
                    detail.cgroups.observe(who.cgroup);
                }
            }
            self.who = None;
            self.detail = Some(Box::new(detail));
        }
        self.detail.get_or_insert_default()
    }

    fn record_connect(&mut self, rec: &ConnectRecord, now: u64, slot_ns: u64, whos: &mut WhoCache) {
        let outcome = rec.outcome;
        let slot = now / slot_ns.max(1);
        let who = Who {
            process: Process {
                tgid: rec.who.tgid,
                comm: rec.who.comm,
            },
            cgroup: Cgroup {
                cgroup_id: rec.who.cgroup_id,
            },
        };
        self.last_outcome = Some(outcome);
        self.last_outcome_ns = now;
        self.last_used_s = self.last_used_s.max(seconds(now));
        if self.detail.is_none() && outcome == Outcome::Established && self.fits_inline(slot, &who)
        {
            let n = self.attempts as usize;
            if n == 0 {
                self.first_slot = u32::try_from(slot).unwrap_or(u32::MAX);
                self.who = Some(whos.intern(who));
            } else {
                self.slot_delta[n - 1] =
                    u8::try_from(slot - u64::from(self.first_slot)).unwrap_or(u8::MAX);
            }
            self.buckets[n] = histogram::bucket_of(rec.duration_us()) as u8;
            self.attempts += 1;
            return;
        }
        // Allocates the detail (replaying the summary) before this attempt is counted.
        self.detail_mut();
        if outcome != Outcome::Reset {
            self.attempts = self.attempts.saturating_add(1);
        }
        let detail = self.detail_mut();
        match failure_index(outcome) {
            Some(i) => detail.failures[i] = detail.failures[i].saturating_add(1),
            None => detail.established = detail.established.saturating_add(1),
        }
        if outcome != Outcome::Reset {
            detail.window.record_slot(slot, outcome.is_failure());
            detail.processes.observe(who.process);
            detail.cgroups.observe(who.cgroup);
        }
        match StreakKind::of(outcome) {
            None => {
                detail.streaks = Streaks::default();
                detail.handshake.record(rec.duration_us());
            }
            Some(kind) => {
                detail.streaks.bump(kind);
                self.failure_mode = FailureMode::of(outcome);
            }
        }
    }

    /// Marks a drop-mode failure that was not an outcome (SYN retransmits).
    pub fn note_failure_mode(&mut self, mode: FailureMode) {
        self.failure_mode = Some(mode);
    }

    /// Forgets the streaks and the ratio window: after an ejection the evidence is spent,
    /// and a reinstated destination is judged on what happens next.
    pub fn clear_evidence(&mut self) {
        let detail = self.detail_mut();
        detail.streaks = Streaks::default();
        detail.window.clear();
    }

    pub fn attempts(&self) -> u64 {
        u64::from(self.attempts)
    }

    pub fn count(&self, outcome: Outcome) -> u64 {
        match failure_index(outcome) {
            None => self
                .detail
                .as_ref()
                .map_or(u64::from(self.attempts), |d| d.established),
            Some(i) => self.detail.as_ref().map_or(0, |d| d.failures[i]),
        }
    }

    pub fn syn_retransmits(&self) -> u64 {
        self.detail.as_ref().map_or(0, |d| d.syn_retransmits)
    }

    pub fn streaks(&self) -> Streaks {
        self.detail
            .as_ref()
            .map_or_else(Streaks::default, |d| d.streaks)
    }

    pub fn streak(&self, kind: StreakKind) -> u32 {
        self.streaks().get(kind)
    }

    /// The handshake-latency histogram of the successful connects.
    pub fn handshake(&self) -> LatencyHistogram {
        match &self.detail {
            Some(d) => d.handshake.clone(),
            None => {
                let mut h = LatencyHistogram::default();
                for &bucket in &self.buckets[..self.inline_len()] {
                    h.record_bucket(bucket);
                }
                h
            }
        }
    }

    /// `(attempts, failures)` over the ratio window ending at `now`.
    pub fn window_totals(&self, now: u64, slot_ns: u64) -> (u32, u32) {
        match &self.detail {
            Some(d) => d.window.totals(now, slot_ns),
            None => self.inline_window().totals(now, slot_ns),
        }
    }

    pub fn last_outcome(&self) -> Option<(Outcome, u64)> {
        self.last_outcome.map(|o| (o, self.last_outcome_ns))
    }

    /// Last time anything happened to this destination, to the second.
    pub fn last_used_ns(&self) -> u64 {
        u64::from(self.last_used_s) * 1_000_000_000
    }

    pub fn failure_mode(&self) -> Option<FailureMode> {
        self.failure_mode
    }

    pub fn top_processes(&self) -> Vec<Tally<Process>> {
        self.top(|d| &d.processes, |who| who.process)
    }

    /// The cgroup ids [`Destination::top_cgroups`] ranks, unranked (nothing allocated).
    pub fn cgroup_ids(&self) -> impl Iterator<Item = u64> + '_ {
        let detail = self.detail.iter().flat_map(|d| d.cgroups.keys());
        let inline = self
            .who
            .as_deref()
            .filter(|_| self.detail.is_none() && self.attempts > 0)
            .map(|who| who.cgroup);
        detail.chain(inline).map(|c| c.cgroup_id)
    }

    pub fn top_cgroups(&self) -> Vec<Tally<Cgroup>> {
        self.top(|d| &d.cgroups, |who| who.cgroup)
    }

    /// The detail's heavy hitters; before any detail, the inline one with every attempt.
    fn top<K: Copy + PartialEq>(
        &self,
        kept: impl FnOnce(&Detail) -> &TopN<K, 4>,
        inline: impl FnOnce(&Who) -> K,
    ) -> Vec<Tally<K>> {
        match (&self.detail, self.who.as_deref()) {
            (Some(d), _) => kept(d).ranked(),
            (None, Some(who)) if self.attempts > 0 => vec![Tally {
                key: inline(who),
                connects: self.attempts,
            }],
            (None, _) => Vec::new(),
        }
    }
}

/// The processes behind inline summaries, shared: a host has few distinct (process,
/// cgroup) pairs and many destinations. Pairs no entry refers to any more are dropped
/// whenever the cache has doubled since the last sweep, so it stays within twice the
/// pairs in use (plus a small floor).
#[derive(Debug, Default)]
struct WhoCache {
    shared: HashMap<Who, Arc<Who>>,
    sweep_at: usize,
}

impl WhoCache {
    fn intern(&mut self, who: Who) -> Arc<Who> {
        if let Some(shared) = self.shared.get(&who) {
            return Arc::clone(shared);
        }
        if self.shared.len() >= self.sweep_at {
            self.shared
                .retain(|_, shared| Arc::strong_count(shared) > 1);
            self.sweep_at = (self.shared.len() * 2).max(64);
        }
        let shared = Arc::new(who);
        self.shared.insert(who, Arc::clone(&shared));
        shared
    }
}

/// `$table.<part>.$method(key, args…)` on the part that holds `$dst` (namespace-local,
/// IPv4 or IPv6), with that part's key: the parts' key types differ.
macro_rules! in_part {
    ($table:ident, $dst:expr, $method:ident $(, $arg:expr)*) => {
        match $dst {
            DestinationKey { addr, netns: Some(netns) } => {
                $table.local.$method((addr, netns) $(, $arg)*)
            }
            DestinationKey { addr: SocketAddr::V4(a), netns: None } => {
                $table.v4.$method(a $(, $arg)*)
            }
            DestinationKey { addr: SocketAddr::V6(a), netns: None } => {
                $table.v6.$method(a $(, $arg)*)
            }
        }
    };
}

/// Every entry of the three parts through `$iter` (`iter` or `iter_mut`), with its key.
macro_rules! all_parts {
    ($table:ident, $iter:ident) => {{
        let v4 = $table
            .v4
            .$iter()
            .map(|(k, d)| (DestinationKey::host(SocketAddr::V4(k)), d));
        let v6 = $table
            .v6
            .$iter()
            .map(|(k, d)| (DestinationKey::host(SocketAddr::V6(k)), d));
        let local = $table.local.$iter().map(|((addr, netns), d)| {
            (
                DestinationKey {
                    addr,
                    netns: Some(netns),
                },
                d,
            )
        });
        v4.chain(v6).chain(local)
    }};
}

/// Per-destination observations, bounded by a capacity with LRU eviction of unpinned
/// entries.
#[derive(Debug)]
pub struct DestinationTable<A> {
    v4: Part<SocketAddrV4, Destination<A>>,
    v6: Part<SocketAddrV6, Destination<A>>,
    /// Namespace-local destinations of other network namespaces (see [`DestinationKey`]):
    /// few, so their larger key costs nothing where it matters.
    local: Part<(SocketAddr, u32), Destination<A>>,
    whos: WhoCache,
    capacity: usize,
    /// Length of one ratio-window slot.
    slot_ns: u64,
    dropped: u64,
    refused_when_full: u64,
}

impl<A: Annotation> DestinationTable<A> {
    /// A table of at most `capacity` destinations whose failure ratio covers `ratio_window`.
    pub fn new(capacity: usize, ratio_window: Duration) -> Self {
        let window_ns = u64::try_from(ratio_window.as_nanos()).unwrap_or(u64::MAX);
        let capacity = capacity.clamp(1, u32::MAX as usize);
        DestinationTable {
            // IPv4 is the common case and reserved up front; IPv6 grows on demand.
            v4: Part::with_capacity(capacity.min(RESERVE_LIMIT)),
            v6: Part::with_capacity(0),
            local: Part::with_capacity(0),
            whos: WhoCache::default(),
            capacity,
            slot_ns: (window_ns / window::SLOTS).max(1),
            dropped: 0,
            refused_when_full: 0,
        }
    }

    /// The entry for `dst`, created if needed, marked as used at `now`. The flag is true
    /// when the entry is new. `None` when the table is full of pinned entries.
    pub fn entry(
        &mut self,
        dst: impl Into<DestinationKey>,
        now: u64,
    ) -> Option<(&mut Destination<A>, bool)> {
        let dst = dst.into();
        let created = !self.contains(&dst);
        if created {
            if self.len() >= self.capacity {
                self.evict_least_recently_used();
            }
            if self.len() >= self.capacity {
                self.refused_when_full = self.refused_when_full.saturating_add(1);
                return None;
            }
            let dest = Destination::new(now);
            in_part!(self, dst, insert, dest);
        }
        let entry = self.get_mut(dst)?;
        entry.last_used_s = entry.last_used_s.max(seconds(now));
        Some((entry, created))
    }

    /// Records a connect outcome for destination `dst` (the policy's key for
    /// `rec.dst`); see [`DestinationTable::entry`] for the return value.
    pub fn record_connect(
        &mut self,
        dst: impl Into<DestinationKey>,
        rec: &ConnectRecord,
        now: u64,
    ) -> Option<(&mut Destination<A>, bool)> {
        let dst = dst.into();
        let slot_ns = self.slot_ns;
        let created = self.entry(dst, now)?.1;
        let whos = &mut self.whos;
        let entry = in_part!(self, dst, get_mut)?;
        entry.record_connect(rec, now, slot_ns, whos);
        Some((entry, created))
    }

    /// Counts a SYN retransmit of a pending connect to `dst`; see
    /// [`DestinationTable::entry`] for the return value.
    pub fn record_syn_retransmit(
        &mut self,
        dst: impl Into<DestinationKey>,
        now: u64,
    ) -> Option<(&mut Destination<A>, bool)> {
        let (entry, created) = self.entry(dst, now)?;
        let detail = entry.detail_mut();
        detail.syn_retransmits = detail.syn_retransmits.saturating_add(1);
        Some((entry, created))
    }

    fn contains(&self, dst: &DestinationKey) -> bool {
        self.get(dst).is_some()
    }

    pub fn get(&self, dst: impl Into<DestinationKey>) -> Option<&Destination<A>> {
        in_part!(self, dst.into(), get)
    }

    pub fn get_mut(&mut self, dst: impl Into<DestinationKey>) -> Option<&mut Destination<A>> {
        in_part!(self, dst.into(), get_mut)
    }

    pub fn iter(&self) -> impl Iterator<Item = (DestinationKey, &Destination<A>)> {
        all_parts!(self, iter)
    }

    pub fn iter_mut(&mut self) -> impl Iterator<Item = (DestinationKey, &mut Destination<A>)> {
        all_parts!(self, iter_mut)
    }

    pub fn len(&self) -> usize {
        self.v4.len() + self.v6.len() + self.local.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Length of one ratio-window slot, for [`Destination::window_totals`].
    pub fn slot_ns(&self) -> u64 {
        self.slot_ns
    }

    /// Entries dropped to make room since the table was created.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }

    /// Events for new destinations that found the table full of pinned entries.
    pub fn refused_when_full(&self) -> u64 {
        self.refused_when_full
    }

    /// Drops the least recently used 1 % (at least one) of the unpinned entries. Each
    /// candidate is one `u64` (last-used second, position), so finding them costs eight
    /// bytes per entry for the moment of the sweep.
    fn evict_least_recently_used(&mut self) {
        let batch = (self.capacity / 100).max(1);
        let n4 = self.v4.len() as u64;
        let n46 = n4 + self.v6.len() as u64;
        let candidate = |i: u64, d: &Destination<A>| {
            (!d.annotation.pinned()).then_some((u64::from(d.last_used_s) << 32) | i)
        };
        let mut candidates: Vec<u64> = self
            .v4
            .values()
            .iter()
            .enumerate()
            .filter_map(|(i, d)| candidate(i as u64, d))
            .chain(
                self.v6
                    .values()
                    .iter()
                    .enumerate()
                    .filter_map(|(i, d)| candidate(n4 + i as u64, d)),
            )
            .chain(
                self.local
                    .values()
                    .iter()
                    .enumerate()
                    .filter_map(|(i, d)| candidate(n46 + i as u64, d)),
            )
            .collect();
        if candidates.len() > batch {
            candidates.select_nth_unstable(batch - 1);
            candidates.truncate(batch);
        }
        let evicted = candidates.len() as u64;
        let mut positions: Vec<u64> = candidates.iter().map(|&c| c & 0xFFFF_FFFF).collect();
        drop(candidates);
        positions.sort_unstable_by(|a, b| b.cmp(a));
        let split_local = positions.partition_point(|&p| p >= n46);
        let split_v6 = positions.partition_point(|&p| p >= n4);
        let local: Vec<u32> = positions[..split_local]
            .iter()
            .map(|&p| (p - n46) as u32)
            .collect();
        let v6: Vec<u32> = positions[split_local..split_v6]
            .iter()
            .map(|&p| (p - n4) as u32)
            .collect();
        let v4: Vec<u32> = positions[split_v6..].iter().map(|&p| p as u32).collect();
        self.local.remove_descending(&local);
        self.v6.remove_descending(&v6);
        self.v4.remove_descending(&v4);
        self.dropped = self.dropped.saturating_add(evicted);
    }
}

#[cfg(test)]
mod tests;
