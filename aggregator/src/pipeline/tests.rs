//! Unit tests of every stage, through [`Pipeline`] built from TOML as a
//! user writes it.

use super::*;

const NOW: i64 = 1_732_440_000_000_000_000; // 2024-11-24T09:20:00Z

#[derive(serde::Deserialize)]
struct File {
    pipeline: Vec<PipelineConfig>,
}

fn build_with(toml_text: &str, limits: PipelineLimits) -> (Pipeline, SelfMetrics) {
    let f: File = toml::from_str(toml_text).unwrap();
    let m = SelfMetrics::new();
    let p = Pipeline::new(&f.pipeline, limits, &m).unwrap();
    (p, m)
}

fn build(stages: &str) -> (Pipeline, SelfMetrics) {
    let text = format!("[[pipeline]]\nname = \"t\"\nselector = '{{job=\"app\"}}'\n{stages}");
    build_with(&text, PipelineLimits { max_label_values: 100, max_label_value_length: 2048, ..Default::default() })
}

fn app() -> Labels {
    Labels::from_pairs([("job", "app")]).unwrap()
}

fn entries(lines: &[&str]) -> Vec<Entry> {
    lines
        .iter()
        .enumerate()
        .map(|(i, l)| Entry { ts: NOW - 1000 + i as i64, line: l.to_string(), metadata: vec![] })
        .collect()
}

fn run(p: &Pipeline, lines: &[&str]) -> Vec<Outcome> {
    p.trace("fake", app(), entries(lines), NOW).into_iter().map(|t| t.outcome).collect()
}

fn kept(o: &Outcome) -> (&Labels, &Entry) {
    match o {
        Outcome::Kept { labels, entry, .. } => (labels, entry),
        other => panic!("not kept: {other:?}"),
    }
}

fn md(e: &Entry, k: &str) -> Option<String> {
    e.metadata.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone())
}

fn metric(m: &SelfMetrics, prefix: &str) -> f64 {
    m.encode().lines().filter(|l| l.starts_with(prefix)).filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok()).sum()
}

#[test]
fn cri_decodes_joins_partials_and_sets_stream() {
    let (p, m) = build("[[pipeline.stage]]\ntype = \"cri\"\n");
    let out = run(
        &p,
        &[
            "2024-05-01T10:00:00.5Z stdout P hello ",
            "2024-05-01T10:00:01Z stderr F an error",
            "2024-05-01T10:00:02Z stdout F world",
            "not a cri line",
            "2024-05-01T10:00:03Z stdout P left open",
        ],
    );
    assert_eq!(out[0], Outcome::Joined);
    let (l, e) = kept(&out[1]);
    assert_eq!((l.get("stream"), e.line.as_str()), (Some("stderr"), "an error"));
    assert_eq!(e.ts, cairn_wire::time::parse_rfc3339_ns("2024-05-01T10:00:01Z").unwrap());
    let (l, e) = kept(&out[2]);
    assert_eq!((l.get("stream"), e.line.as_str()), (Some("stdout"), "hello world"));
    assert_eq!(e.ts, cairn_wire::time::parse_rfc3339_ns("2024-05-01T10:00:00.5Z").unwrap(), "time of the first part");
    let (l, e) = kept(&out[3]);
    assert_eq!((l.get("stream"), e.line.as_str()), (None, "not a cri line"));
    // A partial line whose end never came is stored as it is.
    let (_, e) = kept(&out[4]);
    assert_eq!(e.line, "left open");
    assert_eq!(metric(&m, "cairn_pipeline_errors_total"), 1.0);
}

#[test]
fn docker_decodes_with_escapes_and_max_partial_lines() {
    let (p, _) = build("[[pipeline.stage]]\ntype = \"docker\"\nstream_label = false\nmax_partial_lines = 2\n");
    let out = run(
        &p,
        &[
            r#"{"log":"say \"hi\"\n","stream":"stdout","time":"2024-05-01T10:00:00Z"}"#,
            r#"{"log":"a","stream":"stderr","time":"2024-05-01T10:00:00Z"}"#,
            r#"{"log":"b","stream":"stderr","time":"2024-05-01T10:00:00Z"}"#,
            r#"{"log":"plain\n","stream":"stdout","time":"2024-05-01T10:00:00Z"}"#,
        ],
    );
    let (l, e) = kept(&out[0]);
    assert_eq!((l.get("stream"), e.line.as_str()), (None, r#"say "hi""#));
    assert_eq!(out[1], Outcome::Joined);
    assert_eq!(kept(&out[2]).1.line, "ab", "joined at max_partial_lines");
    assert_eq!(kept(&out[3]).1.line, "plain");
}

#[test]
fn json_logfmt_regex_extract_and_structured_metadata_attaches() {
    let (p, _) = build(
        r#"
[[pipeline.stage]]
type = "json"
[[pipeline.stage]]
type = "json"
fields = { uid = "user.id", first = "tags[0]" }
[[pipeline.stage]]
type = "logfmt"
source = "msg"
[[pipeline.stage]]
type = "regex"
source = "path"
expression = '^/api/(?P<api>\w+)'
[[pipeline.stage]]
type = "structured_metadata"
fields = ["level", "uid", "first", "dur", "api", "missing"]
"#,
    );
    let out =
        run(&p, &[r#"{"level":"warn","user":{"id":42},"tags":["a","b"],"msg":"dur=5ms path=/api/users"}"#, "not json"]);
    let (_, e) = kept(&out[0]);
    for (k, v) in [("level", "warn"), ("uid", "42"), ("first", "a"), ("dur", "5ms"), ("api", "users")] {
        assert_eq!(md(e, k).as_deref(), Some(v), "{k}");
    }
    assert_eq!(md(e, "missing"), None);
    // Lines that do not parse are kept unchanged.
    assert_eq!(kept(&out[1]).1.metadata, []);
}

#[test]
fn timestamp_parses_with_zone_and_falls_back_counted() {
    let (p, m) = build(
        r#"
[[pipeline.stage]]
type = "logfmt"
[[pipeline.stage]]
type = "timestamp"
source = "ts"
format = "2006-01-02 15:04:05.000"
fallback_formats = ["UnixMs"]
location = "Europe/Berlin"
"#,
    );
    let out = run(&p, &[r#"ts="2024-05-01 10:00:00.250" a=1"#, "ts=1714557600123", "ts=garbage", "no field"]);
    assert_eq!(kept(&out[0]).1.ts, cairn_wire::time::parse_rfc3339_ns("2024-05-01T08:00:00.250Z").unwrap());
    assert_eq!(kept(&out[1]).1.ts, 1_714_557_600_123_000_000);
    assert_eq!(kept(&out[2]).1.ts, NOW, "arrival time");
    assert_eq!(kept(&out[3]).1.ts, NOW);
    assert_eq!(metric(&m, "cairn_pipeline_timestamp_fallbacks_total"), 2.0);

    let (p, _) = build(
        "[[pipeline.stage]]\ntype = \"logfmt\"\n[[pipeline.stage]]\ntype = \"timestamp\"\nsource = \"ts\"\nformat = \"Unix\"\non_failure = \"keep\"\n",
    );
    let out = run(&p, &["ts=nope"]);
    assert_eq!(kept(&out[0]).1.ts, NOW - 1000, "sender's time kept");
}

#[test]
fn labels_promote_split_streams_and_respect_the_cardinality_limit() {
    let text = r#"
[[pipeline]]
selector = '{job="app"}'
[[pipeline.stage]]
type = "logfmt"
[[pipeline.stage]]
type = "labels"
fields = { level = "", svc = "service" }
"#;
    let limits = PipelineLimits {
        max_label_values: 2,
        tenant_max_label_values: [("big".to_string(), 10)].into(),
        max_label_value_length: 8,
    };
    let (p, m) = build_with(text, limits);
    let lines = ["level=info service=a", "level=warn service=a", "level=info", "level=error", "level=verylongvalue"];
    let out = run(&p, &lines);
    assert_eq!(kept(&out[0]).0.to_string(), r#"{job="app", level="info", svc="a"}"#);
    assert_eq!(kept(&out[1]).0.to_string(), r#"{job="app", level="warn", svc="a"}"#);
    assert_eq!(kept(&out[2]).0.to_string(), r#"{job="app", level="info"}"#);
    // A third distinct level is over the limit of 2: kept as metadata.
    let Outcome::Kept { labels, entry, refused_labels } = &out[3] else { panic!() };
    assert_eq!(labels.to_string(), r#"{job="app"}"#);
    assert_eq!(md(entry, "level").as_deref(), Some("error"));
    assert_eq!(refused_labels, &["level"]);
    // Too long for limits.max_label_value_length.
    assert_eq!(md(kept(&out[4]).1, "level").as_deref(), Some("verylongvalue"));
    assert_eq!(metric(&m, "cairn_pipeline_label_limit_hits_total"), 2.0);
    // Known values still promote; another tenant has its own count and limit.
    assert_eq!(kept(&run(&p, &["level=warn"])[0]).0.get("level"), Some("warn"));
    let t = p.trace("big", app(), entries(&["level=error", "level=debug"]), NOW);
    assert!(t.iter().all(|t| matches!(&t.outcome, Outcome::Kept { labels, .. } if labels.get("level").is_some())));

    // apply: the entries of one push split into one stream per label set.
    let batch =
        vec![StreamEntries { labels: app(), entries: entries(&["level=info", "level=warn", "level=info", "x=1"]) }];
    let mut got: Vec<(String, usize)> =
        p.apply("fake", batch, NOW).into_iter().map(|s| (s.labels.to_string(), s.entries.len())).collect();
    got.sort();
    assert_eq!(
        got,
        [
            (r#"{job="app", level="info"}"#.to_string(), 2),
            (r#"{job="app", level="warn"}"#.to_string(), 1),
            (r#"{job="app"}"#.to_string(), 1)
        ]
    );
}

#[test]
fn drop_by_regex_value_age_and_size() {
    let (p, m) = build(
        r#"
[[pipeline.stage]]
type = "drop"
expression = "healthz"
reason = "health_checks"
[[pipeline.stage]]
type = "logfmt"
[[pipeline.stage]]
type = "drop"
source = "level"
value = "debug"
[[pipeline.stage]]
type = "drop"
older_than = "1h"
[[pipeline.stage]]
type = "drop"
longer_than = "20B"
"#,
    );
    let mut es =
        entries(&["GET /healthz 200", "level=debug x", "level=info old", "level=info this line is long", "ok"]);
    es[2].ts = NOW - 2 * 3_600_000_000_000;
    let out: Vec<Outcome> = p.trace("fake", app(), es, NOW).into_iter().map(|t| t.outcome).collect();
    let why = |o: &Outcome| match o {
        Outcome::Dropped { stage, why, .. } => format!("{stage}: {why}"),
        o => panic!("kept: {o:?}"),
    };
    assert_eq!(why(&out[0]), r#"0: matches "healthz""#);
    assert_eq!(why(&out[1]), r#"2: level is "debug""#);
    assert_eq!(why(&out[2]), "3: older than 2h".replace("2h", "1h"));
    assert_eq!(why(&out[3]), "4: longer than 20 bytes");
    assert_eq!(kept(&out[4]).1.line, "ok");
    let text = m.encode();
    assert!(
        text.contains(r#"cairn_pipeline_dropped_lines_total{pipeline="t",stage="0:drop",reason="health_checks"} 1"#),
        "{text}"
    );
    assert_eq!(metric(&m, "cairn_pipeline_dropped_lines_total"), 4.0);
    assert!(
        Pipeline::new(
            &toml::from_str::<File>("[[pipeline]]\nselector='{a=\"b\"}'\n[[pipeline.stage]]\ntype=\"drop\"\n")
                .unwrap()
                .pipeline,
            PipelineLimits::default(),
            &SelfMetrics::new()
        )
        .is_err()
    );
}

#[test]
fn replace_and_redact_mask_secrets() {
    let (p, _) = build(
        r#"
[[pipeline.stage]]
type = "replace"
expression = '(\d{3})-\d{4}'
replace = "$1-XXXX"
[[pipeline.stage]]
type = "redact"
[[pipeline.stage]]
type = "redact"
expressions = ['ssn=(?P<secret>\d+)']
mask = "***"
"#,
    );
    let out = run(
        &p,
        &[
            "Authorization: Bearer eyJhbGciOi.abc-def_123 sent",
            r#"{"user":"bob","password":"hunter2","ok":true}"#,
            "connect postgres://app:s3cr3t@db:5432/x password=letmein&next",
            "key AKIAIOSFODNN7EXAMPLE ssn=123456789 call 555-1234",
            "nothing secret here",
        ],
    );
    let lines: Vec<&str> = out.iter().map(|o| kept(o).1.line.as_str()).collect();
    assert_eq!(
        lines,
        [
            "Authorization: Bearer <redacted> sent",
            r#"{"user":"bob","password":"<redacted>","ok":true}"#,
            "connect postgres://app:<redacted>@db:5432/x password=<redacted>&next",
            "key <redacted> ssn=*** call 555-XXXX",
            "nothing secret here",
        ]
    );
}

#[test]
fn sample_and_limit() {
    let (p, m) = build("[[pipeline.stage]]\ntype = \"sample\"\nrate = 0.25\n");
    let lines: Vec<String> = (0..4000).map(|i| format!("line {i}")).collect();
    let refs: Vec<&str> = lines.iter().map(String::as_str).collect();
    let n = run(&p, &refs).iter().filter(|o| matches!(o, Outcome::Kept { .. })).count();
    // Deterministic sequence: the exact count does not vary between runs.
    assert!((800..1200).contains(&n), "kept {n} of 4000 at 0.25");
    assert_eq!(metric(&m, "cairn_pipeline_dropped_lines_total"), (4000 - n) as f64);

    let (p, _) = build("[[pipeline.stage]]\ntype = \"limit\"\nrate = 1.0\nburst = 3\n");
    let kept_at = |now: i64, labels: Labels| {
        p.trace("fake", labels, entries(&["a", "b", "c", "d", "e"]), now)
            .iter()
            .filter(|t| matches!(t.outcome, Outcome::Kept { .. }))
            .count()
    };
    assert_eq!(kept_at(NOW, app()), 3, "burst");
    assert_eq!(kept_at(NOW, app()), 0, "bucket empty");
    assert_eq!(kept_at(NOW + 2_000_000_000, app()), 2, "2 s at 1/s");
    let other = Labels::from_pairs([("job", "app"), ("pod", "b")]).unwrap();
    assert_eq!(kept_at(NOW, other), 3, "each stream has its own bucket");
}

#[test]
fn metrics_stage_derives_counters_and_histograms() {
    let (p, m) = build(
        r#"
[[pipeline.stage]]
type = "logfmt"
[[pipeline.stage]]
type = "labels"
fields = ["level"]
[[pipeline.stage]]
type = "metrics"
name = "app_errors_total"
match = "ERROR"
interval = "10s"
[[pipeline.stage]]
type = "metrics"
name = "app_bytes_total"
count_bytes = true
[[pipeline.stage]]
type = "metrics"
name = "app_duration_seconds"
kind = "histogram"
source = "dur"
buckets = [0.1, 1]
"#,
    );
    run(&p, &["level=error ERROR boom dur=0.05", "level=error ERROR again dur=2", "level=info ok dur=x"]);
    let out = p.collect_metrics(NOW);
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].0, "fake");
    let mut got: Vec<String> =
        out[0].1.iter().map(|s| format!("{} {}", s.labels, cairn_wire::format_float(s.samples[0].1))).collect();
    got.sort();
    assert_eq!(
        got,
        [
            r#"{__name__="app_bytes_total", job="app", level="error"} 60"#,
            r#"{__name__="app_bytes_total", job="app", level="info"} 19"#,
            r#"{__name__="app_duration_seconds_bucket", job="app", le="+Inf", level="error"} 2"#,
            r#"{__name__="app_duration_seconds_bucket", job="app", le="0.1", level="error"} 1"#,
            r#"{__name__="app_duration_seconds_bucket", job="app", le="1", level="error"} 1"#,
            r#"{__name__="app_duration_seconds_count", job="app", level="error"} 2"#,
            r#"{__name__="app_duration_seconds_sum", job="app", level="error"} 2.05"#,
            r#"{__name__="app_errors_total", job="app", level="error"} 2"#,
        ]
    );
    assert!(out[0].1.iter().all(|s| s.samples[0].0 == NOW / 1_000_000));
    // "dur=x" is not a number: counted as an error of the histogram stage.
    assert!(m.encode().contains(r#"cairn_pipeline_errors_total{pipeline="t",stage="4:metrics"} 1"#));
    assert!(p.collect_metrics(NOW + 1_000_000).is_empty(), "not due yet");
    assert_eq!(metric(&m, "cairn_pipeline_metric_samples_total"), 8.0);
}

#[test]
fn only_matching_streams_and_tenants_are_touched() {
    let (p, m) = build_with(
        r#"
[[pipeline]]
name = "a"
selector = '{job=~"app|web"}'
tenant = "team"
[[pipeline.stage]]
type = "replace"
expression = "x"
replace = "y"

[[pipeline]]
name = "b"
selector = '{job="app", env!="dev"}'
[[pipeline.stage]]
type = "replace"
expression = "y"
replace = "z"
"#,
        PipelineLimits::default(),
    );
    let s = |job: &str, env: &str| StreamEntries {
        labels: Labels::from_pairs([("job", job), ("env", env)]).unwrap(),
        entries: entries(&["x"]),
    };
    let line = |tenant: &str, st: StreamEntries| p.apply(tenant, vec![st], NOW)[0].entries[0].line.clone();
    assert_eq!(line("team", s("app", "prod")), "z", "both chains, in order");
    assert_eq!(line("team", s("web", "prod")), "y");
    assert_eq!(line("other", s("app", "prod")), "x", "chain a is for tenant team only");
    assert_eq!(line("other", s("app", "dev")), "x");
    assert_eq!(line("team", s("db", "prod")), "x");
    // Again from the cache: same answers.
    assert_eq!(line("team", s("app", "prod")), "z");
    assert_eq!(line("other", s("app", "prod")), "x");
    assert_eq!(p.matching("team", &Labels::from_pairs([("job", "app")]).unwrap()), ["a", "b"]);
    assert_eq!(metric(&m, "cairn_pipeline_lines_total"), 7.0);
    // No chain: apply hands the batch back as it came.
    let empty = Pipeline::new(&[], PipelineLimits::default(), &SelfMetrics::new()).unwrap();
    assert!(empty.is_empty());
    assert_eq!(empty.apply("t", vec![s("app", "x")], NOW), vec![s("app", "x")]);
}

#[test]
fn bad_configs_name_pipeline_and_stage() {
    let err = |stages: &str| {
        let f: File = toml::from_str(&format!("[[pipeline]]\nname=\"p\"\nselector='{{job=\"a\"}}'\n{stages}")).unwrap();
        Pipeline::new(&f.pipeline, PipelineLimits::default(), &SelfMetrics::new()).unwrap_err().to_string()
    };
    let e = err("[[pipeline.stage]]\ntype=\"regex\"\nexpression=\"(\"\n");
    assert!(e.contains(r#"pipeline "p", stage 0 (regex)"#), "{e}");
    assert!(err("[[pipeline.stage]]\ntype=\"regex\"\nexpression=\"a\"\n").contains("no named group"));
    assert!(err("[[pipeline.stage]]\ntype=\"timestamp\"\nsource=\"t\"\nformat=\"bogus\"\n").contains("bogus"));
    assert!(
        err("[[pipeline.stage]]\ntype=\"timestamp\"\nsource=\"t\"\nformat=\"Unix\"\nlocation=\"Nowhere/X\"\n")
            .contains("Nowhere")
    );
    assert!(err("[[pipeline.stage]]\ntype=\"labels\"\nfields=[\"a-b\"]\n").contains("a-b"));
    assert!(err("[[pipeline.stage]]\ntype=\"redact\"\npatterns=[\"nope\"]\n").contains("bearer"));
    assert!(err("[[pipeline.stage]]\ntype=\"sample\"\nrate=2.0\n").contains("between 0 and 1"));
    assert!(err("[[pipeline.stage]]\ntype=\"metrics\"\nname=\"h\"\nkind=\"histogram\"\n").contains("source"));
    let f: File = toml::from_str("[[pipeline]]\nselector='{job=\"a\"} |= \"x\"'\n").unwrap();
    let e = Pipeline::new(&f.pipeline, PipelineLimits::default(), &SelfMetrics::new()).unwrap_err().to_string();
    assert!(e.contains("pipeline0") && e.contains("stream selector only"), "{e}");
    let f: File = toml::from_str("[[pipeline]]\nselector='{job='\n").unwrap();
    assert!(Pipeline::new(&f.pipeline, PipelineLimits::default(), &SelfMetrics::new()).is_err());
}

/// Every TOML example of docs/pipeline.md compiles (stage-only snippets
/// inside a chain).
#[test]
fn docs_examples_compile() {
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/pipeline.md")).unwrap();
    let mut n = 0;
    for block in doc.split("```toml\n").skip(1) {
        let Some((toml_text, _)) = block.split_once("```") else { continue };
        let text = if toml_text.trim_start().starts_with("[[pipeline]]") {
            toml_text.to_string()
        } else {
            format!("[[pipeline]]\nselector = '{{job=\"x\"}}'\n{toml_text}")
        };
        let f: File = toml::from_str(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
        Pipeline::new(&f.pipeline, PipelineLimits::default(), &SelfMetrics::new())
            .unwrap_or_else(|e| panic!("{e}\n{text}"));
        n += 1;
    }
    assert!(n >= 15, "only {n} examples");
}

#[test]
fn dropped_entries_spend_no_label_value_budget() {
    let text = r#"
[[pipeline]]
selector = '{job="app"}'
[[pipeline.stage]]
type = "logfmt"
[[pipeline.stage]]
type = "labels"
fields = ["level"]
[[pipeline.stage]]
type = "drop"
source = "level"
value = "debug"
"#;
    let (p, m) = build_with(text, PipelineLimits { max_label_values: 1, ..Default::default() });
    let out = run(&p, &["level=debug a", "level=debug b", "level=info c"]);
    assert!(matches!(out[0], Outcome::Dropped { .. }) && matches!(out[1], Outcome::Dropped { .. }));
    assert_eq!(kept(&out[2]).0.get("level"), Some("info"));
    assert_eq!(metric(&m, "cairn_pipeline_label_limit_hits_total"), 0.0);
}
