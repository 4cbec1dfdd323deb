//! Parser for Prometheus's `promqltest` script format (the `.test` files of
//! `promql/promqltest/testdata/`), as described in
//! `../shared/conformance/promql/README.md`.
//!
//! The parser never panics: a line it cannot read becomes a [`Script`] error
//! for that command only, so the rest of the file still runs. Native
//! histogram literals (`{{…}}`, with `xN` repeats and `{{A}}+{{B}}xN`
//! series) are read into [`Histogram`]s.

use cairn_wire::histogram::ResetHint;
use cairn_wire::{Histogram, Labels, METRIC_NAME, STALE_NAN_BITS};

/// One value of the notation: a float or a native histogram (with whether
/// its counter-reset hint was spelled out, which makes it part of the
/// comparison).
#[derive(Debug, Clone)]
pub enum Val {
    F(f64),
    H(Box<Histogram>, bool),
}

/// One command of a script, with the 1-based line it starts on.
#[derive(Debug)]
pub enum Command {
    /// `load <interval>`: float and histogram series to append. `skipped`
    /// names series that could not be loaded, with the reason.
    Load {
        series: Vec<(Labels, Vec<(i64, f64)>)>,
        hists: Vec<(Labels, Vec<(i64, Histogram)>)>,
        /// Start timestamps (`@st` lines): (sample time, start time).
        sts: Vec<(Labels, Vec<(i64, i64)>)>,
        skipped: Vec<String>,
    },
    /// `clear`.
    Clear,
    /// An `eval…` command.
    Eval(Box<Eval>),
}

/// What kind of query an `eval` runs.
#[derive(Debug, Clone, Copy)]
pub enum EvalKind {
    /// `eval instant at <t>`.
    Instant { at: i64 },
    /// `eval range from <start> to <end> step <step>`.
    Range { start: i64, end: i64, step: i64 },
}

/// How a failure message must look.
#[derive(Debug, Clone)]
pub enum FailExpect {
    /// Any error.
    Any,
    /// Exactly this text.
    Msg(String),
    /// Matching this regular expression.
    Regex(String),
}

/// One expected output series: labels and one optional value per step
/// (a single value for instant vectors).
#[derive(Debug, Clone)]
pub struct ExpSeries {
    pub labels: Labels,
    pub values: Vec<Option<Val>>,
}

/// One `eval` case.
#[derive(Debug)]
pub struct Eval {
    /// 1-based line of the `eval` command: the case's identity.
    pub line: usize,
    pub kind: EvalKind,
    pub expr: String,
    pub fail: Option<FailExpect>,
    /// `expect warn` / `eval_warn` lines (warnings must be produced).
    pub expect_warn: bool,
    /// `expect info` / `eval_info` lines (info annotations must be produced).
    pub expect_info: bool,
    /// `expect no_warn`: no warning may be produced.
    pub expect_no_warn: bool,
    /// `expect no_info`: no info annotation may be produced.
    pub expect_no_info: bool,
    pub ordered: bool,
    /// `expect range vector from … to … step …`.
    pub range_vector: Option<(i64, i64, i64)>,
    /// `expect string "…"`.
    pub string: Option<String>,
    /// A bare number result line: the result is a scalar.
    pub scalar: Option<f64>,
    pub series: Vec<ExpSeries>,
    /// Something in the case this runner cannot check (e.g. a histogram
    /// literal in the expected output), or a malformed line.
    pub unreadable: Option<String>,
}

/// Parses a whole script into commands with their line numbers.
pub fn parse_script(text: &str) -> Vec<(usize, Result<Command, String>)> {
    let lines: Vec<&str> = text.lines().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        let l = lines[i].trim();
        if l.is_empty() || l.starts_with('#') {
            i += 1;
            continue;
        }
        let start = i;
        i += 1;
        let mut body = Vec::new();
        if l == "clear" {
            // `clear` has no body: the next line may start a command.
            out.push((start + 1, Ok(Command::Clear)));
            continue;
        }
        // As in Prometheus's harness, a comment line counts as blank and
        // ends the command.
        while i < lines.len() && !lines[i].trim().is_empty() && !lines[i].trim().starts_with('#') {
            body.push((i + 1, lines[i].trim()));
            i += 1;
        }
        out.push((start + 1, parse_command(start + 1, l, &body)));
    }
    out
}

fn parse_command(line: usize, head: &str, body: &[(usize, &str)]) -> Result<Command, String> {
    let (word, rest) = split_word(head);
    match word {
        "clear" => Ok(Command::Clear),
        "load" | "load_with_nhcb" => parse_load(word, rest, body),
        "eval" | "eval_fail" | "eval_warn" | "eval_info" | "eval_ordered" => {
            parse_eval(line, word, rest, body).map(|e| Command::Eval(Box::new(e)))
        }
        other => Err(format!("unknown command {other:?}")),
    }
}

fn split_word(s: &str) -> (&str, &str) {
    let s = s.trim_start();
    match s.find(char::is_whitespace) {
        Some(i) => (&s[..i], s[i..].trim_start()),
        None => (s, ""),
    }
}

/// Parses a test-file time or duration (`50m`, `1m30s`, `0`, `-1m`) in ms.
pub fn parse_dur(s: &str) -> Result<i64, String> {
    if s == "0" {
        return Ok(0);
    }
    if let Some(rest) = s.strip_prefix('-') {
        return parse_dur(rest).map(|v| -v);
    }
    cairn_wire::time::parse_duration_ms(s).map_err(|e| format!("bad duration {s:?}: {e}"))
}

fn parse_load(word: &str, rest: &str, body: &[(usize, &str)]) -> Result<Command, String> {
    let interval = parse_dur(rest.trim())?;
    let mut series = Vec::new();
    let mut hists = Vec::new();
    let mut sts = Vec::new();
    let skipped = Vec::new();
    for &(ln, b) in body {
        let (desc, vals) = split_series(b).map_err(|e| format!("line {ln}: {e}"))?;
        if let Some(desc) = desc.strip_suffix("@st") {
            let labels = parse_series_desc(desc).map_err(|e| format!("line {ln}: {e}"))?;
            let offsets = expand_durations(vals).map_err(|e| format!("line {ln}: {e}"))?;
            let pairs = offsets
                .into_iter()
                .enumerate()
                .filter_map(|(k, o)| o.map(|o| (k as i64 * interval, k as i64 * interval + o)))
                .collect();
            sts.push((labels, pairs));
            continue;
        }
        let labels = parse_series_desc(desc).map_err(|e| format!("line {ln}: {e}"))?;
        let values = expand_values(vals).map_err(|e| format!("line {ln}: {e}"))?;
        let (mut fs, mut hs) = (Vec::new(), Vec::new());
        for (k, v) in values.into_iter().enumerate() {
            match v {
                Some(Val::F(f)) => fs.push((k as i64 * interval, f)),
                Some(Val::H(h, _)) => hs.push((k as i64 * interval, *h)),
                None => {}
            }
        }
        if !fs.is_empty() || hs.is_empty() {
            series.push((labels.clone(), fs));
        }
        if !hs.is_empty() {
            hists.push((labels, hs));
        }
    }
    if word == "load_with_nhcb" {
        hists.extend(classic_to_nhcb(&series));
    }
    Ok(Command::Load { series, hists, sts, skipped })
}

/// The offsets of an `@st` line: `_`, `_xN`, `<dur>`, `<dur>xN` (N+1
/// times), `<dur>+<dur>xN` / `<dur>-<dur>xN` (N+1 values stepping by the
/// second duration); durations may carry a sign.
fn expand_durations(vals: &str) -> Result<Vec<Option<i64>>, String> {
    let mut out = Vec::new();
    for tok in vals.split_whitespace() {
        let (body, count) = match tok.rsplit_once('x') {
            Some((b, n)) => (b, Some(n.parse::<usize>().map_err(|e| format!("bad count in {tok:?}: {e}"))?)),
            None => (tok, None),
        };
        if body == "_" {
            out.extend(std::iter::repeat_n(None, count.unwrap_or(0) + 1));
            continue;
        }
        // A step operator is a sign after the first character.
        let split = body.char_indices().skip(1).find(|&(_, c)| c == '+' || c == '-').map(|(i, _)| i);
        let (start, step) = match split {
            Some(i) => {
                let step = parse_signed_dur(&body[i + 1..])?;
                (parse_signed_dur(&body[..i])?, if &body[i..=i] == "-" { -step } else { step })
            }
            None => (parse_signed_dur(body)?, 0),
        };
        for k in 0..=count.unwrap_or(0) {
            out.push(Some(start + step * k as i64));
        }
    }
    Ok(out)
}

fn parse_signed_dur(s: &str) -> Result<i64, String> {
    match s.strip_prefix('+') {
        Some(rest) => parse_dur(rest),
        None => parse_dur(s),
    }
}

/// `load_with_nhcb`: besides the float series, each classic histogram
/// (`<name>_bucket` series with `le`, optionally `<name>_sum` and
/// `<name>_count`) is also loaded as a native histogram with custom buckets
/// named `<name>`, as Prometheus's test loader does.
fn classic_to_nhcb(series: &[(Labels, Vec<(i64, f64)>)]) -> Vec<(Labels, Vec<(i64, Histogram)>)> {
    use std::collections::BTreeMap;
    // Family labels (name without suffix, no `le`) → t → (le → count), sum, count.
    type Family = BTreeMap<i64, (Vec<(f64, f64)>, Option<f64>, Option<f64>)>;
    let mut fams: BTreeMap<Labels, Family> = BTreeMap::new();
    for (ls, samples) in series {
        let Some(name) = ls.get(METRIC_NAME) else { continue };
        let (base, kind) = if let Some(b) = name.strip_suffix("_bucket") {
            (b, 0)
        } else if let Some(b) = name.strip_suffix("_sum") {
            (b, 1)
        } else if let Some(b) = name.strip_suffix("_count") {
            (b, 2)
        } else {
            continue;
        };
        let le = match (kind, ls.get("le")) {
            (0, Some(le)) => match parse_num(le) {
                Ok(v) => Some(v),
                Err(_) => continue,
            },
            (0, None) => continue,
            _ => None,
        };
        let pairs: Vec<(String, String)> = ls
            .without("le")
            .iter()
            .map(|l| (l.name.to_string(), if l.name == METRIC_NAME { base.to_string() } else { l.value.to_string() }))
            .collect();
        let Ok(key) = Labels::from_pairs(pairs) else { continue };
        let fam = fams.entry(key).or_default();
        for &(t, v) in samples {
            let e = fam.entry(t).or_default();
            match (kind, le) {
                (0, Some(le)) => e.0.push((le, v)),
                (1, _) => e.1 = Some(v),
                _ => e.2 = Some(v),
            }
        }
    }
    let mut out = Vec::new();
    for (labels, by_t) in fams {
        let mut hs = Vec::new();
        for (t, (mut buckets, sum, count)) in by_t {
            if buckets.is_empty() {
                continue;
            }
            buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
            let mut h = Histogram { schema: -53, ..Histogram::default() };
            let mut prev = 0.0;
            for (i, &(le, c)) in buckets.iter().enumerate() {
                if le.is_finite() {
                    h.custom_values.push(le);
                }
                if c - prev != 0.0 {
                    h.positive.push((i as i32, c - prev));
                }
                prev = c;
            }
            h.count = count.unwrap_or(prev);
            h.sum = sum.unwrap_or(0.0);
            hs.push((t, h));
        }
        if !hs.is_empty() {
            out.push((labels, hs));
        }
    }
    out
}

fn parse_eval(line: usize, word: &str, rest: &str, body: &[(usize, &str)]) -> Result<Eval, String> {
    let (kind_word, rest) = split_word(rest);
    let (kind, expr) = match kind_word {
        "instant" => {
            let (at_word, rest) = split_word(rest);
            if at_word != "at" {
                return Err(format!("expected `at`, found {at_word:?}"));
            }
            let (t, expr) = split_word(rest);
            (EvalKind::Instant { at: parse_dur(t)? }, expr)
        }
        "range" => {
            let mut rest = rest;
            let mut vals = [0i64; 3];
            for (i, kw) in ["from", "to", "step"].iter().enumerate() {
                let (w, r) = split_word(rest);
                if w != *kw {
                    return Err(format!("expected `{kw}`, found {w:?}"));
                }
                let (v, r) = split_word(r);
                vals[i] = parse_dur(v)?;
                rest = r;
            }
            (EvalKind::Range { start: vals[0], end: vals[1], step: vals[2] }, rest)
        }
        other => return Err(format!("expected `instant` or `range`, found {other:?}")),
    };
    let mut e = Eval {
        line,
        kind,
        expr: expr.to_string(),
        fail: (word == "eval_fail").then_some(FailExpect::Any),
        expect_warn: word == "eval_warn",
        expect_info: word == "eval_info",
        expect_no_warn: false,
        expect_no_info: false,
        ordered: word == "eval_ordered",
        range_vector: None,
        string: None,
        scalar: None,
        series: Vec::new(),
        unreadable: None,
    };
    for &(ln, b) in body {
        if let Err(msg) = parse_eval_body_line(&mut e, b) {
            e.unreadable.get_or_insert(format!("line {ln}: {msg}"));
        }
    }
    Ok(e)
}

fn parse_eval_body_line(e: &mut Eval, b: &str) -> Result<(), String> {
    if let Some(r) = b.strip_prefix("expected_fail_message") {
        e.fail = Some(FailExpect::Msg(r.trim().to_string()));
        return Ok(());
    }
    if let Some(r) = b.strip_prefix("expected_fail_regexp") {
        e.fail = Some(FailExpect::Regex(r.trim().to_string()));
        return Ok(());
    }
    if let Some(r) = b.strip_prefix("expect ") {
        let (w, r) = split_word(r);
        match w {
            "fail" => {
                e.fail = Some(if let Some(m) = r.strip_prefix("msg:") {
                    FailExpect::Msg(m.trim().to_string())
                } else if let Some(m) = r.strip_prefix("regex:") {
                    FailExpect::Regex(m.trim().to_string())
                } else {
                    FailExpect::Any
                })
            }
            "warn" => e.expect_warn = true,
            "info" => e.expect_info = true,
            "no_warn" => e.expect_no_warn = true,
            "no_info" => e.expect_no_info = true,
            "ordered" => e.ordered = true,
            "range" => {
                let (v, r) = split_word(r);
                if v != "vector" {
                    return Err(format!("unknown expect range {v:?}"));
                }
                let mut rest = r;
                let mut vals = [0i64; 3];
                for (i, kw) in ["from", "to", "step"].iter().enumerate() {
                    let (w, r) = split_word(rest);
                    if w != *kw {
                        return Err(format!("expected `{kw}`, found {w:?}"));
                    }
                    let (v, r) = split_word(r);
                    vals[i] = parse_dur(v)?;
                    rest = r;
                }
                e.range_vector = Some((vals[0], vals[1], vals[2]));
            }
            "string" => {
                let r = r.trim();
                let unq = if r.len() >= 2 && (r.starts_with('"') && r.ends_with('"')) {
                    unescape_go(&r[1..r.len() - 1])?
                } else if r.len() >= 2 && r.starts_with('`') && r.ends_with('`') {
                    r[1..r.len() - 1].to_string()
                } else {
                    return Err(format!("bad expect string {r:?}"));
                };
                e.string = Some(unq);
            }
            other => return Err(format!("unknown expect {other:?}")),
        }
        return Ok(());
    }
    // A bare number: scalar result.
    if let Ok(v) = parse_num(b) {
        e.scalar = Some(v);
        return Ok(());
    }
    let (desc, vals) = split_series(b)?;
    let labels = parse_series_desc(desc)?;
    let values = expand_values(vals)?;
    e.series.push(ExpSeries { labels, values });
    Ok(())
}

fn unescape_go(s: &str) -> Result<String, String> {
    let mut out = String::with_capacity(s.len());
    let mut it = s.chars();
    while let Some(c) = it.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match it.next() {
            Some('n') => out.push('\n'),
            Some('t') => out.push('\t'),
            Some('\\') => out.push('\\'),
            Some('"') => out.push('"'),
            Some(o) => return Err(format!("unsupported escape \\{o}")),
            None => return Err("trailing backslash".into()),
        }
    }
    Ok(out)
}

/// Splits `name{labels} values…` at the end of the series descriptor.
fn split_series(b: &str) -> Result<(&str, &str), String> {
    let bytes = b.as_bytes();
    let mut i = 0;
    while i < bytes.len() && (bytes[i].is_ascii_alphanumeric() || bytes[i] == b'_' || bytes[i] == b':') {
        i += 1;
    }
    if i < bytes.len() && bytes[i] == b'{' {
        let mut in_q = false;
        let mut esc = false;
        let mut j = i + 1;
        loop {
            let Some(&c) = bytes.get(j) else {
                return Err(format!("unterminated label set in {b:?}"));
            };
            if in_q {
                if esc {
                    esc = false;
                } else if c == b'\\' {
                    esc = true;
                } else if c == b'"' {
                    in_q = false;
                }
            } else if c == b'"' {
                in_q = true;
            } else if c == b'}' {
                break;
            }
            j += 1;
        }
        i = j + 1;
    }
    // `@st` suffix for start timestamps.
    if b[i..].starts_with("@st") {
        i += 3;
    }
    if i == 0 {
        return Err(format!("no series in {b:?}"));
    }
    Ok((&b[..i], b[i..].trim()))
}

/// `name{a="b"}` / `{a="b"}` / `name` → labels.
pub fn parse_series_desc(desc: &str) -> Result<Labels, String> {
    let (name, set) = match desc.find('{') {
        Some(i) => (&desc[..i], &desc[i..]),
        None => (desc, "{}"),
    };
    let ls = Labels::parse(set).map_err(|e| e.to_string())?;
    if name.is_empty() {
        return Ok(ls);
    }
    if ls.get(METRIC_NAME).is_some() {
        return Err(format!("metric name given twice in {desc:?}"));
    }
    let pairs =
        ls.iter().map(|l| (l.name.clone(), l.value.clone())).chain([(METRIC_NAME.to_string(), name.to_string())]);
    Labels::from_pairs(pairs).map_err(|e| e.to_string())
}

/// Parses a float as the test files write them (`1e3`, `-Inf`, `nan`); like
/// Go's `ParseFloat`, `0x59` is not a number (in values it means 60 zeros).
pub fn parse_num(s: &str) -> Result<f64, String> {
    let l = s.to_ascii_lowercase();
    let (neg, body) = match l.as_bytes().first() {
        Some(b'-') => (true, &l[1..]),
        Some(b'+') => (false, &l[1..]),
        _ => (false, l.as_str()),
    };
    let v = match body {
        "inf" => f64::INFINITY,
        "nan" => f64::NAN,
        _ if body.starts_with(|c: char| c.is_ascii_digit() || c == '.') => {
            body.parse::<f64>().map_err(|_| format!("bad number {s:?}"))?
        }
        _ => return Err(format!("bad number {s:?}")),
    };
    Ok(if neg { -v } else { v })
}

/// Splits at whitespace outside `{{…}}`.
fn tokens(s: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let b = s.as_bytes();
    let (mut i, mut depth, mut start) = (0, 0usize, None::<usize>);
    while i < b.len() {
        if b[i..].starts_with(b"{{") {
            depth += 1;
            start.get_or_insert(i);
            i += 2;
            continue;
        }
        if depth > 0 && b[i..].starts_with(b"}}") {
            depth -= 1;
            i += 2;
            continue;
        }
        if depth == 0 && b[i].is_ascii_whitespace() {
            if let Some(st) = start.take() {
                out.push(&s[st..i]);
            }
        } else {
            start.get_or_insert(i);
        }
        i += 1;
    }
    if let Some(st) = start {
        out.push(&s[st..]);
    }
    out
}

/// Parses the inside of `{{…}}`.
pub fn parse_histogram(body: &str) -> Result<(Histogram, bool), String> {
    let mut h = Histogram::default();
    let mut hint_given = false;
    let (mut pos, mut neg): (Vec<f64>, Vec<f64>) = (Vec::new(), Vec::new());
    let (mut off, mut noff) = (0i32, 0i32);
    let mut rest = body.trim();
    while !rest.is_empty() {
        let (key, after) = rest.split_once(':').ok_or_else(|| format!("bad histogram field in {body:?}"))?;
        let key = key.trim();
        let after = after.trim_start();
        let (val, next) = if after.starts_with('[') {
            let end = after.find(']').ok_or_else(|| format!("unterminated list in {body:?}"))?;
            (&after[..=end], &after[end + 1..])
        } else {
            match after.find(char::is_whitespace) {
                Some(i) => (&after[..i], &after[i..]),
                None => (after, ""),
            }
        };
        rest = next.trim_start();
        let list = |v: &str| -> Result<Vec<f64>, String> {
            v.trim_start_matches('[').trim_end_matches(']').split_whitespace().map(parse_num).collect()
        };
        let int = |v: &str| v.parse::<i32>().map_err(|_| format!("bad integer {v:?}"));
        match key {
            "schema" => h.schema = int(val)?,
            "sum" => h.sum = parse_num(val)?,
            "count" => h.count = parse_num(val)?,
            "z_bucket" => h.zero_count = parse_num(val)?,
            "z_bucket_w" => h.zero_threshold = parse_num(val)?,
            "buckets" => pos = list(val)?,
            "n_buckets" => neg = list(val)?,
            "offset" => off = int(val)?,
            "n_offset" => noff = int(val)?,
            "custom_values" => h.custom_values = list(val)?,
            "counter_reset_hint" => {
                hint_given = true;
                h.reset_hint = match val {
                    "unknown" => ResetHint::Unknown,
                    "reset" => ResetHint::Reset,
                    "not_reset" => ResetHint::NotReset,
                    "gauge" => ResetHint::Gauge,
                    o => return Err(format!("bad counter_reset_hint {o:?}")),
                }
            }
            o => return Err(format!("unknown histogram field {o:?}")),
        }
    }
    h.positive = pos.into_iter().enumerate().map(|(k, c)| (off + k as i32, c)).collect();
    h.negative = neg.into_iter().enumerate().map(|(k, c)| (noff + k as i32, c)).collect();
    Ok((h, hint_given))
}

/// `{{A}}`, `{{A}}xN`, `{{A}}+{{B}}xN`, `{{A}}-{{B}}xN`.
fn expand_histograms(tok: &str, out: &mut Vec<Option<Val>>) -> Result<(), String> {
    let end = tok.find("}}").ok_or_else(|| format!("unterminated histogram {tok:?}"))?;
    let (a, hint) = parse_histogram(&tok[2..end])?;
    let rest = &tok[end + 2..];
    if rest.is_empty() {
        out.push(Some(Val::H(Box::new(a), hint)));
        return Ok(());
    }
    if let Some(n) = rest.strip_prefix('x') {
        let n: usize = n.parse().map_err(|_| format!("bad repeat in {tok:?}"))?;
        for _ in 0..=n {
            out.push(Some(Val::H(Box::new(a.clone()), hint)));
        }
        return Ok(());
    }
    let sub = rest.starts_with('-');
    let inner = rest[1..].strip_prefix("{{").ok_or_else(|| format!("bad histogram series {tok:?}"))?;
    let e2 = inner.find("}}").ok_or_else(|| format!("unterminated histogram {tok:?}"))?;
    let (b, _) = parse_histogram(&inner[..e2])?;
    let n: usize = inner[e2 + 2..]
        .strip_prefix('x')
        .and_then(|n| n.parse().ok())
        .ok_or_else(|| format!("bad repeat in {tok:?}"))?;
    let mut cur = a;
    for k in 0..=n {
        if k > 0 {
            let r = if sub { cur.sub(&b) } else { cur.add(&b) };
            r.map_err(|e| format!("{tok:?}: {e}"))?;
        }
        out.push(Some(Val::H(Box::new(cur.clone()), hint)));
    }
    Ok(())
}

/// Expands the value notation (`1 _ 3 stale 0+10x3 _x2 5x2 {{…}}x3`).
pub fn expand_values(s: &str) -> Result<Vec<Option<Val>>, String> {
    let mut out = Vec::new();
    expand_into(s, &mut out)?;
    Ok(out)
}

fn expand_into(s: &str, hout: &mut Vec<Option<Val>>) -> Result<(), String> {
    for tok in tokens(s) {
        if tok.starts_with("{{") {
            expand_histograms(tok, hout)?;
            continue;
        }
        let mut out: Vec<Option<f64>> = Vec::new();
        expand_float(tok, &mut out)?;
        hout.extend(out.into_iter().map(|v| v.map(Val::F)));
    }
    Ok(())
}

fn expand_float(tok: &str, out: &mut Vec<Option<f64>>) -> Result<(), String> {
    {
        if tok == "_" {
            out.push(None);
        } else if let Some(n) = tok.strip_prefix("_x") {
            let n: usize = n.parse().map_err(|_| format!("bad repeat in {tok:?}"))?;
            out.extend(std::iter::repeat_n(None, n));
        } else if tok == "stale" {
            out.push(Some(f64::from_bits(STALE_NAN_BITS)));
        } else if let Ok(v) = parse_num(tok) {
            out.push(Some(v));
        } else if let Some(xi) = tok.rfind('x') {
            let n: usize = tok[xi + 1..].parse().map_err(|_| format!("bad repeat in {tok:?}"))?;
            let head = &tok[..xi];
            // Find the +/- between start and step: not at 0, not after an exponent `e`.
            let hb = head.as_bytes();
            let split = (1..hb.len()).find(|&k| (hb[k] == b'+' || hb[k] == b'-') && !matches!(hb[k - 1], b'e' | b'E'));
            let (a, b) = match split {
                Some(k) => {
                    let a = parse_num(&head[..k])?;
                    let b = parse_num(&head[k + 1..])?;
                    (a, if hb[k] == b'-' { -b } else { b })
                }
                None => (parse_num(head)?, 0.0),
            };
            for k in 0..=n {
                out.push(Some(a + b * k as f64));
            }
        } else {
            return Err(format!("bad value {tok:?}"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expanding_notation() {
        let f = |s: &str| -> Vec<Option<f64>> {
            expand_values(s)
                .unwrap()
                .into_iter()
                .map(|v| match v {
                    Some(Val::F(f)) => Some(f),
                    Some(Val::H(..)) => panic!("histogram"),
                    None => None,
                })
                .collect()
        };
        let expand_values = |s: &str| -> Result<Vec<Option<f64>>, String> { Ok(f(s)) };
        let v = expand_values("1 _ 0+10x2 1-2x1 _x2 3x1 stale -Inf").unwrap();
        assert_eq!(v.len(), 13);
        assert_eq!(v[2..5], [Some(0.0), Some(10.0), Some(20.0)]);
        assert_eq!(v[5..7], [Some(1.0), Some(-1.0)]);
        assert_eq!(v[7..9], [None, None]);
        assert!(v[11].is_some_and(cairn_wire::is_stale_nan));
        assert_eq!(v[12], Some(f64::NEG_INFINITY));
        assert_eq!(expand_values("1e+3+1x1").unwrap(), [Some(1000.0), Some(1001.0)]);
        assert_eq!(expand_values("-1+1x1").unwrap(), [Some(-1.0), Some(0.0)]);
        assert_eq!(expand_values("0x2").unwrap(), [Some(0.0); 3]);
    }

    #[test]
    fn histogram_notation() {
        let v =
            expand_values("{{schema:0 sum:5 count:4 buckets:[1 2 1]}}+{{sum:2 count:1 buckets:[1] offset:1}}x2 _ 3")
                .unwrap();
        assert_eq!(v.len(), 5);
        let Some(Val::H(h, false)) = &v[2] else { panic!("{:?}", v[2]) };
        assert_eq!(h.count, 6.0);
        assert_eq!(h.positive, vec![(0, 1.0), (1, 4.0), (2, 1.0)]);
        assert!(matches!(v[4], Some(Val::F(3.0))));
        let (h, hint) = parse_histogram("schema:-53 custom_values:[-2 3] counter_reset_hint:gauge").unwrap();
        assert_eq!(h.custom_values, vec![-2.0, 3.0]);
        assert!(hint && h.reset_hint == ResetHint::Gauge);
    }

    #[test]
    fn series_descriptors() {
        let (d, v) = split_series(r#"m{a="x y}", b="2"}  1 2"#).unwrap();
        assert_eq!(v, "1 2");
        assert_eq!(parse_series_desc(d).unwrap().get("a"), Some("x y}"));
        assert_eq!(parse_series_desc("{}").unwrap(), Labels::empty());
    }
}
