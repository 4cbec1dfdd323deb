//! State of the `metrics` stages: counters and histograms derived from log
//! entries (as Promtail's `metrics` stage), per tenant and stream, written
//! into the metrics store every `interval` through the normal append path.
//!
//! Series are labelled with the entry's stream labels (after `labels`
//! stages) plus `__name__`. Values live in memory: a restart starts every
//! counter from 0 again, which PromQL's `rate`/`increase` read as a counter
//! reset. A series not updated for `max_idle` gets a staleness marker and
//! is forgotten, so memory follows the active streams.

use std::collections::HashMap;
use std::sync::Mutex;

use cairn_wire::{Labels, SeriesSamples};
use regex::Regex;

use super::config::{CounterAction, MetricKind};

/// One compiled `metrics` stage.
#[derive(Debug)]
pub(crate) struct MetricDef {
    pub name: String,
    pub kind: MetricKind,
    pub line_match: Option<Regex>,
    pub source: Option<String>,
    pub value: Option<String>,
    pub action: CounterAction,
    pub count_bytes: bool,
    /// Sorted upper bounds (without +Inf).
    pub buckets: Vec<f64>,
    pub interval_ms: i64,
    pub max_idle_ns: i64,
}

/// What one entry contributes to a metric, or why it contributes nothing.
pub(crate) enum Observation {
    /// Add or observe this value.
    Value(f64),
    /// The entry does not match the stage's conditions.
    NoMatch,
    /// The `source` value is not a number.
    NotANumber,
}

impl MetricDef {
    /// What `line` with `field` (the value of `source`) contributes.
    pub fn observe(&self, line: &str, field: Option<&str>) -> Observation {
        if let Some(re) = &self.line_match
            && !re.is_match(line)
        {
            return Observation::NoMatch;
        }
        if self.source.is_some() {
            let Some(v) = field else { return Observation::NoMatch };
            if let Some(want) = &self.value
                && v != want
            {
                return Observation::NoMatch;
            }
        }
        let numeric = || match field.map(|v| v.trim().parse::<f64>()) {
            Some(Ok(x)) if x.is_finite() => Observation::Value(x),
            _ => Observation::NotANumber,
        };
        match (self.kind, self.action) {
            (MetricKind::Histogram, _) => numeric(),
            (MetricKind::Counter, CounterAction::Add) => match numeric() {
                // A counter only goes up.
                Observation::Value(x) if x < 0.0 => Observation::NotANumber,
                o => o,
            },
            (MetricKind::Counter, CounterAction::Inc) => {
                Observation::Value(if self.count_bytes { line.len() as f64 } else { 1.0 })
            }
        }
    }
}

#[derive(Debug)]
enum Value {
    Counter(f64),
    Histogram { counts: Vec<u64>, sum: f64, count: u64 },
}

#[derive(Debug)]
struct SeriesState {
    value: Value,
    updated_ns: i64,
}

#[derive(Debug, Default)]
struct State {
    /// (metric, tenant, stream labels) → value.
    series: HashMap<(usize, String, Labels), SeriesState>,
    /// Per metric: when its values were last written (ms).
    last_write_ms: Vec<i64>,
}

/// Every derived metric's definition and current values.
#[derive(Debug, Default)]
pub(crate) struct Derived {
    pub defs: Vec<MetricDef>,
    state: Mutex<State>,
}

impl Derived {
    /// The definitions, with no values yet.
    pub fn new(defs: Vec<MetricDef>) -> Derived {
        Derived { defs, state: Mutex::default() }
    }

    /// Applies a batch's observations: (metric, value) pairs per stream
    /// label set, for `tenant`, at `now_ns` (one lock for the batch).
    pub fn record<'a>(
        &self,
        tenant: &str,
        groups: impl Iterator<Item = (&'a Labels, &'a [(usize, f64)])>,
        now_ns: i64,
    ) {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        for (labels, obs) in groups {
            // One series lookup per metric of the group, not per value.
            let mut done = 0u64;
            for (i, &(m, _)) in obs.iter().enumerate() {
                if m < 64 && done & (1 << m) != 0 {
                    continue;
                }
                if m < 64 {
                    done |= 1 << m;
                } else if obs[..i].iter().any(|o| o.0 == m) {
                    continue;
                }
                let Some(def) = self.defs.get(m) else { continue };
                let s = st.series.entry((m, tenant.to_string(), labels.clone())).or_insert_with(|| SeriesState {
                    value: match def.kind {
                        MetricKind::Counter => Value::Counter(0.0),
                        MetricKind::Histogram => {
                            Value::Histogram { counts: vec![0; def.buckets.len()], sum: 0.0, count: 0 }
                        }
                    },
                    updated_ns: now_ns,
                });
                s.updated_ns = now_ns;
                for v in obs[i..].iter().filter(|o| o.0 == m).map(|o| o.1) {
                    match &mut s.value {
                        Value::Counter(c) => *c += v,
                        Value::Histogram { counts, sum, count } => {
                            // Non-cumulative per bucket; made cumulative on write.
                            if let Some(b) = def.buckets.iter().position(|&b| v <= b) {
                                counts[b] += 1;
                            }
                            *sum += v;
                            *count += 1;
                        }
                    }
                }
            }
        }
    }

    /// The samples due at `now_ns`: for each metric whose `interval` has
    /// passed, every live series' current value, and a staleness marker for
    /// series idle past `max_idle` (which are then forgotten). Grouped by
    /// tenant.
    pub fn collect(&self, now_ns: i64) -> Vec<(String, Vec<SeriesSamples>)> {
        let now_ms = now_ns / 1_000_000;
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        st.last_write_ms.resize(self.defs.len(), i64::MIN);
        let due: Vec<bool> = self
            .defs
            .iter()
            .zip(&st.last_write_ms)
            .map(|(d, &last)| last == i64::MIN || now_ms.saturating_sub(last) >= d.interval_ms)
            .collect();
        if !due.iter().any(|&d| d) {
            return Vec::new();
        }
        for (i, d) in due.iter().enumerate() {
            if *d {
                st.last_write_ms[i] = now_ms;
            }
        }
        let mut by_tenant: HashMap<String, Vec<SeriesSamples>> = HashMap::new();
        let mut expired = Vec::new();
        for (key, s) in &st.series {
            let (m, tenant, labels) = key;
            if !due[*m] {
                continue;
            }
            let def = &self.defs[*m];
            let stale = now_ns.saturating_sub(s.updated_ns) > def.max_idle_ns;
            if stale {
                expired.push(key.clone());
            }
            let out = by_tenant.entry(tenant.clone()).or_default();
            let mut put = |name: &str, extra: Option<(&str, String)>, v: f64| {
                let pairs = labels
                    .iter()
                    .map(|l| (l.name.as_str(), l.value.clone()))
                    .filter(|(n, _)| *n != cairn_wire::METRIC_NAME && Some(*n) != extra.as_ref().map(|e| e.0))
                    .chain(std::iter::once((cairn_wire::METRIC_NAME, name.to_string())))
                    .chain(extra.clone());
                if let Ok(l) = Labels::from_pairs(pairs) {
                    let v = if stale { f64::from_bits(cairn_wire::STALE_NAN_BITS) } else { v };
                    out.push(SeriesSamples { labels: l, samples: vec![(now_ms, v)] });
                }
            };
            match &s.value {
                Value::Counter(c) => put(&def.name, None, *c),
                Value::Histogram { counts, sum, count } => {
                    let bucket = format!("{}_bucket", def.name);
                    let mut cum = 0u64;
                    for (b, n) in def.buckets.iter().zip(counts) {
                        cum += n;
                        put(&bucket, Some(("le", cairn_wire::format_float(*b))), cum as f64);
                    }
                    put(&bucket, Some(("le", "+Inf".into())), *count as f64);
                    put(&format!("{}_sum", def.name), None, *sum);
                    put(&format!("{}_count", def.name), None, *count as f64);
                }
            }
        }
        for k in expired {
            st.series.remove(&k);
        }
        let mut v: Vec<_> = by_tenant.into_iter().collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }

    /// Live series (for tests and the dry run).
    pub fn series_count(&self) -> usize {
        self.state.lock().unwrap_or_else(|p| p.into_inner()).series.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn def(kind: MetricKind, action: CounterAction) -> MetricDef {
        MetricDef {
            name: "m".into(),
            kind,
            line_match: None,
            source: Some("f".into()),
            value: None,
            action,
            count_bytes: false,
            buckets: vec![0.1, 1.0],
            interval_ms: 1000,
            max_idle_ns: 10_000_000_000,
        }
    }

    #[test]
    fn counters_histograms_intervals_and_staleness() {
        let mut h = def(MetricKind::Histogram, CounterAction::Inc);
        h.name = "h".into();
        let d = Derived::new(vec![def(MetricKind::Counter, CounterAction::Add), h]);
        assert!(matches!(d.defs[0].observe("x", Some("2.5")), Observation::Value(2.5)));
        assert!(matches!(d.defs[0].observe("x", Some("-1")), Observation::NotANumber));
        assert!(matches!(d.defs[0].observe("x", None), Observation::NoMatch));
        assert!(matches!(d.defs[1].observe("x", Some("abc")), Observation::NotANumber));
        let l = Labels::from_pairs([("job", "a")]).unwrap();
        let obs = [(0, 2.5), (0, 1.0), (1, 0.05), (1, 0.5), (1, 7.0)];
        let t0 = 1_000_000_000_000;
        d.record("t", std::iter::once((&l, &obs[..])), t0);
        let out = d.collect(t0);
        assert_eq!(out.len(), 1);
        let mut got: Vec<(String, f64)> = out[0].1.iter().map(|s| (s.labels.to_string(), s.samples[0].1)).collect();
        got.sort_by(|a, b| a.0.cmp(&b.0));
        let want = [
            (r#"{__name__="h_bucket", job="a", le="+Inf"}"#, 3.0),
            (r#"{__name__="h_bucket", job="a", le="0.1"}"#, 1.0),
            (r#"{__name__="h_bucket", job="a", le="1"}"#, 2.0),
            (r#"{__name__="h_count", job="a"}"#, 3.0),
            (r#"{__name__="h_sum", job="a"}"#, 7.55),
            (r#"{__name__="m", job="a"}"#, 3.5),
        ];
        assert_eq!(got, want.map(|(a, b)| (a.to_string(), b)));
        // Not due again before the interval.
        assert!(d.collect(t0 + 500_000_000).is_empty());
        assert_eq!(d.collect(t0 + 1_000_000_000)[0].1.len(), 6);
        // Idle past max_idle: one staleness marker each, then forgotten.
        let late = d.collect(t0 + 11_000_000_000);
        assert!(late[0].1.iter().all(|s| cairn_wire::is_stale_nan(s.samples[0].1)));
        assert_eq!(d.series_count(), 0);
    }
}
