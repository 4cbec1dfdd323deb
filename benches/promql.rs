//! PromQL latency of typical Grafana dashboard queries (node CPU by mode,
//! memory used %, network rate, disk I/O, filesystem free %, …) as range
//! queries over 24 h at step 60 s, on 1,014 series (the node_exporter
//! dataset's 507 series × 2 instances) × 24 h at 15 s (5,760 samples per
//! series, 5.84 M samples; the workload generator of `ingest_metrics`).
//! Cairn, and in the same run on the same data Prometheus and
//! VictoriaMetrics (Debian packages; skipped with a note when missing).
//!
//! Each server gets the data by remote_write (one sender, in time order: no
//! out-of-order refusals whatever the machine load), is given time to settle
//! (Cairn is restarted so its head is flushed and its blocks compacted;
//! Prometheus is waited for until its head compaction has cut blocks;
//! VictoriaMetrics is flushed), then every query runs once ("first") and
//! three more times ("warm", the median). VictoriaMetrics and Cairn cache
//! range-query results (warm runs are then cache hits), so both are also
//! measured with `nocache=1` (the evaluators' own speed). Printed: per
//! query, ms per server, series and points answered, and the ratio of each
//! Cairn column to each peer column.
//!
//! Run: `cargo bench --bench promql`. `CAIRN_BENCH_PEERS=0` skips the peers;
//! `CAIRN_BENCH_RUNS=N` sets the warm runs (default 3). Profiling: start
//! `cairn serve` yourself, run once with `CAIRN_BENCH_URL=http://…` to load
//! it, then restart it under `perf record` and run with `CAIRN_BENCH_URL`
//! and `CAIRN_BENCH_INGEST=0` (the data is generated relative to the hour,
//! so reuse it within the same hour).

mod common;

use std::time::{Duration, Instant};

use common::node::{Peer, RW_HEADERS, client, wait_for, workload};
use common::{Server, send_all};

/// (name, query) of the dashboard panels.
const QUERIES: &[(&str, &str)] = &[
    ("CPU busy by instance", r#"sum by (instance) (rate(node_cpu_seconds_total{mode!="idle"}[5m]))"#),
    ("CPU by mode, one node", r#"sum by (mode) (rate(node_cpu_seconds_total{instance="host-0:9100",job="node"}[5m]))"#),
    ("CPU busy %", r#"100 * (1 - avg by (instance) (rate(node_cpu_seconds_total{mode="idle"}[5m])))"#),
    (
        "memory used %",
        r#"100 * (1 - node_memory_MemAvailable_bytes{job="node"} / node_memory_MemTotal_bytes{job="node"})"#,
    ),
    ("network receive rate", r#"sum by (instance, device) (rate(node_network_receive_bytes_total{device!="lo"}[5m]))"#),
    (
        "network transmit bits, one node",
        r#"rate(node_network_transmit_bytes_total{instance="host-0:9100",device!~"lo|veth.*"}[5m]) * 8"#,
    ),
    (
        "disk I/O bytes",
        r#"sum by (instance, device) (rate(node_disk_read_bytes_total[5m]) + rate(node_disk_written_bytes_total[5m]))"#,
    ),
    ("disk I/O utilisation", r#"rate(node_disk_io_time_seconds_total{job="node"}[5m])"#),
    (
        "filesystem free %",
        r#"100 * node_filesystem_avail_bytes{fstype!~"tmpfs|overlay"} / node_filesystem_size_bytes{fstype!~"tmpfs|overlay"}"#,
    ),
    ("load1", r#"node_load1{job="node"}"#),
    ("count by __name__", r#"count by (__name__) ({__name__=~"node_.+"})"#),
];

/// One query's timings on one server: first, warm median (ms), series and
/// points in the answer (or the error).
#[derive(Clone)]
struct Timing {
    first: f64,
    warm: f64,
    series: usize,
    points: usize,
    error: Option<String>,
}

struct Run {
    name: &'static str,
    timings: Vec<Timing>,
}

fn run_queries(
    c: &reqwest::blocking::Client,
    base: &str,
    start: i64,
    end: i64,
    runs: usize,
    extra: &[(&str, &str)],
) -> Vec<Timing> {
    let (start, end) = ((start / 1000).to_string(), (end / 1000).to_string());
    QUERIES
        .iter()
        .map(|(_, q)| {
            let mut times = Vec::new();
            let mut t = Timing { first: f64::NAN, warm: f64::NAN, series: 0, points: 0, error: None };
            for _ in 0..=runs {
                let mut form = vec![("query", *q), ("start", start.as_str()), ("end", end.as_str()), ("step", "60")];
                form.extend_from_slice(extra);
                let began = Instant::now();
                let r = c.post(format!("{base}/api/v1/query_range")).form(&form).send().and_then(|r| r.text());
                let took = began.elapsed().as_secs_f64() * 1e3;
                let v: serde_json::Value = match r.map(|b| serde_json::from_str(&b)) {
                    Ok(Ok(v)) => v,
                    other => {
                        t.error = Some(format!("{other:?}"));
                        break;
                    }
                };
                if v["status"] != "success" {
                    t.error = Some(v.to_string().chars().take(200).collect());
                    break;
                }
                let result = v["data"]["result"].as_array().cloned().unwrap_or_default();
                t.series = result.len();
                t.points = result.iter().map(|s| s["values"].as_array().map_or(0, Vec::len)).sum();
                times.push(took);
            }
            if let Some((&first, warm)) = times.split_first() {
                t.first = first;
                let mut w = warm.to_vec();
                w.sort_by(f64::total_cmp);
                t.warm = w.get(w.len() / 2).copied().unwrap_or(f64::NAN);
            }
            t
        })
        .collect()
}

/// Value of an unlabelled gauge in a `/metrics` body.
fn gauge(body: &str, name: &str) -> Option<f64> {
    body.lines().find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))?.rsplit(' ').next()?.parse().ok()
}

fn main() {
    if !common::is_bench_run("promql") {
        return;
    }
    let runs: usize = std::env::var("CAIRN_BENCH_RUNS").ok().and_then(|v| v.parse().ok()).unwrap_or(3);
    let (instances, steps, per_request) = (2usize, 5760usize, 10usize);
    let now_ms = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64;
    // 24 h ending at the last full hour at least an hour ago.
    let data_end = (now_ms - 3_600_000) / 3_600_000 * 3_600_000;
    let t0 = data_end - (steps as i64 - 1) * 15_000;
    let w = workload(instances, steps, per_request, t0);
    let (start, end) = (t0, data_end);
    println!(
        "promql: {} series x {steps} samples = {} samples; range queries over 24 h, step 60 s ({} points per series)",
        w.series,
        w.samples,
        (end / 1000 - start / 1000) / 60 + 1
    );
    let mut results: Vec<Run> = Vec::new();

    // Cairn: ingest, restart (flush, compaction), query.
    let data = tempfile::tempdir().unwrap();
    let server = Server::start(data.path());
    // With CAIRN_BENCH_URL (a server run under a profiler) and
    // CAIRN_BENCH_INGEST=0, the server already holds the data.
    if std::env::var("CAIRN_BENCH_INGEST").as_deref() != Ok("0") {
        let began = Instant::now();
        send_all(&server.client, &format!("{}/api/v1/write", server.url), &RW_HEADERS, w.bodies.clone(), 1);
        println!("cairn: ingested in {:.1} s", began.elapsed().as_secs_f64());
    }
    server.stop();
    let server = Server::start(data.path());
    let mut last = String::new();
    let mut stable = 0;
    wait_for(Duration::from_secs(40), || {
        let m = server.client.get(format!("{}/metrics", server.url)).send().and_then(|r| r.text()).unwrap_or_default();
        let blocks: String = m.lines().filter(|l| l.starts_with("cairn_blocks{")).collect();
        stable = if blocks == last { stable + 1 } else { 0 };
        last = blocks;
        stable >= 10
    });
    println!("cairn: {last}");
    results.push(Run { name: "Cairn", timings: run_queries(&server.client, &server.url, start, end, runs, &[]) });
    // Without the result cache: the evaluator's own speed.
    results.push(Run {
        name: "Cairn nocache=1",
        timings: run_queries(&server.client, &server.url, start, end, runs, &[("nocache", "1")]),
    });
    server.stop();

    let peers = std::env::var("CAIRN_BENCH_PEERS").map(|v| v != "0").unwrap_or(true);
    if peers {
        let c = client();
        match Peer::prometheus(&[]) {
            Ok(p) => {
                let began = Instant::now();
                send_all(&c, &format!("{}/api/v1/write", p.base), &RW_HEADERS, w.bodies.clone(), 1);
                println!("Prometheus: ingested in {:.1} s", began.elapsed().as_secs_f64());
                // Head compaction runs once a minute: wait until the head
                // no longer spans the whole day (blocks cut).
                let mut blocks = -1.0;
                let mut stable = 0;
                let cut = wait_for(Duration::from_secs(150), || {
                    let m = c.get(format!("{}/metrics", p.base)).send().and_then(|r| r.text()).unwrap_or_default();
                    let min = gauge(&m, "prometheus_tsdb_head_min_time").unwrap_or(0.0);
                    let now = gauge(&m, "prometheus_tsdb_blocks_loaded").unwrap_or(0.0);
                    stable = if now == blocks { stable + 1 } else { 0 };
                    blocks = now;
                    min > (data_end - 4 * 3_600_000) as f64 && stable >= 10
                });
                let m = c.get(format!("{}/metrics", p.base)).send().and_then(|r| r.text()).unwrap_or_default();
                println!(
                    "Prometheus: {} blocks loaded, head from {:.1} h before the data end{}",
                    gauge(&m, "prometheus_tsdb_blocks_loaded").unwrap_or(f64::NAN),
                    (data_end as f64 - gauge(&m, "prometheus_tsdb_head_min_time").unwrap_or(f64::NAN)) / 3.6e6,
                    if cut { "" } else { " (compaction not settled within 150 s)" }
                );
                results.push(Run { name: "Prometheus", timings: run_queries(&c, &p.base, start, end, runs, &[]) });
            }
            Err(e) => println!("Prometheus: not run: {e}"),
        }
        match Peer::victoria_metrics(&[]) {
            Ok(p) => {
                let began = Instant::now();
                send_all(&c, &format!("{}/api/v1/write", p.base), &RW_HEADERS, w.bodies.clone(), 1);
                println!("VictoriaMetrics: ingested in {:.1} s", began.elapsed().as_secs_f64());
                let _ = c.get(format!("{}/internal/force_flush", p.base)).send();
                std::thread::sleep(Duration::from_secs(2));
                results.push(Run { name: "VictoriaMetrics", timings: run_queries(&c, &p.base, start, end, runs, &[]) });
                results.push(Run {
                    name: "VM nocache=1",
                    timings: run_queries(&c, &p.base, start, end, runs, &[("nocache", "1")]),
                });
            }
            Err(e) => println!("VictoriaMetrics: not run: {e}"),
        }
    }
    print_table(&results);
}

fn print_table(results: &[Run]) {
    println!();
    print!("{:<34}", "query (ms: first / warm median)");
    for r in results {
        print!(" {:>17}", r.name);
    }
    let ours: Vec<&Run> = results.iter().filter(|r| r.name.starts_with("Cairn")).collect();
    let peers: Vec<&Run> = results.iter().filter(|r| !r.name.starts_with("Cairn")).collect();
    for o in &ours {
        for r in &peers {
            print!(" {:>22}", format!("{}/{}", o.name.replace("Cairn", "cairn"), r.name));
        }
    }
    println!();
    for (i, (name, _)) in QUERIES.iter().enumerate() {
        print!("{name:<34}");
        for r in results {
            let t = &r.timings[i];
            match &t.error {
                Some(_) => print!(" {:>17}", "error"),
                None => print!(" {:>17}", format!("{:.1} / {:.1}", t.first, t.warm)),
            }
        }
        for o in &ours {
            for r in &peers {
                print!(" {:>22.2}", o.timings[i].warm / r.timings[i].warm);
            }
        }
        println!();
    }
    println!();
    println!("answers (series/points):");
    for (i, (name, q)) in QUERIES.iter().enumerate() {
        print!("  {name:<32}");
        for r in results {
            let t = &r.timings[i];
            print!(" {:>16}", format!("{}/{}", t.series, t.points));
        }
        println!();
        for r in results {
            if let Some(e) = &r.timings[i].error {
                println!("    {}: {q}: {e}", r.name);
            }
        }
    }
    let total = |r: &Run| r.timings.iter().map(|t| t.warm).sum::<f64>();
    print!("{:<34}", "sum of warm medians, ms");
    for r in results {
        print!(" {:>17.1}", total(r));
    }
    for o in &ours {
        for r in &peers {
            print!(" {:>22.2}", total(o) / total(r));
        }
    }
    println!();
}
