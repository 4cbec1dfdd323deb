//! Frozen log block with version 2 chunks (columnar: timestamps and line
//! lengths, then lines and metadata; `docs/format/logs.md`) and the
//! adaptive trigram filter, committed under `store/tests/frozen/logs-v2/`
//! and read on every test run, with a line filter so the filter is used.
//!
//! Regenerate only for a new format version, into a new directory:
//! `CAIRN_WRITE_FROZEN=1 cargo test -p cairn-store --test frozen_logs_v2 -- --ignored`.

mod common;

use std::path::PathBuf;

use common::copy_dir;

use cairn_store::WalOptions;
use cairn_store::logs::{LogStore, Order, ScanRequest};
use cairn_wire::{Entry, Labels, Matcher, StreamEntries};

fn frozen() -> PathBuf {
    common::frozen("logs-v2")
}

fn entries() -> Vec<Entry> {
    (0..50)
        .map(|i| Entry {
            ts: 1_000_000_000 + i * 1_000_003 + (i % 3),
            line: format!("level=info msg=\"request {i} done\" took={}ms é", i * 7),
            metadata: if i % 10 == 0 { vec![("trace_id".into(), format!("t{i}"))] } else { vec![] },
        })
        .collect()
}

fn stream() -> Labels {
    Labels::from_pairs([("job", "frozen")]).unwrap()
}

#[test]
#[ignore]
fn write_frozen_files() {
    if std::env::var("CAIRN_WRITE_FROZEN").is_err() {
        return;
    }
    let root = frozen();
    let _ = std::fs::remove_dir_all(&root);
    let logs = LogStore::open(&root, WalOptions::default()).unwrap();
    logs.push("t", vec![StreamEntries { labels: stream(), entries: entries() }]).unwrap();
    logs.flush().unwrap();
}

#[test]
fn reads_v2_log_chunks() {
    let tmp = tempfile::tempdir().unwrap();
    copy_dir(&frozen(), tmp.path());
    let s = LogStore::open(tmp.path(), WalOptions::default()).unwrap();
    assert_eq!(s.block_stats().0, 1, "one block");
    let mut got = Vec::new();
    s.try_scan("t", &[Matcher::equal("job", "frozen")], 0, i64::MAX, &mut |l, es| {
        assert_eq!(l, &stream());
        got.extend_from_slice(es);
    })
    .unwrap();
    assert_eq!(got, entries());
    let mut hits = Vec::new();
    let req = ScanRequest {
        tenant: "t",
        matchers: &[],
        start: 0,
        end: i64::MAX,
        needles: &[b"request 42 "],
        order: Order::Backward,
    };
    let st = s
        .scan_entries(&req, &mut |_, b| {
            hits.extend(b.iter().map(|e| e.to_owned()));
            None
        })
        .unwrap();
    assert_eq!(hits, vec![entries()[42].clone()]);
    assert_eq!(st.chunks, 1);
}
