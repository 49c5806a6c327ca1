//! Kernel timestamps are CLOCK_MONOTONIC (`bpf_ktime_get_ns`); people read wall-clock
//! time. [`WallClock`] maps one to the other with an offset measured at start-up.

use nix::time::{ClockId, clock_gettime};

/// Maps CLOCK_MONOTONIC nanoseconds to Unix time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WallClock {
    /// Unix nanoseconds minus monotonic nanoseconds.
    offset_ns: i128,
}

fn ns(clock: ClockId) -> i128 {
    let ts = clock_gettime(clock).expect("clock_gettime on a standard clock cannot fail");
    i128::from(ts.tv_sec()) * 1_000_000_000 + i128::from(ts.tv_nsec())
}

/// CLOCK_MONOTONIC now, in nanoseconds: the clock of every kernel timestamp.
pub fn monotonic_now_ns() -> u64 {
    u64::try_from(ns(ClockId::CLOCK_MONOTONIC)).unwrap_or(0)
}

impl WallClock {
    /// Measures the offset now (midpoint of two realtime reads around a monotonic one).
    pub fn calibrate() -> Self {
        let before = ns(ClockId::CLOCK_REALTIME);
        let mono = ns(ClockId::CLOCK_MONOTONIC);
        let after = ns(ClockId::CLOCK_REALTIME);
        WallClock {
            offset_ns: (before + after) / 2 - mono,
        }
    }

    pub fn from_offset_ns(offset_ns: i128) -> Self {
        WallClock { offset_ns }
    }

    /// Unix nanoseconds for a monotonic timestamp.
    pub fn unix_ns(&self, monotonic_ns: u64) -> i128 {
        i128::from(monotonic_ns) + self.offset_ns
    }

    /// Monotonic nanoseconds for a Unix timestamp (saturating at 0).
    pub fn monotonic_ns(&self, unix_ns: i128) -> u64 {
        u64::try_from((unix_ns - self.offset_ns).max(0)).unwrap_or(u64::MAX)
    }

    /// RFC 3339 in UTC with nanoseconds, e.g. `2026-11-24T00:31:02.123456789Z`.
    pub fn rfc3339(&self, monotonic_ns: u64) -> String {
        rfc3339_unix_ns(self.unix_ns(monotonic_ns))
    }

    /// [`WallClock::rfc3339`] appended to `buf`, without an allocation (connect lines).
    pub fn write_rfc3339(&self, monotonic_ns: u64, buf: &mut Vec<u8>) {
        use std::io::Write as _;
        with_prefix(self.unix_ns(monotonic_ns), |prefix, nanos| {
            buf.extend_from_slice(prefix.as_bytes());
            let _ = write!(buf, "{nanos:09}Z");
        });
    }
}

/// Formats Unix nanoseconds as RFC 3339 UTC with nanoseconds.
pub fn rfc3339_unix_ns(unix_ns: i128) -> String {
    use std::fmt::Write as _;
    with_prefix(unix_ns, |prefix, nanos| {
        let mut out = String::with_capacity(prefix.len() + 10);
        out.push_str(prefix);
        let _ = write!(out, "{nanos:09}Z");
        out
    })
}

/// Calls `f` with the calendar part of `unix_ns` (`2026-11-24T00:31:02.`) and its
/// nanoseconds. This runs once per event on the hot path, so the calendar part is
/// computed once per second and cached per thread.
fn with_prefix<R>(unix_ns: i128, f: impl FnOnce(&str, u32) -> R) -> R {
    use std::cell::RefCell;

    thread_local! {
        static PREFIX: RefCell<(i64, String)> = const { RefCell::new((i64::MIN, String::new())) };
    }
    let secs = i64::try_from(unix_ns.div_euclid(1_000_000_000)).unwrap_or(0);
    let nanos = u32::try_from(unix_ns.rem_euclid(1_000_000_000)).unwrap_or(0);
    PREFIX.with_borrow_mut(|(cached_secs, prefix)| {
        if *cached_secs != secs {
            *prefix = chrono::DateTime::from_timestamp(secs, 0)
                .unwrap_or_default()
                .format("%Y-%m-%dT%H:%M:%S.")
                .to_string();
            *cached_secs = secs;
        }
        f(prefix, nanos)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_with_nanoseconds_in_utc() {
        let clock = WallClock::from_offset_ns(1_700_000_000_000_000_000);
        assert_eq!(clock.rfc3339(123_456_789), "2023-11-14T22:13:20.123456789Z");
        let mut buf = b"x".to_vec();
        clock.write_rfc3339(123_456_789, &mut buf);
        assert_eq!(buf, b"x2023-11-14T22:13:20.123456789Z");
        assert_eq!(clock.monotonic_ns(clock.unix_ns(42)), 42);
    }

    #[test]
    fn cached_prefix_matches_chrono_across_seconds() {
        for unix_ns in [
            0i128,
            999_999_999,
            1_000_000_000,
            1_795_480_229_615_000_123,
            1_795_480_230_000_000_000,
        ] {
            let secs = i64::try_from(unix_ns / 1_000_000_000).unwrap();
            let nanos = u32::try_from(unix_ns % 1_000_000_000).unwrap();
            let want = chrono::DateTime::from_timestamp(secs, nanos)
                .unwrap()
                .to_rfc3339_opts(chrono::SecondsFormat::Nanos, true);
            assert_eq!(rfc3339_unix_ns(unix_ns), want);
        }
    }

    #[test]
    fn calibration_is_close_to_the_system_clock() {
        let clock = WallClock::calibrate();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap();
        let mapped = clock.unix_ns(monotonic_now_ns());
        assert!((mapped - now.as_nanos() as i128).abs() < 50_000_000);
    }
}
