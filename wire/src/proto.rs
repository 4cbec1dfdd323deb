//! Protobuf messages of Prometheus remote_write 1.0 (`prometheus.WriteRequest`)
//! and the Loki push API (`logproto.PushRequest`), written out with
//! `prost` derives so no `protoc` is needed at build time. Field numbers and
//! wire types follow `../shared/proto/prometheus/{remote,types}.proto` and
//! `../shared/proto/loki/push.proto`; a test in this module checks them
//! against bytes produced from those definitions.
//!
//! Deliberate deviations, none of which change the wire format:
//! - Loki's `line` is decoded as `bytes`, so a line with invalid UTF-8 is not
//!   a decode error for the whole request; the caller decides (Cairn replaces
//!   invalid sequences with U+FFFD, as Loki's JSON output does).
//! - Only the fields Cairn reads are declared; prost skips the others.

/// Snappy (block format) decompression with a size cap checked before any
/// allocation.
pub fn snappy_decompress(body: &[u8], max_len: usize) -> Result<Vec<u8>, SnappyError> {
    let len = snap::raw::decompress_len(body).map_err(|e| SnappyError::Corrupt(e.to_string()))?;
    if len > max_len {
        return Err(SnappyError::TooLarge { len, max: max_len });
    }
    snap::raw::Decoder::new().decompress_vec(body).map_err(|e| SnappyError::Corrupt(e.to_string()))
}

/// Snappy (block format) compression.
pub fn snappy_compress(raw: &[u8]) -> Vec<u8> {
    // Compression of an in-memory slice cannot fail except for inputs over
    // 4 GiB, which no caller builds.
    snap::raw::Encoder::new().compress_vec(raw).unwrap_or_default()
}

/// A snappy body could not be decompressed.
#[derive(Debug, thiserror::Error)]
pub enum SnappyError {
    /// Not valid snappy block data.
    #[error("invalid snappy block data: {0}")]
    Corrupt(String),
    /// The decompressed size exceeds the configured limit.
    #[error("decompressed body of {len} bytes exceeds the limit of {max} bytes")]
    TooLarge { len: usize, max: usize },
}

/// `prometheus.WriteRequest`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct WriteRequest {
    #[prost(message, repeated, tag = "1")]
    pub timeseries: Vec<TimeSeries>,
    #[prost(message, repeated, tag = "3")]
    pub metadata: Vec<MetricMetadata>,
}

/// `prometheus.TimeSeries`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct TimeSeries {
    #[prost(message, repeated, tag = "1")]
    pub labels: Vec<Label>,
    #[prost(message, repeated, tag = "2")]
    pub samples: Vec<Sample>,
    #[prost(message, repeated, tag = "4")]
    pub histograms: Vec<Histogram>,
}

/// `prometheus.Label`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Label {
    #[prost(string, tag = "1")]
    pub name: String,
    #[prost(string, tag = "2")]
    pub value: String,
}

/// `prometheus.Sample`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Sample {
    #[prost(double, tag = "1")]
    pub value: f64,
    #[prost(int64, tag = "2")]
    pub timestamp: i64,
}

/// `prometheus.Histogram` (native histogram sample). The `count` and
/// `zero_count` oneofs are declared as two optional fields each, which is
/// the same on the wire.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Histogram {
    #[prost(uint64, optional, tag = "1")]
    pub count_int: Option<u64>,
    #[prost(double, optional, tag = "2")]
    pub count_float: Option<f64>,
    #[prost(double, tag = "3")]
    pub sum: f64,
    #[prost(sint32, tag = "4")]
    pub schema: i32,
    #[prost(double, tag = "5")]
    pub zero_threshold: f64,
    #[prost(uint64, optional, tag = "6")]
    pub zero_count_int: Option<u64>,
    #[prost(double, optional, tag = "7")]
    pub zero_count_float: Option<f64>,
    #[prost(message, repeated, tag = "8")]
    pub negative_spans: Vec<BucketSpan>,
    #[prost(sint64, repeated, tag = "9")]
    pub negative_deltas: Vec<i64>,
    #[prost(double, repeated, tag = "10")]
    pub negative_counts: Vec<f64>,
    #[prost(message, repeated, tag = "11")]
    pub positive_spans: Vec<BucketSpan>,
    #[prost(sint64, repeated, tag = "12")]
    pub positive_deltas: Vec<i64>,
    #[prost(double, repeated, tag = "13")]
    pub positive_counts: Vec<f64>,
    #[prost(int32, tag = "14")]
    pub reset_hint: i32,
    #[prost(int64, tag = "15")]
    pub timestamp: i64,
    #[prost(double, repeated, tag = "16")]
    pub custom_values: Vec<f64>,
    /// Remote-Write 2.0 only (`io.prometheus.write.v2.Histogram`, whose
    /// fields 1–16 are these): the counter's start timestamp, ms; 0 when
    /// unknown.
    #[prost(int64, tag = "17")]
    pub start_timestamp: i64,
}

/// `prometheus.BucketSpan`.
#[derive(Clone, Copy, PartialEq, prost::Message)]
pub struct BucketSpan {
    #[prost(sint32, tag = "1")]
    pub offset: i32,
    #[prost(uint32, tag = "2")]
    pub length: u32,
}

impl Histogram {
    /// The sample as Cairn's model: integer histograms (delta-encoded
    /// counts) and float histograms (absolute counts) alike. Errors on
    /// spans that do not match their buckets, an unknown schema or reset
    /// hint.
    pub fn to_model(&self) -> Result<crate::Histogram, crate::histogram::HistogramError> {
        use crate::histogram::{HistogramError, ResetHint, from_spans};
        let spans = |s: &[BucketSpan]| s.iter().map(|s| (s.offset, s.length)).collect::<Vec<_>>();
        let counts = |deltas: &[i64], abs: &[f64]| -> Vec<f64> {
            if !abs.is_empty() {
                return abs.to_vec();
            }
            let mut cur: i64 = 0;
            deltas
                .iter()
                .map(|d| {
                    cur = cur.wrapping_add(*d);
                    cur as f64
                })
                .collect()
        };
        let is_int = self.count_float.is_none() && self.positive_counts.is_empty() && self.negative_counts.is_empty();
        let (pos, neg) = if is_int {
            (counts(&self.positive_deltas, &[]), counts(&self.negative_deltas, &[]))
        } else {
            (counts(&[], &self.positive_counts), counts(&[], &self.negative_counts))
        };
        let h = crate::Histogram {
            reset_hint: u8::try_from(self.reset_hint)
                .ok()
                .and_then(ResetHint::from_u8)
                .ok_or(HistogramError::InvalidSchema)?,
            schema: self.schema,
            zero_threshold: self.zero_threshold,
            zero_count: self.zero_count_float.unwrap_or(self.zero_count_int.unwrap_or(0) as f64),
            count: self.count_float.unwrap_or(self.count_int.unwrap_or(0) as f64),
            sum: self.sum,
            positive: from_spans(&spans(&self.positive_spans), &pos)?,
            negative: from_spans(&spans(&self.negative_spans), &neg)?,
            custom_values: self.custom_values.clone(),
        };
        h.validate()?;
        Ok(h)
    }

    /// A float histogram message for `h` at `timestamp` (ms).
    pub fn from_model(h: &crate::Histogram, timestamp: i64) -> Histogram {
        let (ps, pc) = crate::histogram::to_spans(&h.positive);
        let (ns, nc) = crate::histogram::to_spans(&h.negative);
        let spans = |s: Vec<(i32, u32)>| s.into_iter().map(|(offset, length)| BucketSpan { offset, length }).collect();
        Histogram {
            count_int: None,
            count_float: Some(h.count),
            sum: h.sum,
            schema: h.schema,
            zero_threshold: h.zero_threshold,
            zero_count_int: None,
            zero_count_float: Some(h.zero_count),
            negative_spans: spans(ns),
            negative_deltas: Vec::new(),
            negative_counts: nc,
            positive_spans: spans(ps),
            positive_deltas: Vec::new(),
            positive_counts: pc,
            reset_hint: h.reset_hint as i32,
            timestamp,
            custom_values: h.custom_values.clone(),
            start_timestamp: 0,
        }
    }
}

/// `prometheus.MetricMetadata`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct MetricMetadata {
    #[prost(int32, tag = "1")]
    pub r#type: i32,
    #[prost(string, tag = "2")]
    pub metric_family_name: String,
    #[prost(string, tag = "4")]
    pub help: String,
    #[prost(string, tag = "5")]
    pub unit: String,
}

/// `logproto.PushRequest`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct PushRequest {
    #[prost(message, repeated, tag = "1")]
    pub streams: Vec<StreamAdapter>,
}

/// `logproto.StreamAdapter`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct StreamAdapter {
    /// Label set in Prometheus text form, `{job="app"}`.
    #[prost(string, tag = "1")]
    pub labels: String,
    #[prost(message, repeated, tag = "2")]
    pub entries: Vec<EntryAdapter>,
}

/// `logproto.EntryAdapter`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct EntryAdapter {
    #[prost(message, optional, tag = "1")]
    pub timestamp: Option<Timestamp>,
    /// Declared `string` upstream; decoded as bytes (see the module doc).
    #[prost(bytes = "vec", tag = "2")]
    pub line: Vec<u8>,
    #[prost(message, repeated, tag = "3")]
    pub structured_metadata: Vec<LabelPairAdapter>,
}

/// `logproto.LabelPairAdapter`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct LabelPairAdapter {
    #[prost(string, tag = "1")]
    pub name: String,
    #[prost(string, tag = "2")]
    pub value: String,
}

/// `google.protobuf.Timestamp`.
#[derive(Clone, Copy, PartialEq, prost::Message)]
pub struct Timestamp {
    #[prost(int64, tag = "1")]
    pub seconds: i64,
    #[prost(int32, tag = "2")]
    pub nanos: i32,
}

impl Timestamp {
    /// Nanoseconds since the epoch, saturating.
    pub fn to_ns(self) -> i64 {
        self.seconds.saturating_mul(1_000_000_000).saturating_add(i64::from(self.nanos))
    }

    /// From nanoseconds since the epoch.
    pub fn from_ns(ns: i64) -> Self {
        Timestamp { seconds: ns.div_euclid(1_000_000_000), nanos: ns.rem_euclid(1_000_000_000) as i32 }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;

    /// Bytes of a WriteRequest as encoded by the reference definitions:
    /// timeseries { labels {name:"__name__" value:"up"} samples {value:1 timestamp:1000} }.
    #[test]
    fn write_request_matches_reference_bytes() {
        let reference: &[u8] = &[
            0x0a, 0x1e, // field 1, len 30
            0x0a, 0x0e, 0x0a, 0x08, b'_', b'_', b'n', b'a', b'm', b'e', b'_', b'_', 0x12, 0x02, b'u', b'p', 0x12, 0x0c,
            0x09, 0, 0, 0, 0, 0, 0, 0xf0, 0x3f, // value 1.0 (fixed64)
            0x10, 0xe8, 0x07, // timestamp 1000
        ];
        let req = WriteRequest::decode(reference).unwrap();
        assert_eq!(req.timeseries.len(), 1);
        assert_eq!(req.timeseries[0].labels[0].value, "up");
        assert_eq!(req.timeseries[0].samples[0], Sample { value: 1.0, timestamp: 1000 });
        assert_eq!(req.encode_to_vec(), reference);
    }

    #[test]
    fn push_request_round_trip_and_snappy() {
        let req = PushRequest {
            streams: vec![StreamAdapter {
                labels: "{job=\"x\"}".into(),
                entries: vec![EntryAdapter {
                    timestamp: Some(Timestamp::from_ns(1_500_000_000_123)),
                    line: b"hello".to_vec(),
                    structured_metadata: vec![LabelPairAdapter { name: "trace_id".into(), value: "abc".into() }],
                }],
            }],
        };
        let body = snappy_compress(&req.encode_to_vec());
        let raw = snappy_decompress(&body, 1 << 20).unwrap();
        let back = PushRequest::decode(raw.as_slice()).unwrap();
        assert_eq!(back, req);
        assert_eq!(back.streams[0].entries[0].timestamp.unwrap().to_ns(), 1_500_000_000_123);
        assert!(matches!(snappy_decompress(&body, 3), Err(SnappyError::TooLarge { .. })));
        assert!(snappy_decompress(b"\xff\xff\xff\xff\xff", 100).is_err());
    }
}
