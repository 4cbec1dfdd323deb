//! PromQL over native histograms: the `histogram_*` functions, rates and
//! deltas of histogram counters, and the range functions Prometheus
//! defines for histograms. Follows Prometheus's `promql/functions.go` and
//! `promql/quantile.go`.

use cairn_wire::Histogram;
use cairn_wire::histogram::ResetHint;

use super::eval::Window;

/// Sum (or mean, with `avg`) of histograms; `None` when two of them cannot
/// be added (exponential and custom buckets). Count and sum are
/// Kahan-compensated; a mean whose sum overflows is computed incrementally
/// instead, as Prometheus does.
pub(crate) fn sum_histograms<'a>(hs: impl Iterator<Item = &'a Histogram> + Clone, avg: bool) -> Option<Histogram> {
    sum_histograms_noted(hs, avg).map(|(h, _)| h)
}

/// [`sum_histograms`] with what the additions reported (counter-reset
/// collisions, reconciled custom bounds).
pub(crate) fn sum_histograms_noted<'a>(
    hs: impl Iterator<Item = &'a Histogram> + Clone,
    avg: bool,
) -> Option<(Histogram, cairn_wire::histogram::AddOutcome)> {
    use super::functions::kahan_inc;
    let mut noted = cairn_wire::histogram::AddOutcome::default();
    let mut acc: Option<Histogram> = None;
    let (mut c_sum, mut c_count) = (0.0, 0.0);
    let mut n = 0.0;
    for h in hs.clone() {
        n += 1.0;
        match &mut acc {
            None => acc = Some(h.clone()),
            Some(a) => {
                let (s0, n0) = (a.sum, a.count);
                let o = a.add(h).ok()?;
                noted.reset_collision |= o.reset_collision;
                noted.reconciled |= o.reconciled;
                (a.sum, c_sum) = kahan_inc(h.sum, s0, c_sum);
                (a.count, c_count) = kahan_inc(h.count, n0, c_count);
            }
        }
    }
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
            // Incremental mean: m_k = m_{k-1} + x_k / k − m_{k-1} / k.
            let mut mean: Option<Histogram> = None;
            for (k, h) in hs.enumerate() {
                let k = (k + 1) as f64;
                match &mut mean {
                    None => mean = Some(h.clone()),
                    Some(m) => {
                        let mut left = h.clone();
                        left.div(k);
                        let mut right = m.clone();
                        right.div(k);
                        left.sub(&right).ok()?;
                        m.add(&left).ok()?;
                    }
                }
            }
            a = mean?;
        } else {
            a.div(n);
        }
    }
    a.compact();
    Some((a, noted))
}

/// The counter-reset hints Prometheus's TSDB gives histograms read back:
/// it cuts a chunk at a series' first histogram, after a float, at a
/// counter reset and at a layout change, reads the first sample of a chunk
/// back as `Unknown` (`Reset` only where the writer declared it), the
/// others as `NotReset`; gauge histograms stay `Gauge`. Emulated over a selected
/// series (floats and stale markers break the chain).
pub(crate) fn assign_reset_hints(floats: &[(i64, f64)], hists: &mut [(i64, Histogram)]) {
    let mut fi = 0;
    let mut prev: Option<usize> = None;
    for i in 0..hists.len() {
        let t = hists[i].0;
        // A float sample since the previous histogram starts a new chunk.
        let mut after_float = false;
        while fi < floats.len() && floats[fi].0 < t {
            after_float = true;
            fi += 1;
        }
        if after_float {
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
        let new_hint = match prev {
            None => {
                if hint == ResetHint::Reset {
                    ResetHint::Reset
                } else {
                    ResetHint::Unknown
                }
            }
            Some(p) => {
                let (before, cur) = (&hists[p].1, &hists[i].1);
                if before.reset_hint == ResetHint::Gauge {
                    ResetHint::Unknown
                } else if cur.detect_reset(before) {
                    // A new chunk: its first sample reads back as unknown
                    // (a declared reset stays one).
                    if hint == ResetHint::Reset { ResetHint::Reset } else { ResetHint::Unknown }
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

/// `histogram_quantile` of a native histogram.
pub(crate) fn quantile(q: f64, h: &Histogram) -> f64 {
    if q < 0.0 {
        return f64::NEG_INFINITY;
    }
    if q > 1.0 {
        return f64::INFINITY;
    }
    if h.count == 0.0 || q.is_nan() {
        return f64::NAN;
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
    let Some(mut b) = bucket else { return f64::NAN };
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
                return b.upper;
            }
            b.lower = 0.0;
        } else if b.upper == f64::INFINITY {
            return b.lower;
        }
    }
    if count > h.count {
        count = h.count;
    }
    if count < rank {
        return b.upper;
    }
    if forward {
        rank -= count - b.count;
    } else {
        rank = count - rank;
    }
    let fraction = rank / b.count;
    if custom || (b.lower <= 0.0 && b.upper >= 0.0) {
        return b.lower + (b.upper - b.lower) * fraction;
    }
    let log_lower = b.lower.abs().log2();
    let log_upper = b.upper.abs().log2();
    if b.lower > 0.0 {
        return (log_lower + (log_upper - log_lower) * fraction).exp2();
    }
    -((log_upper + (log_lower - log_upper) * (1.0 - fraction)).exp2())
}

/// `histogram_fraction(lower, upper, h)`.
pub(crate) fn fraction(lower: f64, upper: f64, h: &Histogram) -> f64 {
    if h.count == 0.0 || lower.is_nan() || upper.is_nan() {
        return f64::NAN;
    }
    if lower >= upper {
        return 0.0;
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
    if !lower_set || lower_rank > h.count {
        lower_rank = h.count;
    }
    if !upper_set || upper_rank > h.count {
        upper_rank = h.count;
    }
    (upper_rank - lower_rank) / h.count
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

/// Prometheus's `histogramRate`: the increase of histogram counters over
/// `points` (≥ 2), with counter resets; `None` when the histograms cannot
/// be combined.
fn histogram_rate(points: &[(i64, Histogram)], is_counter: bool) -> Option<Histogram> {
    let mut prev = points.first()?.1.clone();
    let last = &points.last()?.1;
    if is_counter && points.len() > 1 && points[1].1.detect_reset(&prev) {
        let second = &points[1].1;
        prev = Histogram { schema: second.schema, custom_values: second.custom_values.clone(), ..Histogram::default() };
    }
    let custom = prev.uses_custom_buckets();
    if last.uses_custom_buckets() != custom {
        return None;
    }
    let mut min_schema = prev.schema.min(last.schema);
    for (_, h) in &points[1..points.len() - 1] {
        if !is_counter {
            continue;
        }
        min_schema = min_schema.min(h.schema);
        if h.uses_custom_buckets() != custom {
            return None;
        }
    }
    let mut h = last.to_schema(min_schema);
    h.sub(&prev).ok()?;
    if is_counter {
        let mut p = &prev;
        for (_, cur) in &points[1..] {
            if cur.detect_reset(p) {
                h.add(p).ok()?;
            }
            p = cur;
        }
    }
    h.reset_hint = ResetHint::Gauge;
    h.compact();
    Some(h)
}

/// rate / increase / delta over a window of histograms (Prometheus's
/// `extrapolatedRate` histogram branch).
pub(crate) fn extrapolated_rate(
    p: &[(i64, Histogram)],
    w: Window,
    is_counter: bool,
    is_rate: bool,
) -> Option<Histogram> {
    if p.len() < 2 {
        return None;
    }
    let mut h = histogram_rate(p, is_counter)?;
    let range_start = w.end - w.range;
    let (first_t, last_t) = (p[0].0, p[p.len() - 1].0);
    let mut to_start = (first_t - range_start) as f64 / 1000.0;
    let to_end = (w.end - last_t) as f64 / 1000.0;
    let sampled = (last_t - first_t) as f64 / 1000.0;
    let avg_between = sampled / (p.len() - 1) as f64;
    let threshold = avg_between * 1.1;
    if to_start >= threshold {
        to_start = avg_between / 2.0;
    }
    if is_counter && h.count > 0.0 && p[0].1.count >= 0.0 {
        let to_zero = sampled * (p[0].1.count / h.count);
        if to_zero < to_start {
            to_start = to_zero;
        }
    }
    let to_end = if to_end >= threshold { avg_between / 2.0 } else { to_end };
    let mut factor = (sampled + to_start + to_end) / sampled;
    if is_rate {
        factor /= w.range as f64 / 1000.0;
    }
    h.mul(factor);
    Some(h)
}

/// irate / idelta over the last two samples, both histograms.
pub(crate) fn instant_value(a: &(i64, Histogram), b: &(i64, Histogram), is_rate: bool) -> Option<Histogram> {
    let mut h = b.1.clone();
    if !is_rate || !b.1.detect_reset(&a.1) {
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
pub(crate) fn range_function(name: &str, floats: &[(i64, f64)], hists: &[(i64, Histogram)], w: Window) -> Option<HOut> {
    let mixed = !floats.is_empty();
    match name {
        "rate" | "increase" | "delta" => {
            if mixed {
                return None;
            }
            let h = extrapolated_rate(hists, w, name != "delta", name == "rate")?;
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
                    instant_value(&(*ta, (*a).clone()), &(*tb, (*b).clone()), name == "irate").map(HOut::Hist)
                }
                _ => None,
            }
        }
        "sum_over_time" | "avg_over_time" => {
            if mixed {
                return None;
            }
            sum_histograms(hists.iter().map(|p| &p.1), name == "avg_over_time").map(HOut::Hist)
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
            let mut prev: Option<Result<&Histogram, f64>> = None;
            for (_, cur) in merged(floats, hists) {
                if let Some(p) = prev {
                    let hit = match (p, cur) {
                        (Err(a), Err(b)) if name == "resets" => b < a,
                        (Err(a), Err(b)) => !(a == b || (a.is_nan() && b.is_nan())),
                        (Ok(a), Ok(b)) if name == "resets" => b.detect_reset(a),
                        (Ok(a), Ok(b)) => !b.content_equals(a),
                        _ => true,
                    };
                    n += usize::from(hit);
                }
                prev = Some(cur);
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
}
