//! The destination table's compact index: the entries of one address family in a dense
//! vector, their keys in a parallel one, and a hash index that holds only `u32`
//! positions. This is what meets the table's memory budget (README "Memory"): a bucket
//! of the index is 5 bytes with its control byte, where a map from address to entry
//! would spend the key and a pointer on every spare bucket.

use std::hash::{BuildHasher as _, Hash, RandomState};

use hashbrown::HashTable;

/// The entries of one address family: a dense vector of entries, a parallel vector of
/// their addresses, and a hash index of positions. The index's buckets hold only a
/// `u32` position (compared through the address vector), so its spare capacity costs
/// 5 bytes a bucket with the control byte; the vectors hold no touched spare entries,
/// and a removal moves the last entry into the hole.
#[derive(Debug)]
pub(super) struct Part<K, V> {
    index: HashTable<u32>,
    hasher: RandomState,
    keys: Vec<K>,
    dests: Vec<V>,
}

impl<K: Copy + Eq + Hash, V> Part<K, V> {
    /// A part reserved for `reserve` entries: the index then never rehashes (no moment
    /// with two copies of it) and, as for the vectors, only touched pages count.
    pub(super) fn with_capacity(reserve: usize) -> Self {
        Part {
            index: HashTable::with_capacity(reserve),
            hasher: RandomState::new(),
            keys: Vec::with_capacity(reserve),
            dests: Vec::with_capacity(reserve),
        }
    }

    pub(super) fn len(&self) -> usize {
        self.dests.len()
    }

    /// The values, in position order.
    pub(super) fn values(&self) -> &[V] {
        &self.dests
    }

    pub(super) fn position(&self, key: &K) -> Option<usize> {
        let keys = &self.keys;
        self.index
            .find(self.hasher.hash_one(key), |&i| {
                keys.get(i as usize) == Some(key)
            })
            .map(|&i| i as usize)
    }

    pub(super) fn get(&self, key: K) -> Option<&V> {
        self.dests.get(self.position(&key)?)
    }

    pub(super) fn get_mut(&mut self, key: K) -> Option<&mut V> {
        let i = self.position(&key)?;
        self.dests.get_mut(i)
    }

    /// Adds an entry for a key that is not present.
    pub(super) fn insert(&mut self, key: K, dest: V) {
        let Ok(i) = u32::try_from(self.dests.len()) else {
            return;
        };
        self.keys.push(key);
        self.dests.push(dest);
        let Part {
            index,
            hasher,
            keys,
            ..
        } = self;
        index.insert_unique(hasher.hash_one(key), i, |&j| {
            hasher.hash_one(keys[j as usize])
        });
    }

    /// Points the index entry of the key at position `from` to position `to`, or removes
    /// it when `to` is `None`.
    pub(super) fn reindex(&mut self, from: usize, to: Option<usize>) {
        let Some(key) = self.keys.get(from) else {
            return;
        };
        let hash = self.hasher.hash_one(key);
        let Ok(entry) = self.index.find_entry(hash, |&i| i as usize == from) else {
            return;
        };
        match to {
            None => {
                entry.remove();
            }
            Some(to) => *entry.into_mut() = to as u32,
        }
    }

    pub(super) fn iter(&self) -> impl Iterator<Item = (K, &V)> {
        self.keys.iter().copied().zip(self.dests.iter())
    }

    pub(super) fn iter_mut(&mut self) -> impl Iterator<Item = (K, &mut V)> {
        self.keys.iter().copied().zip(self.dests.iter_mut())
    }

    /// Removes the entries at `positions`, which must be sorted in descending order:
    /// each removal moves the last entry into the hole, never one still to be removed.
    pub(super) fn remove_descending(&mut self, positions: &[u32]) {
        for &i in positions {
            let i = i as usize;
            let Some(last) = self.dests.len().checked_sub(1) else {
                return;
            };
            if i > last {
                continue;
            }
            self.reindex(i, None);
            if i != last {
                self.reindex(last, Some(i));
            }
            self.keys.swap_remove(i);
            self.dests.swap_remove(i);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn part(n: u32) -> Part<u32, String> {
        let mut p = Part::with_capacity(n as usize);
        for k in 0..n {
            p.insert(k * 7, format!("v{k}"));
        }
        p
    }

    /// Every key finds its own value, and nothing else is found.
    fn check(p: &Part<u32, String>, present: &[u32]) {
        assert_eq!(p.len(), present.len());
        for &k in present {
            assert_eq!(p.get(k * 7), Some(&format!("v{k}")), "key {k}");
        }
        assert_eq!(p.iter().count(), present.len());
        assert!(p.get(1).is_none(), "a key never inserted");
    }

    #[test]
    fn inserted_keys_are_found() {
        let mut p = part(100);
        check(&p, &(0..100).collect::<Vec<_>>());
        *p.get_mut(70).expect("key 10") = "v10".into();
        assert_eq!(p.position(&70), Some(10));
    }

    #[test]
    fn removal_moves_the_last_entry_into_the_hole_and_keeps_the_index_right() {
        let mut p = part(10);
        // Descending, including the last position and the first.
        p.remove_descending(&[9, 5, 2, 0]);
        check(&p, &[1, 3, 4, 6, 7, 8]);
        // Positions past the end are ignored; removing everything leaves an empty part.
        p.remove_descending(&[40, 5, 4, 3, 2, 1, 0]);
        check(&p, &[]);
        p.insert(7, "v1".into());
        check(&p, &[1]);
    }

    #[test]
    fn a_bucket_costs_five_bytes() {
        let p: Part<u32, String> = Part::with_capacity(100_000);
        // hashbrown keeps at most 7/8 of its buckets full: buckets ≈ capacity × 8/7,
        // each a 4-byte position and a control byte (plus one group of control bytes).
        let per_slot = p.index.allocation_size() as f64 / p.index.capacity() as f64;
        assert!(
            (5.0..=5.0 * 8.0 / 7.0 * 1.01).contains(&per_slot),
            "{per_slot} bytes per usable slot"
        );
    }
}
