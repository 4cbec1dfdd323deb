//! Remote-Write 2.0 (`io.prometheus.write.v2.Request`): samples, start
//! timestamps, native histograms and metadata from one request, the
//! written-count headers, and 415 for a message the receiver does not know.

use std::time::Duration;

use cairn_wire::proto::{BucketSpan, Histogram};
use cairn_wire::remote_write_v2::{Metadata, Request, Sample, TimeSeries};
use prost::Message;

use crate::harness::Cairn;

const V2: &str = "application/x-protobuf;proto=io.prometheus.write.v2.Request";

fn post(c: &Cairn, content_type: &str, body: &[u8]) -> reqwest::blocking::Response {
    let compressed = cairn_wire::proto::snappy_compress(body);
    c.client()
        .post(format!("{}/api/v1/write", c.url))
        .header("Content-Type", content_type)
        .header("Content-Encoding", "snappy")
        .header("X-Prometheus-Remote-Write-Version", "2.0.0")
        .body(compressed)
        .timeout(Duration::from_secs(30))
        .send()
        .unwrap()
}

fn header(r: &reqwest::blocking::Response, name: &str) -> String {
    r.headers().get(name).and_then(|v| v.to_str().ok()).unwrap_or("").to_string()
}

#[test]
fn remote_write_2_samples_start_timestamps_histograms_metadata() {
    let dir = tempfile::tempdir().unwrap();
    let c = Cairn::serve(dir.path());
    let t0 = (crate::harness::now_ns() / 1_000_000 - 600_000) / 1000 * 1000;
    let st = t0 - 30_000;
    let symbols = [
        "",
        "__name__",
        "rw2_requests_total",
        "job",
        "api",
        "Requests served.",
        "rw2_latency_seconds",
        "Latency.",
        "seconds",
    ];
    let hist = |k: u64, t: i64| Histogram {
        count_int: Some(4 * k),
        sum: 2.5 * k as f64,
        schema: 0,
        zero_count_int: Some(0),
        positive_spans: vec![BucketSpan { offset: 0, length: 2 }],
        positive_deltas: vec![2 * k as i64, 0],
        timestamp: t,
        start_timestamp: st,
        ..Histogram::default()
    };
    let req = Request {
        symbols: symbols.iter().map(|s| s.to_string()).collect(),
        timeseries: vec![
            TimeSeries {
                labels_refs: vec![1, 2, 3, 4],
                samples: (0..10)
                    .map(|k| Sample { value: 15.0 * k as f64, timestamp: t0 + k * 15_000, start_timestamp: st })
                    .collect(),
                histograms: vec![],
                metadata: Some(Metadata { r#type: 1, help_ref: 5, unit_ref: 0 }),
            },
            TimeSeries {
                labels_refs: vec![1, 6, 3, 4],
                samples: vec![],
                histograms: (1..=4).map(|k| hist(k, t0 + k as i64 * 15_000)).collect(),
                metadata: Some(Metadata { r#type: 3, help_ref: 7, unit_ref: 8 }),
            },
        ],
    };
    let r = post(&c, V2, &req.encode_to_vec());
    assert_eq!(r.status().as_u16(), 204, "{}", r.text().unwrap_or_default());
    assert_eq!(header(&r, "x-prometheus-remote-write-samples-written"), "10");
    assert_eq!(header(&r, "x-prometheus-remote-write-histograms-written"), "4");
    assert_eq!(header(&r, "x-prometheus-remote-write-exemplars-written"), "0");

    // the samples, and the start timestamp each one was sent with
    let at = ((t0 + 9 * 15_000) / 1000).to_string();
    let (code, v) = c.prom("/api/v1/query", &[("query", "rw2_requests_total"), ("time", &at)]);
    assert_eq!(code, 200, "{v}");
    assert_eq!(v["data"]["result"][0]["value"][1], "135", "{v}");
    let (_, v) = c.prom("/api/v1/query", &[("query", "start_timestamp(rw2_requests_total)"), ("time", &at)]);
    assert_eq!(v["data"]["result"][0]["value"][1], cairn_wire::format_float(st as f64 / 1000.0), "{v}");
    let (_, v) = c.prom("/api/v1/query", &[("query", "histogram_count(rw2_latency_seconds)"), ("time", &at)]);
    assert_eq!(v["data"]["result"][0]["value"][1], "16", "{v}");
    // per-series metadata, under the family name
    let (_, v) = c.prom("/api/v1/metadata", &[("metric", "rw2_requests_total")]);
    assert_eq!(v["data"]["rw2_requests_total"][0]["type"], "counter", "{v}");
    assert_eq!(v["data"]["rw2_requests_total"][0]["help"], "Requests served.", "{v}");
    let (_, v) = c.prom("/api/v1/metadata", &[("metric", "rw2_latency_seconds")]);
    assert_eq!(v["data"]["rw2_latency_seconds"][0]["unit"], "seconds", "{v}");

    // a reference past the symbol table refuses the whole request
    let mut bad = req.clone();
    bad.timeseries[0].labels_refs[3] = 99;
    let r = post(&c, V2, &bad.encode_to_vec());
    assert_eq!(r.status().as_u16(), 400);
    assert!(r.text().unwrap().contains("99"));
    // a message this receiver does not know: 415, as the spec asks
    let r = post(&c, "application/x-protobuf;proto=io.prometheus.write.v3.Request", b"");
    assert_eq!(r.status().as_u16(), 415);
    // 1.0 named explicitly still works
    let body = crate::harness::write_request(&[(&[("__name__", "rw1_up")], vec![(t0, 1.0)])]);
    let r = c
        .client()
        .post(format!("{}/api/v1/write", c.url))
        .header("Content-Type", "application/x-protobuf;proto=prometheus.WriteRequest")
        .header("Content-Encoding", "snappy")
        .body(body)
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 204);
    c.stop();
}
