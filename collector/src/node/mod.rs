//! Node metrics with node_exporter 1.5's names, types, units and label
//! sets, read from configurable proc, sys and root filesystem paths (so a
//! containerised collector can read the host's through `/host/proc`,
//! `/host/sys`, `/host/root`):
//!
//! | source          | families |
//! |-----------------|----------|
//! | `<proc>/stat`    | `node_cpu_seconds_total{cpu,mode}`, `node_boot_time_seconds`, `node_context_switches_total`, `node_intr_total`, `node_forks_total`, `node_procs_running`, `node_procs_blocked` |
//! | `<proc>/meminfo` | `node_memory_<Field>_bytes` (fields with a `kB` unit) and `node_memory_<Field>` (unitless ones such as `HugePages_Total`), one per line of the file |
//! | `<proc>/loadavg` | `node_load1`, `node_load5`, `node_load15` |
//! | `<proc>/net/dev`, `<sys>/class/net/*/statistics/rx_nohandler` | `node_network_<column>_total{device}`, `node_network_receive_nohandler_total{device}` (not `lo`) |
//! | `<proc>/diskstats` | `node_disk_*{device}` (partitions excluded as node_exporter does) |
//! | `<proc>/pressure/*` | `node_pressure_*_seconds_total` |
//! | `<proc>/sys/fs/file-nr`, `…/kernel/random/*` | `node_filefd_*`, `node_entropy_*` |
//! | `<proc>/1/mounts` + `statfs` under `<rootfs>` | `node_filesystem_*{device,fstype,mountpoint}` ([`filesystem`]) |
//! | `<sys>/class/hwmon` | `node_hwmon_*{chip,sensor}` ([`hwmon`]) |
//! | `<sys>/class/thermal` | `node_thermal_zone_temp{zone,type}`, `node_cooling_device_*{name,type}` |
//! | `uname(2)`, `<rootfs>/etc/os-release` | `node_uname_info`, `node_os_info`, `node_os_version` ([`system`]) |
//! | `/proc/self` | the collector's own `process_*` |
//! | clock           | `node_time_seconds` |
//!
//! Every series also carries `job="node"` and `instance=<host>`. Uptime is
//! `node_time_seconds - node_boot_time_seconds`, as with node_exporter.
//! [`NodeCollector::metadata`] gives each emitted family's type and help
//! (shipped as remote_write metadata, so `/api/v1/metadata` knows them).
//!
//! Which parts use the `procfs` crate: USER_HZ comes from
//! `procfs::ticks_per_second`, and the `process_*` figures from
//! `procfs::process::Process::myself`. `/proc/loadavg` is parsed here because
//! `procfs::LoadAverage` reads the values as f32 (`1.74` would be exported
//! as `1.7400000095367432`). `/proc/stat` and `/proc/meminfo` are parsed
//! here because procfs 0.18's
//! types lose what node_exporter exports: `KernelStats` keeps per-CPU times
//! as a list without the CPU number (wrong `cpu` labels once a CPU is
//! offline, since `/proc/stat` then skips it) and has no `intr` total, and
//! `Meminfo` is a fixed struct that drops fields it does not know
//! (`Balloon`, `Unaccepted`, …) whereas node_exporter exports every line.
//! `statfs(2)` and `uname(2)` come from `rustix`.
//!
//! A file that cannot be read or parsed costs only its own families; a line
//! that does not parse is skipped. Nothing here panics on file content.
//! All reads are blocking: call [`NodeCollector::collect`] from a blocking
//! thread.

pub mod filesystem;
pub mod hwmon;
pub mod system;

use std::collections::{BTreeMap, BTreeSet};
use std::io::Read;
use std::path::{Path, PathBuf};

use cairn_wire::proto::MetricMetadata;
use cairn_wire::{Labels, LabelsError, METRIC_NAME, SeriesSamples};

use crate::config::NodeConfig;

/// Node metrics could not be collected at all.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// Every proc source file failed; the first failure is reported.
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
    /// An exclude pattern of the configuration is not a valid regex.
    #[error("node.{key}: invalid regex: {reason}")]
    Pattern {
        /// `mount_points_exclude` or `fs_types_exclude`.
        key: &'static str,
        /// The regex error.
        reason: String,
    },
}

/// Type and help of families whose names depend on the hardware (hwmon),
/// recorded as they are first produced. Bounded by the sensors present.
#[derive(Debug, Default)]
pub(crate) struct Dynamic {
    map: BTreeMap<String, (&'static str, String)>,
}

impl Dynamic {
    /// Records `name`'s type and help unless already known.
    pub(crate) fn note(&mut self, name: &str, kind: &'static str, help: &dyn Fn() -> String) {
        if !self.map.contains_key(name) {
            self.map.insert(name.to_string(), (kind, help()));
        }
    }

    /// The type and help of `name`, if recorded.
    pub(crate) fn get(&self, name: &str) -> Option<(&'static str, &str)> {
        self.map.get(name).map(|(k, h)| (*k, h.as_str()))
    }
}

/// Reads node metrics from the proc, sys and root filesystems.
#[derive(Debug)]
pub struct NodeCollector {
    proc_path: PathBuf,
    sys_path: PathBuf,
    rootfs_path: PathBuf,
    fs_filter: filesystem::FsFilter,
    host: String,
    user_hz: f64,
    boot_time: Option<f64>,
    /// Sources that failed last time, so a persistent failure is logged once.
    failing: Vec<PathBuf>,
    dynamic: Dynamic,
    /// Every family emitted so far, for [`NodeCollector::metadata`].
    families: BTreeSet<String>,
}

impl NodeCollector {
    /// A collector reading the paths of `cfg` and labelling series with
    /// `instance=<host>`. Fails only on an invalid exclude regex.
    pub fn new(cfg: &NodeConfig, host: impl Into<String>) -> Result<Self, NodeError> {
        let re = |key: &'static str, pat: &str| {
            regex::Regex::new(pat).map_err(|e| NodeError::Pattern { key, reason: e.to_string() })
        };
        let hz = procfs::ticks_per_second();
        Ok(NodeCollector {
            proc_path: cfg.proc_path.clone(),
            sys_path: cfg.sys_path.clone(),
            rootfs_path: cfg.rootfs_path.clone(),
            fs_filter: filesystem::FsFilter {
                mount_points_exclude: re("mount_points_exclude", &cfg.mount_points_exclude)?,
                fs_types_exclude: re("fs_types_exclude", &cfg.fs_types_exclude)?,
            },
            host: host.into(),
            user_hz: if hz == 0 { 100.0 } else { hz as f64 },
            // The collector's own start time is relative to the boot of the
            // kernel it runs on: the real /proc, not the configured root.
            boot_time: procfs::boot_time_secs().ok().map(|b| b as f64),
            failing: Vec::new(),
            dynamic: Dynamic::default(),
            families: BTreeSet::new(),
        })
    }

    /// Collects one set of samples, all stamped `ts_ms`. Returns whatever
    /// could be read; fails only when no proc source could be read (a wrong
    /// `proc_path`).
    pub fn collect(&mut self, ts_ms: i64) -> Result<Vec<SeriesSamples>, NodeError> {
        let mut out = Vec::with_capacity(256);
        let mut first_err: Option<NodeError> = None;
        let mut ok_sources = 0;
        for (name, parse) in [
            ("stat", parse_stat as fn(&str, f64) -> Result<Vec<Metric>, String>),
            ("meminfo", |t: &str, _| Ok(parse_meminfo(t))),
            ("loadavg", |t: &str, _| parse_loadavg(t)),
            ("net/dev", |t: &str, _| parse_netdev(t)),
            ("diskstats", |t: &str, _| parse_diskstats(t)),
            ("pressure/cpu", |t: &str, _| parse_pressure("cpu", t)),
            ("pressure/memory", |t: &str, _| parse_pressure("memory", t)),
            ("pressure/io", |t: &str, _| parse_pressure("io", t)),
            ("sys/fs/file-nr", |t: &str, _| parse_filefd(t)),
            ("sys/kernel/random/entropy_avail", |t: &str, _| parse_single("node_entropy_available_bits", t)),
            ("sys/kernel/random/poolsize", |t: &str, _| parse_single("node_entropy_pool_size_bits", t)),
        ] {
            let path = self.proc_path.join(name);
            let res = read_small(&path).and_then(|text| parse(&text, self.user_hz));
            match self.take(path, res, ts_ms, &mut out)? {
                Ok(()) => ok_sources += 1,
                Err(e) => {
                    first_err.get_or_insert(e);
                }
            }
        }
        if ok_sources == 0
            && let Some(e) = first_err
        {
            return Err(e);
        }
        let res = filesystem::collect(&self.proc_path, &self.rootfs_path, &self.fs_filter);
        let _ = self.take(self.proc_path.join("1/mounts"), res, ts_ms, &mut out)?;
        let res = collect_nohandler(&self.sys_path);
        let _ = self.take(self.sys_path.join("class/net"), res, ts_ms, &mut out)?;
        let res = hwmon::collect_hwmon(&self.sys_path, &mut self.dynamic);
        let _ = self.take(self.sys_path.join("class/hwmon"), res, ts_ms, &mut out)?;
        let res = hwmon::collect_thermal(&self.sys_path);
        let _ = self.take(self.sys_path.join("class/thermal"), res, ts_ms, &mut out)?;
        let res = system::os_release(&self.rootfs_path);
        let _ = self.take(self.rootfs_path.join("etc/os-release"), res, ts_ms, &mut out)?;
        let _ = self.take(PathBuf::from("uname(2)"), Ok(system::uname()), ts_ms, &mut out)?;
        let res = system::process(self.user_hz, self.boot_time);
        let _ = self.take(PathBuf::from("/proc/self"), res, ts_ms, &mut out)?;
        let now = Metric::plain("node_time_seconds", ts_ms as f64 / 1000.0);
        let _ = self.take(PathBuf::from("clock"), Ok(vec![now]), ts_ms, &mut out)?;
        Ok(out)
    }

    /// Adds a source's metrics to `out` (or logs its failure once).
    fn take(
        &mut self,
        path: PathBuf,
        res: Result<Vec<Metric>, String>,
        ts_ms: i64,
        out: &mut Vec<SeriesSamples>,
    ) -> Result<Result<(), NodeError>, NodeError> {
        match res {
            Ok(metrics) => {
                if let Some(i) = self.failing.iter().position(|p| p == &path) {
                    self.failing.swap_remove(i);
                    tracing::info!(path = %path.display(), "node metrics source readable again");
                }
                for m in metrics {
                    if !self.families.contains(m.name.as_str()) {
                        self.families.insert(m.name.clone());
                    }
                    out.push(self.series(m, ts_ms)?);
                }
                Ok(Ok(()))
            }
            Err(reason) => {
                if !self.failing.contains(&path) {
                    tracing::warn!(path = %path.display(), %reason, "cannot collect node metrics from this source");
                    self.failing.push(path.clone());
                }
                Ok(Err(NodeError::Read { path, reason }))
            }
        }
    }

    /// Type and help of every family emitted so far, as remote_write
    /// metadata (node_exporter 1.5's texts).
    pub fn metadata(&self) -> Vec<MetricMetadata> {
        self.families
            .iter()
            .filter_map(|name| {
                let (kind, help) = family_meta(name)
                    .or_else(|| self.dynamic.get(name).map(|(k, h)| (k, std::borrow::Cow::Owned(h.to_string()))))?;
                Some(MetricMetadata {
                    r#type: metric_type_code(kind),
                    metric_family_name: name.clone(),
                    help: help.into_owned(),
                    unit: String::new(),
                })
            })
            .collect()
    }

    fn series(&self, m: Metric, ts_ms: i64) -> Result<SeriesSamples, NodeError> {
        let mut pairs: Vec<(&str, &str)> = Vec::with_capacity(3 + m.labels.len());
        pairs.extend([(METRIC_NAME, m.name.as_str()), ("job", "node"), ("instance", self.host.as_str())]);
        pairs.extend(m.labels.iter().map(|(k, v)| (*k, v.as_str())));
        Ok(SeriesSamples { labels: Labels::from_pairs(pairs)?, samples: vec![(ts_ms, m.value)] })
    }
}

/// The remote_write `MetricMetadata.type` code of a Prometheus type name.
pub fn metric_type_code(kind: &str) -> i32 {
    match kind {
        "counter" => 1,
        "gauge" => 2,
        "histogram" => 3,
        "gaugehistogram" => 4,
        "summary" => 5,
        "info" => 6,
        "stateset" => 7,
        _ => 0,
    }
}

/// Type and help of a family with a fixed or rule-derived name (everything
/// but hwmon), as node_exporter 1.5 reports it.
pub fn family_meta(name: &str) -> Option<(&'static str, std::borrow::Cow<'static, str>)> {
    use std::borrow::Cow;
    if let Some((_, kind, help)) = metric_metadata().into_iter().find(|(n, _, _)| *n == name) {
        return Some((kind, Cow::Borrowed(help)));
    }
    if name.starts_with("node_memory_") {
        return Some(("gauge", Cow::Owned(memory_help(name))));
    }
    if name.starts_with("node_network_") && name.ends_with("_total") {
        return Some(("counter", Cow::Owned(network_help(name))));
    }
    None
}

/// One parsed value before labelling.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Metric {
    name: String,
    /// Labels besides `__name__`, `job` and `instance` (`cpu`/`mode`, `device`).
    labels: Vec<(&'static str, String)>,
    value: f64,
}

impl Metric {
    fn plain(name: &str, value: f64) -> Self {
        Metric { name: name.to_string(), labels: Vec::new(), value }
    }

    fn device(name: String, device: &str, value: f64) -> Self {
        Metric { name, labels: vec![("device", device.to_string())], value }
    }
}

/// Proc files are small; anything past 4 MiB is not a proc file we know.
const MAX_PROC_FILE: u64 = 4 << 20;

pub(crate) fn read_small(path: &Path) -> Result<String, String> {
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
                    labels: vec![("cpu", cpu.to_string()), ("mode", (*mode).to_string())],
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
        out.push(Metric { name, labels: Vec::new(), value });
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

/// `/proc/net/dev` columns as node_exporter names them.
const NETDEV_COLUMNS: [&str; 16] = [
    "receive_bytes",
    "receive_packets",
    "receive_errs",
    "receive_drop",
    "receive_fifo",
    "receive_frame",
    "receive_compressed",
    "receive_multicast",
    "transmit_bytes",
    "transmit_packets",
    "transmit_errs",
    "transmit_drop",
    "transmit_fifo",
    "transmit_colls",
    "transmit_carrier",
    "transmit_compressed",
];

/// Parses `/proc/net/dev` into `node_network_<column>_total{device}`,
/// leaving out `lo` as node_exporter 1.5 does.
fn parse_netdev(text: &str) -> Result<Vec<Metric>, String> {
    let mut out = Vec::new();
    for line in text.lines().skip(2) {
        let Some((dev, rest)) = line.split_once(':') else { continue };
        let dev = dev.trim();
        if dev.is_empty() || dev == "lo" {
            continue;
        }
        for (col, v) in NETDEV_COLUMNS.iter().zip(rest.split_ascii_whitespace()) {
            if let Ok(v) = v.parse::<f64>() {
                out.push(Metric::device(format!("node_network_{col}_total"), dev, v));
            }
        }
    }
    if out.is_empty() && !text.contains('|') {
        return Err("not a /proc/net/dev file".into());
    }
    Ok(out)
}

/// `node_network_receive_nohandler_total{device}` from
/// `<sys>/class/net/<device>/statistics/rx_nohandler` (node_exporter 1.5
/// reads it over netlink beside the `/proc/net/dev` columns), `lo` left out.
fn collect_nohandler(sys: &Path) -> Result<Vec<Metric>, String> {
    let entries = match std::fs::read_dir(sys.join("class/net")) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e.to_string()),
    };
    let mut devs: Vec<String> = entries.filter_map(|e| e.ok()?.file_name().into_string().ok()).collect();
    devs.sort();
    let mut out = Vec::new();
    for dev in devs.iter().filter(|d| *d != "lo") {
        let path = sys.join("class/net").join(dev).join("statistics/rx_nohandler");
        if let Some(v) = read_small(&path).ok().and_then(|t| t.trim().parse::<f64>().ok()) {
            out.push(Metric::device("node_network_receive_nohandler_total".into(), dev, v));
        }
    }
    Ok(out)
}

/// node_exporter 1.5's default `--collector.diskstats.device-exclude`:
/// `^(ram|loop|fd|(h|s|v|xv)d[a-z]|nvme\d+n\d+p)\d+$` (whole disks stay,
/// partitions, RAM disks and loop devices go).
fn disk_excluded(dev: &str) -> bool {
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    for p in ["ram", "loop", "fd"] {
        if dev.strip_prefix(p).is_some_and(digits) {
            return true;
        }
    }
    for p in ["hd", "sd", "vd", "xvd"] {
        if let Some(rest) = dev.strip_prefix(p) {
            let mut chars = rest.chars();
            if chars.next().is_some_and(|c| c.is_ascii_lowercase()) && digits(chars.as_str()) {
                return true;
            }
        }
    }
    if let Some(rest) = dev.strip_prefix("nvme")
        && let Some((a, b)) = rest.split_once('n')
        && let Some((c, d)) = b.split_once('p')
    {
        return digits(a) && digits(c) && digits(d);
    }
    false
}

/// Parses `/proc/diskstats` into node_exporter's `node_disk_*` families
/// (sectors are 512 bytes, times milliseconds).
fn parse_diskstats(text: &str) -> Result<Vec<Metric>, String> {
    // (column after the device name, family, scale)
    const COLS: [(usize, &str, f64); 17] = [
        (0, "node_disk_reads_completed_total", 1.0),
        (1, "node_disk_reads_merged_total", 1.0),
        (2, "node_disk_read_bytes_total", 512.0),
        (3, "node_disk_read_time_seconds_total", 0.001),
        (4, "node_disk_writes_completed_total", 1.0),
        (5, "node_disk_writes_merged_total", 1.0),
        (6, "node_disk_written_bytes_total", 512.0),
        (7, "node_disk_write_time_seconds_total", 0.001),
        (8, "node_disk_io_now", 1.0),
        (9, "node_disk_io_time_seconds_total", 0.001),
        (10, "node_disk_io_time_weighted_seconds_total", 0.001),
        (11, "node_disk_discards_completed_total", 1.0),
        (12, "node_disk_discards_merged_total", 1.0),
        (13, "node_disk_discarded_sectors_total", 1.0),
        (14, "node_disk_discard_time_seconds_total", 0.001),
        (15, "node_disk_flush_requests_total", 1.0),
        (16, "node_disk_flush_requests_time_seconds_total", 0.001),
    ];
    let mut out = Vec::new();
    let mut lines = 0;
    for line in text.lines() {
        let f: Vec<&str> = line.split_ascii_whitespace().collect();
        if f.len() < 14 {
            continue;
        }
        lines += 1;
        let dev = f[2];
        if disk_excluded(dev) {
            continue;
        }
        for (i, name, scale) in COLS {
            if let Some(v) = f.get(3 + i).and_then(|v| v.parse::<f64>().ok()) {
                out.push(Metric::device(name.to_string(), dev, v * scale));
            }
        }
    }
    if lines == 0 {
        return Err("not a /proc/diskstats file".into());
    }
    Ok(out)
}

/// Parses `/proc/pressure/<resource>` (PSI): `some … total=<µs>` is the
/// waiting time, `full … total=<µs>` the stalled time (not exported for cpu,
/// as in node_exporter 1.5).
fn parse_pressure(resource: &str, text: &str) -> Result<Vec<Metric>, String> {
    let mut out = Vec::new();
    for line in text.lines() {
        let mut f = line.split_ascii_whitespace();
        let kind = match f.next() {
            Some("some") => "waiting",
            Some("full") if resource != "cpu" => "stalled",
            _ => continue,
        };
        let total = f.find_map(|kv| kv.strip_prefix("total=")).and_then(|v| v.parse::<f64>().ok());
        if let Some(us) = total {
            out.push(Metric::plain(&format!("node_pressure_{resource}_{kind}_seconds_total"), us / 1e6));
        }
    }
    if out.is_empty() {
        return Err(format!("no PSI totals in pressure/{resource}"));
    }
    Ok(out)
}

/// Parses `/proc/sys/fs/file-nr` (`allocated unused maximum`).
fn parse_filefd(text: &str) -> Result<Vec<Metric>, String> {
    let f: Vec<f64> = text.split_ascii_whitespace().filter_map(|v| v.parse().ok()).collect();
    match f.as_slice() {
        [allocated, _, maximum, ..] => {
            Ok(vec![Metric::plain("node_filefd_allocated", *allocated), Metric::plain("node_filefd_maximum", *maximum)])
        }
        _ => Err("file-nr: expected three numbers".into()),
    }
}

/// Parses a file holding one number.
fn parse_single(name: &str, text: &str) -> Result<Vec<Metric>, String> {
    let v: f64 = text.trim().parse().map_err(|_| format!("{name}: {:?} is not a number", text.trim()))?;
    Ok(vec![Metric::plain(name, v)])
}

/// Type and help text of the fixed families, as node_exporter 1.5 reports
/// them: `(name, "counter" | "gauge", help)`. Memory families are gauges
/// with help `Memory information field <Field>.` (see [`memory_help`]).
pub fn metric_metadata() -> Vec<(&'static str, &'static str, &'static str)> {
    let mut v = fixed_metadata();
    v.extend(filesystem::METADATA);
    v.extend(hwmon::THERMAL_METADATA);
    v.extend(system::METADATA);
    v
}

fn fixed_metadata() -> Vec<(&'static str, &'static str, &'static str)> {
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
        ("node_disk_reads_completed_total", "counter", "The total number of reads completed successfully."),
        ("node_disk_reads_merged_total", "counter", "The total number of reads merged."),
        ("node_disk_read_bytes_total", "counter", "The total number of bytes read successfully."),
        ("node_disk_read_time_seconds_total", "counter", "The total number of seconds spent by all reads."),
        ("node_disk_writes_completed_total", "counter", "The total number of writes completed successfully."),
        ("node_disk_writes_merged_total", "counter", "The number of writes merged."),
        ("node_disk_written_bytes_total", "counter", "The total number of bytes written successfully."),
        ("node_disk_write_time_seconds_total", "counter", "This is the total number of seconds spent by all writes."),
        ("node_disk_io_now", "gauge", "The number of I/Os currently in progress."),
        ("node_disk_io_time_seconds_total", "counter", "Total seconds spent doing I/Os."),
        ("node_disk_io_time_weighted_seconds_total", "counter", "The weighted # of seconds spent doing I/Os."),
        ("node_disk_discards_completed_total", "counter", "The total number of discards completed successfully."),
        ("node_disk_discards_merged_total", "counter", "The total number of discards merged."),
        ("node_disk_discarded_sectors_total", "counter", "The total number of sectors discarded successfully."),
        (
            "node_disk_discard_time_seconds_total",
            "counter",
            "This is the total number of seconds spent by all discards.",
        ),
        ("node_disk_flush_requests_total", "counter", "The total number of flush requests completed successfully"),
        (
            "node_disk_flush_requests_time_seconds_total",
            "counter",
            "This is the total number of seconds spent by all flush requests.",
        ),
        (
            "node_pressure_cpu_waiting_seconds_total",
            "counter",
            "Total time in seconds that processes have waited for CPU time",
        ),
        (
            "node_pressure_memory_waiting_seconds_total",
            "counter",
            "Total time in seconds that processes have waited for memory",
        ),
        (
            "node_pressure_memory_stalled_seconds_total",
            "counter",
            "Total time in seconds no process could make progress due to memory congestion",
        ),
        (
            "node_pressure_io_waiting_seconds_total",
            "counter",
            "Total time in seconds that processes have waited due to IO congestion",
        ),
        (
            "node_pressure_io_stalled_seconds_total",
            "counter",
            "Total time in seconds no process could make progress due to IO congestion",
        ),
        ("node_filefd_allocated", "gauge", "File descriptor statistics: allocated."),
        ("node_filefd_maximum", "gauge", "File descriptor statistics: maximum."),
        ("node_entropy_available_bits", "gauge", "Bits of available entropy."),
        ("node_entropy_pool_size_bits", "gauge", "Bits of entropy pool."),
    ]
}

/// node_exporter's help text of a `node_network_*_total` family.
pub fn network_help(family: &str) -> String {
    let col = family.strip_prefix("node_network_").and_then(|f| f.strip_suffix("_total")).unwrap_or(family);
    format!("Network device statistic {col}.")
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

    /// A collector reading only the fixture directory.
    fn nc(dir: &Path, host: &str) -> NodeCollector {
        let cfg = NodeConfig {
            proc_path: dir.into(),
            sys_path: dir.join("no-sys"),
            rootfs_path: dir.into(),
            ..NodeConfig::default()
        };
        NodeCollector::new(&cfg, host).unwrap()
    }

    const LOADAVG: &str = "3.01 2.26 1.02 2/345 12345\n";

    fn fixture() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("stat"), STAT).unwrap();
        std::fs::write(dir.path().join("meminfo"), MEMINFO).unwrap();
        std::fs::write(dir.path().join("loadavg"), LOADAVG).unwrap();
        for (path, text) in [
            ("net/dev", NETDEV),
            ("diskstats", DISKSTATS),
            (
                "pressure/cpu",
                "some avg10=0.00 avg60=0.00 avg300=0.00 total=189672518\nfull avg10=0.00 avg60=0.00 avg300=0.00 total=0\n",
            ),
            (
                "pressure/memory",
                "some avg10=0.00 avg60=0.00 avg300=0.00 total=0\nfull avg10=0.00 avg60=0.00 avg300=0.00 total=0\n",
            ),
            (
                "pressure/io",
                "some avg10=2.13 avg60=1.14 avg300=2.38 total=4930463\nfull avg10=1.63 avg60=0.55 avg300=0.97 total=2683133\n",
            ),
            ("sys/fs/file-nr", "4478\t0\t2466170\n"),
            ("sys/kernel/random/entropy_avail", "256\n"),
            ("sys/kernel/random/poolsize", "256\n"),
            ("no-sys/class/net/eth0/statistics/rx_nohandler", "7\n"),
            ("no-sys/class/net/lo/statistics/rx_nohandler", "1\n"),
        ] {
            let p = dir.path().join(path);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, text).unwrap();
        }
        dir
    }

    const NETDEV: &str = "Inter-|   Receive                                                |  Transmit
 face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed
    lo:  123456     100    0    0    0     0          0         0   123456     100    0    0    0     0       0          0
  eth0: 180681926  150000    1    2    0     0          0         3 52000000   90000    0    0    0     0       0          0
";

    const DISKSTATS: &str = "   7       0 loop0 1 0 8 0 0 0 0 0 0 0 0 0 0 0 0 0 0
 254       0 vda 100 5 7959754 2000 300 10 4000 3000 0 4500 5000 0 0 0 0 50 60
 254       1 vda1 90 5 7000 1900 300 10 4000 3000 0 4400 4900 0 0 0 0 0 0
 252       0 zram0 4 0 32 0 0 0 0 0 0 0 0
";

    #[test]
    fn network_disk_pressure_fd_entropy() {
        let dir = fixture();
        let out = nc(dir.path(), "h").collect(0).unwrap();
        let v = |name: &str, extra: &[(&str, &str)]| find(&out, name, extra).samples[0].1;
        assert_eq!(v("node_network_receive_bytes_total", &[("device", "eth0")]), 180681926.0);
        assert_eq!(v("node_network_receive_multicast_total", &[("device", "eth0")]), 3.0);
        assert_eq!(v("node_network_transmit_bytes_total", &[("device", "eth0")]), 52000000.0);
        assert!(!out.iter().any(|s| s.labels.get("device") == Some("lo")), "lo is left out");
        assert_eq!(v("node_network_receive_nohandler_total", &[("device", "eth0")]), 7.0);
        assert_eq!(v("node_disk_read_bytes_total", &[("device", "vda")]), 7959754.0 * 512.0);
        assert_eq!(v("node_disk_io_time_seconds_total", &[("device", "vda")]), 4.5);
        assert_eq!(v("node_disk_flush_requests_total", &[("device", "vda")]), 50.0);
        assert_eq!(v("node_disk_reads_completed_total", &[("device", "zram0")]), 4.0);
        for gone in ["loop0", "vda1"] {
            assert!(!out.iter().any(|s| s.labels.get("device") == Some(gone)), "{gone} is excluded");
        }
        assert!((v("node_pressure_cpu_waiting_seconds_total", &[]) - 189.672518).abs() < 1e-9);
        assert!(!out.iter().any(|s| s.labels.get(METRIC_NAME) == Some("node_pressure_cpu_stalled_seconds_total")));
        assert!((v("node_pressure_io_stalled_seconds_total", &[]) - 2.683133).abs() < 1e-9);
        assert_eq!(v("node_filefd_allocated", &[]), 4478.0);
        assert_eq!(v("node_filefd_maximum", &[]), 2466170.0);
        assert_eq!(v("node_entropy_available_bits", &[]), 256.0);
        for dev in ["sda1", "nvme0n1p2", "xvdb3", "ram0", "loop12", "fd0"] {
            assert!(disk_excluded(dev), "{dev}");
        }
        for dev in ["sda", "nvme0n1", "vda", "zram0", "md0", "dm-0", "mmcblk0"] {
            assert!(!disk_excluded(dev), "{dev}");
        }
    }

    fn find<'a>(out: &'a [SeriesSamples], name: &str, extra: &[(&str, &str)]) -> &'a SeriesSamples {
        out.iter()
            .find(|s| s.labels.get(METRIC_NAME) == Some(name) && extra.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
            .unwrap_or_else(|| panic!("{name} {extra:?} missing"))
    }

    #[test]
    fn collects_node_exporter_families() {
        let dir = fixture();
        let mut c = nc(dir.path(), "box1");
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
        let shared = std::env::var("CAIRN_SHARED")
            .map(std::path::PathBuf::from)
            .unwrap_or_else(|_| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared"));
        let path = shared.join("datasets/node-exporter/node-exporter-1.5.0.prom");
        let Ok(reference) = std::fs::read_to_string(&path) else {
            assert!(
                std::env::var("CI").is_err(),
                "{} is missing: in CI the shared data set must be there",
                path.display()
            );
            eprintln!("skipped: {} not found (set CAIRN_SHARED)", path.display());
            return;
        };
        let dir = fixture();
        let out = nc(dir.path(), "h").collect(0).unwrap();
        for s in &out {
            let name = s.labels.get(METRIC_NAME).unwrap();
            assert!(reference.contains(&format!("# TYPE {name} ")), "{name} is not a node_exporter 1.5 family");
        }
        for (name, typ, help) in metric_metadata() {
            // The reference VM has no thermal zones; those texts are
            // node_exporter 1.5's thermal_zone collector's.
            if hwmon::THERMAL_METADATA.iter().any(|m| m.0 == name) {
                continue;
            }
            assert!(reference.contains(&format!("# TYPE {name} {typ}\n")), "{name} {typ}");
            assert!(reference.contains(&format!("# HELP {name} {help}\n")), "{name} help");
        }
        assert!(reference.contains(&format!(
            "# HELP node_memory_Active_anon_bytes {}\n",
            memory_help("node_memory_Active_anon_bytes")
        )));
        for col in NETDEV_COLUMNS {
            let name = format!("node_network_{col}_total");
            assert!(reference.contains(&format!("# TYPE {name} counter\n")), "{name}");
            assert!(reference.contains(&format!("# HELP {name} {}\n", network_help(&name))), "{name} help");
        }
    }

    #[test]
    fn metadata_covers_every_emitted_family() {
        let mut c = NodeCollector::new(&NodeConfig::default(), "h").unwrap();
        let Ok(out) = c.collect(0) else { return };
        let meta = c.metadata();
        let mut names: Vec<&str> = out.iter().filter_map(|s| s.labels.get(METRIC_NAME)).collect();
        names.sort();
        names.dedup();
        let with_meta: Vec<&str> = meta.iter().map(|m| m.metric_family_name.as_str()).collect();
        assert_eq!(names, with_meta, "every family has a type and help");
        assert!(meta.iter().all(|m| (1..=2).contains(&m.r#type) && !m.help.is_empty()));
        let cpu = meta.iter().find(|m| m.metric_family_name == "node_cpu_seconds_total").unwrap();
        assert_eq!((cpu.r#type, cpu.help.as_str()), (1, "Seconds the CPUs spent in each mode."));
    }

    #[test]
    fn missing_or_garbage_files_do_not_panic() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = nc(dir.path(), "h");
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
        let out = NodeCollector::new(&NodeConfig::default(), "h").unwrap().collect(0).unwrap();
        let names: Vec<_> = out.iter().filter_map(|s| s.labels.get(METRIC_NAME)).collect();
        for want in ["node_cpu_seconds_total", "node_memory_MemTotal_bytes", "node_load1", "node_boot_time_seconds"] {
            assert!(names.contains(&want), "{want} missing");
        }
    }
}
