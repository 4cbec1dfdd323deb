//! Detected fields (`/loki/api/v1/detected_fields` and
//! `/loki/api/v1/detected_field/<name>/values`): the fields Grafana's
//! Explore and Logs Drilldown offer for filtering, found in the newest
//! lines of a log query.
//!
//! Fields come from each entry's structured metadata (no parser) and from
//! the line itself: a line starting with `{` is read as JSON (nested keys
//! joined with `_`, the original path kept in `jsonPath`), anything else
//! as logfmt. Stream labels are not fields. A field's type is the narrowest
//! of `int`, `float`, `boolean`, `duration`, `bytes`, `string` that every
//! seen value satisfies; cardinality counts distinct values.

use std::collections::{BTreeMap, BTreeSet};

use cairn_store::logs::LogStore;

use super::ast::{Direction, LogSelector};
use super::eval::{LogQuery, eval_log_query};
use super::metric::EvalError;
use super::pipeline::{logfmt_pairs, parse_bytes, parse_go_duration, sanitize_label_name};

/// One detected field.
#[derive(Debug, Clone, PartialEq)]
pub struct DetectedField {
    /// Field (label) name.
    pub label: String,
    /// `int`, `float`, `boolean`, `duration`, `bytes` or `string`.
    pub kind: &'static str,
    /// Distinct values seen.
    pub cardinality: usize,
    /// Parsers that produced it (`json`, `logfmt`); empty for structured metadata.
    pub parsers: Vec<&'static str>,
    /// Path of a JSON field, e.g. `["request", "method"]`.
    pub json_path: Vec<String>,
}

#[derive(Default)]
struct Acc {
    values: BTreeSet<String>,
    parsers: BTreeSet<&'static str>,
    json_path: Vec<String>,
}

fn json_fields(
    prefix: &str,
    path: &mut Vec<String>,
    v: &serde_json::Value,
    out: &mut Vec<(String, String, Vec<String>)>,
) {
    if let serde_json::Value::Object(map) = v {
        for (k, val) in map {
            let key =
                if prefix.is_empty() { sanitize_label_name(k) } else { format!("{prefix}_{}", sanitize_label_name(k)) };
            path.push(k.clone());
            match val {
                serde_json::Value::Object(_) => json_fields(&key, path, val, out),
                serde_json::Value::Array(_) | serde_json::Value::Null => {}
                serde_json::Value::String(s) => out.push((key, s.clone(), path.clone())),
                other => out.push((key, other.to_string(), path.clone())),
            }
            path.pop();
        }
    }
}

fn logfmt_fields(line: &str) -> Vec<(String, String)> {
    logfmt_pairs(line).0.into_iter().filter_map(|(k, v)| Some((sanitize_label_name(&k), v?))).collect()
}

fn kind_of(values: &BTreeSet<String>) -> &'static str {
    let all = |f: &dyn Fn(&str) -> bool| !values.is_empty() && values.iter().all(|v| f(v));
    if all(&|v| v.parse::<i64>().is_ok()) {
        "int"
    } else if all(&|v| v.parse::<f64>().is_ok()) {
        "float"
    } else if all(&|v| v == "true" || v == "false") {
        "boolean"
    } else if all(&|v| parse_go_duration(v).is_some()) {
        "duration"
    } else if all(&|v| {
        parse_bytes(v).is_some() && v.trim_start_matches(|c: char| c.is_ascii_digit() || c == '.').trim() != ""
    }) {
        "bytes"
    } else {
        "string"
    }
}

/// Fields of the newest `q.limit` entries of the query in
/// `[q.start, q.end)` (`q.direction` and `q.categorize` are ignored),
/// sorted by name, at most `field_limit`.
pub fn detect_fields(
    store: &LogStore,
    sel: &LogSelector,
    q: &LogQuery<'_>,
    field_limit: usize,
) -> Result<Vec<DetectedField>, EvalError> {
    Ok(collect(store, sel, q)?
        .into_iter()
        .take(field_limit)
        .map(|(label, a)| DetectedField {
            kind: kind_of(&a.values),
            cardinality: a.values.len(),
            parsers: a.parsers.into_iter().collect(),
            json_path: a.json_path,
            label,
        })
        .collect())
}

/// Distinct values of field `name` in the newest `q.limit` entries, sorted.
pub fn detected_field_values(
    store: &LogStore,
    sel: &LogSelector,
    q: &LogQuery<'_>,
    name: &str,
) -> Result<Vec<String>, EvalError> {
    Ok(collect(store, sel, q)?.remove(name).map(|a| a.values.into_iter().collect()).unwrap_or_default())
}

fn collect(store: &LogStore, sel: &LogSelector, q: &LogQuery<'_>) -> Result<BTreeMap<String, Acc>, EvalError> {
    let q = LogQuery { direction: Direction::Backward, categorize: true, ..q.clone() };
    let mut fields: BTreeMap<String, Acc> = BTreeMap::new();
    for stream in eval_log_query(store, sel, &q)? {
        for e in &stream.entries {
            for (k, v) in &e.metadata {
                fields.entry(k.clone()).or_default().values.insert(v.clone());
            }
            if e.line.trim_start().starts_with('{') {
                if let Ok(v) = serde_json::from_str::<serde_json::Value>(&e.line) {
                    let mut out = Vec::new();
                    json_fields("", &mut Vec::new(), &v, &mut out);
                    for (k, val, path) in out {
                        let a = fields.entry(k).or_default();
                        a.values.insert(val);
                        a.parsers.insert("json");
                        a.json_path = path;
                    }
                }
            } else {
                for (k, v) in logfmt_fields(&e.line) {
                    let a = fields.entry(k).or_default();
                    a.values.insert(v);
                    a.parsers.insert("logfmt");
                }
            }
        }
    }
    Ok(fields)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds() {
        let set = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<BTreeSet<_>>();
        assert_eq!(kind_of(&set(&["1", "20"])), "int");
        assert_eq!(kind_of(&set(&["1", "2.5"])), "float");
        assert_eq!(kind_of(&set(&["true", "false"])), "boolean");
        assert_eq!(kind_of(&set(&["1.5s", "20ms"])), "duration");
        assert_eq!(kind_of(&set(&["1KB", "20MiB"])), "bytes");
        assert_eq!(kind_of(&set(&["GET", "1"])), "string");
        let mut out = Vec::new();
        json_fields("", &mut Vec::new(), &serde_json::json!({"a": {"b-c": 1}, "d": [1], "e": null}), &mut out);
        assert_eq!(out, vec![("a_b_c".to_string(), "1".to_string(), vec!["a".to_string(), "b-c".to_string()])]);
        assert_eq!(logfmt_fields(r#"a=1 b="x y" junk =y"#), vec![("a".into(), "1".into()), ("b".into(), "x y".into())]);
    }
}
