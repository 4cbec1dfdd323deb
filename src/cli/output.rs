//! Output of the CLI: log lines (`timestamp {labels} line`, or JSON), match
//! highlighting, tables and CSV for metric results, and the progress line
//! on stderr.

use std::io::{IsTerminal, Write};
use std::time::Instant;

use serde_json::json;

use super::backend::{LogLine, Metric, Pairs};
use super::{CliResult, ColorChoice};

const RESET: &str = "\x1b[0m";
const MATCH: &str = "\x1b[1;31m";
const TS: &str = "\x1b[32m";
const LABELS: &str = "\x1b[35m";
const DIM: &str = "\x1b[2m";
const SEP: &str = "\x1b[36m";

/// How log lines are printed.
#[derive(Debug, Clone)]
pub struct LineFormat {
    /// Colour escapes on.
    pub color: bool,
    /// One JSON object per line.
    pub json: bool,
    /// Leave the labels out.
    pub no_labels: bool,
    /// Print the line only.
    pub only_line: bool,
    /// Mark matches `:` and context `-` (grep with context).
    pub mark_context: bool,
    /// Highlights matches in the line (colour only).
    pub highlight: Option<regex::Regex>,
}

/// True when colour should be used on stdout.
pub fn use_color(c: ColorChoice) -> bool {
    match c {
        ColorChoice::Always => true,
        ColorChoice::Never => false,
        ColorChoice::Auto => std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none(),
    }
}

/// `{a="1", b="2"}`, with Go-style quoting of values.
pub fn labels_text(p: &Pairs) -> String {
    let mut s = String::from("{");
    for (i, (k, v)) in p.iter().enumerate() {
        if i > 0 {
            s.push_str(", ");
        }
        s.push_str(k);
        s.push('=');
        s.push_str(&cairn_query::logql::go_quote(v));
    }
    s.push('}');
    s
}

/// RFC 3339 UTC with milliseconds, fixed width: `2026-11-24T13:00:00.123Z`.
pub fn ts_text(ns: i64) -> String {
    let ms = ns.div_euclid(1_000_000);
    let full = cairn_wire::time::format_rfc3339_ns(ms.div_euclid(1000) * 1_000_000_000);
    format!("{}.{:03}Z", full.trim_end_matches('Z'), ms.rem_euclid(1000))
}

/// Writes one log line.
pub fn write_line(
    out: &mut (impl Write + ?Sized),
    f: &LineFormat,
    labels: &Pairs,
    e: &LogLine,
    context: bool,
) -> std::io::Result<()> {
    if f.json {
        let mut o = json!({
            "ts": e.ts.to_string(),
            "time": cairn_wire::time::format_rfc3339_ns(e.ts),
            "labels": labels.iter().map(|(k, v)| (k.clone(), json!(v))).collect::<serde_json::Map<_, _>>(),
            "line": e.line,
        });
        if !e.extra.is_empty() {
            o["fields"] = json!(e.extra.iter().map(|(k, v)| (k.clone(), json!(v))).collect::<serde_json::Map<_, _>>());
        }
        if f.mark_context {
            o["context"] = json!(context);
        }
        return writeln!(out, "{o}");
    }
    let mut s = String::with_capacity(e.line.len() + 64);
    if !f.only_line {
        if f.color {
            s.push_str(TS);
        }
        s.push_str(&ts_text(e.ts));
        if f.color {
            s.push_str(RESET);
        }
        if !f.no_labels {
            s.push(' ');
            if f.color {
                s.push_str(LABELS);
            }
            s.push_str(&labels_text(labels));
            if f.color {
                s.push_str(RESET);
            }
        }
        if f.mark_context {
            if f.color {
                s.push_str(SEP);
            }
            s.push(if context { '-' } else { ':' });
            if f.color {
                s.push_str(RESET);
            }
        } else {
            s.push(' ');
        }
    }
    match (&f.highlight, f.color, context) {
        (_, true, true) => {
            s.push_str(DIM);
            s.push_str(&e.line);
            s.push_str(RESET);
        }
        (Some(re), true, false) => {
            let mut last = 0;
            for m in re.find_iter(&e.line) {
                if m.start() == m.end() {
                    continue;
                }
                s.push_str(&e.line[last..m.start()]);
                s.push_str(MATCH);
                s.push_str(m.as_str());
                s.push_str(RESET);
                last = m.end();
            }
            s.push_str(&e.line[last..]);
        }
        _ => s.push_str(&e.line),
    }
    s.push('\n');
    out.write_all(s.as_bytes())
}

/// The `--` between context groups.
pub fn write_group_sep(out: &mut (impl Write + ?Sized), f: &LineFormat) -> std::io::Result<()> {
    if f.json {
        return Ok(());
    }
    if f.color { writeln!(out, "{SEP}--{RESET}") } else { writeln!(out, "--") }
}

/// Output format of metric results.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TableFormat {
    /// Aligned columns.
    Table,
    /// Comma-separated, with a header.
    Csv,
    /// The API's JSON `data` shape.
    Json,
}

fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) { format!("\"{}\"", s.replace('"', "\"\"")) } else { s.to_string() }
}

fn time_ms_text(ms: i64) -> String {
    ts_text(ms.saturating_mul(1_000_000))
}

fn secs_json(ms: i64) -> serde_json::Value {
    if ms % 1000 == 0 { json!(ms / 1000) } else { json!(ms as f64 / 1000.0) }
}

/// Prints a metric result.
pub fn write_metric(out: &mut impl Write, m: &Metric, fmt: TableFormat) -> CliResult<()> {
    let obj = |p: &Pairs| p.iter().map(|(k, v)| (k.clone(), json!(v))).collect::<serde_json::Map<_, _>>();
    if fmt == TableFormat::Json {
        let v = match m {
            Metric::Scalar(t, v) => json!({"resultType": "scalar", "result": [secs_json(*t), v]}),
            Metric::Str(t, v) => json!({"resultType": "string", "result": [secs_json(*t), v]}),
            Metric::Vector(vs) => {
                json!({"resultType": "vector", "result": vs.iter().map(|(l, t, v)| json!({"metric": obj(l), "value": [secs_json(*t), v]})).collect::<Vec<_>>()})
            }
            Metric::Matrix(ss) => {
                json!({"resultType": "matrix", "result": ss.iter().map(|(l, pts)| json!({"metric": obj(l), "values": pts.iter().map(|(t, v)| json!([secs_json(*t), v])).collect::<Vec<_>>()})).collect::<Vec<_>>()})
            }
        };
        writeln!(out, "{v}")?;
        return Ok(());
    }
    // Rows of (labels, time, value).
    let rows: Vec<(&Pairs, i64, &str)> = match m {
        Metric::Scalar(t, v) | Metric::Str(t, v) => {
            if fmt == TableFormat::Csv {
                writeln!(out, "time,value\n{},{}", time_ms_text(*t), csv_field(v))?;
            } else {
                writeln!(out, "{v}")?;
            }
            return Ok(());
        }
        Metric::Vector(vs) => vs.iter().map(|(l, t, v)| (l, *t, v.as_str())).collect(),
        Metric::Matrix(ss) => {
            ss.iter().flat_map(|(l, pts)| pts.iter().map(move |(t, v)| (l, *t, v.as_str()))).collect()
        }
    };
    let mut names: Vec<&str> = rows.iter().flat_map(|(l, _, _)| l.iter().map(|(k, _)| k.as_str())).collect();
    names.sort();
    names.dedup();
    // __name__ first, as Prometheus shows it.
    if let Some(i) = names.iter().position(|n| *n == "__name__") {
        let n = names.remove(i);
        names.insert(0, n);
    }
    let mut header: Vec<String> = names.iter().map(|s| s.to_string()).collect();
    header.push("time".into());
    header.push("value".into());
    let table: Vec<Vec<String>> = rows
        .iter()
        .map(|(l, t, v)| {
            let mut r: Vec<String> = names
                .iter()
                .map(|n| l.iter().find(|(k, _)| k == n).map(|(_, v)| v.clone()).unwrap_or_default())
                .collect();
            r.push(time_ms_text(*t));
            r.push(v.to_string());
            r
        })
        .collect();
    if fmt == TableFormat::Csv {
        writeln!(out, "{}", header.iter().map(|h| csv_field(h)).collect::<Vec<_>>().join(","))?;
        for r in &table {
            writeln!(out, "{}", r.iter().map(|h| csv_field(h)).collect::<Vec<_>>().join(","))?;
        }
        return Ok(());
    }
    if table.is_empty() {
        return Ok(());
    }
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for r in &table {
        for (i, c) in r.iter().enumerate() {
            widths[i] = widths[i].max(c.chars().count());
        }
    }
    let line = |cells: &[String]| {
        let mut s = String::new();
        for (i, c) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                s.push_str(c);
            } else {
                s.push_str(c);
                s.push_str(&" ".repeat(widths[i] - c.chars().count() + 2));
            }
        }
        s
    };
    let upper: Vec<String> = header.iter().map(|h| h.to_uppercase()).collect();
    writeln!(out, "{}", line(&upper))?;
    for r in &table {
        writeln!(out, "{}", line(r))?;
    }
    Ok(())
}

/// A one-line progress report on stderr, only when stderr is a terminal.
pub struct Progress {
    on: bool,
    started: Instant,
    shown: bool,
    last: Option<Instant>,
}

impl Progress {
    /// Progress for a scan of `[start, end)`; `quiet` turns it off.
    pub fn new(quiet: bool) -> Progress {
        Progress { on: !quiet && std::io::stderr().is_terminal(), started: Instant::now(), shown: false, last: None }
    }

    /// Updates the line (at most ten times a second): the range covered so
    /// far, matches and bytes scanned.
    pub fn update(&mut self, start: i64, covered_to: i64, end: i64, matches: u64, bytes: u64) {
        if !self.on || self.last.is_some_and(|t| t.elapsed().as_millis() < 100) {
            return;
        }
        if self.started.elapsed().as_millis() < 300 {
            return;
        }
        self.last = Some(Instant::now());
        let pct = if end > start { (covered_to - start) as f64 * 100.0 / (end - start) as f64 } else { 100.0 };
        let mut err = std::io::stderr().lock();
        let _ = write!(
            err,
            "\r\x1b[K{DIM}searched {} → {} ({pct:.0}%), {} scanned, {matches} matches, {:.1}s{RESET}",
            ts_text(start),
            ts_text(covered_to),
            human_bytes(bytes),
            self.started.elapsed().as_secs_f64()
        );
        let _ = err.flush();
        self.shown = true;
    }

    /// True when progress is shown at all.
    pub fn is_on(&self) -> bool {
        self.on
    }

    /// Clears the line.
    pub fn clear(&mut self) {
        if self.shown {
            let mut err = std::io::stderr().lock();
            let _ = write!(err, "\r\x1b[K");
            let _ = err.flush();
            self.shown = false;
        }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.clear();
    }
}

/// `1.2 MB`.
pub fn human_bytes(b: u64) -> String {
    let b = b as f64;
    if b >= 1e9 {
        format!("{:.1} GB", b / 1e9)
    } else if b >= 1e6 {
        format!("{:.1} MB", b / 1e6)
    } else if b >= 1e3 {
        format!("{:.1} kB", b / 1e3)
    } else {
        format!("{b} B")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats() {
        assert_eq!(ts_text(1_700_000_000_123_456_789), "2023-11-14T22:13:20.123Z");
        assert_eq!(labels_text(&vec![("a".into(), "x\"y".into()), ("b".into(), "2".into())]), r#"{a="x\"y", b="2"}"#);
        let f = LineFormat {
            color: true,
            json: false,
            no_labels: true,
            only_line: false,
            mark_context: false,
            highlight: Some(regex::Regex::new("err").unwrap()),
        };
        let mut out = Vec::new();
        write_line(&mut out, &f, &vec![], &LogLine { ts: 0, line: "an err here".into(), extra: vec![] }, false)
            .unwrap();
        let s = String::from_utf8(out).unwrap();
        assert!(s.contains("an \x1b[1;31merr\x1b[0m here"), "{s:?}");
        let mut out = Vec::new();
        let m = Metric::Vector(vec![(vec![("job".into(), "a,b".into())], 1000, "1.5".into())]);
        write_metric(&mut out, &m, TableFormat::Csv).unwrap();
        assert_eq!(String::from_utf8(out).unwrap(), "job,time,value\n\"a,b\",1970-01-01T00:00:01.000Z,1.5\n");
    }
}
