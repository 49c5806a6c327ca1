//! Active handshake checks: which pool members the agent should probe, and when.
//!
//! connmon is passive by nature — it classifies the connects other processes make — but
//! passive evidence alone reinstates blind (an expired ejection returns untested), waits
//! out a whole ejection when a node comes back early, and never notices a member nobody
//! uses. A *probe* closes those gaps: a connect made by the agent itself, whose outcome
//! the existing kernel programs classify like any other (`sock:inet_sock_set_state`,
//! `tcp:tcp_receive_reset`, `sk_err` at close). There is no second classification path:
//! the agent recognises its own connect in the ring buffer (tgid == its pid, and a
//! destination with a probe in flight here) and hands the outcome back to this module
//! and to the [`super::EjectionPolicy`].
//!
//! [`CheckScheduler`] is a plain data structure driven by an injected clock (every method
//! takes `now`, CLOCK_MONOTONIC ns), like the rest of the policy stage. It decides:
//!
//! - **verification** of an ejection that has expired (highest priority),
//! - **early probes** of ejected members every `early_probe_interval` (jittered),
//! - **background checks** of idle members: explicit `ADDR:PORT` pool members, and
//!   members of a CIDR pool entry once seen, with no connect from anyone for
//!   `idle_after`. Targets are never probed.
//!
//! Nothing is scanned per tick: ejected members wait in ordered sets, idle members in a
//! binary heap keyed by when they next become due (about 40 bytes a member: 1 M members
//! take ~40 MiB); a member whose destination saw traffic meanwhile is simply pushed back
//! when it surfaces. Two limits hold under any load: probes *started* per second (a token
//! bucket of `max_per_second / 10` tokens refilled at `max_per_second`, plus a hard
//! sliding window so that no one-second window ever holds more than `max_per_second`
//! starts) and probes in flight (`max_in_flight`). A probe whose kernel event never
//! arrives (a full ring buffer, a connect that failed before SYN_SENT) is accounted for
//! at `probe_timeout` plus [`LOST_GRACE`]: it counts as `lost` and as a failed probe.

use std::{
    cmp::Reverse,
    collections::{BTreeSet, BinaryHeap, HashMap, HashSet, VecDeque},
    net::SocketAddr,
    time::Duration,
};

use serde::{Deserialize, Serialize};

use super::{
    config::{format_duration, human_duration, parse_duration},
    ejection::Jitter,
};
use crate::{invalid::Invalid, source::event::Outcome};

/// The `[checks]` section of connmon.toml.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ChecksConfig {
    /// When an ejection expires, reinstate only after a probe succeeds.
    pub verify_before_reinstate: bool,
    /// A probe not established by then fails (the agent abandons it).
    #[serde(with = "human_duration")]
    pub probe_timeout: Duration,
    /// While ejected, probe this often (jittered); 0s = off.
    #[serde(with = "human_duration")]
    pub early_probe_interval: Duration,
    /// Probe explicit `ADDR:PORT` members (and seen CIDR members) idle this long; 0s = off.
    #[serde(with = "human_duration")]
    pub idle_after: Duration,
    /// Probes started per second, at most (global).
    pub max_per_second: u32,
    /// Probes pending at once, at most.
    pub max_in_flight: u32,
    /// Set by `connmon run --checks off`: every probe off, whatever the file says (also
    /// after SIGHUP). Not a file key.
    #[serde(skip)]
    pub forced_off: bool,
}

impl Default for ChecksConfig {
    fn default() -> Self {
        ChecksConfig {
            verify_before_reinstate: true,
            probe_timeout: Duration::from_secs(1),
            early_probe_interval: Duration::from_secs(5),
            idle_after: Duration::ZERO,
            max_per_second: 100,
            max_in_flight: 1024,
            forced_off: false,
        }
    }
}

/// The most `max_per_second` allowed (the sliding window keeps one timestamp per start).
pub const MAX_RATE: u32 = 100_000;
/// The most `max_in_flight` allowed (each is an open socket).
pub const MAX_IN_FLIGHT: u32 = 65_536;
/// How long after `probe_timeout` a probe without a kernel event is declared lost.
pub const LOST_GRACE: Duration = Duration::from_secs(2);

/// An invalid `[checks]` value (`key` without the `checks.` prefix).
fn invalid(key: &str, value: impl std::fmt::Display, allowed: &str) -> Invalid {
    Invalid::new(format!("checks.{key}"), value, allowed)
}

impl ChecksConfig {
    /// Every probe switched off: exactly the passive behaviour of connmon without checks.
    pub fn off() -> Self {
        ChecksConfig {
            verify_before_reinstate: false,
            early_probe_interval: Duration::ZERO,
            idle_after: Duration::ZERO,
            ..ChecksConfig::default()
        }
    }

    /// This configuration as it applies: all off when `forced_off`.
    pub fn effective(&self) -> Self {
        if self.forced_off {
            ChecksConfig {
                forced_off: true,
                ..ChecksConfig::off()
            }
        } else {
            self.clone()
        }
    }

    /// Whether any kind of probe can ever be sent.
    pub fn any_enabled(&self) -> bool {
        self.verify_before_reinstate
            || !self.early_probe_interval.is_zero()
            || !self.idle_after.is_zero()
    }

    /// Checks every value; the first bad one is the error.
    pub fn validate(&self) -> Result<(), Invalid> {
        // (key, value, whether 0s means off, lowest, highest)
        for (key, d, off, lo, hi) in [
            ("probe_timeout", self.probe_timeout, false, "10ms", "60s"),
            (
                "early_probe_interval",
                self.early_probe_interval,
                true,
                "100ms",
                "1h",
            ),
            ("idle_after", self.idle_after, true, "100ms", "24h"),
        ] {
            let bound = |text| parse_duration(text).expect("a valid bound");
            if !(off && d.is_zero()) && (d < bound(lo) || d > bound(hi)) {
                let off = if off { "0s (off) or " } else { "" };
                let allowed = format!("must be {off}between {lo} and {hi}");
                return Err(invalid(key, format_duration(d), &allowed));
            }
        }
        for (key, n, max) in [
            ("max_per_second", self.max_per_second, MAX_RATE),
            ("max_in_flight", self.max_in_flight, MAX_IN_FLIGHT),
        ] {
            if n == 0 || n > max {
                return Err(invalid(key, n, &format!("must be between 1 and {max}")));
            }
        }
        Ok(())
    }
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

const SEC: u64 = 1_000_000_000;

/// Why a probe was sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Purpose {
    /// The member's ejection expired: reinstate only if this succeeds.
    Verify,
    /// The member is ejected: reinstate early if this succeeds.
    Early,
    /// The member was idle for `idle_after`: its outcome is evidence like any connect.
    Idle,
}

/// Ask the prober to connect to `dst` and give up after `timeout`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProbeRequest {
    pub dst: SocketAddr,
    pub timeout: Duration,
}

/// A probe that was in flight and has ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProbeEnded {
    pub dst: SocketAddr,
    pub purpose: Purpose,
    /// The kernel's outcome; None when no kernel event arrived in time (lost).
    pub outcome: Option<Outcome>,
}

impl ProbeEnded {
    pub fn succeeded(&self) -> bool {
        self.outcome == Some(Outcome::Established)
    }
}

/// Probe totals for `stats` and OTLP (kept apart from the clients' outcomes).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, schemars::JsonSchema)]
pub struct ProbeCounts {
    /// Probes handed to the prober.
    pub sent: u64,
    pub verify: u64,
    pub early: u64,
    pub idle: u64,
    pub established: u64,
    /// Any failed outcome (refused, timeout, abandoned, unreachable).
    pub failed: u64,
    /// No kernel event within `probe_timeout` + 2 s (counted as failed too).
    pub lost: u64,
    /// Requests the prober's queue could not take (never sent; retried later).
    pub dropped: u64,
    /// Pending right now.
    pub in_flight: u64,
    /// Members scheduled for background checks.
    pub scheduled: u64,
}

/// What a destination is to the scheduler while it is ejected.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum EjectedState {
    /// Early probes only (or nothing, when they are off).
    Waiting,
    /// The ejection expired: the policy waits for a probe's verdict.
    Verifying,
}

/// An ejected destination and where it waits (its key in `verify_due` or `early_due`).
#[derive(Clone, Copy, Debug)]
struct EjectedEntry {
    state: EjectedState,
    due: Option<u64>,
}

#[derive(Clone, Copy, Debug)]
struct InFlight {
    purpose: Purpose,
    deadline_ns: u64,
}

/// Rate limiting: a token bucket for spread, a sliding one-second window for the bound.
#[derive(Debug)]
struct RateLimit {
    rate: u64,
    capacity: u64,
    /// Tokens scaled by 1e9 (token-nanoseconds), so refills need no floats.
    tokens_scaled: u128,
    refilled_at: u64,
    /// Start times within the last second (at most `rate`).
    window: VecDeque<u64>,
}

impl RateLimit {
    fn new(rate: u32, now: u64) -> Self {
        let rate = u64::from(rate.max(1));
        let capacity = rate.div_ceil(10).max(1);
        RateLimit {
            rate,
            capacity,
            tokens_scaled: u128::from(capacity) * u128::from(SEC),
            refilled_at: now,
            window: VecDeque::with_capacity(rate.min(4096) as usize),
        }
    }

    fn refill(&mut self, now: u64) {
        let elapsed = now.saturating_sub(self.refilled_at);
        self.refilled_at = self.refilled_at.max(now);
        let max = u128::from(self.capacity) * u128::from(SEC);
        self.tokens_scaled =
            (self.tokens_scaled + u128::from(elapsed) * u128::from(self.rate)).min(max);
        while self.window.front().is_some_and(|&t| t + SEC <= now) {
            self.window.pop_front();
        }
    }

    fn try_take(&mut self, now: u64) -> bool {
        self.refill(now);
        if self.tokens_scaled < u128::from(SEC) || self.window.len() as u64 >= self.rate {
            return false;
        }
        self.tokens_scaled -= u128::from(SEC);
        self.window.push_back(now);
        true
    }

    /// When the next start is allowed.
    /// When the next batch of starts is allowed: 10 ms worth of tokens (at least one,
    /// at most the bucket), so that a busy schedule wakes the pipeline ~100 times a
    /// second, not once per token.
    fn next_allowed(&self, now: u64) -> u64 {
        let batch = (self.rate / 100).clamp(1, self.capacity);
        let missing = (u128::from(batch) * u128::from(SEC)).saturating_sub(self.tokens_scaled);
        let token_at = self.refilled_at.saturating_add(
            u64::try_from(missing.div_ceil(u128::from(self.rate))).unwrap_or(u64::MAX),
        );
        let window_at = if self.window.len() as u64 >= self.rate {
            self.window.front().map_or(now, |&t| t + SEC)
        } else {
            now
        };
        token_at.max(window_at).max(now)
    }
}

/// The probe schedule. See the module documentation.
#[derive(Debug)]
pub struct CheckScheduler {
    config: ChecksConfig,
    probe_timeout_ns: u64,
    early_ns: u64,
    idle_ns: u64,
    rate: RateLimit,
    jitter: Jitter,
    /// Ejected probe-able destinations.
    ejected: HashMap<SocketAddr, EjectedEntry>,
    /// Verification probes due, by time (retries after a dropped request are in the future).
    verify_due: BTreeSet<(u64, SocketAddr)>,
    /// Early probes due, by time.
    early_due: BTreeSet<(u64, SocketAddr)>,
    /// Background checks: exactly one entry per scheduled member.
    idle_due: BinaryHeap<Reverse<(u64, SocketAddr)>>,
    /// Destinations of CIDR entries scheduled because they were seen.
    seen: HashSet<SocketAddr>,
    /// Bound of `seen`.
    max_seen: usize,
    in_flight: HashMap<SocketAddr, InFlight>,
    deadlines: BTreeSet<(u64, SocketAddr)>,
    counts: ProbeCounts,
}

impl CheckScheduler {
    /// A scheduler with nothing scheduled. `config` must be valid; `max_seen` bounds
    /// the CIDR members remembered for background checks (the destination table's
    /// bound is a good choice).
    pub fn new(config: ChecksConfig, max_seen: usize, seed: u64, now: u64) -> Self {
        CheckScheduler {
            probe_timeout_ns: nanos(config.probe_timeout),
            early_ns: nanos(config.early_probe_interval),
            idle_ns: nanos(config.idle_after),
            rate: RateLimit::new(config.max_per_second, now),
            jitter: Jitter::new(seed),
            ejected: HashMap::new(),
            verify_due: BTreeSet::new(),
            early_due: BTreeSet::new(),
            idle_due: BinaryHeap::new(),
            seen: HashSet::new(),
            max_seen: max_seen.max(1),
            in_flight: HashMap::new(),
            deadlines: BTreeSet::new(),
            counts: ProbeCounts::default(),
            config,
        }
    }

    pub fn config(&self) -> &ChecksConfig {
        &self.config
    }

    /// Applies a reloaded configuration (SIGHUP). Ejected members and probes in flight
    /// are kept; the schedules are rebuilt for the new intervals.
    pub fn reconfigure(&mut self, config: ChecksConfig, now: u64) {
        if config == self.config {
            return;
        }
        self.probe_timeout_ns = nanos(config.probe_timeout);
        self.early_ns = nanos(config.early_probe_interval);
        let idle_changed = config.idle_after != self.config.idle_after;
        self.idle_ns = nanos(config.idle_after);
        if config.max_per_second != self.config.max_per_second {
            self.rate = RateLimit::new(config.max_per_second, now);
        }
        self.config = config;
        let waiting: Vec<SocketAddr> = self
            .ejected
            .iter()
            .filter(|(_, e)| e.state == EjectedState::Waiting)
            .map(|(d, _)| *d)
            .collect();
        for dst in waiting {
            self.schedule_early(dst, now);
        }
        if idle_changed {
            // The caller sets the explicit members again (`set_members`).
            self.idle_due.clear();
            if self.idle_ns == 0 {
                self.seen.clear();
            } else {
                let seen: Vec<SocketAddr> = self.seen.iter().copied().collect();
                for dst in seen {
                    self.push_idle(dst, now, true);
                }
            }
        }
    }

    /// Probe totals so far.
    pub fn counts(&self) -> ProbeCounts {
        ProbeCounts {
            in_flight: self.in_flight.len() as u64,
            scheduled: self.idle_due.len() as u64,
            ..self.counts
        }
    }

    /// Whether a probe to `dst` is pending.
    pub fn in_flight(&self, dst: &SocketAddr) -> bool {
        self.in_flight.contains_key(dst)
    }

    /// Schedules the explicit `ADDR:PORT` pool members for background checks (at start
    /// and after every pool change), spread over one `idle_after`. The schedule is
    /// rebuilt in O(n); no copy of the pool is kept: whether a destination is still a
    /// member is asked when its check is due (`poll`), so a removed member's entry is
    /// dropped then.
    pub fn set_members<'a>(&mut self, members: impl IntoIterator<Item = &'a SocketAddr>, now: u64) {
        self.idle_due.clear();
        if self.idle_ns == 0 {
            return;
        }
        let mut entries = Vec::new();
        let seen: Vec<SocketAddr> = self.seen.iter().copied().collect();
        for dst in seen.into_iter().chain(members.into_iter().copied()) {
            let due = now
                .saturating_add(self.idle_ns)
                .saturating_add(self.jitter.up_to(self.idle_ns));
            entries.push(Reverse((due, dst)));
        }
        entries.sort_unstable_by_key(|Reverse((_, dst))| *dst);
        entries.dedup_by_key(|Reverse((_, dst))| *dst);
        self.idle_due = BinaryHeap::from(entries);
    }

    /// A CIDR member was seen (a connect to it): from now on it gets background checks.
    /// Returns false when the bound of remembered CIDR members is reached.
    pub fn saw_network_member(&mut self, dst: SocketAddr, now: u64) -> bool {
        if self.idle_ns == 0 || self.seen.contains(&dst) {
            return true;
        }
        if self.seen.len() >= self.max_seen {
            return false;
        }
        self.seen.insert(dst);
        self.push_idle(dst, now, false);
        true
    }

    /// `dst` was ejected: it gets early probes from now on (if they are on).
    pub fn ejected(&mut self, dst: SocketAddr, now: u64) {
        self.schedule_early(dst, now);
    }

    /// `dst`'s ejection expired and the policy waits for a verification probe.
    pub fn verify(&mut self, dst: SocketAddr, now: u64) {
        if self
            .ejected
            .get(&dst)
            .is_some_and(|e| e.state == EjectedState::Verifying && e.due.is_some())
        {
            return;
        }
        self.set_due(dst, EjectedState::Verifying, Some(now));
    }

    /// A verification could not conclude (e.g. during a local outage): try again later.
    pub fn verify_later(&mut self, dst: SocketAddr, now: u64) {
        let retry = now.saturating_add(self.retry_ns());
        self.set_due(dst, EjectedState::Verifying, Some(retry));
    }

    /// `dst` is no longer ejected (reinstated or gone).
    pub fn reinstated(&mut self, dst: SocketAddr) {
        self.unschedule(&dst);
        self.ejected.remove(&dst);
    }

    /// Removes `dst`'s pending ejected-probe entry, if any.
    fn unschedule(&mut self, dst: &SocketAddr) {
        let Some(entry) = self.ejected.get_mut(dst) else {
            return;
        };
        if let Some(at) = entry.due.take() {
            match entry.state {
                EjectedState::Verifying => self.verify_due.remove(&(at, *dst)),
                EjectedState::Waiting => self.early_due.remove(&(at, *dst)),
            };
        }
    }

    /// Makes `dst` ejected in `state`, due at `due` (None: nothing scheduled).
    fn set_due(&mut self, dst: SocketAddr, state: EjectedState, due: Option<u64>) {
        self.unschedule(&dst);
        self.ejected.insert(dst, EjectedEntry { state, due });
        if let Some(at) = due {
            match state {
                EjectedState::Verifying => self.verify_due.insert((at, dst)),
                EjectedState::Waiting => self.early_due.insert((at, dst)),
            };
        }
    }

    /// How long before a verification is retried after an inconclusive or unsent probe.
    fn retry_ns(&self) -> u64 {
        self.probe_timeout_ns.max(SEC)
    }

    fn schedule_early(&mut self, dst: SocketAddr, now: u64) {
        // Jitter of up to 20 %, so members ejected together are not probed together.
        let due = (self.early_ns > 0).then(|| {
            now.saturating_add(self.early_ns)
                .saturating_add(self.jitter.up_to(self.early_ns / 5))
        });
        self.set_due(dst, EjectedState::Waiting, due);
    }

    fn push_idle(&mut self, dst: SocketAddr, now: u64, spread: bool) {
        // A fresh schedule spreads its members over one idle period (plus 10 % jitter),
        // so a million members added at once do not all become due at the same moment.
        let jitter = if spread {
            self.jitter.up_to(self.idle_ns)
        } else {
            self.jitter.up_to(self.idle_ns / 10)
        };
        let due = now.saturating_add(self.idle_ns).saturating_add(jitter);
        self.idle_due.push(Reverse((due, dst)));
    }

    /// A kernel connect outcome made by this process: if a probe to `dst` is in flight,
    /// it has ended and this is its result. Other connects of the agent (an OTLP
    /// collector, an HAProxy runtime API over TCP) return None.
    pub fn on_own_connect(&mut self, dst: SocketAddr, outcome: Outcome) -> Option<ProbeEnded> {
        let flight = self.in_flight.remove(&dst)?;
        self.deadlines.remove(&(flight.deadline_ns, dst));
        if outcome == Outcome::Established {
            self.counts.established += 1;
        } else {
            self.counts.failed += 1;
        }
        Some(ProbeEnded {
            dst,
            purpose: flight.purpose,
            outcome: Some(outcome),
        })
    }

    /// Whether anything is scheduled or in flight (cheap; no clock read needed).
    pub fn busy(&self) -> bool {
        !(self.verify_due.is_empty()
            && self.early_due.is_empty()
            && self.idle_due.is_empty()
            && self.deadlines.is_empty())
    }

    /// The earliest moment [`CheckScheduler::poll`] has something to do.
    pub fn next_deadline(&self, now: u64) -> Option<u64> {
        let work = [
            self.verify_due.first().map(|&(t, _)| t),
            self.early_due.first().map(|&(t, _)| t),
            self.idle_due.peek().map(|Reverse((t, _))| *t),
        ]
        .into_iter()
        .flatten()
        .min();
        let work = work.and_then(|t| {
            if t > now {
                Some(t)
            } else if self.room() {
                Some(self.rate.next_allowed(now))
            } else {
                // Full: a slot is freed by a kernel event (which wakes the pipeline
                // anyway) or by a lost probe's deadline below.
                None
            }
        });
        let lost = self.deadlines.first().map(|&(t, _)| t);
        [work, lost].into_iter().flatten().min()
    }

    /// Ends probes past their deadline (appended to `ended` as lost) and starts the
    /// probes that are due, as far as the rate and in-flight limits allow (appended to
    /// `requests`). `is_member(dst)`: `dst` is still a pool member (never a target);
    /// `last_activity(dst)`: when anyone last connected to `dst` (CLOCK_MONOTONIC ns),
    /// if known.
    pub fn poll(
        &mut self,
        now: u64,
        is_member: impl Fn(&SocketAddr) -> bool,
        last_activity: impl Fn(&SocketAddr) -> Option<u64>,
        requests: &mut Vec<ProbeRequest>,
        ended: &mut Vec<ProbeEnded>,
    ) {
        while let Some(&(deadline, dst)) = self.deadlines.first() {
            if deadline > now {
                break;
            }
            self.deadlines.pop_first();
            if let Some(flight) = self.in_flight.remove(&dst) {
                self.counts.lost += 1;
                self.counts.failed += 1;
                ended.push(ProbeEnded {
                    dst,
                    purpose: flight.purpose,
                    outcome: None,
                });
            }
        }
        // Verification first: the policy holds those members out until it hears back.
        while let Some(&(due, dst)) = self.verify_due.first() {
            if due > now || !self.room() {
                break;
            }
            if self.in_flight.contains_key(&dst) {
                // An early probe is already on its way: its success reinstates; its
                // failure makes the policy re-eject. Look again after it ended.
                self.verify_later(dst, now);
                continue;
            }
            if !self.start(dst, Purpose::Verify, now, requests) {
                break;
            }
            self.set_due(dst, EjectedState::Verifying, None);
        }
        while let Some(&(due, dst)) = self.early_due.first() {
            if due > now || !self.room() {
                break;
            }
            if !self.in_flight.contains_key(&dst) && !self.start(dst, Purpose::Early, now, requests)
            {
                break;
            }
            self.schedule_early(dst, now);
        }
        while let Some(&Reverse((due, dst))) = self.idle_due.peek() {
            if due > now || !self.room() {
                break;
            }
            self.idle_due.pop();
            if !is_member(&dst) {
                self.seen.remove(&dst);
                continue;
            }
            if let Some(last) = last_activity(&dst) {
                let idle_at = last.saturating_add(self.idle_ns);
                if idle_at > now {
                    self.idle_due.push(Reverse((idle_at, dst)));
                    continue;
                }
            }
            if self.ejected.contains_key(&dst) || self.in_flight.contains_key(&dst) {
                self.push_idle(dst, now, false);
                continue;
            }
            if !self.start(dst, Purpose::Idle, now, requests) {
                // No token yet: the member keeps its place at the head. Re-queued at
                // `now`, it would go behind every other overdue member at each poll
                // between two tokens, and a busy pipeline polls far more often than
                // tokens arrive: members starved for tens of seconds.
                self.idle_due.push(Reverse((due, dst)));
                break;
            }
            self.push_idle(dst, now, false);
        }
    }

    fn room(&self) -> bool {
        self.in_flight.len() < self.config.max_in_flight as usize
    }

    fn start(
        &mut self,
        dst: SocketAddr,
        purpose: Purpose,
        now: u64,
        requests: &mut Vec<ProbeRequest>,
    ) -> bool {
        if !self.room() || !self.rate.try_take(now) {
            return false;
        }
        let deadline_ns = now
            .saturating_add(self.probe_timeout_ns)
            .saturating_add(nanos(LOST_GRACE));
        self.in_flight.insert(
            dst,
            InFlight {
                purpose,
                deadline_ns,
            },
        );
        self.deadlines.insert((deadline_ns, dst));
        self.counts.sent += 1;
        match purpose {
            Purpose::Verify => self.counts.verify += 1,
            Purpose::Early => self.counts.early += 1,
            Purpose::Idle => self.counts.idle += 1,
        }
        requests.push(ProbeRequest {
            dst,
            timeout: self.config.probe_timeout,
        });
        true
    }

    /// The prober could not take a request (its queue was full): the probe was never
    /// sent. It leaves the in-flight set and is retried later.
    pub fn unsent(&mut self, request: &ProbeRequest, now: u64) {
        let Some(flight) = self.in_flight.remove(&request.dst) else {
            return;
        };
        self.deadlines.remove(&(flight.deadline_ns, request.dst));
        self.counts.sent = self.counts.sent.saturating_sub(1);
        self.counts.dropped += 1;
        let retry = now.saturating_add(self.retry_ns());
        if flight.purpose == Purpose::Verify {
            self.set_due(request.dst, EjectedState::Verifying, Some(retry));
        }
    }
}

#[cfg(test)]
mod tests;
