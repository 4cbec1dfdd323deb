//! Aggregation operators (`sum`, `avg`, …, `limit_ratio`) with `by` /
//! `without`, following Prometheus's `aggregation()`: groups appear in the
//! order of their first input series.

use std::collections::HashMap;

use cairn_wire::labels::is_valid_label_name;
use cairn_wire::{Label, Labels, METRIC_NAME};
use promql_parser::parser::{AggregateExpr, LabelModifier};

use super::eval::Ctx;
use super::functions::{kahan_inc, quantile_of, warn_quantile};
use super::{QueryError, Sample, Value};

/// The labels of `ls` that make its group key under the modifier, in order.
fn key_labels<'a>(ls: &'a Labels, m: Option<&'a LabelModifier>) -> impl Iterator<Item = &'a Label> + 'a {
    ls.iter().filter(move |l| match m {
        None => false,
        Some(LabelModifier::Include(names)) => names.labels.contains(&l.name),
        Some(LabelModifier::Exclude(names)) => l.name != METRIC_NAME && !names.labels.contains(&l.name),
    })
}

/// Hash of the group key of `ls`, computed without building it (FxHash
/// style: a multiply and rotate per 8 bytes; collisions are resolved by
/// comparing labels).
fn key_hash(ls: &Labels, m: Option<&LabelModifier>) -> u64 {
    const K: u64 = 0x517c_c1b7_2722_0a95;
    let mut h = 0u64;
    let mut add = |bytes: &[u8]| {
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            let w = u64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]);
            h = (h.rotate_left(5) ^ w).wrapping_mul(K);
        }
        let mut tail = [0u8; 8];
        tail[..chunks.remainder().len()].copy_from_slice(chunks.remainder());
        // The length separates "ab","c" from "a","bc".
        h = (h.rotate_left(5) ^ u64::from_le_bytes(tail) ^ ((bytes.len() as u64) << 56)).wrapping_mul(K);
    };
    for l in key_labels(ls, m) {
        add(l.name.as_bytes());
        add(l.value.as_bytes());
    }
    h
}

/// Group key labels of `ls` under the modifier.
pub(crate) fn group_labels(ls: &Labels, m: Option<&LabelModifier>) -> Labels {
    match m {
        None => Labels::empty(),
        Some(LabelModifier::Include(names)) => {
            Labels::from_pairs(ls.iter().filter(|l| names.labels.contains(&l.name)).map(|l| (&*l.name, &*l.value)))
                .unwrap_or_default()
        }
        Some(LabelModifier::Exclude(names)) => Labels::from_pairs(
            ls.iter()
                .filter(|l| l.name != METRIC_NAME && !names.labels.contains(&l.name))
                .map(|l| (&*l.name, &*l.value)),
        )
        .unwrap_or_default(),
    }
}

/// Running state of `avg` (Kahan sum, switching to an incremental mean on
/// overflow, as Prometheus does); shared with `avg_over_time`.
#[derive(Default, Clone, Copy)]
pub(crate) struct Mean {
    count: f64,
    sum: f64,
    c: f64,
    mean: f64,
    incremental: bool,
}

impl Mean {
    pub fn add(&mut self, f: f64) {
        self.count += 1.0;
        if self.count == 1.0 {
            self.sum = f;
            return;
        }
        if !self.incremental {
            let (ns, nc) = kahan_inc(f, self.sum, self.c);
            if !ns.is_infinite() {
                self.sum = ns;
                self.c = nc;
                return;
            }
            self.incremental = true;
            self.mean = self.sum / (self.count - 1.0);
            self.c /= self.count - 1.0;
        }
        let q = (self.count - 1.0) / self.count;
        let (m, c) = kahan_inc(f / self.count, q * self.mean, q * self.c);
        self.mean = m;
        self.c = c;
    }

    pub fn value(&self) -> f64 {
        if self.incremental { self.mean + self.c } else { self.sum / self.count + self.c / self.count }
    }
}

struct Group {
    labels: Labels,
    samples: Vec<Sample>,
}

impl Group {
    /// Whether the group's name (if kept by `by`) is to be dropped.
    fn drop_name(&self) -> bool {
        self.samples.iter().any(|s| s.drop_name)
    }
}

pub(crate) fn eval_aggregate(ctx: &Ctx<'_>, a: &AggregateExpr, t: i64) -> Result<Value, QueryError> {
    let op = a.op.to_string();
    let param_scalar = |ctx: &Ctx<'_>| -> Result<f64, QueryError> {
        match &a.param {
            Some(p) => ctx.eval_scalar(p, t),
            None => Err(QueryError::BadData(format!("{op} needs a parameter"))),
        }
    };
    let input = ctx.eval_vector(&a.expr, t)?;
    let m = a.modifier.as_ref();
    // Groups in order of first appearance.
    let mut index: HashMap<Labels, usize> = HashMap::new();
    let mut groups: Vec<Group> = Vec::new();
    let keyed = |s: &Sample| group_labels(&s.labels, m);
    let mut count_values_label = None;
    if op == "count_values" {
        let name = match &a.param {
            Some(p) => ctx.eval_string(p, t)?,
            None => return Err(QueryError::BadData("count_values needs a label name".into())),
        };
        if !is_valid_label_name(&name) {
            return Err(QueryError::Execution(format!("invalid label name {}", crate::go_quote(&name))));
        }
        count_values_label = Some(name);
    }
    // Names pending a drop still partition groups (`by (__name__)`), and the
    // pending drop carries over to the group, as in Prometheus.
    // Without count_values, the key's hash picks the group and the key is
    // built only for a new group (one allocation per group, not per sample).
    let mut by_hash: super::FxMap<u64, usize> = Default::default();
    let input = if count_values_label.is_none() {
        for s in input {
            let h = key_hash(&s.labels, m);
            let same = |g: &Group| g.labels.iter().eq(key_labels(&s.labels, m));
            let found = match by_hash.get(&h) {
                Some(&i) if same(&groups[i]) => Some(i),
                // A hash collision (or none): look through the groups.
                Some(_) => groups.iter().position(same),
                None => None,
            };
            let i = match found {
                Some(i) => i,
                None => {
                    by_hash.entry(h).or_insert(groups.len());
                    let node = a as *const _ as usize;
                    let cached = ctx.group_keys.borrow().get(&(node, h)).cloned();
                    let labels = match cached {
                        Some(l) if l.iter().eq(key_labels(&s.labels, m)) => l,
                        _ => {
                            let l = keyed(&s);
                            ctx.group_keys.borrow_mut().insert((node, h), l.clone());
                            l
                        }
                    };
                    groups.push(Group { labels, samples: Vec::new() });
                    groups.len() - 1
                }
            };
            groups[i].samples.push(s);
        }
        Vec::new()
    } else {
        input
    };
    for s in input {
        let mut key = keyed(&s);
        if let Some(name) = &count_values_label {
            let mut ls: Vec<Label> = key.iter().filter(|l| l.name != *name).cloned().collect();
            let value = match &s.h {
                Some(h) => h.to_prom_string(),
                None => go_format_float(s.v),
            };
            ls.push(Label { name: name.clone(), value });
            key = Labels::from_pairs(ls.into_iter().map(|l| (l.name, l.value))).unwrap_or_default();
        }
        let i = match index.get(&key) {
            Some(&i) => i,
            None => {
                index.insert(key.clone(), groups.len());
                groups.push(Group { labels: key, samples: Vec::new() });
                groups.len() - 1
            }
        };
        groups[i].samples.push(s);
    }
    let mut out = Vec::with_capacity(groups.len());
    let one = |g: &Group, v: f64| Sample { labels: g.labels.clone(), t, v, drop_name: g.drop_name(), h: None };
    // Operators over float values only: histogram samples are ignored (a
    // group of only histograms gives no result), as in Prometheus.
    if matches!(op.as_str(), "min" | "max" | "stddev" | "stdvar" | "quantile" | "topk" | "bottomk")
        && groups.iter().any(|g| g.samples.iter().any(|s| s.h.is_some()))
    {
        ctx.info(format!("ignored histogram in {op} aggregation"));
        for g in &mut groups {
            g.samples.retain(|s| s.h.is_none());
        }
        groups.retain(|g| !g.samples.is_empty());
    }
    // sum and avg of histograms: all of a group's samples must be
    // histograms (a mix gives no result for the group).
    if matches!(op.as_str(), "sum" | "avg") && groups.iter().any(|g| g.samples.iter().any(|s| s.h.is_some())) {
        let mut float_groups = Vec::with_capacity(groups.len());
        let mut results = Vec::new();
        for g in groups {
            let n = g.samples.iter().filter(|s| s.h.is_some()).count();
            if n == 0 {
                float_groups.push(g);
                continue;
            }
            if n != g.samples.len() {
                ctx.warn(format!("encountered a mix of histograms and floats for aggregation \"{op}\""));
                continue;
            }
            match super::histfn::sum_histograms_noted(g.samples.iter().filter_map(|s| s.h.as_deref()), op == "avg") {
                Some((h, noted)) => {
                    if noted.reset_collision {
                        ctx.warn("conflicting counter resets during histogram aggregation".into());
                    }
                    if noted.reconciled {
                        ctx.info("mismatched custom buckets were reconciled during aggregation".into());
                    }
                    let mut s = one(&g, 0.0);
                    s.h = Some(Box::new(h));
                    results.push(s);
                }
                None => ctx.warn(format!(
                    "vector contains a mix of histograms with exponential and custom buckets schemas for aggregation \"{op}\""
                )),
            }
        }
        groups = float_groups;
        out = results;
    }
    match op.as_str() {
        "sum" => {
            for g in groups {
                let (mut s, mut c) = (0.0, 0.0);
                for x in &g.samples {
                    (s, c) = kahan_inc(x.v, s, c);
                }
                out.push(one(&g, if c.is_finite() { s + c } else { s }));
            }
        }
        "avg" => {
            for g in groups {
                let mut mean = Mean::default();
                for x in &g.samples {
                    mean.add(x.v);
                }
                out.push(one(&g, mean.value()));
            }
        }
        "min" | "max" => {
            let is_min = op == "min";
            for g in groups {
                let mut v = g.samples[0].v;
                for x in &g.samples[1..] {
                    if v.is_nan() || (is_min && x.v < v) || (!is_min && x.v > v) {
                        v = x.v;
                    }
                }
                out.push(one(&g, v));
            }
        }
        "count" | "count_values" => {
            for g in groups {
                out.push(one(&g, g.samples.len() as f64));
            }
        }
        "group" => {
            for g in groups {
                out.push(one(&g, 1.0));
            }
        }
        "stddev" | "stdvar" => {
            for g in groups {
                let (mut n, mut mean, mut acc) = (0.0, 0.0, 0.0);
                for x in &g.samples {
                    n += 1.0;
                    let delta = x.v - mean;
                    mean += delta / n;
                    acc += delta * (x.v - mean);
                }
                let var = acc / n;
                out.push(one(&g, if op == "stddev" { var.sqrt() } else { var }));
            }
        }
        "quantile" => {
            let q = param_scalar(ctx)?;
            warn_quantile(ctx, q);
            for g in groups {
                let mut vals: Vec<f64> = g.samples.iter().map(|x| x.v).collect();
                out.push(one(&g, quantile_of(q, &mut vals)));
            }
        }
        "topk" | "bottomk" | "limitk" => {
            let k = param_scalar(ctx)?;
            if k.is_nan() {
                return Err(QueryError::Execution("Parameter value is NaN".into()));
            }
            if !(-9.223_372_036_854_776e18..9.223_372_036_854_776e18).contains(&k) {
                return Err(QueryError::Execution(format!("Scalar value {} overflows int64", go_format_float(k))));
            }
            let k = k as i64;
            if k < 1 {
                return Ok(Value::Vector(Vec::new()));
            }
            let k = k as usize;
            for mut g in groups {
                match op.as_str() {
                    "topk" => g.samples.sort_by(|a, b| desc_nan_last(a.v, b.v)),
                    "bottomk" => g.samples.sort_by(|a, b| asc_nan_last(a.v, b.v)),
                    _ => {}
                }
                g.samples.truncate(k);
                out.extend(g.samples);
            }
        }
        "limit_ratio" => {
            let r = param_scalar(ctx)?;
            if r.is_nan() {
                return Err(QueryError::Execution("Ratio value is NaN".into()));
            }
            let r = r.clamp(-1.0, 1.0);
            for g in groups {
                out.extend(g.samples.into_iter().filter(|s| add_ratio_sample(r, &s.labels)));
            }
        }
        other => return Err(QueryError::Unsupported(format!("aggregation {other}"))),
    }
    Ok(Value::Vector(out))
}

/// Prometheus's `labels.Labels.Hash()`: xxHash64 of `name 0xff value 0xff …`.
pub(crate) fn labels_hash(ls: &Labels) -> u64 {
    let mut b = Vec::with_capacity(ls.byte_size() + 2 * ls.len());
    for l in ls.iter() {
        b.extend_from_slice(l.name.as_bytes());
        b.push(0xff);
        b.extend_from_slice(l.value.as_bytes());
        b.push(0xff);
    }
    twox_hash::XxHash64::oneshot(0, &b)
}

/// Prometheus's `AddRatioSample`: a stable pseudo-random choice of series
/// by label hash; a negative ratio picks the complement.
fn add_ratio_sample(ratio: f64, ls: &Labels) -> bool {
    let offset = labels_hash(ls) as f64 / u64::MAX as f64;
    (ratio >= 0.0 && offset < ratio) || (ratio < 0.0 && offset >= 1.0 + ratio)
}

/// Descending by value, NaN last.
pub(crate) fn desc_nan_last(a: f64, b: f64) -> std::cmp::Ordering {
    match (a.is_nan(), b.is_nan()) {
        (true, true) => std::cmp::Ordering::Equal,
        (true, false) => std::cmp::Ordering::Greater,
        (false, true) => std::cmp::Ordering::Less,
        _ => b.partial_cmp(&a).unwrap_or(std::cmp::Ordering::Equal),
    }
}

/// Ascending by value, NaN last.
pub(crate) fn asc_nan_last(a: f64, b: f64) -> std::cmp::Ordering {
    match (a.is_nan(), b.is_nan()) {
        (true, true) => std::cmp::Ordering::Equal,
        (true, false) => std::cmp::Ordering::Greater,
        (false, true) => std::cmp::Ordering::Less,
        _ => a.partial_cmp(&b).unwrap_or(std::cmp::Ordering::Equal),
    }
}

/// Go's `strconv.FormatFloat(v, 'f', -1, 64)`: shortest digits, no exponent.
pub(crate) fn go_format_float(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v == f64::INFINITY {
        "+Inf".into()
    } else if v == f64::NEG_INFINITY {
        "-Inf".into()
    } else {
        format!("{v}")
    }
}
