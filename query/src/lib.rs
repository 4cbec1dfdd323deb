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
//! `docs/logql.md`); PromQL selectors (lookback, staleness, `offset`, `@`),
//! subqueries, all aggregations, all binary operators with vector matching
//! and `fill`, delayed name removal, and the float functions of the
//! Prometheus docs (incl. `info`), under a deadline and a sample budget
//! ([`promql::QueryOptions`]); conformance is measured by
//! `query/tests/promqltest.rs` against Prometheus's own test files. Not yet:
//! native histograms, annotations (warnings/infos), duration expressions and
//! `anchored`/`smoothed` range selectors (the parser does not read them).

pub mod logql;
pub mod promql;
