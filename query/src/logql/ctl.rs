//! Per-query control: the deadline a LogQL evaluation must finish by, and
//! the counters Loki reports in a response's `stats` object.

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
    stats: Cell<EvalStats>,
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
        QueryCtl { deadline, stats: Cell::new(EvalStats::default()) }
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
