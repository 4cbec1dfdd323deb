//! Series-at-a-time reads of the metrics store: a selection handed out one
//! series at a time, in label order, each series' chunks decoded into a
//! buffer the caller reuses (see [`MetricsStore::stream`]).
//!
//! [`MetricsStore::select_mixed_limited`] decodes every selected sample
//! before the caller sees the first one: for a dashboard's 24 hours of a
//! thousand series that is ~90 MB written, faulted in and read back. A
//! stream holds one series' samples at a time (a buffer that stays in
//! cache), and can skip chunks the caller will not read.
//!
//! A stream answers exactly what `select_mixed_limited` answers, series by
//! series (a property test below checks it): blocks, the head being
//! flushed and the head merged by timestamp, the newest source winning on
//! equal timestamps, and a histogram winning over a float at the same
//! timestamp.

use std::sync::Arc;

use cairn_wire::{Histogram, Labels, Matcher};

use super::hist::dedup_newest_hist;
use super::{MetricsStore, decode_block_chunk_mixed, dedup_newest};
use crate::StoreError;
use crate::block::{Block, BlockStream};

/// One series' samples from the head and the head being flushed, taken
/// when the stream was opened: sorted, unique, inside the range.
#[derive(Default)]
struct HeadPart {
    samples: Vec<(i64, f64)>,
    histograms: Vec<(i64, Histogram)>,
}

/// A selection's data: the blocks overlapping the range (shared, immutable)
/// and a copy of the matching head samples, taken together so the
/// selection is one consistent view. Holds no lock: writes and flushes go
/// on while it is read.
pub struct SeriesStream {
    tenant: String,
    matchers: Vec<Matcher>,
    mint: i64,
    maxt: i64,
    blocks: Vec<Arc<Block>>,
    /// Head series in label order.
    head: Vec<(Labels, HeadPart)>,
}

/// Where one part of a series' samples is.
enum Part<'a> {
    Block(&'a Block, &'a BlockStream),
    Head(&'a HeadPart),
}

/// The series of a [`SeriesStream`], in label order.
pub struct SeriesIter<'a> {
    stream: &'a SeriesStream,
    /// (labels, source order, part), sorted by labels then source order.
    parts: Vec<(&'a Labels, usize, Part<'a>)>,
    pos: usize,
}

/// One series' samples, filled by [`SeriesIter::next_into`]; reuse it
/// across series so its buffers stay allocated (and in cache).
#[derive(Debug, Default)]
pub struct SeriesBuf {
    /// Float samples, ascending unique timestamps.
    pub samples: Vec<(i64, f64)>,
    /// Native-histogram samples, ascending unique timestamps (a timestamp
    /// is never in both).
    pub histograms: Vec<(i64, Histogram)>,
}

impl MetricsStore {
    /// Opens a stream of the series of `tenant` matching all `matchers`
    /// with samples in `[mint, maxt]` (see the module doc). Takes the store's
    /// read locks only while it copies the head's matching samples.
    pub fn stream(&self, tenant: &str, matchers: &[Matcher], mint: i64, maxt: i64) -> SeriesStream {
        let mint = mint.max(self.t.visible_from(tenant));
        let (persisted, head) = self.t.read();
        let blocks: Vec<Arc<Block>> =
            persisted.blocks.iter().filter(|b| b.min_ts <= maxt && b.max_ts >= mint).cloned().collect();
        // Frozen head first, then the head: later sources win on equal
        // timestamps, as in `gather`.
        let mut by: std::collections::BTreeMap<Labels, HeadPart> = Default::default();
        {
            let mut add = |l: &Labels, ss: &[(i64, f64)]| {
                by.entry(l.clone()).or_default().samples.extend_from_slice(ss);
            };
            if let Some(fr) = &persisted.frozen {
                fr.collect(tenant, matchers, mint, maxt, &mut add);
            }
            head.collect(tenant, matchers, mint, maxt, &mut add);
        }
        let mut add_hist = |l: &Labels, hs: Vec<(i64, Histogram)>| {
            by.entry(l.clone()).or_default().histograms.extend(hs);
        };
        if let Some(fr) = &persisted.frozen {
            fr.collect_hist(tenant, matchers, mint, maxt, &mut add_hist);
        }
        head.collect_hist(tenant, matchers, mint, maxt, &mut add_hist);
        drop(head);
        drop(persisted);
        let head = by
            .into_iter()
            .map(|(l, mut p)| {
                p.samples = dedup_newest(std::mem::take(&mut p.samples));
                if !p.histograms.is_empty() {
                    p.histograms = dedup_newest_hist(std::mem::take(&mut p.histograms));
                }
                (l, p)
            })
            .collect();
        SeriesStream { tenant: tenant.to_string(), matchers: matchers.to_vec(), mint, maxt, blocks, head }
    }
}

impl SeriesStream {
    /// The series, in label order.
    pub fn iter(&self) -> SeriesIter<'_> {
        let mut parts: Vec<(&Labels, usize, Part<'_>)> = Vec::new();
        for (k, b) in self.blocks.iter().enumerate() {
            for s in b.select(&self.tenant, &self.matchers) {
                if s.chunks.iter().any(|c| c.min_ts <= self.maxt && c.max_ts >= self.mint) {
                    parts.push((&s.labels, k, Part::Block(b, s)));
                }
            }
        }
        let k = self.blocks.len();
        parts.extend(self.head.iter().map(|(l, p)| (l, k, Part::Head(p))));
        // Each source is in label order already: a stable sort merges runs.
        parts.sort_by(|a, b| a.0.cmp(b.0).then(a.1.cmp(&b.1)));
        SeriesIter { stream: self, parts, pos: 0 }
    }
}

impl<'a> SeriesIter<'a> {
    /// Series left to hand out, at most (some may have no sample in the
    /// range once their chunks are read).
    pub fn remaining_hint(&self) -> usize {
        self.parts.len().saturating_sub(self.pos)
    }

    /// Fills `out` with the next series' samples in the range and returns
    /// its labels; `None` after the last. Series with no sample in the
    /// range are skipped.
    ///
    /// `wanted(min_ts, max_ts)` says whether the caller reads any sample in
    /// that time range: block chunks it refuses are not decoded. The caller
    /// must not need the samples it skips, nor their effect on others (a
    /// skipped chunk's samples do not override other sources' there).
    /// Pass `|_, _| true` for every sample.
    pub fn next_into(
        &mut self,
        wanted: &dyn Fn(i64, i64) -> bool,
        out: &mut SeriesBuf,
    ) -> Result<Option<&'a Labels>, StoreError> {
        let (mint, maxt) = (self.stream.mint, self.stream.maxt);
        while self.pos < self.parts.len() {
            let labels = self.parts[self.pos].0;
            let end = self.pos + self.parts[self.pos..].iter().take_while(|p| p.0 == labels).count();
            out.samples.clear();
            out.histograms.clear();
            // Whether samples arrived out of time order (overlapping
            // sources) and whether a histogram chunk reaches outside the
            // range.
            let (mut sorted, mut trim) = (true, false);
            let mut last = i64::MIN;
            for (_, _, part) in &self.parts[self.pos..end] {
                match part {
                    Part::Block(b, s) => {
                        for c in s.chunks.iter().filter(|c| c.min_ts <= maxt && c.max_ts >= mint) {
                            if !wanted(c.min_ts, c.max_ts) {
                                continue;
                            }
                            let from = out.samples.len();
                            let hists = out.histograms.len();
                            decode_block_chunk_mixed(b, c, &mut out.samples, &mut out.histograms)?;
                            if c.min_ts < mint || c.max_ts > maxt {
                                // Cut this chunk's samples (sorted) to the
                                // range now, while they are few and in
                                // cache, instead of a pass over the series.
                                let seg = &out.samples[from..];
                                let lo = seg.partition_point(|p| p.0 < mint);
                                let hi = seg.partition_point(|p| p.0 <= maxt);
                                out.samples.truncate(from + hi);
                                out.samples.drain(from..from + lo);
                                trim |= out.histograms.len() > hists;
                            }
                            sorted &= c.min_ts > last;
                            last = last.max(c.max_ts);
                        }
                    }
                    Part::Head(p) => {
                        if let (Some(f), Some(l)) = (p.samples.first(), p.samples.last()) {
                            sorted &= f.0 > last;
                            last = last.max(l.0);
                            out.samples.extend_from_slice(&p.samples);
                        }
                        out.histograms.extend(p.histograms.iter().cloned());
                    }
                }
            }
            self.pos = end;
            if trim {
                out.histograms.retain(|p| p.0 >= mint && p.0 <= maxt);
            }
            if !sorted {
                out.samples = dedup_newest(std::mem::take(&mut out.samples));
            }
            if !out.histograms.is_empty() {
                // Histogram chunks are not in `sorted`'s account, and the
                // head's histograms may overlap the blocks'.
                out.histograms = dedup_newest_hist(std::mem::take(&mut out.histograms));
                let hs = &out.histograms;
                out.samples.retain(|p| hs.binary_search_by_key(&p.0, |h| h.0).is_err());
            }
            if !out.samples.is_empty() || !out.histograms.is_empty() {
                return Ok(Some(labels));
            }
        }
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::{MetricsStoreOptions, SelectLimits, SelectedSeries, SeriesSamples};
    use crate::wal::WalOptions;
    use std::time::Duration;

    fn all(s: &MetricsStore, matchers: &[Matcher], mint: i64, maxt: i64) -> Vec<SelectedSeries> {
        let stream = s.stream("t", matchers, mint, maxt);
        let mut it = stream.iter();
        let mut buf = SeriesBuf::default();
        let mut out = Vec::new();
        while let Some(l) = it.next_into(&|_, _| true, &mut buf).unwrap() {
            out.push(SelectedSeries {
                labels: l.clone(),
                samples: buf.samples.clone(),
                histograms: buf.histograms.clone(),
            });
        }
        out
    }

    fn labels(i: u8) -> Labels {
        Labels::from_pairs([("__name__", "m"), ("i", ["a", "b", "c", "d"][usize::from(i % 4)])]).unwrap()
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(48))]
        /// The stream against `select_mixed_limited`: writes in several
        /// rounds (each round flushed to a block or left in the head, with
        /// out-of-order and overwritten timestamps across rounds), then
        /// random ranges and matchers.
        #[test]
        fn stream_matches_select(
            rounds in proptest::collection::vec(
                (proptest::collection::vec((0u8..4, 0i64..2_000, -3i32..3), 1..300), proptest::bool::ANY),
                1..5,
            ),
            ranges in proptest::collection::vec((0i64..2_100, 0i64..2_100), 1..6),
        ) {
            let d = tempfile::tempdir().unwrap();
            let opts = MetricsStoreOptions {
                wal: WalOptions::default(),
                out_of_order_window: Duration::from_secs(86_400 * 365),
                ..Default::default()
            };
            let s = MetricsStore::open_with(d.path(), opts).unwrap();
            for (r, (writes, flush)) in rounds.iter().enumerate() {
                let batch = writes
                    .iter()
                    .map(|&(i, t, v)| SeriesSamples {
                        labels: labels(i),
                        samples: vec![(t * 1000, f64::from(v) + r as f64 * 10.0)],
                    })
                    .collect();
                s.append("t", batch).unwrap();
                if *flush {
                    s.flush().unwrap();
                }
            }
            let unlimited = SelectLimits { series: usize::MAX, samples: usize::MAX };
            let ms = [
                vec![],
                vec![Matcher::equal("i", "b")],
                vec![Matcher::new(cairn_wire::MatchOp::NotEqual, "i", "c").unwrap()],
            ];
            for (a, b) in ranges {
                let (lo, hi) = (a.min(b) * 1000, a.max(b) * 1000);
                for m in &ms {
                    let want = s.select_mixed_limited("t", m, lo, hi, unlimited).unwrap();
                    proptest::prop_assert_eq!(all(&s, m, lo, hi), want);
                }
            }
        }
    }

    #[test]
    fn stream_skips_unwanted_chunks_and_sees_later_writes_only_when_reopened() {
        let d = tempfile::tempdir().unwrap();
        let s = MetricsStore::open(d.path(), WalOptions::default()).unwrap();
        let pts: Vec<(i64, f64)> = (0..1000).map(|i| (i * 15_000, i as f64)).collect();
        s.append("t", vec![SeriesSamples { labels: labels(0), samples: pts.clone() }]).unwrap();
        s.flush().unwrap();
        let stream = s.stream("t", &[], 0, i64::MAX);
        // Written after the stream opened: not in it.
        s.append("t", vec![SeriesSamples { labels: labels(1), samples: vec![(1, 1.0)] }]).unwrap();
        let mut it = stream.iter();
        let mut buf = SeriesBuf::default();
        // Only chunks reaching past 10,000,000 ms.
        let l = it.next_into(&|_, max| max >= 10_000_000, &mut buf).unwrap().unwrap();
        assert_eq!(l, &labels(0));
        assert!(buf.samples.len() < pts.len() && !buf.samples.is_empty());
        assert!(buf.samples.iter().any(|p| p.0 >= 10_000_000));
        assert_eq!(buf.samples[..], pts[pts.len() - buf.samples.len()..]);
        assert!(it.next_into(&|_, _| true, &mut buf).unwrap().is_none());
        assert_eq!(all(&s, &[], 0, i64::MAX).len(), 2);
    }
}
