//! PromQL: parsing with the maintained `promql-parser` crate, evaluation
//! here, with Prometheus semantics for what is implemented.

use std::collections::HashMap;

use cairn_store::metrics::MetricsStore;
pub use cairn_wire::Histogram;
use cairn_wire::Labels;
use promql_parser::parser::{self, Expr};

mod aggregate;
mod binary;
pub mod cache;
mod eval;
mod fast;
mod functions;
mod histfn;
mod rewrite;

use eval::Ctx;

/// A fast non-cryptographic hasher (FxHash: rotate, xor, multiply per
/// word) for the evaluator's per-step maps keyed by label sets and hashes.
/// Not collision-resistant: a flood of crafted label values can only make
/// a query slower, never wrong (maps still compare keys).
#[derive(Default, Clone, Copy)]
pub(crate) struct FxHasher(u64);

impl std::hash::Hasher for FxHasher {
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            self.write_u64(u64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]));
        }
        let r = chunks.remainder();
        if !r.is_empty() {
            let mut tail = [0u8; 8];
            tail[..r.len()].copy_from_slice(r);
            self.write_u64(u64::from_le_bytes(tail));
        }
    }
    fn write_u8(&mut self, i: u8) {
        self.write_u64(i as u64);
    }
    fn write_usize(&mut self, i: usize) {
        self.write_u64(i as u64);
    }
    fn write_u64(&mut self, i: u64) {
        self.0 = (self.0.rotate_left(5) ^ i).wrapping_mul(0x517c_c1b7_2722_0a95);
    }
    fn finish(&self) -> u64 {
        self.0
    }
}

/// A `HashMap` with [`FxHasher`].
pub(crate) type FxMap<K, V> = HashMap<K, V, std::hash::BuildHasherDefault<FxHasher>>;

/// Prometheus's default lookback delta.
pub const DEFAULT_LOOKBACK_MS: i64 = 5 * 60 * 1000;
/// Prometheus's limit on points per series in a range query.
pub const MAX_POINTS_PER_SERIES: i64 = 11_000;

/// A query failed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum QueryError {
    /// The expression does not parse (Prometheus `bad_data`).
    #[error("{0}")]
    Parse(String),
    /// The request is wrong (Prometheus `bad_data`).
    #[error("{0}")]
    BadData(String),
    /// Valid PromQL this version does not evaluate yet.
    #[error("{0} is not supported yet by this Cairn version")]
    Unsupported(String),
    /// Evaluation failed (Prometheus `execution`).
    #[error("{0}")]
    Execution(String),
    /// The query ran past its deadline (Prometheus `timeout`).
    #[error("query timed out in expression evaluation")]
    Timeout,
    /// The query would hold more than `max_samples` samples (Prometheus
    /// `execution`).
    #[error("query processing would load too many samples into memory in query execution")]
    TooManySamples {
        /// The limit in force.
        max_samples: usize,
    },
    /// The query's selectors would select more than `max_series` series
    /// together (Prometheus `execution`).
    #[error("query would select more than {max_series} series (query.max_series)")]
    TooManySeries {
        /// The limit in force.
        max_series: usize,
    },
}

impl QueryError {
    /// Prometheus `errorType` for this error.
    pub fn error_type(&self) -> &'static str {
        match self {
            QueryError::Parse(_) | QueryError::BadData(_) | QueryError::Unsupported(_) => "bad_data",
            QueryError::Execution(_) | QueryError::TooManySamples { .. } | QueryError::TooManySeries { .. } => {
                "execution"
            }
            QueryError::Timeout => "timeout",
        }
    }
}

/// Prometheus's default `--query.max-samples`.
pub const DEFAULT_MAX_SAMPLES: usize = 50_000_000;
/// Default most series one query may select (over all its selectors).
pub const DEFAULT_MAX_SERIES: usize = 1_000_000;

/// Limits and settings of one query evaluation.
#[derive(Debug, Clone)]
pub struct QueryOptions {
    /// Lookback delta of instant vector selectors, ms.
    pub lookback_ms: i64,
    /// Evaluation fails with [`QueryError::Timeout`] once this passes.
    pub deadline: Option<std::time::Instant>,
    /// Most samples a query may load (selected samples plus range-query
    /// result points); more fail with [`QueryError::TooManySamples`].
    pub max_samples: usize,
    /// Most series the query's selectors may select together; more fail
    /// with [`QueryError::TooManySeries`].
    pub max_series: usize,
}

impl Default for QueryOptions {
    fn default() -> Self {
        QueryOptions {
            lookback_ms: DEFAULT_LOOKBACK_MS,
            deadline: None,
            max_samples: DEFAULT_MAX_SAMPLES,
            max_series: DEFAULT_MAX_SERIES,
        }
    }
}

/// One sample of an instant vector.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// Series labels.
    pub labels: Labels,
    /// Timestamp, ms.
    pub t: i64,
    /// Value.
    pub v: f64,
    /// The metric name is to be dropped when the result is final (or
    /// before aggregation): Prometheus's delayed name removal, which lets
    /// `label_replace` still read or restore `__name__`.
    pub drop_name: bool,
    /// A native histogram value; when set, `v` is meaningless (0).
    pub h: Option<Box<Histogram>>,
}

impl Sample {
    /// A sample that keeps its name.
    pub fn new(labels: Labels, t: i64, v: f64) -> Sample {
        Sample { labels, t, v, drop_name: false, h: None }
    }

    /// A native-histogram sample that keeps its name.
    pub fn hist(labels: Labels, t: i64, h: Histogram) -> Sample {
        Sample { labels, t, v: 0.0, drop_name: false, h: Some(Box::new(h)) }
    }

    /// Applies a pending name drop.
    pub(crate) fn clean(&mut self) {
        if self.drop_name {
            self.labels = drop_metric_name(&self.labels);
            self.drop_name = false;
        }
    }
}

/// One series of a range vector or range-query result.
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    /// Series labels.
    pub labels: Labels,
    /// (timestamp ms, value), ascending.
    pub points: Vec<(i64, f64)>,
    /// (timestamp ms, native histogram), ascending; a timestamp is never
    /// in both `points` and `hist`.
    pub hist: Vec<(i64, Histogram)>,
}

impl Series {
    /// A float series.
    pub fn floats(labels: Labels, points: Vec<(i64, f64)>) -> Series {
        Series { labels, points, hist: Vec::new() }
    }
}

/// A PromQL value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// A scalar at a time.
    Scalar(i64, f64),
    /// An instant vector.
    Vector(Vec<Sample>),
    /// A range vector / range-query result.
    Matrix(Vec<Series>),
    /// A string at a time.
    String(i64, String),
}

impl Value {
    /// Prometheus `resultType` of this value.
    pub fn type_name(&self) -> &'static str {
        match self {
            Value::Scalar(..) => "scalar",
            Value::Vector(_) => "vector",
            Value::Matrix(_) => "matrix",
            Value::String(..) => "string",
        }
    }
}

/// Prometheus's annotations of a query result: warnings (the result may be
/// wrong or incomplete) and infos (something was ignored), deduplicated,
/// in the order they were first raised.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Annotations {
    /// `PromQL warning: …` messages.
    pub warnings: Vec<String>,
    /// `PromQL info: …` messages.
    pub infos: Vec<String>,
}

impl Annotations {
    pub(crate) fn warn(&mut self, msg: String) {
        let m = format!("PromQL warning: {msg}");
        if !self.warnings.contains(&m) {
            self.warnings.push(m);
        }
    }

    pub(crate) fn info(&mut self, msg: String) {
        let m = format!("PromQL info: {msg}");
        if !self.infos.contains(&m) {
            self.infos.push(m);
        }
    }
}

/// Parses a PromQL expression for an instant query (`step()` and
/// `range()` are 0); errors are Prometheus-style `bad_data`.
pub fn parse(q: &str) -> Result<Expr, QueryError> {
    parse_for(q, 0, 0)
}

/// Parses a PromQL expression for a query with this step and range (end −
/// start), ms: what `step()` and `range()` in duration expressions stand
/// for. Errors read as Prometheus's: `line:col: parse error: …`.
pub fn parse_for(q: &str, step_ms: i64, range_ms: i64) -> Result<Expr, QueryError> {
    use std::collections::HashMap;
    use std::sync::{Mutex, OnceLock};
    /// Parsed queries kept: a dashboard's panels are parsed again on every
    /// refresh, and parsing one compiles its regexes. Past this many the
    /// cache starts over.
    const MAX: usize = 512;
    type Cache = Mutex<HashMap<(String, i64, i64), Expr>>;
    static CACHE: OnceLock<Cache> = OnceLock::new();
    let cache = CACHE.get_or_init(Default::default);
    let key = (q.to_string(), step_ms, range_ms);
    if let Some(e) = cache.lock().unwrap_or_else(|e| e.into_inner()).get(&key) {
        return Ok(e.clone());
    }
    let expr = parse_uncached(q, step_ms, range_ms)?;
    let mut c = cache.lock().unwrap_or_else(|e| e.into_inner());
    if c.len() >= MAX {
        c.clear();
    }
    c.insert(key, expr.clone());
    Ok(expr)
}

fn parse_uncached(q: &str, step_ms: i64, range_ms: i64) -> Result<Expr, QueryError> {
    check_nesting(q)?;
    let (text, trims) = rewrite::rewrite_full(q, step_ms, range_ms)?;
    let mut expr = parser::parse(&text).map_err(|m| {
        // promql-parser gives no position: find one. A syntax error the
        // token scan sees wins over the crate's generic message; otherwise
        // the message names the offending token, found in the query text.
        if let Some((pos, msg)) = rewrite::locate_syntax_error(q) {
            return QueryError::Parse(parse_error_at(q, pos, &msg));
        }
        let named = m.split('"').nth(1).filter(|n| !n.is_empty()).and_then(|n| q.find(n));
        QueryError::Parse(parse_error_at(q, named.unwrap_or(0), &m))
    })?;
    if !trims.is_empty() {
        rewrite::mark_trims(&mut expr, &trims);
    }
    eval::check_extended(&expr)?;
    Ok(expr)
}

/// The canonical (pretty-printed) text of a query, as Prometheus's
/// `/api/v1/format_query` gives it.
pub fn format_query(q: &str) -> Result<String, QueryError> {
    let expr = parse(q)?;
    let text = expr.prettify();
    // The parser crate prints the trim operators' marker tokens as
    // "unknown token": put the operators back, in source order (the
    // printed order of binary operators).
    let trims = rewrite::marked_trims(&expr);
    const MARK: &str = "unknown token";
    if trims.is_empty() || text.matches(MARK).count() != trims.len() {
        return Ok(text);
    }
    let mut out = String::with_capacity(text.len());
    let mut rest = text.as_str();
    for upper in trims {
        if let Some(i) = rest.find(MARK) {
            out.push_str(&rest[..i]);
            out.push_str(if upper { "</" } else { ">/" });
            rest = &rest[i + MARK.len()..];
        }
    }
    out.push_str(rest);
    Ok(out)
}

/// Most parentheses, brackets and operator characters a PromQL query may
/// hold outside strings and label matchers: a bound on the depth of its
/// syntax tree, which the parser, the evaluator and even dropping the tree
/// walk recursively. Far above any dashboard query; without it a query of
/// 5,000 nested parentheses overflowed a thread's stack and aborted the
/// server.
pub const MAX_NESTING: usize = 1000;

/// Refuses a query that might parse into a tree deeper than
/// [`MAX_NESTING`], by a scan of its text (no recursion).
fn check_nesting(q: &str) -> Result<(), QueryError> {
    let b = q.as_bytes();
    let (mut n, mut braces, mut i) = (0usize, 0usize, 0usize);
    while i < b.len() {
        match b[i] {
            q @ (b'"' | b'\'' | b'`') => {
                i += 1;
                while i < b.len() && b[i] != q {
                    i += if b[i] == b'\\' && q != b'`' { 2 } else { 1 };
                }
            }
            b'#' => {
                while i < b.len() && b[i] != b'\n' {
                    i += 1;
                }
            }
            b'{' => braces += 1,
            b'}' => braces = braces.saturating_sub(1),
            b'(' | b'[' | b'+' | b'-' | b'*' | b'/' | b'%' | b'^' | b'<' | b'>' | b'=' | b'!' if braces == 0 => n += 1,
            _ => {}
        }
        i += 1;
    }
    if n > MAX_NESTING {
        return Err(QueryError::Parse(parse_error_at(
            q,
            0,
            &format!("query too complex: more than {MAX_NESTING} parentheses, brackets and operators"),
        )));
    }
    Ok(())
}

/// Prometheus's `ParseErr` text: `line:col: parse error: msg`, where `col`
/// counts bytes from the start of the line (1-based) up to `pos`.
pub(crate) fn parse_error_at(q: &str, pos: usize, msg: &str) -> String {
    let pos = pos.min(q.len());
    let head = &q.as_bytes()[..pos];
    let line = 1 + head.iter().filter(|&&c| c == b'\n').count();
    let col = pos - head.iter().rposition(|&c| c == b'\n').map_or(0, |i| i + 1) + 1;
    format!("{line}:{col}: parse error: {msg}")
}

/// True for the labels dropped together with the metric name: `__name__`
/// and the type-and-unit labels `__type__` and `__unit__`, as Prometheus's
/// `DropReserved` does.
pub(crate) fn is_reserved(name: &str) -> bool {
    matches!(name, "__name__" | "__type__" | "__unit__")
}

/// `ls` without the metric name (and `__type__`/`__unit__`).
pub(crate) fn drop_metric_name(ls: &Labels) -> Labels {
    if !ls.iter().any(|l| is_reserved(&l.name)) {
        return ls.clone();
    }
    Labels::from_pairs(ls.iter().filter(|l| !is_reserved(&l.name)).map(|l| (&*l.name, &*l.value))).unwrap_or_default()
}

/// Parses a series selector (a `match[]` parameter) into groups of
/// matchers; a series matches when it matches every matcher of any group.
pub fn parse_series_selector(s: &str) -> Result<Vec<Vec<cairn_wire::Matcher>>, QueryError> {
    match parse(s)? {
        Expr::VectorSelector(vs) => eval::matcher_groups(&vs),
        _ => Err(QueryError::BadData(format!("invalid parameter \"match[]\": {s:?} is not a series selector"))),
    }
}

/// Evaluates `expr` at time `t` (ms).
pub fn instant_query(
    store: &MetricsStore,
    tenant: &str,
    expr: &Expr,
    t: i64,
    opts: &QueryOptions,
) -> Result<Value, QueryError> {
    instant_query_annotated(store, tenant, expr, t, opts).map(|(v, _)| v)
}

/// [`instant_query`] with the result's annotations.
pub fn instant_query_annotated(
    store: &MetricsStore,
    tenant: &str,
    expr: &Expr,
    t: i64,
    opts: &QueryOptions,
) -> Result<(Value, Annotations), QueryError> {
    let mut ctx = Ctx::new(store, tenant, opts, t, t, 0);
    ctx.mark_stats(expr);
    ctx.prefetch(expr, t, t)?;
    // Vector results keep the engine's order (as Prometheus's instant
    // queries do: `sort()` and `topk` order must survive).
    let mut v = ctx.eval(expr, t)?;
    if let Value::Vector(vs) = &mut v {
        vs.iter_mut().for_each(Sample::clean);
        eval::check_unique(vs)?;
    }
    Ok((v, ctx.annotations.into_inner()))
}

/// Evaluates `expr` at `start, start+step, …, ≤ end` (ms) into a matrix.
pub fn range_query(
    store: &MetricsStore,
    tenant: &str,
    expr: &Expr,
    start: i64,
    end: i64,
    step: i64,
    opts: &QueryOptions,
) -> Result<Vec<Series>, QueryError> {
    range_query_annotated(store, tenant, expr, start, end, step, opts).map(|(m, _)| m)
}

/// [`range_query`] with the result's annotations.
pub fn range_query_annotated(
    store: &MetricsStore,
    tenant: &str,
    expr: &Expr,
    start: i64,
    end: i64,
    step: i64,
    opts: &QueryOptions,
) -> Result<(Vec<Series>, Annotations), QueryError> {
    range_query_with(store, tenant, expr, (start, end, step), opts, true)
}

/// The errors Prometheus gives a range query's parameters and type.
pub(crate) fn check_range(expr: &Expr, start: i64, end: i64, step: i64) -> Result<(), QueryError> {
    if step <= 0 {
        return Err(QueryError::BadData(
            "zero or negative query resolution step widths are not accepted. Try a positive integer".into(),
        ));
    }
    if end < start {
        return Err(QueryError::BadData("end timestamp must not be before start time".into()));
    }
    if end.saturating_sub(start) / step >= MAX_POINTS_PER_SERIES {
        return Err(QueryError::BadData(
            "exceeded maximum resolution of 11,000 points per timeseries. Try decreasing the query resolution (?step=XX)".into(),
        ));
    }
    match expr.value_type() {
        promql_parser::parser::value::ValueType::Vector | promql_parser::parser::value::ValueType::Scalar => {}
        other => {
            return Err(QueryError::BadData(format!(
                "invalid expression type \"{other}\" for range query, must be Scalar or instant Vector"
            )));
        }
    }
    Ok(())
}

/// [`range_query_annotated`]; with `series_at_a_time` false, always the
/// step evaluator (tests compare the two).
fn range_query_with(
    store: &MetricsStore,
    tenant: &str,
    expr: &Expr,
    (start, end, step): (i64, i64, i64),
    opts: &QueryOptions,
    series_at_a_time: bool,
) -> Result<(Vec<Series>, Annotations), QueryError> {
    check_range(expr, start, end, step)?;
    let mut ctx = Ctx::new(store, tenant, opts, start, end, step);
    ctx.mark_stats(expr);
    let steps = fast::Steps { start, step, n: (end.saturating_sub(start) / step + 1) as usize };
    if series_at_a_time && fast::streamable(expr) {
        // Series-at-a-time, reading each selector's series from the store
        // as it evaluates them; data it cannot take (native histograms,
        // series colliding once names drop) sends the query to the step
        // evaluator, which reads the selections afresh.
        ctx.stream = true;
        if let Some(out) = fast::range_eval(&ctx, expr, steps)? {
            warn_sort_in_range(&ctx, expr, start, end);
            return Ok((out, ctx.annotations.into_inner()));
        }
        ctx.stream = false;
        ctx.streamed.set(0);
        ctx.streamed_series.set(0);
        *ctx.annotations.borrow_mut() = Annotations::default();
        ctx.prefetch(expr, start, end)?;
    } else {
        ctx.prefetch(expr, start, end)?;
        if series_at_a_time && let Some(out) = fast::range_eval(&ctx, expr, steps)? {
            warn_sort_in_range(&ctx, expr, start, end);
            return Ok((out, ctx.annotations.into_inner()));
        }
    }
    let mut by: FxMap<Labels, Vec<(i64, f64)>> = FxMap::default();
    let mut hby: FxMap<Labels, Vec<(i64, Histogram)>> = FxMap::default();
    let mut unnamed: FxMap<Labels, Labels> = FxMap::default();
    let mut t = start;
    let mut points = 0usize;
    while t <= end {
        match ctx.eval(expr, t)? {
            Value::Scalar(_, v) => {
                points += 1;
                by.entry(Labels::empty()).or_default().push((t, v))
            }
            Value::Vector(mut vs) => {
                points += vs.len();
                // The same series lose their names at every step: build
                // each name-less label set once.
                for s in vs.iter_mut().filter(|s| s.drop_name) {
                    let clean = match unnamed.get(&s.labels) {
                        Some(l) => l.clone(),
                        None => {
                            let l = drop_metric_name(&s.labels);
                            unnamed.insert(s.labels.clone(), l.clone());
                            l
                        }
                    };
                    s.labels = clean;
                    s.drop_name = false;
                }
                eval::check_unique(&vs)?;
                for s in vs {
                    match s.h {
                        None => by.entry(s.labels).or_default().push((t, s.v)),
                        Some(h) => {
                            by.entry(s.labels.clone()).or_default();
                            hby.entry(s.labels).or_default().push((t, *h));
                        }
                    }
                }
            }
            other => {
                return Err(QueryError::Execution(format!("range query produced a {}", other.type_name())));
            }
        }
        ctx.check_samples(points)?;
        t += step;
    }
    let mut out: Vec<Series> = by
        .into_iter()
        .map(|(labels, points)| {
            let hist = hby.remove(&labels).unwrap_or_default();
            Series { labels, points, hist }
        })
        .collect();
    out.sort_by(|a, b| a.labels.cmp(&b.labels));
    warn_sort_in_range(&ctx, expr, start, end);
    Ok((out, ctx.annotations.into_inner()))
}

/// Prometheus warns of every `sort*` call a range query (start ≠ end)
/// evaluates: its order is lost in the result matrix.
fn warn_sort_in_range(ctx: &Ctx<'_>, expr: &Expr, start: i64, end: i64) {
    struct Sorts(bool);
    impl promql_parser::util::ExprVisitor for Sorts {
        type Error = ();
        fn pre_visit(&mut self, e: &Expr) -> Result<bool, ()> {
            if let Expr::Call(c) = e
                && matches!(c.func.name, "sort" | "sort_desc" | "sort_by_label" | "sort_by_label_desc")
            {
                self.0 = true;
            }
            Ok(!self.0)
        }
    }
    if start == end {
        return;
    }
    let mut v = Sorts(false);
    let _ = promql_parser::util::walk_expr(&mut v, expr);
    if v.0 {
        ctx.warn("sort is ineffective for range queries since results are always ordered by labels".into());
    }
}

#[cfg(test)]
mod tests;
