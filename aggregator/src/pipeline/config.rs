//! `[[pipeline]]`: stage chains applied to log entries on ingest. Field doc
//! comments are the user documentation (mirrored in `docs/pipeline.md` and
//! `docs/configuration.md`).

use std::collections::BTreeMap;

use cairn_wire::config::{ByteSize, ConfigDuration};
use serde::{Deserialize, Serialize};

/// One `[[pipeline]]` chain.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PipelineConfig {
    /// Name in `cairn_pipeline_*` metrics and dry-run output; empty:
    /// `pipeline<N>` (its position, from 0).
    #[serde(default)]
    pub name: String,
    /// LogQL stream selector (`{job="app", env=~"prod|dev"}`): the chain
    /// runs on streams it matches (checked against the labels as pushed).
    pub selector: String,
    /// Only for this tenant (`X-Scope-OrgID`); absent: every tenant.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
    /// The stages, in order (`[[pipeline.stage]]`).
    #[serde(default, rename = "stage")]
    pub stages: Vec<StageConfig>,
}

/// Field names to promote or attach: a list (`["level"]`, same name) or a
/// map from the new name to the extracted field (`{ lvl = "level" }`; an
/// empty value means the same name).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum FieldList {
    /// Same names.
    List(Vec<String>),
    /// New name → field name.
    Map(BTreeMap<String, String>),
}

impl Default for FieldList {
    fn default() -> Self {
        FieldList::List(Vec::new())
    }
}

impl FieldList {
    /// (new name, field name) pairs.
    pub fn pairs(&self) -> Vec<(String, String)> {
        match self {
            FieldList::List(v) => v.iter().map(|n| (n.clone(), n.clone())).collect(),
            FieldList::Map(m) => {
                m.iter().map(|(k, v)| (k.clone(), if v.is_empty() { k.clone() } else { v.clone() })).collect()
            }
        }
    }
}

/// What the `timestamp` stage does when the field is missing or no format
/// parses it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnFailure {
    /// Use the time the entry arrived at the aggregator.
    #[default]
    Arrival,
    /// Keep the timestamp the sender gave.
    Keep,
}

/// Kind of a derived metric.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MetricKind {
    /// A counter (`<name>` stored as written, conventionally `…_total`).
    #[default]
    Counter,
    /// A histogram (`<name>_bucket`, `<name>_sum`, `<name>_count`).
    Histogram,
}

/// What a counter adds per matching entry.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CounterAction {
    /// 1 per entry (or its line's bytes with `count_bytes`).
    #[default]
    Inc,
    /// The numeric value of `source`.
    Add,
}

fn yes() -> bool {
    true
}
fn max_partial_lines() -> usize {
    100
}
fn mask() -> String {
    "<redacted>".into()
}
fn metric_interval() -> ConfigDuration {
    ConfigDuration::from_secs(15)
}
fn metric_max_idle() -> ConfigDuration {
    ConfigDuration::from_secs(300)
}

/// One `[[pipeline.stage]]`, selected by its `type`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum StageConfig {
    /// Decode a CRI line (`<time> <stdout|stderr> <P|F> <msg>`): the line
    /// becomes the message, the entry takes the runtime's time, and the
    /// field `stream` is extracted; `P` lines are joined with what follows
    /// in the same push.
    Cri {
        /// Also set `stream` as a stream label, as Promtail's `cri` does.
        #[serde(default = "yes")]
        stream_label: bool,
        /// Most partial lines joined into one entry.
        #[serde(default = "max_partial_lines")]
        max_partial_lines: usize,
    },
    /// Decode a Docker json-file line (`{"log":…,"stream":…,"time":…}`),
    /// like `cri`.
    Docker {
        /// Also set `stream` as a stream label.
        #[serde(default = "yes")]
        stream_label: bool,
        /// Most partial lines joined into one entry.
        #[serde(default = "max_partial_lines")]
        max_partial_lines: usize,
    },
    /// Extract fields from a JSON object line.
    Json {
        /// Field name → JSON path (`user.id`, `items[0]`); empty: every
        /// scalar, nested keys joined with `_` (as LogQL's `json`).
        #[serde(default)]
        fields: BTreeMap<String, String>,
        /// Parse this extracted field instead of the line.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        source: Option<String>,
    },
    /// Extract `key=value` pairs.
    Logfmt {
        /// Field name → logfmt key; empty: every pair.
        #[serde(default)]
        fields: BTreeMap<String, String>,
        /// Parse this extracted field instead of the line.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        source: Option<String>,
    },
    /// Extract the named captures of a regular expression.
    Regex {
        /// Regex with named groups, `(?P<name>…)`; unanchored.
        expression: String,
        /// Match this extracted field instead of the line.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        source: Option<String>,
    },
    /// Set the entry's time from an extracted field.
    Timestamp {
        /// The field holding the time.
        source: String,
        /// `RFC3339`, `RFC3339Nano`, `Unix`, `UnixMs`, `UnixUs`, `UnixNs`, a
        /// Go named layout (`RFC1123Z`, `Stamp`, …), a Go reference layout
        /// (`2006-01-02 15:04:05.000`) or a strftime format (`%d/%b/%Y:%T %z`).
        format: String,
        /// Formats tried in order when `format` does not parse the value.
        #[serde(default)]
        fallback_formats: Vec<String>,
        /// Time zone of values that carry none: IANA name, `UTC`, `Local`
        /// or `±HH:MM`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        location: Option<String>,
        /// `arrival` (the time the entry arrived) or `keep` (the sender's),
        /// when the field is missing or does not parse; counted in
        /// `cairn_pipeline_timestamp_fallbacks_total`.
        #[serde(default)]
        on_failure: OnFailure,
    },
    /// Promote extracted fields to stream labels (bounded by
    /// `limits.pipeline_max_label_values`).
    Labels {
        /// Fields to promote.
        fields: FieldList,
    },
    /// Attach extracted fields as structured metadata.
    StructuredMetadata {
        /// Fields to attach.
        fields: FieldList,
    },
    /// Drop entries meeting every condition given.
    Drop {
        /// Test this extracted field instead of the line (an entry without
        /// the field is kept).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        source: Option<String>,
        /// Regex (unanchored) the line or field must match.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        expression: Option<String>,
        /// Exact value the field must have.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        value: Option<String>,
        /// Entries older than this (by their time, against arrival).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        older_than: Option<ConfigDuration>,
        /// Lines longer than this.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        longer_than: Option<ByteSize>,
        /// `reason` label of `cairn_pipeline_dropped_lines_total`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
    },
    /// Rewrite the line (or a field) with a regex replacement.
    Replace {
        /// Regex (unanchored); every match is replaced.
        expression: String,
        /// Replacement; `$1`, `${name}` insert captures.
        replace: String,
        /// Rewrite this extracted field instead of the line.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        source: Option<String>,
    },
    /// Mask secrets in the line.
    Redact {
        /// Built-in patterns: `bearer`, `basic_auth`, `password`,
        /// `url_credentials`, `aws_access_key`, `jwt`. Empty list and no
        /// `expressions`: all of them.
        #[serde(default)]
        patterns: Vec<String>,
        /// Own regexes; the group named `secret` is masked, else the whole
        /// match.
        #[serde(default)]
        expressions: Vec<String>,
        /// What replaces a secret.
        #[serde(default = "mask")]
        mask: String,
    },
    /// Keep a fraction of entries.
    Sample {
        /// Fraction kept, 0 to 1.
        rate: f64,
    },
    /// Rate-limit each stream (token bucket); entries over it are dropped.
    Limit {
        /// Entries per second per stream.
        rate: f64,
        /// Bucket size: entries allowed at once.
        burst: u32,
    },
    /// Derive a metric from entries into the metrics store.
    Metrics {
        /// Metric name (`app_errors_total`).
        name: String,
        /// `counter` or `histogram`.
        #[serde(default)]
        kind: MetricKind,
        /// Help text (kept in the config only).
        #[serde(default)]
        description: String,
        /// Only entries whose line matches this regex (unanchored).
        #[serde(default, rename = "match", skip_serializing_if = "Option::is_none")]
        line_match: Option<String>,
        /// Field read: required to be present; for `add` and histograms,
        /// its numeric value.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        source: Option<String>,
        /// Only entries whose `source` field equals this.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        value: Option<String>,
        /// Counters: `inc` or `add`.
        #[serde(default)]
        action: CounterAction,
        /// Counters with `inc`: add the line's bytes instead of 1.
        #[serde(default)]
        count_bytes: bool,
        /// Histogram bucket upper bounds.
        #[serde(default)]
        buckets: Vec<f64>,
        /// How often the current values are written to the metrics store.
        #[serde(default = "metric_interval")]
        interval: ConfigDuration,
        /// A series not updated for this long is ended (a staleness marker
        /// written) and forgotten.
        #[serde(default = "metric_max_idle")]
        max_idle: ConfigDuration,
    },
}

impl StageConfig {
    /// The stage's `type`.
    pub fn kind(&self) -> &'static str {
        match self {
            StageConfig::Cri { .. } => "cri",
            StageConfig::Docker { .. } => "docker",
            StageConfig::Json { .. } => "json",
            StageConfig::Logfmt { .. } => "logfmt",
            StageConfig::Regex { .. } => "regex",
            StageConfig::Timestamp { .. } => "timestamp",
            StageConfig::Labels { .. } => "labels",
            StageConfig::StructuredMetadata { .. } => "structured_metadata",
            StageConfig::Drop { .. } => "drop",
            StageConfig::Replace { .. } => "replace",
            StageConfig::Redact { .. } => "redact",
            StageConfig::Sample { .. } => "sample",
            StageConfig::Limit { .. } => "limit",
            StageConfig::Metrics { .. } => "metrics",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Deserialize)]
    struct File {
        pipeline: Vec<PipelineConfig>,
    }

    #[test]
    fn parses_stage_tables_and_refuses_unknown_keys() {
        let f: File = toml::from_str(
            r#"
[[pipeline]]
selector = '{job="app"}'
tenant = "a"

[[pipeline.stage]]
type = "json"
fields = { level = "level", user = "user.id" }

[[pipeline.stage]]
type = "labels"
fields = ["level"]

[[pipeline.stage]]
type = "structured_metadata"
fields = { uid = "user" }

[[pipeline.stage]]
type = "drop"
older_than = "1h"
longer_than = "8KiB"

[[pipeline.stage]]
type = "metrics"
name = "errors_total"
match = "ERROR"
"#,
        )
        .unwrap();
        let p = &f.pipeline[0];
        assert_eq!(p.tenant.as_deref(), Some("a"));
        assert_eq!(p.stages.len(), 5);
        assert_eq!(p.stages[1], StageConfig::Labels { fields: FieldList::List(vec!["level".into()]) });
        let StageConfig::StructuredMetadata { fields } = &p.stages[2] else { panic!() };
        assert_eq!(fields.pairs(), [("uid".to_string(), "user".to_string())]);
        let StageConfig::Metrics { line_match, interval, kind, .. } = &p.stages[4] else { panic!() };
        assert_eq!((line_match.as_deref(), interval.as_millis(), *kind), (Some("ERROR"), 15_000, MetricKind::Counter));
        let e = toml::from_str::<File>(
            "[[pipeline]]\nselector='{a=\"b\"}'\n[[pipeline.stage]]\ntype=\"json\"\nfeilds={}\n",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("feilds"), "{e}");
        let e = toml::from_str::<File>("[[pipeline]]\nselector='{a=\"b\"}'\n[[pipeline.stage]]\ntype=\"jsn\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("jsn"), "{e}");
    }
}
