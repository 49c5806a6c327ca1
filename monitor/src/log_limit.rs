//! The one rate limiter for log lines: a warning that may repeat (a lagging reader, a
//! failing export, an undecodable record) is written at most once per period, carrying
//! how many were held back. What is suppressed here is still counted where it happens.

use std::time::{Duration, Instant};

/// Allows one line per `every`.
#[derive(Clone, Copy, Debug)]
pub(crate) struct LogLimiter {
    every: Duration,
    last: Option<Instant>,
    suppressed: u64,
}

impl LogLimiter {
    pub(crate) const fn new(every: Duration) -> Self {
        LogLimiter {
            every,
            last: None,
            suppressed: 0,
        }
    }

    /// `Some(lines held back since the last one)` if a line may be written now.
    pub(crate) fn allow(&mut self, now: Instant) -> Option<u64> {
        if self
            .last
            .is_some_and(|last| now.duration_since(last) < self.every)
        {
            self.suppressed += 1;
            return None;
        }
        self.last = Some(now);
        Some(std::mem::take(&mut self.suppressed))
    }

    /// When the last line was allowed.
    #[cfg(test)]
    pub(crate) fn last(&self) -> Option<Instant> {
        self.last
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_per_period_with_the_count_held_back() {
        let every = Duration::from_secs(10);
        let mut limiter = LogLimiter::new(every);
        let t0 = Instant::now();
        assert_eq!(limiter.allow(t0), Some(0));
        assert_eq!(limiter.allow(t0 + Duration::from_secs(1)), None);
        assert_eq!(limiter.allow(t0 + Duration::from_secs(2)), None);
        assert_eq!(limiter.allow(t0 + every), Some(2));
        assert_eq!(limiter.last(), Some(t0 + every));
    }
}
