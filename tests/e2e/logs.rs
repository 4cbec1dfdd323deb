//! Loki push (JSON) → query_range with all four matcher kinds, line filters,
//! start/end/limit/direction.

use crate::harness::{Cairn, now_ns};

const A: &[(&str, &str)] = &[("job", "api"), ("env", "prod")];
const B: &[(&str, &str)] = &[("job", "web"), ("env", "prod")];
const C: &[(&str, &str)] = &[("job", "db"), ("env", "dev")];

fn seed(c: &Cairn, t0: i64) {
    let mk = |prefix: &str| -> Vec<(i64, String)> {
        (0..10)
            .map(|i| (t0 + i * 1_000_000_000, format!("{prefix} line {i}{}", if i % 3 == 0 { " error" } else { "" })))
            .collect()
    };
    let (s, b) = c.push_logs_json(&[(A, mk("api")), (B, mk("web")), (C, mk("db"))]);
    assert_eq!(s, 204, "push failed: {b}");
}

#[test]
fn push_json_then_query_range() {
    let dir = tempfile::tempdir().unwrap();
    let c = Cairn::serve(dir.path());
    let t0 = now_ns() - 60_000_000_000;
    seed(&c, t0);
    let start = (t0 - 1).to_string();
    let end = (t0 + 20_000_000_000).to_string();
    let q = |query: &str| c.loki_lines(&[("query", query), ("start", &start), ("end", &end), ("limit", "1000")]);

    // = : one stream, all 10 lines, newest first (default direction backward)
    let got = q(r#"{job="api"}"#);
    assert_eq!(got.len(), 10);
    assert_eq!(got[0].2, "api line 9 error");
    // Streams split by the ingest-time `detected_level`; each is newest first.
    assert!(got.windows(2).all(|w| w[0].0 != w[1].0 || w[0].1 > w[1].1), "backward order");
    assert_eq!(got[0].0, r#"{"detected_level":"error","env":"prod","job":"api","service_name":"api"}"#);
    // != (with a non-empty matcher beside it)
    let got = q(r#"{env=~".+", job!="api"}"#);
    assert_eq!(got.len(), 20);
    // =~
    let got = q(r#"{job=~"api|web"}"#);
    assert_eq!(got.len(), 20);
    // !~
    let got = q(r#"{env="prod", job!~"a.*"}"#);
    assert_eq!(got.len(), 10);
    assert!(got.iter().all(|l| l.2.starts_with("web")));
    // |= line filter, and chained filters
    let got = q(r#"{env=~"prod|dev"} |= "error""#);
    assert_eq!(got.len(), 12);
    let got = q(r#"{env=~"prod|dev"} |= "error" != "db" |~ "line [0-5]""#);
    assert_eq!(got.len(), 4);
    // no match
    assert!(q(r#"{job="nope"}"#).is_empty());
}

#[test]
fn start_end_limit_direction() {
    let dir = tempfile::tempdir().unwrap();
    let c = Cairn::serve(dir.path());
    let t0 = now_ns() - 60_000_000_000;
    seed(&c, t0);
    let s = |i: i64| (t0 + i * 1_000_000_000).to_string();
    // [start, end): lines 2..5 of api
    let mut got =
        c.loki_lines(&[("query", r#"{job="api"}"#), ("start", &s(2)), ("end", &s(5)), ("direction", "forward")]);
    // Two streams (by `detected_level`): compare in time order.
    got.sort_by_key(|l| l.1);
    assert_eq!(got.iter().map(|l| l.2.as_str()).collect::<Vec<_>>(), ["api line 2", "api line 3 error", "api line 4"]);
    // limit across streams, backward: the 4 newest over all three streams
    let got = c.loki_lines(&[("query", r#"{env=~".+"}"#), ("start", &s(0)), ("end", &s(100)), ("limit", "4")]);
    assert_eq!(got.len(), 4);
    let mut ts: Vec<i64> = got.iter().map(|l| l.1).collect();
    ts.sort();
    assert!(ts.iter().all(|&t| t >= t0 + 8_000_000_000), "backward limit keeps the newest: {ts:?}");
    // forward: the oldest
    let got = c.loki_lines(&[
        ("query", r#"{env=~".+"}"#),
        ("start", &s(0)),
        ("end", &s(100)),
        ("limit", "3"),
        ("direction", "FORWARD"),
    ]);
    assert_eq!(got.len(), 3);
    assert!(got.iter().all(|l| l.1 == t0), "forward limit keeps the oldest");
    // RFC 3339 and float-seconds times are accepted too
    let got = c.loki_lines(&[
        ("query", r#"{job="api"}"#),
        ("start", &cairn_wire::time::format_rfc3339_ns(t0 - 86_400_000_000_000)),
        ("end", &format!("{}.5", (t0 + 100_000_000_000) / 1_000_000_000)),
    ]);
    assert_eq!(got.len(), 10);
    // default limit is 100, default range the last hour
    let got = c.loki_lines(&[("query", r#"{job="api"}"#)]);
    assert_eq!(got.len(), 10);
}

#[test]
fn protobuf_push_with_metadata_and_out_of_order() {
    use cairn_wire::proto::{EntryAdapter, LabelPairAdapter, PushRequest, StreamAdapter, Timestamp};
    use prost::Message;
    let dir = tempfile::tempdir().unwrap();
    let c = Cairn::serve(dir.path());
    let t0 = now_ns() - 10_000_000_000;
    let mut req = PushRequest {
        streams: vec![StreamAdapter {
            labels: r#"{job="proto", host="h1"}"#.into(),
            entries: [3, 1, 2]
                .iter()
                .map(|&i| EntryAdapter {
                    timestamp: Some(Timestamp::from_ns(t0 + i)),
                    line: format!("entry {i}").into_bytes(),
                    structured_metadata: vec![LabelPairAdapter { name: "trace_id".into(), value: format!("t{i}") }],
                })
                .collect(),
        }],
    };
    // a line with invalid UTF-8: stored with U+FFFD in place of each bad sequence
    req.streams.push(StreamAdapter {
        labels: r#"{job="bytes"}"#.into(),
        entries: vec![EntryAdapter {
            timestamp: Some(Timestamp::from_ns(t0)),
            line: b"ok \xff\xfe then \xc3 end \xc3\xa9".to_vec(),
            structured_metadata: vec![],
        }],
    });
    let (s, b) = c.post_raw(
        "/loki/api/v1/push",
        &[("Content-Type", "application/x-protobuf")],
        cairn_wire::proto::snappy_compress(&req.encode_to_vec()),
    );
    assert_eq!(s, 204, "{b}");
    let got = c.loki_lines(&[("query", r#"{job="proto"}"#), ("direction", "forward")]);
    assert_eq!(got.iter().map(|l| l.2.as_str()).collect::<Vec<_>>(), ["entry 1", "entry 2", "entry 3"]);
    let got = c.loki_lines(&[("query", r#"{job="bytes"}"#)]);
    assert_eq!(got.iter().map(|l| l.2.as_str()).collect::<Vec<_>>(), ["ok \u{fffd}\u{fffd} then \u{fffd} end é"]);
}

#[test]
fn logql_query_length_and_series_limits() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("cairn.toml");
    std::fs::write(&cfg, "[query]\nlogql_max_query_length = \"2h\"\nlogql_max_series = 3\n").unwrap();
    let c = Cairn::start(&["serve"], &dir.path().join("data"), &["--config", cfg.to_str().unwrap()]);
    let t = now_ns() - 60_000_000_000;
    for i in 0..5 {
        let n = i.to_string();
        let (s, b) = c.push_logs_json(&[(&[("job", "lim"), ("n", &n)], vec![(t, format!("line {i}"))])]);
        assert_eq!(s, 204, "{b}");
    }
    let now_s = now_ns() / 1_000_000_000;
    let range = |from: i64, q: &str| {
        c.get_params(
            "/loki/api/v1/query_range",
            &[("query", q), ("start", &(now_s - from).to_string()), ("end", &now_s.to_string()), ("step", "60")],
        )
    };
    let (s, b) = range(3 * 3600, r#"{job="lim"}"#);
    assert_eq!(s, 400, "{b}");
    assert!(b.contains("the query time range exceeds the limit (query length: 3h0m0s, limit: 2h0m0s)"), "{b}");
    let (s, b) = range(3600, r#"count_over_time({job="lim"}[5m])"#);
    assert_eq!(s, 400, "{b}");
    assert!(b.contains("maximum number of series (3) reached for a single query"), "{b}");
    let (s, b) = range(3600, r#"sum(count_over_time({job="lim"}[5m]))"#);
    assert_eq!(s, 200, "{b}");
    c.stop();
}

/// `query.logql_timeout`: a query still running at its deadline stops with
/// Loki's HTTP 504. Deterministic, not a race: the deadline (1 ms) is a
/// small fraction of what the query needs (JSON-parsing and templating
/// 60,000 lines takes tens of milliseconds even in a release build), and the
/// engine checks it at least every 4096 entries.
#[test]
fn logql_timeout_answers_loki_504() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("cairn.toml");
    std::fs::write(&cfg, "[query]\nlogql_timeout = \"1ms\"\n").unwrap();
    let c = Cairn::start(&["serve"], &dir.path().join("data"), &["--config", cfg.to_str().unwrap()]);
    let t = now_ns() - 600_000_000_000;
    for part in 0..6 {
        let lines: Vec<(i64, String)> = (0..10_000)
            .map(|i| {
                let n = part * 10_000 + i;
                (
                    t + n * 1_000_000,
                    format!(r#"{{"level":"info","n":{n},"msg":"request {n} served","path":"/a/{}"}}"#, n % 7),
                )
            })
            .collect();
        let (s, b) = c.push_logs_json(&[(&[("job", "slow")], lines)]);
        assert_eq!(s, 204, "{b}");
    }
    let now_s = (now_ns() / 1_000_000_000).to_string();
    let start = ((t / 1_000_000_000) - 60).to_string();
    let heavy = r#"sum by (path) (count_over_time({job="slow"} | json | line_format "{{.msg}} {{.path}}" | label_format p2="{{.path}}" [1h]))"#;
    for (q, step) in [(heavy, "60"), (r#"{job="slow"} | json | line_format "{{.msg}} {{.path}}" | n > 59990"#, "60")] {
        let (s, b) = c.get_params(
            "/loki/api/v1/query_range",
            &[("query", q), ("start", &start), ("end", &now_s), ("step", step), ("limit", "10")],
        );
        assert_eq!(s, 504, "{q}: {b}");
        assert_eq!(
            b.trim(),
            "request timed out, decrease the duration of the request or add more label matchers (prefer exact match over regex match) to reduce the amount of data processed"
        );
    }
    c.stop();
}
