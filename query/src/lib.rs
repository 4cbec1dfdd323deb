//! Cairn's query engines: LogQL over [`cairn_store::logs::LogStore`] and
//! PromQL over [`cairn_store::metrics::MetricsStore`].
//!
//! Contract:
//! - Parsing never panics and reports errors with a position, in the shapes
//!   Loki ([`logql::ParseError`]) and Prometheus ([`promql::QueryError`]) use.
//! - Evaluation has the reference semantics: results are what Loki or
//!   Prometheus would return for the same data and query. Anything not yet
//!   implemented is refused with [`promql::QueryError::Unsupported`] /
//!   [`logql::ParseError`] naming the construct — never approximated.
//! - Results are typed values; JSON shapes belong to the aggregator's HTTP
//!   layer.
//!
//! This crate must never write to a store or speak HTTP.
//!
//! Current stage: LogQL log and metric queries with the full pipeline
//! (parsers, label filters, formatting, unwrap; see [`logql`] and
//! `docs/logql.md`); PromQL selectors (lookback, staleness, `offset`, `@`,
//! `anchored`/`smoothed`), duration expressions, subqueries, all
//! aggregations, all binary operators with vector matching and `fill`,
//! delayed name removal, the float and native-histogram functions of the
//! Prometheus docs (incl. `info`), start timestamps, and annotations, under a
//! deadline and a sample budget ([`promql::QueryOptions`]), with a
//! range-query result cache ([`promql::cache`]). Conformance is measured by
//! `query/tests/promqltest.rs` against Prometheus's own test files: every
//! case passes.

pub mod logql;
pub mod promql;

/// Private-use character standing for the invalid UTF-8 byte `b` of a
/// string literal: `RAW_BYTE_BASE + b` for `b` in 0x80..=0xFF.
pub const RAW_BYTE_BASE: u32 = 0xF700;

/// Quotes `s` as Go's `%q` does in Prometheus's error messages (Rust's
/// `{:?}` differs on controls and non-ASCII), with the stand-ins of raw
/// bytes written back as `\xNN`.
pub fn go_quote(s: &str) -> String {
    use std::fmt::Write;
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            '\x07' => out.push_str("\\a"),
            '\x08' => out.push_str("\\b"),
            '\x0c' => out.push_str("\\f"),
            '\x0b' => out.push_str("\\v"),
            c if (c as u32) < 0x20 || c == '\x7f' => {
                let _ = write!(out, "\\x{:02x}", c as u32);
            }
            c if (RAW_BYTE_BASE + 0x80..=RAW_BYTE_BASE + 0xFF).contains(&(c as u32)) => {
                let _ = write!(out, "\\x{:02x}", c as u32 - RAW_BYTE_BASE);
            }
            c if c.is_control() => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}
