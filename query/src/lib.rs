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
//! subqueries, all aggregations but `limit_ratio`, all binary operators with
//! vector matching, and the float functions of the Prometheus docs;
//! conformance is measured by `query/tests/promqltest.rs` against
//! Prometheus's own test files.

pub mod logql;
pub mod promql;
