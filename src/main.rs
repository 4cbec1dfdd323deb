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
    /// Make credentials for [auth]: hash a token or password, or make a token.
    #[command(subcommand)]
    Auth(AuthCommand),
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
    /// Listen on a non-loopback address although [auth] is off: anyone
    /// who can reach it may read and write everything. Only for a trusted
    /// network (e.g. a Kubernetes cluster's pod network).
    #[arg(long)]
    insecure: bool,
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
enum AuthCommand {
    /// Hash a secret read from stdin and print the config line: a bearer
    /// token's `sha256 = "…"` for [[auth.tokens]], or with --password a
    /// `password_hash = "…"` for [[auth.users]].
    Hash {
        /// Hash a basic-auth password (salted PBKDF2-HMAC-SHA256) instead
        /// of a bearer token (SHA-256).
        #[arg(long)]
        password: bool,
    },
    /// Make a new random bearer token: prints the token, then its
    /// `sha256 = "…"` line for [[auth.tokens]].
    Token,
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
        Command::Auth(c) => auth_command(c),
        Command::Up(a) => {
            let cfg = server_config(&a)?;
            init_logging(a.common.log_level.as_deref());
            runtime()?.block_on(serve(cfg, true, a.insecure))
        }
        Command::Serve(a) => {
            let cfg = server_config(&a)?;
            init_logging(a.common.log_level.as_deref());
            runtime()?.block_on(serve(cfg, false, a.insecure))
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
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        // Query parsing and evaluation recurse over the syntax tree; the
        // parsers bound its depth (query::promql::MAX_NESTING, LogQL's
        // MAX_DEPTH and MAX_NODES) so that it fits in this, with room to
        // spare in debug builds. Only touched pages use memory.
        .thread_stack_size(8 << 20)
        .build()
        .context("cannot start the async runtime")
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

/// Refuses a non-loopback listen address while auth is off, unless the
/// operator said `--insecure`.
fn check_exposure(listen: SocketAddr, auth_enabled: bool, insecure: bool) -> anyhow::Result<()> {
    if auth_enabled || insecure || listen.ip().to_canonical().is_loopback() {
        return Ok(());
    }
    anyhow::bail!(
        "refusing to listen on {listen} without authentication: anyone who can reach that address could read \
         every log line and metric and write data. Either\n  \
         - turn on [auth] with bearer tokens or users (auth.enabled = true; see docs/auth.md, `cairn auth token`), or\n  \
         - listen on loopback (--listen 127.0.0.1:{port} or server.listen) behind a reverse proxy that authenticates, or\n  \
         - pass --insecure if every host that can reach {listen} is trusted (e.g. a Kubernetes cluster network)",
        port = listen.port()
    )
}

async fn serve(cfg: Config, with_collector: bool, insecure: bool) -> anyhow::Result<()> {
    cfg.validate()?;
    check_exposure(cfg.server.listen, cfg.auth.enabled, insecure)?;
    let auth = cairn_aggregator::auth::Authenticator::new(&cfg.auth)?;
    let tls = if cfg.server.tls.enabled() {
        let t = &cfg.server.tls;
        let store = cairn_aggregator::tls::CertStore::load(&t.cert_file, &t.key_file)
            .context("cannot load the TLS certificate (server.tls)")?;
        let config = store.server_config().context("cannot set up TLS")?;
        Some((store, config))
    } else {
        None
    };
    if cfg.auth.enabled && tls.is_none() && !cfg.server.listen.ip().to_canonical().is_loopback() {
        tracing::warn!(
            listen = %cfg.server.listen,
            "auth is on without TLS: tokens and passwords cross the network in clear text (set server.tls, or terminate TLS in a proxy)"
        );
    }
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
    let auth = Arc::new(auth.with_metrics(&agg.self_metrics));
    let app = cairn_aggregator::auth::layer(cairn_aggregator::http::router(agg.clone()), auth);
    let https = tls.is_some();
    let read_timeout = cfg.server.read_timeout.0;
    let server = match tls {
        Some((store, config)) => {
            tokio::spawn(store.watch(stop_rx.clone()));
            let listener = cairn_aggregator::tls::listen(listener, config).context("cannot start TLS")?;
            tokio::spawn(cairn_aggregator::serve::serve(listener, app, read_timeout, stop_rx.clone()))
        }
        None => tokio::spawn(cairn_aggregator::serve::serve(listener, app, read_timeout, stop_rx.clone())),
    };

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

    print_banner(&cfg, bound, with_collector, https);
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
        Ok(Ok(())) => {}
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

fn print_banner(cfg: &Config, listen: SocketAddr, with_collector: bool, https: bool) {
    let scheme = if https { "https" } else { "http" };
    let url = if listen.ip().is_unspecified() {
        format!("{scheme}://<this-host>:{}", listen.port())
    } else {
        format!("{scheme}://{listen}")
    };
    let mut s = format!("Cairn {} is running.\n", env!("CARGO_PKG_VERSION"));
    s.push_str(&format!("  data:        {}\n", cfg.storage.data_dir.display()));
    s.push_str(&format!("  Grafana:     Prometheus data source URL {url}\n"));
    s.push_str(&format!("               Loki data source URL       {url}\n"));
    if with_collector {
        s.push_str(&format!("  collecting:  {}\n", cairn_collector::describe(&cfg.collector)));
    }
    if cfg.auth.enabled {
        s.push_str(&format!(
            "  auth:        on ({} tokens, {} users; /ready{} open)\n",
            cfg.auth.tokens.len(),
            cfg.auth.users.len(),
            if cfg.auth.public_metrics { " and /metrics" } else { "" }
        ));
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

/// `cairn auth …`.
fn auth_command(c: AuthCommand) -> anyhow::Result<()> {
    use cairn_aggregator::auth;
    match c {
        AuthCommand::Token => {
            let t = auth::generate_token().map_err(anyhow::Error::msg)?;
            println!("{t}");
            println!("sha256 = \"{}\"", auth::hash_token(t.as_bytes()));
            eprintln!(
                "# First line: the token, for the client (CAIRN_TOKEN, collector.push.bearer_token_file, Grafana).\n\
                 # Second line: for an [[auth.tokens]] block of the server's config. The token itself is stored nowhere."
            );
            Ok(())
        }
        AuthCommand::Hash { password } => {
            let secret = read_secret(if password { "password: " } else { "token: " })?;
            if secret.is_empty() {
                anyhow::bail!("nothing to hash: the secret read from stdin is empty");
            }
            if password {
                let h = auth::hash_password(secret.as_bytes()).map_err(anyhow::Error::msg)?;
                println!("password_hash = \"{h}\"");
            } else {
                if secret.len() < 20 {
                    eprintln!(
                        "cairn: warning: a token of {} characters is short enough to be guessed from its SHA-256; \
                         prefer `cairn auth token`",
                        secret.len()
                    );
                }
                println!("sha256 = \"{}\"", auth::hash_token(secret.as_bytes()));
            }
            Ok(())
        }
    }
}

/// Reads a secret from stdin: one line without its line ending (from a
/// terminal: prompted, not echoed), or all of a pipe without the final
/// line ending.
fn read_secret(prompt: &str) -> anyhow::Result<String> {
    use std::io::{IsTerminal, Read, Write};
    let stdin = std::io::stdin();
    let mut s = String::new();
    if stdin.is_terminal() {
        eprint!("{prompt}");
        let _ = std::io::stderr().flush();
        let echo = EchoOff::new();
        stdin.read_line(&mut s).context("cannot read the secret from the terminal")?;
        drop(echo);
        eprintln!();
    } else {
        stdin.lock().read_to_string(&mut s).context("cannot read the secret from stdin")?;
    }
    let trimmed = s.strip_suffix('\n').unwrap_or(&s);
    let trimmed = trimmed.strip_suffix('\r').unwrap_or(trimmed);
    Ok(trimmed.to_string())
}

/// Turns terminal echo off on stdin until dropped.
struct EchoOff(Option<libc::termios>);

impl EchoOff {
    fn new() -> EchoOff {
        // SAFETY: tcgetattr/tcsetattr on fd 0 with a zeroed termios that
        // tcgetattr fills; nothing else holds a reference to it.
        unsafe {
            let mut t: libc::termios = std::mem::zeroed();
            if libc::tcgetattr(0, &mut t) != 0 {
                return EchoOff(None);
            }
            let saved = t;
            t.c_lflag &= !libc::ECHO;
            if libc::tcsetattr(0, libc::TCSANOW, &t) != 0 {
                return EchoOff(None);
            }
            EchoOff(Some(saved))
        }
    }
}

impl Drop for EchoOff {
    fn drop(&mut self) {
        if let Some(t) = &self.0 {
            // SAFETY: restores the settings read in `new`.
            unsafe {
                libc::tcsetattr(0, libc::TCSANOW, t);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposure_needs_auth_or_insecure_off_loopback() {
        let a = |s: &str| s.parse::<SocketAddr>().unwrap();
        for loopback in ["127.0.0.1:3100", "127.3.2.1:1", "[::1]:3100", "[::ffff:127.0.0.1]:3100"] {
            check_exposure(a(loopback), false, false).unwrap();
        }
        for open in ["0.0.0.0:3100", "[::]:3100", "192.168.1.5:3100", "[::ffff:10.0.0.1]:80"] {
            let e = check_exposure(a(open), false, false).unwrap_err().to_string();
            assert!(e.contains("refusing to listen") && e.contains("--insecure") && e.contains("[auth]"), "{e}");
            check_exposure(a(open), true, false).unwrap();
            check_exposure(a(open), false, true).unwrap();
        }
    }

    #[test]
    fn insecure_flag_parses_for_serve_and_up() {
        use clap::Parser;
        for sub in ["serve", "up"] {
            let cli = Cli::try_parse_from(["cairn", sub, "--listen", "0.0.0.0:1", "--insecure"]).unwrap();
            match cli.command {
                Command::Serve(a) | Command::Up(a) => assert!(a.insecure),
                _ => panic!("wrong subcommand"),
            }
            let cli = Cli::try_parse_from(["cairn", sub]).unwrap();
            match cli.command {
                Command::Serve(a) | Command::Up(a) => assert!(!a.insecure),
                _ => panic!("wrong subcommand"),
            }
        }
        assert!(Cli::try_parse_from(["cairn", "collect", "--insecure"]).is_err());
    }
}
