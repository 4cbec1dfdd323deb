//! `cairn`: the one binary. This file is glue: argument parsing, config
//! loading, wiring the aggregator and collector together, signals. The work
//! lives in the library crates.

mod cli;
mod config;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use cairn_aggregator::Aggregator;
use cairn_collector::sink::{Sink, SinkError};
use cairn_wire::{SeriesSamples, StreamEntries};
use clap::{Args, Parser, Subcommand};
use tokio::sync::watch;

use config::{Config, DEFAULT_CONFIG};

/// Cairn: metrics and logs for small clouds — node-exporter, Prometheus,
/// Promtail and Loki in one program, with Grafana unchanged on top.
#[derive(Parser)]
#[command(name = "cairn", version, about, long_about = None, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run everything for this machine: aggregator + collector in one process.
    ///
    /// Data goes to ./cairn-data, the HTTP API (Prometheus and Loki) listens
    /// on 127.0.0.1:3100. Point Grafana at http://HOST:3100 for both a
    /// Prometheus and a Loki data source.
    Up(ServerArgs),
    /// Run the aggregator only: ingest, storage and the query APIs.
    Serve(ServerArgs),
    /// Run the collector only, pushing to an aggregator (or to any
    /// Prometheus remote_write and Loki push endpoints).
    Collect(CollectArgs),
    /// Show or check configuration.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Search logs like grep: `cairn grep PATTERN [SELECTOR]`.
    ///
    /// Searches all streams (or those a LogQL selector or -l KEY=VALUE
    /// pick) over the last hour (--since, --from/--to), on a server
    /// (--addr) or in a data directory (--data-dir). Exit status 0 when a
    /// line matched, 1 when none did, 2 on error.
    Grep(cli::grep::GrepArgs),
    /// Run a LogQL or PromQL query, instant or range.
    Query(cli::query::QueryArgs),
    /// Follow new log lines of a selector (live tail).
    Tail(cli::tail::TailArgs),
    /// List label names, or the values of one label (logs and metrics).
    Labels(cli::labels::LabelsArgs),
    /// List the log streams and metric series a selector matches.
    Series(cli::labels::SeriesArgs),
    /// Try ingest pipeline chains: `cairn pipeline test CONFIG < lines`.
    #[command(subcommand)]
    Pipeline(cli::pipeline::PipelineCommand),
    /// Print shell completions: `cairn completions bash > /etc/bash_completion.d/cairn`.
    Completions {
        /// The shell.
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
}

#[derive(Args)]
struct CommonArgs {
    /// Configuration file (TOML). Flags override it.
    #[arg(long, short = 'c', env = "CAIRN_CONFIG", value_name = "PATH")]
    config: Option<PathBuf>,
    /// Log filter, e.g. `info`, `debug`, `cairn_store=debug` (or RUST_LOG).
    #[arg(long, value_name = "FILTER")]
    log_level: Option<String>,
}

#[derive(Args)]
struct ServerArgs {
    #[command(flatten)]
    common: CommonArgs,
    /// Address of the HTTP API [default: 127.0.0.1:3100].
    #[arg(long, value_name = "ADDR:PORT")]
    listen: Option<SocketAddr>,
    /// Data directory [default: ./cairn-data].
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,
}

#[derive(Args)]
struct CollectArgs {
    #[command(flatten)]
    common: CommonArgs,
    /// Base URL of a Cairn aggregator (or of a server with both
    /// /api/v1/write and /loki/api/v1/push), e.g. http://aggregator:3100.
    #[arg(long, value_name = "URL")]
    push_url: Option<String>,
    /// Directory for the collector's state (file positions) [default: ./cairn-data].
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Print the full default configuration, with comments.
    Default,
    /// Check a configuration file and print it with defaults filled in.
    Check {
        /// The file to check.
        path: PathBuf,
    },
}

/// Tunes glibc's allocator for a long-running server whose hot path
/// allocates and frees megabyte-sized buffers from several threads
/// (request bodies, decoded batches, flushed chunks): two arenas instead
/// of eight per core, and a fixed mmap threshold, so large buffers go back
/// to the system when freed instead of fragmenting the heap. Measured with
/// `cargo bench --bench ingest_logs` (30 replays): peak RSS 302 MB → 234 MB
/// (arenas alone: 272 MB); mimalloc instead was worse (516 MB at 100
/// replays against glibc's 382 MB).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn tune_allocator() {
    // SAFETY: mallopt only sets allocator parameters; called first thing in
    // main, before any other thread exists.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
        libc::mallopt(libc::M_MMAP_THRESHOLD, 256 << 10);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 1 << 20);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn tune_allocator() {}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    // The query subcommands exit as grep does (0, 1, 2; 130 on Ctrl-C).
    let command = match cli.command {
        Command::Grep(a) => return cli_exit(|| cli::grep::run(a)),
        Command::Query(a) => return cli_exit(|| cli::query::run(a)),
        Command::Tail(a) => return cli_exit(|| cli::tail::run(a)),
        Command::Labels(a) => return cli_exit(|| cli::labels::run_labels(a)),
        Command::Series(a) => return cli_exit(|| cli::labels::run_series(a)),
        Command::Pipeline(c) => return cli_exit(|| cli::pipeline::run(c)),
        Command::Completions { shell } => {
            use clap::CommandFactory;
            clap_complete::generate(shell, &mut Cli::command(), "cairn", &mut std::io::stdout());
            return std::process::ExitCode::SUCCESS;
        }
        other => other,
    };
    tune_allocator();
    match run(command) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("cairn: error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Runs a CLI subcommand with the Ctrl-C handler installed and maps its
/// result to an exit status.
fn cli_exit(f: impl FnOnce() -> cli::CliResult<i32>) -> std::process::ExitCode {
    cli::install_interrupt_handler();
    match f() {
        Ok(code) => std::process::ExitCode::from(code.clamp(0, 255) as u8),
        Err(cli::CliError::Interrupted) => std::process::ExitCode::from(130),
        Err(e) => {
            eprintln!("cairn: error: {e}");
            std::process::ExitCode::from(2)
        }
    }
}

fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Config(ConfigCommand::Default) => {
            print!("{DEFAULT_CONFIG}");
            Ok(())
        }
        Command::Config(ConfigCommand::Check { path }) => {
            let cfg = Config::load(&path)?;
            print!("{}", toml::to_string_pretty(&cfg).context("cannot render config")?);
            Ok(())
        }
        Command::Up(a) => {
            let cfg = server_config(&a)?;
            init_logging(a.common.log_level.as_deref());
            runtime()?.block_on(serve(cfg, true))
        }
        Command::Serve(a) => {
            let cfg = server_config(&a)?;
            init_logging(a.common.log_level.as_deref());
            runtime()?.block_on(serve(cfg, false))
        }
        Command::Grep(_)
        | Command::Query(_)
        | Command::Tail(_)
        | Command::Labels(_)
        | Command::Series(_)
        | Command::Pipeline(_)
        | Command::Completions { .. } => unreachable!("handled in main"),
        Command::Collect(a) => {
            let mut cfg = load_config(a.common.config.as_deref())?;
            if let Some(u) = a.push_url {
                cfg.collector.push.url = u;
            }
            if let Some(d) = a.data_dir {
                cfg.storage.data_dir = d;
            }
            if cfg.collector.push.url.is_empty()
                && (cfg.collector.push.metrics_url.is_empty() || cfg.collector.push.logs_url.is_empty())
            {
                anyhow::bail!(
                    "cairn collect needs somewhere to push: --push-url URL, or collector.push.url (or both collector.push.metrics_url and collector.push.logs_url) in the config file"
                );
            }
            init_logging(a.common.log_level.as_deref());
            runtime()?.block_on(collect(cfg))
        }
    }
}

fn load_config(path: Option<&Path>) -> anyhow::Result<Config> {
    match path {
        Some(p) => Config::load(p),
        None => Ok(Config::default()),
    }
}

fn server_config(a: &ServerArgs) -> anyhow::Result<Config> {
    let mut cfg = load_config(a.common.config.as_deref())?;
    if let Some(l) = a.listen {
        cfg.server.listen = l;
    }
    if let Some(d) = &a.data_dir {
        cfg.storage.data_dir = d.clone();
    }
    Ok(cfg)
}

fn init_logging(level: Option<&str>) {
    let filter =
        level.map(str::to_string).or_else(|| std::env::var("RUST_LOG").ok()).unwrap_or_else(|| "info".to_string());
    let filter = tracing_subscriber::EnvFilter::try_new(&filter).unwrap_or_else(|e| {
        eprintln!("cairn: invalid log filter {filter:?} ({e}); using \"info\"");
        tracing_subscriber::EnvFilter::new("info")
    });
    use std::io::IsTerminal;
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .init();
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread().enable_all().build().context("cannot start the async runtime")
}

/// Installs the SIGINT (Ctrl-C) and SIGTERM handlers now and returns a future
/// that resolves when either arrives. Called before the server starts
/// answering, so a signal sent as soon as `/ready` answers is never met by
/// the default action (termination without a flush).
fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    #[cfg(unix)]
    let (int, term) = {
        use tokio::signal::unix::{SignalKind, signal};
        (signal(SignalKind::interrupt()).ok(), signal(SignalKind::terminate()).ok())
    };
    async move {
        #[cfg(unix)]
        {
            let wait = |s: Option<tokio::signal::unix::Signal>| async move {
                match s {
                    Some(mut s) => {
                        s.recv().await;
                    }
                    None => std::future::pending::<()>().await,
                }
            };
            tokio::select! {
                _ = wait(int) => {},
                _ = wait(term) => {},
            }
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

/// The collector's sink inside `cairn up`: writes straight into the
/// aggregator, with the same validation as the HTTP ingest path.
struct InProcessSink {
    agg: Arc<Aggregator>,
    tenant: String,
}

impl InProcessSink {
    async fn ingest<F>(&self, f: F) -> Result<(), SinkError>
    where
        F: FnOnce(&Aggregator, &str) -> Result<cairn_aggregator::IngestReport, cairn_store::StoreError>
            + Send
            + 'static,
    {
        let agg = self.agg.clone();
        let tenant = self.tenant.clone();
        let res = tokio::task::spawn_blocking(move || f(&agg, &tenant))
            .await
            .map_err(|e| SinkError::Retryable(format!("ingest task failed: {e}")))?;
        match res {
            Ok(r) if r.refused == 0 => Ok(()),
            // Refused items will be refused again: do not retry them.
            Ok(r) => Err(SinkError::Permanent(r.error_message())),
            Err(e) => Err(SinkError::Retryable(e.to_string())),
        }
    }
}

impl Sink for InProcessSink {
    async fn push_metrics(&self, batch: Vec<SeriesSamples>) -> Result<(), SinkError> {
        self.ingest(move |a, t| a.ingest_metrics(t, batch)).await
    }

    async fn push_logs(&self, batch: Vec<StreamEntries>) -> Result<(), SinkError> {
        self.ingest(move |a, t| a.ingest_logs(t, batch)).await
    }

    async fn push_metadata(&self, metadata: Vec<cairn_wire::proto::MetricMetadata>) -> Result<(), SinkError> {
        for m in metadata {
            let meta = cairn_aggregator::metadata::MetricMeta {
                kind: cairn_aggregator::metadata::type_name(m.r#type).to_string(),
                help: m.help,
                unit: m.unit,
            };
            self.agg.metadata.record(&self.tenant, &m.metric_family_name, meta);
        }
        Ok(())
    }
}

async fn serve(cfg: Config, with_collector: bool) -> anyhow::Result<()> {
    cfg.validate()?;
    let shutdown = shutdown_signal();
    let listen = cfg.server.listen;
    let data_dir = cfg.storage.data_dir.clone();
    let agg_cfg = cfg.aggregator();
    let agg = tokio::task::spawn_blocking(move || Aggregator::open(agg_cfg))
        .await
        .context("storage task failed")?
        .with_context(|| format!("cannot open data directory {}", data_dir.display()))?;
    let listener = tokio::net::TcpListener::bind(listen).await.with_context(|| {
        format!("cannot listen on {listen} (is another Cairn or Loki running? choose another address with --listen)")
    })?;
    let bound = listener.local_addr().context("cannot read the bound address")?;
    let (stop_tx, stop_rx) = watch::channel(false);

    // HTTP server.
    let app = cairn_aggregator::http::router(agg.clone());
    let mut http_stop = stop_rx.clone();
    let server = tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(async move {
                let _ = http_stop.wait_for(|s| *s).await.map(|_| ());
            })
            .await
    });

    // Log flushes and periodic WAL fsync.
    let maintenance = tokio::spawn(agg.clone().run_maintenance(stop_rx.clone()));

    // Collector for this machine.
    let collector = if with_collector {
        let sink = Arc::new(InProcessSink { agg: agg.clone(), tenant: cairn_wire::DEFAULT_TENANT.to_string() });
        let state_dir = cfg.storage.data_dir.join("collector");
        let ccfg = cfg.collector.clone();
        Some(tokio::spawn(cairn_collector::run(ccfg, sink, state_dir, stop_rx.clone())))
    } else {
        None
    };

    print_banner(&cfg, bound, with_collector);
    shutdown.await;
    eprintln!("cairn: shutting down…");
    let _ = stop_tx.send(true);
    if let Some(c) = collector {
        match tokio::time::timeout(Duration::from_secs(5), c).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(e))) => tracing::error!(error = %e, "collector stopped with an error"),
            Ok(Err(e)) => tracing::error!(error = %e, "collector task failed"),
            Err(_) => tracing::warn!("collector did not stop within 5s"),
        }
    }
    match tokio::time::timeout(Duration::from_secs(5), server).await {
        Ok(Ok(Ok(()))) => {}
        Ok(Ok(Err(e))) => tracing::error!(error = %e, "HTTP server error"),
        Ok(Err(e)) => tracing::error!(error = %e, "HTTP server task failed"),
        Err(_) => tracing::warn!("HTTP connections still open after 5s; closing"),
    }
    let _ = maintenance.await;
    // Persist the heads as blocks so the next start replays little.
    let a = agg.clone();
    tokio::task::spawn_blocking(move || {
        a.flush_all();
        a.sync()
    })
    .await
    .context("flush task failed")?
    .context("final WAL flush")?;
    eprintln!("cairn: stopped cleanly");
    Ok(())
}

fn print_banner(cfg: &Config, listen: SocketAddr, with_collector: bool) {
    let url = if listen.ip().is_unspecified() {
        format!("http://<this-host>:{}", listen.port())
    } else {
        format!("http://{listen}")
    };
    let mut s = format!("Cairn {} is running.\n", env!("CARGO_PKG_VERSION"));
    s.push_str(&format!("  data:        {}\n", cfg.storage.data_dir.display()));
    s.push_str(&format!("  Grafana:     Prometheus data source URL {url}\n"));
    s.push_str(&format!("               Loki data source URL       {url}\n"));
    if with_collector {
        s.push_str(&format!("  collecting:  {}\n", cairn_collector::describe(&cfg.collector)));
    }
    s.push_str("  Stop with Ctrl-C.\n");
    print!("{s}");
    use std::io::Write;
    let _ = std::io::stdout().flush();
}

async fn collect(cfg: Config) -> anyhow::Result<()> {
    let shutdown = shutdown_signal();
    let sink =
        Arc::new(cairn_collector::sink::HttpSink::new(&cfg.collector.push).context("cannot set up the HTTP client")?);
    let state_dir = cfg.storage.data_dir.join("collector");
    let (stop_tx, stop_rx) = watch::channel(false);
    let task = tokio::spawn(cairn_collector::run(cfg.collector.clone(), sink, state_dir, stop_rx));
    println!(
        "Cairn {} collector is running, pushing to {}.\n  collecting:  {}\n  Stop with Ctrl-C.",
        env!("CARGO_PKG_VERSION"),
        if cfg.collector.push.url.is_empty() { &cfg.collector.push.metrics_url } else { &cfg.collector.push.url },
        cairn_collector::describe(&cfg.collector)
    );
    shutdown.await;
    let _ = stop_tx.send(true);
    match tokio::time::timeout(Duration::from_secs(5), task).await {
        Ok(Ok(r)) => r.context("collector stopped with an error")?,
        Ok(Err(e)) => anyhow::bail!("collector task failed: {e}"),
        Err(_) => tracing::warn!("collector did not stop within 5s"),
    }
    Ok(())
}
