//! Compaction of log blocks through the shared protocol (`tiered.rs`): log
//! chunks and their filters are copied byte for byte; queries give the same
//! entries before and after, and after a restart; a crash after the rename
//! (sources still on disk) neither loses nor duplicates entries.

use cairn_store::logs::LogStore;
use cairn_store::{CompactionPolicy, WalOptions};
use cairn_wire::{Entry, Labels, Matcher, StreamEntries};

fn all(s: &LogStore) -> Vec<(Labels, Entry)> {
    let mut got = Vec::new();
    s.try_scan("t", &[Matcher::equal("job", "x")], i64::MIN, i64::MAX, &mut |l, es| {
        got.extend(es.iter().map(|e| (l.clone(), e.clone())));
    })
    .unwrap();
    got.sort_by(|a, b| (a.1.ts, &a.0, &a.1.line).cmp(&(b.1.ts, &b.0, &b.1.line)));
    got
}

#[test]
fn log_blocks_compact_and_survive_a_crash() {
    let d = tempfile::tempdir().unwrap();
    let base = 1_700_000_000_000_000_000i64;
    let s = LogStore::open(d.path(), WalOptions::default()).unwrap();
    for block in 0..4i64 {
        let streams = (0..3)
            .map(|k| StreamEntries {
                labels: Labels::from_pairs([("job", "x".to_string()), ("k", format!("{k}"))]).unwrap(),
                entries: (0..20)
                    .map(|i| Entry {
                        ts: base + (block * 20 + i) * 1_000_000_000,
                        line: format!("block {block} stream {k} line {i} ZQX{block}"),
                        metadata: vec![],
                    })
                    .collect(),
            })
            .collect();
        s.push("t", streams).unwrap();
        s.flush().unwrap();
    }
    let before = all(&s);
    assert_eq!(before.len(), 240);
    let saved: Vec<_> = std::fs::read_dir(d.path().join("blocks"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .map(|p| (p.clone(), std::fs::read(&p).unwrap()))
        .collect();
    assert_eq!(saved.len(), 4);
    let policy = CompactionPolicy { ranges: vec![3_600_000_000_000], max_block_bytes: 0 };
    let st = s.compact(&policy, 10).unwrap();
    assert_eq!((st.runs, st.blocks_merged), (1, 4));
    assert_eq!(s.block_stats().0, 1);
    assert_eq!(all(&s), before);
    drop(s);
    let s = LogStore::open(d.path(), WalOptions::default()).unwrap();
    assert_eq!(all(&s), before);
    drop(s);
    // crash after the rename: the older sources are still there
    for (p, b) in &saved {
        if !p.exists() {
            std::fs::write(p, b).unwrap();
        }
    }
    assert_eq!(std::fs::read_dir(d.path().join("blocks")).unwrap().count(), 4);
    let s = LogStore::open(d.path(), WalOptions::default()).unwrap();
    assert_eq!(s.block_stats().0, 1, "replaced blocks removed at start");
    assert_eq!(all(&s), before, "nothing counted twice");
}
