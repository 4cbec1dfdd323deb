//! Cairn's shared vocabulary: the types every other crate speaks.
//!
//! Contract:
//! - [`Labels`] is a label set kept sorted by name with unique names and no
//!   empty values (an empty value means "absent", as in Prometheus and Loki).
//! - [`Matcher`] is a label matcher (`=`, `!=`, `=~`, `!~`) with Prometheus
//!   semantics: regexes are fully anchored, and a missing label matches as "".
//! - [`time`] parses the timestamp and duration formats of the Prometheus and
//!   Loki HTTP APIs.
//! - [`proto`] holds the protobuf messages of Prometheus remote_write 1.0 and
//!   the Loki push API, byte-compatible with `../shared/proto/`, and
//!   [`loki_json`] the JSON form of a Loki push.
//! - [`model`] holds the write batches (series samples, stream entries) that
//!   travel from collector to aggregator to store.
//!
//! This crate never does I/O, never panics on input, and depends on nothing
//! else in the workspace: `wire → store → query → aggregator`, and
//! `collector → wire`.

pub mod config;
pub mod intern;
pub mod labels;
pub mod loki_json;
pub mod matcher;
pub mod model;
pub mod proto;
pub mod remote_write;
pub mod time;

pub use labels::{Label, Labels, LabelsError};
pub use matcher::{MatchOp, Matcher, MatcherError};
pub use model::{Entry, SeriesSamples, StreamEntries};

/// The tenant used when a request carries no `X-Scope-OrgID` header, as Loki
/// does with authentication disabled.
pub const DEFAULT_TENANT: &str = "fake";

/// The label that holds a metric's name.
pub const METRIC_NAME: &str = "__name__";

/// Bit pattern of Prometheus's staleness marker, a NaN distinct from the
/// NaN arithmetic produces; stored and compared bit-exactly.
pub const STALE_NAN_BITS: u64 = 0x7ff0_0000_0000_0002;

/// True when `v` is the staleness marker.
pub fn is_stale_nan(v: f64) -> bool {
    v.to_bits() == STALE_NAN_BITS
}

/// Formats a float as Prometheus's HTTP API and text exposition do (Go's
/// `strconv.FormatFloat(v, 'f', -1, 64)`, switching to exponent form below
/// 1e-6 and from 1e21): `1.5`, `100`, `1e+21`, `1.5e-07`, `+Inf`, `-Inf`, `NaN`.
pub fn format_float(v: f64) -> String {
    if v.is_nan() {
        return "NaN".into();
    }
    if v.is_infinite() {
        return if v > 0.0 { "+Inf".into() } else { "-Inf".into() };
    }
    let a = v.abs();
    if a != 0.0 && !(1e-6..1e21).contains(&a) {
        // Rust: "1.5e-7"; Go: "1.5e-07".
        let s = format!("{v:e}");
        let (mant, exp) = s.split_once('e').unwrap_or((&s, "0"));
        let (sign, digits) = match exp.strip_prefix('-') {
            Some(d) => ('-', d),
            None => ('+', exp),
        };
        return if digits.len() < 2 { format!("{mant}e{sign}0{digits}") } else { format!("{mant}e{sign}{digits}") };
    }
    let s = format!("{v}");
    if s == "-0" { "-0".into() } else { s }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn floats_format_as_go() {
        assert_eq!(format_float(1.5), "1.5");
        assert_eq!(format_float(100.0), "100");
        assert_eq!(format_float(1e21), "1e+21");
        assert_eq!(format_float(1.5e-7), "1.5e-07");
        assert_eq!(format_float(1.5e-300), "1.5e-300");
        assert_eq!(format_float(0.000001), "0.000001");
        assert_eq!(format_float(f64::INFINITY), "+Inf");
        assert_eq!(format_float(f64::NEG_INFINITY), "-Inf");
        assert_eq!(format_float(f64::NAN), "NaN");
        assert_eq!(format_float(0.0), "0");
        assert!(is_stale_nan(f64::from_bits(STALE_NAN_BITS)));
        assert!(!is_stale_nan(f64::NAN));
    }

    /// Deterministic garbage (and mutations of valid inputs) through every
    /// decoder that takes network input: errors are fine, panics are not.
    #[test]
    fn garbage_never_panics() {
        use prost::Message;
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let seeds: [&[u8]; 4] = [
            br#"{"streams":[{"stream":{"job":"x"},"values":[["1","a",{"k":"v"}]]}]}"#,
            br#"{job="a", b="c\"d"}"#,
            b"\x0a\x1e\x0a\x0e\x0a\x08__name__\x12\x02up",
            b"2015-07-01T20:10:51.781Z",
        ];
        for round in 0..20_000 {
            let len = (next() % 64) as usize;
            let mut buf: Vec<u8> = if round % 2 == 0 {
                (0..len).map(|_| next() as u8).collect()
            } else {
                let mut s = seeds[round % seeds.len()].to_vec();
                for _ in 0..1 + next() % 4 {
                    if s.is_empty() {
                        break;
                    }
                    let i = (next() as usize) % s.len();
                    s[i] = next() as u8;
                }
                s
            };
            if round % 7 == 0 {
                buf = proto::snappy_compress(&buf);
            }
            let _ = loki_json::parse(&buf);
            let _ = proto::PushRequest::decode(buf.as_slice());
            let _ = proto::WriteRequest::decode(buf.as_slice());
            if let Ok(raw) = proto::snappy_decompress(&buf, 1 << 16) {
                let _ = proto::WriteRequest::decode(raw.as_slice());
            }
            let s = String::from_utf8_lossy(&buf);
            let _ = Labels::parse(&s);
            let _ = time::parse_loki_time_ns(&s);
            let _ = time::parse_prom_time_ms(&s);
            let _ = time::parse_prom_duration_ms(&s);
            let _ = time::parse_rfc3339_ns(&s);
        }
    }
}
