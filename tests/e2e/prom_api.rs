//! The Prometheus metadata and status API against the real binary:
//! series, labels, label values (GET and POST, match[], start/end, limit),
//! metadata from remote_write, the probes Grafana sends (rules, alerts,
//! exemplars), format_query, runtimeinfo, tsdb status, and the query
//! `limit` / `timeout` parameters.

use cairn_wire::proto::{self, WriteRequest};
use prost::Message;
use serde_json::{Value, json};

use crate::harness::{Cairn, TestLabels, now_ns};

fn seed(c: &Cairn) -> i64 {
    let t0 = (now_ns() / 1_000_000 / 1000 - 600) * 1000;
    let series: Vec<(TestLabels, Vec<(i64, f64)>)> = vec![
        (&[("__name__", "node_load1"), ("instance", "a"), ("job", "node")], vec![(t0, 1.0), (t0 + 15_000, 2.0)]),
        (&[("__name__", "node_load1"), ("instance", "b"), ("job", "node")], vec![(t0, 3.0)]),
        (&[("__name__", "up"), ("instance", "a"), ("job", "node")], vec![(t0, 1.0)]),
    ];
    let (s, b) = c.remote_write(&series);
    assert_eq!(s, 204, "remote_write failed: {b}");
    t0
}

fn ok_data(s: u16, v: &Value) -> &Value {
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["status"], "success", "{v}");
    &v["data"]
}

#[test]
fn series_labels_and_label_values() {
    let dir = tempfile::tempdir().unwrap();
    let c = Cairn::serve(dir.path());
    let t0 = seed(&c);

    let (s, v) = c.prom("/api/v1/series", &[("match[]", "node_load1")]);
    assert_eq!(
        *ok_data(s, &v),
        json!([
            {"__name__": "node_load1", "instance": "a", "job": "node"},
            {"__name__": "node_load1", "instance": "b", "job": "node"},
        ])
    );
    // Two match[] are a union; POST form works the same.
    let (s, b) = c.post_form("/api/v1/series", &[("match[]", "up"), ("match[]", r#"node_load1{instance="b"}"#)]);
    let v: Value = serde_json::from_str(&b).unwrap();
    assert_eq!(ok_data(s, &v).as_array().unwrap().len(), 2);
    // start/end: only node_load1{instance="a"} has a sample after t0.
    let after = ((t0 + 10_000) / 1000).to_string();
    let (s, v) = c.prom("/api/v1/series", &[("match[]", "{job=\"node\"}"), ("start", &after)]);
    assert_eq!(*ok_data(s, &v), json!([{"__name__": "node_load1", "instance": "a", "job": "node"}]));
    // limit truncates with a warning.
    let (s, v) = c.prom("/api/v1/series", &[("match[]", "{job=\"node\"}"), ("limit", "1")]);
    assert_eq!(ok_data(s, &v).as_array().unwrap().len(), 1);
    assert_eq!(v["warnings"], json!(["results truncated due to limit"]));
    // match[] is required for series; a bad selector is bad_data.
    let (s, v) = c.prom("/api/v1/series", &[]);
    assert_eq!((s, v["errorType"].as_str()), (400, Some("bad_data")), "{v}");
    let (s, v) = c.prom("/api/v1/series", &[("match[]", "rate(up[5m])")]);
    assert_eq!((s, v["errorType"].as_str()), (400, Some("bad_data")), "{v}");

    let (s, v) = c.prom("/api/v1/labels", &[]);
    assert_eq!(*ok_data(s, &v), json!(["__name__", "instance", "job"]));
    let (s, b) = c.post_form("/api/v1/labels", &[("match[]", "up")]);
    let v: Value = serde_json::from_str(&b).unwrap();
    assert_eq!(*ok_data(s, &v), json!(["__name__", "instance", "job"]));

    let (s, v) = c.prom("/api/v1/label/__name__/values", &[]);
    assert_eq!(*ok_data(s, &v), json!(["node_load1", "up"]));
    let (s, v) = c.prom("/api/v1/label/instance/values", &[("match[]", "up")]);
    assert_eq!(*ok_data(s, &v), json!(["a"]));
    let (s, v) = c.prom("/api/v1/label/nope/values", &[("limit", "40000")]);
    assert_eq!(*ok_data(s, &v), json!([]), "empty is [], never null");
    let (s, v) = c.prom("/api/v1/label/in-valid/values", &[]);
    assert_eq!((s, v["errorType"].as_str()), (400, Some("bad_data")), "{v}");
}

#[test]
fn metadata_probes_format_and_status() {
    let dir = tempfile::tempdir().unwrap();
    let c = Cairn::serve(dir.path());
    let t0 = seed(&c);
    let req = WriteRequest {
        timeseries: vec![],
        metadata: vec![proto::MetricMetadata {
            r#type: 2,
            metric_family_name: "node_load1".into(),
            help: "1m load average.".into(),
            unit: String::new(),
        }],
    };
    let (s, b) = c.post_raw(
        "/api/v1/write",
        &[("Content-Type", "application/x-protobuf"), ("Content-Encoding", "snappy")],
        proto::snappy_compress(&req.encode_to_vec()),
    );
    assert!(s == 204 || s == 200, "{s} {b}");
    let (s, v) = c.prom("/api/v1/metadata", &[]);
    assert_eq!(*ok_data(s, &v), json!({"node_load1": [{"type": "gauge", "help": "1m load average.", "unit": ""}]}));
    let (s, v) = c.prom("/api/v1/metadata", &[("metric", "up")]);
    assert_eq!(*ok_data(s, &v), json!({}));

    let (s, v) = c.prom("/api/v1/query_exemplars", &[("query", "test"), ("start", "0"), ("end", "1")]);
    assert_eq!(*ok_data(s, &v), json!([]));
    let (s, v) = c.prom("/api/v1/query_exemplars", &[]);
    assert_eq!((s, v["errorType"].as_str()), (400, Some("bad_data")), "{v}");
    let (s, v) = c.prom("/api/v1/rules", &[]);
    assert_eq!(*ok_data(s, &v), json!({"groups": []}));
    let (s, v) = c.prom("/api/v1/alerts", &[]);
    assert_eq!(*ok_data(s, &v), json!({"alerts": []}));

    let (s, v) = c.prom("/api/v1/format_query", &[("query", "sum by(job)(rate(up[5m]))")]);
    assert_eq!(*ok_data(s, &v), json!("sum by (job) (rate(up[5m]))"));
    let (s, b) = c.post_form("/api/v1/format_query", &[("query", "up{")]);
    let v: Value = serde_json::from_str(&b).unwrap();
    assert_eq!((s, v["errorType"].as_str()), (400, Some("bad_data")), "{v}");

    let (s, v) = c.prom("/api/v1/status/runtimeinfo", &[]);
    let d = ok_data(s, &v);
    assert!(d["startTime"].as_str().is_some_and(|t| t.ends_with('Z')), "{d}");
    assert_eq!(d["reloadConfigSuccess"], true);

    let (s, v) = c.prom("/api/v1/status/tsdb", &[]);
    let d = ok_data(s, &v);
    assert_eq!(d["headStats"]["numSeries"], 3, "{d}");
    assert_eq!(d["seriesCountByMetricName"][0], json!({"name": "node_load1", "value": 2}));
    assert_eq!((d["headStats"]["minTime"].as_i64(), d["headStats"]["maxTime"].as_i64()), (Some(t0), Some(t0 + 15_000)));
}

#[test]
fn query_limit_and_timeout_parameters() {
    let dir = tempfile::tempdir().unwrap();
    let c = Cairn::serve(dir.path());
    let t0 = seed(&c);
    let t = ((t0 + 15_000) / 1000).to_string();
    let (s, v) = c.prom("/api/v1/query", &[("query", "node_load1"), ("time", &t), ("limit", "1")]);
    assert_eq!(ok_data(s, &v)["result"].as_array().unwrap().len(), 1);
    assert_eq!(v["warnings"], json!(["results truncated due to limit"]));
    let (s, v) = c.prom("/api/v1/query", &[("query", "node_load1"), ("time", &t), ("timeout", "30s")]);
    assert_eq!(ok_data(s, &v)["result"].as_array().unwrap().len(), 2);
    let (s, v) = c.prom("/api/v1/query", &[("query", "1"), ("timeout", "soon")]);
    assert_eq!((s, v["errorType"].as_str()), (400, Some("bad_data")), "{v}");
    // Aggregations and functions through the API.
    let (s, v) = c.prom("/api/v1/query", &[("query", "sum by (job) (node_load1)"), ("time", &t)]);
    assert_eq!(
        ok_data(s, &v)["result"],
        json!([{"metric": {"job": "node"}, "value": [t.parse::<i64>().unwrap(), "5"]}])
    );
}

#[test]
fn query_limits_from_config() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("cairn.toml");
    std::fs::write(&cfg, "[query]\nmax_samples = 2\n").unwrap();
    let data = dir.path().join("data");
    let c = Cairn::start(&["serve"], &data, &["--config", cfg.to_str().unwrap()]);
    let t0 = seed(&c);
    let t = ((t0 + 15_000) / 1000).to_string();
    // node_load1 selects 3 samples: over the limit of 2.
    let (s, v) = c.prom("/api/v1/query", &[("query", "node_load1"), ("time", &t)]);
    assert_eq!((s, v["errorType"].as_str()), (422, Some("execution")), "{v}");
    assert_eq!(v["error"], "query processing would load too many samples into memory in query execution");
    let (s, v) = c.prom("/api/v1/query", &[("query", "up"), ("time", &t)]);
    assert_eq!(ok_data(s, &v)["result"].as_array().unwrap().len(), 1);
    // Parse errors carry Prometheus's parameter prefix.
    let (s, v) = c.prom("/api/v1/query", &[("query", "up{")]);
    assert_eq!((s, v["errorType"].as_str()), (400, Some("bad_data")), "{v}");
    assert!(v["error"].as_str().unwrap().starts_with("invalid parameter \"query\": "), "{v}");
}

/// `query.max_series`, `query.timeout` and `query.max_concurrency`, each in
/// Prometheus's error shape.
#[test]
fn query_series_timeout_and_concurrency_limits() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("cairn.toml");
    std::fs::write(&cfg, "[query]\nmax_series = 2\nmax_concurrency = 1\ntimeout = \"3s\"\n").unwrap();
    let c = Cairn::start(&["serve"], &dir.path().join("data"), &["--config", cfg.to_str().unwrap()]);
    let t0 = seed(&c);
    let t = ((t0 + 15_000) / 1000).to_string();
    // node_load1 is 2 series; with up, 3.
    let (s, v) = c.prom("/api/v1/query", &[("query", "node_load1"), ("time", &t)]);
    assert_eq!(ok_data(s, &v)["result"].as_array().unwrap().len(), 2);
    let (s, v) = c.prom("/api/v1/query", &[("query", "node_load1 + on(instance) group_left up"), ("time", &t)]);
    assert_eq!((s, v["errorType"].as_str()), (422, Some("execution")), "{v}");
    assert_eq!(v["error"], "query would select more than 2 series (query.max_series)");
    let (s, v) =
        c.prom("/api/v1/query_range", &[("query", r#"{job="node"}"#), ("start", &t), ("end", &t), ("step", "15")]);
    assert_eq!((s, v["errorType"].as_str()), (422, Some("execution")), "{v}");

    // A query needing millions of subquery steps cannot finish in 1 ms:
    // 503 `timeout`, with Prometheus's message.
    let slow = "count_over_time(vector(1)[300d:1s])";
    let (s, v) = c.prom("/api/v1/query", &[("query", slow), ("timeout", "1ms")]);
    assert_eq!((s, v["errorType"].as_str()), (503, Some("timeout")), "{v}");
    assert_eq!(v["error"], "query timed out in expression evaluation");

    // With one slot, a query arriving while the slow one runs (for up to
    // the 3 s `query.timeout`) waits, and gives up when its own timeout
    // passes in the queue. Quick queries that happen to arrive before the
    // slow one took the slot just succeed; keep asking until one waits.
    let url = c.url.clone();
    let slow_one = std::thread::spawn(move || {
        let r = reqwest::blocking::Client::new()
            .get(format!("{url}/api/v1/query"))
            .query(&[("query", slow)])
            .send()
            .unwrap();
        (r.status().as_u16(), r.text().unwrap())
    });
    let mut queued = None;
    while !slow_one.is_finished() {
        let (s, v) = c.prom("/api/v1/query", &[("query", "1+1"), ("timeout", "200ms")]);
        if s == 503 {
            queued = Some(v);
            break;
        }
        assert_eq!(s, 200, "{v}");
    }
    let (s, body) = slow_one.join().unwrap();
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!((s, v["errorType"].as_str()), (503, Some("timeout")), "{v}");
    let q = queued.expect("no quick query waited for the slot while the slow one ran");
    assert_eq!(q["errorType"], "timeout", "{q}");
    assert_eq!(q["error"], "query timed out in query queue", "{q}");
    // The slot is free again.
    let (s, v) = c.prom("/api/v1/query", &[("query", "1+1"), ("timeout", "200ms")]);
    assert_eq!(ok_data(s, &v)["result"][1], "2");
}

/// Byte-exact bodies: field order and number formatting as Prometheus writes them.
#[test]
fn response_bytes_match_prometheus() {
    let dir = tempfile::tempdir().unwrap();
    let c = Cairn::serve(dir.path());
    let (s, b) = c.get("/api/v1/query?query=1%2B1&time=5");
    assert_eq!((s, b.as_str()), (200, r#"{"status":"success","data":{"resultType":"scalar","result":[5,"2"]}}"#));
    let (s, b) = c.get("/api/v1/query?query=vector(1.5)&time=1.25");
    assert_eq!(
        (s, b.as_str()),
        (200, r#"{"status":"success","data":{"resultType":"vector","result":[{"metric":{},"value":[1.25,"1.5"]}]}}"#)
    );
    let (s, b) = c.get("/api/v1/query_range?query=1&start=0&end=1&step=1");
    assert_eq!(
        (s, b.as_str()),
        (
            200,
            r#"{"status":"success","data":{"resultType":"matrix","result":[{"metric":{},"values":[[0,"1"],[1,"1"]]}]}}"#
        )
    );
    let (s, b) = c.get("/api/v1/label/job/values");
    assert_eq!((s, b.as_str()), (200, r#"{"status":"success","data":[]}"#));
    let (s, b) = c.get("/api/v1/query?query=1%3C2");
    assert_eq!(s, 400);
    assert!(b.starts_with(r#"{"status":"error","errorType":"bad_data","error":"#), "{b}");
    let (_, b) = c.get("/api/v1/status/buildinfo");
    assert!(b.starts_with(r#"{"status":"success","data":{"version":"#), "{b}");
}

/// Parse errors come back as Prometheus formats them: HTTP 400,
/// `errorType` `bad_data`, and `invalid parameter "query": line:col: parse
/// error: …` with the position of the fault (1-based byte column), on both
/// GET and POST and on query_range; duration expressions and the
/// `anchored`/`smoothed` modifiers parse and evaluate.
#[test]
fn parse_errors_carry_positions() {
    let dir = tempfile::tempdir().unwrap();
    let c = Cairn::serve(dir.path());
    let t0 = seed(&c);
    let cases = [
        ("foo bar", "1:5: parse error: unexpected identifier \"bar\""),
        ("sum(rate(x[5m])", "1:16: parse error: unclosed left parenthesis"),
        ("1 +", "1:4: parse error: unexpected end of input"),
        ("up{job=\"x\"})", "1:12: parse error: unexpected right parenthesis \")\""),
        ("up\n  $ 1", "2:3: parse error: unexpected character: \"$\""),
        ("x[1m-2m]", "1:3: parse error: range duration must be greater than 0, got -60s"),
    ];
    for (q, want) in cases {
        let want = format!("invalid parameter \"query\": {want}");
        let (s, v) = c.prom("/api/v1/query", &[("query", q)]);
        assert_eq!(s, 400, "{q}: {v}");
        assert_eq!(v["status"], "error", "{v}");
        assert_eq!(v["errorType"], "bad_data", "{v}");
        assert_eq!(v["error"], want.as_str(), "{q}");
        let (s, b) = c.post_form("/api/v1/query_range", &[("query", q), ("start", "1"), ("end", "2"), ("step", "1")]);
        let v: Value = serde_json::from_str(&b).unwrap();
        assert_eq!((s, v["error"].as_str()), (400, Some(want.as_str())), "{q}");
    }
    // Extended syntax evaluates: node_load1{instance="a"} is 1 at t0, 2 at
    // t0+15s.
    let t = ((t0 + 15_000) / 1000).to_string();
    for (q, want) in [
        ("node_load1{instance=\"a\"} offset (10s+5s)", "1"),
        ("delta(node_load1{instance=\"a\"}[10s+10s] anchored)", "1"),
        ("node_load1{instance=\"a\"} offset 5s smoothed", "1.6666666666666665"),
    ] {
        let (s, v) = c.prom("/api/v1/query", &[("query", q), ("time", &t)]);
        let r = &ok_data(s, &v)["result"];
        assert_eq!(r[0]["value"][1], want, "{q}: {v}");
    }
    // step() and range() in a range query: a range of step() + 15s.
    let (s, v) = c.prom(
        "/api/v1/query_range",
        &[
            ("query", "count_over_time(node_load1{instance=\"a\"}[step()+15s])"),
            ("start", &t),
            ("end", &t),
            ("step", "1"),
        ],
    );
    assert_eq!(ok_data(s, &v)["result"][0]["values"][0][1], "2", "{v}");
}
