//! Small binary codec helpers: encoders append to the caller's buffer,
//! decoders read from a cursor and report what was wrong and where.

/// Appends `v` as an unsigned LEB128 varint.
pub fn put_uvarint(buf: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        buf.push((v as u8) | 0x80);
        v >>= 7;
    }
    buf.push(v as u8);
}

/// Appends `v` zig-zag encoded as a varint.
pub fn put_varint(buf: &mut Vec<u8>, v: i64) {
    put_uvarint(buf, ((v << 1) ^ (v >> 63)) as u64);
}

/// Appends a length-prefixed byte string.
pub fn put_bytes(buf: &mut Vec<u8>, b: &[u8]) {
    put_uvarint(buf, b.len() as u64);
    buf.extend_from_slice(b);
}

/// Appends a label set: `uvarint count` then `(name, value)` strings.
pub fn put_labels(buf: &mut Vec<u8>, labels: &cairn_wire::Labels) {
    put_uvarint(buf, labels.len() as u64);
    for l in labels {
        put_bytes(buf, l.name.as_bytes());
        put_bytes(buf, l.value.as_bytes());
    }
}

/// Appends (name, value) string pairs: `uvarint count` then the pairs.
pub fn put_pairs(buf: &mut Vec<u8>, pairs: &[(String, String)]) {
    put_uvarint(buf, pairs.len() as u64);
    for (k, v) in pairs {
        put_bytes(buf, k.as_bytes());
        put_bytes(buf, v.as_bytes());
    }
}

/// Decoding failed: what was expected at which offset of the payload.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("at payload offset {offset}: {reason}")]
pub struct DecodeError {
    /// Offset in the decoded buffer.
    pub offset: usize,
    /// What was wrong.
    pub reason: &'static str,
}

/// A cursor over an encoded buffer.
pub struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    /// Starts reading at the beginning of `buf`.
    pub fn new(buf: &'a [u8]) -> Self {
        Reader { buf, pos: 0 }
    }

    pub(crate) fn err(&self, reason: &'static str) -> DecodeError {
        DecodeError { offset: self.pos, reason }
    }

    /// True when everything was read.
    pub fn is_empty(&self) -> bool {
        self.pos >= self.buf.len()
    }

    /// Reads an unsigned varint.
    pub fn uvarint(&mut self) -> Result<u64, DecodeError> {
        let mut v: u64 = 0;
        for shift in (0..64).step_by(7) {
            let b = *self.buf.get(self.pos).ok_or_else(|| self.err("truncated varint"))?;
            self.pos += 1;
            v |= u64::from(b & 0x7f) << shift;
            if b < 0x80 {
                return Ok(v);
            }
        }
        Err(self.err("varint longer than 10 bytes"))
    }

    /// Reads a zig-zag varint.
    pub fn varint(&mut self) -> Result<i64, DecodeError> {
        let u = self.uvarint()?;
        Ok(((u >> 1) as i64) ^ -((u & 1) as i64))
    }

    /// Reads a count that must be plausible for the remaining bytes (each item
    /// takes at least `min_item_bytes`), so corrupt input cannot make us
    /// allocate huge vectors.
    pub fn count(&mut self, min_item_bytes: usize) -> Result<usize, DecodeError> {
        let n = self.uvarint()?;
        let left = (self.buf.len() - self.pos) as u64;
        if n.saturating_mul(min_item_bytes.max(1) as u64) > left {
            return Err(self.err("count larger than the remaining bytes allow"));
        }
        Ok(n as usize)
    }

    /// Reads a length-prefixed byte string.
    pub fn bytes(&mut self) -> Result<&'a [u8], DecodeError> {
        let n = self.uvarint()? as usize;
        let end =
            self.pos.checked_add(n).filter(|&e| e <= self.buf.len()).ok_or_else(|| self.err("truncated bytes"))?;
        let s = &self.buf[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    /// Reads a length-prefixed UTF-8 string.
    pub fn str(&mut self) -> Result<&'a str, DecodeError> {
        let start = self.pos;
        let b = self.bytes()?;
        std::str::from_utf8(b).map_err(|_| DecodeError { offset: start, reason: "invalid UTF-8" })
    }

    /// Reads (name, value) string pairs written by [`put_pairs`].
    pub fn pairs(&mut self) -> Result<Vec<(String, String)>, DecodeError> {
        let n = self.count(2)?;
        let mut out = Vec::with_capacity(n);
        for _ in 0..n {
            out.push((self.str()?.to_string(), self.str()?.to_string()));
        }
        Ok(out)
    }

    /// Reads a label set written by [`put_labels`], re-validating it.
    pub fn labels(&mut self) -> Result<cairn_wire::Labels, DecodeError> {
        let offset = self.pos;
        cairn_wire::Labels::from_pairs(self.pairs()?).map_err(|_| DecodeError { offset, reason: "invalid label set" })
    }

    /// Reads one byte.
    pub fn u8(&mut self) -> Result<u8, DecodeError> {
        let b = *self.buf.get(self.pos).ok_or_else(|| self.err("truncated byte"))?;
        self.pos += 1;
        Ok(b)
    }

    /// Reads 8 big-endian bytes.
    pub fn u64_be(&mut self) -> Result<u64, DecodeError> {
        Ok(self.u64_le()?.swap_bytes())
    }

    /// The bytes not read yet.
    pub fn rest(&self) -> &'a [u8] {
        &self.buf[self.pos.min(self.buf.len())..]
    }

    /// Reads 4 little-endian bytes.
    pub fn u32_le(&mut self) -> Result<u32, DecodeError> {
        let end = self.pos + 4;
        let b = self.buf.get(self.pos..end).ok_or_else(|| self.err("truncated u32"))?;
        self.pos = end;
        let mut a = [0u8; 4];
        a.copy_from_slice(b);
        Ok(u32::from_le_bytes(a))
    }

    /// Reads 8 little-endian bytes.
    pub fn u64_le(&mut self) -> Result<u64, DecodeError> {
        let end = self.pos + 8;
        let b = self.buf.get(self.pos..end).ok_or_else(|| self.err("truncated u64"))?;
        self.pos = end;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_le_bytes(a))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let mut b = Vec::new();
        for v in [0u64, 1, 127, 128, 300, u64::MAX] {
            put_uvarint(&mut b, v);
        }
        for v in [0i64, -1, 1, i64::MIN, i64::MAX] {
            put_varint(&mut b, v);
        }
        put_bytes(&mut b, b"hello");
        let mut r = Reader::new(&b);
        for v in [0u64, 1, 127, 128, 300, u64::MAX] {
            assert_eq!(r.uvarint().unwrap(), v);
        }
        for v in [0i64, -1, 1, i64::MIN, i64::MAX] {
            assert_eq!(r.varint().unwrap(), v);
        }
        assert_eq!(r.str().unwrap(), "hello");
        assert!(r.is_empty());
        assert!(r.uvarint().is_err());
    }

    #[test]
    fn hostile_counts_are_refused() {
        let mut b = Vec::new();
        put_uvarint(&mut b, 1 << 40);
        assert!(Reader::new(&b).count(1).is_err());
        assert!(Reader::new(&b).bytes().is_err());
        assert!(Reader::new(&[0xff; 11]).uvarint().is_err());
    }
}
