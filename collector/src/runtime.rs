//! The collector's main loop: node metrics every `node.interval`, logs
//! every `poll_interval` (and on inotify wake-ups), the collector's own
//! `cairn_collector_*` counters every `node.interval`, all pushed to a
//! [`Sink`] with retries.
//!
//! - **Logs**: see [`crate::ship`]: batches of up to `batch_max_bytes` (or
//!   `batch_wait` old) go through the on-disk queue; positions are
//!   committed only after the sink acknowledged a batch. A batch the
//!   receiver refuses permanently is dropped, counted and its positions
//!   committed, so one bad batch cannot stall the files forever.
//! - **Metrics**: each collection is queued; the queue (at most
//!   [`MAX_PENDING_COLLECTIONS`] collections, oldest dropped first and
//!   counted) is pushed as one request per attempt.
//! - **Retries**: exponential backoff from 250 ms doubling to 30 s, each
//!   delay drawn from its upper half (jitter), for as long as the receiver
//!   keeps failing.
//! - **Shutdown**: when the watch flips to `true` (or its sender is
//!   dropped), the reader queues what it holds, in-flight pushes get about
//!   [`FINAL_FLUSH`] to finish, and `run` returns. Queued batches not
//!   delivered by then are sent at the next start.

use std::collections::{BTreeMap, VecDeque};
use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use cairn_wire::{Labels, SeriesSamples};
use tokio::sync::watch;
use tokio::time::{Instant, MissedTickBehavior};

use crate::config::{CollectorConfig, ConfigError};
use crate::journal::Journal;
use crate::kube::{KubeClient, KubeError, PodIndex, PodTarget};
use crate::node::NodeCollector;
use crate::scrape::{Scraper, TargetLabels};
use crate::ship::Shipping;
use crate::sink::{Sink, SinkError};
use crate::tail::{TailError, Tailer, count_files};
use cairn_wire::proto::MetricMetadata;

/// First retry delay.
pub const BACKOFF_START: Duration = Duration::from_millis(250);
/// Longest retry delay.
pub const BACKOFF_CAP: Duration = Duration::from_secs(30);
/// Time allowed at shutdown to deliver the pending log batch.
pub const FINAL_FLUSH: Duration = Duration::from_secs(2);
/// How often the type and help of metric families are sent (Prometheus's
/// remote_write `metadata_config.send_interval` default).
pub const METADATA_INTERVAL: Duration = Duration::from_secs(60);
/// Node metric collections kept while the receiver is unreachable
/// (40 × 15 s = 10 minutes at the default interval).
pub const MAX_PENDING_COLLECTIONS: usize = 40;

/// Counters of the collector's work, readable while it runs.
#[derive(Debug, Default)]
pub struct Stats {
    /// Log lines read from files.
    pub lines_read: AtomicU64,
    /// Bytes read from log files (newlines included).
    pub bytes_read: AtomicU64,
    /// Log lines cut to `max_line_bytes`.
    pub lines_truncated: AtomicU64,
    /// Batches (logs or metrics) the sink acknowledged.
    pub batches_sent: AtomicU64,
    /// Push attempts that failed and were retried.
    pub send_failures: AtomicU64,
    /// Batches dropped: refused by the receiver, or metric collections
    /// pushed out of a full queue.
    pub batches_dropped: AtomicU64,
    /// Log lines in acknowledged batches.
    pub lines_sent: AtomicU64,
    /// Log files open right now.
    pub files_open: AtomicU64,
    /// Log lines dropped from the full on-disk queue.
    pub queue_dropped_lines: AtomicU64,
    /// Log batches dropped from the full on-disk queue.
    pub queue_dropped_batches: AtomicU64,
    /// Bytes of log batches queued, not yet acknowledged.
    pub queue_bytes: AtomicU64,
    /// Pod listings from the Kubernetes API that failed.
    pub kube_list_failures: AtomicU64,
    /// Pod scrape targets discovered on Kubernetes, right now.
    pub pod_targets: AtomicU64,
}

/// A copy of [`Stats`] at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StatsSnapshot {
    /// See [`Stats::lines_read`].
    pub lines_read: u64,
    /// See [`Stats::bytes_read`].
    pub bytes_read: u64,
    /// See [`Stats::lines_truncated`].
    pub lines_truncated: u64,
    /// See [`Stats::batches_sent`].
    pub batches_sent: u64,
    /// See [`Stats::send_failures`].
    pub send_failures: u64,
    /// See [`Stats::batches_dropped`].
    pub batches_dropped: u64,
    /// See [`Stats::lines_sent`].
    pub lines_sent: u64,
    /// See [`Stats::files_open`].
    pub files_open: u64,
    /// See [`Stats::queue_dropped_lines`].
    pub queue_dropped_lines: u64,
    /// See [`Stats::queue_dropped_batches`].
    pub queue_dropped_batches: u64,
    /// See [`Stats::queue_bytes`].
    pub queue_bytes: u64,
    /// See [`Stats::kube_list_failures`].
    pub kube_list_failures: u64,
    /// See [`Stats::pod_targets`].
    pub pod_targets: u64,
}

impl Stats {
    /// Reads every counter.
    pub fn snapshot(&self) -> StatsSnapshot {
        StatsSnapshot {
            lines_read: self.lines_read.load(Relaxed),
            bytes_read: self.bytes_read.load(Relaxed),
            lines_truncated: self.lines_truncated.load(Relaxed),
            batches_sent: self.batches_sent.load(Relaxed),
            send_failures: self.send_failures.load(Relaxed),
            batches_dropped: self.batches_dropped.load(Relaxed),
            lines_sent: self.lines_sent.load(Relaxed),
            files_open: self.files_open.load(Relaxed),
            queue_dropped_lines: self.queue_dropped_lines.load(Relaxed),
            queue_dropped_batches: self.queue_dropped_batches.load(Relaxed),
            queue_bytes: self.queue_bytes.load(Relaxed),
            kube_list_failures: self.kube_list_failures.load(Relaxed),
            pod_targets: self.pod_targets.load(Relaxed),
        }
    }
}

/// Why the collector could not run.
#[derive(Debug, thiserror::Error)]
pub enum CollectorError {
    /// The configuration makes no sense.
    #[error("invalid collector configuration: {0}")]
    Config(#[from] ConfigError),
    /// The state directory could not be created.
    #[error("cannot create state directory {path}: {source}")]
    StateDir {
        /// The directory.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The tailer could not start (positions file unreadable, …).
    #[error(transparent)]
    Tail(#[from] TailError),
    /// The on-disk log queue could not be opened.
    #[error("log queue: {0}")]
    Queue(crate::queue::QueueError),
    /// The node collector could not be set up.
    #[error("node metrics: {0}")]
    Node(String),
    /// The Kubernetes API client could not be set up.
    #[error(transparent)]
    Kube(#[from] KubeError),
    /// A blocking task panicked (a bug).
    #[error("collector task failed (this is a bug): {0}")]
    Task(String),
}

/// Runs the collector until `shutdown` becomes `true` (see the module doc).
/// `state_dir` holds `positions.json` and is created if missing.
pub async fn run<S: Sink>(
    cfg: CollectorConfig,
    sink: Arc<S>,
    state_dir: PathBuf,
    shutdown: watch::Receiver<bool>,
) -> Result<(), CollectorError> {
    run_with_stats(cfg, sink, state_dir, shutdown, Arc::new(Stats::default())).await
}

/// [`run`], updating `stats` as it goes.
pub async fn run_with_stats<S: Sink>(
    cfg: CollectorConfig,
    sink: Arc<S>,
    state_dir: PathBuf,
    shutdown: watch::Receiver<bool>,
    stats: Arc<Stats>,
) -> Result<(), CollectorError> {
    cfg.validate()?;
    let cfg = Arc::new(cfg);
    let c = cfg.clone();
    let host = blocking(move || c.resolved_host()).await?;
    tokio::fs::create_dir_all(&state_dir)
        .await
        .map_err(|source| CollectorError::StateDir { path: state_dir.clone(), source })?;

    let kube = if cfg.kubernetes.enabled {
        let node = cfg.kubernetes.resolved_node(&cfg.pods.resolved_node(&host));
        let client = KubeClient::new(&cfg.kubernetes, &node)?;
        tracing::info!(url = %client.url(), node = %node, "listing this node's pods from the Kubernetes API");
        Some((client, Arc::new(PodIndex::new(&cfg.kubernetes.pod_labels)), node))
    } else {
        None
    };
    let pod_index = kube.as_ref().map(|k| k.1.clone());

    let logs_on = !cfg.files.is_empty() || cfg.pods.enabled || cfg.journal.enabled;
    let logs = if logs_on {
        let (c, h, s, d) = (cfg.clone(), host.clone(), stats.clone(), state_dir.clone());
        let idx = pod_index.clone();
        Some(
            blocking(move || {
                let (shipping, pending) = Shipping::open(&d, c.queue_max_bytes.0, c.queue_fsync)?;
                let tailer = if c.files.is_empty() && !c.pods.enabled {
                    None
                } else {
                    // Sizes were checked to fit in usize by `validate`.
                    let mut t = Tailer::new(&c.files, &h, c.max_line_bytes.0 as usize, &d, s.clone())?;
                    if c.pods.enabled {
                        t.add_pods(&c.pods, &c.pods.resolved_node(&h))?;
                        if let Some(idx) = idx {
                            t.set_pod_index(idx);
                        }
                    }
                    t.resume_from(&pending.positions);
                    Some(t)
                };
                let cursor = shipping.resume_cursor(&pending);
                Ok::<_, CollectorError>((tailer, cursor, shipping))
            })
            .await??,
        )
    } else {
        None
    };
    tracing::info!(
        host = %host,
        state_dir = %state_dir.display(),
        what = %describe(&cfg),
        "collector started"
    );

    let node = async {
        if cfg.node.enabled {
            // The patterns were checked by `validate`.
            let nc = NodeCollector::new(&cfg.node, host.clone()).map_err(|e| CollectorError::Node(e.to_string()))?;
            metrics_loop(NodeSource(Some(nc)), cfg.node.interval.0, &*sink, shutdown.clone(), &stats).await
        } else {
            Ok(())
        }
    };
    let files = async {
        match logs {
            Some((tailer, cursor, shipping)) => {
                let journal = cfg.journal.enabled.then(|| Journal::start(&cfg.journal, cursor, stats.clone()));
                crate::ship::run(tailer, journal, shipping, &cfg, &*sink, shutdown.clone(), &stats).await
            }
            None => Ok(()),
        }
    };
    let scrapes = async {
        if cfg.scrape.is_empty() {
            return Ok(());
        }
        let client = reqwest::Client::builder()
            .user_agent(crate::sink::USER_AGENT)
            .build()
            .map_err(|e| CollectorError::Node(format!("cannot build the scrape HTTP client: {e}")))?;
        let (sink, stats, shutdown) = (&*sink, &*stats, &shutdown);
        let mut loops = Vec::new();
        for sc in &cfg.scrape {
            for t in &sc.targets {
                let scraper = Scraper::new(sc, t, client.clone());
                loops.push(metrics_loop(ScrapeSource(scraper), sc.interval.0, sink, shutdown.clone(), stats));
            }
        }
        futures_join_all(loops).await
    };
    let own = async {
        if logs_on || cfg.kubernetes.enabled {
            let src = SelfSource { stats: stats.clone(), host: host.clone() };
            let every = cfg.node.interval.0.max(Duration::from_secs(1));
            metrics_loop(src, every, &*sink, shutdown.clone(), &stats).await
        } else {
            Ok(())
        }
    };
    let pods = async {
        match kube {
            Some((client, index, node)) => {
                kube_loop(client, index, cfg.clone(), node, sink.clone(), stats.clone(), shutdown.clone()).await
            }
            None => Ok(()),
        }
    };
    let (a, b, c, d, e) = tokio::join!(node, files, scrapes, own, pods);
    tracing::info!("collector stopped");
    a.and(b).and(c).and(d).and(e)
}

/// A running scrape loop of a discovered pod.
type ScrapeTask = tokio::task::JoinHandle<Result<(), CollectorError>>;

/// Shortest time between two pod listings asked for by the tailer.
const MIN_LIST_GAP: Duration = Duration::from_secs(1);

/// Lists this node's pods every `kubernetes.refresh_interval` (or when the
/// tailer asks), updates `index`, and runs one scrape loop per discovered
/// pod target: new targets start at once, vanished ones stop.
async fn kube_loop<S: Sink>(
    client: KubeClient,
    index: Arc<PodIndex>,
    cfg: Arc<CollectorConfig>,
    node: String,
    sink: Arc<S>,
    stats: Arc<Stats>,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), CollectorError> {
    let k = &cfg.kubernetes;
    let scrape_client = if k.scrape_pods {
        // Pods serving https are checked against the system's roots plus
        // the cluster CA (when there is one).
        let mut b = reqwest::Client::builder().user_agent(crate::sink::USER_AGENT);
        if let Some(certs) = crate::kube::read_ca_file(&k.ca_file).map_err(KubeError::Setup)? {
            b = b.tls_certs_merge(certs);
        }
        Some(b.build().map_err(|e| KubeError::Setup(format!("cannot build the scrape HTTP client: {e}")))?)
    } else {
        None
    };
    // Dropping a sender stops its scrape loop.
    let mut running: BTreeMap<PodTarget, (watch::Sender<bool>, ScrapeTask)> = BTreeMap::new();
    let mut tick = tokio::time::interval(k.refresh_interval.0);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut last_list: Option<Instant> = None;
    let mut failing: Option<String> = None;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = index.refresh_requested() => {
                let wait = last_list.map_or(Duration::ZERO, |t| MIN_LIST_GAP.saturating_sub(t.elapsed()));
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = stopped(&mut shutdown) => break,
                }
            }
            _ = stopped(&mut shutdown) => break,
        }
        last_list = Some(Instant::now());
        let res = tokio::select! {
            r = client.list_pods() => r,
            _ = stopped(&mut shutdown) => break,
        };
        let pods = match res {
            Ok(pods) => {
                if failing.take().is_some() {
                    tracing::info!("Kubernetes API reachable again");
                }
                pods
            }
            Err(e) => {
                stats.kube_list_failures.fetch_add(1, Relaxed);
                let msg = e.to_string();
                if failing.as_deref() != Some(msg.as_str()) {
                    tracing::warn!(error = %msg, "cannot list this node's pods; keeping the last listing");
                }
                failing = Some(msg);
                continue;
            }
        };
        index.update(&pods);
        let Some(client) = &scrape_client else { continue };
        let wanted: std::collections::BTreeSet<PodTarget> =
            crate::kube::pod_targets(&pods, k, &node).into_iter().collect();
        let before = running.len();
        running.retain(|t, _| wanted.contains(t));
        let stopped_n = before - running.len();
        let mut started = 0;
        for t in wanted {
            if running.contains_key(&t) {
                continue;
            }
            let scraper = Scraper::with_target(
                t.url.clone(),
                TargetLabels { labels: t.labels.clone(), honor_labels: false, honor_timestamps: true },
                k.scrape_timeout.0,
                k.body_size_limit.0,
                client.clone(),
            );
            let (tx, rx) = watch::channel(false);
            let (sink, stats, every) = (sink.clone(), stats.clone(), k.scrape_interval.0);
            let h = tokio::spawn(async move { metrics_loop(ScrapeSource(scraper), every, &*sink, rx, &stats).await });
            running.insert(t, (tx, h));
            started += 1;
        }
        stats.pod_targets.store(running.len() as u64, Relaxed);
        if started + stopped_n > 0 {
            tracing::info!(started, stopped = stopped_n, targets = running.len(), "pod scrape targets changed");
        }
    }
    for (_, (tx, h)) in running {
        let _ = tx.send(true);
        h.await.map_err(|e| CollectorError::Task(e.to_string()))??;
    }
    Ok(())
}

/// Runs `futs` concurrently on this task; the first error wins.
async fn futures_join_all<F: Future<Output = Result<(), CollectorError>>>(futs: Vec<F>) -> Result<(), CollectorError> {
    let mut set = Vec::with_capacity(futs.len());
    for f in futs {
        set.push(Box::pin(f));
    }
    let mut results: Vec<Option<Result<(), CollectorError>>> = set.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (f, r) in set.iter_mut().zip(results.iter_mut()) {
            if r.is_none() {
                match f.as_mut().poll(cx) {
                    std::task::Poll::Ready(v) => *r = Some(v),
                    std::task::Poll::Pending => pending = true,
                }
            }
        }
        if pending { std::task::Poll::Pending } else { std::task::Poll::Ready(()) }
    })
    .await;
    results.into_iter().flatten().collect()
}

/// Something producing metric samples at an interval: node metrics or a
/// scrape target.
trait MetricSource: Send {
    /// One collection stamped `ts_ms`; `None` when nothing could be read.
    fn collect(
        &mut self,
        ts_ms: i64,
    ) -> impl Future<Output = Result<Option<Vec<SeriesSamples>>, CollectorError>> + Send;
    /// Type and help of the families produced so far.
    fn metadata(&self) -> Vec<MetricMetadata>;
}

/// Node metrics, read on a blocking thread.
struct NodeSource(Option<NodeCollector>);

impl MetricSource for NodeSource {
    async fn collect(&mut self, ts_ms: i64) -> Result<Option<Vec<SeriesSamples>>, CollectorError> {
        let Some(mut nc) = self.0.take() else { return Ok(None) };
        let (nc, res) = blocking(move || {
            let r = nc.collect(ts_ms);
            (nc, r)
        })
        .await?;
        self.0 = Some(nc);
        match res {
            Ok(series) => Ok(Some(series)),
            Err(e) => {
                tracing::debug!(error = %e, "no node metrics this time");
                Ok(None)
            }
        }
    }

    fn metadata(&self) -> Vec<MetricMetadata> {
        self.0.as_ref().map(NodeCollector::metadata).unwrap_or_default()
    }
}

/// One scrape target.
struct ScrapeSource(Scraper);

impl MetricSource for ScrapeSource {
    async fn collect(&mut self, ts_ms: i64) -> Result<Option<Vec<SeriesSamples>>, CollectorError> {
        Ok(Some(self.0.scrape(ts_ms).await))
    }

    fn metadata(&self) -> Vec<MetricMetadata> {
        self.0.metadata()
    }
}

/// The collector's own counters (`cairn_collector_*`), as series labelled
/// `job="cairn-collector"`, `instance=<host>`.
struct SelfSource {
    stats: Arc<Stats>,
    host: String,
}

/// (name, type, help, value) of the collector's own metrics.
fn self_metrics(s: &StatsSnapshot) -> [(&'static str, &'static str, &'static str, u64); 13] {
    [
        ("cairn_collector_lines_read_total", "counter", "Log lines read (files, pod logs, journal).", s.lines_read),
        ("cairn_collector_bytes_read_total", "counter", "Bytes read from log files.", s.bytes_read),
        ("cairn_collector_lines_truncated_total", "counter", "Log lines cut to max_line_bytes.", s.lines_truncated),
        ("cairn_collector_lines_sent_total", "counter", "Log lines the receiver acknowledged.", s.lines_sent),
        (
            "cairn_collector_batches_sent_total",
            "counter",
            "Batches (logs or metrics) the receiver acknowledged.",
            s.batches_sent,
        ),
        (
            "cairn_collector_send_failures_total",
            "counter",
            "Push attempts that failed and were retried.",
            s.send_failures,
        ),
        (
            "cairn_collector_batches_dropped_total",
            "counter",
            "Batches the receiver refused for good (HTTP 4xx other than 429), or metric collections dropped from a full queue.",
            s.batches_dropped,
        ),
        (
            "cairn_collector_queue_dropped_lines_total",
            "counter",
            "Log lines dropped from the full on-disk queue (queue_max_bytes) while the receiver was failing.",
            s.queue_dropped_lines,
        ),
        (
            "cairn_collector_queue_dropped_batches_total",
            "counter",
            "Log batches dropped from the full on-disk queue.",
            s.queue_dropped_batches,
        ),
        (
            "cairn_collector_queue_bytes",
            "gauge",
            "Bytes of log batches queued on disk, not yet acknowledged.",
            s.queue_bytes,
        ),
        ("cairn_collector_files_open", "gauge", "Log files open.", s.files_open),
        (
            "cairn_collector_kubernetes_list_failures_total",
            "counter",
            "Listings of this node's pods from the Kubernetes API that failed.",
            s.kube_list_failures,
        ),
        (
            "cairn_collector_kubernetes_pod_targets",
            "gauge",
            "Pods (endpoints) scraped because of their prometheus.io/scrape annotation.",
            s.pod_targets,
        ),
    ]
}

impl MetricSource for SelfSource {
    async fn collect(&mut self, ts_ms: i64) -> Result<Option<Vec<SeriesSamples>>, CollectorError> {
        let snap = self.stats.snapshot();
        let series = self_metrics(&snap)
            .into_iter()
            .filter_map(|(name, _, _, v)| {
                let labels =
                    Labels::from_pairs([("__name__", name), ("job", "cairn-collector"), ("instance", &self.host)])
                        .ok()?;
                Some(SeriesSamples { labels, samples: vec![(ts_ms, v as f64)] })
            })
            .collect();
        Ok(Some(series))
    }

    fn metadata(&self) -> Vec<MetricMetadata> {
        self_metrics(&StatsSnapshot::default())
            .into_iter()
            .map(|(name, kind, help, _)| MetricMetadata {
                r#type: crate::node::metric_type_code(kind),
                metric_family_name: name.to_string(),
                help: help.to_string(),
                unit: String::new(),
            })
            .collect()
    }
}

/// One short line of what is collected, for start-up banners: e.g.
/// `node metrics every 15s from /proc; files: /var/log/*.log, /var/log/syslog (3 files now)`.
/// Expands the globs (blocking, briefly).
pub fn describe(cfg: &CollectorConfig) -> String {
    let node = if cfg.node.enabled {
        format!("node metrics every {} from {}", cfg.node.interval, cfg.node.proc_path.display())
    } else {
        "no node metrics".to_string()
    };
    let globs: Vec<&str> = cfg.files.iter().flat_map(|t| t.paths.iter().map(String::as_str)).collect();
    let files = if globs.is_empty() {
        "no log files".to_string()
    } else {
        let n = count_files(&cfg.files);
        format!("files: {} ({n} file{} now)", globs.join(", "), if n == 1 { "" } else { "s" })
    };
    let pods = if cfg.pods.enabled { format!("; pod logs under {}", cfg.pods.root.display()) } else { String::new() };
    let kube = match (cfg.kubernetes.enabled, cfg.kubernetes.scrape_pods) {
        (true, true) => "; Kubernetes pods annotated prometheus.io/scrape",
        (true, false) => "; Kubernetes pod labels",
        _ => "",
    };
    format!("{node}; {files}{pods}{kube}")
}

pub(crate) async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Result<T, CollectorError> {
    tokio::task::spawn_blocking(f).await.map_err(|e| CollectorError::Task(e.to_string()))
}

/// Resolves when shutdown is requested (or the sender is gone).
pub(crate) async fn stopped(rx: &mut watch::Receiver<bool>) {
    let _ = rx.wait_for(|s| *s).await;
}

pub(crate) fn is_stopped(rx: &watch::Receiver<bool>) -> bool {
    *rx.borrow() || rx.has_changed().is_err()
}

/// Exponential backoff, [`BACKOFF_START`] doubling to [`BACKOFF_CAP`],
/// with jitter: each delay is drawn uniformly from [d/2, d], so that
/// collectors failing together do not retry together.
#[derive(Debug)]
pub(crate) struct Backoff {
    next: Duration,
    pub(crate) attempts: u32,
}

impl Backoff {
    pub(crate) fn new() -> Self {
        Backoff { next: BACKOFF_START, attempts: 0 }
    }

    pub(crate) fn next_delay(&mut self) -> Duration {
        let d = self.next;
        self.next = (d * 2).min(BACKOFF_CAP);
        self.attempts += 1;
        let half = d / 2;
        half + half.mul_f64(random_unit())
    }
}

/// A pseudo-random number in [0, 1) (splitmix64 over a per-process seed;
/// for jitter only).
fn random_unit() -> f64 {
    use std::sync::atomic::AtomicU64;
    static STATE: AtomicU64 = AtomicU64::new(0);
    let mut s = STATE.load(Relaxed);
    if s == 0 {
        s = (cairn_wire::time::now_ns() as u64) ^ (u64::from(std::process::id()) << 32) | 1;
    }
    s = s.wrapping_add(0x9e37_79b9_7f4a_7c15);
    STATE.store(s, Relaxed);
    let mut z = s;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^= z >> 31;
    (z >> 11) as f64 / (1u64 << 53) as f64
}

async fn metrics_loop<S: Sink, M: MetricSource>(
    mut source: M,
    interval: Duration,
    sink: &S,
    mut shutdown: watch::Receiver<bool>,
    stats: &Stats,
) -> Result<(), CollectorError> {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut queue: VecDeque<Vec<SeriesSamples>> = VecDeque::new();
    let mut backoff = Backoff::new();
    let mut retry_at: Option<Instant> = None;
    let mut metadata_sent: Option<Instant> = None;
    loop {
        tokio::select! {
            _ = tick.tick() => {
                let ts = cairn_wire::time::now_ms();
                if let Some(series) = source.collect(ts).await? {
                    queue.push_back(series);
                    if queue.len() > MAX_PENDING_COLLECTIONS {
                        queue.pop_front();
                        stats.batches_dropped.fetch_add(1, Relaxed);
                        tracing::warn!(kept = MAX_PENDING_COLLECTIONS, "metrics receiver unreachable for long; dropped the oldest collection");
                    }
                }
            }
            _ = tokio::time::sleep_until(retry_at.unwrap_or_else(Instant::now)), if retry_at.is_some() => {
                retry_at = None;
            }
            _ = stopped(&mut shutdown) => break,
        }
        if queue.is_empty() || retry_at.is_some() {
            continue;
        }
        let batch = merge(&queue);
        let res = tokio::select! {
            r = sink.push_metrics(batch) => r,
            _ = stopped(&mut shutdown) => break,
        };
        match res {
            Ok(()) => {
                stats.batches_sent.fetch_add(1, Relaxed);
                if backoff.attempts > 0 {
                    tracing::info!(failures = backoff.attempts, "metrics push succeeded after retries");
                }
                queue.clear();
                backoff = Backoff::new();
                if metadata_sent.is_none_or(|t| t.elapsed() >= METADATA_INTERVAL) {
                    let res = tokio::select! {
                        r = sink.push_metadata(source.metadata()) => r,
                        _ = stopped(&mut shutdown) => break,
                    };
                    match res {
                        Ok(()) => metadata_sent = Some(Instant::now()),
                        Err(e) => tracing::debug!(error = %e, "metric metadata not delivered; trying again later"),
                    }
                }
            }
            Err(SinkError::Permanent(msg)) => {
                stats.batches_dropped.fetch_add(1, Relaxed);
                tracing::error!(error = %msg, "receiver refused node metrics; dropped");
                queue.clear();
                backoff = Backoff::new();
            }
            Err(e) => {
                let msg = e.to_string();
                stats.send_failures.fetch_add(1, Relaxed);
                let delay = backoff.next_delay().max(e.retry_after());
                if backoff.attempts == 1 || backoff.attempts.is_multiple_of(10) {
                    tracing::warn!(error = %msg, attempt = backoff.attempts, retry_in = ?delay, queued = queue.len(), "metrics push failed; retrying");
                }
                retry_at = Some(Instant::now() + delay);
            }
        }
    }
    Ok(())
}

/// Merges queued collections into one series list, samples of a series in
/// time order.
fn merge(queue: &VecDeque<Vec<SeriesSamples>>) -> Vec<SeriesSamples> {
    if queue.len() == 1 {
        return queue[0].clone();
    }
    let mut by: BTreeMap<&Labels, Vec<(i64, f64)>> = BTreeMap::new();
    for s in queue.iter().flatten() {
        by.entry(&s.labels).or_default().extend_from_slice(&s.samples);
    }
    by.into_iter()
        .map(|(l, mut samples)| {
            samples.sort_by_key(|s| s.0);
            SeriesSamples { labels: l.clone(), samples }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::FileTarget;
    use cairn_wire::StreamEntries;
    use std::io::Write;
    use std::sync::Mutex;
    use std::sync::atomic::AtomicUsize;

    /// An in-memory sink that fails the first `fail_first` calls of each kind.
    #[derive(Default)]
    struct MemSink {
        logs: Mutex<Vec<StreamEntries>>,
        metrics: Mutex<Vec<SeriesSamples>>,
        fail_first: usize,
        log_calls: AtomicUsize,
        refuse: bool,
    }

    impl MemSink {
        fn lines(&self) -> Vec<String> {
            let mut all: Vec<(i64, String)> = self
                .logs
                .lock()
                .unwrap()
                .iter()
                .flat_map(|s| s.entries.iter().map(|e| (e.ts, e.line.clone())))
                .collect();
            all.sort();
            all.into_iter().map(|(_, l)| l).collect()
        }
    }

    impl Sink for MemSink {
        async fn push_metrics(&self, batch: Vec<SeriesSamples>) -> Result<(), SinkError> {
            self.metrics.lock().unwrap().extend(batch);
            Ok(())
        }

        async fn push_logs(&self, batch: Vec<StreamEntries>) -> Result<(), SinkError> {
            let n = self.log_calls.fetch_add(1, Relaxed);
            if self.refuse {
                return Err(SinkError::Permanent("HTTP 400: stream has too many labels".into()));
            }
            if n < self.fail_first {
                return Err(SinkError::Retryable("connection refused".into()));
            }
            self.logs.lock().unwrap().extend(batch);
            Ok(())
        }
    }

    fn config(dir: &std::path::Path) -> CollectorConfig {
        CollectorConfig {
            host: "testhost".into(),
            node: crate::config::NodeConfig { enabled: false, ..Default::default() },
            files: vec![FileTarget {
                paths: vec![format!("{}/*.log", dir.display())],
                labels: BTreeMap::from([("job".to_string(), "t".to_string())]),
                exclude: vec![],
                ..FileTarget::default()
            }],
            poll_interval: crate::config::ConfigDuration::from_millis(20),
            batch_wait: crate::config::ConfigDuration::from_millis(50),
            ..CollectorConfig::default()
        }
    }

    fn append(path: &std::path::Path, lines: std::ops::Range<usize>) {
        let mut f = std::fs::OpenOptions::new().create(true).append(true).open(path).unwrap();
        for i in lines {
            writeln!(f, "line {i}").unwrap();
        }
    }

    fn expected(r: std::ops::Range<usize>) -> Vec<String> {
        r.map(|i| format!("line {i}")).collect()
    }

    async fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while !cond() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    async fn start<S: Sink>(
        cfg: CollectorConfig,
        sink: Arc<S>,
        state: PathBuf,
    ) -> (watch::Sender<bool>, tokio::task::JoinHandle<Result<(), CollectorError>>, Arc<Stats>) {
        let (tx, rx) = watch::channel(false);
        let stats = Arc::new(Stats::default());
        let h = tokio::spawn(run_with_stats(cfg, sink, state, rx, stats.clone()));
        (tx, h, stats)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn lines_arrive_exactly_once_across_restarts() {
        let logs = tempfile::tempdir().unwrap();
        let state = tempfile::tempdir().unwrap();
        let file = logs.path().join("app.log");
        let sink = Arc::new(MemSink::default());
        append(&file, 0..100);

        let (tx, h, stats) = start(config(logs.path()), sink.clone(), state.path().into()).await;
        wait_for("first lines", || sink.lines().len() >= 100).await;
        append(&file, 100..150);
        wait_for("more lines", || sink.lines().len() >= 150).await;
        tx.send(true).unwrap();
        h.await.unwrap().unwrap();
        assert_eq!(stats.snapshot().lines_sent, 150);

        // Written while stopped, including a rotation.
        append(&file, 150..170);
        std::fs::rename(&file, logs.path().join("app.log.1")).unwrap();
        append(&file, 170..200);
        let (tx, h, _) = start(config(logs.path()), sink.clone(), state.path().into()).await;
        wait_for("lines after restart", || sink.lines().len() >= 200).await;
        tokio::time::sleep(Duration::from_millis(200)).await;
        tx.send(true).unwrap();
        h.await.unwrap().unwrap();
        // 150..170 went to the rotated file while stopped: found and read first.
        let want = expected(0..200);
        assert_eq!(sink.lines(), want);

        // A third run with nothing new sends nothing.
        let (tx, h, _) = start(config(logs.path()), sink.clone(), state.path().into()).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        tx.send(true).unwrap();
        h.await.unwrap().unwrap();
        assert_eq!(sink.lines(), want);
        let s = &sink.logs.lock().unwrap()[0];
        assert_eq!(s.labels.get("host"), Some("testhost"));
        assert_eq!(s.labels.get("job"), Some("t"));
    }

    /// A writer appends and rotates (by rename) while the collector runs,
    /// stops and restarts: every line arrives exactly once.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_writes_rotations_and_a_restart() {
        let logs = tempfile::tempdir().unwrap();
        let state = tempfile::tempdir().unwrap();
        let dir = logs.path().to_path_buf();
        let total = 5000;
        let writer = std::thread::spawn(move || {
            let file = dir.join("app.log");
            for i in 0..total {
                // A generation takes ≥ 300 ms, longer than the collector's
                // downtime: a file created and rotated away entirely while
                // the collector is stopped could not be seen by anyone.
                if i > 0 && i % 1500 == 0 {
                    std::fs::rename(&file, dir.join(format!("app.log.{i}"))).unwrap();
                }
                append(&file, i..i + 1);
                if i % 10 == 0 {
                    std::thread::sleep(Duration::from_millis(2));
                }
            }
        });
        let sink = Arc::new(MemSink::default());
        let (tx, h, _) = start(config(logs.path()), sink.clone(), state.path().into()).await;
        tokio::time::sleep(Duration::from_millis(400)).await;
        tx.send(true).unwrap();
        h.await.unwrap().unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        let (tx, h, _) = start(config(logs.path()), sink.clone(), state.path().into()).await;
        tokio::task::spawn_blocking(move || writer.join().unwrap()).await.unwrap();
        wait_for("all lines", || sink.lines().len() >= total).await;
        tokio::time::sleep(Duration::from_millis(200)).await;
        tx.send(true).unwrap();
        h.await.unwrap().unwrap();
        let mut got = sink.lines();
        got.sort_by_key(|l| l[5..].parse::<usize>().unwrap());
        assert_eq!(got, expected(0..total));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn retries_until_the_sink_recovers() {
        let logs = tempfile::tempdir().unwrap();
        let state = tempfile::tempdir().unwrap();
        append(&logs.path().join("a.log"), 0..50);
        let sink = Arc::new(MemSink { fail_first: 3, ..MemSink::default() });
        let (tx, h, stats) = start(config(logs.path()), sink.clone(), state.path().into()).await;
        wait_for("lines after retries", || sink.lines().len() >= 50).await;
        append(&logs.path().join("a.log"), 50..60);
        wait_for("later lines", || sink.lines().len() >= 60).await;
        tx.send(true).unwrap();
        h.await.unwrap().unwrap();
        assert_eq!(sink.lines(), expected(0..60));
        let s = stats.snapshot();
        assert_eq!(s.send_failures, 3);
        assert_eq!(s.batches_dropped, 0);
        assert!(s.batches_sent >= 2);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn unacknowledged_lines_are_sent_after_restart() {
        let logs = tempfile::tempdir().unwrap();
        let state = tempfile::tempdir().unwrap();
        append(&logs.path().join("a.log"), 0..10);
        // Down for the whole first run.
        let down = Arc::new(MemSink { fail_first: usize::MAX, ..MemSink::default() });
        let (tx, h, stats) = start(config(logs.path()), down.clone(), state.path().into()).await;
        wait_for("a failed push", || stats.snapshot().send_failures >= 1).await;
        tx.send(true).unwrap();
        // Shutdown is bounded even though the sink never recovers.
        tokio::time::timeout(Duration::from_secs(4), h).await.unwrap().unwrap().unwrap();
        assert!(down.lines().is_empty());

        let up = Arc::new(MemSink::default());
        let (tx, h, _) = start(config(logs.path()), up.clone(), state.path().into()).await;
        wait_for("lines", || up.lines().len() >= 10).await;
        tx.send(true).unwrap();
        h.await.unwrap().unwrap();
        assert_eq!(up.lines(), expected(0..10));
    }

    /// The receiver is down and the queue overflows: the oldest lines are
    /// dropped and counted, and every line is either delivered (once) or
    /// counted as dropped.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn full_queue_drops_oldest_and_counts_them() {
        let logs = tempfile::tempdir().unwrap();
        let state = tempfile::tempdir().unwrap();
        let file = logs.path().join("a.log");
        let total = 40_000;
        {
            // Lines that do not compress much, so the queue fills.
            let mut f = std::fs::File::create(&file).unwrap();
            let mut x: u64 = 1;
            for i in 0..total {
                x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                writeln!(f, "line {i} {:016x}{:016x}{:016x}", x, x.rotate_left(17), x.rotate_left(41)).unwrap();
            }
        }
        let mut cfg = config(logs.path());
        cfg.queue_max_bytes = crate::config::ByteSize::mib(1);
        cfg.batch_max_bytes = crate::config::ByteSize::kib(64);
        cfg.node.interval = crate::config::ConfigDuration::from_millis(100);
        let down = Arc::new(MemSink { fail_first: usize::MAX, ..MemSink::default() });
        let (tx, h, stats) = start(cfg.clone(), down.clone(), state.path().into()).await;
        wait_for("all lines read", || stats.snapshot().lines_read >= total as u64).await;
        // The drop is visible as a metric (metrics still get through).
        wait_for("the dropped-lines metric", || {
            down.metrics.lock().unwrap().iter().any(|s| {
                s.labels.get("__name__") == Some("cairn_collector_queue_dropped_lines_total")
                    && s.labels.get("job") == Some("cairn-collector")
                    && s.samples.iter().any(|&(_, v)| v > 0.0)
            })
        })
        .await;
        tx.send(true).unwrap();
        h.await.unwrap().unwrap();
        let s = stats.snapshot();
        assert!(s.queue_dropped_lines > 0 && s.queue_dropped_batches > 0, "{s:?}");
        assert!(s.queue_bytes <= 1 << 20, "{s:?}");

        let up = Arc::new(MemSink::default());
        let (tx, h, _) = start(cfg, up.clone(), state.path().into()).await;
        let want = total - s.queue_dropped_lines as usize;
        wait_for("the queued lines", || up.lines().len() >= want).await;
        tokio::time::sleep(Duration::from_millis(200)).await;
        tx.send(true).unwrap();
        h.await.unwrap().unwrap();
        let got: Vec<usize> = up.lines().iter().map(|l| l.split(' ').nth(1).unwrap().parse().unwrap()).collect();
        // The newest lines survived, in order, each once.
        let first = total - got.len();
        assert_eq!(got, (first..total).collect::<Vec<_>>());
        assert_eq!(got.len(), want);
    }

    #[tokio::test]
    async fn refused_batches_are_dropped_and_counted() {
        let logs = tempfile::tempdir().unwrap();
        let state = tempfile::tempdir().unwrap();
        append(&logs.path().join("a.log"), 0..5);
        let sink = Arc::new(MemSink { refuse: true, ..MemSink::default() });
        let (tx, h, stats) = start(config(logs.path()), sink.clone(), state.path().into()).await;
        wait_for("a refusal", || stats.snapshot().batches_dropped >= 1).await;
        tx.send(true).unwrap();
        h.await.unwrap().unwrap();
        // Positions moved past the refused lines: they are not retried forever.
        let ok = Arc::new(MemSink::default());
        append(&logs.path().join("a.log"), 5..6);
        let (tx, h, _) = start(config(logs.path()), ok.clone(), state.path().into()).await;
        wait_for("new line", || !ok.lines().is_empty()).await;
        tx.send(true).unwrap();
        h.await.unwrap().unwrap();
        assert_eq!(ok.lines(), expected(5..6));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn node_metrics_from_real_proc() {
        if !std::path::Path::new("/proc/stat").exists() {
            return;
        }
        let state = tempfile::tempdir().unwrap();
        let mut cfg = CollectorConfig { host: "h1".into(), files: vec![], ..CollectorConfig::default() };
        cfg.node.interval = crate::config::ConfigDuration::from_millis(100);
        let sink = Arc::new(MemSink::default());
        let (tx, h, _) = start(cfg, sink.clone(), state.path().into()).await;
        wait_for("two collections", || {
            sink.metrics.lock().unwrap().iter().filter(|s| s.labels.get("__name__") == Some("node_load1")).count() >= 2
        })
        .await;
        tx.send(true).unwrap();
        h.await.unwrap().unwrap();
        let m = sink.metrics.lock().unwrap();
        let cpu = m.iter().find(|s| s.labels.get("__name__") == Some("node_cpu_seconds_total")).unwrap();
        assert_eq!(cpu.labels.get("instance"), Some("h1"));
        assert_eq!(cpu.labels.get("job"), Some("node"));
    }

    /// Serves `body` as text-format metrics to every connection.
    async fn metrics_server(body: &'static str) -> String {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap().to_string();
        tokio::spawn(async move {
            while let Ok((mut c, _)) = l.accept().await {
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 4096];
                    let _ = c.read(&mut buf).await;
                    let resp = format!(
                        "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = c.write_all(resp.as_bytes()).await;
                });
            }
        });
        addr
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn scrapes_targets_with_up_and_target_labels() {
        let good = metrics_server("# TYPE app_hits counter\napp_hits{path=\"/\"} 3\n").await;
        let bad = metrics_server("app_hits{ broken\n").await;
        let state = tempfile::tempdir().unwrap();
        let mut cfg = CollectorConfig { host: "h".into(), files: vec![], ..CollectorConfig::default() };
        cfg.node.enabled = false;
        cfg.scrape = vec![crate::config::ScrapeConfig {
            job: "app".into(),
            targets: vec![good.clone(), bad.clone(), "127.0.0.1:1".into()],
            interval: crate::config::ConfigDuration::from_millis(100),
            timeout: crate::config::ConfigDuration::from_millis(100),
            ..Default::default()
        }];
        let sink = Arc::new(MemSink::default());
        let (tx, h, _) = start(cfg, sink.clone(), state.path().into()).await;
        let up = |inst: &str| {
            sink.metrics
                .lock()
                .unwrap()
                .iter()
                .find(|s| s.labels.get("__name__") == Some("up") && s.labels.get("instance") == Some(inst))
                .map(|s| s.samples[0].1)
        };
        wait_for("up of every target", || up(&good).is_some() && up(&bad).is_some() && up("127.0.0.1:1").is_some())
            .await;
        tx.send(true).unwrap();
        h.await.unwrap().unwrap();
        assert_eq!(up(&good), Some(1.0));
        assert_eq!(up(&bad), Some(0.0), "a malformed exposition fails the scrape");
        assert_eq!(up("127.0.0.1:1"), Some(0.0));
        let m = sink.metrics.lock().unwrap();
        let hits = m.iter().find(|s| s.labels.get("__name__") == Some("app_hits")).unwrap();
        assert_eq!(hits.labels.get("job"), Some("app"));
        assert_eq!(hits.labels.get("instance"), Some(good.as_str()));
        assert_eq!(hits.samples[0].1, 3.0);
        assert!(!m.iter().any(|s| s.labels.get("__name__") == Some("app_hits") && s.labels.get("instance") == Some(bad.as_str())));
        let n = m
            .iter()
            .find(|s| {
                s.labels.get("__name__") == Some("scrape_samples_scraped")
                    && s.labels.get("instance") == Some(good.as_str())
            })
            .unwrap();
        assert_eq!(n.samples[0].1, 1.0);
    }

    #[test]
    fn merge_groups_samples_by_series() {
        let l = Labels::from_pairs([("__name__", "x")]).unwrap();
        let q: VecDeque<_> = [
            vec![SeriesSamples { labels: l.clone(), samples: vec![(2, 2.0)] }],
            vec![SeriesSamples { labels: l.clone(), samples: vec![(1, 1.0)] }],
        ]
        .into();
        assert_eq!(merge(&q), vec![SeriesSamples { labels: l, samples: vec![(1, 1.0), (2, 2.0)] }]);
    }

    #[test]
    fn backoff_doubles_to_the_cap_with_jitter() {
        let mut b = Backoff::new();
        let d: Vec<_> = (0..10).map(|_| b.next_delay().as_millis()).collect();
        let full = [250, 500, 1000, 2000, 4000, 8000, 16000, 30000, 30000, 30000];
        for (got, max) in d.iter().zip(full) {
            assert!(*got >= max / 2 && *got <= max, "{d:?}");
        }
        // Not all at the same point of their range.
        let mut b = Backoff::new();
        let again: Vec<_> = (0..10).map(|_| b.next_delay().as_millis()).collect();
        assert_ne!(d, again);
    }

    #[test]
    fn describe_is_one_line() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a.log"), "x\n").unwrap();
        let d = describe(&config(dir.path()));
        assert!(d.starts_with("no node metrics; files: "), "{d}");
        assert!(d.ends_with("(1 file now)"), "{d}");
        let d = describe(&CollectorConfig::default());
        assert!(d.starts_with("node metrics every 15s from /proc; files: /var/log/*.log, /var/log/syslog"), "{d}");
        assert!(!d.contains('\n'));
    }
}
