//! Log query evaluation over the log store.

use std::collections::HashMap;

use cairn_store::logs::LogStore;
use cairn_wire::Labels;

use super::ast::{Direction, LogSelector, Stage};
use super::pipeline::{Category, LabelsBuilder, PipelineState, run_stages};

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

/// Runs a log query: entries of matching streams in `[start, end)` that pass
/// the pipeline; of those, the `limit` newest (backward) or oldest
/// (forward) over all streams, grouped by their final label set (stream
/// labels, structured metadata and parsed labels), each group's entries in
/// the query's direction, groups ordered by labels.
pub fn eval_log_query(store: &LogStore, sel: &LogSelector, q: &LogQuery<'_>) -> Vec<StreamResult> {
    // Each scanned stream contributes at most `limit` candidates; the global
    // cut happens after merging. Candidates: (ts, scan order, group, entry).
    let mut groups: Vec<Labels> = Vec::new();
    let mut group_idx: HashMap<Labels, u32> = HashMap::new();
    let mut cand: Vec<(i64, u64, u32, LogEntry)> = Vec::new();
    let mut state = PipelineState::default();
    let mut seq: u64 = 0;
    let prefix = sel.pipeline.iter().take_while(|s| matches!(s, Stage::LineFilter(_))).count();
    let needles = sel.required_substrings();
    store.scan_needles(q.tenant, &sel.matchers, q.start, q.end, &needles, &mut |labels, entries| {
        let mut taken = 0usize;
        let mut take = |e: &cairn_store::logs::Entry| {
            if taken >= q.limit {
                return false;
            }
            // Leading line filters need no labels: reject early, cheaply.
            if !sel.pipeline[..prefix].iter().all(|s| matches!(s, Stage::LineFilter(f) if f.keep(&e.line))) {
                return true;
            }
            let mut lbs = LabelsBuilder::new(labels, &e.metadata);
            let Some(line) = run_stages(&sel.pipeline[prefix..], &mut state, &mut lbs, &e.line, e.ts) else {
                return true;
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
            let g = match group_idx.get(&key) {
                Some(&g) => g,
                None => {
                    let g = groups.len() as u32;
                    groups.push(key.clone());
                    group_idx.insert(key, g);
                    g
                }
            };
            cand.push((e.ts, seq, g, LogEntry { ts: e.ts, line, metadata, parsed }));
            seq += 1;
            taken += 1;
            true
        };
        match q.direction {
            Direction::Forward => {
                for e in entries {
                    if !take(e) {
                        break;
                    }
                }
            }
            Direction::Backward => {
                for e in entries.iter().rev() {
                    if !take(e) {
                        break;
                    }
                }
            }
        }
    });
    match q.direction {
        Direction::Forward => cand.sort_by(|a, b| a.0.cmp(&b.0).then(a.1.cmp(&b.1))),
        Direction::Backward => cand.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1))),
    }
    cand.truncate(q.limit);
    let mut per: Vec<Vec<LogEntry>> = vec![Vec::new(); groups.len()];
    for (_, _, g, e) in cand {
        per[g as usize].push(e);
    }
    let mut out: Vec<StreamResult> = groups
        .into_iter()
        .zip(per)
        .filter(|(_, e)| !e.is_empty())
        .map(|(labels, entries)| StreamResult { labels, entries })
        .collect();
    out.sort_by(|a, b| a.labels.cmp(&b.labels));
    out
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
        eval_log_query(s, &sel, &LogQuery { tenant: "t", start: 0, end: 100, limit, direction, categorize: false })
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
}
