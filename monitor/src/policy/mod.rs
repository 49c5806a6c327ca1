//! The policy stage: turns the stream of connect outcomes into per-destination health
//! and into evict / reinstate decisions a pool controller can trust — Envoy-style
//! outlier detection for any process on the host — plus diagnoses for people.
//!
//! [`EjectionPolicy`] is a plain data structure driven by an injected clock: every
//! method takes `now`, CLOCK_MONOTONIC nanoseconds (the clock of the kernel's
//! `ktime_ns`), and appends what it decided to a caller-provided `Vec<Decision>`
//! (nothing is allocated when nothing happens). Wall-clock output goes through the
//! [`WallClock`] it was given, jitter through a seeded generator; it never reads a clock
//! itself, so tests replay any scenario deterministically.
//!
//! The flow for one outcome: localhost-trap check → evidence scope (an untrusted connect
//! stops here, see [`evidence`]) → local-outage tracker → destination table → (if the
//! destination is a candidate and not already ejected) probation or the detectors →
//! guards → ejection. Ejections end in [`EjectionPolicy::tick`]. Destinations are keyed
//! by [`DestinationKey`]: another network namespace's loopback is its own destination,
//! always a `target` (no pool controller on the host can reach it). The local-outage
//! tracker counts trusted connects by address, as before.

pub mod checks;
pub mod config;
pub mod decision;
pub mod detector;
pub mod diagnosis;
pub mod ejection;
pub mod evidence;
pub mod guard;
mod overrides;
pub mod pool;
pub mod snapshot;
pub mod state;
mod verification;

#[cfg(test)]
mod checks_tests;
#[cfg(test)]
mod proptests;
#[cfg(test)]
mod tests;

use std::{
    collections::{BTreeSet, HashMap, HashSet},
    net::SocketAddr,
    sync::Arc,
    time::Duration,
};

pub use config::PolicyConfig;
pub use decision::{
    Decision, Diagnosis, EjectionTerm, Eviction, Evidence, Finding, Reason, Reinstatement,
    Suspicion, Trigger,
};
use detector::{Detectors, SynVerdict, Verdict};
use diagnosis::LocalhostTraps;
use ejection::{Backoff, Ejected, Jitter, Standing};
pub use evidence::{EvidenceConfig, EvidenceScope, Trust};
use guard::{OutageChange, OutageDetector, allowed_ejections};
pub use overrides::FleetApply;
pub use pool::{PoolEntry, PoolError, PoolMembership, Role};
pub use snapshot::{
    CgroupTally, DestinationState, DestinationView, EvidenceView, OutcomeCounts, PolicySnapshot,
    SnapshotCopy,
};
pub use state::{LoadReport, StateError};
pub use verification::ProbeVerdict;

use crate::{
    clock::WallClock,
    source::event::{ConnectRecord, Outcome, SynRetransmitRecord},
    table::{DestinationKey, DestinationTable, FailureMode, StreakKind},
};

/// The eviction engine. See the module documentation.
#[derive(Debug)]
pub struct EjectionPolicy {
    config: PolicyConfig,
    detectors: Detectors,
    backoff: Backoff,
    pool: PoolMembership,
    table: DestinationTable<Standing>,
    wall: WallClock,
    jitter: Jitter,
    outage: OutageDetector,
    traps: LocalhostTraps,
    evidence: EvidenceScope,
    host_netns: u32,
    /// Connects and SYN retransmits outside the evidence scope (reported, not counted).
    untrusted: u64,
    /// Ejections in force by end time.
    expiries: BTreeSet<(u64, DestinationKey)>,
    /// Candidates seen in the table that the pool does not name by address and port.
    seen_candidates: usize,
    /// `table.evicted()` when `seen_candidates` was last recounted.
    seen_counted_at: u64,
    guard_noticed_ns: Option<u64>,
    next_decay_sweep_ns: u64,
    state_changed: bool,
    /// `checks.verify_before_reinstate`: an expired ejection of a pool member waits for
    /// a successful probe (see [`checks`]).
    verify_before_reinstate: bool,
    /// Expired ejections waiting for their verification probe (still ejected).
    verifying: HashSet<DestinationKey>,
    /// Verifications due since the last [`EjectionPolicy::take_verifications`].
    verifications: Vec<DestinationKey>,
    /// Ejections in force that are other hosts' verdicts (`reason: fleet`), by origin host.
    fleet_origins: HashMap<DestinationKey, Arc<str>>,
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

fn ms(ns: u64) -> u64 {
    ns / 1_000_000
}

impl EjectionPolicy {
    /// A policy with an empty table.
    ///
    /// `pool` is built by the caller from `config.pool_entries()` and/or a `--pool`
    /// file; `host_netns` is the inode of connmon's own network namespace, the host's
    /// (for the localhost trap, the evidence scope and destination keys); `seed` seeds
    /// the jitter. `config` was validated (`Config::validate`); fails when a
    /// `policy.evidence.netns` path cannot be opened.
    pub fn new(
        config: PolicyConfig,
        pool: PoolMembership,
        host_netns: u32,
        wall: WallClock,
        seed: u64,
    ) -> Result<Self, crate::invalid::Invalid> {
        let evidence = EvidenceScope::from_config(&config.evidence, host_netns)?;
        Ok(EjectionPolicy {
            evidence,
            host_netns,
            untrusted: 0,
            detectors: Detectors::from_config(&config),
            backoff: Backoff::from_config(&config),
            table: DestinationTable::new(config.max_destinations, config.ratio_window),
            outage: OutageDetector::new(&config),
            traps: LocalhostTraps::new(host_netns, nanos(config.ratio_window)),
            pool,
            wall,
            jitter: Jitter::new(seed),
            expiries: BTreeSet::new(),
            seen_candidates: 0,
            seen_counted_at: 0,
            guard_noticed_ns: None,
            next_decay_sweep_ns: 0,
            state_changed: false,
            verify_before_reinstate: false,
            verifying: HashSet::new(),
            verifications: Vec::new(),
            fleet_origins: HashMap::new(),
            config,
        })
    }

    pub fn config(&self) -> &PolicyConfig {
        &self.config
    }

    pub fn pool(&self) -> &PoolMembership {
        &self.pool
    }

    pub fn table(&self) -> &DestinationTable<Standing> {
        &self.table
    }

    /// Replaces the wall-clock mapping (e.g. after the system clock was stepped).
    pub fn set_wall_clock(&mut self, wall: WallClock) {
        self.wall = wall;
    }

    /// Replaces the pool (SIGHUP) keeping all table state. Roles are recomputed; an
    /// ejection in force runs to its end even if the destination left the pool.
    pub fn set_pool(&mut self, pool: PoolMembership) {
        self.pool = pool;
        for (dst, dest) in self.table.iter_mut() {
            dest.annotation.role = role_in(&self.pool, &dst);
        }
        self.recount_seen_candidates();
    }

    /// The evidence scope in force: which connects may move a verdict.
    pub fn evidence(&self) -> &EvidenceScope {
        &self.evidence
    }

    /// Replaces the evidence scope (SIGHUP). What was recorded stays; from now on only
    /// connects the new scope trusts count.
    pub fn set_evidence(&mut self, evidence: EvidenceScope) {
        self.evidence = evidence;
    }

    /// Connects and SYN retransmits that were outside the evidence scope.
    pub fn untrusted(&self) -> u64 {
        self.untrusted
    }

    /// The destination key of a connect to `addr` from network namespace `netns`.
    pub fn key_of(&self, addr: SocketAddr, netns: u32) -> DestinationKey {
        DestinationKey::of(addr, netns, self.host_netns)
    }

    /// The role of a destination: another namespace's loopback is always a target.
    pub fn role(&self, key: &DestinationKey) -> Role {
        role_in(&self.pool, key)
    }

    /// Whether this role may be ejected automatically.
    fn candidate(evict_targets: bool, role: Role) -> bool {
        role == Role::Proxy || evict_targets
    }

    /// Sets the role of a new entry and counts it for the guard.
    fn adopt(&mut self, dst: DestinationKey) {
        let role = self.role(&dst);
        if let Some(dest) = self.table.get_mut(dst) {
            dest.annotation.role = role;
        }
        if Self::candidate(self.config.evict_targets, role) && !is_member(&self.pool, &dst) {
            self.seen_candidates += 1;
        }
    }

    fn recount_seen_candidates(&mut self) {
        let evict_targets = self.config.evict_targets;
        let pool = &self.pool;
        self.seen_candidates = self
            .table
            .iter()
            .filter(|(dst, d)| {
                Self::candidate(evict_targets, d.annotation.role) && !is_member(pool, dst)
            })
            .count();
        self.seen_counted_at = self.table.dropped();
    }

    /// Pool members known to the percentage guard.
    pub fn known_members(&mut self) -> usize {
        if self.table.dropped() != self.seen_counted_at {
            self.recount_seen_candidates();
        }
        self.pool.members().len() + self.seen_candidates
    }

    /// Ejections in force (those waiting for their verification probe included).
    pub fn ejected(&self) -> usize {
        self.expiries.len() + self.verifying.len()
    }

    /// When the next ejection ends: the latest moment to call [`EjectionPolicy::tick`].
    pub fn next_deadline(&self) -> Option<u64> {
        self.expiries.first().map(|&(until, _)| until)
    }

    /// True once after every change worth persisting (an ejection began or ended).
    pub fn take_state_changed(&mut self) -> bool {
        std::mem::take(&mut self.state_changed)
    }

    /// Feeds one connect outcome. A connect outside the evidence scope is only
    /// diagnosed (localhost trap) and counted as untrusted.
    pub fn on_connect(&mut self, rec: &ConnectRecord, now: u64, out: &mut Vec<Decision>) {
        let trusted = self.evidence.trusts(&rec.who);
        if let Some(finding) = self.traps.check(rec, trusted, now) {
            out.push(Decision::Diagnosis(Diagnosis::new(
                finding,
                Some(rec.ktime_ns),
            )));
        }
        if !trusted {
            self.untrusted = self.untrusted.saturating_add(1);
            return;
        }
        let key = self.key_of(rec.dst, rec.who.netns);
        if rec.outcome != Outcome::Reset {
            self.observe_outage(
                rec.dst,
                rec.outcome.is_failure(),
                Some(rec.ktime_ns),
                now,
                out,
            );
        }
        let Some((_, created)) = self.table.record_connect(key, rec, now) else {
            return;
        };
        if created {
            self.adopt(key);
        }
        let (base_ns, slot_ns, evict_targets) = (
            self.backoff.base_ns,
            self.table.slot_ns(),
            self.config.evict_targets,
        );
        let Some(dest) = self.table.get_mut(key) else {
            return;
        };
        let standing = &mut dest.annotation;
        standing.decay(now, base_ns);
        if standing.ejected.is_some() {
            return;
        }
        if !rec.outcome.is_failure() {
            standing.suspect = false;
            standing.probation = false;
            return;
        }
        if !Self::candidate(evict_targets, standing.role) {
            return;
        }
        if standing.ejection_count > 0 {
            standing.healthy_since_ns = now;
        }
        let verdict = if standing.probation {
            let streak = StreakKind::of(rec.outcome).map_or(1, |k| dest.streak(k));
            Reason::of(rec.outcome).map(|reason| Verdict { reason, streak })
        } else {
            self.detectors
                .after_failure(dest, rec.outcome, now, slot_ns)
        };
        if let Some(verdict) = verdict {
            self.try_eject(key, verdict, Trigger::from(rec), now, out);
        }
    }

    /// Feeds one SYN retransmit of a pending connect: the first makes the destination a
    /// suspect, `syn_retransmits` of them eject it (failure mode `drop`).
    pub fn on_syn_retransmit(
        &mut self,
        rec: &SynRetransmitRecord,
        now: u64,
        out: &mut Vec<Decision>,
    ) {
        if !self.evidence.trusts(&rec.who) {
            self.untrusted = self.untrusted.saturating_add(1);
            return;
        }
        let key = self.key_of(rec.dst, rec.who.netns);
        let Some((_, created)) = self.table.record_syn_retransmit(key, now) else {
            return;
        };
        if created {
            self.adopt(key);
        }
        let evict_targets = self.config.evict_targets;
        let verdict = self.detectors.after_syn_retransmit(rec.retransmits);
        let Some(dest) = self.table.get_mut(key) else {
            return;
        };
        let standing = &mut dest.annotation;
        if standing.ejected.is_some() || !Self::candidate(evict_targets, standing.role) {
            return;
        }
        match verdict {
            SynVerdict::Nothing => {}
            SynVerdict::Suspect => {
                if !standing.suspect {
                    standing.suspect = true;
                    out.push(Decision::Suspect(Suspicion {
                        dst: rec.dst,
                        netns: key.netns,
                        role: standing.role,
                        syn_retransmits: rec.retransmits,
                        trigger: Trigger::from(rec),
                        detect_us: None,
                        ts: None,
                    }));
                }
            }
            SynVerdict::Evict => {
                standing.suspect = true;
                dest.note_failure_mode(FailureMode::Drop);
                let verdict = Verdict {
                    reason: Reason::SynRetransmits,
                    streak: rec.retransmits,
                };
                self.try_eject(key, verdict, Trigger::from(rec), now, out);
            }
        }
    }

    /// Ends expired ejections, lets the local-outage condition age out and decays idle
    /// ejection counts. Call it at [`EjectionPolicy::next_deadline`] or periodically.
    pub fn tick(&mut self, now: u64, out: &mut Vec<Decision>) {
        while let Some(&(until, dst)) = self.expiries.first() {
            if until > now {
                break;
            }
            self.expiries.pop_first();
            if self.verify_before_reinstate && self.role(&dst) == Role::Proxy {
                // Still ejected (and counted by the guard) until a probe answers.
                self.verifying.insert(dst);
                self.verifications.push(dst);
                continue;
            }
            self.reinstate(dst, now, out);
        }
        if self.outage.tick(now) == OutageChange::Ended {
            tracing::info!("local outage over: ejections resume");
        }
        if now >= self.next_decay_sweep_ns {
            let base_ns = self.backoff.base_ns;
            for (_, dest) in self.table.iter_mut() {
                dest.annotation.decay(now, base_ns);
            }
            self.next_decay_sweep_ns = now.saturating_add(base_ns);
        }
    }

    fn observe_outage(
        &mut self,
        dst: SocketAddr,
        failed: bool,
        trigger_ktime_ns: Option<u64>,
        now: u64,
        out: &mut Vec<Decision>,
    ) {
        match self.outage.observe(dst, failed, now) {
            OutageChange::Began {
                destinations,
                failing,
            } => {
                let finding = Finding::LocalOutage {
                    destinations,
                    failing,
                    window_ms: ms(nanos(self.config.outage_window)),
                };
                out.push(Decision::Diagnosis(Diagnosis::new(
                    finding,
                    trigger_ktime_ns,
                )));
            }
            OutageChange::Ended => tracing::info!("local outage over: ejections resume"),
            OutageChange::Unchanged => {}
        }
    }

    /// Applies the guards, then ejects.
    fn try_eject(
        &mut self,
        dst: DestinationKey,
        verdict: Verdict,
        trigger: Trigger,
        now: u64,
        out: &mut Vec<Decision>,
    ) {
        if self.outage.active() {
            return;
        }
        let known = self.known_members();
        let allowed = allowed_ejections(known, self.config.max_ejection_percent);
        if self.ejected() >= allowed {
            let quiet_ns = nanos(self.config.ratio_window);
            if self
                .guard_noticed_ns
                .is_none_or(|at| now.saturating_sub(at) >= quiet_ns)
            {
                self.guard_noticed_ns = Some(now);
                let finding = Finding::EjectionGuard {
                    dst: dst.addr,
                    netns: dst.netns,
                    ejected: u32::try_from(self.ejected()).unwrap_or(u32::MAX),
                    known_members: u32::try_from(known).unwrap_or(u32::MAX),
                    max_ejection_percent: self.config.max_ejection_percent,
                };
                out.push(Decision::Diagnosis(Diagnosis::new(
                    finding,
                    Some(trigger.ktime_ns),
                )));
            }
            return;
        }
        self.eject(dst, verdict, Some(trigger), None, now, out);
    }

    /// The ejection bookkeeping shared by automatic and manual ejections.
    fn eject(
        &mut self,
        dst: DestinationKey,
        verdict: Verdict,
        trigger: Option<Trigger>,
        fixed_ns: Option<u64>,
        now: u64,
        out: &mut Vec<Decision>,
    ) -> bool {
        let Some(dest) = self.table.get_mut(dst) else {
            return false;
        };
        let standing = &mut dest.annotation;
        standing.decay(now, self.backoff.base_ns);
        if let Some(previous) = standing.ejected.take() {
            self.expiries.remove(&(previous.until_ns, dst));
            self.verifying.remove(&dst);
        }
        standing.ejection_count = standing.ejection_count.saturating_add(1);
        let count = standing.ejection_count;
        let duration_ns =
            fixed_ns.unwrap_or_else(|| self.backoff.jittered_ns(count, &mut self.jitter));
        let until_ns = now.saturating_add(duration_ns);
        standing.ejected = Some(Box::new(Ejected {
            since_ns: now,
            until_ns,
            reason: verdict.reason,
        }));
        standing.probation = false;
        standing.suspect = false;
        let role = standing.role;
        let evidence = Evidence::of(dest, verdict.streak);
        let failure_mode = dest.failure_mode();
        dest.clear_evidence();
        self.fleet_origins.remove(&dst);
        self.expiries.insert((until_ns, dst));
        self.state_changed = true;
        out.push(Decision::Evict(Eviction {
            dst: dst.addr,
            netns: dst.netns,
            role,
            reason: verdict.reason,
            failure_mode,
            evidence,
            ejection: EjectionTerm {
                count,
                duration_ms: ms(duration_ns),
                until: self.wall.rfc3339(until_ns),
            },
            trigger,
            origin: None,
            local_outage: self.outage.active(),
            detect_us: None,
            ts: None,
        }));
        true
    }

    fn reinstate(&mut self, dst: DestinationKey, now: u64, out: &mut Vec<Decision>) -> bool {
        self.reinstate_as(dst, now, false, out)
    }

    /// Ends an ejection; `verified`: a probe succeeded just now.
    fn reinstate_as(
        &mut self,
        dst: DestinationKey,
        now: u64,
        verified: bool,
        out: &mut Vec<Decision>,
    ) -> bool {
        let Some(standing) = self.table.get_mut(dst).map(|d| &mut d.annotation) else {
            return false;
        };
        let Some(ejected) = standing.ejected.take() else {
            return false;
        };
        standing.probation = true;
        standing.healthy_since_ns = now;
        self.expiries.remove(&(ejected.until_ns, dst));
        let expired = self.verifying.remove(&dst) || ejected.until_ns <= now;
        self.state_changed = true;
        out.push(Decision::Reinstate(Reinstatement {
            dst: dst.addr,
            netns: dst.netns,
            ejected_ms: ms(now.saturating_sub(ejected.since_ns)),
            verified,
            early: verified && !expired,
            origin: self.fleet_origins.remove(&dst),
            ts: None,
        }));
        true
    }

    /// Whether `dst` is ejected now (waiting for verification included).
    pub fn is_ejected(&self, dst: &SocketAddr) -> bool {
        self.table
            .get(dst)
            .is_some_and(|d| d.annotation.ejected.is_some())
    }

    /// Every ejected destination, and whether it waits for its verification probe.
    /// Host destinations only (another namespace's loopback is never probed).
    pub fn ejections(&self) -> impl Iterator<Item = (SocketAddr, bool)> + '_ {
        self.expiries
            .iter()
            .map(|&(_, dst)| (dst, false))
            .chain(self.verifying.iter().map(|&dst| (dst, true)))
            .filter(|(dst, _)| !dst.is_foreign_local())
            .map(|(dst, verifying)| (dst.addr, verifying))
    }
}

/// The role of a destination in `pool`: another namespace's loopback is always a target.
fn role_in(pool: &PoolMembership, key: &DestinationKey) -> Role {
    if key.is_foreign_local() {
        Role::Target
    } else {
        pool.role(&key.addr)
    }
}

/// Whether the pool names this destination by address and port.
fn is_member(pool: &PoolMembership, key: &DestinationKey) -> bool {
    !key.is_foreign_local() && pool.members().contains(&key.addr)
}
