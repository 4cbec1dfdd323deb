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

use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, RwLock, RwLockReadGuard};
use std::time::Duration;

use crate::block::{self, Block, BlockKind, SeriesChunks};
use crate::codec::DecodeError;
use crate::wal::{ReplayStats, Wal, WalOptions};
use crate::{StoreError, layout};

/// What an engine's head must offer the shared protocol.
pub(crate) trait HeadData: Default + Send + Sync + 'static {
    /// True when there is nothing to flush.
    fn is_empty(&self) -> bool;
    /// Applies one WAL record (replay).
    fn replay(&mut self, payload: &[u8]) -> Result<(), DecodeError>;
    /// Encodes every series/stream into chunks for a block.
    fn encode(&self) -> Result<Vec<SeriesChunks<'_>>, StoreError>;
    /// Takes back the content of a head whose flush failed.
    fn merge_back(&mut self, failed: &Self);
    /// Samples or entries held (for flush results and metrics).
    fn count(&self) -> u64;
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
    pub persisted: RwLock<Persisted<H>>,
    pub head: RwLock<H>,
    pub replay: ReplayStats,
    /// Signalled whenever a flush ends (for writer backpressure).
    flush_done: (Mutex<u64>, Condvar),
}

impl<H: HeadData> Tiered<H> {
    /// Opens the engine in `dir` (`dir/wal`, `dir/blocks`).
    pub fn open(dir: &Path, kind: BlockKind, record_type: u8, wal_opts: WalOptions) -> Result<Self, StoreError> {
        let blocks_dir = dir.join(layout::BLOCKS_DIR);
        fs::create_dir_all(&blocks_dir).map_err(StoreError::io("create directory", &blocks_dir))?;
        let mut blocks = Vec::new();
        for e in fs::read_dir(&blocks_dir).map_err(StoreError::io("read directory", &blocks_dir))? {
            let e = e.map_err(StoreError::io("read directory", &blocks_dir))?;
            let path = e.path();
            let name = e.file_name().to_string_lossy().into_owned();
            if name.ends_with(".tmp") {
                tracing::warn!(path = %path.display(), "removing unfinished block from an interrupted flush");
                fs::remove_file(&path).map_err(StoreError::io("remove", &path))?;
            } else if name.ends_with(layout::BLOCK_EXT) {
                blocks.push(Arc::new(Block::open(&path, kind)?));
            }
        }
        blocks.sort_by_key(|b| b.wal_through);
        let covered = blocks.iter().map(|b| b.wal_through).max().unwrap_or(0);
        let mut head = H::default();
        let wal_dir = dir.join(layout::WAL_DIR);
        let (wal, replay) = Wal::open(&wal_dir, wal_opts, covered, |typ, payload| {
            if typ != record_type {
                return Err(StoreError::Corrupt {
                    path: wal_dir.clone(),
                    offset: 0,
                    reason: format!("unexpected WAL record type {typ}, want {record_type}"),
                });
            }
            head.replay(payload).map_err(|e| StoreError::Corrupt {
                path: wal_dir.clone(),
                offset: e.offset as u64,
                reason: format!("WAL record: {}", e.reason),
            })
        })?;
        Ok(Tiered {
            dir: dir.to_path_buf(),
            kind,
            wal,
            write_lock: Mutex::new(()),
            flush_lock: Mutex::new(()),
            persisted: RwLock::new(Persisted { blocks, frozen: None }),
            head: RwLock::new(head),
            replay,
            flush_done: (Mutex::new(0), Condvar::new()),
        })
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
            let frozen = Arc::new(std::mem::take(&mut *head));
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

    /// Deletes blocks whose newest item is older than `min_ts` (in the
    /// engine's time unit; `None`: no age limit), then the oldest blocks while
    /// the blocks take more than `max_bytes` (0: no size limit). Returns the
    /// number and bytes of blocks deleted. Queries already holding a block
    /// keep reading it; the file is gone once they drop it.
    pub fn apply_retention(&self, min_ts: Option<i64>, max_bytes: u64) -> Result<(usize, u64), StoreError> {
        let removed: Vec<Arc<Block>> = {
            let mut persisted = self.persisted.write().unwrap_or_else(|p| p.into_inner());
            let mut removed = Vec::new();
            if let Some(min_ts) = min_ts {
                let (old, keep): (Vec<_>, Vec<_>) = persisted.blocks.drain(..).partition(|b| b.max_ts < min_ts);
                persisted.blocks = keep;
                removed.extend(old);
            }
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
            File::open(self.dir.join(layout::BLOCKS_DIR))
                .and_then(|d| d.sync_all())
                .map_err(StoreError::io("fsync directory", self.dir.join(layout::BLOCKS_DIR)))?;
        }
        Ok((removed.len(), bytes))
    }

    /// Number of blocks and their bytes on disk.
    pub fn block_stats(&self) -> (usize, u64) {
        let p = self.persisted.read().unwrap_or_else(|p| p.into_inner());
        (p.blocks.len(), p.blocks.iter().map(|b| b.size).sum())
    }
}
