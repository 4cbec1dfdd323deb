//! Native-histogram samples in the metrics engine: the head's histogram
//! part of a series, the WAL record of a histogram write, the write path
//! and the chunk helpers. A series holds float samples, histogram samples,
//! or both at different timestamps (a series may switch type, as in
//! Prometheus); each chunk holds one kind. Formats: `docs/format/wal.md`
//! (record type 3) and `docs/format/tsdb.md` ("Histogram chunks").

use cairn_wire::{Histogram, Labels, Matcher, SeriesHistograms, matcher::matches_all};

use super::{Head, HeadChunk, MetricsStore, Series, TenantHead};
use crate::block::{Block, ChunkMeta, EncodedChunk};
use crate::codec::{Reader, put_bytes, put_labels, put_uvarint};
use crate::histchunk;
use crate::{RejectReason, StoreError, WriteOutcome};

/// WAL record type of a native-histogram write batch.
pub const RECORD_HISTOGRAMS: u8 = 3;

/// Histogram samples per chunk (a histogram sample is ~10–40× a float's).
pub const HIST_CHUNK_SAMPLES: usize = 120;

/// The histogram samples of one head series: sealed chunks (encoded as a
/// block holds them) and the open tail.
#[derive(Default)]
pub(super) struct HistPart {
    sealed: Vec<HeadChunk>,
    samples: Vec<(i64, Histogram)>,
}

impl HeadChunk {
    fn encode_hist(samples: &[(i64, Histogram)]) -> HeadChunk {
        let mut bytes = Vec::new();
        histchunk::encode_chunk(&mut bytes, samples);
        HeadChunk {
            bytes: bytes.into_boxed_slice(),
            min_ts: samples.first().map_or(0, |p| p.0),
            max_ts: samples.last().map_or(0, |p| p.0),
            count: samples.len() as u32,
        }
    }
}

fn decode_into(c: &HeadChunk, out: &mut Vec<(i64, Histogram)>) -> bool {
    let from = out.len();
    if histchunk::decode_chunk(&c.bytes, out).is_err() {
        out.truncate(from); // written by this process: cannot happen
        return false;
    }
    true
}

impl HistPart {
    pub(super) fn last_ts(&self) -> Option<i64> {
        self.samples.last().map(|p| p.0).or_else(|| self.sealed.last().map(|c| c.max_ts))
    }

    pub(super) fn len(&self) -> usize {
        self.samples.len() + self.sealed.iter().map(|c| c.count as usize).sum::<usize>()
    }

    fn sealed_for(&self, t: i64) -> Option<usize> {
        let i = self.sealed.partition_point(|c| c.max_ts < t);
        (i < self.sealed.len()).then_some(i)
    }

    pub(super) fn value_at(&self, t: i64) -> Option<Histogram> {
        match self.sealed_for(t) {
            Some(i) => {
                let c = &self.sealed[i];
                if t < c.min_ts {
                    return None;
                }
                let mut out = Vec::with_capacity(c.count as usize);
                decode_into(c, &mut out);
                out.binary_search_by_key(&t, |p| p.0).ok().map(|k| out.swap_remove(k).1)
            }
            None => self.samples.binary_search_by_key(&t, |p| p.0).ok().map(|k| self.samples[k].1.clone()),
        }
    }

    /// Adds a sample; false when one with that timestamp is there already.
    pub(super) fn insert(&mut self, t: i64, h: Histogram) -> bool {
        if let Some(i) = self.sealed_for(t) {
            let c = &mut self.sealed[i];
            let mut out = Vec::with_capacity(c.count as usize + 1);
            if !decode_into(c, &mut out) {
                return false;
            }
            let Err(pos) = out.binary_search_by_key(&t, |p| p.0) else {
                return false;
            };
            out.insert(pos, (t, h));
            *c = HeadChunk::encode_hist(&out);
            return true;
        }
        match self.samples.last() {
            Some(&(lt, _)) if lt >= t => match self.samples.binary_search_by_key(&t, |p| p.0) {
                Ok(_) => return false,
                Err(pos) => self.samples.insert(pos, (t, h)),
            },
            _ => self.samples.push((t, h)),
        }
        if self.samples.len() >= HIST_CHUNK_SAMPLES {
            self.sealed.push(HeadChunk::encode_hist(&self.samples));
            self.samples = Vec::new();
        }
        true
    }

    pub(super) fn collect_into(&self, mint: i64, maxt: i64, out: &mut Vec<(i64, Histogram)>) {
        for c in self.sealed.iter().filter(|c| c.min_ts <= maxt && c.max_ts >= mint) {
            let from = out.len();
            if decode_into(c, out) && (c.min_ts < mint || c.max_ts > maxt) {
                let kept: Vec<(i64, Histogram)> = out.drain(from..).filter(|p| p.0 >= mint && p.0 <= maxt).collect();
                out.extend(kept);
            }
        }
        let lo = self.samples.partition_point(|p| p.0 < mint);
        let hi = self.samples.partition_point(|p| p.0 <= maxt);
        out.extend_from_slice(&self.samples[lo..hi.max(lo)]);
    }

    pub(super) fn any_in(&self, mint: i64, maxt: i64) -> bool {
        let lo = self.samples.partition_point(|p| p.0 < mint);
        self.samples.get(lo).is_some_and(|p| p.0 <= maxt)
            || self.sealed.iter().filter(|c| c.min_ts <= maxt && c.max_ts >= mint).any(|c| {
                (c.min_ts >= mint && c.max_ts <= maxt) || {
                    let mut out = Vec::new();
                    decode_into(c, &mut out) && out.iter().any(|p| p.0 >= mint && p.0 <= maxt)
                }
            })
    }

    pub(super) fn encoded(&self) -> Vec<EncodedChunk> {
        let mut out: Vec<EncodedChunk> = self.sealed.iter().map(HeadChunk::to_encoded).collect();
        out.extend(encode_hist_chunks(&self.samples));
        out
    }
}

/// Cuts sorted, unique histogram samples into chunks.
pub(super) fn encode_hist_chunks(samples: &[(i64, Histogram)]) -> Vec<EncodedChunk> {
    samples
        .chunks(HIST_CHUNK_SAMPLES)
        .map(|c| {
            let mut bytes = Vec::new();
            histchunk::encode_chunk(&mut bytes, c);
            EncodedChunk {
                bytes,
                min_ts: c.first().map_or(0, |p| p.0),
                max_ts: c.last().map_or(0, |p| p.0),
                count: c.len() as u64,
                raw_bytes: 16 * c.len() as u64,
                payload: 0,
                filter: Vec::new(),
            }
        })
        .collect()
}

/// Whether chunk `c` of block `b` is a histogram chunk (its encoding byte;
/// version-1 blocks hold float chunks only).
pub(super) fn is_hist_chunk(b: &Block, c: &ChunkMeta) -> Result<bool, StoreError> {
    if b.version == 1 {
        return Ok(false);
    }
    Ok(b.chunk_unchecked(c)?.first() == Some(&histchunk::ENC_HISTOGRAM))
}

/// Sorts by timestamp (stable) and keeps the last sample of each timestamp.
pub(super) fn dedup_newest_hist(mut samples: Vec<(i64, Histogram)>) -> Vec<(i64, Histogram)> {
    if samples.windows(2).all(|w| w[0].0 < w[1].0) {
        return samples;
    }
    samples.sort_by_key(|p| p.0);
    let mut out: Vec<(i64, Histogram)> = Vec::with_capacity(samples.len());
    for p in samples {
        match out.last_mut() {
            Some(last) if last.0 == p.0 => *last = p,
            _ => out.push(p),
        }
    }
    out
}

/// WAL payload of a histogram batch: tenant, series count, then per series
/// its labels and its samples as one histogram chunk (length-prefixed).
pub(super) fn encode_hist_batch(buf: &mut Vec<u8>, tenant: &str, batch: &[SeriesHistograms]) {
    put_bytes(buf, tenant.as_bytes());
    put_uvarint(buf, batch.len() as u64);
    let mut chunk = Vec::new();
    for s in batch {
        put_labels(buf, &s.labels);
        chunk.clear();
        histchunk::encode_chunk(&mut chunk, &s.histograms);
        put_bytes(buf, &chunk);
    }
}

pub(super) fn decode_hist_batch(payload: &[u8]) -> Result<(String, Vec<SeriesHistograms>), crate::codec::DecodeError> {
    let mut r = Reader::new(payload);
    let tenant = r.str()?.to_string();
    let n = r.count(3)?;
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let labels = r.labels()?;
        let mut histograms = Vec::new();
        histchunk::decode_chunk(r.bytes()?, &mut histograms)?;
        out.push(SeriesHistograms { labels, histograms });
    }
    Ok((tenant, out))
}

pub(super) fn series_index(th: &mut TenantHead, labels: Labels) -> usize {
    match th.by_labels.get(&labels) {
        Some(&i) => i,
        None => {
            let i = th.series.len();
            th.by_labels.insert(labels.clone(), i);
            th.series.push(Series::new(labels));
            i
        }
    }
}

pub(super) fn apply_hist(head: &mut Head, tenant: &str, batch: Vec<SeriesHistograms>) {
    if head.since.is_none() && batch.iter().any(|s| !s.histograms.is_empty()) {
        head.since = Some(std::time::Instant::now());
    }
    let th = head.tenants.entry(tenant.to_string()).or_default();
    let mut added = 0u64;
    for s in batch {
        let idx = series_index(th, s.labels);
        let part = th.series[idx].hist.get_or_insert_with(Default::default);
        for (t, h) in s.histograms {
            added += u64::from(part.insert(t, h));
        }
    }
    head.samples += added;
}

impl Head {
    /// Histogram samples of matching series of `tenant` in `[mint, maxt]`.
    pub(super) fn collect_hist(
        &self,
        tenant: &str,
        matchers: &[Matcher],
        mint: i64,
        maxt: i64,
        mut f: impl FnMut(&Labels, Vec<(i64, Histogram)>),
    ) {
        let Some(th) = self.tenants.get(tenant) else {
            return;
        };
        for s in &th.series {
            let Some(part) = &s.hist else { continue };
            if !matches_all(matchers, &s.labels) {
                continue;
            }
            let mut buf = Vec::new();
            part.collect_into(mint, maxt, &mut buf);
            if !buf.is_empty() {
                f(&s.labels, buf);
            }
        }
    }
}

impl MetricsStore {
    /// Writes native-histogram samples, with the semantics of
    /// [`MetricsStore::append`]: an exact duplicate (same series, timestamp
    /// and histogram) is a no-op, the same timestamp with another value
    /// (a float sample or another histogram) is refused, and samples older
    /// than the out-of-order window are refused. A histogram that fails
    /// validation (schema, bucket layout) is refused as malformed. Returns
    /// once the accepted samples are in the WAL.
    pub fn append_histograms(&self, tenant: &str, batch: Vec<SeriesHistograms>) -> Result<WriteOutcome, StoreError> {
        let limit = self.opts.head_max_samples;
        self.t.wait_for_flush_while(|| self.head_samples() >= limit, crate::logs::BACKPRESSURE_MAX_WAIT);
        let _w = self.t.write_lock.lock().unwrap_or_else(|p| p.into_inner());
        let mut outcome = WriteOutcome::default();
        let mut merged: crate::LabelMap<Vec<(i64, Histogram)>> = Default::default();
        for s in batch {
            if s.labels.get(cairn_wire::METRIC_NAME).is_none() {
                outcome.rejected.extend(
                    s.histograms
                        .iter()
                        .map(|_| (RejectReason::MissingMetricName, format!("series {} has no metric name", s.labels))),
                );
                continue;
            }
            for (t, h) in s.histograms {
                if let Err(e) = h.validate() {
                    outcome.rejected.push((
                        RejectReason::MalformedHistogram,
                        format!("native histogram at {t} in series {}: {e}", s.labels),
                    ));
                    continue;
                }
                merged.entry(s.labels.clone()).or_default().push((t, h));
            }
        }
        let window = i64::try_from(self.opts.out_of_order_window.as_millis()).unwrap_or(i64::MAX);
        let mut to_write = Vec::with_capacity(merged.len());
        let mut newest_all = self.newest.lock().unwrap_or_else(|p| p.into_inner());
        let newest = newest_all.get(tenant);
        {
            let head = self.t.head.read().unwrap_or_else(|p| p.into_inner());
            let th = head.tenants.get(tenant);
            for (labels, mut samples) in merged {
                samples.sort_by_key(|p| p.0);
                let existing = th.and_then(|t| t.by_labels.get(&labels).map(|&i| &t.series[i]));
                // the series' own newest while it is in the head (the map's
                // may be older then)
                let last = newest
                    .and_then(|m| m.get(&labels))
                    .copied()
                    .max(existing.and_then(|s| (s.newest != super::NO_NEWEST).then_some(s.newest)));
                let mut keep: Vec<(i64, Histogram)> = Vec::with_capacity(samples.len());
                for (t, h) in samples {
                    if let Some(last) = last
                        && t < last.saturating_sub(window)
                    {
                        outcome.rejected.push(too_old(t, last, window, &labels));
                        continue;
                    }
                    let conflict = match keep.last() {
                        Some((lt, lh)) if *lt == t => Some(!hist_bits_eq(lh, &h)),
                        _ => existing.and_then(|ex| {
                            if ex.value_at(t).is_some() {
                                return Some(true); // a float sample is there
                            }
                            ex.hist.as_ref().and_then(|p| p.value_at(t)).map(|old| !hist_bits_eq(&old, &h))
                        }),
                    };
                    match conflict {
                        Some(false) => outcome.accepted += 1,
                        Some(true) => outcome.rejected.push((
                            RejectReason::DuplicateTimestamp,
                            format!("duplicate sample for timestamp {t} with a different value in series {labels}"),
                        )),
                        None => {
                            outcome.accepted += 1;
                            keep.push((t, h));
                        }
                    }
                }
                if !keep.is_empty() {
                    to_write.push(SeriesHistograms { labels, histograms: keep });
                }
            }
        }
        if to_write.is_empty() {
            return Ok(outcome);
        }
        let mut buf = Vec::new();
        encode_hist_batch(&mut buf, tenant, &to_write);
        self.t.wal.append(RECORD_HISTOGRAMS, &buf)?;
        for s in &to_write {
            if let Some((max, _)) = s.histograms.last() {
                crate::newest::note(&mut newest_all, tenant, &s.labels, *max);
            }
        }
        let span = to_write
            .iter()
            .flat_map(|s| s.histograms.iter().map(|p| p.0))
            .fold((i64::MAX, i64::MIN), |(lo, hi), t| (lo.min(t), hi.max(t)));
        let mut head = self.t.head.write().unwrap_or_else(|p| p.into_inner());
        // the series' newest (what the map holds now, noted above, is at
        // least what the series had)
        let known: Vec<(Labels, i64)> = to_write
            .iter()
            .map(|s| {
                let n = newest_all.get(tenant).and_then(|m| m.get(&s.labels)).copied();
                (s.labels.clone(), n.unwrap_or(super::NO_NEWEST))
            })
            .collect();
        drop(newest_all);
        apply_hist(&mut head, tenant, to_write);
        if let Some(th) = head.tenants.get_mut(tenant) {
            for (labels, n) in known {
                if let Some(&i) = th.by_labels.get(&labels) {
                    th.series[i].newest = th.series[i].newest.max(n);
                }
            }
        }
        drop(head);
        self.changed(super::Change::Written { tenant, min_ts: span.0, max_ts: span.1 });
        Ok(outcome)
    }
}

/// The refusal of a sample older than the out-of-order window allows.
fn too_old(t: i64, last: i64, window: i64, labels: &Labels) -> (RejectReason, String) {
    if window == 0 {
        (
            RejectReason::OutOfOrder,
            format!(
                "out of order sample: timestamp {t} is older than the newest sample ({last}) \
                 of series {labels} and storage.metrics.out_of_order_window is 0"
            ),
        )
    } else {
        (
            RejectReason::TooOld,
            format!(
                "too old sample: timestamp {t} is more than storage.metrics.out_of_order_window \
                 ({window} ms) older than the newest sample ({last}) of series {labels}"
            ),
        )
    }
}

/// Bit-exact equality of two histogram samples (a re-sent sample).
fn hist_bits_eq(a: &Histogram, b: &Histogram) -> bool {
    let f = |x: f64, y: f64| x.to_bits() == y.to_bits();
    let bs = |x: &[(i32, f64)], y: &[(i32, f64)]| {
        x.len() == y.len() && x.iter().zip(y).all(|(p, q)| p.0 == q.0 && f(p.1, q.1))
    };
    a.reset_hint == b.reset_hint
        && a.schema == b.schema
        && f(a.zero_threshold, b.zero_threshold)
        && f(a.zero_count, b.zero_count)
        && f(a.count, b.count)
        && f(a.sum, b.sum)
        && bs(&a.positive, &b.positive)
        && bs(&a.negative, &b.negative)
        && cairn_wire::histogram::floats_match(&a.custom_values, &b.custom_values)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::CompactionPolicy;
    use crate::metrics::{MetricsStoreOptions, SelectLimits};
    use cairn_wire::SeriesSamples;

    fn h(k: i64) -> Histogram {
        Histogram {
            schema: 1,
            count: (3 * k) as f64,
            sum: k as f64 * 0.5,
            positive: vec![(0, k as f64), (1, (2 * k) as f64)],
            ..Histogram::default()
        }
    }

    fn all(s: &MetricsStore) -> Vec<crate::metrics::SelectedSeries> {
        let unlimited = SelectLimits { series: usize::MAX, samples: usize::MAX };
        s.select_mixed_limited("t", &[], i64::MIN, i64::MAX, unlimited).unwrap()
    }

    /// Histograms through the WAL (restart), a flush to a block, a type
    /// switch of the series, duplicates and compaction: every read gives
    /// the same samples.
    #[test]
    fn histograms_survive_restart_flush_and_compaction() {
        let d = tempfile::tempdir().unwrap();
        let labels = Labels::from_pairs([("__name__", "lat"), ("job", "a")]).unwrap();
        let opts = || MetricsStoreOptions { out_of_order_window: Duration::from_secs(86_400), ..Default::default() };
        let write = |s: &MetricsStore, from: i64, to: i64| {
            let histograms = (from..to).map(|k| (k * 15_000, h(k))).collect();
            s.append_histograms("t", vec![SeriesHistograms { labels: labels.clone(), histograms }]).unwrap()
        };
        {
            let s = MetricsStore::open_with(d.path(), opts()).unwrap();
            assert_eq!(write(&s, 0, 300).accepted, 300);
            // exact duplicate: no-op; another value at a taken timestamp: refused
            let o = s
                .append_histograms(
                    "t",
                    vec![SeriesHistograms { labels: labels.clone(), histograms: vec![(0, h(0)), (15_000, h(7))] }],
                )
                .unwrap();
            assert_eq!((o.accepted, o.rejected.len()), (1, 1));
            // a float at a histogram's timestamp is refused too; the series
            // switches to floats after the histograms
            let o = s
                .append(
                    "t",
                    vec![SeriesSamples { labels: labels.clone(), samples: vec![(30_000, 1.0), (300 * 15_000, 2.0)] }],
                )
                .unwrap();
            assert_eq!((o.accepted, o.rejected.len()), (1, 1));
            let bad = Histogram { schema: 9, ..h(1) };
            let o = s
                .append_histograms("t", vec![SeriesHistograms { labels: labels.clone(), histograms: vec![(1, bad)] }])
                .unwrap();
            assert_eq!(o.rejected[0].0, RejectReason::MalformedHistogram);
        }
        let check = |s: &MetricsStore| {
            let got = all(s);
            assert_eq!(got.len(), 1);
            assert_eq!(got[0].samples, vec![(300 * 15_000, 2.0)]);
            assert_eq!(got[0].histograms.len(), 300);
            assert!(
                got[0].histograms.iter().enumerate().all(|(k, (t, x))| *t == k as i64 * 15_000 && *x == h(k as i64))
            );
            assert_eq!(s.series("t", &[], 0, 0), vec![labels.clone()]);
        };
        let s = MetricsStore::open_with(d.path(), opts()).unwrap();
        check(&s);
        assert_eq!(s.flush().unwrap(), 301);
        check(&s);
        // The float at 300 × 15 s is in a block now: as for floats, the
        // duplicate check sees the head only, and reads keep the histogram.
        write(&s, 300, 400);
        write(&s, 400, 500);
        s.flush().unwrap();
        let policy = CompactionPolicy { ranges: vec![1 << 60], max_block_bytes: 0 };
        assert_eq!(s.compact(&policy, 4).unwrap().blocks_merged, 2);
        drop(s);
        let s = MetricsStore::open_with(d.path(), opts()).unwrap();
        let got = all(&s);
        assert_eq!(got[0].histograms.len(), 500);
        assert!(got[0].histograms.iter().enumerate().all(|(k, (t, x))| *t == k as i64 * 15_000 && *x == h(k as i64)));
        assert!(got[0].samples.is_empty());
        // the float-only select leaves histogram samples out
        assert_eq!(s.select("t", &[], 0, 15_000 * 10), vec![]);
    }
}
