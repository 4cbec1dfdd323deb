//! Native histograms end to end: integer and float histograms pushed over
//! remote_write are stored (a malformed one is refused and counted), survive
//! a graceful restart and a SIGKILL, and answer `histogram_count`,
//! `histogram_sum`, `histogram_quantile` and `rate` over
//! `/api/v1/query_range` and `/api/v1/query` in Prometheus's JSON shape,
//! with annotations in `warnings` / `infos`.

use prost::Message;
use serde_json::Value;

use cairn_wire::proto::{self, BucketSpan, WriteRequest};

use crate::harness::{Cairn, now_ns};

const STEP_MS: i64 = 15_000;
const N: i64 = 41; // 10 minutes at 15 s

fn label(n: &str, v: &str) -> proto::Label {
    proto::Label { name: n.into(), value: v.into() }
}

/// Sample `k` of the counter histogram: schema 0, buckets (0.5,1], (1,2],
/// (2,4], (4,8] holding k, 2k, 3k, 4k observations, as an integer
/// histogram with delta-encoded counts (what Prometheus sends).
fn int_hist(k: i64, t: i64) -> proto::Histogram {
    proto::Histogram {
        count_int: Some(10 * k as u64),
        count_float: None,
        sum: 25.0 * k as f64,
        schema: 0,
        zero_threshold: 1e-128,
        zero_count_int: Some(0),
        zero_count_float: None,
        negative_spans: vec![],
        negative_deltas: vec![],
        negative_counts: vec![],
        positive_spans: vec![BucketSpan { offset: 0, length: 4 }],
        positive_deltas: vec![k, k, k, k],
        positive_counts: vec![],
        reset_hint: 0,
        timestamp: t,
        custom_values: vec![],
        start_timestamp: 0,
    }
}

/// A float gauge histogram with custom buckets (schema −53).
fn float_hist(k: i64, t: i64) -> proto::Histogram {
    let h = cairn_wire::Histogram {
        reset_hint: cairn_wire::histogram::ResetHint::Gauge,
        schema: -53,
        count: 4.0 + k as f64,
        sum: 10.5,
        positive: vec![(0, 1.5), (1, 2.5 + k as f64)],
        custom_values: vec![0.1, 1.0],
        ..Default::default()
    };
    proto::Histogram::from_model(&h, t)
}

fn push(c: &Cairn, t0: i64) {
    let series = |name: &str, hs: Vec<proto::Histogram>| proto::TimeSeries {
        labels: vec![label("__name__", name), label("job", "api")],
        samples: vec![],
        histograms: hs,
    };
    let mut bad = int_hist(1, t0);
    bad.positive_deltas.pop(); // spans say 4 buckets, 3 given
    let req = WriteRequest {
        timeseries: vec![
            series("req_seconds", (0..N).map(|k| int_hist(k, t0 + k * STEP_MS)).collect()),
            series("queue_bytes", (0..N).map(|k| float_hist(k, t0 + k * STEP_MS)).collect()),
            series("broken_seconds", vec![bad]),
        ],
        metadata: vec![],
    };
    let body = proto::snappy_compress(&req.encode_to_vec());
    let (s, b) = c.post_raw(
        "/api/v1/write",
        &[("Content-Type", "application/x-protobuf"), ("Content-Encoding", "snappy")],
        body,
    );
    assert_eq!(s, 400, "the malformed histogram is refused by name: {b}");
    assert!(b.contains("broken_seconds") && b.contains("1 of 83"), "{b}");
}

fn range(c: &Cairn, q: &str, t0: i64) -> Vec<(f64, f64)> {
    let (start, end) = ((t0 + 120_000) / 1000, (t0 + (N - 1) * STEP_MS) / 1000);
    let (s, v) = c.prom(
        "/api/v1/query_range",
        &[("query", q), ("start", &start.to_string()), ("end", &end.to_string()), ("step", "60")],
    );
    assert_eq!(s, 200, "{v}");
    let r = v["data"]["result"].as_array().unwrap_or_else(|| panic!("{v}"));
    assert_eq!(r.len(), 1, "{q}: {v}");
    r[0]["values"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p[0].as_f64().unwrap(), p[1].as_str().unwrap().parse::<f64>().unwrap()))
        .collect()
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-9 * b.abs().max(1.0)
}

fn check(c: &Cairn, t0: i64) {
    // The counter grows by 10 observations per 15 s: a rate of 2/3 per second.
    let counts = range(c, r#"histogram_count(rate(req_seconds{job="api"}[1m]))"#, t0);
    assert_eq!(counts.len(), 9, "{counts:?}");
    assert!(counts.iter().all(|p| close(p.1, 10.0 / 15.0)), "{counts:?}");
    // Rates in the buckets are 1:2:3:4; the median is 2/3 into (2,4],
    // interpolated exponentially: 2^(1 + 2/3).
    let q = range(c, r#"histogram_quantile(0.5, rate(req_seconds[1m]))"#, t0);
    assert!(q.iter().all(|p| close(p.1, 2f64.powf(5.0 / 3.0))), "{q:?}");
    let sums = range(c, "histogram_sum(req_seconds)", t0);
    let last = sums.last().unwrap();
    assert!(close(last.1, 25.0 * (N - 1) as f64), "{sums:?}");
    // The custom-bucket gauge: linear interpolation in (0.1, 1].
    let f = range(c, "histogram_fraction(0, 0.1, queue_bytes)", t0);
    let k = (N - 1) as f64;
    assert!(close(f.last().unwrap().1, 1.5 / (4.0 + k)), "{f:?}");

    // Instant query: the histogram itself, in Prometheus's JSON shape.
    let t = (t0 + (N - 1) * STEP_MS) / 1000;
    let (s, v) = c.prom("/api/v1/query", &[("query", "req_seconds"), ("time", &t.to_string())]);
    assert_eq!(s, 200, "{v}");
    let h = &v["data"]["result"][0]["histogram"];
    assert_eq!(h[0].as_f64(), Some(t as f64), "{v}");
    let n = (N - 1).to_string();
    let want: Value = serde_json::json!({
        "count": (10 * (N - 1)).to_string(),
        "sum": (25 * (N - 1)).to_string(),
        "buckets": [
            [0, "0.5", "1", n],
            [0, "1", "2", (2 * (N - 1)).to_string()],
            [0, "2", "4", (3 * (N - 1)).to_string()],
            [0, "4", "8", (4 * (N - 1)).to_string()],
        ],
    });
    assert_eq!(h[1], want, "{v}");
    assert!(v["data"]["result"][0].get("value").is_none(), "{v}");
    // A range vector: `histograms`, no `values`.
    let (s, v) = c.prom("/api/v1/query", &[("query", "queue_bytes[1m]"), ("time", &t.to_string())]);
    assert_eq!(s, 200, "{v}");
    let hs = v["data"]["result"][0]["histograms"].as_array().unwrap_or_else(|| panic!("{v}"));
    assert_eq!(hs.len(), 4, "{v}");
    assert_eq!(hs[3][1]["buckets"][0], serde_json::json!([3, "-Inf", "0.1", "1.5"]), "{v}");
    // Annotations, in Prometheus's `warnings` / `infos` arrays.
    let (s, v) = c.prom("/api/v1/query", &[("query", "rate(queue_bytes[5m])"), ("time", &t.to_string())]);
    assert_eq!(s, 200, "{v}");
    assert_eq!(
        v["warnings"],
        serde_json::json!(["PromQL warning: this native histogram metric is not a counter: \"queue_bytes\""]),
        "{v}"
    );
    let (s, v) = c.prom("/api/v1/query", &[("query", "max(req_seconds)"), ("time", &t.to_string())]);
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["data"]["result"], serde_json::json!([]), "{v}");
    assert_eq!(v["infos"], serde_json::json!(["PromQL info: ignored histogram in max aggregation"]), "{v}");
    assert!(v.get("warnings").is_none(), "{v}");
}

#[test]
fn native_histograms_over_remote_write_survive_restarts() {
    let dir = tempfile::tempdir().unwrap();
    // Whole minutes, 20 minutes ago: inside the head, steps aligned.
    let t0 = (now_ns() / 1_000_000 / 60_000 - 20) * 60_000;
    let c = Cairn::serve(dir.path());
    push(&c, t0);
    check(&c, t0);
    let (_, m) = c.get("/metrics");
    assert!(
        m.lines().any(|l| l.contains("cairn_ingest_rejected_total") && l.contains("malformed_histogram")),
        "the refusal is counted"
    );
    c.stop(); // flushes the head into a block
    let c = Cairn::serve(dir.path());
    check(&c, t0);
    // Re-sent samples are duplicates (no-ops); then a crash loses nothing.
    push(&c, t0);
    c.kill9();
    let c = Cairn::serve(dir.path());
    check(&c, t0);
    c.stop();
}
