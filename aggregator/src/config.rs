//! The aggregator's configuration sections: `[server]`, `[storage]`,
//! `[limits]`, `[query]`. Field doc comments are the user documentation
//! (mirrored in `docs/configuration.md`).

use std::net::SocketAddr;
use std::path::PathBuf;

use cairn_store::FsyncPolicy;
use cairn_wire::config::{ByteSize, ConfigDuration};
use serde::{Deserialize, Serialize};

/// `[server]`: the HTTP listener.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// Address and port of the HTTP API (Prometheus and Loki APIs, ingest,
    /// `/metrics`, `/ready`).
    pub listen: SocketAddr,
    /// `[server.tls]`: HTTPS instead of HTTP.
    pub tls: TlsConfig,
    /// Longest a client may take to send a request's headers, and then its
    /// body; slower requests are cut off (408), so stalled clients cannot
    /// hold connections.
    pub read_timeout: ConfigDuration,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 3100)),
            tls: TlsConfig::default(),
            read_timeout: ConfigDuration::from_secs(30),
        }
    }
}

/// `[server.tls]`: serve HTTPS with this certificate and key (PEM). Both
/// empty: plain HTTP. The files are checked every few seconds and reloaded
/// when they change (`crate::tls`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsConfig {
    /// Certificate chain, PEM, server certificate first.
    pub cert_file: PathBuf,
    /// Its private key, PEM (PKCS#8, PKCS#1 or SEC1).
    pub key_file: PathBuf,
}

impl TlsConfig {
    /// Whether HTTPS is configured.
    pub fn enabled(&self) -> bool {
        !self.cert_file.as_os_str().is_empty() || !self.key_file.as_os_str().is_empty()
    }

    /// Both files or neither.
    pub fn validate(&self) -> Result<(), String> {
        match (self.cert_file.as_os_str().is_empty(), self.key_file.as_os_str().is_empty()) {
            (true, false) => Err("server.tls.key_file is set but server.tls.cert_file is not".into()),
            (false, true) => Err("server.tls.cert_file is set but server.tls.key_file is not".into()),
            _ => Ok(()),
        }
    }
}

/// `[storage]`: where and how data is kept.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StorageConfig {
    /// Directory holding all data (WAL, blocks, collector state).
    pub data_dir: PathBuf,
    /// `[storage.wal]`: write-ahead log settings.
    pub wal: WalConfig,
    /// `[storage.logs]`: log store settings.
    pub logs: LogsStorageConfig,
    /// `[storage.metrics]`: metrics store settings.
    pub metrics: MetricsStorageConfig,
    /// `[storage.compaction]`: merging of small blocks (both engines).
    pub compaction: CompactionConfig,
}

/// `[storage.compaction]`: background merging of adjacent small blocks into
/// larger ones, in both engines (`docs/format/tsdb.md`, "Compaction").
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CompactionConfig {
    /// Levels, smallest first: adjacent blocks whose data together spans
    /// less than a level are merged into one. Empty: no compaction.
    pub ranges: Vec<ConfigDuration>,
    /// Never make a merged block larger than this (sum of its sources).
    pub max_block_size: ByteSize,
}

impl Default for CompactionConfig {
    fn default() -> Self {
        CompactionConfig {
            ranges: vec![
                ConfigDuration::from_secs(4 * 3600),
                ConfigDuration::from_secs(86_400),
                ConfigDuration::from_secs(3 * 86_400),
            ],
            max_block_size: ByteSize::mib(2048),
        }
    }
}

/// `[storage.metrics]`: when in-memory samples are written to blocks.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsStorageConfig {
    /// Flush the in-memory head to a block of compressed chunks once it holds
    /// this many samples (full chunks are kept encoded, ~1 byte per sample;
    /// each series' open chunk of up to 256 samples at 16 bytes each).
    pub head_max_samples: u64,
    /// Flush the head once its oldest sample was written this long ago.
    pub flush_interval: ConfigDuration,
    /// Accept a sample up to this much older than its series' newest sample
    /// (merged in time order at query time); older samples are refused as
    /// "too old sample" (`0s`: strictly in order, "out of order sample").
    pub out_of_order_window: ConfigDuration,
    /// Delete metric blocks whose newest sample is older than this; `0s`
    /// keeps them forever.
    pub retention_time: ConfigDuration,
    /// Delete the oldest metric blocks while all metric blocks take more
    /// than this; `0` means no size limit.
    pub retention_size: ByteSize,
}

impl Default for MetricsStorageConfig {
    fn default() -> Self {
        MetricsStorageConfig {
            head_max_samples: cairn_store::metrics::DEFAULT_HEAD_MAX_SAMPLES,
            flush_interval: ConfigDuration::from_secs(3600),
            out_of_order_window: ConfigDuration(cairn_store::metrics::DEFAULT_OUT_OF_ORDER_WINDOW),
            retention_time: ConfigDuration::from_secs(15 * 86_400),
            retention_size: ByteSize(0),
        }
    }
}

impl Default for StorageConfig {
    fn default() -> Self {
        StorageConfig {
            data_dir: PathBuf::from("./cairn-data"),
            wal: WalConfig::default(),
            logs: LogsStorageConfig::default(),
            metrics: MetricsStorageConfig::default(),
            compaction: CompactionConfig::default(),
        }
    }
}

/// `[storage.logs]`: when in-memory log data is written to blocks.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogsStorageConfig {
    /// Flush the in-memory head to a compressed block once it holds this
    /// much (lines + structured metadata). Bounds memory: the head plus one
    /// head being flushed.
    pub head_max_size: ByteSize,
    /// Flush the head once its oldest data is this old, so the WAL stays short.
    pub flush_interval: ConfigDuration,
    /// Accept entries up to this much older than their stream's newest
    /// entry; older ones are refused as "entry too far behind" (`0s`:
    /// strictly in order).
    pub out_of_order_window: ConfigDuration,
    /// Delete log blocks whose newest line is older than this; `0s` keeps
    /// them forever.
    pub retention_time: ConfigDuration,
    /// Delete the oldest log blocks while all log blocks take more than
    /// this; `0` means no size limit.
    pub retention_size: ByteSize,
    /// Memory for decompressed chunks that line-filter queries read, kept
    /// for the next query over them; `0` turns it off.
    pub chunk_cache_size: ByteSize,
}

impl Default for LogsStorageConfig {
    fn default() -> Self {
        LogsStorageConfig {
            head_max_size: ByteSize::mib(64),
            flush_interval: ConfigDuration::from_secs(600),
            out_of_order_window: ConfigDuration(cairn_store::logs::DEFAULT_OUT_OF_ORDER_WINDOW),
            retention_time: ConfigDuration::from_secs(30 * 86_400),
            retention_size: ByteSize(0),
            chunk_cache_size: ByteSize(cairn_store::logs::DEFAULT_CHUNK_CACHE_BYTES),
        }
    }
}

/// `[storage.wal]`: write-ahead log settings, shared by metrics and logs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WalConfig {
    /// When writes reach the disk before they are acknowledged:
    /// `always` (fsync per write; nothing acknowledged is ever lost),
    /// `interval` (fsync every `fsync_interval`; a power cut loses up to that
    /// much, a process crash loses nothing), or `never` (the OS decides; a
    /// power cut can lose ~30 s).
    pub fsync: FsyncPolicy,
    /// Flush period for `fsync = "interval"`.
    pub fsync_interval: ConfigDuration,
    /// Size at which a WAL segment file is closed and a new one started.
    pub segment_size: ByteSize,
}

impl Default for WalConfig {
    fn default() -> Self {
        WalConfig {
            fsync: FsyncPolicy::Always,
            fsync_interval: ConfigDuration::from_secs(1),
            segment_size: ByteSize::mib(128),
        }
    }
}

/// `[limits]`: what a write may contain and how much a tenant may write.
/// Violations are refused with HTTP 400/413/429 and a message naming the
/// limit, and counted in `cairn_ingest_rejected_total`. Every key can be set
/// per tenant in `[tenants."<id>".limits]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Largest request body accepted, as sent (compressed). Larger: HTTP 413.
    pub max_request_size: ByteSize,
    /// Largest request body after decompression. Larger: HTTP 413.
    pub max_decompressed_size: ByteSize,
    /// Longest log line accepted; longer entries are refused (the rest of the
    /// push is stored), or cut to this size with `max_line_size_truncate`.
    pub max_line_size: ByteSize,
    /// Store overlong lines cut to `max_line_size` instead of refusing them
    /// (Loki's `max_line_size_truncate`).
    pub max_line_size_truncate: bool,
    /// Most labels on one series or stream, including `__name__`.
    pub max_labels_per_series: usize,
    /// Longest label name.
    pub max_label_name_length: usize,
    /// Longest label value.
    pub max_label_value_length: usize,
    /// Loki's `discover_service_name`: a log stream without a
    /// `service_name` label gets one, copied from the first of these labels
    /// it has, else `unknown_service`. Empty list: no `service_name` is added.
    pub discover_service_name: Vec<String>,
    /// Loki's `discover_log_levels`: every log entry gets a `detected_level`
    /// structured-metadata field (from a level label or metadata field named
    /// in `log_level_fields`, else the line's JSON or logfmt field, else
    /// words in the line), unless it has one already.
    pub discover_log_levels: bool,
    /// Loki's `log_level_fields`: label, metadata and line field names a
    /// level is read from, in order of preference.
    pub log_level_fields: Vec<String>,
    /// Most distinct values one label promoted by pipeline `labels` stages
    /// may take per tenant; further values are kept as structured metadata
    /// instead (counted in `cairn_pipeline_label_limit_hits_total`); 0: no
    /// limit.
    pub pipeline_max_label_values: usize,
    /// Log bytes (lines plus structured metadata) a tenant may push per
    /// second, averaged by a token bucket of `logs_ingestion_burst`; a push
    /// over it gets HTTP 429 with `Retry-After`. `0`: no limit.
    pub logs_ingestion_rate: ByteSize,
    /// Bucket size for `logs_ingestion_rate`: the most a tenant may push at
    /// once after being idle.
    pub logs_ingestion_burst: ByteSize,
    /// Samples (floats and native histograms) a tenant may write per second;
    /// over it: HTTP 429 with `Retry-After`. `0`: no limit.
    pub metrics_ingestion_rate: u64,
    /// Bucket size for `metrics_ingestion_rate`, in samples.
    pub metrics_ingestion_burst: u64,
    /// Most log streams a tenant may have active (written to within
    /// `active_window`); entries of further new streams are refused. `0`:
    /// no limit.
    pub max_active_streams: usize,
    /// Most series a tenant may have active (written to within
    /// `active_window`); samples of further new series are refused. `0`: no
    /// limit.
    pub max_active_series: usize,
    /// How long a stream or series stays active after its last write.
    pub active_window: ConfigDuration,
    /// Log entries older than this (by their timestamp, against the clock)
    /// are refused, Loki's `reject_old_samples_max_age`. `0s`: no limit.
    pub logs_reject_older_than: ConfigDuration,
    /// Metric samples older than this are refused. `0s`: no limit (as
    /// Prometheus: the per-series out-of-order window still applies).
    pub metrics_reject_older_than: ConfigDuration,
    /// Entries and samples more than this ahead of the clock are refused,
    /// Loki's and Mimir's `creation_grace_period`. `0s`: no limit.
    pub reject_newer_than: ConfigDuration,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            max_request_size: ByteSize::mib(64),
            max_decompressed_size: ByteSize::mib(256),
            max_line_size: ByteSize::kib(256),
            max_labels_per_series: 30,
            max_label_name_length: 1024,
            max_label_value_length: 2048,
            discover_service_name: crate::discover::DEFAULT_SERVICE_NAME_LABELS.iter().map(|s| s.to_string()).collect(),
            discover_log_levels: true,
            log_level_fields: crate::discover::DEFAULT_LEVEL_FIELDS.iter().map(|s| s.to_string()).collect(),
            pipeline_max_label_values: 100,
            max_line_size_truncate: false,
            logs_ingestion_rate: ByteSize(0),
            logs_ingestion_burst: ByteSize::mib(64),
            metrics_ingestion_rate: 0,
            metrics_ingestion_burst: 2_000_000,
            max_active_streams: 10_000,
            max_active_series: 1_000_000,
            active_window: ConfigDuration::from_secs(3600),
            logs_reject_older_than: ConfigDuration::from_secs(7 * 86_400),
            metrics_reject_older_than: ConfigDuration::from_secs(0),
            reject_newer_than: ConfigDuration::from_secs(600),
        }
    }
}

/// `[query]`: query engine settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct QueryConfig {
    /// PromQL lookback delta: how far back an instant vector selector looks
    /// for the latest sample.
    pub lookback_delta: ConfigDuration,
    /// Largest `limit` a log query may ask for (Loki's
    /// `max_entries_limit_per_query`).
    pub max_entries_limit: usize,
    /// Longest a PromQL query may evaluate before it fails with Prometheus's
    /// `timeout` error (HTTP 503); a request's `timeout` parameter can only
    /// shorten it; `0s` disables it (Prometheus's `--query.timeout`).
    pub timeout: ConfigDuration,
    /// Most samples one PromQL query may load (selected samples plus
    /// range-query result points); more fail with HTTP 422 (Prometheus's
    /// `--query.max-samples`).
    pub max_samples: usize,
    /// Most series one PromQL query may select, summed over its selectors;
    /// more fail with HTTP 422 `execution`.
    pub max_series: usize,
    /// Most PromQL queries evaluated at once; more wait for a free slot, at
    /// most until their timeout (Prometheus's `--query.max-concurrency`).
    pub max_concurrency: usize,
    /// Longest time range a LogQL query may cover (Loki's
    /// `max_query_length`); `0s`: no limit.
    pub logql_max_query_length: ConfigDuration,
    /// Most series a LogQL metric query may return (Loki's
    /// `max_query_series`); 0: no limit.
    pub logql_max_series: usize,
    /// Longest a LogQL query (or a detected-fields or patterns request) may
    /// evaluate before it fails with Loki's timeout error (HTTP 504), Loki's
    /// `query_timeout`; `0s` disables it.
    pub logql_timeout: ConfigDuration,
    /// Memory for cached PromQL range-query answers (VictoriaMetrics's
    /// rollup result cache); `0` turns the cache off. One cache for the
    /// whole server.
    pub result_cache_size: ByteSize,
    /// Range-query steps newer than this before the query's time are not
    /// cached (they may still fill in), VictoriaMetrics's
    /// `-search.cacheTimestampOffset`.
    pub result_cache_timestamp_offset: ConfigDuration,
}

impl Default for QueryConfig {
    fn default() -> Self {
        QueryConfig {
            lookback_delta: ConfigDuration::from_secs(300),
            max_entries_limit: 5000,
            timeout: ConfigDuration::from_secs(120),
            max_samples: 50_000_000,
            max_series: 1_000_000,
            max_concurrency: 20,
            logql_max_query_length: ConfigDuration::from_secs(721 * 3600),
            logql_max_series: 500,
            logql_timeout: ConfigDuration::from_secs(60),
            result_cache_size: ByteSize::mib(64),
            result_cache_timestamp_offset: ConfigDuration::from_secs(300),
        }
    }
}

/// `[tenants."<id>"]`: settings of one tenant that differ from the
/// defaults. Tenants not listed use the defaults.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TenantConfig {
    /// This tenant's log age limit instead of `storage.logs.retention_time`
    /// (`0s`: forever). Its older logs are hidden from queries at once and
    /// deleted within a day.
    pub logs_retention_time: Option<ConfigDuration>,
    /// Likewise for metrics, instead of `storage.metrics.retention_time`.
    pub metrics_retention_time: Option<ConfigDuration>,
    /// This tenant's `limits.pipeline_max_label_values`.
    pub pipeline_max_label_values: Option<usize>,
    /// `[tenants."<id>".limits]`: any `[limits]` key, for this tenant.
    #[serde(skip_serializing_if = "toml::Table::is_empty")]
    pub limits: toml::Table,
    /// `[tenants."<id>".query]`: any `[query]` key except
    /// `max_concurrency` (one pool for the whole server), for this tenant.
    #[serde(skip_serializing_if = "toml::Table::is_empty")]
    pub query: toml::Table,
}

/// `base` with the keys of `over` replacing its own: how a tenant's
/// `[tenants."<id>".limits]` and `.query` tables apply. Unknown keys and
/// bad values are errors naming `what`.
fn overlay<T: Serialize + serde::de::DeserializeOwned>(base: &T, over: &toml::Table, what: &str) -> Result<T, String> {
    let mut t = toml::Table::try_from(base).map_err(|e| format!("{what}: {e}"))?;
    for (k, v) in over {
        t.insert(k.clone(), v.clone());
    }
    t.try_into().map_err(|e: toml::de::Error| format!("{what}: {}", e.message()))
}

/// Everything the aggregator needs.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AggregatorConfig {
    /// `[server]`
    pub server: ServerConfig,
    /// `[storage]`
    pub storage: StorageConfig,
    /// `[limits]`
    pub limits: LimitsConfig,
    /// `[query]`
    pub query: QueryConfig,
    /// `[tenants."<id>"]`
    pub tenants: std::collections::BTreeMap<String, TenantConfig>,
    /// `[[pipeline]]`: ingest stage chains, in order.
    pub pipeline: Vec<crate::pipeline::PipelineConfig>,
}

impl AggregatorConfig {
    /// The limits the ingest pipeline enforces.
    pub fn pipeline_limits(&self) -> crate::pipeline::PipelineLimits {
        crate::pipeline::PipelineLimits {
            max_label_values: self.limits.pipeline_max_label_values,
            tenant_max_label_values: self
                .tenants
                .iter()
                .filter_map(|(id, t)| Some((id.clone(), t.pipeline_max_label_values?)))
                .collect(),
            max_label_value_length: self.limits.max_label_value_length,
        }
    }

    /// `[limits]` with each configured tenant's `[tenants."<id>".limits]`
    /// on top, by tenant; tenants not listed use `self.limits`.
    pub fn tenant_limits(&self) -> Result<std::collections::HashMap<String, LimitsConfig>, String> {
        let mut out = std::collections::HashMap::new();
        for (id, t) in &self.tenants {
            if !t.limits.is_empty() {
                let l = overlay(&self.limits, &t.limits, &format!("tenants.{id:?}.limits"))?;
                if l.max_labels_per_series == 0 {
                    return Err(format!("tenants.{id:?}.limits.max_labels_per_series must be at least 1"));
                }
                out.insert(id.clone(), l);
            }
        }
        Ok(out)
    }

    /// `[query]` with each configured tenant's `[tenants."<id>".query]` on
    /// top, by tenant; tenants not listed use `self.query`.
    pub fn tenant_query(&self) -> Result<std::collections::HashMap<String, QueryConfig>, String> {
        let mut out = std::collections::HashMap::new();
        for (id, t) in &self.tenants {
            if t.query.contains_key("max_concurrency") {
                return Err(format!(
                    "tenants.{id:?}.query.max_concurrency: the query concurrency limit is one pool for the whole \
                     server; set query.max_concurrency instead"
                ));
            }
            for key in ["result_cache_size", "result_cache_timestamp_offset"] {
                if t.query.contains_key(key) {
                    return Err(format!(
                        "tenants.{id:?}.query.{key}: the result cache is one for the whole server; set query.{key} \
                         instead"
                    ));
                }
            }
            if !t.query.is_empty() {
                let q = overlay(&self.query, &t.query, &format!("tenants.{id:?}.query"))?;
                if q.lookback_delta.0.is_zero() || q.max_series == 0 || q.max_samples == 0 {
                    return Err(format!(
                        "tenants.{id:?}.query: lookback_delta, max_series and max_samples must be greater than 0"
                    ));
                }
                out.insert(id.clone(), q);
            }
        }
        Ok(out)
    }

    /// The retention of each engine, with the tenants' overrides.
    pub fn retention(&self) -> (cairn_store::Retention, cairn_store::Retention) {
        let limit = |d: &ConfigDuration| (!d.0.is_zero()).then_some(d.0);
        let s = &self.storage;
        let mut logs = cairn_store::Retention {
            time: limit(&s.logs.retention_time),
            size: s.logs.retention_size.0,
            ..Default::default()
        };
        let mut metrics = cairn_store::Retention {
            time: limit(&s.metrics.retention_time),
            size: s.metrics.retention_size.0,
            ..Default::default()
        };
        for (id, t) in &self.tenants {
            if let Some(d) = &t.logs_retention_time {
                logs.tenants.insert(id.clone(), limit(d));
            }
            if let Some(d) = &t.metrics_retention_time {
                metrics.tenants.insert(id.clone(), limit(d));
            }
        }
        (logs, metrics)
    }
}
