//! The on-disk queue of log batches waiting for the receiver's
//! acknowledgement. Byte layout, limits and the crash-consistency argument:
//! `docs/format/collector.md`.
//!
//! Every batch of log lines is encoded once, as the Loki push body it will
//! be sent as (protobuf, snappy block format), and appended to the queue
//! with the positions it reaches (file positions, journal cursor) before it
//! is sent. The sender sends records in order; once the receiver
//! acknowledged a record its positions are merged into `positions.json`
//! together with the record's sequence number (`queue_acked`), and
//! segments whose records are all acknowledged are deleted.
//!
//! - **Restart**: records after `queue_acked` are sent again, unchanged
//!   (same timestamps, so a receiver that already stored them drops the
//!   identical copies), and reading resumes after the last queued record.
//! - **Receiver down**: reading goes on into the queue, up to
//!   `queue_max_bytes`; beyond that the oldest records are dropped, their
//!   lines counted in `cairn_collector_queue_dropped_lines_total`, never
//!   silently.
//! - **Corruption**: a record failing its length or CRC check ends its
//!   segment's valid prefix (a torn write); the rest of the segment and
//!   every later segment are discarded (their lines are read again from
//!   the files), and the event is logged.

use std::collections::{BTreeMap, VecDeque};
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use crate::tail::Position;

/// Directory of the queue inside the state directory.
pub const QUEUE_DIR: &str = "queue";
/// File name suffix of segments: `<first seq, 20 digits>.seg`.
pub const SEGMENT_SUFFIX: &str = ".seg";
/// First bytes of every segment.
pub const SEGMENT_MAGIC: [u8; 8] = *b"CAIRNLQ\0";
/// Current segment format version.
pub const SEGMENT_VERSION: u8 = 1;
/// Bytes of the segment header: magic, version, 7 reserved zero bytes.
pub const HEADER_LEN: usize = 16;
/// Bytes before each record body: length and CRC32C, both u32 LE.
pub const RECORD_PREFIX: usize = 8;
/// Largest record body accepted when reading (a larger length is corruption).
pub const MAX_RECORD: usize = 256 << 20;

/// Queue errors; every one names its file.
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    /// Reading or writing a queue file failed.
    #[error("queue file {path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The I/O error.
        source: io::Error,
    },
    /// A segment was written by a newer format version.
    #[error("queue segment {path} has version {version}; this build reads version {SEGMENT_VERSION}")]
    UnknownVersion {
        /// The segment.
        path: PathBuf,
        /// Its version.
        version: u8,
    },
}

fn ioe(path: &Path) -> impl FnOnce(io::Error) -> QueueError + '_ {
    move |source| QueueError::Io { path: path.to_path_buf(), source }
}

/// Where reading stands after a batch: file positions and journal cursor.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Checkpoint {
    /// Positions by path, for the files that had lines in the batch.
    pub positions: BTreeMap<PathBuf, Position>,
    /// Journal cursor after the batch's last journal entry, if any.
    pub cursor: Option<String>,
}

impl Checkpoint {
    /// Merges a later checkpoint into this one.
    pub fn merge(&mut self, later: &Checkpoint) {
        for (p, pos) in &later.positions {
            self.positions.insert(p.clone(), *pos);
        }
        if later.cursor.is_some() {
            self.cursor.clone_from(&later.cursor);
        }
    }
}

/// What the queue knows of one record.
#[derive(Debug, Clone)]
pub struct RecordMeta {
    /// Sequence number, from 1, increasing by 1.
    pub seq: u64,
    /// Log lines in the record.
    pub lines: u64,
    /// Bytes of those lines.
    pub bytes: u64,
    /// Positions reached with this record.
    pub checkpoint: Checkpoint,
    segment: u64,
    /// Offset of the payload in the segment, and its length.
    payload_at: u64,
    payload_len: usize,
    /// Bytes the record takes on disk (prefix included).
    disk_len: u64,
}

#[derive(Debug)]
struct Segment {
    first_seq: u64,
    last_seq: u64,
    path: PathBuf,
    len: u64,
}

/// Records given up because the queue was full.
#[derive(Debug, Default)]
pub struct Dropped {
    /// Number of records dropped.
    pub records: u64,
    /// Lines in them.
    pub lines: u64,
    /// Bytes of those lines.
    pub bytes: u64,
    /// Their merged checkpoint.
    pub checkpoint: Checkpoint,
    /// Sequence number of the last one.
    pub last_seq: u64,
}

/// The queue. Not thread-safe by itself: share it behind a mutex. All
/// methods do blocking file I/O.
#[derive(Debug)]
pub struct Queue {
    dir: PathBuf,
    max_bytes: u64,
    segment_bytes: u64,
    segments: VecDeque<Segment>,
    records: VecDeque<RecordMeta>,
    next_seq: u64,
    acked: u64,
    live_bytes: u64,
    /// Append handle of the last segment.
    active: Option<(u64, File)>,
    scratch: Vec<u8>,
    /// `fdatasync` each record before [`Queue::push`] returns.
    fsync: bool,
}

impl Queue {
    /// Opens (creating) the queue in `dir`, keeping at most about
    /// `max_bytes` of records; records up to `acked` (from
    /// `positions.json`) were delivered and are skipped.
    pub fn open(dir: &Path, max_bytes: u64, acked: u64) -> Result<Queue, QueueError> {
        std::fs::create_dir_all(dir).map_err(ioe(dir))?;
        let mut names: Vec<(u64, PathBuf)> = Vec::new();
        for e in std::fs::read_dir(dir).map_err(ioe(dir))? {
            let e = e.map_err(ioe(dir))?;
            let name = e.file_name().to_string_lossy().into_owned();
            if let Some(n) = name.strip_suffix(SEGMENT_SUFFIX).and_then(|n| n.parse::<u64>().ok()) {
                names.push((n, e.path()));
            }
        }
        names.sort();
        let segment_bytes = (max_bytes / 8).clamp(1 << 20, 64 << 20);
        let mut q = Queue {
            dir: dir.to_path_buf(),
            max_bytes: max_bytes.max(1),
            segment_bytes,
            segments: VecDeque::new(),
            records: VecDeque::new(),
            next_seq: acked + 1,
            acked,
            live_bytes: 0,
            active: None,
            scratch: Vec::new(),
            fsync: true,
        };
        let mut broken = false;
        let mut prev: Option<u64> = None;
        for (first, path) in names {
            if broken || prev.is_some_and(|p| p + 1 != first) {
                broken = true;
                tracing::warn!(path = %path.display(), "queue segment after a damaged or missing one discarded; its lines are read again from the files");
                std::fs::remove_file(&path).map_err(ioe(&path))?;
                continue;
            }
            let (seg, complete) = q.scan(first, &path)?;
            broken = !complete;
            match seg {
                Some(s) => {
                    prev = Some(s.last_seq);
                    if s.last_seq > acked {
                        q.segments.push_back(s);
                    } else {
                        std::fs::remove_file(&path).map_err(ioe(&path))?;
                    }
                }
                None => {
                    broken = true;
                    std::fs::remove_file(&path).map_err(ioe(&path))?;
                }
            }
        }
        // The first unacknowledged record must follow the acknowledged one;
        // after a gap (lost segment) nothing queued can be trusted to be in
        // order: drop it all and read those lines again from the files.
        if q.records.front().is_some_and(|r| r.seq != acked + 1) {
            tracing::warn!(
                acked,
                first = q.records.front().map(|r| r.seq),
                "queue does not continue positions.json; discarding it"
            );
            for s in q.segments.drain(..) {
                std::fs::remove_file(&s.path).map_err(ioe(&s.path))?;
            }
            q.records.clear();
            q.live_bytes = 0;
        }
        q.next_seq = q.next_seq.max(acked + 1);
        Ok(q)
    }

    /// Reads one segment's valid records into `self.records`; truncates a
    /// torn tail. Returns the segment (None if it holds no record) and
    /// whether it was intact.
    fn scan(&mut self, first: u64, path: &Path) -> Result<(Option<Segment>, bool), QueueError> {
        let data = std::fs::read(path).map_err(ioe(path))?;
        if data.len() < HEADER_LEN || data[..8] != SEGMENT_MAGIC {
            tracing::warn!(path = %path.display(), "queue segment without a valid header discarded");
            return Ok((None, false));
        }
        if data[8] != SEGMENT_VERSION {
            return Err(QueueError::UnknownVersion { path: path.to_path_buf(), version: data[8] });
        }
        let mut at = HEADER_LEN;
        let mut last: Option<u64> = None;
        let mut complete = true;
        while at < data.len() {
            let meta = parse_record(&data, at).and_then(|(body, next)| Some((decode_meta(body)?, next)));
            let Some((mut meta, next)) = meta else {
                complete = false;
                break;
            };
            // Records are numbered without gaps, from the segment's name on.
            if meta.seq != last.map_or(first, |l| l + 1) {
                complete = false;
                break;
            }
            meta.segment = first;
            meta.payload_at += (at + RECORD_PREFIX) as u64;
            meta.disk_len = (next - at) as u64;
            last = Some(meta.seq);
            self.next_seq = meta.seq + 1;
            if meta.seq > self.acked {
                self.live_bytes += meta.disk_len;
                self.records.push_back(meta);
            }
            at = next;
        }
        if !complete {
            tracing::warn!(
                path = %path.display(), offset = at,
                "queue segment damaged (torn write?); keeping its valid prefix, later records are read again from the files"
            );
            let f = OpenOptions::new().write(true).open(path).map_err(ioe(path))?;
            f.set_len(at as u64).map_err(ioe(path))?;
        }
        Ok((
            last.map(|l| Segment { first_seq: first, last_seq: l, path: path.to_path_buf(), len: at as u64 }),
            complete,
        ))
    }

    /// Whether each appended record is made durable (`fdatasync`) before
    /// [`Queue::push`] returns, i.e. before it is sent (default on). Off,
    /// a power loss can take the unsynced tail of the queue, and lines of
    /// it that were already delivered are then read and stored again.
    pub fn set_fsync(&mut self, on: bool) {
        self.fsync = on;
    }

    /// Records not yet acknowledged.
    pub fn len(&self) -> usize {
        self.records.len()
    }

    /// True when every record was acknowledged.
    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    /// Bytes of unacknowledged records on disk.
    pub fn live_bytes(&self) -> u64 {
        self.live_bytes
    }

    /// Last sequence number acknowledged or dropped.
    pub fn acked(&self) -> u64 {
        self.acked
    }

    /// The checkpoint of every unacknowledged record, merged in order:
    /// where reading resumes after a restart, beyond `positions.json`.
    pub fn pending_checkpoint(&self) -> Checkpoint {
        let mut c = Checkpoint::default();
        for r in &self.records {
            c.merge(&r.checkpoint);
        }
        c
    }

    /// Appends a record; if the queue then holds more than its limit, the
    /// oldest records (never the new one) are dropped and returned.
    pub fn push(
        &mut self,
        lines: u64,
        bytes: u64,
        checkpoint: Checkpoint,
        payload: &[u8],
    ) -> Result<Dropped, QueueError> {
        let seq = self.next_seq;
        // The record prefix and metadata go through `scratch`; the payload
        // is written from the caller's buffer (no copy).
        let mut head = std::mem::take(&mut self.scratch);
        head.clear();
        head.extend_from_slice(&[0u8; RECORD_PREFIX]);
        encode_meta(&mut head, seq, lines, bytes, &checkpoint);
        let meta_len = head.len() - RECORD_PREFIX;
        let body_len = meta_len + payload.len();
        let len =
            u32::try_from(body_len).ok().filter(|&l| (l as usize) <= MAX_RECORD).ok_or_else(|| QueueError::Io {
                path: self.dir.clone(),
                source: io::Error::new(io::ErrorKind::InvalidInput, "batch too large for the queue"),
            })?;
        let crc = crc32c::crc32c_append(crc32c::crc32c(&head[RECORD_PREFIX..]), payload);
        head[..4].copy_from_slice(&len.to_le_bytes());
        head[4..RECORD_PREFIX].copy_from_slice(&crc.to_le_bytes());
        let needs_new = self.segments.back().is_none_or(|s| s.len >= self.segment_bytes) || self.active.is_none();
        if needs_new {
            self.start_segment(seq)?;
        }
        let Some(seg) = self.segments.back_mut() else { unreachable!("a segment was just started") };
        let Some((_, file)) = &mut self.active else { unreachable!("a segment was just started") };
        let at = seg.len;
        let res = file
            .write_all_at(&head, at)
            .and_then(|()| file.write_all_at(payload, at + head.len() as u64))
            .and_then(|()| if self.fsync { file.sync_data() } else { Ok(()) });
        if let Err(source) = res {
            // Leave no half record behind.
            let _ = file.set_len(at);
            self.active = None;
            self.scratch = head;
            return Err(QueueError::Io { path: seg.path.clone(), source });
        }
        let disk_len = (RECORD_PREFIX + body_len) as u64;
        seg.len += disk_len;
        seg.last_seq = seq;
        self.records.push_back(RecordMeta {
            seq,
            lines,
            bytes,
            checkpoint,
            segment: seg.first_seq,
            payload_at: at + head.len() as u64,
            payload_len: payload.len(),
            disk_len,
        });
        self.live_bytes += disk_len;
        self.next_seq += 1;
        self.scratch = head;

        let mut dropped = Dropped::default();
        while self.live_bytes > self.max_bytes && self.records.len() > 1 {
            let Some(r) = self.records.pop_front() else { break };
            self.live_bytes -= r.disk_len;
            self.acked = r.seq;
            dropped.records += 1;
            dropped.lines += r.lines;
            dropped.bytes += r.bytes;
            dropped.last_seq = r.seq;
            dropped.checkpoint.merge(&r.checkpoint);
        }
        Ok(dropped)
    }

    fn start_segment(&mut self, first_seq: u64) -> Result<(), QueueError> {
        let path = self.dir.join(format!("{first_seq:020}{SEGMENT_SUFFIX}"));
        let mut f = OpenOptions::new().create(true).write(true).truncate(true).open(&path).map_err(ioe(&path))?;
        let mut header = [0u8; HEADER_LEN];
        header[..8].copy_from_slice(&SEGMENT_MAGIC);
        header[8] = SEGMENT_VERSION;
        f.write_all(&header).map_err(ioe(&path))?;
        // The new segment's name must survive a crash before its records
        // are relied on: make the directory entry durable.
        File::open(&self.dir).and_then(|d| d.sync_all()).map_err(ioe(&self.dir))?;
        self.segments.push_back(Segment {
            first_seq,
            last_seq: first_seq.saturating_sub(1),
            path,
            len: HEADER_LEN as u64,
        });
        self.active = Some((first_seq, f));
        Ok(())
    }

    /// The oldest unacknowledged record.
    pub fn head(&self) -> Option<&RecordMeta> {
        self.records.front()
    }

    /// Reads a record's payload (the Loki push body).
    pub fn payload(&self, r: &RecordMeta) -> Result<Vec<u8>, QueueError> {
        let seg = self.segments.iter().find(|s| s.first_seq == r.segment);
        let Some(seg) = seg else {
            return Err(QueueError::Io {
                path: self.dir.clone(),
                source: io::Error::new(io::ErrorKind::NotFound, format!("segment of record {} is gone", r.seq)),
            });
        };
        let f = File::open(&seg.path).map_err(ioe(&seg.path))?;
        let mut buf = vec![0u8; r.payload_len];
        f.read_exact_at(&mut buf, r.payload_at).map_err(ioe(&seg.path))?;
        Ok(buf)
    }

    /// Marks every record up to `seq` acknowledged; returns their merged
    /// checkpoint, or `None` if they were already acknowledged or dropped.
    /// Persist the checkpoint, then call [`Queue::remove_done_segments`].
    pub fn ack(&mut self, seq: u64) -> Option<Checkpoint> {
        if seq <= self.acked {
            return None;
        }
        let mut c = Checkpoint::default();
        while self.records.front().is_some_and(|r| r.seq <= seq) {
            let Some(r) = self.records.pop_front() else { break };
            self.live_bytes -= r.disk_len;
            c.merge(&r.checkpoint);
        }
        self.acked = seq;
        Some(c)
    }

    /// Deletes segments whose records are all acknowledged (call once
    /// `acked` is persisted).
    pub fn remove_done_segments(&mut self) -> Result<(), QueueError> {
        while let Some(s) = self.segments.front() {
            let is_active = self.active.as_ref().is_some_and(|(f, _)| *f == s.first_seq);
            if s.last_seq > self.acked || (is_active && s.len < self.segment_bytes) {
                break;
            }
            if is_active {
                self.active = None;
            }
            std::fs::remove_file(&s.path).map_err(ioe(&s.path))?;
            self.segments.pop_front();
        }
        Ok(())
    }
}

/// Checks the record at `at`: returns its body and the offset after it.
fn parse_record(data: &[u8], at: usize) -> Option<(&[u8], usize)> {
    let prefix = data.get(at..at + RECORD_PREFIX)?;
    let len = u32::from_le_bytes(prefix[..4].try_into().ok()?) as usize;
    let crc = u32::from_le_bytes(prefix[4..].try_into().ok()?);
    if len > MAX_RECORD {
        return None;
    }
    let body = data.get(at + RECORD_PREFIX..at + RECORD_PREFIX + len)?;
    (crc32c::crc32c(body) == crc).then_some((body, at + RECORD_PREFIX + len))
}

fn put_u32(out: &mut Vec<u8>, v: u32) {
    out.extend_from_slice(&v.to_le_bytes());
}

fn put_u64(out: &mut Vec<u8>, v: u64) {
    out.extend_from_slice(&v.to_le_bytes());
}

fn put_str(out: &mut Vec<u8>, s: &[u8]) {
    put_u32(out, s.len() as u32);
    out.extend_from_slice(s);
}

fn encode_meta(out: &mut Vec<u8>, seq: u64, lines: u64, bytes: u64, c: &Checkpoint) {
    put_u64(out, seq);
    put_u64(out, lines);
    put_u64(out, bytes);
    put_u32(out, c.positions.len() as u32);
    for (path, p) in &c.positions {
        put_str(out, path.as_os_str().as_bytes());
        put_u64(out, p.dev);
        put_u64(out, p.ino);
        put_u64(out, p.offset);
        put_u32(out, p.head_len);
        put_u64(out, p.head_hash);
    }
    match &c.cursor {
        Some(s) => {
            out.push(1);
            put_str(out, s.as_bytes());
        }
        None => out.push(0),
    }
}

struct Cur<'a>(&'a [u8]);

impl<'a> Cur<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Some(a)
    }
    fn u8(&mut self) -> Option<u8> {
        Some(self.take(1)?[0])
    }
    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_le_bytes(self.take(4)?.try_into().ok()?))
    }
    fn u64(&mut self) -> Option<u64> {
        Some(u64::from_le_bytes(self.take(8)?.try_into().ok()?))
    }
    fn bytes(&mut self) -> Option<&'a [u8]> {
        let n = self.u32()? as usize;
        self.take(n)
    }
}

/// Decodes a record body's metadata; `payload_at` is relative to the body.
fn decode_meta(body: &[u8]) -> Option<RecordMeta> {
    let mut c = Cur(body);
    let seq = c.u64()?;
    let lines = c.u64()?;
    let bytes = c.u64()?;
    let n = c.u32()?;
    let mut positions = BTreeMap::new();
    for _ in 0..n {
        // Paths are the OS's bytes (Unix: any bytes but NUL).
        let path = PathBuf::from(std::ffi::OsStr::from_bytes(c.bytes()?));
        let p = Position { dev: c.u64()?, ino: c.u64()?, offset: c.u64()?, head_len: c.u32()?, head_hash: c.u64()? };
        positions.insert(path, p);
    }
    let cursor = match c.u8()? {
        0 => None,
        1 => Some(String::from_utf8(c.bytes()?.to_vec()).ok()?),
        _ => return None,
    };
    let payload_at = (body.len() - c.0.len()) as u64;
    Some(RecordMeta {
        seq,
        lines,
        bytes,
        checkpoint: Checkpoint { positions, cursor },
        segment: 0,
        payload_at,
        payload_len: c.0.len(),
        disk_len: 0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cp(path: &str, offset: u64) -> Checkpoint {
        Checkpoint {
            positions: BTreeMap::from([(
                PathBuf::from(path),
                Position { dev: 1, ino: 2, offset, head_len: 3, head_hash: 4 },
            )]),
            cursor: Some(format!("s=abc;i={offset}")),
        }
    }

    #[test]
    fn push_ack_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let mut q = Queue::open(dir.path(), 1 << 30, 0).unwrap();
        assert!(q.is_empty());
        for i in 1..=3u64 {
            let d = q.push(i, i * 10, cp("/a.log", i * 100), format!("payload {i}").as_bytes()).unwrap();
            assert_eq!(d.records, 0);
        }
        assert_eq!(q.payload(q.head().unwrap()).unwrap(), b"payload 1");
        let c = q.ack(1).unwrap();
        assert_eq!(c.positions[Path::new("/a.log")].offset, 100);
        assert!(q.ack(1).is_none());
        q.remove_done_segments().unwrap();
        drop(q);

        // Reopened with `acked` = 1 as positions.json would say.
        let mut q = Queue::open(dir.path(), 1 << 30, 1).unwrap();
        assert_eq!(q.len(), 2);
        let h = q.head().unwrap().clone();
        assert_eq!((h.seq, h.lines, h.bytes), (2, 2, 20));
        assert_eq!(q.payload(&h).unwrap(), b"payload 2");
        let pc = q.pending_checkpoint();
        assert_eq!(pc.positions[Path::new("/a.log")].offset, 300);
        assert_eq!(pc.cursor.as_deref(), Some("s=abc;i=300"));
        q.push(4, 40, cp("/b.log", 7), b"payload 4").unwrap();
        assert_eq!(q.head().unwrap().seq, 2);
        q.ack(4).unwrap();
        q.remove_done_segments().unwrap();
        assert!(q.is_empty());
        assert_eq!(q.live_bytes(), 0);
        let q = Queue::open(dir.path(), 1 << 30, 4).unwrap();
        assert!(q.is_empty());
        assert_eq!(q.next_seq, 5);
    }

    #[test]
    fn full_queue_drops_oldest_and_reports_it() {
        let dir = tempfile::tempdir().unwrap();
        let payload = vec![7u8; 400_000];
        let mut q = Queue::open(dir.path(), 1_000_000, 0).unwrap();
        let mut dropped = Vec::new();
        for i in 1..=5u64 {
            let d = q.push(100, 1000, cp("/a.log", i), &payload).unwrap();
            if d.records > 0 {
                dropped.push((d.last_seq, d.lines, d.checkpoint.positions[Path::new("/a.log")].offset));
            }
        }
        assert_eq!(dropped, [(1, 100, 1), (2, 100, 2), (3, 100, 3)]);
        assert_eq!(q.len(), 2);
        assert_eq!(q.acked(), 3);
        assert_eq!(q.head().unwrap().seq, 4);
        assert!(q.live_bytes() <= 1_000_000);
    }

    #[test]
    fn torn_tail_is_cut_and_later_segments_discarded() {
        let dir = tempfile::tempdir().unwrap();
        let mut q = Queue::open(dir.path(), 1 << 30, 0).unwrap();
        for i in 1..=3u64 {
            q.push(1, 1, cp("/a.log", i), b"xyz").unwrap();
        }
        let seg = q.segments[0].path.clone();
        drop(q);
        // Damage the last record's payload: a torn write.
        let mut data = std::fs::read(&seg).unwrap();
        let n = data.len();
        data[n - 1] ^= 0xff;
        std::fs::write(&seg, &data).unwrap();
        // A later segment must not be used after a gap.
        std::fs::write(dir.path().join(format!("{:020}{SEGMENT_SUFFIX}", 9)), [0u8; 3]).unwrap();
        let mut q = Queue::open(dir.path(), 1 << 30, 0).unwrap();
        assert_eq!(q.len(), 2);
        assert_eq!(q.pending_checkpoint().positions[Path::new("/a.log")].offset, 2);
        assert!(!dir.path().join(format!("{:020}{SEGMENT_SUFFIX}", 9)).exists());
        // Appending continues the numbering.
        q.push(1, 1, cp("/a.log", 3), b"again").unwrap();
        drop(q);
        let q = Queue::open(dir.path(), 1 << 30, 0).unwrap();
        assert_eq!(q.len(), 3);
        assert_eq!(q.records.back().unwrap().seq, 3);
        assert_eq!(q.payload(q.records.back().unwrap()).unwrap(), b"again");
    }

    #[test]
    fn unknown_version_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let mut h = [0u8; HEADER_LEN];
        h[..8].copy_from_slice(&SEGMENT_MAGIC);
        h[8] = 9;
        std::fs::write(dir.path().join(format!("{:020}{SEGMENT_SUFFIX}", 1)), h).unwrap();
        let e = Queue::open(dir.path(), 1 << 20, 0).unwrap_err();
        assert!(matches!(e, QueueError::UnknownVersion { version: 9, .. }), "{e}");
    }
}
