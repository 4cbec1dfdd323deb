//! A parser for the Prometheus text exposition format (0.0.4) and
//! OpenMetrics 1.0 text, the two formats Prometheus scrapes.
//!
//! [`Parser`] walks the text line by line and yields [`Entry`]s borrowing
//! from it: family metadata (`# HELP`, `# TYPE`, `# UNIT`) and samples.
//! Label values without escapes are borrowed; only escaped ones are copied.
//! The label vector of a sample is the caller's, reused across samples.
//!
//! Differences between the formats handled here, as Prometheus's parsers do:
//! - OpenMetrics timestamps are seconds (with a fraction), text-format
//!   ones integer milliseconds; both come out as milliseconds.
//! - OpenMetrics must end with `# EOF`; nothing may follow it.
//! - OpenMetrics exemplars (`… # {trace_id="…"} 1.0`) are skipped.
//! - `# TYPE` names of OpenMetrics counters lack the `_total` suffix of their
//!   samples; the family name is reported as written.
//!
//! Any malformed line fails the whole parse with its line number, as a
//! Prometheus scrape fails: a target's samples are taken all or nothing.

use std::borrow::Cow;

/// Which text format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// `text/plain; version=0.0.4`.
    Text,
    /// `application/openmetrics-text; version=1.0.0`.
    OpenMetrics,
}

impl Format {
    /// The format of a response with this `Content-Type` (Prometheus picks
    /// OpenMetrics only when the target says so).
    pub fn from_content_type(ct: &str) -> Format {
        if ct.trim_start().to_ascii_lowercase().starts_with("application/openmetrics-text") {
            Format::OpenMetrics
        } else {
            Format::Text
        }
    }
}

/// A metric type as written in `# TYPE`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `counter`
    Counter,
    /// `gauge`
    Gauge,
    /// `histogram`
    Histogram,
    /// `gaugehistogram` (OpenMetrics)
    GaugeHistogram,
    /// `summary`
    Summary,
    /// `info` (OpenMetrics)
    Info,
    /// `stateset` (OpenMetrics)
    StateSet,
    /// `untyped` (text) or `unknown` (OpenMetrics)
    Unknown,
}

impl Kind {
    fn parse(s: &str) -> Option<Kind> {
        Some(match s {
            "counter" => Kind::Counter,
            "gauge" => Kind::Gauge,
            "histogram" => Kind::Histogram,
            "gaugehistogram" => Kind::GaugeHistogram,
            "summary" => Kind::Summary,
            "info" => Kind::Info,
            "stateset" => Kind::StateSet,
            "untyped" | "unknown" => Kind::Unknown,
            _ => return None,
        })
    }

    /// The Prometheus name (`counter`, …, `unknown`).
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
            Kind::GaugeHistogram => "gaugehistogram",
            Kind::Summary => "summary",
            Kind::Info => "info",
            Kind::StateSet => "stateset",
            Kind::Unknown => "unknown",
        }
    }
}

/// One item of an exposition.
#[derive(Debug, Clone, PartialEq)]
pub enum Entry<'a> {
    /// `# HELP name text`
    Help {
        /// Family name.
        name: &'a str,
        /// Unescaped help text.
        help: Cow<'a, str>,
    },
    /// `# TYPE name type`
    Type {
        /// Family name.
        name: &'a str,
        /// The type.
        kind: Kind,
    },
    /// `# UNIT name unit` (OpenMetrics)
    Unit {
        /// Family name.
        name: &'a str,
        /// The unit.
        unit: &'a str,
    },
    /// A sample; its labels are in the vector passed to [`Parser::next_entry`].
    Sample {
        /// Metric name.
        name: &'a str,
        /// The value (NaN and ±Inf allowed).
        value: f64,
        /// Timestamp in milliseconds, if the line has one.
        timestamp_ms: Option<i64>,
    },
}

/// A malformed exposition.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {reason}")]
pub struct ParseError {
    /// 1-based line number.
    pub line: usize,
    /// What is wrong.
    pub reason: String,
}

/// Labels of one sample: (name, value) pairs in the order written.
pub type SampleLabels<'a> = Vec<(&'a str, Cow<'a, str>)>;

/// Walks an exposition; see the module doc.
#[derive(Debug)]
pub struct Parser<'a> {
    rest: &'a str,
    line: usize,
    format: Format,
    eof_seen: bool,
}

impl<'a> Parser<'a> {
    /// A parser over `text` in `format`.
    pub fn new(text: &'a str, format: Format) -> Self {
        Parser { rest: text, line: 0, format, eof_seen: false }
    }

    fn err<T>(&self, reason: impl Into<String>) -> Result<T, ParseError> {
        Err(ParseError { line: self.line, reason: reason.into() })
    }

    /// The next entry (`Ok(None)` at the end). For a [`Entry::Sample`],
    /// `labels` is cleared and filled with its labels.
    pub fn next_entry(&mut self, labels: &mut SampleLabels<'a>) -> Result<Option<Entry<'a>>, ParseError> {
        loop {
            if self.rest.is_empty() {
                if self.format == Format::OpenMetrics && !self.eof_seen {
                    return self.err("OpenMetrics exposition does not end with # EOF");
                }
                return Ok(None);
            }
            let (line, rest) = match self.rest.find('\n') {
                Some(i) => (&self.rest[..i], &self.rest[i + 1..]),
                None => (self.rest, ""),
            };
            self.rest = rest;
            self.line += 1;
            let line = line.strip_suffix('\r').unwrap_or(line);
            if self.eof_seen {
                return self.err("data after # EOF");
            }
            let trimmed = line.trim_matches([' ', '\t']);
            if trimmed.is_empty() {
                if self.format == Format::OpenMetrics {
                    return self.err("empty line");
                }
                continue;
            }
            if let Some(comment) = trimmed.strip_prefix('#') {
                match self.comment(comment)? {
                    Some(e) => return Ok(Some(e)),
                    None => continue,
                }
            }
            return self.sample(trimmed, labels).map(Some);
        }
    }

    fn comment(&mut self, c: &'a str) -> Result<Option<Entry<'a>>, ParseError> {
        if self.format == Format::OpenMetrics && c == " EOF" {
            self.eof_seen = true;
            return Ok(None);
        }
        let c = c.trim_start_matches([' ', '\t']);
        let (keyword, rest) = split_word(c);
        if !matches!(keyword, "HELP" | "TYPE" | "UNIT") {
            if self.format == Format::OpenMetrics {
                return self.err(format!("unknown comment # {keyword}"));
            }
            return Ok(None);
        }
        let (name, rest) = split_word(rest);
        if !valid_metric_name(name) {
            return self.err(format!("invalid metric name {name:?} in # {keyword}"));
        }
        Ok(Some(match keyword {
            "HELP" => Entry::Help { name, help: unescape(rest, false) },
            "TYPE" => {
                let t = rest.trim_matches([' ', '\t']);
                let Some(kind) = Kind::parse(t) else { return self.err(format!("unknown metric type {t:?}")) };
                Entry::Type { name, kind }
            }
            _ => Entry::Unit { name, unit: rest.trim_matches([' ', '\t']) },
        }))
    }

    fn sample(&self, line: &'a str, labels: &mut SampleLabels<'a>) -> Result<Entry<'a>, ParseError> {
        labels.clear();
        let name_end = line.find(['{', ' ', '\t']).unwrap_or(line.len());
        let name = &line[..name_end];
        if !valid_metric_name(name) {
            return self.err(format!("invalid metric name {name:?}"));
        }
        let mut rest = &line[name_end..];
        if let Some(r) = rest.strip_prefix('{') {
            rest = self.labels(r, labels)?;
        }
        let rest = rest.trim_start_matches([' ', '\t']);
        // OpenMetrics exemplar: everything from " # " on.
        let rest = match (self.format, rest.find(" # ")) {
            (Format::OpenMetrics, Some(i)) => &rest[..i],
            _ => rest,
        };
        let mut words = rest.split([' ', '\t']).filter(|w| !w.is_empty());
        let Some(v) = words.next() else { return self.err(format!("no value for {name}")) };
        let Some(value) = parse_float(v) else { return self.err(format!("invalid value {v:?} for {name}")) };
        let timestamp_ms = match words.next() {
            None => None,
            Some(t) => Some(match self.format {
                Format::Text => match t.parse::<i64>() {
                    Ok(ms) => ms,
                    Err(_) => return self.err(format!("invalid timestamp {t:?}")),
                },
                Format::OpenMetrics => match parse_float(t).filter(|s| s.is_finite()) {
                    Some(s) => (s * 1000.0).round() as i64,
                    None => return self.err(format!("invalid timestamp {t:?}")),
                },
            }),
        };
        if let Some(extra) = words.next() {
            return self.err(format!("unexpected {extra:?} after the value of {name}"));
        }
        Ok(Entry::Sample { name, value, timestamp_ms })
    }

    /// Parses `name="value",…}` and returns what follows the `}`.
    fn labels(&self, mut s: &'a str, labels: &mut SampleLabels<'a>) -> Result<&'a str, ParseError> {
        loop {
            s = s.trim_start_matches([' ', '\t']);
            if let Some(r) = s.strip_prefix('}') {
                return Ok(r);
            }
            let name_end = s.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(s.len());
            let name = &s[..name_end];
            if !valid_label_name(name) {
                return self.err(format!("invalid label name {name:?}"));
            }
            s = s[name_end..].trim_start_matches([' ', '\t']);
            let Some(r) = s.strip_prefix('=') else { return self.err(format!("expected = after label {name}")) };
            s = r.trim_start_matches([' ', '\t']);
            let Some(r) = s.strip_prefix('"') else { return self.err(format!("expected \" after {name}=")) };
            // Find the closing quote, skipping escapes.
            let bytes = r.as_bytes();
            let mut i = 0;
            let mut escaped = false;
            loop {
                match bytes.get(i) {
                    None => return self.err(format!("unterminated value of label {name}")),
                    Some(b'\\') => {
                        escaped = true;
                        i += 2;
                    }
                    Some(b'"') => break,
                    Some(_) => i += 1,
                }
            }
            let raw = r.get(..i).ok_or_else(|| ParseError { line: self.line, reason: "bad escape".into() })?;
            let value = if escaped { unescape(raw, true) } else { Cow::Borrowed(raw) };
            if labels.iter().any(|(n, _)| *n == name) {
                return self.err(format!("duplicate label {name}"));
            }
            labels.push((name, value));
            s = r[i + 1..].trim_start_matches([' ', '\t']);
            if let Some(r) = s.strip_prefix(',') {
                s = r;
            } else if !s.starts_with('}') {
                return self.err(format!("expected , or }} after label {name}"));
            }
        }
    }
}

fn split_word(s: &str) -> (&str, &str) {
    match s.find([' ', '\t']) {
        Some(i) => (&s[..i], s[i + 1..].trim_start_matches([' ', '\t'])),
        None => (s, ""),
    }
}

/// `\\` → `\`, `\n` → newline, and in label values `\"` → `"`; any other
/// backslash is kept as written (as Prometheus does).
fn unescape(s: &str, quotes: bool) -> Cow<'_, str> {
    if !s.contains('\\') {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('\\') => out.push('\\'),
            Some('n') => out.push('\n'),
            Some('"') if quotes => out.push('"'),
            Some(o) => {
                out.push('\\');
                out.push(o);
            }
            None => out.push('\\'),
        }
    }
    Cow::Owned(out)
}

/// A float as Go's `strconv.ParseFloat` reads exposition values: decimal,
/// exponent, `NaN`, `Inf`, `+Inf`, `-Inf` (any case).
pub fn parse_float(s: &str) -> Option<f64> {
    let body = s.strip_prefix(['+', '-']).unwrap_or(s);
    if body.is_empty() || !body.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'+' || b == b'-') {
        return None;
    }
    s.parse::<f64>().ok()
}

/// `[a-zA-Z_:][a-zA-Z0-9_:]*`
pub fn valid_metric_name(n: &str) -> bool {
    let mut b = n.bytes();
    matches!(b.next(), Some(c) if c.is_ascii_alphabetic() || c == b'_' || c == b':')
        && b.all(|c| c.is_ascii_alphanumeric() || c == b'_' || c == b':')
}

/// `[a-zA-Z_][a-zA-Z0-9_]*`
pub fn valid_label_name(n: &str) -> bool {
    let mut b = n.bytes();
    matches!(b.next(), Some(c) if c.is_ascii_alphabetic() || c == b'_')
        && b.all(|c| c.is_ascii_alphanumeric() || c == b'_')
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every entry of `text`, labels rendered as `k=v` pairs.
    fn all(text: &str, f: Format) -> Result<Vec<String>, ParseError> {
        let mut p = Parser::new(text, f);
        let mut labels = Vec::new();
        let mut out = Vec::new();
        while let Some(e) = p.next_entry(&mut labels)? {
            out.push(match e {
                Entry::Sample { name, value, timestamp_ms } => {
                    let l: Vec<String> = labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
                    format!("{name}{{{}}} {value} {timestamp_ms:?}", l.join(","))
                }
                other => format!("{other:?}"),
            });
        }
        Ok(out)
    }

    #[test]
    fn text_format() {
        let text = "# HELP http_requests_total The total number of HTTP requests.\n\
# TYPE http_requests_total counter\n\
http_requests_total{method=\"post\",code=\"200\"} 1027 1395066363000\n\
http_requests_total{method=\"post\",code=\"400\",}    3 1395066363000\n\
\n\
# A normal comment.\n\
msdos_file_access_time_seconds{path=\"C:\\\\DIR\\\\FILE.TXT\",error=\"Cannot find file:\\n\\\"FILE.TXT\\\"\"} 1.458255915e9\n\
metric_without_timestamp_and_labels 12.47\n\
something_weird{problem=\"division by zero\"} +Inf -3982045\n\
nan_value NaN\n\
# HELP escaped Help with \\\\ and \\n newline\n\
x{ a = \"1\" , b=\"2\" } -Inf\r\n";
        let got = all(text, Format::Text).unwrap();
        assert_eq!(
            got,
            [
                "Help { name: \"http_requests_total\", help: \"The total number of HTTP requests.\" }",
                "Type { name: \"http_requests_total\", kind: Counter }",
                "http_requests_total{method=post,code=200} 1027 Some(1395066363000)",
                "http_requests_total{method=post,code=400} 3 Some(1395066363000)",
                "msdos_file_access_time_seconds{path=C:\\DIR\\FILE.TXT,error=Cannot find file:\n\"FILE.TXT\"} 1458255915 None",
                "metric_without_timestamp_and_labels{} 12.47 None",
                "something_weird{problem=division by zero} inf Some(-3982045)",
                "nan_value{} NaN None",
                "Help { name: \"escaped\", help: \"Help with \\\\ and \\n newline\" }",
                "x{a=1,b=2} -inf None",
            ]
        );
    }

    #[test]
    fn openmetrics() {
        let text = "# TYPE foo counter\n# UNIT foo seconds\n# HELP foo Some help.\nfoo_total{a=\"b\"} 17.0 1520879607.789 # {trace_id=\"KOO5S4vxi0o\"} 0.67\nfoo_created{a=\"b\"} 1520430000.123\n# TYPE i info\ni_info{v=\"1\"} 1\n# EOF\n";
        let got = all(text, Format::OpenMetrics).unwrap();
        assert_eq!(got[0], "Type { name: \"foo\", kind: Counter }");
        assert_eq!(got[1], "Unit { name: \"foo\", unit: \"seconds\" }");
        assert_eq!(got[3], "foo_total{a=b} 17 Some(1520879607789)");
        assert_eq!(got[4], "foo_created{a=b} 1520430000.123 None");
        assert_eq!(got[5], "Type { name: \"i\", kind: Info }");
        assert!(all("a 1\n", Format::OpenMetrics).unwrap_err().reason.contains("EOF"));
        assert!(all("a 1\n# EOF\nb 2\n", Format::OpenMetrics).unwrap_err().reason.contains("after # EOF"));
        assert_eq!(Format::from_content_type("application/openmetrics-text; version=1.0.0"), Format::OpenMetrics);
        assert_eq!(Format::from_content_type("text/plain; version=0.0.4"), Format::Text);
    }

    #[test]
    fn errors_name_the_line() {
        for (text, want) in [
            ("a 1\nb{ 2\n", "line 2"),
            ("1abc 3\n", "invalid metric name"),
            ("a{b=\"c} 1\n", "unterminated"),
            ("a{b=\"c\"\"d\"} 1\n", "expected , or }"),
            ("a{b=\"1\",b=\"2\"} 1\n", "duplicate label"),
            ("a{0b=\"1\"} 1\n", "invalid label name"),
            ("a\n", "no value"),
            ("a one\n", "invalid value"),
            ("a 1 2 3\n", "unexpected"),
            ("a 1 1.5\n", "invalid timestamp"),
            ("# TYPE a countr\n", "unknown metric type"),
            ("# TYPE 9a counter\n", "invalid metric name"),
            ("a{b=\"\\", "unterminated"),
            ("a{b=\"\\\"} 1", "unterminated"),
        ] {
            let e = all(text, Format::Text).unwrap_err();
            assert!(e.to_string().contains(want), "{text:?}: {e}");
        }
    }

    #[test]
    fn node_exporter_reference_output() {
        let shared = std::env::var("CAIRN_SHARED")
            .map(std::path::PathBuf::from)
            .unwrap_or_else(|_| std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared"));
        let path = shared.join("datasets/node-exporter/node-exporter-1.5.0.prom");
        let Ok(text) = std::fs::read_to_string(&path) else {
            assert!(
                std::env::var("CI").is_err(),
                "{} is missing: in CI the shared data set must be there",
                path.display()
            );
            eprintln!("skipped: {} not found (set CAIRN_SHARED)", path.display());
            return;
        };
        let got = all(&text, Format::Text).unwrap();
        let samples = text.lines().filter(|l| !l.starts_with('#') && !l.is_empty()).count();
        assert_eq!(got.iter().filter(|e| !e.starts_with("Help") && !e.starts_with("Type")).count(), samples);
        assert!(
            got.iter().any(|e| e.starts_with("node_uname_info{") && e.contains("version=#1 SMP PREEMPT_DYNAMIC @0"))
        );
        assert!(got.contains(&"Type { name: \"node_cpu_seconds_total\", kind: Counter }".to_string()));
    }

    /// Deterministic garbage: never a panic, only results.
    #[test]
    fn garbage_never_panics() {
        let seeds = [
            "a{b=\"c\"} 1\n# HELP a x\\\n# TYPE a gauge\n",
            "x{y=\"\\\\\\\"\"} NaN 12\n# EOF\n",
            "é{ü=\"\u{0}\"} 1e400 -9223372036854775808\n",
        ];
        let mut state = 0x2545_f491_4f6c_dd1du64;
        for seed in seeds {
            let bytes = seed.as_bytes();
            for _ in 0..3000 {
                let mut b = bytes.to_vec();
                for _ in 0..4 {
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    let i = (state as usize) % b.len();
                    match state % 3 {
                        0 => b[i] = (state >> 32) as u8,
                        1 => {
                            b.truncate(i);
                        }
                        _ => b.insert(i, b"{}\"\\=, #\n"[(state >> 40) as usize % 9]),
                    }
                    if b.is_empty() {
                        break;
                    }
                }
                let text = String::from_utf8_lossy(&b);
                for f in [Format::Text, Format::OpenMetrics] {
                    let mut labels = Vec::new();
                    let mut p = Parser::new(&text, f);
                    while let Ok(Some(_)) = p.next_entry(&mut labels) {}
                }
            }
        }
    }
}
