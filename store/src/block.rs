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

use cairn_wire::Labels;

use crate::StoreError;
use crate::codec::{Reader, put_bytes, put_labels, put_uvarint, put_varint};

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

/// Format version.
pub const VERSION: u8 = 1;
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

/// An open block: index in memory, chunks on disk (memory-mapped).
#[derive(Debug)]
pub struct Block {
    path: PathBuf,
    /// The whole file, mapped read-only (see [`Block::open`]).
    map: memmap2::Mmap,
    /// Highest WAL segment whose data this block holds.
    pub wal_through: u64,
    /// Smallest timestamp in the block, ns.
    pub min_ts: i64,
    /// Largest timestamp in the block, ns.
    pub max_ts: i64,
    /// Streams sorted by (tenant, labels).
    pub streams: Vec<BlockStream>,
    /// File size.
    pub size: u64,
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
    fs::create_dir_all(dir).map_err(StoreError::io("create directory", dir))?;
    let name = crate::layout::block_name(wal_through);
    let path = dir.join(&name);
    let tmp = dir.join(format!("{name}.tmp"));
    let file = OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .open(&tmp)
        .map_err(StoreError::io("create", &tmp))?;
    let mut w = BufWriter::with_capacity(1 << 20, file);
    let werr = StoreError::io("write", &tmp);
    let mut header = [0u8; HEADER_LEN as usize];
    header[..8].copy_from_slice(kind.magic());
    header[8] = VERSION;
    series.retain(|s| !s.2.is_empty());
    series.sort_by(|a, b| (a.0, a.1).cmp(&(b.0, b.1)));
    let res: Result<(), std::io::Error> = (|| {
        w.write_all(&header)?;
        let mut offset = HEADER_LEN;
        let mut index = Vec::new();
        put_uvarint(&mut index, series.len() as u64);
        let (mut bmin, mut bmax) = (i64::MAX, i64::MIN);
        for (tenant, labels, chunks) in &series {
            put_bytes(&mut index, tenant.as_bytes());
            put_labels(&mut index, labels);
            put_uvarint(&mut index, chunks.len() as u64);
            for c in chunks {
                w.write_all(&c.bytes)?;
                w.write_all(&c.filter)?;
                bmin = bmin.min(c.min_ts);
                bmax = bmax.max(c.max_ts);
                put_uvarint(&mut index, offset);
                put_uvarint(&mut index, c.bytes.len() as u64);
                put_varint(&mut index, c.min_ts);
                put_varint(&mut index, c.max_ts);
                put_uvarint(&mut index, c.count);
                put_uvarint(&mut index, c.raw_bytes);
                put_uvarint(&mut index, c.payload);
                index.extend_from_slice(&crc32c::crc32c(&c.bytes).to_le_bytes());
                put_uvarint(&mut index, c.filter.len() as u64);
                if !c.filter.is_empty() {
                    index.extend_from_slice(&crc32c::crc32c(&c.filter).to_le_bytes());
                }
                offset += (c.bytes.len() + c.filter.len()) as u64;
            }
        }
        w.write_all(&index)?;
        let mut footer = Vec::with_capacity(FOOTER_LEN as usize);
        footer.extend_from_slice(&offset.to_le_bytes());
        footer.extend_from_slice(&(index.len() as u64).to_le_bytes());
        footer.extend_from_slice(&wal_through.to_le_bytes());
        footer.extend_from_slice(&bmin.to_le_bytes());
        footer.extend_from_slice(&bmax.to_le_bytes());
        footer.extend_from_slice(&crc32c::crc32c(&index).to_le_bytes());
        footer.extend_from_slice(&[VERSION, 0, 0, 0]);
        footer.extend_from_slice(kind.footer_magic());
        w.write_all(&footer)?;
        let file = w.into_inner().map_err(|e| e.into_error())?;
        file.sync_all()?;
        Ok(())
    })();
    if let Err(e) = res {
        let _ = fs::remove_file(&tmp);
        return Err(werr(e));
    }
    fs::rename(&tmp, &path).map_err(StoreError::io("rename", &tmp))?;
    File::open(dir).and_then(|d| d.sync_all()).map_err(StoreError::io("fsync directory", dir))?;
    Block::open(&path, kind)
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
        if header[8] != VERSION {
            return Err(StoreError::UnsupportedVersion { path: path.into(), version: header[8], supported: VERSION });
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
        if f[44] != VERSION {
            return Err(StoreError::UnsupportedVersion { path: path.into(), version: f[44], supported: VERSION });
        }
        if index_off < HEADER_LEN || index_off.checked_add(index_len) != Some(foot_off) {
            return Err(corrupt(foot_off, format!("index at {index_off}+{index_len} does not end at the footer")));
        }
        let mut index = vec![0u8; index_len as usize];
        file.read_exact_at(&mut index, index_off).map_err(StoreError::io("read", path))?;
        let crc = crc32c::crc32c(&index);
        if crc != want_crc {
            return Err(corrupt(index_off, format!("index checksum {crc:#010x}, want {want_crc:#010x}")));
        }
        let streams = Self::parse_index(&index, index_off)
            .map_err(|e| corrupt(index_off + e.offset as u64, format!("index: {}", e.reason)))?;
        // SAFETY: a block file is immutable once renamed into place: nothing
        // writes or truncates it afterwards (retention unlinks it, which
        // keeps the mapping valid). Chunk reads then cost no system call
        // and no copy, and a query that needs only part of a chunk (its
        // timestamp frame) touches only those pages.
        let map = unsafe { memmap2::Mmap::map(&file) }.map_err(StoreError::io("mmap", path))?;
        if map.len() as u64 != size {
            return Err(corrupt(0, format!("mapped {} bytes of a {size}-byte file", map.len())));
        }
        Ok(Block { path: path.to_path_buf(), map, wal_through, min_ts, max_ts, streams, size })
    }

    fn parse_index(index: &[u8], index_off: u64) -> Result<Vec<BlockStream>, crate::codec::DecodeError> {
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
                    return Err(crate::codec::DecodeError { offset: 0, reason: "chunk outside the data section" });
                }
                chunks.push(c);
            }
            streams.push(BlockStream { tenant, labels, chunks });
        }
        Ok(streams)
    }

    /// The block's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Streams of `tenant`.
    pub fn tenant_streams(&self, tenant: &str) -> &[BlockStream] {
        let lo = self.streams.partition_point(|s| s.tenant.as_str() < tenant);
        let hi = self.streams.partition_point(|s| s.tenant.as_str() <= tenant);
        &self.streams[lo..hi]
    }

    /// Reads one chunk's bytes and checks them against its CRC.
    pub fn chunk_bytes(&self, c: &ChunkMeta) -> Result<Vec<u8>, StoreError> {
        self.chunk_slice(c).map(<[u8]>::to_vec)
    }

    /// One chunk's bytes, checked against its CRC, without copying.
    pub fn chunk_slice(&self, c: &ChunkMeta) -> Result<&[u8], StoreError> {
        let buf = self.chunk_unchecked(c)?;
        let crc = crc32c::crc32c(buf);
        if crc != c.crc {
            return Err(self.corrupt(c, format!("chunk checksum {crc:#010x}, want {:#010x}", c.crc)));
        }
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
        let crc = crc32c::crc32c(buf);
        if crc != c.filter_crc {
            return Err(self.corrupt(c, format!("filter checksum {crc:#010x}, want {:#010x}", c.filter_crc)));
        }
        Ok(buf)
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
}
