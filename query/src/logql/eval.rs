//! Log query evaluation over the log store.

use std::collections::{BinaryHeap, HashMap};

use cairn_store::logs::{EntryRef, LogStore, Order, ScanRequest};
use cairn_wire::Labels;

use super::ast::{Direction, LogSelector, Stage};
use super::ctl::QueryCtl;
use super::metric::EvalError;
use super::pipeline::{Category, LabelsBuilder, PipelineState, metadata_names_any, run_stages, stream_rejects};

/// Parameters of a log query, in Loki's terms.
#[derive(Debug, Clone)]
pub struct LogQuery<'a> {
    /// Tenant whose streams are searched.
    pub tenant: &'a str,
    /// Inclusive start, ns.
    pub start: i64,
    /// Exclusive end, ns.
    pub end: i64,
    /// Maximum entries returned over all streams.
    pub limit: usize,
    /// Which end of the range the limit keeps.
    pub direction: Direction,
    /// Group results by stream labels only and return structured metadata
    /// and parsed labels per entry (`X-Loki-Response-Encoding-Flags:
    /// categorize-labels`); otherwise group by the full final label set.
    pub categorize: bool,
    /// Deadline and work counters.
    pub ctl: &'a QueryCtl,
}

/// One entry of a log query's result.
#[derive(Debug, Clone, PartialEq)]
pub struct LogEntry {
    /// Timestamp, ns.
    pub ts: i64,
    /// The line after the pipeline.
    pub line: String,
    /// Structured metadata (only filled when categorizing).
    pub metadata: Vec<(String, String)>,
    /// Parsed labels (only filled when categorizing).
    pub parsed: Vec<(String, String)>,
}

/// One stream of a log query's result.
#[derive(Debug, Clone, PartialEq)]
pub struct StreamResult {
    /// The stream's labels.
    pub labels: Labels,
    /// Entries in the query's direction.
    pub entries: Vec<LogEntry>,
}

/// Entries between two deadline checks.
pub(crate) const CHECK_EVERY: usize = 4096;

/// A result candidate; `key` orders candidates worst-last for a max-heap:
/// the timestamp (bit-inverted when newest first) then the scan order.
struct Cand {
    key: (i64, u64),
    group: u32,
    entry: LogEntry,
}

impl PartialEq for Cand {
    fn eq(&self, o: &Self) -> bool {
        self.key == o.key
    }
}
impl Eq for Cand {}
impl PartialOrd for Cand {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Cand {
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        self.key.cmp(&o.key)
    }
}

/// Runs a log query: entries of matching streams in `[start, end)` that pass
/// the pipeline; of those, the `limit` newest (backward) or oldest
/// (forward) over all streams, grouped by their final label set (stream
/// labels, structured metadata and parsed labels), each group's entries in
/// the query's direction, groups ordered by labels.
///
/// The best `limit` candidates are kept in a heap; once it is full, entries
/// that cannot make it are dropped before the pipeline runs, and the store
/// is told not to read chunks lying wholly beyond the worst one kept.
pub fn eval_log_query(store: &LogStore, sel: &LogSelector, q: &LogQuery<'_>) -> Result<Vec<StreamResult>, EvalError> {
    if q.limit == 0 {
        return Ok(Vec::new());
    }
    if q.ctl.expired() {
        return Err(EvalError::Timeout);
    }
    let mut timed_out = false;
    let backward = q.direction == Direction::Backward;
    let rank = |ts: i64| if backward { !ts } else { ts };
    let mut groups: Vec<Labels> = Vec::new();
    let mut group_idx: HashMap<Labels, u32> = HashMap::new();
    let mut heap: BinaryHeap<Cand> = BinaryHeap::with_capacity(q.limit.min(1 << 16) + 1);
    let mut state = PipelineState::default();
    let mut seq: u64 = 0;
    let prefix = sel.pipeline.iter().take_while(|s| matches!(s, Stage::LineFilter(_))).count();
    let owned = sel.required_substrings();
    let needles: Vec<&[u8]> = owned.iter().map(|n| &n[..]).collect();
    let order = if backward { Order::Backward } else { Order::Forward };
    let req =
        ScanRequest { tenant: q.tenant, matchers: &sel.matchers, start: q.start, end: q.end, needles: &needles, order };
    // A cutoff beyond which nothing lies: ends the scan.
    let stop = if backward { i64::MAX } else { i64::MIN };
    let res = store.scan_entries(&req, &mut |labels: &Labels, entries: &[EntryRef<'_>]| {
        if timed_out {
            return Some(stop);
        }
        let n = entries.len();
        // Stored `detected_level` metadata (later in the chain) overrides it.
        let implied = q.ctl.implied_level(labels).map(|l| (super::ctl::DETECTED_LEVEL, l));
        // Entries a label filter rejects on the stream's own labels.
        let rejects = stream_rejects(&sel.pipeline[prefix..], labels)
            .filter(|names| implied.is_none() || !names.contains(&super::ctl::DETECTED_LEVEL));
        q.ctl.add_lines(n as u64, entries.iter().map(|e| e.line.len() as u64).sum());
        for i in 0..n {
            if i % CHECK_EVERY == 0 && q.ctl.expired() {
                timed_out = true;
                return Some(stop);
            }
            let e = if backward { &entries[n - 1 - i] } else { &entries[i] };
            if heap.len() >= q.limit && heap.peek().is_some_and(|w| rank(e.ts) >= w.key.0) {
                continue;
            }
            // Leading line filters need no labels: reject early, cheaply.
            if !sel.pipeline[..prefix].iter().all(|s| matches!(s, Stage::LineFilter(f) if f.keep(e.line))) {
                continue;
            }
            if let Some(names) = &rejects
                && !metadata_names_any(e.metadata.iter(), names)
            {
                continue;
            }
            let mut lbs = LabelsBuilder::new(labels, implied.into_iter().chain(e.metadata.iter()));
            let Some(line) = run_stages(&sel.pipeline[prefix..], &mut state, &mut lbs, e.line, e.ts) else {
                continue;
            };
            let (key, metadata, parsed) = if q.categorize {
                (
                    lbs.labels_where(|c| c == Category::Stream),
                    lbs.pairs_of(Category::Metadata),
                    lbs.pairs_of(Category::Parsed),
                )
            } else {
                (lbs.labels(), Vec::new(), Vec::new())
            };
            let group = match group_idx.get(&key) {
                Some(&g) => g,
                None => {
                    let g = groups.len() as u32;
                    groups.push(key.clone());
                    group_idx.insert(key, g);
                    g
                }
            };
            q.ctl.add_post_filter(1);
            heap.push(Cand { key: (rank(e.ts), seq), group, entry: LogEntry { ts: e.ts, line, metadata, parsed } });
            seq += 1;
            if heap.len() > q.limit {
                heap.pop();
            }
        }
        // Full: nothing beyond the worst kept entry can make it any more.
        if heap.len() >= q.limit { heap.peek().map(|w| rank(w.key.0)) } else { None }
    });
    q.ctl.add_scan(&res.map_err(|e| EvalError::Store(e.to_string()))?);
    if timed_out {
        return Err(EvalError::Timeout);
    }
    let mut cand = heap.into_vec();
    cand.sort();
    let mut per: Vec<Vec<LogEntry>> = vec![Vec::new(); groups.len()];
    for c in cand {
        per[c.group as usize].push(c.entry);
    }
    let mut out: Vec<StreamResult> = groups
        .into_iter()
        .zip(per)
        .filter(|(_, e)| !e.is_empty())
        .map(|(labels, entries)| StreamResult { labels, entries })
        .collect();
    out.sort_by(|a, b| a.labels.cmp(&b.labels));
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::logql::{Expr, parse};
    use cairn_store::WalOptions;
    use cairn_store::logs::{Entry, StreamEntries};

    fn store() -> (tempfile::TempDir, LogStore) {
        let d = tempfile::tempdir().unwrap();
        let s = LogStore::open(d.path(), WalOptions::default()).unwrap();
        let mk = |job: &str, lines: &[(i64, &str)]| StreamEntries {
            labels: Labels::from_pairs([("job", job)]).unwrap(),
            entries: lines.iter().map(|&(ts, l)| Entry { ts, line: l.into(), metadata: vec![] }).collect(),
        };
        s.push(
            "t",
            vec![mk("a", &[(1, "a1 err"), (3, "a3"), (5, "a5 err")]), mk("b", &[(2, "b2 err"), (4, "b4 err")])],
        )
        .unwrap();
        (d, s)
    }

    fn run(s: &LogStore, q: &str, limit: usize, direction: Direction) -> Vec<(String, Vec<i64>)> {
        let Ok(Expr::Log(sel)) = parse(q) else { panic!("not a log query: {q}") };
        eval_log_query(
            s,
            &sel,
            &LogQuery {
                tenant: "t",
                start: 0,
                end: 100,
                limit,
                direction,
                categorize: false,
                ctl: &QueryCtl::default(),
            },
        )
        .unwrap()
        .into_iter()
        .map(|r| (r.labels.get("job").unwrap().to_string(), r.entries.iter().map(|e| e.ts).collect()))
        .collect()
    }

    #[test]
    fn limit_and_direction_over_streams() {
        let (_d, s) = store();
        assert_eq!(
            run(&s, r#"{job=~"a|b"} |= "err""#, 2, Direction::Backward),
            vec![("a".into(), vec![5]), ("b".into(), vec![4])]
        );
        assert_eq!(
            run(&s, r#"{job=~"a|b"} |= "err""#, 2, Direction::Forward),
            vec![("a".into(), vec![1]), ("b".into(), vec![2])]
        );
        assert_eq!(run(&s, r#"{job="a"}"#, 10, Direction::Backward), vec![("a".into(), vec![5, 3, 1])]);
        assert_eq!(run(&s, r#"{job=~".+", job!="a"} != "b4""#, 10, Direction::Forward), vec![("b".into(), vec![2])]);
        assert_eq!(run(&s, r#"{job="a"} |~ "a[35]" !~ "err""#, 10, Direction::Forward), vec![("a".into(), vec![3])]);
        assert!(run(&s, r#"{job="zzz"}"#, 10, Direction::Forward).is_empty());
    }

    #[test]
    fn a_passed_deadline_stops_log_and_metric_queries() {
        let (_d, s) = store();
        let ctl = QueryCtl::with_deadline(Some(std::time::Instant::now()));
        let Ok(Expr::Log(sel)) = parse(r#"{job="a"}"#) else { panic!() };
        let q = LogQuery {
            tenant: "t",
            start: 0,
            end: 100,
            limit: 10,
            direction: Direction::Forward,
            categorize: false,
            ctl: &ctl,
        };
        assert_eq!(eval_log_query(&s, &sel, &q), Err(EvalError::Timeout));
        let Ok(Expr::Sample(e)) = parse(r#"count_over_time({job="a"}[1s])"#) else { panic!() };
        let q = crate::logql::MetricQuery { tenant: "t", start: 0, end: 100, step: 10, ctl: &ctl };
        assert_eq!(crate::logql::eval_metric(&s, &e, &q), Err(EvalError::Timeout));
        // Without a deadline the same queries run, and count what they read.
        let ctl = QueryCtl::default();
        let q = LogQuery { ctl: &ctl, limit: 10, ..q_log(&ctl) };
        assert_eq!(eval_log_query(&s, &sel, &q).unwrap()[0].entries.len(), 3);
        assert_eq!((ctl.stats().lines, ctl.stats().post_filter_lines, ctl.stats().head_lines), (3, 3, 3));
    }

    fn q_log(ctl: &QueryCtl) -> LogQuery<'_> {
        LogQuery { tenant: "t", start: 0, end: 100, limit: 10, direction: Direction::Forward, categorize: false, ctl }
    }

    /// A stream's level label implies `detected_level` for its entries that
    /// carry none (ingest stores nothing for them); stored metadata wins.
    #[test]
    fn level_label_implies_detected_level() {
        let d = tempfile::tempdir().unwrap();
        let s = LogStore::open(d.path(), WalOptions::default()).unwrap();
        let e = |ts: i64, meta: &[(&str, &str)]| Entry {
            ts,
            line: format!("line {ts}"),
            metadata: meta.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        };
        let labels = Labels::from_pairs([("job", "a"), ("level", "WARNING")]).unwrap();
        s.push("t", vec![StreamEntries { labels, entries: vec![e(1, &[]), e(2, &[("detected_level", "error")])] }])
            .unwrap();
        let ctl = QueryCtl::default().with_level_fields(vec!["lvl".into(), "level".into()]);
        let Ok(Expr::Log(sel)) = parse(r#"{job="a"}"#) else { panic!() };
        let q = LogQuery { categorize: true, ..q_log(&ctl) };
        let got: Vec<(i64, Vec<(String, String)>)> = eval_log_query(&s, &sel, &q)
            .unwrap()
            .into_iter()
            .flat_map(|r| r.entries.into_iter().map(|e| (e.ts, e.metadata)))
            .collect();
        let dl = |v: &str| vec![("detected_level".to_string(), v.to_string())];
        assert_eq!(got, vec![(1, dl("warn")), (2, dl("error"))]);
        let Ok(Expr::Sample(m)) = parse(r#"sum by (detected_level) (count_over_time({job="a"}[1s]))"#) else {
            panic!()
        };
        let mq = crate::logql::MetricQuery { tenant: "t", start: 2, end: 2, step: 0, ctl: &ctl };
        let crate::logql::MetricValue::Vector(_, v) = crate::logql::eval_metric(&s, &m, &mq).unwrap() else { panic!() };
        let got: Vec<(String, f64)> =
            v.iter().map(|x| (x.labels.get("detected_level").unwrap_or("").to_string(), x.value)).collect();
        assert_eq!(got, vec![("error".to_string(), 1.0), ("warn".to_string(), 1.0)]);
        // Without level fields (discovery off) nothing is implied.
        let off = QueryCtl::default();
        let q = LogQuery { categorize: true, ..q_log(&off) };
        assert!(eval_log_query(&s, &sel, &q).unwrap().iter().all(|r| r.entries.iter().all(|e| e.metadata.len() <= 1)));
    }
}
