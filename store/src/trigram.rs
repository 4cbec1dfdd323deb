//! Per-chunk content filter for line filters: a bitmap of hashed byte
//! trigrams of every line in the chunk (one hash per trigram), built at
//! 65,536 bits and folded to the smallest power of two that keeps it at
//! most 40 % full.
//!
//! A chunk can contain a line with substring `needle` only if every trigram
//! of `needle` is set; a chunk where any is missing is skipped without
//! decompressing it. The filter only ever prunes: lines that pass are still
//! checked against the filter itself, so substring semantics are exact. For
//! needles shorter than 3 bytes it cannot prune. Format and measured
//! costs: `docs/format/logs.md`.

/// Bytes of the largest filter (65,536 bits: one per 16-bit trigram hash).
pub const FILTER_BYTES: usize = 8192;
/// Bytes of the smallest filter.
pub const MIN_FILTER_BYTES: usize = 64;
/// Largest fraction of set bits a folded filter may have (see
/// [`Builder::finish`]).
pub const MAX_FILL: f64 = 0.4;
/// Largest fraction of set bits of a frame filter (see
/// [`Builder::finish_sized`]): it only has to tell apart the frames of a
/// chunk whose own filter passed, so it can be much fuller.
pub const FRAME_MAX_FILL: f64 = 0.8;

/// The 16-bit hash of the trigram held in the low 24 bits of `t`; a filter
/// of 2^k bits uses its top k bits.
#[inline]
fn hash16(t: u32) -> u32 {
    (t & 0x00FF_FFFF).wrapping_mul(0x9E37_79B1) >> 16
}

/// Builds one chunk's filter.
pub struct Builder {
    map: Box<[u8; FILTER_BYTES]>,
}

impl Default for Builder {
    fn default() -> Self {
        Builder { map: Box::new([0u8; FILTER_BYTES]) }
    }
}

impl Builder {
    /// Starts over with an empty filter.
    pub fn clear(&mut self) {
        self.map.fill(0);
    }

    /// Adds every trigram of `line`. A rolling 24-bit window and a
    /// fixed-size array keep the loop free of bounds checks (measured: the
    /// `windows(3)` version cost 3 CPU s per GB of ingest).
    pub fn add(&mut self, line: &[u8]) {
        let mut t: u32 = 0;
        for (i, &b) in line.iter().enumerate() {
            t = (t << 8) | u32::from(b);
            if i >= 2 {
                let s = hash16(t);
                self.map[(s >> 3) as usize & (FILTER_BYTES - 1)] |= 1 << (s & 7);
            }
        }
    }

    /// The filter, folded to the smallest power-of-two size (at least
    /// [`MIN_FILTER_BYTES`]) whose share of set bits stays at most
    /// [`MAX_FILL`]. Folding ORs adjacent bit pairs, which is exactly the
    /// filter built with one hash bit fewer, so it has no false negatives.
    pub fn finish(&self) -> Vec<u8> {
        let mut cur: Vec<u8> = self.map.to_vec();
        while cur.len() > MIN_FILTER_BYTES {
            let next = fold(&cur);
            let ones: u32 = next.iter().map(|b| b.count_ones()).sum();
            if f64::from(ones) > MAX_FILL * (next.len() * 8) as f64 {
                break;
            }
            cur = next;
        }
        cur
    }
}

impl Builder {
    /// ORs `other`'s trigrams into this filter (both full size).
    pub fn union(&mut self, other: &Builder) {
        for (a, b) in self.map.iter_mut().zip(other.map.iter()) {
            *a |= *b;
        }
    }

    /// The filter at the smallest whole number of bytes (at most
    /// [`FILTER_BYTES`]) whose share of set bits stays at most `max_fill`.
    /// A filter of `m = 8 × len` bits sets bit `(h × m) >> 16` for each
    /// 16-bit trigram hash `h` (for a power-of-two `m` this is the folded
    /// filter of [`Builder::finish`]); read it with [`may_contain_sized`].
    pub fn finish_sized(&self, max_fill: f64) -> Vec<u8> {
        let ones: u32 = self.map.iter().map(|b| b.count_ones()).sum();
        let mut len = ((f64::from(ones) / -(1.0 - max_fill).ln()) / 8.0).ceil().max(1.0) as usize;
        loop {
            len = len.min(FILTER_BYTES);
            let f = self.reduce(len);
            let set: u32 = f.iter().map(|b| b.count_ones()).sum();
            if f64::from(set) <= max_fill * (len * 8) as f64 || len == FILTER_BYTES {
                return f;
            }
            len += len / 8 + 1;
        }
    }

    /// The filter reduced to `len` bytes (see [`Builder::finish_sized`]).
    fn reduce(&self, len: usize) -> Vec<u8> {
        let m = (len * 8) as u32;
        let mut out = vec![0u8; len];
        for (i, &byte) in self.map.iter().enumerate() {
            let mut bits = byte;
            while bits != 0 {
                let h = (i as u32) * 8 + bits.trailing_zeros();
                bits &= bits - 1;
                let j = (h * m) >> 16;
                out[(j >> 3) as usize] |= 1 << (j & 7);
            }
        }
        out
    }
}

/// False when no line added to the sized filter `filter` (see
/// [`Builder::finish_sized`]) can contain `needle`. An empty or oversized
/// filter never prunes.
pub fn may_contain_sized(filter: &[u8], needle: &[u8]) -> bool {
    let n = filter.len();
    if n == 0 || n > FILTER_BYTES {
        return true;
    }
    let m = (n * 8) as u32;
    needle.windows(3).all(|w| {
        let h = hash16((u32::from(w[0]) << 16) | (u32::from(w[1]) << 8) | u32::from(w[2]));
        let j = (h * m) >> 16;
        filter[(j >> 3) as usize] & (1 << (j & 7)) != 0
    })
}

/// Halves a filter: bit j of the result is bit 2j | bit 2j+1 of `f`.
fn fold(f: &[u8]) -> Vec<u8> {
    f.chunks_exact(2)
        .map(|p| {
            let w = u16::from(p[0]) | (u16::from(p[1]) << 8);
            let mut x = (w | (w >> 1)) & 0x5555;
            x = (x | (x >> 1)) & 0x3333;
            x = (x | (x >> 2)) & 0x0f0f;
            x = (x | (x >> 4)) & 0x00ff;
            x as u8
        })
        .collect()
}

/// Adds every trigram of `line` to a full-size `filter` (see [`Builder`]).
pub fn add(filter: &mut [u8; FILTER_BYTES], line: &[u8]) {
    let mut t: u32 = 0;
    for (i, &b) in line.iter().enumerate() {
        t = (t << 8) | u32::from(b);
        if i >= 2 {
            let s = hash16(t);
            filter[(s >> 3) as usize & (FILTER_BYTES - 1)] |= 1 << (s & 7);
        }
    }
}

/// False when no line added to `filter` can contain `needle`. A filter of
/// a size this version does not know never prunes.
pub fn may_contain(filter: &[u8], needle: &[u8]) -> bool {
    let n = filter.len();
    if !n.is_power_of_two() || !(MIN_FILTER_BYTES..=FILTER_BYTES).contains(&n) {
        return true;
    }
    let shift = 16 - (n * 8).trailing_zeros();
    needle.windows(3).all(|w| {
        let s = hash16((u32::from(w[0]) << 16) | (u32::from(w[1]) << 8) | u32::from(w[2])) >> shift;
        filter[(s >> 3) as usize] & (1 << (s & 7)) != 0
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_false_negatives_and_prunes() {
        let mut f = [0u8; FILTER_BYTES];
        let lines = ["GET /index.html 200", "connection timed out after 30s", "fooZQX9rareTOKENbar"];
        for l in lines {
            add(&mut f, l.as_bytes());
        }
        // every substring of every line may be contained (no false negatives)
        for l in lines {
            let b = l.as_bytes();
            for i in 0..b.len() {
                for j in i..=b.len() {
                    assert!(may_contain(&f, &b[i..j]), "{:?}", &l[i..j]);
                }
            }
        }
        assert!(may_contain(&f, b"ZQX9rareTOKEN"), "substring inside a longer token");
        assert!(!may_contain(&f, b"kubelet evicted pod"));
        assert!(may_contain(&f, b"zz"), "too short to prune");
    }

    #[test]
    fn folded_filters_keep_every_trigram() {
        let mut b = Builder::default();
        let lines: Vec<String> =
            (0..300).map(|i| format!("request {i} from host-{} took {}ms", i % 7, i * 3)).collect();
        for l in &lines {
            b.add(l.as_bytes());
        }
        let f = b.finish();
        assert!(f.len() < FILTER_BYTES && f.len() >= MIN_FILTER_BYTES, "{}", f.len());
        assert!(f.len().is_power_of_two());
        let ones: u32 = f.iter().map(|b| b.count_ones()).sum();
        assert!(f64::from(ones) <= MAX_FILL * (f.len() * 8) as f64);
        for l in &lines {
            let b = l.as_bytes();
            for i in 0..b.len() {
                for j in (i + 3).min(b.len())..=b.len() {
                    assert!(may_contain(&f, &b[i..j]), "{:?}", &l[i..j]);
                }
            }
        }
        assert!(!may_contain(&f, b"ZQX9rareTOKEN"));
        // the full-size filter and its folds agree with direct construction
        let mut full = [0u8; FILTER_BYTES];
        for l in &lines {
            add(&mut full, l.as_bytes());
        }
        assert_eq!(&full[..], &b.map[..]);
        // an empty builder folds to the minimum; unknown sizes never prune
        assert_eq!(Builder::default().finish().len(), MIN_FILTER_BYTES);
        assert!(may_contain(&[0u8; 100], b"abcdef"));
    }

    #[test]
    fn sized_filters_keep_every_trigram() {
        let lines: Vec<String> =
            (0..400).map(|i| format!("GET /api/v{} user={} status={}", i % 5, i * 7919 % 1000, 200 + i % 3)).collect();
        let mut b = Builder::default();
        for l in &lines {
            b.add(l.as_bytes());
        }
        for fill in [0.4, FRAME_MAX_FILL, 0.95] {
            let f = b.finish_sized(fill);
            let ones: u32 = f.iter().map(|b| b.count_ones()).sum();
            assert!(f64::from(ones) <= fill * (f.len() * 8) as f64, "{fill}: {} of {}", ones, f.len() * 8);
            for l in &lines {
                let x = l.as_bytes();
                for i in 0..x.len() {
                    for j in i..=x.len() {
                        assert!(may_contain_sized(&f, &x[i..j]), "{:?}", &l[i..j]);
                    }
                }
            }
        }
        let f = b.finish_sized(FRAME_MAX_FILL);
        assert!(!may_contain_sized(&f, b"ZQX9rareTOKEN"));
        // a power-of-two size is the folded filter
        let folded = b.finish();
        assert_eq!(b.reduce(folded.len()), folded);
        // no trigrams at all: nothing of 3 bytes or more can be in it
        let e = Builder::default().finish_sized(FRAME_MAX_FILL);
        assert_eq!(e.len(), 1);
        assert!(!may_contain_sized(&e, b"abc") && may_contain_sized(&e, b"ab"));
        assert!(may_contain_sized(&[], b"abcdef"), "no filter never prunes");
        // the union holds both
        let mut u = Builder::default();
        u.add(b"first line");
        let mut v = Builder::default();
        v.add(b"second line");
        u.union(&v);
        let f = u.finish_sized(FRAME_MAX_FILL);
        assert!(may_contain_sized(&f, b"first") && may_contain_sized(&f, b"second"));
    }
}
