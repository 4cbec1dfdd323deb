//! The evaluator: one pass over the AST per evaluation time, over series
//! fetched once per selector for the whole query range ([`Ctx::prefetch`]).
//!
//! Range queries evaluate the whole expression at every step; selectors
//! binary-search their prefetched samples, so a step costs no store access.
//! Subqueries evaluate their inner expression at the aligned inner steps of
//! each outer step; each inner step is evaluated once per query and cached
//! (the cache counts toward the sample budget).

use std::borrow::Cow;
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;

use cairn_store::metrics::{MetricsStore, SelectLimit, SelectLimits, SelectedSeries};
use cairn_wire::Histogram;
use cairn_wire::{Labels, METRIC_NAME, MatchOp, Matcher, is_stale_nan};
use promql_parser::label::MatchOp as PMatchOp;
use promql_parser::parser::{AtModifier, Expr, Offset, SubqueryExpr, VectorSelector};

use super::{QueryError, Sample, Series, Value, aggregate, binary, functions};

/// Lookup hints of one series: indexes the last window start and end
/// lookups returned.
#[derive(Default)]
pub(crate) struct Cursor {
    lo: Cell<usize>,
    hi: Cell<usize>,
}

/// `samples.partition_point(|p| p.0 <= t)`, starting from `hint` (a
/// previous answer): when `t` has not moved back past the hint, a short
/// forward scan (sequential memory) finds it; otherwise a binary search.
fn upper(samples: &[(i64, f64)], t: i64, hint: &Cell<usize>) -> usize {
    let h = hint.get().min(samples.len());
    let i = if h == 0 || samples[h - 1].0 <= t {
        // Everything before h is at or before t.
        let mut i = h;
        loop {
            match samples.get(i) {
                Some(p) if p.0 <= t => {
                    i += 1;
                    if i - h == 16 {
                        break i + samples[i..].partition_point(|p| p.0 <= t);
                    }
                }
                _ => break i,
            }
        }
    } else {
        samples[..h].partition_point(|p| p.0 <= t)
    };
    hint.set(i);
    i
}

/// Cached inner steps of one subquery: (step time, value, cost in samples).
pub(crate) type SubqueryCache = std::collections::VecDeque<(i64, Rc<Value>, usize)>;

/// What one cached subquery step costs against `max_samples` beyond its
/// samples: the bookkeeping of an entry is about as big as 4 samples.
const CACHE_ENTRY_COST: usize = 4;

/// Prometheus's default subquery resolution (its global evaluation interval).
pub const DEFAULT_SUBQUERY_STEP_MS: i64 = 60_000;

pub(crate) struct Ctx<'a> {
    pub store: &'a MetricsStore,
    pub tenant: &'a str,
    pub lookback: i64,
    /// Query start and end (for `@ start()` / `@ end()`).
    pub start: i64,
    pub end: i64,
    /// Range-query step, ms (0 for instant queries), for `step()`.
    pub step: i64,
    /// Selected series per selector node, keyed by the node's address.
    pub cache: HashMap<usize, Vec<SelectedSeries>>,
    /// Per selector node and series, where the last lookups landed (window
    /// start, window end): a range query's steps move forward, so the next
    /// lookup scans on from there instead of searching the whole series.
    pub cursors: HashMap<usize, Vec<Cursor>>,
    /// Samples selected so far.
    pub selected: usize,
    pub max_samples: usize,
    /// Series selected so far (summed over selectors).
    pub series: usize,
    pub max_series: usize,
    pub deadline: Option<std::time::Instant>,
    /// Inner results of subqueries by (node address, inner step time).
    /// Inner results of each subquery node (by address) by inner step
    /// time, ascending; steps before the node's latest window are evicted.
    pub subquery_cache: RefCell<HashMap<usize, SubqueryCache>>,
    /// Samples held in `subquery_cache` (plus [`CACHE_ENTRY_COST`] per
    /// step), counted against `max_samples`.
    pub cached_samples: Cell<usize>,
    /// Subqueries being evaluated around the current node.
    pub subquery_depth: Cell<usize>,
    /// Group key label sets built by aggregation nodes, by (node address,
    /// key hash): the same groups recur at every step of a range query.
    pub group_keys: RefCell<super::FxMap<(usize, u64), Labels>>,
    /// Warnings and infos raised so far.
    pub annotations: RefCell<super::Annotations>,
    /// Selectors (by address) Prometheus reads through its
    /// `HistogramStatsIterator` (see [`Ctx::mark_stats`]).
    pub stats_selectors: std::collections::HashSet<usize>,
    /// Selectors not in `cache` are read from the store series by series
    /// while they are evaluated (`fast.rs`) instead of prefetched.
    pub stream: bool,
    /// Samples and series read that way so far (counted against the
    /// limits with `selected` and `series`).
    pub streamed: Cell<usize>,
    pub streamed_series: Cell<usize>,
    /// Selectors (by address) whose samples' start timestamps a function
    /// reads: the range argument of `rate`, `increase`, `irate`, `resets`
    /// and the argument of `start_timestamp` (not through a subquery or any
    /// other expression, as in Prometheus).
    pub want_st: std::collections::HashSet<usize>,
    /// Start timestamps of those selectors' series that have any: by
    /// selector address, then labels, (sample time, start time) ascending.
    pub st: HashMap<usize, HashMap<Labels, Vec<(i64, i64)>>>,
}

/// Functions that read the start timestamps of their range argument.
pub(crate) const ST_RANGE_FUNCS: [&str; 4] = ["increase", "irate", "rate", "resets"];

/// The start timestamp of the sample at `t` in `pairs` (0: none).
pub(crate) fn st_at(pairs: &[(i64, i64)], t: i64) -> i64 {
    pairs.binary_search_by_key(&t, |p| p.0).map_or(0, |i| pairs[i].1)
}

/// The start timestamps of `samples` (0: none), aligned with them.
pub(crate) fn st_aligned<T>(pairs: &[(i64, i64)], samples: &[(i64, T)]) -> Vec<i64> {
    samples.iter().map(|p| st_at(pairs, p.0)).collect()
}

impl<'a> Ctx<'a> {
    pub fn new(
        store: &'a MetricsStore,
        tenant: &'a str,
        opts: &super::QueryOptions,
        start: i64,
        end: i64,
        step: i64,
    ) -> Self {
        Ctx {
            store,
            tenant,
            lookback: opts.lookback_ms,
            start,
            end,
            step,
            cache: HashMap::new(),
            cursors: HashMap::new(),
            selected: 0,
            max_samples: opts.max_samples,
            series: 0,
            max_series: opts.max_series,
            deadline: opts.deadline,
            subquery_cache: RefCell::new(HashMap::new()),
            cached_samples: Cell::new(0),
            subquery_depth: Cell::new(0),
            group_keys: RefCell::new(Default::default()),
            annotations: RefCell::new(Default::default()),
            stats_selectors: Default::default(),
            stream: false,
            streamed: Cell::new(0),
            streamed_series: Cell::new(0),
            want_st: Default::default(),
            st: HashMap::new(),
        }
    }

    /// Marks the selectors Prometheus reads with its
    /// `HistogramStatsIterator` (its `detectHistogramStatsDecoding`): those
    /// below `histogram_count`, `histogram_sum` or `histogram_avg` and not
    /// below a subquery or a function needing buckets. That iterator
    /// resolves `Unknown` counter-reset hints against the previous sample
    /// it read, which Prometheus's annotations then see.
    pub fn mark_stats(&mut self, e: &Expr) {
        fn walk(e: &Expr, stats: bool, set: &mut std::collections::HashSet<usize>) {
            match e {
                Expr::VectorSelector(vs) => {
                    if stats {
                        set.insert(vs as *const _ as usize);
                    }
                }
                Expr::MatrixSelector(ms) => walk_vs(&ms.vs, stats, set),
                Expr::Subquery(_) => {}
                Expr::Call(c) => {
                    let stats = match c.func.name {
                        "histogram_count" | "histogram_sum" | "histogram_avg" => true,
                        "histogram_quantile" | "histogram_quantiles" | "histogram_fraction" => return,
                        _ => stats,
                    };
                    for a in &c.args.args {
                        walk(a, stats, set);
                    }
                }
                Expr::Paren(p) => walk(&p.expr, stats, set),
                Expr::Unary(u) => walk(&u.expr, stats, set),
                // The trim operators need the buckets.
                Expr::Binary(b) if matches!(b.op.id(), super::rewrite::TRIM_UPPER | super::rewrite::TRIM_LOWER) => {}
                Expr::Binary(b) => {
                    walk(&b.lhs, stats, set);
                    walk(&b.rhs, stats, set);
                }
                Expr::Aggregate(a) => {
                    walk(&a.expr, stats, set);
                    if let Some(p) = &a.param {
                        walk(p, stats, set);
                    }
                }
                Expr::NumberLiteral(_) | Expr::StringLiteral(_) | Expr::Extension(_) => {}
            }
        }
        fn walk_vs(vs: &VectorSelector, stats: bool, set: &mut std::collections::HashSet<usize>) {
            if stats {
                set.insert(vs as *const _ as usize);
            }
        }
        walk(e, false, &mut self.stats_selectors);
    }

    /// Records a warning annotation.
    pub fn warn(&self, msg: String) {
        self.annotations.borrow_mut().warn(msg);
    }

    /// Records an info annotation.
    pub fn info(&self, msg: String) {
        self.annotations.borrow_mut().info(msg);
    }

    /// Fails when the selected samples plus `extra` exceed the limit.
    pub fn check_samples(&self, extra: usize) -> Result<(), QueryError> {
        if self.selected.saturating_add(self.streamed.get()).saturating_add(extra) > self.max_samples {
            return Err(QueryError::TooManySamples { max_samples: self.max_samples });
        }
        Ok(())
    }
}

pub(crate) fn offset_ms(o: &Option<Offset>) -> i64 {
    match o {
        Some(Offset::Pos(d)) => d.as_millis() as i64,
        Some(Offset::Neg(d)) => -(d.as_millis() as i64),
        None => 0,
    }
}

pub(crate) fn at_ms(at: &Option<AtModifier>, start: i64, end: i64) -> Option<i64> {
    match at {
        None => None,
        Some(AtModifier::Start) => Some(start),
        Some(AtModifier::End) => Some(end),
        Some(AtModifier::At(t)) => Some(match t.duration_since(std::time::UNIX_EPOCH) {
            Ok(d) => d.as_millis() as i64,
            Err(e) => -(e.duration().as_millis() as i64),
        }),
    }
}

/// Converts the parser's matchers (including `or` groups and the metric
/// name) into groups of Cairn matchers; a series matches if any group matches.
pub(crate) fn matcher_groups(vs: &VectorSelector) -> Result<Vec<Vec<Matcher>>, QueryError> {
    let conv = |ms: &[promql_parser::label::Matcher]| -> Result<Vec<Matcher>, QueryError> {
        let mut out = Vec::with_capacity(ms.len() + 1);
        for m in ms.iter().filter(|m| m.name != super::rewrite::EXT_LABEL) {
            let op = match m.op {
                PMatchOp::Equal => MatchOp::Equal,
                PMatchOp::NotEqual => MatchOp::NotEqual,
                PMatchOp::Re(_) => MatchOp::Regex,
                PMatchOp::NotRe(_) => MatchOp::NotRegex,
            };
            out.push(
                Matcher::new(op, m.name.clone(), m.value.clone()).map_err(|e| QueryError::BadData(e.to_string()))?,
            );
        }
        if let Some(name) = &vs.name
            && !out.iter().any(|m| m.name == METRIC_NAME)
        {
            out.push(Matcher::equal(METRIC_NAME, name.clone()));
        }
        Ok(out)
    };
    let mut groups = vec![conv(&vs.matchers.matchers)?];
    for g in &vs.matchers.or_matchers {
        groups.push(conv(g)?);
    }
    groups.retain(|g| !g.is_empty());
    if groups.is_empty() {
        return Err(QueryError::BadData("vector selector must contain at least one non-empty matcher".into()));
    }
    Ok(groups)
}

/// Prometheus 3's extended selector modifiers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Ext {
    /// `anchored`: a range also holds the last sample at or before its start
    /// (within the lookback delta).
    Anchored,
    /// `smoothed`: as anchored, plus the first sample after the end; rates
    /// interpolate at both boundaries, instant selectors between neighbours.
    Smoothed,
}

/// The extended modifier of a selector (carried as a synthetic matcher, see
/// `rewrite`).
pub(crate) fn ext_of(vs: &VectorSelector) -> Option<Ext> {
    let m = vs.matchers.matchers.iter().find(|m| m.name == super::rewrite::EXT_LABEL)?;
    match m.value.as_str() {
        "anchored" => Some(Ext::Anchored),
        "smoothed" => Some(Ext::Smoothed),
        _ => None,
    }
}

const ANCHORED_SAFE: [&str; 5] = ["changes", "delta", "increase", "rate", "resets"];
const SMOOTHED_SAFE: [&str; 3] = ["delta", "increase", "rate"];

/// Rejects `anchored`/`smoothed` range selectors passed to functions that
/// cannot take them, with Prometheus's messages.
pub(crate) fn check_extended(e: &Expr) -> Result<(), QueryError> {
    let mut err = None;
    let _ = promql_parser::util::walk_expr(&mut ExtCheck { err: &mut err }, e);
    match err {
        Some(m) => Err(QueryError::BadData(m)),
        None => Ok(()),
    }
}

struct ExtCheck<'a> {
    err: &'a mut Option<String>,
}

impl promql_parser::util::ExprVisitor for ExtCheck<'_> {
    type Error = ();
    fn pre_visit(&mut self, e: &Expr) -> Result<bool, ()> {
        if let Expr::Call(c) = e
            && let Some(Expr::MatrixSelector(ms)) = c.args.args.first().map(|a| unparen(a))
            && let Some(x) = ext_of(&ms.vs)
        {
            let name = c.func.name;
            let (safe, what): (&[&str], &str) = match x {
                Ext::Anchored => (&ANCHORED_SAFE, "anchored"),
                Ext::Smoothed => (&SMOOTHED_SAFE, "smoothed"),
            };
            if !safe.contains(&name) {
                *self.err =
                    Some(format!("{what} modifier can only be used with: {} - not with {name}", safe.join(", ")));
                return Err(());
            }
        }
        Ok(true)
    }
}

/// The time window a range function reads: `(end - range, end]`.
#[derive(Clone, Copy)]
pub(crate) struct Window {
    /// Effective evaluation time (after `@` and `offset`), ms.
    pub end: i64,
    /// Range, ms.
    pub range: i64,
}

fn unparen(e: &Expr) -> &Expr {
    match e {
        Expr::Paren(p) => unparen(&p.expr),
        other => other,
    }
}

impl Ctx<'_> {
    /// Selects the series of `vs` in `[mint, maxt]`, reading no more than
    /// the query's remaining series and sample budgets allow.
    fn select(&self, vs: &VectorSelector, mint: i64, maxt: i64) -> Result<Vec<SelectedSeries>, QueryError> {
        let groups = matcher_groups(vs)?;
        let limits = SelectLimits {
            series: self.max_series.saturating_sub(self.series),
            samples: self.max_samples.saturating_sub(self.selected),
        };
        let limited = |g: &[Matcher]| {
            self.store.select_mixed_limited(self.tenant, g, mint, maxt, limits).map_err(|l| match l {
                SelectLimit::Series => QueryError::TooManySeries { max_series: self.max_series },
                SelectLimit::Samples => QueryError::TooManySamples { max_samples: self.max_samples },
            })
        };
        if groups.len() == 1 {
            return limited(&groups[0]);
        }
        let mut by: std::collections::BTreeMap<Labels, SelectedSeries> = Default::default();
        for g in groups {
            for s in limited(&g)? {
                by.entry(s.labels.clone()).or_insert(s);
            }
        }
        Ok(by.into_values().collect())
    }

    fn fetch(&mut self, vs: &VectorSelector, mint: i64, maxt: i64) -> Result<(), QueryError> {
        let key = vs as *const _ as usize;
        if self.cache.contains_key(&key) {
            return Ok(());
        }
        let mut s = self.select(vs, mint, maxt)?;
        if s.iter().any(|x| !x.histograms.is_empty()) {
            // The sample before the selection in the same TSDB chunk range
            // decides the first histogram's reset hint.
            let from = mint.div_euclid(super::histfn::CHUNK_RANGE_MS) * super::histfn::CHUNK_RANGE_MS;
            let before: HashMap<Labels, SelectedSeries> = if from < mint {
                // Best effort: only hints depend on it, never whether the
                // query runs (it may read past the query's budgets).
                self.select(vs, from, mint - 1).unwrap_or_default().into_iter().map(|x| (x.labels.clone(), x)).collect()
            } else {
                HashMap::new()
            };
            for x in s.iter_mut().filter(|x| !x.histograms.is_empty()) {
                let seed = before.get(&x.labels).and_then(|b| {
                    let h = b.histograms.last()?;
                    (b.samples.last().is_none_or(|f| f.0 < h.0) && !h.1.is_stale()).then_some(h)
                });
                super::histfn::assign_reset_hints(&x.samples, &mut x.histograms, seed);
                if self.stats_selectors.contains(&key) {
                    super::histfn::resolve_unknown_hints(&x.samples, &mut x.histograms);
                }
            }
        }
        self.selected = self.selected.saturating_add(s.iter().map(|x| x.samples.len() + x.histograms.len()).sum());
        self.series = self.series.saturating_add(s.len());
        if self.series > self.max_series {
            return Err(QueryError::TooManySeries { max_series: self.max_series });
        }
        self.check_samples(0)?;
        if self.deadline.is_some_and(|d| std::time::Instant::now() > d) {
            return Err(QueryError::Timeout);
        }
        if self.want_st.contains(&key) && !s.is_empty() {
            self.fetch_st(vs, key, mint, maxt)?;
        }
        self.cursors.insert(key, (0..s.len()).map(|_| Cursor::default()).collect());
        self.cache.insert(key, s);
        Ok(())
    }

    /// Reads the start timestamps of the series `vs` selects in
    /// `[mint, maxt]` into [`Ctx::st`] (nothing when they have none),
    /// counted against the sample budget.
    fn fetch_st(&mut self, vs: &VectorSelector, key: usize, mint: i64, maxt: i64) -> Result<(), QueryError> {
        let mut by: HashMap<Labels, Vec<(i64, i64)>> = HashMap::new();
        for g in matcher_groups(vs)? {
            let limits = SelectLimits { series: usize::MAX, samples: self.max_samples.saturating_sub(self.selected) };
            let got = self
                .store
                .select_start_timestamps(self.tenant, &g, mint, maxt, limits)
                .map_err(|_| QueryError::TooManySamples { max_samples: self.max_samples })?;
            for s in got {
                self.selected = self.selected.saturating_add(s.pairs.len());
                by.entry(s.labels).or_insert(s.pairs);
            }
        }
        self.check_samples(0)?;
        if !by.is_empty() {
            self.st.insert(key, by);
        }
        Ok(())
    }

    /// Evaluation times `[lo, hi]` of a node with `@`/`offset` → the
    /// effective times its data is read at.
    pub(crate) fn effective(&self, at: &Option<AtModifier>, off: i64, lo: i64, hi: i64) -> (i64, i64) {
        match at_ms(at, self.start, self.end) {
            Some(t) => (t.saturating_sub(off), t.saturating_sub(off)),
            None => (lo.saturating_sub(off), hi.saturating_sub(off)),
        }
    }

    /// Fetches, once, the samples every selector in `e` can need when `e`
    /// is evaluated at times in `[lo, hi]`.
    pub fn prefetch(&mut self, e: &Expr, lo: i64, hi: i64) -> Result<(), QueryError> {
        match e {
            Expr::VectorSelector(vs) => {
                let (lo, hi) = self.effective(&vs.at, offset_ms(&vs.offset), lo, hi);
                let hi = if ext_of(vs) == Some(Ext::Smoothed) { hi.saturating_add(self.lookback) } else { hi };
                self.fetch(vs, lo.saturating_sub(self.lookback).saturating_add(1), hi)?;
            }
            Expr::MatrixSelector(ms) => {
                let vs = &ms.vs;
                let (lo, hi) = self.effective(&vs.at, offset_ms(&vs.offset), lo, hi);
                let mut lo = lo.saturating_sub(ms.range.as_millis() as i64);
                let mut hi = hi;
                match ext_of(vs) {
                    Some(Ext::Anchored) => lo = lo.saturating_sub(self.lookback),
                    Some(Ext::Smoothed) => {
                        lo = lo.saturating_sub(self.lookback);
                        hi = hi.saturating_add(self.lookback);
                    }
                    None => {}
                }
                self.fetch(vs, lo.saturating_add(1), hi)?;
            }
            Expr::Subquery(sq) => {
                let (lo, hi) = self.effective(&sq.at, offset_ms(&sq.offset), lo, hi);
                self.prefetch(&sq.expr, lo.saturating_sub(sq.range.as_millis() as i64), hi)?;
            }
            Expr::Paren(p) => self.prefetch(&p.expr, lo, hi)?,
            Expr::Unary(u) => self.prefetch(&u.expr, lo, hi)?,
            Expr::Binary(b) => {
                self.prefetch(&b.lhs, lo, hi)?;
                self.prefetch(&b.rhs, lo, hi)?;
            }
            Expr::Aggregate(a) => {
                self.prefetch(&a.expr, lo, hi)?;
                if let Some(p) = &a.param {
                    self.prefetch(p, lo, hi)?;
                }
            }
            Expr::Call(c) => {
                match (c.func.name, c.args.args.first().map(|a| unparen(a))) {
                    (name, Some(Expr::MatrixSelector(ms))) if ST_RANGE_FUNCS.contains(&name) => {
                        self.want_st.insert(&ms.vs as *const _ as usize);
                    }
                    ("start_timestamp", Some(Expr::VectorSelector(vs))) => {
                        self.want_st.insert(vs as *const _ as usize);
                    }
                    _ => {}
                }
                // info()'s second argument is a label selector for info
                // series, read by the function itself.
                let n = if c.func.name == "info" { 1 } else { c.args.args.len() };
                for a in c.args.args.iter().take(n) {
                    self.prefetch(a, lo, hi)?;
                }
            }
            Expr::NumberLiteral(_) | Expr::StringLiteral(_) | Expr::Extension(_) => {}
        }
        Ok(())
    }

    /// Evaluates an instant vector selector at `t`. With `keep_ts` the
    /// samples carry their own timestamps (for `timestamp()`), else `t`.
    pub fn eval_vs(&self, vs: &VectorSelector, t: i64, keep_ts: bool) -> Vec<Sample> {
        let key = vs as *const _ as usize;
        let series = self.cache.get(&key).map(Vec::as_slice).unwrap_or(&[]);
        let cursors = self.cursors.get(&key).map(Vec::as_slice).unwrap_or(&[]);
        let rt = at_ms(&vs.at, self.start, self.end).unwrap_or(t).saturating_sub(offset_ms(&vs.offset));
        let smoothed = ext_of(vs) == Some(Ext::Smoothed);
        let mut out = Vec::new();
        for (s, c) in series.iter().zip(cursors) {
            let hi = upper(&s.samples, rt, &c.hi);
            if !s.histograms.is_empty() {
                // The newest histogram at or before rt wins over an older float.
                let hh = s.histograms.partition_point(|p| p.0 <= rt);
                if hh > 0 && (hi == 0 || s.histograms[hh - 1].0 > s.samples[hi - 1].0) {
                    let (ht, h) = &s.histograms[hh - 1];
                    if *ht > rt.saturating_sub(self.lookback) && !h.is_stale() {
                        let mut h = h.clone();
                        if smoothed && *ht < rt {
                            match self.smoothed_next(s, hi, hh, rt) {
                                Some(Err(_)) => {
                                    self.warn_mixed_types(&s.labels);
                                    continue;
                                }
                                Some(Ok(next)) => {
                                    // Interpolated as a counter unless both are gauges;
                                    // exponential and custom buckets never interpolate
                                    // (not even across a reset).
                                    use cairn_wire::histogram::ResetHint::Gauge;
                                    let is_counter = h.reset_hint != Gauge || next.1.reset_hint != Gauge;
                                    let mut notes = super::histfn::RateNotes::default();
                                    let r = if h.uses_custom_buckets() != next.1.uses_custom_buckets() {
                                        notes.schema_mix = true;
                                        None
                                    } else {
                                        super::histfn::interpolate(&(*ht, h), &next, rt, is_counter, &mut notes)
                                    };
                                    if notes.schema_mix {
                                        self.warn(format!(
                                            "vector contains a mix of histograms with exponential and custom buckets schemas for metric name \"{}\"",
                                            s.labels.get(METRIC_NAME).unwrap_or("")
                                        ));
                                    }
                                    if notes.reconciled_sub {
                                        self.info(
                                            "mismatched custom buckets were reconciled during subtraction".into(),
                                        );
                                    }
                                    if notes.reconciled_add {
                                        self.info("mismatched custom buckets were reconciled during addition".into());
                                    }
                                    match r {
                                        Some(r) => h = r,
                                        None => continue,
                                    }
                                }
                                None => {}
                            }
                        }
                        out.push(Sample::hist(s.labels.clone(), if keep_ts { *ht } else { t }, h));
                    }
                    continue;
                }
            }
            if hi == 0 {
                continue;
            }
            let (st, sv) = s.samples[hi - 1];
            if st > rt.saturating_sub(self.lookback) && !is_stale_nan(sv) {
                let mut v = sv;
                if smoothed && st < rt {
                    let hh = s.histograms.partition_point(|p| p.0 <= rt);
                    match self.smoothed_next(s, hi, hh, rt) {
                        Some(Ok(_)) => {
                            self.warn_mixed_types(&s.labels);
                            continue;
                        }
                        Some(Err((nt, nv))) => v = sv + (nv - sv) * (rt - st) as f64 / (nt - st) as f64,
                        None => {}
                    }
                }
                out.push(Sample::new(s.labels.clone(), if keep_ts { st } else { t }, v));
            }
        }
        out
    }

    /// For a `smoothed` selector: the first sample after `rt` (within the
    /// lookback delta, not a stale marker), a float as `Err`, a histogram
    /// as `Ok`; `hi` and `hh` index the first float and histogram after `rt`.
    fn smoothed_next(
        &self,
        s: &SelectedSeries,
        hi: usize,
        hh: usize,
        rt: i64,
    ) -> Option<Result<(i64, Histogram), (i64, f64)>> {
        let limit = rt.saturating_add(self.lookback);
        let f = s.samples.get(hi).filter(|p| p.0 <= limit);
        let h = s.histograms.get(hh).filter(|p| p.0 <= limit);
        match (f, h) {
            (Some(&(ft, fv)), Some((ht, _))) if ft < *ht => (!is_stale_nan(fv)).then_some(Err((ft, fv))),
            (Some(&(ft, fv)), None) => (!is_stale_nan(fv)).then_some(Err((ft, fv))),
            (_, Some((ht, hv))) => (!hv.is_stale()).then(|| Ok((*ht, hv.clone()))),
            (None, None) => None,
        }
    }

    fn warn_mixed_types(&self, labels: &Labels) {
        self.warn(format!(
            "encountered a mix of histograms and floats for metric name \"{}\"",
            labels.get(METRIC_NAME).unwrap_or("")
        ));
    }

    /// The histogram samples of series `s` in the window `(lo, hi]`, stale
    /// markers removed.
    fn hist_window(s: &SelectedSeries, lo: i64, hi: i64) -> Vec<(i64, Histogram)> {
        let a = s.histograms.partition_point(|p| p.0 <= lo);
        let b = s.histograms.partition_point(|p| p.0 <= hi);
        s.histograms[a..b.max(a)].iter().filter(|p| !p.1.is_stale()).cloned().collect()
    }

    /// Calls `f` with the labels, in-window float points and native
    /// histograms (stale markers
    /// removed) of each series of matrix selector `ms` at `t`, borrowing the
    /// prefetched samples: no per-step copy unless a window holds a stale
    /// marker (then one reused buffer).
    /// Called for every series with a float or a histogram in its window
    /// (the histograms are empty for float series).
    pub fn for_each_window_mixed(
        &self,
        ms: &promql_parser::parser::MatrixSelector,
        t: i64,
        mut f: impl FnMut(&Labels, &[(i64, f64)], &[(i64, Histogram)]),
    ) {
        let vs = &ms.vs;
        let key = vs as *const _ as usize;
        let series = self.cache.get(&key).map(Vec::as_slice).unwrap_or(&[]);
        let cursors = self.cursors.get(&key).map(Vec::as_slice).unwrap_or(&[]);
        let rt = at_ms(&vs.at, self.start, self.end).unwrap_or(t).saturating_sub(offset_ms(&vs.offset));
        let range = ms.range.as_millis() as i64;
        let ext = ext_of(vs);
        let mut buf: Vec<(i64, f64)> = Vec::new();
        for (s, c) in series.iter().zip(cursors) {
            let rs = rt.saturating_sub(range);
            let mut lo = upper(&s.samples, rs, &c.lo);
            let mut hi = upper(&s.samples, rt, &c.hi);
            let hs = &s.histograms;
            let (mut hlo, mut hhi) = if hs.is_empty() {
                (0, 0)
            } else {
                (hs.partition_point(|p| p.0 <= rs), hs.partition_point(|p| p.0 <= rt))
            };
            if ext.is_some() {
                let live_f = s.samples[lo..hi].iter().any(|p| !is_stale_nan(p.1));
                let live_h = hs[hlo..hhi].iter().any(|p| !p.1.is_stale());
                if ext == Some(Ext::Anchored) && !live_f && !live_h {
                    // Nothing in the range itself: no value.
                    continue;
                }
                // The last sample (float or histogram) at or before the
                // range start, within the lookback delta (stale markers do
                // not anchor).
                let floor = rs.saturating_sub(self.lookback);
                let f_anchor = (lo > 0 && s.samples[lo - 1].0 > floor && !is_stale_nan(s.samples[lo - 1].1))
                    .then(|| s.samples[lo - 1].0);
                let h_anchor = (hlo > 0 && hs[hlo - 1].0 > floor && !hs[hlo - 1].1.is_stale()).then(|| hs[hlo - 1].0);
                match (f_anchor, h_anchor) {
                    (Some(ft), Some(ht)) if ht > ft => hlo -= 1,
                    (Some(_), _) => lo -= 1,
                    (None, Some(_)) => hlo -= 1,
                    (None, None) => {}
                }
                if ext == Some(Ext::Smoothed) {
                    // Nothing at or before the end: no value.
                    if hi == lo && hhi == hlo {
                        continue;
                    }
                    // The first sample after the end, within the lookback.
                    let limit = rt.saturating_add(self.lookback);
                    let f_next = s.samples.get(hi).filter(|p| p.0 <= limit && !is_stale_nan(p.1)).map(|p| p.0);
                    let h_next = hs.get(hhi).filter(|p| p.0 <= limit && !p.1.is_stale()).map(|p| p.0);
                    match (f_next, h_next) {
                        (Some(ft), Some(ht)) if ht < ft => hhi += 1,
                        (Some(_), _) => hi += 1,
                        (None, Some(_)) => hhi += 1,
                        (None, None) => {}
                    }
                }
            }
            let hw: Vec<(i64, Histogram)> = hs[hlo..hhi.max(hlo)].iter().filter(|p| !p.1.is_stale()).cloned().collect();
            let win = &s.samples[lo..hi];
            if win.iter().any(|p| is_stale_nan(p.1)) {
                buf.clear();
                buf.extend(win.iter().copied().filter(|p| !is_stale_nan(p.1)));
                if !buf.is_empty() || !hw.is_empty() {
                    f(&s.labels, &buf, &hw);
                }
            } else if !win.is_empty() || !hw.is_empty() {
                f(&s.labels, win, &hw);
            }
        }
    }

    /// The window a range-vector argument (matrix selector or subquery)
    /// covers when evaluated at `t`.
    pub fn window(&self, e: &Expr, t: i64) -> Option<Window> {
        match unparen(e) {
            Expr::MatrixSelector(ms) => Some(Window {
                end: at_ms(&ms.vs.at, self.start, self.end).unwrap_or(t).saturating_sub(offset_ms(&ms.vs.offset)),
                range: ms.range.as_millis() as i64,
            }),
            Expr::Subquery(sq) => Some(Window {
                end: at_ms(&sq.at, self.start, self.end).unwrap_or(t).saturating_sub(offset_ms(&sq.offset)),
                range: sq.range.as_millis() as i64,
            }),
            _ => None,
        }
    }

    fn eval_subquery(&self, sq: &SubqueryExpr, t: i64) -> Result<Vec<Series>, QueryError> {
        let end = at_ms(&sq.at, self.start, self.end).unwrap_or(t).saturating_sub(offset_ms(&sq.offset));
        let range = sq.range.as_millis() as i64;
        let step = sq.step.map_or(DEFAULT_SUBQUERY_STEP_MS, |d| d.as_millis() as i64);
        if step <= 0 {
            return Err(QueryError::BadData("zero or negative subquery step".into()));
        }
        // First step-aligned time after end - range (Go integer division).
        let from = end.saturating_sub(range);
        let mut it = step * (from / step);
        if it <= from {
            it += step;
        }
        let node = sq as *const _ as usize;
        // Outer steps move forward, so inner steps at or before this
        // window's start are not needed again: evict them, which bounds the
        // cache by one window per subquery.
        if let Some(q) = self.subquery_cache.borrow_mut().get_mut(&node) {
            while q.front().is_some_and(|e| e.0 <= from) {
                if let Some((_, _, cost)) = q.pop_front() {
                    self.cached_samples.set(self.cached_samples.get().saturating_sub(cost));
                }
            }
        }
        // Only a range query or an enclosing subquery evaluates this node
        // at more than one time; a top-level subquery of an instant query
        // has nothing to share.
        let reused = self.step > 0 || self.subquery_depth.get() > 0;
        let mut by: HashMap<Labels, usize> = HashMap::new();
        let mut out: Vec<Series> = Vec::new();
        let mut points = 0usize;
        while it <= end {
            self.check_samples(points.saturating_add(self.cached_samples.get()))?;
            // Inner steps are aligned to the subquery step, so consecutive
            // outer steps share most of them: evaluate each once.
            let found = self
                .subquery_cache
                .borrow()
                .get(&node)
                .and_then(|q| q.binary_search_by_key(&it, |e| e.0).ok().map(|i| q[i].1.clone()));
            let value = match found {
                Some(v) => v,
                None if !reused => {
                    self.subquery_depth.set(self.subquery_depth.get() + 1);
                    let v = self.eval(&sq.expr, it);
                    self.subquery_depth.set(self.subquery_depth.get() - 1);
                    Rc::new(v?)
                }
                None => {
                    self.subquery_depth.set(self.subquery_depth.get() + 1);
                    let v = self.eval(&sq.expr, it);
                    self.subquery_depth.set(self.subquery_depth.get() - 1);
                    let v = Rc::new(v?);
                    let cost = CACHE_ENTRY_COST
                        + match &*v {
                            Value::Vector(vs) => vs.len(),
                            _ => 1,
                        };
                    self.cached_samples.set(self.cached_samples.get().saturating_add(cost));
                    let mut cache = self.subquery_cache.borrow_mut();
                    let q = cache.entry(node).or_default();
                    let at = q.partition_point(|e| e.0 < it);
                    q.insert(at, (it, v.clone(), cost));
                    v
                }
            };
            match &*value {
                Value::Vector(vs) => {
                    points += vs.len();
                    for s in vs {
                        let labels = if s.drop_name {
                            Cow::Owned(super::drop_metric_name(&s.labels))
                        } else {
                            Cow::Borrowed(&s.labels)
                        };
                        let i = match by.get(labels.as_ref()) {
                            Some(&i) => i,
                            None => {
                                let l = labels.into_owned();
                                by.insert(l.clone(), out.len());
                                out.push(Series::floats(l, Vec::new()));
                                out.len() - 1
                            }
                        };
                        match &s.h {
                            None => out[i].points.push((it, s.v)),
                            Some(h) => {
                                // Steps may skip stored samples: a stored
                                // "no reset" no longer holds between steps.
                                let mut h = (**h).clone();
                                if h.reset_hint == cairn_wire::histogram::ResetHint::NotReset {
                                    h.reset_hint = cairn_wire::histogram::ResetHint::Unknown;
                                }
                                out[i].hist.push((it, h))
                            }
                        }
                    }
                }
                Value::Scalar(_, v) => {
                    points += 1;
                    let i = *by.entry(Labels::empty()).or_insert_with(|| {
                        out.push(Series::floats(Labels::empty(), Vec::new()));
                        out.len() - 1
                    });
                    out[i].points.push((it, *v));
                }
                other => {
                    return Err(QueryError::Execution(format!("subquery over a {}", other.type_name())));
                }
            }
            it = match it.checked_add(step) {
                Some(n) => n,
                None => break,
            };
        }
        out.sort_by(|a, b| a.labels.cmp(&b.labels));
        Ok(out)
    }

    pub fn eval(&self, e: &Expr, t: i64) -> Result<Value, QueryError> {
        if self.deadline.is_some_and(|d| std::time::Instant::now() > d) {
            return Err(QueryError::Timeout);
        }
        match e {
            Expr::NumberLiteral(n) => Ok(Value::Scalar(t, n.val)),
            Expr::StringLiteral(s) => Ok(Value::String(t, s.val.clone())),
            Expr::Paren(p) => self.eval(&p.expr, t),
            Expr::Unary(u) => match self.eval(&u.expr, t)? {
                Value::Scalar(t, v) => Ok(Value::Scalar(t, -v)),
                Value::Vector(vs) => {
                    let out: Vec<Sample> = vs
                        .into_iter()
                        .map(|s| {
                            let h = s.h.map(|mut h| {
                                h.mul(-1.0);
                                // A negated counter is a gauge.
                                h.reset_hint = cairn_wire::histogram::ResetHint::Gauge;
                                h
                            });
                            Sample { labels: s.labels, t: s.t, v: -s.v, drop_name: true, h }
                        })
                        .collect();
                    check_unique(&out)?;
                    Ok(Value::Vector(out))
                }
                other => Err(QueryError::Execution(format!("unary minus on {}", other.type_name()))),
            },
            Expr::VectorSelector(vs) => Ok(Value::Vector(self.eval_vs(vs, t, false))),
            Expr::MatrixSelector(ms) => {
                let vs = &ms.vs;
                let series = self.cache.get(&(vs as *const _ as usize)).map(Vec::as_slice).unwrap_or(&[]);
                let rt = at_ms(&vs.at, self.start, self.end).unwrap_or(t).saturating_sub(offset_ms(&vs.offset));
                let range = ms.range.as_millis() as i64;
                let mut out = Vec::new();
                for s in series {
                    let lo = s.samples.partition_point(|p| p.0 <= rt.saturating_sub(range));
                    let hi = s.samples.partition_point(|p| p.0 <= rt);
                    let points: Vec<(i64, f64)> =
                        s.samples[lo..hi].iter().copied().filter(|p| !is_stale_nan(p.1)).collect();
                    let hist = if s.histograms.is_empty() {
                        Vec::new()
                    } else {
                        Self::hist_window(s, rt.saturating_sub(range), rt)
                    };
                    if !points.is_empty() || !hist.is_empty() {
                        out.push(Series { labels: s.labels.clone(), points, hist });
                    }
                }
                Ok(Value::Matrix(out))
            }
            Expr::Subquery(sq) => Ok(Value::Matrix(self.eval_subquery(sq, t)?)),
            Expr::Binary(b) => binary::eval_binary(self, b, t),
            Expr::Aggregate(a) => aggregate::eval_aggregate(self, a, t),
            Expr::Call(c) => functions::eval_call(self, c, t),
            Expr::Extension(_) => Err(QueryError::Unsupported("extension expression".into())),
        }
    }

    /// Evaluates `e` expecting a range vector (matrix selector or subquery).
    pub fn eval_matrix(&self, e: &Expr, t: i64) -> Result<Vec<Series>, QueryError> {
        match self.eval(e, t)? {
            Value::Matrix(m) => Ok(m),
            other => Err(QueryError::Execution(format!("expected a range vector, got {}", other.type_name()))),
        }
    }

    /// Evaluates `e` expecting an instant vector.
    pub fn eval_vector(&self, e: &Expr, t: i64) -> Result<Vec<Sample>, QueryError> {
        match self.eval(e, t)? {
            Value::Vector(v) => Ok(v),
            other => Err(QueryError::Execution(format!("expected an instant vector, got {}", other.type_name()))),
        }
    }

    /// Evaluates `e` expecting a scalar.
    pub fn eval_scalar(&self, e: &Expr, t: i64) -> Result<f64, QueryError> {
        match self.eval(e, t)? {
            Value::Scalar(_, v) => Ok(v),
            other => Err(QueryError::Execution(format!("expected a scalar, got {}", other.type_name()))),
        }
    }

    /// Evaluates `e` expecting a string.
    pub fn eval_string(&self, e: &Expr, t: i64) -> Result<String, QueryError> {
        match self.eval(e, t)? {
            Value::String(_, s) => Ok(s),
            other => Err(QueryError::Execution(format!("expected a string, got {}", other.type_name()))),
        }
    }
}

/// Errors when two samples of `v` share a label set (names pending a drop
/// still count: they collide only once dropped, at the end).
pub(crate) fn check_unique(v: &[Sample]) -> Result<(), QueryError> {
    if v.len() < 2 {
        return Ok(());
    }
    let mut seen: std::collections::HashSet<&Labels, std::hash::BuildHasherDefault<super::FxHasher>> =
        std::collections::HashSet::with_capacity_and_hasher(v.len(), Default::default());
    for s in v {
        if !seen.insert(&s.labels) {
            return Err(QueryError::Execution("vector cannot contain metrics with the same labelset".into()));
        }
    }
    Ok(())
}

#[cfg(test)]
mod cursor_tests {
    use super::*;

    /// `upper` answers as a fresh binary search whatever the hint, for
    /// times moving forward, backward and jumping.
    #[test]
    fn upper_matches_partition_point_from_any_hint() {
        let samples: Vec<(i64, f64)> = (0..100).map(|i| (i * 10 + (i % 3), 0.0)).collect();
        let hint = Cell::new(0);
        let mut times: Vec<i64> = (-20..1100).step_by(7).collect();
        times.extend([500, 3, 999, 0, 1000, -5, 250, 251, 252, 1200, 10]);
        for t in times {
            assert_eq!(upper(&samples, t, &hint), samples.partition_point(|p| p.0 <= t), "t={t}");
        }
        assert_eq!(upper(&[], 5, &Cell::new(7)), 0);
    }
}
