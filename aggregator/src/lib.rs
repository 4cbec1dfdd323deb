//! Cairn's aggregator: receives writes (Prometheus remote_write, Loki push),
//! validates them against limits, stores them, and answers the Prometheus
//! and Loki HTTP APIs that Grafana uses.
//!
//! Contract:
//! - A write answered 2xx is in the WAL (see `cairn_store`), so it survives
//!   `kill -9` (and, with `fsync = "always"`, power loss).
//! - Bad input gets HTTP 400 (malformed, or some items refused), 413 (too
//!   large) with a message naming the problem; the valid rest of a batch is
//!   stored. Nothing reachable from the network panics.
//! - Response shapes are Prometheus's and Loki's, byte-for-byte where
//!   Grafana depends on them (`../shared/GRAFANA.md`).
//! - Blocking work (WAL fsync, query evaluation) runs off the async reactor.
//!
//! The main type is [`Aggregator`]; [`http::router`] builds the HTTP API.
//! This crate must never read node state or tail files (that is the
//! collector's job), and never define storage formats (the store's).

pub mod auth;
pub mod config;
pub mod discover;
pub mod http;
pub mod limits;
pub mod metadata;
pub mod pipeline;
pub mod selfmetrics;
pub mod serve;
pub mod tls;

use std::sync::Arc;

use cairn_store::layout::{self, DirLock};
use cairn_store::logs::{LogStore, LogStoreOptions};
use cairn_store::metrics::{MetricsStore, MetricsStoreOptions};
use cairn_store::{StoreError, WalOptions, WriteOutcome};
use cairn_wire::{Labels, SeriesSamples, StreamEntries};

pub use config::AggregatorConfig;
use selfmetrics::SelfMetrics;

/// Why the aggregator could not start.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// A store could not be opened.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The `[[pipeline]]` configuration is invalid.
    #[error(transparent)]
    Pipeline(#[from] pipeline::PipelineError),
    /// A tenant's `[tenants."<id>".limits]` or `.query` is invalid.
    #[error("{0}")]
    Tenants(String),
}

/// Why items of a write were refused before reaching the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// A label name or value is invalid or too long, or names repeat.
    InvalidLabels,
    /// More labels than `limits.max_labels_per_series`.
    TooManyLabels,
    /// A stream with no labels at all.
    NoLabels,
    /// A log line longer than `limits.max_line_size`.
    LineTooLong,
    /// A native histogram sample whose spans, buckets, schema or reset hint
    /// are invalid.
    MalformedHistogram,
    /// Older than `limits.logs_reject_older_than` /
    /// `metrics_reject_older_than`.
    TooFarInPast,
    /// Newer than `limits.reject_newer_than` ahead of the clock.
    TooFarInFuture,
    /// A new stream past `limits.max_active_streams`.
    StreamLimit,
    /// A new series past `limits.max_active_series`.
    SeriesLimit,
    /// Over the tenant's ingestion rate (the whole write is refused, 429).
    RateLimited,
}

impl Refusal {
    /// Stable reason label for `cairn_ingest_rejected_total`.
    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::InvalidLabels => "invalid_labels",
            Refusal::TooManyLabels => "too_many_labels",
            Refusal::NoLabels => "no_labels",
            Refusal::LineTooLong => "line_too_long",
            Refusal::MalformedHistogram => "malformed_histogram",
            Refusal::TooFarInPast => "too_far_in_past",
            Refusal::TooFarInFuture => "too_far_in_future",
            Refusal::StreamLimit => "stream_limit",
            Refusal::SeriesLimit => "series_limit",
            Refusal::RateLimited => "rate_limited",
        }
    }
}

/// Result of an ingest call: what was stored and what was refused, with up to
/// a few example messages.
#[derive(Debug, Default, Clone)]
pub struct IngestReport {
    /// Items stored (or accepted as exact duplicates).
    pub accepted: usize,
    /// Items refused.
    pub refused: usize,
    /// First few refusal messages, for the HTTP error body.
    pub messages: Vec<String>,
}

const MAX_MESSAGES: usize = 5;

impl IngestReport {
    fn refuse(&mut self, msg: impl FnOnce() -> String) {
        self.refused += 1;
        if self.messages.len() < MAX_MESSAGES {
            self.messages.push(msg());
        }
    }

    /// Refuses `n` items for the same reason.
    fn refuse_n(&mut self, n: usize, msg: &str) {
        for _ in 0..n {
            self.refuse(|| msg.to_string());
        }
    }

    /// Adds another report's counts and messages.
    pub fn merge(&mut self, o: IngestReport) {
        self.accepted += o.accepted;
        self.refused += o.refused;
        for m in o.messages {
            if self.messages.len() < MAX_MESSAGES {
                self.messages.push(m);
            }
        }
    }

    fn merge_store(&mut self, o: WriteOutcome) {
        self.accepted += o.accepted;
        for (_, m) in o.rejected {
            self.refuse(|| m);
        }
    }

    /// A one-paragraph summary for an HTTP 400 body.
    pub fn error_message(&self) -> String {
        let mut s = format!("{} of {} items refused", self.refused, self.refused + self.accepted);
        for m in &self.messages {
            s.push_str("; ");
            s.push_str(m);
        }
        if self.refused > self.messages.len() {
            s.push_str("; …");
        }
        s
    }
}

/// Bytes of a log entry as the ingestion rate counts them: line plus
/// structured metadata names and values (as Loki).
fn entry_bytes(e: &cairn_wire::Entry) -> u64 {
    (e.line.len() + e.metadata.iter().map(|(k, v)| k.len() + v.len()).sum::<usize>()) as u64
}

/// The running aggregator: stores, limits and self-metrics.
/// Label sets the remote_write path keeps for reuse: well above a homelab's
/// active series; past it the table is cleared and refills.
const INTERNED_SERIES_MAX: usize = 1 << 18;

pub struct Aggregator {
    /// The metrics store.
    pub metrics: MetricsStore,
    /// The log store.
    pub logs: LogStore,
    /// Configuration in force.
    pub config: AggregatorConfig,
    /// Self-observability.
    pub self_metrics: SelfMetrics,
    /// Wakes the maintenance task when the log head is full.
    flush_wanted: tokio::sync::Notify,
    /// Wakes the compaction task (after a flush).
    compact_wanted: tokio::sync::Notify,
    /// Metric metadata seen in remote_write requests.
    pub metadata: metadata::MetadataCache,
    /// When this aggregator started (`/api/v1/status/runtimeinfo`).
    pub started_at: std::time::SystemTime,
    /// Slots for concurrent PromQL evaluations (`query.max_concurrency`).
    pub query_slots: Arc<tokio::sync::Semaphore>,
    /// Cached PromQL range-query answers (`query.result_cache_size`); the
    /// metrics store tells it of every write.
    pub query_cache: Arc<cairn_query::promql::cache::ResultCache>,
    /// The ingest pipeline (`[[pipeline]]`).
    pub pipeline: pipeline::Pipeline,
    /// Rate and cardinality state of the per-tenant limits.
    pub limiter: limits::Limiter,
    /// Tenants with `[tenants."<id>".limits]`: their resolved limits.
    tenant_limits: std::collections::HashMap<String, config::LimitsConfig>,
    /// Tenants with `[tenants."<id>".query]`: their resolved settings.
    tenant_query: std::collections::HashMap<String, config::QueryConfig>,
    /// Label sets of recent remote_write series, shared between requests
    /// (`cairn_wire::intern`).
    pub(crate) series_labels: std::sync::Mutex<cairn_wire::intern::LabelsInterner>,
    _lock: DirLock,
}

impl Aggregator {
    /// Locks the data directory, opens both stores and replays their WALs.
    pub fn open(config: AggregatorConfig) -> Result<Arc<Self>, OpenError> {
        let self_metrics = SelfMetrics::new();
        let pipeline = pipeline::Pipeline::new(&config.pipeline, config.pipeline_limits(), &self_metrics)?;
        let tenant_limits = config.tenant_limits().map_err(OpenError::Tenants)?;
        let tenant_query = config.tenant_query().map_err(OpenError::Tenants)?;
        let dir = &config.storage.data_dir;
        let lock = layout::lock_data_dir(dir)?;
        let wal = WalOptions { fsync: config.storage.wal.fsync, segment_bytes: config.storage.wal.segment_size.0 };
        let metrics = MetricsStore::open_with(
            &layout::metrics_dir(dir),
            MetricsStoreOptions {
                wal: wal.clone(),
                head_max_samples: config.storage.metrics.head_max_samples,
                flush_interval: config.storage.metrics.flush_interval.0,
                out_of_order_window: config.storage.metrics.out_of_order_window.0,
            },
        )?;
        let logs = LogStore::open_with(
            &layout::logs_dir(dir),
            LogStoreOptions {
                wal,
                head_max_bytes: config.storage.logs.head_max_size.0,
                flush_interval: config.storage.logs.flush_interval.0,
                out_of_order_window: config.storage.logs.out_of_order_window.0,
                chunk_cache_bytes: config.storage.logs.chunk_cache_size.0,
            },
        )?;
        let (logs_retention, metrics_retention) = config.retention();
        logs.set_retention(logs_retention);
        metrics.set_retention(metrics_retention);
        for (engine, r) in [("metrics", metrics.replay_stats()), ("logs", logs.replay_stats())] {
            tracing::info!(
                engine,
                segments = r.segments,
                records = r.records,
                torn_tail_bytes = r.torn_tail_bytes,
                corrupt_segments = r.corrupt_segments,
                "WAL replayed"
            );
        }
        let found = [
            ("metrics", metrics.replay_stats(), metrics.corrupt_blocks()),
            ("logs", logs.replay_stats(), logs.corrupt_blocks()),
        ];
        for (engine, r, corrupt) in found {
            for (what, n) in [
                ("corrupt_blocks", corrupt.len() as u64),
                ("wal_corrupt_segments", r.corrupt_segments as u64),
                ("wal_torn_tail_bytes", r.torn_tail_bytes),
            ] {
                let l = vec![("engine", engine.to_string()), ("finding", what.to_string())];
                self_metrics.recovery.get_or_create(&l).set(n as i64);
            }
        }
        let query_slots = Arc::new(tokio::sync::Semaphore::new(config.query.max_concurrency.max(1)));
        let query_cache = Arc::new(cairn_query::promql::cache::ResultCache::new(
            usize::try_from(config.query.result_cache_size.0).unwrap_or(usize::MAX),
            i64::try_from(config.query.result_cache_timestamp_offset.0.as_millis()).unwrap_or(i64::MAX),
        ));
        if query_cache.enabled() {
            let c = query_cache.clone();
            metrics.on_change(move |change| c.changed(change));
        }
        Ok(Arc::new(Aggregator {
            metrics,
            logs,
            config,
            self_metrics,
            flush_wanted: tokio::sync::Notify::new(),
            compact_wanted: tokio::sync::Notify::new(),
            metadata: metadata::MetadataCache::default(),
            series_labels: std::sync::Mutex::new(cairn_wire::intern::LabelsInterner::new(INTERNED_SERIES_MAX)),
            started_at: std::time::SystemTime::now(),
            query_slots,
            query_cache,
            pipeline,
            limiter: limits::Limiter::default(),
            tenant_limits,
            tenant_query,
            _lock: lock,
        }))
    }

    /// The limits in force for `tenant`: `[limits]` with its
    /// `[tenants."<id>".limits]` on top.
    pub fn limits_for(&self, tenant: &str) -> &config::LimitsConfig {
        self.tenant_limits.get(tenant).unwrap_or(&self.config.limits)
    }

    /// The largest `limits.max_request_size` of any tenant: the body limit
    /// of the HTTP layer, before a handler checks its tenant's own.
    pub fn max_request_size(&self) -> u64 {
        self.tenant_limits.values().map(|l| l.max_request_size.0).fold(self.config.limits.max_request_size.0, u64::max)
    }

    /// The query settings for `tenant`: `[query]` with its
    /// `[tenants."<id>".query]` on top.
    pub fn query_for(&self, tenant: &str) -> &config::QueryConfig {
        self.tenant_query.get(tenant).unwrap_or(&self.config.query)
    }

    /// Admits a Loki push under the tenant's ingestion rate limit, before
    /// anything of it is stored; refusals are counted.
    pub fn admit_log_rate(&self, tenant: &str, batch: &[StreamEntries]) -> Result<(), limits::RateLimited> {
        let limits = self.limits_for(tenant);
        if limits.logs_ingestion_rate.0 == 0 {
            return Ok(());
        }
        let (mut lines, mut bytes) = (0usize, 0u64);
        for s in batch {
            lines += s.entries.len();
            bytes += s.entries.iter().map(entry_bytes).sum::<u64>();
        }
        self.limiter.admit_logs(tenant, limits, lines, bytes).inspect_err(|_| {
            self.self_metrics.reject("entries", Refusal::RateLimited.as_str(), lines as u64);
        })
    }

    /// Admits a remote_write of `samples` samples under the tenant's
    /// ingestion rate limit; refusals are counted.
    pub fn admit_sample_rate(&self, tenant: &str, samples: usize) -> Result<(), limits::RateLimited> {
        self.limiter.admit_samples(tenant, self.limits_for(tenant), samples).inspect_err(|_| {
            self.self_metrics.reject("samples", Refusal::RateLimited.as_str(), samples as u64);
        })
    }

    fn check_labels(l: &config::LimitsConfig, labels: &Labels) -> Result<(), (Refusal, String)> {
        if labels.len() > l.max_labels_per_series {
            return Err((
                Refusal::TooManyLabels,
                format!(
                    "{labels} has {} labels, more than limits.max_labels_per_series = {}",
                    labels.len(),
                    l.max_labels_per_series
                ),
            ));
        }
        for lb in labels {
            if lb.name.len() > l.max_label_name_length {
                return Err((
                    Refusal::InvalidLabels,
                    format!(
                        "label name {:?}… is longer than limits.max_label_name_length = {}",
                        &lb.name[..32.min(lb.name.len())],
                        l.max_label_name_length
                    ),
                ));
            }
            if lb.value.len() > l.max_label_value_length {
                return Err((
                    Refusal::InvalidLabels,
                    format!(
                        "value of label {:?} is longer than limits.max_label_value_length = {}",
                        lb.name, l.max_label_value_length
                    ),
                ));
            }
        }
        Ok(())
    }

    /// Keeps the series (or streams) of `batch` whose labels pass the label
    /// limits and which may be written under the active-series (streams)
    /// limit; the items of the others are refused into `report` and counted
    /// as `kind`.
    fn admit_labels<T>(
        &self,
        tenant: &str,
        engine: limits::Engine,
        batch: Vec<T>,
        parts: impl Fn(&T) -> (&Labels, usize),
        report: &mut IngestReport,
    ) -> Vec<T> {
        let l = self.limits_for(tenant);
        let (kind, max, what) = match engine {
            limits::Engine::Metrics => ("samples", l.max_active_series, "series"),
            limits::Engine::Logs => ("entries", l.max_active_streams, "streams"),
        };
        let mut refuse = |n: usize, why: Refusal, msg: String| {
            self.self_metrics.reject(kind, why.as_str(), n as u64);
            report.refuse_n(n, &msg);
        };
        let mut ok = Vec::with_capacity(batch.len());
        for s in batch {
            let (labels, n) = parts(&s);
            match Self::check_labels(l, labels) {
                Ok(()) => ok.push(s),
                Err((why, msg)) => refuse(n, why, msg),
            }
        }
        if max == 0 {
            return ok;
        }
        let keys: Vec<u64> = ok.iter().map(|s| parts(s).0.content_hash()).collect();
        let admitted = self.limiter.admit_active(tenant, engine, max, &keys);
        let mut admitted = admitted.into_iter();
        ok.retain(|s| {
            if admitted.next().unwrap_or(true) {
                return true;
            }
            let (labels, n) = parts(s);
            let (why, key) = match engine {
                limits::Engine::Metrics => (Refusal::SeriesLimit, "max_active_series"),
                limits::Engine::Logs => (Refusal::StreamLimit, "max_active_streams"),
            };
            refuse(
                n,
                why,
                format!(
                    "{what} {labels} refused: tenant {tenant:?} already has limits.{key} = {max} active {what} \
                     (written within limits.active_window = {}); reduce the number of {what} (fewer labels or \
                     label values) or raise the limit",
                    l.active_window
                ),
            );
            false
        });
        ok
    }

    /// The window of timestamps (ms) `engine` accepts now under `l`.
    fn time_window_ms(l: &config::LimitsConfig, engine: limits::Engine) -> (i64, i64) {
        let now = cairn_wire::time::now_ns() / 1_000_000;
        let older = match engine {
            limits::Engine::Metrics => l.metrics_reject_older_than,
            limits::Engine::Logs => l.logs_reject_older_than,
        };
        let min = if older.0.is_zero() { i64::MIN } else { now.saturating_sub(older.as_millis()) };
        let max = if l.reject_newer_than.0.is_zero() {
            i64::MAX
        } else {
            now.saturating_add(l.reject_newer_than.as_millis())
        };
        (min, max)
    }

    /// Drops the samples (timestamps in ms, via `ts`) outside the tenant's
    /// accepted time window, refusing them into `report` with Loki's and
    /// Mimir's wording plus the limit's name.
    fn admit_times<S>(
        &self,
        tenant: &str,
        engine: limits::Engine,
        labels: &Labels,
        items: &mut Vec<S>,
        ts_ms: impl Fn(&S) -> i64,
        report: &mut IngestReport,
    ) {
        let l = self.limits_for(tenant);
        let (min, max) = Self::time_window_ms(l, engine);
        if items.iter().all(|s| (min..=max).contains(&ts_ms(s))) {
            return;
        }
        let (kind, what, older_key, older) = match engine {
            limits::Engine::Metrics => {
                ("samples", "sample for series", "metrics_reject_older_than", l.metrics_reject_older_than)
            }
            limits::Engine::Logs => ("entries", "entry for stream", "logs_reject_older_than", l.logs_reject_older_than),
        };
        let fmt = |ms: i64| cairn_wire::time::format_rfc3339_ns(ms.saturating_mul(1_000_000));
        let (mut old, mut new) = (0u64, 0u64);
        items.retain(|s| {
            let t = ts_ms(s);
            if t < min {
                old += 1;
                report.refuse(|| {
                    format!(
                        "{what} {labels} has timestamp too old: {}, oldest acceptable timestamp is: {} \
                         (limits.{older_key} = {older})",
                        fmt(t),
                        fmt(min)
                    )
                });
                false
            } else if t > max {
                new += 1;
                report.refuse(|| {
                    format!(
                        "{what} {labels} has timestamp too new: {}, newest acceptable timestamp is: {} \
                         (limits.reject_newer_than = {})",
                        fmt(t),
                        fmt(max),
                        l.reject_newer_than
                    )
                });
                false
            } else {
                true
            }
        });
        if old > 0 {
            self.self_metrics.reject(kind, Refusal::TooFarInPast.as_str(), old);
        }
        if new > 0 {
            self.self_metrics.reject(kind, Refusal::TooFarInFuture.as_str(), new);
        }
    }

    /// Validates and stores metric samples for `tenant` (blocking: call from
    /// a blocking thread). Invalid series are refused; the rest is stored.
    pub fn ingest_metrics(&self, tenant: &str, batch: Vec<SeriesSamples>) -> Result<IngestReport, StoreError> {
        let mut report = IngestReport::default();
        let engine = limits::Engine::Metrics;
        let mut ok = self.admit_labels(tenant, engine, batch, |s| (&s.labels, s.samples.len()), &mut report);
        for s in &mut ok {
            self.admit_times(tenant, engine, &s.labels, &mut s.samples, |x| x.0, &mut report);
        }
        let n: usize = ok.iter().map(|s| s.samples.len()).sum();
        let outcome = self.metrics.append(tenant, ok).inspect_err(|e| self.count_store_failure(e, "samples", n))?;
        if self.metrics.flush_due() {
            self.flush_wanted.notify_one();
        }
        for (r, _) in &outcome.rejected {
            self.self_metrics.reject("samples", r.as_str(), 1);
        }
        self.self_metrics.samples_ingested.inc_by(outcome.accepted as u64);
        report.merge_store(outcome);
        Ok(report)
    }

    /// Validates and stores native-histogram samples for `tenant`
    /// (blocking), counted in the same ingest metrics as float samples.
    pub fn ingest_histograms(
        &self,
        tenant: &str,
        batch: Vec<cairn_wire::SeriesHistograms>,
    ) -> Result<IngestReport, StoreError> {
        let mut report = IngestReport::default();
        let engine = limits::Engine::Metrics;
        let mut ok = self.admit_labels(tenant, engine, batch, |s| (&s.labels, s.histograms.len()), &mut report);
        for s in &mut ok {
            self.admit_times(tenant, engine, &s.labels, &mut s.histograms, |x| x.0, &mut report);
        }
        ok.retain(|s| !s.histograms.is_empty());
        if ok.is_empty() {
            return Ok(report);
        }
        let n: usize = ok.iter().map(|s| s.histograms.len()).sum();
        let outcome =
            self.metrics.append_histograms(tenant, ok).inspect_err(|e| self.count_store_failure(e, "samples", n))?;
        if self.metrics.flush_due() {
            self.flush_wanted.notify_one();
        }
        for (r, _) in &outcome.rejected {
            self.self_metrics.reject("samples", r.as_str(), 1);
        }
        self.self_metrics.samples_ingested.inc_by(outcome.accepted as u64);
        report.merge_store(outcome);
        Ok(report)
    }

    /// Validates and stores log entries for `tenant` (blocking: call from a
    /// blocking thread). Streams first get Loki 3's `service_name` label and
    /// `detected_level` metadata ([`discover`]). Invalid streams and
    /// overlong lines are refused (or cut, with `max_line_size_truncate`);
    /// the rest is stored.
    pub fn ingest_logs(&self, tenant: &str, batch: Vec<StreamEntries>) -> Result<IngestReport, StoreError> {
        // The ingest pipeline (`[[pipeline]]`): its one call on the push path.
        let batch = self.pipeline.apply(tenant, batch, cairn_wire::time::now_ns());
        let l = self.limits_for(tenant);
        let mut report = IngestReport::default();
        let max_line = l.max_line_size.0 as usize;
        let mut named = Vec::with_capacity(batch.len());
        for mut s in batch {
            if s.labels.is_empty() {
                let msg = "error at least one label pair is required per stream";
                self.self_metrics.reject("entries", Refusal::NoLabels.as_str(), s.entries.len() as u64);
                report.refuse_n(s.entries.len(), msg);
                continue;
            }
            // Loki 3: `service_name` and `detected_level`, before validation
            // as in Loki (the added label counts toward the limits).
            discover::discover_service_and_level(l, &mut s);
            named.push(s);
        }
        let engine = limits::Engine::Logs;
        let mut ok = self.admit_labels(tenant, engine, named, |s| (&s.labels, s.entries.len()), &mut report);
        let mut bytes = 0u64;
        let mut truncated = 0u64;
        for s in &mut ok {
            self.admit_times(tenant, engine, &s.labels, &mut s.entries, |e| e.ts.div_euclid(1_000_000), &mut report);
            let before = s.entries.len();
            let labels = &s.labels;
            s.entries.retain_mut(|e| {
                if e.line.len() > max_line {
                    if l.max_line_size_truncate {
                        let mut cut = max_line;
                        while !e.line.is_char_boundary(cut) {
                            cut -= 1;
                        }
                        e.line.truncate(cut);
                        truncated += 1;
                    } else {
                        report.refuse(|| {
                            format!(
                                "line of {} bytes for stream {labels} is longer than limits.max_line_size = {max_line}",
                                e.line.len()
                            )
                        });
                        return false;
                    }
                }
                bytes += e.line.len() as u64;
                true
            });
            let dropped = before - s.entries.len();
            if dropped > 0 {
                self.self_metrics.reject("entries", Refusal::LineTooLong.as_str(), dropped as u64);
            }
        }
        if truncated > 0 {
            self.self_metrics.lines_truncated.inc_by(truncated);
        }
        ok.retain(|s| !s.entries.is_empty());
        let n: usize = ok.iter().map(|s| s.entries.len()).sum();
        let outcome = self.logs.push(tenant, ok).inspect_err(|e| self.count_store_failure(e, "entries", n))?;
        if self.logs.flush_due() {
            self.flush_wanted.notify_one();
        }
        for (r, _) in &outcome.rejected {
            self.self_metrics.reject("entries", r.as_str(), 1);
        }
        self.self_metrics.lines_ingested.inc_by(outcome.accepted as u64);
        self.self_metrics.line_bytes_ingested.inc_by(bytes);
        report.merge_store(outcome);
        Ok(report)
    }

    /// Appends the samples pipeline `metrics` stages have due (blocking;
    /// called by the maintenance task) through the normal metrics ingest
    /// path, for each tenant.
    pub fn write_pipeline_metrics(&self) {
        for (tenant, batch) in self.pipeline.collect_metrics(cairn_wire::time::now_ns()) {
            match self.ingest_metrics(&tenant, batch) {
                Ok(r) if r.refused > 0 => {
                    tracing::warn!(tenant, refused = r.refused, error = %r.error_message(), "pipeline metric samples refused")
                }
                Ok(_) => {}
                Err(e) => tracing::error!(tenant, error = %e, "pipeline metric samples not stored"),
            }
        }
    }

    /// Counts the `n` items of a write the store failed, by cause.
    fn count_store_failure(&self, e: &StoreError, kind: &'static str, n: usize) {
        let reason = if e.is_disk_full() { "disk_full" } else { "store_error" };
        self.self_metrics.reject(kind, reason, n as u64);
    }

    /// Writes each engine's head to a block if it is due (size or age),
    /// counting the flushes (blocking). True when a block was written.
    pub fn flush_if_due(&self) -> bool {
        let mut wrote = false;
        if self.logs.flush_due() {
            wrote |= self.flush_engine("logs");
        }
        if self.metrics.flush_due() {
            wrote |= self.flush_engine("metrics");
        }
        wrote
    }

    /// Writes both heads to blocks now (blocking), e.g. at shutdown.
    pub fn flush_all(&self) {
        self.flush_engine("logs");
        self.flush_engine("metrics");
    }

    /// Flushes one engine's head; failures are logged and counted, the data
    /// stays in the WAL and the head. True when a block was written.
    fn flush_engine(&self, engine: &'static str) -> bool {
        let started = std::time::Instant::now();
        let res = match engine {
            "logs" => self.logs.flush(),
            _ => self.metrics.flush(),
        };
        let count = |result: &str| {
            self.self_metrics.flushes.get_or_create(&vec![("engine", engine.into()), ("result", result.into())]).inc();
        };
        match res {
            Ok(0) => false,
            Ok(n) => {
                count("ok");
                tracing::debug!(engine, items = n, secs = started.elapsed().as_secs_f64(), "head flushed to a block");
                true
            }
            Err(e) => {
                count("error");
                tracing::error!(engine, error = %e, "flush failed; data stays in the WAL and will be retried");
                false
            }
        }
    }

    /// Enforces retention in both engines (blocking): blocks past
    /// `retention_time` (or a tenant's own) and past `retention_size` are
    /// deleted, blocks holding data of tenants past their own limit
    /// rewritten; counted in `cairn_retention_*`.
    pub fn apply_retention(&self) {
        let results =
            [("logs", self.logs.apply_retention_policy()), ("metrics", self.metrics.apply_retention_policy())];
        for (engine, r) in results {
            match r {
                Ok(st) => {
                    let l = vec![("engine", engine.to_string())];
                    let m = &self.self_metrics;
                    if st.blocks_deleted > 0 {
                        m.retention_blocks.get_or_create(&l).inc_by(st.blocks_deleted as u64);
                        m.retention_bytes.get_or_create(&l).inc_by(st.bytes_deleted);
                    }
                    if st.blocks_rewritten > 0 {
                        m.retention_rewrites.get_or_create(&l).inc_by(st.blocks_rewritten as u64);
                        m.retention_bytes.get_or_create(&l).inc_by(st.bytes_dropped);
                    }
                }
                Err(e) => tracing::error!(engine, error = %e, "retention failed"),
            }
        }
    }

    /// Merges small blocks in both engines (blocking; at most a few merges
    /// per call so shutdown is never held up long); counted in
    /// `cairn_compaction*`.
    pub fn compact(&self) {
        let c = &self.config.storage.compaction;
        let ms: Vec<i64> = c.ranges.iter().map(|d| d.as_millis()).filter(|&m| m > 0).collect();
        if ms.is_empty() {
            return;
        }
        let metrics = cairn_store::CompactionPolicy { ranges: ms.clone(), max_block_bytes: c.max_block_size.0 };
        let logs = cairn_store::CompactionPolicy {
            ranges: ms.iter().map(|m| m.saturating_mul(1_000_000)).collect(),
            max_block_bytes: c.max_block_size.0,
        };
        for (engine, r) in [("metrics", self.metrics.compact(&metrics, 4)), ("logs", self.logs.compact(&logs, 4))] {
            match r {
                Ok(st) if st.runs > 0 => {
                    let l = vec![("engine", engine.to_string())];
                    let m = &self.self_metrics;
                    m.compactions.get_or_create(&l).inc_by(st.runs);
                    m.compaction_blocks.get_or_create(&l).inc_by(st.blocks_merged);
                    m.compaction_bytes_before.get_or_create(&l).inc_by(st.bytes_before);
                    m.compaction_bytes_after.get_or_create(&l).inc_by(st.bytes_after);
                }
                Ok(_) => {}
                Err(e) => tracing::error!(engine, error = %e, "compaction failed; the blocks stay as they are"),
            }
        }
    }

    /// Background upkeep until `stop` turns true: head flushes (when a head
    /// fills, or by age), retention and compaction after each flush and once
    /// a minute and, with
    /// `fsync = "interval"`, periodic WAL fsync.
    pub async fn run_maintenance(self: Arc<Self>, mut stop: tokio::sync::watch::Receiver<bool>) {
        let fsync_every = (self.config.storage.wal.fsync == cairn_store::FsyncPolicy::Interval)
            .then_some(self.config.storage.wal.fsync_interval.0);
        let mut last_sync = std::time::Instant::now();
        let mut last_retention: Option<std::time::Instant> = None;
        let mut tick = tokio::time::interval(std::time::Duration::from_millis(250));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // Compaction runs in its own task: a long merge (recompressing log
        // chunks) must never hold up flushes, or heads grow while it runs
        // (measured: peak RSS 1.5 GB on the PEERS workload when it did).
        tokio::spawn(self.clone().run_compaction(stop.clone()));
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = self.flush_wanted.notified() => {}
                _ = async { stop.wait_for(|s| *s).await.map(|_| ()) } => return,
            }
            let agg = self.clone();
            let sync_now = fsync_every.is_some_and(|e| last_sync.elapsed() >= e);
            if sync_now {
                last_sync = std::time::Instant::now();
            }
            let retention_now = last_retention.is_none_or(|t| t.elapsed() >= std::time::Duration::from_secs(60));
            if retention_now {
                last_retention = Some(std::time::Instant::now());
            }
            let _ = tokio::task::spawn_blocking(move || {
                agg.write_pipeline_metrics();
                if retention_now {
                    agg.limiter.prune(|t| agg.limits_for(t).active_window.0);
                }
                // Retention also runs after each flush: a new block may push
                // the total over `retention_size`.
                if agg.flush_if_due() || retention_now {
                    agg.apply_retention();
                    agg.compact_wanted.notify_one();
                }
                if sync_now && let Err(e) = agg.sync() {
                    tracing::error!(error = %e, "WAL fsync failed");
                }
            })
            .await;
        }
    }

    /// Compaction until `stop` turns true: after flushes (woken by the
    /// maintenance task) and once a minute, one pass at a time.
    async fn run_compaction(self: Arc<Self>, mut stop: tokio::sync::watch::Receiver<bool>) {
        let mut tick = tokio::time::interval(std::time::Duration::from_secs(60));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = self.compact_wanted.notified() => {}
                _ = async { stop.wait_for(|s| *s).await.map(|_| ()) } => return,
            }
            let agg = self.clone();
            let _ = tokio::task::spawn_blocking(move || agg.compact()).await;
        }
    }

    /// Flushes both WALs (for `fsync = "interval"` and at shutdown).
    pub fn sync(&self) -> Result<(), StoreError> {
        self.metrics.sync()?;
        self.logs.sync()
    }

    /// Refreshes gauges and renders `/metrics`.
    pub fn render_self_metrics(&self) -> String {
        let m = &self.self_metrics;
        m.wal_size.get_or_create(&vec![("engine", "metrics".into())]).set(self.metrics.wal_size_bytes() as i64);
        m.wal_size.get_or_create(&vec![("engine", "logs".into())]).set(self.logs.wal_size_bytes() as i64);
        m.head_series.get_or_create(&vec![("engine", "metrics".into())]).set(self.metrics.counts().0 as i64);
        m.head_series.get_or_create(&vec![("engine", "logs".into())]).set(self.logs.counts().0 as i64);
        for (engine, (blocks, bytes)) in [("logs", self.logs.block_stats()), ("metrics", self.metrics.block_stats())] {
            m.blocks.get_or_create(&vec![("engine", engine.into())]).set(blocks as i64);
            m.block_bytes.get_or_create(&vec![("engine", engine.into())]).set(bytes as i64);
        }
        m.head_bytes.get_or_create(&vec![("engine", "logs".into())]).set(self.logs.head_bytes() as i64);
        m.head_bytes.get_or_create(&vec![("engine", "metrics".into())]).set(16 * self.metrics.head_samples() as i64);
        use std::sync::atomic::Ordering::Relaxed;
        let c = self.query_cache.stats();
        for (result, n) in
            [("hit", c.hits), ("partial_hit", c.partial_hits), ("miss", c.misses), ("bypass", c.bypassed)]
        {
            // The cache counts; the counters show its counts.
            m.query_cache_requests.get_or_create(&vec![("result", result.into())]).inner().store(n, Relaxed);
        }
        m.query_cache_invalidations.inner().store(c.invalidations, Relaxed);
        m.query_cache_evictions.inner().store(c.evictions, Relaxed);
        m.query_cache_entries.set(c.entries as i64);
        m.query_cache_bytes.set(c.bytes as i64);
        m.active.clear();
        for (tenant, streams, series) in self.limiter.active_counts() {
            for (engine, n) in [("logs", streams), ("metrics", series)] {
                m.active.get_or_create(&vec![("engine", engine.into()), ("tenant", tenant.clone())]).set(n as i64);
            }
        }
        m.encode()
    }
}
