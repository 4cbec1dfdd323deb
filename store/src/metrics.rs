//! The metrics engine: series of (millisecond timestamp, f64) samples per
//! tenant, written through the WAL.
//!
//! Samples live in the in-memory head until it is flushed (by size or age)
//! into an immutable block of Gorilla-encoded chunks (`xor.rs`, format in
//! `docs/format/tsdb.md`); the shared flush protocol is in `tiered.rs`.
//! Queries merge blocks, the head being flushed, and the head.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, Instant};

pub use cairn_wire::SeriesSamples;
use cairn_wire::{Labels, Matcher, matcher::matches_all};

use crate::block::{Block, BlockKind, BlockStream, ChunkMeta, EncodedChunk, SeriesChunks};
use crate::codec::{Reader, put_bytes, put_labels, put_uvarint, put_varint};
use crate::tiered::{CompactionPolicy, CompactionStats, HeadData, Tiered};
use crate::wal::{ReplayStats, WalOptions};
use crate::{RejectReason, StoreError, WriteOutcome, xor};

#[path = "metrics_hist.rs"]
mod hist;
pub use cairn_wire::{Histogram, SeriesHistograms};
pub use hist::{HIST_CHUNK_SAMPLES, RECORD_HISTOGRAMS};
#[path = "metrics_stream.rs"]
mod stream;
pub use stream::{SeriesBuf, SeriesIter, SeriesStream};
#[path = "metrics_st.rs"]
mod st;
pub use st::{SeriesStartTimestamps, st_tenant};

/// WAL record type of a metrics write batch with each series' labels
/// (written before type 4; still replayed).
pub const RECORD_SAMPLES: u8 = 1;

/// WAL record type of a metrics write batch that names series by a
/// reference declared (with the labels) once per WAL segment.
pub const RECORD_SERIES_SAMPLES: u8 = 4;

/// A full chunk of a series in the head, already encoded as it will be in a
/// block (`xor::encode_chunk`), so the head holds ~1 byte per sample
/// instead of 16.
struct HeadChunk {
    bytes: Box<[u8]>,
    min_ts: i64,
    max_ts: i64,
    count: u32,
}

#[derive(Default)]
struct Series {
    labels: Labels,
    /// Encoded chunks of [`CHUNK_SAMPLES`] (more after out-of-order
    /// inserts), in time order, not overlapping, all older than `samples`.
    sealed: Vec<HeadChunk>,
    /// The newest samples (up to a chunk plus [`OPEN_SLACK`]): sorted,
    /// unique timestamps.
    samples: Vec<(i64, f64)>,
    /// Native-histogram samples, if the series ever had one.
    hist: Option<Box<hist::HistPart>>,
    /// The WAL segment whose type-4 records may name this series by its
    /// reference (its index in the tenant's head): the series' labels were
    /// declared in it. 0: none yet.
    declared_in: u64,
    /// The series' newest timestamp anywhere (blocks, flushing head, this
    /// head; [`NO_NEWEST`]: none known), the reference of the out-of-order
    /// window. Kept here while the series is in the head, so ingest reads
    /// and raises it without probing [`MetricsStore::newest`] (which holds
    /// it for series not in the head and gets it back when the head is
    /// frozen for a flush).
    newest: i64,
}

/// [`Series::newest`] of a series with no known newest sample.
const NO_NEWEST: i64 = i64::MIN;

impl Series {
    fn new(labels: Labels) -> Series {
        Series { labels, sealed: Vec::new(), samples: Vec::new(), hist: None, declared_in: 0, newest: NO_NEWEST }
    }

    /// Newest timestamp held.
    fn last_ts(&self) -> Option<i64> {
        let f = self.samples.last().map(|p| p.0).or_else(|| self.sealed.last().map(|c| c.max_ts));
        match self.hist.as_ref().and_then(|h| h.last_ts()) {
            Some(h) => Some(f.map_or(h, |f| f.max(h))),
            None => f,
        }
    }

    /// Samples held.
    fn len(&self) -> usize {
        self.samples.len()
            + self.sealed.iter().map(|c| c.count as usize).sum::<usize>()
            + self.hist.as_ref().map_or(0, |h| h.len())
    }

    /// Index of the sealed chunk a sample at `t` belongs in: the first one
    /// ending at or after `t`; `None` when `t` is newer than all of them.
    fn sealed_for(&self, t: i64) -> Option<usize> {
        let i = self.sealed.partition_point(|c| c.max_ts < t);
        (i < self.sealed.len()).then_some(i)
    }

    /// The value stored at `t`, if any.
    fn value_at(&self, t: i64) -> Option<f64> {
        // The usual case on ingest, answered from the newest sample alone
        // (the binary search below touches a cache line per step, and
        // ingest checks every series of every request).
        if self.last_ts().is_none_or(|l| t > l) {
            return None;
        }
        match self.sealed_for(t) {
            Some(i) => {
                let c = &self.sealed[i];
                if t < c.min_ts {
                    return None;
                }
                let mut out = Vec::with_capacity(c.count as usize);
                xor::decode_chunk(&c.bytes, &mut out).ok()?;
                out.binary_search_by_key(&t, |p| p.0).ok().map(|k| out[k].1)
            }
            None => self.samples.binary_search_by_key(&t, |p| p.0).ok().map(|k| self.samples[k].1),
        }
    }

    /// Adds a sample; false when one with that timestamp is there already
    /// (validated before the WAL; replay may repeat it).
    fn insert(&mut self, t: i64, v: f64) -> bool {
        if self.last_ts().is_none_or(|l| t > l) {
            // in order: the usual case
            self.samples.push((t, v));
        } else if let Some(i) = self.sealed_for(t) {
            // Older than the open tail: re-encode that chunk (out-of-order
            // writes only, within the window).
            let c = &mut self.sealed[i];
            let mut out = Vec::with_capacity(c.count as usize + 1);
            if xor::decode_chunk(&c.bytes, &mut out).is_err() {
                return false; // written by this process: cannot happen
            }
            let Err(pos) = out.binary_search_by_key(&t, |p| p.0) else {
                return false;
            };
            out.insert(pos, (t, v));
            *c = HeadChunk::encode(&out);
            return true;
        } else {
            match self.samples.binary_search_by_key(&t, |p| p.0) {
                Ok(_) => return false,
                Err(pos) => self.samples.insert(pos, (t, v)),
            }
        }
        self.seal_full();
        true
    }

    /// Adds samples sorted by strictly increasing timestamp (an append's
    /// validated samples); returns how many were new. When all are newer
    /// than anything held — the usual case — they are copied in one go;
    /// otherwise each goes through [`Series::insert`].
    fn insert_sorted(&mut self, samples: &[(i64, f64)]) -> u64 {
        let Some(&(first, _)) = samples.first() else {
            return 0;
        };
        if self.last_ts().is_some_and(|l| first <= l) || !samples.windows(2).all(|w| w[0].0 < w[1].0) {
            return samples.iter().map(|&(t, v)| u64::from(self.insert(t, v))).sum();
        }
        self.samples.extend_from_slice(samples);
        self.seal_full();
        samples.len() as u64
    }

    /// Seals full chunks of the open tail while it holds more than a chunk
    /// plus [`OPEN_SLACK`] samples: all but the newest of them, so a sample
    /// that arrives a little late (concurrent senders reorder requests)
    /// still lands in the open tail instead of re-encoding a chunk. The
    /// tail keeps its allocation (it fills up again the same way).
    fn seal_full(&mut self) {
        while self.samples.len() >= CHUNK_SAMPLES + OPEN_SLACK {
            self.sealed.push(HeadChunk::encode(&self.samples[..CHUNK_SAMPLES]));
            self.samples.drain(..CHUNK_SAMPLES);
        }
    }

    /// Appends the samples in `[mint, maxt]` to `out`, sorted.
    fn collect_into(&self, mint: i64, maxt: i64, out: &mut Vec<(i64, f64)>) {
        for c in self.sealed.iter().filter(|c| c.min_ts <= maxt && c.max_ts >= mint) {
            let from = out.len();
            if xor::decode_chunk(&c.bytes, out).is_err() {
                out.truncate(from); // written by this process: cannot happen
                continue;
            }
            if c.min_ts < mint || c.max_ts > maxt {
                let mut k = from;
                for j in from..out.len() {
                    if out[j].0 >= mint && out[j].0 <= maxt {
                        out[k] = out[j];
                        k += 1;
                    }
                }
                out.truncate(k);
            }
        }
        let lo = self.samples.partition_point(|p| p.0 < mint);
        let hi = self.samples.partition_point(|p| p.0 <= maxt);
        out.extend_from_slice(&self.samples[lo..hi.max(lo)]);
    }

    /// Whether any sample lies in `[mint, maxt]`.
    fn any_in(&self, mint: i64, maxt: i64) -> bool {
        let lo = self.samples.partition_point(|p| p.0 < mint);
        self.samples.get(lo).is_some_and(|p| p.0 <= maxt)
            || self.hist.as_ref().is_some_and(|h| h.any_in(mint, maxt))
            || self.sealed.iter().filter(|c| c.min_ts <= maxt && c.max_ts >= mint).any(|c| {
                // A chunk that straddles a range end may still have no
                // sample inside the range: decode it to find out.
                (c.min_ts >= mint && c.max_ts <= maxt) || {
                    let mut out = Vec::with_capacity(c.count as usize);
                    xor::decode_chunk(&c.bytes, &mut out).is_ok() && out.iter().any(|p| p.0 >= mint && p.0 <= maxt)
                }
            })
    }

    /// The series' chunks as a block stores them.
    fn encoded(&self) -> Vec<EncodedChunk> {
        let mut out: Vec<EncodedChunk> = self.sealed.iter().map(HeadChunk::to_encoded).collect();
        out.extend(encode_chunks(&self.samples));
        if let Some(h) = &self.hist {
            out.extend(h.encoded());
        }
        out
    }
}

impl HeadChunk {
    /// The chunk as a block stores it (float and histogram chunks alike).
    pub(crate) fn to_encoded(&self) -> EncodedChunk {
        EncodedChunk {
            bytes: self.bytes.to_vec(),
            min_ts: self.min_ts,
            max_ts: self.max_ts,
            count: u64::from(self.count),
            raw_bytes: 16 * u64::from(self.count),
            payload: 0,
            filter: Vec::new(),
        }
    }

    /// Encodes sorted, unique, non-empty `samples`.
    fn encode(samples: &[(i64, f64)]) -> HeadChunk {
        let mut bytes = Vec::new();
        xor::encode_chunk(&mut bytes, samples);
        HeadChunk {
            bytes: bytes.into_boxed_slice(),
            min_ts: samples.first().map_or(0, |p| p.0),
            max_ts: samples.last().map_or(0, |p| p.0),
            count: samples.len() as u32,
        }
    }
}

#[derive(Default)]
struct TenantHead {
    series: Vec<Series>,
    by_labels: crate::LabelMap<usize>,
    /// Replay only: series reference of the type-4 records read so far →
    /// index in `series`.
    replay_refs: HashMap<u64, usize>,
}

/// In-memory samples not yet in a block.
#[derive(Default)]
struct Head {
    tenants: HashMap<String, TenantHead>,
    samples: u64,
    since: Option<Instant>,
    /// The store's [`MetricsStore::newest`] (set at open, handed on to the
    /// next head when this one is frozen), which takes the head series'
    /// [`Series::newest`] when this head is frozen.
    newest: Option<SharedNewest>,
}

/// [`MetricsStore::newest`].
type SharedNewest = std::sync::Arc<Mutex<crate::newest::NewestMap>>;

/// Samples per chunk in a block (one hour at a 15 s scrape interval).
pub const CHUNK_SAMPLES: usize = 240;

/// Samples kept open past a full chunk: a head chunk is sealed once this
/// many newer samples follow it. 240 + 16 fills the 256 samples a growing
/// `Vec` reserves anyway. With 4 concurrent senders of 10-sample requests,
/// sealing at once made ~1.5 % of the PEERS workload's samples arrive
/// behind a sealed chunk, each decoding and re-encoding it.
const OPEN_SLACK: usize = 16;

/// Default of [`MetricsStoreOptions::out_of_order_window`]: ten minutes,
/// enough for a sender catching up with concurrent requests or a collector
/// re-sending after an outage, small enough that late data lands in the head.
pub const DEFAULT_OUT_OF_ORDER_WINDOW: Duration = Duration::from_secs(600);

/// Default of [`MetricsStoreOptions::head_max_samples`]: 16 Mi samples.
/// The head keeps full chunks encoded (~1 byte per sample), so this costs
/// ~16 MB besides the open tails (up to 256 × 16 bytes per series); each
/// flush leaves a partial chunk per series that compaction decodes and
/// joins, and every flushed block is copied again by the merges of its
/// level, so fewer, larger flushes cost less CPU per sample. With 4 Mi a
/// 10,140-series backfill flushed every ~7 minutes of data, and flushes
/// and compaction were a fifth of its ingest CPU.
pub const DEFAULT_HEAD_MAX_SAMPLES: u64 = 16 << 20;

/// Settings of the metrics store.
#[derive(Debug, Clone)]
pub struct MetricsStoreOptions {
    /// WAL settings.
    pub wal: WalOptions,
    /// Flush the head to a block once it holds this many samples.
    pub head_max_samples: u64,
    /// Flush the head once its oldest data is this old.
    pub flush_interval: Duration,
    /// How far behind its series' newest sample a sample may be and still be
    /// accepted (merged in time order at query time). Older samples are
    /// refused: [`RejectReason::OutOfOrder`] when the window is zero,
    /// [`RejectReason::TooOld`] otherwise (Prometheus's "out of order
    /// sample" / "too old sample").
    pub out_of_order_window: Duration,
}

impl Default for MetricsStoreOptions {
    fn default() -> Self {
        MetricsStoreOptions {
            wal: WalOptions::default(),
            head_max_samples: DEFAULT_HEAD_MAX_SAMPLES,
            flush_interval: Duration::from_secs(3600),
            out_of_order_window: DEFAULT_OUT_OF_ORDER_WINDOW,
        }
    }
}

/// The metrics store.
pub struct MetricsStore {
    t: Tiered<Head>,
    opts: MetricsStoreOptions,
    /// Newest timestamp of every series (head and blocks), per tenant: the
    /// reference point of the out-of-order window. For a series in the head,
    /// [`Series::newest`] is the current value (this one may be older: it
    /// is brought up to date when the head is frozen). Written under the
    /// write lock; survives flushes; rebuilt at open from block indexes and
    /// the head.
    newest: SharedNewest,
    /// Told of every change of what queries see (see [`Self::on_change`]).
    change_hook: std::sync::OnceLock<ChangeHook>,
}

/// What changed in a [`MetricsStore`], for caches of query answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change<'a> {
    /// Samples of `tenant` with timestamps in `[min_ts, max_ts]` were
    /// written (floats or histograms); queries see them already.
    Written { tenant: &'a str, min_ts: i64, max_ts: i64 },
    /// Data was deleted (retention): any answer may have changed.
    Removed,
}

type ChangeHook = Box<dyn Fn(Change<'_>) + Send + Sync>;

impl HeadData for Head {
    fn is_empty(&self) -> bool {
        self.samples == 0
    }

    fn replay(&mut self, payload: &[u8]) -> Result<(), crate::codec::DecodeError> {
        let (tenant, batch) = decode_batch(payload)?;
        apply(self, &tenant, batch);
        Ok(())
    }

    fn replay_other(&mut self, typ: u8, payload: &[u8]) -> Option<Result<(), crate::codec::DecodeError>> {
        if typ == RECORD_SERIES_SAMPLES {
            return Some(replay_series_samples(self, payload));
        }
        (typ == RECORD_HISTOGRAMS).then(|| {
            let (tenant, batch) = hist::decode_hist_batch(payload)?;
            hist::apply_hist(self, &tenant, batch);
            Ok(())
        })
    }

    fn encode(&self) -> Result<Vec<SeriesChunks<'_>>, StoreError> {
        let mut out = Vec::new();
        for (tenant, th) in &self.tenants {
            for s in &th.series {
                out.push((tenant.as_str(), &s.labels, s.encoded()));
            }
        }
        Ok(out)
    }

    /// The series' chunks of every source, merged. When no two chunks
    /// overlap in time (the usual case: in-order data flushed block after
    /// block) full chunks are copied byte for byte and only partial ones
    /// (a flushed head's tails) are decoded, each joined with what follows
    /// it into one chunk, so nothing is re-encoded twice and no small chunk
    /// survives a merge. Otherwise (out-of-order data, or version 1 chunks)
    /// everything is decoded, merged by timestamp (for equal timestamps the
    /// later block wins, as at query time) and re-encoded.
    fn merge_chunks(sources: &[(&Block, &BlockStream)]) -> Result<Vec<EncodedChunk>, StoreError> {
        let mut refs: Vec<(&Block, &ChunkMeta)> =
            sources.iter().flat_map(|(b, s)| s.chunks.iter().map(move |c| (*b, c))).collect();
        // Histogram chunks: decoded, merged (later source wins) and
        // re-encoded apart from the float chunks.
        let mut hist_out = Vec::new();
        let mut is_hist = Vec::with_capacity(refs.len());
        for (b, c) in &refs {
            is_hist.push(hist::is_hist_chunk(b, c)?);
        }
        if is_hist.iter().any(|&h| h) {
            let mut hs = Vec::new();
            for ((b, c), _) in refs.iter().zip(&is_hist).filter(|(_, h)| **h) {
                let bytes = b.chunk_bytes(c)?;
                crate::histchunk::decode_chunk(&bytes, &mut hs)
                    .map_err(|e| b.corrupt(c, format!("chunk: {}", e.reason)))?;
            }
            hist_out = hist::encode_hist_chunks(&hist::dedup_newest_hist(hs));
            let mut k = 0;
            refs.retain(|_| {
                k += 1;
                !is_hist[k - 1]
            });
        }
        let mut out = Self::merge_float_chunks(sources, refs)?;
        out.extend(hist_out);
        Ok(out)
    }

    fn merge_back(&mut self, failed: &Self) {
        for (tenant, th) in &failed.tenants {
            let batch = th
                .series
                .iter()
                .map(|s| {
                    let mut samples = Vec::with_capacity(s.len());
                    s.collect_into(i64::MIN, i64::MAX, &mut samples);
                    SeriesSamples { labels: s.labels.clone(), samples }
                })
                .collect();
            apply(self, tenant, batch);
            let hbatch = th
                .series
                .iter()
                .filter_map(|s| {
                    let part = s.hist.as_ref()?;
                    let mut histograms = Vec::new();
                    part.collect_into(i64::MIN, i64::MAX, &mut histograms);
                    Some(SeriesHistograms { labels: s.labels.clone(), histograms })
                })
                .collect();
            hist::apply_hist(self, tenant, hbatch);
            // series the merge added to this head: their newest from the
            // map (which the frozen head's went into)
            if let (Some(shared), Some(cur)) = (&self.newest, self.tenants.get_mut(tenant)) {
                let map = shared.lock().unwrap_or_else(|p| p.into_inner());
                let per = map.get(tenant.as_str());
                for s in &th.series {
                    if let Some(&i) = cur.by_labels.get(&s.labels) {
                        let known = per.and_then(|m| m.get(&s.labels)).copied().unwrap_or(NO_NEWEST);
                        let c = &mut cur.series[i];
                        c.newest = c.newest.max(known).max(s.newest);
                    }
                }
            }
        }
    }

    fn freeze(&mut self) -> Self {
        let shared = self.newest.clone();
        let frozen = std::mem::take(self);
        self.newest = shared;
        if let Some(shared) = &self.newest {
            let mut map = shared.lock().unwrap_or_else(|p| p.into_inner());
            for (tenant, th) in &frozen.tenants {
                for s in th.series.iter().filter(|s| s.newest != NO_NEWEST) {
                    crate::newest::note(&mut map, tenant, &s.labels, s.newest);
                }
            }
        }
        frozen
    }

    fn count(&self) -> u64 {
        self.samples
    }
}

impl Head {
    /// [`HeadData::merge_chunks`] for the float chunks `refs` of `sources`.
    fn merge_float_chunks(
        sources: &[(&Block, &BlockStream)],
        mut refs: Vec<(&Block, &ChunkMeta)>,
    ) -> Result<Vec<EncodedChunk>, StoreError> {
        refs.sort_by_key(|(_, c)| (c.min_ts, c.max_ts));
        let overlap = refs.windows(2).any(|w| w[1].1.min_ts <= w[0].1.max_ts);
        if overlap || sources.iter().any(|(b, _)| b.version == 1) {
            // Sources come oldest first: decode in source order so the
            // later source wins on equal timestamps (histogram chunks are
            // merged by the caller).
            let mut samples = Vec::new();
            for (b, s) in sources {
                for c in &s.chunks {
                    if !hist::is_hist_chunk(b, c)? {
                        decode_block_chunk(b, c, &mut samples)?;
                    }
                }
            }
            return Ok(encode_chunks(&dedup_newest(samples)));
        }
        let mut out = Vec::with_capacity(refs.len());
        let mut pending: Vec<(i64, f64)> = Vec::new();
        for (b, c) in refs {
            if c.entries as usize >= CHUNK_SAMPLES && pending.is_empty() {
                out.push(EncodedChunk::copy_of(b, c)?);
                continue;
            }
            decode_block_chunk(b, c, &mut pending)?;
            if pending.len() >= CHUNK_SAMPLES {
                out.push(encode_one(&pending));
                pending.clear();
            }
        }
        if !pending.is_empty() {
            out.push(encode_one(&pending));
        }
        Ok(out)
    }

    /// Samples of matching series of `tenant` in `[mint, maxt]` (series
    /// with none are skipped).
    fn collect(
        &self,
        tenant: &str,
        matchers: &[Matcher],
        mint: i64,
        maxt: i64,
        mut f: impl FnMut(&Labels, &[(i64, f64)]),
    ) {
        let Some(th) = self.tenants.get(tenant) else {
            return;
        };
        let mut buf = Vec::new();
        for s in &th.series {
            if !matches_all(matchers, &s.labels) {
                continue;
            }
            buf.clear();
            s.collect_into(mint, maxt, &mut buf);
            if !buf.is_empty() {
                f(&s.labels, &buf);
            }
        }
    }

    /// Matching series of `tenant` with a sample in `[mint, maxt]`.
    fn series_in(&self, tenant: &str, matchers: &[Matcher], mint: i64, maxt: i64, mut f: impl FnMut(&Labels)) {
        let Some(th) = self.tenants.get(tenant) else {
            return;
        };
        for s in th.series.iter().filter(|s| matches_all(matchers, &s.labels) && s.any_in(mint, maxt)) {
            f(&s.labels);
        }
    }
}

/// Selected samples by series.
type Gathered = BTreeMap<Labels, Vec<(i64, f64)>>;
/// Selected histogram samples by series.
type GatheredHist = BTreeMap<Labels, Vec<(i64, Histogram)>>;

/// One selected series with both kinds of samples (see
/// [`MetricsStore::select_mixed_limited`]).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct SelectedSeries {
    /// The series' labels.
    pub labels: Labels,
    /// Float samples, ascending timestamps.
    pub samples: Vec<(i64, f64)>,
    /// Native-histogram samples, ascending timestamps (empty for a float
    /// series; a timestamp is never in both).
    pub histograms: Vec<(i64, Histogram)>,
}

/// Most series and samples one [`MetricsStore::select_limited`] may hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SelectLimits {
    /// Most series.
    pub series: usize,
    /// Most samples, over all series.
    pub samples: usize,
}

/// Which limit a [`MetricsStore::select_limited`] ran into.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SelectLimit {
    /// More series than `SelectLimits::series`.
    Series,
    /// More samples than `SelectLimits::samples`.
    Samples,
}

/// Reads and decodes one chunk of a block (version 1: Gorilla only;
/// version 2: a leading encoding byte).
fn decode_block_chunk(b: &Block, c: &ChunkMeta, out: &mut Vec<(i64, f64)>) -> Result<(), StoreError> {
    let bytes = b.chunk_bytes(c)?;
    let res = if b.version == 1 { xor::decode(&bytes, out) } else { xor::decode_chunk(&bytes, out) };
    res.map_err(|e| b.corrupt(c, format!("chunk: {}", e.reason)))
}

/// [`decode_block_chunk`] for a chunk of either kind: histogram chunks
/// (encoding byte `histchunk::ENC_HISTOGRAM`) go to `hists`. For queries:
/// reads through the block's mapping (no system call or copy per chunk;
/// the pages a query touched stay cached and reclaimable), CRC-checked.
fn decode_block_chunk_mixed(
    b: &Block,
    c: &ChunkMeta,
    out: &mut Vec<(i64, f64)>,
    hists: &mut Vec<(i64, Histogram)>,
) -> Result<(), StoreError> {
    let bytes = b.chunk_slice(c)?;
    let res = if b.version == 1 {
        xor::decode(bytes, out)
    } else if bytes.first() == Some(&crate::histchunk::ENC_HISTOGRAM) {
        crate::histchunk::decode_chunk(bytes, hists)
    } else {
        xor::decode_chunk(bytes, out)
    };
    res.map_err(|e| b.corrupt(c, format!("chunk: {}", e.reason)))
}

/// Sorts by timestamp (stable) and keeps the last sample of each timestamp.
fn dedup_newest(mut samples: Vec<(i64, f64)>) -> Vec<(i64, f64)> {
    if samples.windows(2).all(|w| w[0].0 < w[1].0) {
        // The common case (one source, in order): nothing to do, no copy.
        return samples;
    }
    samples.sort_by_key(|p| p.0);
    let mut out: Vec<(i64, f64)> = Vec::with_capacity(samples.len());
    for p in samples {
        match out.last_mut() {
            Some(last) if last.0 == p.0 => *last = p,
            _ => out.push(p),
        }
    }
    out
}

/// The oldest and newest timestamps of sorted sample runs (`(MAX, MIN)`
/// when all are empty).
fn written_span<'a, T: 'a>(runs: impl Iterator<Item = &'a [(i64, T)]>) -> (i64, i64) {
    runs.fold((i64::MAX, i64::MIN), |(lo, hi), r| match (r.first(), r.last()) {
        (Some(f), Some(l)) => (lo.min(f.0), hi.max(l.0)),
        _ => (lo, hi),
    })
}

/// Cuts sorted, unique samples into encoded chunks of [`CHUNK_SAMPLES`].
fn encode_chunks(samples: &[(i64, f64)]) -> Vec<EncodedChunk> {
    samples.chunks(CHUNK_SAMPLES).map(encode_one).collect()
}

/// Encodes sorted, unique, non-empty samples as one chunk.
fn encode_one(c: &[(i64, f64)]) -> EncodedChunk {
    let mut bytes = Vec::new();
    xor::encode_chunk(&mut bytes, c);
    EncodedChunk {
        bytes,
        min_ts: c.first().map_or(0, |p| p.0),
        max_ts: c.last().map_or(0, |p| p.0),
        count: c.len() as u64,
        raw_bytes: 16 * c.len() as u64,
        payload: 0,
        filter: Vec::new(),
    }
}

/// Encodes a type-1 record (written by builds before type 4; replay still
/// reads it).
#[cfg(test)]
fn encode_batch(buf: &mut Vec<u8>, tenant: &str, batch: &[SeriesSamples]) {
    put_bytes(buf, tenant.as_bytes());
    put_uvarint(buf, batch.len() as u64);
    for s in batch {
        put_labels(buf, &s.labels);
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
        let labels = r.labels()?;
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

/// Encodes a type-4 record (`docs/format/wal.md`) of `batch` for WAL
/// segment `seg`: `slots[i]` is the head index of `batch[i]`'s series, or
/// `None` for a series not in the head yet, which [`apply_slots`] will add
/// in batch order after the `existing` ones. Series not declared in `seg`
/// yet are declared first.
fn encode_series_batch(
    buf: &mut Vec<u8>,
    seg: u64,
    tenant: &str,
    th: Option<&TenantHead>,
    batch: &[SeriesSamples],
    slots: &[Option<usize>],
) {
    let existing = th.map_or(0, |t| t.series.len());
    let refs = slots.iter().scan(existing, |next, slot| {
        Some(match *slot {
            Some(i) => (i, th.is_some_and(|t| t.series[i].declared_in == seg)),
            None => {
                *next += 1;
                (*next - 1, false)
            }
        })
    });
    put_bytes(buf, tenant.as_bytes());
    put_uvarint(buf, 0); // flags
    let undeclared = refs.clone().filter(|r| !r.1).count();
    put_uvarint(buf, undeclared as u64);
    for (s, (r, _)) in batch.iter().zip(refs.clone()).filter(|(_, r)| !r.1) {
        put_uvarint(buf, r as u64);
        put_labels(buf, &s.labels);
    }
    put_uvarint(buf, batch.len() as u64);
    for (s, (r, _)) in batch.iter().zip(refs) {
        put_uvarint(buf, r as u64);
        put_uvarint(buf, s.samples.len() as u64);
        let mut prev = 0i64;
        for &(t, v) in &s.samples {
            put_varint(buf, t.wrapping_sub(prev));
            prev = t;
            buf.extend_from_slice(&v.to_bits().to_le_bytes());
        }
    }
}

/// Applies a type-4 record at replay.
fn replay_series_samples(head: &mut Head, payload: &[u8]) -> Result<(), crate::codec::DecodeError> {
    let mut r = Reader::new(payload);
    let tenant = r.str()?;
    let flags = r.uvarint()?;
    if flags != 0 {
        return Err(r.err("unknown flags in a series samples record"));
    }
    if head.since.is_none() {
        head.since = Some(Instant::now());
    }
    let th = match head.tenants.get_mut(tenant) {
        Some(th) => th,
        None => head.tenants.entry(tenant.to_string()).or_default(),
    };
    for _ in 0..r.count(2)? {
        let re = r.uvarint()?;
        let labels = r.labels()?;
        let idx = hist::series_index(th, labels);
        th.replay_refs.insert(re, idx);
    }
    let mut added = 0u64;
    for _ in 0..r.count(2)? {
        let re = r.uvarint()?;
        let Some(&idx) = th.replay_refs.get(&re) else {
            return Err(r.err("series reference not declared in this WAL segment"));
        };
        let series = &mut th.series[idx];
        let mut t = 0i64;
        for _ in 0..r.count(9)? {
            t = t.wrapping_add(r.varint()?);
            let v = f64::from_bits(r.u64_le()?);
            added += u64::from(series.insert(t, v));
        }
    }
    head.samples += added;
    Ok(())
}

/// Applies a batch written as a type-4 record to WAL segment `seg`
/// (`slots` as for [`encode_series_batch`]; `prior_newest`: each series'
/// newest timestamp known before this batch, [`NO_NEWEST`] if none).
fn apply_slots(
    head: &mut Head,
    tenant: &str,
    batch: Vec<SeriesSamples>,
    slots: &[Option<usize>],
    prior_newest: &[i64],
    seg: u64,
) {
    if head.since.is_none() {
        head.since = Some(Instant::now());
    }
    let th = match head.tenants.get_mut(tenant) {
        Some(th) => th,
        None => head.tenants.entry(tenant.to_string()).or_default(),
    };
    let mut added = 0u64;
    for ((s, slot), &prior) in batch.into_iter().zip(slots).zip(prior_newest) {
        let idx = match *slot {
            Some(i) => i,
            None => {
                let i = th.series.len();
                th.by_labels.insert(s.labels.clone(), i);
                let mut series = Series::new(s.labels);
                series.newest = prior;
                th.series.push(series);
                i
            }
        };
        let series = &mut th.series[idx];
        series.declared_in = seg;
        if let Some(&(max, _)) = s.samples.last() {
            series.newest = series.newest.max(max);
        }
        added += series.insert_sorted(&s.samples);
    }
    head.samples += added;
}

fn apply(head: &mut Head, tenant: &str, batch: Vec<SeriesSamples>) {
    if head.since.is_none() && batch.iter().any(|s| !s.samples.is_empty()) {
        head.since = Some(Instant::now());
    }
    let th = head.tenants.entry(tenant.to_string()).or_default();
    let mut added = 0u64;
    for s in batch {
        let idx = match th.by_labels.get(&s.labels) {
            Some(&i) => i,
            None => {
                let i = th.series.len();
                th.by_labels.insert(s.labels.clone(), i);
                th.series.push(Series::new(s.labels));
                i
            }
        };
        let series = &mut th.series[idx];
        for (t, v) in s.samples {
            added += u64::from(series.insert(t, v));
        }
    }
    head.samples += added;
}

impl MetricsStore {
    /// Opens the store in `dir` (WAL in `dir/wal`, blocks in `dir/blocks`)
    /// with default flush settings.
    pub fn open(dir: &Path, wal_opts: WalOptions) -> Result<Self, StoreError> {
        Self::open_with(dir, MetricsStoreOptions { wal: wal_opts, ..MetricsStoreOptions::default() })
    }

    /// Opens the store in `dir`: loads every block, deletes leftover
    /// temporary files, and replays the WAL segments no block covers.
    pub fn open_with(dir: &Path, opts: MetricsStoreOptions) -> Result<Self, StoreError> {
        let t: Tiered<Head> = Tiered::open(dir, BlockKind::Metrics, RECORD_SAMPLES, opts.wal.clone())?;
        let mut newest;
        {
            let (persisted, head) = t.read();
            newest = crate::newest::from_blocks(&persisted.blocks);
            for (tenant, th) in &head.tenants {
                for s in &th.series {
                    if let Some(t) = s.last_ts() {
                        crate::newest::note(&mut newest, tenant, &s.labels, t);
                    }
                }
            }
        }
        {
            let mut head = t.head.write().unwrap_or_else(|p| p.into_inner());
            for (tenant, th) in head.tenants.iter_mut() {
                let per = newest.get(tenant.as_str());
                for s in th.series.iter_mut() {
                    s.newest = per.and_then(|m| m.get(&s.labels)).copied().unwrap_or(NO_NEWEST);
                }
            }
        }
        let newest = std::sync::Arc::new(Mutex::new(newest));
        t.head.write().unwrap_or_else(|p| p.into_inner()).newest = Some(newest.clone());
        Ok(MetricsStore { t, opts, newest, change_hook: Default::default() })
    }

    /// Opens the store in `dir` read-only (see
    /// [`crate::logs::LogStore::open_read_only`]): nothing in `dir` is
    /// changed, no lock is taken, and every write fails with
    /// [`StoreError::ReadOnly`].
    pub fn open_read_only(dir: &Path) -> Result<Self, StoreError> {
        let t: Tiered<Head> = Tiered::open_read_only(dir, BlockKind::Metrics, RECORD_SAMPLES)?;
        Ok(MetricsStore {
            t,
            opts: MetricsStoreOptions::default(),
            newest: SharedNewest::default(),
            change_hook: Default::default(),
        })
    }

    /// What the WAL replay at open found.
    pub fn replay_stats(&self) -> &ReplayStats {
        &self.t.replay
    }

    /// Block files found corrupt at open and set aside (`*.blk.corrupt`).
    pub fn corrupt_blocks(&self) -> &[std::path::PathBuf] {
        &self.t.corrupt_blocks
    }
    /// Writes a batch. Exact duplicates (same series, timestamp and value bits)
    /// are accepted as no-ops; the same timestamp with another value, or a
    /// series without `__name__`, is rejected for that sample only. Returns
    /// once the accepted samples are in the WAL.
    pub fn append(&self, tenant: &str, batch: Vec<SeriesSamples>) -> Result<WriteOutcome, StoreError> {
        // Backpressure, as in the log store.
        let limit = self.opts.head_max_samples;
        self.t.wait_for_flush_while(|| self.head_samples() >= limit, crate::logs::BACKPRESSURE_MAX_WAIT);
        let _w = self.t.write_lock.lock().unwrap_or_else(|p| p.into_inner());
        let mut outcome = WriteOutcome::default();
        let window = i64::try_from(self.opts.out_of_order_window.as_millis()).unwrap_or(i64::MAX);
        let newest_all = self.newest.lock().unwrap_or_else(|p| p.into_inner());
        let newest = newest_all.get(tenant);
        // Each series of the batch once (the samples of a repeat are moved
        // to its first entry), with its index in the head if it is there
        // (looked up once: the WAL record and the head update use it).
        let mut to_write: Vec<SeriesSamples> = Vec::with_capacity(batch.len());
        let mut slots: Vec<Option<usize>> = Vec::with_capacity(batch.len());
        // each entry's newest known timestamp before this batch
        let mut prior_newest: Vec<i64> = Vec::with_capacity(batch.len());
        {
            let head = self.t.head.read().unwrap_or_else(|p| p.into_inner());
            let th = head.tenants.get(tenant);
            let mut seen: HashMap<usize, usize, foldhash::fast::RandomState> =
                HashMap::with_capacity_and_hasher(batch.len(), Default::default());
            let mut seen_new: crate::LabelMap<usize> = Default::default();
            for mut s in batch {
                let slot = th.and_then(|t| t.by_labels.get(&s.labels).copied());
                let first = match slot {
                    Some(i) => *seen.entry(i).or_insert(to_write.len()),
                    None => {
                        // (every series in the head has a name)
                        if s.labels.get(cairn_wire::METRIC_NAME).is_none() {
                            outcome.rejected.extend(s.samples.iter().map(|_| {
                                (RejectReason::MissingMetricName, format!("series {} has no metric name", s.labels))
                            }));
                            continue;
                        }
                        match seen_new.get(&s.labels) {
                            Some(&k) => k,
                            None => {
                                seen_new.insert(s.labels.clone(), to_write.len());
                                to_write.len()
                            }
                        }
                    }
                };
                if first < to_write.len() {
                    to_write[first].samples.append(&mut s.samples);
                } else {
                    to_write.push(s);
                    slots.push(slot);
                }
            }
            for (SeriesSamples { labels, samples }, slot) in to_write.iter_mut().zip(&slots) {
                if !samples.is_sorted_by_key(|p| p.0) {
                    samples.sort_by_key(|p| p.0);
                }
                let existing = slot.and_then(|i| th.map(|t| &t.series[i]));
                // newest held in the head (floats and histograms): a later
                // sample repeats nothing there
                let held = existing.and_then(Series::last_ts);
                let last = match existing {
                    Some(ex) => (ex.newest != NO_NEWEST).then_some(ex.newest),
                    None => newest.and_then(|m| m.get(labels)).copied(),
                };
                prior_newest.push(last.unwrap_or(NO_NEWEST));
                // keep the accepted samples in place, in order
                let mut kept: usize = 0;
                for i in 0..samples.len() {
                    let (t, v) = samples[i];
                    if let Some(last) = last
                        && t < last.saturating_sub(window)
                    {
                        outcome.rejected.push(if window == 0 {
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
                        });
                        continue;
                    }
                    let prior = match kept.checked_sub(1).map(|k| samples[k]) {
                        Some((lt, lv)) if lt == t => Some(lv),
                        _ if held.is_none_or(|h| t > h) => None,
                        _ => existing.and_then(|ex| ex.value_at(t)),
                    };
                    // A histogram at that timestamp: another value.
                    let prior = match (prior, existing.and_then(|ex| ex.hist.as_ref())) {
                        (None, Some(h)) if held.is_some_and(|h| t <= h) && h.value_at(t).is_some() => {
                            Some(f64::from_bits(!v.to_bits()))
                        }
                        (p, _) => p,
                    };
                    match prior {
                        Some(pv) if f64::to_bits(pv) == v.to_bits() => outcome.accepted += 1,
                        Some(_) => outcome.rejected.push((
                            RejectReason::DuplicateTimestamp,
                            format!("duplicate sample for timestamp {t} with a different value in series {labels}"),
                        )),
                        None => {
                            outcome.accepted += 1;
                            samples[kept] = (t, v);
                            kept += 1;
                        }
                    }
                }
                samples.truncate(kept);
            }
        }
        if to_write.iter().any(|s| s.samples.is_empty()) {
            let mut k = 0;
            prior_newest.retain(|_| {
                k += 1;
                !to_write[k - 1].samples.is_empty()
            });
            let mut k = 0;
            slots.retain(|_| {
                k += 1;
                !to_write[k - 1].samples.is_empty()
            });
            to_write.retain(|s| !s.samples.is_empty());
        }
        if to_write.is_empty() {
            // Duplicates are acknowledged like the write they repeat, which
            // may still wait for its group fsync: wait for it too.
            let pos = self.t.wal.written_pos()?;
            drop(newest_all);
            drop(_w);
            self.t.wal.sync_through(pos)?;
            return Ok(outcome);
        }
        // Group commit: write the record now, publish the samples in the
        // head, and wait for the fsync (`wal.fsync = always`) after the
        // write lock is released, so the writers queued behind this one
        // share that fsync instead of each taking the lock for one. A
        // failed group fsync makes the WAL refuse every later write (see
        // `Wal::sync_through`), so samples published here but not durable
        // are never acknowledged, not even as a repeated write.
        let mut head = self.t.head.write().unwrap_or_else(|p| p.into_inner());
        let pos = self.t.wal.append_unsynced_with(RECORD_SERIES_SAMPLES, |seg, buf| {
            encode_series_batch(buf, seg, tenant, head.tenants.get(tenant), &to_write, &slots)
        })?;
        drop(newest_all);
        let span = self.change_hook.get().map(|_| written_span(to_write.iter().map(|s| &s.samples[..])));
        apply_slots(&mut head, tenant, to_write, &slots, &prior_newest, pos.segment());
        drop(head);
        if let Some((min_ts, max_ts)) = span {
            self.changed(Change::Written { tenant, min_ts, max_ts });
        }
        drop(_w);
        self.t.wal.sync_through(pos)?;
        Ok(outcome)
    }

    /// [`crate::newest::forget_before`] for the head series' own newest
    /// timestamps (call under the write lock, holding [`Self::newest`]).
    fn forget_head_newest(&self, cutoff: impl Fn(&str) -> Option<i64>) {
        let mut head = self.t.head.write().unwrap_or_else(|p| p.into_inner());
        for (tenant, th) in head.tenants.iter_mut() {
            if let Some(min_ts) = cutoff(tenant) {
                for s in th.series.iter_mut().filter(|s| s.newest < min_ts) {
                    s.newest = NO_NEWEST;
                }
            }
        }
    }

    /// Calls `f` after every change of what queries see, before the change
    /// is acknowledged: samples written (after they are readable) and data
    /// deleted. `f` runs on the writer's thread while it holds the store's
    /// write lock: it must be quick and must not call into the store.
    /// Returns false (and drops `f`) when a hook is set already.
    pub fn on_change(&self, f: impl Fn(Change<'_>) + Send + Sync + 'static) -> bool {
        self.change_hook.set(Box::new(f)).is_ok()
    }

    fn changed(&self, c: Change<'_>) {
        if let Some(f) = self.change_hook.get() {
            f(c);
        }
    }

    /// The oldest timestamp `tenant`'s queries see (its retention override
    /// hides older data at once); `i64::MIN` without one.
    pub fn visible_from(&self, tenant: &str) -> i64 {
        self.t.visible_from(tenant)
    }

    /// True when the head holds `head_max_samples` or its oldest data is
    /// older than `flush_interval`.
    pub fn flush_due(&self) -> bool {
        let head = self.t.head.read().unwrap_or_else(|p| p.into_inner());
        head.samples >= self.opts.head_max_samples
            || head.since.is_some_and(|t| t.elapsed() >= self.opts.flush_interval)
    }

    /// Samples held in the head.
    pub fn head_samples(&self) -> u64 {
        self.t.head.read().unwrap_or_else(|p| p.into_inner()).samples
    }

    /// Writes the head to a block of Gorilla chunks and drops the WAL behind
    /// it. Returns the number of samples flushed.
    pub fn flush(&self) -> Result<u64, StoreError> {
        self.t.flush()
    }

    /// Sets how long data is kept: the default age limit, per-tenant
    /// overrides (their data past it is hidden from reads at once) and the
    /// size limit, enforced by [`Self::apply_retention_policy`].
    pub fn set_retention(&self, r: crate::Retention) {
        self.t.set_retention(r);
    }

    /// Enforces the retention set by [`Self::set_retention`]: deletes
    /// expired blocks, then the oldest past the size limit, and rewrites
    /// blocks holding data of tenants past their own limit
    /// (`docs/format/logs.md`, "Retention").
    pub fn apply_retention_policy(&self) -> Result<crate::RetentionStats, StoreError> {
        {
            // series and streams gone quiet before the limit: forget them
            let _w = self.t.write_lock.lock().unwrap_or_else(|p| p.into_inner());
            let mut newest = self.newest.lock().unwrap_or_else(|p| p.into_inner());
            crate::newest::forget_before(&mut newest, |tenant| self.t.cutoff(tenant));
            self.forget_head_newest(|tenant| self.t.cutoff(tenant));
        }
        let stats = self.t.apply_retention_policy();
        if stats.as_ref().map_or(true, |s| s.blocks_deleted > 0 || s.blocks_rewritten > 0) {
            self.changed(Change::Removed);
        }
        stats
    }

    /// Deletes blocks whose data is all older than `min_ts` (ms; `None`:
    /// no age limit), then the oldest blocks while blocks take more than
    /// `max_bytes` (0: no limit). Returns (blocks, bytes) deleted. Data still
    /// in the head is not affected.
    pub fn apply_retention(&self, min_ts: Option<i64>, max_bytes: u64) -> Result<(usize, u64), StoreError> {
        if let Some(min_ts) = min_ts {
            // series gone quiet before the retention limit: forget them
            let _w = self.t.write_lock.lock().unwrap_or_else(|p| p.into_inner());
            let mut newest = self.newest.lock().unwrap_or_else(|p| p.into_inner());
            crate::newest::forget_before(&mut newest, |_| Some(min_ts));
            self.forget_head_newest(|_| Some(min_ts));
        }
        let res = self.t.apply_retention(min_ts, max_bytes);
        if res.as_ref().map_or(true, |r| r.0 > 0) {
            self.changed(Change::Removed);
        }
        res
    }

    /// Merges adjacent small blocks per `policy` (at most `max_runs`
    /// merges); queries give the same answers before and after.
    pub fn compact(&self, policy: &CompactionPolicy, max_runs: usize) -> Result<CompactionStats, StoreError> {
        self.t.compact(policy, max_runs)
    }

    /// Number of blocks and their bytes on disk.
    pub fn block_stats(&self) -> (usize, u64) {
        self.t.block_stats()
    }

    /// Calls `f` for every matching series with its samples in `[mint, maxt]`
    /// from blocks, the frozen head and the head, merged by timestamp (for a
    /// timestamp present in several, the newest source wins).
    ///
    /// Gives up with `Ok(Err(limit))` as soon as more than `max.series`
    /// series or `max.samples` samples are held, so a selection over the
    /// limits never holds much more than the limits in memory.
    fn gather(
        &self,
        tenant: &str,
        matchers: &[Matcher],
        mint: i64,
        maxt: i64,
        max: SelectLimits,
    ) -> Result<Result<(Gathered, GatheredHist), SelectLimit>, StoreError> {
        let mint = mint.max(self.t.visible_from(tenant));
        let (persisted, head) = self.t.read();
        let mut by: Gathered = BTreeMap::new();
        let mut hby: GatheredHist = BTreeMap::new();
        let mut held = 0usize;
        // Series with histograms count once more when they also hold
        // floats: a bound, never an undercount.
        let over = |by: &Gathered, hby: &GatheredHist, held: usize| {
            if by.len().saturating_add(hby.len()) > max.series {
                Some(SelectLimit::Series)
            } else if held > max.samples {
                Some(SelectLimit::Samples)
            } else {
                None
            }
        };
        for b in &persisted.blocks {
            if b.min_ts > maxt || b.max_ts < mint {
                continue;
            }
            for s in b.select(tenant, matchers) {
                let wanted = || s.chunks.iter().filter(|c| c.min_ts <= maxt && c.max_ts >= mint);
                let mut got = Vec::with_capacity(wanted().map(|c| c.entries as usize).sum::<usize>().min(1 << 20));
                let mut goth = Vec::new();
                for c in wanted() {
                    decode_block_chunk_mixed(b, c, &mut got, &mut goth)?;
                    if held.saturating_add(got.len()).saturating_add(goth.len()) > max.samples {
                        return Ok(Err(SelectLimit::Samples));
                    }
                }
                if !goth.is_empty() {
                    goth.retain(|p| p.0 >= mint && p.0 <= maxt);
                    held += goth.len();
                    if !goth.is_empty() {
                        hby.entry(s.labels.clone()).or_default().extend(goth);
                    }
                    if let Some(l) = over(&by, &hby, held) {
                        return Ok(Err(l));
                    }
                }
                got.retain(|p| p.0 >= mint && p.0 <= maxt);
                if !got.is_empty() {
                    held += got.len();
                    match by.entry(s.labels.clone()) {
                        std::collections::btree_map::Entry::Vacant(e) => {
                            e.insert(got);
                        }
                        std::collections::btree_map::Entry::Occupied(mut e) => e.get_mut().extend(got),
                    }
                    if let Some(l) = over(&by, &hby, held) {
                        return Ok(Err(l));
                    }
                }
            }
        }
        let mut limit = None;
        {
            let mut add = |l: &Labels, ss: &[(i64, f64)]| {
                if limit.is_none() {
                    held += ss.len();
                    by.entry(l.clone()).or_default().extend_from_slice(ss);
                    limit = over(&by, &hby, held);
                }
            };
            if let Some(fr) = &persisted.frozen {
                fr.collect(tenant, matchers, mint, maxt, &mut add);
            }
            head.collect(tenant, matchers, mint, maxt, &mut add);
        }
        let mut add_hist = |l: &Labels, hs: Vec<(i64, Histogram)>| {
            if limit.is_none() {
                held += hs.len();
                hby.entry(l.clone()).or_default().extend(hs);
                limit = over(&by, &hby, held);
            }
        };
        if let Some(fr) = &persisted.frozen {
            fr.collect_hist(tenant, matchers, mint, maxt, &mut add_hist);
        }
        head.collect_hist(tenant, matchers, mint, maxt, &mut add_hist);
        if let Some(l) = limit {
            return Ok(Err(l));
        }
        for samples in by.values_mut() {
            // stable: later sources stay later
            *samples = dedup_newest(std::mem::take(samples));
        }
        for samples in hby.values_mut() {
            *samples = hist::dedup_newest_hist(std::mem::take(samples));
        }
        Ok(Ok((by, hby)))
    }

    /// Series of `tenant` matching all `matchers`, with their samples in
    /// `[mint, maxt]` (inclusive), sorted by labels. Series with no sample in
    /// the range are left out.
    pub fn select(&self, tenant: &str, matchers: &[Matcher], mint: i64, maxt: i64) -> Vec<SeriesSamples> {
        let unlimited = SelectLimits { series: usize::MAX, samples: usize::MAX };
        self.select_limited(tenant, matchers, mint, maxt, unlimited).unwrap_or_default()
    }

    /// [`Self::select`] that stops reading, with `Err`, once the selection
    /// holds more than `max.series` series or `max.samples` samples
    /// (counted before duplicates across blocks and head are merged), so a
    /// query over its limits cannot exhaust memory.
    pub fn select_limited(
        &self,
        tenant: &str,
        matchers: &[Matcher],
        mint: i64,
        maxt: i64,
        max: SelectLimits,
    ) -> Result<Vec<SeriesSamples>, SelectLimit> {
        match self.gather(tenant, matchers, mint, maxt, max) {
            Ok(Ok((by, _))) => Ok(by.into_iter().map(|(labels, samples)| SeriesSamples { labels, samples }).collect()),
            Ok(Err(l)) => Err(l),
            Err(e) => {
                tracing::error!(error = %e, "metric block read failed; results are incomplete");
                Ok(Vec::new())
            }
        }
    }

    /// [`Self::select_limited`] with native-histogram samples too: every
    /// matching series with a float or histogram sample in `[mint, maxt]`,
    /// sorted by labels. Where a series has a float and a histogram at the
    /// same timestamp (possible only across blocks written before and after
    /// a type change), the histogram is kept.
    pub fn select_mixed_limited(
        &self,
        tenant: &str,
        matchers: &[Matcher],
        mint: i64,
        maxt: i64,
        max: SelectLimits,
    ) -> Result<Vec<SelectedSeries>, SelectLimit> {
        match self.gather(tenant, matchers, mint, maxt, max) {
            Ok(Ok((by, hby))) => {
                if hby.is_empty() {
                    return Ok(by
                        .into_iter()
                        .map(|(labels, samples)| SelectedSeries { labels, samples, histograms: Vec::new() })
                        .collect());
                }
                let mut out: BTreeMap<Labels, SelectedSeries> = by
                    .into_iter()
                    .map(|(labels, samples)| {
                        (labels.clone(), SelectedSeries { labels, samples, histograms: Vec::new() })
                    })
                    .collect();
                for (labels, histograms) in hby {
                    let e =
                        out.entry(labels.clone()).or_insert_with(|| SelectedSeries { labels, ..Default::default() });
                    if !e.samples.is_empty() {
                        e.samples.retain(|p| histograms.binary_search_by_key(&p.0, |h| h.0).is_err());
                    }
                    e.histograms = histograms;
                }
                Ok(out.into_values().collect())
            }
            Ok(Err(l)) => Err(l),
            Err(e) => {
                tracing::error!(error = %e, "metric block read failed; results are incomplete");
                Ok(Vec::new())
            }
        }
    }

    /// Label sets of `tenant`'s series matching all `matchers` that have at
    /// least one sample in `[mint, maxt]`, sorted. Empty `matchers` match
    /// every series. Backs `/api/v1/series`, `/labels` and `/label/…/values`.
    pub fn series(&self, tenant: &str, matchers: &[Matcher], mint: i64, maxt: i64) -> Vec<Labels> {
        let mint = mint.max(self.t.visible_from(tenant));
        let (persisted, head) = self.t.read();
        let mut out: std::collections::BTreeSet<Labels> = Default::default();
        for b in &persisted.blocks {
            if b.min_ts > maxt || b.max_ts < mint {
                continue;
            }
            for s in b.select(tenant, matchers) {
                if s.chunks.iter().any(|c| c.min_ts <= maxt && c.max_ts >= mint) {
                    out.insert(s.labels.clone());
                }
            }
        }
        if let Some(fr) = &persisted.frozen {
            fr.series_in(tenant, matchers, mint, maxt, |l| {
                out.insert(l.clone());
            });
        }
        head.series_in(tenant, matchers, mint, maxt, |l| {
            out.insert(l.clone());
        });
        out.into_iter().collect()
    }

    /// Number of series and samples held, over all tenants.
    pub fn counts(&self) -> (usize, usize) {
        let head = self.t.head.read().unwrap_or_else(|p| p.into_inner());
        head.tenants
            .values()
            .fold((0, 0), |(s, n), t| (s + t.series.len(), n + t.series.iter().map(Series::len).sum::<usize>()))
    }

    /// Bytes of WAL on disk.
    pub fn wal_size_bytes(&self) -> u64 {
        self.t.wal.size_bytes()
    }

    /// Flushes the WAL (for `fsync = "interval"` and at shutdown).
    pub fn sync(&self) -> Result<(), StoreError> {
        self.t.wal.sync()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(64))]
        /// The compressed head series against a plain map: inserts in
        /// nearly-sorted order (late samples, repeats), then reads of random
        /// ranges, point lookups and the chunks a flush writes. With `batch`
        /// > 0 the samples go in as an append does: `batch` at a time,
        /// sorted, first of each timestamp kept ([`Series::insert_sorted`]).
        #[test]
        fn head_series_matches_a_map(
            ops in proptest::collection::vec((0i64..3_000, -40i64..0, 0u8..10), 1..1_500),
            ranges in proptest::collection::vec((0i64..3_000, 0i64..3_000), 1..8),
            batch in 0usize..24,
        ) {
            let mut s = Series::new(Labels::default());
            let mut model = std::collections::BTreeMap::new();
            let mut pending: Vec<(i64, f64)> = Vec::new();
            for (k, (base, back, late)) in ops.iter().enumerate() {
                // mostly in order, sometimes a little behind, sometimes a repeat
                let t = if *late < 2 { (k as i64 * 2 + back).max(0) } else { k as i64 * 2 + base % 2 };
                let v = (t * 7 + *base) as f64 * 0.5;
                if batch == 0 {
                    let added = s.insert(t, v);
                    proptest::prop_assert_eq!(added, !model.contains_key(&t));
                    model.entry(t).or_insert(v);
                    continue;
                }
                pending.push((t, v));
                if pending.len() == batch || k + 1 == ops.len() {
                    pending.sort_by_key(|p| p.0); // stable: the first of a timestamp stays first
                    pending.dedup_by_key(|p| p.0);
                    let new = pending.iter().filter(|p| !model.contains_key(&p.0)).count() as u64;
                    proptest::prop_assert_eq!(s.insert_sorted(&pending), new);
                    for &(t, v) in &pending {
                        model.entry(t).or_insert(v);
                    }
                    pending.clear();
                }
            }
            proptest::prop_assert_eq!(s.len(), model.len());
            proptest::prop_assert_eq!(s.last_ts(), model.keys().next_back().copied());
            for (a, b) in ranges {
                let (lo, hi) = (a.min(b), a.max(b));
                let mut got = Vec::new();
                s.collect_into(lo, hi, &mut got);
                let want: Vec<(i64, f64)> = model.range(lo..=hi).map(|(&t, &v)| (t, v)).collect();
                proptest::prop_assert_eq!(&got, &want);
                proptest::prop_assert_eq!(s.any_in(lo, hi), !want.is_empty());
                proptest::prop_assert_eq!(s.value_at(lo), model.get(&lo).copied());
            }
            let mut flushed = Vec::new();
            let chunks = s.encoded();
            proptest::prop_assert!(chunks.windows(2).all(|w| w[0].max_ts < w[1].min_ts));
            for c in &chunks {
                xor::decode_chunk(&c.bytes, &mut flushed).unwrap();
            }
            let want: Vec<(i64, f64)> = model.into_iter().collect();
            proptest::prop_assert_eq!(flushed, want);
        }
    }
    use cairn_wire::MatchOp;

    pub(super) fn ls(pairs: &[(&str, &str)]) -> Labels {
        Labels::from_pairs(pairs.iter().copied()).unwrap()
    }

    /// Type-4 records name series by references declared once per WAL
    /// segment: replay across many segments (tiny ones: most records start
    /// one), restarts in between, repeats inside a batch, and a type-1
    /// record of an older build in front must give back every sample.
    #[test]
    fn series_references_replay_across_segments_and_restarts() {
        let d = tempfile::tempdir().unwrap();
        let wal = WalOptions { fsync: crate::wal::FsyncPolicy::Never, segment_bytes: 300 };
        let opts = MetricsStoreOptions { wal: wal.clone(), ..MetricsStoreOptions::default() };
        let name = |i: usize| ls(&[("__name__", "m"), ("inst", &format!("i{i}"))]);
        let mut want: std::collections::BTreeMap<Labels, Vec<(i64, u64)>> = Default::default();
        {
            let (w, _) = crate::wal::Wal::open(&d.path().join(crate::layout::WAL_DIR), wal, 0, |_, _| Ok(())).unwrap();
            let mut buf = Vec::new();
            encode_batch(&mut buf, "t", &[SeriesSamples { labels: name(0), samples: vec![(5, 0.5)] }]);
            w.append(RECORD_SAMPLES, &buf).unwrap();
            want.entry(name(0)).or_default().push((5, 0.5f64.to_bits()));
        }
        let mut t = 10;
        for round in 0..4 {
            let s = MetricsStore::open_with(d.path(), opts.clone()).unwrap();
            assert_eq!(snapshot_all(&s), want, "after restart {round}");
            for k in 0..12usize {
                t += 10;
                // a few old series, one new series per batch, one repeat
                let mut batch = Vec::new();
                for i in [k % 3, 3 + round * 12 + k, k % 3] {
                    let v = (t + i as i64) as f64;
                    let ts = if batch.is_empty() { t } else { t + batch.len() as i64 };
                    batch.push(SeriesSamples { labels: name(i), samples: vec![(ts, v)] });
                    want.entry(name(i)).or_default().push((ts, v.to_bits()));
                }
                let out = s.append("t", batch).unwrap();
                assert_eq!((out.accepted, out.rejected.len()), (3, 0));
                if k == 6 && round % 2 == 1 {
                    s.flush().unwrap();
                }
            }
            assert_eq!(snapshot_all(&s), want);
        }
    }

    fn snapshot_all(s: &MetricsStore) -> std::collections::BTreeMap<Labels, Vec<(i64, u64)>> {
        s.select("t", &[], i64::MIN, i64::MAX)
            .into_iter()
            .map(|x| (x.labels, x.samples.iter().map(|p| (p.0, p.1.to_bits())).collect()))
            .collect()
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
    fn select_limited_stops_at_the_limits() {
        let d = tempfile::tempdir().unwrap();
        let s = MetricsStore::open(d.path(), WalOptions::default()).unwrap();
        let batch = |job: &str, from: i64| SeriesSamples {
            labels: ls(&[("__name__", "up"), ("job", job)]),
            samples: (0..10).map(|i| ((from + i) * 1000, i as f64)).collect(),
        };
        s.append("t", vec![batch("a", 0), batch("b", 0)]).unwrap();
        s.flush().unwrap();
        s.append("t", vec![batch("a", 10), batch("c", 10)]).unwrap();
        let lim = |series, samples| SelectLimits { series, samples };
        let all = s.select_limited("t", &[], 0, 100_000, lim(3, 40)).unwrap();
        assert_eq!(all, s.select("t", &[], 0, 100_000));
        assert_eq!(all.iter().map(|x| x.samples.len()).sum::<usize>(), 40);
        // Block samples, then head samples, then series over the limit.
        assert_eq!(s.select_limited("t", &[], 0, 100_000, lim(3, 15)), Err(SelectLimit::Samples));
        assert_eq!(s.select_limited("t", &[], 0, 100_000, lim(3, 39)), Err(SelectLimit::Samples));
        assert_eq!(s.select_limited("t", &[], 0, 100_000, lim(2, 100)), Err(SelectLimit::Series));
        assert_eq!(s.select_limited("t", &[], 0, 100_000, lim(1, 100)), Err(SelectLimit::Series));
        // Only what the range holds counts.
        assert_eq!(s.select_limited("t", &[], 10_000, 100_000, lim(2, 20)).map(|v| v.len()), Ok(2));
    }

    #[test]
    fn flush_to_blocks_query_and_restart() {
        let d = tempfile::tempdir().unwrap();
        let up = ls(&[("__name__", "up"), ("job", "a")]);
        let stale = f64::from_bits(cairn_wire::STALE_NAN_BITS);
        let write = |s: &MetricsStore, pts: &[(i64, f64)]| {
            s.append("t", vec![SeriesSamples { labels: up.clone(), samples: pts.to_vec() }]).unwrap();
        };
        let wide = || MetricsStoreOptions { out_of_order_window: Duration::from_secs(86_400), ..Default::default() };
        {
            let s = MetricsStore::open_with(d.path(), wide()).unwrap();
            let many: Vec<(i64, f64)> = (0..1000).map(|i| (i * 15_000, i as f64)).collect();
            write(&s, &many);
            write(&s, &[(1000 * 15_000, stale)]);
            assert_eq!(s.flush().unwrap(), 1001);
            assert_eq!(s.head_samples(), 0);
            assert_eq!(s.block_stats().0, 1);
            // newer and older-than-block samples go to the head; a re-sent
            // sample already in the block is deduplicated at query time
            write(&s, &[(-15_000, -1.0), (5, 0.5), (1001 * 15_000, 7.0), (0, 0.0)]);
            let got = s.select("t", &[], i64::MIN, i64::MAX);
            assert_eq!(got.len(), 1);
            let pts = &got[0].samples;
            assert_eq!(pts.len(), 1004);
            assert_eq!(pts[0], (-15_000, -1.0));
            assert_eq!(pts[2], (5, 0.5));
            assert!(pts.windows(2).all(|w| w[0].0 < w[1].0));
            assert_eq!(pts[1002].1.to_bits(), cairn_wire::STALE_NAN_BITS, "staleness marker survives a block");
            assert_eq!(s.select("t", &[], 15_000, 30_000)[0].samples, vec![(15_000, 1.0), (30_000, 2.0)]);
            assert_eq!(s.series("t", &[], 0, 0), vec![up.clone()]);
            assert!(s.series("t", &[], 20_000_000, 30_000_000).is_empty());
        }
        let s = MetricsStore::open(d.path(), WalOptions::default()).unwrap();
        assert_eq!(s.select("t", &[], i64::MIN, i64::MAX)[0].samples.len(), 1004);
        s.flush().unwrap();
        drop(s);
        let s = MetricsStore::open(d.path(), WalOptions::default()).unwrap();
        assert_eq!(s.block_stats().0, 2);
        assert_eq!(s.counts().1, 0);
        assert_eq!(s.select("t", &[], i64::MIN, i64::MAX)[0].samples.len(), 1004);
    }

    #[test]
    fn out_of_order_window() {
        let d = tempfile::tempdir().unwrap();
        let opts = MetricsStoreOptions { out_of_order_window: Duration::from_secs(60), ..Default::default() };
        let m = ls(&[("__name__", "m")]);
        let other = ls(&[("__name__", "other")]);
        let put = |s: &MetricsStore, l: &Labels, pts: &[(i64, f64)]| {
            s.append("t", vec![SeriesSamples { labels: l.clone(), samples: pts.to_vec() }]).unwrap()
        };
        {
            let s = MetricsStore::open_with(d.path(), opts.clone()).unwrap();
            assert_eq!(put(&s, &m, &[(100_000, 1.0), (115_000, 2.0)]).accepted, 2);
            // within 60 s of the newest (115 s): accepted, merged in order
            assert_eq!(put(&s, &m, &[(60_000, 0.5), (107_000, 1.5)]).accepted, 2);
            // 54.999 s: too old, by the series' own newest sample
            let o = put(&s, &m, &[(54_999, 9.0), (55_000, 0.25)]);
            assert_eq!(o.accepted, 1);
            assert_eq!(o.rejected.len(), 1);
            assert_eq!(o.rejected[0].0, RejectReason::TooOld);
            assert!(o.rejected[0].1.starts_with("too old sample"), "{}", o.rejected[0].1);
            // another series has its own reference point
            assert_eq!(put(&s, &other, &[(1_000, 1.0)]).accepted, 1);
            let got = s.select("t", &[Matcher::equal("__name__", "m")], i64::MIN, i64::MAX);
            let ts: Vec<i64> = got[0].samples.iter().map(|p| p.0).collect();
            assert_eq!(ts, vec![55_000, 60_000, 100_000, 107_000, 115_000]);
            // the reference survives a flush (series no longer in the head)
            s.flush().unwrap();
            assert_eq!(put(&s, &m, &[(10_000, 1.0)]).rejected[0].0, RejectReason::TooOld);
            assert_eq!(put(&s, &m, &[(56_000, 1.0)]).accepted, 1);
            // back in the head, the series keeps the reference from before
            // the flush, not its newest sample in the head (56 s)
            assert_eq!(put(&s, &m, &[(54_000, 1.0)]).rejected[0].0, RejectReason::TooOld);
            // and so does the map after a second flush
            s.flush().unwrap();
            assert_eq!(put(&s, &m, &[(54_500, 1.0)]).rejected[0].0, RejectReason::TooOld);
        }
        // ... and a restart (rebuilt from blocks and WAL)
        let s = MetricsStore::open_with(d.path(), opts).unwrap();
        assert_eq!(put(&s, &m, &[(10_000, 1.0)]).rejected[0].0, RejectReason::TooOld);
        assert_eq!(put(&s, &m, &[(57_000, 1.0)]).accepted, 1);
        assert_eq!(s.select("t", &[Matcher::equal("__name__", "m")], i64::MIN, i64::MAX)[0].samples.len(), 7);
        drop(s);
        // window 0: strictly in order per series, Prometheus's "out of order sample"
        let strict = MetricsStoreOptions { out_of_order_window: Duration::ZERO, ..Default::default() };
        let s = MetricsStore::open_with(d.path(), strict).unwrap();
        let o = put(&s, &m, &[(114_999, 1.0), (115_000, 2.0), (116_000, 3.0)]);
        assert_eq!(o.accepted, 2, "exact duplicate of the newest is a no-op, newer is stored");
        assert_eq!(o.rejected[0].0, RejectReason::OutOfOrder);
        assert!(o.rejected[0].1.starts_with("out of order sample"));
    }

    /// Several small blocks (with overlapping, re-sent and late samples);
    /// every query answer is the same before and after compaction, the
    /// blocks shrink, and the result survives a restart.
    fn small_blocks(dir: &Path) -> MetricsStore {
        let opts = MetricsStoreOptions { out_of_order_window: Duration::from_secs(86_400), ..Default::default() };
        let s = MetricsStore::open_with(dir, opts).unwrap();
        for block in 0..6i64 {
            let mut batch = Vec::new();
            for inst in 0..20 {
                let labels = ls(&[("__name__", "m"), ("inst", &format!("i{inst}")), ("odd", ["a", "b"][inst % 2])]);
                let mut pts: Vec<(i64, f64)> = (0..50)
                    .map(|i| ((block * 50 + i) * 15_000 + inst as i64, (block * 50 + i) as f64 * 0.25))
                    .collect();
                if block > 0 {
                    // a re-sent sample with a new value (the later block wins)
                    pts.push(((block * 50 - 1) * 15_000 + inst as i64, -1.0));
                }
                batch.push(SeriesSamples { labels, samples: pts });
            }
            if block == 3 {
                batch.push(SeriesSamples { labels: ls(&[("__name__", "late")]), samples: vec![(5, 5.0)] });
            }
            s.append("t", batch).unwrap();
            s.flush().unwrap();
        }
        s
    }

    fn snapshot(s: &MetricsStore) -> Vec<(Labels, Vec<(i64, u64)>)> {
        let mut out = Vec::new();
        for m in [
            vec![],
            vec![Matcher::equal("odd", "a")],
            vec![Matcher::new(MatchOp::NotRegex, "inst", "i1.*").unwrap(), Matcher::equal("__name__", "m")],
            vec![Matcher::new(MatchOp::Equal, "odd", "").unwrap()],
        ] {
            for (mint, maxt) in [(i64::MIN, i64::MAX), (100_000, 2_000_000)] {
                for x in s.select("t", &m, mint, maxt) {
                    out.push((x.labels, x.samples.iter().map(|p| (p.0, p.1.to_bits())).collect()));
                }
            }
        }
        out
    }

    fn policy() -> CompactionPolicy {
        CompactionPolicy { ranges: vec![3_600_000, 86_400_000], max_block_bytes: 0 }
    }

    #[test]
    fn compaction_keeps_answers_and_shrinks() {
        let d = tempfile::tempdir().unwrap();
        let s = small_blocks(d.path());
        let before = snapshot(&s);
        assert_eq!(before.iter().filter(|x| x.0.get("__name__") == Some("late")).count(), 2);
        let (n, bytes) = s.block_stats();
        assert_eq!(n, 6);
        let st = s.compact(&policy(), 100).unwrap();
        assert_eq!(s.block_stats().0, 1, "{st:?}");
        assert_eq!(st.blocks_merged, 6 + st.runs - 1);
        assert!(st.bytes_after < st.bytes_before, "{st:?}");
        assert!(s.block_stats().1 < bytes);
        assert_eq!(snapshot(&s), before);
        assert_eq!(s.compact(&policy(), 100).unwrap(), CompactionStats::default(), "nothing left to merge");
        drop(s);
        let s = MetricsStore::open(d.path(), WalOptions::default()).unwrap();
        assert_eq!(s.block_stats().0, 1);
        assert_eq!(snapshot(&s), before);
        // one series of one block: 300 samples in 2 chunks, not 6 small ones
        let b = &s.t.read().0.blocks[0];
        assert_eq!(b.streams.iter().find(|x| x.labels.get("inst") == Some("i0")).unwrap().chunks.len(), 2);
    }

    /// In-order data: full chunks are copied as they are, each flushed
    /// tail is joined with the chunk after it, answers do not change.
    #[test]
    fn in_order_compaction_copies_full_chunks_and_joins_tails() {
        let d = tempfile::tempdir().unwrap();
        let s = MetricsStore::open(d.path(), WalOptions::default()).unwrap();
        let labels = ls(&[("__name__", "m")]);
        for block in 0..3i64 {
            let pts = (0..600).map(|i| ((block * 600 + i) * 15_000, ((block * 600 + i) % 97) as f64)).collect();
            s.append("t", vec![SeriesSamples { labels: labels.clone(), samples: pts }]).unwrap();
            s.flush().unwrap();
        }
        let before = snapshot(&s);
        let sources: Vec<Vec<u8>> = {
            let p = s.t.read().0;
            let b = &p.blocks[0];
            b.streams[0].chunks.iter().filter(|c| c.entries == 240).map(|c| b.chunk_bytes(c).unwrap()).collect()
        };
        s.compact(&policy(), 100).unwrap();
        assert_eq!(s.block_stats().0, 1);
        assert_eq!(snapshot(&s), before);
        let p = s.t.read().0;
        let b = &p.blocks[0];
        let counts: Vec<u64> = b.streams[0].chunks.iter().map(|c| c.entries).collect();
        // per block 240 + 240 + a tail of 120; tails join the next chunk
        assert_eq!(counts, [240, 240, 360, 240, 360, 240, 120], "{counts:?}");
        let first = b.chunk_bytes(&b.streams[0].chunks[0]).unwrap();
        assert_eq!(first, sources[0], "a full chunk is copied byte for byte");
    }

    /// A crash at each step of a compaction (simulated by putting back the
    /// files that step would not have reached) changes no answer.
    #[test]
    fn compaction_crash_at_each_step() {
        let d = tempfile::tempdir().unwrap();
        let s = small_blocks(d.path());
        let before = snapshot(&s);
        drop(s);
        let blocks = d.path().join("blocks");
        let saved: Vec<(std::path::PathBuf, Vec<u8>)> = std::fs::read_dir(&blocks)
            .unwrap()
            .map(|e| e.unwrap().path())
            .map(|p| (p.clone(), std::fs::read(&p).unwrap()))
            .collect();
        let restore = || {
            for e in std::fs::read_dir(&blocks).unwrap() {
                std::fs::remove_file(e.unwrap().path()).unwrap();
            }
            for (p, b) in &saved {
                std::fs::write(p, b).unwrap();
            }
        };
        // the merged result, computed once
        let s = MetricsStore::open(d.path(), WalOptions::default()).unwrap();
        let one = CompactionPolicy { ranges: vec![86_400_000], max_block_bytes: 0 };
        assert_eq!(s.compact(&one, 1).unwrap().blocks_merged, 6);
        drop(s);
        let merged_path = std::fs::read_dir(&blocks).unwrap().next().unwrap().unwrap().path();
        let merged = std::fs::read(&merged_path).unwrap();
        let count = || std::fs::read_dir(&blocks).unwrap().count();
        // 1. crash while writing the temporary file (or before its rename)
        restore();
        std::fs::write(
            blocks.join(format!("{}.compact.tmp", merged_path.file_name().unwrap().to_str().unwrap())),
            &merged[..merged.len() / 2],
        )
        .unwrap();
        let s = MetricsStore::open(d.path(), WalOptions::default()).unwrap();
        assert_eq!((s.block_stats().0, count()), (6, 6), "tmp removed, sources kept");
        assert_eq!(snapshot(&s), before);
        drop(s);
        // 2. crash after the rename, before any source was deleted
        restore();
        std::fs::write(&merged_path, &merged).unwrap();
        let s = MetricsStore::open(d.path(), WalOptions::default()).unwrap();
        assert_eq!((s.block_stats().0, count()), (1, 1), "replaced sources deleted at start");
        assert_eq!(snapshot(&s), before);
        drop(s);
        // 3. crash after some sources were deleted
        restore();
        std::fs::write(&merged_path, &merged).unwrap();
        std::fs::remove_file(saved.iter().map(|x| &x.0).filter(|p| **p != merged_path).min().unwrap()).unwrap();
        let s = MetricsStore::open(d.path(), WalOptions::default()).unwrap();
        assert_eq!((s.block_stats().0, count()), (1, 1));
        assert_eq!(snapshot(&s), before);
    }

    #[test]
    fn retention_by_age_and_size() {
        let d = tempfile::tempdir().unwrap();
        let s = MetricsStore::open(d.path(), WalOptions::default()).unwrap();
        let m = ls(&[("__name__", "m")]);
        for block in 0..4i64 {
            let pts: Vec<(i64, f64)> = (0..100).map(|i| (block * 1000 + i, i as f64)).collect();
            s.append("t", vec![SeriesSamples { labels: m.clone(), samples: pts }]).unwrap();
            s.flush().unwrap();
        }
        assert_eq!(s.block_stats().0, 4);
        // by age: blocks whose newest sample is before 1500 go (the first two)
        assert_eq!(s.apply_retention(Some(1500), 0).unwrap().0, 2);
        let got = s.select("t", &[], i64::MIN, i64::MAX);
        assert_eq!(got[0].samples.first().unwrap().0, 2000);
        // by size: keep at most one block's worth, the newest
        let one = s.block_stats().1 / 2;
        assert_eq!(s.apply_retention(None, one).unwrap().0, 1);
        assert_eq!(s.select("t", &[], i64::MIN, i64::MAX)[0].samples.first().unwrap().0, 3000);
        assert_eq!(fs_count(&d.path().join("blocks")), 1);
        drop(s);
        let s = MetricsStore::open(d.path(), WalOptions::default()).unwrap();
        assert_eq!(s.select("t", &[], i64::MIN, i64::MAX)[0].samples.len(), 100, "nothing comes back after a restart");
    }

    fn fs_count(p: &std::path::Path) -> usize {
        std::fs::read_dir(p).unwrap().count()
    }

    #[test]
    fn flush_due_by_samples() {
        let d = tempfile::tempdir().unwrap();
        let opts = MetricsStoreOptions { head_max_samples: 3, ..MetricsStoreOptions::default() };
        let s = MetricsStore::open_with(d.path(), opts).unwrap();
        let m = ls(&[("__name__", "m")]);
        s.append("t", vec![SeriesSamples { labels: m.clone(), samples: vec![(1, 1.0), (2, 2.0)] }]).unwrap();
        assert!(!s.flush_due());
        s.append("t", vec![SeriesSamples { labels: m, samples: vec![(3, 3.0)] }]).unwrap();
        assert!(s.flush_due());
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
