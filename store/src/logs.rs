//! The log engine: streams (a tenant plus a label set) of entries
//! (nanosecond timestamp, line, structured metadata), written through the WAL.
//!
//! Entries may arrive in any order and are kept sorted by timestamp; entries
//! with equal timestamps keep their arrival order. An entry identical to one
//! already stored (same stream, timestamp and line) is accepted as a no-op,
//! as Loki does.
//!
//! Current stage: the head keeps entries uncompressed in memory and is rebuilt
//! from the WAL at start; compressed chunks, the content index, blocks and
//! retention replace this in the log-storage issue without changing this
//! API's meaning.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

pub use cairn_wire::{Entry, StreamEntries};
use cairn_wire::{Labels, Matcher, matcher::matches_all};

use crate::block::{self, Block, BlockKind, EncodedChunk, SeriesChunks};
use crate::codec::{Reader, put_bytes, put_labels, put_pairs, put_uvarint, put_varint};
use crate::tiered::{HeadData, Tiered};
use crate::wal::{ReplayStats, WalOptions};
use crate::{StoreError, WriteOutcome, trigram};

/// WAL record type of a log write batch.
pub const RECORD_ENTRIES: u8 = 2;

struct Stream {
    labels: Labels,
    /// Sorted by `ts`; stable for equal timestamps.
    entries: Vec<Entry>,
}

#[derive(Default)]
struct TenantLogs {
    streams: Vec<Stream>,
    by_labels: HashMap<Labels, usize>,
}

/// In-memory entries not yet in a block.
#[derive(Default)]
struct Head {
    tenants: HashMap<String, TenantLogs>,
    /// Bytes of lines and metadata held.
    bytes: u64,
    /// When the oldest data still in this head was written.
    since: Option<Instant>,
}

/// Size of one stream's data within a time range.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StreamStats {
    /// Entries in the range.
    pub entries: u64,
    /// Bytes of their lines.
    pub bytes: u64,
    /// Chunks holding them. For now always 1 per stream returned (the
    /// per-block chunk count is not reported yet).
    pub chunks: u64,
}

/// What a filtered scan did with block chunks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ScanStats {
    /// Block chunks overlapping the range of matching streams.
    pub chunks: u64,
    /// Of those, skipped by the content index without being read.
    pub chunks_skipped: u64,
}

/// Settings of the log store.
#[derive(Debug, Clone)]
pub struct LogStoreOptions {
    /// WAL settings.
    pub wal: WalOptions,
    /// Flush the head to a block once it holds this many bytes.
    pub head_max_bytes: u64,
    /// Flush the head once its oldest data is this old.
    pub flush_interval: Duration,
}

impl Default for LogStoreOptions {
    fn default() -> Self {
        LogStoreOptions {
            wal: WalOptions::default(),
            head_max_bytes: 64 << 20,
            flush_interval: Duration::from_secs(600),
        }
    }
}

/// The log store.
pub struct LogStore {
    t: Tiered<Head>,
    opts: LogStoreOptions,
}

fn encode_batch(buf: &mut Vec<u8>, tenant: &str, batch: &[StreamEntries]) {
    put_bytes(buf, tenant.as_bytes());
    put_uvarint(buf, batch.len() as u64);
    for s in batch {
        put_labels(buf, &s.labels);
        put_uvarint(buf, s.entries.len() as u64);
        for e in &s.entries {
            put_varint(buf, e.ts);
            put_bytes(buf, e.line.as_bytes());
            put_pairs(buf, &e.metadata);
        }
    }
}

fn decode_batch(payload: &[u8]) -> Result<(String, Vec<StreamEntries>), crate::codec::DecodeError> {
    let mut r = Reader::new(payload);
    let tenant = r.str()?.to_string();
    let n = r.count(2)?;
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let labels = r.labels()?;
        let ne = r.count(3)?;
        let mut entries = Vec::with_capacity(ne);
        for _ in 0..ne {
            let ts = r.varint()?;
            let line = r.str()?.to_string();
            let metadata = r.pairs()?;
            entries.push(Entry { ts, line, metadata });
        }
        out.push(StreamEntries { labels, entries });
    }
    Ok((tenant, out))
}

/// Position after the last entry with timestamp `ts` (upper bound).
fn upper_bound(entries: &[Entry], ts: i64) -> usize {
    entries.partition_point(|e| e.ts <= ts)
}

fn is_duplicate(entries: &[Entry], e: &Entry) -> bool {
    let hi = upper_bound(entries, e.ts);
    entries[..hi].iter().rev().take_while(|x| x.ts == e.ts).any(|x| x.line == e.line)
}

/// Longest a write waits for a running flush when the head is full (then
/// it proceeds: availability over memory).
pub const BACKPRESSURE_MAX_WAIT: Duration = Duration::from_secs(30);

/// Raw line bytes per chunk before a new chunk is started.
pub const CHUNK_RAW_BYTES: usize = 1 << 20;
/// zstd level for chunks (see `docs/format/logs.md`).
pub const ZSTD_LEVEL: i32 = 3;

fn encode_chunk(buf: &mut Vec<u8>, entries: &[Entry]) {
    put_uvarint(buf, entries.len() as u64);
    let mut prev = entries.first().map(|e| e.ts).unwrap_or(0);
    for e in entries {
        put_varint(buf, e.ts.wrapping_sub(prev));
        prev = e.ts;
        put_bytes(buf, e.line.as_bytes());
        put_pairs(buf, &e.metadata);
    }
}

fn decode_chunk(payload: &[u8], min_ts: i64, out: &mut Vec<Entry>) -> Result<(), crate::codec::DecodeError> {
    let mut r = Reader::new(payload);
    let n = r.count(3)?;
    out.reserve(n);
    let mut ts = min_ts;
    for _ in 0..n {
        ts = ts.wrapping_add(r.varint()?);
        let line = r.str()?.to_string();
        let metadata = r.pairs()?;
        out.push(Entry { ts, line, metadata });
    }
    Ok(())
}

/// Splits every stream of `head` into zstd-compressed chunks of about
/// [`CHUNK_RAW_BYTES`] of lines.
fn encode_streams(head: &Head) -> Result<Vec<SeriesChunks<'_>>, StoreError> {
    let mut compressor = zstd::bulk::Compressor::new(ZSTD_LEVEL).map_err(|e| StoreError::Corrupt {
        path: PathBuf::new(),
        offset: 0,
        reason: format!("zstd: {e}"),
    })?;
    let mut scratch = Vec::new();
    let mut payload = Vec::new();
    let mut out = Vec::new();
    for (tenant, t) in &head.tenants {
        for s in &t.streams {
            let mut chunks = Vec::new();
            let mut start = 0;
            let mut raw = 0usize;
            for (i, e) in s.entries.iter().enumerate() {
                raw += e.line.len();
                if raw >= CHUNK_RAW_BYTES || i + 1 == s.entries.len() {
                    let c = &s.entries[start..=i];
                    payload.clear();
                    encode_chunk(&mut payload, c);
                    // Compress into a reused buffer sized to the zstd bound and
                    // keep an exact-size copy: `Compressor::compress` returns
                    // a Vec with the bound's capacity (about the input size),
                    // which held ~70 MB per 64 MB flush (found with massif).
                    scratch.clear();
                    scratch.reserve(zstd::zstd_safe::compress_bound(payload.len()));
                    compressor.compress_to_buffer(&payload, &mut scratch).map_err(|e| StoreError::Corrupt {
                        path: PathBuf::new(),
                        offset: 0,
                        reason: format!("zstd: {e}"),
                    })?;
                    let bytes = scratch.clone();
                    let mut filter = [0u8; trigram::FILTER_BYTES];
                    for e in c {
                        trigram::add(&mut filter, e.line.as_bytes());
                    }
                    let filter = filter.to_vec();
                    chunks.push(EncodedChunk {
                        bytes,
                        min_ts: c[0].ts,
                        max_ts: c[c.len() - 1].ts,
                        count: c.len() as u64,
                        raw_bytes: c.iter().map(|e| e.line.len() as u64).sum(),
                        payload: payload.len() as u64,
                        filter,
                    });
                    start = i + 1;
                    raw = 0;
                }
            }
            out.push((tenant.as_str(), &s.labels, chunks));
        }
    }
    Ok(out)
}

/// Reads, checks, decompresses and decodes one chunk of a log block.
fn read_chunk(b: &Block, c: &block::ChunkMeta, out: &mut Vec<Entry>) -> Result<(), StoreError> {
    let bytes = b.chunk_bytes(c)?;
    let payload = zstd::bulk::decompress(&bytes, c.payload as usize).map_err(|e| b.corrupt(c, format!("zstd: {e}")))?;
    decode_chunk(&payload, c.min_ts, out).map_err(|e| b.corrupt(c, format!("chunk payload: {e}")))
}

fn entry_bytes(e: &Entry) -> u64 {
    (e.line.len() + e.metadata.iter().map(|(k, v)| k.len() + v.len()).sum::<usize>()) as u64
}

fn apply(head: &mut Head, tenant: &str, batch: Vec<StreamEntries>) {
    let tl = head.tenants.entry(tenant.to_string()).or_default();
    let mut added = 0u64;
    for s in batch {
        let idx = match tl.by_labels.get(&s.labels) {
            Some(&i) => i,
            None => {
                let i = tl.streams.len();
                tl.by_labels.insert(s.labels.clone(), i);
                tl.streams.push(Stream { labels: s.labels, entries: Vec::new() });
                i
            }
        };
        let st = &mut tl.streams[idx];
        for e in s.entries {
            if is_duplicate(&st.entries, &e) {
                continue;
            }
            added += entry_bytes(&e);
            match st.entries.last() {
                Some(last) if last.ts > e.ts => {
                    let pos = upper_bound(&st.entries, e.ts);
                    st.entries.insert(pos, e);
                }
                _ => st.entries.push(e),
            }
        }
    }
    if added > 0 && head.since.is_none() {
        head.since = Some(Instant::now());
    }
    head.bytes += added;
}

impl Head {
    fn is_empty(&self) -> bool {
        self.tenants.values().all(|t| t.streams.iter().all(|s| s.entries.is_empty()))
    }

    /// Entries of matching streams of `tenant` in `[start, end)`.
    fn collect<'a>(
        &'a self,
        tenant: &str,
        matchers: &[Matcher],
        start: i64,
        end: i64,
        mut f: impl FnMut(&'a Labels, &'a [Entry]),
    ) {
        let Some(tl) = self.tenants.get(tenant) else {
            return;
        };
        for s in &tl.streams {
            if !matches_all(matchers, &s.labels) {
                continue;
            }
            let lo = s.entries.partition_point(|e| e.ts < start);
            let hi = s.entries.partition_point(|e| e.ts < end);
            if lo < hi {
                f(&s.labels, &s.entries[lo..hi]);
            }
        }
    }
}

impl HeadData for Head {
    fn is_empty(&self) -> bool {
        Head::is_empty(self)
    }

    fn replay(&mut self, payload: &[u8]) -> Result<(), crate::codec::DecodeError> {
        let (tenant, batch) = decode_batch(payload)?;
        apply(self, &tenant, batch);
        Ok(())
    }

    fn encode(&self) -> Result<Vec<SeriesChunks<'_>>, StoreError> {
        encode_streams(self)
    }

    fn merge_back(&mut self, failed: &Self) {
        for (tenant, t) in &failed.tenants {
            let batch = t
                .streams
                .iter()
                .map(|s| StreamEntries { labels: s.labels.clone(), entries: s.entries.clone() })
                .collect();
            apply(self, tenant, batch);
        }
    }

    fn count(&self) -> u64 {
        self.tenants.values().flat_map(|t| &t.streams).map(|s| s.entries.len() as u64).sum()
    }
}

impl LogStore {
    /// Opens the store in `dir` (WAL in `dir/wal`, blocks in `dir/blocks`)
    /// with default flush settings.
    pub fn open(dir: &Path, wal_opts: WalOptions) -> Result<Self, StoreError> {
        Self::open_with(dir, LogStoreOptions { wal: wal_opts, ..LogStoreOptions::default() })
    }

    /// Opens the store in `dir`: loads every block, deletes leftover
    /// temporary files, and replays the WAL segments no block covers.
    pub fn open_with(dir: &Path, opts: LogStoreOptions) -> Result<Self, StoreError> {
        let t = Tiered::open(dir, BlockKind::Logs, RECORD_ENTRIES, opts.wal.clone())?;
        Ok(LogStore { t, opts })
    }

    /// What the WAL replay at open found.
    pub fn replay_stats(&self) -> &ReplayStats {
        &self.t.replay
    }

    /// Writes a batch; returns once it is in the WAL. Validation of lines and
    /// labels against limits happens before this call, in the aggregator.
    pub fn push(&self, tenant: &str, batch: Vec<StreamEntries>) -> Result<WriteOutcome, StoreError> {
        let accepted = batch.iter().map(|s| s.entries.len()).sum();
        let batch: Vec<StreamEntries> = batch.into_iter().filter(|s| !s.entries.is_empty()).collect();
        if !batch.is_empty() {
            // Backpressure: a full head waits for the running flush, so at
            // most two heads (one being flushed) are in memory. Measured with
            // the ingest benchmark: waiting only at 2× let the frozen head
            // itself reach 2× and peak RSS 580 MB on the PEERS workload.
            let limit = self.opts.head_max_bytes;
            self.t.wait_for_flush_while(|| self.head_bytes() >= limit, BACKPRESSURE_MAX_WAIT);
            let _w = self.t.write_lock.lock().unwrap_or_else(|p| p.into_inner());
            let mut buf = Vec::new();
            encode_batch(&mut buf, tenant, &batch);
            self.t.wal.append(RECORD_ENTRIES, &buf)?;
            let mut head = self.t.head.write().unwrap_or_else(|p| p.into_inner());
            apply(&mut head, tenant, batch);
        }
        Ok(WriteOutcome { accepted, rejected: Vec::new() })
    }

    /// True when the head is over `head_max_bytes` or its oldest data is
    /// older than `flush_interval`.
    pub fn flush_due(&self) -> bool {
        let head = self.t.head.read().unwrap_or_else(|p| p.into_inner());
        head.bytes >= self.opts.head_max_bytes || head.since.is_some_and(|t| t.elapsed() >= self.opts.flush_interval)
    }

    /// Bytes held in the head.
    pub fn head_bytes(&self) -> u64 {
        self.t.head.read().unwrap_or_else(|p| p.into_inner()).bytes
    }

    /// Writes the whole head to a new block and drops the WAL segments it
    /// covers (see `docs/format/logs.md` for the crash-consistency
    /// argument). Writes continue during the flush. Returns the number of
    /// entries flushed.
    pub fn flush(&self) -> Result<u64, StoreError> {
        self.t.flush()
    }

    /// Calls `f(labels, entries)` for every stream of `tenant` matching all
    /// `matchers`, with its entries in `[start, end)` sorted by timestamp
    /// (streams with none are skipped), streams in label order. Entries come
    /// from blocks, the head being flushed and the head, each exactly once.
    pub fn scan(&self, tenant: &str, matchers: &[Matcher], start: i64, end: i64, f: &mut dyn FnMut(&Labels, &[Entry])) {
        self.scan_needles(tenant, matchers, start, end, &[], f);
    }

    /// [`LogStore::scan_filtered`] that logs block read errors instead of
    /// returning them (results are then incomplete), like [`LogStore::scan`].
    pub fn scan_needles(
        &self,
        tenant: &str,
        matchers: &[Matcher],
        start: i64,
        end: i64,
        needles: &[&[u8]],
        f: &mut dyn FnMut(&Labels, &[Entry]),
    ) {
        if let Err(e) = self.scan_filtered(tenant, matchers, start, end, needles, f) {
            tracing::error!(error = %e, "log block read failed; results are incomplete");
        }
    }

    /// Like [`LogStore::scan`] but reports block read errors.
    pub fn try_scan(
        &self,
        tenant: &str,
        matchers: &[Matcher],
        start: i64,
        end: i64,
        f: &mut dyn FnMut(&Labels, &[Entry]),
    ) -> Result<(), StoreError> {
        self.scan_filtered(tenant, matchers, start, end, &[], f).map(|_| ())
    }

    /// Like [`LogStore::try_scan`], with a content-index hint: `needles` are
    /// substrings every wanted line contains (the literals of `|=` filters).
    /// Block chunks whose trigram filter rules a needle out are skipped
    /// without being read; the caller must still apply its filters to the
    /// entries it gets (chunks that pass may hold other lines too).
    pub fn scan_filtered(
        &self,
        tenant: &str,
        matchers: &[Matcher],
        start: i64,
        end: i64,
        needles: &[&[u8]],
        f: &mut dyn FnMut(&Labels, &[Entry]),
    ) -> Result<ScanStats, StoreError> {
        let mut stats = ScanStats::default();
        let (persisted, head) = self.t.read();
        // Fast path: everything in the head.
        let in_blocks = persisted
            .blocks
            .iter()
            .any(|b| b.min_ts < end && b.max_ts >= start && !b.tenant_streams(tenant).is_empty());
        if !in_blocks && persisted.frozen.is_none() {
            head.collect(tenant, matchers, start, end, &mut *f);
            return Ok(stats);
        }
        let mut by: std::collections::BTreeMap<Labels, Vec<Entry>> = Default::default();
        for b in &persisted.blocks {
            if b.min_ts >= end || b.max_ts < start {
                continue;
            }
            for s in b.tenant_streams(tenant) {
                if !matches_all(matchers, &s.labels) {
                    continue;
                }
                let mut got = Vec::new();
                for c in s.chunks.iter().filter(|c| c.min_ts < end && c.max_ts >= start) {
                    stats.chunks += 1;
                    if !needles.is_empty() && c.filter_len > 0 {
                        let filter = b.chunk_filter(c)?;
                        if !needles.iter().all(|n| trigram::may_contain(&filter, n)) {
                            stats.chunks_skipped += 1;
                            continue;
                        }
                    }
                    read_chunk(b, c, &mut got)?;
                }
                got.retain(|e| e.ts >= start && e.ts < end);
                if !got.is_empty() {
                    by.entry(s.labels.clone()).or_default().extend(got);
                }
            }
        }
        if let Some(fr) = &persisted.frozen {
            fr.collect(tenant, matchers, start, end, |l, es| by.entry(l.clone()).or_default().extend_from_slice(es));
        }
        head.collect(tenant, matchers, start, end, |l, es| by.entry(l.clone()).or_default().extend_from_slice(es));
        for (labels, mut entries) in by {
            // Stable: equal timestamps keep block, then frozen, then head order.
            entries.sort_by_key(|e| e.ts);
            f(&labels, &entries);
        }
        Ok(stats)
    }

    /// Streams of `tenant` matching all `matchers` (empty: every stream) with
    /// at least one entry in `[start, end)`, sorted by labels, with the size
    /// of their data in that range. Backs `/loki/api/v1/series`, `/labels`,
    /// `/label/…/values`, `/index/stats` and `/index/volume`.
    ///
    /// Block chunks that lie wholly inside the range are counted from their
    /// index entry (entries, line bytes) without being read; only chunks
    /// that straddle a range edge are decompressed.
    pub fn streams(&self, tenant: &str, matchers: &[Matcher], start: i64, end: i64) -> Vec<(Labels, StreamStats)> {
        match self.try_streams(tenant, matchers, start, end) {
            Ok(v) => v,
            Err(e) => {
                tracing::error!(error = %e, "log block read failed; stream statistics are incomplete");
                Vec::new()
            }
        }
    }

    fn try_streams(
        &self,
        tenant: &str,
        matchers: &[Matcher],
        start: i64,
        end: i64,
    ) -> Result<Vec<(Labels, StreamStats)>, StoreError> {
        let (persisted, head) = self.t.read();
        let mut by: std::collections::BTreeMap<Labels, StreamStats> = Default::default();
        let mut add = |labels: &Labels, entries: u64, bytes: u64| {
            if entries > 0 {
                let st = by.entry(labels.clone()).or_default();
                st.entries += entries;
                st.bytes += bytes;
                st.chunks = 1;
            }
        };
        for b in &persisted.blocks {
            if b.min_ts >= end || b.max_ts < start {
                continue;
            }
            for s in b.tenant_streams(tenant) {
                if !matches_all(matchers, &s.labels) {
                    continue;
                }
                for c in s.chunks.iter().filter(|c| c.min_ts < end && c.max_ts >= start) {
                    if c.min_ts >= start && c.max_ts < end {
                        add(&s.labels, c.entries, c.raw_bytes);
                    } else {
                        let mut es = Vec::new();
                        read_chunk(b, c, &mut es)?;
                        let inside = es.iter().filter(|e| e.ts >= start && e.ts < end);
                        let (n, bytes) = inside.fold((0, 0), |(n, b), e| (n + 1, b + e.line.len() as u64));
                        add(&s.labels, n, bytes);
                    }
                }
            }
        }
        let mut from_memory = |labels: &Labels, es: &[Entry]| {
            add(labels, es.len() as u64, es.iter().map(|e| e.line.len() as u64).sum());
        };
        if let Some(fr) = &persisted.frozen {
            fr.collect(tenant, matchers, start, end, &mut from_memory);
        }
        head.collect(tenant, matchers, start, end, &mut from_memory);
        Ok(by.into_iter().collect())
    }

    /// Number of streams and entries in the head, over all tenants.
    pub fn counts(&self) -> (usize, usize) {
        let head = self.t.head.read().unwrap_or_else(|p| p.into_inner());
        head.tenants.values().fold((0, 0), |(s, n), t| {
            (s + t.streams.len(), n + t.streams.iter().map(|x| x.entries.len()).sum::<usize>())
        })
    }

    /// Deletes blocks whose data is all older than `min_ts` (ns; `None`:
    /// no age limit), then the oldest blocks while blocks take more than
    /// `max_bytes` (0: no limit). Returns (blocks, bytes) deleted. Data still
    /// in the head is not affected.
    pub fn apply_retention(&self, min_ts: Option<i64>, max_bytes: u64) -> Result<(usize, u64), StoreError> {
        self.t.apply_retention(min_ts, max_bytes)
    }

    /// Number of blocks and their bytes on disk.
    pub fn block_stats(&self) -> (usize, u64) {
        self.t.block_stats()
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
    use std::fs;

    fn e(ts: i64, line: &str) -> Entry {
        Entry { ts, line: line.into(), metadata: vec![] }
    }

    #[test]
    fn out_of_order_dedup_restart() {
        let d = tempfile::tempdir().unwrap();
        let l = Labels::from_pairs([("job", "x")]).unwrap();
        {
            let s = LogStore::open(d.path(), WalOptions::default()).unwrap();
            s.push("t", vec![StreamEntries { labels: l.clone(), entries: vec![e(30, "c"), e(10, "a")] }]).unwrap();
            s.push("t", vec![StreamEntries { labels: l.clone(), entries: vec![e(20, "b"), e(10, "a"), e(10, "a2")] }])
                .unwrap();
        }
        let s = LogStore::open(d.path(), WalOptions::default()).unwrap();
        let mut got = Vec::new();
        s.scan("t", &[Matcher::equal("job", "x")], 0, 100, &mut |_, es| got.extend(es.iter().map(|e| e.line.clone())));
        assert_eq!(got, ["a", "a2", "b", "c"]);
        let mut got = Vec::new();
        s.scan("t", &[], 10, 30, &mut |_, es| got.extend(es.iter().map(|e| e.ts)));
        assert_eq!(got, [10, 10, 20], "end is exclusive");
        let mut n = 0;
        s.scan("other", &[], 0, 100, &mut |_, es| n += es.len());
        assert_eq!(n, 0);
        assert_eq!(s.streams("t", &[], 0, 100), vec![(l.clone(), StreamStats { entries: 4, bytes: 5, chunks: 1 })]);
        assert_eq!(s.streams("t", &[], 15, 25)[0].1.entries, 1);
        assert!(s.streams("t", &[], 31, 100).is_empty());
    }

    fn lines(s: &LogStore, start: i64, end: i64) -> Vec<(i64, String)> {
        let mut got = Vec::new();
        s.try_scan("t", &[Matcher::equal("job", "x")], start, end, &mut |_, es| {
            got.extend(es.iter().map(|e| (e.ts, e.line.clone())))
        })
        .unwrap();
        got
    }

    fn push(s: &LogStore, entries: Vec<Entry>) {
        s.push("t", vec![StreamEntries { labels: Labels::from_pairs([("job", "x")]).unwrap(), entries }]).unwrap();
    }

    #[test]
    fn flush_then_query_restart_and_out_of_order() {
        let d = tempfile::tempdir().unwrap();
        {
            let s = LogStore::open(d.path(), WalOptions::default()).unwrap();
            push(&s, vec![e(10, "a"), e(30, "c")]);
            assert!(s.head_bytes() > 0);
            assert_eq!(s.flush().unwrap(), 2);
            assert_eq!(s.head_bytes(), 0);
            assert_eq!(s.block_stats().0, 1);
            assert_eq!(s.flush().unwrap(), 0, "empty head: no block");
            // older than what is in the block: still returned in order
            push(&s, vec![e(20, "b"), e(40, "d")]);
            assert_eq!(lines(&s, 0, 100), vec![(10, "a".into()), (20, "b".into()), (30, "c".into()), (40, "d".into())]);
            assert_eq!(lines(&s, 15, 35), vec![(20, "b".into()), (30, "c".into())]);
            assert_eq!(s.streams("t", &[], 0, 100)[0].1.entries, 4);
        }
        // WAL segments covered by the block are gone; the rest replays
        let wal_files = fs::read_dir(d.path().join("wal")).unwrap().count();
        assert!(wal_files <= 3, "{wal_files} WAL segments left");
        let s = LogStore::open(d.path(), WalOptions::default()).unwrap();
        assert_eq!(lines(&s, 0, 100).len(), 4);
        s.flush().unwrap();
        drop(s);
        let s = LogStore::open(d.path(), WalOptions::default()).unwrap();
        assert_eq!(s.block_stats().0, 2);
        assert_eq!(lines(&s, 0, 100).len(), 4);
        assert_eq!(s.counts().1, 0, "nothing replayed into the head");
    }

    /// A crash after the block was renamed into place but before the WAL
    /// segments it covers were deleted must not apply the data twice.
    #[test]
    fn crash_between_block_and_wal_removal_does_not_duplicate() {
        let d = tempfile::tempdir().unwrap();
        let s = LogStore::open(d.path(), WalOptions::default()).unwrap();
        push(&s, vec![e(10, "a"), e(20, "b")]);
        let wal_dir = d.path().join("wal");
        let saved: Vec<(PathBuf, Vec<u8>)> = fs::read_dir(&wal_dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .map(|p| (p.clone(), fs::read(&p).unwrap()))
            .collect();
        s.flush().unwrap();
        drop(s);
        for (p, bytes) in saved {
            fs::write(p, bytes).unwrap();
        }
        // and an unfinished block from another interrupted flush
        fs::write(d.path().join("blocks").join("00000099.blk.tmp"), b"partial").unwrap();
        let s = LogStore::open(d.path(), WalOptions::default()).unwrap();
        assert_eq!(lines(&s, 0, 100), vec![(10, "a".into()), (20, "b".into())]);
        assert!(!d.path().join("blocks").join("00000099.blk.tmp").exists());
    }

    /// A writer over twice the head limit waits for the running flush and
    /// is released by its end, not by the 30 s cap; with no flush running it
    /// does not wait.
    #[test]
    fn backpressure_waits_for_the_running_flush() {
        let d = tempfile::tempdir().unwrap();
        let s = std::sync::Arc::new(LogStore::open(d.path(), WalOptions::default()).unwrap());
        let waited = s.t.wait_for_flush_while(|| true, Duration::from_secs(30));
        assert!(waited < Duration::from_secs(30), "no flush running: no wait");
        // simulate a flush in progress
        s.t.persisted.write().unwrap().frozen = Some(std::sync::Arc::new(Head::default()));
        let s2 = s.clone();
        let finisher = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            s2.t.persisted.write().unwrap().frozen = None;
            s2.t.signal_flush_done();
        });
        let waited = s.t.wait_for_flush_while(|| true, Duration::from_secs(30));
        finisher.join().unwrap();
        assert!(waited < Duration::from_secs(30), "released by the flush, not the cap");
        assert!(!s.t.flushing());
    }

    /// The content index skips chunks that cannot hold a needle and never
    /// drops a chunk that can (substring inside a longer token included).
    #[test]
    fn content_index_prunes_chunks_exactly() {
        let d = tempfile::tempdir().unwrap();
        let s = LogStore::open(d.path(), WalOptions::default()).unwrap();
        // four blocks; only the third holds the rare token, inside a longer word
        for b in 0..4i64 {
            let mut es: Vec<Entry> =
                (0..200).map(|i| e(b * 1000 + i, &format!("GET /api/v{b}/items/{i} 200 ok"))).collect();
            if b == 2 {
                es.push(e(b * 1000 + 500, "user fooZQX9rareTOKENbar logged in"));
            }
            push(&s, es);
            s.flush().unwrap();
        }
        let run = |needles: &[&[u8]], filter: &str| {
            let mut got = Vec::new();
            let st = s
                .scan_filtered("t", &[Matcher::equal("job", "x")], 0, 10_000, needles, &mut |_, es| {
                    got.extend(es.iter().filter(|e| e.line.contains(filter)).map(|e| e.ts))
                })
                .unwrap();
            (got, st)
        };
        let (got, st) = run(&[b"ZQX9rareTOKEN"], "ZQX9rareTOKEN");
        assert_eq!(got, vec![2500]);
        assert_eq!(st, ScanStats { chunks: 4, chunks_skipped: 3 });
        let (got, st) = run(&[b"/items/1"], "/items/1");
        assert_eq!(got.len(), 4 * 111, "every block has /items/1, /items/10..19, /items/100..199");
        assert_eq!(st.chunks_skipped, 0);
        let (got, st) = run(&[], "ok");
        assert_eq!(got.len(), 800);
        assert_eq!(st.chunks_skipped, 0);
    }

    /// `streams()` answers from block indexes where it can, and must agree
    /// exactly with counting the scanned entries, chunk edges included.
    #[test]
    fn stream_stats_from_index_match_a_scan() {
        let d = tempfile::tempdir().unwrap();
        let s = LogStore::open(d.path(), WalOptions::default()).unwrap();
        for b in 0..3i64 {
            push(&s, (0..50).map(|i| e(b * 100 + i, &format!("line {b} {i}"))).collect());
            s.flush().unwrap();
        }
        push(&s, (0..10).map(|i| e(400 + i, "head")).collect());
        for (start, end) in [(0, 1000), (25, 125), (120, 410), (149, 150), (500, 600)] {
            let (mut n, mut bytes) = (0u64, 0u64);
            s.scan("t", &[], start, end, &mut |_, es| {
                n += es.len() as u64;
                bytes += es.iter().map(|e| e.line.len() as u64).sum::<u64>();
            });
            let got = s.streams("t", &[], start, end);
            if n == 0 {
                assert!(got.is_empty(), "[{start}, {end})");
            } else {
                assert_eq!(got.len(), 1, "[{start}, {end})");
                assert_eq!(got[0].1, StreamStats { entries: n, bytes, chunks: 1 }, "[{start}, {end})");
            }
        }
    }

    #[test]
    fn flush_due_by_size() {
        let d = tempfile::tempdir().unwrap();
        let opts = LogStoreOptions { head_max_bytes: 10, ..LogStoreOptions::default() };
        let s = LogStore::open_with(d.path(), opts).unwrap();
        assert!(!s.flush_due());
        push(&s, vec![e(1, "0123456789")]);
        assert!(s.flush_due());
        s.flush().unwrap();
        assert!(!s.flush_due());
    }

    #[test]
    fn batch_codec_round_trip_and_garbage() {
        let batch = vec![StreamEntries {
            labels: Labels::from_pairs([("job", "x")]).unwrap(),
            entries: vec![Entry { ts: -1, line: "héllo".into(), metadata: vec![("k".into(), "v".into())] }],
        }];
        let mut b = Vec::new();
        encode_batch(&mut b, "ten", &batch);
        assert_eq!(decode_batch(&b).unwrap(), ("ten".to_string(), batch));
        for cut in 0..b.len() {
            assert!(decode_batch(&b[..cut]).is_err());
        }
    }
}
