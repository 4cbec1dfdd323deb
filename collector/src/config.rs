//! The `[collector]` configuration section. Field doc comments are the user
//! documentation (mirrored in `docs/configuration.md`).
//!
//! Durations are Prometheus durations (`"15s"`, `"500ms"`, `"1h30m"`) and
//! sizes are bytes or strings with a unit (`262144`, `"256KiB"`, `"1MiB"`),
//! the same value types as the rest of Cairn's config
//! ([`cairn_wire::config`]).

use std::collections::BTreeMap;
use std::path::PathBuf;

use cairn_wire::Labels;
pub use cairn_wire::config::{ByteSize, ConfigDuration};

pub use crate::logline::LogFormat;
use crate::logline::Multiline;
use serde::{Deserialize, Serialize};

/// The config file's name for a duration such as `"15s"`: milliseconds
/// inside, a Prometheus duration string in TOML.
pub type DurationStr = ConfigDuration;

/// `[collector]`: what this node collects and where it sends it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CollectorConfig {
    /// Name of this machine: the `instance` label of node metrics and the
    /// `host` label of log streams. Empty means this machine's hostname
    /// (from `/proc/sys/kernel/hostname`).
    pub host: String,
    /// `[collector.node]`: node metrics (CPU, memory, load, …) with
    /// node_exporter's names.
    pub node: NodeConfig,
    /// `[[collector.files]]`: log files to tail, in groups sharing labels.
    /// Each line becomes a log entry in the stream `labels` + `filename` +
    /// `host`. An empty list tails nothing.
    pub files: Vec<FileTarget>,
    /// How often the file globs are expanded and files are checked for new
    /// lines, rotation and truncation. Files created, moved or deleted in
    /// the watched directories also wake the collector at once (inotify).
    pub poll_interval: ConfigDuration,
    /// Longest log line kept, in bytes; longer lines are truncated to this
    /// size (at a character boundary) and counted in the collector's
    /// `lines_truncated` counter.
    pub max_line_bytes: ByteSize,
    /// Longest time a read line waits before its batch is sent.
    pub batch_wait: ConfigDuration,
    /// A batch of log lines is sent as soon as it holds this many bytes of
    /// lines. This is also the most log data held in memory while the
    /// receiver is unreachable.
    pub batch_max_bytes: ByteSize,
    /// Most bytes of log batches kept on disk (in `<state_dir>/queue/`)
    /// waiting for the receiver's acknowledgement. While the receiver is
    /// down, reading goes on into this queue; once full, the oldest
    /// batches are dropped and counted
    /// (`cairn_collector_queue_dropped_lines_total`).
    pub queue_max_bytes: ByteSize,
    /// Make each log batch durable on disk (`fdatasync` of the queue
    /// segment) before it is sent. With it, a batch delivered just before
    /// a power loss is sent again byte for byte after it (and stored once);
    /// without it, the batch can be lost from the queue and its lines read
    /// again from the files, and lines of plain files (stamped with their
    /// read time) are then stored twice. One `fdatasync` per batch (at most
    /// `batch_max_bytes`, or `batch_wait` apart).
    pub queue_fsync: bool,
    /// `[collector.pods]`: Kubernetes container logs under `/var/log/pods`.
    pub pods: PodLogsConfig,
    /// `[collector.journal]`: the systemd journal.
    pub journal: JournalConfig,
    /// `[collector.kubernetes]`: the Kubernetes API, for scraping annotated
    /// pods of this node and for pod labels on pod log streams.
    pub kubernetes: KubernetesConfig,
    /// `[[collector.scrape]]`: Prometheus `/metrics` endpoints to scrape, in
    /// groups sharing a job. An empty list scrapes nothing.
    pub scrape: Vec<ScrapeConfig>,
    /// `[collector.push]`: where `cairn collect` sends metrics and logs.
    /// Ignored by `cairn up`, whose collector writes into its own aggregator.
    pub push: PushConfig,
}

impl Default for CollectorConfig {
    fn default() -> Self {
        CollectorConfig {
            host: String::new(),
            node: NodeConfig::default(),
            files: vec![FileTarget::default()],
            poll_interval: ConfigDuration::from_millis(500),
            max_line_bytes: ByteSize::kib(256),
            batch_wait: ConfigDuration::from_secs(1),
            batch_max_bytes: ByteSize::mib(1),
            queue_max_bytes: ByteSize::mib(256),
            queue_fsync: true,
            pods: PodLogsConfig::default(),
            journal: JournalConfig::default(),
            kubernetes: KubernetesConfig::default(),
            scrape: Vec::new(),
            push: PushConfig::default(),
        }
    }
}

/// `[collector.node]`: node metrics.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NodeConfig {
    /// Collect node metrics at all.
    pub enabled: bool,
    /// Time between two collections; every sample of one collection carries
    /// the same timestamp.
    pub interval: ConfigDuration,
    /// Where the proc filesystem is mounted. In a container, mount the
    /// host's `/proc` (e.g. at `/host/proc`) and point this at it.
    pub proc_path: PathBuf,
    /// Where sysfs is mounted (hwmon sensors, thermal zones); in a
    /// container e.g. `/host/sys`.
    pub sys_path: PathBuf,
    /// Where the host's root filesystem is visible: filesystems are
    /// `statfs`ed at `<rootfs_path>/<mount point>`, the prefix is stripped
    /// from the `mountpoint` label, and `etc/os-release` is read from it.
    /// In a container, mount the host's `/` read-only at e.g. `/host/root`.
    pub rootfs_path: PathBuf,
    /// Mount points to leave out of `node_filesystem_*` (a regex;
    /// node_exporter 1.5's default).
    pub mount_points_exclude: String,
    /// Filesystem types to leave out of `node_filesystem_*` (a regex;
    /// node_exporter 1.5's default: pseudo filesystems, overlay, squashfs).
    pub fs_types_exclude: String,
}

impl Default for NodeConfig {
    fn default() -> Self {
        NodeConfig {
            enabled: true,
            interval: ConfigDuration::from_secs(15),
            proc_path: PathBuf::from("/proc"),
            sys_path: PathBuf::from("/sys"),
            rootfs_path: PathBuf::from("/"),
            mount_points_exclude: crate::node::filesystem::DEFAULT_MOUNT_POINTS_EXCLUDE.to_string(),
            fs_types_exclude: crate::node::filesystem::DEFAULT_FS_TYPES_EXCLUDE.to_string(),
        }
    }
}

/// `[[collector.files]]`: a group of log files sharing stream labels.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FileTarget {
    /// Glob patterns of files to tail (`*`, `?`, `[abc]`, `**`), expanded
    /// again at every poll so new files are picked up. A file seen for the
    /// first time is read from its beginning.
    pub paths: Vec<String>,
    /// Labels added to every stream of this group, e.g. `{ job = "varlogs" }`.
    /// `filename` is set by the collector and cannot be given here; `host`
    /// defaults to the collector's `host` unless set here.
    pub labels: BTreeMap<String, String>,
    /// Glob patterns of files not to tail even if `paths` matches them
    /// (e.g. `"/var/log/*.gz"`).
    pub exclude: Vec<String>,
    /// How lines are encoded: `plain` (each line is an entry, stamped with
    /// the time it was read), `cri`, `docker` or `auto` (container runtime
    /// formats: the runtime's time and stream are kept, split lines are
    /// joined, and a `stream` label is added). See [`crate::logline`].
    pub format: LogFormat,
    /// Joining of multiline entries (stack traces); off unless
    /// `multiline.first_line` is set.
    pub multiline: MultilineConfig,
}

impl Default for FileTarget {
    fn default() -> Self {
        FileTarget {
            paths: vec!["/var/log/*.log".into(), "/var/log/syslog".into(), "/var/log/messages".into()],
            labels: BTreeMap::from([("job".to_string(), "varlogs".to_string())]),
            exclude: Vec::new(),
            format: LogFormat::Plain,
            multiline: MultilineConfig::default(),
        }
    }
}

/// `multiline`: joins continuation lines (e.g. of a Java or Python stack
/// trace) into the entry of the line that started it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MultilineConfig {
    /// Regex matched against each line (after container format decoding):
    /// a matching line starts a new entry, any other line is appended, with
    /// a `\n`, to the entry before it. Empty turns joining off. Example:
    /// `'^\d{4}-\d{2}-\d{2}'` or `'^\S'`.
    pub first_line: String,
    /// An entry is sent once no line was added to it for this long.
    pub max_wait: ConfigDuration,
    /// An entry is sent once it holds this many lines.
    pub max_lines: usize,
}

impl Default for MultilineConfig {
    fn default() -> Self {
        MultilineConfig { first_line: String::new(), max_wait: ConfigDuration::from_secs(3), max_lines: 128 }
    }
}

impl MultilineConfig {
    /// The compiled rules; `None` when joining is off.
    pub fn compile(&self) -> Result<Option<Multiline>, String> {
        if self.first_line.is_empty() {
            return Ok(None);
        }
        let first_line = regex::bytes::Regex::new(&self.first_line).map_err(|e| format!("invalid regex: {e}"))?;
        Ok(Some(Multiline { first_line, max_wait: self.max_wait.0, max_lines: self.max_lines.max(1) }))
    }
}

/// `[collector.pods]`: Kubernetes container logs as kubelet writes them,
/// `<root>/<namespace>_<pod>_<uid>/<container>/<restart>.log`, in CRI (or
/// Docker json-file) format. Each stream is labelled `namespace`, `pod`,
/// `container`, `node`, `stream` (`stdout`/`stderr`, as Promtail's `cri`
/// stage does) and `job="<namespace>/<container>"`, plus `labels`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PodLogsConfig {
    /// Tail pod logs at all.
    pub enabled: bool,
    /// Where kubelet writes pod logs; in a DaemonSet, mount the host's
    /// `/var/log/pods` and point this at it.
    pub root: PathBuf,
    /// Value of the `node` label. Empty means the `NODE_NAME` environment
    /// variable (set it from `spec.nodeName` with the downward API), else
    /// the collector's `host`.
    pub node: String,
    /// Line format: `auto` (per line: Docker json-file if it starts with
    /// `{`, else CRI), `cri`, `docker` or `plain`.
    pub format: LogFormat,
    /// Labels added to every pod stream; a `job` here replaces the default
    /// `<namespace>/<container>`.
    pub labels: BTreeMap<String, String>,
    /// Globs (full paths) of pod log files to leave out, e.g.
    /// `"/var/log/pods/kube-system_*/**"`.
    pub exclude: Vec<String>,
    /// Multiline joining, as for `[[collector.files]]`.
    pub multiline: MultilineConfig,
}

impl Default for PodLogsConfig {
    fn default() -> Self {
        PodLogsConfig {
            enabled: false,
            root: PathBuf::from("/var/log/pods"),
            node: String::new(),
            format: LogFormat::Auto,
            labels: BTreeMap::new(),
            exclude: Vec::new(),
            multiline: MultilineConfig::default(),
        }
    }
}

impl PodLogsConfig {
    /// The `node` label: `node`, else `$NODE_NAME`, else `host`.
    pub fn resolved_node(&self, host: &str) -> String {
        if !self.node.trim().is_empty() {
            return self.node.trim().to_string();
        }
        std::env::var("NODE_NAME")
            .ok()
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| host.to_string())
    }
}

/// `[collector.kubernetes]`: the pods of this node, listed from the
/// Kubernetes API (`GET /api/v1/pods?fieldSelector=spec.nodeName=<node>`)
/// every `refresh_interval` with the pod's service account (see
/// [`crate::kube`]). Used for two things: scraping pods annotated
/// `prometheus.io/scrape: "true"` (`scrape_pods`), and adding pod labels
/// (`pod_labels`) to pod log streams and to the scraped pods' series.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KubernetesConfig {
    /// Talk to the Kubernetes API at all.
    pub enabled: bool,
    /// Base URL of the API server. Empty means in-cluster:
    /// `https://$KUBERNETES_SERVICE_HOST:$KUBERNETES_SERVICE_PORT`. An
    /// `http://` URL is allowed (e.g. `kubectl proxy` on localhost).
    pub api_url: String,
    /// The service account token, sent as `Authorization: Bearer`; read
    /// again before every listing (kubelet rotates projected tokens). A
    /// missing file sends no token.
    pub token_file: PathBuf,
    /// PEM file of the CA that signed the API server's certificate. Empty
    /// or missing: the system's roots.
    pub ca_file: PathBuf,
    /// The node whose pods are listed. Empty means the `NODE_NAME`
    /// environment variable (downward API `spec.nodeName`), else
    /// `collector.pods.node`, else `collector.host`.
    pub node: String,
    /// Time between two listings of the node's pods. A pod log directory of
    /// an unknown pod also triggers a listing (at most one a second).
    pub refresh_interval: ConfigDuration,
    /// Scrape the node's running pods annotated `prometheus.io/scrape:
    /// "true"`, at `prometheus.io/port` (else each declared TCP container
    /// port), `prometheus.io/path` (default `/metrics`) and
    /// `prometheus.io/scheme` (`http` or `https`).
    pub scrape_pods: bool,
    /// The `job` label of scraped pods (the name of the usual
    /// `kubernetes-pods` Prometheus job).
    pub job: String,
    /// Time between two scrapes of a pod.
    pub scrape_interval: ConfigDuration,
    /// Time limit of one pod scrape; at most `scrape_interval`.
    pub scrape_timeout: ConfigDuration,
    /// Largest pod scrape response accepted.
    pub body_size_limit: ByteSize,
    /// Pod labels copied onto pod log streams and scraped pods' series,
    /// their names with every character other than `[A-Za-z0-9_]` replaced
    /// by `_` (as Prometheus's `labelmap` of `__meta_kubernetes_pod_label_*`
    /// does): `app.kubernetes.io/name` becomes `app_kubernetes_io_name`.
    /// A label the collector already sets (`namespace`, `pod`, `job`, …)
    /// wins over a pod label of the same name.
    pub pod_labels: Vec<String>,
}

impl Default for KubernetesConfig {
    fn default() -> Self {
        KubernetesConfig {
            enabled: false,
            api_url: String::new(),
            token_file: PathBuf::from("/var/run/secrets/kubernetes.io/serviceaccount/token"),
            ca_file: PathBuf::from("/var/run/secrets/kubernetes.io/serviceaccount/ca.crt"),
            node: String::new(),
            refresh_interval: ConfigDuration::from_secs(30),
            scrape_pods: true,
            job: "kubernetes-pods".to_string(),
            scrape_interval: ConfigDuration::from_secs(15),
            scrape_timeout: ConfigDuration::from_secs(10),
            body_size_limit: ByteSize::mib(64),
            pod_labels: vec!["app".to_string(), "app.kubernetes.io/name".to_string()],
        }
    }
}

impl KubernetesConfig {
    /// The API base URL (no trailing `/`): `api_url`, else the in-cluster
    /// address from `KUBERNETES_SERVICE_HOST`/`KUBERNETES_SERVICE_PORT`;
    /// `None` when neither is there.
    pub fn resolved_api_url(&self) -> Option<String> {
        if !self.api_url.trim().is_empty() {
            return Some(self.api_url.trim().trim_end_matches('/').to_string());
        }
        let host = std::env::var("KUBERNETES_SERVICE_HOST").ok().filter(|h| !h.trim().is_empty())?;
        let port = std::env::var("KUBERNETES_SERVICE_PORT").ok().filter(|p| !p.trim().is_empty());
        let host = host.trim();
        let host = if host.contains(':') { format!("[{host}]") } else { host.to_string() };
        Some(format!("https://{host}:{}", port.as_deref().map_or("443", str::trim)))
    }

    /// The node whose pods are listed: `node`, else `$NODE_NAME`, else
    /// `pods_node` (the resolved `collector.pods.node`).
    pub fn resolved_node(&self, pods_node: &str) -> String {
        if !self.node.trim().is_empty() {
            return self.node.trim().to_string();
        }
        std::env::var("NODE_NAME")
            .ok()
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| pods_node.to_string())
    }
}

/// `[collector.journal]`: the systemd journal, read through `journalctl`
/// (see [`crate::journal`]). Streams are labelled `labels` plus `unit`,
/// `priority` (syslog keyword) and `hostname`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct JournalConfig {
    /// Read the journal at all.
    pub enabled: bool,
    /// The `journalctl` program.
    pub journalctl_path: PathBuf,
    /// Journal directory to read (`journalctl --directory`), e.g. the
    /// host's `/var/log/journal` mounted in a container; empty reads the
    /// local system journal.
    pub directory: PathBuf,
    /// At the first start (no saved cursor), how far back to read.
    pub max_age: ConfigDuration,
    /// Labels of every journal stream.
    pub labels: BTreeMap<String, String>,
}

impl Default for JournalConfig {
    fn default() -> Self {
        JournalConfig {
            enabled: false,
            journalctl_path: PathBuf::from("journalctl"),
            directory: PathBuf::new(),
            max_age: ConfigDuration::from_secs(7 * 3600),
            labels: BTreeMap::from([("job".to_string(), "systemd-journal".to_string())]),
        }
    }
}

/// `[[collector.scrape]]`: a group of targets exposing Prometheus text or
/// OpenMetrics, scraped with Prometheus's semantics (see
/// [`crate::scrape`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ScrapeConfig {
    /// The `job` label of every series of these targets.
    pub job: String,
    /// Targets as `host:port`; each becomes the `instance` label.
    pub targets: Vec<String>,
    /// Time between two scrapes of a target.
    pub interval: ConfigDuration,
    /// Time limit of one scrape; at most `interval`.
    pub timeout: ConfigDuration,
    /// HTTP path of the metrics.
    pub path: String,
    /// Keep scraped labels that clash with target labels (`job`,
    /// `instance`, `labels`) instead of renaming them `exported_<name>`.
    pub honor_labels: bool,
    /// Keep timestamps the target gives instead of the scrape time.
    pub honor_timestamps: bool,
    /// Labels added to every series of these targets, e.g. `{ env = "prod" }`.
    pub labels: BTreeMap<String, String>,
    /// Largest response body accepted; a larger one fails the scrape (`up 0`).
    pub body_size_limit: ByteSize,
}

impl Default for ScrapeConfig {
    fn default() -> Self {
        ScrapeConfig {
            job: String::new(),
            targets: Vec::new(),
            interval: ConfigDuration::from_secs(15),
            timeout: ConfigDuration::from_secs(10),
            path: "/metrics".to_string(),
            honor_labels: false,
            honor_timestamps: true,
            labels: BTreeMap::new(),
            body_size_limit: ByteSize::mib(64),
        }
    }
}

impl ScrapeConfig {
    /// The scrape URL of `target`: `http://<target><path>`.
    pub fn url_of(&self, target: &str) -> String {
        let path = if self.path.starts_with('/') { self.path.clone() } else { format!("/{}", self.path) };
        format!("http://{}{path}", target.trim())
    }
}

/// `[collector.push]`: where `cairn collect` sends its data, over the public
/// protocols (Prometheus remote_write 1.0 and Loki push), so the receiver
/// can be a Cairn aggregator, Prometheus, VictoriaMetrics, Mimir or Loki.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PushConfig {
    /// Base URL of a Cairn aggregator, e.g. `http://127.0.0.1:3100`;
    /// metrics go to `<url>/api/v1/write` and logs to
    /// `<url>/loki/api/v1/push`. `https://` is verified against the
    /// system's roots plus `ca_file`.
    pub url: String,
    /// Full remote_write URL for metrics, overriding `url`, e.g.
    /// `http://prometheus:9090/api/v1/write`.
    pub metrics_url: String,
    /// Full Loki push URL for logs, overriding `url`, e.g.
    /// `http://loki:3100/loki/api/v1/push`.
    pub logs_url: String,
    /// Tenant sent as the `X-Scope-OrgID` header; empty sends no header
    /// (a Cairn aggregator then uses the tenant `fake`, as Loki does).
    pub tenant: String,
    /// Time limit of one push request, connection included; a request that
    /// times out is retried.
    pub timeout: ConfigDuration,
    /// Sent as `Authorization: Bearer <token>` (e.g. Grafana Cloud, a
    /// reverse proxy); empty sends none.
    pub bearer_token: String,
    /// File holding the bearer token (read at start, trimmed), instead of
    /// `bearer_token` (e.g. a Kubernetes secret mounted as a file).
    pub bearer_token_file: PathBuf,
    /// For `https://` URLs: a PEM file of CA certificates trusted besides
    /// the system's roots (e.g. a homelab CA or a self-signed aggregator
    /// certificate). Empty trusts the system's roots only.
    pub ca_file: PathBuf,
    /// Keep retrying a batch the receiver refuses with HTTP 401 or 403
    /// (wrong or missing credentials) instead of dropping it: nothing is
    /// lost while an operator fixes the token, but the bounded on-disk
    /// queue fills and then drops its oldest data. Off (drop, as for other
    /// 4xx, and as Promtail does) by default.
    pub retry_auth_errors: bool,
}

impl Default for PushConfig {
    fn default() -> Self {
        PushConfig {
            url: String::new(),
            metrics_url: String::new(),
            logs_url: String::new(),
            tenant: String::new(),
            timeout: ConfigDuration::from_secs(10),
            bearer_token: String::new(),
            bearer_token_file: PathBuf::new(),
            ca_file: PathBuf::new(),
            retry_auth_errors: false,
        }
    }
}

impl PushConfig {
    /// The remote_write URL: `metrics_url`, else `<url>/api/v1/write`;
    /// `None` when neither is set.
    pub fn resolved_metrics_url(&self) -> Option<String> {
        resolve(&self.metrics_url, &self.url, "/api/v1/write")
    }

    /// The Loki push URL: `logs_url`, else `<url>/loki/api/v1/push`;
    /// `None` when neither is set.
    pub fn resolved_logs_url(&self) -> Option<String> {
        resolve(&self.logs_url, &self.url, "/loki/api/v1/push")
    }
}

fn resolve(full: &str, base: &str, suffix: &str) -> Option<String> {
    if !full.trim().is_empty() {
        return Some(full.trim().to_string());
    }
    let base = base.trim().trim_end_matches('/');
    (!base.is_empty()).then(|| format!("{base}{suffix}"))
}

/// A configuration value that parses but makes no sense; the message names
/// the key (relative to `[collector]`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{key}: {reason}")]
pub struct ConfigError {
    /// The offending key, e.g. `files[0].paths[1]`.
    pub key: String,
    /// What is wrong with it.
    pub reason: String,
}

fn cerr(key: impl Into<String>, reason: impl Into<String>) -> ConfigError {
    ConfigError { key: key.into(), reason: reason.into() }
}

/// Label names the collector sets itself on log streams.
pub(crate) const FILENAME_LABEL: &str = "filename";
/// Label holding the collector's host on log streams.
pub(crate) const HOST_LABEL: &str = "host";
/// Label holding `stdout`/`stderr` for container formats.
pub(crate) const STREAM_LABEL: &str = "stream";
/// Labels of pod log streams set from the path (and `stream`).
pub(crate) const POD_LABELS: [&str; 5] = ["namespace", "pod", "container", "node", STREAM_LABEL];

impl CollectorConfig {
    /// Checks values that parse but make no sense: zero intervals, empty or
    /// malformed globs, invalid label names, unusable push URLs.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.node.enabled && self.node.interval.0.is_zero() {
            return Err(cerr("node.interval", "must be greater than 0"));
        }
        for (key, pat) in [
            ("node.mount_points_exclude", &self.node.mount_points_exclude),
            ("node.fs_types_exclude", &self.node.fs_types_exclude),
        ] {
            regex::Regex::new(pat).map_err(|e| cerr(key, format!("invalid regex: {e}")))?;
        }
        if self.poll_interval.0.is_zero() {
            return Err(cerr("poll_interval", "must be greater than 0"));
        }
        if self.max_line_bytes.0 < 16 {
            return Err(cerr("max_line_bytes", "must be at least 16 bytes"));
        }
        if self.batch_max_bytes.0 == 0 {
            return Err(cerr("batch_max_bytes", "must be greater than 0"));
        }
        if usize::try_from(self.max_line_bytes.0).is_err() || usize::try_from(self.batch_max_bytes.0).is_err() {
            return Err(cerr("batch_max_bytes", "too large for this machine"));
        }
        if self.push.timeout.0.is_zero() {
            return Err(cerr("push.timeout", "must be greater than 0"));
        }
        for (i, t) in self.files.iter().enumerate() {
            if t.paths.is_empty() {
                return Err(cerr(format!("files[{i}].paths"), "must list at least one glob"));
            }
            for (kind, list) in [("paths", &t.paths), ("exclude", &t.exclude)] {
                for (j, p) in list.iter().enumerate() {
                    let key = format!("files[{i}].{kind}[{j}]");
                    if p.trim().is_empty() {
                        return Err(cerr(key, "empty glob"));
                    }
                    glob::Pattern::new(p).map_err(|e| cerr(key, format!("invalid glob {p:?}: {e}")))?;
                }
            }
            if t.labels.contains_key(FILENAME_LABEL) {
                return Err(cerr(
                    format!("files[{i}].labels.{FILENAME_LABEL}"),
                    "is set by the collector to each file's path and cannot be configured",
                ));
            }
            Labels::from_pairs(t.labels.iter().map(|(k, v)| (k.as_str(), v.as_str())))
                .map_err(|e| cerr(format!("files[{i}].labels"), e.to_string()))?;
            t.multiline.compile().map_err(|e| cerr(format!("files[{i}].multiline.first_line"), e))?;
            if t.format != LogFormat::Plain && t.labels.contains_key(STREAM_LABEL) {
                return Err(cerr(
                    format!("files[{i}].labels.{STREAM_LABEL}"),
                    "is set by the collector for container formats",
                ));
            }
        }
        if self.pods.enabled {
            if self.pods.root.as_os_str().is_empty() {
                return Err(cerr("pods.root", "must be set"));
            }
            for (j, p) in self.pods.exclude.iter().enumerate() {
                glob::Pattern::new(p)
                    .map_err(|e| cerr(format!("pods.exclude[{j}]"), format!("invalid glob {p:?}: {e}")))?;
            }
            if let Some(k) = self.pods.labels.keys().find(|k| POD_LABELS.contains(&k.as_str())) {
                return Err(cerr(format!("pods.labels.{k}"), "is set by the collector from the pod log's path"));
            }
            Labels::from_pairs(self.pods.labels.iter().map(|(k, v)| (k.as_str(), v.as_str())))
                .map_err(|e| cerr("pods.labels", e.to_string()))?;
            self.pods.multiline.compile().map_err(|e| cerr("pods.multiline.first_line", e))?;
        }
        for (i, sc) in self.scrape.iter().enumerate() {
            let key = |k: &str| format!("scrape[{i}].{k}");
            if sc.job.trim().is_empty() {
                return Err(cerr(key("job"), "must be set"));
            }
            if sc.targets.is_empty() {
                return Err(cerr(key("targets"), "must list at least one host:port"));
            }
            if sc.interval.0.is_zero() {
                return Err(cerr(key("interval"), "must be greater than 0"));
            }
            if sc.timeout.0.is_zero() || sc.timeout.0 > sc.interval.0 {
                return Err(cerr(key("timeout"), "must be greater than 0 and at most interval"));
            }
            if sc.body_size_limit.0 == 0 {
                return Err(cerr(key("body_size_limit"), "must be greater than 0"));
            }
            for (j, t) in sc.targets.iter().enumerate() {
                let u = reqwest::Url::parse(&sc.url_of(t))
                    .ok()
                    .filter(|u| u.host_str().is_some() && u.username().is_empty() && u.query().is_none());
                if t.trim().is_empty() || t.contains('/') || u.is_none() {
                    return Err(cerr(format!("scrape[{i}].targets[{j}]"), format!("{t:?} is not host:port")));
                }
            }
            if let Some(k) = sc.labels.keys().find(|k| k.starts_with("__")) {
                return Err(cerr(key("labels"), format!("{k}: names starting with __ are reserved")));
            }
            Labels::from_pairs(sc.labels.iter().map(|(k, v)| (k.as_str(), v.as_str())))
                .map_err(|e| cerr(key("labels"), e.to_string()))?;
        }
        for (key, url) in [
            ("push.url", &self.push.url),
            ("push.metrics_url", &self.push.metrics_url),
            ("push.logs_url", &self.push.logs_url),
        ] {
            if !url.trim().is_empty() {
                check_url(url.trim()).map_err(|reason| cerr(key, reason))?;
            }
        }
        if self.queue_max_bytes.0 < (1 << 20) {
            return Err(cerr("queue_max_bytes", "must be at least 1MiB"));
        }
        if self.journal.enabled {
            if self.journal.journalctl_path.as_os_str().is_empty() {
                return Err(cerr("journal.journalctl_path", "must be set"));
            }
            if let Some(k) = self.journal.labels.keys().find(|k| ["unit", "priority", "hostname"].contains(&k.as_str()))
            {
                return Err(cerr(format!("journal.labels.{k}"), "is set by the collector from each entry"));
            }
            Labels::from_pairs(self.journal.labels.iter().map(|(k, v)| (k.as_str(), v.as_str())))
                .map_err(|e| cerr("journal.labels", e.to_string()))?;
        }
        if self.kubernetes.enabled {
            let k = &self.kubernetes;
            if !k.api_url.trim().is_empty() {
                check_url(k.api_url.trim()).map_err(|reason| cerr("kubernetes.api_url", reason))?;
            }
            if k.refresh_interval.0.is_zero() {
                return Err(cerr("kubernetes.refresh_interval", "must be greater than 0"));
            }
            if k.scrape_pods {
                if k.job.trim().is_empty() {
                    return Err(cerr("kubernetes.job", "must be set"));
                }
                if k.scrape_interval.0.is_zero() {
                    return Err(cerr("kubernetes.scrape_interval", "must be greater than 0"));
                }
                if k.scrape_timeout.0.is_zero() || k.scrape_timeout.0 > k.scrape_interval.0 {
                    return Err(cerr(
                        "kubernetes.scrape_timeout",
                        "must be greater than 0 and at most scrape_interval",
                    ));
                }
                if k.body_size_limit.0 == 0 {
                    return Err(cerr("kubernetes.body_size_limit", "must be greater than 0"));
                }
            }
            for (i, l) in k.pod_labels.iter().enumerate() {
                if l.trim().is_empty() {
                    return Err(cerr(format!("kubernetes.pod_labels[{i}]"), "empty label name"));
                }
            }
        }
        if self.push.bearer_token.bytes().any(|b| !(0x20..0x7f).contains(&b)) {
            return Err(cerr("push.bearer_token", "must be printable ASCII (it is sent as an HTTP header)"));
        }
        if !self.push.bearer_token.is_empty() && !self.push.bearer_token_file.as_os_str().is_empty() {
            return Err(cerr("push.bearer_token_file", "set either bearer_token or bearer_token_file, not both"));
        }
        if self.push.tenant.bytes().any(|b| !(0x20..0x7f).contains(&b)) {
            return Err(cerr("push.tenant", "must be printable ASCII (it is sent as an HTTP header)"));
        }
        Ok(())
    }

    /// The host name used for labels: `host`, or this machine's hostname.
    pub fn resolved_host(&self) -> String {
        if !self.host.trim().is_empty() {
            return self.host.trim().to_string();
        }
        hostname(&self.node.proc_path)
    }
}

/// Checks that a URL is an absolute `http://` or `https://` URL with a host.
pub(crate) fn check_url(url: &str) -> Result<(), String> {
    let u = reqwest::Url::parse(url).map_err(|e| format!("invalid URL {url:?}: {e}"))?;
    match u.scheme() {
        "http" | "https" if u.host_str().is_some() => Ok(()),
        "http" | "https" => Err(format!("{url:?}: no host")),
        s => Err(format!("{url:?}: unsupported scheme {s:?}, expected http:// or https://")),
    }
}

/// This machine's hostname, from `<proc>/sys/kernel/hostname`, else the
/// `HOSTNAME` environment variable, else `localhost`.
pub fn hostname(proc_path: &std::path::Path) -> String {
    let from_proc = std::fs::read(proc_path.join("sys/kernel/hostname"))
        .ok()
        .map(|b| String::from_utf8_lossy(&b).trim().to_string())
        .filter(|s| !s.is_empty());
    from_proc
        .or_else(|| std::env::var("HOSTNAME").ok().map(|s| s.trim().to_string()).filter(|s| !s.is_empty()))
        .unwrap_or_else(|| "localhost".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_round_trip_through_toml() {
        let d = CollectorConfig::default();
        d.validate().unwrap();
        let text = toml::to_string(&d).unwrap();
        let back: CollectorConfig = toml::from_str(&text).unwrap();
        assert_eq!(back, d);
        let empty: CollectorConfig = toml::from_str("").unwrap();
        assert_eq!(empty, d);
        assert_eq!(d.files[0].labels.get("job").map(String::as_str), Some("varlogs"));
        assert_eq!(d.max_line_bytes.0, 262_144);
        assert_eq!(d.batch_max_bytes.0, 1_048_576);
    }

    #[test]
    fn parses_a_full_section() {
        let c: CollectorConfig = toml::from_str(
            r#"
            host = "nas"
            poll_interval = "250ms"
            max_line_bytes = 1024
            batch_max_bytes = "2MiB"
            [node]
            interval = "30s"
            proc_path = "/host/proc"
            [[files]]
            paths = ["/srv/app/*.log"]
            exclude = ["/srv/app/debug.log"]
            labels = { job = "app", env = "prod" }
            [push]
            url = "http://agg:3100/"
            tenant = "team-a"
            "#,
        )
        .unwrap();
        c.validate().unwrap();
        assert_eq!(c.node.interval.as_millis(), 30_000);
        assert_eq!(c.poll_interval.as_millis(), 250);
        assert_eq!(c.max_line_bytes.0, 1024);
        assert_eq!(c.files.len(), 1);
        assert_eq!(c.resolved_host(), "nas");
        assert_eq!(c.push.resolved_metrics_url().as_deref(), Some("http://agg:3100/api/v1/write"));
        assert_eq!(c.push.resolved_logs_url().as_deref(), Some("http://agg:3100/loki/api/v1/push"));
    }

    #[test]
    fn bad_values_are_named() {
        let e = toml::from_str::<CollectorConfig>("[node]\ninterval = \"15\"\n").unwrap_err().to_string();
        assert!(e.contains("interval") && e.contains("missing unit"), "{e}");
        let e = toml::from_str::<CollectorConfig>("polling = \"1s\"\n").unwrap_err().to_string();
        assert!(e.contains("polling"), "{e}");

        let mut c = CollectorConfig::default();
        c.node.interval = ConfigDuration::from_millis(0);
        assert_eq!(c.validate().unwrap_err().key, "node.interval");

        let mut c = CollectorConfig::default();
        c.files[0].paths.push(" ".into());
        assert_eq!(c.validate().unwrap_err().key, "files[0].paths[3]");

        let mut c = CollectorConfig::default();
        c.files[0].exclude.push("[".into());
        assert_eq!(c.validate().unwrap_err().key, "files[0].exclude[0]");

        let mut c = CollectorConfig::default();
        c.files[0].labels.insert("bad-name".into(), "x".into());
        let e = c.validate().unwrap_err();
        assert!(e.to_string().contains("bad-name"), "{e}");

        let mut c = CollectorConfig::default();
        c.files[0].labels.insert("filename".into(), "x".into());
        assert!(c.validate().is_err());

        let mut c = CollectorConfig::default();
        c.push.url = "https://x".into();
        c.validate().unwrap();
        c.push.url = "ftp://x".into();
        assert!(c.validate().unwrap_err().reason.contains("scheme"));

        let mut c = CollectorConfig::default();
        c.kubernetes.enabled = true;
        c.validate().unwrap();
        c.kubernetes.scrape_timeout = ConfigDuration::from_secs(20);
        assert_eq!(c.validate().unwrap_err().key, "kubernetes.scrape_timeout");
        c.kubernetes.scrape_timeout = ConfigDuration::from_secs(1);
        c.kubernetes.api_url = "kube:6443".into();
        assert_eq!(c.validate().unwrap_err().key, "kubernetes.api_url");

        let mut c = CollectorConfig::default();
        c.push.logs_url = "not a url".into();
        assert_eq!(c.validate().unwrap_err().key, "push.logs_url");
    }

    #[test]
    fn scrape_groups() {
        let c: CollectorConfig = toml::from_str(
            r#"
            [[scrape]]
            job = "app"
            targets = ["127.0.0.1:8080", "db:9187"]
            interval = "30s"
            labels = { env = "prod" }
            "#,
        )
        .unwrap();
        c.validate().unwrap();
        assert_eq!(c.scrape[0].timeout.as_millis(), 10_000);
        assert_eq!(c.scrape[0].url_of("db:9187"), "http://db:9187/metrics");
        assert!(c.scrape[0].honor_timestamps && !c.scrape[0].honor_labels);
        for (bad, key) in [
            ("job = \"\"\ntargets = [\"a:1\"]", "scrape[0].job"),
            ("job = \"a\"\ntargets = []", "scrape[0].targets"),
            ("job = \"a\"\ntargets = [\"http://a:1/x\"]", "scrape[0].targets[0]"),
            ("job = \"a\"\ntargets = [\"a:1\"]\ninterval = \"5s\"\ntimeout = \"6s\"", "scrape[0].timeout"),
            ("job = \"a\"\ntargets = [\"a:1\"]\nlabels = { __x = \"1\" }", "scrape[0].labels"),
        ] {
            let c: CollectorConfig = toml::from_str(&format!("[[scrape]]\n{bad}\n")).unwrap();
            assert_eq!(c.validate().unwrap_err().key, key, "{bad}");
        }
    }

    #[test]
    fn hostname_falls_back() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("sys/kernel")).unwrap();
        std::fs::write(dir.path().join("sys/kernel/hostname"), "box1\n").unwrap();
        assert_eq!(hostname(dir.path()), "box1");
        assert!(!hostname(&dir.path().join("missing")).is_empty());
    }
}
