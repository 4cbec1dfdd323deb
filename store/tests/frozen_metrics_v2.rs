//! Frozen metric files of block format version 2 (symbol table, postings,
//! `replaces` list, decimal and XOR chunks; `docs/format/tsdb.md`), read on
//! every test run: a compacted block (merged from two flushes, so it lists
//! what it replaced) and a WAL segment, the same data in two sets:
//! - `store/tests/frozen/metrics-v2/`: written with chunk encodings 0 and 1;
//! - `store/tests/frozen/metrics-v2-grid/`: written after encoding 3 ("grid
//!   decimal") became the encoding of decimal series.
//!
//! Regenerate only for a new format version, into a new directory (the
//! writer writes the newest set, [`NEWEST`]):
//! `CAIRN_WRITE_FROZEN=1 cargo test -p cairn-store --test frozen_metrics_v2 -- --ignored`.

mod common;

use std::path::PathBuf;

use common::copy_dir;

use cairn_store::metrics::MetricsStore;
use cairn_store::{CompactionPolicy, WalOptions};
use cairn_wire::{Labels, MatchOp, Matcher, SeriesSamples};

/// The set the current code writes.
const NEWEST: &str = "metrics-v2-grid";

/// (labels, samples): a decimal counter, an XOR series (thirds, a stale
/// marker), each written in two parts.
fn data(part: i64) -> Vec<SeriesSamples> {
    let base = 1_700_000_000_000 + part * 10 * 15_000;
    let l = |pairs: &[(&str, &str)]| Labels::from_pairs(pairs.iter().copied()).unwrap();
    let mut thirds: Vec<(i64, f64)> =
        (0..10).map(|i| (base + i * 15_000 + i % 3, (part * 10 + i) as f64 / 3.0)).collect();
    if part == 2 {
        thirds.push((base + 10 * 15_000, f64::from_bits(cairn_wire::STALE_NAN_BITS)));
    }
    vec![
        SeriesSamples {
            labels: l(&[("__name__", "frozen_total"), ("job", "frozen"), ("mode", "user")]),
            samples: (0..10).map(|i| (base + i * 15_000 - i % 2, ((part * 10 + i) as f64 * 1.25))).collect(),
        },
        SeriesSamples { labels: l(&[("__name__", "frozen_ratio"), ("job", "frozen")]), samples: thirds },
    ]
}

#[test]
#[ignore]
fn write_frozen_files() {
    if std::env::var("CAIRN_WRITE_FROZEN").is_err() {
        return;
    }
    let root = common::frozen(NEWEST);
    let _ = std::fs::remove_dir_all(&root);
    let s = MetricsStore::open(&root, WalOptions::default()).unwrap();
    for part in 0..2 {
        s.append("t", data(part)).unwrap();
        s.flush().unwrap();
    }
    let st = s.compact(&CompactionPolicy { ranges: vec![86_400_000], max_block_bytes: 0 }, 10).unwrap();
    assert_eq!(st.blocks_merged, 2);
    s.append("t", data(2)).unwrap();
}

#[test]
fn reads_v2_metrics() {
    check(common::frozen("metrics-v2"));
}

#[test]
fn reads_v2_grid_metrics() {
    check(common::frozen("metrics-v2-grid"));
}

fn check(frozen: PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    copy_dir(&frozen, tmp.path());
    let s = MetricsStore::open(tmp.path(), WalOptions::default()).unwrap();
    assert_eq!(s.block_stats().0, 1, "one compacted v2 block");
    let got = s.select("t", &[Matcher::new(MatchOp::NotEqual, "mode", "user").unwrap()], i64::MIN, i64::MAX);
    assert_eq!(got.len(), 1, "postings: only the series without mode=user");
    let want: Vec<Vec<SeriesSamples>> = (0..3).map(data).collect();
    for (i, name) in ["frozen_total", "frozen_ratio"].iter().enumerate() {
        let got = s.select("t", &[Matcher::equal("__name__", *name)], i64::MIN, i64::MAX);
        assert_eq!(got.len(), 1);
        let w: Vec<(i64, u64)> = want.iter().flat_map(|p| p[i].samples.iter().map(|x| (x.0, x.1.to_bits()))).collect();
        let g: Vec<(i64, u64)> = got[0].samples.iter().map(|x| (x.0, x.1.to_bits())).collect();
        assert_eq!(g, w, "{name}");
    }
}
