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
//!   [`loki_json`] the JSON form of a Loki push; [`remote_write`] decodes
//!   1.0 requests without copying, [`remote_write_v2`] reads 2.0 requests
//!   (symbol table, start timestamps).
//! - [`model`] holds the write batches (series samples, stream entries) that
//!   travel from collector to aggregator to store.
//!
//! This crate never does I/O, never panics on input, and depends on nothing
//! else in the workspace: `wire → store → query → aggregator`, and
//! `collector → wire`.

pub mod config;
pub mod container;
pub mod histogram;
pub mod intern;
pub mod labels;
pub mod loki_json;
pub mod matcher;
pub mod model;
pub mod proto;
pub mod remote_write;
pub mod remote_write_v2;
pub mod time;

pub use histogram::Histogram;
pub use labels::{Label, Labels, LabelsError};
pub use matcher::{MatchOp, Matcher, MatcherError};
pub use model::{Entry, SeriesHistograms, SeriesSamples, StreamEntries};

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
    let mut s = String::new();
    format_float_into(&mut s, v);
    s
}

/// [`format_float`] appended to `out` (no allocation for the common cases:
/// the query API writes millions of values per response).
pub fn format_float_into(out: &mut String, v: f64) {
    if v.fract() == 0.0 && v.abs() < 1e15 && !(v == 0.0 && v.is_sign_negative()) {
        // integral: counters, byte counts, most gauges; exact in an i64
        out.push_str(itoa::Buffer::new().format(v as i64));
    } else if (1e-5..1e16).contains(&v.abs()) {
        // Ryu writes this range without an exponent (`12.5`, `0.00012`,
        // `1e15 + 0.5` as `1000000000000000.5`, integers with `.0`).
        let mut b = ryu::Buffer::new();
        let s = b.format_finite(v);
        out.push_str(s.strip_suffix(".0").unwrap_or(s));
    } else {
        format_float_general(out, v);
    }
}

/// Every float, from Ryu's shortest digits (the digits Go's `strconv`
/// picks: Ryu, ties to even) laid out as Go's `'f'` / `'e'` formats.
fn format_float_general(out: &mut String, v: f64) {
    if v.is_nan() {
        return out.push_str("NaN");
    }
    if v.is_infinite() {
        return out.push_str(if v > 0.0 { "+Inf" } else { "-Inf" });
    }
    if v == 0.0 {
        return out.push_str(if v.is_sign_negative() { "-0" } else { "0" });
    }
    if v < 0.0 {
        out.push('-');
    }
    let mut b = ryu::Buffer::new();
    let s = b.format_finite(v.abs());
    let (mant, exp) = match s.split_once('e') {
        Some((m, e)) => (m, e.parse::<i32>().unwrap_or(0)),
        None => (s, 0),
    };
    let (int, frac) = mant.split_once('.').unwrap_or((mant, ""));
    // digits d1 d2 … with the decimal point after `point` of them
    let mut digits = [0u8; 40];
    let mut n = 0;
    let mut point = int.len() as i32 + exp;
    for &c in int.as_bytes().iter().chain(frac.as_bytes()) {
        if n == 0 && c == b'0' {
            point -= 1;
        } else if n < digits.len() {
            digits[n] = c;
            n += 1;
        }
    }
    while n > 1 && digits[n - 1] == b'0' {
        n -= 1;
    }
    let d = std::str::from_utf8(&digits[..n]).unwrap_or("0");
    let a = v.abs();
    if !(1e-6..1e21).contains(&a) {
        // Go: `1.5e-07`, `1e+21`: at least two exponent digits.
        let e = point - 1;
        out.push_str(&d[..1]);
        if n > 1 {
            out.push('.');
            out.push_str(&d[1..]);
        }
        out.push_str(if e < 0 { "e-" } else { "e+" });
        if e.abs() < 10 {
            out.push('0');
        }
        out.push_str(itoa::Buffer::new().format(e.abs()));
    } else if point <= 0 {
        out.push_str("0.");
        (0..-point).for_each(|_| out.push('0'));
        out.push_str(d);
    } else if point as usize >= n {
        out.push_str(d);
        (0..point as usize - n).for_each(|_| out.push('0'));
    } else {
        out.push_str(&d[..point as usize]);
        out.push('.');
        out.push_str(&d[point as usize..]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fast_float_paths_match_the_general_one() {
        // random bit patterns, small integers, decimals and their negatives
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut vals =
            vec![0.0, -0.0, 1e15, 1e15 - 1.0, -1e15, 0.1, 1e-6, 1e-5, 9.99e-6, 1e16, 1e16 - 2.0, 9.99e20, 1e21];
        for i in 0..20_000u64 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            vals.push(f64::from_bits(x));
            vals.push((x % 100_000) as f64 / [1.0, 10.0, 100.0, 1000.0][(i % 4) as usize]);
            vals.push(-((x >> 20) as f64));
            // uniform mantissas across the decades around the ryu range
            let unit = (x >> 11) as f64 / (1u64 << 53) as f64;
            vals.push(unit * 10f64.powi((i % 24) as i32 - 7));
            vals.push(-unit * 10f64.powi((i % 24) as i32 - 7));
        }
        for v in vals {
            let mut general = String::new();
            format_float_general(&mut general, v);
            assert_eq!(format_float(v), general, "{v:e} ({:#x})", v.to_bits());
            // Against Rust's own shortest formatting: the same layout and
            // length, and the same value back. The digits may differ in the
            // last place on exact ties (Rust rounds half up, Go and Ryu to
            // even: 780057396987758.25 is `…758.2` in Go).
            let std = format_float_std(v);
            assert_eq!(general.len(), std.len(), "{general} vs {std}");
            if v.is_finite() {
                assert_eq!(general.parse::<f64>().ok(), Some(v), "{general}");
            } else {
                assert_eq!(general, std);
            }
        }
        assert_eq!(format_float(f64::from_bits(0x4306_2baa_206a_3b72)), "780057396987758.2");
    }

    /// The layout of Go's `'f'`/`'e'` formats from Rust's `{}` and `{:e}`.
    fn format_float_std(v: f64) -> String {
        if v.is_nan() {
            return "NaN".into();
        }
        if v.is_infinite() {
            return if v > 0.0 { "+Inf".into() } else { "-Inf".into() };
        }
        let a = v.abs();
        if a != 0.0 && !(1e-6..1e21).contains(&a) {
            let s = format!("{v:e}");
            let (mant, exp) = s.split_once('e').unwrap_or((&s, "0"));
            let (sign, digits) = match exp.strip_prefix('-') {
                Some(d) => ('-', d),
                None => ('+', exp),
            };
            return if digits.len() < 2 { format!("{mant}e{sign}0{digits}") } else { format!("{mant}e{sign}{digits}") };
        }
        format!("{v}")
    }

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
        assert_eq!(format_float(-0.0), "-0");
        assert_eq!(format_float(-3.0), "-3");
        assert_eq!(format_float(123456789012345.0), "123456789012345");
        assert_eq!(format_float(1e15), "1000000000000000");
        assert_eq!(format_float(-2.25), "-2.25");
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
