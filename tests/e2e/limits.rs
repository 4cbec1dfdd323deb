//! Per-tenant limits (`[limits]`, `[tenants."<id>".limits]`, `.query`):
//! each refusal names its limit and value, the valid rest of a write is
//! stored, other tenants are unaffected, and a rate-limited write gets 429
//! with `Retry-After`.

use crate::harness::{Cairn, TestSeries, TestStreams, now_ns, write_request};

const CONFIG: &str = r#"
[limits]
max_active_streams = 2
max_line_size = "100B"

[tenants."trunc".limits]
max_line_size_truncate = true

[tenants."slow".limits]
logs_ingestion_rate = "100B"
logs_ingestion_burst = "2000B"
metrics_ingestion_rate = 1
metrics_ingestion_burst = 20

[tenants."few".limits]
max_active_series = 2
metrics_reject_older_than = "1h"

[tenants."few".query]
max_series = 1
"#;

fn push(c: &Cairn, tenant: &str, streams: &TestStreams<'_>) -> (u16, String, Option<String>) {
    let body = serde_json::json!({
        "streams": streams.iter().map(|(labels, entries)| serde_json::json!({
            "stream": labels.iter().map(|(k, v)| (k.to_string(), serde_json::json!(v))).collect::<serde_json::Map<_, _>>(),
            "values": entries.iter().map(|(ts, l)| serde_json::json!([ts.to_string(), l])).collect::<Vec<_>>(),
        })).collect::<Vec<_>>()
    });
    let r = c
        .client()
        .post(format!("{}/loki/api/v1/push", c.url))
        .header("Content-Type", "application/json")
        .header("X-Scope-OrgID", tenant)
        .body(serde_json::to_vec(&body).unwrap())
        .send()
        .unwrap();
    let retry = r.headers().get("retry-after").map(|v| v.to_str().unwrap().to_string());
    (r.status().as_u16(), r.text().unwrap(), retry)
}

fn write(c: &Cairn, tenant: &str, series: &TestSeries<'_>) -> (u16, String, Option<String>) {
    let r = c
        .client()
        .post(format!("{}/api/v1/write", c.url))
        .header("Content-Type", "application/x-protobuf")
        .header("Content-Encoding", "snappy")
        .header("X-Scope-OrgID", tenant)
        .body(write_request(series))
        .send()
        .unwrap();
    let retry = r.headers().get("retry-after").map(|v| v.to_str().unwrap().to_string());
    (r.status().as_u16(), r.text().unwrap(), retry)
}

fn lines(c: &Cairn, tenant: &str, query: &str) -> Vec<String> {
    let (s, b) = c.get_with(
        "/loki/api/v1/query_range",
        &[("query", query), ("start", &(now_ns() - 3_600_000_000_000).to_string()), ("limit", "100")],
        &[("X-Scope-OrgID", tenant)],
    );
    assert_eq!(s, 200, "{b}");
    let v: serde_json::Value = serde_json::from_str(&b).unwrap();
    let mut out = Vec::new();
    for s in v["data"]["result"].as_array().unwrap() {
        for e in s["values"].as_array().unwrap() {
            out.push(e[1].as_str().unwrap().to_string());
        }
    }
    out
}

fn series_count(c: &Cairn, tenant: &str, query: &str) -> usize {
    let (s, b) = c.get_with("/api/v1/series", &[("match[]", query)], &[("X-Scope-OrgID", tenant)]);
    assert_eq!(s, 200, "{b}");
    let v: serde_json::Value = serde_json::from_str(&b).unwrap();
    v["data"].as_array().unwrap().len()
}

#[test]
fn per_tenant_limits_refuse_clearly_and_keep_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("cairn.toml");
    std::fs::write(&cfg, CONFIG).unwrap();
    let c = Cairn::start(&["serve"], &dir.path().join("data"), &["--config", cfg.to_str().unwrap()]);
    let t = now_ns() - 1_000_000_000;

    // Active streams: the third new stream is refused, the first two kept.
    let (s, b, _) = push(
        &c,
        "fake",
        &[
            (&[("job", "s1")], vec![(t, "one".into())]),
            (&[("job", "s2")], vec![(t, "two".into())]),
            (&[("job", "s3")], vec![(t, "three".into())]),
        ],
    );
    assert_eq!(s, 400, "{b}");
    assert!(b.contains("1 of 3 items refused") && b.contains("limits.max_active_streams = 2"), "{b}");
    assert!(b.contains("job=\"s3\""), "the refused stream is named: {b}");
    assert_eq!(lines(&c, "fake", r#"{job=~"s.*"}"#).len(), 2);
    // an active stream keeps being written; other tenants have their own count
    assert_eq!(push(&c, "fake", &[(&[("job", "s1")], vec![(t + 1, "again".into())])]).0, 204);
    assert_eq!(push(&c, "other", &[(&[("job", "s3")], vec![(t, "elsewhere".into())])]).0, 204);

    // Line size: refused for the default tenant, cut for "trunc".
    let long = "é".repeat(80); // 160 bytes, two per character
    let (s, b, _) = push(&c, "other", &[(&[("job", "s3")], vec![(t + 1, long.clone())])]);
    assert_eq!(s, 400);
    assert!(b.contains("limits.max_line_size = 100"), "{b}");
    assert_eq!(push(&c, "trunc", &[(&[("job", "t")], vec![(t, long)])]).0, 204);
    assert_eq!(lines(&c, "trunc", r#"{job="t"}"#), vec!["é".repeat(50)]);

    // Timestamps outside the window, with Loki's wording and the limit named;
    // the entry inside it is stored.
    let week = 7 * 86_400 * 1_000_000_000i64;
    let (s, b, _) = push(
        &c,
        "other",
        &[(
            &[("job", "s3")],
            vec![
                (t - week - 3_600_000_000_000, "ancient".into()),
                (t + 3_600_000_000_000, "future".into()),
                (t + 2, "now".into()),
            ],
        )],
    );
    assert_eq!(s, 400);
    assert!(b.contains("has timestamp too old") && b.contains("limits.logs_reject_older_than = 1w"), "{b}");
    assert!(b.contains("has timestamp too new") && b.contains("limits.reject_newer_than = 10m"), "{b}");
    assert_eq!(lines(&c, "other", r#"{job="s3"}"#), vec!["now", "elsewhere"]);

    // Ingestion rate: the burst passes, the next push is refused whole with
    // 429 and Retry-After (~10 s at 100 B/s: no test timing can reach it),
    // and other tenants are not slowed.
    let kib = "x".repeat(100);
    let entries = |n: i64, from: i64| (0..n).map(|i| (from + i, kib.clone())).collect::<Vec<_>>();
    let (s, b, _) = push(&c, "slow", &[(&[("job", "r")], entries(15, t))]);
    assert_eq!(s, 204, "{b}");
    let (s, b, retry) = push(&c, "slow", &[(&[("job", "r")], entries(15, t + 100))]);
    assert_eq!(s, 429, "{b}");
    assert!(b.contains("limits.logs_ingestion_rate = 100B/s") && b.contains("15 lines totaling 1500 bytes"), "{b}");
    let retry: u64 = retry.expect("Retry-After").parse().unwrap();
    assert!((5..=10).contains(&retry), "{retry}");
    assert_eq!(lines(&c, "slow", r#"{job="r"}"#).len(), 15, "nothing of the refused push is stored");
    assert_eq!(push(&c, "other", &[(&[("job", "s3")], entries(15, t + 200))]).0, 204);
    let ms = t / 1_000_000;
    let samples = |n: i64, from: i64| (0..n).map(|i| (from + i, 1.0)).collect::<Vec<_>>();
    assert_eq!(write(&c, "slow", &[(&[("__name__", "m")], samples(15, ms))]).0, 204);
    let (s, b, retry) = write(&c, "slow", &[(&[("__name__", "m")], samples(15, ms + 100))]);
    assert_eq!(s, 429, "{b}");
    assert!(b.contains("limits.metrics_ingestion_rate = 1 samples/s"), "{b}");
    assert!(retry.is_some());

    // Active series and a per-tenant age limit for samples.
    let (s, b, _) = write(
        &c,
        "few",
        &[
            (&[("__name__", "a")], samples(1, ms)),
            (&[("__name__", "b")], vec![(ms - 7_200_000, 1.0), (ms, 2.0)]),
            (&[("__name__", "c")], samples(1, ms)),
        ],
    );
    assert_eq!(s, 400, "{b}");
    assert!(b.contains("limits.max_active_series = 2"), "{b}");
    assert!(b.contains("has timestamp too old") && b.contains("limits.metrics_reject_older_than = 1h"), "{b}");
    assert_eq!(series_count(&c, "few", r#"{__name__=~"a|b|c"}"#), 2);
    // the default tenant has no series limit and no age limit for samples
    let (s, b, _) = write(&c, "fake", &[(&[("__name__", "c")], vec![(ms - 7_200_000, 1.0)])]);
    assert_eq!(s, 204, "{b}");

    // Per-tenant query limit.
    let (s, b) = c.get_with("/api/v1/query", &[("query", r#"{__name__=~"a|b"}"#)], &[("X-Scope-OrgID", "few")]);
    assert_eq!(s, 422, "{b}");
    assert!(b.contains("query.max_series"), "{b}");
    let (s, b) = c.get_with("/api/v1/query", &[("query", r#"{__name__=~"a|b"}"#)], &[("X-Scope-OrgID", "fake")]);
    assert_eq!(s, 200, "{b}");

    // Everything is counted by reason.
    let (_, m) = c.get("/metrics");
    for reason in
        ["stream_limit", "series_limit", "rate_limited", "too_far_in_past", "too_far_in_future", "line_too_long"]
    {
        assert!(m.contains(&format!("reason=\"{reason}\"")), "{reason} not counted:\n{m}");
    }
    assert!(m.contains("cairn_ingest_truncated_lines_total 1"), "{m}");
    assert!(m.contains("cairn_limits_active{engine=\"logs\",tenant=\"fake\"} 2"), "{m}");
    c.stop();
}
