//! Write batches as they travel between collector, aggregator and store.

use crate::Labels;

/// Samples of one series in a write.
#[derive(Debug, Clone, PartialEq)]
pub struct SeriesSamples {
    /// The series' labels, including `__name__`.
    pub labels: Labels,
    /// (timestamp ms, value) pairs, in any order.
    pub samples: Vec<(i64, f64)>,
}

/// Native-histogram samples of one series in a write.
#[derive(Debug, Clone, PartialEq)]
pub struct SeriesHistograms {
    /// The series' labels, including `__name__`.
    pub labels: Labels,
    /// (timestamp ms, histogram) pairs, in any order.
    pub histograms: Vec<(i64, crate::Histogram)>,
}

/// One log entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Nanoseconds since the Unix epoch.
    pub ts: i64,
    /// The line (invalid UTF-8 already replaced with U+FFFD).
    pub line: String,
    /// Structured metadata, (name, value) pairs.
    pub metadata: Vec<(String, String)>,
}

/// Entries of one stream in a write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamEntries {
    /// Stream labels.
    pub labels: Labels,
    /// Entries, in any order.
    pub entries: Vec<Entry>,
}
