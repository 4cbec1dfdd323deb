//! End-to-end tests: each starts the real `cairn` binary on a free loopback
//! port with a temporary data directory and talks HTTP to it.

mod harness;
mod tls;

mod auth;
mod bad_input;
mod cli;
mod collect;
mod collector_logs;
mod crash;
mod deploy;
mod disk_full;
mod golden;
mod grep;
mod kubernetes;
mod limits;
mod logs;
mod loki_api;
mod metrics;
mod native_histograms;
mod node_exporter;
mod ops;
mod pipeline;
mod prom_api;
mod prom_compare;
mod promtool;
mod query_cache;
mod recovery;
mod remote_write_v2;
mod restart;
mod retention;
mod tail;
mod tenants;
mod up;
