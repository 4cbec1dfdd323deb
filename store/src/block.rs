//! Immutable blocks: the on-disk container shared by the log engine
//! (`docs/format/logs.md`) and the metrics engine (`docs/format/tsdb.md`).
//!
//! A block holds, per (tenant, label set), encoded chunks; its index
//! (loaded at open) maps series/streams to chunk references; a footer
//! records which WAL segments the block covers. The two kinds differ only
//! in their magic bytes and in what a chunk's bytes mean (zstd-compressed
//! log entries, or Gorilla-encoded samples), which the engines decode.
//! Block files are memory-mapped; chunks are CRC-checked before they are
//! decoded.

use std::fs::{self, File, OpenOptions};
use std::io::{BufWriter, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use cairn_wire::matcher::matches_all;
use cairn_wire::{Labels, MatchOp, Matcher};

use crate::StoreError;
use crate::codec::{DecodeError, Reader, put_bytes, put_uvarint, put_varint};

/// What a block holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlockKind {
    /// Log streams (`docs/format/logs.md`).
    Logs,
    /// Metric series (`docs/format/tsdb.md`).
    Metrics,
}

impl BlockKind {
    fn magic(self) -> &'static [u8; 8] {
        match self {
            BlockKind::Logs => b"CAIRNLOG",
            BlockKind::Metrics => b"CAIRNTSB",
        }
    }

    fn footer_magic(self) -> &'static [u8; 8] {
        match self {
            BlockKind::Logs => b"CAIRNLGF",
            BlockKind::Metrics => b"CAIRNTSF",
        }
    }
}

/// Format version written. Version 1 (full label sets per stream, explicit
/// chunk offsets) is still read.
pub const VERSION: u8 = 2;
/// Oldest format version read.
pub const MIN_VERSION: u8 = 1;
const HEADER_LEN: u64 = 16;
const FOOTER_LEN: u64 = 56;

/// One series or stream of a block to write: tenant, labels, chunks.
pub type SeriesChunks<'a> = (&'a str, &'a Labels, Vec<EncodedChunk>);

/// A chunk ready to be written: its bytes and what it holds.
#[derive(Debug, Clone)]
pub struct EncodedChunk {
    /// The chunk's bytes as stored.
    pub bytes: Vec<u8>,
    /// Smallest timestamp.
    pub min_ts: i64,
    /// Largest timestamp.
    pub max_ts: i64,
    /// Entries or samples.
    pub count: u64,
    /// Bytes of lines (logs) or 16 × samples (metrics), for statistics.
    pub raw_bytes: u64,
    /// Decoded payload length (logs: the zstd bound), or 0.
    pub payload: u64,
    /// Content filter (logs: `trigram`), stored after the chunk; empty: none.
    pub filter: Vec<u8>,
}

impl EncodedChunk {
    /// Chunk `c` of block `b` and its filter, as stored (for compaction
    /// copying chunks byte for byte).
    pub fn copy_of(b: &Block, c: &ChunkMeta) -> Result<EncodedChunk, StoreError> {
        Ok(EncodedChunk {
            bytes: b.chunk_bytes(c)?,
            min_ts: c.min_ts,
            max_ts: c.max_ts,
            count: c.entries,
            raw_bytes: c.raw_bytes,
            payload: c.payload,
            filter: b.chunk_filter_bytes(c)?,
        })
    }
}

/// Where a chunk is and what it holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkMeta {
    /// File offset of the compressed bytes.
    pub offset: u64,
    /// Compressed length.
    pub len: u64,
    /// Smallest timestamp, ns.
    pub min_ts: i64,
    /// Largest timestamp, ns.
    pub max_ts: i64,
    /// Number of entries.
    pub entries: u64,
    /// Bytes of lines.
    pub raw_bytes: u64,
    /// Decompressed payload length.
    pub payload: u64,
    /// CRC32C of the compressed bytes.
    pub crc: u32,
    /// Length of the content filter stored right after the chunk (0: none).
    pub filter_len: u64,
    /// CRC32C of the filter.
    pub filter_crc: u32,
}

/// One stream of a block.
#[derive(Debug, Clone)]
pub struct BlockStream {
    /// Tenant.
    pub tenant: String,
    /// Labels.
    pub labels: Labels,
    /// Chunks in time order.
    pub chunks: Vec<ChunkMeta>,
}

/// The inverted index of a version-2 block: label name → its values, each
/// with the sorted positions (in [`Block::streams`]) of the streams having
/// that label pair. Values sorted.
#[derive(Debug, Default)]
pub struct Postings {
    by_name: std::collections::HashMap<String, Vec<(String, Vec<u32>)>>,
}

/// An open block: index in memory, chunks on disk (memory-mapped).
#[derive(Debug)]
pub struct Block {
    /// Unique among the blocks this process has opened (caches key on it:
    /// a block reopened or rewritten under the same name gets a new one).
    pub uid: u64,
    path: PathBuf,
    /// The whole file, mapped read-only (see [`Block::open`]).
    map: memmap2::Mmap,
    /// The same file, for reads that should not become resident in this
    /// process (compaction streams whole blocks through: with the mapping
    /// they would count as RSS until the block is dropped).
    file: File,
    /// Format version of the file.
    pub version: u8,
    /// Highest WAL segment whose data this block holds.
    pub wal_through: u64,
    /// Smallest timestamp in the block, ns.
    pub min_ts: i64,
    /// Largest timestamp in the block, ns.
    pub max_ts: i64,
    /// Streams sorted by (tenant, labels).
    pub streams: Vec<BlockStream>,
    /// Names (`wal_through`) of the blocks whose data this block holds
    /// because compaction merged them into it (version 2; see
    /// `docs/format/tsdb.md`, "Compaction").
    pub replaces: Vec<u64>,
    /// Inverted index (version 2 blocks; `None` for version 1).
    pub postings: Option<Postings>,
    /// File size.
    pub size: u64,
    /// Offsets of the chunks whose content filter passed its CRC check
    /// already: the file is immutable and mapped, so a filter is checked
    /// once per process, not on every line-filter query (see
    /// [`Block::chunk_filter`]).
    filters_checked: std::sync::RwLock<std::collections::HashSet<u64>>,
}

/// Writes a block of `series` (tenant, labels, chunks in time order) to
/// `dir/<wal_through>.blk` atomically (temp file, fsync, rename, fsync
/// directory) and opens it.
pub fn write_block(
    dir: &Path,
    kind: BlockKind,
    wal_through: u64,
    mut series: Vec<SeriesChunks<'_>>,
) -> Result<Block, StoreError> {
    series.retain(|s| !s.2.is_empty());
    series.sort_by(|a, b| (a.0, a.1).cmp(&(b.0, b.1)));
    let mut w = BlockWriter::create(dir, kind, wal_through, "tmp")?;
    for (tenant, labels, chunks) in series {
        w.add(tenant, labels, chunks)?;
    }
    w.finish(&[])?.commit()
}

/// Writes a block one stream at a time (streams must come sorted by
/// (tenant, labels)), so a compaction never holds more than one stream's
/// chunks in memory. [`BlockWriter::finish`] leaves a complete, fsync'ed
/// temporary file; [`PendingBlock::commit`] renames it into place.
pub struct BlockWriter {
    dir: PathBuf,
    kind: BlockKind,
    wal_through: u64,
    path: PathBuf,
    tmp: PathBuf,
    w: BufWriter<File>,
    offset: u64,
    streams: Vec<(String, Labels, Vec<ChunkMeta>)>,
    cleanup: RemoveOnDrop,
}

/// Deletes a temporary file when dropped while armed: a block write that
/// fails half-way (a full disk, a dropped compaction) leaves nothing behind
/// to take up space until the next restart.
struct RemoveOnDrop(Option<PathBuf>);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        if let Some(p) = self.0.take() {
            let _ = fs::remove_file(p);
        }
    }
}

impl BlockWriter {
    /// Starts `dir/<wal_through>.blk.<tmp_suffix>`.
    pub fn create(dir: &Path, kind: BlockKind, wal_through: u64, tmp_suffix: &str) -> Result<Self, StoreError> {
        fs::create_dir_all(dir).map_err(StoreError::io("create directory", dir))?;
        let name = crate::layout::block_name(wal_through);
        let path = dir.join(&name);
        let tmp = dir.join(format!("{name}.{tmp_suffix}"));
        let file = OpenOptions::new()
            .create(true)
            .truncate(true)
            .write(true)
            .open(&tmp)
            .map_err(StoreError::io("create", &tmp))?;
        let cleanup = RemoveOnDrop(Some(tmp.clone()));
        let mut w = BufWriter::with_capacity(1 << 20, file);
        let mut header = [0u8; HEADER_LEN as usize];
        header[..8].copy_from_slice(kind.magic());
        header[8] = VERSION;
        w.write_all(&header).map_err(StoreError::io("write", &tmp))?;
        Ok(BlockWriter {
            dir: dir.to_path_buf(),
            kind,
            wal_through,
            path,
            tmp,
            w,
            offset: HEADER_LEN,
            streams: Vec::new(),
            cleanup,
        })
    }

    /// Appends one stream's chunks (time order); streams must be added in
    /// (tenant, labels) order. A stream without chunks is left out.
    pub fn add(&mut self, tenant: &str, labels: &Labels, chunks: Vec<EncodedChunk>) -> Result<(), StoreError> {
        if chunks.is_empty() {
            return Ok(());
        }
        if let Some((t, l, _)) = self.streams.last()
            && (t.as_str(), l) >= (tenant, labels)
        {
            return Err(StoreError::Corrupt {
                path: self.tmp.clone(),
                offset: self.offset,
                reason: format!("block writer: stream {tenant}/{labels} added out of order"),
            });
        }
        let mut metas = Vec::with_capacity(chunks.len());
        for c in &chunks {
            let res = self.w.write_all(&c.bytes).and_then(|_| self.w.write_all(&c.filter));
            res.map_err(StoreError::io("write", &self.tmp))?;
            metas.push(ChunkMeta {
                offset: self.offset,
                len: c.bytes.len() as u64,
                min_ts: c.min_ts,
                max_ts: c.max_ts,
                entries: c.count,
                raw_bytes: c.raw_bytes,
                payload: c.payload,
                crc: crc32c::crc32c(&c.bytes),
                filter_len: c.filter.len() as u64,
                filter_crc: if c.filter.is_empty() { 0 } else { crc32c::crc32c(&c.filter) },
            });
            self.offset += (c.bytes.len() + c.filter.len()) as u64;
        }
        self.streams.push((tenant.to_string(), labels.clone(), metas));
        Ok(())
    }

    /// Bytes written so far.
    pub fn bytes_written(&self) -> u64 {
        self.offset
    }

    /// Writes the index (with `replaces`) and footer and fsyncs the file.
    pub fn finish(mut self, replaces: &[u64]) -> Result<PendingBlock, StoreError> {
        let index = encode_index_v2(&self.streams, replaces);
        let (mut bmin, mut bmax) = (i64::MAX, i64::MIN);
        for c in self.streams.iter().flat_map(|s| &s.2) {
            bmin = bmin.min(c.min_ts);
            bmax = bmax.max(c.max_ts);
        }
        let mut footer = Vec::with_capacity(FOOTER_LEN as usize);
        footer.extend_from_slice(&self.offset.to_le_bytes());
        footer.extend_from_slice(&(index.len() as u64).to_le_bytes());
        footer.extend_from_slice(&self.wal_through.to_le_bytes());
        footer.extend_from_slice(&bmin.to_le_bytes());
        footer.extend_from_slice(&bmax.to_le_bytes());
        footer.extend_from_slice(&crc32c::crc32c(&index).to_le_bytes());
        footer.extend_from_slice(&[VERSION, 0, 0, 0]);
        footer.extend_from_slice(self.kind.footer_magic());
        let res: Result<(), std::io::Error> = (|| {
            self.w.write_all(&index)?;
            self.w.write_all(&footer)?;
            let file = self.w.into_inner().map_err(|e| e.into_error())?;
            file.sync_all()
        })();
        // On error the writer's guard deletes the temporary file.
        res.map_err(StoreError::io("write", &self.tmp))?;
        let mut cleanup = self.cleanup;
        cleanup.0 = None;
        Ok(PendingBlock { dir: self.dir, kind: self.kind, path: self.path, tmp: self.tmp })
    }
}

/// A complete, fsync'ed block still under its temporary name.
#[derive(Debug)]
pub struct PendingBlock {
    dir: PathBuf,
    kind: BlockKind,
    path: PathBuf,
    tmp: PathBuf,
}

impl PendingBlock {
    /// The final path (an existing block there is replaced atomically).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Renames the block into place, fsyncs the directory, opens it.
    pub fn commit(self) -> Result<Block, StoreError> {
        if let Err(e) = fs::rename(&self.tmp, &self.path) {
            let _ = fs::remove_file(&self.tmp);
            return Err(StoreError::io("rename", &self.tmp)(e));
        }
        sync_dir(&self.dir)?;
        Block::open(&self.path, self.kind)
    }

    /// Deletes the temporary file.
    pub fn abort(self) {
        let _ = fs::remove_file(&self.tmp);
    }
}

/// fsyncs a directory (after a rename or delete in it).
pub fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(StoreError::io("fsync directory", dir))
}

/// The version-2 index (`docs/format/tsdb.md`, "Index, version 2").
fn encode_index_v2(streams: &[(String, Labels, Vec<ChunkMeta>)], replaces: &[u64]) -> Vec<u8> {
    use std::collections::{BTreeMap, BTreeSet};
    let mut syms: BTreeSet<&str> = BTreeSet::new();
    for (t, l, _) in streams {
        syms.insert(t);
        for lb in l {
            syms.insert(&lb.name);
            syms.insert(&lb.value);
        }
    }
    let syms: Vec<&str> = syms.into_iter().collect();
    let id = |s: &str| syms.binary_search(&s).unwrap_or(0) as u64;
    let mut out = Vec::new();
    put_uvarint(&mut out, syms.len() as u64);
    let mut prev: &[u8] = &[];
    for s in &syms {
        // front coding: bytes shared with the previous symbol, then the rest
        let shared = prev.iter().zip(s.as_bytes()).take_while(|(a, b)| a == b).count();
        put_uvarint(&mut out, shared as u64);
        put_bytes(&mut out, &s.as_bytes()[shared..]);
        prev = s.as_bytes();
    }
    let mut postings: BTreeMap<(u64, u64), Vec<u32>> = BTreeMap::new();
    put_uvarint(&mut out, streams.len() as u64);
    for (i, (t, l, chunks)) in streams.iter().enumerate() {
        put_uvarint(&mut out, id(t));
        put_uvarint(&mut out, l.len() as u64);
        for lb in l {
            let (n, v) = (id(&lb.name), id(&lb.value));
            put_uvarint(&mut out, n);
            put_uvarint(&mut out, v);
            postings.entry((n, v)).or_default().push(i as u32);
        }
        put_uvarint(&mut out, chunks.len() as u64);
        let mut prev_max = 0i64; // the first chunk's min_ts is stored as is
        for c in chunks {
            put_uvarint(&mut out, c.len);
            put_varint(&mut out, c.min_ts.wrapping_sub(prev_max));
            put_uvarint(&mut out, c.max_ts.wrapping_sub(c.min_ts) as u64);
            put_uvarint(&mut out, c.entries);
            put_uvarint(&mut out, c.raw_bytes);
            put_uvarint(&mut out, c.payload);
            out.extend_from_slice(&c.crc.to_le_bytes());
            put_uvarint(&mut out, c.filter_len);
            if c.filter_len > 0 {
                out.extend_from_slice(&c.filter_crc.to_le_bytes());
            }
            prev_max = c.max_ts;
        }
    }
    put_uvarint(&mut out, postings.len() as u64);
    for ((n, v), list) in &postings {
        put_uvarint(&mut out, *n);
        put_uvarint(&mut out, *v);
        put_uvarint(&mut out, list.len() as u64);
        let mut prev = 0u32;
        for &x in list {
            put_uvarint(&mut out, u64::from(x - prev));
            prev = x;
        }
    }
    put_uvarint(&mut out, replaces.len() as u64);
    for &r in replaces {
        put_uvarint(&mut out, r);
    }
    out
}

impl Block {
    /// Opens and validates a block of `kind`, loading its index.
    pub fn open(path: &Path, kind: BlockKind) -> Result<Block, StoreError> {
        let corrupt = |offset: u64, reason: String| StoreError::Corrupt { path: path.to_path_buf(), offset, reason };
        let file = File::open(path).map_err(StoreError::io("open", path))?;
        let size = file.metadata().map_err(StoreError::io("stat", path))?.len();
        if size < HEADER_LEN + FOOTER_LEN {
            return Err(corrupt(0, format!("file of {size} bytes is shorter than header and footer")));
        }
        let mut header = [0u8; HEADER_LEN as usize];
        file.read_exact_at(&mut header, 0).map_err(StoreError::io("read", path))?;
        if &header[..8] != kind.magic() {
            return Err(corrupt(0, format!("bad magic {:?}, want {:?}", &header[..8], kind.magic())));
        }
        let version = header[8];
        if !(MIN_VERSION..=VERSION).contains(&version) {
            return Err(StoreError::UnsupportedVersion { path: path.into(), version, supported: VERSION });
        }
        let foot_off = size - FOOTER_LEN;
        let mut f = [0u8; FOOTER_LEN as usize];
        file.read_exact_at(&mut f, foot_off).map_err(StoreError::io("read", path))?;
        if &f[48..56] != kind.footer_magic() {
            return Err(corrupt(foot_off, "bad footer magic (incomplete block?)".into()));
        }
        let u64_at = |i: usize| u64::from_le_bytes(f[i..i + 8].try_into().unwrap_or([0; 8]));
        let (index_off, index_len, wal_through) = (u64_at(0), u64_at(8), u64_at(16));
        let (min_ts, max_ts) = (u64_at(24) as i64, u64_at(32) as i64);
        let want_crc = u32::from_le_bytes(f[40..44].try_into().unwrap_or([0; 4]));
        if f[44] != version {
            return Err(corrupt(foot_off, format!("footer version {} differs from header version {version}", f[44])));
        }
        if index_off < HEADER_LEN || index_off.checked_add(index_len) != Some(foot_off) {
            return Err(corrupt(foot_off, format!("index at {index_off}+{index_len} does not end at the footer")));
        }
        let mut index = vec![0u8; index_len as usize];
        file.read_exact_at(&mut index, index_off).map_err(StoreError::io("read", path))?;
        let crc = crc32c::crc32c(&index);
        if !crate::crc_matches(crc, want_crc) {
            return Err(corrupt(index_off, format!("index checksum {crc:#010x}, want {want_crc:#010x}")));
        }
        let parsed = if version == 1 {
            Self::parse_index_v1(&index, index_off).map(|s| (s, Vec::new(), None))
        } else {
            Self::parse_index_v2(&index, index_off).map(|(s, r, p)| (s, r, Some(p)))
        };
        let (streams, replaces, postings) =
            parsed.map_err(|e| corrupt(index_off + e.offset as u64, format!("index: {}", e.reason)))?;
        // SAFETY: a block file is immutable once renamed into place: nothing
        // writes or truncates it afterwards (retention and compaction unlink
        // or rename over it, which keeps the mapping valid). Chunk reads then
        // cost no system call and no copy, and a query that needs only part
        // of a chunk (its timestamp frame) touches only those pages.
        let map = unsafe { memmap2::Mmap::map(&file) }.map_err(StoreError::io("mmap", path))?;
        if map.len() as u64 != size {
            return Err(corrupt(0, format!("mapped {} bytes of a {size}-byte file", map.len())));
        }
        static NEXT_UID: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
        Ok(Block {
            uid: NEXT_UID.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            path: path.to_path_buf(),
            map,
            file,
            version,
            wal_through,
            min_ts,
            max_ts,
            streams,
            replaces,
            postings,
            size,
            filters_checked: Default::default(),
        })
    }

    fn parse_index_v1(index: &[u8], index_off: u64) -> Result<Vec<BlockStream>, DecodeError> {
        let mut r = Reader::new(index);
        let n = r.count(3)?;
        let mut streams = Vec::with_capacity(n);
        for _ in 0..n {
            let tenant = r.str()?.to_string();
            let labels = r.labels()?;
            let nc = r.count(12)?;
            let mut chunks = Vec::with_capacity(nc);
            for _ in 0..nc {
                let mut c = ChunkMeta {
                    offset: r.uvarint()?,
                    len: r.uvarint()?,
                    min_ts: r.varint()?,
                    max_ts: r.varint()?,
                    entries: r.uvarint()?,
                    raw_bytes: r.uvarint()?,
                    payload: r.uvarint()?,
                    crc: r.u32_le()?,
                    filter_len: 0,
                    filter_crc: 0,
                };
                c.filter_len = r.uvarint()?;
                if c.filter_len > 0 {
                    c.filter_crc = r.u32_le()?;
                }
                if c.offset < HEADER_LEN || c.offset.saturating_add(c.len).saturating_add(c.filter_len) > index_off {
                    return Err(DecodeError { offset: 0, reason: "chunk outside the data section" });
                }
                chunks.push(c);
            }
            streams.push(BlockStream { tenant, labels, chunks });
        }
        Ok(streams)
    }

    #[allow(clippy::type_complexity)]
    fn parse_index_v2(index: &[u8], index_off: u64) -> Result<(Vec<BlockStream>, Vec<u64>, Postings), DecodeError> {
        let mut r = Reader::new(index);
        let ns = r.count(2)?;
        let mut syms: Vec<String> = Vec::with_capacity(ns);
        for _ in 0..ns {
            let shared = r.uvarint()? as usize;
            let rest = r.bytes()?;
            let prev = syms.last().map_or(&[][..], |s| s.as_bytes());
            if shared > prev.len() {
                return Err(DecodeError { offset: 0, reason: "symbol shares more bytes than its predecessor has" });
            }
            let mut b = prev[..shared].to_vec();
            b.extend_from_slice(rest);
            let s = String::from_utf8(b).map_err(|_| DecodeError { offset: 0, reason: "symbol is not UTF-8" })?;
            syms.push(s);
        }
        let sym = |id: u64| -> Result<&str, DecodeError> {
            syms.get(id as usize).map(String::as_str).ok_or(DecodeError { offset: 0, reason: "symbol id out of range" })
        };
        let n = r.count(3)?;
        let mut streams: Vec<BlockStream> = Vec::with_capacity(n);
        let mut offset = HEADER_LEN;
        for _ in 0..n {
            let tenant = sym(r.uvarint()?)?.to_string();
            let nl = r.count(2)?;
            let mut pairs = Vec::with_capacity(nl);
            for _ in 0..nl {
                pairs.push((sym(r.uvarint()?)?, sym(r.uvarint()?)?));
            }
            let labels =
                Labels::from_pairs(pairs).map_err(|_| DecodeError { offset: 0, reason: "invalid label set" })?;
            let nc = r.count(9)?;
            let mut chunks = Vec::with_capacity(nc);
            let mut prev_max = 0i64;
            for _ in 0..nc {
                let len = r.uvarint()?;
                let min_ts = prev_max.wrapping_add(r.varint()?);
                let max_ts = min_ts.wrapping_add(r.uvarint()? as i64);
                let mut c = ChunkMeta {
                    offset,
                    len,
                    min_ts,
                    max_ts,
                    entries: r.uvarint()?,
                    raw_bytes: r.uvarint()?,
                    payload: r.uvarint()?,
                    crc: r.u32_le()?,
                    filter_len: 0,
                    filter_crc: 0,
                };
                c.filter_len = r.uvarint()?;
                if c.filter_len > 0 {
                    c.filter_crc = r.u32_le()?;
                }
                offset = offset.saturating_add(c.len).saturating_add(c.filter_len);
                if offset > index_off {
                    return Err(DecodeError { offset: 0, reason: "chunk outside the data section" });
                }
                prev_max = c.max_ts;
                chunks.push(c);
            }
            if let Some(p) = streams.last()
                && (p.tenant.as_str(), &p.labels) >= (tenant.as_str(), &labels)
            {
                return Err(DecodeError { offset: 0, reason: "streams not sorted" });
            }
            streams.push(BlockStream { tenant, labels, chunks });
        }
        let np = r.count(3)?;
        let mut postings = Postings::default();
        for _ in 0..np {
            let (name, value) = (sym(r.uvarint()?)?, sym(r.uvarint()?)?);
            let k = r.count(1)?;
            let mut list = Vec::with_capacity(k);
            let mut prev = 0u64;
            for _ in 0..k {
                prev = prev.saturating_add(r.uvarint()?);
                if prev >= streams.len() as u64 {
                    return Err(DecodeError { offset: 0, reason: "posting beyond the stream count" });
                }
                list.push(prev as u32);
            }
            postings.by_name.entry(name.to_string()).or_default().push((value.to_string(), list));
        }
        for vals in postings.by_name.values_mut() {
            vals.sort_by(|a, b| a.0.cmp(&b.0));
        }
        let nr = r.count(1)?;
        let mut replaces = Vec::with_capacity(nr);
        for _ in 0..nr {
            replaces.push(r.uvarint()?);
        }
        if !r.is_empty() {
            return Err(DecodeError { offset: 0, reason: "trailing bytes after the index" });
        }
        Ok((streams, replaces, postings))
    }

    /// The block's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Streams of `tenant`.
    pub fn tenant_streams(&self, tenant: &str) -> &[BlockStream] {
        let (lo, hi) = self.tenant_range(tenant);
        &self.streams[lo..hi]
    }

    fn tenant_range(&self, tenant: &str) -> (usize, usize) {
        let lo = self.streams.partition_point(|s| s.tenant.as_str() < tenant);
        let hi = self.streams.partition_point(|s| s.tenant.as_str() <= tenant);
        (lo, hi)
    }

    /// Streams of `tenant` matching every matcher, in stream order. With an
    /// inverted index (version 2) by postings intersection, Prometheus
    /// semantics: a matcher that matches the empty value also selects streams
    /// without the label; otherwise a scan of the tenant's label sets.
    pub fn select(&self, tenant: &str, matchers: &[Matcher]) -> Vec<&BlockStream> {
        let (lo, hi) = self.tenant_range(tenant);
        let Some(p) = &self.postings else {
            return self.streams[lo..hi].iter().filter(|s| matches_all(matchers, &s.labels)).collect();
        };
        let mut include: Option<Vec<u32>> = None;
        let mut exclude: Vec<u32> = Vec::new();
        for m in matchers {
            let vals = p.by_name.get(&m.name).map_or(&[][..], Vec::as_slice);
            if m.matches_empty() {
                // streams whose value of the label does not match are out
                for (v, list) in vals {
                    if !m.matches(v) {
                        exclude.extend_from_slice(list);
                    }
                }
                continue;
            }
            let mut union: Vec<u32> = match m.op {
                MatchOp::Equal => vals
                    .binary_search_by(|(v, _)| v.as_str().cmp(&m.value))
                    .map_or_else(|_| Vec::new(), |i| vals[i].1.clone()),
                _ => {
                    let mut u: Vec<u32> =
                        vals.iter().filter(|(v, _)| m.matches(v)).flat_map(|(_, l)| l).copied().collect();
                    u.sort_unstable();
                    u.dedup();
                    u
                }
            };
            union.retain(|&i| (lo..hi).contains(&(i as usize)));
            include = Some(match include {
                None => union,
                Some(acc) => intersect(&acc, &union),
            });
            if include.as_ref().is_some_and(Vec::is_empty) {
                return Vec::new();
            }
        }
        exclude.sort_unstable();
        exclude.dedup();
        let keep = |i: &usize| exclude.binary_search(&(*i as u32)).is_err();
        match include {
            Some(ids) => ids.iter().map(|&i| i as usize).filter(keep).map(|i| &self.streams[i]).collect(),
            None => (lo..hi).filter(keep).map(|i| &self.streams[i]).collect(),
        }
    }

    /// Reads one chunk's bytes and checks them against its CRC.
    /// The bytes are read with `pread`, not through the mapping, so bulk
    /// readers (compaction) do not grow the process's resident memory.
    pub fn chunk_bytes(&self, c: &ChunkMeta) -> Result<Vec<u8>, StoreError> {
        let buf = self.read_owned(c, c.offset, c.len)?;
        self.check(c, "chunk", &buf, c.crc)?;
        Ok(buf)
    }

    /// A chunk's content filter read with `pread` (see
    /// [`Block::chunk_bytes`]), checked against its CRC.
    pub fn chunk_filter_bytes(&self, c: &ChunkMeta) -> Result<Vec<u8>, StoreError> {
        if c.filter_len == 0 {
            return Ok(Vec::new());
        }
        let buf = self.read_owned(c, c.offset + c.len, c.filter_len)?;
        self.check(c, "filter", &buf, c.filter_crc)?;
        Ok(buf)
    }

    fn read_owned(&self, c: &ChunkMeta, offset: u64, len: u64) -> Result<Vec<u8>, StoreError> {
        self.range(c, offset, len)?; // bounds
        let mut buf = vec![0u8; len as usize];
        self.file.read_exact_at(&mut buf, offset).map_err(StoreError::io("read", &self.path))?;
        Ok(buf)
    }

    /// One chunk's bytes, checked against its CRC, without copying.
    pub fn chunk_slice(&self, c: &ChunkMeta) -> Result<&[u8], StoreError> {
        let buf = self.chunk_unchecked(c)?;
        self.check(c, "chunk", buf, c.crc)?;
        Ok(buf)
    }

    /// One chunk's bytes without the CRC check, for a reader that checks
    /// the part it decodes another way (a log chunk's checksummed
    /// timestamp frame).
    pub fn chunk_unchecked(&self, c: &ChunkMeta) -> Result<&[u8], StoreError> {
        self.range(c, c.offset, c.len)
    }

    /// Reads a chunk's content filter (empty when it has none), checked
    /// against its CRC: a corrupt filter must never prune data silently.
    pub fn chunk_filter(&self, c: &ChunkMeta) -> Result<&[u8], StoreError> {
        if c.filter_len == 0 {
            return Ok(&[]);
        }
        let buf = self.range(c, c.offset + c.len, c.filter_len)?;
        let checked = |s: &std::collections::HashSet<u64>| s.contains(&c.offset);
        if !checked(&self.filters_checked.read().unwrap_or_else(|p| p.into_inner())) {
            self.check(c, "filter", buf, c.filter_crc)?;
            self.filters_checked.write().unwrap_or_else(|p| p.into_inner()).insert(c.offset);
        }
        Ok(buf)
    }

    /// `buf` (the `what` of chunk `c`) against its CRC-32C `want`.
    fn check(&self, c: &ChunkMeta, what: &str, buf: &[u8], want: u32) -> Result<(), StoreError> {
        let crc = crc32c::crc32c(buf);
        if !crate::crc_matches(crc, want) {
            return Err(self.corrupt(c, format!("{what} checksum {crc:#010x}, want {want:#010x}")));
        }
        Ok(())
    }

    fn range(&self, c: &ChunkMeta, offset: u64, len: u64) -> Result<&[u8], StoreError> {
        let end = offset.checked_add(len).filter(|&e| e <= self.map.len() as u64);
        match end {
            Some(end) => Ok(&self.map[offset as usize..end as usize]),
            None => Err(self.corrupt(c, format!("{len} bytes at {offset} lie outside the file"))),
        }
    }

    /// A corruption error about chunk `c` of this block.
    pub fn corrupt(&self, c: &ChunkMeta, reason: String) -> StoreError {
        StoreError::Corrupt { path: self.path.clone(), offset: c.offset, reason }
    }
}

/// Intersection of two sorted lists.
fn intersect(a: &[u32], b: &[u32]) -> Vec<u32> {
    let (mut i, mut j, mut out) = (0, 0, Vec::new());
    while i < a.len() && j < b.len() {
        match a[i].cmp(&b[j]) {
            std::cmp::Ordering::Less => i += 1,
            std::cmp::Ordering::Greater => j += 1,
            std::cmp::Ordering::Equal => {
                out.push(a[i]);
                i += 1;
                j += 1;
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunk(min_ts: i64, max_ts: i64, bytes: &[u8]) -> EncodedChunk {
        EncodedChunk {
            bytes: bytes.to_vec(),
            min_ts,
            max_ts,
            count: 2,
            raw_bytes: 32,
            payload: 0,
            filter: b"flt".to_vec(),
        }
    }

    #[test]
    fn write_open_read() {
        let d = tempfile::tempdir().unwrap();
        let a = Labels::from_pairs([("job", "a")]).unwrap();
        let b = Labels::from_pairs([("job", "b")]).unwrap();
        let blk = write_block(
            d.path(),
            BlockKind::Metrics,
            9,
            vec![
                ("t2", &b, vec![chunk(5, 7, b"five")]),
                ("t1", &a, vec![chunk(1000, 1999, b"first"), chunk(2000, 3999, b"second")]),
                ("t1", &b, vec![chunk(5, 7, b"x")]),
                ("t1", &b, vec![]),
            ],
        )
        .unwrap();
        assert_eq!(blk.wal_through, 9);
        assert_eq!((blk.min_ts, blk.max_ts), (5, 3999));
        assert_eq!(blk.streams.len(), 3);
        assert_eq!(blk.tenant_streams("t1").len(), 2);
        assert_eq!(blk.tenant_streams("t2").len(), 1);
        assert!(blk.tenant_streams("t3").is_empty());
        let sa = &blk.tenant_streams("t1")[0];
        assert_eq!(sa.labels, a);
        assert_eq!(blk.chunk_bytes(&sa.chunks[1]).unwrap(), b"second");
        assert_eq!(blk.chunk_filter(&sa.chunks[1]).unwrap(), b"flt");
        let again = Block::open(blk.path(), BlockKind::Metrics).unwrap();
        assert_eq!(again.chunk_bytes(&again.tenant_streams("t2")[0].chunks[0]).unwrap(), b"five");
        // the wrong kind is refused
        assert!(matches!(Block::open(blk.path(), BlockKind::Logs), Err(StoreError::Corrupt { .. })));
        assert!(!d.path().join(format!("{}.tmp", crate::layout::block_name(9))).exists());
    }

    #[test]
    fn abandoned_or_failed_writes_leave_no_temporary_file() {
        let d = tempfile::tempdir().unwrap();
        let a = Labels::from_pairs([("job", "a")]).unwrap();
        let mut w = BlockWriter::create(d.path(), BlockKind::Logs, 3, "compact.tmp").unwrap();
        w.add("t", &a, vec![chunk(1, 2, b"payload")]).unwrap();
        assert_eq!(fs::read_dir(d.path()).unwrap().count(), 1);
        drop(w);
        assert_eq!(fs::read_dir(d.path()).unwrap().count(), 0, "a dropped writer left its file");
        // a stream out of order is an error; the writer's file goes with it
        let mut w = BlockWriter::create(d.path(), BlockKind::Logs, 3, "tmp").unwrap();
        w.add("t", &a, vec![chunk(1, 2, b"payload")]).unwrap();
        assert!(w.add("t", &a, vec![chunk(1, 2, b"payload")]).is_err());
        drop(w);
        assert_eq!(fs::read_dir(d.path()).unwrap().count(), 0);
        // a finished and committed block stays
        let w = BlockWriter::create(d.path(), BlockKind::Logs, 3, "tmp").unwrap();
        w.finish(&[]).unwrap().commit().unwrap();
        let names: Vec<_> = fs::read_dir(d.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names.len(), 1);
        assert!(!names[0].to_string_lossy().ends_with("tmp"), "{names:?}");
    }

    #[test]
    fn corruption_is_reported_with_path() {
        let d = tempfile::tempdir().unwrap();
        let a = Labels::from_pairs([("job", "a")]).unwrap();
        let blk = write_block(d.path(), BlockKind::Logs, 1, vec![("t", &a, vec![chunk(1, 2, b"payload")])]).unwrap();
        let path = blk.path().to_path_buf();
        let c = blk.streams[0].chunks[0];
        drop(blk);
        let good = fs::read(&path).unwrap();
        // a flipped byte in the chunk data: open works, reading the chunk fails
        let mut bad = good.clone();
        bad[c.offset as usize] ^= 0xff;
        fs::write(&path, &bad).unwrap();
        let blk = Block::open(&path, BlockKind::Logs).unwrap();
        let err = blk.chunk_bytes(&c).unwrap_err();
        assert!(matches!(&err, StoreError::Corrupt { path: p, .. } if p == &path), "{err}");
        // a flipped byte in the index: open fails
        let mut bad = good.clone();
        let n = bad.len();
        bad[n - FOOTER_LEN as usize - 3] ^= 0xff;
        fs::write(&path, &bad).unwrap();
        assert!(matches!(Block::open(&path, BlockKind::Logs), Err(StoreError::Corrupt { .. })));
        // truncated: open fails
        fs::write(&path, &good[..good.len() - 10]).unwrap();
        assert!(matches!(Block::open(&path, BlockKind::Logs), Err(StoreError::Corrupt { .. })));
        // unknown version: a typed error
        let mut bad = good.clone();
        bad[8] = 7;
        fs::write(&path, &bad).unwrap();
        assert!(matches!(Block::open(&path, BlockKind::Logs), Err(StoreError::UnsupportedVersion { version: 7, .. })));
    }

    /// Postings selection gives exactly what a scan with `matches_all`
    /// gives, for every matcher kind and Prometheus's empty-value rules.
    #[test]
    fn postings_select_equals_scan() {
        let d = tempfile::tempdir().unwrap();
        let mut sets = Vec::new();
        for i in 0..60 {
            let mut pairs = vec![("__name__".to_string(), ["up", "node_cpu", "node_mem"][i % 3].to_string())];
            if i % 4 != 0 {
                pairs.push(("mode".into(), ["idle", "user", "system"][i % 3].into()));
            }
            if i % 5 == 0 {
                pairs.push(("empty_here".into(), "x".into()));
            }
            pairs.push(("inst".into(), format!("h{}", i % 7)));
            pairs.push(("n".into(), format!("{i}")));
            sets.push((["a", "b"][i % 2], Labels::from_pairs(pairs).unwrap()));
        }
        let series: Vec<SeriesChunks<'_>> = sets.iter().map(|(t, l)| (*t, l, vec![chunk(1, 2, b"c")])).collect();
        let blk = write_block(d.path(), BlockKind::Metrics, 3, series).unwrap();
        assert_eq!(blk.version, VERSION);
        assert!(blk.postings.is_some());
        let m = |op, n: &str, v: &str| Matcher::new(op, n, v).unwrap();
        let cases: Vec<Vec<Matcher>> = vec![
            vec![],
            vec![m(MatchOp::Equal, "__name__", "up")],
            vec![m(MatchOp::Equal, "__name__", "nope")],
            vec![m(MatchOp::NotEqual, "mode", "idle")],
            vec![m(MatchOp::Equal, "mode", "")],
            vec![m(MatchOp::NotEqual, "mode", "")],
            vec![m(MatchOp::Regex, "mode", "idle|")],
            vec![m(MatchOp::Regex, "mode", "u.*")],
            vec![m(MatchOp::NotRegex, "inst", "h[0-3]"), m(MatchOp::Regex, "__name__", "node_.+")],
            vec![m(MatchOp::NotRegex, "empty_here", ".+")],
            vec![m(MatchOp::Regex, "absent", ".*")],
            vec![m(MatchOp::Regex, "absent", ".+")],
            vec![m(MatchOp::NotEqual, "absent", "v")],
            vec![
                m(MatchOp::Equal, "inst", "h2"),
                m(MatchOp::NotEqual, "mode", "user"),
                m(MatchOp::Regex, "__name__", ".*"),
            ],
        ];
        for ms in &cases {
            for tenant in ["a", "b", "c"] {
                let got: Vec<&Labels> = blk.select(tenant, ms).into_iter().map(|s| &s.labels).collect();
                let want: Vec<&Labels> = blk
                    .tenant_streams(tenant)
                    .iter()
                    .filter(|s| matches_all(ms, &s.labels))
                    .map(|s| &s.labels)
                    .collect();
                assert_eq!(got, want, "{tenant} {ms:?}");
            }
        }
        // reopened from disk: same index
        let again = Block::open(blk.path(), BlockKind::Metrics).unwrap();
        assert_eq!(again.select("a", &cases[8]).len(), blk.select("a", &cases[8]).len());
        // garbage in the index never panics: every single-byte flip is an error or parses
        let good = fs::read(blk.path()).unwrap();
        let idx_start = good.len() - FOOTER_LEN as usize - 400;
        for i in idx_start..good.len() - FOOTER_LEN as usize {
            let mut bad = good.clone();
            bad[i] ^= 0x55;
            let (idx_off, idx_len) = (
                u64::from_le_bytes(bad[bad.len() - 56..bad.len() - 48].try_into().unwrap()) as usize,
                u64::from_le_bytes(bad[bad.len() - 48..bad.len() - 40].try_into().unwrap()) as usize,
            );
            // recompute the CRC so the parser itself is exercised
            let crc = crc32c::crc32c(&bad[idx_off..idx_off + idx_len]).to_le_bytes();
            let n = bad.len();
            bad[n - 16..n - 12].copy_from_slice(&crc);
            let _ = Block::parse_index_v2(&bad[idx_off..idx_off + idx_len], idx_off as u64);
        }
    }
}
