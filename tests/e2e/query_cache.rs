//! The PromQL range-query result cache (`query.result_cache_size`) against
//! the real binary: a repeated query is answered from the cache, a write
//! into the cached range (a backfilled series, an out-of-order sample)
//! changes the next answer, `nocache=1` skips the cache, and `/metrics`
//! counts hits, misses and invalidations.

use serde_json::Value;

use crate::harness::{Cairn, TestLabels, now_ns};

fn cache_counter(c: &Cairn, name: &str) -> f64 {
    let (s, body) = c.get("/metrics");
    assert_eq!(s, 200);
    body.lines()
        .find(|l| l.starts_with(name) && !l.starts_with('#'))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

fn sum_at_steps(c: &Cairn, start: i64, end: i64, extra: &[(&str, &str)]) -> Vec<(i64, String)> {
    let (s, e) = ((start / 1000).to_string(), (end / 1000).to_string());
    let mut params = vec![("query", "sum(cache_test)"), ("start", s.as_str()), ("end", e.as_str()), ("step", "60")];
    params.extend_from_slice(extra);
    let (status, v): (u16, Value) = c.prom("/api/v1/query_range", &params);
    assert_eq!(status, 200, "{v}");
    let result = v["data"]["result"].as_array().unwrap();
    assert_eq!(result.len(), 1, "{v}");
    result[0]["values"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p[0].as_i64().unwrap(), p[1].as_str().unwrap().to_string()))
        .collect()
}

#[test]
fn a_write_into_a_cached_range_changes_the_next_answer() {
    let dir = tempfile::tempdir().unwrap();
    let c = Cairn::serve(dir.path());
    // Two hours of a series at 15 s, ending 30 minutes ago (older than
    // the cache's 5-minute timestamp offset).
    let now = now_ns() / 1_000_000;
    let end = (now - 30 * 60_000) / 60_000 * 60_000;
    let start = end - 120 * 60_000;
    let a: TestLabels = &[("__name__", "cache_test"), ("job", "a")];
    let pts: Vec<(i64, f64)> = (0..=480).map(|i| (start + i * 15_000, 1.0)).collect();
    let (s, b) = c.remote_write(&[(a, pts)]);
    assert_eq!(s, 204, "{b}");

    let first = sum_at_steps(&c, start, end, &[]);
    assert_eq!(first.len(), 121);
    assert!(first.iter().all(|p| p.1 == "1"), "{first:?}");
    let hits = cache_counter(&c, "cairn_query_result_cache_requests_total{result=\"hit\"}");
    assert_eq!(sum_at_steps(&c, start, end, &[]), first);
    assert_eq!(cache_counter(&c, "cairn_query_result_cache_requests_total{result=\"hit\"}"), hits + 1.0);

    // A new series backfilled into the cached range: the next answer has it.
    let b_series: TestLabels = &[("__name__", "cache_test"), ("job", "b")];
    let t = start + 60 * 60_000;
    let (s, body) = c.remote_write(&[(b_series, vec![(t, 2.0), (t + 9 * 60_000, 2.0)])]);
    assert_eq!(s, 204, "{body}");
    let second = sum_at_steps(&c, start, end, &[]);
    let at = |v: &[(i64, String)], t: i64| v.iter().find(|p| p.0 * 1000 == t).map(|p| p.1.clone());
    assert_eq!(at(&second, t).as_deref(), Some("3"), "{second:?}");
    assert_eq!(at(&second, t + 4 * 60_000).as_deref(), Some("3"));
    assert_eq!(at(&second, t + 7 * 60_000).as_deref(), Some("1"), "past the lookback");
    assert!(cache_counter(&c, "cairn_query_result_cache_invalidations_total") >= 1.0);

    // An out-of-order sample of that series (older than its newest, within
    // the out-of-order window): the same.
    assert_eq!(sum_at_steps(&c, start, end, &[]), second);
    let (s, body) = c.remote_write(&[(b_series, vec![(t + 6 * 60_000 + 30_000, 5.0)])]);
    assert_eq!(s, 204, "{body}");
    let third = sum_at_steps(&c, start, end, &[]);
    assert_eq!(at(&third, t + 7 * 60_000).as_deref(), Some("6"), "{third:?}");
    assert_eq!(at(&third, t + 8 * 60_000).as_deref(), Some("6"));
    let changed: Vec<usize> = (0..third.len()).filter(|&i| third[i] != second[i]).collect();
    assert_eq!(changed.len(), 2, "{changed:?}");

    // nocache=1 skips the cache (and answers the same).
    let bypass = cache_counter(&c, "cairn_query_result_cache_requests_total{result=\"bypass\"}");
    assert_eq!(sum_at_steps(&c, start, end, &[("nocache", "1")]), third);
    assert_eq!(cache_counter(&c, "cairn_query_result_cache_requests_total{result=\"bypass\"}"), bypass + 1.0);
    assert!(cache_counter(&c, "cairn_query_result_cache_requests_total{result=\"miss\"}") >= 3.0);
    c.stop();
}

#[test]
fn the_cache_can_be_turned_off() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("cairn.toml");
    std::fs::write(&cfg, "[query]\nresult_cache_size = 0\n").unwrap();
    let c = Cairn::start(&["serve"], &dir.path().join("data"), &["--config", cfg.to_str().unwrap()]);
    let now = now_ns() / 1_000_000;
    let end = (now - 30 * 60_000) / 60_000 * 60_000;
    let start = end - 20 * 60_000;
    let a: TestLabels = &[("__name__", "cache_test"), ("job", "a")];
    let (s, b) = c.remote_write(&[(a, (0..=80).map(|i| (start + i * 15_000, 1.0)).collect())]);
    assert_eq!(s, 204, "{b}");
    assert_eq!(sum_at_steps(&c, start, end, &[]), sum_at_steps(&c, start, end, &[]));
    assert_eq!(cache_counter(&c, "cairn_query_result_cache_requests_total{result=\"bypass\"}"), 2.0);
    assert_eq!(cache_counter(&c, "cairn_query_result_cache_requests_total{result=\"hit\"}"), 0.0);
    c.stop();
}
