//! Out-of-order writes: entries and samples pushed in any order within the
//! window, split over many writes, with flushes in between and whole writes
//! sent twice (a client retry), are read back in time order, each exactly
//! once (after compaction for log lines re-sent across a flush, which only
//! the merge can see). And the window itself: what is too far behind is
//! refused, also after a flush and a restart.

use std::time::Duration;

use proptest::prelude::*;

use cairn_store::logs::{LogStore, LogStoreOptions};
use cairn_store::metrics::{MetricsStore, MetricsStoreOptions};
use cairn_store::{CompactionPolicy, RejectReason, WalOptions};
use cairn_wire::{Entry, Labels, SeriesSamples, StreamEntries};

const BASE_NS: i64 = 1_700_000_000_000_000_000;

fn everything() -> CompactionPolicy {
    CompactionPolicy { ranges: vec![i64::MAX / 4], max_block_bytes: 0 }
}

/// A plan: a permutation of `n` distinct offsets, cut into writes; after
/// each write maybe a flush, maybe a re-send of that write.
fn plan() -> impl Strategy<Value = (Vec<i64>, Vec<(usize, bool, bool)>)> {
    (1usize..150).prop_flat_map(|n| {
        let offsets = proptest::collection::btree_set(0i64..1_800_000, n)
            .prop_map(|s| s.into_iter().collect::<Vec<_>>())
            .prop_shuffle();
        (offsets, proptest::collection::vec((1usize..40, any::<bool>(), proptest::bool::weighted(0.2)), 1..20))
    })
}

/// Cuts `items` into the plan's writes; the last one takes the rest.
fn writes<T: Clone>(items: &[T], cuts: &[(usize, bool, bool)]) -> Vec<(Vec<T>, bool, bool)> {
    let mut out = Vec::new();
    let mut at = 0;
    for (i, &(len, flush, resend)) in cuts.iter().enumerate() {
        let end = if i + 1 == cuts.len() { items.len() } else { (at + len).min(items.len()) };
        out.push((items[at..end].to_vec(), flush, resend));
        at = end;
    }
    out
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(40))]

    #[test]
    fn log_entries_in_any_order_come_back_sorted_once((offsets, cuts) in plan()) {
        let dir = tempfile::tempdir().unwrap();
        let s = LogStore::open(dir.path(), WalOptions::default()).unwrap();
        let labels = Labels::from_pairs([("job", "ooo")]).unwrap();
        // offsets in ms within 30 minutes: inside the default 1 h window
        let entries: Vec<Entry> = offsets
            .iter()
            .map(|&o| Entry { ts: BASE_NS + o * 1_000_000, line: format!("line at {o}"), metadata: vec![] })
            .collect();
        for (batch, flush, resend) in writes(&entries, &cuts) {
            for _ in 0..1 + usize::from(resend) {
                let out = s.push("t", vec![StreamEntries { labels: labels.clone(), entries: batch.clone() }]).unwrap();
                prop_assert!(out.rejected.is_empty(), "{:?}", out.rejected);
            }
            if flush {
                s.flush().unwrap();
            }
        }
        let read = |s: &LogStore| {
            let mut got = Vec::new();
            s.try_scan("t", &[], i64::MIN, i64::MAX, &mut |_, es| got.extend(es.iter().map(|e| (e.ts, e.line.clone()))))
                .unwrap();
            got
        };
        let mut want: Vec<(i64, String)> = entries.iter().map(|e| (e.ts, e.line.clone())).collect();
        want.sort();
        let got = read(&s);
        prop_assert!(got.windows(2).all(|w| w[0].0 <= w[1].0), "not in time order");
        let mut unique = got.clone();
        unique.dedup();
        prop_assert_eq!(&unique, &want);
        // once all of it is in blocks and merged, re-sent lines are gone too
        s.flush().unwrap();
        s.compact(&everything(), 100).unwrap();
        prop_assert_eq!(read(&s), want);
    }

    #[test]
    fn samples_in_any_order_come_back_sorted_once((offsets, cuts) in plan()) {
        let dir = tempfile::tempdir().unwrap();
        let opts = MetricsStoreOptions { out_of_order_window: Duration::from_secs(3600), ..Default::default() };
        let s = MetricsStore::open_with(dir.path(), opts).unwrap();
        let labels = Labels::from_pairs([("__name__", "ooo")]).unwrap();
        let samples: Vec<(i64, f64)> = offsets.iter().map(|&o| (1_700_000_000_000 + o, o as f64 * 0.25)).collect();
        for (batch, flush, resend) in writes(&samples, &cuts) {
            for _ in 0..1 + usize::from(resend) {
                let out = s.append("t", vec![SeriesSamples { labels: labels.clone(), samples: batch.clone() }]).unwrap();
                prop_assert!(out.rejected.is_empty(), "{:?}", out.rejected);
            }
            if flush {
                s.flush().unwrap();
            }
        }
        let mut want = samples.clone();
        want.sort_by_key(|p| p.0);
        let read = |s: &MetricsStore| s.select("t", &[], i64::MIN, i64::MAX).pop().map(|x| x.samples).unwrap_or_default();
        prop_assert_eq!(read(&s), want.clone());
        s.flush().unwrap();
        s.compact(&everything(), 100).unwrap();
        prop_assert_eq!(read(&s), want);
    }
}

#[test]
fn log_entries_too_far_behind_are_refused_also_after_flush_and_restart() {
    let dir = tempfile::tempdir().unwrap();
    let opts = || LogStoreOptions { out_of_order_window: Duration::from_secs(3600), ..Default::default() };
    let labels = Labels::from_pairs([("job", "w")]).unwrap();
    let entry = |ts: i64, line: &str| Entry { ts, line: line.into(), metadata: vec![] };
    let push = |s: &LogStore, entries: Vec<Entry>| {
        s.push("t", vec![StreamEntries { labels: labels.clone(), entries }]).unwrap()
    };
    let hour = 3_600_000_000_000i64;
    let s = LogStore::open_with(dir.path(), opts()).unwrap();
    // within one write: the newest so far counts
    let out = push(&s, vec![entry(BASE_NS, "new"), entry(BASE_NS - 2 * hour, "old"), entry(BASE_NS - hour / 2, "ok")]);
    assert_eq!(out.accepted, 2);
    assert_eq!(out.rejected.len(), 1);
    assert_eq!(out.rejected[0].0, RejectReason::TooFarBehind);
    assert!(out.rejected[0].1.contains("entry too far behind"), "{}", out.rejected[0].1);
    assert!(out.rejected[0].1.contains(r#"{job="w"}"#), "{}", out.rejected[0].1);
    s.flush().unwrap();
    let out = push(&s, vec![entry(BASE_NS - 2 * hour, "old")]);
    assert_eq!((out.accepted, out.rejected.len()), (0, 1), "after a flush");
    drop(s);
    let s = LogStore::open_with(dir.path(), opts()).unwrap();
    let out = push(&s, vec![entry(BASE_NS - 2 * hour, "old"), entry(BASE_NS - hour / 4, "fine")]);
    assert_eq!((out.accepted, out.rejected.len()), (1, 1), "after a restart");
    // another stream has its own newest
    let other = Labels::from_pairs([("job", "other")]).unwrap();
    let out =
        s.push("t", vec![StreamEntries { labels: other, entries: vec![entry(BASE_NS - 5 * hour, "x")] }]).unwrap();
    assert_eq!((out.accepted, out.rejected.len()), (1, 0));
    // a zero window: strictly in order
    drop(s);
    let strict = LogStoreOptions { out_of_order_window: Duration::ZERO, ..Default::default() };
    let s = LogStore::open_with(dir.path(), strict).unwrap();
    let out = push(&s, vec![entry(BASE_NS - 1, "behind"), entry(BASE_NS, "same time is fine")]);
    assert_eq!(out.rejected.len(), 1);
    assert_eq!(out.rejected[0].0, RejectReason::OutOfOrder);
    assert_eq!(out.accepted, 1);
}
