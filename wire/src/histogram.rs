//! Native histograms: Prometheus's sparse exponential histograms (schemas
//! −4…8) and custom-bucket histograms (schema −53, "NHCB"), the value type
//! shared by ingest, store and query.
//!
//! Counts are kept as `f64` whether the sender used integer or float
//! histograms: PromQL only ever computes on float histograms, and integer
//! counts up to 2^53 are exact in an `f64`. Buckets are kept sparse, as
//! `(index, count)` pairs with ascending, unique indexes and absolute (not
//! delta) counts; [`to_spans`] and [`from_spans`] convert to and from
//! Prometheus's span form. The arithmetic follows Prometheus's
//! `model/histogram/float_histogram.go` (zero-bucket reconciliation,
//! resolution reduction, counter-reset detection).

use crate::STALE_NAN_BITS;

/// The schema of custom-bucket histograms.
pub const CUSTOM_BUCKETS_SCHEMA: i32 = -53;
/// Smallest exponential schema.
pub const MIN_SCHEMA: i32 = -4;
/// Largest exponential schema.
pub const MAX_SCHEMA: i32 = 8;

/// Prometheus's counter-reset hint of a histogram sample.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Hash)]
pub enum ResetHint {
    /// Not known: detected from the data.
    #[default]
    Unknown = 0,
    /// A counter reset happened right before this sample.
    Reset = 1,
    /// No counter reset before this sample.
    NotReset = 2,
    /// A gauge histogram (no counter semantics).
    Gauge = 3,
}

impl ResetHint {
    /// From its number (as in remote_write and Cairn's formats).
    pub fn from_u8(v: u8) -> Option<ResetHint> {
        Some(match v {
            0 => ResetHint::Unknown,
            1 => ResetHint::Reset,
            2 => ResetHint::NotReset,
            3 => ResetHint::Gauge,
            _ => return None,
        })
    }
}

/// A histogram could not be combined with another or is malformed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum HistogramError {
    /// One uses custom buckets, the other exponential ones.
    #[error("histograms with exponential and custom buckets cannot be combined")]
    MixedSchemas,
    /// Both use custom buckets, with different bounds.
    #[error("histograms with custom buckets have incompatible bounds")]
    IncompatibleBounds,
    /// The schema is neither exponential (−4…8) nor custom (−53).
    #[error("invalid histogram schema")]
    InvalidSchema,
    /// Spans and buckets disagree, or custom buckets exceed their bounds.
    #[error("histogram spans do not match its buckets")]
    SpansMismatch,
}

/// What an addition or subtraction did besides adding.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct AddOutcome {
    /// The counter-reset hints collided (`Reset` + `NotReset`).
    pub reset_collision: bool,
    /// Different custom bounds were reconciled to the shared ones.
    pub reconciled: bool,
}

/// One native histogram sample.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Histogram {
    /// Counter-reset hint.
    pub reset_hint: ResetHint,
    /// −4…8 (exponential), or −53 (custom buckets).
    pub schema: i32,
    /// Width of the zero bucket (exponential schemas only).
    pub zero_threshold: f64,
    /// Observations in the zero bucket.
    pub zero_count: f64,
    /// Observations.
    pub count: f64,
    /// Sum of observations; the staleness marker's bits mark a stale sample.
    pub sum: f64,
    /// Positive buckets: (index, count), ascending unique indexes.
    pub positive: Vec<(i32, f64)>,
    /// Negative buckets: (index, count), ascending unique indexes (of the
    /// absolute values).
    pub negative: Vec<(i32, f64)>,
    /// Upper bounds of the custom buckets (schema −53), ascending; `+Inf`
    /// is implicit.
    pub custom_values: Vec<f64>,
}

/// One bucket with its bounds, for iteration.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Bucket {
    pub lower: f64,
    pub upper: f64,
    pub lower_inclusive: bool,
    pub upper_inclusive: bool,
    pub count: f64,
}

impl Bucket {
    /// Prometheus's JSON boundary rule: 0 open left, 1 open right, 2 open
    /// both, 3 closed both.
    pub fn boundary_rule(&self) -> u8 {
        match (self.lower_inclusive, self.upper_inclusive) {
            (false, true) => 0,
            (true, false) => 1,
            (false, false) => 2,
            (true, true) => 3,
        }
    }
}

/// `x · 2^exp` without intermediate overflow.
fn ldexp(x: f64, exp: i32) -> f64 {
    let mut x = x;
    let mut e = exp;
    while e > 1000 {
        x *= 2f64.powi(1000);
        e -= 1000;
    }
    while e < -1000 {
        x *= 2f64.powi(-1000);
        e += 1000;
    }
    x * 2f64.powi(e)
}

/// Upper bound of exponential bucket `idx` at `schema` (Prometheus's
/// `getBoundExponential`).
pub fn exponential_bound(idx: i32, schema: i32) -> f64 {
    if schema < 0 {
        let exp = i64::from(idx) << (-schema).min(62);
        if exp == 1024 {
            return f64::MAX;
        }
        return ldexp(1.0, exp.clamp(-100_000, 100_000) as i32);
    }
    let schema = schema.min(MAX_SCHEMA);
    let frac_idx = idx & ((1 << schema) - 1);
    let frac = 2f64.powf(f64::from(frac_idx) / f64::from(1 << schema)) / 2.0;
    let exp = (idx >> schema) + 1;
    if frac == 0.5 && exp == 1025 {
        return f64::MAX;
    }
    ldexp(frac, exp)
}

/// Index of the bucket at `to` (≤ `from`) that bucket `idx` at `from`
/// falls in.
pub fn reduced_index(idx: i32, from: i32, to: i32) -> i32 {
    ((idx - 1) >> (from - to).clamp(0, 31)) + 1
}

/// Converts Prometheus spans (offset, length) and their bucket counts into
/// sparse `(index, count)` pairs. Errors when the lengths disagree.
pub fn from_spans(spans: &[(i32, u32)], counts: &[f64]) -> Result<Vec<(i32, f64)>, HistogramError> {
    let total: u64 = spans.iter().map(|s| u64::from(s.1)).sum();
    if total != counts.len() as u64 {
        return Err(HistogramError::SpansMismatch);
    }
    let mut out = Vec::with_capacity(counts.len());
    let mut idx: i64 = 0;
    let mut k = 0;
    for (n, &(off, len)) in spans.iter().enumerate() {
        idx += i64::from(off);
        if n > 0 && off < 0 {
            return Err(HistogramError::SpansMismatch);
        }
        for _ in 0..len {
            let i = i32::try_from(idx).map_err(|_| HistogramError::SpansMismatch)?;
            out.push((i, counts[k]));
            k += 1;
            idx += 1;
        }
    }
    Ok(out)
}

/// Converts sparse buckets into Prometheus spans and counts; runs of up to
/// two empty indexes between buckets are filled with zero buckets (as
/// Prometheus's compaction does), longer gaps start a new span.
pub fn to_spans(buckets: &[(i32, f64)]) -> (Vec<(i32, u32)>, Vec<f64>) {
    let mut spans: Vec<(i32, u32)> = Vec::new();
    let mut counts = Vec::with_capacity(buckets.len());
    let mut next: i64 = 0; // index after the last bucket written
    for (n, &(i, c)) in buckets.iter().enumerate() {
        let gap = i64::from(i) - next;
        if n > 0 && gap <= 2 {
            counts.extend(std::iter::repeat_n(0.0, gap as usize));
            if let Some(s) = spans.last_mut() {
                s.1 += gap as u32 + 1;
            }
        } else {
            spans.push((gap as i32, 1));
        }
        counts.push(c);
        next = i64::from(i) + 1;
    }
    (spans, counts)
}

/// Adds `sign · b` into sorted sparse `a`.
fn merge(a: &[(i32, f64)], b: impl IntoIterator<Item = (i32, f64)>, sign: f64) -> Vec<(i32, f64)> {
    let mut out = Vec::with_capacity(a.len());
    let mut ai = a.iter().copied().peekable();
    for (bi, bc) in b {
        while let Some(&(i, c)) = ai.peek() {
            if i < bi {
                out.push((i, c));
                ai.next();
            } else {
                break;
            }
        }
        match ai.peek() {
            Some(&(i, c)) if i == bi => {
                out.push((i, c + sign * bc));
                ai.next();
            }
            _ => out.push((bi, sign * bc)),
        }
    }
    out.extend(ai);
    out
}

/// Sparse buckets at schema `from` reduced to schema `to` (≤ `from`).
fn reduce(buckets: &[(i32, f64)], from: i32, to: i32) -> Vec<(i32, f64)> {
    if from <= to {
        return buckets.to_vec();
    }
    let mut out: Vec<(i32, f64)> = Vec::with_capacity(buckets.len());
    for &(i, c) in buckets {
        let t = reduced_index(i, from, to);
        match out.last_mut() {
            Some(last) if last.0 == t => last.1 += c,
            _ => out.push((t, c)),
        }
    }
    out
}

/// Go's `%g` (shortest representation; exponent form below 1e-4 and from 1e6).
pub fn go_g(v: f64) -> String {
    if v.is_nan() {
        return "NaN".into();
    }
    if v.is_infinite() {
        return if v > 0.0 { "+Inf".into() } else { "-Inf".into() };
    }
    if v == 0.0 {
        return if v.is_sign_negative() { "-0".into() } else { "0".into() };
    }
    let e = format!("{v:e}"); // e.g. 1.5e-7
    let (mant, exp) = e.split_once('e').unwrap_or((&e, "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    if !(-4..6).contains(&exp) {
        let sign = if exp < 0 { '-' } else { '+' };
        return format!("{mant}e{sign}{:02}", exp.abs());
    }
    format!("{v}")
}

impl Histogram {
    /// True for a staleness marker (sum holds the stale NaN).
    pub fn is_stale(&self) -> bool {
        self.sum.to_bits() == STALE_NAN_BITS
    }

    /// A staleness marker.
    pub fn stale() -> Histogram {
        Histogram { sum: f64::from_bits(STALE_NAN_BITS), ..Histogram::default() }
    }

    /// True for custom buckets (schema −53).
    pub fn uses_custom_buckets(&self) -> bool {
        self.schema == CUSTOM_BUCKETS_SCHEMA
    }

    /// Checks the schema and bucket indexes.
    pub fn validate(&self) -> Result<(), HistogramError> {
        let sorted = |b: &[(i32, f64)]| b.windows(2).all(|w| w[0].0 < w[1].0);
        if !sorted(&self.positive) || !sorted(&self.negative) {
            return Err(HistogramError::SpansMismatch);
        }
        if self.uses_custom_buckets() {
            let n = self.custom_values.len() as i64;
            if !self.negative.is_empty()
                || self.positive.iter().any(|&(i, _)| i < 0 || i64::from(i) > n)
                || !self.custom_values.windows(2).all(|w| w[0] < w[1])
            {
                return Err(HistogramError::SpansMismatch);
            }
            return Ok(());
        }
        if !(MIN_SCHEMA..=MAX_SCHEMA).contains(&self.schema) {
            return Err(HistogramError::InvalidSchema);
        }
        Ok(())
    }

    /// Upper bound of bucket `idx` (custom: `custom_values[idx]`, `+Inf`
    /// past the last; `-Inf` for −1).
    pub fn bound(&self, idx: i32) -> f64 {
        if self.uses_custom_buckets() {
            if idx < 0 {
                return f64::NEG_INFINITY;
            }
            return self.custom_values.get(idx as usize).copied().unwrap_or(f64::INFINITY);
        }
        exponential_bound(idx, self.schema)
    }

    /// Every bucket with a count, in ascending order of value: negative
    /// buckets (most negative first), the zero bucket (when it has
    /// observations), positive buckets. Zero-count buckets are included
    /// (as Prometheus's iterator does for buckets inside spans).
    pub fn buckets(&self) -> Vec<Bucket> {
        let mut out = Vec::with_capacity(self.positive.len() + self.negative.len() + 1);
        for &(i, c) in self.negative.iter().rev() {
            out.push(Bucket {
                lower: -self.bound(i),
                upper: -self.bound(i - 1),
                lower_inclusive: true,
                upper_inclusive: false,
                count: c,
            });
        }
        if self.zero_count != 0.0 && !self.uses_custom_buckets() {
            out.push(Bucket {
                lower: -self.zero_threshold,
                upper: self.zero_threshold,
                lower_inclusive: true,
                upper_inclusive: true,
                count: self.zero_count,
            });
        }
        for &(i, c) in &self.positive {
            let lower = self.bound(i - 1);
            out.push(Bucket {
                lower,
                upper: self.bound(i),
                // Custom buckets: the first, from −Inf, is closed.
                lower_inclusive: lower == f64::NEG_INFINITY,
                upper_inclusive: true,
                count: c,
            });
        }
        out
    }

    /// Removes empty buckets.
    pub fn compact(&mut self) {
        self.positive.retain(|b| b.1 != 0.0);
        self.negative.retain(|b| b.1 != 0.0);
    }

    /// Multiplies every count and the sum by `f`.
    pub fn mul(&mut self, f: f64) {
        self.zero_count *= f;
        self.count *= f;
        self.sum *= f;
        self.positive.iter_mut().for_each(|b| b.1 *= f);
        self.negative.iter_mut().for_each(|b| b.1 *= f);
    }

    /// Divides every count and the sum by `f`. Division by zero leaves
    /// every observation in the zero bucket (±Inf or NaN counts), as
    /// Prometheus does.
    pub fn div(&mut self, f: f64) {
        if f == 0.0 {
            self.zero_count = self.count / f;
            self.count /= f;
            self.sum /= f;
            self.positive.clear();
            self.negative.clear();
            return;
        }
        self.zero_count /= f;
        self.count /= f;
        self.sum /= f;
        self.positive.iter_mut().for_each(|b| b.1 /= f);
        self.negative.iter_mut().for_each(|b| b.1 /= f);
    }

    /// This histogram at a schema ≤ its own (exponential only).
    pub fn to_schema(&self, schema: i32) -> Histogram {
        if self.uses_custom_buckets() || schema >= self.schema {
            return self.clone();
        }
        let mut h = self.clone();
        h.positive = reduce(&self.positive, self.schema, schema);
        h.negative = reduce(&self.negative, self.schema, schema);
        h.schema = schema;
        h
    }

    /// What the zero count would be with the larger `threshold`, and the
    /// threshold itself moved up to a bucket boundary when it falls inside
    /// a populated bucket (Prometheus's `zeroCountForLargerThreshold`).
    fn zero_count_for_larger_threshold(&self, mut larger: f64) -> (f64, f64) {
        if larger == self.zero_threshold {
            return (self.zero_count, larger);
        }
        'again: loop {
            let mut count = self.zero_count;
            for &(i, c) in &self.positive {
                let (lo, hi) = (self.bound(i - 1), self.bound(i));
                if lo >= larger {
                    break;
                }
                count += c;
                if hi > larger {
                    if c != 0.0 {
                        larger = hi;
                    }
                    break;
                }
            }
            for &(i, c) in &self.negative {
                let (lo, hi) = (self.bound(i - 1), self.bound(i));
                if lo >= larger {
                    break;
                }
                count += c;
                if hi > larger {
                    if c != 0.0 {
                        larger = hi;
                        continue 'again;
                    }
                    break;
                }
            }
            return (count, larger);
        }
    }

    /// Drops the buckets inside the zero bucket (their counts are already
    /// in the zero count) and every empty bucket.
    fn trim_buckets_in_zero_bucket(&mut self) {
        let z = self.zero_threshold;
        let schema = self.schema;
        let inside = |i: i32| exponential_bound(i - 1, schema) < z;
        self.positive.retain(|&(i, c)| !inside(i) && c != 0.0);
        self.negative.retain(|&(i, c)| !inside(i) && c != 0.0);
    }

    /// Brings both zero buckets to the larger threshold; returns `other`'s
    /// zero count at that threshold.
    fn reconcile_zero_buckets(&mut self, other: &Histogram) -> f64 {
        let mut other_count = other.zero_count;
        let mut other_threshold = other.zero_threshold;
        let mut rounds = 0;
        while other_threshold != self.zero_threshold && rounds < 64 {
            rounds += 1;
            if self.zero_threshold > other_threshold {
                (other_count, other_threshold) = other.zero_count_for_larger_threshold(self.zero_threshold);
            }
            if other_threshold > self.zero_threshold {
                (self.zero_count, self.zero_threshold) = self.zero_count_for_larger_threshold(other_threshold);
                self.trim_buckets_in_zero_bucket();
            }
        }
        other_count
    }

    /// Prometheus's `adjustCounterReset`; true on a collision of `Reset`
    /// and `NotReset`.
    fn adjust_reset_hint(&mut self, other: &Histogram) -> bool {
        use ResetHint::*;
        match (self.reset_hint, other.reset_hint) {
            (a, b) if a == b => false,
            (Gauge, _) => false,
            (_, Gauge) => {
                self.reset_hint = Gauge;
                false
            }
            (Unknown, _) => false,
            (_, Unknown) => {
                self.reset_hint = Unknown;
                false
            }
            _ => {
                self.reset_hint = Unknown;
                true
            }
        }
    }

    fn add_signed(&mut self, other: &Histogram, sign: f64) -> Result<AddOutcome, HistogramError> {
        if self.uses_custom_buckets() != other.uses_custom_buckets() {
            return Err(HistogramError::MixedSchemas);
        }
        let reconciled;
        let was_reconciled = self.uses_custom_buckets() && !floats_match(&self.custom_values, &other.custom_values);
        let other = if self.uses_custom_buckets() && !floats_match(&self.custom_values, &other.custom_values) {
            // Different custom bounds: both move to the bounds they share
            // (Prometheus reconciles mismatched custom buckets this way).
            let common: Vec<f64> =
                self.custom_values.iter().copied().filter(|v| other.custom_values.contains(v)).collect();
            self.positive = remap_custom(&self.positive, &self.custom_values, &common);
            self.custom_values.clone_from(&common);
            let mut o = other.clone();
            o.positive = remap_custom(&other.positive, &other.custom_values, &common);
            o.custom_values = common;
            reconciled = o;
            &reconciled
        } else {
            other
        };
        let collision = AddOutcome { reset_collision: self.adjust_reset_hint(other), reconciled: was_reconciled };
        if !self.uses_custom_buckets() {
            let oz = self.reconcile_zero_buckets(other);
            self.zero_count += sign * oz;
        }
        self.count += sign * other.count;
        self.sum += sign * other.sum;
        if self.uses_custom_buckets() {
            self.positive = merge(&self.positive, other.positive.iter().copied(), sign);
            return Ok(collision);
        }
        let target = self.schema.min(other.schema);
        if self.schema > target {
            self.positive = reduce(&self.positive, self.schema, target);
            self.negative = reduce(&self.negative, self.schema, target);
            self.schema = target;
        }
        let z = self.zero_threshold;
        let keep = |&(i, _): &(i32, f64)| !(z > 0.0 && exponential_bound(i, target) <= z);
        let op = reduce(&other.positive, other.schema, target);
        let on = reduce(&other.negative, other.schema, target);
        self.positive = merge(&self.positive, op.into_iter().filter(keep), sign);
        self.negative = merge(&self.negative, on.into_iter().filter(keep), sign);
        Ok(collision)
    }

    /// Adds `other` (Prometheus's `FloatHistogram.Add`).
    pub fn add(&mut self, other: &Histogram) -> Result<AddOutcome, HistogramError> {
        self.add_signed(other, 1.0)
    }

    /// Subtracts `other` (Prometheus's `FloatHistogram.Sub`).
    pub fn sub(&mut self, other: &Histogram) -> Result<AddOutcome, HistogramError> {
        self.add_signed(other, -1.0)
    }

    /// Whether a counter reset happened between `previous` and this
    /// histogram (Prometheus's `DetectReset`).
    pub fn detect_reset(&self, previous: &Histogram) -> bool {
        match self.reset_hint {
            ResetHint::Reset => return true,
            ResetHint::NotReset => return false,
            _ => {}
        }
        if self.count < previous.count {
            return true;
        }
        if self.uses_custom_buckets() != previous.uses_custom_buckets() {
            return true;
        }
        if self.uses_custom_buckets() && !floats_match(&self.custom_values, &previous.custom_values) {
            // Compare at the bounds both share (as the subtraction does).
            let common: Vec<f64> =
                self.custom_values.iter().copied().filter(|v| previous.custom_values.contains(v)).collect();
            let cur = remap_custom(&self.positive, &self.custom_values, &common);
            let prev = remap_custom(&previous.positive, &previous.custom_values, &common);
            return buckets_decreased(&cur, &prev);
        }
        if self.schema > previous.schema {
            return true;
        }
        if self.zero_threshold < previous.zero_threshold {
            return true;
        }
        let (prev_zero, threshold) = previous.zero_count_for_larger_threshold(self.zero_threshold);
        if threshold != self.zero_threshold {
            return true;
        }
        if self.zero_count < prev_zero {
            return true;
        }
        let custom = self.uses_custom_buckets();
        let (schema, z) = (self.schema, self.zero_threshold);
        let above = |&(i, _): &(i32, f64)| custom || exponential_bound(i, schema) > z;
        for (cur, prev) in [(&self.positive, &previous.positive), (&self.negative, &previous.negative)] {
            let cur: Vec<(i32, f64)> = reduce(cur, self.schema, schema).into_iter().filter(above).collect();
            let prev: Vec<(i32, f64)> = if custom {
                prev.clone()
            } else {
                reduce(prev, previous.schema, schema).into_iter().filter(above).collect()
            };
            if buckets_decreased(&cur, &prev) {
                return true;
            }
        }
        false
    }

    /// Equal content after compaction (bit-equal floats, NaN equal to NaN).
    pub fn content_equals(&self, other: &Histogram) -> bool {
        let feq = |a: f64, b: f64| a == b || (a.is_nan() && b.is_nan());
        let beq = |a: &[(i32, f64)], b: &[(i32, f64)]| {
            let a = a.iter().filter(|x| x.1 != 0.0);
            let b: Vec<_> = b.iter().filter(|x| x.1 != 0.0).collect();
            a.clone().count() == b.len() && a.zip(b).all(|(x, y)| x.0 == y.0 && feq(x.1, y.1))
        };
        self.schema == other.schema
            && feq(self.zero_threshold, other.zero_threshold)
            && feq(self.zero_count, other.zero_count)
            && feq(self.count, other.count)
            && feq(self.sum, other.sum)
            && floats_match(&self.custom_values, &other.custom_values)
            && beq(&self.positive, &other.positive)
            && beq(&self.negative, &other.negative)
    }

    /// Prometheus's `FloatHistogram.String()`:
    /// `{count:20, sum:10, [-2,-1):2, [-0.001,0.001]:2, (0.5,1]:1}`.
    pub fn to_prom_string(&self) -> String {
        let mut s = format!("{{count:{}, sum:{}", go_g(self.count), go_g(self.sum));
        for b in self.buckets() {
            if b.count == 0.0 {
                continue;
            }
            s.push_str(&format!(
                ", {}{},{}{}:{}",
                if b.lower_inclusive { '[' } else { '(' },
                go_g(b.lower),
                go_g(b.upper),
                if b.upper_inclusive { ']' } else { ')' },
                go_g(b.count)
            ));
        }
        s.push('}');
        s
    }
}

/// Whether a bucket of `prev` holds more than the same bucket of `cur`
/// (a bucket missing from `cur` holds 0).
fn buckets_decreased(cur: &[(i32, f64)], prev: &[(i32, f64)]) -> bool {
    let mut ci = cur.iter().peekable();
    for &(pi, pc) in prev {
        while ci.peek().is_some_and(|c| c.0 < pi) {
            ci.next();
        }
        match ci.peek() {
            Some(&&(i, c)) if i == pi => {
                if c < pc {
                    return true;
                }
            }
            _ => {
                if pc != 0.0 {
                    return true;
                }
            }
        }
    }
    false
}

/// Custom buckets with bounds `from` moved to `to` (a subset of `from`):
/// each bucket goes to the first bucket of `to` whose upper bound is at or
/// above its own.
fn remap_custom(buckets: &[(i32, f64)], from: &[f64], to: &[f64]) -> Vec<(i32, f64)> {
    let mut out: Vec<(i32, f64)> = Vec::with_capacity(buckets.len());
    for &(i, c) in buckets {
        let upper = from.get(i.max(0) as usize).copied().unwrap_or(f64::INFINITY);
        let j = to.partition_point(|&b| b < upper) as i32;
        match out.last_mut() {
            Some(last) if last.0 == j => last.1 += c,
            _ => out.push((j, c)),
        }
    }
    out
}

/// Custom bounds equal (NaN-free by validation).
pub fn floats_match(a: &[f64], b: &[f64]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits() || x == y)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(schema: i32, pos: &[(i32, f64)]) -> Histogram {
        let count = pos.iter().map(|b| b.1).sum();
        Histogram { schema, count, positive: pos.to_vec(), ..Default::default() }
    }

    #[test]
    fn bounds() {
        assert_eq!(exponential_bound(0, 0), 1.0);
        assert_eq!(exponential_bound(1, 0), 2.0);
        assert_eq!(exponential_bound(-1, 0), 0.5);
        assert!((exponential_bound(1, 1) - 2f64.sqrt()).abs() < 1e-15);
        assert_eq!(exponential_bound(1, -1), 4.0);
        assert_eq!(exponential_bound(1024, 0), f64::MAX);
        assert_eq!(exponential_bound(1025, 0), f64::INFINITY);
        assert_eq!(reduced_index(3, 1, 0), 2);
        assert_eq!(reduced_index(4, 1, 0), 2);
        assert_eq!(reduced_index(0, 1, 0), 0);
        assert_eq!(reduced_index(-1, 1, 0), 0);
    }

    #[test]
    fn spans_round_trip() {
        let b = vec![(-3, 1.0), (-2, 2.0), (0, 3.0), (7, 1.0)];
        let (spans, counts) = to_spans(&b);
        assert_eq!(spans, vec![(-3, 4), (6, 1)]);
        assert_eq!(counts, vec![1.0, 2.0, 0.0, 3.0, 1.0]);
        let back = from_spans(&spans, &counts).unwrap();
        assert_eq!(back, vec![(-3, 1.0), (-2, 2.0), (-1, 0.0), (0, 3.0), (7, 1.0)]);
        assert!(from_spans(&[(0, 3)], &[1.0]).is_err());
    }

    #[test]
    fn add_reduces_schema_and_detects_resets() {
        let mut a = h(1, &[(1, 1.0), (2, 1.0), (3, 4.0)]);
        let b = h(0, &[(1, 2.0), (2, 1.0)]);
        a.add(&b).unwrap();
        assert_eq!(a.schema, 0);
        assert_eq!(a.positive, vec![(1, 4.0), (2, 5.0)]);
        assert_eq!(a.count, 9.0);
        let bigger = h(0, &[(1, 5.0), (2, 5.0)]);
        assert!(!bigger.detect_reset(&a));
        let smaller = h(0, &[(1, 3.0), (2, 7.0)]);
        assert!(smaller.detect_reset(&a));
        let mut c = h(-53, &[(0, 1.0)]);
        c.custom_values = vec![1.0];
        assert_eq!(c.clone().add(&a), Err(HistogramError::MixedSchemas));
        // Different custom bounds: reconciled to the shared ones.
        let mut c = h(-53, &[(0, 1.0), (1, 2.0), (2, 3.0)]);
        c.custom_values = vec![1.0, 2.0];
        let mut d = h(-53, &[(0, 10.0), (1, 20.0)]);
        d.custom_values = vec![2.0];
        c.add(&d).unwrap();
        assert_eq!(c.custom_values, vec![2.0]);
        assert_eq!(c.positive, vec![(0, 13.0), (1, 23.0)]);
    }

    #[test]
    fn zero_bucket_reconciliation() {
        let mut a = Histogram { zero_threshold: 0.5, zero_count: 1.0, count: 2.0, ..h(0, &[(1, 1.0)]) };
        let b = Histogram { zero_threshold: 0.01, zero_count: 1.0, count: 3.0, ..h(0, &[(-1, 1.0), (1, 1.0)]) };
        a.add(&b).unwrap();
        // b's bucket (0.25, 0.5] falls into a's zero bucket.
        assert_eq!(a.zero_count, 3.0);
        assert_eq!(a.positive, vec![(1, 2.0)]);
        assert_eq!(a.to_prom_string(), "{count:5, sum:0, [-0.5,0.5]:3, (1,2]:2}");
    }

    #[test]
    fn go_g_format() {
        assert_eq!(go_g(20.0), "20");
        assert_eq!(go_g(0.001), "0.001");
        assert_eq!(go_g(1e-5), "1e-05");
        assert_eq!(go_g(1e6), "1e+06");
        assert_eq!(go_g(123456.0), "123456");
        assert_eq!(go_g(-2.5), "-2.5");
    }
}
