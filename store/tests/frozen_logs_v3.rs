//! Frozen log block with version 3 chunks (framed: the version 2 head, then
//! the lines in several zstd frames with a content filter each, and a
//! metadata frame; `docs/format/logs.md`), written by compaction and
//! committed under `store/tests/frozen/logs-v3/`, read on every test run:
//! whole, and with line filters that must decompress only some frames.
//!
//! Regenerate only for a new format version, into a new directory:
//! `CAIRN_WRITE_FROZEN=1 cargo test -p cairn-store --test frozen_logs_v3 -- --ignored`.

mod common;

use std::path::PathBuf;

use cairn_store::logs::{LogStore, Order};
use cairn_store::{CompactionPolicy, WalOptions};
use cairn_wire::{Entry, StreamEntries};

fn frozen() -> PathBuf {
    common::frozen("logs-v3")
}

/// 8,000 entries, about 650 KB of lines: a first frame and three more;
/// two lines carry a rare token.
fn entries() -> Vec<Entry> {
    (0..8000i64)
        .map(|i| Entry {
            ts: 1_000_000_000 + i * 1_000_003 + (i % 3),
            line: format!(
                "level=info msg=\"request {i} done\" user=u{} path=/api/v1/items/{} took={}ms é{}",
                i * 7919 % 1000,
                i % 97,
                i % 250,
                match i {
                    300 => " QQJ7otherTOKEN",
                    7321 => " ZQX9rareTOKEN",
                    _ => "",
                }
            ),
            metadata: if i % 100 == 0 { vec![("trace_id".into(), format!("t{i}"))] } else { vec![] },
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
    let all = entries();
    for half in all.chunks(4000) {
        logs.push("t", vec![StreamEntries { labels: stream(), entries: half.to_vec() }]).unwrap();
        logs.flush().unwrap();
    }
    let policy = CompactionPolicy { ranges: vec![1 << 60], max_block_bytes: 0 };
    assert_eq!(logs.compact(&policy, 10).unwrap().blocks_merged, 2);
}

#[test]
fn reads_v3_log_chunks() {
    let (_tmp, s) = common::open_logs_copy(&frozen());
    assert_eq!(s.block_stats().0, 1, "one block");
    let got = common::read_frozen_stream(&s);
    let all = entries();
    assert_eq!(got, all);
    let raw: u64 = all.iter().map(|e| e.line.len() as u64).sum();
    // a needle in one line of the last frame, one in a metadata-carrying
    // line of the first, one in every line, one in none
    for (needle, want) in [
        (&b"ZQX9rareTOKEN"[..], vec![7321]),
        (b"QQJ7otherTOKEN", vec![300]),
        (b"level=info", (0..8000).collect()),
        (b"QQJ7otherTOKEN ZQX9", vec![]),
    ] {
        let (hits, st) = common::needle_hits(&s, needle, Order::Forward);
        let want: Vec<Entry> = want.into_iter().map(|i| all[i].clone()).collect();
        assert_eq!(hits, want, "{}", String::from_utf8_lossy(needle));
        if hits.len() <= 1 {
            assert!(st.bytes_decompressed < raw * 7 / 10, "only some frames: {} of {raw}", st.bytes_decompressed);
        }
    }
}
