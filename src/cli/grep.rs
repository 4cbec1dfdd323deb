//! `cairn grep PATTERN [SELECTOR]`: grep for logs.
//!
//! The search is LogQL: the selector (or `-l` labels, or, with neither, a
//! few disjoint selectors that together cover every stream) with the
//! pattern as a line filter (`|~`, `|=`, `!~`, `!=`) right after it. That
//! text runs through [`Backend::log_query`] forward in time, in windows
//! and pages of at most [`BATCH`] lines, so the lines printed are exactly
//! those of the equivalent `query_range` with `direction=forward`, oldest
//! first. `--logql` prints the query instead of running it.
//!
//! Context lines (`-A/-B/-C`) come from the same stream: for each match,
//! one backward and one forward query on the stream's exact label set
//! around the match's timestamp. `-c` counts with `count_over_time` over
//! the whole range.

use std::collections::HashSet;
use std::io::Write;
use std::rc::Rc;

use cairn_query::logql::{self, Expr};
use clap::Args;

use super::backend::{self, Backend, Dir, LogLine, Pairs};
use super::output::{self, LineFormat, Progress};
use super::{CliError, CliResult, ColorChoice, ConnArgs, HOUR_NS, RangeArgs, caret, check_interrupt};

/// Lines per request (the server's default `query.max_entries_limit`).
pub const BATCH: usize = 5000;
/// Windows a long range is searched in (progress and Ctrl-C granularity).
const WINDOWS: i64 = 16;

/// `cairn grep`.
#[derive(Args, Debug)]
#[command(after_help = "\
Examples:
  cairn grep -i 'timed? out'                      all streams, last hour
  cairn grep -F ZQX9rare '{job=\"bench\"}' --since 1d
  cairn grep -C 3 panic -l namespace=prod --data-dir /var/lib/cairn
  cairn grep -c error '{job=\"nginx\"}'            matching lines per stream

Exit status: 0 if a line matched, 1 if none did, 2 on error.")]
pub struct GrepArgs {
    /// PATTERN, then an optional LogQL SELECTOR (`{job="x"}`, a pipeline
    /// after it is allowed). With -e, only the SELECTOR.
    #[arg(value_name = "PATTERN [SELECTOR]", num_args = 0..=2)]
    pub args: Vec<String>,
    /// A pattern (repeatable: lines matching any of them).
    #[arg(short = 'e', long = "regexp", value_name = "PATTERN")]
    pub patterns: Vec<String>,
    /// Patterns are fixed strings, not regular expressions.
    #[arg(short = 'F', long)]
    pub fixed_strings: bool,
    /// Ignore case.
    #[arg(short = 'i', long)]
    pub ignore_case: bool,
    /// Print the lines that do NOT match.
    #[arg(short = 'v', long)]
    pub invert_match: bool,
    /// Match whole words only.
    #[arg(short = 'w', long)]
    pub word_regexp: bool,
    /// Only streams with this label (`key=value`, `key!=value`,
    /// `key=~regex`, `key!~regex`); repeatable, combined with the selector.
    #[arg(short = 'l', long = "label", value_name = "KEY=VALUE")]
    pub labels: Vec<String>,
    /// Lines of context after each match (from the same stream).
    #[arg(short = 'A', long, value_name = "N")]
    pub after_context: Option<usize>,
    /// Lines of context before each match (from the same stream).
    #[arg(short = 'B', long, value_name = "N")]
    pub before_context: Option<usize>,
    /// Lines of context before and after each match.
    #[arg(short = 'C', long, value_name = "N")]
    pub context: Option<usize>,
    /// Print the number of matching lines per stream.
    #[arg(short = 'c', long)]
    pub count: bool,
    /// Stop after N matching lines.
    #[arg(short = 'm', long, value_name = "N")]
    pub max_count: Option<usize>,
    /// Print nothing; exit 0 at the first match.
    #[arg(short = 'q', long)]
    pub quiet: bool,
    /// One JSON object per line.
    #[arg(long)]
    pub json: bool,
    /// Leave the labels out: `timestamp line`.
    #[arg(long)]
    pub no_labels: bool,
    /// Print only the log line.
    #[arg(long)]
    pub only_line: bool,
    /// Colour matches (auto: when stdout is a terminal).
    #[arg(long, value_enum, default_value_t = ColorChoice::Auto, value_name = "WHEN")]
    pub color: ColorChoice,
    /// Print the LogQL query (one per line) and exit.
    #[arg(long)]
    pub logql: bool,
    /// No progress line on stderr.
    #[arg(long)]
    pub no_progress: bool,
    #[command(flatten)]
    pub range: RangeArgs,
    #[command(flatten)]
    pub conn: ConnArgs,
}

/// Characters RE2 and Rust's regex treat as syntax.
fn regex_escape(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        if "\\.+*?()|[]{}^$".contains(c) {
            o.push('\\');
        }
        o.push(c);
    }
    o
}

/// How patterns are read (grep's -F, -i, -v, -w).
#[derive(Debug, Clone, Copy, Default)]
pub struct PatternOpts {
    /// -F
    pub fixed_strings: bool,
    /// -i
    pub ignore_case: bool,
    /// -v
    pub invert_match: bool,
    /// -w
    pub word_regexp: bool,
}

/// The line filter for the patterns (any of them matches), and a regex
/// that finds the matches (for highlighting; none for `-v`).
pub fn line_filter(a: &PatternOpts, patterns: &[String]) -> CliResult<(String, Option<regex::Regex>)> {
    if !a.fixed_strings {
        for p in patterns {
            if let Err(e) = regex::Regex::new(p) {
                return Err(CliError::Usage(format!("invalid pattern {p:?} (use -F for a fixed string):\n{e}")));
            }
        }
    }
    let simple_fixed = a.fixed_strings && !a.ignore_case && !a.word_regexp;
    let re = {
        let alts: Vec<String> =
            patterns.iter().map(|p| if a.fixed_strings { regex_escape(p) } else { p.clone() }).collect();
        let mut r = if alts.len() == 1 { alts[0].clone() } else { format!("(?:{})", alts.join(")|(?:")) };
        if a.word_regexp {
            r = format!("\\b(?:{r})\\b");
        }
        if a.ignore_case {
            r = format!("(?i){r}");
        }
        r
    };
    let filter = if simple_fixed {
        let quoted: Vec<String> = patterns.iter().map(|p| logql::go_quote(p)).collect();
        if a.invert_match {
            quoted.iter().map(|q| format!("!= {q}")).collect::<Vec<_>>().join(" ")
        } else {
            format!("|= {}", quoted.join(" or "))
        }
    } else {
        format!("{} {}", if a.invert_match { "!~" } else { "|~" }, logql::go_quote(&re))
    };
    let hl = if a.invert_match { None } else { regex::Regex::new(&re).ok() };
    Ok((filter, hl))
}

/// Splits `{matchers} pipeline` into the text inside the braces and the rest.
pub fn split_selector(s: &str) -> Option<(&str, &str)> {
    let t = s.trim_start();
    let body = t.strip_prefix('{')?;
    let mut quote: Option<char> = None;
    let mut escaped = false;
    for (i, c) in body.char_indices() {
        match quote {
            Some(q) => {
                if escaped {
                    escaped = false;
                } else if c == '\\' && q == '"' {
                    escaped = true;
                } else if c == q {
                    quote = None;
                }
            }
            None => match c {
                '"' | '`' => quote = Some(c),
                '}' => return Some((&body[..i], &body[i + 1..])),
                _ => {}
            },
        }
    }
    None
}

/// `key=value` (or `!=`, `=~`, `!~`) as a LogQL matcher.
pub fn label_matcher(s: &str) -> CliResult<String> {
    for op in ["!=", "=~", "!~", "="] {
        if let Some(i) = s.find(op) {
            let (k, v) = (s[..i].trim(), &s[i + op.len()..]);
            if !cairn_wire::labels::is_valid_label_name(k) {
                break;
            }
            return Ok(format!("{k}{op}{}", logql::go_quote(v)));
        }
    }
    Err(CliError::Usage(format!("invalid -l {s:?}: expected KEY=VALUE (or KEY!=VALUE, KEY=~REGEX, KEY!~REGEX)")))
}

/// A parsed, validated search: the LogQL queries (disjoint stream sets) and
/// their selectors alone (for stats).
pub struct Plan {
    /// Full queries (selector + filter + pipeline).
    pub queries: Vec<String>,
    /// Just the stream selectors of `queries`.
    pub selectors: Vec<String>,
    /// Highlighting.
    pub highlight: Option<regex::Regex>,
}

pub fn validate_logql(text: &str, what: &str) -> CliResult<()> {
    match logql::parse(text) {
        Ok(Expr::Log(_)) => Ok(()),
        Ok(Expr::Sample(_)) => {
            Err(CliError::Usage(format!("{what} must be a log stream selector, got a metric query")))
        }
        Err(e) => {
            let pos = if e.line == 1 { caret(text, e.col) } else { String::new() };
            Err(CliError::Usage(format!("invalid {what} {text}: {e}{pos}")))
        }
    }
}

/// Covers every stream with disjoint selectors: `{a=~".+"}`, then
/// `{a="", b=~".+"}` for the streams without `a`, and so on.
pub fn covering_selectors(streams: &[Pairs]) -> Vec<String> {
    let mut left: Vec<&Pairs> = streams.iter().filter(|s| !s.is_empty()).collect();
    let mut excluded: Vec<String> = Vec::new();
    let mut out = Vec::new();
    while !left.is_empty() {
        let mut counts: std::collections::BTreeMap<&str, usize> = Default::default();
        for s in &left {
            for (k, _) in s.iter() {
                *counts.entry(k.as_str()).or_default() += 1;
            }
        }
        let Some((best, _)) = counts.iter().max_by_key(|(k, n)| (**n, std::cmp::Reverse(**k))) else { break };
        let best = best.to_string();
        let mut m: Vec<String> = excluded.iter().map(|e| format!("{e}=\"\"")).collect();
        m.push(format!("{best}=~\".+\""));
        out.push(format!("{{{}}}", m.join(", ")));
        left.retain(|s| !s.iter().any(|(k, _)| *k == best));
        excluded.push(best);
    }
    out
}

impl GrepArgs {
    fn pattern_opts(&self) -> PatternOpts {
        PatternOpts {
            fixed_strings: self.fixed_strings,
            ignore_case: self.ignore_case,
            invert_match: self.invert_match,
            word_regexp: self.word_regexp,
        }
    }

    fn patterns_and_selector(&self) -> CliResult<(Vec<String>, Option<String>)> {
        if !self.patterns.is_empty() {
            if self.args.len() > 1 {
                return Err(CliError::Usage(format!(
                    "with -e, give at most one SELECTOR; got {:?} (quote the selector: '{{job=\"x\"}}')",
                    self.args
                )));
            }
            Ok((self.patterns.clone(), self.args.first().cloned()))
        } else {
            match self.args.as_slice() {
                [] => Err(CliError::Usage("no PATTERN given (usage: cairn grep PATTERN [SELECTOR])".into())),
                [p] => Ok((vec![p.clone()], None)),
                [p, s] => Ok((vec![p.clone()], Some(s.clone()))),
                _ => Err(CliError::Usage("too many arguments (usage: cairn grep PATTERN [SELECTOR])".into())),
            }
        }
    }

    /// Builds the LogQL for this search (listing streams when no selector
    /// or label was given).
    pub fn plan(&self, be: &dyn Backend, start: i64, end: i64) -> CliResult<Plan> {
        let (patterns, selector) = self.patterns_and_selector()?;
        let (filter, highlight) = line_filter(&self.pattern_opts(), &patterns)?;
        let mut extra: Vec<String> = Vec::new();
        for l in &self.labels {
            extra.push(label_matcher(l)?);
        }
        let (inner, rest) = match &selector {
            Some(s) => {
                let Some((inner, rest)) = split_selector(s) else {
                    if s.trim_start().starts_with('{') {
                        validate_logql(s, "selector")?;
                    }
                    return Err(CliError::Usage(format!(
                        "invalid selector {s:?}: a LogQL stream selector starts with {{ and ends with }}, e.g. '{{job=\"nginx\"}}' (quote it for the shell)"
                    )));
                };
                if extra.is_empty() {
                    validate_logql(s, "selector")?;
                }
                (inner.trim().to_string(), rest.trim().to_string())
            }
            None => (String::new(), String::new()),
        };
        let mut matchers: Vec<String> = Vec::new();
        if !inner.is_empty() {
            matchers.push(inner);
        }
        matchers.extend(extra);
        let selectors = if matchers.is_empty() {
            covering_selectors(&be.log_series(None, start, end)?)
        } else {
            let s = format!("{{{}}}", matchers.join(", "));
            validate_logql(&format!("{s} {rest}"), "selector")?;
            vec![s]
        };
        let queries = selectors
            .iter()
            .map(|s| {
                if rest.contains("line_format") {
                    format!("{s} {rest} {filter}")
                } else if rest.is_empty() {
                    format!("{s} {filter}")
                } else {
                    format!("{s} {filter} {rest}")
                }
            })
            .collect();
        Ok(Plan { queries, selectors, highlight })
    }
}

/// A match or context line with its stream.
type Item = (Rc<Pairs>, LogLine);

/// Runs `cairn grep`; returns the exit code (0 matched, 1 none).
pub fn run(a: GrepArgs) -> CliResult<i32> {
    let (start, end) = a.range.resolve(HOUR_NS)?;
    // Millisecond bounds, so `-c` (whose range is in ms) covers the same lines.
    let (start, end) = (start.div_euclid(1_000_000) * 1_000_000, end.div_euclid(1_000_000) * 1_000_000);
    let be = backend::open(&a.conn)?;
    let plan = a.plan(be.as_ref(), start, end)?;
    if a.logql {
        for q in &plan.queries {
            println!("{q}");
        }
        return Ok(0);
    }
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::with_capacity(64 << 10, stdout.lock());
    let res = if a.count {
        count(&a, be.as_ref(), &plan, start, end, &mut out)
    } else {
        search(&a, be.as_ref(), &plan, start, end, &mut out)
    };
    let flushed = out.flush();
    let matched = match res {
        Ok(n) => n,
        Err(CliError::Output(e)) if e.kind() == std::io::ErrorKind::BrokenPipe => return Ok(0),
        Err(e) => return Err(e),
    };
    if let Err(e) = flushed {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            return Ok(0);
        }
        return Err(CliError::Output(e));
    }
    if matched > 0 {
        return Ok(0);
    }
    // Nothing matched: say so when there was nothing to search at all.
    let mut entries = 0;
    for s in &plan.selectors {
        entries += be.log_stats(s, start, end)?.entries;
    }
    if entries == 0 && !a.quiet {
        let what = if plan.selectors.is_empty() { "any stream".to_string() } else { plan.selectors.join(" or ") };
        eprintln!(
            "cairn: no log data in range {} → {} for {what} in {} (a longer --since, or --from/--to, may help)",
            output::ts_text(start),
            output::ts_text(end),
            be.describe()
        );
    }
    Ok(1)
}

fn line_format(a: &GrepArgs, plan: &Plan) -> LineFormat {
    LineFormat {
        color: output::use_color(a.color),
        json: a.json,
        no_labels: a.no_labels,
        only_line: a.only_line,
        mark_context: a.context.or(a.after_context).or(a.before_context).is_some(),
        highlight: plan.highlight.clone(),
    }
}

/// `-c`: `count_over_time` of each query over the whole range, evaluated
/// at `end - 1ns` so it covers `[start, end)`.
fn count(a: &GrepArgs, be: &dyn Backend, plan: &Plan, start: i64, end: i64, out: &mut impl Write) -> CliResult<u64> {
    let range_ms = ((end - start) / 1_000_000).max(1);
    let mut rows: Vec<(Pairs, u64)> = Vec::new();
    for q in &plan.queries {
        check_interrupt()?;
        let mq = format!("count_over_time({q} [{range_ms}ms])");
        match be.log_metric(&mq, start, end - 1, None)? {
            backend::Metric::Vector(vs) => {
                for (l, _, v) in vs {
                    let n = v.parse::<f64>().unwrap_or(0.0) as u64;
                    rows.push((l, a.max_count.map_or(n, |m| n.min(m as u64))));
                }
            }
            other => {
                return Err(CliError::Server {
                    url: be.describe(),
                    status: 200,
                    message: format!("count query gave {other:?}"),
                });
            }
        }
    }
    rows.sort();
    let total: u64 = rows.iter().map(|r| r.1).sum();
    if a.quiet {
        return Ok(total);
    }
    if a.no_labels || a.only_line {
        if a.json {
            writeln!(out, "{}", serde_json::json!({"count": total}))?;
        } else {
            writeln!(out, "{total}")?;
        }
        return Ok(total);
    }
    for (l, n) in &rows {
        if a.json {
            let labels: serde_json::Map<_, _> = l.iter().map(|(k, v)| (k.clone(), serde_json::json!(v))).collect();
            writeln!(out, "{}", serde_json::json!({"labels": labels, "count": n}))?;
        } else {
            writeln!(out, "{} {n}", output::labels_text(l))?;
        }
    }
    Ok(total)
}

/// All entries of `q` in `[lo, hi)`, oldest first, page by page: `sink`
/// gets each page (sorted by time, then stream) and returns false to stop.
fn pages(
    be: &dyn Backend,
    q: &str,
    lo: i64,
    hi: i64,
    max: Option<u64>,
    sink: &mut dyn FnMut(Vec<Item>) -> CliResult<bool>,
) -> CliResult<()> {
    let mut lo = lo;
    let mut seen_at_lo: HashSet<(Rc<Pairs>, LogLine)> = HashSet::new();
    let mut batch = BATCH;
    let mut got: u64 = 0;
    loop {
        check_interrupt()?;
        let want = match max {
            Some(m) => ((m.saturating_sub(got)) as usize + seen_at_lo.len()).min(batch).max(1),
            None => batch,
        };
        let streams = match be.log_query(q, lo, hi, want, Dir::Forward, true) {
            Ok(s) => s,
            // A server configured with a smaller `query.max_entries_limit`.
            Err(CliError::Usage(m)) if m.contains("max_entries_limit") => match server_max_entries(&m) {
                Some(max) if max > 0 && max < want => {
                    batch = max;
                    continue;
                }
                _ => return Err(CliError::Usage(m)),
            },
            Err(e) => return Err(e),
        };
        let mut items: Vec<Item> = Vec::new();
        for s in streams {
            let l = Rc::new(s.labels);
            items.extend(s.entries.into_iter().map(|e| (l.clone(), e)));
        }
        let full = items.len() >= want;
        items.sort_by(|x, y| x.1.ts.cmp(&y.1.ts).then_with(|| x.0.cmp(&y.0)));
        let fresh: Vec<Item> = items.into_iter().filter(|it| !(it.1.ts == lo && seen_at_lo.contains(it))).collect();
        if !full {
            if !fresh.is_empty() {
                sink(fresh)?;
            }
            return Ok(());
        }
        if fresh.is_empty() {
            // More than a page of lines share one timestamp: ask for more.
            batch = batch.saturating_mul(2);
            continue;
        }
        let last = fresh.last().map(|it| it.1.ts).unwrap_or(lo);
        if last != lo {
            seen_at_lo.clear();
        }
        seen_at_lo.extend(fresh.iter().filter(|it| it.1.ts == last).cloned());
        lo = last;
        got += fresh.len() as u64;
        if !sink(fresh)? {
            return Ok(());
        }
        if max.is_some_and(|m| got >= m) {
            return Ok(());
        }
    }
}

/// The limit in Loki's "… (5001 > 5000)" refusal.
fn server_max_entries(msg: &str) -> Option<usize> {
    let inner = msg.rsplit('(').next()?.split(')').next()?;
    inner.split('>').nth(1)?.trim().parse().ok()
}

/// Prints matches (with context) window by window; returns the number of
/// matching lines.
fn search(a: &GrepArgs, be: &dyn Backend, plan: &Plan, start: i64, end: i64, out: &mut impl Write) -> CliResult<u64> {
    let fmt = line_format(a, plan);
    let max = if a.quiet { Some(1) } else { a.max_count.map(|m| m as u64) };
    if max == Some(0) {
        return Ok(0);
    }
    let before = a.before_context.or(a.context).unwrap_or(0);
    let after = a.after_context.or(a.context).unwrap_or(0);
    let mut ctx = if a.context.or(a.after_context).or(a.before_context).is_some() {
        Some(Context { before, after, start, end, label_names: be.log_labels(None, start, end)?, ..Default::default() })
    } else {
        None
    };
    let mut progress = Progress::new(a.no_progress || a.quiet);
    let mut matches: u64 = 0;
    let mut bytes: u64 = 0;
    let span = end - start;
    let windows = if span > HOUR_NS { WINDOWS } else { 1 };
    let mut done = false;
    for w in 0..windows {
        if done {
            break;
        }
        let ws = start + span / windows * w;
        let we = if w + 1 == windows { end } else { start + span / windows * (w + 1) };
        let left = max.map(|m| m - matches);
        let mut emit = |items: Vec<Item>, out: &mut dyn Write| -> CliResult<bool> {
            for it in items {
                check_interrupt()?;
                if max.is_some_and(|m| matches >= m) {
                    return Ok(false);
                }
                matches += 1;
                if a.quiet {
                    continue;
                }
                match ctx.as_mut() {
                    None => output::write_line(out, &fmt, &it.0, &it.1, false)?,
                    Some(c) => c.print(be, &fmt, &it, out)?,
                }
            }
            Ok(max.is_none_or(|m| matches < m))
        };
        if plan.queries.len() == 1 {
            pages(be, &plan.queries[0], ws, we, left, &mut |items| {
                let go = emit(items, out)?;
                if !go {
                    done = true;
                }
                Ok(go)
            })?;
        } else {
            let mut all: Vec<Item> = Vec::new();
            for q in &plan.queries {
                pages(be, q, ws, we, left, &mut |items| {
                    all.extend(items);
                    Ok(true)
                })?;
            }
            all.sort_by(|x, y| x.1.ts.cmp(&y.1.ts).then_with(|| x.0.cmp(&y.0)));
            if !emit(all, out)? {
                done = true;
            }
        }
        if max.is_some_and(|m| matches >= m) {
            done = true;
        }
        out.flush()?;
        if !done && progress.is_on() {
            for s in &plan.selectors {
                bytes += be.log_stats(s, ws, we)?.bytes;
            }
        }
        progress.update(start, we, end, matches, bytes);
    }
    progress.clear();
    Ok(matches)
}

/// Context lines: per match, the stream's lines around it.
#[derive(Default)]
struct Context {
    before: usize,
    after: usize,
    start: i64,
    end: i64,
    label_names: Vec<String>,
    printed: HashSet<(Rc<Pairs>, i64, String)>,
    /// The line right after the last one printed, when known.
    follow: Option<(Rc<Pairs>, i64, String)>,
    any: bool,
}

impl Context {
    /// A selector for exactly this label set.
    fn exact(&self, labels: &Pairs) -> String {
        let mut m: Vec<String> = labels.iter().map(|(k, v)| format!("{k}={}", logql::go_quote(v))).collect();
        for n in &self.label_names {
            if !labels.iter().any(|(k, _)| k == n) {
                m.push(format!("{n}=\"\""));
            }
        }
        format!("{{{}}}", m.join(", "))
    }

    /// Up to `n` lines of the stream next to `m` (before or after it), and
    /// the line after those (forward only; to know whether the next match
    /// continues the same group).
    fn around(
        &self,
        be: &dyn Backend,
        labels: &Pairs,
        m: &LogLine,
        n: usize,
        dir: Dir,
    ) -> CliResult<(Vec<LogLine>, Option<LogLine>)> {
        if n == 0 && dir == Dir::Backward {
            return Ok((Vec::new(), None));
        }
        let sel = self.exact(labels);
        let mut extra = 16;
        loop {
            let (lo, hi) = match dir {
                Dir::Backward => (self.start, m.ts + 1),
                Dir::Forward => (m.ts, self.end),
            };
            let streams = be.log_query(&sel, lo, hi, n + extra, dir, true)?;
            let entries: Vec<LogLine> =
                streams.into_iter().filter(|s| &s.labels == labels).flat_map(|s| s.entries).collect();
            let full = entries.len() >= n + extra;
            if let Some(i) = entries.iter().position(|e| e.ts == m.ts && e.line == m.line) {
                let mut v: Vec<LogLine> = entries[i + 1..].iter().take(n).cloned().collect();
                let next = entries.get(i + 1 + n).cloned();
                if (v.len() == n && (next.is_some() || dir == Dir::Backward)) || !full {
                    if dir == Dir::Backward {
                        v.reverse();
                    }
                    return Ok((v, next));
                }
            } else if !full {
                return Ok((Vec::new(), None));
            }
            if extra > 1 << 16 {
                return Ok((Vec::new(), None));
            }
            extra *= 4;
        }
    }

    fn print(&mut self, be: &dyn Backend, fmt: &LineFormat, it: &Item, out: &mut dyn Write) -> CliResult<()> {
        let key = |l: &LogLine| (it.0.clone(), l.ts, l.line.clone());
        let before = if self.printed.contains(&key(&it.1)) {
            Vec::new()
        } else {
            self.around(be, &it.0, &it.1, self.before, Dir::Backward)?.0
        };
        let (after, next) = self.around(be, &it.0, &it.1, self.after, Dir::Forward)?;
        let block: Vec<(&LogLine, bool)> = before
            .iter()
            .map(|l| (l, true))
            .chain(std::iter::once((&it.1, false)))
            .chain(after.iter().map(|l| (l, true)))
            .collect();
        let mut prev_printed = false;
        for (i, (l, is_ctx)) in block.iter().enumerate() {
            let k = key(l);
            if self.printed.contains(&k) {
                prev_printed = true;
                continue;
            }
            // grep's `--` between groups that are not adjacent lines.
            let adjacent = if i == 0 { self.follow.as_ref() == Some(&k) } else { prev_printed };
            if self.any && !adjacent {
                output::write_group_sep(out, fmt)?;
            }
            output::write_line(out, fmt, &it.0, l, *is_ctx)?;
            self.printed.insert(k);
            self.any = true;
            prev_printed = true;
        }
        self.follow = next.map(|n| key(&n));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct T {
        #[command(flatten)]
        g: GrepArgs,
    }

    fn args(v: &[&str]) -> GrepArgs {
        T::parse_from(std::iter::once("grep").chain(v.iter().copied())).g
    }

    #[test]
    fn filters() {
        let f = |v: &[&str]| {
            let a = args(v);
            let (p, _) = a.patterns_and_selector().unwrap();
            line_filter(&a.pattern_opts(), &p).unwrap().0
        };
        assert_eq!(f(&["err"]), r#"|~ "err""#);
        assert_eq!(f(&["-F", "a.b"]), r#"|= "a.b""#);
        assert_eq!(f(&["-F", "-e", "a", "-e", "b"]), r#"|= "a" or "b""#);
        assert_eq!(f(&["-F", "-v", "-e", "a", "-e", "b"]), r#"!= "a" != "b""#);
        assert_eq!(f(&["-F", "-i", "a.b"]), r#"|~ "(?i)a\\.b""#);
        assert_eq!(f(&["-w", "-v", "x|y"]), r#"!~ "\\b(?:x|y)\\b""#);
        assert_eq!(f(&["-e", "a", "-e", "b"]), r#"|~ "(?:a)|(?:b)""#);
        let a = args(&["a(b"]);
        assert!(line_filter(&a.pattern_opts(), &["a(b".into()]).unwrap_err().to_string().contains("invalid pattern"));
    }

    #[test]
    fn server_limit_is_read_from_its_refusal() {
        let m = "max entries limit per query exceeded, limit > max_entries_limit (5000 > 1000)";
        assert_eq!(server_max_entries(m), Some(1000));
        assert_eq!(server_max_entries("other"), None);
    }

    #[test]
    fn selectors() {
        assert_eq!(split_selector(r#"{a="}", b=`x}`} | json"#), Some((r#"a="}", b=`x}`"#, " | json")));
        assert_eq!(split_selector(r#"{a="\"}"}"#), Some((r#"a="\"}""#, "")));
        assert_eq!(split_selector("job=x"), None);
        assert_eq!(label_matcher("a=b").unwrap(), r#"a="b""#);
        assert_eq!(label_matcher("a=~b.*").unwrap(), r#"a=~"b.*""#);
        assert_eq!(label_matcher("a!=b").unwrap(), r#"a!="b""#);
        assert!(label_matcher("nope").is_err());
        let p = |v: &[(&str, &str)]| v.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect::<Pairs>();
        let streams = vec![p(&[("job", "a")]), p(&[("job", "b"), ("x", "1")]), p(&[("x", "2")]), p(&[("y", "3")])];
        assert_eq!(
            covering_selectors(&streams),
            vec![
                r#"{job=~".+"}"#.to_string(),
                r#"{job="", x=~".+"}"#.to_string(),
                r#"{job="", x="", y=~".+"}"#.to_string(),
            ]
        );
    }
}
