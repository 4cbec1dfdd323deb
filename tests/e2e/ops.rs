//! /ready, /metrics and the two build-info endpoints.

use crate::harness::{Cairn, now_ns};

#[test]
fn ready_metrics_and_buildinfo() {
    let dir = tempfile::tempdir().unwrap();
    let c = Cairn::serve(dir.path());
    assert_eq!(c.get("/ready"), (200, "ready\n".to_string()));

    // Prometheus buildinfo: wrapped in status/data, no `features` (so Grafana
    // detects plain Prometheus).
    let (s, v) = c.prom("/api/v1/status/buildinfo", &[]);
    assert_eq!(s, 200);
    assert_eq!(v["status"], "success");
    for k in ["version", "revision", "branch", "buildUser", "buildDate", "goVersion"] {
        assert!(v["data"][k].is_string(), "missing {k}: {v}");
    }
    assert!(v["data"].get("features").is_none());
    // Loki buildinfo: bare object.
    let (s, v) = c.prom("/loki/api/v1/status/buildinfo", &[]);
    assert_eq!(s, 200);
    for k in ["version", "revision", "branch", "buildUser", "buildDate", "goVersion"] {
        assert!(v[k].is_string(), "missing {k}: {v}");
    }

    // Self metrics move with ingest and queries.
    let (s, _) = c.push_logs_json(&[(&[("job", "m")], vec![(now_ns() - 1000, "hello".into())])]);
    assert_eq!(s, 204);
    let (s, _) = c.remote_write(&[(&[("__name__", "x")], vec![(now_ns() / 1_000_000, 1.0)])]);
    assert_eq!(s, 204);
    let _ = c.loki_lines(&[("query", r#"{job="m"}"#)]);
    let _ = c.prom("/api/v1/query", &[("query", "x")]);
    let (s, m) = c.get("/metrics");
    assert_eq!(s, 200);
    for want in [
        "cairn_ingest_lines_total 1",
        "cairn_ingest_samples_total 1",
        "cairn_ingest_line_bytes_total 5",
        "cairn_query_requests_total{api=\"loki_query_range\"} 1",
        "cairn_query_requests_total{api=\"prometheus_query\"} 1",
        "cairn_query_duration_seconds_bucket{",
        "cairn_wal_size_bytes{engine=\"logs\"}",
        "cairn_wal_size_bytes{engine=\"metrics\"}",
    ] {
        assert!(m.contains(want), "/metrics lacks {want:?}:\n{m}");
    }
    assert_eq!(c.get("/no/such/path").0, 404);
    c.stop();
}
