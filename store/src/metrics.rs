//! The metrics engine: series of (millisecond timestamp, f64) samples per
//! tenant, written through the WAL.
//!
//! Current stage: the head keeps samples uncompressed in memory and is rebuilt
//! from the WAL at start; compressed chunks, blocks, compaction and retention
//! replace this in the storage issue without changing this API's meaning.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Mutex, RwLock};

pub use cairn_wire::SeriesSamples;
use cairn_wire::{Labels, Matcher, matcher::matches_all};

use crate::codec::{Reader, put_bytes, put_uvarint, put_varint};
use crate::wal::{ReplayStats, Wal, WalOptions};
use crate::{RejectReason, StoreError, WriteOutcome};

/// WAL record type of a metrics write batch.
pub const RECORD_SAMPLES: u8 = 1;

#[derive(Default)]
struct Series {
    labels: Labels,
    /// Sorted by timestamp, unique timestamps.
    samples: Vec<(i64, f64)>,
}

#[derive(Default)]
struct TenantHead {
    series: Vec<Series>,
    by_labels: HashMap<Labels, usize>,
}

/// The metrics store.
pub struct MetricsStore {
    wal: Wal,
    /// Serialises writers so validation under the read lock stays valid until
    /// the batch is applied.
    write_lock: Mutex<()>,
    head: RwLock<HashMap<String, TenantHead>>,
    replay: ReplayStats,
}

fn encode_batch(buf: &mut Vec<u8>, tenant: &str, batch: &[SeriesSamples]) {
    put_bytes(buf, tenant.as_bytes());
    put_uvarint(buf, batch.len() as u64);
    for s in batch {
        put_uvarint(buf, s.labels.len() as u64);
        for l in &s.labels {
            put_bytes(buf, l.name.as_bytes());
            put_bytes(buf, l.value.as_bytes());
        }
        put_uvarint(buf, s.samples.len() as u64);
        for &(t, v) in &s.samples {
            put_varint(buf, t);
            buf.extend_from_slice(&v.to_bits().to_le_bytes());
        }
    }
}

fn decode_batch(payload: &[u8]) -> Result<(String, Vec<SeriesSamples>), crate::codec::DecodeError> {
    let mut r = Reader::new(payload);
    let tenant = r.str()?.to_string();
    let n = r.count(2)?;
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let nl = r.count(2)?;
        let mut pairs = Vec::with_capacity(nl);
        for _ in 0..nl {
            pairs.push((r.str()?.to_string(), r.str()?.to_string()));
        }
        let labels = Labels::from_pairs(pairs)
            .map_err(|_| crate::codec::DecodeError { offset: 0, reason: "invalid label set in WAL record" })?;
        let ns = r.count(9)?;
        let mut samples = Vec::with_capacity(ns);
        for _ in 0..ns {
            let t = r.varint()?;
            let v = f64::from_bits(r.u64_le()?);
            samples.push((t, v));
        }
        out.push(SeriesSamples { labels, samples });
    }
    Ok((tenant, out))
}

fn apply(head: &mut HashMap<String, TenantHead>, tenant: &str, batch: Vec<SeriesSamples>) {
    let th = head.entry(tenant.to_string()).or_default();
    for s in batch {
        let idx = match th.by_labels.get(&s.labels) {
            Some(&i) => i,
            None => {
                let i = th.series.len();
                th.by_labels.insert(s.labels.clone(), i);
                th.series.push(Series { labels: s.labels, samples: Vec::new() });
                i
            }
        };
        let series = &mut th.series[idx];
        for (t, v) in s.samples {
            match series.samples.last() {
                Some(&(lt, _)) if lt < t => series.samples.push((t, v)),
                None => series.samples.push((t, v)),
                _ => match series.samples.binary_search_by_key(&t, |p| p.0) {
                    Ok(_) => {} // duplicate: validated before the WAL; replay may repeat it
                    Err(pos) => series.samples.insert(pos, (t, v)),
                },
            }
        }
    }
}

impl MetricsStore {
    /// Opens the store in `dir` (its WAL lives in `dir` itself) and replays it.
    pub fn open(dir: &Path, wal_opts: WalOptions) -> Result<Self, StoreError> {
        let mut head = HashMap::new();
        let (wal, replay) = Wal::open(dir, wal_opts, 0, |typ, payload| {
            if typ != RECORD_SAMPLES {
                return Err(StoreError::Corrupt {
                    path: dir.to_path_buf(),
                    offset: 0,
                    reason: format!("unknown metrics WAL record type {typ}"),
                });
            }
            let (tenant, batch) = decode_batch(payload).map_err(|e| StoreError::Corrupt {
                path: dir.to_path_buf(),
                offset: e.offset as u64,
                reason: format!("metrics WAL record: {}", e.reason),
            })?;
            apply(&mut head, &tenant, batch);
            Ok(())
        })?;
        Ok(MetricsStore { wal, write_lock: Mutex::new(()), head: RwLock::new(head), replay })
    }

    /// What the WAL replay at open found.
    pub fn replay_stats(&self) -> &ReplayStats {
        &self.replay
    }

    /// Writes a batch. Exact duplicates (same series, timestamp and value bits)
    /// are accepted as no-ops; the same timestamp with another value, or a
    /// series without `__name__`, is rejected for that sample only. Returns
    /// once the accepted samples are in the WAL.
    pub fn append(&self, tenant: &str, batch: Vec<SeriesSamples>) -> Result<WriteOutcome, StoreError> {
        let _w = self.write_lock.lock().unwrap_or_else(|p| p.into_inner());
        let mut outcome = WriteOutcome::default();
        // Merge series that appear more than once in the batch.
        let mut merged: HashMap<Labels, Vec<(i64, f64)>> = HashMap::with_capacity(batch.len());
        for s in batch {
            if s.labels.get(cairn_wire::METRIC_NAME).is_none() {
                outcome.rejected.extend(
                    s.samples
                        .iter()
                        .map(|_| (RejectReason::MissingMetricName, format!("series {} has no metric name", s.labels))),
                );
                continue;
            }
            merged.entry(s.labels).or_default().extend(s.samples);
        }
        let mut to_write = Vec::with_capacity(merged.len());
        {
            let head = self.head.read().unwrap_or_else(|p| p.into_inner());
            let th = head.get(tenant);
            for (labels, mut samples) in merged {
                samples.sort_by_key(|p| p.0);
                let existing =
                    th.and_then(|t| t.by_labels.get(&labels)).and_then(|&i| th.map(|t| &t.series[i].samples));
                let mut keep = Vec::with_capacity(samples.len());
                for (t, v) in samples {
                    let prior = match keep.last() {
                        Some(&(lt, lv)) if lt == t => Some(lv),
                        _ => existing
                            .and_then(|ex| ex.binary_search_by_key(&t, |p: &(i64, f64)| p.0).ok().map(|i| ex[i].1)),
                    };
                    match prior {
                        Some(pv) if f64::to_bits(pv) == v.to_bits() => outcome.accepted += 1,
                        Some(_) => outcome.rejected.push((
                            RejectReason::DuplicateTimestamp,
                            format!("duplicate sample for timestamp {t} with a different value in series {labels}"),
                        )),
                        None => {
                            outcome.accepted += 1;
                            keep.push((t, v));
                        }
                    }
                }
                if !keep.is_empty() {
                    to_write.push(SeriesSamples { labels, samples: keep });
                }
            }
        }
        if to_write.is_empty() {
            return Ok(outcome);
        }
        let mut buf = Vec::new();
        encode_batch(&mut buf, tenant, &to_write);
        self.wal.append(RECORD_SAMPLES, &buf)?;
        let mut head = self.head.write().unwrap_or_else(|p| p.into_inner());
        apply(&mut head, tenant, to_write);
        Ok(outcome)
    }

    /// Series of `tenant` matching all `matchers`, with their samples in
    /// `[mint, maxt]` (inclusive), sorted by labels. Series with no sample in
    /// the range are left out.
    pub fn select(&self, tenant: &str, matchers: &[Matcher], mint: i64, maxt: i64) -> Vec<SeriesSamples> {
        let head = self.head.read().unwrap_or_else(|p| p.into_inner());
        let Some(th) = head.get(tenant) else {
            return Vec::new();
        };
        let mut out: Vec<SeriesSamples> = th
            .series
            .iter()
            .filter(|s| matches_all(matchers, &s.labels))
            .filter_map(|s| {
                let lo = s.samples.partition_point(|p| p.0 < mint);
                let hi = s.samples.partition_point(|p| p.0 <= maxt);
                (lo < hi).then(|| SeriesSamples { labels: s.labels.clone(), samples: s.samples[lo..hi].to_vec() })
            })
            .collect();
        out.sort_by(|a, b| a.labels.cmp(&b.labels));
        out
    }

    /// Label sets of `tenant`'s series matching all `matchers` that have at
    /// least one sample in `[mint, maxt]`, sorted. Empty `matchers` match
    /// every series. Backs `/api/v1/series`, `/labels` and `/label/…/values`.
    pub fn series(&self, tenant: &str, matchers: &[Matcher], mint: i64, maxt: i64) -> Vec<Labels> {
        let head = self.head.read().unwrap_or_else(|p| p.into_inner());
        let Some(th) = head.get(tenant) else {
            return Vec::new();
        };
        let mut out: Vec<Labels> = th
            .series
            .iter()
            .filter(|s| matches_all(matchers, &s.labels))
            .filter(|s| {
                let lo = s.samples.partition_point(|p| p.0 < mint);
                lo < s.samples.len() && s.samples[lo].0 <= maxt
            })
            .map(|s| s.labels.clone())
            .collect();
        out.sort();
        out
    }

    /// Number of series and samples held, over all tenants.
    pub fn counts(&self) -> (usize, usize) {
        let head = self.head.read().unwrap_or_else(|p| p.into_inner());
        head.values()
            .fold((0, 0), |(s, n), t| (s + t.series.len(), n + t.series.iter().map(|x| x.samples.len()).sum::<usize>()))
    }

    /// Bytes of WAL on disk.
    pub fn wal_size_bytes(&self) -> u64 {
        self.wal.size_bytes()
    }

    /// Flushes the WAL (for `fsync = "interval"` and at shutdown).
    pub fn sync(&self) -> Result<(), StoreError> {
        self.wal.sync()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cairn_wire::MatchOp;

    fn ls(pairs: &[(&str, &str)]) -> Labels {
        Labels::from_pairs(pairs.iter().copied()).unwrap()
    }

    #[test]
    fn write_select_restart() {
        let d = tempfile::tempdir().unwrap();
        let up = ls(&[("__name__", "up"), ("job", "a")]);
        let up_b = ls(&[("__name__", "up"), ("job", "b")]);
        {
            let s = MetricsStore::open(d.path(), WalOptions::default()).unwrap();
            let o = s
                .append(
                    "t",
                    vec![
                        SeriesSamples { labels: up.clone(), samples: vec![(2000, 1.0), (1000, 0.0)] },
                        SeriesSamples { labels: up_b.clone(), samples: vec![(1000, 5.0)] },
                    ],
                )
                .unwrap();
            assert_eq!(o, WriteOutcome { accepted: 3, rejected: vec![] });
            // exact duplicate: no-op; conflicting value: rejected; stale NaN kept bit-exact
            let stale = f64::from_bits(0x7ff0000000000002);
            let o = s
                .append(
                    "t",
                    vec![SeriesSamples { labels: up.clone(), samples: vec![(1000, 0.0), (2000, 9.0), (3000, stale)] }],
                )
                .unwrap();
            assert_eq!(o.accepted, 2);
            assert_eq!(o.rejected.len(), 1);
            assert_eq!(o.rejected[0].0, RejectReason::DuplicateTimestamp);
        }
        let s = MetricsStore::open(d.path(), WalOptions::default()).unwrap();
        let m = [Matcher::new(MatchOp::Regex, "job", "a|b").unwrap()];
        let got = s.select("t", &m, 0, 10_000);
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].labels, up);
        assert_eq!(got[0].samples.len(), 3);
        assert_eq!(got[0].samples[2].1.to_bits(), 0x7ff0000000000002);
        assert_eq!(got[0].samples[1], (2000, 1.0));
        assert!(s.select("other", &m, 0, 10_000).is_empty());
        assert_eq!(s.series("t", &[], 0, 10_000), vec![up.clone(), up_b.clone()]);
        assert_eq!(s.series("t", &[], 1500, 10_000), vec![up.clone()], "up_b has no sample after 1000");
        assert_eq!(s.series("t", &[Matcher::equal("job", "b")], 0, 1000), vec![up_b.clone()]);
        assert_eq!(s.select("t", &m, 1500, 2500)[0].samples, vec![(2000, 1.0)]);
    }

    #[test]
    fn nameless_series_rejected_rest_written() {
        let d = tempfile::tempdir().unwrap();
        let s = MetricsStore::open(d.path(), WalOptions::default()).unwrap();
        let o = s
            .append(
                "t",
                vec![
                    SeriesSamples { labels: ls(&[("job", "x")]), samples: vec![(1, 1.0)] },
                    SeriesSamples { labels: ls(&[("__name__", "m")]), samples: vec![(1, 1.0)] },
                ],
            )
            .unwrap();
        assert_eq!(o.accepted, 1);
        assert_eq!(o.rejected[0].0, RejectReason::MissingMetricName);
    }

    #[test]
    fn batch_codec_round_trip_and_garbage() {
        let batch = vec![SeriesSamples {
            labels: ls(&[("__name__", "m"), ("a", "b")]),
            samples: vec![(-5, 1.5), (i64::MAX, f64::NAN)],
        }];
        let mut b = Vec::new();
        encode_batch(&mut b, "ten", &batch);
        let (t, back) = decode_batch(&b).unwrap();
        assert_eq!(t, "ten");
        assert_eq!(back[0].labels, batch[0].labels);
        assert_eq!(back[0].samples[0], (-5, 1.5));
        for cut in 0..b.len() {
            assert!(decode_batch(&b[..cut]).is_err());
        }
    }
}
