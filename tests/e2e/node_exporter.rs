//! Cairn's node metrics against the real node_exporter (Debian package
//! `prometheus-node-exporter`, 1.5) on the same machine: every family Cairn
//! emits exists in node_exporter's output with the same type, help and
//! label names, and stable gauges agree. Also: `[[collector.scrape]]` of
//! that node_exporter and of a tiny test server, queried as `up{job=…}`.
//!
//! node_exporter runs on its own free loopback port (not the Debian
//! service's 9100) and is killed at the end, also on failure.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use cairn_collector::node::filesystem::DEFAULT_MOUNT_POINTS_EXCLUDE;
use cairn_collector::scrape::parse::{Entry, Format, Parser};
use serde_json::Value;

use crate::harness::{Cairn, MetricsTarget, free_port};

const NODE_EXPORTER: &str = "/usr/bin/prometheus-node-exporter";

/// The node_exporter binary, or `None` (with the reason printed) when it is
/// not installed outside CI. In CI (`CI` set) its absence fails the test:
/// `.ci/run` installs it.
fn node_exporter_bin() -> Option<&'static str> {
    if Path::new(NODE_EXPORTER).exists() {
        return Some(NODE_EXPORTER);
    }
    assert!(
        std::env::var("CI").is_err(),
        "{NODE_EXPORTER} is missing: in CI .ci/run installs the Debian package prometheus-node-exporter"
    );
    eprintln!("skipped: {NODE_EXPORTER} not found (apt-get install prometheus-node-exporter)");
    None
}

/// A running node_exporter, killed on drop.
struct NodeExporter {
    child: Child,
    url: String,
}

impl NodeExporter {
    fn start(bin: &str) -> NodeExporter {
        let addr = format!("127.0.0.1:{}", free_port());
        let child = Command::new(bin)
            .arg(format!("--web.listen-address={addr}"))
            // Debian's package defaults to also excluding /run, /mnt and
            // /media; Cairn uses upstream 1.5's default. Compare like with like.
            .arg(format!("--collector.filesystem.mount-points-exclude={DEFAULT_MOUNT_POINTS_EXCLUDE}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn node_exporter");
        let ne = NodeExporter { child, url: format!("http://{addr}/metrics") };
        let deadline = Instant::now() + Duration::from_secs(20);
        while reqwest::blocking::get(&ne.url).map(|r| r.status() != 200).unwrap_or(true) {
            assert!(Instant::now() < deadline, "node_exporter did not answer on {}", ne.url);
            std::thread::sleep(Duration::from_millis(50));
        }
        ne
    }

    fn scrape(&self) -> Exposition {
        let text = reqwest::blocking::get(&self.url).unwrap().text().unwrap();
        Exposition::parse(&text)
    }
}

impl Drop for NodeExporter {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

type LabelMap = BTreeMap<String, String>;

/// A parsed `/metrics` page.
struct Exposition {
    types: BTreeMap<String, String>,
    helps: BTreeMap<String, String>,
    series: Vec<(String, LabelMap, f64)>,
}

impl Exposition {
    fn parse(text: &str) -> Exposition {
        let mut e = Exposition { types: BTreeMap::new(), helps: BTreeMap::new(), series: Vec::new() };
        let mut p = Parser::new(text, Format::Text);
        let mut labels = Vec::new();
        while let Some(entry) = p.next_entry(&mut labels).expect("node_exporter output parses") {
            match entry {
                Entry::Type { name, kind } => {
                    e.types.insert(name.to_string(), kind.as_str().to_string());
                }
                Entry::Help { name, help } => {
                    e.helps.insert(name.to_string(), help.into_owned());
                }
                Entry::Sample { name, value, .. } => {
                    // An empty label value is no label, as Prometheus stores it.
                    let l = labels
                        .iter()
                        .filter(|(_, v)| !v.is_empty())
                        .map(|(k, v)| (k.to_string(), v.to_string()))
                        .collect();
                    e.series.push((name.to_string(), l, value));
                }
                Entry::Unit { .. } => {}
            }
        }
        e
    }

    fn of(&self, name: &str) -> Vec<&(String, LabelMap, f64)> {
        self.series.iter().filter(|s| s.0 == name).collect()
    }

    fn value(&self, name: &str, want: &[(&str, &str)]) -> Option<f64> {
        self.of(name)
            .into_iter()
            .find(|s| want.iter().all(|(k, v)| s.1.get(*k).map(String::as_str) == Some(*v)))
            .map(|s| s.2)
    }
}

/// Instant query → (labels without __name__/job/instance, value).
fn query(c: &Cairn, q: &str) -> Vec<(LabelMap, f64)> {
    let (s, v) = c.prom("/api/v1/query", &[("query", q)]);
    assert_eq!(s, 200, "{q}: {v}");
    v["data"]["result"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            let l = strip(r["metric"].as_object().unwrap());
            (l, r["value"][1].as_str().unwrap().parse::<f64>().unwrap())
        })
        .collect()
}

fn strip(m: &serde_json::Map<String, Value>) -> LabelMap {
    m.iter()
        .filter(|(k, _)| !matches!(k.as_str(), "__name__" | "job" | "instance"))
        .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_string()))
        .collect()
}

fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn start_cairn(dir: &Path, extra_toml: &str) -> Cairn {
    let cfg = dir.join("cairn.toml");
    std::fs::write(
        &cfg,
        format!("[collector]\nhost = \"ne-e2e\"\nfiles = []\n\n[collector.node]\ninterval = \"1s\"\n{extra_toml}"),
    )
    .unwrap();
    Cairn::start(&["up"], &dir.join("data"), &["--config", cfg.to_str().unwrap()])
}

#[test]
fn node_metrics_match_node_exporter() {
    let Some(bin) = node_exporter_bin() else { return };
    let ne = NodeExporter::start(bin);
    let dir = tempfile::tempdir().unwrap();
    let c = start_cairn(dir.path(), "");
    wait_for("node metrics and their metadata", || {
        !query(&c, r#"node_load1{instance="ne-e2e"}"#).is_empty() && {
            let (_, v) = c.prom("/api/v1/metadata", &[("metric", "node_cpu_seconds_total")]);
            v["data"].as_object().is_some_and(|m| !m.is_empty())
        }
    });
    let reference = ne.scrape();

    // Cairn's families and label sets.
    let (s, v) = c.prom("/api/v1/series", &[("match[]", r#"{job="node",instance="ne-e2e"}"#)]);
    assert_eq!(s, 200, "{v}");
    let mut cairn: BTreeMap<String, BTreeSet<Vec<String>>> = BTreeMap::new();
    for series in v["data"].as_array().unwrap() {
        let m = series.as_object().unwrap();
        let name = m["__name__"].as_str().unwrap().to_string();
        cairn.entry(name).or_default().insert(strip(m).into_keys().collect());
    }
    let (_, meta) = c.prom("/api/v1/metadata", &[]);
    let meta = meta["data"].as_object().unwrap();
    assert!(cairn.len() > 60, "only {} families: {:?}", cairn.len(), cairn.keys());

    let mut problems = Vec::new();
    for (name, label_sets) in &cairn {
        let Some(ne_type) = reference.types.get(name) else {
            problems.push(format!("{name}: node_exporter has no such family"));
            continue;
        };
        match meta.get(name).and_then(|m| m[0]["type"].as_str()) {
            Some(t) if t == ne_type => {}
            other => problems.push(format!("{name}: type {other:?}, node_exporter {ne_type}")),
        }
        let help = meta.get(name).and_then(|m| m[0]["help"].as_str());
        if help != reference.helps.get(name).map(String::as_str) {
            problems.push(format!("{name}: help {help:?}, node_exporter {:?}", reference.helps.get(name)));
        }
        let ne_sets: BTreeSet<Vec<String>> = reference.of(name).iter().map(|s| s.1.keys().cloned().collect()).collect();
        for set in label_sets {
            if !ne_sets.contains(set) {
                problems.push(format!("{name}: labels {set:?}, node_exporter {ne_sets:?}"));
            }
        }
    }
    // What node_exporter reports from the sources Cairn reads, Cairn reports too.
    for name in reference.types.keys() {
        let ours = ["node_memory_", "node_filesystem_", "node_load", "node_pressure_", "node_hwmon_", "process_"]
            .iter()
            .any(|p| name.starts_with(p))
            // The netclass collector's carrier_* counters (from
            // /sys/class/net) are not implemented.
            || (name.starts_with("node_network_") && name.ends_with("_total") && !name.starts_with("node_network_carrier"))
            || [
                "node_cpu_seconds_total",
                "node_boot_time_seconds",
                "node_time_seconds",
                "node_uname_info",
                "node_os_info",
                "node_os_version",
                "node_context_switches_total",
                "node_forks_total",
                "node_intr_total",
                "node_procs_running",
                "node_procs_blocked",
                "node_thermal_zone_temp",
                "node_filefd_allocated",
                "node_entropy_available_bits",
                "node_disk_read_bytes_total",
            ]
            .contains(&name.as_str());
        if ours && !reference.of(name).is_empty() && !cairn.contains_key(name) {
            problems.push(format!("{name}: reported by node_exporter, missing in Cairn"));
        }
    }
    assert!(problems.is_empty(), "{} differences:\n{}", problems.len(), problems.join("\n"));

    // Values of gauges that are stable between two reads.
    let one = |q: &str| {
        let r = query(&c, &format!("{q}{{instance=\"ne-e2e\"}}"));
        assert_eq!(r.len(), 1, "{q}: {r:?}");
        r[0].1
    };
    for name in [
        "node_memory_MemTotal_bytes",
        "node_memory_SwapTotal_bytes",
        "node_filefd_maximum",
        "node_entropy_pool_size_bits",
    ] {
        if let Some(want) = reference.value(name, &[]) {
            assert_eq!(one(name), want, "{name}");
        }
    }
    let boot = one("node_boot_time_seconds");
    assert!((boot - reference.value("node_boot_time_seconds", &[]).unwrap()).abs() <= 1.0, "boot time {boot}");
    let cpus = |labels: Vec<BTreeMap<String, String>>| -> BTreeSet<String> {
        labels.into_iter().filter_map(|l| l.get("cpu").cloned()).collect()
    };
    let ours =
        cpus(query(&c, r#"node_cpu_seconds_total{instance="ne-e2e",mode="idle"}"#).into_iter().map(|r| r.0).collect());
    let theirs = cpus(reference.of("node_cpu_seconds_total").into_iter().map(|s| s.1.clone()).collect());
    assert_eq!(ours, theirs, "cpu numbers");
    // Same filesystems, same sizes and inode counts; same disks and NICs.
    for name in ["node_filesystem_size_bytes", "node_filesystem_files", "node_filesystem_readonly"] {
        let mut ours: Vec<(LabelMap, f64)> = query(&c, &format!("{name}{{instance=\"ne-e2e\"}}"));
        ours.sort_by(|a, b| a.0.cmp(&b.0));
        let mut theirs: Vec<(LabelMap, f64)> = reference.of(name).into_iter().map(|s| (s.1.clone(), s.2)).collect();
        theirs.sort_by(|a, b| a.0.cmp(&b.0));
        assert_eq!(ours, theirs, "{name}");
    }
    for (name, label) in [("node_disk_reads_completed_total", "device"), ("node_network_receive_bytes_total", "device")]
    {
        let ours: BTreeSet<String> = query(&c, &format!("{name}{{instance=\"ne-e2e\"}}"))
            .into_iter()
            .filter_map(|r| r.0.get(label).cloned())
            .collect();
        let theirs: BTreeSet<String> = reference.of(name).into_iter().filter_map(|s| s.1.get(label).cloned()).collect();
        assert_eq!(ours, theirs, "{name} {label}s");
    }
    for name in ["node_uname_info", "node_os_info", "node_os_version"] {
        let ours: Vec<(LabelMap, f64)> = query(&c, &format!("{name}{{instance=\"ne-e2e\"}}"));
        let theirs: Vec<(LabelMap, f64)> = reference.of(name).into_iter().map(|s| (s.1.clone(), s.2)).collect();
        assert_eq!(ours, theirs, "{name}");
    }
    c.stop();
}

#[test]
fn scrape_targets_through_cairn_up() {
    let tiny = MetricsTarget::start(|_| {
        "# HELP app_requests_total Requests served.\n# TYPE app_requests_total counter\napp_requests_total{code=\"200\",job=\"inner\"} 42\napp_temperature 21.5\n".to_string()
    });
    let ne = node_exporter_bin().map(NodeExporter::start);
    let closed = format!("127.0.0.1:{}", free_port());
    let mut extra = format!(
        "\n[[collector.scrape]]\njob = \"tiny\"\ntargets = [\"{}\"]\ninterval = \"1s\"\ntimeout = \"1s\"\nlabels = {{ env = \"e2e\" }}\n\n[[collector.scrape]]\njob = \"down\"\ntargets = [\"{closed}\"]\ninterval = \"1s\"\ntimeout = \"1s\"\n",
        tiny.addr
    );
    if let Some(ne) = &ne {
        let target = ne.url.trim_start_matches("http://").trim_end_matches("/metrics");
        extra.push_str(&format!(
            "\n[[collector.scrape]]\njob = \"ne\"\ntargets = [\"{target}\"]\ninterval = \"1s\"\ntimeout = \"1s\"\n"
        ));
    }
    let dir = tempfile::tempdir().unwrap();
    let c = start_cairn(dir.path(), &extra);
    let mut jobs = vec!["tiny", "down"];
    if ne.is_some() {
        jobs.push("ne");
    }
    for job in &jobs {
        wait_for(&format!("up{{job=\"{job}\"}}"), || !query(&c, &format!("up{{job=\"{job}\"}}")).is_empty());
    }
    let up = |job: &str| query(&c, &format!("up{{job=\"{job}\"}}"));
    assert_eq!(up("tiny"), [(BTreeMap::from([("env".to_string(), "e2e".to_string())]), 1.0)]);
    assert_eq!(up("down")[0].1, 0.0);
    let (_, v) = c.prom("/api/v1/query", &[("query", r#"app_requests_total{job="tiny"}"#)]);
    let r = &v["data"]["result"][0];
    assert_eq!(r["metric"]["instance"], tiny.addr.as_str());
    assert_eq!(r["metric"]["exported_job"], "inner", "honor_labels = false keeps the target's job as exported_job");
    assert_eq!(r["metric"]["env"], "e2e");
    assert_eq!(r["value"][1], "42");
    let samples = query(&c, r#"scrape_samples_scraped{job="tiny"}"#);
    assert_eq!(samples[0].1, 2.0);
    assert_eq!(query(&c, r#"scrape_duration_seconds{job="tiny"}"#).len(), 1);
    let (_, m) = c.prom("/api/v1/metadata", &[("metric", "app_requests_total")]);
    assert_eq!(m["data"]["app_requests_total"][0]["type"], "counter", "{m}");
    if ne.is_some() {
        assert_eq!(up("ne")[0].1, 1.0);
        wait_for("node_exporter's samples", || !query(&c, r#"node_load1{job="ne"}"#).is_empty());
        assert!(query(&c, r#"scrape_samples_scraped{job="ne"}"#)[0].1 > 300.0);
    }
    c.stop();
}
