//! Handshake-latency histogram: a fixed array of half-octave buckets, so recording is
//! one increment and an entry's memory does not grow with traffic. Percentiles are
//! interpolated inside a bucket, which bounds their error by the bucket width (±25 %).

/// Number of buckets: two per power of two from 1 µs up to 2^24 µs (≈ 16.8 s).
const BUCKETS: usize = 48;

/// Log-scale histogram of microsecond durations.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LatencyHistogram {
    counts: [u32; BUCKETS],
    total: u64,
}

impl Default for LatencyHistogram {
    fn default() -> Self {
        LatencyHistogram {
            counts: [0; BUCKETS],
            total: 0,
        }
    }
}

impl LatencyHistogram {
    /// Records one duration; values past the last bucket are counted in it.
    pub fn record(&mut self, micros: u64) {
        let i = bucket_of(micros);
        self.counts[i] = self.counts[i].saturating_add(1);
        self.total = self.total.saturating_add(1);
    }

    /// Counts one duration already mapped to its bucket by [`bucket_of`] (used when a
    /// destination's inline summary is promoted to a full histogram).
    pub fn record_bucket(&mut self, bucket: u8) {
        let i = usize::from(bucket).min(BUCKETS - 1);
        self.counts[i] = self.counts[i].saturating_add(1);
        self.total = self.total.saturating_add(1);
    }

    /// How many durations were recorded.
    pub fn total(&self) -> u64 {
        self.total
    }

    /// The `q` quantile (0.0..=1.0) in microseconds, `None` when nothing was recorded.
    pub fn quantile(&self, q: f64) -> Option<u64> {
        let total: u64 = self.counts.iter().map(|&c| u64::from(c)).sum();
        if total == 0 {
            return None;
        }
        let q = q.clamp(0.0, 1.0);
        let rank = ((q * total as f64).ceil() as u64).clamp(1, total);
        let mut below = 0u64;
        for (i, &count) in self.counts.iter().enumerate() {
            let count = u64::from(count);
            if count == 0 {
                continue;
            }
            if below + count >= rank {
                let (low, high) = bounds_of(i);
                let into = (rank - below) as f64 / count as f64;
                return Some(low + ((high - low) as f64 * into) as u64);
            }
            below += count;
        }
        None
    }
}

/// Bucket 0 holds 0 µs, bucket 1 holds 1 µs; from there two buckets per power of two.
pub(crate) fn bucket_of(micros: u64) -> usize {
    if micros < 2 {
        return micros as usize;
    }
    let octave = 63 - micros.leading_zeros() as usize;
    let half = ((micros >> (octave - 1)) & 1) as usize;
    (2 * octave + half).min(BUCKETS - 1)
}

/// Lower (inclusive) and upper (exclusive) bound of a bucket, in microseconds.
fn bounds_of(bucket: usize) -> (u64, u64) {
    if bucket < 2 {
        return (bucket as u64, bucket as u64 + 1);
    }
    let octave = bucket / 2;
    let half = (bucket % 2) as u64;
    let step = 1u64 << (octave - 1);
    let low = (2 + half) << (octave - 1);
    (low, low + step)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_cover_the_range_without_gaps() {
        for i in 0..BUCKETS - 1 {
            assert_eq!(bounds_of(i).1, bounds_of(i + 1).0, "gap after bucket {i}");
        }
        for v in [0, 1, 2, 3, 4, 5, 6, 7, 8, 100, 1_000, 65_535, 1 << 20] {
            let (low, high) = bounds_of(bucket_of(v));
            assert!(low <= v && v < high, "{v} not in [{low}, {high})");
        }
        assert_eq!(bucket_of(u64::MAX), BUCKETS - 1);
    }

    #[test]
    fn quantiles_are_within_a_bucket_of_the_truth() {
        let mut h = LatencyHistogram::default();
        assert_eq!(h.quantile(0.5), None);
        for v in 1..=1000u64 {
            h.record(v * 10);
        }
        let p50 = h.quantile(0.5).unwrap_or_default() as f64;
        let p99 = h.quantile(0.99).unwrap_or_default() as f64;
        assert!((p50 - 5_000.0).abs() / 5_000.0 < 0.25, "p50 {p50}");
        assert!((p99 - 9_900.0).abs() / 9_900.0 < 0.25, "p99 {p99}");
        assert_eq!(h.total(), 1000);
    }
}
