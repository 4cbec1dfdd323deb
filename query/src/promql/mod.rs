//! PromQL: parsing with the maintained `promql-parser` crate, evaluation
//! here, with Prometheus semantics for what is implemented.

use std::collections::HashMap;

use cairn_store::metrics::{MetricsStore, SeriesSamples};
use cairn_wire::{Labels, METRIC_NAME, MatchOp, Matcher, is_stale_nan};
use promql_parser::label::MatchOp as PMatchOp;
use promql_parser::parser::{self, AtModifier, BinaryExpr, Expr, Offset, VectorSelector};

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
}

impl QueryError {
    /// Prometheus `errorType` for this error.
    pub fn error_type(&self) -> &'static str {
        match self {
            QueryError::Parse(_) | QueryError::BadData(_) | QueryError::Unsupported(_) => "bad_data",
            QueryError::Execution(_) => "execution",
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
}

/// One series of a range vector or range-query result.
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    /// Series labels.
    pub labels: Labels,
    /// (timestamp ms, value), ascending.
    pub points: Vec<(i64, f64)>,
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

/// Parses a PromQL expression; errors are Prometheus-style `bad_data`.
pub fn parse(q: &str) -> Result<Expr, QueryError> {
    parser::parse(q).map_err(QueryError::Parse)
}

struct Ctx<'a> {
    store: &'a MetricsStore,
    tenant: &'a str,
    lookback: i64,
    start: i64,
    end: i64,
    /// Selected series per selector node, keyed by the node's address.
    cache: HashMap<usize, Vec<SeriesSamples>>,
}

fn offset_ms(o: &Option<Offset>) -> i64 {
    match o {
        Some(Offset::Pos(d)) => d.as_millis() as i64,
        Some(Offset::Neg(d)) => -(d.as_millis() as i64),
        None => 0,
    }
}

fn at_ms(at: &Option<AtModifier>, start: i64, end: i64) -> Option<i64> {
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
fn matcher_groups(vs: &VectorSelector) -> Result<Vec<Vec<Matcher>>, QueryError> {
    let conv = |ms: &[promql_parser::label::Matcher]| -> Result<Vec<Matcher>, QueryError> {
        let mut out = Vec::with_capacity(ms.len() + 1);
        for m in ms {
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

impl Ctx<'_> {
    fn select(&self, vs: &VectorSelector, mint: i64, maxt: i64) -> Result<Vec<SeriesSamples>, QueryError> {
        let groups = matcher_groups(vs)?;
        if groups.len() == 1 {
            return Ok(self.store.select(self.tenant, &groups[0], mint, maxt));
        }
        let mut by: std::collections::BTreeMap<Labels, SeriesSamples> = Default::default();
        for g in groups {
            for s in self.store.select(self.tenant, &g, mint, maxt) {
                by.entry(s.labels.clone()).or_insert(s);
            }
        }
        Ok(by.into_values().collect())
    }

    /// Fetches, once, the samples every selector in `e` can need over the
    /// whole query range.
    fn prefetch(&mut self, e: &Expr) -> Result<(), QueryError> {
        match e {
            Expr::VectorSelector(vs) => {
                let off = offset_ms(&vs.offset);
                let (lo, hi) = match at_ms(&vs.at, self.start, self.end) {
                    Some(t) => (t, t),
                    None => (self.start, self.end),
                };
                let s = self.select(vs, lo - off - self.lookback + 1, hi - off)?;
                self.cache.insert(vs as *const _ as usize, s);
            }
            Expr::MatrixSelector(ms) => {
                let vs = &ms.vs;
                let off = offset_ms(&vs.offset);
                let range = ms.range.as_millis() as i64;
                let (lo, hi) = match at_ms(&vs.at, self.start, self.end) {
                    Some(t) => (t, t),
                    None => (self.start, self.end),
                };
                let s = self.select(vs, lo - off - range + 1, hi - off)?;
                self.cache.insert(vs as *const _ as usize, s);
            }
            Expr::Paren(p) => self.prefetch(&p.expr)?,
            Expr::Unary(u) => self.prefetch(&u.expr)?,
            Expr::Binary(b) => {
                self.prefetch(&b.lhs)?;
                self.prefetch(&b.rhs)?;
            }
            _ => {}
        }
        Ok(())
    }

    fn eval(&self, e: &Expr, t: i64) -> Result<Value, QueryError> {
        match e {
            Expr::NumberLiteral(n) => Ok(Value::Scalar(t, n.val)),
            Expr::StringLiteral(s) => Ok(Value::String(t, s.val.clone())),
            Expr::Paren(p) => self.eval(&p.expr, t),
            Expr::Unary(u) => match self.eval(&u.expr, t)? {
                Value::Scalar(t, v) => Ok(Value::Scalar(t, -v)),
                Value::Vector(vs) => Ok(Value::Vector(
                    vs.into_iter().map(|s| Sample { labels: s.labels.without(METRIC_NAME), t: s.t, v: -s.v }).collect(),
                )),
                other => Err(QueryError::Execution(format!("unary minus on {}", other.type_name()))),
            },
            Expr::VectorSelector(vs) => {
                let series = self.cache.get(&(vs as *const _ as usize)).map(Vec::as_slice).unwrap_or(&[]);
                let rt = at_ms(&vs.at, self.start, self.end).unwrap_or(t) - offset_ms(&vs.offset);
                let mut out = Vec::new();
                for s in series {
                    let hi = s.samples.partition_point(|p| p.0 <= rt);
                    if hi == 0 {
                        continue;
                    }
                    let (st, sv) = s.samples[hi - 1];
                    if st > rt - self.lookback && !is_stale_nan(sv) {
                        out.push(Sample { labels: s.labels.clone(), t, v: sv });
                    }
                }
                Ok(Value::Vector(out))
            }
            Expr::MatrixSelector(ms) => {
                let vs = &ms.vs;
                let series = self.cache.get(&(vs as *const _ as usize)).map(Vec::as_slice).unwrap_or(&[]);
                let rt = at_ms(&vs.at, self.start, self.end).unwrap_or(t) - offset_ms(&vs.offset);
                let range = ms.range.as_millis() as i64;
                let mut out = Vec::new();
                for s in series {
                    let lo = s.samples.partition_point(|p| p.0 <= rt - range);
                    let hi = s.samples.partition_point(|p| p.0 <= rt);
                    let points: Vec<(i64, f64)> =
                        s.samples[lo..hi].iter().copied().filter(|p| !is_stale_nan(p.1)).collect();
                    if !points.is_empty() {
                        out.push(Series { labels: s.labels.clone(), points });
                    }
                }
                Ok(Value::Matrix(out))
            }
            Expr::Binary(b) => self.eval_binary(b, t),
            Expr::Aggregate(_) => Err(QueryError::Unsupported("aggregation".into())),
            Expr::Call(c) => Err(QueryError::Unsupported(format!("function {}()", c.func.name))),
            Expr::Subquery(_) => Err(QueryError::Unsupported("subquery".into())),
            Expr::Extension(_) => Err(QueryError::Unsupported("extension expression".into())),
        }
    }

    fn eval_binary(&self, b: &BinaryExpr, t: i64) -> Result<Value, QueryError> {
        let op = b.op.to_string();
        if b.op.is_set_operator() {
            return Err(QueryError::Unsupported(format!("set operator {op}")));
        }
        let return_bool = b.modifier.as_ref().is_some_and(|m| m.return_bool);
        let cmp = b.op.is_comparison_operator();
        let lhs = self.eval(&b.lhs, t)?;
        let rhs = self.eval(&b.rhs, t)?;
        match (lhs, rhs) {
            (Value::Scalar(_, a), Value::Scalar(_, c)) => {
                let r = apply_op(&op, a, c)?;
                if cmp && !return_bool {
                    return Err(QueryError::BadData("comparisons between scalars must use BOOL modifier".into()));
                }
                Ok(Value::Scalar(t, r.value()))
            }
            (Value::Vector(vs), Value::Scalar(_, c)) => vector_scalar(vs, c, &op, cmp, return_bool, false),
            (Value::Scalar(_, c), Value::Vector(vs)) => vector_scalar(vs, c, &op, cmp, return_bool, true),
            (Value::Vector(_), Value::Vector(_)) => {
                Err(QueryError::Unsupported("binary operation between two vectors".into()))
            }
            (l, r) => Err(QueryError::Execution(format!(
                "binary operator {op} between {} and {}",
                l.type_name(),
                r.type_name()
            ))),
        }
    }
}

/// Result of a binary operator: an arithmetic value or a comparison outcome.
enum OpResult {
    Num(f64),
    Bool(bool),
}

impl OpResult {
    fn value(&self) -> f64 {
        match *self {
            OpResult::Num(v) => v,
            OpResult::Bool(b) => f64::from(u8::from(b)),
        }
    }
}

fn apply_op(op: &str, a: f64, b: f64) -> Result<OpResult, QueryError> {
    Ok(match op {
        "+" => OpResult::Num(a + b),
        "-" => OpResult::Num(a - b),
        "*" => OpResult::Num(a * b),
        "/" => OpResult::Num(a / b),
        "%" => OpResult::Num(a % b),
        "^" => OpResult::Num(a.powf(b)),
        "atan2" => OpResult::Num(a.atan2(b)),
        "==" => OpResult::Bool(a == b),
        "!=" => OpResult::Bool(a != b),
        "<" => OpResult::Bool(a < b),
        "<=" => OpResult::Bool(a <= b),
        ">" => OpResult::Bool(a > b),
        ">=" => OpResult::Bool(a >= b),
        other => return Err(QueryError::Unsupported(format!("operator {other}"))),
    })
}

fn vector_scalar(
    vs: Vec<Sample>,
    c: f64,
    op: &str,
    cmp: bool,
    return_bool: bool,
    scalar_left: bool,
) -> Result<Value, QueryError> {
    let mut out = Vec::with_capacity(vs.len());
    for s in vs {
        let (a, b) = if scalar_left { (c, s.v) } else { (s.v, c) };
        let r = apply_op(op, a, b)?;
        if cmp {
            let keep = matches!(r, OpResult::Bool(true));
            if return_bool {
                out.push(Sample { labels: s.labels.without(METRIC_NAME), t: s.t, v: r.value() });
            } else if keep {
                // A filtering comparison keeps the vector's sample as it is.
                out.push(s);
            }
        } else {
            out.push(Sample { labels: s.labels.without(METRIC_NAME), t: s.t, v: r.value() });
        }
    }
    check_unique(&out)?;
    Ok(Value::Vector(out))
}

fn check_unique(v: &[Sample]) -> Result<(), QueryError> {
    let mut seen = std::collections::HashSet::with_capacity(v.len());
    for s in v {
        if !seen.insert(&s.labels) {
            return Err(QueryError::Execution("vector cannot contain metrics with the same labelset".into()));
        }
    }
    Ok(())
}

/// Evaluates `expr` at time `t` (ms).
pub fn instant_query(
    store: &MetricsStore,
    tenant: &str,
    expr: &Expr,
    t: i64,
    lookback_ms: i64,
) -> Result<Value, QueryError> {
    let mut ctx = Ctx { store, tenant, lookback: lookback_ms, start: t, end: t, cache: HashMap::new() };
    ctx.prefetch(expr)?;
    let mut v = ctx.eval(expr, t)?;
    if let Value::Vector(s) = &mut v {
        s.sort_by(|a, b| a.labels.cmp(&b.labels));
    }
    Ok(v)
}

/// Evaluates `expr` at `start, start+step, …, ≤ end` (ms) into a matrix.
pub fn range_query(
    store: &MetricsStore,
    tenant: &str,
    expr: &Expr,
    start: i64,
    end: i64,
    step: i64,
    lookback_ms: i64,
) -> Result<Vec<Series>, QueryError> {
    if step <= 0 {
        return Err(QueryError::BadData(
            "zero or negative query resolution step widths are not accepted. Try a positive integer".into(),
        ));
    }
    if end < start {
        return Err(QueryError::BadData("end timestamp must not be before start time".into()));
    }
    if (end - start) / step >= MAX_POINTS_PER_SERIES {
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
    let mut ctx = Ctx { store, tenant, lookback: lookback_ms, start, end, cache: HashMap::new() };
    ctx.prefetch(expr)?;
    let mut by: HashMap<Labels, Vec<(i64, f64)>> = HashMap::new();
    let mut t = start;
    while t <= end {
        match ctx.eval(expr, t)? {
            Value::Scalar(_, v) => by.entry(Labels::empty()).or_default().push((t, v)),
            Value::Vector(vs) => {
                for s in vs {
                    by.entry(s.labels).or_default().push((t, s.v));
                }
            }
            other => {
                return Err(QueryError::Execution(format!("range query produced a {}", other.type_name())));
            }
        }
        t += step;
    }
    let mut out: Vec<Series> = by.into_iter().map(|(labels, points)| Series { labels, points }).collect();
    out.sort_by(|a, b| a.labels.cmp(&b.labels));
    Ok(out)
}

#[cfg(test)]
mod tests;
