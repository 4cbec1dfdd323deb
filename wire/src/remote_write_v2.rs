//! Prometheus Remote-Write 2.0 requests (`io.prometheus.write.v2.Request`,
//! `../shared/proto/prometheus/io/prometheus/write/v2/types.proto`): label
//! names and values, help and unit texts are indexes into one `symbols`
//! table; samples and native histograms may carry a start timestamp (the
//! counter's creation time).
//!
//! [`decode`] reads the protobuf (prost) and resolves every reference, so
//! what comes out is the same shape as a 1.0 request's data plus the start
//! timestamps; a reference past the table, an odd number of label
//! references, or a label name or value that is not a string of the table
//! makes the whole request invalid, as it does for Prometheus's receiver.
//! Exemplars are skipped (Cairn stores none), unknown fields too.

use crate::proto::Histogram;

/// `io.prometheus.write.v2.Request`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Request {
    /// Interned strings; index 0 is the empty string.
    #[prost(string, repeated, tag = "4")]
    pub symbols: Vec<String>,
    /// The series.
    #[prost(message, repeated, tag = "5")]
    pub timeseries: Vec<TimeSeries>,
}

/// `io.prometheus.write.v2.TimeSeries` (exemplars, field 4, not read).
#[derive(Clone, PartialEq, prost::Message)]
pub struct TimeSeries {
    /// (name, value) pairs of references into `symbols`.
    #[prost(uint32, repeated, tag = "1")]
    pub labels_refs: Vec<u32>,
    /// Float samples.
    #[prost(message, repeated, tag = "2")]
    pub samples: Vec<Sample>,
    /// Native histogram samples (the 1.0 message plus its field 17,
    /// `start_timestamp`).
    #[prost(message, repeated, tag = "3")]
    pub histograms: Vec<Histogram>,
    /// Type, help and unit of the series' metric.
    #[prost(message, optional, tag = "5")]
    pub metadata: Option<Metadata>,
}

/// `io.prometheus.write.v2.Sample`.
#[derive(Clone, Copy, PartialEq, prost::Message)]
pub struct Sample {
    /// Value.
    #[prost(double, tag = "1")]
    pub value: f64,
    /// Timestamp, ms.
    #[prost(int64, tag = "2")]
    pub timestamp: i64,
    /// Start (creation) timestamp of the counter, ms; 0: unknown.
    #[prost(int64, tag = "3")]
    pub start_timestamp: i64,
}

/// `io.prometheus.write.v2.Metadata`.
#[derive(Clone, Copy, PartialEq, prost::Message)]
pub struct Metadata {
    /// `MetricType`: 0 unspecified, 1 counter, 2 gauge, 3 histogram,
    /// 4 gauge histogram, 5 summary, 6 info, 7 stateset.
    #[prost(int32, tag = "1")]
    pub r#type: i32,
    /// Help text, a reference into `symbols`.
    #[prost(uint32, tag = "3")]
    pub help_ref: u32,
    /// Unit, a reference into `symbols`.
    #[prost(uint32, tag = "4")]
    pub unit_ref: u32,
}

/// One series of a decoded request, references resolved.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Series {
    /// Label pairs as sent.
    pub labels: Vec<(String, String)>,
    /// (ms timestamp, value) float samples.
    pub samples: Vec<(i64, f64)>,
    /// (sample timestamp, start timestamp) of the samples and histograms
    /// that carry a start timestamp.
    pub start_timestamps: Vec<(i64, i64)>,
    /// Native histogram samples.
    pub histograms: Vec<Histogram>,
    /// (type name as the metadata API writes it, help, unit), when sent.
    pub metadata: Option<(&'static str, String, String)>,
}

/// The body is not a valid Remote-Write 2.0 request.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid remote write 2.0 request: {0}")]
pub struct DecodeError(pub String);

/// The metadata API's name of a `MetricType` (1.0's
/// `MetricMetadata.type` and 2.0's `Metadata.type` number them alike).
pub fn type_name(t: i32) -> &'static str {
    match t {
        1 => "counter",
        2 => "gauge",
        3 => "histogram",
        4 => "gaugehistogram",
        5 => "summary",
        6 => "info",
        7 => "stateset",
        _ => "unknown",
    }
}

/// Decodes a request and resolves its symbol references.
pub fn decode(buf: &[u8]) -> Result<Vec<Series>, DecodeError> {
    let req = <Request as prost::Message>::decode(buf).map_err(|e| DecodeError(e.to_string()))?;
    let sym = |r: u32| -> Result<&str, DecodeError> {
        req.symbols
            .get(r as usize)
            .map(String::as_str)
            .ok_or_else(|| DecodeError(format!("symbol reference {r} past the {} symbols", req.symbols.len())))
    };
    let mut out = Vec::with_capacity(req.timeseries.len());
    for ts in &req.timeseries {
        if ts.labels_refs.len() % 2 != 0 {
            return Err(DecodeError(format!("odd number of label references ({})", ts.labels_refs.len())));
        }
        let labels = ts
            .labels_refs
            .chunks_exact(2)
            .map(|p| Ok((sym(p[0])?.to_string(), sym(p[1])?.to_string())))
            .collect::<Result<Vec<_>, DecodeError>>()?;
        let mut starts: Vec<(i64, i64)> = ts
            .samples
            .iter()
            .map(|s| (s.timestamp, s.start_timestamp))
            .chain(ts.histograms.iter().map(|h| (h.timestamp, h.start_timestamp)))
            .filter(|p| p.1 != 0)
            .collect();
        starts.sort_unstable();
        starts.dedup_by_key(|p| p.0);
        let metadata = match ts.metadata {
            Some(m) if m.r#type != 0 || m.help_ref != 0 || m.unit_ref != 0 => {
                Some((type_name(m.r#type), sym(m.help_ref)?.to_string(), sym(m.unit_ref)?.to_string()))
            }
            _ => None,
        };
        out.push(Series {
            labels,
            samples: ts.samples.iter().map(|s| (s.timestamp, s.value)).collect(),
            start_timestamps: starts,
            histograms: ts.histograms.clone(),
            metadata,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;

    fn request() -> Request {
        let symbols = ["", "__name__", "http_requests_total", "job", "api", "Requests.", "seconds"];
        Request {
            symbols: symbols.iter().map(|s| s.to_string()).collect(),
            timeseries: vec![TimeSeries {
                labels_refs: vec![1, 2, 3, 4],
                samples: vec![
                    Sample { value: 1.0, timestamp: 1000, start_timestamp: 500 },
                    Sample { value: 2.0, timestamp: 2000, start_timestamp: 0 },
                ],
                histograms: vec![Histogram { timestamp: 3000, start_timestamp: 700, ..Histogram::default() }],
                metadata: Some(Metadata { r#type: 1, help_ref: 5, unit_ref: 6 }),
            }],
        }
    }

    #[test]
    fn references_resolve_and_start_timestamps_come_out() {
        let s = decode(&request().encode_to_vec()).unwrap();
        assert_eq!(s.len(), 1);
        let s = &s[0];
        assert_eq!(s.labels, vec![("__name__".into(), "http_requests_total".into()), ("job".into(), "api".into())]);
        assert_eq!(s.samples, vec![(1000, 1.0), (2000, 2.0)]);
        assert_eq!(s.start_timestamps, vec![(1000, 500), (3000, 700)]);
        assert_eq!(s.histograms.len(), 1);
        assert_eq!(s.metadata, Some(("counter", "Requests.".into(), "seconds".into())));
    }

    #[test]
    fn bad_references_refuse_the_request() {
        let mut r = request();
        r.timeseries[0].labels_refs.push(1);
        assert!(decode(&r.encode_to_vec()).unwrap_err().0.contains("odd"));
        let mut r = request();
        r.timeseries[0].labels_refs[3] = 99;
        assert!(decode(&r.encode_to_vec()).unwrap_err().0.contains("99"));
        let mut r = request();
        r.timeseries[0].metadata = Some(Metadata { r#type: 2, help_ref: 40, unit_ref: 0 });
        assert!(decode(&r.encode_to_vec()).is_err());
        assert!(decode(b"\x2a\xff").is_err(), "truncated series");
    }
}
