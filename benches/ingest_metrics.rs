//! End-to-end metrics ingest benchmark, the PEERS.md workload: every series
//! of the real node_exporter scrape in `../shared/datasets/node-exporter/`
//! (507) for 10 instances, 4 hours at 15 s (960 samples per series);
//! counters grow at per-series random rates (30 % do not move), half of the
//! gauges drift and half stay constant, values rounded to the precision the
//! exporter shows, timestamps with ±3 ms jitter. Sent as remote_write 1.0
//! requests of 10 samples × 507 series (960 requests) by 4 concurrent
//! senders into a real `cairn serve`; reports samples/s, server CPU per
//! sample, peak RSS and disk bytes per sample after flush and stop, next to
//! PEERS.md's Prometheus and VictoriaMetrics figures (those peers are
//! installable from Debian; running them side by side in this benchmark is
//! the metrics-storage issue's next step).
//!
//! Run: `cargo bench --bench ingest_metrics`. Numbers are printed, never asserted.

mod common;

use std::time::Instant;

use cairn_wire::proto::{Label, Sample, TimeSeries, WriteRequest, snappy_compress};
use common::{Server, dir_size, proc_usage, send_all, shared_dir};
use prost::Message;

struct Template {
    labels: Vec<(String, String)>,
    counter: bool,
    value: f64,
    decimals: i32,
}

/// Decimal places the exporter printed (`1.445889e+06` has 0, `0.25` has 2).
fn decimals(text: &str) -> i32 {
    let (mant, exp) = match text.split_once(['e', 'E']) {
        Some((m, e)) => (m, e.parse::<i32>().unwrap_or(0)),
        None => (text, 0),
    };
    let frac = mant.split_once('.').map(|(_, f)| f.len() as i32).unwrap_or(0);
    (frac - exp).max(0)
}

fn parse_scrape(text: &str) -> Vec<Template> {
    let mut types = std::collections::HashMap::new();
    let mut out = Vec::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut it = rest.split_whitespace();
            if let (Some(n), Some(t)) = (it.next(), it.next()) {
                types.insert(n.to_string(), t.to_string());
            }
            continue;
        }
        if line.starts_with('#') || line.trim().is_empty() {
            continue;
        }
        let (series, value) = line.rsplit_once(' ').expect("value");
        let (name, labels) = match series.find('{') {
            Some(i) => (&series[..i], cairn_wire::Labels::parse(&series[i..]).expect("labels")),
            None => (series, cairn_wire::Labels::empty()),
        };
        let family = name.trim_end_matches("_total").trim_end_matches("_sum").trim_end_matches("_count");
        let counter = types
            .get(name)
            .or_else(|| types.get(family))
            .is_some_and(|t| t == "counter" || t == "summary" || t == "histogram")
            && !name.ends_with("_bucket")
            || name.ends_with("_total");
        let mut pairs = vec![("__name__".to_string(), name.to_string())];
        pairs.extend(labels.iter().map(|l| (l.name.clone(), l.value.clone())));
        out.push(Template { labels: pairs, counter, value: value.parse().unwrap_or(0.0), decimals: decimals(value) });
    }
    out
}

fn main() {
    if !common::is_bench_run("ingest_metrics") {
        return;
    }
    let path = shared_dir().join("datasets/node-exporter/node-exporter-1.5.0.prom");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e} (set CAIRN_SHARED)", path.display()));
    let templates = parse_scrape(&text);
    let (instances, steps, per_request) = (10usize, 960usize, 10usize);
    let mut rng: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    let now_ms = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64;
    let t0 = now_ms - 5 * 3_600_000;
    // Per instance and series: the generated samples.
    let mut requests = Vec::new();
    let mut total = 0u64;
    for inst in 0..instances {
        let mut series: Vec<(Vec<Label>, Vec<Sample>)> = Vec::new();
        for t in &templates {
            let mut labels: Vec<Label> =
                t.labels.iter().map(|(n, v)| Label { name: n.clone(), value: v.clone() }).collect();
            labels.push(Label { name: "instance".into(), value: format!("host-{inst}:9100") });
            labels.push(Label { name: "job".into(), value: "node".into() });
            labels.sort_by(|a, b| a.name.cmp(&b.name));
            let scale = 10f64.powi(t.decimals.min(9));
            let round = |v: f64| (v * scale).round() / scale;
            let moves = next() % 10 >= 3; // counters: 30 % do not move; gauges: half drift
            let drift = next() % 2 == 0;
            let rate = (next() % 10_000) as f64 / 100.0 / scale.max(1.0) + 1.0 / scale.max(1.0);
            let mut v = t.value;
            let mut samples = Vec::with_capacity(steps);
            for k in 0..steps {
                if t.counter && moves {
                    v = round(v + rate * 15.0 * ((next() % 100) as f64 / 50.0));
                } else if !t.counter && drift {
                    let step = (t.value.abs().max(1.0)) * 0.001 * ((next() % 200) as f64 / 100.0 - 1.0);
                    v = round(v + step);
                }
                let jitter = (next() % 7) as i64 - 3;
                samples.push(Sample { value: v, timestamp: t0 + k as i64 * 15_000 + jitter });
            }
            total += steps as u64;
            series.push((labels, samples));
        }
        for start in (0..steps).step_by(per_request) {
            let req = WriteRequest {
                timeseries: series
                    .iter()
                    .map(|(labels, samples)| TimeSeries {
                        labels: labels.clone(),
                        samples: samples[start..(start + per_request).min(steps)].to_vec(),
                        histograms: vec![],
                    })
                    .collect(),
                metadata: vec![],
            };
            requests.push(snappy_compress(&req.encode_to_vec()));
        }
    }
    // Send in time order across instances.
    let n_per = steps / per_request;
    let mut ordered = Vec::with_capacity(requests.len());
    let mut buckets: Vec<std::collections::VecDeque<Vec<u8>>> =
        requests.chunks(n_per).map(|c| c.iter().cloned().collect()).collect();
    for _ in 0..n_per {
        for b in buckets.iter_mut() {
            if let Some(r) = b.pop_front() {
                ordered.push(r);
            }
        }
    }

    let data = tempfile::tempdir().unwrap();
    let server = Server::start(data.path());
    let pid = server.pid();
    let (cpu0, _) = proc_usage(pid);
    let started = Instant::now();
    send_all(
        &server.client,
        &format!("{}/api/v1/write", server.url),
        &[
            ("Content-Type", "application/x-protobuf"),
            ("Content-Encoding", "snappy"),
            ("X-Prometheus-Remote-Write-Version", "0.1.0"),
        ],
        ordered,
        4,
    );
    let wall = started.elapsed().as_secs_f64();
    let (cpu1, hwm) = proc_usage(pid);
    server.stop();
    let disk = dir_size(data.path());

    println!("ingest_metrics: {} series x {steps} samples = {total} samples", templates.len() * instances);
    println!("{:<44} {:>12} {:>14} {:>16}", "figure", "cairn", "Prometheus", "VictoriaMetrics");
    println!(
        "{:<44} {:>12.0} {:>14} {:>16}",
        "samples/s (client on same 2 cores)",
        total as f64 / wall,
        "1.45-2.16 M",
        "3.24-3.28 M"
    );
    println!(
        "{:<44} {:>12.3} {:>14} {:>16}",
        "server CPU µs per sample",
        (cpu1 - cpu0) * 1e6 / total as f64,
        "0.78-1.20",
        "0.45-0.49"
    );
    println!("{:<44} {:>12.0} {:>14} {:>16}", "peak RSS MB", hwm as f64 / 1e6, "181-187", "163-218");
    println!(
        "{:<44} {:>12.2} {:>14} {:>16}",
        "disk bytes/sample after flush + stop",
        disk as f64 / total as f64,
        "3.5-3.7",
        "2.6-2.8"
    );
    println!("(peers: ../shared/PEERS.md, same workload, measured on this machine kind)");
}
