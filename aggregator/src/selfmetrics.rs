//! Cairn's own metrics, served on `/metrics` in Prometheus text format.
//! Names follow `cairn_<subsystem>_<name>_<unit>[_total]`.

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

type L = Vec<(&'static str, String)>;

fn query_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.001, 2.0, 16))
}

/// Counters, gauges and histograms of the aggregator.
pub struct SelfMetrics {
    registry: Registry,
    /// Samples stored.
    pub samples_ingested: Counter,
    /// Log lines stored.
    pub lines_ingested: Counter,
    /// Bytes of log lines stored.
    pub line_bytes_ingested: Counter,
    /// Request body bytes received, by API.
    pub request_bytes: Family<L, Counter>,
    /// Refused samples/entries/requests, by kind and reason.
    pub rejected: Family<L, Counter>,
    /// Queries answered, by API.
    pub queries: Family<L, Counter>,
    /// Query latency, by API.
    pub query_duration: Family<L, Histogram, fn() -> Histogram>,
    /// WAL bytes on disk, by engine.
    pub wal_size: Family<L, Gauge>,
    /// Series and streams in memory.
    pub head_series: Family<L, Gauge>,
    /// Bytes held in memory heads.
    pub head_bytes: Family<L, Gauge>,
    /// Blocks on disk, by engine.
    pub blocks: Family<L, Gauge>,
    /// Bytes of blocks on disk, by engine.
    pub block_bytes: Family<L, Gauge>,
    /// Head flushes to blocks, by engine and result.
    pub flushes: Family<L, Counter>,
    /// Blocks deleted by retention, by engine.
    pub retention_blocks: Family<L, Counter>,
    /// Bytes of blocks deleted by retention, by engine.
    pub retention_bytes: Family<L, Counter>,
    /// Blocks rewritten by retention without a tenant's expired data.
    pub retention_rewrites: Family<L, Counter>,
    /// Compaction merges done, by engine.
    pub compactions: Family<L, Counter>,
    /// Blocks merged away by compaction, by engine.
    pub compaction_blocks: Family<L, Counter>,
    /// Bytes of the blocks compaction merged, by engine.
    pub compaction_bytes_before: Family<L, Counter>,
    /// Bytes of the blocks compaction wrote, by engine.
    pub compaction_bytes_after: Family<L, Counter>,
    /// What start-up recovery found, by engine and finding.
    pub recovery: Family<L, Gauge>,
    /// Entries that entered an ingest pipeline stage, by pipeline and stage.
    pub pipeline_lines: Family<L, Counter>,
    /// Entries dropped by a pipeline stage, by pipeline, stage and reason.
    pub pipeline_dropped: Family<L, Counter>,
    /// Entries a pipeline stage could not process (parse failures, lines
    /// not in the container format, non-numeric metric values).
    pub pipeline_errors: Family<L, Counter>,
    /// `timestamp` stages that fell back (field missing or unparsable).
    pub pipeline_timestamp_fallbacks: Family<L, Counter>,
    /// Promotions refused by the label-cardinality or value-length limit,
    /// by tenant and label.
    pub pipeline_label_limit_hits: Family<L, Counter>,
    /// Samples written from `metrics` stages.
    pub pipeline_metric_samples: Counter,
    /// Log lines cut to `limits.max_line_size`.
    pub lines_truncated: Counter,
    /// Streams and series active under the cardinality limits, by engine and
    /// tenant.
    pub active: Family<L, Gauge>,
    /// Requests refused by `[auth]`, by reason (`missing`, `invalid`,
    /// `forbidden`).
    pub auth_denied: Family<L, Counter>,
    /// PromQL range queries by how they used the result cache.
    pub query_cache_requests: Family<L, Counter>,
    /// Result-cache entries dropped by writes into their range or deletions.
    pub query_cache_invalidations: Counter,
    /// Result-cache entries dropped for space.
    pub query_cache_evictions: Counter,
    /// Result-cache entries and their bytes.
    pub query_cache_entries: Gauge,
    pub query_cache_bytes: Gauge,
}

impl Default for SelfMetrics {
    fn default() -> Self {
        Self::new()
    }
}

impl SelfMetrics {
    /// Registers every metric.
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let m = SelfMetrics {
            samples_ingested: Counter::default(),
            lines_ingested: Counter::default(),
            line_bytes_ingested: Counter::default(),
            request_bytes: Family::default(),
            rejected: Family::default(),
            queries: Family::default(),
            query_duration: Family::new_with_constructor(query_histogram as fn() -> Histogram),
            wal_size: Family::default(),
            head_series: Family::default(),
            head_bytes: Family::default(),
            blocks: Family::default(),
            block_bytes: Family::default(),
            flushes: Family::default(),
            retention_blocks: Family::default(),
            retention_bytes: Family::default(),
            retention_rewrites: Family::default(),
            compactions: Family::default(),
            compaction_blocks: Family::default(),
            compaction_bytes_before: Family::default(),
            compaction_bytes_after: Family::default(),
            recovery: Family::default(),
            pipeline_lines: Family::default(),
            pipeline_dropped: Family::default(),
            pipeline_errors: Family::default(),
            pipeline_timestamp_fallbacks: Family::default(),
            pipeline_label_limit_hits: Family::default(),
            pipeline_metric_samples: Counter::default(),
            auth_denied: Family::default(),
            query_cache_requests: Family::default(),
            query_cache_invalidations: Counter::default(),
            query_cache_evictions: Counter::default(),
            query_cache_entries: Gauge::default(),
            query_cache_bytes: Gauge::default(),
            lines_truncated: Counter::default(),
            active: Family::default(),
            registry: Registry::default(),
        };
        registry.register("cairn_ingest_samples", "Metric samples stored", m.samples_ingested.clone());
        registry.register("cairn_ingest_lines", "Log lines stored", m.lines_ingested.clone());
        registry.register("cairn_ingest_line_bytes", "Bytes of log lines stored", m.line_bytes_ingested.clone());
        registry.register(
            "cairn_ingest_request_bytes",
            "Request body bytes received, as sent, by API",
            m.request_bytes.clone(),
        );
        registry.register(
            "cairn_ingest_rejected",
            "Samples, entries or whole requests refused, by kind and reason",
            m.rejected.clone(),
        );
        registry.register(
            "cairn_ingest_truncated_lines",
            "Log lines stored cut to limits.max_line_size (limits.max_line_size_truncate)",
            m.lines_truncated.clone(),
        );
        registry.register(
            "cairn_limits_active",
            "Streams (engine=logs) and series (engine=metrics) written within limits.active_window, by tenant; \
             tracked only where max_active_streams / max_active_series is set",
            m.active.clone(),
        );
        registry.register("cairn_query_requests", "Queries answered, by API", m.queries.clone());
        registry.register(
            "cairn_http_auth_denied",
            "Requests refused by [auth], by reason (missing, invalid, forbidden)",
            m.auth_denied.clone(),
        );
        registry.register("cairn_query_duration_seconds", "Query latency, by API", m.query_duration.clone());
        registry.register("cairn_wal_size_bytes", "Write-ahead log bytes on disk, by engine", m.wal_size.clone());
        registry.register("cairn_head_series", "Series (metrics) and streams (logs) in memory", m.head_series.clone());
        registry.register("cairn_head_bytes", "Bytes held in memory heads, by engine", m.head_bytes.clone());
        registry.register("cairn_blocks", "Blocks on disk, by engine", m.blocks.clone());
        registry.register("cairn_block_size_bytes", "Bytes of blocks on disk, by engine", m.block_bytes.clone());
        registry.register("cairn_flushes", "Head flushes to blocks, by engine and result", m.flushes.clone());
        registry.register(
            "cairn_retention_deleted_blocks",
            "Blocks deleted by retention, by engine",
            m.retention_blocks.clone(),
        );
        registry.register(
            "cairn_retention_deleted_bytes",
            "Bytes freed by retention (blocks deleted or rewritten), by engine",
            m.retention_bytes.clone(),
        );
        registry.register(
            "cairn_retention_rewritten_blocks",
            "Blocks rewritten by retention without the data of tenants past their own limit, by engine",
            m.retention_rewrites.clone(),
        );
        registry.register("cairn_compactions", "Compaction merges done, by engine", m.compactions.clone());
        registry.register(
            "cairn_compaction_blocks_merged",
            "Blocks merged away by compaction, by engine",
            m.compaction_blocks.clone(),
        );
        registry.register(
            "cairn_compaction_bytes_before",
            "Bytes of the blocks compaction merged, by engine",
            m.compaction_bytes_before.clone(),
        );
        registry.register(
            "cairn_compaction_bytes_after",
            "Bytes of the blocks compaction wrote, by engine",
            m.compaction_bytes_after.clone(),
        );
        registry.register(
            "cairn_recovery",
            "What start-up recovery found, by engine and finding: corrupt_blocks (set aside as *.blk.corrupt), \
             wal_corrupt_segments (rest of a segment skipped), wal_torn_tail_bytes (cut off the newest segment)",
            m.recovery.clone(),
        );
        registry.register(
            "cairn_pipeline_lines",
            "Log entries that entered an ingest pipeline stage, by pipeline and stage",
            m.pipeline_lines.clone(),
        );
        registry.register(
            "cairn_pipeline_dropped_lines",
            "Log entries dropped by an ingest pipeline stage, by pipeline, stage and reason",
            m.pipeline_dropped.clone(),
        );
        registry.register(
            "cairn_pipeline_errors",
            "Log entries an ingest pipeline stage could not process (kept, unchanged by it), by pipeline and stage",
            m.pipeline_errors.clone(),
        );
        registry.register(
            "cairn_pipeline_timestamp_fallbacks",
            "Entries whose timestamp stage found no parsable time and fell back, by pipeline and stage",
            m.pipeline_timestamp_fallbacks.clone(),
        );
        registry.register(
            "cairn_pipeline_label_limit_hits",
            "Label promotions refused by limits.pipeline_max_label_values or the value length limit \
             (kept as structured metadata), by tenant and label",
            m.pipeline_label_limit_hits.clone(),
        );
        registry.register(
            "cairn_pipeline_metric_samples",
            "Samples written to the metrics store by pipeline metrics stages",
            m.pipeline_metric_samples.clone(),
        );
        registry.register(
            "cairn_query_result_cache_requests",
            "PromQL range queries by how they used the result cache (query.result_cache_size): hit (all steps \
             cached), partial_hit (older steps cached, newer evaluated), miss, bypass (nocache=1, cache off, or \
             a query that is never cached)",
            m.query_cache_requests.clone(),
        );
        registry.register(
            "cairn_query_result_cache_invalidations",
            "Result-cache entries dropped because data was written into or deleted from the range they read",
            m.query_cache_invalidations.clone(),
        );
        registry.register(
            "cairn_query_result_cache_evictions",
            "Result-cache entries dropped to stay within query.result_cache_size",
            m.query_cache_evictions.clone(),
        );
        registry.register(
            "cairn_query_result_cache_entries",
            "Result-cache entries held",
            m.query_cache_entries.clone(),
        );
        registry.register(
            "cairn_query_result_cache_bytes",
            "Estimated memory of the result-cache entries",
            m.query_cache_bytes.clone(),
        );
        SelfMetrics { registry, ..m }
    }

    /// Counts `n` refusals of `kind` ("samples", "entries", "requests") for `reason`.
    pub fn reject(&self, kind: &'static str, reason: &str, n: u64) {
        self.rejected.get_or_create(&vec![("kind", kind.to_string()), ("reason", reason.to_string())]).inc_by(n);
    }

    /// Records one query of `api` that took `secs`.
    pub fn observe_query(&self, api: &'static str, secs: f64) {
        let l = vec![("api", api.to_string())];
        self.queries.get_or_create(&l).inc();
        self.query_duration.get_or_create(&l).observe(secs);
    }

    /// Renders the text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }
}
