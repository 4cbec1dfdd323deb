//! Start timestamps ("ST": OpenTelemetry's start time, Prometheus's
//! created / start timestamps) of float and histogram samples.
//!
//! A sample's start timestamp is the time its counter (or, for a delta
//! series, its interval) started. Most series never carry one, so they
//! cost nothing there: the start timestamps of a tenant's series are kept
//! as float samples of a *companion series* with the same labels, in the
//! companion tenant `"<tenant>|st"` ([`st_tenant`]), at the timestamps of
//! the samples they belong to; the value is the start time in ms (exact:
//! every timestamp is below 2⁵³). A sample without a start timestamp has
//! no companion sample. `|` is not allowed in tenant IDs, so no client can
//! read or write a companion tenant, and every listing API (series,
//! labels, cardinality) is per tenant, so companions never show up there.
//!
//! Companions go through the same WAL, head, chunks, blocks, compaction
//! and retention as every other series (the companion tenant follows its
//! tenant's retention: see `tiered::retention_tenant`); a constant start
//! time costs about a bit per sample. The companion's write is a separate
//! WAL record, written *before* the samples' own: a crash between the two
//! leaves start timestamps without samples (ignored by reads), never
//! acknowledged samples without their start timestamps.
//! Format: `docs/format/tsdb.md`, "Start timestamps".

use cairn_wire::{Labels, Matcher, SeriesSamples};

use super::{MetricsStore, SelectLimit, SelectLimits};
use crate::{StoreError, WriteOutcome};

/// Separator between a tenant ID and its companion suffix.
const SEP: char = '|';

/// The companion tenant holding `tenant`'s start timestamps.
pub fn st_tenant(tenant: &str) -> String {
    format!("{tenant}{SEP}st")
}

/// Start timestamps of one series' samples: (sample timestamp, start
/// timestamp), both ms, ascending sample timestamps.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SeriesStartTimestamps {
    /// The series' labels, including `__name__`.
    pub labels: Labels,
    /// (timestamp, start timestamp) pairs.
    pub pairs: Vec<(i64, i64)>,
}

impl MetricsStore {
    /// Stores start timestamps of `tenant`'s samples (write them before the
    /// samples themselves). A start timestamp of 0 means "none" and is not
    /// stored. Refusals (out-of-order window, …) are reported as for
    /// samples.
    pub fn append_start_timestamps(
        &self,
        tenant: &str,
        batch: Vec<SeriesStartTimestamps>,
    ) -> Result<WriteOutcome, StoreError> {
        let batch: Vec<SeriesSamples> = batch
            .into_iter()
            .map(|s| SeriesSamples {
                labels: s.labels,
                samples: s.pairs.into_iter().filter(|p| p.1 != 0).map(|(t, st)| (t, st as f64)).collect(),
            })
            .filter(|s| !s.samples.is_empty())
            .collect();
        if batch.is_empty() {
            return Ok(WriteOutcome::default());
        }
        self.append(&st_tenant(tenant), batch)
    }

    /// Start timestamps of `tenant`'s series matching `matchers` for samples
    /// in `[mint, maxt]`, sorted by labels; series without any are left out.
    pub fn select_start_timestamps(
        &self,
        tenant: &str,
        matchers: &[Matcher],
        mint: i64,
        maxt: i64,
        max: SelectLimits,
    ) -> Result<Vec<SeriesStartTimestamps>, SelectLimit> {
        let sel = self.select_limited(&st_tenant(tenant), matchers, mint, maxt, max)?;
        Ok(sel
            .into_iter()
            .map(|s| SeriesStartTimestamps {
                labels: s.labels,
                // Values written are whole ms; anything else (a corrupt or
                // foreign sample) is dropped rather than misread.
                pairs: s
                    .samples
                    .into_iter()
                    .filter(|p| p.1.fract() == 0.0 && p.1.abs() < 9.007_199_254_740_992e15)
                    .map(|(t, st)| (t, st as i64))
                    .collect(),
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::MetricsStoreOptions;
    use crate::metrics::tests::ls as labels;
    use cairn_wire::SeriesSamples;

    #[test]
    fn start_timestamps_round_trip_per_tenant_and_survive_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let l = labels(&[("__name__", "c_total"), ("job", "a")]);
        let all = [Matcher::equal("__name__", "c_total")];
        let unlimited = SelectLimits { series: usize::MAX, samples: usize::MAX };
        {
            let s = MetricsStore::open_with(dir.path(), MetricsStoreOptions::default()).unwrap();
            let st = SeriesStartTimestamps { labels: l.clone(), pairs: vec![(1000, 500), (2000, 0), (3000, 500)] };
            assert!(s.append_start_timestamps("t1", vec![st]).unwrap().rejected.is_empty());
            let samples = SeriesSamples { labels: l.clone(), samples: vec![(1000, 1.0), (2000, 2.0), (3000, 3.0)] };
            s.append("t1", vec![samples]).unwrap();
            let got = s.select_start_timestamps("t1", &all, 0, 10_000, unlimited).unwrap();
            assert_eq!(got, vec![SeriesStartTimestamps { labels: l.clone(), pairs: vec![(1000, 500), (3000, 500)] }]);
            // Other tenants see neither the start timestamps nor a series.
            assert!(s.select_start_timestamps("t2", &all, 0, 10_000, unlimited).unwrap().is_empty());
            assert_eq!(s.series("t1", &all, 0, 10_000), vec![l.clone()]);
            // A negative start time (before 1970) is a start time too.
            let neg = SeriesStartTimestamps { labels: l.clone(), pairs: vec![(4000, -7)] };
            s.append_start_timestamps("t1", vec![neg]).unwrap();
        }
        let s = MetricsStore::open_with(dir.path(), MetricsStoreOptions::default()).unwrap();
        let got = s.select_start_timestamps("t1", &all, 0, 10_000, unlimited).unwrap();
        assert_eq!(got[0].pairs, vec![(1000, 500), (3000, 500), (4000, -7)]);
    }

    #[test]
    fn start_timestamps_follow_their_tenants_retention() {
        let dir = tempfile::tempdir().unwrap();
        let s = MetricsStore::open_with(dir.path(), MetricsStoreOptions::default()).unwrap();
        let l = labels(&[("__name__", "c_total")]);
        let all = [Matcher::equal("__name__", "c_total")];
        let unlimited = SelectLimits { series: usize::MAX, samples: usize::MAX };
        for t in ["short", "long"] {
            let st = SeriesStartTimestamps { labels: l.clone(), pairs: vec![(1000, 500)] };
            s.append_start_timestamps(t, vec![st]).unwrap();
        }
        let mut r = crate::Retention::default();
        r.tenants.insert("short".into(), Some(std::time::Duration::from_secs(3600)));
        s.set_retention(r);
        // Samples from 1970 are past "short"'s hour, and so are their
        // start timestamps; "long" keeps the global (unlimited) retention.
        assert!(s.select_start_timestamps("short", &all, 0, 10_000, unlimited).unwrap().is_empty());
        assert_eq!(s.select_start_timestamps("long", &all, 0, 10_000, unlimited).unwrap().len(), 1);
    }
}
