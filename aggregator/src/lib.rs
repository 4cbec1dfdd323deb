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

pub mod config;
pub mod http;
pub mod metadata;
pub mod selfmetrics;

use std::sync::Arc;

use cairn_store::layout::{self, DirLock};
use cairn_store::logs::LogStore;
use cairn_store::metrics::MetricsStore;
use cairn_store::{StoreError, WalOptions, WriteOutcome};
use cairn_wire::{Labels, SeriesSamples, StreamEntries};

pub use config::AggregatorConfig;
use selfmetrics::SelfMetrics;

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
    /// A native histogram sample (not stored by this version).
    NativeHistogram,
}

impl Refusal {
    /// Stable reason label for `cairn_ingest_rejected_total`.
    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::InvalidLabels => "invalid_labels",
            Refusal::TooManyLabels => "too_many_labels",
            Refusal::NoLabels => "no_labels",
            Refusal::LineTooLong => "line_too_long",
            Refusal::NativeHistogram => "native_histogram_unsupported",
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
pub struct Aggregator {
    /// The metrics store.
    pub metrics: MetricsStore,
    /// The log store.
    pub logs: LogStore,
    /// Configuration in force.
    pub config: AggregatorConfig,
    /// Self-observability.
    pub self_metrics: SelfMetrics,
    /// Metric metadata seen in remote_write requests.
    pub metadata: metadata::MetadataCache,
    /// When this aggregator started (`/api/v1/status/runtimeinfo`).
    pub started_at: std::time::SystemTime,
    /// Slots for concurrent PromQL evaluations (`query.max_concurrency`).
    pub query_slots: Arc<tokio::sync::Semaphore>,
    _lock: DirLock,
}

impl Aggregator {
    /// Locks the data directory, opens both stores and replays their WALs.
    pub fn open(config: AggregatorConfig) -> Result<Arc<Self>, StoreError> {
        let dir = &config.storage.data_dir;
        let lock = layout::lock_data_dir(dir)?;
        let wal = WalOptions { fsync: config.storage.wal.fsync, segment_bytes: config.storage.wal.segment_size.0 };
        let metrics = MetricsStore::open(&layout::metrics_wal(dir), wal.clone())?;
        let logs = LogStore::open(&layout::logs_wal(dir), wal)?;
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
        let query_slots = Arc::new(tokio::sync::Semaphore::new(config.query.max_concurrency.max(1)));
        Ok(Arc::new(Aggregator {
            metrics,
            logs,
            config,
            self_metrics: SelfMetrics::new(),
            metadata: metadata::MetadataCache::default(),
            started_at: std::time::SystemTime::now(),
            query_slots,
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
        let outcome = self.metrics.append(tenant, ok)?;
        for (r, _) in &outcome.rejected {
            self.self_metrics.reject("samples", r.as_str(), 1);
        }
        self.self_metrics.samples_ingested.inc_by(outcome.accepted as u64);
        report.merge_store(outcome);
        Ok(report)
    }

    /// Validates and stores log entries for `tenant` (blocking: call from a
    /// blocking thread). Invalid streams and overlong lines are refused; the
    /// rest is stored.
    pub fn ingest_logs(&self, tenant: &str, batch: Vec<StreamEntries>) -> Result<IngestReport, StoreError> {
        let mut report = IngestReport::default();
        let max_line = self.config.limits.max_line_size.0 as usize;
        let mut ok = Vec::with_capacity(batch.len());
        let mut bytes = 0u64;
        for mut s in batch {
            let check = if s.labels.is_empty() {
                Err((Refusal::NoLabels, "error at least one label pair is required per stream".to_string()))
            } else {
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
        let outcome = self.logs.push(tenant, ok)?;
        self.self_metrics.lines_ingested.inc_by(outcome.accepted as u64);
        self.self_metrics.line_bytes_ingested.inc_by(bytes);
        report.merge_store(outcome);
        Ok(report)
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
        m.encode()
    }
}
