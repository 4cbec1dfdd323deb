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

/// First byte of a version 2 chunk. A version 1 chunk is a bare zstd frame,
/// whose first byte is always 0x28 (the frame magic 0xFD2FB528, little-endian).
pub const V2_TAG: u8 = 0x02;

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
        })
    }

    /// The encoder compaction uses (see [`COMPACT_PARAMS`]).
    pub fn for_compaction() -> std::io::Result<Encoder> {
        let mut e = Encoder::new(0)?;
        for p in COMPACT_PARAMS {
            e.cctx.set_parameter(p)?;
        }
        Ok(e)
    }

    /// Encodes `entries` (sorted by timestamp, at least one) into `out`
    /// (cleared first); returns the body's decompressed length (the bound
    /// stored in the chunk reference as `payload`).
    pub fn encode<'a>(
        &mut self,
        entries: impl Iterator<Item = EncEntry<'a>> + Clone,
        out: &mut Vec<u8>,
    ) -> std::io::Result<u64> {
        self.head.clear();
        self.body.clear();
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
        }
        // Metadata: one pair list per entry when any has some.
        if meta {
            for e in entries {
                crate::codec::put_pairs(&mut self.body, e.metadata);
            }
        }
        out.clear();
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
        self.body.clear();
        self.lines_len = 0;
        self.has_meta = false;
        if chunk.first() != Some(&V2_TAG) {
            self.v1 = true;
            return self.decode_v1(chunk, min_ts, payload);
        }
        self.v1 = false;
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

    /// Like [`Decoded::decode_body`], from a body decompressed before
    /// (a cached copy of `self.body` after `decode_body` of the same chunk).
    pub fn set_body(&mut self, body: &[u8]) -> Result<(), DecodeError> {
        if self.v1 {
            return Ok(());
        }
        self.decode_lens()?;
        self.body.clear();
        self.body.extend_from_slice(body);
        self.index_body()
    }

    /// True for a version 2 chunk, whose body is decoded apart from its
    /// head ([`Decoded::decode_body`]).
    pub fn has_body_frame(&self) -> bool {
        !self.v1
    }

    /// Line and metadata slots over a decompressed body.
    fn index_body(&mut self) -> Result<(), DecodeError> {
        if self.body.len() < self.lines_len {
            return Err(DecodeError { offset: 0, reason: "body shorter than its lines" });
        }
        self.slots.clear();
        self.slots.reserve(self.ts.len());
        let mut pos = 0u32;
        for &l in &self.lens {
            self.slots.push(Slot { line_start: pos, line_end: pos + l, meta: u32::MAX });
            pos += l;
        }
        if self.has_meta {
            let mut r = Reader::new(&self.body[self.lines_len..]);
            for s in &mut self.slots {
                let at = self.lines_len + (self.body.len() - self.lines_len - r.rest().len());
                let n = r.uvarint()?;
                for _ in 0..n {
                    r.bytes()?;
                    r.bytes()?;
                }
                if n > 0 {
                    s.meta = at as u32;
                }
            }
        }
        Ok(())
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
        let mut enc = Encoder::new(3).unwrap();
        let mut out = Vec::new();
        let it = entries.iter().map(|(ts, l, m)| EncEntry { ts: *ts, line: l.as_bytes(), metadata: m });
        let payload = enc.encode(it, &mut out).unwrap();
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
        let payload =
            enc.encode(e.iter().map(|e| EncEntry { ts: e.ts, line: e.line, metadata: e.metadata }), &mut out).unwrap();
        let mut d = Decoded::default();
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        for round in 0..2000 {
            let mut bad = out.clone();
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
                let _ = d.decode_body(&bad, payload);
            }
        }
    }
}
