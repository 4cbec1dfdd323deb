//! Collector tailing benchmark (issue 7, benchmark a): the PEERS.md
//! collector workload — the lines of `../shared/datasets/logs/` written
//! round-robin into 50 files until they hold 200 MB, each line with a
//! ` seq=N` suffix — read from the start by `cairn collect` and shipped
//! (Loki push, through the on-disk queue, positions checkpointed only on
//! acknowledgement) to a local `cairn serve`. The clock stops when the
//! aggregator has stored every line.
//!
//! Prints wall time, the collector's CPU seconds (utime + stime), lines and
//! MB per collector CPU second, and its peak RSS (VmHWM), next to
//! fluent-bit 5.1's figures from PEERS.md (fluent-bit is not packaged in
//! Debian 12, so it cannot run in the same run) and the ratios.
//!
//! Env: `CAIRN_BENCH_DATA=DIR` keeps the generated files in DIR (reused
//! when present); `COLLECT_BENCH_MB` (default 200) sizes the data set;
//! `COLLECT_BENCH_QUEUE_FSYNC=false` turns `collector.queue_fsync` off (to
//! measure what the fsync of each queued batch costs).

mod common;

use std::io::{BufRead, BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{Server, proc_usage, shared_dir};

const FILES: usize = 50;

/// fluent-bit 5.1, PEERS.md (median of 3 runs on this machine kind).
const FLUENT_BIT_WALL_S: f64 = 3.1;
const FLUENT_BIT_CPU_S: f64 = 1.17;
const FLUENT_BIT_LINES_PER_CPU_S: f64 = 695_000.0;
const FLUENT_BIT_MB_PER_CPU_S: f64 = 171.0;
const FLUENT_BIT_RSS_MB: f64 = 359.0;

/// Writes the data set into `dir` (unless already there); returns (lines, bytes).
fn build_dataset(dir: &Path, target_bytes: u64) -> (u64, u64) {
    let marker = dir.join("DONE");
    if let Ok(s) = std::fs::read_to_string(&marker) {
        let mut it = s.split_whitespace().map(|v| v.parse::<u64>().unwrap_or(0));
        if let (Some(l), Some(b), Some(t)) = (it.next(), it.next(), it.next())
            && t == target_bytes
        {
            return (l, b);
        }
    }
    let src = shared_dir().join("datasets/logs");
    let mut names: Vec<PathBuf> = std::fs::read_dir(&src)
        .unwrap_or_else(|e| panic!("{}: {e} (set CAIRN_SHARED)", src.display()))
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "log"))
        .collect();
    names.sort();
    let mut source: Vec<String> = Vec::new();
    for n in &names {
        let f = std::fs::File::open(n).unwrap();
        for l in BufReader::new(f).split(b'\n') {
            let l = l.unwrap();
            source.push(String::from_utf8_lossy(&l).trim_end_matches('\r').to_string());
        }
    }
    std::fs::create_dir_all(dir).unwrap();
    let mut outs: Vec<BufWriter<std::fs::File>> = (0..FILES)
        .map(|i| BufWriter::with_capacity(1 << 20, std::fs::File::create(dir.join(format!("app-{i:02}.log"))).unwrap()))
        .collect();
    let (mut lines, mut bytes) = (0u64, 0u64);
    'fill: loop {
        for l in &source {
            let line = format!("{l} seq={lines}\n");
            outs[(lines as usize) % FILES].write_all(line.as_bytes()).unwrap();
            bytes += line.len() as u64;
            lines += 1;
            if bytes >= target_bytes {
                break 'fill;
            }
        }
    }
    for mut o in outs {
        o.flush().unwrap();
    }
    std::fs::write(marker, format!("{lines} {bytes} {target_bytes}\n")).unwrap();
    (lines, bytes)
}

/// Lines the aggregator has stored (sum of `cairn_ingest_lines_total`).
fn stored_lines(s: &Server) -> u64 {
    let Ok(r) = s.client.get(format!("{}/metrics", s.url)).send() else { return 0 };
    let body = r.text().unwrap_or_default();
    body.lines()
        .filter(|l| l.starts_with("cairn_ingest_lines_total"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

fn main() {
    if !common::is_bench_run("collect_logs") {
        return;
    }
    let mb: u64 = std::env::var("COLLECT_BENCH_MB").ok().and_then(|v| v.parse().ok()).unwrap_or(200);
    let tmp = tempfile::tempdir().unwrap();
    let data = std::env::var("CAIRN_BENCH_DATA").map(PathBuf::from).unwrap_or_else(|_| tmp.path().join("data"));
    let t = Instant::now();
    let (lines, bytes) = build_dataset(&data, mb * 1_000_000);
    println!(
        "data: {lines} lines, {:.1} MB in {FILES} files under {} (built in {:.1}s)",
        bytes as f64 / 1e6,
        data.display(),
        t.elapsed().as_secs_f64()
    );

    let fsync = std::env::var("COLLECT_BENCH_QUEUE_FSYNC").map(|v| v != "false").unwrap_or(true);
    println!("collector.queue_fsync = {fsync}");
    let agg = Server::start(&tmp.path().join("agg"));
    let cfg = tmp.path().join("collect.toml");
    std::fs::write(
        &cfg,
        format!(
            "[collector]\nhost = \"bench\"\npoll_interval = \"100ms\"\nqueue_fsync = {fsync}\n\n[collector.node]\nenabled = false\n\n\
             [[collector.files]]\npaths = [\"{}/app-*.log\"]\nlabels = {{ job = \"bench\" }}\n",
            data.display(),
        ),
    )
    .unwrap();
    let start = Instant::now();
    let mut child = Command::new(env!("CARGO_BIN_EXE_cairn"))
        .args(["collect", "--push-url", &agg.url, "--config"])
        .arg(&cfg)
        .arg("--data-dir")
        .arg(tmp.path().join("state"))
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
        .expect("start cairn collect");
    let pid = child.id();
    let deadline = Instant::now() + Duration::from_secs(600);
    let mut last;
    loop {
        let n = stored_lines(&agg);
        last = proc_usage(pid);
        if n >= lines {
            break;
        }
        assert!(Instant::now() < deadline, "only {n} of {lines} lines stored after 600s");
        std::thread::sleep(Duration::from_millis(50));
    }
    let wall = start.elapsed().as_secs_f64();
    // Let the last acknowledgement be checkpointed, then read the totals.
    std::thread::sleep(Duration::from_millis(300));
    let (cpu, hwm) = proc_usage(pid);
    let (cpu, hwm) = if cpu > 0.0 { (cpu, hwm) } else { last };
    let _ = Command::new("kill").arg("-TERM").arg(pid.to_string()).status();
    let _ = child.wait();
    let agg_pid = agg.pid();
    let (agg_cpu, agg_hwm) = proc_usage(agg_pid);
    agg.stop();

    let lps = lines as f64 / cpu;
    let mbps = bytes as f64 / 1e6 / cpu;
    let rss = hwm as f64 / (1 << 20) as f64;
    println!(
        "cairn collect:  wall {wall:.2}s until every line stored, CPU {cpu:.2}s, {lps:.0} lines/CPU-s, {mbps:.0} MB/CPU-s, peak RSS {rss:.1} MiB"
    );
    println!(
        "  (aggregator in the same run: CPU {agg_cpu:.2}s, peak RSS {:.0} MiB)",
        agg_hwm as f64 / (1 << 20) as f64
    );
    println!(
        "fluent-bit 5.1 (PEERS.md, not installable here): wall {FLUENT_BIT_WALL_S}s, CPU {FLUENT_BIT_CPU_S}s, {FLUENT_BIT_LINES_PER_CPU_S:.0} lines/CPU-s, {FLUENT_BIT_MB_PER_CPU_S:.0} MB/CPU-s, peak RSS {FLUENT_BIT_RSS_MB:.0} MB (no position database)"
    );
    println!(
        "ratio cairn / fluent-bit: lines per CPU second {:.2}x (goal >= 1.5x), peak RSS {:.3}x (goal < 30 MiB: {}), wall {:.2}x",
        lps / FLUENT_BIT_LINES_PER_CPU_S,
        rss / FLUENT_BIT_RSS_MB,
        if rss < 30.0 { "met" } else { "NOT met" },
        wall / FLUENT_BIT_WALL_S
    );
}
