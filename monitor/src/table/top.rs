//! Bounded "who connects most" lists (space-saving algorithm): a fixed number of slots,
//! so a destination contacted by thousands of short-lived processes still costs the same
//! memory. Counts of keys that displaced another are over-estimates by at most the
//! displaced count; the heavy hitters are kept.

use serde::Serialize;

/// One key and its (approximate) count.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, schemars::JsonSchema)]
pub struct Tally<K> {
    #[serde(flatten)]
    pub key: K,
    pub connects: u32,
}

/// The `N` most frequent keys seen.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct TopN<K: Copy, const N: usize> {
    slots: [Option<Tally<K>>; N],
}

impl<K: Copy, const N: usize> Default for TopN<K, N> {
    fn default() -> Self {
        TopN { slots: [None; N] }
    }
}

impl<K: Copy + PartialEq, const N: usize> TopN<K, N> {
    /// Counts one occurrence of `key`.
    pub(crate) fn observe(&mut self, key: K) {
        if let Some(t) = self.slots.iter_mut().flatten().find(|t| t.key == key) {
            t.connects = t.connects.saturating_add(1);
            return;
        }
        if let Some(free) = self.slots.iter_mut().find(|s| s.is_none()) {
            *free = Some(Tally { key, connects: 1 });
            return;
        }
        if let Some(least) = self.slots.iter_mut().flatten().min_by_key(|t| t.connects) {
            *least = Tally {
                key,
                connects: least.connects.saturating_add(1),
            };
        }
    }

    /// The kept keys, in no order (nothing allocated).
    pub(crate) fn keys(&self) -> impl Iterator<Item = K> + '_ {
        self.slots.iter().flatten().map(|t| t.key)
    }

    /// The kept keys, most frequent first.
    pub(crate) fn ranked(&self) -> Vec<Tally<K>> {
        let mut v: Vec<Tally<K>> = self.slots.iter().flatten().copied().collect();
        v.sort_by_key(|t| std::cmp::Reverse(t.connects));
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_heavy_hitters_in_bounded_slots() {
        let mut top: TopN<u32, 2> = TopN::default();
        for _ in 0..10 {
            top.observe(1);
        }
        for k in 100..110 {
            top.observe(k);
        }
        let ranked = top.ranked();
        assert_eq!(ranked.len(), 2);
        assert_eq!(
            ranked[0],
            Tally {
                key: 1,
                connects: 10
            }
        );
    }
}
