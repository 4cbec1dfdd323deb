//! Per-query control: the deadline a LogQL evaluation must finish by, the
//! counters Loki reports in a response's `stats` object, and the level
//! fields that imply an entry's `detected_level` from its stream's labels.

use std::cell::Cell;
use std::time::Instant;

use cairn_store::logs::ScanStats;

/// What one query evaluation may spend and what it did. Shared by reference
/// between the evaluator's parts (one thread); read the counters with
/// [`QueryCtl::stats`] afterwards.
#[derive(Debug, Default)]
pub struct QueryCtl {
    /// The evaluation fails with [`super::EvalError::Timeout`] once this
    /// passes (checked between chunks and every few thousand entries).
    pub deadline: Option<Instant>,
    /// When not empty: an entry without `detected_level` metadata whose
    /// stream has a label of one of these names (earliest first) gets
    /// `detected_level` = that label's value, normalised — what ingest-time
    /// level discovery would have stored (it stores nothing for such
    /// streams; see `cairn_aggregator::discover`).
    pub level_fields: Vec<String>,
    stats: Cell<EvalStats>,
}

/// The structured-metadata field holding an entry's level.
pub const DETECTED_LEVEL: &str = "detected_level";

/// Loki's normalisation of a level's spelling (case-insensitive `warning`
/// → `warn`, `err` → `error`, `dbg` → `debug`, …); `None` for a spelling
/// it does not know.
pub fn known_level(v: &str) -> Option<&'static str> {
    const SPELLINGS: &[(&str, &str)] = &[
        ("trace", "trace"),
        ("trc", "trace"),
        ("debug", "debug"),
        ("dbg", "debug"),
        ("info", "info"),
        ("inf", "info"),
        ("information", "info"),
        ("warn", "warn"),
        ("wrn", "warn"),
        ("warning", "warn"),
        ("error", "error"),
        ("err", "error"),
        ("critical", "critical"),
        ("fatal", "fatal"),
    ];
    SPELLINGS.iter().find(|(s, _)| s.eq_ignore_ascii_case(v)).map(|&(_, l)| l)
}

/// [`known_level`], or the value unchanged.
pub fn normalize_level(v: &str) -> &str {
    known_level(v).unwrap_or(v)
}

/// The level a stream's labels give every entry of it: the first of
/// `fields` it carries, normalised; `None` when it has none of them or
/// carries a `detected_level` label itself.
pub fn level_from_labels<'l>(fields: &[String], labels: &'l cairn_wire::Labels) -> Option<&'l str> {
    if labels.get(DETECTED_LEVEL).is_some() {
        return None;
    }
    fields.iter().find_map(|f| labels.get(f)).map(normalize_level)
}

/// Work done by one evaluation, summed over its scans.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct EvalStats {
    /// Block chunks overlapping the queried streams and range.
    pub chunks: u64,
    /// Of those, skipped by the content index without being read.
    pub chunks_skipped: u64,
    /// Compressed chunk bytes read from blocks.
    pub compressed_bytes: u64,
    /// Chunk bytes decompressed (lines and structured metadata).
    pub decompressed_bytes: u64,
    /// Entries handed to the pipeline (after the content index and the
    /// `|=` substring prefilter).
    pub lines: u64,
    /// Bytes of those entries' lines.
    pub line_bytes: u64,
    /// Of `lines`, entries that were still in memory (not yet in a block).
    pub head_lines: u64,
    /// Bytes of those.
    pub head_bytes: u64,
    /// Entries that passed the whole pipeline (for log queries: of those
    /// the limit left worth running it on).
    pub post_filter_lines: u64,
}

impl QueryCtl {
    /// A control with this deadline and zeroed counters.
    pub fn with_deadline(deadline: Option<Instant>) -> Self {
        QueryCtl { deadline, ..QueryCtl::default() }
    }

    /// Sets [`QueryCtl::level_fields`].
    pub fn with_level_fields(mut self, fields: Vec<String>) -> Self {
        self.level_fields = fields;
        self
    }

    /// The `detected_level` implied for entries of a stream with `labels`
    /// that carry none themselves (see [`QueryCtl::level_fields`]).
    pub(crate) fn implied_level<'l>(&self, labels: &'l cairn_wire::Labels) -> Option<&'l str> {
        if self.level_fields.is_empty() {
            return None;
        }
        level_from_labels(&self.level_fields, labels)
    }

    /// `labels` with the implied `detected_level` added (for metric
    /// queries, where stream labels and metadata end up in one label set and
    /// an entry's own `detected_level` metadata still overrides it).
    pub(crate) fn with_implied_level<'l>(
        &self,
        labels: &'l cairn_wire::Labels,
    ) -> std::borrow::Cow<'l, cairn_wire::Labels> {
        match self.implied_level(labels) {
            None => std::borrow::Cow::Borrowed(labels),
            Some(level) => {
                let pairs = labels.iter().map(|l| (l.name.as_str(), l.value.as_str())).chain([(DETECTED_LEVEL, level)]);
                match cairn_wire::Labels::from_pairs(pairs) {
                    Ok(l) => std::borrow::Cow::Owned(l),
                    Err(_) => std::borrow::Cow::Borrowed(labels),
                }
            }
        }
    }

    /// True once the deadline has passed.
    pub fn expired(&self) -> bool {
        self.deadline.is_some_and(|d| Instant::now() >= d)
    }

    /// The counters so far.
    pub fn stats(&self) -> EvalStats {
        self.stats.get()
    }

    /// Adds what one store scan reported.
    pub(crate) fn add_scan(&self, s: &ScanStats) {
        let mut t = self.stats.get();
        t.chunks += s.chunks;
        t.chunks_skipped += s.chunks_skipped;
        t.compressed_bytes += s.bytes_read;
        t.decompressed_bytes += s.bytes_decompressed;
        t.head_lines += s.head_lines;
        t.head_bytes += s.head_bytes;
        self.stats.set(t);
    }

    /// Counts entries that passed the pipeline.
    pub(crate) fn add_post_filter(&self, n: u64) {
        let mut t = self.stats.get();
        t.post_filter_lines += n;
        self.stats.set(t);
    }

    /// Counts entries handed to the pipeline.
    pub(crate) fn add_lines(&self, lines: u64, bytes: u64) {
        let mut t = self.stats.get();
        t.lines += lines;
        t.line_bytes += bytes;
        self.stats.set(t);
    }
}
