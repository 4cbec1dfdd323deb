//! PromQL over native histograms: the `histogram_*` functions, rates and
//! deltas of histogram counters, and the range functions Prometheus
//! defines for histograms. Follows Prometheus's `promql/functions.go` and
//! `promql/quantile.go`.

use cairn_wire::Histogram;
use cairn_wire::histogram::ResetHint;

use super::eval::Window;
use super::functions::{is_st_reset, st_overlap_at, st_reset_at};

/// Sum (or mean, with `avg`) of histograms, with what the additions
/// reported (counter-reset collisions, reconciled custom bounds); `None`
/// when two of them cannot be added (exponential and custom buckets).
/// Count and sum are Kahan-compensated; a mean whose sum overflows is
/// computed incrementally instead, as Prometheus does.
pub(crate) fn sum_histograms_noted<'a>(
    hs: impl Iterator<Item = &'a Histogram> + Clone,
    avg: bool,
) -> Option<(Histogram, cairn_wire::histogram::AddOutcome)> {
    use super::functions::kahan_inc;
    let mut noted = cairn_wire::histogram::AddOutcome::default();
    let mut acc: Option<Histogram> = None;
    let (mut c_sum, mut c_count) = (0.0, 0.0);
    let mut n = 0.0;
    // Prometheus warns of conflicting counter resets when the inputs hold
    // both a `Reset` and a `NotReset` hint, whatever else they hold.
    let (mut reset_seen, mut not_reset_seen) = (false, false);
    for h in hs.clone() {
        n += 1.0;
        reset_seen |= h.reset_hint == ResetHint::Reset;
        not_reset_seen |= h.reset_hint == ResetHint::NotReset;
        match &mut acc {
            None => acc = Some(h.clone()),
            Some(a) => {
                let (s0, n0) = (a.sum, a.count);
                let o = a.add(h).ok()?;
                noted.reconciled |= o.reconciled;
                (a.sum, c_sum) = kahan_inc(h.sum, s0, c_sum);
                (a.count, c_count) = kahan_inc(h.count, n0, c_count);
            }
        }
    }
    noted.reset_collision = reset_seen && not_reset_seen;
    let mut a = acc?;
    if c_sum.is_finite() {
        a.sum += c_sum;
    }
    if c_count.is_finite() {
        a.count += c_count;
    }
    if avg && n > 1.0 {
        let overflow = a.count.is_infinite() || a.sum.is_infinite() || a.zero_count.is_infinite();
        if overflow && hs.clone().all(|h| h.count.is_finite() && h.sum.is_finite()) {
            a = incremental_mean(hs)?;
        } else {
            a.div(n);
        }
    }
    a.compact();
    Some((a, noted))
}

/// Prometheus's `avg_over_time` mean of histograms whose plain sum
/// overflows: Kahan-compensated sums (of `sum` and `count`) until the
/// running sum would overflow, then an incremental mean
/// `m_k = m_{k-1}·(k−1)/k + x_k/k`, still compensated.
fn incremental_mean<'a>(hs: impl Iterator<Item = &'a Histogram>) -> Option<Histogram> {
    use super::functions::kahan_inc;
    let overflows = |h: &Histogram| {
        !(h.count.is_finite() && h.sum.is_finite() && h.zero_count.is_finite())
            || h.positive.iter().chain(&h.negative).any(|b| b.1.is_infinite())
    };
    let mut it = hs;
    let mut sum = it.next()?.clone();
    let mut mean: Option<Histogram> = None;
    let (mut c_sum, mut c_count) = (0.0, 0.0);
    let mut count = 1.0;
    for h in it {
        count += 1.0;
        if mean.is_none() {
            let mut next = sum.clone();
            next.add(h).ok()?;
            let (s, cs) = kahan_inc(h.sum, sum.sum, c_sum);
            let (n, cn) = kahan_inc(h.count, sum.count, c_count);
            (next.sum, next.count) = (s, n);
            if !overflows(&next) {
                (sum, c_sum, c_count) = (next, cs, cn);
                continue;
            }
            let mut m = sum.clone();
            m.div(count - 1.0);
            c_sum /= count - 1.0;
            c_count /= count - 1.0;
            mean = Some(m);
        }
        let m = mean.as_mut()?;
        let q = (count - 1.0) / count;
        let mut to_add = h.clone();
        to_add.div(count);
        m.mul(q);
        let (s0, n0) = (m.sum, m.count);
        m.add(&to_add).ok()?;
        (m.sum, c_sum) = kahan_inc(to_add.sum, s0, q * c_sum);
        (m.count, c_count) = kahan_inc(to_add.count, n0, q * c_count);
    }
    Some(match mean {
        Some(mut m) => {
            m.sum += c_sum;
            m.count += c_count;
            m
        }
        None => {
            sum.div(count);
            sum.sum += c_sum / count;
            sum.count += c_count / count;
            sum
        }
    })
}

/// Prometheus's head chunk range: a chunk never spans a multiple of it.
pub(crate) const CHUNK_RANGE_MS: i64 = 2 * 3600 * 1000;

/// The counter-reset hints Prometheus's TSDB gives histograms read back:
/// it cuts a chunk at a series' first histogram, after a float, at a
/// counter reset, at a layout change and at each multiple of
/// [`CHUNK_RANGE_MS`], reads the first sample of a chunk back as `Unknown`
/// (`Reset` only where the writer declared it), the others as `NotReset`;
/// gauge histograms stay `Gauge`. Emulated over a selected series (floats
/// and stale markers break the chain); `seed` is the histogram sample
/// just before the selected ones, if the series' previous sample is one.
pub(crate) fn assign_reset_hints(
    floats: &[(i64, f64)],
    hists: &mut [(i64, Histogram)],
    seed: Option<&(i64, Histogram)>,
) {
    let mut fi = 0;
    // The previous histogram of the chain: `usize::MAX` for the seed.
    let mut prev: Option<usize> = seed.map(|_| usize::MAX);
    for i in 0..hists.len() {
        let t = hists[i].0;
        // A float sample since the previous histogram starts a new chunk.
        if floats_before(floats, &mut fi, t) {
            prev = None;
        }
        if hists[i].1.is_stale() {
            prev = None;
            continue;
        }
        let hint = hists[i].1.reset_hint;
        if hint == ResetHint::Gauge {
            prev = Some(i);
            continue;
        }
        let before = match prev {
            Some(usize::MAX) => seed,
            Some(p) => Some(&hists[p]),
            None => None,
        };
        // The first sample of a chunk reads back as unknown (a declared
        // reset stays one).
        let first_of_chunk = if hint == ResetHint::Reset { ResetHint::Reset } else { ResetHint::Unknown };
        let new_hint = match before {
            Some((bt, _)) if bt.div_euclid(CHUNK_RANGE_MS) != t.div_euclid(CHUNK_RANGE_MS) => first_of_chunk,
            None => first_of_chunk,
            Some((_, before)) => {
                let cur = &hists[i].1;
                if before.reset_hint == ResetHint::Gauge {
                    ResetHint::Unknown
                } else if cur.detect_reset(before) {
                    // A reset cuts a new chunk.
                    first_of_chunk
                } else if before.schema != cur.schema
                    || before.zero_threshold != cur.zero_threshold
                    || !cairn_wire::histogram::floats_match(&before.custom_values, &cur.custom_values)
                {
                    ResetHint::Unknown
                } else {
                    ResetHint::NotReset
                }
            }
        };
        hists[i].1.reset_hint = new_hint;
        prev = Some(i);
    }
}

/// Moves `fi` past the floats before `t`; true when there were any (a
/// float between two histograms breaks their chain).
fn floats_before(floats: &[(i64, f64)], fi: &mut usize, t: i64) -> bool {
    let from = *fi;
    while *fi < floats.len() && floats[*fi].0 < t {
        *fi += 1;
    }
    *fi > from
}

/// Prometheus's `HistogramStatsIterator` hints: an `Unknown` hint becomes
/// `Reset` or `NotReset` by comparing with the previous histogram read
/// (floats and stale markers break the chain).
pub(crate) fn resolve_unknown_hints(floats: &[(i64, f64)], hists: &mut [(i64, Histogram)]) {
    let mut fi = 0;
    let mut prev: Option<usize> = None;
    for i in 0..hists.len() {
        if floats_before(floats, &mut fi, hists[i].0) {
            prev = None;
        }
        if hists[i].1.is_stale() {
            prev = None;
            continue;
        }
        if hists[i].1.reset_hint == ResetHint::Unknown
            && let Some(p) = prev
        {
            let reset = hists[i].1.detect_reset(&hists[p].1);
            hists[i].1.reset_hint = if reset { ResetHint::Reset } else { ResetHint::NotReset };
        }
        prev = Some(i);
    }
}

/// `histogram_quantile` of a native histogram.
#[cfg(test)]
pub(crate) fn quantile(q: f64, h: &Histogram) -> f64 {
    quantile_noted(q, h).0
}

/// What Prometheus notes about NaN observations (a NaN sum and fewer
/// observations in buckets than the count) in `histogram_quantile` and
/// `histogram_fraction`: the start of the info annotation's text.
pub(crate) const NAN_RESULT: &str = "input to histogram_quantile has NaN observations, result is NaN";
pub(crate) const NAN_SKEW: &str = "input to histogram_quantile has NaN observations, result is skewed higher";
pub(crate) const NAN_FRACTION: &str =
    "input to histogram_fraction has NaN observations, which are excluded from all fractions";

/// Total count of `h`'s buckets (the observations that are not NaN).
fn bucket_total(h: &Histogram) -> f64 {
    h.buckets().iter().map(|b| b.count).sum()
}

/// [`quantile`] with Prometheus's note on NaN observations, if any.
pub(crate) fn quantile_noted(q: f64, h: &Histogram) -> (f64, Option<&'static str>) {
    match quantile_raw(q, h) {
        // The rank lies beyond every bucket: among the NaN observations.
        (_, Some(true)) if h.sum.is_nan() => (f64::NAN, Some(NAN_RESULT)),
        (v, Some(false)) if h.sum.is_nan() && bucket_total(h) < h.count => (v, Some(NAN_SKEW)),
        (v, _) => (v, None),
    }
}

/// The quantile, and where it came from: `None` for the early answers
/// (a quantile outside [0, 1], an empty histogram, an unbounded custom
/// bucket), `Some(true)` when the rank fell past every bucket (the value
/// is then the highest bucket's upper bound), `Some(false)` when
/// interpolated within a bucket.
fn quantile_raw(q: f64, h: &Histogram) -> (f64, Option<bool>) {
    if q < 0.0 {
        return (f64::NEG_INFINITY, None);
    }
    if q > 1.0 {
        return (f64::INFINITY, None);
    }
    if h.count == 0.0 || q.is_nan() {
        return (f64::NAN, None);
    }
    let buckets = h.buckets();
    let forward = h.sum.is_nan() || q < 0.5;
    let mut rank = if forward { q * h.count } else { (1.0 - q) * h.count };
    let mut count = 0.0;
    let mut bucket = None;
    let iter: Box<dyn Iterator<Item = &cairn_wire::histogram::Bucket>> =
        if forward { Box::new(buckets.iter()) } else { Box::new(buckets.iter().rev()) };
    for b in iter {
        if b.count == 0.0 {
            continue;
        }
        count += b.count;
        bucket = Some(*b);
        if count >= rank {
            break;
        }
    }
    // No bucket at all: every observation is NaN (or the count is wrong).
    let Some(mut b) = bucket else { return (f64::NAN, Some(true)) };
    let custom = h.uses_custom_buckets();
    if !custom && b.lower < 0.0 && b.upper > 0.0 {
        let has_neg = h.negative.iter().any(|x| x.1 != 0.0) || !h.negative.is_empty();
        let has_pos = !h.positive.is_empty();
        if !has_neg && has_pos {
            b.lower = 0.0;
        } else if !has_pos && has_neg {
            b.upper = 0.0;
        }
    } else if custom {
        if b.lower == f64::NEG_INFINITY {
            if b.upper <= 0.0 {
                return (b.upper, None);
            }
            b.lower = 0.0;
        } else if b.upper == f64::INFINITY {
            return (b.lower, None);
        }
    }
    if count > h.count {
        count = h.count;
    }
    if count < rank {
        return (b.upper, Some(true));
    }
    if forward {
        rank -= count - b.count;
    } else {
        rank = count - rank;
    }
    let fraction = rank / b.count;
    if custom || (b.lower <= 0.0 && b.upper >= 0.0) {
        return (b.lower + (b.upper - b.lower) * fraction, Some(false));
    }
    let log_lower = b.lower.abs().log2();
    let log_upper = b.upper.abs().log2();
    if b.lower > 0.0 {
        return ((log_lower + (log_upper - log_lower) * fraction).exp2(), Some(false));
    }
    (-((log_upper + (log_lower - log_upper) * (1.0 - fraction)).exp2()), Some(false))
}

/// `histogram_fraction(lower, upper, h)`.
#[cfg(test)]
pub(crate) fn fraction(lower: f64, upper: f64, h: &Histogram) -> f64 {
    fraction_noted(lower, upper, h).0
}

/// [`fraction`] with Prometheus's note on NaN observations, if any: they
/// count in the denominator but in no fraction.
pub(crate) fn fraction_noted(lower: f64, upper: f64, h: &Histogram) -> (f64, Option<&'static str>) {
    if h.count == 0.0 || lower.is_nan() || upper.is_nan() {
        return (f64::NAN, None);
    }
    if lower >= upper {
        return (0.0, None);
    }
    // With a NaN sum the ranks are capped at the observations in buckets.
    let mut cap = h.count;
    let mut note = None;
    if h.sum.is_nan() {
        let total = bucket_total(h);
        if total < h.count {
            cap = total;
            note = Some(NAN_FRACTION);
        }
    }
    let custom = h.uses_custom_buckets();
    let (mut rank, mut lower_rank, mut upper_rank) = (0.0, 0.0, 0.0);
    let (mut lower_set, mut upper_set) = (false, false);
    for mut b in h.buckets() {
        let mut zero_bucket = false;
        if !custom && b.lower <= 0.0 && b.upper >= 0.0 {
            zero_bucket = true;
            if h.negative.is_empty() && !h.positive.is_empty() {
                b.lower = 0.0;
            } else if h.positive.is_empty() && !h.negative.is_empty() {
                b.upper = 0.0;
            }
        }
        if custom && b.lower == f64::NEG_INFINITY {
            // The first custom bucket: observations are assumed ≥ 0 when
            // its upper bound is positive (as histogram_quantile does).
            if b.upper > 0.0 {
                b.lower = 0.0;
            }
        }
        let linear = |v: f64| rank + b.count * (v - b.lower) / (b.upper - b.lower);
        let exponential = |v: f64| {
            let (ll, lu, lv) = (b.lower.abs().log2(), b.upper.abs().log2(), v.abs().log2());
            let f = if v > 0.0 { (lv - ll) / (lu - ll) } else { 1.0 - (lv - lu) / (ll - lu) };
            rank + b.count * f
        };
        let interp = |v: f64| {
            if custom || zero_bucket {
                if b.upper == f64::INFINITY || b.lower == f64::NEG_INFINITY {
                    // No interpolation into an unbounded bucket.
                    return if v < b.upper && b.lower == f64::NEG_INFINITY { rank } else { rank + b.count };
                }
                linear(v)
            } else {
                exponential(v)
            }
        };
        if !lower_set && b.lower >= lower {
            lower_rank = rank;
            lower_set = true;
        }
        if !upper_set && b.lower >= upper {
            upper_rank = rank;
            upper_set = true;
        }
        if lower_set && upper_set {
            break;
        }
        if !lower_set && b.lower < lower && b.upper > lower {
            lower_rank = interp(lower);
            lower_set = true;
        }
        if !upper_set && b.lower < upper && b.upper > upper {
            upper_rank = interp(upper);
            upper_set = true;
        }
        if lower_set && upper_set {
            break;
        }
        rank += b.count;
    }
    if !lower_set || lower_rank > cap {
        lower_rank = cap;
    }
    if !upper_set || upper_rank > cap {
        upper_rank = cap;
    }
    ((upper_rank - lower_rank) / h.count, note)
}

/// `histogram_stdvar` (the square of `histogram_stddev`).
pub(crate) fn stdvar(h: &Histogram) -> f64 {
    let mean = h.sum / h.count;
    let custom = h.uses_custom_buckets();
    let (mut var, mut c) = (0.0, 0.0);
    for b in h.buckets() {
        if b.count == 0.0 {
            continue;
        }
        let val = if custom {
            (b.upper + b.lower) / 2.0
        } else if b.lower <= 0.0 && b.upper >= 0.0 {
            0.0
        } else {
            let v = (b.upper * b.lower).sqrt();
            if b.upper < 0.0 { -v } else { v }
        };
        let delta = val - mean;
        (var, c) = super::functions::kahan_inc(b.count * delta * delta, var, c);
    }
    (var + c) / h.count
}

/// Range functions with a meaning for histogram samples (see
/// [`range_function`]); the others read a window's floats only.
pub(crate) const HIST_AWARE: [&str; 15] = [
    "rate",
    "increase",
    "delta",
    "irate",
    "idelta",
    "sum_over_time",
    "avg_over_time",
    "count_over_time",
    "present_over_time",
    "last_over_time",
    "first_over_time",
    "ts_of_last_over_time",
    "ts_of_first_over_time",
    "resets",
    "changes",
];

/// A value of a range function over a window holding histograms.
pub(crate) enum HOut {
    Float(f64),
    Hist(Histogram),
}

/// What combining a window's histograms ran into, for the annotations
/// Prometheus raises.
#[derive(Default, Clone, Copy)]
pub(crate) struct RateNotes {
    /// Exponential and custom buckets mixed: no result.
    pub schema_mix: bool,
    /// Different custom bounds were reconciled by a subtraction.
    pub reconciled_sub: bool,
    /// Different custom bounds were reconciled by an addition (a counter
    /// reset in a rate).
    pub reconciled_add: bool,
    /// Different custom bounds were reconciled summing a window.
    pub reconciled_agg: bool,
    /// A delta's boundary histograms are not gauges.
    pub not_gauge: bool,
    /// Summed histograms held both `Reset` and `NotReset` hints.
    pub reset_collision: bool,
    /// A start timestamp overlapped the previous sample's interval.
    pub st_overlap: bool,
}

/// Prometheus's `histogramRate`: the increase of histogram counters over
/// `points` (≥ 2), with counter resets; `None` when the histograms cannot
/// be combined.
fn histogram_rate(
    points: &[(i64, Histogram)],
    sts: &[i64],
    is_counter: bool,
    notes: &mut RateNotes,
) -> Option<Histogram> {
    let mut prev = points.first()?.1.clone();
    let last = &points.last()?.1;
    if is_counter && points.len() > 1 && (st_reset_at(points, sts, 1) || points[1].1.detect_reset(&prev)) {
        let second = &points[1].1;
        prev = Histogram { schema: second.schema, custom_values: second.custom_values.clone(), ..Histogram::default() };
    }
    let custom = prev.uses_custom_buckets();
    if last.uses_custom_buckets() != custom {
        notes.schema_mix = true;
        return None;
    }
    let mut min_schema = prev.schema.min(last.schema);
    for (_, h) in &points[1..points.len() - 1] {
        if !is_counter {
            continue;
        }
        min_schema = min_schema.min(h.schema);
        if h.uses_custom_buckets() != custom {
            notes.schema_mix = true;
            return None;
        }
    }
    let mut h = last.to_schema(min_schema);
    match h.sub(&prev) {
        Ok(o) => notes.reconciled_sub |= o.reconciled,
        Err(_) => {
            notes.schema_mix = true;
            return None;
        }
    }
    if is_counter {
        let mut p = &prev;
        for (i, (_, cur)) in points.iter().enumerate().skip(1) {
            notes.st_overlap |= st_overlap_at(points, sts, i);
            if st_reset_at(points, sts, i) || cur.detect_reset(p) {
                notes.reconciled_add |= h.add(p).ok()?.reconciled;
            }
            p = cur;
        }
    }
    h.reset_hint = ResetHint::Gauge;
    h.compact();
    Some(h)
}

/// rate / increase / delta over a window of histograms (Prometheus's
/// `extrapolatedRate` histogram branch), noting what combining the
/// histograms ran into.
pub(crate) fn extrapolated_rate_noted(
    p: &[(i64, Histogram)],
    sts: &[i64],
    w: Window,
    is_counter: bool,
    is_rate: bool,
    notes: &mut RateNotes,
) -> Option<Histogram> {
    if p.is_empty() || (p.len() < 2 && sts.is_empty()) {
        return None;
    }
    let mut h = if p.len() > 1 { Some(histogram_rate(p, sts, is_counter, notes)?) } else { None };
    let range_start = w.end - w.range;
    let (first_t, last_t) = (p[0].0, p[p.len() - 1].0);
    let mut to_start = (first_t - range_start) as f64 / 1000.0;
    let to_end = (w.end - last_t) as f64 / 1000.0;
    let mut sampled = (last_t - first_t) as f64 / 1000.0;
    let avg_between = if p.len() > 1 { sampled / (p.len() - 1) as f64 } else { 0.0 };
    let threshold = avg_between * 1.1;
    let st0 = sts.first().copied().unwrap_or(0);
    if is_counter && st0 != 0 && st0 > range_start && st0 < first_t {
        // A zero at the first sample's start, inside the range (see
        // `functions::extrapolated_rate_st`).
        to_start = 0.0;
        sampled = (last_t - st0) as f64 / 1000.0;
        match &mut h {
            None => h = Some(p[0].1.clone()),
            Some(h) => match h.add(&p[0].1) {
                Ok(o) => notes.reconciled_add |= o.reconciled,
                Err(_) => {
                    notes.schema_mix = true;
                    return None;
                }
            },
        }
    } else {
        let hh = h.as_ref()?;
        if to_start >= threshold {
            to_start = avg_between / 2.0;
        }
        if is_counter && hh.count > 0.0 && p[0].1.count >= 0.0 {
            let to_zero = sampled * (p[0].1.count / hh.count);
            if to_zero < to_start {
                to_start = to_zero;
            }
        }
    }
    let mut h = h?;
    let to_end = if to_end >= threshold { avg_between / 2.0 } else { to_end };
    let mut factor = if sampled != 0.0 { (sampled + to_start + to_end) / sampled } else { 1.0 };
    if is_rate {
        factor /= w.range as f64 / 1000.0;
    }
    h.mul(factor);
    Some(h)
}

/// Prometheus's `interpolateHistograms`: the histogram at `t` between two
/// samples, linearly; across a counter reset (with `is_counter`) the
/// counter is taken to restart from zero at the first sample. `None` when
/// the two cannot be combined (exponential and custom buckets).
pub(crate) fn interpolate(
    a: &(i64, Histogram),
    b: &(i64, Histogram),
    t: i64,
    is_counter: bool,
    notes: &mut RateNotes,
) -> Option<Histogram> {
    if t == a.0 {
        return Some(a.1.clone());
    }
    if t == b.0 {
        return Some(b.1.clone());
    }
    let fraction = (t - a.0) as f64 / (b.0 - a.0) as f64;
    let mut r = b.1.clone();
    if is_counter && b.1.detect_reset(&a.1) {
        r.mul(fraction);
        return Some(r);
    }
    let Ok(o) = r.sub(&a.1) else {
        notes.schema_mix = true;
        return None;
    };
    notes.reconciled_sub |= o.reconciled;
    r.mul(fraction);
    let Ok(o) = r.add(&a.1) else {
        notes.schema_mix = true;
        return None;
    };
    notes.reconciled_add |= o.reconciled;
    Some(r)
}

/// Prometheus's `extendedHistogramRate`: `rate`/`increase`/`delta` over an
/// `anchored` or `smoothed` range of histograms, whose points include the
/// sample before the range start (and, smoothed, the one after its end).
pub(crate) fn extended_rate(
    h: &[(i64, Histogram)],
    w: Window,
    smoothed: bool,
    is_counter: bool,
    is_rate: bool,
    notes: &mut RateNotes,
) -> Option<Histogram> {
    if h.is_empty() {
        return None;
    }
    let (rs, re) = (w.end - w.range, w.end);
    let mut last = h.len() - 1;
    let first = h[..last].partition_point(|x| x.0 <= rs).saturating_sub(1);
    if smoothed {
        last = h[..last].partition_point(|x| x.0 < re);
    }
    if h[last].0 <= rs || (smoothed && h[first].0 > re) {
        return None;
    }
    let custom = h[first].1.uses_custom_buckets();
    if h[first..=last].iter().any(|p| p.1.uses_custom_buckets() != custom) {
        notes.schema_mix = true;
        return None;
    }
    let left = if smoothed && h[first].0 < rs {
        interpolate(&h[first], &h[first + 1], rs, is_counter, notes)?
    } else {
        h[first].1.clone()
    };
    let right = if smoothed && last > 0 && h[last].0 > re {
        interpolate(&h[last - 1], &h[last], re, is_counter, notes)?
    } else {
        h[last].1.clone()
    };
    if !is_counter && (left.reset_hint != ResetHint::Gauge || right.reset_hint != ResetHint::Gauge) {
        notes.not_gauge = true;
    }
    let mut result = right.clone();
    match result.sub(&left) {
        Ok(o) => notes.reconciled_sub |= o.reconciled,
        Err(_) => {
            notes.schema_mix = true;
            return None;
        }
    }
    if is_counter {
        // Prometheus's `correctForCounterResetsHistogram`: the samples
        // strictly between the two boundary samples, then `right`.
        let mut from = first + 1;
        let mut prev: &Histogram = &left;
        if smoothed && h[first].0 < rs && h[first + 1].1.detect_reset(&h[first].1) {
            // The left interpolation already spans that reset.
            prev = &h[first + 1].1;
            from += 1;
        }
        if from <= last {
            let mut correction: Option<Histogram> = None;
            let mut add = |c: &Histogram, notes: &mut RateNotes| -> Option<()> {
                match &mut correction {
                    None => correction = Some(c.clone()),
                    Some(acc) => match acc.add(c) {
                        Ok(o) => notes.reconciled_add |= o.reconciled,
                        Err(_) => {
                            notes.schema_mix = true;
                            return None;
                        }
                    },
                }
                Some(())
            };
            for p in &h[from..last] {
                if p.1.detect_reset(prev) {
                    add(prev, notes)?;
                }
                prev = &p.1;
            }
            if right.detect_reset(prev) {
                add(prev, notes)?;
            }
            if let Some(c) = correction {
                match result.add(&c) {
                    Ok(o) => notes.reconciled_add |= o.reconciled,
                    Err(_) => {
                        notes.schema_mix = true;
                        return None;
                    }
                }
            }
        }
    }
    if is_rate {
        result.div(w.range as f64 / 1000.0);
    }
    result.reset_hint = ResetHint::Gauge;
    result.compact();
    Some(result)
}

/// Prometheus's trim operators: `h </ x` keeps the observations at or
/// below `x`, `h >/ x` those above. A bucket the cut falls into keeps the
/// share of its count on the kept side: interpolated linearly for custom
/// buckets and the zero bucket, logarithmically for exponential buckets;
/// an unbounded custom bucket keeps all of its count when the kept side
/// is the unbounded one, none otherwise. A histogram no observation of
/// which is cut off is returned as it is; otherwise its sum is estimated
/// from the kept buckets (the midpoint of a custom or zero bucket's kept
/// bounds, the finite one of an unbounded bucket, the geometric mean of an
/// exponential bucket's).
pub(crate) fn trim(h: &Histogram, x: f64, upper: bool) -> Histogram {
    // Kept count and representative value of a bucket (lower, upper].
    let cut = |l: f64, u: f64, c: f64, log: bool| -> (f64, f64) {
        let keep_all = if upper { u <= x } else { l >= x };
        let keep_none = if upper { l >= x } else { u <= x };
        if keep_none || c == 0.0 {
            return (0.0, 0.0);
        }
        let (nl, nu) = if keep_all {
            (l, u)
        } else if upper {
            (l, x)
        } else {
            (x, u)
        };
        let rep = |a: f64, b: f64| {
            if log {
                let g = (a * b).sqrt();
                if b <= 0.0 { -g } else { g }
            } else if a == f64::NEG_INFINITY && b == f64::INFINITY {
                0.0
            } else if a == f64::NEG_INFINITY {
                b
            } else if b == f64::INFINITY {
                a
            } else {
                (a + b) / 2.0
            }
        };
        if keep_all {
            return (c, rep(nl, nu));
        }
        if !log && (l == f64::NEG_INFINITY || u == f64::INFINITY) {
            // An unbounded bucket: all of it on the unbounded side.
            let kept_unbounded = if upper {
                l == f64::NEG_INFINITY && u != f64::INFINITY
            } else {
                u == f64::INFINITY && l != f64::NEG_INFINITY
            };
            return if kept_unbounded { (c, rep(nl, nu)) } else { (0.0, 0.0) };
        }
        let frac = if log {
            let (la, lb) = (l.abs().log2(), u.abs().log2());
            (nu.abs().log2() - nl.abs().log2()) / (lb - la)
        } else {
            (nu - nl) / (u - l)
        };
        (c * frac, rep(nl, nu))
    };
    let mut out = Histogram {
        schema: h.schema,
        zero_threshold: h.zero_threshold,
        custom_values: h.custom_values.clone(),
        reset_hint: h.reset_hint,
        ..Histogram::default()
    };
    let (mut count, mut sum) = (0.0, 0.0);
    let mut changed = false;
    let mut take = |l: f64, u: f64, c: f64, log: bool| -> f64 {
        let (k, r) = cut(l, u, c, log);
        if c != 0.0 && (if upper { u > x } else { l < x }) {
            changed = true;
        }
        if k != 0.0 {
            count += k;
            sum += k * r;
        }
        k
    };
    if h.uses_custom_buckets() {
        let cv = &h.custom_values;
        for &(i, c) in &h.positive {
            let i_us = i.max(0) as usize;
            let u = cv.get(i_us).copied().unwrap_or(f64::INFINITY);
            let l = if i_us == 0 {
                // The first bucket is taken to hold no negative
                // observations when its upper bound is positive and finite
                // (as histogram_quantile assumes) — except, as in
                // Prometheus, for a lower trim below zero.
                if u > 0.0 && u.is_finite() && (upper || x >= 0.0) { 0.0 } else { f64::NEG_INFINITY }
            } else {
                cv.get(i_us - 1).copied().unwrap_or(f64::INFINITY)
            };
            let k = take(l, u, c, false);
            if k != 0.0 {
                out.positive.push((i, k));
            }
        }
    } else {
        let bound = |i: i32| cairn_wire::histogram::exponential_bound(i, h.schema);
        for &(i, c) in &h.negative {
            // Absolute values in (bound(i-1), bound(i)].
            let k = take(-bound(i), -bound(i - 1), c, true);
            if k != 0.0 {
                out.negative.push((i, k));
            }
        }
        if h.zero_count != 0.0 {
            let w = h.zero_threshold;
            let (mut l, mut u) = (-w, w);
            if h.negative.is_empty() && !h.positive.is_empty() {
                l = 0.0;
            } else if h.positive.is_empty() && !h.negative.is_empty() {
                u = 0.0;
            }
            out.zero_count = take(l, u, h.zero_count, false);
        }
        for &(i, c) in &h.positive {
            let k = take(bound(i - 1), bound(i), c, true);
            if k != 0.0 {
                out.positive.push((i, k));
            }
        }
    }
    if !changed {
        return h.clone();
    }
    out.count = count;
    out.sum = sum;
    out
}

/// irate / idelta over the last two samples, both histograms.
pub(crate) fn instant_value(
    a: &(i64, Histogram),
    b: &(i64, Histogram),
    st_reset: bool,
    is_rate: bool,
) -> Option<Histogram> {
    let mut h = b.1.clone();
    if !is_rate || !(st_reset || b.1.detect_reset(&a.1)) {
        h.sub(&a.1).ok()?;
    }
    h.reset_hint = ResetHint::Gauge;
    h.compact();
    if is_rate {
        let dt = (b.0 - a.0) as f64 / 1000.0;
        h.div(dt);
    }
    Some(h)
}

/// Warnings for a range function over a window holding histograms, as
/// Prometheus raises them.
pub(crate) fn annotate_range(
    ctx: &super::eval::Ctx<'_>,
    name: &str,
    floats: &[(i64, f64)],
    hists: &[(i64, Histogram)],
    metric: &str,
) {
    let gauge = |h: &Histogram| h.reset_hint == ResetHint::Gauge;
    let (first, last) = (&hists[0].1, &hists[hists.len() - 1].1);
    match name {
        "rate" | "increase" | "delta" | "sum_over_time" | "avg_over_time" if !floats.is_empty() => {
            ctx.warn(format!("encountered a mix of histograms and floats for metric name \"{metric}\""));
            return;
        }
        _ => {}
    }
    match name {
        "rate" | "increase" if hists.len() > 1 && hists.iter().any(|p| gauge(&p.1)) => {
            ctx.warn(format!("this native histogram metric is not a counter: \"{metric}\""))
        }
        "delta" if hists.len() > 1 && (!gauge(first) || !gauge(last)) => {
            ctx.warn(format!("this native histogram metric is not a gauge: \"{metric}\""))
        }
        "irate" | "idelta" if hists.len() > 1 && floats.last().is_none_or(|f| f.0 < hists[hists.len() - 2].0) => {
            let prev = &hists[hists.len() - 2].1;
            if name == "irate" && (gauge(prev) || gauge(last)) {
                ctx.warn(format!("this native histogram metric is not a counter: \"{metric}\""));
            }
            if name == "idelta" && (!gauge(prev) || !gauge(last)) {
                ctx.warn(format!("this native histogram metric is not a gauge: \"{metric}\""));
            }
        }
        _ => {}
    }
    if matches!(name, "irate" | "idelta") {
        // The last two samples: a float and a histogram give nothing; two
        // histograms are subtracted unless irate sees a counter reset.
        let all: Vec<_> = merged(floats, hists).collect();
        if let [.., (ta, a), (tb, b)] = all.as_slice()
            && ta != tb
        {
            match (a, b) {
                (Ok(a), Ok(b)) if name == "idelta" || !b.detect_reset(a) => match (*b).clone().sub(a) {
                    Err(_) => ctx.warn(format!(
                        "vector contains a mix of histograms with exponential and custom buckets schemas for metric name \"{metric}\""
                    )),
                    Ok(o) if o.reconciled => {
                        ctx.info("mismatched custom buckets were reconciled during subtraction".into())
                    }
                    Ok(_) => {}
                },
                (Ok(_), Err(_)) | (Err(_), Ok(_)) => {
                    ctx.warn(format!("encountered a mix of histograms and floats for metric name \"{metric}\""))
                }
                _ => {}
            }
        }
    }
    let _ = first;
}

/// Float and histogram samples of a window merged by time: `Err(f)` for a
/// float, `Ok(h)` for a histogram.
pub(crate) fn merged<'a>(
    floats: &'a [(i64, f64)],
    hists: &'a [(i64, Histogram)],
) -> impl Iterator<Item = (i64, Result<&'a Histogram, f64>)> + 'a {
    let (mut i, mut j) = (0, 0);
    std::iter::from_fn(move || {
        let f = floats.get(i);
        let h = hists.get(j);
        match (f, h) {
            (Some(&(ft, fv)), Some((ht, _))) if ft < *ht => {
                i += 1;
                Some((ft, Err(fv)))
            }
            (Some(&(ft, fv)), None) => {
                i += 1;
                Some((ft, Err(fv)))
            }
            (_, Some((ht, hv))) => {
                j += 1;
                Some((*ht, Ok(hv)))
            }
            (None, None) => None,
        }
    })
}

/// Range functions over a window holding at least one histogram; `None`
/// when the function gives no value for it (floats mixed in where the
/// function needs one kind, or a function of floats only).
pub(crate) fn range_function(
    name: &str,
    floats: &[(i64, f64)],
    hists: &[(i64, Histogram)],
    hsts: &[i64],
    w: Window,
    ext: Option<super::eval::Ext>,
    notes: &mut RateNotes,
) -> Option<HOut> {
    let mixed = !floats.is_empty();
    match name {
        "rate" | "increase" | "delta" if ext.is_some() => {
            if mixed {
                return None;
            }
            let smoothed = ext == Some(super::eval::Ext::Smoothed);
            extended_rate(hists, w, smoothed, name != "delta", name == "rate", notes).map(HOut::Hist)
        }
        "rate" | "increase" | "delta" => {
            if mixed {
                return None;
            }
            let h = extrapolated_rate_noted(hists, hsts, w, name != "delta", name == "rate", notes)?;
            Some(HOut::Hist(h))
        }
        "irate" | "idelta" => {
            let all: Vec<_> = merged(floats, hists).collect();
            let n = all.len();
            if n < 2 {
                return None;
            }
            match (&all[n - 2], &all[n - 1]) {
                ((ta, Ok(a)), (tb, Ok(b))) => {
                    // Both are the last two histograms: their start timestamps.
                    let st_reset = st_reset_at(hists, hsts, hists.len() - 1);
                    instant_value(&(*ta, (*a).clone()), &(*tb, (*b).clone()), st_reset, name == "irate").map(HOut::Hist)
                }
                _ => None,
            }
        }
        "sum_over_time" | "avg_over_time" => {
            if mixed {
                return None;
            }
            match sum_histograms_noted(hists.iter().map(|p| &p.1), name == "avg_over_time") {
                Some((h, o)) => {
                    notes.reconciled_agg |= o.reconciled;
                    notes.reset_collision |= o.reset_collision;
                    Some(HOut::Hist(h))
                }
                None => {
                    notes.schema_mix = true;
                    None
                }
            }
        }
        "count_over_time" => Some(HOut::Float((floats.len() + hists.len()) as f64)),
        "present_over_time" => Some(HOut::Float(1.0)),
        "last_over_time" => match merged(floats, hists).last()? {
            (_, Ok(h)) => Some(HOut::Hist(h.clone())),
            (_, Err(f)) => Some(HOut::Float(f)),
        },
        "first_over_time" => match merged(floats, hists).next()? {
            (_, Ok(h)) => Some(HOut::Hist(h.clone())),
            (_, Err(f)) => Some(HOut::Float(f)),
        },
        "ts_of_last_over_time" => merged(floats, hists).last().map(|(t, _)| HOut::Float(t as f64 / 1000.0)),
        "ts_of_first_over_time" => merged(floats, hists).next().map(|(t, _)| HOut::Float(t as f64 / 1000.0)),
        "resets" | "changes" => {
            let mut n = 0usize;
            let mut prev: Option<(i64, Result<&Histogram, f64>)> = None;
            let hist_st = |t: i64| {
                if hsts.len() != hists.len() {
                    return 0;
                }
                hists.binary_search_by_key(&t, |p| p.0).map_or(0, |i| hsts[i])
            };
            for (t, cur) in merged(floats, hists) {
                if let Some((pt, p)) = prev {
                    let hit = match (p, cur) {
                        (Err(a), Err(b)) if name == "resets" => b < a,
                        (Err(a), Err(b)) => !(a == b || (a.is_nan() && b.is_nan())),
                        (Ok(a), Ok(b)) if name == "resets" => {
                            is_st_reset(hist_st(pt), pt, hist_st(t), t) || b.detect_reset(a)
                        }
                        (Ok(a), Ok(b)) => !b.content_equals(a),
                        _ => true,
                    };
                    n += usize::from(hit);
                }
                prev = Some((t, cur));
            }
            Some(HOut::Float(n as f64))
        }
        // Functions of float samples only: the floats of the window, if any.
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantile_and_fraction_of_a_simple_histogram() {
        // {{schema:0 sum:5 count:4 buckets:[1 2 1]}}: (0.5,1]:1 (1,2]:2 (2,4]:1
        let h = Histogram { count: 4.0, sum: 5.0, positive: vec![(0, 1.0), (1, 2.0), (2, 1.0)], ..Default::default() };
        assert!((quantile(0.5, &h) - std::f64::consts::SQRT_2).abs() < 1e-12);
        assert_eq!(fraction(1.0, 2.0, &h), 0.5);
        assert_eq!(fraction(0.0, 8.0, &h), 1.0);
        assert!(quantile(0.5, &Histogram::default()).is_nan());
    }

    #[test]
    fn nan_observations_are_noted() {
        // 15 observations, 12 of them in (0.5,1], 3 NaN (sum NaN).
        let h = Histogram { count: 15.0, sum: f64::NAN, positive: vec![(0, 12.0)], ..Default::default() };
        assert_eq!(quantile_noted(0.8, &h), (1.0, Some(NAN_SKEW)));
        let (v, note) = quantile_noted(0.81, &h);
        assert!(v.is_nan());
        assert_eq!(note, Some(NAN_RESULT));
        assert_eq!(fraction_noted(f64::NEG_INFINITY, f64::INFINITY, &h), (0.8, Some(NAN_FRACTION)));
        // A NaN sum from ±Inf observations, all in buckets: nothing to note.
        let inf = Histogram { count: 12.0, sum: f64::NAN, positive: vec![(0, 12.0)], ..Default::default() };
        assert_eq!(quantile_noted(0.5, &inf).1, None);
        assert_eq!(fraction_noted(f64::NEG_INFINITY, f64::INFINITY, &inf), (1.0, None));
    }

    fn counter(t: i64, count: f64) -> (i64, Histogram) {
        (t, Histogram { count, sum: count, positive: vec![(0, count)], ..Default::default() })
    }

    #[test]
    fn anchored_and_smoothed_increase() {
        // count +1 every 15 s from 1 at t=0; the window (−10 s, 50 s] plus
        // the sample after its end.
        let h: Vec<_> = (0..5).map(|i| counter(i * 15_000, (i + 1) as f64)).collect();
        let w = Window { end: 50_000, range: 60_000 };
        let mut notes = RateNotes::default();
        let anchored = extended_rate(&h[..4], w, false, true, false, &mut notes).map(|h| h.count);
        assert_eq!(anchored, Some(3.0));
        let smoothed = extended_rate(&h, w, true, true, false, &mut notes).map(|h| h.count);
        assert!((smoothed.unwrap_or(0.0) - 10.0 / 3.0).abs() < 1e-12);
        // A reset to 1 after 4: counted from zero.
        let reset = vec![counter(0, 4.0), counter(15_000, 1.0)];
        let r = extended_rate(&reset, Window { end: 15_000, range: 15_000 }, false, true, false, &mut notes);
        assert_eq!(r.map(|h| h.count), Some(1.0));
        assert!(!notes.schema_mix);
    }

    #[test]
    fn stats_iterator_hints_resolve_unknown_against_the_previous_sample() {
        let mut hs = vec![counter(0, 5.0), counter(60_000, 6.0), counter(120_000, 2.0)];
        assign_reset_hints(&[], &mut hs, None);
        resolve_unknown_hints(&[], &mut hs);
        let hints: Vec<_> = hs.iter().map(|h| h.1.reset_hint).collect();
        assert_eq!(hints, [ResetHint::Unknown, ResetHint::NotReset, ResetHint::Reset]);
    }

    #[test]
    fn trim_interpolates_and_estimates_the_sum() {
        // {{schema:0 sum:123.75 count:34 z_bucket:1 z_bucket_w:0.001 buckets:[2 4 8 16] n_buckets:[1 2]}}
        let h = Histogram {
            count: 34.0,
            sum: 123.75,
            zero_count: 1.0,
            zero_threshold: 0.001,
            positive: vec![(0, 2.0), (1, 4.0), (2, 8.0), (3, 16.0)],
            negative: vec![(0, 1.0), (1, 2.0)],
            ..Default::default()
        };
        // Nothing cut off: unchanged, sum included.
        assert_eq!(trim(&h, f64::INFINITY, true), h);
        // Half of (1,2] on the log scale, the zero bucket whole.
        let t = trim(&h, std::f64::consts::SQRT_2, true);
        assert!((t.count - 8.0).abs() < 1e-9 && (t.sum - 0.2570938865989847).abs() < 1e-9, "{t:?}");
        // Above 0: half the zero bucket.
        let t = trim(&h, 0.0, false);
        assert!((t.count - 30.5).abs() < 1e-9 && (t.sum - 120.20840280171308).abs() < 1e-9, "{t:?}");
        assert!(t.negative.is_empty() && t.zero_count == 0.5);
        // Custom buckets: linear interpolation, +Inf bucket dropped.
        let c = Histogram {
            schema: -53,
            count: 15.0,
            sum: 172.5,
            custom_values: vec![5.0, 10.0, 15.0, 20.0],
            positive: vec![(0, 1.0), (1, 6.0), (2, 4.0), (3, 3.0), (4, 1.0)],
            ..Default::default()
        };
        let t = trim(&c, 13.0, true);
        assert!((t.count - 9.4).abs() < 1e-9 && (t.sum - 75.1).abs() < 1e-9, "{t:?}");
        let t = trim(&c, 50.0, true);
        assert!((t.count - 14.0).abs() < 1e-9 && (t.sum - 150.0).abs() < 1e-9, "{t:?}");
    }

    #[test]
    fn overflowing_mean_stays_accurate() {
        let hs = [
            Histogram { count: f64::MAX, sum: 5.3, ..Default::default() },
            Histogram { count: 1e308, sum: 1e100, ..Default::default() },
            Histogram { count: 1e-6, sum: 1.0, ..Default::default() },
            Histogram { count: 1e-6, sum: -1e100, ..Default::default() },
            Histogram { count: 1e-6, sum: 2.0, ..Default::default() },
        ];
        let m = incremental_mean(hs.iter()).map(|m| m.sum);
        assert!((m.unwrap_or(0.0) - 8.3 / 5.0).abs() < 1e-6, "{m:?}");
    }
}
