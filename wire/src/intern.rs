//! Sharing label sets between requests: the ingest path turns the label
//! fields of each incoming series into a [`Labels`] without decoding or
//! allocating anything when the same fields were seen before.
//!
//! A remote_write sender repeats the same label sets on every request; the
//! interner maps the *encoded* label fields (a key that decodes to exactly
//! one label set, see [`crate::remote_write::RawWriteRequest::label_key`])
//! to the [`Labels`] built from them the first time, and hands out clones
//! (a reference-count increment). Because the store keeps those same clones
//! as its series keys, and [`Labels`] equality checks the pointer first, the
//! store's series lookups then skip comparing label bytes too.
//!
//! A hit compares the key bytes, so a hash collision costs a rebuild, never
//! a wrong series. The table is bounded in entries and key bytes: when full,
//! it is cleared and refills from the next requests.

use std::collections::HashMap;
use std::hash::{BuildHasher, BuildHasherDefault, Hasher};

use crate::Labels;

/// Key-bytes-to-label-set table; see the module doc.
pub struct LabelsInterner {
    map: HashMap<u64, (Box<[u8]>, Labels), BuildHasherDefault<U64Hasher>>,
    state: foldhash::fast::RandomState,
    key_bytes: usize,
    max: usize,
}

/// Key bytes held at most (besides the label sets themselves).
const MAX_KEY_BYTES: usize = 64 << 20;

impl LabelsInterner {
    /// An empty table that holds at most `max` label sets.
    pub fn new(max: usize) -> Self {
        LabelsInterner {
            map: HashMap::default(),
            state: foldhash::fast::RandomState::default(),
            key_bytes: 0,
            max: max.max(1),
        }
    }

    /// The label set `key` stands for: the one built for the same key
    /// before, or a new one from `build` (which must give the same label
    /// set for the same key every time).
    pub fn get<E>(&mut self, key: &[u8], build: impl FnOnce() -> Result<Labels, E>) -> Result<Labels, E> {
        let h = self.state.hash_one(key);
        if let Some((k, l)) = self.map.get(&h)
            && **k == *key
        {
            return Ok(l.clone());
        }
        let l = build()?;
        if self.map.len() >= self.max || self.key_bytes + key.len() > MAX_KEY_BYTES {
            self.map.clear();
            self.key_bytes = 0;
        }
        if let Some((old, _)) = self.map.insert(h, (key.into(), l.clone())) {
            self.key_bytes -= old.len(); // a collision: the newer key stays
        }
        self.key_bytes += key.len();
        Ok(l)
    }

    /// Number of label sets held.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// True when nothing is held.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

/// The keys are hashes already.
#[derive(Default)]
struct U64Hasher(u64);

impl Hasher for U64Hasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        // only `write_u64` is used by `HashMap<u64, _>`; fold anything else
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }
    fn write_u64(&mut self, v: u64) {
        self.0 = v;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::LabelsError;

    fn build(pairs: &[(&str, &str)]) -> impl FnOnce() -> Result<Labels, LabelsError> {
        let pairs = pairs.iter().map(|&(n, v)| (n.to_string(), v.to_string())).collect::<Vec<_>>();
        move || Labels::from_pairs(pairs)
    }

    #[test]
    fn shares_sets_by_key_and_is_bounded() {
        let mut i = LabelsInterner::new(2);
        let a = i.get(b"k1", build(&[("__name__", "up"), ("job", "a")])).unwrap();
        let b = i.get(b"k1", || -> Result<Labels, LabelsError> { panic!("a hit must not build") }).unwrap();
        assert_eq!(a, b);
        assert!(std::ptr::eq(a.iter().next().unwrap(), b.iter().next().unwrap()), "second call shares the first");
        assert_eq!(i.len(), 1);
        // errors are passed on and nothing is kept
        assert!(i.get(b"bad", build(&[("0bad", "v")])).is_err());
        assert_eq!(i.len(), 1);
        // bounded: the third distinct key clears the table first
        i.get(b"k2", build(&[("__name__", "b")])).unwrap();
        assert_eq!(i.len(), 2);
        i.get(b"k3", build(&[("__name__", "c")])).unwrap();
        assert_eq!(i.len(), 1);
        assert_eq!(i.key_bytes, 2);
    }
}
