//! Immutable log blocks: the on-disk form of flushed log data. Byte layout,
//! lifecycle and crash-consistency argument: `docs/format/logs.md`.
//!
//! A block holds, per (tenant, stream), zstd-compressed chunks of entries;
//! its index (loaded at open) maps streams to chunk references. Chunks are
//! read with `pread` and CRC-checked before decompression.

use std::fs::{self, File, OpenOptions};
use std::io::{BufWriter, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use cairn_wire::{Entry, Labels};

use crate::StoreError;
use crate::codec::{Reader, put_bytes, put_uvarint, put_varint};

/// Header magic.
pub const MAGIC: &[u8; 8] = b"CAIRNLOG";
/// Footer magic.
pub const FOOTER_MAGIC: &[u8; 8] = b"CAIRNLGF";
/// Format version.
pub const VERSION: u8 = 1;
const HEADER_LEN: u64 = 16;
const FOOTER_LEN: u64 = 56;
/// Raw line bytes per chunk before a new chunk is started.
pub const CHUNK_RAW_BYTES: usize = 1 << 20;
/// zstd level for chunks (see `docs/format/logs.md`).
pub const ZSTD_LEVEL: i32 = 3;

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

/// An open block: index in memory, chunks on disk.
#[derive(Debug)]
pub struct LogBlock {
    path: PathBuf,
    file: File,
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

fn encode_chunk(buf: &mut Vec<u8>, entries: &[Entry]) {
    put_uvarint(buf, entries.len() as u64);
    let mut prev = entries.first().map(|e| e.ts).unwrap_or(0);
    for e in entries {
        put_varint(buf, e.ts.wrapping_sub(prev));
        prev = e.ts;
        put_bytes(buf, e.line.as_bytes());
        put_uvarint(buf, e.metadata.len() as u64);
        for (k, v) in &e.metadata {
            put_bytes(buf, k.as_bytes());
            put_bytes(buf, v.as_bytes());
        }
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
        let nm = r.count(2)?;
        let mut metadata = Vec::with_capacity(nm);
        for _ in 0..nm {
            metadata.push((r.str()?.to_string(), r.str()?.to_string()));
        }
        out.push(Entry { ts, line, metadata });
    }
    Ok(())
}

/// Writes a block of `streams` (each: tenant, labels, entries sorted by ts)
/// to `dir/<wal_through>.blk` atomically (temp file, fsync, rename, fsync
/// directory) and opens it.
pub fn write_block<'a>(
    dir: &Path,
    wal_through: u64,
    streams: impl Iterator<Item = (&'a str, &'a Labels, &'a [Entry])>,
) -> Result<LogBlock, StoreError> {
    fs::create_dir_all(dir).map_err(StoreError::io("create directory", dir))?;
    let name = crate::layout::log_block_name(wal_through);
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
    header[..8].copy_from_slice(MAGIC);
    header[8] = VERSION;
    let res: Result<(), std::io::Error> = (|| {
        w.write_all(&header)?;
        let mut offset = HEADER_LEN;
        let mut index = Vec::new();
        let mut sorted: Vec<(&str, &Labels, &[Entry])> = streams.filter(|s| !s.2.is_empty()).collect();
        sorted.sort_by(|a, b| (a.0, a.1).cmp(&(b.0, b.1)));
        put_uvarint(&mut index, sorted.len() as u64);
        let (mut bmin, mut bmax) = (i64::MAX, i64::MIN);
        let mut payload = Vec::new();
        let mut compressor = zstd::bulk::Compressor::new(ZSTD_LEVEL)?;
        for (tenant, labels, entries) in sorted {
            put_bytes(&mut index, tenant.as_bytes());
            put_uvarint(&mut index, labels.len() as u64);
            for l in labels {
                put_bytes(&mut index, l.name.as_bytes());
                put_bytes(&mut index, l.value.as_bytes());
            }
            // split into chunks of ~CHUNK_RAW_BYTES of lines
            let mut chunks = Vec::new();
            let mut start = 0;
            let mut raw = 0usize;
            for (i, e) in entries.iter().enumerate() {
                raw += e.line.len();
                if raw >= CHUNK_RAW_BYTES || i + 1 == entries.len() {
                    chunks.push(&entries[start..=i]);
                    start = i + 1;
                    raw = 0;
                }
            }
            put_uvarint(&mut index, chunks.len() as u64);
            for c in chunks {
                payload.clear();
                encode_chunk(&mut payload, c);
                let compressed = compressor.compress(&payload)?;
                w.write_all(&compressed)?;
                let min_ts = c[0].ts;
                let max_ts = c[c.len() - 1].ts;
                bmin = bmin.min(min_ts);
                bmax = bmax.max(max_ts);
                put_uvarint(&mut index, offset);
                put_uvarint(&mut index, compressed.len() as u64);
                put_varint(&mut index, min_ts);
                put_varint(&mut index, max_ts);
                put_uvarint(&mut index, c.len() as u64);
                put_uvarint(&mut index, c.iter().map(|e| e.line.len() as u64).sum());
                put_uvarint(&mut index, payload.len() as u64);
                index.extend_from_slice(&crc32c::crc32c(&compressed).to_le_bytes());
                offset += compressed.len() as u64;
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
        footer.extend_from_slice(FOOTER_MAGIC);
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
    LogBlock::open(&path)
}

impl LogBlock {
    /// Opens and validates a block, loading its index.
    pub fn open(path: &Path) -> Result<LogBlock, StoreError> {
        let corrupt = |offset: u64, reason: String| StoreError::Corrupt { path: path.to_path_buf(), offset, reason };
        let file = File::open(path).map_err(StoreError::io("open", path))?;
        let size = file.metadata().map_err(StoreError::io("stat", path))?.len();
        if size < HEADER_LEN + FOOTER_LEN {
            return Err(corrupt(0, format!("file of {size} bytes is shorter than header and footer")));
        }
        let mut header = [0u8; HEADER_LEN as usize];
        file.read_exact_at(&mut header, 0).map_err(StoreError::io("read", path))?;
        if &header[..8] != MAGIC {
            return Err(corrupt(0, format!("bad magic {:?}, want {MAGIC:?}", &header[..8])));
        }
        if header[8] != VERSION {
            return Err(StoreError::UnsupportedVersion { path: path.into(), version: header[8], supported: VERSION });
        }
        let foot_off = size - FOOTER_LEN;
        let mut f = [0u8; FOOTER_LEN as usize];
        file.read_exact_at(&mut f, foot_off).map_err(StoreError::io("read", path))?;
        if &f[48..56] != FOOTER_MAGIC {
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
        Ok(LogBlock { path: path.to_path_buf(), file, wal_through, min_ts, max_ts, streams, size })
    }

    fn parse_index(index: &[u8], index_off: u64) -> Result<Vec<BlockStream>, crate::codec::DecodeError> {
        let mut r = Reader::new(index);
        let n = r.count(3)?;
        let mut streams = Vec::with_capacity(n);
        for _ in 0..n {
            let tenant = r.str()?.to_string();
            let nl = r.count(2)?;
            let mut pairs = Vec::with_capacity(nl);
            for _ in 0..nl {
                pairs.push((r.str()?.to_string(), r.str()?.to_string()));
            }
            let labels = Labels::from_pairs(pairs)
                .map_err(|_| crate::codec::DecodeError { offset: 0, reason: "invalid label set" })?;
            let nc = r.count(11)?;
            let mut chunks = Vec::with_capacity(nc);
            for _ in 0..nc {
                let c = ChunkMeta {
                    offset: r.uvarint()?,
                    len: r.uvarint()?,
                    min_ts: r.varint()?,
                    max_ts: r.varint()?,
                    entries: r.uvarint()?,
                    raw_bytes: r.uvarint()?,
                    payload: r.uvarint()?,
                    crc: r.u32_le()?,
                };
                if c.offset < HEADER_LEN || c.offset.saturating_add(c.len) > index_off {
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

    /// Reads, checks and decodes one chunk, appending its entries to `out`.
    pub fn read_chunk(&self, c: &ChunkMeta, out: &mut Vec<Entry>) -> Result<(), StoreError> {
        let corrupt = |reason: String| StoreError::Corrupt { path: self.path.clone(), offset: c.offset, reason };
        let mut buf = vec![0u8; c.len as usize];
        self.file.read_exact_at(&mut buf, c.offset).map_err(StoreError::io("read", &self.path))?;
        let crc = crc32c::crc32c(&buf);
        if crc != c.crc {
            return Err(corrupt(format!("chunk checksum {crc:#010x}, want {:#010x}", c.crc)));
        }
        let payload = zstd::bulk::decompress(&buf, c.payload as usize).map_err(|e| corrupt(format!("zstd: {e}")))?;
        decode_chunk(&payload, c.min_ts, out).map_err(|e| corrupt(format!("chunk payload: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn e(ts: i64, line: &str) -> Entry {
        Entry {
            ts,
            line: line.into(),
            metadata: if ts % 2 == 0 { vec![("k".into(), format!("v{ts}"))] } else { vec![] },
        }
    }

    #[test]
    fn write_open_read() {
        let d = tempfile::tempdir().unwrap();
        let a = Labels::from_pairs([("job", "a")]).unwrap();
        let b = Labels::from_pairs([("job", "b")]).unwrap();
        // enough data for several chunks in stream a
        let big: Vec<Entry> = (0..3000).map(|i| e(1000 + i, &format!("{i:05} {}", "x".repeat(700)))).collect();
        let small = vec![e(5, "five"), e(7, "seven")];
        let blk = write_block(
            d.path(),
            9,
            [("t2", &b, &small[..]), ("t1", &a, &big[..]), ("t1", &b, &small[..])].into_iter(),
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
        assert!(sa.chunks.len() >= 2);
        let mut out = Vec::new();
        for c in &sa.chunks {
            blk.read_chunk(c, &mut out).unwrap();
        }
        assert_eq!(out, big);
        // reopen from disk
        let again = LogBlock::open(blk.path()).unwrap();
        let mut out = Vec::new();
        again.read_chunk(&again.tenant_streams("t2")[0].chunks[0], &mut out).unwrap();
        assert_eq!(out, small);
        assert!(!d.path().join(format!("{}.tmp", crate::layout::log_block_name(9))).exists());
    }

    #[test]
    fn corruption_is_reported_with_path() {
        let d = tempfile::tempdir().unwrap();
        let a = Labels::from_pairs([("job", "a")]).unwrap();
        let es = [e(1, "one"), e(2, "two")];
        let blk = write_block(d.path(), 1, [("t", &a, &es[..])].into_iter()).unwrap();
        let path = blk.path().to_path_buf();
        let chunk = blk.streams[0].chunks[0];
        drop(blk);
        let good = fs::read(&path).unwrap();
        // flip a byte in the chunk data: open works, reading the chunk fails
        let mut bad = good.clone();
        bad[chunk.offset as usize] ^= 0xff;
        fs::write(&path, &bad).unwrap();
        let blk = LogBlock::open(&path).unwrap();
        let err = blk.read_chunk(&chunk, &mut Vec::new()).unwrap_err();
        assert!(matches!(&err, StoreError::Corrupt { path: p, .. } if p == &path), "{err}");
        // flip a byte in the index: open fails
        let mut bad = good.clone();
        let n = bad.len();
        bad[n - FOOTER_LEN as usize - 3] ^= 0xff;
        fs::write(&path, &bad).unwrap();
        assert!(matches!(LogBlock::open(&path), Err(StoreError::Corrupt { .. })));
        // truncated: open fails
        fs::write(&path, &good[..good.len() - 10]).unwrap();
        assert!(matches!(LogBlock::open(&path), Err(StoreError::Corrupt { .. })));
        // unknown version
        let mut bad = good.clone();
        bad[8] = 7;
        fs::write(&path, &bad).unwrap();
        assert!(matches!(LogBlock::open(&path), Err(StoreError::UnsupportedVersion { version: 7, .. })));
    }
}
