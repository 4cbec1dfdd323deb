//! Metric query evaluation with Loki's semantics.
//!
//! A query is evaluated at steps `start, start+step, …` up to and including
//! `end` (an instant query is one step at `time`). A range aggregation at
//! step `t` sees the samples with timestamps in `(t - offset - range,
//! t - offset]` — lower bound exclusive, upper bound inclusive, exactly as
//! Loki's range vector iterator loads them — and reports them at `t`.
//! Samples come from the log entries that pass the pipeline: `1` per line
//! (`count_over_time`, `rate`, `absent_over_time`), the byte length of the
//! line after the pipeline (`bytes_*`), or the unwrapped label's value.
//!
//! Steps are not aligned to the step width (Loki's default,
//! `align_queries_with_step: false`): the caller's `start` is the first step.
//!
//! Each expression evaluates to a value per step ([`StepValues`]); vector
//! aggregations and binary operators combine step by step.

use std::collections::HashMap;

use cairn_store::logs::{EntryRef, LogStore, Order, ScanRequest, TsBatch};
use cairn_wire::Labels;

use super::ast::{BinOp, Group, Grouping, LogRange, RangeOp, SampleExpr, Stage, UnwrapConv, VecOp, VectorMatching};
use super::ctl::QueryCtl;
use super::eval::CHECK_EVERY;
use super::pipeline::{
    ERROR_DETAILS_LABEL, ERROR_LABEL, LabelsBuilder, PipelineState, decolorize, metadata_names_any, parse_bytes,
    parse_go_duration, run_stages, stream_rejects,
};

/// Most steps a query may have, as in Loki.
pub const MAX_POINTS: i64 = 11_000;
/// Most series a range aggregation may build before it is refused.
pub const MAX_SERIES: usize = 500_000;

/// Why a metric query failed at evaluation time.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum EvalError {
    /// A sample carries `__error__` and the query did not filter it out.
    #[error(
        "pipeline error: '{error}' for series: '{series}'.\nUse a label filter to intentionally skip this error. (e.g | __error__!=\"{error}\").\nTo skip all potential errors you can match empty errors.(e.g __error__=\"\")\nThe label filter can also be specified after unwrap. (e.g | unwrap latency | __error__=\"\" )"
    )]
    Pipeline {
        /// The error label's value.
        error: String,
        /// The series, in Prometheus text form.
        series: String,
    },
    /// Two samples on the right of a one-to-one operation share matching labels.
    #[error(
        "found duplicate series for the match group {labels} on the right hand-side of the operation; many-to-many matching not allowed: matching labels must be unique on one side"
    )]
    ManyToMany {
        /// The matching labels.
        labels: String,
    },
    /// Two samples on the left of a one-to-one operation share matching labels.
    #[error("multiple matches for labels: many-to-one matching must be explicit (group_left/group_right)")]
    ManyToOne,
    /// A `group_left`/`group_right` result has two samples with the same labels.
    #[error("multiple matches for labels: grouping labels must ensure unique matches")]
    GroupingNotUnique,
    /// Two samples of one step ended up with the same labels.
    #[error("vector cannot contain metrics with the same labelset")]
    DuplicateLabelset,
    /// Too many steps.
    #[error(
        "exceeded maximum resolution of 11,000 points per timeseries. Try decreasing the query resolution (?step=XX)"
    )]
    TooManyPoints,
    /// Too many series.
    #[error("maximum number of series ({0}) reached for a single query")]
    TooManySeries(usize),
    /// Reading the stored logs failed (a damaged block): a server error.
    #[error("reading stored logs failed: {0}")]
    Store(String),
    /// The query ran past its deadline (`query.logql_timeout`); Loki's
    /// wording, answered with HTTP 504.
    #[error(
        "request timed out, decrease the duration of the request or add more label matchers (prefer exact match over regex match) to reduce the amount of data processed"
    )]
    Timeout,
}

/// Parameters of a metric query.
#[derive(Debug, Clone)]
pub struct MetricQuery<'a> {
    /// Tenant whose streams are read.
    pub tenant: &'a str,
    /// First step, ns.
    pub start: i64,
    /// Last step (inclusive), ns.
    pub end: i64,
    /// Step width, ns; 0 for an instant query.
    pub step: i64,
    /// Deadline and work counters.
    pub ctl: &'a QueryCtl,
}

impl MetricQuery<'_> {
    fn steps(&self) -> Result<Vec<i64>, EvalError> {
        if self.step <= 0 {
            return Ok(vec![self.start]);
        }
        let n = self.end.saturating_sub(self.start) / self.step + 1;
        if n > MAX_POINTS {
            return Err(EvalError::TooManyPoints);
        }
        Ok((0..n).map(|k| self.start.saturating_add(k * self.step)).collect())
    }
}

/// One sample of an instant vector.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// Series labels.
    pub labels: Labels,
    /// Value.
    pub value: f64,
}

/// One series of a matrix.
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    /// Series labels.
    pub labels: Labels,
    /// (timestamp ms, value), ascending.
    pub points: Vec<(i64, f64)>,
}

/// The result of a metric query.
#[derive(Debug, Clone, PartialEq)]
pub enum MetricValue {
    /// A number (instant query of a literal): (timestamp ms, value).
    Scalar(i64, f64),
    /// Instant query: the samples at the timestamp (ms).
    Vector(i64, Vec<Sample>),
    /// Range query: series ordered by labels.
    Matrix(Vec<Series>),
}

/// A value per step.
#[derive(Debug, Clone)]
enum StepValues {
    /// The same number at every step.
    Scalar(f64),
    /// A vector per step.
    Vectors(Vec<Vec<Sample>>),
}

/// Evaluates `expr` at an instant (`q.step == 0`) or over a range (a range
/// with `start == end` is one step and still answers a matrix, as in Loki).
pub fn eval_metric(store: &LogStore, expr: &SampleExpr, q: &MetricQuery<'_>) -> Result<MetricValue, EvalError> {
    let steps = q.steps()?;
    if q.ctl.expired() {
        return Err(EvalError::Timeout);
    }
    let v = eval(store, expr, q, &steps)?;
    let instant = q.step <= 0;
    let ms = |t: i64| t.div_euclid(1_000_000);
    match v {
        StepValues::Scalar(x) if instant => Ok(MetricValue::Scalar(ms(steps[0]), x)),
        StepValues::Scalar(x) => Ok(MetricValue::Matrix(vec![Series {
            labels: Labels::empty(),
            points: steps.iter().map(|&t| (ms(t), x)).collect(),
        }])),
        StepValues::Vectors(mut vs) if instant => {
            let mut v = vs.pop().unwrap_or_default();
            if !matches!(expr, SampleExpr::Vector { op: VecOp::Sort | VecOp::SortDesc, .. }) {
                v.sort_by(|a, b| a.labels.cmp(&b.labels));
            }
            Ok(MetricValue::Vector(ms(steps[0]), v))
        }
        StepValues::Vectors(vs) => {
            let mut by: HashMap<Labels, Vec<(i64, f64)>> = HashMap::new();
            for (t, v) in steps.iter().zip(vs) {
                for s in v {
                    by.entry(s.labels).or_default().push((ms(*t), s.value));
                }
            }
            let mut out: Vec<Series> = by.into_iter().map(|(labels, points)| Series { labels, points }).collect();
            out.sort_by(|a, b| a.labels.cmp(&b.labels));
            Ok(MetricValue::Matrix(out))
        }
    }
}

fn eval(store: &LogStore, expr: &SampleExpr, q: &MetricQuery<'_>, steps: &[i64]) -> Result<StepValues, EvalError> {
    match expr {
        SampleExpr::Literal(v) => Ok(StepValues::Scalar(*v)),
        SampleExpr::VectorLit(v) => {
            Ok(StepValues::Vectors(steps.iter().map(|_| vec![Sample { labels: Labels::empty(), value: *v }]).collect()))
        }
        SampleExpr::Range { op, param, range, grouping } => {
            eval_range(store, *op, *param, range, grouping.as_ref(), q, steps)
        }
        // `sum [by|without (…)] (count_over_time|rate|bytes_*(…))`: summing
        // per-stream counts equals counting per group, so the grouping is
        // pushed into sample extraction (as Loki does) and the full label
        // sets of parsed lines never become series.
        SampleExpr::Vector { op: VecOp::Sum, grouping, param: None, inner }
            if matches!(
                inner.as_ref(),
                SampleExpr::Range {
                    op: RangeOp::Count | RangeOp::Rate | RangeOp::Bytes | RangeOp::BytesRate,
                    grouping: None,
                    range: LogRange { unwrap: None, .. },
                    ..
                }
            ) =>
        {
            let SampleExpr::Range { op, param, range, .. } = inner.as_ref() else {
                unreachable!("guarded by the match arm");
            };
            let g = grouping.clone().unwrap_or(Grouping { without: false, labels: Vec::new() });
            let vs = match eval_range(store, *op, *param, range, Some(&g), q, steps)? {
                StepValues::Vectors(vs) => vs,
                StepValues::Scalar(_) => unreachable!("range aggregations yield vectors"),
            };
            let out = vs.into_iter().map(|v| vector_agg(VecOp::Sum, Some(&g), None, v)).collect::<Result<_, _>>()?;
            Ok(StepValues::Vectors(out))
        }
        SampleExpr::Vector { op, grouping, param, inner } => {
            let inner = eval(store, inner, q, steps)?;
            let vs = match inner {
                StepValues::Scalar(x) => {
                    steps.iter().map(|_| vec![Sample { labels: Labels::empty(), value: x }]).collect()
                }
                StepValues::Vectors(vs) => vs,
            };
            let out =
                vs.into_iter().map(|v| vector_agg(*op, grouping.as_ref(), *param, v)).collect::<Result<_, _>>()?;
            Ok(StepValues::Vectors(out))
        }
        SampleExpr::LabelReplace { inner, dst, replacement, src, regex, .. } => {
            let vs = match eval(store, inner, q, steps)? {
                StepValues::Scalar(x) => {
                    steps.iter().map(|_| vec![Sample { labels: Labels::empty(), value: x }]).collect()
                }
                StepValues::Vectors(vs) => vs,
            };
            let mut out = Vec::with_capacity(vs.len());
            for v in vs {
                let mut step: Vec<Sample> = v
                    .into_iter()
                    .map(|s| Sample { labels: label_replace(&s.labels, dst, replacement, src, regex), value: s.value })
                    .collect();
                step.sort_by(|a, b| a.labels.cmp(&b.labels));
                if step.windows(2).any(|w| w[0].labels == w[1].labels) {
                    return Err(EvalError::DuplicateLabelset);
                }
                out.push(step);
            }
            Ok(StepValues::Vectors(out))
        }
        SampleExpr::Binary { op, return_bool, matching, lhs, rhs } => {
            let l = eval(store, lhs, q, steps)?;
            let r = eval(store, rhs, q, steps)?;
            binary(*op, *return_bool, matching.as_ref(), l, r)
        }
    }
}

/// Prometheus's label_replace on one label set: when `regex` matches the
/// value of `src` ("" when absent), `dst` becomes the expanded replacement
/// (removed when that is empty); otherwise the labels are unchanged.
fn label_replace(labels: &Labels, dst: &str, replacement: &str, src: &str, regex: &regex::Regex) -> Labels {
    let value = labels.get(src).unwrap_or("");
    let Some(caps) = regex.captures(value) else {
        return labels.clone();
    };
    let mut res = String::new();
    caps.expand(replacement, &mut res);
    let mut pairs: Vec<(&str, &str)> =
        labels.iter().filter(|l| l.name != dst).map(|l| (l.name.as_str(), l.value.as_str())).collect();
    pairs.push((dst, res.as_str()));
    Labels::from_pairs(pairs).unwrap_or_else(|_| labels.clone())
}

/// A scalar operation; `None` for a comparison that is false without `bool`.
pub fn scalar_op(op: BinOp, a: f64, b: f64, return_bool: bool) -> Option<f64> {
    let cmp = |c: bool| {
        if return_bool {
            Some(if c { 1.0 } else { 0.0 })
        } else if c {
            Some(a)
        } else {
            None
        }
    };
    match op {
        BinOp::Add => Some(a + b),
        BinOp::Sub => Some(a - b),
        BinOp::Mul => Some(a * b),
        BinOp::Div => Some(a / b),
        BinOp::Mod => Some(a % b),
        BinOp::Pow => Some(a.powf(b)),
        BinOp::Eq => cmp(a == b),
        BinOp::Neq => cmp(a != b),
        BinOp::Gt => cmp(a > b),
        BinOp::Gte => cmp(a >= b),
        BinOp::Lt => cmp(a < b),
        BinOp::Lte => cmp(a <= b),
        BinOp::Or | BinOp::And | BinOp::Unless => Some(a),
    }
}

fn match_key(labels: &Labels, m: Option<&VectorMatching>) -> Labels {
    match m {
        None => labels.clone(),
        Some(m) if m.on => Labels::from_pairs(
            labels.iter().filter(|l| m.labels.contains(&l.name)).map(|l| (l.name.as_str(), l.value.as_str())),
        )
        .unwrap_or_default(),
        Some(m) => Labels::from_pairs(
            labels.iter().filter(|l| !m.labels.contains(&l.name)).map(|l| (l.name.as_str(), l.value.as_str())),
        )
        .unwrap_or_default(),
    }
}

fn binary(
    op: BinOp,
    return_bool: bool,
    matching: Option<&VectorMatching>,
    l: StepValues,
    r: StepValues,
) -> Result<StepValues, EvalError> {
    match (l, r) {
        (StepValues::Scalar(a), StepValues::Scalar(b)) => {
            Ok(StepValues::Scalar(scalar_op(op, a, b, true).unwrap_or(f64::NAN)))
        }
        (StepValues::Vectors(vs), StepValues::Scalar(b)) => Ok(StepValues::Vectors(
            vs.into_iter()
                .map(|v| {
                    v.into_iter()
                        .filter_map(|s| {
                            scalar_op(op, s.value, b, return_bool).map(|value| Sample { labels: s.labels, value })
                        })
                        .collect()
                })
                .collect(),
        )),
        (StepValues::Scalar(a), StepValues::Vectors(vs)) => Ok(StepValues::Vectors(
            vs.into_iter()
                .map(|v| {
                    v.into_iter()
                        .filter_map(|s| {
                            // A filtering comparison keeps the vector's value.
                            scalar_op(op, a, s.value, return_bool).map(|value| Sample {
                                value: if op.is_comparison() && !return_bool { s.value } else { value },
                                labels: s.labels,
                            })
                        })
                        .collect()
                })
                .collect(),
        )),
        (StepValues::Vectors(lv), StepValues::Vectors(rv)) => {
            let out = lv
                .into_iter()
                .zip(rv)
                .map(|(l, r)| vector_binary(op, return_bool, matching, l, r))
                .collect::<Result<_, _>>()?;
            Ok(StepValues::Vectors(out))
        }
    }
}

fn vector_binary(
    op: BinOp,
    return_bool: bool,
    matching: Option<&VectorMatching>,
    l: Vec<Sample>,
    r: Vec<Sample>,
) -> Result<Vec<Sample>, EvalError> {
    let rkeys: Vec<Labels> = r.iter().map(|s| match_key(&s.labels, matching)).collect();
    match op {
        BinOp::And => {
            return Ok(l.into_iter().filter(|s| rkeys.contains(&match_key(&s.labels, matching))).collect());
        }
        BinOp::Unless => {
            return Ok(l.into_iter().filter(|s| !rkeys.contains(&match_key(&s.labels, matching))).collect());
        }
        BinOp::Or => {
            let lkeys: Vec<Labels> = l.iter().map(|s| match_key(&s.labels, matching)).collect();
            let mut out = l;
            out.extend(r.into_iter().zip(rkeys).filter(|(_, k)| !lkeys.contains(k)).map(|(s, _)| s));
            return Ok(out);
        }
        _ => {}
    }
    if let Some(m) = matching
        && let Some(group) = &m.group
    {
        return grouped_binary(op, return_bool, m, group, l, r);
    }
    let mut rmap: HashMap<Labels, &Sample> = HashMap::new();
    for (s, k) in r.iter().zip(rkeys) {
        if rmap.insert(k.clone(), s).is_some() {
            return Err(EvalError::ManyToMany { labels: k.to_string() });
        }
    }
    let mut seen: HashMap<Labels, ()> = HashMap::new();
    let mut out = Vec::new();
    for s in l {
        let k = match_key(&s.labels, matching);
        let Some(rs) = rmap.get(&k) else { continue };
        if seen.insert(k.clone(), ()).is_some() {
            return Err(EvalError::ManyToOne);
        }
        let Some(mut value) = scalar_op(op, s.value, rs.value, return_bool) else { continue };
        if op.is_comparison() && !return_bool {
            value = s.value;
        }
        let labels = match matching {
            Some(m) => match_key(&s.labels, Some(m)),
            None => s.labels,
        };
        out.push(Sample { labels, value });
    }
    Ok(out)
}

/// `group_left` / `group_right`, as Prometheus evaluates them: the "one"
/// side must be unique per match group; each "many" sample keeps its
/// labels plus the included labels copied from its "one" match; the
/// operands keep their written order.
fn grouped_binary(
    op: BinOp,
    return_bool: bool,
    m: &VectorMatching,
    group: &Group,
    l: Vec<Sample>,
    r: Vec<Sample>,
) -> Result<Vec<Sample>, EvalError> {
    let (many, one, include, swapped) = match group {
        Group::Left(inc) => (l, r, inc, false),
        Group::Right(inc) => (r, l, inc, true),
    };
    let mut one_map: HashMap<Labels, &Sample> = HashMap::new();
    for s in &one {
        let k = match_key(&s.labels, Some(m));
        if one_map.insert(k.clone(), s).is_some() {
            return Err(EvalError::ManyToMany { labels: k.to_string() });
        }
    }
    let mut out: Vec<Sample> = Vec::new();
    let mut seen: HashMap<Labels, ()> = HashMap::new();
    for s in many {
        let k = match_key(&s.labels, Some(m));
        let Some(o) = one_map.get(&k) else { continue };
        let (vl, vr) = if swapped { (o.value, s.value) } else { (s.value, o.value) };
        let Some(mut value) = scalar_op(op, vl, vr, return_bool) else { continue };
        if op.is_comparison() && !return_bool {
            value = vl;
        }
        let mut pairs: Vec<(&str, &str)> = s
            .labels
            .iter()
            .filter(|x| !include.contains(&x.name))
            .map(|x| (x.name.as_str(), x.value.as_str()))
            .collect();
        for name in include {
            if let Some(v) = o.labels.get(name) {
                pairs.push((name, v));
            }
        }
        let labels = Labels::from_pairs(pairs).unwrap_or_default();
        if seen.insert(labels.clone(), ()).is_some() {
            return Err(EvalError::GroupingNotUnique);
        }
        out.push(Sample { labels, value });
    }
    Ok(out)
}

fn group_labels(labels: &Labels, g: Option<&Grouping>) -> Labels {
    match g {
        None => Labels::empty(),
        Some(g) => {
            let keep = |n: &str| g.labels.iter().any(|x| x == n) != g.without;
            Labels::from_pairs(labels.iter().filter(|l| keep(&l.name)).map(|l| (l.name.as_str(), l.value.as_str())))
                .unwrap_or_default()
        }
    }
}

fn vector_agg(op: VecOp, g: Option<&Grouping>, param: Option<f64>, v: Vec<Sample>) -> Result<Vec<Sample>, EvalError> {
    match op {
        VecOp::Sort => {
            let mut v = v;
            v.sort_by(|a, b| a.value.total_cmp(&b.value));
            return Ok(v);
        }
        VecOp::SortDesc => {
            let mut v = v;
            v.sort_by(|a, b| b.value.total_cmp(&a.value));
            return Ok(v);
        }
        _ => {}
    }
    // Groups in order of first appearance.
    let mut order: Vec<Labels> = Vec::new();
    let mut groups: HashMap<Labels, Vec<Sample>> = HashMap::new();
    for s in v {
        let k = group_labels(&s.labels, g);
        groups
            .entry(k.clone())
            .or_insert_with(|| {
                order.push(k);
                Vec::new()
            })
            .push(s);
    }
    let mut out = Vec::new();
    for k in order {
        let Some(mut members) = groups.remove(&k) else { continue };
        let vals: Vec<f64> = members.iter().map(|s| s.value).collect();
        let n = vals.len() as f64;
        let value = match op {
            VecOp::Sum => vals.iter().sum(),
            VecOp::Avg => vals.iter().sum::<f64>() / n,
            VecOp::Min => vals.iter().copied().fold(f64::NAN, |a, b| if a.is_nan() || b < a { b } else { a }),
            VecOp::Max => vals.iter().copied().fold(f64::NAN, |a, b| if a.is_nan() || b > a { b } else { a }),
            VecOp::Count => n,
            VecOp::Stddev | VecOp::Stdvar => {
                let var = variance(&vals);
                if op == VecOp::Stddev { var.sqrt() } else { var }
            }
            VecOp::Topk | VecOp::Bottomk => {
                let k = param.unwrap_or(0.0);
                if k < 1.0 {
                    continue;
                }
                let k = (k as usize).min(members.len());
                if op == VecOp::Topk {
                    members.sort_by(|a, b| b.value.total_cmp(&a.value));
                } else {
                    members.sort_by(|a, b| a.value.total_cmp(&b.value));
                }
                out.extend(members.into_iter().take(k));
                continue;
            }
            VecOp::Sort | VecOp::SortDesc => continue,
        };
        out.push(Sample { labels: k, value });
    }
    Ok(out)
}

fn variance(vals: &[f64]) -> f64 {
    let (mut count, mut mean, mut aux) = (0.0, 0.0, 0.0);
    for &v in vals {
        count += 1.0;
        let delta = v - mean;
        mean += delta / count;
        aux += delta * (v - mean);
    }
    aux / count
}

/// True when no stage can add, change or remove labels or drop entries by
/// label: line filters, `decolorize`, and `drop` of only the error labels
/// (which nothing before could have set).
fn pipeline_keeps_labels(stages: &[Stage]) -> bool {
    stages.iter().all(|s| match s {
        Stage::LineFilter(_) | Stage::Decolorize => true,
        Stage::Drop(items) => {
            items.iter().all(|it| it.matcher.is_none() && (it.name == ERROR_LABEL || it.name == ERROR_DETAILS_LABEL))
        }
        _ => false,
    })
}

/// The labels `absent_over_time` reports: the selector's `=` matchers.
fn absent_labels(range: &LogRange) -> Labels {
    let mut pairs: Vec<(&str, &str)> = Vec::new();
    let mut dup: Vec<&str> = Vec::new();
    for m in &range.selector.matchers {
        if m.op != cairn_wire::MatchOp::Equal {
            continue;
        }
        if pairs.iter().any(|(n, _)| *n == m.name) {
            dup.push(&m.name);
        }
        pairs.push((&m.name, &m.value));
    }
    pairs.retain(|(n, _)| !dup.contains(n));
    Labels::from_pairs(pairs).unwrap_or_default()
}

/// Evenly spaced steps, for counting without keeping samples.
#[derive(Clone, Copy)]
struct Grid {
    first: i64,
    step: i64,
    n: usize,
    offset: i64,
    range: i64,
}

impl Grid {
    fn new(steps: &[i64], offset: i64, range: i64) -> Option<Grid> {
        let first = *steps.first()?;
        let step = steps.get(1).map_or(1, |s| s - first);
        if step <= 0 || steps.windows(2).any(|w| w[1] - w[0] != step) {
            return None;
        }
        Some(Grid { first, step, n: steps.len(), offset, range })
    }

    /// The steps whose window `(t - offset - range, t - offset]` holds
    /// `ts`: `k_lo..k_hi`.
    fn span(&self, ts: i64) -> (usize, usize) {
        let ceil =
            |x: i128| -> i128 { x.div_euclid(self.step as i128) + i128::from(x.rem_euclid(self.step as i128) != 0) };
        let lo = ts as i128 + self.offset as i128 - self.first as i128;
        let k_lo = ceil(lo).clamp(0, self.n as i128) as usize;
        let k_hi = ceil(lo + self.range as i128).clamp(0, self.n as i128) as usize;
        (k_lo, k_hi)
    }
}

impl Grid {
    /// Adds sorted timestamps to `c`, each with value 1, or with its line
    /// length when `lens` is given. A sample's step span changes only at
    /// window edges, so each run of timestamps sharing a span is found by
    /// binary search and added at once: no work per timestamp for counts.
    fn add_sorted(&self, c: &mut Cells, ts: &[i64], lens: Option<&[u32]>) {
        let edge = |k: usize| self.first as i128 + k as i128 * self.step as i128;
        let mut i = 0;
        while i < ts.len() {
            let (lo, hi) = self.span(ts[i]);
            // the span holds while t + offset <= edge(lo) and t + offset + range <= edge(hi)
            let lim_lo = if lo < self.n { edge(lo) - self.offset as i128 } else { i128::MAX };
            let lim_hi = if hi < self.n { edge(hi) - self.offset as i128 - self.range as i128 } else { i128::MAX };
            let lim = lim_lo.min(lim_hi);
            let end = i + ts[i..].partition_point(|&t| (t as i128) <= lim).max(1);
            if lo < hi {
                let n = (end - i) as i64;
                let sum = match lens {
                    Some(l) => l.get(i..end).map_or(0.0, |l| l.iter().map(|&x| f64::from(x)).sum()),
                    None => n as f64,
                };
                c.cnt[lo] += n;
                c.cnt[hi] -= n;
                c.sum[lo] += sum;
                c.sum[hi] -= sum;
            }
            i = end;
        }
    }
}

/// Per-step count and sum of one series as difference arrays (`n + 1`
/// cells): adding a sample touches two cells whatever the range.
struct Cells {
    cnt: Vec<i64>,
    sum: Vec<f64>,
}

/// Samples gathered per output series.
enum Acc {
    /// Every sample, for functions that need them.
    Points(HashMap<Labels, Vec<(i64, f64)>>),
    /// Counts and sums per step, for `count_over_time`, `rate`, `bytes_*`
    /// and `absent_over_time` (integer values, so the sums are exact).
    Cells(Grid, HashMap<Labels, Cells>),
}

impl Acc {
    fn len(&self) -> usize {
        match self {
            Acc::Points(m) => m.len(),
            Acc::Cells(_, m) => m.len(),
        }
    }

    fn contains(&self, l: &Labels) -> bool {
        match self {
            Acc::Points(m) => m.contains_key(l),
            Acc::Cells(_, m) => m.contains_key(l),
        }
    }

    /// The accumulator of series `key`, created if new; `None` when that
    /// would exceed [`MAX_SERIES`].
    fn series(&mut self, k: &Labels) -> Option<AccSeries<'_>> {
        if !self.contains(k) && self.len() >= MAX_SERIES {
            return None;
        }
        // (insert, then look up: a conditional return of `get_mut`'s borrow
        // does not pass the borrow checker)
        match self {
            Acc::Points(m) => {
                if !m.contains_key(k) {
                    m.insert(k.clone(), Vec::new());
                }
                m.get_mut(k).map(AccSeries::Points)
            }
            Acc::Cells(grid, m) => {
                if !m.contains_key(k) {
                    m.insert(k.clone(), Cells { cnt: vec![0; grid.n + 1], sum: vec![0.0; grid.n + 1] });
                }
                let grid = *grid;
                m.get_mut(k).map(|c| AccSeries::Cells(grid, c))
            }
        }
    }

    /// Adds samples `(ts, value)` to series `key`; false when that would
    /// exceed [`MAX_SERIES`].
    fn add(&mut self, key: &Labels, samples: impl Iterator<Item = (i64, f64)>) -> bool {
        match self.series(key) {
            None => false,
            Some(AccSeries::Points(v)) => {
                v.extend(samples);
                true
            }
            Some(AccSeries::Cells(grid, c)) => {
                for (ts, v) in samples {
                    let (lo, hi) = grid.span(ts);
                    if lo < hi {
                        c.cnt[lo] += 1;
                        c.cnt[hi] -= 1;
                        c.sum[lo] += v;
                        c.sum[hi] -= v;
                    }
                }
                true
            }
        }
    }

    /// Adds `n` samples of total value `sum`, all at timestamps with the
    /// same step span as `ts` (a whole chunk from the block index), to
    /// series `key`; false when that would exceed [`MAX_SERIES`]. Only the
    /// per-step accumulator takes these (the scan is asked for them only
    /// then).
    fn add_run(&mut self, key: &Labels, ts: i64, n: i64, sum: f64) -> bool {
        match self.series(key) {
            None => false,
            Some(AccSeries::Cells(grid, c)) => {
                let (lo, hi) = grid.span(ts);
                if lo < hi {
                    c.cnt[lo] += n;
                    c.cnt[hi] -= n;
                    c.sum[lo] += sum;
                    c.sum[hi] -= sum;
                }
                true
            }
            Some(AccSeries::Points(_)) => true,
        }
    }

    /// Adds sorted timestamps to series `key`, each with value 1 or, given
    /// `lens`, its line length; false when that would exceed [`MAX_SERIES`].
    fn add_sorted(&mut self, key: &Labels, ts: &[i64], lens: Option<&[u32]>) -> bool {
        match self.series(key) {
            None => false,
            Some(AccSeries::Cells(grid, c)) => {
                grid.add_sorted(c, ts, lens);
                true
            }
            Some(AccSeries::Points(v)) => {
                let value = |i: usize| lens.map_or(1.0, |l| l.get(i).map_or(0.0, |&x| f64::from(x)));
                v.extend(ts.iter().enumerate().map(|(i, &t)| (t, value(i))));
                true
            }
        }
    }
}

/// One series of an [`Acc`].
enum AccSeries<'a> {
    Points(&'a mut Vec<(i64, f64)>),
    Cells(Grid, &'a mut Cells),
}

/// One range aggregation being evaluated: the pipeline run over entries,
/// and where their samples go.
struct RangeEval<'a> {
    op: RangeOp,
    range: &'a LogRange,
    grouping: Option<&'a Grouping>,
    static_labels: bool,
    /// Leading line filters, run on the raw line before any label work.
    prefix: usize,
    state: PipelineState,
    acc: Acc,
    failure: Option<EvalError>,
    ctl: &'a QueryCtl,
}

impl RangeEval<'_> {
    /// Counts `n` entries of `bytes` line bytes; past the deadline, records
    /// the timeout as the failure. True when evaluation may go on.
    fn tick(&mut self, n: usize, bytes: u64) -> bool {
        self.ctl.add_lines(n as u64, bytes);
        // Called before each chunk or part of at most CHECK_EVERY entries.
        if self.ctl.expired() {
            self.failure = Some(EvalError::Timeout);
        }
        self.failure.is_none()
    }

    fn key<'l>(&self, labels: &'l Labels) -> std::borrow::Cow<'l, Labels> {
        match self.grouping {
            Some(_) => std::borrow::Cow::Owned(group_labels(labels, self.grouping)),
            None => std::borrow::Cow::Borrowed(labels),
        }
    }

    /// Samples of entries that only counts or line lengths matter for
    /// (no metadata, a pipeline that neither filters nor changes them);
    /// `ts` is sorted.
    fn plain(&mut self, labels: &Labels, ts: &[i64], lens: &[u32]) {
        if self.failure.is_some() || !self.tick(ts.len(), lens.iter().map(|&l| l as u64).sum()) {
            return;
        }
        let ctl = self.ctl;
        let labels = &*ctl.with_implied_level(labels);
        self.ctl.add_post_filter(ts.len() as u64);
        let bytes = matches!(self.op, RangeOp::Bytes | RangeOp::BytesRate);
        let key = self.key(labels);
        if !self.acc.add_sorted(&key, ts, bytes.then_some(lens)) {
            self.failure = Some(EvalError::TooManySeries(MAX_SERIES));
        }
    }

    /// A whole chunk of `n` entries and `bytes` line bytes whose
    /// timestamps all share the step span of `ts` (see [`LogStore::scan_counts`]).
    fn whole(&mut self, labels: &Labels, ts: i64, n: u64, bytes: u64) {
        let bytes_op = matches!(self.op, RangeOp::Bytes | RangeOp::BytesRate);
        if self.failure.is_some() || !self.tick(n as usize, if bytes_op { bytes } else { 0 }) {
            return;
        }
        let ctl = self.ctl;
        let labels = &*ctl.with_implied_level(labels);
        self.ctl.add_post_filter(n);
        let key = self.key(labels);
        let sum = if bytes_op { bytes as f64 } else { n as f64 };
        if !self.acc.add_run(&key, ts, n as i64, sum) {
            self.failure = Some(EvalError::TooManySeries(MAX_SERIES));
        }
    }

    /// Samples of a batch of entries, checking the deadline every
    /// [`CHECK_EVERY`] entries.
    fn batch(&mut self, labels: &Labels, entries: &[EntryRef<'_>]) {
        let ctl = self.ctl;
        let labels = &*ctl.with_implied_level(labels);
        for part in entries.chunks(CHECK_EVERY) {
            if self.failure.is_some() || !self.tick(part.len(), part.iter().map(|e| e.line.len() as u64).sum()) {
                return;
            }
            self.batch_part(labels, part);
        }
    }

    fn batch_part(&mut self, labels: &Labels, entries: &[EntryRef<'_>]) {
        // Fast path: entries without structured metadata through a pipeline
        // that cannot change labels all land in one series per stream.
        let mut fast: Vec<(i64, f64)> = Vec::new();
        // Entries a label filter rejects on the stream's own labels.
        let pipeline = &self.range.selector.pipeline;
        let rejects = if self.static_labels { None } else { stream_rejects(&pipeline[self.prefix..], labels) };
        for e in entries {
            if let Some(names) = &rejects
                && !metadata_names_any(e.metadata.iter(), names)
            {
                continue;
            }
            if self.static_labels && e.metadata.is_empty() {
                let mut line = std::borrow::Cow::Borrowed(e.line);
                let mut keep = true;
                for st in &self.range.selector.pipeline {
                    match st {
                        Stage::LineFilter(f) if !f.keep(&line) => {
                            keep = false;
                            break;
                        }
                        Stage::Decolorize => line = std::borrow::Cow::Owned(decolorize(&line)),
                        _ => {}
                    }
                }
                if keep {
                    let bytes = matches!(self.op, RangeOp::Bytes | RangeOp::BytesRate);
                    fast.push((e.ts, if bytes { line.len() as f64 } else { 1.0 }));
                }
                continue;
            }
            self.entry(labels, e);
            if self.failure.is_some() {
                return;
            }
        }
        if !fast.is_empty() {
            self.ctl.add_post_filter(fast.len() as u64);
            let key = self.key(labels);
            if !self.acc.add(&key, fast.into_iter()) {
                self.failure = Some(EvalError::TooManySeries(MAX_SERIES));
            }
        }
    }

    fn entry(&mut self, labels: &Labels, e: &EntryRef<'_>) {
        let pipeline = &self.range.selector.pipeline;
        if !pipeline[..self.prefix].iter().all(|s| matches!(s, Stage::LineFilter(f) if f.keep(e.line))) {
            return;
        }
        let mut lbs = LabelsBuilder::new(labels, e.metadata.iter());
        let Some(line) = run_stages(&pipeline[self.prefix..], &mut self.state, &mut lbs, e.line, e.ts) else {
            return;
        };
        let value = match (&self.range.unwrap, self.op) {
            (Some(u), _) => {
                let raw = lbs.get(&u.label).unwrap_or("").to_string();
                let conv = match u.conv {
                    UnwrapConv::Float => raw.trim().parse::<f64>().ok(),
                    UnwrapConv::Duration => parse_go_duration(&raw),
                    UnwrapConv::Bytes => parse_bytes(&raw),
                };
                // Loki adds the unwrapped label to the `without` set
                // unless a `by` grouping decides the labels.
                if self.grouping.is_none_or(|g| g.without) {
                    lbs.del(&u.label);
                }
                let v = match conv {
                    Some(v) => v,
                    None => {
                        if !lbs.has_err() {
                            lbs.set_err("SampleExtractionErr", format!("can't parse {raw:?} as a number"));
                        }
                        0.0
                    }
                };
                if !u.post_filters.iter().all(|f| f.process(&mut lbs)) {
                    return;
                }
                v
            }
            (None, RangeOp::Bytes | RangeOp::BytesRate) => line.len() as f64,
            (None, _) => 1.0,
        };
        let mut out_labels = lbs.labels();
        if let Some(err) = out_labels.get(ERROR_LABEL) {
            self.failure = Some(EvalError::Pipeline {
                error: err.to_string(),
                series: out_labels.without(ERROR_DETAILS_LABEL).to_string(),
            });
            return;
        }
        if self.grouping.is_some() {
            out_labels = group_labels(&out_labels, self.grouping);
        }
        self.ctl.add_post_filter(1);
        if !self.acc.add(&out_labels, std::iter::once((e.ts, value))) {
            self.failure = Some(EvalError::TooManySeries(MAX_SERIES));
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn eval_range(
    store: &LogStore,
    op: RangeOp,
    param: Option<f64>,
    range: &LogRange,
    grouping: Option<&Grouping>,
    q: &MetricQuery<'_>,
    steps: &[i64],
) -> Result<StepValues, EvalError> {
    let first = steps.first().copied().unwrap_or(q.start);
    let last = steps.last().copied().unwrap_or(q.end);
    // Samples in (first - offset - range, last - offset]; scan is [a, b).
    let scan_start = first.saturating_sub(range.offset).saturating_sub(range.range).saturating_add(1);
    let scan_end = last.saturating_sub(range.offset).saturating_add(1);
    let pipeline = &range.selector.pipeline;
    let static_labels = range.unwrap.is_none() && pipeline_keeps_labels(pipeline);
    let countable = range.unwrap.is_none()
        && matches!(op, RangeOp::Count | RangeOp::Rate | RangeOp::Bytes | RangeOp::BytesRate | RangeOp::Absent);
    let grid = Grid::new(steps, range.offset, range.range).filter(|_| countable);
    let acc = match grid {
        Some(g) => Acc::Cells(g, HashMap::new()),
        None => Acc::Points(HashMap::new()),
    };
    let mut ev = RangeEval {
        op,
        range,
        grouping,
        static_labels,
        prefix: pipeline.iter().take_while(|s| matches!(s, Stage::LineFilter(_))).count(),
        state: PipelineState::default(),
        acc,
        failure: None,
        ctl: q.ctl,
    };
    let (tenant, matchers) = (q.tenant, &range.selector.matchers);
    let res = if static_labels && pipeline.iter().all(|s| matches!(s, Stage::Drop(_))) {
        // Nothing looks at the lines: timestamps and line lengths suffice,
        // and chunks are read without their lines (entries carrying
        // structured metadata, which becomes labels, come whole).
        // A chunk no step window cuts adds the same to every window
        // holding it: its count and size come from the block index.
        let bytes = matches!(op, RangeOp::Bytes | RangeOp::BytesRate);
        let same_span = |a: i64, b: i64| grid.is_some_and(|g| g.span(a) == g.span(b));
        let whole: Option<&(dyn Fn(i64, i64) -> bool + Sync)> = grid.is_some().then_some(&same_span);
        store.scan_counts(tenant, matchers, scan_start, scan_end, bytes, whole, &mut |labels, batch| {
            if ev.failure.is_some() {
                return;
            }
            match batch {
                TsBatch::Entries { entries: Some(es), .. } => ev.batch(labels, es),
                TsBatch::Entries { ts, lens, entries: None } => ev.plain(labels, ts, lens),
                TsBatch::Whole { min_ts, count, bytes, .. } => ev.whole(labels, min_ts, count, bytes),
            }
        })
    } else {
        let owned = range.selector.required_substrings();
        let needles: Vec<&[u8]> = owned.iter().map(|n| &n[..]).collect();
        let req = ScanRequest {
            tenant,
            matchers,
            start: scan_start,
            end: scan_end,
            needles: &needles,
            order: Order::Forward,
        };
        store.scan_entries(&req, &mut |labels, entries| {
            ev.batch(labels, entries);
            // A failure ends the scan: no chunk lies before i64::MIN.
            ev.failure.is_some().then_some(i64::MIN)
        })
    };
    q.ctl.add_scan(&res.map_err(|e| EvalError::Store(e.to_string()))?);
    if let Some(f) = ev.failure {
        return Err(f);
    }
    let range_secs = range.range as f64 / 1e9;
    let absent = absent_labels(range);
    let mut out: Vec<Vec<Sample>> = vec![Vec::new(); steps.len()];
    match ev.acc {
        Acc::Cells(grid, map) => {
            let mut series: Vec<(Labels, Cells)> = map.into_iter().collect();
            series.sort_by(|a, b| a.0.cmp(&b.0));
            for (labels, c) in &series {
                let (mut n, mut sum) = (0i64, 0.0f64);
                for (k, v) in out.iter_mut().enumerate().take(grid.n) {
                    n += c.cnt[k];
                    sum += c.sum[k];
                    if n > 0 {
                        let value = match op {
                            RangeOp::Count => n as f64,
                            RangeOp::Rate => n as f64 / range_secs,
                            RangeOp::Bytes => sum,
                            RangeOp::BytesRate => sum / range_secs,
                            _ => 1.0,
                        };
                        v.push(Sample { labels: labels.clone(), value });
                    }
                }
            }
        }
        Acc::Points(map) => {
            let mut series: Vec<(Labels, Vec<(i64, f64)>)> = map.into_iter().collect();
            for (_, pts) in &mut series {
                pts.sort_by_key(|p| p.0);
            }
            series.sort_by(|a, b| a.0.cmp(&b.0));
            for (&t, v) in steps.iter().zip(out.iter_mut()) {
                let hi_t = t.saturating_sub(range.offset);
                let lo_t = hi_t.saturating_sub(range.range);
                for (labels, pts) in &series {
                    let lo = pts.partition_point(|p| p.0 <= lo_t);
                    let hi = pts.partition_point(|p| p.0 <= hi_t);
                    if lo >= hi {
                        continue;
                    }
                    let value = range_fn(op, param, &pts[lo..hi], range_secs, range.unwrap.is_some());
                    v.push(Sample { labels: labels.clone(), value });
                }
            }
        }
    }
    if op == RangeOp::Absent {
        for v in &mut out {
            *v = if v.is_empty() { vec![Sample { labels: absent.clone(), value: 1.0 }] } else { Vec::new() };
        }
    }
    Ok(StepValues::Vectors(out))
}

fn range_fn(op: RangeOp, param: Option<f64>, w: &[(i64, f64)], range_secs: f64, unwrapped: bool) -> f64 {
    let sum = || w.iter().map(|p| p.1).sum::<f64>();
    match op {
        RangeOp::Count => w.len() as f64,
        RangeOp::Rate if !unwrapped => w.len() as f64 / range_secs,
        RangeOp::Rate | RangeOp::BytesRate => sum() / range_secs,
        RangeOp::Bytes | RangeOp::Sum => sum(),
        RangeOp::Absent => 1.0,
        RangeOp::Avg => {
            let mut mean = 0.0;
            for (i, p) in w.iter().enumerate() {
                let c = (i + 1) as f64;
                mean += p.1 / c - mean / c;
            }
            mean
        }
        RangeOp::Min => w.iter().map(|p| p.1).fold(f64::NAN, |a, b| if a.is_nan() || b < a { b } else { a }),
        RangeOp::Max => w.iter().map(|p| p.1).fold(f64::NAN, |a, b| if a.is_nan() || b > a { b } else { a }),
        RangeOp::Stdvar => variance(&w.iter().map(|p| p.1).collect::<Vec<_>>()),
        RangeOp::Stddev => variance(&w.iter().map(|p| p.1).collect::<Vec<_>>()).sqrt(),
        RangeOp::Quantile => {
            let q = param.unwrap_or(f64::NAN);
            let mut vals: Vec<f64> = w.iter().map(|p| p.1).collect();
            quantile(q, &mut vals)
        }
        RangeOp::First => w.first().map(|p| p.1).unwrap_or(f64::NAN),
        RangeOp::Last => w.last().map(|p| p.1).unwrap_or(f64::NAN),
        RangeOp::RateCounter => extrapolated_rate(w, range_secs),
    }
}

/// Prometheus's quantile: weighted average of the two nearest ranks.
fn quantile(q: f64, vals: &mut [f64]) -> f64 {
    if vals.is_empty() || q.is_nan() {
        return f64::NAN;
    }
    if q < 0.0 {
        return f64::NEG_INFINITY;
    }
    if q > 1.0 {
        return f64::INFINITY;
    }
    vals.sort_by(|a, b| a.total_cmp(b));
    let n = vals.len() as f64;
    let rank = q * (n - 1.0);
    let lower = rank.floor().max(0.0);
    let upper = (lower + 1.0).min(n - 1.0);
    let weight = rank - rank.floor();
    vals[lower as usize] * (1.0 - weight) + vals[upper as usize] * weight
}

/// `rate_counter`: Prometheus's extrapolated counter rate over the window
/// (timestamps in ns, computed in seconds).
fn extrapolated_rate(w: &[(i64, f64)], range_secs: f64) -> f64 {
    if w.len() < 2 {
        return 0.0;
    }
    let (t0, v0) = w[0];
    let (tn, vn) = w[w.len() - 1];
    let mut result = vn - v0;
    let mut last = 0.0;
    for p in w {
        if p.1 < last {
            result += last;
        }
        last = p.1;
    }
    let range_start = t0 as f64 / 1e9 - range_secs;
    let range_end = tn as f64 / 1e9;
    let mut to_start = t0 as f64 / 1e9 - range_start;
    let to_end = range_end - tn as f64 / 1e9;
    let sampled = (tn - t0) as f64 / 1e9;
    let avg = sampled / (w.len() - 1) as f64;
    if result > 0.0 && v0 >= 0.0 {
        let to_zero = sampled * (v0 / result);
        if to_zero < to_start {
            to_start = to_zero;
        }
    }
    let threshold = avg * 1.1;
    let mut interval = sampled;
    interval += if to_start < threshold { to_start } else { avg / 2.0 };
    interval += if to_end < threshold { to_end } else { avg / 2.0 };
    if sampled == 0.0 {
        return 0.0;
    }
    result * (interval / sampled) / range_secs
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The run-wise `add_sorted` equals adding each timestamp by `span`.
    #[test]
    fn sorted_runs_match_per_sample_spans() {
        let mut x: u64 = 0x2545_f491_4f6c_dd1d;
        let mut rnd = move |m: i64| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x % m as u64) as i64
        };
        for _ in 0..300 {
            let step = 1 + rnd(50);
            let grid = Grid {
                first: rnd(200) - 100,
                step,
                n: 1 + rnd(30) as usize,
                offset: rnd(40) - 20,
                range: 1 + rnd(120),
            };
            let mut ts: Vec<i64> = (0..rnd(60)).map(|_| rnd(1000) - 300).collect();
            ts.sort();
            let lens: Vec<u32> = ts.iter().map(|_| rnd(100) as u32).collect();
            let mut a = Cells { cnt: vec![0; grid.n + 1], sum: vec![0.0; grid.n + 1] };
            grid.add_sorted(&mut a, &ts, Some(&lens));
            let mut b = Cells { cnt: vec![0; grid.n + 1], sum: vec![0.0; grid.n + 1] };
            for (&t, &l) in ts.iter().zip(&lens) {
                let (lo, hi) = grid.span(t);
                if lo < hi {
                    b.cnt[lo] += 1;
                    b.cnt[hi] -= 1;
                    b.sum[lo] += f64::from(l);
                    b.sum[hi] -= f64::from(l);
                }
            }
            let prefix = |c: &Cells| {
                let (mut n, mut s) = (0, 0.0);
                c.cnt
                    .iter()
                    .zip(&c.sum)
                    .map(|(&dn, &ds)| {
                        n += dn;
                        s += ds;
                        (n, s)
                    })
                    .collect::<Vec<_>>()
            };
            assert_eq!(prefix(&a), prefix(&b));
            // and against the definition
            for (k, (n, _)) in prefix(&a).into_iter().enumerate().take(grid.n) {
                let t = grid.first + k as i64 * grid.step - grid.offset;
                let want = ts.iter().filter(|&&x| x > t - grid.range && x <= t).count() as i64;
                assert_eq!(n, want);
            }
        }
    }

    use crate::logql::{Expr, parse};
    use cairn_store::WalOptions;
    use cairn_store::logs::{Entry, StreamEntries};

    const S: i64 = 1_000_000_000;

    fn store() -> (tempfile::TempDir, LogStore) {
        let d = tempfile::tempdir().unwrap();
        let s = LogStore::open(d.path(), WalOptions::default()).unwrap();
        let mk = |job: &str, lines: &[(i64, &str)]| StreamEntries {
            labels: Labels::from_pairs([("job", job)]).unwrap(),
            entries: lines.iter().map(|&(ts, l)| Entry { ts: ts * S, line: l.into(), metadata: vec![] }).collect(),
        };
        s.push(
            "t",
            vec![
                mk("a", &[(10, "level=info d=1"), (20, "level=error d=3"), (30, "level=info d=5"), (40, "x")]),
                mk("b", &[(15, "level=error d=2"), (25, "level=error d=10ms")]),
            ],
        )
        .unwrap();
        (d, s)
    }

    fn run(s: &LogStore, q: &str, start: i64, end: i64, step: i64) -> Result<MetricValue, EvalError> {
        let Expr::Sample(e) = parse(q).unwrap() else { panic!("not a metric query: {q}") };
        eval_metric(
            s,
            &e,
            &MetricQuery { tenant: "t", start: start * S, end: end * S, step: step * S, ctl: &QueryCtl::default() },
        )
    }

    fn matrix(v: MetricValue) -> Vec<(String, Vec<(i64, f64)>)> {
        match v {
            MetricValue::Matrix(m) => m.into_iter().map(|s| (s.labels.to_string(), s.points)).collect(),
            other => panic!("not a matrix: {other:?}"),
        }
    }

    /// Counts and sizes of chunks no step window cuts come from the block
    /// index (`scan_counts`): the answers equal counting every entry, with
    /// chunks of every span, structured metadata (which becomes labels, so
    /// those chunks must be read) on one stream, offsets and steps shorter
    /// and longer than the range.
    #[test]
    fn whole_chunks_count_like_their_entries() {
        let d = tempfile::tempdir().unwrap();
        let s = LogStore::open(d.path(), WalOptions::default()).unwrap();
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut rnd = move |m: u64| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x % m
        };
        let mut all: Vec<(&str, i64, usize, bool)> = Vec::new();
        let mut t = [0i64; 3];
        for round in 0..40 {
            let mut batch = Vec::new();
            for (k, job) in ["a", "b", "m"].into_iter().enumerate() {
                let mut entries = Vec::new();
                for _ in 0..rnd(6) {
                    t[k] += 1 + rnd(40) as i64;
                    let len = rnd(30) as usize;
                    let meta = job == "m" && rnd(2) == 0;
                    let metadata = if meta { vec![("k".to_string(), "v".to_string())] } else { vec![] };
                    entries.push(Entry { ts: t[k] * S, line: "x".repeat(len), metadata });
                    all.push((job, t[k], len, meta));
                }
                let labels = Labels::from_pairs([("job", job)]).unwrap();
                batch.push(StreamEntries { labels, entries });
            }
            s.push("t", batch).unwrap();
            if round % 3 != 2 {
                s.flush().unwrap();
            }
        }
        let end = t.iter().max().copied().unwrap_or(0) + 50;
        for _ in 0..60 {
            let (step, range, offset) = (1 + rnd(90) as i64, 1 + rnd(120) as i64, rnd(3) as i64 * rnd(40) as i64);
            let start = rnd(200) as i64;
            for (f, bytes) in [("count_over_time", false), ("bytes_over_time", true)] {
                let q = format!(r#"sum by (job, k) ({f}({{job=~".+"}}[{range}s] offset {offset}s))"#);
                let got = matrix(run(&s, &q, start, end, step).unwrap());
                let mut want: std::collections::BTreeMap<String, Vec<(i64, f64)>> = Default::default();
                let mut at = start;
                while at <= end {
                    let (lo, hi) = (at - offset - range, at - offset);
                    let mut per: std::collections::BTreeMap<String, f64> = Default::default();
                    for &(job, _, len, meta) in all.iter().filter(|e| e.1 > lo && e.1 <= hi) {
                        let key =
                            if meta { format!(r#"{{job="{job}", k="v"}}"#) } else { format!(r#"{{job="{job}"}}"#) };
                        *per.entry(key).or_default() += if bytes { len as f64 } else { 1.0 };
                    }
                    for (k, v) in per {
                        want.entry(k).or_default().push((at * 1000, v));
                    }
                    at += step;
                }
                let want: Vec<(String, Vec<(i64, f64)>)> = want.into_iter().collect();
                let mut got = got;
                got.sort_by(|a, b| a.0.cmp(&b.0));
                assert_eq!(got, want, "{q} start {start} step {step}");
            }
        }
    }

    #[test]
    fn window_is_left_open_right_closed() {
        let (_d, s) = store();
        // At t=20 with [10s]: (10, 20] holds a@20 only.
        let m = matrix(run(&s, r#"count_over_time({job="a"}[10s])"#, 10, 40, 10).unwrap());
        assert_eq!(m, vec![(r#"{job="a"}"#.into(), vec![(10_000, 1.0), (20_000, 1.0), (30_000, 1.0), (40_000, 1.0)])]);
        // offset shifts the window back but keeps the step timestamp
        let m = matrix(
            run(&s, r#"count_over_time({job="a"}[10s] offset 10s)"#, 20, 20, 0)
                .map(|v| match v {
                    MetricValue::Vector(t, v) => {
                        MetricValue::Matrix(vec![Series { labels: v[0].labels.clone(), points: vec![(t, v[0].value)] }])
                    }
                    o => o,
                })
                .unwrap(),
        );
        assert_eq!(m, vec![(r#"{job="a"}"#.into(), vec![(20_000, 1.0)])]);
    }

    #[test]
    fn aggregations_and_binary() {
        let (_d, s) = store();
        let m =
            matrix(run(&s, r#"sum by (level) (count_over_time({job=~"a|b"} | logfmt [1m]))"#, 60, 120, 60).unwrap());
        assert_eq!(
            m,
            vec![
                (r#"{}"#.into(), vec![(60_000, 1.0)]),
                (r#"{level="error"}"#.into(), vec![(60_000, 3.0)]),
                (r#"{level="info"}"#.into(), vec![(60_000, 2.0)])
            ]
        );
        let MetricValue::Vector(_, v) = run(&s, "vector(1)+vector(1)", 60, 60, 0).unwrap() else { panic!() };
        assert_eq!(v, vec![Sample { labels: Labels::empty(), value: 2.0 }]);
        assert_eq!(run(&s, "1+2*3", 5, 5, 0).unwrap(), MetricValue::Scalar(5000, 7.0));
        let MetricValue::Vector(_, v) = run(&s, r#"rate({job="a"}[40s]) * 40"#, 40, 40, 0).unwrap() else { panic!() };
        assert_eq!(v[0].value, 4.0); // (0s, 40s] holds the lines at 10, 20, 30 and 40
        let MetricValue::Vector(_, v) =
            run(&s, r#"sum(count_over_time({job=~"a|b"}[1m])) > bool 5"#, 60, 60, 0).unwrap()
        else {
            panic!()
        };
        assert_eq!(v[0].value, 1.0);
        let MetricValue::Vector(_, v) = run(&s, r#"topk(1, count_over_time({job=~"a|b"}[1m]))"#, 60, 60, 0).unwrap()
        else {
            panic!()
        };
        assert_eq!(v, vec![Sample { labels: Labels::from_pairs([("job", "a")]).unwrap(), value: 4.0 }]);
    }

    #[test]
    fn unwrap_and_errors() {
        let (_d, s) = store();
        let q = r#"sum_over_time({job="a"} | logfmt | unwrap d [1m])"#;
        let e = run(&s, q, 60, 60, 0).unwrap_err();
        assert!(matches!(e, EvalError::Pipeline { .. }), "{e}");
        let q = r#"max_over_time({job=~"a|b"} | logfmt | unwrap d | __error__="" [1m]) by (level)"#;
        let MetricValue::Vector(_, v) = run(&s, q, 60, 60, 0).unwrap() else { panic!() };
        assert_eq!(v.iter().map(|s| s.value).collect::<Vec<_>>(), vec![3.0, 5.0]);
        let q = r#"sum_over_time({job="b"} | logfmt | unwrap duration(d) [1m])"#;
        let e = run(&s, q, 60, 60, 0).unwrap_err();
        assert!(e.to_string().contains("SampleExtractionErr"), "{e}");
        let MetricValue::Vector(_, v) = run(&s, r#"absent_over_time({job="zzz"}[1m])"#, 60, 60, 0).unwrap() else {
            panic!()
        };
        assert_eq!(v, vec![Sample { labels: Labels::from_pairs([("job", "zzz")]).unwrap(), value: 1.0 }]);
        assert_eq!(run(&s, r#"count_over_time({job="a"}[1m])"#, 0, 100_000, 1), Err(EvalError::TooManyPoints));
        // extreme times and offsets saturate instead of overflowing
        let e = match parse(r#"count_over_time({job="a"}[9000000000s] offset 9000000000s)"#).unwrap() {
            Expr::Sample(e) => e,
            Expr::Log(_) => unreachable!(),
        };
        for (start, end, step) in [(i64::MIN, i64::MAX, i64::MAX), (i64::MIN, i64::MIN, 0), (i64::MAX, i64::MAX, 1)] {
            let _ = eval_metric(&s, &e, &MetricQuery { tenant: "t", start, end, step, ctl: &QueryCtl::default() });
        }
    }

    /// Mutated queries that still parse are evaluated: errors, never panics.
    #[test]
    fn evaluating_mutants_never_panics() {
        let (_d, s) = store();
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let alphabet: Vec<char> = "{}()[],=!~|\"` abcdj0123456789.<>+-*/^%_".chars().collect();
        let seeds = [
            r#"sum by (level) (rate({job=~"a|b"} | logfmt | d > 2 [10s] offset 5s)) / on(level) vector(1)"#,
            r#"quantile_over_time(0.5, {job="a"} | logfmt | line_format "{{.d | lower}}" | unwrap duration(d) | __error__="" [20s]) by (job)"#,
            r#"topk(2, count_over_time({job=~".+"} | pattern "<a> <b>" | label_format c="{{ .a | repeat 3 }}" [30s])) > bool 1"#,
            r#"rate_counter({job="a"} | regexp "d=(?P<n>\\d+)" | unwrap n [30s]) or absent_over_time({job="z"}[1m])"#,
        ];
        let mut evaluated = 0;
        for _ in 0..3000 {
            let mut c: Vec<char> = seeds[(next() as usize) % seeds.len()].chars().collect();
            for _ in 0..1 + next() % 2 {
                let i = (next() as usize) % c.len();
                c[i] = alphabet[(next() as usize) % alphabet.len()];
            }
            let q: String = c.into_iter().collect();
            if let Ok(Expr::Sample(e)) = parse(&q) {
                evaluated += 1;
                let step = [0, S, 7 * S][(next() % 3) as usize];
                let _ = eval_metric(
                    &s,
                    &e,
                    &MetricQuery { tenant: "t", start: 0, end: 60 * S, step, ctl: &QueryCtl::default() },
                );
            }
        }
        assert!(evaluated > 100, "only {evaluated} mutants parsed");
    }
}
