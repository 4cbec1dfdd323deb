//! Series-at-a-time evaluation of range queries.
//!
//! The step evaluator ([`Ctx::eval`]) evaluates the whole expression at
//! every step: per step and series it searches the prefetched samples,
//! builds a `Sample` and hashes label sets. For the shapes dashboards use
//! (selectors, range functions of a matrix selector, `sum`/`avg`/`count`/
//! `min`/`max`/`group` aggregations, arithmetic and comparisons with
//! one-to-one matching) this module evaluates each node once for all steps
//! instead: a selector walks each series' samples and the steps together
//! (two pointers), a range function slides its window over them, an
//! aggregation computes each series' group once and accumulates into
//! per-group arrays indexed by step, a binary operator matches series once.
//!
//! Answers are the step evaluator's, bit for bit: the same functions
//! compute values, and values are combined in the same order. Whatever
//! this module does not cover (histograms, subqueries, other functions,
//! set operators, `group_left`, series that would collide, …) makes it
//! return `None`, and the query runs through the step evaluator.

use cairn_wire::{Labels, METRIC_NAME, is_stale_nan};
use promql_parser::parser::{AggregateExpr, Expr};

use super::aggregate::{Mean, group_labels};
use super::eval::{Ctx, Window, at_ms, ext_of, offset_ms};
use super::functions::{kahan_inc, plain_range_fn};
use super::{FxMap, QueryError, Series, drop_metric_name};
use cairn_store::metrics::SelectedSeries;

/// One series of a node's value over the query's steps.
pub(crate) struct StepSeries {
    /// Labels (the metric name still in them when `drop_name`).
    pub labels: Labels,
    /// The name is to be dropped from the final result.
    pub drop_name: bool,
    /// (step index, value), ascending step index.
    pub pts: Vec<(u32, f64)>,
}

/// A node's value over all steps. The series of a vector have distinct
/// labels (names pending a drop included).
pub(crate) enum RangeValue {
    /// One value per step.
    Scalar(Vec<f64>),
    /// Series present at some of the steps.
    Vector(Vec<StepSeries>),
}

/// The steps of a range query: `start + i * step` for `i < n`.
#[derive(Clone, Copy)]
pub(crate) struct Steps {
    pub start: i64,
    pub step: i64,
    pub n: usize,
}

impl Steps {
    fn at(&self, i: usize) -> i64 {
        self.start.saturating_add(self.step.saturating_mul(i as i64))
    }
}

/// Evaluates `e` over the steps series-at-a-time, or `None` when the
/// expression (or the data it selected) needs the step evaluator.
pub(crate) fn range_eval(ctx: &Ctx<'_>, e: &Expr, steps: Steps) -> Result<Option<Vec<Series>>, QueryError> {
    let Some(v) = node(ctx, e, steps)? else {
        return Ok(None);
    };
    let mut out = Vec::new();
    let mut points = 0usize;
    match v {
        RangeValue::Scalar(vals) => {
            points = vals.len();
            let pts = vals.into_iter().enumerate().map(|(i, v)| (steps.at(i), v)).collect();
            out.push(Series::floats(Labels::empty(), pts));
        }
        RangeValue::Vector(series) => {
            let mut seen: FxMap<Labels, ()> = FxMap::default();
            for s in series {
                if s.pts.is_empty() {
                    continue;
                }
                let labels = if s.drop_name { drop_metric_name(&s.labels) } else { s.labels };
                // Two series the same once names are dropped: the step
                // evaluator merges or rejects them step by step.
                if seen.insert(labels.clone(), ()).is_some() {
                    return Ok(None);
                }
                points += s.pts.len();
                let pts = s.pts.into_iter().map(|(i, v)| (steps.at(i as usize), v)).collect();
                out.push(Series::floats(labels, pts));
            }
        }
    }
    ctx.check_samples(points)?;
    out.sort_by(|a, b| a.labels.cmp(&b.labels));
    #[cfg(test)]
    ANSWERED.with(|c| c.set(c.get() + 1));
    Ok(Some(out))
}

#[cfg(test)]
thread_local! {
    /// Range queries this thread answered here (tests check the fast path
    /// is taken).
    pub(crate) static ANSWERED: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

fn check_deadline(ctx: &Ctx<'_>) -> Result<(), QueryError> {
    if ctx.deadline.is_some_and(|d| std::time::Instant::now() > d) {
        return Err(QueryError::Timeout);
    }
    Ok(())
}

/// The series a selector read (prefetched into `ctx.cache`) and, per step,
/// the time it is read at (`@` and `offset` applied); `None` when it read
/// native histograms or start timestamps, which the step evaluator handles.
fn selected<'c>(
    ctx: &'c Ctx<'_>,
    vs: &promql_parser::parser::VectorSelector,
    steps: Steps,
) -> Option<(&'c [SelectedSeries], Vec<i64>)> {
    let key = vs as *const _ as usize;
    let series = ctx.cache.get(&key).map(Vec::as_slice).unwrap_or(&[]);
    if series.iter().any(|s| !s.histograms.is_empty()) || ctx.st.contains_key(&key) {
        return None;
    }
    let at = at_ms(&vs.at, ctx.start, ctx.end);
    let off = offset_ms(&vs.offset);
    Some((series, (0..steps.n).map(|i| at.unwrap_or(steps.at(i)).saturating_sub(off)).collect()))
}

fn node(ctx: &Ctx<'_>, e: &Expr, steps: Steps) -> Result<Option<RangeValue>, QueryError> {
    check_deadline(ctx)?;
    match e {
        Expr::NumberLiteral(n) => Ok(Some(RangeValue::Scalar(vec![n.val; steps.n]))),
        Expr::Paren(p) => node(ctx, &p.expr, steps),
        Expr::Unary(u) => Ok(node(ctx, &u.expr, steps)?.map(|v| match v {
            RangeValue::Scalar(vals) => RangeValue::Scalar(vals.into_iter().map(|v| -v).collect()),
            RangeValue::Vector(mut series) => {
                for s in &mut series {
                    s.drop_name = true;
                    s.pts.iter_mut().for_each(|p| p.1 = -p.1);
                }
                RangeValue::Vector(series)
            }
        })),
        Expr::VectorSelector(vs) => {
            if ext_of(vs).is_some() {
                return Ok(None);
            }
            let Some((series, rts)) = selected(ctx, vs, steps) else {
                return Ok(None);
            };
            let mut out = Vec::with_capacity(series.len());
            for s in series {
                let samples = &s.samples;
                let mut pts = Vec::with_capacity(steps.n);
                // Index of the first sample after the step's time.
                let mut j = 0usize;
                for (i, &rt) in rts.iter().enumerate() {
                    while j < samples.len() && samples[j].0 <= rt {
                        j += 1;
                    }
                    if j == 0 {
                        continue;
                    }
                    let (st, sv) = samples[j - 1];
                    if st > rt.saturating_sub(ctx.lookback) && !is_stale_nan(sv) {
                        pts.push((i as u32, sv));
                    }
                }
                out.push(StepSeries { labels: s.labels.clone(), drop_name: false, pts });
            }
            Ok(Some(RangeValue::Vector(out)))
        }
        Expr::Call(c) => {
            let Some((f, keep_name)) = plain_range_fn(c.func.name) else {
                return Ok(None);
            };
            let Some(Expr::MatrixSelector(ms)) = c.args.args.first().map(|a| unparen(a)) else {
                return Ok(None);
            };
            if c.args.args.len() != 1 || ext_of(&ms.vs).is_some() {
                return Ok(None);
            }
            let Some((series, rts)) = selected(ctx, &ms.vs, steps) else {
                return Ok(None);
            };
            let range = ms.range.as_millis() as i64;
            let mut out = Vec::with_capacity(series.len());
            let mut buf: Vec<(i64, f64)> = Vec::new();
            for s in series {
                check_deadline(ctx)?;
                // Windows never hold stale markers: drop them once.
                let samples: &[(i64, f64)] = if s.samples.iter().any(|p| is_stale_nan(p.1)) {
                    buf.clear();
                    buf.extend(s.samples.iter().copied().filter(|p| !is_stale_nan(p.1)));
                    &buf
                } else {
                    &s.samples
                };
                let mut pts = Vec::with_capacity(steps.n);
                let (mut lo, mut hi) = (0usize, 0usize);
                for (i, &rt) in rts.iter().enumerate() {
                    let from = rt.saturating_sub(range);
                    while lo < samples.len() && samples[lo].0 <= from {
                        lo += 1;
                    }
                    hi = hi.max(lo);
                    while hi < samples.len() && samples[hi].0 <= rt {
                        hi += 1;
                    }
                    if hi > lo
                        && let Some(v) = f(&samples[lo..hi], Window { end: rt, range })
                    {
                        pts.push((i as u32, v));
                    }
                }
                out.push(StepSeries { labels: s.labels.clone(), drop_name: !keep_name, pts });
            }
            Ok(Some(RangeValue::Vector(out)))
        }
        Expr::Aggregate(a) => aggregate(ctx, a, steps),
        Expr::Binary(b) => {
            let Some(l) = node(ctx, &b.lhs, steps)? else {
                return Ok(None);
            };
            let Some(r) = node(ctx, &b.rhs, steps)? else {
                return Ok(None);
            };
            super::binary::range_binary(b, l, r)
        }
        _ => Ok(None),
    }
}

fn unparen(e: &Expr) -> &Expr {
    match e {
        Expr::Paren(p) => unparen(&p.expr),
        other => other,
    }
}

/// Accumulators of one aggregation group, one slot per step.
enum Acc {
    Sum(Vec<(f64, f64)>),
    Avg(Vec<Mean>),
    Count(Vec<f64>),
    Group,
    MinMax(Vec<f64>, bool),
}

fn aggregate(ctx: &Ctx<'_>, a: &AggregateExpr, steps: Steps) -> Result<Option<RangeValue>, QueryError> {
    let op = a.op.to_string();
    if a.param.is_some() || !["sum", "avg", "count", "group", "min", "max"].contains(&op.as_str()) {
        return Ok(None);
    }
    let Some(RangeValue::Vector(input)) = node(ctx, &a.expr, steps)? else {
        return Ok(None);
    };
    let m = a.modifier.as_ref();
    let mut index: FxMap<Labels, usize> = FxMap::default();
    // (labels, drop_name, any member present at the step, accumulators)
    let mut groups: Vec<(Labels, Option<bool>, Vec<bool>, Acc)> = Vec::new();
    for s in input {
        if s.pts.is_empty() {
            continue;
        }
        let key = group_labels(&s.labels, m);
        let g = match index.get(&key) {
            Some(&g) => g,
            None => {
                let acc = match op.as_str() {
                    "sum" => Acc::Sum(vec![(0.0, 0.0); steps.n]),
                    "avg" => Acc::Avg(vec![Mean::default(); steps.n]),
                    "count" => Acc::Count(vec![0.0; steps.n]),
                    "group" => Acc::Group,
                    _ => Acc::MinMax(vec![0.0; steps.n], op == "min"),
                };
                index.insert(key.clone(), groups.len());
                groups.push((key, None, vec![false; steps.n], acc));
                groups.len() - 1
            }
        };
        let (key, drop, has, acc) = &mut groups[g];
        // The group's pending name drop is its members' at each step: only
        // uniform members make it the same at every step (it matters only
        // when the key keeps the name).
        match drop {
            None => *drop = Some(s.drop_name),
            Some(d) if *d != s.drop_name => {
                if key.get(METRIC_NAME).is_some() {
                    return Ok(None);
                }
                *d |= s.drop_name;
            }
            Some(_) => {}
        }
        for &(i, v) in &s.pts {
            let i = i as usize;
            let first = !has[i];
            has[i] = true;
            match acc {
                Acc::Sum(x) => x[i] = kahan_inc(v, x[i].0, x[i].1),
                Acc::Avg(x) => x[i].add(v),
                Acc::Count(x) => x[i] += 1.0,
                Acc::Group => {}
                Acc::MinMax(x, is_min) => {
                    let cur = x[i];
                    if first || cur.is_nan() || (*is_min && v < cur) || (!*is_min && v > cur) {
                        x[i] = v;
                    }
                }
            }
        }
    }
    let out = groups
        .into_iter()
        .map(|(labels, drop, has, acc)| {
            let value = |i: usize| match &acc {
                Acc::Sum(x) => {
                    let (s, c) = x[i];
                    if c.is_finite() { s + c } else { s }
                }
                Acc::Avg(x) => x[i].value(),
                Acc::Count(x) => x[i],
                Acc::Group => 1.0,
                Acc::MinMax(x, _) => x[i],
            };
            let pts = has.iter().enumerate().filter(|(_, h)| **h).map(|(i, _)| (i as u32, value(i))).collect();
            StepSeries { labels, drop_name: drop.unwrap_or(false), pts }
        })
        .collect();
    Ok(Some(RangeValue::Vector(out)))
}
