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
use super::eval::{Ctx, ST_RANGE_FUNCS, Window, at_ms, ext_of, matcher_groups, offset_ms};
use super::functions::{PlainRangeFn, kahan_inc, plain_range_fn};
use super::{FxMap, QueryError, Series, drop_metric_name};
use cairn_store::metrics::SeriesBuf;

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

/// Takes one series of a node's value, `(labels, drop_name, points)`;
/// `Ok(false)` stops the evaluation (the step evaluator takes over).
type SeriesSink<'a> = dyn FnMut(&Labels, bool, &[(u32, f64)]) -> Result<bool, QueryError> + 'a;

/// How a selector node reads its samples at each step.
#[derive(Clone, Copy)]
enum Read {
    /// An instant vector selector: the newest sample in the lookback.
    Instant,
    /// A range function of a matrix selector; `st`: one that reads start
    /// timestamps where the series have them.
    Range { f: PlainRangeFn, range: i64, st: bool },
}

/// Calls `f(labels, drop_name, points)` with each series of a selector
/// node's value over the steps, in label order. The series come from the
/// prefetched selection (`ctx.cache`) or, when the query streams, from the
/// store one at a time: each series' chunks are decoded into one reused
/// buffer and only chunks some step reads are decoded. `Ok(false)`: the
/// data needs the step evaluator (native histograms) or `f` declined.
fn selector_series(
    ctx: &Ctx<'_>,
    vs: &promql_parser::parser::VectorSelector,
    read: Read,
    drop_name: bool,
    steps: Steps,
    f: &mut SeriesSink<'_>,
) -> Result<bool, QueryError> {
    let at = at_ms(&vs.at, ctx.start, ctx.end);
    let off = offset_ms(&vs.offset);
    // Per step, the time the selector is read at (ascending).
    let rts: Vec<i64> = (0..steps.n).map(|i| at.unwrap_or(steps.at(i)).saturating_sub(off)).collect();
    let window = match read {
        Read::Instant => ctx.lookback,
        Read::Range { range, .. } => range,
    };
    let mut pts: Vec<(u32, f64)> = Vec::with_capacity(steps.n);
    let mut clean: Vec<(i64, f64)> = Vec::new();
    let mut eval = |samples: &[(i64, f64)], pts: &mut Vec<(u32, f64)>| {
        pts.clear();
        match read {
            Read::Instant => {
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
                    if st > rt.saturating_sub(window) && !is_stale_nan(sv) {
                        pts.push((i as u32, sv));
                    }
                }
            }
            Read::Range { f, range, .. } => {
                // Windows never hold stale markers: drop them once.
                let samples: &[(i64, f64)] = if samples.iter().any(|p| is_stale_nan(p.1)) {
                    clean.clear();
                    clean.extend(samples.iter().copied().filter(|p| !is_stale_nan(p.1)));
                    &clean
                } else {
                    samples
                };
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
            }
        }
    };
    let key = vs as *const _ as usize;
    if let Some(series) = ctx.cache.get(&key) {
        // Native histograms and start timestamps: the step evaluator.
        if series.iter().any(|s| !s.histograms.is_empty()) || ctx.st.contains_key(&key) {
            return Ok(false);
        }
        for s in series {
            check_deadline(ctx)?;
            eval(&s.samples, &mut pts);
            if !f(&s.labels, drop_name, &pts)? {
                return Ok(false);
            }
        }
        return Ok(true);
    }
    if !ctx.stream {
        return Ok(true); // selected nothing
    }
    // The range `Ctx::prefetch` would have read.
    let groups = matcher_groups(vs)?;
    let [matchers] = groups.as_slice() else {
        return Ok(false);
    };
    let (lo, hi) = ctx.effective(&vs.at, off, ctx.start, ctx.end);
    let (mint, maxt) = (lo.saturating_sub(window).saturating_add(1), hi);
    if matches!(read, Read::Range { st: true, .. })
        && !ctx.store.series(&cairn_store::metrics::st_tenant(ctx.tenant), matchers, mint, maxt).is_empty()
    {
        // Series with start timestamps (read by the step evaluator).
        return Ok(false);
    }
    let stream = ctx.store.stream(ctx.tenant, matchers, mint, maxt);
    let mut series = stream.iter();
    // A chunk is read when some step's window `(rt - window, rt]` meets it:
    // samples outside every window change no step's value.
    let wanted = |min_ts: i64, max_ts: i64| {
        let i = rts.partition_point(|&t| t < min_ts);
        i < rts.len() && rts[i].saturating_sub(window) < max_ts
    };
    let mut buf = SeriesBuf::default();
    loop {
        check_deadline(ctx)?;
        let labels = match series.next_into(&wanted, &mut buf) {
            Ok(Some(l)) => l,
            Ok(None) => return Ok(true),
            Err(e) => return Err(QueryError::Execution(format!("reading metric blocks: {e}"))),
        };
        if !buf.histograms.is_empty() {
            return Ok(false);
        }
        ctx.streamed_series.set(ctx.streamed_series.get() + 1);
        ctx.streamed.set(ctx.streamed.get().saturating_add(buf.samples.len()));
        if ctx.series.saturating_add(ctx.streamed_series.get()) > ctx.max_series {
            return Err(QueryError::TooManySeries { max_series: ctx.max_series });
        }
        ctx.check_samples(0)?;
        eval(&buf.samples, &mut pts);
        if !f(labels, drop_name, &pts)? {
            return Ok(false);
        }
    }
}

/// A selector node's read: the selector, how it reads, and whether the
/// result drops the metric name; `None` for other nodes.
fn as_selector(e: &Expr) -> Option<(&promql_parser::parser::VectorSelector, Read, bool)> {
    match e {
        Expr::Paren(p) => as_selector(&p.expr),
        Expr::VectorSelector(vs) => ext_of(vs).is_none().then_some((vs, Read::Instant, false)),
        Expr::Call(c) => {
            let (f, keep_name) = plain_range_fn(c.func.name)?;
            let Some(Expr::MatrixSelector(ms)) = c.args.args.first().map(|a| unparen(a)) else {
                return None;
            };
            if c.args.args.len() != 1 || ext_of(&ms.vs).is_some() {
                return None;
            }
            let st = ST_RANGE_FUNCS.contains(&c.func.name);
            Some((&ms.vs, Read::Range { f, range: ms.range.as_millis() as i64, st }, !keep_name))
        }
        _ => None,
    }
}

/// Calls `f(labels, drop_name, points)` with each series of `e`'s value:
/// a selector node's series one at a time as they are read, any other
/// node's after it is evaluated. `Ok(false)`: `e` needs the step evaluator
/// (or is a scalar) or `f` declined.
fn each_series(ctx: &Ctx<'_>, e: &Expr, steps: Steps, f: &mut SeriesSink<'_>) -> Result<bool, QueryError> {
    if let Some((vs, read, drop_name)) = as_selector(e) {
        return selector_series(ctx, vs, read, drop_name, steps, f);
    }
    match node(ctx, e, steps)? {
        Some(RangeValue::Vector(series)) => {
            for s in &series {
                if !f(&s.labels, s.drop_name, &s.pts)? {
                    return Ok(false);
                }
            }
            Ok(true)
        }
        _ => Ok(false),
    }
}

/// Whether `e` has a shape this module evaluates, with every selector
/// readable as one stream (one matcher group): then the query need not
/// prefetch its selections (the data may still send it to the step
/// evaluator).
pub(crate) fn streamable(e: &Expr) -> bool {
    // (Checked on the parsed selector: building the matchers compiles
    // their regexes, which the evaluation does once more.)
    let one_group = |vs: &promql_parser::parser::VectorSelector| vs.matchers.or_matchers.is_empty();
    if let Some((vs, _, _)) = as_selector(e) {
        return one_group(vs);
    }
    match e {
        Expr::NumberLiteral(_) => true,
        Expr::Paren(p) => streamable(&p.expr),
        Expr::Unary(u) => streamable(&u.expr),
        Expr::Aggregate(a) => {
            a.param.is_none()
                && ["sum", "avg", "count", "group", "min", "max"].contains(&a.op.to_string().as_str())
                && streamable(&a.expr)
        }
        Expr::Binary(b) => super::binary::range_supported(b) && streamable(&b.lhs) && streamable(&b.rhs),
        _ => false,
    }
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
        Expr::VectorSelector(_) | Expr::Call(_) => {
            let Some((vs, read, drop_name)) = as_selector(e) else {
                return Ok(None);
            };
            let mut out = Vec::new();
            let done = selector_series(ctx, vs, read, drop_name, steps, &mut |labels, drop_name, pts| {
                out.push(StepSeries { labels: labels.clone(), drop_name, pts: pts.to_vec() });
                Ok(true)
            })?;
            Ok(done.then_some(RangeValue::Vector(out)))
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
    let m = a.modifier.as_ref();
    let mut index: FxMap<Labels, usize> = FxMap::default();
    // (labels, drop_name, any member present at the step, accumulators)
    let mut groups: Vec<(Labels, Option<bool>, Vec<bool>, Acc)> = Vec::new();
    let done = each_series(ctx, &a.expr, steps, &mut |labels, drop_name, pts| {
        if pts.is_empty() {
            return Ok(true);
        }
        let key = group_labels(labels, m);
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
            None => *drop = Some(drop_name),
            Some(d) if *d != drop_name => {
                if key.get(METRIC_NAME).is_some() {
                    return Ok(false);
                }
                *d |= drop_name;
            }
            Some(_) => {}
        }
        for &(i, v) in pts {
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
        Ok(true)
    })?;
    if !done {
        return Ok(None);
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
