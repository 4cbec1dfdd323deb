//! Damaged files at start-up: a torn WAL tail and a block whose index is
//! unreadable. The server starts, serves everything intact, sets the bad
//! block aside as `*.blk.corrupt`, and reports both in its log and in
//! `/metrics` (`cairn_recovery`), for both engines.

use std::fs::{self, OpenOptions};
use std::path::{Path, PathBuf};

use crate::harness::{Cairn, now_ns};

fn push(c: &Cairn, tag: &str, t0: i64) {
    let lines: Vec<(i64, String)> = (0..20).map(|i| (t0 + i, format!("{tag} line {i}"))).collect();
    let (s, b) = c.push_logs_json(&[(&[("job", "recovery"), ("part", tag)], lines)]);
    assert_eq!(s, 204, "{b}");
    let samples: Vec<(i64, f64)> = (0..20).map(|i| (t0 / 1_000_000 + i * 1000, i as f64)).collect();
    let (s, b) = c.remote_write(&[(&[("__name__", "recovery_metric"), ("part", tag)], samples)]);
    assert_eq!(s, 204, "{b}");
}

/// The parts whose lines and samples are all there; panics on a part only
/// partly there.
fn parts(c: &Cairn, t0: i64) -> (Vec<String>, Vec<String>) {
    let lines = c.loki_lines(&[
        ("query", r#"{job="recovery"}"#),
        ("start", &(t0 - 1).to_string()),
        ("end", &(t0 + 1_000).to_string()),
        ("limit", "1000"),
    ]);
    let part_of = |line: &str| line.split(' ').next().unwrap_or_default().to_string();
    let mut log_parts: Vec<String> = lines.iter().map(|(_, _, l)| part_of(l)).collect();
    log_parts.sort();
    log_parts.dedup();
    for p in &log_parts {
        let n = lines.iter().filter(|(_, _, l)| &part_of(l) == p).count();
        assert_eq!(n, 20, "stream {p} partly there");
    }
    let (s, v) = c.prom(
        "/api/v1/query",
        &[("query", "count_over_time(recovery_metric[1m])"), ("time", &(t0 / 1_000_000_000 + 30).to_string())],
    );
    assert_eq!(s, 200, "{v}");
    let mut metric_parts = Vec::new();
    for r in v["data"]["result"].as_array().unwrap() {
        assert_eq!(r["value"][1], "20", "series partly there: {r}");
        metric_parts.push(r["metric"]["part"].as_str().unwrap().to_string());
    }
    metric_parts.sort();
    (log_parts, metric_parts)
}

fn files(dir: &Path, ext: &str) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> =
        fs::read_dir(dir).unwrap().map(|e| e.unwrap().path()).filter(|p| p.to_string_lossy().ends_with(ext)).collect();
    v.sort();
    v
}

fn recovery_gauge(c: &Cairn, engine: &str, finding: &str) -> f64 {
    let (_, m) = c.get("/metrics");
    let key = format!("cairn_recovery{{engine=\"{engine}\",finding=\"{finding}\"}}");
    m.lines()
        .find_map(|l| l.strip_prefix(&key))
        .unwrap_or_else(|| panic!("{key} missing from /metrics:\n{m}"))
        .trim()
        .parse()
        .unwrap()
}

#[test]
fn torn_wal_tail_and_corrupt_block_are_recovered_and_reported() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    // No compaction: the test needs the blocks exactly as flushed.
    let cfg = dir.path().join("cairn.toml");
    fs::write(&cfg, "[storage.compaction]\nranges = []\n").unwrap();
    let args = ["--config", cfg.to_str().unwrap()];
    let t0 = (now_ns() / 1_000_000_000 - 300) * 1_000_000_000;

    // Part a and part b each end up in a block (a graceful stop flushes);
    // c and d stay in the WAL.
    for part in ["a", "b"] {
        let c = Cairn::start(&["serve"], &data, &args);
        push(&c, part, t0);
        c.stop();
    }
    let c = Cairn::start(&["serve"], &data, &args);
    push(&c, "c", t0);
    push(&c, "d", t0);
    assert_eq!(
        parts(&c, t0),
        (vec!["a".into(), "b".into(), "c".into(), "d".into()], vec!["a".into(), "b".into(), "c".into(), "d".into()])
    );
    c.kill9();

    for engine in ["logs", "metrics"] {
        // Damage the index of the newer block (the bytes just before the footer).
        let blocks = files(&data.join(engine).join("blocks"), ".blk");
        assert_eq!(blocks.len(), 2, "{blocks:?}");
        let mut b = fs::read(&blocks[1]).unwrap();
        let n = b.len();
        b[n - 70] ^= 0xff;
        fs::write(&blocks[1], &b).unwrap();
        // Tear the WAL's last record (part d's) in the middle.
        let wal = files(&data.join(engine).join("wal"), ".wal");
        let newest = wal.iter().rev().find(|p| fs::metadata(p).unwrap().len() > 16).unwrap();
        let len = fs::metadata(newest).unwrap().len();
        OpenOptions::new().write(true).open(newest).unwrap().set_len(len - 5).unwrap();
    }

    let c = Cairn::start(&["serve"], &data, &args);
    assert_eq!(parts(&c, t0), (vec!["a".into(), "c".into()], vec!["a".into(), "c".into()]));
    for engine in ["logs", "metrics"] {
        assert_eq!(recovery_gauge(&c, engine, "corrupt_blocks"), 1.0, "{engine}");
        assert!(recovery_gauge(&c, engine, "wal_torn_tail_bytes") > 0.0, "{engine}");
        assert_eq!(files(&data.join(engine).join("blocks"), ".corrupt").len(), 1, "{engine}");
    }
    // Still writable, and the set-aside block stays reported until removed.
    push(&c, "e", t0 + 100);
    c.stop();
    let c = Cairn::start(&["serve"], &data, &args);
    for engine in ["logs", "metrics"] {
        assert_eq!(recovery_gauge(&c, engine, "corrupt_blocks"), 1.0, "{engine}");
        assert_eq!(recovery_gauge(&c, engine, "wal_torn_tail_bytes"), 0.0, "{engine}");
    }
    c.stop();
}
