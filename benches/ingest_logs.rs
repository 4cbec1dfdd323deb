//! End-to-end log ingest benchmark: replays `../shared/datasets/logs/` as
//! PEERS.md describes (188 streams, digit runs re-randomised per replay,
//! 24 h of timestamps) through Loki push (protobuf + snappy, ~1 MB of lines
//! per request, one stream per request, 4 concurrent senders) into a real
//! `cairn serve`, then
//! reports lines/s, MB/s, server CPU seconds per GB, peak RSS and disk per
//! raw byte, next to the Loki and VictoriaLogs figures measured on this
//! machine kind (`../shared/PEERS.md`; neither peer is installable here).
//!
//! Run: `cargo bench --bench ingest_logs` (env `CAIRN_BENCH_REPLAYS`, default
//! 3; `CAIRN_BENCH_STREAMS_PER_FILE`, default 4; `CAIRN_BENCH_EXTRA_LABELS`,
//! default 0, labels added to each stream's 4; `CAIRN_BENCH_PIPELINE=1` also
//! ingests the same requests a second time, into a fresh server whose
//! config has a json + labels + redact `[[pipeline]]` on every stream, and
//! prints both figures).
//! The numbers are printed, never asserted.

mod common;

use std::path::PathBuf;
use std::time::Instant;

use common::{Server, dir_size, peers_logs, proc_usage, send_all_ordered, shared_dir};

/// The pipeline of `CAIRN_BENCH_PIPELINE=1`: parse JSON lines, promote their
/// `level` (as `json_level`: the workload's streams already carry a
/// `level` label, and moving entries between pushed streams would mix the
/// senders' time orders), mask secrets in every line.
const BENCH_PIPELINE: &str = r#"
[[pipeline]]
name = "bench"
selector = '{job="bench"}'
[[pipeline.stage]]
type = "json"
[[pipeline.stage]]
type = "labels"
fields = { json_level = "level" }
[[pipeline.stage]]
type = "redact"
"#;

/// Ingests `requests` into a fresh `cairn serve` on `data_path` (with
/// `extra` arguments); returns (wall s, server CPU s until the last push
/// was answered, peak RSS, disk bytes, server CPU s through its stop: the
/// last head's flush and whatever compaction ran, `None` for an external
/// server).
fn ingest(
    data_path: &std::path::Path,
    extra: &[&std::ffi::OsStr],
    requests: Vec<Vec<u8>>,
    streams: &[usize],
) -> (f64, f64, u64, u64, Option<f64>) {
    let server = Server::start_with(data_path, extra);
    let pid = server.pid();
    let (cpu0, _) = proc_usage(pid);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let tracer = common::trace_server(server.url.clone(), pid, stop.clone());
    let started = Instant::now();
    // A stream's requests in order (a low-volume stream's 1 MB request spans
    // hours: two of them swapped by concurrent senders would be refused as
    // out of order, by Loki as by Cairn).
    send_all_ordered(
        &server.client,
        &format!("{}/loki/api/v1/push", server.url),
        &[("Content-Type", "application/x-protobuf")],
        requests,
        streams,
        4,
    );
    let wall = started.elapsed().as_secs_f64();
    let (cpu1, hwm) = proc_usage(pid);
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    if let Some(t) = tracer {
        let _ = t.join();
    }
    let total = server.stop_cpu().map(|t| t - cpu0);
    let blocks = std::fs::read_dir(data_path.join("logs/blocks"))
        .map(|d| d.flatten().filter(|e| e.path().extension().is_some_and(|x| x == "blk")).count())
        .unwrap_or(0);
    println!("log blocks after the stop: {blocks} (compaction merges them; more than one: not all merged yet)");
    (wall, cpu1 - cpu0, hwm, dir_size(data_path), total)
}

fn main() {
    if !common::is_bench_run("ingest_logs") {
        return;
    }
    let files = peers_logs::files(&shared_dir().join("datasets/logs"));
    let env = |k: &str, d: usize| std::env::var(k).ok().and_then(|v| v.parse().ok()).unwrap_or(d);
    let replays = env("CAIRN_BENCH_REPLAYS", 3);
    // PEERS.md: 4 streams per file, 4 labels per stream. More streams or
    // labels change the workload (and no longer match the peers' figures).
    let shape = peers_logs::Shape {
        streams_per_file: env("CAIRN_BENCH_STREAMS_PER_FILE", 4),
        extra_labels: env("CAIRN_BENCH_EXTRA_LABELS", 0),
    };

    // With CAIRN_BENCH_DATA=DIR the data directory is kept (and DIR.span
    // records the time span); a later run with the same DIR skips ingest
    // and only runs the queries (for iterating on the read path).
    let keep = std::env::var_os("CAIRN_BENCH_DATA").map(PathBuf::from);
    let span_file = keep.as_ref().map(|d| {
        let mut p = d.clone().into_os_string();
        p.push(".span");
        PathBuf::from(p)
    });
    let reuse = span_file.as_ref().and_then(|f| std::fs::read_to_string(f).ok()).and_then(|s| {
        let mut it = s.split_whitespace().map(str::parse::<i64>);
        Some((it.next()?.ok()?, it.next()?.ok()?))
    });
    let tmp = tempfile::tempdir().unwrap();
    let data_path = keep.clone().unwrap_or_else(|| tmp.path().to_path_buf());
    let (span_start, now_ns, ingest) = if let Some((a, b)) = reuse {
        println!("ingest_logs: reusing {} (queries only)", data_path.display());
        (a, b, None)
    } else {
        // The PEERS.md workload (common/peers_logs.rs), sent in time order.
        let w = peers_logs::build_shaped(&files, replays, shape, &mut |_| {});
        let (requests, streams, lines, raw_bytes, span_start, now_ns) =
            (w.requests, w.streams, w.lines, w.raw_bytes, w.span_start, w.now_ns);

        let with_pipeline = (env("CAIRN_BENCH_PIPELINE", 0) == 1).then(|| requests.clone());
        let (wall, cpu, hwm, disk, cpu_total) = ingest(&data_path, &[], requests, &streams);
        if let Some(requests) = with_pipeline {
            let dir = tempfile::tempdir().unwrap();
            let cfg = dir.path().join("pipeline.toml");
            // The pipeline goes after the CAIRN_BENCH_CONFIG file, if any.
            let base = std::env::var_os("CAIRN_BENCH_CONFIG")
                .map(|p| std::fs::read_to_string(p).expect("read CAIRN_BENCH_CONFIG"))
                .unwrap_or_default();
            std::fs::write(&cfg, format!("{base}\n{BENCH_PIPELINE}")).expect("write pipeline config");
            let data = dir.path().join("data");
            let (pwall, pcpu, phwm, _, _) = ingest(&data, &["--config".as_ref(), cfg.as_os_str()], requests, &streams);
            let gb = raw_bytes as f64 / 1e9;
            println!("ingest_logs with json + labels + redact pipeline on every stream ({lines} lines):");
            println!("{:<44} {:>12} {:>12} {:>8}", "figure", "no pipeline", "pipeline", "ratio");
            println!(
                "{:<44} {:>12.0} {:>12.0} {:>8.2}",
                "lines/s (wall, client on same 2 cores)",
                lines as f64 / wall,
                lines as f64 / pwall,
                wall / pwall
            );
            println!("{:<44} {:>12.1} {:>12.1} {:>8.2}", "server CPU s per GB", cpu / gb, pcpu / gb, pcpu / cpu);
            println!("{:<44} {:>12.0} {:>12.0}", "peak RSS MB", hwm as f64 / 1e6, phwm as f64 / 1e6);
        }
        if let Some(f) = &span_file {
            std::fs::write(f, format!("{span_start} {now_ns}\n")).expect("write span file");
        }
        (span_start, now_ns, Some((lines, raw_bytes, wall, cpu, cpu_total, hwm, disk)))
    };

    // Queries of PEERS.md over the whole 24 h, after a restart: "first" is
    // the first run, "warm" the median of two more.
    let server = Server::start(&data_path);
    let start_s = (span_start / 1_000_000_000).to_string();
    let end_s = (now_ns / 1_000_000_000).to_string();
    let first_file = files[0].file_name().unwrap_or_default().to_string_lossy().to_string();
    let one_stream = format!(r#"{{job="bench", source="{first_file}", host="node-0", level="info"}}"#);
    type Query<'a> = (&'a str, &'a str, String, Vec<(&'a str, String)>);
    const RANGE: &str = "query_range";
    let queries: Vec<Query> = vec![
        ("rare token |=", RANGE, r#"{job="bench"} |= "ZQX9rareTOKEN""#.into(), vec![("limit", "1000".into())]),
        (
            "regex |~, limit 100",
            RANGE,
            r#"{job="bench"} |~ "(?i)exception|timed? ?out""#.into(),
            vec![("limit", "100".into())],
        ),
        (
            "sum by (level) count_over_time 1h",
            RANGE,
            r#"sum by (level) (count_over_time({job="bench"}[1h]))"#.into(),
            vec![("step", "3600".into())],
        ),
        ("newest 1000 lines of one stream", RANGE, one_stream, vec![("limit", "1000".into())]),
        // Grafana's other typical queries (not in PEERS.md: no peer figure):
        // Explore's log volume histogram, the label browser, a `json`
        // parse with a label filter and a `logfmt` + `unwrap` quantile.
        (
            "log volume: sum by (level, detected_level)",
            RANGE,
            r#"sum by (level, detected_level) (count_over_time({job="bench"} | drop __error__ [1h]))"#.into(),
            vec![("step", "3600".into())],
        ),
        ("label browser: labels", "labels", String::new(), vec![]),
        ("label browser: values of source", "label/source/values", String::new(), vec![]),
        (
            "json | level=\"info\", count by source 1h",
            RANGE,
            r#"sum by (source) (count_over_time({job="bench", source=~".+json.log"} | json | __error__="" | level="info" [1h]))"#.into(),
            vec![("step", "3600".into())],
        ),
        (
            "logfmt | unwrap duration, p99 by host 1h",
            RANGE,
            r#"quantile_over_time(0.99, {job="bench", source="loki-drain-agent-logfmt.log"} | logfmt | unwrap duration(duration) | __error__="" [1h]) by (host)"#.into(),
            vec![("step", "3600".into())],
        ),
    ];
    let mut query_rows = Vec::new();
    for (name, path, q, extra) in &queries {
        let mut times = Vec::new();
        let mut summary = String::new();
        for _ in 0..3 {
            let mut params: Vec<(&str, String)> = vec![("start", start_s.clone()), ("end", end_s.clone())];
            if !q.is_empty() {
                params.push(("query", q.clone()));
            }
            params.extend(extra.iter().cloned());
            let t = Instant::now();
            let r =
                server.client.get(format!("{}/loki/api/v1/{path}", server.url)).query(&params).send().expect("query");
            let status = r.status();
            let body: serde_json::Value = r.json().unwrap_or_default();
            times.push(t.elapsed().as_secs_f64());
            summary = if let Some(names) = body["data"].as_array() {
                format!("HTTP {status}, {} names", names.len())
            } else {
                let result = body["data"]["result"].as_array().cloned().unwrap_or_default();
                let n: usize = result.iter().map(|s| s["values"].as_array().map(Vec::len).unwrap_or(0)).sum();
                format!("HTTP {status}, {} series/streams, {n} values", result.len())
            };
        }
        let mut warm = [times[1], times[2]];
        warm.sort_by(|a, b| a.total_cmp(b));
        query_rows.push((name.to_string(), times[0], warm[0], summary));
    }
    server.stop();

    if let Some((lines, raw_bytes, wall, cpu, cpu_total, hwm, disk)) = ingest {
        let gb = raw_bytes as f64 / 1e9;
        println!(
            "ingest_logs: {lines} lines, {:.1} MB raw, {} files x {replays} replays",
            raw_bytes as f64 / 1e6,
            files.len()
        );
        println!("{:<44} {:>12} {:>12} {:>12}", "figure", "cairn", "VictoriaLogs", "Loki");
        println!(
            "{:<44} {:>12.0} {:>12} {:>12}",
            "lines/s (wall, client on same 2 cores)",
            lines as f64 / wall,
            "452000",
            "478000"
        );
        println!("{:<44} {:>12.1} {:>12} {:>12}", "MB/s of raw lines", raw_bytes as f64 / 1e6 / wall, "107", "113");
        println!("{:<44} {:>12.1} {:>12} {:>12}", "server CPU s per GB", cpu / gb, "16.5", "17.7");
        if let Some(t) = cpu_total {
            // The row above stops at the last push's answer; this one
            // includes the shutdown flush and the compaction that ran
            // before the server exited (see "log blocks after the stop").
            println!(
                "{:<44} {:>12.1} {:>12} {:>12}",
                "  the same through the stop (flush, compaction)",
                t / gb,
                "-",
                "-"
            );
        }
        println!("{:<44} {:>12.0} {:>12} {:>12}", "peak RSS MB", hwm as f64 / 1e6, "697", "1217");
        println!(
            "{:<44} {:>12.3} {:>12} {:>12}",
            "disk after flush + stop / raw bytes",
            disk as f64 / raw_bytes as f64,
            "0.180",
            "0.249"
        );
    }
    println!("{:<44} {:>12} {:>12} {:>12}", "query (warm / first, seconds)", "cairn", "VictoriaLogs", "Loki");
    let peers = [
        ("0.016 / 0.041", "3.9 / 4.4"),
        ("0.47 warm", "6.8 warm"),
        ("0.043 warm", "9.2 warm"),
        ("0.108 warm", "0.023 warm"),
    ];
    let peers = peers.iter().copied().chain(std::iter::repeat(("-", "-")));
    for ((name, first, warm, summary), (vl, loki)) in query_rows.iter().zip(peers) {
        println!("{name:<44} {:>12} {vl:>12} {loki:>12}   ({summary})", format!("{warm:.3} / {first:.3}"));
    }
    println!("(peers: ../shared/PEERS.md, 100 replays = 5.26M lines; CAIRN_BENCH_REPLAYS=100 reproduces that size)");
}
