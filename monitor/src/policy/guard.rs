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

use std::{collections::HashMap, net::SocketAddr};

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

#[derive(Clone, Copy, Debug)]
struct Latest {
    at_ns: u64,
    failed: bool,
}

/// Tracks the latest outcome of every destination attempted within the outage window.
///
/// Entries older than the window are pruned in one pass at most ten times per window,
/// so the counts may include destinations up to a tenth of a window too old. The map is
/// bounded by `policy.max_destinations`; destinations beyond it are not counted.
#[derive(Debug)]
pub struct OutageDetector {
    window_ns: u64,
    min_destinations: usize,
    failure_ratio: f64,
    cap: usize,
    latest: HashMap<SocketAddr, Latest>,
    failing: usize,
    next_prune_ns: u64,
    active: bool,
}

impl OutageDetector {
    pub fn new(config: &PolicyConfig) -> Self {
        OutageDetector {
            window_ns: u64::try_from(config.outage_window.as_nanos())
                .unwrap_or(u64::MAX)
                .max(1),
            min_destinations: config.outage_min_destinations as usize,
            failure_ratio: config.outage_failure_ratio,
            cap: config.max_destinations,
            latest: HashMap::new(),
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
        let room = self.latest.len() < self.cap;
        match self.latest.get_mut(&dst) {
            Some(latest) => {
                if latest.failed != failed {
                    if failed {
                        self.failing += 1;
                    } else {
                        self.failing -= 1;
                    }
                }
                *latest = Latest { at_ns: now, failed };
            }
            None if room => {
                self.latest.insert(dst, Latest { at_ns: now, failed });
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
        let window_ns = self.window_ns;
        self.latest
            .retain(|_, l| l.at_ns.saturating_add(window_ns) > now);
        self.failing = self.latest.values().filter(|l| l.failed).count();
        self.next_prune_ns = now.saturating_add((window_ns / 10).max(1));
    }

    fn evaluate(&mut self) -> OutageChange {
        let attempted = self.latest.len();
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
