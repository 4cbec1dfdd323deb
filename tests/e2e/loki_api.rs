//! The Loki query API as Grafana's Loki data source calls it: Save & test,
//! metric queries (instant and range, GET and POST), the log volume
//! histogram query, pipelines, categorize-labels encoding, parse errors,
//! and gzip-compressed JSON push.

use std::io::Write;

use serde_json::Value;

use crate::harness::{Cairn, now_ns};

const S: i64 = 1_000_000_000;

/// 3 streams, one line per second for 10 s starting at `t0`; logfmt lines
/// with a level and a duration, and structured metadata on stream "api".
fn seed(c: &Cairn, t0: i64) {
    let mk = |svc: &str| -> Vec<(i64, String)> {
        (0..10)
            .map(|i| {
                let level = if i % 3 == 0 { "error" } else { "info" };
                (t0 + i * S, format!("level={level} svc={svc} took={}ms msg=\"request {i}\"", (i + 1) * 10))
            })
            .collect()
    };
    let (s, b) = c.push_logs_json(&[
        (&[("job", "api"), ("env", "prod")], mk("api")),
        (&[("job", "web"), ("env", "prod")], mk("web")),
        (&[("job", "db"), ("env", "dev")], mk("db")),
    ]);
    assert_eq!(s, 204, "push failed: {b}");
}

fn json(body: &str) -> Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {body}"))
}

#[test]
fn save_and_test_instant_vector() {
    let dir = tempfile::tempdir().unwrap();
    let c = Cairn::serve(dir.path());
    let (s, b) = c.get_params("/loki/api/v1/query", &[("query", "vector(1)+vector(1)"), ("time", "1700000000")]);
    assert_eq!(s, 200, "{b}");
    let v = json(&b);
    assert_eq!(v["status"], "success");
    assert_eq!(v["data"]["resultType"], "vector");
    assert_eq!(v["data"]["result"], serde_json::json!([{"metric": {}, "value": [1700000000, "2"]}]));
    // POST form works too; a literal is a scalar
    let (s, b) = c.post_form("/loki/api/v1/query", &[("query", "1 + 2 * 3"), ("time", "1700000000.5")]);
    assert_eq!(s, 200, "{b}");
    let v = json(&b);
    assert_eq!(v["data"]["resultType"], "scalar");
    assert_eq!(v["data"]["result"], serde_json::json!([1700000000.5, "7"]));
    // log queries are refused as instant queries, as Loki does
    let (s, b) = c.get_params("/loki/api/v1/query", &[("query", r#"{job="api"}"#)]);
    assert_eq!(s, 400);
    assert!(b.starts_with("log queries are not supported as an instant query type"), "{b}");
}

#[test]
fn metric_query_range_and_log_volume() {
    let dir = tempfile::tempdir().unwrap();
    let c = Cairn::serve(dir.path());
    let t0 = (now_ns() / S - 120) * S;
    seed(&c, t0);
    let start = t0.to_string();
    let end = (t0 + 10 * S).to_string();
    // count_over_time per stream at 5 s steps: windows (t-5s, t]
    let v = c.loki_query_range(&[
        ("query", r#"sum by (env, job) (count_over_time({env=~"prod|dev"}[5s]))"#),
        ("start", &start),
        ("end", &end),
        ("step", "5000ms"),
    ]);
    assert_eq!(v["data"]["resultType"], "matrix");
    let res = v["data"]["result"].as_array().unwrap();
    assert_eq!(res.len(), 3);
    assert_eq!(res[0]["metric"], serde_json::json!({"env": "dev", "job": "db"}));
    let t0s = t0 / S;
    assert_eq!(
        res[0]["values"],
        serde_json::json!([[t0s, "1"], [t0s + 5, "5"], [t0s + 10, "4"]]),
        "t0: only the line at t0; t0+5: t0+1..t0+5; t0+10: t0+6..t0+9"
    );
    // the Explore log volume query, GET and POST
    let q =
        r#"sum by (level, detected_level) (count_over_time({env="prod"} |= "level" | logfmt | drop __error__ [1m]))"#;
    let params = [("query", q), ("start", &start), ("end", &end), ("step", "10")];
    let v = c.loki_query_range(&params);
    let res = v["data"]["result"].as_array().unwrap();
    assert_eq!(res.len(), 2, "{v}");
    // grouped by the ingest-time `detected_level` too (from the logfmt `level` field)
    assert_eq!(res[0]["metric"], serde_json::json!({"detected_level": "error", "level": "error"}));
    assert_eq!(res[0]["values"], serde_json::json!([[t0s, "2"], [t0s + 10, "8"]]));
    assert_eq!(res[1]["metric"]["detected_level"], "info", "{v}");
    // stats in Loki's shape, with what was really read: 20 prod lines, all
    // in memory (nothing flushed yet), 20 kept by `|= "level"`
    let st = &v["data"]["stats"];
    assert_eq!(st["summary"]["totalLinesProcessed"], 20, "{st}");
    assert_eq!(st["summary"]["totalPostFilterLines"], 20, "{st}");
    assert_eq!(st["ingester"]["store"]["chunk"]["headChunkLines"], 20, "{st}");
    assert_eq!(st["querier"]["store"]["chunk"]["decompressedLines"], 0, "{st}");
    assert!(st["summary"]["totalBytesProcessed"].as_u64().unwrap() > 20 * 20, "{st}");
    for k in ["execTime", "queueTime", "splits", "shards", "totalEntriesReturned", "bytesProcessedPerSecond"] {
        assert!(st["summary"].get(k).is_some(), "{k} missing: {st}");
    }
    assert!(st["cache"]["chunk"].get("entriesFound").is_some(), "{st}");
    assert_eq!(res[1]["values"], serde_json::json!([[t0s + 10, "12"]]));
    let (s, b) = c.post_form("/loki/api/v1/query_range", &params);
    assert_eq!(s, 200, "{b}");
    assert_eq!(json(&b)["data"], v["data"].clone().tap_stats(&json(&b)["data"]));
    // unwrap with a duration conversion and a post filter, grouped
    let v = c.loki_query_range(&[
        ("query", r#"max_over_time({env="prod"} | logfmt | unwrap duration(took) | __error__="" [1m]) by (job)"#),
        ("start", &end),
        ("end", &end),
        ("step", "1"),
    ]);
    let res = v["data"]["result"].as_array().unwrap();
    assert_eq!(res[0]["metric"], serde_json::json!({"job": "api"}));
    assert_eq!(res[0]["values"][0][1], "0.1");
    // a sample with a parse error fails the query with Loki's message
    let (s, b) = c.get_params(
        "/loki/api/v1/query_range",
        &[("query", r#"sum(count_over_time({env="prod"} | json [1m]))"#), ("start", &start), ("end", &end)],
    );
    assert_eq!(s, 400);
    assert!(b.starts_with("pipeline error: 'JSONParserErr'"), "{b}");
}

trait TapStats {
    fn tap_stats(self, other: &Value) -> Value;
}

impl TapStats for Value {
    /// Copies `stats` from `other` so two responses compare on their results.
    fn tap_stats(mut self, other: &Value) -> Value {
        self["stats"] = other["stats"].clone();
        self
    }
}

#[test]
fn pipelines_and_categorized_labels() {
    let dir = tempfile::tempdir().unwrap();
    let c = Cairn::serve(dir.path());
    let t0 = (now_ns() / S - 120) * S;
    seed(&c, t0);
    let start = t0.to_string();
    let end = (t0 + 10 * S).to_string();
    let lines = |q: &str| {
        c.loki_query_range(&[("query", q), ("start", &start), ("end", &end), ("direction", "forward")])["data"]["result"]
            .clone()
    };
    // parsed labels join the stream labels; line_format rewrites the line
    let r =
        lines(r#"{job="api"} | logfmt | level="error" and took > 50ms | line_format "{{.svc | ToUpper}} {{.msg}}""#);
    assert_eq!(r.as_array().unwrap().len(), 2);
    assert_eq!(
        r[0]["stream"],
        serde_json::json!({"detected_level": "error", "env": "prod", "job": "api", "level": "error", "msg": "request 6",
            "service_name": "api", "svc": "api", "took": "70ms"})
    );
    let ls: Vec<&str> = r.as_array().unwrap().iter().map(|s| s["values"][0][1].as_str().unwrap()).collect();
    assert_eq!(ls, ["API request 6", "API request 9"]);
    // keep reduces the labels, so lines of one stream group together again
    let r = lines(r#"{env="prod"} | logfmt | keep job, level"#);
    assert_eq!(r.as_array().unwrap().len(), 4);
    // categorize-labels: stream labels only; parsed in the third element
    let (s, b) = {
        let r = reqwest::blocking::Client::new()
            .get(format!("{}/loki/api/v1/query_range", c.url))
            .query(&[
                ("query", r#"{job="web"} | logfmt | drop svc, took, msg"#),
                ("start", &start),
                ("end", &end),
                ("limit", "2"),
            ])
            .header("X-Loki-Response-Encoding-Flags", "categorize-labels")
            .send()
            .unwrap();
        (r.status().as_u16(), r.text().unwrap())
    };
    assert_eq!(s, 200, "{b}");
    let v = json(&b);
    assert_eq!(v["data"]["encodingFlags"], serde_json::json!(["categorize-labels"]));
    let r = v["data"]["result"].as_array().unwrap();
    assert_eq!(r.len(), 1);
    assert_eq!(r[0]["stream"], serde_json::json!({"env": "prod", "job": "web", "service_name": "web"}));
    assert_eq!(
        r[0]["values"][0][2],
        serde_json::json!({"structuredMetadata": {"detected_level": "error"}, "parsed": {"level": "error"}})
    );
}

#[test]
fn parse_errors_are_plain_400() {
    let dir = tempfile::tempdir().unwrap();
    let c = Cairn::serve(dir.path());
    let (s, b) = c.get_params("/loki/api/v1/query_range", &[("query", r#"sum(rate({job="x"}[1m]) by"#)]);
    assert_eq!(s, 400);
    assert!(b.starts_with("parse error at line 1, col "), "{b}");
    let (s, b) = c.get_params("/loki/api/v1/query_range", &[("query", r#"rate({job="x"}[1m])"#), ("step", "0")]);
    assert_eq!(s, 400);
    assert!(b.contains("zero or negative query resolution step"), "{b}");
}

#[test]
fn gzip_json_push() {
    let dir = tempfile::tempdir().unwrap();
    let c = Cairn::serve(dir.path());
    let t = now_ns() - 5 * S;
    let body =
        serde_json::json!({"streams": [{"stream": {"job": "gz"}, "values": [[t.to_string(), "compressed line"]]}]});
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    enc.write_all(&serde_json::to_vec(&body).unwrap()).unwrap();
    let (s, b) = c.post_raw(
        "/loki/api/v1/push",
        &[("Content-Type", "application/json"), ("Content-Encoding", "gzip")],
        enc.finish().unwrap(),
    );
    assert_eq!(s, 204, "{b}");
    let got = c.loki_lines(&[("query", r#"{job="gz"}"#)]);
    assert_eq!(got.iter().map(|l| l.2.as_str()).collect::<Vec<_>>(), ["compressed line"]);
    // since= sets the start relative to end, as in Loki
    assert_eq!(c.loki_lines(&[("query", r#"{job="gz"}"#), ("since", "1m")]).len(), 1);
    assert_eq!(c.loki_lines(&[("query", r#"{job="gz"}"#), ("since", "1s")]).len(), 0);
}

#[test]
fn label_series_stats_volume_endpoints() {
    let dir = tempfile::tempdir().unwrap();
    let c = Cairn::serve(dir.path());
    let t0 = (now_ns() / S - 120) * S;
    seed(&c, t0);
    let start = t0.to_string();
    let end = (t0 + 10 * S).to_string();
    let get = |path: &str, extra: &[(&str, &str)]| {
        let mut p = vec![("start", start.as_str()), ("end", end.as_str())];
        p.extend_from_slice(extra);
        let (s, b) = c.get_params(path, &p);
        assert_eq!(s, 200, "{path} {extra:?}: {b}");
        json(&b)
    };
    assert_eq!(
        get("/loki/api/v1/labels", &[]),
        serde_json::json!({"status": "success", "data": ["env", "job", "service_name"]})
    );
    assert_eq!(get("/loki/api/v1/label/job/values", &[])["data"], serde_json::json!(["api", "db", "web"]));
    assert_eq!(
        get("/loki/api/v1/label/job/values", &[("query", r#"{env="prod"}"#)])["data"],
        serde_json::json!(["api", "web"])
    );
    assert_eq!(get("/loki/api/v1/label/nope/values", &[])["data"], serde_json::json!([]));
    // default range (last 6 h) covers the data too
    let (s, b) = c.get("/loki/api/v1/labels");
    assert_eq!((s, json(&b)["data"].clone()), (200, serde_json::json!(["env", "job", "service_name"])));
    let v = get("/loki/api/v1/series", &[("match[]", r#"{job="api"}"#), ("match[]", r#"{env="dev"}"#)]);
    assert_eq!(
        v["data"],
        serde_json::json!([
            {"env": "dev", "job": "db", "service_name": "db"},
            {"env": "prod", "job": "api", "service_name": "api"}
        ])
    );
    let (s, b) = c.post_form("/loki/api/v1/series", &[("match[]", r#"{job="web"}"#), ("start", &start), ("end", &end)]);
    assert_eq!(s, 200, "{b}");
    assert_eq!(json(&b)["data"], serde_json::json!([{"env": "prod", "job": "web", "service_name": "web"}]));
    // index/stats: bare object; end is exclusive for entries, so t0..t0+9 = 10 per stream
    let v = get("/loki/api/v1/index/stats", &[("query", r#"{env="prod"} |= "x""#)]);
    assert_eq!(v["streams"], 2);
    assert_eq!(v["entries"], 20);
    assert!(v["bytes"].as_u64().unwrap() > 20 * 30);
    // head data counts as one chunk per stream (as Loki counts ingester chunks)
    assert_eq!(v["chunks"], 2);
    // index/volume: by the selector's label names, largest first
    let v = get("/loki/api/v1/index/volume", &[("query", r#"{env=~".+"}"#)]);
    assert_eq!(v["data"]["resultType"], "vector");
    let res = v["data"]["result"].as_array().unwrap();
    assert_eq!(
        res.iter().map(|r| r["metric"].clone()).collect::<Vec<_>>(),
        [serde_json::json!({"env": "prod"}), serde_json::json!({"env": "dev"})]
    );
    let v = get(
        "/loki/api/v1/index/volume",
        &[("query", r#"{env=~".+"}"#), ("targetLabels", "job"), ("aggregateBy", "labels")],
    );
    assert_eq!(v["data"]["result"][0]["metric"], serde_json::json!({"job": ""}));
    let v = get("/loki/api/v1/index/volume_range", &[("query", r#"{job="api"}"#), ("step", "5")]);
    assert_eq!(v["data"]["resultType"], "matrix");
    assert_eq!(v["data"]["result"][0]["values"].as_array().unwrap().len(), 3);
    // detected labels
    let v = get("/loki/api/v1/detected_labels", &[("query", r#"{env=~".+"}"#)]);
    assert_eq!(
        v,
        serde_json::json!({"detectedLabels": [
            {"label": "env", "cardinality": 2},
            {"label": "job", "cardinality": 3},
            {"label": "service_name", "cardinality": 3}
        ]})
    );
    // detected fields: logfmt keys of the lines plus structured metadata
    let v = get("/loki/api/v1/detected_fields", &[("query", r#"{job=~"api|web"}"#), ("limit", "1000")]);
    let fields = v["fields"].as_array().unwrap();
    let by = |n: &str| fields.iter().find(|f| f["label"] == n).cloned().unwrap_or_else(|| panic!("{n} missing: {v}"));
    assert_eq!(
        by("took"),
        serde_json::json!({"label": "took", "type": "duration", "cardinality": 10, "parsers": ["logfmt"]})
    );
    assert_eq!(by("level")["cardinality"], 2);
    assert_eq!(v["limit"], 1000);
    let v = get("/loki/api/v1/detected_field/level/values", &[("query", r#"{job="api"}"#)]);
    assert_eq!(v, serde_json::json!({"values": ["error", "info"], "limit": 1000}));
    // rules: nothing configured
    let (s, b) = c.get("/prometheus/api/v1/rules");
    assert_eq!((s, json(&b)["data"].clone()), (200, serde_json::json!({"groups": []})));
    let (s, _) = c.get("/loki/api/v1/rules");
    assert_eq!(s, 200);
    // format_query, GET and POST
    let (s, b) = c.get_params("/loki/api/v1/format_query", &[("query", r#"{foo=   "bar"}"#)]);
    assert_eq!((s, json(&b)), (200, serde_json::json!({"status": "success", "data": r#"{foo="bar"}"#})));
    let (s, b) = c.post_form("/loki/api/v1/format_query", &[("query", r#"sum(rate({a="b"}|="x"[5m])) by (c)"#)]);
    assert_eq!((s, json(&b)["data"].clone()), (200, serde_json::json!(r#"sum by (c)(rate({a="b"} |= "x"[5m]))"#)));
    let (s, _) = c.get_params("/loki/api/v1/format_query", &[("query", "sum(")]);
    assert_eq!(s, 400);
    // a bad selector is a plain 400
    let (s, b) = c.get_params("/loki/api/v1/labels", &[("query", "{job=")]);
    assert_eq!(s, 400, "{b}");
}
