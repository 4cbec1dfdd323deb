//! The node_exporter metrics workload (PEERS.md) and the peers it runs
//! against: every series of the real scrape in
//! `../shared/datasets/node-exporter/` per instance, counters growing at
//! per-series random rates (30 % do not move), half of the gauges drifting
//! and half constant, values rounded to the precision the exporter shows,
//! scrape timestamps with ±3 ms jitter; sent as remote_write 1.0 requests.
//! Peers: Prometheus (`--web.enable-remote-write-receiver`) and
//! VictoriaMetrics from Debian, each on a free loopback port with its own
//! temporary data directory.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use cairn_wire::proto::{Label, Sample, TimeSeries, WriteRequest, snappy_compress};
use prost::Message;

/// remote_write 1.0 request headers.
pub const RW_HEADERS: [(&str, &str); 3] = [
    ("Content-Type", "application/x-protobuf"),
    ("Content-Encoding", "snappy"),
    ("X-Prometheus-Remote-Write-Version", "0.1.0"),
];

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

/// A generated workload: remote_write bodies in time order across
/// instances.
pub struct Workload {
    /// Snappy-compressed `WriteRequest`s.
    pub bodies: Vec<Vec<u8>>,
    /// Samples in all bodies.
    pub samples: u64,
    /// Series in all bodies.
    pub series: usize,
}

/// `instances` × the dataset's series, `steps` samples each at 15 s from
/// `t0` (ms), `per_request` samples per series in one request.
pub fn workload(instances: usize, steps: usize, per_request: usize, t0: i64) -> Workload {
    let path = super::shared_dir().join("datasets/node-exporter/node-exporter-1.5.0.prom");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e} (set CAIRN_SHARED)", path.display()));
    let templates = parse_scrape(&text);
    let mut rng: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
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
    let n_per = steps.div_ceil(per_request);
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
    Workload { bodies: ordered, samples: total, series: templates.len() * instances }
}

/// Polls `ok` every 200 ms until it holds or `limit` passes.
pub fn wait_for(limit: Duration, mut ok: impl FnMut() -> bool) -> bool {
    let started = Instant::now();
    while started.elapsed() < limit {
        if ok() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    false
}

/// A free loopback port (bound, then released).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).unwrap_or(0)
}

/// SIGTERM and wait.
pub fn stop(mut child: Child) {
    let _ = Command::new("kill").arg("-TERM").arg(child.id().to_string()).status();
    let _ = child.wait();
}

/// An HTTP client with a generous timeout.
pub fn client() -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder().timeout(Duration::from_secs(300)).build().expect("client")
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

/// A peer server started for a benchmark; stopped (SIGTERM) when dropped.
pub struct Peer {
    pub child: Option<Child>,
    /// `http://127.0.0.1:PORT`
    pub base: String,
    /// Its data directory (inside a temporary directory).
    pub data: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

impl Peer {
    /// Process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// Stops the server (SIGTERM, wait), keeping its data directory.
    pub fn stop(&mut self) {
        if let Some(c) = self.child.take() {
            stop(c);
        }
    }

    /// `/usr/bin/prometheus` with `--web.enable-remote-write-receiver` and
    /// the same out-of-order allowance as Cairn's default (4 concurrent
    /// senders can deliver one series' requests slightly out of order).
    pub fn prometheus(extra_args: &[&str]) -> Result<Peer, String> {
        let bin = "/usr/bin/prometheus";
        if !Path::new(bin).exists() {
            return Err(format!("{bin} not installed (apt-get install prometheus)"));
        }
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let cfg = dir.path().join("prometheus.yml");
        std::fs::write(&cfg, "global:\n  scrape_interval: 15s\nstorage:\n  tsdb:\n    out_of_order_time_window: 10m\n")
            .map_err(|e| e.to_string())?;
        let port = free_port();
        let base = format!("http://127.0.0.1:{port}");
        let data = dir.path().join("data");
        let mut args = vec![
            format!("--config.file={}", cfg.display()),
            format!("--storage.tsdb.path={}", data.display()),
            format!("--web.listen-address=127.0.0.1:{port}"),
            "--web.enable-remote-write-receiver".to_string(),
        ];
        args.extend(extra_args.iter().map(|a| a.to_string()));
        let child = start_peer(bin, &args, &format!("{base}/-/ready"), &client())?;
        Ok(Peer { child: Some(child), base, data, _dir: dir })
    }

    /// `/usr/bin/victoria-metrics` with default flags (retention 1 y).
    pub fn victoria_metrics(extra_args: &[&str]) -> Result<Peer, String> {
        let bin = "/usr/bin/victoria-metrics";
        if !Path::new(bin).exists() {
            return Err(format!("{bin} not installed (apt-get install victoria-metrics)"));
        }
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let port = free_port();
        let base = format!("http://127.0.0.1:{port}");
        let data = dir.path().join("data");
        let mut args = vec![
            format!("-storageDataPath={}", data.display()),
            format!("-httpListenAddr=127.0.0.1:{port}"),
            "-retentionPeriod=1y".to_string(),
        ];
        args.extend(extra_args.iter().map(|a| a.to_string()));
        let child = start_peer(bin, &args, &format!("{base}/health"), &client())?;
        Ok(Peer { child: Some(child), base, data, _dir: dir })
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        self.stop();
    }
}
