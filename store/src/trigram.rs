//! Per-chunk content filter for line filters: a fixed 65,536-bit bitmap of
//! hashed byte trigrams of every line in the chunk (one hash per trigram).
//!
//! A chunk can contain a line with substring `needle` only if every trigram
//! of `needle` is set; a chunk where any is missing is skipped without
//! decompressing it. The filter only ever prunes: lines that pass are still
//! checked against the filter itself, so substring semantics are exact. For
//! needles shorter than 3 bytes it cannot prune. Format and measured
//! costs: `docs/format/logs.md`.

/// Bytes of one filter.
pub const FILTER_BYTES: usize = 8192;
const BITS: u32 = (FILTER_BYTES * 8) as u32;

/// Bit index of the trigram held in the low 24 bits of `t`: a
/// multiplicative hash whose top 16 bits index the 65,536-bit map.
#[inline]
fn slot(t: u32) -> u32 {
    (t & 0x00FF_FFFF).wrapping_mul(0x9E37_79B1) >> (32 - BITS.trailing_zeros())
}

/// Adds every trigram of `line` to `filter`. A rolling 24-bit window and a
/// fixed-size array keep the loop free of bounds checks (measured: the
/// `windows(3)` version cost 3 CPU s per GB of ingest).
pub fn add(filter: &mut [u8; FILTER_BYTES], line: &[u8]) {
    let mut t: u32 = 0;
    for (i, &b) in line.iter().enumerate() {
        t = (t << 8) | u32::from(b);
        if i >= 2 {
            let s = slot(t);
            filter[(s >> 3) as usize & (FILTER_BYTES - 1)] |= 1 << (s & 7);
        }
    }
}

/// False when no line added to `filter` can contain `needle`.
pub fn may_contain(filter: &[u8], needle: &[u8]) -> bool {
    if filter.len() != FILTER_BYTES {
        return true;
    }
    needle.windows(3).all(|w| {
        let s = slot((u32::from(w[0]) << 16) | (u32::from(w[1]) << 8) | u32::from(w[2]));
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
}
