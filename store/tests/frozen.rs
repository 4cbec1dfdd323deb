//! Frozen on-disk files of format version 1 (WAL segments and blocks of both
//! engines), committed under `store/tests/frozen/v1/`, are read on every test
//! run: a change that cannot read them breaks compatibility and must come
//! with a new version and a migration note (STYLE.md, "Compatibility").
//!
//! Regenerate only for a new format version, into a new directory:
//! `CAIRN_WRITE_FROZEN=1 cargo test -p cairn-store --test frozen -- --ignored`.

mod common;

use std::path::PathBuf;

use common::copy_dir;

use cairn_store::WalOptions;
use cairn_store::logs::LogStore;
use cairn_store::metrics::MetricsStore;
use cairn_wire::{Entry, Labels, Matcher, SeriesSamples, StreamEntries};

fn frozen() -> PathBuf {
    common::frozen("v1")
}

fn entries(prefix: &str, base: i64) -> Vec<Entry> {
    (0..5)
        .map(|i| Entry {
            ts: base + i,
            line: format!("{prefix} line {i} é"),
            metadata: if i == 0 { vec![("trace_id".into(), "abc".into())] } else { vec![] },
        })
        .collect()
}

fn samples(base: i64) -> Vec<(i64, f64)> {
    let mut s: Vec<(i64, f64)> = (0..5).map(|i| (base + i * 15_000, i as f64 * 0.5)).collect();
    s.push((base + 5 * 15_000, f64::from_bits(cairn_wire::STALE_NAN_BITS)));
    s
}

use common::frozen_stream as stream;

fn series() -> Labels {
    Labels::from_pairs([("__name__", "frozen_metric"), ("job", "frozen")]).unwrap()
}

/// Writes the v1 sample directories: one block (flushed data) and one WAL
/// segment (unflushed data) per engine.
#[test]
#[ignore]
fn write_frozen_files() {
    if std::env::var("CAIRN_WRITE_FROZEN").is_err() {
        return;
    }
    let root = frozen();
    let _ = std::fs::remove_dir_all(&root);
    let logs = LogStore::open(&root.join("logs"), WalOptions::default()).unwrap();
    logs.push("t", vec![StreamEntries { labels: stream(), entries: entries("block", 1_000) }]).unwrap();
    logs.flush().unwrap();
    logs.push("t", vec![StreamEntries { labels: stream(), entries: entries("wal", 2_000) }]).unwrap();
    let metrics = MetricsStore::open(&root.join("metrics"), WalOptions::default()).unwrap();
    metrics.append("t", vec![SeriesSamples { labels: series(), samples: samples(0) }]).unwrap();
    metrics.flush().unwrap();
    metrics.append("t", vec![SeriesSamples { labels: series(), samples: samples(1_000_000) }]).unwrap();
}

#[test]
fn reads_v1_logs() {
    let (_tmp, s) = common::open_logs_copy(&frozen().join("logs"));
    let got = common::read_frozen_stream(&s);
    let mut want = entries("block", 1_000);
    want.extend(entries("wal", 2_000));
    assert_eq!(got, want);
    assert_eq!(s.block_stats().0, 1, "one v1 block");
}

#[test]
fn reads_v1_metrics() {
    let tmp = tempfile::tempdir().unwrap();
    copy_dir(&frozen().join("metrics"), tmp.path());
    let s = MetricsStore::open(tmp.path(), WalOptions::default()).unwrap();
    let got = s.select("t", &[Matcher::equal("job", "frozen")], i64::MIN, i64::MAX);
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].labels, series());
    let mut want = samples(0);
    want.extend(samples(1_000_000));
    assert_eq!(got[0].samples.len(), want.len());
    for (g, w) in got[0].samples.iter().zip(&want) {
        assert_eq!((g.0, g.1.to_bits()), (w.0, w.1.to_bits()));
    }
    assert_eq!(s.block_stats().0, 1, "one v1 block");
}
