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
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering as AtomicOrdering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

pub use cairn_wire::{Entry, StreamEntries};
use cairn_wire::{Labels, Matcher, matcher::matches_all};

use crate::block::{self, Block, BlockKind, EncodedChunk, SeriesChunks};
use crate::codec::{Reader, put_bytes, put_labels, put_pairs, put_uvarint, put_varint};
use crate::tiered::{HeadData, Tiered};
use crate::wal::{ReplayStats, WalOptions};
use crate::{StoreError, WriteOutcome, logchunk, trigram};

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
    by_labels: crate::LabelMap<usize>,
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
    /// Chunks holding them (block chunks, plus one for data still in
    /// memory).
    pub chunks: u64,
}

/// What a scan did with block chunks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ScanStats {
    /// Block chunks overlapping the range of matching streams.
    pub chunks: u64,
    /// Of those, skipped by the content index without being read.
    pub chunks_skipped: u64,
    /// Compressed bytes read from blocks.
    pub bytes_read: u64,
    /// Bytes of chunk bodies decompressed.
    pub bytes_decompressed: u64,
    /// Entries handed to the caller that were still in memory (not yet in
    /// a block).
    pub head_lines: u64,
    /// Bytes of those entries' lines.
    pub head_bytes: u64,
}

/// What [`LogStore::scan_timestamps`] calls: labels, timestamps, line
/// lengths, and the entries themselves where they carry metadata.
pub type TimestampSink<'f> = dyn FnMut(&Labels, &[i64], &[u32], Option<&[EntryRef<'_>]>) + 'f;

/// One batch of [`LogStore::scan_counts`].
#[derive(Debug, Clone, Copy)]
pub enum TsBatch<'a> {
    /// Sorted timestamps, with the line lengths when asked for (otherwise
    /// empty), and the entries themselves where they carry structured
    /// metadata.
    Entries { ts: &'a [i64], lens: &'a [u32], entries: Option<&'a [EntryRef<'a>]> },
    /// A whole block chunk the caller's `whole` test accepted, taken from
    /// the block index without being read: `count` entries without
    /// structured metadata, `bytes` bytes of lines, every timestamp in
    /// `[min_ts, max_ts]`.
    Whole { min_ts: i64, max_ts: i64, count: u64, bytes: u64 },
}

/// Which end of a time range a scan starts from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Order {
    /// Oldest first.
    Forward,
    /// Newest first.
    Backward,
}

/// What [`LogStore::scan_entries`] reads.
#[derive(Debug, Clone, Copy)]
pub struct ScanRequest<'a> {
    /// Tenant whose streams are read.
    pub tenant: &'a str,
    /// Stream selector.
    pub matchers: &'a [Matcher],
    /// Inclusive start, ns.
    pub start: i64,
    /// Exclusive end, ns.
    pub end: i64,
    /// Substrings every wanted line contains (the literals of `|=` line
    /// filters): lines without all of them are not returned, and chunks
    /// whose content filter rules one out are not read.
    pub needles: &'a [&'a [u8]],
    /// Which end to start from.
    pub order: Order,
}

/// Structured metadata of an [`EntryRef`].
#[derive(Debug, Clone, Copy)]
pub enum MetaRef<'a> {
    /// None.
    None,
    /// Held in memory.
    Owned(&'a [(String, String)]),
    /// Encoded in a chunk (`logchunk::meta_pairs`).
    Encoded(&'a [u8]),
}

impl<'a> MetaRef<'a> {
    /// True when there are no pairs.
    pub fn is_empty(&self) -> bool {
        match self {
            MetaRef::None => true,
            MetaRef::Owned(p) => p.is_empty(),
            MetaRef::Encoded(b) => b.first().is_none_or(|&n| n == 0),
        }
    }

    /// The (name, value) pairs.
    pub fn iter(&self) -> impl Iterator<Item = (&'a str, &'a str)> + use<'a> {
        let (owned, enc): (&'a [(String, String)], &'a [u8]) = match *self {
            MetaRef::None => (&[], &[]),
            MetaRef::Owned(p) => (p, &[]),
            MetaRef::Encoded(b) => (&[], b),
        };
        owned.iter().map(|(k, v)| (k.as_str(), v.as_str())).chain(logchunk::meta_pairs(enc))
    }

    /// Owned copies of the pairs.
    pub fn to_vec(&self) -> Vec<(String, String)> {
        self.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }
}

/// A log entry as a scan hands it out, borrowed from the store.
#[derive(Debug, Clone, Copy)]
pub struct EntryRef<'a> {
    /// Timestamp, ns.
    pub ts: i64,
    /// The line.
    pub line: &'a str,
    /// Structured metadata.
    pub metadata: MetaRef<'a>,
}

impl EntryRef<'_> {
    /// An owned copy.
    pub fn to_owned(&self) -> Entry {
        Entry { ts: self.ts, line: self.line.to_string(), metadata: self.metadata.to_vec() }
    }
}

/// Worker threads that decompress chunks ahead of a scan.
const SCAN_WORKERS: usize = 2;
/// Sources from which a line-filter scan checks the chunk filters on two
/// threads.
const PARALLEL_FILTER_CHECK: usize = 256;
/// How many sources the workers may run ahead of the scan.
const LOOKAHEAD: usize = 8;

/// A source made ready for a scan.
enum Prepared {
    /// Entries in memory: nothing to decode.
    Mem,
    /// Beyond the scan's cutoff: not read.
    Beyond,
    /// No entry in the time range.
    Empty,
    /// Decoded, with the range of entries inside the time range.
    Ready(Box<ReadyChunk>),
    /// Counted from the block index (`scan_counts`).
    Whole,
}

struct ReadyChunk {
    dec: logchunk::Decoded,
    lo: usize,
    hi: usize,
    chunk_len: u64,
}

/// Decodes a chunk's timestamps and, when any is in the range, its body
/// (its content filter was checked by the scan already). `scratch` lends
/// its buffers and zstd context.
fn prepare(
    b: &Block,
    c: &block::ChunkMeta,
    req: &ScanRequest<'_>,
    scratch: &mut logchunk::Decoded,
    cache: Option<&ChunkCache>,
) -> Result<Prepared, StoreError> {
    let (lo, hi) = decode_head_range(scratch, b, c, req.start, req.end)?;
    if lo >= hi {
        return Ok(Prepared::Empty);
    }
    if scratch.is_framed() {
        // Version 3: only the frames in range whose filters pass every
        // needle, each checked against its own CRC.
        let bytes = b.chunk_unchecked(c)?;
        let corrupt = |e: crate::codec::DecodeError| b.corrupt(c, format!("chunk: {e}"));
        if !scratch.decode_frames(bytes, c.payload, lo, hi, req.needles).map_err(corrupt)? {
            return Ok(Prepared::Empty);
        }
        return Ok(Prepared::Ready(Box::new(ReadyChunk {
            dec: scratch.split_off(),
            lo,
            hi,
            chunk_len: bytes.len() as u64,
        })));
    }
    let bytes = b.chunk_slice(c)?;
    let key = (b.uid, c.offset);
    let cache = cache.filter(|_| scratch.has_body_frame());
    let corrupt = |e: crate::codec::DecodeError| b.corrupt(c, format!("chunk: {e}"));
    match cache.map(|cache| (cache, cache.get(key))) {
        Some((_, Some(body))) => scratch.set_body(&body).map_err(corrupt)?,
        Some((cache, None)) => {
            scratch.decode_body(bytes, c.payload).map_err(corrupt)?;
            cache.insert(key, &scratch.body);
        }
        None => scratch.decode_body(bytes, c.payload).map_err(corrupt)?,
    }
    Ok(Prepared::Ready(Box::new(ReadyChunk { dec: scratch.split_off(), lo, hi, chunk_len: bytes.len() as u64 })))
}

/// The entries of a decoded chunk whose lines hold every needle.
fn select<'a>(
    b: &Block,
    c: &block::ChunkMeta,
    r: &'a ReadyChunk,
    needles: &[&[u8]],
    finder: Option<&memchr::memmem::Finder<'_>>,
    batch: &mut Vec<EntryRef<'a>>,
) -> Result<(), StoreError> {
    let dec = &r.dec;
    let mut keep = |i: usize| -> Result<(), StoreError> {
        let line = std::str::from_utf8(dec.line(i)).map_err(|_| b.corrupt(c, format!("line {i} is not UTF-8")))?;
        let metadata = dec.meta(i).map_or(MetaRef::None, MetaRef::Encoded);
        batch.push(EntryRef { ts: dec.ts[i], line, metadata });
        Ok(())
    };
    // The entries of `r.lo..r.hi` whose lines were decoded (all of them,
    // or those of the frames of a version 3 chunk that were).
    for &(a, z) in &dec.ranges {
        let (lo, hi) = (a.max(r.lo), z.min(r.hi));
        if lo < hi {
            select_range(dec, lo, hi, needles, finder, &mut keep)?;
        }
    }
    Ok(())
}

/// [`select`] over the entries `lo..hi`, whose lines are decoded.
fn select_range(
    dec: &logchunk::Decoded,
    lo: usize,
    hi: usize,
    needles: &[&[u8]],
    finder: Option<&memchr::memmem::Finder<'_>>,
    keep: &mut dyn FnMut(usize) -> Result<(), StoreError>,
) -> Result<(), StoreError> {
    match finder {
        Some(fd) if dec.lines_contiguous() => {
            // One search over the chunk's concatenated lines; only lines
            // holding a hit are looked at.
            let slots = &dec.slots;
            let (from, to) = (slots[lo].line_start as usize, slots[hi - 1].line_end as usize);
            let hay = &dec.body[from..to];
            let mut pos = 0;
            let mut i = lo;
            while let Some(p) = fd.find(&hay[pos..]) {
                let at = (from + pos + p) as u32;
                i += slots[i..hi].partition_point(|s| s.line_end <= at);
                if i >= hi {
                    break;
                }
                let s = slots[i];
                if at + fd.needle().len() as u32 <= s.line_end {
                    let line = dec.line(i);
                    if needles[1..].iter().all(|n| contains(line, n)) {
                        keep(i)?;
                    }
                    pos = s.line_end as usize - from;
                    i += 1;
                } else {
                    // the hit spans two lines
                    pos += p + 1;
                }
                if pos >= hay.len() {
                    break;
                }
            }
        }
        _ => {
            for i in lo..hi {
                if needles.iter().all(|n| contains(dec.line(i), n)) {
                    keep(i)?;
                }
            }
        }
    }
    Ok(())
}

/// Sources prepared ahead of a scan by worker threads, handed to the scan
/// in order; workers stay at most [`LOOKAHEAD`] sources ahead, and skip
/// sources beyond the scan's cutoff.
struct Ahead {
    state: Mutex<AheadState>,
    ready: Condvar,
    space: Condvar,
    next: AtomicUsize,
    stop: AtomicBool,
    cut: Mutex<Option<i64>>,
}

struct AheadState {
    slots: Vec<Option<Result<Prepared, StoreError>>>,
    consumed: usize,
}

impl Ahead {
    fn new(n: usize) -> Ahead {
        Ahead {
            state: Mutex::new(AheadState { slots: (0..n).map(|_| None).collect(), consumed: 0 }),
            ready: Condvar::new(),
            space: Condvar::new(),
            next: AtomicUsize::new(0),
            stop: AtomicBool::new(false),
            cut: Mutex::new(None),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, AheadState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// True when `src` lies wholly beyond the cutoff.
    fn beyond(&self, order: Order, src: &Source<'_>) -> bool {
        let cut = *self.cut.lock().unwrap_or_else(|p| p.into_inner());
        match (order, cut) {
            (Order::Forward, Some(c)) => src.min_ts > c,
            (Order::Backward, Some(c)) => src.max_ts < c,
            _ => false,
        }
    }

    fn set_cut(&self, order: Order, c: i64) {
        let mut cut = self.cut.lock().unwrap_or_else(|p| p.into_inner());
        *cut = Some(match (order, *cut) {
            (Order::Forward, Some(old)) => old.min(c),
            (Order::Backward, Some(old)) => old.max(c),
            (_, None) => c,
        });
    }

    /// A worker: prepares sources in order until all are claimed or the
    /// scan stops.
    fn work(
        &self,
        pool: &DecodePool,
        prep: &(dyn Fn(usize, &mut logchunk::Decoded) -> Result<Prepared, StoreError> + Sync),
    ) {
        let mut scratch = pool.take();
        self.work_with(pool, &mut scratch, prep);
        pool.put(scratch);
    }

    fn work_with(
        &self,
        pool: &DecodePool,
        scratch: &mut logchunk::Decoded,
        prep: &(dyn Fn(usize, &mut logchunk::Decoded) -> Result<Prepared, StoreError> + Sync),
    ) {
        loop {
            let i = self.next.fetch_add(1, AtomicOrdering::SeqCst);
            {
                let mut st = self.lock();
                if i >= st.slots.len() {
                    return;
                }
                while i >= st.consumed + LOOKAHEAD && !self.stop.load(AtomicOrdering::SeqCst) {
                    st = self.space.wait(st).unwrap_or_else(|p| p.into_inner());
                }
            }
            if self.stop.load(AtomicOrdering::SeqCst) {
                return;
            }
            if !scratch.has_buffers()
                && let Some(d) = pool.try_take()
            {
                scratch.recycle(d);
            }
            let r = prep(i, scratch);
            self.lock().slots[i] = Some(r);
            self.ready.notify_all();
        }
    }

    /// Waits for source `i` (claimed by a worker) and takes it.
    fn take(&self, i: usize) -> Result<Prepared, StoreError> {
        let mut st = self.lock();
        loop {
            if let Some(r) = st.slots.get_mut(i).and_then(Option::take) {
                st.consumed = i + 1;
                self.space.notify_all();
                return r;
            }
            st = self.ready.wait(st).unwrap_or_else(|p| p.into_inner());
        }
    }

    fn stop(&self) {
        self.stop.store(true, AtomicOrdering::SeqCst);
        let _st = self.lock();
        self.space.notify_all();
    }
}

/// Decodes the timestamps of chunk `c` into `dec` and returns the range
/// `lo..hi` of its entries in `[start, end)` (empty when `lo >= hi`).
/// Version 2 chunks are read unchecked: their head frame carries its own
/// zstd checksum, so the lines are never read for it; others are
/// CRC-checked first.
fn decode_head_range(
    dec: &mut logchunk::Decoded,
    b: &Block,
    c: &block::ChunkMeta,
    start: i64,
    end: i64,
) -> Result<(usize, usize), StoreError> {
    let raw = b.chunk_unchecked(c)?;
    let tag = raw.first().copied();
    let bytes = if tag == Some(logchunk::V2_TAG) || tag == Some(logchunk::V3_TAG) { raw } else { b.chunk_slice(c)? };
    dec.decode_head(bytes, c.min_ts, c.payload).map_err(|e| b.corrupt(c, format!("chunk: {e}")))?;
    Ok((dec.ts.partition_point(|&t| t < start), dec.ts.partition_point(|&t| t < end)))
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    memchr::memmem::find(hay, needle).is_some()
}

/// Where a scan reads one batch from.
#[derive(Clone, Copy)]
enum Src<'p> {
    Chunk(&'p Block, &'p block::ChunkMeta),
    Mem(&'p [Entry]),
}

struct Source<'p> {
    labels: &'p Labels,
    min_ts: i64,
    max_ts: i64,
    src: Src<'p>,
}

/// Every block chunk and in-memory slice of the matching streams that
/// overlaps `[start, end)`: blocks first, then the head being flushed,
/// then the head.
fn gather_sources<'p>(
    persisted: &'p crate::tiered::Persisted<Head>,
    head: &'p Head,
    tenant: &str,
    matchers: &[Matcher],
    start: i64,
    end: i64,
    out: &mut Vec<Source<'p>>,
) {
    for b in &persisted.blocks {
        if b.min_ts >= end || b.max_ts < start {
            continue;
        }
        for s in b.tenant_streams(tenant) {
            if !matches_all(matchers, &s.labels) {
                continue;
            }
            for c in s.chunks.iter().filter(|c| c.min_ts < end && c.max_ts >= start) {
                out.push(Source { labels: &s.labels, min_ts: c.min_ts, max_ts: c.max_ts, src: Src::Chunk(b, c) });
            }
        }
    }
    let mut mem = |labels: &'p Labels, es: &'p [Entry]| {
        if let (Some(first), Some(last)) = (es.first(), es.last()) {
            out.push(Source { labels, min_ts: first.ts, max_ts: last.ts, src: Src::Mem(es) });
        }
    };
    if let Some(fr) = &persisted.frozen {
        fr.collect(tenant, matchers, start, end, &mut mem);
    }
    head.collect(tenant, matchers, start, end, &mut mem);
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
    /// How far behind its stream's newest entry an entry may be and still be
    /// accepted (and returned in order); older ones are refused as
    /// [`RejectReason::TooFarBehind`] (Loki's "entry too far behind"). Zero:
    /// entries must come in order ([`RejectReason::OutOfOrder`]).
    pub out_of_order_window: Duration,
    /// Bytes of decompressed chunk bodies kept for line-filter queries
    /// ([`ChunkCache`]); 0: none.
    pub chunk_cache_bytes: u64,
}

/// Default of [`LogStoreOptions::chunk_cache_bytes`]: 64 MiB.
pub const DEFAULT_CHUNK_CACHE_BYTES: u64 = 64 << 20;

/// Default of [`LogStoreOptions::out_of_order_window`]: one hour, Loki's
/// (half its default `max_chunk_age`).
pub const DEFAULT_OUT_OF_ORDER_WINDOW: Duration = Duration::from_secs(3600);

impl Default for LogStoreOptions {
    fn default() -> Self {
        LogStoreOptions {
            wal: WalOptions::default(),
            head_max_bytes: 64 << 20,
            flush_interval: Duration::from_secs(600),
            out_of_order_window: DEFAULT_OUT_OF_ORDER_WINDOW,
            chunk_cache_bytes: DEFAULT_CHUNK_CACHE_BYTES,
        }
    }
}

/// The log store.
pub struct LogStore {
    t: Tiered<Head>,
    opts: LogStoreOptions,
    /// Newest timestamp per stream (ns), for the out-of-order window.
    newest: std::sync::Mutex<crate::newest::NewestMap>,
    /// Decode buffers kept between scans.
    pool: DecodePool,
    /// Bodies of chunks line-filter scans decompressed.
    cache: ChunkCache,
}

/// Decode buffers (and zstd contexts) reused from scan to scan. A fresh
/// 1 MiB body buffer is a fresh mapping whose pages fault in as zstd
/// writes them and are unmapped again when it is freed: measured on the
/// PEERS.md rare-token query, that was a third of its CPU time.
#[derive(Default)]
struct DecodePool(Mutex<Vec<logchunk::Decoded>>);

/// Buffers the pool keeps: one per chunk a scan can hold at once.
const POOL_KEEP: usize = SCAN_WORKERS + LOOKAHEAD + 2;

impl DecodePool {
    fn take(&self) -> logchunk::Decoded {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).pop().unwrap_or_default()
    }

    fn try_take(&self) -> Option<logchunk::Decoded> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).pop()
    }

    fn put(&self, d: logchunk::Decoded) {
        let mut v = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if v.len() < POOL_KEEP {
            v.push(d);
        }
    }
}

/// Decompressed chunk bodies that line-filter scans read, least recently
/// used evicted first. A selective query (`|= "rare token"`) spends most
/// of its time decompressing the few chunks whose content filter matched;
/// dashboards and Explore repeat such queries on every refresh. Keyed by
/// (block uid, chunk offset): blocks are immutable and a block opened
/// anew gets a new uid, so an entry is never stale, only unused.
pub struct ChunkCache {
    cap: usize,
    inner: Mutex<CacheInner>,
}

/// A cached body and the tick of its last use.
type CachedBody = (Arc<[u8]>, u64);

#[derive(Default)]
struct CacheInner {
    map: HashMap<(u64, u64), CachedBody>,
    bytes: usize,
    tick: u64,
    hits: u64,
}

impl ChunkCache {
    /// A cache holding up to `cap` bytes of bodies (0: off).
    pub fn new(cap: usize) -> ChunkCache {
        ChunkCache { cap, inner: Mutex::default() }
    }

    fn get(&self, key: (u64, u64)) -> Option<Arc<[u8]>> {
        if self.cap == 0 {
            return None;
        }
        let mut g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        g.tick += 1;
        let tick = g.tick;
        let body = g.map.get_mut(&key).map(|(body, used)| {
            *used = tick;
            body.clone()
        });
        if body.is_some() {
            g.hits += 1;
        }
        body
    }

    /// Keeps a copy of `body` unless it is there already or larger than a
    /// quarter of the cache.
    fn insert(&self, key: (u64, u64), body: &[u8]) {
        if body.len() > self.cap / 4 {
            return;
        }
        let mut g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        if g.map.contains_key(&key) {
            return;
        }
        while g.bytes + body.len() > self.cap {
            let Some((&oldest, _)) = g.map.iter().min_by_key(|(_, (_, used))| *used) else { break };
            if let Some((b, _)) = g.map.remove(&oldest) {
                g.bytes -= b.len();
            }
        }
        g.tick += 1;
        let tick = g.tick;
        g.bytes += body.len();
        g.map.insert(key, (Arc::from(body), tick));
    }

    /// (bodies held, bytes held, hits so far).
    pub fn stats(&self) -> (usize, usize, u64) {
        let g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        (g.map.len(), g.bytes, g.hits)
    }
}

/// The refusal of an entry `ts` behind its stream's newest entry `newest`
/// by more than `window` (all ns), worded as Loki words it.
fn too_far_behind(ts: i64, newest: i64, window: i64, labels: &Labels) -> (crate::RejectReason, String) {
    let when = |ns: i64| cairn_wire::time::format_rfc3339_ns(ns);
    if window == 0 {
        (
            crate::RejectReason::OutOfOrder,
            format!(
                "entry with timestamp {} ignored, reason: 'entry out of order' (newest is {} and \
                 storage.logs.out_of_order_window is 0) for stream: {labels}",
                when(ts),
                when(newest)
            ),
        )
    } else {
        (
            crate::RejectReason::TooFarBehind,
            format!(
                "entry with timestamp {} ignored, reason: 'entry too far behind, oldest acceptable timestamp is: {}' \
                 (storage.logs.out_of_order_window) for stream: {labels}",
                when(ts),
                when(newest.saturating_sub(window))
            ),
        )
    }
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
/// zstd level for chunks written by a flush (see `docs/format/logs.md`,
/// "Choices and measurements": on log lines level 1 is both faster and
/// smaller than level 3). Compaction rewrites them with stronger
/// parameters ([`logchunk::Encoder::for_compaction`]).
pub const ZSTD_LEVEL: i32 = 1;

fn zstd_error(e: std::io::Error) -> StoreError {
    StoreError::Corrupt { path: PathBuf::new(), offset: 0, reason: format!("zstd: {e}") }
}

/// Encodes `entries` (sorted, at least one) as one chunk with its filter.
fn encode_one(
    enc: &mut logchunk::Encoder,
    filter: &mut trigram::Builder,
    bytes: &mut Vec<u8>,
    c: &[Entry],
) -> Result<EncodedChunk, StoreError> {
    let it = c.iter().map(|e| logchunk::EncEntry { ts: e.ts, line: e.line.as_bytes(), metadata: &e.metadata });
    let payload = enc.encode(it, bytes, filter).map_err(zstd_error)?;
    Ok(EncodedChunk {
        // exact-size copy: the buffer is reused
        bytes: bytes.clone(),
        min_ts: c[0].ts,
        max_ts: c[c.len() - 1].ts,
        count: c.len() as u64,
        raw_bytes: c.iter().map(|e| e.line.len() as u64).sum(),
        payload,
        filter: filter.finish(),
    })
}

/// End (exclusive) of the first chunk's worth of `entries`: about
/// [`CHUNK_RAW_BYTES`] of lines, at least one entry.
fn chunk_end(entries: &[Entry]) -> usize {
    let mut raw = 0usize;
    for (i, e) in entries.iter().enumerate() {
        raw += e.line.len();
        if raw >= CHUNK_RAW_BYTES {
            return i + 1;
        }
    }
    entries.len()
}

/// Splits every stream of `head` into chunks of about [`CHUNK_RAW_BYTES`]
/// of lines (`logchunk` version 2), each with its trigram filter.
fn encode_streams(head: &Head) -> Result<Vec<SeriesChunks<'_>>, StoreError> {
    let mut enc = logchunk::Encoder::new(ZSTD_LEVEL).map_err(zstd_error)?;
    let mut filter = trigram::Builder::default();
    let mut bytes = Vec::new();
    let mut out = Vec::new();
    for (tenant, t) in &head.tenants {
        for s in &t.streams {
            let mut chunks = Vec::new();
            let mut rest = &s.entries[..];
            while !rest.is_empty() {
                let n = chunk_end(rest);
                chunks.push(encode_one(&mut enc, &mut filter, &mut bytes, &rest[..n])?);
                rest = &rest[n..];
            }
            out.push((tenant.as_str(), &s.labels, chunks));
        }
    }
    Ok(out)
}

/// Compaction of one stream's chunks from several blocks. Chunks of blocks
/// straight from a flush (level [`ZSTD_LEVEL`], cut by flush boundaries)
/// are decoded, merged in time order with exact duplicates dropped, and
/// re-encoded in full chunks with compaction's stronger parameters
/// ([`logchunk::Encoder::for_compaction`]); chunks of blocks a
/// compaction already wrote are copied byte for byte when full and not
/// overlapping others, so each byte is recompressed at most once. Memory
/// stays at about one chunk beyond what overlaps.
fn merge_log_chunks(sources: &[(&Block, &block::BlockStream)]) -> Result<Vec<EncodedChunk>, StoreError> {
    let mut all: Vec<(&Block, &block::ChunkMeta)> =
        sources.iter().flat_map(|(b, s)| s.chunks.iter().map(move |c| (*b, c))).collect();
    all.sort_by_key(|(_, c)| (c.min_ts, c.max_ts));
    // Framed chunks (`logchunk` version 3): a line filter decompresses
    // only the frames that may hold its needle.
    let mut enc = logchunk::Encoder::for_compaction().map_err(zstd_error)?;
    let mut filter = trigram::Builder::default();
    let mut bytes = Vec::new();
    let mut dec = logchunk::Decoded::default();
    let mut out: Vec<EncodedChunk> = Vec::new();
    let mut pending: Vec<Entry> = Vec::new();
    let mut emit = |pending: &mut Vec<Entry>, upto: Option<i64>, out: &mut Vec<EncodedChunk>| {
        loop {
            if pending.is_empty() {
                return Ok::<(), StoreError>(());
            }
            let n = chunk_end(pending);
            if let Some(u) = upto {
                // a partial chunk waits for more; entries at or after `u`
                // may still get company from the next chunk
                let full = pending[..n].iter().map(|e| e.line.len()).sum::<usize>() >= CHUNK_RAW_BYTES;
                if !full || pending[n - 1].ts >= u {
                    return Ok(());
                }
            }
            out.push(encode_one(&mut enc, &mut filter, &mut bytes, &pending[..n])?);
            pending.drain(..n);
        }
    };
    for (i, &(b, c)) in all.iter().enumerate() {
        let next_min = all.get(i + 1).map(|(_, n)| n.min_ts);
        let clear_before = pending.is_empty() && out.last().is_none_or(|o| o.max_ts < c.min_ts);
        let clear_after = next_min.is_none_or(|m| m > c.max_ts);
        if !b.replaces.is_empty() && clear_before && clear_after && c.raw_bytes as usize >= CHUNK_RAW_BYTES / 2 {
            out.push(EncodedChunk::copy_of(b, c)?);
            continue;
        }
        let corrupt = |e: crate::codec::DecodeError| b.corrupt(c, format!("chunk: {e}"));
        let bytes = b.chunk_bytes(c)?; // pread: not resident after the merge
        dec.decode_head(&bytes, c.min_ts, c.payload).map_err(corrupt)?;
        dec.decode_body(&bytes, c.payload).map_err(corrupt)?;
        let mut got = Vec::with_capacity(dec.ts.len());
        for i in 0..dec.ts.len() {
            let line = std::str::from_utf8(dec.line(i)).map_err(|_| b.corrupt(c, format!("line {i} is not UTF-8")))?;
            let metadata = dec
                .meta(i)
                .map_or(Vec::new(), |m| logchunk::meta_pairs(m).map(|(k, v)| (k.into(), v.into())).collect());
            got.push(Entry { ts: dec.ts[i], line: line.to_string(), metadata });
        }
        if pending.last().is_some_and(|l| l.ts > c.min_ts) {
            // overlap: merge (stable, earlier sources first), drop exact repeats
            pending.extend(got);
            pending.sort_by_key(|e| e.ts);
            let mut kept: Vec<Entry> = Vec::with_capacity(pending.len());
            for e in pending.drain(..) {
                let dup = kept
                    .iter()
                    .rev()
                    .take_while(|k| k.ts == e.ts)
                    .any(|k| k.line == e.line && k.metadata == e.metadata);
                if !dup {
                    kept.push(e);
                }
            }
            pending = kept;
        } else {
            for e in got {
                let dup = pending
                    .iter()
                    .rev()
                    .take_while(|k| k.ts == e.ts)
                    .any(|k| k.line == e.line && k.metadata == e.metadata);
                if !dup {
                    pending.push(e);
                }
            }
        }
        emit(&mut pending, next_min, &mut out)?;
    }
    emit(&mut pending, None, &mut out)?;
    Ok(out)
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
        st.entries.reserve(s.entries.len());
        for e in s.entries {
            // In order (the usual case): no search for a duplicate or a place.
            let newer = st.entries.last().is_none_or(|last| last.ts < e.ts);
            if !newer && is_duplicate(&st.entries, &e) {
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

    fn merge_chunks(sources: &[(&Block, &block::BlockStream)]) -> Result<Vec<EncodedChunk>, StoreError> {
        merge_log_chunks(sources)
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
        let t: Tiered<Head> = Tiered::open(dir, BlockKind::Logs, RECORD_ENTRIES, opts.wal.clone())?;
        let mut newest;
        {
            let (persisted, head) = t.read();
            newest = crate::newest::from_blocks(&persisted.blocks);
            for (tenant, tl) in &head.tenants {
                for s in &tl.streams {
                    if let Some(e) = s.entries.last() {
                        crate::newest::note(&mut newest, tenant, &s.labels, e.ts);
                    }
                }
            }
        }
        let cache = ChunkCache::new(opts.chunk_cache_bytes as usize);
        Ok(LogStore { t, opts, newest: std::sync::Mutex::new(newest), pool: DecodePool::default(), cache })
    }

    /// Opens the store in `dir` read-only: for `cairn grep --data-dir`
    /// next to a running server or after a crash. Nothing in `dir` is
    /// created, changed or deleted and no lock is taken; the WAL is replayed
    /// into memory, a torn tail is ignored rather than truncated. Writes,
    /// flushes, retention and compaction fail with
    /// [`StoreError::ReadOnly`]. See "Read-only open" in `docs/format/wal.md`.
    pub fn open_read_only(dir: &Path) -> Result<Self, StoreError> {
        let t = Tiered::open_read_only(dir, BlockKind::Logs, RECORD_ENTRIES)?;
        let opts = LogStoreOptions::default();
        let cache = ChunkCache::new(opts.chunk_cache_bytes as usize);
        Ok(LogStore { t, opts, newest: Default::default(), pool: DecodePool::default(), cache })
    }

    /// What the WAL replay at open found.
    pub fn replay_stats(&self) -> &ReplayStats {
        &self.t.replay
    }

    /// Block files found corrupt at open and set aside (`*.blk.corrupt`).
    pub fn corrupt_blocks(&self) -> &[std::path::PathBuf] {
        &self.t.corrupt_blocks
    }

    /// Writes a batch; returns once it is in the WAL. Validation of lines and
    /// labels against limits happens before this call, in the aggregator.
    pub fn push(&self, tenant: &str, batch: Vec<StreamEntries>) -> Result<WriteOutcome, StoreError> {
        let mut outcome = WriteOutcome::default();
        let mut batch: Vec<StreamEntries> = batch.into_iter().filter(|s| !s.entries.is_empty()).collect();
        if batch.is_empty() {
            return Ok(outcome);
        }
        // Backpressure: a full head waits for the running flush, so at
        // most two heads (one being flushed) are in memory. Measured with
        // the ingest benchmark: waiting only at 2× let the frozen head
        // itself reach 2× and peak RSS 580 MB on the PEERS workload.
        let limit = self.opts.head_max_bytes;
        self.t.wait_for_flush_while(|| self.head_bytes() >= limit, BACKPRESSURE_MAX_WAIT);
        let _w = self.t.write_lock.lock().unwrap_or_else(|p| p.into_inner());
        let mut newest = self.newest.lock().unwrap_or_else(|p| p.into_inner());
        let window = i64::try_from(self.opts.out_of_order_window.as_nanos()).unwrap_or(i64::MAX);
        for s in &mut batch {
            let mut last = newest.get(tenant).and_then(|m| m.get(&s.labels)).copied();
            let labels = &s.labels;
            s.entries.retain(|e| {
                if let Some(l) = last
                    && e.ts < l.saturating_sub(window)
                {
                    outcome.rejected.push(too_far_behind(e.ts, l, window, labels));
                    return false;
                }
                last = Some(last.map_or(e.ts, |l| l.max(e.ts)));
                true
            });
        }
        batch.retain(|s| !s.entries.is_empty());
        outcome.accepted = batch.iter().map(|s| s.entries.len()).sum();
        if batch.is_empty() {
            return Ok(outcome);
        }
        self.t.wal.append_with(RECORD_ENTRIES, |buf| encode_batch(buf, tenant, &batch))?;
        for s in &batch {
            if let Some(max) = s.entries.iter().map(|e| e.ts).max() {
                crate::newest::note(&mut newest, tenant, &s.labels, max);
            }
        }
        drop(newest);
        let mut head = self.t.head.write().unwrap_or_else(|p| p.into_inner());
        apply(&mut head, tenant, batch);
        Ok(outcome)
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
    ///
    /// This gathers every entry in memory first; queries use
    /// [`LogStore::scan_entries`], which streams and stops early.
    pub fn scan(&self, tenant: &str, matchers: &[Matcher], start: i64, end: i64, f: &mut dyn FnMut(&Labels, &[Entry])) {
        if let Err(e) = self.try_scan(tenant, matchers, start, end, f) {
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

    /// Like [`LogStore::try_scan`], keeping only lines that contain every
    /// one of `needles` (see [`ScanRequest::needles`]).
    pub fn scan_filtered(
        &self,
        tenant: &str,
        matchers: &[Matcher],
        start: i64,
        end: i64,
        needles: &[&[u8]],
        f: &mut dyn FnMut(&Labels, &[Entry]),
    ) -> Result<ScanStats, StoreError> {
        let mut by: std::collections::BTreeMap<Labels, Vec<Entry>> = Default::default();
        let req = ScanRequest { tenant, matchers, start, end, needles, order: Order::Forward };
        let stats = self.scan_entries(&req, &mut |labels, batch| {
            let v = match by.get_mut(labels) {
                Some(v) => v,
                None => by.entry(labels.clone()).or_default(),
            };
            v.extend(batch.iter().map(EntryRef::to_owned));
            None
        })?;
        for (labels, mut entries) in by {
            // Stable: equal timestamps keep block, then frozen, then head order.
            entries.sort_by_key(|e| e.ts);
            f(&labels, &entries);
        }
        Ok(stats)
    }

    /// The scan every query uses: calls `f(labels, batch)` with batches of
    /// entries in `[start, end)` of the streams of `tenant` matching all
    /// `matchers`, reading as little as it can.
    ///
    /// A batch holds entries of one stream (one block chunk, or the entries
    /// still in memory), sorted by timestamp. Batches come roughly in the
    /// request's order (by chunk start for [`Order::Forward`], by chunk end
    /// for [`Order::Backward`]), not globally sorted: chunks may overlap. `f`
    /// returns a cutoff once it needs no more entries beyond it — for
    /// `Forward`, none later than the cutoff; for `Backward`, none earlier —
    /// and the scan then skips every chunk lying wholly beyond it without
    /// reading it (entries beyond it may still arrive in a batch).
    pub fn scan_entries(
        &self,
        req: &ScanRequest<'_>,
        f: &mut dyn FnMut(&Labels, &[EntryRef<'_>]) -> Option<i64>,
    ) -> Result<ScanStats, StoreError> {
        let hidden_before = self.t.visible_from(req.tenant);
        let clamped = ScanRequest { start: req.start.max(hidden_before), ..*req };
        let req = &clamped;
        let mut stats = ScanStats::default();
        let (persisted, head) = self.t.read();
        let mut sources = Vec::new();
        gather_sources(&persisted, &head, req.tenant, req.matchers, req.start, req.end, &mut sources);
        match req.order {
            Order::Forward => sources.sort_by_key(|s| s.min_ts),
            Order::Backward => sources.sort_by_key(|s| std::cmp::Reverse(s.max_ts)),
        }
        // Longest needle first: it is the rarest, so the search for it prunes most.
        let mut needles: Vec<&[u8]> = req.needles.to_vec();
        needles.sort_by_key(|n| std::cmp::Reverse(n.len()));
        let finder = needles.first().filter(|n| !n.is_empty()).map(memchr::memmem::Finder::new);
        // The content filters first (cheap, no decompression): only chunks
        // that may hold every needle are handed to the workers. Many
        // chunks are checked on two threads: after a restart each filter
        // is a page fault of its own (they sit after their chunks).
        if !needles.is_empty() {
            let check = |src: &Source<'_>| -> Result<bool, StoreError> {
                match src.src {
                    Src::Chunk(b, c) if c.filter_len > 0 => {
                        let filter = b.chunk_filter(c)?;
                        Ok(needles.iter().all(|n| trigram::may_contain(filter, n)))
                    }
                    _ => Ok(true),
                }
            };
            let check_all = |part: &[Source<'_>]| part.iter().map(check).collect::<Result<Vec<bool>, StoreError>>();
            let keep = if sources.len() >= PARALLEL_FILTER_CHECK {
                let (a, b) = sources.split_at(sources.len() / 2);
                std::thread::scope(|scope| {
                    let other = scope.spawn(|| check_all(b));
                    let mut keep = check_all(a)?;
                    keep.extend(other.join().unwrap_or_else(|p| std::panic::resume_unwind(p))?);
                    Ok::<_, StoreError>(keep)
                })?
            } else {
                check_all(&sources)?
            };
            let mut it = keep.iter();
            sources.retain(|_| it.next().copied().unwrap_or(true));
            let skipped = keep.iter().filter(|k| !**k).count() as u64;
            stats.chunks += skipped;
            stats.chunks_skipped += skipped;
        }
        // Chunks are decompressed ahead by worker threads while this one
        // runs `f` (the query's pipeline), unless there are only a few.
        let chunks = sources.iter().filter(|s| matches!(s.src, Src::Chunk(..))).count();
        let workers = if chunks >= 3 { SCAN_WORKERS } else { 0 };
        let ahead = Ahead::new(sources.len());
        // Only chunks a line filter picked are cached: a scan of everything
        // would churn the cache for chunks nobody asks for twice.
        let cache = (!needles.is_empty()).then_some(&self.cache);
        let prep = |i: usize, scratch: &mut logchunk::Decoded| -> Result<Prepared, StoreError> {
            match sources[i].src {
                Src::Mem(_) => Ok(Prepared::Mem),
                Src::Chunk(_, _) if ahead.beyond(req.order, &sources[i]) => Ok(Prepared::Beyond),
                Src::Chunk(b, c) => prepare(b, c, req, scratch, cache),
            }
        };
        std::thread::scope(|scope| {
            for _ in 0..workers {
                scope.spawn(|| ahead.work(&self.pool, &prep));
            }
            let mut scratch = self.pool.take();
            let res = (|| {
                for (i, src) in sources.iter().enumerate() {
                    if ahead.beyond(req.order, src) {
                        break;
                    }
                    let prepared = if workers > 0 { ahead.take(i) } else { prep(i, &mut scratch) }?;
                    let mut batch: Vec<EntryRef<'_>> = Vec::new();
                    let ready = match prepared {
                        Prepared::Beyond => break,
                        Prepared::Empty | Prepared::Whole => {
                            stats.chunks += 1;
                            continue;
                        }
                        Prepared::Mem => {
                            if let Src::Mem(entries) = src.src {
                                for e in entries {
                                    if needles.iter().all(|n| contains(e.line.as_bytes(), n)) {
                                        batch.push(EntryRef {
                                            ts: e.ts,
                                            line: &e.line,
                                            metadata: MetaRef::Owned(&e.metadata),
                                        });
                                    }
                                }
                                stats.head_lines += batch.len() as u64;
                                stats.head_bytes += batch.iter().map(|e| e.line.len() as u64).sum::<u64>();
                            }
                            None
                        }
                        Prepared::Ready(r) => {
                            stats.chunks += 1;
                            stats.bytes_read += r.chunk_len;
                            stats.bytes_decompressed += r.dec.decompressed as u64;
                            Some(r)
                        }
                    };
                    if let (Some(r), Src::Chunk(b, c)) = (&ready, src.src) {
                        select(b, c, r, &needles, finder.as_ref(), &mut batch)?;
                    }
                    if !batch.is_empty()
                        && let Some(c) = f(src.labels, &batch)
                    {
                        ahead.set_cut(req.order, c);
                    }
                    drop(batch);
                    if let Some(r) = ready {
                        if workers > 0 {
                            self.pool.put(r.dec);
                        } else {
                            scratch.recycle(r.dec);
                        }
                    }
                }
                Ok::<(), StoreError>(())
            })();
            self.pool.put(scratch);
            ahead.stop();
            res
        })?;
        Ok(stats)
    }

    /// Calls `f(labels, timestamps, line_lengths, entries)` (line lengths
    /// only when `want_lens`; otherwise an empty slice) for the entries
    /// in `[start, end)` of every stream of `tenant` matching `matchers`,
    /// in batches (one per chunk or in-memory stream), each sorted, in no
    /// particular order. Reads only the small timestamp frame of each
    /// chunk — for counting and volume queries without line filters —
    /// except where entries carry structured metadata: then the batch's
    /// whole `entries` come too (`Some`).
    pub fn scan_timestamps(
        &self,
        tenant: &str,
        matchers: &[Matcher],
        start: i64,
        end: i64,
        want_lens: bool,
        f: &mut TimestampSink<'_>,
    ) -> Result<ScanStats, StoreError> {
        self.scan_counts(tenant, matchers, start, end, want_lens, None, &mut |labels, batch| {
            if let TsBatch::Entries { ts, lens, entries } = batch {
                f(labels, ts, lens, entries);
            }
        })
    }

    /// [`LogStore::scan_timestamps`], and with `whole`: a block chunk
    /// wholly inside `[start, end)` whose entries carry no structured
    /// metadata and for which `whole(min_ts, max_ts)` is true is handed to
    /// `f` as [`TsBatch::Whole`] from the block index, unread — for a
    /// caller that only needs the number and size of entries, and whose
    /// answer is the same for every timestamp in that span (a range query
    /// whose step windows do not cut the chunk). Heads are decoded ahead
    /// by worker threads.
    ///
    /// A version 2 chunk carries no metadata exactly when its body is no
    /// longer than its lines (`payload == raw_bytes` in the index: with
    /// metadata the body holds at least one count byte per entry after
    /// the lines; a version 1 chunk's payload always holds more than its
    /// lines).
    #[allow(clippy::too_many_arguments)]
    pub fn scan_counts(
        &self,
        tenant: &str,
        matchers: &[Matcher],
        start: i64,
        end: i64,
        want_lens: bool,
        whole: Option<&(dyn Fn(i64, i64) -> bool + Sync)>,
        f: &mut dyn FnMut(&Labels, TsBatch<'_>),
    ) -> Result<ScanStats, StoreError> {
        let start = start.max(self.t.visible_from(tenant));
        let mut stats = ScanStats::default();
        let (persisted, head) = self.t.read();
        let mut sources = Vec::new();
        gather_sources(&persisted, &head, tenant, matchers, start, end, &mut sources);
        let chunks = sources.iter().filter(|s| matches!(s.src, Src::Chunk(..))).count();
        let workers = if chunks >= 3 { SCAN_WORKERS } else { 0 };
        let ahead = Ahead::new(sources.len());
        let prep = |i: usize, scratch: &mut logchunk::Decoded| -> Result<Prepared, StoreError> {
            let Src::Chunk(b, c) = sources[i].src else { return Ok(Prepared::Mem) };
            if let Some(w) = whole
                && c.min_ts >= start
                && c.max_ts < end
                && c.payload == c.raw_bytes
                && w(c.min_ts, c.max_ts)
            {
                return Ok(Prepared::Whole);
            }
            let corrupt = |e: crate::codec::DecodeError| b.corrupt(c, format!("chunk: {e}"));
            let (lo, hi) = decode_head_range(scratch, b, c, start, end)?;
            if lo >= hi {
                return Ok(Prepared::Empty);
            }
            let mut chunk_len = 0;
            if scratch.may_have_metadata() {
                let bytes = b.chunk_slice(c)?;
                scratch.decode_body(bytes, c.payload).map_err(corrupt)?;
                chunk_len = bytes.len() as u64;
            } else if want_lens {
                scratch.decode_lens().map_err(corrupt)?;
            }
            Ok(Prepared::Ready(Box::new(ReadyChunk { dec: scratch.split_off(), lo, hi, chunk_len })))
        };
        let (mut ts, mut lens) = (Vec::new(), Vec::new());
        std::thread::scope(|scope| {
            for _ in 0..workers {
                scope.spawn(|| ahead.work(&self.pool, &prep));
            }
            let mut scratch = self.pool.take();
            let res = (|| {
                for (i, src) in sources.iter().enumerate() {
                    let prepared = if workers > 0 { ahead.take(i) } else { prep(i, &mut scratch) }?;
                    match (prepared, src.src) {
                        (Prepared::Mem, Src::Mem(entries)) => {
                            stats.head_lines += entries.len() as u64;
                            stats.head_bytes += entries.iter().map(|e| e.line.len() as u64).sum::<u64>();
                            ts.clear();
                            lens.clear();
                            ts.extend(entries.iter().map(|e| e.ts));
                            lens.extend(entries.iter().map(|e| e.line.len() as u32));
                            let refs: Option<Vec<EntryRef<'_>>> =
                                entries.iter().any(|e| !e.metadata.is_empty()).then(|| {
                                    entries
                                        .iter()
                                        .map(|e| EntryRef {
                                            ts: e.ts,
                                            line: &e.line,
                                            metadata: MetaRef::Owned(&e.metadata),
                                        })
                                        .collect()
                                });
                            f(src.labels, TsBatch::Entries { ts: &ts, lens: &lens, entries: refs.as_deref() });
                        }
                        (Prepared::Whole, Src::Chunk(_, c)) => {
                            stats.chunks += 1;
                            let (min_ts, max_ts, count, bytes) = (c.min_ts, c.max_ts, c.entries, c.raw_bytes);
                            f(src.labels, TsBatch::Whole { min_ts, max_ts, count, bytes });
                        }
                        (Prepared::Ready(r), Src::Chunk(b, c)) => {
                            stats.chunks += 1;
                            let (dec, lo, hi) = (&r.dec, r.lo, r.hi);
                            let lens = if want_lens || r.chunk_len > 0 { &dec.lens[lo..hi] } else { &[][..] };
                            if r.chunk_len > 0 {
                                stats.bytes_read += r.chunk_len;
                                stats.bytes_decompressed += dec.decompressed as u64;
                                let mut refs = Vec::with_capacity(hi - lo);
                                for i in lo..hi {
                                    let line = std::str::from_utf8(dec.line(i))
                                        .map_err(|_| b.corrupt(c, format!("line {i} is not UTF-8")))?;
                                    let metadata = dec.meta(i).map_or(MetaRef::None, MetaRef::Encoded);
                                    refs.push(EntryRef { ts: dec.ts[i], line, metadata });
                                }
                                f(src.labels, TsBatch::Entries { ts: &dec.ts[lo..hi], lens, entries: Some(&refs) });
                            } else {
                                f(src.labels, TsBatch::Entries { ts: &dec.ts[lo..hi], lens, entries: None });
                            }
                            if workers > 0 {
                                self.pool.put(r.dec);
                            } else {
                                scratch.recycle(r.dec);
                            }
                        }
                        _ => stats.chunks += 1, // Empty
                    }
                }
                Ok::<(), StoreError>(())
            })();
            self.pool.put(scratch);
            ahead.stop();
            res
        })?;
        Ok(stats)
    }

    /// Streams of `tenant` matching all `matchers` (empty: every stream) with
    /// at least one entry in `[start, end)`, sorted by labels, with the size
    /// of their data in that range. Backs `/loki/api/v1/series`, `/labels`,
    /// `/label/…/values`, `/index/stats` and `/index/volume`.
    ///
    /// Block chunks that lie wholly inside the range are counted from their
    /// index entry (entries, line bytes) without being read; only the
    /// timestamp frames of chunks that straddle a range edge are decoded.
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
        let start = start.max(self.t.visible_from(tenant));
        let (persisted, head) = self.t.read();
        let mut by: std::collections::BTreeMap<Labels, StreamStats> = Default::default();
        let mut add = |labels: &Labels, entries: u64, bytes: u64, chunks: u64| {
            if entries > 0 {
                let st = match by.get_mut(labels) {
                    Some(st) => st,
                    None => by.entry(labels.clone()).or_default(),
                };
                st.entries += entries;
                st.bytes += bytes;
                st.chunks += chunks;
            }
        };
        let mut sources = Vec::new();
        gather_sources(&persisted, &head, tenant, matchers, start, end, &mut sources);
        let mut dec = logchunk::Decoded::default();
        for src in &sources {
            match src.src {
                Src::Mem(es) => add(src.labels, es.len() as u64, es.iter().map(|e| e.line.len() as u64).sum(), 1),
                Src::Chunk(_, c) if c.min_ts >= start && c.max_ts < end => add(src.labels, c.entries, c.raw_bytes, 1),
                Src::Chunk(b, c) => {
                    let (lo, hi) = decode_head_range(&mut dec, b, c, start, end)?;
                    let hi = hi.max(lo);
                    dec.decode_lens().map_err(|e| b.corrupt(c, format!("chunk: {e}")))?;
                    add(src.labels, (hi - lo) as u64, dec.lens[lo..hi].iter().map(|&l| u64::from(l)).sum(), 1);
                }
            }
        }
        Ok(by.into_iter().collect())
    }

    /// Number of streams and entries in the head, over all tenants.
    pub fn counts(&self) -> (usize, usize) {
        let head = self.t.head.read().unwrap_or_else(|p| p.into_inner());
        head.tenants.values().fold((0, 0), |(s, n), t| {
            (s + t.streams.len(), n + t.streams.iter().map(|x| x.entries.len()).sum::<usize>())
        })
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
        }
        self.t.apply_retention_policy()
    }

    /// Deletes blocks whose data is all older than `min_ts` (ns; `None`:
    /// no age limit), then the oldest blocks while blocks take more than
    /// `max_bytes` (0: no limit). Returns (blocks, bytes) deleted. Data still
    /// in the head is not affected.
    pub fn apply_retention(&self, min_ts: Option<i64>, max_bytes: u64) -> Result<(usize, u64), StoreError> {
        if let Some(min_ts) = min_ts {
            // streams gone quiet before the retention limit: forget them
            let _w = self.t.write_lock.lock().unwrap_or_else(|p| p.into_inner());
            let mut newest = self.newest.lock().unwrap_or_else(|p| p.into_inner());
            crate::newest::forget_before(&mut newest, |_| Some(min_ts));
        }
        self.t.apply_retention(min_ts, max_bytes)
    }

    /// Merges adjacent small blocks per `policy` (at most `max_runs`
    /// merges), copying chunks and filters byte for byte.
    pub fn compact(
        &self,
        policy: &crate::CompactionPolicy,
        max_runs: usize,
    ) -> Result<crate::CompactionStats, StoreError> {
        self.t.compact(policy, max_runs)
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
        assert_eq!((st.chunks, st.chunks_skipped), (4, 3));
        let (got, st) = run(&[b"/items/1"], "/items/1");
        assert_eq!(got.len(), 4 * 111, "every block has /items/1, /items/10..19, /items/100..199");
        assert_eq!(st.chunks_skipped, 0);
        let (got, st) = run(&[], "ok");
        assert_eq!(got.len(), 800);
        assert_eq!(st.chunks_skipped, 0);
        // Line-filter scans filled the chunk cache (scans without a needle
        // do not); the same answers come from it the next time.
        let (held, _, hits) = s.cache.stats();
        // 4 chunks: the /items/1 scan read block 2's from the cache already
        assert_eq!((held, hits), (4, 1));
        let (got, _) = run(&[b"ZQX9rareTOKEN"], "ZQX9rareTOKEN");
        assert_eq!(got, vec![2500]);
        let (got, _) = run(&[b"/items/1"], "/items/1");
        assert_eq!(got.len(), 4 * 111);
        assert_eq!(s.cache.stats().2, 6);
    }

    /// The chunk cache stays within its size, drops the least recently
    /// used body first, and keeps no body over a quarter of its size.
    #[test]
    fn chunk_cache_evicts_least_recently_used() {
        let c = ChunkCache::new(100);
        let body = |n: u8| vec![n; 20];
        for k in 0..5u64 {
            c.insert((1, k), &body(k as u8));
        }
        assert_eq!(c.stats().0, 5);
        assert_eq!(c.get((1, 0)).as_deref(), Some(&body(0)[..]));
        c.insert((1, 5), &body(5));
        assert_eq!(c.stats().1, 100);
        assert!(c.get((1, 1)).is_none(), "least recently used went first");
        assert!(c.get((1, 0)).is_some(), "recently read stays");
        c.insert((2, 0), &[0u8; 26]);
        assert!(c.get((2, 0)).is_none(), "over a quarter: not kept");
        assert!(ChunkCache::new(0).get((1, 0)).is_none());
    }

    /// The needle search over a chunk's concatenated lines finds exactly
    /// the lines holding every needle: not a hit spanning two lines, and
    /// the same answer as checking each line, for blocks and memory alike.
    #[test]
    fn needle_search_is_exact_per_line() {
        let d = tempfile::tempdir().unwrap();
        let s = LogStore::open(d.path(), WalOptions::default()).unwrap();
        let lines = ["abcfoo", "barxyz", "foobar", "xfoobarx baz", "foo", "bar", "foobarbaz", "", "oobar"];
        let es: Vec<Entry> = lines.iter().enumerate().map(|(i, l)| e(i as i64, l)).collect();
        push(&s, es.clone());
        s.flush().unwrap();
        push(&s, es.iter().map(|x| e(x.ts + 100, &x.line)).collect());
        for needles in [&[&b"foobar"[..]][..], &[b"foo", b"baz"], &[b"bar"], &[b"oob", b"x"], &[b"zzz"]] {
            let want: Vec<i64> = es
                .iter()
                .filter(|x| needles.iter().all(|n| contains(x.line.as_bytes(), n)))
                .flat_map(|x| [x.ts, x.ts + 100])
                .collect();
            let mut got = Vec::new();
            let req = ScanRequest { tenant: "t", matchers: &[], start: 0, end: 1000, needles, order: Order::Forward };
            s.scan_entries(&req, &mut |_, b| {
                got.extend(b.iter().map(|e| e.ts));
                None
            })
            .unwrap();
            got.sort();
            let mut want = want;
            want.sort();
            assert_eq!(got, want, "{needles:?}");
        }
    }

    /// A backward scan with a cutoff stops reading older chunks; a forward
    /// one newer chunks.
    #[test]
    fn cutoff_stops_the_scan() {
        let d = tempfile::tempdir().unwrap();
        let s = LogStore::open(d.path(), WalOptions::default()).unwrap();
        for b in 0..5i64 {
            push(&s, (0..10).map(|i| e(b * 100 + i, "line")).collect());
            s.flush().unwrap();
        }
        push(&s, vec![e(1000, "in memory")]);
        let run = |order: Order, need: usize| {
            let mut got: Vec<i64> = Vec::new();
            let req = ScanRequest { tenant: "t", matchers: &[], start: 0, end: 2000, needles: &[], order };
            let st = s
                .scan_entries(&req, &mut |_, b| {
                    got.extend(b.iter().map(|e| e.ts));
                    if got.len() >= need {
                        let mut v = got.clone();
                        v.sort();
                        Some(if order == Order::Backward { v[v.len() - need] } else { v[need - 1] })
                    } else {
                        None
                    }
                })
                .unwrap();
            (got, st.chunks)
        };
        let (got, chunks) = run(Order::Backward, 5);
        assert_eq!(got[0], 1000, "memory is newest");
        assert_eq!(chunks, 1, "one block chunk was enough");
        let (got, chunks) = run(Order::Forward, 15);
        assert_eq!(got.len(), 20);
        assert_eq!(chunks, 2);
        let (got, chunks) = run(Order::Forward, 1000);
        assert_eq!((got.len(), chunks), (51, 5));
    }

    /// Changes the file bytes of the first chunk of block `n` (in load
    /// order) of the store in `dir` with `f`; the store must be closed.
    fn damage_first_chunk(dir: &Path, n: usize, f: impl FnOnce(&mut Vec<u8>, &block::ChunkMeta)) {
        let (path, c) = {
            let s = LogStore::open(dir, WalOptions::default()).unwrap();
            let (p, _h) = s.t.read();
            let b = &p.blocks[n];
            (b.path().to_path_buf(), b.streams[0].chunks[0])
        };
        let mut bytes = fs::read(&path).unwrap();
        f(&mut bytes, &c);
        fs::write(&path, &bytes).unwrap();
    }

    /// A flipped bit in a chunk's head frame is caught by the frame's own
    /// checksum on head-only reads, and by the chunk CRC on full reads.
    #[test]
    fn damaged_head_frame_is_reported() {
        let d = tempfile::tempdir().unwrap();
        let s = LogStore::open(d.path(), WalOptions::default()).unwrap();
        push(&s, (0..100).map(|i| e(i * 1_000_003 + (i % 7), &format!("line {i}"))).collect());
        s.flush().unwrap();
        drop(s);
        // tag, two one-byte varints, then the head frame: hit its middle
        damage_first_chunk(d.path(), 0, |bytes, c| {
            let head_zlen = bytes[c.offset as usize + 2] as usize;
            bytes[c.offset as usize + 3 + head_zlen / 2] ^= 0x10;
        });
        let s = LogStore::open(d.path(), WalOptions::default()).unwrap();
        let r = s.scan_timestamps("t", &[], 0, i64::MAX, false, &mut |_, _, _, _| {});
        assert!(matches!(r, Err(StoreError::Corrupt { .. })), "{r:?}");
        assert!(s.try_scan("t", &[], 0, i64::MAX, &mut |_, _| {}).is_err());
    }

    /// A damaged chunk in the middle of a scan decoded ahead by workers
    /// ends the scan with the error (no hang, no partial silence), in both
    /// directions, with and without a cutoff.
    #[test]
    fn damaged_chunk_ends_a_parallel_scan() {
        let d = tempfile::tempdir().unwrap();
        let s = LogStore::open(d.path(), WalOptions::default()).unwrap();
        for b in 0..8i64 {
            push(&s, (0..50).map(|i| e(b * 100 + i, &format!("block {b} line {i}"))).collect());
            s.flush().unwrap();
        }
        drop(s);
        damage_first_chunk(d.path(), 3, |bytes, c| bytes[(c.offset + c.len - 3) as usize] ^= 0x55);
        let s = LogStore::open(d.path(), WalOptions::default()).unwrap();
        for order in [Order::Forward, Order::Backward] {
            for need in [usize::MAX, 120] {
                let req = ScanRequest { tenant: "t", matchers: &[], start: 0, end: 10_000, needles: &[], order };
                let mut n = 0usize;
                let r = s.scan_entries(&req, &mut |_, b| {
                    n += b.len();
                    (n >= need).then_some(if order == Order::Forward { 450 } else { 350 })
                });
                if need == usize::MAX {
                    assert!(matches!(r, Err(StoreError::Corrupt { .. })), "{order:?}: {r:?}");
                } else {
                    // the cutoff is reached before the damaged block
                    assert!(r.is_ok() || matches!(r, Err(StoreError::Corrupt { .. })), "{order:?}: {r:?}");
                }
            }
        }
    }

    fn chunks_of(s: &LogStore) -> Vec<Vec<u8>> {
        let (p, _h) = s.t.read();
        p.blocks
            .iter()
            .flat_map(|b| b.streams.iter().flat_map(move |st| st.chunks.iter().map(move |c| (b.clone(), *c))))
            .map(|(b, c)| b.chunk_slice(&c).unwrap().to_vec())
            .collect()
    }

    /// Compaction rewrites flushed chunks: overlapping blocks merge in
    /// time order, exact repeats across blocks go, small chunks become one;
    /// a chunk a compaction already wrote is later copied byte for byte.
    #[test]
    fn compaction_recompresses_once() {
        let d = tempfile::tempdir().unwrap();
        let s = LogStore::open(d.path(), WalOptions::default()).unwrap();
        let policy = crate::CompactionPolicy { ranges: vec![1 << 60], max_block_bytes: 0 };
        push(&s, (0..100).map(|i| e(i * 10, &format!("a{i}"))).collect());
        s.flush().unwrap();
        // overlaps the first block; ts 500..590 repeat lines exactly
        push(&s, (50..150).map(|i| e(i * 10, &format!("{}{i}", if i < 60 { "a" } else { "b" }))).collect());
        s.flush().unwrap();
        let mut want: Vec<(i64, String)> = (0..100).map(|i| (i * 10, format!("a{i}"))).collect();
        want.extend((60..150).map(|i| (i * 10, format!("b{i}"))));
        want.sort();
        let st = s.compact(&policy, 10).unwrap();
        assert_eq!(st.blocks_merged, 2);
        let mut got = lines(&s, 0, 10_000);
        got.sort();
        assert_eq!(got, want, "merged, exact repeats dropped");
        assert_eq!(chunks_of(&s).len(), 1, "two small chunks became one");

        // a full chunk from the compacted block is copied, not recompressed
        let big = "x".repeat(1000);
        push(&s, (0..1200).map(|i| e(100_000 + i, &format!("{big}{i}"))).collect());
        s.flush().unwrap();
        s.compact(&policy, 10).unwrap();
        let compacted = chunks_of(&s);
        assert_eq!(compacted.len(), 2, "1.2 MB of lines: a full chunk and the rest");
        push(&s, vec![e(900_000, "later")]);
        s.flush().unwrap();
        s.compact(&policy, 10).unwrap();
        let again = chunks_of(&s);
        assert!(compacted.iter().any(|c| again.contains(c)), "a full compacted chunk was copied as is");
        let n = lines(&s, 0, i64::MAX).len();
        assert_eq!(n, want.len() + 1200 + 1);
        drop(s);
        let s = LogStore::open(d.path(), WalOptions::default()).unwrap();
        assert_eq!(lines(&s, 0, i64::MAX).len(), n);
    }

    #[test]
    fn timestamps_only() {
        let d = tempfile::tempdir().unwrap();
        let s = LogStore::open(d.path(), WalOptions::default()).unwrap();
        push(&s, (0..10).map(|i| e(i * 10, &"x".repeat(i as usize))).collect());
        s.flush().unwrap();
        push(&s, vec![e(500, "tail")]);
        let mut got = Vec::new();
        s.scan_timestamps("t", &[], 15, 501, true, &mut |_, ts, lens, es| {
            assert!(es.is_none(), "no metadata: no entries");
            got.extend(ts.iter().copied().zip(lens.iter().copied()))
        })
        .unwrap();
        got.sort();
        let want: Vec<(i64, u32)> = (2..10).map(|i| (i * 10, i as u32)).chain([(500, 4)]).collect();
        assert_eq!(got, want);
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
                assert_eq!((got[0].1.entries, got[0].1.bytes), (n, bytes), "[{start}, {end})");
                if (start, end) == (0, 1000) {
                    assert_eq!(got[0].1.chunks, 4, "three block chunks and the head");
                }
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
