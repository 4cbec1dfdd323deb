//! The read-only open (`LogStore::open_read_only`,
//! `MetricsStore::open_read_only`): it sees blocks and WAL alike, changes
//! nothing on disk (not even a torn tail), takes no lock, refuses writes,
//! and works next to a store that keeps writing, flushing and compacting.

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use cairn_store::logs::LogStore;
use cairn_store::metrics::MetricsStore;
use cairn_store::{CompactionPolicy, StoreError, WalOptions};
use cairn_wire::{Entry, Labels, Matcher, SeriesSamples, StreamEntries};

const BASE: i64 = 1_700_000_000_000_000_000;

fn batch(from: i64, n: i64) -> Vec<StreamEntries> {
    (0..2)
        .map(|k| StreamEntries {
            labels: Labels::from_pairs([("job", "x".to_string()), ("k", format!("{k}"))]).unwrap(),
            entries: (from..from + n)
                .map(|i| Entry { ts: BASE + i * 1_000_000, line: format!("stream {k} line {i}"), metadata: vec![] })
                .collect(),
        })
        .collect()
}

fn lines(s: &LogStore) -> Vec<(i64, String)> {
    let mut got = Vec::new();
    s.try_scan("t", &[Matcher::equal("job", "x")], i64::MIN, i64::MAX, &mut |_, es| {
        got.extend(es.iter().map(|e| (e.ts, e.line.clone())));
    })
    .unwrap();
    got.sort();
    got
}

/// Every file under `dir` with its size, inode and modification time.
fn snapshot(dir: &Path) -> BTreeMap<String, (u64, u64, i64, i64)> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            let m = e.metadata().unwrap();
            if m.is_dir() {
                stack.push(e.path());
            }
            out.insert(e.path().display().to_string(), (m.len(), m.ino(), m.mtime(), m.mtime_nsec()));
        }
    }
    out
}

#[test]
fn read_only_open_sees_blocks_and_wal_and_changes_nothing() {
    let d = tempfile::tempdir().unwrap();
    let w = LogStore::open(d.path(), WalOptions::default()).unwrap();
    w.push("t", batch(0, 50)).unwrap();
    w.flush().unwrap();
    w.push("t", batch(50, 30)).unwrap();
    // The writer stays open (as a running server would), and a torn record
    // sits at the end of the newest WAL segment.
    let wal = d.path().join("wal");
    let newest = std::fs::read_dir(&wal).unwrap().map(|e| e.unwrap().path()).max().unwrap();
    let mut bytes = std::fs::read(&newest).unwrap();
    bytes.extend_from_slice(&[40, 0, 0, 0, 1, 2]);
    std::fs::write(&newest, &bytes).unwrap();
    let before = snapshot(d.path());

    let r = LogStore::open_read_only(d.path()).unwrap();
    assert_eq!(lines(&r), lines(&w));
    assert_eq!(lines(&r).len(), 160);
    assert_eq!(r.replay_stats().torn_tail_bytes, 6);
    assert!(matches!(r.push("t", batch(100, 1)), Err(StoreError::ReadOnly { .. })));
    assert!(matches!(r.flush(), Err(StoreError::ReadOnly { .. })));
    assert!(matches!(r.apply_retention(Some(i64::MAX), 0), Err(StoreError::ReadOnly { .. })));
    let policy = CompactionPolicy { ranges: vec![i64::MAX], max_block_bytes: 0 };
    assert!(matches!(r.compact(&policy, 1), Err(StoreError::ReadOnly { .. })));
    drop(r);
    assert_eq!(snapshot(d.path()), before, "the read-only open changed the directory");
}

#[test]
fn read_only_open_of_missing_or_empty_directory_is_empty() {
    let d = tempfile::tempdir().unwrap();
    let gone = d.path().join("nothing-here");
    let r = LogStore::open_read_only(&gone).unwrap();
    assert!(lines(&r).is_empty());
    assert!(!gone.exists(), "read-only open created the directory");
    let m = MetricsStore::open_read_only(&gone).unwrap();
    assert!(m.select("t", &[Matcher::equal("__name__", "up")], i64::MIN, i64::MAX).is_empty());
    assert!(!gone.exists());
}

#[test]
fn read_only_metrics_store_sees_samples() {
    let d = tempfile::tempdir().unwrap();
    let w = MetricsStore::open(d.path(), WalOptions::default()).unwrap();
    let series = |from: i64| {
        vec![SeriesSamples {
            labels: Labels::from_pairs([("__name__", "up"), ("job", "x")]).unwrap(),
            samples: (from..from + 10).map(|i| (1_700_000_000_000 + i * 1000, i as f64)).collect(),
        }]
    };
    w.append("t", series(0)).unwrap();
    w.flush().unwrap();
    w.append("t", series(10)).unwrap();
    let r = MetricsStore::open_read_only(d.path()).unwrap();
    let got = r.select("t", &[Matcher::equal("job", "x")], i64::MIN, i64::MAX);
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].samples.len(), 20);
    assert!(matches!(r.append("t", series(20)), Err(StoreError::ReadOnly { .. })));
}

#[test]
fn read_only_opens_next_to_a_busy_writer_see_every_entry_once() {
    let d = tempfile::tempdir().unwrap();
    let w = std::sync::Arc::new(LogStore::open(d.path(), WalOptions::default()).unwrap());
    w.push("t", batch(0, 10)).unwrap();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let (w, stop) = (w.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut i = 10;
            let policy = CompactionPolicy { ranges: vec![i64::MAX / 2], max_block_bytes: 0 };
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                w.push("t", batch(i, 5)).unwrap();
                i += 5;
                if i % 20 == 0 {
                    w.flush().unwrap();
                }
                if i % 60 == 0 {
                    w.compact(&policy, 2).unwrap();
                }
            }
        })
    };
    for _ in 0..30 {
        let r = LogStore::open_read_only(d.path()).unwrap();
        let got = lines(&r);
        // Every entry the writer had pushed is there exactly once: per
        // stream, lines 0..n with no gap and no repeat.
        for k in 0..2 {
            let idx: Vec<i64> = got
                .iter()
                .filter(|(_, l)| l.starts_with(&format!("stream {k} ")))
                .map(|(_, l)| l.rsplit(' ').next().unwrap().parse().unwrap())
                .collect();
            assert!(idx.len() >= 10);
            assert!(idx.iter().enumerate().all(|(i, &x)| x == i as i64), "gap or repeat in {idx:?}");
        }
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    writer.join().unwrap();
}
