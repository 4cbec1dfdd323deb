//! Benchmark (b) of issue 7: CPU time and memory of one node-metrics
//! collection, Cairn's collector vs node_exporter (Debian package
//! `prometheus-node-exporter`) in the same run on the same machine.
//!
//! - **Cairn**: `NodeCollector::collect` (every family Cairn emits) plus
//!   encoding the result as a remote_write body (protobuf + snappy), the
//!   work of one collection in `cairn collect`, repeated `N` times in this
//!   process; CPU from `/proc/self/stat`.
//! - **node_exporter**: started on a free loopback port with its default
//!   collectors, scraped `N` times; CPU from `/proc/<pid>/stat` (server
//!   side only: collection plus text rendering), RSS from its
//!   `/proc/<pid>/status`.
//!
//! node_exporter's default collectors read more sources than Cairn's
//! (netstat, sockstat, vmstat, timex, …), so the series counts are printed
//! beside the CPU figures. RSS: Cairn's figure is this whole benchmark
//! process (collector state plus harness), an upper bound for the
//! collector alone.
//!
//! Run: `cargo bench --bench node_collect` (`NODE_BENCH_N` collections,
//! default 300).

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use cairn_collector::config::NodeConfig;
use cairn_collector::node::NodeCollector;
use cairn_collector::sink::encode_write_request;
use common::{is_bench_run, proc_usage};

const NODE_EXPORTER: &str = "/usr/bin/prometheus-node-exporter";

fn vm_rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(0)
        * 1024
}

fn main() {
    if !is_bench_run("node_collect") {
        return;
    }
    let n: usize = std::env::var("NODE_BENCH_N").ok().and_then(|v| v.parse().ok()).unwrap_or(300);
    println!(
        "node_collect: {n} collections each; machine: {} CPUs",
        std::thread::available_parallelism().map_or(0, |p| p.get())
    );

    // Cairn.
    let mut nc = NodeCollector::new(&NodeConfig::default(), "bench").expect("node collector");
    // Warm-up (the first collection records family names and metadata).
    let (mut series, mut body_bytes) = (0, 0);
    for _ in 0..3 {
        let out = nc.collect(cairn_wire::time::now_ms()).expect("collect");
        series = out.len();
        body_bytes = encode_write_request(&out).len();
    }
    let me = std::process::id();
    let (cpu0, _) = proc_usage(me);
    let wall = Instant::now();
    for _ in 0..n {
        let out = nc.collect(cairn_wire::time::now_ms()).expect("collect");
        std::hint::black_box(encode_write_request(&out));
    }
    let (cpu1, _) = proc_usage(me);
    let cairn_cpu = (cpu1 - cpu0) / n as f64;
    let cairn_wall = wall.elapsed().as_secs_f64() / n as f64;
    let cairn_rss = vm_rss(me);
    println!(
        "cairn:         {:>8.3} ms CPU/collection ({:.3} ms wall), {series} series, remote_write body {body_bytes} B, RSS {:.1} MiB (whole bench process)",
        cairn_cpu * 1e3,
        cairn_wall * 1e3,
        cairn_rss as f64 / (1 << 20) as f64
    );

    // node_exporter.
    if !std::path::Path::new(NODE_EXPORTER).exists() {
        println!("node_exporter: skipped ({NODE_EXPORTER} not installed: apt-get install prometheus-node-exporter)");
        return;
    }
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let mut child = Command::new(NODE_EXPORTER)
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn node_exporter");
    let url = format!("http://127.0.0.1:{port}/metrics");
    let client = reqwest::blocking::Client::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut ne_series = 0;
    let mut ne_bytes = 0;
    loop {
        if let Ok(r) = client.get(&url).send()
            && r.status() == 200
        {
            break;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("node_exporter did not start");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    for _ in 0..3 {
        let text = client.get(&url).send().unwrap().text().unwrap();
        ne_series = text.lines().filter(|l| !l.starts_with('#') && !l.is_empty()).count();
        ne_bytes = text.len();
    }
    let pid = child.id();
    let (ne0, _) = proc_usage(pid);
    let wall = Instant::now();
    for _ in 0..n {
        std::hint::black_box(client.get(&url).send().unwrap().bytes().unwrap());
    }
    let (ne1, _) = proc_usage(pid);
    let ne_cpu = (ne1 - ne0) / n as f64;
    let ne_wall = wall.elapsed().as_secs_f64() / n as f64;
    let ne_rss = vm_rss(pid);
    let _ = child.kill();
    let _ = child.wait();
    println!(
        "node_exporter: {:>8.3} ms CPU/scrape ({:.3} ms wall incl. HTTP), {ne_series} series, text body {ne_bytes} B, RSS {:.1} MiB",
        ne_cpu * 1e3,
        ne_wall * 1e3,
        ne_rss as f64 / (1 << 20) as f64
    );
    println!(
        "ratio (node_exporter / cairn): CPU per collection {:.2}x, CPU per series {:.2}x, RSS {:.2}x",
        ne_cpu / cairn_cpu,
        (ne_cpu / ne_series as f64) / (cairn_cpu / series as f64),
        ne_rss as f64 / cairn_rss as f64
    );
}
