//! Cairn's storage engines: the metrics TSDB ([`metrics::MetricsStore`]) and
//! the log store ([`logs::LogStore`]), both behind one shared write-ahead log
//! implementation ([`wal::Wal`]).
//!
//! Contract:
//! - A write returns `Ok` only once its record is in the WAL and, with
//!   `fsync = "always"`, on stable storage. What `Ok` covered is readable
//!   after a restart, including one after `kill -9`.
//! - Opening a data directory replays the WAL; a torn tail (a record cut by a
//!   crash) is truncated, never fatal. Corruption elsewhere is reported as
//!   [`StoreError::Corrupt`] with path and offset, or skipped with a count.
//! - Bad input is refused per sample / per entry with a reason, never by a
//!   panic, and never by silently dropping the rest of a batch.
//! - Every file and directory name lives in [`layout`]; every byte layout is
//!   written down in `docs/format/`.
//!
//! This crate must never parse a query language or speak HTTP: it stores and
//! returns label sets, samples and entries; the `query` crate interprets them.
//!
//! Current stage: both engines keep all data in an in-memory head rebuilt from
//! the WAL at start. Chunks, blocks, compaction and retention come next
//! (see `docs/ARCHITECTURE.md`).

pub mod block;
pub mod codec;
pub mod histchunk;
pub mod layout;
pub mod logchunk;
pub mod logs;
pub mod metrics;
mod newest;
#[doc(hidden)]
pub mod testing;
mod tiered;
pub mod trigram;
pub mod wal;
pub mod xor;

use std::path::PathBuf;

pub use tiered::{CompactionPolicy, CompactionStats, Retention, RetentionStats};
pub use wal::{FsyncPolicy, WalOptions};

/// Errors of the storage engines.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// An I/O operation failed on `path`.
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A file does not hold what its format says it must.
    #[error("corrupt {path} at offset {offset}: {reason}")]
    Corrupt { path: PathBuf, offset: u64, reason: String },
    /// A file was written by a format version this build cannot read.
    #[error("{path}: unsupported format version {version} (this build reads {supported})")]
    UnsupportedVersion { path: PathBuf, version: u8, supported: u8 },
    /// Another process holds the data directory.
    #[error("data directory {path} is in use by another process")]
    Locked { path: PathBuf },
    /// A write was attempted on a store opened read-only.
    #[error("{path} is open read-only")]
    ReadOnly { path: PathBuf },
}

/// Hash map keyed by label sets on the write path: foldhash instead of
/// SipHash, which took a tenth of the metrics ingest CPU (perf, PEERS
/// workload). Keys come from clients, so the seed is random per map.
pub(crate) type LabelMap<V> = std::collections::HashMap<cairn_wire::Labels, V, foldhash::fast::RandomState>;

/// Whether a checksum matches. Fuzzing builds (`--cfg fuzzing`, set by
/// cargo-fuzz) accept any, so the fuzzer reaches the decoders behind the
/// checksums instead of stopping at them.
pub(crate) fn crc_matches(got: u32, want: u32) -> bool {
    got == want || cfg!(fuzzing)
}

impl StoreError {
    /// True when the file system is out of space (or quota, or the file
    /// size limit): the write may succeed once space is freed.
    pub fn is_disk_full(&self) -> bool {
        use std::io::ErrorKind;
        matches!(self, StoreError::Io { source, .. }
            if matches!(source.kind(), ErrorKind::StorageFull | ErrorKind::QuotaExceeded | ErrorKind::FileTooLarge))
    }

    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> StoreError {
        let path = path.into();
        move |source| StoreError::Io { op, path, source }
    }
}

/// Why one sample or entry of a write was refused; the rest of the batch is
/// still written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RejectReason {
    /// Same series and timestamp as a stored sample, with another value.
    DuplicateTimestamp,
    /// A label set that is empty or has no metric name.
    MissingMetricName,
    /// Older than its series' newest sample while no out-of-order window is
    /// configured (Prometheus's "out of order sample").
    OutOfOrder,
    /// Older than its series' newest sample by more than the out-of-order
    /// window (Prometheus's "too old sample").
    TooOld,
    /// A log entry older than its stream's newest by more than the
    /// out-of-order window (Loki's "entry too far behind").
    TooFarBehind,
    /// A native histogram whose schema or bucket layout is invalid.
    MalformedHistogram,
}

impl RejectReason {
    /// Stable snake_case name, used as the `reason` label of
    /// `cairn_ingest_rejected_total`.
    pub fn as_str(self) -> &'static str {
        match self {
            RejectReason::DuplicateTimestamp => "duplicate_timestamp",
            RejectReason::MissingMetricName => "missing_metric_name",
            RejectReason::OutOfOrder => "out_of_order",
            RejectReason::TooOld => "too_old",
            RejectReason::TooFarBehind => "too_far_behind",
            RejectReason::MalformedHistogram => "malformed_histogram",
        }
    }
}

/// What a write did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct WriteOutcome {
    /// Samples or entries now stored (including exact duplicates, which are
    /// accepted as no-ops, as Prometheus and Loki do).
    pub accepted: usize,
    /// Refused items, with their reason and a human description.
    pub rejected: Vec<(RejectReason, String)>,
}
