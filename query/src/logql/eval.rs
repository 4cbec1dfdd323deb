//! Log query evaluation over the log store.

use cairn_store::logs::LogStore;
use cairn_wire::Labels;

use super::ast::{Direction, LogSelector};

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
}

/// One stream of a log query's result.
#[derive(Debug, Clone, PartialEq)]
pub struct StreamResult {
    /// The stream's labels.
    pub labels: Labels,
    /// (ts ns, line) in the query's direction.
    pub entries: Vec<(i64, String)>,
}

/// Runs a log query: entries of matching streams in `[start, end)` that pass
/// every line filter; of those, the `limit` newest (backward) or oldest
/// (forward) over all streams, grouped by stream, each stream's entries in
/// the query's direction, streams ordered by labels.
pub fn eval_log_query(store: &LogStore, sel: &LogSelector, q: &LogQuery<'_>) -> Vec<StreamResult> {
    // Each stream contributes at most `limit` candidates; the global cut
    // happens after merging.
    let mut streams: Vec<Labels> = Vec::new();
    let mut cand: Vec<(i64, u32, String)> = Vec::new();
    store.scan(q.tenant, &sel.matchers, q.start, q.end, &mut |labels, entries| {
        let sid = streams.len() as u32;
        let mut taken = 0usize;
        let mut take = |e: &cairn_store::logs::Entry| {
            if taken >= q.limit {
                return false;
            }
            if sel.filters.iter().all(|f| f.keep(&e.line)) {
                cand.push((e.ts, sid, e.line.clone()));
                taken += 1;
            }
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
        if taken > 0 {
            streams.push(labels.clone());
        }
    });
    match q.direction {
        Direction::Forward => cand.sort_by(|a, b| a.0.cmp(&b.0).then(a.1.cmp(&b.1))),
        Direction::Backward => cand.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1))),
    }
    cand.truncate(q.limit);
    let mut per: Vec<Vec<(i64, String)>> = vec![Vec::new(); streams.len()];
    for (ts, sid, line) in cand {
        per[sid as usize].push((ts, line));
    }
    let mut out: Vec<StreamResult> = streams
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
        let Expr::Log(sel) = parse(q).unwrap();
        eval_log_query(s, &sel, &LogQuery { tenant: "t", start: 0, end: 100, limit, direction })
            .into_iter()
            .map(|r| (r.labels.get("job").unwrap().to_string(), r.entries.iter().map(|e| e.0).collect()))
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
