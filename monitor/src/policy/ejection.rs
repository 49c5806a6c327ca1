//! Ejection bookkeeping: how long an ejection lasts (exponential backoff capped at
//! `max_ejection`, plus jitter so a pool's nodes ejected together do not return
//! together), how the ejection count decays while a destination stays healthy, and the
//! per-destination [`Standing`] the policy keeps in the destination table.

use super::{config::PolicyConfig, decision::Reason, pool::Role};
use crate::table::Annotation;

/// Seeded jitter (fastrand's wyrand): deterministic in tests, and jitter needs spread,
/// not cryptographic quality.
#[derive(Clone, Debug)]
pub struct Jitter(fastrand::Rng);

impl Jitter {
    pub fn new(seed: u64) -> Self {
        Jitter(fastrand::Rng::with_seed(seed))
    }

    /// Uniform in `0..=max`.
    pub fn up_to(&mut self, max: u64) -> u64 {
        self.0.u64(..=max)
    }
}

/// Ejection durations: `min(base × 2^(n−1), max)` plus up to `jitter` of that.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Backoff {
    pub base_ns: u64,
    pub max_ns: u64,
    pub jitter: f64,
}

fn nanos(d: std::time::Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

impl Backoff {
    pub fn from_config(config: &PolicyConfig) -> Self {
        Backoff {
            base_ns: nanos(config.base_ejection).max(1),
            max_ns: nanos(config.max_ejection).max(1),
            jitter: config.jitter,
        }
    }

    /// The duration of the `count`-th ejection without jitter.
    pub fn duration_ns(&self, count: u32) -> u64 {
        let doublings = count.saturating_sub(1).min(63);
        self.base_ns
            .saturating_mul(1u64 << doublings)
            .min(self.max_ns)
    }

    /// The duration of the `count`-th ejection with jitter.
    pub fn jittered_ns(&self, count: u32, rng: &mut Jitter) -> u64 {
        let d = self.duration_ns(count);
        d.saturating_add(rng.up_to(self.jitter_ns(d)))
    }

    /// The longest any ejection can last.
    pub fn bound_ns(&self) -> u64 {
        self.max_ns.saturating_add(self.jitter_ns(self.max_ns))
    }

    fn jitter_ns(&self, d: u64) -> u64 {
        (d as f64 * self.jitter) as u64
    }
}

/// An ejection in force.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ejected {
    pub since_ns: u64,
    pub until_ns: u64,
    pub reason: Reason,
}

/// The policy's view of one destination, kept as its table annotation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Standing {
    pub role: Role,
    /// A pending connect's SYN was retransmitted; cleared by a success or an ejection.
    pub suspect: bool,
    /// n: how many times ejected, minus one per base period healthy since reinstatement.
    pub ejection_count: u32,
    /// Boxed: an ejection is rare and this keeps every table entry 16 bytes smaller.
    pub ejected: Option<Box<Ejected>>,
    /// Reinstated and not yet connected successfully: the next failure re-ejects.
    pub probation: bool,
    /// Start of the current healthy run, for decay (meaningful when `ejection_count > 0`).
    pub healthy_since_ns: u64,
}

impl Default for Standing {
    fn default() -> Self {
        Standing {
            role: Role::Target,
            suspect: false,
            ejection_count: 0,
            ejected: None,
            probation: false,
            healthy_since_ns: 0,
        }
    }
}

impl Annotation for Standing {
    /// Ejected destinations and those whose history still counts stay in the table.
    fn pinned(&self) -> bool {
        self.ejected.is_some() || self.ejection_count > 0 || self.probation
    }
}

impl Standing {
    /// Lowers the ejection count by one per full `base_ns` healthy since reinstatement.
    /// When it reaches 0 the history is spent: probation ends too, so an idle destination
    /// does not stay pinned in the table forever.
    pub fn decay(&mut self, now: u64, base_ns: u64) {
        if self.ejected.is_some() || self.ejection_count == 0 {
            return;
        }
        let periods = now.saturating_sub(self.healthy_since_ns) / base_ns.max(1);
        let steps = periods.min(u64::from(self.ejection_count)) as u32;
        if steps == 0 {
            return;
        }
        self.ejection_count -= steps;
        self.healthy_since_ns = self
            .healthy_since_ns
            .saturating_add(u64::from(steps) * base_ns);
        if self.ejection_count == 0 {
            self.probation = false;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    const SEC: u64 = 1_000_000_000;

    fn backoff() -> Backoff {
        Backoff::from_config(&PolicyConfig::default())
    }

    #[test]
    fn duration_doubles_per_ejection_up_to_the_cap() {
        let b = backoff();
        let secs: Vec<u64> = (1..=8).map(|n| b.duration_ns(n) / SEC).collect();
        assert_eq!(secs, [30, 60, 120, 240, 480, 600, 600, 600]);
        assert_eq!(
            b.duration_ns(0),
            30 * SEC,
            "count 0 is treated as a first ejection"
        );
        assert_eq!(
            b.duration_ns(u32::MAX),
            600 * SEC,
            "no overflow for huge counts"
        );
    }

    #[test]
    fn jitter_stays_within_its_fraction_and_varies() {
        let b = backoff();
        let mut rng = Jitter::new(7);
        let samples: Vec<u64> = (0..500).map(|_| b.jittered_ns(1, &mut rng)).collect();
        assert!(samples.iter().all(|&d| (30 * SEC..=33 * SEC).contains(&d)));
        assert!(
            samples.iter().any(|&d| d > 32 * SEC),
            "upper part of the range is reached"
        );
        assert!(
            samples.iter().any(|&d| d < 31 * SEC),
            "lower part of the range is reached"
        );
        let capped: Vec<u64> = (0..500).map(|_| b.jittered_ns(20, &mut rng)).collect();
        assert!(capped.iter().all(|&d| d >= 600 * SEC && d <= b.bound_ns()));
        assert_eq!(b.bound_ns(), 660 * SEC);
    }

    #[test]
    fn zero_jitter_is_exact_and_seeds_are_deterministic() {
        let config = PolicyConfig {
            jitter: 0.0,
            base_ejection: Duration::from_secs(1),
            ..PolicyConfig::default()
        };
        let b = Backoff::from_config(&config);
        assert_eq!(b.jittered_ns(3, &mut Jitter::new(1)), 4 * SEC);
        let (mut a, mut c) = (Jitter::new(42), Jitter::new(42));
        assert_eq!(
            (0..10).map(|_| a.up_to(1000)).collect::<Vec<_>>(),
            (0..10).map(|_| c.up_to(1000)).collect::<Vec<_>>()
        );
        assert_eq!(Jitter::new(0).up_to(0), 0);
    }

    #[test]
    fn count_decays_one_per_healthy_base_period() {
        let mut s = Standing {
            ejection_count: 3,
            probation: true,
            healthy_since_ns: 100 * SEC,
            ..Standing::default()
        };
        s.decay(129 * SEC, 30 * SEC);
        assert_eq!(s.ejection_count, 3);
        s.decay(131 * SEC, 30 * SEC);
        assert_eq!(s.ejection_count, 2);
        assert_eq!(
            s.healthy_since_ns,
            130 * SEC,
            "the partial period carries over"
        );
        s.decay(161 * SEC, 30 * SEC);
        assert_eq!(s.ejection_count, 1);
        assert!(s.probation && s.pinned());
        s.decay(1_000 * SEC, 30 * SEC);
        assert_eq!(s.ejection_count, 0);
        assert!(
            !s.probation && !s.pinned(),
            "spent history unpins the entry"
        );
    }
}
