//! Golden LogQL tests: every `tests/golden/logql/*.txt` file holds cases
//!
//! ```text
//! ## <kind> <query>
//! <expected JSON>
//! ```
//!
//! run against one `cairn serve` loaded with `tests/golden/logql/data.json`
//! (a Loki JSON push body with fixed timestamps). `<kind>` is `range`
//! (query_range over [1700000000 s, 1700000060 s], step 10 s, limit 1000,
//! direction forward) or `instant` (query at 1700000060 s), optionally
//! followed by `?k=v&…` parameter overrides and/or `+categorize` (sends
//! `X-Loki-Response-Encoding-Flags: categorize-labels`). The expected JSON
//! is the response's `data` without `stats`, or `{"status": N, "error": …}`
//! for a non-200 answer. `## get /path?query` snapshots any other endpoint's
//! whole JSON body.
//!
//! Expected outputs change only through the explicit bless step:
//! `CAIRN_BLESS=1 cargo test --test e2e golden` rewrites them; review the
//! diff before committing.

use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::harness::Cairn;

fn golden_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/logql")
}

struct Case {
    kind: String,
    query: String,
    expected: String,
}

/// Splits a golden file into its header (comment lines before the first
/// case) and cases.
fn parse_file(text: &str) -> (String, Vec<Case>) {
    let mut header = String::new();
    let mut cases: Vec<Case> = Vec::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("## ") {
            let (kind, query) = rest.split_once(' ').unwrap_or((rest, ""));
            cases.push(Case { kind: kind.to_string(), query: query.to_string(), expected: String::new() });
        } else if let Some(c) = cases.last_mut() {
            c.expected.push_str(line);
            c.expected.push('\n');
        } else {
            header.push_str(line);
            header.push('\n');
        }
    }
    for c in &mut cases {
        c.expected = c.expected.trim().to_string();
    }
    (header, cases)
}

fn run_case(c: &Cairn, case: &Case) -> String {
    let (kind, overrides) = case.kind.split_once('?').unwrap_or((case.kind.as_str(), ""));
    let (kind, categorize) = match kind.strip_suffix("+categorize") {
        Some(k) => (k, true),
        None => (kind, false),
    };
    if kind == "get" {
        // `## get /path?query`: the whole response body (JSON, or the
        // status and text of an error).
        // A literal `+` in a query string means a space; cases mean `+`.
        let path = case.query.replace('+', "%2B");
        let resp = reqwest::blocking::Client::new().get(format!("{}{path}", c.url)).send().unwrap();
        let status = resp.status().as_u16();
        let body = resp.text().unwrap();
        let v: Value = match (status, serde_json::from_str::<Value>(&body)) {
            (200, Ok(v)) => v,
            _ => serde_json::json!({"status": status, "error": body.trim()}),
        };
        return serde_json::to_string_pretty(&v).unwrap();
    }
    let mut params: Vec<(String, String)> = match kind {
        "range" => vec![
            ("start".into(), "1700000000".into()),
            ("end".into(), "1700000060".into()),
            ("step".into(), "10s".into()),
            ("limit".into(), "1000".into()),
            ("direction".into(), "forward".into()),
        ],
        "instant" => vec![("time".into(), "1700000060".into())],
        other => panic!("unknown case kind {other:?} for {}", case.query),
    };
    for kv in overrides.split('&').filter(|s| !s.is_empty()) {
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        params.retain(|(pk, _)| pk != k);
        params.push((k.to_string(), v.to_string()));
    }
    params.push(("query".into(), case.query.clone()));
    let path = if kind == "range" { "/loki/api/v1/query_range" } else { "/loki/api/v1/query" };
    let mut req = reqwest::blocking::Client::new().get(format!("{}{path}", c.url)).query(&params);
    if categorize {
        req = req.header("X-Loki-Response-Encoding-Flags", "categorize-labels");
    }
    let resp = req.send().unwrap();
    let status = resp.status().as_u16();
    let body = resp.text().unwrap();
    let v: Value = if status == 200 {
        let mut v: Value = serde_json::from_str(&body).unwrap();
        let mut data = v["data"].take();
        if let Some(o) = data.as_object_mut() {
            o.remove("stats");
        }
        data
    } else {
        serde_json::json!({"status": status, "error": body.trim()})
    };
    serde_json::to_string_pretty(&v).unwrap()
}

#[test]
fn golden_logql() {
    let dir = tempfile::tempdir().unwrap();
    // The data is from November 2023: past Loki's default one-week age limit.
    let cfg = dir.path().join("cairn.toml");
    std::fs::write(&cfg, "[limits]\nlogs_reject_older_than = \"0s\"\n").unwrap();
    let c = Cairn::start(&["serve"], &dir.path().join("data"), &["--config", cfg.to_str().unwrap()]);
    let data = std::fs::read(golden_dir().join("data.json")).unwrap();
    let (s, b) = c.post_raw("/loki/api/v1/push", &[("Content-Type", "application/json")], data);
    assert_eq!(s, 204, "loading data.json: {b}");
    let bless = std::env::var("CAIRN_BLESS").is_ok_and(|v| v == "1");
    let mut files: Vec<PathBuf> = std::fs::read_dir(golden_dir())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "txt"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no golden files in {}", golden_dir().display());
    let mut failures = Vec::new();
    let mut total = 0;
    for f in &files {
        let text = std::fs::read_to_string(f).unwrap();
        let (header, cases) = parse_file(&text);
        let mut out = header;
        for case in &cases {
            total += 1;
            let got = run_case(&c, case);
            if !bless && got != case.expected {
                failures.push(format!(
                    "{}: ## {} {}\n--- expected\n{}\n--- got\n{}",
                    f.file_name().unwrap().to_string_lossy(),
                    case.kind,
                    case.query,
                    case.expected,
                    got
                ));
            }
            out.push_str(&format!("## {} {}\n{}\n\n", case.kind, case.query, got));
        }
        if bless {
            std::fs::write(f, out.trim_end().to_string() + "\n").unwrap();
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {total} golden cases differ (CAIRN_BLESS=1 rewrites them):\n\n{}",
        failures.len(),
        failures.join("\n\n")
    );
    eprintln!("{total} golden LogQL cases passed");
}
