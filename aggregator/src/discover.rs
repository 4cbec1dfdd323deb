//! Loki 3's ingest-time discovery: the `service_name` stream label and the
//! `detected_level` structured-metadata field, which Grafana's Logs
//! Drilldown app and Explore's log-volume histogram rely on.
//!
//! [`discover_service_and_level`] is the one entry point, called on every log
//! stream of a push before it is validated and stored. It follows Loki's
//! distributor (`pkg/loghttp/push/push.go`, `pkg/distributor/field_detection.go`):
//!
//! - **`service_name`** (`limits.discover_service_name`): a stream without a
//!   `service_name` label gets one, copied from the first label of the list
//!   it carries, else `unknown_service`. Loki's internal streams
//!   (`__aggregated_metric__`, `__pattern__`) are left alone; an empty list
//!   turns this off.
//! - **`detected_level`** (`limits.discover_log_levels`): each entry gets a
//!   `detected_level` structured-metadata field, unless it has one already
//!   (then its value is normalised in place). The level comes from, in
//!   order: the first stream label named in `limits.log_level_fields` —
//!   then nothing is stored: the level is the same for the whole stream and
//!   queries imply it from the label (`cairn_query::logql::QueryCtl::level_fields`),
//!   which keeps such streams as cheap to store and count as without
//!   discovery; the
//!   first such metadata field; an OTLP `severity_number` metadata field; a
//!   JSON line's first string field of those names (two object levels deep);
//!   a logfmt line's field of those names (case-insensitive, earlier names
//!   preferred); words in the line (`info`, `[error]`, `WARN:`…), else
//!   `unknown`. Known spellings are normalised to `trace`, `debug`, `info`,
//!   `warn`, `error`, `critical`, `fatal`; a label or metadata value of
//!   another spelling is kept as it is, as Loki does.
//!
//! One deliberate difference: a stream that already carries a
//! `detected_level` *label* gets no `detected_level` metadata (Loki would add
//! both, and queries would then see `detected_level_extracted`).

use std::borrow::Cow;
use std::cell::Cell;
use std::fmt;

use cairn_query::logql::{DETECTED_LEVEL, known_level, level_from_labels, normalize_level};
use cairn_wire::{Labels, StreamEntries};
use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};

use crate::config::LimitsConfig;

/// The label Loki adds to every stream.
pub const SERVICE_NAME: &str = "service_name";
/// `service_name` of a stream none of whose labels names its service.
pub const UNKNOWN_SERVICE: &str = "unknown_service";
/// OTLP's severity number, as Loki's OTLP ingest stores it in metadata.
const OTLP_SEVERITY_NUMBER: &str = "severity_number";
/// Depth of JSON objects searched for a level field (Loki's
/// `log_level_from_json_max_depth` default): the top-level object and the
/// objects directly inside it.
const JSON_MAX_DEPTH: usize = 2;

/// Loki's default `discover_service_name` list.
pub const DEFAULT_SERVICE_NAME_LABELS: &[&str] = &[
    "service",
    "app",
    "application",
    "app_name",
    "name",
    "app_kubernetes_io_name",
    "container",
    "container_name",
    "k8s_container_name",
    "component",
    "workload",
    "job",
    "k8s_job_name",
];

/// Loki's default `log_level_fields`.
pub const DEFAULT_LEVEL_FIELDS: &[&str] = &[
    "level",
    "LEVEL",
    "Level",
    "log.level",
    "severity",
    "SEVERITY",
    "Severity",
    "SeverityText",
    "lvl",
    "LVL",
    "Lvl",
    "severity_text",
    "Severity_Text",
    "SEVERITY_TEXT",
];

/// Adds `service_name` to the stream's labels and `detected_level` to its
/// entries' structured metadata, as `limits` configures (see the module
/// docs). Label validity is checked afterwards by the caller, as Loki
/// validates after discovery.
pub fn discover_service_and_level(limits: &LimitsConfig, stream: &mut StreamEntries) {
    if let Some(labels) = with_service_name(&limits.discover_service_name, &stream.labels) {
        stream.labels = labels;
    }
    if limits.discover_log_levels && stream.labels.get(DETECTED_LEVEL).is_none() {
        let fields = &limits.log_level_fields;
        // A level label gives every entry the same level: nothing is
        // stored, queries imply it from the label (`QueryCtl::level_fields`).
        let from_label = level_from_labels(fields, &stream.labels).is_some();
        for e in &mut stream.entries {
            if let Some((_, v)) = e.metadata.iter_mut().find(|(k, _)| k == DETECTED_LEVEL) {
                let n = normalize_level(v);
                if n != v.as_str() {
                    *v = n.to_string();
                }
                continue;
            }
            if from_label {
                continue;
            }
            let level = level_of_entry(fields, &e.metadata, &e.line);
            if !level.is_empty() {
                e.metadata.push((DETECTED_LEVEL.to_string(), level));
            }
        }
    }
}

/// The stream's labels with `service_name` added, or `None` when they keep
/// as they are.
fn with_service_name(candidates: &[String], labels: &Labels) -> Option<Labels> {
    if candidates.is_empty()
        || labels.get(SERVICE_NAME).is_some()
        || labels.get("__aggregated_metric__").is_some()
        || labels.get("__pattern__").is_some()
    {
        return None;
    }
    let value = candidates.iter().find_map(|c| labels.get(c)).unwrap_or(UNKNOWN_SERVICE).to_string();
    let pairs = labels.iter().map(|l| (l.name.clone(), l.value.clone())).chain([(SERVICE_NAME.to_string(), value)]);
    // Cannot fail: the names were valid and `service_name` was absent.
    Labels::from_pairs(pairs).ok()
}

/// The level of an entry whose stream has no level label.
fn level_of_entry(fields: &[String], metadata: &[(String, String)], line: &str) -> String {
    let meta = |name: &str| metadata.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str());
    if let Some(v) = fields.iter().find_map(|f| meta(f)) {
        return normalize_level(v).to_string();
    }
    if let Some(n) = meta(OTLP_SEVERITY_NUMBER) {
        return otlp_level(n).to_string();
    }
    level_of_line(fields, line).to_string()
}

/// OTLP's severity number ranges (1-4 trace, 5-8 debug, … 21-24 fatal).
fn otlp_level(n: &str) -> &'static str {
    match n.trim().parse::<i64>() {
        Err(_) => "info",
        Ok(0) => "unknown",
        Ok(n) if n <= 4 => "trace",
        Ok(n) if n <= 8 => "debug",
        Ok(n) if n <= 12 => "info",
        Ok(n) if n <= 16 => "warn",
        Ok(n) if n <= 20 => "error",
        Ok(n) if n <= 24 => "fatal",
        Ok(_) => "unknown",
    }
}

/// The level of a line: from its JSON or logfmt level field, else from
/// words in it.
fn level_of_line(fields: &[String], line: &str) -> &'static str {
    let t = line.trim();
    let field = if t.starts_with('{') && t.ends_with('}') {
        json_level_field(fields, t).map(Cow::Owned)
    } else if line.contains('=') {
        logfmt_level_field(fields, line)
    } else {
        return level_from_words(line);
    };
    field.as_deref().and_then(known_level).unwrap_or_else(|| level_from_words(line))
}

/// The value of the logfmt field whose name matches (case-insensitively)
/// the earliest of `fields`; the scan stops at a malformed pair. The same
/// grammar as `cairn_query::logql::pipeline::logfmt_pairs` (a test compares
/// them), without building the pairs, nor an error message for a line that
/// is not logfmt: this runs on every pushed line that holds a `=`. Only
/// the chosen value is copied, and only when it holds an escape.
fn logfmt_level_field<'a>(fields: &[String], line: &'a str) -> Option<Cow<'a, str>> {
    let b = line.as_bytes();
    let mut i = 0;
    // (rank in `fields`, value: start and end in `line`, quoted)
    let mut best: Option<(usize, usize, usize, bool)> = None;
    loop {
        while i < b.len() && b[i] <= b' ' {
            i += 1;
        }
        if i >= b.len() {
            break;
        }
        let ks = i;
        while i < b.len() && b[i] > b' ' && b[i] != b'=' && b[i] != b'"' {
            i += 1;
        }
        if i == ks || (i < b.len() && b[i] == b'"') {
            break; // malformed pair: the pairs before it count
        }
        let key = &line[ks..i];
        let (vs, ve, quoted) = if i >= b.len() || b[i] != b'=' {
            (i, i, false) // a bare key: its value is empty
        } else {
            i += 1;
            if i < b.len() && b[i] == b'"' {
                let vs = i;
                i += 1;
                loop {
                    match b.get(i) {
                        None => return best.and_then(|v| logfmt_value(line, v)),
                        Some(b'"') => break,
                        // an escape takes the next character whole; its
                        // first byte is never a continuation byte
                        Some(b'\\') => i += 2,
                        Some(_) => i += 1,
                    }
                }
                i += 1;
                (vs, i, true)
            } else {
                let vs = i;
                while i < b.len() && b[i] > b' ' && b[i] != b'"' && b[i] != b'=' {
                    i += 1;
                }
                if i < b.len() && (b[i] == b'"' || b[i] == b'=') {
                    break;
                }
                (vs, i, false)
            }
        };
        let Some(rank) = fields.iter().position(|f| f.eq_ignore_ascii_case(key)) else { continue };
        if best.is_none_or(|(r, ..)| rank < r) {
            best = Some((rank, vs, ve, quoted));
            if rank == 0 {
                break;
            }
        }
    }
    best.and_then(|v| logfmt_value(line, v))
}

/// The value [`logfmt_level_field`] chose, unquoted as `logfmt_pairs`
/// does (`\n`, `\t`, `\r`, else the escaped character itself).
fn logfmt_value(line: &str, (_, vs, ve, quoted): (usize, usize, usize, bool)) -> Option<Cow<'_, str>> {
    if !quoted {
        return Some(Cow::Borrowed(&line[vs..ve]));
    }
    let inner = &line[vs + 1..ve - 1];
    if !inner.contains('\\') {
        return Some(Cow::Borrowed(inner));
    }
    let mut v = String::with_capacity(inner.len());
    let mut chars = inner.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => match chars.next()? {
                'n' => v.push('\n'),
                't' => v.push('\t'),
                'r' => v.push('\r'),
                e => v.push(e),
            },
            c => v.push(c),
        }
    }
    Some(Cow::Owned(v))
}

/// Loki's last resort: the first of these words (in this order) whose first
/// occurrence in the lower-cased line stands alone (no letter, digit or `_`
/// on either side), else `unknown`.
fn level_from_words(line: &str) -> &'static str {
    static FINDERS: std::sync::LazyLock<Vec<memchr::memmem::Finder<'static>>> =
        std::sync::LazyLock::new(|| WORDS.iter().map(|(w, _)| memchr::memmem::Finder::new(w.as_bytes())).collect());
    thread_local! {
        static LOWER: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
    }
    // Runs on every pushed line without a level field: an ASCII line is
    // lower-cased into a reused buffer, and the words are found with SIMD
    // finders.
    LOWER.with_borrow_mut(|b| {
        b.clear();
        if line.is_ascii() {
            b.extend(line.bytes().map(|c| c.to_ascii_lowercase()));
        } else {
            b.extend_from_slice(line.to_lowercase().as_bytes());
        }
        // Go's check reads one byte as a rune: non-ASCII bytes count as
        // their Latin-1 character.
        let boundary = |i: Option<usize>| match i.and_then(|i| b.get(i)) {
            None => true,
            Some(&c) => !(c.is_ascii_alphanumeric() || c == b'_' || (c >= 0x80 && char::from(c).is_alphabetic())),
        };
        for (f, &(word, level)) in FINDERS.iter().zip(WORDS) {
            if let Some(pos) = f.find(b)
                && boundary(pos.checked_sub(1))
                && boundary(Some(pos + word.len()))
            {
                return level;
            }
        }
        "unknown"
    })
}

/// The level words, in Loki's order of preference, with their level.
const WORDS: &[(&str, &str)] = &[
    ("trace", "trace"),
    ("debug", "debug"),
    ("fatal", "fatal"),
    ("critical", "critical"),
    ("error", "error"),
    ("err", "error"),
    ("warning", "warn"),
    ("warn", "warn"),
    ("info", "info"),
];

/// The first string value (in document order) of a key named in `fields`,
/// searching the top-level object and objects nested in it down to
/// [`JSON_MAX_DEPTH`]. The walk stops at the first match, so a malformed
/// tail after it does not matter; a malformed line before it finds nothing.
fn json_level_field(fields: &[String], line: &str) -> Option<String> {
    let found = Cell::new(None);
    let mut de = serde_json::Deserializer::from_str(line);
    let _ = de.deserialize_map(ObjectScan { fields, depth: 0, found: &found });
    found.take()
}

/// Error used to stop the walk once the field is found.
const STOP: &str = "level field found";

/// Walks one JSON object (see [`json_level_field`]).
struct ObjectScan<'a> {
    fields: &'a [String],
    depth: usize,
    found: &'a Cell<Option<String>>,
}

impl<'de> Visitor<'de> for ObjectScan<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        if self.depth >= JSON_MAX_DEPTH {
            while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
            return Ok(());
        }
        while let Some(wanted) = map.next_key_seed(KeyIsLevel(self.fields))? {
            let inner = ObjectScan { fields: self.fields, depth: self.depth + 1, found: self.found };
            map.next_value_seed(ValueScan { wanted, inner })?;
        }
        Ok(())
    }
}

impl<'de> DeserializeSeed<'de> for ObjectScan<'_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_map(self)
    }
}

/// Reads a key, answering whether it is one of the level field names.
struct KeyIsLevel<'a>(&'a [String]);

impl<'de> DeserializeSeed<'de> for KeyIsLevel<'_> {
    type Value = bool;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<bool, D::Error> {
        d.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for KeyIsLevel<'_> {
    type Value = bool;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an object key")
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<bool, E> {
        Ok(self.0.iter().any(|f| f == v))
    }
}

/// Reads a value: a string under a level key ends the walk; objects are
/// searched; anything else is skipped.
struct ValueScan<'a> {
    wanted: bool,
    inner: ObjectScan<'a>,
}

impl<'de> DeserializeSeed<'de> for ValueScan<'_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for ValueScan<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<(), E> {
        if self.wanted {
            self.inner.found.set(Some(v.to_string()));
            return Err(E::custom(STOP));
        }
        Ok(())
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<(), A::Error> {
        self.inner.visit_map(map)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(())
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<(), E> {
        Ok(())
    }

    fn visit_i64<E: de::Error>(self, _: i64) -> Result<(), E> {
        Ok(())
    }

    fn visit_u64<E: de::Error>(self, _: u64) -> Result<(), E> {
        Ok(())
    }

    fn visit_f64<E: de::Error>(self, _: f64) -> Result<(), E> {
        Ok(())
    }

    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    /// The word search (reused buffer, SIMD finders) agrees with plain
    /// searches of the lower-cased line, on lines made of level words,
    /// their near misses and separators in any case, ASCII or not.
    #[test]
    fn word_search_agrees_with_plain_searches() {
        use proptest::prelude::*;
        fn reference(line: &str) -> &'static str {
            let lower = line.to_lowercase();
            let b = lower.as_bytes();
            let boundary = |i: Option<usize>| match i.and_then(|i| b.get(i)) {
                None => true,
                Some(&c) => !(c.is_ascii_alphanumeric() || c == b'_' || (c >= 0x80 && char::from(c).is_alphabetic())),
            };
            for &(word, level) in super::WORDS {
                if let Some(pos) = lower.find(word)
                    && boundary(pos.checked_sub(1))
                    && boundary(Some(pos + word.len()))
                {
                    return level;
                }
            }
            "unknown"
        }
        let piece = prop::sample::select(vec![
            "trace", "DEBUG", "Fatal", "critical", "error", "ERR", "errors", "warning", "Warn", "info", "INFOS",
            "xinfo", "_", " ", "=", "[", "]", "a", "7", "in", "wa", "e", "-", ":", "err_", "trac", "é", "Ä", "İ",
        ]);
        proptest!(ProptestConfig::with_cases(4000), |(parts in prop::collection::vec(piece, 0..12))| {
            let line = parts.concat();
            prop_assert_eq!(super::level_from_words(&line), reference(&line), "{}", line);
        });
    }

    /// The logfmt level scan (no pairs built) agrees with choosing from
    /// the pairs of `logfmt_pairs`, as it did before, on lines of keys,
    /// values, quotes, escapes and separators.
    #[test]
    fn logfmt_level_scan_agrees_with_pairs() {
        use proptest::prelude::*;
        fn reference(fields: &[String], line: &str) -> Option<String> {
            let (mut pairs, err) = cairn_query::logql::pipeline::logfmt_pairs(line);
            if let Some((at, _)) = err {
                pairs.truncate(at);
            }
            let mut best: Option<(usize, String)> = None;
            for (k, v) in pairs {
                let Some(rank) = fields.iter().position(|f| f.eq_ignore_ascii_case(&k)) else { continue };
                if best.as_ref().is_none_or(|(r, _)| rank < *r) {
                    best = Some((rank, v.unwrap_or_default()));
                    if rank == 0 {
                        break;
                    }
                }
            }
            best.map(|(_, v)| v)
        }
        let fields: Vec<String> = super::DEFAULT_LEVEL_FIELDS.iter().map(|s| s.to_string()).collect();
        let piece = prop::sample::select(vec![
            "level", "LEVEL", "lvl", "Severity", "msg", "a", "=", "\"", "\\", "\\\"", "\\n", " ", "\t", "info",
            "warn x", "é", "ü=", "-", "[", "1",
        ]);
        proptest!(ProptestConfig::with_cases(4000), |(parts in prop::collection::vec(piece, 0..14))| {
            let line = parts.concat();
            let got = super::logfmt_level_field(&fields, &line).map(|c| c.into_owned());
            prop_assert_eq!(got, reference(&fields, &line), "{:?}", line);
        });
    }

    use cairn_wire::Entry;

    use super::*;

    fn stream(labels: &[(&str, &str)], lines: &[(&str, &[(&str, &str)])]) -> StreamEntries {
        StreamEntries {
            labels: Labels::from_pairs(labels.iter().copied()).unwrap(),
            entries: lines
                .iter()
                .enumerate()
                .map(|(i, (l, m))| Entry {
                    ts: i as i64,
                    line: l.to_string(),
                    metadata: m.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
                })
                .collect(),
        }
    }

    fn levels(s: &StreamEntries) -> Vec<Option<&str>> {
        s.entries
            .iter()
            .map(|e| e.metadata.iter().find(|(k, _)| k == DETECTED_LEVEL).map(|(_, v)| v.as_str()))
            .collect()
    }

    #[test]
    fn service_name_from_first_listed_label() {
        let l = LimitsConfig::default();
        let mut s = stream(&[("job", "varlogs"), ("container", "nginx")], &[]);
        discover_service_and_level(&l, &mut s);
        assert_eq!(s.labels.get(SERVICE_NAME), Some("nginx"), "container comes before job in the list");
        let mut s = stream(&[("host", "a")], &[]);
        discover_service_and_level(&l, &mut s);
        assert_eq!(s.labels.get(SERVICE_NAME), Some(UNKNOWN_SERVICE));
        let mut s = stream(&[("service_name", "mine"), ("app", "other")], &[]);
        discover_service_and_level(&l, &mut s);
        assert_eq!(s.labels.get(SERVICE_NAME), Some("mine"));
        assert_eq!(s.labels.len(), 2);
        let mut s = stream(&[("__aggregated_metric__", "x")], &[]);
        discover_service_and_level(&l, &mut s);
        assert_eq!(s.labels.get(SERVICE_NAME), None, "internal streams are left alone");
        let off = LimitsConfig { discover_service_name: vec![], ..LimitsConfig::default() };
        let mut s = stream(&[("app", "a")], &[]);
        discover_service_and_level(&off, &mut s);
        assert_eq!(s.labels.get(SERVICE_NAME), None);
    }

    #[test]
    fn level_from_label_then_metadata_then_line() {
        let l = LimitsConfig::default();
        let mut s = stream(&[("app", "a"), ("level", "WARNING")], &[("x", &[]), ("y", &[("detected_level", "ERR")])]);
        discover_service_and_level(&l, &mut s);
        assert_eq!(levels(&s), [None, Some("error")], "label: nothing stored; present metadata is normalised");
        assert_eq!(level_from_labels(&l.log_level_fields, &s.labels), Some("warn"), "queries imply it from the label");
        assert_eq!(s.entries[1].metadata.len(), 1);

        let mut s = stream(
            &[("app", "a")],
            &[
                ("info in text", &[("severity", "Critical")]),
                ("x", &[("severity_number", "17")]),
                ("x", &[("lvl", "verbose")]),
            ],
        );
        discover_service_and_level(&l, &mut s);
        assert_eq!(levels(&s), [Some("critical"), Some("error"), Some("verbose")]);
    }

    #[test]
    fn level_from_json_logfmt_and_words() {
        let l = LimitsConfig::default();
        let lines: &[(&str, &[(&str, &str)])] = &[
            (r#"{"msg":"info here","level":"dbg"}"#, &[]),
            (r#"{"log":{"Severity":"warn"}}"#, &[]),
            (r#"{"a":{"b":{"level":"information"}}}"#, &[]),
            (r#"{"level":3,"lvl":"ERROR"}"#, &[]),
            (r#"{"msg":"x"} trailing {"level":"error"}"#, &[]),
            ("ts=1 LVL=warn level=info msg=x", &[]),
            ("ts=1 severity=Fatal", &[]),
            ("a=1 level=nonsense msg=\"[error] boom\"", &[]),
            ("[ERROR] disk full", &[]),
            ("WARNING: low", &[]),
            ("booting, information follows", &[]),
            ("nothing to see", &[]),
            (r#"{"level":"dbg", broken}"#, &[]),
            ("trace id 7 had an error", &[]),
        ];
        let mut s = stream(&[("app", "a")], lines);
        discover_service_and_level(&l, &mut s);
        assert_eq!(
            levels(&s),
            [
                Some("debug"),
                Some("warn"),
                Some("unknown"),
                Some("error"),
                Some("error"),
                Some("info"),
                Some("fatal"),
                Some("error"),
                Some("error"),
                Some("warn"),
                Some("unknown"),
                Some("unknown"),
                Some("debug"),
                Some("trace"),
            ]
        );
    }

    #[test]
    fn level_label_on_stream_or_switch_off_adds_nothing() {
        let mut s = stream(&[("app", "a"), ("detected_level", "info")], &[("[error] x", &[])]);
        discover_service_and_level(&LimitsConfig::default(), &mut s);
        assert!(s.entries[0].metadata.is_empty());
        let off = LimitsConfig { discover_log_levels: false, ..LimitsConfig::default() };
        let mut s = stream(&[("app", "a")], &[("[error] x", &[])]);
        discover_service_and_level(&off, &mut s);
        assert!(s.entries[0].metadata.is_empty());
    }
}
