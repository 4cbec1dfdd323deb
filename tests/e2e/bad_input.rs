//! Malformed writes and queries get a 4xx with a message; the server stays
//! healthy and keeps accepting good writes.

use crate::harness::{Cairn, now_ns};

#[test]
fn bad_writes_and_queries_get_4xx_with_messages() {
    let dir = tempfile::tempdir().unwrap();
    let c = Cairn::serve(dir.path());
    let json = [("Content-Type", "application/json")];
    let proto = [("Content-Type", "application/x-protobuf")];

    // Loki push: malformed JSON, wrong shape, bad timestamp
    let (s, b) = c.post_raw("/loki/api/v1/push", &json, b"{\"streams\": [".to_vec());
    assert_eq!(s, 400);
    assert!(b.contains("invalid JSON push body"), "{b}");
    let (s, b) = c.post_raw(
        "/loki/api/v1/push",
        &json,
        br#"{"streams":[{"stream":{"a":"b"},"values":[["soon","x"]]}]}"#.to_vec(),
    );
    assert_eq!(s, 400);
    assert!(b.contains("timestamp"), "{b}");
    // Loki push: bad snappy, then valid snappy around garbage protobuf
    let (s, b) = c.post_raw("/loki/api/v1/push", &proto, b"\x0anot snappy at all".to_vec());
    assert_eq!(s, 400);
    assert!(b.contains("snappy"), "{b}");
    // a snappy header claiming a huge body is refused as too large, before allocating
    let (s, b) = c.post_raw("/loki/api/v1/push", &proto, b"\xff\xff\xff\xff\x0fxx".to_vec());
    assert_eq!(s, 413);
    assert!(b.contains("exceeds"), "{b}");
    let (s, b) = c.post_raw(
        "/loki/api/v1/push",
        &proto,
        cairn_wire::proto::snappy_compress(b"\x0a\xff\xff\xff\xff\x0f garbage"),
    );
    assert_eq!(s, 400);
    assert!(b.contains("protobuf"), "{b}");
    // remote_write: bad snappy, garbage protobuf
    let rw = [("Content-Type", "application/x-protobuf"), ("Content-Encoding", "snappy")];
    let (s, b) = c.post_raw("/api/v1/write", &rw, b"definitely not snappy".to_vec());
    assert_eq!(s, 400);
    assert!(b.contains("snappy"), "{b}");
    let (s, b) = c.post_raw("/api/v1/write", &rw, cairn_wire::proto::snappy_compress(b"\x0a\x05\x0a\x03\x0a"));
    assert_eq!(s, 400);
    assert!(b.contains("protobuf"), "{b}");
    // a label name that is not UTF-8 refuses the whole request, twice (the
    // second time the server has seen the bytes before)
    for _ in 0..2 {
        let body = cairn_wire::proto::snappy_compress(b"\x0a\x07\x0a\x05\x0a\x01\xff\x12\x00");
        let (s, b) = c.post_raw("/api/v1/write", &rw, body);
        assert_eq!(s, 400);
        assert!(b.contains("UTF-8"), "{b}");
    }
    // unknown Content-Encoding
    let (s, b) = c.post_raw("/api/v1/write", &[("Content-Encoding", "br")], b"x".to_vec());
    assert_eq!(s, 400);
    assert!(b.contains("Content-Encoding"), "{b}");

    // A push with one bad stream stores the good one and names the bad one.
    let t = now_ns() - 1_000_000_000;
    let (s, b) = c.post_raw(
        "/loki/api/v1/push",
        &json,
        format!(r#"{{"streams":[{{"stream":{{"0bad":"x"}},"values":[["{t}","a"]]}},{{"stream":{{"job":"good"}},"values":[["{t}","kept"]]}}]}}"#)
            .into_bytes(),
    );
    assert_eq!(s, 400);
    assert!(b.contains("0bad"), "{b}");
    assert_eq!(c.loki_lines(&[("query", r#"{job="good"}"#)]).len(), 1);

    // Bad queries: LogQL parse errors are 400 plain text with a position
    let (s, b) = c.get_params("/loki/api/v1/query_range", &[("query", r#"{job="x"} |= 5"#)]);
    assert_eq!(s, 400);
    assert!(b.starts_with("parse error at line 1, col 14"), "{b}");
    let (s, b) = c.get_params("/loki/api/v1/query_range", &[("query", r#"{job="x"}"#), ("limit", "999999")]);
    assert_eq!(s, 400);
    assert!(b.contains("max entries limit"), "{b}");
    let (s, b) = c.get_params("/loki/api/v1/query_range", &[("query", r#"{job="x"}"#), ("start", "yesterday")]);
    assert_eq!(s, 400);
    assert!(b.contains("start"), "{b}");
    // PromQL errors use Prometheus's error shape
    let (s, v) = c.prom("/api/v1/query", &[("query", "up{")]);
    assert_eq!(s, 400);
    assert_eq!(v["status"], "error");
    assert_eq!(v["errorType"], "bad_data");
    assert!(!v["error"].as_str().unwrap().is_empty());
    let (s, v) = c.prom("/api/v1/query_range", &[("query", "up"), ("start", "1"), ("end", "2")]);
    assert_eq!(s, 400);
    assert!(v["error"].as_str().unwrap().contains("step"), "{v}");
    let (s, v) = c.prom("/api/v1/query_range", &[("query", "up"), ("start", "x"), ("end", "2"), ("step", "1")]);
    assert_eq!(s, 400);
    assert!(v["error"].as_str().unwrap().contains("\"start\""), "{v}");

    // Still healthy, and good writes still work.
    assert_eq!(c.get("/ready").0, 200);
    let (s, b) = c.push_logs_json(&[(&[("job", "after")], vec![(now_ns() - 1000, "still fine".into())])]);
    assert_eq!(s, 204, "{b}");
    assert_eq!(c.loki_lines(&[("query", r#"{job="after"}"#)]).len(), 1);
    // rejections are counted
    let (_, m) = c.get("/metrics");
    assert!(m.contains("cairn_ingest_rejected_total{"), "{m}");
    c.stop();
}

#[test]
fn oversized_bodies_and_lines_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("cairn.toml");
    std::fs::write(&cfg, "[limits]\nmax_request_size = \"64KiB\"\nmax_line_size = \"1KiB\"\n").unwrap();
    let data = dir.path().join("data");
    let c = Cairn::start(&["serve"], &data, &["--config", cfg.to_str().unwrap()]);
    let (s, _) = c.post_raw("/loki/api/v1/push", &[("Content-Type", "application/json")], vec![b' '; 100 * 1024]);
    assert_eq!(s, 413);
    let t = now_ns() - 1_000_000;
    let (s, b) = c.push_logs_json(&[(&[("job", "big")], vec![(t, "x".repeat(2000)), (t + 1, "short".into())])]);
    assert_eq!(s, 400);
    assert!(b.contains("limits.max_line_size"), "{b}");
    let got = c.loki_lines(&[("query", r#"{job="big"}"#)]);
    assert_eq!(got.len(), 1, "the short line is stored");
    c.stop();
}

/// Slow-loris: clients that stall in the middle of their headers or body are
/// cut off after `server.read_timeout` (body: HTTP 408), and while they hang
/// the server keeps answering everyone else.
#[test]
fn stalled_clients_are_cut_off_and_do_not_hold_up_others() {
    use std::io::{Read, Write};
    use std::net::TcpStream;
    use std::time::Duration;

    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("cairn.toml");
    std::fs::write(&cfg, "[server]\nread_timeout = \"1s\"\n").unwrap();
    let c = Cairn::start(&["serve"], &dir.path().join("data"), &["--config", cfg.to_str().unwrap()]);
    let addr = c.url.trim_start_matches("http://").to_string();
    let open = |prefix: &[u8]| {
        let mut s = TcpStream::connect(&addr).unwrap();
        s.write_all(prefix).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        s
    };
    let half_headers: Vec<TcpStream> =
        (0..20).map(|_| open(b"POST /loki/api/v1/push HTTP/1.1\r\nHost: x\r\nContent-")).collect();
    let half_bodies: Vec<TcpStream> = (0..20)
        .map(|_| {
            open(b"POST /loki/api/v1/push HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{\"streams\":")
        })
        .collect();
    // Everyone else is served meanwhile.
    assert_eq!(c.get("/ready").0, 200);
    let (s, b) = c.push_logs_json(&[(&[("job", "meanwhile")], vec![(now_ns() - 1000, "served".into())])]);
    assert_eq!(s, 204, "{b}");
    // The stalled ones are closed (the 30 s read timeout here is only a
    // bound for a broken server: it happens after ~1 s).
    for mut s in half_headers {
        let mut buf = Vec::new();
        match s.read_to_end(&mut buf) {
            Ok(_) => {}
            Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset, "connection not closed: {e}"),
        }
    }
    for mut s in half_bodies {
        let mut buf = String::new();
        let _ = s.read_to_string(&mut buf);
        assert!(buf.starts_with("HTTP/1.1 408"), "{buf}");
        assert!(buf.contains("server.read_timeout = 1s"), "{buf}");
    }
    assert_eq!(c.loki_lines(&[("query", r#"{job="meanwhile"}"#)]).len(), 1);
    assert_eq!(c.get("/ready").0, 200);
    c.stop();
}

/// Deeply nested JSON in a push body, in log lines parsed by `| json` at
/// query time, in the detected-fields endpoint and in the pipeline dry run:
/// a 4xx or a normal answer, never a crash (stack overflow).
#[test]
fn deeply_nested_json_is_refused_or_handled() {
    let dir = tempfile::tempdir().unwrap();
    let c = Cairn::serve(dir.path());
    let json = [("Content-Type", "application/json")];
    let depth = 100_000;
    let arrays = format!("{}{}", "[".repeat(depth), "]".repeat(depth));
    let objects = format!("{}1{}", "{\"a\":".repeat(depth), "}".repeat(depth));
    for nested in [&arrays, &objects] {
        let body = format!(r#"{{"streams":[{{"stream":{{"job":"x"}},"values":{nested}}}]}}"#);
        let (s, b) = c.post_raw("/loki/api/v1/push", &json, body.into_bytes());
        assert_eq!(s, 400, "{b}");
        assert!(b.contains("invalid JSON push body"), "{b}");
    }
    // As log lines (valid push, nested line content) the query-time parsers
    // must cope; 40,000 levels keep the lines under limits.max_line_size.
    let depth = 40_000;
    let arrays = format!("{}{}", "[".repeat(depth), "]".repeat(depth));
    let objects = format!("{}1{}", "{\"a\":".repeat(depth), "}".repeat(depth));
    let t = now_ns() - 1_000_000_000;
    let (s, b) = c.push_logs_json(&[(
        &[("job", "deep")],
        vec![(t, arrays.clone()), (t + 1, objects.clone()), (t + 2, "{\"ok\":1}".into())],
    )]);
    assert_eq!(s, 204, "{b}");
    for q in [
        r#"{job="deep"} | json"#,
        r#"{job="deep"} | json | ok="1""#,
        r#"{job="deep"} | json a="a.a.a""#,
        r#"{job="deep"} | logfmt"#,
    ] {
        let (s, b) = c.get_params("/loki/api/v1/query_range", &[("query", q), ("limit", "10")]);
        assert_eq!(s, 200, "{q}: {b}");
    }
    let (s, b) = c.get_params("/loki/api/v1/detected_fields", &[("query", r#"{job="deep"}"#)]);
    assert_eq!(s, 200, "{b}");
    let (s, _) = c.post_raw(
        "/api/v1/pipeline/test",
        &[("Content-Type", "application/json")],
        serde_json::to_vec(&serde_json::json!({
            "labels": "{job=\"deep\"}",
            "lines": [arrays, objects],
            "pipeline": [{"selector": "{job=\"deep\"}", "stage": [{"type": "json", "fields": {"a": "a.a"}}]}],
        }))
        .unwrap(),
    );
    assert_eq!(s, 200);
    assert_eq!(c.get("/ready").0, 200);
    c.stop();
}

/// The malformed-request corpus of issue 10: every case is sent to the write
/// or read endpoint it targets; each gets the expected status and a message
/// naming the problem, the server stays healthy, and a bystander tenant's
/// acknowledged data is untouched.
#[test]
fn malformed_request_corpus() {
    use cairn_wire::proto::{self, EntryAdapter, PushRequest, StreamAdapter, Timestamp};
    use prost::Message;

    let dir = tempfile::tempdir().unwrap();
    let c = Cairn::serve(dir.path());
    let t = now_ns() - 1_000_000_000;
    let bystander = [("Content-Type", "application/json"), ("X-Scope-OrgID", "bystander")];
    let body = format!(r#"{{"streams":[{{"stream":{{"job":"safe"}},"values":[["{t}","kept"]]}}]}}"#);
    assert_eq!(c.post_raw("/loki/api/v1/push", &bystander, body.into_bytes()).0, 204);

    let json = vec![("Content-Type", "application/json")];
    let proto_h = vec![("Content-Type", "application/x-protobuf")];
    let rw = vec![("Content-Type", "application/x-protobuf"), ("Content-Encoding", "snappy")];
    let loki_proto = |labels: &str, line: &[u8]| {
        let req = PushRequest {
            streams: vec![StreamAdapter {
                labels: labels.to_string(),
                entries: vec![EntryAdapter {
                    timestamp: Some(Timestamp { seconds: t / 1_000_000_000, nanos: 0 }),
                    line: line.to_vec(),
                    structured_metadata: vec![],
                }],
            }],
        };
        proto::snappy_compress(&req.encode_to_vec())
    };
    let series = |labels: Vec<(&[u8], &[u8])>| {
        // hand-encoded so names and values may be any bytes
        let mut ts = Vec::new();
        for (n, v) in labels {
            let mut l = vec![0x0a, n.len() as u8];
            l.extend_from_slice(n);
            l.extend_from_slice(&[0x12, v.len() as u8]);
            l.extend_from_slice(v);
            ts.push(0x0a);
            ts.push(l.len() as u8);
            ts.extend(l);
        }
        let mut req = vec![0x0a, ts.len() as u8];
        req.extend(ts);
        proto::snappy_compress(&req)
    };
    let valid_rw = crate::harness::write_request(&[(&[("__name__", "m"), ("job", "j")], vec![(t / 1_000_000, 1.0)])]);
    let raw_rw = proto::snappy_decompress(&valid_rw, 1 << 20).unwrap();
    let huge = "v".repeat(3000);
    // (what, path, headers, body, expected status, text the message must hold)
    type Case<'a> = (&'a str, &'a str, Vec<(&'a str, &'a str)>, Vec<u8>, u16, &'a str);
    let cases: Vec<Case> = vec![
        // Loki push
        (
            "truncated JSON",
            "/loki/api/v1/push",
            json.clone(),
            b"{\"streams\":[{\"stream\":".to_vec(),
            400,
            "invalid JSON push body",
        ),
        (
            "JSON as text/plain",
            "/loki/api/v1/push",
            vec![("Content-Type", "text/plain")],
            b"{\"streams\":[]}".to_vec(),
            400,
            "snappy",
        ),
        (
            "invalid gzip",
            "/loki/api/v1/push",
            vec![("Content-Type", "application/json"), ("Content-Encoding", "gzip")],
            b"\x1f\x8bnot gzip".to_vec(),
            400,
            "gzip",
        ),
        (
            "truncated protobuf",
            "/loki/api/v1/push",
            proto_h.clone(),
            {
                let b = loki_proto("{job=\"x\"}", b"line");
                proto::snappy_compress(&proto::snappy_decompress(&b, 1 << 20).unwrap()[..10])
            },
            400,
            "protobuf",
        ),
        ("duplicate labels", "/loki/api/v1/push", proto_h.clone(), loki_proto("{a=\"1\", a=\"2\"}", b"x"), 400, "a"),
        (
            "empty label name",
            "/loki/api/v1/push",
            json.clone(),
            format!(r#"{{"streams":[{{"stream":{{"":"x"}},"values":[["{t}","l"]]}}]}}"#).into_bytes(),
            400,
            "refused",
        ),
        (
            "huge label value",
            "/loki/api/v1/push",
            json.clone(),
            format!(r#"{{"streams":[{{"stream":{{"job":"{huge}"}},"values":[["{t}","l"]]}}]}}"#).into_bytes(),
            400,
            "limits.max_label_value_length",
        ),
        (
            "NaN timestamp",
            "/loki/api/v1/push",
            json.clone(),
            br#"{"streams":[{"stream":{"job":"x"},"values":[["NaN","l"]]}]}"#.to_vec(),
            400,
            "timestamp",
        ),
        (
            "invalid UTF-8 in labels",
            "/loki/api/v1/push",
            proto_h.clone(),
            {
                let req = PushRequest { streams: vec![StreamAdapter { labels: String::new(), entries: vec![] }] };
                let mut b = req.encode_to_vec();
                b.clear();
                b.extend_from_slice(&[0x0a, 0x06, 0x0a, 0x04, b'{', 0xff, b'}', b' ']);
                proto::snappy_compress(&b)
            },
            400,
            "UTF-8",
        ),
        // remote_write
        (
            "truncated protobuf",
            "/api/v1/write",
            rw.clone(),
            proto::snappy_compress(&raw_rw[..raw_rw.len() - 3]),
            400,
            "protobuf",
        ),
        (
            "JSON body",
            "/api/v1/write",
            vec![("Content-Type", "application/json")],
            b"{\"timeseries\":[]}".to_vec(),
            400,
            "snappy",
        ),
        ("invalid gzip", "/api/v1/write", vec![("Content-Encoding", "gzip")], b"\x1f\x8bxx".to_vec(), 400, "gzip"),
        (
            "duplicate labels",
            "/api/v1/write",
            rw.clone(),
            series(vec![(b"__name__", b"m"), (b"a", b"1"), (b"a", b"2")]),
            400,
            "a",
        ),
        ("empty label name", "/api/v1/write", rw.clone(), series(vec![(b"__name__", b"m"), (b"", b"1")]), 400, "label"),
        (
            "invalid UTF-8 value",
            "/api/v1/write",
            rw.clone(),
            series(vec![(b"__name__", b"m"), (b"a", b"\xff\xfe")]),
            400,
            "UTF-8",
        ),
        (
            "huge label value",
            "/api/v1/write",
            rw.clone(),
            crate::harness::write_request(&[(&[("__name__", "m"), ("a", &huge)], vec![(t / 1_000_000, 1.0)])]),
            400,
            "limits.max_label_value_length",
        ),
    ];
    for (what, path, headers, body, status, needle) in cases {
        let (s, b) = c.post_raw(path, &headers, body);
        assert_eq!(s, status, "{path} {what}: {b}");
        assert!(b.contains(needle), "{path} {what}: message {b:?} does not mention {needle:?}");
    }
    // Read endpoints: invalid UTF-8 and pathological nesting in queries.
    let deep_promql = format!("{}1{}", "(".repeat(50_000), ")".repeat(50_000));
    let deep_logql = format!("{}count_over_time({{job=\"x\"}}[1m]){}", "sum(".repeat(50_000), ")".repeat(50_000));
    let deep_logql_parens = format!("{}1{}", "(".repeat(50_000), ")".repeat(50_000));
    for (path, q) in
        [("/api/v1/query", "%ff%fe"), ("/loki/api/v1/query_range", "%ff%fe"), ("/api/v1/series", "match[]=%ff")]
    {
        let (s, b) = c.get(&format!("{path}?query={q}"));
        assert!((400..500).contains(&s), "{path} {q}: {s} {b}");
    }
    for (path, q) in [
        ("/api/v1/query", deep_promql.as_str()),
        ("/loki/api/v1/query", deep_logql.as_str()),
        ("/loki/api/v1/query", deep_logql_parens.as_str()),
    ] {
        let (s, b) = c.post_form(path, &[("query", q)]);
        assert!(s == 200 || (400..500).contains(&s), "{path} deep query: {s} {}", &b[..b.len().min(300)]);
    }
    // Healthy, and the bystander's data is intact.
    assert_eq!(c.get("/ready").0, 200);
    let (s, b) =
        c.get_with("/loki/api/v1/query_range", &[("query", r#"{job="safe"}"#)], &[("X-Scope-OrgID", "bystander")]);
    assert_eq!(s, 200);
    assert!(b.contains("kept"), "{b}");
    c.stop();
}
