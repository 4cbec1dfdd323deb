//! What was acknowledged survives a graceful restart and a SIGKILL.

use crate::harness::{Cairn, now_ns};

fn push_both(c: &Cairn, tag: &str, t0: i64) {
    let lines: Vec<(i64, String)> = (0..50).map(|i| (t0 + i, format!("{tag} {i}"))).collect();
    let (s, b) = c.push_logs_json(&[(&[("job", tag)], lines)]);
    assert_eq!(s, 204, "{b}");
    let samples: Vec<(i64, f64)> = (0..50).map(|i| (t0 / 1_000_000 + i * 1000, i as f64)).collect();
    let (s, b) = c.remote_write(&[(&[("__name__", "restart_metric"), ("tag", tag)], samples)]);
    assert_eq!(s, 204, "{b}");
}

fn count_both(c: &Cairn, tag: &str, t0: i64) -> (usize, usize) {
    let lines =
        c.loki_lines(&[("query", &format!(r#"{{job="{tag}"}}"#)), ("start", &(t0 - 1).to_string()), ("limit", "1000")]);
    let start = (t0 / 1_000_000_000).to_string();
    let end = (t0 / 1_000_000_000 + 49).to_string();
    let (s, v) = c.prom(
        "/api/v1/query_range",
        &[("query", &format!(r#"restart_metric{{tag="{tag}"}}"#)), ("start", &start), ("end", &end), ("step", "1")],
    );
    assert_eq!(s, 200, "{v}");
    let points =
        v["data"]["result"].as_array().unwrap().first().map(|s| s["values"].as_array().unwrap().len()).unwrap_or(0);
    (lines.len(), points)
}

#[test]
fn survives_graceful_restart() {
    let dir = tempfile::tempdir().unwrap();
    let t0 = (now_ns() / 1_000_000_000 - 120) * 1_000_000_000;
    let c = Cairn::serve(dir.path());
    push_both(&c, "graceful", t0);
    assert_eq!(count_both(&c, "graceful", t0), (50, 50));
    c.stop();
    let c = Cairn::serve(dir.path());
    assert_eq!(count_both(&c, "graceful", t0), (50, 50));
    // and keeps accepting writes after the restart
    push_both(&c, "second", t0);
    assert_eq!(count_both(&c, "second", t0), (50, 50));
    c.stop();
}

#[test]
fn survives_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let t0 = (now_ns() / 1_000_000_000 - 120) * 1_000_000_000;
    let c = Cairn::serve(dir.path());
    push_both(&c, "crash", t0);
    c.kill9();
    let c = Cairn::serve(dir.path());
    assert_eq!(count_both(&c, "crash", t0), (50, 50));
    c.stop();
}

#[test]
fn second_process_on_same_data_dir_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let c = Cairn::serve(dir.path());
    let (code, _, err) =
        crate::harness::run_cli(&["serve", "--listen", "127.0.0.1:0", "--data-dir", dir.path().to_str().unwrap()]);
    assert_ne!(code, 0);
    assert!(err.contains("in use by another process"), "{err}");
    c.stop();
}

/// With a tiny head, pushes are flushed to compressed blocks; the data stays
/// queryable, in order, across a SIGKILL restart, and the WAL shrinks.
#[test]
fn log_blocks_survive_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("cairn.toml");
    // compaction off: the test counts the flushed blocks on disk
    std::fs::write(&cfg, "[storage.logs]\nhead_max_size = \"16KiB\"\n[storage.compaction]\nranges = []\n").unwrap();
    let data = dir.path().join("data");
    let c = crate::harness::Cairn::start(&["serve"], &data, &["--config", cfg.to_str().unwrap()]);
    let t0 = (now_ns() / 1_000_000_000 - 600) * 1_000_000_000;
    for batch in 0..10 {
        let lines: Vec<(i64, String)> = (0..50)
            .map(|i| (t0 + (batch * 50 + i) * 1_000_000, format!("b{batch} l{i} {}", "x".repeat(100))))
            .collect();
        let (s, b) = c.push_logs_json(&[(&[("job", "blocks")], lines)]);
        assert_eq!(s, 204, "{b}");
    }
    wait_for_blocks(&c, "logs", 2);
    let q = [
        ("query", r#"{job="blocks"}"#),
        ("start", &*(t0 - 1).to_string()),
        ("limit", "5000"),
        ("direction", "forward"),
    ];
    let got = c.loki_lines(&q);
    assert_eq!(got.len(), 500);
    assert!(got.windows(2).all(|w| w[0].1 < w[1].1), "in time order across blocks and head");
    assert!(std::fs::read_dir(data.join("logs/blocks")).unwrap().count() >= 2);
    c.kill9();
    let c = crate::harness::Cairn::start(&["serve"], &data, &["--config", cfg.to_str().unwrap()]);
    let again = c.loki_lines(&q);
    assert_eq!(again, got);
    c.stop();
}

/// Waits until `/metrics` reports at least `n` blocks for `engine`.
fn wait_for_blocks(c: &crate::harness::Cairn, engine: &str, n: i64) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let prefix = format!("cairn_blocks{{engine=\"{engine}\"}}");
    loop {
        let (_, m) = c.get("/metrics");
        let blocks: i64 = m
            .lines()
            .find(|l| l.starts_with(&prefix))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        if blocks >= n {
            return;
        }
        assert!(std::time::Instant::now() < deadline, "fewer than {n} {engine} blocks were written:\n{m}");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

/// With a tiny head, samples are flushed to Gorilla-chunk blocks; range
/// queries over blocks and head give the same answer across a SIGKILL.
#[test]
fn metric_blocks_survive_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("cairn.toml");
    std::fs::write(&cfg, "[storage.metrics]\nhead_max_samples = 100\n").unwrap();
    let data = dir.path().join("data");
    let c = crate::harness::Cairn::start(&["serve"], &data, &["--config", cfg.to_str().unwrap()]);
    let t0 = (now_ns() / 1_000_000_000 - 3600) * 1000;
    for batch in 0..5i64 {
        let samples: Vec<(i64, f64)> =
            (0..60).map(|i| (t0 + (batch * 60 + i) * 10_000, (batch * 60 + i) as f64 * 1.5)).collect();
        let (s, b) = c.remote_write(&[(&[("__name__", "blocky"), ("job", "x")], samples)]);
        assert_eq!(s, 204, "{b}");
    }
    wait_for_blocks(&c, "metrics", 1);
    let (start, end) = ((t0 / 1000).to_string(), (t0 / 1000 + 2990).to_string());
    let q = [("query", "blocky"), ("start", start.as_str()), ("end", end.as_str()), ("step", "10")];
    let (s, v) = c.prom("/api/v1/query_range", &q);
    assert_eq!(s, 200, "{v}");
    let values = v["data"]["result"][0]["values"].clone();
    assert_eq!(values.as_array().unwrap().len(), 300);
    assert_eq!(values[299][1], "448.5");
    c.kill9();
    let c = crate::harness::Cairn::start(&["serve"], &data, &["--config", cfg.to_str().unwrap()]);
    let (_, v2) = c.prom("/api/v1/query_range", &q);
    assert_eq!(v2["data"]["result"][0]["values"], values);
    c.stop();
}

/// Blocks past `retention_time` are deleted and their data is gone from
/// queries; recent data stays; the deletion is counted in /metrics.
#[test]
fn retention_deletes_old_blocks() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("cairn.toml");
    std::fs::write(&cfg, "[storage.logs]\nhead_max_size = \"1KiB\"\nretention_time = \"1h\"\n").unwrap();
    let data = dir.path().join("data");
    let c = crate::harness::Cairn::start(&["serve"], &data, &["--config", cfg.to_str().unwrap()]);
    let old = now_ns() - 3 * 3_600_000_000_000;
    let (s, b) = c.push_logs_json(&[(
        &[("job", "old")],
        (0..20).map(|i| (old + i, format!("old {i} {}", "x".repeat(100)))).collect(),
    )]);
    assert_eq!(s, 204, "{b}");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let (_, m) = c.get("/metrics");
        if m.contains("cairn_retention_deleted_blocks_total{engine=\"logs\"} 1") {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "no block was deleted by retention:\n{m}");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let start = (old - 1).to_string();
    assert!(c.loki_lines(&[("query", r#"{job="old"}"#), ("start", &start)]).is_empty());
    let (s, _) = c.push_logs_json(&[(&[("job", "new")], vec![(now_ns() - 1000, "new line".into())])]);
    assert_eq!(s, 204);
    assert_eq!(c.loki_lines(&[("query", r#"{job="new"}"#)]).len(), 1);
    c.stop();
}
