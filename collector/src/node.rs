//! Node metrics with node_exporter 1.x names, units and label sets, read
//! from a configurable proc root:
//!
//! | source          | families |
//! |-----------------|----------|
//! | `/proc/stat`    | `node_cpu_seconds_total{cpu,mode}`, `node_boot_time_seconds`, `node_context_switches_total`, `node_intr_total`, `node_forks_total`, `node_procs_running`, `node_procs_blocked` |
//! | `/proc/meminfo` | `node_memory_<Field>_bytes` (fields with a `kB` unit) and `node_memory_<Field>` (unitless ones such as `HugePages_Total`), one per line of the file |
//! | `/proc/loadavg` | `node_load1`, `node_load5`, `node_load15` |
//! | clock           | `node_time_seconds` |
//!
//! Every series also carries `job="node"` and `instance=<host>`.
//!
//! Which parts use the `procfs` crate: USER_HZ comes from
//! `procfs::ticks_per_second`. `/proc/loadavg` is parsed here because
//! `procfs::LoadAverage` reads the values as f32 (`1.74` would be exported
//! as `1.7400000095367432`). `/proc/stat` and `/proc/meminfo` are parsed
//! here because procfs 0.18's
//! types lose what node_exporter exports: `KernelStats` keeps per-CPU times
//! as a list without the CPU number (wrong `cpu` labels once a CPU is
//! offline, since `/proc/stat` then skips it) and has no `intr` total, and
//! `Meminfo` is a fixed struct that drops fields it does not know
//! (`Balloon`, `Unaccepted`, …) whereas node_exporter exports every line.
//!
//! A file that cannot be read or parsed costs only its own families; a line
//! that does not parse is skipped. Nothing here panics on file content.
//! All reads are blocking: call [`NodeCollector::collect`] from a blocking
//! thread.

use std::io::Read;
use std::path::{Path, PathBuf};

use cairn_wire::{Labels, LabelsError, METRIC_NAME, SeriesSamples};

/// Node metrics could not be collected at all.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// Every source file failed; the first failure is reported.
    #[error("cannot read {path}: {reason}")]
    Read {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// A label set could not be built (an invariant of this module).
    #[error("invalid labels for node metric: {0}")]
    Labels(#[from] LabelsError),
}

/// Reads node metrics from a proc filesystem root.
#[derive(Debug)]
pub struct NodeCollector {
    proc_path: PathBuf,
    host: String,
    user_hz: f64,
    /// Sources that failed last time, so a persistent failure is logged once.
    failing: Vec<PathBuf>,
}

impl NodeCollector {
    /// A collector reading `<proc_path>/{stat,meminfo,loadavg}` and labelling
    /// series with `instance=<host>`.
    pub fn new(proc_path: impl Into<PathBuf>, host: impl Into<String>) -> Self {
        let hz = procfs::ticks_per_second();
        NodeCollector {
            proc_path: proc_path.into(),
            host: host.into(),
            user_hz: if hz == 0 { 100.0 } else { hz as f64 },
            failing: Vec::new(),
        }
    }

    /// Collects one set of samples, all stamped `ts_ms`. Returns whatever
    /// could be read; fails only when no source could be read.
    pub fn collect(&mut self, ts_ms: i64) -> Result<Vec<SeriesSamples>, NodeError> {
        let mut out = Vec::with_capacity(128);
        let mut first_err: Option<NodeError> = None;
        let mut ok_sources = 0;
        for (name, parse) in [
            ("stat", parse_stat as fn(&str, f64) -> Result<Vec<Metric>, String>),
            ("meminfo", |t: &str, _| Ok(parse_meminfo(t))),
            ("loadavg", |t: &str, _| parse_loadavg(t)),
        ] {
            let path = self.proc_path.join(name);
            match read_small(&path).and_then(|text| parse(&text, self.user_hz)) {
                Ok(metrics) => {
                    ok_sources += 1;
                    if let Some(i) = self.failing.iter().position(|p| p == &path) {
                        self.failing.swap_remove(i);
                        tracing::info!(path = %path.display(), "node metrics source readable again");
                    }
                    for m in metrics {
                        out.push(self.series(m, ts_ms)?);
                    }
                }
                Err(reason) => {
                    if !self.failing.contains(&path) {
                        tracing::warn!(path = %path.display(), %reason, "cannot collect node metrics from this file");
                        self.failing.push(path.clone());
                    }
                    first_err.get_or_insert(NodeError::Read { path, reason });
                }
            }
        }
        if ok_sources == 0
            && let Some(e) = first_err
        {
            return Err(e);
        }
        out.push(self.series(Metric::plain("node_time_seconds", ts_ms as f64 / 1000.0), ts_ms)?);
        Ok(out)
    }

    fn series(&self, m: Metric, ts_ms: i64) -> Result<SeriesSamples, NodeError> {
        let mut pairs: Vec<(&str, &str)> =
            vec![(METRIC_NAME, m.name.as_str()), ("job", "node"), ("instance", self.host.as_str())];
        if let Some((cpu, mode)) = &m.cpu {
            pairs.push(("cpu", cpu.as_str()));
            pairs.push(("mode", mode));
        }
        Ok(SeriesSamples { labels: Labels::from_pairs(pairs)?, samples: vec![(ts_ms, m.value)] })
    }
}

/// One parsed value before labelling.
#[derive(Debug, Clone, PartialEq)]
struct Metric {
    name: String,
    /// `(cpu, mode)` for `node_cpu_seconds_total`.
    cpu: Option<(String, &'static str)>,
    value: f64,
}

impl Metric {
    fn plain(name: &str, value: f64) -> Self {
        Metric { name: name.to_string(), cpu: None, value }
    }
}

/// Proc files are small; anything past 4 MiB is not a proc file we know.
const MAX_PROC_FILE: u64 = 4 << 20;

fn read_small(path: &Path) -> Result<String, String> {
    let f = std::fs::File::open(path).map_err(|e| e.to_string())?;
    let mut buf = Vec::with_capacity(16 << 10);
    f.take(MAX_PROC_FILE).read_to_end(&mut buf).map_err(|e| e.to_string())?;
    Ok(String::from_utf8_lossy(&buf).into_owned())
}

/// CPU modes of `/proc/stat` in column order, as node_exporter names them.
/// The guest columns that follow are not part of `node_cpu_seconds_total`.
const CPU_MODES: [&str; 8] = ["user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal"];

/// Parses `/proc/stat`.
fn parse_stat(text: &str, user_hz: f64) -> Result<Vec<Metric>, String> {
    let mut out = Vec::new();
    let mut saw_cpu = false;
    for line in text.lines() {
        let mut fields = line.split_ascii_whitespace();
        let Some(key) = fields.next() else { continue };
        let first = fields.next().and_then(|v| v.parse::<f64>().ok());
        if let Some(cpu) = key.strip_prefix("cpu") {
            // `cpu` alone is the total over all CPUs, which node_exporter does
            // not export in this family.
            if cpu.is_empty() || !cpu.bytes().all(|b| b.is_ascii_digit()) {
                continue;
            }
            let values = std::iter::once(first).chain(fields.map(|v| v.parse::<f64>().ok()));
            for (mode, ticks) in CPU_MODES.iter().zip(values) {
                let Some(ticks) = ticks else { break };
                out.push(Metric {
                    name: "node_cpu_seconds_total".into(),
                    cpu: Some((cpu.to_string(), mode)),
                    value: ticks / user_hz,
                });
                saw_cpu = true;
            }
            continue;
        }
        let name = match key {
            "btime" => "node_boot_time_seconds",
            "ctxt" => "node_context_switches_total",
            // The first number of the `intr` line is the total.
            "intr" => "node_intr_total",
            "processes" => "node_forks_total",
            "procs_running" => "node_procs_running",
            "procs_blocked" => "node_procs_blocked",
            _ => continue,
        };
        if let Some(v) = first {
            out.push(Metric::plain(name, v));
        }
    }
    if !saw_cpu && out.is_empty() {
        return Err("no cpu lines or counters found; not a /proc/stat file".into());
    }
    Ok(out)
}

/// Parses `/proc/meminfo` the way node_exporter does: `Active(anon):  12 kB`
/// becomes `node_memory_Active_anon_bytes` = 12288, and a line without a unit
/// (`HugePages_Total:  0`) becomes `node_memory_HugePages_Total`. Lines that
/// do not parse are skipped.
fn parse_meminfo(text: &str) -> Vec<Metric> {
    let mut out = Vec::new();
    for line in text.lines() {
        let mut parts = line.split_ascii_whitespace();
        let (Some(key), Some(value)) = (parts.next(), parts.next()) else { continue };
        let Some(key) = key.strip_suffix(':') else { continue };
        let Ok(mut value) = value.parse::<f64>() else { continue };
        let mut name = String::with_capacity(key.len() + 20);
        name.push_str("node_memory_");
        // node_exporter: `\((.*)\)` → `_$1`, so `Active(anon)` → `Active_anon`.
        for c in key.chars() {
            match c {
                '(' => name.push('_'),
                ')' => {}
                c if c.is_ascii_alphanumeric() || c == '_' => name.push(c),
                _ => name.push('_'),
            }
        }
        match parts.next() {
            None => {}
            // The kernel writes "kB" but means KiB.
            Some(_unit) => {
                value *= 1024.0;
                name.push_str("_bytes");
            }
        }
        if parts.next().is_some() || key.is_empty() {
            continue;
        }
        out.push(Metric { name, cpu: None, value });
    }
    out
}

/// Parses the first three fields of `/proc/loadavg` as f64, as
/// node_exporter does (`procfs::LoadAverage` reads them as f32, which turns
/// `1.74` into `1.7400000095367432`).
fn parse_loadavg(text: &str) -> Result<Vec<Metric>, String> {
    let mut fields = text.split_ascii_whitespace();
    let mut next = |name: &'static str| -> Result<Metric, String> {
        let f = fields.next().ok_or_else(|| format!("loadavg: missing field for {name}"))?;
        let v: f64 = f.parse().map_err(|_| format!("loadavg: {f:?} is not a number"))?;
        Ok(Metric::plain(name, v))
    };
    Ok(vec![next("node_load1")?, next("node_load5")?, next("node_load15")?])
}

/// Type and help text of the fixed families, as node_exporter 1.5 reports
/// them: `(name, "counter" | "gauge", help)`. Memory families are gauges
/// with help `Memory information field <Field>.` (see [`memory_help`]).
pub fn metric_metadata() -> Vec<(&'static str, &'static str, &'static str)> {
    vec![
        ("node_cpu_seconds_total", "counter", "Seconds the CPUs spent in each mode."),
        ("node_boot_time_seconds", "gauge", "Node boot time, in unixtime."),
        ("node_context_switches_total", "counter", "Total number of context switches."),
        ("node_intr_total", "counter", "Total number of interrupts serviced."),
        ("node_forks_total", "counter", "Total number of forks."),
        ("node_procs_running", "gauge", "Number of processes in runnable state."),
        ("node_procs_blocked", "gauge", "Number of processes blocked waiting for I/O to complete."),
        ("node_load1", "gauge", "1m load average."),
        ("node_load5", "gauge", "5m load average."),
        ("node_load15", "gauge", "15m load average."),
        ("node_time_seconds", "gauge", "System time in seconds since epoch (1970)."),
    ]
}

/// node_exporter's help text of a `node_memory_*` family.
pub fn memory_help(family: &str) -> String {
    format!("Memory information field {}.", family.strip_prefix("node_memory_").unwrap_or(family))
}

#[cfg(test)]
mod tests {
    use super::*;

    const STAT: &str = "cpu  2255 34 2290 22625563 6290 127 456 0 0 0
cpu0 1132 34 1441 11311718 3675 127 438 77 5 6
cpu2 1123 0 849 11313845 2614 0 18 0 0 0
intr 114930548 113199788 3 0 5 263 0 4 [...]
ctxt 1990473
btime 1062191376
processes 2915
procs_running 1
procs_blocked 0
softirq 229245 0 1 2 3
";

    const MEMINFO: &str = "MemTotal:       24684084 kB
MemFree:        19563520 kB
MemAvailable:   23607812 kB
Active(anon):       1556 kB
Inactive(file):  3019864 kB
HugePages_Total:       0
HugePages_Free:        0
Hugepagesize:       2048 kB
Balloon:               0 kB
garbage line
Broken:   x kB
";

    const LOADAVG: &str = "3.01 2.26 1.02 2/345 12345\n";

    fn fixture() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("stat"), STAT).unwrap();
        std::fs::write(dir.path().join("meminfo"), MEMINFO).unwrap();
        std::fs::write(dir.path().join("loadavg"), LOADAVG).unwrap();
        dir
    }

    fn find<'a>(out: &'a [SeriesSamples], name: &str, extra: &[(&str, &str)]) -> &'a SeriesSamples {
        out.iter()
            .find(|s| s.labels.get(METRIC_NAME) == Some(name) && extra.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
            .unwrap_or_else(|| panic!("{name} {extra:?} missing"))
    }

    #[test]
    fn collects_node_exporter_families() {
        let dir = fixture();
        let mut c = NodeCollector::new(dir.path(), "box1");
        let hz = c.user_hz;
        let out = c.collect(1_700_000_000_123).unwrap();
        for s in &out {
            assert_eq!(s.labels.get("job"), Some("node"));
            assert_eq!(s.labels.get("instance"), Some("box1"));
            assert_eq!(s.samples.len(), 1);
            assert_eq!(s.samples[0].0, 1_700_000_000_123);
        }

        // CPU: 8 modes per CPU, numbered as in the file (cpu1 is offline), no total, no guest.
        let cpu: Vec<_> = out.iter().filter(|s| s.labels.get(METRIC_NAME) == Some("node_cpu_seconds_total")).collect();
        assert_eq!(cpu.len(), 16);
        assert!(cpu.iter().all(|s| s.labels.len() == 5));
        assert_eq!(find(&out, "node_cpu_seconds_total", &[("cpu", "0"), ("mode", "user")]).samples[0].1, 1132.0 / hz);
        assert_eq!(find(&out, "node_cpu_seconds_total", &[("cpu", "0"), ("mode", "steal")]).samples[0].1, 77.0 / hz);
        assert_eq!(
            find(&out, "node_cpu_seconds_total", &[("cpu", "2"), ("mode", "idle")]).samples[0].1,
            11313845.0 / hz
        );
        assert!(!cpu.iter().any(|s| s.labels.get("cpu") == Some("1")));
        assert!(!cpu.iter().any(|s| s.labels.get("mode") == Some("guest")));

        let v = |name: &str| find(&out, name, &[]).samples[0].1;
        assert_eq!(v("node_intr_total"), 114930548.0);
        assert_eq!(v("node_context_switches_total"), 1990473.0);
        assert_eq!(v("node_boot_time_seconds"), 1062191376.0);
        assert_eq!(v("node_forks_total"), 2915.0);
        assert_eq!(v("node_procs_running"), 1.0);
        assert_eq!(v("node_procs_blocked"), 0.0);

        assert_eq!(v("node_memory_MemTotal_bytes"), 24684084.0 * 1024.0);
        assert_eq!(v("node_memory_MemAvailable_bytes"), 23607812.0 * 1024.0);
        assert_eq!(v("node_memory_Active_anon_bytes"), 1556.0 * 1024.0);
        assert_eq!(v("node_memory_Inactive_file_bytes"), 3019864.0 * 1024.0);
        assert_eq!(v("node_memory_HugePages_Total"), 0.0);
        assert_eq!(v("node_memory_Hugepagesize_bytes"), 2048.0 * 1024.0);
        assert_eq!(v("node_memory_Balloon_bytes"), 0.0);
        assert!(!out.iter().any(|s| s.labels.get(METRIC_NAME).is_some_and(|n| n.contains("Broken"))));

        assert_eq!(v("node_load1"), 3.01);
        assert_eq!(v("node_load5"), 2.26);
        assert_eq!(v("node_load15"), 1.02);
        assert_eq!(v("node_time_seconds"), 1_700_000_000.123);

        // Exactly one series per label set.
        let mut labels: Vec<_> = out.iter().map(|s| s.labels.clone()).collect();
        labels.sort();
        labels.dedup();
        assert_eq!(labels.len(), out.len());
    }

    #[test]
    fn names_match_node_exporter_exposition() {
        // Every family we emit from the fixture exists in node_exporter 1.5.0's output.
        let Ok(reference) = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../shared/datasets/node-exporter/node-exporter-1.5.0.prom"
        )) else {
            return; // dataset not available in this checkout
        };
        let dir = fixture();
        let out = NodeCollector::new(dir.path(), "h").collect(0).unwrap();
        for s in &out {
            let name = s.labels.get(METRIC_NAME).unwrap();
            assert!(reference.contains(&format!("# TYPE {name} ")), "{name} is not a node_exporter 1.5 family");
        }
        for (name, typ, help) in metric_metadata() {
            assert!(reference.contains(&format!("# TYPE {name} {typ}\n")), "{name} {typ}");
            assert!(reference.contains(&format!("# HELP {name} {help}\n")), "{name} help");
        }
        assert!(reference.contains(&format!(
            "# HELP node_memory_Active_anon_bytes {}\n",
            memory_help("node_memory_Active_anon_bytes")
        )));
    }

    #[test]
    fn missing_or_garbage_files_do_not_panic() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = NodeCollector::new(dir.path(), "h");
        assert!(matches!(c.collect(0), Err(NodeError::Read { .. })));

        std::fs::write(dir.path().join("loadavg"), "\u{0}\u{ff}garbage").unwrap();
        std::fs::write(dir.path().join("stat"), "cpu0 x y\nintr\nctxt abc\n").unwrap();
        std::fs::write(dir.path().join("meminfo"), [0xff, 0xfe, b':', b'\n', b'a', b':', b' ', b'1']).unwrap();
        // meminfo yields one odd-but-valid field; the others fail without panicking.
        let out = c.collect(0).unwrap();
        assert!(out.iter().any(|s| s.labels.get(METRIC_NAME) == Some("node_memory_a")));
    }

    #[test]
    fn reads_the_real_proc_when_present() {
        if !Path::new("/proc/stat").exists() {
            return;
        }
        let out = NodeCollector::new("/proc", "h").collect(0).unwrap();
        let names: Vec<_> = out.iter().filter_map(|s| s.labels.get(METRIC_NAME)).collect();
        for want in ["node_cpu_seconds_total", "node_memory_MemTotal_bytes", "node_load1", "node_boot_time_seconds"] {
            assert!(names.contains(&want), "{want} missing");
        }
    }
}
