//! The write-ahead log shared by the metrics and the log engine.
//!
//! Layout (full description in `docs/format/wal.md`): a directory of segment
//! files `00000001.wal`, `00000002.wal`, …; each starts with a 16-byte header
//! (`CAIRNWAL`, version byte, 7 reserved zero bytes) followed by records:
//!
//! ```text
//! ┌──────────────┬──────────────┬─────────┬─────────────────┐
//! │ len u32 LE   │ crc32c u32 LE│ type u8 │ payload (len B) │
//! └──────────────┴──────────────┴─────────┴─────────────────┘
//! crc32c covers the type byte and the payload.
//! ```
//!
//! Guarantees:
//! - [`Wal::append`] returns after the record is written to the segment
//!   file, and, with [`FsyncPolicy::Always`], after `fdatasync`.
//! - A process restarted after a crash replays every complete record. A
//!   record cut short or failing its checksum at the end of the newest
//!   segment is a torn tail: the segment is truncated there and replay
//!   succeeds. The same in an older segment is corruption: the rest of that
//!   segment is skipped, counted in [`ReplayStats::corrupt_segments`], and
//!   logged with path and offset.
//! - After replay, appends go to a fresh segment; old segments are never
//!   rewritten, only deleted whole once their data is persisted elsewhere.

use std::fs::{self, File, OpenOptions};
use std::io::{BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use crate::{StoreError, layout};

/// Segment magic.
pub const MAGIC: &[u8; 8] = b"CAIRNWAL";
/// Current segment format version.
pub const VERSION: u8 = 1;
/// Size of the segment header.
pub const HEADER_LEN: u64 = 16;
/// Size of a record header (len + crc + type).
pub const RECORD_HEADER_LEN: usize = 9;
/// Largest record payload accepted (a larger length in a file is corruption).
pub const MAX_RECORD_LEN: usize = 256 << 20;

/// When appended records reach stable storage.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FsyncPolicy {
    /// `fdatasync` before every write is acknowledged: nothing acknowledged
    /// is lost, even on power failure. Costs one disk flush per write request.
    Always,
    /// Flush every `fsync_interval`: a `kill -9` loses nothing (the data is in
    /// the OS page cache), a power failure can lose the last interval.
    Interval,
    /// Leave flushing to the OS: a power failure can lose up to the kernel's
    /// writeback delay (about 30 s on Linux).
    Never,
}

/// WAL settings.
#[derive(Debug, Clone)]
pub struct WalOptions {
    /// When records are flushed to disk.
    pub fsync: FsyncPolicy,
    /// Segment size after which a new segment is started.
    pub segment_bytes: u64,
}

impl Default for WalOptions {
    fn default() -> Self {
        WalOptions { fsync: FsyncPolicy::Always, segment_bytes: 128 << 20 }
    }
}

/// What replay found.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ReplayStats {
    /// Segments read.
    pub segments: usize,
    /// Records handed to the callback.
    pub records: u64,
    /// Bytes truncated off the newest segment's torn tail.
    pub torn_tail_bytes: u64,
    /// Older segments whose rest was skipped because of corruption.
    pub corrupt_segments: usize,
}

struct Writer {
    file: File,
    path: PathBuf,
    seq: u64,
    len: u64,
    dirty: bool,
    /// Bytes in all older segments still on disk.
    sealed_bytes: u64,
    scratch: Vec<u8>,
    /// A failed record could not be cut off: append to a new segment.
    broken: bool,
}

impl Writer {
    /// Truncates the segment to `good` bytes and writes from there on. If
    /// that fails the segment may end in junk, which replay reads as a torn
    /// tail; nothing more may follow it, so the next append starts a new
    /// segment.
    fn undo_to(&mut self, good: u64) {
        let res = self.file.set_len(good).and_then(|()| self.file.seek(SeekFrom::Start(good)).map(|_| ()));
        if let Err(e) = res {
            tracing::warn!(path = %self.path.display(), error = %e, "could not cut a failed WAL record off");
            self.broken = true;
        }
    }
}

/// An open write-ahead log.
pub struct Wal {
    dir: PathBuf,
    opts: WalOptions,
    w: Mutex<Writer>,
    /// Opened by [`Wal::read_only`]: every write is refused.
    read_only: bool,
    /// Group commit ([`Wal::sync_through`]): the position known durable.
    /// Held while syncing, so callers queue behind the sync in progress
    /// and then usually find their record covered by it. Taken before `w`.
    synced: Mutex<Option<WalPos>>,
    /// A group `fdatasync` failed: every later write is refused (see
    /// [`Wal::sync_through`]). Checked without taking a lock.
    failed: AtomicBool,
    /// That failure's kind and message (taken last, never held while
    /// waiting for another lock).
    failure: Mutex<Option<(std::io::ErrorKind, String)>>,
}

/// Where a record written by [`Wal::append_unsynced`] ends; pass it to
/// [`Wal::sync_through`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct WalPos {
    seq: u64,
    end: u64,
}

impl WalPos {
    /// Number of the segment the record went to.
    pub fn segment(&self) -> u64 {
        self.seq
    }
}

fn list_segments(dir: &Path) -> Result<Vec<(u64, PathBuf)>, StoreError> {
    let mut segs = Vec::new();
    for e in fs::read_dir(dir).map_err(StoreError::io("read directory", dir))? {
        let e = e.map_err(StoreError::io("read directory", dir))?;
        if let Some(n) = e.file_name().to_str().and_then(layout::parse_wal_segment_name) {
            segs.push((n, e.path()));
        }
    }
    segs.sort();
    Ok(segs)
}

fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(StoreError::io("fsync directory", dir))
}

enum SegmentEnd {
    Clean,
    /// Bad or short record starting at this offset.
    Bad {
        offset: u64,
        reason: String,
    },
}

/// Callback receiving (record type, payload) during replay.
type RecordFn<'a> = dyn FnMut(u8, &[u8]) -> Result<(), StoreError> + 'a;

/// Reads one segment, calling `f` for each good record; stops at the first
/// bad one.
fn read_segment(
    path: &Path,
    f: &mut RecordFn<'_>,
    records: &mut u64,
    bad_header: &mut bool,
) -> Result<SegmentEnd, StoreError> {
    let file = File::open(path).map_err(StoreError::io("open", path))?;
    let file_len = file.metadata().map_err(StoreError::io("stat", path))?.len();
    let mut r = BufReader::with_capacity(1 << 20, file);
    let mut header = [0u8; HEADER_LEN as usize];
    if let Err(e) = r.read_exact(&mut header) {
        if e.kind() == std::io::ErrorKind::UnexpectedEof {
            return Ok(SegmentEnd::Bad { offset: 0, reason: "segment shorter than its header".into() });
        }
        return Err(StoreError::io("read", path)(e));
    }
    if &header[..8] != MAGIC {
        // Damaged, but every record carries its own checksum: keep what
        // still reads, and count the segment as corrupt.
        tracing::error!(path = %path.display(), "WAL segment header damaged (bad magic); reading its records anyway");
        *bad_header = true;
    }
    if header[8] != VERSION {
        return Err(StoreError::UnsupportedVersion { path: path.into(), version: header[8], supported: VERSION });
    }
    let mut offset = HEADER_LEN;
    let mut payload = Vec::new();
    loop {
        let mut rh = [0u8; RECORD_HEADER_LEN];
        match read_full(&mut r, &mut rh).map_err(StoreError::io("read", path))? {
            0 => return Ok(SegmentEnd::Clean),
            n if n < RECORD_HEADER_LEN => {
                return Ok(SegmentEnd::Bad {
                    offset,
                    reason: format!("record header cut short ({n} of {RECORD_HEADER_LEN} bytes)"),
                });
            }
            _ => {}
        }
        let len = u32::from_le_bytes([rh[0], rh[1], rh[2], rh[3]]) as usize;
        let want_crc = u32::from_le_bytes([rh[4], rh[5], rh[6], rh[7]]);
        let typ = rh[8];
        if len > MAX_RECORD_LEN {
            return Ok(SegmentEnd::Bad {
                offset,
                reason: format!("record length {len} exceeds the maximum {MAX_RECORD_LEN}"),
            });
        }
        let left = file_len.saturating_sub(offset + RECORD_HEADER_LEN as u64);
        if len as u64 > left {
            // Checked before allocating: junk lengths must not cost memory.
            return Ok(SegmentEnd::Bad { offset, reason: format!("record payload cut short ({left} of {len} bytes)") });
        }
        payload.resize(len, 0);
        let got = read_full(&mut r, &mut payload).map_err(StoreError::io("read", path))?;
        if got < len {
            return Ok(SegmentEnd::Bad { offset, reason: format!("record payload cut short ({got} of {len} bytes)") });
        }
        let crc = crc32c::crc32c_append(crc32c::crc32c(&[typ]), &payload);
        if !crate::crc_matches(crc, want_crc) {
            return Ok(SegmentEnd::Bad {
                offset,
                reason: format!("checksum mismatch: got {crc:#010x}, want {want_crc:#010x}"),
            });
        }
        f(typ, &payload)?;
        *records += 1;
        offset += (RECORD_HEADER_LEN + len) as u64;
    }
}

/// Like `read_exact` but returns how many bytes were read before EOF.
fn read_full(r: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

impl Wal {
    /// Opens (creating if needed) the WAL in `dir`, replays every record into
    /// `f(record_type, payload)`, repairs a torn tail, and starts a new
    /// segment for appends. Segments numbered `≤ skip_through` hold data
    /// already persisted elsewhere: they are deleted, not replayed.
    pub fn open(
        dir: &Path,
        opts: WalOptions,
        skip_through: u64,
        mut f: impl FnMut(u8, &[u8]) -> Result<(), StoreError>,
    ) -> Result<(Wal, ReplayStats), StoreError> {
        fs::create_dir_all(dir).map_err(StoreError::io("create directory", dir))?;
        let mut segs = list_segments(dir)?;
        let next_after_skipped = segs.iter().map(|(n, _)| *n).max().unwrap_or(0).max(skip_through);
        for (_, path) in segs.iter().filter(|(n, _)| *n <= skip_through) {
            fs::remove_file(path).map_err(StoreError::io("remove", path))?;
        }
        segs.retain(|(n, _)| *n > skip_through);
        let mut stats = ReplayStats::default();
        let mut sealed_bytes = 0;
        for (i, (_, path)) in segs.iter().enumerate() {
            stats.segments += 1;
            let mut bad_header = false;
            let end = read_segment(path, &mut f, &mut stats.records, &mut bad_header)?;
            let newest = i + 1 == segs.len();
            if bad_header {
                stats.corrupt_segments += 1;
            }
            if let SegmentEnd::Bad { offset, reason } = end {
                let size = fs::metadata(path).map_err(StoreError::io("stat", path))?.len();
                if newest {
                    tracing::warn!(path = %path.display(), offset, reason, "WAL torn tail truncated");
                    stats.torn_tail_bytes = size - offset;
                    let file = OpenOptions::new().write(true).open(path).map_err(StoreError::io("open", path))?;
                    if offset < HEADER_LEN {
                        drop(file);
                        fs::remove_file(path).map_err(StoreError::io("remove", path))?;
                        continue;
                    }
                    file.set_len(offset).map_err(StoreError::io("truncate", path))?;
                    file.sync_all().map_err(StoreError::io("fsync", path))?;
                } else {
                    tracing::error!(path = %path.display(), offset, reason, "corrupt WAL segment; rest of segment skipped");
                    stats.corrupt_segments += usize::from(!bad_header);
                }
            }
            sealed_bytes += fs::metadata(path).map(|m| m.len()).unwrap_or(0);
        }
        let seq = next_after_skipped + 1;
        let w = Self::create_segment(dir, seq, sealed_bytes)?;
        Ok((
            Wal {
                dir: dir.to_path_buf(),
                opts,
                w: Mutex::new(w),
                read_only: false,
                synced: Mutex::new(None),
                failed: AtomicBool::new(false),
                failure: Mutex::new(None),
            },
            stats,
        ))
    }

    /// Replays the WAL in `dir` without changing anything on disk (the
    /// read-only open, `docs/format/wal.md`): segments `≤ skip_through` are
    /// skipped but not deleted, a bad record ends its segment's replay (in
    /// the newest segment it is counted in `torn_tail_bytes` but not
    /// truncated: a running writer may be appending it right now), and no
    /// segment is created. A missing directory is an empty WAL. Returns
    /// `Ok(None)` when a segment vanished between listing and reading it (a
    /// concurrent flush deleted it): the caller should start over.
    pub fn replay_read_only(
        dir: &Path,
        skip_through: u64,
        mut f: impl FnMut(u8, &[u8]) -> Result<(), StoreError>,
    ) -> Result<Option<ReplayStats>, StoreError> {
        let segs = match list_segments(dir) {
            Ok(s) => s,
            Err(StoreError::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
                return Ok(Some(ReplayStats::default()));
            }
            Err(e) => return Err(e),
        };
        let mut stats = ReplayStats::default();
        let live: Vec<_> = segs.iter().filter(|(n, _)| *n > skip_through).collect();
        for (i, (_, path)) in live.iter().enumerate() {
            stats.segments += 1;
            let mut bad_header = false;
            let end = match read_segment(path, &mut f, &mut stats.records, &mut bad_header) {
                Ok(end) => end,
                Err(StoreError::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
                    return Ok(None);
                }
                Err(e) => return Err(e),
            };
            if bad_header {
                stats.corrupt_segments += 1;
            }
            if let SegmentEnd::Bad { offset, .. } = end {
                if i + 1 == live.len() {
                    let size = fs::metadata(path).map(|m| m.len()).unwrap_or(offset);
                    stats.torn_tail_bytes = size.saturating_sub(offset);
                } else {
                    stats.corrupt_segments += 1;
                }
            }
        }
        Ok(Some(stats))
    }

    /// A WAL handle that refuses every write ([`StoreError::ReadOnly`]), for
    /// a store opened read-only. Creates nothing; `dir` need not exist.
    pub fn read_only(dir: &Path) -> Result<Wal, StoreError> {
        // The writer slot holds a read-only handle that is never written:
        // every writing method checks `read_only` first.
        let file = File::open("/dev/null").map_err(StoreError::io("open", "/dev/null"))?;
        let w = Writer {
            broken: false,
            file,
            path: dir.to_path_buf(),
            seq: 0,
            len: 0,
            dirty: false,
            sealed_bytes: 0,
            scratch: Vec::new(),
        };
        Ok(Wal {
            dir: dir.to_path_buf(),
            opts: WalOptions::default(),
            w: Mutex::new(w),
            read_only: true,
            synced: Mutex::new(None),
            failed: AtomicBool::new(false),
            failure: Mutex::new(None),
        })
    }

    /// True for a handle from [`Wal::read_only`].
    pub fn is_read_only(&self) -> bool {
        self.read_only
    }

    fn check_writable(&self) -> Result<(), StoreError> {
        if self.read_only {
            return Err(StoreError::ReadOnly { path: self.dir.clone() });
        }
        if self.failed.load(Ordering::Acquire) {
            return Err(self.sync_failure());
        }
        Ok(())
    }

    /// Records a failed `fdatasync` that may have lost published records.
    fn fail(&self, e: &std::io::Error) {
        tracing::error!(dir = %self.dir.display(), error = %e, "WAL fsync failed; refusing writes until restart");
        *self.failure.lock().unwrap_or_else(|p| p.into_inner()) = Some((e.kind(), e.to_string()));
        self.failed.store(true, Ordering::Release);
    }

    /// The error every write gets once a group `fdatasync` failed.
    fn sync_failure(&self) -> StoreError {
        let failure = self.failure.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let (kind, msg) = failure.unwrap_or((std::io::ErrorKind::Other, String::new()));
        StoreError::Io {
            op: "fsync failed earlier (the WAL refuses writes until restart)",
            path: self.dir.clone(),
            source: std::io::Error::new(kind, msg),
        }
    }

    fn create_segment(dir: &Path, seq: u64, sealed_bytes: u64) -> Result<Writer, StoreError> {
        let path = dir.join(layout::wal_segment_name(seq));
        let mut file =
            OpenOptions::new().create_new(true).write(true).open(&path).map_err(StoreError::io("create", &path))?;
        let mut header = [0u8; HEADER_LEN as usize];
        header[..8].copy_from_slice(MAGIC);
        header[8] = VERSION;
        let res = file
            .write_all(&header)
            .map_err(StoreError::io("write", &path))
            .and_then(|()| file.sync_all().map_err(StoreError::io("fsync", &path)))
            .and_then(|()| sync_dir(dir));
        if let Err(e) = res {
            // A segment without a durable header must not stay behind: the
            // next attempt (e.g. once a full disk has space again) creates
            // the same name with `create_new`.
            drop(file);
            let _ = fs::remove_file(&path);
            return Err(e);
        }
        Ok(Writer { file, path, seq, len: HEADER_LEN, dirty: false, sealed_bytes, scratch: Vec::new(), broken: false })
    }

    /// Appends one record; returns once it is durable per the fsync policy.
    pub fn append(&self, typ: u8, payload: &[u8]) -> Result<(), StoreError> {
        self.append_with(typ, |rec| rec.extend_from_slice(payload))
    }

    /// Appends one record whose payload `encode` writes (appends) straight
    /// into the WAL's reused record buffer, so a large payload is neither
    /// built in a buffer of its own nor copied into the record; returns once
    /// the record is durable per the fsync policy. `encode` runs under the
    /// WAL's lock and must only append.
    pub fn append_with(&self, typ: u8, encode: impl FnOnce(&mut Vec<u8>)) -> Result<(), StoreError> {
        self.write_record_with(typ, self.opts.fsync == FsyncPolicy::Always, |_, rec| encode(rec)).map(|_| ())
    }

    /// Appends one record without waiting for the disk: the record is in
    /// the segment file (the OS page cache) when this returns. Call
    /// [`Wal::sync_through`] with the returned position before
    /// acknowledging it. Lets concurrent writers share one `fdatasync`
    /// (group commit) instead of taking turns at one each.
    pub fn append_unsynced(&self, typ: u8, payload: &[u8]) -> Result<WalPos, StoreError> {
        self.write_record_with(typ, false, |_, rec| rec.extend_from_slice(payload))
    }

    /// [`Wal::append_unsynced`] of the payload `encode(segment, buf)`
    /// appends to `buf`, where `segment` is the number of the segment the
    /// record goes to (a writer that refers back to earlier records, such
    /// as the metrics series declarations, must do so within one segment:
    /// older segments are deleted once persisted elsewhere).
    pub fn append_unsynced_with(&self, typ: u8, encode: impl FnOnce(u64, &mut Vec<u8>)) -> Result<WalPos, StoreError> {
        self.write_record_with(typ, false, encode)
    }

    /// Position after the last record written: what [`Wal::sync_through`]
    /// must reach before anything read from records written so far (e.g. a
    /// write found to repeat them) is acknowledged.
    pub fn written_pos(&self) -> Result<WalPos, StoreError> {
        self.check_writable()?;
        let w = self.w.lock().unwrap_or_else(|p| p.into_inner());
        Ok(WalPos { seq: w.seq, end: w.len })
    }

    /// Returns once every record up to `pos` is durable per the fsync
    /// policy: with [`FsyncPolicy::Always`], after an `fdatasync` that
    /// started after the record was written (one sync covers every writer
    /// waiting here); otherwise at once. If that `fdatasync` fails, the
    /// records written since the last good one may be lost while their
    /// writers may have published them (e.g. into the metrics head), so
    /// from then on every write is refused until restart, when replay reads
    /// what really is on disk.
    pub fn sync_through(&self, pos: WalPos) -> Result<(), StoreError> {
        if self.opts.fsync != FsyncPolicy::Always {
            return Ok(());
        }
        let mut st = self.synced.lock().unwrap_or_else(|p| p.into_inner());
        self.check_writable()?;
        if st.is_some_and(|s| s >= pos) {
            return Ok(());
        }
        let (file, now) = {
            let w = self.w.lock().unwrap_or_else(|p| p.into_inner());
            if w.seq > pos.seq {
                // sealed (and synced) when the next segment was started
                return Ok(());
            }
            (w.file.try_clone().map_err(StoreError::io("dup", &w.path))?, WalPos { seq: w.seq, end: w.len })
        };
        if let Err(e) = file.sync_data() {
            self.fail(&e);
            return Err(self.sync_failure());
        }
        *st = Some(now);
        let mut w = self.w.lock().unwrap_or_else(|p| p.into_inner());
        if w.seq == now.seq && w.len == now.end {
            w.dirty = false;
        }
        Ok(())
    }

    /// `fdatasync` of the current segment under the writer lock. If it
    /// fails while records of [`Wal::append_unsynced`] wait for a group
    /// sync (`dirty` under [`FsyncPolicy::Always`]), those may be lost
    /// although already published: refuse writes from now on, as
    /// [`Wal::sync_through`] does.
    fn sync_writer(&self, w: &mut Writer) -> Result<(), StoreError> {
        w.file.sync_data().map_err(|e| {
            if w.dirty && self.opts.fsync == FsyncPolicy::Always {
                self.fail(&e);
            }
            StoreError::io("fsync", &w.path)(e)
        })
    }

    /// Writes one record whose payload `encode(segment, buf)` appends to
    /// `buf`, with `fdatasync` when `sync`; returns where it ends.
    fn write_record_with(
        &self,
        typ: u8,
        sync: bool,
        encode: impl FnOnce(u64, &mut Vec<u8>),
    ) -> Result<WalPos, StoreError> {
        self.check_writable()?;
        let mut w = self.w.lock().unwrap_or_else(|p| p.into_inner());
        if w.len >= self.opts.segment_bytes || w.broken {
            // Seal the current segment durably before starting the next one.
            self.sync_writer(&mut w)?;
            let sealed = w.sealed_bytes + w.len;
            let next = Self::create_segment(&self.dir, w.seq + 1, sealed)?;
            *w = next;
        }
        let mut rec = std::mem::take(&mut w.scratch);
        rec.clear();
        rec.extend_from_slice(&[0; RECORD_HEADER_LEN]);
        encode(w.seq, &mut rec);
        let len = rec.len() - RECORD_HEADER_LEN;
        if len > MAX_RECORD_LEN {
            w.scratch = rec;
            return Err(StoreError::Corrupt {
                path: self.dir.clone(),
                offset: 0,
                reason: format!("record of {len} bytes exceeds the maximum {MAX_RECORD_LEN}"),
            });
        }
        rec[8] = typ;
        let crc = crc32c::crc32c(&rec[8..]);
        rec[..4].copy_from_slice(&(len as u32).to_le_bytes());
        rec[4..8].copy_from_slice(&crc.to_le_bytes());
        let mut res = w.file.write_all(&rec).map_err(StoreError::io("write", &w.path));
        let written = rec.len() as u64;
        // Keep the buffer for the next record, unless one huge record would
        // pin its memory for good.
        if rec.capacity() <= 16 << 20 {
            w.scratch = rec;
        }
        if res.is_ok() && sync {
            res = self.sync_writer(&mut w);
        }
        if let Err(e) = res {
            // Not acknowledged, so it must not come back at replay either:
            // cut a partial (torn) or unsynced record off and move the write
            // position back, so the next record follows the last good one
            // with no gap (e.g. after a full disk has space again).
            let good = w.len;
            w.undo_to(good);
            return Err(e);
        }
        w.len += written;
        w.dirty = !sync;
        Ok(WalPos { seq: w.seq, end: w.len })
    }

    /// Seals the current segment (fsync) and starts the next one; returns the
    /// sealed segment's number. Every record appended before this call is in
    /// a segment `≤` the returned number, every later one after it.
    pub fn rotate(&self) -> Result<u64, StoreError> {
        self.check_writable()?;
        let mut w = self.w.lock().unwrap_or_else(|p| p.into_inner());
        self.sync_writer(&mut w)?;
        let sealed_seq = w.seq;
        let sealed = w.sealed_bytes + w.len;
        let next = Self::create_segment(&self.dir, w.seq + 1, sealed)?;
        *w = next;
        Ok(sealed_seq)
    }

    /// Deletes the sealed segments numbered `≤ through` (their data is
    /// persisted elsewhere). The current segment is never deleted.
    pub fn remove_through(&self, through: u64) -> Result<(), StoreError> {
        self.check_writable()?;
        let mut w = self.w.lock().unwrap_or_else(|p| p.into_inner());
        let mut remaining = 0;
        for (n, path) in list_segments(&self.dir)? {
            if n == w.seq {
                continue;
            }
            if n <= through {
                fs::remove_file(&path).map_err(StoreError::io("remove", &path))?;
            } else {
                remaining += fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
            }
        }
        w.sealed_bytes = remaining;
        Ok(())
    }

    /// Number of the segment appends currently go to.
    pub fn current_segment(&self) -> u64 {
        self.w.lock().unwrap_or_else(|p| p.into_inner()).seq
    }

    /// Flushes written records to stable storage if any are pending.
    pub fn sync(&self) -> Result<(), StoreError> {
        let mut w = self.w.lock().unwrap_or_else(|p| p.into_inner());
        if w.dirty {
            self.sync_writer(&mut w)?;
            w.dirty = false;
        }
        Ok(())
    }

    /// Bytes in all segments on disk.
    pub fn size_bytes(&self) -> u64 {
        let w = self.w.lock().unwrap_or_else(|p| p.into_inner());
        w.sealed_bytes + w.len
    }

    /// The fsync policy in force.
    pub fn fsync_policy(&self) -> FsyncPolicy {
        self.opts.fsync
    }
}

/// How often [`FsyncPolicy::Interval`] flushes when no interval is given.
pub const DEFAULT_FSYNC_INTERVAL: Duration = Duration::from_secs(1);

#[cfg(test)]
mod tests {
    use super::*;

    fn collect(dir: &Path, opts: WalOptions) -> (Wal, Vec<(u8, Vec<u8>)>, ReplayStats) {
        let mut got = Vec::new();
        let (wal, stats) = Wal::open(dir, opts, 0, |t, p| {
            got.push((t, p.to_vec()));
            Ok(())
        })
        .unwrap();
        (wal, got, stats)
    }

    #[test]
    fn append_and_replay() {
        let d = tempfile::tempdir().unwrap();
        let (wal, got, _) = collect(d.path(), WalOptions::default());
        assert!(got.is_empty());
        wal.append(1, b"one").unwrap();
        wal.append(2, b"").unwrap();
        wal.append(3, &vec![7u8; 100_000]).unwrap();
        drop(wal);
        let (wal, got, stats) = collect(d.path(), WalOptions::default());
        assert_eq!(got.len(), 3);
        assert_eq!(got[0], (1, b"one".to_vec()));
        assert_eq!(got[2].1.len(), 100_000);
        assert_eq!(stats.torn_tail_bytes, 0);
        wal.append(4, b"four").unwrap();
        drop(wal);
        let (_, got, stats) = collect(d.path(), WalOptions::default());
        assert_eq!(got.len(), 4);
        assert_eq!(stats.segments, 2);
    }

    #[test]
    fn group_commit_covers_every_writer() {
        let d = tempfile::tempdir().unwrap();
        // small segments: some records wait for a sync across a rotation
        let opts = WalOptions { fsync: FsyncPolicy::Always, segment_bytes: 4096 };
        let (wal, _, _) = collect(d.path(), opts.clone());
        std::thread::scope(|sc| {
            for k in 0..4u8 {
                let wal = &wal;
                sc.spawn(move || {
                    for i in 0..50u8 {
                        let pos = wal.append_unsynced(1, &[k, i, 0, 0, 0, 0, 0, 0, 0, 0]).unwrap();
                        assert!(wal.written_pos().unwrap() >= pos);
                        wal.sync_through(pos).unwrap();
                        // durable: covered by a group sync or sealed by a rotation
                        let synced = *wal.synced.lock().unwrap();
                        assert!(synced.is_some_and(|s| s >= pos) || wal.current_segment() > pos.seq);
                    }
                });
            }
        });
        wal.append(2, b"synced").unwrap();
        drop(wal);
        let (_, got, stats) = collect(d.path(), opts);
        assert_eq!(stats.torn_tail_bytes, 0);
        assert_eq!(got.len(), 201);
        for k in 0..4u8 {
            // each writer's records replay in its order
            let mine: Vec<u8> = got.iter().filter(|(t, p)| *t == 1 && p[0] == k).map(|(_, p)| p[1]).collect();
            assert_eq!(mine, (0..50).collect::<Vec<u8>>());
        }
    }

    #[test]
    fn segments_rotate() {
        let d = tempfile::tempdir().unwrap();
        let opts = WalOptions { fsync: FsyncPolicy::Never, segment_bytes: 100 };
        let (wal, _, _) = collect(d.path(), opts.clone());
        for i in 0..10u8 {
            wal.append(1, &[i; 50]).unwrap();
        }
        assert!(wal.size_bytes() > 500);
        drop(wal);
        let (_, got, stats) = collect(d.path(), opts);
        assert_eq!(got.len(), 10);
        assert!(stats.segments >= 5);
        assert_eq!(got[9].1, vec![9u8; 50]);
    }

    /// Cut the newest segment at every possible length: replay must always
    /// succeed with exactly the records that were complete.
    #[test]
    fn torn_tail_at_every_offset() {
        let d = tempfile::tempdir().unwrap();
        let (wal, _, _) = collect(d.path(), WalOptions::default());
        let recs: Vec<Vec<u8>> = (0..5u8).map(|i| vec![i; 10 + i as usize]).collect();
        for r in &recs {
            wal.append(9, r).unwrap();
        }
        drop(wal);
        let seg = d.path().join(layout::wal_segment_name(1));
        let full = fs::read(&seg).unwrap();
        // record boundaries
        let mut ends = vec![HEADER_LEN as usize];
        for r in &recs {
            let last = *ends.last().unwrap();
            ends.push(last + RECORD_HEADER_LEN + r.len());
        }
        for cut in 0..=full.len() {
            let d2 = tempfile::tempdir().unwrap();
            fs::write(d2.path().join(layout::wal_segment_name(1)), &full[..cut]).unwrap();
            let (_, got, stats) = collect(d2.path(), WalOptions::default());
            let complete = ends.iter().skip(1).filter(|&&e| e <= cut).count();
            assert_eq!(got.len(), complete, "cut at {cut}");
            if cut >= HEADER_LEN as usize {
                assert_eq!(stats.torn_tail_bytes as usize, cut - ends[complete], "cut at {cut}");
            }
        }
    }

    #[test]
    fn flipped_bit_in_newest_segment_truncates_from_there() {
        let d = tempfile::tempdir().unwrap();
        let (wal, _, _) = collect(d.path(), WalOptions::default());
        wal.append(1, b"aaaa").unwrap();
        wal.append(1, b"bbbb").unwrap();
        wal.append(1, b"cccc").unwrap();
        drop(wal);
        let seg = d.path().join(layout::wal_segment_name(1));
        let mut bytes = fs::read(&seg).unwrap();
        let second_payload = HEADER_LEN as usize + (RECORD_HEADER_LEN + 4) + RECORD_HEADER_LEN;
        bytes[second_payload] ^= 1;
        fs::write(&seg, &bytes).unwrap();
        let (_, got, stats) = collect(d.path(), WalOptions::default());
        assert_eq!(got, vec![(1, b"aaaa".to_vec())]);
        assert_eq!(stats.torn_tail_bytes, 2 * (RECORD_HEADER_LEN as u64 + 4));
    }

    #[test]
    fn corrupt_older_segment_is_skipped_and_counted() {
        let d = tempfile::tempdir().unwrap();
        let (wal, _, _) = collect(d.path(), WalOptions::default());
        wal.append(1, b"aaaa").unwrap();
        wal.append(1, b"bbbb").unwrap();
        drop(wal);
        let (wal, _, _) = collect(d.path(), WalOptions::default());
        wal.append(1, b"cccc").unwrap();
        drop(wal);
        let seg = d.path().join(layout::wal_segment_name(1));
        let mut bytes = fs::read(&seg).unwrap();
        let n = bytes.len();
        bytes[n - 1] ^= 0xff;
        fs::write(&seg, &bytes).unwrap();
        let (_, got, stats) = collect(d.path(), WalOptions::default());
        assert_eq!(got.iter().map(|g| g.1.clone()).collect::<Vec<_>>(), vec![b"aaaa".to_vec(), b"cccc".to_vec()]);
        assert_eq!(stats.corrupt_segments, 1);
    }

    #[test]
    fn rotate_remove_and_skip() {
        let d = tempfile::tempdir().unwrap();
        let (wal, _, _) = collect(d.path(), WalOptions::default());
        wal.append(1, b"old").unwrap();
        let sealed = wal.rotate().unwrap();
        assert_eq!(sealed, 1);
        wal.append(1, b"new").unwrap();
        // a crash before remove_through: reopening with skip_through = sealed
        // replays only the newer record
        drop(wal);
        let mut got = Vec::new();
        let (wal, _) = Wal::open(d.path(), WalOptions::default(), sealed, |_, p| {
            got.push(p.to_vec());
            Ok(())
        })
        .unwrap();
        assert_eq!(got, vec![b"new".to_vec()]);
        assert!(!d.path().join(layout::wal_segment_name(1)).exists());
        let cur = wal.current_segment();
        wal.append(1, b"newer").unwrap();
        let s2 = wal.rotate().unwrap();
        assert_eq!(s2, cur);
        wal.remove_through(s2).unwrap();
        wal.append(1, b"newest").unwrap();
        drop(wal);
        let (_, got, _) = collect(d.path(), WalOptions::default());
        assert_eq!(got, vec![(1, b"newest".to_vec())]);
    }

    /// Skipping past every existing segment still numbers new segments
    /// after the skipped ones, so a block's `wal_through` stays meaningful.
    #[test]
    fn numbering_continues_after_skip() {
        let d = tempfile::tempdir().unwrap();
        let (wal, _) = Wal::open(d.path(), WalOptions::default(), 41, |_, _| Ok(())).unwrap();
        assert_eq!(wal.current_segment(), 42);
    }

    #[test]
    fn unknown_version_is_a_typed_error() {
        let d = tempfile::tempdir().unwrap();
        let mut h = [0u8; 16];
        h[..8].copy_from_slice(MAGIC);
        h[8] = 99;
        fs::write(d.path().join(layout::wal_segment_name(1)), h).unwrap();
        let r = Wal::open(d.path(), WalOptions::default(), 0, |_, _| Ok(()));
        assert!(matches!(r, Err(StoreError::UnsupportedVersion { version: 99, .. })));
    }
}
