//! Native-histogram chunks (encoding byte [`ENC_HISTOGRAM`] of a version-2
//! metric chunk): per sample a flag byte, a delta-of-delta timestamp, the
//! bucket layout only when it changed, the sum (or a bit saying it did not
//! change) and the counts as zigzag varint deltas from the previous
//! sample's (integral counts) or raw `f64`s. Byte layout in
//! `docs/format/tsdb.md`, "Histogram chunks". The same bytes carry the
//! samples of a series in a WAL histogram record.
//!
//! The decoder checks every length against the bytes left, so garbage gives
//! an error, never a panic or a huge allocation.

use cairn_wire::Histogram;
use cairn_wire::histogram::ResetHint;

use crate::codec::{DecodeError, Reader, put_uvarint, put_varint};

/// Encoding byte of a histogram chunk (after `xor::ENC_XOR` = 0 and
/// `xor::ENC_DECIMAL` = 1).
pub const ENC_HISTOGRAM: u8 = 2;

const F_SAME_LAYOUT: u8 = 1;
const F_INTEGRAL: u8 = 2;
const F_SAME_SUM: u8 = 16;
const HINT_SHIFT: u8 = 2;

/// Largest magnitude stored as an integer delta.
const MAX_EXACT: f64 = 9_007_199_254_740_992.0; // 2^53

fn integral(v: f64) -> bool {
    v.fract() == 0.0 && v.abs() < MAX_EXACT && !(v == 0.0 && v.is_sign_negative())
}

fn same_layout(a: &Histogram, b: &Histogram) -> bool {
    a.schema == b.schema
        && a.zero_threshold.to_bits() == b.zero_threshold.to_bits()
        && a.positive.len() == b.positive.len()
        && a.negative.len() == b.negative.len()
        && a.positive.iter().zip(&b.positive).all(|(x, y)| x.0 == y.0)
        && a.negative.iter().zip(&b.negative).all(|(x, y)| x.0 == y.0)
        && cairn_wire::histogram::floats_match(&a.custom_values, &b.custom_values)
}

fn put_f64(buf: &mut Vec<u8>, v: f64) {
    buf.extend_from_slice(&v.to_bits().to_le_bytes());
}

fn put_spans(buf: &mut Vec<u8>, buckets: &[(i32, f64)]) {
    // Runs of consecutive indexes: (gap from the previous run's end, length).
    let mut runs: Vec<(i64, u64)> = Vec::new();
    let mut next = 0i64;
    for &(i, _) in buckets {
        let i = i64::from(i);
        match runs.last_mut() {
            Some(r) if i == next => r.1 += 1,
            _ => runs.push((i - next, 1)),
        }
        next = i + 1;
    }
    put_uvarint(buf, runs.len() as u64);
    for (gap, len) in runs {
        put_varint(buf, gap);
        put_uvarint(buf, len);
    }
}

/// Appends a histogram chunk of `samples` (any order; normally sorted).
pub fn encode_chunk(buf: &mut Vec<u8>, samples: &[(i64, Histogram)]) {
    buf.push(ENC_HISTOGRAM);
    put_uvarint(buf, samples.len() as u64);
    let mut prev: Option<&Histogram> = None;
    let (mut prev_t, mut prev_d) = (0i64, 0i64);
    for (k, (t, h)) in samples.iter().enumerate() {
        let same = prev.is_some_and(|p| same_layout(p, h));
        let ints = integral(h.count)
            && integral(h.zero_count)
            && h.positive.iter().chain(&h.negative).all(|b| integral(b.1))
            && prev.is_none_or(|p| {
                !same
                    || (integral(p.count)
                        && integral(p.zero_count)
                        && p.positive.iter().chain(&p.negative).all(|b| integral(b.1)))
            });
        let same_sum = prev.is_some_and(|p| p.sum.to_bits() == h.sum.to_bits());
        let mut flags = (h.reset_hint as u8) << HINT_SHIFT;
        if same {
            flags |= F_SAME_LAYOUT;
        }
        if ints {
            flags |= F_INTEGRAL;
        }
        if same_sum {
            flags |= F_SAME_SUM;
        }
        buf.push(flags);
        match k {
            0 => put_varint(buf, *t),
            _ => {
                let d = t.wrapping_sub(prev_t);
                put_varint(buf, d.wrapping_sub(prev_d));
                prev_d = d;
            }
        }
        prev_t = *t;
        if !same {
            put_varint(buf, i64::from(h.schema));
            put_f64(buf, h.zero_threshold);
            put_uvarint(buf, h.custom_values.len() as u64);
            for &v in &h.custom_values {
                put_f64(buf, v);
            }
            put_spans(buf, &h.positive);
            put_spans(buf, &h.negative);
        }
        if !same_sum {
            put_f64(buf, h.sum);
        }
        let prev_same = if same { prev } else { None };
        let put_count = |buf: &mut Vec<u8>, v: f64, before: f64| {
            if ints {
                put_varint(buf, (v as i64).wrapping_sub(before as i64));
            } else {
                put_f64(buf, v);
            }
        };
        put_count(buf, h.count, prev_same.map_or(0.0, |p| p.count));
        put_count(buf, h.zero_count, prev_same.map_or(0.0, |p| p.zero_count));
        for (side, prev_side) in
            [(&h.positive, prev_same.map(|p| &p.positive)), (&h.negative, prev_same.map(|p| &p.negative))]
        {
            let mut last = 0.0;
            for (j, &(_, c)) in side.iter().enumerate() {
                let before = match prev_side {
                    Some(ps) => ps[j].1,
                    None => last,
                };
                put_count(buf, c, before);
                last = c;
            }
        }
        prev = Some(h);
    }
}

fn err(reason: &'static str) -> DecodeError {
    DecodeError { offset: 0, reason }
}

fn read_f64(r: &mut Reader<'_>) -> Result<f64, DecodeError> {
    Ok(f64::from_bits(r.u64_le()?))
}

fn read_spans(r: &mut Reader<'_>, budget: &mut usize) -> Result<Vec<i32>, DecodeError> {
    let n = r.count(2)?;
    let mut out = Vec::new();
    let mut next = 0i64;
    for _ in 0..n {
        let gap = r.varint()?;
        let len = r.uvarint()?;
        // Each bucket costs at least one byte of counts: no more buckets
        // than bytes in the chunk.
        if len as usize > *budget {
            return Err(err("more buckets than the chunk can hold"));
        }
        *budget -= len as usize;
        let mut i = next.checked_add(gap).ok_or(err("bucket index overflow"))?;
        for _ in 0..len {
            out.push(i32::try_from(i).map_err(|_| err("bucket index out of range"))?);
            i += 1;
        }
        next = i;
    }
    Ok(out)
}

/// Decodes a chunk written by [`encode_chunk`] (including its encoding
/// byte), appending to `out`.
pub fn decode_chunk(chunk: &[u8], out: &mut Vec<(i64, Histogram)>) -> Result<(), DecodeError> {
    let (&enc, rest) = chunk.split_first().ok_or(err("empty chunk"))?;
    if enc != ENC_HISTOGRAM {
        return Err(err("not a histogram chunk"));
    }
    let mut r = Reader::new(rest);
    let n = r.count(3)?;
    out.reserve(n);
    let mut prev: Option<Histogram> = None;
    let (mut prev_t, mut prev_d) = (0i64, 0i64);
    for k in 0..n {
        let flags = *r.rest().first().ok_or(err("truncated histogram sample"))?;
        r = Reader::new(&r.rest()[1..]);
        let hint = ResetHint::from_u8((flags >> HINT_SHIFT) & 3).unwrap_or_default();
        let t = if k == 0 {
            r.varint()?
        } else {
            prev_d = prev_d.wrapping_add(r.varint()?);
            prev_t.wrapping_add(prev_d)
        };
        prev_t = t;
        let same = flags & F_SAME_LAYOUT != 0;
        let ints = flags & F_INTEGRAL != 0;
        let mut h = match (&prev, same) {
            (Some(p), true) => p.clone(),
            (None, true) => return Err(err("first sample refers to a previous layout")),
            (_, false) => {
                let schema = i32::try_from(r.varint()?).map_err(|_| err("schema out of range"))?;
                let zero_threshold = read_f64(&mut r)?;
                let nc = r.count(8)?;
                let mut custom_values = Vec::with_capacity(nc);
                for _ in 0..nc {
                    custom_values.push(read_f64(&mut r)?);
                }
                let mut budget = r.rest().len();
                let pos = read_spans(&mut r, &mut budget)?;
                let neg = read_spans(&mut r, &mut budget)?;
                Histogram {
                    schema,
                    zero_threshold,
                    custom_values,
                    positive: pos.into_iter().map(|i| (i, 0.0)).collect(),
                    negative: neg.into_iter().map(|i| (i, 0.0)).collect(),
                    ..Histogram::default()
                }
            }
        };
        h.reset_hint = hint;
        if flags & F_SAME_SUM != 0 {
            if prev.is_none() {
                return Err(err("first sample refers to a previous sum"));
            }
        } else {
            h.sum = read_f64(&mut r)?;
        }
        let get = |r: &mut Reader<'_>, before: f64| -> Result<f64, DecodeError> {
            if ints { Ok((before as i64).wrapping_add(r.varint()?) as f64) } else { read_f64(r) }
        };
        // `h` holds the previous sample's counts when the layout is the same.
        let base = |v: f64| if same { v } else { 0.0 };
        h.count = get(&mut r, base(h.count))?;
        h.zero_count = get(&mut r, base(h.zero_count))?;
        for side in [&mut h.positive, &mut h.negative] {
            let mut last = 0.0;
            for b in side.iter_mut() {
                let before = if same { b.1 } else { last };
                b.1 = get(&mut r, before)?;
                last = b.1;
            }
        }
        out.push((t, h.clone()));
        prev = Some(h);
    }
    if !r.is_empty() {
        return Err(err("trailing bytes after the last histogram sample"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn hist() -> impl Strategy<Value = Histogram> {
        let counts = prop_oneof![
            (0u64..1000).prop_map(|v| v as f64),
            any::<u64>().prop_map(f64::from_bits),
            Just(f64::NAN),
            Just(-0.0),
            Just(1e300),
        ];
        (
            prop_oneof![-4i32..=8, Just(-53)],
            0u8..4,
            prop_oneof![Just(0.0), Just(0.001), any::<u64>().prop_map(f64::from_bits)],
            counts.clone(),
            counts.clone(),
            any::<u64>().prop_map(f64::from_bits),
            proptest::collection::btree_map(-50i32..50, counts.clone(), 0..12),
            proptest::collection::btree_map(-50i32..50, counts, 0..6),
            proptest::collection::vec(-100.0f64..100.0, 0..4),
        )
            .prop_map(|(schema, hint, zt, zc, count, sum, pos, neg, mut cv)| {
                cv.sort_by(|a, b| a.total_cmp(b));
                Histogram {
                    reset_hint: ResetHint::from_u8(hint).unwrap(),
                    schema,
                    zero_threshold: zt,
                    zero_count: zc,
                    count,
                    sum,
                    positive: pos.into_iter().collect(),
                    negative: neg.into_iter().collect(),
                    custom_values: cv,
                }
            })
    }

    fn bits_eq(a: &Histogram, b: &Histogram) -> bool {
        let f = |x: f64, y: f64| x.to_bits() == y.to_bits();
        let bs = |x: &[(i32, f64)], y: &[(i32, f64)]| {
            x.len() == y.len() && x.iter().zip(y).all(|(p, q)| p.0 == q.0 && f(p.1, q.1))
        };
        a.reset_hint == b.reset_hint
            && a.schema == b.schema
            && f(a.zero_threshold, b.zero_threshold)
            && f(a.zero_count, b.zero_count)
            && f(a.count, b.count)
            && f(a.sum, b.sum)
            && bs(&a.positive, &b.positive)
            && bs(&a.negative, &b.negative)
            && a.custom_values.len() == b.custom_values.len()
            && a.custom_values.iter().zip(&b.custom_values).all(|(x, y)| f(*x, *y))
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]
        /// Every histogram sequence round-trips bit for bit, including
        /// repeated layouts (the delta path), NaN payloads and extreme
        /// timestamps.
        #[test]
        fn chunks_round_trip(
            base in proptest::collection::vec((prop_oneof![any::<i64>(), -1_000_000i64..1_000_000], hist()), 1..20),
            repeats in proptest::collection::vec((0usize..20, 0u64..5, 1i64..100_000), 0..30),
        ) {
            let mut samples = base.clone();
            // Same layout, grown counts: the integral delta path.
            for (from, add, dt) in repeats {
                let (t, mut h) = samples[from % samples.len()].clone();
                h.count += add as f64;
                for b in h.positive.iter_mut() { b.1 += add as f64; }
                samples.push((t.wrapping_add(dt), h));
            }
            let mut buf = Vec::new();
            encode_chunk(&mut buf, &samples);
            let mut out = Vec::new();
            decode_chunk(&buf, &mut out).unwrap();
            prop_assert_eq!(out.len(), samples.len());
            for ((t1, h1), (t2, h2)) in out.iter().zip(&samples) {
                prop_assert_eq!(t1, t2);
                prop_assert!(bits_eq(h1, h2), "{:?} != {:?}", h1, h2);
            }
        }

        /// Garbage (and every truncation of a real chunk) is an error or a
        /// value, never a panic.
        #[test]
        fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200), cut in 0usize..400) {
            let mut out = Vec::new();
            let mut b = vec![ENC_HISTOGRAM];
            b.extend_from_slice(&bytes);
            let _ = decode_chunk(&b, &mut out);
            let h = Histogram { count: 3.0, positive: vec![(0, 1.0), (1, 2.0)], ..Histogram::default() };
            let mut real = Vec::new();
            encode_chunk(&mut real, &[(1, h.clone()), (2, h)]);
            let cut = cut.min(real.len());
            let _ = decode_chunk(&real[..cut], &mut out);
        }
    }

    #[test]
    fn typical_chunk_is_compact() {
        let mut samples = Vec::new();
        for k in 0..120i64 {
            let h = Histogram {
                schema: 3,
                count: (k * 20) as f64,
                sum: k as f64 * 1.5,
                positive: (0..20).map(|i| (i, (k + i as i64) as f64)).collect(),
                ..Histogram::default()
            };
            samples.push((k * 15_000, h));
        }
        let mut buf = Vec::new();
        encode_chunk(&mut buf, &samples);
        // flag + ts + sum + 22 one-byte deltas ≈ 32 bytes per sample.
        assert!(buf.len() < 120 * 36, "{} bytes", buf.len());
    }
}
