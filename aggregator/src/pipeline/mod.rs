//! The ingest pipeline: `[[pipeline]]` stage chains that parse, relabel,
//! redact, drop and count log entries as they arrive, before they are
//! stored (user documentation: `docs/pipeline.md`).
//!
//! [`Pipeline::apply`] is the one call on the push path
//! (`Aggregator::ingest_logs`). Its cost model:
//! - no chain configured: one `is_empty` check;
//! - per stream of a push: which chains match is looked up in a cache keyed
//!   by (tenant, labels), so selectors are evaluated once per new stream;
//!   a stream no chain matches is passed through untouched (moved);
//! - per entry of a matching stream: the stages run with one reused
//!   [`stages::Scratch`] (field slots whose strings are reused, the line
//!   edited in place where possible); per-stage counters are summed
//!   locally and added to `cairn_pipeline_*` once per call;
//! - entries whose `labels` stages promote the same values share one
//!   output stream; the label-cardinality limit is consulted once per new
//!   label combination per push, not per entry.
//!
//! Chains matching a stream run one after the other, as one list of stages
//! sharing the extracted fields. Matching uses the labels as pushed.

pub mod config;
mod derived;
pub mod stages;
pub mod timefmt;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use cairn_wire::{Entry, Labels, Matcher, SeriesSamples, StreamEntries};
use prometheus_client::metrics::counter::Counter;

use crate::selfmetrics::SelfMetrics;
pub use config::{PipelineConfig, StageConfig};
use derived::Derived;
use stages::{Cx, Scratch, Stage, Step};

/// A pipeline configuration that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PipelineError {
    /// The stream selector does not parse, or has a pipeline.
    #[error("pipeline {pipeline:?}: selector {selector:?}: {reason}")]
    Selector { pipeline: String, selector: String, reason: String },
    /// A stage's settings are invalid.
    #[error("pipeline {pipeline:?}, stage {index} ({kind}): {reason}")]
    Stage { pipeline: String, index: usize, kind: &'static str, reason: String },
}

/// Limits the pipeline enforces, per tenant.
#[derive(Debug, Clone, Default)]
pub struct PipelineLimits {
    /// Most distinct values a label promoted by `labels` stages may take
    /// per tenant; 0: no limit.
    pub max_label_values: usize,
    /// Per-tenant overrides of `max_label_values`.
    pub tenant_max_label_values: HashMap<String, usize>,
    /// Longest promoted label value (`limits.max_label_value_length`);
    /// longer values are kept as structured metadata instead.
    pub max_label_value_length: usize,
}

struct Chain {
    name: String,
    tenant: Option<String>,
    matchers: Vec<Matcher>,
    /// Global ids of its stages.
    stages: std::ops::Range<usize>,
}

struct Slot {
    stage: Stage,
    chain: usize,
    index: usize,
    kind: &'static str,
    processed: Counter,
    dropped: Counter,
    errors: Counter,
    fallbacks: Counter,
}

/// What became of one input entry (dry run).
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// Stored with these stream labels, as this entry.
    Kept {
        /// Stream labels after `labels` stages.
        labels: Labels,
        /// The entry as stored.
        entry: Entry,
        /// Promotions refused by the label-cardinality or length limit
        /// (kept as structured metadata instead).
        refused_labels: Vec<String>,
    },
    /// Dropped by a stage.
    Dropped {
        /// Pipeline name.
        pipeline: String,
        /// Stage position in its pipeline (from 0).
        stage: usize,
        /// Stage type.
        kind: &'static str,
        /// Why.
        why: String,
    },
    /// A partial container line, joined into the entry of a later input
    /// line (or of the first one at the end of the push).
    Joined,
}

/// One input entry's outcome, by input position.
#[derive(Debug, Clone, PartialEq)]
pub struct Traced {
    /// Position of the entry in the input.
    pub input: usize,
    /// What became of it.
    pub outcome: Outcome,
}

impl Traced {
    /// The dry-run JSON form (`cairn pipeline test --json`, `POST
    /// /api/v1/pipeline/test`): `input` (1-based), `result` (`kept`,
    /// `dropped`, `joined`) and, when kept, `labels`, `metadata`, `time`
    /// (RFC 3339), `time_from_line` (false: still the arrival time
    /// `arrival_ns`), `line`, `refused_labels`; when dropped, `pipeline`,
    /// `stage`, `type`, `why`.
    pub fn to_json(&self, arrival_ns: i64) -> serde_json::Value {
        let n = self.input + 1;
        match &self.outcome {
            Outcome::Kept { labels, entry, refused_labels } => serde_json::json!({
                "input": n,
                "result": "kept",
                "labels": labels,
                "metadata": entry
                    .metadata
                    .iter()
                    .map(|(k, v)| (k.clone(), serde_json::Value::String(v.clone())))
                    .collect::<serde_json::Map<_, _>>(),
                "time": cairn_wire::time::format_rfc3339_ns(entry.ts),
                "time_from_line": entry.ts != arrival_ns,
                "line": entry.line,
                "refused_labels": refused_labels,
            }),
            Outcome::Dropped { pipeline, stage, kind, why } => serde_json::json!({
                "input": n, "result": "dropped", "pipeline": pipeline, "stage": stage, "type": kind, "why": why,
            }),
            Outcome::Joined => serde_json::json!({"input": n, "result": "joined"}),
        }
    }
}

/// What a dry run found.
#[derive(Debug, Clone)]
pub struct DryRun {
    /// Names of the chains that matched the stream.
    pub pipelines: Vec<String>,
    /// Each input line's outcome, in input order.
    pub traced: Vec<Traced>,
    /// Samples `metrics` stages derived: series labels and value.
    pub metrics: Vec<(Labels, f64)>,
}

/// Runs `chains` (compiled afresh, so no live state is touched) over
/// `lines` of one stream, as `cairn pipeline test` and `POST
/// /api/v1/pipeline/test` do.
pub fn dry_run(
    chains: &[PipelineConfig],
    limits: PipelineLimits,
    tenant: &str,
    labels: Labels,
    lines: Vec<String>,
    now_ns: i64,
) -> Result<DryRun, PipelineError> {
    let p = Pipeline::new(chains, limits, &SelfMetrics::new())?;
    let pipelines = p.matching(tenant, &labels);
    let entries = lines.into_iter().map(|line| Entry { ts: now_ns, line, metadata: Vec::new() }).collect();
    let traced = p.trace(tenant, labels, entries, now_ns);
    let metrics = p
        .collect_metrics(now_ns)
        .into_iter()
        .flat_map(|(_, batch)| batch)
        .flat_map(|s| s.samples.into_iter().map(move |(_, v)| (s.labels.clone(), v)))
        .collect();
    Ok(DryRun { pipelines, traced, metrics })
}

/// Most streams whose matching chains are remembered per tenant; the
/// cache is emptied when full.
const MAX_CACHED_STREAMS: usize = 200_000;

/// tenant → stream labels → the stages to run (global ids).
type PlanCache = HashMap<String, HashMap<Labels, Arc<[usize]>>>;

/// The compiled `[[pipeline]]` chains and their state.
pub struct Pipeline {
    chains: Vec<Chain>,
    slots: Vec<Slot>,
    derived: Derived,
    cache: Mutex<PlanCache>,
    limits: PipelineLimits,
    /// tenant → promoted label → distinct values seen.
    cardinality: Mutex<HashMap<String, HashMap<String, HashSet<String>>>>,
    label_limit_hits: prometheus_client::metrics::family::Family<Vec<(&'static str, String)>, Counter>,
    derived_samples: Counter,
}

impl std::fmt::Debug for Pipeline {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pipeline").field("chains", &self.chains.len()).field("stages", &self.slots.len()).finish()
    }
}

/// What the stages decided for one entry.
enum Verdict {
    Kept,
    /// Dropped by the stage with this global id.
    Dropped(usize, std::borrow::Cow<'static, str>),
    Held,
}

/// One output stream being built from an input stream.
struct Group {
    /// Promoted (name, value) pairs as the stages set them.
    key: Vec<(String, String)>,
    labels: Labels,
    /// Promotions refused, kept as structured metadata.
    demoted: Vec<(String, String)>,
    entries: Vec<Entry>,
    obs: Vec<(usize, f64)>,
}

impl Pipeline {
    /// Compiles the chains; `metrics` receives the `cairn_pipeline_*`
    /// counters.
    pub fn new(
        cfg: &[PipelineConfig],
        limits: PipelineLimits,
        metrics: &SelfMetrics,
    ) -> Result<Pipeline, PipelineError> {
        let mut chains = Vec::new();
        let mut slots = Vec::new();
        let mut defs = Vec::new();
        for (ci, pc) in cfg.iter().enumerate() {
            let name = if pc.name.is_empty() { format!("pipeline{ci}") } else { pc.name.clone() };
            let sel_err = |reason: String| PipelineError::Selector {
                pipeline: name.clone(),
                selector: pc.selector.clone(),
                reason,
            };
            let matchers = match cairn_query::logql::parse(&pc.selector).map_err(|e| sel_err(e.to_string()))? {
                cairn_query::logql::Expr::Log(sel) if sel.pipeline.is_empty() => sel.matchers,
                _ => return Err(sel_err("want a stream selector only, such as {job=\"app\"}".into())),
            };
            let first = slots.len();
            for (si, sc) in pc.stages.iter().enumerate() {
                let stage = Stage::compile(sc, &mut defs).map_err(|reason| PipelineError::Stage {
                    pipeline: name.clone(),
                    index: si,
                    kind: sc.kind(),
                    reason,
                })?;
                let l = |extra: Option<(&'static str, String)>| {
                    let mut v = vec![("pipeline", name.clone()), ("stage", format!("{si}:{}", sc.kind()))];
                    v.extend(extra);
                    v
                };
                let reason = match sc {
                    StageConfig::Drop { reason, .. } => reason.clone().unwrap_or_else(|| "drop_stage".into()),
                    StageConfig::Sample { .. } => "sampled".into(),
                    StageConfig::Limit { .. } => "rate_limited".into(),
                    _ => "dropped".into(),
                };
                slots.push(Slot {
                    stage,
                    chain: ci,
                    index: si,
                    kind: sc.kind(),
                    processed: metrics.pipeline_lines.get_or_create(&l(None)).clone(),
                    dropped: metrics.pipeline_dropped.get_or_create(&l(Some(("reason", reason)))).clone(),
                    errors: metrics.pipeline_errors.get_or_create(&l(None)).clone(),
                    fallbacks: metrics.pipeline_timestamp_fallbacks.get_or_create(&l(None)).clone(),
                });
            }
            chains.push(Chain { name, tenant: pc.tenant.clone(), matchers, stages: first..slots.len() });
        }
        Ok(Pipeline {
            chains,
            slots,
            derived: Derived::new(defs),
            cache: Mutex::new(HashMap::new()),
            limits,
            cardinality: Mutex::new(HashMap::new()),
            label_limit_hits: metrics.pipeline_label_limit_hits.clone(),
            derived_samples: metrics.pipeline_metric_samples.clone(),
        })
    }

    /// True when no chain is configured (the push path skips the pipeline).
    pub fn is_empty(&self) -> bool {
        self.chains.is_empty()
    }

    /// The stages to run on a stream (global ids, chains in order), from
    /// the cache or by evaluating the selectors once.
    fn plan(&self, tenant: &str, labels: &Labels) -> Arc<[usize]> {
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(p) = cache.get(tenant).and_then(|m| m.get(labels)) {
            return p.clone();
        }
        let plan: Arc<[usize]> = self
            .chains
            .iter()
            .filter(|c| c.tenant.as_deref().is_none_or(|t| t == tenant))
            .filter(|c| cairn_wire::matcher::matches_all(&c.matchers, labels))
            .flat_map(|c| c.stages.clone())
            .collect();
        let m = cache.entry(tenant.to_string()).or_default();
        if m.len() >= MAX_CACHED_STREAMS {
            m.clear();
        }
        m.insert(labels.clone(), plan.clone());
        plan
    }

    /// Runs the matching chains over a push for `tenant` that arrived at
    /// `now_ns`; returns what to store. Streams no chain matches are
    /// returned as they came.
    pub fn apply(&self, tenant: &str, batch: Vec<StreamEntries>, now_ns: i64) -> Vec<StreamEntries> {
        if self.chains.is_empty() {
            return batch;
        }
        let mut out = Vec::with_capacity(batch.len());
        let mut sc: Option<Scratch> = None;
        for s in batch {
            let plan = self.plan(tenant, &s.labels);
            if plan.is_empty() {
                out.push(s);
                continue;
            }
            let sc = sc.get_or_insert_with(|| Scratch::new(self.slots.len()));
            self.run_stream(tenant, s, &plan, now_ns, sc, &mut out, None);
        }
        if let Some(sc) = sc {
            self.add_counts(&sc);
        }
        out
    }

    /// Runs the chains over `entries` of one stream as [`apply`] would and
    /// reports what became of each (the dry run). Counters and derived
    /// metrics are updated as by `apply`.
    ///
    /// [`apply`]: Pipeline::apply
    pub fn trace(&self, tenant: &str, labels: Labels, entries: Vec<Entry>, now_ns: i64) -> Vec<Traced> {
        let mut trace = Vec::new();
        let plan = self.plan(tenant, &labels);
        let mut sc = Scratch::new(self.slots.len());
        let mut out = Vec::new();
        self.run_stream(tenant, StreamEntries { labels, entries }, &plan, now_ns, &mut sc, &mut out, Some(&mut trace));
        self.add_counts(&sc);
        if plan.is_empty() {
            // Untouched: every entry kept as it came.
            for (input, s) in out
                .into_iter()
                .flat_map(|s| {
                    let l = s.labels.clone();
                    s.entries.into_iter().map(move |e| (l.clone(), e))
                })
                .enumerate()
            {
                trace.push(Traced {
                    input,
                    outcome: Outcome::Kept { labels: s.0, entry: s.1, refused_labels: Vec::new() },
                });
            }
        }
        trace.sort_by_key(|t| t.input);
        trace
    }

    /// Names of the pipelines whose selector (and tenant) match a stream.
    pub fn matching(&self, tenant: &str, labels: &Labels) -> Vec<String> {
        self.chains
            .iter()
            .filter(|c| c.tenant.as_deref().is_none_or(|t| t == tenant))
            .filter(|c| cairn_wire::matcher::matches_all(&c.matchers, labels))
            .map(|c| c.name.clone())
            .collect()
    }

    #[allow(clippy::too_many_arguments)]
    fn run_stream(
        &self,
        tenant: &str,
        s: StreamEntries,
        plan: &[usize],
        now_ns: i64,
        sc: &mut Scratch,
        out: &mut Vec<StreamEntries>,
        mut trace: Option<&mut Vec<Traced>>,
    ) {
        if plan.is_empty() {
            out.push(s);
            return;
        }
        let cx = Cx { stream_hash: stages::stream_hash(tenant, &s.labels), now_ns, metrics: &self.derived.defs };
        let mut groups: Vec<Group> = vec![Group {
            key: Vec::new(),
            labels: s.labels.clone(),
            demoted: Vec::new(),
            entries: Vec::with_capacity(s.entries.len()),
            obs: Vec::new(),
        }];
        sc.partials.clear();
        for (input, mut e) in s.entries.into_iter().enumerate() {
            sc.input = input;
            sc.fields.clear();
            sc.promoted.clear();
            sc.obs.clear();
            let step = self.run_entry(plan, 0, &mut e, sc, &cx);
            self.finish_entry(tenant, &s.labels, step, input, e, sc, &mut groups, trace.as_deref_mut());
        }
        // Partial lines whose end never came: each becomes an entry.
        while let Some(p) = sc.partials.pop() {
            sc.fields.clear();
            sc.promoted.clear();
            sc.obs.clear();
            sc.input = p.input;
            sc.fields.set("stream", cairn_wire::container::STREAM_NAMES[p.stream]);
            if let Stage::Container { stream_label: true, .. } = self.slots[p.gid].stage {
                sc.promoted.set("stream", cairn_wire::container::STREAM_NAMES[p.stream]);
            }
            let mut e = Entry { ts: p.ts, line: p.buf, metadata: Vec::new() };
            let step = self.run_entry(plan, p.pos + 1, &mut e, sc, &cx);
            // Its own input position was reported as joined: report the
            // result under the first input of the partial line.
            if let Some(t) = trace.as_deref_mut() {
                t.retain(|x| !(x.input == p.input && x.outcome == Outcome::Joined));
            }
            self.finish_entry(tenant, &s.labels, step, p.input, e, sc, &mut groups, trace.as_deref_mut());
        }
        self.derived.record(tenant, groups.iter().map(|g| (&g.labels, g.obs.as_slice())), now_ns);
        for g in groups {
            if !g.entries.is_empty() {
                out.push(StreamEntries { labels: g.labels, entries: g.entries });
            }
        }
    }

    /// Runs the plan from position `from` on one entry.
    fn run_entry(&self, plan: &[usize], from: usize, e: &mut Entry, sc: &mut Scratch, cx: &Cx<'_>) -> Verdict {
        for (pos, &gid) in plan.iter().enumerate().skip(from) {
            sc.counts[gid].processed += 1;
            match self.slots[gid].stage.run(gid, pos, e, sc, cx) {
                Step::Next => {}
                Step::Drop(why) => {
                    sc.counts[gid].dropped += 1;
                    return Verdict::Dropped(gid, why);
                }
                Step::Held => return Verdict::Held,
            }
        }
        Verdict::Kept
    }

    /// Puts a processed entry into its output group (by promoted labels),
    /// or records its drop.
    #[allow(clippy::too_many_arguments)]
    fn finish_entry(
        &self,
        tenant: &str,
        stream: &Labels,
        step: Verdict,
        input: usize,
        mut e: Entry,
        sc: &mut Scratch,
        groups: &mut Vec<Group>,
        trace: Option<&mut Vec<Traced>>,
    ) {
        if matches!(step, Verdict::Held) {
            if let Some(t) = trace {
                t.push(Traced { input, outcome: Outcome::Joined });
            }
            return;
        }
        // A dropped entry joins a group only to label its metric
        // observations (and so never spends label-value budget otherwise).
        if let Verdict::Dropped(gid, why) = &step
            && sc.obs.is_empty()
        {
            if let Some(t) = trace {
                t.push(self.dropped(input, *gid, why));
            }
            return;
        }
        let gi = match groups.iter().position(|g| {
            g.key.len() == sc.promoted.len()
                && sc.promoted.iter().all(|(k, v)| g.key.iter().any(|x| x.0 == k && x.1 == v))
        }) {
            Some(i) => i,
            None => {
                groups.push(self.new_group(tenant, stream, sc));
                groups.len() - 1
            }
        };
        let g = &mut groups[gi];
        g.obs.append(&mut sc.obs);
        match step {
            Verdict::Dropped(gid, why) => {
                if let Some(t) = trace {
                    t.push(self.dropped(input, gid, &why));
                }
            }
            _ => {
                for (k, v) in &g.demoted {
                    if !e.metadata.iter().any(|(n, _)| n == k) {
                        e.metadata.push((k.clone(), v.clone()));
                    }
                }
                if let Some(t) = trace {
                    t.push(Traced {
                        input,
                        outcome: Outcome::Kept {
                            labels: g.labels.clone(),
                            entry: e.clone(),
                            refused_labels: g.demoted.iter().map(|d| d.0.clone()).collect(),
                        },
                    });
                }
                g.entries.push(e);
            }
        }
    }

    fn dropped(&self, input: usize, gid: usize, why: &str) -> Traced {
        let slot = &self.slots[gid];
        Traced {
            input,
            outcome: Outcome::Dropped {
                pipeline: self.chains[slot.chain].name.clone(),
                stage: slot.index,
                kind: slot.kind,
                why: why.to_string(),
            },
        }
    }

    /// A new output group for the promoted labels in `sc`: each promotion
    /// is checked against the tenant's label-value limit and the value
    /// length limit; refused ones become structured metadata.
    fn new_group(&self, tenant: &str, stream: &Labels, sc: &Scratch) -> Group {
        let key: Vec<(String, String)> = sc.promoted.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        let mut accepted: Vec<(&str, &str)> = Vec::new();
        let mut demoted = Vec::new();
        let limit = self.limits.tenant_max_label_values.get(tenant).copied().unwrap_or(self.limits.max_label_values);
        let max_len = self.limits.max_label_value_length;
        let mut card = self.cardinality.lock().unwrap_or_else(|p| p.into_inner());
        for (k, v) in &key {
            if v.is_empty() {
                continue;
            }
            let ok = (max_len == 0 || v.len() <= max_len) && {
                let seen = card.entry(tenant.to_string()).or_default().entry(k.clone()).or_default();
                if seen.contains(v.as_str()) || limit == 0 {
                    true
                } else if seen.len() < limit {
                    seen.insert(v.clone());
                    true
                } else {
                    false
                }
            };
            if ok {
                accepted.push((k, v));
            } else {
                self.label_limit_hits.get_or_create(&vec![("tenant", tenant.to_string()), ("label", k.clone())]).inc();
                demoted.push((k.clone(), v.clone()));
            }
        }
        drop(card);
        let labels = if accepted.is_empty() {
            stream.clone()
        } else {
            let pairs = stream
                .iter()
                .filter(|l| !accepted.iter().any(|(k, _)| *k == l.name))
                .map(|l| (l.name.as_str(), l.value.as_str()))
                .chain(accepted.iter().copied());
            Labels::from_pairs(pairs).unwrap_or_else(|_| stream.clone())
        };
        Group { key, labels, demoted, entries: Vec::new(), obs: Vec::new() }
    }

    fn add_counts(&self, sc: &Scratch) {
        for (slot, c) in self.slots.iter().zip(&sc.counts) {
            if c.processed > 0 {
                slot.processed.inc_by(c.processed);
            }
            if c.dropped > 0 {
                slot.dropped.inc_by(c.dropped);
            }
            if c.errors > 0 {
                slot.errors.inc_by(c.errors);
            }
            if c.fallbacks > 0 {
                slot.fallbacks.inc_by(c.fallbacks);
            }
        }
    }

    /// Series `metrics` stages currently keep in memory.
    pub fn metric_series(&self) -> usize {
        self.derived.series_count()
    }

    /// Derived metric samples due at `now_ns` (see `metrics` stages), by
    /// tenant, to be appended to the metrics store.
    pub fn collect_metrics(&self, now_ns: i64) -> Vec<(String, Vec<SeriesSamples>)> {
        if self.derived.defs.is_empty() {
            return Vec::new();
        }
        let out = self.derived.collect(now_ns);
        let n: usize = out.iter().map(|(_, v)| v.len()).sum();
        self.derived_samples.inc_by(n as u64);
        out
    }
}

#[cfg(test)]
mod tests;
