//! The stages: compiled from [`StageConfig`], run on one entry at a time
//! with a reused [`Scratch`].

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use cairn_query::logql::extract::{self, JsonPathPart};
use cairn_wire::container::{self, LogFormat, STREAM_NAMES};
use cairn_wire::{Entry, Labels};
use regex::Regex;

use super::config::{OnFailure, StageConfig};
use super::derived::{MetricDef, Observation};
use super::timefmt::{self, TimeFormat};

/// Extracted fields of the entry being processed: (name, value) slots
/// whose strings are reused from entry to entry.
#[derive(Debug, Default)]
pub struct Fields {
    slots: Vec<(String, String)>,
    len: usize,
}

impl Fields {
    /// Forgets every field (keeping the buffers).
    pub fn clear(&mut self) {
        self.len = 0;
    }

    /// The value of `name`.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.slots[..self.len].iter().find(|s| s.0 == name).map(|s| s.1.as_str())
    }

    /// Sets `name` to `value`, replacing an earlier value.
    pub fn set(&mut self, name: &str, value: &str) {
        if let Some(s) = self.slots[..self.len].iter_mut().find(|s| s.0 == name) {
            s.1.clear();
            s.1.push_str(value);
            return;
        }
        if self.len < self.slots.len() {
            let s = &mut self.slots[self.len];
            s.0.clear();
            s.0.push_str(name);
            s.1.clear();
            s.1.push_str(value);
        } else {
            self.slots.push((name.to_string(), value.to_string()));
        }
        self.len += 1;
    }

    /// Fields in the order they were first set.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.slots[..self.len].iter().map(|s| (s.0.as_str(), s.1.as_str()))
    }

    /// Number of fields.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when no field is set.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// Per-stage counts of one `apply` call, added to the `cairn_pipeline_*`
/// counters once at its end.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Counts {
    pub processed: u64,
    pub dropped: u64,
    pub errors: u64,
    pub fallbacks: u64,
}

/// A partial container line held until its end arrives.
#[derive(Debug)]
pub(crate) struct Partial {
    /// Global stage id of the decoding stage.
    pub gid: usize,
    /// Its position in the plan (the entry resumes after it).
    pub pos: usize,
    pub stream: usize,
    pub ts: i64,
    pub buf: String,
    pub lines: usize,
    /// Index of the first input entry it holds (for the dry run).
    pub input: usize,
}

/// Reused state of one `apply` call.
#[derive(Debug, Default)]
pub(crate) struct Scratch {
    pub fields: Fields,
    /// Stream labels to set (name → value).
    pub promoted: Fields,
    /// (metric, value) observations of the entry.
    pub obs: Vec<(usize, f64)>,
    pub counts: Vec<Counts>,
    pub partials: Vec<Partial>,
    /// Input index of the entry being processed.
    pub input: usize,
    tmp: String,
}

impl Scratch {
    pub fn new(stages: usize) -> Scratch {
        Scratch { counts: vec![Counts::default(); stages], ..Default::default() }
    }
}

/// What the caller needs besides the entry.
pub(crate) struct Cx<'a> {
    /// Hash of (tenant, stream labels), the `limit` stage's key.
    pub stream_hash: u64,
    pub now_ns: i64,
    pub metrics: &'a [MetricDef],
}

/// A stage's verdict on one entry.
pub(crate) enum Step {
    /// Go on with the next stage.
    Next,
    /// Drop the entry, for this reason (dry-run text).
    Drop(Cow<'static, str>),
    /// The entry was taken into a partial line (it continues later).
    Held,
}

/// A compiled stage.
#[derive(Debug)]
pub(crate) enum Stage {
    Container { format: LogFormat, stream_label: bool, max_partial: usize },
    Json { fields: Vec<(String, Vec<JsonPathPart>)>, source: Option<String> },
    Logfmt { fields: Vec<(String, String)>, source: Option<String> },
    Regex { re: Regex, source: Option<String> },
    Timestamp { source: String, formats: Vec<TimeFormat>, tz: jiff::tz::TimeZone, on_failure: OnFailure },
    Labels { fields: Vec<(String, String)> },
    Metadata { fields: Vec<(String, String)> },
    Drop(DropStage),
    Replace { re: Regex, replace: String, source: Option<String> },
    Redact { builtin: Option<Regex>, custom: Vec<Regex>, mask: String },
    Sample { threshold: u64, state: AtomicU64 },
    Limit { rate: f64, burst: f64, buckets: Mutex<HashMap<u64, Bucket>> },
    Metrics { def: usize },
}

#[derive(Debug)]
pub(crate) struct DropStage {
    source: Option<String>,
    re: Option<Regex>,
    value: Option<String>,
    older_than_ns: Option<i64>,
    longer_than: Option<usize>,
}

#[derive(Debug, Clone, Copy)]
pub(crate) struct Bucket {
    tokens: f64,
    last_ns: i64,
}

/// Most per-stream buckets a `limit` stage keeps before forgetting full ones.
const MAX_BUCKETS: usize = 100_000;

/// Built-in secret patterns of `redact`: name and regex, whose group
/// `secret` is what gets masked.
pub const REDACT_PATTERNS: [(&str, &str); 6] = [
    ("bearer", r"(?i)\bbearer\s+(?P<secret>[A-Za-z0-9\-._~+/]+=*)"),
    ("basic_auth", r"(?i)\bbasic\s+(?P<secret>[A-Za-z0-9+/]{8,}=*)"),
    (
        "password",
        r#"(?i)\b(?:password|passwd|pwd|secret|token|api[_-]?key|access[_-]?key|client[_-]?secret)["']?\s*[:=]\s*["']?(?P<secret>[^\s"'&,;}]+)"#,
    ),
    ("url_credentials", r"://[^/\s:@]+:(?P<secret>[^/\s@]+)@"),
    ("aws_access_key", r"\b(?P<secret>(?:AKIA|ASIA)[A-Z0-9]{16})\b"),
    ("jwt", r"\b(?P<secret>eyJ[A-Za-z0-9_-]+\.eyJ[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+)"),
];

fn compile_re(src: &str) -> Result<Regex, String> {
    Regex::new(src).map_err(|e| format!("invalid regex {src:?}: {e}"))
}

fn check_name(name: &str, what: &str) -> Result<(), String> {
    if cairn_wire::labels::is_valid_label_name(name) {
        Ok(())
    } else {
        Err(format!("{what} {name:?} is not a valid label name ([a-zA-Z_][a-zA-Z0-9_]*)"))
    }
}

/// The one combined regex of the chosen built-in patterns (groups renamed
/// `secret0`, `secret1`, …), so a line is scanned once.
fn builtin_redactor(names: &[String]) -> Result<Option<Regex>, String> {
    let mut parts = Vec::new();
    for n in names {
        let (_, re) = REDACT_PATTERNS.iter().find(|(p, _)| p == n).ok_or_else(|| {
            let known: Vec<&str> = REDACT_PATTERNS.iter().map(|p| p.0).collect();
            format!("unknown redact pattern {n:?} (known: {})", known.join(", "))
        })?;
        // ASCII word boundaries: the lazy DFA handles them on any input
        // (a Unicode `\b` makes it fall back on non-ASCII lines).
        let re = re.replace(r"\b", r"(?-u:\b)").replace("?P<secret>", &format!("?P<secret{}>", parts.len()));
        parts.push(format!("(?:{re})"));
    }
    if parts.is_empty() {
        return Ok(None);
    }
    compile_re(&parts.join("|")).map(Some)
}

impl Stage {
    /// Compiles one stage; `metrics` receives `metrics` stage definitions.
    pub fn compile(cfg: &StageConfig, metrics: &mut Vec<MetricDef>) -> Result<Stage, String> {
        let pairs_checked = |fields: &super::config::FieldList| -> Result<Vec<(String, String)>, String> {
            let p = fields.pairs();
            if p.is_empty() {
                return Err("`fields` is empty".into());
            }
            for (n, _) in &p {
                check_name(n, "field")?;
            }
            Ok(p)
        };
        Ok(match cfg {
            StageConfig::Cri { stream_label, max_partial_lines } => Stage::Container {
                format: LogFormat::Cri,
                stream_label: *stream_label,
                max_partial: (*max_partial_lines).max(1),
            },
            StageConfig::Docker { stream_label, max_partial_lines } => Stage::Container {
                format: LogFormat::Docker,
                stream_label: *stream_label,
                max_partial: (*max_partial_lines).max(1),
            },
            StageConfig::Json { fields, source } => {
                let mut out = Vec::new();
                for (name, path) in fields {
                    check_name(name, "field")?;
                    let p = extract::parse_json_path(if path.is_empty() { name } else { path })
                        .ok_or_else(|| format!("invalid JSON path {path:?} for field {name:?}"))?;
                    out.push((name.clone(), p));
                }
                Stage::Json { fields: out, source: source.clone() }
            }
            StageConfig::Logfmt { fields, source } => {
                for name in fields.keys() {
                    check_name(name, "field")?;
                }
                let fields =
                    fields.iter().map(|(k, v)| (k.clone(), if v.is_empty() { k.clone() } else { v.clone() })).collect();
                Stage::Logfmt { fields, source: source.clone() }
            }
            StageConfig::Regex { expression, source } => {
                let re = compile_re(expression)?;
                if re.capture_names().flatten().next().is_none() {
                    return Err(format!("regex {expression:?} has no named group (?P<name>…)"));
                }
                for n in re.capture_names().flatten() {
                    check_name(n, "capture")?;
                }
                Stage::Regex { re, source: source.clone() }
            }
            StageConfig::Timestamp { source, format, fallback_formats, location, on_failure } => {
                let mut formats = vec![TimeFormat::new(format)?];
                for f in fallback_formats {
                    formats.push(TimeFormat::new(f)?);
                }
                let tz = timefmt::location(location.as_deref().unwrap_or("UTC"))?;
                Stage::Timestamp { source: source.clone(), formats, tz, on_failure: *on_failure }
            }
            StageConfig::Labels { fields } => Stage::Labels { fields: pairs_checked(fields)? },
            StageConfig::StructuredMetadata { fields } => Stage::Metadata { fields: pairs_checked(fields)? },
            StageConfig::Drop { source, expression, value, older_than, longer_than, reason: _ } => {
                if expression.is_none() && value.is_none() && older_than.is_none() && longer_than.is_none() {
                    return Err("drop needs at least one of expression, value, older_than, longer_than".into());
                }
                if value.is_some() && source.is_none() {
                    return Err("drop: `value` needs `source`".into());
                }
                Stage::Drop(DropStage {
                    source: source.clone(),
                    re: expression.as_deref().map(compile_re).transpose()?,
                    value: value.clone(),
                    older_than_ns: older_than.map(|d| d.0.as_nanos().min(i64::MAX as u128) as i64),
                    longer_than: longer_than.map(|b| b.0 as usize),
                })
            }
            StageConfig::Replace { expression, replace, source } => {
                Stage::Replace { re: compile_re(expression)?, replace: replace.clone(), source: source.clone() }
            }
            StageConfig::Redact { patterns, expressions, mask } => {
                let names: Vec<String> = if patterns.is_empty() && expressions.is_empty() {
                    REDACT_PATTERNS.iter().map(|p| p.0.to_string()).collect()
                } else {
                    patterns.clone()
                };
                let custom = expressions.iter().map(|e| compile_re(e)).collect::<Result<Vec<_>, _>>()?;
                Stage::Redact { builtin: builtin_redactor(&names)?, custom, mask: mask.clone() }
            }
            StageConfig::Sample { rate } => {
                if !(0.0..=1.0).contains(rate) {
                    return Err(format!("sample rate {rate} is not between 0 and 1"));
                }
                Stage::Sample {
                    threshold: (rate * u64::MAX as f64) as u64,
                    state: AtomicU64::new(0x853c_49e6_748f_ea9b),
                }
            }
            StageConfig::Limit { rate, burst } => {
                if !(*rate > 0.0 && rate.is_finite()) || *burst == 0 {
                    return Err("limit needs rate > 0 and burst >= 1".into());
                }
                Stage::Limit { rate: *rate, burst: f64::from(*burst), buckets: Mutex::new(HashMap::new()) }
            }
            StageConfig::Metrics {
                name,
                kind,
                description: _,
                line_match,
                source,
                value,
                action,
                count_bytes,
                buckets,
                interval,
                max_idle,
            } => {
                check_name(name, "metric name")?;
                let mut b = buckets.clone();
                if *kind == super::config::MetricKind::Histogram {
                    if source.is_none() {
                        return Err("histogram needs `source` (the field observed)".into());
                    }
                    if b.is_empty() {
                        b = vec![0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];
                    }
                    if b.iter().any(|x| !x.is_finite()) {
                        return Err("histogram buckets must be finite".into());
                    }
                    b.sort_by(|x, y| x.total_cmp(y));
                    b.dedup();
                }
                if *action == super::config::CounterAction::Add && source.is_none() {
                    return Err("counter action `add` needs `source`".into());
                }
                if value.is_some() && source.is_none() {
                    return Err("metrics: `value` needs `source`".into());
                }
                if interval.0.is_zero() {
                    return Err("metrics: `interval` must be greater than 0".into());
                }
                metrics.push(MetricDef {
                    name: name.clone(),
                    kind: *kind,
                    line_match: line_match.as_deref().map(compile_re).transpose()?,
                    source: source.clone(),
                    value: value.clone(),
                    action: *action,
                    count_bytes: *count_bytes,
                    buckets: b,
                    interval_ms: interval.as_millis().max(1),
                    max_idle_ns: max_idle.0.as_nanos().min(i64::MAX as u128) as i64,
                });
                Stage::Metrics { def: metrics.len() - 1 }
            }
        })
    }

    /// Runs the stage (global id `gid`, at `pos` in the plan) on `e`.
    pub fn run(&self, gid: usize, pos: usize, e: &mut Entry, sc: &mut Scratch, cx: &Cx<'_>) -> Step {
        match self {
            Stage::Container { format, stream_label, max_partial } => {
                container_stage(*format, *stream_label, *max_partial, gid, pos, e, sc)
            }
            Stage::Json { fields, source } => {
                let Some(text) = source_text(source, &e.line, &sc.fields, &mut sc.tmp) else { return Step::Next };
                // Most lines of a mixed stream are not JSON: tell at the
                // first byte, before serde builds an error.
                if !text.trim_start().starts_with('{') {
                    sc.counts[gid].errors += 1;
                    return Step::Next;
                }
                let f = &mut sc.fields;
                if fields.is_empty() {
                    if extract::flatten_json(text, &mut |k, v| f.set(k, v)).is_err() {
                        sc.counts[gid].errors += 1;
                    }
                } else {
                    match serde_json::from_str::<serde_json::Value>(text) {
                        Ok(v @ serde_json::Value::Object(_)) => {
                            for (name, path) in fields {
                                if let Some(val) = extract::json_path_value(&v, path) {
                                    f.set(name, &val);
                                }
                            }
                        }
                        _ => sc.counts[gid].errors += 1,
                    }
                }
                Step::Next
            }
            Stage::Logfmt { fields, source } => {
                let Some(text) = source_text(source, &e.line, &sc.fields, &mut sc.tmp) else { return Step::Next };
                let (pairs, err) = extract::logfmt_pairs(text);
                if err.is_some() {
                    sc.counts[gid].errors += 1;
                }
                let f = &mut sc.fields;
                if fields.is_empty() {
                    let mut name = String::new();
                    for (k, v) in &pairs {
                        if let Some(v) = v {
                            name.clear();
                            name.push_str(&extract::sanitize_label_name(k));
                            f.set(&name, v);
                        }
                    }
                } else {
                    for (name, key) in fields {
                        if let Some((_, Some(v))) = pairs.iter().find(|(k, _)| k == key) {
                            f.set(name, v);
                        }
                    }
                }
                Step::Next
            }
            Stage::Regex { re, source } => {
                let Some(text) = source_text(source, &e.line, &sc.fields, &mut sc.tmp) else { return Step::Next };
                match re.captures(text) {
                    Some(caps) => {
                        for name in re.capture_names().flatten() {
                            if let Some(m) = caps.name(name) {
                                sc.fields.set(name, m.as_str());
                            }
                        }
                    }
                    None => sc.counts[gid].errors += 1,
                }
                Step::Next
            }
            Stage::Timestamp { source, formats, tz, on_failure } => {
                let parsed = sc.fields.get(source).and_then(|v| formats.iter().find_map(|f| f.parse(v, tz, cx.now_ns)));
                match parsed {
                    Some(ts) => e.ts = ts,
                    None => {
                        sc.counts[gid].fallbacks += 1;
                        if *on_failure == OnFailure::Arrival {
                            e.ts = cx.now_ns;
                        }
                    }
                }
                Step::Next
            }
            Stage::Labels { fields } => {
                for (name, field) in fields {
                    if let Some(v) = sc.fields.get(field) {
                        sc.promoted.set(name, v);
                    }
                }
                Step::Next
            }
            Stage::Metadata { fields } => {
                for (name, field) in fields {
                    if let Some(v) = sc.fields.get(field).filter(|v| !v.is_empty()) {
                        match e.metadata.iter_mut().find(|(k, _)| k == name) {
                            Some(slot) => {
                                slot.1.clear();
                                slot.1.push_str(v);
                            }
                            None => e.metadata.push((name.clone(), v.to_string())),
                        }
                    }
                }
                Step::Next
            }
            Stage::Drop(d) => d.run(e, sc, cx),
            Stage::Replace { re, replace, source } => {
                match source {
                    None => {
                        if let Cow::Owned(s) = re.replace_all(&e.line, replace.as_str()) {
                            e.line = s;
                        }
                    }
                    Some(f) => {
                        let new = sc.fields.get(f).and_then(|v| match re.replace_all(v, replace.as_str()) {
                            Cow::Owned(s) => Some(s),
                            Cow::Borrowed(_) => None,
                        });
                        if let Some(s) = new {
                            sc.fields.set(f, &s);
                        }
                    }
                }
                Step::Next
            }
            Stage::Redact { builtin, custom, mask } => {
                if let Some(re) = builtin
                    && let Cow::Owned(s) = redact(re, &e.line, mask)
                {
                    e.line = s;
                }
                for re in custom {
                    if let Cow::Owned(s) = redact(re, &e.line, mask) {
                        e.line = s;
                    }
                }
                Step::Next
            }
            Stage::Sample { threshold, state } => {
                // splitmix64 over a shared counter: deterministic, lock-free.
                let mut z =
                    state.fetch_add(0x9e37_79b9_7f4a_7c15, Ordering::Relaxed).wrapping_add(0x9e37_79b9_7f4a_7c15);
                z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
                z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
                z ^= z >> 31;
                if z < *threshold || *threshold == u64::MAX { Step::Next } else { Step::Drop("not sampled".into()) }
            }
            Stage::Limit { rate, burst, buckets } => {
                let mut map = buckets.lock().unwrap_or_else(|p| p.into_inner());
                if map.len() >= MAX_BUCKETS && !map.contains_key(&cx.stream_hash) {
                    // Forget buckets that have refilled: they behave as new ones.
                    let (r, b, now) = (*rate, *burst, cx.now_ns);
                    map.retain(|_, k| k.tokens + now.saturating_sub(k.last_ns) as f64 / 1e9 * r < b);
                }
                let b = map.entry(cx.stream_hash).or_insert(Bucket { tokens: *burst, last_ns: cx.now_ns });
                let elapsed = cx.now_ns.saturating_sub(b.last_ns).max(0) as f64 / 1e9;
                b.tokens = (b.tokens + elapsed * rate).min(*burst);
                b.last_ns = b.last_ns.max(cx.now_ns);
                if b.tokens >= 1.0 {
                    b.tokens -= 1.0;
                    Step::Next
                } else {
                    Step::Drop(format!("over the stream's rate limit ({rate}/s, burst {burst})").into())
                }
            }
            Stage::Metrics { def } => {
                let Some(d) = cx.metrics.get(*def) else { return Step::Next };
                let field = d.source.as_deref().and_then(|s| sc.fields.get(s));
                match d.observe(&e.line, field) {
                    Observation::Value(v) => sc.obs.push((*def, v)),
                    Observation::NoMatch => {}
                    Observation::NotANumber => sc.counts[gid].errors += 1,
                }
                Step::Next
            }
        }
    }
}

/// The text a stage reads: the line, or a copy of field `source` (copied
/// so the stage may set fields while reading it). `None`: field absent.
fn source_text<'a>(source: &Option<String>, line: &'a str, fields: &Fields, tmp: &'a mut String) -> Option<&'a str> {
    match source {
        None => Some(line),
        Some(f) => {
            let v = fields.get(f)?;
            tmp.clear();
            tmp.push_str(v);
            Some(tmp.as_str())
        }
    }
}

/// Masks every match of `re` in `line`: its `secret*` group when it has
/// one, else the whole match. Borrowed when nothing matched.
fn redact<'a>(re: &Regex, line: &'a str, mask: &str) -> Cow<'a, str> {
    let mut out: Option<String> = None;
    let mut last = 0;
    for caps in re.captures_iter(line) {
        let span = caps
            .iter()
            .skip(1)
            .zip(re.capture_names().skip(1))
            .find_map(|(m, n)| m.filter(|_| n.is_some_and(|n| n.starts_with("secret"))))
            .or_else(|| caps.get(0));
        let Some(span) = span else { continue };
        if span.start() < last {
            continue;
        }
        let o = out.get_or_insert_with(|| String::with_capacity(line.len()));
        o.push_str(&line[last..span.start()]);
        o.push_str(mask);
        last = span.end();
    }
    match out {
        None => Cow::Borrowed(line),
        Some(mut o) => {
            o.push_str(&line[last..]);
            Cow::Owned(o)
        }
    }
}

impl DropStage {
    fn run(&self, e: &Entry, sc: &Scratch, cx: &Cx<'_>) -> Step {
        let mut why: Vec<String> = Vec::new();
        if self.re.is_some() || self.value.is_some() {
            let text = match &self.source {
                None => Some(e.line.as_str()),
                Some(f) => sc.fields.get(f),
            };
            let Some(text) = text else { return Step::Next };
            if let Some(re) = &self.re {
                if !re.is_match(text) {
                    return Step::Next;
                }
                why.push(format!("matches {:?}", re.as_str()));
            }
            if let Some(v) = &self.value {
                if text != v {
                    return Step::Next;
                }
                why.push(format!("{} is {v:?}", self.source.as_deref().unwrap_or("line")));
            }
        }
        if let Some(age) = self.older_than_ns {
            if e.ts >= cx.now_ns.saturating_sub(age) {
                return Step::Next;
            }
            why.push(format!("older than {}", cairn_wire::time::format_duration_ms(age / 1_000_000)));
        }
        if let Some(n) = self.longer_than {
            if e.line.len() <= n {
                return Step::Next;
            }
            why.push(format!("longer than {n} bytes"));
        }
        Step::Drop(why.join(", ").into())
    }
}

/// `cri`/`docker`: decodes the line in place, keeps partial lines until
/// their end (per output stream), sets field `stream`.
fn container_stage(
    format: LogFormat,
    stream_label: bool,
    max_partial: usize,
    gid: usize,
    pos: usize,
    e: &mut Entry,
    sc: &mut Scratch,
) -> Step {
    let d = container::decode(format, e.line.as_bytes());
    let Some(ts) = d.ts else {
        // Not in this format: kept whole (counted as an error).
        sc.counts[gid].errors += 1;
        return Step::Next;
    };
    let stream = d.stream;
    let partial = d.partial;
    // The message as a range of the line when it is one (CRI, and Docker
    // lines without escapes): cut in place, no copy.
    let range = match &d.msg {
        Cow::Borrowed(m) => (m.as_ptr() as usize)
            .checked_sub(e.line.as_ptr() as usize)
            .map(|start| start..start + m.len())
            .filter(|r| r.end <= e.line.len()),
        Cow::Owned(_) => None,
    };
    let owned = match d.msg {
        Cow::Owned(m) => Some(String::from_utf8_lossy(&m).into_owned()),
        Cow::Borrowed(m) if range.is_none() => Some(String::from_utf8_lossy(m).into_owned()),
        Cow::Borrowed(_) => None,
    };
    match (range, owned) {
        (Some(r), _) if e.line.is_char_boundary(r.start) && e.line.is_char_boundary(r.end) => {
            e.line.truncate(r.end);
            e.line.drain(..r.start);
        }
        (Some(r), _) => e.line = String::from_utf8_lossy(&e.line.as_bytes()[r]).into_owned(),
        (None, Some(s)) => e.line = s,
        (None, None) => {}
    }
    let held = sc.partials.iter().position(|p| p.gid == gid && p.stream == stream);
    if partial {
        match held {
            Some(i) => {
                let p = &mut sc.partials[i];
                p.buf.push_str(&e.line);
                p.lines += 1;
                if p.lines < max_partial {
                    return Step::Held;
                }
            }
            None if max_partial > 1 => {
                sc.partials.push(Partial {
                    gid,
                    pos,
                    stream,
                    ts,
                    buf: std::mem::take(&mut e.line),
                    lines: 1,
                    input: sc.input,
                });
                return Step::Held;
            }
            None => {}
        }
    }
    e.ts = ts;
    if let Some(i) = sc.partials.iter().position(|p| p.gid == gid && p.stream == stream) {
        let mut p = sc.partials.swap_remove(i);
        if partial {
            // max_partial_lines reached: the held text is the whole entry.
            e.line = std::mem::take(&mut p.buf);
        } else {
            p.buf.push_str(&e.line);
            e.line = std::mem::take(&mut p.buf);
        }
        e.ts = p.ts;
    }
    sc.fields.set("stream", STREAM_NAMES[stream]);
    if stream_label {
        sc.promoted.set("stream", STREAM_NAMES[stream]);
    }
    Step::Next
}

/// Hash of (tenant, stream labels): the key of per-stream state.
pub(crate) fn stream_hash(tenant: &str, labels: &Labels) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    tenant.hash(&mut h);
    labels.hash(&mut h);
    h.finish()
}
