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
//!   `scrape_duration_seconds`, `scrape_samples_scraped` per target; on
//!   Kubernetes also the pods of this node annotated
//!   `prometheus.io/scrape: "true"`, listed from the API server ([`kube`]),
//!   with `namespace`/`pod`/`container`/`node` labels.
//! - **Log files** ([`tail`]): files matched by globs, followed across
//!   rename rotation and copytruncate; each complete line becomes an entry
//!   in the stream `{<target labels>, filename, host}`. Kubernetes pod logs
//!   under `/var/log/pods` (CRI or Docker json-file, [`logline`]) in the
//!   stream `{namespace, pod, container, node, stream, job}` plus
//!   allow-listed pod labels from the Kubernetes API; multiline joining by
//!   a first-line regex.
//! - **The systemd journal** ([`journal`]), through `journalctl`, resumed
//!   after the last acknowledged cursor.
//!
//! # Delivery guarantee
//! Everything goes through a [`Sink`] ([`sink::HttpSink`] over HTTP, or any
//! in-process implementation). Log batches are appended to an on-disk
//! queue ([`queue`]) before they are sent, and positions (file offsets,
//! journal cursor, the queue's acknowledged sequence number) are
//! checkpointed in `<state_dir>/positions.json` **only after the sink
//! acknowledged** the batch. Nothing is skipped across restarts and
//! crashes; a batch re-sent after a crash is byte-identical (same
//! timestamps), so the receiver stores it once. While the receiver is down
//! the collector reads on into the queue (at most `queue_max_bytes`);
//! beyond that the oldest batches are dropped and counted
//! (`cairn_collector_queue_dropped_lines_total`), never silently. Retries
//! use exponential backoff with jitter; a batch the receiver refuses for
//! good (HTTP 4xx other than 429) is logged, counted and dropped. Node
//! metric collections wait in memory (at most
//! [`runtime::MAX_PENDING_COLLECTIONS`], oldest dropped and counted).
//! Byte layouts and the crash-consistency argument:
//! `docs/format/collector.md`.
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
//! [`Stats`] (counters), [`node::NodeCollector`], [`tail::Tailer`],
//! [`queue::Queue`], [`journal::Journal`].

pub mod config;
pub mod journal;
pub mod kube;
pub mod logline;
pub mod node;
pub mod queue;
pub mod runtime;
pub mod scrape;
pub mod ship;
pub mod sink;
pub mod tail;
pub mod watch;

pub use config::CollectorConfig;
pub use runtime::{CollectorError, Stats, StatsSnapshot, describe, run, run_with_stats};
pub use sink::{HttpSink, Sink, SinkError};
