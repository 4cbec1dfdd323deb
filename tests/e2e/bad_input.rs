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
