//! Cairn's per-node collector: node metrics and log files, shipped over the
//! public protocols (Prometheus remote_write 1.0, Loki push).
//!
//! # What it collects
//! - **Node metrics** ([`node`]): CPU, memory, load, pressure, disks,
//!   filesystems, network, hwmon and thermal zones, boot time and clock,
//!   uname and OS release, entropy, file descriptors, context switches and
//!   the collector's own `process_*`, read from `/proc`, `/sys` and `/`
//!   (each root configurable) with node_exporter 1.5's metric names, types,
//!   units and labels, plus `job="node"` and `instance=<host>`.
//! - **Scrape targets** ([`scrape`]): Prometheus text / OpenMetrics
//!   endpoints from a static list, with `job`/`instance` labels and `up`,
//!   `scrape_duration_seconds`, `scrape_samples_scraped` per target.
//! - **Log files** ([`tail`]): files matched by globs, followed across
//!   rename rotation and copytruncate; each complete line becomes an entry
//!   in the stream `{<target labels>, filename, host}`.
//!
//! # Delivery guarantee
//! Everything goes through a [`Sink`] ([`sink::HttpSink`] over HTTP, or any
//! in-process implementation). File positions are checkpointed (in
//! `<state_dir>/positions.json`) **only after the sink acknowledged** the
//! batch holding those lines, so delivery is **at-least-once across
//! restarts and crashes**: a line is never skipped, and a line whose
//! acknowledgement was lost may be sent again. A sink outage loses nothing:
//! the pending batch is retried with exponential backoff (250 ms doubling to
//! a 30 s cap) while held in memory, and no further lines are read until it
//! is delivered, so memory stays bounded (one batch of logs, at most
//! [`runtime::MAX_PENDING_COLLECTIONS`] node metric collections). A batch the
//! receiver refuses for good (HTTP 4xx other than 429) is logged, counted
//! and dropped. A durable on-disk queue is future work: today the files
//! themselves are the buffer.
//!
//! # What it must never do
//! - Depend on the store, query or aggregator crates: `collector → wire`
//!   only, so it can feed any remote_write / Loki receiver.
//! - Panic on file content: proc files and log files are data; bad bytes
//!   become U+FFFD, unparsable lines are skipped, corrupt state files are
//!   moved aside.
//! - Block the async runtime with file I/O: files and procfs are read on
//!   blocking threads (`spawn_blocking`).
//!
//! # Main types
//! [`CollectorConfig`] (the `[collector]` section), [`run`] (the loop),
//! [`describe`] (a one-line summary), [`Sink`] / [`sink::HttpSink`],
//! [`Stats`] (counters), [`node::NodeCollector`], [`tail::Tailer`].

pub mod config;
pub mod journal;
pub mod logline;
pub mod node;
pub mod queue;
pub mod runtime;
pub mod scrape;
mod ship;
pub mod sink;
pub mod tail;
pub mod watch;

pub use config::CollectorConfig;
pub use runtime::{CollectorError, Stats, StatsSnapshot, describe, run, run_with_stats};
pub use sink::{HttpSink, Sink, SinkError};
