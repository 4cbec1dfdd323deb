//! PromQL functions, following Prometheus's `promql/functions.go`: the
//! extrapolating `rate`/`increase`/`delta`, the `*_over_time` family,
//! regression (`deriv`, `predict_linear`), `histogram_quantile` over classic
//! `le` buckets, label manipulation, math, time and sorting functions.
//!
//! Native-histogram functions (`histogram_count`, …) return nothing for the
//! float samples this store holds, as Prometheus does for float input.

use std::collections::HashMap;

use cairn_wire::labels::is_valid_label_name;
use cairn_wire::{Label, Labels, METRIC_NAME};
use promql_parser::label::MatchOp as PMatchOp;
use promql_parser::parser::{Call, Expr};

use super::aggregate::{Mean, asc_nan_last, desc_nan_last};
use super::eval::{Ctx, Window, check_unique};
use super::{QueryError, Sample, Value};

/// Kahan–Neumaier summation step, as Prometheus's `kahanSumInc`.
pub(crate) fn kahan_inc(inc: f64, sum: f64, c: f64) -> (f64, f64) {
    let t = sum + inc;
    let c = if t.is_infinite() {
        0.0
    } else if sum.abs() >= inc.abs() {
        c + ((sum - t) + inc)
    } else {
        c + ((inc - t) + sum)
    };
    (t, c)
}

/// Prometheus's warning for a quantile outside [0, 1] (or NaN), raised
/// by `quantile`, `quantile_over_time` and `histogram_quantile`.
pub(crate) fn warn_quantile(ctx: &Ctx<'_>, q: f64) {
    if q.is_nan() || !(0.0..=1.0).contains(&q) {
        ctx.warn(format!("quantile value should be between 0 and 1, got {}", cairn_wire::histogram::go_g(q)));
    }
}

/// Prometheus's `quantile` over values (sorts `vals`).
pub(crate) fn quantile_of(q: f64, vals: &mut [f64]) -> f64 {
    if vals.is_empty() || q.is_nan() {
        return f64::NAN;
    }
    if q < 0.0 {
        return f64::NEG_INFINITY;
    }
    if q > 1.0 {
        return f64::INFINITY;
    }
    // NaN sorts first, as Prometheus's vectorByValueHeap.
    vals.sort_by(|a, b| match (a.is_nan(), b.is_nan()) {
        (true, true) => std::cmp::Ordering::Equal,
        (true, false) => std::cmp::Ordering::Less,
        (false, true) => std::cmp::Ordering::Greater,
        _ => a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal),
    });
    let n = vals.len() as f64;
    let rank = q * (n - 1.0);
    let lower = rank.floor().max(0.0);
    let upper = (lower + 1.0).min(n - 1.0);
    let weight = rank - rank.floor();
    vals[lower as usize] * (1.0 - weight) + vals[upper as usize] * weight
}

fn linear_regression(points: &[(i64, f64)], intercept_time: i64) -> (f64, f64) {
    let (mut n, mut sx, mut cx, mut sy, mut cy, mut sxy, mut cxy, mut sx2, mut cx2) =
        (0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0);
    let init_y = points[0].1;
    let mut const_y = true;
    for (i, &(t, v)) in points.iter().enumerate() {
        if const_y && i > 0 && v != init_y {
            const_y = false;
        }
        n += 1.0;
        let x = (t - intercept_time) as f64 / 1e3;
        (sx, cx) = kahan_inc(x, sx, cx);
        (sy, cy) = kahan_inc(v, sy, cy);
        (sxy, cxy) = kahan_inc(x * v, sxy, cxy);
        (sx2, cx2) = kahan_inc(x * x, sx2, cx2);
    }
    if const_y {
        if init_y.is_infinite() {
            return (f64::NAN, f64::NAN);
        }
        return (0.0, init_y);
    }
    sx += cx;
    sy += cy;
    sxy += cxy;
    sx2 += cx2;
    let cov = sxy - sx * sy / n;
    let var = sx2 - sx * sx / n;
    let slope = cov / var;
    (slope, sy / n - slope * sx / n)
}

/// Prometheus's `extrapolatedRate`.
fn extrapolated_rate(p: &[(i64, f64)], w: Window, is_counter: bool, is_rate: bool) -> Option<f64> {
    extrapolated_rate_st(p, &[], w, is_counter, is_rate, &mut false)
}

/// Prometheus's `isStartTimestampReset`: whether the start timestamps of two
/// consecutive samples say the counter restarted between them (0: none).
pub(crate) fn is_st_reset(prev_st: i64, prev_t: i64, cur_st: i64, cur_t: i64) -> bool {
    if cur_st == 0 || cur_st >= cur_t || cur_st < prev_t {
        // None; invalid or OpenTelemetry's "unknown start" (ST = T); or the
        // same run (a start before the previous sample).
        return false;
    }
    if cur_st > prev_t {
        return true;
    }
    // The start is the previous sample: a delta point, unless the previous
    // start was unknown (a cumulative series of unknown start).
    prev_st <= prev_t && prev_st != 0 && prev_st != prev_t
}

/// Prometheus's `checkStartTimeOverlap`: a start time inside the previous
/// sample's interval that is not the previous sample's own start.
fn st_overlaps(prev_st: i64, prev_t: i64, cur_st: i64) -> bool {
    cur_st != 0 && cur_st < prev_t && cur_st != prev_st
}

/// [`is_st_reset`] between samples `i - 1` and `i` of `p`, whose start
/// timestamps are `sts` (aligned with `p`; empty: none).
pub(crate) fn st_reset_at<T>(p: &[(i64, T)], sts: &[i64], i: usize) -> bool {
    sts.len() == p.len() && is_st_reset(sts[i - 1], p[i - 1].0, sts[i], p[i].0)
}

/// [`st_overlaps`] between samples `i - 1` and `i` of `p` (as
/// [`st_reset_at`]).
pub(crate) fn st_overlap_at<T>(p: &[(i64, T)], sts: &[i64], i: usize) -> bool {
    sts.len() == p.len() && st_overlaps(sts[i - 1], p[i - 1].0, sts[i])
}

/// [`extrapolated_rate`] with the samples' start timestamps `sts` (aligned
/// with `p`, 0 for none; empty when the series has none), as Prometheus
/// uses them: a start timestamp after the previous sample is a counter
/// reset, and a first sample whose start lies inside the range counts from
/// zero at its start instead of extrapolating left (which also lets a single
/// sample have a rate). Sets `overlap` when start times overlap.
fn extrapolated_rate_st(
    p: &[(i64, f64)],
    sts: &[i64],
    w: Window,
    is_counter: bool,
    is_rate: bool,
    overlap: &mut bool,
) -> Option<f64> {
    if p.len() < 2 && sts.is_empty() {
        return None;
    }
    let (first_t, first_v) = *p.first()?;
    let range_start = w.end - w.range;
    let range_end = w.end;
    let n1 = (p.len() - 1) as f64;
    let (last_t, last_v) = p[p.len() - 1];
    let mut result = last_v - first_v;
    if is_counter {
        let mut prev = first_v;
        for i in 1..p.len() {
            *overlap |= st_overlap_at(p, sts, i);
            if p[i].1 < prev || st_reset_at(p, sts, i) {
                result += prev;
            }
            prev = p[i].1;
        }
    }
    let mut to_start = (first_t - range_start) as f64 / 1000.0;
    let mut to_end = (range_end - last_t) as f64 / 1000.0;
    let mut sampled = (last_t - first_t) as f64 / 1000.0;
    let avg = if p.len() > 1 { sampled / n1 } else { 0.0 };
    let threshold = avg * 1.1;
    let st0 = sts.first().copied().unwrap_or(0);
    if is_counter && st0 != 0 && st0 > range_start && st0 < first_t {
        // A zero at the first sample's start, inside the range.
        to_start = 0.0;
        sampled = (last_t - st0) as f64 / 1000.0;
        result += first_v;
    } else if p.len() < 2 {
        return None;
    } else {
        if to_start >= threshold {
            to_start = avg / 2.0;
        }
        if is_counter {
            let mut to_zero = to_start;
            if result > 0.0 && first_v >= 0.0 {
                to_zero = sampled * (first_v / result);
            }
            if to_zero < to_start {
                to_start = to_zero;
            }
        }
    }
    if to_end >= threshold {
        to_end = avg / 2.0;
    }
    let mut factor = if sampled != 0.0 { (sampled + to_start + to_end) / sampled } else { 1.0 };
    if is_rate {
        factor /= w.range as f64 / 1000.0;
    }
    Some(result * factor)
}

/// Go's `math.Max`: NaN if either is NaN.
fn go_max(a: f64, b: f64) -> f64 {
    if a.is_nan() || b.is_nan() { f64::NAN } else { a.max(b) }
}

/// Go's `math.Min`: NaN if either is NaN.
fn go_min(a: f64, b: f64) -> f64 {
    if a.is_nan() || b.is_nan() { f64::NAN } else { a.min(b) }
}

/// Linear interpolation at `t` between two samples; across a counter reset
/// the counter is taken to restart from 0 at the first sample.
fn interpolate(p1: (i64, f64), p2: (i64, f64), t: i64, is_counter: bool) -> f64 {
    let (mut y1, y2) = (p1.1, p2.1);
    if is_counter && y2 < y1 {
        y1 = 0.0;
    }
    y1 + (y2 - y1) * (t - p1.0) as f64 / (p2.0 - p1.0) as f64
}

/// Prometheus's `extendedRate`: `rate`/`increase`/`delta` over an
/// `anchored` or `smoothed` range, whose points include the sample before
/// the range start (and, smoothed, the one after its end).
fn extended_rate(p: &[(i64, f64)], w: Window, smoothed: bool, is_counter: bool, is_rate: bool) -> Option<f64> {
    if p.is_empty() {
        return None;
    }
    let (rs, re) = (w.end - w.range, w.end);
    let mut last = p.len() - 1;
    let mut first = p[..last].partition_point(|x| x.0 <= rs).saturating_sub(1);
    if smoothed {
        last = p[..last].partition_point(|x| x.0 < re);
    }
    if p[last].0 <= rs {
        return None;
    }
    let left = if smoothed && p[first].0 < rs && first + 1 < p.len() {
        interpolate(p[first], p[first + 1], rs, is_counter)
    } else {
        p[first].1
    };
    let right = if smoothed && last > 0 && p[last].0 > re {
        interpolate(p[last - 1], p[last], re, is_counter)
    } else {
        p[last].1
    };
    let mut result = right - left;
    if is_counter {
        if p[first].0 <= rs {
            first += 1;
        }
        let end = if p[last].0 >= re { last } else { last + 1 };
        let mut prev = left;
        for &(_, v) in p.get(first..end).unwrap_or(&[]) {
            if v < prev {
                result += prev;
            }
            prev = v;
        }
        if right < prev {
            result += prev;
        }
    }
    if is_rate {
        result /= w.range as f64 / 1000.0;
    }
    Some(result)
}

fn instant_value(p: &[(i64, f64)], is_rate: bool) -> Option<f64> {
    instant_value_st(p, &[], is_rate)
}

/// [`instant_value`] with the samples' start timestamps (see
/// [`extrapolated_rate_st`]): a start-timestamp reset is a counter reset.
fn instant_value_st(p: &[(i64, f64)], sts: &[i64], is_rate: bool) -> Option<f64> {
    if p.len() < 2 {
        return None;
    }
    let (pt, pv) = p[p.len() - 2];
    let (lt, lv) = p[p.len() - 1];
    let mut r = if is_rate && (lv < pv || st_reset_at(p, sts, p.len() - 1)) { lv } else { lv - pv };
    let interval = lt - pt;
    if interval == 0 {
        return None;
    }
    if is_rate {
        r /= interval as f64 / 1000.0;
    }
    Some(r)
}

fn variance(p: &[(i64, f64)]) -> f64 {
    let (mut count, mut mean, mut cm, mut aux, mut ca) = (0.0, 0.0, 0.0, 0.0, 0.0);
    for &(_, v) in p {
        count += 1.0;
        let delta = v - (mean + cm);
        (mean, cm) = kahan_inc(delta / count, mean, cm);
        (aux, ca) = kahan_inc(delta * (v - (mean + cm)), aux, ca);
    }
    (aux + ca) / count
}

fn double_exp_smoothing(p: &[(i64, f64)], sf: f64, tf: f64) -> Option<f64> {
    if p.len() < 2 {
        return None;
    }
    let (mut s0, mut s1) = (0.0, p[0].1);
    let mut b = p[1].1 - p[0].1;
    for (i, &(_, v)) in p.iter().enumerate().skip(1) {
        let x = sf * v;
        if i > 1 {
            b = tf * (s1 - s0) + (1.0 - tf) * b;
        }
        let y = (1.0 - sf) * (s1 + b);
        s0 = s1;
        s1 = x + y;
    }
    Some(s1)
}

fn unparen(e: &Expr) -> &Expr {
    match e {
        Expr::Paren(p) => unparen(&p.expr),
        other => other,
    }
}

/// Days since 1970-01-01 → (year, month 1–12, day 1–31).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

fn is_leap(y: i64) -> bool {
    (y % 4 == 0 && y % 100 != 0) || y % 400 == 0
}

fn date_part(name: &str, secs: f64) -> f64 {
    if secs.is_nan() || secs.is_infinite() {
        return secs;
    }
    let s = secs as i64;
    let days = s.div_euclid(86_400);
    let sod = s.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    let month_days = [31, if is_leap(y) { 29 } else { 28 }, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31];
    match name {
        "minute" => ((sod / 60) % 60) as f64,
        "hour" => (sod / 3600) as f64,
        "day_of_week" => (days + 4).rem_euclid(7) as f64,
        "day_of_month" => d as f64,
        "days_in_month" => month_days[(m - 1) as usize] as f64,
        "month" => m as f64,
        "year" => y as f64,
        _ => (month_days[..(m - 1) as usize].iter().sum::<i64>() + d as i64) as f64,
    }
}

/// Natural ("version") ordering of label values, as Prometheus's natsort.
fn natural_cmp(a: &str, b: &str) -> std::cmp::Ordering {
    use std::cmp::Ordering;
    let (ab, bb) = (a.as_bytes(), b.as_bytes());
    let (mut i, mut j) = (0, 0);
    while i < ab.len() && j < bb.len() {
        if ab[i].is_ascii_digit() && bb[j].is_ascii_digit() {
            let si = i;
            while i < ab.len() && ab[i].is_ascii_digit() {
                i += 1;
            }
            let sj = j;
            while j < bb.len() && bb[j].is_ascii_digit() {
                j += 1;
            }
            let na = a[si..i].trim_start_matches('0');
            let nb = b[sj..j].trim_start_matches('0');
            let o = na.len().cmp(&nb.len()).then_with(|| na.cmp(nb));
            if o != Ordering::Equal {
                return o;
            }
        } else {
            let o = ab[i].cmp(&bb[j]);
            if o != Ordering::Equal {
                return o;
            }
            i += 1;
            j += 1;
        }
    }
    (ab.len() - i).cmp(&(bb.len() - j))
}

fn drop_name(s: &mut Sample) {
    s.drop_name = true;
}

fn set_label(ls: &Labels, name: &str, value: &str) -> Labels {
    let mut v: Vec<Label> = ls.iter().filter(|l| l.name != name).cloned().collect();
    if !value.is_empty() {
        v.push(Label { name: name.to_string(), value: value.to_string() });
    }
    Labels::from_pairs(v.into_iter().map(|l| (l.name, l.value))).unwrap_or_default()
}

/// Labels `absent()` reports: the selector's equality matchers (a name
/// matched twice is left out), without `__name__`.
fn absent_labels(e: &Expr) -> Labels {
    let vs = match unparen(e) {
        Expr::VectorSelector(vs) => vs,
        Expr::MatrixSelector(ms) => &ms.vs,
        _ => return Labels::empty(),
    };
    let mut seen: HashMap<&str, Option<&str>> = HashMap::new();
    for m in &vs.matchers.matchers {
        if m.name == METRIC_NAME {
            continue;
        }
        let e = seen.entry(m.name.as_str()).or_insert(None);
        if matches!(m.op, PMatchOp::Equal) && e.is_none() && !seen_twice(&vs.matchers.matchers, &m.name) {
            *e = Some(m.value.as_str());
        }
    }
    Labels::from_pairs(seen.into_iter().filter_map(|(k, v)| v.map(|v| (k, v)))).unwrap_or_default()
}

fn seen_twice(ms: &[promql_parser::label::Matcher], name: &str) -> bool {
    ms.iter().filter(|m| m.name == name).count() > 1
}

/// A range function of floats alone: the window's points (never empty,
/// stale markers removed) and the window → the output value, if any.
pub(crate) type PlainRangeFn = fn(&[(i64, f64)], Window) -> Option<f64>;

fn min_max_over_time(p: &[(i64, f64)], is_min: bool) -> Option<f64> {
    let mut v = p[0].1;
    for x in &p[1..] {
        if v.is_nan() || (is_min && x.1 < v) || (!is_min && x.1 > v) {
            v = x.1;
        }
    }
    Some(v)
}

/// The range functions that take one range vector and no parameter and
/// compute from float points only (with no `anchored`/`smoothed`
/// modifier): the function and whether it keeps the metric name. Shared
/// by the step evaluator and the series-at-a-time one (`super::fast`), so
/// both compute alike.
pub(crate) fn plain_range_fn(name: &str) -> Option<(PlainRangeFn, bool)> {
    let f: PlainRangeFn = match name {
        "rate" => |p, w| extrapolated_rate(p, w, true, true),
        "increase" => |p, w| extrapolated_rate(p, w, true, false),
        "delta" => |p, w| extrapolated_rate(p, w, false, false),
        "irate" => |p, _| instant_value(p, true),
        "idelta" => |p, _| instant_value(p, false),
        "avg_over_time" => |p, _| {
            let mut m = Mean::default();
            p.iter().for_each(|x| m.add(x.1));
            Some(m.value())
        },
        "sum_over_time" => |p, _| {
            let (mut s, mut c) = (0.0, 0.0);
            for x in p {
                (s, c) = kahan_inc(x.1, s, c);
            }
            Some(if c.is_finite() { s + c } else { s })
        },
        "count_over_time" => |p, _| Some(p.len() as f64),
        "min_over_time" => |p, _| min_max_over_time(p, true),
        "max_over_time" => |p, _| min_max_over_time(p, false),
        "last_over_time" => return Some((|p, _| p.last().map(|x| x.1), true)),
        "present_over_time" => |_, _| Some(1.0),
        "stddev_over_time" => |p, _| Some(variance(p).sqrt()),
        "stdvar_over_time" => |p, _| Some(variance(p)),
        _ => return None,
    };
    Some((f, false))
}

/// The ST-reading range functions ([`super::eval::ST_RANGE_FUNCS`]) over
/// float points with their start timestamps (`sts`, aligned, 0: none).
fn st_range_fn(name: &str, p: &[(i64, f64)], sts: &[i64], w: Window, overlap: &mut bool) -> Option<f64> {
    match name {
        "rate" | "increase" => extrapolated_rate_st(p, sts, w, true, name == "rate", overlap),
        "irate" => instant_value_st(p, sts, true),
        "resets" => Some((1..p.len()).filter(|&i| p[i].1 < p[i - 1].1 || st_reset_at(p, sts, i)).count() as f64),
        _ => None,
    }
}

/// Prometheus's warning for overlapping start times.
fn st_overlap_warning(metric: &str) -> String {
    format!(
        "PromQL warning: sample has start time that overlaps with previous sample timestamp for metric \"{metric}\""
    )
}

/// A function of a range vector's points and window.
type RangeFn<'a> = dyn Fn(&[(i64, f64)], Window) -> Option<f64> + 'a;

pub(crate) fn eval_call(ctx: &Ctx<'_>, c: &Call, t: i64) -> Result<Value, QueryError> {
    let name = c.func.name;
    let args = &c.args.args;
    let arg = |i: usize| -> Result<&Expr, QueryError> {
        args.get(i).map(|b| &**b).ok_or_else(|| QueryError::BadData(format!("{name}(): missing argument {}", i + 1)))
    };
    // Functions over a range vector, one output sample per series.
    let range_fn = |f: &RangeFn<'_>, keep_name: bool| -> Result<Value, QueryError> {
        let e = arg(0)?;
        let w = ctx.window(e, t).ok_or_else(|| QueryError::BadData(format!("{name}() expects a range vector")))?;
        let mut out = Vec::new();
        let hist_aware = super::histfn::HIST_AWARE.contains(&name);
        // Start timestamps of the selector's series, for the functions that
        // read them (none with `anchored` / `smoothed`, as in Prometheus).
        let st_map = match unparen(e) {
            Expr::MatrixSelector(ms) if super::eval::ext_of(&ms.vs).is_none() => {
                ctx.st.get(&(&ms.vs as *const _ as usize))
            }
            _ => None,
        };
        // A window holding histograms: the function's histogram semantics,
        // or its floats alone for functions of floats only.
        let mut mixed = |labels: &Labels, points: &[(i64, f64)], hists: &[(i64, cairn_wire::Histogram)]| {
            let metric = || labels.get(cairn_wire::METRIC_NAME).unwrap_or("").to_string();
            if !hists.is_empty() && !points.is_empty() && !hist_aware {
                ctx.info(format!(
                    "ignored histograms in a range containing both floats and histograms for metric name \"{}\"",
                    metric()
                ));
            }
            if !hists.is_empty() && hist_aware {
                super::histfn::annotate_range(ctx, name, points, hists, &metric());
            }
            let sts = st_map.and_then(|m| m.get(labels));
            if hists.is_empty() || !hist_aware {
                if points.is_empty() {
                    return;
                }
                let v = match sts {
                    Some(pairs) => {
                        let st = super::eval::st_aligned(pairs, points);
                        let mut overlap = false;
                        let v = st_range_fn(name, points, &st, w, &mut overlap);
                        if overlap {
                            ctx.warn(st_overlap_warning(&metric()));
                        }
                        v
                    }
                    None => f(points, w),
                };
                if let Some(v) = v {
                    out.push(Sample { labels: labels.clone(), t, v, drop_name: !keep_name, h: None });
                }
                return;
            }
            let hsts: Vec<i64> = match sts {
                Some(pairs) => super::eval::st_aligned(pairs, hists),
                None => Vec::new(),
            };
            let mut notes = super::histfn::RateNotes::default();
            let ext = match unparen(e) {
                Expr::MatrixSelector(ms) => super::eval::ext_of(&ms.vs),
                _ => None,
            };
            let res = super::histfn::range_function(name, points, hists, &hsts, w, ext, &mut notes);
            if notes.st_overlap {
                ctx.warn(st_overlap_warning(&metric()));
            }
            if notes.not_gauge {
                ctx.warn(format!("this native histogram metric is not a gauge: \"{}\"", metric()));
            }
            if notes.schema_mix {
                ctx.warn(format!(
                    "vector contains a mix of histograms with exponential and custom buckets schemas for metric name \"{}\"",
                    metric()
                ));
            }
            if notes.reconciled_sub {
                ctx.info("mismatched custom buckets were reconciled during subtraction".into());
            }
            if notes.reconciled_add {
                ctx.info("mismatched custom buckets were reconciled during addition".into());
            }
            if notes.reset_collision {
                ctx.warn("conflicting counter resets during histogram aggregation".into());
            }
            if notes.reconciled_agg {
                ctx.info("mismatched custom buckets were reconciled during aggregation".into());
            }
            match res {
                Some(super::histfn::HOut::Float(v)) => {
                    out.push(Sample { labels: labels.clone(), t, v, drop_name: !keep_name, h: None })
                }
                Some(super::histfn::HOut::Hist(h)) => {
                    out.push(Sample { labels: labels.clone(), t, v: 0.0, drop_name: !keep_name, h: Some(Box::new(h)) })
                }
                None => {}
            }
        };
        if let Expr::MatrixSelector(ms) = unparen(e) {
            // Hot path: read the prefetched samples in place.
            ctx.for_each_window_mixed(ms, t, &mut mixed);
            // The series of one selector are distinct, and pending name
            // drops still count as distinct here: nothing to check.
            return Ok(Value::Vector(out));
        } else {
            for s in ctx.eval_matrix(e, t)? {
                mixed(&s.labels, &s.points, &s.hist);
            }
        }
        check_unique(&out)?;
        Ok(Value::Vector(out))
    };
    // Functions applying `f` to each sample of an instant vector.
    let map_fn = |e: &Expr, f: &dyn Fn(f64) -> f64| -> Result<Value, QueryError> {
        let mut v = ctx.eval_vector(e, t)?;
        // Functions of floats ignore histogram samples.
        v.retain(|s| s.h.is_none());
        for s in &mut v {
            s.v = f(s.v);
            drop_name(s);
        }
        check_unique(&v)?;
        Ok(Value::Vector(v))
    };
    // `anchored` / `smoothed` on the range argument.
    let ext = match args.first().map(|a| unparen(a)) {
        Some(Expr::MatrixSelector(ms)) => super::eval::ext_of(&ms.vs),
        _ => None,
    };
    let rate = |p: &[(i64, f64)], w: Window, is_counter: bool, is_rate: bool| match ext {
        Some(x) => extended_rate(p, w, x == super::eval::Ext::Smoothed, is_counter, is_rate),
        None => extrapolated_rate(p, w, is_counter, is_rate),
    };
    if ext.is_none()
        && let Some((f, keep_name)) = plain_range_fn(name)
    {
        return range_fn(&f, keep_name);
    }
    match name {
        "rate" => range_fn(&|p, w| rate(p, w, true, true), false),
        "increase" => range_fn(&|p, w| rate(p, w, true, false), false),
        "delta" => range_fn(&|p, w| rate(p, w, false, false), false),
        "first_over_time" => range_fn(&|p, _| p.first().map(|x| x.1), true),
        "ts_of_last_over_time" => range_fn(&|p, _| p.last().map(|x| x.0 as f64 / 1000.0), false),
        "ts_of_first_over_time" => range_fn(&|p, _| p.first().map(|x| x.0 as f64 / 1000.0), false),
        "ts_of_min_over_time" | "ts_of_max_over_time" => {
            let is_min = name == "ts_of_min_over_time";
            range_fn(
                &|p, _| {
                    let (mut v, mut ts) = (p[0].1, p[0].0);
                    for x in &p[1..] {
                        if v.is_nan() || (is_min && x.1 <= v) || (!is_min && x.1 >= v) {
                            v = x.1;
                            ts = x.0;
                        }
                    }
                    Some(ts as f64 / 1000.0)
                },
                false,
            )
        }
        "mad_over_time" => range_fn(
            &|p, _| {
                if p.iter().any(|x| x.1.is_nan()) {
                    return Some(f64::NAN);
                }
                let mut vals: Vec<f64> = p.iter().map(|x| x.1).collect();
                let med = quantile_of(0.5, &mut vals);
                let mut dev: Vec<f64> = p.iter().map(|x| (x.1 - med).abs()).collect();
                Some(quantile_of(0.5, &mut dev))
            },
            false,
        ),
        "quantile_over_time" => {
            let q = ctx.eval_scalar(arg(0)?, t)?;
            warn_quantile(ctx, q);
            let e = arg(1)?;
            let m = ctx.eval_matrix(e, t)?;
            let mut out = Vec::with_capacity(m.len());
            for s in m {
                if !s.hist.is_empty() && !s.points.is_empty() {
                    ctx.info(format!(
                        "ignored histograms in a range containing both floats and histograms for metric name \"{}\"",
                        s.labels.get(cairn_wire::METRIC_NAME).unwrap_or("")
                    ));
                }
                if s.points.is_empty() {
                    continue;
                }
                let mut vals: Vec<f64> = s.points.iter().map(|x| x.1).collect();
                out.push(Sample { labels: s.labels, t, v: quantile_of(q, &mut vals), drop_name: true, h: None });
            }
            check_unique(&out)?;
            Ok(Value::Vector(out))
        }
        "resets" => range_fn(&|p, _| Some(p.windows(2).filter(|w| w[1].1 < w[0].1).count() as f64), false),
        "changes" => range_fn(
            &|p, _| {
                Some(p.windows(2).filter(|w| !(w[1].1 == w[0].1 || (w[1].1.is_nan() && w[0].1.is_nan()))).count() as f64)
            },
            false,
        ),
        "deriv" => range_fn(&|p, _| (p.len() >= 2).then(|| linear_regression(p, p[0].0).0), false),
        "predict_linear" => {
            let dur = ctx.eval_scalar(arg(1)?, t)?;
            range_fn(
                &|p, _| {
                    (p.len() >= 2).then(|| {
                        // Prometheus predicts from the evaluation time itself
                        // (not shifted by offset or @).
                        let (slope, icpt) = linear_regression(p, t);
                        slope * dur + icpt
                    })
                },
                false,
            )
        }
        "double_exponential_smoothing" | "holt_winters" => {
            let sf = ctx.eval_scalar(arg(1)?, t)?;
            let tf = ctx.eval_scalar(arg(2)?, t)?;
            if sf <= 0.0 || sf >= 1.0 {
                return Err(QueryError::Execution(format!(
                    "invalid smoothing factor. Expected: 0 < sf < 1, got: {sf:.6}"
                )));
            }
            if tf <= 0.0 || tf >= 1.0 {
                return Err(QueryError::Execution(format!("invalid trend factor. Expected: 0 < tf < 1, got: {tf:.6}")));
            }
            range_fn(&|p, _| double_exp_smoothing(p, sf, tf), false)
        }
        "absent_over_time" => {
            let m = ctx.eval_matrix(arg(0)?, t)?;
            if !m.is_empty() {
                return Ok(Value::Vector(Vec::new()));
            }
            Ok(Value::Vector(vec![Sample::new(absent_labels(arg(0)?), t, 1.0)]))
        }
        "absent" => {
            let v = ctx.eval_vector(arg(0)?, t)?;
            if !v.is_empty() {
                return Ok(Value::Vector(Vec::new()));
            }
            Ok(Value::Vector(vec![Sample::new(absent_labels(arg(0)?), t, 1.0)]))
        }
        "abs" => map_fn(arg(0)?, &f64::abs),
        "ceil" => map_fn(arg(0)?, &f64::ceil),
        "floor" => map_fn(arg(0)?, &f64::floor),
        "exp" => map_fn(arg(0)?, &f64::exp),
        "ln" => map_fn(arg(0)?, &f64::ln),
        "log2" => map_fn(arg(0)?, &f64::log2),
        "log10" => map_fn(arg(0)?, &f64::log10),
        "sqrt" => map_fn(arg(0)?, &f64::sqrt),
        "sgn" => map_fn(arg(0)?, &|v| {
            if v > 0.0 {
                1.0
            } else if v < 0.0 {
                -1.0
            } else {
                v
            }
        }),
        "acos" => map_fn(arg(0)?, &f64::acos),
        "acosh" => map_fn(arg(0)?, &f64::acosh),
        "asin" => map_fn(arg(0)?, &f64::asin),
        "asinh" => map_fn(arg(0)?, &f64::asinh),
        "atan" => map_fn(arg(0)?, &f64::atan),
        "atanh" => map_fn(arg(0)?, &f64::atanh),
        "cos" => map_fn(arg(0)?, &f64::cos),
        "cosh" => map_fn(arg(0)?, &f64::cosh),
        "sin" => map_fn(arg(0)?, &f64::sin),
        "sinh" => map_fn(arg(0)?, &f64::sinh),
        "tan" => map_fn(arg(0)?, &f64::tan),
        "tanh" => map_fn(arg(0)?, &f64::tanh),
        "deg" => map_fn(arg(0)?, &|v| v * 180.0 / std::f64::consts::PI),
        "rad" => map_fn(arg(0)?, &|v| v * std::f64::consts::PI / 180.0),
        "pi" => Ok(Value::Scalar(t, std::f64::consts::PI)),
        "round" => {
            let to = match args.get(1) {
                Some(e) => ctx.eval_scalar(e, t)?,
                None => 1.0,
            };
            let inv = 1.0 / to;
            map_fn(arg(0)?, &|v| (v * inv + 0.5).floor() / inv)
        }
        "clamp" => {
            let lo = ctx.eval_scalar(arg(1)?, t)?;
            let hi = ctx.eval_scalar(arg(2)?, t)?;
            if hi < lo {
                return Ok(Value::Vector(Vec::new()));
            }
            map_fn(arg(0)?, &|v| go_max(lo, go_min(hi, v)))
        }
        "clamp_min" => {
            let lo = ctx.eval_scalar(arg(1)?, t)?;
            map_fn(arg(0)?, &|v| go_max(v, lo))
        }
        "clamp_max" => {
            let hi = ctx.eval_scalar(arg(1)?, t)?;
            map_fn(arg(0)?, &|v| go_min(v, hi))
        }
        "time" => Ok(Value::Scalar(t, t as f64 / 1000.0)),
        "start" => Ok(Value::Scalar(t, ctx.start as f64 / 1000.0)),
        "end" => Ok(Value::Scalar(t, ctx.end as f64 / 1000.0)),
        "range" => Ok(Value::Scalar(t, (ctx.end - ctx.start) as f64 / 1000.0)),
        "step" => Ok(Value::Scalar(t, ctx.step as f64 / 1000.0)),
        "min_of" | "max_of" => {
            let a = ctx.eval_scalar(arg(0)?, t)?;
            let b = ctx.eval_scalar(arg(1)?, t)?;
            // Go's math.Min/Max: NaN wins.
            let v = if a.is_nan() || b.is_nan() {
                f64::NAN
            } else if name == "min_of" {
                a.min(b)
            } else {
                a.max(b)
            };
            Ok(Value::Scalar(t, v))
        }
        "timestamp" => {
            let e = arg(0)?;
            let mut v = match unparen(e) {
                Expr::VectorSelector(vs) => ctx
                    .eval_vs(vs, t, true)
                    .into_iter()
                    .map(|s| Sample::new(s.labels, t, s.t as f64 / 1000.0))
                    .collect(),
                _ => {
                    let mut v = ctx.eval_vector(e, t)?;
                    v.iter_mut().for_each(|s| {
                        s.v = t as f64 / 1000.0;
                        s.h = None;
                    });
                    v
                }
            };
            v.iter_mut().for_each(drop_name);
            check_unique(&v)?;
            Ok(Value::Vector(v))
        }
        "start_timestamp" => {
            // Each sample's start time in seconds (0 when it has none); only
            // a selector's samples have them, an expression's result has none.
            let e = arg(0)?;
            let mut v: Vec<Sample> = match unparen(e) {
                Expr::VectorSelector(vs) => {
                    let sts = ctx.st.get(&(vs as *const _ as usize));
                    ctx.eval_vs(vs, t, true)
                        .into_iter()
                        .map(|s| {
                            let st = sts.and_then(|m| m.get(&s.labels)).map_or(0, |p| super::eval::st_at(p, s.t));
                            Sample::new(s.labels, t, st as f64 / 1000.0)
                        })
                        .collect()
                }
                _ => {
                    ctx.eval_vector(e, t)?;
                    Vec::new()
                }
            };
            v.iter_mut().for_each(drop_name);
            check_unique(&v)?;
            Ok(Value::Vector(v))
        }
        "minute" | "hour" | "day_of_week" | "day_of_month" | "days_in_month" | "month" | "year" | "day_of_year" => {
            match args.first() {
                Some(e) => map_fn(e, &|v| date_part(name, v)),
                None => Ok(Value::Vector(vec![Sample::new(Labels::empty(), t, date_part(name, t as f64 / 1000.0))])),
            }
        }
        "vector" => Ok(Value::Vector(vec![Sample::new(Labels::empty(), t, ctx.eval_scalar(arg(0)?, t)?)])),
        "scalar" => {
            let mut v = ctx.eval_vector(arg(0)?, t)?;
            v.retain(|s| s.h.is_none());
            Ok(Value::Scalar(t, if v.len() == 1 { v[0].v } else { f64::NAN }))
        }
        "sort" | "sort_desc" => {
            let mut v = ctx.eval_vector(arg(0)?, t)?;
            v.retain(|s| s.h.is_none());
            if name == "sort" {
                v.sort_by(|a, b| asc_nan_last(a.v, b.v));
            } else {
                v.sort_by(|a, b| desc_nan_last(a.v, b.v));
            }
            Ok(Value::Vector(v))
        }
        "sort_by_label" | "sort_by_label_desc" => {
            let mut v = ctx.eval_vector(arg(0)?, t)?;
            let mut names = Vec::new();
            for e in args.iter().skip(1) {
                names.push(ctx.eval_string(e, t)?);
            }
            v.sort_by(|a, b| {
                let mut o = std::cmp::Ordering::Equal;
                for n in &names {
                    let (x, y) = (a.labels.get(n).unwrap_or(""), b.labels.get(n).unwrap_or(""));
                    if x != y {
                        o = natural_cmp(x, y);
                        break;
                    }
                }
                let o = o.then_with(|| a.labels.cmp(&b.labels));
                if name == "sort_by_label_desc" { o.reverse() } else { o }
            });
            Ok(Value::Vector(v))
        }
        "label_replace" => {
            let mut v = ctx.eval_vector(arg(0)?, t)?;
            let dst = ctx.eval_string(arg(1)?, t)?;
            let repl = ctx.eval_string(arg(2)?, t)?;
            let src = ctx.eval_string(arg(3)?, t)?;
            let re_s = ctx.eval_string(arg(4)?, t)?;
            let re = cairn_wire::matcher::anchored_regex(&re_s).map_err(|e| {
                QueryError::Execution(format!("invalid regular expression in label_replace(): {re_s}: {e}"))
            })?;
            if !is_valid_label_name(&dst) {
                return Err(QueryError::Execution(format!("invalid destination label name in label_replace(): {dst}")));
            }
            for s in &mut v {
                let sv = s.labels.get(&src).unwrap_or("").to_string();
                if let Some(caps) = re.captures(&sv) {
                    let mut res = String::new();
                    caps.expand(&repl, &mut res);
                    s.labels = set_label(&s.labels, &dst, &res);
                    if dst == METRIC_NAME {
                        s.drop_name = false;
                    }
                }
            }
            check_unique(&v)?;
            Ok(Value::Vector(v))
        }
        "label_join" => {
            let mut v = ctx.eval_vector(arg(0)?, t)?;
            let dst = ctx.eval_string(arg(1)?, t)?;
            let sep = ctx.eval_string(arg(2)?, t)?;
            let mut srcs = Vec::new();
            for e in args.iter().skip(3) {
                let s = ctx.eval_string(e, t)?;
                if !is_valid_label_name(&s) {
                    return Err(QueryError::Execution(format!("invalid source label name in label_join(): {s}")));
                }
                srcs.push(s);
            }
            if !is_valid_label_name(&dst) {
                return Err(QueryError::Execution(format!("invalid destination label name in label_join(): {dst}")));
            }
            for s in &mut v {
                let joined: Vec<&str> = srcs.iter().map(|n| s.labels.get(n).unwrap_or("")).collect();
                let joined = joined.join(&sep);
                s.labels = set_label(&s.labels, &dst, &joined);
                if dst == METRIC_NAME {
                    s.drop_name = false;
                }
            }
            check_unique(&v)?;
            Ok(Value::Vector(v))
        }
        "info" => {
            let base = ctx.eval_vector(arg(0)?, t)?;
            let sel = match args.get(1).map(|e| unparen(e)) {
                None => None,
                Some(Expr::VectorSelector(vs)) => Some(vs),
                Some(_) => {
                    return Err(QueryError::BadData("info(): the second argument must be a label selector".into()));
                }
            };
            // Info series are read as of the base selector's `@`/`offset`.
            let t_info = info_ref_time(ctx, arg(0)?, t);
            Ok(Value::Vector(info(ctx, base, sel, t_info)?))
        }
        "histogram_quantile" => {
            let q = ctx.eval_scalar(arg(0)?, t)?;
            warn_quantile(ctx, q);
            let input = split_histograms(ctx, ctx.eval_vector(arg(1)?, t)?);
            let out = input.quantiles(ctx, q, t, None);
            check_unique(&out)?;
            Ok(Value::Vector(out))
        }
        "histogram_quantiles" => {
            let label = match args.get(1).map(|e| unparen(e)) {
                Some(Expr::StringLiteral(s)) => s.val.clone(),
                _ => {
                    return Err(QueryError::BadData(
                        "histogram_quantiles(): the second argument must be a string".into(),
                    ));
                }
            };
            let mut qs = Vec::with_capacity(args.len().saturating_sub(2));
            for e in args.iter().skip(2) {
                let q = ctx.eval_scalar(e, t)?;
                warn_quantile(ctx, q);
                qs.push(q);
            }
            let input = split_histograms(ctx, ctx.eval_vector(arg(0)?, t)?);
            let mut out = Vec::new();
            for q in qs {
                out.extend(input.quantiles(ctx, q, t, Some((&label, &open_metrics_float(q)))));
            }
            check_unique(&out)?;
            Ok(Value::Vector(out))
        }
        "histogram_count" | "histogram_sum" | "histogram_avg" | "histogram_stddev" | "histogram_stdvar" => {
            // Float samples are ignored by these functions.
            let mut v = ctx.eval_vector(arg(0)?, t)?;
            v.retain(|s| s.h.is_some());
            for s in &mut v {
                if let Some(h) = s.h.take() {
                    s.v = match name {
                        "histogram_count" => h.count,
                        "histogram_sum" => h.sum,
                        "histogram_avg" => h.sum / h.count,
                        "histogram_stddev" => super::histfn::stdvar(&h).sqrt(),
                        _ => super::histfn::stdvar(&h),
                    };
                }
                drop_name(s);
            }
            check_unique(&v)?;
            Ok(Value::Vector(v))
        }
        "histogram_fraction" => {
            let lo = ctx.eval_scalar(arg(0)?, t)?;
            let hi = ctx.eval_scalar(arg(1)?, t)?;
            let mut v = ctx.eval_vector(arg(2)?, t)?;
            v.retain(|s| s.h.is_some());
            for s in &mut v {
                if let Some(h) = s.h.take() {
                    let (v, note) = super::histfn::fraction_noted(lo, hi, &h);
                    s.v = v;
                    if let Some(n) = note {
                        ctx.info(with_metric_name(n, &s.labels));
                    }
                }
                drop_name(s);
            }
            check_unique(&v)?;
            Ok(Value::Vector(v))
        }
        other => Err(QueryError::Unsupported(format!("function {other}()"))),
    }
}

/// Labels identifying the target an info series describes.
const IDENTIFYING: [&str; 2] = ["instance", "job"];

/// `info(v, {selector})`: adds the data labels of info series (default
/// `target_info`) with the same `instance` and `job` to each sample.
/// The time `info()` reads its info series at: the data time of its
/// argument, following `@` and `offset` down through selectors, subqueries
/// (into their inner expression), functions and aggregations.
fn info_ref_time(ctx: &Ctx<'_>, e: &Expr, t: i64) -> i64 {
    use super::eval::{at_ms, offset_ms};
    match e {
        Expr::Paren(p) => info_ref_time(ctx, &p.expr, t),
        Expr::VectorSelector(vs) => {
            at_ms(&vs.at, ctx.start, ctx.end).unwrap_or(t).saturating_sub(offset_ms(&vs.offset))
        }
        Expr::MatrixSelector(ms) => {
            at_ms(&ms.vs.at, ctx.start, ctx.end).unwrap_or(t).saturating_sub(offset_ms(&ms.vs.offset))
        }
        Expr::Subquery(sq) => {
            let end = at_ms(&sq.at, ctx.start, ctx.end).unwrap_or(t).saturating_sub(offset_ms(&sq.offset));
            info_ref_time(ctx, &sq.expr, end)
        }
        Expr::Call(c) => {
            use promql_parser::parser::value::ValueType;
            match c.args.args.iter().find(|a| matches!(a.value_type(), ValueType::Vector | ValueType::Matrix)) {
                Some(a) => info_ref_time(ctx, a, t),
                None => t,
            }
        }
        Expr::Aggregate(a) => info_ref_time(ctx, &a.expr, t),
        _ => t,
    }
}

fn info(
    ctx: &Ctx<'_>,
    base: Vec<Sample>,
    sel: Option<&promql_parser::parser::VectorSelector>,
    t: i64,
) -> Result<Vec<Sample>, QueryError> {
    use cairn_wire::{MatchOp, Matcher};
    let mut name_ms = Vec::new();
    let mut data_ms = Vec::new();
    if let Some(vs) = sel {
        if let Some(n) = &vs.name {
            name_ms.push(Matcher::equal(METRIC_NAME, n.clone()));
        }
        for m in vs.matchers.matchers.iter().filter(|m| m.name != super::rewrite::EXT_LABEL) {
            let op = match m.op {
                PMatchOp::Equal => MatchOp::Equal,
                PMatchOp::NotEqual => MatchOp::NotEqual,
                PMatchOp::Re(_) => MatchOp::Regex,
                PMatchOp::NotRe(_) => MatchOp::NotRegex,
            };
            let mm =
                Matcher::new(op, m.name.clone(), m.value.clone()).map_err(|e| QueryError::BadData(e.to_string()))?;
            if m.name == METRIC_NAME { name_ms.push(mm) } else { data_ms.push(mm) }
        }
    }
    if name_ms.is_empty() {
        name_ms.push(Matcher::equal(METRIC_NAME, "target_info"));
    } else if !name_ms.iter().any(|m| matches!(m.op, MatchOp::Equal | MatchOp::Regex)) {
        // Only negative name matchers: they narrow the `*_info` metrics.
        name_ms.push(
            Matcher::new(MatchOp::Regex, METRIC_NAME, ".+_info").map_err(|e| QueryError::BadData(e.to_string()))?,
        );
    }
    let all: Vec<Matcher> = name_ms.iter().chain(&data_ms).cloned().collect();
    let lo = t.saturating_sub(ctx.lookback).saturating_add(1);
    // Info series present at t, with their latest sample time.
    let mut infos: Vec<(Labels, i64)> = Vec::new();
    let unlimited = cairn_store::metrics::SelectLimits { series: usize::MAX, samples: usize::MAX };
    let selected = ctx
        .store
        .select_mixed_limited(ctx.tenant, &all, lo, t, unlimited)
        .map_err(|_| QueryError::Execution("info(): too many info series".into()))?;
    for s in selected {
        // Info series hold floats (by convention 1), never histograms.
        if !s.histograms.is_empty() {
            return Err(QueryError::Execution(format!(
                "this should be an info metric, with float samples: {}",
                s.labels
            )));
        }
        if let Some(&(st, v)) = s.samples.last()
            && !cairn_wire::is_stale_nan(v)
        {
            infos.push((s.labels, st));
        }
    }
    let require_match = data_ms.iter().any(|m| !m.matches_empty());
    let data_names: Vec<&str> = data_ms.iter().map(|m| m.name.as_str()).collect();
    let mut out = Vec::with_capacity(base.len());
    for mut s in base {
        // Info series themselves are not enriched.
        if s.labels.get(METRIC_NAME).is_some() && name_ms.iter().all(|m| m.matches_labels(&s.labels)) {
            out.push(s);
            continue;
        }
        let id = |ls: &Labels| IDENTIFYING.map(|n| ls.get(n).unwrap_or("").to_string());
        let want = id(&s.labels);
        // Per info metric name, the series with the latest sample.
        let mut best: HashMap<&str, (&Labels, i64)> = HashMap::new();
        for (ls, st) in &infos {
            if id(ls) != want {
                continue;
            }
            let name = ls.get(METRIC_NAME).unwrap_or("");
            match best.get(name) {
                Some(&(_, bt)) if bt >= *st => {}
                _ => {
                    best.insert(name, (ls, *st));
                }
            }
        }
        if best.is_empty() {
            if !require_match {
                out.push(s);
            }
            continue;
        }
        let mut add: Vec<(String, String)> = Vec::new();
        for (ls, _) in best.values() {
            for l in ls.iter() {
                if l.name == METRIC_NAME || IDENTIFYING.contains(&l.name.as_str()) || s.labels.get(&l.name).is_some() {
                    continue;
                }
                if !data_names.is_empty() && !data_names.contains(&l.name.as_str()) {
                    continue;
                }
                match add.iter().find(|(n, _)| *n == l.name) {
                    None => add.push((l.name.clone(), l.value.clone())),
                    Some((_, v)) if *v != l.value => {
                        return Err(QueryError::Execution(format!(
                            "conflicting label: {:?} has values {v:?} and {:?} in different info metrics",
                            l.name, l.value
                        )));
                    }
                    Some(_) => {}
                }
            }
        }
        if !add.is_empty() {
            let pairs = s.labels.iter().map(|l| (l.name.clone(), l.value.clone())).chain(add);
            s.labels = Labels::from_pairs(pairs).map_err(|e| QueryError::Execution(e.to_string()))?;
        }
        out.push(s);
    }
    check_unique(&out)?;
    Ok(out)
}

/// Prometheus's `maybeAddMetricName`: `msg`, naming the series' metric
/// when it has one.
fn with_metric_name(msg: &str, labels: &Labels) -> String {
    match labels.get(METRIC_NAME) {
        Some(n) if !n.is_empty() => format!("{msg} for metric name {n:?}"),
        _ => msg.to_string(),
    }
}

/// Prometheus's `labels.FormatOpenMetricsFloat`: Go's `%g`, with `.0`
/// added to integral values.
fn open_metrics_float(v: f64) -> String {
    let s = cairn_wire::histogram::go_g(v);
    if v.is_finite() && !s.contains(['e', '.']) { format!("{s}.0") } else { s }
}

/// The input of `histogram_quantile(s)`, split as Prometheus's
/// `resetHistograms` does: native histogram samples, and classic buckets
/// grouped by their series without `le`. A classic group and a native
/// histogram of the same series cancel each other (with a warning).
struct HistInput {
    native: Vec<Sample>,
    /// (series labels without `le`, (upper bound, cumulative count)).
    classic: Vec<(Labels, Vec<(f64, f64)>)>,
}

fn split_histograms(ctx: &Ctx<'_>, v: Vec<Sample>) -> HistInput {
    let mut native = Vec::new();
    let mut index: HashMap<Labels, usize> = HashMap::new();
    let mut classic: Vec<(Labels, Vec<(f64, f64)>)> = Vec::new();
    for s in v {
        if s.h.is_some() {
            native.push(s);
            continue;
        }
        let le = s.labels.get("le").unwrap_or("");
        let Ok(ub) = parse_le(le) else {
            ctx.warn(with_metric_name(
                &format!("bucket label \"le\" is missing or has a malformed value of {le:?}"),
                &s.labels,
            ));
            continue;
        };
        let key = s.labels.without("le");
        let i = *index.entry(key.clone()).or_insert_with(|| {
            classic.push((key, Vec::new()));
            classic.len() - 1
        });
        classic[i].1.push((ub, s.v));
    }
    native.retain(|s| match index.get(&s.labels) {
        Some(&i) if !classic[i].1.is_empty() => {
            ctx.warn(with_metric_name("vector contains a mix of classic and native histograms", &s.labels));
            classic[i].1.clear();
            false
        }
        _ => true,
    });
    classic.retain(|c| !c.1.is_empty());
    HistInput { native, classic }
}

impl HistInput {
    /// The `q` quantile of every histogram, natives first; with `label`,
    /// that label set to the quantile on every result.
    fn quantiles(&self, ctx: &Ctx<'_>, q: f64, t: i64, label: Option<(&str, &str)>) -> Vec<Sample> {
        let mut out = Vec::with_capacity(self.native.len() + self.classic.len());
        let relabel = |ls: &Labels| match label {
            Some((n, v)) => set_label(ls, n, v),
            None => ls.clone(),
        };
        for s in &self.native {
            let Some(h) = s.h.as_deref() else { continue };
            let (v, note) = super::histfn::quantile_noted(q, h);
            if let Some(n) = note {
                ctx.info(with_metric_name(n, &s.labels));
            }
            let mut o = Sample { labels: relabel(&s.labels), t, v, drop_name: s.drop_name, h: None };
            drop_name(&mut o);
            out.push(o);
        }
        for (key, buckets) in &self.classic {
            let mut buckets = buckets.clone();
            let (v, forced) = bucket_quantile(q, &mut buckets);
            if forced {
                ctx.info(with_metric_name(
                    "input to histogram_quantile needed to be fixed for monotonicity (see https://prometheus.io/docs/prometheus/latest/querying/functions/#histogram_quantile)",
                    key,
                ));
            }
            out.push(Sample::new(super::drop_metric_name(&relabel(key)), t, v));
        }
        out
    }
}

fn parse_le(s: &str) -> Result<f64, ()> {
    match s.to_ascii_lowercase().trim_start_matches('+') {
        "inf" => Ok(f64::INFINITY),
        "-inf" => Ok(f64::NEG_INFINITY),
        "nan" => Ok(f64::NAN),
        other => other.parse::<f64>().map_err(|_| ()),
    }
}

/// Prometheus's `BucketQuantile`: the quantile, and whether the counts
/// had to be forced monotonic.
fn bucket_quantile(q: f64, b: &mut [(f64, f64)]) -> (f64, bool) {
    if q.is_nan() {
        return (f64::NAN, false);
    }
    if q < 0.0 {
        return (f64::NEG_INFINITY, false);
    }
    if q > 1.0 {
        return (f64::INFINITY, false);
    }
    b.sort_by(|x, y| x.0.partial_cmp(&y.0).unwrap_or(std::cmp::Ordering::Equal));
    if b.last().is_none_or(|l| l.0 != f64::INFINITY) {
        return (f64::NAN, false);
    }
    // Coalesce buckets with the same upper bound.
    let mut c: Vec<(f64, f64)> = Vec::with_capacity(b.len());
    for &(ub, n) in b.iter() {
        match c.last_mut() {
            Some(last) if last.0 == ub => last.1 += n,
            _ => c.push((ub, n)),
        }
    }
    // Ensure monotonic counts, ignoring tiny deltas.
    let mut prev = c[0].1;
    let mut forced = false;
    for x in c.iter_mut().skip(1) {
        let cur = x.1;
        if cur == prev {
            continue;
        }
        if ((cur - prev).abs() / (cur.abs() + prev.abs())) < 1e-12 {
            x.1 = prev;
            continue;
        }
        if cur < prev {
            x.1 = prev;
            forced = true;
            continue;
        }
        prev = cur;
    }
    if c.len() < 2 {
        return (f64::NAN, false);
    }
    let total = c[c.len() - 1].1;
    if total == 0.0 {
        return (f64::NAN, forced);
    }
    let mut rank = q * total;
    let n = c.len() - 1;
    let i = c[..n].partition_point(|x| x.1 < rank);
    if i == n {
        return (c[n - 1].0, forced);
    }
    if i == 0 && c[0].0 <= 0.0 {
        return (c[0].0, forced);
    }
    let (mut start, end, mut count) = (0.0, c[i].0, c[i].1);
    if i > 0 {
        start = c[i - 1].0;
        count -= c[i - 1].1;
        rank -= c[i - 1].1;
    }
    (start + (end - start) * (rank / count), forced)
}
