//! The two guards that keep the policy from emptying a pool for the wrong reason.
//!
//! * The percentage guard: never more than `max_ejection_percent` of the known pool
//!   members ejected at once, but always at least one (as Envoy's outlier detection
//!   does), so a single dead node of a small pool is still ejected; 0 % disables
//!   automatic ejection. When the guard withholds an ejection, an `ejection_guard`
//!   diagnosis says so, at most once per `policy.ratio_window`. "Known members" are
//!   the members the pool names by address and port plus every other candidate
//!   destination the table has seen (a CIDR member becomes known when traffic reaches
//!   it; with no pool configured every destination seen is a candidate).
//! * The local-outage detector: when at least `outage_min_destinations` distinct
//!   destinations were attempted within `outage_window` and at least
//!   `outage_failure_ratio` of them are failing (their latest connect in the window
//!   failed), the host's own network is the likely culprit. All destinations count,
//!   targets included — the host's network carries them all; resets of established
//!   connections do not (they prove the path works).

use std::{
    collections::HashMap,
    net::{SocketAddr, SocketAddrV4, SocketAddrV6},
};

use super::config::PolicyConfig;

/// How many destinations may be ejected at once out of `known` members.
pub fn allowed_ejections(known: usize, max_ejection_percent: u32) -> usize {
    if max_ejection_percent == 0 {
        return 0;
    }
    (known.saturating_mul(max_ejection_percent as usize) / 100).max(1)
}

/// A change of the local-outage condition.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OutageChange {
    Unchanged,
    Began { destinations: u32, failing: u32 },
    Ended,
}

/// Bit of an [`OutageDetector`] map value that marks a failed outcome; the other bits
/// are the time of the outcome in `unit_ns` units after `base_ns`.
const FAILED: u32 = 1 << 31;

/// Up to this many destinations are reserved when the detector is created.
const RESERVE_LIMIT: usize = 1 << 21;

/// Tracks the latest outcome of every destination attempted within the outage window.
///
/// Entries older than the window are pruned in one pass at most ten times per window,
/// so the counts may include destinations up to a tenth of a window too old. The map is
/// bounded by `policy.max_destinations`; destinations beyond it are not counted.
///
/// Memory: IPv4 and IPv6 destinations are kept in separate maps, so an IPv4 key is 6
/// bytes, and the value is a `u32` holding the failed flag and the outcome time in
/// units of 2^-20 of the window after `base_ns` (moved forward at every prune, so it
/// never overflows): an IPv4 bucket is 13 bytes with the control byte, instead of 49
/// for a `SocketAddr` key with a 16-byte value.
#[derive(Debug)]
pub struct OutageDetector {
    window_ns: u64,
    min_destinations: usize,
    failure_ratio: f64,
    cap: usize,
    /// Latest outcome per IPv4 destination: [`FAILED`] | time units after `base_ns`.
    latest4: HashMap<SocketAddrV4, u32>,
    /// The same for IPv6 destinations.
    latest6: HashMap<SocketAddrV6, u32>,
    /// Times in `latest4` and `latest6` count from here (a multiple of `unit_ns`).
    base_ns: u64,
    unit_ns: u64,
    failing: usize,
    next_prune_ns: u64,
    active: bool,
}

impl OutageDetector {
    pub fn new(config: &PolicyConfig) -> Self {
        let window_ns = u64::try_from(config.outage_window.as_nanos())
            .unwrap_or(u64::MAX)
            .max(1);
        OutageDetector {
            window_ns,
            min_destinations: config.outage_min_destinations as usize,
            failure_ratio: config.outage_failure_ratio,
            cap: config.max_destinations,
            latest4: HashMap::with_capacity(config.max_destinations.min(RESERVE_LIMIT)),
            latest6: HashMap::new(),
            base_ns: 0,
            unit_ns: (window_ns >> 20).max(1),
            failing: 0,
            next_prune_ns: 0,
            active: false,
        }
    }

    /// Whether a local outage is in progress.
    pub fn active(&self) -> bool {
        self.active
    }

    /// Records a connect outcome and reports whether the outage condition changed.
    pub fn observe(&mut self, dst: SocketAddr, failed: bool, now: u64) -> OutageChange {
        self.prune_if_due(now);
        let room = self.attempted() < self.cap;
        let units = now.saturating_sub(self.base_ns) / self.unit_ns;
        let value =
            u32::try_from(units).unwrap_or(!FAILED).min(!FAILED) | if failed { FAILED } else { 0 };
        let latest = match dst {
            SocketAddr::V4(a) => self.latest4.get_mut(&a),
            SocketAddr::V6(a) => self.latest6.get_mut(&a),
        };
        match latest {
            Some(latest) => {
                let was_failed = *latest & FAILED != 0;
                if was_failed != failed {
                    if failed {
                        self.failing += 1;
                    } else {
                        self.failing -= 1;
                    }
                }
                *latest = value;
            }
            None if room => {
                match dst {
                    SocketAddr::V4(a) => self.latest4.insert(a, value),
                    SocketAddr::V6(a) => self.latest6.insert(a, value),
                };
                if failed {
                    self.failing += 1;
                }
            }
            None => {}
        }
        self.evaluate()
    }

    /// Lets old outcomes age out; an outage can end here.
    pub fn tick(&mut self, now: u64) -> OutageChange {
        self.prune_if_due(now);
        self.evaluate()
    }

    fn prune_if_due(&mut self, now: u64) {
        if now < self.next_prune_ns {
            return;
        }
        let (window_ns, unit_ns, base_ns) = (self.window_ns, self.unit_ns, self.base_ns);
        let new_base = now.saturating_sub(window_ns) / unit_ns * unit_ns;
        let shift = new_base.saturating_sub(base_ns) / unit_ns;
        let keep = |l: &mut u32| {
            let units = u64::from(*l & !FAILED);
            let at_ns = base_ns.saturating_add(units.saturating_mul(unit_ns));
            if at_ns.saturating_add(window_ns) <= now {
                return false;
            }
            let moved = u32::try_from(units.saturating_sub(shift)).unwrap_or(!FAILED);
            *l = (*l & FAILED) | moved;
            true
        };
        self.latest4.retain(|_, l| keep(l));
        self.latest6.retain(|_, l| keep(l));
        self.base_ns = self.base_ns.max(new_base);
        let failed = |&l: &u32| l & FAILED != 0;
        self.failing = self.latest4.values().filter(|l| failed(l)).count()
            + self.latest6.values().filter(|l| failed(l)).count();
        self.next_prune_ns = now.saturating_add((window_ns / 10).max(1));
    }

    /// Destinations attempted within the window (give or take a tenth of it).
    fn attempted(&self) -> usize {
        self.latest4.len() + self.latest6.len()
    }

    fn evaluate(&mut self) -> OutageChange {
        let attempted = self.attempted();
        let holds = self.min_destinations > 0
            && attempted >= self.min_destinations
            && self.failing as f64 >= self.failure_ratio * attempted as f64;
        match (holds, self.active) {
            (true, false) => {
                self.active = true;
                OutageChange::Began {
                    destinations: u32::try_from(attempted).unwrap_or(u32::MAX),
                    failing: u32::try_from(self.failing).unwrap_or(u32::MAX),
                }
            }
            (false, true) => {
                self.active = false;
                OutageChange::Ended
            }
            _ => OutageChange::Unchanged,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEC: u64 = 1_000_000_000;

    fn dst(i: u8) -> SocketAddr {
        SocketAddr::from(([10, 9, 0, i], 80))
    }

    #[test]
    fn allows_a_percentage_but_at_least_one() {
        assert_eq!(allowed_ejections(10, 50), 5);
        assert_eq!(allowed_ejections(3, 50), 1);
        assert_eq!(allowed_ejections(1, 50), 1);
        assert_eq!(allowed_ejections(0, 50), 1);
        assert_eq!(allowed_ejections(10, 100), 10);
        assert_eq!(allowed_ejections(10, 0), 0);
    }

    #[test]
    fn outage_begins_once_and_ends_when_failures_age_out() {
        let mut o = OutageDetector::new(&PolicyConfig::default());
        assert_eq!(o.observe(dst(0), false, SEC), OutageChange::Unchanged);
        for i in 1..=3 {
            assert_eq!(o.observe(dst(i), true, SEC), OutageChange::Unchanged);
        }
        assert_eq!(
            o.observe(dst(4), true, SEC),
            OutageChange::Began {
                destinations: 5,
                failing: 4
            }
        );
        assert_eq!(
            o.observe(dst(5), true, SEC),
            OutageChange::Unchanged,
            "once per episode"
        );
        assert!(o.active());
        assert_eq!(o.tick(12 * SEC), OutageChange::Ended);
        assert!(!o.active());
    }

    #[test]
    fn outcome_times_stay_right_over_long_uptimes() {
        let mut o = OutageDetector::new(&PolicyConfig::default());
        let day = 86_400 * SEC;
        let mut at = SEC;
        for round in 0..3 {
            at += 400 * day;
            assert_eq!(o.observe(dst(0), false, at), OutageChange::Unchanged);
            for i in 1..=3 {
                o.observe(dst(i), true, at + u64::from(i) * SEC);
            }
            assert_eq!(
                o.observe(dst(4), true, at + 4 * SEC),
                OutageChange::Began {
                    destinations: 5,
                    failing: 4
                },
                "round {round}"
            );
            assert_eq!(
                o.tick(at + 9 * SEC),
                OutageChange::Unchanged,
                "nothing is older than the window yet (round {round})"
            );
            assert_eq!(o.tick(at + 15 * SEC), OutageChange::Ended, "round {round}");
        }
    }

    #[test]
    fn a_success_to_a_failing_destination_counts_it_healthy_again() {
        let mut o = OutageDetector::new(&PolicyConfig::default());
        for i in 0..4 {
            o.observe(dst(i), true, SEC);
        }
        for i in 0..4 {
            o.observe(dst(i), false, SEC);
        }
        assert_eq!(
            o.observe(dst(9), true, SEC),
            OutageChange::Unchanged,
            "1 of 5 failing"
        );
    }
}
