//! Conformance: runs Prometheus's own PromQL engine test cases (the
//! `promqltest` `.test` files) against Cairn's PromQL engine.
//!
//! Where the files are: `CAIRN_PROMQLTEST_DIR`, else
//! `$CAIRN_SHARED/conformance/promql`, else `../shared/conformance/promql`
//! relative to the repository root. When none exists the test is skipped
//! with a message — unless `CI=true`, where that is a failure.
//!
//! Every `eval` is one case. A case fails when its result differs from the
//! expectation (Prometheus's comparison rules: relative tolerance 1e-6, NaN
//! equals NaN, stale markers only equal stale markers) or when a check this
//! engine does not produce is required (an expected warning or info
//! annotation missing, or one produced where `expect no_warn` / `no_info`
//! forbids it).
//! Like the reference harness, each successful instant case is also run as
//! a range query from t−1m to t+1m (step 1m) whose middle step must agree,
//! and with `@ t` added to every selector and subquery (outside subqueries
//! that got one) at other evaluation times, which must give the same result.
//!
//! `query/tests/promqltest-expected-failures.txt` lists the cases not passing
//! yet, one `file:line reason` per line. The test fails if a case not listed
//! fails, and prints a warning for listed cases that now pass. Run with
//! `CAIRN_PROMQLTEST_BLESS=1` to rewrite that file from the current results,
//! and with `CAIRN_PROMQLTEST_VERBOSE=1` to print every failing case.

#[path = "promqltest/script.rs"]
mod script;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use cairn_query::promql::{self, QueryError, QueryOptions, Value};
use cairn_store::metrics::MetricsStore;
use cairn_store::{FsyncPolicy, WalOptions};
use cairn_wire::{Labels, SeriesSamples, is_stale_nan};
use script::{Command, Eval, EvalKind, ExpSeries, FailExpect, Val};

const TENANT: &str = "promqltest";
const EXPECTED_FILE: &str = "tests/promqltest-expected-failures.txt";

fn find_dir() -> Result<PathBuf, String> {
    if let Ok(d) = std::env::var("CAIRN_PROMQLTEST_DIR") {
        return Ok(PathBuf::from(d));
    }
    let shared = match std::env::var("CAIRN_SHARED") {
        Ok(s) => PathBuf::from(s),
        Err(_) => Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared"),
    };
    let d = shared.join("conformance/promql");
    if d.is_dir() {
        Ok(d)
    } else {
        Err(format!("{} does not exist (set CAIRN_PROMQLTEST_DIR or CAIRN_SHARED to the shared folder)", d.display()))
    }
}

/// Prometheus's `almost.Equal(a, b, 1e-6)` plus the stale-marker rule.
fn float_eq(a: f64, b: f64) -> bool {
    const EPS: f64 = 1e-6;
    const MIN_NORMAL: f64 = f64::MIN_POSITIVE;
    if is_stale_nan(a) || is_stale_nan(b) {
        return is_stale_nan(a) && is_stale_nan(b);
    }
    if a.is_nan() && b.is_nan() {
        return true;
    }
    if a == b {
        return true;
    }
    let abs_sum = a.abs() + b.abs();
    let diff = (a - b).abs();
    if a == 0.0 || b == 0.0 || abs_sum < MIN_NORMAL {
        return diff < EPS * MIN_NORMAL;
    }
    diff / abs_sum.min(f64::MAX) < EPS
}

struct Store {
    _dir: tempfile::TempDir,
    store: MetricsStore,
}

fn new_store() -> Result<Store, String> {
    let dir = tempfile::tempdir().map_err(|e| format!("tempdir: {e}"))?;
    // Any out-of-order distance: a load appends a series' floats and its
    // histograms separately, each in time order.
    let opts = cairn_store::metrics::MetricsStoreOptions {
        wal: WalOptions { fsync: FsyncPolicy::Never, ..Default::default() },
        out_of_order_window: std::time::Duration::from_secs(100 * 365 * 86_400),
        ..Default::default()
    };
    let store = MetricsStore::open_with(dir.path(), opts).map_err(|e| format!("open store: {e}"))?;
    Ok(Store { _dir: dir, store })
}

/// Notes what a load's write refused or failed on (it explains later
/// failures).
fn note_write(notes: &mut Vec<String>, line: usize, r: Result<cairn_store::WriteOutcome, cairn_store::StoreError>) {
    match r {
        Ok(o) if o.rejected.is_empty() => {}
        Ok(o) => notes.push(format!("line {line}: store rejected {:?}", o.rejected.first())),
        Err(e) => notes.push(format!("line {line}: store error {e}")),
    }
}

/// Outcome of one case: `Ok` or the reason it failed.
type CaseResult = Result<(), String>;

fn run_file(path: &Path) -> Result<Vec<(usize, CaseResult)>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut store = new_store()?;
    // Load problems (e.g. histogram series skipped) since the last clear:
    // they explain later failures.
    let mut load_notes: Vec<String> = Vec::new();
    let mut out = Vec::new();
    for (line, cmd) in script::parse_script(&text) {
        match cmd {
            Ok(Command::Clear) => {
                store = new_store()?;
                load_notes.clear();
            }
            Ok(Command::Load { series, hists, sts, skipped }) => {
                load_notes.extend(skipped);
                let st_batch: Vec<cairn_store::metrics::SeriesStartTimestamps> = sts
                    .into_iter()
                    .map(|(labels, pairs)| cairn_store::metrics::SeriesStartTimestamps { labels, pairs })
                    .collect();
                if !st_batch.is_empty() {
                    note_write(&mut load_notes, line, store.store.append_start_timestamps(TENANT, st_batch));
                }
                // A series listed twice in one load: the later value at a
                // timestamp wins, as in Prometheus's test storage.
                let mut merged: BTreeMap<Labels, BTreeMap<i64, f64>> = BTreeMap::new();
                for (labels, samples) in series {
                    merged.entry(labels).or_default().extend(samples);
                }
                let batch: Vec<SeriesSamples> = merged
                    .into_iter()
                    .map(|(labels, samples)| SeriesSamples { labels, samples: samples.into_iter().collect() })
                    .collect();
                note_write(&mut load_notes, line, store.store.append(TENANT, batch));
                let mut hmerged: BTreeMap<Labels, BTreeMap<i64, cairn_wire::Histogram>> = BTreeMap::new();
                for (labels, samples) in hists {
                    hmerged.entry(labels).or_default().extend(samples);
                }
                let hbatch: Vec<cairn_wire::SeriesHistograms> = hmerged
                    .into_iter()
                    .map(|(labels, h)| cairn_wire::SeriesHistograms { labels, histograms: h.into_iter().collect() })
                    .collect();
                if !hbatch.is_empty() {
                    note_write(&mut load_notes, line, store.store.append_histograms(TENANT, hbatch));
                }
            }
            Ok(Command::Eval(e)) => {
                let mut r = run_eval(&store.store, &e);
                if let Err(msg) = &mut r
                    && let Some(n) = load_notes.first()
                {
                    msg.push_str(&format!(" [data not fully loaded: {n}]"));
                }
                out.push((e.line, r));
            }
            Err(msg) => {
                // A command this runner cannot read: an eval still counts
                // as a failing case; a load taints the following evals.
                if text.lines().nth(line - 1).is_some_and(|l| l.trim_start().starts_with("eval")) {
                    out.push((line, Err(format!("unreadable case: {msg}"))));
                } else {
                    load_notes.push(format!("line {line}: {msg}"));
                }
            }
        }
    }
    Ok(out)
}

fn fmt_err(e: &QueryError) -> String {
    e.to_string()
}

fn run_eval(store: &MetricsStore, e: &Eval) -> CaseResult {
    if let Some(u) = &e.unreadable {
        return Err(format!("unreadable case: {u}"));
    }
    let res = evaluate(store, e);
    if let Some(f) = &e.fail {
        return match res {
            Ok(_) => Err("expected the query to fail, it succeeded".into()),
            Err(QueryError::Unsupported(m)) => Err(format!("unsupported: {m}")),
            Err(err) => {
                let msg = fmt_err(&err);
                match f {
                    FailExpect::Any => Ok(()),
                    FailExpect::Msg(want) if *want == msg => Ok(()),
                    FailExpect::Msg(want) => Err(format!("error {msg:?}, expected {want:?}")),
                    FailExpect::Regex(re) => match regex::Regex::new(re) {
                        Ok(r) if r.is_match(&msg) => Ok(()),
                        Ok(_) => Err(format!("error {msg:?} does not match /{re}/")),
                        Err(x) => Err(format!("bad regex in test: {x}")),
                    },
                }
            }
        };
    }
    let (got, ann) = res.map_err(|err| format!("query failed: {}", fmt_err(&err)))?;
    check_result(e, &got)?;
    if e.expect_warn && ann.warnings.is_empty() {
        return Err("expected a warning annotation, none produced".into());
    }
    if e.expect_info && ann.infos.is_empty() {
        return Err("expected an info annotation, none produced".into());
    }
    if e.expect_no_warn && !ann.warnings.is_empty() {
        return Err(format!("unexpected warning: {}", ann.warnings[0]));
    }
    if e.expect_no_info && !ann.infos.is_empty() {
        return Err(format!("unexpected info: {}", ann.infos[0]));
    }
    if let EvalKind::Instant { at } = e.kind
        && !e.ordered
        && e.range_vector.is_none()
        && e.string.is_none()
        && !["start()", "end()", "range()", "step()"].iter().any(|f| e.expr.contains(f))
    {
        range_cross_check(store, e, at, &got)?;
        at_cross_check(store, e, at, &got)?;
    }
    Ok(())
}

/// Functions whose result depends on the evaluation time even with `@`
/// arguments (Prometheus's `AtModifierUnsafeFunctions`).
const AT_UNSAFE: [&str; 11] = [
    "days_in_month",
    "day_of_month",
    "day_of_week",
    "day_of_year",
    "hour",
    "minute",
    "month",
    "year",
    "predict_linear",
    "time",
    "timestamp",
];

/// Adds `@ at` to selectors and subqueries without one (not below a node
/// that has one). Returns false when an `@`-unsafe function is present.
fn add_at(e: &mut promql_parser::parser::Expr, at: std::time::SystemTime) -> bool {
    use promql_parser::parser::{AtModifier, Expr};
    match e {
        Expr::VectorSelector(vs) => {
            vs.at.get_or_insert(AtModifier::At(at));
            true
        }
        Expr::MatrixSelector(ms) => {
            ms.vs.at.get_or_insert(AtModifier::At(at));
            true
        }
        Expr::Subquery(sq) => {
            // Selectors below a subquery with `@` keep their times relative
            // to it; unsafe functions inside still matter.
            sq.at.get_or_insert(AtModifier::At(at));
            !contains_unsafe(&sq.expr)
        }
        Expr::Paren(p) => add_at(&mut p.expr, at),
        Expr::Unary(u) => add_at(&mut u.expr, at),
        Expr::Binary(b) => add_at(&mut b.lhs, at) & add_at(&mut b.rhs, at),
        Expr::Aggregate(a) => {
            let ok = a.param.as_mut().is_none_or(|p| add_at(p, at));
            add_at(&mut a.expr, at) & ok
        }
        Expr::Call(c) => {
            let mut ok = !AT_UNSAFE.contains(&c.func.name);
            for a in &mut c.args.args {
                ok &= add_at(a, at);
            }
            ok
        }
        Expr::NumberLiteral(_) | Expr::StringLiteral(_) | Expr::Extension(_) => true,
    }
}

fn contains_unsafe(e: &promql_parser::parser::Expr) -> bool {
    let mut copy = e.clone();
    !add_at(&mut copy, std::time::UNIX_EPOCH)
}

fn at_cross_check(store: &MetricsStore, e: &Eval, at: i64, got: &Got) -> CaseResult {
    let Got::Instant(value) = got else { return Ok(()) };
    let Ok(mut expr) = promql::parse(&e.expr) else { return Ok(()) };
    let at_time = if at >= 0 {
        std::time::UNIX_EPOCH + std::time::Duration::from_millis(at as u64)
    } else {
        std::time::UNIX_EPOCH - std::time::Duration::from_millis(at.unsigned_abs())
    };
    if !add_at(&mut expr, at_time) {
        return Ok(());
    }
    let times: Vec<i64> = if at == 0 { vec![-1000, 0, 1000] } else { vec![-10 * at, 0, at / 5, at, 10 * at] };
    let want: Vec<(Labels, Vec<(i64, Val)>)> = match value {
        Value::Vector(vs) => vs.iter().map(|s| (s.labels.clone(), vec![(0, val_of(s))])).collect(),
        Value::Scalar(_, v) => vec![(Labels::empty(), vec![(0, Val::F(*v))])],
        _ => return Ok(()),
    };
    for t in times {
        let r = promql::instant_query(store, TENANT, &expr, t, &QueryOptions::default())
            .map_err(|err| format!("@ cross-check at {t}ms failed: {}", fmt_err(&err)))?;
        let have: Vec<(Labels, Vec<(i64, Val)>)> = match r {
            Value::Vector(vs) => vs.iter().map(|s| (s.labels.clone(), vec![(0, val_of(s))])).collect(),
            Value::Scalar(_, v) => vec![(Labels::empty(), vec![(0, Val::F(v))])],
            other => return Err(format!("@ cross-check at {t}ms: got a {}", other.type_name())),
        };
        compare_series(&have, &want, false).map_err(|m| format!("@ cross-check at {t}ms: {m}"))?;
    }
    Ok(())
}

/// The evaluated result, as an instant value or a range-query matrix.
enum Got {
    Instant(Value),
    Range(Vec<promql::Series>),
}

fn evaluate(store: &MetricsStore, e: &Eval) -> Result<(Got, promql::Annotations), QueryError> {
    let expr = match e.kind {
        EvalKind::Range { start, end, step } => promql::parse_for(&e.expr, step, end - start)?,
        EvalKind::Instant { .. } => promql::parse(&e.expr)?,
    };
    match e.kind {
        EvalKind::Instant { at } => {
            let at = e.range_vector.map_or(at, |rv| rv.1);
            promql::instant_query_annotated(store, TENANT, &expr, at, &QueryOptions::default())
                .map(|(v, a)| (Got::Instant(v), a))
        }
        EvalKind::Range { start, end, step } => {
            promql::range_query_annotated(store, TENANT, &expr, start, end, step, &QueryOptions::default())
                .map(|(m, a)| (Got::Range(m), a))
        }
    }
}

fn show(v: f64) -> String {
    if is_stale_nan(v) { "stale".into() } else { cairn_wire::format_float(v) }
}

fn show_val(v: &Val) -> String {
    match v {
        Val::F(f) => show(*f),
        Val::H(h, _) => h.to_prom_string(),
    }
}

/// A result sample as a comparable value.
fn val_of(s: &promql::Sample) -> Val {
    match &s.h {
        Some(h) => Val::H(h.clone(), false),
        None => Val::F(s.v),
    }
}

/// A result series' floats and histograms merged by time.
fn series_vals(s: &promql::Series) -> Vec<(i64, Val)> {
    let mut out: Vec<(i64, Val)> = s.points.iter().map(|&(t, v)| (t, Val::F(v))).collect();
    out.extend(s.hist.iter().map(|(t, h)| (*t, Val::H(Box::new(h.clone()), false))));
    out.sort_by_key(|p| p.0);
    out
}

/// Histograms equal after compaction, floats with [`float_eq`]; the
/// counter-reset hint only when the expectation spells it out.
fn hist_eq(got: &cairn_wire::Histogram, want: &cairn_wire::Histogram, hint: bool) -> bool {
    let buckets = |b: &[(i32, f64)]| b.iter().filter(|x| x.1 != 0.0).copied().collect::<Vec<_>>();
    let beq = |a: &[(i32, f64)], b: &[(i32, f64)]| {
        let (a, b) = (buckets(a), buckets(b));
        a.len() == b.len() && a.iter().zip(&b).all(|(x, y)| x.0 == y.0 && float_eq(x.1, y.1))
    };
    got.schema == want.schema
        && float_eq(got.count, want.count)
        && float_eq(got.sum, want.sum)
        && float_eq(got.zero_threshold, want.zero_threshold)
        && float_eq(got.zero_count, want.zero_count)
        && beq(&got.positive, &want.positive)
        && beq(&got.negative, &want.negative)
        && (!got.uses_custom_buckets() || got.custom_values == want.custom_values)
        && (!hint || got.reset_hint == want.reset_hint)
}

fn val_eq(got: &Val, want: &Val) -> bool {
    match (got, want) {
        (Val::F(a), Val::F(b)) => float_eq(*a, *b),
        (Val::H(a, _), Val::H(b, hint)) => hist_eq(a, b, *hint),
        _ => false,
    }
}

fn check_result(e: &Eval, got: &Got) -> CaseResult {
    match got {
        Got::Instant(Value::String(_, s)) => match &e.string {
            Some(want) if want == s => Ok(()),
            Some(want) => Err(format!("string {s:?}, expected {want:?}")),
            None => Err(format!("got string {s:?}, expected another type")),
        },
        _ if e.string.is_some() => Err("expected a string result".into()),
        Got::Instant(Value::Scalar(_, v)) => match e.scalar {
            Some(want) if float_eq(*v, want) => Ok(()),
            Some(want) => Err(format!("scalar {}, expected {}", show(*v), show(want))),
            None => Err(format!("got scalar {}, expected a vector", show(*v))),
        },
        _ if e.scalar.is_some() => Err("expected a scalar result".into()),
        Got::Instant(Value::Vector(vs)) => {
            if e.range_vector.is_some() {
                return Err("expected a range vector, got an instant vector".into());
            }
            let got: Vec<(Labels, Vec<(i64, Val)>)> =
                vs.iter().map(|s| (s.labels.clone(), vec![(0, val_of(s))])).collect();
            let want: Vec<(Labels, Vec<(i64, Val)>)> = e
                .series
                .iter()
                .map(|s| -> Result<_, String> {
                    match s.values.as_slice() {
                        [Some(v)] => Ok((s.labels.clone(), vec![(0, v.clone())])),
                        _ => Err(format!("expected series {} must have exactly one value", s.labels)),
                    }
                })
                .collect::<Result<_, _>>()?;
            compare_series(&got, &want, e.ordered)
        }
        Got::Instant(Value::Matrix(ms)) => {
            let Some((s, _, step)) = e.range_vector else {
                return Err("got a range vector, expected an instant vector".into());
            };
            let got: Vec<_> = ms.iter().map(|m| (m.labels.clone(), series_vals(m))).collect();
            compare_series(&got, &expected_points(&e.series, s, step), false)
        }
        Got::Range(ms) => {
            let EvalKind::Range { start, step, .. } = e.kind else {
                return Err("range result for an instant query".into());
            };
            let got: Vec<_> = ms.iter().map(|m| (m.labels.clone(), series_vals(m))).collect();
            compare_series(&got, &expected_points(&e.series, start, step), false)
        }
    }
}

fn expected_points(series: &[ExpSeries], start: i64, step: i64) -> Vec<(Labels, Vec<(i64, Val)>)> {
    series
        .iter()
        .map(|s| {
            let pts = s
                .values
                .iter()
                .enumerate()
                .filter_map(|(k, v)| v.clone().map(|v| (start + k as i64 * step, v)))
                .collect();
            (s.labels.clone(), pts)
        })
        .collect()
}

type Pts = Vec<(i64, Val)>;

fn compare_series(got: &[(Labels, Pts)], want: &[(Labels, Pts)], ordered: bool) -> CaseResult {
    let gm: HashMap<&Labels, &Pts> = got.iter().map(|(l, p)| (l, p)).collect();
    if gm.len() != got.len() {
        return Err("result contains the same label set twice".into());
    }
    for (l, wp) in want {
        let Some(gp) = gm.get(l) else {
            let have: Vec<String> = got.iter().take(4).map(|(l, _)| l.to_string()).collect();
            return Err(format!("missing series {l} (got {} series: {})", got.len(), have.join(" ")));
        };
        if gp.len() != wp.len() || gp.iter().zip(wp.iter()).any(|(g, w)| g.0 != w.0 || !val_eq(&g.1, &w.1)) {
            let f = |p: &[(i64, Val)]| -> String {
                p.iter().take(6).map(|(t, v)| format!("{}@{}", show_val(v), t / 1000)).collect::<Vec<_>>().join(" ")
            };
            return Err(format!("series {l}: got [{}], expected [{}]", f(gp), f(wp)));
        }
    }
    if got.len() != want.len() {
        let wl: std::collections::HashSet<&Labels> = want.iter().map(|(l, _)| l).collect();
        let extra: Vec<String> =
            got.iter().filter(|(l, _)| !wl.contains(l)).take(3).map(|(l, _)| l.to_string()).collect();
        return Err(format!("{} series, expected {}; unexpected: {}", got.len(), want.len(), extra.join(" ")));
    }
    if ordered {
        for (i, ((gl, _), (wl, _))) in got.iter().zip(want.iter()).enumerate() {
            if gl != wl {
                return Err(format!("order differs at position {i}: got {gl}, expected {wl}"));
            }
        }
    }
    Ok(())
}

fn range_cross_check(store: &MetricsStore, e: &Eval, at: i64, got: &Got) -> CaseResult {
    let Ok(expr) = promql::parse(&e.expr) else { return Ok(()) };
    let m = promql::range_query(store, TENANT, &expr, at - 60_000, at + 60_000, 60_000, &QueryOptions::default())
        .map_err(|err| format!("range-query cross-check failed: {}", fmt_err(&err)))?;
    let mid: Vec<(Labels, Vec<(i64, Val)>)> = m
        .iter()
        .filter_map(|s| series_vals(s).into_iter().find(|p| p.0 == at).map(|p| (s.labels.clone(), vec![(0, p.1)])))
        .collect();
    let inst: Vec<(Labels, Vec<(i64, Val)>)> = match got {
        Got::Instant(Value::Vector(vs)) => vs.iter().map(|s| (s.labels.clone(), vec![(0, val_of(s))])).collect(),
        Got::Instant(Value::Scalar(_, v)) => vec![(Labels::empty(), vec![(0, Val::F(*v))])],
        _ => return Ok(()),
    };
    compare_series(&mid, &inst, false).map_err(|m| format!("range-query cross-check: {m}"))
}

fn load_expected(path: &Path) -> BTreeMap<String, String> {
    let Ok(text) = std::fs::read_to_string(path) else { return BTreeMap::new() };
    text.lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .map(|l| match l.split_once(' ') {
            Some((k, r)) => (k.to_string(), r.to_string()),
            None => (l.to_string(), String::new()),
        })
        .collect()
}

#[test]
fn promqltest() {
    let dir = match find_dir() {
        Ok(d) => d,
        Err(why) => {
            if std::env::var("CI").is_ok_and(|v| v == "true") {
                panic!("promqltest: conformance files not found: {why}");
            }
            println!("promqltest: skipped: {why}");
            return;
        }
    };
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("read {}: {e}", dir.display()))
        .filter_map(|d| d.ok().map(|d| d.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "test"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no .test files in {}", dir.display());

    let expected_path = Path::new(env!("CARGO_MANIFEST_DIR")).join(EXPECTED_FILE);
    let expected = load_expected(&expected_path);
    let verbose = std::env::var("CAIRN_PROMQLTEST_VERBOSE").is_ok_and(|v| v == "1");
    let (mut passed, mut failed) = (0usize, 0usize);
    let mut failures: BTreeMap<String, String> = BTreeMap::new();
    for f in &files {
        let name = f.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let cases = run_file(f).unwrap_or_else(|e| panic!("{e}"));
        let (mut p, mut fl) = (0, 0);
        for (line, r) in cases {
            match r {
                Ok(()) => p += 1,
                Err(why) => {
                    fl += 1;
                    let why: String = why.replace('\n', " ").chars().take(200).collect();
                    if verbose {
                        println!("promqltest: FAIL {name}:{line} {why}");
                    }
                    failures.insert(format!("{name}:{line}"), why);
                }
            }
        }
        println!("promqltest: {name}: {p} passed, {fl} failed");
        passed += p;
        failed += fl;
    }

    let unexpected: Vec<String> =
        failures.iter().filter(|(k, _)| !expected.contains_key(*k)).map(|(k, v)| format!("{k} {v}")).collect();
    let now_passing: Vec<&String> = expected.keys().filter(|k| !failures.contains_key(*k)).collect();
    if std::env::var("CAIRN_PROMQLTEST_BLESS").is_ok_and(|v| v == "1") {
        let mut text = String::from(
            "# promqltest cases not passing yet: `file:line reason`, one per line.\n\
             # Regenerate with CAIRN_PROMQLTEST_BLESS=1 cargo test -p cairn-query --test promqltest\n",
        );
        for (k, v) in &failures {
            text.push_str(&format!("{k} {v}\n"));
        }
        std::fs::write(&expected_path, text).unwrap_or_else(|e| panic!("write {}: {e}", expected_path.display()));
        println!("promqltest: blessed {} expected failures into {}", failures.len(), expected_path.display());
    } else {
        for k in &now_passing {
            println!("promqltest: warning: {k} is listed as an expected failure but passes now; remove it");
        }
    }
    println!("promqltest: {passed} passed, {failed} failed");
    let bless = std::env::var("CAIRN_PROMQLTEST_BLESS").is_ok_and(|v| v == "1");
    if !bless && !unexpected.is_empty() {
        panic!("{} unexpected promqltest failures:\n{}", unexpected.len(), unexpected.join("\n"));
    }
}
