//! Frozen log block with version 2 chunks (columnar: timestamps and line
//! lengths, then lines and metadata; `docs/format/logs.md`) and the
//! adaptive trigram filter, committed under `store/tests/frozen/logs-v2/`
//! and read on every test run, with a line filter so the filter is used.
//!
//! Regenerate only for a new format version, into a new directory:
//! `CAIRN_WRITE_FROZEN=1 cargo test -p cairn-store --test frozen_logs_v2 -- --ignored`.

mod common;

use std::path::PathBuf;

use cairn_store::WalOptions;
use cairn_store::logs::{LogStore, Order};
use cairn_wire::{Entry, StreamEntries};

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

use common::frozen_stream as stream;

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
    let (_tmp, s) = common::open_logs_copy(&frozen());
    assert_eq!(s.block_stats().0, 1, "one block");
    assert_eq!(common::read_frozen_stream(&s), entries());
    let (hits, st) = common::needle_hits(&s, b"request 42 ", Order::Backward);
    assert_eq!(hits, vec![entries()[42].clone()]);
    assert_eq!(st.chunks, 1);
}
