//! Binary operators: arithmetic, comparisons (filtering or `bool`), set
//! operators, and vector matching (`on`, `ignoring`, `group_left`,
//! `group_right`), following Prometheus's `VectorBinop`.

use std::collections::{HashMap, HashSet};

use cairn_wire::histogram::ResetHint;
use cairn_wire::{Histogram, Label, Labels, METRIC_NAME};
use promql_parser::parser::{BinModifier, BinaryExpr, LabelModifier, VectorMatchCardinality};

use super::eval::{Ctx, check_unique};
use super::{QueryError, Sample, Value};

#[derive(Clone, Copy, PartialEq, Eq)]
enum Op {
    Add,
    Sub,
    Mul,
    Div,
    Mod,
    Pow,
    Atan2,
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
    And,
    Or,
    Unless,
    /// `</` (Prometheus 3.x): a histogram's observations at or below.
    TrimUpper,
    /// `>/`: a histogram's observations above.
    TrimLower,
}

impl Op {
    /// The operator of `b` (the trim operators are marked by
    /// `rewrite::mark_trims`).
    fn of(b: &BinaryExpr) -> Result<Op, QueryError> {
        match b.op.id() {
            super::rewrite::TRIM_UPPER => Ok(Op::TrimUpper),
            super::rewrite::TRIM_LOWER => Ok(Op::TrimLower),
            _ => Op::from_str(&b.op.to_string()),
        }
    }

    fn is_trim(self) -> bool {
        matches!(self, Op::TrimUpper | Op::TrimLower)
    }

    fn from_str(s: &str) -> Result<Op, QueryError> {
        Ok(match s {
            "+" => Op::Add,
            "-" => Op::Sub,
            "*" => Op::Mul,
            "/" => Op::Div,
            "%" => Op::Mod,
            "^" => Op::Pow,
            "atan2" => Op::Atan2,
            "==" => Op::Eq,
            "!=" => Op::Ne,
            "<" => Op::Lt,
            "<=" => Op::Le,
            ">" => Op::Gt,
            ">=" => Op::Ge,
            "and" => Op::And,
            "or" => Op::Or,
            "unless" => Op::Unless,
            other => return Err(QueryError::Unsupported(format!("binary operator {other}"))),
        })
    }

    fn is_comparison(self) -> bool {
        matches!(self, Op::Eq | Op::Ne | Op::Lt | Op::Le | Op::Gt | Op::Ge)
    }

    /// Arithmetic operators drop the metric name; comparisons keep it.
    /// (Trim operators drop it between two vectors only.)
    fn drops_name(self) -> bool {
        matches!(
            self,
            Op::Add | Op::Sub | Op::Mul | Op::Div | Op::Mod | Op::Pow | Op::Atan2 | Op::TrimUpper | Op::TrimLower
        )
    }
}

/// `(value, keep)`: for comparisons `value` is the left operand and `keep`
/// the outcome; arithmetic always keeps.
fn apply(op: Op, a: f64, b: f64) -> (f64, bool) {
    match op {
        Op::Add => (a + b, true),
        Op::Sub => (a - b, true),
        Op::Mul => (a * b, true),
        Op::Div => (a / b, true),
        Op::Mod => (a % b, true),
        Op::Pow => (a.powf(b), true),
        Op::Atan2 => (a.atan2(b), true),
        Op::Eq => (a, a == b),
        Op::Ne => (a, a != b),
        Op::Lt => (a, a < b),
        Op::Le => (a, a <= b),
        Op::Gt => (a, a > b),
        Op::Ge => (a, a >= b),
        Op::And | Op::Or | Op::Unless => (a, true),
        // Trimming applies to histograms only.
        Op::TrimUpper | Op::TrimLower => (a, false),
    }
}

/// Why a pair with a histogram gave no result.
enum HistDrop {
    /// The operation is not defined for these types (an info).
    Types,
    /// The histograms cannot be combined (a warning).
    Schemas,
    /// A comparison that does not hold (no annotation).
    Filtered,
}

impl Op {
    fn name(self) -> &'static str {
        match self {
            Op::Add => "+",
            Op::Sub => "-",
            Op::Mul => "*",
            Op::Div => "/",
            Op::Mod => "%",
            Op::Pow => "^",
            Op::Atan2 => "atan2",
            Op::Eq => "==",
            Op::Ne => "!=",
            Op::Lt => "<",
            Op::Le => "<=",
            Op::Gt => ">",
            Op::Ge => ">=",
            Op::And => "and",
            Op::Or => "or",
            Op::Unless => "unless",
            Op::TrimUpper => "</",
            Op::TrimLower => ">/",
        }
    }
}

/// Records the annotation for a dropped pair.
fn annotate_drop(ctx: &Ctx<'_>, why: HistDrop, op: Op, lh: bool, rh: bool, reconciled: bool) {
    let kind = |h: bool| if h { "histogram" } else { "float" };
    match why {
        HistDrop::Types => ctx.info(format!(
            "incompatible sample types encountered for binary operator \"{}\": {} {} {}",
            op.name(),
            kind(lh),
            op.name(),
            kind(rh)
        )),
        HistDrop::Schemas => ctx.warn(format!(
            "vector contains a mix of histograms with exponential and custom buckets schemas for binary operator \"{}\"",
            op.name()
        )),
        HistDrop::Filtered => {}
    }
    if reconciled {
        let what = if op == Op::Sub { "subtraction" } else { "addition" };
        ctx.info(format!("mismatched custom buckets were reconciled during {what}"));
    }
}

/// Prometheus's `vectorElemBinop` for operands of which at least one is a
/// native histogram: `(value, histogram, reconciled)`, or why the pair is
/// dropped.
#[allow(clippy::type_complexity)]
fn apply_hist(
    op: Op,
    a: f64,
    ah: Option<&Histogram>,
    b: f64,
    bh: Option<&Histogram>,
) -> Result<(f64, Option<Box<Histogram>>, bool), HistDrop> {
    let done = |mut h: Histogram, reconciled: bool| {
        h.compact();
        Ok((0.0, Some(Box::new(h)), reconciled))
    };
    match (ah, bh, op) {
        (Some(h), None, Op::TrimUpper | Op::TrimLower) => done(super::histfn::trim(h, b, op == Op::TrimUpper), false),
        (None, Some(h), Op::Mul) => {
            let mut h = h.clone();
            h.mul(a);
            done(h, false)
        }
        (Some(h), None, Op::Mul) => {
            let mut h = h.clone();
            h.mul(b);
            done(h, false)
        }
        (Some(h), None, Op::Div) => {
            let mut h = h.clone();
            h.div(b);
            done(h, false)
        }
        (Some(x), Some(y), Op::Add) => {
            let mut h = x.clone();
            let o = h.add(y).map_err(|_| HistDrop::Schemas)?;
            done(h, o.reconciled)
        }
        (Some(x), Some(y), Op::Sub) => {
            let mut h = x.clone();
            let o = h.sub(y).map_err(|_| HistDrop::Schemas)?;
            h.reset_hint = ResetHint::Gauge;
            done(h, o.reconciled)
        }
        (Some(x), Some(y), Op::Eq) => {
            if x.content_equals(y) {
                Ok((0.0, Some(Box::new(x.clone())), false))
            } else {
                Err(HistDrop::Filtered)
            }
        }
        (Some(x), Some(y), Op::Ne) => {
            if !x.content_equals(y) {
                Ok((0.0, Some(Box::new(x.clone())), false))
            } else {
                Err(HistDrop::Filtered)
            }
        }
        _ => Err(HistDrop::Types),
    }
}

pub(crate) fn eval_binary(ctx: &Ctx<'_>, b: &BinaryExpr, t: i64) -> Result<Value, QueryError> {
    let op = Op::of(b)?;
    let modifier = b.modifier.as_ref();
    let return_bool = modifier.is_some_and(|m| m.return_bool);
    let lhs = ctx.eval(&b.lhs, t)?;
    let rhs = ctx.eval(&b.rhs, t)?;
    match (lhs, rhs) {
        (Value::Scalar(_, a), Value::Scalar(_, c)) => {
            let (v, keep) = apply(op, a, c);
            if op.is_comparison() {
                if !return_bool {
                    return Err(QueryError::BadData("comparisons between scalars must use BOOL modifier".into()));
                }
                return Ok(Value::Scalar(t, f64::from(u8::from(keep))));
            }
            Ok(Value::Scalar(t, v))
        }
        (Value::Vector(vs), Value::Scalar(_, c)) => vector_scalar(ctx, vs, c, op, return_bool, false),
        (Value::Scalar(_, c), Value::Vector(vs)) => vector_scalar(ctx, vs, c, op, return_bool, true),
        (Value::Vector(l), Value::Vector(r)) => {
            let out = match op {
                Op::And => set_and(l, r, modifier),
                Op::Or => set_or(l, r, modifier),
                Op::Unless => set_unless(l, r, modifier),
                _ => vector_vector(ctx, l, r, op, modifier, return_bool)?,
            };
            check_unique(&out)?;
            Ok(Value::Vector(out))
        }
        (l, r) => Err(QueryError::Execution(format!(
            "binary operator {} between {} and {}",
            b.op,
            l.type_name(),
            r.type_name()
        ))),
    }
}

fn vector_scalar(
    ctx: &Ctx<'_>,
    vs: Vec<Sample>,
    c: f64,
    op: Op,
    return_bool: bool,
    swap: bool,
) -> Result<Value, QueryError> {
    let mut out = Vec::with_capacity(vs.len());
    for mut s in vs {
        if let Some(h) = s.h.take() {
            let r = if swap { apply_hist(op, c, None, 0.0, Some(&h)) } else { apply_hist(op, 0.0, Some(&h), c, None) };
            match r {
                Ok(_) if return_bool => annotate_drop(ctx, HistDrop::Types, op, !swap, swap, false),
                Ok((v, h, _)) => {
                    // A trimmed histogram keeps its name.
                    if op.drops_name() && !op.is_trim() {
                        s.drop_name = true;
                    }
                    s.v = v;
                    s.h = h;
                    out.push(s);
                }
                Err(why) => {
                    let why = if return_bool { HistDrop::Types } else { why };
                    annotate_drop(ctx, why, op, !swap, swap, false)
                }
            }
            continue;
        }
        let (a, b) = if swap { (c, s.v) } else { (s.v, c) };
        let (mut v, mut keep) = apply(op, a, b);
        // A comparison keeps the vector's value even when it is on the right.
        if op.is_comparison() && swap {
            v = b;
        }
        if return_bool {
            v = f64::from(u8::from(keep));
            keep = true;
        }
        if keep {
            if op.drops_name() || return_bool {
                s.drop_name = true;
            }
            s.v = v;
            out.push(s);
        }
    }
    check_unique(&out)?;
    Ok(Value::Vector(out))
}

/// How two samples are matched: the label names and whether they are the
/// ones to use (`on`) or to ignore (`ignoring`, always with `__name__`).
struct Matching<'a> {
    on: bool,
    names: &'a [String],
}

impl<'a> Matching<'a> {
    fn new(m: Option<&'a BinModifier>) -> Self {
        match m.and_then(|m| m.matching.as_ref()) {
            Some(LabelModifier::Include(l)) => Matching { on: true, names: &l.labels },
            Some(LabelModifier::Exclude(l)) => Matching { on: false, names: &l.labels },
            None => Matching { on: false, names: &[] },
        }
    }

    /// The matching signature of `ls`: the label pairs that take part.
    /// The match-group labels of `ls`, borrowed (no string copies per
    /// sample and step).
    fn signature<'l>(&self, ls: &'l Labels) -> Vec<(&'l str, &'l str)> {
        ls.iter()
            .filter(|l| {
                if self.on {
                    self.names.contains(&l.name)
                } else {
                    l.name != METRIC_NAME && !self.names.contains(&l.name)
                }
            })
            .map(|l| (l.name.as_str(), l.value.as_str()))
            .collect()
    }

    fn signature_labels(&self, ls: &Labels) -> Labels {
        Labels::from_pairs(self.signature(ls)).unwrap_or_default()
    }
}

fn set_and(l: Vec<Sample>, r: Vec<Sample>, m: Option<&BinModifier>) -> Vec<Sample> {
    let mt = Matching::new(m);
    let sigs: HashSet<_> = r.iter().map(|s| mt.signature(&s.labels)).collect();
    l.into_iter().filter(|s| sigs.contains(&mt.signature(&s.labels))).collect()
}

fn set_or(l: Vec<Sample>, r: Vec<Sample>, m: Option<&BinModifier>) -> Vec<Sample> {
    let mt = Matching::new(m);
    let sigs: HashSet<_> = l.iter().map(|s| mt.signature(&s.labels)).collect();
    let keep: Vec<bool> = r.iter().map(|s| !sigs.contains(&mt.signature(&s.labels))).collect();
    drop(sigs);
    let mut out = l;
    out.extend(r.into_iter().zip(keep).filter_map(|(s, k)| k.then_some(s)));
    out
}

fn set_unless(l: Vec<Sample>, r: Vec<Sample>, m: Option<&BinModifier>) -> Vec<Sample> {
    let mt = Matching::new(m);
    let sigs: HashSet<_> = r.iter().map(|s| mt.signature(&s.labels)).collect();
    l.into_iter().filter(|s| !sigs.contains(&mt.signature(&s.labels))).collect()
}

fn vector_vector(
    ctx: &Ctx<'_>,
    lhs: Vec<Sample>,
    rhs: Vec<Sample>,
    op: Op,
    m: Option<&BinModifier>,
    return_bool: bool,
) -> Result<Vec<Sample>, QueryError> {
    // `fill_left` fills a missing sample of the "many" side (the left one
    // unless `group_right`), `fill_right` one of the "one" side.
    let (fill_many, fill_one) = m.map_or((None, None), |m| (m.fill_values.lhs, m.fill_values.rhs));
    if (lhs.is_empty() && fill_many.is_none()) || (rhs.is_empty() && fill_one.is_none()) {
        return Ok(Vec::new());
    }
    let card = m.map_or(&VectorMatchCardinality::OneToOne, |m| &m.card);
    let include: &[String] = match card {
        VectorMatchCardinality::ManyToOne(l) | VectorMatchCardinality::OneToMany(l) => &l.labels,
        _ => &[],
    };
    let one_to_many = matches!(card, VectorMatchCardinality::OneToMany(_));
    let one_to_one = matches!(card, VectorMatchCardinality::OneToOne);
    let mt = Matching::new(m);
    let (many, one) = if one_to_many { (rhs, lhs) } else { (lhs, rhs) };
    let mut one_by_sig: HashMap<Vec<(&str, &str)>, &Sample> = HashMap::with_capacity(one.len());
    for s in &one {
        let sig = mt.signature(&s.labels);
        if let Some(dup) = one_by_sig.get(&sig) {
            let side = if one_to_many { "left" } else { "right" };
            return Err(QueryError::Execution(format!(
                "found duplicate series for the match group {} on the {side} hand-side of the operation: [{}, {}];many-to-many matching not allowed: matching labels must be unique on one side",
                mt.signature_labels(&s.labels),
                dup.labels,
                s.labels
            )));
        }
        one_by_sig.insert(sig, s);
    }
    let mut matched: HashMap<Vec<(&str, &str)>, HashSet<Labels>> = HashMap::new();
    let mut out = Vec::new();
    let empty = Labels::empty();
    let calc = |many_v: f64, one_v: f64| -> Option<f64> {
        let (a, b) = if one_to_many { (one_v, many_v) } else { (many_v, one_v) };
        let (v, keep) = apply(op, a, b);
        if return_bool { Some(f64::from(u8::from(keep))) } else { keep.then_some(v) }
    };
    let calc_h = |many_v: f64,
                  many_h: Option<&Histogram>,
                  one_v: f64,
                  one_h: Option<&Histogram>|
     -> Option<(f64, Option<Box<Histogram>>)> {
        if many_h.is_none() && one_h.is_none() {
            return calc(many_v, one_v).map(|v| (v, None));
        }
        let ((a, ah), (b, bh)) =
            if one_to_many { ((one_v, one_h), (many_v, many_h)) } else { ((many_v, many_h), (one_v, one_h)) };
        match apply_hist(op, a, ah, b, bh) {
            Ok((v, h, reconciled)) => {
                if reconciled {
                    annotate_drop(ctx, HistDrop::Filtered, op, true, true, true);
                }
                if return_bool {
                    // `h == bool h`: 1 when equal.
                    return Some((1.0, None));
                }
                Some((v, h))
            }
            Err(HistDrop::Filtered) if return_bool => Some((0.0, None)),
            Err(why) => {
                annotate_drop(ctx, why, op, ah.is_some(), bh.is_some(), false);
                None
            }
        }
    };
    for ms in &many {
        let sig = mt.signature(&ms.labels);
        let (one_labels, one_v, one_h) = match (one_by_sig.get(&sig), fill_one) {
            (Some(os), _) => (&os.labels, os.v, os.h.as_deref()),
            (None, Some(f)) => (&empty, f, None),
            (None, None) => continue,
        };
        // One-to-one matching is checked before comparisons filter, as
        // Prometheus does.
        if one_to_one {
            let e = matched.entry(sig.clone());
            if matches!(e, std::collections::hash_map::Entry::Occupied(_)) {
                return Err(QueryError::Execution(
                    "multiple matches for labels: many-to-one matching must be explicit (group_left/group_right)"
                        .into(),
                ));
            }
            e.or_default();
        }
        let Some((v, h)) = calc_h(ms.v, ms.h.as_deref(), one_v, one_h) else { continue };
        let labels = result_labels(&ms.labels, one_labels, op, &mt, one_to_one, include, return_bool);
        if !one_to_one && !matched.entry(sig).or_default().insert(labels.clone()) {
            return Err(QueryError::Execution(
                "multiple matches for labels: grouping labels must ensure unique matches".into(),
            ));
        }
        out.push(Sample { labels, t: ms.t, v, drop_name: ms.drop_name || op.drops_name() || return_bool, h });
    }
    if let Some(f) = fill_many {
        // One-side samples no many-side sample matched: one result each,
        // labelled with the match group's labels.
        let many_sigs: HashSet<_> = many.iter().map(|ms| mt.signature(&ms.labels)).collect();
        for os in &one {
            if many_sigs.contains(&mt.signature(&os.labels)) {
                continue;
            }
            if let Some((v, h)) = calc_h(f, None, os.v, os.h.as_deref()) {
                let mut s = Sample::new(mt.signature_labels(&os.labels), os.t, v);
                s.h = h;
                out.push(s);
            }
        }
    }
    Ok(out)
}

fn result_labels(
    many: &Labels,
    one: &Labels,
    op: Op,
    mt: &Matching<'_>,
    one_to_one: bool,
    include: &[String],
    return_bool: bool,
) -> Labels {
    // A dropped name is only marked (see `Sample::drop_name`).
    let _ = (op, return_bool);
    if include.is_empty() && (!one_to_one || (!mt.on && !many.iter().any(|l| mt.names.contains(&l.name)))) {
        // Nothing to drop or add: the many side's labels as they are
        // (a shared clone, no rebuilding at every step).
        return many.clone();
    }
    let mut ls: Vec<Label> = many.iter().cloned().collect();
    if one_to_one {
        if mt.on {
            ls.retain(|l| mt.names.contains(&l.name));
        } else {
            ls.retain(|l| !mt.names.contains(&l.name));
        }
    }
    for n in include {
        ls.retain(|l| l.name != *n);
        if let Some(v) = one.get(n) {
            ls.push(Label { name: n.clone(), value: v.to_string() });
        }
    }
    Labels::from_pairs(ls.into_iter().map(|l| (l.name, l.value))).unwrap_or_default()
}

/// A binary operation over whole-range values (see `super::fast`):
/// arithmetic and comparisons between scalars and float vectors, with
/// one-to-one matching. `None` for what the step evaluator must do
/// (set operators, `group_left`/`group_right`, fill modifiers, scalar
/// comparisons, match groups that are not unique on a side).
/// Whether [`range_binary`] can take `b` at all (its operator; the
/// operands' data may still send it to the step evaluator).
pub(crate) fn range_supported(b: &BinaryExpr) -> bool {
    Op::of(b).is_ok_and(|op| !matches!(op, Op::And | Op::Or | Op::Unless | Op::TrimUpper | Op::TrimLower))
}

pub(crate) fn range_binary(
    b: &BinaryExpr,
    lhs: super::fast::RangeValue,
    rhs: super::fast::RangeValue,
) -> Result<Option<super::fast::RangeValue>, QueryError> {
    use super::fast::{RangeValue, StepSeries};
    let Ok(op) = Op::of(b) else {
        return Ok(None);
    };
    if matches!(op, Op::And | Op::Or | Op::Unless | Op::TrimUpper | Op::TrimLower) {
        return Ok(None);
    }
    let modifier = b.modifier.as_ref();
    let return_bool = modifier.is_some_and(|m| m.return_bool);
    // A vector and a scalar: each point on its own.
    let with_scalar = |vs: Vec<StepSeries>, c: &[f64], swap: bool| -> RangeValue {
        let out = vs
            .into_iter()
            .map(|s| {
                let pts = s
                    .pts
                    .into_iter()
                    .filter_map(|(i, x)| {
                        let c = c.get(i as usize).copied().unwrap_or(f64::NAN);
                        let (a, b) = if swap { (c, x) } else { (x, c) };
                        let (mut v, keep) = apply(op, a, b);
                        if op.is_comparison() && swap {
                            v = b;
                        }
                        if return_bool { Some((i, f64::from(u8::from(keep)))) } else { keep.then_some((i, v)) }
                    })
                    .collect();
                StepSeries { labels: s.labels, drop_name: s.drop_name || op.drops_name() || return_bool, pts }
            })
            .collect();
        RangeValue::Vector(out)
    };
    match (lhs, rhs) {
        (RangeValue::Scalar(a), RangeValue::Scalar(c)) => {
            if op.is_comparison() {
                return Ok(None);
            }
            Ok(Some(RangeValue::Scalar(a.iter().zip(&c).map(|(&a, &c)| apply(op, a, c).0).collect())))
        }
        (RangeValue::Vector(vs), RangeValue::Scalar(c)) => Ok(Some(with_scalar(vs, &c, false))),
        (RangeValue::Scalar(c), RangeValue::Vector(vs)) => Ok(Some(with_scalar(vs, &c, true))),
        (RangeValue::Vector(l), RangeValue::Vector(r)) => {
            let one_to_one = modifier.is_none_or(|m| matches!(m.card, VectorMatchCardinality::OneToOne));
            let fills = modifier.is_some_and(|m| m.fill_values.lhs.is_some() || m.fill_values.rhs.is_some());
            if !one_to_one || fills {
                return Ok(None);
            }
            let mt = Matching::new(modifier);
            // Match groups must be unique on each side (the step evaluator
            // decides, step by step, what duplicates mean).
            let mut right: HashMap<Vec<(&str, &str)>, usize> = HashMap::with_capacity(r.len());
            for (i, s) in r.iter().enumerate() {
                if !s.pts.is_empty() && right.insert(mt.signature(&s.labels), i).is_some() {
                    return Ok(None);
                }
            }
            let mut left: HashSet<Vec<(&str, &str)>> = HashSet::with_capacity(l.len());
            let mut out = Vec::with_capacity(l.len());
            for s in &l {
                if s.pts.is_empty() {
                    continue;
                }
                let sig = mt.signature(&s.labels);
                let Some(&j) = right.get(&sig) else {
                    continue;
                };
                if !left.insert(sig) {
                    return Ok(None);
                }
                let o = &r[j];
                let mut pts = Vec::with_capacity(s.pts.len().min(o.pts.len()));
                let mut k = 0usize;
                for &(i, a) in &s.pts {
                    while k < o.pts.len() && o.pts[k].0 < i {
                        k += 1;
                    }
                    let Some(&(oi, c)) = o.pts.get(k) else { break };
                    if oi != i {
                        continue;
                    }
                    let (v, keep) = apply(op, a, c);
                    if return_bool {
                        pts.push((i, f64::from(u8::from(keep))));
                    } else if keep {
                        pts.push((i, v));
                    }
                }
                let labels = result_labels(&s.labels, &o.labels, op, &mt, true, &[], return_bool);
                out.push(StepSeries { labels, drop_name: s.drop_name || op.drops_name() || return_bool, pts });
            }
            Ok(Some(RangeValue::Vector(out)))
        }
    }
}
