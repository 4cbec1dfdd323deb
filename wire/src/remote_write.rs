//! A zero-copy decoder for Prometheus remote_write 1.0 requests
//! (`prometheus.WriteRequest`), the ingest hot path.
//!
//! [`crate::proto::WriteRequest`] (prost) allocates a `String` for every
//! label name and value of every series of every request; a node_exporter
//! scrape repeats the same few thousand label sets every 15 s, so that is
//! most of the allocation on the write path. [`decode`] instead keeps each
//! series' label fields as the bytes they came in, so the caller can map
//! those bytes to a shared [`crate::Labels`] it built before (see
//! [`crate::intern`]) and decode the names and values only for a label set
//! it has not seen ([`RawWriteRequest::label_pairs`]).
//!
//! It accepts exactly what the prost definitions accept, field for field
//! (a test checks the two against each other on generated and mutated
//! input, with every series' label pairs decoded): unknown fields of every
//! known wire type are skipped, a known field with the wrong wire type is an
//! error, the last occurrence of a scalar wins, and strings must be UTF-8. Exemplars are skipped; native
//! histograms (rare next to floats) are decoded by prost.

use crate::proto::{Histogram, MetricMetadata};

/// A decoded `WriteRequest` borrowing from the body.
#[derive(Debug, Default)]
pub struct RawWriteRequest<'a> {
    /// Encoded `prometheus.Label` messages of all series, in request order;
    /// each series names its range.
    pub label_msgs: Vec<&'a [u8]>,
    /// Samples of all series, in request order; each series names its
    /// range.
    pub samples: Vec<(i64, f64)>,
    /// The series, in request order.
    pub series: Vec<RawSeries<'a>>,
    /// Metric metadata, decoded by prost (rare: once per family per
    /// metadata interval).
    pub metadata: Vec<MetricMetadata>,
}

/// One `TimeSeries` of a [`RawWriteRequest`].
#[derive(Debug, Default)]
pub struct RawSeries<'a> {
    /// Range of this series' label messages in
    /// [`RawWriteRequest::label_msgs`].
    pub labels: std::ops::Range<usize>,
    /// All label fields of this series as they appear in the body, when they
    /// are contiguous (as every known sender writes them).
    pub label_span: Option<&'a [u8]>,
    /// Range of this series' (ms timestamp, value) samples in
    /// [`RawWriteRequest::samples`].
    pub samples: std::ops::Range<usize>,
    /// Native histogram samples, in request order.
    pub histograms: Vec<Histogram>,
}

impl<'a> RawWriteRequest<'a> {
    /// The label pairs of `s`, as sent; an error when a label message is
    /// malformed or not UTF-8 (which makes the whole request invalid).
    pub fn label_pairs(&self, s: &RawSeries<'a>) -> Result<Vec<(&'a str, &'a str)>, DecodeError> {
        self.label_msgs[s.labels.clone()].iter().map(|m| decode_label(m)).collect()
    }

    /// Bytes that identify the label fields of `s` exactly: the span they
    /// were sent in, or (when other fields came between them) the same
    /// encoding rebuilt in `scratch`. Equal keys decode to equal pairs.
    pub fn label_key<'b>(&'b self, s: &'b RawSeries<'a>, scratch: &'b mut Vec<u8>) -> &'b [u8] {
        if let Some(span) = s.label_span {
            return span;
        }
        scratch.clear();
        for m in &self.label_msgs[s.labels.clone()] {
            scratch.push(0x0a); // field 1, length-delimited
            let mut n = m.len() as u64;
            while n >= 0x80 {
                scratch.push((n as u8) | 0x80);
                n >>= 7;
            }
            scratch.push(n as u8);
            scratch.extend_from_slice(m);
        }
        scratch
    }

    /// The samples of `s`, as sent.
    pub fn samples(&self, s: &RawSeries<'a>) -> &[(i64, f64)] {
        &self.samples[s.samples.clone()]
    }
}

/// The body is not a valid `WriteRequest`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid remote_write protobuf: {reason} at byte {offset}")]
pub struct DecodeError {
    /// What was wrong.
    pub reason: &'static str,
    /// Byte offset in the message being read when it went wrong.
    pub offset: usize,
}

/// Decodes a `WriteRequest` without copying label strings.
pub fn decode(buf: &[u8]) -> Result<RawWriteRequest<'_>, DecodeError> {
    let mut out = RawWriteRequest::default();
    let mut r = Reader { buf, pos: 0 };
    while let Some((field, wt)) = r.key()? {
        match field {
            1 => {
                let ts = r.len_delimited(wt)?;
                decode_series(ts, &mut out)?;
            }
            3 => {
                let m = r.len_delimited(wt)?;
                let md = <MetricMetadata as prost::Message>::decode(m)
                    .map_err(|_| DecodeError { reason: "invalid metadata", offset: r.pos })?;
                out.metadata.push(md);
            }
            _ => r.skip(field, wt)?,
        }
    }
    Ok(out)
}

fn decode_series<'a>(buf: &'a [u8], out: &mut RawWriteRequest<'a>) -> Result<(), DecodeError> {
    let (start, samples_start) = (out.label_msgs.len(), out.samples.len());
    let mut s = RawSeries::default();
    let mut r = Reader { buf, pos: 0 };
    // (start, end) of the label fields while they are contiguous
    let mut span: Option<(usize, usize)> = None;
    let mut contiguous = true;
    loop {
        let at = r.pos;
        let Some((field, wt)) = r.key()? else { break };
        match field {
            1 => {
                let l = r.len_delimited(wt)?;
                out.label_msgs.push(l);
                match span {
                    None => span = Some((at, r.pos)),
                    Some((a, end)) if end == at => span = Some((a, r.pos)),
                    Some(_) => contiguous = false,
                }
            }
            2 => {
                let m = r.len_delimited(wt)?;
                out.samples.push(decode_sample(m)?);
            }
            4 => {
                let m = r.len_delimited(wt)?;
                let h = <Histogram as prost::Message>::decode(m)
                    .map_err(|_| DecodeError { reason: "invalid histogram", offset: r.pos })?;
                s.histograms.push(h);
            }
            _ => r.skip(field, wt)?,
        }
    }
    s.labels = start..out.label_msgs.len();
    s.label_span = match span {
        Some((a, b)) if contiguous => Some(&buf[a..b]),
        Some(_) => None,
        None => Some(&[]),
    };
    s.samples = samples_start..out.samples.len();
    out.series.push(s);
    Ok(())
}

fn decode_label(buf: &[u8]) -> Result<(&str, &str), DecodeError> {
    let (mut name, mut value) = ("", "");
    let mut r = Reader { buf, pos: 0 };
    while let Some((field, wt)) = r.key()? {
        match field {
            1 => name = r.string(wt)?,
            2 => value = r.string(wt)?,
            _ => r.skip(field, wt)?,
        }
    }
    Ok((name, value))
}

fn decode_sample(buf: &[u8]) -> Result<(i64, f64), DecodeError> {
    // What every sender writes: value (field 1, fixed64), then timestamp
    // (field 2, varint), nothing else. Anything else takes the general path.
    if let Some((&[0x09, b1, b2, b3, b4, b5, b6, b7, b8, 0x10], _)) = buf.split_first_chunk::<10>() {
        let mut r = Reader { buf, pos: 10 };
        if let Ok(t) = r.varint()
            && r.pos == buf.len()
        {
            return Ok((t as i64, f64::from_bits(u64::from_le_bytes([b1, b2, b3, b4, b5, b6, b7, b8]))));
        }
    }
    let (mut t, mut v) = (0i64, 0f64);
    let mut r = Reader { buf, pos: 0 };
    while let Some((field, wt)) = r.key()? {
        match field {
            1 => {
                r.expect(wt, WT_I64)?;
                v = f64::from_bits(r.fixed64()?);
            }
            2 => {
                r.expect(wt, WT_VARINT)?;
                t = r.varint()? as i64;
            }
            _ => r.skip(field, wt)?,
        }
    }
    Ok((t, v))
}

const WT_VARINT: u8 = 0;
const WT_I64: u8 = 1;
const WT_LEN: u8 = 2;
const WT_START_GROUP: u8 = 3;
const WT_END_GROUP: u8 = 4;
const WT_I32: u8 = 5;
/// prost's nesting limit.
const RECURSION_LIMIT: u32 = 100;

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn err(&self, reason: &'static str) -> DecodeError {
        DecodeError { reason, offset: self.pos }
    }

    fn varint(&mut self) -> Result<u64, DecodeError> {
        // An iterator over at most ten bytes (the longest varint): no bounds
        // check per byte.
        let rest = self.buf.get(self.pos..).unwrap_or(&[]);
        let mut v = 0u64;
        for (i, &b) in rest.iter().take(10).enumerate() {
            if i == 9 && b > 1 {
                self.pos += 10;
                return Err(self.err("varint overflows 64 bits"));
            }
            v |= u64::from(b & 0x7f) << (7 * i);
            if b < 0x80 {
                self.pos += i + 1;
                return Ok(v);
            }
        }
        // fewer than ten bytes left, none of them the last of a varint
        self.pos += rest.len();
        Err(self.err("truncated varint"))
    }

    /// The next field's (number, wire type), or `None` at the end.
    fn key(&mut self) -> Result<Option<(u32, u8)>, DecodeError> {
        if self.pos >= self.buf.len() {
            return Ok(None);
        }
        let k = self.varint()?;
        if k > u64::from(u32::MAX) {
            return Err(self.err("invalid key"));
        }
        let (field, wt) = ((k >> 3) as u32, (k & 7) as u8);
        if field == 0 {
            return Err(self.err("field number 0"));
        }
        Ok(Some((field, wt)))
    }

    fn expect(&self, wt: u8, want: u8) -> Result<(), DecodeError> {
        if wt == want { Ok(()) } else { Err(self.err("unexpected wire type")) }
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        let end =
            self.pos.checked_add(n).filter(|&e| e <= self.buf.len()).ok_or_else(|| self.err("truncated field"))?;
        let s = &self.buf[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    fn len_delimited(&mut self, wt: u8) -> Result<&'a [u8], DecodeError> {
        self.expect(wt, WT_LEN)?;
        let n = self.varint()?;
        let n = usize::try_from(n).map_err(|_| self.err("truncated field"))?;
        self.take(n)
    }

    fn string(&mut self, wt: u8) -> Result<&'a str, DecodeError> {
        let b = self.len_delimited(wt)?;
        std::str::from_utf8(b).map_err(|_| self.err("invalid UTF-8 in a string field"))
    }

    fn fixed64(&mut self) -> Result<u64, DecodeError> {
        let b = self.take(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_le_bytes(a))
    }

    /// Skips an unknown field, as prost does (groups included).
    fn skip(&mut self, field: u32, wt: u8) -> Result<(), DecodeError> {
        self.skip_nested(field, wt, 0)
    }

    fn skip_nested(&mut self, field: u32, wt: u8, depth: u32) -> Result<(), DecodeError> {
        match wt {
            WT_VARINT => self.varint().map(drop),
            WT_I64 => self.take(8).map(drop),
            WT_LEN => self.len_delimited(wt).map(drop),
            WT_I32 => self.take(4).map(drop),
            WT_START_GROUP => {
                if depth >= RECURSION_LIMIT {
                    return Err(self.err("recursion limit reached"));
                }
                loop {
                    match self.key()? {
                        None => return Err(self.err("unterminated group")),
                        Some((f, WT_END_GROUP)) if f == field => return Ok(()),
                        Some((_, WT_END_GROUP)) => return Err(self.err("unexpected end group")),
                        Some((f, w)) => self.skip_nested(f, w, depth + 1)?,
                    }
                }
            }
            WT_END_GROUP => Err(self.err("unexpected end group")),
            _ => Err(self.err("invalid wire type")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::{self, WriteRequest};
    use prost::Message;

    fn sample_request() -> WriteRequest {
        WriteRequest {
            timeseries: vec![
                proto::TimeSeries {
                    labels: vec![
                        proto::Label { name: "__name__".into(), value: "up".into() },
                        proto::Label { name: "job".into(), value: "node".into() },
                    ],
                    samples: vec![
                        proto::Sample { value: 1.0, timestamp: 1000 },
                        proto::Sample { value: f64::from_bits(crate::STALE_NAN_BITS), timestamp: -5 },
                        proto::Sample { value: 0.25, timestamp: 1_732_460_000_123 },
                        proto::Sample { value: -3.5, timestamp: i64::MIN },
                        proto::Sample { value: 7.0, timestamp: i64::MAX },
                    ],
                    // field 15 (timestamp) = 7
                    histograms: vec![proto::Histogram::decode(&[0x78u8, 0x07][..]).unwrap()],
                },
                proto::TimeSeries { labels: vec![], samples: vec![], histograms: vec![] },
            ],
            metadata: vec![proto::MetricMetadata {
                r#type: 1,
                metric_family_name: "up".into(),
                help: "h".into(),
                unit: String::new(),
            }],
        }
    }

    /// Per series: label pairs, (timestamp, value bits), histogram count.
    type Decoded = Result<Vec<(Vec<(String, String)>, Vec<(i64, u64)>, usize)>, ()>;

    /// What prost decodes, in the raw decoder's shape, for comparison.
    fn via_prost(buf: &[u8]) -> Decoded {
        let req = WriteRequest::decode(buf).map_err(drop)?;
        Ok(req
            .timeseries
            .into_iter()
            .map(|ts| {
                (
                    ts.labels.into_iter().map(|l| (l.name, l.value)).collect(),
                    ts.samples.into_iter().map(|s| (s.timestamp, s.value.to_bits())).collect(),
                    ts.histograms.len(),
                )
            })
            .collect())
    }

    fn via_raw(buf: &[u8]) -> Decoded {
        let req = decode(buf).map_err(drop)?;
        req.series
            .iter()
            .map(|s| {
                Ok((
                    req.label_pairs(s).map_err(drop)?.iter().map(|&(n, v)| (n.to_string(), v.to_string())).collect(),
                    req.samples(s).iter().map(|&(t, v)| (t, v.to_bits())).collect(),
                    s.histograms.len(),
                ))
            })
            .collect()
    }

    #[test]
    fn decodes_what_prost_encodes() {
        let req = sample_request();
        let buf = req.encode_to_vec();
        let raw = decode(&buf).unwrap();
        assert_eq!(raw.series.len(), 2);
        assert_eq!(raw.label_pairs(&raw.series[0]).unwrap(), [("__name__", "up"), ("job", "node")]);
        // contiguous label fields are kept as one span, and it is the key
        let mut scratch = Vec::new();
        let span = raw.series[0].label_span.unwrap();
        assert_eq!(raw.label_key(&raw.series[0], &mut scratch), span);
        assert!(scratch.is_empty());
        assert_eq!(raw.samples(&raw.series[0])[1].1.to_bits(), crate::STALE_NAN_BITS);
        assert_eq!(raw.series[0].histograms.len(), 1);
        assert_eq!(raw.series[0].histograms[0].timestamp, 7);
        assert!(raw.label_pairs(&raw.series[1]).unwrap().is_empty());
        assert_eq!(raw.metadata, req.metadata);
        assert_eq!(via_raw(&buf), via_prost(&buf));
    }

    #[test]
    fn labels_split_by_other_fields_get_the_same_key() {
        // timeseries { labels{a=1} samples{} labels{b=2} } against the
        // same labels sent together
        let label = |n: &[u8], v: &[u8]| {
            let mut m = vec![0x0a, n.len() as u8];
            m.extend_from_slice(n);
            m.extend_from_slice(&[0x12, v.len() as u8]);
            m.extend_from_slice(v);
            let mut f = vec![0x0a, m.len() as u8];
            f.extend_from_slice(&m);
            f
        };
        let wrap = |ts: Vec<u8>| {
            let mut b = vec![0x0a, ts.len() as u8];
            b.extend_from_slice(&ts);
            b
        };
        let (a, b) = (label(b"a", b"1"), label(b"b", b"2"));
        let split = wrap([a.clone(), vec![0x12, 0x00], b.clone()].concat());
        let together = wrap([a, b].concat());
        let (rs, rt) = (decode(&split).unwrap(), decode(&together).unwrap());
        assert!(rs.series[0].label_span.is_none());
        let (mut s1, mut s2) = (Vec::new(), Vec::new());
        assert_eq!(rs.label_key(&rs.series[0], &mut s1), rt.label_key(&rt.series[0], &mut s2));
        assert_eq!(rs.label_pairs(&rs.series[0]).unwrap(), [("a", "1"), ("b", "2")]);
        assert_eq!(via_raw(&split), via_prost(&split));
    }

    #[test]
    fn refuses_bad_input_with_an_offset() {
        // a label with invalid UTF-8: timeseries{labels{name: 0xff}}
        let bad = [0x0a, 0x05, 0x0a, 0x03, 0x0a, 0x01, 0xff];
        let req = decode(&bad).unwrap();
        let e = req.label_pairs(&req.series[0]).unwrap_err();
        assert_eq!(e.reason, "invalid UTF-8 in a string field");
        assert!(WriteRequest::decode(&bad[..]).is_err());
        // a length running past the end
        assert_eq!(decode(&[0x0a, 0x05, 0x0a]).unwrap_err().reason, "truncated field");
        // a wrong wire type for timeseries
        assert_eq!(decode(&[0x08, 0x01]).unwrap_err().reason, "unexpected wire type");
        assert!(WriteRequest::decode(&[0x08u8, 0x01][..]).is_err());
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(512))]
        /// The raw decoder and prost agree on every mutation of a valid
        /// request: both refuse it, or both decode the same series.
        #[test]
        fn agrees_with_prost_on_mutations(
            edits in proptest::collection::vec((0usize..200, proptest::prelude::any::<u8>()), 0..4),
            cut in 0usize..200,
        ) {
            let mut buf = sample_request().encode_to_vec();
            for (at, b) in edits {
                if !buf.is_empty() {
                    let i = at % buf.len();
                    buf[i] = b;
                }
            }
            buf.truncate(cut.max(buf.len() / 2));
            let (raw, prost) = (via_raw(&buf), via_prost(&buf));
            match (&raw, &prost) {
                (Ok(a), Ok(b)) => proptest::prop_assert_eq!(a, b),
                (Err(()), Err(())) => {}
                // prost is lenient where proto3 allows: a packed or
                // mismatched repeated field, or a group. Print and compare.
                _ => proptest::prop_assert!(false, "raw {:?} vs prost {:?} on {:?}", raw, prost, buf),
            }
        }
    }
}
