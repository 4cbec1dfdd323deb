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
pub mod metadata;
pub mod pipeline;
pub mod selfmetrics;
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
    /// The ingest pipeline (`[[pipeline]]`).
    pub pipeline: pipeline::Pipeline,
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
            pipeline,
            _lock: lock,
        }))
    }

    fn check_labels(&self, labels: &Labels) -> Result<(), (Refusal, String)> {
        let l = &self.config.limits;
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

    /// Validates and stores metric samples for `tenant` (blocking: call from
    /// a blocking thread). Invalid series are refused; the rest is stored.
    pub fn ingest_metrics(&self, tenant: &str, batch: Vec<SeriesSamples>) -> Result<IngestReport, StoreError> {
        let mut report = IngestReport::default();
        let mut ok = Vec::with_capacity(batch.len());
        for s in batch {
            match self.check_labels(&s.labels) {
                Ok(()) => ok.push(s),
                Err((why, msg)) => {
                    self.self_metrics.reject("samples", why.as_str(), s.samples.len() as u64);
                    for _ in 0..s.samples.len() {
                        report.refuse(|| msg.clone());
                    }
                }
            }
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
        let mut ok = Vec::with_capacity(batch.len());
        for s in batch {
            match self.check_labels(&s.labels) {
                Ok(()) => ok.push(s),
                Err((why, msg)) => {
                    self.self_metrics.reject("samples", why.as_str(), s.histograms.len() as u64);
                    for _ in 0..s.histograms.len() {
                        report.refuse(|| msg.clone());
                    }
                }
            }
        }
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
    /// overlong lines are refused; the rest is stored.
    pub fn ingest_logs(&self, tenant: &str, batch: Vec<StreamEntries>) -> Result<IngestReport, StoreError> {
        // The ingest pipeline (`[[pipeline]]`): its one call on the push path.
        let batch = self.pipeline.apply(tenant, batch, cairn_wire::time::now_ns());
        let mut report = IngestReport::default();
        let max_line = self.config.limits.max_line_size.0 as usize;
        let mut ok = Vec::with_capacity(batch.len());
        let mut bytes = 0u64;
        for mut s in batch {
            let check = if s.labels.is_empty() {
                Err((Refusal::NoLabels, "error at least one label pair is required per stream".to_string()))
            } else {
                // Loki 3: `service_name` and `detected_level`, before validation
                // as in Loki (the added label counts toward the limits).
                discover::discover_service_and_level(&self.config.limits, &mut s);
                self.check_labels(&s.labels)
            };
            if let Err((why, msg)) = check {
                self.self_metrics.reject("entries", why.as_str(), s.entries.len() as u64);
                for _ in 0..s.entries.len() {
                    report.refuse(|| msg.clone());
                }
                continue;
            }
            let before = s.entries.len();
            let labels = &s.labels;
            s.entries.retain(|e| {
                if e.line.len() > max_line {
                    report.refuse(|| {
                        format!(
                            "line of {} bytes for stream {labels} is longer than limits.max_line_size = {max_line}",
                            e.line.len()
                        )
                    });
                    false
                } else {
                    bytes += e.line.len() as u64;
                    true
                }
            });
            let dropped = before - s.entries.len();
            if dropped > 0 {
                self.self_metrics.reject("entries", Refusal::LineTooLong.as_str(), dropped as u64);
            }
            ok.push(s);
        }
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
        m.encode()
    }
}
