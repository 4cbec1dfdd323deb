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
//! `docs/logql.md`);
//! PromQL literals, instant vector selectors (5-minute lookback, staleness,
//! `offset`, `@`), unary minus, and arithmetic/comparison between scalars and
//! between a vector and a scalar.

pub mod logql;
pub mod promql;
