//! Maps keyed by event id, for the books the DB thread keeps per claimed event (several
//! lookups per event). Ids come from the database's own sequence, not from whoever could
//! choose them to collide, so a multiply-shift hash (as in rustc's FxHash) serves instead of
//! std's SipHash, which costs more than the rest of a lookup.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

/// A `HashMap` keyed by event id.
pub(super) type IdMap<V> = HashMap<i64, V, BuildHasherDefault<IdHasher>>;

/// A new, empty [`IdMap`].
pub(super) fn id_map<V>() -> IdMap<V> {
    HashMap::with_hasher(BuildHasherDefault::default())
}

/// Hashes an `i64` (or anything written as integers) by multiply-shift.
#[derive(Default)]
pub(super) struct IdHasher(u64);

const K: u64 = 0x517c_c1b7_2722_0a95;

impl Hasher for IdHasher {
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.write_u64(u64::from(*b));
        }
    }

    fn write_i64(&mut self, n: i64) {
        self.write_u64(n as u64);
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = (self.0.rotate_left(5) ^ n).wrapping_mul(K);
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn consecutive_ids_spread_and_every_id_is_found() {
        let mut m = id_map();
        for id in -1000..100_000i64 {
            m.insert(id, id * 2);
        }
        assert!((-1000..100_000i64).all(|id| m.get(&id) == Some(&(id * 2))));
        assert_eq!(m.get(&100_000), None);
        // hashbrown picks the bucket from the low bits and a tag from the top 7.
        let hashes: Vec<u64> = (0..1024i64)
            .map(|id| {
                let mut h = IdHasher::default();
                h.write_i64(id);
                h.finish()
            })
            .collect();
        let low: std::collections::HashSet<u64> = hashes.iter().map(|h| h & 1023).collect();
        let tags: std::collections::HashSet<u64> = hashes.iter().map(|h| h >> 57).collect();
        assert_eq!(low.len(), 1024);
        assert!(tags.len() > 100, "{}", tags.len());
    }
}
