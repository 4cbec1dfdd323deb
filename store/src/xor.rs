//! Gorilla-style sample chunks: delta-of-delta timestamps and XOR-compressed
//! float values (Pelkonen et al., VLDB 2015; the scheme Prometheus's TSDB
//! uses). Byte layout in `docs/format/tsdb.md`.
//!
//! Values are encoded bit-exactly, so staleness markers and every NaN payload
//! survive. The encoder appends to a caller-supplied buffer; the decoder
//! checks bounds and reports truncation instead of panicking.

use crate::codec::{DecodeError, Reader, put_uvarint, put_varint};

/// Bits appended to a byte buffer, most significant first. Whole bytes go
/// out as soon as they are complete; the last partial byte (zero-padded) when
/// the writer is dropped.
struct BitWriter<'a> {
    buf: &'a mut Vec<u8>,
    /// Pending bits, in the low `n` bits.
    acc: u64,
    /// Pending bit count, under 8 between calls.
    n: u32,
}

impl<'a> BitWriter<'a> {
    fn new(buf: &'a mut Vec<u8>) -> Self {
        BitWriter { buf, acc: 0, n: 0 }
    }

    fn bit(&mut self, b: bool) {
        self.bits(u64::from(b), 1);
    }

    /// Writes the low `n` bits of `v` (n ≤ 64), most significant first.
    fn bits(&mut self, v: u64, n: u32) {
        if n == 0 {
            return;
        }
        if n > 56 {
            // keep the accumulator (≤ 7 pending bits) from overflowing
            self.bits(v >> 32, n - 32);
            self.bits(v & 0xffff_ffff, 32);
            return;
        }
        let v = v & ((1u64 << n) - 1);
        self.acc = (self.acc << n) | v;
        self.n += n;
        while self.n >= 8 {
            self.n -= 8;
            self.buf.push((self.acc >> self.n) as u8);
        }
        self.acc &= (1u64 << self.n) - 1;
    }
}

impl BitWriter<'_> {
    /// Bits in the buffer so far, the pending ones included.
    fn bit_len(&self) -> u64 {
        self.buf.len() as u64 * 8 + u64::from(self.n)
    }
}

impl Drop for BitWriter<'_> {
    fn drop(&mut self) {
        if self.n > 0 {
            self.buf.push((self.acc << (8 - self.n)) as u8);
            self.n = 0;
        }
    }
}

/// Reads bit fields, most significant bit first. Reads never fail: past
/// the end of the buffer they see zero bits, and the decoder checks once,
/// with [`BitReader::check`], that it did not read past the end (its loops
/// are bounded by the sample count, itself bounded by the chunk's size).
struct BitReader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl BitReader<'_> {
    /// The 64 bits starting at byte `i` (big-endian), zero past the end.
    #[inline(always)]
    fn word_at(&self, i: usize) -> u64 {
        match self.buf.get(i..i + 8) {
            Some(b) => u64::from_be_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]),
            None => self.tail_word(i),
        }
    }

    #[cold]
    #[inline(never)]
    fn tail_word(&self, i: usize) -> u64 {
        let mut w = [0u8; 8];
        let tail = self.buf.get(i..).unwrap_or(&[]);
        w[..tail.len()].copy_from_slice(tail);
        u64::from_be_bytes(w)
    }

    /// The next `n` (1..=57) bits without consuming them.
    #[inline(always)]
    fn peek(&self, n: u32) -> u64 {
        let w = self.word_at(self.pos / 8) << (self.pos % 8);
        w >> (64 - n)
    }

    #[inline(always)]
    fn skip(&mut self, n: u32) {
        self.pos += n as usize;
    }

    #[inline(always)]
    fn bit(&mut self) -> bool {
        let b = self.peek(1) == 1;
        self.pos += 1;
        b
    }

    /// Reads `n` (0..=64) bits.
    #[inline(always)]
    fn bits(&mut self, n: u32) -> u64 {
        if n == 0 {
            return 0;
        }
        if n > 56 {
            return self.bits_wide(n);
        }
        let v = self.peek(n);
        self.pos += n as usize;
        v
    }

    #[cold]
    #[inline(never)]
    fn bits_wide(&mut self, n: u32) -> u64 {
        let hi = self.peek(32);
        self.pos += 32;
        let lo = self.peek(n - 32);
        self.pos += (n - 32) as usize;
        (hi << (n - 32)) | lo
    }

    /// Fails when the reads went past the end of the buffer.
    fn check(&self) -> Result<(), DecodeError> {
        if self.pos > self.buf.len() * 8 {
            return Err(DecodeError { offset: self.buf.len(), reason: "chunk bits truncated" });
        }
        Ok(())
    }
}

/// Delta-of-delta buckets: (prefix bits, prefix length, value bits). The
/// first bucket is narrower than Gorilla's 14 bits because scrape jitter of a
/// few milliseconds is the common case (measured: 4.3 → 3.5 bytes/sample on
/// a jittered counter, see the test below).
const DOD_BUCKETS: [(u64, u32, u32); 3] = [(0b10, 2, 7), (0b110, 3, 14), (0b1110, 4, 20)];

fn fits(v: i64, bits: u32) -> bool {
    let half = 1i64 << (bits - 1);
    (-half..half).contains(&v)
}

fn sign_extend(v: u64, bits: u32) -> i64 {
    let shift = 64 - bits;
    ((v << shift) as i64) >> shift
}

/// Writes `v` with a bucket table: `0` for zero, a bucket's prefix and
/// value bits for the first bucket it fits, else `1111` and 64 bits.
fn put_bucketed(w: &mut BitWriter<'_>, v: i64, buckets: &[(u64, u32, u32); 3]) {
    if v == 0 {
        w.bit(false);
    } else if let Some(&(prefix, plen, vbits)) = buckets.iter().find(|b| fits(v, b.2)) {
        // one write of at most 24 bits: the prefix, then the value
        w.bits((prefix << vbits) | (v as u64 & ((1u64 << vbits) - 1)), plen + vbits);
    } else {
        w.bits(0b1111, 4);
        w.bits(v as u64, 64);
    }
}

/// Reads a value written by [`put_bucketed`] with the same table (whose
/// prefixes are `10`, `110`, `1110`).
#[inline(always)]
fn read_bucketed(br: &mut BitReader<'_>, buckets: &[(u64, u32, u32); 3]) -> i64 {
    // The prefix is `0`, `10`, `110`, `1110` or `1111`: its leading ones
    // (at most 4) pick the bucket.
    let ones = (br.peek(4) << 60).leading_ones();
    match ones {
        0 => {
            br.skip(1);
            0
        }
        1..=3 => {
            br.skip(ones + 1);
            let vbits = buckets[ones as usize - 1].2;
            sign_extend(br.bits(vbits), vbits)
        }
        _ => {
            br.skip(4);
            br.bits(64) as i64
        }
    }
}

/// Appends an encoded chunk of `samples` (sorted by timestamp, unique) to `buf`.
pub fn encode(buf: &mut Vec<u8>, samples: &[(i64, f64)]) {
    put_uvarint(buf, samples.len() as u64);
    let Some(&(t0, v0)) = samples.first() else {
        return;
    };
    put_varint(buf, t0);
    buf.extend_from_slice(&v0.to_bits().to_be_bytes());
    let mut w = BitWriter::new(buf);
    let (mut prev_t, mut prev_delta) = (t0, 0i64);
    let mut prev_v = v0.to_bits();
    let (mut lead, mut trail) = (u32::MAX, 0u32);
    for &(t, v) in &samples[1..] {
        let delta = t.wrapping_sub(prev_t);
        let dod = delta.wrapping_sub(prev_delta);
        put_bucketed(&mut w, dod, &DOD_BUCKETS);
        prev_t = t;
        prev_delta = delta;

        let bits = v.to_bits();
        let x = bits ^ prev_v;
        prev_v = bits;
        if x == 0 {
            w.bit(false);
            continue;
        }
        w.bit(true);
        let l = x.leading_zeros().min(31);
        let tr = x.trailing_zeros();
        if lead != u32::MAX && l >= lead && tr >= trail {
            // fits the previous window
            w.bit(false);
            w.bits(x >> trail, 64 - lead - trail);
        } else {
            lead = l;
            trail = tr;
            let sig = 64 - lead - trail;
            w.bit(true);
            w.bits(u64::from(lead), 5);
            w.bits(u64::from(sig % 64), 6); // 64 is written as 0
            w.bits(x >> trail, sig);
        }
    }
}

/// Decodes a chunk, appending its samples to `out`.
pub fn decode(chunk: &[u8], out: &mut Vec<(i64, f64)>) -> Result<(), DecodeError> {
    let mut r = Reader::new(chunk);
    let n = r.uvarint()? as usize;
    if n == 0 {
        return Ok(());
    }
    // Each sample after the first takes at least 2 bits.
    if n > 1 + chunk.len() * 4 {
        return Err(DecodeError { offset: 0, reason: "sample count larger than the chunk allows" });
    }
    let t0 = r.varint()?;
    let v0 = r.u64_be()?;
    out.reserve(n);
    out.push((t0, f64::from_bits(v0)));
    let mut br = BitReader { buf: r.rest(), pos: 0 };
    let start = out.len() - 1;
    let (mut t, mut delta) = (t0, 0i64);
    let mut v = v0;
    let (mut lead, mut trail) = (0u32, 0u32);
    for _ in 1..n {
        let dod = read_bucketed(&mut br, &DOD_BUCKETS);
        delta = delta.wrapping_add(dod);
        t = t.wrapping_add(delta);
        if br.bit() {
            if br.bit() {
                lead = br.bits(5) as u32;
                let sig = match br.bits(6) as u32 {
                    0 => 64,
                    s => s,
                };
                if lead + sig > 64 {
                    out.truncate(start);
                    return Err(DecodeError { offset: br.pos / 8, reason: "XOR window wider than 64 bits" });
                }
                trail = 64 - lead - sig;
            }
            let sig = 64 - lead - trail;
            v ^= br.bits(sig) << trail;
        }
        out.push((t, f64::from_bits(v)));
    }
    br.check().inspect_err(|_| out.truncate(start))
}

/// Chunk encodings of version-2 blocks (first byte of the chunk).
pub const ENC_XOR: u8 = 0;
/// Decimal values with a regular interval (see [`encode_chunk`]).
pub const ENC_DECIMAL: u8 = 1;

/// Largest decimal exponent tried (10^15 is exact in f64).
const MAX_EXP: u32 = 15;
const POW10: [f64; 16] = [1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11, 1e12, 1e13, 1e14, 1e15];

/// The smallest `e` such that every value is exactly `m / 10^e` for an
/// integer `|m| ≤ 2^53` (bit-exact, so `-0.0`, NaN and infinities never
/// qualify), with the mantissas.
fn as_decimals(samples: &[(i64, f64)]) -> Option<(u32, Vec<i64>)> {
    let exact = |v: f64, e: u32| -> Option<i64> {
        let m = (v * POW10[e as usize]).round();
        if m.is_nan() || m.abs() > 9_007_199_254_740_992.0 {
            return None;
        }
        let m = m as i64;
        // through the integer, as the decoder computes it (so -0.0 fails)
        ((m as f64 / POW10[e as usize]).to_bits() == v.to_bits()).then_some(m)
    };
    let mut e = 0u32;
    'grow: loop {
        let mut ms = Vec::with_capacity(samples.len());
        for &(_, v) in samples {
            match exact(v, e) {
                Some(m) => ms.push(m),
                None => {
                    // find this value's exponent, then retry the chunk with it
                    let need = (e + 1..=MAX_EXP).find(|&x| exact(v, x).is_some())?;
                    e = need;
                    continue 'grow;
                }
            }
        }
        return Some((e, ms));
    }
}

fn zigzag(v: i64) -> u64 {
    ((v << 1) ^ (v >> 63)) as u64
}

fn unzigzag(u: u64) -> i64 {
    ((u >> 1) as i64) ^ -((u & 1) as i64)
}

/// Timestamp residual buckets of [`ENC_DECIMAL`]: the residual is the
/// delta minus the chunk's interval (scrape jitter), mostly a few ms.
const TS_BUCKETS: [(u64, u32, u32); 3] = [(0b10, 2, 4), (0b110, 3, 14), (0b1110, 4, 20)];

/// Where the bits of one encoded chunk go (for measurements: the bench
/// prints it by series kind).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ChunkSplit {
    /// Bytes before the bit stream (encoding byte included).
    pub header_bytes: u64,
    /// Bits of the timestamp stream.
    pub ts_bits: u64,
    /// Bits of the value stream (the zero padding to a whole byte included).
    pub value_bits: u64,
}

/// Appends one chunk of a version-2 block: [`ENC_GRID`] when it has 2 to
/// [`MAX_GRID_SAMPLES`] samples and every value is an exact decimal (what
/// exporters print), else [`ENC_XOR`] followed by the Gorilla chunk of
/// [`encode`]. Layout in `docs/format/tsdb.md`.
pub fn encode_chunk(buf: &mut Vec<u8>, samples: &[(i64, f64)]) {
    encode_chunk_split(buf, samples);
}

/// [`encode_chunk`], returning where the bits went (`None` for an XOR
/// chunk).
pub fn encode_chunk_split(buf: &mut Vec<u8>, samples: &[(i64, f64)]) -> Option<ChunkSplit> {
    let decimals = (2..=MAX_GRID_SAMPLES).contains(&samples.len()).then(|| as_decimals(samples)).flatten();
    let Some((exp, ms)) = decimals else {
        buf.push(ENC_XOR);
        encode(buf, samples);
        return None;
    };
    Some(encode_grid(buf, samples, exp, &ms))
}

/// Writes encoding `1` ([`ENC_DECIMAL`], no longer written by
/// [`encode_chunk`]; kept for tests of old blocks and for measurements),
/// or XOR when the values are not decimals.
pub fn encode_decimal_v1(buf: &mut Vec<u8>, samples: &[(i64, f64)]) -> Option<ChunkSplit> {
    let Some((exp, ms)) = (samples.len() >= 2).then(|| as_decimals(samples)).flatten() else {
        buf.push(ENC_XOR);
        encode(buf, samples);
        return None;
    };
    let start = buf.len();
    buf.push(ENC_DECIMAL);
    put_uvarint(buf, samples.len() as u64);
    put_varint(buf, samples[0].0);
    let interval = samples[1].0.wrapping_sub(samples[0].0);
    put_varint(buf, interval);
    buf.push(exp as u8);
    put_varint(buf, ms[0]);
    // value deltas: width of the widest zigzag delta
    let mut width = 0u32;
    for w in ms.windows(2) {
        width = width.max(64 - zigzag(w[1].wrapping_sub(w[0])).leading_zeros());
    }
    buf.push(width as u8);
    let header_bytes = (buf.len() - start) as u64;
    let mut w = BitWriter::new(buf);
    let bits0 = w.bit_len();
    for pair in samples.windows(2) {
        let r = pair[1].0.wrapping_sub(pair[0].0).wrapping_sub(interval);
        put_bucketed(&mut w, r, &TS_BUCKETS);
    }
    let ts_bits = w.bit_len() - bits0;
    let mut prev_d = 0i64;
    for pair in ms.windows(2) {
        let d = pair[1].wrapping_sub(pair[0]);
        if d == prev_d {
            w.bit(false);
        } else {
            w.bit(true);
            w.bits(zigzag(d), width);
        }
        prev_d = d;
    }
    drop(w);
    let value_bits = (buf.len() - start) as u64 * 8 - header_bytes * 8 - ts_bits;
    Some(ChunkSplit { header_bytes, ts_bits, value_bits })
}

/// Decimal values on a scrape grid (encoding `3`, written since 2026-11).
pub const ENC_GRID: u8 = 3;

/// Most samples an [`ENC_GRID`] chunk holds. The encoder never writes more;
/// the decoder refuses more (a constant series on an exact grid costs no
/// bits per sample, so the chunk's size cannot bound its count).
pub const MAX_GRID_SAMPLES: usize = 1 << 16;

/// Widest grid residual code; timestamps needing more take delta mode.
const MAX_GRID_WIDTH: u32 = 20;

/// `ts` header byte of an [`ENC_GRID`] chunk in delta mode.
const TS_DELTA: u8 = 0xff;

fn bits_for(v: u64) -> u32 {
    64 - v.leading_zeros()
}

/// Bits [`put_bucketed`] spends on `v`.
fn bucketed_bits(v: i64, buckets: &[(u64, u32, u32); 3]) -> u64 {
    if v == 0 {
        1
    } else if let Some(b) = buckets.iter().find(|b| fits(v, b.2)) {
        u64::from(b.1 + b.2)
    } else {
        68
    }
}

/// The scrape interval of sorted, unique timestamps: their span divided by
/// the grid slots it covers, the slot count taken from the smallest gap so
/// that a missed scrape does not skew it.
fn grid_interval(samples: &[(i64, f64)]) -> i64 {
    let first_gap = samples[1].0.wrapping_sub(samples[0].0);
    let min_gap = samples.windows(2).map(|w| i128::from(w[1].0) - i128::from(w[0].0)).min().unwrap_or(0);
    if min_gap <= 0 {
        return first_gap;
    }
    let span = i128::from(samples[samples.len() - 1].0) - i128::from(samples[0].0);
    let slots = ((span + min_gap / 2) / min_gap).max(1);
    i64::try_from((span + slots / 2) / slots).unwrap_or(first_gap)
}

/// Grid mode of [`ENC_GRID`] timestamps: for samples 1.., the slots skipped
/// before each (0 but after a missed scrape) and the residual against its
/// slot, `t_i = t0 + slot_i × interval + residual_i`; with the residuals'
/// minimum and code width. `None` when the timestamps do not sit on a grid
/// of `interval` closely enough.
fn plan_grid(samples: &[(i64, f64)], interval: i64, plan: &mut Vec<(u64, i64)>) -> Option<(i64, u32)> {
    plan.clear();
    let iv = i128::from(interval);
    if iv <= 0 {
        return None;
    }
    let t0 = i128::from(samples[0].0);
    let (mut slot, mut lo, mut hi) = (0i128, i128::MAX, i128::MIN);
    for &(t, _) in &samples[1..] {
        slot += 1;
        let mut g = i128::from(t) - (t0 + slot * iv);
        if g < -(iv / 2) {
            return None;
        }
        let extra = if g > iv / 2 { (g + iv / 2) / iv } else { 0 };
        g -= extra * iv;
        slot += extra;
        if slot > i128::from(u32::MAX) {
            return None;
        }
        lo = lo.min(g);
        hi = hi.max(g);
        plan.push((extra as u64, g as i64));
    }
    let span = (hi - lo) as u64;
    let skips = plan.iter().any(|p| p.0 > 0);
    let width = if span == 0 && !skips { 0 } else { bits_for(span + 1) };
    (width <= MAX_GRID_WIDTH).then_some((lo as i64, width))
}

/// Writes an [`ENC_GRID`] chunk of `samples` whose values are `ms[i] / 10^exp`.
fn encode_grid(buf: &mut Vec<u8>, samples: &[(i64, f64)], exp: u32, ms: &[i64]) -> ChunkSplit {
    let n = samples.len();
    let interval = grid_interval(samples);
    // timestamps: grid mode when it is smaller than delta mode
    let delta_cost: u64 = samples
        .windows(2)
        .map(|p| bucketed_bits(p[1].0.wrapping_sub(p[0].0).wrapping_sub(interval), &TS_BUCKETS))
        .sum();
    let mut plan = Vec::with_capacity(n - 1);
    let grid = plan_grid(samples, interval, &mut plan).filter(|&(_, width)| {
        let skips: u64 =
            plan.iter().filter(|p| p.0 > 0).map(|p| u64::from(width) + bucketed_bits(p.0 as i64, &TS_BUCKETS)).sum();
        (n as u64 - 1) * u64::from(width) + skips < delta_cost
    });
    // values: deltas of the mantissas less their minimum, in a fixed width,
    // each behind a "changed" flag when repeats make that smaller
    // (one pass: U_i = U_{i−1} exactly when the deltas are equal; the U
    // before sample 1 is 0, i.e. a delta of `dmin`, counted below)
    let (mut dmin, mut dmax, mut repeats, mut first_d) = (i64::MAX, i64::MIN, 0u64, 0i64);
    let mut prev_d = None;
    for p in ms.windows(2) {
        let d = p[1].wrapping_sub(p[0]);
        dmin = dmin.min(d);
        dmax = dmax.max(d);
        match prev_d {
            Some(pd) => repeats += u64::from(pd == d),
            None => first_d = d,
        }
        prev_d = Some(d);
    }
    repeats += u64::from(first_d == dmin);
    let vw = bits_for(dmax.wrapping_sub(dmin) as u64);
    let flags = (n as u64 - 1) + (n as u64 - 1 - repeats) * u64::from(vw) < (n as u64 - 1) * u64::from(vw);

    let start = buf.len();
    buf.push(ENC_GRID);
    put_uvarint(buf, n as u64);
    put_varint(buf, samples[0].0);
    put_varint(buf, interval);
    match grid {
        Some((base, width)) => {
            buf.push(width as u8);
            put_varint(buf, base);
        }
        None => buf.push(TS_DELTA),
    }
    buf.push(exp as u8);
    put_varint(buf, ms[0]);
    put_varint(buf, dmin);
    buf.push(vw as u8 | if flags { 0x80 } else { 0 });
    let header_bytes = (buf.len() - start) as u64;
    let mut w = BitWriter::new(buf);
    let bits0 = w.bit_len();
    match grid {
        Some((_, 0)) => {}
        Some((base, width)) => {
            let escape = (1u64 << width) - 1;
            for &(extra, g) in &plan {
                if extra > 0 {
                    w.bits(escape, width);
                    put_bucketed(&mut w, extra as i64, &TS_BUCKETS);
                }
                w.bits(g.wrapping_sub(base) as u64, width);
            }
        }
        None => {
            for p in samples.windows(2) {
                put_bucketed(&mut w, p[1].0.wrapping_sub(p[0].0).wrapping_sub(interval), &TS_BUCKETS);
            }
        }
    }
    let ts_bits = w.bit_len() - bits0;
    let mut prev_u = 0u64;
    for p in ms.windows(2) {
        let u = p[1].wrapping_sub(p[0]).wrapping_sub(dmin) as u64;
        if flags {
            w.bit(u != prev_u);
            if u != prev_u {
                w.bits(u, vw);
            }
        } else {
            w.bits(u, vw);
        }
        prev_u = u;
    }
    drop(w);
    let value_bits = (buf.len() - start) as u64 * 8 - header_bytes * 8 - ts_bits;
    ChunkSplit { header_bytes, ts_bits, value_bits }
}

/// Decodes a chunk written by [`encode_chunk`], appending to `out`.
pub fn decode_chunk(chunk: &[u8], out: &mut Vec<(i64, f64)>) -> Result<(), DecodeError> {
    let (&enc, rest) = chunk.split_first().ok_or(DecodeError { offset: 0, reason: "empty chunk" })?;
    match enc {
        ENC_XOR => decode(rest, out),
        ENC_DECIMAL => decode_decimal(rest, out),
        ENC_GRID => decode_grid(rest, out),
        _ => Err(DecodeError { offset: 0, reason: "unknown chunk encoding" }),
    }
}

fn decode_decimal(chunk: &[u8], out: &mut Vec<(i64, f64)>) -> Result<(), DecodeError> {
    let mut r = Reader::new(chunk);
    let n = r.uvarint()? as usize;
    // each sample after the first takes at least 2 bits
    if n < 2 || n > 1 + chunk.len() * 4 {
        return Err(DecodeError { offset: 0, reason: "sample count the chunk cannot hold" });
    }
    let t0 = r.varint()?;
    let interval = r.varint()?;
    let hdr = r.rest();
    let (&exp, hdr) = hdr.split_first().ok_or(DecodeError { offset: 0, reason: "truncated chunk header" })?;
    if u32::from(exp) > MAX_EXP {
        return Err(DecodeError { offset: 0, reason: "decimal exponent out of range" });
    }
    let scale = POW10[exp as usize];
    let mut r = Reader::new(hdr);
    let m0 = r.varint()?;
    let rest = r.rest();
    let (&width, bits) = rest.split_first().ok_or(DecodeError { offset: 0, reason: "truncated chunk header" })?;
    if width > 64 {
        return Err(DecodeError { offset: 0, reason: "value width over 64 bits" });
    }
    let mut br = BitReader { buf: bits, pos: 0 };
    let start = out.len();
    out.reserve(n);
    out.push((t0, 0.0));
    let mut t = t0;
    for _ in 1..n {
        let res = read_bucketed(&mut br, &TS_BUCKETS);
        t = t.wrapping_add(interval).wrapping_add(res);
        out.push((t, 0.0));
    }
    let (mut m, mut d) = (m0, 0i64);
    out[start].1 = m as f64 / scale;
    for slot in &mut out[start + 1..] {
        if br.bit() {
            d = unzigzag(br.bits(u32::from(width)));
        }
        m = m.wrapping_add(d);
        slot.1 = m as f64 / scale;
    }
    br.check().inspect_err(|_| out.truncate(start))
}

fn decode_grid(chunk: &[u8], out: &mut Vec<(i64, f64)>) -> Result<(), DecodeError> {
    let err = |r: &Reader<'_>, reason| DecodeError { offset: chunk.len() - r.rest().len(), reason };
    let mut r = Reader::new(chunk);
    let n = r.uvarint()?;
    if !(2..=MAX_GRID_SAMPLES as u64).contains(&n) {
        return Err(err(&r, "sample count out of range"));
    }
    let n = n as usize;
    let t0 = r.varint()?;
    let interval = r.varint()?;
    let ts = r.u8()?;
    let grid = match ts {
        TS_DELTA => None,
        w if u32::from(w) <= MAX_GRID_WIDTH => Some((r.varint()?, u32::from(w))),
        _ => return Err(err(&r, "grid width out of range")),
    };
    let exp = r.u8()?;
    if u32::from(exp) > MAX_EXP {
        return Err(err(&r, "decimal exponent out of range"));
    }
    let scale = POW10[exp as usize];
    let m0 = r.varint()?;
    let dmin = r.varint()?;
    let vb = r.u8()?;
    let (vw, flags) = (u32::from(vb & 0x7f), vb & 0x80 != 0);
    if vw > 64 {
        return Err(err(&r, "value width over 64 bits"));
    }
    let mut br = BitReader { buf: r.rest(), pos: 0 };
    let start = out.len();
    out.reserve(n);
    out.push((t0, 0.0));
    match grid {
        None => {
            let mut t = t0;
            for _ in 1..n {
                t = t.wrapping_add(interval).wrapping_add(read_bucketed(&mut br, &TS_BUCKETS));
                out.push((t, 0.0));
            }
        }
        Some((base, 0)) => {
            // t0 + slot × interval + base, kept incrementally
            let mut t = t0.wrapping_add(base);
            for _ in 1..n {
                t = t.wrapping_add(interval);
                out.push((t, 0.0));
            }
        }
        Some((base, width)) => {
            let escape = (1u64 << width) - 1;
            // t0 + base + slot × interval
            let mut slot_t = t0.wrapping_add(base);
            for _ in 1..n {
                slot_t = slot_t.wrapping_add(interval);
                let mut code = br.bits(width);
                if code == escape {
                    let extra = read_bucketed(&mut br, &TS_BUCKETS);
                    slot_t = slot_t.wrapping_add(extra.wrapping_mul(interval));
                    code = br.bits(width);
                    if code == escape {
                        out.truncate(start);
                        return Err(DecodeError { offset: 0, reason: "grid escape twice in a row" });
                    }
                }
                out.push((slot_t.wrapping_add(code as i64), 0.0));
            }
        }
    }
    let mut m = m0;
    out[start].1 = m as f64 / scale;
    let slots = &mut out[start + 1..];
    if flags {
        let mut u = 0u64;
        for slot in slots {
            if br.bit() {
                u = br.bits(vw);
            }
            m = m.wrapping_add(dmin.wrapping_add(u as i64));
            slot.1 = m as f64 / scale;
        }
    } else if vw == 0 {
        for slot in slots {
            m = m.wrapping_add(dmin);
            slot.1 = m as f64 / scale;
        }
    } else {
        for slot in slots {
            m = m.wrapping_add(dmin.wrapping_add(br.bits(vw) as i64));
            slot.1 = m as f64 / scale;
        }
    }
    br.check().inspect_err(|_| out.truncate(start))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::strategy::Strategy;

    fn round_trip(samples: &[(i64, f64)]) -> usize {
        let mut buf = Vec::new();
        encode(&mut buf, samples);
        let mut out = Vec::new();
        decode(&buf, &mut out).unwrap();
        assert_eq!(out.len(), samples.len());
        for (a, b) in out.iter().zip(samples) {
            assert_eq!(a.0, b.0);
            assert_eq!(a.1.to_bits(), b.1.to_bits(), "value bits differ at t={}", a.0);
        }
        for cut in (0..buf.len()).step_by(1 + buf.len() / 64) {
            // truncated chunks are errors or shorter, never panics
            let _ = decode(&buf[..cut], &mut Vec::new());
        }
        buf.len()
    }

    #[test]
    fn round_trips() {
        round_trip(&[]);
        round_trip(&[(5, 1.0)]);
        let stale = f64::from_bits(cairn_wire::STALE_NAN_BITS);
        round_trip(&[
            (-100, f64::NAN),
            (0, stale),
            (i64::MAX, f64::INFINITY),
            (i64::MIN, -0.0),
            (7, f64::MIN_POSITIVE),
        ]);
        // regular scrape: counter with jitter
        let mut x: u64 = 42;
        let mut samples = Vec::new();
        let mut v = 0.0;
        for i in 0..960i64 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            v += (x % 1000) as f64;
            samples.push((1_700_000_000_000 + i * 15_000 + (x % 7) as i64 - 3, v));
        }
        let n = round_trip(&samples);
        let bytes_per_sample = n as f64 / samples.len() as f64;
        eprintln!("jittered counter: {bytes_per_sample:.2} bytes/sample");
        assert!(bytes_per_sample < 3.6, "{bytes_per_sample} bytes/sample");
        // random fractional steps: Gorilla's worst case, still exact
        let fractional: Vec<(i64, f64)> = samples.iter().map(|&(t, v)| (t, v / 7.0)).collect();
        round_trip(&fractional);
        // constant series compresses to a couple of bits per sample
        let constant: Vec<(i64, f64)> = (0..960).map(|i| (i * 15_000, 42.0)).collect();
        assert!(round_trip(&constant) < 300);
        // every delta-of-delta bucket
        let ts = [0i64, 1, 10_000, 100_000, 1_000_000, 10_000_000_000, 10_000_000_001, 9_000_000_000];
        round_trip(&ts.iter().map(|&t| (t, t as f64)).collect::<Vec<_>>());
    }

    #[test]
    fn garbage_never_panics() {
        let mut x: u64 = 7;
        for _ in 0..20_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let len = (x % 40) as usize;
            let buf: Vec<u8> = (0..len).map(|i| (x >> (i % 8 * 8)) as u8 ^ i as u8).collect();
            let _ = decode(&buf, &mut Vec::new());
        }
    }

    fn round_trip_v2(samples: &[(i64, f64)]) -> (u8, usize) {
        let mut buf = Vec::new();
        encode_chunk(&mut buf, samples);
        let mut out = Vec::new();
        decode_chunk(&buf, &mut out).unwrap();
        assert_eq!(out.len(), samples.len());
        for (a, b) in out.iter().zip(samples) {
            assert_eq!((a.0, a.1.to_bits()), (b.0, b.1.to_bits()), "at t={}", b.0);
        }
        for cut in 0..buf.len() {
            let _ = decode_chunk(&buf[..cut], &mut Vec::new());
        }
        (buf[0], buf.len())
    }

    /// Any f64 bit pattern, with the values real series have mixed in:
    /// staleness markers, other NaNs, ±0, ±∞, subnormals, decimals.
    fn value_bits() -> impl proptest::strategy::Strategy<Value = u64> {
        use proptest::prelude::*;
        prop_oneof![
            4 => any::<u64>(),
            1 => Just(cairn_wire::STALE_NAN_BITS),
            1 => Just(f64::NAN.to_bits()),
            1 => Just(0u64),
            1 => Just((-0.0f64).to_bits()),
            1 => Just(f64::INFINITY.to_bits()),
            1 => Just(f64::NEG_INFINITY.to_bits()),
            1 => (1u64..1 << 52).prop_map(|m| m), // subnormal
            4 => (any::<i32>(), 0u32..10).prop_map(|(m, d)| (f64::from(m) / 10f64.powi(d as i32)).to_bits()),
        ]
    }

    /// Sorted, unique timestamps: scrape-like (interval + jitter, from any
    /// start, some scrapes missed), on an exact grid, near the ends of i64,
    /// or anywhere in i64 with gaps of any size.
    fn timestamps(n: usize) -> impl proptest::strategy::Strategy<Value = Vec<i64>> {
        use proptest::prelude::*;
        prop_oneof![
            (any::<i64>(), 1i64..100_000, 0i64..60, proptest::collection::vec((-50i64..50, 0u8..20), n)).prop_map(
                |(start, step, jmax, jit)| {
                    let start = start / 4;
                    let mut slot = 0i64;
                    jit.iter()
                        .map(|&(j, miss)| {
                            slot += if miss == 0 { 2 + i64::from(j.unsigned_abs() as u8 % 5) } else { 1 };
                            start.saturating_add(slot * step + j % (jmax + 1))
                        })
                        .collect()
                }
            ),
            (any::<i64>(), 1i64..1_000_000)
                .prop_map(move |(start, step)| { (0..n as i64).map(|i| start.saturating_add(i * step)).collect() }),
            (
                prop_oneof![Just(i64::MIN), Just(i64::MAX - 10_000_000)],
                1i64..100_000,
                proptest::collection::vec(-3i64..4, n)
            )
                .prop_map(|(start, step, jit)| {
                    jit.iter().enumerate().map(|(i, j)| start.saturating_add(i as i64 * step + j + 3)).collect()
                }),
            proptest::collection::vec(any::<i64>(), n),
        ]
        .prop_map(|mut ts: Vec<i64>| {
            ts.sort_unstable();
            ts.dedup();
            ts
        })
    }

    /// Writes `fields` bit by bit (the obvious definition).
    fn bits_one_at_a_time(fields: &[(u64, u32)]) -> Vec<u8> {
        let mut buf: Vec<u8> = Vec::new();
        let mut used = 0;
        for &(v, n) in fields {
            for i in (0..n).rev() {
                if used == 0 {
                    buf.push(0);
                }
                if (v >> i) & 1 == 1 {
                    *buf.last_mut().unwrap() |= 0x80 >> used;
                }
                used = (used + 1) % 8;
            }
        }
        buf
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(512))]

        /// Multi-bit writes and reads are the bit-at-a-time definition.
        #[test]
        fn bit_fields_match_bit_by_bit(fields in proptest::collection::vec((proptest::prelude::any::<u64>(), 0u32..=64), 0..40)) {
            let want = bits_one_at_a_time(&fields);
            let mut buf = Vec::new();
            let mut w = BitWriter::new(&mut buf);
            for &(v, n) in &fields {
                w.bits(v, n);
            }
            drop(w);
            proptest::prop_assert_eq!(&buf, &want);
            let mut r = BitReader { buf: &buf, pos: 0 };
            for &(v, n) in &fields {
                let mask = if n == 64 { u64::MAX } else { (1u64 << n) - 1 };
                proptest::prop_assert_eq!(r.bits(n), v & mask);
            }
            proptest::prop_assert!(r.check().is_ok());
            // past the end: zero bits, never a panic, and the check fails
            let left = (buf.len() * 8 - r.pos) as u32;
            proptest::prop_assert_eq!(r.bits(left + 1), 0);
            proptest::prop_assert!(r.check().is_err());
        }
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(256))]
        #[test]
        fn every_bit_pattern_and_timestamp_round_trips(
            (ts, bits) in (0usize..160).prop_flat_map(|n| (timestamps(n), proptest::collection::vec(value_bits(), n)))
        ) {
            let samples: Vec<(i64, f64)> = ts.iter().zip(&bits).map(|(&t, &b)| (t, f64::from_bits(b))).collect();
            round_trip_samples(&samples)?;
        }

        /// Decimal values (counters, gauges, constants; the grid encoding's
        /// case) with scrape timestamps, bit-exact in every encoding.
        #[test]
        fn decimal_series_round_trip(
            (ts, vals) in (0usize..300).prop_flat_map(|n| (timestamps(n), decimal_values(n)))
        ) {
            let samples: Vec<(i64, f64)> = ts.iter().zip(&vals).map(|(&t, &v)| (t, v)).collect();
            round_trip_samples(&samples)?;
        }
    }

    /// Decimal series: a counter, a gauge or a constant at 0–9 decimals,
    /// sometimes with a staleness marker or NaN in it.
    fn decimal_values(n: usize) -> impl proptest::strategy::Strategy<Value = Vec<f64>> {
        use proptest::prelude::*;
        (0u32..10, any::<i64>(), 0u64..1 << 40, 0u8..4, proptest::collection::vec((any::<u64>(), 0u16..400), n))
            .prop_map(|(d, start, spread, kind, steps)| {
                let scale = 10f64.powi(d as i32);
                let mut m = start % (1 << 50);
                steps
                    .iter()
                    .map(|&(r, special)| {
                        match kind {
                            0 => m = m.saturating_add((r % spread.max(1)) as i64),
                            1 => m = m.saturating_add((r % (2 * spread + 1)) as i64 - spread as i64),
                            _ => {}
                        }
                        match special {
                            0 => f64::from_bits(cairn_wire::STALE_NAN_BITS),
                            1 => -0.0,
                            _ => (m as f64) / scale,
                        }
                    })
                    .collect()
            })
    }

    /// Every encoding (XOR, decimal, grid) returns `samples` bit-exactly;
    /// truncated chunks decode to an error or fewer samples, never a panic.
    fn round_trip_samples(samples: &[(i64, f64)]) -> Result<(), proptest::test_runner::TestCaseError> {
        let want: Vec<(i64, u64)> = samples.iter().map(|&(t, v)| (t, v.to_bits())).collect();
        for enc in 0..3 {
            let (mut buf, mut out) = (Vec::new(), Vec::new());
            match enc {
                0 => encode(&mut buf, samples),
                1 => {
                    encode_decimal_v1(&mut buf, samples);
                }
                _ => {
                    encode_chunk(&mut buf, samples);
                }
            }
            let res = if enc == 0 { decode(&buf, &mut out) } else { decode_chunk(&buf, &mut out) };
            proptest::prop_assert!(res.is_ok(), "{res:?}");
            let got: Vec<(i64, u64)> = out.iter().map(|&(t, v)| (t, v.to_bits())).collect();
            proptest::prop_assert_eq!(&got, &want);
            for cut in (0..buf.len()).step_by(1 + buf.len() / 16) {
                let _ = if enc == 0 { decode(&buf[..cut], &mut out) } else { decode_chunk(&buf[..cut], &mut out) };
            }
        }
        Ok(())
    }

    #[test]
    fn decimal_chunks_round_trip_and_fall_back() {
        let mut x: u64 = 99;
        let mut rnd = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let base = 1_700_000_000_000i64;
        let jitter = |i: i64, r: u64| base + i * 15_000 + (r % 7) as i64 - 3;
        // counter at 2 decimals, gauge at 9, constant, integers
        let mut v = 1234.5;
        let counter: Vec<(i64, f64)> = (0..240)
            .map(|i| {
                v = ((v + (rnd() % 1000) as f64 / 100.0) * 100.0).round() / 100.0;
                (jitter(i, rnd()), v)
            })
            .collect();
        let (enc, n) = round_trip_v2(&counter);
        assert_eq!(enc, ENC_GRID);
        let mut xor = Vec::new();
        encode(&mut xor, &counter);
        eprintln!("decimal counter: {n} bytes, XOR {} bytes", xor.len());
        assert!(n < xor.len() * 2 / 3, "{n} vs {}", xor.len());
        let gauge: Vec<(i64, f64)> =
            (0..240).map(|i| (jitter(i, rnd()), ((rnd() % 1_000_000) as f64 / 1e9 * 1e9).round() / 1e9)).collect();
        assert_eq!(round_trip_v2(&gauge).0, ENC_GRID);
        let constant: Vec<(i64, f64)> = (0..240).map(|i| (jitter(i, rnd()), 42.0)).collect();
        let (enc, n) = round_trip_v2(&constant);
        assert_eq!(enc, ENC_GRID);
        assert!(n < 240, "constant jittered series: {n} bytes");
        // not decimals: XOR, still exact
        let stale = f64::from_bits(cairn_wire::STALE_NAN_BITS);
        assert_eq!(round_trip_v2(&[(1, 1.0), (2, stale)]).0, ENC_XOR);
        assert_eq!(round_trip_v2(&[(1, 1.0), (2, -0.0)]).0, ENC_XOR);
        assert_eq!(round_trip_v2(&[(1, 1.0 / 3.0), (2, 0.5)]).0, ENC_XOR);
        assert_eq!(round_trip_v2(&[(1, f64::INFINITY), (2, 0.5)]).0, ENC_XOR);
        assert_eq!(round_trip_v2(&[(5, 1.5)]).0, ENC_XOR);
        round_trip_v2(&[]);
        // edges: huge mantissas, negative values, wild timestamps
        round_trip_v2(&[(i64::MIN, 9_007_199_254_740_992.0), (0, -9_007_199_254_740_992.0), (i64::MAX, 0.1)]);
        round_trip_v2(&[(0, 1e-15), (1, -1e-15), (1_000_000_000, 123_456_789.123_456), (-5, 0.0)]);
    }

    /// The bench's scrape pattern: ±3 ms jitter on a 15 s grid takes 3 bits
    /// per sample (7 residuals) in grid mode, a missed scrape one escape; a
    /// constant takes no value bits, a counter no "changed" flags.
    #[test]
    fn grid_chunks_are_compact() {
        let mut x: u64 = 5;
        let mut rnd = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let mut slot = 0i64;
        let ts: Vec<i64> = (0..240)
            .map(|i| {
                slot += if i == 100 { 2 } else { 1 };
                1_700_000_000_000 + slot * 15_000 + (rnd() % 7) as i64 - 3
            })
            .collect();
        let constant: Vec<(i64, f64)> = ts.iter().map(|&t| (t, 42.5)).collect();
        let mut buf = Vec::new();
        let split = encode_chunk_split(&mut buf, &constant).unwrap();
        assert_eq!(buf[0], ENC_GRID);
        assert!(split.ts_bits <= 239 * 3 + 3 + 4 + 4, "{split:?}");
        assert!(split.value_bits < 8, "{split:?}");
        let mut v = 1000i64;
        let counter: Vec<(i64, f64)> = ts
            .iter()
            .map(|&t| {
                v += 700 + (rnd() % 100) as i64;
                (t, v as f64 / 100.0)
            })
            .collect();
        let mut buf = Vec::new();
        let split = encode_chunk_split(&mut buf, &counter).unwrap();
        // increments 700..800: 7 bits each (zig-zag and a flag would be 12)
        assert!(split.value_bits <= 239 * 7 + 7, "{split:?}");
        assert!(round_trip_v2(&counter).1 < 240 * 10 / 8 + 24);
        let exact: Vec<(i64, f64)> = (0..240).map(|i| (i * 60_000, 1.0)).collect();
        let mut buf = Vec::new();
        assert_eq!(encode_chunk_split(&mut buf, &exact).unwrap().ts_bits, 0);
        assert_eq!(round_trip_v2(&exact).0, ENC_GRID);
    }

    /// Encode and decode speed of the grid and the older decimal encoding
    /// on bench-like series (`cargo test --release -p cairn-store --lib
    /// grid_speed -- --ignored --nocapture`); prints, asserts nothing.
    #[test]
    #[ignore]
    fn grid_speed() {
        let mut x: u64 = 17;
        let mut rnd = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let mut chunks = Vec::new();
        for s in 0..3000 {
            let mut v = 1000i64;
            chunks.push(
                (0..240i64)
                    .map(|i| {
                        match s % 3 {
                            0 => v += (rnd() % 3000) as i64,
                            1 => v += (rnd() % 201) as i64 - 100,
                            _ => {}
                        }
                        (1_700_000_000_000 + i * 15_000 + (rnd() % 7) as i64 - 3, v as f64 / 100.0)
                    })
                    .collect::<Vec<_>>(),
            );
        }
        let n = (chunks.len() * 240) as f64;
        for (name, enc) in [("grid", 3u8), ("decimal v1", 1), ("grid", 3), ("decimal v1", 1)] {
            let started = std::time::Instant::now();
            let mut bufs = Vec::new();
            for c in &chunks {
                let mut b = Vec::new();
                if enc == 3 {
                    encode_chunk(&mut b, c);
                } else {
                    encode_decimal_v1(&mut b, c);
                }
                bufs.push(b);
            }
            let e = started.elapsed().as_secs_f64() * 1e9 / n;
            let started = std::time::Instant::now();
            let mut out = Vec::new();
            for _ in 0..5 {
                for b in &bufs {
                    out.clear();
                    decode_chunk(b, &mut out).unwrap();
                }
            }
            let d = started.elapsed().as_secs_f64() * 1e9 / n / 5.0;
            let bytes: usize = bufs.iter().map(Vec::len).sum();
            eprintln!("{name}: encode {e:.1} ns/sample, decode {d:.2} ns/sample, {:.3} B/sample", bytes as f64 / n);
        }
    }

    #[test]
    fn decimal_garbage_never_panics() {
        let mut x: u64 = 11;
        for _ in 0..20_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let len = (x % 40) as usize;
            let mut buf: Vec<u8> = (0..len).map(|i| (x >> (i % 8 * 8)) as u8 ^ i as u8).collect();
            for enc in [ENC_DECIMAL, ENC_GRID] {
                if let Some(b) = buf.first_mut() {
                    *b = enc;
                }
                let _ = decode_chunk(&buf, &mut Vec::new());
            }
        }
    }
}
