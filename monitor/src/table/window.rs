//! The attrition window: attempts and failures of one destination over the last
//! `ratio_window`, kept as a ring of ten time slots so the memory per destination is
//! fixed. The ratio covers between nine and ten slots (54–60 s with the 60 s default):
//! the oldest slot is dropped whole rather than decayed.

/// Number of slots in the ring.
pub(crate) const SLOTS: u64 = 10;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Slot {
    /// Absolute slot number (`now / slot_ns`) this slot currently counts.
    index: u64,
    attempts: u32,
    failures: u32,
}

/// Attempts and failures over a sliding window of `SLOTS` slots.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct RatioWindow {
    slots: [Slot; SLOTS as usize],
}

impl RatioWindow {
    /// Counts one attempt at `now`; `slot_ns` is the window length divided by `SLOTS`.
    #[cfg(test)]
    pub(crate) fn record(&mut self, now: u64, failed: bool, slot_ns: u64) {
        self.record_slot(now / slot_ns.max(1), failed);
    }

    /// Counts one attempt in absolute slot `index` (`now / slot_ns`).
    pub(crate) fn record_slot(&mut self, index: u64, failed: bool) {
        let slot = &mut self.slots[(index % SLOTS) as usize];
        if slot.index != index {
            *slot = Slot {
                index,
                attempts: 0,
                failures: 0,
            };
        }
        slot.attempts = slot.attempts.saturating_add(1);
        if failed {
            slot.failures = slot.failures.saturating_add(1);
        }
    }

    /// `(attempts, failures)` in the window ending at `now`.
    pub(crate) fn totals(&self, now: u64, slot_ns: u64) -> (u32, u32) {
        let current = now / slot_ns.max(1);
        self.slots
            .iter()
            .filter(|s| s.index <= current && s.index + SLOTS > current)
            .fold((0u32, 0u32), |(a, f), s| {
                (a.saturating_add(s.attempts), f.saturating_add(s.failures))
            })
    }

    /// Forgets everything (after an ejection the evidence has been used).
    pub(crate) fn clear(&mut self) {
        *self = RatioWindow::default();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEC: u64 = 1_000_000_000;

    #[test]
    fn old_slots_fall_out_of_the_window() {
        let slot_ns = 6 * SEC;
        let mut w = RatioWindow::default();
        w.record(SEC, true, slot_ns);
        w.record(2 * SEC, false, slot_ns);
        assert_eq!(w.totals(3 * SEC, slot_ns), (2, 1));
        assert_eq!(w.totals(59 * SEC, slot_ns), (2, 1));
        assert_eq!(w.totals(61 * SEC, slot_ns), (0, 0));
        w.record(61 * SEC, true, slot_ns);
        assert_eq!(w.totals(61 * SEC, slot_ns), (1, 1));
        w.clear();
        assert_eq!(w.totals(61 * SEC, slot_ns), (0, 0));
    }
}
