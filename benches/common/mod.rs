//! Helpers shared by the end-to-end benchmarks: locating `../shared`,
//! starting `cairn serve`, and reading a process's CPU time and peak RSS.

#![allow(dead_code)]

pub mod node;
pub mod peers_logs;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// `../shared` (or `CAIRN_SHARED`).
pub fn shared_dir() -> PathBuf {
    if let Ok(p) = std::env::var("CAIRN_SHARED") {
        return PathBuf::from(p);
    }
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared")
}

/// True when run by `cargo bench` (which passes `--bench`); `cargo test
/// --all-targets` runs benches without it, and they should then return.
pub fn is_bench_run(name: &str) -> bool {
    let yes = std::env::args().any(|a| a == "--bench");
    if !yes {
        println!("{name}: skipped (run with `cargo bench --bench {name}`)");
    }
    yes
}

/// (utime + stime) seconds and VmHWM bytes of a process.
pub fn proc_usage(pid: u32) -> (f64, u64) {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit(')').next().unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks: f64 = f.get(11).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0)
        + f.get(12).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let hwm = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(0)
        * 1024;
    (ticks / 100.0, hwm)
}

/// Total size of the files below `p`.
pub fn dir_size(p: &Path) -> u64 {
    let mut n = 0;
    if let Ok(rd) = std::fs::read_dir(p) {
        for e in rd.flatten() {
            let Ok(m) = e.metadata() else { continue };
            n += if m.is_dir() { dir_size(&e.path()) } else { m.len() };
        }
    }
    n
}

/// A `cairn serve` started for a benchmark (or an external one).
pub struct Server {
    pub child: Option<Child>,
    pub url: String,
    pub client: reqwest::blocking::Client,
}

impl Server {
    /// Starts `cairn serve` on a free port with `data_dir`, waits for `/ready`.
    /// With `CAIRN_BENCH_URL` set, uses that server instead (e.g. one run
    /// under a profiler); its CPU and RSS are then not reported. With
    /// `CAIRN_BENCH_BIN` set, runs that `cairn` binary instead of this
    /// build's (an A/B comparison against another commit's build). With
    /// `CAIRN_BENCH_CONFIG=FILE`, the server reads that config file.
    pub fn start(data_dir: &Path) -> Server {
        Self::start_with(data_dir, &[])
    }

    /// Like [`Server::start`], with more `cairn serve` arguments (e.g.
    /// `--config FILE`, which takes the place of `CAIRN_BENCH_CONFIG`).
    pub fn start_with(data_dir: &Path, extra: &[&std::ffi::OsStr]) -> Server {
        if let Ok(url) = std::env::var("CAIRN_BENCH_URL") {
            let client =
                reqwest::blocking::Client::builder().timeout(Duration::from_secs(600)).build().expect("client");
            return Server { child: None, url, client };
        }
        let bin = std::env::var_os("CAIRN_BENCH_BIN").unwrap_or_else(|| env!("CARGO_BIN_EXE_cairn").into());
        let mut cmd = Command::new(bin);
        cmd.args(["serve", "--listen", "127.0.0.1:0", "--data-dir"]).arg(data_dir).args(extra);
        if let Some(cfg) = std::env::var_os("CAIRN_BENCH_CONFIG").filter(|_| !extra.iter().any(|a| *a == "--config")) {
            cmd.arg("--config").arg(cfg);
        }
        let mut child = cmd.env("RUST_LOG", "warn").stdout(Stdio::piped()).spawn().expect("start cairn");
        let mut url = String::new();
        let stdout = child.stdout.take().expect("stdout");
        let mut lines = BufReader::new(stdout).lines();
        for line in lines.by_ref() {
            let line = line.unwrap_or_default();
            if let Some(u) = line.split("Prometheus data source URL").nth(1) {
                url = u.trim().to_string();
                break;
            }
        }
        std::thread::spawn(move || for _ in lines {});
        let client = reqwest::blocking::Client::builder().timeout(Duration::from_secs(120)).build().expect("client");
        while client.get(format!("{url}/ready")).send().map(|r| r.status() != 200).unwrap_or(true) {
            std::thread::sleep(Duration::from_millis(20));
        }
        Server { child: Some(child), url, client }
    }

    /// Process id (0 for an external server).
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(Child::id).unwrap_or(0)
    }

    /// SIGTERM (flushes heads to blocks) and wait; returns the server's
    /// CPU seconds over its whole life, shutdown flush included (read
    /// from `/proc` once it has exited and before it is reaped; `None` for
    /// an external server).
    pub fn stop_cpu(mut self) -> Option<f64> {
        let child = self.child.as_mut()?;
        let pid = child.id();
        let _ = Command::new("kill").arg("-TERM").arg(pid.to_string()).status();
        let mut cpu = None;
        loop {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            if stat.rsplit(')').next().and_then(|r| r.split_whitespace().next()).is_none_or(|s| s == "Z") {
                cpu = Some(proc_usage(pid).0).filter(|c| *c > 0.0).or(cpu);
                break;
            }
            cpu = Some(proc_usage(pid).0);
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.wait();
        cpu
    }

    /// SIGTERM (flushes heads to blocks) and wait.
    pub fn stop(mut self) {
        if let Some(child) = self.child.as_mut() {
            let _ = Command::new("kill").arg("-TERM").arg(child.id().to_string()).status();
            let _ = child.wait();
        }
    }
}

/// Sends `bodies` to `url` from `senders` threads, asserting 204.
pub fn send_all(
    client: &reqwest::blocking::Client,
    url: &str,
    headers: &[(&str, &str)],
    bodies: Vec<Vec<u8>>,
    senders: usize,
) {
    let keys: Vec<usize> = (0..bodies.len()).collect();
    send_all_ordered(client, url, headers, bodies, &keys, senders);
}

/// [`send_all`], except that bodies with the same key (a log stream) are
/// delivered one after the other: a body is sent only once the previous body
/// of its key was acknowledged, as an agent shipping one stream does. Bodies
/// of different keys go out concurrently, in queue order.
pub fn send_all_ordered(
    client: &reqwest::blocking::Client,
    url: &str,
    headers: &[(&str, &str)],
    bodies: Vec<Vec<u8>>,
    keys: &[usize],
    senders: usize,
) {
    use std::sync::{Arc, Condvar, Mutex};
    assert_eq!(keys.len(), bodies.len(), "one key per body");
    // prev[i]: the previous body with the same key.
    let mut last = std::collections::HashMap::new();
    let prev: Vec<Option<usize>> = keys.iter().enumerate().map(|(i, k)| last.insert(*k, i)).collect();
    let done = Arc::new((Mutex::new(vec![false; bodies.len()]), Condvar::new()));
    let queue = Arc::new(Mutex::new(bodies.into_iter().zip(prev).enumerate()));
    let threads: Vec<_> = (0..senders)
        .map(|_| {
            let q = queue.clone();
            let done = done.clone();
            let c = client.clone();
            let u = url.to_string();
            let h: Vec<(String, String)> = headers.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
            std::thread::spawn(move || {
                loop {
                    let Some((i, (body, prev))) = q.lock().expect("queue").next() else { break };
                    if let Some(p) = prev {
                        let (lock, cv) = &*done;
                        let mut d = lock.lock().expect("done");
                        while !d[p] {
                            d = cv.wait(d).expect("done");
                        }
                    }
                    let mut req = c.post(&u).body(body);
                    for (k, v) in &h {
                        req = req.header(k, v);
                    }
                    let r = req.send().expect("send");
                    assert_eq!(r.status(), 204, "{}", r.text().unwrap_or_default());
                    let (lock, cv) = &*done;
                    lock.lock().expect("done")[i] = true;
                    cv.notify_all();
                }
            })
        })
        .collect();
    for t in threads {
        t.join().expect("sender");
    }
}

/// With `CAIRN_BENCH_TRACE=1`, samples the server's RSS and head/block
/// gauges every 250 ms until `stop` is set, and prints the timeline.
pub fn trace_server(
    url: String,
    pid: u32,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> Option<std::thread::JoinHandle<()>> {
    if std::env::var("CAIRN_BENCH_TRACE").is_err() {
        return None;
    }
    Some(std::thread::spawn(move || {
        let client = reqwest::blocking::Client::new();
        let started = std::time::Instant::now();
        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
            let rss = std::fs::read_to_string(format!("/proc/{pid}/status"))
                .unwrap_or_default()
                .lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse::<u64>().ok()))
                .unwrap_or(0);
            let m = client.get(format!("{url}/metrics")).send().and_then(|r| r.text()).unwrap_or_default();
            let gauges: Vec<String> = m
                .lines()
                .filter(|l| l.starts_with("cairn_head_bytes{") || l.starts_with("cairn_blocks{"))
                .map(|l| l.replace("cairn_", ""))
                .collect();
            println!("trace t={:6.2}s rss={:5} MB {}", started.elapsed().as_secs_f64(), rss / 1024, gauges.join(" "));
            std::thread::sleep(Duration::from_millis(250));
        }
    }))
}
