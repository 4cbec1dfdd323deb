//! End-to-end metrics ingest benchmark, the PEERS.md workload: every series
//! of the real node_exporter scrape in `../shared/datasets/node-exporter/`
//! (507) for 10 instances, 4 hours at 15 s (960 samples per series);
//! counters grow at per-series random rates (30 % do not move), half of the
//! gauges drift and half stay constant, values rounded to the precision the
//! exporter shows, timestamps with ±3 ms jitter. Sent as remote_write 1.0
//! requests of 10 samples × 507 series (960 requests) by 4 concurrent
//! senders into a real `cairn serve`, and — in the same run, when their
//! binaries are installed (Debian packages `prometheus` and
//! `victoria-metrics`) — into Prometheus (`--web.enable-remote-write-receiver`)
//! and VictoriaMetrics, each on a free loopback port with its own temporary
//! data directory. Reports, per server: samples/s, server CPU per sample,
//! peak RSS, disk bytes per sample (all files after a clean stop; Cairn's
//! after a restart let compaction run), and the time of one PromQL query
//! that selects and decodes 1,014 series over 24 h and returns their
//! samples (`{job="node",instance=~"host-[01]:9100"}[24h]`), plus
//! Cairn's ratio to each peer.
//!
//! Run: `cargo bench --bench ingest_metrics` (release build). Numbers are
//! printed, never asserted. `CAIRN_BENCH_PEERS=0` skips the peers;
//! `CAIRN_BENCH_INSTANCES` (10) and `CAIRN_BENCH_STEPS` (960 at 15 s) set
//! the size: 20 × 5760 is 10,140 series × 24 h.

mod common;

use std::time::Instant;

use cairn_wire::proto::{Label, Sample, TimeSeries, WriteRequest, snappy_compress};
use common::{Server, dir_size, proc_usage, send_all, shared_dir};
use prost::Message;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

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
    // PEERS.md's workload by default; CAIRN_BENCH_INSTANCES=20
    // CAIRN_BENCH_STEPS=5760 gives the issue's 10,000 series × 24 h.
    let env = |k: &str, d: usize| std::env::var(k).ok().and_then(|v| v.parse().ok()).unwrap_or(d);
    let (instances, steps, per_request) = (env("CAIRN_BENCH_INSTANCES", 10), env("CAIRN_BENCH_STEPS", 960), 10usize);
    let mut rng: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    let now_ms = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64;
    let t0 = now_ms - (steps as i64 * 15_000 + 3_600_000);
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

    let total_series = templates.len() * instances;
    println!("ingest_metrics: {total_series} series x {steps} samples = {total} samples");
    let mut results: Vec<Figures> = Vec::new();

    // Cairn
    let data = tempfile::tempdir().unwrap();
    let server = Server::start(data.path());
    let pid = server.pid();
    let (ingest, cpu, hwm) =
        ingest(&server.client, &format!("{}/api/v1/write", server.url), pid, ordered.clone(), total);
    server.stop();
    // restart so the maintenance task compacts the flushed blocks, then stop again
    let server = Server::start(data.path());
    let compacted = wait_for(Duration::from_secs(30), || {
        let m = server.client.get(format!("{}/metrics", server.url)).send().and_then(|r| r.text()).unwrap_or_default();
        m.lines().any(|l| l.starts_with("cairn_blocks{engine=\"metrics\"} 1"))
    });
    let query = time_query(&server.client, &format!("{}/api/v1/query", server.url), now_ms);
    server.stop();
    if !compacted {
        println!("note: Cairn's metric blocks were not compacted into one within 30 s");
    }
    results.push(Figures {
        name: "cairn",
        samples_s: ingest,
        cpu_us: cpu,
        rss: hwm,
        disk: dir_size(data.path()),
        query,
    });
    disk_breakdown(&data.path().join("metrics/blocks"), total);

    let peers = std::env::var("CAIRN_BENCH_PEERS").map(|v| v != "0").unwrap_or(true);
    if peers {
        match run_prometheus(&ordered, total, now_ms) {
            Ok(f) => results.push(f),
            Err(e) => println!("Prometheus: not run: {e}"),
        }
        match run_victoria(&ordered, total, now_ms) {
            Ok(f) => results.push(f),
            Err(e) => println!("VictoriaMetrics: not run: {e}"),
        }
    }
    print_table(&results, total);
}

struct Figures {
    name: &'static str,
    samples_s: f64,
    cpu_us: f64,
    rss: u64,
    disk: u64,
    /// (first, warm median of 3) seconds, or None when the query failed.
    query: Option<(f64, f64, usize)>,
}

const RW_HEADERS: [(&str, &str); 3] = [
    ("Content-Type", "application/x-protobuf"),
    ("Content-Encoding", "snappy"),
    ("X-Prometheus-Remote-Write-Version", "0.1.0"),
];

/// Sends everything; returns (samples/s, server CPU µs/sample, peak RSS).
fn ingest(
    client: &reqwest::blocking::Client,
    url: &str,
    pid: u32,
    bodies: Vec<Vec<u8>>,
    total: u64,
) -> (f64, f64, u64) {
    let (cpu0, _) = proc_usage(pid);
    let started = Instant::now();
    send_all(client, url, &RW_HEADERS, bodies, 4);
    let wall = started.elapsed().as_secs_f64();
    let (cpu1, hwm) = proc_usage(pid);
    (total as f64 / wall, (cpu1 - cpu0) * 1e6 / total as f64, hwm)
}

/// [`ingest`] into a peer, turning a refused request into an error (so the
/// peer is still stopped) instead of a panic.
fn guarded_ingest(
    c: &reqwest::blocking::Client,
    url: &str,
    child: &Child,
    bodies: &[Vec<u8>],
    total: u64,
) -> Result<(f64, f64, u64), String> {
    let (c, url, pid, bodies) = (c.clone(), url.to_string(), child.id(), bodies.to_vec());
    std::thread::spawn(move || ingest(&c, &url, pid, bodies, total))
        .join()
        .map_err(|_| "a remote_write request was refused (see the panic above)".to_string())
}

fn wait_for(limit: Duration, mut ok: impl FnMut() -> bool) -> bool {
    let started = Instant::now();
    while started.elapsed() < limit {
        if ok() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    false
}

/// Runs the 1,014-series query three times: (first, best of the next two,
/// series in the answer).
fn time_query(client: &reqwest::blocking::Client, url: &str, now_ms: i64) -> Option<(f64, f64, usize)> {
    // the raw samples, as a matrix: every sample of the range is selected,
    // decoded and returned (the over_time functions drop __name__ and then
    // collide on these label sets)
    let q = r#"{job="node",instance=~"host-[01]:9100"}[24h]"#;
    let t = format!("{}", now_ms / 1000);
    let mut times = Vec::new();
    let mut n = 0;
    for _ in 0..3 {
        let started = Instant::now();
        let r = client.post(url).form(&[("query", q), ("time", t.as_str())]).send().ok()?;
        let body = r.text().ok()?;
        let took = started.elapsed().as_secs_f64();
        let v: serde_json::Value = serde_json::from_str(&body).ok()?;
        n = v["data"]["result"].as_array().map_or(0, |a| a.len());
        // a failed answer has no time
        times.push(if n > 0 { took } else { f64::NAN });
        if n == 0 {
            println!("query {q} at {t} answered no series: {}", &body[..body.len().min(300)]);
        }
    }
    let warm = times[1].min(times[2]); // NaN only when both failed
    Some((times[0], warm, n))
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).unwrap_or(0)
}

fn stop(mut child: Child) {
    let _ = Command::new("kill").arg("-TERM").arg(child.id().to_string()).status();
    let _ = child.wait();
}

fn start_peer(
    bin: &str,
    args: &[String],
    ready_url: &str,
    client: &reqwest::blocking::Client,
) -> Result<Child, String> {
    let mut child = Command::new(bin)
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("{bin}: {e}"))?;
    let up = wait_for(Duration::from_secs(30), || {
        client.get(ready_url).send().map(|r| r.status().is_success()).unwrap_or(false)
    });
    if !up {
        let _ = child.kill();
        let _ = child.wait();
        return Err(format!("{bin} did not become ready at {ready_url} within 30 s"));
    }
    Ok(child)
}

fn client() -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder().timeout(Duration::from_secs(300)).build().expect("client")
}

fn run_prometheus(bodies: &[Vec<u8>], total: u64, now_ms: i64) -> Result<Figures, String> {
    let bin = "/usr/bin/prometheus";
    if !Path::new(bin).exists() {
        return Err(format!("{bin} not installed (apt-get install prometheus)"));
    }
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let cfg = dir.path().join("prometheus.yml");
    // the same out-of-order allowance as Cairn's default: 4 concurrent
    // senders can deliver one series' requests slightly out of order
    std::fs::write(&cfg, "global:\n  scrape_interval: 15s\nstorage:\n  tsdb:\n    out_of_order_time_window: 10m\n")
        .map_err(|e| e.to_string())?;
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let c = client();
    let args = vec![
        format!("--config.file={}", cfg.display()),
        format!("--storage.tsdb.path={}", dir.path().join("data").display()),
        format!("--web.listen-address=127.0.0.1:{port}"),
        "--web.enable-remote-write-receiver".to_string(),
    ];
    let child = start_peer(bin, &args, &format!("{base}/-/ready"), &c)?;
    let (samples_s, cpu_us, rss) = match guarded_ingest(&c, &format!("{base}/api/v1/write"), &child, bodies, total) {
        Ok(x) => x,
        Err(e) => {
            stop(child);
            return Err(e);
        }
    };
    let query = time_query(&c, &format!("{base}/api/v1/query"), now_ms);
    stop(child);
    Ok(Figures { name: "Prometheus", samples_s, cpu_us, rss, disk: dir_size(&dir.path().join("data")), query })
}

fn run_victoria(bodies: &[Vec<u8>], total: u64, now_ms: i64) -> Result<Figures, String> {
    let bin = "/usr/bin/victoria-metrics";
    if !Path::new(bin).exists() {
        return Err(format!("{bin} not installed (apt-get install victoria-metrics)"));
    }
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let c = client();
    let args = vec![
        format!("-storageDataPath={}", dir.path().join("data").display()),
        format!("-httpListenAddr=127.0.0.1:{port}"),
        "-retentionPeriod=1y".to_string(),
    ];
    let child = start_peer(bin, &args, &format!("{base}/health"), &c)?;
    let (samples_s, cpu_us, rss) = match guarded_ingest(&c, &format!("{base}/api/v1/write"), &child, bodies, total) {
        Ok(x) => x,
        Err(e) => {
            stop(child);
            return Err(e);
        }
    };
    let _ = c.get(format!("{base}/internal/force_flush")).send();
    let query = time_query(&c, &format!("{base}/api/v1/query"), now_ms);
    stop(child);
    Ok(Figures { name: "VictoriaMetrics", samples_s, cpu_us, rss, disk: dir_size(&dir.path().join("data")), query })
}

fn print_table(results: &[Figures], total: u64) {
    print!("{:<46}", "figure");
    for r in results {
        print!(" {:>16}", r.name);
    }
    for r in &results[1..] {
        print!(" {:>18}", format!("cairn/{}", r.name));
    }
    println!();
    let row = |label: &str, f: &dyn Fn(&Figures) -> f64, prec: usize| {
        print!("{label:<46}");
        for r in results {
            print!(" {:>16.prec$}", f(r));
        }
        let c = f(&results[0]);
        for r in &results[1..] {
            print!(" {:>18.3}", c / f(r));
        }
        println!();
    };
    row("samples/s (client on the same 2 cores)", &|r| r.samples_s, 0);
    row("server CPU µs per sample", &|r| r.cpu_us, 3);
    row("peak RSS MB", &|r| r.rss as f64 / 1e6, 0);
    row("disk bytes/sample (all files, after stop)", &|r| r.disk as f64 / total as f64, 2);
    row("query 1,014 series x 24 h, first, ms", &|r| r.query.map_or(f64::NAN, |q| q.0 * 1e3), 1);
    row("query 1,014 series x 24 h, warm, ms", &|r| r.query.map_or(f64::NAN, |q| q.1 * 1e3), 1);
    for r in results {
        println!("{}: query answered {} series", r.name, r.query.map_or(0, |q| q.2));
    }
    println!(
        "(PEERS.md, same workload: Prometheus 1.45-2.16 M/s, 0.78-1.20 µs, 181-187 MB, 3.5-3.7 B/sample in blocks;"
    );
    println!(" VictoriaMetrics 3.24-3.28 M/s, 0.45-0.49 µs, 163-218 MB, 2.6-2.8 B/sample)");
}

/// Where Cairn's block bytes go, and what the chunks would take as plain
/// Gorilla XOR (re-encoded here from the decoded samples) — the measurement
/// behind the decimal encoding (`docs/format/tsdb.md`, "Measurements").
fn disk_breakdown(blocks: &Path, total: u64) {
    use cairn_store::block::{Block, BlockKind};
    use cairn_store::xor;
    let (mut size, mut data, mut xor_bytes, mut n_blocks) = (0u64, 0u64, 0u64, 0);
    let mut by_enc = [(0u64, 0u64, 0u64); 2]; // chunks, bytes, samples
    let Ok(rd) = std::fs::read_dir(blocks) else { return };
    for e in rd.flatten() {
        let Ok(b) = Block::open(&e.path(), BlockKind::Metrics) else { continue };
        n_blocks += 1;
        size += b.size;
        for s in &b.streams {
            for c in &s.chunks {
                data += c.len + c.filter_len;
                let Ok(bytes) = b.chunk_bytes(c) else { continue };
                let mut samples = Vec::new();
                if xor::decode_chunk(&bytes, &mut samples).is_err() {
                    continue;
                }
                let enc = usize::from(bytes[0] == xor::ENC_DECIMAL);
                by_enc[enc].0 += 1;
                by_enc[enc].1 += c.len;
                by_enc[enc].2 += samples.len() as u64;
                let mut x = Vec::new();
                xor::encode(&mut x, &samples);
                xor_bytes += x.len() as u64 + 1;
            }
        }
    }
    let per = |b: u64| b as f64 / total as f64;
    println!(
        "cairn blocks: {n_blocks} block(s), {:.3} B/sample: chunks {:.3} + index/header/footer {:.3}",
        per(size),
        per(data),
        per(size - data)
    );
    for (name, (chunks, bytes, samples)) in ["xor", "decimal"].iter().zip(by_enc) {
        println!(
            "  {name:<8} chunks {chunks:>6}, samples {samples:>8}, {:.3} B/sample of those",
            bytes as f64 / samples.max(1) as f64
        );
    }
    println!("  the same chunks all as Gorilla XOR: {:.3} B/sample", per(xor_bytes));
}
