//! remote_write → /api/v1/query and /api/v1/query_range, GET and POST.

use serde_json::json;

use crate::harness::{Cairn, TestLabels, now_ns};

fn seed(c: &Cairn) -> i64 {
    // Whole-second base so timestamps print as integers.
    let t0 = (now_ns() / 1_000_000 / 1000 - 600) * 1000;
    let series: Vec<(TestLabels, Vec<(i64, f64)>)> = vec![
        (
            &[("__name__", "node_load1"), ("instance", "a"), ("job", "node")],
            (0..10).map(|i| (t0 + i * 15_000, i as f64 * 0.5)).collect(),
        ),
        (
            &[("__name__", "node_load1"), ("instance", "b"), ("job", "node")],
            (0..10).map(|i| (t0 + i * 15_000, 2.0)).collect(),
        ),
        (&[("__name__", "up"), ("instance", "a"), ("job", "node")], vec![(t0, 1.0)]),
    ];
    let (s, b) = c.remote_write(&series);
    assert_eq!(s, 204, "remote_write failed: {b}");
    t0
}

#[test]
fn remote_write_then_instant_query() {
    let dir = tempfile::tempdir().unwrap();
    let c = Cairn::serve(dir.path());
    let t0 = seed(&c);
    let t = ((t0 + 135_000) / 1000).to_string();
    let (s, v) = c.prom("/api/v1/query", &[("query", "node_load1"), ("time", &t)]);
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["status"], "success");
    assert_eq!(v["data"]["resultType"], "vector");
    let r = v["data"]["result"].as_array().unwrap();
    assert_eq!(r.len(), 2);
    assert_eq!(r[0]["metric"], json!({"__name__": "node_load1", "instance": "a", "job": "node"}));
    assert_eq!(r[0]["value"], json!([(t0 + 135_000) / 1000, "4.5"]));
    // all four matcher kinds
    for (q, n) in [
        (r#"node_load1{instance="b"}"#, 1),
        (r#"node_load1{instance!="b"}"#, 1),
        (r#"{__name__=~"node_.*|up", job="node"}"#, 3),
        (r#"{__name__=~".+", instance!~"a"}"#, 1),
    ] {
        let (s, v) = c.prom("/api/v1/query", &[("query", q), ("time", &t)]);
        assert_eq!(s, 200, "{q}: {v}");
        assert_eq!(v["data"]["result"].as_array().unwrap().len(), n, "{q}: {v}");
    }
    // POST form, as Grafana sends by default
    let (s, body) = c.post_form("/api/v1/query", &[("query", "1+1"), ("time", &t)]);
    assert_eq!(s, 200);
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["data"], json!({"resultType": "scalar", "result": [(t0 + 135_000) / 1000, "2"]}));
}

#[test]
fn remote_write_then_range_query() {
    let dir = tempfile::tempdir().unwrap();
    let c = Cairn::serve(dir.path());
    let t0 = seed(&c);
    let start = (t0 / 1000).to_string();
    let end = ((t0 + 135_000) / 1000).to_string();
    let params =
        [("query", r#"node_load1{instance="a"}"#), ("start", start.as_str()), ("end", end.as_str()), ("step", "45s")];
    let (s, v) = c.prom("/api/v1/query_range", &params);
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["data"]["resultType"], "matrix");
    let vals = &v["data"]["result"][0]["values"];
    let secs = t0 / 1000;
    assert_eq!(*vals, json!([[secs, "0"], [secs + 45, "1.5"], [secs + 90, "3"], [secs + 135, "4.5"]]));
    // POST form gives the same answer; step as float seconds
    let (s, body) = c.post_form(
        "/api/v1/query_range",
        &[("query", r#"node_load1{instance="a"}"#), ("start", &start), ("end", &end), ("step", "45")],
    );
    assert_eq!(s, 200);
    let v2: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v2["data"], v["data"]);
    // empty result is [], never null
    let (_, v) =
        c.prom("/api/v1/query_range", &[("query", "nothing_here"), ("start", &start), ("end", &end), ("step", "15s")]);
    assert_eq!(v["data"]["result"], json!([]));
}

/// `storage.metrics.out_of_order_window`: late samples inside the window are
/// stored and merged in order; older ones get a 400 naming "too old sample"
/// and are counted by reason in /metrics.
#[test]
fn out_of_order_window_over_remote_write() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("cairn.toml");
    std::fs::write(&cfg, "[storage.metrics]\nout_of_order_window = \"2m\"\n").unwrap();
    let c = Cairn::start(&["serve"], &dir.path().join("data"), &["--config", cfg.to_str().unwrap()]);
    let t0 = (now_ns() / 1_000_000 / 1000 - 600) * 1000;
    let l: TestLabels = &[("__name__", "ooo_metric"), ("job", "x")];
    let (s, b) = c.remote_write(&[(l, vec![(t0 + 300_000, 3.0)])]);
    assert_eq!(s, 204, "{b}");
    // 60 s late: inside the window
    let (s, b) = c.remote_write(&[(l, vec![(t0 + 240_000, 2.0)])]);
    assert_eq!(s, 204, "{b}");
    // 5 minutes late: refused, the rest of the request is stored
    let (s, b) = c.remote_write(&[(l, vec![(t0, 0.0), (t0 + 270_000, 2.5)])]);
    assert_eq!(s, 400, "{b}");
    assert!(b.contains("too old sample"), "{b}");
    assert!(b.contains("1 of 2"), "{b}");
    let (s, v) = c.prom(
        "/api/v1/query_range",
        &[
            ("query", "ooo_metric"),
            ("start", &(t0 / 1000).to_string()),
            ("end", &((t0 + 300_000) / 1000).to_string()),
            ("step", "30s"),
        ],
    );
    assert_eq!(s, 200, "{v}");
    let secs = t0 / 1000;
    assert_eq!(v["data"]["result"][0]["values"], json!([[secs + 240, "2"], [secs + 270, "2.5"], [secs + 300, "3"]]));
    let (_, m) = c.get("/metrics");
    assert!(m.contains(r#"cairn_ingest_rejected_total{kind="samples",reason="too_old"} 1"#), "{m}");
    c.stop();
}
