//! The ingest pipeline (`[[pipeline]]`, docs/pipeline.md) in the real
//! binary: lines pushed over the Loki API come back parsed, relabelled,
//! redacted and filtered, and a `metrics` stage's counter is queryable with
//! PromQL. Also `cairn pipeline test` over standard input.

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::harness::{Cairn, cairn_bin, now_ns};

const CONFIG: &str = r#"
[[pipeline]]
name = "app"
selector = '{job="app"}'

[[pipeline.stage]]
type = "drop"
expression = "GET /healthz"
reason = "health_checks"

[[pipeline.stage]]
type = "json"

[[pipeline.stage]]
type = "timestamp"
source = "ts"
format = "RFC3339Nano"

[[pipeline.stage]]
type = "labels"
fields = ["level"]

[[pipeline.stage]]
type = "structured_metadata"
fields = { user = "user_name" }

[[pipeline.stage]]
type = "redact"

[[pipeline.stage]]
type = "metrics"
name = "app_errors_total"
source = "level"
value = "error"
interval = "1s"

[[pipeline]]
name = "other-tenant-only"
selector = '{job="app"}'
tenant = "someone-else"
[[pipeline.stage]]
type = "drop"
expression = ".*"
"#;

fn json_line(level: &str, user: &str, msg: &str, ts: &str) -> String {
    serde_json::json!({"level": level, "user": {"name": user}, "msg": msg, "ts": ts}).to_string()
}

#[test]
fn pipeline_parses_relabels_redacts_drops_and_counts() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("cairn.toml");
    std::fs::write(&cfg, CONFIG).unwrap();
    let data = dir.path().join("data");
    let c = Cairn::start(&["serve", "--config", cfg.to_str().unwrap()], &data, &[]);

    let now = now_ns();
    let t0 = now - 60_000_000_000;
    let t0_text = cairn_wire::time::format_rfc3339_ns(t0);
    let lines = [
        json_line("info", "bob", "login ok Authorization: Bearer abc.def.ghi", &t0_text),
        json_line("error", "eve", "db failed password=hunter2", &t0_text),
        json_line("error", "eve", "db failed again", &t0_text),
        "GET /healthz 200".to_string(),
    ];
    let entries: Vec<(i64, String)> = lines.iter().enumerate().map(|(i, l)| (now + i as i64, l.clone())).collect();
    let (st, body) = c.push_logs_json(&[(&[("job", "app")], entries)]);
    assert_eq!(st, 204, "{body}");

    let range = [("start", (now - 3_600_000_000_000).to_string()), ("end", (now + 60_000_000_000).to_string())];
    let q = |query: &str| {
        let mut p: Vec<(&str, &str)> = range.iter().map(|(k, v)| (*k, v.as_str())).collect();
        p.push(("query", query));
        p.push(("limit", "100"));
        c.loki_lines(&p)
    };
    // Labels promoted by the `labels` stage.
    let (s, v) = c.get("/loki/api/v1/label/level/values");
    assert_eq!(s, 200);
    let v: serde_json::Value = serde_json::from_str(&v).unwrap();
    assert_eq!(v["data"], serde_json::json!(["error", "info"]));
    // Every stored line: 3 (the health check was dropped), redacted, with
    // the time from the `ts` field.
    let all = q(r#"{job="app"}"#);
    assert_eq!(all.len(), 3, "{all:?}");
    assert!(all.iter().all(|(_, ts, _)| *ts == t0), "timestamps from the ts field: {all:?}");
    let text: Vec<&str> = all.iter().map(|(_, _, l)| l.as_str()).collect();
    assert!(text.iter().any(|l| l.contains("Bearer <redacted>")), "{text:?}");
    assert!(text.iter().any(|l| l.contains("password=<redacted>")), "{text:?}");
    assert!(
        !text.iter().any(|l| l.contains("hunter2") || l.contains("abc.def.ghi") || l.contains("healthz")),
        "{text:?}"
    );
    // Structured metadata `user` (filterable, and in the stream labels of
    // the response as Loki returns it without categorize-labels).
    let bob = q(r#"{job="app", level="info"} | user="bob""#);
    assert_eq!(bob.len(), 1, "{bob:?}");
    assert!(bob[0].0.contains(r#""user":"bob""#), "{bob:?}");
    assert_eq!(q(r#"{job="app", level="error"} | user="eve""#).len(), 2);
    // The series (streams) carry the promoted label, not the metadata.
    let (s, series) = c.get_params("/loki/api/v1/series", &[("match[]", r#"{job="app"}"#)]);
    assert_eq!(s, 200);
    assert!(series.contains(r#""level":"error""#) && !series.contains("user"), "{series}");

    // The derived counter, written every second through the metrics store.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (s, v) = c.prom("/api/v1/query", &[("query", r#"sum(app_errors_total{job="app"})"#)]);
        assert_eq!(s, 200, "{v}");
        if v["data"]["result"][0]["value"][1] == "2" {
            break;
        }
        assert!(Instant::now() < deadline, "app_errors_total never reached 2: {v}");
        std::thread::sleep(Duration::from_millis(200));
    }
    // Self-metrics.
    let (_, m) = c.get("/metrics");
    assert!(
        m.contains(r#"cairn_pipeline_dropped_lines_total{pipeline="app",stage="0:drop",reason="health_checks"} 1"#),
        "{m}"
    );
    assert!(m.contains(r#"cairn_pipeline_lines_total{pipeline="app",stage="1:json"} 3"#), "{m}");
    assert!(m.contains("cairn_pipeline_metric_samples_total"), "{m}");

    // The dry-run endpoint: the server's chains (its counters untouched),
    // then chains given in the request.
    let req = serde_json::json!({
        "labels": r#"{job="app"}"#,
        "lines": [json_line("warn", "ann", "api_key=xyz", &t0_text), "GET /healthz 200"],
    });
    let (s, body) =
        c.post_raw("/api/v1/pipeline/test", &[("Content-Type", "application/json")], serde_json::to_vec(&req).unwrap());
    assert_eq!(s, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    let r = &v["data"]["results"];
    assert_eq!(v["data"]["pipelines"], serde_json::json!(["app"]));
    assert_eq!((r[0]["result"].as_str(), r[0]["labels"]["level"].as_str()), (Some("kept"), Some("warn")));
    assert_eq!(r[0]["metadata"]["user"], "ann");
    assert!(r[0]["line"].as_str().unwrap().contains("api_key=<redacted>"), "{body}");
    assert_eq!((r[1]["result"].as_str(), r[1]["why"].as_str()), (Some("dropped"), Some(r#"matches "GET /healthz""#)));
    let (_, m) = c.get("/metrics");
    assert!(m.contains(r#"cairn_pipeline_lines_total{pipeline="app",stage="1:json"} 3"#), "dry run counted: {m}");
    let req = serde_json::json!({
        "labels": r#"{job="x"}"#,
        "lines": ["a=1 b=2"],
        "pipeline": [{"selector": r#"{job="x"}"#, "stage": [{"type": "logfmt"}, {"type": "labels", "fields": ["b"]}]}],
    });
    let (s, body) =
        c.post_raw("/api/v1/pipeline/test", &[("Content-Type", "application/json")], serde_json::to_vec(&req).unwrap());
    assert_eq!(s, 200, "{body}");
    assert!(body.contains(r#""labels":{"b":"2","job":"x"}"#), "{body}");
    let req =
        serde_json::json!({"labels": "{job=\"x\"}", "lines": [], "pipeline": [{"selector": "{job=", "stage": []}]});
    let (s, body) =
        c.post_raw("/api/v1/pipeline/test", &[("Content-Type", "application/json")], serde_json::to_vec(&req).unwrap());
    assert_eq!(s, 400, "{body}");
    assert!(body.contains("selector"), "{body}");

    // Another tenant: the second chain (for "someone-else") drops everything.
    let (st, _) = c.post_raw(
        "/loki/api/v1/push",
        &[("Content-Type", "application/json"), ("X-Scope-OrgID", "someone-else")],
        serde_json::to_vec(
            &serde_json::json!({"streams": [{"stream": {"job": "app"}, "values": [[now.to_string(), "x"]]}]}),
        )
        .unwrap(),
    );
    assert_eq!(st, 204);
    let (_, m) = c.get("/metrics");
    assert!(
        m.contains(
            r#"cairn_pipeline_dropped_lines_total{pipeline="other-tenant-only",stage="0:drop",reason="drop_stage"} 1"#
        ),
        "{m}"
    );
    c.stop();
}

#[test]
fn pipeline_test_cli_reads_stdin() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("cairn.toml");
    std::fs::write(&cfg, CONFIG).unwrap();
    let mut child = Command::new(cairn_bin())
        .args(["pipeline", "test", cfg.to_str().unwrap(), "--labels", r#"{job="app"}"#])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let input =
        format!("{}\nGET /healthz 200\n", json_line("error", "eve", "password=hunter2", "2024-05-01T10:00:00.5Z"));
    child.stdin.take().unwrap().write_all(input.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(text.contains(r#"labels:   {job="app", level="error"}"#), "{text}");
    assert!(text.contains(r#"metadata: user="eve""#), "{text}");
    assert!(text.contains("time:     2024-05-01T10:00:00.5Z"), "{text}");
    assert!(text.contains("password=<redacted>"), "{text}");
    assert!(text.contains(r#"dropped by app stage 0 (drop): matches "GET /healthz""#), "{text}");
    assert!(text.contains(r#"app_errors_total{job="app", level="error"} 1"#), "{text}");
    // A bad config is an error naming the pipeline and stage, exit 2.
    std::fs::write(
        &cfg,
        "[[pipeline]]\nselector='{job=\"a\"}'\n[[pipeline.stage]]\ntype=\"regex\"\nexpression=\"(\"\n",
    )
    .unwrap();
    let out = Command::new(cairn_bin())
        .args(["pipeline", "test", cfg.to_str().unwrap()])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("stage 0 (regex)"), "{err}");
}
