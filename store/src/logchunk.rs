//! Log chunk encoding (`docs/format/logs.md`, "Chunk bytes"): how one
//! chunk of a stream's entries is laid out inside a block, and the decoder
//! the read path uses.
//!
//! Version 2 chunks are columnar: a small zstd frame with the timestamps and
//! line lengths ("head"), then a zstd frame with all line bytes followed by
//! the structured metadata ("body"). Counting and volume queries decode only
//! the head; line filters search the body's concatenated lines with one
//! substring search and decode only the lines that can match. Version 1
//! chunks (a single zstd frame of interleaved entries) are still read.
//!
//! Decoding never panics on bad input: every length is checked against the
//! buffer and a failure is a [`DecodeError`].

use crate::codec::{DecodeError, Reader, put_uvarint, put_varint};
use crate::trigram;

/// First byte of a version 2 chunk. A version 1 chunk is a bare zstd frame,
/// whose first byte is always 0x28 (the frame magic 0xFD2FB528, little-endian).
pub const V2_TAG: u8 = 0x02;
/// First byte of a version 3 chunk: the version 2 head, then the lines in
/// several zstd frames, each with its own content filter, so a line filter
/// decompresses only the frames that may hold its needle.
pub const V3_TAG: u8 = 0x03;

/// Bytes of lines (at least) in a version 3 chunk's first frame, which is
/// also the raw-content dictionary of its other frames. Measured on the
/// 100-replay PEERS.md set (`docs/format/logs.md`, "Framed chunks").
pub const FIRST_FRAME_BYTES: usize = 256 << 10;
/// Bytes of lines (at least) in each further frame of a version 3 chunk.
pub const FRAME_BYTES: usize = 128 << 10;

/// Largest decoded head or body of one chunk a reader accepts (1 GiB). The
/// sizes come from the file, so a damaged or hostile one must not make the
/// reader reserve terabytes; real chunks are cut near 1 MiB plus one line,
/// and a line is bounded by the request size limits far below this.
pub const MAX_DECODED_PART: u64 = 1 << 30;

/// One entry as the encoder sees it.
pub(crate) struct EncEntry<'a> {
    pub ts: i64,
    pub line: &'a [u8],
    pub metadata: &'a [(String, String)],
}

/// Reusable buffers for encoding chunks.
pub(crate) struct Encoder {
    cctx: zstd::bulk::Compressor<'static>,
    head: Vec<u8>,
    body: Vec<u8>,
    scratch: Vec<u8>,
    /// Write version 3 (framed) chunks.
    framed: bool,
    /// Bytes of lines (at least) of the first frame and of the others.
    frame_bytes: (usize, usize),
    lens: Vec<usize>,
    frame_filter: trigram::Builder,
    frames: Vec<u8>,
    table: Vec<u8>,
}

fn zstd_err(e: std::io::Error) -> DecodeError {
    let _ = e;
    DecodeError { offset: 0, reason: "zstd failed" }
}

/// zstd parameters of the chunks compaction rewrites: level 9's lazy2
/// match finder with a minimum match of 6 bytes instead of 5 and smaller
/// tables. On the PEERS.md lines (1 MiB chunks) this compresses slightly
/// better than level 9 (0.1391 vs 0.1403 of raw) for about four fifths of
/// its CPU (`store/tests/zstd_params.rs`; `docs/format/logs.md`, "Choices
/// and measurements"). Readers do not depend on it: any zstd frame decodes.
const COMPACT_PARAMS: [zstd::zstd_safe::CParameter; 6] = {
    use zstd::zstd_safe::{CParameter as P, Strategy};
    [
        P::Strategy(Strategy::ZSTD_lazy2),
        P::HashLog(19),
        P::ChainLog(18),
        P::SearchLog(3),
        P::MinMatch(6),
        P::TargetLength(16),
    ]
};

impl Encoder {
    /// An encoder compressing at zstd `level`.
    pub fn new(level: i32) -> std::io::Result<Encoder> {
        Ok(Encoder {
            cctx: zstd::bulk::Compressor::new(level)?,
            head: Vec::new(),
            body: Vec::new(),
            scratch: Vec::new(),
            framed: false,
            frame_bytes: (FIRST_FRAME_BYTES, FRAME_BYTES),
            lens: Vec::new(),
            frame_filter: trigram::Builder::default(),
            frames: Vec::new(),
            table: Vec::new(),
        })
    }

    /// The encoder compaction uses: version 3 (framed) chunks compressed
    /// with [`COMPACT_PARAMS`] (the dictionary frames too).
    pub fn for_compaction() -> std::io::Result<Encoder> {
        let mut e = Encoder::new(0)?;
        for p in COMPACT_PARAMS {
            e.cctx.set_parameter(p)?;
        }
        e.framed = true;
        Ok(e)
    }

    /// An encoder of version 3 (framed) chunks at zstd `level` (tests;
    /// compaction uses [`Encoder::for_compaction`]).
    #[cfg(test)]
    pub fn framed(level: i32) -> std::io::Result<Encoder> {
        let mut e = Encoder::new(level)?;
        e.framed = true;
        Ok(e)
    }

    /// Like [`Encoder::framed`] with other frame sizes (tests).
    #[cfg(test)]
    fn framed_sized(level: i32, first: usize, rest: usize) -> std::io::Result<Encoder> {
        let mut e = Encoder::framed(level)?;
        e.frame_bytes = (first, rest);
        Ok(e)
    }

    /// Encodes `entries` (sorted by timestamp, at least one) into `out`
    /// (cleared first) and the trigrams of their lines into `filter`
    /// (cleared first); returns the body's decompressed length (the bound
    /// stored in the chunk reference as `payload`).
    pub fn encode<'a>(
        &mut self,
        entries: impl Iterator<Item = EncEntry<'a>> + Clone,
        out: &mut Vec<u8>,
        filter: &mut trigram::Builder,
    ) -> std::io::Result<u64> {
        self.head.clear();
        self.body.clear();
        self.lens.clear();
        filter.clear();
        let n = entries.clone().count();
        put_uvarint(&mut self.head, n as u64);
        let meta = entries.clone().any(|e| !e.metadata.is_empty());
        self.head.push(u8::from(meta));
        // Timestamps as delta-of-delta from the first (the chunk's min_ts).
        let (mut prev, mut prev_delta) = (None::<i64>, 0i64);
        for e in entries.clone() {
            let delta = prev.map_or(0, |p| e.ts.wrapping_sub(p));
            put_varint(&mut self.head, delta.wrapping_sub(prev_delta));
            prev = Some(e.ts);
            prev_delta = delta;
        }
        for e in entries.clone() {
            put_uvarint(&mut self.head, e.line.len() as u64);
            self.body.extend_from_slice(e.line);
            self.lens.push(e.line.len());
            if !self.framed {
                filter.add(e.line);
            }
        }
        // Metadata: one pair list per entry when any has some.
        if meta {
            for e in entries {
                crate::codec::put_pairs(&mut self.body, e.metadata);
            }
        }
        out.clear();
        if self.framed {
            out.push(V3_TAG);
            put_uvarint(out, self.head.len() as u64);
            self.compress_head(out)?;
            self.encode_frames(meta, out, filter)?;
            return Ok(self.body.len() as u64);
        }
        out.push(V2_TAG);
        put_uvarint(out, self.head.len() as u64);
        self.compress_head(out)?;
        let body_len = self.body.len() as u64;
        self.scratch.clear();
        self.scratch.reserve(zstd::zstd_safe::compress_bound(self.body.len()));
        self.cctx.compress_to_buffer(&self.body, &mut self.scratch)?;
        out.extend_from_slice(&self.scratch);
        Ok(body_len)
    }

    /// The frame table and frames of a version 3 chunk (after its head):
    /// lines cut at entry boundaries into a first frame of at least
    /// [`FIRST_FRAME_BYTES`] and further frames of at least [`FRAME_BYTES`],
    /// each further frame (and the metadata frame) compressed with the
    /// first frame's bytes as its dictionary; `filter` gets the union of
    /// the frames' trigrams.
    fn encode_frames(&mut self, meta: bool, out: &mut Vec<u8>, filter: &mut trigram::Builder) -> std::io::Result<()> {
        let res = self.write_frames(meta, out, filter);
        // The dictionary loaded for the later frames must reach neither the
        // next chunk nor its head.
        let cleared = self.cctx.context_mut().load_dictionary(&[]).map(drop).map_err(zstd_code_err);
        res.and(cleared)
    }

    /// [`Encoder::encode_frames`], leaving frame 0's lines loaded as the
    /// compression context's dictionary when there is a later frame.
    fn write_frames(&mut self, meta: bool, out: &mut Vec<u8>, filter: &mut trigram::Builder) -> std::io::Result<()> {
        // (entries, line bytes) of each frame
        let mut cuts: Vec<(usize, usize)> = Vec::new();
        let (mut i, mut target) = (0, self.frame_bytes.0);
        while i < self.lens.len() || cuts.is_empty() {
            let (start, mut raw) = (i, 0);
            while i < self.lens.len() && (raw < target || i == start) {
                raw += self.lens[i];
                i += 1;
            }
            cuts.push((i - start, raw));
            target = self.frame_bytes.1;
        }
        let lines_len: usize = cuts.iter().map(|c| c.1).sum();
        let dict_len = cuts[0].1;
        self.frames.clear();
        self.table.clear();
        put_uvarint(&mut self.table, cuts.len() as u64);
        let mut pos = 0;
        for (k, &(n, raw)) in cuts.iter().enumerate() {
            let part = &self.body[pos..pos + raw];
            if k == 1 {
                // The later frames (and the metadata frame) are compressed
                // with the first frame's lines as a raw-content dictionary
                // (copied into the context), with this encoder's parameters.
                self.cctx.context_mut().load_dictionary(&self.body[..dict_len]).map_err(zstd_code_err)?;
            }
            let z = compress_frame(&mut self.cctx, part)?;
            put_uvarint(&mut self.table, n as u64);
            put_uvarint(&mut self.table, raw as u64);
            put_uvarint(&mut self.table, z.len() as u64);
            self.table.extend_from_slice(&crc32c::crc32c(&z).to_le_bytes());
            self.frames.extend_from_slice(&z);
            // the frame's filter, over its lines
            self.frame_filter.clear();
            let first = cuts[..k].iter().map(|c| c.0).sum::<usize>();
            let mut at = pos;
            for &l in &self.lens[first..first + n] {
                self.frame_filter.add(&self.body[at..at + l]);
                at += l;
            }
            filter.union(&self.frame_filter);
            let f = self.frame_filter.finish_sized(trigram::FRAME_MAX_FILL);
            put_uvarint(&mut self.table, f.len() as u64);
            self.table.extend_from_slice(&f);
            pos += raw;
        }
        if meta {
            if cuts.len() == 1 {
                self.cctx.context_mut().load_dictionary(&self.body[..dict_len]).map_err(zstd_code_err)?;
            }
            let part = &self.body[lines_len..];
            let z = compress_frame(&mut self.cctx, part)?;
            put_uvarint(&mut self.table, part.len() as u64);
            put_uvarint(&mut self.table, z.len() as u64);
            self.table.extend_from_slice(&crc32c::crc32c(&z).to_le_bytes());
            self.frames.extend_from_slice(&z);
        }
        put_uvarint(out, self.table.len() as u64);
        out.extend_from_slice(&self.table);
        out.extend_from_slice(&crc32c::crc32c(&self.table).to_le_bytes());
        out.extend_from_slice(&self.frames);
        Ok(())
    }

    fn compress_head(&mut self, out: &mut Vec<u8>) -> std::io::Result<()> {
        self.scratch.clear();
        self.scratch.reserve(zstd::zstd_safe::compress_bound(self.head.len()));
        // The head frame carries zstd's content checksum: readers that
        // decode only the head do not read (or CRC) the rest of the chunk.
        self.cctx.set_parameter(zstd::zstd_safe::CParameter::ChecksumFlag(true))?;
        let res = self.cctx.compress_to_buffer(&self.head, &mut self.scratch);
        self.cctx.set_parameter(zstd::zstd_safe::CParameter::ChecksumFlag(false))?;
        res?;
        put_uvarint(out, self.scratch.len() as u64);
        out.extend_from_slice(&self.scratch);
        Ok(())
    }
}

/// One zstd frame of `part`, with the context's dictionary if one is loaded.
fn compress_frame(cctx: &mut zstd::bulk::Compressor<'static>, part: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut z = Vec::with_capacity(zstd::zstd_safe::compress_bound(part.len()));
    cctx.compress_to_buffer(part, &mut z)?;
    Ok(z)
}

fn zstd_code_err(c: usize) -> std::io::Error {
    std::io::Error::other(zstd::zstd_safe::get_error_name(c))
}

/// Points each slot with metadata at its pair list in `body[start..]` (one
/// list per entry, in entry order).
fn meta_slots(slots: &mut [Slot], body: &[u8], start: usize) -> Result<(), DecodeError> {
    let mut r = Reader::new(&body[start..]);
    for s in slots {
        let off = body.len() - r.rest().len();
        let n = r.uvarint()?;
        for _ in 0..n {
            r.bytes()?;
            r.bytes()?;
        }
        if n > 0 {
            s.meta = off as u32;
        }
    }
    Ok(())
}

/// Where one entry's parts are in [`Decoded::body`].
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Slot {
    pub line_start: u32,
    pub line_end: u32,
    /// Offset of the entry's encoded metadata pairs, or `u32::MAX`: none.
    pub meta: u32,
}

/// A decoded chunk: timestamps, and (after [`Decoded::decode_body`]) the
/// body with where each entry's line and metadata are. Buffers are reused
/// from chunk to chunk.
#[derive(Default)]
pub(crate) struct Decoded {
    pub ts: Vec<i64>,
    /// Line lengths (version 2 only; version 1 fills them on body decode).
    pub lens: Vec<u32>,
    pub slots: Vec<Slot>,
    pub body: Vec<u8>,
    /// Bytes of the body that are line bytes (version 2: lines are
    /// contiguous at the start of the body).
    pub lines_len: usize,
    head_buf: Vec<u8>,
    /// Where the line lengths start in `head_buf` (decoded on demand).
    lens_at: usize,
    has_meta: bool,
    v1: bool,
    /// Byte range of the body frame in the chunk (version 2).
    body_frame: (usize, usize),
    dctx: Option<zstd::bulk::Decompressor<'static>>,
    /// Entry ranges whose lines are in `body` after a body decode, in
    /// order, each contiguous there (a version 3 chunk may have only some
    /// of its frames decoded: [`Decoded::decode_frames`]).
    pub ranges: Vec<(usize, usize)>,
    /// Bytes the last body decode decompressed.
    pub decompressed: usize,
    v3: bool,
    /// Where the frame table starts in the chunk (version 3).
    table_at: usize,
    frames: Vec<Frame>,
    meta_frame: Option<Frame>,
    want: Vec<bool>,
    dctx3: Option<zstd::zstd_safe::DCtx<'static>>,
}

/// One frame of a version 3 chunk, as its table gives it.
#[derive(Debug, Clone, Copy, Default)]
struct Frame {
    /// Entries whose lines it holds (`first..end`); none for the metadata frame.
    entries: (usize, usize),
    raw: usize,
    /// Byte range of the compressed frame in the chunk.
    z: (usize, usize),
    crc: u32,
    /// Byte range of its content filter in the chunk.
    filter: (usize, usize),
}

impl Decoded {
    fn dctx(&mut self) -> Result<&mut zstd::bulk::Decompressor<'static>, DecodeError> {
        if self.dctx.is_none() {
            self.dctx = Some(zstd::bulk::Decompressor::new().map_err(zstd_err)?);
        }
        self.dctx.as_mut().ok_or(DecodeError { offset: 0, reason: "zstd context" })
    }

    /// Decodes the timestamps of `chunk`, whose first timestamp is
    /// `min_ts` and whose body is at most `payload` bytes (line lengths:
    /// [`Decoded::decode_lens`]). A version 1 chunk is decoded whole here.
    pub fn decode_head(&mut self, chunk: &[u8], min_ts: i64, payload: u64) -> Result<(), DecodeError> {
        self.ts.clear();
        self.lens.clear();
        self.slots.clear();
        self.lines_len = 0;
        self.has_meta = false;
        self.ranges.clear();
        self.decompressed = 0;
        let tag = chunk.first().copied();
        if tag != Some(V2_TAG) && tag != Some(V3_TAG) {
            self.v1 = true;
            self.v3 = false;
            return self.decode_v1(chunk, min_ts, payload);
        }
        self.v1 = false;
        self.v3 = tag == Some(V3_TAG);
        let mut r = Reader::new(&chunk[1..]);
        let head_len = r.uvarint()?;
        if head_len > MAX_DECODED_PART {
            return Err(DecodeError { offset: 1, reason: "chunk head larger than the format allows" });
        }
        let head_len = head_len as usize;
        let zlen = r.uvarint()? as usize;
        let rest = r.rest();
        if zlen > rest.len() {
            return Err(DecodeError { offset: 0, reason: "head frame longer than the chunk" });
        }
        let mut head = std::mem::take(&mut self.head_buf);
        head.clear();
        head.reserve(head_len);
        let res = self.dctx()?.decompress_to_buffer(&rest[..zlen], &mut head).map_err(zstd_err);
        let out = res.and_then(|_| self.parse_head(&head, min_ts));
        self.head_buf = head;
        self.lens_at = out?;
        self.body_frame = (chunk.len() - rest.len() + zlen, chunk.len());
        self.table_at = self.body_frame.0;
        Ok(())
    }

    fn parse_head(&mut self, head: &[u8], min_ts: i64) -> Result<usize, DecodeError> {
        let mut r = Reader::new(head);
        let n = r.count(2)?;
        let flag = r.rest().first().copied().ok_or(DecodeError { offset: 0, reason: "missing metadata flag" })?;
        self.has_meta = flag != 0;
        let mut pos = head.len() - r.rest().len() + 1;
        self.ts.resize(n, 0);
        let unzig = |z: u64| ((z >> 1) as i64) ^ -((z & 1) as i64);
        let (mut ts, mut delta) = (min_ts, 0i64);
        let mut i = 0;
        while i < n {
            // Eight one-byte delta-of-deltas at once (entries at a steady
            // rate): one test for the eight continuation bits.
            if i > 0
                && i + 8 <= n
                && let Some(w) = head.get(pos..pos + 8).and_then(|b| <[u8; 8]>::try_from(b).ok())
                && u64::from_le_bytes(w) & 0x8080_8080_8080_8080 == 0
            {
                for (out, z) in self.ts[i..i + 8].iter_mut().zip(w) {
                    delta = delta.wrapping_add(unzig(u64::from(z)));
                    ts = ts.wrapping_add(delta);
                    *out = ts;
                }
                pos += 8;
                i += 8;
                continue;
            }
            let z = fast_uvarint(head, &mut pos).ok_or(DecodeError { offset: pos, reason: "bad timestamp" })?;
            if i > 0 {
                delta = delta.wrapping_add(unzig(z));
                ts = ts.wrapping_add(delta);
            }
            self.ts[i] = ts;
            i += 1;
        }
        Ok(pos)
    }

    /// Decodes the line lengths of the chunk whose head was just decoded
    /// (version 2; version 1 has them already).
    pub fn decode_lens(&mut self) -> Result<(), DecodeError> {
        if self.v1 || self.lens.len() == self.ts.len() {
            return Ok(());
        }
        let head = &self.head_buf;
        let mut pos = self.lens_at;
        self.lens.resize(self.ts.len(), 0);
        let mut total: u64 = 0;
        for out in self.lens.iter_mut() {
            let l = fast_uvarint(head, &mut pos).ok_or(DecodeError { offset: pos, reason: "bad line length" })?;
            total += l;
            if total > u32::MAX as u64 {
                return Err(DecodeError { offset: pos, reason: "lines longer than 4 GiB" });
            }
            *out = l as u32;
        }
        self.lines_len = total as usize;
        Ok(())
    }

    /// Decompresses the body of the chunk whose head was just decoded and
    /// locates every entry's line and metadata.
    pub fn decode_body(&mut self, chunk: &[u8], payload: u64) -> Result<(), DecodeError> {
        if self.v1 {
            self.ranges = vec![(0, self.ts.len())];
            self.decompressed = self.body.len();
            return Ok(());
        }
        if self.v3 {
            self.decode_frames(chunk, payload, 0, self.ts.len(), &[])?;
            return Ok(());
        }
        self.decode_lens()?;
        let (a, b) = self.body_frame;
        let frame = chunk.get(a..b).ok_or(DecodeError { offset: 0, reason: "body frame outside the chunk" })?;
        if payload > MAX_DECODED_PART {
            return Err(DecodeError { offset: 0, reason: "chunk body larger than the format allows" });
        }
        let mut body = std::mem::take(&mut self.body);
        body.clear();
        body.reserve(payload as usize);
        let res = self.dctx()?.decompress_to_buffer(frame, &mut body).map_err(zstd_err);
        self.body = body;
        res?;
        self.index_body()
    }

    /// Decodes the lines of the entries in `lo..hi` of the chunk whose head
    /// was just decoded that may hold every needle (all of them for a
    /// chunk before version 3), with their metadata: a version 3 chunk
    /// decompresses only the frames that overlap `lo..hi` and whose filter
    /// passes every needle, plus its first frame when another frame needs
    /// it as dictionary. False when no frame needs decoding (nothing in the
    /// chunk can match). [`Decoded::ranges`] tells which entries have their
    /// lines decoded.
    pub fn decode_frames(
        &mut self,
        chunk: &[u8],
        payload: u64,
        lo: usize,
        hi: usize,
        needles: &[&[u8]],
    ) -> Result<bool, DecodeError> {
        if !self.v3 {
            self.decode_body(chunk, payload)?;
            return Ok(true);
        }
        self.decode_lens()?;
        if payload > MAX_DECODED_PART {
            return Err(DecodeError { offset: 0, reason: "chunk body larger than the format allows" });
        }
        self.parse_table(chunk, payload as usize)?;
        self.want.clear();
        for f in &self.frames {
            let filter = &chunk[f.filter.0..f.filter.1];
            self.want.push(
                f.entries.0 < hi && f.entries.1 > lo && needles.iter().all(|n| trigram::may_contain_sized(filter, n)),
            );
        }
        self.slots.clear();
        if !self.want.iter().any(|&w| w) {
            self.body.clear();
            return Ok(false);
        }
        // Every frame goes to its own place in a body of `payload` bytes
        // (the table adds up to it), as if the whole body were decoded;
        // bytes of frames not decoded are left from earlier chunks and
        // never read (`ranges`). The body is not cleared between chunks,
        // so a recycled buffer is zero-filled only where it grows.
        let mut body = std::mem::take(&mut self.body);
        body.resize(payload as usize, 0);
        let res = self.decode_wanted(chunk, &mut body);
        self.body = body;
        res?;
        Ok(true)
    }

    /// Frame 0 (wanted itself, or the dictionary of the others and of the
    /// metadata frame), the wanted frames and the metadata frame into
    /// their places in `body`, each checked against its CRC, with the
    /// entries' slots.
    fn decode_wanted(&mut self, chunk: &[u8], body: &mut [u8]) -> Result<(), DecodeError> {
        let f0 = self.frames[0];
        self.decompress(chunk, &f0, &mut body[..f0.raw], 0)?;
        self.decompressed = f0.raw;
        self.line_slots();
        let mut at = 0;
        for k in 0..self.frames.len() {
            let f = self.frames[k];
            if self.want[k] {
                if k > 0 {
                    self.decompress(chunk, &f, &mut body[..at + f.raw], at)?;
                    self.decompressed += f.raw;
                }
                match self.ranges.last_mut() {
                    Some(r) if r.1 == f.entries.0 => r.1 = f.entries.1,
                    _ => self.ranges.push(f.entries),
                }
            }
            at += f.raw;
        }
        if let Some(m) = self.meta_frame {
            self.decompress(chunk, &m, &mut body[..at + m.raw], at)?;
            self.decompressed += m.raw;
            meta_slots(&mut self.slots, body, at)?;
        }
        Ok(())
    }

    /// Decompresses frame `f` (CRC-checked) into `buf[at..]`, which must be
    /// exactly its length; a frame after the first (`at > 0`) has frame 0,
    /// `buf[..frames[0].raw]`, as its raw-content dictionary (right before
    /// it for frame 1, which zstd then reads as one contiguous prefix).
    fn decompress(&mut self, chunk: &[u8], f: &Frame, buf: &mut [u8], at: usize) -> Result<(), DecodeError> {
        let z = &chunk[f.z.0..f.z.1];
        if !crate::crc_matches(crc32c::crc32c(z), f.crc) {
            return Err(DecodeError { offset: f.z.0, reason: "frame checksum mismatch" });
        }
        let dctx = self.dctx3.get_or_insert_with(zstd::zstd_safe::DCtx::create);
        let (before, out) = buf.split_at_mut(at);
        let n = if at == 0 {
            dctx.decompress(out, z)
        } else {
            dctx.decompress_using_dict(out, z, &before[..self.frames[0].raw])
        }
        .map_err(|_| DecodeError { offset: f.z.0, reason: "zstd failed" })?;
        if n != f.raw {
            return Err(DecodeError { offset: f.z.0, reason: "frame length differs from its table" });
        }
        Ok(())
    }

    /// Reads and checks the frame table of a version 3 chunk (after
    /// [`Decoded::decode_lens`]): its CRC, that the frames cover every
    /// entry once with exactly its line bytes, that the metadata frame is
    /// there exactly when the head says so, and that the frames lie in the
    /// chunk and add up to `payload`.
    fn parse_table(&mut self, chunk: &[u8], payload: usize) -> Result<(), DecodeError> {
        let bad = |reason| DecodeError { offset: self.table_at, reason };
        let mut r = Reader::new(chunk.get(self.table_at..).ok_or(bad("frame table outside the chunk"))?);
        let tlen = r.uvarint()? as usize;
        let rest = r.rest();
        let t_start = chunk.len() - rest.len();
        let table = rest.get(..tlen).ok_or(bad("frame table longer than the chunk"))?;
        let crc = rest.get(tlen..tlen + 4).ok_or(bad("frame table longer than the chunk"))?;
        let crc = u32::from_le_bytes([crc[0], crc[1], crc[2], crc[3]]);
        if !crate::crc_matches(crc32c::crc32c(table), crc) {
            return Err(bad("frame table checksum mismatch"));
        }
        let mut z_at = t_start + tlen + 4;
        let n = self.ts.len();
        let mut t = Reader::new(table);
        let count = t.uvarint()?;
        if count == 0 || count > n as u64 {
            return Err(bad("bad frame count"));
        }
        self.frames.clear();
        let (mut first, mut lines) = (0usize, 0usize);
        let zframe = |t: &mut Reader<'_>, z_at: &mut usize| -> Result<(usize, (usize, usize), u32), DecodeError> {
            let raw = t.uvarint()?;
            let zlen = t.uvarint()?;
            let crc = t.u32_le()?;
            let end = (*z_at as u64).checked_add(zlen).filter(|&e| e <= chunk.len() as u64);
            let end = end.ok_or(DecodeError { offset: *z_at, reason: "frame outside the chunk" })? as usize;
            if raw > MAX_DECODED_PART {
                return Err(DecodeError { offset: *z_at, reason: "frame larger than the format allows" });
            }
            let z = (*z_at, end);
            *z_at = end;
            Ok((raw as usize, z, crc))
        };
        for _ in 0..count {
            let entries = t.uvarint()?;
            if entries == 0 || entries > (n - first) as u64 {
                return Err(bad("bad frame entry count"));
            }
            let end = first + entries as usize;
            let (raw, z, crc) = zframe(&mut t, &mut z_at)?;
            let sum: u64 = self.lens[first..end].iter().map(|&l| u64::from(l)).sum();
            if sum != raw as u64 {
                return Err(bad("frame length differs from its lines"));
            }
            let f = t.bytes()?;
            let f_end = t_start + (table.len() - t.rest().len());
            self.frames.push(Frame { entries: (first, end), raw, z, crc, filter: (f_end - f.len(), f_end) });
            first = end;
            lines += raw;
        }
        if first != n {
            return Err(bad("frames do not cover every entry"));
        }
        self.meta_frame = None;
        if self.has_meta {
            let (raw, z, crc) = zframe(&mut t, &mut z_at)?;
            self.meta_frame = Some(Frame { entries: (n, n), raw, z, crc, filter: (0, 0) });
            lines += raw;
        }
        if !t.is_empty() || lines != payload {
            return Err(bad("frame table does not match the chunk"));
        }
        Ok(())
    }

    /// Like [`Decoded::decode_body`], from a body decompressed before
    /// (a cached copy of `self.body` after `decode_body` of the same chunk).
    pub fn set_body(&mut self, body: &[u8]) -> Result<(), DecodeError> {
        if self.v1 || self.v3 {
            return Ok(());
        }
        self.decode_lens()?;
        self.body.clear();
        self.body.extend_from_slice(body);
        self.index_body()
    }

    /// True for a version 3 chunk, whose lines are in several frames
    /// ([`Decoded::decode_frames`]).
    pub fn is_framed(&self) -> bool {
        self.v3
    }

    /// True for a version 2 chunk, whose body is one frame decoded apart
    /// from its head ([`Decoded::decode_body`]).
    pub fn has_body_frame(&self) -> bool {
        !self.v1 && !self.v3
    }

    /// Line and metadata slots over a decompressed body.
    fn index_body(&mut self) -> Result<(), DecodeError> {
        if self.body.len() < self.lines_len {
            return Err(DecodeError { offset: 0, reason: "body shorter than its lines" });
        }
        self.ranges.clear();
        self.ranges.push((0, self.ts.len()));
        self.decompressed = self.body.len();
        self.slots.clear();
        self.line_slots();
        if self.has_meta {
            meta_slots(&mut self.slots, &self.body, self.lines_len)?;
        }
        Ok(())
    }

    /// Appends a slot per entry for its line (the lines are contiguous from
    /// the body's start), with no metadata yet.
    fn line_slots(&mut self) {
        self.slots.reserve(self.ts.len());
        let mut pos = 0u32;
        for &l in &self.lens {
            self.slots.push(Slot { line_start: pos, line_end: pos + l, meta: u32::MAX });
            pos += l;
        }
    }

    fn decode_v1(&mut self, chunk: &[u8], min_ts: i64, payload: u64) -> Result<(), DecodeError> {
        if payload > MAX_DECODED_PART {
            return Err(DecodeError { offset: 0, reason: "chunk larger than the format allows" });
        }
        let mut body = std::mem::take(&mut self.body);
        body.clear();
        body.reserve(payload as usize);
        let res = self.dctx()?.decompress_to_buffer(chunk, &mut body).map_err(zstd_err);
        self.body = body;
        res?;
        let mut r = Reader::new(&self.body);
        let n = r.count(3)?;
        self.ts.reserve(n);
        self.slots.reserve(n);
        let mut ts = min_ts;
        let total = self.body.len();
        for _ in 0..n {
            ts = ts.wrapping_add(r.varint()?);
            let line = r.bytes()?;
            let line_end = total - r.rest().len();
            let line_start = line_end - line.len();
            let meta_at = line_end;
            let k = r.uvarint()?;
            for _ in 0..k {
                r.bytes()?;
                r.bytes()?;
            }
            self.ts.push(ts);
            self.lens.push(line.len() as u32);
            self.slots.push(Slot {
                line_start: line_start as u32,
                line_end: line_end as u32,
                meta: if k > 0 { meta_at as u32 } else { u32::MAX },
            });
        }
        Ok(())
    }

    /// Moves the decoded data out, keeping the zstd context (and no
    /// buffers) here.
    pub fn split_off(&mut self) -> Decoded {
        let mut out = std::mem::take(self);
        self.dctx = out.dctx.take();
        self.dctx3 = out.dctx3.take();
        out
    }

    /// True when the body buffer has room (kept from an earlier chunk).
    pub fn has_buffers(&self) -> bool {
        self.body.capacity() > 0
    }

    /// Takes back the buffers of a [`Decoded::split_off`] result for reuse.
    pub fn recycle(&mut self, mut other: Decoded) {
        if self.body.capacity() < other.body.capacity() {
            std::mem::swap(&mut self.body, &mut other.body);
            std::mem::swap(&mut self.ts, &mut other.ts);
            std::mem::swap(&mut self.lens, &mut other.lens);
            std::mem::swap(&mut self.slots, &mut other.slots);
            std::mem::swap(&mut self.head_buf, &mut other.head_buf);
        }
        if self.dctx.is_none() {
            self.dctx = other.dctx.take();
        }
        if self.dctx3.is_none() {
            self.dctx3 = other.dctx3.take();
        }
    }

    /// False when no entry of the chunk whose head was just decoded has
    /// structured metadata (version 1 chunks: known after the full decode).
    pub fn may_have_metadata(&self) -> bool {
        if self.v1 { self.slots.iter().any(|s| s.meta != u32::MAX) } else { self.has_meta }
    }

    /// True when the body's lines are contiguous at its start, so one
    /// search over `body[..lines_len]` covers every line.
    pub fn lines_contiguous(&self) -> bool {
        !self.v1
    }

    /// The line of entry `i` (after [`Decoded::decode_body`]).
    pub fn line(&self, i: usize) -> &[u8] {
        let s = self.slots[i];
        &self.body[s.line_start as usize..s.line_end as usize]
    }

    /// The encoded metadata pairs of entry `i`, if it has any.
    pub fn meta(&self, i: usize) -> Option<&[u8]> {
        let s = self.slots[i];
        (s.meta != u32::MAX).then(|| &self.body[s.meta as usize..])
    }
}

/// Reads an unsigned LEB128 varint at `*pos`, advancing it; one-byte
/// values (the common case) take one branch.
#[inline]
fn fast_uvarint(buf: &[u8], pos: &mut usize) -> Option<u64> {
    let b0 = *buf.get(*pos)?;
    *pos += 1;
    if b0 < 0x80 {
        return Some(u64::from(b0));
    }
    let mut v = u64::from(b0 & 0x7f);
    for shift in (7..64).step_by(7) {
        let b = *buf.get(*pos)?;
        *pos += 1;
        v |= u64::from(b & 0x7f) << shift;
        if b < 0x80 {
            return Some(v);
        }
    }
    None
}

/// Iterates over encoded metadata pairs (`count` then name/value strings),
/// stopping at the first malformed or non-UTF-8 pair.
pub fn meta_pairs(enc: &[u8]) -> impl Iterator<Item = (&str, &str)> {
    let mut r = Reader::new(enc);
    let n = r.uvarint().unwrap_or(0);
    (0..n).map_while(move |_| {
        let k = r.str().ok()?;
        let v = r.str().ok()?;
        Some((k, v))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    type Case<'a> = (i64, &'a str, Vec<(String, String)>);

    fn roundtrip(entries: &[Case<'_>]) -> Decoded {
        roundtrip_with(&mut Encoder::new(3).unwrap(), entries)
    }

    fn roundtrip_with(enc: &mut Encoder, entries: &[Case<'_>]) -> Decoded {
        let mut out = Vec::new();
        let it = entries.iter().map(|(ts, l, m)| EncEntry { ts: *ts, line: l.as_bytes(), metadata: m });
        let mut filter = trigram::Builder::default();
        let payload = enc.encode(it, &mut out, &mut filter).unwrap();
        let f = filter.finish();
        for (_, l, _) in entries {
            assert!(trigram::may_contain(&f, l.as_bytes()), "the chunk filter holds every line");
        }
        let mut d = Decoded::default();
        d.decode_head(&out, entries[0].0, payload).unwrap();
        assert_eq!(d.ts, entries.iter().map(|e| e.0).collect::<Vec<_>>());
        d.decode_body(&out, payload).unwrap();
        for (i, (_, l, m)) in entries.iter().enumerate() {
            assert_eq!(d.line(i), l.as_bytes());
            let got: Vec<(String, String)> =
                d.meta(i).map(|b| meta_pairs(b).map(|(k, v)| (k.into(), v.into())).collect()).unwrap_or_default();
            assert_eq!(&got, m);
        }
        d
    }

    #[test]
    fn round_trips() {
        roundtrip(&[(5, "a", vec![])]);
        roundtrip(&[(5, "", vec![]), (5, "x", vec![]), (1_000_000_007, "yy", vec![]), (i64::MAX, "z", vec![])]);
        let d = roundtrip(&[
            (-3, "line one", vec![("trace_id".into(), "abc".into())]),
            (0, "two", vec![]),
            (9, "three ünïcode", vec![("a".into(), "".into()), ("b".into(), "c".into())]),
        ]);
        assert!(d.lines_contiguous());
        assert_eq!(&d.body[..d.lines_len], "line onetwothree ünïcode".as_bytes());
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(256))]
        /// Any sorted timestamps (ties included), any lines (empty,
        /// multi-byte, control characters), metadata on some entries or none.
        #[test]
        fn any_entries_round_trip(
            mut entries in proptest::collection::vec(
                (
                    proptest::prelude::any::<i64>(),
                    ".{0,40}",
                    proptest::collection::vec(("[a-z_]{1,8}", ".{0,12}"), 0..3),
                ),
                1..120,
            ),
            tie in 0usize..4,
        ) {
            entries.sort_by_key(|e| e.0);
            if tie > 0 && entries.len() > tie {
                let t = entries[0].0;
                for e in entries.iter_mut().take(tie) {
                    e.0 = t;
                }
            }
            let cases: Vec<Case<'_>> = entries.iter().map(|(t, l, m)| (*t, l.as_str(), m.clone())).collect();
            roundtrip(&cases);
            roundtrip_with(&mut Encoder::framed_sized(3, 16 + tie, 8).unwrap(), &cases);
        }
    }

    /// Steady rates (one-byte delta-of-deltas, decoded eight at a time)
    /// mixed with jumps, at every alignment.
    #[test]
    fn steady_timestamps_round_trip() {
        for skip in 0..10usize {
            let mut t = 1_000i64;
            let cases: Vec<Case<'_>> = (0..100usize)
                .map(|i| {
                    t += if i % 23 == skip {
                        1 << 40
                    } else if i % 7 == 0 {
                        5
                    } else {
                        3 + (i % 3) as i64
                    };
                    (t, "l", vec![])
                })
                .collect();
            roundtrip(&cases);
            roundtrip(&cases[..skip + 1]);
        }
    }

    /// Version 3: every frame cut, with and without metadata, decodes to
    /// the same entries, whole or frame by frame.
    #[test]
    fn framed_round_trips() {
        let lines: Vec<String> = (0..60).map(|i| format!("entry {i} {}", "x".repeat(i % 7))).collect();
        let m = vec![("trace".to_string(), "t1".to_string())];
        for (first, rest) in [(1, 1), (10, 5), (50, 200), (1 << 20, 1 << 20)] {
            for meta_every in [0usize, 1, 4] {
                let cases: Vec<Case<'_>> = lines
                    .iter()
                    .enumerate()
                    .map(|(i, l)| {
                        let md = if meta_every > 0 && i % meta_every == 0 { m.clone() } else { vec![] };
                        (i as i64 * 10, l.as_str(), md)
                    })
                    .collect();
                let mut enc = Encoder::framed_sized(3, first, rest).unwrap();
                // Twice with one encoder: the dictionary of the first
                // chunk's later frames must not leak into the second chunk.
                for _ in 0..2 {
                    let d = roundtrip_with(&mut enc, &cases);
                    assert!(d.is_framed() && d.lines_contiguous());
                    assert_eq!(d.ranges, vec![(0, cases.len())]);
                }
            }
        }
    }

    /// Decoding with needles: every entry of `lo..hi` holding the needle
    /// is decoded (no false negatives), what is decoded is right, and
    /// frames that cannot match are not decompressed.
    #[test]
    fn framed_partial_decode() {
        let lines: Vec<String> = (0..400)
            .map(|i| if i == 250 { "find the ZQX9rareTOKEN here".to_string() } else { format!("GET /page/{i} ok") })
            .collect();
        let m = vec![("k".to_string(), "v".to_string())];
        let cases: Vec<Case<'_>> = lines
            .iter()
            .enumerate()
            .map(|(i, l)| (i as i64, l.as_str(), if i % 50 == 0 { m.clone() } else { vec![] }))
            .collect();
        let mut enc = Encoder::framed_sized(3, 600, 300).unwrap();
        let mut out = Vec::new();
        let mut filter = trigram::Builder::default();
        let it = cases.iter().map(|(ts, l, md)| EncEntry { ts: *ts, line: l.as_bytes(), metadata: md });
        let payload = enc.encode(it, &mut out, &mut filter).unwrap();
        let mut d = Decoded::default();
        for (lo, hi, needle) in
            [(0, 400, &b"ZQX9rareTOKEN"[..]), (0, 200, b"ZQX9rareTOKEN"), (240, 260, b"page/24"), (0, 400, b"ok")]
        {
            d.decode_head(&out, 0, payload).unwrap();
            let any = d.decode_frames(&out, payload, lo, hi, &[needle]).unwrap();
            let want: Vec<usize> =
                (lo..hi).filter(|&i| memchr::memmem::find(lines[i].as_bytes(), needle).is_some()).collect();
            assert_eq!(any, !d.ranges.is_empty());
            assert!(any || want.is_empty());
            for i in &want {
                assert!(d.ranges.iter().any(|&(a, z)| (a..z).contains(i)), "entry {i} for {needle:?}");
            }
            for &(a, z) in &d.ranges {
                for (i, line) in lines.iter().enumerate().take(z).skip(a) {
                    assert_eq!(d.line(i), line.as_bytes());
                    assert_eq!(d.meta(i).is_some(), i % 50 == 0);
                }
            }
            if needle == b"ZQX9rareTOKEN" {
                assert!(d.decompressed < payload as usize / 2, "{} of {payload}", d.decompressed);
            }
        }
    }

    #[test]
    fn reads_v1_chunks() {
        // A version 1 chunk: one zstd frame of (ts delta, line, pairs).
        let mut p = Vec::new();
        put_uvarint(&mut p, 2);
        put_varint(&mut p, 0);
        crate::codec::put_bytes(&mut p, b"first");
        crate::codec::put_pairs(&mut p, &[("k".into(), "v".into())]);
        put_varint(&mut p, 7);
        crate::codec::put_bytes(&mut p, b"second");
        crate::codec::put_pairs(&mut p, &[]);
        let z = zstd::bulk::compress(&p, 3).unwrap();
        let mut d = Decoded::default();
        d.decode_head(&z, 100, p.len() as u64).unwrap();
        d.decode_body(&z, p.len() as u64).unwrap();
        assert_eq!(d.ts, vec![100, 107]);
        assert_eq!(d.line(0), b"first");
        assert_eq!(d.line(1), b"second");
        assert_eq!(meta_pairs(d.meta(0).unwrap()).collect::<Vec<_>>(), vec![("k", "v")]);
        assert!(d.meta(1).is_none());
        assert!(!d.lines_contiguous());
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        let mut enc = Encoder::new(3).unwrap();
        let mut out = Vec::new();
        let m = vec![];
        let e = [EncEntry { ts: 1, line: b"hello world", metadata: &m }];
        let mut filter = trigram::Builder::default();
        let it = e.iter().map(|e| EncEntry { ts: e.ts, line: e.line, metadata: e.metadata });
        let payload = enc.encode(it, &mut out, &mut filter).unwrap();
        garble(&out, payload);
        // a framed chunk with metadata and several frames
        let mut enc = Encoder::framed_sized(3, 30, 20).unwrap();
        let m = [("k".to_string(), "v".to_string())];
        let lines: Vec<String> = (0..12).map(|i| format!("line {i} of a framed chunk")).collect();
        let it = lines.iter().enumerate().map(|(i, l)| EncEntry {
            ts: i as i64,
            line: l.as_bytes(),
            metadata: if i % 3 == 0 { &m[..] } else { &[] },
        });
        let payload = enc.encode(it, &mut out, &mut filter).unwrap();
        assert_eq!(out[0], V3_TAG);
        garble(&out, payload);
    }

    fn garble(out: &[u8], payload: u64) {
        let mut d = Decoded::default();
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        for round in 0..2000 {
            let mut bad = out.to_vec();
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            match round % 3 {
                0 => bad.truncate((x as usize) % bad.len()),
                1 => {
                    let i = (x as usize) % bad.len();
                    bad[i] ^= (x >> 32) as u8 | 1;
                }
                _ => bad = (0..(x % 64)).map(|i| (x >> (i % 56)) as u8).collect(),
            }
            if d.decode_head(&bad, 0, payload).is_ok() {
                if round % 2 == 0 {
                    let _ = d.decode_body(&bad, payload);
                } else if let Ok(true) = d.decode_frames(&bad, payload, 1, 5, &[b"line 3"]) {
                    for &(a, z) in &d.ranges {
                        for i in a..z {
                            let _ = (d.line(i), d.meta(i));
                        }
                    }
                }
            }
        }
    }
}
