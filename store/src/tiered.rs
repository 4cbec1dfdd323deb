//! The storage protocol both engines share: a WAL, an in-memory head, a head
//! being flushed ("frozen"), and immutable blocks — and the flush that turns
//! the head into a block and deletes the WAL behind it. The engines supply
//! the head type ([`HeadData`]) and what a chunk means; this module owns the
//! ordering that makes crashes and concurrent queries safe:
//!
//! 1. Under the write lock: rotate the WAL (sealed segment `N`), move the
//!    head to `frozen`, start an empty head. Queries see the frozen head.
//! 2. Without blocking writers: encode the frozen head and write block
//!    `<N>.blk` atomically (`block::write_block`).
//! 3. Swap the block in for the frozen head in one step, then delete WAL
//!    segments `≤ N`.
//!
//! At open, blocks are loaded, `*.tmp` leftovers removed, and WAL segments
//! `≤` the largest `wal_through` of any block are skipped (deleted), so data
//! is never applied twice. Lock order everywhere: `persisted`, then `head`.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, RwLock, RwLockReadGuard};
use std::time::Duration;

use crate::block::{self, Block, BlockKind, BlockStream, BlockWriter, ChunkMeta, EncodedChunk, SeriesChunks};
use crate::codec::DecodeError;
use crate::wal::{ReplayStats, Wal, WalOptions};
use crate::{StoreError, layout};

/// What an engine's head must offer the shared protocol.
pub(crate) trait HeadData: Default + Send + Sync + 'static {
    /// True when there is nothing to flush.
    fn is_empty(&self) -> bool;
    /// Applies one WAL record (replay).
    fn replay(&mut self, payload: &[u8]) -> Result<(), DecodeError>;
    /// Applies a WAL record of another type than the engine's main one;
    /// `None` when this engine has no such record type (corruption).
    fn replay_other(&mut self, _typ: u8, _payload: &[u8]) -> Option<Result<(), DecodeError>> {
        None
    }
    /// Encodes every series/stream into chunks for a block.
    fn encode(&self) -> Result<Vec<SeriesChunks<'_>>, StoreError>;
    /// Takes back the content of a head whose flush failed.
    fn merge_back(&mut self, failed: &Self);
    /// Moves the content out for a flush (under the write lock), leaving an
    /// empty head to write to.
    fn freeze(&mut self) -> Self {
        std::mem::take(self)
    }
    /// Samples or entries held (for flush results and metrics).
    fn count(&self) -> u64;
    /// Compaction: the chunks of one stream that appears in `sources`
    /// (blocks in `wal_through` order, so for equal timestamps the later
    /// source is the newer write). The default copies every chunk and its
    /// filter byte for byte, sorted by start time (they may overlap).
    fn merge_chunks(sources: &[(&Block, &BlockStream)]) -> Result<Vec<EncodedChunk>, StoreError> {
        let mut out = Vec::new();
        for (b, s) in sources {
            for c in &s.chunks {
                out.push(EncodedChunk::copy_of(b, c)?);
            }
        }
        out.sort_by_key(|c| c.min_ts);
        Ok(out)
    }
}

/// The `wal_through` of every block some newer (compacted) block says it
/// replaced: leftovers of a crash before their deletion, whose data is in
/// the newer block (`docs/format/tsdb.md`, "Compaction").
fn replaced_blocks(blocks: &[Arc<Block>]) -> std::collections::HashSet<u64> {
    blocks.iter().flat_map(|b| b.replaces.iter().copied().filter(move |&r| r < b.wal_through)).collect()
}

/// Applies one WAL record of `wal_dir` to `head`; a record of another type
/// or one that does not decode is corruption.
fn replay_record<H: HeadData>(
    head: &mut H,
    wal_dir: &Path,
    record_type: u8,
    typ: u8,
    payload: &[u8],
) -> Result<(), StoreError> {
    let res = if typ == record_type {
        head.replay(payload)
    } else {
        match head.replay_other(typ, payload) {
            Some(r) => r,
            None => {
                return Err(StoreError::Corrupt {
                    path: wal_dir.to_path_buf(),
                    offset: 0,
                    reason: format!("unexpected WAL record type {typ}, want {record_type}"),
                });
            }
        }
    };
    res.map_err(|e| StoreError::Corrupt {
        path: wal_dir.to_path_buf(),
        offset: e.offset as u64,
        reason: format!("WAL record: {}", e.reason),
    })
}

/// Chunks a rewrite leaves out: `drop(tenant, chunk)`.
type ChunkFilter<'a> = dyn Fn(&str, &ChunkMeta) -> bool + 'a;

fn duration_units(d: Duration, units_per_sec: i64) -> i64 {
    let nanos = i64::try_from(d.as_nanos()).unwrap_or(i64::MAX);
    nanos / (1_000_000_000 / units_per_sec)
}

/// How long an engine keeps data (`docs/format/logs.md`, "Retention").
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Retention {
    /// Age limit of every tenant without an override; `None`: forever.
    pub time: Option<Duration>,
    /// Tenants with their own age limit (`None`: forever for that tenant).
    /// Their data past it is hidden from reads at once and deleted within a
    /// day (whole blocks at once, chunks by rewriting the block).
    pub tenants: std::collections::HashMap<String, Option<Duration>>,
    /// The oldest blocks are deleted while all take more than this many
    /// bytes; 0: no limit.
    pub size: u64,
}

/// The tenant whose retention `tenant` follows: a companion tenant
/// (`"<tenant>|st"`, start timestamps of the metrics engine; `|` is not
/// allowed in tenant IDs) follows its tenant's, so a sample and its start
/// timestamp expire together.
fn retention_tenant(tenant: &str) -> &str {
    tenant.split_once('|').map_or(tenant, |(t, _)| t)
}

impl Retention {
    /// Oldest timestamp `tenant` keeps at `now` (both in the engine's unit,
    /// `units_per_sec` of them a second); `None`: kept forever.
    fn cutoff(&self, tenant: &str, now: i64, units_per_sec: i64) -> Option<i64> {
        let limit = self.tenants.get(retention_tenant(tenant)).copied().unwrap_or(self.time);
        limit.map(|d| now.saturating_sub(duration_units(d, units_per_sec)))
    }
}

/// What one retention pass did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RetentionStats {
    /// Blocks deleted whole.
    pub blocks_deleted: usize,
    /// Their bytes.
    pub bytes_deleted: u64,
    /// Blocks rewritten without the chunks of tenants past their own limit.
    pub blocks_rewritten: usize,
    /// Bytes those rewrites freed.
    pub bytes_dropped: u64,
}

/// When compaction merges blocks (`docs/format/tsdb.md`, "Compaction").
#[derive(Debug, Clone)]
pub struct CompactionPolicy {
    /// Level ranges in the engine's time unit, smallest first: adjacent
    /// blocks (in `wal_through` order) whose data together spans less than
    /// a level's range are merged into one block.
    pub ranges: Vec<i64>,
    /// A merged block is never made larger than this many bytes (sum of its
    /// sources); 0: no limit.
    pub max_block_bytes: u64,
}

/// What a compaction pass did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct CompactionStats {
    /// Merges done (new blocks written).
    pub runs: u64,
    /// Source blocks merged away.
    pub blocks_merged: u64,
    /// Bytes of the source blocks.
    pub bytes_before: u64,
    /// Bytes of the blocks written.
    pub bytes_after: u64,
}

/// Picks the first run of at least two adjacent blocks (by `wal_through`)
/// whose data together spans less than a level's range (smallest level
/// first) and whose sizes add up to at most `max_block_bytes`. Returns
/// indexes into `blocks`.
///
/// The newest run of a level may still grow with the next flush. Unless
/// the engine is `settled` (nothing in the head: no flush is coming), only
/// its newest blocks are merged that together are at least as large as the
/// block before them, like the carries of a binary counter: merging the
/// whole run after every flush copied the oldest data of the run once per
/// flush (quadratic; a fifth of the metrics ingest CPU of a 24 h backfill),
/// this copies each block about log₂(flushes) times. A run followed by a
/// block that does not fit it is complete and merged whole.
pub(crate) fn plan_compaction(
    blocks: &[Arc<Block>],
    policy: &CompactionPolicy,
    settled: bool,
) -> Option<std::ops::Range<usize>> {
    for &range in policy.ranges.iter().filter(|&&r| r > 0) {
        let mut i = 0;
        while i < blocks.len() {
            let (mut lo, mut hi, mut bytes) = (blocks[i].min_ts, blocks[i].max_ts, blocks[i].size);
            let mut j = i + 1;
            while j < blocks.len() {
                let b = &blocks[j];
                let (l, h) = (lo.min(b.min_ts), hi.max(b.max_ts));
                if h.saturating_sub(l) >= range
                    || (policy.max_block_bytes > 0 && bytes + b.size > policy.max_block_bytes)
                {
                    break;
                }
                (lo, hi, bytes) = (l, h, bytes + b.size);
                j += 1;
            }
            if j - i >= 2 {
                if j < blocks.len() || settled {
                    return Some(i..j);
                }
                let tail = |k: usize| blocks[k + 1..j].iter().map(|b| b.size).sum::<u64>();
                if let Some(k) = (i..j - 1).find(|&k| blocks[k].size <= tail(k)) {
                    return Some(k..j);
                }
                break; // every later start lies in this same newest run
            }
            i += 1;
        }
    }
    None
}

/// Blocks and the head being flushed, swapped together so a query sees every
/// item exactly once.
pub(crate) struct Persisted<H> {
    pub blocks: Vec<Arc<Block>>,
    pub frozen: Option<Arc<H>>,
}

/// WAL + head + frozen head + blocks of one engine.
pub(crate) struct Tiered<H> {
    dir: PathBuf,
    kind: BlockKind,
    pub wal: Wal,
    /// Serialises writers (and the freeze step of a flush).
    pub write_lock: Mutex<()>,
    flush_lock: Mutex<()>,
    compact_lock: Mutex<()>,
    pub persisted: RwLock<Persisted<H>>,
    pub head: RwLock<H>,
    pub replay: ReplayStats,
    /// Block files found corrupt at open and set aside (`*.blk.corrupt`),
    /// this time or earlier.
    pub corrupt_blocks: Vec<PathBuf>,
    /// What [`Tiered::apply_retention_policy`] enforces.
    retention: RwLock<Retention>,
    /// Signalled whenever a flush ends (for writer backpressure).
    flush_done: (Mutex<u64>, Condvar),
}

impl<H: HeadData> Tiered<H> {
    /// Opens the engine in `dir` (`dir/wal`, `dir/blocks`).
    pub fn open(dir: &Path, kind: BlockKind, record_type: u8, wal_opts: WalOptions) -> Result<Self, StoreError> {
        let blocks_dir = dir.join(layout::BLOCKS_DIR);
        fs::create_dir_all(&blocks_dir).map_err(StoreError::io("create directory", &blocks_dir))?;
        let mut blocks = Vec::new();
        let mut corrupt = Vec::new();
        for e in fs::read_dir(&blocks_dir).map_err(StoreError::io("read directory", &blocks_dir))? {
            let e = e.map_err(StoreError::io("read directory", &blocks_dir))?;
            let path = e.path();
            let name = e.file_name().to_string_lossy().into_owned();
            if name.ends_with(".tmp") {
                tracing::warn!(path = %path.display(), "removing unfinished block from an interrupted flush");
                fs::remove_file(&path).map_err(StoreError::io("remove", &path))?;
            } else if name.ends_with(layout::BLOCK_EXT) {
                match Block::open(&path, kind) {
                    Ok(b) => blocks.push(Arc::new(b)),
                    Err(e @ StoreError::Corrupt { .. }) => {
                        // Its index is unreadable, so none of its chunks can
                        // be found; set it aside (not deleted: an operator
                        // may still want it) and start with the rest.
                        let aside = path.with_file_name(format!("{name}.{}", layout::CORRUPT_SUFFIX));
                        tracing::error!(path = %path.display(), moved_to = %aside.display(), error = %e,
                            "corrupt block set aside; its data is not queryable");
                        fs::rename(&path, &aside).map_err(StoreError::io("rename", &path))?;
                        corrupt.push(aside);
                    }
                    Err(e) => return Err(e),
                }
            } else if name.ends_with(layout::CORRUPT_SUFFIX) {
                corrupt.push(path);
            }
        }
        if !corrupt.is_empty() {
            block::sync_dir(&blocks_dir)?;
            tracing::warn!(dir = %blocks_dir.display(), count = corrupt.len(),
                "corrupt blocks set aside in this directory (*.corrupt); inspect or delete them");
        }
        blocks.sort_by_key(|b| b.wal_through);
        // A compacted block names the blocks it replaced; any of them still
        // here is left over from a crash before their deletion: drop them
        // (their data is in the newer block) — see "Compaction" in tsdb.md.
        let replaced = replaced_blocks(&blocks);
        if !replaced.is_empty() {
            let (gone, keep): (Vec<_>, Vec<_>) = blocks.into_iter().partition(|b| replaced.contains(&b.wal_through));
            blocks = keep;
            for b in gone {
                tracing::warn!(path = %b.path().display(), "removing block already merged by compaction");
                fs::remove_file(b.path()).map_err(StoreError::io("remove", b.path()))?;
            }
            block::sync_dir(&blocks_dir)?;
        }
        let covered = blocks.iter().map(|b| b.wal_through).max().unwrap_or(0);
        let mut head = H::default();
        let wal_dir = dir.join(layout::WAL_DIR);
        let (wal, replay) = Wal::open(&wal_dir, wal_opts, covered, |typ, payload| {
            replay_record(&mut head, &wal_dir, record_type, typ, payload)
        })?;
        Ok(Self::assemble(dir, kind, wal, blocks, head, replay, corrupt))
    }

    /// The engine over what an open found.
    fn assemble(
        dir: &Path,
        kind: BlockKind,
        wal: Wal,
        blocks: Vec<Arc<Block>>,
        head: H,
        replay: ReplayStats,
        corrupt_blocks: Vec<PathBuf>,
    ) -> Self {
        Tiered {
            dir: dir.to_path_buf(),
            kind,
            wal,
            write_lock: Mutex::new(()),
            flush_lock: Mutex::new(()),
            compact_lock: Mutex::new(()),
            persisted: RwLock::new(Persisted { blocks, frozen: None }),
            head: RwLock::new(head),
            replay,
            corrupt_blocks,
            retention: RwLock::new(Retention::default()),
            flush_done: (Mutex::new(0), Condvar::new()),
        }
    }

    /// Opens the engine in `dir` read-only (`docs/format/wal.md`, "Read-only
    /// open"): nothing in `dir` is created, written, truncated or deleted and
    /// no lock is taken, so this is safe next to a running server and on the
    /// directory of a crashed one. Blocks are loaded (leftover `*.tmp` files
    /// and blocks a compacted block replaces are ignored, not removed), then
    /// the WAL segments no block covers are replayed into an in-memory head.
    /// A flush, retention or compaction by a concurrent writer can move data
    /// from the WAL into a new block (or between blocks) between those two
    /// steps; the blocks directory is listed again afterwards and the open
    /// starts over if it changed, so every item is seen exactly once.
    pub fn open_read_only(dir: &Path, kind: BlockKind, record_type: u8) -> Result<Self, StoreError> {
        const ATTEMPTS: usize = 20;
        let blocks_dir = dir.join(layout::BLOCKS_DIR);
        let wal_dir = dir.join(layout::WAL_DIR);
        let list = || -> Result<Vec<(String, u64, u64)>, StoreError> {
            use std::os::unix::fs::MetadataExt;
            let mut v = Vec::new();
            let rd = match fs::read_dir(&blocks_dir) {
                Ok(rd) => rd,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(v),
                Err(e) => return Err(StoreError::io("read directory", &blocks_dir)(e)),
            };
            for e in rd {
                let e = e.map_err(StoreError::io("read directory", &blocks_dir))?;
                let name = e.file_name().to_string_lossy().into_owned();
                if !name.ends_with(&format!(".{}", layout::BLOCK_EXT)) {
                    continue;
                }
                match e.metadata() {
                    Ok(m) => v.push((name, m.ino(), m.len())),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                    Err(e) => return Err(StoreError::io("stat", blocks_dir.join(&name))(e)),
                }
            }
            v.sort();
            Ok(v)
        };
        let mut last_err = None;
        for _ in 0..ATTEMPTS {
            let before = list()?;
            let mut blocks = Vec::new();
            let mut corrupt = Vec::new();
            let mut vanished = false;
            for (name, _, _) in &before {
                let path = blocks_dir.join(name);
                match Block::open(&path, kind) {
                    Ok(b) => blocks.push(Arc::new(b)),
                    // Skipped, not set aside: a read-only open renames nothing.
                    Err(e @ StoreError::Corrupt { .. }) => {
                        tracing::error!(path = %path.display(), error = %e, "corrupt block skipped; its data is not shown");
                        corrupt.push(path);
                    }
                    Err(StoreError::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
                        vanished = true;
                        break;
                    }
                    Err(e) => return Err(e),
                }
            }
            if vanished {
                continue;
            }
            blocks.sort_by_key(|b| b.wal_through);
            let replaced = replaced_blocks(&blocks);
            blocks.retain(|b| !replaced.contains(&b.wal_through));
            let covered = blocks.iter().map(|b| b.wal_through).max().unwrap_or(0);
            let mut head = H::default();
            let replay = Wal::replay_read_only(&wal_dir, covered, |typ, payload| {
                replay_record(&mut head, &wal_dir, record_type, typ, payload)
            });
            let replay = match replay {
                Ok(Some(r)) => r,
                Ok(None) => continue,
                // A record that fails to decode while a writer is active
                // may be one being written: try again before giving up.
                Err(e @ StoreError::Corrupt { .. }) => {
                    last_err = Some(e);
                    continue;
                }
                Err(e) => return Err(e),
            };
            if list()? != before {
                continue;
            }
            return Ok(Self::assemble(dir, kind, Wal::read_only(&wal_dir)?, blocks, head, replay, corrupt));
        }
        Err(last_err.unwrap_or_else(|| StoreError::Corrupt {
            path: dir.to_path_buf(),
            offset: 0,
            reason: format!("blocks and WAL kept changing under a read-only open ({ATTEMPTS} attempts)"),
        }))
    }

    /// Refuses writes to a store opened with [`Tiered::open_read_only`].
    fn check_writable(&self) -> Result<(), StoreError> {
        if self.wal.is_read_only() { Err(StoreError::ReadOnly { path: self.dir.clone() }) } else { Ok(()) }
    }

    /// True while a flush is writing a frozen head.
    pub fn flushing(&self) -> bool {
        self.persisted.read().unwrap_or_else(|p| p.into_inner()).frozen.is_some()
    }

    /// Backpressure: while `over()` holds and a flush is writing, wait for
    /// the flush to end (at most `max_wait`), so a head cannot grow without
    /// bound when ingest outpaces flushing. Returns how long it waited.
    pub fn wait_for_flush_while(&self, over: impl Fn() -> bool, max_wait: Duration) -> Duration {
        let started = std::time::Instant::now();
        let (lock, cv) = &self.flush_done;
        let mut generation = lock.lock().unwrap_or_else(|p| p.into_inner());
        while over() && self.flushing() {
            let left = max_wait.saturating_sub(started.elapsed());
            if left.is_zero() {
                break;
            }
            let seen = *generation;
            let (g, _) = cv.wait_timeout_while(generation, left, |g| *g == seen).unwrap_or_else(|p| p.into_inner());
            generation = g;
        }
        started.elapsed()
    }

    pub(crate) fn signal_flush_done(&self) {
        let (lock, cv) = &self.flush_done;
        *lock.lock().unwrap_or_else(|p| p.into_inner()) += 1;
        cv.notify_all();
    }

    /// Read access to blocks + frozen head, then the head (lock order).
    pub fn read(&self) -> (RwLockReadGuard<'_, Persisted<H>>, RwLockReadGuard<'_, H>) {
        let p = self.persisted.read().unwrap_or_else(|p| p.into_inner());
        let h = self.head.read().unwrap_or_else(|p| p.into_inner());
        (p, h)
    }

    /// Writes the head to a new block (see the module doc). Returns the
    /// number of items flushed (0 when the head was empty).
    pub fn flush(&self) -> Result<u64, StoreError> {
        let _f = self.flush_lock.lock().unwrap_or_else(|p| p.into_inner());
        let (frozen, sealed) = {
            let _w = self.write_lock.lock().unwrap_or_else(|p| p.into_inner());
            let mut persisted = self.persisted.write().unwrap_or_else(|p| p.into_inner());
            let mut head = self.head.write().unwrap_or_else(|p| p.into_inner());
            if head.is_empty() {
                return Ok(0);
            }
            let sealed = self.wal.rotate()?;
            let frozen = Arc::new(head.freeze());
            persisted.frozen = Some(frozen.clone());
            (frozen, sealed)
        };
        let written = frozen
            .encode()
            .and_then(|series| block::write_block(&self.dir.join(layout::BLOCKS_DIR), self.kind, sealed, series));
        match written {
            Ok(block) => {
                {
                    let mut persisted = self.persisted.write().unwrap_or_else(|p| p.into_inner());
                    persisted.blocks.push(Arc::new(block));
                    persisted.frozen = None;
                }
                self.signal_flush_done();
                self.wal.remove_through(sealed)?;
                Ok(frozen.count())
            }
            Err(e) => {
                // Keep the data queryable and flushable: back into the head.
                // Its WAL segments were not removed, so it stays durable.
                let _w = self.write_lock.lock().unwrap_or_else(|p| p.into_inner());
                let mut persisted = self.persisted.write().unwrap_or_else(|p| p.into_inner());
                let mut head = self.head.write().unwrap_or_else(|p| p.into_inner());
                head.merge_back(&frozen);
                persisted.frozen = None;
                drop((head, persisted));
                self.signal_flush_done();
                Err(e)
            }
        }
    }

    /// The engine's time units per second (logs: ns, metrics: ms).
    fn units_per_sec(&self) -> i64 {
        match self.kind {
            BlockKind::Logs => 1_000_000_000,
            BlockKind::Metrics => 1_000,
        }
    }

    /// Now, in the engine's time unit.
    fn now(&self) -> i64 {
        let d = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        match self.kind {
            BlockKind::Logs => i64::try_from(d.as_nanos()).unwrap_or(i64::MAX),
            BlockKind::Metrics => i64::try_from(d.as_millis()).unwrap_or(i64::MAX),
        }
    }

    /// Sets the retention [`Tiered::apply_retention_policy`] enforces and
    /// reads hide by ([`Tiered::visible_from`]).
    pub fn set_retention(&self, r: Retention) {
        *self.retention.write().unwrap_or_else(|p| p.into_inner()) = r;
    }

    /// The age limit's cutoff (engine time unit) for `tenant` now; `None`:
    /// kept forever.
    pub fn cutoff(&self, tenant: &str) -> Option<i64> {
        let r = self.retention.read().unwrap_or_else(|p| p.into_inner());
        r.cutoff(tenant, self.now(), self.units_per_sec())
    }

    /// Oldest timestamp reads may return for `tenant`: data past a tenant's
    /// own retention is hidden at once, before retention deletes it.
    /// Tenants without an override see everything still stored.
    pub fn visible_from(&self, tenant: &str) -> i64 {
        let r = self.retention.read().unwrap_or_else(|p| p.into_inner());
        match r.tenants.get(retention_tenant(tenant)) {
            Some(Some(d)) => self.now().saturating_sub(duration_units(*d, self.units_per_sec())),
            _ => i64::MIN,
        }
    }

    /// Enforces the retention set by [`Tiered::set_retention`] (see
    /// `docs/format/logs.md`, "Retention"): deletes every block all of whose
    /// chunks are past their tenant's age limit, then the oldest blocks past
    /// the size limit, then rewrites blocks holding chunks past a tenant
    /// override once they make up a tenth of the block or have been expired
    /// for a day. Returns (cutoff per tenant, what was done).
    pub fn apply_retention_policy(&self) -> Result<RetentionStats, StoreError> {
        self.check_writable()?;
        let r = self.retention.read().unwrap_or_else(|p| p.into_inner()).clone();
        let now = self.now();
        let ups = self.units_per_sec();
        let cutoff = |tenant: &str| r.cutoff(tenant, now, ups);
        let mut stats = RetentionStats::default();
        // Whole blocks: one age pass by tenant, then the size limit.
        let expired = |b: &Block| {
            b.streams.iter().all(|s| cutoff(&s.tenant).is_some_and(|c| s.chunks.iter().all(|ch| ch.max_ts < c)))
        };
        let (n, bytes) = self.remove_blocks(
            |blocks| {
                let (old, keep): (Vec<_>, Vec<_>) = blocks.drain(..).partition(|b| expired(b));
                *blocks = keep;
                old
            },
            r.size,
        )?;
        stats.blocks_deleted = n;
        stats.bytes_deleted = bytes;
        // Chunks of tenants with their own, shorter limit.
        if r.tenants.is_empty() {
            return Ok(stats);
        }
        let day = 86_400 * ups;
        let drop = |tenant: &str, c: &ChunkMeta| {
            r.tenants.contains_key(tenant) && cutoff(tenant).is_some_and(|cut| c.max_ts < cut)
        };
        let _c = self.compact_lock.lock().unwrap_or_else(|p| p.into_inner());
        let blocks: Vec<Arc<Block>> = self.persisted.read().unwrap_or_else(|p| p.into_inner()).blocks.clone();
        for b in blocks {
            let (mut dropped, mut overdue) = (0u64, false);
            for s in &b.streams {
                for c in s.chunks.iter().filter(|c| drop(&s.tenant, c)) {
                    dropped += c.len + c.filter_len;
                    overdue |= cutoff(&s.tenant).is_some_and(|cut| c.max_ts < cut.saturating_sub(day));
                }
            }
            if dropped == 0 || !(overdue || dropped.saturating_mul(10) >= b.size) {
                continue;
            }
            let (before, after) = self.rewrite_blocks(std::slice::from_ref(&b), Some(&drop))?;
            if before > 0 {
                stats.blocks_rewritten += 1;
                stats.bytes_dropped += before.saturating_sub(after);
            }
        }
        Ok(stats)
    }

    /// Removes the blocks `pick` takes out of the list, then the oldest
    /// while all take more than `max_bytes` (0: no limit); deletes their
    /// files. Returns their number and bytes.
    fn remove_blocks(
        &self,
        pick: impl FnOnce(&mut Vec<Arc<Block>>) -> Vec<Arc<Block>>,
        max_bytes: u64,
    ) -> Result<(usize, u64), StoreError> {
        let removed: Vec<Arc<Block>> = {
            let mut persisted = self.persisted.write().unwrap_or_else(|p| p.into_inner());
            let mut removed = pick(&mut persisted.blocks);
            if max_bytes > 0 {
                // oldest data first
                persisted.blocks.sort_by_key(|b| (b.max_ts, b.wal_through));
                let mut total: u64 = persisted.blocks.iter().map(|b| b.size).sum();
                while total > max_bytes && !persisted.blocks.is_empty() {
                    let b = persisted.blocks.remove(0);
                    total -= b.size;
                    removed.push(b);
                }
                persisted.blocks.sort_by_key(|b| b.wal_through);
            }
            removed
        };
        let mut bytes = 0;
        for b in &removed {
            fs::remove_file(b.path()).map_err(StoreError::io("remove", b.path()))?;
            bytes += b.size;
            tracing::info!(path = %b.path().display(), size = b.size, "block deleted by retention");
        }
        if !removed.is_empty() {
            block::sync_dir(&self.dir.join(layout::BLOCKS_DIR))?;
        }
        Ok((removed.len(), bytes))
    }

    /// Deletes blocks whose newest item is older than `min_ts` (in the
    /// engine's time unit; `None`: no age limit), then the oldest blocks while
    /// the blocks take more than `max_bytes` (0: no size limit). Returns the
    /// number and bytes of blocks deleted. Queries already holding a block
    /// keep reading it; the file is gone once they drop it.
    pub fn apply_retention(&self, min_ts: Option<i64>, max_bytes: u64) -> Result<(usize, u64), StoreError> {
        self.check_writable()?;
        self.remove_blocks(
            |blocks| match min_ts {
                Some(min_ts) => {
                    let (old, keep): (Vec<_>, Vec<_>) = blocks.drain(..).partition(|b| b.max_ts < min_ts);
                    *blocks = keep;
                    old
                }
                None => Vec::new(),
            },
            max_bytes,
        )
    }

    /// Merges adjacent small blocks per `policy` until none qualifies (at
    /// most `max_runs` merges). Each merge: write `<last>.blk.compact` with
    /// every stream of the sources (chunks merged by [`HeadData::merge_chunks`])
    /// and the list of the sources it replaces; fsync; under the lock, check
    /// the sources are all still there, rename it over the last source
    /// (`<last>.blk`), swap it in; then delete the other sources. See
    /// `docs/format/tsdb.md`, "Compaction", for what a crash at each step leaves.
    pub fn compact(&self, policy: &CompactionPolicy, max_runs: usize) -> Result<CompactionStats, StoreError> {
        self.check_writable()?;
        let _c = self.compact_lock.lock().unwrap_or_else(|p| p.into_inner());
        let mut stats = CompactionStats::default();
        for _ in 0..max_runs {
            let sources: Vec<Arc<Block>> = {
                let p = self.persisted.read().unwrap_or_else(|p| p.into_inner());
                let settled = p.frozen.is_none() && self.head.read().unwrap_or_else(|p| p.into_inner()).is_empty();
                match plan_compaction(&p.blocks, policy, settled) {
                    Some(r) => p.blocks[r].to_vec(),
                    None => break,
                }
            };
            let (before, after) = self.merge_blocks(&sources)?;
            stats.runs += 1;
            stats.blocks_merged += sources.len() as u64;
            stats.bytes_before += before;
            stats.bytes_after += after;
        }
        Ok(stats)
    }

    /// One merge of `sources` (adjacent, in `wal_through` order). Returns
    /// (bytes before, bytes after); (0, 0) when retention took a source
    /// away meanwhile (nothing changed).
    fn merge_blocks(&self, sources: &[Arc<Block>]) -> Result<(u64, u64), StoreError> {
        self.rewrite_blocks(sources, None)
    }

    /// [`Tiered::merge_blocks`], leaving out the chunks `drop(tenant, chunk)`
    /// picks (retention); with one source, that block is rewritten in place.
    fn rewrite_blocks(
        &self,
        sources: &[Arc<Block>],
        leave_out: Option<&ChunkFilter<'_>>,
    ) -> Result<(u64, u64), StoreError> {
        use std::collections::BTreeMap;
        let dir = self.dir.join(layout::BLOCKS_DIR);
        let Some(last) = sources.last() else {
            return Ok((0, 0));
        };
        let kept: Option<Vec<Vec<BlockStream>>> = leave_out.map(|drop| {
            sources
                .iter()
                .map(|b| {
                    b.streams
                        .iter()
                        .map(|s| BlockStream {
                            tenant: s.tenant.clone(),
                            labels: s.labels.clone(),
                            chunks: s.chunks.iter().filter(|c| !drop(&s.tenant, c)).copied().collect(),
                        })
                        .collect()
                })
                .collect()
        });
        let mut keys: BTreeMap<(&str, &cairn_wire::Labels), Vec<(&Block, &BlockStream)>> = BTreeMap::new();
        for (i, b) in sources.iter().enumerate() {
            let streams = kept.as_ref().map_or(&b.streams, |k| &k[i]);
            for s in streams.iter().filter(|s| !s.chunks.is_empty()) {
                keys.entry((s.tenant.as_str(), &s.labels)).or_default().push((b.as_ref(), s));
            }
        }
        let mut replaces: Vec<u64> = sources.iter().flat_map(|b| b.replaces.iter().copied()).collect();
        replaces.extend(sources[..sources.len() - 1].iter().map(|b| b.wal_through));
        replaces.sort_unstable();
        replaces.dedup();
        let mut w = BlockWriter::create(&dir, self.kind, last.wal_through, "compact.tmp")?;
        for ((tenant, labels), srcs) in &keys {
            let chunks = H::merge_chunks(srcs)?;
            w.add(tenant, labels, chunks)?;
        }
        let pending = w.finish(&replaces)?;
        let before: u64 = sources.iter().map(|b| b.size).sum();
        let block = {
            let mut p = self.persisted.write().unwrap_or_else(|p| p.into_inner());
            let pos: Option<Vec<usize>> =
                sources.iter().map(|s| p.blocks.iter().position(|b| Arc::ptr_eq(b, s))).collect();
            let Some(pos) = pos else {
                drop(p);
                pending.abort();
                return Ok((0, 0));
            };
            let block = Arc::new(pending.commit()?);
            let first = pos.iter().copied().min().unwrap_or(0);
            p.blocks.retain(|b| !sources.iter().any(|s| Arc::ptr_eq(b, s)));
            let at = first.min(p.blocks.len());
            p.blocks.insert(at, block.clone());
            block
        };
        for b in &sources[..sources.len() - 1] {
            fs::remove_file(b.path()).map_err(StoreError::io("remove", b.path()))?;
        }
        block::sync_dir(&dir)?;
        tracing::info!(
            blocks = sources.len(),
            bytes_before = before,
            bytes_after = block.size,
            path = %block.path().display(),
            "blocks compacted"
        );
        Ok((before, block.size))
    }

    /// Number of blocks and their bytes on disk.
    pub fn block_stats(&self) -> (usize, u64) {
        let p = self.persisted.read().unwrap_or_else(|p| p.into_inner());
        (p.blocks.len(), p.blocks.iter().map(|b| b.size).sum())
    }
}
